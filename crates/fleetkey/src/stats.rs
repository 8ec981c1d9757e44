//! Process-wide counters of what the stores and key modules did, for an exporter to read
//! (`fleetkey serve`'s `/metrics`): plain atomics, so the library depends on no metrics crate.
//! Every counter has a fixed name (store kind, module kind, operation): no serial, key or token
//! ever reaches one.
//!
//! - Stores: transactions, retries (PostgreSQL: a closure run again after a serialization
//!   failure or deadlock; SQLite: `BEGIN IMMEDIATE` tried again after a busy result), lock waits
//!   (SQLite: a `BEGIN IMMEDIATE` that waited at least 1 ms for another writer, in SQLite's busy
//!   handler) and transactions given up as busy ([`crate::error::StoreError::Busy`]).
//! - Key modules: calls and failed calls by operation ([`KeyModule`] method; the bulk deriver's
//!   keys as `bulk_derive`), counted by a wrapper every [`crate::fleet::Fleet`] puts around its
//!   module.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fleetkey_core::MasterKey;
use fleetkey_core::derive::{DeviceKey, DeviceKeyInputs, Generation};

use crate::error::ModuleError;
use crate::model::WrappedKey;
use crate::module::{BulkDeriver, KeyModule, SigningSeed};

/// What a store counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StoreEvent {
    /// A transaction began.
    Transaction,
    /// A transaction (or its begin) ran again after a conflict or a busy result.
    Retry,
    /// A transaction waited for another writer's lock.
    LockWait,
    /// A transaction was given up as busy.
    Busy,
}

/// The store kinds counted.
pub const STORE_KINDS: [&str; 2] = ["sqlite", "postgres"];

static STORE_COUNTS: [[AtomicU64; 4]; 2] = [const { [const { AtomicU64::new(0) }; 4] }; 2];

/// Counts one event of a store of `kind` (`sqlite`, `postgres`).
pub(crate) fn store_event(kind: &str, event: StoreEvent) {
    if let Some(k) = STORE_KINDS.iter().position(|s| *s == kind) {
        STORE_COUNTS[k][event as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// A store kind's counts since the process started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreCounts {
    /// `sqlite` or `postgres`.
    pub store: &'static str,
    /// Transactions begun (a retried one once).
    pub transactions: u64,
    /// Runs again after a conflict (PostgreSQL) or begins again after a busy result (SQLite).
    pub retries: u64,
    /// Begins that waited at least 1 ms for another writer (SQLite).
    pub lock_waits: u64,
    /// Transactions given up as busy.
    pub busy: u64,
}

/// Every store kind's counts.
pub fn store_counts() -> Vec<StoreCounts> {
    STORE_KINDS
        .iter()
        .zip(&STORE_COUNTS)
        .map(|(store, c)| {
            let get = |e: StoreEvent| c[e as usize].load(Ordering::Relaxed);
            StoreCounts {
                store,
                transactions: get(StoreEvent::Transaction),
                retries: get(StoreEvent::Retry),
                lock_waits: get(StoreEvent::LockWait),
                busy: get(StoreEvent::Busy),
            }
        })
        .collect()
}

/// The key module operations counted: [`KeyModule`]'s methods, and `bulk_derive` for each key a
/// bulk deriver derives.
pub const MODULE_OPERATIONS: [&str; 19] = [
    "create_master",
    "import_master",
    "masters",
    "derive",
    "bulk_deriver",
    "bulk_derive",
    "destroy_master",
    "ensure_kek",
    "wrap",
    "unwrap",
    "new_wrapped_root",
    "derive_with_root",
    "ensure_signing_key",
    "signing_public_key",
    "sign",
    "import_signing_key",
    "stage_signing_key",
    "staged_signing_public_key",
    "promote_signing_key",
];

/// The module kinds counted; any other kind counts as `other`.
pub const MODULE_KINDS: [&str; 3] = ["soft", "pkcs11", "other"];

const OPS: usize = MODULE_OPERATIONS.len();

/// `[kind][operation][0: calls, 1: errors]`.
static MODULE_COUNTS: [[[AtomicU64; 2]; OPS]; 3] =
    [const { [const { [const { AtomicU64::new(0) }; 2] }; OPS] }; 3];

/// One module kind's count of one operation since the process started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModuleCounts {
    /// `soft`, `pkcs11` or `other`.
    pub module: &'static str,
    /// One of [`MODULE_OPERATIONS`].
    pub operation: &'static str,
    /// Calls.
    pub calls: u64,
    /// Calls that returned an error.
    pub errors: u64,
}

/// Every (module kind, operation) called at least once.
pub fn module_counts() -> Vec<ModuleCounts> {
    let mut out = Vec::new();
    for (module, by_op) in MODULE_KINDS.iter().zip(&MODULE_COUNTS) {
        for (operation, c) in MODULE_OPERATIONS.iter().zip(by_op) {
            let calls = c[0].load(Ordering::Relaxed);
            if calls > 0 {
                out.push(ModuleCounts {
                    module,
                    operation,
                    calls,
                    errors: c[1].load(Ordering::Relaxed),
                });
            }
        }
    }
    out
}

fn kind_index(kind: &str) -> usize {
    MODULE_KINDS[..2]
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(2)
}

fn op_index(operation: &str) -> usize {
    MODULE_OPERATIONS
        .iter()
        .position(|o| *o == operation)
        .unwrap_or(0)
}

fn count<T>(kind: usize, op: usize, result: Result<T, ModuleError>) -> Result<T, ModuleError> {
    let c = &MODULE_COUNTS[kind][op];
    c[0].fetch_add(1, Ordering::Relaxed);
    if result.is_err() {
        c[1].fetch_add(1, Ordering::Relaxed);
    }
    result
}

/// A key module whose calls are counted ([`module_counts`]).
pub(crate) struct Counted {
    inner: Arc<dyn KeyModule>,
    kind: usize,
}

impl Counted {
    /// Counts `inner`'s calls.
    pub(crate) fn wrap(inner: Arc<dyn KeyModule>) -> Arc<dyn KeyModule> {
        let kind = kind_index(inner.kind());
        Arc::new(Counted { inner, kind })
    }

    fn count<T>(&self, operation: &str, result: Result<T, ModuleError>) -> Result<T, ModuleError> {
        count(self.kind, op_index(operation), result)
    }
}

struct CountedDeriver<'a> {
    inner: Box<dyn BulkDeriver + 'a>,
    kind: usize,
}

impl BulkDeriver for CountedDeriver<'_> {
    fn derive_into(
        &mut self,
        inputs: &DeviceKeyInputs<'_>,
        out: &mut [u8],
    ) -> Result<(), ModuleError> {
        let result = self.inner.derive_into(inputs, out);
        count(self.kind, op_index("bulk_derive"), result)
    }
}

impl KeyModule for Counted {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn create_master(&self, generation: Generation) -> Result<(), ModuleError> {
        self.count("create_master", self.inner.create_master(generation))
    }
    fn import_master(&self, generation: Generation, master: &MasterKey) -> Result<(), ModuleError> {
        self.count(
            "import_master",
            self.inner.import_master(generation, master),
        )
    }
    fn masters(&self) -> Result<Vec<Generation>, ModuleError> {
        self.count("masters", self.inner.masters())
    }
    fn derive(&self, inputs: &DeviceKeyInputs<'_>) -> Result<DeviceKey, ModuleError> {
        self.count("derive", self.inner.derive(inputs))
    }
    fn bulk_deriver(
        &self,
        generation: Generation,
    ) -> Result<Box<dyn BulkDeriver + '_>, ModuleError> {
        let inner = self.count("bulk_deriver", self.inner.bulk_deriver(generation))?;
        Ok(Box::new(CountedDeriver {
            inner,
            kind: self.kind,
        }))
    }
    fn destroy_master(&self, generation: Generation) -> Result<(), ModuleError> {
        self.count("destroy_master", self.inner.destroy_master(generation))
    }
    fn ensure_kek(&self) -> Result<(), ModuleError> {
        self.count("ensure_kek", self.inner.ensure_kek())
    }
    fn wrap(&self, key: &[u8]) -> Result<WrappedKey, ModuleError> {
        self.count("wrap", self.inner.wrap(key))
    }
    fn unwrap(&self, wrapped: &WrappedKey) -> Result<zeroize::Zeroizing<Vec<u8>>, ModuleError> {
        self.count("unwrap", self.inner.unwrap(wrapped))
    }
    fn new_wrapped_root(&self) -> Result<WrappedKey, ModuleError> {
        self.count("new_wrapped_root", self.inner.new_wrapped_root())
    }
    fn derive_with_root(
        &self,
        root: &WrappedKey,
        inputs: &DeviceKeyInputs<'_>,
    ) -> Result<DeviceKey, ModuleError> {
        self.count(
            "derive_with_root",
            self.inner.derive_with_root(root, inputs),
        )
    }
    fn ensure_signing_key(&self) -> Result<[u8; 32], ModuleError> {
        self.count("ensure_signing_key", self.inner.ensure_signing_key())
    }
    fn signing_public_key(&self) -> Result<Option<[u8; 32]>, ModuleError> {
        self.count("signing_public_key", self.inner.signing_public_key())
    }
    fn sign(&self, message: &[u8]) -> Result<[u8; 64], ModuleError> {
        self.count("sign", self.inner.sign(message))
    }
    fn import_signing_key(&self, seed: &SigningSeed) -> Result<[u8; 32], ModuleError> {
        self.count("import_signing_key", self.inner.import_signing_key(seed))
    }
    fn stage_signing_key(&self, seed: Option<&SigningSeed>) -> Result<[u8; 32], ModuleError> {
        self.count("stage_signing_key", self.inner.stage_signing_key(seed))
    }
    fn staged_signing_public_key(&self) -> Result<Option<[u8; 32]>, ModuleError> {
        self.count(
            "staged_signing_public_key",
            self.inner.staged_signing_public_key(),
        )
    }
    fn promote_signing_key(&self) -> Result<[u8; 32], ModuleError> {
        self.count("promote_signing_key", self.inner.promote_signing_key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_has_its_own_counter() {
        for (i, op) in MODULE_OPERATIONS.iter().enumerate() {
            assert_eq!(op_index(op), i, "{op}");
        }
        assert_eq!(kind_index("soft"), 0);
        assert_eq!(kind_index("pkcs11"), 1);
        assert_eq!(kind_index("hsm-x"), 2);
    }

    #[test]
    fn store_events_count_by_kind() {
        let before = store_counts();
        store_event("postgres", StoreEvent::Retry);
        store_event("other", StoreEvent::Retry);
        let after = store_counts();
        let pg = |c: &[StoreCounts]| c.iter().find(|s| s.store == "postgres").map(|s| s.retries);
        assert!(pg(&after) > pg(&before));
    }
}
