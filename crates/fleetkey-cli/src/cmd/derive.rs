//! `fleetkey derive`: one device key from a master on stdin (device key derivation v1).

use std::io::Write;

use fleetkey_core::MasterKey;
use fleetkey_core::derive::{self, DeviceKeyInputs, Generation, Revision, Serial, Usage};

use crate::error::CliError;
use crate::input;

/// Derive one device key (HKDF-Expand-SHA256, derivation v1) from a master read on stdin.
#[derive(clap::Args)]
#[command(after_help = "\
The master is read from stdin as 64 hex characters; the key is printed as lowercase hex.

Example:
  echo 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f \\
    | fleetkey derive --usage auth --generation 1 --revision 0 --serial ECU-0001
  b74f33e48ea41214a767aabd363c25bd")]
pub(crate) struct Args {
    /// What the key is for: auth (16 bytes), key-update (16 bytes) or roll-seed (32 bytes).
    #[arg(long, value_enum)]
    usage: UsageArg,
    /// Master generation, 0 to 2^32-1.
    #[arg(long)]
    generation: String,
    /// Key revision (the SHE counter), 0 to 2^28-1.
    #[arg(long)]
    revision: String,
    /// Device serial as UTF-8 text, 1 to 40 bytes.
    #[arg(
        long,
        conflicts_with = "serial_hex",
        required_unless_present = "serial_hex"
    )]
    serial: Option<String>,
    /// Device serial as hex, 1 to 40 bytes.
    #[arg(long)]
    serial_hex: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum UsageArg {
    Auth,
    KeyUpdate,
    RollSeed,
}

impl From<UsageArg> for Usage {
    fn from(arg: UsageArg) -> Self {
        match arg {
            UsageArg::Auth => Usage::Auth,
            UsageArg::KeyUpdate => Usage::KeyUpdate,
            UsageArg::RollSeed => Usage::RollSeed,
        }
    }
}

/// Parses a decimal number that must fit `max`, naming the field in the error.
pub(crate) fn number(field: &str, text: &str, max: u64) -> Result<u64, CliError> {
    let value: u64 = text
        .trim()
        .parse()
        .map_err(|_| CliError::input(field, format_args!("{text:?} is not a whole number")))?;
    if value > max {
        return Err(CliError::input(
            field,
            format_args!("{value} is above the maximum {max}"),
        ));
    }
    Ok(value)
}

pub(crate) fn run(args: Args) -> Result<(), CliError> {
    let generation = number("--generation", &args.generation, u64::from(u32::MAX))?;
    let generation = Generation(u32::try_from(generation).unwrap_or(u32::MAX));
    let revision = number(
        "--revision",
        &args.revision,
        u64::from(derive::MAX_REVISION),
    )
    .map_err(|e| e.hint("revisions are SHE counters: 28 bits"))?;
    let revision = Revision::new(u32::try_from(revision).unwrap_or(u32::MAX))
        .map_err(|e| CliError::input("--revision", e))?;
    let serial_bytes = match (&args.serial, &args.serial_hex) {
        (Some(text), _) => text.as_bytes().to_vec(),
        (None, Some(hex)) => input::hex_bytes("--serial-hex", hex)?,
        (None, None) => return Err(CliError::input("--serial", "missing")),
    };
    let field = if args.serial.is_some() {
        "--serial"
    } else {
        "--serial-hex"
    };
    let serial = Serial::new(&serial_bytes).map_err(|_| {
        CliError::input(
            field,
            format_args!("{} bytes, must be 1 to 40 bytes", serial_bytes.len()),
        )
    })?;
    let master = MasterKey::from_bytes(*input::key_from_stdin::<32>("master")?);
    let inputs = DeviceKeyInputs {
        usage: args.usage.into(),
        generation,
        revision,
        serial,
    };
    let key = derive::derive(&master, &inputs);
    print_secret_hex(key.expose_secret())
}

/// Prints key bytes as one line of lowercase hex; the hex text is zeroized after writing.
pub(crate) fn print_secret_hex(bytes: &[u8]) -> Result<(), CliError> {
    let mut line = zeroize::Zeroizing::new(hex::encode(bytes));
    line.push('\n');
    std::io::stdout()
        .write_all(line.as_bytes())
        .map_err(|e| CliError::input("stdout", format_args!("cannot write ({e})")))
}
