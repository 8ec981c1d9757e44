//! Master generations: create, activate, rotate, deactivate, destroy; rotation status.

use fleetkey_core::Generation;
use serde::Serialize;

use super::{Fleet, ceremony, fleet_info};
use crate::backup::MasterBackup;
use crate::error::Error;
use crate::lifecycle::State;
use crate::model::{DeviceFilter, GenerationRecord};
use crate::store::{Tx, read_tx, transact};

/// Devices on one generation.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct GenerationCount {
    /// The generation.
    pub generation: u32,
    /// Its state.
    pub state: State,
    /// Whether it is the fleet's current generation.
    pub current: bool,
    /// Devices still holding key material on it (not destroyed).
    pub devices: u64,
}

/// Where a rotation stands: devices per generation.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RotationStatus {
    /// The current generation.
    pub current: Option<u32>,
    /// Every generation with its device count.
    pub generations: Vec<GenerationCount>,
    /// Devices not yet on the current generation.
    pub pending: u64,
}

impl Fleet {
    fn require_derived(&self, what: &'static str) -> Result<(), Error> {
        if self.config.scheme.derives_from_master() {
            Ok(())
        } else {
            Err(Error::NoMasterGenerations {
                operation: what,
                scheme: self.config.scheme,
            })
        }
    }

    /// Generations, ascending.
    pub fn generations(&mut self) -> Result<Vec<GenerationRecord>, Error> {
        read_tx(self.store.as_mut(), |tx| Ok(tx.generations()?))
    }

    /// Creates the next generation (pre-active) with a fresh master in the key module, backed up
    /// as `backup` says (the ceremony: see [`crate::backup`]).
    pub fn create_generation(
        &mut self,
        reason: &str,
        backup: &MasterBackup,
    ) -> Result<GenerationRecord, Error> {
        self.require_derived("create generation")?;
        let next = transact(self.store.as_mut(), |tx| {
            Ok(tx
                .generations()?
                .last()
                .map_or(1, |g| g.generation.saturating_add(1)))
        })?;
        if self.module.get()?.masters()?.contains(&Generation(next)) {
            // A master left by an interrupted earlier attempt: never reuse key material whose
            // creation was not recorded.
            self.module.get()?.destroy_master(Generation(next))?;
        }
        let new_master = ceremony::create_master(
            self.module.get()?,
            &self.config.fleet_id,
            next,
            backup,
            self.access.clock.now_ms(),
        )?;
        let change = self.change(reason);
        let draft = self.draft(
            "generation.create",
            Some(next),
            vec![],
            serde_json::json!({"state": "pre-active"}),
        );
        let backup_draft = self.draft(
            ceremony::BACKUP_ACTION,
            Some(next),
            vec![],
            new_master.details.clone(),
        );
        let record = transact(self.store.as_mut(), |tx| {
            let record = GenerationRecord {
                generation: next,
                state: State::PreActive,
                changed: change.clone(),
                created_at: change.at,
            };
            tx.insert_generation(&record)?;
            tx.append_audit(draft.clone())?;
            tx.append_audit(backup_draft.clone())?;
            Ok(record)
        })?;
        new_master.keep();
        Ok(record)
    }

    /// Activates a generation and makes it current: new devices and refreshes use it.
    pub fn activate_generation(
        &mut self,
        generation: u32,
        reason: &str,
    ) -> Result<GenerationRecord, Error> {
        self.require_derived("activate generation")?;
        if !self
            .module
            .get()?
            .masters()?
            .contains(&Generation(generation))
        {
            return Err(crate::error::ModuleError::NoMaster(generation).into());
        }
        let change = self.change(reason);
        let draft = self.draft(
            "generation.activate",
            Some(generation),
            vec![],
            serde_json::json!({"current": true}),
        );
        let record = transact(self.store.as_mut(), |tx| {
            let mut record = generation_record(tx, generation)?;
            if record.state != State::Active {
                record.state = gen_transition(&record, State::Active)?;
            }
            record.changed = change.clone();
            tx.update_generation(&record)?;
            let mut fleet = fleet_info(tx)?;
            let previous = fleet.current_generation.replace(generation);
            tx.put_fleet(&fleet)?;
            let mut d = draft.clone();
            d.details = serde_json::json!({"state": "active", "current": true, "previous_current": previous});
            tx.append_audit(d)?;
            Ok(record)
        })?;
        self.publish_if_governed(reason)?;
        Ok(record)
    }

    /// Rotation: creates generation g+1 and makes it current. Devices then migrate by refresh
    /// (`refresh_generation`); only after that is g deactivated and destroyed.
    pub fn rotate(
        &mut self,
        reason: &str,
        backup: &MasterBackup,
    ) -> Result<GenerationRecord, Error> {
        let record = self.create_generation(reason, backup)?;
        self.activate_generation(record.generation, reason)
    }

    /// Devices per generation and how many are not yet on the current one.
    pub fn rotation_status(&mut self) -> Result<RotationStatus, Error> {
        read_tx(self.store.as_mut(), |tx| {
            let fleet = fleet_info(tx)?;
            let mut generations = Vec::new();
            let mut pending = 0;
            for g in tx.generations()? {
                let devices = holding_devices(tx, g.generation)?;
                let current = fleet.current_generation == Some(g.generation);
                if !current {
                    pending += devices;
                }
                generations.push(GenerationCount {
                    generation: g.generation,
                    state: g.state,
                    current,
                    devices,
                });
            }
            Ok(RotationStatus {
                current: fleet.current_generation,
                generations,
                pending,
            })
        })
    }

    /// Active or suspended -> deactivated: no longer used for new keys. Refused for the current
    /// generation, and while devices still depend on it unless `force`.
    pub fn deactivate_generation(
        &mut self,
        generation: u32,
        reason: &str,
        force: bool,
    ) -> Result<GenerationRecord, Error> {
        self.require_derived("deactivate generation")?;
        self.retire(
            generation,
            State::Deactivated,
            "generation.deactivate",
            reason,
            force,
        )
    }

    /// Destroys a generation: its master is destroyed in the key module (zeroized). Refused while
    /// any device still depends on it, unless `force` (those devices' keys can then never be
    /// derived again).
    pub fn destroy_generation(
        &mut self,
        generation: u32,
        reason: &str,
        force: bool,
    ) -> Result<GenerationRecord, Error> {
        self.require_derived("destroy generation")?;
        let record = self.retire(
            generation,
            State::Destroyed,
            "generation.destroy",
            reason,
            force,
        )?;
        match self.module.get()?.destroy_master(Generation(generation)) {
            Ok(()) | Err(crate::error::ModuleError::NoMaster(_)) => {}
            Err(e) => return Err(e.into()),
        }
        self.publish_if_governed(reason)?;
        Ok(record)
    }

    /// Marks a generation compromised: devices on it must be migrated and the master destroyed.
    pub fn compromise_generation(
        &mut self,
        generation: u32,
        reason: &str,
    ) -> Result<GenerationRecord, Error> {
        self.require_derived("revoke generation")?;
        let record = self.retire(
            generation,
            State::Compromised,
            "generation.revoke",
            reason,
            true,
        )?;
        self.publish_if_governed(reason)?;
        Ok(record)
    }

    fn retire(
        &mut self,
        generation: u32,
        to: State,
        action: &str,
        reason: &str,
        force: bool,
    ) -> Result<GenerationRecord, Error> {
        let change = self.change(reason);
        let draft = self.draft(action, Some(generation), vec![], serde_json::json!({}));
        transact(self.store.as_mut(), |tx| {
            let fleet = fleet_info(tx)?;
            let mut record = generation_record(tx, generation)?;
            if fleet.current_generation == Some(generation) && to != State::Compromised {
                return Err(Error::CurrentGeneration(generation));
            }
            let dependants = holding_devices(tx, generation)?;
            if dependants > 0 && !force {
                return Err(Error::DependentDevices {
                    generation,
                    count: dependants,
                });
            }
            let from = record.state;
            // Destroying from active or suspended passes through deactivated; from compromised
            // it ends destroyed-compromised.
            let to = match (from, to) {
                (State::Compromised, State::Destroyed) => State::DestroyedCompromised,
                _ => to,
            };
            if matches!(to, State::Destroyed) && matches!(from, State::Active | State::Suspended) {
                record.state = gen_transition(&record, State::Deactivated)?;
            }
            record.state = gen_transition(&record, to)?;
            record.changed = change.clone();
            tx.update_generation(&record)?;
            let mut d = draft.clone();
            d.details = serde_json::json!({"from": from, "to": record.state, "reason": reason, "forced_devices": if force { dependants } else { 0 }});
            tx.append_audit(d)?;
            Ok(record)
        })
    }
}

fn holding_devices(tx: &mut dyn Tx, generation: u32) -> Result<u64, Error> {
    let mut n = 0;
    for state in State::ALL.into_iter().filter(|s| s.holds_key_material()) {
        n += tx.count_devices(&DeviceFilter {
            state: Some(state),
            generation: Some(generation),
            ..Default::default()
        })?;
    }
    Ok(n)
}

fn generation_record(tx: &mut dyn Tx, generation: u32) -> Result<GenerationRecord, Error> {
    tx.generation(generation)?
        .ok_or(Error::NoSuchGeneration(generation))
}

fn gen_transition(record: &GenerationRecord, to: State) -> Result<State, Error> {
    record
        .state
        .transition(to)
        .map_err(|source| Error::Transition {
            subject: format!("generation {}", record.generation),
            source,
        })
}
