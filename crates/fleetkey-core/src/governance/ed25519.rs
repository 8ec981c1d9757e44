//! Strict Ed25519 verification (RFC 8032) for governance records and proofs of possession.
//!
//! The rules: `S` must be canonical (below the group order `L`); the public
//! key `A` and the signature's `R` must be canonical encodings (y below p = 2^255 - 19) of points
//! that are not of small order; the check is the cofactorless equation `[S]B - [k]A == R`,
//! compared on `R`'s encoding. These are `ed25519-dalek`'s `verify_strict` semantics plus the
//! canonical-`A` rule (a key whose y is encoded as y + p is refused like a small-order key).
//! `strictness_tests.rs` forges each case.

use ed25519_dalek::{Signature, VerifyingKey};

/// True when `bytes` (sign bit aside) encode a field element below p = 2^255 - 19.
fn canonical_y(bytes: &[u8; 32]) -> bool {
    // y >= p only when bytes 1..31 are all 0xff, the last (sign bit aside) is 0x7f and the first
    // is at least 0xed.
    let [first, middle @ .., last] = bytes;
    !(*last & 0x7f == 0x7f && middle.iter().all(|&b| b == 0xff) && *first >= 0xed)
}

/// A public key accepted by [`PublicKey::from_bytes`]: canonical, not of small order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PublicKey(VerifyingKey);

impl PublicKey {
    /// The key, if `bytes` canonically encode a point that is not of small order.
    pub(crate) fn from_bytes(bytes: &[u8; 32]) -> Option<Self> {
        let key = VerifyingKey::from_bytes(bytes).ok()?;
        (canonical_y(bytes) && !key.is_weak()).then_some(Self(key))
    }

    pub(crate) fn to_bytes(self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// `verify_strict`: canonical `S`, `R` not of small order, `R` compared as bytes with the
    /// canonical encoding of `[S]B - [k]A`.
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        self.0
            .verify_strict(message, &Signature::from_bytes(signature))
            .is_ok()
    }
}
