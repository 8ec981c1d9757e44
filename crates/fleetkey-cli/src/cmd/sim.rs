//! `fleetkey sim`: the CAN FD fleet simulator (docs/simulator.md). `run` runs the whole network
//! in this process; `gateway` and `ecu` are nodes of one bus over UDP on loopback, one process
//! each. Also `fleetkey bench bus`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use fleetkey::module::soft::WorkFactor;
use fleetkey_core::secoc::{FrameKey, KeyWindow, Profile, Receiver, Sender, WindowConfig};
use fleetkey_core::{Epoch, RollSchedule, RollSeed, Roller};
use fleetkey_sim::bus::{Bus, CanFrame, SimBus, SimClock, UdpBus};
use fleetkey_sim::ecu::{Ecu, EcuState};
use fleetkey_sim::network::{self, Factory, NetworkSpec, provision_network};
use fleetkey_sim::scenario::{self, Options, Quiet};
use serde::Serialize;

use fleetkey::fleet::Progress as _;

use crate::cmd::ctx::{Bar, Global};
use crate::error::CliError;
use crate::input;

/// `fleetkey sim` subcommands.
#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// The whole network in this process: a governed fleet, the gateway, N ECUs and an attacker
    /// through the walkthrough's story; prints the summary (`--json` for scripts).
    #[command(after_help = "\
Examples:
  fleetkey sim run --ecus 8
  fleetkey sim run --json --keep sim-fleet     # then: fleetkey can verify sim-fleet.capture.log --home sim-fleet")]
    Run(RunArgs),
    /// The gateway as one process on a UDP loopback bus: provisions the network in the fleet at
    /// --home, writes each ECU's factory file, distributes keys, verifies every PDU.
    #[command(after_help = "\
The fleet must be governed and have a SHE transport key (fleetkey init --scheme governed
--she-transport-key-file F). Passphrase from FLEETKEY_PASSPHRASE.

Example (three shells):
  fleetkey --home fleet sim gateway --ecus 2 --bind 127.0.0.1:47000 --peer 127.0.0.1:47001 \\
      --peer 127.0.0.1:47002 --she-transport-key-file transport.hex --factory-dir factory --seconds 10
  fleetkey sim ecu --factory factory/ECU-0000.json --bind 127.0.0.1:47001 --peer 127.0.0.1:47000 --peer 127.0.0.1:47002 --seconds 8
  fleetkey sim ecu --factory factory/ECU-0001.json --bind 127.0.0.1:47002 --peer 127.0.0.1:47000 --peer 127.0.0.1:47001 --seconds 8")]
    Gateway(GatewayArgs),
    /// One ECU as one process on a UDP loopback bus, from its factory file: it receives its
    /// keys from the gateway over ISO-TP and sends its PDU every cycle.
    #[command(after_help = "\
Example:
  fleetkey sim ecu --factory factory/ECU-0000.json --bind 127.0.0.1:47001 --peer 127.0.0.1:47000 --seconds 8")]
    Ecu(EcuArgs),
}

/// `fleetkey sim run`.
#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// How many ECUs.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(4..=64))]
    ecus: u16,
    /// Seconds of bus traffic per traffic step.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=600))]
    seconds: u64,
    /// Keep the fleet in this (new) directory, and the capture in DIR.capture.log.
    #[arg(long)]
    keep: Option<PathBuf>,
}

/// Bus endpoints of a UDP node.
#[derive(clap::Args)]
pub(crate) struct UdpArgs {
    /// This node's UDP address (127.0.0.1:PORT).
    #[arg(long)]
    bind: SocketAddr,
    /// Another node's address (repeat for each).
    #[arg(long)]
    peer: Vec<SocketAddr>,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
}

/// `fleetkey sim gateway`.
#[derive(clap::Args)]
pub(crate) struct GatewayArgs {
    #[command(flatten)]
    udp: UdpArgs,
    /// How many ECUs on the network.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    ecus: u16,
    /// Network name (device labels, gateway serial GW-NAME).
    #[arg(long, default_value = "udp")]
    network: String,
    /// The fleet's SHE transport key, 32 hex characters (written into the factory files).
    #[arg(long, value_name = "FILE")]
    she_transport_key_file: PathBuf,
    /// Where to write ECU-NNNN.json factory files.
    #[arg(long, value_name = "DIR")]
    factory_dir: PathBuf,
    /// Stop early once every ECU has confirmed its keys and N of its frames were accepted.
    #[arg(long, value_name = "N")]
    until_frames: Option<u64>,
}

/// `fleetkey sim ecu`.
#[derive(clap::Args)]
pub(crate) struct EcuArgs {
    #[command(flatten)]
    udp: UdpArgs,
    /// This ECU's factory file (written by `fleetkey sim gateway`).
    #[arg(long, value_name = "FILE")]
    factory: PathBuf,
    /// Stop after sending N frames (and one more second to answer the gateway).
    #[arg(long, value_name = "N")]
    frames: Option<u64>,
}

pub(crate) fn run(global: &Global, command: Command) -> Result<(), CliError> {
    match command {
        Command::Run(args) => sim_run(global, args),
        Command::Gateway(args) => gateway(global, args),
        Command::Ecu(args) => ecu(global, args),
    }
}

fn sim_error(what: impl std::fmt::Display) -> CliError {
    CliError::failed(format_args!("sim: {what}"))
}

fn sim_run(global: &Global, args: RunArgs) -> Result<(), CliError> {
    let temp = tempfile::tempdir().map_err(sim_error)?;
    let home = args
        .keep
        .clone()
        .unwrap_or_else(|| temp.path().join("fleet"));
    if home.exists() {
        return Err(
            CliError::input("--keep", format_args!("{} exists", home.display()))
                .hint("give a new directory"),
        );
    }
    let capture = match &args.keep {
        Some(keep) => keep.with_extension("capture.log"),
        None => temp.path().join("capture.log"),
    };
    let options = Options {
        home,
        capture,
        ecus: args.ecus,
        work_factor: WorkFactor::Log2(14),
        seconds: args.seconds,
    };
    let summary = scenario::walkthrough(&options, &mut Quiet).map_err(sim_error)?;
    global.print(&summary, |s| {
        let mut t = crate::cmd::demo::summary_table(s);
        if args.keep.is_none() {
            t.push_str("   (temporary: use --keep DIR to keep the fleet and the capture)\n");
        }
        t
    })
}

fn now_ms() -> u64 {
    fleetkey_sim::bus::system_now_us() / 1000
}

#[derive(Serialize)]
struct MemberReport {
    serial: String,
    pdu: u16,
    seed: Option<(u32, u32)>,
    accepted: u64,
    replay: u64,
    authentication: u64,
    pending_updates: usize,
}

fn gateway(global: &Global, args: GatewayArgs) -> Result<(), CliError> {
    let transport =
        input::key_from_file::<16>("--she-transport-key-file", &args.she_transport_key_file)?;
    let mut fleet = global.open()?;
    // Separate processes on a loaded machine answer slower than in-process nodes: retry late.
    let spec = NetworkSpec {
        skew_ms: vec![0],
        retry_ms: 3000,
        ..NetworkSpec::new(&args.network, args.ecus, *transport)
    };
    let mut p = provision_network(&mut fleet, &spec).map_err(sim_error)?;
    std::fs::create_dir_all(&args.factory_dir).map_err(|e| {
        CliError::input(
            "--factory-dir",
            format_args!("{} ({e})", args.factory_dir.display()),
        )
    })?;
    for config in &p.ecus {
        let factory = Factory::new(config, &transport);
        let path = args.factory_dir.join(format!("{}.json", config.serial));
        let text = serde_json::to_string_pretty(&factory).map_err(sim_error)?;
        // Key material (the transport key): owner-only. Written whole, then renamed: an ECU
        // process never reads half a file.
        let tmp = path.with_extension("json.tmp");
        write_private(&tmp, text.as_bytes())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| {
                CliError::input("--factory-dir", format_args!("{} ({e})", path.display()))
            })?;
    }
    let record = network::latest_record(&mut fleet).map_err(sim_error)?;
    p.gateway.push_record(&record.bytes);
    let ((generation, revision), seed) =
        network::group_seed(&mut fleet, &p.gateway_serial).map_err(sim_error)?;
    p.gateway.set_group_seed(generation, revision, &seed);
    let mut bus = UdpBus::bind(args.udp.bind, args.udp.peer.clone()).map_err(sim_error)?;
    let deadline = Instant::now() + Duration::from_secs_f64(args.udp.seconds.max(0.1));
    let mut next_beacon = 0;
    let bar = Bar::new();
    bar.start("PDUs verified by the gateway", 0);
    let mut shown = 0;
    while Instant::now() < deadline {
        let accepted = p.gateway.stats().accepted;
        bar.advance(accepted - shown);
        shown = accepted;
        if let Some(n) = args.until_frames
            && p.gateway.is_settled()
            && p.ecus
                .iter()
                .all(|c| p.gateway.member_stats(c.pdu).accepted >= n)
        {
            break;
        }
        if now_ms() >= next_beacon {
            p.gateway.send_beacon(&mut bus).map_err(sim_error)?;
            next_beacon = now_ms() + spec.period_ms;
        }
        if let Some(r) = bus
            .recv_timeout(Duration::from_millis(5))
            .map_err(sim_error)?
        {
            // Hand the frame to the gateway through a one-frame bus view.
            let mut one = OneFrame {
                bus: &mut bus,
                frame: Some(r),
            };
            p.gateway.poll(&mut one).map_err(sim_error)?;
        } else {
            p.gateway.poll(&mut bus).map_err(sim_error)?;
        }
    }
    bar.finish();
    let members: Vec<MemberReport> = p
        .ecus
        .iter()
        .map(|c| {
            let s = p.gateway.member_stats(c.pdu);
            MemberReport {
                serial: c.serial.clone(),
                pdu: c.pdu,
                seed: p.gateway.member_seed(&c.serial),
                accepted: s.accepted,
                replay: s.replay,
                authentication: s.authentication,
                pending_updates: p.gateway.pending(&c.serial),
            }
        })
        .collect();
    let report = serde_json::json!({
        "network": args.network,
        "group_seed": [generation, revision],
        "members": members,
        "updates": p.gateway.counters(),
        "malformed_datagrams": bus.malformed,
    });
    global.print(&report, |_| {
        let mut t = format!(
            "gateway {} (group seed {generation}.{revision}), {} beacons, {} updates confirmed\n",
            p.gateway_serial,
            p.gateway.counters().beacons,
            p.gateway.counters().confirmed
        );
        for m in &members {
            t.push_str(&format!(
                "   {} pdu {:#05x}: seed {:?}, {} frames accepted, {} replay, {} authentication, {} updates pending\n",
                m.serial, m.pdu, m.seed, m.accepted, m.replay, m.authentication, m.pending_updates
            ));
        }
        t
    })?;
    if members.iter().any(|m| m.seed.is_none()) {
        return Err(CliError::rejected("an ECU never confirmed the group seed")
            .hint("start every `fleetkey sim ecu` process while the gateway runs"));
    }
    Ok(())
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// A bus view that yields one frame already received, then reads the real bus.
struct OneFrame<'a> {
    bus: &'a mut UdpBus,
    frame: Option<fleetkey_sim::bus::Received>,
}

impl Bus for OneFrame<'_> {
    fn send(&mut self, frame: &CanFrame) -> Result<(), fleetkey_sim::bus::BusError> {
        self.bus.send(frame)
    }

    fn try_recv(
        &mut self,
    ) -> Result<Option<fleetkey_sim::bus::Received>, fleetkey_sim::bus::BusError> {
        match self.frame.take() {
            Some(f) => Ok(Some(f)),
            None => self.bus.try_recv(),
        }
    }

    fn now_us(&self) -> u64 {
        self.bus.now_us()
    }
}

fn ecu(global: &Global, args: EcuArgs) -> Result<(), CliError> {
    let text = input::file_text("--factory", &args.factory, input::MAX_SMALL_FILE)?;
    let factory: Factory = serde_json::from_str(&text).map_err(|e| {
        CliError::input("--factory", e).hint("use a file written by `fleetkey sim gateway`")
    })?;
    let (config, transport) = factory
        .config()
        .map_err(|e| CliError::input("--factory", e))?;
    let mut ecu = Ecu::new(config, Some(transport))
        .map_err(|e| CliError::input("--factory", format_args!("root or fleet: {e}")))?;
    ecu.power_on();
    let mut bus = UdpBus::bind(args.udp.bind, args.udp.peer.clone()).map_err(sim_error)?;
    let deadline = Instant::now() + Duration::from_secs_f64(args.udp.seconds.max(0.1));
    let mut next = 0;
    let mut n = 0u64;
    let mut deadline = deadline;
    let bar = Bar::new();
    bar.start("frames sent", 0);
    while Instant::now() < deadline && ecu.state() == EcuState::On {
        if args.frames.is_some_and(|n| ecu.counters().sent >= n) && next != u64::MAX {
            // Linger a second to answer the gateway, then stop.
            deadline = deadline.min(Instant::now() + Duration::from_secs(1));
            next = u64::MAX;
        }
        if now_ms() >= next {
            if ecu
                .send_periodic(
                    &mut bus,
                    &network::payload_for(&ecu.config().profile, ecu.config().pdu, n),
                )
                .map_err(sim_error)?
            {
                n += 1;
                bar.advance(1);
            }
            next = now_ms() + 100;
        }
        if let Some(r) = bus
            .recv_timeout(Duration::from_millis(5))
            .map_err(sim_error)?
        {
            let mut one = OneFrame {
                bus: &mut bus,
                frame: Some(r),
            };
            ecu.poll(&mut one).map_err(sim_error)?;
        }
    }
    bar.finish();
    let stats = ecu.stats();
    let report = serde_json::json!({
        "serial": ecu.serial(),
        "seed": ecu.seed_version(),
        "sent": ecu.counters().sent,
        "counters": ecu.counters(),
        "received": {"accepted": stats.accepted, "replay": stats.replay,
                     "authentication": stats.authentication},
        "events": ecu.take_events(),
    });
    global.print(&report, |r| {
        format!(
            "{}: group seed {}, {} frames sent, {} received frames accepted\n",
            r["serial"].as_str().unwrap_or("-"),
            r["seed"],
            r["sent"],
            r["received"]["accepted"]
        )
    })?;
    if ecu.seed_version().is_none() {
        return Err(CliError::rejected("no group seed was received")
            .hint("start `fleetkey sim gateway` first, with this ECU's address as a --peer"));
    }
    Ok(())
}

// ---- bench bus -------------------------------------------------------------------------------

#[derive(Serialize)]
struct BusReport {
    frames: usize,
    pdus: u16,
    profile: &'static str,
    frame_bytes: usize,
    bus_seconds: f64,
    bus_capacity_frames_per_s: f64,
    verified_frames_per_s: f64,
    buses_per_core: f64,
    reference_cmac_frames_per_s: f64,
    ratio: f64,
}

/// One simulated CAN FD bus at full load (64-byte frames back to back, 16 PDUs, epochs of one
/// second): frames per second verified on one core (bus delivery, key window, SecOC verify),
/// beside one raw AES-128-CMAC per frame over the same MAC input, measured in the same run.
pub(crate) fn bench_bus(global: &Global, frames: usize) -> Result<(), CliError> {
    let frames = frames.max(1000);
    let profile = Profile::FD64;
    let schedule = RollSchedule::new(0, 1000).map_err(sim_error)?;
    let roller = Roller::new(&RollSeed::from_bytes([0x5A; 32]));
    let pdus: u16 = 16;
    let start_us = 1_767_225_600_000_000u64;
    // Secure the frames first, at the times the bus will carry them (back to back).
    let mut senders: Vec<Sender> = (0..pdus).map(|i| Sender::new(profile, 0x100 + i)).collect();
    let payload = [0x33u8; 54];
    let mut secured = Vec::with_capacity(frames);
    let mut t = start_us;
    let mut keys: Option<(Epoch, Vec<FrameKey>)> = None;
    for i in 0..frames {
        let pdu = (i % usize::from(pdus)) as u16;
        let probe = CanFrame::fd(0x100, false, &[0; 64]).map_err(sim_error)?;
        t += probe.wire_time_us();
        let epoch = schedule.epoch_at(t / 1000).map_err(sim_error)?;
        if keys.as_ref().is_none_or(|(e, _)| *e != epoch) {
            keys = Some((
                epoch,
                (0..pdus)
                    .map(|p| FrameKey::new(&roller.session_key(epoch, u32::from(0x100 + p))))
                    .collect(),
            ));
        }
        let key = keys
            .as_ref()
            .and_then(|(_, k)| k.get(usize::from(pdu)))
            .ok_or_else(|| sim_error("key"))?;
        let sender = senders
            .get_mut(usize::from(pdu))
            .ok_or_else(|| sim_error("sender"))?;
        let f = sender.secure_frame(key, &payload).map_err(sim_error)?;
        secured.push(CanFrame::fd(u32::from(0x100 + pdu), false, f.as_bytes()).map_err(sim_error)?);
    }
    // The measured loop: the bus delivers each frame; the gateway rolls its window by the
    // frame's time and verifies it.
    let clock = SimClock::new(start_us);
    let bus = SimBus::new(clock.clone(), false);
    let mut tx = bus.port();
    let mut rx = bus.port();
    let mut windows: Vec<KeyWindow> = (0..pdus)
        .map(|_| KeyWindow::new(WindowConfig::default()))
        .collect();
    let mut receivers: Vec<Receiver> = (0..pdus)
        .map(|i| Receiver::new(profile, 0x100 + i))
        .collect();
    let started = Instant::now();
    for f in &secured {
        tx.send(f).map_err(sim_error)?;
        let Some(r) = rx.try_recv().map_err(sim_error)? else {
            return Err(sim_error("a frame was lost"));
        };
        let index = usize::from((r.frame.id() - 0x100) as u16);
        let epoch = schedule.epoch_at(r.at_us / 1000).map_err(sim_error)?;
        let (Some(window), Some(receiver)) = (windows.get_mut(index), receivers.get_mut(index))
        else {
            return Err(sim_error("pdu"));
        };
        if window.current() != Some(epoch) {
            window
                .advance_to(epoch, &roller, r.frame.id())
                .map_err(sim_error)?;
        }
        let _ = black_box(receiver.verify(window, r.frame.data()));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let accepted: u64 = receivers.iter().map(|r| r.stats().accepted).sum();
    if accepted != frames as u64 {
        return Err(sim_error(format_args!(
            "{accepted} of {frames} frames verified: the benchmark is broken"
        )));
    }
    let bus_seconds = (clock.now_us() - start_us) as f64 / 1e6;
    // Reference: one raw AES-128-CMAC per frame over the same MAC input (DataId, payload, FV).
    let key = FrameKey::new(&roller.session_key(Epoch(0), 0x100));
    let inputs: Vec<Vec<u8>> = secured
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let mut m = Vec::with_capacity(2 + 54 + 8);
            m.extend_from_slice(&(f.id() as u16).to_be_bytes());
            m.extend_from_slice(f.data().get(..54).unwrap_or_default());
            m.extend_from_slice(&(i as u64 / u64::from(pdus) + 1).to_be_bytes());
            m
        })
        .collect();
    let started = Instant::now();
    for m in &inputs {
        black_box(key.cmac(black_box(m)));
    }
    let reference_s = started.elapsed().as_secs_f64();
    let verified = frames as f64 / elapsed;
    let capacity = frames as f64 / bus_seconds;
    let reference = frames as f64 / reference_s;
    let report = BusReport {
        frames,
        pdus,
        profile: profile.name(),
        frame_bytes: 64,
        bus_seconds,
        bus_capacity_frames_per_s: capacity,
        verified_frames_per_s: verified,
        buses_per_core: verified / capacity,
        reference_cmac_frames_per_s: reference,
        ratio: verified / reference,
    };
    global.print(&report, |r| {
        format!(
            "one CAN FD bus at full load: {} frames of {} bytes ({}, {} PDUs) = {:.1} s of bus time ({:.0} frames/s)\n\
             verified on one core: {:.0} frames/s ({:.0} such buses per core)\n\
             reference, one raw AES-128-CMAC per frame, same run: {:.0} frames/s\n\
             ratio: {:.2} (bus delivery, key window and SecOC verify against the bare MAC)\n",
            r.frames,
            r.frame_bytes,
            r.profile,
            r.pdus,
            r.bus_seconds,
            r.bus_capacity_frames_per_s,
            r.verified_frames_per_s,
            r.buses_per_core,
            r.reference_cmac_frames_per_s,
            r.ratio
        )
    })
}
