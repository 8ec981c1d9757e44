//! `fleetkey demo` (placeholder, being written).

use crate::error::CliError;

/// `fleetkey demo`.
#[derive(clap::Args)]
pub(crate) struct Args {}

pub(crate) fn run(_args: Args) -> Result<(), CliError> {
    Err(CliError::input("demo", "not built yet"))
}
