//! Arbitrary bytes as SHE messages: every parser refuses or round-trips, a software SHE's
//! `load_key` refuses or accepts without a panic (and a refusal changes nothing), and
//! well-built messages with one byte changed by the fuzzer are refused.
#![no_main]

use fleetkey_core::Key128;
use fleetkey_core::she::{
    Counter, KeyFlags, M1, M2, M3, M4, M5, SlotId, SoftShe, Uid, UpdateRequest, build, verify,
};
use libfuzzer_sys::fuzz_target;

const UID: Uid = Uid::from_bytes([0x5a; 15]);
const TRANSPORT: [u8; 16] = [0x01; 16];

fn snapshot(she: &SoftShe) -> [(bool, Option<Counter>, KeyFlags); 14] {
    SlotId::ALL.map(|s| (she.is_empty(s), she.counter(s), she.flags(s)))
}

fuzz_target!(|data: &[u8]| {
    // 1. Parsers on arbitrary slices: refuse or round-trip exactly.
    if let Ok(m) = M1::from_bytes(data) {
        assert_eq!(m.to_bytes().as_slice(), data);
    }
    if let Ok(m) = M2::from_bytes(data) {
        assert_eq!(m.to_bytes().as_slice(), data);
    }
    if let Ok(m) = M3::from_bytes(data) {
        assert_eq!(m.to_bytes().as_slice(), data);
    }
    if let Ok(m) = M4::from_bytes(data) {
        assert_eq!(m.to_bytes().as_slice(), data);
    }
    if let Ok(m) = M5::from_bytes(data) {
        assert_eq!(m.to_bytes().as_slice(), data);
    }

    // 2. The first 64 bytes as M1 || M2 || M3 into a SHE holding the transport key, and the
    //    first 48 bytes as M4 || M5 into verify.
    let mut she = SoftShe::new(UID, Some(Key128::from_bytes(TRANSPORT)));
    if let Some((raw, _)) = data.split_first_chunk::<64>() {
        let (m1, tail) = raw.split_at(16);
        let (m2, m3) = tail.split_at(32);
        if let (Ok(m1), Ok(m2), Ok(m3)) =
            (M1::from_bytes(m1), M2::from_bytes(m2), M3::from_bytes(m3))
        {
            let before = snapshot(&she);
            if she.load_key(&m1, &m2, &m3).is_err() {
                assert_eq!(snapshot(&she), before);
            }
        }
    }
    if let Some((raw, _)) = data.split_first_chunk::<48>() {
        let (m4, m5) = raw.split_at(32);
        if let (Ok(m4), Ok(m5)) = (M4::from_bytes(m4), M5::from_bytes(m5)) {
            let _ = verify(&Key128::from_bytes(TRANSPORT), &m4, &m5);
        }
    }

    // 3. Fields from the input, built into authentic messages under the transport key, then
    //    one byte changed where the input says: accepted only when nothing changed.
    let Some((fields, _)) = data.split_first_chunk::<40>() else {
        return;
    };
    let [key_id, c0, c1, c2, c3, flags, pos, xor, rest @ ..] = *fields;
    let new_key: [u8; 16] = rest[..16].try_into().unwrap();
    let uid_sel = rest[16];
    let (Ok(key_id), Ok(counter), Ok(flags)) = (
        SlotId::new(key_id % 16),
        Counter::new(u32::from_be_bytes([c0, c1, c2, c3]) >> 4),
        KeyFlags::new(flags % 32),
    ) else {
        return;
    };
    let uid = if uid_sel & 1 == 1 { Uid::WILDCARD } else { UID };
    let Ok(request) = UpdateRequest::new(uid, key_id, SlotId::MasterEcuKey, counter, flags) else {
        return;
    };
    let m = build(
        &Key128::from_bytes(TRANSPORT),
        &Key128::from_bytes(new_key),
        &request,
    );
    let mut bytes = [0u8; 64];
    bytes[..16].copy_from_slice(&m.m1.to_bytes());
    bytes[16..48].copy_from_slice(&m.m2.to_bytes());
    bytes[48..].copy_from_slice(&m.m3.to_bytes());
    bytes[usize::from(pos % 64)] ^= xor;
    let (Ok(m1), Ok(m2), Ok(m3)) = (
        M1::from_bytes(&bytes[..16]),
        M2::from_bytes(&bytes[16..48]),
        M3::from_bytes(&bytes[48..]),
    ) else {
        return;
    };
    let mut fresh = SoftShe::new(UID, Some(Key128::from_bytes(TRANSPORT)));
    let before = snapshot(&fresh);
    match fresh.load_key(&m1, &m2, &m3) {
        Ok((m4, m5)) => {
            assert_eq!(xor, 0, "a changed message was accepted");
            let proof = verify(&Key128::from_bytes(new_key), &m4, &m5).unwrap();
            assert_eq!(proof.counter, counter);
            assert_eq!(proof.uid, UID);
        }
        Err(_) => assert_eq!(snapshot(&fresh), before),
    }
});
