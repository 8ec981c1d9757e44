//! fleetkey's key manager library.
//!
//! - [`module`]: the [`KeyModule`](module::KeyModule) trait, where masters, the stored scheme's
//!   key-encryption key and the governance root live (soft: a passphrase-encrypted file).
//! - [`store`]: the [`Store`](store::Store) trait, the registry of fleets, generations, devices and
//!   the audit chain (SQLite by default).
//! - [`model`]: the records both traits speak in; [`lifecycle`]: NIST SP 800-57 / KMIP states;
//!   [`audit`]: the SHA-256 hash chain.
//! - [`backup`]: the master key ceremony's M-of-N custodian shares (Shamir over GF(256));
//!   [`restore`]: shares back into a key module.
//! - [`canlog`]: the candump log format.
//! - [`access`]: the HTTP service's tokens and idempotency records, as the store keeps them.
//! - [`stats`]: process-wide counters of store retries and key module calls, for `/metrics`.
//!
//! Cargo features (both off by default; the `fleetkey` command and the server enable both):
//! `pkcs11` builds `module::pkcs11` (the `cryptoki` binding), `postgres` builds `store::postgres`
//! (the `postgres` client). A fleet configured for a backend left out fails to open with
//! [`Error::NotBuilt`].

pub use fleetkey_core as core;

pub mod access;
pub mod audit;
pub mod backup;
pub mod canlog;
pub mod error;
pub mod fleet;
pub mod governance;
pub mod home;
pub mod lifecycle;
pub mod model;
pub mod module;
pub mod restore;
pub mod stats;
pub mod store;

pub use error::{Error, ModuleError, StoreError};
