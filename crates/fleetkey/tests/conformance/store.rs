//! The `Store` conformance suite: every store implementation runs these checks unchanged.
//!
//! A test crate includes this file as `conformance::store` and expands one `#[test]` per check
//! with a factory expression that is evaluated once per test (each test gets its own database):
//! ```ignore
//! mod conformance {
//!     pub mod store;
//! }
//! store_conformance!(SqliteFactory::new());
//! ```
//!
//! Besides the trait's documentation, the suite holds every store to this contract:
//! - a `Tx` method that returns an error changes nothing and leaves the transaction usable
//!   (so `insert_devices` is all-or-nothing even when the caller goes on);
//! - `Duplicate` and `NotFound` name the record: `device <serial as displayed>`,
//!   `generation <n>`;
//! - blobs keep the difference between absent and empty (`wrapped_root: Some(vec![])`);
//! - `put_meta` of any key, even one that looks like the store's own bookkeeping, only ever
//!   changes that key's value.

use std::collections::BTreeMap;

use fleetkey::StoreError;
use fleetkey::access::{ApiToken, IdempotencyRecord, Role};
use fleetkey::audit::{AuditDraft, AuditEvent, AuditFilter};
use fleetkey::error::Error;
use fleetkey::lifecycle::State;
use fleetkey::model::{
    Change, DeviceFilter, DeviceRecord, DeviceSerial, FleetInfo, GenerationRecord, Scheme,
    WrappedKey,
};
use fleetkey::store::{DeviceUpdate, Scan, Store, Tx, read_tx, transact};
use serde_json::json;

/// Makes the stores a check runs against. One factory per test: its database starts empty.
pub(crate) trait StoreFactory: Sync {
    /// The first handle on this factory's database, which is empty.
    fn fresh(&self) -> Box<dyn Store>;
    /// Another handle on the same database, as a second process or service instance would open.
    fn reopen(&self) -> Box<dyn Store>;
}

/// Expands to a module `store_conformance` with one `#[test]` per check, each calling the check
/// with a new factory made by `$factory`.
#[macro_export]
macro_rules! store_conformance {
    ($factory:expr) => {
        $crate::store_conformance!(@checks $factory;
            fleet_put_get,
            generations_insert_update_list,
            device_insert_get_update,
            device_fields_round_trip,
            bulk_insert_and_paginate_in_serial_byte_order,
            device_filters_match_reference,
            failing_closure_rolls_back_everything,
            insert_devices_is_all_or_nothing,
            errors_leave_the_transaction_usable,
            audit_appends_chain,
            audit_filters_match_reference,
            meta_get_put,
            writes_are_visible_to_the_next_transaction_and_other_handles,
            transact_returns_the_value,
            empty_pages_and_limits,
            purge_keeps_live_data,
            concurrent_read_modify_write_serializes,
            tokens_insert_lookup_update,
            idempotency_claim_finish_delete,
            idempotency_purge_by_age,
            delivery_journal_insert_list_delete,
            read_refuses_writes_and_sees_committed_data,
            bulk_update_changes_exactly_the_matching_range,
            bulk_update_activates_a_page_and_skips_other_states,
            set_reads_and_writes_match_row_by_row,
        );
    };
    (@checks $factory:expr; $($check:ident),* $(,)?) => {
        mod store_conformance {
            #[allow(unused_imports, reason = "the factory expression may name items of the parent")]
            use super::*;
            $(
                #[test]
                fn $check() {
                    let factory = $factory;
                    $crate::conformance::store::$check(&factory);
                }
            )*
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// A small deterministic generator (xorshift64*), so that failures reproduce.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub(crate) fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

pub(crate) fn serial(bytes: &[u8]) -> DeviceSerial {
    DeviceSerial::new(bytes.to_vec()).expect("test serial is 1 to 40 bytes")
}

pub(crate) fn change(at: i64) -> Change {
    Change {
        at,
        actor: "tester".into(),
        reason: "conformance".into(),
    }
}

/// A plain active device on generation 1.
pub(crate) fn device(bytes: &[u8]) -> DeviceRecord {
    DeviceRecord {
        serial: serial(bytes),
        she_uid: None,
        labels: Vec::new(),
        generation: 1,
        revision: 0,
        state: State::Active,
        changed: change(1_700_000_000_000),
        wrapped_root: None,
        created_at: 1_700_000_000_000,
    }
}

fn generation(number: u32, state: State) -> GenerationRecord {
    GenerationRecord {
        generation: number,
        state,
        changed: change(1_700_000_000_000),
        created_at: 1_699_000_000_000,
    }
}

fn fleet() -> FleetInfo {
    FleetInfo {
        id: "fleet-conformance".into(),
        scheme: Scheme::Derived,
        current_generation: Some(1),
        created_at: 1,
    }
}

fn draft(action: &str, at: i64, subjects: &[DeviceSerial]) -> AuditDraft {
    AuditDraft {
        at,
        actor: "tester".into(),
        action: action.into(),
        generation: Some(1),
        subjects: subjects.to_vec(),
        details: json!({ "n": subjects.len() }),
    }
}

/// Runs `f` in a transaction, panicking on error.
pub(crate) fn tx<T>(store: &mut dyn Store, f: impl FnMut(&mut dyn Tx) -> Result<T, Error>) -> T {
    transact(store, f).expect("transaction")
}

/// Every device matching `filter`, paging `page` at a time.
pub(crate) fn list_all(
    store: &mut dyn Store,
    filter: &DeviceFilter,
    page: usize,
) -> Vec<DeviceRecord> {
    let mut out: Vec<DeviceRecord> = Vec::new();
    loop {
        let after = out.last().map(|d| d.serial.clone());
        let batch = tx(store, |tx| Ok(tx.devices(filter, after.as_ref(), page)?));
        assert!(
            batch.len() <= page,
            "a page of {} for limit {page}",
            batch.len()
        );
        let done = batch.len() < page;
        out.extend(batch);
        if done {
            return out;
        }
    }
}

/// Every audit event matching `filter`, paging `page` at a time.
pub(crate) fn audit_all(
    store: &mut dyn Store,
    filter: &AuditFilter,
    page: usize,
) -> Vec<AuditEvent> {
    let mut out: Vec<AuditEvent> = Vec::new();
    loop {
        let after = out.last().map_or(0, |e| e.seq);
        let batch = tx(store, |tx| Ok(tx.audit_events(filter, after, page)?));
        assert!(batch.len() <= page);
        let done = batch.len() < page;
        out.extend(batch);
        if done {
            return out;
        }
    }
}

/// Verifies the whole audit record (the chain, its head and the index the views filter on, as
/// `audit verify` does); returns the event count.
pub(crate) fn verify_chain(store: &mut dyn Store) -> u64 {
    match transact(store, fleetkey::store::verify_audit) {
        Ok(n) => n,
        Err(e) => panic!("audit verification fails: {e}"),
    }
}

fn assert_duplicate(result: Result<(), StoreError>, name: &str) {
    match result {
        Err(StoreError::Duplicate(what)) => assert!(
            what.contains(name),
            "Duplicate({what:?}) does not name {name}"
        ),
        other => panic!("expected Duplicate naming {name}, got {other:?}"),
    }
}

fn assert_not_found(result: Result<(), StoreError>, name: &str) {
    match result {
        Err(StoreError::NotFound(what)) => assert!(
            what.contains(name),
            "NotFound({what:?}) does not name {name}"
        ),
        other => panic!("expected NotFound naming {name}, got {other:?}"),
    }
}

/// Everything a store holds, for before/after comparisons.
#[derive(Debug, PartialEq)]
struct Snapshot {
    fleet: Option<FleetInfo>,
    generations: Vec<GenerationRecord>,
    devices: Vec<DeviceRecord>,
    audit: Vec<AuditEvent>,
    head: Option<(u64, [u8; 32])>,
    meta: Vec<Option<String>>,
}

const META_KEYS: [&str; 3] = ["idempotency.a", "records.sequence", "schema_version"];

fn snapshot(store: &mut dyn Store) -> Snapshot {
    let devices = list_all(store, &DeviceFilter::default(), 1000);
    let audit = audit_all(store, &AuditFilter::default(), 1000);
    tx(store, |tx| {
        Ok(Snapshot {
            fleet: tx.fleet()?,
            generations: tx.generations()?,
            devices: devices.clone(),
            audit: audit.clone(),
            head: tx.audit_head()?,
            meta: META_KEYS
                .iter()
                .map(|k| tx.meta(k))
                .collect::<Result<_, _>>()?,
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Checks

pub(crate) fn fleet_put_get(f: &dyn StoreFactory) {
    let mut store = f.fresh();
    let store = &mut *store;
    assert_eq!(tx(store, |tx| Ok(tx.fleet()?)), None);
    let mut info = fleet();
    tx(store, |tx| Ok(tx.put_fleet(&info)?));
    assert_eq!(tx(store, |tx| Ok(tx.fleet()?)), Some(info.clone()));
    for (scheme, current) in [(Scheme::Stored, None), (Scheme::Governed, Some(u32::MAX))] {
        info = FleetInfo {
            id: "Flotte-\u{fc}-2".into(),
            scheme,
            current_generation: current,
            created_at: i64::MAX,
        };
        tx(store, |tx| Ok(tx.put_fleet(&info)?));
        assert_eq!(
            tx(store, |tx| Ok(tx.fleet()?)),
            Some(info.clone()),
            "put_fleet replaces"
        );
    }
}

pub(crate) fn generations_insert_update_list(f: &dyn StoreFactory) {
    let mut store = f.fresh();
    let store = &mut *store;
    assert_eq!(tx(store, |tx| Ok(tx.generations()?)), vec![]);
    for number in [3, 1, u32::MAX, 2, 0] {
        tx(store, |tx| {
            Ok(tx.insert_generation(&generation(number, State::PreActive))?)
        });
    }
    let listed: Vec<u32> = tx(store, |tx| Ok(tx.generations()?))
        .iter()
        .map(|g| g.generation)
        .collect();
    assert_eq!(listed, vec![0, 1, 2, 3, u32::MAX], "ascending");

    let dup = tx(store, |tx| {
        Ok(tx.insert_generation(&generation(2, State::Active)))
    });
    assert_duplicate(dup, "generation 2");
    assert_eq!(
        tx(store, |tx| Ok(tx.generation(2)?)),
        Some(generation(2, State::PreActive)),
        "duplicate changed nothing"
    );

    let mut updated = generation(2, State::Active);
    updated.changed = Change {
        at: -5,
        actor: "custodian \u{1f511}".into(),
        reason: String::new(),
    };
    updated.created_at = 42;
    tx(store, |tx| Ok(tx.update_generation(&updated)?));
    assert_eq!(tx(store, |tx| Ok(tx.generation(2)?)), Some(updated.clone()));
    for state in State::ALL {
        let record = GenerationRecord {
            state,
            ..updated.clone()
        };
        tx(store, |tx| Ok(tx.update_generation(&record)?));
        assert_eq!(tx(store, |tx| Ok(tx.generation(2)?)), Some(record));
    }

    let missing = tx(store, |tx| {
        Ok(tx.update_generation(&generation(77, State::Active)))
    });
    assert_not_found(missing, "generation 77");
    assert_eq!(tx(store, |tx| Ok(tx.generation(77)?)), None);
    assert_eq!(tx(store, |tx| Ok(tx.generations()?)).len(), 5);
}

pub(crate) fn device_insert_get_update(f: &dyn StoreFactory) {
    let mut store = f.fresh();
    let store = &mut *store;
    let first = device(b"ECU-0001");
    tx(store, |tx| Ok(tx.insert_device(&first)?));
    assert_eq!(
        tx(store, |tx| Ok(tx.device(&first.serial)?)),
        Some(first.clone())
    );

    let mut again = device(b"ECU-0001");
    again.revision = 9;
    assert_duplicate(
        tx(store, |tx| Ok(tx.insert_device(&again))),
        "device ECU-0001",
    );
    let raw = device(&[0xff, 0x00, 0x80]);
    tx(store, |tx| Ok(tx.insert_device(&raw)?));
    assert_duplicate(
        tx(store, |tx| Ok(tx.insert_device(&raw))),
        "device hex:ff0080",
    );
    assert_eq!(
        tx(store, |tx| Ok(tx.device(&first.serial)?)),
        Some(first.clone()),
        "duplicate changed nothing"
    );

    let mut updated = first.clone();
    updated.revision = 1;
    updated.state = State::Suspended;
    updated.labels = vec!["line=3".into()];
    updated.changed = change(1_800_000_000_000);
    tx(store, |tx| Ok(tx.update_device(&updated)?));
    assert_eq!(tx(store, |tx| Ok(tx.device(&first.serial)?)), Some(updated));

    assert_not_found(
        tx(store, |tx| Ok(tx.update_device(&device(b"ECU-9999")))),
        "device ECU-9999",
    );
    assert_eq!(tx(store, |tx| Ok(tx.device(&serial(b"ECU-9999"))?)), None);
    assert_eq!(
        tx(store, |tx| Ok(tx.count_devices(&DeviceFilter::default())?)),
        2
    );
}

pub(crate) fn device_fields_round_trip(f: &dyn StoreFactory) {
    let mut store = f.fresh();
    let store = &mut *store;
    let uid: [u8; 15] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0xa5);
    let mut records = Vec::new();
    for (i, state) in State::ALL.into_iter().enumerate() {
        let i8 = i as u8;
        records.push(DeviceRecord {
            serial: serial(&[b'S', i8, 0xc3, 0x28]),
            she_uid: (i % 2 == 0).then_some(uid),
            labels: match i % 3 {
                0 => vec![],
                1 => vec![
                    "line=3".into(),
                    "model=T7".into(),
                    "Sitz-\u{fc}".into(),
                    "line=3".into(),
                ],
                _ => vec![String::new(), "with \"quotes\" and \\ and , and \n".into()],
            },
            generation: [0, 1, u32::MAX][i % 3],
            revision: [u32::MAX, 0, 17][i % 3],
            state,
            changed: Change {
                at: [i64::MIN, 0, i64::MAX][i % 3],
                actor: ["", "operator \u{1f527}", "system"][i % 3].into(),
                reason: ["", "field return", "x".repeat(500).as_str()][i % 3].into(),
            },
            wrapped_root: match i % 3 {
                0 => None,
                1 => Some(WrappedKey((0..=255).collect())),
                _ => Some(WrappedKey(Vec::new())),
            },
            created_at: [-1, 1_700_000_000_123, i64::MAX][i % 3],
        });
    }
    for bytes in [
        vec![0u8],
        vec![0xff; 40],
        b"\xff\xfe not utf-8".to_vec(),
        b"hex:6162".to_vec(),
    ] {
        let mut r = device(&bytes);
        r.she_uid = Some([0; 15]);
        records.push(r);
    }
    tx(store, |tx| {
        for r in &records[..3] {
            tx.insert_device(r)?;
        }
        Ok(tx.insert_devices(&records[3..])?)
    });
    let mut reopened = f.reopen();
    for r in &records {
        assert_eq!(
            tx(store, |tx| Ok(tx.device(&r.serial)?)).as_ref(),
            Some(r),
            "{}",
            r.serial
        );
        assert_eq!(
            tx(&mut *reopened, |tx| Ok(tx.device(&r.serial)?)).as_ref(),
            Some(r),
            "reopened {}",
            r.serial
        );
    }
    // Update moves every field to another value and back.
    for (a, b) in records.iter().zip(records.iter().skip(1)) {
        let moved = DeviceRecord {
            serial: a.serial.clone(),
            ..b.clone()
        };
        tx(store, |tx| Ok(tx.update_device(&moved)?));
        assert_eq!(tx(store, |tx| Ok(tx.device(&a.serial)?)), Some(moved));
        tx(store, |tx| Ok(tx.update_device(a)?));
        assert_eq!(tx(store, |tx| Ok(tx.device(&a.serial)?)).as_ref(), Some(a));
    }
    let mut sorted = records.clone();
    sorted.sort_by(|a, b| a.serial.cmp(&b.serial));
    assert_eq!(list_all(store, &DeviceFilter::default(), 3), sorted);
}

/// Serials that probe byte order: prefixes, NUL, high bytes, non-UTF-8.
fn tricky_serials() -> Vec<Vec<u8>> {
    vec![
        b"A".to_vec(),
        b"A\0".to_vec(),
        b"A\0\0".to_vec(),
        b"A\x01".to_vec(),
        b"AB".to_vec(),
        b"ABC".to_vec(),
        b"B".to_vec(),
        b"a".to_vec(),
        vec![0x00],
        vec![0x00, 0x00],
        vec![0x7f],
        vec![0x80],
        vec![0xc3, 0x28],
        vec![0xff],
        vec![0xff, 0x00],
        vec![0xff; 40],
        b"ECU-".to_vec(),
        "\u{fc}ber".as_bytes().to_vec(),
    ]
}

pub(crate) fn bulk_insert_and_paginate_in_serial_byte_order(f: &dyn StoreFactory) {
    let mut store = f.fresh();
    let store = &mut *store;
    let mut rng = Rng::new(0x5eed_0001);
    let mut serials = tricky_serials();
    while serials.len() < 10_000 {
        let n = serials.len();
        let bytes = if n.is_multiple_of(3) {
            let len = 1 + rng.below(40);
            (0..len).map(|_| rng.next() as u8).collect()
        } else {
            format!("ECU-{:06}", rng.below(1_000_000)).into_bytes()
        };
        if !serials.contains(&bytes) {
            serials.push(bytes);
        }
    }
    let records: Vec<DeviceRecord> = serials.iter().map(|s| device(s)).collect();
    for chunk in records.chunks(1_000) {
        tx(store, |tx| Ok(tx.insert_devices(chunk)?));
    }
    assert_eq!(
        tx(store, |tx| Ok(tx.count_devices(&DeviceFilter::default())?)),
        10_000
    );

    let mut expected: Vec<DeviceSerial> = records.iter().map(|d| d.serial.clone()).collect();
    expected.sort();
    for page in [1_000, 997, 10_000, 20_000] {
        let listed = list_all(store, &DeviceFilter::default(), page);
        let listed: Vec<DeviceSerial> = listed.into_iter().map(|d| d.serial).collect();
        assert_eq!(listed.len(), expected.len(), "page size {page}");
        assert!(
            listed == expected,
            "page size {page}: not in serial byte order"
        );
    }
    // Keyset positions that are not stored serials.
    for after in [
        vec![0x00, 0x00, 0x00],
        b"A\0\0\0".to_vec(),
        b"ECU-5".to_vec(),
        vec![0xff; 39],
    ] {
        let after = serial(&after);
        let got = tx(store, |tx| {
            Ok(tx.devices(&DeviceFilter::default(), Some(&after), 5)?)
        });
        let want: Vec<&DeviceSerial> = expected.iter().filter(|s| **s > after).take(5).collect();
        assert_eq!(
            got.iter().map(|d| &d.serial).collect::<Vec<_>>(),
            want,
            "after {after}"
        );
    }
    let prefix_a = DeviceFilter {
        serial_prefix: Some(b"A".to_vec()),
        ..Default::default()
    };
    let listed: Vec<DeviceSerial> = list_all(store, &prefix_a, 3)
        .into_iter()
        .map(|d| d.serial)
        .collect();
    let want: Vec<DeviceSerial> = expected
        .iter()
        .filter(|s| s.as_bytes().starts_with(b"A"))
        .cloned()
        .collect();
    assert_eq!(listed, want, "prefix A");
    let probes = [&b"A"[..], b"A\0", b"A\0\0", b"A\x01", b"AB", b"ABC"].map(serial);
    let order: Vec<&DeviceSerial> = listed.iter().filter(|s| probes.contains(s)).collect();
    assert_eq!(
        order,
        probes.iter().collect::<Vec<_>>(),
        "A < A\\0 < A\\0\\0 < A\\x01 < AB < ABC"
    );
}

fn random_device(rng: &mut Rng, labels: &[&str]) -> DeviceRecord {
    const ALPHABET: [u8; 5] = [0x00, b'A', b'B', 0x7f, 0xff];
    let len = 1 + rng.below(6);
    let bytes: Vec<u8> = (0..len).map(|_| *rng.pick(&ALPHABET)).collect();
    let mut d = device(&bytes);
    d.state = *rng.pick(&State::ALL);
    d.generation = 1 + rng.below(3) as u32;
    d.revision = rng.below(5) as u32;
    d.labels = labels
        .iter()
        .filter(|_| rng.chance(30))
        .map(|l| (*l).to_owned())
        .collect();
    d
}

pub(crate) fn device_filters_match_reference(f: &dyn StoreFactory) {
    let mut store = f.fresh();
    let store = &mut *store;
    let mut rng = Rng::new(0x5eed_0002);
    let labels = [
        "line=1",
        "line=2",
        "model=T7",
        "line",
        "Sitz-\u{fc}",
        "%",
        "_",
    ];
    let mut all: BTreeMap<DeviceSerial, DeviceRecord> = BTreeMap::new();
    while all.len() < 2_000 {
        let d = random_device(&mut rng, &labels);
        all.entry(d.serial.clone()).or_insert(d);
    }
    let records: Vec<DeviceRecord> = all.values().cloned().collect();
    tx(store, |tx| Ok(tx.insert_devices(&records)?));
    // The one-pass count by state agrees with the reference, states without devices left out.
    let by_state: Vec<(State, u64)> = State::ALL
        .into_iter()
        .map(|s| (s, all.values().filter(|d| d.state == s).count() as u64))
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(tx(store, |tx| Ok(tx.count_devices_by_state()?)), by_state);

    const PREFIX_BYTES: [u8; 4] = [0x00, b'A', 0x7f, 0xff];
    for round in 0..300 {
        let filter = DeviceFilter {
            state: rng.chance(40).then(|| *rng.pick(&State::ALL)),
            generation: rng.chance(40).then(|| 1 + rng.below(4) as u32),
            labels: (0..rng.below(3))
                .map(|_| (*rng.pick(&labels)).to_owned())
                .collect(),
            serial_prefix: rng.chance(50).then(|| {
                (0..rng.below(4))
                    .map(|_| *rng.pick(&PREFIX_BYTES))
                    .collect()
            }),
        };
        let want: Vec<&DeviceRecord> = all.values().filter(|d| filter.matches(d)).collect();
        let page = 1 + rng.below(if round % 2 == 0 { 7 } else { 500 });
        let got = list_all(store, &filter, page);
        assert_eq!(
            got.iter().collect::<Vec<_>>(),
            want,
            "filter {filter:?}, page {page}"
        );
        assert_eq!(
            tx(store, |tx| Ok(tx.count_devices(&filter)?)),
            want.len() as u64,
            "count {filter:?}"
        );

        // From an arbitrary keyset position, stored or not.
        let after = if rng.chance(50) {
            records[rng.below(records.len())].serial.clone()
        } else {
            random_device(&mut rng, &[]).serial
        };
        let limit = 1 + rng.below(20);
        let got = tx(store, |tx| Ok(tx.devices(&filter, Some(&after), limit)?));
        let want: Vec<&DeviceRecord> = want
            .into_iter()
            .filter(|d| d.serial > after)
            .take(limit)
            .collect();
        assert_eq!(
            got.iter().collect::<Vec<_>>(),
            want,
            "filter {filter:?} after {after}"
        );
    }
}

pub(crate) fn failing_closure_rolls_back_everything(f: &dyn StoreFactory) {
    let mut store = f.fresh();
    let store = &mut *store;
    let kept = device(b"kept");
    tx(store, |tx| {
        tx.put_fleet(&fleet())?;
        tx.insert_generation(&generation(1, State::Active))?;
        tx.insert_device(&kept)?;
        tx.append_audit(draft("fleet.init", 1, &[]))?;
        tx.put_meta("idempotency.a", "before")?;
        Ok(())
    });
    let before = snapshot(store);

    let mut runs = 0;
    let result = store.transaction(&mut |tx| {
        runs += 1;
        tx.put_fleet(&FleetInfo {
            id: "changed".into(),
            ..fleet()
        })?;
        tx.insert_generation(&generation(2, State::PreActive))?;
        tx.update_generation(&generation(1, State::Deactivated))?;
        tx.insert_device(&device(b"new"))?;
        tx.insert_devices(&[device(b"bulk-1"), device(b"bulk-2")])?;
        tx.update_device(&DeviceRecord {
            revision: 99,
            wrapped_root: Some(WrappedKey(vec![7; 40])),
            ..kept.clone()
        })?;
        tx.append_audit(draft("device.add", 2, &[serial(b"new")]))?;
        tx.append_audit(draft("device.add", 3, &[serial(b"bulk-1")]))?;
        tx.put_meta("idempotency.a", "after")?;
        tx.put_meta("records.sequence", "7")?;
        // Visible inside the transaction...
        assert_eq!(tx.count_devices(&DeviceFilter::default())?, 4);
        Err(Error::invalid(
            "conformance",
            "the closure fails on purpose",
        ))
    });
    assert!(runs >= 1);
    match result {
        Err(Error::Invalid { field, .. }) => {
            assert_eq!(field, "conformance", "the closure's error is returned")
        }
        other => panic!("expected the closure's error, got {other:?}"),
    }
    // ...and nowhere after.
    assert_eq!(snapshot(store), before);
    let mut other = f.reopen();
    assert_eq!(snapshot(&mut *other), before);
    assert_eq!(verify_chain(store), 1);
}

pub(crate) fn insert_devices_is_all_or_nothing(f: &dyn StoreFactory) {
    let mut store = f.fresh();
    let store = &mut *store;
    tx(store, |tx| Ok(tx.insert_device(&device(b"exists"))?));

    // An existing serial in the middle of the batch, the caller going on after the error.
    let batch: Vec<DeviceRecord> = [&b"new-1"[..], b"new-2", b"exists", b"new-3"]
        .map(device)
        .to_vec();
    let result = tx(store, |tx| Ok(tx.insert_devices(&batch)));
    assert_duplicate(result, "device exists");
    assert_eq!(
        tx(store, |tx| Ok(tx.count_devices(&DeviceFilter::default())?)),
        1,
        "nothing of the batch"
    );

    // A serial twice within the batch.
    let batch: Vec<DeviceRecord> = [&b"x"[..], b"y", b"x"].map(device).to_vec();
    assert_duplicate(tx(store, |tx| Ok(tx.insert_devices(&batch))), "device x");
    assert_eq!(
        tx(store, |tx| Ok(tx.count_devices(&DeviceFilter::default())?)),
        1
    );

    // The error propagated: the transaction commits nothing either.
    let batch: Vec<DeviceRecord> = [&b"p"[..], b"exists"].map(device).to_vec();
    let result = transact(store, |tx| Ok(tx.insert_devices(&batch)?));
    assert!(
        matches!(result, Err(Error::Store(StoreError::Duplicate(_)))),
        "{result:?}"
    );
    assert_eq!(tx(store, |tx| Ok(tx.device(&serial(b"p"))?)), None);

    // Large batches (a store may insert several rows per statement): the first offending serial
    // is named, wherever it sits, and nothing is inserted.
    let fresh = |i: usize| device(format!("n-{i:03}").as_bytes());
    for (position, culprit, name) in [
        (70, device(b"exists"), "device exists"),
        (99, device(b"exists"), "device exists"),
        (0, device(b"exists"), "device exists"),
        (50, fresh(10), "device n-010"),
        (97, fresh(96), "device n-096"),
    ] {
        let mut batch: Vec<DeviceRecord> = (0..100).map(fresh).collect();
        batch[position] = culprit;
        assert_duplicate(tx(store, |tx| Ok(tx.insert_devices(&batch))), name);
        assert_eq!(
            tx(store, |tx| Ok(tx.count_devices(&DeviceFilter::default())?)),
            1
        );
    }
    let batch: Vec<DeviceRecord> = (0..100).map(fresh).collect();
    tx(store, |tx| Ok(tx.insert_devices(&batch)?));
    let listed = list_all(store, &DeviceFilter::default(), 1000);
    assert!(
        listed.len() == 101 && listed[1..] == batch[..],
        "exists, then the batch"
    );

    // An empty batch is fine.
    tx(store, |tx| Ok(tx.insert_devices(&[])?));
}

pub(crate) fn errors_leave_the_transaction_usable(f: &dyn StoreFactory) {
    let mut store = f.fresh();
    let store = &mut *store;
    tx(store, |tx| {
        tx.insert_device(&device(b"a"))?;
        Ok(tx.insert_generation(&generation(1, State::Active))?)
    });
    tx(store, |tx| {
        assert!(tx.insert_device(&device(b"a")).is_err());
        assert!(tx.update_device(&device(b"missing")).is_err());
        assert!(
            tx.insert_generation(&generation(1, State::PreActive))
                .is_err()
        );
        assert!(tx.update_generation(&generation(5, State::Active)).is_err());
        assert!(tx.insert_devices(&[device(b"b"), device(b"a")]).is_err());
        tx.insert_device(&device(b"c"))?;
        tx.append_audit(draft("device.add", 5, &[serial(b"c")]))?;
        Ok(())
    });
    let serials: Vec<DeviceSerial> = list_all(store, &DeviceFilter::default(), 10)
        .into_iter()
        .map(|d| d.serial)
        .collect();
    assert_eq!(serials, vec![serial(b"a"), serial(b"c")]);
    assert_eq!(
        tx(store, |tx| Ok(tx.generation(1)?)),
        Some(generation(1, State::Active))
    );
    assert_eq!(verify_chain(store), 1);
}

pub(crate) fn audit_appends_chain(f: &dyn StoreFactory) {
    let mut store = f.fresh();
    let store = &mut *store;
    assert_eq!(tx(store, |tx| Ok(tx.audit_head()?)), None);
    assert_eq!(verify_chain(store), 0);

    let subjects: Vec<DeviceSerial> = tricky_serials().iter().map(|s| serial(s)).collect();
    let mut appended: Vec<AuditEvent> = Vec::new();
    for i in 0..40_usize {
        let mut d = draft(
            [
                "fleet.init",
                "device.add",
                "device.refresh",
                "generation.rotate",
            ][i % 4],
            i as i64 * 10,
            &[],
        );
        d.subjects = subjects
            .iter()
            .skip(i % 5)
            .step_by(1 + i % 3)
            .take(i % 6)
            .cloned()
            .collect();
        if i % 7 == 0 {
            // Order and repetition of subjects are part of the event.
            d.subjects.push(subjects[0].clone());
            d.subjects.push(subjects[0].clone());
        }
        d.generation = (i % 3 != 0).then_some(i as u32);
        d.actor = ["", "system", "operator \u{1f527}"][i % 3].into();
        d.details = json!({
            "from": "active", "to": "suspended", "revision": i, "negative": -(i as i64),
            "nested": { "list": [1, "two", null, true], "empty": {} }, "text": "quote \" \u{fc}",
        });
        let event = if i % 4 == 3 {
            // Several events in one transaction.
            tx(store, |tx| {
                tx.append_audit(draft("device.batch", 0, &[]))?;
                Ok(tx.append_audit(d.clone())?)
            })
        } else {
            tx(store, |tx| Ok(tx.append_audit(d.clone())?))
        };
        assert_eq!(event.draft, d, "the event carries its draft");
        let prev = appended.last().map(|e| (e.seq, e.hash));
        if i % 4 == 3 {
            assert_eq!(event.seq, prev.map_or(0, |p| p.0) + 2);
        } else {
            assert_eq!(event, AuditEvent::seal(prev, d), "sealed against the head");
        }
        assert_eq!(
            tx(store, |tx| Ok(tx.audit_head()?)),
            Some((event.seq, event.hash))
        );
        appended.push(event);
    }
    assert_eq!(verify_chain(store), 50);
    let read = audit_all(store, &AuditFilter::default(), 7);
    for e in &appended {
        assert_eq!(
            read.iter().find(|r| r.seq == e.seq),
            Some(e),
            "event {} reads back as appended",
            e.seq
        );
    }
    let mut other = f.reopen();
    assert_eq!(verify_chain(&mut *other), 50);
}

pub(crate) fn audit_filters_match_reference(f: &dyn StoreFactory) {
    let mut store = f.fresh();
    let store = &mut *store;
    let mut rng = Rng::new(0x5eed_0003);
    let mut pool: Vec<DeviceSerial> = tricky_serials()
        .iter()
        .take(10)
        .map(|s| serial(s))
        .collect();
    // A serial whose bytes contain another's length-prefixed form: a store that finds bulk
    // events by searching encoded subject lists must not report "X-1" for an event about
    // "Q\x03X-1".
    pool.push(serial(b"X-1"));
    pool.push(serial(b"Q\x03X-1"));
    let actions = [
        "device",
        "device.refresh",
        "device.refresh.bulk",
        "devices.import",
        "device_x",
        "generation.rotate",
        "fleet.init",
        "device-add",
    ];
    let mut events = Vec::new();
    for chunk in 0..30 {
        let drafts: Vec<AuditDraft> = (0..10)
            .map(|_| {
                // Mostly point events; some bulk ones (a batch names many devices).
                let n = if rng.chance(15) {
                    17 + rng.below(30)
                } else {
                    rng.below(4)
                };
                let subjects = (0..n).map(|_| rng.pick(&pool).clone()).collect::<Vec<_>>();
                let action = *rng.pick(&actions);
                draft(
                    action,
                    (rng.below(1000) as i64 - 500) * 1000 + chunk,
                    &subjects,
                )
            })
            .collect();
        events.extend(tx(store, |tx| {
            drafts
                .iter()
                .map(|d| Ok(tx.append_audit(d.clone())?))
                .collect::<Result<Vec<_>, Error>>()
        }));
    }
    let bulk_about_q: Vec<DeviceSerial> = (0..20).map(|_| serial(b"Q\x03X-1")).collect();
    events.push(tx(store, |tx| {
        Ok(tx.append_audit(draft("device.import", 0, &bulk_about_q))?)
    }));
    let only_x1 = AuditFilter {
        device: Some(serial(b"X-1")),
        ..Default::default()
    };
    assert!(
        audit_all(store, &only_x1, 7)
            .iter()
            .all(|e| e.draft.subjects.contains(&serial(b"X-1"))),
        "an event about Q\\x03X-1 is not about X-1"
    );
    assert_eq!(verify_chain(store), 301);
    let probes = [
        "device",
        "device.refresh",
        "devices",
        "dev",
        "device.",
        "generation",
        "fleet.init",
        "nothing",
        "",
    ];
    for _ in 0..300 {
        let since = rng
            .chance(40)
            .then(|| (rng.below(1000) as i64 - 500) * 1000);
        let filter = AuditFilter {
            device: rng.chance(40).then(|| {
                if rng.chance(80) {
                    rng.pick(&pool).clone()
                } else {
                    serial(b"never-a-subject")
                }
            }),
            action: rng.chance(50).then(|| (*rng.pick(&probes)).to_owned()),
            since,
            until: rng
                .chance(40)
                .then(|| since.unwrap_or(-500_000) + rng.below(600_000) as i64),
        };
        let want: Vec<&AuditEvent> = events.iter().filter(|e| filter.matches(e)).collect();
        let page = 1 + rng.below(40);
        let got = audit_all(store, &filter, page);
        assert_eq!(got.iter().collect::<Vec<_>>(), want, "filter {filter:?}");
        let after = rng.below(321) as u64;
        let got = tx(store, |tx| Ok(tx.audit_events(&filter, after, 5)?));
        let want: Vec<&AuditEvent> = want.into_iter().filter(|e| e.seq > after).take(5).collect();
        assert_eq!(
            got.iter().collect::<Vec<_>>(),
            want,
            "filter {filter:?} after {after}"
        );
    }
}

pub(crate) fn meta_get_put(f: &dyn StoreFactory) {
    let mut store = f.fresh();
    let store = &mut *store;
    tx(store, |tx| {
        Ok(tx.append_audit(draft("fleet.init", 1, &[]))?)
    });
    let head = tx(store, |tx| Ok(tx.audit_head()?));
    assert_eq!(tx(store, |tx| Ok(tx.meta("records.sequence")?)), None);
    tx(store, |tx| Ok(tx.put_meta("records.sequence", "1")?));
    assert_eq!(
        tx(store, |tx| Ok(tx.meta("records.sequence")?)),
        Some("1".into())
    );
    tx(store, |tx| Ok(tx.put_meta("records.sequence", "2")?));
    assert_eq!(
        tx(store, |tx| Ok(tx.meta("records.sequence")?)),
        Some("2".into())
    );

    // Keys that look like a store's own bookkeeping are plain values.
    let keys = [
        "schema_version",
        "store.schema_version",
        "store.audit_head_seq",
        "audit_head",
        "",
        "k\u{fc}\u{1f511}",
    ];
    for (i, key) in keys.into_iter().enumerate() {
        let value = format!("value {i} \u{fc} {{\"json\": true}}");
        tx(store, |tx| Ok(tx.put_meta(key, &value)?));
        assert_eq!(tx(store, |tx| Ok(tx.meta(key)?)), Some(value), "{key:?}");
    }
    tx(store, |tx| Ok(tx.put_meta("empty", "")?));
    assert_eq!(tx(store, |tx| Ok(tx.meta("empty")?)), Some(String::new()));
    assert_eq!(
        tx(store, |tx| Ok(tx.audit_head()?)),
        head,
        "meta does not touch the audit head"
    );

    let mut other = f.reopen();
    assert_eq!(
        tx(&mut *other, |tx| Ok(tx.meta("store.schema_version")?)),
        Some("value 1 \u{fc} {\"json\": true}".into())
    );
    assert_eq!(
        tx(&mut *other, |tx| Ok(tx.meta("records.sequence")?)),
        Some("2".into())
    );
    assert_eq!(verify_chain(&mut *other), 1);
}

pub(crate) fn writes_are_visible_to_the_next_transaction_and_other_handles(f: &dyn StoreFactory) {
    let mut store = f.fresh();
    let mut other = f.reopen();
    let d = device(b"visible");
    tx(&mut *store, |tx| {
        tx.insert_device(&d)?;
        tx.put_meta("k", "v")?;
        tx.insert_generation(&generation(4, State::PreActive))?;
        Ok(())
    });
    assert_eq!(
        tx(&mut *store, |tx| Ok(tx.device(&d.serial)?)),
        Some(d.clone())
    );
    assert_eq!(
        tx(&mut *other, |tx| Ok(tx.device(&d.serial)?)),
        Some(d.clone())
    );
    let bumped = DeviceRecord {
        revision: 1,
        ..d.clone()
    };
    tx(&mut *other, |tx| Ok(tx.update_device(&bumped)?));
    assert_eq!(
        tx(&mut *store, |tx| Ok(tx.device(&d.serial)?)),
        Some(bumped)
    );
    assert_eq!(tx(&mut *store, |tx| Ok(tx.meta("k")?)), Some("v".into()));
    assert_eq!(
        tx(&mut *other, |tx| Ok(tx.generation(4)?)),
        Some(generation(4, State::PreActive))
    );
    // Read your own writes inside one transaction.
    tx(&mut *store, |tx| {
        tx.insert_device(&device(b"inner"))?;
        assert!(tx.device(&serial(b"inner"))?.is_some());
        tx.append_audit(draft("device.add", 1, &[serial(b"inner")]))?;
        assert_eq!(tx.audit_head()?.map(|h| h.0), Some(1));
        assert_eq!(tx.audit_events(&AuditFilter::default(), 0, 10)?.len(), 1);
        Ok(())
    });
}

pub(crate) fn transact_returns_the_value(f: &dyn StoreFactory) {
    let mut store = f.fresh();
    let store = &mut *store;
    let event = transact(store, |tx| {
        Ok(tx.append_audit(draft("fleet.init", 1, &[]))?)
    })
    .expect("append");
    assert_eq!(event.seq, 1);
    assert!(!store.kind().is_empty());
    let count =
        transact(store, |tx| Ok(tx.count_devices(&DeviceFilter::default())?)).expect("count");
    assert_eq!(count, 0);
}

pub(crate) fn empty_pages_and_limits(f: &dyn StoreFactory) {
    let mut store = f.fresh();
    let store = &mut *store;
    let all = DeviceFilter::default();
    assert!(tx(store, |tx| Ok(tx.devices(&all, None, 10)?)).is_empty());
    assert!(
        tx(store, |tx| Ok(tx.audit_events(
            &AuditFilter::default(),
            0,
            10
        )?))
        .is_empty()
    );
    let records: Vec<DeviceRecord> = (0..5).map(|i| device(format!("d{i}").as_bytes())).collect();
    tx(store, |tx| {
        tx.insert_devices(&records)?;
        for r in &records {
            tx.append_audit(draft("device.add", 1, std::slice::from_ref(&r.serial)))?;
        }
        Ok(())
    });
    assert!(
        tx(store, |tx| Ok(tx.devices(&all, None, 0)?)).is_empty(),
        "limit 0"
    );
    assert_eq!(
        tx(store, |tx| Ok(tx.devices(&all, None, usize::MAX)?)).len(),
        5,
        "limit usize::MAX"
    );
    assert!(
        tx(store, |tx| Ok(tx.devices(
            &all,
            Some(&serial(b"d4")),
            10
        )?))
        .is_empty(),
        "after the last"
    );
    assert!(
        tx(store, |tx| Ok(tx.audit_events(
            &AuditFilter::default(),
            0,
            0
        )?))
        .is_empty()
    );
    assert_eq!(
        tx(store, |tx| Ok(tx.audit_events(
            &AuditFilter::default(),
            0,
            usize::MAX
        )?))
        .len(),
        5
    );
    assert!(
        tx(store, |tx| Ok(tx.audit_events(
            &AuditFilter::default(),
            5,
            10
        )?))
        .is_empty()
    );
    assert!(
        tx(store, |tx| Ok(tx.audit_events(
            &AuditFilter::default(),
            u64::MAX,
            10
        )?))
        .is_empty()
    );
    let nobody = DeviceFilter {
        labels: vec!["absent".into()],
        ..Default::default()
    };
    assert_eq!(tx(store, |tx| Ok(tx.count_devices(&nobody)?)), 0);
}

pub(crate) fn purge_keeps_live_data(f: &dyn StoreFactory) {
    let mut store = f.fresh();
    let store = &mut *store;
    let mut d = device(b"purged");
    d.wrapped_root = Some(WrappedKey(vec![0x5a; 40]));
    tx(store, |tx| {
        tx.insert_device(&d)?;
        tx.insert_device(&device(b"other"))?;
        tx.append_audit(draft("device.add", 1, &[d.serial.clone()]))?;
        Ok(())
    });
    d.wrapped_root = None;
    d.state = State::Destroyed;
    tx(store, |tx| Ok(tx.update_device(&d)?));
    let before = snapshot(store);
    store.purge().expect("purge");
    store.purge().expect("purge twice");
    assert_eq!(snapshot(store), before);
    for file in store.files() {
        assert!(file.is_absolute() || file.components().count() > 0);
    }
    tx(store, |tx| Ok(tx.insert_device(&device(b"after-purge"))?));
    assert_eq!(verify_chain(store), 1);
}

pub(crate) fn concurrent_read_modify_write_serializes(f: &dyn StoreFactory) {
    const BUMPS: u32 = 200;
    let mut store = f.fresh();
    let target = device(b"contended");
    tx(&mut *store, |tx| Ok(tx.insert_device(&target)?));
    drop(store);

    std::thread::scope(|scope| {
        for worker in 0..2 {
            let target = target.serial.clone();
            scope.spawn(move || {
                let mut store = f.reopen();
                for i in 0..BUMPS {
                    tx(&mut *store, |tx| {
                        let mut d = tx
                            .device(&target)?
                            .ok_or_else(|| Error::NoSuchDevice(target.clone()))?;
                        d.revision += 1;
                        d.changed = Change {
                            at: i64::from(i),
                            actor: format!("worker-{worker}"),
                            reason: String::new(),
                        };
                        tx.update_device(&d)?;
                        let mut event = draft(
                            "device.refresh",
                            i64::from(i),
                            std::slice::from_ref(&target),
                        );
                        event.details = json!({ "revision": d.revision, "worker": worker });
                        tx.append_audit(event)?;
                        Ok(())
                    });
                }
            });
        }
    });

    let mut store = f.reopen();
    let d = tx(&mut *store, |tx| Ok(tx.device(&target.serial)?)).expect("device");
    assert_eq!(d.revision, 2 * BUMPS, "no read-modify-write was lost");
    assert_eq!(verify_chain(&mut *store), u64::from(2 * BUMPS));
    let revisions: Vec<u64> = audit_all(&mut *store, &AuditFilter::default(), 100)
        .iter()
        .map(|e| e.draft.details["revision"].as_u64().expect("revision"))
        .collect();
    assert_eq!(
        revisions,
        (1..=u64::from(2 * BUMPS)).collect::<Vec<_>>(),
        "audit order is commit order"
    );
}

// ---------------------------------------------------------------------------------------------
// Service access: tokens and idempotency records

fn api_token(id: &str, hash_byte: u8, role: Role, at: i64) -> ApiToken {
    ApiToken {
        id: id.into(),
        hash: [hash_byte; 32],
        principal: format!("principal-{id}"),
        role,
        subject: (role == Role::Technician).then(|| "tech \u{fc}".to_owned()),
        fleet: "fleet-a".into(),
        created_at: at,
        created_by: "admin".into(),
        expires_at: hash_byte.is_multiple_of(2).then_some(at + 1000),
        revoked_at: None,
    }
}

pub(crate) fn tokens_insert_lookup_update(f: &dyn StoreFactory) {
    let mut store = f.fresh();
    let store = &mut *store;
    assert!(tx(store, |tx| Ok(tx.tokens()?)).is_empty());
    let a = api_token("tok-a", 1, Role::Station, 20);
    let b = api_token("tok-b", 2, Role::Technician, 10);
    let c = api_token("tok-c", 3, Role::Auditor, 20);
    for t in [&a, &b, &c] {
        tx(store, |tx| Ok(tx.insert_token(t)?));
    }
    // Ordered by issue time, then id; fields round-trip.
    assert_eq!(
        tx(store, |tx| Ok(tx.tokens()?)),
        vec![b.clone(), a.clone(), c.clone()]
    );
    assert_eq!(tx(store, |tx| Ok(tx.token("tok-b")?)), Some(b.clone()));
    assert_eq!(
        tx(store, |tx| Ok(tx.token_by_hash(&[3; 32])?)),
        Some(c.clone())
    );
    assert_eq!(tx(store, |tx| Ok(tx.token_by_hash(&[9; 32])?)), None);
    assert_eq!(tx(store, |tx| Ok(tx.token("tok-z")?)), None);

    // A second token with the same id or the same hash is refused, and the transaction goes on.
    let events = tx(store, |tx| {
        let same_id = api_token("tok-a", 7, Role::Admin, 1);
        assert_duplicate(tx.insert_token(&same_id), "token tok-a");
        let same_hash = api_token("tok-d", 1, Role::Admin, 1);
        assert_duplicate(tx.insert_token(&same_hash), "token tok-d");
        tx.append_audit(draft("token.issue", 30, &[]))?;
        Ok(tx.tokens()?.len())
    });
    assert_eq!(events, 3);
    assert_eq!(verify_chain(store), 1);

    // Update: revocation is seen by another handle; an absent token is NotFound.
    let mut revoked = a.clone();
    revoked.revoked_at = Some(99);
    tx(store, |tx| Ok(tx.update_token(&revoked)?));
    let mut other = f.reopen();
    assert_eq!(
        tx(&mut *other, |tx| Ok(tx.token_by_hash(&[1; 32])?)),
        Some(revoked.clone())
    );
    tx(store, |tx| {
        assert_not_found(
            tx.update_token(&api_token("tok-z", 8, Role::Admin, 1)),
            "token tok-z",
        );
        Ok(())
    });

    // Rolled back with the transaction.
    let result = store.transaction(&mut |tx| {
        tx.insert_token(&api_token("tok-e", 5, Role::Operator, 40))?;
        Err(Error::invalid("test", "roll back"))
    });
    assert!(result.is_err());
    assert_eq!(tx(store, |tx| Ok(tx.token("tok-e")?)), None);
}

pub(crate) fn idempotency_claim_finish_delete(f: &dyn StoreFactory) {
    let mut store = f.fresh();
    let store = &mut *store;
    let claim = IdempotencyRecord {
        principal: "station-1".into(),
        key: "key \u{fc} 1".into(),
        fingerprint: [4; 32],
        created_at: 5,
        response: None,
    };
    assert_eq!(
        tx(store, |tx| Ok(tx.idempotency("station-1", &claim.key)?)),
        None
    );
    tx(store, |tx| Ok(tx.insert_idempotency(&claim)?));
    assert_eq!(
        tx(store, |tx| Ok(tx.idempotency("station-1", &claim.key)?)),
        Some(claim.clone())
    );
    // Keys are scoped to their principal.
    assert_eq!(
        tx(store, |tx| Ok(tx.idempotency("station-2", &claim.key)?)),
        None
    );
    let mut other_principal = claim.clone();
    other_principal.principal = "station-2".into();
    tx(store, |tx| Ok(tx.insert_idempotency(&other_principal)?));
    tx(store, |tx| {
        assert_duplicate(tx.insert_idempotency(&claim), &claim.key);
        Ok(())
    });

    // The response, including an empty body, round-trips; another handle sees it.
    let mut done = claim.clone();
    done.response = Some((201, WrappedKey(vec![0, 1, 2, 255])));
    tx(store, |tx| Ok(tx.update_idempotency(&done)?));
    let mut other = f.reopen();
    assert_eq!(
        tx(&mut *other, |tx| Ok(
            tx.idempotency("station-1", &claim.key)?
        )),
        Some(done.clone())
    );
    let mut empty = other_principal.clone();
    empty.response = Some((422, WrappedKey(vec![])));
    tx(store, |tx| Ok(tx.update_idempotency(&empty)?));
    assert_eq!(
        tx(store, |tx| Ok(tx.idempotency("station-2", &claim.key)?)),
        Some(empty.clone())
    );

    let mut absent = claim.clone();
    absent.key = "absent".into();
    tx(store, |tx| {
        assert_not_found(tx.update_idempotency(&absent), "absent");
        Ok(())
    });

    // Delete forgets exactly one principal's key; deleting an absent key is not an error.
    tx(store, |tx| {
        Ok(tx.delete_idempotency("station-1", &claim.key)?)
    });
    tx(
        store,
        |tx| Ok(tx.delete_idempotency("station-1", "absent")?),
    );
    assert_eq!(
        tx(store, |tx| Ok(tx.idempotency("station-1", &claim.key)?)),
        None
    );
    assert_eq!(
        tx(store, |tx| Ok(tx.idempotency("station-2", &claim.key)?)),
        Some(empty)
    );
    // Two handles claiming one key: exactly one insert succeeds.
    let results: Vec<Result<(), StoreError>> = [&mut *store, &mut *other]
        .into_iter()
        .map(|s| {
            let mut out = Ok(());
            s.transaction(&mut |tx| {
                out = tx.insert_idempotency(&claim);
                Ok(())
            })
            .expect("transaction");
            out
        })
        .collect();
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
}

pub(crate) fn idempotency_purge_by_age(f: &dyn StoreFactory) {
    let mut store = f.fresh();
    let store = &mut *store;
    let record = |principal: &str, key: &str, at: i64, done: bool| IdempotencyRecord {
        principal: principal.into(),
        key: key.into(),
        fingerprint: [7; 32],
        created_at: at,
        response: done.then(|| (200, WrappedKey(vec![1, 2, 3]))),
    };
    let all = [
        record("station-1", "old-done", 100, true),
        record("station-1", "old-claim", 199, false),
        record("station-2", "boundary", 200, true),
        record("station-2", "new", 300, false),
    ];
    tx(store, |tx| {
        for r in &all {
            tx.insert_idempotency(r)?;
        }
        Ok(())
    });
    // Strictly before the cut, claims and answers of every principal; nothing else.
    assert_eq!(tx(store, |tx| Ok(tx.purge_idempotency(200)?)), 2);
    assert_eq!(tx(store, |tx| Ok(tx.purge_idempotency(200)?)), 0);
    for r in &all {
        let found = tx(store, |tx| Ok(tx.idempotency(&r.principal, &r.key)?));
        assert_eq!(found.is_some(), r.created_at >= 200, "{}", r.key);
    }
    // A purge rolled back by its closure removes nothing.
    let failed = store.transaction(&mut |tx| {
        tx.purge_idempotency(i64::MAX)?;
        Err(Error::invalid("test", "roll back"))
    });
    assert!(failed.is_err());
    let mut other = f.reopen();
    assert!(
        tx(&mut *other, |tx| Ok(tx.idempotency("station-2", "new")?)).is_some(),
        "the rolled-back purge removed a record"
    );
    assert_eq!(tx(&mut *other, |tx| Ok(tx.purge_idempotency(i64::MAX)?)), 2);
}

pub(crate) fn delivery_journal_insert_list_delete(f: &dyn StoreFactory) {
    let mut store = f.fresh();
    let store = &mut *store;
    assert_eq!(tx(store, |tx| Ok(tx.count_deliveries("provisioning")?)), 0);
    // Ids grow in commit order; kinds are kept apart; payloads come back byte for byte (empty,
    // binary, large).
    let large: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let payloads: [&[u8]; 3] = [b"", &[0, 255, 10, 13, 0], &large];
    let mut ids = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        let kind = if i == 1 { "key-update" } else { "provisioning" };
        ids.push(tx(store, |tx| {
            Ok(tx.insert_delivery(kind, p, 100 + i as i64)?)
        }));
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let provisioning = tx(store, |tx| Ok(tx.deliveries("provisioning", 0, 10)?));
    assert_eq!(
        provisioning.iter().map(|d| d.id).collect::<Vec<_>>(),
        [ids[0], ids[2]]
    );
    assert_eq!(provisioning[0].payload, b"");
    assert_eq!(provisioning[1].payload, large);
    assert_eq!(provisioning[1].created_at, 102);
    assert_eq!(provisioning[1].kind, "provisioning");
    let updates = tx(store, |tx| Ok(tx.deliveries("key-update", 0, 10)?));
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].payload, payloads[1]);
    // Paging by id.
    let after_first = tx(store, |tx| Ok(tx.deliveries("provisioning", ids[0], 1)?));
    assert_eq!(
        after_first.iter().map(|d| d.id).collect::<Vec<_>>(),
        [ids[2]]
    );
    assert_eq!(tx(store, |tx| Ok(tx.count_deliveries("provisioning")?)), 2);
    // A failing transaction's insert does not stay.
    let failed = transact(store, |tx| {
        tx.insert_delivery("provisioning", b"x", 1)?;
        Err::<(), _>(Error::invalid("test", "fails"))
    });
    assert!(failed.is_err());
    assert_eq!(tx(store, |tx| Ok(tx.count_deliveries("provisioning")?)), 2);
    // Delete is idempotent and says whether the entry was there.
    assert!(tx(store, |tx| Ok(tx.delete_delivery(ids[0])?)));
    assert!(!tx(store, |tx| Ok(tx.delete_delivery(ids[0])?)));
    assert_eq!(tx(store, |tx| Ok(tx.count_deliveries("provisioning")?)), 1);
    // Another handle sees the journal; a new id never reuses a deleted one.
    let mut other = f.reopen();
    assert_eq!(
        tx(&mut *other, |tx| Ok(tx.count_deliveries("key-update")?)),
        1
    );
    assert!(tx(&mut *other, |tx| Ok(tx.delete_delivery(ids[2])?)));
    let next = tx(&mut *other, |tx| {
        Ok(tx.insert_delivery("provisioning", b"n", 9)?)
    });
    assert!(next > ids[2], "{next} after {ids:?}");
}

/// [`Tx::update_devices`] against the reference (every device that the filter matches, in the
/// range, gets the update; no other changes) on random fleets, filters, ranges and updates.
pub(crate) fn bulk_update_changes_exactly_the_matching_range(f: &dyn StoreFactory) {
    let mut store = f.fresh();
    let store = &mut *store;
    let mut rng = Rng::new(0x5eed_b01c);
    let labels = ["line=1", "line=2"];
    let mut reference: std::collections::BTreeMap<Vec<u8>, DeviceRecord> = Default::default();
    while reference.len() < 120 {
        let d = random_device(&mut rng, &labels);
        reference.entry(d.serial.as_bytes().to_vec()).or_insert(d);
    }
    let all: Vec<DeviceRecord> = reference.values().cloned().collect();
    tx(store, |tx| Ok(tx.insert_devices(&all)?));
    let serials: Vec<DeviceSerial> = all.iter().map(|d| d.serial.clone()).collect();
    for round in 0..40 {
        let filter = DeviceFilter {
            state: rng.chance(80).then(|| *rng.pick(&State::ALL)),
            generation: rng.chance(30).then(|| 1 + rng.below(3) as u32),
            labels: if rng.chance(25) {
                vec![(*rng.pick(&labels)).to_owned()]
            } else {
                Vec::new()
            },
            serial_prefix: rng
                .chance(15)
                .then(|| rng.pick(&serials).as_bytes()[..1].to_vec()),
        };
        let after = rng.chance(70).then(|| rng.pick(&serials).clone());
        let through = rng.pick(&serials).clone();
        let to = *rng.pick(&State::ALL);
        let update = DeviceUpdate {
            state: rng.chance(60).then_some(to),
            bump_revision: rng.chance(50),
            generation: rng.chance(30).then(|| 1 + rng.below(4) as u32),
            changed: change(1_800_000_000_000 + round),
        };
        let mut expected = 0;
        let scan = if rng.chance(50) {
            Scan::Sweep
        } else {
            Scan::Indexed
        };
        // Both scans read the same page as the filter's reference semantics.
        let page: Vec<DeviceRecord> = reference
            .values()
            .filter(|d| after.as_ref().is_none_or(|a| d.serial > *a) && filter.matches(d))
            .take(7)
            .cloned()
            .collect();
        let read = tx(store, |tx| {
            Ok(tx.devices_by(&filter, after.as_ref(), 7, scan)?)
        });
        assert_eq!(read, page, "round {round}: {filter:?} {scan:?}");
        for d in reference.values_mut() {
            let in_range = after.as_ref().is_none_or(|a| d.serial > *a) && d.serial <= through;
            if in_range && filter.matches(d) {
                *d = update.apply(d).expect("apply");
                expected += 1;
            }
        }
        let changed = tx(store, |tx| {
            Ok(tx.update_devices(&filter, after.as_ref(), &through, &update, scan)?)
        });
        assert_eq!(
            changed, expected,
            "round {round}: {filter:?} {update:?} {scan:?}"
        );
        let stored = list_all(store, &DeviceFilter::default(), 1000);
        let want: Vec<DeviceRecord> = reference.values().cloned().collect();
        assert_eq!(stored, want, "round {round}: {filter:?} {update:?}");
    }
}

/// Bulk provisioning's use of [`Tx::update_devices`]: a page of pre-active devices read and
/// activated in one transaction; devices in another state, before the page or after it, are
/// not changed; revisions stay.
pub(crate) fn bulk_update_activates_a_page_and_skips_other_states(f: &dyn StoreFactory) {
    let mut store = f.fresh();
    // Each scan on devices of its own (serials starting with its own byte).
    for (scan, first) in [(Scan::Indexed, b'D'), (Scan::Sweep, b'E')] {
        bulk_update_activates_a_page(&mut *store, scan, first);
    }
}

fn bulk_update_activates_a_page(store: &mut dyn Store, scan: Scan, first: u8) {
    let states = [
        State::PreActive,
        State::Active,
        State::Suspended,
        State::PreActive,
    ];
    let all: Vec<DeviceRecord> = (0..40u8)
        .map(|i| {
            let mut d = device(&[first, b'0' + i / 10, b'0' + i % 10]);
            d.state = states[usize::from(i) % states.len()];
            d.revision = u32::from(i % 3);
            d
        })
        .collect();
    tx(store, |tx| Ok(tx.insert_devices(&all)?));
    let filter = DeviceFilter {
        state: Some(State::PreActive),
        serial_prefix: Some(vec![first]),
        ..DeviceFilter::default()
    };
    let own = DeviceFilter {
        serial_prefix: Some(vec![first]),
        ..DeviceFilter::default()
    };
    let update = DeviceUpdate {
        state: Some(State::Active),
        bump_revision: false,
        generation: None,
        changed: change(1_900_000_000_000),
    };
    let after = all[4].serial.clone();
    let page = tx(store, |tx| {
        let page = tx.devices_by(&filter, Some(&after), 5, scan)?;
        let last = page.last().expect("a page").serial.clone();
        let changed = tx.update_devices(&filter, Some(&after), &last, &update, scan)?;
        assert_eq!(changed, page.len() as u64);
        Ok(page)
    });
    assert_eq!(page.len(), 5);
    let paged: Vec<&DeviceSerial> = page.iter().map(|d| &d.serial).collect();
    for (before, now) in all.iter().zip(list_all(store, &own, 1000)) {
        assert_eq!(before.serial, now.serial);
        assert_eq!(before.revision, now.revision, "{}", now.serial);
        if paged.contains(&&before.serial) {
            assert_eq!(before.state, State::PreActive);
            assert_eq!(now.state, State::Active, "{}", now.serial);
            assert_eq!(now.changed, update.changed);
        } else {
            assert_eq!(&now, before, "{} is outside the page", now.serial);
        }
    }
    // Run again on the same range: nothing is pre-active there any more.
    let last = page.last().expect("a page").serial.clone();
    assert_eq!(
        tx(store, |tx| Ok(tx.update_devices(
            &filter,
            Some(&after),
            &last,
            &update,
            scan
        )?)),
        0
    );
    // A read-only transaction refuses it.
    let refused = read_tx(store, |tx| {
        Ok(tx.update_devices(&filter, None, &last, &update, scan))
    });
    assert!(
        matches!(refused, Ok(Err(StoreError::ReadOnly(_)))),
        "{refused:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Tampering with the tables the audit views read (raw SQL, so each store calls it itself)

/// One raw change to a store's tables, what `audit verify` must then say, and its undoing.
pub(crate) struct Tamper {
    /// SQL that changes the store behind its back.
    pub(crate) change: String,
    /// What the verification error must contain (the table, the event).
    pub(crate) says: String,
    /// SQL that puts back what `change` changed.
    pub(crate) undo: String,
}

/// How a store's SQL differs for [`audit_verify_names_each_tampered_table`].
pub(crate) struct TamperSql {
    /// The blob type for `CAST('text' AS ...)`.
    pub(crate) blob: &'static str,
    /// Statements that let the next ones break foreign keys, in the same session.
    pub(crate) without_foreign_keys: &'static str,
    /// Changes to where the store keeps the head, given the head's hash in hex (event 5).
    pub(crate) head: fn(&str) -> Vec<Tamper>,
}

/// Changes each table (and column) the audit views read, one at a time with `raw`, and checks
/// that verification then fails with an [`Error::Chain`] naming the table and the event, and
/// passes again once the change is undone. The chain: 1 `fleet.init`, 2 `device.add` A1,
/// 3 `device.refresh` A1 A2, 4 a bulk import of 17 devices (not indexed), 5 `device.add` A3.
pub(crate) fn audit_verify_names_each_tampered_table(
    store: &mut dyn Store,
    raw: &mut dyn FnMut(&str),
    sql: &TamperSql,
) {
    let bulk: Vec<DeviceSerial> = (0..17)
        .map(|i| serial(format!("B{i}").as_bytes()))
        .collect();
    let head = tx(store, |tx| {
        tx.append_audit(draft("fleet.init", 1, &[]))?;
        tx.append_audit(draft("device.add", 2, &[serial(b"A1")]))?;
        tx.append_audit(draft("device.refresh", 3, &[serial(b"A1"), serial(b"A2")]))?;
        tx.append_audit(draft("device.import", 4, &bulk))?;
        Ok(tx.append_audit(draft("device.add", 5, &[serial(b"A3")]))?)
    });
    assert_eq!(verify_chain(store), 5);
    let about_a1 = AuditFilter {
        device: Some(serial(b"A1")),
        ..Default::default()
    };
    let seqs = |store: &mut dyn Store, filter: &AuditFilter| -> Vec<u64> {
        audit_all(store, filter, 10).iter().map(|e| e.seq).collect()
    };
    assert_eq!(seqs(store, &about_a1), [2, 3]);

    let blob = |text: &str| format!("CAST('{text}' AS {})", sql.blob);
    let tamper = |change: String, says: &str, undo: String| Tamper {
        change,
        says: says.into(),
        undo,
    };
    let mut cases = vec![
        tamper(
            format!(
                "UPDATE audit_subjects SET serial = {} WHERE seq = 2",
                blob("A2")
            ),
            "audit_subjects: event 2 lists A2, its record names A1",
            format!(
                "UPDATE audit_subjects SET serial = {} WHERE seq = 2",
                blob("A1")
            ),
        ),
        tamper(
            "DELETE FROM audit_subjects WHERE seq = 3 AND pos = 1".into(),
            "audit_subjects: event 3 does not list A2 at position 1",
            format!(
                "INSERT INTO audit_subjects (seq, pos, serial) VALUES (3, 1, {})",
                blob("A2")
            ),
        ),
        tamper(
            format!(
                "INSERT INTO audit_subjects (seq, pos, serial) VALUES (5, 1, {})",
                blob("A1")
            ),
            "audit_subjects: event 5 lists A1 at position 1",
            "DELETE FROM audit_subjects WHERE seq = 5 AND pos = 1".into(),
        ),
        tamper(
            format!(
                "INSERT INTO audit_subjects (seq, pos, serial) VALUES (4, 0, {})",
                blob("A1")
            ),
            "audit_subjects: event 4 lists A1 at position 0, its record names 17 devices",
            "DELETE FROM audit_subjects WHERE seq = 4".into(),
        ),
        tamper(
            format!(
                "{} INSERT INTO audit_subjects (seq, pos, serial) VALUES (9, 0, {})",
                sql.without_foreign_keys,
                blob("A1")
            ),
            "audit_subjects: rows point at event 9, which does not exist",
            "DELETE FROM audit_subjects WHERE seq = 9".into(),
        ),
        tamper(
            "UPDATE audit SET n_subjects = 3 WHERE seq = 4".into(),
            "audit.n_subjects: event 4 says 3 devices, its record names 17",
            "UPDATE audit SET n_subjects = 17 WHERE seq = 4".into(),
        ),
        tamper(
            "UPDATE audit SET action = 'generation.rotate' WHERE seq = 2".into(),
            "audit: event 2 was changed",
            "UPDATE audit SET action = 'device.add' WHERE seq = 2".into(),
        ),
        tamper(
            "UPDATE audit SET at = 99 WHERE seq = 5".into(),
            "audit: event 5 was changed",
            "UPDATE audit SET at = 5 WHERE seq = 5".into(),
        ),
        tamper(
            "UPDATE audit SET generation = 7 WHERE seq = 3".into(),
            "audit: event 3 was changed",
            "UPDATE audit SET generation = 1 WHERE seq = 3".into(),
        ),
    ];
    cases.extend((sql.head)(&hex::encode(head.hash)));
    for case in &cases {
        raw(&case.change);
        if case.change.contains("audit_subjects SET serial") {
            assert_eq!(
                seqs(store, &about_a1),
                [3],
                "the device view reads the index"
            );
        }
        match transact(store, fleetkey::store::verify_audit) {
            Err(Error::Chain(b)) => assert!(
                b.to_string().contains(&case.says),
                "after {:?}: {b:?} ({b}) should say {:?}",
                case.change,
                case.says
            ),
            other => panic!(
                "after {:?}: expected a chain break saying {:?}, got {other:?}",
                case.change, case.says
            ),
        }
        raw(&case.undo);
        assert_eq!(verify_chain(store), 5, "after undoing {:?}", case.change);
    }
    assert_eq!(seqs(store, &about_a1), [2, 3]);

    // The newest event removed with its index rows: the head names it.
    raw("DELETE FROM audit_subjects WHERE seq = 5; DELETE FROM audit WHERE seq = 5");
    match transact(store, fleetkey::store::verify_audit) {
        Err(Error::Chain(b)) => assert!(
            b.to_string()
                .contains("the chain ends at event 4 but the recorded head is event 5"),
            "{b}"
        ),
        other => panic!("expected a truncated chain, got {other:?}"),
    }

    // A row of the events table that no longer reads as an event: a corrupt store, named by
    // table and event.
    for (change, says) in [
        (
            "UPDATE audit SET details = 'not json' WHERE seq = 3".to_owned(),
            "audit: event 3: audit details",
        ),
        (
            format!("UPDATE audit SET subjects = {} WHERE seq = 2", blob("Z")),
            "audit: event 2: audit subject list is truncated",
        ),
    ] {
        raw(&change);
        match transact(store, fleetkey::store::verify_audit) {
            Err(Error::Store(StoreError::Corrupt(what))) => {
                assert!(what.contains(says), "after {change:?}: {what:?}")
            }
            other => panic!("after {change:?}: expected a corrupt store, got {other:?}"),
        }
    }
}

/// `Store::read`: every write method is refused with `ReadOnly` and changes nothing, the
/// transaction stays usable after a refusal, nothing of the read's work is lost, a read sees what
/// another handle committed, and the handle writes again afterwards.
pub(crate) fn read_refuses_writes_and_sees_committed_data(f: &dyn StoreFactory) {
    let mut store = f.fresh();
    let store = &mut *store;
    let kept = device(b"kept");
    let token = api_token("tok-1", 1, Role::Operator, 10);
    let claim = IdempotencyRecord {
        principal: "station-1".into(),
        key: "k1".into(),
        fingerprint: [4; 32],
        created_at: 5,
        response: None,
    };
    let delivery = tx(store, |tx| {
        tx.put_fleet(&fleet())?;
        tx.insert_generation(&generation(1, State::Active))?;
        tx.insert_device(&kept)?;
        tx.append_audit(draft("fleet.init", 1, &[]))?;
        tx.put_meta("idempotency.a", "before")?;
        tx.insert_token(&token)?;
        tx.insert_idempotency(&claim)?;
        Ok(tx.insert_delivery("provisioning", b"owed", 7)?)
    });
    let before = snapshot(store);

    fn refused<T: std::fmt::Debug>(what: &str, result: Result<T, StoreError>) {
        match result {
            Err(StoreError::ReadOnly(_)) => {}
            other => panic!("{what} inside a read: expected ReadOnly, got {other:?}"),
        }
    }
    let seen = read_tx(store, |tx| {
        let seen = tx.device(&kept.serial)?;
        refused(
            "put_fleet",
            tx.put_fleet(&FleetInfo {
                id: "changed".into(),
                ..fleet()
            }),
        );
        refused(
            "insert_generation",
            tx.insert_generation(&generation(2, State::PreActive)),
        );
        refused(
            "update_generation",
            tx.update_generation(&generation(1, State::Deactivated)),
        );
        refused("insert_device", tx.insert_device(&device(b"new")));
        refused(
            "insert_devices",
            tx.insert_devices(&[device(b"b1"), device(b"b2")]),
        );
        refused(
            "update_device",
            tx.update_device(&DeviceRecord {
                revision: 99,
                ..kept.clone()
            }),
        );
        refused(
            "append_audit",
            tx.append_audit(draft("device.add", 2, &[serial(b"new")])),
        );
        refused("put_meta", tx.put_meta("idempotency.a", "after"));
        refused(
            "insert_token",
            tx.insert_token(&api_token("tok-2", 2, Role::Operator, 11)),
        );
        refused(
            "update_token",
            tx.update_token(&ApiToken {
                revoked_at: Some(12),
                ..token.clone()
            }),
        );
        refused(
            "insert_idempotency",
            tx.insert_idempotency(&IdempotencyRecord {
                key: "k2".into(),
                ..claim.clone()
            }),
        );
        refused(
            "update_idempotency",
            tx.update_idempotency(&IdempotencyRecord {
                response: Some((200, WrappedKey(vec![1]))),
                ..claim.clone()
            }),
        );
        refused(
            "delete_idempotency",
            tx.delete_idempotency("station-1", "k1"),
        );
        refused("purge_idempotency", tx.purge_idempotency(i64::MAX));
        refused(
            "insert_delivery",
            tx.insert_delivery("provisioning", b"more", 8),
        );
        refused("delete_delivery", tx.delete_delivery(delivery));
        // The refusals left the transaction usable and changed nothing in it.
        assert_eq!(tx.count_devices(&DeviceFilter::default())?, 1);
        assert_eq!(tx.device(&kept.serial)?, seen);
        assert_eq!(tx.meta("idempotency.a")?.as_deref(), Some("before"));
        assert_eq!(tx.token("tok-1")?, Some(token.clone()));
        assert_eq!(tx.idempotency("station-1", "k1")?, Some(claim.clone()));
        assert_eq!(tx.count_deliveries("provisioning")?, 1);
        assert_eq!(tx.audit_head()?.map(|(seq, _)| seq), Some(1));
        Ok(seen)
    })
    .expect("a read with refused writes still returns its value");
    assert_eq!(seen, Some(kept.clone()));
    assert_eq!(snapshot(store), before, "a read changes nothing");

    // A refused write the closure propagates is its error; still nothing changed.
    let result = store.read(&mut |tx| {
        tx.put_meta("idempotency.a", "after")?;
        Ok(())
    });
    assert!(
        matches!(result, Err(Error::Store(StoreError::ReadOnly(_)))),
        "{result:?}"
    );
    assert_eq!(snapshot(store), before);

    // A read sees what another handle committed, and this handle writes again afterwards.
    let mut other = f.reopen();
    tx(&mut *other, |tx| Ok(tx.insert_device(&device(b"other"))?));
    let seen = read_tx(store, |tx| Ok(tx.device(&serial(b"other"))?)).expect("read");
    assert_eq!(seen, Some(device(b"other")));
    tx(store, |tx| Ok(tx.put_meta("idempotency.a", "after")?));
    let seen = read_tx(&mut *other, |tx| Ok(tx.meta("idempotency.a")?)).expect("read");
    assert_eq!(seen.as_deref(), Some("after"));
}

/// The set operations of group commit (`device_rows`, `update_device_rows`, `append_audits`,
/// `idempotency_rows`, `insert_idempotency_rows`) do what their row-by-row forms do, and a set
/// write that fails changes nothing and leaves the transaction usable.
pub(crate) fn set_reads_and_writes_match_row_by_row(f: &dyn StoreFactory) {
    let mut store = f.fresh();
    let store = &mut *store;
    let mut rng = Rng::new(41);
    let records: Vec<DeviceRecord> = tricky_serials()
        .iter()
        .map(|s| {
            let mut d = random_device(&mut rng, &["line-1", "line \u{fc}"]);
            d.serial = serial(s);
            d
        })
        .collect();
    tx(store, |tx| Ok(tx.insert_devices(&records)?));

    // Reads: what exists, of a list with absent and repeated serials.
    let mut wanted: Vec<DeviceSerial> = records
        .iter()
        .step_by(2)
        .map(|d| d.serial.clone())
        .collect();
    wanted.push(serial(b"absent"));
    wanted.push(records[0].serial.clone());
    let mut read = tx(store, |tx| Ok(tx.device_rows(&wanted)?));
    read.sort_by(|a, b| a.serial.cmp(&b.serial));
    read.dedup_by(|a, b| a.serial == b.serial);
    let mut expected: Vec<DeviceRecord> = records.iter().step_by(2).cloned().collect();
    expected.sort_by(|a, b| a.serial.cmp(&b.serial));
    assert_eq!(read, expected);
    assert!(tx(store, |tx| Ok(tx.device_rows(&[])?)).is_empty());

    // Writes: every field of some devices changes, the others stay.
    let changed: Vec<DeviceRecord> = records
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 1)
        .map(|(i, d)| {
            let mut n = random_device(&mut rng, &["line-2"]);
            n.serial = d.serial.clone();
            if i % 2 == 0 {
                n.wrapped_root = Some(WrappedKey(vec![i as u8; 40]));
            }
            n
        })
        .collect();
    tx(store, |tx| Ok(tx.update_device_rows(&changed)?));
    for d in &records {
        let now = tx(store, |tx| Ok(tx.device(&d.serial)?)).expect("still there");
        let want = changed.iter().find(|c| c.serial == d.serial).unwrap_or(d);
        assert_eq!(&now, want, "device {}", d.serial);
    }

    // A set with an absent device: NotFound naming it, nothing of the set written, and the
    // transaction goes on.
    let mut again = changed.clone();
    for d in &mut again {
        d.revision += 7;
    }
    again.push(device(b"not-there"));
    tx(store, |tx| {
        assert_not_found(tx.update_device_rows(&again), "not-there");
        tx.append_audit(draft("device.add", 1, &[]))?;
        Ok(())
    });
    for d in &changed {
        let now = tx(store, |tx| Ok(tx.device(&d.serial)?)).expect("still there");
        assert_eq!(&now, d, "a failed set write changed {}", d.serial);
    }

    // Audit: a set of events is the chain appending them one by one would make.
    let subjects: Vec<DeviceSerial> = records.iter().map(|d| d.serial.clone()).collect();
    let drafts: Vec<AuditDraft> = (0..12_usize)
        .map(|i| {
            let mut d = draft("device.refresh", 100 + i as i64, &subjects[i..i + i % 4]);
            d.actor = ["station-1", "", "operator \u{1f527}"][i % 3].into();
            d
        })
        .collect();
    tx(store, |tx| Ok(tx.append_audits(drafts.clone())?));
    let stored = audit_all(store, &AuditFilter::default(), 100);
    assert_eq!(stored.len(), 13);
    let mut head = Some((stored[0].seq, stored[0].hash));
    for (d, got) in drafts.iter().zip(&stored[1..]) {
        let want = AuditEvent::seal(head, d.clone());
        assert_eq!(got, &want, "event {}", want.seq);
        head = Some((want.seq, want.hash));
    }
    assert_eq!(tx(store, |tx| Ok(tx.audit_head()?)), head);
    assert_eq!(verify_chain(store), 13);
    let by_subject = AuditFilter {
        device: Some(subjects[2].clone()),
        ..AuditFilter::default()
    };
    let want: Vec<u64> = stored
        .iter()
        .filter(|e| e.draft.subjects.contains(&subjects[2]))
        .map(|e| e.seq)
        .collect();
    let got: Vec<u64> = audit_all(store, &by_subject, 100)
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(got, want);
    assert!(!want.is_empty());
    tx(store, |tx| Ok(tx.append_audits(Vec::new())?));
    assert_eq!(verify_chain(store), 13);

    // Idempotency: claims in a set, read back in a set; a set with a claimed key is Duplicate
    // naming it and claims nothing.
    let claim = |principal: &str, key: &str, n: u8| IdempotencyRecord {
        principal: principal.into(),
        key: key.into(),
        fingerprint: [n; 32],
        created_at: i64::from(n),
        response: n
            .is_multiple_of(2)
            .then(|| (200 + u16::from(n), WrappedKey(vec![n; usize::from(n)]))),
    };
    let claims: Vec<IdempotencyRecord> = (0..6_u8)
        .map(|n| {
            claim(
                ["station-1", "station-2"][usize::from(n % 2)],
                &format!("k-{n}"),
                n,
            )
        })
        .collect();
    tx(store, |tx| Ok(tx.insert_idempotency_rows(&claims)?));
    let keys: Vec<(String, String)> = claims
        .iter()
        .map(|c| (c.principal.clone(), c.key.clone()))
        .chain([("station-1".to_owned(), "k-1".to_owned())]) // k-1 is station-2's
        .collect();
    let mut found = tx(store, |tx| Ok(tx.idempotency_rows(&keys)?));
    found.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(found, claims);
    let with_taken = [claim("station-1", "fresh", 9), claims[2].clone()];
    tx(store, |tx| {
        assert_duplicate(tx.insert_idempotency_rows(&with_taken), "k-2");
        tx.append_audit(draft("device.add", 2, &[]))?;
        Ok(())
    });
    assert_eq!(
        tx(store, |tx| Ok(tx.idempotency("station-1", "fresh")?)),
        None,
        "a failed set claimed a key"
    );
    assert_eq!(verify_chain(store), 14);
}
