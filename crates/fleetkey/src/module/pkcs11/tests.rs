//! Unit tests of the PKCS#11 module that need no token.

use super::root::ec_point;

#[test]
fn ec_point_accepts_der_and_raw() {
    let raw = [7u8; 32];
    let mut der = vec![0x04, 0x20];
    der.extend_from_slice(&raw);
    assert_eq!(ec_point(&der), Some(raw));
    assert_eq!(ec_point(&raw), Some(raw));
    assert_eq!(ec_point(&der[..33]), None);
    assert_eq!(ec_point(&[0x04, 0x21]), None);
}

#[test]
fn pin_debug_shows_nothing() {
    let pin = super::Pin::new("123456");
    assert_eq!(format!("{pin:?}"), "Pin(<redacted>)");
}
