//! Issue 4's "done when": a 3-of-5 custodian ceremony, then a restore of the master into a fresh
//! PKCS#11 token, gives the same device keys as the original master, for every usage.
//!
//! One SoftHSM2 token in a temporary directory of this test process (its own `SOFTHSM2_CONF`,
//! read at the process's one `C_Initialize`). Needs the Debian package `softhsm2`; without it the
//! test fails saying so, unless `FLEETKEY_SKIP_PKCS11=1`.

use std::path::Path;
use std::process::Command;

use fleetkey::backup;
use fleetkey::core::MasterKey;
use fleetkey::core::derive::{self, DeviceKeyInputs, Generation, Revision, Serial, Usage};
use fleetkey::module::KeyModule;
use fleetkey::module::pkcs11::{Pin, Pkcs11Module};

const LIBRARY: &str = "/usr/lib/softhsm/libsofthsm2.so";
const TOKEN: &str = "fleetkey-restore";
const PIN: &str = "123456";

/// A fresh token, or `None` when the test is skipped.
fn fresh_token() -> Option<(tempfile::TempDir, Pkcs11Module)> {
    let installed = Path::new(LIBRARY).exists()
        && Command::new("softhsm2-util")
            .arg("--version")
            .output()
            .is_ok();
    if !installed {
        if std::env::var("FLEETKEY_SKIP_PKCS11").as_deref() == Ok("1") {
            return None;
        }
        panic!(
            "SoftHSM2 is not installed: `apt-get install softhsm2`, or set FLEETKEY_SKIP_PKCS11=1"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\n",
            tokens.display()
        ),
    )
    .unwrap();
    let out = Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            TOKEN,
            "--pin",
            PIN,
            "--so-pin",
            "12345678",
        ])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let module = temp_env::with_var("SOFTHSM2_CONF", Some(&conf), || {
        Pkcs11Module::open(Path::new(LIBRARY), TOKEN, &Pin::new(PIN), "restored-fleet").unwrap()
    });
    Some((dir, module))
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
    backup::restore_into(&token, &shares[2..], Some(3)).unwrap();
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
                let in_token = token.derive(Generation(3), &inputs).unwrap();
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
    assert!(backup::restore_into(&token, &shares[..2], Some(4)).is_err());
    assert_eq!(token.masters().unwrap(), vec![Generation(3)]);
}
