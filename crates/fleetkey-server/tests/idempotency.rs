//! `Idempotency-Key`: a retried provisioning or refresh returns the first response and never
//! bumps a revision twice; the same key with another request is refused; keys are per principal.

mod common;

use common::*;
use fleetkey::access::Role;

async fn post(h: &Harness, path: &str, token: &str, key: &str, body: Option<&str>) -> Response {
    send(
        &h.router,
        request("POST", path, Some(token), body, &[("idempotency-key", key)]),
    )
    .await
}

fn revision(h: &Harness, s: &str) -> u32 {
    let mut fleet = fleetkey::fleet::Fleet::open(&h.home, access(&h.clock, "check")).unwrap();
    fleet.device(&serial(s)).unwrap().revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_refresh_returns_the_first_response_and_bumps_once() {
    let h = harness(unlimited());
    let op = h.tokens[&Role::Operator].clone();
    let path = "/v1/devices/ECU-1/refresh";
    assert_eq!(revision(&h, "ECU-1"), 0);
    let first = post(
        &h,
        path,
        &op,
        "refresh-ECU-1-a",
        Some(r#"{"reason":"visit"}"#),
    )
    .await;
    assert_eq!(first.status, 200);
    assert!(!first.headers.contains_key("idempotent-replayed"));
    assert_eq!(first.json()["device"]["revision"], 1);
    let audit = snapshot(&h).0;
    for _ in 0..3 {
        let again = post(
            &h,
            path,
            &op,
            "refresh-ECU-1-a",
            Some(r#"{"reason":"visit"}"#),
        )
        .await;
        assert_eq!(again.status, 200);
        assert_eq!(again.headers["idempotent-replayed"], "true");
        assert_eq!(again.body, first.body);
    }
    assert_eq!(revision(&h, "ECU-1"), 1);
    assert_eq!(snapshot(&h).0, audit, "a replay appends no audit event");
    // The same key with another body: 422, nothing done.
    let other = post(
        &h,
        path,
        &op,
        "refresh-ECU-1-a",
        Some(r#"{"reason":"other"}"#),
    )
    .await;
    assert_eq!(other.status, 422);
    assert_eq!(
        other.json()["type"],
        "urn:fleetkey:problem:idempotency-key-reused"
    );
    // ... or another path.
    let other = post(
        &h,
        "/v1/devices/ECU-2/provision",
        &op,
        "refresh-ECU-1-a",
        None,
    )
    .await;
    assert_eq!(other.status, 422);
    assert_eq!(revision(&h, "ECU-1"), 1);
    // A new key is a new refresh.
    let next = post(
        &h,
        path,
        &op,
        "refresh-ECU-1-b",
        Some(r#"{"reason":"visit"}"#),
    )
    .await;
    assert_eq!(next.json()["device"]["revision"], 2);
    // Without a key every call refreshes.
    let plain = call(&h, "POST", path, Some(&op), None).await;
    assert_eq!(plain.json()["device"]["revision"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_per_principal_and_failures_can_be_retried() {
    let h = harness(unlimited());
    let st1 = h.tokens[&Role::Station].clone();
    let st2 = h.station2.clone();
    let path = "/v1/devices/ECU-2/provision";
    let a = post(&h, path, &st1, "k1", None).await;
    assert_eq!(a.status, 200);
    // Another principal's same key is its own: it runs (provisioning an active device again
    // returns the same material and changes nothing).
    let b = post(&h, path, &st2, "k1", None).await;
    assert_eq!(b.status, 200);
    assert!(!b.headers.contains_key("idempotent-replayed"));
    assert_eq!(a.json()["keys"], b.json()["keys"]);
    // A refused request leaves no claim behind: after the device is resumed the retry with the
    // same key runs.
    let op = h.tokens[&Role::Operator].clone();
    let refused = post(&h, "/v1/devices/ECU-S/refresh", &op, "k2", None).await;
    assert_eq!(refused.status, 409);
    let resumed = call(
        &h,
        "POST",
        "/v1/devices/ECU-S/resume",
        Some(&op),
        Some(r#"{"reason":"back"}"#),
    )
    .await;
    assert_eq!(resumed.status, 200);
    let retried = post(&h, "/v1/devices/ECU-S/refresh", &op, "k2", None).await;
    assert_eq!(retried.status, 200);
    assert!(!retried.headers.contains_key("idempotent-replayed"));
    assert_eq!(revision(&h, "ECU-S"), 1);
    // A bad key is refused before anything runs.
    let bad = post(&h, path, &st1, "with space", None).await;
    assert_eq!(bad.status, 422);
    assert_eq!(bad.json()["field"], "Idempotency-Key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_bump_once() {
    let h = harness(unlimited());
    let op = h.tokens[&Role::Operator].clone();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let router = h.router.clone();
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            send(
                &router,
                request(
                    "POST",
                    "/v1/devices/ECU-1/refresh",
                    Some(&op),
                    None,
                    &[("idempotency-key", "same")],
                ),
            )
            .await
        }));
    }
    let mut ok_bodies = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        match r.status.as_u16() {
            200 => ok_bodies.push(r.body),
            // The first request with the key was still running.
            409 => assert_eq!(
                r.json()["type"],
                "urn:fleetkey:problem:idempotency-key-in-progress"
            ),
            other => panic!("unexpected {other}: {}", String::from_utf8_lossy(&r.body)),
        }
    }
    assert!(!ok_bodies.is_empty());
    assert!(
        ok_bodies.windows(2).all(|w| w[0] == w[1]),
        "every 200 is the same response"
    );
    assert_eq!(revision(&h, "ECU-1"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_responses_hold_no_key_material_in_clear() {
    let h = harness(unlimited());
    let st = h.tokens[&Role::Station].clone();
    let r = post(&h, "/v1/devices/ECU-2/provision", &st, "clear-check", None).await;
    assert_eq!(r.status, 200);
    let key_hex = r.json()["keys"]["auth"].as_str().unwrap().to_owned();
    let key = hex::decode(&key_hex).unwrap();
    // Checkpoint the WAL, then look for the key (as bytes or as hex text) in every store file.
    let mut fleet = fleetkey::fleet::Fleet::open(&h.home, access(&h.clock, "check")).unwrap();
    fleet.store_mut().purge().unwrap();
    for file in fleet.store_mut().files() {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(key.len()).any(|w| w == key),
            "{}",
            file.display()
        );
        assert!(
            !bytes
                .windows(key_hex.len())
                .any(|w| w == key_hex.as_bytes()),
            "{}",
            file.display()
        );
    }
}
