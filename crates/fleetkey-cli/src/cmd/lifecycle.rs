//! `fleetkey lifecycle run`: every action the lifecycle policy says is due, in order.

use std::path::PathBuf;

use fleetkey::fleet::OutputFile;
use fleetkey::fleet::lifecycle::{RunOptions, RunReport};
use fleetkey::fleet::policy::Span;

use crate::cmd::ctx::{Bar, Global};
use crate::cmd::policy::{item_text, until};
use crate::error::CliError;

/// The policy carried out.
#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// Perform every due action in order: activate or rotate, migrate devices, publish records,
    /// deactivate and destroy generations, record expired grants and tokens, purge idempotency
    /// records. Safe to rerun and to run from cron: a killed run is resumed, nothing is done twice.
    #[command(after_help = "\
Migrations' SHE key updates go to --out (appended, synced; at least once: a line may repeat after
a crash, never go missing). --out is required when a migration is due. A fleet whose masters are
backed up in custodian shares never rotates by itself: the due item names the ceremony command,
and the generation it creates is activated on time. Only one scheduler acts at a time (a lease in
the store, shared with `fleetkey serve`); a run that finds it held does nothing and exits 1.

Examples:
  fleetkey lifecycle run --dry-run
  fleetkey lifecycle run --out /var/lib/fleetkey/updates.jsonl --rate 5000
  # crontab: every night at 02:15
  15 2 * * * fleetkey --home /srv/fleet lifecycle run --out /srv/updates.jsonl --json >>/var/log/fleetkey.log")]
    Run(RunArgs),
}

/// `lifecycle run` options.
#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// Print the plan and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Also do what falls due by then: a duration from now (30d) or an RFC 3339 time.
    #[arg(long)]
    until: Option<String>,
    /// Where migrations' key updates go (JSON lines, appended).
    #[arg(long)]
    out: Option<PathBuf>,
    /// At most this many devices per second in migrations (default: as fast as it goes).
    #[arg(long)]
    rate: Option<f64>,
    /// Devices per transaction in migrations.
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    /// How long the lease lasts without renewal (renewed between batches).
    #[arg(long, default_value = "5m")]
    lease_ttl: String,
    /// The reason recorded with every change.
    #[arg(long, default_value = "lifecycle policy")]
    reason: String,
}

pub(crate) fn run(global: &Global, command: Command) -> Result<(), CliError> {
    let Command::Run(a) = command;
    if a.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        return Err(CliError::input(
            "--rate",
            "a positive number of devices per second",
        ));
    }
    if a.batch == 0 || a.batch > 100_000 {
        return Err(CliError::input("--batch", "1 to 100000"));
    }
    let lease_ttl = Span::parse("--lease-ttl", &a.lease_ttl)?;
    let now = global.now_ms()?;
    let options = RunOptions {
        dry_run: a.dry_run,
        until: until(now, a.until.as_deref())?,
        rate: a.rate,
        holder: Global::lease_holder("cli"),
        lease_ttl,
        reason: a.reason.clone(),
    };
    let mut fleet = global.open()?;
    fleet.set_batch_size(a.batch);
    let mut file = match (&a.out, a.dry_run) {
        (Some(path), false) => Some(
            OutputFile::append(path)
                .map_err(|e| CliError::input("--out", format_args!("{}: {e}", path.display())))?,
        ),
        _ => None,
    };
    let out = file.as_mut().map(|f| f as &mut dyn fleetkey::fleet::Output);
    let report = fleet.lifecycle_run(&options, out, &Bar::new())?;
    if let Some(l) = &report.lease_held_by {
        return Err(CliError::failed(format_args!(
            "another scheduler holds the lifecycle lease: {} (until {})",
            l.holder,
            time_text(l.until)
        ))
        .hint("it is doing the work; run again after it finishes (or once its lease expires)"));
    }
    global.print(&report, report_text)
}

fn time_text(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

fn report_text(r: &RunReport) -> String {
    let mut out = String::new();
    if r.dry_run {
        out.push_str(if r.plan.is_empty() {
            "plan: nothing is due\n"
        } else {
            "plan (nothing changed):\n"
        });
        for i in &r.plan {
            out.push_str(&item_text(i));
            out.push('\n');
        }
    } else if r.done.is_empty() {
        out.push_str("nothing was due\n");
    } else {
        for d in &r.done {
            out.push_str(&format!("  done    {}\n", d.message));
        }
    }
    if r.delivery.resent > 0 {
        out.push_str(&format!(
            "re-sent {} key update lines an interrupted run owed\n",
            r.delivery.resent
        ));
    }
    if !r.waiting.is_empty() {
        out.push_str("next:\n");
        for i in &r.waiting {
            out.push_str(&item_text(i));
            out.push('\n');
        }
    }
    out.trim_end().to_owned()
}
