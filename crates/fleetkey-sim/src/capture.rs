//! Offline verification of a bus capture with the fleet's keys: the networks recorded in the
//! fleet (device labels, see [`crate::network`]), every group seed their gateway has had (each
//! generation whose master is still in the key module, each revision up to the current one),
//! and a verdict for every frame of the capture.

use std::collections::BTreeMap;

use fleetkey::fleet::Fleet;
use fleetkey::fleet::material::DeviceKeys;
use fleetkey::model::DeviceFilter;
use fleetkey_core::secoc::{KeyWindow, Profile, Receiver, Stats, WindowConfig};
use fleetkey_core::{RollSchedule, Roller};
use serde::Serialize;

use crate::bus::CanFrame;
use crate::ecu::BEACON_ID;
use crate::network::SimError;

/// One network's keys and PDUs, from the fleet.
pub struct NetworkKeys {
    /// Network name.
    pub name: String,
    /// Profile.
    pub profile: Profile,
    /// Roll schedule.
    pub schedule: RollSchedule,
    /// Member PDUs: serial and profile (the beacon is added as `GW-NAME`).
    pub pdus: BTreeMap<u16, (String, Profile)>,
    /// Every group seed the network may have used: (generation, revision, roller).
    candidates: Vec<(u32, u32, Roller)>,
}

impl NetworkKeys {
    /// How many group seeds are tried.
    pub fn candidates(&self) -> usize {
        self.candidates.len()
    }
}

fn label<'a>(labels: &'a [String], key: &str) -> Option<&'a str> {
    labels
        .iter()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

fn parse_pdu(text: &str) -> Option<u16> {
    let t = text.trim();
    match t.strip_prefix("0x") {
        Some(h) => u16::from_str_radix(h, 16).ok(),
        None => t.parse().ok(),
    }
}

/// The simulated networks recorded in the fleet, with every group seed each may have used.
pub fn networks_from_fleet(fleet: &mut Fleet) -> Result<Vec<NetworkKeys>, SimError> {
    let by_labels = |labels: Vec<String>| DeviceFilter {
        labels,
        ..DeviceFilter::default()
    };
    let gateways = fleet.devices(&by_labels(vec!["role=gateway".into()]), None, 10_000)?;
    let generations = fleet.generations()?;
    let mut out = Vec::new();
    for gw in &gateways {
        let Some(name) = label(&gw.labels, "network") else {
            continue;
        };
        let profile = label(&gw.labels, "profile")
            .and_then(|p| Profile::by_name(p).ok())
            .unwrap_or(Profile::FD64);
        let period = label(&gw.labels, "period-ms")
            .and_then(|p| p.parse().ok())
            .unwrap_or(1000);
        let schedule = RollSchedule::new(0, period)
            .map_err(|e| SimError::Material(format!("{}: period-ms: {e}", gw.serial)))?;
        let mut pdus = BTreeMap::new();
        let members = fleet.devices(
            &by_labels(vec!["role=ecu".into(), format!("network={name}")]),
            None,
            10_000,
        )?;
        for d in &members {
            if let Some(pdu) = label(&d.labels, "pdu").and_then(parse_pdu) {
                let own = label(&d.labels, "profile")
                    .and_then(|p| Profile::by_name(p).ok())
                    .unwrap_or(profile);
                pdus.insert(pdu, (d.serial.to_string(), own));
            }
        }
        pdus.insert(BEACON_ID, (gw.serial.to_string(), profile));
        let mut candidates = Vec::new();
        for g in &generations {
            for revision in (0..=gw.revision).rev() {
                // Destroyed masters cannot derive: those seeds are gone for good.
                if let Ok(keys) = DeviceKeys::derive(fleet.module()?, gw, g.generation, revision) {
                    candidates.push((g.generation, revision, Roller::new(&keys.roll_seed)));
                }
            }
        }
        candidates.sort_by_key(|(g, r, _)| std::cmp::Reverse((*g, *r)));
        out.push(NetworkKeys {
            name: name.to_owned(),
            profile,
            schedule,
            pdus,
            candidates,
        });
    }
    Ok(out)
}

/// Why a frame was rejected (the core's reasons).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// Too short or too long for the profile.
    Malformed,
    /// No key for its time.
    NoKey,
    /// Its FV is not above the latest accepted.
    Replay,
    /// The MAC verifies under no group seed.
    Authentication,
}

/// One frame's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Verdict {
    /// Verified.
    Ok {
        /// Full FV.
        fv: u64,
        /// Epoch of the key.
        epoch: u64,
        /// Group seed generation.
        generation: u32,
        /// Group seed revision.
        revision: u32,
    },
    /// Rejected.
    Rejected {
        /// Why.
        reason: Reason,
    },
    /// Not a secured PDU of a known network (ISO-TP, other traffic).
    Skipped,
}

struct Track {
    window: KeyWindow,
    receiver: Receiver,
}

/// Verifies frames in order (each with its capture time, Unix microseconds). Returns one
/// verdict per frame and the counts over the secured PDUs.
///
/// A re-key is network-wide: once a frame verifies under a group seed, older seeds of that
/// network are retired (as at the gateway), so frames made later with an extracted or
/// superseded seed are rejected.
pub fn verify_frames(
    networks: &[NetworkKeys],
    frames: &[(u64, CanFrame)],
) -> (Vec<Verdict>, Stats) {
    let mut tracks: BTreeMap<(usize, usize, u16), Track> = BTreeMap::new();
    let mut floors: BTreeMap<usize, (u32, u32)> = BTreeMap::new();
    let mut stats = Stats::default();
    let mut verdicts = Vec::with_capacity(frames.len());
    for (at_us, frame) in frames {
        let Some((n, net, pdu, profile)) = u16::try_from(frame.id()).ok().and_then(|pdu| {
            networks
                .iter()
                .enumerate()
                .find_map(|(n, net)| net.pdus.get(&pdu).map(|(_, p)| (n, net, pdu, *p)))
        }) else {
            verdicts.push(Verdict::Skipped);
            continue;
        };
        let epoch = net.schedule.epoch_at(at_us / 1000).ok();
        let mut accepted = None;
        let mut reasons = Stats::default();
        let floor = floors.get(&n).copied();
        for (c, (generation, revision, roller)) in net.candidates.iter().enumerate() {
            if floor.is_some_and(|f| (*generation, *revision) < f) {
                continue;
            }
            let track = tracks.entry((n, c, pdu)).or_insert_with(|| Track {
                window: KeyWindow::new(WindowConfig::default()),
                receiver: Receiver::new(profile, pdu),
            });
            if let Some(epoch) = epoch
                && track.window.current().is_none_or(|cur| epoch > cur)
            {
                let _ = track.window.advance_to(epoch, roller, u32::from(pdu));
            }
            let before = track.receiver.stats();
            match track.receiver.verify(&track.window, frame.data()) {
                Ok(v) => {
                    floors.insert(n, (*generation, *revision));
                    accepted = Some(Verdict::Ok {
                        fv: v.fv,
                        epoch: v.epoch.0,
                        generation: *generation,
                        revision: *revision,
                    });
                    break;
                }
                Err(_) => {
                    let after = track.receiver.stats();
                    reasons.malformed += after.malformed - before.malformed;
                    reasons.no_key += after.no_key - before.no_key;
                    reasons.replay += after.replay - before.replay;
                    reasons.authentication += after.authentication - before.authentication;
                }
            }
        }
        let verdict = accepted.unwrap_or({
            let reason = if reasons.replay > 0 {
                Reason::Replay
            } else if reasons.authentication > 0 {
                Reason::Authentication
            } else if reasons.malformed > 0 {
                Reason::Malformed
            } else {
                Reason::NoKey
            };
            Verdict::Rejected { reason }
        });
        match &verdict {
            Verdict::Ok { .. } => stats.accepted += 1,
            Verdict::Rejected { reason } => match reason {
                Reason::Malformed => stats.malformed += 1,
                Reason::NoKey => stats.no_key += 1,
                Reason::Replay => stats.replay += 1,
                Reason::Authentication => stats.authentication += 1,
            },
            Verdict::Skipped => {}
        }
        verdicts.push(verdict);
    }
    (verdicts, stats)
}
