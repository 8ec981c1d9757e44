//! `fleetkey demo`: the walkthrough on the embedded defaults. A fleet is created (SQLite, soft
//! key module), devices are imported and provisioned, software SHEs accept their keys as M1-M3,
//! ECUs roll session keys and exchange SecOC frames across an epoch roll, a replay and forgeries
//! are rejected, a device is refreshed, the fleet rotates, a device is revoked and
//! decommissioned, and the audit chain verifies. Each step prints the CLI command that does the
//! same on a real fleet.

use std::path::PathBuf;
use std::sync::Arc;

use fleetkey::fleet::material::SheUpdate;
use fleetkey::fleet::{
    Access, Fleet, InitOptions, MasterBackup, NewDevice, SecretString, SystemClock,
};
use fleetkey::model::{DeviceFilter, DeviceSerial, Scheme};
use fleetkey::module::soft::WorkFactor;
use fleetkey_core::roll::{Epoch, RollSchedule, Roller};
use fleetkey_core::secoc::{FrameKey, KeyWindow, Profile, Receiver, Sender, WindowConfig};
use fleetkey_core::she::{M1, M2, M3, SlotId, SoftShe, Uid};
use fleetkey_core::{Key128, RollSeed};

use crate::cmd::ctx::Global;
use crate::error::CliError;

/// Run the walkthrough: fleet, SHE key loads, authenticated frames across a key roll, attacks,
/// refresh, rotation, revocation, audit.
#[derive(clap::Args)]
#[command(after_help = "\
Runs in a temporary fleet home unless --keep DIR is given. No passphrase needed: the demo fleet
uses a fixed one.

Example:
  fleetkey demo --devices 4")]
pub(crate) struct Args {
    /// How many ECUs.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(2..=64))]
    devices: u16,
    /// Keep the demo fleet in this (new) directory instead of a temporary one.
    #[arg(long)]
    keep: Option<PathBuf>,
}

const TRANSPORT_KEY: [u8; 16] = *b"factory-transprt";
const PERIOD_MS: u64 = 1_000;

fn demo_error(what: impl std::fmt::Display) -> CliError {
    CliError::failed(format_args!("demo: {what}"))
}

fn step(n: u32, title: &str, cli: &str) {
    println!("\n== {n}. {title}");
    if !cli.is_empty() {
        println!("   $ {cli}");
    }
}

/// An ECU: its software SHE, its sender, its roll seed read back from the SHE.
struct Ecu {
    serial: DeviceSerial,
    she: SoftShe,
    sender: Sender,
    channel: u32,
}

impl Ecu {
    fn roller(&self) -> Result<Roller, CliError> {
        let seed = self
            .she
            .roll_seed_software_only(SlotId::Key2, SlotId::Key3)
            .ok_or_else(|| demo_error("roll seed not loaded"))?;
        Ok(Roller::new(&seed))
    }

    /// Secures a payload at a time (ms on the bus clock) with that epoch's session key.
    fn send(
        &mut self,
        schedule: &RollSchedule,
        now_ms: u64,
        payload: &[u8],
    ) -> Result<Vec<u8>, CliError> {
        let epoch = schedule.epoch_at(now_ms).map_err(demo_error)?;
        let key = FrameKey::new(&self.roller()?.session_key(epoch, self.channel));
        let mut frame = [0u8; 64];
        let secured = self
            .sender
            .secure(&key, payload, &mut frame)
            .map_err(demo_error)?;
        Ok(frame[..secured.len].to_vec())
    }
}

/// The gateway's view of one ECU: the ECU's roll seed (provisioned from the manager), a key
/// window on the ECU's channel, and a receiver for its PDU.
struct Peer {
    roller: Option<Roller>,
    window: KeyWindow,
    receiver: Receiver,
    channel: u32,
}

impl Peer {
    fn new(seed: &RollSeed, profile: Profile, data_id: u16, channel: u32) -> Self {
        Peer {
            roller: Some(Roller::new(seed)),
            window: KeyWindow::new(WindowConfig::default()),
            receiver: Receiver::new(profile, data_id),
            channel,
        }
    }

    fn advance(&mut self, epoch: Epoch) -> Result<(), CliError> {
        if let Some(roller) = &self.roller {
            self.window
                .advance_to(epoch, roller, self.channel)
                .map_err(demo_error)?;
        }
        Ok(())
    }

    fn accepts(&mut self, frame: &[u8]) -> bool {
        self.receiver.verify(&self.window, frame).is_ok()
    }
}

fn load(she: &mut SoftShe, updates: &[SheUpdate]) -> Result<(), CliError> {
    for u in updates {
        let bytes = |h: &str| hex::decode(h).map_err(demo_error);
        let m1 = M1::from_bytes(&bytes(&u.m1)?).map_err(demo_error)?;
        let m2 = M2::from_bytes(&bytes(&u.m2)?).map_err(demo_error)?;
        let m3 = M3::from_bytes(&bytes(&u.m3)?).map_err(demo_error)?;
        let (m4, m5) = she
            .load_key(&m1, &m2, &m3)
            .map_err(|e| demo_error(format_args!("SHE refused {}: {e}", u.slot)))?;
        if hex::encode(m4.to_bytes()) != u.m4 || hex::encode(m5.to_bytes()) != u.m5 {
            return Err(demo_error(format_args!(
                "SHE proof M4/M5 for {} differs from the expected one",
                u.slot
            )));
        }
    }
    Ok(())
}

fn seed_of(keys_hex: &str) -> Result<RollSeed, CliError> {
    let bytes = zeroize::Zeroizing::new(hex::decode(keys_hex).map_err(demo_error)?);
    RollSeed::from_slice(&bytes).ok_or_else(|| demo_error("roll seed length"))
}

fn verdict(ok: bool) -> &'static str {
    if ok { "accepted" } else { "REJECTED" }
}

pub(crate) fn run(_global: &Global, args: Args) -> Result<(), CliError> {
    let temp = tempfile::tempdir().map_err(demo_error)?;
    let home = args
        .keep
        .clone()
        .unwrap_or_else(|| temp.path().join("fleet"));
    let access = Access {
        passphrase: SecretString::from("fleetkey demo passphrase".to_owned()),
        actor: "demo".into(),
        clock: Arc::new(SystemClock),
    };
    let profile = Profile::FD64;
    let n = usize::from(args.devices);

    step(
        1,
        "a derived-scheme fleet on the embedded defaults (SQLite store, soft key module); the master key ceremony splits generation 1's master into 3-of-5 custodian shares before it enters the module",
        "fleetkey --home fleet init --fleet demo --scheme derived --she-transport-key-file transport.hex \\\n        --custodian alice --custodian bob --custodian carol --custodian dave --custodian erin --threshold 3 --shares-dir shares",
    );
    let shares_dir = match &args.keep {
        Some(keep) => keep.with_extension("shares"),
        None => temp.path().join("shares"),
    };
    let ceremony = MasterBackup::shares(
        3,
        ["alice", "bob", "carol", "dave", "erin"]
            .map(String::from)
            .to_vec(),
        &shares_dir,
    );
    let options = InitOptions {
        fleet_id: "demo".into(),
        scheme: Scheme::Derived,
        she_transport_key: Some(Key128::from_bytes(TRANSPORT_KEY)),
        work_factor: WorkFactor::Log2(14),
        backup: ceremony.clone(),
    };
    let mut fleet = Fleet::init(&home, options, access)?;
    println!(
        "   fleet home {}; generation 1's master is in {}",
        home.display(),
        fleetkey::home::KEY_FILE
    );
    for record in fleet.master_backups(1)? {
        println!(
            "   backup: {} of {} shares (custodians {}), master KCV {}, files in {} (in real life each goes offline to its custodian)",
            record["threshold"],
            record["count"],
            record["custodians"]
                .as_array()
                .map(|c| c
                    .iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default(),
            record["master_kcv"].as_str().unwrap_or("-"),
            shares_dir.display()
        );
    }

    step(
        2,
        &format!("{n} ECUs registered, each with its SHE UID"),
        "fleetkey device import devices.csv",
    );
    let mut ecus = Vec::new();
    for i in 0..n {
        let serial = DeviceSerial::new(format!("ECU-{i:04}")).map_err(demo_error)?;
        let mut uid = [0u8; 15];
        uid[13..].copy_from_slice(&u16::try_from(i + 1).unwrap_or(u16::MAX).to_be_bytes());
        fleet.add_device(NewDevice {
            serial: serial.clone(),
            she_uid: Some(uid),
            labels: vec!["bus=powertrain".into()],
        })?;
        let data_id = 0x100 + u16::try_from(i).unwrap_or(0);
        ecus.push(Ecu {
            serial,
            she: SoftShe::new(
                Uid::from_bytes(uid),
                Some(Key128::from_bytes(TRANSPORT_KEY)),
            ),
            sender: Sender::new(profile, data_id),
            channel: u32::from(data_id),
        });
    }

    step(
        3,
        "provisioning: the station loads each SHE with M1-M3; each SHE answers the expected M4-M5",
        "fleetkey device provision ECU-0000 --json",
    );
    let mut peers = Vec::new();
    for ecu in &mut ecus {
        let p = fleet.provision(&ecu.serial)?;
        let updates = p
            .she
            .as_ref()
            .ok_or_else(|| demo_error("no SHE messages"))?;
        load(&mut ecu.she, updates)?;
        println!(
            "   {}: {} SHE slots loaded (counter {}), proofs match",
            ecu.serial,
            updates.len(),
            p.device.revision
        );
        let data_id = ecu.sender.data_id();
        peers.push(Peer::new(
            &seed_of(&p.keys.roll_seed)?,
            profile,
            data_id,
            ecu.channel,
        ));
    }

    step(
        4,
        "the bus: SecOC frames (profile fd64: 64-bit MAC, 16-bit FV) across an epoch roll",
        "",
    );
    let schedule = RollSchedule::new(0, PERIOD_MS).map_err(demo_error)?;
    let payload = *b"rpm=1850;torque=412";
    let mut captured = Vec::new();
    let mut accepted = 0;
    for t in [100u64, 400, 998] {
        for (ecu, peer) in ecus.iter_mut().zip(peers.iter_mut()) {
            peer.advance(schedule.epoch_at(t).map_err(demo_error)?)?;
            let frame = ecu.send(&schedule, t, &payload)?;
            accepted += usize::from(peer.accepts(&frame));
            captured.push(frame);
        }
    }
    println!("   epoch 0: {accepted} of {} frames accepted", 3 * n);
    // A frame secured at 999 ms (epoch 0) arrives after the gateway rolled to epoch 1.
    let late = ecus[0].send(&schedule, 999, &payload)?;
    peers[0].advance(Epoch(1))?;
    println!(
        "   frame secured in epoch 0, checked in epoch 1 (previous key still in the window): {}",
        verdict(peers[0].accepts(&late))
    );
    let fresh = ecus[0].send(&schedule, 1_200, &payload)?;
    println!(
        "   frame secured in epoch 1: {}",
        verdict(peers[0].accepts(&fresh))
    );

    step(5, "attacks on the bus", "");
    println!(
        "   replay of the last accepted frame: {}",
        verdict(peers[0].accepts(&fresh))
    );
    println!(
        "   replay of a frame captured before the roll: {}",
        verdict(peers[0].accepts(&captured[0]))
    );
    let mut forged = ecus[0].send(&schedule, 1_300, &payload)?;
    forged[0] ^= 0x01;
    println!(
        "   frame with one payload bit flipped: {}",
        verdict(peers[0].accepts(&forged))
    );
    let mut outsider = Ecu {
        serial: DeviceSerial::new("ATTACKER").map_err(demo_error)?,
        she: SoftShe::new(Uid::WILDCARD, None),
        sender: Sender::new(profile, ecus[0].sender.data_id()),
        channel: ecus[0].channel,
    };
    let guessed = RollSeed::from_bytes([0x42; 32]);
    let key = FrameKey::new(&Roller::new(&guessed).session_key(Epoch(1), outsider.channel));
    let mut frame = [0u8; 64];
    let s = outsider
        .sender
        .secure(&key, &payload, &mut frame)
        .map_err(demo_error)?;
    println!(
        "   frame from a node without the key: {}",
        verdict(peers[0].accepts(&frame[..s.len]))
    );
    let stats = peers[0].receiver.stats();
    println!(
        "   gateway counters for {}: accepted {}, replay {}, authentication {}, malformed {}, no key {}",
        ecus[0].serial,
        stats.accepted,
        stats.replay,
        stats.authentication,
        stats.malformed,
        stats.no_key
    );

    step(
        6,
        "refresh one ECU: revision 1 reaches it as SHE updates under its current KEY_UPDATE key",
        "fleetkey device refresh ECU-0000 --reason 'workshop visit'",
    );
    let update = fleet.refresh(&ecus[0].serial, "workshop visit")?;
    load(&mut ecus[0].she, &update.she)?;
    let p = fleet.provision(&ecus[0].serial)?;
    let old_roller = peers[0].roller.take();
    peers[0] = Peer::new(
        &seed_of(&p.keys.roll_seed)?,
        profile,
        ecus[0].sender.data_id(),
        ecus[0].channel,
    );
    peers[0].advance(Epoch(2))?;
    let frame = ecus[0].send(&schedule, 2_100, &payload)?;
    println!(
        "   {} now at revision {}: frame under the new seed {}",
        ecus[0].serial,
        update.device.revision,
        verdict(peers[0].accepts(&frame))
    );
    if let Some(old) = old_roller {
        let key = FrameKey::new(&old.session_key(Epoch(2), ecus[0].channel));
        let mut stale = Sender::new(profile, ecus[0].sender.data_id());
        let mut bytes = [0u8; 64];
        let s = stale
            .secure(&key, &payload, &mut bytes)
            .map_err(demo_error)?;
        println!(
            "   frame under the replaced seed: {}",
            verdict(peers[0].accepts(&bytes[..s.len]))
        );
    }

    step(
        7,
        "rotation: generation 2 becomes current, every ECU migrates by SHE update, generation 1 is destroyed",
        "fleetkey generation rotate --reason yearly --threshold 3 --custodian alice ... --custodian erin --shares-dir shares && fleetkey device refresh --all --generation 1 --out updates.jsonl",
    );
    fleet.rotate("yearly rotation", &ceremony)?;
    let mut updates = Vec::new();
    let filter = DeviceFilter {
        generation: Some(1),
        ..Default::default()
    };
    fleet.refresh_all(
        &filter,
        "migrate to generation 2",
        &mut |u| {
            updates.push((u.device.serial.clone(), u.she.clone()));
            Ok(())
        },
        &(),
    )?;
    for (serial, she_updates) in &updates {
        if let Some(ecu) = ecus.iter_mut().find(|e| &e.serial == serial) {
            load(&mut ecu.she, she_updates)?;
        }
    }
    let status = fleet.rotation_status()?;
    println!(
        "   {} ECUs migrated, {} still on older generations",
        updates.len(),
        status.pending
    );
    fleet.destroy_generation(1, "all devices migrated", false)?;
    println!("   generation 1's master destroyed in the key module");

    step(
        8,
        "revoke and decommission an ECU: its key material is destroyed; its frames stop being accepted",
        "fleetkey device revoke ECU-0001 --reason stolen && fleetkey device decommission ECU-0001 --reason scrapped",
    );
    let victim = 1;
    fleet.revoke(&ecus[victim].serial, "ECU stolen")?;
    let gone = fleet.decommission(&ecus[victim].serial, "scrapped")?;
    peers[victim].roller = None;
    peers[victim].window = KeyWindow::new(WindowConfig::default());
    let frame = ecus[victim].send(&schedule, 3_000, &payload)?;
    println!(
        "   {} is {}; its next frame: {}",
        gone.serial,
        gone.state,
        verdict(peers[victim].accepts(&frame))
    );

    step(9, "the audit chain", "fleetkey audit verify");
    let events = fleet.audit_verify()?;
    println!("   {events} events, hash chain intact");

    let status = fleet.status()?;
    println!("\nsummary");
    println!(
        "   fleet {} ({}), store {}, key module {}",
        status.fleet.id,
        status.fleet.scheme.name(),
        status.store,
        status.module
    );
    for g in &status.generations {
        println!("   generation {}: {}", g.generation, g.state);
    }
    for (state, count) in &status.devices {
        println!("   devices {}: {count}", state.name());
    }
    if args.keep.is_some() {
        println!("   the fleet is kept in {}", home.display());
    }
    Ok(())
}
