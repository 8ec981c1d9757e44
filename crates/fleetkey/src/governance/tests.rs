use std::convert::Infallible;

use ed25519_dalek::{Signer as _, SigningKey};
use fleetkey_core::derive::Generation;
use fleetkey_core::governance::{
    Acceptance, Challenge, GovernanceError, GovernanceState, Record, RootKey, generation_allowed,
    possession_message, verify_generation_record, verify_grant, verify_handover, verify_possession,
};
use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::module::KeyModule as _;
use crate::module::soft::{SoftModule, WorkFactor};

/// The vectors' root: a fixed test seed, published in the vectors file (never a real root).
const ROOT_SEED: [u8; 32] = [0x42; 32];
const TECH_SEED: [u8; 32] = [0x17; 32];
const FLEET: &str = "fleet-a";
const NOW: u64 = 1_750_000_000;

fn signer(sk: &SigningKey) -> impl Fn(&[u8]) -> Result<[u8; 64], Infallible> + '_ {
    move |m| Ok(sk.sign(m).to_bytes())
}

fn device(sk: &SigningKey) -> GovernanceState {
    let pk = sk.verifying_key().to_bytes();
    GovernanceState::new(FLEET, RootKey::new(pk, &key_id(&pk)).unwrap()).unwrap()
}

fn gen_spec(
    sequence: u64,
    current: u32,
    accepted: &[u32],
    revoked: &[u32],
    denied: &[u64],
) -> GenerationRecordSpec {
    GenerationRecordSpec {
        fleet: FLEET.into(),
        not_before: NOW - 3600,
        not_after: NOW + 30 * 86400,
        sequence,
        current,
        accepted: accepted.to_vec(),
        revoked: revoked.to_vec(),
        denied: denied.to_vec(),
    }
}

fn grant_spec(id: u64, role: Role, scope: &[&[u8]]) -> GrantSpec {
    GrantSpec {
        fleet: FLEET.into(),
        not_before: NOW - 3600,
        not_after: NOW + 8 * 3600,
        id,
        subject: "alice@workshop.example".into(),
        role,
        scope: scope.iter().map(|p| p.to_vec()).collect(),
        subject_key: SigningKey::from_bytes(&TECH_SEED)
            .verifying_key()
            .to_bytes(),
    }
}

#[test]
fn coset_records_verify_on_the_device() {
    let root = SigningKey::from_bytes(&ROOT_SEED);
    let kid = key_id(&root.verifying_key().to_bytes());
    let sign = signer(&root);
    let mut st = device(&root);

    // Generation 1 current; a technician grant works with proof of possession.
    let r1 = gen_spec(1, 1, &[], &[], &[])
        .encode_and_sign(&kid, &sign)
        .unwrap();
    assert_eq!(
        verify_generation_record(&mut st, &r1, NOW),
        Ok(Acceptance::Updated)
    );
    let g7 = grant_spec(7, Role::Technician, &[b"ECU-"])
        .encode_and_sign(&kid, &sign)
        .unwrap();
    let grant = verify_grant(&st, &g7, b"ECU-0001", NOW).unwrap();
    let challenge = Challenge::from_nonce([0xc3; 32]);
    let pop = SigningKey::from_bytes(&TECH_SEED).sign(&possession_message(7, &challenge));
    assert_eq!(
        verify_possession(&grant, &challenge, &pop.to_bytes()),
        Ok(())
    );

    // Rotate to generation 2, then revoke 1 and deny grant 7.
    let r2 = gen_spec(2, 2, &[1], &[], &[])
        .encode_and_sign(&kid, &sign)
        .unwrap();
    verify_generation_record(&mut st, &r2, NOW).unwrap();
    assert!(generation_allowed(&st, Generation(1)));
    let r3 = gen_spec(3, 2, &[], &[1], &[7])
        .encode_and_sign(&kid, &sign)
        .unwrap();
    verify_generation_record(&mut st, &r3, NOW).unwrap();
    assert!(!generation_allowed(&st, Generation(1)));
    assert!(generation_allowed(&st, Generation(2)));
    assert_eq!(
        verify_grant(&st, &g7, b"ECU-0001", NOW),
        Err(GovernanceError::Denied)
    );
    // Rollback to r2 is refused.
    assert_eq!(
        verify_generation_record(&mut st, &r2, NOW),
        Err(GovernanceError::StaleSequence)
    );

    // Root handover.
    let new_root = SigningKey::from_bytes(&[0x99; 32]);
    let new_pk = new_root.verifying_key().to_bytes();
    let h = HandoverSpec {
        fleet: FLEET.into(),
        not_before: NOW - 10,
        not_after: NOW + 10,
        sequence: 4,
        new_key: new_pk,
        new_kid: key_id(&new_pk).to_vec(),
    }
    .encode_and_sign(&kid, &sign)
    .unwrap();
    verify_handover(&mut st, &h, NOW).unwrap();
    let r5 = gen_spec(5, 2, &[], &[1], &[])
        .encode_and_sign(&key_id(&new_pk), &signer(&new_root))
        .unwrap();
    verify_generation_record(&mut st, &r5, NOW).unwrap();
}

#[test]
fn signs_with_the_key_module() {
    let dir = tempfile::tempdir().unwrap();
    let module =
        SoftModule::create_with(dir.path().join("keys.age"), "pw", WorkFactor::Log2(1)).unwrap();
    let pk = module.ensure_signing_key().unwrap();
    let kid = key_id(&pk);
    let sign = |m: &[u8]| module.sign(m);
    let rec = gen_spec(1, 1, &[], &[], &[])
        .encode_and_sign(&kid, &sign)
        .unwrap();
    let mut st = GovernanceState::new(FLEET, RootKey::new(pk, &kid).unwrap()).unwrap();
    assert_eq!(
        verify_generation_record(&mut st, &rec, NOW),
        Ok(Acceptance::Updated)
    );
}

#[test]
fn bounds_are_checked_before_signing() {
    let root = SigningKey::from_bytes(&ROOT_SEED);
    let sign = signer(&root);
    let too_many = gen_spec(1, 1, &(2..19).collect::<Vec<_>>(), &[], &[]);
    assert!(matches!(
        too_many.encode_and_sign(b"k", &sign),
        Err(IssueError::Invalid(_))
    ));
    let inconsistent = gen_spec(1, 1, &[], &[1], &[]);
    assert!(matches!(
        inconsistent.encode_and_sign(b"k", &sign),
        Err(IssueError::Refused(GovernanceError::Inconsistent))
    ));
    let mut window = gen_spec(1, 1, &[], &[], &[]);
    window.not_after = window.not_before;
    assert!(matches!(
        window.encode_and_sign(b"k", &sign),
        Err(IssueError::Invalid(_))
    ));
    assert!(matches!(
        gen_spec(1, 1, &[], &[], &[]).encode_and_sign(b"", &sign),
        Err(IssueError::Invalid(_))
    ));
    let long_prefix = grant_spec(1, Role::Operator, &[&[0; 41]]);
    assert!(matches!(
        long_prefix.encode_and_sign(b"k", &sign),
        Err(IssueError::Invalid(_))
    ));
    // A failing signer is reported as such.
    let failing =
        |_: &[u8]| -> Result<[u8; 64], std::io::Error> { Err(std::io::Error::other("hsm down")) };
    assert!(matches!(
        gen_spec(1, 1, &[], &[], &[]).encode_and_sign(b"k", &failing),
        Err(IssueError::Sign(_))
    ));
}

#[test]
fn coset_reads_back_what_it_wrote() {
    let root = SigningKey::from_bytes(&ROOT_SEED);
    let rec = gen_spec(1, 1, &[], &[], &[])
        .encode_and_sign(b"kid-1", &signer(&root))
        .unwrap();
    let (payload, kid) = open_with_coset(&rec).unwrap();
    assert_eq!(kid, b"kid-1");
    assert_eq!(
        payload,
        gen_spec(1, 1, &[], &[], &[])
            .payload::<Infallible>()
            .unwrap()
    );
}

/// The records of `tests/vectors/governance-v1.json`, in the order a device applies them.
fn vector_records() -> Vec<serde_json::Value> {
    let root = SigningKey::from_bytes(&ROOT_SEED);
    let kid = key_id(&root.verifying_key().to_bytes());
    let sign = signer(&root);
    let gens = [
        gen_spec(1, 1, &[], &[], &[]),
        gen_spec(2, 2, &[1], &[], &[]),
        gen_spec(3, 2, &[], &[1], &[8, 300]),
    ];
    let grants = [
        (
            grant_spec(7, Role::Technician, &[b"ECU-00", b"GW-"]),
            "ECU-0042",
        ),
        (grant_spec(70000, Role::Operator, &[b""]), "any-serial"),
    ];
    let mut out = Vec::new();
    let gen_json = |s: &GenerationRecordSpec| {
        let cose = s.encode_and_sign(&kid, &sign).unwrap();
        json!({
            "kind": 1, "fleet": s.fleet, "not_before": s.not_before, "not_after": s.not_after,
            "sequence": s.sequence, "current": s.current, "accepted": s.accepted,
            "revoked": s.revoked, "denied": s.denied,
            "payload": hex::encode(s.payload::<Infallible>().unwrap()), "cose": hex::encode(cose),
        })
    };
    let grant_json = |s: &GrantSpec, serial: &str| {
        let cose = s.encode_and_sign(&kid, &sign).unwrap();
        json!({
            "kind": 2, "fleet": s.fleet, "not_before": s.not_before, "not_after": s.not_after,
            "grant_id": s.id, "subject": s.subject, "role": s.role as u8,
            "scope": s.scope.iter().map(hex::encode).collect::<Vec<_>>(),
            "subject_key": hex::encode(s.subject_key), "serial": serial,
            "payload": hex::encode(s.payload::<Infallible>().unwrap()), "cose": hex::encode(cose),
        })
    };
    out.push(gen_json(&gens[0]));
    out.push(grant_json(&grants[0].0, grants[0].1));
    out.push(gen_json(&gens[1]));
    out.push(gen_json(&gens[2]));
    out.push(grant_json(&grants[1].0, grants[1].1));
    out
}

#[test]
fn vectors_file_is_current() {
    let root = SigningKey::from_bytes(&ROOT_SEED);
    let pk = root.verifying_key().to_bytes();
    let doc = json!({
        "source": "fleetkey governance v1 (docs/governance.md); written by crates/fleetkey/src/governance/tests.rs (coset), FLEETKEY_WRITE_VECTORS=1 to rewrite",
        "external_aad": hex::encode(EXTERNAL_AAD),
        "root_seed": hex::encode(ROOT_SEED),
        "root_public_key": hex::encode(pk),
        "root_kid": hex::encode(key_id(&pk)),
        "subject_seed": hex::encode(TECH_SEED),
        "fleet": FLEET,
        "now": NOW,
        "records": vector_records(),
    });
    let text = serde_json::to_string_pretty(&doc).unwrap() + "\n";
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/vectors/governance-v1.json"
    );
    if std::env::var_os("FLEETKEY_WRITE_VECTORS").is_some() {
        std::fs::write(path, &text).unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(path).unwrap(),
        text,
        "rerun with FLEETKEY_WRITE_VECTORS=1"
    );
}

fn arb_spec() -> impl Strategy<Value = GenerationRecordSpec> {
    (
        "[a-z0-9-]{1,64}",
        0u64..1 << 40,
        1u64..1 << 40,
        any::<u64>(),
        any::<u32>(),
        proptest::collection::btree_set(any::<u32>(), 0..=32),
        proptest::collection::vec(any::<u64>(), 0..=16),
    )
        .prop_map(
            |(fleet, not_before, len, sequence, current, gens, denied)| {
                let gens: Vec<u32> = gens.into_iter().filter(|g| *g != current).collect();
                let (accepted, revoked): (Vec<u32>, Vec<u32>) =
                    gens.iter().partition(|g| *g % 2 == 0);
                GenerationRecordSpec {
                    fleet,
                    not_before,
                    not_after: not_before + len,
                    sequence,
                    current,
                    accepted: accepted.into_iter().take(16).collect(),
                    revoked: revoked.into_iter().take(16).collect(),
                    denied,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn spec_sign_verify_same_values(spec in arb_spec()) {
        let root = SigningKey::from_bytes(&ROOT_SEED);
        let pk = root.verifying_key().to_bytes();
        let kid = key_id(&pk);
        let bytes = spec.encode_and_sign(&kid, &signer(&root)).unwrap();
        let mut st = GovernanceState::new(&spec.fleet, RootKey::new(pk, &kid).unwrap()).unwrap();
        prop_assert_eq!(verify_generation_record(&mut st, &bytes, spec.not_before), Ok(Acceptance::Updated));
        let (_, Record::Generation(r)) = fleetkey_core::governance::inspect_unverified(&bytes).unwrap() else {
            panic!("kind");
        };
        prop_assert_eq!(r.fleet, spec.fleet.as_str());
        prop_assert_eq!((r.not_before, r.not_after, r.sequence, r.current),
            (spec.not_before, spec.not_after, spec.sequence, spec.current));
        prop_assert_eq!(r.accepted.as_slice(), &spec.accepted[..]);
        prop_assert_eq!(r.revoked.as_slice(), &spec.revoked[..]);
        prop_assert_eq!(r.denied.as_slice(), &spec.denied[..]);
    }

    #[test]
    fn grant_sign_verify_same_values(
        id in any::<u64>(),
        subject in "\\PC{0,16}",
        operator in any::<bool>(),
        scope in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..=40), 1..=16),
        subject_key in any::<[u8; 32]>(),
    ) {
        let root = SigningKey::from_bytes(&ROOT_SEED);
        let kid = key_id(&root.verifying_key().to_bytes());
        let role = if operator { Role::Operator } else { Role::Technician };
        let spec = GrantSpec { id, subject, role, scope, subject_key, ..grant_spec(0, role, &[]) };
        prop_assume!(spec.subject.len() <= 64);
        let bytes = spec.encode_and_sign(&kid, &signer(&root)).unwrap();
        let st = device(&root);
        let g = verify_grant(&st, &bytes, &spec.scope[0], NOW).unwrap();
        prop_assert_eq!((g.id, g.subject, g.role, g.subject_key), (id, spec.subject.as_str(), role, subject_key));
        let scope: Vec<&[u8]> = spec.scope.iter().map(Vec::as_slice).collect();
        prop_assert_eq!(g.scope.as_slice(), &scope[..]);
    }
}

/// The second root of the handover vectors (a fixed test seed, never a real root).
const NEW_ROOT_SEED: [u8; 32] = [0x43; 32];

/// `tests/vectors/governance-handover-v1.json`: a generation record by root A, a handover from
/// A to B, and a generation record by B, in the order a device applies them; each says which
/// root signed it. A device pinned to A accepts all three, then refuses the handover again.
#[test]
fn handover_vectors_file_is_current_and_a_device_follows_it() {
    let old = SigningKey::from_bytes(&ROOT_SEED);
    let new = SigningKey::from_bytes(&NEW_ROOT_SEED);
    let (old_pk, new_pk) = (
        old.verifying_key().to_bytes(),
        new.verifying_key().to_bytes(),
    );
    let handover = HandoverSpec {
        fleet: FLEET.into(),
        not_before: NOW - 3600,
        not_after: NOW + 30 * 86400,
        sequence: 2,
        new_key: new_pk,
        new_kid: key_id(&new_pk).to_vec(),
    };
    let first = gen_spec(1, 1, &[], &[], &[]);
    let after = gen_spec(3, 2, &[1], &[], &[]);
    let gen_json = |s: &GenerationRecordSpec, sk: &SigningKey, signer_name: &str| {
        let pk = sk.verifying_key().to_bytes();
        let cose = s.encode_and_sign(&key_id(&pk), &signer(sk)).unwrap();
        json!({
            "kind": 1, "signer": signer_name, "fleet": s.fleet, "not_before": s.not_before,
            "not_after": s.not_after, "sequence": s.sequence, "current": s.current,
            "accepted": s.accepted, "revoked": s.revoked, "denied": s.denied,
            "payload": hex::encode(s.payload::<Infallible>().unwrap()), "cose": hex::encode(cose),
        })
    };
    let handover_cose = handover
        .encode_and_sign(&key_id(&old_pk), &signer(&old))
        .unwrap();
    let records = vec![
        gen_json(&first, &old, "old"),
        json!({
            "kind": 3, "signer": "old", "fleet": handover.fleet,
            "not_before": handover.not_before, "not_after": handover.not_after,
            "sequence": handover.sequence, "new_root_key": hex::encode(handover.new_key),
            "new_root_kid": hex::encode(&handover.new_kid),
            "payload": hex::encode(handover.payload::<Infallible>().unwrap()),
            "cose": hex::encode(&handover_cose),
        }),
        gen_json(&after, &new, "new"),
    ];
    let doc = json!({
        "source": "fleetkey governance v1 root handover (docs/governance.md); written by crates/fleetkey/src/governance/tests.rs (coset), FLEETKEY_WRITE_VECTORS=1 to rewrite",
        "external_aad": hex::encode(EXTERNAL_AAD),
        "fleet": FLEET,
        "now": NOW,
        "old_root_seed": hex::encode(ROOT_SEED),
        "old_root_public_key": hex::encode(old_pk),
        "old_root_kid": hex::encode(key_id(&old_pk)),
        "new_root_seed": hex::encode(NEW_ROOT_SEED),
        "new_root_public_key": hex::encode(new_pk),
        "new_root_kid": hex::encode(key_id(&new_pk)),
        "records": records,
    });
    let text = serde_json::to_string_pretty(&doc).unwrap() + "\n";
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/vectors/governance-handover-v1.json"
    );
    if std::env::var_os("FLEETKEY_WRITE_VECTORS").is_some() {
        std::fs::write(path, &text).unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(path).unwrap(),
        text,
        "rerun with FLEETKEY_WRITE_VECTORS=1"
    );
    follow_handover_vectors(&doc);
}

/// Applies a handover vectors document (ours, or the one Python builds) to a device pinned to
/// its old root.
fn follow_handover_vectors(doc: &serde_json::Value) {
    let field = |k: &str| hex::decode(doc[k].as_str().unwrap()).unwrap();
    let old_pk: [u8; 32] = field("old_root_public_key").try_into().unwrap();
    let fleet = doc["fleet"].as_str().unwrap();
    let now = doc["now"].as_u64().unwrap();
    let mut state =
        GovernanceState::new(fleet, RootKey::new(old_pk, &field("old_root_kid")).unwrap()).unwrap();
    let cose = |i: usize| hex::decode(doc["records"][i]["cose"].as_str().unwrap()).unwrap();
    assert_eq!(
        verify_generation_record(&mut state, &cose(0), now),
        Ok(Acceptance::Updated)
    );
    assert_eq!(
        verify_generation_record(&mut state, &cose(2), now),
        Err(GovernanceError::UnknownKid)
    );
    assert_eq!(verify_handover(&mut state, &cose(1), now), Ok(()));
    assert_eq!(
        verify_generation_record(&mut state, &cose(2), now),
        Ok(Acceptance::Updated)
    );
    assert_eq!(
        verify_handover(&mut state, &cose(1), now),
        Err(GovernanceError::UnknownKid)
    );
    assert!(generation_allowed(
        &state,
        Generation(u32::try_from(doc["records"][2]["current"].as_u64().unwrap()).unwrap())
    ));
}

/// The handover vectors Python builds with `cbor2` and `cryptography`
/// (`tests/crosscheck/check_governance.py`) are accepted by the device core in order.
#[test]
fn python_handover_vectors_are_accepted_by_the_device() {
    let doc: serde_json::Value = serde_json::from_str(include_str!(
        "../../../../tests/vectors/governance-handover-v1-python.json"
    ))
    .unwrap();
    follow_handover_vectors(&doc);
}
