//! Device operations: add, show, list, provision, refresh, suspend, resume, revoke, decommission.

use fleetkey_core::Key128;
use serde::Serialize;

use super::material::{Authoriser, DeviceKeys, KeysHex, SheUpdate, she_uid, she_updates};
use super::{Fleet, fleet_info};
use crate::error::{Error, StoreError};
use crate::lifecycle::State;
use crate::model::{DeviceFilter, DeviceRecord, DeviceSerial, SheUid};
use crate::store::{Tx, read_tx, transact};

/// A device to register.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDevice {
    /// Its serial.
    pub serial: DeviceSerial,
    /// Its SHE UID, if it has a SHE.
    pub she_uid: Option<SheUid>,
    /// Labels.
    pub labels: Vec<String>,
}

/// What a provisioning station receives for one device. Carries key material: the station
/// writes it into the ECU and forgets it. Debug shows the device, not the keys.
#[derive(Serialize)]
pub struct Provisioning {
    /// The device.
    pub device: DeviceRecord,
    /// Its keys, hex.
    pub keys: KeysHex,
    /// The SHE updates of the initial load (under the fleet's transport key), or `None` when the
    /// fleet has no transport key.
    pub she: Option<Vec<SheUpdate>>,
}

impl std::fmt::Debug for Provisioning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provisioning")
            .field("device", &self.device)
            .field("she_updates", &self.she.as_ref().map(Vec::len))
            .finish_non_exhaustive()
    }
}

/// A refresh or migration: the SHE updates that carry the new keys, authorised by the device's
/// current KEY_UPDATE key. No plaintext key.
#[derive(Debug, Serialize)]
pub struct KeyUpdate {
    /// The device after the change.
    pub device: DeviceRecord,
    /// Generation and revision before.
    pub from: (u32, u32),
    /// The updates to send, in order.
    pub she: Vec<SheUpdate>,
}

impl Fleet {
    /// Registers a device (pre-active) on the current generation at revision 0. Stored scheme: a
    /// random root, kept only wrapped.
    pub fn add_device(&mut self, new: NewDevice) -> Result<DeviceRecord, Error> {
        validate_labels(&new.labels)?;
        let wrapped_root = self.new_device_root()?;
        let change = self.change("registered");
        let draft = self.draft(
            "device.add",
            None,
            vec![new.serial.clone()],
            serde_json::json!({"state": "pre-active"}),
        );
        transact(self.store.as_mut(), |tx| {
            let fleet = fleet_info(tx)?;
            let record = DeviceRecord {
                serial: new.serial.clone(),
                she_uid: new.she_uid,
                labels: new.labels.clone(),
                generation: fleet.current_generation.unwrap_or(0),
                revision: 0,
                state: State::PreActive,
                changed: change.clone(),
                wrapped_root: wrapped_root.clone(),
                created_at: change.at,
            };
            tx.insert_device(&record)
                .map_err(|e| duplicate_serial(e, &record.serial))?;
            let mut d = draft.clone();
            d.generation = Some(record.generation);
            tx.append_audit(d)?;
            Ok(record)
        })
    }

    /// One device.
    pub fn device(&mut self, serial: &DeviceSerial) -> Result<DeviceRecord, Error> {
        read_tx(self.store.as_mut(), |tx| device(tx, serial))
    }

    /// Devices matching a filter, in serial order, after `after`, at most `limit`.
    pub fn devices(
        &mut self,
        filter: &DeviceFilter,
        after: Option<&DeviceSerial>,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>, Error> {
        read_tx(self.store.as_mut(), |tx| {
            Ok(tx.devices(filter, after, limit)?)
        })
    }

    /// The key material a provisioning station needs, and the SHE initial load. A pre-active
    /// device becomes active; provisioning an active device again returns the same material
    /// (a station may retry) and changes nothing.
    pub fn provision(&mut self, serial: &DeviceSerial) -> Result<Provisioning, Error> {
        let transport = self.transport_key()?;
        let change = self.change("provisioned");
        let draft = self.draft(
            "device.provision",
            None,
            vec![serial.clone()],
            serde_json::json!({}),
        );
        let module = self.module.get()?;
        transact(self.store.as_mut(), |tx| {
            provision_in(tx, module, transport.as_ref(), serial, &change, &draft)
        })
    }

    /// Refresh: revision + 1 (and, in the derived schemes, migration to the current generation);
    /// the stored scheme draws a new random root. Returns the SHE updates that carry the new keys.
    pub fn refresh(&mut self, serial: &DeviceSerial, reason: &str) -> Result<KeyUpdate, Error> {
        let new_root = self.new_device_root()?;
        let change = self.change(reason);
        let draft = self.draft(
            "device.refresh",
            None,
            vec![serial.clone()],
            serde_json::json!({}),
        );
        let module = self.module.get()?;
        transact(self.store.as_mut(), |tx| {
            let fleet = fleet_info(tx)?;
            refresh_in(
                tx,
                module,
                &fleet,
                serial,
                new_root.clone(),
                &change,
                &draft,
            )
        })
    }

    /// Active -> suspended.
    pub fn suspend(&mut self, serial: &DeviceSerial, reason: &str) -> Result<DeviceRecord, Error> {
        self.set_state(serial, Move::SUSPEND, reason)
    }

    /// Suspended -> active.
    pub fn resume(&mut self, serial: &DeviceSerial, reason: &str) -> Result<DeviceRecord, Error> {
        self.set_state(serial, Move::RESUME, reason)
    }

    /// Revoke: the device's keys are (suspected) compromised. Its keys are never issued again.
    pub fn revoke(&mut self, serial: &DeviceSerial, reason: &str) -> Result<DeviceRecord, Error> {
        self.set_state(serial, Move::REVOKE, reason)
    }

    /// Decommission: the device leaves the fleet and its key material is destroyed (stored
    /// scheme: the wrapped root is overwritten and the store purged). Active and suspended
    /// devices pass through deactivated; compromised ones end destroyed-compromised.
    pub fn decommission(
        &mut self,
        serial: &DeviceSerial,
        reason: &str,
    ) -> Result<DeviceRecord, Error> {
        let record = self.set_state(serial, Move::DECOMMISSION, reason)?;
        self.store.purge()?;
        Ok(record)
    }

    /// Moves a device as `step` says, in one transaction with one audit event.
    fn set_state(
        &mut self,
        serial: &DeviceSerial,
        step: Move,
        reason: &str,
    ) -> Result<DeviceRecord, Error> {
        let change = self.change(reason);
        let draft = self.draft(
            step.action,
            None,
            vec![serial.clone()],
            serde_json::json!({}),
        );
        transact(self.store.as_mut(), |tx| {
            move_in(tx, serial, step, &change, &draft)
        })
    }
}

/// A lifecycle move of one device: the states it starts from (any, when empty), the targets it
/// takes each legal step to, in order, and its audit action.
#[derive(Clone, Copy, Debug)]
pub(super) struct Move {
    pub(super) from: &'static [State],
    pub(super) targets: &'static [State],
    pub(super) action: &'static str,
}

impl Move {
    pub(super) const SUSPEND: Move = Move {
        from: &[State::Active],
        targets: &[State::Suspended],
        action: "device.suspend",
    };
    pub(super) const RESUME: Move = Move {
        from: &[State::Suspended],
        targets: &[State::Active],
        action: "device.resume",
    };
    pub(super) const REVOKE: Move = Move {
        from: &[],
        targets: &[State::Compromised],
        action: "device.revoke",
    };
    pub(super) const DECOMMISSION: Move = Move {
        from: &[],
        targets: &[
            State::Deactivated,
            State::Destroyed,
            State::DestroyedCompromised,
        ],
        action: "device.decommission",
    };
}

/// Provisioning inside a transaction ([`Fleet::provision`], group commit): a pre-active device
/// becomes active; an active one gets the same material again and nothing changes.
pub(super) fn provision_in(
    tx: &mut dyn Tx,
    module: &dyn crate::module::KeyModule,
    transport: Option<&Key128>,
    serial: &DeviceSerial,
    change: &crate::model::Change,
    draft: &crate::audit::AuditDraft,
) -> Result<Provisioning, Error> {
    let mut record = device(tx, serial)?;
    let first = record.state == State::PreActive;
    if first {
        record.state = transition(&record, State::Active)?;
        record.changed = change.clone();
    } else if record.state != State::Active {
        return Err(Error::NotProvisionable {
            serial: serial.clone(),
            state: record.state,
        });
    }
    let keys = DeviceKeys::derive(module, &record, record.generation, record.revision)?;
    let she = match transport {
        Some(t) if record.revision == 0 => Some(she_updates(
            serial,
            she_uid(&record),
            Authoriser::Transport(t),
            &keys,
            0,
        )?),
        _ => None,
    };
    if first {
        tx.update_device(&record)?;
        let mut d = draft.clone();
        d.generation = Some(record.generation);
        d.details = serde_json::json!({"state": "active", "revision": record.revision});
        tx.append_audit(d)?;
    }
    Ok(Provisioning {
        keys: KeysHex::from(&keys),
        device: record,
        she,
    })
}

/// Refresh of an active device inside a transaction, with its audit event ([`Fleet::refresh`],
/// group commit).
pub(super) fn refresh_in(
    tx: &mut dyn Tx,
    module: &dyn crate::module::KeyModule,
    fleet: &crate::model::FleetInfo,
    serial: &DeviceSerial,
    new_root: Option<crate::model::WrappedKey>,
    change: &crate::model::Change,
    draft: &crate::audit::AuditDraft,
) -> Result<KeyUpdate, Error> {
    let old = device(tx, serial)?;
    if old.state != State::Active {
        return Err(Error::NotRefreshable {
            serial: serial.clone(),
            state: old.state,
        });
    }
    let (update, event) = refresh_one(tx, module, fleet, old, new_root, change, draft)?;
    tx.append_audit(event)?;
    Ok(update)
}

/// A lifecycle move inside a transaction, with its audit event ([`Fleet::suspend`] and the
/// others, group commit).
pub(super) fn move_in(
    tx: &mut dyn Tx,
    serial: &DeviceSerial,
    step: Move,
    change: &crate::model::Change,
    draft: &crate::audit::AuditDraft,
) -> Result<DeviceRecord, Error> {
    let mut record = device(tx, serial)?;
    let start = record.state;
    if !step.from.is_empty() && !step.from.contains(&start) {
        let to = step.targets.first().copied().unwrap_or(State::Active);
        return Err(Error::Transition {
            subject: format!("device {serial}"),
            source: crate::lifecycle::IllegalTransition { from: start, to },
        });
    }
    let mut moved = false;
    for &to in step.targets {
        if record.state.can_become(to) {
            record.state = to;
            moved = true;
        }
    }
    if !moved {
        // Report the first target's refusal.
        let to = step.targets.first().copied().unwrap_or(State::Active);
        transition(&record, to)?;
    }
    if !record.state.holds_key_material() {
        record.wrapped_root = None;
    }
    record.changed = change.clone();
    tx.update_device(&record)?;
    let mut d = draft.clone();
    d.generation = Some(record.generation);
    d.details = serde_json::json!({"from": start, "to": record.state, "reason": change.reason});
    tx.append_audit(d)?;
    Ok(record)
}

/// Refreshes one device inside a transaction and returns the update and its audit draft.
pub(super) fn refresh_one(
    tx: &mut dyn Tx,
    module: &dyn crate::module::KeyModule,
    fleet: &crate::model::FleetInfo,
    old: DeviceRecord,
    new_root: Option<crate::model::WrappedKey>,
    change: &crate::model::Change,
    draft: &crate::audit::AuditDraft,
) -> Result<(KeyUpdate, crate::audit::AuditDraft), Error> {
    let serial = old.serial.clone();
    let revision = fleetkey_core::Revision::new(old.revision)
        .and_then(|r| r.next())
        .map_err(|_| Error::LastRevision(serial.clone()))?
        .get();
    let mut new = old.clone();
    new.revision = revision;
    if let Some(g) = fleet.current_generation {
        new.generation = g;
    }
    if let Some(root) = new_root {
        new.wrapped_root = Some(root);
    }
    new.changed = change.clone();
    tx.update_device(&new)?;
    let mut d = draft.clone();
    d.subjects = vec![serial];
    d.generation = Some(new.generation);
    d.details = serde_json::json!({
        "from": {"generation": old.generation, "revision": old.revision},
        "to": {"generation": new.generation, "revision": new.revision},
        "reason": change.reason,
    });
    Ok((key_update(module, &old, new)?, d))
}

/// The SHE updates that take a device from `old` to `new` (its keys at `new`, authorised by its
/// KEY_UPDATE key at `old`). The same records give the same bytes: a re-sent update is identical.
pub(super) fn key_update(
    module: &dyn crate::module::KeyModule,
    old: &DeviceRecord,
    new: DeviceRecord,
) -> Result<KeyUpdate, Error> {
    let current = DeviceKeys::derive_key_update(module, old, old.generation, old.revision)?;
    let new_keys = DeviceKeys::derive(module, &new, new.generation, new.revision)?;
    let she = she_updates(
        &new.serial,
        she_uid(&new),
        Authoriser::Current(&current),
        &new_keys,
        new.revision,
    )?;
    Ok(KeyUpdate {
        from: (old.generation, old.revision),
        device: new,
        she,
    })
}

pub(super) fn device(tx: &mut dyn Tx, serial: &DeviceSerial) -> Result<DeviceRecord, Error> {
    tx.device(serial)?
        .ok_or_else(|| Error::NoSuchDevice(serial.clone()))
}

pub(super) fn transition(record: &DeviceRecord, to: State) -> Result<State, Error> {
    record
        .state
        .transition(to)
        .map_err(|source| Error::Transition {
            subject: format!("device {}", record.serial),
            source,
        })
}

pub(super) fn duplicate_serial(e: StoreError, serial: &DeviceSerial) -> Error {
    match e {
        StoreError::Duplicate(_) => Error::DeviceExists(serial.clone()),
        other => other.into(),
    }
}

pub(super) fn validate_labels(labels: &[String]) -> Result<(), Error> {
    for l in labels {
        if l.is_empty() || l.len() > 64 || l.chars().any(|c| c.is_control() || c == ';' || c == ',')
        {
            return Err(Error::invalid(
                "label",
                format_args!("{l:?}: 1 to 64 characters, no control characters, ';' or ','"),
            ));
        }
    }
    Ok(())
}
