//! `fleetkey policy` and `fleetkey lifecycle run` as a person and cron use them: the policy is
//! shown, changed and refused; what is due is said; a run killed with kill -9 at random points
//! of a migration, then run again, leaves every device on the new generation exactly one
//! revision up, one new generation only, every key update delivered, and the audit chain whole.
//!
//! The kill test uses 20,000 devices (the issue names 100,000; 20,000 keeps CI time down and
//! still spans 40 batches of 500, so the kills land mid-migration).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

#[path = "support/cli.rs"]
mod cli;

use cli::{fails, fleetkey, json, ok};

const DAY_MS: i64 = 86_400_000;
const DEVICES: usize = 20_000;

fn init(dir: &Path) -> PathBuf {
    let home = dir.join("fleet");
    ok(
        &home,
        &[
            "init",
            "--fleet",
            "cron",
            "--scheme",
            "derived",
            "--no-backup",
            "--kdf-log-n",
            "10",
        ],
    );
    home
}

#[test]
fn policy_show_set_due_and_bad_values() {
    let dir = tempfile::tempdir().unwrap();
    let home = init(dir.path());
    let shown = json(&home, &["policy", "show"]);
    assert_eq!(shown["policy"]["rotation_period"], "1y");
    assert_eq!(shown["policy"]["acceptance_period"], "90d");
    assert_eq!(shown["defaults"], true);
    let before = json(&home, &["audit", "verify"]);
    for (args, message) in [
        (vec!["--acceptance-period", "400d"], "--acceptance-period"),
        (vec!["--rotation-period", "0d"], "longer than zero"),
        (vec!["--rotation-period", "-3d"], "negative"),
        (vec!["--destroy-after", "3 fortnights"], "unknown unit"),
        (vec!["--rotation-period", "3y"], "SP 800-57"),
        (vec!["--token-lifetime", "2y"], "--token-lifetime"),
    ] {
        let mut all = vec!["policy", "set", "--reason", "test"];
        all.extend(args);
        fails(&home, &all, 2, message);
    }
    assert_eq!(
        json(&home, &["audit", "verify"]),
        before,
        "a refused value changed nothing"
    );
    let set = json(
        &home,
        &[
            "policy",
            "set",
            "--rotation-period",
            "180d",
            "--acceptance-period",
            "30d",
            "--reason",
            "twice a year",
        ],
    );
    assert_eq!(set["rotation_period"], "180d");
    let due = json(&home, &["policy", "due"]);
    let rotate = due
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["action"] == "rotate")
        .unwrap();
    assert_eq!(rotate["ready"], false);
    assert!(
        rotate["message"]
            .as_str()
            .unwrap()
            .contains("due for rotation in 17"),
        "{rotate}"
    );
    // The clock of tests: 200 days on, the rotation is overdue.
    let late = fleetkey(&home)
        .args(["rotation", "status"])
        .env("FLEETKEY_CLOCK_OFFSET_MS", (200 * DAY_MS).to_string())
        .output()
        .unwrap();
    let text = String::from_utf8(late.stdout).unwrap();
    assert!(
        text.contains("OVERDUE generation 1 due for rotation 20 days ago"),
        "{text}"
    );
    // A rotation with no devices needs no --out; a dry run changes nothing.
    let plan: serde_json::Value = serde_json::from_slice(
        &fleetkey(&home)
            .args(["lifecycle", "run", "--dry-run", "--json"])
            .env("FLEETKEY_CLOCK_OFFSET_MS", (200 * DAY_MS).to_string())
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(plan["plan"][0]["action"], "rotate");
    assert_eq!(
        json(&home, &["generation", "list"])
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    for help in [["policy", "set"], ["lifecycle", "run"]] {
        let h = ok(&home, &[help[0], help[1], "--help"]);
        assert!(h.contains("Example"), "{help:?}");
    }
}

fn devices_by_generation_revision(home: &Path) -> HashMap<(i64, i64), i64> {
    let db = rusqlite::Connection::open(home.join("fleet.db")).unwrap();
    let mut stmt = db
        .prepare("SELECT generation, revision, count(*) FROM devices GROUP BY generation, revision")
        .unwrap();
    stmt.query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn decode_subjects(mut blob: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some((&len, rest)) = blob.split_first() {
        let (s, rest) = rest.split_at(usize::from(len));
        out.push(s.to_vec());
        blob = rest;
    }
    out
}

/// Every serial named by a `device.refresh` event, once per naming.
fn refreshed_serials(home: &Path) -> Vec<Vec<u8>> {
    let db = rusqlite::Connection::open(home.join("fleet.db")).unwrap();
    let mut stmt = db
        .prepare("SELECT subjects FROM audit WHERE action = 'device.refresh'")
        .unwrap();
    stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .flat_map(|b| decode_subjects(&b.unwrap()))
        .collect()
}

#[test]
fn lifecycle_run_killed_mid_migration_resumes_without_bumping_twice() {
    let dir = tempfile::tempdir().unwrap();
    let home = init(dir.path());
    let csv = cli::write_devices_csv(dir.path(), "L", DEVICES);
    let keys = dir.path().join("keys.jsonl");
    ok(
        &home,
        &[
            "device",
            "import",
            csv.to_str().unwrap(),
            "--provision-out",
            keys.to_str().unwrap(),
        ],
    );
    let out = dir.path().join("updates.jsonl");
    let offset = (366 * DAY_MS).to_string();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
    let mut kills = 0;
    for _ in 0..5 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut child = fleetkey(&home)
            .args([
                "lifecycle",
                "run",
                "--out",
                out.to_str().unwrap(),
                "--batch",
                "500",
                "--lease-ttl",
                "1s",
            ])
            .env("FLEETKEY_CLOCK_OFFSET_MS", &offset)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(150 + seed % 1200));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
        // The next run takes over the dead run's lease once it expires.
        std::thread::sleep(Duration::from_millis(1100));
    }
    let last = fleetkey(&home)
        .args([
            "lifecycle",
            "run",
            "--out",
            out.to_str().unwrap(),
            "--batch",
            "500",
            "--json",
        ])
        .env("FLEETKEY_CLOCK_OFFSET_MS", &offset)
        .output()
        .unwrap();
    assert!(
        last.status.success(),
        "{}",
        String::from_utf8_lossy(&last.stderr)
    );
    eprintln!("{kills} runs killed mid-way");

    // One new generation, current; every device on it exactly one revision up.
    let generations = json(&home, &["generation", "list"]);
    let numbers: Vec<u64> = generations
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["generation"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, vec![1, 2], "exactly one new generation");
    assert_eq!(
        devices_by_generation_revision(&home),
        HashMap::from([((2, 1), DEVICES as i64)])
    );
    // No device named by two refresh events.
    let serials = refreshed_serials(&home);
    let unique: HashSet<&Vec<u8>> = serials.iter().collect();
    assert_eq!(
        serials.len(),
        DEVICES,
        "a device was bumped twice or not at all"
    );
    assert_eq!(unique.len(), DEVICES);
    // Every device's update reached the file at least once.
    let written = std::fs::read(&out).unwrap();
    let mut delivered = HashSet::new();
    for line in written.split(|b| *b == b'\n').filter(|l| l.ends_with(b"}")) {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) {
            assert_eq!(v["device"]["generation"], 2);
            assert_eq!(v["device"]["revision"], 1);
            delivered.insert(v["device"]["serial"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(
        delivered.len(),
        DEVICES,
        "every key update delivered at least once"
    );
    json(&home, &["audit", "verify"]);
    // And a further run finds nothing to do.
    let again: serde_json::Value = serde_json::from_slice(
        &fleetkey(&home)
            .args(["lifecycle", "run", "--out", out.to_str().unwrap(), "--json"])
            .env("FLEETKEY_CLOCK_OFFSET_MS", &offset)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(again["done"], serde_json::json!([]), "{again}");
}

#[test]
fn a_due_migration_without_out_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let home = init(dir.path());
    ok(&home, &["device", "add", "M-1"]);
    ok(&home, &["device", "provision", "M-1"]);
    let before = json(&home, &["audit", "verify"]);
    let out = fleetkey(&home)
        .args(["lifecycle", "run"])
        .env("FLEETKEY_CLOCK_OFFSET_MS", (366 * DAY_MS).to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--out"));
    assert_eq!(json(&home, &["audit", "verify"]), before);
}
