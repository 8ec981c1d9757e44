//! Bad input: a clear 4xx problem naming what was wrong, nothing written (audit length and device
//! revisions unchanged), and the service keeps serving. Slowloris over a real socket.

mod common;

use std::time::Duration;

use common::*;
use fleetkey::access::Role;
use fleetkey_server::{Server, ServerConfig, ServiceConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn still_serving(h: &Harness) {
    let admin = h.tokens[&Role::Admin].clone();
    let r = call(h, "GET", "/v1/status", Some(&admin), None).await;
    assert_eq!(r.status, 200);
}

fn assert_problem(r: &Response, status: u16, slug: &str) -> serde_json::Value {
    assert_eq!(
        r.status.as_u16(),
        status,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.headers["content-type"], "application/problem+json");
    let p = r.json();
    assert_eq!(p["type"], format!("urn:fleetkey:problem:{slug}"));
    assert_eq!(p["status"], status);
    assert!(p["hint"].as_str().is_some_and(|h| !h.is_empty()), "{p}");
    assert_eq!(
        p["request_id"].as_str().unwrap(),
        r.headers["x-request-id"].to_str().unwrap()
    );
    p
}

/// Method, path, body, status, problem slug, field.
type Case<'a> = (&'a str, &'a str, &'a str, u16, &'a str, Option<&'a str>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_are_refused_with_the_field_and_write_nothing() {
    let h = harness(unlimited());
    let admin = h.tokens[&Role::Admin].clone();
    let before = snapshot(&h);
    let cases: &[Case] = &[
        // method, path, body, status, problem, field
        (
            "POST",
            "/v1/devices",
            "{\"serial\": \"A\"",
            400,
            "malformed-json",
            None,
        ),
        (
            "POST",
            "/v1/devices",
            "not json at all",
            400,
            "malformed-json",
            None,
        ),
        (
            "POST",
            "/v1/devices",
            "{\"serial\": \"A\"} trailing",
            400,
            "malformed-json",
            None,
        ),
        (
            "POST",
            "/v1/devices",
            "{\"serial\": 7}",
            422,
            "invalid-input",
            Some("serial"),
        ),
        (
            "POST",
            "/v1/devices",
            "{\"serial\": \"A\", \"labels\": \"x\"}",
            422,
            "invalid-input",
            Some("labels"),
        ),
        (
            "POST",
            "/v1/devices",
            "{\"serial\": \"A\", \"colour\": \"red\"}",
            422,
            "invalid-input",
            Some("colour"),
        ),
        (
            "POST",
            "/v1/devices",
            "[]",
            422,
            "invalid-input",
            Some("body"),
        ),
        (
            "POST",
            "/v1/devices",
            "{\"serial\": \"\"}",
            422,
            "invalid-input",
            Some("serial"),
        ),
        (
            "POST",
            "/v1/devices",
            &format!("{{\"serial\": \"{}\"}}", "x".repeat(41)),
            422,
            "invalid-input",
            Some("serial"),
        ),
        (
            "POST",
            "/v1/devices",
            "{\"serial\": \"A\", \"she_uid\": \"zz\"}",
            422,
            "invalid-input",
            Some("she_uid"),
        ),
        (
            "POST",
            "/v1/devices",
            "{\"serial\": \"A\", \"labels\": [\"a;b\"]}",
            422,
            "invalid-input",
            Some("label"),
        ),
        (
            "POST",
            "/v1/devices/import",
            "{\"devices\": [{\"serial\": \"OK-1\"}, {\"serial\": 5}]}",
            422,
            "invalid-input",
            Some("devices[1].serial"),
        ),
        (
            "POST",
            "/v1/devices/import",
            "{\"devices\": [{\"serial\": \"OK-1\"}, {\"serial\": \"OK-1\"}]}",
            422,
            "invalid-input",
            Some("devices[1].serial"),
        ),
        (
            "POST",
            "/v1/devices/import",
            "{\"devices\": [{\"serial\": \"OK-2\"}, {\"serial\": \"ECU-1\"}]}",
            422,
            "invalid-input",
            Some("devices[1].serial"),
        ),
        (
            "POST",
            "/v1/devices/import",
            "{\"devices\": []}",
            422,
            "invalid-input",
            Some("devices"),
        ),
        (
            "POST",
            "/v1/devices/ECU-1/refresh",
            "{\"reason\": 5}",
            422,
            "invalid-input",
            Some("reason"),
        ),
        (
            "POST",
            "/v1/devices/ECU-1/refresh",
            "{\"reason\": \"r\", \"force\": true}",
            422,
            "invalid-input",
            Some("force"),
        ),
        (
            "POST",
            "/v1/devices/ECU-1/suspend",
            "{}",
            422,
            "invalid-input",
            Some("reason"),
        ),
        (
            "POST",
            "/v1/devices/ECU-1/provision",
            "{\"x\": 1}",
            422,
            "invalid-input",
            Some("x"),
        ),
        (
            "POST",
            "/v1/devices/NOPE/refresh",
            "{}",
            404,
            "not-found",
            None,
        ),
        (
            "POST",
            "/v1/devices/ECU-S/refresh",
            "{}",
            409,
            "refused",
            None,
        ),
        (
            "POST",
            "/v1/devices/ECU-2/resume",
            "{\"reason\": \"r\"}",
            409,
            "illegal-transition",
            None,
        ),
        (
            "POST",
            "/v1/generations/x/activate",
            "{\"reason\": \"r\"}",
            422,
            "invalid-input",
            Some("path"),
        ),
        (
            "POST",
            "/v1/generations/4294967296/activate",
            "{\"reason\": \"r\"}",
            422,
            "invalid-input",
            Some("path"),
        ),
        (
            "POST",
            "/v1/generations",
            "{\"reason\": \"r\", \"backup\": \"shares\"}",
            422,
            "invalid-input",
            Some("backup"),
        ),
        (
            "POST",
            "/v1/generations",
            "{\"reason\": \"r\"}",
            422,
            "invalid-input",
            Some("body"),
        ),
        (
            "POST",
            "/v1/grants",
            "{\"subject\": \"s\", \"role\": \"technician\", \"scope\": [], \"valid_seconds\": -1, \"subject_key\": \"00\"}",
            422,
            "invalid-input",
            Some("valid_seconds"),
        ),
        (
            "POST",
            "/v1/grants",
            &format!(
                "{{\"subject\": \"s\", \"role\": \"boss\", \"scope\": [], \"valid_seconds\": 5, \"subject_key\": \"{SUBJECT_KEY}\"}}"
            ),
            422,
            "invalid-input",
            Some("role"),
        ),
        (
            "POST",
            "/v1/tokens",
            "{\"principal\": \"a b\", \"role\": \"station\"}",
            422,
            "invalid-input",
            Some("principal"),
        ),
        (
            "POST",
            "/v1/tokens",
            "{\"principal\": \"ab\", \"role\": \"root\"}",
            422,
            "invalid-input",
            Some("role"),
        ),
        (
            "POST",
            "/v1/tokens",
            "{\"principal\": \"ab\", \"role\": \"technician\"}",
            422,
            "invalid-input",
            Some("subject"),
        ),
        (
            "GET",
            "/v1/devices?limit=0",
            "",
            422,
            "invalid-input",
            Some("query.limit"),
        ),
        (
            "GET",
            "/v1/devices?colour=red",
            "",
            422,
            "invalid-input",
            Some("query"),
        ),
        (
            "GET",
            "/v1/devices?state=happy",
            "",
            422,
            "invalid-input",
            Some("query.state"),
        ),
        (
            "GET",
            "/v1/audit?after=-1",
            "",
            422,
            "invalid-input",
            Some("query"),
        ),
        ("GET", "/v1/nothing-here", "", 404, "no-route", None),
        ("DELETE", "/v1/devices", "", 405, "method-not-allowed", None),
    ];
    for (method, path, body, status, slug, field) in cases {
        let body = (!body.is_empty()).then_some(*body);
        let r = call(&h, method, path, Some(&admin), body).await;
        let p = assert_problem(&r, *status, slug);
        if let Some(field) = field {
            assert_eq!(p["field"], *field, "{method} {path} {body:?}: {p}");
        }
        assert_eq!(
            snapshot(&h),
            before,
            "{method} {path} {body:?} wrote something"
        );
    }
    still_serving(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_bodies_get_413_and_write_nothing() {
    let h = harness(ServiceConfig {
        body_limit: 4096,
        ..unlimited()
    });
    let admin = h.tokens[&Role::Admin].clone();
    let before = snapshot(&h);
    let devices: Vec<String> = (0..400)
        .map(|i| format!("{{\"serial\":\"BIG-{i}\"}}"))
        .collect();
    let body = format!("{{\"devices\":[{}]}}", devices.join(","));
    assert!(body.len() > 4096);
    // With Content-Length (refused before reading) ...
    let r = call(&h, "POST", "/v1/devices/import", Some(&admin), Some(&body)).await;
    let p = assert_problem(&r, 413, "body-too-large");
    assert!(p["detail"].as_str().unwrap().contains("4096 bytes"), "{p}");
    // ... and streamed without one (chunked: refused while reading), over a real socket.
    let (addr, server) = Server::bind(
        ServerConfig::plain("127.0.0.1:0".parse().unwrap()),
        h.state.clone(),
    )
    .await
    .unwrap();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/devices/import HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.as_bytes().chunks(1000) {
        let framed = format!(
            "{:x}\r\n{}\r\n",
            chunk.len(),
            String::from_utf8_lossy(chunk)
        );
        if tcp.write_all(framed.as_bytes()).await.is_err() {
            break; // the server may answer and close before the whole body is sent
        }
    }
    let _ = tcp.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    server.shutdown().await;
    assert_eq!(snapshot(&h), before);
    // A huge body without a token is also 413 (the limit applies before authentication).
    let r = call(&h, "POST", "/v1/devices/import", None, Some(&body)).await;
    assert_eq!(r.status, 413);
    still_serving(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_401_and_write_nothing() {
    let h = harness(unlimited());
    let before = snapshot(&h);
    let station = h.tokens[&Role::Station].clone();
    // The last character changed (to another one: a token ending in 0 gets a 1).
    let last = if station.ends_with('0') { '1' } else { '0' };
    let tampered = format!("{}{last}", &station[..station.len() - 1]);
    for token in [
        Some(""),
        Some("fk_"),
        Some(tampered.as_str()),
        Some(h.expired.as_str()),
        Some(h.revoked.as_str()),
        Some("x"),
    ] {
        let header = format!("Bearer {}", token.unwrap());
        let r = send(
            &h.router,
            request(
                "POST",
                "/v1/devices/ECU-2/provision",
                None,
                None,
                &[("authorization", &header)],
            ),
        )
        .await;
        assert_problem(&r, 401, "unauthenticated");
    }
    let long = format!("Bearer {}", "a".repeat(5000));
    let r = send(
        &h.router,
        request(
            "POST",
            "/v1/devices/ECU-2/provision",
            None,
            None,
            &[("authorization", &long)],
        ),
    )
    .await;
    assert_problem(&r, 401, "unauthenticated");
    assert_eq!(snapshot(&h), before);
    still_serving(&h).await;
}

/// Reads until the peer closes; `true` if it closed (EOF or reset) within `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_connection_is_closed_while_others_are_served() {
    let h = harness(unlimited());
    let before = snapshot(&h);
    let mut config = ServerConfig::plain("127.0.0.1:0".parse().unwrap());
    config.header_read_timeout = Duration::from_secs(1);
    let (addr, server) = Server::bind(config, h.state.clone()).await.unwrap();
    // The slow client sends a request line and one header, then a byte now and then.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"POST /v1/devices/ECU-2/provision HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if slow.write_all(b"X-Slow: 1\r\n").await.is_err() {
                break;
            }
        }
        slow
    });
    // A client that connects and sends nothing is cut off too.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    // So is a kept-alive connection that goes quiet after a request.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    // Meanwhile another client is served.
    let admin = h.tokens[&Role::Admin].clone();
    let mut other = TcpStream::connect(addr).await.unwrap();
    other
        .write_all(format!("GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    other.read_to_end(&mut answer).await.unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // The slow one is cut off by the header read timeout (well before its 6 s of trickling end).
    let mut slow = trickle.await.unwrap();
    assert!(
        closed_within(&mut slow, Duration::from_secs(30)).await,
        "the slow connection stayed open"
    );
    assert!(
        closed_within(&mut silent, Duration::from_secs(30)).await,
        "the silent connection stayed open"
    );
    assert!(
        closed_within(&mut idle, Duration::from_secs(30)).await,
        "the idle connection stayed open"
    );
    assert_eq!(snapshot(&h), before);
    // And the service still serves.
    let mut again = TcpStream::connect(addr).await.unwrap();
    again
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    again.read_to_end(&mut answer).await.unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    server.shutdown().await;
}
