//! `lifecycle run`: every due action in order, each one audited transaction (or the existing
//! operation's transactions), resuming rather than repeating after a crash:
//!
//! - a pre-active generation newer than the current one (a crash between create and activate,
//!   or a ceremony run ahead of time) is activated, never a further one created;
//! - a migration refreshes only the active devices still on the old generation, in batches
//!   ([`Fleet::refresh_all`]): a device refreshed by a killed run is on the new generation and
//!   is not picked again, and the key updates a killed run owed are sent again first;
//! - expiries move a watermark in the same transaction as their audit event;
//! - a destroy recorded but not finished in the key module is finished.
//!
//! The run holds the scheduler lease ([`super::lease`]) and renews it between batches and
//! actions; losing it stops the run after the batch in hand.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::due::{DueAction, DueItem, due};
use super::{META_GRANTS_EXPIRED, META_TOKENS_EXPIRED, lease, meta_i64};
use crate::backup::MasterBackup;
use crate::error::Error;
use crate::fleet::delivery::{Delivery, DeliveryKind, DeliveryReport, Output};
use crate::fleet::governance::AUTO_RECORD_VALIDITY;
use crate::fleet::policy::{Policy, Span};
use crate::fleet::{Fleet, Progress};
use crate::model::{DeviceFilter, UnixMillis};
use crate::store::transact;

/// How `lifecycle run` runs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Print the plan, change nothing.
    pub dry_run: bool,
    /// Also do what falls due up to this time (default: now).
    pub until: Option<UnixMillis>,
    /// At most this many devices per second in migrations.
    pub rate: Option<f64>,
    /// Who holds the lease while the run acts.
    pub holder: String,
    /// How long the lease lasts without a renewal (renewed between batches).
    pub lease_ttl: Span,
    /// The reason recorded with every change.
    pub reason: String,
}

/// One action done.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Done {
    /// What.
    pub action: DueAction,
    /// The generation concerned.
    pub generation: Option<u32>,
    /// Devices, grants, tokens or records concerned.
    pub count: u64,
    /// One line.
    pub message: String,
}

/// What a run did, or (dry run) would do.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunReport {
    /// Nothing was changed.
    pub dry_run: bool,
    /// Dry run: what is ready now.
    pub plan: Vec<DueItem>,
    /// What was done, in order.
    pub done: Vec<Done>,
    /// What is not due yet or blocked (with what a person must do).
    pub waiting: Vec<DueItem>,
    /// Another process holds the lease: this run did nothing.
    pub lease_held_by: Option<lease::Lease>,
    /// Key updates sent again and still owed.
    pub delivery: DeliveryReport,
}

impl Fleet {
    /// Performs every due action in order ([`super::due()`]), or with `dry_run` says what it would
    /// do. Migrations' key updates go to `out` (required when one is due: `--out`), at least
    /// once. Another process holding the lease makes it do nothing (`lease_held_by`).
    pub fn lifecycle_run(
        &mut self,
        options: &RunOptions,
        mut out: Option<&mut dyn Output>,
        progress: &dyn Progress,
    ) -> Result<RunReport, Error> {
        let now = self.access.clock.now_ms();
        if options.dry_run {
            let items = self.lifecycle_due(options.until)?;
            let (plan, waiting) = items.into_iter().partition(|i| i.ready);
            return Ok(RunReport {
                dry_run: true,
                plan,
                waiting: interesting(waiting),
                ..Default::default()
            });
        }
        let ttl = options.lease_ttl.as_ms();
        let taken = transact(self.store.as_mut(), |tx| {
            lease::take(tx, &options.holder, now, ttl)
        })?;
        if let Err(other) = taken {
            return Ok(RunReport {
                lease_held_by: Some(other),
                ..Default::default()
            });
        }
        let mut report = RunReport::default();
        let result = self.run_due(
            options,
            out.as_mut().map(|o| &mut **o as &mut dyn Output),
            progress,
            &mut report,
        );
        let finished = self.access.clock.now_ms();
        let last = lease::LastRun {
            holder: options.holder.clone(),
            started_at: now,
            finished_at: finished,
            actions: report.done.iter().map(|d| d.message.clone()).collect(),
            error: result.as_ref().err().map(ToString::to_string),
        };
        let recorded = transact(self.store.as_mut(), |tx| {
            // Only the holder records and releases: a run that lost its lease leaves both alone.
            if lease::read(tx)?.is_some_and(|l| l.holder == options.holder) {
                lease::put_last_run(tx, &last)?;
                lease::release(tx, &options.holder)?;
            }
            Ok(())
        });
        result?;
        recorded?;
        Ok(report)
    }

    fn renew_lease(&mut self, holder: &str, ttl_ms: i64) -> Result<(), Error> {
        let now = self.access.clock.now_ms();
        match transact(self.store.as_mut(), |tx| {
            lease::take(tx, holder, now, ttl_ms)
        })? {
            Ok(_) => Ok(()),
            Err(other) => Err(Error::LeaseLost {
                holder: other.holder,
            }),
        }
    }

    fn run_due(
        &mut self,
        options: &RunOptions,
        mut out: Option<&mut dyn Output>,
        progress: &dyn Progress,
        report: &mut RunReport,
    ) -> Result<(), Error> {
        let ttl = options.lease_ttl.as_ms();
        // Acting needs the key module (masters to create, destroy, derive): open it now, so what
        // is due is computed from the module's own list of masters.
        self.module()?;
        let mut done: HashSet<(DueAction, Option<u32>)> = HashSet::new();
        let started = Instant::now();
        let mut migrated = 0u64;
        // Each pass does one action and looks again; a handful of actions per generation.
        for _ in 0..256 {
            self.renew_lease(&options.holder, ttl)?;
            let now = self.access.clock.now_ms();
            let policy = self.policy()?;
            let facts = self.lifecycle_facts()?;
            let items = due(&policy, &facts, now, options.until.unwrap_or(now));
            let Some(item) = items
                .iter()
                .find(|i| i.ready && !done.contains(&(i.action, i.generation)))
                .cloned()
            else {
                report.waiting = interesting(items);
                return Ok(());
            };
            done.insert((item.action, item.generation));
            let needs_out = matches!(item.action, DueAction::Resend | DueAction::Migrate)
                || (matches!(item.action, DueAction::Activate | DueAction::Rotate)
                    && item.count > 0);
            if needs_out && out.is_none() {
                return Err(Error::invalid(
                    "--out",
                    format_args!(
                        "{}: the key updates need a destination (a file, appended and synced); nothing was changed for it",
                        item.message
                    ),
                ));
            }
            let reason = options.reason.as_str();
            let count = match item.action {
                DueAction::Resend => {
                    let Some(o) = out.as_mut().map(|o| &mut **o as &mut dyn Output) else {
                        continue;
                    };
                    let mut delivery = Delivery::new(DeliveryKind::KeyUpdate, o);
                    delivery.resend_pending(self, progress)?;
                    let r = delivery.finish(self)?;
                    report.delivery.resent += r.resent;
                    report.delivery.dropped += r.dropped;
                    r.resent
                }
                DueAction::Activate => {
                    let g = item.generation.unwrap_or_default();
                    self.activate_generation(g, reason)?;
                    1
                }
                DueAction::Rotate => {
                    let record = self.create_generation(reason, &MasterBackup::NoBackup)?;
                    self.activate_generation(record.generation, reason)?;
                    1
                }
                DueAction::Migrate => {
                    let Some(o) = out.as_mut().map(|o| &mut **o as &mut dyn Output) else {
                        continue;
                    };
                    let filter = DeviceFilter {
                        generation: item.generation,
                        ..Default::default()
                    };
                    let holder = options.holder.clone();
                    let rate = options.rate;
                    let before = migrated;
                    let r =
                        self.refresh_all_with(&filter, reason, o, progress, &mut |fleet, n| {
                            if let Some(rate) = rate.filter(|r| *r > 0.0) {
                                let target = Duration::from_secs_f64((before + n) as f64 / rate);
                                if let Some(wait) = target.checked_sub(started.elapsed()) {
                                    std::thread::sleep(wait);
                                }
                            }
                            fleet.renew_lease(&holder, ttl)
                        })?;
                    migrated += r.devices;
                    report.delivery.resent += r.delivery.resent;
                    report.delivery.dropped += r.delivery.dropped;
                    report.delivery.unconfirmed_batches = r.delivery.unconfirmed_batches;
                    r.devices
                }
                DueAction::Deactivate => {
                    let g = item.generation.unwrap_or_default();
                    self.deactivate_generation(g, reason, false)?;
                    1
                }
                DueAction::Destroy => {
                    let g = item.generation.unwrap_or_default();
                    let state =
                        transact(self.store.as_mut(), |tx| Ok(tx.generation(g)?))?.map(|r| r.state);
                    if state.is_some_and(|s| !s.holds_key_material()) {
                        // Recorded by an interrupted run: finish it in the module.
                        match self.module()?.destroy_master(fleetkey_core::Generation(g)) {
                            Ok(()) | Err(crate::error::ModuleError::NoMaster(_)) => {}
                            Err(e) => return Err(e.into()),
                        }
                        self.publish_if_governed(reason)?;
                    } else {
                        self.destroy_generation(g, reason, false)?;
                    }
                    1
                }
                DueAction::Publish => {
                    self.publish_generation_record(reason, AUTO_RECORD_VALIDITY)?;
                    1
                }
                DueAction::ExpireGrants => self.record_expiry(
                    "grant.expire",
                    META_GRANTS_EXPIRED,
                    facts.grants_expired_through,
                    &item,
                    now,
                )?,
                DueAction::ExpireTokens => self.record_expiry(
                    "token.expire",
                    META_TOKENS_EXPIRED,
                    facts.tokens_expired_through,
                    &item,
                    now,
                )?,
                DueAction::PurgeIdempotency => self.purge_idempotency(&policy, now)?,
                DueAction::Ceremony | DueAction::StaleDevices | DueAction::Notice => continue,
            };
            if count > 0 || !matches!(item.action, DueAction::PurgeIdempotency | DueAction::Resend)
            {
                report.done.push(Done {
                    action: item.action,
                    generation: item.generation,
                    count,
                    message: done_message(&item, count),
                });
            }
        }
        Err(Error::LifecycleRunaway)
    }

    /// Records the expiry of the grants or tokens an item names (audit `action`) and moves the
    /// watermark to `now`, in one transaction; nothing if another run did it meanwhile.
    fn record_expiry(
        &mut self,
        action: &str,
        key: &str,
        seen: UnixMillis,
        item: &DueItem,
        now: UnixMillis,
    ) -> Result<u64, Error> {
        let field = if action.starts_with("grant") {
            "grants"
        } else {
            "tokens"
        };
        let draft = self.draft(
            action,
            None,
            vec![],
            serde_json::json!({field: item.ids, "count": item.ids.len(), "through": now}),
        );
        transact(self.store.as_mut(), |tx| {
            if meta_i64(tx, key)? != seen {
                return Ok(0);
            }
            tx.put_meta(key, &now.to_string())?;
            tx.append_audit(draft.clone())?;
            Ok(item.ids.len() as u64)
        })
    }

    /// Removes idempotency records older than the retention (audit `idempotency.purge` when
    /// there were any).
    fn purge_idempotency(&mut self, policy: &Policy, now: UnixMillis) -> Result<u64, Error> {
        let before = now.saturating_sub(policy.idempotency_retention.as_ms());
        let mut draft = self.draft("idempotency.purge", None, vec![], serde_json::json!({}));
        transact(self.store.as_mut(), |tx| {
            let n = tx.purge_idempotency(before)?;
            if n > 0 {
                draft.details = serde_json::json!({"count": n, "created_before": before});
                tx.append_audit(draft.clone())?;
            }
            Ok(n)
        })
    }
}

/// The items worth showing as waiting: not the routine purge.
fn interesting(items: Vec<DueItem>) -> Vec<DueItem> {
    items
        .into_iter()
        .filter(|i| !i.ready && i.action != DueAction::PurgeIdempotency)
        .collect()
}

fn done_message(item: &DueItem, count: u64) -> String {
    let g = item.generation.unwrap_or_default();
    match item.action {
        DueAction::Resend => format!("sent again {count} owed key update lines"),
        DueAction::Activate => format!("activated generation {g}"),
        DueAction::Rotate => format!("created and activated generation {g}"),
        DueAction::Migrate => format!("migrated {count} devices from generation {g}"),
        DueAction::Deactivate => format!("deactivated generation {g}"),
        DueAction::Destroy => format!("destroyed generation {g}"),
        DueAction::Publish => format!("published a generation record (current {g})"),
        DueAction::ExpireGrants => format!("recorded {count} expired grants"),
        DueAction::ExpireTokens => format!("recorded {count} expired tokens"),
        DueAction::PurgeIdempotency => format!("purged {count} idempotency records"),
        DueAction::Ceremony | DueAction::StaleDevices | DueAction::Notice => item.message.clone(),
    }
}
