//! Who is calling and what they may do.
//!
//! Every endpoint but `/healthz` and `/openapi.json` needs `Authorization: Bearer <token>`. The
//! token is looked up by its SHA-256 hash in the store (so every instance on the store sees
//! issues and revocations at once), must belong to this fleet, and be neither expired nor revoked.
//! The token's [`Role`] then decides by the endpoint's [`Action`] ([`allowed`]):
//!
//! | action            | admin | operator | station | technician      | auditor |
//! |-------------------|-------|----------|---------|-----------------|---------|
//! | status            | yes   | yes      |         |                 | yes     |
//! | device read       | yes   | yes      |         |                 | yes     |
//! | device write      | yes   | yes      |         |                 |         |
//! | provision         | yes   | yes      | yes     |                 |         |
//! | generation read   | yes   | yes      |         |                 | yes     |
//! | generation write  | yes   | yes      |         |                 |         |
//! | grant read        | yes   | yes      |         | own grants only | yes     |
//! | grant write       | yes   | yes      |         |                 |         |
//! | governance read   | yes   | yes      |         |                 | yes     |
//! | governance write  | yes   | yes      |         |                 |         |
//! | audit read        | yes   | yes      |         |                 | yes     |
//! | tokens            | yes   |          |         |                 |         |
//!
//! Client certificates: when the service runs with `--client-ca`, TLS asks every client for a
//! certificate and refuses one the CA did not sign; a station token is then accepted only on a
//! connection that presented a verified certificate (the station machine proves itself by its
//! certificate, the principal by its token). Other roles may connect without one.

use fleetkey::access::{ApiToken, Role};
use zeroize::Zeroizing;

use crate::problem::ApiError;

/// What an endpoint does, as far as permissions go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// The fleet's summary.
    Status,
    /// Show and list devices.
    DeviceRead,
    /// Add, import, refresh, suspend, resume, revoke, decommission devices.
    DeviceWrite,
    /// Key material for a provisioning station.
    Provision,
    /// List generations, rotation status.
    GenerationRead,
    /// Create, activate, rotate, deactivate, destroy, revoke generations.
    GenerationWrite,
    /// List and show grants.
    GrantRead,
    /// Issue and deny grants.
    GrantWrite,
    /// The latest generation record, the export.
    GovernanceRead,
    /// Publish a generation record.
    GovernanceWrite,
    /// Audit events and chain verification.
    AuditRead,
    /// Issue, list, revoke service tokens.
    Tokens,
}

impl Action {
    /// The action's name in docs and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Action::Status => "status",
            Action::DeviceRead => "device read",
            Action::DeviceWrite => "device write",
            Action::Provision => "provision",
            Action::GenerationRead => "generation read",
            Action::GenerationWrite => "generation write",
            Action::GrantRead => "grant read",
            Action::GrantWrite => "grant write",
            Action::GovernanceRead => "governance read",
            Action::GovernanceWrite => "governance write",
            Action::AuditRead => "audit read",
            Action::Tokens => "tokens",
        }
    }
}

/// Whether `role` may perform `action` (a technician's grant reads are further limited to its
/// own subject by the grant endpoints).
pub const fn allowed(role: Role, action: Action) -> bool {
    use Action as A;
    match role {
        Role::Admin => true,
        Role::Operator => !matches!(action, A::Tokens),
        Role::Station => matches!(action, A::Provision),
        Role::Technician => matches!(action, A::GrantRead),
        Role::Auditor => matches!(
            action,
            A::Status
                | A::DeviceRead
                | A::GenerationRead
                | A::GrantRead
                | A::GovernanceRead
                | A::AuditRead
        ),
    }
}

/// The authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Its name (the audit actor of what it does).
    pub name: String,
    /// Its role.
    pub role: Role,
    /// A technician's grant subject.
    pub subject: Option<String>,
    /// The token's public id.
    pub token_id: String,
}

impl From<ApiToken> for Principal {
    fn from(t: ApiToken) -> Self {
        Principal {
            name: t.principal,
            role: t.role,
            subject: t.subject,
            token_id: t.id,
        }
    }
}

/// What a request brings to be authenticated. Debug says whether a bearer token came, never
/// its text.
#[derive(Default)]
pub struct Credentials {
    /// The bearer token's text, if the header had one.
    pub bearer: Option<Zeroizing<String>>,
    /// Why the `Authorization` header could not be read, if it was present but malformed.
    pub malformed: Option<&'static str>,
    /// Whether the connection presented a client certificate the CA verified.
    pub client_cert: bool,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("bearer", &self.bearer.is_some())
            .field("malformed", &self.malformed)
            .field("client_cert", &self.client_cert)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Reads `Authorization: Bearer <token>`.
    pub fn from_header(value: Option<&axum::http::HeaderValue>, client_cert: bool) -> Self {
        let mut c = Credentials {
            client_cert,
            ..Default::default()
        };
        let Some(value) = value else {
            return c;
        };
        match value.to_str().ok().and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        }) {
            Some(token) if !token.is_empty() && token.len() <= 256 => {
                c.bearer = Some(Zeroizing::new(token.to_owned()));
            }
            _ => c.malformed = Some("the Authorization header is not `Bearer <token>`"),
        }
        c
    }
}

/// Checks the role of the principal `token` authenticated for `action` (and a station's client
/// certificate when the service asks for one).
pub fn check(
    token: ApiToken,
    credentials: &Credentials,
    action: Action,
    station_needs_cert: bool,
) -> Result<Principal, ApiError> {
    let principal = Principal::from(token);
    if !allowed(principal.role, action) {
        return Err(ApiError::Forbidden(format!(
            "role {} may not {}",
            principal.role,
            action.name()
        )));
    }
    if principal.role == Role::Station && station_needs_cert && !credentials.client_cert {
        return Err(ApiError::Forbidden(
            "a station token needs a connection with a client certificate (the service runs with --client-ca)".into(),
        ));
    }
    Ok(principal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_header_parsing() {
        let v = |s: &str| axum::http::HeaderValue::from_str(s).unwrap();
        let c = Credentials::from_header(Some(&v("Bearer fk_abc")), false);
        assert_eq!(c.bearer.as_deref().map(String::as_str), Some("fk_abc"));
        let c = Credentials::from_header(Some(&v("bearer   fk_abc  ")), true);
        assert_eq!(c.bearer.as_deref().map(String::as_str), Some("fk_abc"));
        assert!(c.client_cert);
        for bad in ["Basic abc", "Bearer", "Bearer ", "fk_abc"] {
            let c = Credentials::from_header(Some(&v(bad)), false);
            assert!(c.bearer.is_none() && c.malformed.is_some(), "{bad}");
        }
        let c = Credentials::from_header(None, false);
        assert!(c.bearer.is_none() && c.malformed.is_none());
    }

    #[test]
    fn only_admin_manages_tokens_and_station_only_provisions() {
        for role in Role::ALL {
            assert_eq!(allowed(role, Action::Tokens), role == Role::Admin);
            assert_eq!(
                allowed(role, Action::Provision),
                matches!(role, Role::Admin | Role::Operator | Role::Station)
            );
        }
    }
}
