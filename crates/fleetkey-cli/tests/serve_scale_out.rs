//! Scale-out: two `fleetkey serve` processes on one PostgreSQL schema (and one key file), many
//! concurrent clients refreshing the same device and different ones through both. Afterwards
//! every device's revisions are 1..=N with no gap and no duplicate, N is exactly the number of
//! refreshes that succeeded (nothing lost, nothing bumped twice), the audit trail holds one
//! refresh event per revision in order, and `audit verify` passes.
//!
//! Needs `FLEETKEY_TEST_DATABASE_URL` (CI: `postgres://postgres@127.0.0.1:5432/test`): unset,
//! the test says it was skipped; set, a server that cannot be reached fails it.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[path = "support/cli.rs"]
mod cli;
#[path = "support/postgres.rs"]
mod pg;

use cli::{fleetkey, ok};
use pg::{TestSchema, test_url};

const DEVICES: usize = 6;
const CLIENTS: usize = 12;
const REFRESHES_PER_CLIENT: usize = 15;

/// Kills the servers whatever happened (the schema drops itself after them).
struct Cleanup {
    servers: Vec<Child>,
    schema: TestSchema,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

#[test]
fn two_instances_on_one_postgres_never_lose_or_repeat_a_revision() {
    let Some(url) = test_url("two_instances_on_one_postgres") else {
        return;
    };
    let mut cleanup = Cleanup {
        servers: vec![],
        schema: TestSchema::new(&url, "fk_scale"),
    };
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("fleet");
    ok(
        &home,
        &[
            "init",
            "--fleet",
            "scale-out",
            "--scheme",
            "derived",
            "--no-backup",
            "--kdf-log-n",
            "10",
            "--store",
            &url,
            "--store-schema",
            &cleanup.schema.name,
        ],
    );
    let serials: Vec<String> = (0..DEVICES).map(|i| format!("ECU-SCALE-{i}")).collect();
    for s in &serials {
        ok(&home, &["device", "add", s]);
        ok(&home, &["device", "provision", s]);
    }
    let token = cli::issue_token(&home, "ops", "operator");

    let mut bases = vec![];
    for _ in 0..2 {
        let port = cli::free_port();
        let child = fleetkey(&home)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--workers",
                "4",
                "--rate-limit",
                "0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        cleanup.servers.push(child);
        bases.push(format!("http://127.0.0.1:{port}"));
    }
    for (base, server) in bases.iter().zip(cleanup.servers.iter_mut()) {
        cli::wait_healthy(base, server);
    }

    // Each client alternates instances; even requests hit the shared hot device 0, odd ones
    // the client's own device. Successful refreshes are recorded with the revision returned.
    let returned: Mutex<BTreeMap<String, Vec<u64>>> = Mutex::new(BTreeMap::new());
    let failures: Mutex<Vec<String>> = Mutex::new(vec![]);
    std::thread::scope(|s| {
        for client in 0..CLIENTS {
            let (bases, serials, token) = (&bases, &serials, &token);
            let (returned, failures) = (&returned, &failures);
            s.spawn(move || {
                let agent = agent();
                for i in 0..REFRESHES_PER_CLIENT {
                    let base = &bases[(client + i) % 2];
                    let serial = if i % 2 == 0 {
                        &serials[0]
                    } else {
                        &serials[1 + client % (DEVICES - 1)]
                    };
                    let resp = agent
                        .post(format!("{base}/v1/devices/{serial}/refresh"))
                        .header("authorization", format!("Bearer {token}"))
                        .content_type("application/json")
                        .send(r#"{"reason":"scale-out"}"#);
                    match resp {
                        Ok(mut r) => {
                            let status = r.status().as_u16();
                            let body = r.body_mut().read_to_string().unwrap_or_default();
                            if status == 200 {
                                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                                let rev = v["device"]["revision"].as_u64().unwrap();
                                returned
                                    .lock()
                                    .unwrap()
                                    .entry(serial.clone())
                                    .or_default()
                                    .push(rev);
                            } else {
                                failures.lock().unwrap().push(format!("{status}: {body}"));
                            }
                        }
                        Err(e) => failures.lock().unwrap().push(e.to_string()),
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    // A refresh may be refused as busy after its retries (503): then it must not have bumped.
    for f in &failures {
        assert!(f.starts_with("503"), "unexpected failure: {f}");
    }
    let returned = returned.into_inner().unwrap();
    let succeeded: usize = returned.values().map(Vec::len).sum();
    assert!(
        succeeded >= CLIENTS * REFRESHES_PER_CLIENT * 9 / 10,
        "too few refreshes succeeded: {succeeded}, failures {failures:?}"
    );
    assert_eq!(succeeded + failures.len(), CLIENTS * REFRESHES_PER_CLIENT);

    for s in &serials {
        let mut revs = returned.get(s).cloned().unwrap_or_default();
        revs.sort_unstable();
        let n = revs.len() as u64;
        assert_eq!(
            revs,
            (1..=n).collect::<Vec<_>>(),
            "{s}: the revisions returned must be 1..={n}, each once"
        );
        let shown: serde_json::Value =
            serde_json::from_str(&ok(&home, &["device", "show", s, "--json"])).unwrap();
        assert_eq!(
            shown["revision"].as_u64(),
            Some(n),
            "{s}: nothing lost, nothing extra"
        );
        let events: serde_json::Value = serde_json::from_str(&ok(
            &home,
            &[
                "audit",
                "show",
                "--device",
                s,
                "--action",
                "device.refresh",
                "--limit",
                "1000",
                "--json",
            ],
        ))
        .unwrap();
        let events = events
            .as_array()
            .or_else(|| events["events"].as_array())
            .cloned()
            .unwrap_or_default();
        assert_eq!(events.len() as u64, n, "{s}: one audit event per refresh");
        let audit_revs: Vec<u64> = events
            .iter()
            .map(|e| {
                let details = if e["draft"].is_object() {
                    &e["draft"]["details"]
                } else {
                    &e["details"]
                };
                details["revision"]
                    .as_u64()
                    .or_else(|| details["to"]["revision"].as_u64())
                    .or_else(|| details["to"][1].as_u64())
                    .unwrap_or_else(|| panic!("no revision in {e}"))
            })
            .collect();
        assert_eq!(
            audit_revs,
            (1..=n).collect::<Vec<_>>(),
            "{s}: the audit trail is in revision order"
        );
    }
    assert!(ok(&home, &["audit", "verify"]).contains("intact"));
    // Both instances stop cleanly on SIGTERM (closing their PostgreSQL connections outside
    // tokio's workers: dropping them inside once aborted the process).
    for server in &mut cleanup.servers {
        let killed = Command::new("kill")
            .args(["-TERM", &server.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = server.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "fleetkey serve did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            status.success(),
            "fleetkey serve exited with {status} on SIGTERM"
        );
    }
    eprintln!(
        "scale-out: {succeeded} refreshes through 2 instances, {} refused busy",
        failures.len()
    );
}
