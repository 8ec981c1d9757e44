//! What a device receives: its key set, and the SHE memory updates that carry it.
//!
//! SHE slot mapping (docs/she.md): KEY_UPDATE key -> MASTER_ECU_KEY, AUTH key -> KEY_1 (a MAC
//! key: KEY_USAGE set), ROLL_SEED -> KEY_2 (first 16 bytes) and KEY_3 (last 16 bytes). Every
//! update's counter is the key revision; with a known UID every slot also gets WILDCARD.

use fleetkey_core::derive::{DeviceKeyInputs, Generation, Revision, Usage};
use fleetkey_core::she::{self, Counter, KeyFlags, SlotId, Uid, UpdateRequest};
use fleetkey_core::{Key128, RollSeed};
use serde::Serialize;

use crate::error::{Error, ModuleError};
use crate::model::{DeviceRecord, DeviceSerial};
use crate::module::KeyModule;

/// The three keys of one device at one generation and revision. Zeroized on drop; no Debug bytes.
pub struct DeviceKeys {
    /// Frame and MAC key.
    pub auth: Key128,
    /// Authorises key updates (SHE MASTER_ECU_KEY).
    pub key_update: Key128,
    /// Base of the device's rolling session keys.
    pub roll_seed: RollSeed,
}

impl std::fmt::Debug for DeviceKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceKeys").finish_non_exhaustive()
    }
}

impl DeviceKeys {
    /// Derives a device's keys at a generation and revision through the key module: from the
    /// generation's master (derived schemes) or from the device's wrapped root (stored scheme).
    pub fn derive(
        module: &dyn KeyModule,
        device: &DeviceRecord,
        generation: u32,
        revision: u32,
    ) -> Result<DeviceKeys, Error> {
        let one = |usage: Usage| derive_one(module, device, generation, revision, usage);
        Ok(DeviceKeys {
            auth: one(Usage::Auth)?
                .to_key128()
                .ok_or_else(|| broken("auth"))?,
            key_update: one(Usage::KeyUpdate)?
                .to_key128()
                .ok_or_else(|| broken("key-update"))?,
            roll_seed: one(Usage::RollSeed)?
                .to_roll_seed()
                .ok_or_else(|| broken("roll-seed"))?,
        })
    }

    /// Only the KEY_UPDATE key of [`DeviceKeys::derive`] (what authorises a refresh's updates).
    pub fn derive_key_update(
        module: &dyn KeyModule,
        device: &DeviceRecord,
        generation: u32,
        revision: u32,
    ) -> Result<Key128, Error> {
        Ok(
            derive_one(module, device, generation, revision, Usage::KeyUpdate)?
                .to_key128()
                .ok_or_else(|| broken("key-update"))?,
        )
    }

    /// The roll seed's halves as SHE keys (KEY_2, KEY_3).
    pub fn roll_seed_halves(&self) -> (Key128, Key128) {
        let (a, b) = self.roll_seed.expose_secret().split_at(16);
        let half = |s: &[u8]| Key128::from_slice(s).unwrap_or_else(|| Key128::from_bytes([0; 16]));
        (half(a), half(b))
    }
}

fn broken(what: &str) -> ModuleError {
    ModuleError::Corrupt(format!("derived {what} key has the wrong length"))
}

/// One of a device's keys through the key module.
fn derive_one(
    module: &dyn KeyModule,
    device: &DeviceRecord,
    generation: u32,
    revision: u32,
    usage: Usage,
) -> Result<fleetkey_core::DeviceKey, Error> {
    let inputs = DeviceKeyInputs {
        usage,
        generation: Generation(generation),
        revision: Revision::new(revision).map_err(|e| Error::invalid("revision", e))?,
        serial: device.serial.as_core(),
    };
    Ok(match super::scheme::KeySource::of(device) {
        super::scheme::KeySource::Root(root) => module.derive_with_root(root, &inputs)?,
        super::scheme::KeySource::Master => module.derive(&inputs)?,
    })
}

/// Key material as hex for a provisioning station (serialises secrets: handle the output as key
/// material).
#[derive(Serialize)]
pub struct KeysHex {
    /// AUTH key.
    pub auth: String,
    /// KEY_UPDATE key.
    pub key_update: String,
    /// ROLL_SEED.
    pub roll_seed: String,
}

impl std::fmt::Debug for KeysHex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeysHex").finish_non_exhaustive()
    }
}

impl Drop for KeysHex {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.auth.zeroize();
        self.key_update.zeroize();
        self.roll_seed.zeroize();
    }
}

impl From<&DeviceKeys> for KeysHex {
    fn from(k: &DeviceKeys) -> Self {
        KeysHex {
            auth: hex::encode(k.auth.expose_secret()),
            key_update: hex::encode(k.key_update.expose_secret()),
            roll_seed: hex::encode(k.roll_seed.expose_secret()),
        }
    }
}

/// One SHE memory update: M1-M3 to send to the ECU, M4-M5 to expect back. No plaintext key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SheUpdate {
    /// The slot written.
    pub slot: &'static str,
    /// The slot whose key authorises the write.
    pub auth_slot: &'static str,
    /// The new counter (the key revision).
    pub counter: u32,
    /// M1, hex.
    pub m1: String,
    /// M2, hex.
    pub m2: String,
    /// M3, hex.
    pub m3: String,
    /// Expected M4, hex.
    pub m4: String,
    /// Expected M5, hex.
    pub m5: String,
}

/// One SHE memory update as messages: [`SheUpdate`] before its hex.
pub(super) struct SheMessages {
    /// The slot written.
    pub(super) slot: SlotId,
    /// The slot whose key authorises the write.
    pub(super) auth_slot: SlotId,
    /// The new counter.
    pub(super) counter: Counter,
    /// M1-M5.
    pub(super) m: she::UpdateMessages,
}

impl From<&SheMessages> for SheUpdate {
    fn from(u: &SheMessages) -> Self {
        let m = &u.m;
        SheUpdate {
            slot: u.slot.name(),
            auth_slot: u.auth_slot.name(),
            counter: u.counter.get(),
            m1: hex_text(&m.m1.to_bytes()),
            m2: hex_text(&m.m2.to_bytes()),
            m3: hex_text(&m.m3.to_bytes()),
            m4: hex_text(&m.m4.to_bytes()),
            m5: hex_text(&m.m5.to_bytes()),
        }
    }
}

fn update(
    uid: Uid,
    slot: SlotId,
    auth: (SlotId, &she::Authorisation),
    new_key: &Key128,
    counter: Counter,
    flags: KeyFlags,
) -> Result<SheMessages, Error> {
    let request = UpdateRequest::new(uid, slot, auth.0, counter, flags)
        .map_err(|e| Error::invalid("she", e))?;
    Ok(SheMessages {
        slot,
        auth_slot: auth.0,
        counter,
        m: auth.1.build(new_key, &request),
    })
}

/// Lower-case hex of a message (not secret: M1-M5 carry the new key only encrypted), through
/// `hex::encode_to_slice`: `hex::encode` collects chars one by one, and was an eighth of a bulk
/// refresh's time.
fn hex_text(bytes: &[u8]) -> String {
    let mut text = vec![0u8; 2 * bytes.len()];
    match hex::encode_to_slice(bytes, &mut text) {
        Ok(()) => String::from_utf8(text).unwrap_or_default(),
        Err(_) => hex::encode(bytes),
    }
}

/// The SHE UID to address: the device's, or the wildcard when it has none.
pub fn she_uid(device: &DeviceRecord) -> Uid {
    device.she_uid.map(Uid::from_bytes).unwrap_or(Uid::WILDCARD)
}

/// Which key authorises a device's SHE updates. Debug names which, never the key.
#[derive(Clone, Copy)]
pub enum Authoriser<'a> {
    /// The initial load: MASTER_ECU_KEY still holds the factory transport key.
    Transport(&'a Key128),
    /// A refresh or migration: MASTER_ECU_KEY holds the device's current KEY_UPDATE key.
    Current(&'a Key128),
}

impl std::fmt::Debug for Authoriser<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Authoriser::Transport(_) => "Transport",
            Authoriser::Current(_) => "Current",
        };
        f.debug_tuple(name).finish_non_exhaustive()
    }
}

/// The SHE updates that load `new` at `revision`. At the initial load MASTER_ECU_KEY is written
/// first (under the transport key) and the user keys follow under the new KEY_UPDATE key; on a
/// refresh the user keys go first under the current KEY_UPDATE key and MASTER_ECU_KEY last,
/// since it authorises the others.
pub fn she_updates(
    serial: &DeviceSerial,
    uid: Uid,
    authoriser: Authoriser<'_>,
    new: &DeviceKeys,
    revision: u32,
) -> Result<Vec<SheUpdate>, Error> {
    Ok(she_messages(serial, uid, authoriser, new, revision)?
        .iter()
        .map(SheUpdate::from)
        .collect())
}

/// [`she_updates`] as messages, before their hex.
pub(super) fn she_messages(
    serial: &DeviceSerial,
    uid: Uid,
    authoriser: Authoriser<'_>,
    new: &DeviceKeys,
    revision: u32,
) -> Result<Vec<SheMessages>, Error> {
    let counter =
        Counter::new(revision).map_err(|e| Error::invalid(format!("{serial}: revision"), e))?;
    let (seed_a, seed_b) = new.roll_seed_halves();
    let mek = SlotId::MasterEcuKey;
    // With a known UID, keys refuse later wildcard updates (SHE WILDCARD flag); a device
    // without a UID is addressed by the wildcard, so its keys must keep accepting it.
    let protect = if uid.is_wildcard() {
        KeyFlags::NONE
    } else {
        KeyFlags::WILDCARD
    };
    let mut out = Vec::with_capacity(4);
    // K1 and K2 of each authorising key are derived once for the updates it authorises.
    let current = match authoriser {
        Authoriser::Transport(transport) => she::Authorisation::new(transport),
        Authoriser::Current(current) => she::Authorisation::new(current),
    };
    let loaded;
    let user_auth = match authoriser {
        Authoriser::Transport(_) => {
            out.push(update(
                uid,
                mek,
                (mek, &current),
                &new.key_update,
                counter,
                protect,
            )?);
            loaded = she::Authorisation::new(&new.key_update);
            &loaded
        }
        Authoriser::Current(_) => &current,
    };
    out.push(update(
        uid,
        SlotId::Key1,
        (mek, user_auth),
        &new.auth,
        counter,
        KeyFlags::KEY_USAGE.union(protect),
    )?);
    out.push(update(
        uid,
        SlotId::Key2,
        (mek, user_auth),
        &seed_a,
        counter,
        protect,
    )?);
    out.push(update(
        uid,
        SlotId::Key3,
        (mek, user_auth),
        &seed_b,
        counter,
        protect,
    )?);
    if let Authoriser::Current(_) = authoriser {
        out.push(update(
            uid,
            mek,
            (mek, &current),
            &new.key_update,
            counter,
            protect,
        )?);
    }
    Ok(out)
}
