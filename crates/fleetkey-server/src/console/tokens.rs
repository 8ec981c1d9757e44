//! The Tokens page (admin): `fleetkey token list|issue|revoke`. An issued token is shown once;
//! a revocation here empties this instance's token cache before the page answers, so the token
//! (and every console session signed in with it) stops at once.

use axum::extract::State;
use axum::response::Response;
use fleetkey::access::{ApiToken, Role};
use maud::html;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::layout::{Confirm, confirm as confirm_body, csrf_field, time};
use super::{User, Visit};
use crate::app::AppState;
use crate::auth::Action;
use crate::problem::ApiError;
use crate::routes::reason;

pub(super) async fn page(State(s): State<AppState>, user: User) -> Response {
    let found = user
        .run(&s, Action::Tokens, |fleet, _| {
            Ok((fleet.tokens()?, fleet.now_ms()))
        })
        .await;
    let (tokens, now): (Vec<ApiToken>, i64) = match found {
        Ok(x) => x,
        Err(e) => return user.error("/ui/tokens", "Tokens", &e),
    };
    let body = html! {
        table {
            thead { tr { th { "Id" } th { "Principal" } th { "Role" } th { "Subject" } th { "Issued" } th { "Expires" } th { "State" } th { "Actions" } } }
            tbody {
                @for t in &tokens {
                    tr {
                        td { code { (t.id) } }
                        td { (t.principal) }
                        td { (t.role) }
                        td { (t.subject.as_deref().unwrap_or("")) }
                        td { (time(t.created_at)) " by " (t.created_by) }
                        td { @match t.expires_at { Some(e) => { (time(e)) } None => { span.muted { "never" } } } }
                        td {
                            @if let Some(r) = t.revoked_at { "revoked " (time(r)) }
                            @else if !t.usable_at(now) { "expired" }
                            @else { "usable" }
                        }
                        td { @if t.revoked_at.is_none() { a.button href=(format!("/ui/tokens/confirm?id={}", super::layout::q(&t.id))) { "Revoke" } } }
                    }
                }
            }
        }
        h2 { "Issue a token" }
        form.stack method="post" action="/ui/tokens/issue" {
            (csrf_field(user.csrf()))
            label for="principal" { "Principal (the audit actor of what the token does)" }
            input #principal type="text" name="principal" required maxlength="200";
            label for="role" { "Role" }
            select #role name="role" { @for r in Role::ALL { option value=(r.to_string()) { (r) } } }
            label for="subject" { "Grant subject (technician tokens only)" }
            input #subject type="text" name="subject";
            label for="expires_days" { "Expires after days (empty: never)" }
            input #expires_days type="number" min="1" name="expires_days" value="90";
            div.buttons { button.primary type="submit" { "Issue token" } }
        }
    };
    user.page("/ui/tokens", "Tokens", body)
}

#[derive(Deserialize)]
pub(super) struct IssueForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    principal: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    subject: String,
    #[serde(default)]
    expires_days: String,
}

pub(super) async fn issue(
    State(s): State<AppState>,
    v: Visit,
    axum::Form(form): axum::Form<IssueForm>,
) -> Response {
    let user = match v.poster(&s, &form.csrf).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let checked = (|| {
        let role = Role::parse(&form.role)?;
        let expires_ms = match form.expires_days.trim() {
            "" => None,
            d => Some(
                d.parse::<i64>()
                    .ok()
                    .filter(|d| (1..=36_500).contains(d))
                    .map(|d| d * 86_400_000)
                    .ok_or_else(|| ApiError::Invalid {
                        field: "expires_days".into(),
                        problem: "1 to 36500 days, or empty for never".into(),
                    })?,
            ),
        };
        let subject = form.subject.trim();
        Ok::<_, ApiError>((
            form.principal.trim().to_owned(),
            role,
            (!subject.is_empty()).then(|| subject.to_owned()),
            expires_ms,
        ))
    })();
    let (principal, role, subject, expires_ms) = match checked {
        Ok(x) => x,
        Err(e) => return user.error("/ui/tokens", "Tokens", &e),
    };
    let done = user
        .run(&s, Action::Tokens, move |fleet, _| {
            let expires_at = expires_ms.map(|ms| fleet.now_ms().saturating_add(ms));
            let (token, secret) =
                fleet.issue_token(&principal, role, subject.as_deref(), expires_at)?;
            Ok((token, Zeroizing::new(secret.expose().to_owned())))
        })
        .await;
    match done {
        Err(e) => user.error("/ui/tokens", "Tokens", &e),
        Ok((token, secret)) => user.page(
            "/ui/tokens",
            "Token issued",
            html! {
                p.flash role="status" { "Token " code { (token.id) } " for " (token.principal) " (" (token.role) ") issued." }
                div.secret {
                    p { strong { "The token, shown once." } " Copy it now: fleetkey keeps only its hash." }
                    p { code #issued-token .hexwrap { (secret.as_str()) } }
                }
                p { a href="/ui/tokens" { "Back to the tokens" } }
            },
        ),
    }
}

#[derive(Deserialize)]
pub(super) struct ConfirmQuery {
    #[serde(default)]
    id: String,
}

pub(super) async fn confirm(
    State(s): State<AppState>,
    user: User,
    axum::extract::Query(query): axum::extract::Query<ConfirmQuery>,
) -> Response {
    if let Err(e) = user.admitted(&s, Action::Tokens) {
        return user.error("/ui/tokens", "Tokens", &e);
    }
    let c = Confirm {
        action: "/ui/tokens/act",
        hidden: vec![("id", query.id.clone())],
        what: format!(
            "Token {} stops working: on this instance at once, on others within their token cache's time to live.",
            query.id
        ),
        button: format!("Revoke token {}", query.id),
        reason: Some("revoked"),
        force: None,
        typed: None,
        cancel: "/ui/tokens".into(),
    };
    user.page(
        "/ui/tokens",
        &format!("Revoke token {}?", query.id),
        confirm_body(&c, user.csrf()),
    )
}

#[derive(Deserialize)]
pub(super) struct RevokeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    reason: String,
}

pub(super) async fn act(
    State(s): State<AppState>,
    v: Visit,
    axum::Form(form): axum::Form<RevokeForm>,
) -> Response {
    let user = match v.poster(&s, &form.csrf).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let why = match reason("reason", Some(form.reason.trim()), "revoked") {
        Ok(w) => w,
        Err(e) => return user.error("/ui/tokens", "Tokens", &e),
    };
    let id = form.id.clone();
    let done = user
        .run(&s, Action::Tokens, move |fleet, _| {
            Ok(fleet.revoke_token(&id, &why)?)
        })
        .await;
    match done {
        Ok(t) => {
            // Committed: the token stops working on this instance before the page answers.
            s.tokens().invalidate();
            user.done(&s, format!("Token {} revoked.", t.id), "/ui/tokens")
        }
        Err(e) => user.error("/ui/tokens", "Tokens", &e),
    }
}
