//! The master key ceremony: a new generation's master is drawn in host memory from the OS RNG,
//! split into custodian shares, the share files written, and only then imported into the key
//! module. Without a backup (explicitly declined) the master is created inside the module and
//! never leaves it. Restoring a lost master from shares, proven by a probe derivation.

use fleetkey_core::Generation;

use super::{Fleet, fleet_info};
use crate::audit::AuditFilter;
use crate::backup::{self, MasterBackup, Share, WrittenShares};
use crate::error::Error;
use crate::lifecycle::State;
use crate::model::UnixMillis;
use crate::module::KeyModule;
use crate::restore::{self, RestoreReport};
use crate::store::transact;

/// The audit action recording how a generation's master was backed up.
pub const BACKUP_ACTION: &str = "master.backup";
/// The audit action recording a restore from shares.
pub const RESTORE_ACTION: &str = "master.restore";

/// A master created in a module, with its backup's share files (removed on drop unless kept)
/// and the public audit details.
pub(crate) struct NewMaster {
    pub(crate) written: Option<WrittenShares>,
    pub(crate) details: serde_json::Value,
}

impl NewMaster {
    /// Keeps the share files: the master is recorded and in use.
    pub(crate) fn keep(self) {
        if let Some(written) = self.written {
            written.keep();
        }
    }
}

/// Creates `generation`'s master in `module`, backed up as `backup` says.
pub(crate) fn create_master(
    module: &dyn KeyModule,
    fleet: &str,
    generation: u32,
    backup: &MasterBackup,
    now: UnixMillis,
) -> Result<NewMaster, Error> {
    match backup {
        MasterBackup::NoBackup => {
            module.create_master(Generation(generation))?;
            Ok(NewMaster {
                written: None,
                details: serde_json::json!({"method": "none"}),
            })
        }
        MasterBackup::Shares {
            threshold,
            custodians,
            dir,
        } => {
            backup::check_split(*threshold, custodians)?;
            let master = backup::random_master()?;
            let shares = backup::split(&master, fleet, generation, *threshold, custodians, now)?;
            let written = backup::write_shares(dir, &shares)?;
            drop(shares);
            let files = written.file_names();
            // The share files are on disk before the master enters the module; if the import
            // fails, dropping `written` removes them.
            module.import_master(Generation(generation), &master)?;
            Ok(NewMaster {
                written: Some(written),
                details: serde_json::json!({
                    "method": "shares",
                    "threshold": threshold,
                    "count": custodians.len(),
                    "custodians": custodians,
                    "master_kcv": backup::master_kcv(&master),
                    "files": files,
                }),
            })
        }
    }
}

impl Fleet {
    /// The backup records of a generation's master (audit events `master.backup`, newest last).
    pub fn master_backups(&mut self, generation: u32) -> Result<Vec<serde_json::Value>, Error> {
        let filter = AuditFilter {
            action: Some(BACKUP_ACTION.into()),
            ..Default::default()
        };
        let mut found = Vec::new();
        let mut after = 0;
        loop {
            let page = self.audit_show(&filter, after, 1000)?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            found.extend(
                page.into_iter()
                    .filter(|e| e.draft.generation == Some(generation))
                    .map(|e| e.draft.details),
            );
        }
        Ok(found)
    }

    /// Restores a generation's master from custodian shares into this fleet's key module, which
    /// must lack it. The shares must be of this fleet and of a generation the store knows and
    /// has not destroyed; the import is proven by a probe derivation and recorded in the audit.
    pub fn restore_master(
        &mut self,
        shares: &[Share],
        generation: Option<u32>,
        reason: &str,
    ) -> Result<RestoreReport, Error> {
        self.require_master_scheme("restore a master")?;
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
                secret: backup::Secret::Master,
            });
        }
        let record = transact(self.store.as_mut(), |tx| {
            Ok(tx.generation(first.generation)?)
        })?
        .ok_or(Error::NoSuchGeneration(first.generation))?;
        if matches!(record.state, State::Destroyed | State::DestroyedCompromised) {
            return Err(Error::MasterDestroyed {
                generation: first.generation,
                state: record.state,
            });
        }
        let report = restore::restore_into(self.module.get()?, shares, generation)?;
        let draft = self.draft(
            RESTORE_ACTION,
            Some(report.generation),
            vec![],
            serde_json::json!({
                "threshold": report.threshold,
                "shares_used": report.shares_used.iter()
                    .map(|(index, custodian)| serde_json::json!({"index": index, "custodian": custodian}))
                    .collect::<Vec<_>>(),
                "master_kcv": report.master_kcv,
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

    fn require_master_scheme(&self, what: &'static str) -> Result<(), Error> {
        if self.config.scheme.derives_from_master() {
            Ok(())
        } else {
            Err(Error::NoMasterGenerations {
                operation: what,
                scheme: self.config.scheme,
            })
        }
    }
}
