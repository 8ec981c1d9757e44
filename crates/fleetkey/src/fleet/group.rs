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
//! The store may run the transaction again after a serialization conflict (PostgreSQL): every run
//! starts afresh, so a write is applied once in what commits.

use zeroize::Zeroizing;

use super::devices::{Move, move_in, provision_in, refresh_in};
use super::{Fleet, KeyUpdate, Provisioning, fleet_info, transport_key_in};
use crate::access::IdempotencyRecord;
use crate::audit::AuditDraft;
use crate::error::{Error, StoreError};
use crate::model::{Change, DeviceRecord, DeviceSerial, WrappedKey};
use crate::store::transact;

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
        let needs_fleet = writes.iter().any(|w| w.write == DeviceWrite::Refresh);
        let needs_transport = writes.iter().any(|w| w.write == DeviceWrite::Provision);
        let slots = transact(self.store.as_mut(), |tx| {
            let fleet = if needs_fleet {
                Some(fleet_info(tx)?)
            } else {
                None
            };
            let transport = if needs_transport {
                transport_key_in(tx, module)?
            } else {
                None
            };
            let mut slots = Vec::with_capacity(writes.len());
            for (w, root) in writes.iter().zip(&prepared) {
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
                            tx,
                            module,
                            transport.as_ref(),
                            s,
                            &change,
                            &draft,
                        )?),
                        DeviceWrite::Refresh => {
                            let fleet = fleet.as_ref().ok_or_else(|| StoreError::Backend {
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
        })?;
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
