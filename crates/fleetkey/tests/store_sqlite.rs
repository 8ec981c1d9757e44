//! The SQLite store: the conformance suite, then what only SQLite has (files, pragmas, schema
//! versions, the write lock).
//!
//! The 1,000,000-device bulk insert is measured, not asserted:
//! `cargo test --release -p fleetkey --test store_sqlite -- --ignored --nocapture`.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fleetkey::StoreError;
use fleetkey::error::Error;
use fleetkey::lifecycle::State;
use fleetkey::model::{DeviceFilter, DeviceRecord, WrappedKey};
use fleetkey::store::Store;
use fleetkey::store::sqlite::{SCHEMA_VERSION, SqliteStore};

mod conformance {
    pub(crate) mod store;
}

use conformance::store::{
    StoreFactory, Tamper, TamperSql, audit_verify_names_each_tampered_table, device, serial, tx,
    verify_chain,
};

/// A fresh database file in its own temporary directory.
struct SqliteFactory {
    dir: tempfile::TempDir,
}

impl SqliteFactory {
    fn new() -> Self {
        SqliteFactory {
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("fleet.db")
    }
}

impl StoreFactory for SqliteFactory {
    fn fresh(&self) -> Box<dyn Store> {
        assert!(!self.path().exists(), "fresh() is called once per factory");
        Box::new(SqliteStore::open(self.path()).expect("open a new store"))
    }

    fn reopen(&self) -> Box<dyn Store> {
        Box::new(SqliteStore::open_existing(self.path()).expect("open the existing store"))
    }
}

store_conformance!(SqliteFactory::new());

// ---------------------------------------------------------------------------------------------

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The files of `store` that contain `pattern`.
fn files_with(store: &SqliteStore, pattern: &[u8]) -> Vec<PathBuf> {
    store
        .files()
        .into_iter()
        .filter(|file| match std::fs::read(file) {
            Ok(bytes) => contains(&bytes, pattern),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => panic!("{}: {e}", file.display()),
        })
        .collect()
}

/// A distinctive 40-byte pattern, as a wrapped root would be (AES-KWP of 32 bytes is 40).
fn pattern(tag: u8) -> Vec<u8> {
    let mut p = b"WRAPPED-ROOT-PATTERN-".to_vec();
    p.push(tag);
    p.extend((0..18).map(|i: u8| i.wrapping_mul(29) ^ tag ^ 0xa5));
    assert_eq!(p.len(), 40);
    p
}

fn with_root(name: &[u8], root: &[u8]) -> DeviceRecord {
    DeviceRecord {
        wrapped_root: Some(WrappedKey(root.to_vec())),
        ..device(name)
    }
}

#[test]
fn replaced_wrapped_roots_are_in_no_file_after_purge() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(dir.path().join("fleet.db")).unwrap();
    let (old_a, old_b, new_b) = (pattern(1), pattern(2), pattern(3));
    let (a, b) = (
        with_root(b"device-a", &old_a),
        with_root(b"device-b", &old_b),
    );
    tx(&mut store, |tx| {
        tx.insert_device(&a)?;
        tx.insert_device(&b)?;
        Ok(())
    });
    // The test means something: the committed roots are in the files.
    assert!(
        !files_with(&store, &old_a).is_empty(),
        "the committed root must be on disk before it is replaced"
    );
    assert!(!files_with(&store, &old_b).is_empty());

    tx(&mut store, |tx| {
        tx.update_device(&DeviceRecord {
            wrapped_root: None,
            state: State::Destroyed,
            ..a.clone()
        })?;
        tx.update_device(&DeviceRecord {
            wrapped_root: Some(WrappedKey(new_b.clone())),
            ..b.clone()
        })?;
        Ok(())
    });
    // Without purge the old bytes are still there (in the WAL, or the main file before a
    // checkpoint): this is what purge is for.
    assert!(
        !files_with(&store, &old_a).is_empty(),
        "before purge the old root is still in some file"
    );

    store.purge().unwrap();
    assert_eq!(
        files_with(&store, &old_a),
        Vec::<PathBuf>::new(),
        "replaced by None"
    );
    assert_eq!(
        files_with(&store, &old_b),
        Vec::<PathBuf>::new(),
        "replaced by a new value"
    );
    assert!(
        !files_with(&store, &new_b).is_empty(),
        "the live root is still stored (the scan reads the files)"
    );
    assert!(store.files().iter().any(|f| f.ends_with("fleet.db")));

    // Also after the store is closed and the WAL and shared memory files are gone.
    drop(store);
    let bytes = std::fs::read(dir.path().join("fleet.db")).unwrap();
    assert!(!contains(&bytes, &old_a) && !contains(&bytes, &old_b));
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(!contains(&bytes, &old_a) && !contains(&bytes, &old_b));
    }
}

/// Roots that B-tree rebalancing moved between pages. When SQLite rebuilds a fragmented page
/// (`rebuildPage`), the unused middle of the page keeps stale copies of the cells that moved
/// away, which `secure_delete` does not zero. Checkpointing the WAL is then not enough; purge
/// (which rebuilds the database) must remove every copy.
#[test]
fn wrapped_roots_moved_by_rebalancing_are_in_no_file_after_purge() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.db");
    let mut store = SqliteStore::open(&path).unwrap();
    let mut rng = conformance::store::Rng::new(77);
    for phase in 0..6 {
        let batch: Vec<DeviceRecord> = (0..2_000)
            .map(|i| {
                let mut root = format!("ROOT-{phase:02}-{i:04}-").into_bytes();
                root.resize(40, b'#');
                with_root(
                    format!("ECU-{:08}", rng.below(100_000_000)).as_bytes(),
                    &root,
                )
            })
            .collect();
        tx(&mut store, |tx| {
            for d in &batch {
                // A random serial may repeat: skip it.
                let _ = tx.insert_device(d);
            }
            Ok(())
        });
        // Fragment pages: grow and shrink half the rows.
        let devices = conformance::store::list_all(&mut store, &DeviceFilter::default(), 1_000);
        tx(&mut store, |tx| {
            for d in &devices {
                if rng.chance(50) {
                    tx.update_device(&DeviceRecord {
                        labels: vec!["x".repeat(rng.below(40))],
                        ..d.clone()
                    })?;
                }
            }
            Ok(())
        });
    }
    let devices = conformance::store::list_all(&mut store, &DeviceFilter::default(), 1_000);
    assert!(devices.len() > 11_000);
    tx(&mut store, |tx| {
        for d in &devices {
            tx.update_device(&DeviceRecord {
                wrapped_root: None,
                state: State::Destroyed,
                ..d.clone()
            })?;
        }
        Ok(())
    });
    let count_roots = |bytes: &[u8]| bytes.windows(5).filter(|w| *w == b"ROOT-").count();

    // What secure_delete and a WAL checkpoint alone leave behind (the reason purge vacuums).
    let (busy, _, _): (i64, i64, i64) = raw(&path)
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(busy, 0);
    let stale = count_roots(&std::fs::read(&path).unwrap());
    assert!(
        stale > 0,
        "SQLite no longer leaves stale cells after rebalancing: the VACUUM in purge may be unneeded"
    );

    store.purge().unwrap();
    for file in store.files() {
        assert_eq!(
            count_roots(&std::fs::read(&file).unwrap()),
            0,
            "{} after purge ({stale} before)",
            file.display()
        );
    }
    assert_eq!(
        tx(&mut store, |tx| Ok(
            tx.count_devices(&DeviceFilter::default())?
        )),
        devices.len() as u64
    );
}

#[test]
fn open_existing_refuses_a_missing_file_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-fleet").join("fleet.db");
    match SqliteStore::open_existing(&path) {
        Err(StoreError::NotFound(what)) => assert!(what.contains("fleet.db"), "{what}"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    let path = dir.path().join("fleet.db");
    assert!(matches!(
        SqliteStore::open_existing(&path),
        Err(StoreError::NotFound(_))
    ));
    assert!(!path.exists(), "nothing was created");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    drop(SqliteStore::open(&path).unwrap());
    SqliteStore::open_existing(&path).expect("exists now");
}

#[test]
fn a_file_that_is_not_a_store_is_refused_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.db");
    std::fs::write(
        &path,
        b"this is not an SQLite database, it is a note to self\n".repeat(100),
    )
    .unwrap();
    let before = std::fs::read(&path).unwrap();
    assert!(SqliteStore::open_existing(&path).is_err());
    assert!(SqliteStore::open(&path).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), before);

    // An SQLite database of something else.
    let other = dir.path().join("other.db");
    let conn = rusqlite::Connection::open(&other).unwrap();
    conn.execute_batch("CREATE TABLE notes (text TEXT)")
        .unwrap();
    drop(conn);
    match SqliteStore::open_existing(&other) {
        Err(StoreError::Corrupt(what)) => assert!(what.contains("not a fleetkey store"), "{what}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

fn raw(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).unwrap()
}

#[test]
fn schema_version_newer_than_known_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.db");
    drop(SqliteStore::open(&path).unwrap());
    let version: i64 = raw(&path)
        .query_row(
            "SELECT value FROM meta WHERE key = 'store.schema_version'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);

    raw(&path)
        .execute(
            "UPDATE meta SET value = ?1 WHERE key = 'store.schema_version'",
            [SCHEMA_VERSION + 1],
        )
        .unwrap();
    for result in [SqliteStore::open_existing(&path), SqliteStore::open(&path)] {
        match result {
            Err(StoreError::Schema { found, expected }) => {
                assert_eq!((found, expected), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
            }
            other => panic!("expected Schema, got {other:?}"),
        }
    }
    let err = Error::from(SqliteStore::open(&path).unwrap_err());
    assert!(
        err.to_string()
            .contains(&format!("schema version {}", SCHEMA_VERSION + 1)),
        "{err}"
    );

    raw(&path)
        .execute(
            "UPDATE meta SET value = 'one' WHERE key = 'store.schema_version'",
            [],
        )
        .unwrap();
    assert!(matches!(
        SqliteStore::open(&path),
        Err(StoreError::Corrupt(_))
    ));
}

#[test]
fn pragmas_and_schema_are_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.db");
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.path(), path);
    let conn = raw(&path);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let page_size: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    assert_eq!(page_size, 8192);
    let mut tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    tables.sort();
    assert_eq!(
        tables,
        [
            "api_tokens",
            "audit",
            "audit_subjects",
            "deliveries",
            "devices",
            "fleet",
            "generations",
            "idempotency",
            "meta",
            "sqlite_sequence"
        ]
    );
    drop(store);
}

#[test]
fn a_writer_waits_for_the_lock_then_gets_busy() {
    let factory = SqliteFactory::new();
    let mut holder = factory.fresh();
    let mut waiter = SqliteStore::open_existing(factory.path()).unwrap();
    waiter.set_busy_timeout(Duration::from_millis(300)).unwrap();

    let (locked_tx, locked_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        // Owned here, so that a failing assertion below drops it and frees the holder.
        let release_tx = release_tx;
        scope.spawn(move || {
            tx(&mut *holder, |tx| {
                tx.insert_device(&device(b"held"))?;
                locked_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                Ok(())
            });
        });
        locked_rx.recv().unwrap();

        let started = Instant::now();
        let mut ran = false;
        let result = waiter.transaction(&mut |tx| {
            ran = true;
            tx.put_meta("k", "v")?;
            Ok(())
        });
        let waited = started.elapsed();
        assert!(!ran, "the closure does not run without the lock");
        match &result {
            Err(Error::Store(StoreError::Busy(why))) => {
                assert!(why.contains("write lock"), "{why}")
            }
            other => panic!("expected Busy, got {other:?}"),
        }
        assert!(
            waited >= Duration::from_millis(250),
            "waited only {waited:?}"
        );
        assert!(waited < Duration::from_secs(4), "waited {waited:?}");

        release_tx.send(()).unwrap();
    });
    // The lock is free again.
    tx(&mut waiter, |tx| Ok(tx.put_meta("k", "v")?));
    assert!(tx(&mut waiter, |tx| Ok(tx.device(&serial(b"held"))?)).is_some());
}

#[test]
fn a_panicking_closure_rolls_back_and_the_store_stays_usable() {
    let factory = SqliteFactory::new();
    let mut store = factory.fresh();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = store.transaction(&mut |tx| {
            tx.insert_device(&device(b"half-done"))?;
            panic!("closure panics mid-way");
        });
    }));
    assert!(outcome.is_err());
    assert_eq!(
        tx(&mut *store, |tx| Ok(tx.device(&serial(b"half-done"))?)),
        None
    );
    tx(&mut *store, |tx| Ok(tx.insert_device(&device(b"next"))?));
    let mut other = factory.reopen();
    assert!(
        tx(&mut *other, |tx| Ok(tx.device(&serial(b"next"))?)).is_some(),
        "the lock was released"
    );
}

#[test]
fn audit_tampering_in_the_file_is_detected() {
    let factory = SqliteFactory::new();
    let mut store = factory.fresh();
    tx(&mut *store, |tx| {
        for i in 0..3 {
            let draft = fleetkey::audit::AuditDraft {
                at: i,
                actor: "tester".into(),
                action: "device.add".into(),
                generation: None,
                subjects: vec![serial(format!("d{i}").as_bytes())],
                details: serde_json::json!({ "i": i }),
            };
            tx.append_audit(draft)?;
        }
        Ok(())
    });
    assert_eq!(verify_chain(&mut *store), 3);
    let path = factory.path();
    raw(&path)
        .execute("UPDATE audit SET actor = 'mallory' WHERE seq = 2", [])
        .unwrap();
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| verify_chain(&mut *store)));
    assert!(result.is_err(), "a changed event fails verification");
    raw(&path)
        .execute("UPDATE audit SET actor = 'tester' WHERE seq = 2", [])
        .unwrap();
    raw(&path)
        .execute("UPDATE audit SET subjects = x'026439' WHERE seq = 1", [])
        .unwrap();
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| verify_chain(&mut *store)));
    assert!(result.is_err(), "a changed subject fails verification");
}

/// The head of the SQLite store: two `meta` rows.
fn sqlite_head_tampering(hash: &str) -> Vec<Tamper> {
    let table = "meta (store.audit_head_seq, store.audit_head_hash)";
    let set_hash =
        |h: &str| format!("UPDATE meta SET value = x'{h}' WHERE key = 'store.audit_head_hash'");
    vec![
        Tamper {
            change: "UPDATE meta SET value = 3 WHERE key = 'store.audit_head_seq'".into(),
            says: format!(
                "{table}: the recorded head (event 3) does not match the chain's last event 5"
            ),
            undo: "UPDATE meta SET value = 5 WHERE key = 'store.audit_head_seq'".into(),
        },
        Tamper {
            change: set_hash(&"00".repeat(32)),
            says: format!("{table}: the recorded head (event 5) does not match"),
            undo: set_hash(hash),
        },
        Tamper {
            change: "DELETE FROM meta WHERE key LIKE 'store.audit_head_%'".into(),
            says: format!("{table}: no head is recorded, but the chain has 5 events"),
            undo: format!(
                "INSERT INTO meta (key, value) VALUES ('store.audit_head_seq', 5), \
                 ('store.audit_head_hash', x'{hash}')"
            ),
        },
    ]
}

#[test]
fn audit_verify_names_each_table_changed_in_the_file() {
    let factory = SqliteFactory::new();
    let mut store = factory.fresh();
    let path = factory.path();
    let mut raw_sql = |sql: &str| raw(&path).execute_batch(sql).unwrap();
    audit_verify_names_each_tampered_table(
        &mut *store,
        &mut raw_sql,
        &TamperSql {
            blob: "BLOB",
            without_foreign_keys: "PRAGMA foreign_keys = OFF;",
            head: sqlite_head_tampering,
        },
    );
}

/// The reference for the bulk figure: plain rusqlite inserting the same rows into the same schema
/// with the same pragmas, one prepared single-row `INSERT` per device, one transaction per batch.
fn reference_insert(path: &Path, rows: &[DeviceRecord], batch: usize) -> Duration {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        "PRAGMA page_size = 8192; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
         PRAGMA secure_delete = ON;",
    )
    .unwrap();
    conn.execute_batch(include_str!("../src/store/sqlite/0001_initial.sql"))
        .unwrap();
    let started = Instant::now();
    for chunk in rows.chunks(batch) {
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        let mut insert = conn
            .prepare_cached(
                "INSERT INTO devices (serial, she_uid, labels, generation, revision, state, \
                 changed_at, changed_actor, changed_reason, wrapped_root, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )
            .unwrap();
        for d in chunk {
            let labels = serde_json::to_string(&d.labels).unwrap();
            insert
                .execute(rusqlite::params![
                    d.serial.as_bytes(),
                    d.she_uid.as_ref().map(|u| &u[..]),
                    labels,
                    d.generation,
                    d.revision,
                    d.state.name(),
                    d.changed.at,
                    d.changed.actor,
                    d.changed.reason,
                    d.wrapped_root.as_ref().map(|w| &w.0[..]),
                    d.created_at,
                ])
                .unwrap();
        }
        drop(insert);
        conn.execute_batch("COMMIT").unwrap();
    }
    started.elapsed()
}

/// Measures 1,000,000 `insert_devices` in batches of 10,000 beside the plain rusqlite reference
/// (release build: see the top of this file).
#[test]
#[ignore = "a measurement: run in release with --ignored --nocapture"]
fn bulk_insert_one_million_devices() {
    const TOTAL: usize = 1_000_000;
    const BATCH: usize = 10_000;
    let rows: Vec<DeviceRecord> = (0..TOTAL)
        .map(|i| {
            let mut d = device(format!("ECU-{i:08}").as_bytes());
            d.labels = vec!["line=3".into()];
            d
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    for round in 1..=2 {
        let reference = reference_insert(
            &dir.path().join(format!("reference-{round}.db")),
            &rows,
            BATCH,
        );
        let mut store = SqliteStore::open(dir.path().join(format!("fleet-{round}.db"))).unwrap();
        let started = Instant::now();
        for chunk in rows.chunks(BATCH) {
            tx(&mut store, |tx| Ok(tx.insert_devices(chunk)?));
        }
        let inserted = started.elapsed();
        println!(
            "round {round}: sqlite store: {TOTAL} devices inserted in {:.3} s (batches of {BATCH}); \
             plain rusqlite reference {:.3} s; ratio {:.2}",
            inserted.as_secs_f64(),
            reference.as_secs_f64(),
            inserted.as_secs_f64() / reference.as_secs_f64()
        );
        if round == 2 {
            let t = Instant::now();
            let count = tx(&mut store, |tx| {
                Ok(tx.count_devices(&DeviceFilter::default())?)
            });
            let counted = t.elapsed();
            let t = Instant::now();
            let line3 = DeviceFilter {
                labels: vec!["line=3".into()],
                ..Default::default()
            };
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
            let size = std::fs::metadata(store.path()).unwrap().len();
            let t = Instant::now();
            store.purge().unwrap();
            let purged = t.elapsed();
            assert_eq!((count, labelled), (TOTAL as u64, TOTAL as u64));
            println!(
                "count {:.3} s; count by label {:.3} s; listed in {pages} pages in {:.3} s; \
                 database {} MiB; purge (vacuum + checkpoint) {:.3} s",
                counted.as_secs_f64(),
                label_count.as_secs_f64(),
                listed.as_secs_f64(),
                size / (1024 * 1024),
                purged.as_secs_f64(),
            );
        }
    }
}

#[test]
fn a_reader_does_not_wait_for_a_writer_holding_the_lock() {
    let factory = SqliteFactory::new();
    let mut store = factory.fresh();
    tx(&mut *store, |tx| {
        Ok(tx.insert_device(&device(b"committed"))?)
    });
    let mut reader = SqliteStore::open_existing(factory.path()).unwrap();
    reader.set_busy_timeout(Duration::from_secs(5)).unwrap();

    // Another connection takes the write lock and holds it with an uncommitted change.
    let writer = raw(&factory.path());
    writer
        .execute_batch("BEGIN IMMEDIATE; INSERT INTO meta (key, value) VALUES ('app.held', 'x')")
        .unwrap();

    let started = Instant::now();
    let (committed, held) = fleetkey::store::read_tx(&mut reader, |tx| {
        Ok((tx.device(&serial(b"committed"))?, tx.meta("held")?))
    })
    .expect("a read while another connection holds the write lock");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "the read waited {took:?} (busy timeout 5 s)"
    );
    assert!(committed.is_some(), "the read sees committed data");
    assert_eq!(held, None, "and not the writer's uncommitted change");

    // A writer on the reader's connection still waits for the lock: the read took none of its own.
    reader.set_busy_timeout(Duration::from_millis(100)).unwrap();
    let result = reader.transaction(&mut |tx| Ok(tx.put_meta("k", "v")?));
    assert!(
        matches!(result, Err(Error::Store(StoreError::Busy(_)))),
        "{result:?}"
    );

    writer.execute_batch("COMMIT").unwrap();
    // query_only is off again after the read: this connection writes.
    tx(&mut reader, |tx| Ok(tx.put_meta("k", "v")?));
    let held = fleetkey::store::read_tx(&mut reader, |tx| Ok(tx.meta("held")?)).unwrap();
    assert_eq!(held.as_deref(), Some("x"), "a new read sees the new commit");
}
