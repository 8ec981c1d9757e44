//! Every type of the library that can hold a key, a token or a passphrase prints with `{:?}`
//! without its secret: neither the bytes (as Debug lists them) nor their hex appear.

use std::sync::Arc;

use fleetkey::access::new_token;
use fleetkey::fleet::material::{Authoriser, DeviceKeys, KeysHex};
use fleetkey::fleet::{
    Access, Claim, Fleet, InitOptions, MasterBackup, NewDevice, SecretString, SystemClock,
};
use fleetkey::model::{DeviceSerial, Scheme};
use fleetkey::module::SigningSeed;
use fleetkey::module::soft::WorkFactor;
use fleetkey_core::{Key128, RollSeed};

/// Distinct bytes that no Debug output holds by chance.
fn secret<const N: usize>(base: u8) -> [u8; N] {
    std::array::from_fn(|i| base ^ (i as u8))
}

/// Fails when `debug` shows `bytes` as Debug lists them (decimal), or as hex in either case; any
/// four bytes in a row count.
#[track_caller]
fn assert_hides(debug: &str, bytes: &[u8]) {
    let lower = hex::encode(bytes);
    for window in bytes.windows(4) {
        let decimal = format!("{window:?}");
        let decimal = &decimal[1..decimal.len() - 1];
        assert!(!debug.contains(decimal), "{debug:?} shows {decimal}");
    }
    for i in 0..bytes.len().saturating_sub(3) {
        let piece = &lower[2 * i..2 * i + 8];
        assert!(!debug.contains(piece), "{debug:?} shows {piece}");
        assert!(
            !debug.contains(&piece.to_uppercase()),
            "{debug:?} shows {piece}"
        );
    }
}

#[track_caller]
fn assert_hides_text(debug: &str, text: &str) {
    assert!(!debug.contains(text), "{debug:?} shows {text:?}");
    assert_hides(debug, text.as_bytes());
}

#[test]
fn device_keys_and_their_hex_print_no_key() {
    let auth = secret::<16>(0xA0);
    let key_update = secret::<16>(0xB0);
    let roll = secret::<32>(0xC0);
    let keys = DeviceKeys {
        auth: Key128::from_bytes(auth),
        key_update: Key128::from_bytes(key_update),
        roll_seed: RollSeed::from_bytes(roll),
    };
    let hexed = KeysHex::from(&keys);
    let authoriser = Authoriser::Current(&keys.key_update);
    for debug in [
        format!("{keys:?}"),
        format!("{keys:#?}"),
        format!("{hexed:?}"),
        format!("{authoriser:?}"),
        format!("{:?}", Authoriser::Transport(&keys.auth)),
    ] {
        assert_hides(&debug, &auth);
        assert_hides(&debug, &key_update);
        assert_hides(&debug, &roll);
    }
}

#[test]
fn a_replayed_response_prints_its_status_not_its_body() {
    let body = br#"{"keys":{"auth":"a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"}}"#.to_vec();
    let claim = Claim::Replay(200, zeroize::Zeroizing::new(body.clone()));
    let debug = format!("{claim:?}");
    assert!(debug.contains("200"), "{debug}");
    assert_hides(&debug, &body);
    assert_hides_text(&debug, "a0a1a2a3a4a5a6a7");
}

#[test]
fn init_options_access_token_and_root_seed_print_no_secret() {
    let transport = secret::<16>(0x50);
    let options = InitOptions {
        fleet_id: "tractors".into(),
        scheme: Scheme::Derived,
        she_transport_key: Some(Key128::from_bytes(transport)),
        work_factor: WorkFactor::Log2(4),
        backup: MasterBackup::NoBackup,
    };
    assert_hides(&format!("{options:?}"), &transport);

    let passphrase = "correct horse battery staple";
    let access = Access {
        passphrase: SecretString::from(passphrase.to_owned()),
        actor: "test".into(),
        clock: Arc::new(SystemClock),
    };
    assert_hides_text(&format!("{access:?}"), passphrase);

    let (_id, token) = new_token().unwrap();
    let debug = format!("{token:?}");
    assert_hides_text(&debug, token.expose());
    assert_hides_text(&debug, &token.expose()["fk_".len()..]);

    let seed = secret::<32>(0x70);
    let signing = SigningSeed::from_bytes(zeroize::Zeroizing::new(seed));
    assert_hides(&format!("{signing:?}"), &seed);
}

/// A provisioning as a station receives it: the device is shown, its keys are not.
#[test]
fn a_provisioning_prints_the_device_not_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let options = InitOptions {
        fleet_id: "tractors".into(),
        scheme: Scheme::Derived,
        she_transport_key: Some(Key128::from_bytes(secret::<16>(0x50))),
        work_factor: WorkFactor::Log2(4),
        backup: MasterBackup::NoBackup,
    };
    let access = Access {
        passphrase: SecretString::from("correct horse battery staple".to_owned()),
        actor: "test".into(),
        clock: Arc::new(SystemClock),
    };
    let mut fleet = Fleet::init(&dir.path().join("home"), options, access).unwrap();
    let serial = DeviceSerial::new(b"ECU-1".to_vec()).unwrap();
    fleet
        .add_device(NewDevice {
            serial: serial.clone(),
            she_uid: None,
            labels: vec![],
        })
        .unwrap();
    let p = fleet.provision(&serial).unwrap();
    let debug = format!("{p:?}");
    assert!(debug.contains("ECU-1"), "{debug}");
    for key in [&p.keys.auth, &p.keys.key_update, &p.keys.roll_seed] {
        assert_hides_text(&debug, key);
        assert_hides(&debug, &hex::decode(key).unwrap());
    }
}
