//! The console's security in process (the browser test, tests/browser/console.py, drives the
//! same pages in Chromium): each page answers a role exactly as the JSON API's matching endpoint
//! does; sign-in sets an HttpOnly SameSite=Strict cookie (Secure on TLS); forms without the
//! session's anti-forgery value, from another origin, or without a session change nothing; a
//! revoked token ends its sessions; arbitrary form bodies get a 4xx page, never a 5xx, and
//! change nothing.

mod common;

use axum::body::Body;
use axum::http::Request;
use common::*;
use fleetkey::access::Role;
use fleetkey_server::app::ConnInfo;
use proptest::prelude::*;

fn form(path: &str, body: &str, cookie: Option<&str>, headers: &[(&str, &str)]) -> Request<Body> {
    let mut b = Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("host", "console.test");
    if let Some(c) = cookie {
        b = b.header("cookie", format!("fleetkey_session={c}"));
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Body::from(body.to_owned())).unwrap()
}

fn get(path: &str, cookie: &str) -> Request<Body> {
    Request::builder()
        .uri(path)
        .header("host", "console.test")
        .header("cookie", format!("fleetkey_session={cookie}"))
        .body(Body::empty())
        .unwrap()
}

fn text(r: &Response) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// Signs in with `token`; returns the session id and the response.
async fn sign_in(h: &Harness, token: &str) -> (String, Response) {
    let r = send(
        &h.router,
        form("/ui/login", &format!("token={token}"), None, &[]),
    )
    .await;
    assert_eq!(r.status, 303, "{}", text(&r));
    let cookie = r.headers["set-cookie"].to_str().unwrap().to_owned();
    let id = cookie
        .strip_prefix("fleetkey_session=")
        .and_then(|rest| rest.split(';').next())
        .unwrap()
        .to_owned();
    (id, r)
}

/// The session's anti-forgery value, read off a page's form.
async fn csrf(h: &Harness, id: &str) -> String {
    let page = text(&send(&h.router, get("/ui/devices", id)).await);
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with csrf")
        + 19;
    page[at..at + 64].to_owned()
}

#[tokio::test]
async fn every_page_answers_a_role_as_the_api_does() {
    let h = harness(unlimited());
    let pages = [
        ("/ui", "/v1/status"),
        ("/ui/devices", "/v1/devices"),
        ("/ui/device?serial=ECU-1", "/v1/devices/ECU-1"),
        ("/ui/generations", "/v1/generations"),
        ("/ui/grants", "/v1/grants"),
        ("/ui/audit", "/v1/audit"),
        ("/ui/tokens", "/v1/tokens"),
    ];
    for role in Role::ALL {
        let token = h.tokens[&role].clone();
        let (id, _) = sign_in(&h, &token).await;
        for (page, api) in pages {
            let console = send(&h.router, get(page, &id)).await;
            let json = call(&h, "GET", api, Some(&token), None).await;
            assert_eq!(
                console.status,
                json.status,
                "{role} on {page} vs {api}: {}",
                text(&console)
            );
            assert_eq!(
                console.headers["content-type"], "text/html; charset=utf-8",
                "{page}"
            );
            if console.status == 403 {
                assert!(text(&console).contains("may not"), "{}", text(&console));
            }
        }
    }
}

#[tokio::test]
async fn the_session_cookie_and_headers() {
    let h = harness(unlimited());
    let admin = h.tokens[&Role::Admin].clone();
    let (id, r) = sign_in(&h, &admin).await;
    assert_eq!(id.len(), 64);
    let cookie = r.headers["set-cookie"].to_str().unwrap();
    assert!(
        cookie.ends_with("; Path=/ui; HttpOnly; SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains(&admin), "the cookie carries no token");
    let page = send(&h.router, get("/ui", &id)).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.headers["cache-control"], "no-store");
    assert!(
        page.headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    assert_eq!(page.headers["x-frame-options"], "DENY");
    assert!(!text(&page).contains(&admin), "no page shows the token");

    // On TLS the cookie is Secure.
    let mut req = form("/ui/login", &format!("token={admin}"), None, &[]);
    req.extensions_mut().insert(ConnInfo {
        peer: "127.0.0.1:1".parse().unwrap(),
        client_cert: false,
        tls: true,
    });
    let r = send(&h.router, req).await;
    assert!(
        r.headers["set-cookie"]
            .to_str()
            .unwrap()
            .ends_with("; Secure")
    );

    // A wrong token signs nobody in and says what to do.
    let r = send(&h.router, form("/ui/login", "token=fk_nope", None, &[])).await;
    assert_eq!(r.status, 401);
    assert!(r.headers.get("set-cookie").is_none());
    assert!(text(&r).contains("fleetkey token issue"), "{}", text(&r));
}

#[tokio::test]
async fn forged_and_sessionless_posts_change_nothing() {
    let h = harness(unlimited());
    let (id, _) = sign_in(&h, &h.tokens[&Role::Admin].clone()).await;
    let good = csrf(&h, &id).await;
    let before = snapshot(&h);
    let suspend = |csrf: &str| format!("serial=ECU-1&action=suspend&reason=forged&csrf={csrf}");

    let r = send(
        &h.router,
        form("/ui/device/act", &suspend(""), Some(&id), &[]),
    )
    .await;
    assert_eq!(r.status, 403, "no anti-forgery value");
    let r = send(
        &h.router,
        form("/ui/device/act", &suspend(&"0".repeat(64)), Some(&id), &[]),
    )
    .await;
    assert_eq!(r.status, 403, "another anti-forgery value");
    let r = send(
        &h.router,
        form(
            "/ui/device/act",
            &suspend(&good),
            Some(&id),
            &[("origin", "https://evil.example")],
        ),
    )
    .await;
    assert_eq!(r.status, 403, "another origin");
    let r = send(
        &h.router,
        form(
            "/ui/device/act",
            &suspend(&good),
            Some(&id),
            &[("sec-fetch-site", "cross-site")],
        ),
    )
    .await;
    assert_eq!(r.status, 403, "marked cross-site");
    let r = send(
        &h.router,
        form("/ui/device/act", &suspend(&good), None, &[]),
    )
    .await;
    assert_eq!(r.status, 401, "no session");
    let mut tampered = id.clone();
    tampered.replace_range(..1, if id.starts_with('a') { "b" } else { "a" });
    let r = send(
        &h.router,
        form("/ui/device/act", &suspend(&good), Some(&tampered), &[]),
    )
    .await;
    assert_eq!(r.status, 401, "a tampered session id");
    assert!(text(&r).contains("nothing was changed"));
    assert_eq!(snapshot(&h), before);

    // The same form, from this origin with the value, does it.
    let r = send(
        &h.router,
        form(
            "/ui/device/act",
            &suspend(&good),
            Some(&id),
            &[("origin", "http://console.test")],
        ),
    )
    .await;
    assert_eq!(r.status, 303, "{}", text(&r));
    assert_ne!(snapshot(&h), before);
}

#[tokio::test]
async fn a_revoked_token_ends_its_sessions() {
    let h = harness(unlimited());
    let admin = h.tokens[&Role::Admin].clone();
    let (spare_session, _) = {
        // Sign in with the spare (auditor) token, then revoke it through the API.
        let mut fleet = fleetkey::fleet::Fleet::open(&h.home, access(&h.clock, "setup")).unwrap();
        let (_, secret) = fleet
            .issue_token("console-user", Role::Auditor, None, None)
            .unwrap();
        let token = secret.expose().to_owned();
        let ids = fleet.tokens().unwrap();
        let id = ids
            .iter()
            .find(|t| t.principal == "console-user")
            .unwrap()
            .id
            .clone();
        let signed = sign_in(&h, &token).await;
        let r = call(
            &h,
            "POST",
            &format!("/v1/tokens/{id}/revoke"),
            Some(&admin),
            Some("{}"),
        )
        .await;
        assert_eq!(r.status, 200, "{}", text(&r));
        signed
    };
    let r = send(&h.router, get("/ui", &spare_session)).await;
    assert_eq!(r.status, 303);
    assert_eq!(r.headers["location"], "/ui/login");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Any form body on any console form, signed in and with the anti-forgery value: a page with
    /// a 4xx (or the harmless redirect of sign-out), never a 5xx, and nothing changed.
    #[test]
    fn arbitrary_forms_get_a_page_and_change_nothing(
        target in prop::sample::select(vec![
            "/ui/device/act", "/ui/generations/act", "/ui/grants/issue", "/ui/grants/act",
            "/ui/tokens/issue", "/ui/tokens/act", "/ui/login",
        ]),
        body in "[a-z_=&%0-9A-F.:-]{0,80}",
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let h = harness(unlimited());
            let (id, _) = sign_in(&h, &h.tokens[&Role::Admin].clone()).await;
            let good = csrf(&h, &id).await;
            let before = snapshot(&h);
            let r = send(&h.router, form(target, &format!("{body}&csrf={good}"), Some(&id), &[])).await;
            prop_assert!(r.status.is_client_error(), "{target} {body:?}: {} {}", r.status, text(&r));
            prop_assert_eq!(snapshot(&h), before);
            Ok(())
        })?;
    }
}
