//! Token-to-token backup: a master leaves a token only wrapped (`CKM_AES_KEY_WRAP`, RFC 3394)
//! under the fleet's backup key-encryption key, an AES-256 key the security officer marked
//! `CKA_TRUSTED`, and enters another token holding the same backup KEK by `C_UnwrapKey`.
//!
//! - **Backup KEK**: label and id `fleetkey:<fleet>:backup-kek`, `CKA_WRAP` and `CKA_UNWRAP`
//!   true, every other usage false, sensitive, not extractable, `CKA_TRUSTED` true. It is
//!   created in a security officer's session ([`Pkcs11Module::import_backup_kek`]), because only
//!   the SO may set `CKA_TRUSTED`; SoftHSM lets the SO create and modify public objects only, so
//!   it is `CKA_PRIVATE` false (it stays sensitive and unextractable: anyone may find it, nobody
//!   can read it, and wrapping a master with it still needs the user's login to reach the master).
//! - **Masters that may be backed up** ([`Pkcs11Options::backup_by_trusted_wrap`]) are
//!   `CKA_EXTRACTABLE` true and `CKA_WRAP_WITH_TRUSTED` true, still sensitive: the token wraps
//!   them under a trusted key only, and never reveals them otherwise. Without the option (the
//!   default) a master is not extractable at all and the token refuses to wrap it.
//! - **The same backup KEK in every token**: 32 bytes the ceremony makes once, imported into
//!   each token from custodian shares ([`BackupKek::from_shares`]: the master share format with
//!   the reserved generation [`BACKUP_KEK_GENERATION`]) or from a hex file (tests).

use std::fmt;
use std::path::Path;

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use fleetkey_core::MasterKey;
use fleetkey_core::derive::Generation;
use zeroize::{Zeroize as _, Zeroizing};

use super::templates::secret_usages;
use super::token::{backend, rv, unwrap_failure};
use super::{Pin, Pkcs11Module, lock};
use crate::backup::{self, BackupError, Kcv, Share};
use crate::error::ModuleError;

/// The role of the backup KEK: its label is `fleetkey:<fleet>:backup-kek`.
pub const BACKUP_KEK_ROLE: &str = "backup-kek";

/// The generation field that marks a custodian share set as a backup KEK's, not a master's.
pub const BACKUP_KEK_GENERATION: u32 = u32::MAX;

/// The length of a master wrapped with RFC 3394: 32 bytes and one 8-byte integrity block.
pub const WRAPPED_MASTER_LEN: usize = 40;

/// Options of a [`Pkcs11Module`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pkcs11Options {
    /// Masters created or imported by the module are extractable only wrapped under a key the
    /// security officer marked trusted (`CKA_EXTRACTABLE` and `CKA_WRAP_WITH_TRUSTED` true), so
    /// that [`Pkcs11Module::export_master_wrapped`] can back them up into another token. Off by
    /// default: masters are not extractable at all.
    pub backup_by_trusted_wrap: bool,
}

/// The 32-byte backup key-encryption key, zeroized on drop; `Debug` shows only its check value.
pub struct BackupKek(Zeroizing<[u8; 32]>);

impl BackupKek {
    /// A KEK from its bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        BackupKek(Zeroizing::new(bytes))
    }

    /// A fresh random KEK (from the operating system).
    pub fn random() -> Result<Self, BackupError> {
        let master = backup::random_master()?;
        Ok(Self::from_master(&master))
    }

    /// A KEK from a file whose first line is 64 hex digits.
    pub fn from_file(path: &Path) -> Result<Self, ModuleError> {
        let text = super::token::first_line_of_secret_file(path, "backup KEK file")?;
        let line = text.trim();
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(line, bytes.as_mut_slice()).map_err(|_| {
            ModuleError::Corrupt(format!(
                "{}: a backup KEK file holds 64 hex digits on its first line",
                path.display()
            ))
        })?;
        Ok(BackupKek(bytes))
    }

    /// The KEK's custodian shares: the master share format, for the fleet, with the generation
    /// [`BACKUP_KEK_GENERATION`].
    pub fn split(
        &self,
        fleet: &str,
        threshold: u8,
        custodians: &[String],
        created_at: crate::model::UnixMillis,
    ) -> Result<Vec<Share>, BackupError> {
        let master = MasterKey::from_bytes(*self.0);
        backup::split(
            &master,
            fleet,
            BACKUP_KEK_GENERATION,
            threshold,
            custodians,
            created_at,
        )
    }

    /// The KEK from M of its custodian shares (checked by every share's KCV and the whole
    /// KCV); shares of a master (any other generation) or of another fleet are refused.
    pub fn from_shares(fleet: &str, shares: &[Share]) -> Result<Self, BackupError> {
        if let Some(share) = shares
            .iter()
            .find(|s| s.info().generation != BACKUP_KEK_GENERATION || s.info().fleet != fleet)
        {
            return Err(BackupError::Invalid {
                field: "generation",
                problem: format!(
                    "{} is not a backup KEK share of fleet {fleet:?} (generation {} of {:?})",
                    share.origin(),
                    share.info().generation,
                    share.info().fleet
                ),
            });
        }
        backup::combine(shares).map(|master| Self::from_master(&master))
    }

    fn from_master(master: &MasterKey) -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        bytes.copy_from_slice(master.expose_secret());
        BackupKek(bytes)
    }

    /// The check value, the one its share files carry as `master_kcv`:
    /// `HMAC-SHA256(kek, "FK1K master KCV v1")[0..3]` (the share set's reserved generation,
    /// covered by every share KCV, is what tells a KEK's shares from a master's).
    pub fn kcv(&self) -> Kcv {
        backup::master_kcv(&MasterKey::from_bytes(*self.0))
    }
}

impl fmt::Debug for BackupKek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BackupKek(kcv {})", hex::encode(self.kcv().0))
    }
}

impl Pkcs11Module {
    /// Imports the backup KEK into the token as the security officer (`so_pin`, see
    /// [`Pin::so_from_file_or_env`]): created `CKA_TRUSTED` in the SO's session, then the user
    /// is logged back in. Refused when the token already holds this fleet's backup KEK
    /// (destroy it first to replace it). Run it on its own: while the SO is logged in, this
    /// process's other sessions on the token cannot use the user's objects.
    pub fn import_backup_kek(&self, kek: &BackupKek, so_pin: &Pin) -> Result<(), ModuleError> {
        let _change = lock(&self.token.changes);
        {
            let session = self.session()?;
            if self.find_secret(session.get(), BACKUP_KEK_ROLE)?.is_some() {
                return Err(ModuleError::Backend {
                    operation: "importing the backup KEK",
                    detail: format!(
                        "the token already holds {}; destroy it first to replace it",
                        self.backup_kek_label()
                    ),
                });
            }
        }
        let label = self.id(BACKUP_KEK_ROLE);
        let mut template = vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(true),
            // Only public objects are the SO's to create (SoftHSM, and PKCS#11 in general).
            Attribute::Private(false),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Trusted(true),
            Attribute::Modifiable(false),
            Attribute::Label(label.clone()),
            Attribute::Id(label),
            Attribute::Value(kek.0.to_vec()),
        ];
        template.extend(secret_usages(&[AttributeType::Wrap, AttributeType::Unwrap]));
        let result = self.token.as_security_officer(so_pin, |session| {
            session
                .create_object(&template)
                .map(|_| ())
                .map_err(backend(
                    "C_CreateObject (backup KEK, as the security officer)",
                ))
        });
        for attribute in &mut template {
            if let Attribute::Value(bytes) = attribute {
                bytes.zeroize();
            }
        }
        result
    }

    /// Whether the token holds this fleet's backup KEK.
    pub fn has_backup_kek(&self) -> Result<bool, ModuleError> {
        let session = self.session()?;
        Ok(self.find_secret(session.get(), BACKUP_KEK_ROLE)?.is_some())
    }

    /// Destroys this fleet's backup KEK (as the user: it is a public object).
    pub fn destroy_backup_kek(&self) -> Result<(), ModuleError> {
        let _change = lock(&self.token.changes);
        let session = self.session()?;
        if let Some(handle) = self.find_secret(session.get(), BACKUP_KEK_ROLE)? {
            session
                .get()
                .destroy_object(handle)
                .map_err(backend("C_DestroyObject"))?;
        }
        Ok(())
    }

    /// The backup KEK's label: `fleetkey:<fleet>:backup-kek`.
    pub fn backup_kek_label(&self) -> String {
        format!("fleetkey:{}:{BACKUP_KEK_ROLE}", self.namespace)
    }

    fn backup_kek(&self, session: &Session) -> Result<ObjectHandle, ModuleError> {
        self.find_secret(session, BACKUP_KEK_ROLE)?
            .ok_or_else(|| ModuleError::Backend {
                operation: "finding the backup KEK",
                detail: format!(
                    "no {} in the token; import it with the security officer's PIN",
                    self.backup_kek_label()
                ),
            })
    }

    /// The generation's master wrapped under the trusted backup KEK (`CKM_AES_KEY_WRAP`,
    /// RFC 3394, [`WRAPPED_MASTER_LEN`] bytes). The token refuses a master created without
    /// [`Pkcs11Options::backup_by_trusted_wrap`] (`CKR_KEY_UNEXTRACTABLE`, answered as
    /// [`ModuleError::Unsupported`]) and a backup KEK not marked trusted
    /// (`CKR_KEY_NOT_WRAPPABLE`, a [`ModuleError::Backend`] saying so).
    pub fn export_master_wrapped(&self, generation: Generation) -> Result<Vec<u8>, ModuleError> {
        let master = self.master(generation)?;
        let session = self.session()?;
        let kek = self.backup_kek(session.get())?;
        session
            .get()
            .wrap_key(&Mechanism::AesKeyWrap, kek, master.handle)
            .map_err(|e| match rv(&e) {
                Some(RvError::KeyUnextractable) => ModuleError::Unsupported(
                    "exporting a master that is not extractable (created without \
                     backup_by_trusted_wrap: CKR_KEY_UNEXTRACTABLE)",
                ),
                Some(RvError::KeyNotWrappable) => ModuleError::Backend {
                    operation: "C_WrapKey",
                    detail: format!(
                        "the token refused (CKR_KEY_NOT_WRAPPABLE): the master wraps only under \
                         a trusted key, and {} is not marked CKA_TRUSTED by the security officer",
                        self.backup_kek_label()
                    ),
                },
                Some(RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid) => {
                    lock(&self.masters).remove(&generation.0);
                    ModuleError::NoMaster(generation.0)
                }
                _ => backend("C_WrapKey")(e),
            })
    }

    /// Unwraps `blob` (from [`Pkcs11Module::export_master_wrapped`] in a token holding the same
    /// backup KEK) into the generation's master, with the attributes a created master has. A
    /// blob that fails the RFC 3394 integrity check (damaged, or another KEK) is
    /// [`ModuleError::Unwrap`], and nothing is created; an existing generation is
    /// [`ModuleError::MasterExists`].
    pub fn import_master_wrapped(
        &self,
        generation: Generation,
        blob: &[u8],
    ) -> Result<(), ModuleError> {
        if blob.len() != WRAPPED_MASTER_LEN {
            return Err(ModuleError::Unwrap);
        }
        let kek = {
            let session = self.session()?;
            self.backup_kek(session.get())?
        };
        let template = self.master_template(generation);
        self.add_master(
            generation,
            |session| session.unwrap_key(&Mechanism::AesKeyWrap, kek, blob, &template),
            unwrap_failure,
        )
    }
}
