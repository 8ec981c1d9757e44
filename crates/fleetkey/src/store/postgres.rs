//! The PostgreSQL store: several `fleetkey serve` instances share one database.
//!
//! - Every [`Store::transaction`] is `SERIALIZABLE`. When PostgreSQL aborts it with a
//!   serialization failure (SQLSTATE `40001`) or a deadlock (`40P01`), the transaction is rolled
//!   back and the closure runs again, up to [`PostgresOptions::max_attempts`] runs with a short
//!   randomised backoff (1 ms doubling to 64 ms); after the last one the error is
//!   [`StoreError::Busy`]. A conflict is detected whether the closure propagates the error or
//!   not: the transaction remembers it.
//! - Two instances cannot interleave a revision bump: both read the device, the second `UPDATE`
//!   (or its commit) fails with `40001`, and its closure runs again on the new row. Every audit
//!   append first updates the one-row `audit_head` table, so two appends never seal against the
//!   same head.
//! - Every [`Store::read`] is `REPEATABLE READ READ ONLY`: one snapshot, taken at its first
//!   statement, which no writer's row lock delays (MVCC readers take no row locks) and which
//!   cannot fail with a serialization conflict, so it is never retried for one. Not
//!   `SERIALIZABLE READ ONLY DEFERRABLE`: that waits for a snapshot no concurrent serializable
//!   writer can invalidate, which is exactly a read queuing behind writes, and buys only the
//!   absence of the read-only anomaly (a snapshot that no serial order of the writers passes
//!   through) that a GET, which writes nothing from what it read, does not care about. Writes
//!   are refused by the `Tx` it gets before SQL is sent (a write the server refused would abort
//!   the transaction), and by `READ ONLY` below that. It ends with `ROLLBACK`. A connection lost
//!   before the closure had its result is reopened and the closure runs once more.
//! - A `Tx` method that fails leaves the transaction usable: inserts use `ON CONFLICT DO NOTHING`
//!   and row counts, bulk inserts run in a savepoint, and text with a NUL character (which
//!   PostgreSQL cannot store) is refused before it is sent. Any other failed statement aborts the
//!   PostgreSQL transaction; the store then refuses to commit it even if the closure returns `Ok`.
//! - Schema: `postgres/0001_initial.sql`, in a PostgreSQL schema of its own
//!   ([`PostgresOptions::schema`], `fleetkey` by default), so several fleets or test runs share
//!   one database. Migrations run in one transaction under an advisory lock, so two instances
//!   starting together do not race; a newer version than this fleetkey knows is refused
//!   ([`StoreError::Schema`]).
//! - Zeroization at rest ([`Store::purge`]): `VACUUM` of the devices table, which prunes old
//!   row versions. PostgreSQL does not zero the freed space, and old versions also live in the
//!   write-ahead log, in WAL archives, in base backups and on replicas: that is outside
//!   fleetkey's control on a server (`docs/postgres.md` says what an operator does).
//! - No TLS: connect over a Unix socket or loopback, or through a tunnel.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::time::Duration;

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::error::SqlState;
use postgres::types::{ToSql, Type};
use postgres::{Client, Config, IsolationLevel, NoTls, Row, Statement, Transaction};

use crate::access::{ApiToken, IdempotencyRecord};
use crate::error::{Error, StoreError};
use crate::model::{DeviceRecord, DeviceSerial};
use crate::store::codec::{self, ColumnError, Columns};
use crate::store::migrations::{self, VERSION_KEY};
use crate::store::read_only::ReadOnlyTx;
use crate::store::sql::{self, Dialect, Params};
use crate::store::tx::{self, APP_META_PREFIX, Backend, OnRow, SealedEvent, Stmt};
use crate::store::{AUDIT_INDEXED_SUBJECTS, Store, Tx};

/// The schema version this fleetkey reads and writes.
pub const SCHEMA_VERSION: i64 = 4;

/// Migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: [&str; 4] = [
    include_str!("postgres/0001_initial.sql"),
    include_str!("postgres/0002_access.sql"),
    include_str!("postgres/0003_deliveries.sql"),
    include_str!("postgres/0004_devices_by_state.sql"),
];

const _: () = assert!(MIGRATIONS.len() as i64 == SCHEMA_VERSION);

/// The PostgreSQL schema of a store unless set otherwise.
pub const DEFAULT_SCHEMA: &str = "fleetkey";

/// Runs of a transaction's closure before a serialization conflict becomes [`StoreError::Busy`].
pub const DEFAULT_MAX_ATTEMPTS: u32 = 30;

/// The first key of the migration advisory lock (the second is the schema name's hash).
const LOCK_CLASS: i32 = 0x666b_6579; // "fkey"

/// How a [`PostgresStore`] connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresOptions {
    /// The PostgreSQL schema holding the store's tables (created when missing): lowercase ASCII
    /// letters, digits and `_`, not starting with a digit, at most 63 bytes.
    pub schema: String,
    /// Runs of a transaction's closure before a serialization conflict is reported as
    /// [`StoreError::Busy`] (at least 1).
    pub max_attempts: u32,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            schema: DEFAULT_SCHEMA.to_owned(),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }
}

/// A fleet store in a PostgreSQL schema.
pub struct PostgresStore {
    client: Client,
    config: Config,
    schema: String,
    max_attempts: u32,
    /// Prepared statements of this connection, by SQL text.
    statements: HashMap<String, Statement>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user@host:port/database`, or the key-value form) and opens
    /// the store in schema [`DEFAULT_SCHEMA`], creating the schema and its tables when missing.
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, &PostgresOptions::default())
    }

    /// Connects with options; see [`PostgresStore::connect`].
    pub fn connect_with(url: &str, options: &PostgresOptions) -> Result<Self, StoreError> {
        Self::connect_inner(url, options, true)
    }

    /// Connects to a store that must exist already (a fleet opening its store): a schema without
    /// fleetkey tables is [`StoreError::NotFound`] rather than created, so a mistyped schema or
    /// database does not quietly start an empty fleet. Migrates an older schema.
    pub fn connect_existing(url: &str, options: &PostgresOptions) -> Result<Self, StoreError> {
        Self::connect_inner(url, options, false)
    }

    fn connect_inner(
        url: &str,
        options: &PostgresOptions,
        create: bool,
    ) -> Result<Self, StoreError> {
        check_schema_name(&options.schema)?;
        // The parse error names what is wrong without repeating the URL (it may hold a password).
        let mut config: Config = url.parse().map_err(|e| StoreError::Backend {
            operation: "parse the PostgreSQL URL",
            detail: format!("{e}"),
        })?;
        if config.get_application_name().is_none() {
            config.application_name("fleetkey");
        }
        let client = open_client(&config, &options.schema)?;
        let mut store = PostgresStore {
            client,
            config,
            schema: options.schema.clone(),
            max_attempts: options.max_attempts.max(1),
            statements: HashMap::new(),
        };
        if !create {
            let schema = store.schema.clone();
            let mut t = store
                .client
                .transaction()
                .map_err(|e| backend("read schema version", e))?;
            let found = schema_version(&mut t, &schema)?;
            t.commit().map_err(|e| backend("read schema version", e))?;
            if found == 0 {
                return Err(StoreError::NotFound(format!(
                    "a fleetkey store in PostgreSQL schema {schema:?}"
                )));
            }
        }
        store.migrate()?;
        Ok(store)
    }

    /// The PostgreSQL schema holding this store.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Brings the schema to [`SCHEMA_VERSION`] under an advisory lock, or refuses a newer one.
    fn migrate(&mut self) -> Result<(), StoreError> {
        let schema = self.schema.clone();
        let err = |e| backend("migrate schema", e);
        let mut t = self.client.transaction().map_err(err)?;
        t.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&LOCK_CLASS, &schema],
        )
        .map_err(err)?;
        t.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
            .map_err(err)?;
        let found = schema_version(&mut t, &schema)?;
        for (reached, sql) in migrations::pending(found, &MIGRATIONS)? {
            t.batch_execute(sql).map_err(err)?;
            let reached = reached.to_string();
            t.execute(&sql::upsert_meta::<Postgres>(), &[&VERSION_KEY, &reached])
                .map_err(err)?;
        }
        t.commit().map_err(err)
    }

    /// Reconnects when the server closed the connection (a restart, an idle timeout).
    fn ensure_connected(&mut self) -> Result<(), StoreError> {
        if self.client.is_closed() {
            self.client = open_client(&self.config, &self.schema)?;
            self.statements.clear();
        }
        Ok(())
    }
}

impl PostgresStore {
    /// One run of [`Store::read`].
    fn read_once(
        &mut self,
        f: &mut dyn FnMut(&mut dyn Tx) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut state = RunState::default();
        let mut t = self
            .client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(|e| backend("begin read transaction", e))?;
        let result = f(&mut ReadOnlyTx(&mut PgTx {
            t: &mut t,
            statements: &mut self.statements,
            state: &mut state,
        }));
        // Nothing to commit; a rollback over a lost connection changes nothing either.
        drop(t.rollback());
        result?;
        match state.aborted {
            None => Ok(()),
            Some(what) => Err(StoreError::Backend {
                operation: "read transaction",
                detail: format!("a statement failed in this transaction ({what})"),
            }
            .into()),
        }
    }
}

fn open_client(config: &Config, schema: &str) -> Result<Client, StoreError> {
    let mut client = config.connect(NoTls).map_err(|e| StoreError::Backend {
        operation: "connect to PostgreSQL",
        detail: e.to_string(),
    })?;
    client
        .batch_execute(&format!("SET search_path TO \"{schema}\""))
        .map_err(|e| backend("set search_path", e))?;
    Ok(client)
}

fn check_schema_name(schema: &str) -> Result<(), StoreError> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && !schema.starts_with(|c: char| c.is_ascii_digit())
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Backend {
            operation: "open store",
            detail: format!(
                "schema name {schema:?}: use 1 to 63 lowercase ASCII letters, digits and _, not starting with a digit"
            ),
        })
    }
}

/// The schema version in `schema`: 0 when it has no fleetkey tables yet.
fn schema_version(t: &mut Transaction<'_>, schema: &str) -> Result<i64, StoreError> {
    let err = |e| backend("read schema version", e);
    let tables: Vec<String> = t
        .query(
            "SELECT tablename::text FROM pg_catalog.pg_tables WHERE schemaname = $1",
            &[&schema],
        )
        .map_err(err)?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(err)?;
    if !tables.iter().any(|t| t == "meta") {
        return if tables.is_empty() {
            Ok(0)
        } else {
            Err(StoreError::Corrupt(format!(
                "schema {schema} has tables but no fleetkey schema: not a fleetkey store"
            )))
        };
    }
    let found: Option<String> = t
        .query_opt("SELECT value FROM meta WHERE key = $1", &[&VERSION_KEY])
        .map_err(err)?
        .map(|r| r.try_get(0))
        .transpose()
        .map_err(err)?;
    migrations::stored_version(found.map(|v| v.parse::<i64>().ok()))
}

/// What one run of a transaction's closure ran into.
#[derive(Default)]
struct RunState {
    /// A serialization failure or deadlock: the run is retried.
    conflict: bool,
    /// A statement failed outside a savepoint: PostgreSQL aborted the transaction.
    aborted: Option<String>,
}

/// The backoff before run `attempt + 1`: 1 ms doubling to 64 ms, times a random 0.5..1.5.
fn backoff(attempt: u32) -> Duration {
    let base = 1u64 << attempt.saturating_sub(1).min(6);
    let jitter = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        % 1000;
    Duration::from_micros(base * (500 + jitter))
}

impl Store for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn transaction(
        &mut self,
        f: &mut dyn FnMut(&mut dyn Tx) -> Result<(), Error>,
    ) -> Result<(), Error> {
        use crate::stats::{StoreEvent, store_event};
        for attempt in 1..=self.max_attempts {
            self.ensure_connected()?;
            store_event("postgres", StoreEvent::Transaction);
            let mut state = RunState::default();
            let mut t = self
                .client
                .build_transaction()
                .isolation_level(IsolationLevel::Serializable)
                .start()
                .map_err(|e| backend("begin transaction", e))?;
            let result = f(&mut PgTx {
                t: &mut t,
                statements: &mut self.statements,
                state: &mut state,
            });
            match result {
                Ok(()) if state.conflict => drop(t.rollback()),
                Ok(()) => {
                    if let Some(what) = state.aborted {
                        drop(t.rollback());
                        return Err(StoreError::Backend {
                            operation: "commit",
                            detail: format!(
                                "a statement failed in this transaction ({what}); rolled back"
                            ),
                        }
                        .into());
                    }
                    match t.commit() {
                        Ok(()) => return Ok(()),
                        Err(e) if is_conflict(&e) => {}
                        Err(e) => {
                            return Err(StoreError::Backend {
                                operation: "commit",
                                detail: format!("{e} (the commit's outcome is unknown if the connection was lost)"),
                            }
                            .into());
                        }
                    }
                }
                Err(e) => {
                    drop(t.rollback());
                    if !state.conflict {
                        return Err(e);
                    }
                }
            }
            if attempt < self.max_attempts {
                store_event("postgres", StoreEvent::Retry);
                std::thread::sleep(backoff(attempt));
            }
        }
        store_event("postgres", StoreEvent::Busy);
        Err(StoreError::Busy(format!(
            "serialization conflicts with concurrent transactions in {} attempts",
            self.max_attempts
        ))
        .into())
    }

    fn read(&mut self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<(), Error>) -> Result<(), Error> {
        /// Runs: the second after a lost connection only.
        const READ_ATTEMPTS: u32 = 2;
        for attempt in 1..=READ_ATTEMPTS {
            self.ensure_connected()?;
            match self.read_once(f) {
                Err(_) if attempt < READ_ATTEMPTS && self.client.is_closed() => {}
                done => return done,
            }
        }
        Err(StoreError::Backend {
            operation: "read transaction",
            detail: "the connection was lost twice".into(),
        }
        .into())
    }

    fn purge(&mut self) -> Result<(), StoreError> {
        self.ensure_connected()?;
        // Prunes the row versions a replaced wrapped root left behind; outside a transaction.
        self.client
            .batch_execute("VACUUM devices")
            .map_err(|e| backend("vacuum", e))
    }

    fn files(&self) -> Vec<PathBuf> {
        Vec::new()
    }
}

/// One transaction's view.
struct PgTx<'a, 't> {
    t: &'a mut Transaction<'t>,
    statements: &'a mut HashMap<String, Statement>,
    state: &'a mut RunState,
}

type PgParams<'p> = [&'p (dyn ToSql + Sync)];

impl PgTx<'_, '_> {
    /// Records what a failed statement means for the transaction, and maps the error.
    fn fail(&mut self, operation: &'static str, e: postgres::Error) -> StoreError {
        if is_conflict(&e) {
            self.state.conflict = true;
        } else if self.state.aborted.is_none() {
            self.state.aborted = Some(format!("{operation}: {e}"));
        }
        backend(operation, e)
    }

    fn statement(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.t.prepare(sql)?;
        self.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    fn execute(
        &mut self,
        operation: &'static str,
        sql: &str,
        params: &PgParams<'_>,
    ) -> Result<u64, StoreError> {
        let result = self.statement(sql).and_then(|s| self.t.execute(&s, params));
        result.map_err(|e| self.fail(operation, e))
    }

    fn query(
        &mut self,
        operation: &'static str,
        sql: &str,
        params: &PgParams<'_>,
    ) -> Result<Vec<Row>, StoreError> {
        let result = self.statement(sql).and_then(|s| self.t.query(&s, params));
        result.map_err(|e| self.fail(operation, e))
    }

    fn query_opt(
        &mut self,
        operation: &'static str,
        sql: &str,
        params: &PgParams<'_>,
    ) -> Result<Option<Row>, StoreError> {
        let mut rows = self.query(operation, sql, params)?;
        if rows.len() > 1 {
            return Err(StoreError::Corrupt(format!(
                "{operation}: more than one row"
            )));
        }
        Ok(rows.pop())
    }

    /// Inserts `records` by `COPY` in a savepoint; on a unique violation the savepoint is rolled
    /// back and the first serial at fault (in batch order) is named.
    fn copy_devices(&mut self, records: &[DeviceRecord]) -> Result<(), StoreError> {
        for r in records {
            tx::check_device::<Self>(r)?;
        }
        let Some(first) = records.first() else {
            return Ok(());
        };
        let types: Vec<Type> = codec::device_values(first).iter().map(pg_type).collect();
        let sql = format!(
            "COPY devices ({}) FROM STDIN (FORMAT binary)",
            sql::list(&sql::DEVICE_COLUMNS)
        );
        let mut sp = self
            .t
            .savepoint("insert_devices")
            .map_err(|e| backend("insert devices", e))?;
        let copied = (|| {
            let mut writer = BinaryCopyInWriter::new(sp.copy_in(&sql)?, &types);
            for r in records {
                let values = codec::device_values(r);
                writer.write(&values.each_ref().map(pg_param))?;
            }
            writer.finish()
        })();
        match copied {
            Ok(_) => sp.commit().map_err(|e| self.fail("insert devices", e)),
            Err(e) => {
                if let Err(e) = sp.rollback() {
                    return Err(self.fail("insert devices", e));
                }
                if is_conflict(&e) {
                    self.state.conflict = true;
                    return Err(backend("insert devices", e));
                }
                if e.code() != Some(&SqlState::UNIQUE_VIOLATION) {
                    return Err(backend("insert devices", e));
                }
                match self.duplicate_in(records) {
                    Some(found) => Err(found),
                    None => {
                        // Not in this transaction's snapshot nor twice in the batch: a
                        // concurrent transaction inserted it. Run again, and see it.
                        self.state.conflict = true;
                        Err(StoreError::Busy(format!(
                            "insert devices: a concurrent transaction inserted a serial of the batch ({e})"
                        )))
                    }
                }
            }
        }
    }

    /// The first record of `records` whose serial is stored or appears earlier in the batch.
    /// Writes rows into `table` with one binary `COPY` (the set writes of group commit).
    fn copy_rows<const N: usize>(
        &mut self,
        table: &str,
        columns: &[&str; N],
        rows: &[[codec::Value<'_>; N]],
    ) -> Result<(), postgres::Error> {
        let Some(first) = rows.first() else {
            return Ok(());
        };
        let types: Vec<Type> = first.iter().map(pg_type).collect();
        let sql = format!(
            "COPY {table} ({}) FROM STDIN (FORMAT binary)",
            sql::list(columns)
        );
        let mut writer = BinaryCopyInWriter::new(self.t.copy_in(&sql)?, &types);
        for r in rows {
            writer.write(&r.each_ref().map(pg_param))?;
        }
        writer.finish().map(drop)
    }

    /// Runs `f` in a savepoint of its own: if it fails, what it wrote is rolled back and the
    /// transaction stays usable (a conflict is still marked, for the run again).
    fn in_savepoint<T>(
        &mut self,
        operation: &'static str,
        f: impl FnOnce(&mut Self) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.t
            .batch_execute("SAVEPOINT fleetkey_set")
            .map_err(|e| self.fail(operation, e))?;
        let aborted = self.state.aborted.clone();
        match f(self) {
            Ok(v) => {
                self.t
                    .batch_execute("RELEASE SAVEPOINT fleetkey_set")
                    .map_err(|e| self.fail(operation, e))?;
                Ok(v)
            }
            Err(e) => {
                self.t
                    .batch_execute(
                        "ROLLBACK TO SAVEPOINT fleetkey_set; RELEASE SAVEPOINT fleetkey_set",
                    )
                    .map_err(|e| self.fail(operation, e))?;
                self.state.aborted = aborted;
                Err(e)
            }
        }
    }

    /// [`Tx::update_device_rows`]: the rows are copied into a temporary table (this session's,
    /// emptied at commit) and applied by one `UPDATE ... FROM`, all or nothing.
    fn update_device_rows_at_once(&mut self, records: &[DeviceRecord]) -> Result<(), StoreError> {
        const OP: &str = "update devices";
        self.in_savepoint(OP, |s| {
            s.t.batch_execute(
                "CREATE TEMP TABLE IF NOT EXISTS devices_staged (LIKE devices) ON COMMIT DELETE ROWS; \
                 DELETE FROM devices_staged",
            )
            .map_err(|e| s.fail(OP, e))?;
            let rows: Vec<_> = records.iter().map(codec::device_values).collect();
            s.copy_rows("devices_staged", &sql::DEVICE_COLUMNS, &rows)
                .map_err(|e| s.fail(OP, e))?;
            // Driven by the serials (the devices' index), each row's values from the staged
            // table: no join plan a table without statistics could turn into a scan of devices.
            let columns: Vec<&str> = sql::DEVICE_COLUMNS
                .iter()
                .copied()
                .filter(|c| *c != "serial")
                .collect();
            let list = columns.join(", ");
            let from = columns
                .iter()
                .map(|c| format!("s.{c}"))
                .collect::<Vec<_>>()
                .join(", ");
            let serials: Vec<&[u8]> = records.iter().map(|r| r.serial.as_bytes()).collect();
            let changed = s.execute(
                OP,
                &format!(
                    "UPDATE devices AS d SET ({list}) = \
                     (SELECT {from} FROM devices_staged AS s WHERE s.serial = d.serial) \
                     WHERE d.serial = ANY($1)"
                ),
                &[&serials],
            )?;
            if changed == records.len() as u64 {
                return Ok(());
            }
            let serials: Vec<DeviceSerial> = records.iter().map(|r| r.serial.clone()).collect();
            let found: std::collections::HashSet<DeviceSerial> = s
                .device_set(&serials)
                .unwrap_or_else(|| Ok(Vec::new()))?
                .into_iter()
                .map(|r| r.serial)
                .collect();
            Err(match serials.iter().find(|s| !found.contains(*s)) {
                Some(absent) => StoreError::NotFound(format!("device {absent}")),
                None => StoreError::Duplicate("a device twice in one set update".into()),
            })
        })
    }

    fn duplicate_in(&mut self, records: &[DeviceRecord]) -> Option<StoreError> {
        let serials: Vec<&[u8]> = records.iter().map(|r| r.serial.as_bytes()).collect();
        let stored = match self.query(
            "insert devices",
            "SELECT serial FROM devices WHERE serial = ANY($1)",
            &[&serials],
        ) {
            Ok(rows) => rows,
            Err(e) => return Some(e),
        };
        let mut seen: std::collections::HashSet<Vec<u8>> = stored
            .iter()
            .filter_map(|r| r.try_get::<_, Vec<u8>>(0).ok())
            .collect();
        records
            .iter()
            .find(|r| !seen.insert(r.serial.as_bytes().to_vec()))
            .map(|r| StoreError::Duplicate(format!("device {}", r.serial)))
    }
}

/// PostgreSQL's SQL: `$N` parameters, `text[]` labels, `ON CONFLICT DO NOTHING` inserts.
pub(crate) struct Postgres;

impl Dialect for Postgres {
    const PARAM: char = '$';

    fn if_absent(target: &str) -> String {
        if target.is_empty() {
            " ON CONFLICT DO NOTHING".to_owned()
        } else {
            format!(" ON CONFLICT {target} DO NOTHING")
        }
    }

    fn labels_hold<'a>(params: &mut Params<'a>, labels: &'a [String]) -> Vec<String> {
        // Every filter label is an element of the device's labels (text equality is byte
        // equality under the "C" collation).
        let n = params.bind(codec::Value::TextList(labels));
        vec![format!("labels @> {n}::text[]")]
    }

    fn unindexed(column: &str) -> String {
        // The planner chooses from its statistics (text has no unary plus here).
        column.to_owned()
    }

    fn blob_contains(column: &str, needle: &str) -> String {
        format!("position({needle}::bytea IN {column}) > 0")
    }

    fn below_action(params: &mut Params<'_>, column: &str, action: &str) -> String {
        let b = params.bind(codec::Value::owned_text(format!("{action}.")));
        format!("starts_with({column}, {b})")
    }
}

/// A parameter as the driver binds it.
fn pg_param<'v>(v: &'v codec::Value<'_>) -> &'v (dyn ToSql + Sync) {
    use codec::Value as V;
    match v {
        V::Int(v) => v,
        V::Int32(v) => v,
        V::Text(v) => v,
        V::Blob(v) => v,
        V::TextList(v) => v,
    }
}

/// The column type a parameter is written as (`COPY` names them).
fn pg_type(v: &codec::Value<'_>) -> Type {
    use codec::Value as V;
    match v {
        V::Int(_) => Type::INT8,
        V::Int32(_) => Type::INT4,
        V::Text(_) => Type::TEXT,
        V::Blob(_) => Type::BYTEA,
        V::TextList(_) => Type::TEXT_ARRAY,
    }
}

fn pg_params<'v>(params: &'v [codec::Value<'_>]) -> Vec<&'v (dyn ToSql + Sync)> {
    params.iter().map(pg_param).collect()
}

impl Columns for Row {
    codec::typed_getters!(try_get);

    fn opt_int(&self, i: usize) -> Result<Option<i64>, ColumnError> {
        match self.columns().get(i).map(|c| c.type_()) {
            Some(&Type::INT4) => self
                .try_get::<_, Option<i32>>(i)
                .map(|v| v.map(i64::from))
                .map_err(ColumnError::read),
            Some(&Type::INT2) => self
                .try_get::<_, Option<i16>>(i)
                .map(|v| v.map(i64::from))
                .map_err(ColumnError::read),
            _ => self.try_get(i).map_err(ColumnError::read),
        }
    }

    fn text_list(&self, i: usize) -> Result<Vec<String>, ColumnError> {
        self.try_get(i).map_err(ColumnError::read)
    }
}

impl Backend for PgTx<'_, '_> {
    type Dialect = Postgres;

    fn run(&mut self, s: &Stmt<'_>) -> Result<u64, StoreError> {
        self.execute(s.operation, s.sql, &pg_params(s.params))
    }

    fn run_unique(&mut self, s: &Stmt<'_>) -> Result<Option<u64>, StoreError> {
        // A unique violation would abort the transaction: the statements skip the row instead.
        self.run(s).map(Some)
    }

    fn rows(&mut self, s: &Stmt<'_>, row: &mut OnRow<'_>) -> Result<(), StoreError> {
        for r in &self.query(s.operation, s.sql, &pg_params(s.params))? {
            if row(r)?.is_break() {
                break;
            }
        }
        Ok(())
    }

    fn check_text(field: &str, value: &str) -> Result<(), StoreError> {
        check_text(field, value)
    }

    fn insert_device_batch(&mut self, records: &[DeviceRecord]) -> Result<(), StoreError> {
        self.copy_devices(records)
    }

    fn stored_audit_head(&mut self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        let err = |e| backend("read audit head", e);
        let row = self
            .query_opt(
                "read audit head",
                "SELECT seq, hash FROM audit_head WHERE id = 1",
                &[],
            )?
            .ok_or_else(|| StoreError::Corrupt("the audit head row is missing".into()))?;
        let seq: i64 = row.try_get(0).map_err(err)?;
        let hash: Option<Vec<u8>> = row.try_get(1).map_err(err)?;
        match (seq, hash) {
            (0, None) => Ok(None),
            (seq, Some(hash)) if seq > 0 => codec::audit_head(seq, hash).map(Some),
            _ => Err(StoreError::Corrupt("audit head".into())),
        }
    }

    fn audit_head_location(&self) -> &'static str {
        "audit_head"
    }

    fn store_audit_events(&mut self, rows: &[SealedEvent<'_>]) -> Result<(), StoreError> {
        const OP: &str = "append audit";
        let Some(last) = rows.last() else {
            return Ok(());
        };
        // The head first, as for one event: a concurrent append conflicts here and is retried.
        let moved = self.execute(
            OP,
            "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1",
            &[&last.seq, &&last.event.hash[..]],
        )?;
        if moved != 1 {
            return Err(StoreError::Corrupt("the audit head row is missing".into()));
        }
        let values: Vec<_> = rows
            .iter()
            .map(|e| codec::audit_values(e.seq, e.event, e.details))
            .collect();
        self.copy_rows("audit", &sql::AUDIT_INSERT_COLUMNS, &values)
            .map_err(|e| self.fail(OP, e))?;
        let (mut seqs, mut positions, mut serials) = (Vec::new(), Vec::new(), Vec::new());
        for e in rows {
            let subjects = &e.event.draft.subjects;
            if subjects.is_empty() || subjects.len() > AUDIT_INDEXED_SUBJECTS {
                continue;
            }
            for (pos, serial) in subjects.iter().enumerate() {
                seqs.push(e.seq);
                positions.push(i32::try_from(pos).unwrap_or(i32::MAX));
                serials.push(serial.as_bytes());
            }
        }
        if !seqs.is_empty() {
            self.execute(
                OP,
                "INSERT INTO audit_subjects (seq, pos, serial) \
                 SELECT * FROM unnest($1::bigint[], $2::integer[], $3::bytea[])",
                &[&seqs, &positions, &serials],
            )?;
        }
        Ok(())
    }

    fn device_set(
        &mut self,
        serials: &[DeviceSerial],
    ) -> Option<Result<Vec<DeviceRecord>, StoreError>> {
        let keys: Vec<&[u8]> = serials.iter().map(|s| s.as_bytes()).collect();
        let sql = format!(
            "SELECT {} FROM devices WHERE serial = ANY($1)",
            sql::list(&sql::DEVICE_COLUMNS)
        );
        Some(
            self.query("read devices", &sql, &[&keys])
                .and_then(|rows| rows.iter().map(|r| codec::device_from_row(r)).collect()),
        )
    }

    fn update_device_set(&mut self, records: &[DeviceRecord]) -> Option<Result<(), StoreError>> {
        Some(self.update_device_rows_at_once(records))
    }

    fn idempotency_set(
        &mut self,
        keys: &[(String, String)],
    ) -> Option<Result<Vec<IdempotencyRecord>, StoreError>> {
        const OP: &str = "read idempotency key";
        let (principals, names): (Vec<&str>, Vec<&str>) =
            keys.iter().map(|(p, k)| (p.as_str(), k.as_str())).unzip();
        let read = self.query(
            OP,
            "SELECT fingerprint, created_at, status, response, principal, key FROM idempotency \
             WHERE (principal, key) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
            &[&principals, &names],
        );
        Some(read.and_then(|rows| {
            rows.iter()
                .map(|r| {
                    let principal: String = r.try_get(4).map_err(|e| backend(OP, e))?;
                    let key: String = r.try_get(5).map_err(|e| backend(OP, e))?;
                    codec::idempotency_from_row(r, &principal, &key)
                })
                .collect()
        }))
    }

    fn insert_idempotency_set(
        &mut self,
        records: &[IdempotencyRecord],
    ) -> Option<Result<(), StoreError>> {
        const OP: &str = "insert idempotency key";
        let rows: Vec<_> = records.iter().map(codec::idempotency_values).collect();
        let copied = self.in_savepoint(OP, |s| {
            match s.copy_rows("idempotency", &sql::IDEMPOTENCY_COLUMNS, &rows) {
                Ok(()) => Ok(()),
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                    Err(StoreError::Duplicate(String::new()))
                }
                Err(e) => Err(s.fail(OP, e)),
            }
        });
        let Err(StoreError::Duplicate(_)) = copied else {
            return Some(copied);
        };
        // Name a key this transaction sees claimed; if it sees none, another transaction claimed
        // one just now: run again, and see it.
        let keys: Vec<(String, String)> = records
            .iter()
            .map(|r| (r.principal.clone(), r.key.clone()))
            .collect();
        Some(match self.idempotency_set(&keys)? {
            Ok(found) => match found.into_iter().next() {
                Some(taken) => Err(StoreError::Duplicate(format!(
                    "idempotency key {}",
                    taken.key
                ))),
                None => {
                    self.state.conflict = true;
                    Err(StoreError::Busy(
                        "insert idempotency keys: a concurrent transaction claimed a key of the set"
                            .into(),
                    ))
                }
            },
            Err(e) => Err(e),
        })
    }

    fn savepoint_step(&mut self, step: tx::Savepoint) -> Result<(), StoreError> {
        // The simple protocol: one round trip for the step's statements, none prepared.
        let sql = step.sql().join("; ");
        if let Err(e) = self.t.batch_execute(&sql) {
            return Err(self.fail(step.operation(), e));
        }
        if step == tx::Savepoint::Rollback {
            // A statement that failed after the savepoint aborted only what the rollback undid;
            // a conflict stays recorded: the whole transaction is run again.
            self.state.aborted = None;
        }
        Ok(())
    }

    fn store_audit_event(&mut self, e: &SealedEvent<'_>) -> Result<(), StoreError> {
        let (seq, event) = (e.seq, e.event);
        // The head first: a concurrent append conflicts here and is retried.
        let moved = self.execute(
            "append audit",
            "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1",
            &[&seq, &&event.hash[..]],
        )?;
        if moved != 1 {
            return Err(StoreError::Corrupt("the audit head row is missing".into()));
        }
        tx::insert_audit_row(self, e)?;
        let subjects = &event.draft.subjects;
        if !subjects.is_empty() && subjects.len() <= AUDIT_INDEXED_SUBJECTS {
            let serials: Vec<&[u8]> = subjects.iter().map(|s| s.as_bytes()).collect();
            self.execute(
                "append audit",
                "INSERT INTO audit_subjects (seq, pos, serial) \
                 SELECT $1, (u.pos - 1)::integer, u.serial FROM unnest($2::bytea[]) WITH ORDINALITY AS u(serial, pos)",
                &[&seq, &serials],
            )?;
        }
        Ok(())
    }

    fn app_meta(&mut self, key: &str) -> Result<Option<String>, StoreError> {
        let key = format!("{APP_META_PREFIX}{key}");
        self.query_opt(
            "read meta",
            "SELECT value FROM meta WHERE key = $1",
            &[&key],
        )?
        .map(|r| r.try_get(0).map_err(|e| backend("read meta", e)))
        .transpose()
    }

    fn token_hash_taken(&mut self, t: &ApiToken) -> Result<bool, StoreError> {
        // A hash taken by another token: refused as a duplicate, without aborting the transaction.
        let clash = self.query_opt(
            "update token",
            "SELECT 1 FROM api_tokens WHERE hash = $1 AND id <> $2",
            &[&&t.hash[..], &t.id],
        )?;
        Ok(clash.is_some())
    }
}

/// PostgreSQL text cannot hold NUL characters: refused before the statement is sent, so that the
/// transaction stays usable.
fn check_text(field: &str, value: &str) -> Result<(), StoreError> {
    if value.contains('\0') {
        return Err(StoreError::Backend {
            operation: "write",
            detail: format!("{field} contains a NUL character, which PostgreSQL text cannot hold"),
        });
    }
    Ok(())
}

/// A serialization failure or a deadlock: the transaction may succeed when run again.
fn is_conflict(e: &postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(&SqlState::T_R_SERIALIZATION_FAILURE | &SqlState::T_R_DEADLOCK_DETECTED)
    )
}

/// A backend error; conflicts become [`StoreError::Busy`].
fn backend(operation: &'static str, e: postgres::Error) -> StoreError {
    let detail = match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    };
    if is_conflict(&e) {
        StoreError::Busy(format!("{operation}: {detail}"))
    } else {
        StoreError::Backend { operation, detail }
    }
}
