//! Token-to-token backup against SoftHSM2: two tokens (A and B) in one token directory of this
//! process, the same backup KEK imported into both by the security officer (`CKA_TRUSTED`), a
//! master exported wrapped from A and imported into B, and what the tokens refuse.
//!
//! The SO's login is the whole process's on a token, so the tests run one at a time (`SERIAL`).
//! Needs the Debian package `softhsm2`; without it the tests fail saying so, unless
//! `FLEETKEY_SKIP_PKCS11=1`.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use fleetkey::ModuleError;
use fleetkey::core::derive::{DeviceKeyInputs, Generation, Revision, Serial, Usage};
use fleetkey::module::KeyModule;
use fleetkey::module::pkcs11::{
    BACKUP_KEK_GENERATION, BackupKek, Pin, Pkcs11Module, Pkcs11Options, WRAPPED_MASTER_LEN,
};

#[path = "support/softhsm.rs"]
mod softhsm;
use softhsm::{LIBRARY, PIN, SO_PIN, SoftHsm};

const TOKEN_A: &str = "fleetkey-backup-a";
const TOKEN_B: &str = "fleetkey-backup-b";

const BACKUP: Pkcs11Options = Pkcs11Options {
    backup_by_trusted_wrap: true,
};

fn softhsm() -> Option<&'static SoftHsm> {
    static FIXTURE: OnceLock<Option<SoftHsm>> = OnceLock::new();
    FIXTURE.get_or_init(setup).as_ref()
}

/// One test at a time: a security officer's login is the process's, on the whole token.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

fn setup() -> Option<SoftHsm> {
    let hsm = SoftHsm::new(&[TOKEN_A, TOKEN_B])?;
    // SoftHSM reads SOFTHSM2_CONF in C_Initialize, which the first open does, once per process.
    hsm.with_conf(|| {
        drop(Pkcs11Module::open(Path::new(LIBRARY), TOKEN_A, &Pin::new(PIN), "setup").unwrap());
    });
    Some(hsm)
}

fn unique(prefix: &str) -> String {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}-{}", COUNT.fetch_add(1, Ordering::Relaxed))
}

fn open(token: &str, fleet: &str, options: Pkcs11Options) -> Pkcs11Module {
    Pkcs11Module::open(Path::new(LIBRARY), token, &Pin::new(PIN), fleet)
        .unwrap()
        .with_options(options)
}

fn kek(byte: u8) -> BackupKek {
    BackupKek::from_bytes(core::array::from_fn(|i| byte ^ (i as u8)))
}

fn so_pin() -> Pin {
    Pin::new(SO_PIN)
}

fn inputs(usage: Usage, generation: u32, serial: &[u8]) -> DeviceKeyInputs<'_> {
    DeviceKeyInputs {
        usage,
        generation: Generation(generation),
        revision: Revision::new(0).unwrap(),
        serial: Serial::new(serial).unwrap(),
    }
}

fn attribute_bools(module: &Pkcs11Module, generation: u32) -> Vec<Attribute> {
    module
        .master_attributes(
            Generation(generation),
            &[
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::WrapWithTrusted,
                AttributeType::Sign,
                AttributeType::Wrap,
                AttributeType::Derive,
            ],
        )
        .unwrap()
}

#[test]
fn master_wrapped_in_a_and_unwrapped_in_b_derives_the_same_keys() {
    let Some(_hsm) = softhsm() else { return };
    let _serial = serial();
    let fleet = unique("roundtrip");
    let a = open(TOKEN_A, &fleet, BACKUP);
    let b = open(TOKEN_B, &fleet, BACKUP);
    let shared = kek(0x5a);
    a.import_backup_kek(&shared, &so_pin()).unwrap();
    b.import_backup_kek(&shared, &so_pin()).unwrap();
    assert!(a.has_backup_kek().unwrap() && b.has_backup_kek().unwrap());
    // The user is logged back in after the SO: a master can be made and used at once.
    a.create_master(Generation(3)).unwrap();

    let blob = a.export_master_wrapped(Generation(3)).unwrap();
    assert_eq!(blob.len(), WRAPPED_MASTER_LEN);
    b.import_master_wrapped(Generation(3), &blob).unwrap();
    assert_eq!(b.masters().unwrap(), vec![Generation(3)]);

    for usage in Usage::ALL {
        for serial in [&b"\x01"[..], b"ECU-0042", &[0xff; 16]] {
            let input = inputs(usage, 3, serial);
            let from_a = a.derive(&input).unwrap();
            let from_b = b.derive(&input).unwrap();
            assert_eq!(
                from_a.expose_secret(),
                from_b.expose_secret(),
                "{usage:?} {serial:02x?}"
            );
        }
    }
    // The imported master has a created one's attributes: still exportable only by trusted wrap.
    assert_eq!(attribute_bools(&a, 3), attribute_bools(&b, 3));
    assert_eq!(
        attribute_bools(&b, 3),
        vec![
            Attribute::Sensitive(true),
            Attribute::Extractable(true),
            Attribute::WrapWithTrusted(true),
            Attribute::Sign(true),
            Attribute::Wrap(false),
            Attribute::Derive(false),
        ]
    );
    // B can pass it on again (to a third token, here back to A under another generation).
    let again = b.export_master_wrapped(Generation(3)).unwrap();
    a.import_master_wrapped(Generation(4), &again).unwrap();
    assert_eq!(a.masters().unwrap(), vec![Generation(3), Generation(4)]);
    // An existing generation is never overwritten.
    assert!(matches!(
        a.import_master_wrapped(Generation(3), &again),
        Err(ModuleError::MasterExists(3))
    ));
}

#[test]
fn a_master_created_without_the_option_cannot_be_exported() {
    let Some(_hsm) = softhsm() else { return };
    let _serial = serial();
    let fleet = unique("no-backup");
    let a = open(TOKEN_A, &fleet, Pkcs11Options::default());
    a.import_backup_kek(&kek(1), &so_pin()).unwrap();
    a.create_master(Generation(1)).unwrap();
    let error = a.export_master_wrapped(Generation(1)).unwrap_err();
    assert!(
        matches!(error, ModuleError::Unsupported(what) if what.contains("CKR_KEY_UNEXTRACTABLE")),
        "{error:?}"
    );
    assert_eq!(
        a.master_attributes(Generation(1), &[AttributeType::Extractable])
            .unwrap(),
        vec![Attribute::Extractable(false)]
    );
}

#[test]
fn a_blob_tampered_by_one_byte_is_refused_and_nothing_is_created() {
    let Some(_hsm) = softhsm() else { return };
    let _serial = serial();
    let fleet = unique("tamper");
    let a = open(TOKEN_A, &fleet, BACKUP);
    let b = open(TOKEN_B, &fleet, BACKUP);
    a.import_backup_kek(&kek(2), &so_pin()).unwrap();
    b.import_backup_kek(&kek(2), &so_pin()).unwrap();
    a.create_master(Generation(1)).unwrap();
    let blob = a.export_master_wrapped(Generation(1)).unwrap();
    for position in [0, 7, 8, 20, WRAPPED_MASTER_LEN - 1] {
        let mut tampered = blob.clone();
        tampered[position] ^= 0x01;
        let error = b
            .import_master_wrapped(Generation(1), &tampered)
            .unwrap_err();
        assert!(
            matches!(error, ModuleError::Unwrap),
            "byte {position}: {error:?}"
        );
    }
    assert!(matches!(
        b.import_master_wrapped(Generation(1), &blob[..32]),
        Err(ModuleError::Unwrap)
    ));
    assert!(b.masters().unwrap().is_empty());
    // Under another KEK the intact blob fails the same way.
    let other = open(TOKEN_B, &unique("tamper-other"), BACKUP);
    other.import_backup_kek(&kek(3), &so_pin()).unwrap();
    assert!(matches!(
        other.import_master_wrapped(Generation(1), &blob),
        Err(ModuleError::Unwrap)
    ));
    b.import_master_wrapped(Generation(1), &blob).unwrap();
}

#[test]
fn an_untrusted_kek_cannot_wrap_the_master() {
    let Some(_hsm) = softhsm() else { return };
    let _serial = serial();
    let fleet = unique("untrusted");
    let a = open(TOKEN_A, &fleet, BACKUP);
    a.create_master(Generation(1)).unwrap();
    // The user makes an AES key with the backup KEK's label, wrap allowed but not trusted.
    let session = raw_session(TOKEN_A);
    let label = a.backup_kek_label().into_bytes();
    session
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Wrap(true),
            Attribute::Unwrap(true),
            Attribute::Label(label.clone()),
            Attribute::Id(label),
            Attribute::Value(vec![7; 32]),
        ])
        .unwrap();
    let error = a.export_master_wrapped(Generation(1)).unwrap_err();
    assert!(
        matches!(&error, ModuleError::Backend { operation: "C_WrapKey", detail }
            if detail.contains("CKR_KEY_NOT_WRAPPABLE")),
        "{error:?}"
    );
    // And the user cannot mark it trusted: only the security officer can.
    let handle = session
        .find_objects(&[Attribute::Label(a.backup_kek_label().into_bytes())])
        .unwrap()[0];
    session
        .update_attributes(handle, &[Attribute::Trusted(true)])
        .unwrap_err();
    a.destroy_backup_kek().unwrap();
    assert!(!a.has_backup_kek().unwrap());
}

#[test]
fn a_wrong_so_pin_is_authentication_and_the_user_stays_logged_in() {
    let Some(_hsm) = softhsm() else { return };
    let _serial = serial();
    let fleet = unique("so-pin");
    let a = open(TOKEN_A, &fleet, BACKUP);
    let error = a
        .import_backup_kek(&kek(4), &Pin::new("87654321"))
        .unwrap_err();
    assert!(matches!(error, ModuleError::Authentication), "{error:?}");
    assert!(!a.has_backup_kek().unwrap());
    a.create_master(Generation(1)).unwrap();
    a.derive(&inputs(Usage::Auth, 1, b"x")).unwrap();
    // A second import is refused rather than replacing the KEK.
    a.import_backup_kek(&kek(4), &so_pin()).unwrap();
    assert!(a.import_backup_kek(&kek(5), &so_pin()).is_err());
}

#[test]
fn the_backup_kek_splits_into_custodian_shares_and_back() {
    let custodians: Vec<String> = ["alice", "bob", "carol"].map(String::from).to_vec();
    let original = kek(9);
    let shares = original.split("fleet-1", 2, &custodians, 0).unwrap();
    assert!(
        shares
            .iter()
            .all(|s| s.info().generation == BACKUP_KEK_GENERATION)
    );
    let restored = BackupKek::from_shares("fleet-1", &shares[1..]).unwrap();
    assert_eq!(format!("{restored:?}"), format!("{original:?}"));
    assert!(shares.iter().all(|s| s.info().master_kcv == original.kcv()));
    assert!(BackupKek::from_shares("fleet-2", &shares[1..]).is_err());
    assert!(BackupKek::from_shares("fleet-1", &shares[..1]).is_err());
}

/// A raw user session on a token (the process is logged in through the modules).
fn raw_session(label: &str) -> cryptoki::session::Session {
    let pkcs11 = Pkcs11::new(LIBRARY).unwrap();
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(())
        | Err(cryptoki::error::Error::Pkcs11(
            cryptoki::error::RvError::CryptokiAlreadyInitialized,
            _,
        )) => {}
        Err(e) => panic!("{e}"),
    }
    let slot = pkcs11
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| pkcs11.get_token_info(*s).unwrap().label() == label)
        .unwrap();
    pkcs11.open_rw_session(slot).unwrap()
}
