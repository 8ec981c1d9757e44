//! The governance root's lifecycle through the library: its custodian shares at `init`, restored
//! into a new key file with the same public key; wrong and too few shares refused with typed
//! errors; root rotation end to end against a device state pinned to the first root (the
//! handover accepted once, records of the new root accepted, of the old root refused), with the
//! audit chain intact and the old root gone from the key file.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use ed25519_dalek::Signer as _;
use fleetkey::backup::{self, BackupError, Secret, Share};
use fleetkey::error::Error;
use fleetkey::fleet::root::ROOT_ROTATE_ACTION;
use fleetkey::fleet::{Access, Clock, Fleet, InitOptions, MasterBackup, SecretString};
use fleetkey::governance::{GenerationRecordSpec, key_id};
use fleetkey::model::Scheme;
use fleetkey::module::KeyModule;
use fleetkey::module::soft::{SoftModule, WorkFactor};
use fleetkey_core::governance::{
    Acceptance, GovernanceError, GovernanceState, Record, RootKey, inspect_unverified,
    verify_generation_record, verify_handover,
};

const START_MS: i64 = 1_767_225_600_000;
const PASSPHRASE: &str = "correct horse battery staple";
const DAY: Duration = Duration::from_secs(24 * 3600);

struct TestClock(Arc<AtomicI64>);
impl Clock for TestClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

fn access() -> Access {
    Access {
        passphrase: SecretString::from(PASSPHRASE.to_owned()),
        actor: "test".into(),
        clock: Arc::new(TestClock(Arc::new(AtomicI64::new(START_MS)))),
    }
}

fn custodians() -> Vec<String> {
    ["alice", "bob", "carol"].map(String::from).to_vec()
}

fn init(dir: &Path, backup: MasterBackup) -> Fleet {
    let options = InitOptions {
        fleet_id: "tractors".into(),
        scheme: Scheme::Governed,
        she_transport_key: None,
        work_factor: WorkFactor::Log2(4),
        backup,
    };
    Fleet::init(&dir.join("home"), options, access()).unwrap()
}

fn files(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    found.sort();
    found
}

fn read(paths: &[PathBuf]) -> Vec<Share> {
    paths.iter().map(|p| Share::read(p).unwrap()).collect()
}

fn now_s() -> u64 {
    u64::try_from(START_MS / 1000).unwrap()
}

/// The key file's plaintext (the test knows the passphrase).
fn key_file_plaintext(path: &Path) -> String {
    let ciphertext = std::fs::read(path).unwrap();
    let decryptor = age::Decryptor::new_buffered(&ciphertext[..]).unwrap();
    let identity = age::scrypt::Identity::new(SecretString::from(PASSPHRASE.to_owned()));
    let mut reader = decryptor
        .decrypt(std::iter::once(&identity as &dyn age::Identity))
        .unwrap();
    let mut text = String::new();
    reader.read_to_string(&mut text).unwrap();
    text
}

#[test]
fn init_splits_the_root_into_its_own_labelled_shares_that_restore_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let shares_dir = dir.path().join("shares");
    let mut fleet = init(
        dir.path(),
        MasterBackup::shares(2, custodians(), &shares_dir),
    );
    let (public, kid) = fleet.governance_root().unwrap();
    let root_files = files(&shares_dir, "tractors-root1-share-");
    assert_eq!(root_files.len(), 3);
    assert_eq!(files(&shares_dir, "tractors-g1-share-").len(), 3);
    let text = std::fs::read_to_string(&root_files[0]).unwrap();
    assert!(
        text.contains("\"format\": \"fleetkey-root-share\""),
        "{text}"
    );
    assert!(text.contains("\"root\": 1") && text.contains("\"root_kcv\""));
    assert!(!text.contains("generation") && !text.contains("master_kcv"));

    // The backup is in the audit, with the public key and the root KCV, never share bytes.
    let backups = fleet.root_backups().unwrap();
    assert_eq!(backups.len(), 1);
    assert_eq!(backups[0]["method"], "shares");
    assert_eq!(backups[0]["public_key"], hex::encode(public));
    assert_eq!(backups[0]["kid"], hex::encode(kid));
    let shares = read(&root_files);
    assert_eq!(shares[0].info().secret, Secret::GovernanceRoot);
    assert_eq!(
        backups[0]["root_kcv"],
        shares[0].info().master_kcv.to_string()
    );

    // Any two of three rebuild the root; into a new key file, proven against the pinned key.
    for pair in [[0, 1], [0, 2], [1, 2]] {
        let two: Vec<Share> = read(&[root_files[pair[0]].clone(), root_files[pair[1]].clone()]);
        let seed = backup::combine_root(&two).unwrap();
        assert_eq!(seed.public_key(), public);
    }
    let key_file = dir.path().join("restored.age");
    let module = SoftModule::create_with(&key_file, PASSPHRASE, WorkFactor::Log2(4)).unwrap();
    let report = backup::restore_root_into(&module, &shares[1..], Some(&public)).unwrap();
    assert_eq!(report.public_key, hex::encode(public));
    assert_eq!(report.kid, hex::encode(kid));
    assert_eq!(report.root, 1);
    assert_eq!(module.signing_public_key().unwrap(), Some(public));
    // The restored root signs records a device pinned to the original accepts.
    let spec = GenerationRecordSpec {
        fleet: "tractors".into(),
        not_before: now_s(),
        not_after: now_s() + 3600,
        sequence: 1,
        current: 1,
        accepted: vec![],
        revoked: vec![],
        denied: vec![],
    };
    let record = spec
        .encode_and_sign(&kid, &|m: &[u8]| module.sign(m))
        .unwrap();
    let mut device = GovernanceState::new("tractors", RootKey::new(public, &kid).unwrap()).unwrap();
    assert_eq!(
        verify_generation_record(&mut device, &record, now_s()),
        Ok(Acceptance::Updated)
    );
    // A module that has a root refuses a second one.
    assert!(matches!(
        backup::restore_root_into(&module, &shares[..2], Some(&public)),
        Err(Error::Module(fleetkey::ModuleError::SigningKeyExists))
    ));
    // The fleet's own module has its root: nothing to restore.
    assert!(matches!(
        fleet.restore_root(&shares[..2], "test"),
        Err(Error::Module(fleetkey::ModuleError::SigningKeyExists))
    ));
    fleet.audit_verify().unwrap();
}

#[test]
fn wrong_or_too_few_root_shares_are_refused_with_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let shares_dir = dir.path().join("shares");
    let mut fleet = init(
        dir.path(),
        MasterBackup::shares(2, custodians(), &shares_dir),
    );
    let (public, _) = fleet.governance_root().unwrap();
    let root = read(&files(&shares_dir, "tractors-root1-share-"));
    let master = read(&files(&shares_dir, "tractors-g1-share-"));

    assert!(matches!(
        backup::combine_root(&root[..1]),
        Err(BackupError::NotEnough { have: 1, need: 2 })
    ));
    // A master's shares are not the root's, and the other way round.
    assert!(matches!(
        backup::combine_root(&master),
        Err(BackupError::WrongSecret {
            found: Secret::Master,
            expected: Secret::GovernanceRoot,
            ..
        })
    ));
    assert!(matches!(
        backup::combine(&root),
        Err(BackupError::WrongSecret {
            found: Secret::GovernanceRoot,
            expected: Secret::Master,
            ..
        })
    ));
    let mixed = read(&[
        files(&shares_dir, "tractors-root1-share-")[0].clone(),
        files(&shares_dir, "tractors-g1-share-")[1].clone(),
    ]);
    assert!(matches!(
        backup::combine_root(&mixed),
        Err(BackupError::WrongSecret { .. })
    ));
    // A root share file edited to pass as a master's share fails its KCV.
    let path = &files(&shares_dir, "tractors-root1-share-")[0];
    let edited = std::fs::read_to_string(path)
        .unwrap()
        .replace("fleetkey-root-share", "fleetkey-master-share")
        .replace("\"root\"", "\"generation\"")
        .replace("root_kcv", "master_kcv");
    let forged = Share::parse(&edited, "forged.json").unwrap();
    assert!(!forged.check_kcv());
    // A changed share byte fails its KCV, naming the file.
    let text = std::fs::read_to_string(path).unwrap();
    let at = text.find("\"share\": \"").unwrap() + 10;
    let mut bytes = text.into_bytes();
    bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    let damaged = Share::parse(std::str::from_utf8(&bytes).unwrap(), "damaged.json").unwrap();
    let set = vec![
        damaged,
        Share::read(&files(&shares_dir, "tractors-root1-share-")[1]).unwrap(),
    ];
    match backup::combine_root(&set) {
        Err(BackupError::ShareKcv { file }) => assert_eq!(file, "damaged.json"),
        other => panic!("{other:?}"),
    }
    // The root of another fleet (or another root of this one) is refused by the pinned key.
    let other_dir = tempfile::tempdir().unwrap();
    let other_shares = other_dir.path().join("shares");
    init(
        other_dir.path(),
        MasterBackup::shares(2, custodians(), &other_shares),
    );
    let other = read(&files(&other_shares, "tractors-root1-share-"));
    let module =
        SoftModule::create_with(dir.path().join("new.age"), PASSPHRASE, WorkFactor::Log2(4))
            .unwrap();
    assert!(matches!(
        backup::restore_root_into(&module, &other[..2], Some(&public)),
        Err(Error::Backup(BackupError::RootMismatch { .. }))
    ));
    assert_eq!(module.signing_public_key().unwrap(), None);
}

#[test]
fn init_without_backup_generates_the_root_in_the_module() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = init(dir.path(), MasterBackup::NoBackup);
    let (public, _) = fleet.governance_root().unwrap();
    let backups = fleet.root_backups().unwrap();
    assert_eq!(backups.len(), 1);
    assert_eq!(backups[0]["method"], "none");
    assert_eq!(backups[0]["public_key"], hex::encode(public));
    let info = fleet.root_info().unwrap();
    assert_eq!((info.number, info.handovers.len()), (1, 0));
}

#[test]
fn rotate_root_hands_over_once_and_the_old_root_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let shares_dir = dir.path().join("shares");
    let mut fleet = init(
        dir.path(),
        MasterBackup::shares(2, custodians(), &shares_dir),
    );
    let (root1, kid1) = fleet.governance_root().unwrap();
    // The test keeps root 1's seed (from its shares) to forge a record after the rotation.
    let seed1 = backup::combine_root(&read(&files(&shares_dir, "tractors-root1-share-"))).unwrap();
    let old_hex = hex::encode(seed1.expose_secret());
    let key_file = dir.path().join("home").join("keys.age");
    assert!(key_file_plaintext(&key_file).contains(&old_hex));

    let mut device = GovernanceState::new("tractors", RootKey::new(root1, &kid1).unwrap()).unwrap();
    let record1 = fleet.publish_generation_record("first", 30 * DAY).unwrap();
    assert_eq!(
        verify_generation_record(&mut device, &record1.bytes, now_s()),
        Ok(Acceptance::Updated)
    );

    let shares2 = dir.path().join("shares-root2");
    let rotation = fleet
        .rotate_root(
            "yearly",
            &MasterBackup::shares(2, custodians(), &shares2),
            30 * DAY,
        )
        .unwrap();
    assert_eq!(rotation.old_public_key, root1);
    assert_eq!(rotation.number, 2);
    assert_eq!(rotation.handover.sequence, 2);
    assert_eq!(rotation.record_sequence, Some(3));
    let (root2, kid2) = fleet.governance_root().unwrap();
    assert_eq!((root2, kid2), (rotation.new_public_key, rotation.new_kid));
    assert_ne!(root2, root1);
    let info = fleet.root_info().unwrap();
    assert_eq!((info.number, info.handovers.clone()), (2, vec![2]));
    assert_eq!(info.public_key, root2);

    // Root 2's shares are labelled as root 2 and restore it.
    let root2_files = files(&shares2, "tractors-root2-share-");
    assert_eq!(root2_files.len(), 3);
    assert_eq!(
        backup::combine_root(&read(&root2_files[..2]))
            .unwrap()
            .public_key(),
        root2
    );

    // The handover: kind 3, signed by root 1, naming root 2.
    let Ok((envelope, Record::Handover(h))) = inspect_unverified(&rotation.handover.bytes) else {
        panic!("not a handover");
    };
    assert_eq!(envelope.kid, &kid1[..]);
    assert_eq!((h.sequence, h.new_key, h.new_kid), (2, root2, &kid2[..]));

    // Exported beside the newest generation record (signed by root 2).
    let out = dir.path().join("records");
    let written = fleet.export_records(&out).unwrap();
    let names: Vec<String> = written
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["root-handover-2.cose", "generation-record-3.cose"]);
    let handover = std::fs::read(out.join("root-handover-2.cose")).unwrap();
    assert_eq!(handover, rotation.handover.bytes);
    let record3 = std::fs::read(out.join("generation-record-3.cose")).unwrap();

    // Root 2's record is refused before the handover, accepted after it.
    assert_eq!(
        verify_generation_record(&mut device, &record3, now_s()),
        Err(GovernanceError::UnknownKid)
    );
    assert_eq!(verify_handover(&mut device, &handover, now_s()), Ok(()));
    assert_eq!(device.sequence(), Some(2));
    assert_eq!(
        verify_generation_record(&mut device, &record3, now_s()),
        Ok(Acceptance::Updated)
    );
    // The handover replayed is refused (signed by a root no longer pinned).
    assert_eq!(
        verify_handover(&mut device, &handover, now_s()),
        Err(GovernanceError::UnknownKid)
    );
    // A record signed by root 1 afterwards is refused, whatever its sequence.
    let forged = GenerationRecordSpec {
        fleet: "tractors".into(),
        not_before: now_s(),
        not_after: now_s() + 3600,
        sequence: 10,
        current: 1,
        accepted: vec![],
        revoked: vec![],
        denied: vec![],
    };
    let key1 = ed25519_dalek::SigningKey::from_bytes(seed1.expose_secret());
    let forged = forged
        .encode_and_sign(&kid1, &|m: &[u8]| {
            Ok::<_, std::convert::Infallible>(key1.sign(m).to_bytes())
        })
        .unwrap();
    assert_eq!(
        verify_generation_record(&mut device, &forged, now_s()),
        Err(GovernanceError::UnknownKid)
    );
    assert_eq!(device.sequence(), Some(3));

    // Later records are signed by root 2.
    let record4 = fleet.publish_generation_record("after", DAY).unwrap();
    assert_eq!(record4.sequence, 4);
    assert_eq!(
        verify_generation_record(&mut device, &record4.bytes, now_s()),
        Ok(Acceptance::Updated)
    );
    assert_eq!(
        fleet.latest_generation_record().unwrap().unwrap().sequence,
        4
    );

    // The audit chain holds, with the rotation recorded; root 1 is gone from the key file.
    fleet.audit_verify().unwrap();
    let rotations: Vec<_> = fleet
        .audit_show(
            &fleetkey::audit::AuditFilter {
                action: Some(ROOT_ROTATE_ACTION.into()),
                ..Default::default()
            },
            0,
            10,
        )
        .unwrap();
    assert_eq!(rotations.len(), 1);
    assert_eq!(
        rotations[0].draft.details["old_public_key"],
        hex::encode(root1)
    );
    assert_eq!(
        rotations[0].draft.details["new_public_key"],
        hex::encode(root2)
    );
    assert_eq!(fleet.module().staged_signing_public_key().unwrap(), None);
    drop(fleet);
    let plaintext = key_file_plaintext(&key_file);
    assert!(
        !plaintext.contains(&old_hex),
        "root 1's seed is still in the key file"
    );
    assert!(!plaintext.contains("next_signing_seed"));
    let reopened = Fleet::open(&dir.path().join("home"), access());
    assert_eq!(reopened.unwrap().governance_root().unwrap(), (root2, kid2));
}

#[test]
fn rotate_root_without_backup_and_with_no_record_yet() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = init(dir.path(), MasterBackup::NoBackup);
    let (root1, kid1) = fleet.governance_root().unwrap();
    let rotation = fleet
        .rotate_root("test", &MasterBackup::NoBackup, DAY)
        .unwrap();
    assert_eq!(rotation.backup["method"], "none");
    assert_eq!(rotation.handover.sequence, 1);
    assert_eq!(rotation.record_sequence, Some(2));
    // A fresh device pinned to root 1 takes the handover, then root 2's record.
    let mut device = GovernanceState::new("tractors", RootKey::new(root1, &kid1).unwrap()).unwrap();
    assert_eq!(
        verify_handover(&mut device, &rotation.handover.bytes, now_s()),
        Ok(())
    );
    let record = fleet.latest_generation_record().unwrap().unwrap();
    assert_eq!(record.sequence, 2);
    assert_eq!(
        verify_generation_record(&mut device, &record.bytes, now_s()),
        Ok(Acceptance::Updated)
    );
    // A second rotation chains: root 2 hands over to root 3.
    let second = fleet
        .rotate_root("again", &MasterBackup::NoBackup, DAY)
        .unwrap();
    assert_eq!(second.old_public_key, rotation.new_public_key);
    assert_eq!((second.number, second.handover.sequence), (3, 3));
    assert_eq!(
        verify_handover(&mut device, &second.handover.bytes, now_s()),
        Ok(())
    );
    assert_eq!(fleet.root_info().unwrap().handovers, vec![1, 3]);
    assert_eq!(key_id(&second.new_public_key), second.new_kid);
    fleet.audit_verify().unwrap();
}

#[test]
fn root_operations_are_refused_outside_the_governed_scheme() {
    let dir = tempfile::tempdir().unwrap();
    let options = InitOptions {
        fleet_id: "tractors".into(),
        scheme: Scheme::Derived,
        she_transport_key: None,
        work_factor: WorkFactor::Log2(4),
        backup: MasterBackup::NoBackup,
    };
    let mut fleet = Fleet::init(&dir.path().join("home"), options, access()).unwrap();
    assert!(matches!(
        fleet.rotate_root("x", &MasterBackup::NoBackup, DAY),
        Err(Error::NotGoverned { .. })
    ));
    assert!(matches!(fleet.root_info(), Err(Error::NotGoverned { .. })));
    assert!(matches!(
        fleet.restore_root(&[], "x"),
        Err(Error::NotGoverned { .. })
    ));
}
