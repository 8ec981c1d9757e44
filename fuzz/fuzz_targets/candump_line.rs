//! Arbitrary bytes as a candump log line and as a whole log: never a panic, and whatever parses
//! displays as a line that parses back to the same value.
#![no_main]

use fleetkey::canlog::{parse_frame, parse_line, read_log};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(line) = parse_line(&text) {
        let shown = line.to_string();
        assert_eq!(parse_line(&shown), Ok(line), "{shown}");
    }
    if let Ok(frame) = parse_frame(&text) {
        assert_eq!(parse_frame(&frame.to_string()), Ok(frame));
    }
    for line in read_log(data).flatten() {
        assert_eq!(parse_line(&line.to_string()), Ok(line));
    }
});
