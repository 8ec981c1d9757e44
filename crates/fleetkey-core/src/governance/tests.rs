use std::string::{String, ToString};
use std::vec;
use std::vec::Vec;

use ed25519_dalek::{Signer, SigningKey};
use proptest::prelude::*;

use super::*;

// A small independent CBOR encoder (not the manager's coset path) to build records in tests.
#[derive(Default)]
struct Enc(Vec<u8>);

impl Enc {
    fn head(&mut self, major: u8, v: u64) -> &mut Self {
        let m = major << 5;
        if v < 24 {
            self.0.push(m | v as u8);
        } else if v <= 0xff {
            self.0.extend([m | 24, v as u8]);
        } else if v <= 0xffff {
            self.0.push(m | 25);
            self.0.extend((v as u16).to_be_bytes());
        } else if v <= 0xffff_ffff {
            self.0.push(m | 26);
            self.0.extend((v as u32).to_be_bytes());
        } else {
            self.0.push(m | 27);
            self.0.extend(v.to_be_bytes());
        }
        self
    }
    fn uint(&mut self, v: u64) -> &mut Self {
        self.head(0, v)
    }
    fn nint(&mut self, v: i64) -> &mut Self {
        self.head(1, (-1 - v) as u64)
    }
    fn bstr(&mut self, b: &[u8]) -> &mut Self {
        self.head(2, b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    fn tstr(&mut self, s: &str) -> &mut Self {
        self.head(3, s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
}

#[derive(Clone, Debug)]
struct GenSpec {
    fleet: String,
    not_before: u64,
    not_after: u64,
    sequence: u64,
    current: u32,
    accepted: Vec<u32>,
    revoked: Vec<u32>,
    denied: Vec<u64>,
}

impl GenSpec {
    fn payload(&self) -> Vec<u8> {
        let mut e = Enc::default();
        e.head(5, 9).uint(1).uint(1).uint(2).tstr(&self.fleet);
        e.uint(3).uint(self.not_before).uint(4).uint(self.not_after);
        e.uint(5)
            .uint(self.sequence)
            .uint(6)
            .uint(self.current.into());
        e.uint(7).head(4, self.accepted.len() as u64);
        for g in &self.accepted {
            e.uint((*g).into());
        }
        e.uint(8).head(4, self.revoked.len() as u64);
        for g in &self.revoked {
            e.uint((*g).into());
        }
        e.uint(9).head(4, self.denied.len() as u64);
        for g in &self.denied {
            e.uint(*g);
        }
        e.0
    }
}

#[derive(Clone, Debug)]
struct GrantSpec {
    fleet: String,
    not_before: u64,
    not_after: u64,
    id: u64,
    subject: String,
    role: u64,
    scope: Vec<Vec<u8>>,
    key: [u8; 32],
}

impl GrantSpec {
    fn payload(&self) -> Vec<u8> {
        let mut e = Enc::default();
        e.head(5, 9).uint(1).uint(2).uint(2).tstr(&self.fleet);
        e.uint(3).uint(self.not_before).uint(4).uint(self.not_after);
        e.uint(10).uint(self.id).uint(11).tstr(&self.subject);
        e.uint(12)
            .uint(self.role)
            .uint(13)
            .head(4, self.scope.len() as u64);
        for p in &self.scope {
            e.bstr(p);
        }
        e.uint(14).bstr(&self.key);
        e.0
    }
}

fn handover_payload(fleet: &str, sequence: u64, key: &[u8; 32], kid: &[u8]) -> Vec<u8> {
    let mut e = Enc::default();
    e.head(5, 7).uint(1).uint(3).uint(2).tstr(fleet);
    e.uint(3).uint(0).uint(4).uint(u64::MAX);
    e.uint(5)
        .uint(sequence)
        .uint(15)
        .bstr(key)
        .uint(16)
        .bstr(kid);
    e.0
}

fn protected(alg: i64, kid: &[u8]) -> Vec<u8> {
    let mut e = Enc::default();
    e.head(5, 2).uint(1).nint(alg).uint(4).bstr(kid);
    e.0
}

fn tbs(protected: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut e = Enc::default();
    e.head(4, 4)
        .tstr("Signature1")
        .bstr(protected)
        .bstr(EXTERNAL_AAD)
        .bstr(payload);
    e.0
}

fn sign1_with(sk: &SigningKey, protected: &[u8], payload: &[u8]) -> Vec<u8> {
    let sig = sk.sign(&tbs(protected, payload)).to_bytes();
    let mut e = Enc::default();
    e.head(6, 18)
        .head(4, 4)
        .bstr(protected)
        .head(5, 0)
        .bstr(payload)
        .bstr(&sig);
    e.0
}

fn sign1(sk: &SigningKey, kid: &[u8], payload: &[u8]) -> Vec<u8> {
    sign1_with(sk, &protected(-8, kid), payload)
}

const FLEET: &str = "fleet-a";
const KID: &[u8] = b"root-1";
const NOW: u64 = 1_750_000_000;

fn root_sk() -> SigningKey {
    SigningKey::from_bytes(&[0x42; 32])
}

fn tech_sk() -> SigningKey {
    SigningKey::from_bytes(&[0x17; 32])
}

fn state() -> GovernanceState {
    let root = RootKey::new(root_sk().verifying_key().to_bytes(), KID).unwrap();
    GovernanceState::new(FLEET, root).unwrap()
}

fn gen_spec(sequence: u64) -> GenSpec {
    GenSpec {
        fleet: FLEET.to_string(),
        not_before: NOW - 100,
        not_after: NOW + 100,
        sequence,
        current: 2,
        accepted: vec![1],
        revoked: vec![],
        denied: vec![],
    }
}

fn grant_spec() -> GrantSpec {
    GrantSpec {
        fleet: FLEET.to_string(),
        not_before: NOW - 100,
        not_after: NOW + 100,
        id: 7,
        subject: "tech@example".to_string(),
        role: 1,
        scope: vec![b"ECU-00".to_vec(), b"GW-".to_vec()],
        key: tech_sk().verifying_key().to_bytes(),
    }
}

fn record(spec: &GenSpec) -> Vec<u8> {
    sign1(&root_sk(), KID, &spec.payload())
}

/// Verifies and asserts that a failure leaves the state unchanged.
fn try_record(
    st: &mut GovernanceState,
    bytes: &[u8],
    now: u64,
) -> Result<Acceptance, GovernanceError> {
    let before = st.clone();
    let r = verify_generation_record(st, bytes, now);
    if r.is_err() {
        assert_eq!(*st, before, "state changed on failure");
    }
    r
}

#[test]
fn rfc8032_vectors_verify_and_reject_flips() {
    let v: serde_json::Value = serde_json::from_str(include_str!(
        "../../../../tests/vectors/rfc8032-ed25519.json"
    ))
    .unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for c in cases {
        let pk: [u8; 32] = hex::decode(c["public_key"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let msg = hex::decode(c["message"].as_str().unwrap()).unwrap();
        let sig: [u8; 64] = hex::decode(c["signature"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        verify_ed25519(&pk, &msg, &sig).unwrap();
        let mut bad = sig;
        bad[0] ^= 1;
        assert_eq!(
            verify_ed25519(&pk, &msg, &bad),
            Err(GovernanceError::Signature)
        );
        let mut msg2 = msg.clone();
        msg2.push(0);
        assert_eq!(
            verify_ed25519(&pk, &msg2, &sig),
            Err(GovernanceError::Signature)
        );
        // And as a proof of possession with the RFC key as the grant key: the RFC's secret key
        // signs the possession message; the device's check accepts it.
        let sk = SigningKey::from_bytes(
            &hex::decode(c["secret_key"].as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap(),
        );
        assert_eq!(sk.verifying_key().to_bytes(), pk);
        assert_eq!(sk.sign(&msg).to_bytes(), sig);
    }
}

#[test]
fn accepts_a_record_and_governs_generations() {
    let mut st = state();
    assert!(!generation_allowed(&st, Generation(1)));
    let mut spec = gen_spec(1);
    assert_eq!(
        try_record(&mut st, &record(&spec), NOW),
        Ok(Acceptance::Updated)
    );
    assert_eq!(st.sequence(), Some(1));
    assert_eq!(st.current_generation(), Some(Generation(2)));
    assert!(generation_allowed(&st, Generation(1)));
    assert!(generation_allowed(&st, Generation(2)));
    assert_eq!(
        check_generation(&st, Generation(3)),
        Err(GovernanceError::UnknownGeneration)
    );

    // Revoke generation 1.
    spec.sequence = 2;
    spec.accepted = vec![];
    spec.revoked = vec![1];
    assert_eq!(
        try_record(&mut st, &record(&spec), NOW),
        Ok(Acceptance::Updated)
    );
    assert_eq!(
        check_generation(&st, Generation(1)),
        Err(GovernanceError::RevokedGeneration)
    );
    assert!(!generation_allowed(&st, Generation(1)));
    assert!(generation_allowed(&st, Generation(2)));
}

#[test]
fn sequence_rules() {
    let mut st = state();
    let r5 = record(&gen_spec(5));
    assert_eq!(try_record(&mut st, &r5, NOW), Ok(Acceptance::Updated));
    // The same record again is a repeat, not an error.
    assert_eq!(try_record(&mut st, &r5, NOW), Ok(Acceptance::Repeated));
    // Rollback.
    assert_eq!(
        try_record(&mut st, &record(&gen_spec(4)), NOW),
        Err(GovernanceError::StaleSequence)
    );
    // Same sequence, different content.
    let mut other = gen_spec(5);
    other.denied = vec![9];
    assert_eq!(
        try_record(&mut st, &record(&other), NOW),
        Err(GovernanceError::SequenceReused)
    );
    assert_eq!(
        try_record(&mut st, &record(&gen_spec(6)), NOW),
        Ok(Acceptance::Updated)
    );
}

#[test]
fn validity_window() {
    let mut st = state();
    let spec = gen_spec(1);
    let r = record(&spec);
    assert_eq!(
        try_record(&mut st, &r, spec.not_before - 1),
        Err(GovernanceError::NotYetValid)
    );
    assert_eq!(
        try_record(&mut st, &r, spec.not_after),
        Err(GovernanceError::Expired)
    );
    assert_eq!(
        try_record(&mut st, &r, spec.not_after + 1000),
        Err(GovernanceError::Expired)
    );
    assert_eq!(
        try_record(&mut st, &r, spec.not_after - 1),
        Ok(Acceptance::Updated)
    );
    let mut st = state();
    assert_eq!(
        try_record(&mut st, &r, spec.not_before),
        Ok(Acceptance::Updated)
    );
    // An empty window is malformed.
    let mut empty = gen_spec(2);
    empty.not_after = empty.not_before;
    assert_eq!(
        try_record(&mut st, &record(&empty), NOW),
        Err(GovernanceError::Malformed(Field::Window))
    );
}

#[test]
fn wrong_signer_kid_alg_fleet_kind() {
    let mut st = state();
    let payload = gen_spec(1).payload();
    let other = SigningKey::from_bytes(&[0x43; 32]);
    assert_eq!(
        try_record(&mut st, &sign1(&other, KID, &payload), NOW),
        Err(GovernanceError::Signature)
    );
    assert_eq!(
        try_record(&mut st, &sign1(&root_sk(), b"root-2", &payload), NOW),
        Err(GovernanceError::UnknownKid)
    );
    assert_eq!(
        try_record(
            &mut st,
            &sign1_with(&root_sk(), &protected(-7, KID), &payload),
            NOW
        ),
        Err(GovernanceError::Algorithm)
    );
    let mut spec = gen_spec(1);
    spec.fleet = "fleet-b".to_string();
    assert_eq!(
        try_record(&mut st, &record(&spec), NOW),
        Err(GovernanceError::Fleet)
    );
    let grant = sign1(&root_sk(), KID, &grant_spec().payload());
    assert_eq!(try_record(&mut st, &grant, NOW), Err(GovernanceError::Kind));
    assert_eq!(
        verify_grant(&st, &record(&gen_spec(1)), b"ECU-0001", NOW),
        Err(GovernanceError::Kind)
    );
    // Signed with the right key but another external_aad (i.e. another domain): refused.
    let p = protected(-8, KID);
    let mut e = Enc::default();
    e.head(4, 4)
        .tstr("Signature1")
        .bstr(&p)
        .bstr(b"other")
        .bstr(&payload);
    let sig = root_sk().sign(&e.0).to_bytes();
    let mut rec = Enc::default();
    rec.head(6, 18)
        .head(4, 4)
        .bstr(&p)
        .head(5, 0)
        .bstr(&payload)
        .bstr(&sig);
    assert_eq!(
        try_record(&mut st, &rec.0, NOW),
        Err(GovernanceError::Signature)
    );
}

#[test]
fn inconsistent_generation_sets() {
    let mut st = state();
    let mut spec = gen_spec(1);
    spec.revoked = vec![2];
    assert_eq!(
        try_record(&mut st, &record(&spec), NOW),
        Err(GovernanceError::Inconsistent)
    );
    let mut spec = gen_spec(1);
    spec.revoked = vec![1];
    assert_eq!(
        try_record(&mut st, &record(&spec), NOW),
        Err(GovernanceError::Inconsistent)
    );
}

#[test]
fn structure_rejections() {
    let mut st = state();
    let good = record(&gen_spec(1));
    // Untagged.
    assert!(matches!(
        try_record(&mut st, &good[1..], NOW),
        Err(GovernanceError::Malformed(_))
    ));
    // Trailing byte.
    let mut trailing = good.clone();
    trailing.push(0);
    assert_eq!(
        try_record(&mut st, &trailing, NOW),
        Err(GovernanceError::Malformed(Field::Record))
    );
    // Truncated at every length.
    for n in 0..good.len() {
        assert!(
            try_record(&mut st, &good[..n], NOW).is_err(),
            "truncated to {n}"
        );
    }
    // Oversized.
    let big = vec![0u8; MAX_RECORD_LEN + 1];
    assert_eq!(
        try_record(&mut st, &big, NOW),
        Err(GovernanceError::TooLarge(Field::Record))
    );
    // Non-empty unprotected header.
    let p = protected(-8, KID);
    let payload = gen_spec(1).payload();
    let sig = root_sk().sign(&tbs(&p, &payload)).to_bytes();
    let mut e = Enc::default();
    e.head(6, 18)
        .head(4, 4)
        .bstr(&p)
        .head(5, 1)
        .uint(4)
        .bstr(KID)
        .bstr(&payload)
        .bstr(&sig);
    assert_eq!(
        try_record(&mut st, &e.0, NOW),
        Err(GovernanceError::Malformed(Field::Unprotected))
    );
    // A non-shortest integer in the payload (sequence 1 as 0x18 0x01), validly signed.
    let mut e = Enc::default();
    e.head(5, 9)
        .uint(1)
        .uint(1)
        .uint(2)
        .tstr(FLEET)
        .uint(3)
        .uint(NOW - 1)
        .uint(4)
        .uint(NOW + 1);
    e.uint(5);
    e.0.extend([0x18, 0x01]);
    e.uint(6)
        .uint(2)
        .uint(7)
        .head(4, 0)
        .uint(8)
        .head(4, 0)
        .uint(9)
        .head(4, 0);
    let rec = sign1(&root_sk(), KID, &e.0);
    assert_eq!(
        try_record(&mut st, &rec, NOW),
        Err(GovernanceError::Malformed(Field::Sequence))
    );
    // Too many generations.
    let mut spec = gen_spec(1);
    spec.accepted = (100..117).collect();
    assert_eq!(
        try_record(&mut st, &record(&spec), NOW),
        Err(GovernanceError::TooLarge(Field::Generations))
    );
    spec.accepted = (100..116).collect();
    assert_eq!(
        try_record(&mut st, &record(&spec), NOW),
        Ok(Acceptance::Updated)
    );
}

#[test]
fn tampering_any_byte_is_refused() {
    let good = record(&gen_spec(1));
    for i in 0..good.len() {
        for mask in [0x01u8, 0x80] {
            let mut bad = good.clone();
            bad[i] ^= mask;
            let mut st = state();
            assert!(
                try_record(&mut st, &bad, NOW).is_err(),
                "byte {i} ^ {mask:#x} accepted"
            );
        }
    }
    let grant = sign1(&root_sk(), KID, &grant_spec().payload());
    let mut st = state();
    for i in 0..grant.len() {
        let mut bad = grant.clone();
        bad[i] ^= 0x01;
        assert!(
            verify_grant(&st, &bad, b"ECU-0001", NOW).is_err(),
            "grant byte {i} accepted"
        );
    }
    verify_generation_record(&mut st, &good, NOW).unwrap();
}

#[test]
fn grants_scope_deny_and_possession() {
    let mut st = state();
    verify_generation_record(&mut st, &record(&gen_spec(1)), NOW).unwrap();
    let spec = grant_spec();
    let bytes = sign1(&root_sk(), KID, &spec.payload());
    let grant = verify_grant(&st, &bytes, b"ECU-0001", NOW).unwrap();
    assert_eq!(grant.id, 7);
    assert_eq!(grant.subject, "tech@example");
    assert_eq!(grant.role, Role::Technician);
    assert_eq!(grant.scope.as_slice(), &[&b"ECU-00"[..], &b"GW-"[..]]);
    assert_eq!(grant.subject_key, tech_sk().verifying_key().to_bytes());
    assert!(verify_grant(&st, &bytes, b"GW-7", NOW).is_ok());
    assert_eq!(
        verify_grant(&st, &bytes, b"ECU-0100", NOW),
        Err(GovernanceError::OutOfScope)
    );
    assert_eq!(
        verify_grant(&st, &bytes, b"ECU-0", NOW),
        Err(GovernanceError::OutOfScope)
    );
    assert_eq!(
        verify_grant(&st, &bytes, b"ECU-0001", NOW + 100),
        Err(GovernanceError::Expired)
    );
    assert_eq!(
        verify_grant(&st, &bytes, b"ECU-0001", NOW - 101),
        Err(GovernanceError::NotYetValid)
    );
    let other_root = sign1(&SigningKey::from_bytes(&[9; 32]), KID, &spec.payload());
    assert_eq!(
        verify_grant(&st, &other_root, b"ECU-0001", NOW),
        Err(GovernanceError::Signature)
    );
    let mut wrong_fleet = spec.clone();
    wrong_fleet.fleet = "fleet-b".to_string();
    let wf = sign1(&root_sk(), KID, &wrong_fleet.payload());
    assert_eq!(
        verify_grant(&st, &wf, b"ECU-0001", NOW),
        Err(GovernanceError::Fleet)
    );
    let mut bad_role = spec.clone();
    bad_role.role = 3;
    let br = sign1(&root_sk(), KID, &bad_role.payload());
    assert_eq!(
        verify_grant(&st, &br, b"ECU-0001", NOW),
        Err(GovernanceError::Malformed(Field::Role))
    );
    let mut none = spec.clone();
    none.scope = vec![];
    let n = sign1(&root_sk(), KID, &none.payload());
    assert_eq!(
        verify_grant(&st, &n, b"ECU-0001", NOW),
        Err(GovernanceError::OutOfScope)
    );
    let mut all = spec.clone();
    all.scope = vec![vec![]];
    let a = sign1(&root_sk(), KID, &all.payload());
    assert!(verify_grant(&st, &a, b"anything", NOW).is_ok());

    // Proof of possession.
    let challenge = Challenge::from_nonce([0x5a; 32]);
    let sig = tech_sk()
        .sign(&possession_message(grant.id, &challenge))
        .to_bytes();
    assert_eq!(verify_possession(&grant, &challenge, &sig), Ok(()));
    let other = Challenge::from_nonce([0x5b; 32]);
    assert_eq!(
        verify_possession(&grant, &other, &sig),
        Err(GovernanceError::Possession)
    );
    let root_sig = root_sk()
        .sign(&possession_message(grant.id, &challenge))
        .to_bytes();
    assert_eq!(
        verify_possession(&grant, &challenge, &root_sig),
        Err(GovernanceError::Possession)
    );
    let mut m = possession_message(7, &challenge).to_vec();
    assert_eq!(&m[..15], b"fleetkey pop v1");
    assert_eq!(&m[15..23], &7u64.to_be_bytes());
    m.truncate(0);

    // Denied by the next record: no re-keying, the same grant now fails.
    let mut deny = gen_spec(2);
    deny.denied = vec![7];
    verify_generation_record(&mut st, &record(&deny), NOW).unwrap();
    assert_eq!(
        verify_grant(&st, &bytes, b"ECU-0001", NOW),
        Err(GovernanceError::Denied)
    );
}

#[test]
fn handover_moves_the_pin_once() {
    let mut st = state();
    verify_generation_record(&mut st, &record(&gen_spec(3)), NOW).unwrap();
    let new_sk = SigningKey::from_bytes(&[0x77; 32]);
    let new_pk = new_sk.verifying_key().to_bytes();
    let h = sign1(
        &root_sk(),
        KID,
        &handover_payload(FLEET, 4, &new_pk, b"root-2"),
    );
    // A handover is not a generation record.
    assert_eq!(try_record(&mut st, &h, NOW), Err(GovernanceError::Kind));
    verify_handover(&mut st, &h, NOW).unwrap();
    assert_eq!(st.root().kid(), b"root-2");
    assert_eq!(st.root().public_key(), new_pk);
    assert_eq!(st.sequence(), Some(4));
    assert!(generation_allowed(&st, Generation(2)));
    // Accepted once: presented again it is signed by a root no longer pinned.
    assert_eq!(
        verify_handover(&mut st, &h, NOW),
        Err(GovernanceError::UnknownKid)
    );
    // The old root no longer governs.
    assert_eq!(
        try_record(&mut st, &record(&gen_spec(5)), NOW),
        Err(GovernanceError::UnknownKid)
    );
    // The new one does, above the handover's sequence.
    let r4 = sign1(&new_sk, b"root-2", &gen_spec(4).payload());
    assert_eq!(
        try_record(&mut st, &r4, NOW),
        Err(GovernanceError::SequenceReused)
    );
    let r5 = sign1(&new_sk, b"root-2", &gen_spec(5).payload());
    assert_eq!(try_record(&mut st, &r5, NOW), Ok(Acceptance::Updated));
    // A stale handover from the new root is refused.
    let h2 = sign1(
        &new_sk,
        b"root-2",
        &handover_payload(FLEET, 5, &[0x11; 32], b"x"),
    );
    assert!(verify_handover(&mut st, &h2, NOW).is_err());
}

#[test]
fn state_and_root_bounds() {
    let pk = root_sk().verifying_key().to_bytes();
    assert_eq!(
        RootKey::new(pk, b""),
        Err(GovernanceError::Malformed(Field::Kid))
    );
    assert_eq!(
        RootKey::new(pk, &[1; 17]),
        Err(GovernanceError::TooLarge(Field::Kid))
    );
    assert!(RootKey::new(pk, &[1; 16]).is_ok());
    let root = RootKey::new(pk, KID).unwrap();
    assert!(GovernanceState::new("", root).is_err());
    assert!(GovernanceState::new(&"f".repeat(65), root).is_err());
    assert!(GovernanceState::new(&"f".repeat(64), root).is_ok());
    let _ = std::format!("{}", GovernanceError::Malformed(Field::Scope));
}

#[test]
fn vectors_from_the_manager_and_python() {
    for text in [
        include_str!("../../../../tests/vectors/governance-v1.json"),
        include_str!("../../../../tests/vectors/governance-v1-python.json"),
    ] {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        let pk: [u8; 32] = hex::decode(v["root_public_key"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let kid = hex::decode(v["root_kid"].as_str().unwrap()).unwrap();
        let fleet = v["fleet"].as_str().unwrap();
        let mut st = GovernanceState::new(fleet, RootKey::new(pk, &kid).unwrap()).unwrap();
        let now = v["now"].as_u64().unwrap();
        let mut grants = 0;
        let mut possessions = 0;
        for r in v["records"].as_array().unwrap() {
            let bytes = hex::decode(r["cose"].as_str().unwrap()).unwrap();
            match r["kind"].as_u64().unwrap() {
                1 => {
                    verify_generation_record(&mut st, &bytes, now).unwrap();
                    assert_eq!(st.sequence(), r["sequence"].as_u64());
                }
                2 => {
                    let serial = r["serial"].as_str().unwrap().as_bytes();
                    let g = verify_grant(&st, &bytes, serial, now).unwrap();
                    assert_eq!(Some(g.id), r["grant_id"].as_u64());
                    grants += 1;
                    let pop = &v["possession"];
                    if pop["grant_id"].as_u64() == Some(g.id) {
                        let hex32 = |k: &str| hex::decode(pop[k].as_str().unwrap()).unwrap();
                        let challenge =
                            Challenge::from_nonce(hex32("challenge").try_into().unwrap());
                        let sig: [u8; 64] = hex32("signature").try_into().unwrap();
                        assert_eq!(verify_possession(&g, &challenge, &sig), Ok(()));
                        possessions += 1;
                    }
                }
                k => panic!("kind {k}"),
            }
        }
        assert!(grants > 0);
        assert_eq!(possessions, usize::from(v.get("possession").is_some()));
    }
}

fn arb_gen() -> impl Strategy<Value = GenSpec> {
    (
        "[a-z0-9-]{1,64}",
        0u64..u64::MAX / 2,
        1u64..u64::MAX / 2,
        any::<u64>(),
        any::<u32>(),
        proptest::collection::vec(any::<u32>(), 0..=16),
        proptest::collection::vec(any::<u64>(), 0..=16),
    )
        .prop_map(|(fleet, nb, len, sequence, current, gens, denied)| {
            // Split the generations into accepted and revoked sets that do not overlap.
            let mut accepted = Vec::new();
            let mut revoked = Vec::new();
            for g in gens {
                if g == current || accepted.contains(&g) || revoked.contains(&g) {
                    continue;
                }
                if g % 2 == 0 {
                    accepted.push(g)
                } else {
                    revoked.push(g)
                }
            }
            GenSpec {
                fleet,
                not_before: nb,
                not_after: nb + len,
                sequence,
                current,
                accepted,
                revoked,
                denied,
            }
        })
}

proptest! {
    #[test]
    fn generation_record_round_trip(spec in arb_gen()) {
        let root = RootKey::new(root_sk().verifying_key().to_bytes(), KID).unwrap();
        let mut st = GovernanceState::new(&spec.fleet, root).unwrap();
        let bytes = record(&spec);
        prop_assume!(bytes.len() <= MAX_RECORD_LEN);
        prop_assert_eq!(verify_generation_record(&mut st, &bytes, spec.not_before), Ok(Acceptance::Updated));
        prop_assert_eq!(st.sequence(), Some(spec.sequence));
        prop_assert_eq!(st.current_generation(), Some(Generation(spec.current)));
        prop_assert_eq!(st.accepted_generations(), &spec.accepted[..]);
        prop_assert_eq!(st.revoked_generations(), &spec.revoked[..]);
        prop_assert_eq!(st.denied_grants(), &spec.denied[..]);
        for g in &spec.revoked {
            prop_assert!(!generation_allowed(&st, Generation(*g)));
        }
        prop_assert!(generation_allowed(&st, Generation(spec.current)));
    }

    #[test]
    fn grant_round_trip(
        id in any::<u64>(),
        subject in "[ -~]{0,64}",
        role in 1u64..=2,
        scope in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..=40), 0..=16),
        key in any::<[u8; 32]>(),
        serial_tail in proptest::collection::vec(any::<u8>(), 0..8),
    ) {
        let mut st = state();
        let spec = GrantSpec { id, subject: subject.clone(), role, scope: scope.clone(), key, ..grant_spec() };
        let bytes = sign1(&root_sk(), KID, &spec.payload());
        prop_assume!(bytes.len() <= MAX_RECORD_LEN);
        let mut serial = scope.first().cloned().unwrap_or_default();
        serial.extend(serial_tail);
        let (_, parsed) = inspect_unverified(&bytes).unwrap();
        let Record::Grant(g) = parsed else { panic!("not a grant") };
        prop_assert_eq!(g.id, id);
        prop_assert_eq!(g.subject, subject.as_str());
        prop_assert_eq!(g.role as u64, role);
        prop_assert_eq!(g.subject_key, key);
        let scope_refs: Vec<&[u8]> = scope.iter().map(Vec::as_slice).collect();
        prop_assert_eq!(g.scope.as_slice(), &scope_refs[..]);
        let verified = verify_grant(&st, &bytes, &serial, NOW);
        if scope.is_empty() {
            prop_assert_eq!(verified, Err(GovernanceError::OutOfScope));
        } else {
            prop_assert_eq!(verified, Ok(g));
        }
        verify_generation_record(&mut st, &record(&GenSpec { denied: vec![id], ..gen_spec(1) }), NOW).unwrap();
        if !scope.is_empty() {
            prop_assert_eq!(verify_grant(&st, &bytes, &serial, NOW), Err(GovernanceError::Denied));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1100), now in any::<u64>()) {
        let mut st = state();
        let before = st.clone();
        prop_assert!(verify_generation_record(&mut st, &bytes, now).is_err());
        prop_assert!(verify_handover(&mut st, &bytes, now).is_err());
        prop_assert_eq!(&st, &before);
        prop_assert!(verify_grant(&st, &bytes, b"ECU-0001", now).is_err());
        let _ = inspect_unverified(&bytes);
    }

    #[test]
    fn mutated_records_never_panic(pos in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let good = record(&gen_spec(1));
        let mut bad = good.clone();
        let i = pos.index(bad.len());
        bad[i] = byte;
        bad.truncate(cut.index(bad.len() + 1).max(i + 1));
        let mut st = state();
        let r = verify_generation_record(&mut st, &bad, NOW);
        if bad != good {
            prop_assert!(r.is_err());
        }
        let _ = inspect_unverified(&bad);
    }
}

#[test]
fn state_size() {
    std::println!(
        "GovernanceState {} bytes, Grant {} bytes",
        core::mem::size_of::<GovernanceState>(),
        core::mem::size_of::<Grant<'_>>()
    );
    assert!(core::mem::size_of::<GovernanceState>() <= 1024);
}
