//! Token-to-token backup from the command line: `fleetkey master new-backup-kek`,
//! `import-backup-kek`, `export-wrapped` and `import-wrapped` between two SoftHSM2 tokens of one
//! token directory, then the same device keys through both fleet homes.
//!
//! Needs the Debian package `softhsm2`; without it the test fails saying so, unless
//! `FLEETKEY_SKIP_PKCS11=1`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

#[path = "../../fleetkey/tests/support/softhsm.rs"]
mod softhsm;
use softhsm::{LIBRARY, PIN, SO_PIN, SoftHsm};

/// Two tokens, `A` and `C`, in one temporary token directory.
struct Tokens {
    hsm: SoftHsm,
}

impl Tokens {
    fn new() -> Option<Tokens> {
        Some(Tokens {
            hsm: SoftHsm::new(&["A", "C"])?,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.hsm.dir().join(name)
    }

    fn run(&self, home: &Path, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_fleetkey"))
            .arg("--home")
            .arg(home)
            .args(args)
            .env("SOFTHSM2_CONF", self.hsm.conf())
            .env("FLEETKEY_PKCS11_PIN", PIN)
            .env("FLEETKEY_PKCS11_SO_PIN", SO_PIN)
            .env_remove("FLEETKEY_PASSPHRASE")
            .env("FLEETKEY_ACTOR", "tester")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ok(&self, home: &Path, args: &[&str]) -> String {
        let out = self.run(home, args);
        assert!(
            out.status.success(),
            "fleetkey {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn init(&self, home: &Path, token: &str, backup: bool) {
        let mut args = vec![
            "init",
            "--fleet",
            "tractors",
            "--scheme",
            "derived",
            "--no-backup",
            "--module",
            "pkcs11",
            "--pkcs11-module",
            LIBRARY,
            "--token-label",
            token,
        ];
        if backup {
            args.push("--pkcs11-backup-by-trusted-wrap");
        }
        self.ok(home, &args);
    }
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}

#[test]
fn a_master_moves_from_token_a_to_token_c_and_derives_the_same_device_keys() {
    let Some(t) = Tokens::new() else { return };
    let a = t.path("a");
    t.init(&a, "A", true);
    let kek_dir = t.path("kek");
    let made = json(&t.ok(
        &a,
        &[
            "--json",
            "master",
            "new-backup-kek",
            "--custodian",
            "alice",
            "--custodian",
            "bob",
            "--custodian",
            "carol",
            "--threshold",
            "2",
            "--shares-dir",
            kek_dir.to_str().unwrap(),
        ],
    ));
    let shares: Vec<String> = made["share_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(shares.len(), 3);
    let blob = t.path("g1.json");
    let blob_arg = blob.to_str().unwrap();
    t.ok(
        &a,
        &[
            "master",
            "export-wrapped",
            "--generation",
            "1",
            "--out",
            blob_arg,
        ],
    );
    // Never overwritten.
    assert!(
        !t.run(
            &a,
            &[
                "master",
                "export-wrapped",
                "--generation",
                "1",
                "--out",
                blob_arg
            ],
        )
        .status
        .success()
    );

    // The fleet's home onto token C, whose module has no master yet.
    let c = t.path("c");
    std::fs::create_dir(&c).unwrap();
    for entry in std::fs::read_dir(&a).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), c.join(entry.file_name())).unwrap();
        }
    }
    let config = std::fs::read_to_string(c.join("fleet.json")).unwrap();
    std::fs::write(
        c.join("fleet.json"),
        config.replace("\"token_label\": \"A\"", "\"token_label\": \"C\""),
    )
    .unwrap();
    let imported = json(&t.ok(
        &c,
        &[
            "--json",
            "master",
            "import-backup-kek",
            "--shares",
            &shares[0],
            &shares[2],
        ],
    ));
    assert_eq!(imported["backup_kek_kcv"], made["backup_kek_kcv"]);
    // The wrong generation is refused before the token is asked.
    assert_eq!(
        t.run(
            &c,
            &[
                "master",
                "import-wrapped",
                "--generation",
                "2",
                "--in",
                blob_arg
            ],
        )
        .status
        .code(),
        Some(2)
    );
    let done = json(&t.ok(
        &c,
        &[
            "--json",
            "master",
            "import-wrapped",
            "--generation",
            "1",
            "--in",
            blob_arg,
        ],
    ));
    assert_eq!(done["action"], "imported");

    let mut keys = Vec::new();
    for home in [&a, &c] {
        t.ok(home, &["device", "add", "ECU-0001"]);
        let provisioned = json(&t.ok(home, &["--json", "device", "provision", "ECU-0001"]));
        keys.push(provisioned["keys"].clone());
    }
    assert!(keys[0].as_object().is_some_and(|k| !k.is_empty()));
    assert_eq!(keys[0], keys[1]);
}

#[test]
fn a_fleet_without_the_option_cannot_export_its_master() {
    let Some(t) = Tokens::new() else { return };
    let a = t.path("a");
    t.init(&a, "A", false);
    let kek = t.path("kek.hex");
    std::fs::write(&kek, format!("{}\n", "5a".repeat(32))).unwrap();
    t.ok(
        &a,
        &[
            "master",
            "import-backup-kek",
            "--kek-file",
            kek.to_str().unwrap(),
        ],
    );
    let out = t.run(
        &a,
        &[
            "master",
            "export-wrapped",
            "--generation",
            "1",
            "--out",
            t.path("g1.json").to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("CKR_KEY_UNEXTRACTABLE"), "{stderr}");
    assert!(!t.path("g1.json").exists());
}
