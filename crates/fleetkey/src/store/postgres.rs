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

/// The schema version this fleetkey reads and writes.
pub const SCHEMA_VERSION: i64 = 3;

/// Migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: [&str; 3] = [
    include_str!("postgres/0001_initial.sql"),
    include_str!("postgres/0002_access.sql"),
    include_str!("postgres/0003_deliveries.sql"),
];

const _: () = assert!(MIGRATIONS.len() as i64 == SCHEMA_VERSION);

/// The PostgreSQL schema of a store unless set otherwise.
pub const DEFAULT_SCHEMA: &str = "fleetkey";

/// Runs of a transaction's closure before a serialization conflict becomes [`StoreError::Busy`].
pub const DEFAULT_MAX_ATTEMPTS: u32 = 30;

/// The `meta` key of the schema version.
const VERSION_KEY: &str = "store.schema_version";
/// `Tx::meta` keys are stored under this prefix, apart from the store's own.
const APP_META_PREFIX: &str = "app.";

/// The first key of the migration advisory lock (the second is the schema name's hash).
const LOCK_CLASS: i32 = 0x666b_6579; // "fkey"

/// Up to this many subjects an event also gets an `audit_subjects` row per subject.
const INDEXED_SUBJECTS: usize = AUDIT_INDEXED_SUBJECTS;

const DEVICE_COLUMNS: &str = "serial, she_uid, labels, generation, revision, state, changed_at, changed_actor, \
                              changed_reason, wrapped_root, created_at";

/// The column types of [`DEVICE_COLUMNS`], for `COPY ... (FORMAT binary)`.
const DEVICE_TYPES: [Type; 11] = [
    Type::BYTEA,
    Type::BYTEA,
    Type::TEXT_ARRAY,
    Type::INT8,
    Type::INT8,
    Type::TEXT,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::BYTEA,
    Type::INT8,
];

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
        if found > SCHEMA_VERSION {
            return Err(StoreError::Schema {
                found,
                expected: SCHEMA_VERSION,
            });
        }
        let done = usize::try_from(found).unwrap_or(0);
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(done) {
            t.batch_execute(sql).map_err(err)?;
            let reached = i64::try_from(i + 1).unwrap_or(i64::MAX).to_string();
            t.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&VERSION_KEY, &reached],
            )
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
    match found.map(|v| v.parse::<i64>()) {
        Some(Ok(v)) if v >= 1 => Ok(v),
        Some(_) => Err(StoreError::Corrupt(format!(
            "meta {VERSION_KEY} is not a positive integer"
        ))),
        None => Err(StoreError::Corrupt(format!(
            "meta {VERSION_KEY} is missing"
        ))),
    }
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
        for attempt in 1..=self.max_attempts {
            self.ensure_connected()?;
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
                std::thread::sleep(backoff(attempt));
            }
        }
        Err(StoreError::Busy(format!(
            "serialization conflicts with concurrent transactions in {} attempts",
            self.max_attempts
        ))
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

type Params<'p> = [&'p (dyn ToSql + Sync)];

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
        params: &Params<'_>,
    ) -> Result<u64, StoreError> {
        let result = self.statement(sql).and_then(|s| self.t.execute(&s, params));
        result.map_err(|e| self.fail(operation, e))
    }

    fn query(
        &mut self,
        operation: &'static str,
        sql: &str,
        params: &Params<'_>,
    ) -> Result<Vec<Row>, StoreError> {
        let result = self.statement(sql).and_then(|s| self.t.query(&s, params));
        result.map_err(|e| self.fail(operation, e))
    }

    fn query_opt(
        &mut self,
        operation: &'static str,
        sql: &str,
        params: &Params<'_>,
    ) -> Result<Option<Row>, StoreError> {
        let mut rows = self.query(operation, sql, params)?;
        if rows.len() > 1 {
            return Err(StoreError::Corrupt(format!(
                "{operation}: more than one row"
            )));
        }
        Ok(rows.pop())
    }

    fn meta_value(&mut self, key: &str) -> Result<Option<String>, StoreError> {
        self.query_opt(
            "read meta",
            "SELECT value FROM meta WHERE key = $1",
            &[&key],
        )?
        .map(|r| r.try_get(0).map_err(|e| backend("read meta", e)))
        .transpose()
    }

    /// Inserts `records` by `COPY` in a savepoint; on a unique violation the savepoint is rolled
    /// back and the first serial at fault (in batch order) is named.
    fn copy_devices(&mut self, records: &[DeviceRecord]) -> Result<(), StoreError> {
        for r in records {
            check_device_text(r)?;
        }
        let sql = format!("COPY devices ({DEVICE_COLUMNS}) FROM STDIN (FORMAT binary)");
        let mut sp = self
            .t
            .savepoint("insert_devices")
            .map_err(|e| backend("insert devices", e))?;
        let copied = (|| {
            let mut writer = BinaryCopyInWriter::new(sp.copy_in(&sql)?, &DEVICE_TYPES);
            for r in records {
                writer.write(&[
                    &r.serial.as_bytes(),
                    &r.she_uid.as_ref().map(|u| &u[..]),
                    &r.labels,
                    &i64::from(r.generation),
                    &i64::from(r.revision),
                    &r.state.name(),
                    &r.changed.at,
                    &r.changed.actor,
                    &r.changed.reason,
                    &r.wrapped_root.as_ref().map(|w| &w.0[..]),
                    &r.created_at,
                ])?;
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

impl Tx for PgTx<'_, '_> {
    fn fleet(&mut self) -> Result<Option<FleetInfo>, StoreError> {
        let err = |e| backend("read fleet", e);
        let Some(row) = self.query_opt(
            "read fleet",
            "SELECT fleet_id, scheme, current_generation, created_at FROM fleet WHERE id = 1",
            &[],
        )?
        else {
            return Ok(None);
        };
        let scheme: String = row.try_get(1).map_err(err)?;
        let current: Option<i64> = row.try_get(2).map_err(err)?;
        Ok(Some(FleetInfo {
            id: row.try_get(0).map_err(err)?,
            scheme: [Scheme::Stored, Scheme::Derived, Scheme::Governed]
                .into_iter()
                .find(|s| s.name() == scheme)
                .ok_or_else(|| StoreError::Corrupt(format!("fleet scheme {scheme:?}")))?,
            current_generation: current
                .map(|g| to_u32("fleet current_generation", g))
                .transpose()?,
            created_at: row.try_get(3).map_err(err)?,
        }))
    }

    fn put_fleet(&mut self, fleet: &FleetInfo) -> Result<(), StoreError> {
        check_text("fleet id", &fleet.id)?;
        self.execute(
            "write fleet",
            "INSERT INTO fleet (id, fleet_id, scheme, current_generation, created_at) VALUES (1, $1, $2, $3, $4) \
             ON CONFLICT (id) DO UPDATE SET fleet_id = excluded.fleet_id, scheme = excluded.scheme, \
             current_generation = excluded.current_generation, created_at = excluded.created_at",
            &[
                &fleet.id,
                &fleet.scheme.name(),
                &fleet.current_generation.map(i64::from),
                &fleet.created_at,
            ],
        )
        .map(drop)
    }

    fn insert_generation(&mut self, record: &GenerationRecord) -> Result<(), StoreError> {
        check_change(&record.changed)?;
        let inserted = self.execute(
            "insert generation",
            "INSERT INTO generations (generation, state, changed_at, changed_actor, changed_reason, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (generation) DO NOTHING",
            &[
                &i64::from(record.generation),
                &record.state.name(),
                &record.changed.at,
                &record.changed.actor,
                &record.changed.reason,
                &record.created_at,
            ],
        )?;
        if inserted == 0 {
            return Err(StoreError::Duplicate(format!(
                "generation {}",
                record.generation
            )));
        }
        Ok(())
    }

    fn update_generation(&mut self, record: &GenerationRecord) -> Result<(), StoreError> {
        check_change(&record.changed)?;
        let changed = self.execute(
            "update generation",
            "UPDATE generations SET state = $2, changed_at = $3, changed_actor = $4, changed_reason = $5, \
             created_at = $6 WHERE generation = $1",
            &[
                &i64::from(record.generation),
                &record.state.name(),
                &record.changed.at,
                &record.changed.actor,
                &record.changed.reason,
                &record.created_at,
            ],
        )?;
        if changed == 0 {
            return Err(StoreError::NotFound(format!(
                "generation {}",
                record.generation
            )));
        }
        Ok(())
    }

    fn generation(&mut self, generation: u32) -> Result<Option<GenerationRecord>, StoreError> {
        self.query_opt(
            "read generation",
            "SELECT generation, state, changed_at, changed_actor, changed_reason, created_at FROM generations \
             WHERE generation = $1",
            &[&i64::from(generation)],
        )?
        .as_ref()
        .map(generation_from_row)
        .transpose()
    }

    fn generations(&mut self) -> Result<Vec<GenerationRecord>, StoreError> {
        self.query(
            "read generations",
            "SELECT generation, state, changed_at, changed_actor, changed_reason, created_at FROM generations \
             ORDER BY generation",
            &[],
        )?
        .iter()
        .map(generation_from_row)
        .collect()
    }

    fn insert_device(&mut self, record: &DeviceRecord) -> Result<(), StoreError> {
        check_device_text(record)?;
        let sql = format!(
            "INSERT INTO devices ({DEVICE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (serial) DO NOTHING"
        );
        let inserted = self.execute(
            "insert device",
            &sql,
            &[
                &record.serial.as_bytes(),
                &record.she_uid.as_ref().map(|u| &u[..]),
                &record.labels,
                &i64::from(record.generation),
                &i64::from(record.revision),
                &record.state.name(),
                &record.changed.at,
                &record.changed.actor,
                &record.changed.reason,
                &record.wrapped_root.as_ref().map(|w| &w.0[..]),
                &record.created_at,
            ],
        )?;
        if inserted == 0 {
            return Err(StoreError::Duplicate(format!("device {}", record.serial)));
        }
        Ok(())
    }

    fn insert_devices(&mut self, records: &[DeviceRecord]) -> Result<(), StoreError> {
        match records {
            [] => Ok(()),
            [one] => self.insert_device(one),
            _ => self.copy_devices(records),
        }
    }

    fn update_device(&mut self, record: &DeviceRecord) -> Result<(), StoreError> {
        check_device_text(record)?;
        let changed = self.execute(
            "update device",
            "UPDATE devices SET she_uid = $2, labels = $3, generation = $4, revision = $5, state = $6, \
             changed_at = $7, changed_actor = $8, changed_reason = $9, wrapped_root = $10, created_at = $11 \
             WHERE serial = $1",
            &[
                &record.serial.as_bytes(),
                &record.she_uid.as_ref().map(|u| &u[..]),
                &record.labels,
                &i64::from(record.generation),
                &i64::from(record.revision),
                &record.state.name(),
                &record.changed.at,
                &record.changed.actor,
                &record.changed.reason,
                &record.wrapped_root.as_ref().map(|w| &w.0[..]),
                &record.created_at,
            ],
        )?;
        if changed == 0 {
            return Err(StoreError::NotFound(format!("device {}", record.serial)));
        }
        Ok(())
    }

    fn device(&mut self, serial: &DeviceSerial) -> Result<Option<DeviceRecord>, StoreError> {
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE serial = $1");
        self.query_opt("read device", &sql, &[&serial.as_bytes()])?
            .as_ref()
            .map(device_from_row)
            .transpose()
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
        let mut w = DeviceWhere::new(filter, after);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let n = w.push(Box::new(limit));
        let sql = format!(
            "SELECT {DEVICE_COLUMNS} FROM devices{} ORDER BY serial LIMIT ${n}",
            w.clause()
        );
        let params = w.params();
        self.query("list devices", &sql, &params)?
            .iter()
            .map(device_from_row)
            .collect()
    }

    fn count_devices(&mut self, filter: &DeviceFilter) -> Result<u64, StoreError> {
        let w = DeviceWhere::new(filter, None);
        let sql = format!("SELECT count(*) FROM devices{}", w.clause());
        let params = w.params();
        let rows = self.query("count devices", &sql, &params)?;
        let count: i64 = rows
            .first()
            .ok_or_else(|| StoreError::Corrupt("count devices: no row".into()))?
            .try_get(0)
            .map_err(|e| backend("count devices", e))?;
        u64::try_from(count).map_err(|e| corrupt("device count", e))
    }

    fn append_audit(&mut self, draft: AuditDraft) -> Result<AuditEvent, StoreError> {
        check_text("audit actor", &draft.actor)?;
        check_text("audit action", &draft.action)?;
        let details = super::audit_details_text(&draft)?;
        let head = self.audit_head()?;
        let event = AuditEvent::seal(head, draft);
        let seq = i64::try_from(event.seq).map_err(|e| corrupt("audit sequence", e))?;
        // The head first: a concurrent append conflicts here and is retried.
        let moved = self.execute(
            "append audit",
            "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1",
            &[&seq, &&event.hash[..]],
        )?;
        if moved != 1 {
            return Err(StoreError::Corrupt("the audit head row is missing".into()));
        }
        let n_subjects = i32::try_from(event.draft.subjects.len()).unwrap_or(i32::MAX);
        self.execute(
            "append audit",
            "INSERT INTO audit (seq, at, actor, action, generation, details, prev_hash, hash, \
             subjects, n_subjects) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &seq,
                &event.draft.at,
                &event.draft.actor,
                &event.draft.action,
                &event.draft.generation.map(i64::from),
                &details,
                &&event.prev_hash[..],
                &&event.hash[..],
                &super::encode_subjects(&event.draft.subjects),
                &n_subjects,
            ],
        )?;
        if !event.draft.subjects.is_empty() && event.draft.subjects.len() <= INDEXED_SUBJECTS {
            let serials: Vec<&[u8]> = event.draft.subjects.iter().map(|s| s.as_bytes()).collect();
            self.execute(
                "append audit",
                "INSERT INTO audit_subjects (seq, pos, serial) \
                 SELECT $1, (u.pos - 1)::integer, u.serial FROM unnest($2::bytea[]) WITH ORDINALITY AS u(serial, pos)",
                &[&seq, &serials],
            )?;
        }
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
        let mut sql = String::from(
            "SELECT seq, at, actor, action, generation, details, prev_hash, hash, subjects \
             FROM audit WHERE seq > $1",
        );
        let mut values: Vec<Box<dyn ToSql + Sync>> = Vec::new();
        let next = |values: &mut Vec<Box<dyn ToSql + Sync>>, v: Box<dyn ToSql + Sync>| {
            values.push(v);
            values.len() + 1
        };
        if let Some(device) = &filter.device {
            // Indexed for point events; a scan of the few bulk events' lists, whose substring
            // matches are confirmed below.
            let encoded = super::encode_subjects(std::slice::from_ref(device));
            let a = next(&mut values, Box::new(device.as_bytes().to_vec()));
            let b = next(&mut values, Box::new(encoded));
            sql.push_str(&format!(
                " AND (seq IN (SELECT seq FROM audit_subjects WHERE serial = ${a}) \
                 OR (n_subjects > {INDEXED_SUBJECTS} AND position(${b}::bytea IN subjects) > 0))"
            ));
        }
        if let Some(action) = &filter.action {
            let a = next(&mut values, Box::new(action.clone()));
            let b = next(&mut values, Box::new(format!("{action}.")));
            sql.push_str(&format!(
                " AND (action = ${a} OR starts_with(action, ${b}))"
            ));
        }
        if let Some(since) = filter.since {
            let a = next(&mut values, Box::new(since));
            sql.push_str(&format!(" AND at >= ${a}"));
        }
        if let Some(until) = filter.until {
            let a = next(&mut values, Box::new(until));
            sql.push_str(&format!(" AND at < ${a}"));
        }
        let l = values.len() + 2;
        sql.push_str(&format!(" ORDER BY seq LIMIT ${l}"));
        let page = i64::try_from(limit).unwrap_or(i64::MAX);

        let err = |e| backend("read audit", e);
        let mut out = Vec::new();
        let mut after = after_seq;
        loop {
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&after];
            params.extend(values.iter().map(|v| &**v));
            params.push(&page);
            let rows = self.query("read audit", &sql, &params)?;
            let read = rows.len();
            for row in &rows {
                let seq: i64 = row.try_get(0).map_err(err)?;
                after = seq;
                let blob: Vec<u8> = row.try_get(8).map_err(err)?;
                let subjects =
                    super::decode_subjects(&blob).map_err(|e| super::in_audit_event(seq, e))?;
                if filter
                    .device
                    .as_ref()
                    .is_some_and(|d| !subjects.contains(d))
                {
                    continue; // a substring match across two serials of a bulk list
                }
                out.push(
                    audit_from_row(row, seq, subjects)
                        .map_err(|e| super::in_audit_event(seq, e))?,
                );
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
            (seq, Some(hash)) if seq > 0 => Ok(Some((
                u64::try_from(seq).map_err(|e| corrupt("audit head", e))?,
                hash.try_into()
                    .map_err(|_| StoreError::Corrupt("audit head hash is not 32 bytes".into()))?,
            ))),
            _ => Err(StoreError::Corrupt("audit head".into())),
        }
    }

    fn audit_head_table(&self) -> &'static str {
        "audit_head"
    }

    fn audit_index(&mut self, after_seq: u64, through_seq: u64) -> Result<AuditIndex, StoreError> {
        let (low, high) = super::audit_index_range(after_seq, through_seq);
        let err = |e| backend("read audit index", e);
        let mut index = AuditIndex::default();
        let rows = self.query(
            "read audit index",
            "SELECT seq, n_subjects FROM audit WHERE seq >= $1 AND seq <= $2 ORDER BY seq",
            &[&low, &high],
        )?;
        for row in &rows {
            let n: i32 = row.try_get(1).map_err(err)?;
            index
                .counts
                .push((row.try_get(0).map_err(err)?, i64::from(n)));
        }
        let rows = self.query(
            "read audit index",
            "SELECT seq, pos, serial FROM audit_subjects WHERE seq >= $1 AND seq <= $2 \
             ORDER BY seq, pos",
            &[&low, &high],
        )?;
        for row in &rows {
            let pos: i32 = row.try_get(1).map_err(err)?;
            index.subjects.push((
                row.try_get(0).map_err(err)?,
                i64::from(pos),
                row.try_get(2).map_err(err)?,
            ));
        }
        Ok(index)
    }

    fn meta(&mut self, key: &str) -> Result<Option<String>, StoreError> {
        check_text("meta key", key)?;
        self.meta_value(&format!("{APP_META_PREFIX}{key}"))
    }

    fn put_meta(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        check_text("meta key", key)?;
        check_text("meta value", value)?;
        self.execute(
            "write meta",
            "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&format!("{APP_META_PREFIX}{key}"), &value],
        )
        .map(drop)
    }

    fn insert_token(&mut self, token: &ApiToken) -> Result<(), StoreError> {
        self.insert_token_row(token)
    }
    fn update_token(&mut self, token: &ApiToken) -> Result<(), StoreError> {
        self.update_token_row(token)
    }
    fn token(&mut self, id: &str) -> Result<Option<ApiToken>, StoreError> {
        self.token_row(id)
    }
    fn token_by_hash(&mut self, hash: &[u8; 32]) -> Result<Option<ApiToken>, StoreError> {
        self.token_row_by_hash(hash)
    }
    fn tokens(&mut self) -> Result<Vec<ApiToken>, StoreError> {
        self.token_rows()
    }
    fn idempotency(
        &mut self,
        principal: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.idempotency_row(principal, key)
    }
    fn insert_idempotency(&mut self, record: &IdempotencyRecord) -> Result<(), StoreError> {
        self.write_idempotency_row(record, true)
    }
    fn update_idempotency(&mut self, record: &IdempotencyRecord) -> Result<(), StoreError> {
        self.write_idempotency_row(record, false)
    }
    fn delete_idempotency(&mut self, principal: &str, key: &str) -> Result<(), StoreError> {
        self.delete_idempotency_row(principal, key)
    }
    fn purge_idempotency(&mut self, created_before: UnixMillis) -> Result<u64, StoreError> {
        self.purge_idempotency_rows(created_before)
    }
    fn insert_delivery(
        &mut self,
        kind: &str,
        payload: &[u8],
        created_at: UnixMillis,
    ) -> Result<u64, StoreError> {
        self.insert_delivery_row(kind, payload, created_at)
    }
    fn deliveries(
        &mut self,
        kind: &str,
        after_id: u64,
        limit: usize,
    ) -> Result<Vec<PendingDelivery>, StoreError> {
        self.delivery_rows(kind, after_id, limit)
    }
    fn count_deliveries(&mut self, kind: &str) -> Result<u64, StoreError> {
        self.count_delivery_rows(kind)
    }
    fn delete_delivery(&mut self, id: u64) -> Result<bool, StoreError> {
        self.delete_delivery_row(id)
    }
}

/// The `WHERE` clause of a device filter and its parameters, numbered from `$1`.
struct DeviceWhere {
    conds: Vec<String>,
    values: Vec<Box<dyn ToSql + Sync>>,
}

impl DeviceWhere {
    fn new(filter: &DeviceFilter, after: Option<&DeviceSerial>) -> Self {
        let mut w = DeviceWhere {
            conds: Vec::new(),
            values: Vec::new(),
        };
        if let Some(state) = filter.state {
            let n = w.push(Box::new(state.name()));
            w.conds.push(format!("state = ${n}"));
        }
        if let Some(generation) = filter.generation {
            let n = w.push(Box::new(i64::from(generation)));
            w.conds.push(format!("generation = ${n}"));
        }
        if !filter.labels.is_empty() {
            // Every filter label is an element of the device's labels (text equality is byte
            // equality under the "C" collation).
            let n = w.push(Box::new(filter.labels.clone()));
            w.conds.push(format!("labels @> ${n}::text[]"));
        }
        // One lower bound (the tighter of the prefix and the keyset position) and one upper
        // bound, so that PostgreSQL walks the primary key range.
        let prefix = filter.serial_prefix.as_deref().filter(|p| !p.is_empty());
        match (prefix, after) {
            (Some(p), Some(a)) if a.as_bytes() < p => {
                let n = w.push(Box::new(p.to_vec()));
                w.conds.push(format!("serial >= ${n}"));
            }
            (Some(p), None) => {
                let n = w.push(Box::new(p.to_vec()));
                w.conds.push(format!("serial >= ${n}"));
            }
            (_, Some(a)) => {
                let n = w.push(Box::new(a.as_bytes().to_vec()));
                w.conds.push(format!("serial > ${n}"));
            }
            (None, None) => {}
        }
        // An all-0xff prefix has no upper bound, and needs none: every serial at or above it
        // starts with it.
        if let Some(end) = prefix.and_then(prefix_end) {
            let n = w.push(Box::new(end));
            w.conds.push(format!("serial < ${n}"));
        }
        w
    }

    /// Adds a parameter; returns its number.
    fn push(&mut self, value: Box<dyn ToSql + Sync>) -> usize {
        self.values.push(value);
        self.values.len()
    }

    fn clause(&self) -> String {
        if self.conds.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.conds.join(" AND "))
        }
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.values.iter().map(|v| &**v).collect()
    }
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

fn check_change(change: &Change) -> Result<(), StoreError> {
    check_text("changed.actor", &change.actor)?;
    check_text("changed.reason", &change.reason)
}

fn check_device_text(record: &DeviceRecord) -> Result<(), StoreError> {
    check_change(&record.changed)?;
    record
        .labels
        .iter()
        .try_for_each(|l| check_text("device label", l))
}

fn device_from_row(row: &Row) -> Result<DeviceRecord, StoreError> {
    let err = |e| backend("read device", e);
    let serial: Vec<u8> = row.try_get(0).map_err(err)?;
    let serial = DeviceSerial::new(serial).map_err(|e| corrupt("device serial", e))?;
    let she_uid: Option<Vec<u8>> = row.try_get(1).map_err(err)?;
    let state: String = row.try_get(5).map_err(err)?;
    let wrapped_root: Option<Vec<u8>> = row.try_get(9).map_err(err)?;
    Ok(DeviceRecord {
        she_uid: she_uid
            .map(|u| {
                u.try_into().map_err(|_| {
                    StoreError::Corrupt(format!("device {serial}: she_uid is not 15 bytes"))
                })
            })
            .transpose()?,
        labels: row.try_get(2).map_err(err)?,
        generation: to_u32("device generation", row.try_get(3).map_err(err)?)?,
        revision: to_u32("device revision", row.try_get(4).map_err(err)?)?,
        state: parse_state(&state)?,
        changed: Change {
            at: row.try_get(6).map_err(err)?,
            actor: row.try_get(7).map_err(err)?,
            reason: row.try_get(8).map_err(err)?,
        },
        wrapped_root: wrapped_root.map(WrappedKey),
        created_at: row.try_get(10).map_err(err)?,
        serial,
    })
}

fn generation_from_row(row: &Row) -> Result<GenerationRecord, StoreError> {
    let err = |e| backend("read generation", e);
    let state: String = row.try_get(1).map_err(err)?;
    Ok(GenerationRecord {
        generation: to_u32("generation", row.try_get(0).map_err(err)?)?,
        state: parse_state(&state)?,
        changed: Change {
            at: row.try_get(2).map_err(err)?,
            actor: row.try_get(3).map_err(err)?,
            reason: row.try_get(4).map_err(err)?,
        },
        created_at: row.try_get(5).map_err(err)?,
    })
}

fn audit_from_row(
    row: &Row,
    seq: i64,
    subjects: Vec<DeviceSerial>,
) -> Result<AuditEvent, StoreError> {
    let err = |e| backend("read audit", e);
    let generation: Option<i64> = row.try_get(4).map_err(err)?;
    let details: String = row.try_get(5).map_err(err)?;
    let hash32 = |i: usize| -> Result<[u8; 32], StoreError> {
        let bytes: Vec<u8> = row.try_get(i).map_err(err)?;
        bytes
            .try_into()
            .map_err(|_| StoreError::Corrupt("audit hash is not 32 bytes".into()))
    };
    Ok(AuditEvent {
        seq: u64::try_from(seq).map_err(|e| corrupt("audit sequence", e))?,
        draft: AuditDraft {
            at: row.try_get(1).map_err(err)?,
            actor: row.try_get(2).map_err(err)?,
            action: row.try_get(3).map_err(err)?,
            generation: generation
                .map(|g| to_u32("audit generation", g))
                .transpose()?,
            subjects,
            details: serde_json::from_str(&details).map_err(|e| corrupt("audit details", e))?,
        },
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
