//! `fleetkey demo`: the walkthrough on the simulator (fleetkey-sim), on the embedded defaults.
//! A governed fleet (SQLite, soft key module) provisions a network of ECUs on a simulated CAN FD
//! bus; keys roll across epochs; an attacker is rejected at each step; one ECU is refreshed by
//! SHE update over the bus; the fleet rotates with an ECU offline; generation 1 is revoked; a
//! technician's grant is denied; a device is decommissioned; the audit chain and the capture are
//! verified. Each step prints the CLI command that does the same on a real fleet.

use std::path::PathBuf;

use fleetkey::module::soft::WorkFactor;
use fleetkey_sim::scenario::{self, Options, Report, Summary};

use crate::cmd::ctx::Global;
use crate::error::CliError;

/// Run the walkthrough on the simulated CAN FD bus.
#[derive(clap::Args)]
#[command(after_help = "\
Keeps the demo fleet in ./fleetkey-demo (or --keep DIR) and the capture (candump -l) beside it
as fleetkey-demo.capture.log, so both can be looked at afterwards; a rerun replaces an earlier
demo's directory (and refuses any other). --temporary leaves nothing behind. No passphrase
needed: the demo fleet uses a fixed one. Docs: docs/simulator.md.

Examples:
  fleetkey demo
  fleetkey demo --devices 6 --keep demo-fleet
  fleetkey demo --temporary")]
pub(crate) struct Args {
    /// How many ECUs.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(4..=64))]
    devices: u16,
    /// Where to keep the demo fleet (new, or an earlier demo's, which is replaced).
    #[arg(long, default_value = "fleetkey-demo", conflicts_with = "temporary")]
    keep: PathBuf,
    /// Run in a temporary directory and keep nothing.
    #[arg(long)]
    temporary: bool,
    /// Seconds of simulated bus traffic per traffic step.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=60))]
    seconds: u64,
}

struct Printer {
    n: u32,
}

impl Report for Printer {
    fn step(&mut self, title: &str, command: &str) {
        self.n += 1;
        println!("\n== {}. {title}", self.n);
        if !command.is_empty() {
            println!("   $ {command}");
        }
    }

    fn line(&mut self, text: &str) {
        println!("   {text}");
    }
}

fn demo_error(what: impl std::fmt::Display) -> CliError {
    CliError::failed(format_args!("demo: {what}"))
}

/// The summary table shared with `fleetkey sim run`.
pub(crate) fn summary_table(s: &Summary) -> String {
    let mut t = String::new();
    t.push_str(&format!(
        "\nsummary: fleet {}, {} ECUs, {} frames in {:.1} s of bus time ({:.1} s wall)\n",
        s.fleet, s.ecus, s.frames, s.bus_seconds, s.wall_seconds
    ));
    t.push_str(&format!(
        "   {:<78} {:>8} {:>7} {:>7} {:>8}\n",
        "step", "accepted", "replay", "auth", "refused"
    ));
    for st in &s.steps {
        let mut title = st.step.clone();
        if title.len() > 78 {
            title.truncate(75);
            title.push_str("...");
        }
        t.push_str(&format!(
            "   {:<78} {:>8} {:>7} {:>7} {:>8}\n",
            title, st.accepted, st.replay, st.authentication, st.refused_by_ecus
        ));
    }
    t.push_str(&format!(
        "   gateway over the run: {} accepted, {} replay, {} authentication; updates confirmed {}, retried {}\n",
        s.gateway.accepted, s.gateway.replay, s.gateway.authentication, s.updates.confirmed, s.updates.retries
    ));
    t.push_str(&format!(
        "   attacker sent {} replays, {} forgeries, {} frames under keys it should not have: {}\n",
        s.attacker.replayed,
        s.attacker.forged,
        s.attacker.injected,
        match s.attacks_accepted {
            0 => "none accepted".to_owned(),
            n => format!("{n} ACCEPTED"),
        }
    ));
    t.push_str(&format!(
        "   audit: {} events, chain intact; capture {} verified offline: {} accepted, {} rejected\n",
        s.audit_events,
        s.capture.display(),
        s.offline.accepted,
        s.offline.replay + s.offline.authentication + s.offline.malformed + s.offline.no_key
    ));
    t
}

pub(crate) fn run(_global: &Global, args: Args) -> Result<(), CliError> {
    let temp = tempfile::tempdir().map_err(demo_error)?;
    let keep = (!args.temporary).then(|| args.keep.clone());
    let home = keep.clone().unwrap_or_else(|| temp.path().join("fleet"));
    let capture = match &keep {
        Some(keep) => keep.with_extension("capture.log"),
        None => temp.path().join("capture.log"),
    };
    if keep.is_some() {
        clear_earlier_demo(&home, &capture)?;
    }
    let options = Options {
        home: home.clone(),
        capture,
        ecus: args.devices,
        work_factor: WorkFactor::Log2(14),
        seconds: args.seconds,
    };
    let summary = scenario::walkthrough(&options, &mut Printer { n: 0 }).map_err(demo_error)?;
    print!("{}", summary_table(&summary));
    if keep.is_some() {
        println!(
            "   the fleet is kept in {}; check the capture again with:\n   $ FLEETKEY_PASSPHRASE='fleetkey demo passphrase' fleetkey can verify {} --home {}",
            home.display(),
            summary.capture.display(),
            home.display()
        );
    } else {
        println!("   (--temporary: nothing was kept)");
    }
    Ok(())
}

/// Removes an earlier demo's fleet and capture at `home`, and refuses anything else there.
fn clear_earlier_demo(home: &std::path::Path, capture: &std::path::Path) -> Result<(), CliError> {
    let empty = std::fs::read_dir(home).map(|mut d| d.next().is_none());
    if !home.exists() || empty.unwrap_or(false) {
        return Ok(());
    }
    let is_demo = fleetkey::home::FleetConfig::load(home).is_ok_and(|c| c.fleet_id == "demo");
    if !is_demo {
        return Err(CliError::input(
            "--keep",
            format_args!(
                "{} exists and is not an earlier demo's fleet",
                home.display()
            ),
        )
        .hint("choose another directory with --keep DIR, or run with --temporary"));
    }
    std::fs::remove_dir_all(home).map_err(demo_error)?;
    if capture.exists() {
        std::fs::remove_file(capture).map_err(demo_error)?;
    }
    Ok(())
}
