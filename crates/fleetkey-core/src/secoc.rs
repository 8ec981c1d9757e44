//! AUTOSAR SecOC-style frame authentication (spec: `docs/secoc.md`, version `secoc-v1`).
//!
//! ```text
//! MAC input      = DataId (u16 BE) || authentic payload || full FV (u64 BE)
//! MAC            = leftmost mac_len bytes of AES-128-CMAC(session key, MAC input)
//! secured frame  = payload || low fv_len bytes of the FV (BE) || MAC
//! ```
//! The construction is AUTOSAR SecOC's (CP SWS SecOC, doc 654): the authenticator covers the
//! Data Id, the authentic PDU and the complete freshness value, while the frame carries only
//! truncated values. A [`Sender`] owns one 64-bit [`FreshnessCounter`] per DataId; a
//! [`Receiver`] (one per received DataId) rebuilds the full FV from its latest accepted value
//! and accepts only a larger one. Keys come from a [`KeyWindow`]: the session keys of the
//! current roll epoch, of earlier epochs inside the window, and optionally of the next one.
//!
//! ```
//! use fleetkey_core::secoc::{KeyWindow, Profile, Receiver, Sender, WindowConfig};
//! use fleetkey_core::{Epoch, RollSeed, Roller};
//!
//! let roller = Roller::new(&RollSeed::from_bytes([7; 32]));
//! let (channel, epoch) = (1, Epoch(100));
//! let profile = Profile::P1;
//! let mut sender = Sender::new(profile, 0x0123);
//! let send_key = fleetkey_core::secoc::FrameKey::new(&roller.session_key(epoch, channel));
//! let frame = sender.secure_frame(&send_key, &[0xde, 0xad, 0xbe, 0xef])?;
//!
//! let mut keys = KeyWindow::new(WindowConfig::default());
//! keys.advance_to(epoch, &roller, channel)?;
//! let mut receiver = Receiver::new(profile, 0x0123);
//! let verified = receiver.verify(&keys, frame.as_bytes()).expect("authentic");
//! assert_eq!(verified.payload(frame.as_bytes()), &[0xde, 0xad, 0xbe, 0xef]);
//! assert_eq!(verified.fv, 1);
//! assert!(receiver.verify(&keys, frame.as_bytes()).is_err()); // replay
//! assert_eq!(receiver.stats().replay, 1);
//! # Ok::<(), fleetkey_core::secoc::SecocError>(())
//! ```

mod freshness;
mod mac;
mod profile;
mod receiver;
mod sender;
mod window;

pub use freshness::{FreshnessCounter, reconstruct, replay_candidate, truncate_fv};
pub use mac::{FrameKey, MAX_MAC_INPUT};
pub use profile::{CAN_FD_LENGTHS, MAX_FRAME, Profile, is_can_fd_length};
pub use receiver::{
    DEFAULT_VERIFY_ATTEMPTS, MAX_VERIFY_ATTEMPTS, Receiver, Rejected, Stats, Verified,
};
pub use sender::{Secured, SecuredFrame, Sender, secure};
pub use window::{KeyWindow, MAX_PREVIOUS, WINDOW_CAPACITY, WindowConfig};

/// Why a profile, a frame to secure, a freshness counter or a key window was refused.
///
/// Verification failures are not reported here: [`Receiver::verify`] returns the opaque
/// [`Rejected`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecocError {
    /// No profile has this name.
    UnknownProfile,
    /// Custom profile lengths out of range (FV 0..=8 bytes, MAC 1..=16 bytes, frame up to 64
    /// bytes and at least the FV and MAC).
    ProfileLengths,
    /// The payload is longer than the profile leaves room for.
    PayloadTooLong {
        /// The payload length.
        len: usize,
        /// The longest payload of the profile.
        max: usize,
    },
    /// The output buffer is shorter than the secured frame.
    OutputTooSmall {
        /// The secured frame's length.
        needed: usize,
    },
    /// The freshness counter reached `u64::MAX`: the key must change before this DataId is sent
    /// again (the counter never wraps).
    FreshnessExhausted,
    /// The persisted reservation of freshness values is used up: persist a new one first.
    FreshnessNotReserved,
    /// A freshness start of 0 (the first freshness value is 1).
    FreshnessZero,
    /// `accept_previous` above [`MAX_PREVIOUS`].
    WindowTooWide,
    /// The receiver's clock went back to an epoch before its current one.
    EpochBackwards,
}

impl core::fmt::Display for SecocError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::UnknownProfile => f.write_str("profile: unknown name (expected p1, p2, fd64 or fd128)"),
            Self::ProfileLengths => f.write_str(
                "profile: lengths out of range (fv_len 0..=8, mac_len 1..=16, fv_len + mac_len <= max_frame <= 64)",
            ),
            Self::PayloadTooLong { len, max } => {
                write!(f, "payload: {len} bytes, the profile leaves room for at most {max}")
            }
            Self::OutputTooSmall { needed } => {
                write!(f, "output: buffer too small, the secured frame needs {needed} bytes")
            }
            Self::FreshnessExhausted => {
                f.write_str("freshness: counter exhausted at 2^64-1, it never wraps")
            }
            Self::FreshnessNotReserved => {
                f.write_str("freshness: reservation used up, persist a new reservation first")
            }
            Self::FreshnessZero => f.write_str("freshness: the first freshness value is 1, not 0"),
            Self::WindowTooWide => write!(f, "accept_previous: at most {MAX_PREVIOUS} epochs"),
            Self::EpochBackwards => f.write_str("epoch: before the key window's current epoch"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for SecocError {}

#[cfg(test)]
mod tests;
