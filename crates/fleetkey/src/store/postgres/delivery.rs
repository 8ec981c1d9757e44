//! The delivery journal in PostgreSQL (schema version 3, `0003_deliveries.sql`).

use postgres::Row;

use super::{PgTx, check_text, corrupt};
use crate::error::StoreError;
use crate::model::UnixMillis;
use crate::store::PendingDelivery;

impl PgTx<'_, '_> {
    pub(super) fn insert_delivery_row(
        &mut self,
        kind: &str,
        payload: &[u8],
        created_at: UnixMillis,
    ) -> Result<u64, StoreError> {
        check_text("delivery kind", kind)?;
        let row = self
            .query_opt(
                "insert delivery",
                "INSERT INTO deliveries (kind, payload, created_at) VALUES ($1, $2, $3) RETURNING id",
                &[&kind, &payload, &created_at],
            )?
            .ok_or_else(|| StoreError::Corrupt("insert delivery returned no id".into()))?;
        to_id(row.try_get(0).map_err(|e| corrupt("delivery id", e))?)
    }

    pub(super) fn delivery_rows(
        &mut self,
        kind: &str,
        after_id: u64,
        limit: usize,
    ) -> Result<Vec<PendingDelivery>, StoreError> {
        check_text("delivery kind", kind)?;
        let after = i64::try_from(after_id).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.query(
            "read deliveries",
            "SELECT id, kind, payload, created_at FROM deliveries \
             WHERE kind = $1 AND id > $2 ORDER BY id LIMIT $3",
            &[&kind, &after, &limit],
        )?
        .iter()
        .map(from_row)
        .collect()
    }

    pub(super) fn count_delivery_rows(&mut self, kind: &str) -> Result<u64, StoreError> {
        check_text("delivery kind", kind)?;
        let row = self
            .query_opt(
                "count deliveries",
                "SELECT count(*) FROM deliveries WHERE kind = $1",
                &[&kind],
            )?
            .ok_or_else(|| StoreError::Corrupt("count deliveries returned no row".into()))?;
        to_id(row.try_get(0).map_err(|e| corrupt("delivery count", e))?)
    }

    pub(super) fn delete_delivery_row(&mut self, id: u64) -> Result<bool, StoreError> {
        let id = i64::try_from(id).unwrap_or(i64::MAX);
        self.execute(
            "delete delivery",
            "DELETE FROM deliveries WHERE id = $1",
            &[&id],
        )
        .map(|n| n > 0)
    }
}

fn from_row(r: &Row) -> Result<PendingDelivery, StoreError> {
    let get = |e: postgres::Error| corrupt("delivery", e);
    Ok(PendingDelivery {
        id: to_id(r.try_get(0).map_err(get)?)?,
        kind: r.try_get(1).map_err(get)?,
        payload: r.try_get(2).map_err(get)?,
        created_at: r.try_get(3).map_err(get)?,
    })
}

fn to_id(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value)
        .map_err(|_| StoreError::Corrupt(format!("delivery id or count {value} is negative")))
}
