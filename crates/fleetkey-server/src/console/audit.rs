//! The Audit page: the hash-chained events, oldest first, paged by sequence and filtered by kind
//! (an action or its prefix: `device`, `device.refresh`) and serial; "Verify chain" checks the
//! whole chain against the recorded head (`fleetkey audit show|verify`) and names the first bad
//! event when it is broken.

use axum::extract::State;
use axum::response::Response;
use fleetkey::audit::{AuditEvent, AuditFilter};
use maud::{Markup, html};
use serde::Deserialize;

use super::User;
use super::layout::{q, time};
use crate::app::AppState;
use crate::auth::Action;
use crate::problem::ApiError;
use crate::routes::serial;

/// Events per page.
const PAGE: usize = 100;

#[derive(Deserialize, Default)]
pub(super) struct AuditQuery {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    serial: String,
    #[serde(default)]
    after: String,
    #[serde(default)]
    verify: String,
}

/// The outcome of "Verify chain".
enum Verified {
    Intact(u64),
    Broken(String),
}

/// A table of events (also a device's history).
pub(super) fn events_table(events: &[AuditEvent]) -> Markup {
    html! {
        @if events.is_empty() {
            p.muted { "No events." }
        } @else {
            table {
                thead { tr { th.num { "#" } th { "When" } th { "Actor" } th { "Action" } th { "Devices" } th { "Details" } } }
                tbody {
                    @for e in events {
                        tr {
                            td.num { (e.seq) }
                            td { (time(e.draft.at)) }
                            td { (e.draft.actor) }
                            td { code { (e.draft.action) } @if let Some(g) = e.draft.generation { " (generation " (g) ")" } }
                            td {
                                @for (i, s) in e.draft.subjects.iter().take(5).enumerate() {
                                    @if i > 0 { ", " }
                                    a href=(format!("/ui/device?serial={}", q(&s.to_string()))) { (s) }
                                }
                                @if e.draft.subjects.len() > 5 { " and " (e.draft.subjects.len() - 5) " more" }
                            }
                            td.mono.hexwrap { @if !e.draft.details.is_null() && e.draft.details != serde_json::json!({}) { (e.draft.details) } }
                        }
                    }
                }
            }
        }
    }
}

pub(super) async fn page(
    State(s): State<AppState>,
    user: User,
    axum::extract::Query(query): axum::extract::Query<AuditQuery>,
) -> Response {
    let parsed = (|| {
        let device = match query.serial.trim() {
            "" => None,
            t => Some(serial("serial", t)?),
        };
        let after = match query.after.trim() {
            "" => 0,
            a => a.parse::<u64>().map_err(|_| ApiError::Invalid {
                field: "after".into(),
                problem: "an event number".into(),
            })?,
        };
        let kind = query.kind.trim();
        Ok((
            AuditFilter {
                device,
                action: (!kind.is_empty()).then(|| kind.to_owned()),
                ..Default::default()
            },
            after,
        ))
    })();
    let verify = !query.verify.is_empty();
    let found = match parsed {
        Ok((filter, after)) => {
            user.run(&s, Action::AuditRead, move |fleet, _| {
                let verified = if verify {
                    Some(match fleet.audit_verify() {
                        Ok(n) => Verified::Intact(n),
                        Err(fleetkey::Error::Chain(b)) => Verified::Broken(b.to_string()),
                        Err(e) => return Err(e.into()),
                    })
                } else {
                    None
                };
                Ok((fleet.audit_show(&filter, after, PAGE)?, verified))
            })
            .await
        }
        Err(e) => Err(e),
    };
    if let Err(e @ (ApiError::Forbidden(_) | ApiError::Unauthenticated(_))) = &found {
        return user.error("/ui/audit", "Audit", e);
    }
    let base = format!(
        "/ui/audit?kind={}&serial={}",
        q(query.kind.trim()),
        q(query.serial.trim())
    );
    let body = html! {
        form.filters method="get" action="/ui/audit" role="search" {
            div { label for="kind" { "Kind" } input #kind type="text" name="kind" value=(query.kind) placeholder="device.refresh"; }
            div { label for="serial" { "Serial" } input #serial type="text" name="serial" value=(query.serial); }
            div { button.primary type="submit" { "Show" } }
        }
        form.row method="get" action="/ui/audit" {
            input type="hidden" name="kind" value=(query.kind);
            input type="hidden" name="serial" value=(query.serial);
            input type="hidden" name="verify" value="1";
            button #verify type="submit" { "Verify chain" }
        }
        @match &found {
            Err(e) => { (super::layout::problem_box(&e.problem())) }
            Ok((events, verified)) => {
                @match verified {
                    Some(Verified::Intact(n)) => { p.verified role="status" { "Chain verified: " (n) " events, intact up to the recorded head." } }
                    Some(Verified::Broken(why)) => {
                        div.problem role="alert" {
                            p.broken { "Chain broken: " (why) }
                            p.hint { "What to do: the store was changed outside fleetkey; restore the store from a backup and investigate who changed it (the words of " code { "fleetkey audit verify" } ")." }
                        }
                    }
                    None => {}
                }
                (events_table(events))
                nav.pager aria-label="Pages" {
                    @if !query.after.trim().is_empty() { a href=(base) { "First page" } }
                    @if events.len() == PAGE {
                        @if let Some(last) = events.last() {
                            a href=(format!("{base}&after={}", last.seq)) rel="next" { "Next page" }
                        }
                    }
                }
            }
        }
    };
    user.page("/ui/audit", "Audit", body)
}
