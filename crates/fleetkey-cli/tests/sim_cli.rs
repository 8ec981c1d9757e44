//! The simulator from the command line: a gateway and an ECU as two `fleetkey` processes on one
//! UDP loopback bus; `fleetkey sim run` and its capture verified offline with
//! `fleetkey can verify --home`, also after a round trip through can-utils' log2asc/asc2log.
#![cfg(feature = "sim")]

use std::io::Write;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const PASSPHRASE: &str = "sim cli passphrase";

fn fleetkey(home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetkey"));
    cmd.arg("--home")
        .arg(home)
        .env("FLEETKEY_PASSPHRASE", PASSPHRASE)
        .env("FLEETKEY_ACTOR", "tester")
        .stdin(Stdio::null());
    cmd
}

#[track_caller]
fn ok(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A free UDP port on loopback (the socket is closed again; the OS does not hand it out at once).
fn free_port() -> String {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().to_string()
}

#[test]
fn gateway_and_ecu_processes_share_a_udp_bus() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("fleet");
    let transport = dir.path().join("transport.hex");
    std::fs::write(&transport, "000102030405060708090a0b0c0d0e0f\n").unwrap();
    let out = fleetkey(&home)
        .args([
            "init",
            "--fleet",
            "udp",
            "--scheme",
            "governed",
            "--no-backup",
            "--kdf-log-n",
            "10",
        ])
        .arg("--she-transport-key-file")
        .arg(&transport)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (gw_addr, ecu_addr) = (free_port(), free_port());
    let factory = dir.path().join("factory");
    let gateway = fleetkey(&home)
        .args([
            "--json",
            "sim",
            "gateway",
            "--ecus",
            "1",
            "--seconds",
            "120",
            "--until-frames",
            "10",
        ])
        .args(["--bind", &gw_addr, "--peer", &ecu_addr])
        .arg("--she-transport-key-file")
        .arg(&transport)
        .arg("--factory-dir")
        .arg(&factory)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let file = factory.join("ECU-0000.json");
    let started = Instant::now();
    while !file.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no factory file"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let ecu = fleetkey(&home)
        .args(["--json", "sim", "ecu", "--seconds", "120", "--frames", "40"])
        .args(["--bind", &ecu_addr, "--peer", &gw_addr])
        .arg("--factory")
        .arg(&file)
        .output()
        .unwrap();
    let gateway = gateway.wait_with_output().unwrap();
    let gw = ok(&gateway);
    let ecu = ok(&ecu);
    assert_eq!(ecu["seed"], serde_json::json!([1, 0]), "{ecu}");
    assert!(ecu["sent"].as_u64().unwrap() >= 10, "{ecu}");
    assert_eq!(
        ecu["counters"]["she_accepted"], 4,
        "initial load over ISO-TP"
    );
    assert_eq!(ecu["counters"]["records_accepted"], 1);
    let member = &gw["members"][0];
    assert_eq!(member["serial"], "ECU-0000");
    assert_eq!(member["seed"], serde_json::json!([1, 0]));
    assert_eq!(member["pending_updates"], 0);
    assert!(member["accepted"].as_u64().unwrap() >= 10, "{gw}");
    assert_eq!(member["authentication"], 0, "{gw}");
    assert_eq!(gw["malformed_datagrams"], 0);
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn pipe(program: &Path, args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn sim_run_capture_verifies_offline_and_survives_can_utils() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("sim");
    let summary = ok(&fleetkey(Path::new("unused"))
        .args([
            "--json",
            "sim",
            "run",
            "--ecus",
            "4",
            "--seconds",
            "2",
            "--keep",
        ])
        .arg(&home)
        .env("FLEETKEY_PASSPHRASE", "fleetkey demo passphrase")
        .output()
        .unwrap());
    let capture = PathBuf::from(summary["capture"].as_str().unwrap());
    assert!(summary["attacker"]["replayed"].as_u64().unwrap() >= 1);
    assert_eq!(summary["attacks_accepted"], 0, "{summary}");
    assert!(summary["audit_events"].as_u64().unwrap() > 10);

    let verify = |log: &Path| -> serde_json::Value {
        let out = fleetkey(&home)
            .env("FLEETKEY_PASSPHRASE", "fleetkey demo passphrase")
            .args(["can", "verify", "--json"])
            .arg(log)
            .output()
            .unwrap();
        // The attacker's frames are in the capture: exit 1, every verdict on stdout.
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let report = verify(&capture);
    // Reading the group seeds out of the fleet is key material: the audit record says so.
    let events = ok(&fleetkey(&home)
        .env("FLEETKEY_PASSPHRASE", "fleetkey demo passphrase")
        .args(["audit", "show", "--action", "network.group_seeds", "--json"])
        .output()
        .unwrap());
    let events = events.as_array().unwrap();
    assert!(
        events.iter().any(|e| e["details"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("can verify")),
        "no network.group_seeds event of can verify: {events:?}"
    );
    let s = &report["summary"];
    assert_eq!(s["accepted"], summary["offline"]["accepted"]);
    assert!(s["replay"].as_u64().unwrap() >= 1, "{s}");
    assert!(s["authentication"].as_u64().unwrap() >= 3, "{s}");
    assert!(
        s["skipped"].as_u64().unwrap() > 0,
        "ISO-TP transfers are skipped"
    );
    let frames = report["frames"].as_array().unwrap();
    let lines = std::fs::read_to_string(&capture).unwrap().lines().count();
    assert_eq!(frames.len(), lines, "a verdict for every frame");
    assert!(
        frames
            .iter()
            .any(|f| f["result"] == "ok" && f["device"] == "ECU-0002")
    );

    if std::env::var("FLEETKEY_SKIP_CAN_UTILS").as_deref() == Ok("1") {
        return;
    }
    let (Some(log2asc), Some(asc2log)) = (find_on_path("log2asc"), find_on_path("asc2log")) else {
        panic!("log2asc/asc2log not on PATH: install can-utils, or set FLEETKEY_SKIP_CAN_UTILS=1");
    };
    let original = std::fs::read(&capture).unwrap();
    let asc = pipe(&log2asc, &["vcan0"], &original);
    let back = pipe(&asc2log, &[], &asc);
    let parse = |bytes: &[u8]| -> Vec<fleetkey::canlog::LogLine> {
        fleetkey::canlog::read_log(bytes)
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let (a, b) = (parse(&original), parse(&back));
    assert_eq!(a.len(), b.len());
    // ASC keeps times relative to its header's date: rebase them on the original's first frame.
    let shift = a[0].timestamp.as_micros() as i128 - b[0].timestamp.as_micros() as i128;
    let mut rebased = Vec::new();
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.frame.id(), y.frame.id());
        assert_eq!(x.frame.data(), y.frame.data());
        assert_eq!(x.frame.is_fd(), y.frame.is_fd());
        let t = (y.timestamp.as_micros() as i128 + shift) as u64;
        assert_eq!(
            t as u128,
            x.timestamp.as_micros(),
            "times survive to the microsecond"
        );
        let mut line = y.clone();
        line.timestamp =
            fleetkey::canlog::Timestamp::new(t / 1_000_000, (t % 1_000_000) as u32).unwrap();
        rebased.push(line);
    }
    let round = dir.path().join("round-trip.log");
    let mut text = Vec::new();
    fleetkey::canlog::write_log(&mut text, &rebased).unwrap();
    std::fs::write(&round, text).unwrap();
    let again = verify(&round);
    assert_eq!(
        again["summary"], report["summary"],
        "the same verdicts after the round trip"
    );
}

#[test]
fn demo_tells_the_whole_story_and_checks_it() {
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().join("demo");
    let out = Command::new(env!("CARGO_BIN_EXE_fleetkey"))
        .args(["demo", "--devices", "4", "--seconds", "1", "--keep"])
        .arg(&keep)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "attacker: replay of ECU-0000's last frame: REJECTED (replay)",
        "attacker: a frame with a guessed MAC: REJECTED (authentication)",
        "attacker: a frame made with a generation-1 group seed: REJECTED",
        "REFUSED (ECU-0000: refused a group seed: generation 1: generation: revoked)",
        "after the deny record, the same grant: REFUSED (denied)",
        "attacker: a frame made with ECU-0001's extracted group seed: REJECTED",
        "every SHE slot empty: true",
        "hash chain intact",
        "resynchronised",
        "none accepted",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(
        !text.contains("ACCEPTED"),
        "no attack gets through:\n{text}"
    );
    let capture = keep.with_extension("capture.log");
    assert!(std::fs::read_to_string(&capture).unwrap().lines().count() > 500);
    assert!(text.contains(&capture.display().to_string()));
}
