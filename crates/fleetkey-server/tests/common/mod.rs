//! A governed fleet with devices, generations, a grant and a token per role, served in process.

#![allow(dead_code, reason = "each test file uses part of the harness")]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use fleetkey::access::Role;
use fleetkey::backup::MasterBackup;
use fleetkey::core::Key128;
use fleetkey::fleet::{Access, Clock, Fleet, InitOptions, NewDevice, SecretString};
use fleetkey::model::{DeviceSerial, Scheme};
use fleetkey::module::soft::WorkFactor;
use fleetkey_server::pool::FleetPool;
use fleetkey_server::{AppState, ServiceConfig, router};

pub(crate) const PASSPHRASE: &str = "a test passphrase of some length";
/// A valid Ed25519 public key (the base point).
pub(crate) const SUBJECT_KEY: &str =
    "5866666666666666666666666666666666666666666666666666666666666666";
pub(crate) const TECH_SUBJECT: &str = "tech-1";

/// A clock the test moves.
#[derive(Debug)]
pub(crate) struct TestClock(pub(crate) AtomicI64);

impl Clock for TestClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

pub(crate) struct Harness {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) home: PathBuf,
    pub(crate) clock: Arc<TestClock>,
    pub(crate) state: AppState,
    pub(crate) router: Router,
    /// A token per role.
    pub(crate) tokens: HashMap<Role, String>,
    /// A second station's token.
    pub(crate) station2: String,
    pub(crate) expired: String,
    pub(crate) revoked: String,
    /// The id of a token a test may revoke.
    pub(crate) spare_token_id: String,
}

pub(crate) fn access(clock: &Arc<TestClock>, actor: &str) -> Access {
    Access {
        passphrase: SecretString::from(PASSPHRASE.to_owned()),
        actor: actor.into(),
        clock: Arc::clone(clock) as Arc<dyn Clock>,
    }
}

pub(crate) fn serial(s: &str) -> DeviceSerial {
    DeviceSerial::parse(s).unwrap()
}

/// Devices: ECU-1 active, ECU-2 pre-active, ECU-S suspended. Generations: 1 active, 2 active and
/// current, 3 pre-active. Grant 1 to `tech-1`; one generation record published.
pub(crate) fn harness(config: ServiceConfig) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let clock = Arc::new(TestClock(AtomicI64::new(now)));
    let options = InitOptions {
        fleet_id: "tractors".into(),
        scheme: Scheme::Governed,
        she_transport_key: Some(Key128::from_bytes([0x11; 16])),
        work_factor: WorkFactor::Log2(4),
        backup: MasterBackup::NoBackup,
    };
    let mut fleet = Fleet::init(&home, options, access(&clock, "setup")).unwrap();
    for s in ["ECU-1", "ECU-2", "ECU-S"] {
        fleet
            .add_device(NewDevice {
                serial: serial(s),
                she_uid: None,
                labels: vec!["line=1".into()],
            })
            .unwrap();
    }
    fleet.provision(&serial("ECU-1")).unwrap();
    fleet.provision(&serial("ECU-S")).unwrap();
    fleet.suspend(&serial("ECU-S"), "setup").unwrap();
    fleet.rotate("setup", &MasterBackup::NoBackup).unwrap();
    fleet
        .create_generation("setup", &MasterBackup::NoBackup)
        .unwrap();
    let key: [u8; 32] = hex::decode(SUBJECT_KEY).unwrap().try_into().unwrap();
    fleet
        .issue_grant(
            TECH_SUBJECT,
            fleetkey::core::governance::Role::Technician,
            &[b"ECU".to_vec()],
            Duration::from_secs(86_400),
            key,
        )
        .unwrap();
    let mut tokens = HashMap::new();
    for role in Role::ALL {
        let subject = (role == Role::Technician).then_some(TECH_SUBJECT);
        let (_, secret) = fleet
            .issue_token(&format!("{}-1", role.name()), role, subject, None)
            .unwrap();
        tokens.insert(role, secret.expose().to_owned());
    }
    let (_, station2) = fleet
        .issue_token("station-2", Role::Station, None, None)
        .unwrap();
    let (_, expired) = fleet
        .issue_token("expiring", Role::Admin, None, Some(now + 1000))
        .unwrap();
    let (revoked_token, revoked) = fleet
        .issue_token("revoked", Role::Admin, None, None)
        .unwrap();
    fleet.revoke_token(&revoked_token.id, "test").unwrap();
    let (spare, _) = fleet
        .issue_token("spare", Role::Auditor, None, None)
        .unwrap();
    drop(fleet);
    clock.0.fetch_add(2000, Ordering::SeqCst);
    let state = state_for(&home, &clock, config);
    Harness {
        router: router(state.clone()),
        state,
        dir,
        home,
        clock,
        tokens,
        station2: station2.expose().to_owned(),
        expired: expired.expose().to_owned(),
        revoked: revoked.expose().to_owned(),
        spare_token_id: spare.id,
    }
}

pub(crate) fn state_for(
    home: &std::path::Path,
    clock: &Arc<TestClock>,
    config: ServiceConfig,
) -> AppState {
    let home = home.to_owned();
    let clock = Arc::clone(clock);
    let module = fleetkey::fleet::open_module(&home, &access(&clock, "service")).unwrap();
    let pool = FleetPool::open(
        2,
        Arc::new(move || {
            Fleet::open_with_module(&home, Arc::clone(&module), access(&clock, "service"))
        }),
    )
    .unwrap();
    AppState::new(pool, config)
}

/// Limits off, so that tests are not rate limited.
pub(crate) fn unlimited() -> ServiceConfig {
    ServiceConfig {
        rate_per_second: 0.0,
        ..ServiceConfig::default()
    }
}

pub(crate) struct Response {
    pub(crate) status: StatusCode,
    pub(crate) headers: axum::http::HeaderMap,
    pub(crate) body: Vec<u8>,
}

impl Response {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

pub(crate) async fn send(router: &Router, req: Request<Body>) -> Response {
    let response = tower::ServiceExt::oneshot(router.clone(), req)
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    Response {
        status,
        headers,
        body,
    }
}

pub(crate) fn request(
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(body.map_or_else(Body::empty, |s| Body::from(s.to_owned())))
        .unwrap()
}

pub(crate) async fn call(
    h: &Harness,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Response {
    send(&h.router, request(method, path, token, body, &[])).await
}

/// What a bad request must leave unchanged: the audit length and every device's state and
/// revision.
pub(crate) fn snapshot(h: &Harness) -> (u64, Vec<(String, String, u32)>) {
    let mut fleet = Fleet::open(&h.home, access(&h.clock, "check")).unwrap();
    let audit = fleet.status().unwrap().audit_events;
    let devices = fleet
        .devices(&Default::default(), None, 1000)
        .unwrap()
        .into_iter()
        .map(|d| (d.serial.to_string(), d.state.name().to_owned(), d.revision))
        .collect();
    (audit, devices)
}
