//! `fleetkey token` and `fleetkey serve` from the command line: a station token provisions a
//! device over HTTP (as the README's curl does), a revoked token is refused, plain HTTP off
//! loopback is refused, and `--metrics-listen` prints the metrics URL and serves it without a token.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const PASSPHRASE: &str = "correct horse battery staple";

fn fleetkey(home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetkey"));
    cmd.arg("--home")
        .arg(home)
        .env("FLEETKEY_PASSPHRASE", PASSPHRASE)
        .env("FLEETKEY_ACTOR", "tester")
        .stdin(Stdio::null());
    cmd
}

fn run(home: &Path, args: &[&str]) -> Output {
    fleetkey(home).args(args).output().unwrap()
}

#[track_caller]
fn json(home: &Path, args: &[&str]) -> serde_json::Value {
    let out = run(home, &[args, &["--json"]].concat());
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// One HTTP/1.1 exchange; the status and the body.
fn http(addr: &str, request: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn provision(token: &str) -> String {
    format!(
        "POST /v1/devices/ECU-0001/provision HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         Idempotency-Key: ECU-0001-1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
}

/// Kills the server when the test ends, passed or not.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The service's token cache time to live in the test that revokes a token through the CLI.
const TOKEN_CACHE_MS: u64 = 300;

#[test]
fn a_station_token_provisions_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("fleet");
    let transport = dir.path().join("transport.hex");
    std::fs::write(&transport, "00112233445566778899aabbccddeeff\n").unwrap();
    let out = run(
        &home,
        &[
            "init",
            "--fleet",
            "demo",
            "--scheme",
            "derived",
            "--kdf-log-n",
            "10",
            "--no-backup",
            "--she-transport-key-file",
            transport.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(run(&home, &["device", "add", "ECU-0001"]).status.success());

    let issued = json(
        &home,
        &[
            "token",
            "issue",
            "--principal",
            "station-1",
            "--role",
            "station",
            "--expires",
            "90d",
        ],
    );
    let token = issued["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("fk_") && token.len() == 67);
    let id = issued["id"].as_str().unwrap().to_owned();
    let list = json(&home, &["token", "list"]);
    assert_eq!(list[0]["id"], id.as_str());
    assert!(
        !list.to_string().contains(&token[3..]),
        "the list shows no token"
    );

    let mut child = Child(
        fleetkey(&home)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--workers",
                "2",
                "--token-cache-ms",
                &TOKEN_CACHE_MS.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // The first log line names the address taken.
    let mut log = BufReader::new(child.0.stderr.take().unwrap());
    let mut line = String::new();
    log.read_line(&mut line).unwrap();
    assert!(line.contains("plain HTTP on loopback only"), "{line}");
    let addr = line
        .split("address=http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();

    let (status, body) = http(
        &addr,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!((status, body.as_str()), (200, "{\"status\":\"ok\"}"));
    let (status, body) = http(&addr, &provision(&token));
    assert_eq!(status, 200, "{body}");
    let first: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(first["device"]["state"], "active");
    assert_eq!(first["she"].as_array().unwrap().len(), 4);
    // The retry returns the same material.
    let (_, again) = http(&addr, &provision(&token));
    assert_eq!(again, body);

    let out = run(
        &home,
        &["token", "revoke", &id, "--reason", "station retired"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A revocation made outside the service (here the CLI) stops the token within the token
    // cache's time to live, the documented bound; past it the token is refused.
    std::thread::sleep(Duration::from_millis(TOKEN_CACHE_MS + 50));
    let (status, body) = http(&addr, &provision(&token));
    assert_eq!(status, 401, "{body}");
    drop(child);

    // The audit names the station as the actor of the provisioning, and has the token events.
    let events = json(&home, &["audit", "show"]);
    let text = events.to_string();
    assert!(text.contains("token.issue") && text.contains("token.revoke"));
    assert!(!text.contains(&token[3..]));
    let provisioned = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "device.provision")
        .unwrap_or_else(|| panic!("no device.provision in {text}"));
    assert_eq!(provisioned["actor"], "station-1");
}

#[test]
fn metrics_listen_prints_the_metrics_url_and_serves_it_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("fleet");
    let out = run(
        &home,
        &[
            "init",
            "--fleet",
            "demo",
            "--scheme",
            "derived",
            "--kdf-log-n",
            "10",
            "--no-backup",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(run(&home, &["device", "add", "ECU-0001"]).status.success());
    let mut child = Child(
        fleetkey(&home)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--workers",
                "1",
                "--no-lifecycle",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut log = BufReader::new(child.0.stderr.take().unwrap());
    let mut line = String::new();
    log.read_line(&mut line).unwrap();
    let url = line
        .split("metrics=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no metrics URL in {line:?}"))
        .to_owned();
    let (addr, path) = url
        .strip_prefix("http://")
        .and_then(|u| u.split_once('/'))
        .unwrap_or_else(|| panic!("not an http URL: {url}"));
    assert_eq!(path, "metrics");
    assert!(addr.starts_with("127.0.0.1:"), "{url}");
    let main = line
        .split("address=http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    assert_ne!(main, addr, "a listener of its own");
    let (status, body) = http(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("fleetkey_devices{state=\"pre-active\"} 1"),
        "{body}"
    );
    assert!(!body.contains("ECU-0001"));
    // The main listener wants a token for it.
    let (status, _) = http(
        &main,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 401);
    drop(child);
}

#[test]
fn refusals_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("fleet");
    let out = run(&home, &["serve", "--listen", "0.0.0.0:8443"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--listen") && stderr.contains("--tls-cert"),
        "{stderr}"
    );
    let out = run(&home, &["serve", "--metrics-listen", "0.0.0.0:9464"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--metrics-listen") && stderr.contains("loopback"),
        "{stderr}"
    );
    let out = run(
        &home,
        &["token", "issue", "--principal", "x", "--role", "root"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--role"));
    let out = run(
        &home,
        &[
            "serve",
            "--tls-cert",
            "missing.pem",
            "--tls-key",
            "missing.key",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.pem"));
}
