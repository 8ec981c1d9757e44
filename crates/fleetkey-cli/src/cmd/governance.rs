//! `fleetkey governance publish|show|verify|export|rotate-root|restore-root` and
//! `fleetkey grant issue|deny|list|show`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetkey::fleet::Fleet;
use fleetkey::fleet::governance::{GrantInfo, Published, role_name};
use fleetkey::model::DeviceSerial;
use fleetkey::module::soft::WorkFactor;
use fleetkey_core::governance::{
    self as core_gov, GovernanceState, Record, Role, RootKey, verify_generation_record,
    verify_grant,
};

use crate::cmd::ctx::Global;
use crate::error::CliError;
use crate::input::hex_array;

const DAY: u64 = 24 * 3600;

/// Governance records (governed scheme).
#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// Sign and store the next generation record (rotate, revoke and deny publish one too).
    #[command(
        after_help = "Example:\n  fleetkey governance publish --reason 'monthly refresh' --valid-days 30"
    )]
    Publish(PublishArgs),
    /// The newest generation record, decoded.
    #[command(after_help = "Example:\n  fleetkey governance show --json")]
    Show,
    /// Verify a record file as a device would (pinned root, fleet, window) and print its fields.
    #[command(after_help = "\
The root is the one a device pins: --root-public-key HEX (no fleet needed), or --fleet-home for
the root of the fleet at --home (for a root handover, the fleet's root that signed it). A grant is
verified for --serial.

Examples:
  fleetkey governance verify records/generation-record-3.cose --fleet-home
  fleetkey governance verify grant-1.cose --root-public-key d75a98... --serial ECU-0001")]
    Verify(VerifyArgs),
    /// Write the root handovers, the newest generation record and the grants not denied as
    /// .cose files.
    #[command(after_help = "\
Files: root-handover-<seq>.cose (every root handover, to push first and in order),
generation-record-<seq>.cose and grant-<id>.cose (tagged COSE_Sign1; grants signed by the root
devices pin), written through a temporary file and a rename, for a gateway to push over CAN.

Example:
  fleetkey governance export --out ./records")]
    Export(ExportArgs),
    /// Replace the governance root: the old root signs a handover to a new one, then is destroyed.
    #[command(after_help = "\
The new root is made in the key module beside the old one, with the same backup ceremony as a
master (--custodian ... --threshold M --shares-dir DIR, or --no-backup). The old root signs a
handover record (kind 3) naming the new root, with the next sequence; it is stored with its audit
event, the old root is destroyed in the key module, the new root re-issues every live grant (not
denied, not expired: same id, subject, scope, key and window, audit grant.reissue) and signs a new
generation record. A rotation interrupted after the handover is finished the same way by the next
command that signs or exports. Export and push the handover before any record of the new root: a device takes it once and then
pins the new root. A device that has not taken it before it expires (--valid-days) can never be
moved.

Examples:
  fleetkey governance rotate-root --reason 'yearly root change' \\
      --custodian alice --custodian bob --custodian carol --threshold 2 --shares-dir ./root2-shares
  fleetkey governance rotate-root --reason lab --no-backup --json
  fleetkey governance export --out ./records")]
    RotateRoot(RotateRootArgs),
    /// Rebuild the governance root from M custodian share files into the fleet's key module
    /// (when it has none) or into a soft key file.
    #[command(after_help = "\
Every share's key check value (KCV) is checked, the shares must be of one fleet and root, the
rebuilt seed must match the root KCV and its public key must be the one devices pin (the fleet's,
or --root-public-key). Only then is it imported.

Examples:
  fleetkey --home ./tractors governance restore-root --shares alice.json carol.json --reason 'token replaced'
  FLEETKEY_PASSPHRASE=... fleetkey governance restore-root --shares a.json b.json \\
      --key-file restored.age --root-public-key d75a98...")]
    RestoreRoot(RestoreRootArgs),
}

/// `governance rotate-root`.
#[derive(clap::Args)]
pub(crate) struct RotateRootArgs {
    /// Why (recorded in the audit event).
    #[arg(long)]
    reason: String,
    /// Days the handover is valid from now: the longest a device may stay offline and still
    /// take it.
    #[arg(long, default_value_t = 365)]
    valid_days: u64,
    #[command(flatten)]
    backup: crate::cmd::master::BackupArgs,
}

/// `governance restore-root`.
#[derive(clap::Args)]
pub(crate) struct RestoreRootArgs {
    /// The root's share files (at least M).
    #[arg(long, num_args = 1.., required = true, value_name = "FILE")]
    shares: Vec<PathBuf>,
    /// Restore into this soft key file (opened, or created when missing; passphrase from
    /// FLEETKEY_PASSPHRASE) instead of the fleet at --home.
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// With --key-file: the public key the rebuilt root must have (hex), e.g. from `fleetkey
    /// governance show` or the devices' pin.
    #[arg(long, requires = "key_file")]
    root_public_key: Option<String>,
    /// With --key-file, when it is created: its scrypt work factor (log2); default: age's.
    #[arg(long, requires = "key_file", value_parser = clap::value_parser!(u8).range(10..=22))]
    kdf_log_n: Option<u8>,
    /// Why (recorded in the fleet's audit).
    #[arg(long, default_value = "governance root restored from custodian shares")]
    reason: String,
}

/// `governance publish`.
#[derive(clap::Args)]
pub(crate) struct PublishArgs {
    /// Why (recorded in the audit event).
    #[arg(long)]
    reason: String,
    /// Days the record is valid from now.
    #[arg(long, default_value_t = 365)]
    valid_days: u64,
}

/// `governance verify`.
#[derive(clap::Args)]
pub(crate) struct VerifyArgs {
    /// The record file (tagged COSE_Sign1).
    file: PathBuf,
    /// The pinned root's Ed25519 public key, hex.
    #[arg(
        long,
        conflicts_with = "fleet_home",
        required_unless_present = "fleet_home"
    )]
    root_public_key: Option<String>,
    /// Use the governance root of the fleet at --home.
    #[arg(long)]
    fleet_home: bool,
    /// The device serial a grant is verified for.
    #[arg(long)]
    serial: Option<String>,
}

/// `governance export`.
#[derive(clap::Args)]
pub(crate) struct ExportArgs {
    /// The directory to write into (created if missing).
    #[arg(long)]
    out: PathBuf,
}

/// Technician and operator grants (governed scheme).
#[derive(clap::Subcommand)]
pub(crate) enum GrantCommand {
    /// Issue a grant bound to the subject's Ed25519 public key.
    #[command(after_help = "\
--scope takes serial prefixes (text, or hex:<hex>); '' covers every serial. The public key file
holds the subject's 32-byte Ed25519 public key as hex (or the 32 raw bytes).

Example:
  fleetkey grant issue --subject 'jane@workshop-7' --role technician --scope ECU-00 --scope ECU-01 \\
      --valid-days 7 --public-key-file jane.pub --out grant.cose")]
    Issue(IssueArgs),
    /// Deny a grant: a new generation record lists it, devices refuse it once they accept that.
    #[command(after_help = "Example:\n  fleetkey grant deny 3 --reason 'laptop lost'")]
    Deny(DenyArgs),
    /// Every issued grant.
    #[command(after_help = "Example:\n  fleetkey grant list --json")]
    List,
    /// One grant, with its record as hex.
    #[command(after_help = "Example:\n  fleetkey grant show 3")]
    Show {
        /// The grant id.
        id: u64,
    },
}

/// A grant's role.
#[derive(clap::ValueEnum, Clone, Copy)]
pub(crate) enum RoleArg {
    /// A service technician.
    Technician,
    /// A fleet operator.
    Operator,
}

/// `grant issue`.
#[derive(clap::Args)]
pub(crate) struct IssueArgs {
    /// Who holds the grant.
    #[arg(long)]
    subject: String,
    /// The role.
    #[arg(long, value_enum)]
    role: RoleArg,
    /// Serial prefixes covered (repeat or list; at most 16).
    #[arg(long, num_args = 1.., required = true)]
    scope: Vec<String>,
    /// Days the grant is valid from now [default: the policy's grant_lifetime].
    #[arg(long)]
    valid_days: Option<u64>,
    /// The subject's Ed25519 public key (hex, or 32 raw bytes).
    #[arg(long)]
    public_key_file: PathBuf,
    /// Also write the grant to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// `grant deny`.
#[derive(clap::Args)]
pub(crate) struct DenyArgs {
    /// The grant id.
    id: u64,
    /// Why (recorded).
    #[arg(long)]
    reason: String,
}

fn days(n: u64, flag: &str) -> Result<Duration, CliError> {
    if n == 0 || n > 100 * 366 {
        return Err(CliError::input(flag, "1 to 36600 days"));
    }
    Ok(Duration::from_secs(n * DAY))
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A record's fields as JSON.
fn decoded(bytes: &[u8]) -> Result<serde_json::Value, CliError> {
    let (envelope, record) = core_gov::inspect_unverified(bytes)
        .map_err(|e| CliError::rejected(format!("record: {e}")))?;
    let kid = hex::encode(envelope.kid);
    Ok(match record {
        Record::Generation(g) => serde_json::json!({
            "kind": "generation-record", "kid": kid, "fleet": g.fleet, "sequence": g.sequence,
            "current": g.current, "accepted": g.accepted.as_slice(), "revoked": g.revoked.as_slice(),
            "denied": g.denied.as_slice(), "not_before": g.not_before, "not_after": g.not_after,
        }),
        Record::Grant(g) => serde_json::json!({
            "kind": "grant", "kid": kid, "fleet": g.fleet, "id": g.id, "subject": g.subject,
            "role": role_name(g.role),
            "scope": g.scope.as_slice().iter().map(|p| String::from_utf8_lossy(p)).collect::<Vec<_>>(),
            "subject_key": hex::encode(g.subject_key), "not_before": g.not_before,
            "not_after": g.not_after,
        }),
        Record::Handover(h) => serde_json::json!({
            "kind": "handover", "kid": kid, "fleet": h.fleet, "sequence": h.sequence,
            "new_root_key": hex::encode(h.new_key), "new_root_kid": hex::encode(h.new_kid),
            "not_before": h.not_before, "not_after": h.not_after,
        }),
    })
}

fn human(v: &serde_json::Value) -> String {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k:>12}: {v}"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

fn published(global: &Global, fleet: &mut Fleet, p: &Published) -> Result<(), CliError> {
    let root = fleet.root_info()?;
    let fields = decoded(&p.bytes)?;
    let out = serde_json::json!({"sequence": p.sequence, "record": hex::encode(&p.bytes),
                                 "root_public_key": hex::encode(root.public_key),
                                 "root_kid": hex::encode(root.kid), "root_number": root.number,
                                 "handovers": root.handovers, "fields": fields});
    global.print(&out, |_| {
        format!(
            "generation record {} ({} bytes)\nroot {} kid {} (root {}, {} handover(s) before it)\n{}",
            p.sequence,
            p.bytes.len(),
            hex::encode(root.public_key),
            hex::encode(root.kid),
            root.number,
            root.handovers.len(),
            human(&fields)
        )
    })
}

fn rotate_root(global: &Global, a: &RotateRootArgs) -> Result<(), CliError> {
    let validity = days(a.valid_days, "--valid-days")?;
    let backup = a.backup.resolve_root()?;
    let mut fleet = global.open()?;
    let r = fleet.rotate_root(&a.reason, &backup, validity)?;
    crate::cmd::master::report_root_backup(&r.backup);
    let out = serde_json::json!({
        "old_root_public_key": hex::encode(r.old_public_key),
        "root_public_key": hex::encode(r.new_public_key), "root_kid": hex::encode(r.new_kid),
        "root_number": r.number, "handover_sequence": r.handover.sequence,
        "handover": hex::encode(&r.handover.bytes), "record_sequence": r.record_sequence,
        "reissued_grants": r.reissued_grants,
    });
    global.print(&out, |_| {
        format!(
            "root {} handed over to root {} (public key {}, kid {}) by handover {}; the old root \
             is destroyed in the key module.{}\nExport (`fleetkey governance export`) and push \
             root-handover-{}.cose before any record of the new root.",
            hex::encode(r.old_public_key),
            r.number,
            hex::encode(r.new_public_key),
            hex::encode(r.new_kid),
            r.handover.sequence,
            r.record_sequence
                .map(|s| format!(" Generation record {s} is signed by the new root."))
                .unwrap_or_default(),
            r.handover.sequence,
        ) + &if r.reissued_grants.is_empty() {
            String::new()
        } else {
            format!(
                "\nRe-issued under the new root (same ids and windows): grant(s) {}.",
                r.reissued_grants
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    })
}

fn restore_root(global: &Global, a: &RestoreRootArgs) -> Result<(), CliError> {
    let shares = crate::cmd::master::read_shares(&a.shares)?;
    let (report, into) = match &a.key_file {
        Some(path) => {
            let pinned = a
                .root_public_key
                .as_deref()
                .map(|h| hex_array::<32>("--root-public-key", h))
                .transpose()?;
            let passphrase = global.access_for_init()?.passphrase;
            let work_factor = a.kdf_log_n.map_or(WorkFactor::AgeDefault, WorkFactor::Log2);
            let report = fleetkey::restore::restore_root_into_key_file(
                path,
                &passphrase,
                work_factor,
                &shares,
                pinned.as_ref(),
            )?;
            (report, path.display().to_string())
        }
        None => {
            let mut fleet = global.open()?;
            let report = fleet.restore_root(&shares, &a.reason)?;
            (
                report,
                format!("the key module of {}", global.home.display()),
            )
        }
    };
    global.print(&report, |r| {
        format!(
            "restored governance root {} of fleet {} into {into}: the rebuilt root matches KCV {} \
             and its public key {} (kid {})",
            r.root, r.fleet, r.root_kcv, r.public_key, r.kid
        )
    })
}

pub(crate) fn run(global: &Global, command: Command) -> Result<(), CliError> {
    match command {
        Command::Publish(a) => {
            let validity = days(a.valid_days, "--valid-days")?;
            let mut fleet = global.open()?;
            let p = fleet.publish_generation_record(&a.reason, validity)?;
            published(global, &mut fleet, &p)
        }
        Command::Show => {
            let mut fleet = global.open()?;
            match fleet.latest_generation_record()? {
                Some(p) => published(global, &mut fleet, &p),
                None => {
                    let root = fleet.root_info()?;
                    Err(CliError::failed("no generation record published yet").hint(format!(
                        "`fleetkey governance publish --reason ...`; the root devices pin is {} \
                         (kid {}, root {})",
                        hex::encode(root.public_key),
                        hex::encode(root.kid),
                        root.number
                    )))
                }
            }
        }
        Command::Verify(a) => verify(global, &a),
        Command::RotateRoot(a) => rotate_root(global, &a),
        Command::RestoreRoot(a) => restore_root(global, &a),
        Command::Export(a) => {
            let mut fleet = global.open()?;
            let files = fleet.export_records(&a.out)?;
            global.print(&files, |fs| {
                fs.iter()
                    .map(|f| format!("wrote {}", f.display()))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
    }
}

fn verify(global: &Global, a: &VerifyArgs) -> Result<(), CliError> {
    let field = a.file.display().to_string();
    let bytes = crate::input::file_bytes(&field, &a.file, core_gov::MAX_RECORD_LEN)?;
    // Bytes that are not a record at all are bad input (exit 2); a record that does not verify
    // is a failed check (exit 1, below).
    if let Err(
        e @ (core_gov::GovernanceError::Malformed(_) | core_gov::GovernanceError::TooLarge(_)),
    ) = core_gov::inspect_unverified(&bytes)
    {
        return Err(
            CliError::input(&field, format_args!("not a governance record ({e})"))
                .hint("give a record written by `fleetkey governance publish` or `export`"),
        );
    }
    let (public, fleet_id) = match &a.root_public_key {
        Some(h) => {
            let public: [u8; 32] = hex_array("--root-public-key", h)?;
            let (_, record) = core_gov::inspect_unverified(&bytes)
                .map_err(|e| CliError::rejected(format!("record: {e}")))?;
            let fleet = match record {
                Record::Generation(g) => g.fleet,
                Record::Grant(g) => g.fleet,
                Record::Handover(h) => h.fleet,
            };
            (public, fleet.to_owned())
        }
        None => {
            let mut fleet = global.open()?;
            let (mut public, _) = fleet.governance_root()?;
            // A handover is signed by the root before it: the one of the fleet's roots (each
            // has a `governance.root_backup` audit event) whose kid the record names.
            if let Ok((envelope, Record::Handover(_))) = core_gov::inspect_unverified(&bytes) {
                for backup in fleet.root_backups()? {
                    if let Some(Ok(key)) = backup["public_key"]
                        .as_str()
                        .map(|h| hex_array::<32>("root", h))
                        && fleetkey::governance::key_id(&key)[..] == *envelope.kid
                    {
                        public = key;
                    }
                }
            }
            (public, fleet.config().fleet_id.clone())
        }
    };
    let kid = fleetkey::governance::key_id(&public);
    let rejected =
        |e: core_gov::GovernanceError| CliError::rejected(format!("record refused: {e}"));
    let root = RootKey::new(public, &kid).map_err(rejected)?;
    let mut state = GovernanceState::new(&fleet_id, root).map_err(rejected)?;
    let now = now_s();
    let (_, record) = core_gov::inspect_unverified(&bytes).map_err(rejected)?;
    match record {
        Record::Generation(_) => {
            verify_generation_record(&mut state, &bytes, now).map_err(rejected)?;
        }
        Record::Grant(_) => {
            let serial = a.serial.as_deref().ok_or_else(|| {
                CliError::input("--serial", "a grant is verified for a device serial")
            })?;
            let serial = DeviceSerial::parse(serial).map_err(|e| CliError::input("--serial", e))?;
            verify_grant(&state, &bytes, serial.as_bytes(), now).map_err(rejected)?;
        }
        Record::Handover(_) => {
            core_gov::verify_handover(&mut state, &bytes, now).map_err(rejected)?;
        }
    }
    let fields = decoded(&bytes)?;
    let out = serde_json::json!({"verified": true, "fields": fields});
    global.print(&out, |_| format!("verified\n{}", human(&fields)))
}

fn grant_text(g: &GrantInfo) -> String {
    format!(
        "grant {} {} {} scope [{}] valid {}..{}{}",
        g.id,
        g.role,
        g.subject,
        g.scope.join(", "),
        g.not_before,
        g.not_after,
        if g.denied { "  [denied]" } else { "" }
    )
}

fn public_key(path: &Path) -> Result<[u8; 32], CliError> {
    let field = "--public-key-file";
    let raw = crate::input::file_bytes(field, path, crate::input::MAX_KEY_TEXT)?;
    if raw.trim_ascii().is_empty() {
        return Err(CliError::input(
            field,
            "empty, expected 32 bytes or 64 hex characters",
        ));
    }
    if let Ok(bytes) = <[u8; 32]>::try_from(raw.as_slice()) {
        return Ok(bytes);
    }
    let text = std::str::from_utf8(&raw)
        .map_err(|_| CliError::input(field, "neither 32 bytes nor 64 hex characters"))?;
    hex_array(field, text)
}

pub(crate) fn grant(global: &Global, command: GrantCommand) -> Result<(), CliError> {
    let mut fleet = global.open()?;
    match command {
        GrantCommand::Issue(a) => {
            let validity = match a.valid_days {
                Some(n) => days(n, "--valid-days")?,
                None => fleet.grant_validity(None)?,
            };
            let key = public_key(&a.public_key_file)?;
            let role = match a.role {
                RoleArg::Technician => Role::Technician,
                RoleArg::Operator => Role::Operator,
            };
            let mut scope = Vec::new();
            for s in &a.scope {
                scope.push(match s.strip_prefix("hex:") {
                    Some(h) => crate::input::hex_bytes("--scope", h)?,
                    None => s.as_bytes().to_vec(),
                });
            }
            let (id, bytes) = fleet.issue_grant(&a.subject, role, &scope, validity, key)?;
            if let Some(out) = &a.out {
                std::fs::write(out, &bytes)
                    .map_err(|e| CliError::input(&out.display().to_string(), e))?;
            }
            let info = fleet.grant(id)?;
            global.print(&info, grant_text)
        }
        GrantCommand::Deny(a) => {
            let p = fleet.deny_grant(a.id, &a.reason)?;
            let out = serde_json::json!({"denied": a.id, "sequence": p.sequence, "record": hex::encode(&p.bytes)});
            global.print(&out, |_| {
                format!(
                    "grant {} denied; generation record {} lists it (export and push it)",
                    a.id, p.sequence
                )
            })
        }
        GrantCommand::List => {
            let grants = fleet.grants()?;
            global.print(&grants, |gs| {
                gs.iter().map(grant_text).collect::<Vec<_>>().join("\n")
            })
        }
        GrantCommand::Show { id } => {
            let g = fleet.grant(id)?;
            global.print(&g, |g| format!("{}\nrecord: {}", grant_text(g), g.record))
        }
    }
}
