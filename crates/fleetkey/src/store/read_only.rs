//! The [`Tx`] a [`Store::read`](crate::store::Store::read) closure is given: every read goes to
//! the store's transaction, every write is refused with [`StoreError::ReadOnly`] before any
//! statement is sent, so a refused write changes nothing and leaves the transaction usable (on
//! PostgreSQL a write the server refused would abort the whole transaction). The stores refuse
//! writes a second time below this (SQLite `PRAGMA query_only`, PostgreSQL `READ ONLY`).

use crate::access::{ApiToken, IdempotencyRecord};
use crate::audit::{AuditDraft, AuditEvent, AuditFilter};
use crate::error::StoreError;
use crate::model::{
    DeviceFilter, DeviceRecord, DeviceSerial, FleetInfo, GenerationRecord, UnixMillis,
};
use crate::store::{AuditIndex, DeviceUpdate, PendingDelivery, Scan, Tx};

/// A read-only view of a transaction.
pub(crate) struct ReadOnlyTx<'t>(pub(crate) &'t mut dyn Tx);

fn refused<T>(write: &'static str) -> Result<T, StoreError> {
    Err(StoreError::ReadOnly(write))
}

impl Tx for ReadOnlyTx<'_> {
    fn fleet(&mut self) -> Result<Option<FleetInfo>, StoreError> {
        self.0.fleet()
    }
    fn put_fleet(&mut self, _fleet: &FleetInfo) -> Result<(), StoreError> {
        refused("put fleet")
    }

    fn insert_generation(&mut self, _record: &GenerationRecord) -> Result<(), StoreError> {
        refused("insert generation")
    }
    fn update_generation(&mut self, _record: &GenerationRecord) -> Result<(), StoreError> {
        refused("update generation")
    }
    fn generation(&mut self, generation: u32) -> Result<Option<GenerationRecord>, StoreError> {
        self.0.generation(generation)
    }
    fn generations(&mut self) -> Result<Vec<GenerationRecord>, StoreError> {
        self.0.generations()
    }

    fn insert_device(&mut self, _record: &DeviceRecord) -> Result<(), StoreError> {
        refused("insert device")
    }
    fn insert_devices(&mut self, _records: &[DeviceRecord]) -> Result<(), StoreError> {
        refused("insert devices")
    }
    fn update_device(&mut self, _record: &DeviceRecord) -> Result<(), StoreError> {
        refused("update device")
    }
    fn update_devices(
        &mut self,
        _filter: &DeviceFilter,
        _after: Option<&DeviceSerial>,
        _through: &DeviceSerial,
        _update: &DeviceUpdate,
        _scan: Scan,
    ) -> Result<u64, StoreError> {
        refused("update devices")
    }
    fn device(&mut self, serial: &DeviceSerial) -> Result<Option<DeviceRecord>, StoreError> {
        self.0.device(serial)
    }
    fn devices(
        &mut self,
        filter: &DeviceFilter,
        after: Option<&DeviceSerial>,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        self.0.devices(filter, after, limit)
    }
    fn devices_by(
        &mut self,
        filter: &DeviceFilter,
        after: Option<&DeviceSerial>,
        limit: usize,
        scan: Scan,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        self.0.devices_by(filter, after, limit, scan)
    }
    fn count_devices(&mut self, filter: &DeviceFilter) -> Result<u64, StoreError> {
        self.0.count_devices(filter)
    }

    fn append_audit(&mut self, _draft: AuditDraft) -> Result<AuditEvent, StoreError> {
        refused("append audit")
    }
    fn audit_events(
        &mut self,
        filter: &AuditFilter,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        self.0.audit_events(filter, after_seq, limit)
    }
    fn audit_head(&mut self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        self.0.audit_head()
    }
    fn audit_head_table(&self) -> &'static str {
        self.0.audit_head_table()
    }
    fn audit_index(&mut self, after_seq: u64, through_seq: u64) -> Result<AuditIndex, StoreError> {
        self.0.audit_index(after_seq, through_seq)
    }

    fn meta(&mut self, key: &str) -> Result<Option<String>, StoreError> {
        self.0.meta(key)
    }
    fn put_meta(&mut self, _key: &str, _value: &str) -> Result<(), StoreError> {
        refused("put meta")
    }

    fn insert_token(&mut self, _token: &ApiToken) -> Result<(), StoreError> {
        refused("insert token")
    }
    fn update_token(&mut self, _token: &ApiToken) -> Result<(), StoreError> {
        refused("update token")
    }
    fn token(&mut self, id: &str) -> Result<Option<ApiToken>, StoreError> {
        self.0.token(id)
    }
    fn token_by_hash(&mut self, hash: &[u8; 32]) -> Result<Option<ApiToken>, StoreError> {
        self.0.token_by_hash(hash)
    }
    fn tokens(&mut self) -> Result<Vec<ApiToken>, StoreError> {
        self.0.tokens()
    }

    fn idempotency(
        &mut self,
        principal: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.0.idempotency(principal, key)
    }
    fn insert_idempotency(&mut self, _record: &IdempotencyRecord) -> Result<(), StoreError> {
        refused("insert idempotency")
    }
    fn update_idempotency(&mut self, _record: &IdempotencyRecord) -> Result<(), StoreError> {
        refused("update idempotency")
    }
    fn delete_idempotency(&mut self, _principal: &str, _key: &str) -> Result<(), StoreError> {
        refused("delete idempotency")
    }
    fn purge_idempotency(&mut self, _created_before: UnixMillis) -> Result<u64, StoreError> {
        refused("purge idempotency")
    }

    fn insert_delivery(
        &mut self,
        _kind: &str,
        _payload: &[u8],
        _created_at: UnixMillis,
    ) -> Result<u64, StoreError> {
        refused("insert delivery")
    }
    fn deliveries(
        &mut self,
        kind: &str,
        after_id: u64,
        limit: usize,
    ) -> Result<Vec<PendingDelivery>, StoreError> {
        self.0.deliveries(kind, after_id, limit)
    }
    fn count_deliveries(&mut self, kind: &str) -> Result<u64, StoreError> {
        self.0.count_deliveries(kind)
    }
    fn delete_delivery(&mut self, _id: u64) -> Result<bool, StoreError> {
        refused("delete delivery")
    }
    // A savepoint writes nothing: reads may use one like any transaction.
    fn savepoint(&mut self) -> Result<(), StoreError> {
        self.0.savepoint()
    }
    fn release_savepoint(&mut self) -> Result<(), StoreError> {
        self.0.release_savepoint()
    }
    fn rollback_to_savepoint(&mut self) -> Result<(), StoreError> {
        self.0.rollback_to_savepoint()
    }
}
