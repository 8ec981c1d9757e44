//! Sessions and objects: a session borrowed from the token's pool for one operation, the
//! searches every concept uses, and the retried creation of token objects.

use cryptoki::error::RvError;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use super::Pkcs11Module;
use super::token::{Token, backend, rv};
use crate::error::ModuleError;

/// A pooled session, given back on drop.
pub(super) struct Pooled<'a> {
    token: &'a Token,
    session: Option<Session>,
}

impl Pooled<'_> {
    pub(super) fn get(&self) -> &Session {
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
    pub(super) fn session(&self) -> Result<Pooled<'_>, ModuleError> {
        Ok(Pooled {
            token: &self.token,
            session: Some(self.token.session()?),
        })
    }

    pub(super) fn find(
        &self,
        session: &Session,
        template: &[Attribute],
    ) -> Result<Vec<ObjectHandle>, ModuleError> {
        session
            .find_objects(template)
            .map_err(backend("C_FindObjects"))
    }

    pub(super) fn find_secret(
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
}

/// Runs the creation of token objects, retrying after `CKR_GENERAL_ERROR` or
/// `CKR_TEMPLATE_INCONSISTENT` (SoftHSM 2.6.1 answers either now and then, for a template it
/// accepts otherwise, while other threads use the token) once whatever the failed attempt left
/// (`leftovers`) is destroyed; at most three retries, so a template that is really wrong still
/// fails.
pub(super) fn create_retrying<T>(
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
