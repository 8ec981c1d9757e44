//! Console sessions: who signed in on this instance with which token.
//!
//! A session is created by signing in with an API token. The browser holds only a random session
//! id, in an `HttpOnly`, `SameSite=Strict` cookie (`Secure` on TLS); the token stays here, in
//! memory, zeroized when the session ends. Every request re-authenticates the session's token (the
//! token cache, then the store), so a revoked or expired token ends its sessions within the
//! token cache's bound. Sessions end after [`IDLE`] without a request, [`MAX_AGE`] after sign-in,
//! at sign-out, and when the service restarts; another instance does not know them (sign in
//! there again). The map is keyed by the SHA-256 of the id: a lookup compares no secret bytes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// A session ends after this long without a request.
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after sign-in, used or not.
pub const MAX_AGE: Duration = Duration::from_secs(12 * 3600);
/// Sessions at most; signing in beyond it ends the least recently used one.
const MAX_SESSIONS: usize = 10_000;

/// The cookie that carries the session id.
pub const COOKIE: &str = "fleetkey_session";

struct Entry {
    bearer: Zeroizing<String>,
    csrf: String,
    flash: Option<String>,
    created: Instant,
    seen: Instant,
}

/// A signed-in session, as a request sees it. Debug shows neither the token nor the form key.
pub struct Session {
    key: [u8; 32],
    /// The API token the user signed in with.
    pub bearer: Zeroizing<String>,
    /// The anti-forgery value every form of this session carries.
    pub csrf: String,
    /// A message left by the previous request (a redirect after a change).
    pub flash: Option<String>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

impl Session {
    /// Whether a form's anti-forgery value is this session's (constant-time).
    pub fn form_is_ours(&self, value: &str) -> bool {
        use subtle::ConstantTimeEq;
        value.len() == self.csrf.len() && bool::from(value.as_bytes().ct_eq(self.csrf.as_bytes()))
    }
}

/// The sessions of this instance.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Entry>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("count", &self.map().len())
            .finish()
    }
}

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

fn random_hex() -> Option<String> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    getrandom::fill(bytes.as_mut()).ok()?;
    Some(hex::encode(&bytes[..]))
}

impl Sessions {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new session for `bearer`; returns the cookie value (the session id). `None` when the
    /// system has no randomness to give.
    pub fn create(&self, bearer: Zeroizing<String>) -> Option<Zeroizing<String>> {
        let id = Zeroizing::new(random_hex()?);
        let csrf = random_hex()?;
        let now = Instant::now();
        let mut map = self.map();
        map.retain(|_, e| live(e, now));
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, e)| e.seen).map(|(k, _)| *k)
        {
            map.remove(&oldest);
        }
        map.insert(
            key(&id),
            Entry {
                bearer,
                csrf,
                flash: None,
                created: now,
                seen: now,
            },
        );
        Some(id)
    }

    /// The live session with this id (its flash message taken), or `None`: unknown, tampered,
    /// idle too long or too old.
    pub fn get(&self, id: &str) -> Option<Session> {
        let k = key(id);
        let now = Instant::now();
        let mut map = self.map();
        let entry = map.get_mut(&k)?;
        if !live(entry, now) {
            map.remove(&k);
            return None;
        }
        entry.seen = now;
        Some(Session {
            key: k,
            bearer: entry.bearer.clone(),
            csrf: entry.csrf.clone(),
            flash: entry.flash.take(),
        })
    }

    /// Leaves a message for the session's next page.
    pub fn flash(&self, session: &Session, message: String) {
        if let Some(e) = self.map().get_mut(&session.key) {
            e.flash = Some(message);
        }
    }

    /// Ends a session.
    pub fn end(&self, session: &Session) {
        self.map().remove(&session.key);
    }
}

fn live(e: &Entry, now: Instant) -> bool {
    now.duration_since(e.seen) < IDLE && now.duration_since(e.created) < MAX_AGE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_id_only_and_ends() {
        let sessions = Sessions::default();
        let id = sessions.create(Zeroizing::new("fk_token".into())).unwrap();
        assert_eq!(id.len(), 64);
        let s = sessions.get(&id).unwrap();
        assert_eq!(s.bearer.as_str(), "fk_token");
        assert!(s.form_is_ours(&s.csrf.clone()));
        assert!(!s.form_is_ours("0"));
        assert!(!s.form_is_ours(&"0".repeat(64)));
        // A tampered id (one character changed) finds nothing.
        let mut tampered = id.to_string();
        tampered.replace_range(0..1, if id.starts_with('0') { "1" } else { "0" });
        assert!(sessions.get(&tampered).is_none());
        sessions.flash(&s, "done".into());
        assert_eq!(sessions.get(&id).unwrap().flash.as_deref(), Some("done"));
        assert_eq!(
            sessions.get(&id).unwrap().flash,
            None,
            "a flash is shown once"
        );
        sessions.end(&s);
        assert!(sessions.get(&id).is_none());
        assert!(!format!("{s:?}").contains("fk_token"));
    }
}
