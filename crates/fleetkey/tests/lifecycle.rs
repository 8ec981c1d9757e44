//! The policy-driven lifecycle through simulated time: a governed fleet on SQLite with the
//! default policy, run once a (simulated) day for two years and four months. Generations rotate
//! on schedule, devices migrate, old generations are deactivated and destroyed when due (their
//! masters gone from the key file), grants and tokens expire, idempotency records are purged,
//! `audit verify` passes, and the sequence of audit events is exactly the one the policy
//! predicts. Then a crash between create and activate: the rerun activates, never a third.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use fleetkey::access::Role as TokenRole;
use fleetkey::fleet::lifecycle::{DueAction, RunOptions};
use fleetkey::fleet::policy::{Policy, Span};
use fleetkey::fleet::{Access, Clock, Fleet, InitOptions, MasterBackup, NewDevice, SecretString};
use fleetkey::lifecycle::State;
use fleetkey::model::{DeviceFilter, DeviceSerial, Scheme};
use fleetkey::module::KeyModule as _;
use fleetkey::module::soft::{SoftModule, WorkFactor};
use fleetkey_core::governance::Role;

const DAY: i64 = 86_400_000;
const T0: i64 = 1_767_225_600_000;
const PASSPHRASE: &str = "correct horse battery staple";

struct ManualClock(Arc<AtomicI64>);
impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

fn open(dir: &std::path::Path, scheme: Scheme, now: &Arc<AtomicI64>) -> Fleet {
    let access = Access {
        passphrase: SecretString::from(PASSPHRASE.to_owned()),
        actor: "scheduler-test".into(),
        clock: Arc::new(ManualClock(now.clone())),
    };
    let home = dir.join("home");
    if home.exists() {
        return Fleet::open(&home, access).unwrap();
    }
    let options = InitOptions {
        fleet_id: "harvesters".into(),
        scheme,
        she_transport_key: None,
        work_factor: WorkFactor::Log2(4),
        backup: MasterBackup::NoBackup,
    };
    Fleet::init(&home, options, access).unwrap()
}

fn options() -> RunOptions {
    RunOptions {
        dry_run: false,
        until: None,
        rate: None,
        holder: "test:1".into(),
        lease_ttl: Span::seconds(60),
        reason: "lifecycle policy".into(),
    }
}

fn days(span: Span) -> i64 {
    span.as_ms() / DAY
}

#[test]
fn two_years_of_fleet_life_follow_the_default_policy() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicI64::new(T0));
    let mut fleet = open(dir.path(), Scheme::Governed, &now);
    const DEVICES: usize = 30;
    for i in 0..DEVICES {
        fleet
            .add_device(NewDevice {
                serial: DeviceSerial::new(format!("H-{i:03}").into_bytes()).unwrap(),
                she_uid: None,
                labels: vec![],
            })
            .unwrap();
    }
    let mut keys = Vec::new();
    fleet
        .provision_all(&DeviceFilter::default(), &mut keys, &())
        .unwrap();
    let policy = Policy::default();
    // A token with its own expiry and one with the policy's default; two grants.
    fleet
        .issue_token("station-1", TokenRole::Station, None, Some(T0 + 10 * DAY))
        .unwrap();
    let (default_token, _) = fleet
        .issue_token("ops", TokenRole::Operator, None, None)
        .unwrap();
    assert_eq!(
        default_token.expires_at,
        Some(T0 + policy.token_lifetime.as_ms())
    );
    fleet
        .issue_grant(
            "jane",
            Role::Technician,
            &[b"H-".to_vec()],
            Duration::from_secs(7 * 86_400),
            [9; 32],
        )
        .unwrap();
    fleet
        .issue_grant(
            "ops",
            Role::Operator,
            &[Vec::new()],
            Duration::from_secs(60 * 86_400),
            [8; 32],
        )
        .unwrap();
    // Past the policy's maximum: refused, nothing issued.
    assert!(
        fleet
            .issue_grant(
                "x",
                Role::Technician,
                &[Vec::new()],
                Duration::from_secs(400 * 86_400),
                [7; 32]
            )
            .is_err()
    );
    let setup_events = fleet.audit_verify().unwrap();

    let mut out = Vec::new();
    let last_day = 850;
    for day in 0..=last_day {
        now.store(T0 + day * DAY + DAY / 2, Ordering::SeqCst);
        let report = fleet
            .lifecycle_run(&options(), Some(&mut out), &())
            .unwrap();
        assert!(report.lease_held_by.is_none());
        if day == 1 {
            now.store(T0 + DAY + DAY * 3 / 4, Ordering::SeqCst);
            assert!(matches!(
                fleet.claim_idempotent("station-1", "k-1", [1; 32]).unwrap(),
                fleetkey::fleet::Claim::New
            ));
        }
        if day == 364 {
            let due = fleet.lifecycle_due(None).unwrap();
            let rotate = due.iter().find(|i| i.action == DueAction::Rotate).unwrap();
            assert!(
                !rotate.ready && rotate.message.contains("due for rotation in"),
                "{}",
                rotate.message
            );
        }
    }

    // The events after setup, by day, exactly as the policy predicts.
    let events = fleet
        .audit_show(&Default::default(), setup_events, 100_000)
        .unwrap();
    let seen: Vec<(i64, String, Option<u32>)> = events
        .iter()
        .map(|e| {
            (
                (e.draft.at - T0) / DAY,
                e.draft.action.clone(),
                e.draft.generation,
            )
        })
        .collect();
    let (r, a, d) = (
        days(policy.rotation_period),
        days(policy.acceptance_period),
        days(policy.destroy_after),
    );
    let renew = 365 - 30; // a record lasts 365 days and is renewed 30 days before its end
    let purge = 1 + days(policy.idempotency_retention) + 1; // the claim was made late on day 1
    let rotation = |day: i64, g: u32| {
        vec![
            (day, "generation.create".to_owned(), Some(g)),
            (day, "master.backup".to_owned(), Some(g)),
            (day, "generation.activate".to_owned(), Some(g)),
            (day, "governance.publish".to_owned(), Some(g)),
            (day, "device.refresh".to_owned(), Some(g)),
        ]
    };
    let mut expected: Vec<(i64, String, Option<u32>)> = vec![
        (0, "governance.publish".into(), Some(1)),
        (7, "grant.expire".into(), None),
        (purge, "idempotency.purge".into(), None),
        (10, "token.expire".into(), None),
        (60, "grant.expire".into(), None),
        (days(policy.token_lifetime), "token.expire".into(), None),
        (renew, "governance.publish".into(), Some(1)),
    ];
    expected.extend(rotation(r, 2));
    expected.push((r + a, "generation.deactivate".into(), Some(1)));
    expected.push((r + a + d, "generation.destroy".into(), Some(1)));
    expected.push((r + a + d, "governance.publish".into(), Some(2)));
    expected.extend(rotation(2 * r, 3));
    expected.push((2 * r + a, "generation.deactivate".into(), Some(2)));
    expected.push((2 * r + a + d, "generation.destroy".into(), Some(2)));
    expected.push((2 * r + a + d, "governance.publish".into(), Some(3)));
    expected.sort_by_key(|e| e.0);
    assert_eq!(seen, expected);

    // Every device migrated twice, once per rotation, each time one revision up.
    let devices = fleet.devices(&DeviceFilter::default(), None, 1000).unwrap();
    assert_eq!(devices.len(), DEVICES);
    assert!(
        devices
            .iter()
            .all(|d| d.generation == 3 && d.revision == 2 && d.state == State::Active)
    );
    let lines = out.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count();
    assert_eq!(lines, 2 * DEVICES);
    let states: Vec<(u32, State)> = fleet
        .generations()
        .unwrap()
        .into_iter()
        .map(|g| (g.generation, g.state))
        .collect();
    assert_eq!(
        states,
        vec![
            (1, State::Destroyed),
            (2, State::Destroyed),
            (3, State::Active)
        ]
    );
    // The destroyed masters are gone from the key file.
    let module = SoftModule::open(dir.path().join("home").join("keys.age"), PASSPHRASE).unwrap();
    assert_eq!(
        module.masters().unwrap(),
        vec![fleetkey_core::Generation(3)]
    );
    assert!(fleet.audit_verify().unwrap() > setup_events);
    // Nothing else is due: the next rotation is a year away.
    let due = fleet.lifecycle_due(None).unwrap();
    assert!(
        due.iter()
            .all(|i| !i.ready || i.action == DueAction::PurgeIdempotency),
        "{due:?}"
    );
    drop(fleet);
}

#[test]
fn a_crash_between_create_and_activate_is_resumed_not_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicI64::new(T0));
    let mut fleet = open(dir.path(), Scheme::Derived, &now);
    now.store(T0 + 366 * DAY, Ordering::SeqCst);
    // What a run killed after creating generation 2 leaves behind.
    fleet
        .create_generation("lifecycle policy", &MasterBackup::NoBackup)
        .unwrap();
    let before = fleet.audit_verify().unwrap();
    let plan = fleet
        .lifecycle_run(
            &RunOptions {
                dry_run: true,
                ..options()
            },
            None,
            &(),
        )
        .unwrap();
    assert_eq!(
        plan.plan.first().map(|i| (i.action, i.generation)),
        Some((DueAction::Activate, Some(2)))
    );
    assert_eq!(
        fleet.audit_verify().unwrap(),
        before,
        "a dry run changed nothing"
    );
    let report = fleet.lifecycle_run(&options(), None, &()).unwrap();
    assert_eq!(
        report.done.first().map(|d| (d.action, d.generation)),
        Some((DueAction::Activate, Some(2)))
    );
    let gens: Vec<u32> = fleet
        .generations()
        .unwrap()
        .iter()
        .map(|g| g.generation)
        .collect();
    assert_eq!(gens, vec![1, 2]);
    // Another run does nothing more.
    let again = fleet.lifecycle_run(&options(), None, &()).unwrap();
    assert!(again.done.is_empty(), "{:?}", again.done);

    // The lease: another holder's live lease makes a run do nothing; an expired one is taken
    // over.
    now.store(T0 + 2 * 366 * DAY, Ordering::SeqCst);
    let lease = format!(
        r#"{{"holder":"serve:other:1","until":{}}}"#,
        T0 + 2 * 366 * DAY + 60_000
    );
    fleetkey::store::transact(fleet.store_mut(), |tx| {
        Ok(tx.put_meta("lifecycle.lease", &lease)?)
    })
    .unwrap();
    let held = fleet.lifecycle_run(&options(), None, &()).unwrap();
    assert_eq!(
        held.lease_held_by.map(|l| l.holder).as_deref(),
        Some("serve:other:1")
    );
    assert!(held.done.is_empty());
    assert_eq!(fleet.generations().unwrap().len(), 2);
    now.store(T0 + 2 * 366 * DAY + 61_000, Ordering::SeqCst);
    let r = fleet.lifecycle_run(&options(), None, &()).unwrap();
    assert!(r.lease_held_by.is_none());
    assert!(
        r.done.iter().any(|d| d.action == DueAction::Rotate),
        "{:?}",
        r.done
    );
    let state = fleet.scheduler_state().unwrap();
    assert!(!state.held, "released at the end of the run");
    assert_eq!(state.last_run.unwrap().holder, "test:1");
}

#[test]
fn policy_changes_are_checked_audited_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicI64::new(T0));
    let mut fleet = open(dir.path(), Scheme::Derived, &now);
    assert_eq!(fleet.policy().unwrap(), Policy::default());
    let mut p = Policy::default();
    p.set("acceptance-period", "2y").unwrap();
    let before = fleet.audit_verify().unwrap();
    let e = fleet.set_policy(&p, "too long").unwrap_err();
    assert!(e.to_string().contains("--acceptance-period"), "{e}");
    assert_eq!(fleet.audit_verify().unwrap(), before);
    assert_eq!(fleet.policy().unwrap(), Policy::default());
    let mut p = Policy::default();
    p.set("rotation-period", "180d").unwrap();
    p.set("acceptance-period", "30d").unwrap();
    fleet.set_policy(&p, "twice a year").unwrap();
    drop(fleet);
    let mut fleet = open(dir.path(), Scheme::Derived, &now);
    assert_eq!(fleet.policy().unwrap(), p);
    let last = fleet.audit_show(&Default::default(), before, 10).unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].draft.action, "policy.set");
    assert_eq!(last[0].draft.details["to"]["rotation_period"], "180d");
    // The due date follows the policy.
    now.store(T0 + 181 * DAY, Ordering::SeqCst);
    let due = fleet.lifecycle_due(None).unwrap();
    assert!(
        due.iter()
            .any(|i| i.action == DueAction::Rotate && i.ready && i.overdue)
    );
}
