use proptest::prelude::*;

use super::*;

/// Sends `message` from one link to the other through frames, answering flow controls.
fn transfer(message: &[u8]) -> Vec<u8> {
    let mut a = Link::new(0x600, 0x680, MAX_MESSAGE);
    let mut b = Link::new(0x680, 0x600, MAX_MESSAGE);
    a.send(message.to_vec()).unwrap();
    let mut to_b = a.poll(0).unwrap();
    let mut got = None;
    for _ in 0..200 {
        let mut to_a = Vec::new();
        for f in to_b.drain(..) {
            assert!(f.is_fd() && f.data().len() <= 64);
            let (answer, done) = b.on_frame(0, f.data()).unwrap();
            to_a.extend(answer);
            if let Some(m) = done {
                got = Some(m);
            }
        }
        for f in to_a {
            let (answer, done) = a.on_frame(0, f.data()).unwrap();
            assert!(done.is_none());
            to_b.extend(answer);
        }
        if got.is_some() {
            break;
        }
    }
    assert!(a.is_idle());
    got.unwrap()
}

proptest! {
    #[test]
    fn round_trip(message in prop::collection::vec(any::<u8>(), 1..=1200)) {
        prop_assert_eq!(transfer(&message), message);
    }

    #[test]
    fn reassembler_never_panics(frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..70), 0..20)) {
        let mut r = Reassembler::new(1024, 1000);
        for (i, f) in frames.iter().enumerate() {
            let _ = r.on_frame(i as u64, f);
        }
    }
}

#[test]
fn sizes_carried() {
    for len in [1, 7, 8, 48, 62, 63, 64, 137, 1024, MAX_MESSAGE] {
        let m: Vec<u8> = (0..len).map(|i| i as u8).collect();
        assert_eq!(transfer(&m), m, "{len} bytes");
    }
    assert_eq!(Segmenter::new(vec![]).unwrap_err(), IsoTpError::Empty);
    assert_eq!(
        Segmenter::new(vec![0; 4096]).unwrap_err(),
        IsoTpError::TooLong(4096)
    );
}

fn frames_of(message: &[u8]) -> Vec<Vec<u8>> {
    let mut s = Segmenter::new(message.to_vec()).unwrap();
    let mut out = vec![s.first()];
    out.extend(s.consecutive(0));
    out
}

#[test]
fn missing_segment_is_a_sequence_error() {
    let frames = frames_of(&[7u8; 200]);
    assert_eq!(frames.len(), 4);
    let mut r = Reassembler::new(1024, 1000);
    assert!(matches!(
        r.on_frame(0, &frames[0]),
        Ok(Event::SendFlowControl(_))
    ));
    assert_eq!(r.on_frame(0, &frames[1]), Ok(Event::Pending));
    assert_eq!(
        r.on_frame(0, &frames[3]),
        Err(IsoTpError::WrongSequence {
            expected: 2,
            got: 3
        })
    );
    assert!(!r.in_progress(), "the broken transfer is dropped");
    assert_eq!(
        r.on_frame(0, &frames[2]),
        Err(IsoTpError::UnexpectedConsecutive)
    );
}

#[test]
fn sequence_numbers_wrap() {
    let frames = frames_of(&[1u8; 62 + 63 * 20]);
    let sns: Vec<u8> = frames[1..].iter().map(|f| f[0] & 0x0F).collect();
    assert_eq!(
        &sns[..17],
        &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1]
    );
}

#[test]
fn stalled_transfer_times_out() {
    let frames = frames_of(&[7u8; 200]);
    let mut r = Reassembler::new(1024, 1000);
    r.on_frame(0, &frames[0]).unwrap();
    r.on_frame(500, &frames[1]).unwrap();
    assert_eq!(r.on_frame(1600, &frames[2]), Err(IsoTpError::Timeout(1000)));
    assert!(!r.in_progress());

    let mut link = Link::new(1, 2, 1024);
    link.send(vec![0; 100]).unwrap();
    assert_eq!(link.poll(0).unwrap().len(), 1);
    assert_eq!(link.poll(1001), Err(IsoTpError::Timeout(1000)));
    assert!(link.is_idle());
}

#[test]
fn oversize_first_frame_gets_overflow() {
    let frames = frames_of(&[0u8; 2000]);
    let mut r = Reassembler::new(1024, 1000);
    let Ok(Event::SendFlowControl(fc)) = r.on_frame(0, &frames[0]) else {
        panic!("expected a flow control");
    };
    assert_eq!(
        parse_flow_control(&fc).unwrap().status,
        FlowStatus::Overflow
    );
    let mut link = Link::new(1, 2, 4095);
    link.send(vec![0; 2000]).unwrap();
    link.poll(0).unwrap();
    assert_eq!(link.on_frame(0, &fc), Err(IsoTpError::Overflow));
}

#[test]
fn bad_frames_are_typed_errors() {
    let mut r = Reassembler::new(1024, 1000);
    assert_eq!(r.on_frame(0, &[]), Err(IsoTpError::EmptyFrame));
    assert_eq!(r.on_frame(0, &[0x40]), Err(IsoTpError::UnknownPci(4)));
    assert_eq!(
        r.on_frame(0, &[0x05, 1, 2]),
        Err(IsoTpError::SingleLength(5))
    );
    assert_eq!(r.on_frame(0, &[0x00, 5]), Err(IsoTpError::SingleLength(5)));
    assert_eq!(
        r.on_frame(0, &[0x00, 63]),
        Err(IsoTpError::SingleLength(63))
    );
    assert_eq!(r.on_frame(0, &[0x10, 20]), Err(IsoTpError::FirstLength(20)));
    assert_eq!(
        r.on_frame(0, &[0x30, 0, 0]),
        Err(IsoTpError::UnexpectedFlowControl)
    );
    assert_eq!(
        parse_flow_control(&[0x35, 0, 0]),
        Err(IsoTpError::FlowControl(5))
    );
    assert_eq!(parse_flow_control(&[0x30]), Err(IsoTpError::FlowControl(0)));
}

#[test]
fn block_size_is_honoured() {
    let mut s = Segmenter::new(vec![0; 62 + 63 * 5]).unwrap();
    s.first();
    assert_eq!(s.consecutive(2).len(), 2);
    assert_eq!(s.consecutive(2).len(), 2);
    assert_eq!(s.consecutive(2).len(), 1);
    assert!(s.is_done());
}
