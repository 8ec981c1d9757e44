//! Arbitrary bytes as a secured frame for a receiver: never panics, and a frame is accepted only
//! when the sender would have produced exactly those bytes (same key, DataId, payload and FV).
//!
//! Input: byte 0 picks the profile (low 2 bits), the attempts (next 4 bits) and the key window
//! (bit 6: a rolling window); bytes 1-2 the DataId; bytes 3-10 the receiver's latest FV; the rest
//! is the frame. The input's payload is also secured and must verify (round trip).
#![no_main]

use fleetkey_core::secoc::{
    FrameKey, KeyWindow, Profile, Receiver, Rejected, WindowConfig, secure,
};
use fleetkey_core::{Epoch, RollSeed, Roller, SessionKey};
use libfuzzer_sys::fuzz_target;

const KEY: [u8; 16] = *b"fleetkey-fuzz-k1";
const CHANNEL: u32 = 1;

fuzz_target!(|data: &[u8]| {
    let Some((&[selector, id_hi, id_lo], rest)) = data.split_first_chunk::<3>() else {
        return;
    };
    let Some((latest, frame)) = rest.split_first_chunk::<8>() else {
        return;
    };
    let profile = Profile::ALL[usize::from(selector & 3)];
    let data_id = u16::from_be_bytes([id_hi, id_lo]);
    let latest = u64::from_be_bytes(*latest);
    let attempts = (selector >> 2) & 0x0f;
    let rolling = selector & 0x40 != 0;

    let roller = Roller::new(&RollSeed::from_bytes([0x33; 32]));
    let epoch = Epoch(latest % 1000);
    let (keys, signing_keys): (KeyWindow, [Option<FrameKey>; 3]) = if rolling {
        let mut keys = KeyWindow::new(WindowConfig::default());
        keys.advance_to(epoch, &roller, CHANNEL)
            .expect("first advance");
        let key = |e: Option<Epoch>| e.map(|e| FrameKey::new(&roller.session_key(e, CHANNEL)));
        (
            keys,
            [key(Some(epoch)), key(epoch.previous()), key(epoch.next())],
        )
    } else {
        let session = SessionKey::from_bytes(KEY);
        (
            KeyWindow::single(Epoch(0), &session),
            [Some(FrameKey::new(&session)), None, None],
        )
    };

    // Arbitrary frame: accepted only if it is exactly what a sender would have produced.
    let mut receiver = Receiver::restore(profile, data_id, latest).with_attempts(attempts);
    if let Ok(verified) = receiver.verify(&keys, frame) {
        assert!(verified.fv > latest);
        assert_eq!(receiver.latest_fv(), verified.fv);
        let key = keys
            .key(verified.epoch)
            .expect("verifying key is in the window");
        let mut expected = [0u8; 64];
        let len = secure(
            &profile,
            key,
            data_id,
            verified.payload(frame),
            verified.fv,
            &mut expected,
        )
        .expect("accepted frame has a valid length");
        assert_eq!(
            &expected[..len],
            frame,
            "accepted a frame the sender would not produce"
        );
    } else {
        assert_eq!(receiver.latest_fv(), latest);
        assert_eq!(receiver.stats().rejected(), 1);
    }

    // Round trip: the frame's bytes as a payload, secured with the next FV, must verify.
    let Some(fv) = latest.checked_add(1) else {
        return;
    };
    let payload = &frame[..frame.len().min(profile.max_payload())];
    for key in signing_keys.iter().flatten() {
        let mut out = [0u8; 64];
        let len = secure(&profile, key, data_id, payload, fv, &mut out).expect("payload fits");
        let mut receiver = Receiver::restore(profile, data_id, latest);
        let verified = receiver.verify(&keys, &out[..len]);
        assert_eq!(
            verified.map(|v| (v.fv, v.payload_len)),
            Ok((fv, payload.len()))
        );
        // A replay can only pass by a MAC collision under a later candidate FV: with a 24-bit MAC
        // that happens about once in a million runs, so check it for the long MACs only.
        if profile.mac_len() >= 8 {
            assert_eq!(
                receiver.verify(&keys, &out[..len]),
                Err(Rejected),
                "replay accepted"
            );
        }
    }
});
