//! The SQLite store: the embedded default, one database file in the fleet home.
//!
//! - Journal: WAL, `synchronous = FULL` (a committed revision bump survives power loss: a SHE
//!   counter the registry forgot would be reused), `secure_delete = ON`, `foreign_keys = ON`,
//!   `trusted_schema = OFF`, 8 KiB pages.
//! - Every [`Store::transaction`] starts with `BEGIN IMMEDIATE`: two processes cannot interleave
//!   a read-modify-write. The trait has no read-only transaction, so a listing waits for a writer
//!   too. A transaction waits up to the busy timeout (5 s by default) for the lock, then fails
//!   with [`StoreError::Busy`]; the closure runs once.
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

use rusqlite::types::Value;
use rusqlite::{
    Connection, ErrorCode, OpenFlags, OptionalExtension, Row, params, params_from_iter,
};

use crate::access::{ApiToken, IdempotencyRecord};
use crate::audit::{AuditDraft, AuditEvent, AuditFilter};
use crate::error::{Error, StoreError};
use crate::lifecycle::State;
use crate::model::{
    Change, DeviceFilter, DeviceRecord, DeviceSerial, FleetInfo, GenerationRecord, Scheme,
    UnixMillis, WrappedKey,
};
use crate::store::{AUDIT_INDEXED_SUBJECTS, AuditIndex, PendingDelivery, Store, Tx};

mod access;
mod delivery;
mod retention;
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
/// `Tx::meta` keys are stored under this prefix, apart from the store's own.
const APP_META_PREFIX: &str = "app.";

/// The page size of a new database: 8 KiB pages made bulk inserts about 10% faster than 4 KiB
/// (fewer page splits and WAL frames); a single-row change writes one more 4 KiB, which the
/// fsync dominates.
const PAGE_SIZE: i64 = 8192;

/// Rows per `INSERT` statement in bulk inserts: fewer statement executions, 5-10% faster than
/// one row per statement in the 1M-device measurement.
const ROWS_PER_INSERT: usize = 32;
/// Parameters per device row.
const DEVICE_PARAMS: usize = 11;

const DEVICE_COLUMNS: &str = "serial, she_uid, labels, generation, revision, state, changed_at, changed_actor, \
                              changed_reason, wrapped_root, created_at";

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
        let started = Instant::now();
        let mut attempt = 1;
        loop {
            let result = self
                .conn
                .prepare_cached("BEGIN IMMEDIATE")
                .and_then(|mut s| s.execute([]));
            match result {
                Ok(_) => return Ok(()),
                Err(e) if is_busy(&e) => {
                    let waited = started.elapsed();
                    if attempt >= BEGIN_ATTEMPTS || waited >= self.busy_timeout {
                        return Err(StoreError::Busy(format!(
                            "another connection holds the write lock of {} (waited {} ms)",
                            self.path.display(),
                            waited.as_millis()
                        )));
                    }
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(backend("begin transaction", e)),
            }
        }
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

impl SqliteTx<'_> {
    fn meta_value(&self, key: &str) -> Result<Option<Value>, StoreError> {
        self.conn
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")
            .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
            .map_err(|e| backend("read meta", e))
    }

    fn put_meta_value(&self, key: &str, value: Value) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .and_then(|mut s| s.execute(params![key, value]))
            .map(drop)
            .map_err(|e| backend("write meta", e))
    }

    fn insert_device_row(&self, record: &DeviceRecord) -> Result<(), StoreError> {
        self.insert_device_rows(std::slice::from_ref(record))
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

impl Tx for SqliteTx<'_> {
    fn fleet(&mut self) -> Result<Option<FleetInfo>, StoreError> {
        let err = |e| backend("read fleet", e);
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT fleet_id, scheme, current_generation, created_at FROM fleet WHERE id = 1",
            )
            .map_err(err)?;
        let mut rows = stmt.query([]).map_err(err)?;
        let Some(row) = rows.next().map_err(err)? else {
            return Ok(None);
        };
        let scheme: String = row.get(1).map_err(err)?;
        let current: Option<i64> = row.get(2).map_err(err)?;
        Ok(Some(FleetInfo {
            id: row.get(0).map_err(err)?,
            scheme: [Scheme::Stored, Scheme::Derived, Scheme::Governed]
                .into_iter()
                .find(|s| s.name() == scheme)
                .ok_or_else(|| StoreError::Corrupt(format!("fleet scheme {scheme:?}")))?,
            current_generation: current
                .map(|g| to_u32("fleet current_generation", g))
                .transpose()?,
            created_at: row.get(3).map_err(err)?,
        }))
    }

    fn put_fleet(&mut self, fleet: &FleetInfo) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO fleet (id, fleet_id, scheme, current_generation, created_at) VALUES (1, ?1, ?2, ?3, ?4) \
                 ON CONFLICT (id) DO UPDATE SET fleet_id = excluded.fleet_id, scheme = excluded.scheme, \
                 current_generation = excluded.current_generation, created_at = excluded.created_at",
            )
            .and_then(|mut s| s.execute(params![fleet.id, fleet.scheme.name(), fleet.current_generation, fleet.created_at]))
            .map(drop)
            .map_err(|e| backend("write fleet", e))
    }

    fn insert_generation(&mut self, record: &GenerationRecord) -> Result<(), StoreError> {
        let result = self
            .conn
            .prepare_cached(
                "INSERT INTO generations (generation, state, changed_at, changed_actor, changed_reason, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    record.generation,
                    record.state.name(),
                    record.changed.at,
                    record.changed.actor,
                    record.changed.reason,
                    record.created_at
                ])
            });
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Duplicate(format!(
                "generation {}",
                record.generation
            ))),
            Err(e) => Err(backend("insert generation", e)),
        }
    }

    fn update_generation(&mut self, record: &GenerationRecord) -> Result<(), StoreError> {
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE generations SET state = ?2, changed_at = ?3, changed_actor = ?4, changed_reason = ?5, \
                 created_at = ?6 WHERE generation = ?1",
            )
            .and_then(|mut s| {
                s.execute(params![
                    record.generation,
                    record.state.name(),
                    record.changed.at,
                    record.changed.actor,
                    record.changed.reason,
                    record.created_at
                ])
            })
            .map_err(|e| backend("update generation", e))?;
        if changed == 0 {
            return Err(StoreError::NotFound(format!(
                "generation {}",
                record.generation
            )));
        }
        Ok(())
    }

    fn generation(&mut self, generation: u32) -> Result<Option<GenerationRecord>, StoreError> {
        let err = |e| backend("read generation", e);
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT generation, state, changed_at, changed_actor, changed_reason, created_at FROM generations \
                 WHERE generation = ?1",
            )
            .map_err(err)?;
        let mut rows = stmt.query([generation]).map_err(err)?;
        rows.next()
            .map_err(err)?
            .map(generation_from_row)
            .transpose()
    }

    fn generations(&mut self) -> Result<Vec<GenerationRecord>, StoreError> {
        let err = |e| backend("read generations", e);
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT generation, state, changed_at, changed_actor, changed_reason, created_at FROM generations \
                 ORDER BY generation",
            )
            .map_err(err)?;
        let mut rows = stmt.query([]).map_err(err)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(err)? {
            out.push(generation_from_row(row)?);
        }
        Ok(out)
    }

    fn insert_device(&mut self, record: &DeviceRecord) -> Result<(), StoreError> {
        self.insert_device_row(record)
    }

    fn insert_devices(&mut self, records: &[DeviceRecord]) -> Result<(), StoreError> {
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

    fn update_device(&mut self, record: &DeviceRecord) -> Result<(), StoreError> {
        let labels = labels_json(&record.labels)?;
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE devices SET she_uid = ?2, labels = ?3, generation = ?4, revision = ?5, state = ?6, \
                 changed_at = ?7, changed_actor = ?8, changed_reason = ?9, wrapped_root = ?10, created_at = ?11 \
                 WHERE serial = ?1",
            )
            .and_then(|mut s| {
                s.execute(params![
                    record.serial.as_bytes(),
                    record.she_uid.as_ref().map(|u| &u[..]),
                    labels,
                    record.generation,
                    record.revision,
                    record.state.name(),
                    record.changed.at,
                    record.changed.actor,
                    record.changed.reason,
                    record.wrapped_root.as_ref().map(|w| &w.0[..]),
                    record.created_at,
                ])
            })
            .map_err(|e| backend("update device", e))?;
        if changed == 0 {
            return Err(StoreError::NotFound(format!("device {}", record.serial)));
        }
        Ok(())
    }

    fn device(&mut self, serial: &DeviceSerial) -> Result<Option<DeviceRecord>, StoreError> {
        let err = |e| backend("read device", e);
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE serial = ?1");
        let mut stmt = self.conn.prepare_cached(&sql).map_err(err)?;
        let mut rows = stmt.query([serial.as_bytes()]).map_err(err)?;
        rows.next().map_err(err)?.map(device_from_row).transpose()
    }

    fn devices(
        &mut self,
        filter: &DeviceFilter,
        after: Option<&DeviceSerial>,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let err = |e| backend("list devices", e);
        let (clause, mut values) = device_where(filter, after);
        values.push(Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices{clause} ORDER BY serial LIMIT ?");
        let mut stmt = self.conn.prepare_cached(&sql).map_err(err)?;
        let mut rows = stmt.query(params_from_iter(values)).map_err(err)?;
        let mut out = Vec::with_capacity(limit.min(4096));
        while let Some(row) = rows.next().map_err(err)? {
            out.push(device_from_row(row)?);
        }
        Ok(out)
    }

    fn count_devices(&mut self, filter: &DeviceFilter) -> Result<u64, StoreError> {
        let (clause, values) = device_where(filter, None);
        let sql = format!("SELECT count(*) FROM devices{clause}");
        let count: i64 = self
            .conn
            .prepare_cached(&sql)
            .and_then(|mut s| s.query_row(params_from_iter(values), |r| r.get(0)))
            .map_err(|e| backend("count devices", e))?;
        u64::try_from(count).map_err(|e| corrupt("device count", e))
    }

    fn append_audit(&mut self, draft: AuditDraft) -> Result<AuditEvent, StoreError> {
        let details = super::audit_details_text(&draft)?;
        let head = self.audit_head()?;
        let event = AuditEvent::seal(head, draft);
        let seq = i64::try_from(event.seq).map_err(|e| corrupt("audit sequence", e))?;
        let err = |e| backend("append audit", e);
        self.conn
            .prepare_cached(
                "INSERT INTO audit (seq, at, actor, action, generation, details, prev_hash, hash, \
                 subjects, n_subjects) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    seq,
                    event.draft.at,
                    event.draft.actor,
                    event.draft.action,
                    event.draft.generation,
                    details,
                    &event.prev_hash[..],
                    &event.hash[..],
                    super::encode_subjects(&event.draft.subjects),
                    i64::try_from(event.draft.subjects.len()).unwrap_or(i64::MAX),
                ])
            })
            .map_err(err)?;
        if event.draft.subjects.len() <= AUDIT_INDEXED_SUBJECTS {
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
        self.put_meta_value(HEAD_HASH_KEY, Value::Blob(event.hash.to_vec()))?;
        Ok(event)
    }

    fn audit_events(
        &mut self,
        filter: &AuditFilter,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let Ok(after_seq) = i64::try_from(after_seq) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let err = |e| backend("read audit", e);
        let mut sql = String::from(
            "SELECT seq, at, actor, action, generation, details, prev_hash, hash, subjects \
             FROM audit WHERE seq > ?",
        );
        let mut values = Vec::new();
        if let Some(device) = &filter.device {
            // Indexed for point events; a scan of the few bulk events' lists, whose substring
            // matches are confirmed below.
            let encoded = super::encode_subjects(std::slice::from_ref(device));
            sql.push_str(
                " AND (seq IN (SELECT seq FROM audit_subjects WHERE serial = ?) \
                 OR (n_subjects > 16 AND instr(subjects, ?) > 0))",
            );
            values.push(Value::Blob(device.as_bytes().to_vec()));
            values.push(Value::Blob(encoded));
        }
        if let Some(action) = &filter.action {
            // The action itself, or `action.` followed by anything: `action.` <= a < `action/`.
            sql.push_str(" AND (action = ? OR (action >= ? AND action < ?))");
            values.push(Value::Text(action.clone()));
            values.push(Value::Text(format!("{action}.")));
            values.push(Value::Text(format!("{action}/")));
        }
        if let Some(since) = filter.since {
            sql.push_str(" AND at >= ?");
            values.push(Value::Integer(since));
        }
        if let Some(until) = filter.until {
            sql.push_str(" AND at < ?");
            values.push(Value::Integer(until));
        }
        sql.push_str(" ORDER BY seq LIMIT ?");
        let page = i64::try_from(limit).unwrap_or(i64::MAX);

        let mut out = Vec::new();
        let mut after = after_seq;
        let mut stmt = self.conn.prepare_cached(&sql).map_err(err)?;
        loop {
            let mut bound = vec![Value::Integer(after)];
            bound.extend(values.iter().cloned());
            bound.push(Value::Integer(page));
            let mut rows = stmt.query(params_from_iter(bound)).map_err(err)?;
            let mut read = 0usize;
            while let Some(row) = rows.next().map_err(err)? {
                read += 1;
                let seq: i64 = row.get(0).map_err(err)?;
                let r = audit_row(row).map_err(|e| super::in_audit_event(seq, e))?;
                after = r.seq;
                let blob: Vec<u8> = row.get(8).map_err(err)?;
                let subjects =
                    super::decode_subjects(&blob).map_err(|e| super::in_audit_event(seq, e))?;
                if filter
                    .device
                    .as_ref()
                    .is_some_and(|d| !subjects.contains(d))
                {
                    continue; // a substring match across two serials of a bulk list
                }
                out.push(AuditEvent {
                    seq: u64::try_from(r.seq).map_err(|e| corrupt("audit sequence", e))?,
                    draft: AuditDraft {
                        at: r.at,
                        actor: r.actor,
                        action: r.action,
                        generation: r.generation,
                        subjects,
                        details: r.details,
                    },
                    prev_hash: r.prev_hash,
                    hash: r.hash,
                });
                if out.len() == limit {
                    return Ok(out);
                }
            }
            if read < limit {
                return Ok(out);
            }
        }
    }

    fn audit_head(&mut self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        let seq = self.meta_value(HEAD_SEQ_KEY)?;
        let hash = self.meta_value(HEAD_HASH_KEY)?;
        match (seq, hash) {
            (None, None) => Ok(None),
            (Some(Value::Integer(seq)), Some(Value::Blob(hash))) => Ok(Some((
                u64::try_from(seq).map_err(|e| corrupt("audit head", e))?,
                hash.try_into()
                    .map_err(|_| StoreError::Corrupt("audit head hash is not 32 bytes".into()))?,
            ))),
            _ => Err(StoreError::Corrupt("audit head in meta".into())),
        }
    }

    fn audit_head_table(&self) -> &'static str {
        "meta (store.audit_head_seq, store.audit_head_hash)"
    }

    fn audit_index(&mut self, after_seq: u64, through_seq: u64) -> Result<AuditIndex, StoreError> {
        let (low, high) = super::audit_index_range(after_seq, through_seq);
        let err = |e| backend("read audit index", e);
        let mut index = AuditIndex::default();
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT seq, n_subjects FROM audit WHERE seq >= ?1 AND seq <= ?2 ORDER BY seq",
            )
            .map_err(err)?;
        let mut rows = stmt.query(params![low, high]).map_err(err)?;
        while let Some(row) = rows.next().map_err(err)? {
            index
                .counts
                .push((row.get(0).map_err(err)?, row.get(1).map_err(err)?));
        }
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT seq, pos, serial FROM audit_subjects WHERE seq >= ?1 AND seq <= ?2 \
                 ORDER BY seq, pos",
            )
            .map_err(err)?;
        let mut rows = stmt.query(params![low, high]).map_err(err)?;
        while let Some(row) = rows.next().map_err(err)? {
            index.subjects.push((
                row.get(0).map_err(err)?,
                row.get(1).map_err(err)?,
                row.get(2).map_err(err)?,
            ));
        }
        Ok(index)
    }

    fn meta(&mut self, key: &str) -> Result<Option<String>, StoreError> {
        match self.meta_value(&format!("{APP_META_PREFIX}{key}"))? {
            None => Ok(None),
            Some(Value::Text(text)) => Ok(Some(text)),
            Some(_) => Err(StoreError::Corrupt(format!("meta {key} is not text"))),
        }
    }

    fn put_meta(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        self.put_meta_value(
            &format!("{APP_META_PREFIX}{key}"),
            Value::Text(value.to_owned()),
        )
    }

    fn insert_token(&mut self, token: &ApiToken) -> Result<(), StoreError> {
        access::insert_token(self.conn, token)
    }
    fn update_token(&mut self, token: &ApiToken) -> Result<(), StoreError> {
        access::update_token(self.conn, token)
    }
    fn token(&mut self, id: &str) -> Result<Option<ApiToken>, StoreError> {
        access::token(self.conn, id)
    }
    fn token_by_hash(&mut self, hash: &[u8; 32]) -> Result<Option<ApiToken>, StoreError> {
        access::token_by_hash(self.conn, hash)
    }
    fn tokens(&mut self) -> Result<Vec<ApiToken>, StoreError> {
        access::tokens(self.conn)
    }
    fn idempotency(
        &mut self,
        principal: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        access::idempotency(self.conn, principal, key)
    }
    fn insert_idempotency(&mut self, record: &IdempotencyRecord) -> Result<(), StoreError> {
        access::insert_idempotency(self.conn, record)
    }
    fn update_idempotency(&mut self, record: &IdempotencyRecord) -> Result<(), StoreError> {
        access::update_idempotency(self.conn, record)
    }
    fn delete_idempotency(&mut self, principal: &str, key: &str) -> Result<(), StoreError> {
        access::delete_idempotency(self.conn, principal, key)
    }
    fn purge_idempotency(&mut self, created_before: UnixMillis) -> Result<u64, StoreError> {
        retention::purge_idempotency(self.conn, created_before)
    }
    fn insert_delivery(
        &mut self,
        kind: &str,
        payload: &[u8],
        created_at: UnixMillis,
    ) -> Result<u64, StoreError> {
        delivery::insert(self.conn, kind, payload, created_at)
    }
    fn deliveries(
        &mut self,
        kind: &str,
        after_id: u64,
        limit: usize,
    ) -> Result<Vec<PendingDelivery>, StoreError> {
        delivery::list(self.conn, kind, after_id, limit)
    }
    fn count_deliveries(&mut self, kind: &str) -> Result<u64, StoreError> {
        delivery::count(self.conn, kind)
    }
    fn delete_delivery(&mut self, id: u64) -> Result<bool, StoreError> {
        delivery::delete(self.conn, id)
    }
}

/// The `WHERE` clause (with a leading space, or empty) and its parameters for a device filter.
fn device_where(filter: &DeviceFilter, after: Option<&DeviceSerial>) -> (String, Vec<Value>) {
    let mut conds: Vec<&str> = Vec::new();
    let mut values = Vec::new();
    if let Some(state) = filter.state {
        conds.push("state = ?");
        values.push(Value::Text(state.name().to_owned()));
    }
    if let Some(generation) = filter.generation {
        conds.push("generation = ?");
        values.push(Value::Integer(i64::from(generation)));
    }
    for label in &filter.labels {
        conds.push("EXISTS (SELECT 1 FROM json_each(devices.labels) WHERE json_each.value = ?)");
        values.push(Value::Text(label.clone()));
    }
    // One lower bound (the tighter of the prefix and the keyset position) and one upper bound,
    // so that SQLite walks the primary key range.
    let prefix = filter.serial_prefix.as_deref().filter(|p| !p.is_empty());
    match (prefix, after) {
        (Some(p), Some(a)) if a.as_bytes() < p => {
            conds.push("serial >= ?");
            values.push(Value::Blob(p.to_vec()));
        }
        (Some(p), None) => {
            conds.push("serial >= ?");
            values.push(Value::Blob(p.to_vec()));
        }
        (_, Some(a)) => {
            conds.push("serial > ?");
            values.push(Value::Blob(a.as_bytes().to_vec()));
        }
        (None, None) => {}
    }
    if let Some(end) = prefix.and_then(prefix_end) {
        conds.push("serial < ?");
        values.push(Value::Blob(end));
    }
    let clause = if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    };
    (clause, values)
}

/// The least byte string greater than every string starting with `prefix`; `None` when there is
/// none (the prefix is all `0xff`).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// `INSERT INTO devices ... VALUES (...), (...)` for `rows` rows, parameters numbered in order.
fn insert_devices_sql(rows: usize) -> String {
    let mut sql = format!("INSERT INTO devices ({DEVICE_COLUMNS}) VALUES ");
    let row = format!("({})", ["?"; DEVICE_PARAMS].join(", "));
    sql.push_str(&vec![row; rows].join(", "));
    sql
}

/// Binds one device's columns, in [`DEVICE_COLUMNS`] order, at parameters `offset + 1 ..`.
fn bind_device(
    stmt: &mut rusqlite::Statement<'_>,
    offset: usize,
    record: &DeviceRecord,
    labels: &mut Vec<u8>,
) -> Result<(), StoreError> {
    labels.clear();
    labels_json_into(&record.labels, labels)?;
    let labels = std::str::from_utf8(labels).map_err(|e| corrupt("labels", e))?;
    let bind = |stmt: &mut rusqlite::Statement<'_>, i: usize, v: &dyn rusqlite::ToSql| {
        stmt.raw_bind_parameter(offset + i, v)
            .map_err(|e| backend("insert device", e))
    };
    bind(stmt, 1, &record.serial.as_bytes())?;
    bind(stmt, 2, &record.she_uid.as_ref().map(|u| &u[..]))?;
    bind(stmt, 3, &labels)?;
    bind(stmt, 4, &record.generation)?;
    bind(stmt, 5, &record.revision)?;
    bind(stmt, 6, &record.state.name())?;
    bind(stmt, 7, &record.changed.at)?;
    bind(stmt, 8, &record.changed.actor)?;
    bind(stmt, 9, &record.changed.reason)?;
    bind(stmt, 10, &record.wrapped_root.as_ref().map(|w| &w.0[..]))?;
    bind(stmt, 11, &record.created_at)
}

fn labels_json(labels: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(labels).map_err(|e| encoding("encode labels", e))
}

/// Labels as a JSON array of strings, appended to `out`.
fn labels_json_into(labels: &[String], out: &mut Vec<u8>) -> Result<(), StoreError> {
    serde_json::to_writer(out, labels).map_err(|e| encoding("encode labels", e))
}

fn device_from_row(row: &Row<'_>) -> Result<DeviceRecord, StoreError> {
    let err = |e| backend("read device", e);
    let serial: Vec<u8> = row.get(0).map_err(err)?;
    let serial = DeviceSerial::new(serial).map_err(|e| corrupt("device serial", e))?;
    let she_uid: Option<Vec<u8>> = row.get(1).map_err(err)?;
    let labels: String = row.get(2).map_err(err)?;
    let state: String = row.get(5).map_err(err)?;
    let wrapped_root: Option<Vec<u8>> = row.get(9).map_err(err)?;
    Ok(DeviceRecord {
        she_uid: she_uid
            .map(|u| {
                u.try_into().map_err(|_| {
                    StoreError::Corrupt(format!("device {serial}: she_uid is not 15 bytes"))
                })
            })
            .transpose()?,
        labels: serde_json::from_str(&labels).map_err(|e| corrupt("device labels", e))?,
        generation: to_u32("device generation", row.get(3).map_err(err)?)?,
        revision: to_u32("device revision", row.get(4).map_err(err)?)?,
        state: parse_state(&state)?,
        changed: Change {
            at: row.get(6).map_err(err)?,
            actor: row.get(7).map_err(err)?,
            reason: row.get(8).map_err(err)?,
        },
        wrapped_root: wrapped_root.map(WrappedKey),
        created_at: row.get(10).map_err(err)?,
        serial,
    })
}

fn generation_from_row(row: &Row<'_>) -> Result<GenerationRecord, StoreError> {
    let err = |e| backend("read generation", e);
    let state: String = row.get(1).map_err(err)?;
    Ok(GenerationRecord {
        generation: to_u32("generation", row.get(0).map_err(err)?)?,
        state: parse_state(&state)?,
        changed: Change {
            at: row.get(2).map_err(err)?,
            actor: row.get(3).map_err(err)?,
            reason: row.get(4).map_err(err)?,
        },
        created_at: row.get(5).map_err(err)?,
    })
}

struct AuditRow {
    seq: i64,
    at: i64,
    actor: String,
    action: String,
    generation: Option<u32>,
    details: serde_json::Value,
    prev_hash: [u8; 32],
    hash: [u8; 32],
}

fn audit_row(row: &Row<'_>) -> Result<AuditRow, StoreError> {
    let err = |e| backend("read audit", e);
    let generation: Option<i64> = row.get(4).map_err(err)?;
    let details: String = row.get(5).map_err(err)?;
    let hash32 = |i: usize| -> Result<[u8; 32], StoreError> {
        let bytes: Vec<u8> = row.get(i).map_err(err)?;
        bytes
            .try_into()
            .map_err(|_| StoreError::Corrupt("audit hash is not 32 bytes".into()))
    };
    Ok(AuditRow {
        seq: row.get(0).map_err(err)?,
        at: row.get(1).map_err(err)?,
        actor: row.get(2).map_err(err)?,
        action: row.get(3).map_err(err)?,
        generation: generation
            .map(|g| to_u32("audit generation", g))
            .transpose()?,
        details: serde_json::from_str(&details).map_err(|e| corrupt("audit details", e))?,
        prev_hash: hash32(6)?,
        hash: hash32(7)?,
    })
}

fn parse_state(name: &str) -> Result<State, StoreError> {
    State::from_name(name).ok_or_else(|| StoreError::Corrupt(format!("unknown state {name:?}")))
}

fn to_u32(what: &str, value: i64) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} {value} is out of range")))
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
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

fn encoding(operation: &'static str, e: serde_json::Error) -> StoreError {
    StoreError::Backend {
        operation,
        detail: e.to_string(),
    }
}

#[cfg(test)]
mod tests;
