//! The simulator's types that hold keys print with `{:?}` without them.

use fleetkey_core::Key128;
use fleetkey_sim::gateway::MemberKeys;
use fleetkey_sim::network::{NetworkSpec, ecu_uid};

fn secret(base: u8) -> [u8; 16] {
    std::array::from_fn(|i| base ^ (i as u8))
}

#[track_caller]
fn assert_hides(debug: &str, bytes: &[u8]) {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    for i in 0..bytes.len() - 3 {
        let decimal = format!("{:?}", &bytes[i..i + 4]);
        let decimal = &decimal[1..decimal.len() - 1];
        assert!(!debug.contains(decimal), "{debug:?} shows {decimal}");
        let piece = &hex[2 * i..2 * i + 8];
        assert!(
            !debug.to_lowercase().contains(piece),
            "{debug:?} shows {piece}"
        );
    }
}

#[test]
fn a_network_spec_prints_no_transport_key() {
    let transport = secret(0x50);
    let spec = NetworkSpec::new("body", 3, transport);
    let debug = format!("{spec:?}");
    assert!(debug.contains("body"), "{debug}");
    assert_hides(&debug, &transport);
}

#[test]
fn member_keys_print_the_addresses_not_the_keys() {
    let (auth, key_update) = (secret(0xA0), secret(0xB0));
    let spec = NetworkSpec::new("body", 3, secret(0x50));
    let member = MemberKeys {
        serial: "ECU-1".into(),
        uid: ecu_uid(1),
        index: 1,
        pdu: 0x101,
        profile: spec.profile_of(1),
        auth: Key128::from_bytes(auth),
        key_update: Key128::from_bytes(key_update),
    };
    let debug = format!("{member:?}");
    assert!(debug.contains("ECU-1"), "{debug}");
    assert_hides(&debug, &auth);
    assert_hides(&debug, &key_update);
}
