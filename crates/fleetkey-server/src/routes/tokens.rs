//! Service tokens (admin only).

use axum::extract::State;
use axum::http::StatusCode;
use fleetkey::access::{ApiToken, Role};
use serde::Serialize;

use super::reason;
use crate::api;
use crate::app::{AppState, Body, Ctx, P, Reply};
use crate::auth::Action;
use crate::problem::ApiError;

/// A token as listed: no hash, no text.
#[derive(Serialize)]
pub(super) struct TokenOut<'a> {
    id: &'a str,
    principal: &'a str,
    role: Role,
    subject: Option<&'a str>,
    created_at: i64,
    created_by: &'a str,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
}

impl<'a> From<&'a ApiToken> for TokenOut<'a> {
    fn from(t: &'a ApiToken) -> Self {
        TokenOut {
            id: &t.id,
            principal: &t.principal,
            role: t.role,
            subject: t.subject.as_deref(),
            created_at: t.created_at,
            created_by: &t.created_by,
            expires_at: t.expires_at,
            revoked_at: t.revoked_at,
        }
    }
}

pub(super) async fn list(State(s): State<AppState>, ctx: Ctx) -> Result<Reply, ApiError> {
    s.run(&ctx, Action::Tokens, |fleet, _| {
        let tokens = fleet.tokens()?;
        Reply::ok(&serde_json::json!({
            "tokens": tokens.iter().map(TokenOut::from).collect::<Vec<_>>()
        }))
    })
    .await
}

#[derive(Serialize)]
struct IssuedOut<'a> {
    #[serde(flatten)]
    token: TokenOut<'a>,
    /// The bearer token: shown once, stored nowhere.
    secret: &'a str,
}

pub(super) async fn issue(
    State(s): State<AppState>,
    ctx: Ctx,
    Body(body, _): Body<api::NewToken>,
) -> Result<Reply, ApiError> {
    let role = Role::parse(&body.role)?;
    let expires_in_ms = body
        .expires_in_seconds
        .map(|secs| {
            i64::try_from(secs)
                .ok()
                .and_then(|s| s.checked_mul(1000))
                .filter(|ms| *ms > 0)
                .ok_or_else(|| ApiError::Invalid {
                    field: "expires_in_seconds".into(),
                    problem: "1 second to about 290 million years".into(),
                })
        })
        .transpose()?;
    s.run(&ctx, Action::Tokens, move |fleet, _| {
        let now = fleet.now_ms();
        let expires_at = expires_in_ms.map(|ms| now.saturating_add(ms));
        let (token, secret) =
            fleet.issue_token(&body.principal, role, body.subject.as_deref(), expires_at)?;
        Reply::json(
            StatusCode::CREATED,
            &IssuedOut {
                token: TokenOut::from(&token),
                secret: secret.expose(),
            },
        )
    })
    .await
}

pub(super) async fn revoke(
    State(s): State<AppState>,
    ctx: Ctx,
    P(id): P<String>,
    Body(body, _): Body<api::Reason>,
) -> Result<Reply, ApiError> {
    let why = reason("reason", body.reason.as_deref(), "revoked")?;
    let reply = s
        .run(&ctx, Action::Tokens, move |fleet, _| {
            let token = fleet.revoke_token(&id, &why)?;
            Reply::ok(&TokenOut::from(&token))
        })
        .await?;
    // Committed: the token stops working on this instance before the answer leaves.
    s.tokens().invalidate();
    Ok(reply)
}
