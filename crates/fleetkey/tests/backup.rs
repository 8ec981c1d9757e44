//! The master key ceremony end to end on the soft module: `init` and `rotate` split the master
//! into custodian share files before it enters the module; a restore from any M of them, into a
//! new key file or into the fleet's own module, derives byte-identical device keys.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use fleetkey::backup::{BackupError, Share};
use fleetkey::error::Error;
use fleetkey::fleet::{Access, Clock, Fleet, InitOptions, MasterBackup, NewDevice, SecretString};
use fleetkey::model::{DeviceSerial, Scheme};
use fleetkey::module::KeyModule;
use fleetkey::module::soft::{SoftModule, WorkFactor};
use fleetkey::restore;
use fleetkey_core::derive::{DeviceKeyInputs, Generation, Revision, Usage};

struct TestClock(AtomicI64);
impl Clock for TestClock {
    fn now_ms(&self) -> i64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

const PASSPHRASE: &str = "correct horse battery staple";

fn access() -> Access {
    Access {
        passphrase: SecretString::from(PASSPHRASE.to_owned()),
        actor: "custodian-officer".into(),
        clock: Arc::new(TestClock(AtomicI64::new(1_767_225_600_000))),
    }
}

fn custodians() -> Vec<String> {
    ["alice", "bob", "carol", "dave", "erin"]
        .map(String::from)
        .to_vec()
}

fn three_of_five(dir: &Path) -> MasterBackup {
    MasterBackup::shares(3, custodians(), dir)
}

fn init(home: &Path, backup: MasterBackup) -> Result<Fleet, Error> {
    let options = InitOptions {
        fleet_id: "tractors".into(),
        scheme: Scheme::Derived,
        she_transport_key: None,
        work_factor: WorkFactor::Log2(4),
        backup,
    };
    Fleet::init(home, options, access())
}

fn serial(s: &str) -> DeviceSerial {
    DeviceSerial::new(s.as_bytes()).unwrap()
}

/// Registers and provisions a device; returns its keys (hex) as the station saw them.
fn provision(fleet: &mut Fleet, s: &str) -> (String, String, String) {
    fleet
        .add_device(NewDevice {
            serial: serial(s),
            she_uid: None,
            labels: vec![],
        })
        .unwrap();
    let p = fleet.provision(&serial(s)).unwrap();
    (
        p.keys.auth.clone(),
        p.keys.key_update.clone(),
        p.keys.roll_seed.clone(),
    )
}

/// The same keys derived through a module directly.
fn derive(module: &dyn KeyModule, generation: u32, s: &str) -> (String, String, String) {
    let bytes = s.as_bytes();
    let key = |usage| {
        let inputs = DeviceKeyInputs {
            usage,
            generation: Generation(generation),
            revision: Revision::ZERO,
            serial: fleetkey_core::Serial::new(bytes).unwrap(),
        };
        hex::encode(module.derive(&inputs).unwrap().expose_secret())
    };
    (
        key(Usage::Auth),
        key(Usage::KeyUpdate),
        key(Usage::RollSeed),
    )
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn read(paths: &[&PathBuf]) -> Vec<Share> {
    paths.iter().map(|p| Share::read(p).unwrap()).collect()
}

#[test]
fn a_3_of_5_ceremony_and_a_restore_into_a_new_key_file_give_the_same_device_keys() {
    let dir = tempfile::tempdir().unwrap();
    let shares_dir = dir.path().join("shares");
    let mut fleet = init(&dir.path().join("home"), three_of_five(&shares_dir)).unwrap();
    let original = provision(&mut fleet, "ECU-0001");
    let written = files(&shares_dir);
    assert_eq!(written.len(), 5);
    assert!(
        written[1]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("tractors-g1-share-2-of-5-bob")
    );

    // The audit records the backup (M, N, custodians, the whole KCV) and no share bytes.
    let records = fleet.master_backups(1).unwrap();
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record["method"], "shares");
    assert_eq!(record["threshold"], 3);
    assert_eq!(record["count"], 5);
    assert_eq!(record["custodians"][4], "erin");
    let shares = read(&written.iter().collect::<Vec<_>>());
    assert_eq!(
        record["master_kcv"],
        shares[0].info().master_kcv.to_string()
    );
    let audit =
        serde_json::to_string(&fleet.audit_show(&Default::default(), 0, 1000).unwrap()).unwrap();
    for path in &written {
        let text = std::fs::read_to_string(path).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(!audit.contains(doc["share"].as_str().unwrap()));
    }

    // Any 3 of the 5 restore it into a fresh key file; derivations are byte-identical.
    for (n, pick) in [[0, 1, 2], [4, 2, 0], [1, 3, 4]].iter().enumerate() {
        let key_file = dir.path().join(format!("restored-{n}.age"));
        let module = SoftModule::create_with(&key_file, PASSPHRASE, WorkFactor::Log2(4)).unwrap();
        let chosen = read(&pick.iter().map(|&i| &written[i]).collect::<Vec<_>>());
        let report = restore::restore_into(&module, &chosen, None).unwrap();
        assert_eq!((report.generation, report.threshold), (1, 3));
        drop(module);
        let reopened = SoftModule::open(&key_file, PASSPHRASE).unwrap();
        assert_eq!(derive(&reopened, 1, "ECU-0001"), original);
    }
    let again = fleet.provision(&serial("ECU-0001")).unwrap();
    assert_eq!(
        (
            again.keys.auth.clone(),
            again.keys.key_update.clone(),
            again.keys.roll_seed.clone()
        ),
        original
    );

    // Two shares are not enough.
    let module =
        SoftModule::create_with(dir.path().join("two.age"), PASSPHRASE, WorkFactor::Log2(4))
            .unwrap();
    let err = restore::restore_into(&module, &read(&[&written[0], &written[1]]), None).unwrap_err();
    assert!(matches!(
        err,
        Error::Backup(BackupError::NotEnough { have: 2, need: 3 })
    ));
    assert!(module.masters().unwrap().is_empty());
}

#[test]
fn rotation_runs_the_ceremony_and_a_lost_master_is_restored_into_the_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let g1_dir = dir.path().join("g1");
    let g2_dir = dir.path().join("g2");
    let mut fleet = init(&home, three_of_five(&g1_dir)).unwrap();
    // The key file as it was before the rotation (the operator's last copy).
    let before = std::fs::read(home.join("keys.age")).unwrap();
    let g2 = fleet.rotate("yearly", &three_of_five(&g2_dir)).unwrap();
    assert_eq!(g2.generation, 2);
    let original = provision(&mut fleet, "ECU-0002");
    assert_eq!(fleet.master_backups(2).unwrap().len(), 1);
    drop(fleet);

    // The key file is lost and replaced by the older copy: generation 2's master is missing.
    std::fs::write(home.join("keys.age"), before).unwrap();
    let mut fleet = Fleet::open(&home, access()).unwrap();
    let err = fleet.provision(&serial("ECU-0002")).unwrap_err();
    assert!(
        matches!(err, Error::Module(fleetkey::ModuleError::NoMaster(2))),
        "{err}"
    );

    // Shares of generation 1 mixed with generation 2 are refused, naming the file.
    let g1 = files(&g1_dir);
    let g2_files = files(&g2_dir);
    let mixed = read(&[&g2_files[0], &g2_files[1], &g1[2]]);
    let err = fleet
        .restore_master(&mixed, None, "lost key file")
        .unwrap_err();
    assert!(
        err.to_string().contains(&g1[2].display().to_string()),
        "{err}"
    );
    // Generation 1's master is still there: restoring it again is refused.
    let err = fleet
        .restore_master(&read(&[&g1[0], &g1[1], &g1[2]]), None, "x")
        .unwrap_err();
    assert!(err.to_string().contains("already has a master"), "{err}");
    // --generation must agree with the shares.
    let three = read(&[&g2_files[4], &g2_files[0], &g2_files[2]]);
    let err = fleet
        .restore_master(&three, Some(1), "lost key file")
        .unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");

    let report = fleet
        .restore_master(&three, Some(2), "lost key file")
        .unwrap();
    assert_eq!(report.generation, 2);
    assert_eq!(report.module, "soft");
    let again = fleet.provision(&serial("ECU-0002")).unwrap();
    assert_eq!(
        (
            again.keys.auth.clone(),
            again.keys.key_update.clone(),
            again.keys.roll_seed.clone()
        ),
        original
    );
    let restores = fleet
        .audit_show(
            &fleetkey::audit::AuditFilter {
                action: Some("master.restore".into()),
                ..Default::default()
            },
            0,
            10,
        )
        .unwrap();
    assert_eq!(restores.len(), 1);
    assert_eq!(
        restores[0].draft.details["shares_used"][0]["custodian"],
        "erin"
    );
    assert_eq!(fleet.audit_verify().unwrap(), restores[0].seq);
}

#[test]
fn a_failed_ceremony_leaves_no_shares_and_no_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let shares_dir = dir.path().join("shares");
    std::fs::create_dir(&shares_dir).unwrap();
    // A share file of an interrupted earlier attempt blocks the ceremony before anything else.
    std::fs::write(
        shares_dir.join("tractors-g1-share-5-of-5-erin.json"),
        b"stale",
    )
    .unwrap();
    let home = dir.path().join("home");
    let err = init(&home, three_of_five(&shares_dir)).unwrap_err();
    assert!(
        matches!(err, Error::Backup(BackupError::Exists { .. })),
        "{err}"
    );
    assert!(!home.exists());
    assert_eq!(files(&shares_dir).len(), 1);

    // Bad parameters are refused before a master exists.
    let err = init(
        &home,
        MasterBackup::shares(4, vec!["a".into(), "b".into()], &shares_dir),
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::Backup(BackupError::Invalid { .. })),
        "{err}"
    );
    assert!(!home.exists());

    // The stored scheme has no master to split.
    let options = InitOptions {
        fleet_id: "s".into(),
        scheme: Scheme::Stored,
        she_transport_key: None,
        work_factor: WorkFactor::Log2(4),
        backup: three_of_five(&dir.path().join("s")),
    };
    assert!(matches!(
        Fleet::init(&home, options, access()),
        Err(Error::SharesWithoutMaster(Scheme::Stored))
    ));
}

#[test]
fn without_backup_the_master_is_made_in_the_module_and_the_audit_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = init(&dir.path().join("home"), MasterBackup::NoBackup).unwrap();
    let records = fleet.master_backups(1).unwrap();
    assert_eq!(records, vec![serde_json::json!({"method": "none"})]);
    let g2 = fleet
        .create_generation("prepare", &MasterBackup::NoBackup)
        .unwrap();
    assert_eq!(fleet.master_backups(g2.generation).unwrap().len(), 1);
    // Provisioning works on generation 1.
    let keys = provision(&mut fleet, "ECU-9");
    let module = SoftModule::open(dir.path().join("home").join("keys.age"), PASSPHRASE).unwrap();
    assert_eq!(derive(&module, 1, "ECU-9"), keys);
}
