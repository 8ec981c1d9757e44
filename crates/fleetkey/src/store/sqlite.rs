//! The SQLite store: the embedded default, one database file in the fleet home.
//!
//! - Journal: WAL, `synchronous = FULL` (a committed revision bump survives power loss: a SHE
//!   counter the registry forgot would be reused), `secure_delete = ON`, `foreign_keys = ON`,
//!   `trusted_schema = OFF`, 8 KiB pages.
//! - Every [`Store::transaction`] starts with `BEGIN IMMEDIATE`: two processes cannot interleave
//!   a read-modify-write. A transaction waits up to the busy timeout (5 s by default) for the
//!   lock, then fails with [`StoreError::Busy`]; the closure runs once.
//! - Every [`Store::read`] is a WAL reader: `PRAGMA query_only = ON`, then a deferred `BEGIN`,
//!   which takes no write lock; its first read fixes the snapshot (the last commit at that
//!   moment), and a writer holding `BEGIN IMMEDIATE` does not delay it. Writes are refused
//!   before SQL by the `Tx` it gets, and by `query_only` below that; it ends with `ROLLBACK`
//!   and `query_only` is turned off again.
//! - Schema: `sqlite/0001_initial.sql`, then `0002_access.sql` (service tokens, idempotency); its version is in `meta`. A newer version than this
//!   fleetkey knows is refused ([`StoreError::Schema`]).
//! - Zeroization at rest ([`Store::purge`]): `secure_delete` zeroes freed cells and pages, but
//!   when SQLite rebuilds a fragmented page during rebalancing, the unused middle of the page
//!   keeps stale copies of cells that moved to another page (`tests/store_sqlite.rs` shows one).
//!   `purge` therefore rebuilds the database (`VACUUM`) and checkpoints and truncates the WAL,
//!   so that a replaced wrapped root is in none of the files (main, `-wal`, `-shm`). It costs
//!   about a second for a million devices.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{
    Connection, ErrorCode, OpenFlags, OptionalExtension, Row, params, params_from_iter,
};

use crate::error::{Error, StoreError};
use crate::model::DeviceRecord;
use crate::store::codec::{self, ColumnError, Columns};
use crate::store::read_only::ReadOnlyTx;
use crate::store::sql::{self, Dialect, Params};
use crate::store::tx::{self, APP_META_PREFIX, Backend, OnRow, SealedEvent, Stmt};
use crate::store::{AUDIT_INDEXED_SUBJECTS, Store, Tx};

mod schema;

/// The schema version this fleetkey reads and writes.
pub const SCHEMA_VERSION: i64 = schema::SCHEMA_VERSION;

/// How long a writer waits for another before [`StoreError::Busy`], unless set otherwise.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// `BEGIN IMMEDIATE` attempts: SQLite's busy handler does the waiting; a retry covers the busy
/// results it returns without waiting (WAL recovery by another connection).
const BEGIN_ATTEMPTS: u32 = 3;

/// The audit head in `meta`.
const HEAD_SEQ_KEY: &str = "store.audit_head_seq";
const HEAD_HASH_KEY: &str = "store.audit_head_hash";
/// The page size of a new database: 8 KiB pages made bulk inserts about 10% faster than 4 KiB
/// (fewer page splits and WAL frames); a single-row change writes one more 4 KiB, which the
/// fsync dominates.
const PAGE_SIZE: i64 = 8192;

/// Rows per `INSERT` statement in bulk inserts: fewer statement executions, 5-10% faster than
/// one row per statement in the 1M-device measurement.
const ROWS_PER_INSERT: usize = 32;
/// Parameters per device row.
const DEVICE_PARAMS: usize = sql::DEVICE_COLUMNS.len();

/// A fleet store in one SQLite database file.
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    busy_timeout: Duration,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens the store at `path`, creating the database (and its schema) when it does not exist.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        Self::open_with(path.as_ref(), flags)
    }

    /// Opens an existing store; [`StoreError::NotFound`] when there is no file at `path` (a
    /// missing fleet home must not silently become an empty one).
    pub fn open_existing(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(missing(path));
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        Self::open_with(path, flags)
    }

    fn open_with(path: &Path, flags: OpenFlags) -> Result<Self, StoreError> {
        let conn =
            Connection::open_with_flags(path, flags).map_err(|e| match e.sqlite_error_code() {
                Some(ErrorCode::CannotOpen)
                    if !flags.contains(OpenFlags::SQLITE_OPEN_CREATE) && !path.exists() =>
                {
                    missing(path)
                }
                _ => backend("open", e),
            })?;
        let store = SqliteStore {
            conn,
            path: path.to_path_buf(),
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
        };
        store.configure()?;
        store.migrate()?;
        Ok(store)
    }

    fn configure(&self) -> Result<(), StoreError> {
        let conn = &self.conn;
        conn.busy_timeout(self.busy_timeout)
            .map_err(|e| backend("set busy timeout", e))?;
        conn.set_prepared_statement_cache_capacity(64);
        let err = |e| backend("configure", e);
        // Takes effect only while the database is still empty (a new store); a file that is not
        // a database fails here, on its first read.
        conn.pragma_update(None, "page_size", PAGE_SIZE)
            .map_err(err)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend {
                operation: "configure",
                detail: format!("journal_mode is {mode}, not wal"),
            });
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.pragma_update(None, "secure_delete", "ON")
            .map_err(err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(err)?;
        conn.pragma_update(None, "trusted_schema", "OFF")
            .map_err(err)?;
        // After a checkpoint, shrink a WAL a bulk import made large.
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
            .map_err(err)?;
        let secure: i64 = conn
            .pragma_query_value(None, "secure_delete", |r| r.get(0))
            .map_err(err)?;
        if secure != 1 {
            return Err(StoreError::Backend {
                operation: "configure",
                detail: "secure_delete did not turn on".into(),
            });
        }
        Ok(())
    }

    fn migrate(&self) -> Result<(), StoreError> {
        // Reading needs no write lock: a second process opens without waiting for a writer.
        if schema::version(&self.conn)? == schema::SCHEMA_VERSION {
            return Ok(());
        }
        self.begin()?;
        let result = schema::migrate(&self.conn);
        self.finish("migrate schema", result)
    }

    /// Sets how long a writer waits for another before [`StoreError::Busy`].
    pub fn set_busy_timeout(&mut self, timeout: Duration) -> Result<(), StoreError> {
        self.conn
            .busy_timeout(timeout)
            .map_err(|e| backend("set busy timeout", e))?;
        self.busy_timeout = timeout;
        Ok(())
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `BEGIN IMMEDIATE`, retried a bounded number of times while within the busy timeout.
    fn begin(&self) -> Result<(), StoreError> {
        use crate::stats::{StoreEvent, store_event};
        let started = Instant::now();
        let mut attempt = 1;
        store_event("sqlite", StoreEvent::Transaction);
        loop {
            let result = self
                .conn
                .prepare_cached("BEGIN IMMEDIATE")
                .and_then(|mut s| s.execute([]));
            match result {
                Ok(_) => {
                    // SQLite's busy handler sleeps 1 ms first: an uncontended begin takes
                    // microseconds.
                    if started.elapsed() >= Duration::from_millis(1) {
                        store_event("sqlite", StoreEvent::LockWait);
                    }
                    return Ok(());
                }
                Err(e) if is_busy(&e) => {
                    let waited = started.elapsed();
                    if attempt >= BEGIN_ATTEMPTS || waited >= self.busy_timeout {
                        store_event("sqlite", StoreEvent::Busy);
                        return Err(StoreError::Busy(format!(
                            "another connection holds the write lock of {} (waited {} ms)",
                            self.path.display(),
                            waited.as_millis()
                        )));
                    }
                    attempt += 1;
                    store_event("sqlite", StoreEvent::Retry);
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(backend("begin transaction", e)),
            }
        }
    }

    /// `PRAGMA query_only = ON` and a deferred `BEGIN`: no lock until the first read, and that
    /// one is a WAL read lock, which a writer does not hold against it.
    fn begin_read(&self) -> Result<(), StoreError> {
        self.set_query_only(true)?;
        let begun = self
            .conn
            .prepare_cached("BEGIN DEFERRED")
            .and_then(|mut s| s.execute([]));
        if let Err(e) = begun {
            let _ = self.set_query_only(false);
            return Err(backend("begin read transaction", e));
        }
        Ok(())
    }

    fn set_query_only(&self, on: bool) -> Result<(), StoreError> {
        self.conn
            .pragma_update(None, "query_only", on)
            .map_err(|e| backend("set query_only", e))
    }

    /// Ends a read transaction (nothing to commit) and lets the connection write again.
    fn end_read(&self) -> Result<(), StoreError> {
        self.rollback();
        if !self.conn.is_autocommit() {
            return Err(StoreError::Backend {
                operation: "end read transaction",
                detail: "the transaction did not end".into(),
            });
        }
        self.set_query_only(false)
    }

    /// Commits on `Ok`, rolls back otherwise.
    fn finish<E: From<StoreError>>(
        &self,
        operation: &'static str,
        result: Result<(), E>,
    ) -> Result<(), E> {
        match result {
            Ok(()) => match self
                .conn
                .prepare_cached("COMMIT")
                .and_then(|mut s| s.execute([]))
            {
                Ok(_) => Ok(()),
                Err(e) => {
                    self.rollback();
                    Err(backend(operation, e).into())
                }
            },
            Err(e) => {
                self.rollback();
                Err(e)
            }
        }
    }

    fn rollback(&self) {
        if !self.conn.is_autocommit() {
            // A failed rollback leaves the transaction open; the next `begin` then fails loudly
            // rather than committing anything of this one.
            let _ = self
                .conn
                .prepare_cached("ROLLBACK")
                .and_then(|mut s| s.execute([]));
        }
    }

    fn checkpoint_truncate(&self) -> Result<(), StoreError> {
        let (busy, _log, _done): (i64, i64, i64) = self
            .conn
            .prepare_cached("PRAGMA wal_checkpoint(TRUNCATE)")
            .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))))
            .map_err(|e| backend("checkpoint", e))?;
        if busy != 0 {
            return Err(StoreError::Busy(format!(
                "another connection is reading {}; the write-ahead log could not be truncated",
                self.path.display()
            )));
        }
        Ok(())
    }
}

/// Rolls back a transaction the closure left by panicking.
struct RollbackGuard<'s>(&'s SqliteStore);

impl Drop for RollbackGuard<'_> {
    fn drop(&mut self) {
        self.0.rollback();
    }
}

/// Ends a read transaction the closure left by panicking.
struct EndReadGuard<'s>(&'s SqliteStore);

impl Drop for EndReadGuard<'_> {
    fn drop(&mut self) {
        let _ = self.0.end_read();
    }
}

impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn transaction(
        &mut self,
        f: &mut dyn FnMut(&mut dyn Tx) -> Result<(), Error>,
    ) -> Result<(), Error> {
        self.begin()?;
        let guard = RollbackGuard(self);
        let result = f(&mut SqliteTx { conn: &self.conn });
        std::mem::forget(guard);
        self.finish("commit", result)
    }

    fn read(&mut self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<(), Error>) -> Result<(), Error> {
        self.begin_read()?;
        let guard = EndReadGuard(self);
        let result = f(&mut ReadOnlyTx(&mut SqliteTx { conn: &self.conn }));
        std::mem::forget(guard);
        let ended = self.end_read();
        result?;
        Ok(ended?)
    }

    fn purge(&mut self) -> Result<(), StoreError> {
        if !self.conn.is_autocommit() {
            return Err(StoreError::Backend {
                operation: "purge",
                detail: "a transaction is open".into(),
            });
        }
        self.checkpoint_truncate()?;
        self.conn
            .execute_batch("VACUUM")
            .map_err(|e| backend("vacuum", e))?;
        self.checkpoint_truncate()
    }

    fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.path.clone()];
        for suffix in ["-wal", "-shm", "-journal"] {
            let mut name = self.path.clone().into_os_string();
            name.push(suffix);
            let path = PathBuf::from(name);
            if path.exists() {
                files.push(path);
            }
        }
        files
    }
}

/// One transaction's view.
struct SqliteTx<'c> {
    conn: &'c Connection,
}

/// SQLite's SQL: `?N` parameters, labels as a JSON array, unique violations reported.
pub(crate) struct Sqlite;

impl Dialect for Sqlite {
    const PARAM: char = '?';

    fn if_absent(_target: &str) -> String {
        String::new()
    }

    fn labels_hold<'a>(params: &mut Params<'a>, labels: &'a [String]) -> Vec<String> {
        labels
            .iter()
            .map(|label| {
                let n = params.bind(codec::Value::text(label));
                format!(
                    "EXISTS (SELECT 1 FROM json_each(devices.labels) WHERE json_each.value = {n})"
                )
            })
            .collect()
    }

    fn unindexed(column: &str) -> String {
        format!("+{column}")
    }

    fn blob_contains(column: &str, needle: &str) -> String {
        format!("instr({column}, {needle}) > 0")
    }

    fn below_action(params: &mut Params<'_>, column: &str, action: &str) -> String {
        // `action.` <= a < `action/`: a range the index on the column serves.
        let low = params.bind(codec::Value::owned_text(format!("{action}.")));
        let high = params.bind(codec::Value::owned_text(format!("{action}/")));
        format!("({column} >= {low} AND {column} < {high})")
    }
}

impl rusqlite::ToSql for codec::Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        use codec::Value as V;
        Ok(match self {
            V::Int(None) | V::Int32(None) | V::Text(None) | V::Blob(None) => {
                ToSqlOutput::Owned(Value::Null)
            }
            V::Int(Some(v)) => ToSqlOutput::Owned(Value::Integer(*v)),
            V::Int32(Some(v)) => ToSqlOutput::Owned(Value::Integer(i64::from(*v))),
            V::Text(Some(v)) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
            V::Blob(Some(v)) => ToSqlOutput::Borrowed(ValueRef::Blob(v)),
            V::TextList(v) => ToSqlOutput::Owned(Value::Text(
                serde_json::to_string(v)
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?,
            )),
        })
    }
}

impl Columns for Row<'_> {
    codec::typed_getters!(get);

    fn opt_int(&self, i: usize) -> Result<Option<i64>, ColumnError> {
        self.get(i).map_err(ColumnError::read)
    }

    fn text_list(&self, i: usize) -> Result<Vec<String>, ColumnError> {
        let text: String = self.get(i).map_err(ColumnError::read)?;
        serde_json::from_str(&text).map_err(|e| ColumnError::Invalid(e.to_string()))
    }
}

impl SqliteTx<'_> {
    fn execute(&self, s: &Stmt<'_>) -> rusqlite::Result<u64> {
        let mut stmt = self.conn.prepare_cached(s.sql)?;
        let n = stmt.execute(params_from_iter(s.params))?;
        Ok(u64::try_from(n).unwrap_or(u64::MAX))
    }

    fn meta_value(&self, key: &str) -> Result<Option<Value>, StoreError> {
        self.conn
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")
            .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
            .map_err(|e| backend("read meta", e))
    }

    fn put_meta_value(&self, key: &str, value: Value) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(&sql::upsert_meta::<Sqlite>())
            .and_then(|mut s| s.execute(params![key, value]))
            .map(drop)
            .map_err(|e| backend("write meta", e))
    }

    /// Inserts rows, [`ROWS_PER_INSERT`] per statement; a statement that fails is atomic in
    /// SQLite, and its rows are then retried one by one to name the serial at fault.
    fn insert_device_rows(&self, records: &[DeviceRecord]) -> Result<(), StoreError> {
        let err = |e| backend("insert device", e);
        let mut labels = Vec::new();
        let mut chunks = records.chunks_exact(ROWS_PER_INSERT);
        if chunks.len() > 0 {
            let mut stmt = self
                .conn
                .prepare_cached(&insert_devices_sql(ROWS_PER_INSERT))
                .map_err(err)?;
            for chunk in chunks.by_ref() {
                for (i, record) in chunk.iter().enumerate() {
                    bind_device(&mut stmt, i * DEVICE_PARAMS, record, &mut labels)?;
                }
                match stmt.raw_execute() {
                    Ok(_) => {}
                    Err(e) if is_unique_violation(&e) => {
                        return self.insert_device_rows_singly(chunk);
                    }
                    Err(e) => return Err(err(e)),
                }
            }
        }
        self.insert_device_rows_singly(chunks.remainder())
    }

    fn insert_device_rows_singly(&self, records: &[DeviceRecord]) -> Result<(), StoreError> {
        let err = |e| backend("insert device", e);
        let mut labels = Vec::new();
        let mut stmt = self
            .conn
            .prepare_cached(&insert_devices_sql(1))
            .map_err(err)?;
        for record in records {
            bind_device(&mut stmt, 0, record, &mut labels)?;
            match stmt.raw_execute() {
                Ok(_) => {}
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::Duplicate(format!("device {}", record.serial)));
                }
                Err(e) => return Err(err(e)),
            }
        }
        Ok(())
    }
}

impl Backend for SqliteTx<'_> {
    type Dialect = Sqlite;

    fn run(&mut self, s: &Stmt<'_>) -> Result<u64, StoreError> {
        self.execute(s).map_err(|e| backend(s.operation, e))
    }

    fn run_unique(&mut self, s: &Stmt<'_>) -> Result<Option<u64>, StoreError> {
        match self.execute(s) {
            Ok(n) => Ok(Some(n)),
            Err(e) if is_unique_violation(&e) => Ok(None),
            Err(e) => Err(backend(s.operation, e)),
        }
    }

    fn rows(&mut self, s: &Stmt<'_>, row: &mut OnRow<'_>) -> Result<(), StoreError> {
        let err = |e| backend(s.operation, e);
        let mut stmt = self.conn.prepare_cached(s.sql).map_err(err)?;
        let mut rows = stmt.query(params_from_iter(s.params)).map_err(err)?;
        while let Some(r) = rows.next().map_err(err)? {
            if row(r)?.is_break() {
                break;
            }
        }
        Ok(())
    }

    fn insert_device_batch(&mut self, records: &[DeviceRecord]) -> Result<(), StoreError> {
        // A savepoint makes the batch all-or-nothing even when the caller goes on after an error.
        let run = |sql: &str| {
            self.conn
                .prepare_cached(sql)
                .and_then(|mut s| s.execute([]))
                .map(drop)
                .map_err(|e| backend("insert devices", e))
        };
        run("SAVEPOINT insert_devices")?;
        let result = self.insert_device_rows(records);
        if result.is_err() {
            run("ROLLBACK TO insert_devices")?;
        }
        run("RELEASE insert_devices")?;
        result
    }

    fn stored_audit_head(&mut self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        let seq = self.meta_value(HEAD_SEQ_KEY)?;
        let hash = self.meta_value(HEAD_HASH_KEY)?;
        match (seq, hash) {
            (None, None) => Ok(None),
            (Some(Value::Integer(seq)), Some(Value::Blob(hash))) => {
                codec::audit_head(seq, hash).map(Some)
            }
            _ => Err(StoreError::Corrupt("audit head in meta".into())),
        }
    }

    fn audit_head_location(&self) -> &'static str {
        "meta (store.audit_head_seq, store.audit_head_hash)"
    }

    fn store_audit_event(&mut self, e: &SealedEvent<'_>) -> Result<(), StoreError> {
        // The head last: a failed insert leaves it where it was, and the transaction usable.
        tx::insert_audit_row(self, e)?;
        let (seq, event) = (e.seq, e.event);
        if event.draft.subjects.len() <= AUDIT_INDEXED_SUBJECTS {
            let err = |e| backend("append audit", e);
            let mut stmt = self
                .conn
                .prepare_cached("INSERT INTO audit_subjects (seq, pos, serial) VALUES (?1, ?2, ?3)")
                .map_err(err)?;
            for (pos, serial) in (0_i64..).zip(&event.draft.subjects) {
                stmt.execute(params![seq, pos, serial.as_bytes()])
                    .map_err(err)?;
            }
        }
        self.put_meta_value(HEAD_SEQ_KEY, Value::Integer(seq))?;
        self.put_meta_value(HEAD_HASH_KEY, Value::Blob(event.hash.to_vec()))
    }

    fn app_meta(&mut self, key: &str) -> Result<Option<String>, StoreError> {
        match self.meta_value(&format!("{APP_META_PREFIX}{key}"))? {
            None => Ok(None),
            Some(Value::Text(text)) => Ok(Some(text)),
            Some(_) => Err(StoreError::Corrupt(format!("meta {key} is not text"))),
        }
    }
}

/// `INSERT INTO devices ... VALUES (...), (...)` for `rows` rows, parameters numbered in order.
fn insert_devices_sql(rows: usize) -> String {
    sql::insert_rows::<Sqlite>("devices", &sql::DEVICE_COLUMNS, rows)
}

/// Binds one device's columns, in [`sql::DEVICE_COLUMNS`] order, at parameters `offset + 1 ..`;
/// the labels' JSON text is written into `labels`, reused across rows.
fn bind_device(
    stmt: &mut rusqlite::Statement<'_>,
    offset: usize,
    record: &DeviceRecord,
    labels: &mut Vec<u8>,
) -> Result<(), StoreError> {
    let err = |e| backend("insert device", e);
    for (i, value) in codec::device_values(record).iter().enumerate() {
        let n = offset + i + 1;
        match value {
            codec::Value::TextList(list) => {
                labels.clear();
                serde_json::to_writer(&mut *labels, list).map_err(|e| StoreError::Backend {
                    operation: "encode labels",
                    detail: e.to_string(),
                })?;
                let text = std::str::from_utf8(labels).map_err(|e| codec::corrupt("labels", e))?;
                stmt.raw_bind_parameter(n, text).map_err(err)?;
            }
            value => stmt.raw_bind_parameter(n, value).map_err(err)?,
        }
    }
    Ok(())
}

fn missing(path: &Path) -> StoreError {
    StoreError::NotFound(format!("store database {}", path.display()))
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    e.sqlite_error().is_some_and(|f| {
        f.code == ErrorCode::ConstraintViolation
            && matches!(
                f.extended_code,
                rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                    | rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            )
    })
}

/// A backend error; busy and locked become [`StoreError::Busy`].
fn backend(operation: &'static str, e: rusqlite::Error) -> StoreError {
    if is_busy(&e) {
        StoreError::Busy(format!("{operation}: {e}"))
    } else {
        StoreError::Backend {
            operation,
            detail: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::State;
    use crate::model::{DeviceFilter, DeviceSerial};
    use crate::store::{DeviceUpdate, Scan};

    /// The plan SQLite makes for `sql` (its parameters unbound: without statistics the plan does
    /// not depend on them).
    fn plan(store: &SqliteStore, sql: &str) -> String {
        let mut statement = store
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("prepare");
        let mut rows = statement.raw_query();
        let mut plan = Vec::new();
        while let Some(row) = rows.next().expect("step") {
            plan.push(row.get::<_, String>(3).expect("detail"));
        }
        plan.join("; ")
    }

    /// SQLite plans without statistics and takes the state index for any state filter: one seek
    /// per device of a page. A sweep (bulk work over most of the fleet) walks the primary key.
    #[test]
    fn a_sweep_walks_the_primary_key_and_an_indexed_page_the_state_index() {
        let dir = tempfile::tempdir().expect("dir");
        let store = SqliteStore::open(dir.path().join("store.db")).expect("open");
        let filter = DeviceFilter {
            state: Some(State::Active),
            ..DeviceFilter::default()
        };
        let after = DeviceSerial::new(b"A".to_vec()).expect("serial");
        let update = DeviceUpdate {
            state: None,
            bump_revision: true,
            generation: None,
            changed: crate::model::Change {
                at: 1,
                actor: "a".into(),
                reason: "r".into(),
            },
        };
        for (scan, want) in [
            (Scan::Indexed, "INDEX devices_by_state"),
            (Scan::Sweep, "USING PRIMARY KEY"),
        ] {
            let (clause, _) = sql::device_where::<Sqlite>(&filter, Some(&after), scan);
            let page = plan(
                &store,
                &format!("SELECT serial FROM devices{clause} ORDER BY serial LIMIT 10"),
            );
            assert!(page.contains(want), "{scan:?} page: {page}");
            let (update, _) =
                sql::update_devices::<Sqlite>(&filter, Some(&after), &after, &update, scan);
            let update = plan(&store, &update);
            assert!(update.contains(want), "{scan:?} update: {update}");
        }
    }
}
