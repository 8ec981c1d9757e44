//! The reference of `bench provision`: plain rusqlite inserting the rows the bench's import
//! writes, in the same run. The same table definition (the store's `devices` and its state
//! index), the same pragmas (WAL, `synchronous = FULL`, `secure_delete`, 8 KiB pages), one
//! transaction per [`fleetkey::fleet::BATCH`] rows, one cached prepared single-row `INSERT`, nothing else: no
//! CSV, no keys, no audit, no journal, no output.

use std::path::Path;
use std::time::Instant;

use rusqlite::{Connection, params};

use crate::error::CliError;

/// The store's device table (`crates/fleetkey/src/store/sqlite/0001_initial.sql`).
const DEVICES: &str = "CREATE TABLE devices (
    serial         BLOB PRIMARY KEY NOT NULL CHECK (length(serial) BETWEEN 1 AND 40),
    she_uid        BLOB CHECK (she_uid IS NULL OR length(she_uid) = 15),
    labels         TEXT NOT NULL,
    generation     INTEGER NOT NULL CHECK (generation BETWEEN 0 AND 4294967295),
    revision       INTEGER NOT NULL CHECK (revision BETWEEN 0 AND 4294967295),
    state          TEXT NOT NULL,
    changed_at     INTEGER NOT NULL,
    changed_actor  TEXT NOT NULL,
    changed_reason TEXT NOT NULL,
    wrapped_root   BLOB,
    created_at     INTEGER NOT NULL
) WITHOUT ROWID, STRICT";

/// The store's index of devices by state (`0004_devices_by_state.sql`): every insert writes it.
const DEVICES_BY_STATE: &str = "CREATE INDEX devices_by_state ON devices (state, serial)";

/// Inserts `devices` rows as the bench's import registers them into a new database at `path`;
/// the seconds it took (opening and creating the table not counted).
pub(super) fn insert(path: &Path, devices: u64) -> Result<f64, CliError> {
    let err = |e: rusqlite::Error| CliError::input("reference database", e);
    let conn = Connection::open(path).map_err(err)?;
    conn.execute_batch(
        "PRAGMA page_size = 8192; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
         PRAGMA secure_delete = ON;",
    )
    .map_err(err)?;
    conn.execute_batch(DEVICES).map_err(err)?;
    conn.execute_batch(DEVICES_BY_STATE).map_err(err)?;
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let start = Instant::now();
    let batch = fleetkey::fleet::BATCH as u64;
    let mut serial = Vec::with_capacity(40);
    let mut labels = String::with_capacity(16);
    let mut i = 0;
    while i < devices {
        conn.execute_batch("BEGIN IMMEDIATE").map_err(err)?;
        {
            let mut stmt = conn
                .prepare_cached(
                    "INSERT INTO devices (serial, she_uid, labels, generation, revision, state, \
                     changed_at, changed_actor, changed_reason, wrapped_root, created_at) \
                     VALUES (?1, NULL, ?2, 1, 0, 'active', ?3, 'bench', \
                     'imported and provisioned', NULL, ?3)",
                )
                .map_err(err)?;
            for n in i..devices.min(i + batch) {
                use std::fmt::Write as _;
                serial.clear();
                std::io::Write::write_fmt(
                    &mut serial,
                    format_args!("VIN{:014}-ECU{:02}", n / 8, n % 8),
                )
                .map_err(|e| CliError::input("reference serial", e))?;
                labels.clear();
                write!(labels, "[\"line={}\"]", n % 4)
                    .map_err(|e| CliError::input("reference labels", e))?;
                stmt.execute(params![serial, labels, at]).map_err(err)?;
            }
        }
        conn.execute_batch("COMMIT").map_err(err)?;
        i += batch;
    }
    Ok(start.elapsed().as_secs_f64())
}
