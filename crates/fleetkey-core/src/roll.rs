//! Rolling session keys v1 (contract; see `docs/rolling.md`).
//!
//! ```text
//! epoch       = floor((unix_time_ms - origin_ms) / period_ms)
//! session_key = HKDF-Expand-SHA256(PRK = roll seed, "FK1S" || epoch u64 BE || channel u32 BE, 16)
//! ```
//! Session keys change on the time base alone; no message is needed to roll. Time is an argument:
//! the core has no clock.

use zeroize::Zeroize;

use crate::keys::{RollSeed, SessionKey};
use crate::prf::PrkState;

/// The label that starts every v1 session key `info`.
pub const SESSION_KEY_LABEL: &[u8; 4] = b"FK1S";
/// The length of a session key `info`: label, epoch, channel.
pub const SESSION_INFO_LEN: usize = 4 + 8 + 4;

/// Why a roll schedule or an epoch was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RollError {
    /// The period is zero.
    ZeroPeriod,
    /// The time is before the schedule's origin.
    BeforeOrigin,
}

impl core::fmt::Display for RollError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::ZeroPeriod => f.write_str("period: must be at least 1 ms"),
            Self::BeforeOrigin => f.write_str("time: before the roll schedule's origin"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for RollError {}

/// A roll epoch number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Epoch(pub u64);

impl Epoch {
    /// The epoch before this one, if any.
    pub const fn previous(self) -> Option<Epoch> {
        match self.0.checked_sub(1) {
            Some(e) => Some(Epoch(e)),
            None => None,
        }
    }

    /// The epoch after this one, if any.
    pub const fn next(self) -> Option<Epoch> {
        match self.0.checked_add(1) {
            Some(e) => Some(Epoch(e)),
            None => None,
        }
    }
}

/// The time base of one network: its origin and epoch length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RollSchedule {
    origin_ms: u64,
    period_ms: u64,
}

impl RollSchedule {
    /// A schedule; the period must be at least 1 ms.
    pub const fn new(origin_ms: u64, period_ms: u64) -> Result<Self, RollError> {
        if period_ms == 0 {
            Err(RollError::ZeroPeriod)
        } else {
            Ok(Self {
                origin_ms,
                period_ms,
            })
        }
    }

    /// The origin, in Unix milliseconds.
    pub const fn origin_ms(&self) -> u64 {
        self.origin_ms
    }

    /// The epoch length in milliseconds.
    pub const fn period_ms(&self) -> u64 {
        self.period_ms
    }

    /// The epoch at a Unix time in milliseconds.
    pub const fn epoch_at(&self, unix_time_ms: u64) -> Result<Epoch, RollError> {
        match unix_time_ms.checked_sub(self.origin_ms) {
            Some(elapsed) => Ok(Epoch(elapsed / self.period_ms)),
            None => Err(RollError::BeforeOrigin),
        }
    }

    /// The Unix millisecond at which an epoch starts, `None` past `u64::MAX`.
    pub const fn epoch_start(&self, epoch: Epoch) -> Option<u64> {
        match epoch.0.checked_mul(self.period_ms) {
            Some(offset) => self.origin_ms.checked_add(offset),
            None => None,
        }
    }
}

/// Writes the v1 session key `info` for an epoch and channel.
pub fn session_info(epoch: Epoch, channel: u32) -> [u8; SESSION_INFO_LEN] {
    let mut info = [0u8; SESSION_INFO_LEN];
    let (label, rest) = info.split_at_mut(4);
    label.copy_from_slice(SESSION_KEY_LABEL);
    let (e, c) = rest.split_at_mut(8);
    e.copy_from_slice(&epoch.0.to_be_bytes());
    c.copy_from_slice(&channel.to_be_bytes());
    info
}

/// A roll seed ready to produce session keys (pad states computed once). Zeroized on drop.
#[derive(Clone, Debug)]
pub struct Roller {
    state: PrkState,
}

impl Roller {
    /// Precomputes the state of a roll seed.
    pub fn new(seed: &RollSeed) -> Self {
        Self {
            state: PrkState::new(seed.expose_secret()),
        }
    }

    /// The session key of one epoch on one channel (two SHA-256 compressions).
    pub fn session_key(&self, epoch: Epoch, channel: u32) -> SessionKey {
        let mut key = [0u8; 16];
        // A 16-byte info and a 16-byte output always fit the one-block path.
        let _ = self
            .state
            .expand_one_block(&session_info(epoch, channel), &mut key);
        let session = SessionKey::from_bytes(key);
        key.zeroize();
        session
    }
}

/// The session key of one epoch on one channel, from a roll seed.
pub fn session_key(seed: &RollSeed, epoch: Epoch, channel: u32) -> SessionKey {
    Roller::new(seed).session_key(epoch, channel)
}

#[cfg(test)]
mod tests;
