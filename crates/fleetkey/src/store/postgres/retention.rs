//! Retention of service records in PostgreSQL: idempotency records older than the policy keeps
//! them.

use super::PgTx;
use crate::error::StoreError;
use crate::model::UnixMillis;

impl PgTx<'_, '_> {
    pub(super) fn purge_idempotency_rows(
        &mut self,
        created_before: UnixMillis,
    ) -> Result<u64, StoreError> {
        self.execute(
            "purge idempotency records",
            "DELETE FROM idempotency WHERE created_at < $1",
            &[&created_before],
        )
    }
}
