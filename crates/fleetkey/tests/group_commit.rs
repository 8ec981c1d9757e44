//! Group commit ([`Fleet::write_group`]): in one transaction, a write that fails (an unknown
//! serial, an illegal transition, a response that cannot be rendered, a reused idempotency key)
//! gets its own outcome and changes nothing, the others commit; a repeated idempotency key gets
//! the first response, within the group and after it; the audit chain has one event per committed
//! write, in order, and verifies. On SQLite, and on PostgreSQL when `FLEETKEY_TEST_DATABASE_URL`
//! is set.
//!
//! A group is staged (its rows read at once and written as sets, `store::staged`); a property
//! test holds random groups to the outcomes, device rows and audit chain of the same writes made
//! one per transaction, and a write the store refuses only at the set write (PostgreSQL: a NUL in
//! its text) makes the group run again write by write, where it fails alone.

use std::sync::Arc;

use fleetkey::audit::AuditFilter;
use fleetkey::error::Error;
use fleetkey::fleet::group::{
    DeviceWrite, GroupWrite, IdempotencyClaim, Outcome, Response, Written,
};
use fleetkey::fleet::{
    Access, Fleet, InitOptions, MasterBackup, NewDevice, SecretString, SystemClock,
};
use fleetkey::home::{ModuleConfig, StoreConfig};
use fleetkey::lifecycle::State;
use fleetkey::model::{DeviceSerial, Scheme};
use fleetkey::module::soft::WorkFactor;

fn access() -> Access {
    Access {
        passphrase: SecretString::from("group commit test".to_owned()),
        actor: "test".into(),
        clock: Arc::new(SystemClock),
    }
}

/// A clock that does not move: two fleets given the same writes seal the same audit chain.
struct Fixed;

impl fleetkey::fleet::Clock for Fixed {
    fn now_ms(&self) -> fleetkey::model::UnixMillis {
        1_800_000_000_000
    }
}

fn init(home: &std::path::Path, store: StoreConfig) -> Fleet {
    init_with(home, store, access())
}

fn init_with(home: &std::path::Path, store: StoreConfig, access: Access) -> Fleet {
    let options = InitOptions {
        fleet_id: "group".into(),
        scheme: Scheme::Derived,
        she_transport_key: None,
        work_factor: WorkFactor::Log2(4),
        backup: MasterBackup::NoBackup,
    };
    let module = ModuleConfig::Soft {
        file: fleetkey::home::KEY_FILE.into(),
    };
    Fleet::init_with(home, module, store, options, access).unwrap()
}

fn s(text: &str) -> DeviceSerial {
    DeviceSerial::parse(text).unwrap()
}

/// Registers these serials (pre-active).
fn add_devices(fleet: &mut Fleet, serials: &[&str]) {
    for serial in serials {
        fleet
            .add_device(NewDevice {
                serial: s(serial),
                she_uid: None,
                labels: vec![],
            })
            .unwrap();
    }
}

fn write(serial: &str, write: DeviceWrite, key: Option<(&str, u8)>) -> GroupWrite {
    GroupWrite {
        actor: "station-1".into(),
        serial: s(serial),
        write,
        reason: "group test".into(),
        idempotency: key.map(|(key, fp)| IdempotencyClaim {
            principal: "station-1".into(),
            key: key.into(),
            fingerprint: [fp; 32],
        }),
    }
}

/// The response: the device's serial, revision and state; refuses to render `REFUSED-RENDER`.
fn render(w: &GroupWrite, written: &Written) -> Result<Response, String> {
    if w.serial.as_bytes() == b"REFUSED-RENDER" {
        return Err("this response cannot be rendered".into());
    }
    let device = match written {
        Written::Provisioned(p) => &p.device,
        Written::Refreshed(u) => &u.device,
        Written::Moved(d) => d,
    };
    let body = format!(
        "{} r{} {:?} {}",
        device.serial,
        device.revision,
        device.state,
        w.write.action()
    );
    Ok(Response {
        status: 200,
        body: zeroize::Zeroizing::new(body.into_bytes()),
    })
}

fn body(o: &Outcome<String>) -> String {
    match o {
        Outcome::Done(r) | Outcome::Replayed(r) => String::from_utf8(r.body.to_vec()).unwrap(),
        other => panic!("no response: {other:?}"),
    }
}

fn exercise(fleet: &mut Fleet) {
    add_devices(
        fleet,
        &["ECU-1", "ECU-2", "ECU-3", "ECU-4", "REFUSED-RENDER"],
    );
    let events_before = fleet.audit_verify().unwrap();

    let writes = [
        write("ECU-1", DeviceWrite::Provision, Some(("k-1", 1))),
        write("NO-SUCH-ECU", DeviceWrite::Provision, None),
        // Pre-active: suspending it is an illegal transition.
        write("ECU-3", DeviceWrite::Suspend, None),
        write("ECU-2", DeviceWrite::Provision, Some(("k-2", 2))),
        // The same key and request again, in the same group: the first response.
        write("ECU-1", DeviceWrite::Provision, Some(("k-1", 1))),
        // The same key with another request: refused.
        write("ECU-4", DeviceWrite::Provision, Some(("k-2", 9))),
        write("REFUSED-RENDER", DeviceWrite::Provision, None),
        write("ECU-1", DeviceWrite::Refresh, None),
    ];
    let outcomes = fleet.write_group(&writes, &render).unwrap();
    assert_eq!(outcomes.len(), writes.len());
    assert!(matches!(outcomes[0], Outcome::Done(_)), "{:?}", outcomes[0]);
    assert_eq!(body(&outcomes[0]), "ECU-1 r0 Active device.provision");
    assert!(
        matches!(outcomes[1], Outcome::Failed(Error::NoSuchDevice(_))),
        "{:?}",
        outcomes[1]
    );
    assert!(
        matches!(outcomes[2], Outcome::Failed(Error::Transition { .. })),
        "{:?}",
        outcomes[2]
    );
    assert!(matches!(outcomes[3], Outcome::Done(_)), "{:?}", outcomes[3]);
    assert!(
        matches!(outcomes[4], Outcome::Replayed(_)),
        "{:?}",
        outcomes[4]
    );
    assert_eq!(body(&outcomes[4]), body(&outcomes[0]));
    assert!(
        matches!(outcomes[5], Outcome::IdempotencyMismatch),
        "{:?}",
        outcomes[5]
    );
    assert!(
        matches!(&outcomes[6], Outcome::Unrendered(e) if e.contains("cannot be rendered")),
        "{:?}",
        outcomes[6]
    );
    assert_eq!(body(&outcomes[7]), "ECU-1 r1 Active device.refresh");

    let state = |fleet: &mut Fleet, serial| {
        let d = fleet.device(&s(serial)).unwrap();
        (d.state, d.revision)
    };
    assert_eq!(state(fleet, "ECU-1"), (State::Active, 1));
    assert_eq!(state(fleet, "ECU-2"), (State::Active, 0));
    assert_eq!(state(fleet, "ECU-3"), (State::PreActive, 0));
    assert_eq!(
        state(fleet, "ECU-4"),
        (State::PreActive, 0),
        "a refused key ran nothing"
    );
    assert_eq!(
        state(fleet, "REFUSED-RENDER"),
        (State::PreActive, 0),
        "a write whose response failed is undone"
    );

    // One event per committed write, in the group's order, and the chain verifies.
    let events = fleet.audit_verify().unwrap();
    assert_eq!(events, events_before + 3);
    let last = fleet
        .audit_show(&AuditFilter::default(), events_before, 100)
        .unwrap();
    let seen: Vec<(String, String)> = last
        .iter()
        .map(|e| (e.draft.action.clone(), e.draft.subjects[0].to_string()))
        .collect();
    assert_eq!(
        seen,
        [
            ("device.provision".to_owned(), "ECU-1".to_owned()),
            ("device.provision".to_owned(), "ECU-2".to_owned()),
            ("device.refresh".to_owned(), "ECU-1".to_owned()),
        ]
    );
    assert!(last.iter().all(|e| e.draft.actor == "station-1"));

    // After the group: the stored response, and still nothing runs twice.
    let again = fleet
        .write_group(
            &[
                write("ECU-1", DeviceWrite::Provision, Some(("k-1", 1))),
                write("ECU-2", DeviceWrite::Provision, Some(("k-2", 2))),
            ],
            &render,
        )
        .unwrap();
    assert!(matches!(again[0], Outcome::Replayed(_)));
    assert_eq!(body(&again[0]), "ECU-1 r0 Active device.provision");
    assert_eq!(body(&again[1]), "ECU-2 r0 Active device.provision");
    assert_eq!(fleet.audit_verify().unwrap(), events);

    // A group whose every write fails commits nothing and leaves the chain as it was.
    let failed = fleet
        .write_group(
            &[
                write("ECU-3", DeviceWrite::Resume, None),
                write("NO-SUCH-ECU", DeviceWrite::Refresh, None),
            ],
            &render,
        )
        .unwrap();
    assert!(failed.iter().all(|o| matches!(o, Outcome::Failed(_))));
    assert_eq!(fleet.audit_verify().unwrap(), events);
}

#[test]
fn one_failed_write_fails_alone_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreConfig::Sqlite {
        file: fleetkey::home::STORE_FILE.into(),
    };
    let mut fleet = init(&dir.path().join("home"), store);
    exercise(&mut fleet);
}

/// Runs `test` on a fleet in a schema of its own on the test server, dropped afterwards; skipped
/// (and says so) without `FLEETKEY_TEST_DATABASE_URL`.
#[cfg(feature = "postgres")]
fn on_postgres(name: &str, test: impl FnOnce(&mut Fleet)) {
    let Ok(url) = std::env::var("FLEETKEY_TEST_DATABASE_URL") else {
        eprintln!("skipped: FLEETKEY_TEST_DATABASE_URL is not set (no PostgreSQL to test against)");
        return;
    };
    let schema = format!("fk_{name}_{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let store = StoreConfig::Postgres {
        schema: schema.clone(),
        url: Some(url.clone()),
        url_file: None,
    };
    let mut fleet = init(&dir.path().join("home"), store);
    test(&mut fleet);
    drop(fleet);
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .unwrap();
}

#[cfg(feature = "postgres")]
#[test]
fn one_failed_write_fails_alone_on_postgres() {
    on_postgres("group", exercise);
}

/// Every device's serial, state, generation and revision.
type Devices = Vec<(String, State, u32, u32)>;
/// The audit chain: each event's action, subjects and hash.
type Chain = Vec<(String, String, [u8; 32])>;

/// What a fleet shows after writes, to compare two fleets: its devices and its audit chain.
fn shown(fleet: &mut Fleet) -> (Devices, Chain) {
    let devices = fleet
        .devices(&fleetkey::model::DeviceFilter::default(), None, 1000)
        .unwrap()
        .into_iter()
        .map(|d| (d.serial.to_string(), d.state, d.generation, d.revision))
        .collect();
    let events = fleet
        .audit_show(&AuditFilter::default(), 0, 10_000)
        .unwrap()
        .into_iter()
        .map(|e| {
            let subjects: Vec<String> = e.draft.subjects.iter().map(|s| s.to_string()).collect();
            (e.draft.action, subjects.join(","), e.hash)
        })
        .collect();
    (devices, events)
}

/// An outcome as compared: its kind and body.
fn seen(o: &Outcome<String>) -> String {
    match o {
        Outcome::Done(r) => format!("done {}", String::from_utf8_lossy(&r.body)),
        Outcome::Replayed(r) => format!("replayed {}", String::from_utf8_lossy(&r.body)),
        Outcome::IdempotencyMismatch => "mismatch".into(),
        Outcome::IdempotencyInProgress => "in progress".into(),
        Outcome::Failed(e) => format!("failed {e}"),
        Outcome::Unrendered(e) => format!("unrendered {e}"),
    }
}

fn fixed_fleet(home: &std::path::Path) -> Fleet {
    let store = StoreConfig::Sqlite {
        file: fleetkey::home::STORE_FILE.into(),
    };
    let mut fleet = init_with(
        home,
        store,
        Access {
            clock: Arc::new(Fixed),
            ..access()
        },
    );
    add_devices(&mut fleet, &["D-0", "D-1", "D-2", "D-3", "REFUSED-RENDER"]);
    fleet
}

const SERIALS: [&str; 6] = ["D-0", "D-1", "D-2", "D-3", "REFUSED-RENDER", "ABSENT"];
const WRITES: [DeviceWrite; 5] = [
    DeviceWrite::Provision,
    DeviceWrite::Refresh,
    DeviceWrite::Suspend,
    DeviceWrite::Resume,
    DeviceWrite::Revoke,
];

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, ..Default::default() })]

    /// A staged group does what the same writes do one transaction each, unstaged: the same
    /// outcomes, the same device rows, the same audit chain (hash for hash).
    #[test]
    fn a_group_does_what_its_writes_do_one_by_one(
        ops in proptest::collection::vec((0..SERIALS.len(), 0..WRITES.len(), proptest::option::of((0..3_u8, 0..2_u8))), 1..40)
    ) {
        let writes: Vec<GroupWrite> = ops
            .iter()
            .map(|&(serial, op, key)| {
                let key = key.map(|(k, fp)| (format!("k-{k}"), fp));
                write(SERIALS[serial], WRITES[op], key.as_ref().map(|(k, fp)| (k.as_str(), *fp)))
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let mut grouped = fixed_fleet(&dir.path().join("grouped"));
        let mut single = fixed_fleet(&dir.path().join("single"));
        let together: Vec<String> = grouped
            .write_group(&writes, &render)
            .unwrap()
            .iter()
            .map(seen)
            .collect();
        let apart: Vec<String> = writes
            .iter()
            .map(|w| seen(&single.write_group_unstaged(std::slice::from_ref(w), &render).unwrap()[0]))
            .collect();
        proptest::prop_assert_eq!(together, apart);
        proptest::prop_assert_eq!(shown(&mut grouped), shown(&mut single));
        grouped.audit_verify().unwrap();
    }
}

/// A write whose text PostgreSQL cannot hold (a NUL) passes the staged group's checks and is
/// refused only at the set write: the group runs again write by write, that write fails alone
/// with its error, the others commit, and the chain verifies.
#[cfg(feature = "postgres")]
#[test]
fn a_write_refused_at_the_set_write_fails_alone_on_postgres() {
    on_postgres("group_nul", |fleet| {
        add_devices(fleet, &["P-1", "P-2", "P-3"]);
        let before = fleet.audit_verify().unwrap();
        let mut bad = write("P-2", DeviceWrite::Provision, Some(("nul", 3)));
        bad.reason = "a reason with a \0 in it".into();
        let writes = [
            write("P-1", DeviceWrite::Provision, Some(("one", 1))),
            bad,
            write("P-3", DeviceWrite::Provision, None),
        ];
        let outcomes = fleet.write_group(&writes, &render).unwrap();
        assert!(matches!(outcomes[0], Outcome::Done(_)), "{:?}", outcomes[0]);
        assert!(
            matches!(&outcomes[1], Outcome::Failed(e) if e.to_string().contains("NUL")),
            "{:?}",
            outcomes[1]
        );
        assert!(matches!(outcomes[2], Outcome::Done(_)), "{:?}", outcomes[2]);
        assert_eq!(fleet.device(&s("P-1")).unwrap().state, State::Active);
        assert_eq!(fleet.device(&s("P-2")).unwrap().state, State::PreActive);
        assert_eq!(fleet.device(&s("P-3")).unwrap().state, State::Active);
        assert_eq!(fleet.audit_verify().unwrap(), before + 2);
        // The refused write claimed no key: its retry with a text the store holds runs.
        let retry = fleet
            .write_group(
                &[write("P-2", DeviceWrite::Provision, Some(("nul", 3)))],
                &render,
            )
            .unwrap();
        assert!(matches!(retry[0], Outcome::Done(_)), "{:?}", retry[0]);
    });
}
