//! The key manager from the command line: the walkthrough, errors that change nothing, and a
//! bulk import killed mid-way that a rerun completes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

#[path = "support/cli.rs"]
mod cli;
use cli::{fails, fleetkey, json, ok};

fn init(dir: &Path, scheme: &str) -> PathBuf {
    let home = dir.join("home");
    let transport = dir.join("transport.hex");
    std::fs::write(&transport, "7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a\n").unwrap();
    let out = fleetkey(&home)
        .args([
            "init",
            "--fleet",
            "tractors",
            "--scheme",
            scheme,
            "--kdf-log-n",
            "10",
            "--she-transport-key-file",
        ])
        .arg(&transport)
        .args(if scheme == "stored" {
            &[][..]
        } else {
            &["--no-backup"][..]
        })
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    home
}

#[test]
fn walkthrough_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let home = init(dir.path(), "derived");
    let csv = dir.path().join("devices.csv");
    std::fs::write(
        &csv,
        "serial,she_uid,labels\nECU-1,000000000000000000000000001234,line=1\nECU-2,,line=2\n",
    )
    .unwrap();
    let report = json(&home, &["device", "import", csv.to_str().unwrap()]);
    assert_eq!(report["added"], 2);
    let p = json(&home, &["device", "provision", "ECU-1"]);
    assert_eq!(p["device"]["state"], "active");
    assert_eq!(p["keys"]["auth"].as_str().unwrap().len(), 32);
    assert_eq!(p["she"].as_array().unwrap().len(), 4);
    let u = json(&home, &["device", "refresh", "ECU-1", "--reason", "test"]);
    assert_eq!(u["device"]["revision"], 1);
    let g = json(
        &home,
        &["generation", "rotate", "--reason", "yearly", "--no-backup"],
    );
    assert_eq!(g["generation"], 2);
    let keys = dir.path().join("keys.jsonl");
    json(
        &home,
        &[
            "device",
            "provision",
            "--all",
            "--out",
            keys.to_str().unwrap(),
        ],
    );
    assert_eq!(std::fs::read_to_string(&keys).unwrap().lines().count(), 1);
    let status = json(&home, &["rotation", "status"]);
    assert_eq!(status["pending"], 2);
    fails(
        &home,
        &["generation", "destroy", "1", "--reason", "early"],
        1,
        "2 devices still depend on generation 1",
    );
    let updates = dir.path().join("updates.jsonl");
    json(
        &home,
        &[
            "device",
            "refresh",
            "--all",
            "--generation",
            "1",
            "--out",
            updates.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read_to_string(&updates).unwrap().lines().count(),
        2
    );
    assert_eq!(json(&home, &["rotation", "status"])["pending"], 0);
    json(
        &home,
        &["generation", "destroy", "1", "--reason", "migrated"],
    );
    json(&home, &["device", "revoke", "ECU-2", "--reason", "stolen"]);
    let d = json(
        &home,
        &["device", "decommission", "ECU-2", "--reason", "scrapped"],
    );
    assert_eq!(d["state"], "destroyed-compromised");
    let listed = json(&home, &["device", "list", "--state", "active"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let audit = json(&home, &["audit", "verify"]);
    assert_eq!(audit["ok"], true);
    let events = json(&home, &["audit", "show", "--device", "ECU-2"]);
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "device.revoke")
    );
    assert!(ok(&home, &["status"]).contains("fleet tractors (derived scheme)"));
}

#[test]
fn errors_say_what_to_do_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere");
    let stderr = fails(&missing, &["status"], 1, "no fleet at");
    assert!(stderr.contains("fleetkey init"));
    let home = init(dir.path(), "derived");
    let before = json(&home, &["audit", "verify"])["events"].clone();
    fails(&home, &["device", "show", "nope"], 1, "no device nope");
    ok(&home, &["device", "add", "ECU-1"]);
    fails(&home, &["device", "add", "ECU-1"], 1, "already registered");
    fails(
        &home,
        &["device", "suspend", "ECU-1", "--reason", "x"],
        1,
        "cannot go from pre-active to suspended",
    );
    fails(&home, &["device", "add", &"x".repeat(41)], 2, "serial");
    fails(
        &home,
        &["device", "add", "ECU-9", "--she-uid", "1234"],
        2,
        "--she-uid",
    );
    fails(
        &home,
        &["device", "list", "--state", "sleeping"],
        2,
        "--state",
    );
    let csv = dir.path().join("bad.csv");
    std::fs::write(&csv, "serial,she_uid\nA,\nB,nothex\n").unwrap();
    fails(
        &home,
        &["device", "import", csv.to_str().unwrap()],
        2,
        "csv line 3: she_uid",
    );
    // A command that needs a key asks for the passphrase (reading ones do not: below).
    let out = fleetkey(&home)
        .env("FLEETKEY_PASSPHRASE", "wrong passphrase")
        .args(["device", "provision", "ECU-1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("FLEETKEY_PASSPHRASE"));
    let out = fleetkey(&home)
        .env_remove("FLEETKEY_PASSPHRASE")
        .args(["device", "provision", "ECU-1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("passphrase: FLEETKEY_PASSPHRASE is not set"),
        "{stderr}"
    );
    assert!(
        stderr.contains("hint: export FLEETKEY_PASSPHRASE"),
        "{stderr}"
    );
    // Only the one `device add` changed anything.
    let after = json(&home, &["audit", "verify"])["events"].clone();
    assert_eq!(after.as_u64().unwrap(), before.as_u64().unwrap() + 1);
    assert_eq!(
        json(&home, &["device", "list"]).as_array().unwrap().len(),
        1
    );
}

/// Commands that touch no key run without the passphrase (unset, stdin closed: nothing could
/// ask for it); commands that use a key still ask and fail clearly, changing nothing.
#[test]
fn reading_commands_need_no_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    ok(
        &home,
        &[
            "init",
            "--fleet",
            "tractors",
            "--scheme",
            "governed",
            "--kdf-log-n",
            "10",
            "--no-backup",
            "--publish",
        ],
    );
    ok(&home, &["device", "add", "ECU-1"]);
    ok(&home, &["device", "provision", "ECU-1"]);
    let key_file = dir.path().join("jane.pub");
    std::fs::write(&key_file, "11".repeat(32)).unwrap();
    ok(
        &home,
        &[
            "grant",
            "issue",
            "--subject",
            "jane",
            "--role",
            "technician",
            "--scope",
            "ECU-",
            "--valid-days",
            "1",
            "--public-key-file",
            key_file.to_str().unwrap(),
        ],
    );
    ok(
        &home,
        &[
            "token",
            "issue",
            "--principal",
            "st-1",
            "--role",
            "station",
            "--expires",
            "1d",
        ],
    );
    let before = json(&home, &["audit", "verify"])["events"].clone();
    let without = |args: &[&str]| {
        fleetkey(&home)
            .env_remove("FLEETKEY_PASSPHRASE")
            .args(args)
            .output()
            .unwrap()
    };
    for args in [
        &["status"][..],
        &["device", "list"],
        &["device", "show", "ECU-1"],
        &["generation", "list"],
        &["rotation", "status"],
        &["audit", "show"],
        &["audit", "verify"],
        &["token", "list"],
        &["grant", "list"],
        &["grant", "show", "1"],
        &["governance", "show"],
        &["status", "--json"],
    ] {
        let out = without(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stdout.is_empty(), "{args:?}");
    }
    for args in [
        &["device", "refresh", "ECU-1", "--reason", "x"][..],
        &["governance", "publish", "--reason", "x"],
        &["generation", "rotate", "--reason", "x", "--no-backup"],
    ] {
        let out = without(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("FLEETKEY_PASSPHRASE is not set"),
            "{args:?}: {stderr}"
        );
    }
    assert_eq!(json(&home, &["audit", "verify"])["events"], before);
}

fn registered(home: &Path) -> u64 {
    let status = json(home, &["status"]);
    status["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| pair[1].as_u64().unwrap())
        .sum()
}

/// A bulk import killed mid-way leaves whole batches and a verifying audit chain; a rerun
/// registers the rest.
#[test]
fn killed_import_is_completed_by_a_rerun() {
    const DEVICES: u64 = 200_000;
    let dir = tempfile::tempdir().unwrap();
    let home = init(dir.path(), "derived");
    let csv = dir.path().join("many.csv");
    let mut text = String::from("serial,labels\n");
    for i in 0..DEVICES {
        text.push_str(&format!("K-{i:08},batch\n"));
    }
    std::fs::write(&csv, text).unwrap();
    let mut child = fleetkey(&home)
        .args(["device", "import", csv.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = 0;
    while Instant::now() < deadline {
        seen = registered(&home);
        if seen > 0 || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    let after_kill = registered(&home);
    assert!(after_kill >= seen);
    assert!(
        !status.success() || after_kill == DEVICES,
        "the import ran to completion before the kill"
    );
    assert_eq!(after_kill % 10_000, 0, "only whole batches are committed");
    assert_eq!(json(&home, &["audit", "verify"])["ok"], true);
    let report = json(&home, &["device", "import", csv.to_str().unwrap()]);
    assert_eq!(report["already_present"].as_u64().unwrap(), after_kill);
    assert_eq!(report["added"].as_u64().unwrap(), DEVICES - after_kill);
    assert_eq!(registered(&home), DEVICES);
    assert_eq!(json(&home, &["audit", "verify"])["ok"], true);
}
