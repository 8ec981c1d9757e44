//! The service's types that hold a bearer token or a response body (which can carry provisioned
//! keys) print with `{:?}` without them.

use axum::http::StatusCode;
use fleetkey_server::app::{Ctx, Reply};
use fleetkey_server::auth::Credentials;
use zeroize::Zeroizing;

const TOKEN: &str = "fk_3q2Xc9PvW7tLm0Rj5KsYb8NfHd4Ge6Ua";
const AUTH_KEY: &str = "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf";

#[track_caller]
fn assert_hides(debug: &str, text: &str) {
    for piece in text.as_bytes().windows(8) {
        let piece = std::str::from_utf8(piece).unwrap();
        assert!(!debug.contains(piece), "{debug:?} shows {piece:?}");
    }
    for window in text.as_bytes().windows(4) {
        let decimal = format!("{window:?}");
        let decimal = &decimal[1..decimal.len() - 1];
        assert!(
            !debug.contains(decimal),
            "{debug:?} shows the bytes {decimal}"
        );
    }
}

fn credentials() -> Credentials {
    Credentials {
        bearer: Some(Zeroizing::new(TOKEN.to_owned())),
        malformed: None,
        client_cert: true,
    }
}

#[test]
fn credentials_and_the_request_context_print_no_token() {
    let debug = format!("{:?}", credentials());
    assert!(debug.contains("client_cert: true"), "{debug}");
    assert_hides(&debug, TOKEN);
    let ctx = Ctx {
        credentials: credentials(),
        idempotency_key: Some("k-1".into()),
        method: "POST".into(),
        path: "/v1/devices/ECU-1/provision".into(),
    };
    for debug in [format!("{ctx:?}"), format!("{ctx:#?}")] {
        assert!(debug.contains("/v1/devices/ECU-1/provision"), "{debug}");
        assert_hides(&debug, TOKEN);
    }
}

#[test]
fn a_reply_prints_its_status_not_its_body() {
    let body = serde_json::json!({"device": {"serial": "ECU-1"}, "keys": {"auth": AUTH_KEY}});
    let reply = Reply::json(StatusCode::OK, &body).unwrap();
    let debug = format!("{reply:?}");
    assert!(debug.contains("200"), "{debug}");
    assert_hides(&debug, AUTH_KEY);
    assert_hides(&debug, &body.to_string());
}
