//! The governance root's lifecycle (governed scheme): its ceremony at `init` (the Ed25519 seed
//! drawn in host memory, split into custodian shares like a master, the share files written,
//! then imported into the key module), its restore from shares, and its rotation: the old root
//! signs a handover (kind 3) to a new one, the handover is recorded and exported beside the
//! generation records, the old root is destroyed in the module, and the live grants are
//! re-issued and a record published under the new root (`Fleet::finish_rotation`, also the
//! path that finishes a rotation a crash interrupted).
//!
//! Store meta keys: `governance.root` (hex of the root public key devices pin after every
//! published handover), `governance.root_number` (1 the first root, 2 after the first rotation),
//! `governance.handover.<seq>` (hex of each handover) and `governance.handovers` (a JSON array of
//! their sequences). Handovers take their sequence from the generation records' series
//! (`governance.sequence`). Audit: `governance.root_backup`, `governance.root_rotate`,
//! `governance.root_restore`; no key material.

use std::time::Duration;

use serde::Serialize;

use super::gov_store::{
    META_HANDOVERS, META_ROOT, META_SEQUENCE, handover_sequences, issue_error, meta_u64,
    read_handovers,
};
use super::{Fleet, fleet_info};
use crate::backup::{self, MasterBackup, Share, WrittenShares};
use crate::error::{Error, StoreError};
use crate::governance::{HandoverSpec, key_id};
use crate::model::UnixMillis;
use crate::module::{KeyModule, SigningSeed};
use crate::restore::{self, RootRestoreReport};
use crate::store::{Tx, read_tx, transact};

/// The audit action recording how a governance root was backed up.
pub const ROOT_BACKUP_ACTION: &str = "governance.root_backup";
/// The audit action recording a root rotation (the handover).
pub const ROOT_ROTATE_ACTION: &str = "governance.root_rotate";
/// The audit action recording a root restored from shares.
pub const ROOT_RESTORE_ACTION: &str = "governance.root_restore";

const META_ROOT_NUMBER: &str = "governance.root_number";

/// How long a handover is valid by default: 365 days. A device that has not accepted the
/// handover before it expires stays pinned to the old root, which is destroyed, and can accept
/// no record again: choose the window to cover the longest time a device may be offline.
pub const DEFAULT_HANDOVER_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// A governance root made in a module, with its backup's share files (removed on drop unless
/// kept) and the public audit details.
pub(crate) struct NewRoot {
    pub(crate) public: [u8; 32],
    pub(crate) written: Option<WrittenShares>,
    pub(crate) details: serde_json::Value,
}

impl NewRoot {
    /// Keeps the share files: the root is recorded and in use.
    pub(crate) fn keep(self) {
        if let Some(written) = self.written {
            written.keep();
        }
    }
}

/// Where a new root goes in the module.
#[derive(Clone, Copy)]
enum Slot {
    /// The module has no root: it becomes the root (init).
    Root,
    /// Staged beside the current root (rotation).
    Next,
}

/// Makes governance root number `root` in `module`, backed up as `backup` says: with shares, the
/// seed is drawn in host memory, split, the share files written, and only then imported; without,
/// the root is generated inside the module and never leaves it.
fn make_root(
    module: &dyn KeyModule,
    fleet: &str,
    root: u32,
    backup: &MasterBackup,
    slot: Slot,
    now: UnixMillis,
) -> Result<NewRoot, Error> {
    match backup {
        MasterBackup::NoBackup => {
            let public = match slot {
                Slot::Root => module.ensure_signing_key()?,
                Slot::Next => module.stage_signing_key(None)?,
            };
            Ok(NewRoot {
                public,
                written: None,
                details: serde_json::json!({
                    "method": "none", "root": root, "public_key": hex::encode(public),
                    "kid": hex::encode(key_id(&public)),
                }),
            })
        }
        MasterBackup::Shares {
            threshold,
            custodians,
            dir,
        } => {
            backup::check_split(*threshold, custodians)?;
            let seed = SigningSeed::random()?;
            let shares = backup::split_root(&seed, fleet, root, *threshold, custodians, now)?;
            let written = backup::write_shares(dir, &shares)?;
            drop(shares);
            let files = written.file_names();
            // The share files are on disk before the root enters the module; if the import
            // fails, dropping `written` removes them.
            let public = match slot {
                Slot::Root => module.import_signing_key(&seed)?,
                Slot::Next => module.stage_signing_key(Some(&seed))?,
            };
            if public != seed.public_key() {
                return Err(Error::ModuleFaulty(crate::error::ModuleFault::NewRoot));
            }
            Ok(NewRoot {
                public,
                written: Some(written),
                details: serde_json::json!({
                    "method": "shares",
                    "root": root,
                    "public_key": hex::encode(public),
                    "kid": hex::encode(key_id(&public)),
                    "threshold": threshold,
                    "count": custodians.len(),
                    "custodians": custodians,
                    "root_kcv": backup::root_kcv(&seed),
                    "files": files,
                }),
            })
        }
    }
}

/// The first governance root of a new fleet (`init --scheme governed`).
pub(crate) fn create_root(
    module: &dyn KeyModule,
    fleet: &str,
    backup: &MasterBackup,
    now: UnixMillis,
) -> Result<NewRoot, Error> {
    make_root(module, fleet, 1, backup, Slot::Root, now)
}

/// The meta entries a new fleet's store gets for its root.
pub(crate) fn record_first_root(tx: &mut dyn Tx, public: &[u8; 32]) -> Result<(), Error> {
    tx.put_meta(META_ROOT, &hex::encode(public))?;
    tx.put_meta(META_ROOT_NUMBER, "1")?;
    Ok(())
}

/// A published root handover.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Handover {
    /// Its sequence number (the generation records' series).
    pub sequence: u64,
    /// The tagged COSE_Sign1, signed by the old root.
    #[serde(with = "hex::serde")]
    pub bytes: Vec<u8>,
}

/// The governance root a fleet's devices pin, and its history.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RootInfo {
    /// The root's Ed25519 public key.
    #[serde(with = "hex::serde")]
    pub public_key: [u8; 32],
    /// Its key id (`SHA-256(public key)[0..8]`).
    #[serde(with = "hex::serde")]
    pub kid: [u8; 8],
    /// 1 for the first root, 2 after the first rotation.
    pub number: u32,
    /// The sequences of the handovers published so far, oldest first.
    pub handovers: Vec<u64>,
}

/// What a root rotation did.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RootRotation {
    /// The old root (destroyed in the module).
    #[serde(with = "hex::serde")]
    pub old_public_key: [u8; 32],
    /// The new root's public key.
    #[serde(with = "hex::serde")]
    pub new_public_key: [u8; 32],
    /// The new root's key id.
    #[serde(with = "hex::serde")]
    pub new_kid: [u8; 8],
    /// The new root's number.
    pub number: u32,
    /// The handover, signed by the old root.
    pub handover: Handover,
    /// The generation record the new root signed right after, if one could be published (the
    /// fleet has a current generation that is not compromised).
    pub record_sequence: Option<u64>,
    /// The live grants re-issued under the new root (same ids), ascending.
    pub reissued_grants: Vec<u64>,
    /// The audit details of the new root's backup.
    pub backup: serde_json::Value,
}

impl Fleet {
    /// The governance root devices pin, its number and the handovers published so far.
    pub fn root_info(&mut self) -> Result<RootInfo, Error> {
        self.require_governed("governance root")?;
        let public_key = self.pinned_or_module_root()?;
        let (number, handovers) = read_tx(self.store.as_mut(), |tx| {
            let number = meta_u64(tx, META_ROOT_NUMBER)?.max(1);
            Ok((number, handover_sequences(tx)?))
        })?;
        Ok(RootInfo {
            public_key,
            kid: key_id(&public_key),
            number: u32::try_from(number)
                .map_err(|_| StoreError::Corrupt(format!("{META_ROOT_NUMBER}: above 2^32")))?,
            handovers,
        })
    }

    /// Every published handover, oldest first.
    pub fn handovers(&mut self) -> Result<Vec<Handover>, Error> {
        self.require_governed("governance handovers")?;
        Ok(read_tx(self.store.as_mut(), read_handovers)?
            .into_iter()
            .map(|(sequence, bytes)| Handover { sequence, bytes })
            .collect())
    }

    /// The backup records of the governance roots (audit events `governance.root_backup`,
    /// oldest first).
    pub fn root_backups(&mut self) -> Result<Vec<serde_json::Value>, Error> {
        let filter = crate::audit::AuditFilter {
            action: Some(ROOT_BACKUP_ACTION.into()),
            ..Default::default()
        };
        let mut found = Vec::new();
        let mut after = 0;
        loop {
            let page = self.audit_show(&filter, after, 1000)?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            found.extend(page.into_iter().map(|e| e.draft.details));
        }
        Ok(found)
    }

    /// Rotates the governance root: a new root is made in the module beside the old one (backed
    /// up as `backup` says), the old root signs a handover to it with the next sequence, valid for
    /// `validity`; the handover, the new pinned root and the audit event `governance.root_rotate`
    /// commit in one transaction; then the old root is destroyed in the module, and the new root
    /// signs a new generation record (when the fleet has a current generation that is not
    /// compromised). Every later record is signed by the new root.
    pub fn rotate_root(
        &mut self,
        reason: &str,
        backup: &MasterBackup,
        validity: Duration,
    ) -> Result<RootRotation, Error> {
        self.require_governed("root rotation")?;
        if let MasterBackup::Shares {
            threshold,
            custodians,
            ..
        } = backup
        {
            backup::check_split(*threshold, custodians)?;
        }
        let old = self.live_root()?;
        let (not_before, not_after) = self.window(validity)?;
        let (sequence, number) = transact(self.store.as_mut(), |tx| {
            let sequence = meta_u64(tx, META_SEQUENCE)?.saturating_add(1);
            let number = meta_u64(tx, META_ROOT_NUMBER)?.max(1).saturating_add(1);
            Ok((sequence, number))
        })?;
        let number = u32::try_from(number)
            .map_err(|_| StoreError::Corrupt(format!("{META_ROOT_NUMBER}: above 2^32")))?;
        let fleet_id = self.config.fleet_id.clone();
        let new = make_root(
            self.module.get()?,
            &fleet_id,
            number,
            backup,
            Slot::Next,
            self.access.clock.now_ms(),
        )?;
        let new_kid = key_id(&new.public);
        let spec = HandoverSpec {
            fleet: fleet_id,
            not_before,
            not_after,
            sequence,
            new_key: new.public,
            new_kid: new_kid.to_vec(),
        };
        let module = self.module.get()?;
        let bytes = spec
            .encode_and_sign(&key_id(&old), &|m: &[u8]| module.sign(m))
            .map_err(issue_error)?;
        let backup_draft = self.draft(ROOT_BACKUP_ACTION, None, vec![], new.details.clone());
        let rotate_draft = self.draft(
            ROOT_ROTATE_ACTION,
            None,
            vec![],
            serde_json::json!({
                "sequence": sequence, "old_public_key": hex::encode(old),
                "old_kid": hex::encode(key_id(&old)), "new_public_key": hex::encode(new.public),
                "new_kid": hex::encode(new_kid), "root": number, "not_before": not_before,
                "not_after": not_after, "reason": reason,
            }),
        );
        let handover_hex = hex::encode(&bytes);
        transact(self.store.as_mut(), |tx| {
            if meta_u64(tx, META_SEQUENCE)?.saturating_add(1) != sequence {
                return Err(
                    StoreError::Busy("another record was published meanwhile".into()).into(),
                );
            }
            let mut handovers = handover_sequences(tx)?;
            handovers.push(sequence);
            let list = serde_json::to_string(&handovers)
                .map_err(|e| Error::invalid("handover list", e))?;
            tx.put_meta(META_SEQUENCE, &sequence.to_string())?;
            tx.put_meta(
                &format!("{}{sequence}", super::gov_store::META_HANDOVER),
                &handover_hex,
            )?;
            tx.put_meta(META_HANDOVERS, &list)?;
            tx.put_meta(META_ROOT, &hex::encode(new.public))?;
            tx.put_meta(META_ROOT_NUMBER, &number.to_string())?;
            tx.append_audit(backup_draft.clone())?;
            tx.append_audit(rotate_draft.clone())?;
            Ok(())
        })?;
        let details = new.details.clone();
        let new_public = new.public;
        new.keep();
        // The handover is recorded: the old root is destroyed now, then the live grants are
        // re-issued and a record published under the new root. Should this be interrupted, the
        // store pins the new root and the next command that signs (or exports) finishes it in
        // the same way (`Fleet::finish_rotation`).
        self.module.get()?.promote_signing_key()?;
        let reason = format!("root rotation: {reason}");
        let finished = self.finish_rotation(&reason)?;
        let (reissued_grants, mut record_sequence) = (finished.reissued, finished.published);
        if record_sequence.is_none() {
            record_sequence = self.publish_after_root_rotation(&reason)?;
        }
        Ok(RootRotation {
            old_public_key: old,
            new_public_key: new_public,
            new_kid,
            number,
            handover: Handover { sequence, bytes },
            record_sequence,
            reissued_grants,
            backup: details,
        })
    }

    fn publish_after_root_rotation(&mut self, reason: &str) -> Result<Option<u64>, Error> {
        let before = transact(self.store.as_mut(), |tx| meta_u64(tx, META_SEQUENCE))?;
        self.publish_if_governed(reason)?;
        let after = transact(self.store.as_mut(), |tx| meta_u64(tx, META_SEQUENCE))?;
        Ok((after > before).then_some(after))
    }

    /// Restores the governance root from custodian shares into this fleet's key module, which
    /// must have none. The rebuilt root must match its KCV and be the root the fleet pins;
    /// audit `governance.root_restore`.
    pub fn restore_root(
        &mut self,
        shares: &[Share],
        reason: &str,
    ) -> Result<RootRestoreReport, Error> {
        self.require_governed("restore the governance root")?;
        // The shares are checked first (kind, count, KCVs), so their errors come before the
        // fleet's refusals; the seed is dropped (zeroized) at once.
        drop(backup::combine_root(shares)?);
        let first = shares
            .first()
            .ok_or(backup::BackupError::NotEnough { have: 0, need: 1 })?
            .info()
            .clone();
        let fleet = transact(self.store.as_mut(), |tx| fleet_info(tx))?;
        if first.fleet != fleet.id {
            return Err(Error::SharesOfOtherFleet {
                origin: shares.first().map_or("", |s| s.origin()).to_owned(),
                shares_fleet: first.fleet.clone(),
                fleet: fleet.id,
                secret: backup::Secret::GovernanceRoot,
            });
        }
        let pinned = self.pinned_root()?.ok_or(Error::RootNotPinned)?;
        if self.module.get()?.signing_public_key()?.is_some() {
            return Err(Error::Module(crate::error::ModuleError::SigningKeyExists));
        }
        let report = restore::restore_root_into(self.module.get()?, shares, Some(&pinned))?;
        let draft = self.draft(
            ROOT_RESTORE_ACTION,
            None,
            vec![],
            serde_json::json!({
                "root": report.root,
                "threshold": report.threshold,
                "shares_used": report.shares_used.iter()
                    .map(|(index, custodian)| serde_json::json!({"index": index, "custodian": custodian}))
                    .collect::<Vec<_>>(),
                "root_kcv": report.root_kcv,
                "public_key": report.public_key,
                "module": report.module,
                "reason": reason,
            }),
        );
        transact(self.store.as_mut(), |tx| {
            tx.append_audit(draft.clone())?;
            Ok(())
        })?;
        Ok(report)
    }
}
