//! The HTTP service's access records: tokens (issue, revoke, list, authenticate) and idempotency
//! records (claim, finish, release). Token issue and revoke are audit events; the token's text
//! and hash never are.

use crate::access::{
    ApiToken, IdempotencyRecord, Role, TokenSecret, new_token, token_hash,
    validate_idempotency_key, validate_principal,
};
use crate::error::{Error, StoreError};
use crate::model::UnixMillis;
use crate::store::{read_tx, transact};

use super::Fleet;

/// What the store says of an idempotency key when a request claims it. Debug shows a replay's
/// status and length, never its body.
pub enum Claim {
    /// The key is new: it is now claimed by this request, which must [`Fleet::finish_idempotent`]
    /// or [`Fleet::release_idempotent`] it.
    New,
    /// The first request with this key finished: its status and body (unwrapped; can carry key
    /// material).
    Replay(u16, zeroize::Zeroizing<Vec<u8>>),
    /// The first request with this key has not finished (or its outcome is unknown).
    InProgress,
    /// The key was used with another request.
    Mismatch,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Claim::New => f.write_str("New"),
            Claim::Replay(status, body) => f
                .debug_struct("Replay")
                .field("status", status)
                .field("body_len", &body.len())
                .finish_non_exhaustive(),
            Claim::InProgress => f.write_str("InProgress"),
            Claim::Mismatch => f.write_str("Mismatch"),
        }
    }
}

impl Fleet {
    /// Issues a service token to `principal` with `role`; `subject` is a technician's grant
    /// subject. Returns the record and the token's text, which exists nowhere else: show it once.
    pub fn issue_token(
        &mut self,
        principal: &str,
        role: Role,
        subject: Option<&str>,
        expires_at: Option<UnixMillis>,
    ) -> Result<(ApiToken, TokenSecret), Error> {
        validate_principal(principal)?;
        match (role, subject) {
            (Role::Technician, None) => {
                return Err(Error::invalid(
                    "subject",
                    "a technician token needs --subject: the grant subject whose grants it reads",
                ));
            }
            (Role::Technician, Some(s)) if s.is_empty() || s.len() > 128 => {
                return Err(Error::invalid("subject", "1 to 128 characters"));
            }
            (Role::Technician, Some(_)) => {}
            (_, Some(_)) => {
                return Err(Error::invalid(
                    "subject",
                    "only technician tokens have a subject",
                ));
            }
            (_, None) => {}
        }
        let now = self.access.clock.now_ms();
        if expires_at.is_some_and(|e| e <= now) {
            return Err(Error::invalid("expires", "must be in the future"));
        }
        // The lifecycle policy's default and maximum token lifetimes.
        let expires_at = Some(self.token_expiry(expires_at, now)?);
        let (id, secret) = new_token()?;
        let token = ApiToken {
            id,
            hash: token_hash(secret.expose()),
            principal: principal.to_owned(),
            role,
            subject: subject.map(str::to_owned),
            fleet: self.config.fleet_id.clone(),
            created_at: now,
            created_by: self.access.actor.clone(),
            expires_at,
            revoked_at: None,
        };
        let draft = self.draft(
            "token.issue",
            None,
            vec![],
            serde_json::json!({"token": token.id, "principal": principal, "role": role,
                               "subject": subject, "expires_at": expires_at}),
        );
        transact(self.store.as_mut(), |tx| {
            tx.insert_token(&token)?;
            tx.append_audit(draft.clone())?;
            Ok(())
        })?;
        Ok((token, secret))
    }

    /// Revokes a token by id: it stops authenticating at once, on every instance.
    pub fn revoke_token(&mut self, id: &str, reason: &str) -> Result<ApiToken, Error> {
        let now = self.access.clock.now_ms();
        let draft = self.draft(
            "token.revoke",
            None,
            vec![],
            serde_json::json!({"token": id, "reason": reason}),
        );
        transact(self.store.as_mut(), |tx| {
            let mut token = tx
                .token(id)?
                .ok_or_else(|| Error::NoSuchToken(id.to_owned()))?;
            if token.revoked_at.is_none() {
                token.revoked_at = Some(now);
                tx.update_token(&token)?;
                let mut d = draft.clone();
                d.details = serde_json::json!({"token": id, "principal": token.principal,
                                               "role": token.role, "reason": reason});
                tx.append_audit(d)?;
            }
            Ok(token)
        })
    }

    /// Every token (no token text: the store has none).
    pub fn tokens(&mut self) -> Result<Vec<ApiToken>, Error> {
        read_tx(self.store.as_mut(), |tx| Ok(tx.tokens()?))
    }

    /// The token whose text is `text`, if it is of this fleet, not revoked and not expired.
    pub fn authenticate_token(&mut self, text: &str) -> Result<Option<ApiToken>, Error> {
        use subtle::ConstantTimeEq;
        let hash = token_hash(text);
        let now = self.access.clock.now_ms();
        let fleet = self.config.fleet_id.clone();
        let found = read_tx(self.store.as_mut(), |tx| Ok(tx.token_by_hash(&hash)?))?;
        Ok(found
            .filter(|t| bool::from(t.hash.ct_eq(&hash)) && t.fleet == fleet && t.usable_at(now)))
    }

    /// Claims `key` for `principal`'s request with `fingerprint`, or says what the first request
    /// with that key did.
    pub fn claim_idempotent(
        &mut self,
        principal: &str,
        key: &str,
        fingerprint: [u8; 32],
    ) -> Result<Claim, Error> {
        use subtle::ConstantTimeEq;
        validate_idempotency_key(key)?;
        let now = self.access.clock.now_ms();
        let found = transact(self.store.as_mut(), |tx| {
            let found = tx.idempotency(principal, key)?;
            if found.is_none() {
                tx.insert_idempotency(&IdempotencyRecord {
                    principal: principal.to_owned(),
                    key: key.to_owned(),
                    fingerprint,
                    created_at: now,
                    response: None,
                })?;
            }
            Ok(found)
        });
        let found = match found {
            // Another instance claimed it between our read and insert.
            Err(Error::Store(StoreError::Duplicate(_))) => return Ok(Claim::InProgress),
            other => other?,
        };
        Ok(match found {
            None => Claim::New,
            Some(r) if !bool::from(r.fingerprint.ct_eq(&fingerprint)) => Claim::Mismatch,
            Some(IdempotencyRecord { response: None, .. }) => Claim::InProgress,
            Some(IdempotencyRecord {
                response: Some((status, wrapped)),
                ..
            }) => Claim::Replay(status, self.module.get()?.unwrap(&wrapped)?),
        })
    }

    /// Records the response of a claimed request, wrapped under the key module's KEK.
    pub fn finish_idempotent(
        &mut self,
        principal: &str,
        key: &str,
        status: u16,
        body: &[u8],
    ) -> Result<(), Error> {
        let wrapped = self.module.get()?.wrap(body)?;
        transact(self.store.as_mut(), |tx| {
            let mut record = tx
                .idempotency(principal, key)?
                .ok_or_else(|| StoreError::NotFound(format!("idempotency key {key}")))?;
            record.response = Some((status, wrapped.clone()));
            tx.update_idempotency(&record)?;
            Ok(())
        })
    }

    /// Drops a claim whose request failed in a way worth retrying with the same key.
    pub fn release_idempotent(&mut self, principal: &str, key: &str) -> Result<(), Error> {
        transact(self.store.as_mut(), |tx| {
            Ok(tx.delete_idempotency(principal, key)?)
        })
    }
}

impl Fleet {
    /// Sets who acts from now on (the HTTP service sets each request's principal on the pooled
    /// handle that serves it).
    pub fn set_actor(&mut self, actor: &str) {
        if self.access.actor != actor {
            actor.clone_into(&mut self.access.actor);
        }
    }

    /// Who acts.
    pub fn actor(&self) -> &str {
        &self.access.actor
    }

    /// Now, by the fleet's clock (token expiries are on it).
    pub fn now_ms(&self) -> UnixMillis {
        self.access.clock.now_ms()
    }

    /// The fleet's clock.
    pub fn clock(&self) -> std::sync::Arc<dyn super::Clock> {
        std::sync::Arc::clone(&self.access.clock)
    }
}
