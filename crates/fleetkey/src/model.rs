//! The records the key module, the store and the fleet operations speak in.

use serde::{Deserialize, Serialize};

use fleetkey_core::derive::{Generation, MAX_SERIAL_LEN};

use crate::lifecycle::State;

/// Milliseconds since the Unix epoch (UTC).
pub type UnixMillis = i64;

/// A device serial, 1 to 40 bytes; shown as text when it is UTF-8 without control characters,
/// else as `hex:...`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceSerial(Vec<u8>);

impl DeviceSerial {
    /// A serial, refused when empty or longer than 40 bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, InvalidSerial> {
        let bytes = bytes.into();
        if bytes.is_empty() || bytes.len() > MAX_SERIAL_LEN {
            return Err(InvalidSerial { len: bytes.len() });
        }
        Ok(Self(bytes))
    }

    /// Parses the display form: `hex:...` for raw bytes, else the UTF-8 text itself.
    pub fn parse(text: &str) -> Result<Self, InvalidSerial> {
        match text.strip_prefix("hex:") {
            Some(h) => Self::new(hex::decode(h).map_err(|_| InvalidSerial { len: 0 })?),
            None => Self::new(text.as_bytes()),
        }
    }

    /// The bytes that enter derivation.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The core's borrowed serial.
    pub fn as_core(&self) -> fleetkey_core::Serial<'_> {
        // The length was checked on construction.
        fleetkey_core::Serial::new(&self.0)
            .unwrap_or_else(|_| unreachable!("serial length checked"))
    }
}

impl std::fmt::Display for DeviceSerial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match std::str::from_utf8(&self.0) {
            Ok(text) if !text.starts_with("hex:") && !text.chars().any(char::is_control) => {
                f.write_str(text)
            }
            _ => write!(f, "hex:{}", hex::encode(&self.0)),
        }
    }
}

impl std::fmt::Debug for DeviceSerial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceSerial({self})")
    }
}

impl Serialize for DeviceSerial {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceSerial {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        DeviceSerial::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A serial of the wrong length (or bad `hex:` form).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("serial: {len} bytes, must be 1 to 40 bytes (text, or hex:<hex> for raw bytes)")]
pub struct InvalidSerial {
    /// The refused length.
    pub len: usize,
}

/// How a fleet's device keys come to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheme {
    /// A random 32-byte root per device, kept only wrapped under the module's KEK.
    Stored,
    /// Keys derived from the generation's master; nothing per device at rest.
    Derived,
    /// Derived, plus an Ed25519 root signing generation records and grants.
    Governed,
}

impl Scheme {
    /// The name: `stored`, `derived`, `governed`.
    pub const fn name(self) -> &'static str {
        match self {
            Scheme::Stored => "stored",
            Scheme::Derived => "derived",
            Scheme::Governed => "governed",
        }
    }

    /// Whether device keys derive from a generation master.
    pub const fn derives_from_master(self) -> bool {
        matches!(self, Scheme::Derived | Scheme::Governed)
    }
}

/// A key wrapped under the module's key-encryption key (AES-256 key wrap with padding, RFC 5649).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey(#[serde(with = "hex::serde")] pub Vec<u8>);

impl std::fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WrappedKey({} bytes)", self.0.len())
    }
}

/// Who did what, when and why: stored with every state change and in the audit event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// When, in Unix milliseconds.
    pub at: UnixMillis,
    /// Who (a user, a token's principal, `system`).
    pub actor: String,
    /// Why, as given by the actor (may be empty).
    pub reason: String,
}

/// The fleet itself: one per store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetInfo {
    /// Fleet identifier (also in governance records).
    pub id: String,
    /// The key scheme.
    pub scheme: Scheme,
    /// The generation new devices get and refreshes migrate to (derived and governed schemes).
    pub current_generation: Option<u32>,
    /// When the fleet was created.
    pub created_at: UnixMillis,
}

/// A master generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationRecord {
    /// The generation number.
    pub generation: u32,
    /// Its lifecycle state.
    pub state: State,
    /// The last state change.
    pub changed: Change,
    /// When it was created.
    pub created_at: UnixMillis,
}

impl GenerationRecord {
    /// The core's generation type.
    pub const fn core(&self) -> Generation {
        Generation(self.generation)
    }
}

/// A SHE UID: 15 bytes (120 bits).
pub type SheUid = [u8; 15];

/// One device in the registry. Holds no plaintext key: the derived schemes store nothing secret,
/// the stored scheme stores its root only wrapped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// The serial (primary key).
    pub serial: DeviceSerial,
    /// The SHE UID, when the ECU has a SHE (for M1-M3 addressed to it).
    #[serde(default, with = "option_hex15")]
    pub she_uid: Option<SheUid>,
    /// Free labels (`line=3`, `model=T7`), used in filters.
    #[serde(default)]
    pub labels: Vec<String>,
    /// The generation its keys derive from.
    pub generation: u32,
    /// The key revision (SHE counter), bumped by every refresh and migration.
    pub revision: u32,
    /// Lifecycle state.
    pub state: State,
    /// The last state change.
    pub changed: Change,
    /// Stored scheme: the device root wrapped under the module's KEK. `None` in the derived
    /// schemes, and after destruction.
    pub wrapped_root: Option<WrappedKey>,
    /// When it was registered.
    pub created_at: UnixMillis,
}

pub(crate) mod option_hex15 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &Option<[u8; 15]>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(uid) => s.serialize_some(&hex::encode(uid)),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<[u8; 15]>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| {
            let bytes = hex::decode(&t).map_err(serde::de::Error::custom)?;
            bytes
                .try_into()
                .map_err(|_| serde::de::Error::custom("she_uid: must be 15 bytes"))
        })
        .transpose()
    }
}

/// Which devices a listing or a bulk operation covers. Empty fields match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceFilter {
    /// Only devices in this state.
    pub state: Option<State>,
    /// Only devices on this generation.
    pub generation: Option<u32>,
    /// Only devices carrying every one of these labels.
    pub labels: Vec<String>,
    /// Only serials starting with this prefix (bytes).
    pub serial_prefix: Option<Vec<u8>>,
}

impl DeviceFilter {
    /// Whether a device matches (the reference semantics every store must implement).
    pub fn matches(&self, d: &DeviceRecord) -> bool {
        self.state.is_none_or(|s| d.state == s)
            && self.generation.is_none_or(|g| d.generation == g)
            && self.labels.iter().all(|l| d.labels.contains(l))
            && self
                .serial_prefix
                .as_ref()
                .is_none_or(|p| d.serial.as_bytes().starts_with(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_display_round_trips() {
        for bytes in [
            b"ECU-1".to_vec(),
            vec![0, 1, 0xff],
            b"hex:abc".to_vec(),
            "Sitz-\u{fc}".as_bytes().to_vec(),
        ] {
            let serial = DeviceSerial::new(bytes.clone()).unwrap();
            assert_eq!(
                DeviceSerial::parse(&serial.to_string()).unwrap(),
                serial,
                "{serial}"
            );
        }
        assert!(DeviceSerial::new(Vec::new()).is_err());
        assert!(DeviceSerial::new(vec![b'x'; 41]).is_err());
        assert!(DeviceSerial::parse("hex:zz").is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_serial_round_trips(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..=40)) {
            let serial = DeviceSerial::new(bytes).unwrap();
            proptest::prop_assert_eq!(DeviceSerial::parse(&serial.to_string()).unwrap(), serial.clone());
            let json = serde_json::to_string(&serial).unwrap();
            proptest::prop_assert_eq!(serde_json::from_str::<DeviceSerial>(&json).unwrap(), serial);
        }
    }
}
