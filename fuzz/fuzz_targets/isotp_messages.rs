//! ISO-TP reassembly and the bus messages: arbitrary frames (split on 0xFF length prefixes) into
//! a reassembler; every complete message into the message parser. Never panics; a parsed message
//! encodes back to its bytes.
#![no_main]

use fleetkey_sim::isotp::{Event, Reassembler};
use fleetkey_sim::msg::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = Reassembler::new(1025, 1000);
    let mut rest = data;
    let mut now = 0u64;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len % 65).min(tail.len());
        let (frame, next) = tail.split_at(len);
        rest = next;
        now += u64::from(len as u8 % 7) * 100;
        if let Ok(Event::Complete(message)) = r.on_frame(now, frame) {
            if let Ok(m) = Message::decode(&message) {
                assert_eq!(m.encode(), message);
            }
        }
    }
    if let Ok(m) = Message::decode(data) {
        assert_eq!(m.encode(), data);
    }
});
