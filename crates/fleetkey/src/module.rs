//! The key module: where the masters, the stored scheme's key-encryption key (KEK) and the
//! governance root live. A master never leaves a module through this trait.
//!
//! Implementations: [`soft`] (a passphrase-encrypted file, the embedded default) and `pkcs11`
//! (any PKCS#11 token; cargo feature `pkcs11`). Both pass the same conformance suite (`crates/fleetkey/tests/conformance/module.rs`).

use fleetkey_core::MasterKey;
use fleetkey_core::derive::{DeviceKey, DeviceKeyInputs, Generation};

use crate::error::ModuleError;
use crate::model::WrappedKey;

/// The governance root's seed is defined with the governance records
/// ([`crate::governance::SigningSeed`]), below both this trait and the backup that splits it;
/// drawing one is here, where a failure of the OS random number generator is a
/// [`ModuleError`] as for the module's own draws.
pub use crate::governance::SigningSeed;

impl SigningSeed {
    /// A fresh seed from the OS random number generator.
    pub fn random() -> Result<Self, ModuleError> {
        let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut bytes[..]).map_err(|e| ModuleError::Backend {
            operation: "OS random number generator",
            detail: e.to_string(),
        })?;
        Ok(Self::from_bytes(bytes))
    }
}

#[cfg(feature = "pkcs11")]
pub mod pkcs11;
pub mod soft;

/// Derives many device keys of one generation, for bulk work: the master's state is prepared once
/// (soft: precomputed HMAC pads; PKCS#11: one session and object handle per worker).
pub trait BulkDeriver: Send {
    /// Derives one key into `out`, which must be `inputs.usage.key_len()` bytes.
    fn derive_into(
        &mut self,
        inputs: &DeviceKeyInputs<'_>,
        out: &mut [u8],
    ) -> Result<(), ModuleError>;
}

/// A module holding masters by generation, a KEK and an Ed25519 signing root.
///
/// Methods take `&self`: a module is shared by threads (and service workers) and serialises what
/// it must internally. Every method that changes the module is durable when it returns.
pub trait KeyModule: Send + Sync {
    /// A short name: `soft`, `pkcs11`.
    fn kind(&self) -> &'static str;

    /// Generates a random master for `generation` inside the module.
    fn create_master(&self, generation: Generation) -> Result<(), ModuleError>;

    /// Imports a master (from a key ceremony or a backup restore).
    fn import_master(&self, generation: Generation, master: &MasterKey) -> Result<(), ModuleError>;

    /// The generations that have a master, ascending.
    fn masters(&self) -> Result<Vec<Generation>, ModuleError>;

    /// Derives one device key from the master of `inputs.generation` (derivation v1).
    fn derive(&self, inputs: &DeviceKeyInputs<'_>) -> Result<DeviceKey, ModuleError>;

    /// A deriver for many keys of one generation.
    fn bulk_deriver(
        &self,
        generation: Generation,
    ) -> Result<Box<dyn BulkDeriver + '_>, ModuleError>;

    /// Destroys the generation's master (zeroized; the module object destroyed).
    fn destroy_master(&self, generation: Generation) -> Result<(), ModuleError>;

    /// Creates the KEK if the module has none; idempotent.
    fn ensure_kek(&self) -> Result<(), ModuleError>;

    /// Wraps key bytes under the KEK (AES-256 key wrap with padding, RFC 5649).
    fn wrap(&self, key: &[u8]) -> Result<WrappedKey, ModuleError>;

    /// Unwraps key bytes wrapped by [`KeyModule::wrap`]; the integrity check failing is
    /// [`ModuleError::Unwrap`].
    fn unwrap(&self, wrapped: &WrappedKey) -> Result<zeroize::Zeroizing<Vec<u8>>, ModuleError>;

    /// Stored scheme: a fresh random 32-byte device root, returned only wrapped under the KEK.
    fn new_wrapped_root(&self) -> Result<WrappedKey, ModuleError>;

    /// Stored scheme: derives a device key with a wrapped device root in the master's place.
    fn derive_with_root(
        &self,
        root: &WrappedKey,
        inputs: &DeviceKeyInputs<'_>,
    ) -> Result<DeviceKey, ModuleError>;

    /// Creates the Ed25519 governance root if the module has none and returns its public key;
    /// idempotent.
    fn ensure_signing_key(&self) -> Result<[u8; 32], ModuleError>;

    /// The governance root's public key, if it exists.
    fn signing_public_key(&self) -> Result<Option<[u8; 32]>, ModuleError>;

    /// Signs a message with the governance root (Ed25519, RFC 8032).
    fn sign(&self, message: &[u8]) -> Result<[u8; 64], ModuleError>;

    /// Imports the governance root from its seed (a root ceremony with custodian shares, or a
    /// restore from them) and returns its public key. Refused with
    /// [`ModuleError::SigningKeyExists`] when the module has a root. In a PKCS#11 token the
    /// private key is sensitive and not extractable, for signing only.
    fn import_signing_key(&self, seed: &SigningSeed) -> Result<[u8; 32], ModuleError>;

    /// Root rotation, step 1: puts the next root beside the current one, which still signs (the
    /// handover). From `seed`, or generated inside the module when `None`. A next root staged
    /// before (a rotation that did not finish) is destroyed first. Returns its public key.
    fn stage_signing_key(&self, seed: Option<&SigningSeed>) -> Result<[u8; 32], ModuleError>;

    /// The staged next root's public key, if one is staged.
    fn staged_signing_public_key(&self) -> Result<Option<[u8; 32]>, ModuleError>;

    /// Root rotation, step 2: destroys the current root (zeroized; the token objects destroyed)
    /// and makes the staged one the root; returns its public key. Without a staged root:
    /// [`ModuleError::NoStagedSigningKey`], nothing changed.
    fn promote_signing_key(&self) -> Result<[u8; 32], ModuleError>;
}
