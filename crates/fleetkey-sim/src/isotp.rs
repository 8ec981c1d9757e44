//! ISO-TP (ISO 15765-2) segmentation and reassembly sized for CAN FD (64-byte frames), to carry
//! SHE M1-M3 (64 bytes) and M4-M5 (48 bytes), governance records (up to 1024 bytes) and group
//! seed updates between the gateway and one ECU.
//!
//! ```text
//! single frame       0x0L data            (L = length 1..=7)
//!                    0x00 LL data         (LL = length 8..=62, CAN FD escape)
//! first frame        0x1H LL data(62)     (HLL = total length 63..=4095)
//! consecutive frame  0x2N data(<=63)      (N = sequence number 1, 2, ..., 15, 0, 1, ...)
//! flow control       0x3S BS STmin        (S: 0 continue, 1 wait, 2 overflow; BS 0 = no limit)
//! ```
//! Frames are CAN FD, padded with 0xCC to the next CAN FD length. The receiver answers a first
//! frame with a flow control; a transfer that stalls longer than the timeout (ISO 15765-2's
//! N_Cr / N_Bs, 1000 ms by default) is dropped with [`IsoTpError::Timeout`].

use std::collections::VecDeque;

use crate::bus::{CanFrame, FrameError};

/// The longest message (12-bit first frame length).
pub const MAX_MESSAGE: usize = 4095;
/// The longest single frame payload in a 64-byte CAN FD frame.
pub const MAX_SINGLE: usize = 62;
/// Data bytes in a first frame.
pub const FIRST_DATA: usize = 62;
/// Data bytes in a full consecutive frame.
pub const CONSECUTIVE_DATA: usize = 63;
/// Padding byte.
pub const PAD: u8 = 0xCC;
/// Default N_Cr / N_Bs timeout in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 1000;

/// Why a frame or a message was refused. Each names what was wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IsoTpError {
    /// A message of 0 bytes.
    #[error("message: empty")]
    Empty,
    /// A message longer than 4095 bytes.
    #[error("message: {0} bytes, at most {MAX_MESSAGE}")]
    TooLong(usize),
    /// A frame with no PCI byte.
    #[error("frame: empty, no PCI byte")]
    EmptyFrame,
    /// A PCI type other than 0-3.
    #[error("pci: unknown frame type {0:#x}")]
    UnknownPci(u8),
    /// A single frame's length is 0, too long, or beyond the frame.
    #[error("single frame: length {0} is invalid for this frame")]
    SingleLength(usize),
    /// A first frame's total length fits a single frame, or the frame is short.
    #[error("first frame: total length {0} is invalid (63..=4095, frame of 64 bytes)")]
    FirstLength(usize),
    /// A consecutive frame out of sequence (a segment is missing).
    #[error("consecutive frame: sequence number {got}, expected {expected} (a segment is missing)")]
    WrongSequence {
        /// The sequence number expected.
        expected: u8,
        /// The one received.
        got: u8,
    },
    /// A consecutive frame with no transfer in progress.
    #[error("consecutive frame: no transfer in progress")]
    UnexpectedConsecutive,
    /// A consecutive frame shorter than the rest of the message needs, but not the last.
    #[error("consecutive frame: {0} data bytes, a full one carries {CONSECUTIVE_DATA}")]
    ShortConsecutive(usize),
    /// A flow control with no transfer waiting for one.
    #[error("flow control: no transfer waiting for one")]
    UnexpectedFlowControl,
    /// A flow control with an unknown status or too short.
    #[error("flow control: status {0:#x} or length invalid")]
    FlowControl(u8),
    /// The receiver answered overflow: the message is too long for it.
    #[error("flow control: the receiver has no room (overflow)")]
    Overflow,
    /// A new first frame arrived while a transfer was in progress; the old one is dropped.
    #[error("first frame: arrived while a transfer was in progress; the old transfer is dropped")]
    Interrupted,
    /// The transfer stalled past the timeout.
    #[error("transfer: no frame for {0} ms (timeout); dropped")]
    Timeout(u64),
    /// A frame could not be built.
    #[error("frame: {0}")]
    Frame(FrameError),
}

/// The frames of one message before flow control: the single frame, or the first frame and the
/// consecutive frames that follow a flow control.
#[derive(Clone, Debug)]
pub struct Segmenter {
    message: Vec<u8>,
    offset: usize,
    sn: u8,
}

impl Segmenter {
    /// Segments a message of 1..=4095 bytes.
    pub fn new(message: Vec<u8>) -> Result<Self, IsoTpError> {
        match message.len() {
            0 => Err(IsoTpError::Empty),
            n if n > MAX_MESSAGE => Err(IsoTpError::TooLong(n)),
            _ => Ok(Self {
                message,
                offset: 0,
                sn: 1,
            }),
        }
    }

    /// Whether the message fits a single frame.
    pub fn is_single(&self) -> bool {
        self.message.len() <= MAX_SINGLE
    }

    /// Whether every byte has been framed.
    pub fn is_done(&self) -> bool {
        self.offset >= self.message.len()
    }

    /// The first frame's data: the single frame, or the first frame (then wait for a flow
    /// control and call [`Segmenter::consecutive`]).
    pub fn first(&mut self) -> Vec<u8> {
        let len = self.message.len();
        let mut out = Vec::with_capacity(64);
        if len <= 7 {
            out.push(len as u8);
            out.extend_from_slice(&self.message);
            self.offset = len;
        } else if len <= MAX_SINGLE {
            out.extend_from_slice(&[0x00, len as u8]);
            out.extend_from_slice(&self.message);
            self.offset = len;
        } else {
            out.push(0x10 | ((len >> 8) as u8 & 0x0F));
            out.push((len & 0xFF) as u8);
            out.extend_from_slice(self.message.get(..FIRST_DATA).unwrap_or_default());
            self.offset = FIRST_DATA;
        }
        out
    }

    /// Up to `block` consecutive frames (0: all the rest).
    pub fn consecutive(&mut self, block: u8) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        while !self.is_done() && (block == 0 || frames.len() < usize::from(block)) {
            let end = (self.offset + CONSECUTIVE_DATA).min(self.message.len());
            let mut f = Vec::with_capacity(64);
            f.push(0x20 | self.sn);
            f.extend_from_slice(self.message.get(self.offset..end).unwrap_or_default());
            frames.push(f);
            self.offset = end;
            self.sn = (self.sn + 1) & 0x0F;
        }
        frames
    }
}

/// A flow control frame's data.
pub fn flow_control(status: FlowStatus, block: u8, st_min: u8) -> Vec<u8> {
    vec![0x30 | status as u8, block, st_min]
}

/// Flow control status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FlowStatus {
    /// Continue to send.
    Continue = 0,
    /// Wait.
    Wait = 1,
    /// Overflow: abort.
    Overflow = 2,
}

/// A parsed flow control.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// Status.
    pub status: FlowStatus,
    /// Block size (0: no limit).
    pub block: u8,
    /// Separation time.
    pub st_min: u8,
}

/// Parses a flow control frame's data.
pub fn parse_flow_control(data: &[u8]) -> Result<Flow, IsoTpError> {
    let pci = *data.first().ok_or(IsoTpError::EmptyFrame)?;
    if pci >> 4 != 3 {
        return Err(IsoTpError::UnknownPci(pci >> 4));
    }
    let status = match pci & 0x0F {
        0 => FlowStatus::Continue,
        1 => FlowStatus::Wait,
        2 => FlowStatus::Overflow,
        s => return Err(IsoTpError::FlowControl(s)),
    };
    let (Some(&block), Some(&st_min)) = (data.get(1), data.get(2)) else {
        return Err(IsoTpError::FlowControl(pci & 0x0F));
    };
    Ok(Flow {
        status,
        block,
        st_min,
    })
}

/// What a frame did to a [`Reassembler`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// More frames are needed.
    Pending,
    /// A first frame arrived: send this flow control.
    SendFlowControl(Vec<u8>),
    /// A whole message.
    Complete(Vec<u8>),
}

/// Reassembles the messages of one direction of one link.
#[derive(Clone, Debug)]
pub struct Reassembler {
    max_len: usize,
    timeout_ms: u64,
    buf: Vec<u8>,
    expected_len: usize,
    next_sn: u8,
    last_ms: u64,
    active: bool,
}

impl Reassembler {
    /// Accepts messages up to `max_len` bytes (longer first frames get an overflow flow
    /// control); drops transfers stalled for `timeout_ms`.
    pub fn new(max_len: usize, timeout_ms: u64) -> Self {
        Self {
            max_len: max_len.min(MAX_MESSAGE),
            timeout_ms,
            buf: Vec::new(),
            expected_len: 0,
            next_sn: 1,
            last_ms: 0,
            active: false,
        }
    }

    /// Whether a multi-frame transfer is in progress.
    pub fn in_progress(&self) -> bool {
        self.active
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.active = false;
        self.expected_len = 0;
        self.next_sn = 1;
    }

    /// Drops a transfer that has stalled past the timeout.
    pub fn poll(&mut self, now_ms: u64) -> Result<(), IsoTpError> {
        if self.active && now_ms.saturating_sub(self.last_ms) > self.timeout_ms {
            self.reset();
            return Err(IsoTpError::Timeout(self.timeout_ms));
        }
        Ok(())
    }

    /// Takes one frame's data (flow controls are not for the reassembler: they are refused as
    /// [`IsoTpError::UnexpectedFlowControl`]). On an error the transfer in progress is dropped.
    pub fn on_frame(&mut self, now_ms: u64, data: &[u8]) -> Result<Event, IsoTpError> {
        self.poll(now_ms)?;
        let result = self.frame(now_ms, data);
        if result.is_err() && !matches!(result, Err(IsoTpError::Interrupted)) {
            self.reset();
        }
        result
    }

    fn frame(&mut self, now_ms: u64, data: &[u8]) -> Result<Event, IsoTpError> {
        let pci = *data.first().ok_or(IsoTpError::EmptyFrame)?;
        match pci >> 4 {
            0 => {
                // A single frame ends any transfer in progress (that one is lost).
                self.reset();
                let (len, body) = match pci & 0x0F {
                    0 => {
                        let len = usize::from(*data.get(1).ok_or(IsoTpError::SingleLength(0))?);
                        if len <= 7 || len > MAX_SINGLE {
                            return Err(IsoTpError::SingleLength(len));
                        }
                        (len, data.get(2..).unwrap_or_default())
                    }
                    n => (usize::from(n), data.get(1..).unwrap_or_default()),
                };
                let message = body.get(..len).ok_or(IsoTpError::SingleLength(len))?;
                Ok(Event::Complete(message.to_vec()))
            }
            1 => {
                let interrupted = self.active;
                self.reset();
                let len = usize::from(pci & 0x0F) << 8 | usize::from(*data.get(1).unwrap_or(&0));
                if len <= MAX_SINGLE || data.len() < 2 + FIRST_DATA {
                    return Err(IsoTpError::FirstLength(len));
                }
                if len > self.max_len {
                    return Ok(Event::SendFlowControl(flow_control(
                        FlowStatus::Overflow,
                        0,
                        0,
                    )));
                }
                self.buf
                    .extend_from_slice(data.get(2..2 + FIRST_DATA).unwrap_or_default());
                self.expected_len = len;
                self.active = true;
                self.last_ms = now_ms;
                if interrupted {
                    // Report the loss, but keep the new transfer: answer it on the next call.
                    return Err(IsoTpError::Interrupted);
                }
                Ok(Event::SendFlowControl(flow_control(
                    FlowStatus::Continue,
                    0,
                    0,
                )))
            }
            2 => {
                if !self.active {
                    return Err(IsoTpError::UnexpectedConsecutive);
                }
                let sn = pci & 0x0F;
                if sn != self.next_sn {
                    return Err(IsoTpError::WrongSequence {
                        expected: self.next_sn,
                        got: sn,
                    });
                }
                let body = data.get(1..).unwrap_or_default();
                let missing = self.expected_len - self.buf.len();
                if body.len() < missing.min(CONSECUTIVE_DATA) {
                    return Err(IsoTpError::ShortConsecutive(body.len()));
                }
                self.buf
                    .extend_from_slice(body.get(..missing.min(body.len())).unwrap_or_default());
                self.next_sn = (self.next_sn + 1) & 0x0F;
                self.last_ms = now_ms;
                if self.buf.len() == self.expected_len {
                    let message = std::mem::take(&mut self.buf);
                    self.reset();
                    return Ok(Event::Complete(message));
                }
                Ok(Event::Pending)
            }
            3 => Err(IsoTpError::UnexpectedFlowControl),
            other => Err(IsoTpError::UnknownPci(other)),
        }
    }
}

/// One ISO-TP link between two nodes: the CAN id this side sends on, the one it receives on, a
/// queue of messages to send (one in flight), and a reassembler for what arrives.
#[derive(Clone, Debug)]
pub struct Link {
    tx_id: u32,
    rx_id: u32,
    queue: VecDeque<Vec<u8>>,
    sending: Option<(Segmenter, u64)>,
    rx: Reassembler,
    timeout_ms: u64,
    /// Transfers dropped (timeouts, overflow, sequence errors), both directions.
    pub errors: u64,
}

impl Link {
    /// A link sending on `tx_id` and receiving on `rx_id`.
    pub fn new(tx_id: u32, rx_id: u32, max_len: usize) -> Self {
        Self {
            tx_id,
            rx_id,
            queue: VecDeque::new(),
            sending: None,
            rx: Reassembler::new(max_len, DEFAULT_TIMEOUT_MS),
            timeout_ms: DEFAULT_TIMEOUT_MS,
            errors: 0,
        }
    }

    /// The CAN id this side receives on.
    pub fn rx_id(&self) -> u32 {
        self.rx_id
    }

    /// The CAN id this side sends on.
    pub fn tx_id(&self) -> u32 {
        self.tx_id
    }

    /// Queues a message.
    pub fn send(&mut self, message: Vec<u8>) -> Result<(), IsoTpError> {
        if message.is_empty() {
            return Err(IsoTpError::Empty);
        }
        if message.len() > MAX_MESSAGE {
            return Err(IsoTpError::TooLong(message.len()));
        }
        self.queue.push_back(message);
        Ok(())
    }

    /// Whether nothing is queued or in flight.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.sending.is_none()
    }

    /// Drops everything queued, in flight or half received (a power cycle).
    pub fn reset(&mut self) {
        self.queue.clear();
        self.sending = None;
        self.rx = Reassembler::new(self.rx.max_len, self.timeout_ms);
    }

    fn frame(&self, data: &[u8]) -> Result<CanFrame, IsoTpError> {
        CanFrame::fd_padded(self.tx_id, false, data, PAD).map_err(IsoTpError::Frame)
    }

    /// Frames to send now: the next message's first (or single) frame when idle. A transfer
    /// waiting for a flow control past the timeout is dropped (N_Bs).
    pub fn poll(&mut self, now_ms: u64) -> Result<Vec<CanFrame>, IsoTpError> {
        if let Some((_, since)) = &self.sending
            && now_ms.saturating_sub(*since) > self.timeout_ms
        {
            self.sending = None;
            self.errors += 1;
            return Err(IsoTpError::Timeout(self.timeout_ms));
        }
        if let Err(e) = self.rx.poll(now_ms) {
            self.errors += 1;
            return Err(e);
        }
        let mut out = Vec::new();
        while self.sending.is_none() {
            let Some(message) = self.queue.pop_front() else {
                break;
            };
            let mut seg = Segmenter::new(message)?;
            out.push(self.frame(&seg.first())?);
            if !seg.is_done() {
                self.sending = Some((seg, now_ms));
            }
        }
        Ok(out)
    }

    /// Takes a frame received on `rx_id`: frames to send in answer (flow control, consecutive
    /// frames) and a complete message if this frame finished one.
    pub fn on_frame(
        &mut self,
        now_ms: u64,
        data: &[u8],
    ) -> Result<(Vec<CanFrame>, Option<Vec<u8>>), IsoTpError> {
        let pci = *data.first().ok_or(IsoTpError::EmptyFrame)?;
        if pci >> 4 == 3 {
            let flow = parse_flow_control(data)?;
            let Some((seg, since)) = self.sending.as_mut() else {
                return Err(IsoTpError::UnexpectedFlowControl);
            };
            match flow.status {
                FlowStatus::Overflow => {
                    self.sending = None;
                    self.errors += 1;
                    return Err(IsoTpError::Overflow);
                }
                FlowStatus::Wait => {
                    *since = now_ms;
                    return Ok((Vec::new(), None));
                }
                FlowStatus::Continue => {}
            }
            let data = seg.consecutive(flow.block);
            *since = now_ms;
            let done = seg.is_done();
            let frames = data
                .iter()
                .map(|d| self.frame(d))
                .collect::<Result<Vec<_>, _>>()?;
            if done {
                self.sending = None;
            }
            return Ok((frames, None));
        }
        match self.rx.on_frame(now_ms, data) {
            Ok(Event::Pending) => Ok((Vec::new(), None)),
            Ok(Event::SendFlowControl(fc)) => Ok((vec![self.frame(&fc)?], None)),
            Ok(Event::Complete(m)) => Ok((Vec::new(), Some(m))),
            Err(IsoTpError::Interrupted) => {
                self.errors += 1;
                let fc = flow_control(FlowStatus::Continue, 0, 0);
                Ok((vec![self.frame(&fc)?], None))
            }
            Err(e) => {
                self.errors += 1;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests;
