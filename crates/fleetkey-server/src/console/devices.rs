//! The Devices pages: the list (search by serial prefix or label, filter by state and
//! generation, paged by serial: one indexed range read a page, whatever the fleet's size), a
//! device with its history from the audit record, and its actions by role and state
//! (`fleetkey device provision|refresh|suspend|resume|revoke|decommission`), each behind a
//! confirmation naming the serial.

use axum::extract::State;
use axum::response::Response;
use fleetkey::audit::{AuditEvent, AuditFilter};
use fleetkey::fleet::{KeyUpdate, Provisioning};
use fleetkey::lifecycle::State as Lifecycle;
use fleetkey::model::{DeviceFilter, DeviceRecord, DeviceSerial};
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{Confirm, confirm as confirm_body, q, time};
use super::{User, Visit, number, one_of};
use crate::app::AppState;
use crate::auth::Action;
use crate::problem::ApiError;
use crate::routes::{reason, serial};

/// Devices per page.
const PAGE: usize = 50;
/// History events shown on a device's page.
const HISTORY: usize = 200;

#[derive(Deserialize, Default)]
pub(super) struct ListQuery {
    #[serde(default)]
    serial: String,
    #[serde(default)]
    label: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    generation: String,
    #[serde(default)]
    after: String,
}

fn filter(q: &ListQuery) -> Result<(DeviceFilter, Option<DeviceSerial>), ApiError> {
    let invalid = |field: &str, problem: String| ApiError::Invalid {
        field: field.into(),
        problem,
    };
    let state = match q.state.as_str() {
        "" => None,
        name => Some(Lifecycle::from_name(name).ok_or_else(|| {
            invalid(
                "state",
                format!("one of {}", Lifecycle::ALL.map(|s| s.name()).join(", ")),
            )
        })?),
    };
    let generation = match q.generation.trim() {
        "" => None,
        g => Some(number::<u32>("generation", g, "a generation number")?),
    };
    let serial_prefix = match q.serial.trim() {
        "" => None,
        p => Some(match p.strip_prefix("hex:") {
            Some(h) => hex::decode(h).map_err(|e| invalid("serial", e.to_string()))?,
            None => p.as_bytes().to_vec(),
        }),
    };
    let label = q.label.trim();
    let after = match q.after.as_str() {
        "" => None,
        a => Some(serial("after", a)?),
    };
    Ok((
        DeviceFilter {
            state,
            generation,
            labels: (!label.is_empty())
                .then(|| label.to_owned())
                .into_iter()
                .collect(),
            serial_prefix,
        },
        after,
    ))
}

fn device_href(serial: &DeviceSerial) -> String {
    format!("/ui/device?serial={}", q(&serial.to_string()))
}

fn state_badge(state: Lifecycle) -> Markup {
    html! { span class=(format!("state state-{}", state.name())) { (state.name()) } }
}

pub(super) async fn list(
    State(s): State<AppState>,
    user: User,
    axum::extract::Query(query): axum::extract::Query<ListQuery>,
) -> Response {
    let found = match filter(&query) {
        Ok((f, after)) => {
            user.run(&s, Action::DeviceRead, move |fleet, _| {
                Ok(fleet.devices(&f, after.as_ref(), PAGE)?)
            })
            .await
        }
        Err(e) => Err(e),
    };
    if let Err(e @ (ApiError::Forbidden(_) | ApiError::Unauthenticated(_))) = &found {
        return user.error("/ui/devices", "Devices", e);
    }
    let base = format!(
        "/ui/devices?serial={}&label={}&state={}&generation={}",
        q(query.serial.trim()),
        q(query.label.trim()),
        q(&query.state),
        q(query.generation.trim())
    );
    let body = html! {
        form.filters method="get" action="/ui/devices" role="search" {
            div { label for="serial" { "Serial starts with" } input #serial type="text" name="serial" value=(query.serial) placeholder="ECU-00"; }
            div { label for="label" { "Label" } input #label type="text" name="label" value=(query.label); }
            div {
                label for="state" { "State" }
                select #state name="state" {
                    option value="" selected[query.state.is_empty()] { "any" }
                    @for st in Lifecycle::ALL {
                        option value=(st.name()) selected[query.state == st.name()] { (st.name()) }
                    }
                }
            }
            div { label for="generation" { "Generation" } input #generation type="number" min="1" name="generation" value=(query.generation); }
            div { button.primary type="submit" { "Search" } }
        }
        @match &found {
            Err(e) => { (super::layout::problem_box(&e.problem())) }
            Ok(devices) if devices.is_empty() => { p.muted { "No devices match." } }
            Ok(devices) => {
                table {
                    thead { tr { th { "Serial" } th { "State" } th.num { "Generation" } th.num { "Revision" } th { "Labels" } th { "Changed" } } }
                    tbody {
                        @for d in devices {
                            tr {
                                td { a href=(device_href(&d.serial)) { code { (d.serial) } } }
                                td { (state_badge(d.state)) }
                                td.num { (d.generation) }
                                td.num { (d.revision) }
                                td { (d.labels.join(", ")) }
                                td { (time(d.changed.at)) " · " (d.changed.reason) }
                            }
                        }
                    }
                }
                nav.pager aria-label="Pages" {
                    @if !query.after.is_empty() { a href=(base) { "First page" } }
                    @if devices.len() == PAGE {
                        @if let Some(last) = devices.last() {
                            a href=(format!("{base}&after={}", q(&last.serial.to_string()))) rel="next" { "Next page" }
                        }
                    }
                }
            }
        }
    };
    user.page("/ui/devices", "Devices", body)
}

#[derive(Deserialize)]
pub(super) struct SerialQuery {
    #[serde(default)]
    serial: String,
    #[serde(default)]
    action: String,
}

/// The device actions: name, what the role needs, whether the state allows it, the confirmation's
/// sentence, whether the serial must be typed.
struct DeviceAction {
    name: &'static str,
    label: &'static str,
    needs: Action,
    when: fn(Lifecycle) -> bool,
    what: &'static str,
    typed: bool,
    reason: Option<&'static str>,
}

const ACTIONS: &[DeviceAction] = &[
    DeviceAction {
        name: "provision",
        label: "Provision",
        needs: Action::Provision,
        when: |s| matches!(s, Lifecycle::PreActive),
        what: "becomes active; its key material and SHE load messages are shown once on the next page (handle them as key material)",
        typed: false,
        reason: None,
    },
    DeviceAction {
        name: "refresh",
        label: "Refresh",
        needs: Action::DeviceWrite,
        when: |s| matches!(s, Lifecycle::Active),
        what: "gets key revision + 1 (and moves to the current generation); the SHE update messages are shown on the next page",
        typed: false,
        reason: Some("refresh"),
    },
    DeviceAction {
        name: "suspend",
        label: "Suspend",
        needs: Action::DeviceWrite,
        when: |s| matches!(s, Lifecycle::Active),
        what: "is suspended: no key material is issued for it until it is resumed",
        typed: false,
        reason: Some("suspended"),
    },
    DeviceAction {
        name: "resume",
        label: "Resume",
        needs: Action::DeviceWrite,
        when: |s| matches!(s, Lifecycle::Suspended),
        what: "becomes active again",
        typed: false,
        reason: Some("resumed"),
    },
    DeviceAction {
        name: "revoke",
        label: "Revoke",
        needs: Action::DeviceWrite,
        when: |s| s.can_become(Lifecycle::Compromised),
        what: "is marked compromised: its keys are never issued again (this cannot be undone)",
        typed: true,
        reason: Some(""),
    },
    DeviceAction {
        name: "decommission",
        label: "Decommission",
        needs: Action::DeviceWrite,
        when: Lifecycle::holds_key_material,
        what: "leaves the fleet and its key material is destroyed (this cannot be undone)",
        typed: true,
        reason: Some("decommissioned"),
    },
];

fn action_named(name: &str) -> Result<&'static DeviceAction, ApiError> {
    let names: Vec<&str> = ACTIONS.iter().map(|a| a.name).collect();
    let found = one_of("action", name, &names)?;
    ACTIONS
        .iter()
        .find(|a| a.name == found)
        .ok_or(ApiError::NoRoute)
}

struct Shown {
    device: DeviceRecord,
    history: Vec<AuditEvent>,
}

pub(super) async fn show(
    State(s): State<AppState>,
    user: User,
    axum::extract::Query(query): axum::extract::Query<SerialQuery>,
) -> Response {
    let shown = match serial("serial", &query.serial) {
        Ok(serial) => {
            let history = user.may(Action::AuditRead);
            user.run(&s, Action::DeviceRead, move |fleet, _| {
                let device = fleet.device(&serial)?;
                let history = if history {
                    let f = AuditFilter {
                        device: Some(serial),
                        ..Default::default()
                    };
                    fleet.audit_show(&f, 0, HISTORY)?
                } else {
                    Vec::new()
                };
                Ok(Shown { device, history })
            })
            .await
        }
        Err(e) => Err(e),
    };
    let shown = match shown {
        Ok(x) => x,
        Err(e) => return user.error("/ui/devices", "Device", &e),
    };
    let d = &shown.device;
    let title = format!("Device {}", d.serial);
    let body = html! {
        dl.facts {
            dt { "Serial" } dd { code { (d.serial) } }
            dt { "State" } dd { (state_badge(d.state)) }
            dt { "Generation" } dd { (d.generation) }
            dt { "Key revision" } dd { (d.revision) }
            dt { "SHE UID" } dd { @match d.she_uid { Some(u) => code { (hex::encode(u)) }, None => span.muted { "none" } } }
            dt { "Labels" } dd { (d.labels.join(", ")) }
            dt { "Registered" } dd { (time(d.created_at)) }
            dt { "Last change" } dd { (time(d.changed.at)) " by " (d.changed.actor) ": " (d.changed.reason) }
        }
        (actions(&user, d))
        @if user.may(Action::AuditRead) {
            h2 { "History" }
            (super::audit::events_table(&shown.history))
            @if shown.history.len() == HISTORY {
                p { a href=(format!("/ui/audit?serial={}&after={}", q(&d.serial.to_string()), shown.history.last().map_or(0, |e| e.seq))) { "More in the audit" } }
            }
        }
    };
    user.page("/ui/devices", &title, body)
}

fn actions(user: &User, d: &DeviceRecord) -> Markup {
    let allowed: Vec<&DeviceAction> = ACTIONS
        .iter()
        .filter(|a| user.may(a.needs) && (a.when)(d.state))
        .collect();
    html! {
        @if !allowed.is_empty() {
            h2 { "Actions" }
            div.actions {
                @for a in allowed {
                    a.button href=(format!("/ui/device/confirm?serial={}&action={}", q(&d.serial.to_string()), a.name)) { (a.label) }
                }
            }
        }
    }
}

pub(super) async fn confirm(
    State(s): State<AppState>,
    user: User,
    axum::extract::Query(query): axum::extract::Query<SerialQuery>,
) -> Response {
    let checked = action_named(&query.action).and_then(|a| {
        user.admitted(&s, a.needs)?;
        Ok((a, serial("serial", &query.serial)?))
    });
    let (a, serial) = match checked {
        Ok(x) => x,
        Err(e) => return user.error("/ui/devices", "Device", &e),
    };
    let name = serial.to_string();
    let c = Confirm {
        action: "/ui/device/act",
        hidden: vec![("serial", name.clone()), ("action", a.name.to_owned())],
        what: format!("Device {name} {}.", a.what),
        button: format!("{} {name}", a.label),
        reason: a.reason,
        force: None,
        typed: a.typed.then(|| name.clone()),
        cancel: device_href(&serial),
    };
    user.page(
        "/ui/devices",
        &format!("{} {name}?", a.label),
        confirm_body(&c, user.csrf()),
    )
}

#[derive(Deserialize)]
pub(super) struct ActForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    serial: String,
    #[serde(default)]
    action: String,
    reason: Option<String>,
    typed: Option<String>,
}

enum Done {
    Provisioned(Box<Provisioning>),
    Refreshed(Box<KeyUpdate>),
    Moved(DeviceRecord),
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
        let a = action_named(&form.action)?;
        let serial = serial("serial", &form.serial)?;
        if a.typed && form.typed.as_deref().map(str::trim) != Some(serial.to_string().as_str()) {
            return Err(ApiError::Invalid {
                field: "typed".into(),
                problem: format!("type the serial {serial} to confirm"),
            });
        }
        let why = match a.reason {
            Some(default) => reason(
                "reason",
                Some(form.reason.as_deref().unwrap_or(default).trim()),
                default,
            )?,
            None => String::new(),
        };
        Ok((a, serial, why))
    })();
    let (a, serial, why) = match checked {
        Ok(x) => x,
        Err(e) => return user.error("/ui/devices", "Device", &e),
    };
    let name = a.name;
    let target = serial.clone();
    let done = user
        .run(&s, a.needs, move |fleet, _| {
            Ok(match name {
                "provision" => Done::Provisioned(Box::new(fleet.provision(&target)?)),
                "refresh" => Done::Refreshed(Box::new(fleet.refresh(&target, &why)?)),
                "suspend" => Done::Moved(fleet.suspend(&target, &why)?),
                "resume" => Done::Moved(fleet.resume(&target, &why)?),
                "revoke" => Done::Moved(fleet.revoke(&target, &why)?),
                _ => Done::Moved(fleet.decommission(&target, &why)?),
            })
        })
        .await;
    let title = format!("Device {serial}");
    match done {
        Err(e) => user.error("/ui/devices", &title, &e),
        Ok(Done::Moved(d)) => user.done(
            &s,
            format!("Device {} is now {}.", d.serial, d.state.name()),
            &device_href(&d.serial),
        ),
        Ok(Done::Provisioned(p)) => user.page(
            "/ui/devices",
            &format!("Provisioned {}", p.device.serial),
            html! {
                p.flash role="status" { "Device " (p.device.serial) " is " (p.device.state.name()) " at generation " (p.device.generation) ", revision " (p.device.revision) "." }
                div.secret {
                    p { strong { "Key material, shown once." } " Write it to the device now; this page is not kept (Cache-Control: no-store)." }
                    table {
                        tbody {
                            tr { th { "auth" } td.mono.hexwrap { (p.keys.auth) } }
                            tr { th { "key_update" } td.mono.hexwrap { (p.keys.key_update) } }
                            tr { th { "roll_seed" } td.mono.hexwrap { (p.keys.roll_seed) } }
                        }
                    }
                }
                @if let Some(she) = &p.she { (she_table(she)) }
                p { a href=(device_href(&p.device.serial)) { "Back to " (p.device.serial) } }
            },
        ),
        Ok(Done::Refreshed(u)) => user.page(
            "/ui/devices",
            &format!("Refreshed {}", u.device.serial),
            html! {
                p.flash role="status" { "Device " (u.device.serial) " moved from generation " (u.from.0) " revision " (u.from.1) " to generation " (u.device.generation) " revision " (u.device.revision) "." }
                p { "Deliver these SHE updates to the device (they carry the new keys encrypted under its current ones):" }
                (she_table(&u.she))
                p { a href=(device_href(&u.device.serial)) { "Back to " (u.device.serial) } }
            },
        ),
    }
}

fn she_table(she: &[fleetkey::fleet::material::SheUpdate]) -> Markup {
    html! {
        h2 { "SHE messages (M1-M5)" }
        table {
            thead { tr { th { "Slot" } th { "Authorised by" } th.num { "Counter" } th { "M1 · M2 · M3 · M4 · M5" } } }
            tbody {
                @for u in she {
                    tr {
                        td { (u.slot) } td { (u.auth_slot) } td.num { (u.counter) }
                        td.mono.hexwrap { (u.m1) " " (u.m2) " " (u.m3) " " (u.m4) " " (u.m5) }
                    }
                }
            }
        }
    }
}
