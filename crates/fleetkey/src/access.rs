//! Who may use the HTTP service, and what it remembers of retried requests.
//!
//! - [`ApiToken`]: a bearer token of one principal with one [`Role`]. The token itself (256 random
//!   bits, shown once at issue) is never stored: the store keeps its SHA-256 hash, so several
//!   service instances on one store share the tokens, and a store leak gives no usable token.
//! - [`IdempotencyRecord`]: the first response to a request that carried an `Idempotency-Key`,
//!   scoped to the principal, with a fingerprint of the request. Responses can carry key material,
//!   so they are kept only wrapped under the key module's KEK.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::Error;
use crate::model::{UnixMillis, WrappedKey};

/// What a token's holder may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including tokens.
    Admin,
    /// Device, generation, grant and governance operations; not tokens.
    Operator,
    /// Provisioning only, in its own fleet.
    Station,
    /// Reads only its own grants (the token's subject is the grant subject).
    Technician,
    /// Read-only: status, lists, audit.
    Auditor,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Operator,
        Role::Station,
        Role::Technician,
        Role::Auditor,
    ];

    /// The role's name.
    pub const fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Station => "station",
            Role::Technician => "technician",
            Role::Auditor => "auditor",
        }
    }

    /// The role named `name`.
    pub fn parse(name: &str) -> Result<Role, Error> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == name)
            .ok_or_else(|| {
                Error::invalid(
                    "role",
                    format_args!(
                        "{name:?} is not a role: admin, operator, station, technician, auditor"
                    ),
                )
            })
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A bearer token as the store keeps it: no token, only its hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// Public id (`tok-` and 12 hex digits), used to list and revoke.
    pub id: String,
    /// SHA-256 of the token text.
    #[serde(with = "hex::serde")]
    pub hash: [u8; 32],
    /// Who holds it.
    pub principal: String,
    /// What it may do.
    pub role: Role,
    /// A technician's grant subject (technician tokens read only grants to this subject).
    pub subject: Option<String>,
    /// The fleet it was issued in (a token works only in its own fleet).
    pub fleet: String,
    /// When it was issued.
    pub created_at: UnixMillis,
    /// Who issued it.
    pub created_by: String,
    /// When it stops working, if ever.
    pub expires_at: Option<UnixMillis>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<UnixMillis>,
}

impl ApiToken {
    /// Whether it authenticates at `now`: neither revoked nor expired.
    pub fn usable_at(&self, now: UnixMillis) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }
}

/// A token's text: `fk_` and 64 hex digits (256 random bits). Shown once at issue; zeroized on
/// drop; never in Debug.
pub struct TokenSecret(Zeroizing<String>);

impl TokenSecret {
    /// The text the client sends as `Authorization: Bearer <text>`.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSecret(..)")
    }
}

/// The prefix of every token's text.
pub const TOKEN_PREFIX: &str = "fk_";

/// A new random token and its public id.
pub fn new_token() -> Result<(String, TokenSecret), Error> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    let mut id = [0u8; 6];
    getrandom::fill(&mut bytes[..])
        .and_then(|()| getrandom::fill(&mut id))
        .map_err(|e| {
            Error::from(crate::error::ModuleError::Backend {
                operation: "random",
                detail: e.to_string(),
            })
        })?;
    let mut text = Zeroizing::new(String::with_capacity(TOKEN_PREFIX.len() + 64));
    text.push_str(TOKEN_PREFIX);
    text.push_str(&hex::encode(&bytes[..]));
    Ok((format!("tok-{}", hex::encode(id)), TokenSecret(text)))
}

/// SHA-256 of a token's text: what the store keeps and looks tokens up by.
pub fn token_hash(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// Checks a principal's name: 1 to 64 characters of `A-Z a-z 0-9 . _ @ -`.
pub fn validate_principal(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "principal",
            "1 to 64 characters of A-Z a-z 0-9 . _ @ -",
        ))
    }
}

/// The first response to a request with an `Idempotency-Key`, or the claim of a request still
/// running (`response` empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// The principal that sent it (keys are scoped to their principal).
    pub principal: String,
    /// The key, as sent (1 to 255 visible ASCII characters).
    pub key: String,
    /// SHA-256 of the request (method, path, body): the same key with another request is refused.
    pub fingerprint: [u8; 32],
    /// When the first request arrived.
    pub created_at: UnixMillis,
    /// The response: HTTP status and the body wrapped under the key module's KEK.
    pub response: Option<(u16, WrappedKey)>,
}

/// Checks an idempotency key: 1 to 255 visible ASCII characters.
pub fn validate_idempotency_key(key: &str) -> Result<(), Error> {
    if !key.is_empty() && key.len() <= 255 && key.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(Error::invalid(
            "Idempotency-Key",
            "1 to 255 visible ASCII characters",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_prefixed_and_hash_to_their_lookup_key() {
        let (id_a, a) = new_token().unwrap();
        let (id_b, b) = new_token().unwrap();
        assert_ne!(a.expose(), b.expose());
        assert_ne!(id_a, id_b);
        assert!(a.expose().starts_with(TOKEN_PREFIX));
        assert_eq!(a.expose().len(), 3 + 64);
        assert_eq!(token_hash(a.expose()), token_hash(a.expose()));
        assert_ne!(token_hash(a.expose()), token_hash(b.expose()));
        assert!(!format!("{a:?}").contains(&a.expose()[3..]));
    }

    #[test]
    fn roles_parse_by_name_only() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.name()).unwrap(), r);
        }
        assert!(Role::parse("root").is_err());
        assert!(Role::parse("Admin").is_err());
    }

    #[test]
    fn usable_at_honours_expiry_and_revocation() {
        let mut t = ApiToken {
            id: "tok-1".into(),
            hash: [0; 32],
            principal: "p".into(),
            role: Role::Auditor,
            subject: None,
            fleet: "f".into(),
            created_at: 0,
            created_by: "a".into(),
            expires_at: Some(100),
            revoked_at: None,
        };
        assert!(t.usable_at(99));
        assert!(!t.usable_at(100));
        t.expires_at = None;
        assert!(t.usable_at(i64::MAX));
        t.revoked_at = Some(5);
        assert!(!t.usable_at(0));
    }

    #[test]
    fn principal_and_key_checks() {
        assert!(validate_principal("station-7@line3").is_ok());
        assert!(validate_principal("").is_err());
        assert!(validate_principal("a b").is_err());
        assert!(validate_idempotency_key("k-1").is_ok());
        assert!(validate_idempotency_key("").is_err());
        assert!(validate_idempotency_key("a b").is_err());
        assert!(validate_idempotency_key(&"x".repeat(256)).is_err());
    }
}
