//! The governed scheme's records, issued by the fleet: generation records (published after every
//! generation change and deny), technician and operator grants, and their export as `.cose`
//! files a gateway pushes over CAN. The format and the device side: `docs/governance.md`.
//!
//! Store meta keys: `governance.sequence` (the last published sequence), `governance.record.<seq>`
//! (hex of each record), `governance.grant_next` (the last issued grant id),
//! `governance.grant.<id>` (a [`GrantInfo`] as JSON) and `governance.denied` (a JSON array of
//! denied grant ids). No key material is stored or audited here. The root's own lifecycle
//! (backup, rotation with its handover, restore) is in `root.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetkey_core::governance::Role;
use serde::{Deserialize, Serialize};

use super::{Fleet, fleet_info};
use crate::error::{Error, ModuleError, StoreError};
use crate::governance::{GenerationRecordSpec, GrantSpec, IssueError, key_id};
use crate::lifecycle::State;
use crate::model::Scheme;
use crate::store::{Tx, transact};

pub(super) const META_SEQUENCE: &str = "governance.sequence";
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

/// The role's name.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Technician => "technician",
        Role::Operator => "operator",
    }
}

pub(super) fn issue_error(e: IssueError<ModuleError>) -> Error {
    match e {
        IssueError::Sign(m) => Error::Module(m),
        other => Error::invalid("governance record", other),
    }
}

pub(super) fn meta_u64(tx: &mut dyn Tx, key: &str) -> Result<u64, Error> {
    match tx.meta(key)? {
        None => Ok(0),
        Some(v) => v
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("{key}: {e}")).into()),
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

pub(super) fn read_hex(tx: &mut dyn Tx, key: &str) -> Result<Option<Vec<u8>>, Error> {
    tx.meta(key)?
        .map(|h| hex::decode(h).map_err(|e| StoreError::Corrupt(format!("{key}: {e}")).into()))
        .transpose()
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
    pub(super) fn require_governed(&self, what: &str) -> Result<(), Error> {
        if self.config.scheme == Scheme::Governed {
            Ok(())
        } else {
            Err(Error::Refused {
                what: format!(
                    "{what}: the {} scheme has no governance root",
                    self.config.scheme.name()
                ),
                hint:
                    "governance records need a fleet created with `fleetkey init --scheme governed`"
                        .into(),
            })
        }
    }

    fn now_s(&self) -> u64 {
        u64::try_from(self.access.clock.now_ms() / 1000).unwrap_or(0)
    }

    pub(super) fn window(&self, validity: Duration) -> Result<(u64, u64), Error> {
        let secs = validity.as_secs();
        if secs == 0 {
            return Err(Error::invalid("validity", "at least one second"));
        }
        let now = self.now_s();
        Ok((now, now.saturating_add(secs)))
    }

    fn root_kid(&mut self) -> Result<Vec<u8>, Error> {
        let public = self.signing_root()?;
        Ok(key_id(&public).to_vec())
    }

    /// The governance root's public key (what devices pin) and its key id: after a root
    /// rotation, the new root.
    pub fn governance_root(&mut self) -> Result<([u8; 32], [u8; 8]), Error> {
        self.require_governed("governance root")?;
        let public = self.signing_root()?;
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
        let (not_before, not_after) = self.window(validity)?;
        let fleet_id = self.config.fleet_id.clone();
        let spec = transact(self.store.as_mut(), |tx| {
            let fleet = fleet_info(tx)?;
            let current = fleet.current_generation.ok_or_else(|| Error::Refused {
                what: "the fleet has no current generation".into(),
                hint: "activate a generation first".into(),
            })?;
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
                return Err(Error::Refused {
                    what: format!("the current generation {current} is compromised: no record can accept it"),
                    hint: "rotate to a new generation (`fleetkey generation rotate`); its record revokes this one".into(),
                });
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
        let kid = self.root_kid()?;
        let module = self.module.as_ref();
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
        if self.config.scheme != Scheme::Governed {
            return Ok(());
        }
        let current_compromised = transact(self.store.as_mut(), |tx| {
            let Some(current) = fleet_info(tx)?.current_generation else {
                return Ok(true);
            };
            Ok(tx.generation(current)?.is_some_and(|g| {
                matches!(g.state, State::Compromised | State::DestroyedCompromised)
            }))
        })?;
        if !current_compromised {
            self.publish_generation_record(reason, AUTO_RECORD_VALIDITY)?;
        }
        Ok(())
    }

    /// The newest generation record, if one was published.
    pub fn latest_generation_record(&mut self) -> Result<Option<Published>, Error> {
        self.require_governed("governance show")?;
        transact(self.store.as_mut(), |tx| {
            let last = meta_u64(tx, META_SEQUENCE)?;
            let handovers = super::root::handover_sequences(tx)?;
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
        let kid = self.root_kid()?;
        let module = self.module.as_ref();
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
                return Err(Error::NotFound(format!("grant {id}")));
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
        transact(self.store.as_mut(), |tx| {
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
        transact(self.store.as_mut(), |tx| grant_info(tx, id))?
            .ok_or_else(|| Error::NotFound(format!("grant {id}")))
    }

    /// Writes every root handover (`root-handover-<seq>.cose`, oldest first: a device pinned
    /// to an old root takes them in order), the newest generation record
    /// (`generation-record-<seq>.cose`) and every grant not denied (`grant-<id>.cose`) into
    /// `dir`, each through a temporary file and a rename.
    pub fn export_records(&mut self, dir: &Path) -> Result<Vec<PathBuf>, Error> {
        self.require_governed("governance export")?;
        let handovers = self.handovers()?;
        let latest = self.latest_generation_record()?;
        let grants = self.grants()?;
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_owned(),
            source,
        })?;
        let mut written = Vec::new();
        for h in &handovers {
            let path = dir.join(format!("root-handover-{}.cose", h.sequence));
            write_atomic(&path, &h.bytes)?;
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
            let path = dir.join(format!("grant-{}.cose", g.id));
            write_atomic(&path, &bytes)?;
            written.push(path);
        }
        Ok(written)
    }
}
