//! Group commit: many device writes, of many callers, in one store transaction (the service
//! gathers concurrent requests into a group; docs/service.md, "Group commit").
//!
//! A group costs one commit (one fsync on SQLite, one WAL flush on PostgreSQL) however many writes
//! it holds, and keeps each write's guarantees:
//! - each write runs in a savepoint: one that fails (an illegal transition, an unknown serial, a
//!   key-module error) is undone alone and gets its own error; the others commit;
//! - the audit chain gets one event per write, appended in the group's order;
//! - a write with an idempotency key is looked up first (a repeat gets the stored response, a
//!   different request with the same key is refused), and its response is stored, wrapped under
//!   the key module's KEK, in the same savepoint as the write: a committed write always has its
//!   response, and no write without one is ever committed;
//! - nothing is answered before the commit: the caller learns each outcome only when
//!   [`Fleet::write_group`] returns, after the transaction is durable. A failed commit fails the
//!   whole group (`Err`), and nothing of it was changed.
//!
//! The group is staged ([`crate::store::staged`]): its rows are read at once, the writes run
//! against them in memory (their savepoints too) and what changed is written as sets at the end.
//! Where staging cannot do a group, that transaction is rolled back and the group runs write by
//! write, each write in a store savepoint ([`Fleet::write_group_unstaged`]): the same outcomes.
//!
//! The store may run the transaction again after a serialization conflict (PostgreSQL): every run
//! starts afresh, so a write is applied once in what commits.

use zeroize::Zeroizing;

use super::devices::{Move, move_in, provision_in, refresh_in};
use super::{Fleet, KeyUpdate, Provisioning, fleet_info, transport_key_in};
use crate::access::IdempotencyRecord;
use crate::audit::AuditDraft;
use crate::error::{Error, StoreError};
use crate::model::{Change, DeviceRecord, DeviceSerial, WrappedKey};
use crate::store::staged::{NotStaged, StagedTx};
use crate::store::{Tx, transact};

/// What a write does to its device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceWrite {
    /// [`Fleet::provision`].
    Provision,
    /// [`Fleet::refresh`].
    Refresh,
    /// [`Fleet::suspend`].
    Suspend,
    /// [`Fleet::resume`].
    Resume,
    /// [`Fleet::revoke`].
    Revoke,
}

impl DeviceWrite {
    /// The audit action it records.
    pub fn action(self) -> &'static str {
        match self {
            DeviceWrite::Provision => "device.provision",
            DeviceWrite::Refresh => "device.refresh",
            DeviceWrite::Suspend => Move::SUSPEND.action,
            DeviceWrite::Resume => Move::RESUME.action,
            DeviceWrite::Revoke => Move::REVOKE.action,
        }
    }
}

/// An idempotency key a write is sent with: scoped to its principal, bound to the request's
/// fingerprint (SHA-256 of method, path and body).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyClaim {
    /// Who sent it.
    pub principal: String,
    /// The key (1 to 255 visible ASCII characters).
    pub key: String,
    /// The request's fingerprint.
    pub fingerprint: [u8; 32],
}

/// One write of a group.
#[derive(Clone, Debug)]
pub struct GroupWrite {
    /// Who acts (the audit event's and the change's actor).
    pub actor: String,
    /// The device.
    pub serial: DeviceSerial,
    /// What to do.
    pub write: DeviceWrite,
    /// Why (the change's reason).
    pub reason: String,
    /// The request's idempotency key, if it has one.
    pub idempotency: Option<IdempotencyClaim>,
}

/// What a write did, handed to the group's renderer.
#[derive(Debug)]
pub enum Written {
    /// Provisioned (or provisioned again): the device's key material.
    Provisioned(Provisioning),
    /// Refreshed: the key update.
    Refreshed(KeyUpdate),
    /// Suspended, resumed or revoked: the device after.
    Moved(DeviceRecord),
}

/// A response as the caller renders it (status and body; a provisioning body carries key
/// material: zeroized when dropped, and Debug shows only its length).
pub struct Response {
    /// Its status (HTTP).
    pub status: u16,
    /// Its body.
    pub body: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// How one write of a committed group ended (`E`: the renderer's error).
#[derive(Debug)]
pub enum Outcome<E> {
    /// It committed; its response.
    Done(Response),
    /// Its idempotency key was used before with the same request: that request's response;
    /// nothing ran again.
    Replayed(Response),
    /// Its idempotency key was used before with another request: refused, nothing ran.
    IdempotencyMismatch,
    /// Its idempotency key is held by a request that has not finished (another instance's, just
    /// now): refused, nothing ran; a retry gets that request's response.
    IdempotencyInProgress,
    /// It failed and changed nothing; the rest of the group is unaffected.
    Failed(Error),
    /// Its response could not be rendered: undone like a failed write.
    Unrendered(E),
}

/// Renders what a write did as its response, inside the group's transaction (so that the
/// response stored for its idempotency key commits with it). An error fails the write alone.
pub type Render<'a, E> = dyn Fn(&GroupWrite, &Written) -> Result<Response, E> + 'a;

/// Why a write was undone within a run of the transaction.
enum Undone<E> {
    Failed(Error),
    Unrendered(E),
}

impl<E> From<Error> for Undone<E> {
    fn from(e: Error) -> Self {
        Undone::Failed(e)
    }
}

impl<E> From<StoreError> for Undone<E> {
    fn from(e: StoreError) -> Self {
        Undone::Failed(e.into())
    }
}

impl<E> From<crate::error::ModuleError> for Undone<E> {
    fn from(e: crate::error::ModuleError) -> Self {
        Undone::Failed(e.into())
    }
}

/// One write's end within a run of the transaction.
enum Slot<E> {
    Done(Response),
    Replayed(Response),
    Mismatch,
    InProgress,
    Failed(Error),
    Unrendered(E),
    /// Failed before the transaction (its new root); the error is at this index of `prepared`.
    NotPrepared,
}

impl Fleet {
    /// Runs `writes` in one store transaction, in order, each in its own savepoint (module
    /// docs), rendering each write's response with `render`. Returns one outcome per write, in
    /// order, once the transaction has committed; `Err` when the transaction itself failed (then
    /// nothing of the group changed).
    pub fn write_group<E>(
        &mut self,
        writes: &[GroupWrite],
        render: &Render<'_, E>,
    ) -> Result<Vec<Outcome<E>>, Error> {
        self.write_group_as(writes, render, Staging::Staged)
    }

    /// [`Fleet::write_group`] without staging: every write's statements run as it goes, each
    /// write in a store savepoint (what a staged group falls back to). The same outcomes and the
    /// same store; for comparisons and benchmarks.
    pub fn write_group_unstaged<E>(
        &mut self,
        writes: &[GroupWrite],
        render: &Render<'_, E>,
    ) -> Result<Vec<Outcome<E>>, Error> {
        self.write_group_as(writes, render, Staging::WriteByWrite)
    }

    fn write_group_as<E>(
        &mut self,
        writes: &[GroupWrite],
        render: &Render<'_, E>,
        staging: Staging,
    ) -> Result<Vec<Outcome<E>>, Error> {
        let now = self.access.clock.now_ms();
        // The key module's randomness is drawn once, before the transaction: a run again after a
        // conflict writes the same roots.
        let mut prepared: Vec<Result<Option<WrappedKey>, Error>> = writes
            .iter()
            .map(|w| match w.write {
                DeviceWrite::Refresh => self.new_device_root(),
                _ => Ok(None),
            })
            .collect();
        let module = self.module.get()?;
        let group = Group {
            module,
            writes,
            prepared: &prepared,
            now,
            render,
        };
        // Staged first: the group's rows read at once, written as sets. If staging cannot do the
        // group (module docs of `store::staged`), that transaction is rolled back and the group
        // runs again one write at a time, each in a store savepoint.
        let mut not_staged: Option<NotStaged> = None;
        let mut staged = |tx: &mut dyn Tx| {
            not_staged = None;
            let (fleet, transport) = group.reads(tx)?;
            let mut staged = StagedTx::new(tx);
            let serials: Vec<DeviceSerial> = writes.iter().map(|w| w.serial.clone()).collect();
            staged.read_devices(&serials)?;
            let keys: Vec<(String, String)> = writes
                .iter()
                .filter_map(|w| w.idempotency.as_ref())
                .map(|c| (c.principal.clone(), c.key.clone()))
                .collect();
            staged.read_idempotency(&keys)?;
            let slots = group.run(&mut staged, fleet.as_ref(), transport.as_ref())?;
            match staged.finish() {
                Ok(()) => Ok(slots),
                Err(why) => {
                    let e = StoreError::Backend {
                        operation: "group commit",
                        detail: why.to_string(),
                    };
                    not_staged = Some(why);
                    Err(e.into())
                }
            }
        };
        let staged = match staging {
            Staging::Staged => Some(transact(self.store.as_mut(), &mut staged)),
            Staging::WriteByWrite => None,
        };
        let slots = match staged {
            Some(Ok(slots)) => slots,
            Some(Err(e)) if not_staged.is_none() => return Err(e),
            // Not staged, or staging could not do this group.
            _ => transact(self.store.as_mut(), |tx| {
                let (fleet, transport) = group.reads(tx)?;
                group.run(tx, fleet.as_ref(), transport.as_ref())
            })?,
        };
        Ok(slots
            .into_iter()
            .zip(prepared.iter_mut())
            .map(|(slot, root)| match slot {
                Slot::Done(r) => Outcome::Done(r),
                Slot::Replayed(r) => Outcome::Replayed(r),
                Slot::Mismatch => Outcome::IdempotencyMismatch,
                Slot::InProgress => Outcome::IdempotencyInProgress,
                Slot::Failed(e) => Outcome::Failed(e),
                Slot::Unrendered(e) => Outcome::Unrendered(e),
                Slot::NotPrepared => {
                    let failed = std::mem::replace(root, Ok(None));
                    Outcome::Failed(failed.err().unwrap_or_else(|| {
                        StoreError::Backend {
                            operation: "group commit",
                            detail: "a write was not prepared".into(),
                        }
                        .into()
                    }))
                }
            })
            .collect())
    }
}

/// How a group's writes reach the store.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Staging {
    /// Staged (`store::staged`), falling back to write by write.
    Staged,
    /// Write by write, each in a store savepoint.
    WriteByWrite,
}

/// A group's writes and what they need, run in a transaction ([`Fleet::write_group`]).
struct Group<'g, E> {
    module: &'g dyn crate::module::KeyModule,
    writes: &'g [GroupWrite],
    prepared: &'g [Result<Option<WrappedKey>, Error>],
    now: crate::model::UnixMillis,
    render: &'g Render<'g, E>,
}

impl<E> Group<'_, E> {
    /// The fleet (for a refresh) and the transport key (for a provisioning), read once.
    fn reads(
        &self,
        tx: &mut dyn Tx,
    ) -> Result<
        (
            Option<crate::model::FleetInfo>,
            Option<fleetkey_core::Key128>,
        ),
        Error,
    > {
        let needs_fleet = self.writes.iter().any(|w| w.write == DeviceWrite::Refresh);
        let needs_transport = self
            .writes
            .iter()
            .any(|w| w.write == DeviceWrite::Provision);
        let fleet = if needs_fleet {
            Some(fleet_info(tx)?)
        } else {
            None
        };
        let transport = if needs_transport {
            transport_key_in(tx, self.module)?
        } else {
            None
        };
        Ok((fleet, transport))
    }

    /// Runs the writes in order, each in a savepoint of `tx`.
    fn run(
        &self,
        tx: &mut dyn Tx,
        fleet: Option<&crate::model::FleetInfo>,
        transport: Option<&fleetkey_core::Key128>,
    ) -> Result<Vec<Slot<E>>, Error> {
        let (module, now, render) = (self.module, self.now, self.render);
        let mut slots = Vec::with_capacity(self.writes.len());
        for (w, root) in self.writes.iter().zip(self.prepared) {
            let Ok(root) = root else {
                slots.push(Slot::NotPrepared);
                continue;
            };
            if let Some(claim) = &w.idempotency {
                match tx.idempotency(&claim.principal, &claim.key)? {
                    None => {}
                    Some(found) => {
                        slots.push(earlier(module, claim, found));
                        continue;
                    }
                }
            }
            let change = Change {
                at: now,
                actor: w.actor.clone(),
                reason: w.reason.clone(),
            };
            let draft = AuditDraft {
                at: now,
                actor: w.actor.clone(),
                action: w.write.action().to_owned(),
                generation: None,
                subjects: vec![w.serial.clone()],
                details: serde_json::json!({}),
            };
            tx.savepoint()?;
            let result = (|| {
                let s = &w.serial;
                let written = match w.write {
                    DeviceWrite::Provision => Written::Provisioned(provision_in(
                        tx, module, transport, s, &change, &draft,
                    )?),
                    DeviceWrite::Refresh => {
                        let fleet = fleet.ok_or_else(|| StoreError::Backend {
                            operation: "group commit",
                            detail: "the fleet was not read".into(),
                        })?;
                        Written::Refreshed(refresh_in(
                            tx,
                            module,
                            fleet,
                            s,
                            root.clone(),
                            &change,
                            &draft,
                        )?)
                    }
                    DeviceWrite::Suspend => {
                        Written::Moved(move_in(tx, s, Move::SUSPEND, &change, &draft)?)
                    }
                    DeviceWrite::Resume => {
                        Written::Moved(move_in(tx, s, Move::RESUME, &change, &draft)?)
                    }
                    DeviceWrite::Revoke => {
                        Written::Moved(move_in(tx, s, Move::REVOKE, &change, &draft)?)
                    }
                };
                let response = render(w, &written).map_err(Undone::Unrendered)?;
                if let Some(claim) = &w.idempotency {
                    let wrapped = module.wrap(&response.body)?;
                    tx.insert_idempotency(&IdempotencyRecord {
                        principal: claim.principal.clone(),
                        key: claim.key.clone(),
                        fingerprint: claim.fingerprint,
                        created_at: now,
                        response: Some((response.status, wrapped)),
                    })?;
                }
                Ok::<_, Undone<E>>(response)
            })();
            match result {
                Ok(response) => {
                    tx.release_savepoint()?;
                    slots.push(Slot::Done(response));
                }
                Err(e) => {
                    tx.rollback_to_savepoint()?;
                    slots.push(match e {
                        // Another instance's request with this key committed just now.
                        Undone::Failed(Error::Store(StoreError::Duplicate(_)))
                            if w.idempotency.is_some() =>
                        {
                            Slot::InProgress
                        }
                        Undone::Failed(e) => Slot::Failed(e),
                        Undone::Unrendered(e) => Slot::Unrendered(e),
                    });
                }
            }
        }
        Ok(slots)
    }
}

/// What an earlier request with the same idempotency key says about this one.
fn earlier<E>(
    module: &dyn crate::module::KeyModule,
    claim: &IdempotencyClaim,
    found: IdempotencyRecord,
) -> Slot<E> {
    use subtle::ConstantTimeEq;
    if !bool::from(found.fingerprint.ct_eq(&claim.fingerprint)) {
        return Slot::Mismatch;
    }
    match found.response {
        // A claim of a request that has not finished (or never recorded its response).
        None => Slot::InProgress,
        Some((status, wrapped)) => match module.unwrap(&wrapped) {
            Ok(body) => Slot::Replayed(Response { status, body }),
            Err(e) => Slot::Failed(e.into()),
        },
    }
}
