//! Bearer tokens already looked up, kept for a short while: most requests authenticate without a
//! store transaction.
//!
//! The bound: a token revoked through this instance (`POST /v1/tokens/{id}/revoke`, the console)
//! stops working here at once (the revocation empties the cache before it answers). A token
//! revoked anywhere else (another instance, `fleetkey token revoke`) stops working here within
//! the cache's time to live ([`ServiceConfig::token_cache_ttl`](crate::ServiceConfig), 1 s by
//! default, `--token-cache-ms`): an entry older than that is looked up again. Expiry is checked
//! on every request against the cached expiry, so an expired token never works. Unknown, revoked
//! and expired tokens are never cached.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fleetkey::access::ApiToken;

/// Entries at most; a full cache is emptied (the next requests look their tokens up again).
const MAX_ENTRIES: usize = 4096;

/// The cache.
#[derive(Debug)]
pub struct TokenCache {
    ttl: Duration,
    entries: Mutex<HashMap<[u8; 32], (ApiToken, Instant)>>,
    /// Bumped by every invalidation: a lookup that began before one does not fill the cache.
    epoch: AtomicU64,
}

/// Where a lookup began ([`TokenCache::begin`]), to fill the cache with its result.
#[derive(Clone, Copy, Debug)]
pub struct Lookup(u64);

impl TokenCache {
    /// A cache whose entries live `ttl` (zero: nothing is cached).
    pub fn new(ttl: Duration) -> Self {
        TokenCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
        }
    }

    /// The time to live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (ApiToken, Instant)>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The token with this hash, if it was looked up less than the time to live ago.
    pub fn get(&self, hash: &[u8; 32]) -> Option<ApiToken> {
        let mut entries = self.entries();
        match entries.get(hash) {
            Some((token, at)) if at.elapsed() < self.ttl => Some(token.clone()),
            Some(_) => {
                entries.remove(hash);
                None
            }
            None => None,
        }
    }

    /// Marks the start of a store lookup.
    pub fn begin(&self) -> Lookup {
        Lookup(self.epoch.load(Ordering::Acquire))
    }

    /// Keeps a token the store returned, unless the cache was invalidated since `lookup` began
    /// (the token read may predate a revocation).
    pub fn put(&self, lookup: Lookup, hash: [u8; 32], token: ApiToken) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries();
        if self.epoch.load(Ordering::Acquire) != lookup.0 {
            return;
        }
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(hash, (token, Instant::now()));
    }

    /// Forgets every token (a token was revoked through this instance).
    pub fn invalidate(&self) {
        let mut entries = self.entries();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetkey::access::Role;

    fn token(id: &str) -> ApiToken {
        ApiToken {
            id: id.into(),
            fleet: "f".into(),
            principal: "p".into(),
            role: Role::Station,
            subject: None,
            hash: [7; 32],
            created_at: 0,
            created_by: "admin".into(),
            expires_at: None,
            revoked_at: None,
        }
    }

    #[test]
    fn entries_expire_and_invalidation_wins_over_a_lookup_in_flight() {
        let cache = TokenCache::new(Duration::from_millis(50));
        let l = cache.begin();
        cache.put(l, [1; 32], token("a"));
        assert_eq!(cache.get(&[1; 32]).map(|t| t.id), Some("a".into()));
        std::thread::sleep(Duration::from_millis(60));
        assert!(
            cache.get(&[1; 32]).is_none(),
            "an entry older than the ttl is gone"
        );

        let in_flight = cache.begin();
        cache.invalidate();
        cache.put(in_flight, [2; 32], token("b"));
        assert!(
            cache.get(&[2; 32]).is_none(),
            "a lookup begun before a revocation must not fill the cache"
        );
        cache.put(cache.begin(), [2; 32], token("b"));
        cache.invalidate();
        assert!(cache.get(&[2; 32]).is_none());
    }

    #[test]
    fn a_zero_ttl_caches_nothing() {
        let cache = TokenCache::new(Duration::ZERO);
        cache.put(cache.begin(), [1; 32], token("a"));
        assert!(cache.get(&[1; 32]).is_none());
    }
}
