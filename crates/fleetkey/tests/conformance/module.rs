//! The `KeyModule` conformance suite: every key module implementation runs these checks
//! unchanged.
//!
//! A test crate includes this file as `conformance::module` and expands one `#[test]` per check
//! with a factory expression, evaluated once per test:
//! ```ignore
//! mod conformance {
//!     pub mod module;
//! }
//! use conformance::module::ModuleFactory;
//! module_conformance!(SoftFactory::new());
//! ```
//! Every call of [`ModuleFactory::fresh`] must give a new, empty module (its own key file or
//! token), which the check may drop at any time.
//!
//! Besides the trait's documentation, the suite holds every module to this contract:
//! - derivation is exactly `fleetkey_core::derive::derive(master, inputs)`, also through a bulk
//!   deriver and from several threads at once;
//! - `derive` refuses inputs whose generation is not the one asked for (any error);
//! - a bulk deriver taken before `destroy_master` fails after it (any error);
//! - any blob that is not a wrapping under this module's KEK, whatever its length, is
//!   `ModuleError::Unwrap`; wrapping is deterministic (RFC 5649 has no nonce);
//! - signatures are plain Ed25519 (RFC 8032), hence deterministic, and verify strictly;
//! - an imported governance root signs exactly as `ed25519-dalek` does with its seed; a staged
//!   next root does not sign until promoted, and promoting destroys the old root.

use ed25519_dalek::{Signature, VerifyingKey};
use fleetkey::ModuleError;
use fleetkey::core::MasterKey;
use fleetkey::core::derive::{self, DeviceKeyInputs, Generation, Revision, Serial, Usage};
use fleetkey::model::WrappedKey;
use fleetkey::module::{KeyModule, SigningSeed};

/// Makes the modules a check runs against.
pub(crate) trait ModuleFactory: Sync {
    /// A new, empty module.
    fn fresh(&self) -> Box<dyn KeyModule>;
}

/// Expands to a module `module_conformance` with one `#[test]` per check, each calling the check
/// with a new factory made by `$factory`.
#[macro_export]
macro_rules! module_conformance {
    ($factory:expr) => {
        $crate::module_conformance!(@checks $factory;
            fresh_module_is_empty,
            imported_master_derives_like_the_core,
            derive_matches_the_v1_vectors,
            created_master_is_random_and_stable,
            second_master_for_a_generation_is_refused,
            derive_without_master_is_no_master,
            masters_are_listed_ascending,
            destroy_master_removes_only_that_generation,
            bulk_deriver_matches_derive,
            bulk_deriver_stops_after_destroy,
            bulk_deriver_refuses_a_wrong_output_length,
            derive_refuses_inputs_of_another_generation,
            wrap_unwrap_round_trip,
            tampered_wrapped_key_is_unwrap,
            wrapped_key_hides_the_plaintext,
            another_modules_kek_cannot_unwrap,
            ensure_kek_is_idempotent,
            wrapped_roots_are_distinct_and_derive_deterministically,
            derive_with_a_damaged_root_fails,
            signing_key_is_idempotent_and_verifies,
            sign_without_signing_key_is_no_signing_key,
            imported_signing_key_signs_as_its_seed,
            staged_root_replaces_the_old_one_on_promote,
            concurrent_derive_agrees,
        );
    };
    (@checks $factory:expr; $($check:ident),* $(,)?) => {
        mod module_conformance {
            #[allow(unused_imports, reason = "the factory expression may name items of the parent")]
            use super::*;
            $(
                #[test]
                fn $check() {
                    let factory = $factory;
                    $crate::conformance::module::$check(&factory);
                }
            )*
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// A small deterministic generator (xorshift64*), so that failures reproduce.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Public inputs with owned serials, to borrow as [`DeviceKeyInputs`].
struct Case {
    usage: Usage,
    generation: u32,
    revision: u32,
    serial: Vec<u8>,
}

impl Case {
    fn new(usage: Usage, generation: u32, revision: u32, serial: &[u8]) -> Self {
        Case {
            usage,
            generation,
            revision,
            serial: serial.to_vec(),
        }
    }

    fn inputs(&self) -> DeviceKeyInputs<'_> {
        DeviceKeyInputs {
            usage: self.usage,
            generation: Generation(self.generation),
            revision: Revision::new(self.revision).expect("revision in range"),
            serial: Serial::new(&self.serial).expect("serial length in range"),
        }
    }
}

/// `count` cases of one generation: every usage, revisions and serials of every length.
fn cases(generation: u32, count: usize, seed: u64) -> Vec<Case> {
    let mut rng = Rng::new(seed);
    (0..count)
        .map(|i| {
            let usage = Usage::ALL[i % 3];
            let revision = match i % 4 {
                0 => 0,
                1 => derive::MAX_REVISION,
                _ => rng.below(u64::from(derive::MAX_REVISION) + 1) as u32,
            };
            let len = 1 + (i % derive::MAX_SERIAL_LEN);
            Case {
                usage,
                generation,
                revision,
                serial: rng.bytes(len),
            }
        })
        .collect()
}

fn master(byte: u8) -> MasterKey {
    MasterKey::from_bytes(core::array::from_fn(|i| byte.wrapping_add(i as u8)))
}

fn derived(module: &dyn KeyModule, case: &Case) -> Vec<u8> {
    module
        .derive(&case.inputs())
        .expect("derive")
        .expose_secret()
        .to_vec()
}

fn core_derived(master: &MasterKey, case: &Case) -> Vec<u8> {
    derive::derive(master, &case.inputs())
        .expose_secret()
        .to_vec()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// Checks

/// A new module has no master, no KEK and no signing key, and says so per operation.
pub(crate) fn fresh_module_is_empty(factory: &dyn ModuleFactory) {
    let module = factory.fresh();
    assert!(!module.kind().is_empty());
    assert_eq!(module.masters().unwrap(), Vec::<Generation>::new());
    let case = Case::new(Usage::Auth, 1, 0, b"ECU-0001");
    assert!(matches!(
        module.derive(&case.inputs()),
        Err(ModuleError::NoMaster(1))
    ));
    assert!(matches!(
        module.bulk_deriver(Generation(1)).map(|_| ()),
        Err(ModuleError::NoMaster(1))
    ));
    assert!(matches!(
        module.destroy_master(Generation(1)),
        Err(ModuleError::NoMaster(1))
    ));
    assert!(matches!(module.wrap(&[7; 32]), Err(ModuleError::NoKek)));
    assert!(matches!(
        module.unwrap(&WrappedKey(vec![0; 40])),
        Err(ModuleError::NoKek)
    ));
    assert!(matches!(module.new_wrapped_root(), Err(ModuleError::NoKek)));
    assert!(matches!(
        module.derive_with_root(&WrappedKey(vec![0; 40]), &case.inputs()),
        Err(ModuleError::NoKek)
    ));
    assert_eq!(module.signing_public_key().unwrap(), None);
    assert!(matches!(module.sign(b"m"), Err(ModuleError::NoSigningKey)));
}

/// An imported master derives exactly what the device core derives, for every usage.
pub(crate) fn imported_master_derives_like_the_core(factory: &dyn ModuleFactory) {
    let module = factory.fresh();
    for (generation, byte) in [(0u32, 0x00u8), (1, 0x10), (u32::MAX, 0xf0)] {
        let master = master(byte);
        module
            .import_master(Generation(generation), &master)
            .unwrap();
        for case in cases(generation, 90, u64::from(generation) + 1) {
            assert_eq!(
                derived(&*module, &case),
                core_derived(&master, &case),
                "generation {generation}"
            );
        }
    }
    assert_eq!(
        module.masters().unwrap(),
        vec![Generation(0), Generation(1), Generation(u32::MAX)]
    );
}

/// The contract vectors of derivation v1 (tests/vectors/derive-v1.json).
pub(crate) fn derive_matches_the_v1_vectors(factory: &dyn ModuleFactory) {
    let vectors: serde_json::Value =
        serde_json::from_str(include_str!("../../../../tests/vectors/derive-v1.json")).unwrap();
    let module = factory.fresh();
    let mut imported = std::collections::BTreeMap::new();
    let cases = vectors["cases"].as_array().unwrap();
    assert!(cases.len() >= 40);
    for case in cases {
        let hex_field = |name: &str| hex::decode(case[name].as_str().unwrap()).unwrap();
        let generation = u32::try_from(case["generation"].as_u64().unwrap()).unwrap();
        let master_hex = case["master"].as_str().unwrap().to_owned();
        match imported.get(&generation) {
            None => {
                let master = MasterKey::from_slice(&hex_field("master")).unwrap();
                module
                    .import_master(Generation(generation), &master)
                    .unwrap();
                imported.insert(generation, master_hex);
            }
            Some(known) => assert_eq!(
                *known, master_hex,
                "the vectors use one master per generation"
            ),
        }
        let usage = Usage::ALL
            .into_iter()
            .find(|u| u.name() == case["usage"].as_str().unwrap())
            .unwrap();
        let serial = match case.get("serial") {
            Some(text) => text.as_str().unwrap().as_bytes().to_vec(),
            None => hex_field("serial_hex"),
        };
        let revision = u32::try_from(case["revision"].as_u64().unwrap()).unwrap();
        let c = Case::new(usage, generation, revision, &serial);
        assert_eq!(
            hex::encode(derived(&*module, &c)),
            case["key"].as_str().unwrap(),
            "vector {case}"
        );
    }
}

/// A created master is random (two modules differ), stable, and the same through every path.
pub(crate) fn created_master_is_random_and_stable(factory: &dyn ModuleFactory) {
    let (a, b) = (factory.fresh(), factory.fresh());
    a.create_master(Generation(1)).unwrap();
    b.create_master(Generation(1)).unwrap();
    assert_eq!(a.masters().unwrap(), vec![Generation(1)]);
    for case in cases(1, 30, 7) {
        let first = derived(&*a, &case);
        assert_eq!(first.len(), case.usage.key_len());
        assert_eq!(derived(&*a, &case), first);
        assert_ne!(
            derived(&*b, &case),
            first,
            "two created masters gave the same key"
        );
    }
}

/// A generation holds one master: creating or importing another is `MasterExists`, and the
/// first master is untouched.
pub(crate) fn second_master_for_a_generation_is_refused(factory: &dyn ModuleFactory) {
    let module = factory.fresh();
    let case = Case::new(Usage::KeyUpdate, 3, 0, b"ECU-3");
    module.create_master(Generation(3)).unwrap();
    let before = derived(&*module, &case);
    assert!(matches!(
        module.create_master(Generation(3)),
        Err(ModuleError::MasterExists(3))
    ));
    assert!(matches!(
        module.import_master(Generation(3), &master(1)),
        Err(ModuleError::MasterExists(3))
    ));
    assert_eq!(derived(&*module, &case), before);

    let case = Case::new(Usage::KeyUpdate, 4, 0, b"ECU-4");
    module.import_master(Generation(4), &master(4)).unwrap();
    assert!(matches!(
        module.create_master(Generation(4)),
        Err(ModuleError::MasterExists(4))
    ));
    assert!(matches!(
        module.import_master(Generation(4), &master(5)),
        Err(ModuleError::MasterExists(4))
    ));
    assert_eq!(derived(&*module, &case), core_derived(&master(4), &case));
    assert_eq!(
        module.masters().unwrap(),
        vec![Generation(3), Generation(4)]
    );
}

/// Deriving from a generation without a master is `NoMaster` with that generation.
pub(crate) fn derive_without_master_is_no_master(factory: &dyn ModuleFactory) {
    let module = factory.fresh();
    module.import_master(Generation(1), &master(1)).unwrap();
    for generation in [0, 2, u32::MAX] {
        let case = Case::new(Usage::Auth, generation, 0, b"X");
        assert!(matches!(
            module.derive(&case.inputs()),
            Err(ModuleError::NoMaster(g)) if g == generation
        ));
        assert!(matches!(
            module.bulk_deriver(Generation(generation)).map(|_| ()),
            Err(ModuleError::NoMaster(g)) if g == generation
        ));
    }
}

/// `masters()` lists the generations ascending, whatever the order they came in.
pub(crate) fn masters_are_listed_ascending(factory: &dyn ModuleFactory) {
    let module = factory.fresh();
    for generation in [7, 2, u32::MAX, 0, 5] {
        module.create_master(Generation(generation)).unwrap();
    }
    let expected: Vec<_> = [0, 2, 5, 7, u32::MAX].into_iter().map(Generation).collect();
    assert_eq!(module.masters().unwrap(), expected);
    module.destroy_master(Generation(5)).unwrap();
    let expected: Vec<_> = [0, 2, 7, u32::MAX].into_iter().map(Generation).collect();
    assert_eq!(module.masters().unwrap(), expected);
}

/// Destroying a master makes its generation `NoMaster` everywhere and leaves the others alone;
/// destroying it again is `NoMaster`.
pub(crate) fn destroy_master_removes_only_that_generation(factory: &dyn ModuleFactory) {
    let module = factory.fresh();
    module.import_master(Generation(1), &master(1)).unwrap();
    module.import_master(Generation(2), &master(2)).unwrap();
    let (one, two) = (
        Case::new(Usage::Auth, 1, 0, b"ECU"),
        Case::new(Usage::Auth, 2, 0, b"ECU"),
    );
    module.destroy_master(Generation(1)).unwrap();
    assert!(matches!(
        module.derive(&one.inputs()),
        Err(ModuleError::NoMaster(1))
    ));
    assert!(matches!(
        module.bulk_deriver(Generation(1)).map(|_| ()),
        Err(ModuleError::NoMaster(1))
    ));
    assert!(matches!(
        module.destroy_master(Generation(1)),
        Err(ModuleError::NoMaster(1))
    ));
    assert!(matches!(
        module.destroy_master(Generation(9)),
        Err(ModuleError::NoMaster(9))
    ));
    assert_eq!(module.masters().unwrap(), vec![Generation(2)]);
    assert_eq!(derived(&*module, &two), core_derived(&master(2), &two));
}

/// A bulk deriver gives exactly what `derive` gives, over many inputs of every usage.
pub(crate) fn bulk_deriver_matches_derive(factory: &dyn ModuleFactory) {
    let module = factory.fresh();
    module.create_master(Generation(5)).unwrap();
    module.import_master(Generation(6), &master(6)).unwrap();
    for generation in [5, 6] {
        let mut bulk = module.bulk_deriver(Generation(generation)).unwrap();
        for case in cases(generation, 600, u64::from(generation)) {
            let mut out = vec![0u8; case.usage.key_len()];
            bulk.derive_into(&case.inputs(), &mut out).unwrap();
            assert_eq!(out, derived(&*module, &case));
            if generation == 6 {
                assert_eq!(out, core_derived(&master(6), &case));
            }
        }
    }
}

/// A bulk deriver taken before its master is destroyed derives nothing after.
pub(crate) fn bulk_deriver_stops_after_destroy(factory: &dyn ModuleFactory) {
    let module = factory.fresh();
    module.create_master(Generation(1)).unwrap();
    let case = Case::new(Usage::RollSeed, 1, 0, b"ECU");
    let mut bulk = module.bulk_deriver(Generation(1)).unwrap();
    let mut out = [0u8; 32];
    bulk.derive_into(&case.inputs(), &mut out).unwrap();
    module.destroy_master(Generation(1)).unwrap();
    let mut after = [0u8; 32];
    assert!(bulk.derive_into(&case.inputs(), &mut after).is_err());
    assert_eq!(after, [0u8; 32]);
}

/// `derive_into` refuses an output buffer of another length than the usage's key.
pub(crate) fn bulk_deriver_refuses_a_wrong_output_length(factory: &dyn ModuleFactory) {
    let module = factory.fresh();
    module.create_master(Generation(1)).unwrap();
    let mut bulk = module.bulk_deriver(Generation(1)).unwrap();
    for (usage, wrong) in [
        (Usage::Auth, 32),
        (Usage::Auth, 15),
        (Usage::RollSeed, 16),
        (Usage::KeyUpdate, 0),
    ] {
        let case = Case::new(usage, 1, 0, b"ECU");
        let mut out = vec![0u8; wrong];
        assert!(
            bulk.derive_into(&case.inputs(), &mut out).is_err(),
            "{usage:?} into {wrong} bytes"
        );
    }
}

/// `derive` uses the master of the inputs' generation; a bulk deriver, made for one generation,
/// refuses inputs of another.
pub(crate) fn derive_refuses_inputs_of_another_generation(factory: &dyn ModuleFactory) {
    let module = factory.fresh();
    module.create_master(Generation(1)).unwrap();
    module.create_master(Generation(2)).unwrap();
    let case = Case::new(Usage::Auth, 2, 0, b"ECU");
    module.derive(&case.inputs()).unwrap();
    assert!(matches!(
        module.derive(&Case::new(Usage::Auth, 3, 0, b"ECU").inputs()),
        Err(ModuleError::NoMaster(3))
    ));
    let mut bulk = module.bulk_deriver(Generation(1)).unwrap();
    assert!(bulk.derive_into(&case.inputs(), &mut [0u8; 16]).is_err());
}

/// Wrap then unwrap gives the key back, for lengths around the 8-byte semiblock; the blob has
/// the RFC 5649 length, and wrapping is deterministic.
pub(crate) fn wrap_unwrap_round_trip(factory: &dyn ModuleFactory) {
    let module = factory.fresh();
    module.ensure_kek().unwrap();
    let mut rng = Rng::new(11);
    for len in [1, 7, 8, 9, 16, 24, 31, 32, 33, 40, 64] {
        let key = rng.bytes(len);
        let wrapped = module.wrap(&key).unwrap();
        assert_eq!(
            wrapped.0.len(),
            len.div_ceil(8) * 8 + 8,
            "RFC 5649 length for {len} bytes"
        );
        assert_eq!(
            module.wrap(&key).unwrap(),
            wrapped,
            "wrapping {len} bytes is deterministic"
        );
        assert_eq!(*module.unwrap(&wrapped).unwrap(), key, "{len} bytes");
    }
}

/// Any change to a wrapped blob (a flipped bit anywhere, truncation, extension, another length)
/// is `Unwrap`.
pub(crate) fn tampered_wrapped_key_is_unwrap(factory: &dyn ModuleFactory) {
    let module = factory.fresh();
    module.ensure_kek().unwrap();
    for len in [16, 32, 40] {
        let key: Vec<u8> = (0..len as u8).collect();
        let wrapped = module.wrap(&key).unwrap();
        for i in 0..wrapped.0.len() {
            for bit in [0x01, 0x80] {
                let mut bad = wrapped.clone();
                bad.0[i] ^= bit;
                assert!(
                    matches!(module.unwrap(&bad), Err(ModuleError::Unwrap)),
                    "byte {i} bit {bit:#x}"
                );
            }
        }
        let mut shorter = wrapped.clone();
        shorter.0.truncate(wrapped.0.len() - 8);
        let mut longer = wrapped.clone();
        longer.0.extend_from_slice(&[0; 8]);
        let mut odd = wrapped.clone();
        odd.0.pop();
        for bad in [shorter, longer, odd] {
            assert!(
                matches!(module.unwrap(&bad), Err(ModuleError::Unwrap)),
                "{} bytes",
                bad.0.len()
            );
        }
    }
    for len in [0, 1, 8, 15, 16, 24] {
        let junk = WrappedKey(vec![0xa6; len]);
        assert!(
            matches!(module.unwrap(&junk), Err(ModuleError::Unwrap)),
            "junk of {len} bytes"
        );
    }
}

/// A wrapped blob never contains its plaintext, nor a long piece of it.
pub(crate) fn wrapped_key_hides_the_plaintext(factory: &dyn ModuleFactory) {
    let module = factory.fresh();
    module.ensure_kek().unwrap();
    for len in [16, 32, 40] {
        for key in [vec![0x41u8; len], (0..len as u8).collect(), vec![0u8; len]] {
            let wrapped = module.wrap(&key).unwrap();
            for piece in key.windows(8) {
                assert!(
                    !contains(&wrapped.0, piece),
                    "a wrapped {len}-byte key shows 8 of its bytes"
                );
            }
        }
    }
}

/// A blob wrapped by one module does not unwrap under another module's KEK.
pub(crate) fn another_modules_kek_cannot_unwrap(factory: &dyn ModuleFactory) {
    let (a, b) = (factory.fresh(), factory.fresh());
    a.ensure_kek().unwrap();
    b.ensure_kek().unwrap();
    for len in [16, 32, 40] {
        let wrapped = a.wrap(&vec![9u8; len]).unwrap();
        assert!(
            matches!(b.unwrap(&wrapped), Err(ModuleError::Unwrap)),
            "{len} bytes"
        );
        assert_ne!(b.wrap(&vec![9u8; len]).unwrap(), wrapped);
    }
}

/// `ensure_kek` creates the KEK once: blobs wrapped before a second call still unwrap.
pub(crate) fn ensure_kek_is_idempotent(factory: &dyn ModuleFactory) {
    let module = factory.fresh();
    module.ensure_kek().unwrap();
    let key = [0x5au8; 32];
    let before = module.wrap(&key).unwrap();
    module.ensure_kek().unwrap();
    module.ensure_kek().unwrap();
    assert_eq!(*module.unwrap(&before).unwrap(), key.to_vec());
    assert_eq!(module.wrap(&key).unwrap(), before);
}

/// Stored scheme: fresh roots are distinct 32-byte keys; deriving with one is deterministic,
/// equals core derivation with the root as master, and differs between roots.
pub(crate) fn wrapped_roots_are_distinct_and_derive_deterministically(factory: &dyn ModuleFactory) {
    let module = factory.fresh();
    module.ensure_kek().unwrap();
    let roots: Vec<WrappedKey> = (0..20)
        .map(|_| module.new_wrapped_root().unwrap())
        .collect();
    let case = Case::new(Usage::RollSeed, 1, 0, b"ECU-0001");
    let mut seen_roots = std::collections::BTreeSet::new();
    let mut seen_keys = std::collections::BTreeSet::new();
    for root in &roots {
        assert_eq!(root.0.len(), 40);
        let bytes = module.unwrap(root).unwrap();
        assert_eq!(bytes.len(), 32);
        assert!(!contains(&root.0, &bytes[..8]));
        assert!(seen_roots.insert(bytes.to_vec()), "two equal roots");
        let key = module
            .derive_with_root(root, &case.inputs())
            .unwrap()
            .expose_secret()
            .to_vec();
        assert_eq!(
            module
                .derive_with_root(root, &case.inputs())
                .unwrap()
                .expose_secret(),
            &key[..]
        );
        assert_eq!(
            key,
            core_derived(&MasterKey::from_slice(&bytes).unwrap(), &case)
        );
        assert!(seen_keys.insert(key), "two roots gave the same key");
    }
    for usage in Usage::ALL {
        let case = Case::new(usage, 9, 77, b"serial");
        let key = module.derive_with_root(&roots[0], &case.inputs()).unwrap();
        assert_eq!(key.usage(), usage);
        assert_eq!(key.expose_secret().len(), usage.key_len());
    }
}

/// `derive_with_root` with a damaged root is `Unwrap`; with a blob that is not 32 bytes, an
/// error.
pub(crate) fn derive_with_a_damaged_root_fails(factory: &dyn ModuleFactory) {
    let module = factory.fresh();
    module.ensure_kek().unwrap();
    let case = Case::new(Usage::Auth, 1, 0, b"ECU");
    let mut root = module.new_wrapped_root().unwrap();
    root.0[17] ^= 0x04;
    assert!(matches!(
        module.derive_with_root(&root, &case.inputs()),
        Err(ModuleError::Unwrap)
    ));
    for len in [16, 31, 33, 40] {
        let not_a_root = module.wrap(&vec![1u8; len]).unwrap();
        assert!(
            module
                .derive_with_root(&not_a_root, &case.inputs())
                .is_err(),
            "{len}-byte root"
        );
    }
}

/// `ensure_signing_key` creates the governance root once; its signatures are deterministic
/// Ed25519 that verify strictly under the returned public key, and only for their message.
pub(crate) fn signing_key_is_idempotent_and_verifies(factory: &dyn ModuleFactory) {
    let module = factory.fresh();
    let public = module.ensure_signing_key().unwrap();
    assert_eq!(module.ensure_signing_key().unwrap(), public);
    assert_eq!(module.signing_public_key().unwrap(), Some(public));
    let verifying = VerifyingKey::from_bytes(&public).unwrap();
    let long = vec![0xabu8; 1000];
    for message in [&b""[..], b"x", b"generation record 1", &long] {
        let signature = module.sign(message).unwrap();
        assert_eq!(
            module.sign(message).unwrap(),
            signature,
            "Ed25519 is deterministic"
        );
        verifying
            .verify_strict(message, &Signature::from_bytes(&signature))
            .unwrap();
        let mut other = message.to_vec();
        other.push(0);
        assert!(
            verifying
                .verify_strict(&other, &Signature::from_bytes(&signature))
                .is_err()
        );
    }
    let other_module = factory.fresh();
    assert_ne!(
        other_module.ensure_signing_key().unwrap(),
        public,
        "two modules, one governance root"
    );
}

/// Signing without a governance root is `NoSigningKey`.
pub(crate) fn sign_without_signing_key_is_no_signing_key(factory: &dyn ModuleFactory) {
    let module = factory.fresh();
    module.create_master(Generation(1)).unwrap();
    module.ensure_kek().unwrap();
    assert!(matches!(
        module.sign(b"record"),
        Err(ModuleError::NoSigningKey)
    ));
    assert_eq!(module.signing_public_key().unwrap(), None);
}

/// An imported root signs as its seed does (RFC 8032 section 7.1 test 1); a second import, or
/// an import over a generated root, is refused.
pub(crate) fn imported_signing_key_signs_as_its_seed(factory: &dyn ModuleFactory) {
    use ed25519_dalek::Signer as _;
    let seed: [u8; 32] =
        hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
            .unwrap()
            .try_into()
            .unwrap();
    let module = factory.fresh();
    let imported = module
        .import_signing_key(&SigningSeed::from_bytes(zeroize::Zeroizing::new(seed)))
        .unwrap();
    assert_eq!(
        hex::encode(imported),
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    );
    assert_eq!(module.signing_public_key().unwrap(), Some(imported));
    let reference = ed25519_dalek::SigningKey::from_bytes(&seed);
    for message in [&b""[..], b"handover"] {
        assert_eq!(
            module.sign(message).unwrap(),
            reference.sign(message).to_bytes()
        );
    }
    assert!(matches!(
        module.import_signing_key(&SigningSeed::from_bytes(zeroize::Zeroizing::new([7; 32]))),
        Err(ModuleError::SigningKeyExists)
    ));
    assert_eq!(module.signing_public_key().unwrap(), Some(imported));
    let generated = factory.fresh();
    generated.ensure_signing_key().unwrap();
    assert!(matches!(
        generated.import_signing_key(&SigningSeed::from_bytes(zeroize::Zeroizing::new(seed))),
        Err(ModuleError::SigningKeyExists)
    ));
}

/// Root rotation in the module: the staged root is listed but does not sign; staging again
/// replaces it; promoting makes it the root and the old root is gone; without a staged root,
/// promoting changes nothing.
pub(crate) fn staged_root_replaces_the_old_one_on_promote(factory: &dyn ModuleFactory) {
    let module = factory.fresh();
    assert!(matches!(
        module.stage_signing_key(None),
        Err(ModuleError::NoSigningKey)
    ));
    let old = module.ensure_signing_key().unwrap();
    assert!(matches!(
        module.promote_signing_key(),
        Err(ModuleError::NoStagedSigningKey)
    ));
    assert_eq!(module.staged_signing_public_key().unwrap(), None);
    let discarded = module.stage_signing_key(None).unwrap();
    assert_ne!(discarded, old);
    let seed = SigningSeed::from_bytes(zeroize::Zeroizing::new([0x42; 32]));
    let next = module.stage_signing_key(Some(&seed)).unwrap();
    assert_eq!(next, seed.public_key());
    assert_eq!(module.staged_signing_public_key().unwrap(), Some(next));
    // The old root still signs the handover.
    assert_eq!(module.signing_public_key().unwrap(), Some(old));
    let handover = module.sign(b"handover").unwrap();
    VerifyingKey::from_bytes(&old)
        .unwrap()
        .verify_strict(b"handover", &Signature::from_bytes(&handover))
        .unwrap();
    assert_eq!(module.promote_signing_key().unwrap(), next);
    assert_eq!(module.signing_public_key().unwrap(), Some(next));
    assert_eq!(module.staged_signing_public_key().unwrap(), None);
    let record = module.sign(b"record").unwrap();
    VerifyingKey::from_bytes(&next)
        .unwrap()
        .verify_strict(b"record", &Signature::from_bytes(&record))
        .unwrap();
    assert!(matches!(
        module.promote_signing_key(),
        Err(ModuleError::NoStagedSigningKey)
    ));
    assert_eq!(module.signing_public_key().unwrap(), Some(next));
}

/// Two threads deriving at once (while a third changes the module) get the sequential results.
pub(crate) fn concurrent_derive_agrees(factory: &dyn ModuleFactory) {
    let module = factory.fresh();
    module.import_master(Generation(1), &master(1)).unwrap();
    let all = cases(1, 300, 99);
    let expected: Vec<Vec<u8>> = all.iter().map(|c| core_derived(&master(1), c)).collect();
    let module = &*module;
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|t| {
                let all = &all;
                s.spawn(move || {
                    let mut got = Vec::new();
                    for round in 0..3 {
                        for (i, case) in all.iter().enumerate() {
                            if (i + round + t) % 2 == 0 {
                                got.push((i, derived(module, case)));
                            } else {
                                let mut bulk = module.bulk_deriver(Generation(1)).unwrap();
                                let mut out = vec![0u8; case.usage.key_len()];
                                bulk.derive_into(&case.inputs(), &mut out).unwrap();
                                got.push((i, out));
                            }
                        }
                    }
                    got
                })
            })
            .collect();
        s.spawn(move || {
            for generation in 10..13 {
                module.create_master(Generation(generation)).unwrap();
            }
            module.ensure_kek().unwrap();
        });
        for worker in workers {
            for (i, key) in worker.join().unwrap() {
                assert_eq!(key, expected[i], "case {i}");
            }
        }
    });
    assert_eq!(module.masters().unwrap().len(), 4);
}
