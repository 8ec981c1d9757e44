use super::*;

fn draft(i: i64) -> AuditDraft {
    AuditDraft {
        at: 1_700_000_000_000 + i,
        actor: "alice".into(),
        action: "device.refresh".into(),
        generation: Some(1),
        subjects: vec![DeviceSerial::new(format!("ECU-{i}")).unwrap()],
        details: serde_json::json!({"revision": i}),
    }
}

fn chain(n: i64) -> Vec<AuditEvent> {
    let mut events: Vec<AuditEvent> = Vec::new();
    for i in 0..n {
        let prev = events.last().map(|e| (e.seq, e.hash));
        events.push(AuditEvent::seal(prev, draft(i)));
    }
    events
}

fn verify(events: &[AuditEvent], head: Option<(u64, [u8; 32])>) -> Result<u64, ChainBreak> {
    let mut v = ChainVerifier::new();
    for e in events {
        v.push(e)?;
    }
    v.finish(head, "audit_head")
}

#[test]
fn an_intact_chain_verifies() {
    let events = chain(5);
    let head = events.last().map(|e| (e.seq, e.hash));
    assert_eq!(verify(&events, head), Ok(5));
    assert_eq!(verify(&[], None), Ok(0));
}

#[test]
fn a_changed_event_is_found() {
    let mut events = chain(5);
    events[2].draft.actor = "mallory".into();
    let head = events.last().map(|e| (e.seq, e.hash));
    assert_eq!(verify(&events, head), Err(ChainBreak::Changed { seq: 3 }));
}

#[test]
fn a_removed_event_is_found() {
    let mut events = chain(5);
    events.remove(1);
    let head = events.last().map(|e| (e.seq, e.hash));
    assert_eq!(
        verify(&events, head),
        Err(ChainBreak::Missing {
            expected: 2,
            found: 3
        })
    );
}

#[test]
fn reordered_events_are_found() {
    let mut events = chain(5);
    events.swap(1, 2);
    let head = events.last().map(|e| (e.seq, e.hash));
    assert!(verify(&events, head).is_err());
    // Renumbering after a swap still breaks the links.
    let mut events = chain(5);
    events.swap(1, 2);
    events[1].seq = 2;
    events[2].seq = 3;
    assert_eq!(verify(&events, None), Err(ChainBreak::Unlinked { seq: 2 }));
}

#[test]
fn removing_the_newest_events_is_found_against_the_head() {
    let events = chain(5);
    let head = events.last().map(|e| (e.seq, e.hash));
    assert_eq!(
        verify(&events[..3], head),
        Err(ChainBreak::Truncated {
            table: "audit_head",
            last: 3,
            head: 5
        })
    );
}

#[test]
fn a_head_that_differs_from_the_chain_is_found() {
    let events = chain(5);
    let (seq, hash) = (events[4].seq, events[4].hash);
    let behind = (events[2].seq, events[2].hash);
    assert_eq!(
        verify(&events, Some(behind)),
        Err(ChainBreak::HeadMismatch {
            table: "audit_head",
            last: 5,
            head: 3
        })
    );
    assert_eq!(
        verify(&events, Some((seq, [7; 32]))),
        Err(ChainBreak::HeadMismatch {
            table: "audit_head",
            last: 5,
            head: 5
        })
    );
    assert_eq!(
        verify(&events, None),
        Err(ChainBreak::HeadMissing {
            table: "audit_head",
            last: 5
        })
    );
    assert_eq!(verify(&events, Some((seq, hash))), Ok(5));
    let message = verify(&events, None).unwrap_err().to_string();
    assert!(message.starts_with("audit_head: "), "{message}");
}

#[test]
fn filters_match_device_action_and_time() {
    let events = chain(3);
    let f = AuditFilter {
        device: Some(DeviceSerial::new("ECU-1").unwrap()),
        ..Default::default()
    };
    assert_eq!(events.iter().filter(|e| f.matches(e)).count(), 1);
    let f = AuditFilter {
        action: Some("device".into()),
        ..Default::default()
    };
    assert_eq!(events.iter().filter(|e| f.matches(e)).count(), 3);
    let f = AuditFilter {
        action: Some("dev".into()),
        ..Default::default()
    };
    assert_eq!(events.iter().filter(|e| f.matches(e)).count(), 0);
    let f = AuditFilter {
        since: Some(1_700_000_000_001),
        until: Some(1_700_000_000_002),
        ..Default::default()
    };
    assert_eq!(events.iter().filter(|e| f.matches(e)).count(), 1);
}
