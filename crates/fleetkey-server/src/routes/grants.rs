//! Technician and operator grants (governed scheme).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use fleetkey::access::Role;
use fleetkey::core::governance::Role as GrantRole;

use super::reason;
use crate::api;
use crate::app::{AppState, Body, Ctx, P, Reply};
use crate::auth::{Action, Principal};
use crate::problem::ApiError;

/// A technician sees only grants to its own subject.
fn visible(principal: &Principal, grant: &fleetkey::fleet::governance::GrantInfo) -> bool {
    principal.role != Role::Technician || principal.subject.as_deref() == Some(&grant.subject)
}

pub(super) async fn list(State(s): State<AppState>, ctx: Ctx) -> Result<Reply, ApiError> {
    s.run(&ctx, Action::GrantRead, |fleet, principal| {
        let grants: Vec<_> = fleet
            .grants()?
            .into_iter()
            .filter(|g| visible(principal, g))
            .collect();
        Reply::ok(&serde_json::json!({ "grants": grants }))
    })
    .await
}

pub(super) async fn show(
    State(s): State<AppState>,
    ctx: Ctx,
    P(id): P<u64>,
) -> Result<Reply, ApiError> {
    s.run(&ctx, Action::GrantRead, move |fleet, principal| {
        let grant = fleet.grant(id)?;
        if !visible(principal, &grant) {
            return Err(ApiError::Forbidden(format!(
                "grant {id} is not to this technician's subject"
            )));
        }
        Reply::ok(&grant)
    })
    .await
}

pub(super) async fn issue(
    State(s): State<AppState>,
    ctx: Ctx,
    Body(body, _): Body<api::NewGrant>,
) -> Result<Reply, ApiError> {
    let invalid = |field: &str, problem: &str| ApiError::Invalid {
        field: field.into(),
        problem: problem.into(),
    };
    let role = match body.role.as_str() {
        "technician" => GrantRole::Technician,
        "operator" => GrantRole::Operator,
        _ => return Err(invalid("role", "technician or operator")),
    };
    let key: [u8; 32] = hex::decode(&body.subject_key)
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| invalid("subject_key", "64 hex characters (an Ed25519 public key)"))?;
    let mut scope = Vec::with_capacity(body.scope.len());
    for (i, p) in body.scope.iter().enumerate() {
        scope.push(match p.strip_prefix("hex:") {
            Some(h) => {
                hex::decode(h).map_err(|e| invalid(&format!("scope[{i}]"), &e.to_string()))?
            }
            None => p.as_bytes().to_vec(),
        });
    }
    if body.valid_seconds == 0 {
        return Err(invalid("valid_seconds", "at least 1"));
    }
    let subject = reason("subject", Some(&body.subject), "")?;
    let validity = Duration::from_secs(body.valid_seconds);
    s.run(&ctx, Action::GrantWrite, move |fleet, _| {
        let (id, _) = fleet.issue_grant(&subject, role, &scope, validity, key)?;
        Reply::json(StatusCode::CREATED, &fleet.grant(id)?)
    })
    .await
}

pub(super) async fn deny(
    State(s): State<AppState>,
    ctx: Ctx,
    P(id): P<u64>,
    Body(body, _): Body<api::Deny>,
) -> Result<Reply, ApiError> {
    let why = reason("reason", Some(&body.reason), "")?;
    s.run(&ctx, Action::GrantWrite, move |fleet, _| {
        let published = fleet.deny_grant(id, &why)?;
        Reply::ok(&super::governance::RecordOut::from(&published))
    })
    .await
}
