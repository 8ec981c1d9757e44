//! kill -9 under load: clients provision and refresh devices through `fleetkey serve` with
//! Idempotency-Keys, each retrying a request until it is acknowledged, while the service is
//! killed (SIGKILL) at random moments several times and restarted. Group commit answers a request
//! only after its transaction is durable, and stores its response in the same transaction, so
//! afterwards:
//! - every acknowledged change is in the store with the revision the client saw: each device's
//!   provisioning was answered at revision 0 and its two refreshes at revisions 1 and 2, and it
//!   stands at revision 2 (a lost acknowledged refresh would make the next answer 1 again);
//! - no revision was bumped twice for one key (a refresh applied twice would answer 2 for the
//!   first key or 3 for the second; the store would hold 3 or more);
//! - a re-sent acknowledged request gets the first answer again;
//! - the audit chain has exactly one event per change and `audit verify` passes.
//!
//! On SQLite with one instance; on PostgreSQL with two instances on one schema, killed and
//! restarted independently (needs `FLEETKEY_TEST_DATABASE_URL`: unset, that test says it was
//! skipped).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[path = "support/cli.rs"]
mod cli;
#[path = "support/postgres.rs"]
mod pg;

use cli::{fleetkey, ok};

const DEVICES: usize = 600;
const CLIENTS: usize = 12;
const KILLS: usize = 4;

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

/// One `fleetkey serve` instance, restarted on the same port after each kill.
struct Instance {
    port: u16,
    child: Option<Child>,
}

impl Instance {
    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn start(&mut self, home: &Path) {
        let child = fleetkey(home)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{}", self.port),
                "--rate-limit",
                "0",
                "--no-lifecycle",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let base = self.base();
        if let Some(child) = self.child.as_mut() {
            cli::wait_healthy(&base, child);
        }
    }

    /// SIGKILL: no shutdown, no flush, nothing the process could finish.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a client was answered: per device, per request key, the revision (and the body).
type Answers = BTreeMap<String, BTreeMap<String, (u64, String)>>;

/// Sends one request until it is answered 200 (a connection refused or reset while its instance
/// is down is retried, with the same key, on the next instance in turn).
fn until_answered(
    bases: &[String],
    token: &str,
    path: &str,
    key: &str,
    body: &str,
    turn: &mut usize,
    retried: &AtomicUsize,
) -> (u64, String) {
    let agent = agent();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let base = &bases[*turn % bases.len()];
        *turn += 1;
        let sent = agent
            .post(format!("{base}{path}"))
            .header("authorization", format!("Bearer {token}"))
            .header("idempotency-key", key)
            .content_type("application/json")
            .send(body);
        // A connection refused or reset (the instance is down): retried.
        if let Ok(mut r) = sent {
            let status = r.status().as_u16();
            let text = r.body_mut().read_to_string().unwrap_or_default();
            match status {
                200 => {
                    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                    let rev = v["device"]["revision"].as_u64().unwrap();
                    return (rev, text);
                }
                // In progress on another instance, or the store busy: retry.
                409 | 503 => {}
                other => panic!("{path} ({key}): unexpected {other}: {text}"),
            }
        }
        assert!(
            Instant::now() < deadline,
            "{path} ({key}) was never answered"
        );
        retried.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn crash_under_load(home: &Path, instances: usize) {
    let dir = home.parent().unwrap();
    let csv = cli::write_devices_csv(dir, "ECU-CRASH", DEVICES);
    ok(home, &["device", "import", csv.to_str().unwrap()]);
    let token = cli::issue_token(home, "line-1", "operator");
    let events_before = audit_events(home);

    let mut servers: Vec<Instance> = (0..instances)
        .map(|_| Instance {
            port: cli::free_port(),
            child: None,
        })
        .collect();
    for s in &mut servers {
        s.start(home);
    }
    let bases: Vec<String> = servers.iter().map(Instance::base).collect();
    let serials: Vec<String> = (0..DEVICES).map(|i| format!("ECU-CRASH-{i:05}")).collect();
    let answers: Mutex<Answers> = Mutex::new(BTreeMap::new());
    let done = AtomicBool::new(false);
    // Requests sent again because their instance went down (or was busy) before it answered.
    let retried = AtomicUsize::new(0);
    let mut kills = 0;

    std::thread::scope(|s| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let (bases, serials, token, answers) = (&bases, &serials, &token, &answers);
                let retried = &retried;
                s.spawn(move || {
                    let mut turn = client;
                    for serial in serials.iter().skip(client).step_by(CLIENTS) {
                        let steps = [
                            ("provision", format!("p-{serial}"), "{}"),
                            (
                                "refresh",
                                format!("r1-{serial}"),
                                r#"{"reason":"crash test"}"#,
                            ),
                            (
                                "refresh",
                                format!("r2-{serial}"),
                                r#"{"reason":"crash test"}"#,
                            ),
                        ];
                        for (op, key, body) in steps {
                            let path = format!("/v1/devices/{serial}/{op}");
                            let answer =
                                until_answered(bases, token, &path, &key, body, &mut turn, retried);
                            answers
                                .lock()
                                .unwrap()
                                .entry(serial.clone())
                                .or_default()
                                .insert(key, answer);
                        }
                    }
                })
            })
            .collect();
        // The killer: random moments (from the clock's nanoseconds), each instance in turn.
        let mut rng = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64;
        while kills < KILLS && !clients.iter().all(|c| c.is_finished()) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            std::thread::sleep(Duration::from_millis(150 + rng % 450));
            let victim = &mut servers[kills % instances];
            victim.kill();
            kills += 1;
            std::thread::sleep(Duration::from_millis(rng % 200));
            victim.start(home);
        }
        for c in clients {
            c.join().unwrap();
        }
        done.store(true, Ordering::SeqCst);
    });
    assert!(done.load(Ordering::SeqCst));
    assert!(
        kills >= 2,
        "the clients finished before the service was killed twice ({kills}): the test proved nothing"
    );
    let retried = retried.load(Ordering::Relaxed);
    assert!(
        retried > 0,
        "no request was interrupted by a kill: the test proved nothing"
    );
    eprintln!("{instances} instance(s): {kills} kills, {retried} requests sent again");

    let answers = answers.into_inner().unwrap();
    assert_eq!(answers.len(), DEVICES);
    let mut turn = 0;
    for (serial, keys) in &answers {
        let expect = [
            (format!("p-{serial}"), 0),
            (format!("r1-{serial}"), 1),
            (format!("r2-{serial}"), 2),
        ];
        for (key, revision) in &expect {
            let (seen, _) = &keys[key];
            assert_eq!(
                seen, revision,
                "{serial}: {key} was answered at revision {seen}"
            );
        }
        // Re-sent after the crashes: the first answer, byte for byte.
        if serial.ends_with('7') {
            let (_, first) = &keys[&format!("r1-{serial}")];
            let again = until_answered(
                &bases,
                &token,
                &format!("/v1/devices/{serial}/refresh"),
                &format!("r1-{serial}"),
                r#"{"reason":"crash test"}"#,
                &mut turn,
                &AtomicUsize::new(0),
            );
            assert_eq!(
                &again.1, first,
                "{serial}: the replay differs from the first answer"
            );
        }
    }
    for s in &mut servers {
        s.kill();
    }

    // The store: every device active at revision 2, one event per change, the chain intact.
    let listed: serde_json::Value = serde_json::from_str(&ok(
        home,
        &["device", "list", "--limit", "100000", "--json"],
    ))
    .unwrap();
    let devices = listed.as_array().unwrap();
    assert_eq!(devices.len(), DEVICES);
    for d in devices {
        assert_eq!(d["state"], "active", "{d}");
        assert_eq!(d["revision"], 2, "{d}");
    }
    assert_eq!(audit_events(home), events_before + 3 * DEVICES as u64);
}

fn audit_events(home: &Path) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(&ok(home, &["audit", "verify", "--json"])).unwrap();
    v["events"]
        .as_u64()
        .unwrap_or_else(|| panic!("audit verify --json: {v}"))
}

/// A derived fleet without a backup at `home`, on the store `store` names (`--store ...`; none:
/// SQLite).
fn init(home: &Path, store: &[&str]) {
    let mut args = vec![
        "init",
        "--fleet",
        "crash",
        "--scheme",
        "derived",
        "--no-backup",
        "--kdf-log-n",
        "10",
    ];
    args.extend_from_slice(store);
    ok(home, &args);
}

#[test]
fn sqlite_loses_no_acknowledged_change_when_killed_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("fleet");
    init(&home, &[]);
    crash_under_load(&home, 1);
}

#[test]
fn two_postgres_instances_lose_no_acknowledged_change_when_killed_under_load() {
    let Some(url) = pg::test_url("two_postgres_instances_killed_under_load") else {
        return;
    };
    let schema = pg::TestSchema::new(&url, "fk_crash");
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("fleet");
    init(&home, &["--store", &url, "--store-schema", &schema.name]);
    crash_under_load(&home, 2);
    drop(schema);
}
