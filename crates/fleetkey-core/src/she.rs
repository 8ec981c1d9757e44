//! SHE memory update protocol (M1-M5) and a software SHE.
//!
//! Implements the key update messages of the SHE (Secure Hardware Extension) functional
//! specification v1.1, section "Memory update protocol", byte-exact to the specification's
//! example (`tests/vectors/she-key-update.json`); see `docs/she.md`.
//!
//! ```text
//! K1 = KDF(K_AuthID, KEY_UPDATE_ENC_C)      K2 = KDF(K_AuthID, KEY_UPDATE_MAC_C)
//! K3 = KDF(K_ID,     KEY_UPDATE_ENC_C)      K4 = KDF(K_ID,     KEY_UPDATE_MAC_C)
//! M1 = UID (120 bits) | ID (4) | AuthID (4)
//! M2 = AES-CBC(K1, IV = 0, counter (28) | flags (5) | 0 (95) || K_ID)
//! M3 = AES-CMAC(K2, M1 || M2)
//! M4 = UID | ID | AuthID || AES-ECB(K3, counter (28) | 1 | 0 (99))
//! M5 = AES-CMAC(K4, M4)
//! KDF(K, C) = AES Miyaguchi-Preneel compression of K || C
//! ```
//!
//! The key manager calls [`build`] to produce M1-M3 (and the M4, M5 it expects back) and
//! [`verify`] to check the proof an ECU returns. An ECU without SHE hardware runs a [`SoftShe`].
//!
//! ```
//! use fleetkey_core::Key128;
//! use fleetkey_core::she::{build, verify, Counter, KeyFlags, SlotId, SoftShe, Uid, UpdateRequest};
//!
//! let uid = Uid::from_bytes([0x42; 15]);
//! let transport = Key128::from_bytes([0x01; 16]);
//! let mut ecu = SoftShe::new(uid, Some(transport.clone()));
//!
//! // Replace the factory transport key with the device's own MASTER_ECU_KEY.
//! let master = Key128::from_bytes([0x02; 16]);
//! let request = UpdateRequest::new(
//!     uid, SlotId::MasterEcuKey, SlotId::MasterEcuKey, Counter::new(1)?, KeyFlags::new(0)?,
//! )?;
//! let messages = build(&transport, &master, &request);
//! let (m4, m5) = ecu.load_key(&messages.m1, &messages.m2, &messages.m3).expect("authentic");
//! assert_eq!((m4, m5), (messages.m4, messages.m5));
//! let proof = verify(&master, &m4, &m5).expect("M5 authenticates M4");
//! assert_eq!(proof.counter, Counter::new(1)?);
//! # Ok::<(), fleetkey_core::she::SheError>(())
//! ```

mod crypto;
mod messages;
mod soft;
mod types;

pub use crypto::{KEY_UPDATE_ENC_C, KEY_UPDATE_MAC_C, cmac, kdf};
pub use messages::{
    Authorisation, Confirmation, M1, M2, M3, M4, M5, MessageKind, UpdateMessages, UpdateRequest,
    VerifyError, build, verify,
};
pub use soft::{LoadError, MIN_MAC_PREFIX, MacError, SoftShe};
pub use types::{Counter, KeyFlags, SheError, SlotId, Uid};

#[cfg(test)]
mod tests;
