//! The served OpenAPI document equals `docs/openapi.json`, and lists exactly the router's routes.
//! `FLEETKEY_WRITE_OPENAPI=1 cargo test -p fleetkey-server --test openapi` rewrites the file.

mod common;

use std::collections::BTreeSet;

use common::*;
use fleetkey::access::Role;
use fleetkey_server::routes::ROUTES;

fn checked_in() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_document_equals_the_checked_in_file() {
    let h = harness(unlimited());
    let r = call(&h, "GET", "/openapi.json", None, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/json");
    let served = String::from_utf8(r.body).unwrap();
    assert_eq!(served, fleetkey_server::openapi::document_text());
    if std::env::var_os("FLEETKEY_WRITE_OPENAPI").is_some() {
        std::fs::write(checked_in(), &served).unwrap();
    }
    let file = std::fs::read_to_string(checked_in()).expect("docs/openapi.json");
    assert!(
        file == served,
        "docs/openapi.json differs from the served document: rerun with FLEETKEY_WRITE_OPENAPI=1 and review the diff"
    );
    let doc: serde_json::Value = serde_json::from_str(&served).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_documented_and_served() {
    let doc = fleetkey_server::openapi::document();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            documented.insert((method.to_uppercase(), path.clone()));
            assert!(op["operationId"].is_string());
            assert!(op["responses"].is_object());
            // Every $ref resolves.
            let text = op.to_string();
            for part in text.split("#/components/schemas/").skip(1) {
                let name: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric())
                    .collect();
                assert!(doc["components"]["schemas"][&name].is_object(), "{name}");
            }
        }
    }
    let table: BTreeSet<_> = ROUTES
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    assert_eq!(documented, table);
    let ops: BTreeSet<_> = ROUTES.iter().map(|r| r.op).collect();
    assert_eq!(ops.len(), ROUTES.len(), "operationIds are unique");
    // The router serves each: never the fallback's 404 no-route or a 405.
    let h = harness(unlimited());
    let auditor = h.tokens[&Role::Auditor].clone();
    for route in ROUTES {
        let path = route
            .path
            .replace("{serial}", "ECU-1")
            .replace("{generation}", "1")
            .replace("{id}", "1");
        let r = call(&h, route.method, &path, Some(&auditor), Some("{}")).await;
        if r.status == 404 {
            assert_ne!(
                r.json()["type"],
                "urn:fleetkey:problem:no-route",
                "{} {path}",
                route.method
            );
        }
        assert_ne!(r.status, 405, "{} {path}", route.method);
    }
}
