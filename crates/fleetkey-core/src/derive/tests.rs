use super::*;
use proptest::prelude::*;
use std::vec::Vec;

fn vectors() -> serde_json::Value {
    serde_json::from_str(include_str!("../../../../tests/vectors/derive-v1.json")).unwrap()
}

fn usage_named(name: &str) -> Usage {
    Usage::ALL.into_iter().find(|u| u.name() == name).unwrap()
}

#[test]
fn contract_vectors() {
    let cases = vectors()["cases"].as_array().unwrap().clone();
    assert!(cases.len() >= 30);
    for case in cases {
        let master: [u8; 32] = hex::decode(case["master"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let serial: Vec<u8> = match case.get("serial") {
            Some(text) => text.as_str().unwrap().as_bytes().to_vec(),
            None => hex::decode(case["serial_hex"].as_str().unwrap()).unwrap(),
        };
        let inputs = DeviceKeyInputs {
            usage: usage_named(case["usage"].as_str().unwrap()),
            generation: Generation(u32::try_from(case["generation"].as_u64().unwrap()).unwrap()),
            revision: Revision::new(u32::try_from(case["revision"].as_u64().unwrap()).unwrap())
                .unwrap(),
            serial: Serial::new(&serial).unwrap(),
        };
        let mut info = [0u8; MAX_INFO_LEN];
        let len = inputs.encode_info(&mut info);
        assert_eq!(hex::encode(&info[..len]), case["info"].as_str().unwrap());
        let key = derive(&MasterKey::from_bytes(master), &inputs);
        assert_eq!(
            hex::encode(key.expose_secret()),
            case["key"].as_str().unwrap(),
            "{case}"
        );
    }
}

#[test]
fn out_of_range_inputs_are_refused() {
    assert_eq!(Usage::from_code(0), Err(DeriveError::Usage(0)));
    assert_eq!(Usage::from_code(4), Err(DeriveError::Usage(4)));
    assert_eq!(Revision::new(1 << 28), Err(DeriveError::Revision(1 << 28)));
    assert_eq!(
        Revision::new(MAX_REVISION).unwrap().next(),
        Err(DeriveError::Revision(1 << 28))
    );
    assert_eq!(
        Revision::new(u32::MAX).unwrap_err(),
        DeriveError::Revision(u32::MAX)
    );
    assert_eq!(Serial::new(b""), Err(DeriveError::SerialLength(0)));
    assert_eq!(Serial::new(&[b'x'; 41]), Err(DeriveError::SerialLength(41)));
    assert!(Serial::new(&[b'x'; 40]).is_ok());
}

#[test]
fn errors_name_the_field() {
    use std::string::ToString;
    assert!(DeriveError::Usage(9).to_string().starts_with("usage:"));
    assert!(
        DeriveError::Revision(1 << 28)
            .to_string()
            .starts_with("revision:")
    );
    assert!(
        DeriveError::SerialLength(0)
            .to_string()
            .starts_with("serial:")
    );
}

#[test]
fn typed_conversions_follow_usage() {
    let deriver = Deriver::new(&MasterKey::from_bytes([3; 32]));
    let serial = Serial::new(b"S").unwrap();
    let inputs = |usage| DeviceKeyInputs {
        usage,
        generation: Generation(1),
        revision: Revision::ZERO,
        serial,
    };
    let auth = deriver.derive(&inputs(Usage::Auth));
    assert!(auth.to_key128().is_some() && auth.to_roll_seed().is_none());
    let seed = deriver.derive(&inputs(Usage::RollSeed));
    assert!(seed.to_roll_seed().is_some() && seed.to_key128().is_none());
    assert_eq!(std::format!("{auth:?}"), "DeviceKey { usage: Auth, .. }");
}

#[test]
fn derive_into_refuses_a_wrong_length_buffer() {
    let deriver = Deriver::new(&MasterKey::from_bytes([3; 32]));
    let inputs = DeviceKeyInputs {
        usage: Usage::Auth,
        generation: Generation(1),
        revision: Revision::ZERO,
        serial: Serial::new(b"S").unwrap(),
    };
    let mut wrong = [0u8; 32];
    deriver.derive_into(&inputs, &mut wrong);
    assert_eq!(wrong, [0u8; 32]);
}

fn usage_strategy() -> impl Strategy<Value = Usage> {
    prop_oneof![
        Just(Usage::Auth),
        Just(Usage::KeyUpdate),
        Just(Usage::RollSeed)
    ]
}

proptest! {
    /// The fast path equals a plain HKDF-Expand of the contract's `info`, assembled here by hand.
    #[test]
    fn fast_path_equals_hkdf_of_the_contract_info(
        master in any::<[u8; 32]>(),
        usage in usage_strategy(),
        generation in any::<u32>(),
        revision in 0u32..=MAX_REVISION,
        serial in proptest::collection::vec(any::<u8>(), 1..=MAX_SERIAL_LEN),
    ) {
        let inputs = DeviceKeyInputs {
            usage,
            generation: Generation(generation),
            revision: Revision::new(revision).unwrap(),
            serial: Serial::new(&serial).unwrap(),
        };
        let mut info = Vec::new();
        info.extend_from_slice(b"FK1D");
        info.push(usage.code());
        info.extend_from_slice(&generation.to_be_bytes());
        info.extend_from_slice(&revision.to_be_bytes());
        info.push(u8::try_from(serial.len()).unwrap());
        info.extend_from_slice(&serial);
        let mut encoded = [0u8; MAX_INFO_LEN];
        let len = inputs.encode_info(&mut encoded);
        prop_assert_eq!(&encoded[..len], &info[..]);
        let mut reference = std::vec![0u8; usage.key_len()];
        crate::prf::expand_general(&master, &info, &mut reference).unwrap();
        let key = Deriver::new(&MasterKey::from_bytes(master)).derive(&inputs);
        prop_assert_eq!(key.expose_secret(), &reference[..]);
    }

    /// Inputs that differ in any field give different `info`: the encoding is injective.
    #[test]
    fn info_encoding_is_injective(
        a in (usage_strategy(), any::<u32>(), 0u32..=MAX_REVISION, proptest::collection::vec(any::<u8>(), 1..=8)),
        b in (usage_strategy(), any::<u32>(), 0u32..=MAX_REVISION, proptest::collection::vec(any::<u8>(), 1..=8)),
    ) {
        let make = |(u, g, r, s): &(Usage, u32, u32, Vec<u8>)| {
            let inputs = DeviceKeyInputs { usage: *u, generation: Generation(*g), revision: Revision::new(*r).unwrap(), serial: Serial::new(s).unwrap() };
            let mut buf = [0u8; MAX_INFO_LEN];
            let len = inputs.encode_info(&mut buf);
            buf[..len].to_vec()
        };
        prop_assert_eq!(a == b, make(&a) == make(&b));
    }
}

#[test]
fn device_key_from_slice_takes_exactly_the_usage_length() {
    let master = MasterKey::from_bytes([7; 32]);
    let serial = Serial::new(b"ECU").unwrap();
    for usage in Usage::ALL {
        let inputs = DeviceKeyInputs {
            usage,
            generation: Generation(1),
            revision: Revision::ZERO,
            serial,
        };
        let key = derive(&master, &inputs);
        let copy = DeviceKey::from_slice(usage, key.expose_secret()).unwrap();
        assert_eq!(copy.usage(), usage);
        assert_eq!(copy.expose_secret(), key.expose_secret());
        for wrong in [0, usage.key_len() - 1, usage.key_len() + 1, 33] {
            assert!(
                DeviceKey::from_slice(usage, &[1; 40][..wrong]).is_none(),
                "{wrong}"
            );
        }
    }
}
