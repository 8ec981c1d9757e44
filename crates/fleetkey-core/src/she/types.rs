//! The values carried in M1-M5: UID, slot ids, flags, counter; and the input error type.

use super::messages::MessageKind;

/// Why an input value or a message's bytes were refused. Each variant names the field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SheError {
    /// A slot id outside `1 ..= 14`.
    SlotId(u8),
    /// M1's or M4's key id nibble is not a slot id (0 is SECRET_KEY, 15 is reserved).
    KeyId(u8),
    /// M1's or M4's auth id nibble is not a slot id.
    AuthId(u8),
    /// `auth_id` may not authorise an update of `key_id` (SHE's authorisation table).
    AuthNotAllowed {
        /// The slot to update.
        key_id: SlotId,
        /// The authorising slot.
        auth_id: SlotId,
    },
    /// A counter at or above 2^28.
    Counter(u32),
    /// Flags with bits above the five SHE flags (above 0x1f).
    Flags(u8),
    /// A message of the wrong length.
    Length {
        /// Which message.
        message: MessageKind,
        /// Its fixed length.
        expected: usize,
        /// The length given.
        actual: usize,
    },
}

impl core::fmt::Display for SheError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::SlotId(v) => write!(f, "slot id: {v} is not a SHE key slot (1 ..= 14)"),
            Self::KeyId(v) => write!(f, "key id: {v} is not an updatable SHE key slot (1 ..= 14)"),
            Self::AuthId(v) => write!(f, "auth id: {v} is not a SHE key slot (1 ..= 14)"),
            Self::AuthNotAllowed { key_id, auth_id } => write!(
                f,
                "auth id: {auth_id} may not authorise an update of {key_id} ({})",
                key_id.authorisers()
            ),
            Self::Counter(v) => write!(f, "counter: {v} is not below 2^28 ({})", 1u32 << 28),
            Self::Flags(v) => {
                write!(
                    f,
                    "flags: 0x{v:02x} has bits above the five SHE flags (at most 0x1f)"
                )
            }
            Self::Length {
                message,
                expected,
                actual,
            } => {
                write!(f, "{message}: {actual} bytes, expected {expected}")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for SheError {}

/// The 120-bit unique id of a SHE module. All zeros is the wildcard UID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Uid([u8; 15]);

impl Uid {
    /// Length in bytes.
    pub const LEN: usize = 15;
    /// The wildcard UID (all zeros): addresses every SHE whose target slot lacks the WILDCARD
    /// flag.
    pub const WILDCARD: Uid = Uid([0; 15]);

    /// A UID from its 15 bytes.
    pub const fn from_bytes(bytes: [u8; 15]) -> Self {
        Self(bytes)
    }

    /// A UID from a slice of exactly 15 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// The 15 bytes.
    pub const fn as_bytes(&self) -> &[u8; 15] {
        &self.0
    }

    /// Whether this is the wildcard UID.
    pub fn is_wildcard(&self) -> bool {
        self.0 == [0; 15]
    }
}

/// A SHE key slot that M1-M5 can name (SHE spec v1.1, "Memory slots"). SECRET_KEY (0) is not
/// here: it is never the target or the authoriser of a memory update in fleetkey.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum SlotId {
    /// Authorises updates of every slot, and is updated only under itself.
    MasterEcuKey = 1,
    /// The secure boot CMAC key.
    BootMacKey = 2,
    /// The secure boot reference MAC.
    BootMac = 3,
    /// User key 1.
    Key1 = 4,
    /// User key 2.
    Key2 = 5,
    /// User key 3.
    Key3 = 6,
    /// User key 4.
    Key4 = 7,
    /// User key 5.
    Key5 = 8,
    /// User key 6.
    Key6 = 9,
    /// User key 7.
    Key7 = 10,
    /// User key 8.
    Key8 = 11,
    /// User key 9.
    Key9 = 12,
    /// User key 10.
    Key10 = 13,
    /// The volatile RAM key: loaded in plain in SHE (CMD_LOAD_PLAIN_KEY), never by M1-M3 here.
    RamKey = 14,
}

impl SlotId {
    /// Every slot, in id order.
    pub const ALL: [SlotId; 14] = [
        SlotId::MasterEcuKey,
        SlotId::BootMacKey,
        SlotId::BootMac,
        SlotId::Key1,
        SlotId::Key2,
        SlotId::Key3,
        SlotId::Key4,
        SlotId::Key5,
        SlotId::Key6,
        SlotId::Key7,
        SlotId::Key8,
        SlotId::Key9,
        SlotId::Key10,
        SlotId::RamKey,
    ];

    /// The slot with this id; ids outside `1 ..= 14` are an error.
    pub const fn new(id: u8) -> Result<Self, SheError> {
        Ok(match id {
            1 => Self::MasterEcuKey,
            2 => Self::BootMacKey,
            3 => Self::BootMac,
            4 => Self::Key1,
            5 => Self::Key2,
            6 => Self::Key3,
            7 => Self::Key4,
            8 => Self::Key5,
            9 => Self::Key6,
            10 => Self::Key7,
            11 => Self::Key8,
            12 => Self::Key9,
            13 => Self::Key10,
            14 => Self::RamKey,
            other => return Err(SheError::SlotId(other)),
        })
    }

    /// The 4-bit id.
    pub const fn id(self) -> u8 {
        self as u8
    }

    /// The SHE name, e.g. `MASTER_ECU_KEY`, `KEY_1`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::MasterEcuKey => "MASTER_ECU_KEY",
            Self::BootMacKey => "BOOT_MAC_KEY",
            Self::BootMac => "BOOT_MAC",
            Self::Key1 => "KEY_1",
            Self::Key2 => "KEY_2",
            Self::Key3 => "KEY_3",
            Self::Key4 => "KEY_4",
            Self::Key5 => "KEY_5",
            Self::Key6 => "KEY_6",
            Self::Key7 => "KEY_7",
            Self::Key8 => "KEY_8",
            Self::Key9 => "KEY_9",
            Self::Key10 => "KEY_10",
            Self::RamKey => "RAM_KEY",
        }
    }

    /// Whether this is one of KEY_1 .. KEY_10.
    pub const fn is_user_key(self) -> bool {
        matches!(self.id(), 4..=13)
    }

    /// Whether a memory update of `self` may be authorised by the key in `auth` (SHE spec v1.1,
    /// memory update protocol, table of allowed AuthIDs):
    /// - MASTER_ECU_KEY: by MASTER_ECU_KEY only;
    /// - BOOT_MAC_KEY and BOOT_MAC: by MASTER_ECU_KEY or BOOT_MAC_KEY;
    /// - KEY_n: by MASTER_ECU_KEY or KEY_n itself;
    /// - RAM_KEY: never (SHE authorises it with SECRET_KEY, which fleetkey never holds; it is
    ///   loaded in plain instead).
    pub const fn may_be_updated_by(self, auth: SlotId) -> bool {
        match self {
            Self::MasterEcuKey => matches!(auth, Self::MasterEcuKey),
            Self::BootMacKey | Self::BootMac => {
                matches!(auth, Self::MasterEcuKey | Self::BootMacKey)
            }
            Self::RamKey => false,
            user => matches!(auth, Self::MasterEcuKey) || user.id() == auth.id(),
        }
    }

    const fn authorisers(self) -> &'static str {
        match self {
            Self::MasterEcuKey => "MASTER_ECU_KEY is updated only under itself",
            Self::BootMacKey | Self::BootMac => "allowed: MASTER_ECU_KEY or BOOT_MAC_KEY",
            Self::RamKey => "RAM_KEY is loaded in plain, not with M1-M3",
            _ => "allowed: MASTER_ECU_KEY or the key itself",
        }
    }
}

impl core::fmt::Display for SlotId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} ({})", self.id(), self.name())
    }
}

/// The five SHE key protection flags of M2, `0 ..= 0x1f`, most significant first:
/// WRITE_PROTECTION, BOOT_PROTECTION, DEBUGGER_PROTECTION, KEY_USAGE, WILDCARD.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct KeyFlags(u8);

impl KeyFlags {
    /// The slot can never be updated again.
    pub const WRITE_PROTECTION: KeyFlags = KeyFlags(0x10);
    /// The key is locked after a failed secure boot (stored, not enforced by [`super::SoftShe`]).
    pub const BOOT_PROTECTION: KeyFlags = KeyFlags(0x08);
    /// The key is locked while a debugger is attached (stored, not enforced by
    /// [`super::SoftShe`]).
    pub const DEBUGGER_PROTECTION: KeyFlags = KeyFlags(0x04);
    /// Set: the key is for CMAC generation and verification; clear: for encryption and
    /// decryption.
    pub const KEY_USAGE: KeyFlags = KeyFlags(0x02);
    /// Set: the slot may NOT be updated with the wildcard UID.
    pub const WILDCARD: KeyFlags = KeyFlags(0x01);
    /// No flag set.
    pub const NONE: KeyFlags = KeyFlags(0);

    /// Flags from their 5-bit value; higher bits are an error.
    pub const fn new(bits: u8) -> Result<Self, SheError> {
        if bits > 0x1f {
            Err(SheError::Flags(bits))
        } else {
            Ok(Self(bits))
        }
    }

    /// The 5-bit value.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether every flag of `other` is set here.
    pub const fn contains(self, other: KeyFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// These flags together with `other`.
    pub const fn union(self, other: KeyFlags) -> KeyFlags {
        KeyFlags(self.0 | other.0)
    }
}

/// A SHE key counter, `0 ..= 2^28 - 1`. In fleetkey it is the key's revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Counter(u32);

impl Counter {
    /// The largest counter, 2^28 - 1.
    pub const MAX: Counter = Counter((1 << 28) - 1);
    /// Zero.
    pub const ZERO: Counter = Counter(0);

    /// A counter; values at or above 2^28 are an error.
    pub const fn new(value: u32) -> Result<Self, SheError> {
        if value > Self::MAX.0 {
            Err(SheError::Counter(value))
        } else {
            Ok(Self(value))
        }
    }

    /// The number.
    pub const fn get(self) -> u32 {
        self.0
    }
}
