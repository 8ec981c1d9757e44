//! The master key ceremony from the command line: `init` with 3-of-5 custodian shares, a restore
//! from 3 of them into a new key file that derives the same device keys, a restore into the
//! fleet after its key file lost a generation, `master verify`, and the refusal of a fleet
//! without backup.

use std::path::{Path, PathBuf};

#[path = "support/cli.rs"]
mod cli;
use cli::{fails, json, ok_with_stderr as ok};

const CUSTODIANS: [&str; 5] = ["alice", "bob", "carol", "dave", "erin"];

/// `--custodian alice ... --threshold 3 --shares-dir DIR`.
fn ceremony(dir: &Path) -> Vec<String> {
    let mut args = Vec::new();
    for c in CUSTODIANS {
        args.push("--custodian".to_owned());
        args.push(c.to_owned());
    }
    args.extend(["--threshold".into(), "3".into(), "--shares-dir".into()]);
    args.push(dir.display().to_string());
    args
}

fn init_args(extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> = [
        "init",
        "--fleet",
        "tractors",
        "--scheme",
        "derived",
        "--kdf-log-n",
        "10",
    ]
    .map(String::from)
    .to_vec();
    args.extend_from_slice(extra);
    args
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn share_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn keys(p: &serde_json::Value) -> [String; 3] {
    ["auth", "key_update", "roll_seed"].map(|k| p["keys"][k].as_str().unwrap().to_owned())
}

#[test]
fn a_3_of_5_ceremony_and_a_restore_into_a_new_key_file_give_the_same_device_keys() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let shares = dir.path().join("shares");
    let (_, stderr) = ok(&home, &strs(&init_args(&ceremony(&shares))));
    assert!(
        stderr.contains("3 of 5 custodian shares written"),
        "{stderr}"
    );
    assert!(
        stderr.contains("tractors-g1-share-5-of-5-erin.json"),
        "{stderr}"
    );
    let files = share_files(&shares);
    assert_eq!(files.len(), 5);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        for f in &files {
            assert_eq!(
                std::fs::metadata(f).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }

    ok(&home, &["device", "add", "ECU-0001"]);
    let original = keys(&json(&home, &["device", "provision", "ECU-0001"]));

    // Restore from shares 1, 3 and 5 into a NEW key file.
    let new_key_file = dir.path().join("restored.age");
    let pick = |i: &[usize]| -> Vec<String> {
        i.iter().map(|&i| files[i].display().to_string()).collect()
    };
    let mut args = vec!["master".to_owned(), "restore".into(), "--shares".into()];
    args.extend(pick(&[0, 2, 4]));
    args.extend([
        "--key-file".into(),
        new_key_file.display().to_string(),
        "--kdf-log-n".into(),
        "10".into(),
    ]);
    let report = json(&home, &strs(&args));
    assert_eq!(report["generation"], 1);
    assert_eq!(report["fleet"], "tractors");
    assert_eq!(report["module"], "soft");
    assert_eq!(report["shares_used"][2][1], "erin");

    // The new key file in place of the original: the same device keys come out.
    let home2 = dir.path().join("home2");
    std::fs::create_dir(&home2).unwrap();
    for f in ["fleet.json", "fleet.db"] {
        std::fs::copy(home.join(f), home2.join(f)).unwrap();
    }
    std::fs::copy(&new_key_file, home2.join("keys.age")).unwrap();
    let again = keys(&json(&home2, &["device", "provision", "ECU-0001"]));
    assert_eq!(again, original);

    // The key file exists now: a second restore into it is refused and leaves it alone.
    let before = std::fs::read(&new_key_file).unwrap();
    fails(&home, &strs(&args), 1, "a key file exists already");
    assert_eq!(std::fs::read(&new_key_file).unwrap(), before);

    // verify: one share checks its own KCV; three check the whole.
    let one = json(
        &home,
        &["master", "verify", "--shares", files[1].to_str().unwrap()],
    );
    assert_eq!(one["master_checked"], false);
    assert_eq!(one["shares"][0]["custodian"], "bob");
    let mut args = vec!["master".to_owned(), "verify".into(), "--shares".into()];
    args.extend(pick(&[4, 3, 1]));
    let three = json(&home, &strs(&args));
    assert_eq!(three["master_checked"], true);
    assert_eq!(three["master_kcv"], report["master_kcv"]);
    let (text, _) = ok(&home, &strs(&args));
    assert!(text.contains("KCV"), "{text}");

    // Two shares restore nothing.
    let mut args = vec!["master".to_owned(), "restore".into(), "--shares".into()];
    args.extend(pick(&[0, 1]));
    args.extend([
        "--key-file".into(),
        dir.path().join("two.age").display().to_string(),
    ]);
    fails(
        &home,
        &strs(&args),
        2,
        "2 distinct shares given, the split needs 3",
    );
    assert!(!dir.path().join("two.age").exists());

    // A share changed in one byte is refused by its KCV, naming the file (exit 1).
    let text = std::fs::read_to_string(&files[2]).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let share = doc["share"].as_str().unwrap();
    let flipped = format!(
        "{}{}",
        if share.starts_with('0') { "1" } else { "0" },
        &share[1..]
    );
    let tampered = dir.path().join("tampered.json");
    std::fs::write(&tampered, text.replace(share, &flipped)).unwrap();
    let mut args = vec!["master".to_owned(), "verify".into(), "--shares".into()];
    args.extend(pick(&[0, 1]));
    args.push(tampered.display().to_string());
    fails(&home, &strs(&args), 1, "tampered.json");

    // A duplicate is refused naming both files.
    let mut args = vec!["master".to_owned(), "verify".into(), "--shares".into()];
    args.extend(pick(&[0, 1, 0]));
    fails(&home, &strs(&args), 2, "repeats share 1");
}

#[test]
fn a_generation_lost_from_the_key_file_is_restored_into_the_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    ok(&home, &strs(&init_args(&ceremony(&dir.path().join("g1")))));
    let old_key_file = std::fs::read(home.join("keys.age")).unwrap();
    let g2_dir = dir.path().join("g2");
    let mut args = vec![
        "generation".to_owned(),
        "rotate".into(),
        "--reason".into(),
        "yearly".into(),
    ];
    args.extend(ceremony(&g2_dir));
    let (_, stderr) = ok(&home, &strs(&args));
    assert!(
        stderr.contains("tractors-g2-share-1-of-5-alice.json"),
        "{stderr}"
    );
    ok(&home, &["device", "add", "ECU-7"]);
    let original = keys(&json(&home, &["device", "provision", "ECU-7"]));

    std::fs::write(home.join("keys.age"), old_key_file).unwrap();
    fails(
        &home,
        &["device", "provision", "ECU-7"],
        1,
        "no master for generation 2",
    );

    let files = share_files(&g2_dir);
    let mut args = vec![
        "master".to_owned(),
        "restore".into(),
        "--generation".into(),
        "2".into(),
        "--shares".into(),
    ];
    args.extend(files[2..].iter().map(|f| f.display().to_string()));
    let (text, _) = ok(&home, &strs(&args));
    assert!(
        text.contains("restored generation 2 of fleet tractors"),
        "{text}"
    );
    assert_eq!(
        keys(&json(&home, &["device", "provision", "ECU-7"])),
        original
    );
    // Once is enough.
    fails(&home, &strs(&args), 1, "already has a master");
    let audit = json(&home, &["audit", "show", "--action", "master.restore"]);
    assert!(audit.to_string().contains("master.restore"), "{audit}");
}

#[test]
fn a_fleet_without_backup_is_refused_unless_declined_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let stderr = fails(&home, &strs(&init_args(&[])), 2, "needs a backup");
    assert!(stderr.contains("--no-backup"), "{stderr}");
    assert!(!home.exists());
    // Share options must be complete.
    fails(
        &home,
        &strs(&init_args(&["--custodian".into(), "alice".into()])),
        2,
        "--threshold",
    );
    fails(
        &home,
        &strs(&init_args(&[
            "--custodian".into(),
            "alice".into(),
            "--threshold".into(),
            "2".into(),
            "--shares-dir".into(),
            dir.path().join("s").display().to_string(),
        ])),
        2,
        "--threshold",
    );
    assert!(!home.exists());

    let (_, stderr) = ok(&home, &strs(&init_args(&["--no-backup".into()])));
    assert!(stderr.contains("WARNING"), "{stderr}");
    assert!(stderr.contains("NO backup"), "{stderr}");
    assert!(stderr.contains("can ever be derived again"), "{stderr}");
    // Rotation asks the same question.
    let stderr = fails(
        &home,
        &["generation", "rotate", "--reason", "r"],
        2,
        "--no-backup",
    );
    assert!(stderr.contains("hint"), "{stderr}");
    let (_, stderr) = ok(
        &home,
        &["generation", "create", "--reason", "r", "--no-backup"],
    );
    assert!(
        stderr.contains("WARNING: generation 2's master has NO backup"),
        "{stderr}"
    );

    // The stored scheme has no master: no backup options needed.
    let stored = dir.path().join("stored");
    ok(
        &stored,
        &[
            "init",
            "--fleet",
            "s",
            "--scheme",
            "stored",
            "--kdf-log-n",
            "10",
        ],
    );
}
