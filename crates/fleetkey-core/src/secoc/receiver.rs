//! Verifying secured frames: FV reconstruction, constant-time MAC check, replay protection,
//! opaque failures counted by reason.

use subtle::Choice;

use super::freshness::{reconstruct, replay_candidate};
use super::mac::FrameKey;
use super::profile::Profile;
use super::window::KeyWindow;
use crate::roll::Epoch;

/// Extra verify attempts of a new [`Receiver`] (AUTOSAR's `SecOCAuthenticationVerifyAttempts`
/// analogue, whose AUTOSAR default is 0): how many times `2^fv_bits` further FVs it tries after
/// the reconstructed one, so that it resynchronises after lost frames.
pub const DEFAULT_VERIFY_ATTEMPTS: u8 = 3;
/// The most extra verify attempts a receiver may be configured with: each costs up to one CMAC
/// per key in the window for a frame that fails.
pub const MAX_VERIFY_ATTEMPTS: u8 = 16;

/// A frame that verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Length of the authentic payload: the frame's first `payload_len` bytes.
    pub payload_len: usize,
    /// The full freshness value the frame carried (now the receiver's latest).
    pub fv: u64,
    /// The epoch whose key verified it.
    pub epoch: Epoch,
}

impl Verified {
    /// The authentic payload of the verified `frame`.
    pub fn payload<'a>(&self, frame: &'a [u8]) -> &'a [u8] {
        frame.get(..self.payload_len).unwrap_or_default()
    }
}

/// A frame was rejected. Deliberately says nothing about why: the reasons are counted in
/// [`Receiver::stats`], never returned, so a sender of forged frames learns nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejected;

impl core::fmt::Display for Rejected {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("frame rejected")
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Rejected {}

/// A receiver's counts of frames, by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames that verified.
    pub accepted: u64,
    /// Frames too short or too long for the profile.
    pub malformed: u64,
    /// Frames checked while the key window held no key.
    pub no_key: u64,
    /// Frames whose MAC verified only under an FV at or below the latest accepted one.
    pub replay: u64,
    /// Frames whose MAC did not verify (forged, corrupted, wrong key, or too far ahead).
    pub authentication: u64,
}

impl Stats {
    /// All rejected frames.
    pub const fn rejected(&self) -> u64 {
        self.malformed
            .saturating_add(self.no_key)
            .saturating_add(self.replay)
            .saturating_add(self.authentication)
    }

    /// Adds another receiver's counts (for an ECU-wide or CLI summary).
    pub const fn merge(&mut self, other: &Stats) {
        self.accepted = self.accepted.saturating_add(other.accepted);
        self.malformed = self.malformed.saturating_add(other.malformed);
        self.no_key = self.no_key.saturating_add(other.no_key);
        self.replay = self.replay.saturating_add(other.replay);
        self.authentication = self.authentication.saturating_add(other.authentication);
    }
}

/// The receiving side of one DataId (one PDU): the latest accepted full FV and the counts.
///
/// An ECU holds one per PDU it receives, and one [`KeyWindow`] per channel for all of them.
/// To stay replay-safe across power cycles, persist [`latest_fv`](Self::latest_fv) and come
/// back with [`restore`](Self::restore).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receiver {
    profile: Profile,
    data_id: u16,
    latest: u64,
    latest_epoch: Option<Epoch>,
    attempts: u8,
    stats: Stats,
}

impl Receiver {
    /// A receiver that has accepted nothing (latest FV 0), with
    /// [`DEFAULT_VERIFY_ATTEMPTS`].
    pub const fn new(profile: Profile, data_id: u16) -> Self {
        Self::restore(profile, data_id, 0)
    }

    /// A receiver whose latest accepted FV is `latest` (persisted before a power cycle).
    pub const fn restore(profile: Profile, data_id: u16, latest: u64) -> Self {
        Self {
            profile,
            data_id,
            latest,
            latest_epoch: None,
            attempts: DEFAULT_VERIFY_ATTEMPTS,
            stats: Stats {
                accepted: 0,
                malformed: 0,
                no_key: 0,
                replay: 0,
                authentication: 0,
            },
        }
    }

    /// Sets the extra verify attempts, capped at [`MAX_VERIFY_ATTEMPTS`].
    pub const fn with_attempts(mut self, attempts: u8) -> Self {
        self.attempts = if attempts > MAX_VERIFY_ATTEMPTS {
            MAX_VERIFY_ATTEMPTS
        } else {
            attempts
        };
        self
    }

    /// The profile.
    pub const fn profile(&self) -> Profile {
        self.profile
    }

    /// The DataId.
    pub const fn data_id(&self) -> u16 {
        self.data_id
    }

    /// The extra verify attempts.
    pub const fn attempts(&self) -> u8 {
        self.attempts
    }

    /// The latest accepted full FV (0 before the first).
    pub const fn latest_fv(&self) -> u64 {
        self.latest
    }

    /// The counts so far.
    pub const fn stats(&self) -> Stats {
        self.stats
    }

    /// Verifies a secured frame.
    ///
    /// For each candidate FV ([`reconstruct`] at attempts `0..=attempts`), every key of the
    /// window is tried in order (current, earlier, next); the first MAC that matches (constant
    /// time) accepts the frame and its FV becomes the latest. On failure, one more CMAC
    /// classifies it: if the frame verifies under [`replay_candidate`] with any key of the window
    /// (one CMAC per key, on failures only) it counts as a replay, otherwise as
    /// an authentication failure. Either way the caller only sees [`Rejected`].
    pub fn verify(&mut self, keys: &KeyWindow, frame: &[u8]) -> Result<Verified, Rejected> {
        let Some((payload, truncated, tag)) = self.split(frame) else {
            self.stats.malformed = self.stats.malformed.saturating_add(1);
            return Err(Rejected);
        };
        if keys.is_empty() {
            self.stats.no_key = self.stats.no_key.saturating_add(1);
            return Err(Rejected);
        }
        let bits = self.profile.fv_bits();
        for attempt in 0..u32::from(self.attempts) + 1 {
            let Some(fv) = reconstruct(self.latest, truncated, bits, attempt) else {
                break;
            };
            for (epoch, key) in keys.ordered() {
                if bool::from(self.check(key, payload, fv, tag)) {
                    self.latest = fv;
                    self.latest_epoch = Some(epoch);
                    self.stats.accepted = self.stats.accepted.saturating_add(1);
                    return Ok(Verified {
                        payload_len: payload.len(),
                        fv,
                        epoch,
                    });
                }
            }
        }
        // Every key of the window, so a frame replayed from before a roll counts as a replay too.
        let replayed = match replay_candidate(self.latest, truncated, bits) {
            Some(fv) => keys
                .ordered()
                .any(|(_, key)| bool::from(self.check(key, payload, fv, tag))),
            None => false,
        };
        if replayed {
            self.stats.replay = self.stats.replay.saturating_add(1);
        } else {
            self.stats.authentication = self.stats.authentication.saturating_add(1);
        }
        Err(Rejected)
    }

    fn check(&self, key: &FrameKey, payload: &[u8], fv: u64, tag: &[u8]) -> Choice {
        key.verify_truncated(self.data_id, payload, fv, tag)
    }

    /// Splits a frame into payload, truncated FV (as an integer) and truncated MAC.
    fn split<'a>(&self, frame: &'a [u8]) -> Option<(&'a [u8], u64, &'a [u8])> {
        if frame.len() > self.profile.max_frame() {
            return None;
        }
        let payload_len = frame.len().checked_sub(self.profile.overhead())?;
        let (payload, rest) = frame.split_at_checked(payload_len)?;
        let (fv, tag) = rest.split_at_checked(self.profile.fv_len())?;
        let truncated = fv.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        Some((payload, truncated, tag))
    }
}
