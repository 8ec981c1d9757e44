//! The PKCS#11 key module against SoftHSM2: the KeyModule conformance suite, unchanged, then
//! what only a token has (object attributes, PIN, token label, faults, RFC 5649 compatibility).
//!
//! One SoftHSM2 token directory per test process, in a temporary directory with its own
//! `SOFTHSM2_CONF` (read once, at the process's one `C_Initialize`); every module the suite
//! makes is a fresh namespace on one token. Needs the Debian package `softhsm2`; without it the
//! tests fail saying so, unless `FLEETKEY_SKIP_PKCS11=1`.

mod conformance {
    pub(crate) mod module;
}

use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use conformance::module::ModuleFactory;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use fleetkey::ModuleError;
use fleetkey::core::MasterKey;
use fleetkey::core::derive::{self, DeviceKeyInputs, Generation, Revision, Serial, Usage};
use fleetkey::model::WrappedKey;
use fleetkey::module::KeyModule;
use fleetkey::module::pkcs11::{BackupKek, MAX_SECRET_FILE_LEN, Pin, Pkcs11Module};

/// The token every module of the suite shares.
#[path = "support/softhsm.rs"]
mod softhsm;
use softhsm::{LIBRARY, PIN, SoftHsm};

const TOKEN: &str = "fleetkey-test";
/// A token only the PIN tests log in to.
const PIN_TOKEN: &str = "fleetkey-pin";

/// The process's SoftHSM2 tokens, or `None` when the tests are skipped.
fn softhsm() -> Option<&'static SoftHsm> {
    static FIXTURE: OnceLock<Option<SoftHsm>> = OnceLock::new();
    FIXTURE.get_or_init(setup).as_ref()
}

fn setup() -> Option<SoftHsm> {
    let hsm = SoftHsm::new(&[TOKEN, PIN_TOKEN])?;
    // SoftHSM reads SOFTHSM2_CONF in C_Initialize, which the first open does, once per process.
    hsm.with_conf(|| {
        drop(Pkcs11Module::open(Path::new(LIBRARY), TOKEN, &Pin::new(PIN), "setup").unwrap());
    });
    Some(hsm)
}

/// A module on the shared token in a namespace of its own.
fn module(namespace: &str) -> Pkcs11Module {
    Pkcs11Module::open(Path::new(LIBRARY), TOKEN, &Pin::new(PIN), namespace).unwrap()
}

fn unique(prefix: &str) -> String {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}-{}", COUNT.fetch_add(1, Ordering::Relaxed))
}

/// The tests of this process take the token one at a time: SoftHSM 2.6.1 now and then fails
/// object creation (`CKR_GENERAL_ERROR`, `CKR_TEMPLATE_INCONSISTENT`) while several threads of
/// one process create and destroy objects at once. The module's own concurrency is tested on
/// purpose inside single tests (two-thread bulk, deriving while another thread changes it).
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A module in a new namespace per `fresh()`; when skipped, every check is skipped too. Holds
/// the process's token lock for the whole check.
struct Pkcs11Factory {
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

impl ModuleFactory for Pkcs11Factory {
    fn fresh(&self) -> Box<dyn KeyModule> {
        Box::new(module(&unique("conformance")))
    }
}

/// The suite's checks call the factory first: skipping happens there, in the fixture.
fn factory() -> Option<Pkcs11Factory> {
    softhsm().map(|_| Pkcs11Factory {
        _one_at_a_time: one_at_a_time(),
    })
}

// The suite as the soft module runs it; without SoftHSM2 (and FLEETKEY_SKIP_PKCS11=1) the
// factory expression returns from each test before the check.
module_conformance!(match factory() {
    Some(factory) => factory,
    None => return,
});

// ---------------------------------------------------------------------------------------------
// Helpers

fn master(byte: u8) -> MasterKey {
    MasterKey::from_bytes(core::array::from_fn(|i| byte.wrapping_add(i as u8)))
}

fn inputs(usage: Usage, generation: u32, revision: u32, serial: &[u8]) -> DeviceKeyInputs<'_> {
    DeviceKeyInputs {
        usage,
        generation: Generation(generation),
        revision: Revision::new(revision).unwrap(),
        serial: Serial::new(serial).unwrap(),
    }
}

/// A raw session on the shared token (the process is logged in through the modules).
fn raw_session(keep: &Pkcs11Module) -> cryptoki::session::Session {
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
        .find(|s| pkcs11.get_token_info(*s).unwrap().label() == keep.token_label())
        .unwrap();
    pkcs11.open_rw_session(slot).unwrap()
}

// ---------------------------------------------------------------------------------------------
// RFC 5649 compatibility with the soft module

#[test]
fn kwp_blobs_match_the_soft_module_under_the_same_kek() {
    if softhsm().is_none() {
        return;
    }
    let _one_at_a_time = one_at_a_time();
    let namespace = unique("kwp");
    let module = module(&namespace);
    // Plant the KEK 00..1f the soft module's test uses, labelled as the module's KEK.
    let session = raw_session(&module);
    let label = format!("fleetkey:{namespace}:kek").into_bytes();
    session
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Wrap(true),
            Attribute::Unwrap(true),
            Attribute::Encrypt(true),
            Attribute::Label(label.clone()),
            Attribute::Id(label),
            Attribute::Value((0u8..32).collect()),
        ])
        .unwrap();
    // The soft module's expected blobs (tests/module_soft.rs, from Python cryptography 48).
    for (len, expected) in [
        (1, "3ad675bda0a25e80cca484a512d7a9b2"),
        (16, "1ee4f55c5c7d3fb0a00f9a6f6cb44ac4aa56f26208ae32f1"),
        (
            20,
            "20966d139876afd74f1ddc9d3bda9a62fbea1781d7555f278c3342198d658f8d",
        ),
        (
            32,
            "0b0607b05fd577de7c1cefae2313277d0d36fcb4b3f04f1332c5023c0388e342164f8531741a21ae",
        ),
        (
            40,
            "6038e6f57dff4621042b0b33e42e57ba330514ac8014fa622fbe801918edd6cc\
             fedb6eae698532982479d8b064bb78ba",
        ),
    ] {
        let key: Vec<u8> = (0..len).map(|i| 0x80u8.wrapping_add(i as u8)).collect();
        assert_eq!(
            hex::encode(module.wrap(&key).unwrap().0),
            expected,
            "{len} bytes"
        );
        assert_eq!(
            *module
                .unwrap(&WrappedKey(hex::decode(expected).unwrap()))
                .unwrap(),
            key,
            "{len} bytes"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// What only a token has

#[test]
fn master_objects_are_sensitive_unextractable_sign_only() {
    if softhsm().is_none() {
        return;
    }
    let _one_at_a_time = one_at_a_time();
    let module = module(&unique("attributes"));
    module.create_master(Generation(1)).unwrap();
    module.import_master(Generation(2), &master(2)).unwrap();
    for generation in [1, 2] {
        let attributes = module
            .master_attributes(
                Generation(generation),
                &[
                    AttributeType::Class,
                    AttributeType::KeyType,
                    AttributeType::Token,
                    AttributeType::Private,
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::Sign,
                    AttributeType::Verify,
                    AttributeType::Encrypt,
                    AttributeType::Decrypt,
                    AttributeType::Wrap,
                    AttributeType::Unwrap,
                    AttributeType::Derive,
                    AttributeType::Label,
                    AttributeType::Value,
                ],
            )
            .unwrap();
        let reported = format!("{attributes:?}");
        for expected in [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Verify(false),
            Attribute::Encrypt(false),
            Attribute::Decrypt(false),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
            Attribute::Label(module.master_label(Generation(generation)).into_bytes()),
        ] {
            assert!(
                attributes.contains(&expected),
                "generation {generation}: {expected:?} not in {reported}"
            );
        }
        // A sensitive value is not reported (SoftHSM leaves it out of the list).
        assert!(
            !attributes.iter().any(|a| matches!(a, Attribute::Value(_))),
            "the token gave out a master's value"
        );
    }
}

#[test]
fn wrong_pin_is_authentication() {
    if softhsm().is_none() {
        return;
    }
    let _one_at_a_time = one_at_a_time();
    let library = Path::new(LIBRARY);
    for wrong in ["000000", "", "1234567"] {
        let err = Pkcs11Module::open(library, PIN_TOKEN, &Pin::new(wrong), "pin").unwrap_err();
        assert!(
            matches!(err, ModuleError::Authentication),
            "{wrong:?}: {err:?}"
        );
    }
    let right = Pkcs11Module::open(library, PIN_TOKEN, &Pin::new(PIN), "pin").unwrap();
    assert_eq!(right.masters().unwrap(), vec![]);
    // While the token is open in this process, another PIN is refused all the same.
    let err = Pkcs11Module::open(library, PIN_TOKEN, &Pin::new("000000"), "pin").unwrap_err();
    assert!(matches!(err, ModuleError::Authentication), "{err:?}");
    // The PIN never shows.
    assert!(!format!("{right:?}").contains(PIN));
}

#[test]
fn pin_comes_from_a_file_not_argv() {
    if softhsm().is_none() {
        return;
    }
    let _one_at_a_time = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pin");
    std::fs::write(&file, format!("{PIN}\n")).unwrap();
    let pin = Pin::from_file_or_env(Some(&file)).unwrap();
    let module = Pkcs11Module::open(Path::new(LIBRARY), TOKEN, &pin, &unique("pinfile")).unwrap();
    module.ensure_kek().unwrap();
    let missing = Pin::from_file(&dir.path().join("nope")).unwrap_err();
    assert!(missing.to_string().contains("nope"), "{missing}");
}

#[test]
fn missing_token_names_the_label_and_the_labels_present() {
    if softhsm().is_none() {
        return;
    }
    let _one_at_a_time = one_at_a_time();
    let err =
        Pkcs11Module::open(Path::new(LIBRARY), "no-such-token", &Pin::new(PIN), "x").unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ModuleError::Backend { .. }), "{err:?}");
    for needle in ["\"no-such-token\"", "\"fleetkey-test\"", "\"fleetkey-pin\""] {
        assert!(text.contains(needle), "{text} does not name {needle}");
    }
    let err = Pkcs11Module::open(
        Path::new("/nonexistent/libpkcs11.so"),
        TOKEN,
        &Pin::new(PIN),
        "x",
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/libpkcs11.so"),
        "{err}"
    );
}

#[test]
fn object_removed_behind_the_modules_back_is_no_master() {
    if softhsm().is_none() {
        return;
    }
    let _one_at_a_time = one_at_a_time();
    let module = module(&unique("removed"));
    module.import_master(Generation(4), &master(4)).unwrap();
    let case = inputs(Usage::Auth, 4, 0, b"ECU-4");
    module.derive(&case).unwrap();
    let session = raw_session(&module);
    for handle in session
        .find_objects(&[Attribute::Label(
            module.master_label(Generation(4)).into_bytes(),
        )])
        .unwrap()
    {
        session.destroy_object(handle).unwrap();
    }
    assert!(matches!(
        module.derive(&case),
        Err(ModuleError::NoMaster(4))
    ));
    assert_eq!(module.masters().unwrap(), vec![]);
    assert!(matches!(
        module.destroy_master(Generation(4)),
        Err(ModuleError::NoMaster(4))
    ));
}

#[test]
fn two_fleets_share_a_token() {
    if softhsm().is_none() {
        return;
    }
    let _one_at_a_time = one_at_a_time();
    let (a, b) = (module(&unique("fleet-a")), module(&unique("fleet-b")));
    a.import_master(Generation(1), &master(0xa0)).unwrap();
    b.import_master(Generation(1), &master(0xb0)).unwrap();
    b.import_master(Generation(2), &master(0xb2)).unwrap();
    assert_eq!(a.masters().unwrap(), vec![Generation(1)]);
    assert_eq!(b.masters().unwrap(), vec![Generation(1), Generation(2)]);
    let case = inputs(Usage::RollSeed, 1, 3, b"ECU");
    assert_eq!(
        a.derive(&case).unwrap().expose_secret(),
        derive::derive(&master(0xa0), &case).expose_secret()
    );
    a.destroy_master(Generation(1)).unwrap();
    assert_eq!(
        b.derive(&case).unwrap().expose_secret(),
        derive::derive(&master(0xb0), &case).expose_secret()
    );
}

#[test]
fn bulk_derivation_from_two_threads() {
    if softhsm().is_none() {
        return;
    }
    let _one_at_a_time = one_at_a_time();
    let module = module(&unique("bulk-threads"));
    module.import_master(Generation(7), &master(7)).unwrap();
    let serials: Vec<Vec<u8>> = (0..2000)
        .map(|i| format!("SN-{i:06}").into_bytes())
        .collect();
    std::thread::scope(|s| {
        for half in serials.chunks(1000) {
            let module = &module;
            s.spawn(move || {
                let mut bulk = module.bulk_deriver(Generation(7)).unwrap();
                for serial in half {
                    for usage in Usage::ALL {
                        let case = inputs(usage, 7, 1, serial);
                        let mut out = vec![0u8; usage.key_len()];
                        bulk.derive_into(&case, &mut out).unwrap();
                        assert_eq!(out, derive::derive(&master(7), &case).expose_secret());
                    }
                }
            });
        }
    });
}

#[test]
fn master_destroyed_mid_batch_is_a_clear_error_and_a_rerun_completes() {
    if softhsm().is_none() {
        return;
    }
    let _one_at_a_time = one_at_a_time();
    let module = module(&unique("mid-batch"));
    module.import_master(Generation(1), &master(1)).unwrap();
    let serials: Vec<Vec<u8>> = (0..20_000)
        .map(|i| format!("SN-{i:06}").into_bytes())
        .collect();
    let run = |stop_after: Option<usize>| -> (usize, Option<ModuleError>) {
        let started = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            let worker = s.spawn(|| {
                let mut bulk = module.bulk_deriver(Generation(1)).unwrap();
                let mut done = 0;
                for (i, serial) in serials.iter().enumerate() {
                    if i == 100 && stop_after.is_some() {
                        started.wait();
                    }
                    let case = inputs(Usage::Auth, 1, 0, serial);
                    let mut out = [0u8; 16];
                    if let Err(e) = bulk.derive_into(&case, &mut out) {
                        assert_eq!(out, [0u8; 16], "a failed derivation wrote output");
                        return (done, Some(e));
                    }
                    done += 1;
                }
                (done, None)
            });
            if stop_after.is_some() {
                started.wait();
                module.destroy_master(Generation(1)).unwrap();
            }
            worker.join().unwrap()
        })
    };
    let (done, err) = run(Some(100));
    let err = err.expect("the batch went on after its master was destroyed");
    assert!(matches!(err, ModuleError::NoMaster(1)), "{err:?}");
    assert!((100..serials.len()).contains(&done), "{done}");
    assert!(err.to_string().contains("generation 1"), "{err}");
    // The master restored (from its backup), the whole batch runs again.
    module.import_master(Generation(1), &master(1)).unwrap();
    let (done, err) = run(None);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(done, serials.len());
}

#[test]
fn pin_and_kek_files_that_are_not_are_refused_by_name() {
    // No token needed: the files are read before any library is loaded.
    let dir = tempfile::tempdir().unwrap();
    let long = vec![b'1'; MAX_SECRET_FILE_LEN + 1];
    for (bytes, problem) in [
        (&b"\xff\xfe1234\n"[..], "not UTF-8 text"),
        (&long[..], "longer than 1024 bytes"),
        (&b""[..], "empty first line"),
        (&b"\n1234\n"[..], "empty first line"),
    ] {
        let file = dir.path().join("secret");
        std::fs::write(&file, bytes).unwrap();
        for err in [
            Pin::from_file(&file).err().unwrap(),
            BackupKek::from_file(&file).err().unwrap(),
        ] {
            assert!(
                matches!(&err, ModuleError::SecretFile { problem: p, .. } if *p == problem),
                "{err:?}"
            );
            assert!(err.to_string().contains("secret"), "{err}");
        }
    }
    // At the limit is read.
    let mut pin = vec![b'1'; MAX_SECRET_FILE_LEN - 1];
    pin.push(b'\n');
    std::fs::write(dir.path().join("pin"), &pin).unwrap();
    assert!(Pin::from_file(&dir.path().join("pin")).is_ok());
}
