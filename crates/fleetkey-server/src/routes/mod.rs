//! The endpoints: one table ([`ROUTES`]) from which the router and the OpenAPI document are both
//! built, so neither can list an endpoint the other lacks.

use axum::Router;
use axum::http::Method;
use axum::routing::{MethodFilter, MethodRouter, on};
use fleetkey::model::{DeviceRecord, DeviceSerial};
use serde::Serialize;

use crate::app::AppState;
use crate::auth::Action;
use crate::problem::ApiError;

mod audit;
pub(crate) mod devices;
mod generations;
mod governance;
mod grants;
mod tokens;

/// One endpoint.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    /// HTTP method.
    pub method: &'static str,
    /// Path, with `{param}` placeholders (the same syntax in axum and OpenAPI).
    pub path: &'static str,
    /// OpenAPI operationId.
    pub op: &'static str,
    /// What it needs of the caller's role (`None`: no authentication).
    pub action: Option<Action>,
    /// One line.
    pub summary: &'static str,
    /// The request body's schema name, if it takes one.
    pub body: Option<&'static str>,
    /// Success status.
    pub ok: u16,
    /// The success response's schema name.
    pub response: &'static str,
    /// Whether it honours `Idempotency-Key`.
    pub idempotent: bool,
}

#[allow(
    clippy::too_many_arguments,
    reason = "a table row: one argument per column"
)]
const fn r(
    method: &'static str,
    path: &'static str,
    op: &'static str,
    action: Option<Action>,
    summary: &'static str,
    body: Option<&'static str>,
    ok: u16,
    response: &'static str,
) -> Route {
    Route {
        method,
        path,
        op,
        action,
        summary,
        body,
        ok,
        response,
        idempotent: false,
    }
}

const fn idempotent(route: Route) -> Route {
    Route {
        idempotent: true,
        ..route
    }
}

use Action as A;

/// Every endpoint of the service.
pub const ROUTES: &[Route] = &[
    r(
        "GET",
        "/healthz",
        "health",
        None,
        "Liveness: 200 while the service runs (no authentication).",
        None,
        200,
        "Health",
    ),
    r(
        "GET",
        "/openapi.json",
        "openapi",
        None,
        "This document (no authentication).",
        None,
        200,
        "OpenApi",
    ),
    r(
        "GET",
        "/v1/status",
        "status",
        Some(A::Status),
        "The fleet: scheme, generations, devices by state, audit length.",
        None,
        200,
        "Status",
    ),
    r(
        "GET",
        "/v1/scheduler",
        "schedulerStatus",
        Some(A::Status),
        "The lifecycle scheduler: this instance's last and next run, the lease holder, the last run (any instance) and its error.",
        None,
        200,
        "Scheduler",
    ),
    r(
        "GET",
        "/metrics",
        "metrics",
        Some(A::Status),
        "The service's figures in the Prometheus text format: requests by route and status, latency, store retries, key module operations, devices and generations by state, audit events, the scheduler. Without a token on the loopback listener of --metrics-listen.",
        None,
        200,
        "Metrics",
    ),
    r(
        "POST",
        "/v1/devices",
        "addDevice",
        Some(A::DeviceWrite),
        "Register one device (pre-active).",
        Some("NewDevice"),
        201,
        "Device",
    ),
    r(
        "GET",
        "/v1/devices",
        "listDevices",
        Some(A::DeviceRead),
        "Devices in serial order, one page at a time.",
        None,
        200,
        "DevicePage",
    ),
    r(
        "POST",
        "/v1/devices/import",
        "importDevices",
        Some(A::DeviceWrite),
        "Register many devices, all or nothing (a rerun skips those already registered).",
        Some("Import"),
        200,
        "ImportReport",
    ),
    r(
        "GET",
        "/v1/devices/{serial}",
        "showDevice",
        Some(A::DeviceRead),
        "One device.",
        None,
        200,
        "Device",
    ),
    idempotent(r(
        "POST",
        "/v1/devices/{serial}/provision",
        "provisionDevice",
        Some(A::Provision),
        "Key material for a provisioning station and the SHE initial load (M1-M5); a pre-active device becomes active.",
        Some("Empty"),
        200,
        "Provisioning",
    )),
    idempotent(r(
        "POST",
        "/v1/devices/{serial}/refresh",
        "refreshDevice",
        Some(A::DeviceWrite),
        "Bump the key revision (and migrate to the current generation); the SHE updates that carry the new keys.",
        Some("Reason"),
        200,
        "KeyUpdate",
    )),
    r(
        "POST",
        "/v1/devices/{serial}/suspend",
        "suspendDevice",
        Some(A::DeviceWrite),
        "Active -> suspended.",
        Some("Reason"),
        200,
        "Device",
    ),
    r(
        "POST",
        "/v1/devices/{serial}/resume",
        "resumeDevice",
        Some(A::DeviceWrite),
        "Suspended -> active.",
        Some("Reason"),
        200,
        "Device",
    ),
    r(
        "POST",
        "/v1/devices/{serial}/revoke",
        "revokeDevice",
        Some(A::DeviceWrite),
        "Mark the device's keys compromised.",
        Some("Reason"),
        200,
        "Device",
    ),
    r(
        "POST",
        "/v1/devices/{serial}/decommission",
        "decommissionDevice",
        Some(A::DeviceWrite),
        "Take the device out of the fleet and destroy its key material.",
        Some("Reason"),
        200,
        "Device",
    ),
    r(
        "GET",
        "/v1/generations",
        "listGenerations",
        Some(A::GenerationRead),
        "Master generations with their states.",
        None,
        200,
        "GenerationList",
    ),
    r(
        "POST",
        "/v1/generations",
        "createGeneration",
        Some(A::GenerationWrite),
        "Create the next generation (pre-active) with a fresh master.",
        Some("NewGeneration"),
        201,
        "Generation",
    ),
    r(
        "POST",
        "/v1/generations/rotate",
        "rotate",
        Some(A::GenerationWrite),
        "Create generation g+1 and make it current.",
        Some("NewGeneration"),
        201,
        "Generation",
    ),
    r(
        "GET",
        "/v1/generations/rotation",
        "rotationStatus",
        Some(A::GenerationRead),
        "Devices per generation and how many are not yet on the current one.",
        None,
        200,
        "RotationStatus",
    ),
    r(
        "POST",
        "/v1/generations/{generation}/activate",
        "activateGeneration",
        Some(A::GenerationWrite),
        "Activate a generation and make it current.",
        Some("GenerationChange"),
        200,
        "Generation",
    ),
    r(
        "POST",
        "/v1/generations/{generation}/deactivate",
        "deactivateGeneration",
        Some(A::GenerationWrite),
        "No longer used for new keys (refused while devices depend on it, unless force).",
        Some("Retire"),
        200,
        "Generation",
    ),
    r(
        "POST",
        "/v1/generations/{generation}/destroy",
        "destroyGeneration",
        Some(A::GenerationWrite),
        "Destroy the generation's master (zeroization).",
        Some("Retire"),
        200,
        "Generation",
    ),
    r(
        "POST",
        "/v1/generations/{generation}/revoke",
        "revokeGeneration",
        Some(A::GenerationWrite),
        "Mark a generation compromised.",
        Some("GenerationChange"),
        200,
        "Generation",
    ),
    r(
        "GET",
        "/v1/grants",
        "listGrants",
        Some(A::GrantRead),
        "Issued grants (a technician sees its own only).",
        None,
        200,
        "GrantList",
    ),
    r(
        "POST",
        "/v1/grants",
        "issueGrant",
        Some(A::GrantWrite),
        "Issue a technician or operator grant (governed scheme).",
        Some("NewGrant"),
        201,
        "Grant",
    ),
    r(
        "GET",
        "/v1/grants/{id}",
        "showGrant",
        Some(A::GrantRead),
        "One grant (a technician: only its own).",
        None,
        200,
        "Grant",
    ),
    r(
        "POST",
        "/v1/grants/{id}/deny",
        "denyGrant",
        Some(A::GrantWrite),
        "Deny a grant and publish a generation record listing it.",
        Some("Deny"),
        200,
        "Record",
    ),
    r(
        "POST",
        "/v1/governance/records",
        "publishRecord",
        Some(A::GovernanceWrite),
        "Sign and store the next generation record.",
        Some("Publish"),
        201,
        "Record",
    ),
    r(
        "GET",
        "/v1/governance/records/latest",
        "latestRecord",
        Some(A::GovernanceRead),
        "The newest generation record.",
        None,
        200,
        "Record",
    ),
    r(
        "GET",
        "/v1/governance/export",
        "exportRecords",
        Some(A::GovernanceRead),
        "The newest generation record and every grant not denied, as bytes (hex and base64) for a gateway to push.",
        None,
        200,
        "Export",
    ),
    r(
        "GET",
        "/v1/audit",
        "showAudit",
        Some(A::AuditRead),
        "Audit events, oldest first, one page at a time.",
        None,
        200,
        "AuditPage",
    ),
    r(
        "GET",
        "/v1/audit/verify",
        "verifyAudit",
        Some(A::AuditRead),
        "Check the whole hash chain against the recorded head.",
        None,
        200,
        "AuditVerification",
    ),
    r(
        "GET",
        "/v1/tokens",
        "listTokens",
        Some(A::Tokens),
        "Service tokens (ids and hashes' owners; never a token).",
        None,
        200,
        "TokenList",
    ),
    r(
        "POST",
        "/v1/tokens",
        "issueToken",
        Some(A::Tokens),
        "Issue a token; the response shows it once.",
        Some("NewToken"),
        201,
        "IssuedToken",
    ),
    r(
        "POST",
        "/v1/tokens/{id}/revoke",
        "revokeToken",
        Some(A::Tokens),
        "Revoke a token: it stops working at once.",
        Some("Reason"),
        200,
        "Token",
    ),
];

fn handler(op: &str, f: MethodFilter) -> MethodRouter<AppState> {
    match op {
        "health" => on(f, || async {
            axum::Json(serde_json::json!({"status": "ok"}))
        }),
        "openapi" => on(f, crate::openapi::serve),
        "status" => on(f, devices::status),
        "schedulerStatus" => on(f, devices::scheduler),
        "metrics" => on(f, crate::metrics::serve),
        "addDevice" => on(f, devices::add),
        "listDevices" => on(f, devices::list),
        "importDevices" => on(f, devices::import),
        "showDevice" => on(f, devices::show),
        "provisionDevice" => on(f, devices::provision),
        "refreshDevice" => on(f, devices::refresh),
        "suspendDevice" => on(f, devices::suspend),
        "resumeDevice" => on(f, devices::resume),
        "revokeDevice" => on(f, devices::revoke),
        "decommissionDevice" => on(f, devices::decommission),
        "listGenerations" => on(f, generations::list),
        "createGeneration" => on(f, generations::create),
        "rotate" => on(f, generations::rotate),
        "rotationStatus" => on(f, generations::rotation),
        "activateGeneration" => on(f, generations::activate),
        "deactivateGeneration" => on(f, generations::deactivate),
        "destroyGeneration" => on(f, generations::destroy),
        "revokeGeneration" => on(f, generations::revoke),
        "listGrants" => on(f, grants::list),
        "issueGrant" => on(f, grants::issue),
        "showGrant" => on(f, grants::show),
        "denyGrant" => on(f, grants::deny),
        "publishRecord" => on(f, governance::publish),
        "latestRecord" => on(f, governance::latest),
        "exportRecords" => on(f, governance::export),
        "showAudit" => on(f, audit::show),
        "verifyAudit" => on(f, audit::verify),
        "listTokens" => on(f, tokens::list),
        "issueToken" => on(f, tokens::issue),
        "revokeToken" => on(f, tokens::revoke),
        other => unreachable!("ROUTES names an operation without a handler: {other}"),
    }
}

/// The routes of [`ROUTES`] (without the layers [`crate::app::router`] adds).
pub(crate) fn routes() -> Router<AppState> {
    let mut router = Router::new();
    for route in ROUTES {
        let filter = Method::from_bytes(route.method.as_bytes())
            .ok()
            .and_then(|m| MethodFilter::try_from(m).ok())
            .unwrap_or_else(|| unreachable!("ROUTES has a bad method: {}", route.method));
        router = router.route(route.path, handler(route.op, filter));
    }
    router
}

/// A device as the API shows it: no wrapped root.
#[derive(Serialize)]
pub(crate) struct DeviceView<'a> {
    serial: &'a DeviceSerial,
    she_uid: Option<String>,
    labels: &'a [String],
    generation: u32,
    revision: u32,
    state: fleetkey::lifecycle::State,
    changed: &'a fleetkey::model::Change,
    created_at: i64,
}

impl<'a> From<&'a DeviceRecord> for DeviceView<'a> {
    fn from(d: &'a DeviceRecord) -> Self {
        DeviceView {
            serial: &d.serial,
            she_uid: d.she_uid.map(hex::encode),
            labels: &d.labels,
            generation: d.generation,
            revision: d.revision,
            state: d.state,
            changed: &d.changed,
            created_at: d.created_at,
        }
    }
}

/// A serial from a path or query: text, or `hex:<hex>`.
pub(crate) fn serial(field: &str, text: &str) -> Result<DeviceSerial, ApiError> {
    DeviceSerial::parse(text).map_err(|e| ApiError::Invalid {
        field: field.into(),
        problem: e.to_string(),
    })
}

/// The reason of a lifecycle change, checked.
pub(crate) fn reason(field: &str, text: Option<&str>, default: &str) -> Result<String, ApiError> {
    let text = text.unwrap_or(default);
    if text.is_empty() || text.len() > 500 || text.chars().any(char::is_control) {
        return Err(ApiError::Invalid {
            field: field.into(),
            problem: "1 to 500 characters, no control characters".into(),
        });
    }
    Ok(text.to_owned())
}
