//! `fleetkey policy show|set|due`: the fleet's lifecycle policy and what it requires next.

use fleetkey::fleet::lifecycle::DueItem;
use fleetkey::fleet::policy::{LIMITS, Policy};

use crate::cmd::ctx::Global;
use crate::error::CliError;

/// The lifecycle policy.
#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// The policy in force (the defaults until one is set), with each value's limits.
    #[command(after_help = "Example:\n  fleetkey policy show --json")]
    Show,
    /// Change values of the policy (audited as policy.set); a bad value changes nothing.
    #[command(after_help = "\
Durations are a whole number and a unit: s, m, h, d, w or y (365 days), e.g. 365d, 12h, 2y.
--device-max-age none removes that limit. docs/lifecycle.md explains each value and its limits.

Example:
  fleetkey policy set --rotation-period 180d --acceptance-period 30d --reason 'twice a year'")]
    Set(Box<SetArgs>),
    /// What the policy requires next, for each generation, the devices, grants and tokens.
    #[command(
        after_help = "Examples:\n  fleetkey policy due\n  fleetkey policy due --until 30d --json"
    )]
    Due {
        /// Also count as due what falls due by then: a duration from now (30d) or RFC 3339.
        #[arg(long)]
        until: Option<String>,
    },
}

/// `policy set` values (each optional; the others keep their value).
#[derive(clap::Args)]
pub(crate) struct SetArgs {
    /// How long a generation stays current (originator-usage period).
    #[arg(long, allow_hyphen_values = true)]
    rotation_period: Option<String>,
    /// How long the previous generation is still accepted once the next is current.
    #[arg(long, allow_hyphen_values = true)]
    acceptance_period: Option<String>,
    /// The longest an active device keeps its keys without a refresh, or `none`.
    #[arg(long, allow_hyphen_values = true)]
    device_max_age: Option<String>,
    /// How long a deactivated generation is kept before it is destroyed.
    #[arg(long, allow_hyphen_values = true)]
    destroy_after: Option<String>,
    /// The validity of a grant issued without --valid-days.
    #[arg(long, allow_hyphen_values = true)]
    grant_lifetime: Option<String>,
    /// The longest validity of a grant.
    #[arg(long, allow_hyphen_values = true)]
    grant_max_lifetime: Option<String>,
    /// The lifetime of a token issued without --expires.
    #[arg(long, allow_hyphen_values = true)]
    token_lifetime: Option<String>,
    /// The longest lifetime of a token.
    #[arg(long, allow_hyphen_values = true)]
    token_max_lifetime: Option<String>,
    /// How long idempotency records of the service are kept.
    #[arg(long, allow_hyphen_values = true)]
    idempotency_retention: Option<String>,
    /// Why (recorded in the audit event).
    #[arg(long)]
    reason: String,
}

/// A point in time from `--until`: a duration from now or an RFC 3339 time.
pub(crate) fn until(now: i64, text: Option<&str>) -> Result<Option<i64>, CliError> {
    let Some(text) = text else { return Ok(None) };
    if text.starts_with(|c: char| c.is_ascii_digit()) && !text.contains('-') {
        let span = fleetkey::fleet::policy::Span::parse("--until", text)?;
        return Ok(Some(now.saturating_add(span.as_ms())));
    }
    let ts: jiff::Timestamp = text.parse().map_err(|_| {
        CliError::input(
            "--until",
            "neither a duration (30d, 12h) nor an RFC 3339 time (2027-01-01T00:00:00Z)",
        )
    })?;
    Ok(Some(ts.as_millisecond()))
}

/// One due item in words.
pub(crate) fn item_text(i: &DueItem) -> String {
    let mark = if i.overdue {
        "OVERDUE "
    } else if i.ready {
        "due     "
    } else if i.blocked.is_some() {
        "blocked "
    } else {
        "        "
    };
    let mut out = format!("  {mark}{}", i.message);
    if let Some(b) = &i.blocked {
        out.push_str(&format!("\n            ({b})"));
    }
    if let Some(c) = &i.command {
        out.push_str(&format!("\n            run: {c}"));
    }
    out
}

pub(crate) fn run(global: &Global, command: Command) -> Result<(), CliError> {
    let mut fleet = global.open()?;
    match command {
        Command::Show => {
            let policy = fleet.policy()?;
            let set = fleet.policy_is_set()?;
            let value = serde_json::json!({"policy": policy, "defaults": !set,
                "limits": LIMITS.iter().map(|l| serde_json::json!({"field": l.field,
                    "min": l.min.to_string(), "max": l.max.to_string(), "why": l.why})).collect::<Vec<_>>()});
            global.print(&value, |_| show_text(&policy, set))
        }
        Command::Set(a) => {
            let mut policy = fleet.policy()?;
            let pairs = [
                ("rotation_period", &a.rotation_period),
                ("acceptance_period", &a.acceptance_period),
                ("device_max_age", &a.device_max_age),
                ("destroy_after", &a.destroy_after),
                ("grant_lifetime", &a.grant_lifetime),
                ("grant_max_lifetime", &a.grant_max_lifetime),
                ("token_lifetime", &a.token_lifetime),
                ("token_max_lifetime", &a.token_max_lifetime),
                ("idempotency_retention", &a.idempotency_retention),
            ];
            if pairs.iter().all(|(_, v)| v.is_none()) {
                return Err(CliError::input(
                    "policy set",
                    "name at least one value to change (e.g. --rotation-period 365d)",
                ));
            }
            for (field, value) in pairs {
                if let Some(v) = value {
                    policy.set(field, v)?;
                }
            }
            let policy = fleet.set_policy(&policy, &a.reason)?;
            global.print(&policy, |p| show_text(p, true))
        }
        Command::Due { until: u } => {
            let now_ms = global.now_ms()?;
            let horizon = until(now_ms, u.as_deref())?;
            let items = fleet.lifecycle_due(horizon)?;
            global.print(&items, |items| {
                let lines: Vec<String> = items.iter().map(item_text).collect();
                if lines.is_empty() {
                    "nothing is due".into()
                } else {
                    lines.join("\n")
                }
            })
        }
    }
}

fn show_text(p: &Policy, set: bool) -> String {
    let age = p
        .device_max_age
        .map_or_else(|| "none".to_owned(), |s| s.to_string());
    let rows = [
        (
            "rotation period (generation originator-usage)",
            p.rotation_period.to_string(),
        ),
        (
            "acceptance period (previous generation, recipient-usage)",
            p.acceptance_period.to_string(),
        ),
        ("device key maximum age without refresh", age),
        (
            "deactivated generation kept before destroy",
            p.destroy_after.to_string(),
        ),
        (
            "grant lifetime / maximum",
            format!("{} / {}", p.grant_lifetime, p.grant_max_lifetime),
        ),
        (
            "token lifetime / maximum",
            format!("{} / {}", p.token_lifetime, p.token_max_lifetime),
        ),
        (
            "idempotency records kept",
            p.idempotency_retention.to_string(),
        ),
    ];
    let mut out = String::from(if set {
        "lifecycle policy\n"
    } else {
        "lifecycle policy (the defaults)\n"
    });
    for (name, value) in rows {
        out.push_str(&format!("  {name:<58} {value}\n"));
    }
    out.push_str("limits: NIST SP 800-57 Part 1 section 5.3 (docs/lifecycle.md)");
    out
}
