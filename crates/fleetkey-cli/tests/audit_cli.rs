//! `fleetkey audit verify` covers what `audit show` filters on: a device index changed in the
//! SQLite file behind fleetkey's back (device A1's event pointed at A2) fails verification with
//! a message naming `audit_subjects` and the event, while an untampered fleet verifies.

use std::path::{Path, PathBuf};

#[path = "support/cli.rs"]
mod cli;
use cli::{fails, json, ok};

fn init(dir: &Path) -> PathBuf {
    let home = dir.join("home");
    ok(
        &home,
        &[
            "init",
            "--fleet",
            "tractors",
            "--scheme",
            "derived",
            "--kdf-log-n",
            "10",
            "--no-backup",
        ],
    );
    home
}

fn seqs(events: &serde_json::Value) -> Vec<u64> {
    events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect()
}

#[test]
fn a_device_index_pointed_at_another_device_fails_verify() {
    let dir = tempfile::tempdir().unwrap();
    let home = init(dir.path());
    ok(&home, &["device", "add", "A1"]);
    ok(&home, &["device", "add", "A2"]);
    let verified = json(&home, &["audit", "verify"]);
    assert_eq!(verified["ok"], true, "an untampered fleet verifies");
    let about_a1 = seqs(&json(&home, &["audit", "show", "--device", "A1"]));
    assert_eq!(about_a1.len(), 1, "{about_a1:?}");
    let seq = about_a1[0];

    let db = rusqlite::Connection::open(home.join(fleetkey::home::STORE_FILE)).unwrap();
    let changed = db
        .execute(
            "UPDATE audit_subjects SET serial = CAST('A2' AS BLOB) WHERE serial = CAST('A1' AS BLOB)",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    assert!(
        seqs(&json(&home, &["audit", "show", "--device", "A1"])).is_empty(),
        "audit show reads the index"
    );

    let message = format!("audit_subjects: event {seq} lists A2, its record names A1");
    fails(&home, &["audit", "verify"], 1, &message);
    let out = cli::run(&home, &["audit", "verify", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert!(
        report["error"].as_str().unwrap().contains(&message),
        "{report}"
    );

    db.execute(
        "UPDATE audit_subjects SET serial = CAST('A1' AS BLOB) WHERE seq = ?1",
        [i64::try_from(seq).unwrap()],
    )
    .unwrap();
    assert_eq!(json(&home, &["audit", "verify"]), verified);
    assert_eq!(
        seqs(&json(&home, &["audit", "show", "--device", "A1"])),
        about_a1
    );
}
