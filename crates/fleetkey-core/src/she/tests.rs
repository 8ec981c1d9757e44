use super::crypto::{cbc_encrypt_2, ecb_encrypt};
use super::messages::expected_m3;
use super::*;
use crate::keys::Key128;
use proptest::prelude::*;
use std::format;
use std::vec::Vec;

const SHE_VECTORS: &str = include_str!("../../../../tests/vectors/she-key-update.json");
const CMAC_VECTORS: &str = include_str!("../../../../tests/vectors/rfc4493-aes-cmac.json");

fn hex16(v: &serde_json::Value) -> [u8; 16] {
    hex::decode(v.as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

fn key(byte: u8) -> Key128 {
    Key128::from_bytes([byte; 16])
}

fn counter(n: u32) -> Counter {
    Counter::new(n).unwrap()
}

fn flags(bits: u8) -> KeyFlags {
    KeyFlags::new(bits).unwrap()
}

const UID: Uid = Uid::from_bytes([0x5a; 15]);

fn request(key_id: SlotId, auth_id: SlotId, c: u32, f: u8) -> UpdateRequest {
    UpdateRequest::new(UID, key_id, auth_id, counter(c), flags(f)).unwrap()
}

/// A SHE with the transport key 0x01.. that has loaded MASTER_ECU_KEY = 0x02.. (counter 1).
fn provisioned() -> SoftShe {
    let mut she = SoftShe::new(UID, Some(key(1)));
    let m = build(
        &key(1),
        &key(2),
        &request(SlotId::MasterEcuKey, SlotId::MasterEcuKey, 1, 0),
    );
    she.load_key(&m.m1, &m.m2, &m.m3).unwrap();
    she
}

/// Loads `new` into `slot` under MASTER_ECU_KEY 0x02.. with `c` and `f`.
fn load(
    she: &mut SoftShe,
    slot: SlotId,
    new: &Key128,
    c: u32,
    f: u8,
) -> Result<(M4, M5), LoadError> {
    let m = build(&key(2), new, &request(slot, SlotId::MasterEcuKey, c, f));
    she.load_key(&m.m1, &m.m2, &m.m3)
}

#[test]
fn she_spec_vector() {
    let json: serde_json::Value = serde_json::from_str(SHE_VECTORS).unwrap();
    assert_eq!(
        hex16(&json["kdf_constants"]["KEY_UPDATE_ENC_C"]),
        KEY_UPDATE_ENC_C
    );
    assert_eq!(
        hex16(&json["kdf_constants"]["KEY_UPDATE_MAC_C"]),
        KEY_UPDATE_MAC_C
    );
    let cases = json["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let uid = Uid::from_slice(&hex::decode(case["uid"].as_str().unwrap()).unwrap()).unwrap();
        let key_id = SlotId::new(case["key_id"].as_u64().unwrap() as u8).unwrap();
        let auth_id = SlotId::new(case["auth_id"].as_u64().unwrap() as u8).unwrap();
        let c = Counter::new(case["counter"].as_u64().unwrap() as u32).unwrap();
        let f = KeyFlags::new(case["flags"].as_u64().unwrap() as u8).unwrap();
        let auth_key = Key128::from_bytes(hex16(&case["auth_key"]));
        let new_key = Key128::from_bytes(hex16(&case["new_key"]));

        assert_eq!(
            kdf(&auth_key, &KEY_UPDATE_ENC_C).expose_secret(),
            &hex16(&case["k1"])
        );
        assert_eq!(
            kdf(&auth_key, &KEY_UPDATE_MAC_C).expose_secret(),
            &hex16(&case["k2"])
        );

        let request = UpdateRequest::new(uid, key_id, auth_id, c, f).unwrap();
        let m = build(&auth_key, &new_key, &request);
        let field = |name: &str| hex::decode(case[name].as_str().unwrap()).unwrap();
        assert_eq!(m.m1.to_bytes().as_slice(), field("m1"));
        assert_eq!(m.m2.to_bytes().as_slice(), field("m2"));
        assert_eq!(m.m3.to_bytes().as_slice(), field("m3"));
        assert_eq!(m.m4.to_bytes().as_slice(), field("m4"));
        assert_eq!(m.m5.to_bytes().as_slice(), field("m5"));

        // Parsed from the vector's bytes, loaded into a software SHE holding the auth key.
        let m1 = M1::from_bytes(&field("m1")).unwrap();
        let m2 = M2::from_bytes(&field("m2")).unwrap();
        let m3 = M3::from_bytes(&field("m3")).unwrap();
        assert_eq!(auth_id, SlotId::MasterEcuKey);
        let mut she = SoftShe::new(uid, Some(auth_key.clone()));
        let (m4, m5) = she.load_key(&m1, &m2, &m3).unwrap();
        assert_eq!(m4.to_bytes().as_slice(), field("m4"));
        assert_eq!(m5.to_bytes().as_slice(), field("m5"));
        assert_eq!(she.raw_key_software_only(key_id), Some(&new_key));
        assert_eq!(she.counter(key_id), Some(c));
        assert_eq!(she.flags(key_id), f);

        let proof = verify(&new_key, &m4, &m5).unwrap();
        assert_eq!(
            proof,
            Confirmation {
                uid,
                key_id,
                auth_id,
                counter: c
            }
        );
    }
}

#[test]
fn rfc4493_cmac_vectors() {
    let json: serde_json::Value = serde_json::from_str(CMAC_VECTORS).unwrap();
    let cases = json["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for case in cases {
        let k = Key128::from_bytes(hex16(&case["key"]));
        let msg = hex::decode(case["message"].as_str().unwrap()).unwrap();
        assert_eq!(cmac(&k, &msg), hex16(&case["mac"]));
        // The multi-part path used for M1 || M2 gives the same MAC at every split.
        for split in 0..=msg.len() {
            let (a, b) = msg.split_at(split);
            assert_eq!(super::crypto::cmac_parts(&k, &[a, b]), hex16(&case["mac"]));
        }
    }
}

#[test]
fn value_ranges() {
    assert_eq!(Counter::new((1 << 28) - 1).unwrap(), Counter::MAX);
    assert_eq!(Counter::new(1 << 28), Err(SheError::Counter(1 << 28)));
    assert_eq!(Counter::new(u32::MAX), Err(SheError::Counter(u32::MAX)));
    assert_eq!(KeyFlags::new(0x1f).unwrap().bits(), 0x1f);
    assert_eq!(KeyFlags::new(0x20), Err(SheError::Flags(0x20)));
    assert_eq!(KeyFlags::new(0xff), Err(SheError::Flags(0xff)));
    assert_eq!(SlotId::new(0), Err(SheError::SlotId(0)));
    assert_eq!(SlotId::new(15), Err(SheError::SlotId(15)));
    for (i, slot) in SlotId::ALL.iter().enumerate() {
        assert_eq!(usize::from(slot.id()), i + 1);
        assert_eq!(SlotId::new(slot.id()), Ok(*slot));
    }
    assert!(Uid::WILDCARD.is_wildcard());
    assert!(!UID.is_wildcard());
    assert_eq!(Uid::from_slice(&[0; 14]), None);
    assert_eq!(Uid::from_slice(&[0; 16]), None);
}

#[test]
fn flag_bit_positions() {
    // From the msb of the five bits: WRITE_PROTECTION, BOOT_PROTECTION, DEBUGGER_PROTECTION,
    // KEY_USAGE, WILDCARD.
    assert_eq!(KeyFlags::WRITE_PROTECTION.bits(), 0b10000);
    assert_eq!(KeyFlags::BOOT_PROTECTION.bits(), 0b01000);
    assert_eq!(KeyFlags::DEBUGGER_PROTECTION.bits(), 0b00100);
    assert_eq!(KeyFlags::KEY_USAGE.bits(), 0b00010);
    assert_eq!(KeyFlags::WILDCARD.bits(), 0b00001);
    assert!(flags(0x13).contains(KeyFlags::KEY_USAGE.union(KeyFlags::WILDCARD)));
}

#[test]
fn m2_plaintext_layout() {
    // Decrypting M2 with K1 shows counter (28) | flags (5) | 95 zeros || key.
    let auth = key(9);
    let m = build(
        &auth,
        &key(7),
        &request(SlotId::Key3, SlotId::MasterEcuKey, 0x0abc_def1, 0x15),
    );
    let k1 = kdf(&auth, &KEY_UPDATE_ENC_C);
    let p = super::messages::open_m2(&k1, &m.m2);
    assert_eq!(p.counter, counter(0x0abc_def1));
    assert_eq!(p.flags, flags(0x15));
    assert!(p.padding_ok);
    assert_eq!(p.key, key(7));
    // And the raw first block: 0xabcdef1 << 4 | 0x15 >> 1, then the WILDCARD bit on top.
    let (c1, c2) = {
        let b = m.m2.to_bytes();
        let (a, c) = b.split_at(16);
        (
            <[u8; 16]>::try_from(a).unwrap(),
            <[u8; 16]>::try_from(c).unwrap(),
        )
    };
    let mut first = [0u8; 16];
    first[..4].copy_from_slice(&(0xabcd_ef1a_u32).to_be_bytes());
    first[4] = 0x80;
    let (e1, e2) = cbc_encrypt_2(&k1, &first, key(7).expose_secret());
    assert_eq!((e1, e2), (c1, c2));
}

#[test]
fn m4_counter_block_layout() {
    let new = key(3);
    let m = build(
        &key(2),
        &new,
        &request(SlotId::Key1, SlotId::MasterEcuKey, 0x0fff_ffff, 0),
    );
    let k3 = kdf(&new, &KEY_UPDATE_ENC_C);
    let mut block = [0u8; 16];
    block[..4].copy_from_slice(&0xffff_fff8_u32.to_be_bytes());
    assert_eq!(m.m4.encrypted_counter(), ecb_encrypt(&k3, &block));
    assert_eq!(m.m4.header(), m.m1);
}

#[test]
fn message_lengths_are_checked() {
    for (kind, len) in [
        (MessageKind::M1, 16),
        (MessageKind::M2, 32),
        (MessageKind::M3, 16),
        (MessageKind::M4, 32),
        (MessageKind::M5, 16),
    ] {
        assert_eq!(kind.length(), len);
        for wrong in [0, len - 1, len + 1, 64] {
            let bytes = vec_of(wrong, 0x41);
            let expected = Err(SheError::Length {
                message: kind,
                expected: len,
                actual: wrong,
            });
            let got = match kind {
                MessageKind::M1 => M1::from_bytes(&bytes).map(|_| ()),
                MessageKind::M2 => M2::from_bytes(&bytes).map(|_| ()),
                MessageKind::M3 => M3::from_bytes(&bytes).map(|_| ()),
                MessageKind::M4 => M4::from_bytes(&bytes).map(|_| ()),
                MessageKind::M5 => M5::from_bytes(&bytes).map(|_| ()),
            };
            assert_eq!(got, expected);
        }
    }
    let e = M2::from_bytes(&[0; 31]).unwrap_err();
    assert_eq!(format!("{e}"), "m2: 31 bytes, expected 32");
}

fn vec_of(len: usize, byte: u8) -> Vec<u8> {
    std::vec![byte; len]
}

#[test]
fn m1_and_m4_ids_are_checked() {
    let mut bytes = [0x11u8; 16];
    bytes[15] = 0x01; // key id 0 (SECRET_KEY)
    assert_eq!(M1::from_bytes(&bytes), Err(SheError::KeyId(0)));
    bytes[15] = 0xf1;
    assert_eq!(M1::from_bytes(&bytes), Err(SheError::KeyId(15)));
    bytes[15] = 0x40;
    assert_eq!(M1::from_bytes(&bytes), Err(SheError::AuthId(0)));
    bytes[15] = 0x4f;
    assert_eq!(M1::from_bytes(&bytes), Err(SheError::AuthId(15)));
    bytes[15] = 0x41;
    let m1 = M1::from_bytes(&bytes).unwrap();
    assert_eq!(
        (m1.key_id(), m1.auth_id()),
        (SlotId::Key1, SlotId::MasterEcuKey)
    );
    let mut m4 = [0u8; 32];
    m4[15] = 0x0e;
    assert_eq!(M4::from_bytes(&m4), Err(SheError::KeyId(0)));
    // RAM_KEY parses; refusing it is policy.
    bytes[15] = 0xe1;
    assert_eq!(M1::from_bytes(&bytes).unwrap().key_id(), SlotId::RamKey);
}

#[test]
fn authorisation_table() {
    use SlotId::*;
    for target in SlotId::ALL {
        for auth in SlotId::ALL {
            let allowed = match target {
                MasterEcuKey => auth == MasterEcuKey,
                BootMacKey | BootMac => matches!(auth, MasterEcuKey | BootMacKey),
                RamKey => false,
                _ => auth == MasterEcuKey || auth == target,
            };
            assert_eq!(
                target.may_be_updated_by(auth),
                allowed,
                "{target} by {auth}"
            );
            let r = UpdateRequest::new(UID, target, auth, Counter::ZERO, KeyFlags::NONE);
            assert_eq!(r.is_ok(), allowed);
            if !allowed {
                assert_eq!(
                    r,
                    Err(SheError::AuthNotAllowed {
                        key_id: target,
                        auth_id: auth
                    })
                );
            }
        }
    }
}

#[test]
fn errors_name_their_field() {
    assert!(format!("{}", SheError::Counter(1 << 28)).starts_with("counter:"));
    assert!(format!("{}", SheError::Flags(0x20)).starts_with("flags:"));
    assert!(format!("{}", SheError::SlotId(0)).starts_with("slot id:"));
    assert!(format!("{}", SheError::KeyId(0)).starts_with("key id:"));
    assert!(format!("{}", SheError::AuthId(0)).starts_with("auth id:"));
    let e = SheError::AuthNotAllowed {
        key_id: SlotId::Key1,
        auth_id: SlotId::Key2,
    };
    assert!(
        format!("{e}").starts_with("auth id: 5 (KEY_2) may not authorise an update of 4 (KEY_1)")
    );
    assert!(format!("{}", VerifyError::Mac).starts_with("m5:"));
    assert!(format!("{}", LoadError::Mac).starts_with("m3:"));
    assert!(format!("{}", LoadError::Padding).starts_with("m2:"));
}

// ---- the software SHE's acceptance rules, one refusal test per rule ----

/// A snapshot of everything observable about a SHE's slots.
type SlotState = (bool, Option<Counter>, KeyFlags, Option<[u8; 16]>);

fn state(she: &SoftShe) -> Vec<SlotState> {
    SlotId::ALL
        .iter()
        .map(|s| {
            (
                she.is_empty(*s),
                she.counter(*s),
                she.flags(*s),
                she.raw_key_software_only(*s).map(|k| *k.expose_secret()),
            )
        })
        .collect()
}

fn refused(she: &mut SoftShe, m1: &M1, m2: &M2, m3: &M3, expected: LoadError) {
    let before = state(she);
    assert_eq!(she.load_key(m1, m2, m3), Err(expected));
    assert_eq!(state(she), before, "a refusal changed the SHE");
}

#[test]
fn factory_state() {
    let she = SoftShe::new(UID, Some(key(1)));
    assert!(!she.is_empty(SlotId::MasterEcuKey));
    assert_eq!(she.counter(SlotId::MasterEcuKey), None);
    for slot in &SlotId::ALL[1..] {
        assert!(she.is_empty(*slot));
        assert_eq!(she.counter(*slot), None);
        assert_eq!(she.flags(*slot), KeyFlags::NONE);
    }
    // The transport key has no counter: the first update may carry counter 0.
    let mut she = she;
    let m = build(
        &key(1),
        &key(2),
        &request(SlotId::MasterEcuKey, SlotId::MasterEcuKey, 0, 0),
    );
    she.load_key(&m.m1, &m.m2, &m.m3).unwrap();
    assert_eq!(she.counter(SlotId::MasterEcuKey), Some(Counter::ZERO));
    // Replaying the same messages is now refused: the counter must go up.
    refused(
        &mut she,
        &m.m1,
        &m.m2,
        &m.m3,
        LoadError::Mac, // the transport key is gone, so M3 no longer verifies
    );
}

#[test]
fn refuses_other_uid() {
    let mut she = provisioned();
    let other = Uid::from_bytes([0x5b; 15]);
    let r = UpdateRequest::new(
        other,
        SlotId::Key1,
        SlotId::MasterEcuKey,
        counter(5),
        KeyFlags::NONE,
    )
    .unwrap();
    let m = build(&key(2), &key(3), &r);
    refused(&mut she, &m.m1, &m.m2, &m.m3, LoadError::UidMismatch);
}

#[test]
fn wildcard_uid_follows_the_wildcard_flag() {
    let mut she = provisioned();
    // KEY_1 empty (no flags): a wildcard update is accepted, and M4 carries the SHE's own UID.
    let r = UpdateRequest::new(
        Uid::WILDCARD,
        SlotId::Key1,
        SlotId::MasterEcuKey,
        counter(1),
        flags(0x01),
    )
    .unwrap();
    let m = build(&key(2), &key(3), &r);
    let (m4, m5) = she.load_key(&m.m1, &m.m2, &m.m3).unwrap();
    assert_eq!(m4.header().uid(), UID);
    assert_ne!(m4, m.m4, "build's expected M4 carries the wildcard UID");
    assert_eq!(verify(&key(3), &m4, &m5).unwrap().uid, UID);
    // Now KEY_1 has WILDCARD set: a wildcard update is refused, a UID-specific one accepted.
    let r = UpdateRequest::new(
        Uid::WILDCARD,
        SlotId::Key1,
        SlotId::MasterEcuKey,
        counter(2),
        flags(0),
    )
    .unwrap();
    let m = build(&key(2), &key(4), &r);
    refused(
        &mut she,
        &m.m1,
        &m.m2,
        &m.m3,
        LoadError::WildcardNotPermitted(SlotId::Key1),
    );
    load(&mut she, SlotId::Key1, &key(4), 2, 0).unwrap();
}

#[test]
fn refuses_an_auth_slot_not_allowed_for_the_target() {
    let mut she = provisioned();
    load(&mut she, SlotId::Key2, &key(5), 1, 0).unwrap();
    // KEY_2 may not authorise KEY_1 even with a correct M3 under KEY_2.
    let m1 = M1::new(UID, SlotId::Key1, SlotId::Key2);
    let m = build(&key(5), &key(6), &request(SlotId::Key2, SlotId::Key2, 2, 0));
    let k2 = kdf(&key(5), &KEY_UPDATE_MAC_C);
    let m3 = expected_m3(&k2, &m1, &m.m2);
    let expected = LoadError::AuthNotAllowed {
        key_id: SlotId::Key1,
        auth_id: SlotId::Key2,
    };
    refused(&mut she, &m1, &m.m2, &m3, expected);
    // MASTER_ECU_KEY only by itself; RAM_KEY never.
    let m1 = M1::new(UID, SlotId::MasterEcuKey, SlotId::Key2);
    let m3 = expected_m3(&k2, &m1, &m.m2);
    let expected = LoadError::AuthNotAllowed {
        key_id: SlotId::MasterEcuKey,
        auth_id: SlotId::Key2,
    };
    refused(&mut she, &m1, &m.m2, &m3, expected);
    let m1 = M1::new(UID, SlotId::RamKey, SlotId::MasterEcuKey);
    let m3 = expected_m3(&kdf(&key(2), &KEY_UPDATE_MAC_C), &m1, &m.m2);
    let expected = LoadError::AuthNotAllowed {
        key_id: SlotId::RamKey,
        auth_id: SlotId::MasterEcuKey,
    };
    refused(&mut she, &m1, &m.m2, &m3, expected);
    // But KEY_2 may update itself.
    she.load_key(&m.m1, &m.m2, &m.m3).unwrap();
    assert_eq!(she.raw_key_software_only(SlotId::Key2), Some(&key(6)));
}

#[test]
fn refuses_an_empty_auth_slot() {
    let mut she = provisioned();
    // KEY_4 updating itself while empty.
    let m = build(&key(0), &key(6), &request(SlotId::Key4, SlotId::Key4, 1, 0));
    refused(
        &mut she,
        &m.m1,
        &m.m2,
        &m.m3,
        LoadError::AuthSlotEmpty(SlotId::Key4),
    );
    // A SHE without a transport key can never be updated.
    let mut bare = SoftShe::new(UID, None);
    let m = build(
        &key(0),
        &key(6),
        &request(SlotId::MasterEcuKey, SlotId::MasterEcuKey, 1, 0),
    );
    refused(
        &mut bare,
        &m.m1,
        &m.m2,
        &m.m3,
        LoadError::AuthSlotEmpty(SlotId::MasterEcuKey),
    );
}

#[test]
fn refuses_a_wrong_m3() {
    let mut she = provisioned();
    // Built under the wrong authorising key.
    let m = build(
        &key(9),
        &key(6),
        &request(SlotId::Key1, SlotId::MasterEcuKey, 1, 0),
    );
    refused(&mut she, &m.m1, &m.m2, &m.m3, LoadError::Mac);
    // M3 of another update.
    let a = build(
        &key(2),
        &key(6),
        &request(SlotId::Key1, SlotId::MasterEcuKey, 1, 0),
    );
    let b = build(
        &key(2),
        &key(7),
        &request(SlotId::Key1, SlotId::MasterEcuKey, 1, 0),
    );
    refused(&mut she, &a.m1, &a.m2, &b.m3, LoadError::Mac);
}

#[test]
fn refuses_a_write_protected_slot() {
    let mut she = provisioned();
    load(&mut she, SlotId::Key1, &key(6), 1, 0x10).unwrap();
    assert!(she.flags(SlotId::Key1).contains(KeyFlags::WRITE_PROTECTION));
    let m = build(
        &key(2),
        &key(7),
        &request(SlotId::Key1, SlotId::MasterEcuKey, 2, 0),
    );
    refused(
        &mut she,
        &m.m1,
        &m.m2,
        &m.m3,
        LoadError::WriteProtected(SlotId::Key1),
    );
}

#[test]
fn refuses_nonzero_padding() {
    let mut she = provisioned();
    let auth = key(2);
    let k1 = kdf(&auth, &KEY_UPDATE_ENC_C);
    let k2 = kdf(&auth, &KEY_UPDATE_MAC_C);
    let mut first = [0u8; 16];
    first[..4].copy_from_slice(&(1u32 << 4).to_be_bytes());
    first[15] = 1; // one padding bit set
    let (c1, c2) = cbc_encrypt_2(&k1, &first, key(6).expose_secret());
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(&c1);
    bytes[16..].copy_from_slice(&c2);
    let m2 = M2::from_bytes(&bytes).unwrap();
    let m1 = M1::new(UID, SlotId::Key1, SlotId::MasterEcuKey);
    let m3 = expected_m3(&k2, &m1, &m2);
    refused(&mut she, &m1, &m2, &m3, LoadError::Padding);
}

#[test]
fn refuses_a_counter_that_does_not_increase() {
    let mut she = provisioned();
    load(&mut she, SlotId::Key1, &key(6), 10, 0).unwrap();
    for c in [10, 9, 0] {
        let m = build(
            &key(2),
            &key(7),
            &request(SlotId::Key1, SlotId::MasterEcuKey, c, 0),
        );
        let expected = LoadError::CounterNotIncreased {
            stored: counter(10),
            received: counter(c),
        };
        refused(&mut she, &m.m1, &m.m2, &m.m3, expected);
    }
    // The same for MASTER_ECU_KEY (counter 1 after provisioning).
    let m = build(
        &key(2),
        &key(8),
        &request(SlotId::MasterEcuKey, SlotId::MasterEcuKey, 1, 0),
    );
    let expected = LoadError::CounterNotIncreased {
        stored: counter(1),
        received: counter(1),
    };
    refused(&mut she, &m.m1, &m.m2, &m.m3, expected);
    // Replay of an accepted update.
    let m = build(
        &key(2),
        &key(7),
        &request(SlotId::Key1, SlotId::MasterEcuKey, 11, 0),
    );
    she.load_key(&m.m1, &m.m2, &m.m3).unwrap();
    let expected = LoadError::CounterNotIncreased {
        stored: counter(11),
        received: counter(11),
    };
    refused(&mut she, &m.m1, &m.m2, &m.m3, expected);
    // Up to the last counter.
    load(&mut she, SlotId::Key1, &key(8), Counter::MAX.get(), 0).unwrap();
    assert_eq!(she.counter(SlotId::Key1), Some(Counter::MAX));
}

#[test]
fn boot_mac_key_rules() {
    let mut she = provisioned();
    load(&mut she, SlotId::BootMacKey, &key(6), 1, 0).unwrap();
    let m = build(
        &key(6),
        &key(7),
        &request(SlotId::BootMac, SlotId::BootMacKey, 1, 0),
    );
    she.load_key(&m.m1, &m.m2, &m.m3).unwrap();
    let m = build(
        &key(6),
        &key(8),
        &request(SlotId::BootMacKey, SlotId::BootMacKey, 2, 0),
    );
    she.load_key(&m.m1, &m.m2, &m.m3).unwrap();
    assert_eq!(she.raw_key_software_only(SlotId::BootMac), Some(&key(7)));
    assert_eq!(she.raw_key_software_only(SlotId::BootMacKey), Some(&key(8)));
}

// ---- verify ----

#[test]
fn verify_refuses_wrong_proofs() {
    let new = key(6);
    let m = build(
        &key(2),
        &new,
        &request(SlotId::Key1, SlotId::MasterEcuKey, 7, 0),
    );
    assert_eq!(verify(&new, &m.m4, &m.m5).unwrap().counter, counter(7));
    assert_eq!(verify(&key(5), &m.m4, &m.m5), Err(VerifyError::Mac));
    let mut m5 = m.m5.to_bytes();
    m5[15] ^= 1;
    assert_eq!(
        verify(&new, &m.m4, &M5::from_bytes(&m5).unwrap()),
        Err(VerifyError::Mac)
    );
    let mut m4 = m.m4.to_bytes();
    m4[20] ^= 0x80;
    assert_eq!(
        verify(&new, &M4::from_bytes(&m4).unwrap(), &m.m5),
        Err(VerifyError::Mac)
    );
    // A correctly MACed M4 whose counter block lacks the 1 bit.
    let k3 = kdf(&new, &KEY_UPDATE_ENC_C);
    let k4 = kdf(&new, &KEY_UPDATE_MAC_C);
    let mut block = [0u8; 16];
    block[..4].copy_from_slice(&(7u32 << 4).to_be_bytes());
    let mut bytes = m.m4.to_bytes();
    bytes[16..].copy_from_slice(&ecb_encrypt(&k3, &block));
    let m5 = M5::from_bytes(&cmac(&k4, &bytes)).unwrap();
    assert_eq!(
        verify(&new, &M4::from_bytes(&bytes).unwrap(), &m5),
        Err(VerifyError::CounterBlock)
    );
}

// ---- MAC commands ----

#[test]
fn mac_commands_honour_key_usage() {
    let mut she = provisioned();
    let msg = b"frame payload";
    load(&mut she, SlotId::Key1, &key(6), 1, 0x02).unwrap(); // KEY_USAGE: a MAC key
    load(&mut she, SlotId::Key2, &key(7), 1, 0x00).unwrap(); // an encryption key
    let mac = she.generate_mac(SlotId::Key1, msg).unwrap();
    assert_eq!(mac, cmac(&key(6), msg));
    assert_eq!(
        she.generate_mac(SlotId::Key2, msg),
        Err(MacError::NotAMacKey(SlotId::Key2))
    );
    assert_eq!(
        she.generate_mac(SlotId::Key3, msg),
        Err(MacError::SlotEmpty(SlotId::Key3))
    );
    assert_eq!(
        she.generate_mac(SlotId::MasterEcuKey, msg),
        Err(MacError::NotAMacKey(SlotId::MasterEcuKey))
    );
    assert!(she.verify_mac(SlotId::Key1, msg, &mac));
    assert!(!she.verify_mac(SlotId::Key2, msg, &cmac(&key(7), msg)));
    assert!(!she.verify_mac(SlotId::Key3, msg, &mac));
    assert!(!she.verify_mac(SlotId::Key1, b"other payload", &mac));
    // RAM_KEY, loaded in plain, may MAC.
    she.load_plain_ram_key(key(8));
    assert_eq!(
        she.generate_mac(SlotId::RamKey, msg),
        Ok(cmac(&key(8), msg))
    );
}

#[test]
fn truncated_macs() {
    let mut she = provisioned();
    let msg = b"truncated";
    load(&mut she, SlotId::Key1, &key(6), 1, 0x02).unwrap();
    let mac = she.generate_mac(SlotId::Key1, msg).unwrap();
    for len in 0..=17usize {
        let prefix: Vec<u8> = mac.iter().copied().chain([0]).take(len).collect();
        let ok = (MIN_MAC_PREFIX..=16).contains(&len);
        assert_eq!(
            she.verify_mac(SlotId::Key1, msg, &prefix),
            ok,
            "prefix of {len} bytes"
        );
        if ok {
            let mut bad = prefix.clone();
            *bad.last_mut().unwrap() ^= 1;
            assert!(!she.verify_mac(SlotId::Key1, msg, &bad));
        }
    }
}

#[test]
fn roll_seed_from_two_slots() {
    let mut she = provisioned();
    assert!(
        she.roll_seed_software_only(SlotId::Key2, SlotId::Key3)
            .is_none()
    );
    load(&mut she, SlotId::Key2, &key(0xaa), 1, 0).unwrap();
    assert!(
        she.roll_seed_software_only(SlotId::Key2, SlotId::Key3)
            .is_none()
    );
    load(&mut she, SlotId::Key3, &key(0xbb), 1, 0).unwrap();
    let seed = she
        .roll_seed_software_only(SlotId::Key2, SlotId::Key3)
        .unwrap();
    let mut expected = [0xaa; 32];
    expected[16..].fill(0xbb);
    assert_eq!(seed.expose_secret(), &expected);
}

#[test]
fn debug_prints_no_key_and_zeroize_erases() {
    use zeroize::Zeroize;
    let mut she = SoftShe::new(UID, Some(Key128::from_bytes([0xc7; 16])));
    let shown = format!("{she:?}");
    assert!(!shown.to_lowercase().contains("c7"), "{shown}");
    assert!(!shown.contains("199"), "{shown}");
    she.zeroize();
    assert!(SlotId::ALL.iter().all(|s| she.is_empty(*s)));
    assert_eq!(she.uid(), UID);
}

// ---- property tests ----

fn arb_slot() -> impl Strategy<Value = SlotId> {
    (1u8..=14).prop_map(|v| SlotId::new(v).unwrap())
}

fn arb_updatable_pair() -> impl Strategy<Value = (SlotId, SlotId)> {
    (arb_slot(), arb_slot()).prop_filter("allowed pair", |(k, a)| k.may_be_updated_by(*a))
}

prop_compose! {
    fn arb_case()(
        uid in any::<[u8; 15]>(),
        (key_id, auth_id) in arb_updatable_pair(),
        c in 0u32..(1 << 28),
        f in 0u8..32,
        auth in any::<[u8; 16]>(),
        new in any::<[u8; 16]>(),
    ) -> (UpdateRequest, Key128, Key128) {
        let uid = Uid::from_bytes(uid);
        let r = UpdateRequest::new(uid, key_id, auth_id, counter(c), flags(f)).unwrap();
        (r, Key128::from_bytes(auth), Key128::from_bytes(new))
    }
}

/// A SHE with UID `uid` whose `auth_id` slot holds `auth` (loaded under a transport key, or the
/// transport key itself for MASTER_ECU_KEY), and the target slot still without a counter.
fn she_holding(uid: Uid, auth_id: SlotId, auth: &Key128) -> SoftShe {
    if auth_id == SlotId::MasterEcuKey {
        return SoftShe::new(uid, Some(auth.clone()));
    }
    let mut she = SoftShe::new(uid, Some(key(1)));
    let r = UpdateRequest::new(
        uid,
        auth_id,
        SlotId::MasterEcuKey,
        Counter::ZERO,
        KeyFlags::NONE,
    )
    .unwrap();
    let m = build(&key(1), auth, &r);
    she.load_key(&m.m1, &m.m2, &m.m3).unwrap();
    she
}

proptest! {
    #[test]
    fn kdf_pair_is_the_two_kdfs(key in any::<[u8; 16]>()) {
        let key = Key128::from_bytes(key);
        let (enc, mac) = super::crypto::KdfPair::new().derive(&key);
        let (k1, k2) = (kdf(&key, &KEY_UPDATE_ENC_C), kdf(&key, &KEY_UPDATE_MAC_C));
        prop_assert_eq!(enc.expose_secret(), k1.expose_secret());
        prop_assert_eq!(mac.expose_secret(), k2.expose_secret());
    }

    #[test]
    fn build_then_load_round_trips((r, auth, new) in arb_case()) {
        let mut she = she_holding(r.uid(), r.auth_id(), &auth);
        // When a slot updates itself, its counter (0 from set-up) must still go up.
        prop_assume!(r.key_id() != r.auth_id() || r.counter() > Counter::ZERO
            || r.auth_id() == SlotId::MasterEcuKey);
        let m = build(&auth, &new, &r);
        let (m4, m5) = she.load_key(&m.m1, &m.m2, &m.m3).unwrap();
        if !r.uid().is_wildcard() {
            prop_assert_eq!(m4, m.m4);
            prop_assert_eq!(m5, m.m5);
        }
        prop_assert_eq!(she.raw_key_software_only(r.key_id()), Some(&new));
        prop_assert_eq!(she.counter(r.key_id()), Some(r.counter()));
        prop_assert_eq!(she.flags(r.key_id()), r.flags());
        let proof = verify(&new, &m4, &m5).unwrap();
        prop_assert_eq!(proof.counter, r.counter());
        prop_assert_eq!(proof.key_id, r.key_id());
        prop_assert_eq!(proof.auth_id, r.auth_id());
    }

    #[test]
    fn any_flipped_bit_is_refused((r, auth, new) in arb_case(), which in 0usize..3, bit in 0usize..256) {
        let m = build(&auth, &new, &r);
        let mut bytes: Vec<u8> = match which {
            0 => m.m1.to_bytes().to_vec(),
            1 => m.m2.to_bytes().to_vec(),
            _ => m.m3.to_bytes().to_vec(),
        };
        let bit = bit % (bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        let mut she = she_holding(r.uid(), r.auth_id(), &auth);
        let before = state(&she);
        let outcome = match which {
            0 => M1::from_bytes(&bytes).map_err(|_| ()).and_then(|m1| she.load_key(&m1, &m.m2, &m.m3).map_err(|_| ())),
            1 => she.load_key(&m.m1, &M2::from_bytes(&bytes).unwrap(), &m.m3).map_err(|_| ()),
            _ => she.load_key(&m.m1, &m.m2, &M3::from_bytes(&bytes).unwrap()).map_err(|_| ()),
        };
        prop_assert!(outcome.is_err());
        prop_assert_eq!(state(&she), before);
    }

    #[test]
    fn m1_round_trips(uid in any::<[u8; 15]>(), k in arb_slot(), a in arb_slot()) {
        let m1 = M1::new(Uid::from_bytes(uid), k, a);
        prop_assert_eq!(M1::from_bytes(&m1.to_bytes()), Ok(m1));
    }

    #[test]
    fn m1_parse_serialize(bytes in any::<[u8; 16]>()) {
        if let Ok(m1) = M1::from_bytes(&bytes) {
            prop_assert_eq!(m1.to_bytes(), bytes);
        } else {
            let ids = bytes[15];
            prop_assert!(matches!(ids >> 4, 0 | 15) || matches!(ids & 15, 0 | 15));
        }
    }

    #[test]
    fn m2_m3_m4_m5_parse_serialize(a in any::<[u8; 16]>(), b in any::<[u8; 16]>()) {
        let mut two = [0u8; 32];
        two[..16].copy_from_slice(&a);
        two[16..].copy_from_slice(&b);
        prop_assert_eq!(M2::from_bytes(&two).unwrap().to_bytes(), two);
        prop_assert_eq!(M3::from_bytes(&a).unwrap().to_bytes(), a);
        prop_assert_eq!(M5::from_bytes(&b).unwrap().to_bytes(), b);
        if let Ok(m4) = M4::from_bytes(&two) {
            prop_assert_eq!(m4.to_bytes(), two);
            prop_assert_eq!(m4.header(), M1::from_bytes(&a).unwrap());
        }
    }

    #[test]
    fn built_messages_round_trip((r, auth, new) in arb_case()) {
        let m = build(&auth, &new, &r);
        prop_assert_eq!(M1::from_bytes(&m.m1.to_bytes()), Ok(m.m1));
        prop_assert_eq!(M2::from_bytes(&m.m2.to_bytes()), Ok(m.m2));
        prop_assert_eq!(M3::from_bytes(&m.m3.to_bytes()), Ok(m.m3));
        prop_assert_eq!(M4::from_bytes(&m.m4.to_bytes()), Ok(m.m4));
        prop_assert_eq!(M5::from_bytes(&m.m5.to_bytes()), Ok(m.m5));
        prop_assert_eq!(m.m1, r.m1());
    }

    #[test]
    fn load_never_panics(m1 in any::<[u8; 16]>(), m2 in any::<[u8; 32]>(), m3 in any::<[u8; 16]>()) {
        let mut she = provisioned();
        if let Ok(m1) = M1::from_bytes(&m1) {
            let before = state(&she);
            let _ = she.load_key(&m1, &M2::from_bytes(&m2).unwrap(), &M3::from_bytes(&m3).unwrap());
            // Random bytes essentially never carry a valid CMAC.
            prop_assert_eq!(state(&she), before);
        }
    }
}

#[test]
fn an_authorisation_builds_what_build_builds() {
    let auth = key(7);
    let authorisation = super::Authorisation::new(&auth);
    for (i, slot) in [SlotId::Key1, SlotId::Key2, SlotId::MasterEcuKey]
        .into_iter()
        .enumerate()
    {
        let new = key(20 + i as u8);
        let r = request(slot, SlotId::MasterEcuKey, 3 + i as u32, 0);
        assert_eq!(
            authorisation.build(&new, &r),
            build(&auth, &new, &r),
            "{slot:?}"
        );
    }
}
