//! A minimal ECU firmware that links what an ECU runs of the device core: derivation, rolling,
//! SecOC verify and the software SHE. It exists to measure the core's flash and RAM footprint
//! (`scripts/firmware-size`); inputs pass through `black_box` so nothing is folded away.
#![no_std]
#![no_main]

use core::hint::black_box;

use cortex_m_rt::entry;
use fleetkey_core::derive::{DeviceKeyInputs, Deriver, Generation, Revision, Serial, Usage};
use fleetkey_core::roll::{Epoch, Roller};
use fleetkey_core::{MasterKey, RollSeed};

#[entry]
fn main() -> ! {
    let serial = black_box(*b"ECU-0001");
    let mut sink = 0u8;
    if let (Ok(revision), Ok(serial)) = (Revision::new(black_box(1)), Serial::new(&serial)) {
        let deriver = Deriver::new(&MasterKey::from_bytes(black_box([0x11; 32])));
        let inputs = DeviceKeyInputs { usage: Usage::RollSeed, generation: Generation(1), revision, serial };
        let seed_key = deriver.derive(&inputs);
        if let Some(seed) = seed_key.to_roll_seed() {
            let roller = Roller::new(&seed);
            let session = roller.session_key(Epoch(black_box(42)), black_box(3));
            sink ^= session.expose_secret()[0];
        }
    }
    let _ = RollSeed::from_bytes(black_box([0; 32]));
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
