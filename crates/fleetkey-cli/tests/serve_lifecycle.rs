//! The lifecycle scheduler of two `fleetkey serve` instances on one PostgreSQL schema (and one
//! key file), with a test clock that crosses generation 1's rotation date three seconds after
//! they start. Exactly one instance acts at a time (the lease); the one acting is killed with
//! kill -9 mid-migration; the other takes the lease over once it expires and finishes. Then:
//! exactly one new generation, every device on it exactly one revision up, no device named by
//! two refresh events, every key update in one of the two instances' files, `audit verify`
//! passes, and the survivor kept serving requests throughout.
//!
//! Needs `FLEETKEY_TEST_DATABASE_URL` (CI: `postgres://postgres@127.0.0.1:5432/test`).

use std::collections::HashSet;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

#[path = "support/cli.rs"]
mod cli;
#[path = "support/postgres.rs"]
mod pg;

use cli::{fleetkey, json, ok};
use pg::{TestSchema, test_url};

const DEVICES: usize = 6_000;
const DAY_MS: i64 = 86_400_000;

struct Cleanup {
    servers: Vec<Option<Child>>,
    _schema: TestSchema,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for s in self.servers.iter_mut().flatten() {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn get(base: &str, path: &str, token: &str) -> (u16, serde_json::Value) {
    match agent()
        .get(format!("{base}{path}"))
        .header("authorization", format!("Bearer {token}"))
        .call()
    {
        Ok(mut r) => {
            let status = r.status().as_u16();
            let body = r.body_mut().read_to_string().unwrap_or_default();
            (status, serde_json::from_str(&body).unwrap_or_default())
        }
        Err(e) => panic!("{base}{path}: {e}"),
    }
}

fn decode_subjects(mut blob: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some((&len, rest)) = blob.split_first() {
        let (s, rest) = rest.split_at(usize::from(len));
        out.push(s.to_vec());
        blob = rest;
    }
    out
}

#[test]
fn two_instances_rotate_once_and_the_survivor_finishes_the_migration() {
    let Some(url) = test_url("serve_lifecycle") else {
        return;
    };
    let schema = TestSchema::new(&url, "fk_life");
    let name = schema.name.clone();
    let mut cleanup = Cleanup {
        servers: vec![],
        _schema: schema,
    };
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("fleet");
    ok(
        &home,
        &[
            "init",
            "--fleet",
            "sched",
            "--scheme",
            "derived",
            "--no-backup",
            "--kdf-log-n",
            "10",
            "--store",
            &url,
            "--store-schema",
            &name,
        ],
    );
    let csv = cli::write_devices_csv(dir.path(), "S", DEVICES);
    let keys = dir.path().join("keys.jsonl");
    ok(
        &home,
        &[
            "device",
            "import",
            csv.to_str().unwrap(),
            "--provision-out",
            keys.to_str().unwrap(),
        ],
    );
    // Generation 1 is due for rotation a year after it was activated: shift the clock so that
    // the date is crossed 3 seconds after the instances start.
    let g1 = &json(&home, &["generation", "list"])[0];
    let activated = g1["changed"]["at"].as_i64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let offset = activated + 365 * DAY_MS - now + 3_000;
    // The token is issued on the shifted clock too (its default lifetime runs from then).
    let issued = fleetkey(&home)
        .args([
            "token",
            "issue",
            "--principal",
            "watch",
            "--role",
            "auditor",
            "--json",
        ])
        .env("FLEETKEY_CLOCK_OFFSET_MS", offset.to_string())
        .output()
        .unwrap();
    assert!(issued.status.success());
    let issued: serde_json::Value = serde_json::from_slice(&issued.stdout).unwrap();
    let token = issued["token"].as_str().unwrap().to_owned();

    let mut bases = vec![];
    let mut outs = vec![];
    for i in 0..2 {
        let port = cli::free_port();
        let out = dir.path().join(format!("updates-{i}.jsonl"));
        let child = fleetkey(&home)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--workers",
                "2",
                "--rate-limit",
                "0",
                "--lifecycle-interval",
                "1s",
                "--lifecycle-lease-ttl",
                "2s",
                "--lifecycle-batch",
                "200",
                "--lifecycle-rate",
                "800",
                "--lifecycle-out",
                out.to_str().unwrap(),
            ])
            .env("FLEETKEY_CLOCK_OFFSET_MS", offset.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        cleanup.servers.push(Some(child));
        bases.push(format!("http://127.0.0.1:{port}"));
        outs.push(out);
    }
    let started = Instant::now();
    for base in &bases {
        let deadline = Instant::now() + Duration::from_secs(30);
        while agent().get(format!("{base}/healthz")).call().is_err() {
            assert!(Instant::now() < deadline, "{base} did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // Wait until the acting instance is mid-migration, then kill it.
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let q = |db: &mut postgres::Client, sql: &str| -> i64 {
        db.query_one(&sql.replace("S.", &format!("\"{name}\".")), &[])
            .unwrap()
            .get::<_, i64>(0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while q(
        &mut db,
        "SELECT count(*) FROM S.devices WHERE generation = 2",
    ) < 1_000
    {
        assert!(Instant::now() < deadline, "no migration started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let lease: String = db
        .query_one(
            &format!("SELECT value FROM \"{name}\".meta WHERE key LIKE '%lifecycle.lease'"),
            &[],
        )
        .unwrap()
        .get(0);
    let lease: serde_json::Value = serde_json::from_str(&lease).unwrap();
    let holder_pid: u32 = lease["holder"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let victim = cleanup
        .servers
        .iter()
        .position(|c| c.as_ref().is_some_and(|c| c.id() == holder_pid))
        .expect("the lease holder is one of the two instances");
    let mut child = cleanup.servers[victim].take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let migrated_at_kill = q(
        &mut db,
        "SELECT count(*) FROM S.devices WHERE generation = 2",
    );
    assert!(
        (migrated_at_kill as usize) < DEVICES,
        "the migration ended before the kill ({migrated_at_kill})"
    );
    let survivor = 1 - victim;

    // The survivor takes over once the lease expires, and keeps serving meanwhile.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (status, _) = get(&bases[survivor], "/v1/status", &token);
        assert_eq!(status, 200);
        if q(
            &mut db,
            "SELECT count(*) FROM S.devices WHERE generation = 2 AND revision = 1",
        ) == DEVICES as i64
            && q(&mut db, "SELECT count(*) FROM S.deliveries") == 0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the survivor did not finish the migration"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "killed instance {victim} at {migrated_at_kill} of {DEVICES} devices; all migrated {:.1} s after start",
        started.elapsed().as_secs_f64()
    );

    assert_eq!(
        q(&mut db, "SELECT count(*) FROM S.generations"),
        2,
        "exactly one new generation"
    );
    assert_eq!(
        q(
            &mut db,
            "SELECT count(*) FROM S.devices WHERE NOT (generation = 2 AND revision = 1)"
        ),
        0
    );
    // generation.create: generation 1 at init, generation 2 once.
    assert_eq!(
        q(
            &mut db,
            "SELECT count(*) FROM S.audit WHERE action = 'generation.create' AND generation = 2"
        ),
        1
    );
    assert_eq!(
        q(
            &mut db,
            "SELECT count(*) FROM S.audit WHERE action = 'generation.activate' AND generation = 2"
        ),
        1
    );
    let mut serials = Vec::new();
    for row in db
        .query(
            &format!("SELECT subjects FROM \"{name}\".audit WHERE action = 'device.refresh'"),
            &[],
        )
        .unwrap()
    {
        serials.extend(decode_subjects(row.get::<_, &[u8]>(0)));
    }
    let unique: HashSet<&Vec<u8>> = serials.iter().collect();
    assert_eq!(
        (serials.len(), unique.len()),
        (DEVICES, DEVICES),
        "every device migrated exactly once"
    );
    let mut delivered = HashSet::new();
    for out in &outs {
        let bytes = std::fs::read(out).unwrap_or_default();
        for line in bytes.split(|b| *b == b'\n').filter(|l| l.ends_with(b"}")) {
            let v: serde_json::Value = serde_json::from_slice(line).unwrap();
            delivered.insert(v["device"]["serial"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(
        delivered.len(),
        DEVICES,
        "every key update delivered at least once"
    );
    // The scheduler's status: the survivor ran last.
    let pid = format!(":{}", cleanup.servers[survivor].as_ref().unwrap().id());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, sched) = get(&bases[survivor], "/v1/scheduler", &token);
        assert_eq!(sched["instance"]["enabled"], true, "{sched}");
        if sched["last_run"]["holder"]
            .as_str()
            .is_some_and(|h| h.ends_with(&pid))
        {
            assert!(sched["last_run"]["error"].is_null(), "{sched}");
            break;
        }
        assert!(Instant::now() < deadline, "{sched}");
        std::thread::sleep(Duration::from_millis(200));
    }
    json(&home, &["audit", "verify"]);
}
