//! The governance root: an Ed25519 key pair (`CKM_EC_EDWARDS_KEY_PAIR_GEN`, `CKM_EDDSA`)
//! under the role `governance`, generated in the token or imported from a seed and proven by one
//! signature; during a root rotation the next root is staged under `governance-next` and
//! promoted by destroying the old objects and relabelling the new ones.

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use zeroize::Zeroize as _;

use super::session::create_retrying;
use super::templates::ED25519_OID;
use super::token::{backend, rv};
use super::{Pkcs11Module, SigningSeed, lock};
use crate::error::ModuleError;

/// The role of the governance root's objects.
pub(super) const GOVERNANCE: &str = "governance";
/// The role of the next governance root, staged during a root rotation.
pub(super) const GOVERNANCE_NEXT: &str = "governance-next";

impl Pkcs11Module {
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

    pub(super) fn governance(
        &self,
        session: &Session,
        class: ObjectClass,
    ) -> Result<Option<ObjectHandle>, ModuleError> {
        self.governance_role(session, class, GOVERNANCE)
    }

    /// The token object of a governance root role ([`GOVERNANCE`] or [`GOVERNANCE_NEXT`]).
    pub(super) fn governance_role(
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
    pub(super) fn governance_objects(
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

    pub(super) fn destroy_governance(
        &self,
        session: &Session,
        role: &str,
    ) -> Result<(), ModuleError> {
        for handle in self.governance_objects(session, role)? {
            session
                .destroy_object(handle)
                .map_err(backend("C_DestroyObject"))?;
        }
        Ok(())
    }

    /// Generates an Ed25519 key pair in the token under `role`; returns its public key.
    pub(super) fn generate_root(
        &self,
        session: &Session,
        role: &str,
    ) -> Result<[u8; 32], ModuleError> {
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
    pub(super) fn import_root(
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

    pub(super) fn public_key(
        &self,
        session: &Session,
        handle: ObjectHandle,
    ) -> Result<[u8; 32], ModuleError> {
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
}

/// [`KeyModule::ensure_signing_key`](crate::module::KeyModule::ensure_signing_key).
pub(super) fn ensure(module: &Pkcs11Module) -> Result<[u8; 32], ModuleError> {
    let _change = lock(&module.token.changes);
    let session = module.session()?;
    if let Some(public) = module.governance(session.get(), ObjectClass::PUBLIC_KEY)? {
        return module.public_key(session.get(), public);
    }
    module.generate_root(session.get(), GOVERNANCE)
}

/// [`KeyModule::signing_public_key`](crate::module::KeyModule::signing_public_key).
pub(super) fn public(module: &Pkcs11Module) -> Result<Option<[u8; 32]>, ModuleError> {
    let session = module.session()?;
    match module.governance(session.get(), ObjectClass::PUBLIC_KEY)? {
        Some(public) => module.public_key(session.get(), public).map(Some),
        None => Ok(None),
    }
}

/// [`KeyModule::sign`](crate::module::KeyModule::sign).
pub(super) fn sign(module: &Pkcs11Module, message: &[u8]) -> Result<[u8; 64], ModuleError> {
    let session = module.session()?;
    let private = module
        .governance(session.get(), ObjectClass::PRIVATE_KEY)?
        .ok_or(ModuleError::NoSigningKey)?;
    eddsa_sign(session.get(), private, message)
}

/// [`KeyModule::import_signing_key`](crate::module::KeyModule::import_signing_key).
pub(super) fn import(module: &Pkcs11Module, seed: &SigningSeed) -> Result<[u8; 32], ModuleError> {
    let _change = lock(&module.token.changes);
    let session = module.session()?;
    if !module
        .governance_objects(session.get(), GOVERNANCE)?
        .is_empty()
    {
        return Err(ModuleError::SigningKeyExists);
    }
    module.import_root(session.get(), GOVERNANCE, seed)
}

/// [`KeyModule::stage_signing_key`](crate::module::KeyModule::stage_signing_key).
pub(super) fn stage(
    module: &Pkcs11Module,
    seed: Option<&SigningSeed>,
) -> Result<[u8; 32], ModuleError> {
    let _change = lock(&module.token.changes);
    let session = module.session()?;
    if module
        .governance(session.get(), ObjectClass::PRIVATE_KEY)?
        .is_none()
    {
        return Err(ModuleError::NoSigningKey);
    }
    module.destroy_governance(session.get(), GOVERNANCE_NEXT)?;
    match seed {
        Some(seed) => module.import_root(session.get(), GOVERNANCE_NEXT, seed),
        None => module.generate_root(session.get(), GOVERNANCE_NEXT),
    }
}

/// [`KeyModule::staged_signing_public_key`](crate::module::KeyModule::staged_signing_public_key).
pub(super) fn staged_public(module: &Pkcs11Module) -> Result<Option<[u8; 32]>, ModuleError> {
    let session = module.session()?;
    match module.governance_role(session.get(), ObjectClass::PUBLIC_KEY, GOVERNANCE_NEXT)? {
        Some(public) => module.public_key(session.get(), public).map(Some),
        None => Ok(None),
    }
}

/// [`KeyModule::promote_signing_key`](crate::module::KeyModule::promote_signing_key).
pub(super) fn promote(module: &Pkcs11Module) -> Result<[u8; 32], ModuleError> {
    let _change = lock(&module.token.changes);
    let session = module.session()?;
    let s = session.get();
    let (Some(public), Some(_private)) = (
        module.governance_role(s, ObjectClass::PUBLIC_KEY, GOVERNANCE_NEXT)?,
        module.governance_role(s, ObjectClass::PRIVATE_KEY, GOVERNANCE_NEXT)?,
    ) else {
        return Err(ModuleError::NoStagedSigningKey);
    };
    let key = module.public_key(s, public)?;
    // The old root's objects are destroyed first; a crash before the relabel leaves only the
    // staged root, which the next promote finishes.
    module.destroy_governance(s, GOVERNANCE)?;
    let label = module.id(GOVERNANCE);
    for handle in module.governance_objects(s, GOVERNANCE_NEXT)? {
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

/// An Ed25519 signature (`CKM_EDDSA`) by a token key.
pub(super) fn eddsa_sign(
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

/// An Ed25519 public key from `CKA_EC_POINT`: a DER OCTET STRING (PKCS#11 3.0) or the raw 32
/// bytes (some tokens).
pub(super) fn ec_point(point: &[u8]) -> Option<[u8; 32]> {
    match point {
        [0x04, 0x20, rest @ ..] if rest.len() == 32 => rest.try_into().ok(),
        raw if raw.len() == 32 => raw.try_into().ok(),
        _ => None,
    }
}
