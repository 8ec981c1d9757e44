//! The SecOC authenticator: AES-128-CMAC (RFC 4493) over `DataId || payload || FV`.

use aes::Aes128;
use aes::cipher::KeyInit;
use cmac::digest::common::InnerInit;
use cmac::{Cmac, Mac};
use subtle::{Choice, ConstantTimeEq};
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::profile::MAX_FRAME;
use crate::keys::SessionKey;

/// The longest MAC input: DataId (2) + a 64-byte payload + the full FV (8).
pub const MAX_MAC_INPUT: usize = 2 + MAX_FRAME + 8;

/// A session key prepared for CMAC: the AES-128 key schedule is computed once, here, so that
/// authenticating a frame costs one CMAC and no key setup.
///
/// Zeroized on drop (the `aes` crate's `zeroize` feature wipes the round keys); `Debug` prints
/// no key material.
pub struct FrameKey {
    cipher: Aes128,
}

impl FrameKey {
    /// Expands a session key's AES-128 key schedule.
    pub fn new(key: &SessionKey) -> Self {
        Self {
            cipher: Aes128::new(key.expose_secret().into()),
        }
    }

    fn mac(&self) -> Cmac<&Aes128> {
        Cmac::inner_init(&self.cipher)
    }

    /// AES-128-CMAC of a message (RFC 4493), the full 16-byte tag.
    pub fn cmac(&self, message: &[u8]) -> [u8; 16] {
        let mut mac = self.mac();
        mac.update(message);
        mac.finalize().into_bytes().into()
    }

    /// The full 16-byte CMAC of the SecOC MAC input `DataId (u16 BE) || payload || fv (u64 BE)`.
    /// A secured frame carries its leftmost `mac_len` bytes.
    pub fn authenticator(&self, data_id: u16, payload: &[u8], fv: u64) -> [u8; 16] {
        let mut mac = self.mac();
        mac.update(&data_id.to_be_bytes());
        mac.update(payload);
        mac.update(&fv.to_be_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Whether `tag` equals the leftmost `tag.len()` bytes of the authenticator, compared in
    /// constant time. An empty or longer than 16 bytes `tag` never matches.
    pub fn verify_truncated(&self, data_id: u16, payload: &[u8], fv: u64, tag: &[u8]) -> Choice {
        let full = self.authenticator(data_id, payload, fv);
        match full.get(..tag.len()) {
            Some(expected) if !tag.is_empty() => expected.ct_eq(tag),
            _ => Choice::from(0),
        }
    }
}

impl Zeroize for FrameKey {
    fn zeroize(&mut self) {
        // Dropping the old cipher in place wipes its round keys.
        self.cipher = Aes128::new(&[0u8; 16].into());
    }
}

// The only field is an `Aes128`, which zeroizes itself on drop (checked below).
impl ZeroizeOnDrop for FrameKey {}

const _: () = {
    const fn zeroizes_on_drop<T: ZeroizeOnDrop>() {}
    zeroizes_on_drop::<Aes128>();
};

impl core::fmt::Debug for FrameKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FrameKey").finish_non_exhaustive()
    }
}
