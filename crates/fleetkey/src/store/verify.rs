//! `audit verify`: the hash chain, and everything the audit views read beside it (the subject
//! index, the subject counts, the head), recomputed from the chained events page by page.

use fleetkey_core::derive::MAX_SERIAL_LEN;

use crate::audit::{AuditEvent, AuditFilter, ChainBreak, ChainVerifier, EVENTS_TABLE};
use crate::error::Error;
use crate::model::DeviceSerial;

use super::{AUDIT_INDEXED_SUBJECTS, AuditIndex, Tx};

/// Events read (and index ranges checked) at a time.
const PAGE: usize = 10_000;
/// The device index of both stores.
const SUBJECTS_TABLE: &str = "audit_subjects";
/// The subject count beside each event, which picks the indexed or the scanned device lookup.
const COUNT_COLUMN: &str = "audit.n_subjects";

/// Checks the whole audit record in one transaction and returns the number of events:
/// - the chain, event by event, and its end against the recorded head;
/// - for every event, the `audit_subjects` rows are exactly its subjects, in order, when it has
///   at most [`AUDIT_INDEXED_SUBJECTS`] of them, and none otherwise; its `n_subjects` is its
///   subject count;
/// - no index row or event row lies outside the chain.
///
/// Streams: one page of events and its index range in memory at a time.
pub fn verify_audit(tx: &mut dyn Tx) -> Result<u64, Error> {
    let mut verifier = ChainVerifier::new();
    let mut after = 0;
    loop {
        let page = tx.audit_events(&AuditFilter::default(), after, PAGE)?;
        let Some(through) = page.last().map(|e| e.seq) else {
            break;
        };
        for event in &page {
            verifier.push(event)?;
        }
        check_index(&page, &tx.audit_index(after, through)?)?;
        after = through;
    }
    let head = tx.audit_head()?;
    let count = verifier.finish(head, tx.audit_head_table())?;
    // Rows after the last event (or, for an empty chain, anywhere) belong to no event.
    check_index(&[], &tx.audit_index(after, u64::MAX)?)?;
    Ok(count)
}

/// Compares the stored index of a range with the range's events (consecutive, verified).
fn check_index(events: &[AuditEvent], index: &AuditIndex) -> Result<(), ChainBreak> {
    let mut counts = index.counts.iter().peekable();
    let mut rows = index.subjects.iter().peekable();
    for event in events {
        let seq = i64::try_from(event.seq).unwrap_or(i64::MAX);
        if let Some(&&(stray, _)) = counts.peek().filter(|(s, _)| *s < seq) {
            return Err(ChainBreak::Orphan {
                table: EVENTS_TABLE,
                seq: stray,
            });
        }
        if let Some(&&(stray, _, _)) = rows.peek().filter(|(s, _, _)| *s < seq) {
            return Err(ChainBreak::Orphan {
                table: SUBJECTS_TABLE,
                seq: stray,
            });
        }
        let subjects = &event.draft.subjects;
        let at_fault = |table, problem| ChainBreak::Index {
            table,
            seq: event.seq,
            problem,
        };
        match counts.next_if(|(s, _)| *s == seq) {
            Some(&(_, n)) if usize::try_from(n).ok() == Some(subjects.len()) => {}
            Some(&(_, n)) => {
                return Err(at_fault(
                    COUNT_COLUMN,
                    format!("says {n} devices, its record names {}", subjects.len()),
                ));
            }
            None => return Err(at_fault(COUNT_COLUMN, "has no subject count".into())),
        }
        let indexed: &[DeviceSerial] = if subjects.len() <= AUDIT_INDEXED_SUBJECTS {
            subjects
        } else {
            &[]
        };
        let place = |pos: i64| {
            if subjects.len() > 1 {
                format!(" at position {pos}")
            } else {
                String::new()
            }
        };
        let mut next = 0_usize;
        while let Some((_, pos, serial)) = rows.next_if(|(s, _, _)| *s == seq) {
            let want_pos = i64::try_from(next).unwrap_or(i64::MAX);
            match indexed.get(next) {
                Some(want) if *pos == want_pos => {
                    if serial.as_slice() != want.as_bytes() {
                        return Err(at_fault(
                            SUBJECTS_TABLE,
                            format!(
                                "lists {}{}, its record names {want}",
                                shown(serial),
                                place(*pos)
                            ),
                        ));
                    }
                    next += 1;
                }
                Some(want) if *pos > want_pos => {
                    return Err(at_fault(
                        SUBJECTS_TABLE,
                        format!(
                            "does not list {want}{}, its record names it",
                            place(want_pos)
                        ),
                    ));
                }
                _ => {
                    let why = if subjects.is_empty() {
                        "its record names no device".to_owned()
                    } else if indexed.is_empty() {
                        format!(
                            "its record names {} devices, more than are indexed",
                            subjects.len()
                        )
                    } else {
                        format!("its record names {} devices", subjects.len())
                    };
                    return Err(at_fault(
                        SUBJECTS_TABLE,
                        format!("lists {} at position {pos}, {why}", shown(serial)),
                    ));
                }
            }
        }
        if let Some(want) = indexed.get(next) {
            let pos = i64::try_from(next).unwrap_or(i64::MAX);
            return Err(at_fault(
                SUBJECTS_TABLE,
                format!("does not list {want}{}, its record names it", place(pos)),
            ));
        }
    }
    if let Some(&(stray, _)) = counts.next() {
        return Err(ChainBreak::Orphan {
            table: EVENTS_TABLE,
            seq: stray,
        });
    }
    if let Some(&(stray, _, _)) = rows.next() {
        return Err(ChainBreak::Orphan {
            table: SUBJECTS_TABLE,
            seq: stray,
        });
    }
    Ok(())
}

/// A stored serial as a message shows it: as [`DeviceSerial`] displays it when it is one, else
/// as hex (at most a serial's length of it).
fn shown(bytes: &[u8]) -> String {
    match DeviceSerial::new(bytes) {
        Ok(serial) => serial.to_string(),
        Err(_) if bytes.is_empty() => "an empty serial".into(),
        Err(_) => format!(
            "hex:{}... ({} bytes)",
            hex::encode(&bytes[..bytes.len().min(MAX_SERIAL_LEN)]),
            bytes.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditDraft;

    fn chain(subjects: &[&[&str]]) -> Vec<AuditEvent> {
        let mut events: Vec<AuditEvent> = Vec::new();
        for s in subjects {
            let draft = AuditDraft {
                at: 0,
                actor: "t".into(),
                action: "device.add".into(),
                generation: None,
                subjects: s.iter().map(|s| DeviceSerial::parse(s).unwrap()).collect(),
                details: serde_json::json!({}),
            };
            let prev = events.last().map(|e| (e.seq, e.hash));
            events.push(AuditEvent::seal(prev, draft));
        }
        events
    }

    /// The index a store writes for `events`.
    fn index_of(events: &[AuditEvent]) -> AuditIndex {
        let mut index = AuditIndex::default();
        for e in events {
            let seq = i64::try_from(e.seq).unwrap();
            index.counts.push((seq, e.draft.subjects.len() as i64));
            if e.draft.subjects.len() <= AUDIT_INDEXED_SUBJECTS {
                for (pos, s) in (0..).zip(&e.draft.subjects) {
                    index.subjects.push((seq, pos, s.as_bytes().to_vec()));
                }
            }
        }
        index
    }

    fn message(events: &[AuditEvent], index: &AuditIndex) -> String {
        check_index(events, index).unwrap_err().to_string()
    }

    #[test]
    fn each_difference_is_named() {
        let bulk: Vec<String> = (0..17).map(|i| format!("B{i}")).collect();
        let bulk: Vec<&str> = bulk.iter().map(String::as_str).collect();
        let events = chain(&[&[], &["A1"], &["A1", "A2"], &bulk]);
        let good = index_of(&events);
        assert_eq!(check_index(&events, &good), Ok(()));

        let mut i = good.clone();
        i.subjects[0].2 = b"A2".to_vec();
        assert_eq!(
            message(&events, &i),
            "audit_subjects: event 2 lists A2, its record names A1"
        );
        let mut i = good.clone();
        i.subjects.remove(2);
        assert_eq!(
            message(&events, &i),
            "audit_subjects: event 3 does not list A2 at position 1, its record names it"
        );
        let mut i = good.clone();
        i.subjects.insert(1, (2, 1, b"A9".to_vec()));
        assert_eq!(
            message(&events, &i),
            "audit_subjects: event 2 lists A9 at position 1, its record names 1 devices"
        );
        let mut i = good.clone();
        i.subjects.insert(0, (1, 0, vec![0xff; 50]));
        assert!(
            message(&events, &i).starts_with("audit_subjects: event 1 lists hex:ffff"),
            "{}",
            message(&events, &i)
        );
        let mut i = good.clone();
        i.subjects.push((4, 0, b"B0".to_vec()));
        assert_eq!(
            message(&events, &i),
            "audit_subjects: event 4 lists B0 at position 0, its record names 17 devices, more than are indexed"
        );
        let mut i = good.clone();
        i.subjects.push((9, 0, b"A1".to_vec()));
        assert_eq!(
            message(&events, &i),
            "audit_subjects: rows point at event 9, which does not exist"
        );
        let mut i = good.clone();
        i.subjects.insert(0, (-1, 0, b"A1".to_vec()));
        assert_eq!(
            message(&events, &i),
            "audit_subjects: rows point at event -1, which does not exist"
        );
        let mut i = good.clone();
        i.counts[3].1 = 3;
        assert_eq!(
            message(&events, &i),
            "audit.n_subjects: event 4 says 3 devices, its record names 17"
        );
        let mut i = good;
        i.counts.insert(0, (0, 0));
        assert_eq!(
            message(&events, &i),
            "audit: rows point at event 0, which does not exist"
        );
    }
}
