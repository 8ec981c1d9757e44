//! The operator console at `/ui`: server-rendered HTML pages over the same operations, roles and
//! problems as the JSON API, shipped in the binary (no JavaScript, no build step).
//!
//! - **Signing in**: the user pastes an API token (`fleetkey token issue`) into `/ui/login`. The
//!   browser gets a random session id in a cookie that is `HttpOnly`, `SameSite=Strict`, `Path=/ui`
//!   and `Secure` on TLS; the token stays in this instance's memory ([`session`]). The token never
//!   appears in a URL, a page or browser storage.
//! - **Roles**: every page and every action is admitted by `AppState::admit`, the decision the
//!   JSON API uses ([`crate::auth::allowed`]), against the session's token re-authenticated on
//!   each request (a revoked token ends its sessions). The navigation and the action buttons
//!   show only what the role may do; a URL typed by hand gets the same 403 as the API.
//! - **Forgery**: every state-changing form carries the session's anti-forgery value, compared in
//!   constant time; a POST whose `Origin` is another origin, or that a browser marks
//!   `Sec-Fetch-Site: cross-site`, is refused before anything else. A refused post changes
//!   nothing.
//! - **Headers**: `Cache-Control: no-store` (pages show key material once: provisioning, an
//!   issued token), a content security policy that allows only this origin's style sheet and
//!   forms, and no framing.
//!
//! The pages: `fleet` (the summary, migration progress, what the lifecycle policy says is due),
//! `devices`, `generations`, `grants` (and governance records), `audit` (with chain
//! verification), `tokens` (admin).

use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use fleetkey::access::ApiToken;
use fleetkey::fleet::Fleet;
use maud::html;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::app::{AppState, ConnInfo};
use crate::auth::{Action, Credentials, Principal, allowed};
use crate::problem::ApiError;

mod audit;
mod devices;
mod fleet;
mod generations;
mod grants;
mod layout;
pub mod session;
mod tokens;

pub use session::Sessions;

use layout::Viewer;

/// The console's route templates (the metrics label requests by them).
pub const PATHS: &[&str] = &[
    "/ui",
    "/ui/style.css",
    "/ui/login",
    "/ui/logout",
    "/ui/devices",
    "/ui/device",
    "/ui/device/confirm",
    "/ui/device/act",
    "/ui/generations",
    "/ui/generations/confirm",
    "/ui/generations/act",
    "/ui/grants",
    "/ui/grants/issue",
    "/ui/grants/confirm",
    "/ui/grants/act",
    "/ui/audit",
    "/ui/tokens",
    "/ui/tokens/issue",
    "/ui/tokens/confirm",
    "/ui/tokens/act",
];

/// The console's routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(fleet::page))
        .route("/ui/style.css", get(style))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/devices", get(devices::list))
        .route("/ui/device", get(devices::show))
        .route("/ui/device/confirm", get(devices::confirm))
        .route("/ui/device/act", post(devices::act))
        .route("/ui/generations", get(generations::page))
        .route("/ui/generations/confirm", get(generations::confirm))
        .route("/ui/generations/act", post(generations::act))
        .route("/ui/grants", get(grants::page))
        .route("/ui/grants/issue", post(grants::issue))
        .route("/ui/grants/confirm", get(grants::confirm))
        .route("/ui/grants/act", post(grants::act))
        .route("/ui/audit", get(audit::page))
        .route("/ui/tokens", get(tokens::page))
        .route("/ui/tokens/issue", post(tokens::issue))
        .route("/ui/tokens/confirm", get(tokens::confirm))
        .route("/ui/tokens/act", post(tokens::act))
        .layer(axum::middleware::map_response(headers))
}

const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

async fn headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    r
}

async fn style() -> Response {
    let mut r = layout::STYLE.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    r
}

/// What the console needs of a request before its body: the session cookie, the connection and
/// whether the request comes from this origin.
pub(crate) struct Visit {
    cookie: Option<Zeroizing<String>>,
    conn: Option<ConnInfo>,
    cross_site: bool,
}

impl<S: Send + Sync> FromRequestParts<S> for Visit {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let conn = parts.extensions.get::<ConnInfo>().copied();
        Ok(Visit {
            cookie: session_cookie(&parts.headers),
            cross_site: cross_site(&parts.headers, conn.is_some_and(|c| c.tls)),
            conn,
        })
    }
}

/// The session id from the `Cookie` header(s).
fn session_cookie(headers: &HeaderMap) -> Option<Zeroizing<String>> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == session::COOKIE)
        .map(|(_, value)| Zeroizing::new(value.to_owned()))
}

/// Whether the request says it comes from another site: `Sec-Fetch-Site: cross-site`, or an
/// `Origin` other than this service's (scheme and `Host`).
fn cross_site(headers: &HeaderMap, tls: bool) -> bool {
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site" || v.as_bytes() == b"same-site")
    {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return true;
    };
    let ours = format!("{}://{host}", if tls { "https" } else { "http" });
    origin.as_bytes() != ours.as_bytes()
}

/// A signed-in user: the session, its token (authenticated on this request) and the
/// credentials the role checks read.
pub(crate) struct User {
    session: session::Session,
    token: ApiToken,
    credentials: Credentials,
}

impl User {
    pub(crate) fn may(&self, action: Action) -> bool {
        allowed(self.token.role, action)
    }

    pub(crate) fn csrf(&self) -> &str {
        &self.session.csrf
    }

    pub(crate) fn viewer(&self) -> Viewer<'_> {
        Viewer {
            name: &self.token.principal,
            role: self.token.role,
            csrf: &self.session.csrf,
            flash: self.session.flash.as_deref(),
        }
    }

    /// Whether the user may `action`: the JSON API's decision (role, client certificate, rate),
    /// for a page that only offers the action (a confirmation).
    pub(crate) fn admitted(&self, s: &AppState, action: Action) -> Result<(), ApiError> {
        s.admit(self.token.clone(), &self.credentials, action)
            .map(|_| ())
    }

    /// Admits the user for `action` (role, client certificate, rate: as the JSON API does) and
    /// runs `f` with a pooled fleet handle whose actor is the principal.
    pub(crate) async fn run<T, F>(&self, s: &AppState, action: Action, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Fleet, &Principal) -> Result<T, ApiError> + Send + 'static,
    {
        let principal = s.admit(self.token.clone(), &self.credentials, action)?;
        s.pool()
            .run(move |fleet| {
                fleet.set_actor(&principal.name);
                f(fleet, &principal)
            })
            .await
    }

    /// The page for an error.
    pub(crate) fn error(&self, current: &str, title: &str, e: &ApiError) -> Response {
        layout::error_page(&self.viewer(), current, title, e)
    }

    /// A full page.
    pub(crate) fn page(&self, current: &str, title: &str, body: maud::Markup) -> Response {
        layout::respond(
            StatusCode::OK,
            layout::page(&self.viewer(), current, title, body),
        )
    }

    /// Leaves `message` for the next page and sends the browser there (after a change: a reload
    /// does not repeat it).
    pub(crate) fn done(&self, s: &AppState, message: String, to: &str) -> Response {
        s.sessions().flash(&self.session, message);
        layout::see_other(to)
    }
}

/// A page (GET) extracts its signed-in user directly; a visitor who is not signed in goes to the
/// sign-in page.
impl FromRequestParts<AppState> for User {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, Self::Rejection> {
        let Ok(visit) = Visit::from_request_parts(parts, s).await;
        visit.user(s, true).await
    }
}

impl Visit {
    /// The signed-in user, or the response for a visitor who is not (a GET goes to the sign-in
    /// page; anything else is refused with 401 and changes nothing).
    pub(crate) async fn user(&self, s: &AppState, get: bool) -> Result<User, Response> {
        let not_signed_in = |why: &str| {
            if get {
                layout::see_other("/ui/login")
            } else {
                layout::respond(
                    StatusCode::UNAUTHORIZED,
                    layout::bare(
                        "Not signed in",
                        html! {
                            div.problem role="alert" {
                                p { strong { "Not signed in" } ": " (why) }
                                p.hint { "What to do: " a href="/ui/login" { "sign in" } " again; nothing was changed." }
                            }
                        },
                    ),
                )
            }
        };
        let Some(id) = &self.cookie else {
            return Err(not_signed_in("no session"));
        };
        let Some(session) = s.sessions().get(id) else {
            return Err(not_signed_in("the session is unknown or has ended"));
        };
        let credentials = Credentials {
            bearer: Some(session.bearer.clone()),
            malformed: None,
            client_cert: self.conn.is_some_and(|c| c.client_cert),
        };
        match s.authenticate(&credentials).await {
            Ok(token) => Ok(User {
                session,
                token,
                credentials,
            }),
            Err(e) => {
                s.sessions().end(&session);
                Err(not_signed_in(&e.problem().detail))
            }
        }
    }

    /// The signed-in user of a state-changing form, after the forgery checks: the request comes
    /// from this origin and the form carries the session's anti-forgery value. Otherwise the
    /// refusal (403), and nothing is done.
    pub(crate) async fn poster(&self, s: &AppState, csrf: &str) -> Result<User, Response> {
        if self.cross_site {
            tracing::info!("console: a cross-site form post refused");
            return Err(forged("the form was sent from another site"));
        }
        let user = self.user(s, false).await?;
        if !user.session.form_is_ours(csrf) {
            tracing::info!("console: a form without this session's anti-forgery value refused");
            return Err(forged(
                "the form does not carry this session's anti-forgery value",
            ));
        }
        Ok(user)
    }
}

fn forged(why: &str) -> Response {
    layout::respond(
        StatusCode::FORBIDDEN,
        layout::bare(
            "Refused",
            html! {
                div.problem role="alert" {
                    p { strong { "Forged request refused" } ": " (why) "." }
                    p.hint { "What to do: open the page again from " a href="/ui" { "the console" } " and send the form from there; nothing was changed." }
                }
            },
        ),
    )
}

async fn login_form(State(s): State<AppState>, v: Visit) -> Response {
    if v.user(&s, true).await.is_ok() {
        return layout::see_other("/ui");
    }
    layout::respond(StatusCode::OK, login_page(None))
}

fn login_page(error: Option<&crate::problem::Problem>) -> maud::Markup {
    layout::bare(
        "Sign in",
        html! {
            @if let Some(p) = error { (layout::problem_box(p)) }
            form.stack method="post" action="/ui/login" {
                label for="token" { "API token" }
                input #token type="password" name="token" required autocomplete="off" autofocus spellcheck="false";
                p.muted { "A token from " code { "fleetkey token issue --principal NAME --role ROLE" } ". It is kept on the service for this session, never in the browser." }
                div.buttons { button.primary type="submit" { "Sign in" } }
            }
        },
    )
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

impl Drop for LoginForm {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.token.zeroize();
    }
}

async fn login(
    State(s): State<AppState>,
    v: Visit,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    if v.cross_site {
        return forged("the sign-in form was sent from another site");
    }
    let token = Zeroizing::new(form.token.trim().to_owned());
    let credentials = Credentials {
        bearer: (!token.is_empty() && token.len() <= 256).then(|| token.clone()),
        malformed: None,
        client_cert: v.conn.is_some_and(|c| c.client_cert),
    };
    match s.authenticate(&credentials).await {
        Ok(t) => {
            let Some(id) = s.sessions().create(token) else {
                let e = ApiError::Internal("no randomness for a session id".into());
                return layout::respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    login_page(Some(&e.problem())),
                );
            };
            tracing::info!(principal = %t.principal, role = %t.role, "console: signed in");
            let secure = if v.conn.is_some_and(|c| c.tls) {
                "; Secure"
            } else {
                ""
            };
            let cookie = Zeroizing::new(format!(
                "{}={}; Path=/ui; HttpOnly; SameSite=Strict{secure}",
                session::COOKIE,
                id.as_str()
            ));
            let mut r = layout::see_other(if allowed(t.role, Action::Status) {
                "/ui"
            } else if allowed(t.role, Action::GrantRead) {
                "/ui/grants"
            } else {
                "/ui/devices"
            });
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Err(e) => {
            let mut p = e.problem();
            p.hint = Some(
                "paste a token from `fleetkey token issue`; `fleetkey token list` shows whether it was revoked or expired"
                    .into(),
            );
            layout::respond(StatusCode::UNAUTHORIZED, login_page(Some(&p)))
        }
    }
}

#[derive(Deserialize)]
struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(s): State<AppState>,
    v: Visit,
    axum::Form(form): axum::Form<CsrfOnly>,
) -> Response {
    let user = match v.poster(&s, &form.csrf).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    s.sessions().end(&user.session);
    let mut r = layout::see_other("/ui/login");
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "fleetkey_session=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    r
}

/// A form field that must be a number (`problem` says which, as the page shows it: "a generation
/// number"); surrounding spaces are ignored.
pub(crate) fn number<T: std::str::FromStr>(
    field: &str,
    text: &str,
    problem: &str,
) -> Result<T, ApiError> {
    text.trim().parse().map_err(|_| ApiError::Invalid {
        field: field.into(),
        problem: problem.into(),
    })
}

/// A form field that must be one of `names`.
pub(crate) fn one_of<'a>(field: &str, value: &str, names: &[&'a str]) -> Result<&'a str, ApiError> {
    names
        .iter()
        .find(|n| **n == value)
        .copied()
        .ok_or_else(|| ApiError::Invalid {
            field: field.into(),
            problem: format!("one of {}", names.join(", ")),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn a_post_from_another_origin_is_cross_site() {
        let ours = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
        ]);
        assert!(!cross_site(&ours, false));
        assert!(cross_site(&ours, true), "https is another origin");
        let theirs = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://localhost:9000"),
        ]);
        assert!(cross_site(&theirs, false));
        let marked = headers(&[("host", "a"), ("sec-fetch-site", "cross-site")]);
        assert!(cross_site(&marked, false));
        assert!(
            !cross_site(&headers(&[("host", "a")]), false),
            "no Origin: a same-origin GET"
        );
        assert!(
            cross_site(&headers(&[("origin", "http://a")]), false),
            "an Origin but no Host"
        );
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; fleetkey_session=abc; b=2")]);
        assert_eq!(
            session_cookie(&h).as_deref().map(String::as_str),
            Some("abc")
        );
        assert!(session_cookie(&headers(&[("cookie", "fleetkey_sessionx=1")])).is_none());
    }
}
