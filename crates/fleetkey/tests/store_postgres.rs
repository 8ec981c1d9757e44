//! The PostgreSQL store: the conformance suite, then what only a shared server has (schema
//! versions, conflicts between instances, retries).
//!
//! Needs `FLEETKEY_TEST_DATABASE_URL` (CI: `postgres://postgres@127.0.0.1:5432/test`). Unset,
//! every test prints that it was skipped and passes; set, a server that cannot be reached fails
//! every test. Each test works in a schema of its own (`fk_test_...`), dropped at its end.
//!
//! The 1,000,000-device bulk insert is measured, not asserted:
//! `cargo test --release -p fleetkey --test store_postgres -- --ignored --nocapture`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use fleetkey::StoreError;
use fleetkey::audit::AuditFilter;
use fleetkey::error::Error;
use fleetkey::model::{Change, DeviceFilter, DeviceRecord, DeviceSerial};
use fleetkey::store::Store;
use fleetkey::store::postgres::{PostgresOptions, PostgresStore, SCHEMA_VERSION};
use serde_json::json;

mod conformance {
    pub(crate) mod store;
}

use conformance::store::{
    Rng, StoreFactory, Tamper, TamperSql, audit_all, audit_verify_names_each_tampered_table,
    device, serial, tx, verify_chain,
};

const URL_VAR: &str = "FLEETKEY_TEST_DATABASE_URL";

/// A schema of its own on the test server, dropped when the factory is.
struct PgFactory {
    url: String,
    schema: String,
}

impl PgFactory {
    /// `None` (after saying so) when the variable is unset; panics when the server is set but
    /// cannot be reached.
    fn from_env(test: &str) -> Option<Self> {
        let Ok(url) = std::env::var(URL_VAR) else {
            eprintln!("{test}: skipped: {URL_VAR} is not set (no PostgreSQL to test against)");
            return None;
        };
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let schema = format!(
            "fk_test_{}_{}_{nanos:x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        if let Err(e) = postgres::Client::connect(&url, postgres::NoTls) {
            panic!(
                "{URL_VAR} is set but the PostgreSQL server cannot be reached: {e}\n\
                 (start it, e.g. `pg_ctlcluster 15 main start`, or unset {URL_VAR} to skip)"
            );
        }
        Some(PgFactory { url, schema })
    }

    fn options(&self) -> PostgresOptions {
        PostgresOptions {
            schema: self.schema.clone(),
            ..PostgresOptions::default()
        }
    }

    fn open(&self) -> PostgresStore {
        PostgresStore::connect_with(&self.url, &self.options()).expect("open the store")
    }

    fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).expect("connect")
    }
}

impl Drop for PgFactory {
    fn drop(&mut self) {
        if let Ok(mut client) = postgres::Client::connect(&self.url, postgres::NoTls) {
            let _ = client.batch_execute(&format!(
                "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
                self.schema
            ));
        }
    }
}

impl StoreFactory for PgFactory {
    fn fresh(&self) -> Box<dyn Store> {
        Box::new(self.open())
    }

    fn reopen(&self) -> Box<dyn Store> {
        Box::new(self.open())
    }
}

/// The factory of one test, or a skipped test.
macro_rules! factory {
    () => {
        match PgFactory::from_env(module_path!()) {
            Some(f) => f,
            None => return,
        }
    };
}

store_conformance!(factory!());

// ---------------------------------------------------------------------------------------------

#[test]
fn an_unreachable_server_is_a_clear_error() {
    // Port 1 on loopback: nothing listens there.
    match PostgresStore::connect("postgres://fleetkey@127.0.0.1:1/none?connect_timeout=5") {
        Err(StoreError::Backend { operation, detail }) => {
            assert!(operation.contains("connect"), "{operation}: {detail}")
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
    assert!(matches!(
        PostgresStore::connect_with(
            "postgres://fleetkey@127.0.0.1:1/none",
            &PostgresOptions {
                schema: "Bad; DROP".into(),
                ..PostgresOptions::default()
            }
        ),
        Err(StoreError::Backend { .. })
    ));
}

#[test]
fn a_newer_schema_version_is_refused() {
    let f = factory!();
    drop(f.open());
    let mut client = f.client();
    client
        .execute(
            &format!(
                "UPDATE \"{}\".meta SET value = '99' WHERE key = 'store.schema_version'",
                f.schema
            ),
            &[],
        )
        .expect("set the version");
    match PostgresStore::connect_with(&f.url, &f.options()) {
        Err(StoreError::Schema { found, expected }) => {
            assert_eq!((found, expected), (99, SCHEMA_VERSION))
        }
        other => panic!("expected a schema version error, got {other:?}"),
    }
}

#[test]
fn a_schema_with_foreign_tables_is_refused() {
    let f = factory!();
    let mut client = f.client();
    client
        .batch_execute(&format!(
            "CREATE SCHEMA \"{0}\"; CREATE TABLE \"{0}\".other (x int)",
            f.schema
        ))
        .expect("create a foreign table");
    assert!(matches!(
        PostgresStore::connect_with(&f.url, &f.options()),
        Err(StoreError::Corrupt(_))
    ));
}

#[test]
fn instances_starting_together_migrate_once() {
    let f = factory!();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| drop(f.open()));
        }
    });
    let mut store = f.open();
    assert_eq!(tx(&mut store, |tx| Ok(tx.audit_head()?)), None);
}

#[test]
fn a_serialization_conflict_is_retried() {
    let f = factory!();
    let mut store = f.open();
    let mut other = f.open();
    let target = device(b"conflict");
    tx(&mut store, |tx| Ok(tx.insert_device(&target)?));

    let mut runs = 0;
    let mut seen_busy = false;
    tx(&mut store, |t| {
        runs += 1;
        let mut d = t.device(&target.serial)?.expect("device");
        if runs == 1 {
            // Another instance bumps the revision after this transaction read it.
            tx(&mut other, |tx| {
                let mut d = tx.device(&target.serial)?.expect("device");
                d.revision += 1;
                Ok(tx.update_device(&d)?)
            });
        }
        d.revision += 1;
        match t.update_device(&d) {
            Err(StoreError::Busy(what)) => {
                seen_busy = true;
                Err(StoreError::Busy(what).into())
            }
            other => Ok(other?),
        }
    });
    assert_eq!(runs, 2, "the closure ran again after the conflict");
    assert!(seen_busy, "the first run saw the conflict");
    let d = tx(&mut store, |tx| Ok(tx.device(&target.serial)?)).expect("device");
    assert_eq!(d.revision, 2, "both bumps, neither lost");

    // A conflict the closure swallows is still retried, never committed.
    let mut runs = 0;
    tx(&mut store, |t| {
        runs += 1;
        let mut d = t.device(&target.serial)?.expect("device");
        if runs == 1 {
            tx(&mut other, |tx| {
                let mut d = tx.device(&target.serial)?.expect("device");
                d.revision += 1;
                Ok(tx.update_device(&d)?)
            });
        }
        d.revision += 1;
        let _ = t.update_device(&d);
        Ok(())
    });
    assert_eq!(runs, 2);
    let d = tx(&mut store, |tx| Ok(tx.device(&target.serial)?)).expect("device");
    assert_eq!(d.revision, 4);
}

#[test]
fn a_serial_inserted_concurrently_is_a_duplicate_after_the_retry() {
    let f = factory!();
    let mut store = f.open();
    let mut other = f.open();
    let mut runs = 0;
    let batch = [device(b"y"), device(b"x"), device(b"z")];
    let result = tx(&mut store, |t| {
        runs += 1;
        // The snapshot is taken; then another instance inserts `x` and commits.
        t.count_devices(&DeviceFilter::default())?;
        if runs == 1 {
            tx(&mut other, |tx| Ok(tx.insert_device(&device(b"x"))?));
        }
        Ok(t.insert_devices(&batch))
    });
    assert_eq!(
        runs, 2,
        "run again, as the other insert was not in the snapshot"
    );
    match result {
        Err(StoreError::Duplicate(what)) => assert_eq!(what, "device x"),
        other => panic!("expected Duplicate(device x), got {other:?}"),
    }
    assert_eq!(
        tx(&mut store, |tx| Ok(
            tx.count_devices(&DeviceFilter::default())?
        )),
        1
    );
}

#[test]
fn conflicts_beyond_the_attempts_are_busy() {
    let f = factory!();
    let mut store = PostgresStore::connect_with(
        &f.url,
        &PostgresOptions {
            max_attempts: 3,
            ..f.options()
        },
    )
    .expect("open");
    let mut other = f.open();
    let target = device(b"always-conflicting");
    tx(&mut store, |tx| Ok(tx.insert_device(&target)?));
    let mut runs = 0;
    let result = store.transaction(&mut |t| {
        runs += 1;
        let mut d = t.device(&target.serial)?.expect("device");
        tx(&mut other, |tx| {
            let mut d = tx.device(&target.serial)?.expect("device");
            d.revision += 1;
            Ok(tx.update_device(&d)?)
        });
        d.revision += 1;
        Ok(t.update_device(&d)?)
    });
    assert_eq!(runs, 3);
    assert!(
        matches!(result, Err(Error::Store(StoreError::Busy(_)))),
        "{result:?}"
    );
}

#[test]
fn a_failed_statement_is_never_committed() {
    let f = factory!();
    let mut store = f.open();
    let mut d = device(b"nul");
    d.changed.reason = "a\0b".into();
    // Refused before it reaches the server: the transaction goes on.
    tx(&mut store, |tx| {
        assert!(tx.insert_device(&d).is_err());
        Ok(tx.insert_device(&device(b"ok"))?)
    });
    assert_eq!(
        tx(&mut store, |tx| Ok(
            tx.count_devices(&DeviceFilter::default())?
        )),
        1
    );

    // The server refuses a key too large for its index, which aborts the PostgreSQL
    // transaction: a closure that swallows the error and returns `Ok` commits nothing.
    let mut rng = Rng::new(7);
    let huge: String = (0..20_000)
        .map(|_| char::from(b'!' + rng.below(90) as u8))
        .collect();
    let result = store.transaction(&mut |tx| {
        assert!(tx.put_meta(&huge, "v").is_err());
        let _ = tx.insert_device(&device(b"lost"));
        Ok(())
    });
    match result {
        Err(Error::Store(StoreError::Backend { operation, detail })) => {
            assert_eq!(operation, "commit", "{detail}")
        }
        other => panic!("expected a refused commit, got {other:?}"),
    }
    assert_eq!(
        tx(&mut store, |tx| Ok(
            tx.count_devices(&DeviceFilter::default())?
        )),
        1
    );
}

/// Two instances bump the revisions of a few devices at random, 200 times each: every device's
/// audit trail shows its revisions strictly increasing without gaps, and nothing is lost.
#[test]
fn concurrent_bumps_of_many_devices_serialize() {
    const BUMPS: u32 = 200;
    const DEVICES: usize = 8;
    let f = factory!();
    let serials: Vec<DeviceSerial> = (0..DEVICES)
        .map(|i| serial(format!("dev-{i}").as_bytes()))
        .collect();
    let mut store = f.open();
    let records: Vec<DeviceRecord> = serials.iter().map(|s| device(s.as_bytes())).collect();
    tx(&mut store, |tx| Ok(tx.insert_devices(&records)?));
    drop(store);

    std::thread::scope(|scope| {
        for worker in 0..2_u64 {
            let (f, serials) = (&f, &serials);
            scope.spawn(move || {
                let mut store = f.open();
                let mut rng = Rng::new(0x5eed_0100 + worker);
                for i in 0..BUMPS {
                    // One or two devices per transaction.
                    let picked: Vec<&DeviceSerial> =
                        (0..1 + rng.below(2)).map(|_| rng.pick(serials)).collect();
                    tx(&mut store, |tx| {
                        for target in &picked {
                            let mut d = tx.device(target)?.expect("device");
                            d.revision += 1;
                            d.changed = Change {
                                at: i64::from(i),
                                actor: format!("worker-{worker}"),
                                reason: String::new(),
                            };
                            tx.update_device(&d)?;
                            tx.append_audit(fleetkey::audit::AuditDraft {
                                at: i64::from(i),
                                actor: format!("worker-{worker}"),
                                action: "device.refresh".into(),
                                generation: Some(1),
                                subjects: vec![(*target).clone()],
                                details: json!({ "revision": d.revision }),
                            })?;
                        }
                        Ok(())
                    });
                }
            });
        }
    });

    let mut store = f.open();
    let events = audit_all(&mut store, &AuditFilter::default(), 500);
    let total = verify_chain(&mut store);
    assert_eq!(total, events.len() as u64);
    let mut sum = 0;
    for s in &serials {
        let d = tx(&mut store, |tx| Ok(tx.device(s)?)).expect("device");
        let revisions: Vec<u64> = events
            .iter()
            .filter(|e| e.draft.subjects == [s.clone()])
            .map(|e| e.draft.details["revision"].as_u64().expect("revision"))
            .collect();
        assert_eq!(
            revisions,
            (1..=u64::from(d.revision)).collect::<Vec<_>>(),
            "device {s}: revisions in audit order"
        );
        sum += u64::from(d.revision);
    }
    assert_eq!(sum, total, "every bump has its event, none was lost");
}

/// The head of the PostgreSQL store: the one row of `audit_head`.
fn postgres_head_tampering(hash: &str) -> Vec<Tamper> {
    let set_hash = |h: &str| format!("UPDATE audit_head SET hash = decode('{h}', 'hex')");
    vec![
        Tamper {
            change: "UPDATE audit_head SET seq = 3".into(),
            says: "audit_head: the recorded head (event 3) does not match the chain's last event 5"
                .into(),
            undo: "UPDATE audit_head SET seq = 5".into(),
        },
        Tamper {
            change: set_hash(&"00".repeat(32)),
            says: "audit_head: the recorded head (event 5) does not match".into(),
            undo: set_hash(hash),
        },
        Tamper {
            change: "UPDATE audit_head SET seq = 0, hash = NULL".into(),
            says: "audit_head: no head is recorded, but the chain has 5 events".into(),
            undo: format!("UPDATE audit_head SET seq = 5, hash = decode('{hash}', 'hex')"),
        },
    ]
}

#[test]
fn audit_verify_names_each_table_changed_on_the_server() {
    let f = factory!();
    let mut store = f.open();
    let mut raw_sql = |sql: &str| {
        f.client()
            .batch_execute(&format!("SET search_path TO \"{}\"; {sql}", f.schema))
            .unwrap()
    };
    audit_verify_names_each_tampered_table(
        &mut store,
        &mut raw_sql,
        &TamperSql {
            blob: "BYTEA",
            // The foreign key from audit_subjects to audit is a trigger; a replica skips it.
            without_foreign_keys: "SET session_replication_role = replica;",
            head: postgres_head_tampering,
        },
    );
}

#[test]
#[ignore = "a measurement: run in release with --ignored --nocapture"]
fn bulk_insert_one_million_devices() {
    const TOTAL: usize = 1_000_000;
    const BATCH: usize = 10_000;
    let f = factory!();
    let rows: Vec<DeviceRecord> = (0..TOTAL)
        .map(|i| {
            let mut d = device(format!("ECU-{i:08}").as_bytes());
            d.labels = vec!["line=3".into()];
            d
        })
        .collect();
    let mut store = f.open();
    let started = Instant::now();
    for chunk in rows.chunks(BATCH) {
        tx(&mut store, |tx| Ok(tx.insert_devices(chunk)?));
    }
    let inserted = started.elapsed();
    let t = Instant::now();
    let count = tx(&mut store, |tx| {
        Ok(tx.count_devices(&DeviceFilter::default())?)
    });
    let counted = t.elapsed();
    let line3 = DeviceFilter {
        labels: vec!["line=3".into()],
        ..Default::default()
    };
    let t = Instant::now();
    let labelled = tx(&mut store, |tx| Ok(tx.count_devices(&line3)?));
    let label_count = t.elapsed();
    let t = Instant::now();
    let mut pages = 0;
    let mut after = None;
    loop {
        let page = tx(&mut store, |tx| {
            Ok(tx.devices(&DeviceFilter::default(), after.as_ref(), BATCH)?)
        });
        pages += 1;
        match page.last() {
            Some(last) => after = Some(last.serial.clone()),
            None => break,
        }
    }
    let listed = t.elapsed();
    let t = Instant::now();
    store.purge().expect("purge");
    let purged = t.elapsed();
    assert_eq!((count, labelled), (TOTAL as u64, TOTAL as u64));
    println!(
        "postgres store: {TOTAL} devices inserted in {:.3} s (batches of {BATCH}, COPY binary); \
         count {:.3} s; count by label {:.3} s; listed in {pages} pages in {:.3} s; purge (vacuum) {:.3} s",
        inserted.as_secs_f64(),
        counted.as_secs_f64(),
        label_count.as_secs_f64(),
        listed.as_secs_f64(),
        purged.as_secs_f64(),
    );
}

#[test]
fn a_read_does_not_wait_for_a_writer_holding_the_audit_head() {
    let f = factory!();
    let mut store = f.open();
    tx(&mut store, |tx| {
        tx.insert_device(&device(b"committed"))?;
        Ok(())
    });
    let mut reader = f.open();

    // Another session holds the row lock every audit append takes, with an uncommitted change.
    let mut writer = f.client();
    writer
        .batch_execute(&format!(
            "SET search_path TO \"{}\"; BEGIN ISOLATION LEVEL SERIALIZABLE; \
             UPDATE audit_head SET seq = seq WHERE id = 1; \
             INSERT INTO meta (key, value) VALUES ('app.held', 'x')",
            f.schema
        ))
        .unwrap();

    let started = Instant::now();
    let (committed, held, head) = fleetkey::store::read_tx(&mut reader, |tx| {
        Ok((
            tx.device(&serial(b"committed"))?,
            tx.meta("held")?,
            tx.audit_head()?,
        ))
    })
    .expect("a read while another session holds the audit head");
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(2),
        "the read waited {took:?}"
    );
    assert!(committed.is_some(), "the read sees committed data");
    assert_eq!(held, None, "and not the writer's uncommitted change");
    assert_eq!(head, None);

    // A write inside the read is refused, and the session is fine afterwards.
    let result = reader.read(&mut |tx| Ok(tx.put_meta("k", "v")?));
    assert!(
        matches!(result, Err(Error::Store(StoreError::ReadOnly(_)))),
        "{result:?}"
    );

    writer.batch_execute("COMMIT").unwrap();
    let held = fleetkey::store::read_tx(&mut reader, |tx| Ok(tx.meta("held")?)).unwrap();
    assert_eq!(held.as_deref(), Some("x"), "a new read sees the new commit");
    tx(&mut reader, |tx| Ok(tx.put_meta("k", "v")?));
}

#[test]
fn a_read_reconnects_after_the_server_dropped_its_connection() {
    let f = factory!();
    let mut store = f.open();
    tx(
        &mut store,
        |tx| Ok(tx.insert_device(&device(b"committed"))?),
    );

    // The reader's session is named, so that it alone can be terminated (PostgreSQL >= 14 waits
    // for the backend to end).
    let name = format!("{}_reader", f.schema);
    let sep = if f.url.contains('?') { '&' } else { '?' };
    let url = format!("{}{sep}application_name={name}", f.url);
    let mut reader = PostgresStore::connect_with(&url, &f.options()).expect("open the reader");
    let seen = fleetkey::store::read_tx(&mut reader, |tx| Ok(tx.device(&serial(b"committed"))?));
    assert!(seen.expect("read").is_some());

    let killed: i64 = f
        .client()
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity \
             WHERE application_name = $1) AS t",
            &[&name],
        )
        .unwrap()
        .get(0);
    assert_eq!(killed, 1, "the reader's session was terminated");

    let mut runs = 0;
    let seen = fleetkey::store::read_tx(&mut reader, |tx| {
        runs += 1;
        Ok(tx.device(&serial(b"committed"))?)
    })
    .expect("the read reconnects");
    assert!(seen.is_some());
    // Terminated and waited for: the new BEGIN fails, the store reconnects, the closure runs once.
    assert_eq!(runs, 1, "the closure ran {runs} times");
}
