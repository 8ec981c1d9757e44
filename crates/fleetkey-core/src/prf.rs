//! HMAC-SHA256 with precomputed pads, for HKDF-Expand outputs of one block (RFC 5869 section 2.3).
//!
//! HKDF-Expand with `L <= 32` is a single HMAC: `T(1) = HMAC-Hash(PRK, info || 0x01)`. When
//! `info || 0x01` fits in one SHA-256 block with its padding (at most 55 bytes), and the key's inner
//! and outer pad states are computed once, that HMAC is exactly two SHA-256 compressions. This
//! module does that with RustCrypto's raw [`sha2::block_api::compress256`]; [`expand_general`] is
//! the ordinary `hkdf` crate path for any other length, and the tests hold the two equal.

use sha2::block_api::compress256;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// SHA-256 block size in bytes.
const BLOCK: usize = 64;
/// The largest `info || 0x01` that fits in one padded block: 64 - 1 (0x80) - 8 (length).
pub const MAX_SINGLE_BLOCK_INPUT: usize = 55;
/// The largest `info` for [`PrkState::expand_one_block`].
pub const MAX_INFO: usize = MAX_SINGLE_BLOCK_INPUT - 1;

const IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// Why a one-block expansion was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExpandError {
    /// `info` is longer than [`MAX_INFO`] bytes.
    InfoTooLong,
    /// The output is empty or longer than 32 bytes.
    OutputLength,
}

/// A 32-byte PRK with its HMAC inner and outer pad states computed once.
///
/// The states are key-equivalent secrets: they are zeroized on drop and never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PrkState {
    inner: [u32; 8],
    outer: [u32; 8],
}

impl core::fmt::Debug for PrkState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PrkState").finish_non_exhaustive()
    }
}

impl PrkState {
    /// Precomputes the HMAC-SHA256 pad states of a 32-byte PRK (two compressions, done once).
    pub fn new(prk: &[u8; 32]) -> Self {
        let mut ipad = [0x36u8; BLOCK];
        let mut opad = [0x5cu8; BLOCK];
        for ((i, o), k) in ipad.iter_mut().zip(opad.iter_mut()).zip(prk.iter()) {
            *i ^= k;
            *o ^= k;
        }
        let mut inner = IV;
        let mut outer = IV;
        compress256(&mut inner, core::slice::from_ref(&ipad));
        compress256(&mut outer, core::slice::from_ref(&opad));
        ipad.zeroize();
        opad.zeroize();
        Self { inner, outer }
    }

    /// HKDF-Expand-SHA256 for `out.len() <= 32` and `info.len() <= 54`: `T(1)` truncated to
    /// `out.len()`, computed with exactly two SHA-256 compressions.
    pub fn expand_one_block(&self, info: &[u8], out: &mut [u8]) -> Result<(), ExpandError> {
        if out.is_empty() || out.len() > 32 {
            return Err(ExpandError::OutputLength);
        }
        if info.len() > MAX_INFO {
            return Err(ExpandError::InfoTooLong);
        }
        // Inner hash: one block holding info || 0x01 || 0x80 || zeros || bit length (the key
        // block counts as 64 bytes already absorbed).
        let mut block = [0u8; BLOCK];
        let (head, length) = block.split_at_mut(BLOCK - 8);
        let (message, padding) = head.split_at_mut(info.len());
        message.copy_from_slice(info);
        let mut rest = padding.iter_mut();
        if let Some(b) = rest.next() {
            *b = 0x01;
        }
        if let Some(b) = rest.next() {
            *b = 0x80;
        }
        // info.len() <= 54, so this is exact and cannot overflow.
        let bits = (BLOCK as u64 + info.len() as u64 + 1) * 8;
        length.copy_from_slice(&bits.to_be_bytes());
        let mut state = self.inner;
        compress256(&mut state, core::slice::from_ref(&block));

        // Outer hash: one block holding the 32-byte inner hash and padding.
        let mut outer_block = [0u8; BLOCK];
        for (chunk, word) in outer_block.chunks_exact_mut(4).zip(state.iter()) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        let (_, tail) = outer_block.split_at_mut(32);
        let (marker, tail) = tail.split_at_mut(1);
        marker.copy_from_slice(&[0x80]);
        let (_, length) = tail.split_at_mut(tail.len() - 8);
        length.copy_from_slice(&((BLOCK as u64 + 32) * 8).to_be_bytes());
        let mut result = self.outer;
        compress256(&mut result, core::slice::from_ref(&outer_block));
        for (chunk, word) in out.chunks_mut(4).zip(result.iter()) {
            let bytes = word.to_be_bytes();
            chunk.copy_from_slice(bytes.get(..chunk.len()).unwrap_or(&bytes));
        }
        // The first block holds only public `info` and padding; what follows from the key is
        // wiped. Whole-word wipes keep the cost at a few stores.
        state.zeroize();
        result.zeroize();
        if let Some(inner_hash) = outer_block.get_mut(..32) {
            inner_hash.zeroize();
        }
        Ok(())
    }
}

/// HKDF-Expand-SHA256 of any `info` and any `L <= 255 * 32`, through the `hkdf` crate.
///
/// Slower than [`PrkState::expand_one_block`]; kept for lengths and labels outside the one-block
/// contracts and as the reference the fast path is tested against.
pub fn expand_general(prk: &[u8], info: &[u8], out: &mut [u8]) -> Result<(), ExpandError> {
    let hk = hkdf::Hkdf::<sha2::Sha256>::from_prk(prk).map_err(|_| ExpandError::OutputLength)?;
    hk.expand(info, out).map_err(|_| ExpandError::OutputLength)
}

#[cfg(test)]
mod tests;
