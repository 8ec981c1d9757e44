//! The service: its state, the router, and what wraps every request (request id, timeout,
//! problem rendering, the log line, the body limit).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use fleetkey::fleet::Fleet;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;
use zeroize::Zeroizing;

use crate::auth::{self, Action, Credentials, Principal};
use crate::group_commit::{GroupCommit, GroupConfig};
use crate::pool::FleetPool;
use crate::problem::{self, ApiError, PROBLEM_JSON, Problem};
use crate::ratelimit::RateLimiter;
use crate::token_cache::TokenCache;
use fleetkey::access::ApiToken;
use fleetkey::fleet::group::GroupWrite;

/// Limits and policies of the service.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// The largest request body, bytes (413 above).
    pub body_limit: usize,
    /// How long a request may take from its headers to its response (503 after).
    pub request_timeout: Duration,
    /// Requests per second per principal (0: unlimited).
    pub rate_per_second: f64,
    /// Burst size per principal.
    pub rate_burst: u32,
    /// Station tokens only on connections with a verified client certificate (`--client-ca`).
    pub station_needs_client_cert: bool,
    /// How long a looked-up token is trusted before it is looked up again: the bound within
    /// which a revocation through another instance takes effect here ([`crate::token_cache`]).
    /// Zero: every request looks its token up.
    pub token_cache_ttl: Duration,
    /// How device writes are grouped into transactions ([`crate::group_commit`]).
    pub group: GroupConfig,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            body_limit: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            rate_per_second: 50.0,
            rate_burst: 100,
            station_needs_client_cert: false,
            token_cache_ttl: Duration::from_secs(1),
            group: GroupConfig::default(),
        }
    }
}

/// What every request shares: the pool of fleet handles, the rate limiter, the configuration.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: Arc<FleetPool>,
    limiter: RateLimiter,
    config: ServiceConfig,
    scheduler: Arc<std::sync::Mutex<crate::scheduler::LocalStatus>>,
    metrics: crate::metrics::Shared,
    tokens: Arc<TokenCache>,
    group: Arc<GroupCommit>,
    sessions: Arc<crate::console::Sessions>,
}

impl AppState {
    /// The state of a service over `pool`.
    /// Its group-commit writers start now (they open their fleet handles with the pool's
    /// opener when the first write comes).
    pub fn new(pool: FleetPool, config: ServiceConfig) -> Self {
        let metrics: crate::metrics::Shared = Arc::default();
        let group = GroupCommit::start(pool.opener(), config.group, Arc::clone(&metrics));
        AppState {
            inner: Arc::new(Inner {
                pool: Arc::new(pool),
                limiter: RateLimiter::new(config.rate_per_second, config.rate_burst),
                tokens: Arc::new(TokenCache::new(config.token_cache_ttl)),
                group: Arc::new(group),
                sessions: Arc::default(),
                config,
                scheduler: crate::scheduler::disabled(),
                metrics,
            }),
        }
    }

    /// The same state, reporting a running lifecycle scheduler's status (`GET /v1/scheduler`).
    pub fn with_scheduler(
        self,
        status: Arc<std::sync::Mutex<crate::scheduler::LocalStatus>>,
    ) -> Self {
        let inner = Inner {
            pool: Arc::clone(&self.inner.pool),
            limiter: RateLimiter::new(
                self.inner.config.rate_per_second,
                self.inner.config.rate_burst,
            ),
            config: self.inner.config.clone(),
            scheduler: status,
            metrics: Arc::clone(&self.inner.metrics),
            tokens: Arc::clone(&self.inner.tokens),
            group: Arc::clone(&self.inner.group),
            sessions: Arc::clone(&self.inner.sessions),
        };
        AppState {
            inner: Arc::new(inner),
        }
    }

    /// This instance's scheduler status.
    pub(crate) fn scheduler(&self) -> crate::scheduler::LocalStatus {
        self.inner
            .scheduler
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// This instance's request counters (`/metrics`).
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.metrics
    }

    /// The configuration.
    pub fn config(&self) -> &ServiceConfig {
        &self.inner.config
    }

    /// The pool.
    pub fn pool(&self) -> &Arc<FleetPool> {
        &self.inner.pool
    }

    /// The looked-up tokens ([`crate::token_cache`]); a revocation through this instance
    /// empties it.
    pub fn tokens(&self) -> &TokenCache {
        &self.inner.tokens
    }

    /// The console's sessions on this instance ([`crate::console::session`]).
    pub(crate) fn sessions(&self) -> &crate::console::Sessions {
        &self.inner.sessions
    }

    /// The token the credentials name, if it is of this fleet and usable now: from the cache, or
    /// looked up in the store (a read-only transaction on a pooled handle) and cached.
    pub(crate) async fn authenticate(
        &self,
        credentials: &Credentials,
    ) -> Result<ApiToken, ApiError> {
        if let Some(why) = credentials.malformed {
            return Err(ApiError::Unauthenticated(why));
        }
        let Some(bearer) = &credentials.bearer else {
            return Err(ApiError::Unauthenticated("no bearer token"));
        };
        let refused = ApiError::Unauthenticated("the token is unknown, expired or revoked");
        let hash = fleetkey::access::token_hash(bearer);
        if let Some(token) = self.inner.tokens.get(&hash) {
            // Expiry is checked on every request, cached or not.
            return if token.usable_at(self.inner.pool.now_ms()) {
                Ok(token)
            } else {
                Err(refused)
            };
        }
        let lookup = self.inner.tokens.begin();
        let bearer = bearer.clone();
        let found = self
            .inner
            .pool
            .run(move |fleet| Ok(fleet.authenticate_token(&bearer)?))
            .await?;
        let token = found.ok_or(refused)?;
        self.inner.tokens.put(lookup, hash, token.clone());
        Ok(token)
    }

    /// Authenticates the request and checks its role for `action` and its rate.
    pub(crate) async fn authorize(&self, ctx: &Ctx, action: Action) -> Result<Principal, ApiError> {
        match self.authenticate(&ctx.credentials).await {
            Ok(token) => self.admit(token, &ctx.credentials, action),
            Err(e) => {
                tracing::info!(
                    refused = e.problem().slug,
                    action = action.name(),
                    "not authorized"
                );
                Err(e)
            }
        }
    }

    /// Checks an authenticated token's role for `action` (and a station's client certificate)
    /// and its principal's rate: the one decision the JSON API and the console share.
    pub(crate) fn admit(
        &self,
        token: ApiToken,
        credentials: &Credentials,
        action: Action,
    ) -> Result<Principal, ApiError> {
        let needs_cert = self.inner.config.station_needs_client_cert;
        let principal = auth::check(token, credentials, action, needs_cert).inspect_err(|e| {
            tracing::info!(
                refused = e.problem().slug,
                action = action.name(),
                "not authorized"
            )
        })?;
        self.inner
            .limiter
            .check(&principal.name)
            .map_err(ApiError::RateLimited)?;
        tracing::info!(principal = %principal.name, role = %principal.role, action = action.name(), "authorized");
        Ok(principal)
    }

    /// Authenticates the request, checks its role for `action` and its rate, and runs `f` with a
    /// pooled fleet handle whose actor is the principal.
    pub(crate) async fn run<T, F>(&self, ctx: &Ctx, action: Action, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Fleet, &Principal) -> Result<T, ApiError> + Send + 'static,
    {
        let principal = self.authorize(ctx, action).await?;
        let span = tracing::Span::current();
        self.inner
            .pool
            .run(move |fleet| {
                let _entered = span.enter();
                fleet.set_actor(&principal.name);
                f(fleet, &principal)
            })
            .await
    }

    /// Runs an authorized device write in the next group-commit transaction
    /// ([`crate::group_commit`]); answers after it committed.
    pub(crate) async fn write(&self, write: GroupWrite) -> Result<Reply, ApiError> {
        self.inner.group.submit(write).await
    }
}

/// A JSON response. Its body may carry key material (provisioning): zeroized when dropped here,
/// and Debug shows only its length.
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// JSON body.
    pub body: Zeroizing<Vec<u8>>,
    /// Whether this is the stored response of an earlier request with the same idempotency key.
    pub replayed: bool,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .field("replayed", &self.replayed)
            .finish_non_exhaustive()
    }
}

impl Reply {
    /// `value` as JSON with `status`.
    pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Result<Reply, ApiError> {
        let body = serde_json::to_vec(value)
            .map_err(|e| ApiError::Internal(format!("response encoding: {e}")))?;
        Ok(Reply {
            status,
            body: Zeroizing::new(body),
            replayed: false,
        })
    }

    /// 200 with `value`.
    pub fn ok<T: Serialize>(value: &T) -> Result<Reply, ApiError> {
        Reply::json(StatusCode::OK, value)
    }

    /// A group commit's response ([`fleetkey::fleet::group`]).
    pub fn from_response(r: fleetkey::fleet::group::Response, replayed: bool) -> Reply {
        Reply {
            status: StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK),
            body: r.body,
            replayed,
        }
    }

    /// A stored response.
    pub fn replayed(status: u16, body: Zeroizing<Vec<u8>>) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
            body,
            replayed: true,
        }
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = (self.status, Bytes::copy_from_slice(&self.body)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.replayed {
            headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        response
    }
}

/// The request id (`x-request-id`, or generated).
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// What the accept loop knows of the connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    /// The peer.
    pub peer: std::net::SocketAddr,
    /// Whether the peer presented a client certificate the configured CA verified.
    pub client_cert: bool,
    /// Whether the connection is TLS (the console's cookie is then `Secure`).
    pub tls: bool,
}

/// What a handler needs of the request besides its body. Debug leaves the credentials out.
pub struct Ctx {
    /// Bearer token and client certificate.
    pub credentials: Credentials,
    /// The `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
    /// Method and path, for the idempotency fingerprint.
    pub method: String,
    /// The path.
    pub path: String,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("idempotency_key", &self.idempotency_key)
            .field("method", &self.method)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let client_cert = parts
            .extensions
            .get::<ConnInfo>()
            .is_some_and(|c| c.client_cert);
        let credentials =
            Credentials::from_header(parts.headers.get(header::AUTHORIZATION), client_cert);
        let idempotency_key = match parts.headers.get(crate::idempotency::HEADER) {
            None => None,
            Some(v) => {
                let text = v.to_str().map_err(|_| ApiError::Invalid {
                    field: "Idempotency-Key".into(),
                    problem: "1 to 255 visible ASCII characters".into(),
                })?;
                fleetkey::access::validate_idempotency_key(text)?;
                Some(text.to_owned())
            }
        };
        Ok(Ctx {
            credentials,
            idempotency_key,
            method: parts.method.as_str().to_owned(),
            path: parts.uri.path().to_owned(),
        })
    }
}

/// A JSON body parsed as `T`, with its bytes (for the idempotency fingerprint).
#[derive(Debug)]
pub struct Body<T>(pub T, pub Bytes);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge(0)
            } else {
                ApiError::Malformed(e.body_text())
            }
        })?;
        let value = crate::api::parse_body(&bytes)?;
        Ok(Body(value, bytes))
    }
}

/// A path parameter; a bad one is a 422 naming it.
#[derive(Debug)]
pub struct P<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for P<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| P(p.0))
            .map_err(|e| ApiError::Invalid {
                field: "path".into(),
                problem: e.body_text(),
            })
    }
}

/// A query string; an unknown or bad parameter is a 422 naming it.
#[derive(Debug)]
pub struct Q<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Q(q.0))
            .map_err(|e| ApiError::Invalid {
                field: "query".into(),
                problem: e
                    .body_text()
                    .trim_start_matches("Failed to deserialize query string: ")
                    .to_owned(),
            })
    }
}

/// The router of the service: every endpoint of [`crate::routes::ROUTES`], `/healthz`,
/// `/openapi.json`, and what wraps every request.
pub fn router(state: AppState) -> Router {
    let limit = state.inner.config.body_limit;
    crate::routes::routes()
        .merge(crate::console::routes())
        .fallback(|| async { ApiError::NoRoute })
        .layer(DefaultBodyLimit::max(limit))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(limit))
        .layer(axum::middleware::from_fn_with_state(state.clone(), frame))
        .with_state(state)
}

fn new_request_id() -> String {
    let mut bytes = [0u8; 12];
    // A request id needs to be unique, not secret: fall back to time and a counter.
    if getrandom::fill(&mut bytes).is_err() {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        bytes[..8].copy_from_slice(&n.to_be_bytes());
    }
    hex::encode(bytes)
}

/// A client's request id is kept when it is 1 to 128 characters of `A-Z a-z 0-9 - _ . :`.
fn client_request_id(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?;
    let ok = !text.is_empty()
        && text.len() <= 128
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    ok.then(|| text.to_owned())
}

/// Request id, timeout, problem rendering and the log line of every request.
pub(crate) async fn frame(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(client_request_id)
        .unwrap_or_else(new_request_id);
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let route = crate::metrics::route_label(
        req.extensions()
            .get::<axum::extract::MatchedPath>()
            .map(axum::extract::MatchedPath::as_str),
    );
    let span = tracing::info_span!("request", request_id = %id, method = %method, path = %path);
    let started = Instant::now();
    let timeout = state.inner.config.request_timeout;
    let mut response =
        match tokio::time::timeout(timeout, next.run(req).instrument(span.clone())).await {
            Ok(r) => r,
            Err(_) => ApiError::Timeout(timeout).into_response(),
        };
    let status = response.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        // From the body limit layer or the extractor: name the limit.
        let problem = ApiError::TooLarge(state.inner.config.body_limit).problem();
        response = problem::render(&problem, &id, &path);
    } else if let Some(problem) = response.extensions_mut().remove::<Problem>() {
        response = problem::render(&problem, &id, &path);
    } else if (status.is_client_error() || status.is_server_error())
        && response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_none_or(|v| v != PROBLEM_JSON && !v.as_bytes().starts_with(b"text/html"))
    {
        response = problem::render(&Problem::for_status(status), &id, &path);
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    let elapsed = started.elapsed();
    state
        .metrics()
        .observe(&method, route, response.status(), elapsed);
    span.in_scope(|| {
        tracing::info!(
            status = response.status().as_u16(),
            elapsed_ms = elapsed.as_millis() as u64,
            "response"
        );
    });
    response
}
