//! The messages carried over ISO-TP between the gateway (or a technician's tool) and an ECU
//! (spec: `docs/simulator.md`). The first byte is the type; fixed-size fields follow.
//!
//! ```text
//! 0x01 SheLoad        M1 (16) M2 (32) M3 (16)                                    65 bytes
//! 0x02 SheProof       M4 (32) M5 (16)                                            49 bytes
//! 0x03 Record         a governance record (COSE_Sign1), 1..=1024 bytes
//! 0x04 GroupSeed      generation u32 BE, revision u32 BE, KEY_4 load (64), KEY_5 load (64)
//! 0x05 GroupSeedProof KEY_4 proof (48), KEY_5 proof (48)                         97 bytes
//! 0x06 Hello          the ECU's serial, 1..=40 bytes (boot announcement; not sent by the
//!                     current nodes, which rely on the gateway's retries)
//! 0x07 Grant          a grant record, 1..=1024 bytes
//! 0x08 Challenge      32-byte challenge
//! 0x09 Possession     64-byte Ed25519 signature
//! 0x0A Verdict        subject u8, code u8, tag (4): the last 4 bytes of the request answered
//! 0x0B Decommission   16-byte AES-CMAC under the ECU's AUTH key (SHE KEY_1)
//! ```

use fleetkey_core::governance::{CHALLENGE_LEN, MAX_RECORD_LEN};
use fleetkey_core::she::{M1, M2, M3, M4, M5, SheError};

/// The label the decommission command's MAC covers, before the ECU's UID.
pub const DECOMMISSION_LABEL: &[u8] = b"fleetkey decommission v1";
/// The longest serial in a Hello.
pub const MAX_SERIAL: usize = 40;
/// The longest message (a record or grant with its type byte).
pub const MAX_MESSAGE: usize = 1 + MAX_RECORD_LEN;

/// M1-M3 of one SHE memory update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Load {
    /// M1.
    pub m1: M1,
    /// M2.
    pub m2: M2,
    /// M3.
    pub m3: M3,
}

/// M4-M5: the proof a SHE answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proof {
    /// M4.
    pub m4: M4,
    /// M5.
    pub m5: M5,
}

/// What a verdict is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Subject {
    /// A SHE load.
    She = 1,
    /// A group seed.
    Seed = 2,
    /// A governance record.
    Record = 3,
    /// A grant.
    Grant = 4,
}

/// Verdict codes.
pub mod code {
    /// Accepted.
    pub const OK: u8 = 0;
    /// The same record again: nothing changed.
    pub const REPEATED: u8 = 1;
    /// The SHE refused the update (UID, MAC, counter, protection).
    pub const SHE_REFUSED: u8 = 0x10;
    /// The key's generation is revoked by the newest record.
    pub const REVOKED_GENERATION: u8 = 0x11;
    /// The key's generation is not accepted by the newest record (or none yet).
    pub const UNKNOWN_GENERATION: u8 = 0x12;
    /// The record did not verify.
    pub const RECORD_INVALID: u8 = 0x13;
    /// The record's sequence is older than the last accepted.
    pub const RECORD_STALE: u8 = 0x14;
    /// The grant is denied by the newest record.
    pub const GRANT_DENIED: u8 = 0x15;
    /// The grant did not verify (signature, fleet, window, scope).
    pub const GRANT_INVALID: u8 = 0x16;
    /// The proof of possession did not verify.
    pub const POSSESSION_FAILED: u8 = 0x17;
    /// The group seed update names other slots, or its counter does not match its header.
    pub const SEED_MISMATCH: u8 = 0x18;
}

/// One message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A SHE memory update.
    SheLoad(Load),
    /// A SHE's answer.
    SheProof(Proof),
    /// A governance record.
    Record(Vec<u8>),
    /// The network's group roll seed as two SHE updates (KEY_4, KEY_5) under the member's
    /// KEY_UPDATE key; the SHE counter is `generation << 16 | revision`.
    GroupSeed {
        /// The gateway device's generation.
        generation: u32,
        /// The gateway device's revision.
        revision: u32,
        /// KEY_4 (first half).
        first: Load,
        /// KEY_5 (second half).
        second: Load,
    },
    /// The SHE's answers to a group seed.
    GroupSeedProof {
        /// KEY_4.
        first: Proof,
        /// KEY_5.
        second: Proof,
    },
    /// An ECU announces itself.
    Hello(Vec<u8>),
    /// A grant presented by a technician.
    Grant(Vec<u8>),
    /// The ECU's challenge for a grant.
    Challenge([u8; CHALLENGE_LEN]),
    /// The technician's signature over the possession message.
    Possession([u8; 64]),
    /// The outcome of a request.
    Verdict {
        /// What it is about.
        subject: Subject,
        /// [`code`].
        code: u8,
        /// [`request_tag`] of the request answered.
        tag: [u8; 4],
    },
    /// Decommission: erase every key.
    Decommission([u8; 16]),
}

/// Why a message was refused. Each names the field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// No type byte.
    #[error("message: empty")]
    Empty,
    /// An unknown type.
    #[error("type: unknown message type {0:#04x}")]
    UnknownType(u8),
    /// The wrong size for the type.
    #[error("{kind}: {got} bytes, expected {expected}")]
    Length {
        /// The message type's name.
        kind: &'static str,
        /// Bytes expected after the type (for variable ones, the maximum).
        expected: usize,
        /// Bytes received after the type.
        got: usize,
    },
    /// An M1-M5 field did not parse.
    #[error("{kind}: {error}")]
    She {
        /// The message type's name.
        kind: &'static str,
        /// What was wrong.
        error: SheError,
    },
    /// An unknown verdict subject.
    #[error("verdict: unknown subject {0}")]
    Subject(u8),
}

/// What ties a verdict to its request: the request's last 4 bytes (the end of M3, of a
/// signature, of a group seed's second M3), zero-padded when shorter.
pub fn request_tag(request: &[u8]) -> [u8; 4] {
    let mut tag = [0u8; 4];
    let tail = request
        .get(request.len().saturating_sub(4)..)
        .unwrap_or_default();
    if let Some(dst) = tag.get_mut(..tail.len()) {
        dst.copy_from_slice(tail);
    }
    tag
}

const LOAD_LEN: usize = 64;
const PROOF_LEN: usize = 48;

fn exact<'a>(kind: &'static str, body: &'a [u8], len: usize) -> Result<&'a [u8], MessageError> {
    if body.len() == len {
        Ok(body)
    } else {
        Err(MessageError::Length {
            kind,
            expected: len,
            got: body.len(),
        })
    }
}

fn variable(kind: &'static str, body: &[u8], max: usize) -> Result<Vec<u8>, MessageError> {
    if body.is_empty() || body.len() > max {
        return Err(MessageError::Length {
            kind,
            expected: max,
            got: body.len(),
        });
    }
    Ok(body.to_vec())
}

fn parse_load(kind: &'static str, b: &[u8]) -> Result<Load, MessageError> {
    let she = |error| MessageError::She { kind, error };
    Ok(Load {
        m1: M1::from_bytes(b.get(..16).unwrap_or_default()).map_err(she)?,
        m2: M2::from_bytes(b.get(16..48).unwrap_or_default()).map_err(she)?,
        m3: M3::from_bytes(b.get(48..64).unwrap_or_default()).map_err(she)?,
    })
}

fn parse_proof(kind: &'static str, b: &[u8]) -> Result<Proof, MessageError> {
    let she = |error| MessageError::She { kind, error };
    Ok(Proof {
        m4: M4::from_bytes(b.get(..32).unwrap_or_default()).map_err(she)?,
        m5: M5::from_bytes(b.get(32..48).unwrap_or_default()).map_err(she)?,
    })
}

fn put_load(out: &mut Vec<u8>, l: &Load) {
    out.extend_from_slice(&l.m1.to_bytes());
    out.extend_from_slice(&l.m2.to_bytes());
    out.extend_from_slice(&l.m3.to_bytes());
}

fn put_proof(out: &mut Vec<u8>, p: &Proof) {
    out.extend_from_slice(&p.m4.to_bytes());
    out.extend_from_slice(&p.m5.to_bytes());
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(b.get(at..at + 4).unwrap_or(&[0; 4]));
    u32::from_be_bytes(x)
}

impl Message {
    /// The type's name.
    pub fn name(&self) -> &'static str {
        match self {
            Message::SheLoad(_) => "she-load",
            Message::SheProof(_) => "she-proof",
            Message::Record(_) => "record",
            Message::GroupSeed { .. } => "group-seed",
            Message::GroupSeedProof { .. } => "group-seed-proof",
            Message::Hello(_) => "hello",
            Message::Grant(_) => "grant",
            Message::Challenge(_) => "challenge",
            Message::Possession(_) => "possession",
            Message::Verdict { .. } => "verdict",
            Message::Decommission(_) => "decommission",
        }
    }

    /// Encodes the message.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(140);
        match self {
            Message::SheLoad(l) => {
                out.push(0x01);
                put_load(&mut out, l);
            }
            Message::SheProof(p) => {
                out.push(0x02);
                put_proof(&mut out, p);
            }
            Message::Record(r) => {
                out.push(0x03);
                out.extend_from_slice(r);
            }
            Message::GroupSeed {
                generation,
                revision,
                first,
                second,
            } => {
                out.push(0x04);
                out.extend_from_slice(&generation.to_be_bytes());
                out.extend_from_slice(&revision.to_be_bytes());
                put_load(&mut out, first);
                put_load(&mut out, second);
            }
            Message::GroupSeedProof { first, second } => {
                out.push(0x05);
                put_proof(&mut out, first);
                put_proof(&mut out, second);
            }
            Message::Hello(s) => {
                out.push(0x06);
                out.extend_from_slice(s);
            }
            Message::Grant(g) => {
                out.push(0x07);
                out.extend_from_slice(g);
            }
            Message::Challenge(c) => {
                out.push(0x08);
                out.extend_from_slice(c);
            }
            Message::Possession(s) => {
                out.push(0x09);
                out.extend_from_slice(s);
            }
            Message::Verdict { subject, code, tag } => {
                out.extend_from_slice(&[0x0A, *subject as u8, *code]);
                out.extend_from_slice(tag);
            }
            Message::Decommission(mac) => {
                out.push(0x0B);
                out.extend_from_slice(mac);
            }
        }
        out
    }

    /// Parses a message; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Message, MessageError> {
        let (&kind, body) = bytes.split_first().ok_or(MessageError::Empty)?;
        Ok(match kind {
            0x01 => Message::SheLoad(parse_load("she-load", exact("she-load", body, LOAD_LEN)?)?),
            0x02 => Message::SheProof(parse_proof(
                "she-proof",
                exact("she-proof", body, PROOF_LEN)?,
            )?),
            0x03 => Message::Record(variable("record", body, MAX_RECORD_LEN)?),
            0x04 => {
                let b = exact("group-seed", body, 8 + 2 * LOAD_LEN)?;
                Message::GroupSeed {
                    generation: u32_at(b, 0),
                    revision: u32_at(b, 4),
                    first: parse_load("group-seed", b.get(8..8 + LOAD_LEN).unwrap_or_default())?,
                    second: parse_load("group-seed", b.get(8 + LOAD_LEN..).unwrap_or_default())?,
                }
            }
            0x05 => {
                let b = exact("group-seed-proof", body, 2 * PROOF_LEN)?;
                Message::GroupSeedProof {
                    first: parse_proof("group-seed-proof", b.get(..PROOF_LEN).unwrap_or_default())?,
                    second: parse_proof(
                        "group-seed-proof",
                        b.get(PROOF_LEN..).unwrap_or_default(),
                    )?,
                }
            }
            0x06 => Message::Hello(variable("hello", body, MAX_SERIAL)?),
            0x07 => Message::Grant(variable("grant", body, MAX_RECORD_LEN)?),
            0x08 => {
                let mut c = [0u8; CHALLENGE_LEN];
                c.copy_from_slice(exact("challenge", body, CHALLENGE_LEN)?);
                Message::Challenge(c)
            }
            0x09 => {
                let mut s = [0u8; 64];
                s.copy_from_slice(exact("possession", body, 64)?);
                Message::Possession(s)
            }
            0x0A => {
                let b = exact("verdict", body, 6)?;
                let subject = match b.first().copied().unwrap_or(0) {
                    1 => Subject::She,
                    2 => Subject::Seed,
                    3 => Subject::Record,
                    4 => Subject::Grant,
                    other => return Err(MessageError::Subject(other)),
                };
                let mut tag = [0u8; 4];
                tag.copy_from_slice(b.get(2..6).unwrap_or(&[0; 4]));
                Message::Verdict {
                    subject,
                    code: b.get(1).copied().unwrap_or(0),
                    tag,
                }
            }
            0x0B => {
                let mut m = [0u8; 16];
                m.copy_from_slice(exact("decommission", body, 16)?);
                Message::Decommission(m)
            }
            other => return Err(MessageError::UnknownType(other)),
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..1100)) {
            if let Ok(m) = Message::decode(&bytes) {
                // Whatever parses encodes back to the same bytes.
                prop_assert_eq!(m.encode(), bytes);
            }
        }

        #[test]
        fn variable_round_trip(kind in prop::sample::select(vec![0x03u8, 0x06, 0x07]),
                               body in prop::collection::vec(any::<u8>(), 1..=40)) {
            let mut bytes = vec![kind];
            bytes.extend_from_slice(&body);
            let m = Message::decode(&bytes).unwrap();
            prop_assert_eq!(m.encode(), bytes);
        }
    }

    #[test]
    fn fixed_messages_round_trip_and_refuse_wrong_sizes() {
        use fleetkey_core::Key128;
        use fleetkey_core::she::{Counter, KeyFlags, SlotId, Uid, UpdateRequest, build};
        let uid = Uid::from_bytes([1; 15]);
        let req = UpdateRequest::new(
            uid,
            SlotId::Key4,
            SlotId::MasterEcuKey,
            Counter::new(5).unwrap(),
            KeyFlags::NONE,
        )
        .unwrap();
        let m = build(
            &Key128::from_bytes([2; 16]),
            &Key128::from_bytes([3; 16]),
            &req,
        );
        let load = Load {
            m1: m.m1,
            m2: m.m2,
            m3: m.m3,
        };
        let proof = Proof { m4: m.m4, m5: m.m5 };
        for msg in [
            Message::SheLoad(load.clone()),
            Message::SheProof(proof.clone()),
            Message::GroupSeed {
                generation: 2,
                revision: 3,
                first: load.clone(),
                second: load,
            },
            Message::GroupSeedProof {
                first: proof.clone(),
                second: proof,
            },
            Message::Challenge([9; 32]),
            Message::Possession([8; 64]),
            Message::Verdict {
                subject: Subject::Grant,
                code: code::GRANT_DENIED,
                tag: [1, 2, 3, 4],
            },
            Message::Decommission([7; 16]),
        ] {
            let bytes = msg.encode();
            assert_eq!(Message::decode(&bytes).unwrap(), msg);
            let short = &bytes[..bytes.len() - 1];
            assert!(
                matches!(Message::decode(short), Err(MessageError::Length { .. })),
                "{}",
                msg.name()
            );
        }
        assert_eq!(Message::decode(&[]), Err(MessageError::Empty));
        assert_eq!(
            Message::decode(&[0x42]),
            Err(MessageError::UnknownType(0x42))
        );
        assert_eq!(
            Message::decode(&[0x0A, 9, 0, 0, 0, 0, 0]),
            Err(MessageError::Subject(9))
        );
        assert_eq!(request_tag(&[1, 2]), [1, 2, 0, 0]);
        assert_eq!(request_tag(&[1, 2, 3, 4, 5]), [2, 3, 4, 5]);
        assert!(matches!(
            Message::decode(&[0x03]),
            Err(MessageError::Length { kind: "record", .. })
        ));
        let mut bad_m1 = Message::SheLoad(Load {
            m1: m.m1,
            m2: m.m2,
            m3: m.m3,
        })
        .encode();
        bad_m1[16] = 0x00; // key id 0 does not exist
        assert!(matches!(
            Message::decode(&bad_m1),
            Err(MessageError::She {
                kind: "she-load",
                ..
            })
        ));
    }
}
