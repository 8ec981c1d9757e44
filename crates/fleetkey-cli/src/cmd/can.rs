//! `fleetkey can` (placeholder, being written).

use crate::error::CliError;

/// `fleetkey can` subcommands.
#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// Placeholder.
    Todo,
}

pub(crate) fn run(_command: Command) -> Result<(), CliError> {
    Err(CliError::input("can", "not built yet"))
}
