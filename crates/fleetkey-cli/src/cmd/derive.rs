//! `fleetkey derive` (placeholder, being written).

use crate::error::CliError;

/// `fleetkey derive`.
#[derive(clap::Args)]
pub(crate) struct Args {}

pub(crate) fn run(_args: Args) -> Result<(), CliError> {
    Err(CliError::input("derive", "not built yet"))
}
