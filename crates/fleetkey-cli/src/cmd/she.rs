//! `fleetkey she` (placeholder, being written).

use crate::error::CliError;

/// `fleetkey she` subcommands.
#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// Placeholder.
    Todo,
}

pub(crate) fn run(_command: Command) -> Result<(), CliError> {
    Err(CliError::input("she", "not built yet"))
}
