use super::*;
use proptest::prelude::*;
use std::vec::Vec;

fn rfc5869() -> serde_json::Value {
    serde_json::from_str(include_str!(
        "../../../../tests/vectors/rfc5869-hkdf-sha256.json"
    ))
    .unwrap()
}

fn hexf(v: &serde_json::Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

#[test]
fn rfc5869_general_path() {
    for case in rfc5869()["cases"].as_array().unwrap() {
        let prk = hexf(&case["prk"]);
        let okm = hexf(&case["okm"]);
        let mut out = std::vec![0u8; okm.len()];
        expand_general(&prk, &hexf(&case["info"]), &mut out).unwrap();
        assert_eq!(out, okm, "{}", case["name"]);
    }
}

#[test]
fn rfc5869_one_block_path_gives_t1() {
    let mut checked = 0;
    for case in rfc5869()["cases"].as_array().unwrap() {
        let prk: [u8; 32] = hexf(&case["prk"]).try_into().unwrap();
        let info = hexf(&case["info"]);
        let okm = hexf(&case["okm"]);
        let mut out = [0u8; 32];
        let result = PrkState::new(&prk).expand_one_block(&info, &mut out);
        if info.len() <= MAX_INFO {
            result.unwrap();
            assert_eq!(&out[..], &okm[..32], "{}", case["name"]);
            checked += 1;
        } else {
            assert_eq!(result, Err(ExpandError::InfoTooLong));
        }
    }
    assert_eq!(checked, 2, "A.1 and A.3 fit one block");
}

#[test]
fn output_length_is_checked() {
    let state = PrkState::new(&[7; 32]);
    assert_eq!(
        state.expand_one_block(b"x", &mut []),
        Err(ExpandError::OutputLength)
    );
    assert_eq!(
        state.expand_one_block(b"x", &mut [0; 33]),
        Err(ExpandError::OutputLength)
    );
    assert_eq!(
        state.expand_one_block(&[0; MAX_INFO + 1], &mut [0; 16]),
        Err(ExpandError::InfoTooLong)
    );
}

proptest! {
    #[test]
    fn one_block_equals_hkdf_crate(
        prk in any::<[u8; 32]>(),
        info in proptest::collection::vec(any::<u8>(), 0..=MAX_INFO),
        len in 1usize..=32,
    ) {
        let mut fast = std::vec![0u8; len];
        let mut reference = std::vec![0u8; len];
        PrkState::new(&prk).expand_one_block(&info, &mut fast).unwrap();
        expand_general(&prk, &info, &mut reference).unwrap();
        prop_assert_eq!(fast, reference);
    }
}
