//! The schema and its migrations. Version `n` is reached by applying `MIGRATIONS[..n]` in order;
//! the version is kept in `meta` under [`VERSION_KEY`].

use rusqlite::{Connection, OptionalExtension};

use crate::error::StoreError;

/// The schema version this fleetkey writes and reads.
pub(super) const SCHEMA_VERSION: i64 = 3;

/// The `meta` key of the schema version.
pub(super) const VERSION_KEY: &str = "store.schema_version";

/// Migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: [&str; 3] = [
    include_str!("0001_initial.sql"),
    include_str!("0002_access.sql"),
    include_str!("0003_deliveries.sql"),
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
    match found {
        Some(rusqlite::types::Value::Integer(v)) if v >= 1 => Ok(v),
        Some(_) => Err(StoreError::Corrupt(format!(
            "meta {VERSION_KEY} is not a positive integer"
        ))),
        None => Err(StoreError::Corrupt(format!(
            "meta {VERSION_KEY} is missing"
        ))),
    }
}

/// Brings the schema to [`SCHEMA_VERSION`]. Runs inside the caller's write transaction.
pub(super) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let found = version(conn)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::Schema {
            found,
            expected: SCHEMA_VERSION,
        });
    }
    let done = usize::try_from(found).unwrap_or(0);
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done) {
        conn.execute_batch(sql)
            .map_err(|e| super::backend("migrate schema", e))?;
        let reached = i64::try_from(i + 1).unwrap_or(i64::MAX);
        conn.prepare_cached(&crate::store::sql::upsert_meta::<super::Sqlite>())
            .and_then(|mut s| s.execute(rusqlite::params![VERSION_KEY, reached]))
            .map_err(|e| super::backend("migrate schema", e))?;
    }
    Ok(())
}
