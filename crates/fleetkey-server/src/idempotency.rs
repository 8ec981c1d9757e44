//! `Idempotency-Key` on provisioning and refresh: a retried request returns the first response
//! and never runs the operation twice.
//!
//! The key is scoped to the principal and bound to a SHA-256 fingerprint of method, path and body
//! ([`fingerprint`]). The write runs in a group-commit transaction ([`crate::group_commit`],
//! [`fleetkey::fleet::group`]) that first looks the key up, and stores the response, wrapped under
//! the key module's KEK (provisioning responses carry key material), in the same savepoint as the
//! write: a committed write always has its stored response, and a crash leaves either both or
//! neither. A retry with the same key and the same request gets that response again
//! (`Idempotent-Replayed: true`); with another request, 422; while another instance's request
//! with the key is committing, 409. A request that failed changed nothing and stored nothing, so
//! a retry runs it anew. The record is an insert under the primary key, so two instances cannot
//! both commit it.

use sha2::{Digest, Sha256};

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
