//! The store: the registry of the fleet, its generations, its devices and the audit chain.
//!
//! Every change goes through [`Store::transaction`]: the closure's writes commit together or not
//! at all, and transactions are serializable (SQLite: `BEGIN IMMEDIATE`; PostgreSQL:
//! `SERIALIZABLE`, retried on conflict). A store may run the closure more than once when it retries
//! a conflict, so the closure must have no effect outside the transaction it is given.
//!
//! Reads that change nothing go through [`Store::read`] ([`read_tx`]): a read-only snapshot that
//! never waits for a writer's lock (SQLite: a deferred `BEGIN` on the WAL with `query_only`;
//! PostgreSQL: `REPEATABLE READ READ ONLY`). A write inside it fails with
//! [`StoreError::ReadOnly`] and changes nothing.
//!
//! Implementations: [`sqlite`] (the embedded default) and `postgres` (service instances sharing
//! one server; cargo feature `postgres`). Both pass the same conformance suite
//! (`crates/fleetkey/tests/conformance/store.rs`).

use std::path::PathBuf;

use crate::access::{ApiToken, IdempotencyRecord};
use crate::audit::{AuditDraft, AuditEvent, AuditFilter};
use crate::error::{Error, StoreError};
use crate::lifecycle::State;
use crate::model::{
    Change, DeviceFilter, DeviceRecord, DeviceSerial, FleetInfo, GenerationRecord, UnixMillis,
};

mod codec;
mod migrations;
#[cfg(feature = "postgres")]
pub mod postgres;
mod read_only;
mod sql;
pub mod sqlite;
pub mod staged;
mod tx;
mod verify;

pub use verify::verify_audit;

/// Events with up to this many subjects also get an `audit_subjects` row per subject (an indexed
/// lookup for `audit show --device`); bulk events are found by scanning their subject lists.
pub const AUDIT_INDEXED_SUBJECTS: usize = 16;

/// What the audit views read beside the chained record, for a range of sequence numbers, exactly
/// as stored (the rows of a tampered store too): [`verify_audit`] compares it with the chain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditIndex {
    /// `(seq, n_subjects)` of every row of the events table in the range, by `seq`: the subject
    /// count that chooses between the indexed and the scanned device lookup.
    pub counts: Vec<(i64, i64)>,
    /// Every `audit_subjects` row in the range as `(seq, pos, serial bytes)`, by `seq` then `pos`.
    pub subjects: Vec<(i64, i64, Vec<u8>)>,
}

/// How bulk work looks up a page of devices ([`Tx::devices_by`], [`Tx::update_devices`]).
/// SQLite plans without statistics, and picks the state index for any state filter; PostgreSQL's
/// planner decides from its own statistics and ignores this.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scan {
    /// By the index that fits the filter (a page of the few devices in a rare state: one seek
    /// each).
    #[default]
    Indexed,
    /// Along the primary key in serial order, testing each device against the filter: a page is
    /// one range of the table, not a seek per device. For bulk work over most of the fleet.
    Sweep,
}

impl Scan {
    /// The scan for bulk work over `matching` of `all` devices: a sweep once a quarter or more
    /// match. Measured on 1,000,000 active devices (SQLite 3.40): the pages read in 1.28 s
    /// instead of 1.81 s and updated in 0.76 s instead of 1.04 s by sweeping; `refresh --all`
    /// went from 8-10 s to 7.5-8.5 s. A sweep for the 10 matching devices of 1,000,000 would
    /// read the whole table, hence the threshold.
    pub fn for_share(matching: u64, all: u64) -> Scan {
        if matching.saturating_mul(4) >= all {
            Scan::Sweep
        } else {
            Scan::Indexed
        }
    }
}

/// What [`Tx::update_devices`] does to every device of a range, alike: no per-device value and
/// no key material, so a store can run it as one set-based statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceUpdate {
    /// The state every device moves to (`None`: unchanged). The caller has checked that the
    /// transition is legal ([`State::transition`]) from the state its filter names.
    pub state: Option<State>,
    /// Adds one to every device's revision (the caller has checked it stays in range).
    pub bump_revision: bool,
    /// The generation every device moves to (`None`: unchanged).
    pub generation: Option<u32>,
    /// The change stamp every device gets.
    pub changed: Change,
}

impl DeviceUpdate {
    /// `record` after the update.
    pub fn apply(&self, record: &DeviceRecord) -> Result<DeviceRecord, StoreError> {
        let mut out = record.clone();
        self.apply_to(&mut out)?;
        Ok(out)
    }

    /// [`DeviceUpdate::apply`] in place; on an error the record is unchanged.
    pub fn apply_to(&self, record: &mut DeviceRecord) -> Result<(), StoreError> {
        let revision = if self.bump_revision {
            record.revision.checked_add(1).ok_or_else(|| {
                StoreError::Corrupt(format!("device {}: revision overflows", record.serial))
            })?
        } else {
            record.revision
        };
        record.revision = revision;
        if let Some(state) = self.state {
            record.state = state;
        }
        if let Some(generation) = self.generation {
            record.generation = generation;
        }
        record.changed = self.changed.clone();
        Ok(())
    }
}

/// The operations available inside one transaction.
pub trait Tx {
    /// The fleet, if the store has been initialised.
    fn fleet(&mut self) -> Result<Option<FleetInfo>, StoreError>;
    /// Creates or replaces the fleet record.
    fn put_fleet(&mut self, fleet: &FleetInfo) -> Result<(), StoreError>;

    /// Adds a generation; [`StoreError::Duplicate`] if the number exists.
    fn insert_generation(&mut self, record: &GenerationRecord) -> Result<(), StoreError>;
    /// Replaces a generation; [`StoreError::NotFound`] if absent.
    fn update_generation(&mut self, record: &GenerationRecord) -> Result<(), StoreError>;
    /// One generation.
    fn generation(&mut self, generation: u32) -> Result<Option<GenerationRecord>, StoreError>;
    /// Every generation, ascending.
    fn generations(&mut self) -> Result<Vec<GenerationRecord>, StoreError>;

    /// Adds a device; [`StoreError::Duplicate`] if the serial exists.
    fn insert_device(&mut self, record: &DeviceRecord) -> Result<(), StoreError>;
    /// Adds many devices; [`StoreError::Duplicate`] names the first serial that exists.
    fn insert_devices(&mut self, records: &[DeviceRecord]) -> Result<(), StoreError> {
        records.iter().try_for_each(|r| self.insert_device(r))
    }
    /// Replaces a device; [`StoreError::NotFound`] if absent. A replaced `wrapped_root` must not
    /// stay readable in the store's files once [`Store::purge`] has run.
    fn update_device(&mut self, record: &DeviceRecord) -> Result<(), StoreError>;
    /// A conditional bulk update: applies `update` to every device that matches `filter` (its
    /// state too: the condition that makes a transition legal) with a serial after `after` and up
    /// to `through` (inclusive), and returns how many changed. Devices outside the filter, a wrong
    /// state among them, are left as they are. Bulk work reads a page with [`Tx::devices`]`(filter,
    /// after, n)` and then updates it with `through` = the page's last serial, in one transaction:
    /// the rows changed are exactly the page. The stores run one statement; this default is the
    /// same, row by row.
    fn update_devices(
        &mut self,
        filter: &DeviceFilter,
        after: Option<&DeviceSerial>,
        through: &DeviceSerial,
        update: &DeviceUpdate,
        scan: Scan,
    ) -> Result<u64, StoreError> {
        const PAGE: usize = 1024;
        let mut after = after.cloned();
        let mut changed = 0;
        loop {
            let page = self.devices_by(filter, after.as_ref(), PAGE, scan)?;
            let full = page.len() == PAGE;
            for record in &page {
                if record.serial.as_bytes() > through.as_bytes() {
                    return Ok(changed);
                }
                self.update_device(&update.apply(record)?)?;
                changed += 1;
            }
            match page.last() {
                Some(last) if full => after = Some(last.serial.clone()),
                _ => return Ok(changed),
            }
        }
    }
    /// Replaces many devices, as [`Tx::update_device`] each; [`StoreError::NotFound`] names an
    /// absent one. The stores write them as one set (group commit, [`staged`]).
    fn update_device_rows(&mut self, records: &[DeviceRecord]) -> Result<(), StoreError> {
        each::update_device_rows(self, records)
    }
    /// One device.
    fn device(&mut self, serial: &DeviceSerial) -> Result<Option<DeviceRecord>, StoreError>;
    /// The devices of `serials` that exist, in any order: one read where the store can.
    fn device_rows(&mut self, serials: &[DeviceSerial]) -> Result<Vec<DeviceRecord>, StoreError> {
        each::device_rows(self, serials)
    }
    /// Devices matching a filter, ordered by serial bytes, starting after `after`, at most `limit`.
    fn devices(
        &mut self,
        filter: &DeviceFilter,
        after: Option<&DeviceSerial>,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>, StoreError>;
    /// [`Tx::devices`] for bulk work, looked up as `scan` says.
    fn devices_by(
        &mut self,
        filter: &DeviceFilter,
        after: Option<&DeviceSerial>,
        limit: usize,
        scan: Scan,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        let _ = scan;
        self.devices(filter, after, limit)
    }
    /// How many devices match a filter.
    fn count_devices(&mut self, filter: &DeviceFilter) -> Result<u64, StoreError>;
    /// How many devices are in each state that has any, in [`State::ALL`] order: one pass over
    /// the devices (the status and `/metrics` with a million devices).
    fn count_devices_by_state(&mut self) -> Result<Vec<(State, u64)>, StoreError> {
        let mut out = Vec::new();
        for state in State::ALL {
            let filter = DeviceFilter {
                state: Some(state),
                ..Default::default()
            };
            let n = self.count_devices(&filter)?;
            if n > 0 {
                out.push((state, n));
            }
        }
        Ok(out)
    }

    /// Appends an event to the audit chain (sealed against the current head) and moves the head.
    fn append_audit(&mut self, draft: AuditDraft) -> Result<AuditEvent, StoreError>;
    /// Appends events in order, as [`Tx::append_audit`] each: the stores write them as one set.
    fn append_audits(&mut self, drafts: Vec<AuditDraft>) -> Result<(), StoreError> {
        each::append_audits(self, drafts)
    }
    /// Events matching a filter with `seq > after_seq`, ascending, at most `limit`.
    fn audit_events(
        &mut self,
        filter: &AuditFilter,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, StoreError>;
    /// The recorded head of the chain: last sequence number and hash.
    fn audit_head(&mut self) -> Result<Option<(u64, [u8; 32])>, StoreError>;
    /// Where the store keeps the head (a table, for messages): `audit_head`, `meta`.
    fn audit_head_table(&self) -> &'static str;
    /// The stored index of the events with `after_seq < seq <= through_seq` (`after_seq = 0`
    /// also takes rows at `seq <= 0`, which no event has): see [`AuditIndex`].
    fn audit_index(&mut self, after_seq: u64, through_seq: u64) -> Result<AuditIndex, StoreError>;

    /// A small named value (schema data of later features: idempotency keys, record sequences).
    fn meta(&mut self, key: &str) -> Result<Option<String>, StoreError>;
    /// Sets a named value.
    fn put_meta(&mut self, key: &str, value: &str) -> Result<(), StoreError>;

    /// Adds a service token; [`StoreError::Duplicate`] (`token <id>`) if its id or hash exists.
    fn insert_token(&mut self, token: &ApiToken) -> Result<(), StoreError>;
    /// Replaces a token's fields but its id; [`StoreError::NotFound`] (`token <id>`) if absent.
    fn update_token(&mut self, token: &ApiToken) -> Result<(), StoreError>;
    /// One token by id.
    fn token(&mut self, id: &str) -> Result<Option<ApiToken>, StoreError>;
    /// The token whose text hashes to `hash`.
    fn token_by_hash(&mut self, hash: &[u8; 32]) -> Result<Option<ApiToken>, StoreError>;
    /// Every token, by issue time then id.
    fn tokens(&mut self) -> Result<Vec<ApiToken>, StoreError>;

    /// The record of a principal's idempotency key.
    fn idempotency(
        &mut self,
        principal: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError>;
    /// The records of many `(principal, key)` pairs that exist, in any order: one read where the
    /// store can.
    fn idempotency_rows(
        &mut self,
        keys: &[(String, String)],
    ) -> Result<Vec<IdempotencyRecord>, StoreError> {
        each::idempotency_rows(self, keys)
    }
    /// Claims a key; [`StoreError::Duplicate`] (`idempotency key <key>`) if the principal has it.
    fn insert_idempotency(&mut self, record: &IdempotencyRecord) -> Result<(), StoreError>;
    /// Claims many keys, as [`Tx::insert_idempotency`] each: the stores write them as one set.
    fn insert_idempotency_rows(&mut self, records: &[IdempotencyRecord]) -> Result<(), StoreError> {
        each::insert_idempotency_rows(self, records)
    }
    /// Replaces a record (to add the response); [`StoreError::NotFound`] if absent.
    fn update_idempotency(&mut self, record: &IdempotencyRecord) -> Result<(), StoreError>;
    /// Forgets a principal's key (a claim whose request failed in a way worth retrying).
    fn delete_idempotency(&mut self, principal: &str, key: &str) -> Result<(), StoreError>;
    /// Removes every idempotency record (claims and answers, of every principal) created before
    /// `created_before`; returns how many (the lifecycle policy's `idempotency_retention`).
    fn purge_idempotency(&mut self, created_before: UnixMillis) -> Result<u64, StoreError>;

    /// Adds a batch to the delivery journal (lines a bulk command owes its caller) and returns
    /// its id; ids grow with every insert.
    fn insert_delivery(
        &mut self,
        kind: &str,
        payload: &[u8],
        created_at: UnixMillis,
    ) -> Result<u64, StoreError>;
    /// Journal entries of `kind` with `id > after_id`, ascending, at most `limit`.
    fn deliveries(
        &mut self,
        kind: &str,
        after_id: u64,
        limit: usize,
    ) -> Result<Vec<PendingDelivery>, StoreError>;
    /// How many journal entries of `kind` there are.
    fn count_deliveries(&mut self, kind: &str) -> Result<u64, StoreError>;
    /// Removes an entry (its lines reached the caller); `false` if it was gone already.
    fn delete_delivery(&mut self, id: u64) -> Result<bool, StoreError>;

    /// Opens a savepoint: what is written after it can be undone alone
    /// ([`Tx::rollback_to_savepoint`]) while the transaction's earlier writes stay. One level,
    /// closed by a release or a rollback before the next is opened: group commit
    /// ([`crate::fleet::group`]) runs each operation of a batch in one.
    fn savepoint(&mut self) -> Result<(), StoreError>;
    /// Closes the savepoint and keeps what was written since it, as part of the transaction.
    fn release_savepoint(&mut self) -> Result<(), StoreError>;
    /// Undoes what was written since the savepoint and closes it; the transaction goes on, as
    /// usable as before the savepoint (on PostgreSQL, after a failed statement too).
    fn rollback_to_savepoint(&mut self) -> Result<(), StoreError>;
}

/// One entry of the delivery journal: a committed batch whose lines the caller may not have
/// received yet ([`crate::fleet::delivery`]).
#[derive(Clone, PartialEq, Eq)]
pub struct PendingDelivery {
    /// Its id, ascending in commit order.
    pub id: u64,
    /// What kind of lines it owes (`provisioning`, `key-update`).
    pub kind: String,
    /// The batch, encoded by the fleet (no plaintext key).
    pub payload: Vec<u8>,
    /// When the batch committed.
    pub created_at: UnixMillis,
}

impl std::fmt::Debug for PendingDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingDelivery")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("payload", &format_args!("{} bytes", self.payload.len()))
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// A store of one fleet.
pub trait Store: Send {
    /// A short name: `sqlite`, `postgres`.
    fn kind(&self) -> &'static str;

    /// Runs `f` in one serializable transaction; commits when it returns `Ok`, rolls back
    /// otherwise. May run `f` again after a conflict.
    fn transaction(
        &mut self,
        f: &mut dyn FnMut(&mut dyn Tx) -> Result<(), Error>,
    ) -> Result<(), Error>;

    /// Runs `f` in one read-only transaction: one consistent snapshot of committed data, taken
    /// without waiting for a writer (a transaction of [`Store::transaction`] holding the write
    /// lock or row locks does not delay it). Every write method of the [`Tx`] it is given fails
    /// with [`StoreError::ReadOnly`] before reaching the store, changing nothing, and the
    /// transaction stays usable. Nothing is committed whatever `f` returns. May run `f` again
    /// after the connection was lost before `f` saw a result (a read has nothing to lose).
    fn read(&mut self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<(), Error>) -> Result<(), Error>;

    /// Makes deleted and overwritten data unrecoverable from the store's files (zeroization at
    /// rest, IEC 62443-4-2 CR 4.2): SQLite checkpoints and truncates its WAL with `secure_delete`
    /// on; a server store does what its engine allows.
    fn purge(&mut self) -> Result<(), StoreError>;

    /// The files that hold the store's data, for zeroization checks (empty for a server).
    fn files(&self) -> Vec<PathBuf>;
}

/// Runs `f` in one transaction and returns its value.
pub fn transact<T>(
    store: &mut dyn Store,
    mut f: impl FnMut(&mut dyn Tx) -> Result<T, Error>,
) -> Result<T, Error> {
    let mut out = None;
    store.transaction(&mut |tx| {
        out = Some(f(tx)?);
        Ok(())
    })?;
    out.ok_or_else(|| {
        StoreError::Backend {
            operation: "transaction",
            detail: "committed without a result".into(),
        }
        .into()
    })
}

/// Runs `f` in one read-only transaction ([`Store::read`]) and returns its value.
pub fn read_tx<T>(
    store: &mut dyn Store,
    mut f: impl FnMut(&mut dyn Tx) -> Result<T, Error>,
) -> Result<T, Error> {
    let mut out = None;
    store.read(&mut |tx| {
        out = Some(f(tx)?);
        Ok(())
    })?;
    out.ok_or_else(|| {
        StoreError::Backend {
            operation: "read transaction",
            detail: "finished without a result".into(),
        }
        .into()
    })
}

/// The subject list of an audit event as both stores keep it: each serial as (length byte ||
/// bytes), in order.
pub(crate) fn encode_subjects(subjects: &[DeviceSerial]) -> Vec<u8> {
    let mut out = Vec::with_capacity(subjects.iter().map(|s| s.as_bytes().len() + 1).sum());
    for s in subjects {
        let bytes = s.as_bytes();
        // Serials are 1..=40 bytes.
        out.push(u8::try_from(bytes.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(bytes);
    }
    out
}

/// The inclusive `seq` bounds of [`Tx::audit_index`]`(after_seq, through_seq)`; empty (low >
/// high) when `after_seq` is past every stored number.
pub(crate) fn audit_index_range(after_seq: u64, through_seq: u64) -> (i64, i64) {
    let high = i64::try_from(through_seq).unwrap_or(i64::MAX);
    match i64::try_from(after_seq) {
        Ok(0) => (i64::MIN, high),
        Ok(after) if after < i64::MAX => (after + 1, high),
        _ => (1, 0),
    }
}

/// A corrupt row of the events table, named by table and event.
pub(crate) fn in_audit_event(seq: i64, e: StoreError) -> StoreError {
    match e {
        StoreError::Corrupt(what) => StoreError::Corrupt(format!("audit: event {seq}: {what}")),
        other => other,
    }
}

/// Reads a list written by [`encode_subjects`].
pub(crate) fn decode_subjects(mut blob: &[u8]) -> Result<Vec<DeviceSerial>, StoreError> {
    let mut out = Vec::new();
    while let Some((&len, rest)) = blob.split_first() {
        let (serial, rest) = rest
            .split_at_checked(usize::from(len))
            .ok_or_else(|| StoreError::Corrupt("audit subject list is truncated".into()))?;
        out.push(
            DeviceSerial::new(serial)
                .map_err(|e| StoreError::Corrupt(format!("audit subject: {e}")))?,
        );
        blob = rest;
    }
    Ok(out)
}

/// The JSON text of an event's details, exactly as it will be stored and hashed on reading.
/// Details that do not come back unchanged from that text (a float the parser rounds
/// differently) are refused, since they would break the chain when the event is verified.
pub(crate) fn audit_details_text(draft: &AuditDraft) -> Result<String, StoreError> {
    let refused = |detail: String| StoreError::Backend {
        operation: "append audit",
        detail,
    };
    let text = serde_json::to_string(&draft.details).map_err(|e| refused(e.to_string()))?;
    if serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .as_ref()
        != Some(&draft.details)
    {
        return Err(refused(
            "details do not survive a JSON round trip unchanged (use integers or strings)".into(),
        ));
    }
    Ok(text)
}

/// The set operations of [`Tx`] done one row at a time: the defaults, and what a store without a
/// set statement for one of them runs.
pub(crate) mod each {
    use super::Tx;
    use crate::access::IdempotencyRecord;
    use crate::audit::AuditDraft;
    use crate::error::StoreError;
    use crate::model::{DeviceRecord, DeviceSerial};

    pub(crate) fn update_device_rows<T: Tx + ?Sized>(
        tx: &mut T,
        records: &[DeviceRecord],
    ) -> Result<(), StoreError> {
        records.iter().try_for_each(|r| tx.update_device(r))
    }

    pub(crate) fn device_rows<T: Tx + ?Sized>(
        tx: &mut T,
        serials: &[DeviceSerial],
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        let mut out = Vec::with_capacity(serials.len());
        for s in serials {
            out.extend(tx.device(s)?);
        }
        Ok(out)
    }

    pub(crate) fn append_audits<T: Tx + ?Sized>(
        tx: &mut T,
        drafts: Vec<AuditDraft>,
    ) -> Result<(), StoreError> {
        drafts
            .into_iter()
            .try_for_each(|d| tx.append_audit(d).map(drop))
    }

    pub(crate) fn idempotency_rows<T: Tx + ?Sized>(
        tx: &mut T,
        keys: &[(String, String)],
    ) -> Result<Vec<IdempotencyRecord>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        for (principal, key) in keys {
            out.extend(tx.idempotency(principal, key)?);
        }
        Ok(out)
    }

    pub(crate) fn insert_idempotency_rows<T: Tx + ?Sized>(
        tx: &mut T,
        records: &[IdempotencyRecord],
    ) -> Result<(), StoreError> {
        records.iter().try_for_each(|r| tx.insert_idempotency(r))
    }
}
