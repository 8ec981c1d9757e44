//! SoftHSM2 tokens for the PKCS#11 tests: a configuration in a temporary directory and freshly
//! initialised tokens in it. SoftHSM reads `SOFTHSM2_CONF` once, at a process's `C_Initialize`,
//! so a test process uses one configuration: open the first module inside [`SoftHsm::with_conf`].
//!
//! Needs the Debian package `softhsm2`. Without it [`SoftHsm::new`] panics saying so, unless
//! `FLEETKEY_SKIP_PKCS11=1`, when it returns `None` and the tests skip.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// SoftHSM2's PKCS#11 library on Debian.
pub(crate) const LIBRARY: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The user PIN of every test token.
pub(crate) const PIN: &str = "123456";
/// The security officer's PIN of every test token.
pub(crate) const SO_PIN: &str = "12345678";

/// A SoftHSM2 configuration whose tokens live (and die) in a temporary directory.
pub(crate) struct SoftHsm {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

impl SoftHsm {
    /// A configuration with one initialised token per label, or `None` when PKCS#11 tests are
    /// skipped.
    pub(crate) fn new(labels: &[&str]) -> Option<SoftHsm> {
        let installed = Path::new(LIBRARY).exists()
            && Command::new("softhsm2-util")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
        if !installed {
            if std::env::var("FLEETKEY_SKIP_PKCS11").as_deref() == Ok("1") {
                eprintln!(
                    "SoftHSM2 is not installed: PKCS#11 tests skipped (FLEETKEY_SKIP_PKCS11=1)"
                );
                return None;
            }
            panic!(
                "SoftHSM2 is not installed ({LIBRARY} or softhsm2-util missing): install it with \
                 `apt-get install softhsm2`, or set FLEETKEY_SKIP_PKCS11=1 to skip these tests"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        let hsm = SoftHsm { dir, conf };
        for label in labels {
            hsm.init_token(label);
        }
        Some(hsm)
    }

    /// Initialises one more token with [`PIN`] and [`SO_PIN`].
    pub(crate) fn init_token(&self, label: &str) {
        let out = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", label])
            .args(["--pin", PIN, "--so-pin", SO_PIN])
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "softhsm2-util --init-token {label}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `f` with `SOFTHSM2_CONF` pointing at this configuration (for the process's first
    /// open, which reads it).
    pub(crate) fn with_conf<T>(&self, f: impl FnOnce() -> T) -> T {
        temp_env::with_var("SOFTHSM2_CONF", Some(&self.conf), f)
    }

    /// The configuration file (for child processes: `SOFTHSM2_CONF`).
    pub(crate) fn conf(&self) -> &Path {
        &self.conf
    }

    /// The temporary directory holding the configuration and the tokens.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }
}
