//! The key manager end to end on the embedded defaults: init, devices, lifecycle, schemes,
//! generations and rotation, SHE updates accepted by a software SHE, audit, zeroization.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use fleetkey::error::Error;
use fleetkey::fleet::{Access, Clock, Fleet, InitOptions, MasterBackup, NewDevice, SecretString};
use fleetkey::lifecycle::State;
use fleetkey::model::{DeviceFilter, DeviceSerial, Scheme};
use fleetkey::module::KeyModule as _;
use fleetkey::module::soft::{SoftModule, WorkFactor};
use fleetkey_core::Key128;
use fleetkey_core::she::{M1, M2, M3, SlotId, SoftShe, Uid};

struct TestClock(AtomicI64);
impl Clock for TestClock {
    fn now_ms(&self) -> i64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

const TRANSPORT: [u8; 16] = [0x7a; 16];
const UID: [u8; 15] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34];

fn access() -> Access {
    Access {
        passphrase: SecretString::from("correct horse battery staple".to_owned()),
        actor: "test".into(),
        clock: Arc::new(TestClock(AtomicI64::new(1_767_225_600_000))),
    }
}

fn init(dir: &std::path::Path, scheme: Scheme) -> Fleet {
    let options = InitOptions {
        fleet_id: "tractors".into(),
        scheme,
        she_transport_key: Some(Key128::from_bytes(TRANSPORT)),
        work_factor: WorkFactor::Log2(4),
        backup: MasterBackup::NoBackup,
    };
    Fleet::init(&dir.join("home"), options, access()).unwrap()
}

fn serial(s: &str) -> DeviceSerial {
    DeviceSerial::new(s.as_bytes()).unwrap()
}

fn add(fleet: &mut Fleet, s: &str) {
    fleet
        .add_device(NewDevice {
            serial: serial(s),
            she_uid: Some(UID),
            labels: vec!["line=1".into()],
        })
        .unwrap();
}

fn load(she: &mut SoftShe, updates: &[fleetkey::fleet::material::SheUpdate]) {
    for u in updates {
        let m1 = M1::from_bytes(&hex::decode(&u.m1).unwrap()).unwrap();
        let m2 = M2::from_bytes(&hex::decode(&u.m2).unwrap()).unwrap();
        let m3 = M3::from_bytes(&hex::decode(&u.m3).unwrap()).unwrap();
        let (m4, m5) = she
            .load_key(&m1, &m2, &m3)
            .unwrap_or_else(|e| panic!("{} refused: {e}", u.slot));
        assert_eq!(hex::encode(m4.to_bytes()), u.m4);
        assert_eq!(hex::encode(m5.to_bytes()), u.m5);
    }
}

#[test]
fn derived_fleet_walkthrough_with_she_updates() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = init(dir.path(), Scheme::Derived);
    add(&mut fleet, "ECU-1");
    add(&mut fleet, "ECU-2");

    // Provisioning: keys for the station, the initial SHE load under the transport key.
    let p = fleet.provision(&serial("ECU-1")).unwrap();
    assert_eq!(p.device.state, State::Active);
    let mut she = SoftShe::new(Uid::from_bytes(UID), Some(Key128::from_bytes(TRANSPORT)));
    load(&mut she, p.she.as_ref().unwrap());
    let auth = hex::decode(&p.keys.auth).unwrap();
    let mac = she.generate_mac(SlotId::Key1, b"frame").unwrap();
    assert_eq!(
        mac,
        fleetkey_core::she::cmac(&Key128::from_slice(&auth).unwrap(), b"frame")
    );
    // A station's retry gets the same material and changes nothing.
    let again = fleet.provision(&serial("ECU-1")).unwrap();
    assert_eq!(again.keys.auth, p.keys.auth);

    // Refresh: revision 1, carried by SHE updates authorised by the current KEY_UPDATE key.
    let update = fleet.refresh(&serial("ECU-1"), "scheduled").unwrap();
    assert_eq!((update.from, update.device.revision), ((1, 0), 1));
    load(&mut she, &update.she);
    let refreshed = fleet.provision(&serial("ECU-1")).unwrap();
    assert_ne!(refreshed.keys.auth, p.keys.auth);
    assert_eq!(
        she.generate_mac(SlotId::Key1, b"frame").unwrap(),
        fleetkey_core::she::cmac(
            &Key128::from_slice(&hex::decode(&refreshed.keys.auth).unwrap()).unwrap(),
            b"frame"
        )
    );
    // Replaying the old update is refused by the SHE: the counter must go up.
    let m1 = M1::from_bytes(&hex::decode(&update.she[0].m1).unwrap()).unwrap();
    let m2 = M2::from_bytes(&hex::decode(&update.she[0].m2).unwrap()).unwrap();
    let m3 = M3::from_bytes(&hex::decode(&update.she[0].m3).unwrap()).unwrap();
    assert!(she.load_key(&m1, &m2, &m3).is_err());

    // Rotation: generation 2 becomes current; devices migrate by refresh.
    let g2 = fleet
        .rotate("yearly rotation", &MasterBackup::NoBackup)
        .unwrap();
    assert_eq!(g2.generation, 2);
    fleet.provision(&serial("ECU-2")).unwrap();
    let status = fleet.rotation_status().unwrap();
    assert_eq!((status.current, status.pending), (Some(2), 2));
    // Generation 1 cannot be destroyed while devices depend on it.
    let refused = fleet.destroy_generation(1, "too early", false).unwrap_err();
    assert!(
        refused.to_string().contains("2 devices still depend"),
        "{refused}"
    );
    let filter = DeviceFilter {
        generation: Some(1),
        ..Default::default()
    };
    let mut out = Vec::new();
    let report = fleet
        .refresh_all(&filter, "migrate to 2", &mut out, &())
        .unwrap();
    assert_eq!(report.devices, 2);
    let migrated: Vec<serde_json::Value> = out
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(migrated.len(), 2);
    assert!(migrated.iter().all(|u| u["device"]["generation"] == 2));
    assert_eq!(fleet.rotation_status().unwrap().pending, 0);
    let g1 = fleet.destroy_generation(1, "migrated", false).unwrap();
    assert_eq!(g1.state, State::Destroyed);
    let key_file = dir.path().join("home").join("keys.age");
    let module = SoftModule::open(&key_file, "correct horse battery staple").unwrap();
    assert!(
        !module
            .masters()
            .unwrap()
            .contains(&fleetkey_core::Generation(1))
    );

    // Lifecycle.
    fleet.suspend(&serial("ECU-2"), "workshop").unwrap();
    assert!(matches!(
        fleet.refresh(&serial("ECU-2"), "x"),
        Err(Error::NotRefreshable {
            state: State::Suspended,
            ..
        })
    ));
    assert!(matches!(
        fleet.suspend(&serial("ECU-2"), "again"),
        Err(Error::Transition { .. })
    ));
    fleet.resume(&serial("ECU-2"), "back").unwrap();
    fleet.revoke(&serial("ECU-2"), "stolen").unwrap();
    assert!(matches!(
        fleet.resume(&serial("ECU-2"), "no"),
        Err(Error::Transition { .. })
    ));
    let gone = fleet.decommission(&serial("ECU-2"), "scrapped").unwrap();
    assert_eq!(gone.state, State::DestroyedCompromised);
    let gone = fleet.decommission(&serial("ECU-1"), "end of life").unwrap();
    assert_eq!(gone.state, State::Destroyed);

    // Every step is in the audit chain, which verifies.
    let events = fleet.audit_verify().unwrap();
    assert!(events >= 15, "{events} events");
    let filter = fleetkey::audit::AuditFilter {
        device: Some(serial("ECU-2")),
        ..Default::default()
    };
    let actions: Vec<String> = fleet
        .audit_show(&filter, 0, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.draft.action)
        .collect();
    assert_eq!(actions.first().map(String::as_str), Some("device.add"));
    assert!(
        actions.contains(&"device.revoke".to_owned())
            && actions.contains(&"device.decommission".to_owned())
    );
}

#[test]
fn illegal_and_unknown_inputs_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = init(dir.path(), Scheme::Derived);
    add(&mut fleet, "ECU-1");
    let before = fleet.audit_verify().unwrap();
    let dup = fleet
        .add_device(NewDevice {
            serial: serial("ECU-1"),
            she_uid: None,
            labels: vec![],
        })
        .unwrap_err();
    assert!(dup.to_string().contains("already registered"), "{dup}");
    let missing = fleet.refresh(&serial("nope"), "x").unwrap_err();
    assert!(missing.to_string().contains("no device nope"));
    assert!(matches!(missing, Error::NoSuchDevice(_)), "{missing}");
    assert!(matches!(dup, Error::DeviceExists(_)), "{dup}");
    // Pre-active cannot be suspended or refreshed.
    assert!(matches!(
        fleet.suspend(&serial("ECU-1"), "x"),
        Err(Error::Transition { .. })
    ));
    assert!(fleet.refresh(&serial("ECU-1"), "x").is_err());
    assert!(
        matches!(
            fleet.destroy_generation(1, "x", true),
            Err(Error::CurrentGeneration(1))
        ),
        "current generation"
    );
    assert_eq!(fleet.audit_verify().unwrap(), before);
    assert_eq!(
        fleet.device(&serial("ECU-1")).unwrap().state,
        State::PreActive
    );
}

#[test]
fn reopen_with_wrong_passphrase_is_refused_and_right_one_works() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = init(dir.path(), Scheme::Derived);
    drop(fleet);
    let home = dir.path().join("home");
    let mut wrong = access();
    wrong.passphrase = SecretString::from("wrong".to_owned());
    let err = Fleet::open(&home, wrong).unwrap_err();
    assert!(
        matches!(err, Error::Module(fleetkey::ModuleError::Authentication)),
        "{err}"
    );
    let mut fleet = Fleet::open(&home, access()).unwrap();
    assert_eq!(fleet.info().unwrap().id, "tractors");
    let missing = Fleet::open(&dir.path().join("elsewhere"), access()).unwrap_err();
    assert!(matches!(missing, Error::NoFleet(_)), "{missing}");
}

#[test]
fn init_refuses_an_existing_fleet() {
    let dir = tempfile::tempdir().unwrap();
    drop(init(dir.path(), Scheme::Stored));
    let options = InitOptions {
        fleet_id: "other".into(),
        scheme: Scheme::Derived,
        she_transport_key: None,
        work_factor: WorkFactor::Log2(4),
        backup: MasterBackup::NoBackup,
    };
    assert!(matches!(
        Fleet::init(&dir.path().join("home"), options, access()),
        Err(Error::FleetExists(_))
    ));
}

/// The stored scheme keeps each device root only wrapped; after decommission neither the wrapped
/// blob nor the device's keys appear in any file of the fleet home.
#[test]
fn stored_scheme_decommission_leaves_no_key_bytes_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = init(dir.path(), Scheme::Stored);
    add(&mut fleet, "ECU-Z");
    add(&mut fleet, "ECU-KEEP");
    let record = fleet.device(&serial("ECU-Z")).unwrap();
    let wrapped = record.wrapped_root.clone().unwrap().0;
    let p = fleet.provision(&serial("ECU-Z")).unwrap();
    let keys: Vec<Vec<u8>> = [&p.keys.auth, &p.keys.key_update, &p.keys.roll_seed]
        .iter()
        .map(|h| hex::decode(h).unwrap())
        .collect();
    let home = fleet.home().to_owned();
    let contains = |needle: &[u8]| {
        std::fs::read_dir(&home).unwrap().any(|e| {
            let bytes = std::fs::read(e.unwrap().path()).unwrap_or_default();
            bytes.windows(needle.len()).any(|w| w == needle)
        })
    };
    assert!(
        contains(&wrapped),
        "the wrapped root is stored before decommission"
    );
    for k in &keys {
        assert!(!contains(k), "plaintext keys are never stored");
    }
    fleet.decommission(&serial("ECU-Z"), "end of life").unwrap();
    assert!(
        fleet
            .device(&serial("ECU-Z"))
            .unwrap()
            .wrapped_root
            .is_none()
    );
    assert!(
        !contains(&wrapped),
        "the wrapped root is gone from every file"
    );
    for k in &keys {
        assert!(!contains(k));
    }
    // The other device is untouched.
    assert!(
        fleet
            .device(&serial("ECU-KEEP"))
            .unwrap()
            .wrapped_root
            .is_some()
    );
    fleet.audit_verify().unwrap();
}

#[test]
fn stored_scheme_refresh_draws_a_new_root() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = init(dir.path(), Scheme::Stored);
    add(&mut fleet, "S-1");
    let first = fleet.provision(&serial("S-1")).unwrap();
    let root = first.device.wrapped_root.clone();
    let update = fleet.refresh(&serial("S-1"), "rekey").unwrap();
    assert_ne!(update.device.wrapped_root, root);
    assert_eq!(update.device.revision, 1);
    assert!(matches!(
        fleet.rotate("x", &MasterBackup::NoBackup),
        Err(Error::NoMasterGenerations {
            scheme: Scheme::Stored,
            ..
        })
    ));
}

fn write_csv(dir: &std::path::Path, rows: &[&str]) -> std::path::PathBuf {
    let path = dir.join("devices.csv");
    std::fs::write(
        &path,
        format!("serial,she_uid,labels\n{}\n", rows.join("\n")),
    )
    .unwrap();
    path
}

#[test]
fn import_checks_the_whole_file_first_and_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = init(dir.path(), Scheme::Derived);
    let uid = "00000000000000000000000000abcd";
    let cases = [
        (vec!["A-1,,", "A-2,zz,"], "csv line 3: she_uid"),
        (vec!["A-1,,", "A-1,,"], "csv line 3: serial"),
        (vec!["A-1,00,"], "csv line 2: she_uid"),
        (vec!["A-1,,", ",,"], "csv line 3: serial"),
        (vec!["A-1,,,extra"], "csv line 2"),
        // The first problem in the file is the one named, within a batch and across batches.
        (vec!["A-1,,", "A-1,,", "A-2,zz,"], "csv line 3: serial"),
        (vec!["A-1,,", "A-2,zz,", "A-1,,"], "csv line 3: she_uid"),
        (
            vec!["A-1,,", "A-2,,", "A-3,,", "A-1,,", "A-4,zz,"],
            "csv line 5: serial",
        ),
        (
            vec!["A-1,,", "A-2,,", "A-3,,", "A-4,zz,", "A-1,,"],
            "csv line 5: she_uid",
        ),
    ];
    for ((rows, field), batch) in cases.iter().flat_map(|c| [(c, 10_000), (c, 2)]) {
        fleet.set_batch_size(batch);
        let path = write_csv(dir.path(), rows);
        let err = fleet.import_csv(&path, None, &()).unwrap_err();
        assert!(
            err.to_string().starts_with(field),
            "{rows:?} in batches of {batch}: {err}"
        );
        assert_eq!(
            fleet
                .devices(&DeviceFilter::default(), None, 10)
                .unwrap()
                .len(),
            0,
            "nothing written"
        );
    }
    let path = write_csv(
        dir.path(),
        &[&format!("A-1,{uid},line=2;model=T7"), "A-2,,", "hex:00ff,,"],
    );
    let report = fleet.import_csv(&path, None, &()).unwrap();
    assert_eq!((report.rows, report.added), (3, 3));
    let a1 = fleet.device(&serial("A-1")).unwrap();
    assert_eq!(a1.labels, vec!["line=2", "model=T7"]);
    assert_eq!(hex::encode(a1.she_uid.unwrap()), uid);
    // A rerun finds everything registered and adds nothing.
    let again = fleet.import_csv(&path, None, &()).unwrap();
    assert_eq!((again.added, again.already_present), (0, 3));
    // A conflicting row is refused before anything is written.
    let path = write_csv(dir.path(), &["A-3,,", "A-2,,other-label"]);
    assert!(fleet.import_csv(&path, None, &()).is_err());
    assert!(fleet.device(&serial("A-3")).is_err());
}

#[test]
fn bulk_provisioning_writes_material_and_activates() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = init(dir.path(), Scheme::Derived);
    let rows: Vec<String> = (0..25_000).map(|i| format!("B-{i:06},,")).collect();
    let path = write_csv(
        dir.path(),
        &rows.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    fleet.import_csv(&path, None, &()).unwrap();
    let mut out = Vec::new();
    let n = fleet
        .provision_all(&DeviceFilter::default(), &mut out, &())
        .unwrap()
        .devices;
    assert_eq!(n, 25_000);
    let lines: Vec<serde_json::Value> = out
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 25_000);
    // The bulk path gives the same keys as the single path.
    let one = fleet.provision(&serial("B-012345")).unwrap();
    let line = lines.iter().find(|l| l["serial"] == "B-012345").unwrap();
    assert_eq!(line["keys"]["auth"], one.keys.auth.as_str());
    assert_eq!(line["keys"]["roll_seed"], one.keys.roll_seed.as_str());
    let active = DeviceFilter {
        state: Some(State::Active),
        ..Default::default()
    };
    assert_eq!(fleet.devices(&active, None, 30_000).unwrap().len(), 25_000);
    fleet.audit_verify().unwrap();
}

#[test]
fn a_fleet_opened_with_an_opener_opens_the_module_only_for_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = init(dir.path(), Scheme::Derived);
    add(&mut fleet, "ECU-1");
    drop(fleet);
    let home = dir.path().join("home");
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let opener = |fail: bool| -> fleetkey::fleet::ModuleOpener {
        let calls = Arc::clone(&calls);
        let home = home.clone();
        Box::new(move || {
            calls.fetch_add(1, Ordering::SeqCst);
            if fail {
                return Err(Error::invalid("passphrase", "none given"));
            }
            fleetkey::fleet::open_module(&home, &access())
        })
    };
    let mut fleet = Fleet::open_with_opener(&home, access(), opener(true)).unwrap();
    let status = fleet.status().unwrap();
    assert_eq!(status.module, "soft");
    fleet.device(&serial("ECU-1")).unwrap();
    fleet.devices(&DeviceFilter::default(), None, 10).unwrap();
    fleet.audit_verify().unwrap();
    fleet.rotation_status().unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // An operation that needs a key fails with the opener's error and changes nothing.
    let events = fleet.audit_verify().unwrap();
    assert!(matches!(
        fleet.provision(&serial("ECU-1")),
        Err(Error::Invalid { .. })
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(fleet.audit_verify().unwrap(), events);
    assert_eq!(
        fleet.device(&serial("ECU-1")).unwrap().state,
        State::PreActive
    );
    drop(fleet);
    // With a working opener the module is opened once, at the first key.
    calls.store(0, Ordering::SeqCst);
    let mut fleet = Fleet::open_with_opener(&home, access(), opener(false)).unwrap();
    fleet.provision(&serial("ECU-1")).unwrap();
    fleet.refresh(&serial("ECU-1"), "again").unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
