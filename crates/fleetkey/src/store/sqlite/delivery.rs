//! The delivery journal in SQLite (schema version 3, `0003_deliveries.sql`).

use rusqlite::{Connection, Row, params};

use super::backend;
use crate::error::StoreError;
use crate::model::UnixMillis;
use crate::store::PendingDelivery;

pub(super) fn insert(
    conn: &Connection,
    kind: &str,
    payload: &[u8],
    created_at: UnixMillis,
) -> Result<u64, StoreError> {
    conn.prepare_cached(
        "INSERT INTO deliveries (kind, payload, created_at) VALUES (?1, ?2, ?3) RETURNING id",
    )
    .and_then(|mut s| s.query_row(params![kind, payload, created_at], |r| r.get::<_, i64>(0)))
    .map_err(|e| backend("insert delivery", e))
    .and_then(to_id)
}

pub(super) fn list(
    conn: &Connection,
    kind: &str,
    after_id: u64,
    limit: usize,
) -> Result<Vec<PendingDelivery>, StoreError> {
    let after = i64::try_from(after_id).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, kind, payload, created_at FROM deliveries \
             WHERE kind = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        )
        .map_err(|e| backend("read deliveries", e))?;
    let rows = stmt
        .query_map(params![kind, after, limit], |r| Ok(from_row(r)))
        .map_err(|e| backend("read deliveries", e))?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row.map_err(|e| backend("read deliveries", e))??);
    }
    Ok(out)
}

pub(super) fn count(conn: &Connection, kind: &str) -> Result<u64, StoreError> {
    conn.prepare_cached("SELECT count(*) FROM deliveries WHERE kind = ?1")
        .and_then(|mut s| s.query_row([kind], |r| r.get::<_, i64>(0)))
        .map_err(|e| backend("count deliveries", e))
        .and_then(to_id)
}

pub(super) fn delete(conn: &Connection, id: u64) -> Result<bool, StoreError> {
    let id = i64::try_from(id).unwrap_or(i64::MAX);
    conn.prepare_cached("DELETE FROM deliveries WHERE id = ?1")
        .and_then(|mut s| s.execute([id]))
        .map(|n| n > 0)
        .map_err(|e| backend("delete delivery", e))
}

fn from_row(r: &Row<'_>) -> Result<PendingDelivery, StoreError> {
    let err = |e| backend("read delivery", e);
    Ok(PendingDelivery {
        id: to_id(r.get(0).map_err(err)?)?,
        kind: r.get(1).map_err(err)?,
        payload: r.get(2).map_err(err)?,
        created_at: r.get(3).map_err(err)?,
    })
}

fn to_id(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value)
        .map_err(|_| StoreError::Corrupt(format!("delivery id or count {value} is negative")))
}
