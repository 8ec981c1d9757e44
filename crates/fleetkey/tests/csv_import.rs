//! The device CSV parser (`fleetkey device import`) on arbitrary input: no panic, one error at
//! most and then nothing, every over-long line refused, rows that round-trip come back as written.

use fleetkey::fleet::{MAX_CSV_LINE, parse_csv};
use proptest::prelude::*;

fn outcome(data: &[u8]) -> (Vec<String>, Vec<String>) {
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for row in parse_csv(data) {
        match row {
            Ok(r) => rows.push(r.device.serial.to_string()),
            Err(e) => errors.push(e.to_string()),
        }
    }
    (rows, errors)
}

proptest! {
    #[test]
    fn arbitrary_bytes_parse_or_fail_once(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let (_, errors) = outcome(&data);
        prop_assert!(errors.len() <= 1, "{errors:?}");
    }

    #[test]
    fn any_line_over_the_limit_is_refused_by_name(
        before in 0usize..5,
        extra in 1usize..3000,
        fill in prop::sample::select(vec![b'a', b',', b'"', 0xff]),
    ) {
        let mut data = b"serial\n".to_vec();
        for i in 0..before {
            data.extend_from_slice(format!("D-{i}\n").as_bytes());
        }
        data.extend(std::iter::repeat_n(fill, MAX_CSV_LINE + extra));
        data.push(b'\n');
        let (rows, errors) = outcome(&data);
        prop_assert_eq!(errors.len(), 1, "{:?}", rows);
        let line = before + 2;
        let message = &errors[0];
        // The quoted fill byte may end the record earlier for '"'; the limit is what's named.
        prop_assert!(
            message.contains(&format!("csv line {line}")) && message.contains("longer than 8192 bytes"),
            "{message}"
        );
        prop_assert!(message.len() < 200, "the message echoes the line: {message:.100}");
    }

    #[test]
    fn well_formed_rows_come_back(serials in proptest::collection::btree_set("[A-Z0-9-]{1,40}", 0..50)) {
        let mut data = String::from("serial,labels\n");
        for s in &serials {
            data.push_str(&format!("{s},line=1\n"));
        }
        let (rows, errors) = outcome(data.as_bytes());
        prop_assert!(errors.is_empty(), "{errors:?}");
        prop_assert_eq!(rows, serials.into_iter().collect::<Vec<_>>());
    }
}

#[test]
fn empty_input_and_headers_are_refused_by_name() {
    for (data, says) in [
        (&b""[..], "must name a `serial` column"),
        (b"\xff\xfe,serial\n", "not UTF-8"),
        (b"serial,colour\nA,red\n", "unknown column \"colour\""),
    ] {
        let (_, errors) = outcome(data);
        assert_eq!(errors.len(), 1, "{data:?}");
        assert!(errors[0].contains(says), "{}", errors[0]);
        assert_eq!(errors[0].matches("csv line 1").count(), 1, "{}", errors[0]);
    }
    let long_header = format!("{}\n", "Q".repeat(300));
    let (_, errors) = outcome(long_header.as_bytes());
    assert!(errors[0].contains("of 300 characters"), "{}", errors[0]);
}
