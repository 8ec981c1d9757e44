//! The audit record: append-only, every event hash-chained to the one before (SHA-256).
//!
//! ```text
//! hash(n) = SHA-256("FK1A" || hash(n-1) || JSON of {seq, at, actor, action, generation,
//!                                                   subjects_digest, details})
//! subjects_digest = SHA-256 over (len u8 || serial bytes) of every subject serial, in order
//! hash(0) = 32 zero bytes
//! ```
//! The store also keeps the head (last sequence number and hash), so removing the newest events
//! is detected too. No secret ever enters an event: details carry public values only.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::{DeviceSerial, UnixMillis};

/// The label that starts every hashed event.
pub const AUDIT_LABEL: &[u8; 4] = b"FK1A";
/// The hash before the first event.
pub const GENESIS: [u8; 32] = [0; 32];

/// An event to append: what happened, before it gets its place in the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditDraft {
    /// When.
    pub at: UnixMillis,
    /// Who.
    pub actor: String,
    /// What, as `noun.verb`: `device.refresh`, `generation.rotate`, `fleet.init`, ...
    pub action: String,
    /// The generation concerned, if any.
    pub generation: Option<u32>,
    /// The devices concerned (one for single operations, a batch for bulk ones).
    pub subjects: Vec<DeviceSerial>,
    /// Public details: states, revisions, reasons, counts. Never key material.
    pub details: serde_json::Value,
}

/// An event in the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// The event.
    #[serde(flatten)]
    pub draft: AuditDraft,
    /// The hash of the event before (zeros for the first).
    #[serde(with = "hex::serde")]
    pub prev_hash: [u8; 32],
    /// This event's hash.
    #[serde(with = "hex::serde")]
    pub hash: [u8; 32],
}

#[derive(Serialize)]
struct Hashed<'a> {
    seq: u64,
    at: UnixMillis,
    actor: &'a str,
    action: &'a str,
    generation: Option<u32>,
    subjects_digest: String,
    details: &'a serde_json::Value,
}

/// SHA-256 over the length-prefixed subject serials.
pub fn subjects_digest(subjects: &[DeviceSerial]) -> [u8; 32] {
    let mut h = Sha256::new();
    for s in subjects {
        let bytes = s.as_bytes();
        // Serials are 1..=40 bytes, so the length fits a byte.
        h.update([u8::try_from(bytes.len()).unwrap_or(u8::MAX)]);
        h.update(bytes);
    }
    h.finalize().into()
}

/// The hash of an event at `seq` following `prev_hash`.
pub fn event_hash(prev_hash: &[u8; 32], seq: u64, draft: &AuditDraft) -> [u8; 32] {
    let hashed = Hashed {
        seq,
        at: draft.at,
        actor: &draft.actor,
        action: &draft.action,
        generation: draft.generation,
        subjects_digest: hex::encode(subjects_digest(&draft.subjects)),
        details: &draft.details,
    };
    let mut h = Sha256::new();
    h.update(AUDIT_LABEL);
    h.update(prev_hash);
    // Serializing a struct of strings, numbers and a JSON value cannot fail.
    h.update(serde_json::to_vec(&hashed).unwrap_or_default());
    h.finalize().into()
}

impl AuditEvent {
    /// Seals a draft as the event after `prev` (`None`: the first event).
    pub fn seal(prev: Option<(u64, [u8; 32])>, draft: AuditDraft) -> AuditEvent {
        let (prev_seq, prev_hash) = prev.unwrap_or((0, GENESIS));
        let seq = prev_seq + 1;
        let hash = event_hash(&prev_hash, seq, &draft);
        AuditEvent {
            seq,
            draft,
            prev_hash,
            hash,
        }
    }
}

/// The table of the chained events in both stores.
pub const EVENTS_TABLE: &str = "audit";

/// What `verify` found wrong, at which sequence number, naming the table (or `table.column`) at
/// fault: the events in [`EVENTS_TABLE`]; the device index in `audit_subjects`; the head where the
/// store keeps it ([`crate::store::Tx::audit_head_table`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainBreak {
    /// An event's content no longer matches its hash.
    #[error("audit: event {seq} was changed: its hash does not match its content")]
    Changed {
        /// The event.
        seq: u64,
    },
    /// A sequence number is missing.
    #[error("audit: event {expected} is missing (found {found} next)")]
    Missing {
        /// The expected sequence number.
        expected: u64,
        /// The one found instead.
        found: u64,
    },
    /// An event does not follow the one before it.
    #[error("audit: event {seq} does not follow event {}: removed, inserted or reordered", seq.saturating_sub(1))]
    Unlinked {
        /// The event.
        seq: u64,
    },
    /// The chain ends before the recorded head.
    #[error(
        "{table}: the chain ends at event {last} but the recorded head is event {head}: newest events removed"
    )]
    Truncated {
        /// Where the store keeps the head.
        table: &'static str,
        /// The last event present.
        last: u64,
        /// The head recorded by the store.
        head: u64,
    },
    /// The chain's last event differs from the recorded head (in number or hash).
    #[error(
        "{table}: the recorded head (event {head}) does not match the chain's last event {last}"
    )]
    HeadMismatch {
        /// Where the store keeps the head.
        table: &'static str,
        /// The last event present.
        last: u64,
        /// The head recorded by the store.
        head: u64,
    },
    /// The chain has events but the store records no head.
    #[error("{table}: no head is recorded, but the chain has {last} events")]
    HeadMissing {
        /// Where the store keeps the head.
        table: &'static str,
        /// The last event present.
        last: u64,
    },
    /// What a view filters on beside the chained record disagrees with the record.
    #[error("{table}: event {seq} {problem}")]
    Index {
        /// The table (or `table.column`) at fault.
        table: &'static str,
        /// The event.
        seq: u64,
        /// What differs from the chained record (public values only: serials, counts).
        problem: String,
    },
    /// Rows at a sequence number that is no event of the chain.
    #[error("{table}: rows point at event {seq}, which does not exist")]
    Orphan {
        /// The table.
        table: &'static str,
        /// The sequence number they carry.
        seq: i64,
    },
}

/// Checks a chain incrementally, event by event, in sequence order.
#[derive(Debug, Default)]
pub struct ChainVerifier {
    last: Option<(u64, [u8; 32])>,
}

impl ChainVerifier {
    /// A verifier at the start of the chain.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks the next event.
    pub fn push(&mut self, event: &AuditEvent) -> Result<(), ChainBreak> {
        let (prev_seq, prev_hash) = self.last.unwrap_or((0, GENESIS));
        if event.seq != prev_seq + 1 {
            return Err(if event.seq > prev_seq + 1 {
                ChainBreak::Missing {
                    expected: prev_seq + 1,
                    found: event.seq,
                }
            } else {
                ChainBreak::Unlinked { seq: event.seq }
            });
        }
        if event.prev_hash != prev_hash {
            return Err(ChainBreak::Unlinked { seq: event.seq });
        }
        if event_hash(&event.prev_hash, event.seq, &event.draft) != event.hash {
            return Err(ChainBreak::Changed { seq: event.seq });
        }
        self.last = Some((event.seq, event.hash));
        Ok(())
    }

    /// The last event checked: sequence number and hash.
    pub fn last(&self) -> Option<(u64, [u8; 32])> {
        self.last
    }

    /// Checks the end of the chain against the store's recorded head, kept in `head_table` (for
    /// messages); returns the event count.
    pub fn finish(
        self,
        head: Option<(u64, [u8; 32])>,
        head_table: &'static str,
    ) -> Result<u64, ChainBreak> {
        let table = head_table;
        match (self.last, head) {
            (None, None) => Ok(0),
            (Some((last, _)), None) => Err(ChainBreak::HeadMissing { table, last }),
            (last, Some((head, head_hash))) => {
                let (last, hash) = last.unwrap_or((0, GENESIS));
                if last < head {
                    Err(ChainBreak::Truncated { table, last, head })
                } else if last != head || hash != head_hash {
                    Err(ChainBreak::HeadMismatch { table, last, head })
                } else {
                    Ok(last)
                }
            }
        }
    }
}

/// Which events `audit show` lists. Empty fields match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only events concerning this device.
    pub device: Option<DeviceSerial>,
    /// Only events with this action, or whose action starts with this prefix followed by `.`.
    pub action: Option<String>,
    /// Only events at or after this time.
    pub since: Option<UnixMillis>,
    /// Only events before this time.
    pub until: Option<UnixMillis>,
}

impl AuditFilter {
    /// Whether an event matches (the reference semantics every store must implement).
    pub fn matches(&self, e: &AuditEvent) -> bool {
        self.device
            .as_ref()
            .is_none_or(|d| e.draft.subjects.contains(d))
            && self.action.as_ref().is_none_or(|a| {
                e.draft.action == *a
                    || e.draft
                        .action
                        .strip_prefix(a.as_str())
                        .is_some_and(|r| r.starts_with('.'))
            })
            && self.since.is_none_or(|t| e.draft.at >= t)
            && self.until.is_none_or(|t| e.draft.at < t)
    }
}

#[cfg(test)]
mod tests;
