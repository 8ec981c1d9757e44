//! The governed scheme's records, issued by the fleet: generation records (published after every
//! generation change and deny), technician and operator grants, and their export as `.cose`
//! files a gateway pushes over CAN. The format and the device side: `docs/governance.md`.
//!
//! Store meta keys: `governance.sequence` (the last published sequence), `governance.record.<seq>`
//! (hex of each record), `governance.grant_next` (the last issued grant id),
//! `governance.grant.<id>` (a [`GrantInfo`] as JSON) and `governance.denied` (a JSON array of
//! denied grant ids). No key material is stored or audited here. The root's own lifecycle
//! (backup, rotation with its handover, restore) is in `root.rs`, which uses this module; what
//! both read (the sequence series, the pinned root, the handovers) is in `gov_store.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetkey_core::governance::{Record, Role, inspect_unverified};
use serde::{Deserialize, Serialize};

use super::gov_store::{
    META_SEQUENCE, handover_sequences, issue_error, meta_u64, read_handovers, read_hex,
};
use super::{Fleet, fleet_info};
use crate::error::{Error, StoreError};
use crate::governance::{GenerationRecordSpec, GrantSpec, key_id};
use crate::lifecycle::State;
use crate::model::Scheme;
use crate::store::{Tx, read_tx, transact};

const META_RECORD: &str = "governance.record.";
const META_GRANT_NEXT: &str = "governance.grant_next";
const META_GRANT: &str = "governance.grant.";
const META_DENIED: &str = "governance.denied";

/// How long a generation record published automatically (after a generation change or a deny)
/// is valid: 365 days.
pub const AUTO_RECORD_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// A published generation record.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Published {
    /// Its sequence number.
    pub sequence: u64,
    /// The tagged COSE_Sign1.
    #[serde(with = "hex::serde")]
    pub bytes: Vec<u8>,
    /// The file it was written to, if any.
    pub path: Option<PathBuf>,
}

/// An issued grant, as the fleet remembers it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GrantInfo {
    /// Grant id.
    pub id: u64,
    /// Who holds it.
    pub subject: String,
    /// `technician` or `operator`.
    pub role: String,
    /// Serial prefixes covered (text, or `hex:` for raw bytes).
    pub scope: Vec<String>,
    /// Valid from (Unix seconds).
    pub not_before: u64,
    /// Valid until (Unix seconds, exclusive).
    pub not_after: u64,
    /// The subject's Ed25519 public key, hex.
    pub subject_key: String,
    /// Whether the grant is denied.
    #[serde(default)]
    pub denied: bool,
    /// The tagged COSE_Sign1, hex.
    pub record: String,
}

/// What [`Fleet::finish_rotation`] did.
pub(super) struct FinishedRotation {
    /// The root that signs now.
    pub(super) root: [u8; 32],
    /// The grants re-issued under it.
    pub(super) reissued: Vec<u64>,
    /// The sequence of the generation record published, if one was.
    pub(super) published: Option<u64>,
}

/// The role's name.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Technician => "technician",
        Role::Operator => "operator",
    }
}

fn denied_ids(tx: &mut dyn Tx) -> Result<Vec<u64>, Error> {
    match tx.meta(META_DENIED)? {
        None => Ok(Vec::new()),
        Some(v) => serde_json::from_str(&v)
            .map_err(|e| StoreError::Corrupt(format!("{META_DENIED}: {e}")).into()),
    }
}

fn grant_info(tx: &mut dyn Tx, id: u64) -> Result<Option<GrantInfo>, Error> {
    let key = format!("{META_GRANT}{id}");
    match tx.meta(&key)? {
        None => Ok(None),
        Some(v) => serde_json::from_str(&v)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("{key}: {e}")).into()),
    }
}

/// The record's key id, if it parses as a record.
fn record_kid(bytes: &[u8]) -> Option<Vec<u8>> {
    fleetkey_core::governance::parse_envelope(bytes)
        .ok()
        .map(|e| e.kid.to_vec())
}

/// The live grants (not denied, window not ended at `now`) signed by another key than `kid`,
/// with their record's bytes.
fn stale_grants(tx: &mut dyn Tx, kid: &[u8], now: u64) -> Result<Vec<(GrantInfo, Vec<u8>)>, Error> {
    let mut out = Vec::new();
    for id in 1..=meta_u64(tx, META_GRANT_NEXT)? {
        let Some(g) = grant_info(tx, id)? else {
            continue;
        };
        if g.denied || g.not_after <= now {
            continue;
        }
        let bytes = hex::decode(&g.record)
            .map_err(|e| StoreError::Corrupt(format!("{META_GRANT}{id}: {e}")))?;
        if record_kid(&bytes).as_deref() != Some(kid) {
            out.push((g, bytes));
        }
    }
    Ok(out)
}

fn scope_text(prefix: &[u8]) -> String {
    match std::str::from_utf8(prefix) {
        Ok(t) if !t.starts_with("hex:") && !t.chars().any(char::is_control) => t.to_owned(),
        _ => format!("hex:{}", hex::encode(prefix)),
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("cose.tmp");
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

impl Fleet {
    /// The governance root's public key (what devices pin) and its key id: after a root
    /// rotation, the new root.
    pub fn governance_root(&mut self) -> Result<([u8; 32], [u8; 8]), Error> {
        self.require_governed("governance root")?;
        let public = self.pinned_or_module_root()?;
        Ok((public, key_id(&public)))
    }

    /// Signs and stores the next generation record: the current generation, the generations
    /// still holding key material (active, suspended, deactivated), the revoked ones
    /// (compromised, destroyed-compromised) and the denied grants that have not expired; audit
    /// `governance.publish`.
    pub fn publish_generation_record(
        &mut self,
        reason: &str,
        validity: Duration,
    ) -> Result<Published, Error> {
        self.require_governed("publish")?;
        let root = self.live_root()?;
        self.publish_with(&root, reason, validity)
    }

    /// [`Fleet::publish_generation_record`] signed by `root`, the module's live root.
    fn publish_with(
        &mut self,
        root: &[u8; 32],
        reason: &str,
        validity: Duration,
    ) -> Result<Published, Error> {
        let (not_before, not_after) = self.window(validity)?;
        let fleet_id = self.config.fleet_id.clone();
        let spec = transact(self.store.as_mut(), |tx| {
            let fleet = fleet_info(tx)?;
            let current = fleet.current_generation.ok_or(Error::NoCurrentGeneration)?;
            let mut accepted = Vec::new();
            let mut revoked = Vec::new();
            for g in tx.generations()? {
                match g.state {
                    State::Compromised | State::DestroyedCompromised => revoked.push(g.generation),
                    State::Active | State::Suspended | State::Deactivated
                        if g.generation != current =>
                    {
                        accepted.push(g.generation);
                    }
                    _ => {}
                }
            }
            if revoked.contains(&current) {
                return Err(Error::CurrentCompromised(current));
            }
            let mut denied = Vec::new();
            for id in denied_ids(tx)? {
                // A denied grant that has expired is refused by its window anyway.
                if grant_info(tx, id)?.is_none_or(|g| g.not_after > not_before) {
                    denied.push(id);
                }
            }
            Ok(GenerationRecordSpec {
                fleet: fleet_id.clone(),
                not_before,
                not_after,
                sequence: meta_u64(tx, META_SEQUENCE)?.saturating_add(1),
                current,
                accepted,
                revoked,
                denied,
            })
        })?;
        let kid = key_id(root);
        let module = self.module.get()?;
        let bytes = spec
            .encode_and_sign(&kid, &|m: &[u8]| module.sign(m))
            .map_err(issue_error)?;
        let draft = self.draft(
            "governance.publish",
            Some(spec.current),
            vec![],
            serde_json::json!({"sequence": spec.sequence, "current": spec.current,
                               "accepted": spec.accepted, "revoked": spec.revoked,
                               "denied": spec.denied, "not_before": not_before,
                               "not_after": not_after, "reason": reason}),
        );
        let hex_bytes = hex::encode(&bytes);
        transact(self.store.as_mut(), |tx| {
            if meta_u64(tx, META_SEQUENCE)?.saturating_add(1) != spec.sequence {
                return Err(
                    StoreError::Busy("another record was published meanwhile".into()).into(),
                );
            }
            tx.put_meta(META_SEQUENCE, &spec.sequence.to_string())?;
            tx.put_meta(&format!("{META_RECORD}{}", spec.sequence), &hex_bytes)?;
            tx.append_audit(draft.clone())?;
            Ok(())
        })?;
        Ok(Published {
            sequence: spec.sequence,
            bytes,
            path: None,
        })
    }

    /// After a generation change: publishes a new generation record in the governed scheme
    /// (nothing in the others). Skipped while the current generation is compromised (no record
    /// can say that; the rotation that follows publishes one revoking it).
    pub(crate) fn publish_if_governed(&mut self, reason: &str) -> Result<(), Error> {
        if self.publishable()? {
            self.publish_generation_record(reason, AUTO_RECORD_VALIDITY)?;
        }
        Ok(())
    }

    /// Whether a generation record can be published automatically: the governed scheme, with a
    /// current generation that is not compromised.
    fn publishable(&mut self) -> Result<bool, Error> {
        if self.config.scheme != Scheme::Governed {
            return Ok(false);
        }
        read_tx(self.store.as_mut(), |tx| {
            let Some(current) = fleet_info(tx)?.current_generation else {
                return Ok(false);
            };
            Ok(!tx.generation(current)?.is_some_and(|g| {
                matches!(g.state, State::Compromised | State::DestroyedCompromised)
            }))
        })
    }

    /// The root that signs now, with any root rotation a crash interrupted finished first
    /// ([`Fleet::finish_rotation`]). Every record and grant is signed through it.
    pub(super) fn live_root(&mut self) -> Result<[u8; 32], Error> {
        Ok(self
            .finish_rotation("root rotation finished after an interruption")?
            .root)
    }

    /// Finishes a root rotation, at its end or after a crash: the staged root promoted in the
    /// module when the store pins it already, every live grant still signed by an older root
    /// re-issued under this one ([`Fleet::reissue_grants`]), and, when the newest generation
    /// record is signed by an older root, a new record published. Returns the root, the grants
    /// re-issued and the sequence of the record published, if one was. Nothing to do costs store
    /// reads only.
    pub(super) fn finish_rotation(&mut self, reason: &str) -> Result<FinishedRotation, Error> {
        let root = self.signing_root()?;
        let reissued = self.reissue_grants(&root, reason)?;
        let kid = key_id(&root);
        let stale_record = self
            .latest_generation_record()?
            .is_some_and(|p| record_kid(&p.bytes).as_deref() != Some(&kid[..]));
        let published = if stale_record && self.publishable()? {
            Some(
                self.publish_with(&root, reason, AUTO_RECORD_VALIDITY)?
                    .sequence,
            )
        } else {
            None
        };
        Ok(FinishedRotation {
            root,
            reissued,
            published,
        })
    }

    /// Re-issues every live grant (not denied, window not ended) that an older root signed under
    /// `root`: the same id, subject, role, scope, subject key and window, a new kid and signature;
    /// audit `grant.reissue` for each. The grant's stored record is replaced (the old bytes stay
    /// valid only on devices that have not taken the handover). Returns the ids re-issued.
    fn reissue_grants(&mut self, root: &[u8; 32], reason: &str) -> Result<Vec<u64>, Error> {
        let kid = key_id(root);
        let now = self.now_s();
        let stale = transact(self.store.as_mut(), |tx| stale_grants(tx, &kid, now))?;
        if stale.is_empty() {
            return Ok(Vec::new());
        }
        let mut signed = Vec::with_capacity(stale.len());
        for (old, bytes) in stale {
            let Ok((envelope, Record::Grant(g))) = inspect_unverified(&bytes) else {
                return Err(
                    StoreError::Corrupt(format!("{META_GRANT}{}: not a grant", old.id)).into(),
                );
            };
            let spec = GrantSpec {
                fleet: self.config.fleet_id.clone(),
                not_before: g.not_before,
                not_after: g.not_after,
                id: g.id,
                subject: g.subject.to_owned(),
                role: g.role,
                scope: g.scope.as_slice().iter().map(|p| p.to_vec()).collect(),
                subject_key: g.subject_key,
            };
            if spec.id != old.id {
                return Err(StoreError::Corrupt(format!(
                    "{META_GRANT}{}: holds grant {}",
                    old.id, spec.id
                ))
                .into());
            }
            let module = self.module.get()?;
            let new_bytes = spec
                .encode_and_sign(&kid, &|m: &[u8]| module.sign(m))
                .map_err(issue_error)?;
            let draft = self.draft(
                "grant.reissue",
                None,
                vec![],
                serde_json::json!({"grant": old.id, "subject": old.subject, "kid": hex::encode(kid),
                                   "old_kid": hex::encode(envelope.kid),
                                   "not_before": old.not_before, "not_after": old.not_after,
                                   "reason": reason}),
            );
            let mut info = old.clone();
            info.record = hex::encode(&new_bytes);
            let json = serde_json::to_string(&info).map_err(|e| Error::invalid("grant", e))?;
            signed.push((old, json, draft));
        }
        transact(self.store.as_mut(), |tx| {
            let mut done = Vec::new();
            for (old, json, draft) in &signed {
                // Another process may have re-issued or denied it meanwhile: then it is left.
                if grant_info(tx, old.id)?.as_ref() != Some(old) {
                    continue;
                }
                tx.put_meta(&format!("{META_GRANT}{}", old.id), json)?;
                tx.append_audit(draft.clone())?;
                done.push(old.id);
            }
            Ok(done)
        })
    }

    /// The newest generation record, if one was published.
    pub fn latest_generation_record(&mut self) -> Result<Option<Published>, Error> {
        self.require_governed("governance show")?;
        read_tx(self.store.as_mut(), |tx| {
            let last = meta_u64(tx, META_SEQUENCE)?;
            let handovers = handover_sequences(tx)?;
            // The series also numbers the root handovers: the newest generation record is the
            // highest sequence that is not one.
            let Some(sequence) = (1..=last).rev().find(|s| !handovers.contains(s)) else {
                return Ok(None);
            };
            let bytes = read_hex(tx, &format!("{META_RECORD}{sequence}"))?.ok_or_else(|| {
                StoreError::Corrupt(format!("{META_RECORD}{sequence} is missing"))
            })?;
            Ok(Some(Published {
                sequence,
                bytes,
                path: None,
            }))
        })
    }

    /// Issues a grant to `subject` for serials starting with one of `scope` (an empty prefix
    /// covers every serial), valid from now for `validity`, bound to the subject's Ed25519 key;
    /// audit `grant.issue`. Returns the grant's id and bytes.
    pub fn issue_grant(
        &mut self,
        subject: &str,
        role: Role,
        scope: &[Vec<u8>],
        validity: Duration,
        subject_key: [u8; 32],
    ) -> Result<(u64, Vec<u8>), Error> {
        self.require_governed("grant issue")?;
        // The lifecycle policy's maximum grant lifetime.
        let validity = self.grant_validity(Some(validity))?;
        let (not_before, not_after) = self.window(validity)?;
        let id = transact(self.store.as_mut(), |tx| {
            Ok(meta_u64(tx, META_GRANT_NEXT)?.saturating_add(1))
        })?;
        let spec = GrantSpec {
            fleet: self.config.fleet_id.clone(),
            not_before,
            not_after,
            id,
            subject: subject.to_owned(),
            role,
            scope: scope.to_vec(),
            subject_key,
        };
        let kid = key_id(&self.live_root()?);
        let module = self.module.get()?;
        let bytes = spec
            .encode_and_sign(&kid, &|m: &[u8]| module.sign(m))
            .map_err(issue_error)?;
        let info = GrantInfo {
            id,
            subject: subject.to_owned(),
            role: role_name(role).to_owned(),
            scope: scope.iter().map(|p| scope_text(p)).collect(),
            not_before,
            not_after,
            subject_key: hex::encode(subject_key),
            denied: false,
            record: hex::encode(&bytes),
        };
        let json = serde_json::to_string(&info).map_err(|e| Error::invalid("grant", e))?;
        let draft = self.draft(
            "grant.issue",
            None,
            vec![],
            serde_json::json!({"grant": id, "subject": subject, "role": info.role,
                               "scope": info.scope, "not_before": not_before,
                               "not_after": not_after, "subject_key": info.subject_key}),
        );
        transact(self.store.as_mut(), |tx| {
            if meta_u64(tx, META_GRANT_NEXT)?.saturating_add(1) != id {
                return Err(StoreError::Busy("another grant was issued meanwhile".into()).into());
            }
            tx.put_meta(META_GRANT_NEXT, &id.to_string())?;
            tx.put_meta(&format!("{META_GRANT}{id}"), &json)?;
            tx.append_audit(draft.clone())?;
            Ok(())
        })?;
        Ok((id, bytes))
    }

    /// Denies a grant (audit `grant.deny`) and publishes a new generation record listing it.
    pub fn deny_grant(&mut self, id: u64, reason: &str) -> Result<Published, Error> {
        self.require_governed("grant deny")?;
        let draft = self.draft(
            "grant.deny",
            None,
            vec![],
            serde_json::json!({"grant": id, "reason": reason}),
        );
        transact(self.store.as_mut(), |tx| {
            let Some(mut info) = grant_info(tx, id)? else {
                return Err(Error::NoSuchGrant(id));
            };
            let mut denied = denied_ids(tx)?;
            if !denied.contains(&id) {
                denied.push(id);
                let list =
                    serde_json::to_string(&denied).map_err(|e| Error::invalid("grant", e))?;
                tx.put_meta(META_DENIED, &list)?;
                info.denied = true;
                let json = serde_json::to_string(&info).map_err(|e| Error::invalid("grant", e))?;
                tx.put_meta(&format!("{META_GRANT}{id}"), &json)?;
                tx.append_audit(draft.clone())?;
            }
            Ok(())
        })?;
        self.publish_generation_record(&format!("deny grant {id}: {reason}"), AUTO_RECORD_VALIDITY)
    }

    /// Every issued grant, by id.
    pub fn grants(&mut self) -> Result<Vec<GrantInfo>, Error> {
        self.require_governed("grant list")?;
        read_tx(self.store.as_mut(), |tx| {
            let last = meta_u64(tx, META_GRANT_NEXT)?;
            let mut out = Vec::new();
            for id in 1..=last {
                if let Some(g) = grant_info(tx, id)? {
                    out.push(g);
                }
            }
            Ok(out)
        })
    }

    /// One grant.
    pub fn grant(&mut self, id: u64) -> Result<GrantInfo, Error> {
        self.require_governed("grant show")?;
        read_tx(self.store.as_mut(), |tx| grant_info(tx, id))?.ok_or(Error::NoSuchGrant(id))
    }

    /// Writes every root handover (`root-handover-<seq>.cose`, oldest first: a device pinned
    /// to an old root takes them in order), the newest generation record
    /// (`generation-record-<seq>.cose`) and every grant not denied that the pinned root signed
    /// (`grant-<id>.cose`) into `dir`, each through a temporary file and a rename. When a root
    /// rotation left live grants or the newest record signed by an older root (a crash before it
    /// finished), it is finished first (`Fleet::finish_rotation`: this needs the key module);
    /// otherwise the module is not used. A grant that expired before its root was rotated keeps
    /// the old root's signature and is not written.
    pub fn export_records(&mut self, dir: &Path) -> Result<Vec<PathBuf>, Error> {
        self.require_governed("governance export")?;
        let root = self.pinned_or_module_root()?;
        let kid = key_id(&root);
        let now = self.now_s();
        let stale_grants =
            !read_tx(self.store.as_mut(), |tx| stale_grants(tx, &kid, now))?.is_empty();
        let stale_record = self
            .latest_generation_record()?
            .is_some_and(|p| record_kid(&p.bytes).as_deref() != Some(&kid[..]));
        if stale_grants || (stale_record && self.publishable()?) {
            self.live_root()?;
        }
        let handovers = read_tx(self.store.as_mut(), read_handovers)?;
        let latest = self.latest_generation_record()?;
        let grants = self.grants()?;
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_owned(),
            source,
        })?;
        let mut written = Vec::new();
        for (sequence, bytes) in &handovers {
            let path = dir.join(format!("root-handover-{sequence}.cose"));
            write_atomic(&path, bytes)?;
            written.push(path);
        }
        if let Some(record) = latest {
            let path = dir.join(format!("generation-record-{}.cose", record.sequence));
            write_atomic(&path, &record.bytes)?;
            written.push(path);
        }
        for g in grants.iter().filter(|g| !g.denied) {
            let bytes = hex::decode(&g.record)
                .map_err(|e| StoreError::Corrupt(format!("{META_GRANT}{}: {e}", g.id)))?;
            if record_kid(&bytes).as_deref() != Some(&kid[..]) {
                continue;
            }
            let path = dir.join(format!("grant-{}.cose", g.id));
            write_atomic(&path, &bytes)?;
            written.push(path);
        }
        Ok(written)
    }
}
