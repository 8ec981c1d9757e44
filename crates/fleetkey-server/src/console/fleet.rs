//! The Fleet page: scheme, key module, store, devices by state, generations with the migration
//! to the current one, and what the lifecycle policy says is due (`fleetkey status`,
//! `fleetkey generation rotation`, `fleetkey lifecycle due`).

use axum::extract::State;
use axum::response::Response;
use fleetkey::fleet::FleetStatus;
use fleetkey::fleet::RotationStatus;
use fleetkey::fleet::lifecycle::due::{DueItem, relative};
use maud::html;

use super::User;
use super::layout::{progress, time};
use crate::app::AppState;
use crate::auth::Action;

struct Summary {
    status: FleetStatus,
    rotation: Option<RotationStatus>,
    due: Result<Vec<DueItem>, String>,
    now: i64,
}

pub(super) async fn page(State(s): State<AppState>, user: User) -> Response {
    let summary = user
        .run(&s, Action::Status, |fleet, _| {
            let status = fleet.status()?;
            // Stored fleets have no generations to migrate between.
            let rotation = fleet.rotation_status().ok();
            let due = fleet.lifecycle_due(None).map_err(|e| e.to_string());
            Ok(Summary {
                status,
                rotation,
                due,
                now: fleet.now_ms(),
            })
        })
        .await;
    let sum = match summary {
        Ok(s) => s,
        Err(e) => return user.error("/ui", "Fleet", &e),
    };
    let st = &sum.status;
    let total: u64 = st.devices.iter().map(|(_, n)| n).sum();
    let body = html! {
        dl.facts {
            dt { "Fleet" } dd { code { (st.fleet.id) } }
            dt { "Scheme" } dd { (st.fleet.scheme.name()) }
            dt { "Key module" } dd { (st.module) }
            dt { "Store" } dd { (st.store) }
            dt { "Current generation" } dd {
                @match st.fleet.current_generation { Some(g) => { (g) } None => { "none" } }
            }
            dt { "Audit events" } dd { (st.audit_events) }
        }
        h2 { "Devices by state" }
        div.cards {
            div.card { div.n { (total) } div { "devices" } }
            @for (state, n) in &st.devices {
                div.card {
                    div.n { (n) }
                    div { a href=(format!("/ui/devices?state={}", state.name())) { (state.name()) } }
                }
            }
        }
        @if let Some(rot) = &sum.rotation {
            h2 { "Generations" }
            @let holding: u64 = rot.generations.iter().map(|g| g.devices).sum();
            @if let Some(current) = rot.current {
                @let on_current = rot.generations.iter().find(|g| g.generation == current).map_or(0, |g| g.devices);
                p {
                    "Migration to generation " (current) ": "
                    (progress(on_current, holding, "devices on the current generation"))
                    @if rot.pending > 0 { " · " (rot.pending) " still to refresh (" code { "fleetkey device refresh --all" } ")" }
                }
            }
            table {
                thead { tr { th { "Generation" } th { "State" } th.num { "Devices" } th { "Share" } } }
                tbody {
                    @for g in &rot.generations {
                        tr {
                            td { (g.generation) @if g.current { " (current)" } }
                            td { span class=(format!("state state-{}", g.state.name())) { (g.state.name()) } }
                            td.num { (g.devices) }
                            td { (progress(g.devices, holding, &format!("devices on generation {}", g.generation))) }
                        }
                    }
                }
            }
        }
        h2 { "Due by the lifecycle policy" }
        @match &sum.due {
            Err(e) => { p.problem { (e) } }
            Ok(items) if items.is_empty() => { p.muted { "Nothing is due." } }
            Ok(items) => {
                table {
                    thead { tr { th { "What" } th { "When" } th.num { "Count" } th { "Detail" } } }
                    tbody {
                        @for item in items {
                            tr {
                                td { (item.action.name()) @if let Some(g) = item.generation { " (generation " (g) ")" } }
                                td {
                                    @if item.overdue { span.overdue { "overdue " } }
                                    (relative(item.due_at, sum.now))
                                    br; span.muted { (time(item.due_at)) }
                                }
                                td.num { (item.count) }
                                td {
                                    (item.message)
                                    @if let Some(b) = &item.blocked { br; span.overdue { "blocked: " } (b) }
                                    @if let Some(c) = &item.command { br; code { (c) } }
                                }
                            }
                        }
                    }
                }
                p.muted { code { "fleetkey lifecycle run" } " (or the scheduler of " code { "fleetkey serve" } ") carries out what is ready." }
            }
        }
    };
    user.page("/ui", "Fleet", body)
}
