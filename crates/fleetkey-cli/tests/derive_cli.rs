//! `fleetkey derive` and `fleetkey roll` as scripts call them: exact output, and every bad input
//! refused with exit 2, a message naming the field, and nothing on stdout.

use std::io::Write;
use std::process::{Command, Stdio};

const MASTER: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

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
    // The process may exit before reading stdin (argument errors): ignore a broken pipe.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let out = child.wait_with_output().unwrap();
    Outcome {
        code: out.status.code().unwrap(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn derive_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "derive",
        "--usage",
        "auth",
        "--generation",
        "1",
        "--revision",
        "0",
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn derive_prints_the_contract_key() {
    let out = fleetkey(&derive_args(&["--serial", "ECU-0001"]), MASTER);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "b74f33e48ea41214a767aabd363c25bd\n");
    let hex = fleetkey(&derive_args(&["--serial-hex", "4543552d30303031"]), MASTER);
    assert_eq!(hex.stdout, out.stdout);
}

#[test]
fn roll_seed_is_32_bytes() {
    let out = fleetkey(
        &[
            "derive",
            "--usage",
            "roll-seed",
            "--generation",
            "1",
            "--revision",
            "0",
            "--serial",
            "A",
        ],
        &format!("{MASTER}\n"),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.trim().len(), 64);
}

#[test]
fn roll_prints_the_contract_key() {
    let vectors: serde_json::Value =
        serde_json::from_str(include_str!("../../../tests/vectors/roll-v1.json")).unwrap();
    let case = &vectors["cases"][4];
    let out = fleetkey(
        &[
            "roll",
            "--epoch",
            &case["epoch"].to_string(),
            "--channel",
            &case["channel"].to_string(),
        ],
        case["seed"].as_str().unwrap(),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), case["key"].as_str().unwrap());
}

#[track_caller]
fn refused(args: &[&str], stdin: &str, field: &str) {
    let out = fleetkey(args, stdin);
    assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
    assert!(out.stdout.is_empty(), "{args:?} printed {:?}", out.stdout);
    assert!(
        out.stderr.contains(field),
        "{args:?}: stderr {:?} should name {field}",
        out.stderr
    );
}

#[test]
fn bad_inputs_are_refused_naming_the_field() {
    let revision_max = |r: &str| {
        vec![
            "derive",
            "--usage",
            "auth",
            "--generation",
            "1",
            "--revision",
            r,
            "--serial",
            "S",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>()
    };
    let too_high = revision_max("268435456");
    refused(
        &too_high.iter().map(String::as_str).collect::<Vec<_>>(),
        MASTER,
        "--revision",
    );
    let max = revision_max("268435455");
    let ok = fleetkey(&max.iter().map(String::as_str).collect::<Vec<_>>(), MASTER);
    assert_eq!(ok.code, 0);
    refused(
        &[
            "derive",
            "--usage",
            "auth",
            "--generation",
            "4294967296",
            "--revision",
            "0",
            "--serial",
            "S",
        ],
        MASTER,
        "--generation",
    );
    refused(
        &[
            "derive",
            "--usage",
            "auth",
            "--generation",
            "-1",
            "--revision",
            "0",
            "--serial",
            "S",
        ],
        MASTER,
        "--generation",
    );
    refused(&derive_args(&["--serial", ""]), MASTER, "--serial");
    refused(
        &derive_args(&["--serial", &"x".repeat(41)]),
        MASTER,
        "--serial",
    );
    refused(
        &derive_args(&["--serial-hex", "zz"]),
        MASTER,
        "--serial-hex",
    );
    refused(&derive_args(&["--serial-hex", ""]), MASTER, "--serial-hex");
    refused(
        &[
            "derive",
            "--usage",
            "frobnicate",
            "--generation",
            "1",
            "--revision",
            "0",
            "--serial",
            "S",
        ],
        MASTER,
        "--usage",
    );
    refused(&derive_args(&["--serial", "S"]), "00", "master");
    refused(&derive_args(&["--serial", "S"]), &"g".repeat(64), "master");
    refused(&derive_args(&["--serial", "S"]), &"0".repeat(66), "master");
    refused(
        &["roll", "--epoch", "18446744073709551616", "--channel", "0"],
        MASTER,
        "--epoch",
    );
    refused(
        &["roll", "--epoch", "1", "--channel", "4294967296"],
        MASTER,
        "--channel",
    );
    refused(
        &["roll", "--epoch", "1", "--channel", "0"],
        &MASTER[..32],
        "roll seed",
    );
}
