//! The governance root in a PKCS#11 token (SoftHSM2): a root split into custodian shares is
//! restored into a fresh token with the same public key, as a sensitive, non-extractable
//! `CKK_EC_EDWARDS` key that can only sign; a rotation stages the next root beside it and
//! promoting destroys the old root's objects.
//!
//! One SoftHSM2 token in a temporary directory of this test process (its own `SOFTHSM2_CONF`,
//! read at the process's one `C_Initialize`), so this file holds one test. Needs the Debian
//! package `softhsm2`; without it the test fails saying so, unless `FLEETKEY_SKIP_PKCS11=1`.

use std::path::Path;

use ed25519_dalek::{Signature, VerifyingKey};
use fleetkey::ModuleError;
use fleetkey::backup;
use fleetkey::error::Error;
use fleetkey::module::pkcs11::cryptoki::object::{Attribute, AttributeType, KeyType};
use fleetkey::module::pkcs11::{Pin, Pkcs11Module};
use fleetkey::module::{KeyModule, SigningSeed};
use fleetkey::restore;

#[path = "support/softhsm.rs"]
mod softhsm;
use softhsm::{LIBRARY, PIN, SoftHsm};

const TOKEN: &str = "fleetkey-root";

/// A fresh token, or `None` when the test is skipped.
fn fresh_token() -> Option<(SoftHsm, Pkcs11Module)> {
    let hsm = SoftHsm::new(&[TOKEN])?;
    let module = hsm.with_conf(|| {
        Pkcs11Module::open(Path::new(LIBRARY), TOKEN, &Pin::new(PIN), "governed-fleet").unwrap()
    });
    Some((hsm, module))
}

fn verifies(public: &[u8; 32], message: &[u8], signature: &[u8; 64]) -> bool {
    VerifyingKey::from_bytes(public)
        .unwrap()
        .verify_strict(message, &Signature::from_bytes(signature))
        .is_ok()
}

#[test]
fn root_shares_restore_into_a_token_and_a_rotation_destroys_the_old_root() {
    let Some((_dir, token)) = fresh_token() else {
        return;
    };
    let custodians: Vec<String> = ["alice", "bob", "carol"].map(String::from).to_vec();
    let seed = SigningSeed::random().unwrap();
    let public = seed.public_key();
    let shares = backup::split_root(&seed, "governed-fleet", 1, 2, &custodians, 0).unwrap();
    drop(seed);

    // Too few shares, or another root's, leave the token untouched.
    assert!(restore::restore_root_into(&token, &shares[..1], Some(&public)).is_err());
    assert!(matches!(
        restore::restore_root_into(&token, &shares[1..], Some(&[9; 32])),
        Err(Error::Backup(backup::BackupError::RootMismatch { .. }))
    ));
    assert_eq!(token.signing_public_key().unwrap(), None);
    assert_eq!(token.root_object_count(false).unwrap(), 0);

    let report = restore::restore_root_into(&token, &shares[1..], Some(&public)).unwrap();
    assert_eq!(report.module, "pkcs11");
    assert_eq!(token.signing_public_key().unwrap(), Some(public));
    let signature = token.sign(b"generation record").unwrap();
    assert!(verifies(&public, b"generation record", &signature));

    // Imported as masters are: sensitive, never extractable, for signing only.
    let attributes = token
        .root_attributes(
            false,
            &[
                AttributeType::KeyType,
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::NeverExtractable,
                AttributeType::Sign,
                AttributeType::Decrypt,
                AttributeType::Unwrap,
                AttributeType::Derive,
                AttributeType::Token,
                AttributeType::Private,
            ],
        )
        .unwrap();
    for attribute in &attributes {
        match attribute {
            Attribute::KeyType(t) => assert_eq!(*t, KeyType::EC_EDWARDS),
            Attribute::Sensitive(v)
            | Attribute::Sign(v)
            | Attribute::Token(v)
            | Attribute::Private(v) => {
                assert!(*v, "{attribute:?}");
            }
            Attribute::Extractable(v)
            | Attribute::Decrypt(v)
            | Attribute::Unwrap(v)
            | Attribute::Derive(v) => assert!(!*v, "{attribute:?}"),
            // Imported: it was outside the token once, which PKCS#11 says so.
            Attribute::NeverExtractable(v) => assert!(!*v, "{attribute:?}"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(attributes.len(), 10);
    // A second root cannot be imported over it.
    assert!(matches!(
        restore::restore_root_into(&token, &shares[..2], Some(&public)),
        Err(Error::Module(ModuleError::SigningKeyExists))
    ));

    // Rotation: the next root is staged (generated in the token), the old one signs the
    // handover, promoting destroys the old root's two objects.
    let next = token.stage_signing_key(None).unwrap();
    assert_eq!(token.root_object_count(true).unwrap(), 2);
    let handover = token.sign(b"handover").unwrap();
    assert!(verifies(&public, b"handover", &handover));
    assert_eq!(token.promote_signing_key().unwrap(), next);
    assert_eq!(token.root_object_count(false).unwrap(), 2);
    assert_eq!(token.root_object_count(true).unwrap(), 0);
    assert_eq!(token.signing_public_key().unwrap(), Some(next));
    let record = token.sign(b"record").unwrap();
    assert!(verifies(&next, b"record", &record));
    assert!(!verifies(&public, b"record", &record));
    assert!(matches!(
        token.root_attributes(true, &[AttributeType::Sign]),
        Err(ModuleError::NoSigningKey)
    ));
}
