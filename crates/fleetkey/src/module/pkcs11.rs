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
//!   outputs up to 32 bytes. With [`Pkcs11Options::backup_by_trusted_wrap`] masters are instead
//!   extractable only wrapped under a key the security officer marked `CKA_TRUSTED`, for
//!   token-to-token backup (`backup.rs`: [`Pkcs11Module::export_master_wrapped`],
//!   [`Pkcs11Module::import_master_wrapped`], [`Pkcs11Module::import_backup_kek`]).
//! - **Bulk**: a [`BulkDeriver`] holds its own session and a session-object copy of the master
//!   (`C_CopyObject`, `CKA_TOKEN` false), about 3x faster than a token object in SoftHSM; the copy
//!   is destroyed with the deriver, or by [`KeyModule::destroy_master`].
//! - **KEK**: AES-256 token key, wrap and unwrap only, `CKM_AES_KEY_WRAP_PAD` (RFC 5649), so blobs
//!   are those the soft module makes under the same KEK value. Raw bytes are wrapped through a
//!   short-lived session object; a device root is generated, wrapped and, to derive, unwrapped
//!   into a sensitive session object without ever being in host memory.
//! - **Governance root**: Ed25519 (`CKM_EC_EDWARDS_KEY_PAIR_GEN`, `CKM_EDDSA`); a token without
//!   them answers [`ModuleError::Unsupported`]. A root from a ceremony with custodian shares is
//!   imported (`CKK_EC_EDWARDS`, private half sensitive, not extractable, sign only) and proven
//!   by one signature. During a root rotation the next root is staged under the role
//!   `governance-next`; promoting it destroys the old root's objects and relabels the new ones.
//! - **Concurrency**: changes to token objects are serialised per token in the process (SoftHSM
//!   2.6.1 fails now and then with `CKR_GENERAL_ERROR` when threads create token objects at
//!   once); derivations run in parallel, one session per worker; two processes creating the same
//!   generation at once may both succeed, and the second creator then finds two objects and
//!   removes its own ([`ModuleError::MasterExists`]).

mod backup;
mod token;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use fleetkey_core::MasterKey;
use fleetkey_core::derive::{DeviceKey, DeviceKeyInputs, Generation, MAX_INFO_LEN};
use zeroize::{Zeroize as _, Zeroizing};

pub use self::backup::{
    BACKUP_KEK_GENERATION, BACKUP_KEK_ROLE, BackupKek, Pkcs11Options, WRAPPED_MASTER_LEN,
};
pub use self::token::{MAX_SECRET_FILE_LEN, PIN_ENV, Pin, SO_PIN_ENV};
use self::token::{Token, backend, rv};
use super::{BulkDeriver, KeyModule, SigningSeed};
use crate::error::ModuleError;
use crate::model::WrappedKey;
/// The PKCS#11 binding this module is built on, for callers that inspect a token themselves.
pub use cryptoki;

/// The role of the governance root's objects.
const GOVERNANCE: &str = "governance";
/// The role of the next governance root, staged during a root rotation.
const GOVERNANCE_NEXT: &str = "governance-next";

/// DER of the Ed25519 curve's object identifier 1.3.101.112, for `CKA_EC_PARAMS`.
const ED25519_OID: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];

/// The PKCS#11 key module. See the [module documentation](self).
pub struct Pkcs11Module {
    token: Arc<Token>,
    namespace: String,
    options: Pkcs11Options,
    /// Masters seen by this module: handle, liveness and session copies.
    masters: Mutex<BTreeMap<u32, Arc<Master>>>,
}

/// A master's token object and the session copies bulk derivers made of it.
struct Master {
    handle: ObjectHandle,
    alive: AtomicBool,
    copies: Mutex<Vec<ObjectHandle>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A pooled session, given back on drop.
struct Pooled<'a> {
    token: &'a Token,
    session: Option<Session>,
}

impl Pooled<'_> {
    fn get(&self) -> &Session {
        // Present from construction until drop.
        #[allow(
            clippy::expect_used,
            reason = "set in Pkcs11Module::session, taken only in drop"
        )]
        self.session.as_ref().expect("pooled session")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            self.token.give_back(session);
        }
    }
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

    /// The label of a generation's master: `fleetkey:<namespace>:master:<generation>`.
    pub fn master_label(&self, generation: Generation) -> String {
        format!("fleetkey:{}:master:{}", self.namespace, generation.0)
    }

    /// The token handle of a generation's master, for inspection (tests, diagnostics).
    pub fn master_attributes(
        &self,
        generation: Generation,
        attributes: &[AttributeType],
    ) -> Result<Vec<Attribute>, ModuleError> {
        let master = self.master(generation)?;
        let session = self.session()?;
        session
            .get()
            .get_attributes(master.handle, attributes)
            .map_err(backend("C_GetAttributeValue"))
    }

    /// Attributes of the governance root's private key (or, with `staged`, of the next root
    /// staged by a rotation), for inspection (tests, diagnostics). [`ModuleError::NoSigningKey`]
    /// when there is none.
    pub fn root_attributes(
        &self,
        staged: bool,
        attributes: &[AttributeType],
    ) -> Result<Vec<Attribute>, ModuleError> {
        let session = self.session()?;
        let role = if staged { GOVERNANCE_NEXT } else { GOVERNANCE };
        let private = self
            .governance_role(session.get(), ObjectClass::PRIVATE_KEY, role)?
            .ok_or(ModuleError::NoSigningKey)?;
        session
            .get()
            .get_attributes(private, attributes)
            .map_err(backend("C_GetAttributeValue"))
    }

    /// How many token objects (public and private halves) the governance root has, or with
    /// `staged` the staged next root: 2 while it exists, 0 once destroyed.
    pub fn root_object_count(&self, staged: bool) -> Result<usize, ModuleError> {
        let session = self.session()?;
        let role = if staged { GOVERNANCE_NEXT } else { GOVERNANCE };
        Ok(self.governance_objects(session.get(), role)?.len())
    }

    fn id(&self, role: &str) -> Vec<u8> {
        format!("fleetkey:{}:{role}", self.namespace).into_bytes()
    }

    fn session(&self) -> Result<Pooled<'_>, ModuleError> {
        Ok(Pooled {
            token: &self.token,
            session: Some(self.token.session()?),
        })
    }

    fn find(
        &self,
        session: &Session,
        template: &[Attribute],
    ) -> Result<Vec<ObjectHandle>, ModuleError> {
        session
            .find_objects(template)
            .map_err(backend("C_FindObjects"))
    }

    fn find_master(
        &self,
        session: &Session,
        generation: Generation,
    ) -> Result<Vec<ObjectHandle>, ModuleError> {
        self.find(
            session,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Token(true),
                Attribute::Label(self.master_label(generation).into_bytes()),
            ],
        )
    }

    fn find_secret(
        &self,
        session: &Session,
        role: &str,
    ) -> Result<Option<ObjectHandle>, ModuleError> {
        let label = self.id(role);
        Ok(self
            .find(
                session,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::Token(true),
                    Attribute::Label(label),
                ],
            )?
            .first()
            .copied())
    }

    /// The generation's master, from the cache or the token.
    fn master(&self, generation: Generation) -> Result<Arc<Master>, ModuleError> {
        if let Some(master) = lock(&self.masters).get(&generation.0) {
            return Ok(Arc::clone(master));
        }
        let session = self.session()?;
        let handle = self
            .find_master(session.get(), generation)?
            .first()
            .copied()
            .ok_or(ModuleError::NoMaster(generation.0))?;
        let master = Arc::new(Master {
            handle,
            alive: AtomicBool::new(true),
            copies: Mutex::new(Vec::new()),
        });
        Ok(Arc::clone(
            lock(&self.masters).entry(generation.0).or_insert(master),
        ))
    }

    /// The attributes every master gets: sign only; extractable only wrapped under a trusted
    /// key when the module backs masters up by trusted wrap.
    fn master_template(&self, generation: Generation) -> Vec<Attribute> {
        let backup = self.options.backup_by_trusted_wrap;
        let mut template = vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(backup),
            Attribute::WrapWithTrusted(backup),
            Attribute::Label(self.master_label(generation).into_bytes()),
            Attribute::Id(self.id("master")),
        ];
        template.extend(secret_usages(&[AttributeType::Sign]));
        template
    }

    /// Creates a master object with `make`, refusing a generation that has one.
    fn add_master(
        &self,
        generation: Generation,
        make: impl FnMut(&Session) -> Result<ObjectHandle, cryptoki::error::Error>,
        map_err: impl Fn(cryptoki::error::Error) -> ModuleError,
    ) -> Result<(), ModuleError> {
        let _change = lock(&self.token.changes);
        let session = self.session()?;
        if !self.find_master(session.get(), generation)?.is_empty() {
            return Err(ModuleError::MasterExists(generation.0));
        }
        let handle = create_retrying(
            session.get(),
            |s| self.find_master(s, generation),
            make,
            map_err,
        )?;
        // Another process may have created the same generation meanwhile: the later object
        // (the higher handle is not an order across processes, so keep exactly the first found).
        let found = self.find_master(session.get(), generation)?;
        if found.len() > 1 {
            let _ = session.get().destroy_object(handle);
            return Err(ModuleError::MasterExists(generation.0));
        }
        lock(&self.masters).remove(&generation.0);
        Ok(())
    }

    fn kek(&self, session: &Session) -> Result<ObjectHandle, ModuleError> {
        self.find_secret(session, "kek")?.ok_or(ModuleError::NoKek)
    }

    fn governance(
        &self,
        session: &Session,
        class: ObjectClass,
    ) -> Result<Option<ObjectHandle>, ModuleError> {
        self.governance_role(session, class, GOVERNANCE)
    }

    /// The token object of a governance root role ([`GOVERNANCE`] or [`GOVERNANCE_NEXT`]).
    fn governance_role(
        &self,
        session: &Session,
        class: ObjectClass,
        role: &str,
    ) -> Result<Option<ObjectHandle>, ModuleError> {
        Ok(self
            .find(
                session,
                &[
                    Attribute::Class(class),
                    Attribute::Token(true),
                    Attribute::Label(self.id(role)),
                ],
            )?
            .first()
            .copied())
    }

    /// Every token object (both halves) of a governance root role.
    fn governance_objects(
        &self,
        session: &Session,
        role: &str,
    ) -> Result<Vec<ObjectHandle>, ModuleError> {
        let mut found = Vec::new();
        for class in [ObjectClass::PUBLIC_KEY, ObjectClass::PRIVATE_KEY] {
            found.extend(self.find(
                session,
                &[
                    Attribute::Class(class),
                    Attribute::Token(true),
                    Attribute::Label(self.id(role)),
                ],
            )?);
        }
        Ok(found)
    }

    fn destroy_governance(&self, session: &Session, role: &str) -> Result<(), ModuleError> {
        for handle in self.governance_objects(session, role)? {
            session
                .destroy_object(handle)
                .map_err(backend("C_DestroyObject"))?;
        }
        Ok(())
    }

    /// The attributes of a governance root's public half: verify only.
    fn root_public_template(&self, role: &str) -> Vec<Attribute> {
        let label = self.id(role);
        vec![
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::Encrypt(false),
            Attribute::Wrap(false),
            Attribute::Derive(false),
            Attribute::EcParams(ED25519_OID.to_vec()),
            Attribute::Label(label.clone()),
            Attribute::Id(label),
        ]
    }

    /// The attributes of a governance root's private half: sensitive, not extractable, sign
    /// only.
    fn root_private_template(&self, role: &str) -> Vec<Attribute> {
        let label = self.id(role);
        vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
            Attribute::Label(label.clone()),
            Attribute::Id(label),
        ]
    }

    /// Generates an Ed25519 key pair in the token under `role`; returns its public key.
    fn generate_root(&self, session: &Session, role: &str) -> Result<[u8; 32], ModuleError> {
        let public_template = self.root_public_template(role);
        let private_template = self.root_private_template(role);
        let (public, _private) = create_retrying(
            session,
            |s| self.governance_objects(s, role),
            |s| {
                s.generate_key_pair(
                    &Mechanism::EccEdwardsKeyPairGen,
                    &public_template,
                    &private_template,
                )
            },
            |e| match rv(&e) {
                Some(
                    RvError::MechanismInvalid
                    | RvError::CurveNotSupported
                    | RvError::DomainParamsInvalid,
                ) => ModuleError::Unsupported(
                    "Ed25519 keys (CKM_EC_EDWARDS_KEY_PAIR_GEN) on this token",
                ),
                _ => backend("C_GenerateKeyPair")(e),
            },
        )?;
        self.public_key(session, public)
    }

    /// Imports an Ed25519 key pair from its seed under `role` (`CKK_EC_EDWARDS`, the private
    /// half's `CKA_VALUE` the 32-byte seed, RFC 8410 section 7 as PKCS#11 3.0 says), then proves
    /// it: one signature by the token verified here under the seed's public key. On failure
    /// nothing of the role is left.
    fn import_root(
        &self,
        session: &Session,
        role: &str,
        seed: &SigningSeed,
    ) -> Result<[u8; 32], ModuleError> {
        let public = seed.public_key();
        let mut private_template = self.root_private_template(role);
        private_template.extend([
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(KeyType::EC_EDWARDS),
            Attribute::EcParams(ED25519_OID.to_vec()),
            Attribute::Value(seed.expose_secret().to_vec()),
        ]);
        let mut public_template = self.root_public_template(role);
        let mut point = vec![0x04, 0x20];
        point.extend_from_slice(&public);
        public_template.extend([
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::KeyType(KeyType::EC_EDWARDS),
            Attribute::EcPoint(point),
        ]);
        let result = (|| {
            let leftovers = |s: &Session| self.governance_objects(s, role);
            let private = create_retrying(
                session,
                leftovers,
                |s| s.create_object(&private_template),
                |e| match rv(&e) {
                    Some(
                        RvError::AttributeValueInvalid
                        | RvError::CurveNotSupported
                        | RvError::DomainParamsInvalid,
                    ) => ModuleError::Unsupported("importing Ed25519 keys on this token"),
                    _ => backend("C_CreateObject")(e),
                },
            )?;
            let public_handle = create_retrying(
                session,
                |s| {
                    self.governance_role(s, ObjectClass::PUBLIC_KEY, role)
                        .map(|h| h.into_iter().collect())
                },
                |s| s.create_object(&public_template),
                backend("C_CreateObject"),
            )?;
            if self.public_key(session, public_handle)? != public {
                return Err(ModuleError::Corrupt(
                    "the imported governance public key reads back differently".into(),
                ));
            }
            let probe = b"fleetkey governance root import probe";
            let signature = eddsa_sign(session, private, probe)?;
            let key = ed25519_dalek::VerifyingKey::from_bytes(&public)
                .map_err(|_| ModuleError::Corrupt("the root's public key is not a point".into()))?;
            key.verify_strict(probe, &ed25519_dalek::Signature::from_bytes(&signature))
                .map_err(|_| ModuleError::Backend {
                    operation: "C_CreateObject",
                    detail: "the imported Ed25519 key signs, but not as its seed's key".into(),
                })?;
            Ok(public)
        })();
        for attribute in &mut private_template {
            if let Attribute::Value(bytes) = attribute {
                bytes.zeroize();
            }
        }
        if result.is_err() {
            let _ = self.destroy_governance(session, role);
        }
        result
    }

    fn public_key(&self, session: &Session, handle: ObjectHandle) -> Result<[u8; 32], ModuleError> {
        let attributes = session
            .get_attributes(handle, &[AttributeType::EcPoint])
            .map_err(backend("C_GetAttributeValue"))?;
        let point = attributes
            .into_iter()
            .find_map(|a| match a {
                Attribute::EcPoint(p) => Some(p),
                _ => None,
            })
            .ok_or_else(|| {
                ModuleError::Corrupt("the governance public key has no CKA_EC_POINT".into())
            })?;
        ec_point(&point).ok_or_else(|| {
            ModuleError::Corrupt(format!(
                "the governance public key's CKA_EC_POINT is {} bytes, not an Ed25519 point",
                point.len()
            ))
        })
    }

    /// Unwraps `blob` under the KEK into a session object made from `template`; the integrity
    /// check failing is [`ModuleError::Unwrap`].
    fn unwrap_object(
        &self,
        session: &Session,
        blob: &WrappedKey,
        template: &[Attribute],
    ) -> Result<ObjectHandle, ModuleError> {
        let kek = self.kek(session)?;
        let data = &blob.0;
        // RFC 5649 section 4.2: at least two semiblocks, a whole number of them.
        if data.len() < 16 || !data.len().is_multiple_of(8) {
            return Err(ModuleError::Unwrap);
        }
        session
            .unwrap_key(&Mechanism::AesKeyWrapPad, kek, data, template)
            .map_err(|e| match rv(&e) {
                Some(
                    RvError::WrappedKeyInvalid
                    | RvError::WrappedKeyLenRange
                    | RvError::EncryptedDataInvalid
                    | RvError::EncryptedDataLenRange
                    | RvError::DataInvalid
                    | RvError::DataLenRange
                    | RvError::GeneralError,
                ) => ModuleError::Unwrap,
                _ => backend("C_UnwrapKey")(e),
            })
    }

    /// A root unwrapped from a 40-byte blob is 25 to 32 bytes: it is a device root only when it
    /// is 32. Tokens that report `CKA_VALUE_LEN` after C_UnwrapKey answer directly; SoftHSM
    /// reports 0, and then RFC 3394 wrapping (whole semiblocks only) under the KEK tells 32 from
    /// 25..=31 without the root leaving the token.
    fn check_root_length(
        &self,
        session: &Session,
        object: ObjectHandle,
    ) -> Result<(), ModuleError> {
        let length = session
            .get_attributes(object, &[AttributeType::ValueLen])
            .map_err(backend("C_GetAttributeValue"))?
            .into_iter()
            .find_map(|a| match a {
                Attribute::ValueLen(n) => Some(usize::from(n)),
                _ => None,
            })
            .unwrap_or(0);
        match length {
            32 => Ok(()),
            0 => {
                let kek = self.kek(session)?;
                let mut probe = session
                    .wrap_key(&Mechanism::AesKeyWrap, kek, object)
                    .map_err(|_| ModuleError::Unwrap)?;
                probe.zeroize();
                Ok(())
            }
            _ => Err(ModuleError::Unwrap),
        }
    }

    /// RFC 5649 wrapping computed here with the token's AES (`CKM_AES_ECB` encryption under the
    /// KEK), for key lengths that are not whole semiblocks: SoftHSM 2.6.1's C_WrapKey pads those
    /// with zeros before wrapping and records the padded length, which is not RFC 5649.
    fn wrap_by_blocks(
        &self,
        session: &Session,
        kek: ObjectHandle,
        key: &[u8],
    ) -> Result<Vec<u8>, ModuleError> {
        let encrypt = |block: &[u8; 16]| -> Result<Zeroizing<[u8; 16]>, ModuleError> {
            let out = Zeroizing::new(
                session
                    .encrypt(&Mechanism::AesEcb, kek, block)
                    .map_err(backend("C_Encrypt"))?,
            );
            let mut block = Zeroizing::new([0u8; 16]);
            if out.len() != 16 {
                return Err(ModuleError::Backend {
                    operation: "C_Encrypt",
                    detail: format!("AES-ECB gave {} bytes for one block", out.len()),
                });
            }
            block.copy_from_slice(&out);
            Ok(block)
        };
        let length = u32::try_from(key.len())
            .map_err(|_| ModuleError::Unsupported("wrapping a key of 2^32 bytes or more"))?;
        let mut a = [0xa6, 0x59, 0x59, 0xa6, 0, 0, 0, 0];
        a[4..].copy_from_slice(&length.to_be_bytes());
        let n = key.len().div_ceil(8);
        let mut r = Zeroizing::new(vec![0u8; n * 8]);
        r[..key.len()].copy_from_slice(key);
        let mut block = Zeroizing::new([0u8; 16]);
        if n == 1 {
            block[..8].copy_from_slice(&a);
            block[8..].copy_from_slice(&r);
            return Ok(encrypt(&block)?.to_vec());
        }
        let mut t = 0u64;
        for _ in 0..6 {
            for semiblock in r.chunks_exact_mut(8) {
                t += 1;
                block[..8].copy_from_slice(&a);
                block[8..].copy_from_slice(semiblock);
                let b = encrypt(&block)?;
                for ((a, b), t) in a.iter_mut().zip(&b[..8]).zip(t.to_be_bytes()) {
                    *a = b ^ t;
                }
                semiblock.copy_from_slice(&b[8..]);
            }
        }
        let mut out = a.to_vec();
        out.extend_from_slice(&r);
        Ok(out)
    }
}

/// Runs the creation of token objects, retrying after `CKR_GENERAL_ERROR` or
/// `CKR_TEMPLATE_INCONSISTENT` (SoftHSM 2.6.1 answers either now and then, for a template it
/// accepts otherwise, while other threads use the token) once whatever the failed attempt left
/// (`leftovers`) is destroyed; at most three retries, so a template that is really wrong still
/// fails.
fn create_retrying<T>(
    session: &Session,
    leftovers: impl Fn(&Session) -> Result<Vec<ObjectHandle>, ModuleError>,
    mut create: impl FnMut(&Session) -> Result<T, cryptoki::error::Error>,
    map_err: impl Fn(cryptoki::error::Error) -> ModuleError,
) -> Result<T, ModuleError> {
    let mut retries = 0;
    loop {
        match create(session) {
            Ok(created) => return Ok(created),
            Err(e)
                if matches!(
                    rv(&e),
                    Some(RvError::GeneralError | RvError::TemplateInconsistent)
                ) && retries < 3 =>
            {
                retries += 1;
                for handle in leftovers(session)? {
                    session
                        .destroy_object(handle)
                        .map_err(backend("C_DestroyObject"))?;
                }
            }
            Err(e) => return Err(map_err(e)),
        }
    }
}

/// An Ed25519 public key from `CKA_EC_POINT`: a DER OCTET STRING (PKCS#11 3.0) or the raw 32
/// bytes (some tokens).
fn ec_point(point: &[u8]) -> Option<[u8; 32]> {
    match point {
        [0x04, 0x20, rest @ ..] if rest.len() == 32 => rest.try_into().ok(),
        raw if raw.len() == 32 => raw.try_into().ok(),
        _ => None,
    }
}

/// `derive` takes the generation twice (argument and inputs): they must agree.
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

/// Derivation v1 in the token: HMAC-SHA256(key, info || 0x01), truncated into `out`.
fn hmac_derive(
    session: &Session,
    key: ObjectHandle,
    inputs: &DeviceKeyInputs<'_>,
    out: &mut [u8],
) -> Result<(), cryptoki::error::Error> {
    let mut message = [0u8; MAX_INFO_LEN + 1];
    let mut info = [0u8; MAX_INFO_LEN];
    let len = inputs.encode_info(&mut info);
    let (head, tail) = message.split_at_mut(len);
    head.copy_from_slice(info.get(..len).unwrap_or(&[]));
    if let Some(counter) = tail.first_mut() {
        *counter = 0x01;
    }
    let mut mac = Zeroizing::new(session.sign(
        &Mechanism::Sha256Hmac,
        key,
        message.get(..=len).unwrap_or(&[]),
    )?);
    let n = out.len().min(mac.len());
    out.get_mut(..n)
        .unwrap_or(&mut [])
        .copy_from_slice(mac.get(..n).unwrap_or(&[]));
    mac.zeroize();
    Ok(())
}

fn derive_key(
    session: &Session,
    key: ObjectHandle,
    inputs: &DeviceKeyInputs<'_>,
) -> Result<DeviceKey, cryptoki::error::Error> {
    let mut out = Zeroizing::new([0u8; 32]);
    let len = inputs.usage.key_len();
    hmac_derive(session, key, inputs, out.get_mut(..len).unwrap_or(&mut []))?;
    // The buffer is exactly the usage's length.
    #[allow(
        clippy::expect_used,
        reason = "out[..key_len()] has the usage's length"
    )]
    Ok(DeviceKey::from_slice(inputs.usage, out.get(..len).unwrap_or(&[])).expect("usage length"))
}

impl fmt::Debug for Pkcs11Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Module")
            .field("token", &self.token)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl KeyModule for Pkcs11Module {
    fn kind(&self) -> &'static str {
        "pkcs11"
    }

    fn create_master(&self, generation: Generation) -> Result<(), ModuleError> {
        let mut template = self.master_template(generation);
        template.push(Attribute::ValueLen(32.into()));
        self.add_master(
            generation,
            |session| session.generate_key(&Mechanism::GenericSecretKeyGen, &template),
            backend("C_GenerateKey"),
        )
    }

    fn import_master(&self, generation: Generation, master: &MasterKey) -> Result<(), ModuleError> {
        let mut template = self.master_template(generation);
        template.push(Attribute::Value(master.expose_secret().to_vec()));
        let result = self.add_master(
            generation,
            |session| session.create_object(&template),
            backend("C_CreateObject"),
        );
        for attribute in &mut template {
            if let Attribute::Value(bytes) = attribute {
                bytes.zeroize();
            }
        }
        result
    }

    fn masters(&self) -> Result<Vec<Generation>, ModuleError> {
        let session = self.session()?;
        let handles = self.find(
            session.get(),
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Token(true),
                Attribute::Id(self.id("master")),
            ],
        )?;
        let prefix = format!("fleetkey:{}:master:", self.namespace);
        let mut generations = Vec::with_capacity(handles.len());
        for handle in handles {
            let attributes = session
                .get()
                .get_attributes(handle, &[AttributeType::Label])
                .map_err(backend("C_GetAttributeValue"))?;
            for attribute in attributes {
                if let Attribute::Label(label) = attribute
                    && let Some(number) = String::from_utf8_lossy(&label).strip_prefix(&prefix)
                    && let Ok(generation) = number.parse::<u32>()
                {
                    generations.push(Generation(generation));
                }
            }
        }
        generations.sort_unstable_by_key(|g| g.0);
        generations.dedup();
        Ok(generations)
    }

    fn derive(
        &self,
        generation: Generation,
        inputs: &DeviceKeyInputs<'_>,
    ) -> Result<DeviceKey, ModuleError> {
        check_generation(generation, inputs)?;
        let master = self.master(generation)?;
        let session = self.session()?;
        derive_key(session.get(), master.handle, inputs).map_err(|e| {
            if matches!(
                rv(&e),
                Some(RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid)
            ) {
                lock(&self.masters).remove(&generation.0);
                ModuleError::NoMaster(generation.0)
            } else {
                backend("C_Sign")(e)
            }
        })
    }

    fn bulk_deriver(
        &self,
        generation: Generation,
    ) -> Result<Box<dyn BulkDeriver + '_>, ModuleError> {
        let master = self.master(generation)?;
        let session = self.token.session()?;
        // A session copy where the token allows it; otherwise the token object itself.
        let copy = session
            .copy_object(master.handle, &[Attribute::Token(false)])
            .ok();
        if let Some(copy) = copy {
            lock(&master.copies).push(copy);
        }
        Ok(Box::new(Pkcs11BulkDeriver {
            token: &self.token,
            session: Some(session),
            generation,
            key: copy.unwrap_or(master.handle),
            copy,
            master,
        }))
    }

    fn destroy_master(&self, generation: Generation) -> Result<(), ModuleError> {
        let _change = lock(&self.token.changes);
        let session = self.session()?;
        let found = self.find_master(session.get(), generation)?;
        if found.is_empty() {
            lock(&self.masters).remove(&generation.0);
            return Err(ModuleError::NoMaster(generation.0));
        }
        if let Some(master) = lock(&self.masters).remove(&generation.0) {
            master.alive.store(false, Ordering::Release);
            for copy in lock(&master.copies).drain(..) {
                // A copy already gone is what we want.
                let _ = session.get().destroy_object(copy);
            }
        }
        for handle in found {
            session
                .get()
                .destroy_object(handle)
                .map_err(backend("C_DestroyObject"))?;
        }
        Ok(())
    }

    fn ensure_kek(&self) -> Result<(), ModuleError> {
        let _change = lock(&self.token.changes);
        let session = self.session()?;
        if self.find_secret(session.get(), "kek")?.is_some() {
            return Ok(());
        }
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32.into()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Label(self.id("kek")),
            Attribute::Id(self.id("kek")),
        ]
        .into_iter()
        // AES-ECB encryption (never decryption) for RFC 5649 of odd lengths: see wrap_by_blocks.
        .chain(secret_usages(&[
            AttributeType::Wrap,
            AttributeType::Unwrap,
            AttributeType::Encrypt,
        ]))
        .collect::<Vec<_>>();
        create_retrying(
            session.get(),
            |s| Ok(self.find_secret(s, "kek")?.into_iter().collect()),
            |s| s.generate_key(&Mechanism::AesKeyGen, &template),
            backend("C_GenerateKey"),
        )?;
        Ok(())
    }

    fn wrap(&self, key: &[u8]) -> Result<WrappedKey, ModuleError> {
        if key.is_empty() {
            return Err(ModuleError::Unsupported(
                "wrapping an empty key (RFC 5649 needs at least one byte)",
            ));
        }
        let session = self.session()?;
        let kek = self.kek(session.get())?;
        if !key.len().is_multiple_of(8) {
            return self.wrap_by_blocks(session.get(), kek, key).map(WrappedKey);
        }
        let mut template = vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::Token(false),
            Attribute::Sensitive(true),
            Attribute::Extractable(true),
            Attribute::Value(key.to_vec()),
        ];
        template.extend(secret_usages(&[]));
        let object = session
            .get()
            .create_object(&template)
            .map_err(backend("C_CreateObject"));
        for attribute in &mut template {
            if let Attribute::Value(bytes) = attribute {
                bytes.zeroize();
            }
        }
        let object = object?;
        let wrapped = session
            .get()
            .wrap_key(&Mechanism::AesKeyWrapPad, kek, object)
            .map_err(backend("C_WrapKey"));
        session
            .get()
            .destroy_object(object)
            .map_err(backend("C_DestroyObject"))?;
        Ok(WrappedKey(wrapped?))
    }

    fn unwrap(&self, wrapped: &WrappedKey) -> Result<Zeroizing<Vec<u8>>, ModuleError> {
        let session = self.session()?;
        let object = self.unwrap_object(
            session.get(),
            wrapped,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::GENERIC_SECRET),
                Attribute::Token(false),
                Attribute::Sensitive(false),
                Attribute::Extractable(true),
            ]
            .into_iter()
            .chain(secret_usages(&[]))
            .collect::<Vec<_>>(),
        )?;
        let value = session
            .get()
            .get_attributes(object, &[AttributeType::Value])
            .map_err(backend("C_GetAttributeValue"));
        session
            .get()
            .destroy_object(object)
            .map_err(backend("C_DestroyObject"))?;
        let mut bytes = Zeroizing::new(Vec::new());
        for attribute in value? {
            if let Attribute::Value(mut value) = attribute {
                bytes.extend_from_slice(&value);
                value.zeroize();
            }
        }
        Ok(bytes)
    }

    fn new_wrapped_root(&self) -> Result<WrappedKey, ModuleError> {
        let session = self.session()?;
        let kek = self.kek(session.get())?;
        let root = session
            .get()
            .generate_key(
                &Mechanism::GenericSecretKeyGen,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::GENERIC_SECRET),
                    Attribute::ValueLen(32.into()),
                    Attribute::Token(false),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(true),
                ]
                .into_iter()
                .chain(secret_usages(&[]))
                .collect::<Vec<_>>(),
            )
            .map_err(backend("C_GenerateKey"))?;
        let wrapped = session
            .get()
            .wrap_key(&Mechanism::AesKeyWrapPad, kek, root)
            .map_err(backend("C_WrapKey"));
        session
            .get()
            .destroy_object(root)
            .map_err(backend("C_DestroyObject"))?;
        Ok(WrappedKey(wrapped?))
    }

    fn derive_with_root(
        &self,
        root: &WrappedKey,
        inputs: &DeviceKeyInputs<'_>,
    ) -> Result<DeviceKey, ModuleError> {
        // A 32-byte root wraps to 40 bytes; any other blob is not a device root.
        if root.0.len() != 40 {
            return Err(ModuleError::Unwrap);
        }
        let session = self.session()?;
        let object = self.unwrap_object(
            session.get(),
            root,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::GENERIC_SECRET),
                Attribute::Token(false),
                Attribute::Sensitive(true),
                // Only so that the length probe below can wrap it under the KEK.
                Attribute::Extractable(true),
            ]
            .into_iter()
            .chain(secret_usages(&[AttributeType::Sign]))
            .collect::<Vec<_>>(),
        )?;
        let result = (|| {
            self.check_root_length(session.get(), object)?;
            derive_key(session.get(), object, inputs).map_err(backend("C_Sign"))
        })();
        session
            .get()
            .destroy_object(object)
            .map_err(backend("C_DestroyObject"))?;
        result
    }

    fn ensure_signing_key(&self) -> Result<[u8; 32], ModuleError> {
        let _change = lock(&self.token.changes);
        let session = self.session()?;
        if let Some(public) = self.governance(session.get(), ObjectClass::PUBLIC_KEY)? {
            return self.public_key(session.get(), public);
        }
        self.generate_root(session.get(), GOVERNANCE)
    }

    fn signing_public_key(&self) -> Result<Option<[u8; 32]>, ModuleError> {
        let session = self.session()?;
        match self.governance(session.get(), ObjectClass::PUBLIC_KEY)? {
            Some(public) => self.public_key(session.get(), public).map(Some),
            None => Ok(None),
        }
    }

    fn sign(&self, message: &[u8]) -> Result<[u8; 64], ModuleError> {
        let session = self.session()?;
        let private = self
            .governance(session.get(), ObjectClass::PRIVATE_KEY)?
            .ok_or(ModuleError::NoSigningKey)?;
        eddsa_sign(session.get(), private, message)
    }

    fn import_signing_key(&self, seed: &SigningSeed) -> Result<[u8; 32], ModuleError> {
        let _change = lock(&self.token.changes);
        let session = self.session()?;
        if !self
            .governance_objects(session.get(), GOVERNANCE)?
            .is_empty()
        {
            return Err(ModuleError::SigningKeyExists);
        }
        self.import_root(session.get(), GOVERNANCE, seed)
    }

    fn stage_signing_key(&self, seed: Option<&SigningSeed>) -> Result<[u8; 32], ModuleError> {
        let _change = lock(&self.token.changes);
        let session = self.session()?;
        if self
            .governance(session.get(), ObjectClass::PRIVATE_KEY)?
            .is_none()
        {
            return Err(ModuleError::NoSigningKey);
        }
        self.destroy_governance(session.get(), GOVERNANCE_NEXT)?;
        match seed {
            Some(seed) => self.import_root(session.get(), GOVERNANCE_NEXT, seed),
            None => self.generate_root(session.get(), GOVERNANCE_NEXT),
        }
    }

    fn staged_signing_public_key(&self) -> Result<Option<[u8; 32]>, ModuleError> {
        let session = self.session()?;
        match self.governance_role(session.get(), ObjectClass::PUBLIC_KEY, GOVERNANCE_NEXT)? {
            Some(public) => self.public_key(session.get(), public).map(Some),
            None => Ok(None),
        }
    }

    fn promote_signing_key(&self) -> Result<[u8; 32], ModuleError> {
        let _change = lock(&self.token.changes);
        let session = self.session()?;
        let s = session.get();
        let (Some(public), Some(_private)) = (
            self.governance_role(s, ObjectClass::PUBLIC_KEY, GOVERNANCE_NEXT)?,
            self.governance_role(s, ObjectClass::PRIVATE_KEY, GOVERNANCE_NEXT)?,
        ) else {
            return Err(ModuleError::NoStagedSigningKey);
        };
        let key = self.public_key(s, public)?;
        // The old root's objects are destroyed first; a crash before the relabel leaves only the
        // staged root, which the next promote finishes.
        self.destroy_governance(s, GOVERNANCE)?;
        let label = self.id(GOVERNANCE);
        for handle in self.governance_objects(s, GOVERNANCE_NEXT)? {
            s.update_attributes(
                handle,
                &[
                    Attribute::Label(label.clone()),
                    Attribute::Id(label.clone()),
                ],
            )
            .map_err(backend("C_SetAttributeValue"))?;
        }
        Ok(key)
    }
}

/// An Ed25519 signature (`CKM_EDDSA`) by a token key.
fn eddsa_sign(
    session: &Session,
    private: ObjectHandle,
    message: &[u8],
) -> Result<[u8; 64], ModuleError> {
    let mechanism = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Ed25519));
    let signature = session
        .sign(&mechanism, private, message)
        .map_err(|e| match rv(&e) {
            Some(RvError::MechanismInvalid) => ModuleError::Unsupported("CKM_EDDSA on this token"),
            _ => backend("C_Sign")(e),
        })?;
    signature
        .as_slice()
        .try_into()
        .map_err(|_| ModuleError::Backend {
            operation: "C_Sign",
            detail: format!("an Ed25519 signature of {} bytes", signature.len()),
        })
}

/// A bulk deriver: its own session and, where the token allows, a session copy of the master.
struct Pkcs11BulkDeriver<'a> {
    token: &'a Token,
    session: Option<Session>,
    generation: Generation,
    key: ObjectHandle,
    copy: Option<ObjectHandle>,
    master: Arc<Master>,
}

impl BulkDeriver for Pkcs11BulkDeriver<'_> {
    fn derive_into(
        &mut self,
        inputs: &DeviceKeyInputs<'_>,
        out: &mut [u8],
    ) -> Result<(), ModuleError> {
        if !self.master.alive.load(Ordering::Acquire) {
            return Err(ModuleError::NoMaster(self.generation.0));
        }
        check_generation(self.generation, inputs)?;
        if out.len() != inputs.usage.key_len() {
            return Err(ModuleError::Unsupported(
                "an output buffer of another length than the usage's key",
            ));
        }
        let session = self
            .session
            .as_ref()
            .ok_or(ModuleError::NoMaster(self.generation.0))?;
        hmac_derive(session, self.key, inputs, out).map_err(|e| {
            if !self.master.alive.load(Ordering::Acquire)
                || matches!(
                    rv(&e),
                    Some(RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid)
                )
            {
                ModuleError::NoMaster(self.generation.0)
            } else {
                backend("C_Sign")(e)
            }
        })
    }
}

impl Drop for Pkcs11BulkDeriver<'_> {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            if let Some(copy) = self.copy {
                let mut copies = lock(&self.master.copies);
                if let Some(i) = copies.iter().position(|c| *c == copy) {
                    copies.swap_remove(i);
                    let _ = session.destroy_object(copy);
                }
            }
            self.token.give_back(session);
        }
    }
}

/// The usage attributes of a secret key, every one set explicitly (SoftHSM's defaults are
/// permissive, so a template that leaves one out grants it): true for those in `allowed`, false
/// for the rest.
fn secret_usages(allowed: &[AttributeType]) -> impl Iterator<Item = Attribute> + '_ {
    type Usage = (AttributeType, fn(bool) -> Attribute);
    const USAGES: [Usage; 7] = [
        (AttributeType::Sign, Attribute::Sign),
        (AttributeType::Verify, Attribute::Verify),
        (AttributeType::Encrypt, Attribute::Encrypt),
        (AttributeType::Decrypt, Attribute::Decrypt),
        (AttributeType::Wrap, Attribute::Wrap),
        (AttributeType::Unwrap, Attribute::Unwrap),
        (AttributeType::Derive, Attribute::Derive),
    ];
    USAGES
        .into_iter()
        .map(move |(usage, attribute)| attribute(allowed.contains(&usage)))
}
#[cfg(test)]
mod tests;
