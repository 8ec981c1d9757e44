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
        // One contiguous update is measurably faster than three small ones (fewer trips through
        // the block buffer); longer payloads than any profile allows take the general path.
        let mut input = [0u8; MAX_MAC_INPUT];
        match mac_input(&mut input, data_id, payload, fv) {
            Some(message) => mac.update(message),
            None => {
                mac.update(&data_id.to_be_bytes());
                mac.update(payload);
                mac.update(&fv.to_be_bytes());
            }
        }
        mac.finalize().into_bytes().into()
    }

    /// Whether `tag` equals the leftmost `tag.len()` bytes of the authenticator, compared in
    /// constant time. An empty or longer than 16 bytes `tag` never matches.
    pub fn verify_truncated(&self, data_id: u16, payload: &[u8], fv: u64, tag: &[u8]) -> Choice {
        if tag.is_empty() {
            return Choice::from(0);
        }
        let mut expected = self.authenticator(data_id, payload, fv);
        let mut received = [0u8; 16];
        let (Some(head), Some(tail)) =
            (received.get_mut(..tag.len()), expected.get_mut(tag.len()..))
        else {
            return Choice::from(0);
        };
        head.copy_from_slice(tag);
        tail.fill(0);
        // Two 64-bit constant-time comparisons instead of a byte loop: the tag length is public,
        // the bytes beyond it are zero on both sides.
        let (e, r) = (u128::from_ne_bytes(expected), u128::from_ne_bytes(received));
        // Truncating casts on purpose: the high and the low 64 bits.
        ((e >> 64) as u64).ct_eq(&((r >> 64) as u64)) & (e as u64).ct_eq(&(r as u64))
    }
}

/// Writes `DataId || payload || FV` into `buf`; `None` when the payload is longer than 64 bytes.
fn mac_input<'a>(
    buf: &'a mut [u8; MAX_MAC_INPUT],
    data_id: u16,
    payload: &[u8],
    fv: u64,
) -> Option<&'a [u8]> {
    let len = 2 + payload.len() + 8;
    let message = buf.get_mut(..len)?;
    let (id, rest) = message.split_at_mut_checked(2)?;
    let (p, f) = rest.split_at_mut_checked(payload.len())?;
    id.copy_from_slice(&data_id.to_be_bytes());
    p.copy_from_slice(payload);
    f.copy_from_slice(&fv.to_be_bytes());
    Some(message)
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
