//! Devices, and the fleet's status.

use axum::extract::State;
use axum::http::StatusCode;
use fleetkey::fleet::NewDevice;
use fleetkey::fleet::group::{DeviceWrite, GroupWrite, IdempotencyClaim, Response, Written};
use fleetkey::lifecycle::State as Lifecycle;
use fleetkey::model::{DeviceFilter, DeviceSerial};
use serde::Serialize;

use super::{DeviceView, reason, serial};
use crate::api;
use crate::app::{AppState, Body, Ctx, P, Q, Reply};
use crate::auth::{Action, Principal};
use crate::idempotency;
use crate::problem::ApiError;

pub(super) async fn status(State(s): State<AppState>, ctx: Ctx) -> Result<Reply, ApiError> {
    s.run(&ctx, Action::Status, |fleet, _| {
        let status = fleet.status()?;
        Reply::ok(&serde_json::json!({
            "fleet": status.fleet,
            "module": status.module,
            "store": status.store,
            "generations": status.generations,
            "devices": status.devices.iter().map(|(state, n)| serde_json::json!({"state": state, "count": n})).collect::<Vec<_>>(),
            "audit_events": status.audit_events,
        }))
    })
    .await
}

pub(super) async fn scheduler(State(s): State<AppState>, ctx: Ctx) -> Result<Reply, ApiError> {
    let local = s.scheduler();
    s.run(&ctx, Action::Status, move |fleet, _| {
        let state = fleet.scheduler_state()?;
        Reply::ok(&serde_json::json!({
            "instance": local,
            "lease": state.lease,
            "held": state.held,
            "last_run": state.last_run,
        }))
    })
    .await
}

fn new_device(field: &str, d: &api::NewDevice) -> Result<NewDevice, ApiError> {
    let she_uid = d
        .she_uid
        .as_deref()
        .map(|h| {
            let bytes = hex::decode(h).ok().filter(|b| b.len() == 15);
            bytes
                .and_then(|b| <[u8; 15]>::try_from(b).ok())
                .ok_or_else(|| ApiError::Invalid {
                    field: format!("{field}she_uid"),
                    problem: "30 hex characters (15 bytes)".into(),
                })
        })
        .transpose()?;
    Ok(NewDevice {
        serial: serial(&format!("{field}serial"), &d.serial)?,
        she_uid,
        labels: d.labels.clone(),
    })
}

pub(super) async fn add(
    State(s): State<AppState>,
    ctx: Ctx,
    Body(body, _): Body<api::NewDevice>,
) -> Result<Reply, ApiError> {
    let new = new_device("", &body)?;
    s.run(&ctx, Action::DeviceWrite, move |fleet, _| {
        let record = fleet.add_device(new)?;
        Reply::json(StatusCode::CREATED, &DeviceView::from(&record))
    })
    .await
}

#[derive(Serialize)]
struct DevicePage<'a> {
    devices: Vec<DeviceView<'a>>,
    /// The `after` of the next page, when this one is full.
    next: Option<&'a DeviceSerial>,
}

pub(super) async fn list(
    State(s): State<AppState>,
    ctx: Ctx,
    Q(q): Q<api::DeviceQuery>,
) -> Result<Reply, ApiError> {
    let limit = api::page_limit(q.limit)?;
    let filter = DeviceFilter {
        state: q
            .state
            .as_deref()
            .map(|name| {
                Lifecycle::ALL
                    .into_iter()
                    .find(|s| s.name() == name)
                    .ok_or_else(|| ApiError::Invalid {
                        field: "query.state".into(),
                        problem: format!("one of {}", Lifecycle::ALL.map(|s| s.name()).join(", ")),
                    })
            })
            .transpose()?,
        generation: q.generation,
        labels: q.label.into_iter().collect(),
        serial_prefix: q
            .prefix
            .as_deref()
            .map(|p| match p.strip_prefix("hex:") {
                Some(h) => hex::decode(h).map_err(|e| ApiError::Invalid {
                    field: "query.prefix".into(),
                    problem: e.to_string(),
                }),
                None => Ok(p.as_bytes().to_vec()),
            })
            .transpose()?,
    };
    let after = q
        .after
        .as_deref()
        .map(|a| serial("query.after", a))
        .transpose()?;
    s.run(&ctx, Action::DeviceRead, move |fleet, _| {
        let devices = fleet.devices(&filter, after.as_ref(), limit)?;
        let next = (devices.len() == limit)
            .then(|| devices.last().map(|d| &d.serial))
            .flatten();
        Reply::ok(&DevicePage {
            devices: devices.iter().map(DeviceView::from).collect(),
            next,
        })
    })
    .await
}

pub(super) async fn import(
    State(s): State<AppState>,
    ctx: Ctx,
    Body(body, _): Body<api::Import>,
) -> Result<Reply, ApiError> {
    if body.devices.is_empty() || body.devices.len() > api::IMPORT_MAX {
        return Err(ApiError::Invalid {
            field: "devices".into(),
            problem: format!("1 to {} devices per request", api::IMPORT_MAX),
        });
    }
    let mut csv = String::from("serial,she_uid,labels\n");
    for (i, d) in body.devices.iter().enumerate() {
        let field = format!("devices[{i}].");
        let new = new_device(&field, d)?;
        for (j, l) in new.labels.iter().enumerate() {
            if l.is_empty()
                || l.len() > 64
                || l.chars()
                    .any(|c| c.is_control() || matches!(c, ';' | ',' | '"'))
            {
                return Err(ApiError::Invalid {
                    field: format!("{field}labels[{j}]"),
                    problem: "1 to 64 characters, no control characters, ';', ',' or '\"'".into(),
                });
            }
        }
        // Serials as hex: every byte survives the CSV unchanged.
        csv.push_str("hex:");
        csv.push_str(&hex::encode(new.serial.as_bytes()));
        csv.push(',');
        if let Some(uid) = new.she_uid {
            csv.push_str(&hex::encode(uid));
        }
        csv.push(',');
        csv.push_str(&new.labels.join(";"));
        csv.push('\n');
    }
    s.run(&ctx, Action::DeviceWrite, move |fleet, _| {
        let file = tempfile::NamedTempFile::new()
            .map_err(|e| ApiError::Internal(format!("import: temporary file: {e}")))?;
        std::fs::write(file.path(), csv.as_bytes())
            .map_err(|e| ApiError::Internal(format!("import: temporary file: {e}")))?;
        let report = fleet
            .import_csv(file.path(), None, &())
            .map_err(|e| match e {
                // "csv line N: field" -> devices[N-2].field
                fleetkey::Error::Invalid { field, problem } => ApiError::Invalid {
                    field: csv_field(&field),
                    problem,
                },
                other => other.into(),
            })?;
        Reply::ok(&report)
    })
    .await
}

fn csv_field(field: &str) -> String {
    let Some(rest) = field.strip_prefix("csv line ") else {
        return field.to_owned();
    };
    let (line, name) = rest.split_once(": ").unwrap_or((rest, ""));
    match line.parse::<usize>() {
        Ok(n) if n >= 2 && !name.is_empty() => format!("devices[{}].{name}", n - 2),
        Ok(n) if n >= 2 => format!("devices[{}]", n - 2),
        _ => field.to_owned(),
    }
}

pub(super) async fn show(
    State(s): State<AppState>,
    ctx: Ctx,
    P(text): P<String>,
) -> Result<Reply, ApiError> {
    let serial = serial("serial", &text)?;
    s.run(&ctx, Action::DeviceRead, move |fleet, _| {
        let d = fleet.device(&serial)?;
        Reply::ok(&DeviceView::from(&d))
    })
    .await
}

#[derive(Serialize)]
struct ProvisionOut<'a> {
    device: DeviceView<'a>,
    keys: &'a fleetkey::fleet::material::KeysHex,
    she: &'a Option<Vec<fleetkey::fleet::material::SheUpdate>>,
}

pub(super) async fn provision(
    State(s): State<AppState>,
    ctx: Ctx,
    P(text): P<String>,
    Body(api::Empty {}, bytes): Body<api::Empty>,
) -> Result<Reply, ApiError> {
    let serial = serial("serial", &text)?;
    let fp = idempotency::fingerprint(&ctx.method, &ctx.path, &bytes);
    let principal = s.authorize(&ctx, Action::Provision).await?;
    s.write(grouped(
        &ctx,
        &principal,
        serial,
        DeviceWrite::Provision,
        "provisioned",
        fp,
    ))
    .await
}

/// A device write for group commit, with the request's idempotency key (when it has one).
fn grouped(
    ctx: &Ctx,
    principal: &Principal,
    serial: DeviceSerial,
    write: DeviceWrite,
    reason: &str,
    fingerprint: [u8; 32],
) -> GroupWrite {
    GroupWrite {
        actor: principal.name.clone(),
        serial,
        write,
        reason: reason.to_owned(),
        idempotency: ctx.idempotency_key.clone().map(|key| IdempotencyClaim {
            principal: principal.name.clone(),
            key,
            fingerprint,
        }),
    }
}

/// The response of a grouped write, rendered inside its transaction (the body an idempotency
/// key replays is this one).
pub(crate) fn render_write(_write: &GroupWrite, written: &Written) -> Result<Response, ApiError> {
    let reply = match written {
        Written::Provisioned(p) => {
            tracing::debug!(serial = %p.device.serial, revision = p.device.revision, "provisioned");
            Reply::ok(&ProvisionOut {
                device: DeviceView::from(&p.device),
                keys: &p.keys,
                she: &p.she,
            })?
        }
        Written::Refreshed(u) => Reply::ok(&KeyUpdateOut {
            device: DeviceView::from(&u.device),
            from: Revision {
                generation: u.from.0,
                revision: u.from.1,
            },
            she: &u.she,
        })?,
        Written::Moved(d) => Reply::ok(&DeviceView::from(d))?,
    };
    Ok(Response {
        status: reply.status.as_u16(),
        body: reply.body,
    })
}

#[derive(Serialize)]
struct KeyUpdateOut<'a> {
    device: DeviceView<'a>,
    from: Revision,
    she: &'a [fleetkey::fleet::material::SheUpdate],
}

#[derive(Serialize)]
struct Revision {
    generation: u32,
    revision: u32,
}

pub(super) async fn refresh(
    State(s): State<AppState>,
    ctx: Ctx,
    P(text): P<String>,
    Body(body, bytes): Body<api::Reason>,
) -> Result<Reply, ApiError> {
    let serial = serial("serial", &text)?;
    let why = reason("reason", body.reason.as_deref(), "refresh")?;
    let fp = idempotency::fingerprint(&ctx.method, &ctx.path, &bytes);
    let principal = s.authorize(&ctx, Action::DeviceWrite).await?;
    s.write(grouped(
        &ctx,
        &principal,
        serial,
        DeviceWrite::Refresh,
        &why,
        fp,
    ))
    .await
}

/// Suspend, resume, revoke: grouped writes (no idempotency key: repeating one is refused as an
/// illegal transition and changes nothing).
async fn lifecycle(
    s: AppState,
    ctx: Ctx,
    text: String,
    body: api::Reason,
    write: DeviceWrite,
) -> Result<Reply, ApiError> {
    let serial = serial("serial", &text)?;
    let why = reason("reason", body.reason.as_deref(), "")?;
    let principal = s.authorize(&ctx, Action::DeviceWrite).await?;
    let mut w = grouped(&ctx, &principal, serial, write, &why, [0; 32]);
    w.idempotency = None;
    s.write(w).await
}

pub(super) async fn suspend(
    State(s): State<AppState>,
    ctx: Ctx,
    P(text): P<String>,
    Body(body, _): Body<api::Reason>,
) -> Result<Reply, ApiError> {
    lifecycle(s, ctx, text, body, DeviceWrite::Suspend).await
}

pub(super) async fn resume(
    State(s): State<AppState>,
    ctx: Ctx,
    P(text): P<String>,
    Body(body, _): Body<api::Reason>,
) -> Result<Reply, ApiError> {
    lifecycle(s, ctx, text, body, DeviceWrite::Resume).await
}

pub(super) async fn revoke(
    State(s): State<AppState>,
    ctx: Ctx,
    P(text): P<String>,
    Body(body, _): Body<api::Reason>,
) -> Result<Reply, ApiError> {
    lifecycle(s, ctx, text, body, DeviceWrite::Revoke).await
}

/// Decommission is not grouped: its purge rewrites the store's files.
pub(super) async fn decommission(
    State(s): State<AppState>,
    ctx: Ctx,
    P(text): P<String>,
    Body(body, _): Body<api::Reason>,
) -> Result<Reply, ApiError> {
    let serial = serial("serial", &text)?;
    let why = reason("reason", body.reason.as_deref(), "")?;
    s.run(&ctx, Action::DeviceWrite, move |fleet, _| {
        let d = fleet.decommission(&serial, &why)?;
        Reply::ok(&DeviceView::from(&d))
    })
    .await
}

#[cfg(test)]
mod tests {
    #[test]
    fn csv_lines_become_device_indexes() {
        assert_eq!(super::csv_field("csv line 2: serial"), "devices[0].serial");
        assert_eq!(
            super::csv_field("csv line 11: she_uid"),
            "devices[9].she_uid"
        );
        assert_eq!(super::csv_field("label"), "label");
    }
}
