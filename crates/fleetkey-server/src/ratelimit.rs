//! Per-principal rate limits: a token bucket per principal, `rate` requests a second on average
//! and bursts of `burst`. A request over the limit gets 429 with `Retry-After`.
//!
//! The buckets live in the instance's memory: with several instances a principal's limit
//! applies per instance.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets above this many are pruned of the full ones (principals that went quiet).
const PRUNE_ABOVE: usize = 10_000;

/// Token buckets keyed by principal.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// `rate` requests per second (0 turns limiting off), bursts of `burst` (at least 1).
    pub fn new(rate: f64, burst: u32) -> Self {
        RateLimiter {
            rate: if rate.is_finite() { rate.max(0.0) } else { 0.0 },
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `key`'s bucket at `now`, or says how long until one is available.
    pub fn check_at(&self, key: &str, now: Instant) -> Result<(), Duration> {
        if self.rate == 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > PRUNE_ABOVE {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets.entry(key.to_owned()).or_insert((self.burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.rate)
            .min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.rate))
        }
    }

    /// [`RateLimiter::check_at`] now.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills_at_the_rate_per_key() {
        let limiter = RateLimiter::new(2.0, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check_at("a", t0).is_ok());
        }
        let wait = limiter.check_at("a", t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        // Another principal has its own bucket.
        assert!(limiter.check_at("b", t0).is_ok());
        // Half a second later one request is available again, not two.
        let t1 = t0 + Duration::from_millis(500);
        assert!(limiter.check_at("a", t1).is_ok());
        assert!(limiter.check_at("a", t1).is_err());
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let limiter = RateLimiter::new(0.0, 1);
        let t0 = Instant::now();
        for _ in 0..100 {
            assert!(limiter.check_at("a", t0).is_ok());
        }
    }
}
