//! Errors: one per layer. Key module and store errors name the operation; the manager's
//! [`Error`] says what was wrong, one variant per case. What to do next depends on the interface
//! (a command line, an HTTP request), so the hints live there. None carries key material.

use std::path::PathBuf;

use crate::audit::ChainBreak;
use crate::lifecycle::{IllegalTransition, State};
use crate::model::{DeviceSerial, Scheme};

/// A key module failed or refused.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// The generation has no master in this module.
    #[error("no master for generation {0} in the key module")]
    NoMaster(u32),
    /// The generation already has a master.
    #[error("generation {0} already has a master in the key module")]
    MasterExists(u32),
    /// The module has no key-encryption key (stored scheme).
    #[error("the key module has no key-encryption key")]
    NoKek,
    /// The module has no governance signing key.
    #[error("the key module has no governance root key")]
    NoSigningKey,
    /// The module has a governance root already.
    #[error("the key module has a governance root already")]
    SigningKeyExists,
    /// No next governance root is staged (root rotation).
    #[error("the key module has no staged next governance root")]
    NoStagedSigningKey,
    /// The passphrase or PIN was refused, or the key file does not decrypt.
    #[error("the key module refused the passphrase or PIN")]
    Authentication,
    /// A wrapped key failed its integrity check (wrong KEK or damaged blob).
    #[error("a wrapped key failed its integrity check (wrong key-encryption key or damaged data)")]
    Unwrap,
    /// The module's own storage could not be read or written.
    #[error("key module storage {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The module's storage is malformed.
    #[error("key module storage is damaged: {0}")]
    Corrupt(String),
    /// A backend call failed (for PKCS#11: the function and return value).
    #[error("key module: {operation} failed: {detail}")]
    Backend {
        /// The operation or C function.
        operation: &'static str,
        /// What the backend said.
        detail: String,
    },
    /// The module cannot do this.
    #[error("the key module does not support {0}")]
    Unsupported(&'static str),
    /// A PIN or key file that is not what it should be (too long, not UTF-8, empty).
    #[error("{what} {}: {problem}", path.display())]
    SecretFile {
        /// `PIN file`, `backup KEK file`.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it (never its content).
        problem: &'static str,
    },
}

/// A store failed or refused.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A record that must be unique exists already.
    #[error("{0} already exists")]
    Duplicate(String),
    /// A record to update does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// Another writer holds the store, or a serialization conflict; retrying may succeed.
    #[error("the store is busy ({0}); retry")]
    Busy(String),
    /// The schema is of another version.
    #[error("store schema version {found}, this fleetkey expects {expected}")]
    Schema {
        /// Version found.
        found: i64,
        /// Version expected.
        expected: i64,
    },
    /// Stored data does not decode.
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
    /// A write inside a read-only transaction ([`crate::store::Store::read`]): refused before
    /// it reached the store; the transaction's other work is unaffected.
    #[error("store: {0} refused: the transaction is read-only")]
    ReadOnly(&'static str),
    /// A backend call failed.
    #[error("store: {operation} failed: {detail}")]
    Backend {
        /// The operation.
        operation: &'static str,
        /// What the backend said.
        detail: String,
    },
}

/// A fleet operation failed or was refused. Nothing was changed.
///
/// One variant per way an operation can fail, so that each interface maps them in one exhaustive
/// match: the service to an HTTP status and an API hint (`fleetkey-server`'s `problem.rs`), the
/// command line to an exit code and a CLI hint (`fleetkey-cli`'s `error.rs`). The message is a
/// plain sentence that names no command of either. Not `#[non_exhaustive]`: a new variant must
/// fail to compile in both mappings until it is given a status and a hint.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key module failed.
    #[error(transparent)]
    Module(#[from] ModuleError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A lifecycle transition the state machine forbids.
    #[error("{subject}: {source}")]
    Transition {
        /// The device or generation.
        subject: String,
        /// The refused transition.
        #[source]
        source: IllegalTransition,
    },
    /// An input was malformed or out of range.
    #[error("{field}: {problem}")]
    Invalid {
        /// The field, argument, or `file:line`.
        field: String,
        /// What was wrong with it.
        problem: String,
    },
    /// The audit chain is broken.
    #[error("audit chain broken: {0}")]
    Chain(#[from] ChainBreak),
    /// A master backup (custodian shares) failed or was refused.
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
    /// A file of the fleet home could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    // The fleet home and its store.
    /// The directory holds no fleet (its configuration file is missing).
    #[error("no fleet at {} ({} is missing)", .0.display(), crate::home::CONFIG_FILE)]
    NoFleet(PathBuf),
    /// The directory holds a fleet already (init).
    #[error("{} already holds a fleet", .0.display())]
    FleetExists(PathBuf),
    /// The store holds a fleet already (init).
    #[error("the store already holds a fleet")]
    StoreHoldsFleet,
    /// The store holds no fleet: the fleet home is incomplete.
    #[error("the store holds no fleet")]
    StoreHoldsNoFleet,
    /// The store the configuration names does not exist (the store's description of it).
    #[error("no fleet store: {0} does not exist")]
    NoFleetStore(String),
    /// The configuration names a PostgreSQL store and no URL for it.
    #[error("the fleet's PostgreSQL store has no URL")]
    NoStoreUrl,
    /// The lifecycle lease passed to another holder while this run worked (it stalled longer than
    /// the lease): the holder finishes the work.
    #[error("the lifecycle lease passed to {holder} (this run stalled longer than the lease)")]
    LeaseLost {
        /// Who holds it now.
        holder: String,
    },
    /// A lifecycle run found more than 256 actions due in one run (a fault: due items that never
    /// clear).
    #[error("lifecycle run: more than 256 actions in one run")]
    LifecycleRunaway,
    /// An operation needs a key and the fleet handle was opened without a key module or a way to
    /// open one.
    #[error("this fleet handle has no key module")]
    NoKeyModule,
    /// The PKCS#11 token holds objects of a fleet with this id already (init).
    #[error("token {token_label:?} already holds objects of a fleet {fleet:?}")]
    TokenHoldsFleet {
        /// The token's label.
        token_label: String,
        /// The fleet id.
        fleet: String,
    },
    /// The key module did not behave as it must after an import; nothing was kept.
    #[error("{0}")]
    ModuleFaulty(ModuleFault),
    /// The fleet is configured for a key module or a store that this build of the library leaves
    /// out (a cargo feature of the `fleetkey` crate).
    #[error("this fleet's {backend} is not built into this fleetkey (cargo feature `{feature}`)")]
    NotBuilt {
        /// `PKCS#11 key module`, `PostgreSQL store`.
        backend: &'static str,
        /// The cargo feature that builds it: `pkcs11`, `postgres`.
        feature: &'static str,
    },

    // What a scheme has.
    /// A generation operation on a scheme without master generations (stored).
    #[error("{operation}: the {} scheme has no master generations", .scheme.name())]
    NoMasterGenerations {
        /// The operation refused.
        operation: &'static str,
        /// The fleet's scheme.
        scheme: Scheme,
    },
    /// Custodian shares asked for on a scheme without a master (init).
    #[error("the {} scheme has no master to split into shares", .0.name())]
    SharesWithoutMaster(Scheme),
    /// A governance operation on a scheme without a governance root.
    #[error("{operation}: the {} scheme has no governance root", .scheme.name())]
    NotGoverned {
        /// The operation refused.
        operation: &'static str,
        /// The fleet's scheme.
        scheme: Scheme,
    },

    // Devices.
    /// No device with this serial in the fleet.
    #[error("no device {0} in this fleet")]
    NoSuchDevice(DeviceSerial),
    /// A device with this serial is registered already.
    #[error("device {0} is already registered")]
    DeviceExists(DeviceSerial),
    /// A record the store names was registered by another writer during a bulk import.
    #[error("{0} was registered by someone else during the import")]
    RegisteredDuringImport(String),
    /// Only pre-active and active devices are provisioned.
    #[error("device {serial} is {state}, not provisionable")]
    NotProvisionable {
        /// The device.
        serial: DeviceSerial,
        /// Its state.
        state: State,
    },
    /// Only active devices are refreshed.
    #[error("device {serial} is {state}; only active devices are refreshed")]
    NotRefreshable {
        /// The device.
        serial: DeviceSerial,
        /// Its state.
        state: State,
    },
    /// A device at the last key revision SHE counters allow.
    #[error("device {0} is at the last revision (2^28 - 1)")]
    LastRevision(DeviceSerial),
    /// Another writer moved a device out of pre-active during bulk provisioning.
    #[error("device {0} changed state during provisioning")]
    ChangedDuringProvisioning(DeviceSerial),

    // Generations.
    /// No such generation in the fleet.
    #[error("no generation {0} in this fleet")]
    NoSuchGeneration(u32),
    /// The current generation cannot be retired.
    #[error("generation {0} is the current generation")]
    CurrentGeneration(u32),
    /// Devices still hold keys of the generation to destroy.
    #[error("{count} devices still depend on generation {generation}")]
    DependentDevices {
        /// The generation.
        generation: u32,
        /// How many devices.
        count: u64,
    },
    /// A destroyed generation's master is not restored into the fleet.
    #[error("generation {generation} is {state}: its master stays destroyed")]
    MasterDestroyed {
        /// The generation.
        generation: u32,
        /// Its state.
        state: State,
    },
    /// The fleet has no current generation.
    #[error("the fleet has no current generation")]
    NoCurrentGeneration,
    /// The current generation is compromised: no generation record can accept it.
    #[error("the current generation {0} is compromised: no record can accept it")]
    CurrentCompromised(u32),

    // The governance root, its records and grants.
    /// The key module's governance root is not the one the fleet pins.
    #[error(
        "the key module's governance root {} is not the root the fleet pins ({})",
        hex::encode(.found),
        hex::encode(.pinned)
    )]
    RootMismatch {
        /// The module's root public key.
        found: [u8; 32],
        /// The pinned root public key.
        pinned: [u8; 32],
    },
    /// The store does not record the root's public key (restore into the fleet).
    #[error("this fleet's store does not record its root's public key")]
    RootNotPinned,
    /// Custodian shares of another fleet.
    #[error("share file {origin} is of fleet {shares_fleet}, this is fleet {fleet}")]
    SharesOfOtherFleet {
        /// The first share file.
        origin: String,
        /// The fleet the shares are of.
        shares_fleet: String,
        /// This fleet.
        fleet: String,
        /// What the shares hold.
        secret: crate::backup::Secret,
    },
    /// No generation record has been published.
    #[error("no generation record published yet")]
    NoGenerationRecord,
    /// No grant with this id.
    #[error("grant {0} not found")]
    NoSuchGrant(u64),

    // Service tokens.
    /// No service token with this id.
    #[error("no token {0} in this fleet")]
    NoSuchToken(String),
}

/// How a key module misbehaved after an import (checked, never assumed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ModuleFault {
    /// The module does not derive with the master just imported.
    #[error("the key module did not derive with the imported master of generation {0}")]
    ImportedMaster(u32),
    /// The module's governance root is not the one just imported (restore).
    #[error("the key module's governance root is not the one imported")]
    ImportedRoot,
    /// The module's new governance root is not the one just imported (rotation).
    #[error("the key module's new governance root is not the one imported")]
    NewRoot,
}

impl Error {
    /// An invalid input.
    pub fn invalid(field: impl Into<String>, problem: impl std::fmt::Display) -> Self {
        Error::Invalid {
            field: field.into(),
            problem: problem.to_string(),
        }
    }
}
