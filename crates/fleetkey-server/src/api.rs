//! The request bodies and query strings of the JSON API, and their parser.
//!
//! Every body type refuses unknown fields; [`parse_body`] names the field at fault
//! (`devices[2].labels[0]`) and never panics, whatever the bytes (`tests/parsers.rs` checks it
//! on arbitrary JSON, `fuzz/fuzz_targets/service_bodies.rs` on arbitrary bytes).

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::problem::ApiError;

/// Parses a JSON body into `T`; an empty body is read as `{}`.
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    // serde reads a struct from a JSON array too; the API takes objects only.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                Ok(_) => ApiError::Invalid {
                    field: "body".into(),
                    problem: "must be a JSON object".into(),
                },
                Err(e) => ApiError::Malformed(e.to_string()),
            },
        );
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => ApiError::Invalid {
                field: if path == "." { "body".into() } else { path },
                problem: strip_position(&inner.to_string()),
            },
            _ => ApiError::Malformed(inner.to_string()),
        }
    })?;
    de.end().map_err(|e| ApiError::Malformed(e.to_string()))?;
    Ok(value)
}

/// serde_json's data errors end in " at line 1 column 17": the field name says more.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// No body (or `{}`).
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// `POST /v1/devices`: register one device (pre-active).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    /// Serial: text, or `hex:<hex>` for raw bytes (1 to 40 bytes).
    pub serial: String,
    /// SHE UID, 30 hex characters.
    #[serde(default)]
    pub she_uid: Option<String>,
    /// Labels, used by filters.
    #[serde(default)]
    pub labels: Vec<String>,
}

/// `POST /v1/devices/import`: register many devices at once, all or nothing.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Import {
    /// The devices (at most [`IMPORT_MAX`]).
    pub devices: Vec<NewDevice>,
}

/// The most devices one import request takes.
pub const IMPORT_MAX: usize = 10_000;

/// A lifecycle change: suspend, resume, revoke, decommission; refresh (reason optional there).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    /// Why (recorded in the audit event).
    #[serde(default)]
    pub reason: Option<String>,
}

/// How a new generation's master is backed up. Over HTTP only `none`: custodian shares are a
/// ceremony at the CLI (`fleetkey generation create --threshold ...`).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backup {
    /// No backup: the master never leaves the key module (a PKCS#11 token backed up by its own
    /// means, or a fleet that accepts losing the generation with the module).
    None,
}

/// `POST /v1/generations` and `/v1/generations/rotate`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NewGeneration {
    /// Why.
    pub reason: String,
    /// Must be `none` (see [`Backup`]).
    pub backup: Backup,
}

/// Activate or revoke a generation.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GenerationChange {
    /// Why.
    pub reason: String,
}

/// Deactivate or destroy a generation.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Retire {
    /// Why.
    pub reason: String,
    /// Go ahead although devices still depend on it.
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/grants`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NewGrant {
    /// Who holds it.
    pub subject: String,
    /// `technician` or `operator`.
    pub role: String,
    /// Serial prefixes covered (text, or `hex:<hex>`; `""` covers every serial).
    pub scope: Vec<String>,
    /// Validity from now, seconds.
    pub valid_seconds: u64,
    /// The subject's Ed25519 public key, 64 hex characters.
    pub subject_key: String,
}

/// `POST /v1/grants/{id}/deny`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Deny {
    /// Why.
    pub reason: String,
}

/// `POST /v1/governance/records`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Publish {
    /// Why.
    pub reason: String,
    /// Validity from now, seconds (default 365 days).
    #[serde(default)]
    pub valid_seconds: Option<u64>,
}

/// `POST /v1/tokens`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// The principal's name.
    pub principal: String,
    /// `admin`, `operator`, `station`, `technician` or `auditor`.
    pub role: String,
    /// A technician's grant subject.
    #[serde(default)]
    pub subject: Option<String>,
    /// Lifetime in seconds (default: until revoked).
    #[serde(default)]
    pub expires_in_seconds: Option<u64>,
}

/// `GET /v1/devices` query.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeviceQuery {
    /// Only devices in this state (`pre-active`, `active`, ...).
    pub state: Option<String>,
    /// Only devices on this generation.
    pub generation: Option<u32>,
    /// Only devices with this label.
    pub label: Option<String>,
    /// Only serials starting with this (text, or `hex:<hex>`).
    pub prefix: Option<String>,
    /// Start after this serial (the previous page's `next`).
    pub after: Option<String>,
    /// At most this many (1 to 1000, default 100).
    pub limit: Option<usize>,
}

/// `GET /v1/audit` query.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only events about this device.
    pub device: Option<String>,
    /// Only events with this action (`device.provision`, ...).
    pub action: Option<String>,
    /// Only events at or after (Unix milliseconds).
    pub since: Option<i64>,
    /// Only events before (Unix milliseconds).
    pub until: Option<i64>,
    /// Start after this sequence number (the previous page's `next`).
    pub after: Option<u64>,
    /// At most this many (1 to 1000, default 100).
    pub limit: Option<usize>,
}

/// Page size bounds of the list endpoints.
pub const PAGE_MAX: usize = 1000;
/// The default page size.
pub const PAGE_DEFAULT: usize = 100;

/// A page size from a query, checked.
pub fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(PAGE_DEFAULT),
        Some(n) if (1..=PAGE_MAX).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::Invalid {
            field: "query.limit".into(),
            problem: format!("1 to {PAGE_MAX}"),
        }),
    }
}

/// Which body type an endpoint takes, by name, for the fuzz target and property test.
pub fn parse_named(kind: &str, bytes: &[u8]) -> Result<(), ApiError> {
    match kind {
        "empty" => parse_body::<Empty>(bytes).map(drop),
        "new_device" => parse_body::<NewDevice>(bytes).map(drop),
        "import" => parse_body::<Import>(bytes).map(drop),
        "reason" => parse_body::<Reason>(bytes).map(drop),
        "new_generation" => parse_body::<NewGeneration>(bytes).map(drop),
        "generation_change" => parse_body::<GenerationChange>(bytes).map(drop),
        "retire" => parse_body::<Retire>(bytes).map(drop),
        "new_grant" => parse_body::<NewGrant>(bytes).map(drop),
        "deny" => parse_body::<Deny>(bytes).map(drop),
        "publish" => parse_body::<Publish>(bytes).map(drop),
        "new_token" => parse_body::<NewToken>(bytes).map(drop),
        other => Err(ApiError::Internal(format!("no body kind {other}"))),
    }
}

/// Every body kind [`parse_named`] knows.
pub const BODY_KINDS: [&str; 11] = [
    "empty",
    "new_device",
    "import",
    "reason",
    "new_generation",
    "generation_change",
    "retire",
    "new_grant",
    "deny",
    "publish",
    "new_token",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(e: ApiError) -> String {
        match e {
            ApiError::Invalid { field, .. } => field,
            other => panic!("not Invalid: {other:?}"),
        }
    }

    #[test]
    fn names_the_field_at_fault() {
        let e =
            parse_body::<Import>(br#"{"devices":[{"serial":"a"},{"serial":"b","labels":[1]}]}"#)
                .unwrap_err();
        assert_eq!(field_of(e), "devices[1].labels[0]");
        let e = parse_body::<NewDevice>(br#"{"serial":"a","colour":"red"}"#).unwrap_err();
        assert!(matches!(&e, ApiError::Invalid { problem, .. } if problem.contains("colour")));
        let e = parse_body::<NewDevice>(br#"{}"#).unwrap_err();
        assert!(matches!(&e, ApiError::Invalid { problem, .. } if problem.contains("serial")));
        let e = parse_body::<NewGeneration>(br#"{"reason":"r","backup":"shares"}"#).unwrap_err();
        assert_eq!(field_of(e), "backup");
    }

    #[test]
    fn syntax_errors_are_malformed_and_empty_is_an_empty_object() {
        assert!(matches!(
            parse_body::<NewDevice>(b"{\"serial\":"),
            Err(ApiError::Malformed(_))
        ));
        assert!(matches!(
            parse_body::<Empty>(b"{} {}"),
            Err(ApiError::Malformed(_))
        ));
        assert_eq!(parse_body::<Empty>(b"").unwrap(), Empty {});
        assert_eq!(parse_body::<Reason>(b" \n").unwrap(), Reason::default());
        assert_eq!(field_of(parse_body::<Empty>(b"[]").unwrap_err()), "body");
        assert_eq!(
            field_of(parse_body::<NewDevice>(br#"["A", null, []]"#).unwrap_err()),
            "body"
        );
        assert!(matches!(
            parse_body::<Empty>(b"[1,"),
            Err(ApiError::Malformed(_))
        ));
    }
}
