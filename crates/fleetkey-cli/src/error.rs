//! The one error type of the command line: a message, a hint on what to do next, an exit code.
//! The key manager's errors become one here, in one exhaustive match ([`hint`] and the exit code
//! in `From<Error>`): a new variant does not compile until it has both.

use std::fmt;

use fleetkey::backup::{BackupError, Secret};
use fleetkey::error::{Error, ModuleError, ModuleFault, StoreError};
use fleetkey::home::STORE_URL_ENV;

/// Exit code for bad input (a field out of range, malformed hex, a missing file).
pub(crate) const EXIT_INPUT: u8 = 2;
/// Exit code for a check that ran and failed (a MAC that does not verify).
pub(crate) const EXIT_REJECTED: u8 = 1;

/// An error the command reports on stderr; nothing is printed on stdout.
#[derive(Debug)]
pub(crate) struct CliError {
    message: String,
    hint: Option<String>,
    code: u8,
}

impl CliError {
    /// Bad input: `field` names what was wrong.
    pub(crate) fn input(field: &str, problem: impl fmt::Display) -> Self {
        Self {
            message: format!("{field}: {problem}"),
            hint: None,
            code: EXIT_INPUT,
        }
    }

    /// An operation that failed or was refused (exit 1).
    pub(crate) fn failed(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            hint: None,
            code: EXIT_REJECTED,
        }
    }

    /// A check that ran and failed.
    pub(crate) fn rejected(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            hint: None,
            code: EXIT_REJECTED,
        }
    }

    /// Adds what the user can do next.
    pub(crate) fn hint(mut self, hint: impl fmt::Display) -> Self {
        self.hint = Some(hint.to_string());
        self
    }

    /// Prints the error and returns the process exit code.
    pub(crate) fn report(&self) -> std::process::ExitCode {
        eprintln!("error: {}", self.message);
        if let Some(hint) = &self.hint {
            eprintln!("  hint: {hint}");
        }
        std::process::ExitCode::from(self.code)
    }
}

impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        let hint = hint(&e);
        let err = match &e {
            // The passphrase asked for when the command first needed a key (see `Global::open`).
            Error::Invalid { field, problem } if field == "passphrase" => {
                crate::cmd::ctx::passphrase_error(problem)
            }
            Error::Invalid { field, problem } => CliError::input(field, problem),
            // A PIN or KEK file that is not one is bad input, whichever command reads it.
            Error::Module(ModuleError::SecretFile {
                what,
                path,
                problem,
            }) => CliError::input(what, format_args!("{}: {problem}", path.display())),
            Error::Backup(b) if b.is_check_failure() => CliError::rejected(b),
            Error::Backup(BackupError::Invalid { field, problem }) => {
                let flag = match *field {
                    "custodians" | "custodian" => "--custodian",
                    "threshold" => "--threshold",
                    other => other,
                };
                CliError::input(flag, problem)
            }
            Error::Backup(b) => CliError::input("share files", b),
            _ => CliError::failed(&e),
        };
        match hint {
            Some(h) => err.hint(h),
            None => err,
        }
    }
}

/// What the user of the command line can do next: one arm per variant.
pub(crate) fn hint(e: &Error) -> Option<String> {
    let s = |text: &str| Some(text.to_owned());
    match e {
        Error::Module(m) => match m {
            ModuleError::Authentication => {
                s("check FLEETKEY_PASSPHRASE (or the PIN); the key file itself is unchanged")
            }
            ModuleError::NoMaster(g) => Some(format!(
                "restore generation {g}'s master from its backup shares (`fleetkey master restore`), or rotate"
            )),
            ModuleError::NoSigningKey => s(
                "restore it from its custodian shares: `fleetkey governance restore-root --shares F...`",
            ),
            ModuleError::SigningKeyExists => s(
                "the module has its governance root: nothing to restore (`fleetkey governance show` names the root in use)",
            ),
            ModuleError::MasterExists(_)
            | ModuleError::NoKek
            | ModuleError::NoStagedSigningKey
            | ModuleError::Unwrap
            | ModuleError::Io { .. }
            | ModuleError::Corrupt(_)
            | ModuleError::Backend { .. }
            | ModuleError::Unsupported(_)
            | ModuleError::SecretFile { .. } => None,
        },
        Error::Store(st) => match st {
            StoreError::Busy(_) => s("another fleetkey process holds the store; retry"),
            StoreError::Duplicate(_)
            | StoreError::NotFound(_)
            | StoreError::Schema { .. }
            | StoreError::Corrupt(_)
            | StoreError::ReadOnly(_)
            | StoreError::Backend { .. } => None,
        },
        Error::Transition { source, .. } => Some(format!(
            "from {} the allowed next states are: {}",
            source.from,
            source
                .from
                .next_states()
                .map(fleetkey::lifecycle::State::name)
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Error::Invalid { .. } | Error::Io { .. } => None,
        Error::Chain(_) => s("restore the store from a backup and investigate who changed it"),
        Error::Backup(b) => match b {
            BackupError::Exists { .. } => s(
                "move the old share files away (they may be of an interrupted ceremony), or choose another --shares-dir",
            ),
            BackupError::NotEnough { need, .. } => Some(format!(
                "bring at least {need} share files of the same fleet and generation"
            )),
            BackupError::WrongSecret { expected, .. } => match expected {
                Secret::Master => s(
                    "these are the governance root's shares: restore them with `fleetkey governance restore-root --shares ...`",
                ),
                Secret::GovernanceRoot => s(
                    "these are a master's shares: restore them with `fleetkey master restore --shares ...`",
                ),
            },
            BackupError::RootMismatch { .. } => s(
                "bring the shares of the root in use (`fleetkey governance show` names it; after a rotation the newest root's shares)",
            ),
            BackupError::MasterKcv { .. } => s(
                "check that every file is of the same ceremony: `fleetkey master verify --shares ...`",
            ),
            BackupError::Invalid { .. }
            | BackupError::Io { .. }
            | BackupError::Malformed { .. }
            | BackupError::ShareKcv { .. }
            | BackupError::Duplicate { .. }
            | BackupError::Mismatch { .. }
            | BackupError::Random(_) => None,
        },
        Error::NoFleet(_) => s(
            "create one with `fleetkey init`, or point --home / FLEETKEY_HOME at an existing fleet",
        ),
        Error::FleetExists(_) => s("choose another --home, or use the fleet that is there"),
        Error::StoreHoldsFleet => s("remove the stale fleet.db or choose another --home"),
        Error::StoreHoldsNoFleet => {
            s("the fleet home is incomplete: run `fleetkey init` again in an empty directory")
        }
        Error::NoFleetStore(_) => Some(format!(
            "check the URL ({STORE_URL_ENV}) and the schema in fleet.json, or create the fleet with `fleetkey init --store postgres://...`"
        )),
        Error::NoStoreUrl => Some(format!(
            "set {STORE_URL_ENV}=postgres://user@host/db, or add \"url\" to fleet.json"
        )),
        Error::LeaseLost { .. } => {
            s("the holder finishes the work; a rerun resumes where this one stopped")
        }
        Error::LifecycleRunaway => s("run it again; if it keeps saying so, report it"),
        Error::NoKeyModule => s("open the fleet with its key module (`Fleet::open`), not without"),
        Error::TokenHoldsFleet { .. } => {
            s("choose another fleet id, or remove that fleet's objects from the token")
        }
        Error::NotBuilt { feature, .. } => Some(format!(
            "use a fleetkey built with the cargo feature `{feature}` (the released command has it)"
        )),
        Error::ModuleFaulty(fault) => match fault {
            ModuleFault::ImportedMaster(_) => {
                s("the module is faulty: nothing was kept; try another module")
            }
            ModuleFault::ImportedRoot => {
                s("the module is faulty: check its objects and try another module")
            }
            ModuleFault::NewRoot => {
                s("the module is faulty: nothing was recorded; try another module")
            }
        },
        Error::NoMasterGenerations { .. } => s(
            "in the stored scheme every device has its own random root, under the key file's KEK: refresh devices instead, and back up the key file",
        ),
        Error::SharesWithoutMaster(_) => {
            s("drop the share options; back up the key file, whose KEK protects the device roots")
        }
        Error::NotGoverned { .. } => {
            s("governance records need a fleet created with `fleetkey init --scheme governed`")
        }
        Error::NoSuchDevice(_) => s(
            "check the serial with `fleetkey device list`, or register it with `fleetkey device add`",
        ),
        Error::DeviceExists(_) => {
            s("serials are unique in a fleet; `fleetkey device show` shows the existing one")
        }
        Error::RegisteredDuringImport(_) => s("run the import again: it skips what is registered"),
        Error::NotProvisionable { .. } => {
            s("only pre-active and active devices can be provisioned; see `fleetkey device show`")
        }
        Error::NotRefreshable { .. } => {
            s("resume a suspended device first (`fleetkey device resume`)")
        }
        Error::LastRevision(_) => {
            s("revoke and replace the device: SHE counters cannot go further")
        }
        Error::ChangedDuringProvisioning(_) => {
            s("run the provisioning again: it continues with the devices still pre-active")
        }
        Error::NoSuchGeneration(_) => s("`fleetkey generation list` shows the fleet's generations"),
        Error::CurrentGeneration(_) => {
            s("rotate first (`fleetkey generation rotate`), migrate the devices, then retire it")
        }
        Error::DependentDevices { generation, .. } => Some(format!(
            "migrate them (`fleetkey device refresh --generation {generation} --all`) or pass --force --confirm {generation} to cut them off"
        )),
        Error::MasterDestroyed { .. } => {
            s("restore into a new key file (--key-file) only for forensics")
        }
        Error::NoCurrentGeneration => s("activate a generation first"),
        Error::CurrentCompromised(_) => s(
            "rotate to a new generation (`fleetkey generation rotate`); its record revokes this one",
        ),
        Error::RootMismatch { .. } => {
            s("the module belongs to another fleet or was changed outside fleetkey")
        }
        Error::RootNotPinned => {
            s("restore into a new key file with --key-file and --root-public-key")
        }
        Error::SharesOfOtherFleet { secret, .. } => match secret {
            Secret::Master => s(
                "restore into the fleet the shares were made for, or into a new key file with --key-file",
            ),
            Secret::GovernanceRoot => s("restore into the fleet the shares were made for"),
        },
        Error::NoGenerationRecord => {
            s("publish one with `fleetkey governance publish --reason ...`")
        }
        Error::NoSuchGrant(_) => s("`fleetkey grant list` shows the grants and their ids"),
        Error::NoSuchToken(_) => s("`fleetkey token list` shows the tokens and their ids"),
    }
}
