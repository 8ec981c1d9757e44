//! Arbitrary bytes as a device CSV (`fleetkey device import`, docs/manager.md): the parser refuses
//! without a panic, stops at its first error, refuses every line over 8192 bytes, and every row it
//! accepts has a valid serial and labels.
#![no_main]

use fleetkey::fleet::{MAX_CSV_LINE, parse_csv};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let longest = data
        .split(|b| *b == b'\n')
        .map(<[u8]>::len)
        .max()
        .unwrap_or(0);
    let mut errors = 0;
    let mut rows = 0;
    for row in parse_csv(data) {
        match row {
            Ok(r) => {
                rows += 1;
                assert!(!r.device.serial.as_bytes().is_empty());
                assert!(r.line >= 2);
            }
            Err(_) => errors += 1,
        }
    }
    assert!(errors <= 1, "the parser goes on after an error");
    if longest > MAX_CSV_LINE {
        assert_eq!(errors, 1, "a line over {MAX_CSV_LINE} bytes was accepted ({rows} rows)");
    }
});
