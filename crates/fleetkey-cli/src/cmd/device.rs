//! `fleetkey device ...`: register, import, provision, refresh, lifecycle, show, list.

use std::path::PathBuf;

use fleetkey::fleet::{DeliveryKind, Output};
use fleetkey::fleet::{DeliveryReport, Fleet, KeyUpdate, NewDevice, OutputFile};
use fleetkey::lifecycle::State;
use fleetkey::model::{DeviceFilter, DeviceRecord, DeviceSerial, SheUid};

use crate::cmd::ctx::{Bar, Global};
use crate::error::CliError;
use crate::input;

/// Device commands.
#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// Register one device (pre-active).
    #[command(
        after_help = "Example:\n  fleetkey device add ECU-0001 --she-uid 000000000000000000000000001234 --label line=3"
    )]
    Add {
        /// Serial: text, or hex:<hex> for raw bytes (1 to 40 bytes).
        serial: String,
        /// SHE UID, 30 hex characters.
        #[arg(long)]
        she_uid: Option<String>,
        /// A label (repeatable), used by filters.
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// Register devices from a CSV file (header: serial[,she_uid][,labels]; labels separated by ';').
    #[command(after_help = "\
The whole file is checked first: a bad row refuses the import with its line number and nothing is
written. A rerun after an interruption skips the devices already registered. With --provision-out,
every line is delivered at least once: a rerun first sends again the lines a killed run may not
have handed over (docs/manager.md, section Bulk work and interruption).

Example:
  fleetkey device import devices.csv --provision-out keys.jsonl")]
    Import {
        /// The CSV file.
        file: PathBuf,
        /// Also provision: register the devices active and append their key material to this
        /// file as JSON lines (key material: protect it).
        #[arg(long)]
        provision_out: Option<PathBuf>,
        #[command(flatten)]
        batch: BatchArgs,
    },
    /// Key material for a provisioning station, and the SHE initial load (M1-M5).
    #[command(after_help = "\
Prints key material: send it only to the station. A pre-active device becomes active; an active
one gets the same material again. With --all, lines go out at least once: a rerun after a kill
first sends again what the killed run may not have handed over; a station keeps one line per
serial (docs/manager.md, section Bulk work and interruption).

Examples:
  fleetkey device provision ECU-0001 --json
  fleetkey device provision --all --out keys.jsonl")]
    Provision {
        /// The device.
        #[arg(required_unless_present = "all")]
        serial: Option<String>,
        /// Every pre-active device (matching the filters).
        #[arg(long, conflicts_with = "serial", requires = "out")]
        all: bool,
        /// With --all: append JSON lines here (a file, or a FIFO a station reads).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        batch: BatchArgs,
    },
    /// Bump the key revision (and migrate to the current generation); prints the SHE updates.
    #[command(after_help = "\
With --all, updates go out at least once: a rerun after a kill first sends again what the killed
run may not have handed over (a file: not yet synced; a FIFO: not yet read); a tool keeps, per
serial, the line with the highest generation and revision (docs/manager.md).

Examples:
  fleetkey device refresh ECU-0001 --reason 'workshop visit'
  fleetkey device refresh --all --generation 1 --out updates.jsonl    (rotation: migrate generation 1)")]
    Refresh {
        /// The device.
        #[arg(required_unless_present = "all")]
        serial: Option<String>,
        /// Every active device matching the filters.
        #[arg(long, conflicts_with = "serial", requires = "out")]
        all: bool,
        /// With --all: append the SHE updates here as JSON lines.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Why.
        #[arg(long, default_value = "refresh")]
        reason: String,
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        batch: BatchArgs,
    },
    /// Active -> suspended.
    #[command(after_help = "Example:\n  fleetkey device suspend ECU-0001 --reason 'in workshop'")]
    Suspend(Lifecycle),
    /// Suspended -> active.
    #[command(
        after_help = "Example:\n  fleetkey device resume ECU-0001 --reason 'back in service'"
    )]
    Resume(Lifecycle),
    /// Mark the device's keys compromised (revoked).
    #[command(after_help = "Example:\n  fleetkey device revoke ECU-0001 --reason 'ECU stolen'")]
    Revoke(Lifecycle),
    /// Take the device out of the fleet and destroy its key material.
    #[command(after_help = "Example:\n  fleetkey device decommission ECU-0001 --reason 'scrapped'")]
    Decommission(Lifecycle),
    /// One device.
    #[command(after_help = "Example:\n  fleetkey device show ECU-0001 --json")]
    Show {
        /// The device.
        serial: String,
    },
    /// Devices, in serial order.
    #[command(
        after_help = "Example:\n  fleetkey device list --state active --generation 1 --label line=3 --limit 50"
    )]
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Start after this serial (paging).
        #[arg(long)]
        after: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

/// A lifecycle command's arguments.
#[derive(clap::Args)]
pub(crate) struct Lifecycle {
    /// The device.
    serial: String,
    /// Why (recorded with the change and in the audit).
    #[arg(long)]
    reason: String,
}

/// The batch size of bulk work.
#[derive(clap::Args, Default)]
pub(crate) struct BatchArgs {
    /// Devices per transaction (1 to 100000): a kill loses no work, a rerun continues after the
    /// last committed batch.
    #[arg(long, default_value_t = fleetkey::fleet::BATCH as u32, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    batch: u32,
}

impl BatchArgs {
    fn apply(&self, fleet: &mut Fleet) {
        fleet.set_batch_size(self.batch as usize);
    }
}

/// Device filters.
#[derive(clap::Args, Default)]
pub(crate) struct FilterArgs {
    /// Only devices in this state (pre-active, active, suspended, deactivated, compromised, destroyed, destroyed-compromised).
    #[arg(long)]
    state: Option<String>,
    /// Only devices on this generation.
    #[arg(long)]
    generation: Option<u32>,
    /// Only devices with this label (repeatable: all must match).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Only serials starting with this text.
    #[arg(long)]
    prefix: Option<String>,
}

impl FilterArgs {
    fn filter(&self) -> Result<DeviceFilter, CliError> {
        let state = match &self.state {
            Some(name) => Some(State::from_name(name).ok_or_else(|| {
                CliError::input("--state", format_args!("{name:?} is not a state"))
                    .hint("pre-active, active, suspended, deactivated, compromised, destroyed, destroyed-compromised")
            })?),
            None => None,
        };
        Ok(DeviceFilter {
            state,
            generation: self.generation,
            labels: self.labels.clone(),
            serial_prefix: self.prefix.as_ref().map(|p| p.as_bytes().to_vec()),
        })
    }
}

fn serial(text: &str) -> Result<DeviceSerial, CliError> {
    DeviceSerial::parse(text).map_err(|e| CliError::input("serial", e))
}

fn append(flag: &str, path: &std::path::Path) -> Result<OutputFile, CliError> {
    OutputFile::append(path)
        .map_err(|e| CliError::input(flag, format_args!("{}: {e}", path.display())))
}

/// What a bulk run's delivery did, in words (empty when there is nothing to say).
fn delivery_text(d: &DeliveryReport, path: &std::path::Path) -> String {
    let mut out = String::new();
    if d.resent > 0 {
        out.push_str(&format!(
            "\nre-sent {} lines an interrupted run owed (before this run's own)",
            d.resent
        ));
    }
    if d.dropped > 0 {
        out.push_str(&format!(
            "\n{} owed lines not re-sent: their devices are no longer active",
            d.dropped
        ));
    }
    if d.unconfirmed_batches > 0 {
        out.push_str(&format!(
            "\nwarning: the reader of {} stopped taking lines; {} batches are kept and sent again by the next run of this command",
            path.display(),
            d.unconfirmed_batches
        ));
    }
    out
}

fn line(d: &DeviceRecord) -> String {
    format!(
        "{:<24} {:<22} gen {:>3} rev {:>4}  {}",
        d.serial.to_string(),
        d.state.name(),
        d.generation,
        d.revision,
        d.labels.join(";")
    )
}

fn updates_text(u: &KeyUpdate) -> String {
    let mut out = format!(
        "{}: generation {} rev {} -> generation {} rev {}; send these SHE updates in order:\n",
        u.device.serial, u.from.0, u.from.1, u.device.generation, u.device.revision
    );
    for s in &u.she {
        out.push_str(&format!(
            "  {:<15} (auth {}) M1 {} M2 {} M3 {}\n",
            s.slot, s.auth_slot, s.m1, s.m2, s.m3
        ));
    }
    out.trim_end().to_owned()
}

pub(crate) fn run(global: &Global, command: Command) -> Result<(), CliError> {
    let mut fleet: Fleet = global.open()?;
    match command {
        Command::Add {
            serial: s,
            she_uid,
            labels,
        } => {
            let she_uid: Option<SheUid> = she_uid
                .map(|h| input::hex_array::<15>("--she-uid", &h))
                .transpose()?;
            let record = fleet.add_device(NewDevice {
                serial: serial(&s)?,
                she_uid,
                labels,
            })?;
            global.print(&record, |d| format!("registered {}", line(d)))
        }
        Command::Import {
            file,
            provision_out,
            batch,
        } => {
            let bar = Bar::new();
            batch.apply(&mut fleet);
            let mut out = provision_out
                .as_ref()
                .map(|p| append("--provision-out", p))
                .transpose()?;
            let writer: Option<&mut dyn Output> = match out.as_mut() {
                Some(w) => Some(w),
                None => None,
            };
            let report = fleet.import_csv(&file, writer, &bar)?;
            let owed = if provision_out.is_none() {
                fleet.owed_lines(DeliveryKind::Provisioning)?
            } else {
                0
            };
            global.print(&report, |r| {
                let mut text = format!(
                    "{} rows: {} registered, {} already registered, {} provisioned",
                    r.rows, r.added, r.already_present, r.provisioned
                );
                if let Some(p) = &provision_out {
                    text.push_str(&delivery_text(&r.delivery, p));
                }
                if owed > 0 {
                    text.push_str(&format!("\nnote: {owed} batches of key material from an interrupted provisioning run are still owed; they are sent by the next `device import --provision-out F` or `device provision --all --out F`"));
                }
                text
            })
        }
        Command::Provision {
            serial: Some(s), ..
        } => {
            let p = fleet.provision(&serial(&s)?)?;
            global.print(&p, |p| {
                let mut out = format!(
                    "{} (generation {}, revision {}, {})\n  auth       {}\n  key-update {}\n  roll-seed  {}",
                    p.device.serial, p.device.generation, p.device.revision, p.device.state,
                    p.keys.auth, p.keys.key_update, p.keys.roll_seed
                );
                match &p.she {
                    Some(updates) => {
                        for s in updates {
                            out.push_str(&format!("\n  SHE {:<15} (auth {}) M1 {} M2 {} M3 {}", s.slot, s.auth_slot, s.m1, s.m2, s.m3));
                        }
                    }
                    None => out.push_str("\n  (no SHE messages: the fleet has no transport key, or the device is past revision 0)"),
                }
                out
            })
        }
        Command::Provision {
            out, filter, batch, ..
        } => {
            let path = out.ok_or_else(|| CliError::input("--out", "required with --all"))?;
            batch.apply(&mut fleet);
            let filter = filter.filter()?;
            let mut writer = append("--out", &path)?;
            let r = fleet.provision_all(&filter, &mut writer, &Bar::new())?;
            let json =
                serde_json::json!({"provisioned": r.devices, "out": path, "delivery": r.delivery});
            global.print(&json, |_| {
                format!(
                    "provisioned {} devices; key material appended to {}{}",
                    r.devices,
                    path.display(),
                    delivery_text(&r.delivery, &path)
                )
            })
        }
        Command::Refresh {
            serial: Some(s),
            reason,
            ..
        } => {
            let u = fleet.refresh(&serial(&s)?, &reason)?;
            global.print(&u, updates_text)
        }
        Command::Refresh {
            out,
            reason,
            filter,
            batch,
            ..
        } => {
            let path = out.ok_or_else(|| CliError::input("--out", "required with --all"))?;
            batch.apply(&mut fleet);
            let filter = filter.filter()?;
            let mut writer = append("--out", &path)?;
            let r = fleet.refresh_all(&filter, &reason, &mut writer, &Bar::new())?;
            let json =
                serde_json::json!({"refreshed": r.devices, "out": path, "delivery": r.delivery});
            global.print(&json, |_| {
                format!(
                    "refreshed {} devices; SHE updates appended to {}{}",
                    r.devices,
                    path.display(),
                    delivery_text(&r.delivery, &path)
                )
            })
        }
        Command::Suspend(a) => lifecycle(global, &mut fleet, a, Fleet::suspend),
        Command::Resume(a) => lifecycle(global, &mut fleet, a, Fleet::resume),
        Command::Revoke(a) => lifecycle(global, &mut fleet, a, Fleet::revoke),
        Command::Decommission(a) => lifecycle(global, &mut fleet, a, Fleet::decommission),
        Command::Show { serial: s } => {
            let d = fleet.device(&serial(&s)?)?;
            global.print(&d, |d| {
                format!(
                    "{}\n  state      {} (since {} by {}: {})\n  generation {}\n  revision   {}\n  she uid    {}\n  labels     {}\n  stored key {}",
                    d.serial,
                    d.state,
                    d.changed.at,
                    d.changed.actor,
                    d.changed.reason,
                    d.generation,
                    d.revision,
                    d.she_uid.map_or("-".into(), hex::encode),
                    d.labels.join(";"),
                    if d.wrapped_root.is_some() { "wrapped under the key module's KEK" } else { "none" }
                )
            })
        }
        Command::List {
            filter,
            after,
            limit,
        } => {
            let after = after.as_deref().map(serial).transpose()?;
            let devices = fleet.devices(&filter.filter()?, after.as_ref(), limit)?;
            global.print(&devices, |ds| {
                ds.iter().map(line).collect::<Vec<_>>().join("\n")
            })
        }
    }
}

fn lifecycle(
    global: &Global,
    fleet: &mut Fleet,
    args: Lifecycle,
    op: fn(&mut Fleet, &DeviceSerial, &str) -> Result<DeviceRecord, fleetkey::Error>,
) -> Result<(), CliError> {
    let record = op(fleet, &serial(&args.serial)?, &args.reason)?;
    global.print(&record, |d| format!("{} is now {}", d.serial, d.state))
}
