//! The candump log format: what `candump -l` writes and `canplayer`/`log2asc` read.
//!
//! One frame per line, `(SECONDS.MICROS) IFACE FRAME [R|T]`, for example
//! `(1436509052.249713) vcan0 123#DEADBEEF`. The frame token follows can-utils `lib.c`
//! (`parse_canframe` / `snprintf_canframe`):
//!
//! | form | meaning |
//! | --- | --- |
//! | `123#DEADBEEF` | classic frame, 11-bit id (3 hex digits), 0..=8 data bytes |
//! | `12345678#00` | classic frame, 29-bit id (8 hex digits) |
//! | `123#1122334455667788_C` | 8 data bytes with a raw DLC 9..=F (`len8_dlc`) |
//! | `123#R`, `123#R3`, `123#R8_9` | remote frame, requested length 0..=8, optional raw DLC |
//! | `123##1DEADBEEF` | CAN FD: flags nibble (BRS 1, ESI 2, FDF 4), then 0..=64 bytes |
//! | `20000004#0004000000000000` | error frame (`CAN_ERR_FLAG` 0x20000000 set in the id) |
//!
//! Everything is kept losslessly: [`parse_line`] then [`LogLine`]'s `Display` gives back the
//! same value, written exactly as candump writes it (uppercase hex, ids padded to 3 or 8
//! digits, seconds padded to 10 digits, 6 fractional digits, no `.` data separators).
//! See `docs/canlog.md` for the grammar and what is rejected.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::unreachable
    )
)]

use std::borrow::Borrow;
use std::fmt;
use std::io::{self, BufRead, Write};
use std::str::FromStr;
use std::time::Duration;

#[cfg(test)]
mod tests;

/// `CAN_ERR_FLAG` from linux/can.h: set in the id of an error frame.
pub const CAN_ERR_FLAG: u32 = 0x2000_0000;
/// Largest 11-bit (standard) identifier.
pub const MAX_STANDARD_ID: u16 = 0x7FF;
/// Largest 29-bit (extended) identifier, also the mask of an error frame's class bits.
pub const MAX_EXTENDED_ID: u32 = 0x1FFF_FFFF;
/// Most data bytes in a classic CAN frame.
pub const CAN_MAX_DLEN: usize = 8;
/// Most data bytes in a CAN FD frame.
pub const CANFD_MAX_DLEN: usize = 64;
/// The payload lengths a CAN FD frame can have (the DLC table of ISO 11898-1).
pub const CANFD_LENGTHS: [usize; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64];
/// Longest interface name: `IFNAMSIZ - 1`.
pub const MAX_INTERFACE_LEN: usize = 15;
/// Longest line [`read_log`] reads; a candump line is far shorter (under 250 bytes).
pub const MAX_LINE_LEN: usize = 8192;

/// Whether `len` is a valid CAN FD payload length (0..=8, 12, 16, 20, 24, 32, 48, 64).
#[must_use]
pub fn is_fd_len(len: usize) -> bool {
    CANFD_LENGTHS.contains(&len)
}

/// The smallest valid CAN FD payload length that holds `len` bytes, if any (`len <= 64`).
#[must_use]
pub fn fd_len_round_up(len: usize) -> Option<usize> {
    CANFD_LENGTHS.iter().copied().find(|&l| l >= len)
}

/// Why a line, a frame or one of its parts was rejected. The message names the field.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The line as a whole: empty, fields missing, text after the last field.
    #[error("line: {0}")]
    Line(&'static str),
    /// [`read_log`] only: the line is longer than [`MAX_LINE_LEN`].
    #[error("line: longer than {max} bytes")]
    LineTooLong {
        /// The limit, [`MAX_LINE_LEN`].
        max: usize,
    },
    /// [`read_log`] only: the line is not valid UTF-8.
    #[error("line: not valid UTF-8")]
    NotUtf8,
    /// [`read_log`] only: the line is neither a frame line (it does not start with `(`) nor
    /// one of the lines a log may hold besides frames (blank, `#` comment, `DROPCOUNT` note).
    #[error(
        "line: not a candump line (a frame line starts with '('; besides frames a log holds only blank lines, '#' comments and DROPCOUNT notes)"
    )]
    NotALogLine,
    /// The `(SECONDS.MICROS)` field.
    #[error("timestamp: {0}")]
    Timestamp(&'static str),
    /// The interface name.
    #[error("interface: {0}")]
    Interface(&'static str),
    /// The CAN identifier before `#`.
    #[error("id: {0}")]
    Id(&'static str),
    /// The `#` / `##` separator between id and data.
    #[error("separator: {0}")]
    Separator(&'static str),
    /// The hex data bytes.
    #[error("data hex: {0}")]
    DataHex(&'static str),
    /// The number of data bytes for this kind of frame.
    #[error("data length: {len} bytes not allowed in a {kind} frame (allowed: {allowed})")]
    DataLength {
        /// How many bytes were given.
        len: usize,
        /// `classic`, `error`, `remote` or `CAN FD`.
        kind: &'static str,
        /// The allowed lengths.
        allowed: &'static str,
    },
    /// The length digit after `R` in a remote frame.
    #[error("remote length: {0}")]
    RemoteLength(&'static str),
    /// The flags nibble after `##`.
    #[error("fd flags: {0}")]
    FdFlags(&'static str),
    /// The `_X` raw DLC suffix (len8_dlc).
    #[error("raw dlc: {0}")]
    RawDlc(&'static str),
    /// The optional direction field after the frame.
    #[error("direction: {0}")]
    Direction(&'static str),
    /// An error frame (id with `CAN_ERR_FLAG`) in a form error frames cannot take.
    #[error("error frame: {0}")]
    ErrorFrame(&'static str),
    /// A form can-utils knows that fleetkey does not handle.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
}

/// A line of a log that could not be read or parsed.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The line was read but is not a valid candump line.
    #[error("line {line}: {error}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        error: ParseError,
    },
    /// Reading failed; the reader stops after this.
    #[error("line {line}: read failed: {error}")]
    Io {
        /// 1-based number of the line being read.
        line: usize,
        /// The IO error.
        error: io::Error,
    },
    /// The log ended without a single frame line (it was empty, or held only blank lines,
    /// comments and notes). The last item [`read_log`] gives.
    #[error("no frame in the log ({lines} lines read)")]
    NoFrame {
        /// How many lines the log had.
        lines: usize,
    },
}

impl LogError {
    /// The 1-based line number; for [`LogError::NoFrame`], the number of lines in the log.
    #[must_use]
    pub fn line(&self) -> usize {
        match self {
            Self::Parse { line, .. } | Self::Io { line, .. } => *line,
            Self::NoFrame { lines } => *lines,
        }
    }

    /// The parse error, if this is one.
    #[must_use]
    pub fn parse_error(&self) -> Option<ParseError> {
        match self {
            Self::Parse { error, .. } => Some(*error),
            Self::Io { .. } | Self::NoFrame { .. } => None,
        }
    }
}

/// A log timestamp: seconds and microseconds since the epoch, exact (no floating point).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    secs: u64,
    micros: u32,
}

impl Timestamp {
    /// A timestamp; `None` unless `micros < 1_000_000`.
    #[must_use]
    pub fn new(secs: u64, micros: u32) -> Option<Self> {
        (micros < 1_000_000).then_some(Self { secs, micros })
    }

    /// Whole seconds.
    #[must_use]
    pub fn secs(self) -> u64 {
        self.secs
    }

    /// Microseconds within the second, `0..1_000_000`.
    #[must_use]
    pub fn micros(self) -> u32 {
        self.micros
    }

    /// The total in microseconds.
    #[must_use]
    pub fn as_micros(self) -> u128 {
        u128::from(self.secs) * 1_000_000 + u128::from(self.micros)
    }

    /// The same instant as a [`Duration`] since the epoch.
    #[must_use]
    pub fn as_duration(self) -> Duration {
        Duration::new(self.secs, self.micros * 1000)
    }

    /// How long after `earlier` this is, or `None` if it is before `earlier`.
    #[must_use]
    pub fn since(self, earlier: Self) -> Option<Duration> {
        self.as_duration().checked_sub(earlier.as_duration())
    }
}

/// `SECONDS.MICROS` as candump writes it: seconds zero-padded to 10 digits, 6 fractional digits.
impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:010}.{:06}", self.secs, self.micros)
    }
}

/// A network interface name: 1..=15 bytes, no whitespace, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Interface(String);

impl Interface {
    /// Checks and wraps an interface name.
    pub fn new(name: impl Into<String>) -> Result<Self, ParseError> {
        let name = name.into();
        if name.is_empty() {
            return Err(ParseError::Interface("empty"));
        }
        if name.len() > MAX_INTERFACE_LEN {
            return Err(ParseError::Interface("longer than 15 bytes (IFNAMSIZ - 1)"));
        }
        if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ParseError::Interface(
                "contains whitespace or a control character",
            ));
        }
        Ok(Self(name))
    }

    /// The name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Interface {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for Interface {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        Self::new(s)
    }
}

/// An 11-bit CAN identifier, `0..=0x7FF`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StandardId(u16);

impl StandardId {
    /// `None` if `raw > 0x7FF`.
    #[must_use]
    pub const fn new(raw: u16) -> Option<Self> {
        if raw <= MAX_STANDARD_ID {
            Some(Self(raw))
        } else {
            None
        }
    }

    /// The identifier.
    #[must_use]
    pub const fn as_raw(self) -> u16 {
        self.0
    }
}

/// A 29-bit CAN identifier, `0..=0x1FFF_FFFF`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExtendedId(u32);

impl ExtendedId {
    /// `None` if `raw > 0x1FFF_FFFF`.
    #[must_use]
    pub const fn new(raw: u32) -> Option<Self> {
        if raw <= MAX_EXTENDED_ID {
            Some(Self(raw))
        } else {
            None
        }
    }

    /// The identifier.
    #[must_use]
    pub const fn as_raw(self) -> u32 {
        self.0
    }
}

/// A CAN identifier. In the log a standard id is written with 3 hex digits and an extended id
/// with 8, so `00000123` (extended) and `123` (standard) are different ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CanId {
    /// 11-bit identifier.
    Standard(StandardId),
    /// 29-bit identifier.
    Extended(ExtendedId),
}

impl CanId {
    /// A standard id; `None` if `raw > 0x7FF`.
    #[must_use]
    pub const fn standard(raw: u16) -> Option<Self> {
        match StandardId::new(raw) {
            Some(id) => Some(Self::Standard(id)),
            None => None,
        }
    }

    /// An extended id; `None` if `raw > 0x1FFF_FFFF`.
    #[must_use]
    pub const fn extended(raw: u32) -> Option<Self> {
        match ExtendedId::new(raw) {
            Some(id) => Some(Self::Extended(id)),
            None => None,
        }
    }

    /// The identifier value, without flags.
    #[must_use]
    pub const fn as_raw(self) -> u32 {
        match self {
            Self::Standard(id) => id.0 as u32,
            Self::Extended(id) => id.0,
        }
    }

    /// Whether this is a 29-bit id.
    #[must_use]
    pub const fn is_extended(self) -> bool {
        matches!(self, Self::Extended(_))
    }
}

/// `123` (3 digits) or `00000123` (8 digits), uppercase hex.
impl fmt::Display for CanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Standard(id) => write!(f, "{:03X}", id.0),
            Self::Extended(id) => write!(f, "{:08X}", id.0),
        }
    }
}

/// The CAN FD flags nibble written after `##` (linux/can.h `CANFD_*`). All four bits are kept
/// as written, as can-utils does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FdFlags(u8);

impl FdFlags {
    /// No flags.
    pub const NONE: Self = Self(0);
    /// `CANFD_BRS`: bit rate switch.
    pub const BRS: Self = Self(0x01);
    /// `CANFD_ESI`: error state indicator of the sender.
    pub const ESI: Self = Self(0x02);
    /// `CANFD_FDF`: set by newer kernels on every CAN FD frame.
    pub const FDF: Self = Self(0x04);

    /// `None` if `bits > 0xF`.
    #[must_use]
    pub const fn new(bits: u8) -> Option<Self> {
        if bits <= 0xF { Some(Self(bits)) } else { None }
    }

    /// The nibble.
    #[must_use]
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether every flag of `other` is set.
    #[must_use]
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Both sets of flags.
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Bit rate switch set.
    #[must_use]
    pub const fn brs(self) -> bool {
        self.contains(Self::BRS)
    }

    /// Error state indicator set.
    #[must_use]
    pub const fn esi(self) -> bool {
        self.contains(Self::ESI)
    }
}

/// What kind of frame, with what is kept beyond id and data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// Classic CAN data frame, 0..=8 bytes.
    Classic {
        /// Raw DLC 9..=15 from an `_X` suffix; only with 8 data bytes.
        len8_dlc: Option<u8>,
    },
    /// Classic remote (RTR) frame: no data, a requested length.
    Remote {
        /// Requested length 0..=8 (`R`, `R0`..`R8`).
        len: u8,
        /// Raw DLC 9..=15 from an `_X` suffix; only with `len == 8`.
        len8_dlc: Option<u8>,
    },
    /// CAN FD frame with a valid CAN FD length.
    Fd {
        /// The flags nibble.
        flags: FdFlags,
    },
    /// Error frame: the id holds the error class bits (`CAN_ERR_FLAG` removed), 0..=8 bytes.
    Error {
        /// Raw DLC 9..=15 from an `_X` suffix; only with 8 data bytes.
        len8_dlc: Option<u8>,
    },
}

/// One CAN frame as a candump log writes it. The constructors check every rule, so any
/// `Frame` displays as a line that parses back to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Frame {
    id: CanId,
    kind: FrameKind,
    data: Vec<u8>,
}

fn classic_len(len: usize, kind: &'static str) -> Result<(), ParseError> {
    if len <= CAN_MAX_DLEN {
        Ok(())
    } else {
        Err(ParseError::DataLength {
            len,
            kind,
            allowed: "0..=8",
        })
    }
}

fn fd_len(len: usize) -> Result<(), ParseError> {
    if is_fd_len(len) {
        Ok(())
    } else {
        Err(ParseError::DataLength {
            len,
            kind: "CAN FD",
            allowed: "0..=8, 12, 16, 20, 24, 32, 48 or 64",
        })
    }
}

fn check_len8_dlc(dlc: u8, len: usize) -> Result<(), ParseError> {
    if !(9..=15).contains(&dlc) {
        return Err(ParseError::RawDlc("must be 9..=F"));
    }
    if len != CAN_MAX_DLEN {
        return Err(ParseError::RawDlc("only allowed with a length of 8"));
    }
    Ok(())
}

impl Frame {
    /// A classic data frame; 0..=8 bytes.
    pub fn classic(id: CanId, data: &[u8]) -> Result<Self, ParseError> {
        classic_len(data.len(), "classic")?;
        Ok(Self {
            id,
            kind: FrameKind::Classic { len8_dlc: None },
            data: data.to_vec(),
        })
    }

    /// A remote frame requesting `len` (0..=8) bytes.
    pub fn remote(id: CanId, len: u8) -> Result<Self, ParseError> {
        if usize::from(len) > CAN_MAX_DLEN {
            return Err(ParseError::RemoteLength("must be 0..=8"));
        }
        Ok(Self {
            id,
            kind: FrameKind::Remote {
                len,
                len8_dlc: None,
            },
            data: Vec::new(),
        })
    }

    /// A CAN FD frame; the length must be a CAN FD length ([`is_fd_len`]).
    pub fn fd(id: CanId, flags: FdFlags, data: &[u8]) -> Result<Self, ParseError> {
        fd_len(data.len())?;
        Ok(Self {
            id,
            kind: FrameKind::Fd { flags },
            data: data.to_vec(),
        })
    }

    /// An error frame with error class bits `class` (`<= 0x1FFF_FFFF`) and 0..=8 bytes.
    pub fn error(class: u32, data: &[u8]) -> Result<Self, ParseError> {
        let id = CanId::extended(class).ok_or(ParseError::ErrorFrame("class above 0x1FFFFFFF"))?;
        classic_len(data.len(), "error")?;
        Ok(Self {
            id,
            kind: FrameKind::Error { len8_dlc: None },
            data: data.to_vec(),
        })
    }

    /// The same frame with a raw DLC 9..=15 (written `_X`). Only for classic, error and
    /// remote frames of length 8.
    pub fn with_len8_dlc(mut self, dlc: u8) -> Result<Self, ParseError> {
        match &mut self.kind {
            FrameKind::Classic { len8_dlc } | FrameKind::Error { len8_dlc } => {
                check_len8_dlc(dlc, self.data.len())?;
                *len8_dlc = Some(dlc);
            }
            FrameKind::Remote { len, len8_dlc } => {
                check_len8_dlc(dlc, usize::from(*len))?;
                *len8_dlc = Some(dlc);
            }
            FrameKind::Fd { .. } => {
                return Err(ParseError::RawDlc("not allowed in a CAN FD frame"));
            }
        }
        Ok(self)
    }

    /// A frame with the same id and kind and new data (for example a payload with a MAC
    /// appended), checked like the constructors. A raw DLC is kept only if the new data is
    /// 8 bytes long. Remote frames carry no data: only empty `data` is accepted.
    pub fn with_data(&self, data: &[u8]) -> Result<Self, ParseError> {
        let kind = match self.kind {
            FrameKind::Classic { len8_dlc } => {
                classic_len(data.len(), "classic")?;
                FrameKind::Classic {
                    len8_dlc: len8_dlc.filter(|_| data.len() == CAN_MAX_DLEN),
                }
            }
            FrameKind::Error { len8_dlc } => {
                classic_len(data.len(), "error")?;
                FrameKind::Error {
                    len8_dlc: len8_dlc.filter(|_| data.len() == CAN_MAX_DLEN),
                }
            }
            FrameKind::Fd { flags } => {
                fd_len(data.len())?;
                FrameKind::Fd { flags }
            }
            FrameKind::Remote { .. } => {
                if !data.is_empty() {
                    return Err(ParseError::DataLength {
                        len: data.len(),
                        kind: "remote",
                        allowed: "0",
                    });
                }
                self.kind
            }
        };
        Ok(Self {
            id: self.id,
            kind,
            data: data.to_vec(),
        })
    }

    /// The identifier; for an error frame, the error class bits as an extended id.
    #[must_use]
    pub fn id(&self) -> CanId {
        self.id
    }

    /// The kind of frame.
    #[must_use]
    pub fn kind(&self) -> FrameKind {
        self.kind
    }

    /// The data bytes (empty for a remote frame).
    #[must_use]
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Consumes the frame, giving its data.
    #[must_use]
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }

    /// Whether this is a CAN FD frame.
    #[must_use]
    pub fn is_fd(&self) -> bool {
        matches!(self.kind, FrameKind::Fd { .. })
    }

    /// The Linux `can_id`: the identifier with `CAN_EFF_FLAG`, `CAN_RTR_FLAG` and
    /// `CAN_ERR_FLAG` as they apply.
    #[must_use]
    pub fn linux_can_id(&self) -> u32 {
        const CAN_EFF_FLAG: u32 = 0x8000_0000;
        const CAN_RTR_FLAG: u32 = 0x4000_0000;
        let id = self.id.as_raw();
        match (self.kind, self.id) {
            (FrameKind::Error { .. }, _) => id | CAN_ERR_FLAG,
            (FrameKind::Remote { .. }, CanId::Extended(_)) => id | CAN_EFF_FLAG | CAN_RTR_FLAG,
            (FrameKind::Remote { .. }, CanId::Standard(_)) => id | CAN_RTR_FLAG,
            (_, CanId::Extended(_)) => id | CAN_EFF_FLAG,
            (_, CanId::Standard(_)) => id,
        }
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, data: &[u8]) -> fmt::Result {
    data.iter().try_for_each(|b| write!(f, "{b:02X}"))
}

fn write_len8_dlc(f: &mut fmt::Formatter<'_>, dlc: Option<u8>) -> fmt::Result {
    match dlc {
        Some(dlc) => write!(f, "_{dlc:X}"),
        None => Ok(()),
    }
}

/// The frame token exactly as `snprintf_canframe` writes it (no separators).
impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            FrameKind::Error { len8_dlc } => {
                write!(f, "{:08X}#", self.id.as_raw() | CAN_ERR_FLAG)?;
                write_hex(f, &self.data)?;
                write_len8_dlc(f, len8_dlc)
            }
            FrameKind::Classic { len8_dlc } => {
                write!(f, "{}#", self.id)?;
                write_hex(f, &self.data)?;
                write_len8_dlc(f, len8_dlc)
            }
            FrameKind::Remote { len, len8_dlc } => {
                write!(f, "{}#R", self.id)?;
                if len > 0 {
                    write!(f, "{len}")?;
                    write_len8_dlc(f, len8_dlc)?;
                }
                Ok(())
            }
            FrameKind::Fd { flags } => {
                write!(f, "{}##{:X}", self.id, flags.bits())?;
                write_hex(f, &self.data)
            }
        }
    }
}

impl FromStr for Frame {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        parse_frame(s)
    }
}

/// The optional field candump `-x` appends: received or sent by this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// `R`: received.
    Rx,
    /// `T`: transmitted.
    Tx,
}

/// One line of a candump log.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LogLine {
    /// When the frame was seen.
    pub timestamp: Timestamp,
    /// The interface it was seen on.
    pub interface: Interface,
    /// The frame.
    pub frame: Frame,
    /// The `R`/`T` field candump `-x` and asc2log append, if present.
    pub direction: Option<Direction>,
}

/// `(SECONDS.MICROS) IFACE FRAME[ R| T]`, as candump -l writes it (no line terminator).
impl fmt::Display for LogLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({}) {} {}", self.timestamp, self.interface, self.frame)?;
        match self.direction {
            Some(Direction::Rx) => f.write_str(" R"),
            Some(Direction::Tx) => f.write_str(" T"),
            None => Ok(()),
        }
    }
}

impl FromStr for LogLine {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        parse_line(s)
    }
}

/// C `isspace`: what separates fields for can-utils' `sscanf`.
fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0B' | '\x0C')
}

/// Parses one line, `(SECONDS.MICROS) IFACE FRAME` with an optional `R` or `T` field after
/// the frame. Fields are separated by spaces or tabs; trailing whitespace (`\r`, `\n`) is
/// ignored. Never panics.
pub fn parse_line(line: &str) -> Result<LogLine, ParseError> {
    let mut fields = line.split(is_c_space).filter(|s| !s.is_empty());
    let ts = fields.next().ok_or(ParseError::Line("empty"))?;
    if !line.starts_with('(') {
        return Err(ParseError::Timestamp("line must start with '('"));
    }
    let timestamp = parse_timestamp(ts)?;
    let interface = Interface::new(fields.next().ok_or(ParseError::Line("missing interface"))?)?;
    let frame = parse_frame(fields.next().ok_or(ParseError::Line("missing frame"))?)?;
    let direction = match fields.next() {
        None => None,
        Some("R") => Some(Direction::Rx),
        Some("T") => Some(Direction::Tx),
        Some(_) => return Err(ParseError::Direction("expected 'R' or 'T' after the frame")),
    };
    if fields.next().is_some() {
        return Err(ParseError::Line("unexpected text after the frame"));
    }
    Ok(LogLine {
        timestamp,
        interface,
        frame,
        direction,
    })
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// `(SECONDS.MICROS)` with exactly 6 fractional digits.
fn parse_timestamp(token: &str) -> Result<Timestamp, ParseError> {
    let inner = token
        .strip_prefix('(')
        .ok_or(ParseError::Timestamp("must start with '('"))?
        .strip_suffix(')')
        .ok_or(ParseError::Timestamp(
            "must end with ')' followed by whitespace",
        ))?;
    let (secs, frac) = inner
        .split_once('.')
        .ok_or(ParseError::Timestamp("missing '.'"))?;
    if !all_digits(secs) {
        return Err(ParseError::Timestamp("seconds must be decimal digits"));
    }
    if !all_digits(frac) {
        return Err(ParseError::Timestamp("fraction must be decimal digits"));
    }
    if frac.len() == 9 {
        return Err(ParseError::Timestamp(
            "9 fractional digits (candump -N nanoseconds) are not supported: 6 expected",
        ));
    }
    if frac.len() != 6 {
        return Err(ParseError::Timestamp("fraction must have exactly 6 digits"));
    }
    let secs = secs
        .parse::<u64>()
        .map_err(|_| ParseError::Timestamp("seconds do not fit 64 bits"))?;
    let micros = frac
        .parse::<u32>()
        .map_err(|_| ParseError::Timestamp("fraction must be decimal digits"))?;
    Timestamp::new(secs, micros).ok_or(ParseError::Timestamp("fraction must have exactly 6 digits"))
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn parse_hex_u32(s: &str) -> Option<u32> {
    s.bytes()
        .try_fold(0u32, |acc, b| Some((acc << 4) | u32::from(hex_value(b)?)))
}

/// Hex bytes, each optionally preceded by one `.`, and an optional `.` at the end
/// (what `parse_canframe` accepts).
fn parse_data(s: &str) -> Result<Vec<u8>, ParseError> {
    let mut data = Vec::with_capacity(s.len() / 2);
    let mut high: Option<u8> = None;
    let mut last_dot = false;
    for b in s.bytes() {
        if b == b'.' {
            if high.is_some() {
                return Err(ParseError::DataHex("'.' inside a byte"));
            }
            if last_dot {
                return Err(ParseError::DataHex("two '.' in a row"));
            }
            last_dot = true;
            continue;
        }
        last_dot = false;
        let v = hex_value(b).ok_or(ParseError::DataHex("not a hex digit"))?;
        match high.take() {
            Some(h) => data.push((h << 4) | v),
            None => high = Some(v),
        }
    }
    if high.is_some() {
        return Err(ParseError::DataHex("odd number of hex digits"));
    }
    Ok(data)
}

/// The `_X` raw DLC suffix: one hex digit 9..=F.
fn parse_len8_dlc(s: &str) -> Result<u8, ParseError> {
    let mut bytes = s.bytes();
    match (bytes.next(), bytes.next()) {
        (Some(b), None) => hex_value(b).ok_or(ParseError::RawDlc("must be a hex digit 9..=F")),
        (None, _) => Err(ParseError::RawDlc("missing digit after '_'")),
        (Some(_), Some(_)) => Err(ParseError::RawDlc("must be a single hex digit 9..=F")),
    }
}

/// Parses the frame token alone (`123#DEADBEEF`, `123##1AB`, `123#R`, ...). Never panics.
pub fn parse_frame(token: &str) -> Result<Frame, ParseError> {
    let (id_str, rest) = token
        .split_once('#')
        .ok_or(ParseError::Separator("missing '#' after the id"))?;
    if !id_str.bytes().all(|b| hex_value(b).is_some()) {
        return Err(ParseError::Id("not hexadecimal"));
    }
    let raw = parse_hex_u32(id_str);
    let (id, error) = match (id_str.len(), raw) {
        (3, Some(raw)) => {
            let id = u16::try_from(raw).ok().and_then(CanId::standard);
            (
                id.ok_or(ParseError::Id("standard (3-digit) id above 0x7FF"))?,
                false,
            )
        }
        (8, Some(raw)) if raw & 0xC000_0000 != 0 => {
            return Err(ParseError::Id(
                "extended (8-digit) id above 0x3FFFFFFF (EFF/RTR flag bits set)",
            ));
        }
        (8, Some(raw)) => {
            let error = raw & CAN_ERR_FLAG != 0;
            let id = CanId::extended(raw & MAX_EXTENDED_ID)
                .ok_or(ParseError::Id("extended id above 0x1FFFFFFF"))?;
            (id, error)
        }
        (5, _) => {
            return Err(ParseError::Unsupported(
                "CAN XL frames (5-digit priority id)",
            ));
        }
        _ => {
            return Err(ParseError::Id(
                "expected 3 (standard) or 8 (extended) hex digits before '#'",
            ));
        }
    };

    if let Some(rtr) = rest.strip_prefix(['R', 'r']) {
        if error {
            return Err(ParseError::ErrorFrame("cannot be a remote frame"));
        }
        let (len_str, dlc_str) = match rtr.split_once('_') {
            Some((l, d)) => (l, Some(d)),
            None => (rtr, None),
        };
        let len = match len_str.as_bytes() {
            [] => 0,
            [d @ b'0'..=b'8'] => d - b'0',
            _ => {
                return Err(ParseError::RemoteLength(
                    "must be one digit 0..=8 after 'R'",
                ));
            }
        };
        let frame = Frame::remote(id, len)?;
        return match dlc_str {
            Some(d) => frame.with_len8_dlc(parse_len8_dlc(d)?),
            None => Ok(frame),
        };
    }

    if let Some(fd) = rest.strip_prefix('#') {
        if error {
            return Err(ParseError::ErrorFrame("cannot be a CAN FD frame"));
        }
        let mut chars = fd.bytes();
        let flags = chars
            .next()
            .ok_or(ParseError::FdFlags("missing flags nibble after '##'"))?;
        let flags = hex_value(flags)
            .and_then(FdFlags::new)
            .ok_or(ParseError::FdFlags("not a hex digit"))?;
        let data = parse_data(fd.get(1..).unwrap_or_default())?;
        return Frame::fd(id, flags, &data);
    }

    let (data_str, dlc_str) = match rest.split_once('_') {
        Some((l, d)) => (l, Some(d)),
        None => (rest, None),
    };
    let data = parse_data(data_str)?;
    let frame = if error {
        Frame::error(id.as_raw(), &data)?
    } else {
        Frame::classic(id, &data)?
    };
    match dlc_str {
        Some(d) => frame.with_len8_dlc(parse_len8_dlc(d)?),
        None => Ok(frame),
    }
}

/// Reads a candump log line by line. Made by [`read_log`].
#[derive(Debug)]
pub struct LogReader<R> {
    reader: R,
    line: usize,
    buf: Vec<u8>,
    done: bool,
    /// Whether any item (a frame or a parse error) has been given.
    any: bool,
}

/// What a line of a candump log is, once it is known to be UTF-8 and short enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineKind {
    /// Starts with `(`: must parse as a frame line.
    Frame,
    /// Blank, a `#` comment or a candump `DROPCOUNT` note: skipped.
    Skipped,
    /// Anything else: refused.
    Other,
}

/// The prefix of the note candump prints when the socket dropped frames.
const DROPCOUNT: &str = "DROPCOUNT: ";

fn line_kind(line: &str) -> LineKind {
    if line.starts_with('(') {
        LineKind::Frame
    } else if line.chars().all(is_c_space) || line.starts_with('#') || line.starts_with(DROPCOUNT) {
        LineKind::Skipped
    } else {
        LineKind::Other
    }
}

/// Reads a candump log: one item per frame line, in order.
///
/// Every line must be UTF-8 and at most [`MAX_LINE_LEN`] bytes (checked before anything
/// else; a longer line is not held in memory), and be one of: a frame line (starts with
/// `(`), a blank line (only whitespace), a comment (starts with `#`) or candump's note
/// `DROPCOUNT: ...`. The last three are skipped; a frame line that does not parse and any
/// other line give a [`LogError::Parse`] with the 1-based line number, and reading goes on
/// with the next line. A read error gives [`LogError::Io`] and ends the iteration. A log
/// that ends without giving any item (empty, or only skipped lines) gives one
/// [`LogError::NoFrame`]. `\r\n` line ends are read as `\n`.
pub fn read_log<R: BufRead>(reader: R) -> LogReader<R> {
    LogReader {
        reader,
        line: 0,
        buf: Vec::new(),
        done: false,
        any: false,
    }
}

impl<R: BufRead> LogReader<R> {
    /// The 1-based number of the line the last item came from (0 before the first).
    #[must_use]
    pub fn line_number(&self) -> usize {
        self.line
    }

    /// Reads the next line into `self.buf` (at most `MAX_LINE_LEN + 1` bytes kept, no `\n`).
    /// `Ok(None)` at end of input, `Ok(Some(too_long))` otherwise.
    fn next_raw_line(&mut self) -> io::Result<Option<bool>> {
        self.buf.clear();
        let mut any = false;
        let mut too_long = false;
        loop {
            let available = match self.reader.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                return Ok(any.then_some(too_long));
            }
            any = true;
            let (chunk, used, end) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (available.get(..i).unwrap_or_default(), i + 1, true),
                None => (available, available.len(), false),
            };
            let room = (MAX_LINE_LEN + 1).saturating_sub(self.buf.len());
            if chunk.len() > room {
                too_long = true;
            }
            self.buf
                .extend_from_slice(chunk.get(..chunk.len().min(room)).unwrap_or_default());
            if self.buf.len() > MAX_LINE_LEN {
                too_long = true;
            }
            self.reader.consume(used);
            if end {
                return Ok(Some(too_long));
            }
        }
    }
}

impl<R: BufRead> Iterator for LogReader<R> {
    type Item = Result<LogLine, LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            self.line += 1;
            let line = self.line;
            let too_long = match self.next_raw_line() {
                Ok(Some(too_long)) => too_long,
                Ok(None) => {
                    self.done = true;
                    let lines = line - 1;
                    self.line = lines;
                    return (!self.any).then_some(Err(LogError::NoFrame { lines }));
                }
                Err(error) => {
                    self.done = true;
                    return Some(Err(LogError::Io { line, error }));
                }
            };
            let parsed = if too_long {
                Err(ParseError::LineTooLong { max: MAX_LINE_LEN })
            } else {
                match std::str::from_utf8(&self.buf) {
                    Err(_) => Err(ParseError::NotUtf8),
                    Ok(text) => match line_kind(text) {
                        LineKind::Skipped => continue,
                        LineKind::Frame => parse_line(text),
                        LineKind::Other => Err(ParseError::NotALogLine),
                    },
                }
            };
            self.any = true;
            return Some(parsed.map_err(|error| LogError::Parse { line, error }));
        }
        None
    }
}

/// Writes lines as candump -l does, each followed by `\n`.
pub fn write_log<W, I>(mut writer: W, lines: I) -> io::Result<()>
where
    W: Write,
    I: IntoIterator,
    I::Item: Borrow<LogLine>,
{
    for line in lines {
        writeln!(writer, "{}", line.borrow())?;
    }
    Ok(())
}
