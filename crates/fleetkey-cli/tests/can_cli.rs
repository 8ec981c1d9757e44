//! `fleetkey can sign` and `fleetkey can verify` on candump logs: round trips, rejections with
//! exit 1, bad input with exit 2 and nothing on stdout.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const KEY: &str = "2b7e151628aed2a6abf7158809cf4f3c";
const OTHER_KEY: &str = "ffeeddccbbaa99887766554433221100";
const SEED: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

fn fleetkey(args: &[&str], stdin: &str) -> Outcome {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleetkey"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let out = child.wait_with_output().unwrap();
    Outcome {
        code: out.status.code().unwrap(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// A scratch directory per test, under the target directory.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("can_cli-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

const CLASSIC_LOG: &str = "\
(1700000000.000000) can0 123#DEADBEEF
(1700000000.010000) can0 123#01020304
(1700000000.020000) can0 7DF#
(1700000000.030000) can0 18DAF110#0011
(1700000000.040000) can0 123#FF
";

const FD_LOG: &str = "\
(1700000000.000000) can1 18FF0012##10001
(1700000000.001000) can1 18FF0012##1000102030405
(1700000000.002000) can1 123##4AABB
(1700000000.003000) can1 18FF0012##3CAFE
";

fn sign(profile: &str, key_file: &str, log: &str) -> String {
    let out = fleetkey(
        &["can", "sign", "--profile", profile, "--key-file", key_file],
        log,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.is_empty());
    out.stdout
}

fn verify(profile: &str, key_file: &str, log: &str, extra: &[&str]) -> Outcome {
    let mut args = vec![
        "can",
        "verify",
        "--profile",
        profile,
        "--key-file",
        key_file,
    ];
    args.extend_from_slice(extra);
    fleetkey(&args, log)
}

#[test]
fn classic_p1_sign_then_verify() {
    let dir = scratch("classic");
    let key = write(&dir, "session.key", &format!("{KEY}\n"));
    let signed = sign("p1", &key, CLASSIC_LOG);
    let lines: Vec<&str> = signed.lines().collect();
    assert_eq!(lines.len(), 5);
    // Same timestamp, interface and id; payload || FV (1 byte) || MAC (3 bytes).
    assert_eq!(lines[0], "(1700000000.000000) can0 123#DEADBEEF0144C5C0");
    assert!(lines[1].starts_with("(1700000000.010000) can0 123#0102030402"));
    assert!(lines[2].starts_with("(1700000000.020000) can0 7DF#01"));
    assert!(lines[3].starts_with("(1700000000.030000) can0 18DAF110#001101"));
    for line in &lines {
        let data = line.split('#').nth(1).unwrap();
        assert!(data.len() <= 16, "classic frame stays <= 8 bytes: {line}");
    }
    let out = verify("p1", &key, &signed, &[]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(
        out.stdout,
        "line 1: 123 ok fv=1\nline 2: 123 ok fv=2\nline 3: 7DF ok fv=1\nline 4: 18DAF110 ok fv=1\n\
         line 5: 123 ok fv=3\n\
         summary: 5 frames, 5 accepted, 0 rejected (malformed 0, no key 0, replay 0, authentication 0)\n"
    );
    assert!(out.stderr.is_empty());
}

#[test]
fn fd64_sign_then_verify() {
    let dir = scratch("fd");
    let key = write(&dir, "session.key", KEY);
    let input = write(&dir, "in.log", FD_LOG);
    let output = dir.join("out.log");
    let out = fleetkey(
        &[
            "can",
            "sign",
            "--profile",
            "fd64",
            "--key-file",
            &key,
            &input,
            "-o",
            output.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.is_empty());
    let signed = std::fs::read_to_string(&output).unwrap();
    let lines: Vec<&str> = signed.lines().collect();
    // FD stays FD with its flags: 2 + 2 (FV) + 8 (MAC) = 12 bytes, 6 + 10 = 16 bytes.
    assert!(lines[0].starts_with("(1700000000.000000) can1 18FF0012##100010001"));
    assert_eq!(lines[0].len() - lines[0].find("##").unwrap() - 3, 24);
    assert!(lines[1].starts_with("(1700000000.001000) can1 18FF0012##10001020304050002"));
    assert!(lines[2].starts_with("(1700000000.002000) can1 123##4AABB0001"));
    let out = verify("fd64", &key, &signed, &["--json"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["profile"], "fd64");
    assert_eq!(report["summary"]["accepted"], 4);
    assert_eq!(report["summary"]["rejected"], 0);
    let fvs: Vec<_> = report["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["fv"].as_u64().unwrap())
        .collect();
    assert_eq!(fvs, [1, 2, 1, 3]);
    assert_eq!(report["frames"][2]["data_id"], 0x123);
}

#[test]
fn replay_tamper_and_other_key_are_rejected() {
    let dir = scratch("reject");
    let key = write(&dir, "session.key", KEY);
    let other = write(&dir, "other.key", OTHER_KEY);
    let signed = sign("p1", &key, CLASSIC_LOG);
    let lines: Vec<&str> = signed.lines().collect();
    let other_signed = sign("p1", &other, "(1700000000.050000) can0 123#AB\n");
    // Line 2 replays line 1; line 3 has a flipped payload bit; line 4 is signed with another key.
    let mut tampered = lines[1].to_owned();
    let hash = tampered.find('#').unwrap();
    tampered.replace_range(hash + 1..hash + 2, "1");
    let log = format!(
        "{}\n{}\n{}\n{}\n",
        lines[0],
        lines[0],
        tampered,
        other_signed.trim_end()
    );
    let out = verify("p1", &key, &log, &[]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert_eq!(
        out.stdout,
        "line 1: 123 ok fv=1\nline 2: 123 rejected\nline 3: 123 rejected\nline 4: 123 rejected\n\
         summary: 4 frames, 1 accepted, 3 rejected (malformed 0, no key 0, replay 1, authentication 2)\n"
    );
    assert!(
        out.stderr.contains("3 of 4 frames rejected"),
        "{}",
        out.stderr
    );

    let json = verify("p1", &key, &log, &["--json"]);
    assert_eq!(json.code, 1);
    let report: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(report["frames"][1]["result"], "rejected");
    assert!(report["frames"][1].get("fv").is_none());
    assert_eq!(report["summary"]["replay"], 1);
    assert_eq!(report["summary"]["authentication"], 2);

    // The whole log under the wrong key: every frame rejected.
    let out = verify("p1", &other, &signed, &[]);
    assert_eq!(out.code, 1);
    assert!(
        out.stdout
            .ends_with("(malformed 0, no key 0, replay 0, authentication 5)\n"),
        "{}",
        out.stdout
    );
}

#[test]
fn malformed_secured_frame_is_counted() {
    let dir = scratch("short");
    let key = write(&dir, "session.key", KEY);
    let out = verify("p1", &key, "(1700000000.000000) can0 123#0102\n", &[]);
    assert_eq!(out.code, 1);
    assert!(
        out.stdout.contains("(malformed 1, no key 0"),
        "{}",
        out.stdout
    );
}

#[test]
fn rolling_keys_follow_the_timestamps() {
    let dir = scratch("rolling");
    let seed = write(&dir, "seed.hex", SEED);
    let roll = [
        "--seed-file",
        seed.as_str(),
        "--channel",
        "1",
        "--origin-ms",
        "1700000000000",
        "--period-ms",
        "60000",
    ];
    let log = "(1700000059.900000) can0 123#01\n(1700000060.100000) can0 123#02\n(1700000120.000000) can0 123#03\n";
    let mut args = vec!["can", "sign", "--profile", "p2"];
    args.extend_from_slice(&roll);
    let signed = fleetkey(&args, log);
    assert_eq!(signed.code, 0, "{}", signed.stderr);
    let mut args = vec!["can", "verify", "--profile", "p2"];
    args.extend_from_slice(&roll);
    let out = fleetkey(&args, &signed.stdout);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.starts_with(
        "line 1: 123 ok fv=1 epoch=0\nline 2: 123 ok fv=2 epoch=1\nline 3: 123 ok fv=3 epoch=2\n"
    ));
    // Another channel derives other keys.
    let mut args = vec!["can", "verify", "--profile", "p2"];
    args.extend_from_slice(&roll);
    args[7] = "2";
    assert_eq!(fleetkey(&args, &signed.stdout).code, 1);
}

#[test]
fn data_id_option_and_fv_start() {
    let dir = scratch("dataid");
    let key = write(&dir, "session.key", KEY);
    let log = "(1700000000.000000) can0 123#01\n(1700000000.000001) can0 456#02\n";
    let out = fleetkey(
        &[
            "can",
            "sign",
            "--profile",
            "p1",
            "--key-file",
            &key,
            "--data-id",
            "0x0042",
            "--fv-start",
            "0x1ff",
        ],
        log,
    );
    assert_eq!(out.code, 2, "--fv-start is decimal");
    let out = fleetkey(
        &[
            "can",
            "sign",
            "--profile",
            "p1",
            "--key-file",
            &key,
            "--data-id",
            "0x0042",
            "--fv-start",
            "511",
        ],
        log,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    // One counter for the one DataId: FVs 511 (0x1FF) and 512 (0x200, low byte 00).
    assert!(
        out.stdout.contains("123#01FF") && out.stdout.contains("456#0200"),
        "{}",
        out.stdout
    );
    // A fresh receiver (latest 0) reaches FV 511 with its extra verify attempts
    // (0xFF, 0x1FF = 0xFF + 2^8), then follows the carry to 0x200.
    let verified = verify("p1", &key, &out.stdout, &["--data-id", "66"]);
    assert_eq!(verified.code, 0, "{}", verified.stdout);
    assert!(verified.stdout.contains("ok fv=511") && verified.stdout.contains("ok fv=512"));
    let no_attempts = verify(
        "p1",
        &key,
        &out.stdout,
        &["--data-id", "66", "--attempts", "0"],
    );
    assert_eq!(no_attempts.code, 1, "{}", no_attempts.stdout);
    // Without the DataId the MAC input differs: rejected.
    assert_eq!(verify("p1", &key, &out.stdout, &[]).code, 1);
}

#[test]
fn frames_that_do_not_fit_are_refused() {
    let dir = scratch("fit");
    let key = write(&dir, "session.key", KEY);
    let cases = [
        (
            "p1",
            "(1.000000) can0 123#0102030405\n",
            "5-byte payload too long for profile p1",
        ),
        (
            "fd64",
            "(1.000000) can0 123#01\n",
            "classic frame: secured length 11",
        ),
        (
            "fd64",
            "(1.000000) can0 123##0010203\n",
            "secured length 13",
        ),
        ("p1", "(1.000000) can0 123#R\n", "remote frame"),
    ];
    for (profile, log, message) in cases {
        let out = fleetkey(
            &["can", "sign", "--profile", profile, "--key-file", &key],
            log,
        );
        assert_eq!(out.code, 2, "{log}");
        assert!(out.stdout.is_empty());
        assert!(
            out.stderr.contains("line 1:") && out.stderr.contains(message),
            "{}",
            out.stderr
        );
        assert!(out.stderr.contains("hint:"), "{}", out.stderr);
    }
}

#[test]
fn bad_input_exits_2_with_nothing_on_stdout() {
    let dir = scratch("bad");
    let key = write(&dir, "session.key", KEY);
    let short_key = write(&dir, "short.key", "2b7e1516");
    let not_hex = write(&dir, "nothex.key", "zz7e151628aed2a6abf7158809cf4f3c");
    let seed = write(&dir, "seed.hex", SEED);
    let good = "(1700000000.000000) can0 123#01\n";
    let cases: Vec<(Vec<&str>, &str, &str)> = vec![
        (
            vec!["sign", "--profile", "p3", "--key-file", &key],
            good,
            "--profile",
        ),
        (
            vec!["verify", "--profile", "P1", "--key-file", &key],
            good,
            "--profile",
        ),
        (
            vec!["sign", "--profile", "p1", "--key-file", &short_key],
            good,
            "--key-file",
        ),
        (
            vec!["verify", "--profile", "p1", "--key-file", &not_hex],
            good,
            "--key-file",
        ),
        (
            vec!["sign", "--profile", "p1", "--key-file", "/nonexistent/key"],
            good,
            "--key-file",
        ),
        (
            vec![
                "sign",
                "--profile",
                "p1",
                "--seed-file",
                &key,
                "--channel",
                "1",
                "--origin-ms",
                "0",
                "--period-ms",
                "1",
            ],
            good,
            "--seed-file",
        ),
        (
            vec![
                "sign",
                "--profile",
                "p1",
                "--seed-file",
                &seed,
                "--channel",
                "1",
                "--origin-ms",
                "0",
                "--period-ms",
                "0",
            ],
            good,
            "--period-ms",
        ),
        (
            vec![
                "verify",
                "--profile",
                "p1",
                "--seed-file",
                &seed,
                "--channel",
                "1",
                "--origin-ms",
                "1800000000000",
                "--period-ms",
                "1000",
            ],
            good,
            "line 1: time",
        ),
        (
            vec!["sign", "--profile", "p1", "--key-file", &key],
            "(1700000000.000000) can0 123#01\n(1700000000.1) can0 123#02\n",
            "line 2: timestamp",
        ),
        (
            vec!["verify", "--profile", "p1", "--key-file", &key],
            "# header\n(1700000000.000000) can0 123#01\n(1700000000.000000) can0 123#0G\n",
            "line 3: data hex",
        ),
        (
            vec!["verify", "--profile", "p1", "--key-file", &key],
            "(1700000000.000000) can0 123#0102030405060708\n(1700000000.000000) can0 20000004#0004000000000000\n",
            "line 2: error frame",
        ),
        (
            vec![
                "sign",
                "--profile",
                "p1",
                "--key-file",
                &key,
                "--fv-start",
                "0",
            ],
            good,
            "--fv-start",
        ),
        (
            vec![
                "sign",
                "--profile",
                "p1",
                "--key-file",
                &key,
                "--data-id",
                "65536",
            ],
            good,
            "--data-id",
        ),
        (
            vec![
                "verify",
                "--profile",
                "p1",
                "--key-file",
                &key,
                "--attempts",
                "17",
            ],
            good,
            "--attempts",
        ),
        (vec!["sign", "--profile", "p1"], good, "--key-file"),
        (
            vec![
                "sign",
                "--profile",
                "p1",
                "--key-file",
                &key,
                "--seed-file",
                &seed,
            ],
            good,
            "--seed-file",
        ),
        (
            vec!["sign", "--profile", "p1", "--seed-file", &seed],
            good,
            "--channel",
        ),
    ];
    for (args, stdin, field) in cases {
        let mut full = vec!["can"];
        full.extend_from_slice(&args);
        let out = fleetkey(&full, stdin);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
        assert!(out.stderr.contains(field), "{args:?}: {}", out.stderr);
    }
}

#[test]
fn help_has_an_example() {
    for command in ["sign", "verify"] {
        let out = fleetkey(&["can", command, "--help"], "");
        assert_eq!(out.code, 0);
        assert!(out.stdout.contains("Example"), "{}", out.stdout);
        assert!(out.stdout.contains("--key-file") && out.stdout.contains("--seed-file"));
    }
}
