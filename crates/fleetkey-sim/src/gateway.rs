//! The gateway: the network's key master. It holds the members' device keys (provisioned from
//! the key manager), distributes the network's group roll seed to each member as two SHE updates
//! (KEY_4, KEY_5) under that member's KEY_UPDATE key, pushes governance records, carries SHE
//! updates over ISO-TP and checks every M4/M5 proof, retries what a member missed, sends the
//! time beacon, and verifies every member's PDU.

use std::collections::{BTreeMap, VecDeque};

use fleetkey_core::secoc::{FrameKey, KeyWindow, Profile, Receiver, Sender, Stats, WindowConfig};
use fleetkey_core::she::{self, Uid};
use fleetkey_core::{Key128, RollSchedule, RollSeed, Roller};

use crate::bus::{Bus, CanFrame};
use fleetkey::fleet::network::wrap_group_seed;

use crate::ecu::{BEACON_ID, EcuConfig, EcuError, seed_counter};
use crate::isotp::Link;
use crate::msg::{self, DECOMMISSION_LABEL, Load, Message, Proof, Subject, code};

/// A member's keys and addresses, as provisioned from the key manager. Keys zeroize on drop;
/// Debug shows the addresses only.
pub struct MemberKeys {
    /// Serial.
    pub serial: String,
    /// SHE UID.
    pub uid: Uid,
    /// Index on the network (ISO-TP link ids).
    pub index: u16,
    /// Its periodic PDU.
    pub pdu: u16,
    /// The PDU's SecOC profile.
    pub profile: Profile,
    /// AUTH key (SHE KEY_1): authenticates the decommission command.
    pub auth: Key128,
    /// KEY_UPDATE key (SHE MASTER_ECU_KEY): authorises the group seed updates.
    pub key_update: Key128,
}

impl std::fmt::Debug for MemberKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberKeys")
            .field("serial", &self.serial)
            .field("uid", &self.uid)
            .field("index", &self.index)
            .field("pdu", &self.pdu)
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
enum Expect {
    Proof(Proof),
    SeedProof(Proof, Proof),
    RecordVerdict,
    Nothing,
}

#[derive(Clone, Debug)]
struct Pending {
    message: Vec<u8>,
    expect: Expect,
    what: String,
    sent_at: Option<u64>,
}

struct Member {
    keys: MemberKeys,
    link: Link,
    pending: VecDeque<Pending>,
    seed: Option<(u32, u32)>,
    removed: bool,
}

/// The gateway's fixed configuration.
#[derive(Clone, Copy, Debug)]
pub struct GatewayConfig {
    /// SecOC profile.
    pub profile: Profile,
    /// Roll schedule.
    pub schedule: RollSchedule,
    /// Receivers' key window.
    pub window: WindowConfig,
    /// Resend an unanswered update after this many ms.
    pub retry_ms: u64,
}

/// Counts of what the gateway did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GatewayCounters {
    /// Updates (SHE loads, group seeds, records) a member confirmed.
    pub confirmed: u64,
    /// Updates a member refused, or answered with a wrong proof.
    pub refused: u64,
    /// Resends of unanswered updates.
    pub retries: u64,
    /// Beacons sent.
    pub beacons: u64,
}

/// The gateway.
pub struct Gateway {
    config: GatewayConfig,
    members: Vec<Member>,
    group: Option<(u32, u32, Roller)>,
    windows: BTreeMap<u16, KeyWindow>,
    receivers: BTreeMap<u16, Receiver>,
    beacon: Sender,
    counters: GatewayCounters,
    events: Vec<String>,
}

fn load_and_proof(m: she::UpdateMessages) -> (Load, Proof) {
    (
        Load {
            m1: m.m1,
            m2: m.m2,
            m3: m.m3,
        },
        Proof { m4: m.m4, m5: m.m5 },
    )
}

impl Gateway {
    /// A gateway with no members.
    pub fn new(config: GatewayConfig) -> Self {
        Self {
            beacon: Sender::new(config.profile, BEACON_ID),
            config,
            members: Vec::new(),
            group: None,
            windows: BTreeMap::new(),
            receivers: BTreeMap::new(),
            counters: GatewayCounters::default(),
            events: Vec::new(),
        }
    }

    /// Adds a member.
    pub fn add_member(&mut self, keys: MemberKeys) {
        let (ecu_tx, ecu_rx) = EcuConfig::gateway_link(keys.index);
        self.receivers
            .insert(keys.pdu, Receiver::new(keys.profile, keys.pdu));
        self.members.push(Member {
            link: Link::new(ecu_rx, ecu_tx, msg::MAX_MESSAGE),
            keys,
            pending: VecDeque::new(),
            seed: None,
            removed: false,
        });
    }

    fn member_mut(&mut self, serial: &str) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| m.keys.serial == serial)
    }

    /// Replaces a member's keys (after a refresh whose SHE updates were queued).
    pub fn set_member_keys(&mut self, serial: &str, auth: Key128, key_update: Key128) -> bool {
        match self.member_mut(serial) {
            Some(m) => {
                m.keys.auth = auth;
                m.keys.key_update = key_update;
                true
            }
            None => false,
        }
    }

    /// Queues SHE updates (M1-M3 with the M4-M5 expected back) for a member.
    pub fn queue_she(&mut self, serial: &str, updates: Vec<(Load, Proof)>) -> bool {
        let Some(m) = self.member_mut(serial) else {
            return false;
        };
        for (load, proof) in updates {
            m.pending.push_back(Pending {
                what: format!("SHE update of {}", load.m1.key_id()),
                message: Message::SheLoad(load).encode(),
                expect: Expect::Proof(proof),
                sent_at: None,
            });
        }
        true
    }

    /// Makes `seed` the network's group seed at (generation, revision) and queues it for every
    /// member, wrapped as SHE updates of KEY_4 and KEY_5 under the member's KEY_UPDATE key with
    /// counter `generation << 16 | revision`.
    pub fn set_group_seed(&mut self, generation: u32, revision: u32, seed: &RollSeed) -> bool {
        if seed_counter(generation, revision).is_none() {
            return false;
        }
        self.group = Some((generation, revision, Roller::new(seed)));
        self.windows.clear();
        for m in self.members.iter_mut().filter(|m| !m.removed) {
            let Some([first, second]) =
                wrap_group_seed(m.keys.uid, &m.keys.key_update, generation, revision, seed)
            else {
                continue;
            };
            let (l1, p1) = load_and_proof(first);
            let (l2, p2) = load_and_proof(second);
            m.pending.push_back(Pending {
                what: format!("group seed {generation}.{revision}"),
                message: Message::GroupSeed {
                    generation,
                    revision,
                    first: l1,
                    second: l2,
                }
                .encode(),
                expect: Expect::SeedProof(p1, p2),
                sent_at: None,
            });
        }
        true
    }

    /// The group seed's (generation, revision).
    pub fn group_version(&self) -> Option<(u32, u32)> {
        self.group.as_ref().map(|(g, r, _)| (*g, *r))
    }

    /// Queues a governance record for every member.
    pub fn push_record(&mut self, record: &[u8]) {
        for m in self.members.iter_mut().filter(|m| !m.removed) {
            m.pending.push_back(Pending {
                what: "governance record".into(),
                message: Message::Record(record.to_vec()).encode(),
                expect: Expect::RecordVerdict,
                sent_at: None,
            });
        }
    }

    /// Queues the decommission command (AES-CMAC under the member's AUTH key over
    /// `"fleetkey decommission v1" || UID`); the member gets no further update.
    pub fn decommission(&mut self, serial: &str) -> bool {
        let Some(m) = self.member_mut(serial) else {
            return false;
        };
        let mut input = DECOMMISSION_LABEL.to_vec();
        input.extend_from_slice(m.keys.uid.as_bytes());
        let mac = she::cmac(&m.keys.auth, &input);
        m.pending.clear();
        m.pending.push_back(Pending {
            what: "decommission".into(),
            message: Message::Decommission(mac).encode(),
            expect: Expect::Nothing,
            sent_at: None,
        });
        m.removed = true;
        true
    }

    /// Updates not yet confirmed, for a member.
    pub fn pending(&self, serial: &str) -> usize {
        self.members
            .iter()
            .find(|m| m.keys.serial == serial)
            .map_or(0, |m| m.pending.len())
    }

    /// Whether every member confirmed every update.
    pub fn is_settled(&self) -> bool {
        self.members
            .iter()
            .all(|m| m.pending.is_empty() && m.link.is_idle())
    }

    /// The group seed version a member confirmed.
    pub fn member_seed(&self, serial: &str) -> Option<(u32, u32)> {
        self.members
            .iter()
            .find(|m| m.keys.serial == serial)
            .and_then(|m| m.seed)
    }

    /// The counters.
    pub fn counters(&self) -> GatewayCounters {
        self.counters
    }

    /// Frames of every member's PDU, by outcome.
    pub fn stats(&self) -> Stats {
        let mut s = Stats::default();
        for r in self.receivers.values() {
            s.merge(&r.stats());
        }
        s
    }

    /// Frames of one member's PDU, by outcome.
    pub fn member_stats(&self, pdu: u16) -> Stats {
        self.receivers
            .get(&pdu)
            .map(Receiver::stats)
            .unwrap_or_default()
    }

    /// What happened, in order.
    pub fn take_events(&mut self) -> Vec<String> {
        std::mem::take(&mut self.events)
    }

    /// Sends the time beacon: the gateway's time, secured on [`BEACON_ID`] with its epoch's key.
    pub fn send_beacon(&mut self, bus: &mut dyn Bus) -> Result<bool, EcuError> {
        let now = bus.now_us() / 1000;
        let Some((_, _, roller)) = &self.group else {
            return Ok(false);
        };
        let Ok(epoch) = self.config.schedule.epoch_at(now) else {
            return Ok(false);
        };
        let key = FrameKey::new(&roller.session_key(epoch, u32::from(BEACON_ID)));
        let mut payload = [0u8; 14];
        payload[..8].copy_from_slice(&now.to_be_bytes());
        let frame = self
            .beacon
            .secure_frame(&key, &payload)
            .map_err(EcuError::Secoc)?;
        bus.send(&CanFrame::fd(
            u32::from(BEACON_ID),
            false,
            frame.as_bytes(),
        )?)?;
        self.counters.beacons += 1;
        Ok(true)
    }

    /// Processes every waiting frame, resends unanswered updates, and sends queued frames.
    pub fn poll(&mut self, bus: &mut dyn Bus) -> Result<(), EcuError> {
        while let Some(r) = bus.try_recv()? {
            self.on_frame(bus, r.at_us / 1000, &r.frame)?;
        }
        self.flush(bus)
    }

    fn flush(&mut self, bus: &mut dyn Bus) -> Result<(), EcuError> {
        let now = bus.now_us() / 1000;
        let retry = self.config.retry_ms;
        let mut frames = Vec::new();
        for m in &mut self.members {
            if let Some(head) = m.pending.front_mut() {
                let due = match head.sent_at {
                    None => true,
                    Some(at) => m.link.is_idle() && now.saturating_sub(at) > retry,
                };
                if due {
                    if head.sent_at.is_some() {
                        self.counters.retries += 1;
                    }
                    head.sent_at = Some(now);
                    m.link.send(head.message.clone()).map_err(EcuError::IsoTp)?;
                    if matches!(head.expect, Expect::Nothing) {
                        m.pending.pop_front();
                    }
                }
            }
            if let Ok(f) = m.link.poll(now) {
                frames.extend(f);
            }
        }
        for f in frames {
            bus.send(&f)?;
        }
        Ok(())
    }

    fn on_frame(&mut self, bus: &mut dyn Bus, now: u64, frame: &CanFrame) -> Result<(), EcuError> {
        let id = frame.id();
        if let Some(i) = self.members.iter().position(|m| m.link.rx_id() == id) {
            let Some(m) = self.members.get_mut(i) else {
                return Ok(());
            };
            let Ok((answer, message)) = m.link.on_frame(now, frame.data()) else {
                return Ok(());
            };
            for f in answer {
                bus.send(&f)?;
            }
            if let Some(bytes) = message {
                self.on_answer(i, &bytes);
            }
            return self.flush(bus);
        }
        let Ok(pdu) = u16::try_from(id) else {
            return Ok(());
        };
        let Some(rx) = self.receivers.get_mut(&pdu) else {
            return Ok(());
        };
        let window = self
            .windows
            .entry(pdu)
            .or_insert_with(|| KeyWindow::new(self.config.window));
        if let (Some((_, _, roller)), Ok(epoch)) = (&self.group, self.config.schedule.epoch_at(now))
            && window.current().is_none_or(|c| epoch >= c)
        {
            window
                .advance_to(epoch, roller, u32::from(pdu))
                .map_err(EcuError::Secoc)?;
        }
        let _ = rx.verify(window, frame.data());
        Ok(())
    }

    fn on_answer(&mut self, index: usize, bytes: &[u8]) {
        let Some(m) = self.members.get_mut(index) else {
            return;
        };
        let serial = m.keys.serial.clone();
        let answer = Message::decode(bytes);
        let Some(head) = m.pending.front() else {
            return;
        };
        let what = head.what.clone();
        // A verdict counts only for the request it names (not a duplicate's, not a replay's).
        let ours = match &answer {
            Ok(Message::Verdict { tag, .. }) => *tag == msg::request_tag(&head.message),
            _ => true,
        };
        if !ours {
            return;
        }
        // An answer is matched to the oldest unconfirmed update: a proof must be the one
        // expected (another proof answers an earlier, duplicated send and is ignored); a refusal
        // must be about the same kind of update.
        let outcome = match (&head.expect, &answer) {
            (Expect::Proof(p), Ok(Message::SheProof(got))) => (p == got).then_some(true),
            (Expect::SeedProof(p1, p2), Ok(Message::GroupSeedProof { first, second })) => {
                (p1 == first && p2 == second).then_some(true)
            }
            (
                Expect::RecordVerdict,
                Ok(Message::Verdict {
                    subject: Subject::Record,
                    code: c,
                    ..
                }),
            ) => Some(*c == code::OK || *c == code::REPEATED),
            (
                Expect::Proof(_),
                Ok(Message::Verdict {
                    subject: Subject::She,
                    code: c,
                    ..
                }),
            )
            | (
                Expect::SeedProof(..),
                Ok(Message::Verdict {
                    subject: Subject::Seed,
                    code: c,
                    ..
                }),
            ) => {
                self.events
                    .push(format!("{serial} refused the {what} (code {c:#04x})"));
                Some(false)
            }
            _ => None,
        };
        let Some(ok) = outcome else {
            return;
        };
        if let (true, Expect::SeedProof(..)) = (ok, &head.expect) {
            m.seed = self.group.as_ref().map(|(g, r, _)| (*g, *r));
        }
        m.pending.pop_front();
        if ok {
            self.counters.confirmed += 1;
        } else {
            self.counters.refused += 1;
            self.events
                .push(format!("{serial}: the {what} was not confirmed"));
        }
    }
}
