//! Token-to-token backup of a fleet on a PKCS#11 token: `fleetkey master import-backup-kek |
//! new-backup-kek | export-wrapped | import-wrapped`. The module side is
//! `fleetkey::module::pkcs11` (docs/pkcs11.md, "Token to token").

use std::io::Write as _;
use std::path::{Path, PathBuf};

use fleetkey::backup::{Share, write_shares};
use fleetkey::home::{FleetConfig, ModuleConfig};
use fleetkey::module::pkcs11::{BackupKek, Pin, Pkcs11Module, Pkcs11Options};
use fleetkey_core::derive::Generation;
use serde::{Deserialize, Serialize};

use crate::cmd::ctx::Global;
use crate::error::CliError;

/// The `format` of a wrapped master file.
const FORMAT: &str = "fleetkey-wrapped-master";

/// Token-to-token backup commands (a fleet on a PKCS#11 token).
#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// Write a generation's master wrapped under the fleet's trusted backup KEK (RFC 3394).
    #[command(after_help = "\
The token wraps the master only if it was made backup-capable (CKA_EXTRACTABLE and
CKA_WRAP_WITH_TRUSTED) and the backup KEK was imported by the security officer (CKA_TRUSTED);
otherwise it refuses. The file holds no clear key; it is useful only to a token holding the
same backup KEK. It is never overwritten.

Examples:
  FLEETKEY_PKCS11_PIN=... fleetkey --home ./tractors master export-wrapped --generation 3 --out g3.wrapped.json
  fleetkey --home ./tractors master export-wrapped --generation 3 --out g3.wrapped.json --json")]
    ExportWrapped(ExportArgs),
    /// Unwrap a master written by export-wrapped into this fleet's token (same backup KEK).
    #[command(after_help = "\
The file's fleet and generation must be this fleet's and --generation; a damaged file or one
wrapped under another KEK fails the token's integrity check and nothing is created. A
generation that has a master is never overwritten.

Examples:
  FLEETKEY_PKCS11_PIN=... fleetkey --home ./tractors-b master import-wrapped --generation 3 --in g3.wrapped.json
  fleetkey --home ./tractors-b master import-wrapped --generation 3 --in g3.wrapped.json --backup-by-trusted-wrap --json")]
    ImportWrapped(ImportArgs),
    /// Import the fleet's backup KEK into the token as the security officer (CKA_TRUSTED).
    #[command(after_help = "\
The SO PIN comes from --so-pin-file or FLEETKEY_PKCS11_SO_PIN. Run it alone: while the SO is
logged in, the user's sessions cannot use private objects. Do it in every token that must
exchange masters, from the same KEK shares.

Examples:
  FLEETKEY_PKCS11_SO_PIN=... fleetkey --home ./tractors master import-backup-kek --shares kek-alice.json kek-carol.json
  fleetkey --home ./tractors master import-backup-kek --kek-file kek.hex --so-pin-file so.pin --json")]
    ImportBackupKek(ImportKekArgs),
    /// Make a new random backup KEK, write its custodian shares, and import it into the token.
    #[command(after_help = "\
The shares use the master share format with generation 4294967295 (docs/backup.md); restore
the same KEK into another token with import-backup-kek --shares.

Examples:
  FLEETKEY_PKCS11_SO_PIN=... fleetkey --home ./tractors master new-backup-kek --custodian alice --custodian bob --custodian carol --threshold 2 --shares-dir kek-shares")]
    NewBackupKek(NewKekArgs),
}

/// `master export-wrapped`.
#[derive(clap::Args)]
pub(crate) struct ExportArgs {
    /// The generation whose master is exported.
    #[arg(long)]
    generation: u32,
    /// The file to write (created, never overwritten; mode 0600).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

/// `master import-wrapped`.
#[derive(clap::Args)]
pub(crate) struct ImportArgs {
    /// The generation to import; must be the file's.
    #[arg(long)]
    generation: u32,
    /// The file export-wrapped wrote.
    #[arg(long = "in", value_name = "FILE")]
    input: PathBuf,
    /// Keep the imported master exportable by trusted wrap (to pass it on to another token)
    /// even if the fleet was not initialised with --pkcs11-backup-by-trusted-wrap.
    #[arg(long)]
    backup_by_trusted_wrap: bool,
}

/// `master import-backup-kek`.
#[derive(clap::Args)]
pub(crate) struct ImportKekArgs {
    /// M of the backup KEK's custodian share files.
    #[arg(long, num_args = 1.., value_name = "FILE", required_unless_present = "kek_file")]
    shares: Vec<PathBuf>,
    /// A file whose first line is the KEK in 64 hex digits (tests; prefer shares).
    #[arg(long, value_name = "FILE", conflicts_with = "shares")]
    kek_file: Option<PathBuf>,
    /// A file holding the security officer's PIN [default: $FLEETKEY_PKCS11_SO_PIN].
    #[arg(long, value_name = "FILE")]
    so_pin_file: Option<PathBuf>,
}

/// `master new-backup-kek`.
#[derive(clap::Args)]
pub(crate) struct NewKekArgs {
    /// A custodian of one share; repeat once per share.
    #[arg(long = "custodian", value_name = "LABEL", required = true)]
    custodians: Vec<String>,
    /// How many shares restore the KEK.
    #[arg(long, value_name = "M")]
    threshold: u8,
    /// Where the share files are written (created 0700; each file 0600).
    #[arg(long, value_name = "DIR")]
    shares_dir: PathBuf,
    /// A file holding the security officer's PIN [default: $FLEETKEY_PKCS11_SO_PIN].
    #[arg(long, value_name = "FILE")]
    so_pin_file: Option<PathBuf>,
}

/// A wrapped master file.
#[derive(Serialize, Deserialize)]
struct WrappedFile {
    format: String,
    version: u32,
    fleet: String,
    generation: u32,
    mechanism: String,
    wrapping_key: String,
    wrapped: String,
}

/// What a command did (`--json`).
#[derive(Serialize)]
struct Outcome {
    fleet: String,
    token: String,
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    generation: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backup_kek_kcv: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    share_files: Vec<String>,
}

fn module_error(e: fleetkey::ModuleError) -> CliError {
    CliError::from(fleetkey::Error::from(e))
}

/// The fleet's token module, opened directly (the fleet's store is not needed here), with the
/// fleet's options, and trusted-wrap backup also when `options` asks for it.
fn open(global: &Global, options: Pkcs11Options) -> Result<(Pkcs11Module, String), CliError> {
    let config = FleetConfig::load(&global.home)?;
    let ModuleConfig::Pkcs11 {
        library,
        token_label,
        pin_file,
        backup_by_trusted_wrap,
    } = &config.module
    else {
        return Err(CliError::input(
            "--home",
            format_args!(
                "fleet {} keeps its masters in a soft key file, not on a PKCS#11 token",
                config.fleet_id
            ),
        )
        .hint("back a soft fleet up with custodian shares: fleetkey master restore|verify"));
    };
    let module =
        Pkcs11Module::open_configured(library, token_label, pin_file.as_deref(), &config.fleet_id)
            .map_err(module_error)?
            .with_options(Pkcs11Options {
                backup_by_trusted_wrap: *backup_by_trusted_wrap || options.backup_by_trusted_wrap,
            });
    Ok((module, config.fleet_id))
}

fn write_new(path: &Path, text: &str) -> Result<(), CliError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|e| {
        CliError::input(
            "--out",
            format_args!(
                "{}: {e} (a wrapped master file is never overwritten)",
                path.display()
            ),
        )
    })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| CliError::failed(format_args!("writing {}: {e}", path.display())))
}

fn so_pin(file: Option<&Path>) -> Result<Pin, CliError> {
    Pin::so_from_file_or_env(file).map_err(module_error)
}

pub(crate) fn run(global: &Global, command: Command) -> Result<(), CliError> {
    let outcome = match command {
        Command::ExportWrapped(args) => {
            let (module, fleet) = open(global, Pkcs11Options::default())?;
            let blob = module
                .export_master_wrapped(Generation(args.generation))
                .map_err(module_error)?;
            let file = WrappedFile {
                format: FORMAT.into(),
                version: 1,
                fleet: fleet.clone(),
                generation: args.generation,
                mechanism: "CKM_AES_KEY_WRAP".into(),
                wrapping_key: module.backup_kek_label(),
                wrapped: hex::encode(&blob),
            };
            let text = serde_json::to_string_pretty(&file)
                .map_err(|e| CliError::failed(format_args!("encoding the file: {e}")))?;
            write_new(&args.out, &(text + "\n"))?;
            Outcome {
                fleet,
                token: module.token_label().to_owned(),
                action: "exported",
                generation: Some(args.generation),
                file: Some(args.out.display().to_string()),
                backup_kek_kcv: None,
                share_files: Vec::new(),
            }
        }
        Command::ImportWrapped(args) => {
            let options = Pkcs11Options {
                backup_by_trusted_wrap: args.backup_by_trusted_wrap,
            };
            let (module, fleet) = open(global, options)?;
            let text = crate::input::file_text("--in", &args.input, crate::input::MAX_SMALL_FILE)?;
            let file: WrappedFile = serde_json::from_str(&text).map_err(|e| {
                CliError::input("--in", format_args!("{}: {e}", args.input.display()))
            })?;
            if file.format != FORMAT || file.version != 1 || file.mechanism != "CKM_AES_KEY_WRAP" {
                return Err(CliError::input(
                    "--in",
                    format_args!(
                        "{}: not a version 1 {FORMAT} file wrapped with CKM_AES_KEY_WRAP",
                        args.input.display()
                    ),
                ));
            }
            if file.fleet != fleet || file.generation != args.generation {
                return Err(CliError::input(
                    "--generation",
                    format_args!(
                        "{} holds generation {} of fleet {}, not generation {} of fleet {fleet}",
                        args.input.display(),
                        file.generation,
                        file.fleet,
                        args.generation
                    ),
                ));
            }
            let blob = hex::decode(&file.wrapped).map_err(|e| {
                CliError::input(
                    "--in",
                    format_args!("{}: wrapped: {e}", args.input.display()),
                )
            })?;
            module
                .import_master_wrapped(Generation(args.generation), &blob)
                .map_err(module_error)?;
            Outcome {
                fleet,
                token: module.token_label().to_owned(),
                action: "imported",
                generation: Some(args.generation),
                file: Some(args.input.display().to_string()),
                backup_kek_kcv: None,
                share_files: Vec::new(),
            }
        }
        Command::ImportBackupKek(args) => {
            let (module, fleet) = open(global, Pkcs11Options::default())?;
            let kek = match &args.kek_file {
                Some(path) => BackupKek::from_file(path).map_err(module_error)?,
                None => {
                    let shares = args
                        .shares
                        .iter()
                        .map(|p| {
                            Share::read(p).map_err(|e| CliError::from(fleetkey::Error::from(e)))
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    BackupKek::from_shares(&fleet, &shares)
                        .map_err(|e| CliError::from(fleetkey::Error::from(e)))?
                }
            };
            module
                .import_backup_kek(&kek, &so_pin(args.so_pin_file.as_deref())?)
                .map_err(module_error)?;
            Outcome {
                fleet,
                token: module.token_label().to_owned(),
                action: "backup KEK imported",
                generation: None,
                file: None,
                backup_kek_kcv: Some(hex::encode(kek.kcv().0)),
                share_files: Vec::new(),
            }
        }
        Command::NewBackupKek(args) => {
            let (module, fleet) = open(global, Pkcs11Options::default())?;
            let so_pin = so_pin(args.so_pin_file.as_deref())?;
            let kek = BackupKek::random().map_err(|e| CliError::from(fleetkey::Error::from(e)))?;
            let now = jiff::Timestamp::now().as_millisecond();
            let shares = kek
                .split(&fleet, args.threshold, &args.custodians, now)
                .map_err(|e| CliError::from(fleetkey::Error::from(e)))?;
            let written = write_shares(&args.shares_dir, &shares)
                .map_err(|e| CliError::from(fleetkey::Error::from(e)))?;
            module
                .import_backup_kek(&kek, &so_pin)
                .map_err(module_error)?;
            Outcome {
                fleet,
                token: module.token_label().to_owned(),
                action: "backup KEK made, split and imported",
                generation: None,
                file: None,
                backup_kek_kcv: Some(hex::encode(kek.kcv().0)),
                // The shares are kept only once the KEK is in the token.
                share_files: written
                    .keep()
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect(),
            }
        }
    };
    global.print(&outcome, |o| {
        let mut text = format!("fleet {} on token {:?}: {}", o.fleet, o.token, o.action);
        if let Some(g) = o.generation {
            text.push_str(&format!(", generation {g}"));
        }
        if let Some(f) = &o.file {
            text.push_str(&format!(", file {f}"));
        }
        if let Some(k) = &o.backup_kek_kcv {
            text.push_str(&format!(", backup KEK KCV {k}"));
        }
        for f in &o.share_files {
            text.push_str(&format!("\n  share {f}"));
        }
        text
    })
}
