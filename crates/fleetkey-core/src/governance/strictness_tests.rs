//! Strict Ed25519: the encodings and signatures a lax verifier accepts and this core refuses
//! (non-canonical `S`, small-order or non-canonical `A` and `R`, the cofactored equation). The
//! forged signatures are built here with curve25519-dalek's group arithmetic from a known key.

use std::vec::Vec;

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT as B;
use curve25519_dalek::edwards::CompressedEdwardsY;
use curve25519_dalek::scalar::Scalar;
use sha2::{Digest, Sha512};

use super::{GovernanceError, RootKey, verify_ed25519};

fn h(hex: &str) -> [u8; 32] {
    hex::decode(hex).unwrap().try_into().unwrap()
}

/// The 8 points of small order, canonically encoded: identity, order 2, two of order 4, four of
/// order 8.
fn small_order() -> Vec<[u8; 32]> {
    [
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    ]
    .iter()
    .map(|x| h(x))
    .collect()
}

/// Non-canonical encodings of small-order points: y = 1 and y = -1 with the sign bit set (x is
/// 0), y = p (0) and y = p + 1 (1) with either sign.
fn non_canonical_small_order() -> Vec<[u8; 32]> {
    [
        "0100000000000000000000000000000000000000000000000000000000000080",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    ]
    .iter()
    .map(|x| h(x))
    .collect()
}

/// y = p + 3: a non-canonical encoding of a point of large order (y = 3 is on the curve).
const NON_CANONICAL_LARGE: &str =
    "f0ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f";

/// A known key: its secret scalar and public encoding.
fn key() -> (Scalar, [u8; 32]) {
    let digest = Sha512::digest([0x42; 32]);
    let mut a: [u8; 32] = digest[..32].try_into().unwrap();
    a[0] &= 248;
    a[31] &= 127;
    a[31] |= 64;
    let a = Scalar::from_bytes_mod_order(a);
    (a, (B * a).compress().to_bytes())
}

fn challenge(r: &[u8; 32], a: &[u8; 32], msg: &[u8]) -> Scalar {
    let digest: [u8; 64] = Sha512::new()
        .chain_update(r)
        .chain_update(a)
        .chain_update(msg)
        .finalize()
        .into();
    Scalar::from_bytes_mod_order_wide(&digest)
}

fn sig(r: &[u8; 32], s: &[u8; 32]) -> [u8; 64] {
    let mut out = [0; 64];
    out[..32].copy_from_slice(r);
    out[32..].copy_from_slice(s);
    out
}

const MSG: &[u8] = b"fleetkey strictness";

#[test]
fn the_construction_is_sound() {
    // An honest signature built the same way verifies: the refusals below are the encodings'.
    let (a, pk) = key();
    let r = Scalar::from_bytes_mod_order([7; 32]);
    let big_r = (B * r).compress().to_bytes();
    let s = r + challenge(&big_r, &pk, MSG) * a;
    assert_eq!(verify_ed25519(&pk, MSG, &sig(&big_r, s.as_bytes())), Ok(()));
}

#[test]
fn non_canonical_s_is_refused() {
    let (a, pk) = key();
    let r = Scalar::from_bytes_mod_order([7; 32]);
    let big_r = (B * r).compress().to_bytes();
    let s = r + challenge(&big_r, &pk, MSG) * a;
    // S + L, as a 256-bit little-endian sum (S < L < 2^253: no overflow).
    let l = h("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010");
    let mut s_plus_l = [0u8; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let t = u16::from(s.as_bytes()[i]) + u16::from(l[i]) + carry;
        s_plus_l[i] = t as u8;
        carry = t >> 8;
    }
    assert_eq!(
        verify_ed25519(&pk, MSG, &sig(&big_r, &s_plus_l)),
        Err(GovernanceError::Signature)
    );
    // And S = L (reduces to 0), S = 2^256 - 1.
    assert!(verify_ed25519(&pk, MSG, &sig(&big_r, &l)).is_err());
    assert!(verify_ed25519(&pk, MSG, &sig(&big_r, &[0xff; 32])).is_err());
}

#[test]
fn small_order_and_non_canonical_keys_are_refused() {
    let mut keys = small_order();
    keys.extend(non_canonical_small_order());
    keys.push(h(NON_CANONICAL_LARGE));
    for pk in keys {
        assert_eq!(
            RootKey::new(pk, b"kid").map(|_| ()),
            Err(GovernanceError::Malformed(super::Field::PublicKey)),
            "key {}",
            hex::encode(pk)
        );
    }
    // The classic forgery under the identity key: [1]B - [k]0 = B for every message.
    let identity = small_order()[0];
    let basepoint = B.compress().to_bytes();
    let one = Scalar::ONE.to_bytes();
    for msg in [&b""[..], MSG, b"any message at all"] {
        assert_eq!(
            verify_ed25519(&identity, msg, &sig(&basepoint, &one)),
            Err(GovernanceError::Signature)
        );
    }
    // The same key, canonically encoded, is accepted: y = 3 (canonical) is a valid point.
    let mut y3 = [0u8; 32];
    y3[0] = 3;
    assert!(RootKey::new(y3, b"kid").is_ok());
}

#[test]
fn small_order_r_is_refused() {
    // S = k * a makes [S]B - [k]A the identity: a lax verifier accepts R = identity under the
    // cofactorless equation, and any small-order R under the cofactored one.
    let (a, pk) = key();
    for big_r in small_order().into_iter().chain(non_canonical_small_order()) {
        let s = challenge(&big_r, &pk, MSG) * a;
        assert_eq!(
            verify_ed25519(&pk, MSG, &sig(&big_r, s.as_bytes())),
            Err(GovernanceError::Signature),
            "R {}",
            hex::encode(big_r)
        );
    }
}

#[test]
fn non_canonical_r_and_the_cofactored_equation_are_refused() {
    let (a, pk) = key();
    let r = Scalar::from_bytes_mod_order([9; 32]);
    // R = rB + T with T of order 8 (mixed order): [S]B - [k]A - R = -T, small order, so a
    // cofactored verifier accepts; the cofactorless one (the manager's verify_strict) refuses.
    let t = CompressedEdwardsY(small_order()[4]).decompress().unwrap();
    let big_r = (B * r + t).compress().to_bytes();
    let s = r + challenge(&big_r, &pk, MSG) * a;
    assert_eq!(
        verify_ed25519(&pk, MSG, &sig(&big_r, s.as_bytes())),
        Err(GovernanceError::Signature)
    );
    // R = the identity as y = p + 1, S = k * a: the equation holds for the point, not the bytes.
    let big_r = non_canonical_small_order()[4];
    let s = challenge(&big_r, &pk, MSG) * a;
    assert!(verify_ed25519(&pk, MSG, &sig(&big_r, s.as_bytes())).is_err());
}
