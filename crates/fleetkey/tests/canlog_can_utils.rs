//! Round trip of a generated candump log through can-utils: `log2asc` (our log -> Vector ASC)
//! then `asc2log` (ASC -> candump log), parsed back with `fleetkey::canlog`.
//!
//! What survives ASC and is compared: id (standard/extended), remote request length, data,
//! CAN FD flags BRS and ESI, and times relative to the first frame (to the microsecond).
//! What does not survive and is not generated: the interface name (ASC keeps channel numbers,
//! asc2log names them `can0`...), absolute times (asc2log takes the date from the ASC header
//! or the current time), the FDF flag bit, the `_X` raw DLC, error frame contents.
//! asc2log appends the direction field `R`.
//!
//! Needs can-utils (`apt-get install can-utils`). Without `log2asc` on PATH the test fails,
//! unless FLEETKEY_SKIP_CAN_UTILS=1.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use fleetkey::canlog::{
    CANFD_LENGTHS, CanId, Direction, FdFlags, Frame, Interface, LogLine, Timestamp, read_log,
    write_log,
};

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The tools, or `None` when the test is to be skipped.
fn can_utils() -> Option<(PathBuf, PathBuf)> {
    if std::env::var("FLEETKEY_SKIP_CAN_UTILS").as_deref() == Ok("1") {
        eprintln!("FLEETKEY_SKIP_CAN_UTILS=1: skipping the can-utils round trip");
        return None;
    }
    let missing = |tool: &str| -> ! {
        panic!(
            "`{tool}` is not on PATH: install can-utils (`apt-get install -y can-utils`), \
             or set FLEETKEY_SKIP_CAN_UTILS=1 to skip this test"
        )
    };
    let log2asc = find_on_path("log2asc").unwrap_or_else(|| missing("log2asc"));
    let asc2log = find_on_path("asc2log").unwrap_or_else(|| missing("asc2log"));
    Some((log2asc, asc2log))
}

/// Runs `program args` with `input` on stdin; panics with its stderr unless it exits 0.
fn run(program: &PathBuf, args: &[&str], input: Vec<u8>) -> Vec<u8> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "{} failed ({}): {}",
        program.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// xorshift64*: deterministic test data without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
    fn id(&mut self) -> CanId {
        match self.below(4) {
            0 => CanId::standard(0x7FF).unwrap(),
            1 => CanId::standard(self.below(0x800) as u16).unwrap(),
            2 => CanId::extended(self.below(0x800) as u32).unwrap(),
            _ => CanId::extended(self.below(0x2000_0000) as u32).unwrap(),
        }
    }
}

fn generated_log() -> Vec<LogLine> {
    let mut rng = Rng(0x5EED_F1EE_7CA4_0001);
    let mut micros_total: u64 = 1_436_509_052_249_713;
    let interface = Interface::new("vcan0").unwrap();
    let mut lines = Vec::new();
    for i in 0..400u64 {
        let frame = match i % 4 {
            0 => {
                let len = rng.below(9) as usize;
                Frame::classic(rng.id(), &rng.bytes(len)).unwrap()
            }
            1 => Frame::remote(rng.id(), rng.below(9) as u8).unwrap(),
            _ => {
                let len = CANFD_LENGTHS[rng.below(CANFD_LENGTHS.len() as u64) as usize];
                let flags = FdFlags::new(rng.below(4) as u8).unwrap();
                Frame::fd(rng.id(), flags, &rng.bytes(len)).unwrap()
            }
        };
        // Gaps from 0 to ~3 s, so microseconds wrap into seconds often.
        micros_total += rng.below(3_000_000);
        let timestamp =
            Timestamp::new(micros_total / 1_000_000, (micros_total % 1_000_000) as u32).unwrap();
        lines.push(LogLine {
            timestamp,
            interface: interface.clone(),
            frame,
            direction: None,
        });
    }
    // The classic edge cases, by hand.
    let extra = [
        "(1436510000.000000) vcan0 000#",
        "(1436510000.000001) vcan0 00000000#",
        "(1436510000.000002) vcan0 1FFFFFFF#0102030405060708",
        "(1436510000.999999) vcan0 7FF#R8",
        "(1436510001.000000) vcan0 123##1DEADBEEF",
        "(1436510001.000001) vcan0 00000456##3",
    ];
    lines.extend(extra.iter().map(|l| l.parse::<LogLine>().unwrap()));
    lines
}

#[test]
fn round_trip_through_log2asc_and_asc2log() {
    let Some((log2asc, asc2log)) = can_utils() else {
        return;
    };
    let original = generated_log();
    let fd_brs = original
        .iter()
        .filter(
            |l| matches!(l.frame.kind(), fleetkey::canlog::FrameKind::Fd { flags } if flags.brs()),
        )
        .count();
    assert!(fd_brs > 20, "the generated log has CAN FD frames with BRS");

    let mut log = Vec::new();
    write_log(&mut log, &original).unwrap();
    let asc = run(&log2asc, &["vcan0"], log);
    let back_text = run(&asc2log, &[], asc);
    let back_text = String::from_utf8(back_text).unwrap();
    let back: Vec<LogLine> = read_log(back_text.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(back.len(), original.len(), "asc2log gave back every frame");

    let asc2log_frames = back_text
        .lines()
        .filter(|l| l.starts_with('('))
        .map(|l| l.split(' ').nth(2).unwrap());
    let (t0, u0) = (original[0].timestamp, back[0].timestamp);
    for ((orig, got), asc2log_frame) in original.iter().zip(&back).zip(asc2log_frames) {
        assert_eq!(got.frame, orig.frame, "frame of {orig}");
        // asc2log formats with can-utils' snprintf_canframe: our Display must match it exactly.
        assert_eq!(got.frame.to_string(), asc2log_frame, "frame text of {orig}");
        assert_eq!(
            got.timestamp.since(u0),
            orig.timestamp.since(t0),
            "relative time of {orig}"
        );
        assert_eq!(got.interface.as_str(), "can0");
        assert_eq!(got.direction, Some(Direction::Rx));
    }
    eprintln!(
        "can-utils round trip: {} frames ({fd_brs} CAN FD with BRS) match",
        back.len()
    );
}

#[test]
fn can_utils_accepts_every_form_we_write() {
    let Some((log2asc, _)) = can_utils() else {
        return;
    };
    // log2asc rejects a line it cannot parse with "incorrect line format" and exit code 1.
    let lines = [
        "(1436509052.249713) vcan0 123#1122334455667788_C",
        "(1436509052.249714) vcan0 123#R8_9",
        "(1436509052.249715) vcan0 20000004#0004000000000000",
        "(1436509052.249716) vcan0 123##F00",
        "(0000000001.000000) vcan0 123# T",
    ];
    let parsed: Vec<LogLine> = lines.iter().map(|l| l.parse().unwrap()).collect();
    let mut log = Vec::new();
    write_log(&mut log, &parsed).unwrap();
    let asc = String::from_utf8(run(&log2asc, &["vcan0"], log)).unwrap();
    let data_lines = asc.lines().filter(|l| l.starts_with(' ')).count();
    assert_eq!(
        data_lines,
        lines.len(),
        "log2asc wrote one ASC line per frame:\n{asc}"
    );
    assert!(asc.contains("ErrorFrame"));
}
