//! A [`Tx`] that stages a group's device, audit and idempotency writes in memory and writes them
//! as sets when the group ends ([`StagedTx::finish`]): group commit
//! ([`crate::fleet::group`]) runs its writes through it, so a group of N writes costs a few
//! statements instead of about ten per write (on PostgreSQL, each a round trip).
//!
//! - The group's devices and idempotency records are read at once first
//!   ([`StagedTx::read_devices`], [`StagedTx::read_idempotency`]); a write reads and updates them
//!   in memory, and later writes of the group see earlier ones.
//! - Its savepoint is in memory: a rollback restores the staged rows, events and claims as they
//!   were when it opened, at no cost to the store.
//! - The audit events are sealed here against the head read once, in the order appended; at the
//!   end the store seals and writes them again in that order ([`Tx::append_audits`]): the same
//!   chain.
//! - Anything else that writes, or reads what is staged as a set (device pages, counts, audit
//!   pages), is not staged: it fails, and [`StagedTx::finish`] says so, so that the caller rolls
//!   the transaction back and runs the group one write at a time instead. So does a set write the
//!   store refuses at the end (a key claimed by another instance just now, text the store cannot
//!   hold): staging changes how many statements a group costs, never what it does.
//!
//! Reads of what is not staged (the fleet, generations, tokens, meta) go to the transaction.

use std::collections::HashMap;

use crate::access::{ApiToken, IdempotencyRecord};
use crate::audit::{AuditDraft, AuditEvent, AuditFilter};
use crate::error::StoreError;
use crate::model::{
    DeviceFilter, DeviceRecord, DeviceSerial, FleetInfo, GenerationRecord, UnixMillis,
};
use crate::store::{AuditIndex, DeviceUpdate, PendingDelivery, Scan, Tx};

/// An idempotency record's key: principal and key.
type ClaimKey = (String, String);

/// A staged write, as the journal keeps it.
enum Staged {
    /// A device row was replaced; the row as it was before.
    Device(DeviceSerial, DeviceRecord),
    /// A key was claimed (it had no record).
    Claim(ClaimKey),
}

/// The staged state when the savepoint opened.
struct Mark {
    journal: usize,
    audit: usize,
    head: Option<Option<(u64, [u8; 32])>>,
}

/// A transaction with staged device, audit and idempotency writes (module docs).
pub struct StagedTx<'t> {
    inner: &'t mut dyn Tx,
    /// Device rows as the group sees them; `None`: known to be absent.
    devices: HashMap<DeviceSerial, Option<DeviceRecord>>,
    /// Idempotency records as the group sees them; `None`: known to be absent.
    claims: HashMap<ClaimKey, Option<IdempotencyRecord>>,
    audit: Vec<AuditDraft>,
    /// The audit head as the group sees it; `None` until read.
    head: Option<Option<(u64, [u8; 32])>>,
    /// Every device and claim write, in order: a rollback undoes those after its mark, and what
    /// is left at the end is what [`StagedTx::finish`] writes.
    journal: Vec<Staged>,
    mark: Option<Mark>,
    /// The first operation that could not be staged.
    unstaged: Option<&'static str>,
}

/// Why [`StagedTx::finish`] wrote nothing: run the group one write at a time instead.
#[derive(Debug)]
pub enum NotStaged {
    /// An operation of the group that staging does not do.
    Operation(&'static str),
    /// The store refused a set write (the transaction must be rolled back).
    Refused(StoreError),
}

impl std::fmt::Display for NotStaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotStaged::Operation(op) => write!(f, "{op} is not staged"),
            NotStaged::Refused(e) => write!(f, "the staged writes were refused: {e}"),
        }
    }
}

impl<'t> StagedTx<'t> {
    /// Stages over `inner`.
    pub fn new(inner: &'t mut dyn Tx) -> Self {
        StagedTx {
            inner,
            devices: HashMap::new(),
            claims: HashMap::new(),
            audit: Vec::new(),
            head: None,
            journal: Vec::new(),
            mark: None,
            unstaged: None,
        }
    }

    /// Reads these devices at once (one statement where the store can).
    pub fn read_devices(&mut self, serials: &[DeviceSerial]) -> Result<(), StoreError> {
        let wanted: Vec<DeviceSerial> = serials
            .iter()
            .filter(|s| !self.devices.contains_key(*s))
            .cloned()
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        for s in &wanted {
            self.devices.insert(s.clone(), None);
        }
        for r in self.inner.device_rows(&wanted)? {
            if let Some(slot) = self.devices.get_mut(&r.serial) {
                *slot = Some(r);
            }
        }
        Ok(())
    }

    /// Reads these idempotency records at once (one statement where the store can).
    pub fn read_idempotency(&mut self, keys: &[ClaimKey]) -> Result<(), StoreError> {
        let wanted: Vec<ClaimKey> = keys
            .iter()
            .filter(|k| !self.claims.contains_key(*k))
            .cloned()
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        for k in &wanted {
            self.claims.insert(k.clone(), None);
        }
        for r in self.inner.idempotency_rows(&wanted)? {
            if let Some(slot) = self.claims.get_mut(&(r.principal.clone(), r.key.clone())) {
                *slot = Some(r);
            }
        }
        Ok(())
    }

    /// Writes what is staged as sets: the devices (by serial), the audit events (in order), the
    /// claims. `Err`: nothing was staged to completion; roll the transaction back and run the
    /// group one write at a time.
    pub fn finish(self) -> Result<(), NotStaged> {
        if let Some(op) = self.unstaged {
            return Err(NotStaged::Operation(op));
        }
        if self.mark.is_some() {
            return Err(NotStaged::Operation("an open savepoint"));
        }
        let mut written: Vec<&DeviceSerial> = Vec::new();
        let mut claimed: Vec<&ClaimKey> = Vec::new();
        for staged in &self.journal {
            match staged {
                Staged::Device(serial, _) => written.push(serial),
                Staged::Claim(key) => claimed.push(key),
            }
        }
        // Each device once, in serial order.
        written.sort();
        written.dedup();
        let rows: Vec<DeviceRecord> = written
            .iter()
            .filter_map(|s| self.devices.get(*s).cloned().flatten())
            .collect();
        let claims: Vec<IdempotencyRecord> = claimed
            .iter()
            .filter_map(|k| self.claims.get(*k).cloned().flatten())
            .collect();
        let inner = self.inner;
        (|| {
            if !rows.is_empty() {
                inner.update_device_rows(&rows)?;
            }
            if !self.audit.is_empty() {
                inner.append_audits(self.audit)?;
            }
            if !claims.is_empty() {
                inner.insert_idempotency_rows(&claims)?;
            }
            Ok(())
        })()
        .map_err(NotStaged::Refused)
    }

    fn not_staged<T>(&mut self, op: &'static str) -> Result<T, StoreError> {
        self.unstaged.get_or_insert(op);
        Err(StoreError::Backend {
            operation: op,
            detail: "not staged in a group (the group runs again write by write)".into(),
        })
    }

    fn staged_head(&mut self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        match self.head {
            Some(head) => Ok(head),
            None => {
                let head = self.inner.audit_head()?;
                self.head = Some(head);
                Ok(head)
            }
        }
    }
}

impl Tx for StagedTx<'_> {
    fn fleet(&mut self) -> Result<Option<FleetInfo>, StoreError> {
        self.inner.fleet()
    }
    fn put_fleet(&mut self, _fleet: &FleetInfo) -> Result<(), StoreError> {
        self.not_staged("put fleet")
    }

    fn insert_generation(&mut self, _record: &GenerationRecord) -> Result<(), StoreError> {
        self.not_staged("insert generation")
    }
    fn update_generation(&mut self, _record: &GenerationRecord) -> Result<(), StoreError> {
        self.not_staged("update generation")
    }
    fn generation(&mut self, generation: u32) -> Result<Option<GenerationRecord>, StoreError> {
        self.inner.generation(generation)
    }
    fn generations(&mut self) -> Result<Vec<GenerationRecord>, StoreError> {
        self.inner.generations()
    }

    fn insert_device(&mut self, _record: &DeviceRecord) -> Result<(), StoreError> {
        self.not_staged("insert device")
    }
    fn insert_devices(&mut self, _records: &[DeviceRecord]) -> Result<(), StoreError> {
        self.not_staged("insert devices")
    }
    fn update_device(&mut self, record: &DeviceRecord) -> Result<(), StoreError> {
        let Some(before) = self.device(&record.serial)? else {
            return Err(StoreError::NotFound(format!("device {}", record.serial)));
        };
        let serial = record.serial.clone();
        self.journal.push(Staged::Device(serial.clone(), before));
        self.devices.insert(serial, Some(record.clone()));
        Ok(())
    }
    fn update_devices(
        &mut self,
        _filter: &DeviceFilter,
        _after: Option<&DeviceSerial>,
        _through: &DeviceSerial,
        _update: &DeviceUpdate,
        _scan: Scan,
    ) -> Result<u64, StoreError> {
        self.not_staged("update devices")
    }
    fn device(&mut self, serial: &DeviceSerial) -> Result<Option<DeviceRecord>, StoreError> {
        if let Some(known) = self.devices.get(serial) {
            return Ok(known.clone());
        }
        let read = self.inner.device(serial)?;
        self.devices.insert(serial.clone(), read.clone());
        Ok(read)
    }
    fn devices(
        &mut self,
        _filter: &DeviceFilter,
        _after: Option<&DeviceSerial>,
        _limit: usize,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        self.not_staged("read devices")
    }
    fn count_devices(&mut self, _filter: &DeviceFilter) -> Result<u64, StoreError> {
        self.not_staged("count devices")
    }

    fn append_audit(&mut self, draft: AuditDraft) -> Result<AuditEvent, StoreError> {
        let head = self.staged_head()?;
        let event = AuditEvent::seal(head, draft.clone());
        self.head = Some(Some((event.seq, event.hash)));
        self.audit.push(draft);
        Ok(event)
    }
    fn audit_events(
        &mut self,
        _filter: &AuditFilter,
        _after_seq: u64,
        _limit: usize,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        self.not_staged("read audit")
    }
    fn audit_head(&mut self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        self.staged_head()
    }
    fn audit_head_table(&self) -> &'static str {
        self.inner.audit_head_table()
    }
    fn audit_index(
        &mut self,
        _after_seq: u64,
        _through_seq: u64,
    ) -> Result<AuditIndex, StoreError> {
        self.not_staged("read audit index")
    }

    fn meta(&mut self, key: &str) -> Result<Option<String>, StoreError> {
        self.inner.meta(key)
    }
    fn put_meta(&mut self, _key: &str, _value: &str) -> Result<(), StoreError> {
        self.not_staged("put meta")
    }

    fn insert_token(&mut self, _token: &ApiToken) -> Result<(), StoreError> {
        self.not_staged("insert token")
    }
    fn update_token(&mut self, _token: &ApiToken) -> Result<(), StoreError> {
        self.not_staged("update token")
    }
    fn token(&mut self, id: &str) -> Result<Option<ApiToken>, StoreError> {
        self.inner.token(id)
    }
    fn token_by_hash(&mut self, hash: &[u8; 32]) -> Result<Option<ApiToken>, StoreError> {
        self.inner.token_by_hash(hash)
    }
    fn tokens(&mut self) -> Result<Vec<ApiToken>, StoreError> {
        self.inner.tokens()
    }

    fn idempotency(
        &mut self,
        principal: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let k = (principal.to_owned(), key.to_owned());
        if let Some(known) = self.claims.get(&k) {
            return Ok(known.clone());
        }
        let read = self.inner.idempotency(principal, key)?;
        self.claims.insert(k, read.clone());
        Ok(read)
    }
    fn insert_idempotency(&mut self, record: &IdempotencyRecord) -> Result<(), StoreError> {
        if self.idempotency(&record.principal, &record.key)?.is_some() {
            return Err(StoreError::Duplicate(format!(
                "idempotency key {}",
                record.key
            )));
        }
        let k = (record.principal.clone(), record.key.clone());
        self.journal.push(Staged::Claim(k.clone()));
        self.claims.insert(k, Some(record.clone()));
        Ok(())
    }
    fn update_idempotency(&mut self, _record: &IdempotencyRecord) -> Result<(), StoreError> {
        self.not_staged("update idempotency key")
    }
    fn delete_idempotency(&mut self, _principal: &str, _key: &str) -> Result<(), StoreError> {
        self.not_staged("delete idempotency key")
    }
    fn purge_idempotency(&mut self, _created_before: UnixMillis) -> Result<u64, StoreError> {
        self.not_staged("purge idempotency keys")
    }

    fn insert_delivery(
        &mut self,
        _kind: &str,
        _payload: &[u8],
        _created_at: UnixMillis,
    ) -> Result<u64, StoreError> {
        self.not_staged("insert delivery")
    }
    fn deliveries(
        &mut self,
        kind: &str,
        after_id: u64,
        limit: usize,
    ) -> Result<Vec<PendingDelivery>, StoreError> {
        self.inner.deliveries(kind, after_id, limit)
    }
    fn count_deliveries(&mut self, kind: &str) -> Result<u64, StoreError> {
        self.inner.count_deliveries(kind)
    }
    fn delete_delivery(&mut self, _id: u64) -> Result<bool, StoreError> {
        self.not_staged("delete delivery")
    }

    fn savepoint(&mut self) -> Result<(), StoreError> {
        if self.mark.is_some() {
            return self.not_staged("a nested savepoint");
        }
        self.mark = Some(Mark {
            journal: self.journal.len(),
            audit: self.audit.len(),
            head: self.head,
        });
        Ok(())
    }
    fn release_savepoint(&mut self) -> Result<(), StoreError> {
        match self.mark.take() {
            Some(_) => Ok(()),
            None => self.not_staged("a release without a savepoint"),
        }
    }
    fn rollback_to_savepoint(&mut self) -> Result<(), StoreError> {
        let Some(mark) = self.mark.take() else {
            return self.not_staged("a rollback without a savepoint");
        };
        for undone in self.journal.drain(mark.journal..).rev() {
            match undone {
                Staged::Device(serial, before) => {
                    self.devices.insert(serial, Some(before));
                }
                Staged::Claim(key) => {
                    self.claims.insert(key, None);
                }
            }
        }
        self.audit.truncate(mark.audit);
        self.head = mark.head;
        Ok(())
    }
}
