//! The schema and its migrations. Version `n` is reached by applying `MIGRATIONS[..n]` in order;
//! the version is kept in `meta` under [`VERSION_KEY`].

use rusqlite::{Connection, OptionalExtension};

use crate::error::StoreError;
use crate::store::migrations::{self, VERSION_KEY};

/// The schema version this fleetkey writes and reads.
pub(super) const SCHEMA_VERSION: i64 = 4;

/// Migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: [&str; 4] = [
    include_str!("0001_initial.sql"),
    include_str!("0002_access.sql"),
    include_str!("0003_deliveries.sql"),
    include_str!("0004_devices_by_state.sql"),
];

const _: () = assert!(MIGRATIONS.len() as i64 == SCHEMA_VERSION);

/// The schema version of an open database: 0 when it has no fleetkey schema yet.
pub(super) fn version(conn: &Connection) -> Result<i64, StoreError> {
    let err = |e: rusqlite::Error| super::backend("read schema version", e);
    let has_meta: bool = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'meta')",
        )
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(err)?;
    if !has_meta {
        let other_tables: i64 = conn
            .prepare_cached("SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(err)?;
        return if other_tables == 0 {
            Ok(0)
        } else {
            Err(StoreError::Corrupt(
                "the database has tables but no fleetkey schema: not a fleetkey store".into(),
            ))
        };
    }
    let found: Option<rusqlite::types::Value> = conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")
        .and_then(|mut s| s.query_row([VERSION_KEY], |r| r.get(0)).optional())
        .map_err(err)?;
    migrations::stored_version(found.map(|v| match v {
        rusqlite::types::Value::Integer(v) => Some(v),
        _ => None,
    }))
}

/// Brings the schema to [`SCHEMA_VERSION`]. Runs inside the caller's write transaction.
pub(super) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    for (reached, sql) in migrations::pending(version(conn)?, &MIGRATIONS)? {
        conn.execute_batch(sql)
            .map_err(|e| super::backend("migrate schema", e))?;
        conn.prepare_cached(&crate::store::sql::upsert_meta::<super::Sqlite>())
            .and_then(|mut s| s.execute(rusqlite::params![VERSION_KEY, reached]))
            .map_err(|e| super::backend("migrate schema", e))?;
    }
    Ok(())
}
