//! The UDP bus datagram: one CAN frame per datagram (spec: `docs/simulator.md`).
//!
//! ```text
//! offset  size  field
//! 0       4     magic "FKCB"
//! 4       1     version 1
//! 5       1     flags: bit 0 CAN FD, bit 1 extended (29-bit) id, bit 2 BRS; others 0
//! 6       4     CAN id, u32 big-endian (<= 0x7FF standard, <= 0x1FFFFFFF extended)
//! 10      8     sender's time, Unix microseconds, u64 big-endian
//! 18      1     data length: 0..=8 classic; a CAN FD length (0-8, 12, ..., 64) with the FD bit
//! 19      len   data; nothing may follow
//! ```

use super::{CanFrame, FrameError, Received};

/// The datagram magic.
pub const MAGIC: [u8; 4] = *b"FKCB";
/// The datagram version.
pub const VERSION: u8 = 1;
/// Header bytes before the data.
pub const HEADER_LEN: usize = 19;
/// The longest datagram (64 data bytes).
pub const MAX_LEN: usize = HEADER_LEN + 64;

const FLAG_FD: u8 = 0x01;
const FLAG_EXTENDED: u8 = 0x02;
const FLAG_BRS: u8 = 0x04;
const KNOWN_FLAGS: u8 = FLAG_FD | FLAG_EXTENDED | FLAG_BRS;

/// Why a datagram was refused. Each names the field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DatagramError {
    /// Shorter than the 19-byte header.
    #[error("datagram: {0} bytes, shorter than the {HEADER_LEN}-byte header")]
    TooShort(usize),
    /// Not "FKCB".
    #[error("magic: not \"FKCB\"")]
    Magic,
    /// Another version.
    #[error("version: {0}, expected {VERSION}")]
    Version(u8),
    /// Flag bits other than FD, extended, BRS; or BRS without FD.
    #[error("flags: {0:#04x} has unknown bits or BRS without FD")]
    Flags(u8),
    /// The id or the data length is wrong for the frame kind.
    #[error("frame: {0}")]
    Frame(FrameError),
    /// The datagram's size is not the header plus the data length.
    #[error("length: the header says {declared} data bytes, the datagram carries {actual}")]
    Length {
        /// The data length field.
        declared: usize,
        /// Bytes after the header.
        actual: usize,
    },
}

/// Encodes a frame and its time.
pub fn encode(received: &Received) -> Vec<u8> {
    let f = &received.frame;
    let mut out = Vec::with_capacity(HEADER_LEN + f.data.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    let mut flags = 0;
    if f.fd {
        flags |= FLAG_FD;
    }
    if f.extended {
        flags |= FLAG_EXTENDED;
    }
    if f.brs {
        flags |= FLAG_BRS;
    }
    out.push(flags);
    out.extend_from_slice(&f.id.to_be_bytes());
    out.extend_from_slice(&received.at_us.to_be_bytes());
    // A CanFrame has at most 64 data bytes.
    out.push(u8::try_from(f.data.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(&f.data);
    out
}

/// Decodes a datagram; never panics.
pub fn decode(bytes: &[u8]) -> Result<Received, DatagramError> {
    let (header, data) = bytes
        .split_at_checked(HEADER_LEN)
        .ok_or(DatagramError::TooShort(bytes.len()))?;
    let field = |range: std::ops::Range<usize>| header.get(range).unwrap_or_default();
    if field(0..4) != MAGIC {
        return Err(DatagramError::Magic);
    }
    let version = header.get(4).copied().unwrap_or_default();
    if version != VERSION {
        return Err(DatagramError::Version(version));
    }
    let flags = header.get(5).copied().unwrap_or_default();
    let fd = flags & FLAG_FD != 0;
    let brs = flags & FLAG_BRS != 0;
    if flags & !KNOWN_FLAGS != 0 || (brs && !fd) {
        return Err(DatagramError::Flags(flags));
    }
    let mut id = [0u8; 4];
    id.copy_from_slice(field(6..10));
    let mut at = [0u8; 8];
    at.copy_from_slice(field(10..18));
    let declared = usize::from(header.get(18).copied().unwrap_or_default());
    let extended = flags & FLAG_EXTENDED != 0;
    let id = u32::from_be_bytes(id);
    // Check the frame's own rules on the declared length before the size, so that a wrong
    // length field is named as such.
    let probe = vec![0u8; declared.min(65)];
    let built = if fd {
        CanFrame::fd(id, extended, &probe)
    } else {
        CanFrame::classic(id, extended, &probe)
    };
    built.map_err(DatagramError::Frame)?;
    if data.len() != declared {
        return Err(DatagramError::Length {
            declared,
            actual: data.len(),
        });
    }
    let mut frame = if fd {
        CanFrame::fd(id, extended, data)
    } else {
        CanFrame::classic(id, extended, data)
    }
    .map_err(DatagramError::Frame)?;
    frame.brs = brs;
    Ok(Received {
        at_us: u64::from_be_bytes(at),
        frame,
    })
}
