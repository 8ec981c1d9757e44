//! Master generations.

use axum::extract::State;
use axum::http::StatusCode;
use fleetkey::backup::MasterBackup;

use super::reason;
use crate::api;
use crate::app::{AppState, Body, Ctx, P, Reply};
use crate::auth::Action;
use crate::problem::ApiError;

pub(super) async fn list(State(s): State<AppState>, ctx: Ctx) -> Result<Reply, ApiError> {
    s.run(&ctx, Action::GenerationRead, |fleet, _| {
        Reply::ok(&serde_json::json!({"generations": fleet.generations()?}))
    })
    .await
}

pub(super) async fn rotation(State(s): State<AppState>, ctx: Ctx) -> Result<Reply, ApiError> {
    s.run(&ctx, Action::GenerationRead, |fleet, _| {
        Reply::ok(&fleet.rotation_status()?)
    })
    .await
}

fn backup(b: api::Backup) -> MasterBackup {
    match b {
        api::Backup::None => MasterBackup::NoBackup,
    }
}

pub(super) async fn create(
    State(s): State<AppState>,
    ctx: Ctx,
    Body(body, _): Body<api::NewGeneration>,
) -> Result<Reply, ApiError> {
    let why = reason("reason", Some(&body.reason), "")?;
    s.run(&ctx, Action::GenerationWrite, move |fleet, _| {
        let g = fleet.create_generation(&why, &backup(body.backup))?;
        Reply::json(StatusCode::CREATED, &g)
    })
    .await
}

pub(super) async fn rotate(
    State(s): State<AppState>,
    ctx: Ctx,
    Body(body, _): Body<api::NewGeneration>,
) -> Result<Reply, ApiError> {
    let why = reason("reason", Some(&body.reason), "")?;
    s.run(&ctx, Action::GenerationWrite, move |fleet, _| {
        let g = fleet.rotate(&why, &backup(body.backup))?;
        Reply::json(StatusCode::CREATED, &g)
    })
    .await
}

pub(super) async fn activate(
    State(s): State<AppState>,
    ctx: Ctx,
    P(generation): P<u32>,
    Body(body, _): Body<api::GenerationChange>,
) -> Result<Reply, ApiError> {
    let why = reason("reason", Some(&body.reason), "")?;
    s.run(&ctx, Action::GenerationWrite, move |fleet, _| {
        Reply::ok(&fleet.activate_generation(generation, &why)?)
    })
    .await
}

pub(super) async fn revoke(
    State(s): State<AppState>,
    ctx: Ctx,
    P(generation): P<u32>,
    Body(body, _): Body<api::GenerationChange>,
) -> Result<Reply, ApiError> {
    let why = reason("reason", Some(&body.reason), "")?;
    s.run(&ctx, Action::GenerationWrite, move |fleet, _| {
        Reply::ok(&fleet.compromise_generation(generation, &why)?)
    })
    .await
}

pub(super) async fn deactivate(
    State(s): State<AppState>,
    ctx: Ctx,
    P(generation): P<u32>,
    Body(body, _): Body<api::Retire>,
) -> Result<Reply, ApiError> {
    let why = reason("reason", Some(&body.reason), "")?;
    s.run(&ctx, Action::GenerationWrite, move |fleet, _| {
        Reply::ok(&fleet.deactivate_generation(generation, &why, body.force)?)
    })
    .await
}

pub(super) async fn destroy(
    State(s): State<AppState>,
    ctx: Ctx,
    P(generation): P<u32>,
    Body(body, _): Body<api::Retire>,
) -> Result<Reply, ApiError> {
    let why = reason("reason", Some(&body.reason), "")?;
    s.run(&ctx, Action::GenerationWrite, move |fleet, _| {
        Reply::ok(&fleet.destroy_generation(generation, &why, body.force)?)
    })
    .await
}
