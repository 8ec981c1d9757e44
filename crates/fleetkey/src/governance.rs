//! Governance records, issued: generation records, grants and root handovers, built as tagged
//! `COSE_Sign1` (RFC 9052) with `coset` and signed by a signing function, so the root key stays
//! in the key module (`|m| module.sign(m)`). The device side and the format are in
//! [`fleetkey_core::governance`]; the labels and an annotated record in `docs/governance.md`.
//!
//! Every record built here is decoded again by the device's parser before it is returned, so a
//! spec outside the device's bounds fails here, not on the device.
//!
//! The root's secret seed, while it is on the host (a ceremony with custodian shares, a restore
//! from them), is a [`SigningSeed`].

use coset::cbor::value::Value;
use coset::{CborSerializable, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable, iana};
use fleetkey_core::governance::{
    self as core_gov, EXTERNAL_AAD, MAX_FLEET_ID_LEN, MAX_KID_LEN, MAX_LIST_LEN, MAX_PREFIX_LEN,
    MAX_RECORD_LEN, MAX_SUBJECT_LEN, Role, label,
};
use sha2::{Digest, Sha256};

#[cfg(test)]
mod tests;

/// The secret seed of an Ed25519 governance root (RFC 8032 section 5.1.5), in zeroizing memory.
/// It exists on the host only during a root ceremony (drawn, split into custodian shares,
/// imported) or a restore from shares; it appears in no `Debug` output and no error. Drawn by
/// [`SigningSeed::random`] (in [`crate::module`]).
pub struct SigningSeed(zeroize::Zeroizing<[u8; 32]>);

impl SigningSeed {
    /// A seed from its 32 bytes.
    pub fn from_bytes(bytes: zeroize::Zeroizing<[u8; 32]>) -> Self {
        Self(bytes)
    }

    /// The seed's bytes.
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.0
    }

    /// The Ed25519 public key of this seed.
    pub fn public_key(&self) -> [u8; 32] {
        // `SigningKey` zeroizes its copy of the seed on drop.
        ed25519_dalek::SigningKey::from_bytes(&self.0)
            .verifying_key()
            .to_bytes()
    }
}

impl std::fmt::Debug for SigningSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSeed(..)")
    }
}

/// Why a record could not be issued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError<E: std::error::Error + 'static> {
    /// The spec is outside the format's bounds (the field is named).
    #[error("governance record: {0}")]
    Invalid(&'static str),
    /// The device-side parser refused the built record.
    #[error("governance record refused by the device parser: {0}")]
    Refused(core_gov::GovernanceError),
    /// CBOR encoding failed.
    #[error("governance record: CBOR encoding failed: {0}")]
    Encode(String),
    /// The signing function failed.
    #[error("governance record: signing failed: {0}")]
    Sign(#[source] E),
}

/// A signing function: Ed25519 over the message with the governance root, e.g.
/// `|m| module.sign(m)` with a [`KeyModule`](crate::module::KeyModule).
pub type SignFn<'a, E> = dyn Fn(&[u8]) -> Result<[u8; 64], E> + 'a;

/// The key id devices pin for a root public key: the first 8 bytes of its SHA-256.
pub fn key_id(public_key: &[u8; 32]) -> [u8; 8] {
    let d = Sha256::digest(public_key);
    let mut kid = [0; 8];
    kid.copy_from_slice(&d[..8]);
    kid
}

/// A generation record to issue (kind 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenerationRecordSpec {
    /// Fleet id.
    pub fleet: String,
    /// Valid from (Unix seconds, inclusive).
    pub not_before: u64,
    /// Valid until (Unix seconds, exclusive).
    pub not_after: u64,
    /// Sequence number, above every one issued before.
    pub sequence: u64,
    /// Current generation.
    pub current: u32,
    /// Generations still accepted besides the current one.
    pub accepted: Vec<u32>,
    /// Revoked generations.
    pub revoked: Vec<u32>,
    /// Denied grant ids.
    pub denied: Vec<u64>,
}

/// A grant to issue (kind 2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantSpec {
    /// Fleet id.
    pub fleet: String,
    /// Valid from (Unix seconds, inclusive).
    pub not_before: u64,
    /// Valid until (Unix seconds, exclusive).
    pub not_after: u64,
    /// Grant id, unique in the fleet.
    pub id: u64,
    /// Who holds the grant.
    pub subject: String,
    /// Technician or operator.
    pub role: Role,
    /// Serial prefixes covered (an empty prefix covers every serial; no prefix covers none).
    pub scope: Vec<Vec<u8>>,
    /// The subject's Ed25519 public key (for proof of possession).
    pub subject_key: [u8; 32],
}

/// A root handover to issue (kind 3), signed by the old root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandoverSpec {
    /// Fleet id.
    pub fleet: String,
    /// Valid from (Unix seconds, inclusive).
    pub not_before: u64,
    /// Valid until (Unix seconds, exclusive).
    pub not_after: u64,
    /// Sequence number (the generation records' series).
    pub sequence: u64,
    /// The new root's public key.
    pub new_key: [u8; 32],
    /// The new root's key id.
    pub new_kid: Vec<u8>,
}

fn uint(v: u64) -> Value {
    Value::Integer(v.into())
}

fn entry(l: u64, v: Value) -> (Value, Value) {
    (uint(l), v)
}

fn common(kind: u64, fleet: &str, not_before: u64, not_after: u64) -> Vec<(Value, Value)> {
    vec![
        entry(label::KIND, uint(kind)),
        entry(label::FLEET, Value::Text(fleet.to_owned())),
        entry(label::NOT_BEFORE, uint(not_before)),
        entry(label::NOT_AFTER, uint(not_after)),
    ]
}

fn check_common<E: std::error::Error>(
    fleet: &str,
    not_before: u64,
    not_after: u64,
) -> Result<(), IssueError<E>> {
    if fleet.is_empty() || fleet.len() > MAX_FLEET_ID_LEN {
        return Err(IssueError::Invalid("fleet id: 1 to 64 bytes"));
    }
    if not_before >= not_after {
        return Err(IssueError::Invalid(
            "validity window: not_before must be below not_after",
        ));
    }
    Ok(())
}

fn list<E: std::error::Error>(
    items: impl ExactSizeIterator<Item = Value>,
    what: &'static str,
) -> Result<Value, IssueError<E>> {
    if items.len() > MAX_LIST_LEN {
        return Err(IssueError::Invalid(what));
    }
    Ok(Value::Array(items.collect()))
}

fn encode_map<E: std::error::Error>(map: Vec<(Value, Value)>) -> Result<Vec<u8>, IssueError<E>> {
    let mut out = Vec::new();
    coset::cbor::ser::into_writer(&Value::Map(map), &mut out)
        .map_err(|e| IssueError::Encode(e.to_string()))?;
    Ok(out)
}

/// Wraps `payload` in a tagged COSE_Sign1 with `{1: -8, 4: kid}` and signs its Sig_structure.
pub fn sign_payload<E: std::error::Error>(
    payload: Vec<u8>,
    kid: &[u8],
    sign: &SignFn<'_, E>,
) -> Result<Vec<u8>, IssueError<E>> {
    if kid.is_empty() || kid.len() > MAX_KID_LEN {
        return Err(IssueError::Invalid("kid: 1 to 16 bytes"));
    }
    let protected = HeaderBuilder::new()
        .algorithm(iana::Algorithm::EdDSA)
        .key_id(kid.to_vec())
        .build();
    let sign1 = CoseSign1Builder::new()
        .protected(protected)
        .payload(payload)
        .try_create_signature(EXTERNAL_AAD, |tbs| sign(tbs).map(|s| s.to_vec()))
        .map_err(IssueError::Sign)?
        .build();
    let bytes = sign1
        .to_tagged_vec()
        .map_err(|e| IssueError::Encode(e.to_string()))?;
    if bytes.len() > MAX_RECORD_LEN {
        return Err(IssueError::Invalid("record: above 1024 bytes"));
    }
    core_gov::inspect_unverified(&bytes).map_err(IssueError::Refused)?;
    Ok(bytes)
}

/// Decodes a record's COSE_Sign1 with `coset` (for tools): the payload bytes and the kid.
pub fn open_with_coset(bytes: &[u8]) -> Result<(Vec<u8>, Vec<u8>), coset::CoseError> {
    let sign1 = coset::CoseSign1::from_tagged_slice(bytes)?;
    let _ = sign1.clone().to_vec()?;
    Ok((
        sign1.payload.unwrap_or_default(),
        sign1.protected.header.key_id,
    ))
}

impl GenerationRecordSpec {
    /// The payload: a CBOR map with the labels of [`label`], ascending.
    pub fn payload<E: std::error::Error>(&self) -> Result<Vec<u8>, IssueError<E>> {
        check_common(&self.fleet, self.not_before, self.not_after)?;
        let mut map = common(1, &self.fleet, self.not_before, self.not_after);
        map.push(entry(label::SEQUENCE, uint(self.sequence)));
        map.push(entry(label::CURRENT, uint(self.current.into())));
        let gens = |g: &Vec<u32>| g.iter().map(|g| uint((*g).into())).collect::<Vec<_>>();
        map.push(entry(
            label::ACCEPTED,
            list(gens(&self.accepted).into_iter(), "accepted: at most 16")?,
        ));
        map.push(entry(
            label::REVOKED,
            list(gens(&self.revoked).into_iter(), "revoked: at most 16")?,
        ));
        map.push(entry(
            label::DENIED,
            list(
                self.denied.iter().map(|d| uint(*d)),
                "denied grants: at most 16",
            )?,
        ));
        encode_map(map)
    }

    /// Encodes and signs the record: a tagged COSE_Sign1.
    pub fn encode_and_sign<E: std::error::Error>(
        &self,
        kid: &[u8],
        sign: &SignFn<'_, E>,
    ) -> Result<Vec<u8>, IssueError<E>> {
        sign_payload(self.payload()?, kid, sign)
    }
}

impl GrantSpec {
    /// The payload: a CBOR map with the labels of [`label`], ascending.
    pub fn payload<E: std::error::Error>(&self) -> Result<Vec<u8>, IssueError<E>> {
        check_common(&self.fleet, self.not_before, self.not_after)?;
        if self.subject.len() > MAX_SUBJECT_LEN {
            return Err(IssueError::Invalid("subject: at most 64 bytes"));
        }
        if self.scope.iter().any(|p| p.len() > MAX_PREFIX_LEN) {
            return Err(IssueError::Invalid("scope: prefixes of at most 40 bytes"));
        }
        let mut map = common(2, &self.fleet, self.not_before, self.not_after);
        map.push(entry(label::GRANT_ID, uint(self.id)));
        map.push(entry(label::SUBJECT, Value::Text(self.subject.clone())));
        map.push(entry(label::ROLE, uint(self.role as u64)));
        map.push(entry(
            label::SCOPE,
            list(
                self.scope.iter().map(|p| Value::Bytes(p.clone())),
                "scope: at most 16 prefixes",
            )?,
        ));
        map.push(entry(
            label::SUBJECT_KEY,
            Value::Bytes(self.subject_key.to_vec()),
        ));
        encode_map(map)
    }

    /// Encodes and signs the grant: a tagged COSE_Sign1.
    pub fn encode_and_sign<E: std::error::Error>(
        &self,
        kid: &[u8],
        sign: &SignFn<'_, E>,
    ) -> Result<Vec<u8>, IssueError<E>> {
        sign_payload(self.payload()?, kid, sign)
    }
}

impl HandoverSpec {
    /// The payload: a CBOR map with the labels of [`label`], ascending.
    pub fn payload<E: std::error::Error>(&self) -> Result<Vec<u8>, IssueError<E>> {
        check_common(&self.fleet, self.not_before, self.not_after)?;
        if self.new_kid.is_empty() || self.new_kid.len() > MAX_KID_LEN {
            return Err(IssueError::Invalid("new kid: 1 to 16 bytes"));
        }
        let mut map = common(3, &self.fleet, self.not_before, self.not_after);
        map.push(entry(label::SEQUENCE, uint(self.sequence)));
        map.push(entry(
            label::NEW_ROOT_KEY,
            Value::Bytes(self.new_key.to_vec()),
        ));
        map.push(entry(
            label::NEW_ROOT_KID,
            Value::Bytes(self.new_kid.clone()),
        ));
        encode_map(map)
    }

    /// Encodes and signs the handover with the old root: a tagged COSE_Sign1.
    pub fn encode_and_sign<E: std::error::Error>(
        &self,
        kid: &[u8],
        sign: &SignFn<'_, E>,
    ) -> Result<Vec<u8>, IssueError<E>> {
        sign_payload(self.payload()?, kid, sign)
    }
}
