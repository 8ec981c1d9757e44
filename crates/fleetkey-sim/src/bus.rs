//! A virtual CAN FD bus: frames (classic or CAN FD), a [`Bus`] trait, the in-process backend
//! ([`SimBus`], broadcast to every port, timestamps from a [`SimClock`]), the UDP loopback
//! backend ([`UdpBus`], one socket per node, the datagram format of [`datagram`]), and a SocketCAN
//! backend behind the `socketcan` feature.

use std::cell::RefCell;
use std::net::{SocketAddr, UdpSocket};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleetkey::canlog::{self, CanId, FdFlags, Interface, LogLine, Timestamp};
use fleetkey_core::secoc::is_can_fd_length;

pub mod datagram;

/// The largest 11-bit identifier.
pub const MAX_STANDARD_ID: u32 = 0x7FF;
/// The largest 29-bit identifier.
pub const MAX_EXTENDED_ID: u32 = 0x1FFF_FFFF;

/// Why a frame could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The identifier does not fit 11 bits (standard) or 29 bits (extended).
    #[error("id: {id:#x} does not fit a {} identifier", if *extended { "29-bit" } else { "11-bit" })]
    Id {
        /// The identifier.
        id: u32,
        /// Whether it was meant as an extended id.
        extended: bool,
    },
    /// A classic frame carries at most 8 bytes.
    #[error("data: {0} bytes, a classic CAN frame carries at most 8")]
    ClassicLength(usize),
    /// A CAN FD frame's length is one of 0-8, 12, 16, 20, 24, 32, 48, 64.
    #[error("data: {0} bytes is not a CAN FD length (0-8, 12, 16, 20, 24, 32, 48, 64)")]
    FdLength(usize),
    /// A time that a candump log cannot write.
    #[error("timestamp: {0} us cannot be written to a candump log")]
    Timestamp(u64),
}

/// One CAN data frame: an identifier, classic or CAN FD, and its data.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CanFrame {
    id: u32,
    extended: bool,
    fd: bool,
    brs: bool,
    data: Vec<u8>,
}

impl CanFrame {
    /// A classic data frame (at most 8 bytes).
    pub fn classic(id: u32, extended: bool, data: &[u8]) -> Result<Self, FrameError> {
        check_id(id, extended)?;
        if data.len() > 8 {
            return Err(FrameError::ClassicLength(data.len()));
        }
        Ok(Self {
            id,
            extended,
            fd: false,
            brs: false,
            data: data.to_vec(),
        })
    }

    /// A CAN FD frame with bit rate switch; the length must be a CAN FD length.
    pub fn fd(id: u32, extended: bool, data: &[u8]) -> Result<Self, FrameError> {
        check_id(id, extended)?;
        if !is_can_fd_length(data.len()) {
            return Err(FrameError::FdLength(data.len()));
        }
        Ok(Self {
            id,
            extended,
            fd: true,
            brs: true,
            data: data.to_vec(),
        })
    }

    /// A CAN FD frame with `data` padded with `pad` up to the next CAN FD length (at most 64).
    pub fn fd_padded(id: u32, extended: bool, data: &[u8], pad: u8) -> Result<Self, FrameError> {
        let len = canlog::fd_len_round_up(data.len()).ok_or(FrameError::FdLength(data.len()))?;
        let mut padded = data.to_vec();
        padded.resize(len, pad);
        Self::fd(id, extended, &padded)
    }

    /// The identifier.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Whether the identifier is 29-bit.
    pub fn is_extended(&self) -> bool {
        self.extended
    }

    /// Whether this is a CAN FD frame.
    pub fn is_fd(&self) -> bool {
        self.fd
    }

    /// Whether the CAN FD bit rate switch is set.
    pub fn brs(&self) -> bool {
        self.brs
    }

    /// The data.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Time on the wire in microseconds at 500 kbit/s arbitration and 2 Mbit/s data phase
    /// (no stuff bits): what the simulated clock advances per frame.
    pub fn wire_time_us(&self) -> u64 {
        let id_bits: u64 = if self.extended { 29 + 2 } else { 11 };
        let data_bits = 8 * self.data.len() as u64;
        if self.fd && self.brs {
            // Arbitration (SOF, id, control up to BRS) at 2 us/bit; DLC, data, CRC at 0.5 us/bit.
            let arbitration = 1 + id_bits + 4;
            let crc = if self.data.len() > 16 { 26 } else { 22 };
            let fast = 4 + 4 + data_bits + crc;
            arbitration * 2 + fast.div_ceil(2) + 12 * 2
        } else {
            // SOF, id, RTR/IDE/r0, DLC, data, CRC 15 + delimiters, ACK, EOF, IFS.
            (1 + id_bits + 3 + 4 + data_bits + 16 + 2 + 7 + 3) * 2
        }
    }

    /// The candump log line of this frame at `at_us` (Unix microseconds) on `interface`.
    pub fn to_log_line(&self, at_us: u64, interface: &Interface) -> Result<LogLine, FrameError> {
        let id = if self.extended {
            CanId::extended(self.id)
        } else {
            u16::try_from(self.id).ok().and_then(CanId::standard)
        }
        .ok_or(FrameError::Id {
            id: self.id,
            extended: self.extended,
        })?;
        let frame = if self.fd {
            let flags = if self.brs {
                FdFlags::BRS
            } else {
                FdFlags::NONE
            };
            canlog::Frame::fd(id, flags, &self.data)
                .map_err(|_| FrameError::FdLength(self.data.len()))?
        } else {
            canlog::Frame::classic(id, &self.data)
                .map_err(|_| FrameError::ClassicLength(self.data.len()))?
        };
        // `at_us % 1_000_000` is below a million: `Timestamp::new` accepts it.
        let micros = u32::try_from(at_us % 1_000_000).unwrap_or(0);
        let timestamp =
            Timestamp::new(at_us / 1_000_000, micros).ok_or(FrameError::Timestamp(at_us))?;
        Ok(LogLine {
            timestamp,
            interface: interface.clone(),
            frame,
            direction: None,
        })
    }

    /// The frame of a candump log line (data frames only).
    pub fn from_log_line(line: &LogLine) -> Option<(u64, CanFrame)> {
        let id = line.frame.id();
        let at = u64::try_from(line.timestamp.as_micros()).ok()?;
        let frame = match line.frame.kind() {
            canlog::FrameKind::Classic { .. } => {
                CanFrame::classic(id.as_raw(), id.is_extended(), line.frame.data()).ok()?
            }
            canlog::FrameKind::Fd { flags } => {
                let mut f = CanFrame::fd(id.as_raw(), id.is_extended(), line.frame.data()).ok()?;
                f.brs = flags.brs();
                f
            }
            _ => return None,
        };
        Some((at, frame))
    }
}

fn check_id(id: u32, extended: bool) -> Result<(), FrameError> {
    let max = if extended {
        MAX_EXTENDED_ID
    } else {
        MAX_STANDARD_ID
    };
    if id > max {
        return Err(FrameError::Id { id, extended });
    }
    Ok(())
}

/// A frame seen on the bus, with the bus time it was sent at (Unix microseconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// When it was sent (Unix microseconds, the bus's clock).
    pub at_us: u64,
    /// The frame.
    pub frame: CanFrame,
}

/// Why a bus operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The socket failed.
    #[error("bus socket: {0}")]
    Io(#[from] std::io::Error),
    /// A datagram from the bus did not parse.
    #[error("bus datagram: {0}")]
    Datagram(#[from] datagram::DatagramError),
    /// The frame does not suit this backend.
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
}

/// A node's port on a CAN bus: what it sends is seen by every other node.
pub trait Bus {
    /// Sends a frame to every other node.
    fn send(&mut self, frame: &CanFrame) -> Result<(), BusError>;
    /// The next frame another node sent, if one is waiting.
    fn try_recv(&mut self) -> Result<Option<Received>, BusError>;
    /// The bus time now, in Unix microseconds.
    fn now_us(&self) -> u64;
}

/// A simulated clock in Unix microseconds, shared by the nodes of one in-process bus.
#[derive(Clone, Debug)]
pub struct SimClock(Rc<std::cell::Cell<u64>>);

impl SimClock {
    /// A clock starting at `start_us`.
    pub fn new(start_us: u64) -> Self {
        Self(Rc::new(std::cell::Cell::new(start_us)))
    }

    /// Now, in Unix microseconds.
    pub fn now_us(&self) -> u64 {
        self.0.get()
    }

    /// Now, in Unix milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.0.get() / 1000
    }

    /// Moves the clock forward.
    pub fn advance_us(&self, us: u64) {
        self.0.set(self.0.get().saturating_add(us));
    }

    /// Moves the clock forward to `us` (never back).
    pub fn advance_to_us(&self, us: u64) {
        self.0.set(self.0.get().max(us));
    }
}

struct Shared {
    clock: SimClock,
    /// Every frame sent, with the index of the port that sent it.
    frames: Vec<(usize, Received)>,
    ports: usize,
    /// Frames before this index were dropped (every port has read them) unless captured.
    base: usize,
    cursors: Vec<usize>,
    capture: bool,
}

/// The in-process bus: every frame a port sends is appended to one ordered log that every other
/// port reads; the clock advances by each frame's time on the wire. Keeps every frame when
/// capturing (for candump logs), else only the unread ones.
#[derive(Clone)]
pub struct SimBus(Rc<RefCell<Shared>>);

impl SimBus {
    /// A bus on `clock`; `capture` keeps every frame for [`SimBus::capture`].
    pub fn new(clock: SimClock, capture: bool) -> Self {
        Self(Rc::new(RefCell::new(Shared {
            clock,
            frames: Vec::new(),
            ports: 0,
            base: 0,
            cursors: Vec::new(),
            capture,
        })))
    }

    /// A new node's port; it sees frames sent from now on.
    pub fn port(&self) -> SimPort {
        let mut s = self.0.borrow_mut();
        let index = s.ports;
        s.ports += 1;
        let end = s.base + s.frames.len();
        s.cursors.push(end);
        SimPort {
            bus: self.clone(),
            index,
        }
    }

    /// The bus clock.
    pub fn clock(&self) -> SimClock {
        self.0.borrow().clock.clone()
    }

    /// Every frame sent so far (capturing buses only), in order.
    pub fn capture(&self) -> Vec<Received> {
        self.0
            .borrow()
            .frames
            .iter()
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// How many frames were sent.
    pub fn frames_sent(&self) -> usize {
        let s = self.0.borrow();
        s.base + s.frames.len()
    }

    /// Puts a frame on the bus as if `port` sent it (for injection by a test harness).
    fn push(&self, port: usize, frame: &CanFrame) {
        let mut s = self.0.borrow_mut();
        s.clock.advance_us(frame.wire_time_us());
        let at_us = s.clock.now_us();
        s.frames.push((
            port,
            Received {
                at_us,
                frame: frame.clone(),
            },
        ));
        if !s.capture {
            // Drop what every port has read.
            let low = s.cursors.iter().copied().min().unwrap_or(0);
            if low > s.base + 1024 {
                let drop = low - s.base;
                s.frames.drain(..drop);
                s.base = low;
            }
        }
    }
}

/// One node's port on a [`SimBus`].
pub struct SimPort {
    bus: SimBus,
    index: usize,
}

impl SimPort {
    /// Skips every frame waiting for this port (a node that was powered off or disconnected).
    pub fn discard_pending(&mut self) -> usize {
        let mut s = self.bus.0.borrow_mut();
        let end = s.base + s.frames.len();
        let cursor = s.cursors.get(self.index).copied().unwrap_or(end);
        if let Some(c) = s.cursors.get_mut(self.index) {
            *c = end;
        }
        end - cursor
    }
}

impl Bus for SimPort {
    fn send(&mut self, frame: &CanFrame) -> Result<(), BusError> {
        self.bus.push(self.index, frame);
        Ok(())
    }

    fn try_recv(&mut self) -> Result<Option<Received>, BusError> {
        let mut s = self.bus.0.borrow_mut();
        loop {
            let cursor = s.cursors.get(self.index).copied().unwrap_or(usize::MAX);
            let Some(pos) = cursor.checked_sub(s.base) else {
                return Ok(None);
            };
            let Some((sender, received)) = s.frames.get(pos).cloned() else {
                return Ok(None);
            };
            if let Some(c) = s.cursors.get_mut(self.index) {
                *c += 1;
            }
            if sender != self.index {
                return Ok(Some(received));
            }
        }
    }

    fn now_us(&self) -> u64 {
        self.bus.0.borrow().clock.now_us()
    }
}

/// The UDP loopback backend: this node's socket and the other nodes' addresses. Each frame is one
/// datagram ([`datagram`]) sent to every peer; timestamps are the sender's system clock.
pub struct UdpBus {
    socket: UdpSocket,
    peers: Vec<SocketAddr>,
    /// Datagrams that did not parse (dropped, counted).
    pub malformed: u64,
}

impl UdpBus {
    /// Binds `bind` (e.g. `127.0.0.1:47001`) and sends to `peers`.
    pub fn bind(bind: SocketAddr, peers: Vec<SocketAddr>) -> Result<Self, BusError> {
        let socket = UdpSocket::bind(bind)?;
        socket.set_read_timeout(Some(Duration::from_millis(20)))?;
        Ok(Self {
            socket,
            peers,
            malformed: 0,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, BusError> {
        Ok(self.socket.local_addr()?)
    }

    /// Waits up to `timeout` for a frame.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Received>, BusError> {
        self.socket
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let mut buf = [0u8; datagram::MAX_LEN + 1];
        loop {
            match self.socket.recv_from(&mut buf) {
                Ok((n, _)) => match datagram::decode(buf.get(..n).unwrap_or_default()) {
                    Ok(r) => return Ok(Some(r)),
                    Err(_) => self.malformed += 1,
                },
                // A peer that left (ICMP port unreachable) is not this node's failure.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::ConnectionReset
                    ) =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Unix microseconds from the system clock.
pub fn system_now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Bus for UdpBus {
    fn send(&mut self, frame: &CanFrame) -> Result<(), BusError> {
        let bytes = datagram::encode(&Received {
            at_us: system_now_us(),
            frame: frame.clone(),
        });
        for peer in &self.peers {
            self.socket.send_to(&bytes, peer)?;
        }
        Ok(())
    }

    fn try_recv(&mut self) -> Result<Option<Received>, BusError> {
        self.recv_timeout(Duration::from_millis(1))
    }

    fn now_us(&self) -> u64 {
        system_now_us()
    }
}

#[cfg(feature = "socketcan")]
pub mod socketcan_bus;

#[cfg(test)]
mod tests;
