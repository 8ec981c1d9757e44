//! A minimal ECU firmware that links what an ECU runs of the device core: derivation, rolling,
//! SecOC verify, the software SHE and governance record verification. It exists to measure the core's flash and RAM footprint
//! (`scripts/firmware-size`, one build per feature); inputs pass through `black_box` so nothing
//! is folded away.
#![no_std]
#![no_main]

use core::hint::black_box;

use cortex_m_rt::entry;

#[entry]
fn main() -> ! {
    #[allow(unused_mut, reason = "with no feature nothing writes to it")]
    let mut sink = 0u8;
    #[cfg(feature = "derive")]
    {
        use fleetkey_core::derive::{DeviceKeyInputs, Deriver, Generation, Revision, Serial, Usage};
        let serial = black_box(*b"ECU-0001");
        if let (Ok(revision), Ok(serial)) = (Revision::new(black_box(1)), Serial::new(&serial)) {
            let deriver = Deriver::new(&fleetkey_core::MasterKey::from_bytes(black_box([0x11; 32])));
            let inputs = DeviceKeyInputs { usage: Usage::Auth, generation: Generation(1), revision, serial };
            sink ^= deriver.derive(&inputs).expose_secret().first().copied().unwrap_or(0);
        }
    }
    #[cfg(feature = "roll")]
    let roller = fleetkey_core::Roller::new(&fleetkey_core::RollSeed::from_bytes(black_box([0x22; 32])));
    #[cfg(feature = "roll")]
    {
        let key = roller.session_key(fleetkey_core::Epoch(black_box(42)), black_box(3));
        sink ^= key.expose_secret()[0];
    }
    #[cfg(feature = "secoc")]
    {
        use fleetkey_core::secoc::{KeyWindow, Profile, Receiver, WindowConfig};
        let mut window = KeyWindow::new(WindowConfig::default());
        if window.advance_to(fleetkey_core::Epoch(black_box(42)), &roller, 3).is_ok() {
            let mut receiver = Receiver::new(Profile::FD64, 0x123);
            let frame = black_box([0u8; 24]);
            if let Ok(v) = receiver.verify(&window, &frame) {
                sink ^= v.payload(&frame).first().copied().unwrap_or(0);
            }
            sink ^= u8::try_from(receiver.stats().authentication & 0xff).unwrap_or(0);
        }
    }
    #[cfg(feature = "she")]
    {
        use fleetkey_core::she::{M1, M2, M3, SoftShe, Uid};
        let mut she = SoftShe::new(Uid::from_bytes(black_box([1; 15])), Some(fleetkey_core::Key128::from_bytes(black_box([7; 16]))));
        let bytes = black_box([0u8; 64]);
        if let (Ok(m1), Ok(m2), Ok(m3)) = (M1::from_bytes(&bytes[..16]), M2::from_bytes(&bytes[16..48]), M3::from_bytes(&bytes[48..])) {
            if let Ok((m4, _m5)) = she.load_key(&m1, &m2, &m3) {
                sink ^= m4.to_bytes()[0];
            }
        }
    }
    #[cfg(feature = "governance")]
    {
        use fleetkey_core::governance::{
            Challenge, GovernanceState, RootKey, generation_allowed, verify_generation_record,
            verify_grant, verify_possession,
        };
        let record = black_box([0u8; 256]);
        if let Ok(root) = RootKey::new(black_box([0x33; 32]), black_box(b"root-kid")) {
            if let Ok(mut state) = GovernanceState::new(black_box("fleet-a"), root) {
                let now = black_box(1_750_000_000);
                if verify_generation_record(&mut state, &record, now).is_ok() {
                    sink ^= u8::from(generation_allowed(&state, fleetkey_core::Generation(black_box(2))));
                }
                if let Ok(grant) = verify_grant(&state, &record, black_box(b"ECU-0001"), now) {
                    let challenge = Challenge::from_nonce(black_box([0x44; 32]));
                    sink ^= u8::from(verify_possession(&grant, &challenge, &black_box([0; 64])).is_ok());
                }
            }
        }
    }
    black_box(sink);
    loop {
        core::hint::spin_loop();
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {
        core::hint::spin_loop();
    }
}
