//! The PKCS#11 key module: masters, the stored scheme's KEK and the governance root live in a
//! token (a hardware security module, or SoftHSM2 in tests) and never leave it.
//!
//! - **Token**: found by its label, never by slot number; the user PIN comes from
//!   [`PIN_ENV`] or a file ([`Pin`]), never from the command line. Every module of the process
//!   on the same library and label shares one login and one session pool (`token.rs`).
//! - **Namespace**: objects are labelled `fleetkey:<namespace>:<role>` (the namespace is the
//!   fleet id), with `CKA_ID` = `fleetkey:<namespace>:<role>` less the generation, so fleets can
//!   share a token. Roles: `master:<generation>`, `kek`, `governance`, `backup-kek`.
//! - **Masters**: `CKK_GENERIC_SECRET`, 32 bytes, token, private, sensitive, not extractable,
//!   `CKA_SIGN` true and every other usage false. Derivation v1 is one `C_Sign` with
//!   `CKM_SHA256_HMAC` over `info || 0x01`, truncated to the usage's length: HKDF-Expand for
//!   outputs up to 32 bytes (`masters.rs`). With [`Pkcs11Options::backup_by_trusted_wrap`] masters are instead
//!   extractable only wrapped under a key the security officer marked `CKA_TRUSTED`, for
//!   token-to-token backup (`backup.rs`: [`Pkcs11Module::export_master_wrapped`],
//!   [`Pkcs11Module::import_master_wrapped`], [`Pkcs11Module::import_backup_kek`]).
//! - **Bulk**: a [`BulkDeriver`] holds its own session and a session-object copy of the master
//!   (`C_CopyObject`, `CKA_TOKEN` false), about 3x faster than a token object in SoftHSM; the copy
//!   is destroyed with the deriver, or by [`KeyModule::destroy_master`] (`bulk.rs`).
//! - **KEK**: AES-256 token key, wrap and unwrap only, `CKM_AES_KEY_WRAP_PAD` (RFC 5649), so blobs
//!   are those the soft module makes under the same KEK value. Raw bytes are wrapped through a
//!   short-lived session object; a device root is generated, wrapped and, to derive, unwrapped
//!   into a sensitive session object without ever being in host memory (`kek.rs`).
//! - **Governance root**: Ed25519 (`CKM_EC_EDWARDS_KEY_PAIR_GEN`, `CKM_EDDSA`); a token without
//!   them answers [`ModuleError::Unsupported`]. A root from a ceremony with custodian shares is
//!   imported (`CKK_EC_EDWARDS`, private half sensitive, not extractable, sign only) and proven
//!   by one signature. During a root rotation the next root is staged under the role
//!   `governance-next`; promoting it destroys the old root's objects and relabels the new ones
//!   (`root.rs`).
//! - **Concurrency**: changes to token objects are serialised per token in the process (SoftHSM
//!   2.6.1 fails now and then with `CKR_GENERAL_ERROR` when threads create token objects at
//!   once); derivations run in parallel, one session per worker; two processes creating the same
//!   generation at once may both succeed, and the second creator then finds two objects and
//!   removes its own ([`ModuleError::MasterExists`]). Sessions come from the token's pool for
//!   one operation; token objects are created with retries (`session.rs`).
//! - **Templates**: every attribute template the module gives a token (`templates.rs`).

mod backup;
mod bulk;
mod kek;
mod masters;
mod root;
mod session;
mod templates;
mod token;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use cryptoki::object::{Attribute, ObjectHandle};
use fleetkey_core::MasterKey;
use fleetkey_core::derive::{DeviceKey, DeviceKeyInputs, Generation};
use zeroize::Zeroizing;

pub use self::backup::{
    BACKUP_KEK_GENERATION, BACKUP_KEK_ROLE, BackupKek, Pkcs11Options, WRAPPED_MASTER_LEN,
};
use self::masters::Master;
use self::root::{GOVERNANCE, GOVERNANCE_NEXT};
pub use self::token::{MAX_SECRET_FILE_LEN, PIN_ENV, Pin, SO_PIN_ENV};
use self::token::{Token, backend, lock};
use super::{BulkDeriver, KeyModule, SigningSeed};
use crate::error::ModuleError;
use crate::model::WrappedKey;
/// The PKCS#11 binding this module is built on, for callers that inspect a token themselves.
pub use cryptoki;

/// The PKCS#11 key module. See the [module documentation](self).
pub struct Pkcs11Module {
    token: Arc<Token>,
    namespace: String,
    options: Pkcs11Options,
    /// Masters seen by this module: handle, liveness and session copies.
    masters: Mutex<BTreeMap<u32, Arc<Master>>>,
}

impl Pkcs11Module {
    /// Opens the token labelled `token_label` of the PKCS#11 library at `library`, logged in
    /// with `pin`, for the fleet `namespace`.
    ///
    /// A wrong PIN is [`ModuleError::Authentication`]; a missing token is
    /// [`ModuleError::Backend`] naming the label and the labels present.
    pub fn open(
        library: &Path,
        token_label: &str,
        pin: &Pin,
        namespace: &str,
    ) -> Result<Self, ModuleError> {
        if namespace.is_empty()
            || namespace.len() > 64
            || namespace.chars().any(|c| c == ':' || c.is_control())
        {
            return Err(ModuleError::Unsupported(
                "a namespace that is empty, longer than 64 bytes, or holds ':' or a control character",
            ));
        }
        let token = Token::open(library, token_label, pin)?;
        Ok(Pkcs11Module {
            token,
            namespace: namespace.to_owned(),
            options: Pkcs11Options::default(),
            masters: Mutex::new(BTreeMap::new()),
        })
    }

    /// The module with `options` (token-to-token backup: see [`Pkcs11Options`]); they apply
    /// to the masters it creates or imports from now on.
    #[must_use]
    pub fn with_options(mut self, options: Pkcs11Options) -> Self {
        self.options = options;
        self
    }

    /// The module's options.
    pub fn options(&self) -> Pkcs11Options {
        self.options
    }

    /// Opens the module a fleet configuration names: the PIN from `pin_file` when given, else
    /// from [`PIN_ENV`].
    pub fn open_configured(
        library: &Path,
        token_label: &str,
        pin_file: Option<&Path>,
        namespace: &str,
    ) -> Result<Self, ModuleError> {
        let pin = Pin::from_file_or_env(pin_file)?;
        Self::open(library, token_label, &pin, namespace)
    }

    /// Whether the token holds no object of this namespace (no master, KEK or governance root).
    pub fn is_empty(&self) -> Result<bool, ModuleError> {
        Ok(self.namespace_objects()?.is_empty())
    }

    /// Destroys every token object of this namespace: for undoing a fleet creation that failed.
    pub fn destroy_namespace(&self) -> Result<(), ModuleError> {
        let _change = lock(&self.token.changes);
        let session = self.session()?;
        for handle in self.namespace_objects()? {
            session
                .get()
                .destroy_object(handle)
                .map_err(backend("C_DestroyObject"))?;
        }
        for (_, master) in std::mem::take(&mut *lock(&self.masters)) {
            master.alive.store(false, Ordering::Release);
        }
        Ok(())
    }

    fn namespace_objects(&self) -> Result<Vec<ObjectHandle>, ModuleError> {
        let session = self.session()?;
        let mut found = Vec::new();
        for role in ["master", "kek", GOVERNANCE, GOVERNANCE_NEXT] {
            found.extend(self.find(
                session.get(),
                &[Attribute::Token(true), Attribute::Id(self.id(role))],
            )?);
        }
        Ok(found)
    }

    /// The token's label.
    pub fn token_label(&self) -> &str {
        &self.token.label
    }

    /// The namespace (fleet id) of this module's objects.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn id(&self, role: &str) -> Vec<u8> {
        format!("fleetkey:{}:{role}", self.namespace).into_bytes()
    }
}

impl fmt::Debug for Pkcs11Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Module")
            .field("token", &self.token)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// Each operation lives with its concept: `masters.rs`, `bulk.rs`, `kek.rs` (and the stored
/// scheme's device roots), `root.rs` (the governance root).
impl KeyModule for Pkcs11Module {
    fn kind(&self) -> &'static str {
        "pkcs11"
    }

    fn create_master(&self, generation: Generation) -> Result<(), ModuleError> {
        masters::create(self, generation)
    }

    fn import_master(&self, generation: Generation, master: &MasterKey) -> Result<(), ModuleError> {
        masters::import(self, generation, master)
    }

    fn masters(&self) -> Result<Vec<Generation>, ModuleError> {
        masters::list(self)
    }

    fn derive(&self, inputs: &DeviceKeyInputs<'_>) -> Result<DeviceKey, ModuleError> {
        masters::derive(self, inputs)
    }

    fn bulk_deriver(
        &self,
        generation: Generation,
    ) -> Result<Box<dyn BulkDeriver + '_>, ModuleError> {
        bulk::deriver(self, generation)
    }

    fn destroy_master(&self, generation: Generation) -> Result<(), ModuleError> {
        masters::destroy(self, generation)
    }

    fn ensure_kek(&self) -> Result<(), ModuleError> {
        kek::ensure(self)
    }

    fn wrap(&self, key: &[u8]) -> Result<WrappedKey, ModuleError> {
        kek::wrap(self, key)
    }

    fn unwrap(&self, wrapped: &WrappedKey) -> Result<Zeroizing<Vec<u8>>, ModuleError> {
        kek::unwrap(self, wrapped)
    }

    fn new_wrapped_root(&self) -> Result<WrappedKey, ModuleError> {
        kek::new_wrapped_root(self)
    }

    fn derive_with_root(
        &self,
        root: &WrappedKey,
        inputs: &DeviceKeyInputs<'_>,
    ) -> Result<DeviceKey, ModuleError> {
        kek::derive_with_root(self, root, inputs)
    }

    fn ensure_signing_key(&self) -> Result<[u8; 32], ModuleError> {
        root::ensure(self)
    }

    fn signing_public_key(&self) -> Result<Option<[u8; 32]>, ModuleError> {
        root::public(self)
    }

    fn sign(&self, message: &[u8]) -> Result<[u8; 64], ModuleError> {
        root::sign(self, message)
    }

    fn import_signing_key(&self, seed: &SigningSeed) -> Result<[u8; 32], ModuleError> {
        root::import(self, seed)
    }

    fn stage_signing_key(&self, seed: Option<&SigningSeed>) -> Result<[u8; 32], ModuleError> {
        root::stage(self, seed)
    }

    fn staged_signing_public_key(&self) -> Result<Option<[u8; 32]>, ModuleError> {
        root::staged_public(self)
    }

    fn promote_signing_key(&self) -> Result<[u8; 32], ModuleError> {
        root::promote(self)
    }
}

#[cfg(test)]
mod tests;
