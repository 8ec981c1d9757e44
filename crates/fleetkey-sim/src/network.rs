//! A whole network on the in-process bus: the gateway (fed by the key manager's [`Fleet`]), N
//! ECUs, a technician's tool and an attacker, driven step by step on a simulated clock, with the
//! faults of the scenario (a stalled clock, a power cycle, an ECU offline during a key update, a
//! decommissioned device). The bus capture is written as a candump log.
//!
//! The network is recorded in the fleet by the key manager's labels
//! ([`fleetkey::fleet::network`]): the gateway's roll seed is the network's group seed (a gateway
//! refresh re-keys the network). [`crate::capture`] reads them to verify a capture offline.

use std::path::Path;
use std::time::Duration;

use ed25519_dalek::{Signer as _, SigningKey};
use fleetkey::canlog::{self, Interface};
use fleetkey::error::Error as FleetError;
use fleetkey::fleet::Fleet;
use fleetkey::fleet::NewDevice;
use fleetkey::fleet::material::SheUpdate;
use fleetkey::fleet::network;
use fleetkey::model::{DeviceFilter, DeviceRecord, DeviceSerial};
use fleetkey_core::governance::{Challenge, Role, possession_message};
use fleetkey_core::secoc::{Profile, Stats, WindowConfig};
use fleetkey_core::she::{M1, M2, M3, M4, M5, Uid};
use fleetkey_core::{Key128, RollSchedule, RollSeed};

use crate::attacker::Attacker;
use crate::bus::{Bus, CanFrame, SimBus, SimClock, SimPort};
use crate::ecu::{Ecu, EcuConfig, EcuError, EcuState};
use crate::gateway::{Gateway, GatewayConfig, MemberKeys};
use crate::isotp::Link;
use crate::msg::{self, Load, Message, Proof, Subject, code};

/// Why the simulation stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The key manager refused or failed.
    #[error(transparent)]
    Fleet(#[from] FleetError),
    /// A node failed.
    #[error(transparent)]
    Node(#[from] EcuError),
    /// Material from the key manager did not parse.
    #[error("key material: {0}")]
    Material(String),
    /// The network did not settle (an update was never confirmed).
    #[error("network: {0}")]
    Stuck(String),
    /// The capture could not be written.
    #[error("capture: {0}")]
    Io(#[from] std::io::Error),
}

/// The shape of a network. Debug leaves the transport key out.
#[derive(Clone)]
pub struct NetworkSpec {
    /// Network name (device labels, gateway serial `GW-NAME`).
    pub name: String,
    /// How many ECUs.
    pub ecus: u16,
    /// SecOC profile of the CAN FD PDUs and the beacon.
    pub profile: Profile,
    /// How many ECUs (the last ones) are classic CAN nodes with profile `p1` (8-byte frames).
    pub classic_ecus: u16,
    /// Epoch length.
    pub period_ms: u64,
    /// Periodic PDU cycle.
    pub cycle_ms: u64,
    /// Clock skew of ECU i: `skew_ms[i % len]` (empty: none).
    pub skew_ms: Vec<i64>,
    /// The factory transport key in every new SHE (the fleet's `--she-transport-key`).
    pub transport_key: [u8; 16],
    /// Whether the gateway sends a time beacon each epoch.
    pub beacons: bool,
    /// The gateway resends an unanswered update after this many ms (longer than a member takes
    /// to answer, or the member sees the update twice).
    pub retry_ms: u64,
}

impl std::fmt::Debug for NetworkSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkSpec")
            .field("name", &self.name)
            .field("ecus", &self.ecus)
            .field("profile", &self.profile)
            .field("classic_ecus", &self.classic_ecus)
            .field("period_ms", &self.period_ms)
            .field("cycle_ms", &self.cycle_ms)
            .field("skew_ms", &self.skew_ms)
            .field("beacons", &self.beacons)
            .field("retry_ms", &self.retry_ms)
            .finish_non_exhaustive()
    }
}

impl NetworkSpec {
    /// A network of `ecus` ECUs with the defaults: fd64, 1 s epochs, 100 ms cycle, skews of
    /// 0, +120, -80, +40 ms, beacons on, retries after 300 ms.
    pub fn new(name: &str, ecus: u16, transport_key: [u8; 16]) -> Self {
        Self {
            name: name.to_owned(),
            ecus,
            profile: Profile::FD64,
            classic_ecus: 0,
            period_ms: 1000,
            cycle_ms: 100,
            skew_ms: vec![0, 120, -80, 40],
            transport_key,
            beacons: true,
            retry_ms: 300,
        }
    }
}

/// The serial of the gateway of network `name`.
pub fn gateway_serial(name: &str) -> String {
    format!("GW-{name}")
}

/// The serial of ECU `i`.
pub fn ecu_serial(i: u16) -> String {
    format!("ECU-{i:04}")
}

/// The periodic PDU of ECU `i`.
pub fn ecu_pdu(i: u16) -> u16 {
    0x100 + i
}

/// The SHE UID of ECU `i`.
pub fn ecu_uid(i: u16) -> Uid {
    let mut uid = [0u8; 15];
    uid[0] = 0xF1;
    uid[13..].copy_from_slice(&(i + 1).to_be_bytes());
    Uid::from_bytes(uid)
}

/// One 22-byte payload (a CAN FD frame of 32 bytes once secured with fd64).
pub fn payload(pdu: u16, n: u64) -> [u8; 22] {
    let mut p = [0u8; 22];
    p[..2].copy_from_slice(&pdu.to_be_bytes());
    p[2..10].copy_from_slice(&n.to_be_bytes());
    p[10..].copy_from_slice(b"rpm=1850;tq=");
    p
}

/// The payload of PDU `pdu` under `profile`: 22 bytes for CAN FD, the profile's longest (4 bytes
/// for `p1`) for classic CAN.
pub fn payload_for(profile: &Profile, pdu: u16, n: u64) -> Vec<u8> {
    let full = payload(pdu, n);
    let mut p = full.to_vec();
    if profile.max_frame() <= 8 {
        p = n.to_be_bytes().to_vec();
        p.drain(..8usize.saturating_sub(profile.max_payload()));
    }
    p.truncate(profile.max_payload());
    p
}

impl NetworkSpec {
    /// The profile of ECU `i`'s PDU.
    pub fn profile_of(&self, i: u16) -> Profile {
        if i + self.classic_ecus >= self.ecus {
            Profile::P1
        } else {
            self.profile
        }
    }
}

fn material(what: impl std::fmt::Display) -> SimError {
    SimError::Material(what.to_string())
}

fn key128(hex_text: &str) -> Result<Key128, SimError> {
    let bytes = zeroize::Zeroizing::new(hex::decode(hex_text).map_err(material)?);
    Key128::from_slice(&bytes).ok_or_else(|| material("key length"))
}

fn roll_seed(hex_text: &str) -> Result<RollSeed, SimError> {
    let bytes = zeroize::Zeroizing::new(hex::decode(hex_text).map_err(material)?);
    RollSeed::from_slice(&bytes).ok_or_else(|| material("roll seed length"))
}

/// An update from the key manager as ISO-TP material: M1-M3 to send, M4-M5 to expect.
pub fn she_load(u: &SheUpdate) -> Result<(Load, Proof), SimError> {
    let b = |h: &str| hex::decode(h).map_err(material);
    Ok((
        Load {
            m1: M1::from_bytes(&b(&u.m1)?).map_err(material)?,
            m2: M2::from_bytes(&b(&u.m2)?).map_err(material)?,
            m3: M3::from_bytes(&b(&u.m3)?).map_err(material)?,
        },
        Proof {
            m4: M4::from_bytes(&b(&u.m4)?).map_err(material)?,
            m5: M5::from_bytes(&b(&u.m5)?).map_err(material)?,
        },
    ))
}

/// One ECU and its bus port.
pub struct Node {
    /// The ECU.
    pub ecu: Ecu,
    port: SimPort,
    sent: u64,
}

/// A technician's diagnostic tool: an Ed25519 key bound to a grant.
pub struct Technician {
    key: SigningKey,
    port: SimPort,
}

impl Technician {
    /// The grant key's public half.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }
}

/// A whole network.
pub struct Network {
    spec: NetworkSpec,
    bus: SimBus,
    clock: SimClock,
    schedule: RollSchedule,
    gateway_serial: DeviceSerial,
    /// The gateway.
    pub gateway: Gateway,
    gw_port: SimPort,
    /// The ECUs.
    pub nodes: Vec<Node>,
    /// The attacker.
    pub attacker: Attacker,
    attacker_port: SimPort,
    /// The technician.
    pub technician: Technician,
    next_cycle_ms: u64,
    next_beacon_ms: u64,
}

/// The results of one technician session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantOutcome {
    /// Grant verified and possession proven.
    Accepted,
    /// Refused with a verdict code ([`msg::code`]).
    Refused(u8),
    /// No answer.
    NoAnswer,
}

impl Network {
    /// Registers and provisions the gateway and `spec.ecus` ECUs in the fleet (governed scheme,
    /// with a SHE transport key), builds the network on a new in-process bus starting at
    /// `start_ms`, loads every SHE over ISO-TP, pushes the newest governance record and
    /// distributes the group seed.
    pub fn provision(
        fleet: &mut Fleet,
        spec: NetworkSpec,
        start_ms: u64,
    ) -> Result<Self, SimError> {
        let clock = SimClock::new(start_ms * 1000);
        let bus = SimBus::new(clock.clone(), true);
        let Provisioned {
            gateway,
            ecus,
            schedule,
            gateway_serial: gw_serial,
        } = provision_network(fleet, &spec)?;
        let mut nodes = Vec::new();
        for config in ecus {
            let mut ecu = Ecu::new(config, Some(Key128::from_bytes(spec.transport_key)))
                .map_err(|e| material(format!("governance root: {e}")))?;
            ecu.power_on();
            nodes.push(Node {
                ecu,
                port: bus.port(),
                sent: 0,
            });
        }
        let gw_port = bus.port();
        let attacker_port = bus.port();
        let technician = Technician {
            key: SigningKey::from_bytes(&[0x7E; 32]),
            port: bus.port(),
        };
        let mut net = Network {
            next_cycle_ms: start_ms,
            next_beacon_ms: start_ms,
            spec,
            bus,
            clock,
            schedule,
            gateway_serial: gw_serial,
            gateway,
            gw_port,
            nodes,
            attacker: Attacker::new(),
            attacker_port,
            technician,
        };
        net.settle()?;
        net.push_latest_record(fleet)?;
        net.distribute_group_seed(fleet)?;
        Ok(net)
    }

    /// Turns the gateway's time beacon on or off.
    pub fn set_beacons(&mut self, on: bool) {
        self.spec.beacons = on;
    }

    /// The spec.
    pub fn spec(&self) -> &NetworkSpec {
        &self.spec
    }

    /// The bus time in ms.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The roll schedule.
    pub fn schedule(&self) -> RollSchedule {
        self.schedule
    }

    /// Frames on the bus so far.
    pub fn frames(&self) -> usize {
        self.bus.frames_sent()
    }

    /// ECU `i`.
    pub fn ecu(&self, i: usize) -> Option<&Ecu> {
        self.nodes.get(i).map(|n| &n.ecu)
    }

    /// ECU `i`, mutable.
    pub fn ecu_mut(&mut self, i: usize) -> Option<&mut Ecu> {
        self.nodes.get_mut(i).map(|n| &mut n.ecu)
    }

    /// Pushes the fleet's newest generation record to every member.
    pub fn push_latest_record(&mut self, fleet: &mut Fleet) -> Result<u64, SimError> {
        let record = latest_record(fleet)?;
        self.gateway.push_record(&record.bytes);
        self.settle_allowing_offline()?;
        Ok(record.sequence)
    }

    /// Distributes the gateway device's current roll seed as the group seed.
    pub fn distribute_group_seed(&mut self, fleet: &mut Fleet) -> Result<(u32, u32), SimError> {
        let (version, seed) = group_seed(fleet, &self.gateway_serial)?;
        if !self.gateway.set_group_seed(version.0, version.1, &seed) {
            return Err(material("group seed version out of range"));
        }
        self.settle_allowing_offline()?;
        Ok(version)
    }

    /// Re-keys the network: refreshes the gateway device (new revision, current generation) and
    /// distributes its new roll seed.
    pub fn rekey(&mut self, fleet: &mut Fleet, reason: &str) -> Result<(u32, u32), SimError> {
        fleet.refresh(&self.gateway_serial, reason)?;
        self.distribute_group_seed(fleet)
    }

    /// Refreshes ECU `i` in the fleet and carries its SHE updates over the bus; the gateway
    /// takes the new keys.
    pub fn refresh_ecu(
        &mut self,
        fleet: &mut Fleet,
        i: u16,
        reason: &str,
    ) -> Result<usize, SimError> {
        let serial = DeviceSerial::new(ecu_serial(i)).map_err(material)?;
        let update = fleet.refresh(&serial, reason)?;
        let loads = update
            .she
            .iter()
            .map(she_load)
            .collect::<Result<Vec<_>, _>>()?;
        let n = loads.len();
        self.gateway.queue_she(&ecu_serial(i), loads);
        let p = fleet.provision(&serial)?;
        self.gateway.set_member_keys(
            &ecu_serial(i),
            key128(&p.keys.auth)?,
            key128(&p.keys.key_update)?,
        );
        self.settle_allowing_offline()?;
        Ok(n)
    }

    /// Moves every node: delivers and answers every waiting frame until the bus is quiet.
    pub fn pump(&mut self) -> Result<(), SimError> {
        for _ in 0..10_000 {
            let before = self.bus.frames_sent();
            self.gateway.poll(&mut self.gw_port)?;
            for n in &mut self.nodes {
                if n.ecu.state() == EcuState::On {
                    n.ecu.poll(&mut n.port)?;
                } else {
                    n.port.discard_pending();
                }
            }
            self.attacker.observe(&mut self.attacker_port)?;
            self.technician.port.discard_pending();
            if self.bus.frames_sent() == before {
                return Ok(());
            }
        }
        Err(SimError::Stuck("the bus never went quiet".into()))
    }

    /// Pumps and lets time pass (retries) until the gateway has nothing unconfirmed for a node
    /// that is on.
    pub fn settle(&mut self) -> Result<(), SimError> {
        self.settle_until(|net| net.gateway.is_settled())
    }

    fn settle_allowing_offline(&mut self) -> Result<(), SimError> {
        self.settle_until(|net| {
            net.nodes
                .iter()
                .all(|n| n.ecu.state() != EcuState::On || net.gateway.pending(n.ecu.serial()) == 0)
        })
    }

    fn settle_until(&mut self, done: impl Fn(&Network) -> bool) -> Result<(), SimError> {
        for _ in 0..200 {
            self.pump()?;
            if done(self) {
                return Ok(());
            }
            self.clock.advance_us(50_000);
        }
        Err(SimError::Stuck(
            "an update was never confirmed by a member that is on".into(),
        ))
    }

    /// Runs the periodic traffic for `duration` of bus time: every ECU that is on sends its PDU
    /// each cycle, the gateway sends a beacon each epoch, every node verifies what it receives.
    pub fn run_for(&mut self, duration: Duration) -> Result<(), SimError> {
        let end = self.now_ms() + u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        loop {
            let next = self.next_cycle_ms.max(self.now_ms());
            if next > end {
                break;
            }
            self.clock.advance_to_us(next * 1000);
            if self.spec.beacons && next >= self.next_beacon_ms {
                self.gateway.send_beacon(&mut self.gw_port)?;
                self.next_beacon_ms = next + self.spec.period_ms;
            }
            for n in &mut self.nodes {
                if n.ecu.state() == EcuState::On {
                    let c = n.ecu.config();
                    let p = payload_for(&c.profile, c.pdu, n.sent);
                    if n.ecu.send_periodic(&mut n.port, &p)? {
                        n.sent += 1;
                    }
                }
                // Deliver as we go so that each frame is verified near its own time.
            }
            self.pump()?;
            self.next_cycle_ms = next + self.spec.cycle_ms;
        }
        self.clock.advance_to_us(end * 1000);
        Ok(())
    }

    /// Sends one PDU from ECU `i` now (false if it cannot: off, no keys).
    pub fn send_from(&mut self, i: usize) -> Result<bool, SimError> {
        let Some(n) = self.nodes.get_mut(i) else {
            return Ok(false);
        };
        let c = n.ecu.config();
        let p = payload_for(&c.profile, c.pdu, n.sent);
        let sent = n.ecu.send_periodic(&mut n.port, &p)?;
        if sent {
            n.sent += 1;
        }
        self.pump()?;
        Ok(sent)
    }

    /// Powers ECU `i` off.
    pub fn power_off(&mut self, i: usize) {
        if let Some(n) = self.nodes.get_mut(i) {
            n.ecu.power_off();
            n.port.discard_pending();
        }
    }

    /// Powers ECU `i` on (it hears only what is sent from now on).
    pub fn power_on(&mut self, i: usize) -> Result<(), SimError> {
        if let Some(n) = self.nodes.get_mut(i) {
            n.port.discard_pending();
            n.ecu.power_on();
        }
        self.settle_allowing_offline()
    }

    /// Lets the attacker act on the bus, then delivers its frames.
    pub fn attack(
        &mut self,
        act: impl FnOnce(&mut Attacker, &mut dyn Bus) -> Result<(), EcuError>,
    ) -> Result<(), SimError> {
        act(&mut self.attacker, &mut self.attacker_port)?;
        self.pump()
    }

    /// The technician presents a grant to ECU `i` and, when challenged, proves possession.
    pub fn present_grant(&mut self, i: u16, grant: &[u8]) -> Result<GrantOutcome, SimError> {
        let (ecu_tx, ecu_rx) = EcuConfig::tech_link(i);
        let mut link = Link::new(ecu_rx, ecu_tx, msg::MAX_MESSAGE);
        link.send(Message::Grant(grant.to_vec()).encode())
            .map_err(|e| SimError::Node(EcuError::IsoTp(e)))?;
        let mut outcome = GrantOutcome::NoAnswer;
        for _ in 0..100 {
            let now = self.now_ms();
            for f in link.poll(now).unwrap_or_default() {
                self.technician.port.send(&f).map_err(EcuError::from)?;
            }
            // Deliver to the ECU, then read its answer on the technician's port.
            self.gateway.poll(&mut self.gw_port)?;
            for n in &mut self.nodes {
                if n.ecu.state() == EcuState::On {
                    n.ecu.poll(&mut n.port)?;
                }
            }
            self.attacker.observe(&mut self.attacker_port)?;
            let mut quiet = true;
            while let Some(r) = self.technician.port.try_recv().map_err(EcuError::from)? {
                if r.frame.id() != ecu_tx {
                    continue;
                }
                quiet = false;
                let Ok((answer, message)) = link.on_frame(now, r.frame.data()) else {
                    continue;
                };
                for f in answer {
                    self.technician.port.send(&f).map_err(EcuError::from)?;
                }
                match message.as_deref().map(Message::decode) {
                    Some(Ok(Message::Challenge(c))) => {
                        let m = possession_message(grant_id(grant), &Challenge::from_nonce(c));
                        let signature = self.technician.key.sign(&m).to_bytes();
                        link.send(Message::Possession(signature).encode())
                            .map_err(|e| SimError::Node(EcuError::IsoTp(e)))?;
                    }
                    Some(Ok(Message::Verdict {
                        subject: Subject::Grant,
                        code: c,
                        ..
                    })) => {
                        outcome = if c == code::OK {
                            GrantOutcome::Accepted
                        } else {
                            GrantOutcome::Refused(c)
                        };
                    }
                    _ => {}
                }
            }
            if outcome != GrantOutcome::NoAnswer || (quiet && link.is_idle()) {
                break;
            }
        }
        self.pump()?;
        Ok(outcome)
    }

    /// Issues a technician grant for the technician's key, scoped to every ECU.
    pub fn issue_grant(
        &self,
        fleet: &mut Fleet,
        subject: &str,
    ) -> Result<(u64, Vec<u8>), SimError> {
        Ok(fleet.issue_grant(
            subject,
            Role::Technician,
            &[b"ECU-".to_vec()],
            Duration::from_secs(24 * 3600),
            self.technician.public_key(),
        )?)
    }

    /// Decommissions ECU `i`: the gateway sends the authenticated command (the ECU erases every
    /// key), the fleet revokes and decommissions the device, and the network is re-keyed without
    /// it. Returns the new group seed version.
    pub fn decommission(
        &mut self,
        fleet: &mut Fleet,
        i: u16,
        reason: &str,
    ) -> Result<(u32, u32), SimError> {
        let serial = DeviceSerial::new(ecu_serial(i)).map_err(material)?;
        self.gateway.decommission(&ecu_serial(i));
        self.settle()?;
        fleet.revoke(&serial, reason)?;
        fleet.decommission(&serial, reason)?;
        self.rekey(
            fleet,
            &format!("re-key after decommissioning {}", ecu_serial(i)),
        )
    }

    /// Frames every ECU and the gateway received, by outcome.
    pub fn stats(&self) -> Stats {
        let mut s = self.gateway.stats();
        for n in &self.nodes {
            s.merge(&n.ecu.stats());
        }
        s
    }

    /// Every event of the gateway and the ECUs since the last call.
    pub fn take_events(&mut self) -> Vec<String> {
        let mut e = self.gateway.take_events();
        for n in &mut self.nodes {
            e.extend(n.ecu.take_events());
        }
        e
    }

    /// Writes the whole bus capture as a candump log (`candump -l`, interface `vcan0`).
    pub fn write_capture(&self, path: &Path) -> Result<usize, SimError> {
        let iface = Interface::new("vcan0").map_err(material)?;
        let lines = self
            .bus
            .capture()
            .iter()
            .map(|r| r.frame.to_log_line(r.at_us, &iface))
            .collect::<Result<Vec<_>, _>>()
            .map_err(material)?;
        let mut out = Vec::new();
        canlog::write_log(&mut out, &lines)?;
        std::fs::write(path, out)?;
        Ok(lines.len())
    }

    /// Every frame on the bus so far.
    pub fn capture(&self) -> Vec<crate::bus::Received> {
        self.bus.capture()
    }

    /// Whether `frame` is a PDU of this network.
    pub fn is_pdu(&self, frame: &CanFrame) -> bool {
        self.nodes
            .iter()
            .any(|n| u32::from(n.ecu.config().pdu) == frame.id())
    }
}

/// A network's gateway (members provisioned, SHE initial loads queued) and its ECUs'
/// configurations, from the fleet.
pub struct Provisioned {
    /// The gateway.
    pub gateway: Gateway,
    /// Every ECU's configuration (factory data).
    pub ecus: Vec<EcuConfig>,
    /// The roll schedule.
    pub schedule: RollSchedule,
    /// The gateway's device serial.
    pub gateway_serial: DeviceSerial,
}

/// Registers (unless present) and provisions the gateway and `spec.ecus` ECUs in the fleet
/// (governed scheme, with a SHE transport key): the gateway gets every member's keys and their
/// SHE initial loads (M1-M3 under the transport key) to send.
pub fn provision_network(fleet: &mut Fleet, spec: &NetworkSpec) -> Result<Provisioned, SimError> {
    let schedule = RollSchedule::new(0, spec.period_ms).map_err(material)?;
    let window = WindowConfig::default();
    let gw_serial = DeviceSerial::new(gateway_serial(&spec.name)).map_err(material)?;
    ensure_device(
        fleet,
        &gw_serial,
        None,
        network::gateway_labels(&spec.name, spec.profile, spec.period_ms),
    )?;
    let (root, kid) = fleet.governance_root()?;
    let fleet_id = fleet.config().fleet_id.clone();
    let mut gateway = Gateway::new(GatewayConfig {
        profile: spec.profile,
        schedule,
        window,
        retry_ms: spec.retry_ms,
    });
    let pdus: Vec<(u16, Profile)> = (0..spec.ecus)
        .map(|i| (ecu_pdu(i), spec.profile_of(i)))
        .collect();
    let mut nodes = Vec::new();
    for i in 0..spec.ecus {
        let serial = DeviceSerial::new(ecu_serial(i)).map_err(material)?;
        let uid = ecu_uid(i);
        ensure_device(
            fleet,
            &serial,
            Some(*uid.as_bytes()),
            network::member_labels(&spec.name, ecu_pdu(i), spec.profile_of(i)),
        )?;
        let p = fleet.provision(&serial)?;
        let loads = p
            .she
            .as_ref()
            .ok_or_else(|| {
                if p.device.revision > 0 {
                    material(format!(
                        "{serial} was refreshed: its SHE no longer holds the factory transport key \
                         (use a new network name for new devices)"
                    ))
                } else {
                    material("the fleet has no SHE transport key (init --she-transport-key-file)")
                }
            })?
            .iter()
            .map(she_load)
            .collect::<Result<Vec<_>, _>>()?;
        gateway.add_member(MemberKeys {
            serial: ecu_serial(i),
            uid,
            index: i,
            pdu: ecu_pdu(i),
            profile: spec.profile_of(i),
            auth: key128(&p.keys.auth)?,
            key_update: key128(&p.keys.key_update)?,
        });
        gateway.queue_she(&ecu_serial(i), loads);
        let skew = if spec.skew_ms.is_empty() {
            0
        } else {
            spec.skew_ms[usize::from(i) % spec.skew_ms.len()]
        };
        let config = EcuConfig {
            serial: ecu_serial(i),
            uid,
            fleet: fleet_id.clone(),
            root: (root, kid.to_vec()),
            pdu: ecu_pdu(i),
            peers: pdus
                .iter()
                .copied()
                .filter(|&(p, _)| p != ecu_pdu(i))
                .collect(),
            profile: spec.profile_of(i),
            beacon_profile: spec.profile,
            schedule,
            window,
            skew_ms: skew,
            index: i,
            reserve: 64,
        };
        nodes.push(config);
    }
    Ok(Provisioned {
        gateway,
        ecus: nodes,
        schedule,
        gateway_serial: gw_serial,
    })
}

/// The fleet's newest generation record (published now if there is none).
pub fn latest_record(
    fleet: &mut Fleet,
) -> Result<fleetkey::fleet::governance::Published, SimError> {
    Ok(match fleet.latest_generation_record()? {
        Some(r) => r,
        None => fleet.publish_generation_record(
            "simulated network",
            fleetkey::fleet::governance::AUTO_RECORD_VALIDITY,
        )?,
    })
}

/// The network's group seed: the gateway device's roll seed, with its (generation, revision).
pub fn group_seed(
    fleet: &mut Fleet,
    gateway: &DeviceSerial,
) -> Result<((u32, u32), RollSeed), SimError> {
    let p = fleet.provision(gateway)?;
    let seed = roll_seed(&p.keys.roll_seed)?;
    Ok(((p.device.generation, p.device.revision), seed))
}

/// What the factory puts in an ECU (UDP mode: one JSON file per ECU). Holds the factory
/// transport key: handle it as key material.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Factory {
    /// Serial.
    pub serial: String,
    /// Index on the network.
    pub index: u16,
    /// SHE UID, hex.
    pub uid: String,
    /// Factory transport key, hex.
    pub transport_key: String,
    /// Fleet id.
    pub fleet: String,
    /// Governance root public key, hex.
    pub root: String,
    /// Its key id, hex.
    pub kid: String,
    /// Its PDU.
    pub pdu: u16,
    /// Peer PDUs and their profiles.
    pub peers: Vec<(u16, String)>,
    /// Profile name of its PDU.
    pub profile: String,
    /// Profile name of the beacon.
    pub beacon_profile: String,
    /// Epoch length.
    pub period_ms: u64,
    /// Clock skew.
    pub skew_ms: i64,
}

impl std::fmt::Debug for Factory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Factory")
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

impl Factory {
    /// The factory data of an ECU.
    pub fn new(config: &EcuConfig, transport_key: &[u8; 16]) -> Self {
        Self {
            serial: config.serial.clone(),
            index: config.index,
            uid: hex::encode(config.uid.as_bytes()),
            transport_key: hex::encode(transport_key),
            fleet: config.fleet.clone(),
            root: hex::encode(config.root.0),
            kid: hex::encode(&config.root.1),
            pdu: config.pdu,
            peers: config
                .peers
                .iter()
                .map(|(p, profile)| (*p, profile.name().to_owned()))
                .collect(),
            profile: config.profile.name().to_owned(),
            beacon_profile: config.beacon_profile.name().to_owned(),
            period_ms: config.schedule.period_ms(),
            skew_ms: config.skew_ms,
        }
    }

    /// The ECU's configuration and transport key.
    pub fn config(&self) -> Result<(EcuConfig, Key128), SimError> {
        let uid = hex::decode(&self.uid)
            .ok()
            .and_then(|b| Uid::from_slice(&b))
            .ok_or_else(|| material("uid: 30 hex characters"))?;
        let root: [u8; 32] = hex::decode(&self.root)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| material("root: 64 hex characters"))?;
        let kid = hex::decode(&self.kid).map_err(|e| material(format!("kid: {e}")))?;
        let by_name =
            |name: &str| Profile::by_name(name).map_err(|e| material(format!("profile: {e}")));
        let profile = by_name(&self.profile)?;
        let beacon_profile = by_name(&self.beacon_profile)?;
        let peers = self
            .peers
            .iter()
            .map(|(p, name)| Ok((*p, by_name(name)?)))
            .collect::<Result<Vec<_>, SimError>>()?;
        let schedule = RollSchedule::new(0, self.period_ms)
            .map_err(|e| material(format!("period_ms: {e}")))?;
        let transport = key128(&self.transport_key)?;
        Ok((
            EcuConfig {
                serial: self.serial.clone(),
                uid,
                fleet: self.fleet.clone(),
                root: (root, kid),
                pdu: self.pdu,
                peers,
                profile,
                beacon_profile,
                schedule,
                window: WindowConfig::default(),
                skew_ms: self.skew_ms,
                index: self.index,
                reserve: 64,
            },
            transport,
        ))
    }
}

impl Drop for Factory {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.transport_key.zeroize();
    }
}

/// A grant's id (0 if the record does not parse).
fn grant_id(grant: &[u8]) -> u64 {
    match fleetkey_core::governance::inspect_unverified(grant) {
        Ok((_, fleetkey_core::governance::Record::Grant(g))) => g.id,
        _ => 0,
    }
}

/// Registers a device unless present.
fn ensure_device(
    fleet: &mut Fleet,
    serial: &DeviceSerial,
    she_uid: Option<[u8; 15]>,
    labels: Vec<String>,
) -> Result<DeviceRecord, SimError> {
    let filter = DeviceFilter {
        serial_prefix: Some(serial.as_bytes().to_vec()),
        ..DeviceFilter::default()
    };
    if let Some(d) = fleet
        .devices(&filter, None, 16)?
        .into_iter()
        .find(|d| &d.serial == serial)
    {
        return Ok(d);
    }
    Ok(fleet.add_device(NewDevice {
        serial: serial.clone(),
        she_uid,
        labels,
    })?)
}
