//! The OpenAPI 3.1 document, built from [`crate::routes::ROUTES`] and served at
//! `GET /openapi.json`. `docs/openapi.json` is the same document checked in (a test compares
//! them; `FLEETKEY_WRITE_OPENAPI=1 cargo test -p fleetkey-server --test openapi` rewrites it).

use std::sync::OnceLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::routes::ROUTES;

/// The document as pretty JSON text with a final newline (as checked in).
pub fn document_text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let mut text = serde_json::to_string_pretty(&document()).unwrap_or_default();
        text.push('\n');
        text
    })
}

pub(crate) async fn serve() -> Response {
    let mut r = document_text().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn problem_response(description: &str) -> Value {
    json!({"description": description,
           "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}})
}

fn path_parameter(name: &str, path: &str) -> Value {
    let (schema, description) = match name {
        "serial" => (
            json!({"type": "string"}),
            "Device serial: text, or hex:<hex> for raw bytes (1 to 40 bytes), URL-encoded.",
        ),
        "generation" => (
            json!({"type": "integer", "minimum": 0, "maximum": 4294967295_u64}),
            "Generation number.",
        ),
        "id" if path.starts_with("/v1/tokens") => {
            (json!({"type": "string"}), "Token id (tok-...).")
        }
        _ => (json!({"type": "integer", "minimum": 0}), "Grant id."),
    };
    json!({"name": name, "in": "path", "required": true, "description": description, "schema": schema})
}

fn query(name: &str, schema: Value, description: &str) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema})
}

fn query_parameters(op: &str) -> Vec<Value> {
    let int = json!({"type": "integer", "minimum": 0});
    let limit = query(
        "limit",
        json!({"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
        "Page size.",
    );
    match op {
        "listDevices" => vec![
            query(
                "state",
                json!({"type": "string", "enum": ["pre-active", "active", "suspended", "deactivated", "compromised", "destroyed", "destroyed-compromised"]}),
                "Only devices in this state.",
            ),
            query("generation", int, "Only devices on this generation."),
            query(
                "label",
                json!({"type": "string"}),
                "Only devices with this label.",
            ),
            query(
                "prefix",
                json!({"type": "string"}),
                "Only serials starting with this (text, or hex:<hex>).",
            ),
            query(
                "after",
                json!({"type": "string"}),
                "Start after this serial (the previous page's next).",
            ),
            limit,
        ],
        "showAudit" => vec![
            query(
                "device",
                json!({"type": "string"}),
                "Only events about this device.",
            ),
            query(
                "action",
                json!({"type": "string"}),
                "Only events with this action, e.g. device.provision.",
            ),
            query(
                "since",
                json!({"type": "integer"}),
                "Only events at or after (Unix ms).",
            ),
            query(
                "until",
                json!({"type": "integer"}),
                "Only events before (Unix ms).",
            ),
            query(
                "after",
                int,
                "Start after this sequence number (the previous page's next).",
            ),
            limit,
        ],
        _ => vec![],
    }
}

fn operation(route: &crate::routes::Route) -> Value {
    let mut parameters: Vec<Value> = route
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| path_parameter(name, route.path))
        .collect();
    parameters.extend(query_parameters(route.op));
    if route.idempotent {
        parameters.push(json!({"name": "Idempotency-Key", "in": "header", "required": false,
            "description": "1 to 255 visible ASCII characters. A retry with the same key and request returns the first response (header Idempotent-Replayed: true) and does not run again; the same key with another request is refused (422).",
            "schema": {"type": "string", "minLength": 1, "maxLength": 255}}));
    }
    let mut responses = serde_json::Map::new();
    let media = if route.response == "Metrics" {
        "text/plain"
    } else {
        "application/json"
    };
    responses.insert(
        route.ok.to_string(),
        json!({"description": "Success.",
               "content": {media: {"schema": {"$ref": format!("#/components/schemas/{}", route.response)}}}}),
    );
    let mut description = String::new();
    if let Some(action) = route.action {
        let roles: Vec<&str> = fleetkey::access::Role::ALL
            .into_iter()
            .filter(|r| crate::auth::allowed(*r, action))
            .map(|r| r.name())
            .collect();
        description = format!("Roles: {}.", roles.join(", "));
        for (code, text) in [
            ("401", "No usable bearer token."),
            ("403", "The token's role does not allow this."),
            ("429", "Rate limit; see Retry-After."),
            ("503", "Store busy or request timeout; see Retry-After."),
        ] {
            responses.insert(code.into(), problem_response(text));
        }
        if route.body.is_some() || route.path.contains('{') || route.method == "GET" {
            responses.insert(
                "422".into(),
                problem_response(
                    "A field, path or query parameter is invalid (the problem names it).",
                ),
            );
        }
        if route.body.is_some() {
            responses.insert("400".into(), problem_response("The body is not JSON."));
            responses.insert("413".into(), problem_response("The body is too large."));
        }
        if route.method == "POST" || route.path.contains('{') {
            responses.insert(
                "404".into(),
                problem_response("The device, generation, grant or token does not exist."),
            );
        }
        if route.method == "POST" {
            responses.insert(
                "409".into(),
                problem_response(
                    "Refused in the current state (lifecycle, duplicate, idempotency key in use).",
                ),
            );
        }
    }
    let mut op = json!({
        "operationId": route.op,
        "summary": route.summary,
        "responses": responses,
    });
    if !description.is_empty() {
        op["description"] = json!(description);
        op["security"] = json!([{"bearer": []}]);
    } else {
        op["security"] = json!([]);
    }
    if !parameters.is_empty() {
        op["parameters"] = json!(parameters);
    }
    if let Some(body) = route.body {
        op["requestBody"] = json!({"required": body != "Empty" && body != "Reason",
            "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{body}")}}}});
    }
    op
}

/// The document.
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for route in ROUTES {
        let item = paths.entry(route.path).or_insert_with(|| json!({}));
        item[route.method.to_ascii_lowercase()] = operation(route);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "fleetkey service",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The key manager's operations over JSON: devices, generations, grants, governance records, audit, tokens. Errors are RFC 9457 application/problem+json with a request_id and a hint. See docs/service.md.",
        },
        "servers": [{"url": "https://127.0.0.1:8443"}, {"url": "http://127.0.0.1:8443"}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "A token from `fleetkey token issue` (fk_ and 64 hex digits)."}},
            "schemas": schemas(),
        },
    })
}

fn obj(required: &[&str], properties: Value) -> Value {
    json!({"type": "object", "additionalProperties": false, "required": required, "properties": properties})
}

fn out(properties: Value) -> Value {
    json!({"type": "object", "properties": properties})
}

fn schemas() -> Value {
    let s = json!({"type": "string"});
    let int = json!({"type": "integer"});
    let change = out(json!({"at": int, "actor": s, "reason": s}));
    let she = out(
        json!({"slot": s, "auth_slot": s, "counter": int, "m1": s, "m2": s, "m3": s, "m4": s, "m5": s}),
    );
    let device = out(json!({
        "serial": s, "she_uid": {"type": ["string", "null"]}, "labels": {"type": "array", "items": s},
        "generation": int, "revision": int, "state": s, "changed": change, "created_at": int}));
    let generation =
        out(json!({"generation": int, "state": s, "changed": change, "created_at": int}));
    let grant = out(
        json!({"id": int, "subject": s, "role": s, "scope": {"type": "array", "items": s},
        "not_before": int, "not_after": int, "subject_key": s, "denied": {"type": "boolean"}, "record": s}),
    );
    let record = out(json!({"sequence": int, "hex": s, "base64": s}));
    let token = out(
        json!({"id": s, "principal": s, "role": s, "subject": {"type": ["string", "null"]},
        "created_at": int, "created_by": s, "expires_at": {"type": ["integer", "null"]}, "revoked_at": {"type": ["integer", "null"]}}),
    );
    let reason_text = json!({"type": "string", "minLength": 1, "maxLength": 500});
    json!({
        "Problem": out(json!({"type": s, "title": s, "status": int, "detail": s, "field": s, "hint": s, "request_id": s, "instance": s})),
        "Health": out(json!({"status": s})),
        "OpenApi": {"type": "object"},
        "Metrics": {"type": "string", "description": "Prometheus text exposition format 0.0.4 (text/plain; version=0.0.4)."},
        "Status": out(json!({"fleet": {"type": "object"}, "module": s, "store": s,
            "generations": {"type": "array", "items": generation},
            "devices": {"type": "array", "items": out(json!({"state": s, "count": int}))}, "audit_events": int})),
        "Scheduler": out(json!({"instance": out(json!({"enabled": {"type": "boolean"}, "holder": s, "interval_seconds": int,
                "last_attempt_at": {"type": ["integer", "null"]}, "next_run_at": {"type": ["integer", "null"]}, "standby": {"type": "boolean"},
                "last_error": {"type": ["string", "null"]}, "last_actions": {"type": "array", "items": s}, "runs": int})),
            "lease": {"type": ["object", "null"], "properties": {"holder": s, "until": int}},
            "held": {"type": "boolean"},
            "last_run": {"type": ["object", "null"], "properties": {"holder": s, "started_at": int, "finished_at": int,
                "actions": {"type": "array", "items": s}, "error": {"type": ["string", "null"]}}}})),
        "Empty": obj(&[], json!({})),
        "Reason": obj(&[], json!({"reason": reason_text})),
        "NewDevice": obj(&["serial"], json!({"serial": s, "she_uid": {"type": "string", "pattern": "^[0-9a-fA-F]{30}$"}, "labels": {"type": "array", "items": s}})),
        "Import": obj(&["devices"], json!({"devices": {"type": "array", "minItems": 1, "maxItems": crate::api::IMPORT_MAX, "items": {"$ref": "#/components/schemas/NewDevice"}}})),
        "NewGeneration": obj(&["reason", "backup"], json!({"reason": reason_text, "backup": {"type": "string", "enum": ["none"], "description": "Custodian shares are a CLI ceremony; over HTTP the master is not split."}})),
        "GenerationChange": obj(&["reason"], json!({"reason": reason_text})),
        "Retire": obj(&["reason"], json!({"reason": reason_text, "force": {"type": "boolean", "default": false}})),
        "NewGrant": obj(&["subject", "role", "scope", "valid_seconds", "subject_key"], json!({"subject": s, "role": {"type": "string", "enum": ["technician", "operator"]},
            "scope": {"type": "array", "items": s}, "valid_seconds": {"type": "integer", "minimum": 1}, "subject_key": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"}})),
        "Deny": obj(&["reason"], json!({"reason": reason_text})),
        "Publish": obj(&["reason"], json!({"reason": reason_text, "valid_seconds": {"type": "integer", "minimum": 1}})),
        "NewToken": obj(&["principal", "role"], json!({"principal": {"type": "string", "pattern": "^[A-Za-z0-9._@-]{1,64}$"},
            "role": {"type": "string", "enum": ["admin", "operator", "station", "technician", "auditor"]},
            "subject": s, "expires_in_seconds": {"type": "integer", "minimum": 1}})),
        "Device": device,
        "DevicePage": out(json!({"devices": {"type": "array", "items": {"$ref": "#/components/schemas/Device"}}, "next": {"type": ["string", "null"]}})),
        "ImportReport": out(json!({"rows": int, "added": int, "already_present": int, "provisioned": int})),
        "Provisioning": out(json!({"device": {"$ref": "#/components/schemas/Device"},
            "keys": out(json!({"auth": s, "key_update": s, "roll_seed": s})),
            "she": {"type": ["array", "null"], "items": she}})),
        "KeyUpdate": out(json!({"device": {"$ref": "#/components/schemas/Device"}, "from": out(json!({"generation": int, "revision": int})), "she": {"type": "array", "items": she}})),
        "Generation": generation,
        "GenerationList": out(json!({"generations": {"type": "array", "items": {"$ref": "#/components/schemas/Generation"}}})),
        "RotationStatus": out(json!({"current": {"type": ["integer", "null"]}, "pending": int,
            "generations": {"type": "array", "items": out(json!({"generation": int, "state": s, "current": {"type": "boolean"}, "devices": int}))}})),
        "Grant": grant,
        "GrantList": out(json!({"grants": {"type": "array", "items": {"$ref": "#/components/schemas/Grant"}}})),
        "Record": record,
        "Export": out(json!({"files": {"type": "array", "items": out(json!({"name": s, "hex": s, "base64": s}))}})),
        "AuditPage": out(json!({"events": {"type": "array", "items": out(json!({"seq": int, "at": int, "actor": s, "action": s,
            "generation": {"type": ["integer", "null"]}, "subjects": {"type": "array", "items": s}, "details": {}, "prev_hash": s, "hash": s}))},
            "next": {"type": ["integer", "null"]}})),
        "AuditVerification": out(json!({"verified": {"type": "boolean"}, "events": int, "break": s})),
        "Token": token,
        "TokenList": out(json!({"tokens": {"type": "array", "items": {"$ref": "#/components/schemas/Token"}}})),
        "IssuedToken": out(json!({"id": s, "principal": s, "role": s, "secret": {"type": "string", "description": "The bearer token, shown once."}})),
    })
}
