//! The walkthrough on the simulator: a governed fleet on the embedded defaults, a network of
//! ECUs on the bus, epochs rolling, attacks at each step, a refresh by SHE update over the bus,
//! a rotation with one ECU offline, a revoked generation, a denied grant, a decommissioned
//! device, the audit chain, and the capture verified offline. `fleetkey demo` prints it;
//! `fleetkey sim run` prints its summary.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetkey::fleet::{Access, Fleet, InitOptions, MasterBackup, SecretString, SystemClock};
use fleetkey::model::Scheme;
use fleetkey::module::soft::WorkFactor;
use fleetkey_core::Key128;
use fleetkey_core::secoc::Stats;
use fleetkey_core::she::SlotId;
use serde::Serialize;

use crate::attacker::AttackCounters;
use crate::capture;
use crate::gateway::GatewayCounters;
use crate::msg::code;
use crate::network::{GrantOutcome, Network, NetworkSpec, SimError, ecu_pdu, ecu_serial, payload};

/// The factory transport key of the walkthrough's SHEs.
pub const TRANSPORT_KEY: [u8; 16] = *b"factory-transprt";

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The fleet home to create (must not exist).
    pub home: PathBuf,
    /// Where to write the capture.
    pub capture: PathBuf,
    /// How many ECUs (at least 4).
    pub ecus: u16,
    /// The soft module's scrypt work factor.
    pub work_factor: WorkFactor,
    /// Seconds of bus traffic per traffic step.
    pub seconds: u64,
}

/// One step's outcome on the bus.
#[derive(Clone, Debug, Serialize)]
pub struct StepSummary {
    /// Step title.
    pub step: String,
    /// Frames the gateway accepted during the step.
    pub accepted: u64,
    /// Frames the gateway rejected, by reason.
    pub replay: u64,
    /// Authentication failures.
    pub authentication: u64,
    /// Other rejections (malformed, no key).
    pub other: u64,
    /// Updates or requests the ECUs refused (seeds, records, grants).
    pub refused_by_ecus: u64,
}

/// The whole run.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Fleet id.
    pub fleet: String,
    /// Fleet home.
    pub home: PathBuf,
    /// ECUs.
    pub ecus: u16,
    /// Frames on the bus.
    pub frames: usize,
    /// Simulated bus time, seconds.
    pub bus_seconds: f64,
    /// Per step.
    pub steps: Vec<StepSummary>,
    /// The gateway's receivers over the run.
    pub gateway: StatsJson,
    /// The gateway's update counts.
    pub updates: GatewayCounters,
    /// What the attacker sent.
    pub attacker: AttackCounters,
    /// Attacks that got through (frames accepted, updates installed): 0 when all is well.
    pub attacks_accepted: u64,
    /// Audit events, chain verified.
    pub audit_events: u64,
    /// Capture path.
    pub capture: PathBuf,
    /// The capture verified offline with the fleet's keys.
    pub offline: StatsJson,
    /// Wall time, seconds.
    pub wall_seconds: f64,
}

/// [`Stats`] for JSON.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct StatsJson {
    /// Accepted.
    pub accepted: u64,
    /// Replays.
    pub replay: u64,
    /// Authentication failures.
    pub authentication: u64,
    /// Malformed.
    pub malformed: u64,
    /// No key.
    pub no_key: u64,
}

impl From<Stats> for StatsJson {
    fn from(s: Stats) -> Self {
        Self {
            accepted: s.accepted,
            replay: s.replay,
            authentication: s.authentication,
            malformed: s.malformed,
            no_key: s.no_key,
        }
    }
}

/// What a step tells the reader: its title, the equivalent `fleetkey` command, what happened.
pub trait Report {
    /// A step starts.
    fn step(&mut self, title: &str, command: &str);
    /// Something happened.
    fn line(&mut self, text: &str);
}

/// Reports nothing.
pub struct Quiet;

impl Report for Quiet {
    fn step(&mut self, _: &str, _: &str) {}
    fn line(&mut self, _: &str) {}
}

struct Run<'a> {
    net: Network,
    report: &'a mut dyn Report,
    steps: Vec<StepSummary>,
    mark: Stats,
    refused_mark: u64,
    title: String,
    breaches: u64,
}

fn refused(net: &Network) -> u64 {
    net.nodes
        .iter()
        .map(|n| {
            let c = n.ecu.counters();
            c.seeds_refused + c.records_refused + c.grants_refused + c.she_refused
        })
        .sum()
}

fn verdict(accepted: bool) -> &'static str {
    if accepted { "accepted" } else { "REJECTED" }
}

impl Run<'_> {
    fn begin(&mut self, title: &str, command: &str) {
        self.report.step(title, command);
        self.title = title.to_owned();
        self.mark = self.net.gateway.stats();
        self.refused_mark = refused(&self.net);
    }

    fn end(&mut self) {
        let now = self.net.gateway.stats();
        let m = self.mark;
        for e in self.net.take_events() {
            self.report.line(&e);
        }
        let step = StepSummary {
            step: self.title.clone(),
            accepted: now.accepted - m.accepted,
            replay: now.replay - m.replay,
            authentication: now.authentication - m.authentication,
            other: (now.malformed + now.no_key) - (m.malformed + m.no_key),
            refused_by_ecus: refused(&self.net) - self.refused_mark,
        };
        self.report.line(&format!(
            "gateway: {} frames accepted, {} rejected (replay {}, authentication {})",
            step.accepted,
            step.replay + step.authentication + step.other,
            step.replay,
            step.authentication
        ));
        self.steps.push(step);
    }

    /// Verifies one attack: how the gateway counted it.
    fn attacked(&mut self, what: &str, before: Stats) {
        let now = self.net.gateway.stats();
        let reason = if now.replay > before.replay {
            "replay"
        } else if now.authentication > before.authentication {
            "authentication"
        } else if now.accepted > before.accepted {
            "ACCEPTED"
        } else {
            "not seen"
        };
        let rejected = now.rejected() > before.rejected() && now.accepted == before.accepted;
        if !rejected {
            self.breaches += 1;
        }
        self.report.line(&format!(
            "attacker: {what}: {} ({reason})",
            verdict(!rejected)
        ));
    }
}

/// Runs the walkthrough.
pub fn walkthrough(options: &Options, report: &mut dyn Report) -> Result<Summary, SimError> {
    let started = Instant::now();
    let n = options.ecus.max(4);
    let traffic = Duration::from_secs(options.seconds.max(1));
    let access = Access {
        passphrase: SecretString::from("fleetkey demo passphrase".to_owned()),
        actor: "demo".into(),
        clock: Arc::new(SystemClock),
    };
    report.step(
        "a governed fleet on the embedded defaults (SQLite store, soft key module)",
        "fleetkey init --fleet demo --scheme governed --she-transport-key-file transport.hex --no-backup",
    );
    let mut fleet = Fleet::init(
        &options.home,
        InitOptions {
            fleet_id: "demo".into(),
            scheme: Scheme::Governed,
            she_transport_key: Some(Key128::from_bytes(TRANSPORT_KEY)),
            work_factor: options.work_factor,
            backup: MasterBackup::NoBackup,
        },
        access,
    )?;
    let (root, kid) = fleet.governance_root()?;
    report.line(&format!(
        "fleet home {}; governance root {} (kid {}) pinned in every ECU",
        options.home.display(),
        &hex::encode(root)[..16],
        hex::encode(kid)
    ));

    report.step(
        &format!("a network of {n} ECUs and a gateway on a simulated CAN FD bus"),
        "fleetkey device add ECU-0000 --she-uid ... && fleetkey device provision ECU-0000 --json",
    );
    let start_ms = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0),
    )
    .unwrap_or(0)
        + 2000;
    let mut spec = NetworkSpec::new("powertrain", n, TRANSPORT_KEY);
    // The last ECU is a classic CAN node (AUTOSAR profile 1, 8-byte frames); the rest CAN FD.
    spec.classic_ecus = 1;
    let net = Network::provision(&mut fleet, spec, start_ms)?;
    let mut run = Run {
        net,
        report,
        steps: Vec::new(),
        mark: Stats::default(),
        refused_mark: 0,
        title: String::new(),
        breaches: 0,
    };
    let gw_counters = run.net.gateway.counters();
    run.report.line(&format!(
        "each SHE loaded over ISO-TP with M1-M3 (M4/M5 checked), governance record pushed, group seed \
         distributed as SHE KEY_4/KEY_5 updates: {} updates confirmed",
        gw_counters.confirmed
    ));
    run.report.line(&format!(
        "ECU-0000..{}: CAN FD, SecOC fd64; {}: classic CAN, SecOC p1 (8-bit FV, 24-bit MAC)",
        ecu_serial(n - 2),
        ecu_serial(n - 1)
    ));
    for e in run.net.take_events() {
        run.report.line(&e);
    }

    // ---- traffic and attacks
    run.begin(
        "the bus: every ECU sends its secured PDU every 100 ms, keys roll every second",
        "",
    );
    run.net.run_for(traffic)?;
    let pdu0 = u32::from(ecu_pdu(0));
    let last = run.net.attacker.last(pdu0).cloned();
    if let Some(last) = last {
        let before = run.net.gateway.stats();
        run.net.attack(|a, bus| a.replay(bus, &last))?;
        run.attacked("replay of ECU-0000's last frame", before);
        let before = run.net.gateway.stats();
        run.net.attack(|a, bus| a.tamper(bus, &last))?;
        run.attacked("the same frame with one payload bit flipped", before);
    }
    let profile = run.net.spec().profile;
    let before = run.net.gateway.stats();
    run.net
        .attack(|a, bus| a.forge(bus, profile, ecu_pdu(0), &payload(ecu_pdu(0), 7), 0x42))?;
    run.attacked("a frame with a guessed MAC", before);
    run.end();

    // ---- faults: stalled clock, power cycle
    run.begin(
        "faults: ECU-0002's clock stalls (misses epoch rolls); ECU-0001 loses power",
        "",
    );
    let now = run.net.now_ms();
    if let Some(e) = run.net.ecu_mut(2) {
        e.stall_clock(now);
    }
    run.net.power_off(1);
    // The beacon pauses (as if the gateway were busy) while the clock is stalled.
    run.net.set_beacons(false);
    let stalled_before = run.net.gateway.member_stats(ecu_pdu(2));
    run.net.run_for(Duration::from_millis(3000))?;
    let stalled_after = run.net.gateway.member_stats(ecu_pdu(2));
    run.report.line(&format!(
        "ECU-0002 two epochs behind: {} of its frames rejected (authentication: its epoch key is no \
         longer in the gateway's window)",
        stalled_after.rejected() - stalled_before.rejected()
    ));
    run.net.set_beacons(true);
    run.net.power_on(1)?;
    run.net.run_for(Duration::from_secs(2))?;
    if let (Some(e1), Some(e2)) = (run.net.ecu(1), run.net.ecu(2)) {
        run.report.line(&format!(
            "ECU-0001 back on: freshness restored from its reservation ({} non-volatile writes); \
             ECU-0002 resynchronised {} time(s) by the gateway's authenticated beacon, its frames \
             accepted again",
            e1.counters().nvm_writes,
            e2.counters().resyncs
        ));
    }
    run.end();

    // ---- refresh by SHE update over the bus
    run.begin(
        "refresh ECU-0000: revision 1 reaches it as SHE updates over ISO-TP, M4/M5 checked",
        "fleetkey device refresh ECU-0000 --reason 'workshop visit'",
    );
    let updates = run.net.refresh_ecu(&mut fleet, 0, "workshop visit")?;
    // The attacker records ECU-0000's generation-1 seed update (replayed after the revocation).
    let mark = run.net.attacker.captured();
    let version = run
        .net
        .rekey(&mut fleet, "re-wrap the group seed after a refresh")?;
    let seed_update = run.net.attacker.frames_since(mark, 0x600);
    run.report.line(&format!(
        "{updates} SHE updates confirmed; group seed {}.{} re-wrapped under the new KEY_UPDATE key",
        version.0, version.1
    ));
    run.net.run_for(traffic)?;
    run.end();

    // ---- rotation with an ECU offline, then generation 1 revoked
    let offline = usize::from(n - 1);
    run.begin(
        &format!(
            "rotation to generation 2 (record pushed, every ECU migrated, network re-keyed) while {} is off",
            ecu_serial(n - 1)
        ),
        "fleetkey generation rotate --reason yearly --no-backup && fleetkey device refresh --all --generation 1",
    );
    let old_seed = {
        let gw = fleet.device(
            &fleetkey::model::DeviceSerial::new(crate::network::gateway_serial("powertrain"))
                .map_err(|e| SimError::Material(e.to_string()))?,
        )?;
        let keys = fleetkey::fleet::material::DeviceKeys::derive(
            fleet.module()?,
            &gw,
            gw.generation,
            gw.revision,
        )?;
        keys.roll_seed
    };
    run.net.power_off(offline);
    fleet.rotate("yearly rotation", &MasterBackup::NoBackup)?;
    run.net.push_latest_record(&mut fleet)?;
    for i in 0..n {
        run.net
            .refresh_ecu(&mut fleet, i, "migrate to generation 2")?;
    }
    let version = run.net.rekey(&mut fleet, "generation 2")?;
    run.report.line(&format!(
        "group seed {}.{} distributed; {} has {} updates waiting",
        version.0,
        version.1,
        ecu_serial(n - 1),
        run.net.gateway.pending(&ecu_serial(n - 1))
    ));
    run.net.run_for(traffic)?;
    run.net.power_on(offline)?;
    if let Some(e) = run.net.ecu(offline) {
        run.report.line(&format!(
            "{} back on: the gateway's retries reached it, now on group seed {:?}",
            e.serial(),
            e.seed_version()
        ));
    }
    fleet.compromise_generation(1, "generation 1 retired as compromised")?;
    let seq = run.net.push_latest_record(&mut fleet)?;
    run.report.line(&format!(
        "generation 1 revoked: governance record {seq} pushed to every ECU"
    ));
    run.net.run_for(traffic)?;
    let epoch = run
        .net
        .schedule()
        .epoch_at(run.net.now_ms())
        .map_err(|e| SimError::Material(e.to_string()))?;
    let before = run.net.gateway.stats();
    run.net.attack(|a, bus| {
        a.inject(
            bus,
            profile,
            &old_seed,
            epoch,
            ecu_pdu(1),
            9000,
            &payload(ecu_pdu(1), 1),
        )
    })?;
    run.attacked("a frame made with a generation-1 group seed", before);
    let refused_before = run
        .net
        .ecu(0)
        .map(|e| e.counters().seeds_refused)
        .unwrap_or(0);
    for f in &seed_update {
        run.net.attack(|a, bus| a.replay(bus, f))?;
    }
    let refused_after = run
        .net
        .ecu(0)
        .map(|e| e.counters().seeds_refused)
        .unwrap_or(0);
    let refusal = run
        .net
        .ecu_mut(0)
        .map(|e| e.take_events())
        .unwrap_or_default()
        .into_iter()
        .find(|e| e.contains("refused a group seed"));
    if refused_after == refused_before {
        run.breaches += 1;
    }
    run.report.line(&format!(
        "attacker: replay of ECU-0000's captured generation-1 seed update over ISO-TP: {}",
        match (refused_after > refused_before, refusal) {
            (true, Some(why)) => format!("REFUSED ({why})"),
            (true, None) => "REFUSED".to_owned(),
            (false, _) => "ACCEPTED".to_owned(),
        }
    ));
    run.end();

    // ---- grants
    run.begin(
        "a technician's grant: accepted with proof of possession, then denied by the operator",
        "fleetkey grant issue --subject tech-anna --role technician --scope ECU- --key anna.pub && fleetkey grant deny 1",
    );
    let (id, grant) = run.net.issue_grant(&mut fleet, "tech-anna")?;
    let first = run.net.present_grant(0, &grant)?;
    run.report
        .line(&format!("grant {id} presented to ECU-0000: {first:?}"));
    fleet.deny_grant(id, "laptop lost")?;
    run.net.push_latest_record(&mut fleet)?;
    let second = run.net.present_grant(0, &grant)?;
    if second == GrantOutcome::Accepted {
        run.breaches += 1;
    }
    run.report.line(&format!(
        "after the deny record, the same grant: {}",
        match second {
            GrantOutcome::Refused(code::GRANT_DENIED) => "REFUSED (denied)".to_owned(),
            other => format!("{other:?}"),
        }
    ));
    run.end();

    // ---- decommission
    run.begin(
        "decommission ECU-0001: it erases every key; the network is re-keyed without it",
        "fleetkey device revoke ECU-0001 --reason stolen && fleetkey device decommission ECU-0001 --reason scrapped",
    );
    let stolen = run
        .net
        .ecu(1)
        .and_then(|e| e.she().roll_seed_software_only(SlotId::Key4, SlotId::Key5));
    let version = run.net.decommission(&mut fleet, 1, "stolen, scrapped")?;
    if let Some(e) = run.net.ecu(1) {
        let empty = SlotId::ALL.iter().all(|s| e.she().is_empty(*s));
        run.report.line(&format!(
            "ECU-0001 {:?}: every SHE slot empty: {empty}; network on group seed {}.{}",
            e.state(),
            version.0,
            version.1
        ));
    }
    run.net.run_for(traffic)?;
    if let Some(stolen) = stolen {
        let epoch = run
            .net
            .schedule()
            .epoch_at(run.net.now_ms())
            .map_err(|e| SimError::Material(e.to_string()))?;
        let before = run.net.gateway.stats();
        run.net.attack(|a, bus| {
            a.inject(
                bus,
                profile,
                &stolen,
                epoch,
                ecu_pdu(1),
                20_000,
                &payload(ecu_pdu(1), 2),
            )
        })?;
        run.attacked("a frame made with ECU-0001's extracted group seed", before);
    }
    run.end();

    // ---- audit, capture, offline verification
    run.report.step(
        "the audit chain and the capture",
        "fleetkey audit verify && fleetkey can verify capture.log --home fleet",
    );
    let audit_events = fleet.audit_verify()?;
    run.report
        .line(&format!("{audit_events} audit events, hash chain intact"));
    let lines = run.net.write_capture(&options.capture)?;
    let frames: Vec<_> = run
        .net
        .capture()
        .into_iter()
        .map(|r| (r.at_us, r.frame))
        .collect();
    let networks = capture::networks_from_fleet(&mut fleet)?;
    let (_, offline_stats) = capture::verify_frames(&networks, &frames);
    run.report.line(&format!(
        "capture: {lines} frames (candump -l) in {}; verified offline with the fleet's keys: {} accepted, {} rejected",
        options.capture.display(),
        offline_stats.accepted,
        offline_stats.rejected()
    ));
    let status = fleet.status()?;
    Ok(Summary {
        fleet: status.fleet.id,
        home: options.home.clone(),
        ecus: n,
        frames: run.net.frames(),
        bus_seconds: (run.net.now_ms().saturating_sub(start_ms)) as f64 / 1000.0,
        steps: run.steps,
        gateway: run.net.gateway.stats().into(),
        updates: run.net.gateway.counters(),
        attacker: run.net.attacker.counters(),
        attacks_accepted: run.breaches,
        audit_events,
        capture: options.capture.clone(),
        offline: offline_stats.into(),
        wall_seconds: started.elapsed().as_secs_f64(),
    })
}
