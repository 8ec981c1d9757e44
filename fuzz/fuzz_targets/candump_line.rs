//! Arbitrary bytes as a candump log line and as a whole log: never a panic, whatever parses
//! displays as a line that parses back to the same value, every other line of a log is a typed
//! error on a line that exists (a line over `MAX_LINE_LEN` always is), and a log with nothing
//! else gives `NoFrame` alone.
#![no_main]

use fleetkey::canlog::{LogError, MAX_LINE_LEN, ParseError, parse_frame, parse_line, read_log};
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
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let items: Vec<_> = read_log(data).collect();
    assert!(!items.is_empty());
    let mut errors = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item {
            Ok(line) => assert_eq!(parse_line(&line.to_string()), Ok(line.clone())),
            Err(LogError::Parse { line, error }) => errors.push((*line, *error)),
            Err(LogError::NoFrame { .. }) => assert_eq!((i, items.len()), (0, 1)),
            Err(e) => panic!("unexpected {e}"),
        }
    }
    for (number, raw) in lines.iter().enumerate() {
        if raw.len() > MAX_LINE_LEN {
            let too_long = ParseError::LineTooLong { max: MAX_LINE_LEN };
            assert!(errors.contains(&(number + 1, too_long)), "line {}", number + 1);
        }
    }
});
