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
    assert_eq!(
        SessionKey::from_bytes([1; 16]),
        SessionKey::from_bytes([1; 16])
    );
    assert_ne!(
        SessionKey::from_bytes([1; 16]),
        SessionKey::from_bytes([2; 16])
    );
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

/// Every type that holds key material or key-equivalent state wipes itself when dropped.
#[test]
fn key_holders_zeroize_on_drop() {
    fn wipes_on_drop<T: zeroize::ZeroizeOnDrop>() {}
    wipes_on_drop::<MasterKey>();
    wipes_on_drop::<Key128>();
    wipes_on_drop::<RollSeed>();
    wipes_on_drop::<SessionKey>();
    wipes_on_drop::<crate::derive::DeviceKey>();
    wipes_on_drop::<crate::prf::PrkState>();
    wipes_on_drop::<crate::secoc::FrameKey>();
    wipes_on_drop::<crate::she::SoftShe>();
}
