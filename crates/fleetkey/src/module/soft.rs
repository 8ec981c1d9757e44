//! The software key module: masters, KEK and governance root in one passphrase-encrypted file,
//! held in zeroizing memory while open. The embedded default for development and small fleets.
//!
//! - **File**: an age v1 file encrypted to an scrypt passphrase recipient, so the standard `age`
//!   tool can decrypt it; inside, a versioned JSON document (see `soft/keyfile.rs`).
//! - **Passphrase cost**: the scrypt work factor (log2 N) is fixed when the file is created:
//!   [`WorkFactor::AgeDefault`] lets age pick the factor that takes about one second on this
//!   machine (at least 2^18 on a modern CPU in a release build); [`WorkFactor::Log2`] fixes it,
//!   for tests and very small machines. Opening a file costs one scrypt at the file's factor, and
//!   every change re-encrypts at the same factor.
//! - **Changes** are durable and atomic when they return, and the previous ciphertext is
//!   overwritten and unlinked (see `soft/durable.rs`). Changes are serialised within a process
//!   and, with a lock file, between processes; a change refuses to overwrite a key file that
//!   another process changed since this one read it.
//! - **Memory**: masters as [`MasterKey`] with their precomputed [`Deriver`], the KEK as a
//!   zeroizing array, the governance root (and, during a root rotation, the staged next root)
//!   as an `ed25519_dalek::SigningKey`; all zeroized on drop, so destroying a master, promoting
//!   a staged root over the old one, or dropping the module clears them. A bulk deriver holds a
//!   copy of its generation's `Deriver` and drops it at its first call after the destroy.
//! - **Passphrase**: copied into age's zeroizing `SecretString` for re-encryption; it appears
//!   in no error and no `Debug` output.
//! - **Known gap**: age's encrypting writer copies the plaintext document into a 64 KiB chunk
//!   buffer that it frees without zeroizing (age 0.12 `StreamWriter`); decryption is clean.

mod durable;
mod keyfile;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{
    Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError,
};

use aes_kw::KeyInit as _;
use ed25519_dalek::{Signer as _, SigningKey};
use fleetkey_core::derive::{DeviceKey, DeviceKeyInputs, Generation};
use fleetkey_core::{Deriver, MasterKey};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use age::secrecy::SecretString;

use self::durable::Paths;
use super::{BulkDeriver, KeyModule, SigningSeed};
use crate::error::ModuleError;
use crate::model::WrappedKey;

/// The scrypt work factor (log2 N) of a new key file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkFactor {
    /// What age picks: about one second of scrypt on this machine.
    #[default]
    AgeDefault,
    /// A fixed log2 N, from [`WorkFactor::MIN`] to [`WorkFactor::MAX`]. Below age's default
    /// this makes the passphrase cheaper to guess: for tests and very small machines only.
    Log2(u8),
}

impl WorkFactor {
    /// The smallest accepted log2 N.
    pub const MIN: u8 = 1;
    /// The largest accepted log2 N (2^22: 4 GiB of scrypt memory).
    pub const MAX: u8 = 22;
}

/// The software key module. See the [module documentation](self).
pub struct SoftModule {
    paths: Paths,
    /// The passphrase and the work factor, to re-encrypt on every change.
    recipient: age::scrypt::Recipient,
    work_factor: u8,
    /// Serialises changes; holds the SHA-256 of the key file as last read or written.
    update: Mutex<[u8; 32]>,
    state: RwLock<State>,
}

#[derive(Clone, Default)]
struct State {
    masters: BTreeMap<u32, Slot>,
    kek: Option<Zeroizing<[u8; 32]>>,
    signing: Option<SigningKey>,
    /// The next root, staged during a root rotation.
    next_signing: Option<SigningKey>,
}

#[derive(Clone)]
struct Slot {
    master: MasterKey,
    deriver: Deriver,
    /// Cleared when the master is destroyed, so that bulk derivers taken before stop.
    alive: Arc<AtomicBool>,
}

impl Slot {
    fn new(master: MasterKey) -> Self {
        let deriver = Deriver::new(&master);
        Self {
            master,
            deriver,
            alive: Arc::new(AtomicBool::new(true)),
        }
    }
}

/// The result of a change: whether the key file must be rewritten.
enum Change<R> {
    Keep(R),
    Write(R),
}

impl SoftModule {
    /// Creates a key file at `path` with age's default work factor; refuses when it exists
    /// ([`ModuleError::Io`] with `AlreadyExists`).
    pub fn create(path: impl AsRef<Path>, passphrase: &str) -> Result<Self, ModuleError> {
        Self::create_with(path, passphrase, WorkFactor::AgeDefault)
    }

    /// Creates a key file at `path` with the given work factor; refuses when it exists.
    pub fn create_with(
        path: impl AsRef<Path>,
        passphrase: &str,
        work_factor: WorkFactor,
    ) -> Result<Self, ModuleError> {
        let paths = Paths::new(path.as_ref());
        let mut recipient = age::scrypt::Recipient::new(SecretString::from(passphrase));
        match work_factor {
            WorkFactor::AgeDefault => {}
            WorkFactor::Log2(log_n) if (WorkFactor::MIN..=WorkFactor::MAX).contains(&log_n) => {
                recipient.set_work_factor(log_n);
            }
            WorkFactor::Log2(_) => {
                return Err(ModuleError::Unsupported(
                    "an scrypt work factor outside 2^1..=2^22",
                ));
            }
        }
        let state = State::default();
        let ciphertext = keyfile::seal(&recipient, &encode(&state))?;
        let work_factor = keyfile::work_factor(&ciphertext).ok_or(ModuleError::Backend {
            operation: "age encrypt",
            detail: "no scrypt stanza written".into(),
        })?;
        {
            let _lock = durable::lock(&paths)?;
            durable::recover(&paths)?;
            durable::install_new(&paths, &ciphertext)?;
        }
        Ok(Self {
            paths,
            recipient,
            work_factor,
            update: Mutex::new(Sha256::digest(&ciphertext).into()),
            state: RwLock::new(state),
        })
    }

    /// Opens the key file at `path`. A wrong passphrase is [`ModuleError::Authentication`] (the
    /// file is unchanged); a damaged file is [`ModuleError::Corrupt`]; a missing one is
    /// [`ModuleError::Io`] naming the path. Finishes an update a crash interrupted first.
    pub fn open(path: impl AsRef<Path>, passphrase: &str) -> Result<Self, ModuleError> {
        let paths = Paths::new(path.as_ref());
        if !durable::exists(&paths.file)? && !durable::exists(&paths.aside)? {
            let source = std::io::Error::new(std::io::ErrorKind::NotFound, "no key file here");
            return Err(ModuleError::Io {
                path: paths.file,
                source,
            });
        }
        let ciphertext = {
            let _lock = durable::lock(&paths)?;
            durable::recover(&paths)?;
            durable::read(&paths)?
        };
        let plaintext = keyfile::unseal(&ciphertext, &SecretString::from(passphrase))?;
        let contents = keyfile::decode(&plaintext)?;
        drop(plaintext);
        let work_factor = keyfile::work_factor(&ciphertext)
            .filter(|f| (WorkFactor::MIN..=63).contains(f))
            .ok_or_else(|| {
                ModuleError::Corrupt("the key file's scrypt stanza has no work factor".into())
            })?;
        let mut recipient = age::scrypt::Recipient::new(SecretString::from(passphrase));
        recipient.set_work_factor(work_factor);
        let state = State {
            masters: contents
                .masters
                .into_iter()
                .map(|(g, m)| (g, Slot::new(m)))
                .collect(),
            kek: contents.kek,
            signing: contents
                .signing_seed
                .map(|seed| SigningKey::from_bytes(&seed)),
            next_signing: contents
                .next_signing_seed
                .map(|seed| SigningKey::from_bytes(&seed)),
        };
        Ok(Self {
            paths,
            recipient,
            work_factor,
            update: Mutex::new(Sha256::digest(&ciphertext).into()),
            state: RwLock::new(state),
        })
    }

    /// The key file.
    pub fn path(&self) -> &Path {
        &self.paths.file
    }

    /// The key file's scrypt work factor, log2 N.
    pub fn work_factor(&self) -> u8 {
        self.work_factor
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // The state is replaced whole after the file is written, so a panic elsewhere cannot
        // leave it half changed: a poisoned lock is safe to use.
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_update(&self) -> MutexGuard<'_, [u8; 32]> {
        self.update.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies a change to a copy of the state, writes the key file, then swaps the copy in.
    /// Readers are not blocked while scrypt runs; changes are serialised.
    ///
    /// Once the new file is in place the change is in effect, in memory too. If wiping the
    /// previous version fails after that, the error names the file left behind (still under
    /// the passphrase); the next change or open wipes it.
    fn change<R>(
        &self,
        f: impl FnOnce(&mut State) -> Result<Change<R>, ModuleError>,
    ) -> Result<R, ModuleError> {
        let mut digest = self.lock_update();
        let mut next = self.read().clone();
        let result = match f(&mut next)? {
            Change::Keep(result) => return Ok(result),
            Change::Write(result) => result,
        };
        let ciphertext = keyfile::seal(&self.recipient, &encode(&next))?;
        let _lock = durable::lock(&self.paths)?;
        durable::recover(&self.paths)?;
        let on_disk: [u8; 32] = Sha256::digest(durable::read(&self.paths)?).into();
        if on_disk != *digest {
            return Err(ModuleError::Backend {
                operation: "key file update",
                detail: format!(
                    "{} was changed by another process since it was opened; open it again",
                    self.paths.file.display()
                ),
            });
        }
        durable::commit(&self.paths, &ciphertext)?;
        *digest = Sha256::digest(&ciphertext).into();
        let previous = std::mem::replace(&mut *self.write(), next);
        let current = self.read();
        for (generation, slot) in &previous.masters {
            if !current.masters.contains_key(generation) {
                slot.alive.store(false, Ordering::Release);
            }
        }
        drop(current);
        drop(previous);
        durable::wipe_aside(&self.paths)?;
        Ok(result)
    }

    fn kwp(&self) -> Result<aes_kw::KwpAes256, ModuleError> {
        let state = self.read();
        let kek = state.kek.as_ref().ok_or(ModuleError::NoKek)?;
        Ok(aes_kw::KwpAes256::new(&(**kek).into()))
    }
}

fn encode(state: &State) -> Zeroizing<Vec<u8>> {
    keyfile::encode(&keyfile::ContentsRef {
        masters: state
            .masters
            .iter()
            .map(|(g, slot)| (*g, slot.master.expose_secret()))
            .collect(),
        kek: state.kek.as_deref(),
        signing_seed: state.signing.as_ref().map(SigningKey::as_bytes),
        next_signing_seed: state.next_signing.as_ref().map(SigningKey::as_bytes),
    })
}

fn random_32() -> Result<Zeroizing<[u8; 32]>, ModuleError> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut bytes[..]).map_err(|e| ModuleError::Backend {
        operation: "OS random number generator",
        detail: e.to_string(),
    })?;
    Ok(bytes)
}

/// A bulk deriver is of one generation: the inputs must be of it.
fn check_generation(
    generation: Generation,
    inputs: &DeviceKeyInputs<'_>,
) -> Result<(), ModuleError> {
    if inputs.generation == generation {
        Ok(())
    } else {
        Err(ModuleError::Unsupported(
            "deriving with the master of one generation for inputs of another",
        ))
    }
}

impl fmt::Debug for SoftModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("SoftModule");
        s.field("path", &self.paths.file);
        match self.state.try_read() {
            Ok(state) => s.field("generations", &state.masters.keys().collect::<Vec<_>>()),
            Err(TryLockError::Poisoned(state)) => s.field(
                "generations",
                &state.into_inner().masters.keys().collect::<Vec<_>>(),
            ),
            Err(TryLockError::WouldBlock) => s.field("generations", &"<being changed>"),
        };
        s.finish_non_exhaustive()
    }
}

impl KeyModule for SoftModule {
    fn kind(&self) -> &'static str {
        "soft"
    }

    fn create_master(&self, generation: Generation) -> Result<(), ModuleError> {
        if self.read().masters.contains_key(&generation.0) {
            return Err(ModuleError::MasterExists(generation.0));
        }
        let master = MasterKey::from_bytes(*random_32()?);
        self.import_master(generation, &master)
    }

    fn import_master(&self, generation: Generation, master: &MasterKey) -> Result<(), ModuleError> {
        self.change(|state| match state.masters.entry(generation.0) {
            std::collections::btree_map::Entry::Occupied(_) => {
                Err(ModuleError::MasterExists(generation.0))
            }
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(Slot::new(master.clone()));
                Ok(Change::Write(()))
            }
        })
    }

    fn masters(&self) -> Result<Vec<Generation>, ModuleError> {
        Ok(self.read().masters.keys().map(|g| Generation(*g)).collect())
    }

    fn derive(&self, inputs: &DeviceKeyInputs<'_>) -> Result<DeviceKey, ModuleError> {
        let generation = inputs.generation;
        let state = self.read();
        let slot = state
            .masters
            .get(&generation.0)
            .ok_or(ModuleError::NoMaster(generation.0))?;
        Ok(slot.deriver.derive(inputs))
    }

    fn bulk_deriver(
        &self,
        generation: Generation,
    ) -> Result<Box<dyn BulkDeriver + '_>, ModuleError> {
        let state = self.read();
        let slot = state
            .masters
            .get(&generation.0)
            .ok_or(ModuleError::NoMaster(generation.0))?;
        Ok(Box::new(SoftBulkDeriver {
            generation,
            deriver: Some(slot.deriver.clone()),
            alive: Arc::clone(&slot.alive),
        }))
    }

    fn destroy_master(&self, generation: Generation) -> Result<(), ModuleError> {
        self.change(|state| match state.masters.remove(&generation.0) {
            Some(_destroyed) => Ok(Change::Write(())),
            None => Err(ModuleError::NoMaster(generation.0)),
        })
    }

    fn ensure_kek(&self) -> Result<(), ModuleError> {
        self.change(|state| {
            if state.kek.is_some() {
                return Ok(Change::Keep(()));
            }
            state.kek = Some(random_32()?);
            Ok(Change::Write(()))
        })
    }

    fn wrap(&self, key: &[u8]) -> Result<WrappedKey, ModuleError> {
        if key.is_empty() {
            return Err(ModuleError::Unsupported(
                "wrapping an empty key (RFC 5649 needs at least one byte)",
            ));
        }
        let kwp = self.kwp()?;
        let mut out = vec![0u8; key.len().div_ceil(8) * 8 + 8];
        let len = kwp
            .wrap_key(key, &mut out)
            .map_err(|e| ModuleError::Backend {
                operation: "AES-KWP wrap",
                detail: e.to_string(),
            })?
            .len();
        out.truncate(len);
        Ok(WrappedKey(out))
    }

    fn unwrap(&self, wrapped: &WrappedKey) -> Result<Zeroizing<Vec<u8>>, ModuleError> {
        let kwp = self.kwp()?;
        let data = &wrapped.0;
        // RFC 5649 section 4.2: at least two semiblocks, a whole number of them.
        if data.len() < 16 || !data.len().is_multiple_of(8) {
            return Err(ModuleError::Unwrap);
        }
        let mut out = Zeroizing::new(vec![0u8; data.len() - 8]);
        let len = kwp
            .unwrap_key(data, &mut out)
            .map_err(|_| ModuleError::Unwrap)?
            .len();
        out.truncate(len);
        Ok(out)
    }

    fn new_wrapped_root(&self) -> Result<WrappedKey, ModuleError> {
        let root = random_32()?;
        self.wrap(&root[..])
    }

    fn derive_with_root(
        &self,
        root: &WrappedKey,
        inputs: &DeviceKeyInputs<'_>,
    ) -> Result<DeviceKey, ModuleError> {
        let bytes = self.unwrap(root)?;
        // A blob that unwraps to another length is not a device root.
        let root = MasterKey::from_slice(&bytes).ok_or(ModuleError::Unwrap)?;
        Ok(fleetkey_core::derive::derive(&root, inputs))
    }

    fn ensure_signing_key(&self) -> Result<[u8; 32], ModuleError> {
        self.change(|state| {
            if let Some(key) = &state.signing {
                return Ok(Change::Keep(key.verifying_key().to_bytes()));
            }
            let key = SigningKey::from_bytes(&*random_32()?);
            let public = key.verifying_key().to_bytes();
            state.signing = Some(key);
            Ok(Change::Write(public))
        })
    }

    fn signing_public_key(&self) -> Result<Option<[u8; 32]>, ModuleError> {
        Ok(self
            .read()
            .signing
            .as_ref()
            .map(|key| key.verifying_key().to_bytes()))
    }

    fn sign(&self, message: &[u8]) -> Result<[u8; 64], ModuleError> {
        let state = self.read();
        let key = state.signing.as_ref().ok_or(ModuleError::NoSigningKey)?;
        Ok(key.sign(message).to_bytes())
    }

    fn import_signing_key(&self, seed: &SigningSeed) -> Result<[u8; 32], ModuleError> {
        self.change(|state| {
            if state.signing.is_some() {
                return Err(ModuleError::SigningKeyExists);
            }
            let key = SigningKey::from_bytes(seed.expose_secret());
            let public = key.verifying_key().to_bytes();
            state.signing = Some(key);
            Ok(Change::Write(public))
        })
    }

    fn stage_signing_key(&self, seed: Option<&SigningSeed>) -> Result<[u8; 32], ModuleError> {
        let key = match seed {
            Some(seed) => SigningKey::from_bytes(seed.expose_secret()),
            None => SigningKey::from_bytes(&*random_32()?),
        };
        self.change(|state| {
            if state.signing.is_none() {
                return Err(ModuleError::NoSigningKey);
            }
            let public = key.verifying_key().to_bytes();
            // A root staged before is dropped here (zeroized) and gone from the file.
            state.next_signing = Some(key);
            Ok(Change::Write(public))
        })
    }

    fn staged_signing_public_key(&self) -> Result<Option<[u8; 32]>, ModuleError> {
        Ok(self
            .read()
            .next_signing
            .as_ref()
            .map(|key| key.verifying_key().to_bytes()))
    }

    fn promote_signing_key(&self) -> Result<[u8; 32], ModuleError> {
        self.change(|state| {
            let next = state
                .next_signing
                .take()
                .ok_or(ModuleError::NoStagedSigningKey)?;
            let public = next.verifying_key().to_bytes();
            // The old root is dropped (zeroized) with the state it was in, and the key file
            // version holding it is overwritten and unlinked (`durable::wipe_aside`).
            state.signing = Some(next);
            Ok(Change::Write(public))
        })
    }
}

/// A generation's [`Deriver`], copied out of the module so that bulk work holds no lock.
/// It stops (and drops its copy) once the master is destroyed.
struct SoftBulkDeriver {
    generation: Generation,
    deriver: Option<Deriver>,
    alive: Arc<AtomicBool>,
}

impl BulkDeriver for SoftBulkDeriver {
    fn derive_into(
        &mut self,
        inputs: &DeviceKeyInputs<'_>,
        out: &mut [u8],
    ) -> Result<(), ModuleError> {
        if !self.alive.load(Ordering::Acquire) {
            self.deriver = None;
        }
        let deriver = self
            .deriver
            .as_ref()
            .ok_or(ModuleError::NoMaster(self.generation.0))?;
        check_generation(self.generation, inputs)?;
        if out.len() != inputs.usage.key_len() {
            return Err(ModuleError::Unsupported(
                "an output buffer of another length than the usage's key",
            ));
        }
        deriver.derive_into(inputs, out);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
