//! Retention of service records in SQLite: idempotency records older than the policy keeps them.

use rusqlite::{Connection, params};

use super::backend;
use crate::error::StoreError;
use crate::model::UnixMillis;

pub(super) fn purge_idempotency(
    conn: &Connection,
    created_before: UnixMillis,
) -> Result<u64, StoreError> {
    conn.prepare_cached("DELETE FROM idempotency WHERE created_at < ?1")
        .and_then(|mut s| s.execute(params![created_before]))
        .map(|n| n as u64)
        .map_err(|e| backend("purge idempotency records", e))
}
