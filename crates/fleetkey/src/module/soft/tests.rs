use proptest::prelude::*;

use super::keyfile::{self, ContentsRef};
use super::*;

fn decode_ok(plaintext: &[u8]) -> keyfile::Contents {
    match keyfile::decode(plaintext) {
        Ok(contents) => contents,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn encodes_the_documented_layout() {
    let (m1, m2, kek, seed) = ([0x11; 32], [0x22; 32], [0x33; 32], [0x44; 32]);
    let text = keyfile::encode(&ContentsRef {
        masters: vec![(1, &m1), (u32::MAX, &m2)],
        kek: Some(&kek),
        signing_seed: Some(&seed),
        next_signing_seed: None,
    });
    let expected = format!(
        r#"{{"version":1,"masters":{{"1":"{}","4294967295":"{}"}},"kek":"{}","signing_seed":"{}"}}"#,
        "11".repeat(32),
        "22".repeat(32),
        "33".repeat(32),
        "44".repeat(32)
    );
    assert_eq!(std::str::from_utf8(&text).unwrap(), expected);
    let empty = keyfile::encode(&ContentsRef {
        masters: vec![],
        kek: None,
        signing_seed: None,
        next_signing_seed: None,
    });
    assert_eq!(&empty[..], br#"{"version":1,"masters":{}}"#);
    assert!(decode_ok(&empty).masters.is_empty());
}

#[test]
fn reads_the_work_factor_from_the_header() {
    assert_eq!(
        keyfile::work_factor(b"age-encryption.org/v1\n-> scrypt c2FsdHNhbHRzYWx0c2FsdA 18\nbody"),
        Some(18)
    );
    assert_eq!(
        keyfile::work_factor(b"age-encryption.org/v1\n-> X25519 abc\nbody"),
        None
    );
    assert_eq!(
        keyfile::work_factor(b"age-encryption.org/v1\n-> scrypt salt 18 extra\n"),
        None
    );
    assert_eq!(
        keyfile::work_factor(b"age-encryption.org/v2\n-> scrypt salt 18\n"),
        None
    );
    assert_eq!(keyfile::work_factor(b""), None);
}

#[test]
fn seal_then_unseal_round_trips() {
    let mut recipient = age::scrypt::Recipient::new(SecretString::from("pass"));
    recipient.set_work_factor(4);
    let sealed = keyfile::seal(&recipient, b"{\"version\":1}").unwrap();
    assert_eq!(keyfile::work_factor(&sealed), Some(4));
    assert_eq!(
        &keyfile::unseal(&sealed, &SecretString::from("pass")).unwrap()[..],
        b"{\"version\":1}"
    );
    assert!(matches!(
        keyfile::unseal(&sealed, &SecretString::from("pas")),
        Err(ModuleError::Authentication)
    ));
}

proptest! {
    #[test]
    fn encode_decode_round_trip(
        masters in proptest::collection::btree_map(any::<u32>(), any::<[u8; 32]>(), 0..20),
        kek in proptest::option::of(any::<[u8; 32]>()),
        seed in proptest::option::of(any::<[u8; 32]>()),
        next in proptest::option::of(any::<[u8; 32]>()),
    ) {
        let text = keyfile::encode(&ContentsRef {
            masters: masters.iter().map(|(g, m)| (*g, m)).collect(),
            kek: kek.as_ref(),
            signing_seed: seed.as_ref(),
            next_signing_seed: next.as_ref(),
        });
        let parsed: serde_json::Value = serde_json::from_slice(&text).unwrap();
        prop_assert_eq!(parsed["version"].as_u64(), Some(1));
        let back = decode_ok(&text);
        let back_masters: BTreeMap<u32, [u8; 32]> =
            back.masters.iter().map(|(g, m)| (*g, *m.expose_secret())).collect();
        prop_assert_eq!(back_masters, masters);
        prop_assert_eq!(back.kek.map(|k| *k), kek);
        prop_assert_eq!(back.signing_seed.map(|k| *k), seed);
        prop_assert_eq!(back.next_signing_seed.map(|k| *k), next);
    }

    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = keyfile::decode(&bytes);
    }
}
