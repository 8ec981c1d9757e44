//! Arbitrary bytes as governance records (docs/governance.md): the device-side parser and
//! verifiers refuse without a panic and a refusal changes nothing; a real signed record with the
//! fuzzer's bytes XORed in is refused unless the bytes left it unchanged.
#![no_main]

use fleetkey_core::governance::{
    GovernanceState, RootKey, inspect_unverified, verify_generation_record, verify_grant,
    verify_handover,
};
use libfuzzer_sys::fuzz_target;

/// `governance-v1.json`'s root, fleet, time and first record (sequence 1).
const ROOT_KEY: &str = "2152f8d19b791d24453242e15f2eab6cb7cffa7b6a5ed30097960e069881db12";
const ROOT_KID: &str = "3097e2dee2cb4a34";
const RECORD: &str = "d2844da2012704483097e2dee2cb4a34a05822a901010267666c6565742d61031a684ed370041a68766e8005010601078008800980584071177eb2cbad6b0baf5bd94834e9fe4dd290fd6e69aabaa908a7170f2ae461f57327355bd2e7457f9d84814f45cb57cb885fb618a9dd41c14a3c851abbd58b09";
const NOW: u64 = 1_750_000_000;

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn state() -> GovernanceState {
    let key: [u8; 32] = unhex(ROOT_KEY).try_into().unwrap();
    GovernanceState::new("fleet-a", RootKey::new(key, &unhex(ROOT_KID)).unwrap()).unwrap()
}

fuzz_target!(|data: &[u8]| {
    let mut st = state();
    let before = st.clone();
    let now = data
        .get(..8)
        .map_or(NOW, |b| u64::from_le_bytes(b.try_into().unwrap()));
    let _ = inspect_unverified(data);
    if verify_generation_record(&mut st, data, now).is_err() {
        assert_eq!(st, before);
    }
    let _ = verify_grant(&st, data, b"ECU-0042", now);
    let mut st2 = before.clone();
    if verify_handover(&mut st2, data, now).is_err() {
        assert_eq!(st2, before);
    }

    let good = unhex(RECORD);
    let mut bad = good.clone();
    for (b, d) in bad.iter_mut().zip(data) {
        *b ^= d;
    }
    let mut st = state();
    let r = verify_generation_record(&mut st, &bad, NOW);
    assert_eq!(r.is_ok(), bad == good, "a changed record was accepted");
});
