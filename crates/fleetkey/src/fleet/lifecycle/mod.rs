//! The policy-driven lifecycle: what is due ([`due()`]), carrying it out ([`Fleet::lifecycle_run`]),
//! the lease that lets exactly one scheduler act ([`lease`]), and time as an input
//! ([`OffsetClock`]).
//!
//! What is due is a pure function of (policy, facts about the fleet, now); the facts are read
//! from the store and the audit record, and time comes from the fleet's `Clock`, so tests run
//! years of fleet life in seconds.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use super::{Clock, Fleet, SystemClock, fleet_info};
use crate::audit::AuditFilter;
use crate::error::Error;
use crate::lifecycle::State;
use crate::model::{DeviceFilter, DeviceSerial, Scheme, UnixMillis};
use crate::store::{Tx, read_tx};

pub mod due;
pub mod lease;
mod run;

pub use due::{DueAction, DueItem, Facts, GenerationFacts, RecordFacts, due};
pub use lease::{LastRun, Lease};
pub use run::{Done, RunOptions, RunReport};

/// The environment variable that shifts the clock of the `fleetkey` command and service, in
/// milliseconds (may be negative). **For tests only**: it lets a test cross a rotation date
/// without waiting a year. Every change made under it is stamped with the shifted time.
pub const TEST_CLOCK_ENV: &str = "FLEETKEY_CLOCK_OFFSET_MS";

/// The system clock shifted by a fixed offset (tests: [`TEST_CLOCK_ENV`]).
#[derive(Debug, Clone, Copy)]
pub struct OffsetClock {
    /// Milliseconds added to the system clock.
    pub offset_ms: i64,
}

impl Clock for OffsetClock {
    fn now_ms(&self) -> UnixMillis {
        SystemClock.now_ms().saturating_add(self.offset_ms)
    }
}

/// The system clock, or the shifted one when [`TEST_CLOCK_ENV`] is set; an offset that is not
/// an integer is bad input, named.
pub fn clock_from_env() -> Result<Arc<dyn Clock>, Error> {
    match std::env::var(TEST_CLOCK_ENV) {
        Err(_) => Ok(Arc::new(SystemClock)),
        Ok(text) => {
            let offset_ms = text.trim().parse::<i64>().map_err(|_| {
                Error::invalid(
                    TEST_CLOCK_ENV,
                    "an integer number of milliseconds (for tests only)",
                )
            })?;
            Ok(Arc::new(OffsetClock { offset_ms }))
        }
    }
}

/// The store meta key of the grant expiry watermark.
pub(crate) const META_GRANTS_EXPIRED: &str = "lifecycle.grants_expired_through";
/// The store meta key of the token expiry watermark.
pub(crate) const META_TOKENS_EXPIRED: &str = "lifecycle.tokens_expired_through";

pub(crate) fn meta_i64(tx: &mut dyn Tx, key: &str) -> Result<i64, Error> {
    match tx.meta(key)? {
        None => Ok(0),
        Some(t) => t
            .parse()
            .map_err(|_| crate::error::StoreError::Corrupt(format!("{key}: not a number")).into()),
    }
}

/// The scheduler's state as the store has it: the lease and the last run.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SchedulerState {
    /// The lease, if one was ever taken.
    pub lease: Option<Lease>,
    /// Whether it is held now (not expired, not released).
    pub held: bool,
    /// The last run, whoever ran it.
    pub last_run: Option<LastRun>,
}

impl Fleet {
    /// The lease and the last run of the scheduler.
    pub fn scheduler_state(&mut self) -> Result<SchedulerState, Error> {
        let now = self.access.clock.now_ms();
        read_tx(self.store.as_mut(), |tx| {
            let lease = lease::read(tx)?;
            Ok(SchedulerState {
                held: lease.as_ref().is_some_and(|l| l.until > now),
                lease,
                last_run: lease::last_run(tx)?,
            })
        })
    }

    /// What is due now, or by `horizon` (`--until`): see [`due()`].
    pub fn lifecycle_due(&mut self, horizon: Option<UnixMillis>) -> Result<Vec<DueItem>, Error> {
        let policy = self.policy()?;
        let facts = self.lifecycle_facts()?;
        let now = self.access.clock.now_ms();
        Ok(due(&policy, &facts, now, horizon.unwrap_or(now)))
    }

    /// The last `action` event per generation: (time, details).
    fn last_events(
        &mut self,
        action: &str,
    ) -> Result<HashMap<u32, (UnixMillis, serde_json::Value)>, Error> {
        let filter = AuditFilter {
            action: Some(action.into()),
            ..Default::default()
        };
        let mut out = HashMap::new();
        let mut after = 0;
        loop {
            let page = self.audit_show(&filter, after, 1000)?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for e in page {
                if e.draft.action == action
                    && let Some(g) = e.draft.generation
                {
                    out.insert(g, (e.draft.at, e.draft.details));
                }
            }
        }
        Ok(out)
    }

    /// What the policy looks at: generations (with activation times, device counts, masters
    /// and backups), grants, tokens, the newest record, owed deliveries, stale devices.
    pub fn lifecycle_facts(&mut self) -> Result<Facts, Error> {
        let policy = self.policy()?;
        let now = self.access.clock.now_ms();
        let scheme = self.config.scheme;
        // The module is asked only when it is open already (a run opens it first): a command that
        // only reads what is due needs no passphrase, and takes a generation's master to be there
        // while its state holds key material.
        let masters = if scheme.derives_from_master() && self.module.is_open() {
            Some(self.module.get()?.masters()?)
        } else {
            None
        };
        let activations = self.last_events("generation.activate")?;
        let backups = self.last_events(super::ceremony::BACKUP_ACTION)?;
        let mut facts = read_tx(self.store.as_mut(), |tx| {
            let fleet = fleet_info(tx)?;
            let mut generations = Vec::new();
            for g in tx.generations()? {
                let mut active = 0;
                let mut holding = 0;
                for state in State::ALL.into_iter().filter(|s| s.holds_key_material()) {
                    let n = tx.count_devices(&DeviceFilter {
                        state: Some(state),
                        generation: Some(g.generation),
                        ..Default::default()
                    })?;
                    holding += n;
                    if state == State::Active {
                        active = n;
                    }
                }
                let backup = backups.get(&g.generation).map(|(_, d)| d);
                generations.push(GenerationFacts {
                    generation: g.generation,
                    state: g.state,
                    activated_at: activations.get(&g.generation).map(|(at, _)| *at),
                    changed_at: g.changed.at,
                    active_devices: active,
                    holding_devices: holding,
                    has_master: masters
                        .as_ref()
                        .map_or(g.state.holds_key_material(), |m| m.contains(&g.core())),
                    backup: backup
                        .and_then(|d| d.get("method"))
                        .and_then(|m| m.as_str())
                        .map(str::to_owned),
                    custodians: backup
                        .and_then(|d| d.get("custodians"))
                        .and_then(|c| c.as_array())
                        .map(|c| {
                            c.iter()
                                .filter_map(|x| x.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default(),
                    threshold: backup
                        .and_then(|d| d.get("threshold"))
                        .and_then(serde_json::Value::as_u64),
                });
            }
            let tokens = tx
                .tokens()?
                .into_iter()
                .filter(|t| t.revoked_at.is_none())
                .filter_map(|t| t.expires_at.map(|e| (t.id, e)))
                .collect();
            Ok(Facts {
                scheme: Some(fleet.scheme),
                current: fleet.current_generation,
                generations,
                grants: vec![],
                grants_expired_through: meta_i64(tx, META_GRANTS_EXPIRED)?,
                tokens,
                tokens_expired_through: meta_i64(tx, META_TOKENS_EXPIRED)?,
                record: None,
                owed_update_batches: tx.count_deliveries(super::DeliveryKind::KeyUpdate.name())?,
                stale_devices: 0,
            })
        })?;
        if scheme == Scheme::Governed {
            facts.grants = self
                .grants()?
                .into_iter()
                .map(|g| {
                    let end = i64::try_from(g.not_after).unwrap_or(i64::MAX / 1000) * 1000;
                    (g.id, end, g.denied)
                })
                .collect();
            let filter = AuditFilter {
                action: Some("governance.publish".into()),
                ..Default::default()
            };
            let mut after = 0;
            loop {
                let page = self.audit_show(&filter, after, 1000)?;
                let Some(last) = page.last() else { break };
                after = last.seq;
                if let Some(e) = page
                    .iter()
                    .rev()
                    .find(|e| e.draft.action == "governance.publish")
                {
                    let d = &e.draft.details;
                    let number =
                        |v: &serde_json::Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
                    facts.record = Some(RecordFacts {
                        current: d.get("current").and_then(number).unwrap_or(0),
                        accepted: d
                            .get("accepted")
                            .and_then(|a| a.as_array())
                            .map(|a| a.iter().filter_map(number).collect())
                            .unwrap_or_default(),
                        not_after: d
                            .get("not_after")
                            .and_then(serde_json::Value::as_i64)
                            .map_or(0, |s| s.saturating_mul(1000)),
                    });
                }
            }
        }
        if let Some(max_age) = policy.device_max_age {
            let cut = now.saturating_sub(max_age.as_ms());
            let filter = DeviceFilter {
                state: Some(State::Active),
                ..Default::default()
            };
            let mut after: Option<DeviceSerial> = None;
            loop {
                let page = read_tx(self.store.as_mut(), |tx| {
                    Ok(tx.devices(&filter, after.as_ref(), 10_000)?)
                })?;
                let Some(last) = page.last() else { break };
                after = Some(last.serial.clone());
                facts.stale_devices += page.iter().filter(|d| d.changed.at < cut).count() as u64;
            }
        }
        Ok(facts)
    }
}
