//! The UDP bus datagram parser: never panics; whatever parses encodes back to the same bytes.
#![no_main]

use fleetkey_sim::bus::datagram::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(received) = decode(data) {
        assert_eq!(encode(&received), data);
    }
});
