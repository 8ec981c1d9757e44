//! The log of a provisioning request names the request, the principal and the device, and holds
//! no token and no key material.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use fleetkey::access::Role;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_logs_hold_no_token_and_no_key() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_global_default(subscriber);
    let h = harness(unlimited());
    let station = h.tokens[&Role::Station].clone();
    let r = send(
        &h.router,
        request(
            "POST",
            "/v1/devices/ECU-2/provision",
            Some(&station),
            None,
            &[("x-request-id", "req-42"), ("idempotency-key", "log-1")],
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    let body = r.json();
    // A replay and a refused call log too.
    let again = send(
        &h.router,
        request(
            "POST",
            "/v1/devices/ECU-2/provision",
            Some(&station),
            None,
            &[("idempotency-key", "log-1")],
        ),
    )
    .await;
    assert_eq!(again.status, 200);
    let _ = call(&h, "GET", "/v1/devices", Some(&station), None).await;
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("req-42"), "{log}");
    assert!(log.contains("station-1"), "{log}");
    assert!(log.contains("ECU-2"), "{log}");
    let mut secrets = vec![station.clone(), station[3..].to_owned()];
    for k in ["auth", "key_update", "roll_seed"] {
        secrets.push(body["keys"][k].as_str().unwrap().to_owned());
    }
    for update in body["she"].as_array().unwrap() {
        secrets.push(update["m2"].as_str().unwrap().to_owned());
    }
    for secret in &secrets {
        assert!(
            !log.to_lowercase().contains(&secret.to_lowercase()),
            "the log holds {secret}:\n{log}"
        );
    }
}
