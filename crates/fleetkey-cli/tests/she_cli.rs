//! `fleetkey she build` and `fleetkey she verify` as other tools call them: the SHE
//! specification's example byte for byte, a proof that does not verify (exit 1), and every
//! malformed input refused with exit 2, a message naming the field, and nothing on stdout.

use std::path::{Path, PathBuf};
use std::process::Command;

const VECTORS: &str = include_str!("../../../tests/vectors/she-key-update.json");

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

fn fleetkey(args: &[&str]) -> Outcome {
    let out = Command::new(env!("CARGO_BIN_EXE_fleetkey"))
        .args(args)
        .output()
        .unwrap();
    Outcome {
        code: out.status.code().unwrap(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// A directory of its own per test, with key files.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("fleetkey-she-cli-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn file(&self, name: &str, contents: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path.to_str().unwrap().to_owned()
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn case() -> serde_json::Value {
    let json: serde_json::Value = serde_json::from_str(VECTORS).unwrap();
    json["cases"][0].clone()
}

fn s(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The build arguments of the specification's example, with `overrides` replacing values.
fn build_args(dir: &Dir, overrides: &[(&str, &str)]) -> Vec<String> {
    let c = case();
    let auth = dir.file("auth.key", &format!("{}\n", s(&c["auth_key"])));
    let new = dir.file("new.key", &format!("  {}  \n", s(&c["new_key"])));
    let mut pairs: Vec<(String, String)> = vec![
        ("--uid".into(), s(&c["uid"])),
        ("--key-id".into(), s(&c["key_id"])),
        ("--auth-id".into(), s(&c["auth_id"])),
        ("--counter".into(), s(&c["counter"])),
        ("--flags".into(), s(&c["flags"])),
        ("--auth-key-file".into(), auth),
        ("--new-key-file".into(), new),
    ];
    for (flag, value) in overrides {
        let slot = pairs.iter_mut().find(|(f, _)| f == flag).unwrap();
        slot.1 = (*value).to_owned();
    }
    let mut args = vec!["she".to_owned(), "build".to_owned()];
    for (f, v) in pairs {
        args.push(f);
        args.push(v);
    }
    args
}

fn run(args: &[String]) -> Outcome {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    fleetkey(&refs)
}

#[test]
fn build_prints_the_spec_example() {
    let dir = Dir::new("build");
    let out = run(&build_args(&dir, &[]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.ends_with('\n') && out.stdout.lines().count() == 1,
        "{}",
        out.stdout
    );
    let got: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let c = case();
    for m in ["m1", "m2", "m3", "m4", "m5"] {
        assert_eq!(got[m], c[m], "{m}");
    }
    assert_eq!(got.as_object().unwrap().len(), 5);
    // --json is accepted and changes nothing; slots by name and flags in hex work too.
    let mut args = build_args(
        &dir,
        &[("--key-id", "KEY_1"), ("--auth-id", "master_ecu_key")],
    );
    args.push("--json".into());
    let again = run(&args);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.stdout, out.stdout);
    let hex = run(&build_args(
        &dir,
        &[("--flags", "0x0"), ("--counter", "0x1")],
    ));
    assert_eq!(hex.stdout, out.stdout);
}

#[test]
fn verify_accepts_the_spec_proof() {
    let dir = Dir::new("verify-ok");
    let c = case();
    let key = dir.file("new.key", &format!("{}\n", s(&c["new_key"])));
    let out = fleetkey(&[
        "she",
        "verify",
        "--m4",
        &s(&c["m4"]),
        "--m5",
        &s(&c["m5"]),
        "--new-key-file",
        &key,
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("counter 1"), "{}", out.stdout);
    assert!(out.stdout.contains("key id 4 (KEY_1)"), "{}", out.stdout);
    assert!(out.stderr.is_empty(), "{}", out.stderr);
}

#[test]
fn verify_refuses_a_proof_that_does_not_authenticate() {
    let dir = Dir::new("verify-bad");
    let c = case();
    let right = dir.file("new.key", &s(&c["new_key"]));
    let wrong = dir.file("auth.key", &s(&c["auth_key"]));
    let m4 = s(&c["m4"]);
    let m5 = s(&c["m5"]);
    let mut flipped_m5 = m5.clone();
    flipped_m5.replace_range(31.., if m5.ends_with('0') { "1" } else { "0" });
    let mut flipped_m4 = m4.clone();
    flipped_m4.replace_range(40..41, if &m4[40..41] == "0" { "1" } else { "0" });
    for (m4, m5, key) in [
        (m4.as_str(), m5.as_str(), wrong.as_str()),
        (m4.as_str(), flipped_m5.as_str(), right.as_str()),
        (flipped_m4.as_str(), m5.as_str(), right.as_str()),
    ] {
        let out = fleetkey(&[
            "she",
            "verify",
            "--m4",
            m4,
            "--m5",
            m5,
            "--new-key-file",
            key,
        ]);
        assert_eq!(out.code, 1, "{}", out.stderr);
        assert!(out.stdout.is_empty(), "{}", out.stdout);
        assert!(
            out.stderr.contains("does not authenticate"),
            "{}",
            out.stderr
        );
    }
}

fn assert_input_error(out: &Outcome, field: &str) {
    assert_eq!(out.code, 2, "{field}: {}", out.stderr);
    assert!(out.stdout.is_empty(), "{field}: stdout {:?}", out.stdout);
    assert!(
        out.stderr.contains(field),
        "expected {field} in: {}",
        out.stderr
    );
}

#[test]
fn build_refuses_malformed_input() {
    let dir = Dir::new("build-bad");
    let short_key = dir.file("short.key", "000102030405060708090a0b0c0d0e");
    let long_key = dir.file("long.key", "000102030405060708090a0b0c0d0e0f00");
    let bad_hex = dir.file("bad.key", "000102030405060708090a0b0c0d0e0g");
    let missing = dir.path().join("missing.key").to_str().unwrap().to_owned();
    let cases: &[(&str, &str)] = &[
        ("--uid", "0000000000000000000000000001"),     // 14 bytes
        ("--uid", "00000000000000000000000000000001"), // 16 bytes
        ("--uid", "00000000000000000000000000000g"),   // bad hex
        ("--uid", ""),
        ("--key-id", "0"),
        ("--key-id", "15"),
        ("--key-id", "256"),
        ("--key-id", "-1"),
        ("--key-id", "KEY_11"),
        ("--key-id", "14"), // RAM_KEY: not with M1-M3
        ("--auth-id", "0"),
        ("--auth-id", "15"),
        ("--auth-id", "5"), // KEY_2 may not authorise KEY_1
        ("--counter", "268435456"),
        ("--counter", "4294967296"),
        ("--counter", "-1"),
        ("--counter", "one"),
        ("--flags", "32"),
        ("--flags", "0x20"),
        ("--flags", "255"),
        ("--flags", "-1"),
        ("--auth-key-file", &short_key),
        ("--auth-key-file", &long_key),
        ("--auth-key-file", &bad_hex),
        ("--auth-key-file", &missing),
        ("--new-key-file", &short_key),
        ("--new-key-file", &missing),
    ];
    for (field, value) in cases {
        let out = run(&build_args(&dir, &[(field, value)]));
        assert_input_error(&out, field);
    }
    // MASTER_ECU_KEY only under itself.
    let out = run(&build_args(&dir, &[("--key-id", "1"), ("--auth-id", "4")]));
    assert_input_error(&out, "--auth-id");
}

#[test]
fn verify_refuses_malformed_input() {
    let dir = Dir::new("verify-input");
    let c = case();
    let key = dir.file("new.key", &s(&c["new_key"]));
    let short_key = dir.file("short.key", "0f0e0d0c");
    let missing = dir.path().join("missing.key").to_str().unwrap().to_owned();
    let m4 = s(&c["m4"]);
    let m5 = s(&c["m5"]);
    // Key id nibble 0 (SECRET_KEY) in M4.
    let mut m4_bad_id = m4.clone();
    m4_bad_id.replace_range(30..31, "0");
    let cases: Vec<(&str, String, String, String)> = vec![
        ("--m4", m4[..62].to_owned(), m5.clone(), key.clone()),
        ("--m4", format!("{m4}00"), m5.clone(), key.clone()),
        ("--m4", format!("{}zz", &m4[..62]), m5.clone(), key.clone()),
        ("--m4", m4_bad_id, m5.clone(), key.clone()),
        ("--m5", m4.clone(), m5[..30].to_owned(), key.clone()),
        ("--m5", m4.clone(), format!("{}x", &m5[..31]), key.clone()),
        ("--new-key-file", m4.clone(), m5.clone(), short_key),
        ("--new-key-file", m4.clone(), m5.clone(), missing),
    ];
    for (field, m4, m5, key) in &cases {
        let out = fleetkey(&[
            "she",
            "verify",
            "--m4",
            m4,
            "--m5",
            m5,
            "--new-key-file",
            key,
        ]);
        assert_input_error(&out, field);
    }
}

#[test]
fn help_shows_an_example() {
    for sub in ["build", "verify"] {
        let out = fleetkey(&["she", sub, "--help"]);
        assert_eq!(out.code, 0);
        assert!(out.stdout.contains("Example"), "{}", out.stdout);
        assert!(out.stdout.contains("--new-key-file"), "{}", out.stdout);
    }
}
