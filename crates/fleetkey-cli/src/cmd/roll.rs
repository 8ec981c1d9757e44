//! `fleetkey roll` (placeholder, being written).

use crate::error::CliError;

/// `fleetkey roll`.
#[derive(clap::Args)]
pub(crate) struct Args {}

pub(crate) fn run(_args: Args) -> Result<(), CliError> {
    Err(CliError::input("roll", "not built yet"))
}
