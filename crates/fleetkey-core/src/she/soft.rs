//! A software SHE: key slots with counters and flags that accept M1-M3 and answer M4, M5, for
//! ECUs without SHE hardware.

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::crypto::{KEY_UPDATE_ENC_C, KEY_UPDATE_MAC_C, cmac, kdf};
use super::messages::{M1, M2, M3, M4, M5, expected_m3, open_m2, proof};
use super::types::{Counter, KeyFlags, SlotId, Uid};
use crate::keys::{Key128, RollSeed};

/// The shortest MAC prefix [`SoftShe::verify_mac`] accepts: 4 bytes (32 bits).
pub const MIN_MAC_PREFIX: usize = 4;

/// Why [`SoftShe::load_key`] refused M1-M3. Each variant names the rule; a refusal changes
/// nothing in the SHE.
///
/// This is an ECU-internal API: the reasons are distinct so the ECU can log and count them.
/// What the ECU tells the sender over the bus is its own choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoadError {
    /// M1's UID is neither this SHE's UID nor the wildcard.
    UidMismatch,
    /// M1 carries the wildcard UID, and the target slot's WILDCARD flag forbids that.
    WildcardNotPermitted(SlotId),
    /// M1's auth id may not authorise an update of its key id (see
    /// [`SlotId::may_be_updated_by`]; RAM_KEY is never a target).
    AuthNotAllowed {
        /// The slot to update.
        key_id: SlotId,
        /// The authorising slot named in M1.
        auth_id: SlotId,
    },
    /// The authorising slot holds no key.
    AuthSlotEmpty(SlotId),
    /// M3 does not authenticate M1 || M2 under the authorising key.
    Mac,
    /// The target slot is write-protected.
    WriteProtected(SlotId),
    /// M2's 95 bits between the flags and the key are not zero.
    Padding,
    /// The new counter is not strictly above the slot's counter.
    CounterNotIncreased {
        /// The slot's counter.
        stored: Counter,
        /// The counter in M2.
        received: Counter,
    },
}

impl core::fmt::Display for LoadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::UidMismatch => f.write_str("m1: the UID is neither this SHE's nor the wildcard"),
            Self::WildcardNotPermitted(slot) => {
                write!(
                    f,
                    "m1: wildcard UID, but slot {slot} has the WILDCARD flag set"
                )
            }
            Self::AuthNotAllowed { key_id, auth_id } => {
                write!(
                    f,
                    "m1: auth id {auth_id} may not authorise an update of {key_id}"
                )
            }
            Self::AuthSlotEmpty(slot) => write!(f, "m1: the authorising slot {slot} is empty"),
            Self::Mac => {
                f.write_str("m3: does not authenticate m1 || m2 under the authorising key")
            }
            Self::WriteProtected(slot) => write!(f, "m1: slot {slot} is write-protected"),
            Self::Padding => f.write_str("m2: the 95 bits after the flags are not zero"),
            Self::CounterNotIncreased { stored, received } => write!(
                f,
                "m2: counter {} is not above the slot's counter {}",
                received.get(),
                stored.get()
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for LoadError {}

/// Why [`SoftShe::generate_mac`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MacError {
    /// The slot holds no key.
    SlotEmpty(SlotId),
    /// The slot is not a MAC key: KEY_n without the KEY_USAGE flag, or MASTER_ECU_KEY,
    /// BOOT_MAC_KEY or BOOT_MAC.
    NotAMacKey(SlotId),
}

impl core::fmt::Display for MacError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::SlotEmpty(slot) => write!(f, "slot: {slot} is empty"),
            Self::NotAMacKey(slot) => write!(
                f,
                "slot: {slot} is not a MAC key (KEY_1..KEY_10 with KEY_USAGE set, or RAM_KEY)"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for MacError {}

/// One key slot. `counter` is `None` while no memory update has written the slot (empty, the
/// factory transport key, or a plain RAM key).
#[derive(Default)]
struct Slot {
    key: Option<Key128>,
    counter: Option<Counter>,
    flags: KeyFlags,
}

impl core::fmt::Debug for Slot {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Slot")
            .field("empty", &self.key.is_none())
            .field("counter", &self.counter)
            .field("flags", &self.flags)
            .finish_non_exhaustive()
    }
}

/// A software SHE: MASTER_ECU_KEY, BOOT_MAC_KEY, BOOT_MAC, KEY_1 .. KEY_10 and RAM_KEY, each
/// with a counter and flags, updated only through the memory update protocol.
///
/// Devices leave the factory with a transport MASTER_ECU_KEY (often shared by a whole
/// production batch) or none. The first update replaces it with the device's own MASTER_ECU_KEY;
/// until then the transport key has no counter, so that update may carry any counter, 0
/// included. Keys are zeroized when replaced and when the SHE is dropped; `Debug` prints slot
/// states, never keys.
///
/// The BOOT_PROTECTION and DEBUGGER_PROTECTION flags are stored and reported, not enforced: a
/// software SHE has no secure boot and no debugger state to tie them to.
#[derive(Debug)]
pub struct SoftShe {
    uid: Uid,
    slots: [Slot; 14],
}

/// The array position of a slot. `SlotId::id()` is `1 ..= 14`, so this is `0 ..= 13`.
const fn index(slot: SlotId) -> usize {
    (slot.id() - 1) as usize
}

impl SoftShe {
    /// A SHE with this UID, every slot empty but MASTER_ECU_KEY, which holds the factory
    /// transport key if one is given (with no counter and no flags). Without a transport key
    /// the SHE can never be updated: every update needs a non-empty authorising slot.
    pub fn new(uid: Uid, transport_master_key: Option<Key128>) -> Self {
        let mut she = Self {
            uid,
            slots: Default::default(),
        };
        she.slot_mut(SlotId::MasterEcuKey).key = transport_master_key;
        she
    }

    /// This SHE's UID.
    pub const fn uid(&self) -> Uid {
        self.uid
    }

    #[allow(
        clippy::indexing_slicing,
        reason = "index(slot) is 0..=13 and there are 14 slots"
    )]
    fn slot(&self, slot: SlotId) -> &Slot {
        &self.slots[index(slot)]
    }

    #[allow(
        clippy::indexing_slicing,
        reason = "index(slot) is 0..=13 and there are 14 slots"
    )]
    fn slot_mut(&mut self, slot: SlotId) -> &mut Slot {
        &mut self.slots[index(slot)]
    }

    /// The slot's counter; `None` while no memory update has written it (empty, factory
    /// transport key, plain RAM key).
    pub fn counter(&self, slot: SlotId) -> Option<Counter> {
        self.slot(slot).counter
    }

    /// The slot's flags (none for an empty slot).
    pub fn flags(&self, slot: SlotId) -> KeyFlags {
        self.slot(slot).flags
    }

    /// Whether the slot holds no key.
    pub fn is_empty(&self, slot: SlotId) -> bool {
        self.slot(slot).key.is_none()
    }

    /// CMD_LOAD_KEY: checks M1-M3 and, when every rule holds, stores the new key, counter and
    /// flags and answers M4, M5. The rules, in the order checked:
    /// 1. M1's UID is this SHE's UID or the wildcard ([`LoadError::UidMismatch`]);
    /// 2. M1's auth id may authorise its key id ([`LoadError::AuthNotAllowed`]);
    /// 3. the authorising slot is not empty ([`LoadError::AuthSlotEmpty`]);
    /// 4. M3 authenticates M1 || M2 under the authorising key, compared in constant time
    ///    ([`LoadError::Mac`]);
    /// 5. a wildcard UID only if the target slot's WILDCARD flag is clear
    ///    ([`LoadError::WildcardNotPermitted`]);
    /// 6. the target slot is not write-protected ([`LoadError::WriteProtected`]);
    /// 7. M2 decrypts with zero padding bits ([`LoadError::Padding`]);
    /// 8. the new counter is strictly above the slot's counter; a slot without a counter
    ///    (empty, or the factory transport key) accepts any ([`LoadError::CounterNotIncreased`]).
    ///
    /// Any refusal changes nothing. M4 carries this SHE's own UID, also for a wildcard update.
    pub fn load_key(&mut self, m1: &M1, m2: &M2, m3: &M3) -> Result<(M4, M5), LoadError> {
        let key_id = m1.key_id();
        let auth_id = m1.auth_id();
        let uid = m1.uid();
        if uid != self.uid && !uid.is_wildcard() {
            return Err(LoadError::UidMismatch);
        }
        if !key_id.may_be_updated_by(auth_id) {
            return Err(LoadError::AuthNotAllowed { key_id, auth_id });
        }
        let auth_key = self
            .slot(auth_id)
            .key
            .as_ref()
            .ok_or(LoadError::AuthSlotEmpty(auth_id))?;
        let k2 = kdf(auth_key, &KEY_UPDATE_MAC_C);
        if !bool::from(expected_m3(&k2, m1, m2).ct_eq(m3)) {
            return Err(LoadError::Mac);
        }
        let target = self.slot(key_id);
        if uid.is_wildcard() && target.flags.contains(KeyFlags::WILDCARD) {
            return Err(LoadError::WildcardNotPermitted(key_id));
        }
        if target.flags.contains(KeyFlags::WRITE_PROTECTION) {
            return Err(LoadError::WriteProtected(key_id));
        }
        let k1 = kdf(auth_key, &KEY_UPDATE_ENC_C);
        let plain = open_m2(&k1, m2);
        if !plain.padding_ok {
            return Err(LoadError::Padding);
        }
        if let Some(stored) = target.counter
            && plain.counter <= stored
        {
            return Err(LoadError::CounterNotIncreased {
                stored,
                received: plain.counter,
            });
        }
        let (m4, m5) = proof(
            &M1::new(self.uid, key_id, auth_id),
            &plain.key,
            plain.counter,
        );
        let slot = self.slot_mut(key_id);
        slot.key = Some(plain.key);
        slot.counter = Some(plain.counter);
        slot.flags = plain.flags;
        Ok((m4, m5))
    }

    /// CMD_LOAD_PLAIN_KEY: puts a key into RAM_KEY, with no counter and no flags. The RAM key is
    /// volatile and usable for MACs.
    pub fn load_plain_ram_key(&mut self, key: Key128) {
        let slot = self.slot_mut(SlotId::RamKey);
        slot.key = Some(key);
        slot.counter = None;
        slot.flags = KeyFlags::NONE;
    }

    fn mac_key(&self, slot: SlotId) -> Result<&Key128, MacError> {
        let s = self.slot(slot);
        let key = s.key.as_ref().ok_or(MacError::SlotEmpty(slot))?;
        let usable =
            slot == SlotId::RamKey || (slot.is_user_key() && s.flags.contains(KeyFlags::KEY_USAGE));
        if usable {
            Ok(key)
        } else {
            Err(MacError::NotAMacKey(slot))
        }
    }

    /// CMD_GENERATE_MAC: AES-128-CMAC of `message` under the slot's key. Only KEY_1 .. KEY_10
    /// with the KEY_USAGE flag set (SHE: set means a MAC key) and RAM_KEY may MAC.
    pub fn generate_mac(&self, slot: SlotId, message: &[u8]) -> Result<[u8; 16], MacError> {
        Ok(cmac(self.mac_key(slot)?, message))
    }

    /// CMD_VERIFY_MAC: whether `mac_prefix` is the first bytes of the slot key's CMAC of
    /// `message`, compared in constant time. The prefix must be 4 to 16 bytes
    /// ([`MIN_MAC_PREFIX`]); any refusal (slot empty or not a MAC key, prefix length out of
    /// range, mismatch) is `false`.
    pub fn verify_mac(&self, slot: SlotId, message: &[u8], mac_prefix: &[u8]) -> bool {
        if mac_prefix.len() < MIN_MAC_PREFIX {
            return false;
        }
        let Ok(mac) = self.generate_mac(slot, message) else {
            return false;
        };
        match mac.get(..mac_prefix.len()) {
            Some(expected) => expected.ct_eq(mac_prefix).into(),
            None => false,
        }
    }

    /// The raw key of a slot. **Software SHE only**: a hardware SHE never lets a key out, so
    /// firmware that calls this cannot move to SHE hardware unchanged. It exists for keys the
    /// ECU needs as bytes, such as fleetkey's 32-byte roll seed kept in two slots (see
    /// [`SoftShe::roll_seed_software_only`]).
    pub fn raw_key_software_only(&self, slot: SlotId) -> Option<&Key128> {
        self.slot(slot).key.as_ref()
    }

    /// The 32-byte roll seed `first || second` from two slots (fleetkey keeps it in KEY_2 and
    /// KEY_3); `None` if either is empty. **Software SHE only**, as
    /// [`SoftShe::raw_key_software_only`].
    pub fn roll_seed_software_only(&self, first: SlotId, second: SlotId) -> Option<RollSeed> {
        let a = self.raw_key_software_only(first)?;
        let b = self.raw_key_software_only(second)?;
        let mut bytes = [0u8; 32];
        let (left, right) = bytes.split_at_mut(16);
        left.copy_from_slice(a.expose_secret());
        right.copy_from_slice(b.expose_secret());
        let seed = RollSeed::from_bytes(bytes);
        bytes.zeroize();
        Some(seed)
    }
}

/// Erases every key, counter and flag (as SHE's CMD_DEBUG does); the UID stays.
impl Zeroize for SoftShe {
    fn zeroize(&mut self) {
        for slot in self.slots.iter_mut() {
            // Dropping the Key128 zeroizes it.
            slot.key = None;
            slot.counter = None;
            slot.flags = KeyFlags::NONE;
        }
    }
}

/// Every key sits in a `Key128`, which zeroizes itself on drop.
impl ZeroizeOnDrop for SoftShe {}
