//! The stored scheme's key-encryption key: an AES-256 token key, wrap and unwrap only,
//! `CKM_AES_KEY_WRAP_PAD` (RFC 5649), so blobs are those the soft module makes under the same
//! KEK value. Raw bytes are wrapped through a short-lived session object; a device root is
//! generated, wrapped and, to derive, unwrapped into a sensitive session object without ever
//! being in host memory.

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectHandle};
use cryptoki::session::Session;
use fleetkey_core::derive::{DeviceKey, DeviceKeyInputs};
use zeroize::{Zeroize as _, Zeroizing};

use super::masters::derive_key;
use super::session::create_retrying;
use super::templates;
use super::token::{backend, unwrap_failure};
use super::{Pkcs11Module, lock};
use crate::error::ModuleError;
use crate::model::WrappedKey;

impl Pkcs11Module {
    pub(super) fn kek(&self, session: &Session) -> Result<ObjectHandle, ModuleError> {
        self.find_secret(session, "kek")?.ok_or(ModuleError::NoKek)
    }

    /// Unwraps `blob` under the KEK into a session object made from `template`; the integrity
    /// check failing is [`ModuleError::Unwrap`].
    pub(super) fn unwrap_object(
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
            .map_err(unwrap_failure)
    }

    /// A root unwrapped from a 40-byte blob is 25 to 32 bytes: it is a device root only when it
    /// is 32. Tokens that report `CKA_VALUE_LEN` after C_UnwrapKey answer directly; SoftHSM
    /// reports 0, and then RFC 3394 wrapping (whole semiblocks only) under the KEK tells 32 from
    /// 25..=31 without the root leaving the token.
    pub(super) fn check_root_length(
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
    pub(super) fn wrap_by_blocks(
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

/// [`KeyModule::ensure_kek`](crate::module::KeyModule::ensure_kek).
pub(super) fn ensure(module: &Pkcs11Module) -> Result<(), ModuleError> {
    let _change = lock(&module.token.changes);
    let session = module.session()?;
    if module.find_secret(session.get(), "kek")?.is_some() {
        return Ok(());
    }
    let template = module.kek_template();
    create_retrying(
        session.get(),
        |s| Ok(module.find_secret(s, "kek")?.into_iter().collect()),
        |s| s.generate_key(&Mechanism::AesKeyGen, &template),
        backend("C_GenerateKey"),
    )?;
    Ok(())
}

/// [`KeyModule::wrap`](crate::module::KeyModule::wrap).
pub(super) fn wrap(module: &Pkcs11Module, key: &[u8]) -> Result<WrappedKey, ModuleError> {
    if key.is_empty() {
        return Err(ModuleError::Unsupported(
            "wrapping an empty key (RFC 5649 needs at least one byte)",
        ));
    }
    let session = module.session()?;
    let kek = module.kek(session.get())?;
    if !key.len().is_multiple_of(8) {
        return module
            .wrap_by_blocks(session.get(), kek, key)
            .map(WrappedKey);
    }
    let mut template = templates::key_to_wrap(key);
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

/// [`KeyModule::unwrap`](crate::module::KeyModule::unwrap).
pub(super) fn unwrap(
    module: &Pkcs11Module,
    wrapped: &WrappedKey,
) -> Result<Zeroizing<Vec<u8>>, ModuleError> {
    let session = module.session()?;
    let object = module.unwrap_object(session.get(), wrapped, &templates::unwrapped_key())?;
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

/// [`KeyModule::new_wrapped_root`](crate::module::KeyModule::new_wrapped_root).
pub(super) fn new_wrapped_root(module: &Pkcs11Module) -> Result<WrappedKey, ModuleError> {
    let session = module.session()?;
    let kek = module.kek(session.get())?;
    let root = session
        .get()
        .generate_key(
            &Mechanism::GenericSecretKeyGen,
            &templates::new_device_root(),
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

/// [`KeyModule::derive_with_root`](crate::module::KeyModule::derive_with_root).
pub(super) fn derive_with_root(
    module: &Pkcs11Module,
    root: &WrappedKey,
    inputs: &DeviceKeyInputs<'_>,
) -> Result<DeviceKey, ModuleError> {
    // A 32-byte root wraps to 40 bytes; any other blob is not a device root.
    if root.0.len() != 40 {
        return Err(ModuleError::Unwrap);
    }
    let session = module.session()?;
    let object = module.unwrap_object(session.get(), root, &templates::unwrapped_device_root())?;
    let result = (|| {
        module.check_root_length(session.get(), object)?;
        derive_key(session.get(), object, inputs).map_err(backend("C_Sign"))
    })();
    session
        .get()
        .destroy_object(object)
        .map_err(backend("C_DestroyObject"))?;
    result
}
