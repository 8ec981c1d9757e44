//! Every role on every endpoint: allowed, 403, or 401 exactly as the permission table says.
//! An allowed call runs on a fresh fleet and must succeed with the endpoint's success status.

mod common;

use common::*;
use fleetkey::access::Role;
use fleetkey_server::auth::allowed;
use fleetkey_server::routes::{ROUTES, Route};

/// A request that succeeds on a fresh harness fleet, for each operation.
fn example(route: &Route, spare_token: &str) -> (String, Option<&'static str>) {
    let path = match route.op {
        "showDevice" | "refreshDevice" | "suspendDevice" | "revokeDevice"
        | "decommissionDevice" => route.path.replace("{serial}", "ECU-1"),
        "provisionDevice" => route.path.replace("{serial}", "ECU-2"),
        "resumeDevice" => route.path.replace("{serial}", "ECU-S"),
        "activateGeneration" => route.path.replace("{generation}", "3"),
        "deactivateGeneration" | "destroyGeneration" | "revokeGeneration" => {
            route.path.replace("{generation}", "1")
        }
        "showGrant" | "denyGrant" => route.path.replace("{id}", "1"),
        "revokeToken" => route.path.replace("{id}", spare_token),
        _ => route.path.to_owned(),
    };
    let body = match route.body {
        None => None,
        Some("Empty") => Some(""),
        Some("Reason") => Some(r#"{"reason":"test"}"#),
        Some("NewDevice") => Some(r#"{"serial":"NEW-1","labels":["line=2"]}"#),
        Some("Import") => Some(
            r#"{"devices":[{"serial":"IMP-1"},{"serial":"IMP-2","she_uid":"000000000000000000000000000002"}]}"#,
        ),
        Some("NewGeneration") => Some(r#"{"reason":"test","backup":"none"}"#),
        Some("GenerationChange") => Some(r#"{"reason":"test"}"#),
        Some("Retire") => Some(r#"{"reason":"test","force":true}"#),
        Some("NewGrant") => Some(
            r#"{"subject":"tech-2","role":"technician","scope":["ECU"],"valid_seconds":3600,"subject_key":"5866666666666666666666666666666666666666666666666666666666666666"}"#,
        ),
        Some("Deny") => Some(r#"{"reason":"test"}"#),
        Some("Publish") => Some(r#"{"reason":"test"}"#),
        Some("NewToken") => Some(r#"{"principal":"new-station","role":"station"}"#),
        Some(other) => panic!("no example body for {other}"),
    };
    (path, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_on_each_endpoint() {
    let shared = harness(unlimited());
    let before = snapshot(&shared);
    let mut checked = 0;
    for route in ROUTES {
        let Some(action) = route.action else {
            // Unauthenticated endpoints answer without a token.
            let r = call(&shared, route.method, route.path, None, None).await;
            assert_eq!(
                r.status.as_u16(),
                route.ok,
                "{} {}",
                route.method,
                route.path
            );
            continue;
        };
        let (path, body) = example(route, &shared.spare_token_id);
        // No token, a malformed header, an unknown, an expired and a revoked token: 401.
        for token in [
            None,
            Some("not-a-token"),
            Some(shared.expired.as_str()),
            Some(shared.revoked.as_str()),
        ] {
            let r = call(&shared, route.method, &path, token, body).await;
            assert_eq!(
                r.status,
                401,
                "{} {} with {token:?}: {}",
                route.method,
                path,
                String::from_utf8_lossy(&r.body)
            );
            assert_eq!(r.headers["content-type"], "application/problem+json");
            assert!(r.headers.contains_key("www-authenticate"));
        }
        let r = send(
            &shared.router,
            request(
                route.method,
                &path,
                None,
                body,
                &[("authorization", "Basic dXNlcjpwYXNz")],
            ),
        )
        .await;
        assert_eq!(r.status, 401);
        for role in Role::ALL {
            let token = shared.tokens[&role].clone();
            if !allowed(role, action) {
                let r = call(&shared, route.method, &path, Some(&token), body).await;
                assert_eq!(r.status, 403, "{role} {} {path}", route.method);
                assert_eq!(r.json()["type"], "urn:fleetkey:problem:forbidden");
                checked += 1;
                continue;
            }
            // Allowed: on a fresh fleet the example succeeds.
            let fresh = harness(unlimited());
            let token = fresh.tokens[&role].clone();
            let (path, body) = example(route, &fresh.spare_token_id);
            let r = call(&fresh, route.method, &path, Some(&token), body).await;
            assert_eq!(
                r.status.as_u16(),
                route.ok,
                "{role} {} {path}: {}",
                route.method,
                String::from_utf8_lossy(&r.body)
            );
            checked += 1;
        }
    }
    assert!(checked >= 5 * 31, "{checked}");
    // The refused calls changed nothing.
    assert_eq!(snapshot(&shared), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_technician_reads_only_its_own_grants() {
    let h = harness(unlimited());
    let admin = h.tokens[&Role::Admin].clone();
    let tech = h.tokens[&Role::Technician].clone();
    let r = call(&h, "POST", "/v1/grants", Some(&admin), Some(&format!(
        r#"{{"subject":"someone-else","role":"technician","scope":[""],"valid_seconds":60,"subject_key":"{SUBJECT_KEY}"}}"#
    )))
    .await;
    assert_eq!(r.status, 201);
    let other = r.json()["id"].as_u64().unwrap();
    let all = call(&h, "GET", "/v1/grants", Some(&admin), None)
        .await
        .json();
    assert_eq!(all["grants"].as_array().unwrap().len(), 2);
    let mine = call(&h, "GET", "/v1/grants", Some(&tech), None)
        .await
        .json();
    let mine = mine["grants"].as_array().unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["subject"], TECH_SUBJECT);
    assert_eq!(
        call(&h, "GET", "/v1/grants/1", Some(&tech), None)
            .await
            .status,
        200
    );
    let r = call(&h, "GET", &format!("/v1/grants/{other}"), Some(&tech), None).await;
    assert_eq!(r.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_through_the_api_stops_working_at_once() {
    let h = harness(unlimited());
    let admin = h.tokens[&Role::Admin].clone();
    let r = call(
        &h,
        "POST",
        "/v1/tokens",
        Some(&admin),
        Some(r#"{"principal":"st-9","role":"station","expires_in_seconds":3600}"#),
    )
    .await;
    assert_eq!(r.status, 201);
    let issued = r.json();
    let secret = issued["secret"].as_str().unwrap().to_owned();
    let id = issued["id"].as_str().unwrap().to_owned();
    let path = "/v1/devices/ECU-2/provision";
    assert_eq!(
        call(&h, "POST", path, Some(&secret), None).await.status,
        200
    );
    // The list never shows a token or its hash.
    let list = call(&h, "GET", "/v1/tokens", Some(&admin), None).await;
    let text = String::from_utf8_lossy(&list.body).to_string();
    assert!(!text.contains(&secret) && !text.contains(&secret[3..]));
    assert!(!text.contains("hash"));
    let r = call(
        &h,
        "POST",
        &format!("/v1/tokens/{id}/revoke"),
        Some(&admin),
        Some(r#"{"reason":"lost"}"#),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        call(&h, "POST", path, Some(&secret), None).await.status,
        401
    );
    // The audit records issue and revoke, never the token.
    let audit = call(&h, "GET", "/v1/audit?action=token", Some(&admin), None).await;
    let text = String::from_utf8_lossy(&audit.body).to_string();
    assert!(
        text.contains("token.issue") && text.contains("token.revoke"),
        "{text}"
    );
    assert!(!text.contains(&secret[3..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_per_principal() {
    let h = harness(fleetkey_server::ServiceConfig {
        rate_per_second: 0.001,
        rate_burst: 2,
        ..Default::default()
    });
    let auditor = h.tokens[&Role::Auditor].clone();
    let admin = h.tokens[&Role::Admin].clone();
    for _ in 0..2 {
        assert_eq!(
            call(&h, "GET", "/v1/status", Some(&auditor), None)
                .await
                .status,
            200
        );
    }
    let r = call(&h, "GET", "/v1/status", Some(&auditor), None).await;
    assert_eq!(r.status, 429);
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    assert_eq!(r.json()["type"], "urn:fleetkey:problem:rate-limited");
    // Another principal is not affected.
    assert_eq!(
        call(&h, "GET", "/v1/status", Some(&admin), None)
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_of_another_fleet_is_refused() {
    let h = harness(unlimited());
    // A token record of another fleet in this store (as a shared database might hold).
    let (id, secret) = fleetkey::access::new_token().unwrap();
    let token = fleetkey::access::ApiToken {
        id,
        hash: fleetkey::access::token_hash(secret.expose()),
        principal: "station-x".into(),
        role: Role::Station,
        subject: None,
        fleet: "another-fleet".into(),
        created_at: 0,
        created_by: "test".into(),
        expires_at: None,
        revoked_at: None,
    };
    let mut fleet = fleetkey::fleet::Fleet::open(&h.home, access(&h.clock, "test")).unwrap();
    fleetkey::store::transact(fleet.store_mut(), |tx| Ok(tx.insert_token(&token)?)).unwrap();
    let r = call(
        &h,
        "POST",
        "/v1/devices/ECU-2/provision",
        Some(secret.expose()),
        None,
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        snapshot(&h).1.iter().find(|d| d.0 == "ECU-2").unwrap().1,
        "pre-active"
    );
}
