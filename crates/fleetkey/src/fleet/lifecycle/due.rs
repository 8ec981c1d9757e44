//! What the policy requires next: a pure function of (policy, facts about the fleet, now).
//! `fleetkey rotation status`, `fleetkey policy due`, `fleetkey lifecycle run` and the service's
//! scheduler all call [`due`].

use serde::Serialize;

use crate::fleet::policy::{Policy, Span};
use crate::lifecycle::State;
use crate::model::{Scheme, UnixMillis};

/// A generation record is renewed this long before it expires.
pub const RECORD_RENEW_BEFORE: Span = Span::days(30);
/// Grants and tokens expiring within this much are announced.
pub const NOTICE_AHEAD: Span = Span::days(7);

const DAY_MS: i64 = 86_400_000;

/// What the fleet looks like to the policy (read by [`crate::fleet::Fleet::lifecycle_facts`]).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Facts {
    /// The scheme.
    pub scheme: Option<Scheme>,
    /// The current generation.
    pub current: Option<u32>,
    /// Every generation, ascending.
    pub generations: Vec<GenerationFacts>,
    /// Issued grants: id, end of validity (ms), denied.
    pub grants: Vec<(u64, UnixMillis, bool)>,
    /// Grants ending at or before this were recorded expired (`grant.expire`).
    pub grants_expired_through: UnixMillis,
    /// Tokens not revoked that have an expiry: id, expiry (ms).
    pub tokens: Vec<(String, UnixMillis)>,
    /// Tokens expiring at or before this were recorded expired (`token.expire`).
    pub tokens_expired_through: UnixMillis,
    /// The newest generation record (governed scheme).
    pub record: Option<RecordFacts>,
    /// Batches of key updates the delivery journal still owes a caller.
    pub owed_update_batches: u64,
    /// Active devices whose last change is older than the policy's `device_max_age`.
    pub stale_devices: u64,
}

/// One generation as the policy sees it.
#[derive(Clone, Debug, Serialize)]
pub struct GenerationFacts {
    /// The generation.
    pub generation: u32,
    /// Its state.
    pub state: State,
    /// When it was last activated (audit `generation.activate`).
    pub activated_at: Option<UnixMillis>,
    /// Its last transition.
    pub changed_at: UnixMillis,
    /// Active devices on it.
    pub active_devices: u64,
    /// Devices holding key material on it (any state but destroyed).
    pub holding_devices: u64,
    /// Whether the key module still holds its master.
    pub has_master: bool,
    /// How its master was backed up: `none`, `shares`, or nothing recorded.
    pub backup: Option<String>,
    /// The custodians and threshold of a shares backup (to name the ceremony command).
    pub custodians: Vec<String>,
    /// The threshold of a shares backup.
    pub threshold: Option<u64>,
}

/// The newest generation record's content.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RecordFacts {
    /// The current generation it names.
    pub current: u32,
    /// The still-accepted generations it names.
    pub accepted: Vec<u32>,
    /// End of its validity (ms).
    pub not_after: UnixMillis,
}

/// What is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DueAction {
    /// Send again the key updates an interrupted run owes.
    Resend,
    /// Activate a pre-active newer generation (one a ceremony or an interrupted run created).
    Activate,
    /// Create and activate the next generation (no backup ceremony needed).
    Rotate,
    /// The rotation needs the master backup ceremony: a person runs the command named.
    Ceremony,
    /// Refresh the active devices still on an older generation onto the current one.
    Migrate,
    /// Deactivate a superseded generation whose acceptance period ended.
    Deactivate,
    /// Destroy a deactivated generation's master once it has been kept long enough.
    Destroy,
    /// Publish a generation record (governed scheme): none yet, out of date, or expiring.
    Publish,
    /// Record grants that expired (`grant.expire`).
    ExpireGrants,
    /// Record tokens that expired (`token.expire`).
    ExpireTokens,
    /// Remove idempotency records older than the retention.
    PurgeIdempotency,
    /// Devices whose keys are older than `device_max_age`.
    StaleDevices,
    /// Information only: grants or tokens expiring soon.
    Notice,
}

impl DueAction {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            DueAction::Resend => "resend",
            DueAction::Activate => "activate",
            DueAction::Rotate => "rotate",
            DueAction::Ceremony => "ceremony",
            DueAction::Migrate => "migrate",
            DueAction::Deactivate => "deactivate",
            DueAction::Destroy => "destroy",
            DueAction::Publish => "publish",
            DueAction::ExpireGrants => "expire-grants",
            DueAction::ExpireTokens => "expire-tokens",
            DueAction::PurgeIdempotency => "purge-idempotency",
            DueAction::StaleDevices => "stale-devices",
            DueAction::Notice => "notice",
        }
    }
}

/// One thing the policy requires, with when.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct DueItem {
    /// What.
    pub action: DueAction,
    /// The generation concerned.
    pub generation: Option<u32>,
    /// Devices, grants, tokens or batches concerned.
    pub count: u64,
    /// When it is (or was) due.
    pub due_at: UnixMillis,
    /// The deadline the policy sets, if later than `due_at` (end of the acceptance period).
    pub deadline: Option<UnixMillis>,
    /// Past its deadline (or its due time, when it has no later deadline) and not done.
    pub overdue: bool,
    /// `lifecycle run` acts on it now (due by the horizon and not blocked).
    pub ready: bool,
    /// Why it cannot be done automatically.
    pub blocked: Option<String>,
    /// The command a person runs, when it needs one.
    pub command: Option<String>,
    /// One line for people.
    pub message: String,
    /// The grant or token ids it concerns.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
}

/// "in 12 days", "3 days ago", "now".
pub fn relative(at: UnixMillis, now: UnixMillis) -> String {
    let delta = at - now;
    let abs = delta.unsigned_abs();
    let text = if abs >= 2 * DAY_MS as u64 {
        format!("{} days", abs / DAY_MS as u64)
    } else if abs >= 2 * 3_600_000 {
        format!("{} hours", abs / 3_600_000)
    } else if abs >= 2 * 60_000 {
        format!("{} minutes", abs / 60_000)
    } else {
        return "now".into();
    };
    if delta > 0 {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

/// Everything due or coming, in the order `lifecycle run` does it. An item is `ready` when due
/// at or before `horizon` (now, or `--until`) and not blocked; expiries and purges use `now`.
pub fn due(policy: &Policy, facts: &Facts, now: UnixMillis, horizon: UnixMillis) -> Vec<DueItem> {
    let horizon = horizon.max(now);
    let mut items = Vec::new();
    let mut push = |action: DueAction,
                    generation: Option<u32>,
                    count: u64,
                    due_at: UnixMillis,
                    deadline: Option<UnixMillis>,
                    blocked: Option<String>,
                    command: Option<String>,
                    message: String,
                    ids: Vec<String>,
                    until: UnixMillis| {
        let overdue = now > deadline.unwrap_or(due_at) && !matches!(action, DueAction::Notice);
        items.push(DueItem {
            action,
            generation,
            count,
            due_at,
            deadline,
            overdue,
            ready: due_at <= until && blocked.is_none() && action != DueAction::Notice,
            blocked,
            command,
            message,
            ids,
        });
    };
    if facts.owed_update_batches > 0 {
        push(
            DueAction::Resend,
            None,
            facts.owed_update_batches,
            now,
            None,
            None,
            None,
            format!(
                "{} batches of key updates of an interrupted run are owed: sent again first",
                facts.owed_update_batches
            ),
            vec![],
            now,
        );
    }
    let find = |g: u32| facts.generations.iter().find(|x| x.generation == g);
    // When `g` stopped being current: the first later generation's activation.
    let superseded_at = |g: u32| {
        facts
            .generations
            .iter()
            .filter(|x| x.generation > g)
            .filter_map(|x| x.activated_at)
            .min()
    };
    if let Some(current) = facts.current.and_then(find) {
        let since = current.activated_at.unwrap_or(current.changed_at);
        let due_at = since.saturating_add(policy.rotation_period.as_ms());
        let pending = facts
            .generations
            .iter()
            .find(|x| x.generation > current.generation && x.state == State::PreActive);
        let migrating: u64 = facts
            .generations
            .iter()
            .filter(|x| x.generation <= current.generation)
            .map(|x| x.active_devices)
            .sum();
        let g = current.generation;
        let when = relative(due_at, now);
        if let Some(p) = pending {
            push(
                DueAction::Activate,
                Some(p.generation),
                migrating,
                due_at,
                None,
                (!p.has_master).then(|| {
                    format!(
                        "generation {} has no master in the key module",
                        p.generation
                    )
                }),
                None,
                format!(
                    "generation {g} due for rotation {when}: generation {} (pre-active) is activated, then {migrating} devices migrate",
                    p.generation
                ),
                vec![],
                horizon,
            );
        } else if current.backup.as_deref() == Some("shares") {
            let mut command = String::from(
                "fleetkey generation create --reason 'scheduled rotation' --shares-dir DIR",
            );
            for c in &current.custodians {
                command.push_str(&format!(" --custodian {c}"));
            }
            if let Some(t) = current.threshold {
                command.push_str(&format!(" --threshold {t}"));
            }
            push(
                DueAction::Ceremony,
                Some(g + 1),
                migrating,
                due_at,
                None,
                Some(format!(
                    "generation {g}'s master was backed up in custodian shares: the next one needs the ceremony (the custodians present); lifecycle run activates it on time"
                )),
                Some(command),
                format!(
                    "generation {g} due for rotation {when}: run the backup ceremony to create generation {}",
                    g + 1
                ),
                vec![],
                horizon,
            );
        } else {
            push(
                DueAction::Rotate,
                Some(g + 1),
                migrating,
                due_at,
                None,
                None,
                None,
                format!(
                    "generation {g} due for rotation {when}: generation {} is created and activated, then {migrating} devices migrate",
                    g + 1
                ),
                vec![],
                horizon,
            );
        }
    }
    let acceptance = policy.acceptance_period.as_ms();
    for g in &facts.generations {
        let Some(current) = facts.current else { break };
        if g.generation >= current {
            continue;
        }
        let superseded = superseded_at(g.generation).unwrap_or(g.changed_at);
        let end = superseded.saturating_add(acceptance);
        if g.active_devices > 0 {
            push(
                DueAction::Migrate,
                Some(g.generation),
                g.active_devices,
                superseded,
                Some(end),
                None,
                None,
                format!(
                    "{} devices still on generation {}, whose acceptance period ends {}",
                    g.active_devices,
                    g.generation,
                    relative(end, now)
                ),
                vec![],
                horizon,
            );
        }
        if matches!(g.state, State::Active | State::Suspended) {
            let blocked = (g.holding_devices > 0).then(|| {
                format!(
                    "{} devices still hold generation {} (active ones migrate first; resume or decommission suspended ones)",
                    g.holding_devices, g.generation
                )
            });
            push(
                DueAction::Deactivate,
                Some(g.generation),
                g.holding_devices,
                end,
                None,
                blocked,
                None,
                format!(
                    "generation {} stops being used {}: deactivate",
                    g.generation,
                    relative(end, now)
                ),
                vec![],
                horizon,
            );
        }
    }
    for g in &facts.generations {
        if g.state == State::Deactivated {
            let due_at = g.changed_at.saturating_add(policy.destroy_after.as_ms());
            push(
                DueAction::Destroy,
                Some(g.generation),
                g.holding_devices,
                due_at,
                None,
                (g.holding_devices > 0).then(|| {
                    format!(
                        "{} devices still depend on generation {}",
                        g.holding_devices, g.generation
                    )
                }),
                None,
                format!(
                    "generation {} deactivated {}: destroy due {}",
                    g.generation,
                    relative(g.changed_at, now),
                    relative(due_at, now)
                ),
                vec![],
                horizon,
            );
        }
        if matches!(g.state, State::Destroyed | State::DestroyedCompromised) && g.has_master {
            // An interrupted destroy: recorded, but the module still holds the master.
            push(
                DueAction::Destroy,
                Some(g.generation),
                0,
                g.changed_at,
                None,
                None,
                None,
                format!(
                    "generation {} is destroyed but its master is still in the key module: destroyed now",
                    g.generation
                ),
                vec![],
                now,
            );
        }
    }
    if facts.scheme == Some(Scheme::Governed)
        && let Some(current) = facts.current
        && facts
            .generations
            .iter()
            .any(|g| g.generation == current && g.state == State::Active)
    {
        let accepted: Vec<u32> = facts
            .generations
            .iter()
            .filter(|g| {
                g.generation != current
                    && matches!(
                        g.state,
                        State::Active | State::Suspended | State::Deactivated
                    )
            })
            .map(|g| g.generation)
            .collect();
        let (due_at, why) = match &facts.record {
            None => (now, "no generation record has been published".to_owned()),
            Some(r) if r.current != current || r.accepted != accepted => (
                now,
                format!(
                    "the newest generation record (current {}) does not match the fleet (current {current})",
                    r.current
                ),
            ),
            Some(r) => (
                r.not_after.saturating_sub(RECORD_RENEW_BEFORE.as_ms()),
                format!(
                    "the generation record expires {}",
                    relative(r.not_after, now)
                ),
            ),
        };
        push(
            DueAction::Publish,
            Some(current),
            1,
            due_at,
            facts.record.as_ref().map(|r| r.not_after),
            None,
            None,
            format!("{why}: publish a new one"),
            vec![],
            horizon,
        );
    }
    // Grants and tokens: expired ones are recorded; those ending within a week announced.
    let ahead = now.saturating_add(NOTICE_AHEAD.as_ms());
    let grants_expired: Vec<&(u64, UnixMillis, bool)> = facts
        .grants
        .iter()
        .filter(|g| g.1 > facts.grants_expired_through && g.1 <= now)
        .collect();
    if let Some(first) = grants_expired.iter().map(|g| g.1).min() {
        push(
            DueAction::ExpireGrants,
            None,
            grants_expired.len() as u64,
            first,
            None,
            None,
            None,
            format!("{} grants expired: recorded", grants_expired.len()),
            grants_expired.iter().map(|g| g.0.to_string()).collect(),
            now,
        );
    }
    let grants_soon: Vec<&(u64, UnixMillis, bool)> = facts
        .grants
        .iter()
        .filter(|g| g.1 > now && g.1 <= ahead && !g.2)
        .collect();
    if let Some(first) = grants_soon.iter().map(|g| g.1).min() {
        push(
            DueAction::Notice,
            None,
            grants_soon.len() as u64,
            first,
            None,
            None,
            None,
            format!(
                "{} grants expire this week (the first {})",
                grants_soon.len(),
                relative(first, now)
            ),
            grants_soon.iter().map(|g| g.0.to_string()).collect(),
            now,
        );
    }
    let tokens_expired: Vec<&(String, UnixMillis)> = facts
        .tokens
        .iter()
        .filter(|t| t.1 > facts.tokens_expired_through && t.1 <= now)
        .collect();
    if let Some(first) = tokens_expired.iter().map(|t| t.1).min() {
        push(
            DueAction::ExpireTokens,
            None,
            tokens_expired.len() as u64,
            first,
            None,
            None,
            None,
            format!("{} tokens expired: recorded", tokens_expired.len()),
            tokens_expired.iter().map(|t| t.0.clone()).collect(),
            now,
        );
    }
    let tokens_soon: Vec<&(String, UnixMillis)> = facts
        .tokens
        .iter()
        .filter(|t| t.1 > now && t.1 <= ahead)
        .collect();
    if let Some(first) = tokens_soon.iter().map(|t| t.1).min() {
        push(
            DueAction::Notice,
            None,
            tokens_soon.len() as u64,
            first,
            None,
            None,
            None,
            format!(
                "{} tokens expire this week (the first {})",
                tokens_soon.len(),
                relative(first, now)
            ),
            tokens_soon.iter().map(|t| t.0.clone()).collect(),
            now,
        );
    }
    if let Some(max_age) = policy.device_max_age
        && facts.stale_devices > 0
    {
        push(
            DueAction::StaleDevices,
            None,
            facts.stale_devices,
            now,
            None,
            Some("lifecycle run does not refresh devices by age: refresh them".into()),
            Some("fleetkey device refresh SERIAL --reason 'key age'".into()),
            format!(
                "{} active devices have not been refreshed for more than {max_age}",
                facts.stale_devices
            ),
            vec![],
            now,
        );
    }
    push(
        DueAction::PurgeIdempotency,
        None,
        0,
        now,
        None,
        None,
        None,
        format!(
            "idempotency records older than {} are purged (routine)",
            policy.idempotency_retention
        ),
        vec![],
        now,
    );
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generation(generation: u32, state: State, activated_at: Option<i64>) -> GenerationFacts {
        GenerationFacts {
            generation,
            state,
            activated_at,
            changed_at: activated_at.unwrap_or(0),
            active_devices: 0,
            holding_devices: 0,
            has_master: true,
            backup: Some("none".into()),
            custodians: vec![],
            threshold: None,
        }
    }

    #[test]
    fn rotation_is_due_after_the_rotation_period() {
        let policy = Policy::default();
        let facts = Facts {
            scheme: Some(Scheme::Derived),
            current: Some(1),
            generations: vec![generation(1, State::Active, Some(0))],
            ..Default::default()
        };
        let year = Span::days(365).as_ms();
        let items = due(&policy, &facts, year - DAY_MS * 12, year - DAY_MS * 12);
        let rotate = items
            .iter()
            .find(|i| i.action == DueAction::Rotate)
            .unwrap();
        assert!(!rotate.ready && !rotate.overdue);
        assert!(rotate.message.contains("in 12 days"), "{}", rotate.message);
        let items = due(&policy, &facts, year - DAY_MS * 12, year);
        assert!(
            items
                .iter()
                .any(|i| i.action == DueAction::Rotate && i.ready)
        );
        let items = due(&policy, &facts, year + DAY_MS, year + DAY_MS);
        assert!(
            items
                .iter()
                .any(|i| i.action == DueAction::Rotate && i.overdue)
        );
    }

    #[test]
    fn shares_need_the_ceremony_and_a_pre_active_generation_is_activated() {
        let policy = Policy::default();
        let mut g1 = generation(1, State::Active, Some(0));
        g1.backup = Some("shares".into());
        g1.custodians = vec!["alice".into(), "bob".into()];
        g1.threshold = Some(2);
        let mut facts = Facts {
            scheme: Some(Scheme::Derived),
            current: Some(1),
            generations: vec![g1],
            ..Default::default()
        };
        let late = Span::days(400).as_ms();
        let items = due(&policy, &facts, late, late);
        let c = items
            .iter()
            .find(|i| i.action == DueAction::Ceremony)
            .unwrap();
        assert!(!c.ready && c.overdue && c.blocked.is_some());
        assert!(
            c.command
                .as_deref()
                .unwrap()
                .contains("--custodian alice --custodian bob --threshold 2")
        );
        facts
            .generations
            .push(generation(2, State::PreActive, None));
        let items = due(&policy, &facts, late, late);
        assert!(
            items
                .iter()
                .any(|i| i.action == DueAction::Activate && i.ready && i.generation == Some(2))
        );
        assert!(
            !items
                .iter()
                .any(|i| i.action == DueAction::Ceremony || i.action == DueAction::Rotate)
        );
    }

    #[test]
    fn migration_deactivation_and_destruction_follow_the_periods() {
        let policy = Policy::default();
        let year = Span::days(365).as_ms();
        let mut g1 = generation(1, State::Active, Some(0));
        g1.active_devices = 412;
        g1.holding_devices = 412;
        let facts = Facts {
            scheme: Some(Scheme::Derived),
            current: Some(2),
            generations: vec![g1, generation(2, State::Active, Some(year))],
            ..Default::default()
        };
        let now = year + Span::days(60).as_ms();
        let items = due(&policy, &facts, now, now);
        let m = items
            .iter()
            .find(|i| i.action == DueAction::Migrate)
            .unwrap();
        assert!(m.ready && !m.overdue);
        assert_eq!(
            m.message,
            "412 devices still on generation 1, whose acceptance period ends in 30 days"
        );
        let d = items
            .iter()
            .find(|i| i.action == DueAction::Deactivate)
            .unwrap();
        assert!(!d.ready);
        let mut facts = facts;
        facts.generations[0].state = State::Deactivated;
        facts.generations[0].active_devices = 0;
        facts.generations[0].holding_devices = 0;
        facts.generations[0].changed_at = now - Span::days(95).as_ms();
        let items = due(&policy, &facts, now, now);
        let d = items
            .iter()
            .find(|i| i.action == DueAction::Destroy)
            .unwrap();
        assert!(d.ready && d.overdue);
        assert!(
            d.message
                .starts_with("generation 1 deactivated 95 days ago: destroy due"),
            "{}",
            d.message
        );
    }
}
