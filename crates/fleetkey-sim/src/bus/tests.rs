use proptest::prelude::*;

use super::datagram::{DatagramError, decode, encode};
use super::*;

fn frame_strategy() -> impl Strategy<Value = CanFrame> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<u32>(),
        prop::collection::vec(any::<u8>(), 0..=64),
    )
        .prop_map(|(fd, extended, id, mut data)| {
            let id = if extended {
                id & MAX_EXTENDED_ID
            } else {
                id & MAX_STANDARD_ID
            };
            if fd {
                let len = fleetkey_core::secoc::CAN_FD_LENGTHS
                    .iter()
                    .copied()
                    .rfind(|&l| l <= data.len())
                    .unwrap_or(0);
                data.truncate(len);
                CanFrame::fd(id, extended, &data).unwrap()
            } else {
                data.truncate(8);
                CanFrame::classic(id, extended, &data).unwrap()
            }
        })
}

proptest! {
    #[test]
    fn datagram_round_trip(frame in frame_strategy(), at_us in any::<u64>()) {
        let r = Received { at_us, frame };
        prop_assert_eq!(decode(&encode(&r)).unwrap(), r);
    }

    #[test]
    fn datagram_decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..100)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn datagram_truncated_or_extended_is_refused(frame in frame_strategy(), cut in 1usize..20) {
        let bytes = encode(&Received { at_us: 1, frame });
        let short = &bytes[..bytes.len().saturating_sub(cut)];
        prop_assert!(decode(short).is_err());
        let mut long = bytes.clone();
        long.push(0);
        prop_assert!(decode(&long).is_err());
    }
}

#[test]
fn datagram_errors_name_the_field() {
    let good = encode(&Received {
        at_us: 5,
        frame: CanFrame::fd(0x123, false, &[1; 12]).unwrap(),
    });
    assert_eq!(decode(&good[..3]), Err(DatagramError::TooShort(3)));
    let mut b = good.clone();
    b[0] = b'X';
    assert_eq!(decode(&b), Err(DatagramError::Magic));
    let mut b = good.clone();
    b[4] = 2;
    assert_eq!(decode(&b), Err(DatagramError::Version(2)));
    let mut b = good.clone();
    b[5] = 0x80;
    assert_eq!(decode(&b), Err(DatagramError::Flags(0x80)));
    let mut b = good.clone();
    b[5] = 0x04; // BRS without FD
    assert_eq!(decode(&b), Err(DatagramError::Flags(0x04)));
    let mut b = good.clone();
    b[18] = 13; // not a CAN FD length
    assert_eq!(
        decode(&b),
        Err(DatagramError::Frame(FrameError::FdLength(13)))
    );
    let mut b = good.clone();
    b[18] = 16;
    assert_eq!(
        decode(&b),
        Err(DatagramError::Length {
            declared: 16,
            actual: 12
        })
    );
    let mut b = good.clone();
    b[6..10].copy_from_slice(&0x800u32.to_be_bytes());
    assert!(matches!(
        decode(&b),
        Err(DatagramError::Frame(FrameError::Id { id: 0x800, .. }))
    ));
}

#[test]
fn frames_check_lengths_and_ids() {
    assert_eq!(
        CanFrame::classic(1, false, &[0; 9]),
        Err(FrameError::ClassicLength(9))
    );
    assert_eq!(
        CanFrame::fd(1, false, &[0; 9]),
        Err(FrameError::FdLength(9))
    );
    assert!(CanFrame::fd(0x1FFF_FFFF, true, &[0; 64]).is_ok());
    assert!(CanFrame::classic(0x800, false, &[]).is_err());
    let padded = CanFrame::fd_padded(1, false, &[1; 13], 0xCC).unwrap();
    assert_eq!(padded.data().len(), 16);
    assert_eq!(&padded.data()[13..], &[0xCC; 3]);
}

#[test]
fn sim_bus_broadcasts_to_every_other_port_with_clock_times() {
    let clock = SimClock::new(1_000_000);
    let bus = SimBus::new(clock.clone(), true);
    let mut a = bus.port();
    let mut b = bus.port();
    let mut c = bus.port();
    let f = CanFrame::fd(0x100, false, &[7; 32]).unwrap();
    a.send(&f).unwrap();
    let at = clock.now_us();
    assert!(
        at > 1_000_000,
        "the clock advances by the frame's wire time"
    );
    assert_eq!(a.try_recv().unwrap(), None, "a sender does not hear itself");
    assert_eq!(
        b.try_recv().unwrap().unwrap(),
        Received {
            at_us: at,
            frame: f.clone()
        }
    );
    assert_eq!(c.try_recv().unwrap().unwrap().frame, f);
    assert_eq!(b.try_recv().unwrap(), None);
    assert_eq!(bus.capture().len(), 1);
    b.send(&CanFrame::classic(0x7FF, false, &[1]).unwrap())
        .unwrap();
    assert_eq!(c.discard_pending(), 1);
    assert_eq!(c.try_recv().unwrap(), None);
    assert_eq!(a.try_recv().unwrap().unwrap().frame.id(), 0x7FF);
}

#[test]
fn log_lines_round_trip() {
    let iface = fleetkey::canlog::Interface::new("vcan0").unwrap();
    for f in [
        CanFrame::fd(0x123, false, &[9; 48]).unwrap(),
        CanFrame::classic(0x1234_5678, true, &[1, 2, 3]).unwrap(),
    ] {
        let line = f.to_log_line(1_700_000_000_123_456, &iface).unwrap();
        let text = line.to_string();
        let parsed = fleetkey::canlog::parse_line(&text).unwrap();
        assert_eq!(
            CanFrame::from_log_line(&parsed),
            Some((1_700_000_000_123_456, f))
        );
    }
}

#[test]
fn udp_bus_carries_frames_between_sockets() {
    let loopback = "127.0.0.1:0".parse().unwrap();
    let mut a = UdpBus::bind(loopback, vec![]).unwrap();
    let mut b = UdpBus::bind(loopback, vec![a.local_addr().unwrap()]).unwrap();
    a.peers.push(b.local_addr().unwrap());
    let f = CanFrame::fd(0x42, false, &[5; 64]).unwrap();
    b.send(&f).unwrap();
    let got = a.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!(got.frame, f);
    a.socket.send_to(b"junk", b.local_addr().unwrap()).unwrap();
    a.send(&f).unwrap();
    let got = b.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!(got.frame, f);
    assert_eq!(b.malformed, 1, "the junk datagram is dropped and counted");
}
