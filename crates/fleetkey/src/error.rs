//! Errors: one per layer. Key module and store errors name the operation; the manager's
//! [`Error`] says what was wrong and [`Error::hint`] what to do next. None carries key material.

use crate::audit::ChainBreak;
use crate::lifecycle::IllegalTransition;

/// A key module failed or refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    #[error("the key module has a governance root key already")]
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
#[non_exhaustive]
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
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// Something named does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// Something to create exists already.
    #[error("{0} already exists")]
    Duplicate(String),
    /// An input was malformed or out of range.
    #[error("{field}: {problem}")]
    Invalid {
        /// The field, argument, or `file:line`.
        field: String,
        /// What was wrong with it.
        problem: String,
    },
    /// The operation is refused in the fleet's current situation.
    #[error("{what}")]
    Refused {
        /// What was refused and why.
        what: String,
        /// What to do instead.
        hint: String,
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
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// An invalid input.
    pub fn invalid(field: impl Into<String>, problem: impl std::fmt::Display) -> Self {
        Error::Invalid {
            field: field.into(),
            problem: problem.to_string(),
        }
    }

    /// What the user can do next, when there is something to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Module(ModuleError::Authentication) => Some(
                "check FLEETKEY_PASSPHRASE (or the PIN); the key file itself is unchanged".into(),
            ),
            Error::Module(ModuleError::NoMaster(g)) => Some(format!(
                "restore generation {g}'s master from its backup shares (`fleetkey master restore`), or rotate"
            )),
            Error::Store(StoreError::Busy(_)) => {
                Some("another fleetkey process holds the store; retry".into())
            }
            Error::Transition { source, .. } => Some(format!(
                "from {} the allowed next states are: {}",
                source.from,
                crate::lifecycle::State::ALL
                    .into_iter()
                    .filter(|s| source.from.can_become(*s))
                    .map(|s| s.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Error::Refused { hint, .. } => Some(hint.clone()),
            Error::Backup(crate::backup::BackupError::Exists { .. }) => Some(
                "move the old share files away (they may be of an interrupted ceremony), or choose another --shares-dir".into(),
            ),
            Error::Backup(crate::backup::BackupError::NotEnough { need, .. }) => Some(format!(
                "bring at least {need} share files of the same fleet and generation"
            )),
            Error::Backup(crate::backup::BackupError::WrongSecret { expected, .. }) => {
                Some(match expected {
                    crate::backup::Secret::Master => "these are the governance root's shares: restore them with `fleetkey governance restore-root --shares ...`".into(),
                    crate::backup::Secret::GovernanceRoot => "these are a master's shares: restore them with `fleetkey master restore --shares ...`".into(),
                })
            }
            Error::Backup(crate::backup::BackupError::RootMismatch { .. }) => Some(
                "bring the shares of the root in use (`fleetkey governance show` names it; after a rotation the newest root's shares)".into(),
            ),
            Error::Module(ModuleError::SigningKeyExists) => Some(
                "the module has its governance root: nothing to restore".into(),
            ),
            Error::Backup(crate::backup::BackupError::MasterKcv { .. }) => Some(
                "check that every file is of the same ceremony: `fleetkey master verify --shares ...`".into(),
            ),
            Error::Chain(_) => {
                Some("restore the store from a backup and investigate who changed it".into())
            }
            _ => None,
        }
    }
}
