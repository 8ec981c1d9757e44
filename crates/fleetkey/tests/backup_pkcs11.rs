//! Issue 4's "done when": a 3-of-5 custodian ceremony, then a restore of the master into a fresh
//! PKCS#11 token, gives the same device keys as the original master, for every usage.
//!
//! One SoftHSM2 token in a temporary directory of this test process (its own `SOFTHSM2_CONF`,
//! read at the process's one `C_Initialize`). Needs the Debian package `softhsm2`; without it the
//! test fails saying so, unless `FLEETKEY_SKIP_PKCS11=1`.

use std::path::Path;

use fleetkey::backup;
use fleetkey::core::MasterKey;
use fleetkey::core::derive::{self, DeviceKeyInputs, Generation, Revision, Serial, Usage};
use fleetkey::module::KeyModule;
use fleetkey::module::pkcs11::{Pin, Pkcs11Module};
use fleetkey::restore;

#[path = "support/softhsm.rs"]
mod softhsm;
use softhsm::{LIBRARY, PIN, SoftHsm};

const TOKEN: &str = "fleetkey-restore";

/// A fresh token, or `None` when the test is skipped.
fn fresh_token() -> Option<(SoftHsm, Pkcs11Module)> {
    let hsm = SoftHsm::new(&[TOKEN])?;
    let module = hsm.with_conf(|| {
        Pkcs11Module::open(Path::new(LIBRARY), TOKEN, &Pin::new(PIN), "restored-fleet").unwrap()
    });
    Some((hsm, module))
}

#[test]
fn three_of_five_shares_restore_into_a_fresh_token_with_the_same_device_keys() {
    let Some((_dir, token)) = fresh_token() else {
        return;
    };
    let original = MasterKey::from_bytes(core::array::from_fn(|i| {
        (i as u8).wrapping_mul(37).wrapping_add(11)
    }));
    let custodians: Vec<String> = ["alice", "bob", "carol", "dave", "erin"]
        .map(String::from)
        .to_vec();
    let shares = backup::split(&original, "restored-fleet", 3, 3, &custodians, 0).unwrap();
    assert_eq!(shares.len(), 5);
    assert!(
        token.masters().unwrap().is_empty(),
        "the token starts empty"
    );

    // Any three custodians are enough: here the last three.
    restore::restore_into(&token, &shares[2..], Some(3)).unwrap();
    assert_eq!(token.masters().unwrap(), vec![Generation(3)]);

    for serial in [
        &b"ECU-0001"[..],
        b"VIN-WDB9634031L123456-ECU-07",
        &[0, 0xff, 7],
    ] {
        for usage in Usage::ALL {
            for revision in [0, 1, 268_435_455] {
                let inputs = DeviceKeyInputs {
                    usage,
                    generation: Generation(3),
                    revision: Revision::new(revision).unwrap(),
                    serial: Serial::new(serial).unwrap(),
                };
                let in_token = token.derive(&inputs).unwrap();
                let from_original = derive::derive(&original, &inputs);
                assert_eq!(
                    in_token.expose_secret(),
                    from_original.expose_secret(),
                    "{usage:?} rev {revision}"
                );
            }
        }
    }
    // Two shares are not enough, and the token is not touched by a refused restore.
    assert!(restore::restore_into(&token, &shares[..2], Some(4)).is_err());
    assert_eq!(token.masters().unwrap(), vec![Generation(3)]);
}
