//! Masters: one `CKK_GENERIC_SECRET` token object per generation, labelled
//! `fleetkey:<namespace>:master:<generation>`, found through a per-module cache, created
//! (generated or imported) one at a time per token, and derivation v1 in the token: one `C_Sign`
//! with `CKM_SHA256_HMAC` over `info || 0x01`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use fleetkey_core::MasterKey;
use fleetkey_core::derive::{DeviceKey, DeviceKeyInputs, Generation, MAX_INFO_LEN};
use zeroize::{Zeroize as _, Zeroizing};

use super::session::create_retrying;
use super::token::{backend, rv};
use super::{Pkcs11Module, lock};
use crate::error::ModuleError;

impl Pkcs11Module {
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

    pub(super) fn find_master(
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

    /// The generation's master, from the cache or the token.
    pub(super) fn master(&self, generation: Generation) -> Result<Arc<Master>, ModuleError> {
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

    /// Creates a master object with `make`, refusing a generation that has one.
    pub(super) fn add_master(
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
}

/// A master's token object and the session copies bulk derivers made of it.
pub(super) struct Master {
    pub(super) handle: ObjectHandle,
    pub(super) alive: AtomicBool,
    pub(super) copies: Mutex<Vec<ObjectHandle>>,
}

/// [`KeyModule::create_master`](crate::module::KeyModule::create_master).
pub(super) fn create(module: &Pkcs11Module, generation: Generation) -> Result<(), ModuleError> {
    let mut template = module.master_template(generation);
    template.push(Attribute::ValueLen(32.into()));
    module.add_master(
        generation,
        |session| session.generate_key(&Mechanism::GenericSecretKeyGen, &template),
        backend("C_GenerateKey"),
    )
}

/// [`KeyModule::import_master`](crate::module::KeyModule::import_master).
pub(super) fn import(
    module: &Pkcs11Module,
    generation: Generation,
    master: &MasterKey,
) -> Result<(), ModuleError> {
    let mut template = module.master_template(generation);
    template.push(Attribute::Value(master.expose_secret().to_vec()));
    let result = module.add_master(
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

/// [`KeyModule::masters`](crate::module::KeyModule::masters).
pub(super) fn list(module: &Pkcs11Module) -> Result<Vec<Generation>, ModuleError> {
    let session = module.session()?;
    let handles = module.find(
        session.get(),
        &[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Token(true),
            Attribute::Id(module.id("master")),
        ],
    )?;
    let prefix = format!("fleetkey:{}:master:", module.namespace);
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

/// [`KeyModule::derive`](crate::module::KeyModule::derive).
pub(super) fn derive(
    module: &Pkcs11Module,
    inputs: &DeviceKeyInputs<'_>,
) -> Result<DeviceKey, ModuleError> {
    let generation = inputs.generation;
    let master = module.master(generation)?;
    let session = module.session()?;
    derive_key(session.get(), master.handle, inputs).map_err(|e| {
        if matches!(
            rv(&e),
            Some(RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid)
        ) {
            lock(&module.masters).remove(&generation.0);
            ModuleError::NoMaster(generation.0)
        } else {
            backend("C_Sign")(e)
        }
    })
}

/// [`KeyModule::destroy_master`](crate::module::KeyModule::destroy_master).
pub(super) fn destroy(module: &Pkcs11Module, generation: Generation) -> Result<(), ModuleError> {
    let _change = lock(&module.token.changes);
    let session = module.session()?;
    let found = module.find_master(session.get(), generation)?;
    if found.is_empty() {
        lock(&module.masters).remove(&generation.0);
        return Err(ModuleError::NoMaster(generation.0));
    }
    if let Some(master) = lock(&module.masters).remove(&generation.0) {
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

/// Derivation v1 in the token: HMAC-SHA256(key, info || 0x01), truncated into `out`.
pub(super) fn hmac_derive(
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

pub(super) fn derive_key(
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
