use super::*;
use std::format;

#[test]
fn debug_never_prints_key_bytes() {
    let key = MasterKey::from_bytes([0xA5; 32]);
    let shown = format!("{key:?}");
    assert_eq!(shown, "MasterKey { .. }");
    assert!(!shown.to_lowercase().contains("a5"));
    let key = Key128::from_bytes([0x42; 16]);
    assert_eq!(format!("{key:?}"), "Key128 { .. }");
}

#[test]
fn equality_is_by_value() {
    assert_eq!(SessionKey::from_bytes([1; 16]), SessionKey::from_bytes([1; 16]));
    assert_ne!(SessionKey::from_bytes([1; 16]), SessionKey::from_bytes([2; 16]));
}

#[test]
fn from_slice_checks_length() {
    assert!(RollSeed::from_slice(&[0; 31]).is_none());
    assert!(RollSeed::from_slice(&[0; 33]).is_none());
    assert!(RollSeed::from_slice(&[0; 32]).is_some());
}

#[test]
fn zeroize_clears_the_bytes() {
    let mut key = Key128::from_bytes([0x77; 16]);
    key.zeroize();
    assert_eq!(key.expose_secret(), &[0u8; 16]);
}
