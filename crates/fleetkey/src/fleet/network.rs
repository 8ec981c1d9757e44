//! CAN networks: a gateway and its member ECUs, recorded in the fleet as labelled devices, and
//! the network's group seed.
//!
//! A network is recorded by labels (docs/simulator.md):
//! - its gateway is a device labelled `role=gateway`, `network=NAME`, `profile=P`, `period-ms=N`;
//! - each member ECU is a device labelled `role=ecu`, `network=NAME`, `pdu=0xNNN` and, when it
//!   differs from the network's, `profile=P`.
//!
//! The gateway's roll seed is the network's *group seed*: every member's session keys roll from
//! it, so a gateway refresh (or its migration to a new generation) re-keys the network. The
//! gateway carries the seed to each member as two SHE memory updates (KEY_4, KEY_5) authorised by
//! the member's KEY_UPDATE key, with the counter `generation << 16 | revision`
//! ([`wrap_group_seed`]).
//!
//! Reading group seeds out of the fleet is an audited operation ([`Fleet::group_seeds`],
//! `network.group_seeds`): it is key material.

pub mod capture;

use std::collections::BTreeMap;

use fleetkey_core::secoc::Profile;
use fleetkey_core::she::{self, Counter, KeyFlags, SlotId, Uid, UpdateMessages, UpdateRequest};
use fleetkey_core::{Key128, RollSchedule, RollSeed};

use super::Fleet;
use super::material::DeviceKeys;
use crate::error::Error;
use crate::model::{DeviceFilter, DeviceRecord, DeviceSerial};

/// The CAN id (and SecOC DataId, and roll channel) of the gateway's time beacon.
pub const BEACON_ID: u16 = 0x0F0;

/// The SHE slots of the group seed: KEY_4 (first half) and KEY_5 (second half).
pub const SEED_SLOTS: (SlotId, SlotId) = (SlotId::Key4, SlotId::Key5);

/// The epoch length of a network whose gateway has no `period-ms` label.
pub const DEFAULT_PERIOD_MS: u64 = 1000;

/// At most this many networks, and members per network, are read from the fleet.
pub const MAX_NODES: usize = 10_000;

/// The labels of a network's gateway.
pub fn gateway_labels(network: &str, profile: Profile, period_ms: u64) -> Vec<String> {
    vec![
        "role=gateway".into(),
        format!("network={network}"),
        format!("profile={}", profile.name()),
        format!("period-ms={period_ms}"),
    ]
}

/// The labels of a member ECU sending `pdu` with `profile`.
pub fn member_labels(network: &str, pdu: u16, profile: Profile) -> Vec<String> {
    vec![
        "role=ecu".into(),
        format!("network={network}"),
        format!("pdu={pdu:#05x}"),
        format!("profile={}", profile.name()),
    ]
}

/// The value of label `key=value` among `labels`.
pub fn label<'a>(labels: &'a [String], key: &str) -> Option<&'a str> {
    labels
        .iter()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

/// A PDU label's value: `0x1a0` or decimal.
pub fn parse_pdu(text: &str) -> Option<u16> {
    let t = text.trim();
    match t.strip_prefix("0x") {
        Some(h) => u16::from_str_radix(h, 16).ok(),
        None => t.parse().ok(),
    }
}

/// The SHE counter of a group seed update: `generation << 16 | revision`, `None` when either is
/// too large (generation 1..=4095, revision 0..=65535).
pub fn seed_counter(generation: u32, revision: u32) -> Option<Counter> {
    if generation > 0x0FFF || revision > 0xFFFF {
        return None;
    }
    Counter::new(generation << 16 | revision).ok()
}

/// The two SHE memory updates (KEY_4, KEY_5) that carry a group seed to a member, authorised by
/// its KEY_UPDATE key (MASTER_ECU_KEY), with their expected proofs (M4, M5). `None` when the
/// version is out of range.
pub fn wrap_group_seed(
    member_uid: Uid,
    member_key_update: &Key128,
    generation: u32,
    revision: u32,
    seed: &RollSeed,
) -> Option<[UpdateMessages; 2]> {
    let counter = seed_counter(generation, revision)?;
    let (a, b) = seed.expose_secret().split_at(16);
    let (a, b) = (Key128::from_slice(a)?, Key128::from_slice(b)?);
    let flags = if member_uid.is_wildcard() {
        KeyFlags::NONE
    } else {
        KeyFlags::WILDCARD
    };
    let request =
        |slot| UpdateRequest::new(member_uid, slot, SlotId::MasterEcuKey, counter, flags).ok();
    let (r1, r2) = (request(SEED_SLOTS.0)?, request(SEED_SLOTS.1)?);
    Some([
        she::build(member_key_update, &a, &r1),
        she::build(member_key_update, &b, &r2),
    ])
}

/// A network as the fleet records it (no key material).
#[derive(Clone, Debug)]
pub struct Network {
    /// Its name.
    pub name: String,
    /// Its gateway, whose roll seed is the group seed.
    pub gateway: DeviceRecord,
    /// The SecOC profile of its PDUs and beacon.
    pub profile: Profile,
    /// Its roll schedule (epoch length).
    pub schedule: RollSchedule,
    /// Secured PDUs: the members' and the gateway's beacon ([`BEACON_ID`]), each with the serial
    /// of its sender and its profile.
    pub pdus: BTreeMap<u16, (DeviceSerial, Profile)>,
}

/// One group seed a network may have used.
pub struct GroupSeed {
    /// The gateway's generation when the seed was current.
    pub generation: u32,
    /// The gateway's revision when the seed was current.
    pub revision: u32,
    /// The seed (zeroized on drop).
    pub seed: RollSeed,
}

impl std::fmt::Debug for GroupSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupSeed")
            .field("generation", &self.generation)
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

fn by_labels(labels: Vec<String>) -> DeviceFilter {
    DeviceFilter {
        labels,
        ..DeviceFilter::default()
    }
}

impl Fleet {
    /// The networks recorded in the fleet, by gateway serial.
    pub fn networks(&mut self) -> Result<Vec<Network>, Error> {
        let gateways = self.devices(&by_labels(vec!["role=gateway".into()]), None, MAX_NODES)?;
        let mut out = Vec::new();
        for gw in gateways {
            let Some(name) = label(&gw.labels, "network").map(str::to_owned) else {
                continue;
            };
            let profile = label(&gw.labels, "profile")
                .and_then(|p| Profile::by_name(p).ok())
                .unwrap_or(Profile::FD64);
            let period = label(&gw.labels, "period-ms")
                .and_then(|p| p.parse().ok())
                .unwrap_or(DEFAULT_PERIOD_MS);
            let schedule = RollSchedule::new(0, period)
                .map_err(|e| Error::invalid(format!("device {} label period-ms", gw.serial), e))?;
            let members = self.devices(
                &by_labels(vec!["role=ecu".into(), format!("network={name}")]),
                None,
                MAX_NODES,
            )?;
            let mut pdus = BTreeMap::new();
            for d in members {
                if let Some(pdu) = label(&d.labels, "pdu").and_then(parse_pdu) {
                    let own = label(&d.labels, "profile")
                        .and_then(|p| Profile::by_name(p).ok())
                        .unwrap_or(profile);
                    pdus.insert(pdu, (d.serial, own));
                }
            }
            pdus.insert(BEACON_ID, (gw.serial.clone(), profile));
            out.push(Network {
                name,
                gateway: gw,
                profile,
                schedule,
                pdus,
            });
        }
        Ok(out)
    }

    /// Every group seed `network` may have used: its gateway's roll seed at each generation whose
    /// master is still in the key module, at each revision up to the current one, newest first.
    /// Key material: one audit event (`network.group_seeds`) names the gateway and the reason.
    pub fn group_seeds(
        &mut self,
        network: &Network,
        reason: &str,
    ) -> Result<Vec<GroupSeed>, Error> {
        let gw = &network.gateway;
        let generations = self.generations()?;
        let module = self.module()?;
        let mut seeds = Vec::new();
        for g in &generations {
            for revision in (0..=gw.revision).rev() {
                // Destroyed masters cannot derive: those seeds are gone for good.
                if let Ok(keys) = DeviceKeys::derive(module, gw, g.generation, revision) {
                    seeds.push(GroupSeed {
                        generation: g.generation,
                        revision,
                        seed: RollSeed::from_bytes(*keys.roll_seed.expose_secret()),
                    });
                }
            }
        }
        seeds.sort_by_key(|s| std::cmp::Reverse((s.generation, s.revision)));
        let draft = self.draft(
            "network.group_seeds",
            Some(gw.generation),
            vec![gw.serial.clone()],
            serde_json::json!({
                "network": network.name,
                "seeds": seeds.len(),
                "reason": reason,
            }),
        );
        crate::store::transact(self.store.as_mut(), |tx| {
            tx.append_audit(draft.clone())?;
            Ok(())
        })?;
        Ok(seeds)
    }
}
