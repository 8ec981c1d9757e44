//! The SocketCAN backend (feature `socketcan`): a node on a Linux CAN interface (`can0`,
//! `vcan0`) through a CAN FD raw socket. These development machines have no SocketCAN (no
//! `vcan` module): the backend compiles here and is exercised on machines that have it.

use std::time::Duration;

use socketcan::{
    CanAnyFrame, CanDataFrame, CanFdFrame, CanFdSocket, EmbeddedFrame, ExtendedId, Id, Socket,
    StandardId,
};

use super::{Bus, BusError, CanFrame, FrameError, Received, system_now_us};

/// A node on a SocketCAN interface.
pub struct SocketCanBus {
    socket: CanFdSocket,
}

impl SocketCanBus {
    /// Opens `interface` (e.g. `vcan0`) in CAN FD mode.
    pub fn open(interface: &str) -> Result<Self, BusError> {
        Ok(Self {
            socket: CanFdSocket::open(interface)?,
        })
    }
}

fn id_of(frame: &CanFrame) -> Result<Id, FrameError> {
    let bad = FrameError::Id {
        id: frame.id(),
        extended: frame.is_extended(),
    };
    if frame.is_extended() {
        ExtendedId::new(frame.id()).map(Id::Extended).ok_or(bad)
    } else {
        u16::try_from(frame.id())
            .ok()
            .and_then(StandardId::new)
            .map(Id::Standard)
            .ok_or(bad)
    }
}

/// The identifier without flags, and whether it is extended.
fn raw(id: Id) -> (u32, bool) {
    match id {
        Id::Standard(s) => (u32::from(s.as_raw()), false),
        Id::Extended(e) => (e.as_raw(), true),
    }
}

impl Bus for SocketCanBus {
    fn send(&mut self, frame: &CanFrame) -> Result<(), BusError> {
        let id = id_of(frame)?;
        if frame.is_fd() {
            let mut f = CanFdFrame::new(id, frame.data())
                .ok_or(FrameError::FdLength(frame.data().len()))?;
            f.set_brs(frame.brs());
            self.socket.write_frame(&f)?;
        } else {
            let f = CanDataFrame::new(id, frame.data())
                .ok_or(FrameError::ClassicLength(frame.data().len()))?;
            self.socket.write_frame(&f)?;
        }
        Ok(())
    }

    fn try_recv(&mut self) -> Result<Option<Received>, BusError> {
        let frame = match self.socket.read_frame_timeout(Duration::from_millis(1)) {
            Ok(f) => f,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let at_us = system_now_us();
        let made = match &frame {
            CanAnyFrame::Normal(f) => {
                let (id, extended) = raw(EmbeddedFrame::id(f));
                CanFrame::classic(id, extended, f.data())
            }
            CanAnyFrame::Fd(f) => {
                let (id, extended) = raw(EmbeddedFrame::id(f));
                CanFrame::fd(id, extended, f.data())
            }
            .map(|mut c| {
                c.brs = f.is_brs();
                c
            }),
            // Remote and error frames carry no PDU.
            CanAnyFrame::Remote(_) | CanAnyFrame::Error(_) => return Ok(None),
        };
        Ok(Some(Received {
            at_us,
            frame: made?,
        }))
    }

    fn now_us(&self) -> u64 {
        system_now_us()
    }
}
