//! Device key derivation v1 (contract; see `docs/derivation.md`).
//!
//! ```text
//! key  = HKDF-Expand-SHA256(PRK = master of generation g, info, L)
//! info = "FK1D" || usage (1) || generation (u32 BE) || revision (u32 BE)
//!        || serial_len (1) || serial (1..=40 bytes)
//! ```
//! Every input is checked on construction; nothing is truncated or wrapped. `info || 0x01` is at
//! most 55 bytes, so [`Deriver`] computes one derivation with two SHA-256 compressions.

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::keys::{Key128, MasterKey, RollSeed};
use crate::prf::PrkState;

/// The label that starts every v1 device key `info`.
pub const DEVICE_KEY_LABEL: &[u8; 4] = b"FK1D";
/// The largest revision: revisions are SHE counters, 28 bits.
pub const MAX_REVISION: u32 = (1 << 28) - 1;
/// The longest serial in bytes.
pub const MAX_SERIAL_LEN: usize = 40;
/// The longest v1 `info`: label, usage, generation, revision, length byte and a 40-byte serial.
pub const MAX_INFO_LEN: usize = 4 + 1 + 4 + 4 + 1 + MAX_SERIAL_LEN;

/// Why a derivation input was refused. Each variant names the field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeriveError {
    /// The usage byte is not 0x01, 0x02 or 0x03.
    Usage(u8),
    /// The revision is above 2^28 - 1.
    Revision(u32),
    /// The serial is empty or longer than 40 bytes (its length).
    SerialLength(usize),
}

impl core::fmt::Display for DeriveError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Usage(u) => write!(
                f,
                "usage: 0x{u:02x} is reserved (use 0x01 auth, 0x02 key-update or 0x03 roll-seed)"
            ),
            Self::Revision(r) => write!(
                f,
                "revision: {r} is above the maximum {MAX_REVISION} (2^28 - 1, the SHE counter range)"
            ),
            Self::SerialLength(n) => {
                write!(f, "serial: {n} bytes, must be 1 to {MAX_SERIAL_LEN} bytes")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for DeriveError {}

/// What a device key is for; it fixes the key's length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Usage {
    /// Frame and MAC key, 16 bytes.
    Auth = 0x01,
    /// Authorises key updates (the SHE MASTER_ECU_KEY role), 16 bytes.
    KeyUpdate = 0x02,
    /// Base of rolling session keys, 32 bytes.
    RollSeed = 0x03,
}

impl Usage {
    /// Every usage, in code order.
    pub const ALL: [Usage; 3] = [Usage::Auth, Usage::KeyUpdate, Usage::RollSeed];

    /// The usage for a code byte; reserved values are an error.
    pub const fn from_code(code: u8) -> Result<Self, DeriveError> {
        match code {
            0x01 => Ok(Self::Auth),
            0x02 => Ok(Self::KeyUpdate),
            0x03 => Ok(Self::RollSeed),
            other => Err(DeriveError::Usage(other)),
        }
    }

    /// The code byte in `info`.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The derived key's length `L` in bytes.
    pub const fn key_len(self) -> usize {
        match self {
            Self::Auth | Self::KeyUpdate => 16,
            Self::RollSeed => 32,
        }
    }

    /// The name used on the command line and in files: `auth`, `key-update`, `roll-seed`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::KeyUpdate => "key-update",
            Self::RollSeed => "roll-seed",
        }
    }
}

/// A master generation number (any u32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Generation(pub u32);

/// A key revision, `0 ..= 2^28 - 1`: the SHE counter of the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Revision(u32);

impl Revision {
    /// The first revision.
    pub const ZERO: Revision = Revision(0);

    /// A revision, refused above 2^28 - 1.
    pub const fn new(value: u32) -> Result<Self, DeriveError> {
        if value > MAX_REVISION {
            Err(DeriveError::Revision(value))
        } else {
            Ok(Self(value))
        }
    }

    /// The number.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// The next revision, or an error when the 28-bit range is used up.
    pub const fn next(self) -> Result<Self, DeriveError> {
        Self::new(self.0.saturating_add(1))
    }
}

/// A device serial, 1 to 40 bytes (UTF-8 text or raw bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Serial<'a>(&'a [u8]);

impl<'a> Serial<'a> {
    /// A serial, refused when empty or longer than 40 bytes.
    pub const fn new(bytes: &'a [u8]) -> Result<Self, DeriveError> {
        if bytes.is_empty() || bytes.len() > MAX_SERIAL_LEN {
            Err(DeriveError::SerialLength(bytes.len()))
        } else {
            Ok(Self(bytes))
        }
    }

    /// The serial's bytes.
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.0
    }
}

/// The public inputs of one device key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceKeyInputs<'a> {
    /// What the key is for.
    pub usage: Usage,
    /// The master generation it derives from.
    pub generation: Generation,
    /// The key revision (SHE counter).
    pub revision: Revision,
    /// The device serial.
    pub serial: Serial<'a>,
}

impl DeviceKeyInputs<'_> {
    /// Writes the v1 `info` into `buf` and returns its length (15 + serial length).
    pub fn encode_info(&self, buf: &mut [u8; MAX_INFO_LEN]) -> usize {
        let serial = self.serial.as_bytes();
        let (label, rest) = buf.split_at_mut(4);
        label.copy_from_slice(DEVICE_KEY_LABEL);
        let (usage, rest) = rest.split_at_mut(1);
        usage.copy_from_slice(&[self.usage.code()]);
        let (generation, rest) = rest.split_at_mut(4);
        generation.copy_from_slice(&self.generation.0.to_be_bytes());
        let (revision, rest) = rest.split_at_mut(4);
        revision.copy_from_slice(&self.revision.get().to_be_bytes());
        let (len, rest) = rest.split_at_mut(1);
        // Serial::new bounds the length to 40, so it fits one byte.
        len.copy_from_slice(&[u8::try_from(serial.len()).unwrap_or(u8::MAX)]);
        for (dst, src) in rest.iter_mut().zip(serial.iter()) {
            *dst = *src;
        }
        MAX_INFO_LEN - MAX_SERIAL_LEN + serial.len()
    }
}

/// A derived device key: 16 bytes for AUTH and KEY_UPDATE, 32 for ROLL_SEED.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DeviceKey {
    #[zeroize(skip)]
    usage: Usage,
    bytes: [u8; 32],
}

impl core::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DeviceKey")
            .field("usage", &self.usage)
            .finish_non_exhaustive()
    }
}

impl DeviceKey {
    /// The usage the key was derived for.
    pub const fn usage(&self) -> Usage {
        self.usage
    }

    /// A device key computed elsewhere (a hardware module's HMAC): `bytes` must be
    /// `usage.key_len()` long, else `None`.
    pub fn from_slice(usage: Usage, bytes: &[u8]) -> Option<Self> {
        let mut key = DeviceKey {
            usage,
            bytes: [0; 32],
        };
        if bytes.len() != usage.key_len() {
            return None;
        }
        key.bytes.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(key)
    }

    /// The key bytes (`usage().key_len()` of them). Do not log, print or store them.
    pub fn expose_secret(&self) -> &[u8] {
        self.bytes.get(..self.usage.key_len()).unwrap_or(&[])
    }

    /// The key as an AES-128 key, for AUTH and KEY_UPDATE keys.
    pub fn to_key128(&self) -> Option<Key128> {
        match self.usage {
            Usage::Auth | Usage::KeyUpdate => Key128::from_slice(self.expose_secret()),
            Usage::RollSeed => None,
        }
    }

    /// The key as a roll seed, for ROLL_SEED keys.
    pub fn to_roll_seed(&self) -> Option<RollSeed> {
        match self.usage {
            Usage::RollSeed => RollSeed::from_slice(self.expose_secret()),
            Usage::Auth | Usage::KeyUpdate => None,
        }
    }
}

/// A master (or a stored scheme's device root) ready to derive: its HMAC pad states are computed
/// once, so each derivation costs two SHA-256 compressions. Zeroized on drop.
#[derive(Clone, Debug)]
pub struct Deriver {
    state: PrkState,
}

impl Deriver {
    /// Precomputes the derivation state of a master.
    pub fn new(master: &MasterKey) -> Self {
        Self {
            state: PrkState::new(master.expose_secret()),
        }
    }

    /// Derives one device key.
    pub fn derive(&self, inputs: &DeviceKeyInputs<'_>) -> DeviceKey {
        let mut key = DeviceKey {
            usage: inputs.usage,
            bytes: [0; 32],
        };
        let len = inputs.usage.key_len();
        if let Some(out) = key.bytes.get_mut(..len) {
            self.derive_into(inputs, out);
        }
        key
    }

    /// Derives one device key into `out`, which must be `usage.key_len()` bytes; the bulk path
    /// for callers that manage their own zeroizing buffers. Writes nothing when `out` has
    /// another length.
    pub fn derive_into(&self, inputs: &DeviceKeyInputs<'_>, out: &mut [u8]) {
        if out.len() != inputs.usage.key_len() {
            return;
        }
        let mut info = [0u8; MAX_INFO_LEN];
        let len = inputs.encode_info(&mut info);
        if let Some(info) = info.get(..len) {
            // info is at most 54 bytes and out at most 32: the one-block path cannot refuse.
            let _ = self.state.expand_one_block(info, out);
        }
    }
}

/// Derives one device key from a master (computes the pad states for this call only).
pub fn derive(master: &MasterKey, inputs: &DeviceKeyInputs<'_>) -> DeviceKey {
    Deriver::new(master).derive(inputs)
}

#[cfg(test)]
mod tests;
