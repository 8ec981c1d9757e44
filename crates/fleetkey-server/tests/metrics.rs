//! `GET /metrics`: the families and their label values after some requests, the figures read
//! from the store, no serial or token anywhere in the text, the roles that may scrape, and the
//! loopback listener that needs no token.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use fleetkey::access::Role;
use fleetkey::fleet::Fleet;
use fleetkey::lifecycle::State;
use fleetkey_server::Server;
use fleetkey_server::scheduler::LocalStatus;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The value of the sample named exactly `series` (name and labels as the text has them).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[track_caller]
fn value(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

async fn scrape(h: &Harness, token: Option<&str>) -> Response {
    call(h, "GET", "/metrics", token, None).await
}

#[tokio::test]
async fn a_scrape_counts_requests_by_route_template_and_reads_the_store() {
    let h = harness(unlimited());
    let auditor = h.tokens[&Role::Auditor].clone();
    let operator = h.tokens[&Role::Operator].clone();
    let station = h.tokens[&Role::Station].clone();
    for _ in 0..2 {
        let r = call(&h, "GET", "/v1/devices/ECU-1", Some(&auditor), None).await;
        assert_eq!(r.status, 200);
    }
    let r = call(&h, "GET", "/v1/devices/NOPE-7", Some(&operator), None).await;
    assert_eq!(r.status, 404);
    let r = call(&h, "GET", "/no/such/ECU-1", Some(&operator), None).await;
    assert_eq!(r.status, 404);
    let r = call(&h, "GET", "/v1/status", None, None).await;
    assert_eq!(r.status, 401);
    let r = send(
        &h.router,
        request(
            "POST",
            "/v1/devices/ECU-2/provision",
            Some(&station),
            Some(""),
            &[("idempotency-key", "ECU-2-1")],
        ),
    )
    .await;
    assert_eq!(r.status, 200);

    let r = scrape(&h, Some(&auditor)).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = String::from_utf8(r.body).unwrap();

    // Requests by method, route template and status.
    let req = |m: &str, route: &str, status: u16| {
        format!(
            "fleetkey_http_requests_total{{method=\"{m}\",route=\"{route}\",status=\"{status}\"}}"
        )
    };
    assert_eq!(value(&text, &req("GET", "/v1/devices/{serial}", 200)), 2.0);
    assert_eq!(value(&text, &req("GET", "/v1/devices/{serial}", 404)), 1.0);
    assert_eq!(value(&text, &req("GET", "unmatched", 404)), 1.0);
    assert_eq!(value(&text, &req("GET", "/v1/status", 401)), 1.0);
    assert_eq!(
        value(&text, &req("POST", "/v1/devices/{serial}/provision", 200)),
        1.0
    );
    assert!(text.contains("# TYPE fleetkey_http_requests_total counter"));

    // A latency histogram by method and route.
    assert!(text.contains("# TYPE fleetkey_http_request_duration_seconds histogram"));
    let bucket = |le: &str| {
        value(
            &text,
            &format!(
                "fleetkey_http_request_duration_seconds_bucket{{method=\"GET\",route=\"/v1/devices/{{serial}}\",le=\"{le}\"}}"
            ),
        )
    };
    assert_eq!(bucket("+Inf"), 3.0);
    assert!(bucket("0.001") <= bucket("8.192"));
    assert_eq!(
        value(
            &text,
            "fleetkey_http_request_duration_seconds_count{method=\"GET\",route=\"/v1/devices/{serial}\"}"
        ),
        3.0
    );

    // Devices and generations by state, the audit length: as the store has them.
    let mut fleet = Fleet::open(&h.home, access(&h.clock, "check")).unwrap();
    let status = fleet.status().unwrap();
    for state in State::ALL {
        let n = status
            .devices
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |(_, n)| *n);
        let series = format!("fleetkey_devices{{state=\"{}\"}}", state.name());
        assert_eq!(value(&text, &series), n as f64, "{series}");
        let g = status
            .generations
            .iter()
            .filter(|g| g.state == state)
            .count();
        let series = format!("fleetkey_generations{{state=\"{}\"}}", state.name());
        assert_eq!(value(&text, &series), g as f64, "{series}");
    }
    assert_eq!(value(&text, "fleetkey_devices{state=\"active\"}"), 2.0);
    assert_eq!(value(&text, "fleetkey_devices{state=\"suspended\"}"), 1.0);
    assert_eq!(
        value(&text, "fleetkey_generations{state=\"pre-active\"}"),
        1.0
    );
    assert_eq!(
        value(&text, "fleetkey_audit_events"),
        status.audit_events as f64
    );
    assert_eq!(value(&text, "fleetkey_current_generation"), 2.0);
    assert_eq!(value(&text, "fleetkey_store_up"), 1.0);
    assert_eq!(
        value(
            &text,
            "fleetkey_info{fleet=\"tractors\",scheme=\"governed\",store=\"sqlite\",module=\"soft\"}"
        ),
        1.0
    );

    // Store transactions and retries, key module operations (process-wide: other tests in this
    // binary add to them).
    assert!(value(&text, "fleetkey_store_transactions_total{store=\"sqlite\"}") > 0.0);
    assert!(
        sample(
            &text,
            "fleetkey_store_transaction_retries_total{store=\"postgres\"}"
        )
        .is_some()
    );
    assert!(sample(&text, "fleetkey_store_lock_waits_total{store=\"sqlite\"}").is_some());
    assert!(sample(&text, "fleetkey_store_busy_total{store=\"sqlite\"}").is_some());
    assert!(
        value(
            &text,
            "fleetkey_key_module_operations_total{module=\"soft\",operation=\"derive\"}"
        ) >= 1.0,
        "provisioning derived keys"
    );
    assert!(
        sample(
            &text,
            "fleetkey_key_module_errors_total{module=\"soft\",operation=\"derive\"}"
        )
        .is_some()
    );
    // No scheduler in this instance.
    assert_eq!(value(&text, "fleetkey_scheduler_enabled"), 0.0);
    assert_eq!(value(&text, "fleetkey_scheduler_runs_total"), 0.0);
    assert_eq!(value(&text, "fleetkey_scheduler_errors_total"), 0.0);

    // No serial, no token, no concrete path anywhere.
    for secret in ["ECU-1", "ECU-2", "ECU-S", "NOPE-7", "/no/such", "fk_"]
        .into_iter()
        .map(str::to_owned)
        .chain(h.tokens.values().cloned())
        .chain(h.tokens.values().map(|t| t[3..].to_owned()))
    {
        assert!(!text.contains(&secret), "{secret:?} in\n{text}");
    }
    // Each sample line is `name{labels} value` or `name value`.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (_, v) = line.rsplit_once(' ').unwrap();
        assert!(v.parse::<f64>().is_ok() || v == "+Inf", "{line}");
    }
}

#[tokio::test]
async fn only_roles_that_read_the_status_scrape_on_the_main_listener() {
    let h = harness(unlimited());
    for role in [Role::Admin, Role::Operator, Role::Auditor] {
        let r = scrape(&h, Some(&h.tokens[&role])).await;
        assert_eq!(r.status, 200, "{role}");
    }
    for role in [Role::Station, Role::Technician] {
        let r = scrape(&h, Some(&h.tokens[&role])).await;
        assert_eq!(r.status, 403, "{role}");
        assert!(!String::from_utf8_lossy(&r.body).contains("fleetkey_devices"));
    }
    for token in [None, Some(h.revoked.as_str()), Some("fk_0000")] {
        let r = scrape(&h, token).await;
        assert_eq!(r.status, 401, "{token:?}");
        assert!(!String::from_utf8_lossy(&r.body).contains("fleetkey_devices"));
    }
    // The refusals are counted too, under the template.
    let r = scrape(&h, Some(&h.tokens[&Role::Admin])).await;
    let text = String::from_utf8(r.body).unwrap();
    assert_eq!(
        value(
            &text,
            "fleetkey_http_requests_total{method=\"GET\",route=\"/metrics\",status=\"403\"}"
        ),
        2.0
    );
}

/// One HTTP/1.1 exchange over TCP: status and body.
async fn http(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn the_loopback_listener_serves_without_a_token_and_nothing_else() {
    let h = harness(unlimited());
    let status = Arc::new(Mutex::new(LocalStatus {
        enabled: true,
        runs: 3,
        errors: 2,
        last_attempt_at: Some(1_700_000_000_123),
        ..Default::default()
    }));
    let state = h.state.clone().with_scheduler(status);
    let (main, main_server) = Server::bind(
        fleetkey_server::ServerConfig::plain("127.0.0.1:0".parse().unwrap()),
        state.clone(),
    )
    .await
    .unwrap();
    let (addr, server) = Server::bind_metrics("127.0.0.1:0".parse().unwrap(), state)
        .await
        .unwrap();
    let (code, text) = http(addr, "/metrics").await;
    assert_eq!(code, 200, "{text}");
    assert_eq!(value(&text, "fleetkey_devices{state=\"active\"}"), 1.0);
    assert_eq!(value(&text, "fleetkey_scheduler_enabled"), 1.0);
    assert_eq!(value(&text, "fleetkey_scheduler_runs_total"), 3.0);
    assert_eq!(value(&text, "fleetkey_scheduler_errors_total"), 2.0);
    assert_eq!(
        value(&text, "fleetkey_scheduler_last_run_timestamp_seconds"),
        1_700_000_000.0
    );
    // Only /metrics there: the API is not reachable without a token through it.
    for path in ["/v1/status", "/v1/devices/ECU-1", "/healthz"] {
        let (code, body) = http(addr, path).await;
        assert_eq!(code, 404, "{path}: {body}");
    }
    // The main listener still wants a token.
    let (code, _) = http(main, "/metrics").await;
    assert_eq!(code, 401);
    server.shutdown().await;
    main_server.shutdown().await;

    for refused in ["0.0.0.0:0", "192.0.2.1:9464", "[::]:0"] {
        let e = Server::bind_metrics(refused.parse().unwrap(), h.state.clone())
            .await
            .err()
            .unwrap_or_else(|| panic!("{refused} was bound"));
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{refused}");
    }
}
