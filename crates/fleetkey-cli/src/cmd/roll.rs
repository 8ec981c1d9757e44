//! `fleetkey roll`: one session key from a roll seed on stdin (rolling session keys v1).

use fleetkey_core::RollSeed;
use fleetkey_core::roll::{self, Epoch};

use crate::cmd::derive::{number, print_secret_hex};
use crate::error::CliError;
use crate::input;

/// Compute the session key of one epoch and channel from a roll seed read on stdin.
#[derive(clap::Args)]
#[command(after_help = "\
The roll seed is read from stdin as 64 hex characters; the 16-byte session key is printed as
lowercase hex. The epoch is floor((unix_time_ms - origin_ms) / period_ms) of the network.

Example:
  echo 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f \\
    | fleetkey roll --epoch 29000000 --channel 7")]
pub(crate) struct Args {
    /// Roll epoch, 0 to 2^64-1.
    #[arg(long)]
    epoch: String,
    /// Channel (bus or key group) number, 0 to 2^32-1.
    #[arg(long)]
    channel: String,
}

pub(crate) fn run(args: Args) -> Result<(), CliError> {
    let epoch = Epoch(number("--epoch", &args.epoch, u64::MAX)?);
    let channel = number("--channel", &args.channel, u64::from(u32::MAX))?;
    let channel = u32::try_from(channel).unwrap_or(u32::MAX);
    let seed = RollSeed::from_bytes(*input::key_from_stdin::<32>("roll seed")?);
    let key = roll::session_key(&seed, epoch, channel);
    print_secret_hex(key.expose_secret())
}
