//! Arbitrary derivation inputs: refused with a typed error or derived, never a panic; the fast
//! one-block path always equals the general HKDF-Expand path.
#![no_main]

use fleetkey_core::derive::{DeviceKeyInputs, Deriver, Generation, Revision, Serial, Usage, MAX_INFO_LEN};
use fleetkey_core::{prf, MasterKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((head, serial)) = data.split_first_chunk::<41>() else { return };
    let (master, rest) = head.split_at(32);
    let usage = rest[0];
    let generation = u32::from_be_bytes(rest[1..5].try_into().unwrap());
    let revision = u32::from_be_bytes(rest[5..9].try_into().unwrap());
    let (Ok(usage), Ok(revision), Ok(serial)) =
        (Usage::from_code(usage), Revision::new(revision), Serial::new(serial))
    else {
        return;
    };
    let master: [u8; 32] = master.try_into().unwrap();
    let inputs = DeviceKeyInputs { usage, generation: Generation(generation), revision, serial };
    let key = Deriver::new(&MasterKey::from_bytes(master)).derive(&inputs);
    let mut info = [0u8; MAX_INFO_LEN];
    let len = inputs.encode_info(&mut info);
    let mut reference = [0u8; 32];
    let reference = &mut reference[..usage.key_len()];
    prf::expand_general(&master, &info[..len], reference).unwrap();
    assert_eq!(key.expose_secret(), reference);
});
