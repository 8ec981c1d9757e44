use super::*;
use proptest::prelude::*;

fn std_id(raw: u16) -> CanId {
    CanId::standard(raw).unwrap()
}

fn ext_id(raw: u32) -> CanId {
    CanId::extended(raw).unwrap()
}

fn frame(s: &str) -> Frame {
    parse_frame(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn frame_err(s: &str) -> ParseError {
    parse_frame(s).expect_err(s)
}

fn line_err(s: &str) -> ParseError {
    parse_line(s).expect_err(s)
}

/// Parses, checks the canonical form, and checks it parses back to the same value.
fn canonical(s: &str, expected: &str) -> Frame {
    let f = frame(s);
    assert_eq!(f.to_string(), expected, "canonical form of {s}");
    assert_eq!(frame(expected), f);
    f
}

#[test]
fn candump_example_line() {
    let l = parse_line("(1436509052.249713) vcan0 123#DEADBEEF").unwrap();
    assert_eq!(l.timestamp, Timestamp::new(1_436_509_052, 249_713).unwrap());
    assert_eq!(l.interface.as_str(), "vcan0");
    assert_eq!(l.frame.id(), std_id(0x123));
    assert_eq!(l.frame.kind(), FrameKind::Classic { len8_dlc: None });
    assert_eq!(l.frame.data(), [0xDE, 0xAD, 0xBE, 0xEF]);
    assert_eq!(l.direction, None);
    assert_eq!(l.to_string(), "(1436509052.249713) vcan0 123#DEADBEEF");
}

#[test]
fn classic_standard_and_extended() {
    let f = canonical("7ff#", "7FF#");
    assert_eq!(f.id(), std_id(0x7FF));
    assert!(f.data().is_empty());
    let f = canonical("000#0102030405060708", "000#0102030405060708");
    assert_eq!(f.data().len(), 8);
    let f = canonical("1fffffff#aa", "1FFFFFFF#AA");
    assert_eq!(f.id(), ext_id(0x1FFF_FFFF));
    assert_eq!(f.linux_can_id(), 0x9FFF_FFFF);
    // An 8-digit id is extended even when its value would fit 11 bits.
    let f = canonical("00000123#11", "00000123#11");
    assert_eq!(f.id(), ext_id(0x123));
    assert_ne!(f, frame("123#11"));
}

#[test]
fn data_separators_are_read_never_written() {
    canonical("123#11.22.33", "123#112233");
    canonical("123#.11.22.", "123#1122");
    canonical("123#.", "123#");
    canonical("123##1.11.22", "123##11122");
    canonical("123#11.22.33.44.55.66.77.88_9", "123#1122334455667788_9");
}

#[test]
fn len8_dlc_is_kept() {
    let f = canonical("123#1122334455667788_c", "123#1122334455667788_C");
    assert_eq!(
        f.kind(),
        FrameKind::Classic {
            len8_dlc: Some(0xC)
        }
    );
    let f = canonical("123#R8_F", "123#R8_F");
    assert_eq!(
        f.kind(),
        FrameKind::Remote {
            len: 8,
            len8_dlc: Some(0xF)
        }
    );
}

#[test]
fn remote_frames() {
    let f = canonical("123#R", "123#R");
    assert_eq!(
        f.kind(),
        FrameKind::Remote {
            len: 0,
            len8_dlc: None
        }
    );
    assert!(f.data().is_empty());
    assert_eq!(f.linux_can_id(), 0x4000_0123);
    // `R0` is the same frame as `R`, and candump writes it as `R`.
    canonical("123#R0", "123#R");
    let f = canonical("12345678#r3", "12345678#R3");
    assert_eq!(
        f.kind(),
        FrameKind::Remote {
            len: 3,
            len8_dlc: None
        }
    );
    assert_eq!(f.linux_can_id(), 0xD234_5678);
}

#[test]
fn fd_frames() {
    let f = canonical("123##1DEADBEEF", "123##1DEADBEEF");
    assert_eq!(
        f.kind(),
        FrameKind::Fd {
            flags: FdFlags::BRS
        }
    );
    assert!(f.is_fd());
    let f = canonical("456##0", "456##0");
    assert!(f.data().is_empty());
    let f = canonical("00000456##f00", "00000456##F00");
    let FrameKind::Fd { flags } = f.kind() else {
        panic!()
    };
    assert!(flags.brs() && flags.esi() && flags.contains(FdFlags::FDF));
    assert_eq!(flags.bits(), 0xF);
    for len in CANFD_LENGTHS {
        let s = format!("123##5{}", "AB".repeat(len));
        assert_eq!(canonical(&s, &s).data().len(), len);
    }
}

#[test]
fn error_frames_are_kept() {
    let f = canonical("20000004#0004000000000000", "20000004#0004000000000000");
    assert_eq!(f.kind(), FrameKind::Error { len8_dlc: None });
    assert_eq!(f.id(), ext_id(0x4));
    assert_eq!(f.linux_can_id(), 0x2000_0004);
    assert_eq!(f, Frame::error(4, &[0, 4, 0, 0, 0, 0, 0, 0]).unwrap());
    canonical("3fffffff#", "3FFFFFFF#");
    canonical("20000080#0000000000000000_A", "20000080#0000000000000000_A");
}

#[test]
fn timestamps() {
    let l = parse_line("(0.000000) can0 123#").unwrap();
    assert_eq!(l.timestamp, Timestamp::new(0, 0).unwrap());
    assert_eq!(l.to_string(), "(0000000000.000000) can0 123#");
    let l = parse_line("(18446744073709551615.999999) can0 123#").unwrap();
    assert_eq!(l.timestamp.secs(), u64::MAX);
    assert_eq!(l.timestamp.micros(), 999_999);
    assert_eq!(
        l.timestamp.as_micros(),
        u128::from(u64::MAX) * 1_000_000 + 999_999
    );
    let a = Timestamp::new(10, 999_999).unwrap();
    let b = Timestamp::new(11, 1).unwrap();
    assert_eq!(b.since(a), Some(Duration::from_micros(2)));
    assert_eq!(a.since(b), None);
    assert!(Timestamp::new(1, 1_000_000).is_none());
}

#[test]
fn whitespace_direction_and_line_endings() {
    // candump pads interface names to the longest one with spaces; asc2log appends " R".
    let l = parse_line("(1436509052.249713)   can0 123#00 R\r\n").unwrap();
    assert_eq!(l.direction, Some(Direction::Rx));
    assert_eq!(l.to_string(), "(1436509052.249713) can0 123#00 R");
    let l = parse_line("(1436509052.249713)\tcan0\t123#00\tT").unwrap();
    assert_eq!(l.direction, Some(Direction::Tx));
    assert_eq!(l.to_string(), "(1436509052.249713) can0 123#00 T");
}

#[test]
fn line_rejections() {
    assert_eq!(line_err(""), ParseError::Line("empty"));
    assert_eq!(line_err(" \r"), ParseError::Line("empty"));
    assert_eq!(
        line_err("(1.000000)"),
        ParseError::Line("missing interface")
    );
    assert_eq!(
        line_err("(1.000000) can0"),
        ParseError::Line("missing frame")
    );
    assert!(matches!(
        line_err("(1.000000) can0 123# X"),
        ParseError::Direction(_)
    ));
    assert!(matches!(
        line_err("(1.000000) can0 123# R x"),
        ParseError::Line(_)
    ));
}

#[test]
fn timestamp_rejections() {
    for bad in [
        " (1.000000) can0 123#",
        "1.000000 can0 123#",
        "(1.000000)can0 123#",
        "(1.00000) can0 123#",
        "(1.0000000) can0 123#",
        "(1.000000000) can0 123#",
        "(1) can0 123#",
        "(.000000) can0 123#",
        "(1.) can0 123#",
        "(+1.000000) can0 123#",
        "(1.+00000) can0 123#",
        "(1.00000a) can0 123#",
        "(1,000000) can0 123#",
        "(18446744073709551616.000000) can0 123#",
        "(1.000000 can0 123#",
    ] {
        assert!(matches!(line_err(bad), ParseError::Timestamp(_)), "{bad}");
    }
    assert_eq!(
        line_err("(1.000000001) can0 123#"),
        ParseError::Timestamp(
            "9 fractional digits (candump -N nanoseconds) are not supported: 6 expected"
        )
    );
}

#[test]
fn interface_rejections() {
    assert_eq!(
        line_err("(1.000000) abcdefghijklmnop 123#"),
        ParseError::Interface("longer than 15 bytes (IFNAMSIZ - 1)")
    );
    assert!(parse_line("(1.000000) abcdefghijklmno 123#").is_ok());
    assert!(matches!(
        line_err("(1.000000) ca\u{7f}n 123#"),
        ParseError::Interface(_)
    ));
    assert!(matches!(
        line_err("(1.000000) ca\u{a0}n 123#"),
        ParseError::Interface(_)
    ));
    assert!(Interface::new("").is_err());
    assert!(Interface::new("a b").is_err());
    assert!(Interface::new("vcan0").is_ok());
}

#[test]
fn id_rejections() {
    assert_eq!(
        frame_err("800#"),
        ParseError::Id("standard (3-digit) id above 0x7FF")
    );
    assert_eq!(
        frame_err("FFF#"),
        ParseError::Id("standard (3-digit) id above 0x7FF")
    );
    assert!(matches!(frame_err("40000000#"), ParseError::Id(_)));
    assert!(matches!(frame_err("80000123#"), ParseError::Id(_)));
    assert!(matches!(frame_err("12#"), ParseError::Id(_)));
    assert!(matches!(frame_err("1234#"), ParseError::Id(_)));
    assert!(matches!(frame_err("1234567#"), ParseError::Id(_)));
    assert!(matches!(frame_err("123456789#"), ParseError::Id(_)));
    assert!(matches!(frame_err("#11"), ParseError::Id(_)));
    assert!(matches!(
        frame_err("12G#"),
        ParseError::Id("not hexadecimal")
    ));
    assert!(matches!(
        frame_err("+12#"),
        ParseError::Id("not hexadecimal")
    ));
    assert!(matches!(
        frame_err("00123#80:00:11223344#"),
        ParseError::Unsupported(_)
    ));
    assert!(CanId::standard(0x800).is_none());
    assert!(CanId::extended(0x2000_0000).is_none());
}

#[test]
fn separator_rejections() {
    assert!(matches!(frame_err("123"), ParseError::Separator(_)));
    assert!(matches!(frame_err("123DEADBEEF"), ParseError::Separator(_)));
    assert!(matches!(
        line_err("(1.000000) can0 12345678"),
        ParseError::Separator(_)
    ));
}

#[test]
fn data_hex_rejections() {
    assert_eq!(
        frame_err("123#1"),
        ParseError::DataHex("odd number of hex digits")
    );
    assert_eq!(
        frame_err("123#123"),
        ParseError::DataHex("odd number of hex digits")
    );
    assert_eq!(
        frame_err("123#1.2"),
        ParseError::DataHex("'.' inside a byte")
    );
    assert_eq!(
        frame_err("123#11..22"),
        ParseError::DataHex("two '.' in a row")
    );
    assert_eq!(frame_err("123#.."), ParseError::DataHex("two '.' in a row"));
    assert_eq!(frame_err("123#GG"), ParseError::DataHex("not a hex digit"));
    assert_eq!(
        frame_err("123#11 22"),
        ParseError::DataHex("not a hex digit")
    );
    assert_eq!(frame_err("123###0"), ParseError::FdFlags("not a hex digit"));
    assert_eq!(frame_err("123##0#"), ParseError::DataHex("not a hex digit"));
    assert_eq!(
        frame_err("123##011_9"),
        ParseError::DataHex("not a hex digit")
    );
    assert_eq!(frame_err("123#ÄÄ"), ParseError::DataHex("not a hex digit"));
}

#[test]
fn data_length_rejections() {
    assert_eq!(
        frame_err("123#112233445566778899"),
        ParseError::DataLength {
            len: 9,
            kind: "classic",
            allowed: "0..=8"
        }
    );
    assert_eq!(
        frame_err("20000000#112233445566778899"),
        ParseError::DataLength {
            len: 9,
            kind: "error",
            allowed: "0..=8"
        }
    );
    for len in (0..=70).filter(|l| !is_fd_len(*l)) {
        let s = format!("123##1{}", "00".repeat(len));
        assert!(
            matches!(frame_err(&s), ParseError::DataLength { len: l, kind: "CAN FD", .. } if l == len),
            "{len}"
        );
    }
    assert!(Frame::classic(std_id(1), &[0; 9]).is_err());
    assert!(Frame::fd(std_id(1), FdFlags::NONE, &[0; 9]).is_err());
    assert!(Frame::fd(std_id(1), FdFlags::NONE, &[0; 65]).is_err());
}

#[test]
fn remote_rejections() {
    assert!(matches!(frame_err("123#R9"), ParseError::RemoteLength(_)));
    assert!(matches!(frame_err("123#RA"), ParseError::RemoteLength(_)));
    assert!(matches!(frame_err("123#R11"), ParseError::RemoteLength(_)));
    assert!(matches!(frame_err("123#RR"), ParseError::RemoteLength(_)));
    assert!(matches!(frame_err("123#R "), ParseError::RemoteLength(_)));
    assert!(matches!(frame_err("123#R7_9"), ParseError::RawDlc(_)));
    assert!(matches!(frame_err("123#R_9"), ParseError::RawDlc(_)));
    assert!(Frame::remote(std_id(1), 9).is_err());
    assert!(
        Frame::remote(std_id(1), 1)
            .unwrap()
            .with_data(&[1])
            .is_err()
    );
}

#[test]
fn fd_flags_rejections() {
    assert_eq!(
        frame_err("123##"),
        ParseError::FdFlags("missing flags nibble after '##'")
    );
    assert_eq!(
        frame_err("123##G11"),
        ParseError::FdFlags("not a hex digit")
    );
    assert!(FdFlags::new(0x10).is_none());
}

#[test]
fn raw_dlc_rejections() {
    assert_eq!(
        frame_err("123#1122334455667788_8"),
        ParseError::RawDlc("must be 9..=F")
    );
    assert_eq!(
        frame_err("123#1122334455667788_"),
        ParseError::RawDlc("missing digit after '_'")
    );
    assert_eq!(
        frame_err("123#1122334455667788_99"),
        ParseError::RawDlc("must be a single hex digit 9..=F")
    );
    assert_eq!(
        frame_err("123#1122334455667788_G"),
        ParseError::RawDlc("must be a hex digit 9..=F")
    );
    assert_eq!(
        frame_err("123#11223344556677_9"),
        ParseError::RawDlc("only allowed with a length of 8")
    );
    assert_eq!(
        frame_err("123#_9"),
        ParseError::RawDlc("only allowed with a length of 8")
    );
    assert!(
        Frame::fd(std_id(1), FdFlags::NONE, &[0; 8])
            .unwrap()
            .with_len8_dlc(9)
            .is_err()
    );
}

#[test]
fn error_frame_rejections() {
    assert_eq!(
        frame_err("20000004#R"),
        ParseError::ErrorFrame("cannot be a remote frame")
    );
    assert_eq!(
        frame_err("20000004##1"),
        ParseError::ErrorFrame("cannot be a CAN FD frame")
    );
    assert!(Frame::error(0x2000_0000, &[]).is_err());
}

#[test]
fn with_data_keeps_id_and_kind() {
    let f = frame("00000456##100");
    let g = f.with_data(&[7; 12]).unwrap();
    assert_eq!(g.to_string(), format!("00000456##1{}", "07".repeat(12)));
    assert!(f.with_data(&[7; 13]).is_err());
    let c = frame("123#1122334455667788_9");
    assert_eq!(
        c.with_data(&[1; 8]).unwrap().kind(),
        FrameKind::Classic { len8_dlc: Some(9) }
    );
    assert_eq!(c.with_data(&[1; 4]).unwrap().to_string(), "123#01010101");
    assert_eq!(fd_len_round_up(13), Some(16));
    assert_eq!(fd_len_round_up(64), Some(64));
    assert_eq!(fd_len_round_up(65), None);
}

#[test]
fn read_log_skips_comments_and_numbers_lines() {
    let log = "(1.000001) can0 123#11\r\n\
               \n\
               DROPCOUNT: dropped 1 CAN frame on 'can0' socket (total drops 1)\n\
               (1.000002) can0 123#GG\n\
               \x20\x20\n\
               (1.000003) can0 456##1\n\
               (1.000004) can0 7FF#R";
    let items: Vec<_> = read_log(log.as_bytes()).collect();
    assert_eq!(items.len(), 4);
    assert_eq!(
        items[0].as_ref().unwrap().to_string(),
        "(0000000001.000001) can0 123#11"
    );
    let err = items[1].as_ref().unwrap_err();
    assert_eq!(err.line(), 4);
    assert_eq!(
        err.parse_error(),
        Some(ParseError::DataHex("not a hex digit"))
    );
    assert_eq!(err.to_string(), "line 4: data hex: not a hex digit");
    assert_eq!(items[2].as_ref().unwrap().frame.to_string(), "456##1");
    assert_eq!(items[3].as_ref().unwrap().frame.to_string(), "7FF#R");
}

#[test]
fn read_log_rejects_long_and_non_utf8_lines() {
    let mut log = b"(1.000000) can0 123#".to_vec();
    log.extend(std::iter::repeat_n(b'0', 2 * MAX_LINE_LEN));
    log.extend_from_slice(b"\n(1.000000) can0 123#\xFF\n(1.000001) can0 123#\n");
    // A small buffer so the long line arrives in many pieces.
    let reader = io::BufReader::with_capacity(7, log.as_slice());
    let items: Vec<_> = read_log(reader).collect();
    assert_eq!(items.len(), 3);
    assert_eq!(
        items[0].as_ref().unwrap_err().parse_error(),
        Some(ParseError::LineTooLong { max: MAX_LINE_LEN })
    );
    assert_eq!(
        items[1].as_ref().unwrap_err().parse_error(),
        Some(ParseError::NotUtf8)
    );
    assert_eq!(items[1].as_ref().unwrap_err().line(), 2);
    assert_eq!(items[2].as_ref().unwrap().timestamp.micros(), 1);
}

#[test]
fn read_log_line_at_the_limit_is_read() {
    // Padding whitespace makes a valid line of exactly MAX_LINE_LEN bytes.
    let head = "(1.000000) can0 123#";
    let line = format!("{head}{}", " ".repeat(MAX_LINE_LEN - head.len()));
    assert_eq!(line.len(), MAX_LINE_LEN);
    let items: Vec<_> = read_log(io::BufReader::with_capacity(5, line.as_bytes())).collect();
    assert!(items[0].is_ok());
    let longer = format!("{line} ");
    let items: Vec<_> = read_log(longer.as_bytes()).collect();
    assert!(items[0].is_err());
}

#[test]
fn read_log_refuses_lines_that_are_not_log_lines() {
    let log = "# recorded on the test bench\n\
               (1.000001) can0 123#11\n\
               garbage\n\
               \x20(1.000002) can0 123#22\n\
               123#33\n\
               \u{FEFF}(1.000003) can0 123#44\n\
               \t\r\n\
               #\n\
               (1.000004) can0 123#55\n";
    let items: Vec<_> = read_log(log.as_bytes()).collect();
    let summary: Vec<_> = items
        .iter()
        .map(|i| match i {
            Ok(l) => (0, Some(l.timestamp.micros()), None),
            Err(e) => (e.line(), None, e.parse_error()),
        })
        .collect();
    let refused = Some(ParseError::NotALogLine);
    assert_eq!(
        summary,
        [
            (0, Some(1), None),
            (3, None, refused),
            (4, None, refused),
            (5, None, refused),
            (6, None, refused),
            (0, Some(4), None),
        ]
    );
    assert!(
        items[1]
            .as_ref()
            .unwrap_err()
            .to_string()
            .starts_with("line 3: line: not a candump line")
    );
}

#[test]
fn read_log_numbers_the_lines() {
    let mut log = read_log(&b"# head\n\n(1.000000) can0 123#\njunk\n(1.000001) can0 123#"[..]);
    assert_eq!(log.line_number(), 0);
    assert!(log.next().unwrap().is_ok());
    assert_eq!(log.line_number(), 3);
    assert_eq!(log.next().unwrap().unwrap_err().line(), 4);
    assert!(log.next().unwrap().is_ok());
    assert_eq!(log.line_number(), 5);
    assert!(log.next().is_none());
    assert_eq!(log.line_number(), 5);
}

#[test]
fn read_log_checks_length_and_utf8_of_every_line() {
    // The defect of issue 11: lines that do not start with `(` were skipped unchecked.
    let mut log = vec![b'x'; 9000];
    log.extend_from_slice(b"\n# caf\xE9\n\xFF\xFE\n");
    log.extend(std::iter::repeat_n(b' ', MAX_LINE_LEN + 1));
    log.extend_from_slice(b"\n(1.000000) can0 123#\n");
    let items: Vec<_> = read_log(io::BufReader::with_capacity(7, log.as_slice())).collect();
    let errors: Vec<_> = items
        .iter()
        .filter_map(|i| i.as_ref().err())
        .map(|e| (e.line(), e.parse_error()))
        .collect();
    let long = Some(ParseError::LineTooLong { max: MAX_LINE_LEN });
    let utf8 = Some(ParseError::NotUtf8);
    assert_eq!(errors, [(1, long), (2, utf8), (3, utf8), (4, long)]);
    assert_eq!(items.len(), 5);
    assert!(items[4].is_ok());
}

#[test]
fn read_log_without_a_frame_is_refused() {
    for (log, lines) in [
        ("", 0),
        ("\n", 1),
        ("\n\r\n  \n", 3),
        ("# only a comment", 1),
        (
            "# a\nDROPCOUNT: dropped 1 CAN frame on 'can0' socket (total drops 1)\n",
            2,
        ),
    ] {
        let items: Vec<_> = read_log(log.as_bytes()).collect();
        assert_eq!(items.len(), 1, "{log:?}");
        let err = items[0].as_ref().unwrap_err();
        assert!(
            matches!(err, LogError::NoFrame { lines: n } if *n == lines),
            "{log:?}: {err}"
        );
        assert_eq!(err.line(), lines);
        assert!(err.to_string().starts_with("no frame in the log"));
    }
    // A log whose only lines are refused gives their errors, not NoFrame as well.
    let items: Vec<_> = read_log(&b"junk\n(1.0) can0 123#\n"[..]).collect();
    assert_eq!(items.len(), 2);
    assert!(
        items
            .iter()
            .all(|i| matches!(i, Err(LogError::Parse { .. })))
    );
}

struct FailingReader;
impl io::Read for FailingReader {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::other("boom"))
    }
}

#[test]
fn read_log_stops_after_io_error() {
    let items: Vec<_> = read_log(io::BufReader::new(FailingReader)).collect();
    assert_eq!(items.len(), 1);
    assert!(matches!(items[0], Err(LogError::Io { line: 1, .. })));
}

#[test]
fn write_log_writes_candump_lines() {
    let lines: Vec<LogLine> = [
        "(1436509052.249713) vcan0 123#DEADBEEF",
        "(1436509052.250000) vcan0 12345678##300 T",
    ]
    .iter()
    .map(|l| parse_line(l).unwrap())
    .collect();
    let mut out = Vec::new();
    write_log(&mut out, &lines).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "(1436509052.249713) vcan0 123#DEADBEEF\n(1436509052.250000) vcan0 12345678##300 T\n"
    );
}

fn arb_id() -> impl Strategy<Value = CanId> {
    prop_oneof![
        (0..=MAX_STANDARD_ID).prop_map(std_id),
        (0..=MAX_EXTENDED_ID).prop_map(ext_id),
    ]
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    let dlc = proptest::option::of(9u8..=15);
    prop_oneof![
        (
            arb_id(),
            proptest::collection::vec(any::<u8>(), 0..=8),
            dlc.clone()
        )
            .prop_map(|(id, d, dlc)| {
                let f = Frame::classic(id, &d).unwrap();
                match dlc {
                    Some(dlc) if d.len() == 8 => f.with_len8_dlc(dlc).unwrap(),
                    _ => f,
                }
            }),
        (arb_id(), 0u8..=8, dlc.clone()).prop_map(|(id, len, dlc)| {
            let f = Frame::remote(id, len).unwrap();
            match dlc {
                Some(dlc) if len == 8 => f.with_len8_dlc(dlc).unwrap(),
                _ => f,
            }
        }),
        (
            arb_id(),
            0u8..=15,
            proptest::sample::select(CANFD_LENGTHS.to_vec()),
            any::<[u8; 64]>()
        )
            .prop_map(|(id, flags, len, d)| Frame::fd(
                id,
                FdFlags::new(flags).unwrap(),
                &d[..len]
            )
            .unwrap()),
        (
            0..=MAX_EXTENDED_ID,
            proptest::collection::vec(any::<u8>(), 0..=8),
            dlc
        )
            .prop_map(|(class, d, dlc)| {
                let f = Frame::error(class, &d).unwrap();
                match dlc {
                    Some(dlc) if d.len() == 8 => f.with_len8_dlc(dlc).unwrap(),
                    _ => f,
                }
            }),
    ]
}

fn arb_line() -> impl Strategy<Value = LogLine> {
    (
        any::<u64>(),
        0u32..1_000_000,
        "[!-~]{1,15}",
        arb_frame(),
        proptest::option::of(prop_oneof![Just(Direction::Rx), Just(Direction::Tx)]),
    )
        .prop_map(|(secs, micros, iface, frame, direction)| LogLine {
            timestamp: Timestamp::new(secs, micros).unwrap(),
            interface: Interface::new(iface).unwrap(),
            frame,
            direction,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn display_parse_round_trip(line in arb_line()) {
        let text = line.to_string();
        prop_assert_eq!(parse_line(&text), Ok(line.clone()));
        // Lowercase hex (and `r`) parse to the same frame.
        let lower = format!("({}) {} {}", line.timestamp, line.interface, line.frame.to_string().to_ascii_lowercase());
        prop_assert_eq!(parse_line(&lower), Ok(LogLine { direction: None, ..line.clone() }));
        // So do `.` separators between the data bytes.
        let dotted: Vec<String> = line.frame.data().iter().map(|b| format!("{b:02x}")).collect();
        if let FrameKind::Classic { len8_dlc: None } = line.frame.kind() {
            let s = format!("{}#{}", line.frame.id(), dotted.join("."));
            prop_assert_eq!(parse_frame(&s), Ok(line.frame.clone()));
        }
    }

    #[test]
    fn read_log_round_trip(lines in proptest::collection::vec(arb_line(), 1..20)) {
        let mut out = Vec::new();
        write_log(&mut out, &lines).unwrap();
        let back: Vec<LogLine> = read_log(out.as_slice()).collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(back, lines);
    }

    #[test]
    fn arbitrary_strings_never_panic(s in "\\PC*") {
        if let Ok(line) = parse_line(&s) {
            prop_assert_eq!(parse_line(&line.to_string()), Ok(line));
        }
        let _ = parse_frame(&s);
    }

    #[test]
    fn near_valid_strings_never_panic(s in "\\([0-9.]{0,12}\\)[ \t]{1,2}[a-z0-9]{0,3}[ ]{1,2}[0-9A-Fa-f]{0,9}[#Rr_.]{0,3}[0-9A-Fa-f._#Rr]{0,40}( [RT])?") {
        if let Ok(line) = parse_line(&s) {
            prop_assert_eq!(parse_line(&line.to_string()), Ok(line));
        }
    }

    #[test]
    fn arbitrary_bytes_read_log_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        for line in read_log(bytes.as_slice()).flatten() {
            prop_assert_eq!(parse_line(&line.to_string()), Ok(line));
        }
    }

    /// Arbitrary bytes (and a mix of valid lines, junk and comments) read as a log: never a
    /// panic; every item is a frame, a typed parse error on an existing line or, alone, NoFrame.
    #[test]
    fn arbitrary_logs_parse_or_give_typed_errors(
        parts in proptest::collection::vec(prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300),
            arb_line().prop_map(|l| format!("{l}\n").into_bytes()),
            "(#|DROPCOUNT: |[ \t\r]*)[^\n]{0,40}\n".prop_map(String::into_bytes),
        ], 0..8),
        capacity in 1usize..64,
    ) {
        let bytes = parts.concat();
        let lines = bytes.split(|&b| b == b'\n').count();
        let items: Vec<_> =
            read_log(io::BufReader::with_capacity(capacity, bytes.as_slice())).collect();
        let mut last = 0;
        for (i, item) in items.iter().enumerate() {
            match item {
                Ok(line) => prop_assert_eq!(parse_line(&line.to_string()), Ok(line.clone())),
                Err(LogError::Parse { line, .. }) => {
                    prop_assert!(*line > last && *line <= lines);
                    last = *line;
                }
                Err(LogError::NoFrame { .. }) => prop_assert_eq!((i, items.len()), (0, 1)),
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
        }
        prop_assert!(!items.is_empty());
    }

    /// A line over MAX_LINE_LEN bytes is refused as too long whatever it holds and wherever it
    /// is; the lines around it are read.
    #[test]
    fn any_line_over_the_limit_is_refused(
        start in prop_oneof![Just(""), Just("("), Just("#"), Just(" "), Just("DROPCOUNT: ")],
        fill in any::<u8>().prop_filter("no newline", |&b| b != b'\n'),
        extra in 1usize..3 * MAX_LINE_LEN,
        before in arb_line(),
        after in arb_line(),
        capacity in 1usize..9000,
    ) {
        let mut log = format!("{before}\n{start}").into_bytes();
        log.extend(std::iter::repeat_n(fill, MAX_LINE_LEN + extra - start.len()));
        log.extend_from_slice(format!("\r\n{after}").as_bytes());
        let items: Vec<_> =
            read_log(io::BufReader::with_capacity(capacity, log.as_slice())).collect();
        prop_assert_eq!(items.len(), 3);
        prop_assert_eq!(items[0].as_ref().ok(), Some(&before));
        let err = items[1].as_ref().unwrap_err();
        prop_assert_eq!(err.line(), 2);
        prop_assert_eq!(err.parse_error(), Some(ParseError::LineTooLong { max: MAX_LINE_LEN }));
        prop_assert_eq!(items[2].as_ref().ok(), Some(&after));
    }
}

/// The table in docs/canlog.md.
#[test]
fn doc_examples() {
    for (read, written) in [
        ("123#de.ad.be.ef", "123#DEADBEEF"),
        ("00000123#11", "00000123#11"),
        ("123#1122334455667788_c", "123#1122334455667788_C"),
        ("123#R0", "123#R"),
        ("123#R", "123#R"),
        ("12345678#r8_9", "12345678#R8_9"),
        ("123##1DEADBEEF", "123##1DEADBEEF"),
        ("20000004#0004000000000000", "20000004#0004000000000000"),
    ] {
        canonical(read, written);
    }
    let l = parse_line("(1.000000)   can0 7FF# R").unwrap();
    assert_eq!(l.to_string(), "(0000000001.000000) can0 7FF# R");
    assert_eq!(
        frame("12345678#r8_9").kind(),
        FrameKind::Remote {
            len: 8,
            len8_dlc: Some(9)
        }
    );
    assert_eq!(
        frame("123#1122334455667788_c").kind(),
        FrameKind::Classic {
            len8_dlc: Some(0xC)
        }
    );
    assert_eq!(frame("00000123#11").id(), ext_id(0x123));
}
