//! An ECU that runs only the device core: a software SHE holding its keys, a [`Roller`] over the
//! network's group seed (SHE KEY_4 || KEY_5) for session keys by epoch on its own (skewed) clock,
//! a SecOC [`Sender`] for its periodic PDU and a [`Receiver`] per peer PDU, freshness persisted
//! by reservation across power cycles, and a [`GovernanceState`] that verifies pushed generation
//! records, refuses keys of revoked generations, and checks technicians' grants.

use std::collections::BTreeMap;

use fleetkey_core::governance::{
    Acceptance, CHALLENGE_LEN, Challenge, GovernanceError, GovernanceState, check_generation,
    verify_generation_record, verify_grant, verify_possession,
};
use fleetkey_core::secoc::{
    FrameKey, FreshnessCounter, KeyWindow, Profile, Receiver, SecocError, Sender, Stats,
    WindowConfig,
};
use fleetkey_core::she::{SlotId, SoftShe, Uid};
use fleetkey_core::{Epoch, Generation, RollSchedule, Roller};
use zeroize::Zeroize;

use crate::bus::{Bus, BusError, CanFrame, FrameError};
use crate::isotp::{IsoTpError, Link};
use crate::msg::{self, DECOMMISSION_LABEL, Load, Message, Proof, Subject, code};

pub use fleetkey::fleet::network::{BEACON_ID, SEED_SLOTS, seed_counter};
/// Label of the challenges an ECU makes for grants (CMAC input, with a counter).
const CHALLENGE_LABEL: &[u8] = b"fleetkey challenge v1";

/// A secured PDU as a CAN frame: classic for the classic profiles (frames of at most 8 bytes),
/// CAN FD otherwise.
pub fn pdu_frame(profile: &Profile, pdu: u16, secured: &[u8]) -> Result<CanFrame, FrameError> {
    if profile.max_frame() <= 8 {
        CanFrame::classic(u32::from(pdu), false, secured)
    } else {
        CanFrame::fd(u32::from(pdu), false, secured)
    }
}

/// Why an ECU operation failed (bus, framing, or the core refusing to secure a frame).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EcuError {
    /// The bus failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A frame could not be built.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The SecOC core refused.
    #[error("secoc: {0}")]
    Secoc(SecocError),
    /// ISO-TP refused a message to send.
    #[error("iso-tp: {0}")]
    IsoTp(IsoTpError),
}

/// An ECU's fixed configuration.
#[derive(Clone, Debug)]
pub struct EcuConfig {
    /// Serial.
    pub serial: String,
    /// SHE UID.
    pub uid: Uid,
    /// Fleet id (governance).
    pub fleet: String,
    /// The pinned governance root: public key and key id.
    pub root: ([u8; 32], Vec<u8>),
    /// Its periodic PDU: CAN id, SecOC DataId and roll channel.
    pub pdu: u16,
    /// The peer PDUs it verifies, each with its sender's profile.
    pub peers: Vec<(u16, Profile)>,
    /// SecOC profile of its own PDU (`p1`/`p2`: sent as classic CAN frames; else CAN FD).
    pub profile: Profile,
    /// Profile of the gateway's beacon.
    pub beacon_profile: Profile,
    /// The network's roll schedule.
    pub schedule: RollSchedule,
    /// Key window of its receivers.
    pub window: WindowConfig,
    /// Its clock's offset from bus time, in ms.
    pub skew_ms: i64,
    /// Index on the network: diagnostic link ids 0x600 + i (in) / 0x680 + i (out), technician
    /// link ids 0x700 + i (in) / 0x780 + i (out).
    pub index: u16,
    /// Freshness values reserved per non-volatile write.
    pub reserve: u64,
}

impl EcuConfig {
    /// The diagnostic link (gateway) CAN ids: (ECU sends on, ECU receives on).
    pub fn gateway_link(index: u16) -> (u32, u32) {
        (0x680 + u32::from(index), 0x600 + u32::from(index))
    }

    /// The technician link CAN ids: (ECU sends on, ECU receives on).
    pub fn tech_link(index: u16) -> (u32, u32) {
        (0x780 + u32::from(index), 0x700 + u32::from(index))
    }
}

/// What survives a power cycle besides the SHE: the freshness reservation, the receivers'
/// latest FVs, the governance state, the group seed's version.
#[derive(Clone, Debug)]
struct Nvm {
    fv_reserved: u64,
    rx_latest: BTreeMap<u16, u64>,
    beacon_latest: u64,
    governance: Option<GovernanceState>,
    seed: Option<(u32, u32)>,
    challenges: u64,
    writes: u64,
}

/// Volatile state, lost at power off.
struct Running {
    sender: Sender,
    roller: Option<Roller>,
    windows: BTreeMap<u16, KeyWindow>,
    receivers: BTreeMap<u16, Receiver>,
    beacon: Receiver,
    gateway: Link,
    tech: Link,
    pending_grant: Option<(Vec<u8>, Challenge)>,
}

/// The ECU's lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EcuState {
    /// Running.
    On,
    /// Powered off (or disconnected).
    Off,
    /// Keys erased; never runs again.
    Decommissioned,
}

/// Counts of what an ECU did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct EcuCounters {
    /// Frames sent.
    pub sent: u64,
    /// SHE loads accepted.
    pub she_accepted: u64,
    /// SHE loads refused.
    pub she_refused: u64,
    /// Group seeds installed.
    pub seeds_accepted: u64,
    /// Group seeds refused.
    pub seeds_refused: u64,
    /// Governance records accepted (new or repeated).
    pub records_accepted: u64,
    /// Governance records refused.
    pub records_refused: u64,
    /// Grants accepted (with proof of possession).
    pub grants_accepted: u64,
    /// Grants refused.
    pub grants_refused: u64,
    /// Clock resynchronisations from the gateway's beacon.
    pub resyncs: u64,
    /// Power cycles.
    pub power_cycles: u64,
    /// Non-volatile writes (freshness reservations, receiver FVs).
    pub nvm_writes: u64,
    /// ISO-TP transfers dropped.
    pub isotp_errors: u64,
}

/// One ECU.
pub struct Ecu {
    config: EcuConfig,
    she: SoftShe,
    nvm: Nvm,
    run: Option<Running>,
    state: EcuState,
    offset_ms: i64,
    stalled_at: Option<u64>,
    past: Stats,
    counters: EcuCounters,
    events: Vec<String>,
}

impl core::fmt::Debug for Ecu {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Ecu")
            .field("serial", &self.config.serial)
            .field("state", &self.state)
            .field("she", &self.she)
            .finish_non_exhaustive()
    }
}

fn governance_code(e: GovernanceError) -> u8 {
    match e {
        GovernanceError::RevokedGeneration => code::REVOKED_GENERATION,
        GovernanceError::UnknownGeneration => code::UNKNOWN_GENERATION,
        GovernanceError::StaleSequence => code::RECORD_STALE,
        GovernanceError::Denied => code::GRANT_DENIED,
        GovernanceError::Possession => code::POSSESSION_FAILED,
        _ => code::RECORD_INVALID,
    }
}

impl Ecu {
    /// A factory-fresh ECU (powered off): its SHE holds only the transport key (if any), and it
    /// pins the governance root of its configuration. Refused when the root (key id longer than
    /// 16 bytes) or the fleet id (1 to 64 bytes) is invalid.
    pub fn new(
        config: EcuConfig,
        transport_key: Option<fleetkey_core::Key128>,
    ) -> Result<Self, GovernanceError> {
        let root = fleetkey_core::governance::RootKey::new(config.root.0, &config.root.1)?;
        let governance = Some(GovernanceState::new(&config.fleet, root)?);
        Ok(Self {
            she: SoftShe::new(config.uid, transport_key),
            nvm: Nvm {
                fv_reserved: 0,
                rx_latest: BTreeMap::new(),
                beacon_latest: 0,
                governance,
                seed: None,
                challenges: 0,
                writes: 0,
            },
            config,
            run: None,
            state: EcuState::Off,
            offset_ms: 0,
            stalled_at: None,
            past: Stats::default(),
            counters: EcuCounters::default(),
            events: Vec::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EcuConfig {
        &self.config
    }

    /// The serial.
    pub fn serial(&self) -> &str {
        &self.config.serial
    }

    /// The lifecycle state.
    pub fn state(&self) -> EcuState {
        self.state
    }

    /// The SHE (slot states; keys stay inside).
    pub fn she(&self) -> &SoftShe {
        &self.she
    }

    /// The governance state, if the pinned root was valid and not erased.
    pub fn governance(&self) -> Option<&GovernanceState> {
        self.nvm.governance.as_ref()
    }

    /// The installed group seed's (generation, revision).
    pub fn seed_version(&self) -> Option<(u32, u32)> {
        self.nvm.seed
    }

    /// Whether the ECU holds a usable group seed now.
    pub fn has_session_keys(&self) -> bool {
        self.run.as_ref().is_some_and(|r| r.roller.is_some())
    }

    /// The counters.
    pub fn counters(&self) -> EcuCounters {
        let mut c = self.counters;
        if let Some(r) = &self.run {
            c.isotp_errors += r.gateway.errors + r.tech.errors;
        }
        c
    }

    /// Frames received from peers, by outcome (across power cycles).
    pub fn stats(&self) -> Stats {
        let mut s = self.past;
        if let Some(r) = &self.run {
            for rx in r.receivers.values() {
                s.merge(&rx.stats());
            }
        }
        s
    }

    /// What happened, in order (for the walkthrough).
    pub fn take_events(&mut self) -> Vec<String> {
        std::mem::take(&mut self.events)
    }

    fn event(&mut self, text: String) {
        self.events.push(format!("{}: {text}", self.config.serial));
    }

    /// The ECU's clock at a bus time: skewed, offset by resynchronisation, frozen while stalled.
    pub fn local_ms(&self, bus_ms: u64) -> u64 {
        let base = self.stalled_at.unwrap_or(bus_ms);
        let t = i128::from(base) + i128::from(self.config.skew_ms) + i128::from(self.offset_ms);
        u64::try_from(t.max(0)).unwrap_or(u64::MAX)
    }

    /// Fault: the ECU's clock stops at `bus_ms` (it misses epoch rolls until resynchronised).
    pub fn stall_clock(&mut self, bus_ms: u64) {
        self.stalled_at = Some(bus_ms);
    }

    /// Sets the clock skew (ms).
    pub fn set_skew(&mut self, skew_ms: i64) {
        self.config.skew_ms = skew_ms;
    }

    fn epoch(&self, bus_ms: u64) -> Option<Epoch> {
        self.config.schedule.epoch_at(self.local_ms(bus_ms)).ok()
    }

    /// Powers on: rebuilds the volatile state from the SHE and the non-volatile memory. The
    /// sender's counter restarts above the persisted reservation, so no FV is ever reused.
    pub fn power_on(&mut self) {
        if self.state != EcuState::Off {
            return;
        }
        let c = &self.config;
        let (gw_tx, gw_rx) = EcuConfig::gateway_link(c.index);
        let (t_tx, t_rx) = EcuConfig::tech_link(c.index);
        let receivers = c
            .peers
            .iter()
            .map(|&(id, profile)| {
                let latest = self.nvm.rx_latest.get(&id).copied().unwrap_or(0);
                (id, Receiver::restore(profile, id, latest))
            })
            .collect();
        self.run = Some(Running {
            sender: Sender::with_freshness(
                c.profile,
                c.pdu,
                FreshnessCounter::restore(self.nvm.fv_reserved),
            ),
            roller: None,
            windows: BTreeMap::new(),
            receivers,
            beacon: Receiver::restore(c.beacon_profile, BEACON_ID, self.nvm.beacon_latest),
            gateway: Link::new(gw_tx, gw_rx, msg::MAX_MESSAGE),
            tech: Link::new(t_tx, t_rx, msg::MAX_MESSAGE),
            pending_grant: None,
        });
        self.state = EcuState::On;
        self.load_roller();
    }

    /// Powers off (a power cut: nothing is saved now; what survives was persisted before).
    pub fn power_off(&mut self) {
        if let Some(run) = self.run.take() {
            for rx in run.receivers.values() {
                self.past.merge(&rx.stats());
            }
            self.counters.isotp_errors += run.gateway.errors + run.tech.errors;
            self.counters.power_cycles += 1;
        }
        if self.state == EcuState::On {
            self.state = EcuState::Off;
        }
    }

    /// The group seed from KEY_4 || KEY_5, if installed and its generation is allowed.
    fn load_roller(&mut self) {
        let allowed = match (&self.nvm.seed, &self.nvm.governance) {
            (Some((g, _)), Some(gov)) => check_generation(gov, Generation(*g)).is_ok(),
            _ => false,
        };
        let roller = if allowed {
            self.she
                .roll_seed_software_only(SEED_SLOTS.0, SEED_SLOTS.1)
                .map(|seed| Roller::new(&seed))
        } else {
            None
        };
        if let Some(run) = self.run.as_mut() {
            run.roller = roller;
            run.windows.clear();
        }
    }

    fn reserve_if_needed(&mut self) {
        let reserve = self.config.reserve.max(2);
        let Some(run) = self.run.as_mut() else { return };
        let counter = run.sender.freshness_mut();
        if counter.reserved_remaining() < reserve / 2 {
            let r = counter.reservation(reserve);
            // Persist first, then use: a crash loses unused FVs, never repeats one.
            self.nvm.fv_reserved = r;
            self.nvm.writes += 1;
            self.counters.nvm_writes += 1;
            counter.commit_reservation(r);
        }
    }

    /// Secures and sends the periodic PDU with the session key of the ECU's current epoch.
    /// Returns false when the ECU is off, decommissioned, or has no group seed.
    pub fn send_periodic(&mut self, bus: &mut dyn Bus, payload: &[u8]) -> Result<bool, EcuError> {
        let bus_ms = bus.now_us() / 1000;
        let Some(epoch) = self.epoch(bus_ms) else {
            return Ok(false);
        };
        if !self.has_session_keys() {
            return Ok(false);
        }
        self.reserve_if_needed();
        let pdu = self.config.pdu;
        let Some(run) = self.run.as_mut() else {
            return Ok(false);
        };
        let Some(roller) = &run.roller else {
            return Ok(false);
        };
        let key = FrameKey::new(&roller.session_key(epoch, u32::from(pdu)));
        let secured = run
            .sender
            .secure_frame(&key, payload)
            .map_err(EcuError::Secoc)?;
        bus.send(&pdu_frame(&self.config.profile, pdu, secured.as_bytes())?)?;
        self.counters.sent += 1;
        Ok(true)
    }

    /// Processes every frame waiting on the bus, then sends what the links have queued.
    pub fn poll(&mut self, bus: &mut dyn Bus) -> Result<(), EcuError> {
        if self.state != EcuState::On {
            return Ok(());
        }
        while let Some(r) = bus.try_recv()? {
            self.on_frame(bus, r.at_us / 1000, &r.frame)?;
            if self.state != EcuState::On {
                return Ok(());
            }
        }
        self.flush(bus)
    }

    fn flush(&mut self, bus: &mut dyn Bus) -> Result<(), EcuError> {
        let now = bus.now_us() / 1000;
        let Some(run) = self.run.as_mut() else {
            return Ok(());
        };
        let mut frames = Vec::new();
        for link in [&mut run.gateway, &mut run.tech] {
            // Timeouts are counted in the link and the transfer dropped; go on.
            if let Ok(f) = link.poll(now) {
                frames.extend(f);
            }
        }
        for f in frames {
            bus.send(&f)?;
        }
        Ok(())
    }

    fn on_frame(
        &mut self,
        bus: &mut dyn Bus,
        bus_ms: u64,
        frame: &CanFrame,
    ) -> Result<(), EcuError> {
        let id = frame.id();
        let Some(run) = self.run.as_mut() else {
            return Ok(());
        };
        if id == run.gateway.rx_id() || id == run.tech.rx_id() {
            let tech = id == run.tech.rx_id();
            let link = if tech {
                &mut run.tech
            } else {
                &mut run.gateway
            };
            let Ok((answer, message)) = link.on_frame(bus_ms, frame.data()) else {
                return Ok(());
            };
            for f in answer {
                bus.send(&f)?;
            }
            if let Some(m) = message {
                // A verdict names the request it answers.
                let reply = match self.on_message(bus_ms, tech, &m) {
                    Some(Message::Verdict { subject, code, .. }) => Some(Message::Verdict {
                        subject,
                        code,
                        tag: msg::request_tag(&m),
                    }),
                    other => other,
                };
                if let (Some(reply), Some(run)) = (reply, self.run.as_mut()) {
                    let link = if tech {
                        &mut run.tech
                    } else {
                        &mut run.gateway
                    };
                    link.send(reply.encode()).map_err(EcuError::IsoTp)?;
                }
            }
            return self.flush(bus);
        }
        let Ok(pdu) = u16::try_from(id) else {
            return Ok(());
        };
        if pdu == BEACON_ID {
            self.on_beacon(bus_ms, frame.data());
            return Ok(());
        }
        if !self.config.peers.iter().any(|(p, _)| *p == pdu) {
            return Ok(());
        }
        let epoch = self.epoch(bus_ms);
        let window_config = self.config.window;
        let Some(run) = self.run.as_mut() else {
            return Ok(());
        };
        let window = run
            .windows
            .entry(pdu)
            .or_insert_with(|| KeyWindow::new(window_config));
        if let (Some(roller), Some(epoch)) = (&run.roller, epoch) {
            if window.current().is_some_and(|c| epoch < c) {
                // The clock went back (resynchronised): start the window again.
                *window = KeyWindow::new(window_config);
            }
            window
                .advance_to(epoch, roller, u32::from(pdu))
                .map_err(EcuError::Secoc)?;
        }
        let Some(rx) = run.receivers.get_mut(&pdu) else {
            return Ok(());
        };
        if let Ok(v) = rx.verify(window, frame.data()) {
            self.nvm.rx_latest.insert(pdu, v.fv);
            self.nvm.writes += 1;
            self.counters.nvm_writes += 1;
        }
        Ok(())
    }

    /// The gateway's time beacon: `time ms u64 BE || 6 zero bytes`, secured on [`BEACON_ID`]
    /// with the session key of the epoch of the time it claims. Verifying it needs only the
    /// group seed, not a synchronised clock: a verified beacon resets this ECU's clock.
    fn on_beacon(&mut self, bus_ms: u64, data: &[u8]) {
        let local = self.local_ms(bus_ms);
        let period = self.config.schedule.period_ms();
        let Some(run) = self.run.as_mut() else { return };
        let Some(roller) = &run.roller else { return };
        let Some(claimed) = data.get(..8).map(|b| {
            let mut t = [0u8; 8];
            t.copy_from_slice(b);
            u64::from_be_bytes(t)
        }) else {
            return;
        };
        let Ok(epoch) = self.config.schedule.epoch_at(claimed) else {
            return;
        };
        let window = KeyWindow::single(epoch, &roller.session_key(epoch, u32::from(BEACON_ID)));
        let Ok(v) = run.beacon.verify(&window, data) else {
            return;
        };
        self.nvm.beacon_latest = v.fv;
        if local.abs_diff(claimed) > period / 10 {
            let now_base = i128::from(bus_ms) + i128::from(self.config.skew_ms);
            self.offset_ms = i64::try_from(i128::from(claimed) - now_base).unwrap_or(0);
            self.stalled_at = None;
            self.counters.resyncs += 1;
            self.event(format!(
                "clock resynchronised by the gateway's beacon ({} ms off, now epoch {})",
                i128::from(claimed) - i128::from(local),
                epoch.0
            ));
        }
    }

    fn on_message(&mut self, bus_ms: u64, tech: bool, bytes: &[u8]) -> Option<Message> {
        let message = match Message::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.event(format!("refused a message: {e}"));
                return None;
            }
        };
        let now_s = self.local_ms(bus_ms) / 1000;
        match (tech, message) {
            (false, Message::SheLoad(load)) => Some(self.on_she_load(&load)),
            (
                false,
                Message::GroupSeed {
                    generation,
                    revision,
                    first,
                    second,
                },
            ) => Some(self.on_group_seed(generation, revision, &first, &second)),
            (false, Message::Record(record)) => Some(self.on_record(&record, now_s)),
            (false, Message::Decommission(mac)) => {
                self.on_decommission(&mac);
                None
            }
            (true, Message::Grant(grant)) => Some(self.on_grant(grant, now_s)),
            (true, Message::Possession(signature)) => Some(self.on_possession(&signature, now_s)),
            (_, other) => {
                self.event(format!("ignored a {} message", other.name()));
                None
            }
        }
    }

    fn on_she_load(&mut self, load: &Load) -> Message {
        match self.she.load_key(&load.m1, &load.m2, &load.m3) {
            Ok((m4, m5)) => {
                self.counters.she_accepted += 1;
                Message::SheProof(Proof { m4, m5 })
            }
            Err(e) => {
                self.counters.she_refused += 1;
                self.event(format!(
                    "SHE refused an update of {}: {e}",
                    load.m1.key_id()
                ));
                Message::Verdict {
                    subject: Subject::She,
                    code: code::SHE_REFUSED,
                    tag: [0; 4],
                }
            }
        }
    }

    fn seed_refused(&mut self, code: u8, why: String) -> Message {
        self.counters.seeds_refused += 1;
        self.event(format!("refused a group seed: {why}"));
        Message::Verdict {
            subject: Subject::Seed,
            code,
            tag: [0; 4],
        }
    }

    fn on_group_seed(
        &mut self,
        generation: u32,
        revision: u32,
        first: &Load,
        second: &Load,
    ) -> Message {
        let Some(gov) = &self.nvm.governance else {
            return self.seed_refused(code::UNKNOWN_GENERATION, "no governance state".into());
        };
        if let Err(e) = check_generation(gov, Generation(generation)) {
            return self.seed_refused(governance_code(e), format!("generation {generation}: {e}"));
        }
        let slots_ok = first.m1.key_id() == SEED_SLOTS.0
            && second.m1.key_id() == SEED_SLOTS.1
            && first.m1.auth_id() == SlotId::MasterEcuKey
            && second.m1.auth_id() == SlotId::MasterEcuKey;
        let Some(expected) = seed_counter(generation, revision) else {
            return self.seed_refused(code::SEED_MISMATCH, "version out of range".into());
        };
        if !slots_ok {
            return self.seed_refused(
                code::SEED_MISMATCH,
                "not an update of KEY_4 and KEY_5".into(),
            );
        }
        let (m4a, m5a) = match self.she.load_key(&first.m1, &first.m2, &first.m3) {
            Ok(p) => p,
            Err(e) => return self.seed_refused(code::SHE_REFUSED, format!("SHE KEY_4: {e}")),
        };
        let (m4b, m5b) = match self.she.load_key(&second.m1, &second.m2, &second.m3) {
            Ok(p) => p,
            Err(e) => {
                // KEY_4 changed, KEY_5 did not: use no seed until a whole one arrives.
                self.nvm.seed = None;
                self.load_roller();
                return self.seed_refused(code::SHE_REFUSED, format!("SHE KEY_5: {e}"));
            }
        };
        if self.she.counter(SEED_SLOTS.0) != Some(expected)
            || self.she.counter(SEED_SLOTS.1) != Some(expected)
        {
            self.nvm.seed = None;
            self.load_roller();
            return self.seed_refused(
                code::SEED_MISMATCH,
                "the SHE counter does not match the announced version".into(),
            );
        }
        self.nvm.seed = Some((generation, revision));
        self.nvm.writes += 1;
        self.load_roller();
        self.counters.seeds_accepted += 1;
        self.event(format!(
            "group seed generation {generation} revision {revision} installed (SHE KEY_4, KEY_5)"
        ));
        Message::GroupSeedProof {
            first: Proof { m4: m4a, m5: m5a },
            second: Proof { m4: m4b, m5: m5b },
        }
    }

    fn on_record(&mut self, record: &[u8], now_s: u64) -> Message {
        let verdict = |code| Message::Verdict {
            subject: Subject::Record,
            code,
            tag: [0; 4],
        };
        let Some(gov) = self.nvm.governance.as_mut() else {
            self.counters.records_refused += 1;
            return verdict(code::RECORD_INVALID);
        };
        match verify_generation_record(gov, record, now_s) {
            Ok(acceptance) => {
                self.counters.records_accepted += 1;
                self.nvm.writes += 1;
                let seq = gov.sequence().unwrap_or(0);
                let current = gov.current_generation().map(|g| g.0).unwrap_or(0);
                let revoked = gov.revoked_generations().to_vec();
                if acceptance == Acceptance::Updated {
                    self.event(format!(
                        "governance record {seq} accepted: current generation {current}, revoked {revoked:?}"
                    ));
                }
                let had_keys = self.has_session_keys();
                self.load_roller();
                if had_keys && !self.has_session_keys() {
                    self.event(
                        "the group seed's generation is no longer allowed: session keys dropped"
                            .into(),
                    );
                }
                verdict(if acceptance == Acceptance::Updated {
                    code::OK
                } else {
                    code::REPEATED
                })
            }
            Err(e) => {
                self.counters.records_refused += 1;
                self.event(format!("refused a governance record: {e}"));
                verdict(governance_code(e))
            }
        }
    }

    fn on_decommission(&mut self, mac: &[u8; 16]) {
        let mut message = DECOMMISSION_LABEL.to_vec();
        message.extend_from_slice(self.config.uid.as_bytes());
        if !self.she.verify_mac(SlotId::Key1, &message, mac) {
            self.event("refused a decommission command: its MAC does not verify".into());
            return;
        }
        self.decommission();
    }

    /// Erases everything: every SHE slot, the session keys, the governance state, the counters
    /// in non-volatile memory. The ECU never runs again.
    pub fn decommission(&mut self) {
        self.power_off();
        self.she.zeroize();
        self.nvm.governance = None;
        self.nvm.seed = None;
        self.nvm.rx_latest.clear();
        self.nvm.fv_reserved = 0;
        self.offset_ms.zeroize();
        self.state = EcuState::Decommissioned;
        self.event("decommissioned: every key erased".into());
    }

    fn make_challenge(&mut self) -> Option<Challenge> {
        self.nvm.challenges += 1;
        self.nvm.writes += 1;
        let mut nonce = [0u8; CHALLENGE_LEN];
        for (i, half) in nonce.chunks_mut(16).enumerate() {
            let mut input = CHALLENGE_LABEL.to_vec();
            input.extend_from_slice(&self.nvm.challenges.to_be_bytes());
            input.push(i as u8);
            let mac = self.she.generate_mac(SlotId::Key1, &input).ok()?;
            half.copy_from_slice(&mac);
        }
        Some(Challenge::from_nonce(nonce))
    }

    fn grant_refused(&mut self, e: GovernanceError) -> Message {
        self.counters.grants_refused += 1;
        self.event(format!("refused a technician grant: {e}"));
        Message::Verdict {
            subject: Subject::Grant,
            code: governance_code(e),
            tag: [0; 4],
        }
    }

    fn on_grant(&mut self, grant: Vec<u8>, now_s: u64) -> Message {
        let Some(gov) = &self.nvm.governance else {
            return self.grant_refused(GovernanceError::UnknownGeneration);
        };
        if let Err(e) = verify_grant(gov, &grant, self.config.serial.as_bytes(), now_s) {
            return self.grant_refused(e);
        }
        let Some(challenge) = self.make_challenge() else {
            return self.grant_refused(GovernanceError::Possession);
        };
        let bytes = *challenge.as_bytes();
        if let Some(run) = self.run.as_mut() {
            run.pending_grant = Some((grant, challenge));
        }
        Message::Challenge(bytes)
    }

    fn on_possession(&mut self, signature: &[u8; 64], now_s: u64) -> Message {
        let Some((grant, challenge)) = self.run.as_mut().and_then(|r| r.pending_grant.take())
        else {
            return self.grant_refused(GovernanceError::Possession);
        };
        let Some(gov) = &self.nvm.governance else {
            return self.grant_refused(GovernanceError::UnknownGeneration);
        };
        let checked = verify_grant(gov, &grant, self.config.serial.as_bytes(), now_s)
            .and_then(|g| verify_possession(&g, &challenge, signature).map(|()| g.id));
        match checked {
            Ok(id) => {
                self.counters.grants_accepted += 1;
                self.event(format!(
                    "technician grant {id} accepted (possession proven)"
                ));
                Message::Verdict {
                    subject: Subject::Grant,
                    code: code::OK,
                    tag: [0; 4],
                }
            }
            Err(e) => self.grant_refused(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetkey_core::she::Counter;

    #[test]
    fn seed_counter_packs_generation_and_revision() {
        assert_eq!(seed_counter(2, 3).map(Counter::get), Some(0x2_0003));
        assert_eq!(seed_counter(0x1000, 0), None);
        assert_eq!(seed_counter(1, 0x1_0000), None);
        assert!(seed_counter(2, 0).unwrap().get() > seed_counter(1, 0xFFFF).unwrap().get());
    }
}
