//! Governance records (governed scheme).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine;
use fleetkey::fleet::governance::{AUTO_RECORD_VALIDITY, Published};
use serde::Serialize;

use super::reason;
use crate::api;
use crate::app::{AppState, Body, Ctx, Reply};
use crate::auth::Action;
use crate::problem::ApiError;

/// A generation record's bytes, hex and base64.
#[derive(Serialize)]
pub(super) struct RecordOut {
    sequence: u64,
    hex: String,
    base64: String,
}

impl From<&Published> for RecordOut {
    fn from(p: &Published) -> Self {
        RecordOut {
            sequence: p.sequence,
            hex: hex::encode(&p.bytes),
            base64: base64::engine::general_purpose::STANDARD.encode(&p.bytes),
        }
    }
}

pub(super) async fn publish(
    State(s): State<AppState>,
    ctx: Ctx,
    Body(body, _): Body<api::Publish>,
) -> Result<Reply, ApiError> {
    let why = reason("reason", Some(&body.reason), "")?;
    let validity = match body.valid_seconds {
        None => AUTO_RECORD_VALIDITY,
        Some(0) => {
            return Err(ApiError::Invalid {
                field: "valid_seconds".into(),
                problem: "at least 1".into(),
            });
        }
        Some(n) => Duration::from_secs(n),
    };
    s.run(&ctx, Action::GovernanceWrite, move |fleet, _| {
        let p = fleet.publish_generation_record(&why, validity)?;
        Reply::json(StatusCode::CREATED, &RecordOut::from(&p))
    })
    .await
}

pub(super) async fn latest(State(s): State<AppState>, ctx: Ctx) -> Result<Reply, ApiError> {
    s.run(&ctx, Action::GovernanceRead, |fleet, _| {
        match fleet.latest_generation_record()? {
            Some(p) => Reply::ok(&RecordOut::from(&p)),
            None => Err(fleetkey::Error::NoGenerationRecord.into()),
        }
    })
    .await
}

#[derive(Serialize)]
struct FileOut {
    /// The file name `fleetkey governance export` would write.
    name: String,
    hex: String,
    base64: String,
}

pub(super) async fn export(State(s): State<AppState>, ctx: Ctx) -> Result<Reply, ApiError> {
    s.run(&ctx, Action::GovernanceRead, |fleet, _| {
        let mut files = Vec::new();
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        if let Some(p) = fleet.latest_generation_record()? {
            files.push(FileOut {
                name: format!("generation-record-{}.cose", p.sequence),
                hex: hex::encode(&p.bytes),
                base64: b64(&p.bytes),
            });
        }
        for g in fleet.grants()?.into_iter().filter(|g| !g.denied) {
            let bytes = hex::decode(&g.record).map_err(|e| {
                ApiError::Internal(format!("stored grant {} does not decode: {e}", g.id))
            })?;
            files.push(FileOut {
                name: format!("grant-{}.cose", g.id),
                base64: b64(&bytes),
                hex: g.record,
            });
        }
        Reply::ok(&serde_json::json!({ "files": files }))
    })
    .await
}
