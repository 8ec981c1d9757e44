//! `fleetkey can sign` / `fleetkey can verify`: SecOC frames (docs/secoc.md) in candump logs.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use fleetkey::canlog::{self, FrameKind, LogError, LogLine};
use fleetkey_core::secoc::{
    DEFAULT_VERIFY_ATTEMPTS, FrameKey, FreshnessCounter, KeyWindow, MAX_VERIFY_ATTEMPTS, Profile,
    Receiver, SecocError, Sender, Stats, WindowConfig,
};
use fleetkey_core::{Epoch, RollSchedule, RollSeed, Roller, SessionKey};

use crate::cmd::ctx::Global;
use crate::error::CliError;
use crate::input;

/// `fleetkey can` subcommands.
#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// Secure every frame of a candump log (AUTOSAR SecOC construction, docs/secoc.md).
    Sign(SignArgs),
    /// Verify every frame of a candump log of secured frames.
    Verify(VerifyArgs),
}

const SIGN_HELP: &str = "\
Keys: --key-file holds one session key as 32 hex characters. --seed-file holds a roll seed as
64 hex characters; each frame then uses the session key of the epoch of its own timestamp
(rolling v1: epoch = floor((t_ms - origin_ms) / period_ms), on --channel).
DataId: --data-id, or by default the low 16 bits of each frame's CAN id; one freshness counter
per DataId, starting at --fv-start. Classic frames stay classic (at most 8 bytes: p1, p2); CAN FD
frames stay CAN FD and must end on a CAN FD length (0-8, 12, 16, 20, 24, 32, 48, 64).
Spec: docs/secoc.md.

Examples:
  echo 2b7e151628aed2a6abf7158809cf4f3c > session.key
  echo '(1700000000.000000) can0 123#DEADBEEF' | fleetkey can sign --profile p1 --key-file session.key
  (1700000000.000000) can0 123#DEADBEEF0144C5C0      (payload DEADBEEF, FV 01, MAC 44C5C0)
  fleetkey can sign --profile fd64 --seed-file seed.hex --channel 1 --origin-ms 0 \\
    --period-ms 60000 capture.log -o secured.log";

const VERIFY_HELP: &str = "\
Prints one verdict per frame (line, id, `ok` with the full FV, or `rejected`) and a summary that
counts rejections by reason (malformed, no key, replay, authentication). Keys, DataId and
profiles as for `fleetkey can sign`; with --seed-file the receiver follows the log's timestamps
and holds the keys of its current, previous and next epoch (docs/secoc.md).
Exit 0 when every frame verifies, 1 when any is rejected, 2 on bad input.

Without --key-file and --seed-file the keys come from the fleet at --home (passphrase from
FLEETKEY_PASSPHRASE): the simulated networks recorded there (docs/simulator.md), every group seed
their gateway has had, each frame's verdict with the device that owns its PDU; frames that are
not a network's secured PDUs (ISO-TP transfers) are listed as skipped.

Examples:
  fleetkey can verify --home fleet capture.log
  fleetkey can verify --profile p1 --key-file session.key secured.log
  line 1: 123 ok fv=1
  summary: 1 frames, 1 accepted, 0 rejected (malformed 0, no key 0, replay 0, authentication 0)";

/// Where the session keys come from.
#[derive(clap::Args)]
pub(crate) struct KeyArgs {
    /// SecOC profile: p1, p2, fd64 or fd128 (required with --key-file or --seed-file).
    #[arg(long)]
    profile: Option<String>,
    /// File holding the session key, 32 hex characters (one fixed key).
    #[arg(long, value_name = "FILE", conflicts_with = "seed_file")]
    key_file: Option<PathBuf>,
    /// File holding a roll seed, 64 hex characters (a key per epoch, from each frame's timestamp).
    #[arg(long, value_name = "FILE", requires_all = ["channel", "origin_ms", "period_ms"])]
    seed_file: Option<PathBuf>,
    /// Roll channel number (with --seed-file).
    #[arg(long, value_name = "C", requires = "seed_file")]
    channel: Option<u32>,
    /// Roll schedule origin, Unix milliseconds (with --seed-file).
    #[arg(long, value_name = "N", requires = "seed_file")]
    origin_ms: Option<u64>,
    /// Roll period in milliseconds (with --seed-file).
    #[arg(long, value_name = "N", requires = "seed_file")]
    period_ms: Option<u64>,
    /// DataId for every frame (decimal or 0x hex); default: the low 16 bits of the CAN id.
    #[arg(long, value_name = "N")]
    data_id: Option<String>,
}

/// Secure the frames of a candump log.
#[derive(clap::Args)]
#[command(after_help = SIGN_HELP)]
pub(crate) struct SignArgs {
    #[command(flatten)]
    keys: KeyArgs,
    /// First freshness value of every DataId (default 1).
    #[arg(long, value_name = "N", default_value = "1")]
    fv_start: String,
    /// Input log; stdin when absent or `-`.
    input: Option<PathBuf>,
    /// Output log; stdout when absent or `-`.
    #[arg(short, long, value_name = "OUT")]
    output: Option<PathBuf>,
}

/// Verify the frames of a candump log.
#[derive(clap::Args)]
#[command(after_help = VERIFY_HELP)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    keys: KeyArgs,
    /// Extra verify attempts per frame after lost frames (0 to 16).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_VERIFY_ATTEMPTS)]
    attempts: u8,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Input log; stdin when absent or `-`.
    input: Option<PathBuf>,
}

pub(crate) fn run(global: &Global, command: Command) -> Result<(), CliError> {
    match command {
        Command::Sign(args) => sign(args),
        Command::Verify(args) if args.keys.key_file.is_none() && args.keys.seed_file.is_none() => {
            verify_with_fleet(global, args)
        }
        Command::Verify(args) => verify(args),
    }
}

// ---- shared -------------------------------------------------------------------------------

/// The key source: one fixed session key, or a roll seed on a schedule and channel.
enum Keys {
    Fixed(SessionKey),
    Rolling {
        roller: Roller,
        schedule: RollSchedule,
        channel: u32,
    },
}

struct Setup {
    profile: Profile,
    keys: Keys,
    data_id: Option<u16>,
}

fn setup(args: &KeyArgs) -> Result<Setup, CliError> {
    let name = args.profile.as_deref().ok_or_else(|| {
        CliError::input("--profile", "missing")
            .hint("give --profile p1, p2, fd64 or fd128 with --key-file or --seed-file")
    })?;
    let profile = Profile::by_name(name).map_err(|_| {
        CliError::input("--profile", format_args!("unknown profile {name:?}"))
            .hint("use p1 or p2 (classic CAN), fd64 or fd128 (CAN FD)")
    })?;
    let data_id = args.data_id.as_deref().map(parse_data_id).transpose()?;
    let keys = match (&args.key_file, &args.seed_file) {
        (Some(path), _) => {
            let bytes = input::key_from_file::<16>("--key-file", path).map_err(|e| {
                e.hint("the key file holds one 16-byte session key as 32 hex characters")
            })?;
            Keys::Fixed(SessionKey::from_bytes(*bytes))
        }
        (None, Some(path)) => {
            let bytes = input::key_from_file::<32>("--seed-file", path).map_err(|e| {
                e.hint("the seed file holds a 32-byte roll seed as 64 hex characters")
            })?;
            let roller = Roller::new(&RollSeed::from_bytes(*bytes));
            let (Some(channel), Some(origin), Some(period)) =
                (args.channel, args.origin_ms, args.period_ms)
            else {
                return Err(CliError::input(
                    "--seed-file",
                    "needs --channel, --origin-ms and --period-ms",
                ));
            };
            let schedule =
                RollSchedule::new(origin, period).map_err(|e| CliError::input("--period-ms", e))?;
            Keys::Rolling {
                roller,
                schedule,
                channel,
            }
        }
        (None, None) => {
            return Err(
                CliError::input("--key-file", "missing").hint("give --key-file or --seed-file")
            );
        }
    };
    Ok(Setup {
        profile,
        keys,
        data_id,
    })
}

fn parse_data_id(text: &str) -> Result<u16, CliError> {
    let text = text.trim();
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u16::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| {
        CliError::input(
            "--data-id",
            format_args!("{text:?} is not a number from 0 to 65535"),
        )
    })
}

fn parse_u64(field: &str, text: &str) -> Result<u64, CliError> {
    text.trim()
        .parse()
        .map_err(|_| CliError::input(field, format_args!("{text:?} is not a whole number")))
}

/// The DataId of a frame: `--data-id`, else the low 16 bits of the CAN id.
fn data_id_of(setup: &Setup, line: &LogLine) -> u16 {
    setup
        .data_id
        .unwrap_or((line.frame.id().as_raw() & 0xFFFF) as u16)
}

/// The frame's epoch under the schedule (rolling keys only).
fn epoch_of(schedule: &RollSchedule, line: &LogLine, number: usize) -> Result<Epoch, CliError> {
    let ms = u64::try_from(line.timestamp.as_micros() / 1000).unwrap_or(u64::MAX);
    schedule.epoch_at(ms).map_err(|e| {
        CliError::input(
            &format!("line {number}"),
            format_args!("{e} ({})", line.timestamp),
        )
        .hint("check --origin-ms against the log's timestamps")
    })
}

/// Reads and parses the whole log first, so that bad input stops before any output. Returns
/// each frame line with its 1-based line number in the file. `canlog::read_log` decides what
/// a log may hold (frame lines; blank lines, `#` comments and `DROPCOUNT` notes, skipped) and
/// checks every line's length and UTF-8; its first error, or a log without a frame, is bad input.
fn read_lines(path: Option<&Path>) -> Result<Vec<(usize, LogLine)>, CliError> {
    let reader: Box<dyn BufRead> = match path {
        Some(p) if p != Path::new("-") => Box::new(BufReader::new(File::open(p).map_err(|e| {
            CliError::input("input", format_args!("cannot open {} ({e})", p.display()))
        })?)),
        _ => Box::new(BufReader::new(std::io::stdin())),
    };
    let mut lines = Vec::new();
    let mut log = canlog::read_log(reader);
    while let Some(item) = log.next() {
        let line = item.map_err(|e| match e {
            LogError::Parse { line, error } => CliError::input(&format!("line {line}"), error).hint(
                "each frame line reads `(SECONDS.MICROS) IFACE ID#DATA`, or `ID##FDATA` for CAN FD (candump -l)",
            ),
            LogError::Io { line, error } => {
                CliError::input(&format!("line {line}"), format_args!("cannot read ({error})"))
            }
            LogError::NoFrame { .. } => CliError::input("input", &e)
                .hint("give a candump log (candump -l) with at least one frame line"),
            other => CliError::input("input", other),
        })?;
        lines.push((log.line_number(), line));
    }
    Ok(lines)
}

/// Only data frames carry a secured PDU.
fn check_data_frame(line: &LogLine, number: usize) -> Result<(), CliError> {
    match line.frame.kind() {
        FrameKind::Classic { .. } | FrameKind::Fd { .. } => Ok(()),
        FrameKind::Remote { .. } => Err(CliError::input(
            &format!("line {number}"),
            "remote frame: carries no data to secure",
        )
        .hint("remove remote (RTR) frames from the log")),
        FrameKind::Error { .. } => Err(CliError::input(
            &format!("line {number}"),
            "error frame: carries no PDU to secure",
        )
        .hint("remove error frames from the log")),
    }
}

// ---- sign ---------------------------------------------------------------------------------

fn sign(args: SignArgs) -> Result<(), CliError> {
    let setup = setup(&args.keys)?;
    let fv_start = parse_u64("--fv-start", &args.fv_start)?;
    let freshness = FreshnessCounter::starting_at(fv_start)
        .map_err(|_| CliError::input("--fv-start", "0: the first freshness value is 1 or more"))?;
    let lines = read_lines(args.input.as_deref())?;
    let profile = setup.profile;
    let mut senders: HashMap<u16, Sender> = HashMap::new();
    let mut epoch_key: Option<(Epoch, FrameKey)> = None;
    let fixed_key = match &setup.keys {
        Keys::Fixed(key) => Some(FrameKey::new(key)),
        Keys::Rolling { .. } => None,
    };
    let mut out = Vec::with_capacity(lines.len());
    for (number, line) in &lines {
        let number = *number;
        check_data_frame(line, number)?;
        let payload = line.frame.data();
        secured_len(profile, line, number)?;
        let key = match (&fixed_key, &setup.keys) {
            (Some(key), _) => key,
            (
                None,
                Keys::Rolling {
                    roller,
                    schedule,
                    channel,
                },
            ) => {
                let epoch = epoch_of(schedule, line, number)?;
                if epoch_key.as_ref().is_none_or(|(e, _)| *e != epoch) {
                    epoch_key = Some((epoch, FrameKey::new(&roller.session_key(epoch, *channel))));
                }
                match &epoch_key {
                    Some((_, key)) => key,
                    None => return Err(CliError::input("--seed-file", "no session key")),
                }
            }
            (None, Keys::Fixed(_)) => return Err(CliError::input("--key-file", "no session key")),
        };
        let data_id = data_id_of(&setup, line);
        let sender = senders
            .entry(data_id)
            .or_insert_with(|| Sender::with_freshness(profile, data_id, freshness));
        let mut buf = [0u8; 64];
        let secured = sender.secure(key, payload, &mut buf).map_err(|e| match e {
            SecocError::FreshnessExhausted => CliError::input(
                &format!("line {number}"),
                format_args!("DataId {data_id}: {e}"),
            )
            .hint("start from a lower --fv-start"),
            other => CliError::input(&format!("line {number}"), other),
        })?;
        let frame = line
            .frame
            .with_data(buf.get(..secured.len).unwrap_or_default())
            .map_err(|e| CliError::input(&format!("line {number}"), e))?;
        out.push(LogLine {
            frame,
            ..line.clone()
        });
    }
    let mut text = Vec::new();
    canlog::write_log(&mut text, &out).map_err(|e| CliError::input("output", e))?;
    write_output(args.output.as_deref(), &text)
}

/// Checks that the secured frame fits the profile and the frame's kind; names the line and
/// what to do when it does not.
fn secured_len(profile: Profile, line: &LogLine, number: usize) -> Result<usize, CliError> {
    let field = format!("line {number}");
    let len = line.frame.data().len();
    let Some(secured) = profile.secured_len(len) else {
        return Err(CliError::input(
            &field,
            format_args!(
                "{len}-byte payload too long for profile {profile}: at most {} bytes leave room for \
                 the {}-byte FV and {}-byte MAC",
                profile.max_payload(),
                profile.fv_len(),
                profile.mac_len()
            ),
        )
        .hint(if profile.max_frame() <= 8 {
            "split the payload, or send CAN FD frames with profile fd64 or fd128"
        } else {
            "split the payload into smaller PDUs"
        }));
    };
    if line.frame.is_fd() {
        if !canlog::is_fd_len(secured) {
            let fitting: Vec<String> = canlog::CANFD_LENGTHS
                .iter()
                .filter(|&&n| profile.secured_len(n).is_some_and(canlog::is_fd_len))
                .map(|n| n.to_string())
                .collect();
            let hint = if fitting.is_empty() {
                format!("profile {profile} fits no CAN FD payload length; use another profile")
            } else {
                format!(
                    "with profile {profile}, CAN FD payloads of {} bytes give CAN FD lengths: \
                     cut or pad the PDU to one of them, or use another profile",
                    fitting.join(", ")
                )
            };
            return Err(CliError::input(
                &field,
                format_args!(
                    "secured length {secured} ({len}-byte payload + {} bytes of FV and MAC) is not a CAN FD length \
                     (0-8, 12, 16, 20, 24, 32, 48, 64)",
                    profile.overhead()
                ),
            )
            .hint(hint));
        }
    } else if secured > canlog::CAN_MAX_DLEN {
        return Err(CliError::input(
            &field,
            format_args!(
                "classic frame: secured length {secured} ({len}-byte payload + {} bytes of FV and MAC) \
                 exceeds 8 bytes",
                profile.overhead()
            ),
        )
        .hint("use profile p1 or p2 for classic CAN, or send the frame as CAN FD (ID##FDATA)"));
    }
    Ok(secured)
}

fn write_output(path: Option<&Path>, bytes: &[u8]) -> Result<(), CliError> {
    match path {
        Some(p) if p != Path::new("-") => std::fs::write(p, bytes).map_err(|e| {
            CliError::input(
                "--output",
                format_args!("cannot write {} ({e})", p.display()),
            )
        }),
        _ => std::io::stdout()
            .write_all(bytes)
            .map_err(|e| CliError::input("stdout", format_args!("cannot write ({e})"))),
    }
}

// ---- verify -------------------------------------------------------------------------------

struct Verdict {
    line: usize,
    id: String,
    data_id: u16,
    outcome: Option<(u64, Option<Epoch>)>,
}

fn verify(args: VerifyArgs) -> Result<(), CliError> {
    let setup = setup(&args.keys)?;
    if args.attempts > MAX_VERIFY_ATTEMPTS {
        return Err(CliError::input(
            "--attempts",
            format_args!("{} is above {MAX_VERIFY_ATTEMPTS}", args.attempts),
        ));
    }
    let lines = read_lines(args.input.as_deref())?;
    let mut window = match &setup.keys {
        Keys::Fixed(key) => KeyWindow::single(Epoch(0), key),
        Keys::Rolling { .. } => KeyWindow::new(WindowConfig::default()),
    };
    // Validate every line before verifying any, so bad input prints nothing on stdout.
    let mut epochs = Vec::with_capacity(lines.len());
    for (number, line) in &lines {
        check_data_frame(line, *number)?;
        epochs.push(match &setup.keys {
            Keys::Rolling { schedule, .. } => Some(epoch_of(schedule, line, *number)?),
            Keys::Fixed(_) => None,
        });
    }
    let mut receivers: HashMap<u16, Receiver> = HashMap::new();
    let mut verdicts = Vec::with_capacity(lines.len());
    for ((number, line), epoch) in lines.iter().zip(epochs) {
        if let (
            Some(epoch),
            Keys::Rolling {
                roller, channel, ..
            },
        ) = (epoch, &setup.keys)
        {
            // The receiver's clock is the log's timestamps; it never goes back.
            if window.current().is_none_or(|current| epoch > current) {
                window
                    .advance_to(epoch, roller, *channel)
                    .map_err(|e| CliError::input(&format!("line {number}"), e))?;
            }
        }
        let data_id = data_id_of(&setup, line);
        let receiver = receivers
            .entry(data_id)
            .or_insert_with(|| Receiver::new(setup.profile, data_id).with_attempts(args.attempts));
        let outcome = receiver.verify(&window, line.frame.data()).ok().map(|v| {
            (
                v.fv,
                matches!(setup.keys, Keys::Rolling { .. }).then_some(v.epoch),
            )
        });
        verdicts.push(Verdict {
            line: *number,
            id: line.frame.id().to_string(),
            data_id,
            outcome,
        });
    }
    let mut stats = Stats::default();
    let mut ids: Vec<_> = receivers.keys().copied().collect();
    ids.sort_unstable();
    for id in ids {
        if let Some(r) = receivers.get(&id) {
            stats.merge(&r.stats());
        }
    }
    let text = if args.json {
        json_report(&setup, &verdicts, &stats)
    } else {
        text_report(&verdicts, &stats)
    };
    write_output(None, text.as_bytes())?;
    match stats.rejected() {
        0 => Ok(()),
        n => Err(CliError::rejected(format_args!(
            "{n} of {} frames rejected",
            verdicts.len()
        ))),
    }
}

fn text_report(verdicts: &[Verdict], stats: &Stats) -> String {
    let mut text = String::new();
    for v in verdicts {
        let verdict = match v.outcome {
            Some((fv, Some(epoch))) => format!("ok fv={fv} epoch={}", epoch.0),
            Some((fv, None)) => format!("ok fv={fv}"),
            None => "rejected".to_owned(),
        };
        text.push_str(&format!("line {}: {} {verdict}\n", v.line, v.id));
    }
    text.push_str(&format!(
        "summary: {} frames, {} accepted, {} rejected (malformed {}, no key {}, replay {}, authentication {})\n",
        verdicts.len(),
        stats.accepted,
        stats.rejected(),
        stats.malformed,
        stats.no_key,
        stats.replay,
        stats.authentication
    ));
    text
}

fn json_report(setup: &Setup, verdicts: &[Verdict], stats: &Stats) -> String {
    let frames: Vec<_> = verdicts
        .iter()
        .map(|v| {
            let mut frame = serde_json::json!({
                "line": v.line,
                "id": v.id,
                "data_id": v.data_id,
                "result": if v.outcome.is_some() { "ok" } else { "rejected" },
            });
            if let Some((fv, epoch)) = v.outcome {
                frame["fv"] = fv.into();
                if let Some(epoch) = epoch {
                    frame["epoch"] = epoch.0.into();
                }
            }
            frame
        })
        .collect();
    let report = serde_json::json!({
        "profile": setup.profile.name(),
        "frames": frames,
        "summary": {
            "frames": verdicts.len(),
            "accepted": stats.accepted,
            "rejected": stats.rejected(),
            "malformed": stats.malformed,
            "no_key": stats.no_key,
            "replay": stats.replay,
            "authentication": stats.authentication,
        },
    });
    format!("{report}\n")
}

// ---- verify with the fleet's keys ------------------------------------------------------------

fn verify_with_fleet(global: &Global, args: VerifyArgs) -> Result<(), CliError> {
    use fleetkey::canlog::FrameKind;
    use fleetkey::fleet::network::capture::{self, CapturedFrame, Verdict as FleetVerdict};

    let lines = read_lines(args.input.as_deref())?;
    let mut fleet = global.open()?;
    let networks = fleet.network_keys("can verify: a bus capture checked with the fleet's keys")?;
    if networks.is_empty() {
        return Err(CliError::input(
            "--home",
            format_args!("the fleet at {} records no simulated network", global.home.display()),
        )
        .hint("give --key-file or --seed-file with --profile, or run `fleetkey sim run --keep DIR` to make one"));
    }
    let mut frames = Vec::with_capacity(lines.len());
    let mut numbers = Vec::with_capacity(lines.len());
    for (number, line) in &lines {
        let at_us = u64::try_from(line.timestamp.as_micros()).ok();
        match (line.frame.kind(), at_us) {
            (FrameKind::Classic { .. } | FrameKind::Fd { .. }, Some(at_us)) => {
                frames.push(CapturedFrame {
                    at_us,
                    id: line.frame.id().as_raw(),
                    data: line.frame.data(),
                });
                numbers.push((*number, line.frame.id().to_string()));
            }
            _ => check_data_frame(line, *number)?,
        }
    }
    let (verdicts, stats) = capture::verify_frames(&networks, &frames);
    let owner = |id: u32| -> Option<String> {
        let pdu = u16::try_from(id).ok()?;
        networks.iter().find_map(|n| {
            n.network
                .pdus
                .get(&pdu)
                .map(|(serial, _)| serial.to_string())
        })
    };
    let skipped = verdicts
        .iter()
        .filter(|v| matches!(v, FleetVerdict::Skipped))
        .count();
    let text = if args.json {
        let frames: Vec<_> = verdicts
            .iter()
            .zip(&numbers)
            .zip(&frames)
            .map(|((v, (line, id)), f)| {
                let mut j = serde_json::to_value(v).unwrap_or_default();
                j["line"] = (*line).into();
                j["id"] = id.clone().into();
                if let Some(o) = owner(f.id) {
                    j["device"] = o.into();
                }
                j
            })
            .collect();
        let report = serde_json::json!({
            "networks": networks.iter().map(|n| serde_json::json!({
                "name": n.network.name, "profile": n.network.profile.name(),
                "period_ms": n.schedule().period_ms(), "group_seeds": n.candidates(),
            })).collect::<Vec<_>>(),
            "frames": frames,
            "summary": {
                "frames": verdicts.len() - skipped, "skipped": skipped,
                "accepted": stats.accepted, "rejected": stats.rejected(),
                "malformed": stats.malformed, "no_key": stats.no_key,
                "replay": stats.replay, "authentication": stats.authentication,
            },
        });
        format!("{report}\n")
    } else {
        let mut t = String::new();
        for ((v, (line, id)), f) in verdicts.iter().zip(&numbers).zip(&frames) {
            let who = owner(f.id).unwrap_or_else(|| "-".into());
            let verdict = match v {
                FleetVerdict::Ok {
                    fv,
                    epoch,
                    generation,
                    revision,
                } => format!("ok fv={fv} epoch={epoch} seed={generation}.{revision}"),
                FleetVerdict::Rejected { reason } => format!(
                    "rejected ({})",
                    serde_json::to_value(reason)
                        .ok()
                        .and_then(|r| r.as_str().map(str::to_owned))
                        .unwrap_or_default()
                ),
                FleetVerdict::Skipped => "skipped (not a secured PDU)".to_owned(),
            };
            t.push_str(&format!("line {line}: {id} {who} {verdict}\n"));
        }
        t.push_str(&format!(
            "summary: {} secured frames ({skipped} other frames skipped), {} accepted, {} rejected (malformed {}, no key {}, replay {}, authentication {})\n",
            verdicts.len() - skipped,
            stats.accepted,
            stats.rejected(),
            stats.malformed,
            stats.no_key,
            stats.replay,
            stats.authentication
        ));
        t
    };
    write_output(None, text.as_bytes())?;
    match stats.rejected() {
        0 => Ok(()),
        n => Err(CliError::rejected(format_args!(
            "{n} of {} secured frames rejected",
            verdicts.len() - skipped
        ))),
    }
}
