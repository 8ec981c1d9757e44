//! The governance issue's "done when", from the command line: a governed fleet rotates to
//! generation 2 and revokes generation 1, and a device (the core's `GovernanceState` pinned to the
//! fleet's root, fed the exported records) refuses generation-1 keys once it accepts the new
//! record; a technician grant issued from the CLI works on the device with proof of possession,
//! is denied by `grant deny`, and fails after the device accepts the next record, with no device
//! re-keyed.

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey};
use fleetkey_core::derive::Generation;
use fleetkey_core::governance::{
    Acceptance, Challenge, GovernanceError, GovernanceState, RootKey, check_generation,
    possession_message, verify_generation_record, verify_grant, verify_possession,
};

#[path = "support/cli.rs"]
mod cli;
use cli::{fails, json, ok};

const FLEET: &str = "harvesters";

fn init_governed(dir: &Path) -> PathBuf {
    let home = dir.join("home");
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
        ],
    );
    home
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Exports into a fresh directory and returns (the generation record, the grants) read back.
fn export(home: &Path, dir: &Path) -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
    let files = json(
        home,
        &["governance", "export", "--out", dir.to_str().unwrap()],
    );
    let mut record = None;
    let mut grants = Vec::new();
    for f in files.as_array().unwrap() {
        let path = PathBuf::from(f.as_str().unwrap());
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(name.ends_with(".cose"), "{name}");
        let bytes = std::fs::read(&path).unwrap();
        if name.starts_with("generation-record-") {
            assert!(record.replace(bytes).is_none(), "one generation record");
        } else {
            assert!(name.starts_with("grant-"), "{name}");
            grants.push((name, bytes));
        }
    }
    // Nothing half-written is left behind.
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name();
        assert!(!name.to_str().unwrap().ends_with(".tmp"), "{name:?}");
    }
    (record.expect("a generation record"), grants)
}

/// Device serials with their generation and revision.
fn devices(home: &Path) -> Vec<(String, u64, u64)> {
    let list = json(home, &["device", "list"]);
    let list = list
        .as_array()
        .cloned()
        .or_else(|| list["devices"].as_array().cloned())
        .unwrap();
    list.iter()
        .map(|d| {
            (
                d["serial"].as_str().unwrap().to_owned(),
                d["generation"].as_u64().unwrap(),
                d["revision"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn rotate_revoke_and_deny_reach_the_device_without_rekeying() {
    let dir = tempfile::tempdir().unwrap();
    let home = init_governed(dir.path());
    ok(&home, &["device", "add", "ECU-0001"]);
    ok(&home, &["device", "provision", "ECU-0001"]);

    // The first record: generation 1 current. The device pins the root it names.
    let first = json(&home, &["governance", "publish", "--reason", "first"]);
    assert_eq!(first["sequence"], 1);
    assert_eq!(first["fields"]["current"], 1);
    let root: [u8; 32] = hex::decode(first["root_public_key"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let kid = hex::decode(first["root_kid"].as_str().unwrap()).unwrap();
    let mut device = GovernanceState::new(FLEET, RootKey::new(root, &kid).unwrap()).unwrap();
    let (record1, grants) = export(&home, &dir.path().join("export-1"));
    assert!(grants.is_empty());
    let now = now_s();
    assert_eq!(
        verify_generation_record(&mut device, &record1, now),
        Ok(Acceptance::Updated)
    );
    assert_eq!(check_generation(&device, Generation(1)), Ok(()));

    // Rotate to 2 (record 2: 2 current, 1 still accepted), then revoke 1 (record 3).
    ok(
        &home,
        &["generation", "rotate", "--reason", "yearly", "--no-backup"],
    );
    let shown = json(&home, &["governance", "show"]);
    assert_eq!(shown["sequence"], 2);
    assert_eq!(shown["fields"]["current"], 2);
    assert_eq!(shown["fields"]["accepted"], serde_json::json!([1]));
    ok(
        &home,
        &["generation", "revoke", "1", "--reason", "master exposed"],
    );
    let shown = json(&home, &["governance", "show"]);
    assert_eq!(shown["sequence"], 3);
    assert_eq!(shown["fields"]["revoked"], serde_json::json!([1]));
    assert_eq!(shown["fields"]["accepted"], serde_json::json!([]));

    let (record3, _) = export(&home, &dir.path().join("export-2"));
    // Before the device accepts the new record, generation 1 still works there.
    assert_eq!(check_generation(&device, Generation(1)), Ok(()));
    assert_eq!(
        verify_generation_record(&mut device, &record3, now_s()),
        Ok(Acceptance::Updated)
    );
    assert_eq!(device.sequence(), Some(3));
    assert_eq!(
        check_generation(&device, Generation(1)),
        Err(GovernanceError::RevokedGeneration)
    );
    assert_eq!(check_generation(&device, Generation(2)), Ok(()));
    // The old record cannot be replayed.
    assert_eq!(
        verify_generation_record(&mut device, &record1, now_s()),
        Err(GovernanceError::StaleSequence)
    );

    // The CLI verifies the exported record as a device would, with either root source.
    let file = dir.path().join("export-2").join("generation-record-3.cose");
    let v = json(
        &home,
        &[
            "governance",
            "verify",
            file.to_str().unwrap(),
            "--fleet-home",
        ],
    );
    assert_eq!(v["verified"], true);
    assert_eq!(v["fields"]["sequence"], 3);
    let root_hex = hex::encode(root);
    let v = json(
        &home,
        &[
            "governance",
            "verify",
            file.to_str().unwrap(),
            "--root-public-key",
            &root_hex,
        ],
    );
    assert_eq!(v["fields"]["revoked"], serde_json::json!([1]));
    let mut tampered = record3.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let bad = dir.path().join("tampered.cose");
    std::fs::write(&bad, &tampered).unwrap();
    fails(
        &home,
        &[
            "governance",
            "verify",
            bad.to_str().unwrap(),
            "--fleet-home",
        ],
        1,
        "signature",
    );

    // A technician grant, issued from the CLI.
    let before = devices(&home);
    let technician = SigningKey::from_bytes(&[0x42; 32]);
    let key_file = dir.path().join("jane.pub");
    std::fs::write(
        &key_file,
        hex::encode(technician.verifying_key().to_bytes()),
    )
    .unwrap();
    let grant_file = dir.path().join("grant.cose");
    let g = json(
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
            grant_file.to_str().unwrap(),
        ],
    );
    assert_eq!(g["id"], 1);
    assert_eq!(g["role"], "technician");
    assert_eq!(g["denied"], false);
    let (_, grants) = export(&home, &dir.path().join("export-3"));
    assert_eq!(grants.len(), 1);
    let grant = std::fs::read(&grant_file).unwrap();
    assert_eq!(grants[0].1, grant);

    // On the device: the grant verifies for a serial in scope, and the tool proves possession.
    let verified = verify_grant(&device, &grant, b"ECU-0001", now_s()).unwrap();
    assert_eq!(verified.id, 1);
    let challenge = Challenge::from_nonce([0x5a; 32]);
    let proof = technician.sign(&possession_message(verified.id, &challenge));
    assert_eq!(
        verify_possession(&verified, &challenge, &proof.to_bytes()),
        Ok(())
    );
    let other = SigningKey::from_bytes(&[0x43; 32]);
    let forged = other.sign(&possession_message(verified.id, &challenge));
    assert_eq!(
        verify_possession(&verified, &challenge, &forged.to_bytes()),
        Err(GovernanceError::Possession)
    );
    assert_eq!(
        verify_grant(&device, &grant, b"TRUCK-1", now_s()).map(|g| g.id),
        Err(GovernanceError::OutOfScope)
    );

    // Denied: a new record lists it; once the device accepts it, the grant fails.
    let d = json(&home, &["grant", "deny", "1", "--reason", "laptop lost"]);
    assert_eq!(d["sequence"], 4);
    let listed = json(&home, &["grant", "list"]);
    assert_eq!(listed[0]["denied"], true);
    let shown = json(&home, &["grant", "show", "1"]);
    assert_eq!(shown["subject"], "jane@workshop-7");
    let (record4, grants) = export(&home, &dir.path().join("export-4"));
    assert!(grants.is_empty(), "a denied grant is not exported");
    // Until the device has the new record, the grant still works there.
    assert!(verify_grant(&device, &grant, b"ECU-0001", now_s()).is_ok());
    assert_eq!(
        verify_generation_record(&mut device, &record4, now_s()),
        Ok(Acceptance::Updated)
    );
    assert_eq!(device.denied_grants(), &[1]);
    assert_eq!(
        verify_grant(&device, &grant, b"ECU-0001", now_s()).map(|g| g.id),
        Err(GovernanceError::Denied)
    );
    // The generation decisions are unchanged by the deny.
    assert_eq!(
        check_generation(&device, Generation(1)),
        Err(GovernanceError::RevokedGeneration)
    );

    // No device was re-keyed by issuing or denying.
    assert_eq!(devices(&home), before);

    // The audit chain holds the publications and the grant events, and still verifies.
    ok(&home, &["audit", "verify"]);
}

#[test]
fn refusals() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("derived");
    ok(
        &home,
        &[
            "init",
            "--fleet",
            "plain",
            "--scheme",
            "derived",
            "--kdf-log-n",
            "10",
            "--no-backup",
        ],
    );
    fails(
        &home,
        &["governance", "publish", "--reason", "x"],
        1,
        "no governance root",
    );
    let home = init_governed(dir.path());
    fails(
        &home,
        &["governance", "show"],
        1,
        "no generation record published yet",
    );
    fails(
        &home,
        &["grant", "deny", "9", "--reason", "x"],
        1,
        "grant 9 not found",
    );
    let key_file = dir.path().join("short.pub");
    std::fs::write(&key_file, "abcd").unwrap();
    fails(
        &home,
        &[
            "grant",
            "issue",
            "--subject",
            "x",
            "--role",
            "operator",
            "--scope",
            "",
            "--valid-days",
            "1",
            "--public-key-file",
            key_file.to_str().unwrap(),
        ],
        2,
        "--public-key-file",
    );
    // Revoking the current generation publishes nothing (no record can accept it); the
    // rotation that follows publishes one revoking it.
    ok(&home, &["generation", "revoke", "1", "--reason", "exposed"]);
    fails(
        &home,
        &["governance", "publish", "--reason", "x"],
        1,
        "the current generation 1 is compromised",
    );
    ok(
        &home,
        &["generation", "rotate", "--reason", "recover", "--no-backup"],
    );
    let shown = json(&home, &["governance", "show"]);
    assert_eq!(shown["sequence"], 1);
    assert_eq!(shown["fields"]["current"], 2);
    assert_eq!(shown["fields"]["revoked"], serde_json::json!([1]));
    let help = ok(&home, &["grant", "issue", "--help"]);
    assert!(help.contains("Example"));
}
