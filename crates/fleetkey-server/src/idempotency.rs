//! `Idempotency-Key` on provisioning and refresh: a retried request returns the first response
//! and never runs the operation twice.
//!
//! The first request with a key claims it in the store (scoped to the principal, with a SHA-256
//! fingerprint of method, path and body), runs, and records its response wrapped under the key
//! module's KEK (provisioning responses carry key material). A retry with the same key and the
//! same request gets that response again (`Idempotent-Replayed: true`); with another request, 422;
//! while the first still runs (or if its outcome could not be recorded), 409. A request that
//! fails changed nothing (the key manager's guarantee), so its claim is dropped and a retry runs
//! it anew. The claim is an insert under the primary key, so two instances cannot both run it.

use fleetkey::fleet::{Claim, Fleet};
use sha2::{Digest, Sha256};

use crate::app::Reply;
use crate::problem::ApiError;

/// The header.
pub const HEADER: &str = "idempotency-key";

/// SHA-256 over method, path and body, each length-prefixed.
pub fn fingerprint(method: &str, path: &str, body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [method.as_bytes(), path.as_bytes(), body] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// Runs `op` under `key` (when the request has one) for `principal`.
pub fn run(
    fleet: &mut Fleet,
    principal: &str,
    key: Option<&str>,
    fingerprint: [u8; 32],
    op: impl FnOnce(&mut Fleet) -> Result<Reply, ApiError>,
) -> Result<Reply, ApiError> {
    let Some(key) = key else {
        return op(fleet);
    };
    match fleet.claim_idempotent(principal, key, fingerprint)? {
        Claim::New => {}
        Claim::Replay(status, body) => return Ok(Reply::replayed(status, body)),
        Claim::InProgress => return Err(ApiError::IdempotencyInProgress),
        Claim::Mismatch => return Err(ApiError::IdempotencyMismatch),
    }
    match op(fleet) {
        Ok(reply) => {
            if let Err(e) =
                fleet.finish_idempotent(principal, key, reply.status.as_u16(), &reply.body)
            {
                // The operation committed: the client gets its answer; a retry gets 409.
                tracing::warn!(error = %e, "the response of an idempotent request was not recorded");
            }
            Ok(reply)
        }
        Err(e) => {
            if let Err(release) = fleet.release_idempotent(principal, key) {
                tracing::warn!(error = %release, "an idempotency claim was not released");
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_separates_its_parts() {
        let a = fingerprint("POST", "/v1/devices/a/provision", b"");
        assert_eq!(a, fingerprint("POST", "/v1/devices/a/provision", b""));
        assert_ne!(a, fingerprint("POST", "/v1/devices/a/refresh", b""));
        assert_ne!(a, fingerprint("POST", "/v1/devices/a/provision", b"{}"));
        assert_ne!(fingerprint("A", "BC", b""), fingerprint("AB", "C", b""));
    }
}
