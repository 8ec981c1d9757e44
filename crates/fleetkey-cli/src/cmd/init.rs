//! `fleetkey init` and `fleetkey status`.

use fleetkey::fleet::{Fleet, InitOptions};
use fleetkey::model::Scheme;
use fleetkey::module::soft::WorkFactor;
use fleetkey_core::Key128;

use crate::cmd::ctx::Global;
use crate::cmd::master::{BackupArgs, report_backup, report_root_backup};
use crate::error::CliError;
use crate::input;

/// Create a fleet home: SQLite store, soft key module (default) or a PKCS#11 token.
#[derive(clap::Args)]
#[command(after_help = "\
The key file is encrypted under a passphrase from FLEETKEY_PASSPHRASE or a prompt (never argv).
Its scrypt work factor is fixed now: by default age picks the one that takes about a second on
this machine (measured here, 2 busy cores: log2 N 18 to 20, i.e. 256 MiB to 1 GiB of memory and
0.8 to 3 s for every command that needs a key; init, which writes the file up to four times, 3.5
to 17 s). Commands that touch no key (status, lists, audit, grant list/show, governance show)
never open the file and ask for no passphrase. --kdf-log-n fixes the factor (each step halves or
doubles time and memory).
The derived and governed schemes run the master key ceremony: generation 1's master is split into
custodian shares (M of N restore it) written before it enters the key module; or --no-backup.
The governed scheme's Ed25519 root gets the same ceremony with the same options, in share files of
its own (<fleet>-root1-share-...); with --no-backup it is generated in the key module, and losing
it means devices can never accept a new record.

Examples:
  export FLEETKEY_PASSPHRASE='a long passphrase'
  fleetkey --home ./tractors init --fleet tractors --scheme derived --she-transport-key-file transport.hex \\
      --custodian alice --custodian bob --custodian carol --custodian dave --custodian erin \\
      --threshold 3 --shares-dir ./shares
  fleetkey --home ./lab init --fleet lab --scheme derived --no-backup
  fleetkey --home ./shared init --fleet plant1 --scheme derived --no-backup \\
      --store postgres://postgres@127.0.0.1:5432/test
  fleetkey --home ./fleet init --fleet fleet --scheme governed --publish \\
      --custodian alice --custodian bob --custodian carol --threshold 2 --shares-dir ./shares
  FLEETKEY_PKCS11_PIN=... fleetkey --home ./hsm init --fleet hsm --scheme derived --no-backup \\
      --module pkcs11 --pkcs11-module /usr/lib/softhsm/libsofthsm2.so --token-label fleet-hsm")]
pub(crate) struct InitArgs {
    /// Fleet id (A-Z a-z 0-9 - _ .).
    #[arg(long)]
    fleet: String,
    /// Key scheme: stored (random key per device, kept wrapped), derived (from a master per
    /// generation) or governed (derived, plus a signing root).
    #[arg(long, value_enum)]
    scheme: SchemeArg,
    /// File holding the factory transport key of the fleet's SHEs (32 hex characters): it
    /// authorises the initial SHE load at provisioning.
    #[arg(long)]
    she_transport_key_file: Option<std::path::PathBuf>,
    /// Key module: soft (a passphrase-encrypted key file in the home) or pkcs11 (a token; the
    /// fleet's objects are namespaced by the fleet id).
    #[arg(long, value_enum, default_value = "soft")]
    module: ModuleArg,
    /// The PKCS#11 library (with --module pkcs11), e.g. /usr/lib/softhsm/libsofthsm2.so.
    #[arg(long, required_if_eq("module", "pkcs11"))]
    pkcs11_module: Option<std::path::PathBuf>,
    /// The token's label (with --module pkcs11); the token is found by label, not slot.
    #[arg(long, required_if_eq("module", "pkcs11"))]
    token_label: Option<String>,
    /// A file holding the token's user PIN, recorded in fleet.json and read at every open;
    /// without it the PIN comes from FLEETKEY_PKCS11_PIN.
    #[arg(long)]
    pin_file: Option<std::path::PathBuf>,
    /// With --module pkcs11: masters may leave the token wrapped under the security officer's
    /// trusted backup KEK (token-to-token backup: fleetkey master export-wrapped), and only so.
    #[arg(long, requires = "pkcs11_module")]
    pkcs11_backup_by_trusted_wrap: bool,
    /// Store: `sqlite` (default: fleet.db in the home) or a PostgreSQL URL
    /// (postgres://user[:password]@host:port/db) for a fleet that several `fleetkey serve`
    /// instances share. A URL with a password is kept in <home>/store-url (mode 0600), not in
    /// fleet.json; FLEETKEY_STORE_URL overrides it at every open. docs/postgres.md.
    #[arg(long, default_value = "sqlite")]
    store: String,
    /// PostgreSQL schema for the fleet's tables (with a postgres:// --store); default
    /// `fleetkey_<fleet id>` with other characters as `_`.
    #[arg(long)]
    store_schema: Option<String>,
    /// scrypt work factor (log2 N) of the key file; default: age's, about a second of scrypt on
    /// this machine (log2 N 18 to 20: 256 MiB to 1 GiB per key-using command).
    #[arg(long, value_parser = clap::value_parser!(u8).range(10..=22))]
    kdf_log_n: Option<u8>,
    /// Governed scheme: publish the first generation record (sequence 1, valid 365 days) right
    /// away, so the fleet has one to export and push.
    #[arg(long)]
    publish: bool,
    #[command(flatten)]
    backup: BackupArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ModuleArg {
    Soft,
    Pkcs11,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SchemeArg {
    Stored,
    Derived,
    Governed,
}

pub(crate) fn init(global: &Global, args: InitArgs) -> Result<(), CliError> {
    let scheme = match args.scheme {
        SchemeArg::Stored => Scheme::Stored,
        SchemeArg::Derived => Scheme::Derived,
        SchemeArg::Governed => Scheme::Governed,
    };
    if args.publish && scheme != Scheme::Governed {
        return Err(CliError::input(
            "--publish",
            "only the governed scheme has generation records",
        ));
    }
    let she_transport_key = match &args.she_transport_key_file {
        Some(path) => Some(Key128::from_bytes(*input::key_from_file::<16>(
            "--she-transport-key-file",
            path,
        )?)),
        None => None,
    };
    let backup = if scheme.derives_from_master() || args.backup.any() {
        args.backup.resolve()?
    } else {
        fleetkey::fleet::MasterBackup::NoBackup
    };
    let options = InitOptions {
        fleet_id: args.fleet,
        scheme,
        she_transport_key,
        work_factor: args
            .kdf_log_n
            .map_or(WorkFactor::AgeDefault, WorkFactor::Log2),
        backup,
    };
    let store = StoreChoice::new(
        &global.home,
        &options.fleet_id,
        &args.store,
        args.store_schema,
    )?;
    let result = init_fleet(
        global,
        args.module,
        args.pkcs11_module,
        args.token_label,
        args.pin_file,
        args.pkcs11_backup_by_trusted_wrap,
        store.config.clone(),
        options,
    );
    let mut fleet = match result {
        Ok(fleet) => fleet,
        Err(e) => {
            store.undo();
            return Err(e);
        }
    };
    let status = fleet.status()?;
    if scheme.derives_from_master() {
        report_backup(&mut fleet, 1)?;
    }
    if scheme == Scheme::Governed {
        for record in fleet.root_backups()? {
            report_root_backup(&record);
        }
        if args.publish {
            let p = fleet.publish_generation_record(
                "fleet created",
                fleetkey::fleet::governance::AUTO_RECORD_VALIDITY,
            )?;
            eprintln!(
                "generation record {} published: `fleetkey governance export --out DIR` writes it",
                p.sequence
            );
        }
    }
    global.print(&status, |s| {
        format!(
            "created fleet {} ({} scheme) in {}: store {}, key module {}",
            s.fleet.id,
            s.fleet.scheme.name(),
            global.home.display(),
            s.store,
            s.module
        )
    })
}

/// The store `--store` names, and what was written for it before the fleet exists.
struct StoreChoice {
    config: fleetkey::home::StoreConfig,
    /// Files (and the home itself) created here, removed when init fails.
    created: Vec<std::path::PathBuf>,
    created_home: Option<std::path::PathBuf>,
}

impl StoreChoice {
    fn new(
        home: &std::path::Path,
        fleet_id: &str,
        store: &str,
        schema: Option<String>,
    ) -> Result<StoreChoice, CliError> {
        use fleetkey::home::{STORE_FILE, STORE_URL_FILE, StoreConfig, url_has_password};
        let mut choice = StoreChoice {
            config: StoreConfig::Sqlite {
                file: STORE_FILE.into(),
            },
            created: vec![],
            created_home: None,
        };
        if store == "sqlite" {
            if schema.is_some() {
                return Err(CliError::input(
                    "--store-schema",
                    "needs a postgres:// --store",
                ));
            }
            return Ok(choice);
        }
        if !(store.starts_with("postgres://") || store.starts_with("postgresql://")) {
            return Err(CliError::input(
                "--store",
                "use `sqlite` or a URL postgres://user@host:port/database",
            ));
        }
        let schema = schema.unwrap_or_else(|| default_schema(fleet_id));
        if url_has_password(store) {
            if home.join(fleetkey::home::CONFIG_FILE).exists() {
                return Err(CliError::input("--home", "already holds a fleet"));
            }
            if !home.exists() {
                std::fs::create_dir_all(home).map_err(|e| CliError::input("--home", e))?;
                choice.created_home = Some(home.to_owned());
            }
            let path = home.join(STORE_URL_FILE);
            write_private(&path, store.as_bytes()).map_err(|e| CliError::input("--store", e))?;
            choice.created.push(path);
            choice.config = StoreConfig::Postgres {
                schema,
                url: None,
                url_file: Some(STORE_URL_FILE.into()),
            };
        } else {
            choice.config = StoreConfig::Postgres {
                schema,
                url: Some(store.to_owned()),
                url_file: None,
            };
        }
        Ok(choice)
    }

    fn undo(&self) {
        for f in &self.created {
            let _ = std::fs::remove_file(f);
        }
        if let Some(home) = &self.created_home {
            let _ = std::fs::remove_dir(home);
        }
    }
}

/// `fleetkey_<fleet id>`, lowercase, other characters as `_`, at most 63 bytes.
fn default_schema(fleet_id: &str) -> String {
    let mut schema: String = format!("fleetkey_{fleet_id}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    schema.truncate(63);
    schema
}

/// Writes a file only its owner can read, atomically.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[allow(clippy::too_many_arguments)]
fn init_fleet(
    global: &Global,
    module: ModuleArg,
    pkcs11_module: Option<std::path::PathBuf>,
    token_label: Option<String>,
    pin_file: Option<std::path::PathBuf>,
    backup_by_trusted_wrap: bool,
    store: fleetkey::home::StoreConfig,
    options: InitOptions,
) -> Result<Fleet, CliError> {
    Ok(match (module, pkcs11_module, token_label) {
        (ModuleArg::Pkcs11, Some(library), Some(token_label)) => {
            let absolute = |flag: &str, path: std::path::PathBuf| {
                std::path::absolute(&path).map_err(|e| CliError::input(flag, e))
            };
            let module = fleetkey::home::ModuleConfig::Pkcs11 {
                library: absolute("--pkcs11-module", library)?,
                token_label,
                pin_file: pin_file.map(|f| absolute("--pin-file", f)).transpose()?,
                backup_by_trusted_wrap,
            };
            Fleet::init_with(
                &global.home,
                module,
                store,
                options,
                global.access_for_token()?,
            )?
        }
        (ModuleArg::Pkcs11, ..) => {
            return Err(CliError::input(
                "--module pkcs11",
                "needs --pkcs11-module and --token-label",
            ));
        }
        (ModuleArg::Soft, ..) => {
            let module = fleetkey::home::ModuleConfig::Soft {
                file: fleetkey::home::KEY_FILE.into(),
            };
            Fleet::init_with(
                &global.home,
                module,
                store,
                options,
                global.access_for_init()?,
            )?
        }
    })
}

/// Show the fleet: scheme, generations, devices by state, audit length.
#[derive(clap::Args)]
#[command(after_help = "Example:\n  fleetkey --home ./tractors status --json")]
pub(crate) struct StatusArgs {}

pub(crate) fn status(global: &Global, _: StatusArgs) -> Result<(), CliError> {
    let mut fleet = global.open()?;
    let status = fleet.status()?;
    let scheduler = fleet.scheduler_state()?;
    if global.json {
        let mut value = serde_json::to_value(&status).map_err(|e| CliError::input("output", e))?;
        if let Some(map) = value.as_object_mut() {
            map.insert(
                "scheduler".into(),
                serde_json::to_value(&scheduler).map_err(|e| CliError::input("output", e))?,
            );
        }
        return global.print(&value, |_| String::new());
    }
    global.print(&status, |s| {
        let mut out = format!(
            "fleet {} ({} scheme), store {}, key module {}, current generation {}\n",
            s.fleet.id,
            s.fleet.scheme.name(),
            s.store,
            s.module,
            s.fleet
                .current_generation
                .map_or("-".into(), |g| g.to_string())
        );
        for g in &s.generations {
            out.push_str(&format!("  generation {:>3}  {}\n", g.generation, g.state));
        }
        for (state, n) in &s.devices {
            out.push_str(&format!("  devices {:<22} {n}\n", state.name()));
        }
        out.push_str(&format!("  audit events {}", s.audit_events));
        out.push_str(&format!(
            "\n  scheduler: lease {}",
            match (&scheduler.lease, scheduler.held) {
                (Some(l), true) => format!("held by {} until {}", l.holder, l.until),
                (Some(l), false) => format!("free (last holder {})", l.holder),
                (None, _) => "never taken".into(),
            }
        ));
        if let Some(r) = &scheduler.last_run {
            out.push_str(&format!(
                "; last run by {} at {}: {} actions{}",
                r.holder,
                r.finished_at,
                r.actions.len(),
                r.error
                    .as_ref()
                    .map_or(String::new(), |e| format!(", error: {e}"))
            ));
        }
        out
    })
}
