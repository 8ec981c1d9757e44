//! The governance root from the command line: its custodian shares at `init`, told apart from a
//! master's; a lost key file rebuilt from the master's and the root's shares (`master restore`
//! and `governance restore-root` into a new key file) that signs records a device pinned to the
//! original root accepts; wrong and too few shares refused; and `governance rotate-root` end to
//! end: the exported handover moves a pinned device to the new root once, the new root's
//! records are accepted, the old root is gone from the key module, and the audit chain holds.

use std::path::{Path, PathBuf};

use fleetkey_core::governance::{
    Acceptance, GovernanceError, GovernanceState, RootKey, verify_generation_record,
    verify_handover,
};

#[path = "support/cli.rs"]
mod cli;
use cli::{fails, json, ok_with_stderr as ok};

const FLEET: &str = "harvesters";

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn shares(dir: &Path, prefix: &str) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with(prefix))
        .map(|p| p.to_str().unwrap().to_owned())
        .collect();
    found.sort();
    found
}

fn init_with_shares(dir: &Path) -> (PathBuf, PathBuf) {
    let home = dir.join("home");
    let shares_dir = dir.join("shares");
    let (_, stderr) = ok(
        &home,
        &[
            "init",
            "--fleet",
            FLEET,
            "--scheme",
            "governed",
            "--kdf-log-n",
            "10",
            "--custodian",
            "alice",
            "--custodian",
            "bob",
            "--custodian",
            "carol",
            "--threshold",
            "2",
            "--shares-dir",
            shares_dir.to_str().unwrap(),
        ],
    );
    assert!(stderr.contains("governance root 1"), "{stderr}");
    assert!(
        stderr.contains("harvesters-root1-share-1-of-3-alice.json"),
        "{stderr}"
    );
    (home, shares_dir)
}

fn pinned(home: &Path) -> (String, GovernanceState) {
    let shown = json(home, &["governance", "show"]);
    let public = shown["root_public_key"].as_str().unwrap().to_owned();
    let kid = hex::decode(shown["root_kid"].as_str().unwrap()).unwrap();
    let key: [u8; 32] = hex::decode(&public).unwrap().try_into().unwrap();
    let state = GovernanceState::new(FLEET, RootKey::new(key, &kid).unwrap()).unwrap();
    (public, state)
}

#[test]
fn root_shares_rebuild_a_lost_key_file_and_wrong_shares_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (home, shares_dir) = init_with_shares(dir.path());
    let root = shares(&shares_dir, "harvesters-root1-share-");
    let master = shares(&shares_dir, "harvesters-g1-share-");
    assert_eq!((root.len(), master.len()), (3, 3));
    ok(&home, &["governance", "publish", "--reason", "first"]);
    let (public, mut device) = pinned(&home);

    // The files say what they hold.
    let (text, _) = ok(&home, &["master", "verify", "--shares", &root[0], &root[2]]);
    assert!(text.contains("rebuild the governance root"), "{text}");
    let verified = json(&home, &["master", "verify", "--shares", &root[1]]);
    assert_eq!(verified["secret"], "governance-root");
    fails(
        &home,
        &["master", "restore", "--shares", &root[0], &root[1]],
        2,
        "holds a share of the governance root, not of a master",
    );
    fails(
        &home,
        &[
            "governance",
            "restore-root",
            "--shares",
            &master[0],
            &master[1],
        ],
        2,
        "holds a share of a master, not of the governance root",
    );
    fails(
        &home,
        &["governance", "restore-root", "--shares", &root[0]],
        2,
        "1 distinct shares given, the split needs 2",
    );
    fails(
        &home,
        &["governance", "restore-root", "--shares", &root[0], &root[1]],
        1,
        "the key module has a governance root already",
    );

    // The key file is lost: the master's and the root's shares rebuild one.
    let new_key_file = dir.path().join("rebuilt.age");
    let kf = new_key_file.to_str().unwrap();
    ok(
        &home,
        &[
            "master",
            "restore",
            "--shares",
            &master[0],
            &master[2],
            "--key-file",
            kf,
            "--kdf-log-n",
            "10",
        ],
    );
    let other = "11".repeat(32);
    fails(
        &home,
        &[
            "governance",
            "restore-root",
            "--shares",
            &root[1],
            &root[2],
            "--key-file",
            kf,
            "--root-public-key",
            &other,
        ],
        1,
        "but the fleet pins",
    );
    let restored = json(
        &home,
        &[
            "governance",
            "restore-root",
            "--shares",
            &root[1],
            &root[2],
            "--key-file",
            kf,
            "--root-public-key",
            &public,
        ],
    );
    assert_eq!(restored["public_key"], public.as_str());
    assert_eq!(restored["root"], 1);
    std::fs::rename(&new_key_file, home.join("keys.age")).unwrap();
    let record = json(
        &home,
        &["governance", "publish", "--reason", "after restore"],
    );
    assert_eq!(record["root_public_key"], public.as_str());
    let bytes = hex::decode(record["record"].as_str().unwrap()).unwrap();
    assert_eq!(
        verify_generation_record(&mut device, &bytes, now_s()),
        Ok(Acceptance::Updated)
    );
}

#[test]
fn rotate_root_moves_a_pinned_device_once() {
    let dir = tempfile::tempdir().unwrap();
    let (home, _) = init_with_shares(dir.path());
    let first = json(&home, &["governance", "publish", "--reason", "first"]);
    let (old_public, mut device) = pinned(&home);
    let record1 = hex::decode(first["record"].as_str().unwrap()).unwrap();
    assert_eq!(
        verify_generation_record(&mut device, &record1, now_s()),
        Ok(Acceptance::Updated)
    );

    fails(
        &home,
        &["governance", "rotate-root", "--reason", "yearly"],
        2,
        "a new governance root needs a backup",
    );
    let shares2 = dir.path().join("root2-shares");
    let rotated = json(
        &home,
        &[
            "governance",
            "rotate-root",
            "--reason",
            "yearly",
            "--valid-days",
            "30",
            "--custodian",
            "dora",
            "--custodian",
            "emil",
            "--threshold",
            "2",
            "--shares-dir",
            shares2.to_str().unwrap(),
        ],
    );
    assert_eq!(rotated["old_root_public_key"], old_public.as_str());
    assert_eq!(rotated["root_number"], 2);
    assert_eq!(rotated["handover_sequence"], 2);
    assert_eq!(rotated["record_sequence"], 3);
    assert_eq!(shares(&shares2, "harvesters-root2-share-").len(), 2);
    let new_public = rotated["root_public_key"].as_str().unwrap().to_owned();
    assert_ne!(new_public, old_public);

    let shown = json(&home, &["governance", "show"]);
    assert_eq!(shown["root_public_key"], new_public.as_str());
    assert_eq!(shown["root_kid"], rotated["root_kid"]);
    assert_eq!(shown["root_number"], 2);
    assert_eq!(shown["handovers"], serde_json::json!([2]));
    assert_eq!(shown["sequence"], 3);

    let out = dir.path().join("records");
    let files = json(
        &home,
        &["governance", "export", "--out", out.to_str().unwrap()],
    );
    let names: Vec<String> = files
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            Path::new(f.as_str().unwrap())
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(names, ["root-handover-2.cose", "generation-record-3.cose"]);
    let handover_file = out.join("root-handover-2.cose");
    let handover = std::fs::read(&handover_file).unwrap();
    let record3 = std::fs::read(out.join("generation-record-3.cose")).unwrap();

    // `governance verify` checks the handover under the old root, as a device would.
    let verified = json(
        &home,
        &[
            "governance",
            "verify",
            handover_file.to_str().unwrap(),
            "--root-public-key",
            &old_public,
        ],
    );
    assert_eq!(verified["fields"]["kind"], "handover");
    assert_eq!(verified["fields"]["new_root_key"], new_public.as_str());
    let verified = json(
        &home,
        &[
            "governance",
            "verify",
            handover_file.to_str().unwrap(),
            "--fleet-home",
        ],
    );
    assert_eq!(verified["verified"], true);
    fails(
        &home,
        &[
            "governance",
            "verify",
            handover_file.to_str().unwrap(),
            "--root-public-key",
            &new_public,
        ],
        1,
        "record refused",
    );

    assert_eq!(
        verify_generation_record(&mut device, &record3, now_s()),
        Err(GovernanceError::UnknownKid)
    );
    assert_eq!(verify_handover(&mut device, &handover, now_s()), Ok(()));
    assert_eq!(
        verify_generation_record(&mut device, &record3, now_s()),
        Ok(Acceptance::Updated)
    );
    assert_eq!(
        verify_handover(&mut device, &handover, now_s()),
        Err(GovernanceError::UnknownKid)
    );
    assert_eq!(device.sequence(), Some(3));

    // Later records are the new root's; the old root's shares no longer match the fleet.
    let next = json(&home, &["governance", "publish", "--reason", "monthly"]);
    let record4 = hex::decode(next["record"].as_str().unwrap()).unwrap();
    assert_eq!(
        verify_generation_record(&mut device, &record4, now_s()),
        Ok(Acceptance::Updated)
    );
    let (text, _) = ok(&home, &["audit", "verify"]);
    assert!(!text.is_empty());
    let events = json(
        &home,
        &["audit", "show", "--action", "governance.root_rotate"],
    );
    let events = events
        .as_array()
        .cloned()
        .or_else(|| events["events"].as_array().cloned())
        .unwrap();
    assert_eq!(events.len(), 1);
    let help = ok(&home, &["governance", "rotate-root", "--help"]).0;
    assert!(help.contains("Examples"));
    let help = ok(&home, &["governance", "restore-root", "--help"]).0;
    assert!(help.contains("Examples"));
}

#[test]
fn init_without_backup_warns_that_the_root_cannot_be_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let (_, stderr) = ok(
        &home,
        &[
            "init",
            "--fleet",
            FLEET,
            "--scheme",
            "governed",
            "--kdf-log-n",
            "10",
            "--no-backup",
        ],
    );
    assert!(
        stderr.contains("governance root 1 has NO backup")
            && stderr.contains("can never accept a new record"),
        "{stderr}"
    );
    let rotated = json(
        &home,
        &[
            "governance",
            "rotate-root",
            "--reason",
            "lab",
            "--no-backup",
        ],
    );
    // No generation record before: the handover takes sequence 1, the new root's record 2.
    assert_eq!(rotated["handover_sequence"], 1);
    assert_eq!(rotated["record_sequence"], 2);

    // `--publish` gives a fresh fleet its first record, signed by its root.
    let published = dir.path().join("published");
    let (_, stderr) = ok(
        &published,
        &[
            "init",
            "--fleet",
            FLEET,
            "--scheme",
            "governed",
            "--kdf-log-n",
            "10",
            "--no-backup",
            "--publish",
        ],
    );
    assert!(stderr.contains("generation record 1 published"), "{stderr}");
    let (_, mut device) = pinned(&published);
    let shown = json(&published, &["governance", "show"]);
    assert_eq!(shown["sequence"], 1);
    let record = hex::decode(shown["record"].as_str().unwrap()).unwrap();
    assert_eq!(
        verify_generation_record(&mut device, &record, now_s()),
        Ok(Acceptance::Updated)
    );
    fails(
        &dir.path().join("derived"),
        &[
            "init",
            "--fleet",
            FLEET,
            "--scheme",
            "derived",
            "--no-backup",
            "--publish",
        ],
        2,
        "--publish",
    );
}

#[test]
fn grants_are_reissued_by_a_root_rotation_for_devices_that_took_the_handover() {
    use ed25519_dalek::Signer as _;
    use fleetkey_core::governance::{
        Challenge, possession_message, verify_grant, verify_possession,
    };
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    ok(
        &home,
        &[
            "init",
            "--fleet",
            FLEET,
            "--scheme",
            "governed",
            "--kdf-log-n",
            "10",
            "--no-backup",
            "--publish",
        ],
    );
    let (_, mut device) = pinned(&home);
    let record1 = hex::decode(
        json(&home, &["governance", "show"])["record"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    verify_generation_record(&mut device, &record1, now_s()).unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
    let key_file = dir.path().join("jane.pub");
    std::fs::write(&key_file, hex::encode(key.verifying_key().to_bytes())).unwrap();
    let old_grant = dir.path().join("grant-1.cose");
    ok(
        &home,
        &[
            "grant",
            "issue",
            "--subject",
            "jane@workshop-7",
            "--role",
            "technician",
            "--scope",
            "ECU-00",
            "--valid-days",
            "7",
            "--public-key-file",
            key_file.to_str().unwrap(),
            "--out",
            old_grant.to_str().unwrap(),
        ],
    );
    let old_grant = std::fs::read(old_grant).unwrap();
    let rotated = json(
        &home,
        &[
            "governance",
            "rotate-root",
            "--reason",
            "yearly",
            "--no-backup",
        ],
    );
    assert_eq!(rotated["reissued_grants"], serde_json::json!([1]));
    let out = dir.path().join("records");
    ok(
        &home,
        &["governance", "export", "--out", out.to_str().unwrap()],
    );
    let grant = std::fs::read(out.join("grant-1.cose")).unwrap();
    let shown = json(&home, &["grant", "show", "1"]);
    assert_eq!(shown["record"], hex::encode(&grant).as_str());
    let verified = json(
        &home,
        &[
            "governance",
            "verify",
            out.join("grant-1.cose").to_str().unwrap(),
            "--fleet-home",
            "--serial",
            "ECU-0001",
        ],
    );
    assert_eq!(verified["verified"], true);
    // Before the handover the device refuses the new grant and still takes the old one.
    assert_eq!(
        verify_grant(&device, &grant, b"ECU-0001", now_s()).map(|g| g.id),
        Err(GovernanceError::UnknownKid)
    );
    assert_eq!(
        verify_grant(&device, &old_grant, b"ECU-0001", now_s()).map(|g| g.id),
        Ok(1)
    );
    let handover = std::fs::read(out.join("root-handover-2.cose")).unwrap();
    assert_eq!(verify_handover(&mut device, &handover, now_s()), Ok(()));
    let record3 = std::fs::read(out.join("generation-record-3.cose")).unwrap();
    assert_eq!(
        verify_generation_record(&mut device, &record3, now_s()),
        Ok(Acceptance::Updated)
    );
    let g = verify_grant(&device, &grant, b"ECU-0001", now_s()).unwrap();
    let challenge = Challenge::from_nonce([1; 32]);
    let signature = key.sign(&possession_message(g.id, &challenge)).to_bytes();
    assert_eq!(verify_possession(&g, &challenge, &signature), Ok(()));
    assert_eq!(
        verify_grant(&device, &old_grant, b"ECU-0001", now_s()).map(|g| g.id),
        Err(GovernanceError::UnknownKid)
    );
    let events = json(&home, &["audit", "show", "--action", "grant.reissue"]);
    let events = events
        .as_array()
        .cloned()
        .or_else(|| events["events"].as_array().cloned())
        .unwrap();
    assert_eq!(events.len(), 1);
    ok(&home, &["audit", "verify"]);
}
