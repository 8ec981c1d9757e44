//! The governed fleet's records through the library: what each generation change publishes, the
//! audit events, denied grants leaving the list once expired, the export, and the refusals of the
//! other schemes.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use fleetkey::error::Error;
use fleetkey::fleet::governance::AUTO_RECORD_VALIDITY;
use fleetkey::fleet::{Access, Clock, Fleet, InitOptions, MasterBackup, SecretString};
use fleetkey::model::Scheme;
use fleetkey::module::soft::WorkFactor;
use fleetkey_core::governance::{
    Acceptance, GovernanceState, Record, Role, RootKey, inspect_unverified,
    verify_generation_record,
};

const START_MS: i64 = 1_767_225_600_000;
const DAY: Duration = Duration::from_secs(24 * 3600);

struct TestClock(Arc<AtomicI64>);
impl Clock for TestClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

fn init(dir: &std::path::Path, scheme: Scheme) -> (Fleet, Arc<AtomicI64>) {
    let now = Arc::new(AtomicI64::new(START_MS));
    let access = Access {
        passphrase: SecretString::from("correct horse battery staple".to_owned()),
        actor: "test".into(),
        clock: Arc::new(TestClock(now.clone())),
    };
    let options = InitOptions {
        fleet_id: "tractors".into(),
        scheme,
        she_transport_key: None,
        work_factor: WorkFactor::Log2(4),
        backup: MasterBackup::NoBackup,
    };
    (
        Fleet::init(&dir.join("home"), options, access).unwrap(),
        now,
    )
}

/// (sequence, current, accepted, revoked, denied) of the newest record.
fn latest(fleet: &mut Fleet) -> (u64, u32, Vec<u32>, Vec<u32>, Vec<u64>) {
    let p = fleet.latest_generation_record().unwrap().unwrap();
    let Ok((_, Record::Generation(g))) = inspect_unverified(&p.bytes) else {
        panic!("not a generation record");
    };
    assert_eq!(g.sequence, p.sequence);
    (
        g.sequence,
        g.current,
        g.accepted.as_slice().to_vec(),
        g.revoked.as_slice().to_vec(),
        g.denied.as_slice().to_vec(),
    )
}

#[test]
fn generation_changes_publish_records_a_device_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let (mut fleet, _) = init(dir.path(), Scheme::Governed);
    assert!(fleet.latest_generation_record().unwrap().is_none());
    let (public, kid) = fleet.governance_root().unwrap();
    let mut device = GovernanceState::new("tractors", RootKey::new(public, &kid).unwrap()).unwrap();
    let now_s = u64::try_from(START_MS / 1000).unwrap();

    let p = fleet
        .publish_generation_record("first", Duration::from_secs(3600))
        .unwrap();
    assert_eq!(p.sequence, 1);
    assert_eq!(latest(&mut fleet), (1, 1, vec![], vec![], vec![]));
    assert_eq!(
        verify_generation_record(&mut device, &p.bytes, now_s),
        Ok(Acceptance::Updated)
    );

    // create: nothing (pre-active); rotate (activate): a record.
    fleet
        .create_generation("next", &MasterBackup::NoBackup)
        .unwrap();
    assert_eq!(latest(&mut fleet).0, 1);
    fleet.activate_generation(2, "rotate").unwrap();
    assert_eq!(latest(&mut fleet), (2, 2, vec![1], vec![], vec![]));
    // deactivate: still holds key material, still accepted, no record.
    fleet.deactivate_generation(1, "migrated", false).unwrap();
    assert_eq!(latest(&mut fleet).0, 2);
    // destroy: a record without it.
    fleet.destroy_generation(1, "migrated", false).unwrap();
    assert_eq!(latest(&mut fleet), (3, 2, vec![], vec![], vec![]));
    fleet.rotate("again", &MasterBackup::NoBackup).unwrap();
    assert_eq!(latest(&mut fleet), (4, 3, vec![2], vec![], vec![]));
    fleet.compromise_generation(2, "exposed").unwrap();
    assert_eq!(latest(&mut fleet), (5, 3, vec![], vec![2], vec![]));

    let p = fleet.latest_generation_record().unwrap().unwrap();
    assert_eq!(
        verify_generation_record(&mut device, &p.bytes, now_s),
        Ok(Acceptance::Updated)
    );
    assert_eq!(device.revoked_generations(), &[2]);

    // Every publication is audited with its sequence and generations, never the record or keys.
    let events = fleet
        .audit_show(&Default::default(), 0, 1000)
        .unwrap()
        .into_iter()
        .filter(|e| e.draft.action == "governance.publish")
        .collect::<Vec<_>>();
    assert_eq!(events.len(), 5);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.draft.details["sequence"], i as u64 + 1);
        let text = e.draft.details.to_string();
        assert!(!text.contains(&hex::encode(&p.bytes)));
    }
    fleet.audit_verify().unwrap();
}

#[test]
fn grants_denied_then_expired_and_exported() {
    let dir = tempfile::tempdir().unwrap();
    let (mut fleet, now) = init(dir.path(), Scheme::Governed);
    fleet
        .publish_generation_record("first", AUTO_RECORD_VALIDITY)
        .unwrap();
    let (id, bytes) = fleet
        .issue_grant("jane", Role::Technician, &[b"ECU-".to_vec()], DAY, [9; 32])
        .unwrap();
    assert_eq!(id, 1);
    let (id2, _) = fleet
        .issue_grant("ops", Role::Operator, &[Vec::new()], DAY * 30, [8; 32])
        .unwrap();
    assert_eq!(id2, 2);
    let p = fleet.deny_grant(1, "lost").unwrap();
    assert_eq!(p.sequence, 2);
    assert_eq!(latest(&mut fleet).4, vec![1]);
    let grants = fleet.grants().unwrap();
    assert_eq!(
        grants.iter().map(|g| (g.id, g.denied)).collect::<Vec<_>>(),
        vec![(1, true), (2, false)]
    );
    assert_eq!(grants[0].record, hex::encode(&bytes));
    assert!(matches!(
        fleet.deny_grant(7, "x"),
        Err(Error::NoSuchGrant(7))
    ));

    // Once the denied grant's window has ended, later records leave it out.
    now.fetch_add(2 * 24 * 3600 * 1000, Ordering::Relaxed);
    fleet
        .publish_generation_record("later", AUTO_RECORD_VALIDITY)
        .unwrap();
    assert_eq!(latest(&mut fleet), (3, 1, vec![], vec![], vec![]));

    let out = dir.path().join("records");
    let files = fleet.export_records(&out).unwrap();
    let names = files
        .iter()
        .map(|f| f.file_name().unwrap().to_str().unwrap().to_owned())
        .collect::<Vec<_>>();
    assert_eq!(names, ["generation-record-3.cose", "grant-2.cose"]);
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2);
}

#[test]
fn other_schemes_have_no_records() {
    let dir = tempfile::tempdir().unwrap();
    let (mut fleet, _) = init(dir.path(), Scheme::Derived);
    assert!(matches!(
        fleet.publish_generation_record("x", DAY),
        Err(Error::NotGoverned {
            operation: "publish",
            scheme: Scheme::Derived
        })
    ));
    fleet.rotate("r", &MasterBackup::NoBackup).unwrap();
    assert!(matches!(fleet.grants(), Err(Error::NotGoverned { .. })));
    let (mut governed, _) = init(&dir.path().join("g"), Scheme::Governed);
    assert!(matches!(
        governed.publish_generation_record("x", Duration::ZERO),
        Err(Error::Invalid { .. })
    ));
}
