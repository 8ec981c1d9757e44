//! Offline verification of a bus capture with the fleet's keys: each network recorded in the
//! fleet, every group seed it may have used ([`Fleet::group_seeds`]), and a verdict for every
//! frame of the capture, as the network's receivers would have given it.

use fleetkey_core::secoc::{KeyWindow, Receiver, Stats, WindowConfig};
use fleetkey_core::{RollSchedule, Roller};
use serde::Serialize;
use std::collections::BTreeMap;

use super::{GroupSeed, Network};
use crate::error::Error;
use crate::fleet::Fleet;

/// One network with the rollers of every group seed it may have used.
pub struct NetworkKeys {
    /// The network.
    pub network: Network,
    /// (generation, revision, roller), newest first.
    candidates: Vec<(u32, u32, Roller)>,
}

impl std::fmt::Debug for NetworkKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkKeys")
            .field("network", &self.network.name)
            .field("group_seeds", &self.candidates.len())
            .finish_non_exhaustive()
    }
}

impl NetworkKeys {
    /// A network's keys from its group seeds.
    pub fn new(network: Network, seeds: &[GroupSeed]) -> Self {
        NetworkKeys {
            network,
            candidates: seeds
                .iter()
                .map(|s| (s.generation, s.revision, Roller::new(&s.seed)))
                .collect(),
        }
    }

    /// How many group seeds are tried.
    pub fn candidates(&self) -> usize {
        self.candidates.len()
    }

    /// The network's roll schedule.
    pub fn schedule(&self) -> RollSchedule {
        self.network.schedule
    }
}

impl Fleet {
    /// Every network recorded in the fleet with its group seeds, for verifying a capture (an
    /// audited read of key material per network, see [`Fleet::group_seeds`]).
    pub fn network_keys(&mut self, reason: &str) -> Result<Vec<NetworkKeys>, Error> {
        let mut out = Vec::new();
        for network in self.networks()? {
            let seeds = self.group_seeds(&network, reason)?;
            out.push(NetworkKeys::new(network, &seeds));
        }
        Ok(out)
    }
}

/// A data frame of a capture.
#[derive(Clone, Copy, Debug)]
pub struct CapturedFrame<'a> {
    /// Capture time, Unix microseconds.
    pub at_us: u64,
    /// CAN id.
    pub id: u32,
    /// Payload.
    pub data: &'a [u8],
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

/// Verifies frames in order. Returns one verdict per frame and the counts over the secured PDUs.
///
/// A re-key is network-wide: once a frame verifies under a group seed, older seeds of that
/// network are retired (as at the gateway), so frames made later with an extracted or
/// superseded seed are rejected.
pub fn verify_frames(
    networks: &[NetworkKeys],
    frames: &[CapturedFrame<'_>],
) -> (Vec<Verdict>, Stats) {
    let mut tracks: BTreeMap<(usize, usize, u16), Track> = BTreeMap::new();
    let mut floors: BTreeMap<usize, (u32, u32)> = BTreeMap::new();
    let mut stats = Stats::default();
    let mut verdicts = Vec::with_capacity(frames.len());
    for frame in frames {
        let Some((n, net, pdu, profile)) = u16::try_from(frame.id).ok().and_then(|pdu| {
            networks
                .iter()
                .enumerate()
                .find_map(|(n, net)| net.network.pdus.get(&pdu).map(|(_, p)| (n, net, pdu, *p)))
        }) else {
            verdicts.push(Verdict::Skipped);
            continue;
        };
        let epoch = net.network.schedule.epoch_at(frame.at_us / 1000).ok();
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
            match track.receiver.verify(&track.window, frame.data) {
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
