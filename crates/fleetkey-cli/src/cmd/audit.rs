//! `fleetkey audit verify|show`.

use fleetkey::audit::{AuditEvent, AuditFilter};
use fleetkey::model::DeviceSerial;

use crate::cmd::ctx::Global;
use crate::error::CliError;

/// The audit record.
#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// Check the hash chain, its head and the index `show` filters on: reports a changed,
    /// removed or reordered event, or an index row that differs from its event, naming the
    /// table and the event (exit 1).
    #[command(after_help = "Example:\n  fleetkey audit verify --json")]
    Verify,
    /// Events, oldest first.
    #[command(
        after_help = "Example:\n  fleetkey audit show --device ECU-0001 --action device --since 2026-11-01T00:00:00Z"
    )]
    Show {
        /// Only events concerning this device.
        #[arg(long)]
        device: Option<String>,
        /// Only this action, or actions under this prefix (`device`, `generation.rotate`).
        #[arg(long)]
        action: Option<String>,
        /// Only events at or after this time (RFC 3339, or Unix milliseconds).
        #[arg(long)]
        since: Option<String>,
        /// Only events before this time (RFC 3339, or Unix milliseconds).
        #[arg(long)]
        until: Option<String>,
        /// Start after this sequence number (paging).
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

/// Unix milliseconds from RFC 3339 (`2026-11-26T10:00:00Z`) or a number.
fn time(field: &str, text: &str) -> Result<i64, CliError> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let ts: jiff::Timestamp = text.parse().map_err(|e| {
        CliError::input(
            field,
            format_args!("{text:?} is neither RFC 3339 nor Unix milliseconds ({e})"),
        )
    })?;
    Ok(ts.as_millisecond())
}

fn show(e: &AuditEvent) -> String {
    let at = jiff::Timestamp::from_millisecond(e.draft.at)
        .map_or_else(|_| e.draft.at.to_string(), |t| t.to_string());
    let subjects = match e.draft.subjects.len() {
        0 => String::new(),
        1 => format!(" {}", e.draft.subjects[0]),
        n => format!(" ({n} devices)"),
    };
    format!(
        "{:>6} {at} {:<10} {:<24}{}{} {}",
        e.seq,
        e.draft.actor,
        e.draft.action,
        e.draft
            .generation
            .map_or(String::new(), |g| format!(" gen {g}")),
        subjects,
        e.draft.details
    )
}

pub(crate) fn run(global: &Global, command: Command) -> Result<(), CliError> {
    let mut fleet = global.open()?;
    match command {
        Command::Verify => match fleet.audit_verify() {
            Ok(n) => global.print(&serde_json::json!({"ok": true, "events": n}), |_| {
                format!("audit chain intact: {n} events")
            }),
            Err(e @ fleetkey::Error::Chain(_)) => {
                if global.json {
                    println!(
                        "{}",
                        serde_json::json!({"ok": false, "error": e.to_string()})
                    );
                }
                Err(CliError::from(e))
            }
            Err(e) => Err(e.into()),
        },
        Command::Show {
            device,
            action,
            since,
            until,
            after,
            limit,
        } => {
            let filter = AuditFilter {
                device: device
                    .as_deref()
                    .map(DeviceSerial::parse)
                    .transpose()
                    .map_err(|e| CliError::input("--device", e))?,
                action,
                since: since.as_deref().map(|t| time("--since", t)).transpose()?,
                until: until.as_deref().map(|t| time("--until", t)).transpose()?,
            };
            let events = fleet.audit_show(&filter, after, limit)?;
            global.print(&events, |es| {
                es.iter().map(show).collect::<Vec<_>>().join("\n")
            })
        }
    }
}
