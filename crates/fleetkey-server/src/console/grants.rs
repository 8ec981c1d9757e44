//! The Grants page (governed scheme): grants with their state, `fleetkey grant issue|deny`, and
//! the published generation records (`fleetkey governance publish`). A technician sees only the
//! grants to its own subject, as in the JSON API.

use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use fleetkey::access::Role;
use fleetkey::core::governance::Role as GrantRole;
use fleetkey::fleet::governance::{AUTO_RECORD_VALIDITY, GrantInfo, Published};
use maud::html;
use serde::Deserialize;

use super::layout::{Confirm, confirm as confirm_body, csrf_field, time};
use super::{User, Visit, number, one_of};
use crate::app::AppState;
use crate::auth::Action;
use crate::problem::ApiError;
use crate::routes::reason;

fn grant_state(g: &GrantInfo, now_s: u64) -> &'static str {
    if g.denied {
        "denied"
    } else if now_s < g.not_before {
        "not yet valid"
    } else if now_s >= g.not_after {
        "expired"
    } else {
        "valid"
    }
}

fn secs(s: u64) -> String {
    time(
        i64::try_from(s)
            .unwrap_or(i64::MAX / 1000)
            .saturating_mul(1000),
    )
}

pub(super) async fn page(State(s): State<AppState>, user: User) -> Response {
    let records = user.may(Action::GovernanceRead);
    let found = user
        .run(&s, Action::GrantRead, move |fleet, principal| {
            let scheme = fleet.config().scheme;
            if scheme != fleetkey::model::Scheme::Governed {
                return Ok((scheme, Vec::new(), None, fleet.now_ms()));
            }
            let grants: Vec<GrantInfo> = fleet
                .grants()?
                .into_iter()
                .filter(|g| {
                    principal.role != Role::Technician
                        || principal.subject.as_deref() == Some(&g.subject)
                })
                .collect();
            let latest: Option<Published> = if records {
                fleet.latest_generation_record()?
            } else {
                None
            };
            Ok((scheme, grants, latest, fleet.now_ms()))
        })
        .await;
    let (scheme, grants, latest, now) = match found {
        Ok(x) => x,
        Err(e) => return user.error("/ui/grants", "Grants", &e),
    };
    let now_s = u64::try_from(now / 1000).unwrap_or(0);
    let write = user.may(Action::GrantWrite);
    let body = html! {
        @if scheme != fleetkey::model::Scheme::Governed {
            p.muted { "This fleet uses the " (scheme.name()) " scheme; grants and generation records belong to the governed scheme." }
        } @else {
            @if grants.is_empty() { p.muted { "No grants issued." } } @else {
                table {
                    thead { tr { th.num { "Id" } th { "Subject" } th { "Role" } th { "Scope" } th { "Valid" } th { "State" } @if write { th { "Actions" } } } }
                    tbody {
                        @for g in &grants {
                            tr {
                                td.num { (g.id) }
                                td { (g.subject) }
                                td { (g.role) }
                                td { @if g.scope.is_empty() { span.muted { "whole fleet" } } @else { code { (g.scope.join(", ")) } } }
                                td { (secs(g.not_before)) " to " (secs(g.not_after)) }
                                td { (grant_state(g, now_s)) }
                                @if write {
                                    td { @if !g.denied { a.button href=(format!("/ui/grants/confirm?id={}", g.id)) { "Deny" } } }
                                }
                            }
                        }
                    }
                }
            }
            @if write {
                h2 { "Issue a grant" }
                form.stack method="post" action="/ui/grants/issue" {
                    (csrf_field(user.csrf()))
                    label for="subject" { "Subject" }
                    input #subject type="text" name="subject" required maxlength="500";
                    label for="role" { "Role" }
                    select #role name="role" { option value="technician" { "technician" } option value="operator" { "operator" } }
                    label for="subject_key" { "Subject's Ed25519 public key (64 hex characters)" }
                    input #subject_key type="text" name="subject_key" required pattern="[0-9a-fA-F]{64}" spellcheck="false";
                    label for="scope" { "Scope: serial prefixes, comma-separated (empty: the whole fleet)" }
                    input #scope type="text" name="scope";
                    label for="valid_days" { "Valid days (empty: the policy's grant lifetime)" }
                    input #valid_days type="number" min="1" name="valid_days";
                    div.buttons { button.primary type="submit" { "Issue grant" } }
                }
            }
            @if user.may(Action::GovernanceRead) {
                h2 { "Generation records" }
                @match &latest {
                    None => { p.muted { "No generation record published yet." } }
                    Some(p) => {
                        p { "Latest: sequence " (p.sequence) ", " (p.bytes.len()) " bytes (COSE_Sign1). " code { "fleetkey governance export" } " writes it with the grants for a gateway." }
                        details { summary { "Bytes (hex)" } p.mono.hexwrap { (hex::encode(&p.bytes)) } }
                    }
                }
                @if user.may(Action::GovernanceWrite) {
                    form.row method="post" action="/ui/grants/act" {
                        (csrf_field(user.csrf()))
                        input type="hidden" name="op" value="publish";
                        div { label for="preason" { "Reason" } input #preason type="text" name="reason" required maxlength="500" value="publish"; }
                        button type="submit" { "Publish a generation record" }
                    }
                }
            }
        }
    };
    user.page("/ui/grants", "Grants", body)
}

#[derive(Deserialize)]
pub(super) struct IssueForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    subject: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    subject_key: String,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    valid_days: String,
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
    let invalid = |field: &str, problem: &str| ApiError::Invalid {
        field: field.into(),
        problem: problem.into(),
    };
    let checked = (|| {
        let role = match one_of("role", &form.role, &["technician", "operator"])? {
            "technician" => GrantRole::Technician,
            _ => GrantRole::Operator,
        };
        let key: [u8; 32] = hex::decode(form.subject_key.trim())
            .ok()
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| invalid("subject_key", "64 hex characters (an Ed25519 public key)"))?;
        let mut scope = Vec::new();
        for (i, p) in form
            .scope
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .enumerate()
        {
            scope.push(match p.strip_prefix("hex:") {
                Some(h) => {
                    hex::decode(h).map_err(|e| invalid(&format!("scope[{i}]"), &e.to_string()))?
                }
                None => p.as_bytes().to_vec(),
            });
        }
        let days = match form.valid_days.trim() {
            "" => None,
            d => Some(
                d.parse::<u64>()
                    .ok()
                    .filter(|d| (1..=36_500).contains(d))
                    .ok_or_else(|| invalid("valid_days", "1 to 36500 days"))?,
            ),
        };
        let subject = reason("subject", Some(form.subject.trim()), "")?;
        Ok((role, key, scope, days, subject))
    })();
    let (role, key, scope, days, subject) = match checked {
        Ok(x) => x,
        Err(e) => return user.error("/ui/grants", "Grants", &e),
    };
    let done = user
        .run(&s, Action::GrantWrite, move |fleet, _| {
            let validity = fleet.grant_validity(days.map(|d| Duration::from_secs(d * 86_400)))?;
            let (id, _) = fleet.issue_grant(&subject, role, &scope, validity, key)?;
            Ok(id)
        })
        .await;
    match done {
        Ok(id) => user.done(&s, format!("Grant {id} issued."), "/ui/grants"),
        Err(e) => user.error("/ui/grants", "Grants", &e),
    }
}

#[derive(Deserialize)]
pub(super) struct ConfirmQuery {
    #[serde(default)]
    id: String,
}

fn grant_id(text: &str) -> Result<u64, ApiError> {
    number("id", text, "a grant id")
}

pub(super) async fn confirm(
    State(s): State<AppState>,
    user: User,
    axum::extract::Query(query): axum::extract::Query<ConfirmQuery>,
) -> Response {
    let id = match grant_id(&query.id).and_then(|id| {
        user.admitted(&s, Action::GrantWrite)?;
        Ok(id)
    }) {
        Ok(id) => id,
        Err(e) => return user.error("/ui/grants", "Grants", &e),
    };
    let c = Confirm {
        action: "/ui/grants/act",
        hidden: vec![("id", id.to_string()), ("op", "deny".into())],
        what: format!(
            "Grant {id} is denied, and a generation record listing it is published (devices refuse it once they have the record)."
        ),
        button: format!("Deny grant {id}"),
        reason: Some(""),
        force: None,
        typed: None,
        cancel: "/ui/grants".into(),
    };
    user.page(
        "/ui/grants",
        &format!("Deny grant {id}?"),
        confirm_body(&c, user.csrf()),
    )
}

#[derive(Deserialize)]
pub(super) struct ActForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    op: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    reason: String,
}

pub(super) async fn act(
    State(s): State<AppState>,
    v: Visit,
    axum::Form(form): axum::Form<ActForm>,
) -> Response {
    let user = match v.poster(&s, &form.csrf).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let checked = (|| {
        let op = one_of("op", &form.op, &["deny", "publish"])?;
        let why = reason("reason", Some(form.reason.trim()), "")?;
        let id = if op == "deny" {
            Some(grant_id(&form.id)?)
        } else {
            None
        };
        Ok((id, why))
    })();
    let (id, why) = match checked {
        Ok(x) => x,
        Err(e) => return user.error("/ui/grants", "Grants", &e),
    };
    let action = if id.is_some() {
        Action::GrantWrite
    } else {
        Action::GovernanceWrite
    };
    let done = user
        .run(&s, action, move |fleet, _| {
            Ok(match id {
                Some(id) => fleet.deny_grant(id, &why)?,
                None => fleet.publish_generation_record(&why, AUTO_RECORD_VALIDITY)?,
            })
        })
        .await;
    match done {
        Ok(p) => user.done(
            &s,
            match id {
                Some(id) => format!(
                    "Grant {id} denied; generation record {} published.",
                    p.sequence
                ),
                None => format!("Generation record {} published.", p.sequence),
            },
            "/ui/grants",
        ),
        Err(e) => user.error("/ui/grants", "Grants", &e),
    }
}
