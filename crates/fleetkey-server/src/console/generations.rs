//! The Generations page: master generations with their states and devices, and the
//! operations of `fleetkey generation create|rotate|activate|deactivate|revoke|destroy` where the
//! role allows, with the key manager's own guards (a generation devices still depend on is not
//! deactivated or destroyed without `force`) and hints.

use axum::extract::State;
use axum::response::Response;
use fleetkey::backup::MasterBackup;
use fleetkey::fleet::RotationStatus;
use fleetkey::lifecycle::State as Lifecycle;
use fleetkey::model::GenerationRecord;
use maud::html;
use serde::Deserialize;

use super::layout::{Confirm, confirm as confirm_body, csrf_field, progress, time};
use super::{User, Visit, number, one_of};
use crate::app::AppState;
use crate::auth::Action;
use crate::problem::ApiError;
use crate::routes::reason;

/// An operation on one generation.
struct GenOp {
    name: &'static str,
    label: &'static str,
    /// Whether the generation's state allows it.
    when: fn(Lifecycle) -> bool,
    /// What happens, after "Generation N".
    what: &'static str,
    /// Whether it takes `force`.
    force: bool,
    /// Whether the number must be typed to confirm.
    typed: bool,
}

const OPS: &[GenOp] = &[
    GenOp {
        name: "activate",
        label: "Activate",
        when: |s| matches!(s, Lifecycle::PreActive),
        what: "becomes active and the fleet's current generation: new keys derive from it",
        force: false,
        typed: false,
    },
    GenOp {
        name: "deactivate",
        label: "Deactivate",
        when: |s| matches!(s, Lifecycle::Active | Lifecycle::Suspended),
        what: "is no longer used for new keys (refused while devices still depend on it, unless forced)",
        force: true,
        typed: false,
    },
    GenOp {
        name: "revoke",
        label: "Revoke",
        when: |s| s.can_become(Lifecycle::Compromised),
        what: "is marked compromised: governed devices stop accepting it (this cannot be undone)",
        force: false,
        typed: true,
    },
    GenOp {
        name: "destroy",
        label: "Destroy",
        when: |s| s.holds_key_material() && !matches!(s, Lifecycle::Active),
        what: "has its master destroyed in the key module (zeroization; this cannot be undone)",
        force: true,
        typed: true,
    },
];

pub(super) async fn page(State(s): State<AppState>, user: User) -> Response {
    let found = user
        .run(&s, Action::GenerationRead, |fleet, _| {
            let gens = fleet.generations()?;
            let rotation = fleet.rotation_status().ok();
            Ok((gens, rotation, fleet.config().scheme))
        })
        .await;
    let (gens, rotation, scheme): (Vec<GenerationRecord>, Option<RotationStatus>, _) = match found {
        Ok(x) => x,
        Err(e) => return user.error("/ui/generations", "Generations", &e),
    };
    let write = user.may(Action::GenerationWrite);
    let devices = |g: u32| {
        rotation
            .as_ref()
            .and_then(|r| r.generations.iter().find(|c| c.generation == g))
            .map_or(0, |c| c.devices)
    };
    let holding: u64 = rotation
        .as_ref()
        .map_or(0, |r| r.generations.iter().map(|g| g.devices).sum());
    let current = rotation.as_ref().and_then(|r| r.current);
    let body = html! {
        @if !scheme.derives_from_master() {
            p.muted { "This fleet uses the " (scheme.name()) " scheme: each device has its own random key, and there are no master generations." }
        } @else {
            table {
                thead { tr { th { "Generation" } th { "State" } th.num { "Devices" } th { "Share" } th { "Last change" } @if write { th { "Actions" } } } }
                tbody {
                    @for g in &gens {
                        tr {
                            td { (g.generation) @if current == Some(g.generation) { " (current)" } }
                            td { span class=(format!("state state-{}", g.state.name())) { (g.state.name()) } }
                            td.num { (devices(g.generation)) }
                            td { (progress(devices(g.generation), holding, &format!("devices on generation {}", g.generation))) }
                            td { (time(g.changed.at)) " by " (g.changed.actor) ": " (g.changed.reason) }
                            @if write {
                                td.actions {
                                    @for op in OPS {
                                        @if (op.when)(g.state) {
                                            a.button href=(format!("/ui/generations/confirm?generation={}&op={}", g.generation, op.name)) { (op.label) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if write {
                h2 { "New generation" }
                form.row method="post" action="/ui/generations/act" {
                    (csrf_field(user.csrf()))
                    div { label for="reason" { "Reason" } input #reason type="text" name="reason" required maxlength="500" value="scheduled rotation"; }
                    button.primary type="submit" name="op" value="rotate" { "Rotate (create and make current)" }
                    button type="submit" name="op" value="create" { "Create (pre-active)" }
                }
                p.muted { "The service keeps no master backup; the CLI's " code { "fleetkey generation rotate --backup-to" } " writes one." }
            }
        }
    };
    user.page("/ui/generations", "Generations", body)
}

#[derive(Deserialize)]
pub(super) struct ConfirmQuery {
    #[serde(default)]
    generation: String,
    #[serde(default)]
    op: String,
}

fn op(name: &str) -> Result<&'static GenOp, ApiError> {
    let names: Vec<&str> = OPS.iter().map(|o| o.name).collect();
    let found = one_of("op", name, &names)?;
    OPS.iter()
        .find(|o| o.name == found)
        .ok_or(ApiError::NoRoute)
}

fn generation(text: &str) -> Result<u32, ApiError> {
    number("generation", text, "a generation number")
}

pub(super) async fn confirm(
    State(s): State<AppState>,
    user: User,
    axum::extract::Query(query): axum::extract::Query<ConfirmQuery>,
) -> Response {
    let checked = (|| {
        user.admitted(&s, Action::GenerationWrite)?;
        Ok((op(&query.op)?, generation(&query.generation)?))
    })();
    let (o, g) = match checked {
        Ok(x) => x,
        Err(e) => return user.error("/ui/generations", "Generations", &e),
    };
    let c = Confirm {
        action: "/ui/generations/act",
        hidden: vec![("generation", g.to_string()), ("op", o.name.to_owned())],
        what: format!("Generation {g} {}.", o.what),
        button: format!("{} generation {g}", o.label),
        reason: Some(""),
        force: o
            .force
            .then_some("force: even though devices still depend on it"),
        typed: o.typed.then(|| g.to_string()),
        cancel: "/ui/generations".into(),
    };
    user.page(
        "/ui/generations",
        &format!("{} generation {g}?", o.label),
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
    generation: String,
    #[serde(default)]
    reason: String,
    force: Option<String>,
    typed: Option<String>,
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
        let why = reason("reason", Some(form.reason.trim()), "")?;
        let force = form.force.as_deref() == Some("true");
        match form.op.as_str() {
            "create" | "rotate" => Ok((form.op.clone(), None, why, force)),
            other => {
                let o = op(other)?;
                let g = generation(&form.generation)?;
                if o.typed && form.typed.as_deref().map(str::trim) != Some(g.to_string().as_str()) {
                    return Err(ApiError::Invalid {
                        field: "typed".into(),
                        problem: format!("type the generation number {g} to confirm"),
                    });
                }
                Ok((o.name.to_owned(), Some(g), why, force))
            }
        }
    })();
    let (name, g, why, force) = match checked {
        Ok(x) => x,
        Err(e) => return user.error("/ui/generations", "Generations", &e),
    };
    let done = user
        .run(&s, Action::GenerationWrite, move |fleet, _| {
            let g = g.unwrap_or(0);
            Ok(match name.as_str() {
                "create" => fleet.create_generation(&why, &MasterBackup::NoBackup)?,
                "rotate" => fleet.rotate(&why, &MasterBackup::NoBackup)?,
                "activate" => fleet.activate_generation(g, &why)?,
                "deactivate" => fleet.deactivate_generation(g, &why, force)?,
                "revoke" => fleet.compromise_generation(g, &why)?,
                _ => fleet.destroy_generation(g, &why, force)?,
            })
        })
        .await;
    match done {
        Ok(r) => user.done(
            &s,
            format!("Generation {} is now {}.", r.generation, r.state.name()),
            "/ui/generations",
        ),
        Err(e) => user.error("/ui/generations", "Generations", &e),
    }
}
