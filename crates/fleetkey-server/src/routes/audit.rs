//! The audit chain.

use axum::extract::State;
use fleetkey::audit::{AuditEvent, AuditFilter};
use serde::Serialize;

use super::serial;
use crate::api;
use crate::app::{AppState, Ctx, Q, Reply};
use crate::auth::Action;
use crate::problem::ApiError;

#[derive(Serialize)]
struct EventOut<'a> {
    seq: u64,
    at: i64,
    actor: &'a str,
    action: &'a str,
    generation: Option<u32>,
    subjects: &'a [fleetkey::model::DeviceSerial],
    details: &'a serde_json::Value,
    prev_hash: String,
    hash: String,
}

impl<'a> From<&'a AuditEvent> for EventOut<'a> {
    fn from(e: &'a AuditEvent) -> Self {
        EventOut {
            seq: e.seq,
            at: e.draft.at,
            actor: &e.draft.actor,
            action: &e.draft.action,
            generation: e.draft.generation,
            subjects: &e.draft.subjects,
            details: &e.draft.details,
            prev_hash: hex::encode(e.prev_hash),
            hash: hex::encode(e.hash),
        }
    }
}

pub(super) async fn show(
    State(s): State<AppState>,
    ctx: Ctx,
    Q(q): Q<api::AuditQuery>,
) -> Result<Reply, ApiError> {
    let limit = api::page_limit(q.limit)?;
    let filter = AuditFilter {
        device: q
            .device
            .as_deref()
            .map(|d| serial("query.device", d))
            .transpose()?,
        action: q.action,
        since: q.since,
        until: q.until,
    };
    let after = q.after.unwrap_or(0);
    s.run(&ctx, Action::AuditRead, move |fleet, _| {
        let events = fleet.audit_show(&filter, after, limit)?;
        let next = (events.len() == limit)
            .then(|| events.last().map(|e| e.seq))
            .flatten();
        Reply::ok(&serde_json::json!({
            "events": events.iter().map(EventOut::from).collect::<Vec<_>>(),
            "next": next,
        }))
    })
    .await
}

pub(super) async fn verify(State(s): State<AppState>, ctx: Ctx) -> Result<Reply, ApiError> {
    s.run(&ctx, Action::AuditRead, |fleet, _| {
        match fleet.audit_verify() {
            Ok(events) => Reply::ok(&serde_json::json!({"verified": true, "events": events})),
            Err(fleetkey::Error::Chain(b)) => {
                Reply::ok(&serde_json::json!({"verified": false, "break": b.to_string()}))
            }
            Err(e) => Err(e.into()),
        }
    })
    .await
}
