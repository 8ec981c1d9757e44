//! `fleetkey she`: SHE memory update messages (M1-M5) offline: build them, check a SHE's proof.

use std::io::Write;
use std::path::PathBuf;

use fleetkey_core::Key128;
use fleetkey_core::she::{self, Counter, KeyFlags, M4, M5, SlotId, Uid, UpdateRequest};

use crate::error::CliError;
use crate::input;

const SLOT_HINT: &str = "slot ids: 1 MASTER_ECU_KEY, 2 BOOT_MAC_KEY, 3 BOOT_MAC, \
                         4..13 KEY_1..KEY_10, 14 RAM_KEY (names are accepted too)";
const FLAGS_HINT: &str = "flags, msb first: 16 WRITE_PROTECTION, 8 BOOT_PROTECTION, \
                          4 DEBUGGER_PROTECTION, 2 KEY_USAGE, 1 WILDCARD";

/// `fleetkey she` subcommands.
#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// Build the memory update messages M1, M2, M3 and the expected M4, M5 for one key update.
    Build(BuildArgs),
    /// Check that M5 authenticates M4 under the new key (the SHE's proof of a key update).
    Verify(VerifyArgs),
}

/// `fleetkey she build`.
#[derive(clap::Args)]
#[command(after_help = "\
Prints one JSON object with m1 .. m5 as lowercase hex. Key files hold 32 hex characters.
Numbers are decimal or 0x-prefixed hex; slots may also be given by name (KEY_1, MASTER_ECU_KEY).

Example (the SHE specification's example):
  echo 000102030405060708090a0b0c0d0e0f > auth.key
  echo 0f0e0d0c0b0a09080706050403020100 > new.key
  fleetkey she build --uid 000000000000000000000000000001 --key-id 4 --auth-id 1 \\
    --counter 1 --flags 0 --auth-key-file auth.key --new-key-file new.key
  {\"m1\":\"00000000000000000000000000000141\",\"m2\":\"2b111e2d...\",\"m3\":\"b9d745e5...\",
   \"m4\":\"00000000000000000000000000000141b472e8d8...\",\"m5\":\"820d8d95...\"}")]
pub(crate) struct BuildArgs {
    /// UID of the target SHE: 15 bytes as 30 hex characters (all zeros: the wildcard UID).
    #[arg(long, value_name = "HEX")]
    uid: String,
    /// Slot to update, 1 to 14 (4 = KEY_1); 14 (RAM_KEY) is loaded in plain, not with M1-M3.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    key_id: String,
    /// Slot whose key authorises the update: MASTER_ECU_KEY (1) for any slot, or the slot itself.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    auth_id: String,
    /// New counter of the slot, 0 to 2^28-1 (fleetkey's key revision); must exceed the slot's.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    counter: String,
    /// Key protection flags, 0 to 31: 16 write-protection, 8 boot, 4 debugger, 2 key-usage
    /// (MAC key), 1 wildcard (no update with the wildcard UID).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    flags: String,
    /// File holding the authorising key (the key in --auth-id) as 32 hex characters.
    #[arg(long, value_name = "FILE")]
    auth_key_file: PathBuf,
    /// File holding the new key as 32 hex characters.
    #[arg(long, value_name = "FILE")]
    new_key_file: PathBuf,
    /// Print JSON (the default and only format; accepted for scripts that ask for it).
    #[arg(long)]
    json: bool,
}

/// `fleetkey she verify`.
#[derive(clap::Args)]
#[command(after_help = "\
Exits 0 and prints a confirmation when M5 authenticates M4 under the new key and M4's counter
block is well formed; exits 1 with a message on stderr (nothing on stdout) when it does not;
exits 2 on malformed input.

Example (the SHE specification's example):
  echo 0f0e0d0c0b0a09080706050403020100 > new.key
  fleetkey she verify --new-key-file new.key \\
    --m4 00000000000000000000000000000141b472e8d8727d70d57295e74849a27917 \\
    --m5 820d8d95dc11b4668878160cb2a4e23e
  ok: m5 authenticates m4: key id 4 (KEY_1), auth id 1 (MASTER_ECU_KEY), counter 1, uid 000000000000000000000000000001")]
pub(crate) struct VerifyArgs {
    /// M4 as 64 hex characters: UID | key id | auth id || encrypted counter block.
    #[arg(long, value_name = "HEX")]
    m4: String,
    /// M5 as 32 hex characters: the CMAC over M4 under K4 = KDF(new key, KEY_UPDATE_MAC_C).
    #[arg(long, value_name = "HEX")]
    m5: String,
    /// File holding the key that was loaded, as 32 hex characters.
    #[arg(long, value_name = "FILE")]
    new_key_file: PathBuf,
}

pub(crate) fn run(command: Command) -> Result<(), CliError> {
    match command {
        Command::Build(args) => build(args),
        Command::Verify(args) => verify(args),
    }
}

/// A whole number in decimal or `0x` hex, at most `max`, or a `field` error.
fn number(field: &str, text: &str, max: u32, what: &str) -> Result<u32, CliError> {
    let t = text.trim();
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => t.parse::<u64>(),
    };
    let value = parsed.map_err(|_| {
        CliError::input(
            field,
            format_args!("{text:?} is not a whole number (decimal or 0x hex)"),
        )
    })?;
    u32::try_from(value)
        .ok()
        .filter(|v| *v <= max)
        .ok_or_else(|| CliError::input(field, format_args!("{value} is out of range: {what}")))
}

/// A slot id by number or SHE name.
fn slot(field: &str, text: &str) -> Result<SlotId, CliError> {
    let name = text.trim().to_ascii_uppercase();
    if let Some(slot) = SlotId::ALL.iter().find(|s| s.name() == name) {
        return Ok(*slot);
    }
    let id = number(field, text, 255, "a SHE slot id is 1 to 14").map_err(|e| e.hint(SLOT_HINT))?;
    u8::try_from(id)
        .ok()
        .and_then(|id| SlotId::new(id).ok())
        .ok_or_else(|| {
            CliError::input(
                field,
                format_args!("{id} is out of range: a SHE slot id is 1 to 14"),
            )
            .hint(SLOT_HINT)
        })
}

fn build(args: BuildArgs) -> Result<(), CliError> {
    // Output is always JSON; --json only states it.
    let _ = args.json;
    let uid = Uid::from_bytes(
        input::hex_array::<15>("--uid", &args.uid)
            .map_err(|e| e.hint("a SHE UID is 120 bits; all zeros is the wildcard UID"))?,
    );
    let key_id = slot("--key-id", &args.key_id)?;
    if key_id == SlotId::RamKey {
        return Err(CliError::input(
            "--key-id",
            "14 (RAM_KEY) is loaded in plain (CMD_LOAD_PLAIN_KEY), not with M1-M3",
        ));
    }
    let auth_id = slot("--auth-id", &args.auth_id)?;
    let counter = number(
        "--counter",
        &args.counter,
        Counter::MAX.get(),
        "a SHE counter is 28 bits, 0 to 268435455",
    )
    .map_err(|e| e.hint("the counter is fleetkey's key revision"))?;
    let flags = number(
        "--flags",
        &args.flags,
        0x1f,
        "SHE key flags are 5 bits, 0 to 31",
    )
    .map_err(|e| e.hint(FLAGS_HINT))?;
    let counter = Counter::new(counter).map_err(|e| CliError::input("--counter", e))?;
    let flags = u8::try_from(flags)
        .ok()
        .and_then(|f| KeyFlags::new(f).ok())
        .ok_or_else(|| CliError::input("--flags", format_args!("{flags} is out of range")))?;
    let request = UpdateRequest::new(uid, key_id, auth_id, counter, flags).map_err(|_| {
        let allowed = match key_id {
            SlotId::MasterEcuKey => "MASTER_ECU_KEY is updated only under itself (--auth-id 1)",
            SlotId::BootMacKey | SlotId::BootMac => {
                "allowed: 1 (MASTER_ECU_KEY) or 2 (BOOT_MAC_KEY)"
            }
            _ => "allowed: 1 (MASTER_ECU_KEY) or the slot itself",
        };
        CliError::input(
            "--auth-id",
            format_args!("{auth_id} may not authorise an update of {key_id}; {allowed}"),
        )
    })?;
    let auth_key = Key128::from_bytes(*input::key_from_file::<16>(
        "--auth-key-file",
        &args.auth_key_file,
    )?);
    let new_key = Key128::from_bytes(*input::key_from_file::<16>(
        "--new-key-file",
        &args.new_key_file,
    )?);
    let m = she::build(&auth_key, &new_key, &request);
    let json = serde_json::json!({
        "m1": hex::encode(m.m1.to_bytes()),
        "m2": hex::encode(m.m2.to_bytes()),
        "m3": hex::encode(m.m3.to_bytes()),
        "m4": hex::encode(m.m4.to_bytes()),
        "m5": hex::encode(m.m5.to_bytes()),
    });
    print_line(&json.to_string())
}

fn verify(args: VerifyArgs) -> Result<(), CliError> {
    let m4 = M4::from_bytes(&input::hex_array::<32>("--m4", &args.m4)?).map_err(|e| {
        CliError::input("--m4", e)
            .hint("M4 is UID (15 bytes) | key id, auth id (1 byte) || 16 bytes")
    })?;
    let m5 = M5::from_bytes(&input::hex_array::<16>("--m5", &args.m5)?)
        .map_err(|e| CliError::input("--m5", e))?;
    let new_key = Key128::from_bytes(*input::key_from_file::<16>(
        "--new-key-file",
        &args.new_key_file,
    )?);
    match she::verify(&new_key, &m4, &m5) {
        Ok(c) => print_line(&format!(
            "ok: m5 authenticates m4: key id {}, auth id {}, counter {}, uid {}",
            c.key_id,
            c.auth_id,
            c.counter.get(),
            hex::encode(c.uid.as_bytes())
        )),
        Err(e) => Err(CliError::rejected(format_args!("not verified: {e}"))
            .hint("check that --new-key-file holds the key that was loaded into the slot")),
    }
}

fn print_line(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|e| CliError::input("stdout", format_args!("cannot write ({e})")))
}
