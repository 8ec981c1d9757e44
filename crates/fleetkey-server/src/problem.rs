//! Errors as RFC 9457 `application/problem+json`, mapped in one place ([`ApiError::problem`]).
//!
//! Handlers and extractors return an [`ApiError`]; its response carries the [`Problem`] in an
//! extension and no body yet. The service's outer middleware renders every problem with the
//! request id and the path ([`render`]), and turns the bare error responses of lower layers (a
//! 413 from the body limit, a 405 from the router) into problems too, so every error a client
//! sees has the same shape:
//!
//! ```json
//! {"type": "urn:fleetkey:problem:invalid-input", "title": "Invalid input", "status": 422,
//!  "detail": "serial: 41 bytes, must be 1 to 40 bytes", "field": "serial",
//!  "hint": "fix the field named and send the request again", "request_id": "...",
//!  "instance": "/v1/devices"}
//! ```

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fleetkey::error::{Error, ModuleError, StoreError};
use fleetkey::lifecycle::State;
use serde::Serialize;

/// The media type of problem documents.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Why a request failed.
#[derive(Debug)]
pub enum ApiError {
    /// No usable bearer token (missing, malformed, unknown, expired or revoked).
    Unauthenticated(&'static str),
    /// The principal's role does not allow this.
    Forbidden(String),
    /// The body is not JSON.
    Malformed(String),
    /// A field (or query or path parameter) is missing, of the wrong type, unknown or out of range.
    Invalid {
        /// The field, as a path into the body (`devices[2].serial`) or `query.limit`.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The body is larger than the limit.
    TooLarge(usize),
    /// The principal sent too many requests.
    RateLimited(Duration),
    /// No route has this path.
    NoRoute,
    /// The path exists, not with this method.
    MethodNotAllowed,
    /// The idempotency key was used with another request.
    IdempotencyMismatch,
    /// The first request with this idempotency key has not finished.
    IdempotencyInProgress,
    /// The request took longer than the request timeout.
    Timeout(Duration),
    /// The service cannot take the request now (a fixed reason: it reaches the client).
    Unavailable(&'static str),
    /// A bug or an environment failure; the detail is logged, not sent.
    Internal(String),
    /// The key manager failed or refused.
    Fleet(Error),
    /// A problem mapped already: a group-commit transaction's failure, given to each request of
    /// the group.
    Problem(Box<Problem>),
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError::Fleet(e)
    }
}

/// An RFC 9457 problem, before the request id and path are added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// HTTP status.
    pub status: StatusCode,
    /// Short stable name; the `type` is `urn:fleetkey:problem:<slug>`.
    pub slug: &'static str,
    /// Human title of the type.
    pub title: &'static str,
    /// What happened in this case.
    pub detail: String,
    /// What to do next.
    pub hint: Option<String>,
    /// The input field at fault.
    pub field: Option<String>,
    /// Seconds after which a retry may succeed (`Retry-After`).
    pub retry_after: Option<u64>,
}

impl Problem {
    fn new(status: StatusCode, slug: &'static str, title: &'static str, detail: String) -> Self {
        Problem {
            status,
            slug,
            title,
            detail,
            hint: None,
            field: None,
            retry_after: None,
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The problem a bare error status of a lower layer stands for.
    pub fn for_status(status: StatusCode) -> Problem {
        match status {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(0).problem(),
            StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed.problem(),
            StatusCode::NOT_FOUND => ApiError::NoRoute.problem(),
            s => Problem::new(
                s,
                "http-error",
                "HTTP error",
                s.canonical_reason().unwrap_or("error").to_owned(),
            ),
        }
    }
}

impl ApiError {
    /// The one mapping from errors to problems.
    pub fn problem(&self) -> Problem {
        use StatusCode as S;
        match self {
            ApiError::Problem(p) => (**p).clone(),
            ApiError::Unauthenticated(why) => Problem::new(
                S::UNAUTHORIZED,
                "unauthenticated",
                "Not authenticated",
                (*why).into(),
            )
            .hint("send `Authorization: Bearer <token>` with a token from `fleetkey token issue`"),
            ApiError::Forbidden(why) => Problem::new(
                S::FORBIDDEN,
                "forbidden",
                "Not allowed for this role",
                why.clone(),
            )
            .hint("ask an admin for a token whose role allows this (docs/service.md: roles)"),
            ApiError::Malformed(why) => Problem::new(
                S::BAD_REQUEST,
                "malformed-json",
                "Malformed JSON",
                why.clone(),
            )
            .hint("send a JSON object as the body (Content-Type: application/json)"),
            ApiError::Invalid { field, problem } => {
                let mut p = Problem::new(S::UNPROCESSABLE_ENTITY, "invalid-input", "Invalid input", format!("{field}: {problem}"))
                    .hint("fix the field named and send the request again; GET /openapi.json describes every body");
                p.field = Some(field.clone());
                p
            }
            ApiError::TooLarge(limit) => Problem::new(
                S::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Request body too large",
                if *limit > 0 {
                    format!("the body exceeds the limit of {limit} bytes")
                } else {
                    "the body exceeds the service's limit".into()
                },
            )
            .hint("split a device import into several requests"),
            ApiError::RateLimited(wait) => {
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                let mut p = Problem::new(
                    S::TOO_MANY_REQUESTS,
                    "rate-limited",
                    "Too many requests",
                    "this principal's request rate is above its limit".into(),
                )
                .hint(format!(
                    "wait {secs} s (Retry-After) and retry; spread requests over time"
                ));
                p.retry_after = Some(secs.max(1));
                p
            }
            ApiError::NoRoute => Problem::new(
                S::NOT_FOUND,
                "no-route",
                "No such endpoint",
                "no endpoint has this path".into(),
            )
            .hint("GET /openapi.json lists the endpoints"),
            ApiError::MethodNotAllowed => Problem::new(
                S::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                "the endpoint exists, not with this method".into(),
            )
            .hint("GET /openapi.json lists each endpoint's methods"),
            ApiError::IdempotencyMismatch => Problem::new(
                S::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency key reused",
                "this Idempotency-Key was used with a different request".into(),
            )
            .hint("use a new key for a new request; a retry must repeat the first request exactly"),
            ApiError::IdempotencyInProgress => {
                let mut p = Problem::new(S::CONFLICT, "idempotency-key-in-progress", "Request with this key still running", "the first request with this Idempotency-Key has not finished, or its outcome was not recorded".into())
                    .hint("retry in a moment; if it persists, check the device (GET /v1/devices/{serial}) before sending a new key");
                p.retry_after = Some(1);
                p
            }
            ApiError::Timeout(limit) => {
                let mut p = Problem::new(S::SERVICE_UNAVAILABLE, "timeout", "Request timed out", format!("no answer within {} s; the operation may still complete", limit.as_secs()))
                    .hint("retry with the same Idempotency-Key (provision, refresh), or check the state first");
                p.retry_after = Some(1);
                p
            }
            ApiError::Unavailable(why) => {
                let mut p = Problem::new(
                    S::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "Service unavailable",
                    (*why).into(),
                )
                .hint("retry shortly");
                p.retry_after = Some(1);
                p
            }
            ApiError::Internal(_) => Problem::new(
                S::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                SEE_THE_LOG.into(),
            )
            .hint(REPORT),
            ApiError::Fleet(e) => fleet_problem(e),
        }
    }
}

/// What a 5xx tells the client: nothing of the cause, which the log has under the request id.
const SEE_THE_LOG: &str = "the service failed; the cause is in its log under this request id";
/// The hint of every 5xx that a retry does not cure.
const REPORT: &str = "report the request id to the operator of the service";

/// The key manager's errors as problems: one arm per variant, no message text inspected. A 4xx
/// says what was refused (the library's sentence, which names no command); a 5xx says only that
/// the service failed ([`ApiError::into_response`] logs the cause).
fn fleet_problem(e: &Error) -> Problem {
    use StatusCode as S;
    let detail = e.to_string();
    let not_found = |hint: &str| {
        Problem::new(S::NOT_FOUND, "not-found", "Not found", detail.clone()).hint(hint)
    };
    let refused =
        |hint: &str| Problem::new(S::CONFLICT, "refused", "Refused", detail.clone()).hint(hint);
    let failure = || {
        Problem::new(
            S::INTERNAL_SERVER_ERROR,
            "fleet-failure",
            "Key manager failure",
            SEE_THE_LOG.into(),
        )
        .hint(REPORT)
    };
    match e {
        Error::Invalid { field, problem } => ApiError::Invalid {
            field: field.clone(),
            problem: problem.clone(),
        }
        .problem(),

        Error::NoSuchDevice(_) => not_found("check the serial; GET /v1/devices lists the fleet's devices, POST /v1/devices registers one"),
        Error::NoSuchGeneration(_) => not_found("GET /v1/generations lists the fleet's generations"),
        Error::NoSuchGrant(_) => not_found("GET /v1/grants lists the grants and their ids"),
        Error::NoSuchToken(_) => not_found("GET /v1/tokens lists the tokens and their ids"),
        Error::NoGenerationRecord => not_found("publish one first (POST /v1/governance/records)"),
        // A record the operation updates is gone: another writer removed it meanwhile.
        Error::Store(StoreError::NotFound(_)) => Problem::new(
            S::NOT_FOUND,
            "not-found",
            "Not found",
            "a record this operation needs does not exist (removed meanwhile?)".into(),
        )
        .hint("read the resource again before retrying"),

        Error::DeviceExists(_) => Problem::new(S::CONFLICT, "duplicate", "Already exists", detail.clone())
            .hint("serials are unique in a fleet; GET /v1/devices/{serial} shows the existing device"),
        Error::Store(StoreError::Duplicate(_)) => Problem::new(
            S::CONFLICT,
            "duplicate",
            "Already exists",
            "a record with this identity exists already".into(),
        )
        .hint("read the existing resource; choose another identity for a new one"),
        Error::Transition { source, .. } => Problem::new(
            S::CONFLICT,
            "illegal-transition",
            "Lifecycle transition not allowed",
            detail.clone(),
        )
        .hint(format!(
            "from {} the allowed next states are: {}",
            source.from,
            source
                .from
                .next_states()
                .map(State::name)
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Error::Module(ModuleError::NoMaster(g)) => Problem::new(S::CONFLICT, "no-master", "Master missing", detail.clone())
            .hint(format!("the operator restores generation {g}'s master from its custodian shares, or the fleet rotates (POST /v1/generations/rotate)")),

        Error::RegisteredDuringImport(_) => refused("send the import again: it skips what is registered"),
        Error::NotProvisionable { .. } => refused("only pre-active and active devices are provisioned; GET /v1/devices/{serial} shows the state"),
        Error::NotRefreshable { .. } => refused("resume a suspended device first (POST /v1/devices/{serial}/resume)"),
        Error::LastRevision(_) => refused("revoke and replace the device: SHE counters cannot go further"),
        Error::ChangedDuringProvisioning(_) => refused("provision again: it continues with the devices still pre-active"),
        Error::CurrentGeneration(_) => refused("rotate first (POST /v1/generations/rotate), migrate the devices, then retire it"),
        Error::DependentDevices { .. } => refused("refresh the devices onto the current generation first, or send \"force\": true to cut them off"),
        Error::MasterDestroyed { .. } => refused("a destroyed master is restored only into a new key file, for forensics"),
        Error::NoCurrentGeneration => refused("activate a generation first (POST /v1/generations/{generation}/activate)"),
        Error::CurrentCompromised(_) => refused("rotate to a new generation (POST /v1/generations/rotate); its record revokes this one"),
        Error::NoMasterGenerations { .. } => refused("in the stored scheme every device has its own random root: refresh devices instead"),
        Error::SharesWithoutMaster(_) => refused("the stored scheme has no master to back up: back up the key file"),
        Error::NotGoverned { .. } => refused("governance records and grants need a fleet of the governed scheme"),
        Error::LeaseLost { .. } => refused("another instance holds the lifecycle lease and finishes the work"),
        Error::Module(ModuleError::NoSigningKey) => refused("the operator restores the governance root from its custodian shares"),
        Error::Module(ModuleError::SigningKeyExists) => refused("the module has its governance root: nothing to restore"),
        Error::RootMismatch { .. } => refused("the key module belongs to another fleet or was changed outside fleetkey: tell the operator"),
        Error::RootNotPinned => refused("restore the root into a new key file, with its public key"),
        Error::SharesOfOtherFleet { .. } => refused("use the shares made for this fleet"),

        Error::Store(StoreError::Busy(_)) => {
            let mut p = Problem::new(
                S::SERVICE_UNAVAILABLE,
                "busy",
                "Store busy",
                "the store is busy; a retry may succeed".into(),
            )
            .hint("retry shortly (with the same Idempotency-Key, where the endpoint takes one)");
            p.retry_after = Some(1);
            p
        }

        // The service's own environment: its module, store, fleet home or audit record failed, or
        // the fleet it serves is not what it should be. Paths, URLs and backend messages stay in
        // the log.
        Error::Module(
            ModuleError::MasterExists(_)
            | ModuleError::NoKek
            | ModuleError::NoStagedSigningKey
            | ModuleError::Authentication
            | ModuleError::Unwrap
            | ModuleError::Io { .. }
            | ModuleError::Corrupt(_)
            | ModuleError::Backend { .. }
            | ModuleError::Unsupported(_)
            | ModuleError::SecretFile { .. },
        )
        | Error::Store(
            StoreError::Schema { .. }
            | StoreError::Corrupt(_)
            | StoreError::ReadOnly(_)
            | StoreError::Backend { .. },
        )
        | Error::Chain(_)
        | Error::Backup(_)
        | Error::Io { .. }
        | Error::NoFleet(_)
        | Error::FleetExists(_)
        | Error::StoreHoldsFleet
        | Error::StoreHoldsNoFleet
        | Error::NoFleetStore(_)
        | Error::NoStoreUrl
        | Error::NoKeyModule
        | Error::LifecycleRunaway
        | Error::TokenHoldsFleet { .. }
        | Error::NotBuilt { .. }
        | Error::ModuleFaulty(_) => failure(),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(cause) = &self {
            tracing::error!(cause = %cause, "internal error");
        }
        let problem = self.problem();
        if let ApiError::Fleet(e) = &self {
            if problem.status.is_server_error() {
                tracing::error!(error = %e, "key manager failure");
            } else {
                tracing::debug!(error = %e, "key manager error");
            }
        }
        let mut response = problem.status.into_response();
        response.extensions_mut().insert(problem);
        response
    }
}

/// The JSON document of a problem.
#[derive(Serialize)]
struct Document<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<&'a str>,
    request_id: &'a str,
    instance: &'a str,
}

/// Renders a problem as the response a client receives.
pub fn render(problem: &Problem, request_id: &str, path: &str) -> Response {
    let doc = Document {
        kind: format!("urn:fleetkey:problem:{}", problem.slug),
        title: problem.title,
        status: problem.status.as_u16(),
        detail: &problem.detail,
        field: problem.field.as_deref(),
        hint: problem.hint.as_deref(),
        request_id,
        instance: path,
    };
    let body = serde_json::to_vec(&doc).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = (problem.status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    if let Some(secs) = problem.retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if problem.status == StatusCode::UNAUTHORIZED {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"fleetkey\""),
        );
    }
    response
}
