//! `fleetkey generation ...` and `fleetkey rotation status`.

use fleetkey::model::GenerationRecord;

use crate::cmd::ctx::Global;
use crate::cmd::master::{BackupArgs, report_backup};
use crate::error::CliError;

/// Master generation commands (derived and governed schemes).
#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// The fleet's generations.
    #[command(after_help = "Example:\n  fleetkey generation list --json")]
    List,
    /// Create the next generation (pre-active) with a fresh master in the key module.
    #[command(after_help = "\
The master key ceremony: the new master is split into custodian shares (M of N restore it), written
before it enters the key module; or --no-backup.

Example:
  fleetkey generation create --reason 'prepare 2027 rotation' \\
      --custodian alice --custodian bob --custodian carol --threshold 2 --shares-dir ./shares-g2")]
    Create(NewMaster),
    /// Activate a generation and make it current.
    #[command(after_help = "Example:\n  fleetkey generation activate 2 --reason 'rotation'")]
    Activate(Target),
    /// Rotation: create generation g+1 and make it current; then migrate devices with
    /// `fleetkey device refresh --all --generation g`.
    #[command(after_help = "\
The master key ceremony: the new master is split into custodian shares (M of N restore it), written
before it enters the key module; or --no-backup (then losing the module loses every key of the
new generation).

Example:
  fleetkey generation rotate --reason 'yearly rotation' \\
      --custodian alice --custodian bob --custodian carol --threshold 2 --shares-dir ./shares-g2
  fleetkey device refresh --all --generation 1 --out updates.jsonl
  fleetkey rotation status
  fleetkey generation destroy 1 --reason 'migrated'")]
    Rotate(NewMaster),
    /// Stop using a generation for new keys (refused while devices depend on it unless forced).
    #[command(after_help = "Example:\n  fleetkey generation deactivate 1 --reason 'migrated'")]
    Deactivate(Retire),
    /// Destroy a generation's master (zeroized in the key module).
    #[command(after_help = "\
Refused while devices still depend on it, unless --force --confirm G: their keys can then never be
derived again.

Example:
  fleetkey generation destroy 1 --reason 'all devices migrated'")]
    Destroy(Retire),
    /// Mark a generation compromised (revoked): migrate its devices, then destroy it.
    #[command(after_help = "Example:\n  fleetkey generation revoke 1 --reason 'master exposed'")]
    Revoke(Target),
}

/// A new master: a reason and its backup.
#[derive(clap::Args)]
pub(crate) struct NewMaster {
    /// Why (recorded).
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    backup: BackupArgs,
}

/// A generation and a reason.
#[derive(clap::Args)]
pub(crate) struct Target {
    /// The generation.
    generation: u32,
    /// Why (recorded).
    #[arg(long)]
    reason: String,
}

/// Retiring a generation.
#[derive(clap::Args)]
pub(crate) struct Retire {
    /// The generation.
    generation: u32,
    /// Why (recorded).
    #[arg(long)]
    reason: String,
    /// Go ahead although devices still depend on it.
    #[arg(long, requires = "confirm")]
    force: bool,
    /// With --force: the generation number again, as confirmation.
    #[arg(long)]
    confirm: Option<u32>,
}

impl Retire {
    fn forced(&self) -> Result<bool, CliError> {
        if self.force && self.confirm != Some(self.generation) {
            return Err(CliError::input(
                "--confirm",
                format_args!("must repeat the generation ({})", self.generation),
            ));
        }
        Ok(self.force)
    }
}

fn text(g: &GenerationRecord) -> String {
    format!(
        "generation {} is {} (by {}: {})",
        g.generation, g.state, g.changed.actor, g.changed.reason
    )
}

pub(crate) fn run(global: &Global, command: Command) -> Result<(), CliError> {
    let mut fleet = global.open()?;
    match command {
        Command::List => {
            let gens = fleet.generations()?;
            let current = fleet.info()?.current_generation;
            global.print(&gens, |gs| {
                gs.iter()
                    .map(|g| {
                        format!(
                            "{}{}",
                            text(g),
                            if current == Some(g.generation) {
                                "  [current]"
                            } else {
                                ""
                            }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        Command::Create(r) => {
            let backup = r.backup.resolve()?;
            let g = fleet.create_generation(&r.reason, &backup)?;
            report_backup(&mut fleet, g.generation)?;
            global.print(&g, text)
        }
        Command::Activate(t) => {
            let g = fleet.activate_generation(t.generation, &t.reason)?;
            global.print(&g, |g| format!("{}; it is now current", text(g)))
        }
        Command::Rotate(r) => {
            let backup = r.backup.resolve()?;
            let g = fleet.rotate(&r.reason, &backup)?;
            report_backup(&mut fleet, g.generation)?;
            global.print(&g, |g| {
                format!(
                    "{}; it is now current. Migrate devices: fleetkey device refresh --all --generation {} --out updates.jsonl",
                    text(g),
                    g.generation.saturating_sub(1)
                )
            })
        }
        Command::Deactivate(r) => {
            let force = r.forced()?;
            let g = fleet.deactivate_generation(r.generation, &r.reason, force)?;
            global.print(&g, text)
        }
        Command::Destroy(r) => {
            let force = r.forced()?;
            let g = fleet.destroy_generation(r.generation, &r.reason, force)?;
            global.print(&g, |g| format!("{}; its master is destroyed", text(g)))
        }
        Command::Revoke(t) => {
            let g = fleet.compromise_generation(t.generation, &t.reason)?;
            global.print(&g, |g| {
                format!("{}; migrate its devices, then destroy it", text(g))
            })
        }
    }
}

/// `fleetkey rotation status`.
#[derive(clap::Subcommand)]
pub(crate) enum RotationCommand {
    /// Devices per generation, and how many are not yet on the current one.
    #[command(after_help = "Example:\n  fleetkey rotation status --json")]
    Status,
}

pub(crate) fn rotation(global: &Global, command: RotationCommand) -> Result<(), CliError> {
    let RotationCommand::Status = command;
    let mut fleet = global.open()?;
    let status = fleet.rotation_status()?;
    let due = fleet.lifecycle_due(None)?;
    let mut value = serde_json::to_value(&status).map_err(|e| CliError::input("output", e))?;
    if let Some(map) = value.as_object_mut() {
        map.insert(
            "due".into(),
            serde_json::to_value(&due).map_err(|e| CliError::input("output", e))?,
        );
    }
    if global.json {
        return global.print(&value, |_| String::new());
    }
    global.print(&status, |s| {
        let mut out = String::new();
        for g in &s.generations {
            out.push_str(&format!(
                "generation {:>3}  {:<22} {:>9} devices{}\n",
                g.generation,
                g.state.name(),
                g.devices,
                if g.current { "  [current]" } else { "" }
            ));
        }
        out.push_str(&format!("{} devices still to migrate", s.pending));
        for i in due
            .iter()
            .filter(|i| i.action != fleetkey::fleet::lifecycle::DueAction::PurgeIdempotency)
        {
            out.push('\n');
            out.push_str(&crate::cmd::policy::item_text(i));
        }
        out
    })
}
