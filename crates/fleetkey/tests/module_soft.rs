//! The software key module: the KeyModule conformance suite, then what only a key file has
//! (persistence, the passphrase, the age format, wiping, crash recovery, work factor).

mod conformance {
    pub(crate) mod module;
}

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use age::secrecy::SecretString;
use conformance::module::ModuleFactory;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use fleetkey::ModuleError;
use fleetkey::core::MasterKey;
use fleetkey::core::derive::{self, DeviceKeyInputs, Generation, Revision, Serial, Usage};
use fleetkey::model::WrappedKey;
use fleetkey::module::KeyModule;
use fleetkey::module::soft::{SoftModule, WorkFactor};
use sha2::{Digest, Sha256};

/// The scrypt work factor of test key files: 2^10 takes milliseconds, age's default about a
/// second. Never use a factor this low for a real fleet.
const TEST_WORK_FACTOR: u8 = 10;

const PASSPHRASE: &str = "correct horse battery staple";

/// A new soft module per `fresh()`, each in its own file of one temporary directory.
struct SoftFactory {
    dir: tempfile::TempDir,
    count: AtomicUsize,
}

impl SoftFactory {
    fn new() -> Self {
        SoftFactory {
            dir: tempfile::tempdir().unwrap(),
            count: AtomicUsize::new(0),
        }
    }
}

impl ModuleFactory for SoftFactory {
    fn fresh(&self) -> Box<dyn KeyModule> {
        let n = self.count.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.path().join(format!("keys-{n}.age"));
        Box::new(
            SoftModule::create_with(path, PASSPHRASE, WorkFactor::Log2(TEST_WORK_FACTOR)).unwrap(),
        )
    }
}

module_conformance!(SoftFactory::new());

// ---------------------------------------------------------------------------------------------
// Helpers

struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Self {
        Home {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("keys.age")
    }

    fn sibling(&self, suffix: &str) -> PathBuf {
        self.dir.path().join(format!("keys.age{suffix}"))
    }

    fn create(&self) -> SoftModule {
        SoftModule::create_with(self.path(), PASSPHRASE, WorkFactor::Log2(TEST_WORK_FACTOR))
            .unwrap()
    }

    fn open(&self) -> Result<SoftModule, ModuleError> {
        SoftModule::open(self.path(), PASSPHRASE)
    }

    /// The names of the files in the directory, sorted.
    fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    /// Decrypts the key file with the `age` crate directly.
    fn plaintext(&self) -> serde_json::Value {
        decrypt(&self.path(), PASSPHRASE)
    }

    /// Writes a key file from a plaintext document, as another age implementation would.
    fn write_plaintext(&self, json: &str) {
        let mut recipient = age::scrypt::Recipient::new(SecretString::from(PASSPHRASE));
        recipient.set_work_factor(TEST_WORK_FACTOR);
        fs::write(
            self.path(),
            age::encrypt(&recipient, json.as_bytes()).unwrap(),
        )
        .unwrap();
    }
}

fn decrypt(path: &Path, passphrase: &str) -> serde_json::Value {
    let identity = age::scrypt::Identity::new(SecretString::from(passphrase));
    let plaintext = age::decrypt(&identity, &fs::read(path).unwrap()).unwrap();
    serde_json::from_slice(&plaintext).unwrap()
}

fn sha256(path: &Path) -> [u8; 32] {
    Sha256::digest(fs::read(path).unwrap()).into()
}

fn master(byte: u8) -> MasterKey {
    MasterKey::from_bytes([byte; 32])
}

fn inputs(usage: Usage, generation: u32, serial: &[u8]) -> DeviceKeyInputs<'_> {
    DeviceKeyInputs {
        usage,
        generation: Generation(generation),
        revision: Revision::ZERO,
        serial: Serial::new(serial).unwrap(),
    }
}

fn key_of(module: &SoftModule, generation: u32) -> Vec<u8> {
    module
        .derive(&inputs(Usage::RollSeed, generation, b"ECU"))
        .unwrap()
        .expose_secret()
        .to_vec()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// Persistence and the passphrase

#[test]
fn reopen_sees_the_same_module() {
    let home = Home::new();
    let module = home.create();
    module.import_master(Generation(1), &master(0x11)).unwrap();
    module.create_master(Generation(2)).unwrap();
    module.ensure_kek().unwrap();
    let wrapped = module.wrap(&[0x42; 32]).unwrap();
    let public = module.ensure_signing_key().unwrap();
    let created_key = key_of(&module, 2);
    drop(module);

    let module = home.open().unwrap();
    assert_eq!(
        module.masters().unwrap(),
        vec![Generation(1), Generation(2)]
    );
    assert_eq!(
        key_of(&module, 1),
        derive::derive(&master(0x11), &inputs(Usage::RollSeed, 1, b"ECU")).expose_secret()
    );
    assert_eq!(key_of(&module, 2), created_key);
    assert_eq!(*module.unwrap(&wrapped).unwrap(), vec![0x42; 32]);
    assert_eq!(module.signing_public_key().unwrap(), Some(public));
    assert_eq!(module.ensure_signing_key().unwrap(), public);

    module.destroy_master(Generation(1)).unwrap();
    drop(module);
    assert_eq!(home.open().unwrap().masters().unwrap(), vec![Generation(2)]);
}

#[test]
fn wrong_passphrase_is_authentication_and_changes_nothing() {
    let home = Home::new();
    home.create()
        .import_master(Generation(1), &master(1))
        .unwrap();
    let before = sha256(&home.path());
    let files = home.files();
    for wrong in [
        "",
        "correct horse battery stapl",
        "Correct horse battery staple",
    ] {
        let err = SoftModule::open(home.path(), wrong).unwrap_err();
        assert!(matches!(err, ModuleError::Authentication), "{err:?}");
        assert!(!err.to_string().contains(PASSPHRASE) && !format!("{err:?}").contains(PASSPHRASE));
    }
    assert_eq!(sha256(&home.path()), before);
    assert_eq!(home.files(), files);
    assert_eq!(home.open().unwrap().masters().unwrap(), vec![Generation(1)]);
}

#[test]
fn missing_key_file_is_io_naming_the_path() {
    let home = Home::new();
    match home.open() {
        Err(ModuleError::Io { path, source }) => {
            assert_eq!(path, home.path());
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        home.files().is_empty(),
        "opening a missing file creates nothing"
    );
    let missing_dir = home.dir.path().join("no-such-dir").join("keys.age");
    assert!(matches!(
        SoftModule::open(&missing_dir, PASSPHRASE),
        Err(ModuleError::Io { .. })
    ));
    let err = SoftModule::create_with(&missing_dir, PASSPHRASE, WorkFactor::Log2(TEST_WORK_FACTOR))
        .unwrap_err();
    assert!(matches!(err, ModuleError::Io { .. }), "{err:?}");
}

#[test]
fn create_refuses_an_existing_file() {
    let home = Home::new();
    home.create()
        .import_master(Generation(1), &master(1))
        .unwrap();
    let before = sha256(&home.path());
    match SoftModule::create_with(home.path(), PASSPHRASE, WorkFactor::Log2(TEST_WORK_FACTOR)) {
        Err(ModuleError::Io { path, source }) => {
            assert_eq!(path, home.path());
            assert_eq!(source.kind(), std::io::ErrorKind::AlreadyExists);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sha256(&home.path()), before);
}

#[test]
fn damaged_key_file_is_corrupt() {
    let home = Home::new();
    home.create()
        .import_master(Generation(1), &master(1))
        .unwrap();
    let good = fs::read(home.path()).unwrap();
    let header_end = good.windows(4).position(|w| w == b"\n---").unwrap();
    let mac_end = header_end
        + good[header_end + 1..]
            .iter()
            .position(|b| *b == b'\n')
            .unwrap()
        + 1;

    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("garbage", b"not an age file at all\n".to_vec()),
        ("truncated payload", good[..good.len() - 10].to_vec()),
        ("no payload", good[..mac_end + 1].to_vec()),
    ];
    let mut flipped_payload = good.clone();
    *flipped_payload.last_mut().unwrap() ^= 1;
    cases.push(("flipped payload byte", flipped_payload));
    let mut flipped_mac = good.clone();
    flipped_mac[header_end + 6] ^= 1;
    cases.push(("flipped header MAC", flipped_mac));
    let x25519 = age::x25519::Identity::generate().to_public();
    cases.push((
        "not passphrase-encrypted",
        age::encrypt(&x25519, b"{}").unwrap(),
    ));
    for (what, bytes) in cases {
        fs::write(home.path(), &bytes).unwrap();
        let err = home.open().unwrap_err();
        assert!(matches!(err, ModuleError::Corrupt(_)), "{what}: {err:?}");
    }

    // Documents that decrypt but are not key documents.
    let m = "00".repeat(32);
    for (what, json) in [
        ("not JSON", "hello".to_string()),
        ("newer version", r#"{"version":2,"masters":{}}"#.to_string()),
        (
            "unknown field",
            r#"{"version":1,"masters":{},"extra":1}"#.to_string(),
        ),
        (
            "short master",
            r#"{"version":1,"masters":{"1":"0011"}}"#.to_string(),
        ),
        (
            "non-hex master",
            format!(
                r#"{{"version":1,"masters":{{"1":"{}zz"}}}}"#,
                "00".repeat(31)
            ),
        ),
        (
            "non-canonical generation",
            format!(r#"{{"version":1,"masters":{{"01":"{m}"}}}}"#),
        ),
        (
            "negative generation",
            format!(r#"{{"version":1,"masters":{{"-1":"{m}"}}}}"#),
        ),
        (
            "duplicate generation",
            format!(r#"{{"version":1,"masters":{{"1":"{m}","1":"{m}"}}}}"#),
        ),
        (
            "short kek",
            r#"{"version":1,"masters":{},"kek":"00"}"#.to_string(),
        ),
        (
            "masters not an object",
            format!(r#"{{"version":1,"masters":"{m}"}}"#),
        ),
    ] {
        home.write_plaintext(&json);
        let err = home.open().unwrap_err();
        assert!(matches!(err, ModuleError::Corrupt(_)), "{what}: {err:?}");
        assert!(
            !err.to_string().contains(&m),
            "{what}: the error echoes key material: {err}"
        );
    }
    home.write_plaintext(&format!(r#"{{"version":1,"masters":{{"1":"{m}"}}}}"#));
    assert_eq!(home.open().unwrap().masters().unwrap(), vec![Generation(1)]);

    // A damaged scrypt stanza cannot be told from a wrong passphrase (its AEAD fails).
    let mut stanza = good.clone();
    let body = good.iter().position(|b| *b == b'\n').unwrap() + 1;
    let body = body + good[body..].iter().position(|b| *b == b'\n').unwrap() + 3;
    stanza[body] = if stanza[body] == b'A' { b'B' } else { b'A' };
    fs::write(home.path(), &stanza).unwrap();
    let err = home.open().unwrap_err();
    assert!(
        matches!(err, ModuleError::Authentication | ModuleError::Corrupt(_)),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The file format

#[test]
fn key_file_is_an_age_file_with_the_documented_json() {
    let home = Home::new();
    let module = home.create();
    assert_eq!(
        home.plaintext(),
        serde_json::json!({"version": 1, "masters": {}})
    );
    module.import_master(Generation(7), &master(0x77)).unwrap();
    module
        .import_master(Generation(300), &master(0x30))
        .unwrap();
    module.ensure_kek().unwrap();
    module.ensure_signing_key().unwrap();

    let bytes = fs::read(home.path()).unwrap();
    assert!(bytes.starts_with(b"age-encryption.org/v1\n-> scrypt "));
    assert!(!contains(&bytes, &[0x77; 32]) && !contains(&bytes, "77".repeat(32).as_bytes()));
    let doc = home.plaintext();
    let object = doc.as_object().unwrap();
    assert_eq!(
        object.keys().collect::<Vec<_>>(),
        ["kek", "masters", "signing_seed", "version"]
    );
    assert_eq!(doc["version"], 1);
    assert_eq!(
        doc["masters"],
        serde_json::json!({"7": "77".repeat(32), "300": "30".repeat(32)})
    );
    for field in ["kek", "signing_seed"] {
        let hex_text = doc[field].as_str().unwrap();
        assert_eq!(hex::decode(hex_text).unwrap().len(), 32, "{field}");
    }
    // The seed in the file is the governance root (RFC 8032 secret key).
    let seed: [u8; 32] = hex::decode(doc["signing_seed"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    assert_eq!(
        Some(SigningKey::from_bytes(&seed).verifying_key().to_bytes()),
        module.signing_public_key().unwrap()
    );
    // The written text is compact, generations ascending.
    let identity = age::scrypt::Identity::new(SecretString::from(PASSPHRASE));
    let text = String::from_utf8(age::decrypt(&identity, &bytes).unwrap()).unwrap();
    assert!(
        text.starts_with(&format!(
            r#"{{"version":1,"masters":{{"7":"{}","300":"#,
            "77".repeat(32)
        )),
        "{text}"
    );

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(home.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "key file mode {mode:o}");
    }
}

#[test]
fn key_file_from_another_age_writer_opens() {
    // RFC 8032 section 7.1 TEST 2, and a known KEK: the module uses exactly these keys.
    let home = Home::new();
    let kek = hex::encode((0u8..32).collect::<Vec<_>>());
    let seed = "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb";
    let m = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    home.write_plaintext(&format!(
        r#"{{"version":1,"masters":{{"1":"{m}"}},"kek":"{kek}","signing_seed":"{seed}"}}"#
    ));
    let module = home.open().unwrap();
    assert_eq!(module.work_factor(), TEST_WORK_FACTOR);
    assert_eq!(
        hex::encode(module.signing_public_key().unwrap().unwrap()),
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"
    );
    assert_eq!(
        hex::encode(module.sign(&[0x72]).unwrap()),
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da\
         085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
    );
    // derive-v1.json, first case.
    let key = module.derive(&inputs(Usage::Auth, 1, b"ECU-0001")).unwrap();
    assert_eq!(
        hex::encode(key.expose_secret()),
        "b74f33e48ea41214a767aabd363c25bd"
    );
    // AES-256 KWP under KEK 00..1f of the keys 80 81 82 ..., from Python cryptography 48
    // (`aes_key_wrap_with_padding`), an independent implementation of RFC 5649.
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
            key
        );
    }
}

#[test]
fn rfc8032_vectors_through_the_ed25519_library() {
    let vectors: serde_json::Value =
        serde_json::from_str(include_str!("../../../tests/vectors/rfc8032-ed25519.json")).unwrap();
    let cases = vectors["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let field = |name: &str| hex::decode(case[name].as_str().unwrap()).unwrap();
        // The calls the soft module makes: a seed becomes a SigningKey, which signs.
        let key = SigningKey::from_bytes(&field("secret_key").try_into().unwrap());
        assert_eq!(key.verifying_key().to_bytes().to_vec(), field("public_key"));
        let signature = key.sign(&field("message")).to_bytes();
        assert_eq!(signature.to_vec(), field("signature"));
        let public = VerifyingKey::from_bytes(&field("public_key").try_into().unwrap()).unwrap();
        public
            .verify_strict(&field("message"), &Signature::from_bytes(&signature))
            .unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Destruction and crash recovery

#[test]
fn destroyed_master_is_in_no_file() {
    let home = Home::new();
    let module = home.create();
    let doomed = MasterKey::from_bytes(core::array::from_fn(|i| 0xd0 ^ i as u8));
    module.import_master(Generation(3), &doomed).unwrap();
    module.import_master(Generation(4), &master(0x44)).unwrap();
    module.destroy_master(Generation(3)).unwrap();

    assert_eq!(
        home.files(),
        ["keys.age", "keys.age.lock"],
        "no aside or temporary file remains"
    );
    let raw = doomed.expose_secret();
    let hex_lower = hex::encode(raw);
    for name in home.files() {
        let bytes = fs::read(home.dir.path().join(&name)).unwrap();
        for needle in [
            &raw[..],
            hex_lower.as_bytes(),
            hex_lower.to_uppercase().as_bytes(),
        ] {
            assert!(
                !contains(&bytes, needle),
                "{name} holds the destroyed master"
            );
        }
    }
    let doc = home.plaintext();
    assert_eq!(doc["masters"], serde_json::json!({"4": "44".repeat(32)}));
    assert!(!doc.to_string().contains(&hex_lower));
    assert!(matches!(
        home.open().unwrap().derive(&inputs(Usage::Auth, 3, b"E")),
        Err(ModuleError::NoMaster(3))
    ));
}

#[test]
fn leftover_aside_file_is_wiped_on_open() {
    // A crash after the new file was put in place, before the old one was wiped.
    let home = Home::new();
    let module = home.create();
    module.import_master(Generation(1), &master(1)).unwrap();
    let old = fs::read(home.path()).unwrap();
    module.import_master(Generation(2), &master(2)).unwrap();
    drop(module);
    fs::write(home.sibling(".old"), &old).unwrap();
    // A second name for the aside file's inode shows what was written into it.
    let witness = home.dir.path().join("witness");
    fs::hard_link(home.sibling(".old"), &witness).unwrap();

    let module = home.open().unwrap();
    assert_eq!(
        module.masters().unwrap(),
        vec![Generation(1), Generation(2)]
    );
    assert!(!home.sibling(".old").exists());
    let wiped = fs::read(&witness).unwrap();
    assert_eq!(wiped.len(), old.len());
    assert!(
        wiped.iter().all(|b| *b == 0),
        "the aside file was unlinked without being overwritten"
    );
}

#[test]
fn crash_between_the_renames_is_finished_on_open() {
    // The old file renamed aside, the complete new one not yet renamed into place.
    let home = Home::new();
    let module = home.create();
    module.import_master(Generation(1), &master(1)).unwrap();
    let old = fs::read(home.path()).unwrap();
    module.import_master(Generation(2), &master(2)).unwrap();
    drop(module);
    fs::rename(home.path(), home.sibling(".tmp")).unwrap();
    fs::write(home.sibling(".old"), &old).unwrap();

    let module = home.open().unwrap();
    assert_eq!(
        module.masters().unwrap(),
        vec![Generation(1), Generation(2)]
    );
    assert_eq!(home.files(), ["keys.age", "keys.age.lock"]);
    module.destroy_master(Generation(1)).unwrap();
    assert_eq!(home.open().unwrap().masters().unwrap(), vec![Generation(2)]);
}

#[test]
fn leftover_temporary_file_is_wiped_and_the_key_file_kept() {
    // A crash while the next version was written: that change never returned.
    let home = Home::new();
    home.create()
        .import_master(Generation(1), &master(1))
        .unwrap();
    let before = sha256(&home.path());
    fs::write(home.sibling(".tmp"), b"half a new vers").unwrap();
    let witness = home.dir.path().join("witness");
    fs::hard_link(home.sibling(".tmp"), &witness).unwrap();

    assert_eq!(home.open().unwrap().masters().unwrap(), vec![Generation(1)]);
    assert_eq!(sha256(&home.path()), before);
    assert!(!home.sibling(".tmp").exists());
    assert!(fs::read(&witness).unwrap().iter().all(|b| *b == 0));
}

#[test]
fn aside_file_without_key_file_is_reported_not_guessed() {
    let home = Home::new();
    home.create()
        .import_master(Generation(1), &master(1))
        .unwrap();
    fs::rename(home.path(), home.sibling(".old")).unwrap();
    let err = home.open().unwrap_err();
    assert!(
        matches!(&err, ModuleError::Corrupt(text) if text.contains("keys.age.old")),
        "{err:?}"
    );
    assert!(
        home.sibling(".old").exists(),
        "nothing is deleted when the state is unclear"
    );
    fs::rename(home.sibling(".old"), home.path()).unwrap();
    assert_eq!(home.open().unwrap().masters().unwrap(), vec![Generation(1)]);
}

// ---------------------------------------------------------------------------------------------
// Processes, work factor, secrecy

#[test]
fn change_by_another_process_is_not_overwritten() {
    let home = Home::new();
    let first = home.create();
    let second = home.open().unwrap();
    first.import_master(Generation(1), &master(1)).unwrap();
    let err = second.import_master(Generation(2), &master(2)).unwrap_err();
    assert!(matches!(err, ModuleError::Backend { .. }), "{err:?}");
    assert_eq!(home.open().unwrap().masters().unwrap(), vec![Generation(1)]);
    // The refused change left the second handle as it was; reopened, it can change the file.
    assert_eq!(second.masters().unwrap(), vec![]);
    let second = home.open().unwrap();
    second.import_master(Generation(2), &master(2)).unwrap();
    assert_eq!(
        home.open().unwrap().masters().unwrap(),
        vec![Generation(1), Generation(2)]
    );
}

#[test]
fn work_factor_is_kept_across_reopen_and_changes() {
    let home = Home::new();
    let module = SoftModule::create_with(home.path(), PASSPHRASE, WorkFactor::Log2(9)).unwrap();
    assert_eq!(module.work_factor(), 9);
    drop(module);
    let module = home.open().unwrap();
    assert_eq!(module.work_factor(), 9);
    module.ensure_kek().unwrap();
    let header = fs::read(home.path()).unwrap();
    let stanza = header.split(|b| *b == b'\n').nth(1).unwrap();
    assert!(
        stanza.starts_with(b"-> scrypt ") && stanza.ends_with(b" 9"),
        "{}",
        String::from_utf8_lossy(stanza)
    );

    for bad in [0, 23, 64, 255] {
        let path = home.dir.path().join(format!("bad-{bad}.age"));
        let err = SoftModule::create_with(&path, PASSPHRASE, WorkFactor::Log2(bad)).unwrap_err();
        assert!(matches!(err, ModuleError::Unsupported(_)), "{bad}: {err:?}");
        assert!(!path.exists());
    }
}

#[test]
fn debug_and_errors_show_no_secrets() {
    let home = Home::new();
    let module = home.create();
    let known = master(0x5c);
    module.import_master(Generation(2), &known).unwrap();
    module.import_master(Generation(9), &master(0x9d)).unwrap();
    module.ensure_kek().unwrap();
    module.ensure_signing_key().unwrap();
    let debug = format!("{module:?}");
    assert!(
        debug.contains("keys.age") && debug.contains("[2, 9]"),
        "{debug}"
    );
    let doc = home.plaintext();
    let secrets = [
        "5c".repeat(32),
        "9d".repeat(32),
        doc["kek"].as_str().unwrap().to_owned(),
        doc["signing_seed"].as_str().unwrap().to_owned(),
        PASSPHRASE.to_owned(),
    ];
    let bulk = module.bulk_deriver(Generation(2)).map(|_| ());
    let errors = [
        format!("{:?}", module.import_master(Generation(2), &known)),
        format!("{:?}", module.unwrap(&WrappedKey(vec![1; 40]))),
        format!("{bulk:?}"),
        format!("{known:?}"),
    ];
    for text in std::iter::once(&debug).chain(errors.iter()) {
        for secret in &secrets {
            assert!(
                !text.to_lowercase().contains(secret.as_str()),
                "{text} shows a secret"
            );
        }
        assert!(
            !text.contains("92, 92, 92"),
            "{text} shows key bytes in decimal"
        );
    }
}

/// The cost of create and open, at the test work factor and at age's default. Run with
/// `cargo test -p fleetkey --test module_soft -- --ignored --nocapture timings`.
#[test]
#[ignore = "measures scrypt: about 2 s per default-factor operation"]
fn timings() {
    let home = Home::new();
    for (name, factor) in [
        ("test 2^10", WorkFactor::Log2(TEST_WORK_FACTOR)),
        ("age default", WorkFactor::AgeDefault),
    ] {
        let path = home
            .dir
            .path()
            .join(format!("{}.age", name.replace(' ', "-")));
        let start = Instant::now();
        let module = SoftModule::create_with(&path, PASSPHRASE, factor).unwrap();
        let create = start.elapsed();
        let start = Instant::now();
        module.import_master(Generation(1), &master(1)).unwrap();
        let change = start.elapsed();
        let log_n = module.work_factor();
        drop(module);
        let start = Instant::now();
        let module = SoftModule::open(&path, PASSPHRASE).unwrap();
        let open = start.elapsed();
        assert_eq!(module.masters().unwrap(), vec![Generation(1)]);
        println!(
            "{name} (log2 N = {log_n}): create {create:.2?}, import_master {change:.2?}, open {open:.2?}"
        );
    }
}
