//! Governance records, verified on the device: generation records, grants, root handovers, and
//! proof of possession of a grant's key. No allocation; see `docs/governance.md`.
//!
//! A record is a tagged `COSE_Sign1` (RFC 9052 section 4.2, CBOR tag 18) signed with EdDSA
//! (Ed25519, alg -8) by the fleet's governance root, with the root's `kid` in the protected
//! header, the fixed `external_aad` [`EXTERNAL_AAD`], and a payload that is a CBOR map with small
//! integer labels ([`label`]). Only deterministically encoded CBOR (RFC 8949 section 4.2.1:
//! definite lengths, shortest heads, labels ascending) is accepted.
//!
//! The device keeps a [`GovernanceState`]: the pinned [`RootKey`], its fleet id and what the
//! newest accepted generation record said. [`verify_generation_record`] advances it (or changes
//! nothing), [`generation_allowed`] answers whether a key generation may be used, [`verify_grant`]
//! checks a technician's or operator's grant, and [`verify_possession`] checks the grant holder's
//! signature over a device challenge (the shape of UDS service 0x29). [`verify_handover`] moves
//! the pin to a new root, signed by the old one.
//!
//! ```
//! use fleetkey_core::derive::Generation;
//! use fleetkey_core::governance::{GovernanceState, RootKey, generation_allowed};
//!
//! // The root's public key (here RFC 8032 section 7.1 test 1) and key id, pinned at production.
//! const PUBLIC_KEY: [u8; 32] = [
//!     0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe, 0xd3, 0xc9, 0x64, 0x07, 0x3a,
//!     0x0e, 0xe1, 0x72, 0xf3, 0xda, 0xa6, 0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68, 0xf7, 0x07, 0x51, 0x1a,
//! ];
//! let root = RootKey::new(PUBLIC_KEY, b"root-1")?;
//! let state = GovernanceState::new("fleet-a", root)?;
//! // Until a generation record is accepted, no generation is allowed.
//! assert!(!generation_allowed(&state, Generation(1)));
//! # Ok::<(), fleetkey_core::governance::GovernanceError>(())
//! ```

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::derive::{Generation, MAX_SERIAL_LEN};

mod cbor;
mod ed25519;
#[cfg(test)]
mod strictness_tests;
#[cfg(test)]
mod tests;

use cbor::{Reader, Tbs};

/// The `external_aad` of every record's `Sig_structure`: domain separation, version 1.
pub const EXTERNAL_AAD: &[u8] = b"fleetkey governance v1";
/// The prefix of the message a grant holder signs to prove possession of the grant's key.
pub const POSSESSION_LABEL: &[u8] = b"fleetkey pop v1";
/// CBOR tag of `COSE_Sign1_Tagged` (RFC 9052 section 2).
pub const COSE_SIGN1_TAG: u64 = 18;
/// COSE algorithm EdDSA (RFC 9053 section 2.2); the only one accepted.
pub const ALG_EDDSA: i64 = -8;
/// The largest record accepted, in bytes.
pub const MAX_RECORD_LEN: usize = 1024;
/// The most entries in any list of a record (generations, denied grants, serial prefixes).
pub const MAX_LIST_LEN: usize = 16;
/// The longest key id, in bytes.
pub const MAX_KID_LEN: usize = 16;
/// The longest fleet id, in bytes of UTF-8.
pub const MAX_FLEET_ID_LEN: usize = 64;
/// The longest grant subject, in bytes of UTF-8.
pub const MAX_SUBJECT_LEN: usize = 64;
/// The longest serial prefix in a grant's scope (the longest serial).
pub const MAX_PREFIX_LEN: usize = MAX_SERIAL_LEN;
/// The length of a possession challenge.
pub const CHALLENGE_LEN: usize = 32;
/// The length of the message signed for proof of possession.
pub const POSSESSION_MESSAGE_LEN: usize = POSSESSION_LABEL.len() + 8 + CHALLENGE_LEN;

/// The labels of the protected header (RFC 9052 section 3.1) and of the payload map.
pub mod label {
    /// Protected header: algorithm.
    pub const HEADER_ALG: u64 = 1;
    /// Protected header: key id.
    pub const HEADER_KID: u64 = 4;
    /// Every kind: the record kind (1 generation record, 2 grant, 3 root handover).
    pub const KIND: u64 = 1;
    /// Every kind: the fleet id (tstr).
    pub const FLEET: u64 = 2;
    /// Every kind: valid from (Unix seconds, inclusive).
    pub const NOT_BEFORE: u64 = 3;
    /// Every kind: valid until (Unix seconds, exclusive).
    pub const NOT_AFTER: u64 = 4;
    /// Generation record and handover: the sequence number (uint).
    pub const SEQUENCE: u64 = 5;
    /// Generation record: the current generation (uint).
    pub const CURRENT: u64 = 6;
    /// Generation record: the generations still accepted besides the current (array of uint).
    pub const ACCEPTED: u64 = 7;
    /// Generation record: the revoked generations (array of uint).
    pub const REVOKED: u64 = 8;
    /// Generation record: the denied grant ids (array of uint).
    pub const DENIED: u64 = 9;
    /// Grant: the grant id (uint).
    pub const GRANT_ID: u64 = 10;
    /// Grant: the subject (tstr).
    pub const SUBJECT: u64 = 11;
    /// Grant: the role (1 technician, 2 operator).
    pub const ROLE: u64 = 12;
    /// Grant: the scope, serial prefixes (array of bstr; an empty prefix matches every serial).
    pub const SCOPE: u64 = 13;
    /// Grant: the subject's Ed25519 public key (32-byte bstr).
    pub const SUBJECT_KEY: u64 = 14;
    /// Handover: the new root's Ed25519 public key (32-byte bstr).
    pub const NEW_ROOT_KEY: u64 = 15;
    /// Handover: the new root's key id (bstr).
    pub const NEW_ROOT_KID: u64 = 16;
}

/// The part of a record an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Field {
    /// The record as a whole (length, trailing bytes).
    Record,
    /// The COSE_Sign1 structure (tag, array).
    Structure,
    /// The protected header.
    Protected,
    /// The unprotected header (must be empty).
    Unprotected,
    /// The payload map.
    Payload,
    /// The signature.
    Signature,
    /// The key id.
    Kid,
    /// The kind.
    Kind,
    /// The fleet id.
    Fleet,
    /// The validity window.
    Window,
    /// The sequence number.
    Sequence,
    /// A generation or a list of generations.
    Generations,
    /// The denied grant ids.
    Denied,
    /// The grant id.
    GrantId,
    /// The subject.
    Subject,
    /// The role.
    Role,
    /// The scope of serials.
    Scope,
    /// A public key.
    PublicKey,
}

impl Field {
    const fn name(self) -> &'static str {
        match self {
            Self::Record => "record",
            Self::Structure => "COSE_Sign1 structure",
            Self::Protected => "protected header",
            Self::Unprotected => "unprotected header",
            Self::Payload => "payload",
            Self::Signature => "signature",
            Self::Kid => "kid",
            Self::Kind => "kind",
            Self::Fleet => "fleet id",
            Self::Window => "validity window",
            Self::Sequence => "sequence",
            Self::Generations => "generations",
            Self::Denied => "denied grant ids",
            Self::GrantId => "grant id",
            Self::Subject => "subject",
            Self::Role => "role",
            Self::Scope => "scope",
            Self::PublicKey => "public key",
        }
    }
}

/// Why a record, grant or proof was refused: the rule that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GovernanceError {
    /// Not the expected CBOR/COSE structure at this field.
    Malformed(Field),
    /// Above a bound (record length, list length, string length) at this field.
    TooLarge(Field),
    /// The protected header names an algorithm other than EdDSA (-8).
    Algorithm,
    /// The key id is not the pinned root's.
    UnknownKid,
    /// The signature does not verify under the pinned root (strict Ed25519).
    Signature,
    /// A record of another kind (e.g. a grant where a generation record is expected).
    Kind,
    /// The record is for another fleet.
    Fleet,
    /// The sequence is below the last accepted one (rollback).
    StaleSequence,
    /// The sequence equals the last accepted one but the content differs.
    SequenceReused,
    /// `now` is before the record's `not_before`.
    NotYetValid,
    /// `now` is at or after the record's `not_after`.
    Expired,
    /// The generation sets contradict each other (current revoked, or a generation both
    /// accepted and revoked).
    Inconsistent,
    /// The generation is revoked.
    RevokedGeneration,
    /// The generation is neither current nor still accepted (or no record was accepted yet).
    UnknownGeneration,
    /// The serial is not in the grant's scope.
    OutOfScope,
    /// The grant id is on the newest accepted record's deny list.
    Denied,
    /// The proof-of-possession signature does not verify under the grant's key.
    Possession,
}

impl core::fmt::Display for GovernanceError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Malformed(field) => write!(f, "{}: malformed", field.name()),
            Self::TooLarge(field) => write!(f, "{}: above its bound", field.name()),
            Self::Algorithm => f.write_str("protected header: algorithm is not EdDSA (-8)"),
            Self::UnknownKid => f.write_str("kid: not the pinned root's key id"),
            Self::Signature => f.write_str("signature: does not verify under the pinned root"),
            Self::Kind => f.write_str("kind: not the expected record kind"),
            Self::Fleet => f.write_str("fleet id: not this device's fleet"),
            Self::StaleSequence => f.write_str("sequence: below the last accepted (rollback)"),
            Self::SequenceReused => {
                f.write_str("sequence: equal to the last accepted with different content")
            }
            Self::NotYetValid => f.write_str("validity window: not yet valid"),
            Self::Expired => f.write_str("validity window: expired"),
            Self::Inconsistent => {
                f.write_str("generations: current revoked, or accepted and revoked at once")
            }
            Self::RevokedGeneration => f.write_str("generation: revoked"),
            Self::UnknownGeneration => f.write_str("generation: neither current nor accepted"),
            Self::OutOfScope => f.write_str("scope: serial not covered by the grant"),
            Self::Denied => f.write_str("grant id: denied by the newest generation record"),
            Self::Possession => {
                f.write_str("possession: signature does not verify under the grant key")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for GovernanceError {}

/// A record kind (payload label 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A generation record.
    GenerationRecord = 1,
    /// A grant.
    Grant = 2,
    /// A root handover.
    Handover = 3,
}

/// A grant's role (payload label 12).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// A service technician.
    Technician = 1,
    /// A fleet operator.
    Operator = 2,
}

/// A list of at most [`MAX_LIST_LEN`] items, held in a fixed array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoundedList<T: Copy + Default> {
    items: [T; MAX_LIST_LEN],
    len: usize,
}

impl<T: Copy + Default> Default for BoundedList<T> {
    fn default() -> Self {
        Self {
            items: [T::default(); MAX_LIST_LEN],
            len: 0,
        }
    }
}

impl<T: Copy + Default> BoundedList<T> {
    /// The items.
    pub fn as_slice(&self) -> &[T] {
        self.items.get(..self.len).unwrap_or(&[])
    }

    fn push(&mut self, item: T, field: Field) -> Result<(), GovernanceError> {
        let slot = self
            .items
            .get_mut(self.len)
            .ok_or(GovernanceError::TooLarge(field))?;
        *slot = item;
        self.len = self.len.saturating_add(1);
        Ok(())
    }
}

/// The pinned governance root: an Ed25519 public key and its key id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootKey {
    key: ed25519::PublicKey,
    kid: [u8; MAX_KID_LEN],
    kid_len: usize,
}

impl RootKey {
    /// A root from its public key (must be a valid Ed25519 point) and key id (1 to 16 bytes).
    pub fn new(public_key: [u8; 32], kid: &[u8]) -> Result<Self, GovernanceError> {
        let key = ed25519::PublicKey::from_bytes(&public_key)
            .ok_or(GovernanceError::Malformed(Field::PublicKey))?;
        let mut bytes = [0; MAX_KID_LEN];
        if kid.is_empty() {
            return Err(GovernanceError::Malformed(Field::Kid));
        }
        bytes
            .get_mut(..kid.len())
            .ok_or(GovernanceError::TooLarge(Field::Kid))?
            .copy_from_slice(kid);
        Ok(Self {
            key,
            kid: bytes,
            kid_len: kid.len(),
        })
    }

    /// The public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The key id.
    pub fn kid(&self) -> &[u8] {
        self.kid.get(..self.kid_len).unwrap_or(&[])
    }
}

/// What a device remembers of governance: its fleet, the pinned root, and the newest accepted
/// generation record (sequence, payload digest, generations, deny list). Fixed size, no heap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GovernanceState {
    fleet: [u8; MAX_FLEET_ID_LEN],
    fleet_len: usize,
    root: RootKey,
    sequence: Option<u64>,
    digest: [u8; 32],
    current: Option<u32>,
    accepted: BoundedList<u32>,
    revoked: BoundedList<u32>,
    denied: BoundedList<u64>,
}

impl GovernanceState {
    /// A device's initial state: its fleet id (1 to 64 bytes) and the root it pins.
    pub fn new(fleet: &str, root: RootKey) -> Result<Self, GovernanceError> {
        if fleet.is_empty() {
            return Err(GovernanceError::Malformed(Field::Fleet));
        }
        let mut bytes = [0; MAX_FLEET_ID_LEN];
        bytes
            .get_mut(..fleet.len())
            .ok_or(GovernanceError::TooLarge(Field::Fleet))?
            .copy_from_slice(fleet.as_bytes());
        Ok(Self {
            fleet: bytes,
            fleet_len: fleet.len(),
            root,
            sequence: None,
            digest: [0; 32],
            current: None,
            accepted: BoundedList::default(),
            revoked: BoundedList::default(),
            denied: BoundedList::default(),
        })
    }

    /// The fleet id.
    pub fn fleet(&self) -> &[u8] {
        self.fleet.get(..self.fleet_len).unwrap_or(&[])
    }

    /// The pinned root.
    pub fn root(&self) -> &RootKey {
        &self.root
    }

    /// The sequence of the last accepted record (generation record or handover).
    pub fn sequence(&self) -> Option<u64> {
        self.sequence
    }

    /// The current generation of the newest accepted generation record.
    pub fn current_generation(&self) -> Option<Generation> {
        self.current.map(Generation)
    }

    /// The generations still accepted besides the current one.
    pub fn accepted_generations(&self) -> &[u32] {
        self.accepted.as_slice()
    }

    /// The revoked generations.
    pub fn revoked_generations(&self) -> &[u32] {
        self.revoked.as_slice()
    }

    /// The denied grant ids.
    pub fn denied_grants(&self) -> &[u64] {
        self.denied.as_slice()
    }

    fn is_fleet(&self, fleet: &str) -> bool {
        self.fleet() == fleet.as_bytes()
    }

    /// Anti-rollback: `Ok(true)` when `sequence` is new, `Ok(false)` when it is the last accepted
    /// one with the same payload (a repeat).
    fn check_sequence(&self, sequence: u64, digest: &[u8; 32]) -> Result<bool, GovernanceError> {
        match self.sequence {
            None => Ok(true),
            Some(last) if sequence > last => Ok(true),
            Some(last) if sequence == last => {
                if bool::from(self.digest.ct_eq(digest)) {
                    Ok(false)
                } else {
                    Err(GovernanceError::SequenceReused)
                }
            }
            Some(_) => Err(GovernanceError::StaleSequence),
        }
    }
}

/// What [`verify_generation_record`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acceptance {
    /// A newer record: the state now holds it.
    Updated,
    /// The record already accepted, presented again (same sequence, same payload): no change.
    Repeated,
}

/// A generation record's payload, decoded (signature not implied: see [`inspect_unverified`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GenerationRecord<'a> {
    /// Fleet id.
    pub fleet: &'a str,
    /// Valid from (Unix seconds, inclusive).
    pub not_before: u64,
    /// Valid until (Unix seconds, exclusive).
    pub not_after: u64,
    /// Sequence number.
    pub sequence: u64,
    /// Current generation.
    pub current: u32,
    /// Generations still accepted besides the current one.
    pub accepted: BoundedList<u32>,
    /// Revoked generations.
    pub revoked: BoundedList<u32>,
    /// Denied grant ids.
    pub denied: BoundedList<u64>,
}

/// A grant, decoded; from [`verify_grant`] it is verified for the device that asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant<'a> {
    /// Fleet id.
    pub fleet: &'a str,
    /// Valid from (Unix seconds, inclusive).
    pub not_before: u64,
    /// Valid until (Unix seconds, exclusive).
    pub not_after: u64,
    /// Grant id.
    pub id: u64,
    /// Subject (who holds the grant).
    pub subject: &'a str,
    /// Role.
    pub role: Role,
    /// Serial prefixes covered.
    pub scope: BoundedList<&'a [u8]>,
    /// The subject's Ed25519 public key.
    pub subject_key: [u8; 32],
}

impl Grant<'_> {
    /// Whether `serial` starts with one of the scope's prefixes.
    pub fn covers(&self, serial: &[u8]) -> bool {
        self.scope.as_slice().iter().any(|p| serial.starts_with(p))
    }
}

/// A root handover, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handover<'a> {
    /// Fleet id.
    pub fleet: &'a str,
    /// Valid from (Unix seconds, inclusive).
    pub not_before: u64,
    /// Valid until (Unix seconds, exclusive).
    pub not_after: u64,
    /// Sequence number (shared with generation records).
    pub sequence: u64,
    /// The new root's public key.
    pub new_key: [u8; 32],
    /// The new root's key id.
    pub new_kid: &'a [u8],
}

/// Any record's payload, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// Kind 1.
    Generation(GenerationRecord<'a>),
    /// Kind 2.
    Grant(Grant<'a>),
    /// Kind 3.
    Handover(Handover<'a>),
}

/// A record's COSE envelope, split (structure checked, signature not yet).
#[derive(Clone, Copy, Debug)]
pub struct Envelope<'a> {
    /// The protected header's bytes (a bstr-wrapped map).
    pub protected: &'a [u8],
    /// The key id of the protected header.
    pub kid: &'a [u8],
    /// The payload's bytes.
    pub payload: &'a [u8],
    /// The signature.
    pub signature: [u8; 64],
}

/// Splits a tagged COSE_Sign1 and checks its protected header (alg EdDSA, a kid) and its empty
/// unprotected header. The signature is not checked.
pub fn parse_envelope(bytes: &[u8]) -> Result<Envelope<'_>, GovernanceError> {
    if bytes.len() > MAX_RECORD_LEN {
        return Err(GovernanceError::TooLarge(Field::Record));
    }
    let mut r = Reader::new(bytes);
    if r.tag(Field::Structure)? != COSE_SIGN1_TAG || r.array(Field::Structure)? != 4 {
        return Err(GovernanceError::Malformed(Field::Structure));
    }
    let protected = r.bytes(Field::Protected)?;
    if r.map(Field::Unprotected)? != 0 {
        return Err(GovernanceError::Malformed(Field::Unprotected));
    }
    let payload = r.bytes(Field::Payload)?;
    let signature: [u8; 64] = r
        .bytes(Field::Signature)?
        .try_into()
        .map_err(|_| GovernanceError::Malformed(Field::Signature))?;
    if !r.at_end() {
        return Err(GovernanceError::Malformed(Field::Record));
    }

    let mut h = Reader::new(protected);
    if h.map(Field::Protected)? != 2 {
        return Err(GovernanceError::Malformed(Field::Protected));
    }
    h.label(label::HEADER_ALG, Field::Protected)?;
    if h.nint(Field::Protected)? != ALG_EDDSA {
        return Err(GovernanceError::Algorithm);
    }
    h.label(label::HEADER_KID, Field::Protected)?;
    let kid = h.bytes(Field::Kid)?;
    if kid.is_empty() || kid.len() > MAX_KID_LEN {
        return Err(GovernanceError::Malformed(Field::Kid));
    }
    if !h.at_end() {
        return Err(GovernanceError::Malformed(Field::Protected));
    }
    Ok(Envelope {
        protected,
        kid,
        payload,
        signature,
    })
}

/// Verifies `signature` over `message` with strict Ed25519 (RFC 8032, with dalek's rejection of
/// small-order points and non-canonical encodings).
pub fn verify_ed25519(
    public_key: &[u8; 32],
    message: &[u8],
    signature: &[u8; 64],
) -> Result<(), GovernanceError> {
    let key = ed25519::PublicKey::from_bytes(public_key).ok_or(GovernanceError::Signature)?;
    if key.verify(message, signature) {
        Ok(())
    } else {
        Err(GovernanceError::Signature)
    }
}

/// Checks the envelope's kid and signature against `root`, then decodes the payload.
fn open<'a>(
    root: &RootKey,
    bytes: &'a [u8],
) -> Result<(Envelope<'a>, Record<'a>), GovernanceError> {
    let envelope = parse_envelope(bytes)?;
    if envelope.kid != root.kid() {
        return Err(GovernanceError::UnknownKid);
    }
    let tbs = Tbs::new(envelope.protected, envelope.payload)?;
    if !root.key.verify(tbs.as_bytes(), &envelope.signature) {
        return Err(GovernanceError::Signature);
    }
    let record = decode_payload(envelope.payload)?;
    Ok((envelope, record))
}

/// Decodes a record without checking its signature: for display and tooling, never for a
/// decision.
pub fn inspect_unverified(bytes: &[u8]) -> Result<(Envelope<'_>, Record<'_>), GovernanceError> {
    let envelope = parse_envelope(bytes)?;
    let record = decode_payload(envelope.payload)?;
    Ok((envelope, record))
}

fn window(not_before: u64, not_after: u64, now_s: u64) -> Result<(), GovernanceError> {
    if now_s < not_before {
        Err(GovernanceError::NotYetValid)
    } else if now_s >= not_after {
        Err(GovernanceError::Expired)
    } else {
        Ok(())
    }
}

fn key32(r: &mut Reader<'_>, field: Field) -> Result<[u8; 32], GovernanceError> {
    r.bytes(field)?
        .try_into()
        .map_err(|_| GovernanceError::Malformed(field))
}

fn list_len(r: &mut Reader<'_>, field: Field) -> Result<u64, GovernanceError> {
    let n = r.array(field)?;
    if n > MAX_LIST_LEN as u64 {
        return Err(GovernanceError::TooLarge(field));
    }
    Ok(n)
}

fn generations(r: &mut Reader<'_>) -> Result<BoundedList<u32>, GovernanceError> {
    let mut list = BoundedList::default();
    for _ in 0..list_len(r, Field::Generations)? {
        list.push(r.u32(Field::Generations)?, Field::Generations)?;
    }
    Ok(list)
}

fn decode_payload(payload: &[u8]) -> Result<Record<'_>, GovernanceError> {
    let mut r = Reader::new(payload);
    let entries = r.map(Field::Payload)?;
    r.label(label::KIND, Field::Payload)?;
    let kind = r.uint(Field::Kind)?;
    let expected_entries = match kind {
        1 => 9,
        2 => 9,
        3 => 7,
        _ => return Err(GovernanceError::Malformed(Field::Kind)),
    };
    if entries != expected_entries {
        return Err(GovernanceError::Malformed(Field::Payload));
    }
    r.label(label::FLEET, Field::Payload)?;
    let fleet = r.str(Field::Fleet)?;
    if fleet.is_empty() || fleet.len() > MAX_FLEET_ID_LEN {
        return Err(GovernanceError::Malformed(Field::Fleet));
    }
    r.label(label::NOT_BEFORE, Field::Payload)?;
    let not_before = r.uint(Field::Window)?;
    r.label(label::NOT_AFTER, Field::Payload)?;
    let not_after = r.uint(Field::Window)?;
    if not_before >= not_after {
        return Err(GovernanceError::Malformed(Field::Window));
    }
    let record = match kind {
        1 => {
            r.label(label::SEQUENCE, Field::Payload)?;
            let sequence = r.uint(Field::Sequence)?;
            r.label(label::CURRENT, Field::Payload)?;
            let current = r.u32(Field::Generations)?;
            r.label(label::ACCEPTED, Field::Payload)?;
            let accepted = generations(&mut r)?;
            r.label(label::REVOKED, Field::Payload)?;
            let revoked = generations(&mut r)?;
            r.label(label::DENIED, Field::Payload)?;
            let mut denied = BoundedList::default();
            for _ in 0..list_len(&mut r, Field::Denied)? {
                denied.push(r.uint(Field::Denied)?, Field::Denied)?;
            }
            let revoked_s = revoked.as_slice();
            if revoked_s.contains(&current)
                || accepted.as_slice().iter().any(|g| revoked_s.contains(g))
            {
                return Err(GovernanceError::Inconsistent);
            }
            Record::Generation(GenerationRecord {
                fleet,
                not_before,
                not_after,
                sequence,
                current,
                accepted,
                revoked,
                denied,
            })
        }
        2 => {
            r.label(label::GRANT_ID, Field::Payload)?;
            let id = r.uint(Field::GrantId)?;
            r.label(label::SUBJECT, Field::Payload)?;
            let subject = r.str(Field::Subject)?;
            if subject.len() > MAX_SUBJECT_LEN {
                return Err(GovernanceError::TooLarge(Field::Subject));
            }
            r.label(label::ROLE, Field::Payload)?;
            let role = match r.uint(Field::Role)? {
                1 => Role::Technician,
                2 => Role::Operator,
                _ => return Err(GovernanceError::Malformed(Field::Role)),
            };
            r.label(label::SCOPE, Field::Payload)?;
            let mut scope = BoundedList::default();
            for _ in 0..list_len(&mut r, Field::Scope)? {
                let prefix = r.bytes(Field::Scope)?;
                if prefix.len() > MAX_PREFIX_LEN {
                    return Err(GovernanceError::TooLarge(Field::Scope));
                }
                scope.push(prefix, Field::Scope)?;
            }
            r.label(label::SUBJECT_KEY, Field::Payload)?;
            let subject_key = key32(&mut r, Field::PublicKey)?;
            Record::Grant(Grant {
                fleet,
                not_before,
                not_after,
                id,
                subject,
                role,
                scope,
                subject_key,
            })
        }
        _ => {
            r.label(label::SEQUENCE, Field::Payload)?;
            let sequence = r.uint(Field::Sequence)?;
            r.label(label::NEW_ROOT_KEY, Field::Payload)?;
            let new_key = key32(&mut r, Field::PublicKey)?;
            r.label(label::NEW_ROOT_KID, Field::Payload)?;
            let new_kid = r.bytes(Field::Kid)?;
            Record::Handover(Handover {
                fleet,
                not_before,
                not_after,
                sequence,
                new_key,
                new_kid,
            })
        }
    };
    if !r.at_end() {
        return Err(GovernanceError::Malformed(Field::Payload));
    }
    Ok(record)
}

fn digest(payload: &[u8]) -> [u8; 32] {
    Sha256::digest(payload).into()
}

/// Verifies a generation record and, if it is newer than the last accepted, makes it the state's.
///
/// Checks, in order: size and COSE structure, alg -8, kid equal to the pinned root's, the
/// signature (strict Ed25519 over the `Sig_structure`), the payload and its kind, the fleet, the
/// validity window against `now_s`, the generation sets, and the sequence: below the last
/// accepted is [`GovernanceError::StaleSequence`]; equal with the same payload is
/// [`Acceptance::Repeated`] (a gateway may push the same record again); equal with another
/// payload is [`GovernanceError::SequenceReused`]. On any error the state is unchanged.
pub fn verify_generation_record(
    state: &mut GovernanceState,
    bytes: &[u8],
    now_s: u64,
) -> Result<Acceptance, GovernanceError> {
    let (envelope, record) = open(&state.root, bytes)?;
    let Record::Generation(record) = record else {
        return Err(GovernanceError::Kind);
    };
    if !state.is_fleet(record.fleet) {
        return Err(GovernanceError::Fleet);
    }
    window(record.not_before, record.not_after, now_s)?;
    let digest = digest(envelope.payload);
    if !state.check_sequence(record.sequence, &digest)? {
        return Ok(Acceptance::Repeated);
    }
    state.sequence = Some(record.sequence);
    state.digest = digest;
    state.current = Some(record.current);
    state.accepted = record.accepted;
    state.revoked = record.revoked;
    state.denied = record.denied;
    Ok(Acceptance::Updated)
}

/// Whether a key of `generation` may be used: why not, if not.
pub fn check_generation(
    state: &GovernanceState,
    generation: Generation,
) -> Result<(), GovernanceError> {
    let g = generation.0;
    if state.revoked.as_slice().contains(&g) {
        Err(GovernanceError::RevokedGeneration)
    } else if state.current == Some(g) || state.accepted.as_slice().contains(&g) {
        Ok(())
    } else {
        Err(GovernanceError::UnknownGeneration)
    }
}

/// Whether a key of `generation` may be used: it is the current or a still-accepted generation of
/// the newest accepted record, and not revoked. False before any record is accepted.
pub fn generation_allowed(state: &GovernanceState, generation: Generation) -> bool {
    check_generation(state, generation).is_ok()
}

/// Verifies a grant for the device with `serial` at `now_s`: signature by the pinned root, kind,
/// fleet, validity window, `serial` in scope, and the grant id not denied by the newest accepted
/// generation record. The grant's key is then checked by [`verify_possession`].
pub fn verify_grant<'a>(
    state: &GovernanceState,
    bytes: &'a [u8],
    serial: &[u8],
    now_s: u64,
) -> Result<Grant<'a>, GovernanceError> {
    let (_, record) = open(&state.root, bytes)?;
    let Record::Grant(grant) = record else {
        return Err(GovernanceError::Kind);
    };
    if !state.is_fleet(grant.fleet) {
        return Err(GovernanceError::Fleet);
    }
    window(grant.not_before, grant.not_after, now_s)?;
    if !grant.covers(serial) {
        return Err(GovernanceError::OutOfScope);
    }
    if state.denied.as_slice().contains(&grant.id) {
        return Err(GovernanceError::Denied);
    }
    Ok(grant)
}

/// Verifies a root handover signed by the pinned root and, once, moves the pin to the new root.
/// The handover takes a sequence number from the same series as generation records, so it must
/// be above the last accepted; the generation state is kept.
pub fn verify_handover(
    state: &mut GovernanceState,
    bytes: &[u8],
    now_s: u64,
) -> Result<(), GovernanceError> {
    let (envelope, record) = open(&state.root, bytes)?;
    let Record::Handover(handover) = record else {
        return Err(GovernanceError::Kind);
    };
    if !state.is_fleet(handover.fleet) {
        return Err(GovernanceError::Fleet);
    }
    window(handover.not_before, handover.not_after, now_s)?;
    if state.sequence.is_some_and(|last| handover.sequence <= last) {
        return Err(GovernanceError::StaleSequence);
    }
    let new_root = RootKey::new(handover.new_key, handover.new_kid)?;
    state.root = new_root;
    state.sequence = Some(handover.sequence);
    state.digest = digest(envelope.payload);
    Ok(())
}

/// A device's challenge for proof of possession, made from a fresh random nonce the caller
/// supplies (the core takes randomness as an argument). Use each once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Challenge([u8; CHALLENGE_LEN]);

impl Challenge {
    /// The challenge for `nonce` (from the device's RNG).
    pub const fn from_nonce(nonce: [u8; CHALLENGE_LEN]) -> Self {
        Self(nonce)
    }

    /// The challenge's bytes, sent to the tool.
    pub const fn as_bytes(&self) -> &[u8; CHALLENGE_LEN] {
        &self.0
    }
}

/// The message the grant holder signs: `"fleetkey pop v1" || grant id (u64 BE) || challenge`.
pub fn possession_message(grant_id: u64, challenge: &Challenge) -> [u8; POSSESSION_MESSAGE_LEN] {
    let mut m = [0; POSSESSION_MESSAGE_LEN];
    let (label, rest) = m.split_at_mut(POSSESSION_LABEL.len());
    label.copy_from_slice(POSSESSION_LABEL);
    let (id, chal) = rest.split_at_mut(8);
    id.copy_from_slice(&grant_id.to_be_bytes());
    chal.copy_from_slice(&challenge.0);
    m
}

/// Checks the grant holder's proof of possession: `signature` over [`possession_message`] under
/// the grant's subject key (strict Ed25519).
pub fn verify_possession(
    grant: &Grant<'_>,
    challenge: &Challenge,
    signature: &[u8; 64],
) -> Result<(), GovernanceError> {
    verify_ed25519(
        &grant.subject_key,
        &possession_message(grant.id, challenge),
        signature,
    )
    .map_err(|_| GovernanceError::Possession)
}
