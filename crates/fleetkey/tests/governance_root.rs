//! The governance root's lifecycle through the library: its custodian shares at `init`, restored
//! into a new key file with the same public key; wrong and too few shares refused with typed
//! errors; root rotation end to end against a device state pinned to the first root (the
//! handover accepted once, records of the new root accepted, of the old root refused), with the
//! audit chain intact and the old root gone from the key file.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use ed25519_dalek::Signer as _;
use fleetkey::backup::{self, BackupError, Secret, Share};
use fleetkey::error::{Error, ModuleError};
use fleetkey::fleet::root::ROOT_ROTATE_ACTION;
use fleetkey::fleet::{Access, Clock, Fleet, InitOptions, MasterBackup, SecretString};
use fleetkey::governance::{GenerationRecordSpec, key_id};
use fleetkey::model::{Scheme, WrappedKey};
use fleetkey::module::soft::{SoftModule, WorkFactor};
use fleetkey::module::{BulkDeriver, KeyModule, SigningSeed};
use fleetkey::restore;
use fleetkey_core::derive::{DeviceKeyInputs, Generation};
use fleetkey_core::governance::{
    Acceptance, Challenge, GovernanceError, GovernanceState, Record, Role, RootKey,
    inspect_unverified, possession_message, verify_generation_record, verify_grant,
    verify_handover, verify_possession,
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
    let report = restore::restore_root_into(&module, &shares[1..], Some(&public)).unwrap();
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
        restore::restore_root_into(&module, &shares[..2], Some(&public)),
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
        restore::restore_root_into(&module, &other[..2], Some(&public)),
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
    assert_eq!(
        SoftModule::open(&key_file, PASSPHRASE)
            .unwrap()
            .staged_signing_public_key()
            .unwrap(),
        None
    );
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

/// A soft module that fails, once, where a crash would interrupt a root rotation: the promote
/// (after the handover is recorded), or the first signature after the promote (the grants'
/// re-issue).
struct Interrupting {
    inner: SoftModule,
    fail_promote: AtomicBool,
    fail_sign_after_promote: AtomicBool,
    promoted: AtomicBool,
}

impl Interrupting {
    fn open(home: &Path, fail_promote: bool) -> Arc<dyn KeyModule> {
        Arc::new(Interrupting {
            inner: SoftModule::open(home.join("keys.age"), PASSPHRASE).unwrap(),
            fail_promote: AtomicBool::new(fail_promote),
            fail_sign_after_promote: AtomicBool::new(!fail_promote),
            promoted: AtomicBool::new(false),
        })
    }
}

fn interrupted() -> ModuleError {
    ModuleError::Backend {
        operation: "test",
        detail: "interrupted".into(),
    }
}

impl KeyModule for Interrupting {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn create_master(&self, g: Generation) -> Result<(), ModuleError> {
        self.inner.create_master(g)
    }
    fn import_master(
        &self,
        g: Generation,
        m: &fleetkey_core::MasterKey,
    ) -> Result<(), ModuleError> {
        self.inner.import_master(g, m)
    }
    fn masters(&self) -> Result<Vec<Generation>, ModuleError> {
        self.inner.masters()
    }
    fn derive(
        &self,
        i: &DeviceKeyInputs<'_>,
    ) -> Result<fleetkey_core::derive::DeviceKey, ModuleError> {
        self.inner.derive(i)
    }
    fn bulk_deriver(&self, g: Generation) -> Result<Box<dyn BulkDeriver + '_>, ModuleError> {
        self.inner.bulk_deriver(g)
    }
    fn destroy_master(&self, g: Generation) -> Result<(), ModuleError> {
        self.inner.destroy_master(g)
    }
    fn ensure_kek(&self) -> Result<(), ModuleError> {
        self.inner.ensure_kek()
    }
    fn wrap(&self, key: &[u8]) -> Result<WrappedKey, ModuleError> {
        self.inner.wrap(key)
    }
    fn unwrap(&self, w: &WrappedKey) -> Result<zeroize::Zeroizing<Vec<u8>>, ModuleError> {
        self.inner.unwrap(w)
    }
    fn new_wrapped_root(&self) -> Result<WrappedKey, ModuleError> {
        self.inner.new_wrapped_root()
    }
    fn derive_with_root(
        &self,
        r: &WrappedKey,
        i: &DeviceKeyInputs<'_>,
    ) -> Result<fleetkey_core::derive::DeviceKey, ModuleError> {
        self.inner.derive_with_root(r, i)
    }
    fn ensure_signing_key(&self) -> Result<[u8; 32], ModuleError> {
        self.inner.ensure_signing_key()
    }
    fn signing_public_key(&self) -> Result<Option<[u8; 32]>, ModuleError> {
        self.inner.signing_public_key()
    }
    fn sign(&self, message: &[u8]) -> Result<[u8; 64], ModuleError> {
        if self.promoted.load(Ordering::SeqCst)
            && self.fail_sign_after_promote.swap(false, Ordering::SeqCst)
        {
            return Err(interrupted());
        }
        self.inner.sign(message)
    }
    fn import_signing_key(&self, seed: &SigningSeed) -> Result<[u8; 32], ModuleError> {
        self.inner.import_signing_key(seed)
    }
    fn stage_signing_key(&self, seed: Option<&SigningSeed>) -> Result<[u8; 32], ModuleError> {
        self.inner.stage_signing_key(seed)
    }
    fn staged_signing_public_key(&self) -> Result<Option<[u8; 32]>, ModuleError> {
        self.inner.staged_signing_public_key()
    }
    fn promote_signing_key(&self) -> Result<[u8; 32], ModuleError> {
        if self.fail_promote.swap(false, Ordering::SeqCst) {
            return Err(interrupted());
        }
        let public = self.inner.promote_signing_key()?;
        self.promoted.store(true, Ordering::SeqCst);
        Ok(public)
    }
}

/// A governed fleet on a clock the test moves, with a first record, and three grants: 1 live,
/// 2 denied, 3 expired by the time of the rotation. Returns the fleet, the clock, the device
/// pinned to root 1 (which accepted the first record and grant 1) and grant 1's old bytes.
fn fleet_with_grants(home: &Path) -> (Fleet, Arc<AtomicI64>, GovernanceState, Vec<u8>) {
    let clock = Arc::new(AtomicI64::new(START_MS));
    let access = Access {
        passphrase: SecretString::from(PASSPHRASE.to_owned()),
        actor: "test".into(),
        clock: Arc::new(TestClock(Arc::clone(&clock))),
    };
    let options = InitOptions {
        fleet_id: "tractors".into(),
        scheme: Scheme::Governed,
        she_transport_key: None,
        work_factor: WorkFactor::Log2(4),
        backup: MasterBackup::NoBackup,
    };
    let mut fleet = Fleet::init(home, options, access).unwrap();
    let (root1, kid1) = fleet.governance_root().unwrap();
    let mut device = GovernanceState::new("tractors", RootKey::new(root1, &kid1).unwrap()).unwrap();
    let record = fleet.publish_generation_record("first", 30 * DAY).unwrap();
    verify_generation_record(&mut device, &record.bytes, now_s()).unwrap();
    let key = technician_key();
    let (id, grant1) = fleet
        .issue_grant(
            "jane",
            Role::Technician,
            &[b"ECU-".to_vec()],
            7 * DAY,
            key.verifying_key().to_bytes(),
        )
        .unwrap();
    assert_eq!(id, 1);
    fleet
        .issue_grant("lost", Role::Operator, &[Vec::new()], 7 * DAY, [8; 32])
        .unwrap();
    fleet
        .issue_grant(
            "brief",
            Role::Technician,
            &[Vec::new()],
            Duration::from_secs(3600),
            [9; 32],
        )
        .unwrap();
    fleet.deny_grant(2, "laptop lost").unwrap();
    assert_eq!(
        verify_grant(&device, &grant1, b"ECU-0001", now_s()).map(|g| g.id),
        Ok(1)
    );
    clock.fetch_add(2 * 3600 * 1000, Ordering::Relaxed);
    (fleet, clock, device, grant1)
}

fn technician_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[7; 32])
}

fn names(paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn reissue_events(fleet: &mut Fleet) -> Vec<serde_json::Value> {
    let filter = fleetkey::audit::AuditFilter {
        action: Some("grant.reissue".into()),
        ..Default::default()
    };
    fleet
        .audit_show(&filter, 0, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.draft.details)
        .collect()
}

/// A device that took the handover accepts the exported grant (and its proof of possession);
/// before the handover it refuses it (a record of a root it does not pin) and still accepts the
/// old bytes, as it accepts every record of the old root until then.
fn check_device_takes_reissued_grant(
    device: &mut GovernanceState,
    out: &Path,
    handover: &str,
    record: &str,
    old_grant: &[u8],
) {
    let now = now_s() + 2 * 3600;
    let grant = std::fs::read(out.join("grant-1.cose")).unwrap();
    assert_eq!(
        verify_grant(device, &grant, b"ECU-0001", now).map(|g| g.id),
        Err(GovernanceError::UnknownKid)
    );
    assert_eq!(
        verify_grant(device, old_grant, b"ECU-0001", now).map(|g| g.id),
        Ok(1)
    );
    let handover = std::fs::read(out.join(handover)).unwrap();
    assert_eq!(verify_handover(device, &handover, now), Ok(()));
    let record = std::fs::read(out.join(record)).unwrap();
    assert_eq!(
        verify_generation_record(device, &record, now),
        Ok(Acceptance::Updated)
    );
    let g = verify_grant(device, &grant, b"ECU-0001", now).unwrap();
    let Ok((_, Record::Grant(old))) = inspect_unverified(old_grant) else {
        panic!("not a grant");
    };
    // The same grant: id, subject, role, scope, key and window; only kid and signature differ.
    assert_eq!(
        (
            g.id,
            g.subject,
            g.role,
            g.scope,
            g.subject_key,
            g.not_before,
            g.not_after
        ),
        (
            old.id,
            old.subject,
            old.role,
            old.scope,
            old.subject_key,
            old.not_before,
            old.not_after
        )
    );
    let challenge = Challenge::from_nonce([5; 32]);
    let signature = technician_key()
        .sign(&possession_message(g.id, &challenge))
        .to_bytes();
    assert_eq!(verify_possession(&g, &challenge, &signature), Ok(()));
    // The old root's grant is refused once the device pins the new root.
    assert_eq!(
        verify_grant(device, old_grant, b"ECU-0001", now).map(|g| g.id),
        Err(GovernanceError::UnknownKid)
    );
    // The deny list still names grant 2.
    assert!(device.denied_grants().contains(&2));
}

#[test]
fn rotate_root_reissues_the_live_grants_under_the_new_root() {
    let dir = tempfile::tempdir().unwrap();
    let (mut fleet, _clock, mut device, old_grant) = fleet_with_grants(&dir.path().join("home"));
    let (_, kid1) = fleet.governance_root().unwrap();
    let rotation = fleet
        .rotate_root("yearly", &MasterBackup::NoBackup, 30 * DAY)
        .unwrap();
    assert_eq!(rotation.reissued_grants, vec![1]);
    let out = dir.path().join("records");
    let written = fleet.export_records(&out).unwrap();
    // Grant 2 is denied, grant 3 expired under root 1: neither is written.
    let handover = format!("root-handover-{}.cose", rotation.handover.sequence);
    let record = format!(
        "generation-record-{}.cose",
        rotation.record_sequence.unwrap()
    );
    assert_eq!(names(&written), [&handover, &record, "grant-1.cose"]);
    // The store holds the re-issued grant; nothing else about it changed.
    let info = fleet.grant(1).unwrap();
    assert_eq!(
        hex::decode(&info.record).unwrap(),
        std::fs::read(out.join("grant-1.cose")).unwrap()
    );
    assert!(!info.denied);
    let events = reissue_events(&mut fleet);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["grant"], 1);
    assert_eq!(events[0]["old_kid"], hex::encode(kid1));
    assert_eq!(events[0]["kid"], hex::encode(rotation.new_kid));
    check_device_takes_reissued_grant(&mut device, &out, &handover, &record, &old_grant);
    // Denying the re-issued grant works by its id, as before.
    let denial = fleet.deny_grant(1, "left the company").unwrap();
    verify_generation_record(&mut device, &denial.bytes, now_s() + 7200).unwrap();
    let grant = std::fs::read(out.join("grant-1.cose")).unwrap();
    assert_eq!(
        verify_grant(&device, &grant, b"ECU-0001", now_s() + 7200).map(|g| g.id),
        Err(GovernanceError::Denied)
    );
    // A second rotation with nothing live re-issues nothing.
    let again = fleet
        .rotate_root("again", &MasterBackup::NoBackup, 30 * DAY)
        .unwrap();
    assert!(again.reissued_grants.is_empty());
    fleet.audit_verify().unwrap();
}

#[test]
fn a_rotation_interrupted_before_the_promote_is_finished_by_the_export() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let (fleet, clock, mut device, old_grant) = fleet_with_grants(&home);
    drop(fleet);
    let access = || Access {
        passphrase: SecretString::from(PASSPHRASE.to_owned()),
        actor: "test".into(),
        clock: Arc::new(TestClock(Arc::clone(&clock))),
    };
    let mut fleet =
        Fleet::open_with_module(&home, Interrupting::open(&home, true), access()).unwrap();
    assert!(
        fleet
            .rotate_root("yearly", &MasterBackup::NoBackup, 30 * DAY)
            .is_err()
    );
    drop(fleet);
    // The store pins root 2; the module still signs with root 1 and has root 2 staged; grant 1
    // and the newest record are root 1's.
    let mut fleet = Fleet::open(&home, access()).unwrap();
    let (root2, kid2) = fleet.governance_root().unwrap();
    assert_eq!(
        file_module(&home).staged_signing_public_key().unwrap(),
        Some(root2)
    );
    assert!(reissue_events(&mut fleet).is_empty());
    let out = dir.path().join("records");
    let written = fleet.export_records(&out).unwrap();
    // Export finished the rotation: root 2 promoted, grant 1 re-issued, a record of root 2.
    assert_eq!(
        file_module(&home).staged_signing_public_key().unwrap(),
        None
    );
    assert_eq!(
        file_module(&home).signing_public_key().unwrap(),
        Some(root2)
    );
    let events = reissue_events(&mut fleet);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["kid"], hex::encode(kid2));
    assert_eq!(
        events[0]["reason"],
        "root rotation finished after an interruption"
    );
    let handovers = fleet.handovers().unwrap();
    let handover = format!("root-handover-{}.cose", handovers[0].sequence);
    let latest = fleet.latest_generation_record().unwrap().unwrap();
    assert!(latest.sequence > handovers[0].sequence);
    let record = format!("generation-record-{}.cose", latest.sequence);
    assert_eq!(names(&written), [&handover, &record, "grant-1.cose"]);
    check_device_takes_reissued_grant(&mut device, &out, &handover, &record, &old_grant);
    // A second export has nothing left to finish: the same files.
    let again = fleet.export_records(&out).unwrap();
    assert_eq!(again, written);
    assert_eq!(reissue_events(&mut fleet).len(), 1);
    fleet.audit_verify().unwrap();
}

#[test]
fn a_rotation_interrupted_after_the_promote_is_finished_by_the_next_signature() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let (fleet, clock, mut device, old_grant) = fleet_with_grants(&home);
    drop(fleet);
    let access = || Access {
        passphrase: SecretString::from(PASSPHRASE.to_owned()),
        actor: "test".into(),
        clock: Arc::new(TestClock(Arc::clone(&clock))),
    };
    let mut fleet =
        Fleet::open_with_module(&home, Interrupting::open(&home, false), access()).unwrap();
    assert!(
        fleet
            .rotate_root("yearly", &MasterBackup::NoBackup, 30 * DAY)
            .is_err()
    );
    drop(fleet);
    // Root 1 is destroyed, root 2 signs; grant 1 is still root 1's and not exported as such.
    let mut fleet = Fleet::open(&home, access()).unwrap();
    let (root2, _) = fleet.governance_root().unwrap();
    assert_eq!(
        file_module(&home).signing_public_key().unwrap(),
        Some(root2)
    );
    assert_eq!(
        hex::decode(fleet.grant(1).unwrap().record).unwrap(),
        old_grant
    );
    // The next command that signs re-issues it first.
    let published = fleet
        .publish_generation_record("after the crash", 30 * DAY)
        .unwrap();
    assert_eq!(reissue_events(&mut fleet).len(), 1);
    let out = dir.path().join("records");
    let written = fleet.export_records(&out).unwrap();
    let handover = format!(
        "root-handover-{}.cose",
        fleet.handovers().unwrap()[0].sequence
    );
    let record = format!("generation-record-{}.cose", published.sequence);
    assert_eq!(names(&written), [&handover, &record, "grant-1.cose"]);
    check_device_takes_reissued_grant(&mut device, &out, &handover, &record, &old_grant);
    fleet.audit_verify().unwrap();
}

/// The fleet's key file as it is on disk now (what the fleet's module holds after its writes).
fn file_module(home: &Path) -> SoftModule {
    SoftModule::open(home.join("keys.age"), PASSPHRASE).unwrap()
}
