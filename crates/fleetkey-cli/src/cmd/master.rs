//! The master key ceremony's options (`init`, `generation rotate|create`) and
//! `fleetkey master restore|verify`, and the token-to-token backup commands of
//! `token_backup.rs`.

use std::path::PathBuf;

use fleetkey::backup::{self, Share, VerifyReport};
use fleetkey::fleet::MasterBackup;
use fleetkey::module::soft::WorkFactor;
use fleetkey::restore::{self, RestoreReport};

use crate::cmd::ctx::Global;
use crate::error::CliError;

/// How the new master is backed up: custodian shares, or explicitly none.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct BackupArgs {
    /// A custodian of one share of the new master; repeat once per share (N in all). The
    /// share files are written before the master enters the key module.
    #[arg(long = "custodian", value_name = "LABEL")]
    custodians: Vec<String>,
    /// M: how many of the shares restore the master (1 ..= N).
    #[arg(long, value_name = "M")]
    threshold: Option<u8>,
    /// Where the share files are written (created 0700; each file 0600). Hand each file to its
    /// custodian, offline, and remove it here.
    #[arg(long, value_name = "DIR")]
    shares_dir: Option<PathBuf>,
    /// No backup: the master is created inside the key module and never leaves it. If the
    /// module is lost, no device key of that generation can ever be derived again.
    #[arg(long, conflicts_with_all = ["custodians", "threshold", "shares_dir"])]
    no_backup: bool,
}

impl BackupArgs {
    /// Whether any share option was given.
    pub(crate) fn any(&self) -> bool {
        !self.custodians.is_empty() || self.threshold.is_some() || self.shares_dir.is_some()
    }

    /// The backup the options ask for; a new master with neither shares nor `--no-backup` is
    /// refused (exit 2).
    pub(crate) fn resolve(&self) -> Result<MasterBackup, CliError> {
        self.resolve_for(
            "master",
            "losing the module then loses every key of the generation",
        )
    }

    /// [`BackupArgs::resolve`] for a new governance root (`governance rotate-root`).
    pub(crate) fn resolve_root(&self) -> Result<MasterBackup, CliError> {
        self.resolve_for(
            "governance root",
            "losing the module then means devices can never accept a new record",
        )
    }

    fn resolve_for(&self, what: &str, loss: &str) -> Result<MasterBackup, CliError> {
        if self.no_backup {
            return Ok(MasterBackup::NoBackup);
        }
        if self.custodians.is_empty() {
            return Err(CliError::input(
                "--custodian",
                format_args!("a new {what} needs a backup: name its custodians"),
            )
            .hint(format_args!(
                "split it into shares: --custodian alice --custodian bob --custodian carol \
                 --threshold 2 --shares-dir DIR; or pass --no-backup to keep it only in the key \
                 module ({loss})"
            )));
        }
        let threshold = self.threshold.ok_or_else(|| {
            CliError::input(
                "--threshold",
                format_args!(
                    "how many of the {} shares restore the {what}",
                    self.custodians.len()
                ),
            )
        })?;
        let dir = self
            .shares_dir
            .clone()
            .ok_or_else(|| CliError::input("--shares-dir", "where the share files are written"))?;
        Ok(MasterBackup::shares(
            threshold,
            self.custodians.clone(),
            dir,
        ))
    }
}

/// What to say after a new master was made: where its shares are, or the no-backup warning.
pub(crate) fn report_backup(
    fleet: &mut fleetkey::fleet::Fleet,
    generation: u32,
) -> Result<(), CliError> {
    for record in fleet.master_backups(generation)? {
        if record["method"] == "shares" {
            let files: Vec<&str> = record["files"]
                .as_array()
                .map(|f| f.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            eprintln!(
                "generation {generation}'s master: {} of {} custodian shares written, master KCV {}:",
                record["threshold"],
                record["count"],
                record["master_kcv"].as_str().unwrap_or("-"),
            );
            for f in files {
                eprintln!("  {f}");
            }
            eprintln!(
                "Give each file to its custodian (offline) and remove it here. Losing the master \
                 and more than N-M shares means no key of generation {generation} can ever be \
                 derived again."
            );
        } else {
            eprintln!(
                "WARNING: generation {generation}'s master has NO backup: it exists only in the key \
                 module. If the module (or the key file and its passphrase) is lost, no device key \
                 of generation {generation} can ever be derived again."
            );
        }
    }
    Ok(())
}

/// What to say after a new governance root was made: where its shares are, or the no-backup
/// warning. `record` is its `governance.root_backup` audit details.
pub(crate) fn report_root_backup(record: &serde_json::Value) {
    let root = &record["root"];
    if record["method"] == "shares" {
        eprintln!(
            "governance root {root} ({}): {} of {} custodian shares written, root KCV {}:",
            record["public_key"].as_str().unwrap_or("-"),
            record["threshold"],
            record["count"],
            record["root_kcv"].as_str().unwrap_or("-"),
        );
        for f in record["files"].as_array().into_iter().flatten() {
            eprintln!("  {}", f.as_str().unwrap_or("-"));
        }
        eprintln!(
            "Give each file to its custodian (offline) and remove it here. Restore with \
             `fleetkey governance restore-root --shares ...`."
        );
    } else {
        eprintln!(
            "WARNING: governance root {root} has NO backup: it exists only in the key module. If \
             the module (or the key file and its passphrase) is lost, devices pinned to this root \
             can never accept a new record (no rotation, no revocation, no deny list) until they \
             are re-pinned by hand."
        );
    }
}

/// Master key backup: restore and verify custodian shares.
#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// Rebuild a master from M share files and import it into the fleet's key module (when it
    /// lacks that generation) or into a new soft key file.
    #[command(after_help = "\
Every share's key check value (KCV) is checked, the shares must be of one fleet and generation,
and the rebuilt master must match the whole-master KCV; a probe derivation through the module
then proves the import.

Examples:
  fleetkey --home ./tractors master restore --shares alice.json carol.json erin.json --reason 'key file lost'
  FLEETKEY_PASSPHRASE=... fleetkey master restore --shares a.json b.json c.json --key-file new.age --json")]
    Restore(RestoreArgs),
    /// Check share files (of a master or of the governance root) without a key module: each
    /// share's KCV, that they belong together, and, given at least M of them, the whole KCV.
    #[command(after_help = "\
Nothing is written; the master rebuilt for the check is zeroized at once.

Examples:
  fleetkey master verify --shares alice.json
  fleetkey master verify --shares alice.json carol.json erin.json --json")]
    Verify(VerifyArgs),
    /// Token-to-token backup (a fleet on a PKCS#11 token): `cmd/token_backup.rs`.
    #[command(flatten)]
    Token(crate::cmd::token_backup::Command),
}

/// `master restore`.
#[derive(clap::Args)]
pub(crate) struct RestoreArgs {
    /// The share files (at least M).
    #[arg(long, num_args = 1.., required = true, value_name = "FILE")]
    shares: Vec<PathBuf>,
    /// The generation to restore; must be the shares' (a cross-check).
    #[arg(long)]
    generation: Option<u32>,
    /// Restore into this new soft key file (passphrase from FLEETKEY_PASSPHRASE) instead of the
    /// fleet at --home.
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// With --key-file: its scrypt work factor (log2); default: age's.
    #[arg(long, requires = "key_file", value_parser = clap::value_parser!(u8).range(10..=22))]
    kdf_log_n: Option<u8>,
    /// Why (recorded in the fleet's audit).
    #[arg(long, default_value = "master restored from custodian shares")]
    reason: String,
}

/// `master verify`.
#[derive(clap::Args)]
pub(crate) struct VerifyArgs {
    /// The share files (one or more).
    #[arg(long, num_args = 1.., required = true, value_name = "FILE")]
    shares: Vec<PathBuf>,
}

pub(crate) fn read_shares(paths: &[PathBuf]) -> Result<Vec<Share>, CliError> {
    paths
        .iter()
        .map(|p| Share::read(p).map_err(|e| CliError::from(fleetkey::Error::from(e))))
        .collect()
}

fn used(report: &RestoreReport) -> String {
    report
        .shares_used
        .iter()
        .map(|(i, c)| format!("{i} ({c})"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn run(global: &Global, command: Command) -> Result<(), CliError> {
    match command {
        Command::Restore(args) => {
            let shares = read_shares(&args.shares)?;
            let (report, into) = match &args.key_file {
                Some(path) => {
                    let passphrase = global.access_for_init()?.passphrase;
                    let work_factor = args
                        .kdf_log_n
                        .map_or(WorkFactor::AgeDefault, WorkFactor::Log2);
                    let report = restore::restore_into_new_key_file(
                        path,
                        &passphrase,
                        work_factor,
                        &shares,
                        args.generation,
                    )?;
                    (report, path.display().to_string())
                }
                None => {
                    let mut fleet = global.open()?;
                    let report = fleet.restore_master(&shares, args.generation, &args.reason)?;
                    (
                        report,
                        format!("the key module of {}", global.home.display()),
                    )
                }
            };
            global.print(&report, |r| {
                format!(
                    "restored generation {} of fleet {} into {into} from shares {}: the rebuilt master \
                     matches KCV {} and the module derives with it",
                    r.generation,
                    r.fleet,
                    used(r),
                    r.master_kcv
                )
            })
        }
        Command::Verify(args) => {
            let shares = read_shares(&args.shares)?;
            let report = backup::verify(&shares).map_err(fleetkey::Error::from)?;
            global.print(&report, verify_text)
        }
        Command::Token(command) => crate::cmd::token_backup::run(global, command),
    }
}

fn verify_text(r: &VerifyReport) -> String {
    let mut out = String::new();
    let (what, number) = match r.secret {
        backup::Secret::Master => ("master", "generation"),
        backup::Secret::GovernanceRoot => ("governance root", "root"),
    };
    for s in &r.shares {
        out.push_str(&format!(
            "share {} of {} ({}), fleet {} {number} {}: KCV {} ok\n",
            s.index, s.count, s.custodian, s.fleet, s.generation, s.share_kcv
        ));
    }
    if r.master_checked {
        out.push_str(&format!(
            "the {} shares rebuild the {what}: KCV {} matches",
            r.shares.len(),
            r.master_kcv
        ));
    } else {
        out.push_str(&format!(
            "{} of the {} needed shares given: the whole {what} (KCV {}) was not checked",
            r.shares.len(),
            r.threshold,
            r.master_kcv
        ));
    }
    out
}
