//! Restoring from custodian shares into a key module: a master (proven by a probe derivation)
//! or the governance root (proven by its public key), into a fleet's module or a new soft key
//! file. Here the backup's shares ([`crate::backup`]) meet the key module ([`crate::module`]) and
//! the manager's [`Error`]; `backup` itself depends on neither of them.

use std::path::Path;

use age::secrecy::{ExposeSecret as _, SecretString};
use fleetkey_core::MasterKey;
use fleetkey_core::derive::{DeviceKeyInputs, Generation, Revision, Serial, Usage};
use serde::Serialize;
use subtle::ConstantTimeEq as _;

use crate::backup::{BackupError, Kcv, Share, check_set, combine, combine_root};
use crate::error::{Error, ModuleError, ModuleFault};
use crate::governance::key_id;
use crate::module::KeyModule;
use crate::module::soft::{SoftModule, WorkFactor};

/// The serial of the probe derivation that proves a module holds a restored master.
const PROBE_SERIAL: &[u8] = b"fleetkey restore probe";

/// What a restore did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RestoreReport {
    /// The fleet the shares belong to.
    pub fleet: String,
    /// The restored generation.
    pub generation: u32,
    /// The whole master's KCV, matched by the rebuilt master.
    pub master_kcv: Kcv,
    /// M.
    pub threshold: u8,
    /// The shares used: (index, custodian).
    pub shares_used: Vec<(u8, String)>,
    /// The module it went into (`soft`, `pkcs11`).
    pub module: &'static str,
}

/// Rebuilds a master from shares and imports it into a key module, which must not hold that
/// generation yet. Proves the import: a probe device key derived by the module must equal the
/// one derived from the rebuilt master (compared in constant time, then zeroized); on a
/// mismatch the imported master is destroyed again.
///
/// `generation`, when given, must be the shares' generation.
pub fn restore_into(
    module: &dyn KeyModule,
    shares: &[Share],
    generation: Option<u32>,
) -> Result<RestoreReport, Error> {
    let master = combine(shares)?;
    let info = check_set(shares)?;
    if let Some(g) = generation.filter(|g| *g != info.generation) {
        return Err(Error::invalid(
            "--generation",
            format_args!("{g}, but the shares are of generation {}", info.generation),
        ));
    }
    let g = Generation(info.generation);
    if module.masters()?.contains(&g) {
        return Err(ModuleError::MasterExists(info.generation).into());
    }
    module.import_master(g, &master)?;
    if !module_holds(module, g, &master)? {
        let _ = module.destroy_master(g);
        return Err(Error::ModuleFaulty(ModuleFault::ImportedMaster(
            info.generation,
        )));
    }
    Ok(RestoreReport {
        fleet: info.fleet.clone(),
        generation: info.generation,
        master_kcv: info.master_kcv,
        threshold: info.threshold,
        shares_used: shares
            .iter()
            .map(|s| (s.info().index, s.info().custodian.clone()))
            .collect(),
        module: module.kind(),
    })
}

/// Restores a master from shares into a new soft key file at `path` (refused when it exists),
/// encrypted under `passphrase`. On failure the new file is removed. The file holds only the
/// master: no KEK and no governance root.
pub fn restore_into_new_key_file(
    path: &Path,
    passphrase: &SecretString,
    work_factor: WorkFactor,
    shares: &[Share],
    generation: Option<u32>,
) -> Result<RestoreReport, Error> {
    // Check the shares before creating anything.
    drop(combine(shares)?);
    let module = SoftModule::create_with(path, passphrase.expose_secret(), work_factor)?;
    let result = restore_into(&module, shares, generation);
    drop(module);
    if result.is_err() {
        let _ = std::fs::remove_file(path);
        let mut lock = path.as_os_str().to_owned();
        lock.push(".lock");
        let _ = std::fs::remove_file(lock);
    }
    result
}

/// What a governance root restore did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RootRestoreReport {
    /// The fleet the shares belong to.
    pub fleet: String,
    /// The root's number.
    pub root: u32,
    /// The root's KCV, matched by the rebuilt seed.
    pub root_kcv: Kcv,
    /// The root's Ed25519 public key, hex (what devices pin).
    pub public_key: String,
    /// The root's key id, hex.
    pub kid: String,
    /// M.
    pub threshold: u8,
    /// The shares used: (index, custodian).
    pub shares_used: Vec<(u8, String)>,
    /// The module it went into (`soft`, `pkcs11`).
    pub module: &'static str,
}

/// Rebuilds the governance root from its shares and imports it into a key module, which must
/// have no root. With `pinned` (the public key devices pin) the rebuilt root must be that one
/// ([`BackupError::RootMismatch`]), checked before anything enters the module. The import is
/// proven: the module's root public key must be the seed's.
pub fn restore_root_into(
    module: &dyn KeyModule,
    shares: &[Share],
    pinned: Option<&[u8; 32]>,
) -> Result<RootRestoreReport, Error> {
    let seed = combine_root(shares)?;
    let info = check_set(shares)?;
    let public = seed.public_key();
    if let Some(pinned) = pinned.filter(|p| **p != public) {
        return Err(BackupError::RootMismatch {
            found: hex::encode(public),
            pinned: hex::encode(pinned),
        }
        .into());
    }
    let imported = module.import_signing_key(&seed)?;
    if imported != public || module.signing_public_key()? != Some(public) {
        return Err(Error::ModuleFaulty(ModuleFault::ImportedRoot));
    }
    Ok(RootRestoreReport {
        fleet: info.fleet.clone(),
        root: info.generation,
        root_kcv: info.master_kcv,
        public_key: hex::encode(public),
        kid: hex::encode(key_id(&public)),
        threshold: info.threshold,
        shares_used: shares
            .iter()
            .map(|s| (s.info().index, s.info().custodian.clone()))
            .collect(),
        module: module.kind(),
    })
}

/// Restores the governance root from shares into the soft key file at `path`: opened when it
/// exists (e.g. made by [`restore_into_new_key_file`] for the masters), created otherwise (and
/// removed again on failure). `pinned`, when given, is the public key the root must have.
pub fn restore_root_into_key_file(
    path: &Path,
    passphrase: &SecretString,
    work_factor: WorkFactor,
    shares: &[Share],
    pinned: Option<&[u8; 32]>,
) -> Result<RootRestoreReport, Error> {
    // Check the shares and the pinned key before opening or creating anything.
    let seed = combine_root(shares)?;
    if let Some(pinned) = pinned.filter(|p| **p != seed.public_key()) {
        return Err(BackupError::RootMismatch {
            found: hex::encode(seed.public_key()),
            pinned: hex::encode(pinned),
        }
        .into());
    }
    drop(seed);
    let created = !path.exists();
    let module = if created {
        SoftModule::create_with(path, passphrase.expose_secret(), work_factor)?
    } else {
        SoftModule::open(path, passphrase.expose_secret())?
    };
    let result = restore_root_into(&module, shares, pinned);
    drop(module);
    if result.is_err() && created {
        let _ = std::fs::remove_file(path);
        let mut lock = path.as_os_str().to_owned();
        lock.push(".lock");
        let _ = std::fs::remove_file(lock);
    }
    result
}

/// Whether the module's master of `generation` is `master`: one probe derivation on each side,
/// compared in constant time.
pub fn module_holds(
    module: &dyn KeyModule,
    generation: Generation,
    master: &MasterKey,
) -> Result<bool, Error> {
    let serial = Serial::new(PROBE_SERIAL).map_err(|e| Error::invalid("probe serial", e))?;
    let inputs = DeviceKeyInputs {
        usage: Usage::RollSeed,
        generation,
        revision: Revision::ZERO,
        serial,
    };
    let in_module = module.derive(&inputs)?;
    let here = fleetkey_core::derive::derive(master, &inputs);
    Ok(in_module.expose_secret().ct_eq(here.expose_secret()).into())
}
