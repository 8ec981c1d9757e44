//! Fleets on a PKCS#11 token (SoftHSM2) from the command line: init, import, provision, refresh,
//! rotate, destroy, audit verify; the stored and governed schemes; the PIN from a file or the
//! environment, never argv; wrong PIN, missing token and a taken fleet id refused with nothing
//! written.
//!
//! Each test makes its own SoftHSM2 token directory and `SOFTHSM2_CONF`, passed to the
//! `fleetkey` processes. Needs the Debian package `softhsm2`; without it the tests fail saying
//! so, unless `FLEETKEY_SKIP_PKCS11=1`.

use std::path::Path;
use std::process::{Command, Output, Stdio};

#[path = "../../fleetkey/tests/support/softhsm.rs"]
mod softhsm;
use softhsm::{LIBRARY, PIN, SoftHsm};

/// A SoftHSM2 token in a temporary directory.
struct Token {
    hsm: SoftHsm,
    label: String,
}

impl Token {
    /// `None` when SoftHSM2 is missing and FLEETKEY_SKIP_PKCS11=1.
    fn new(label: &str) -> Option<Token> {
        Some(Token {
            hsm: SoftHsm::new(&[label])?,
            label: label.to_owned(),
        })
    }

    /// `fleetkey --home <home>` on this token, the PIN in the environment, no passphrase.
    fn fleetkey(&self, home: &Path) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetkey"));
        cmd.arg("--home")
            .arg(home)
            .env("SOFTHSM2_CONF", self.hsm.conf())
            .env("FLEETKEY_PKCS11_PIN", PIN)
            .env_remove("FLEETKEY_PASSPHRASE")
            .env("FLEETKEY_ACTOR", "tester")
            .stdin(Stdio::null());
        cmd
    }

    fn init(&self, home: &Path, fleet: &str, scheme: &str, extra: &[&str]) -> Output {
        let transport = self.hsm.dir().join("transport.hex");
        std::fs::write(&transport, "7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a\n").unwrap();
        self.fleetkey(home)
            .args(["init", "--fleet", fleet, "--scheme", scheme])
            .args(["--module", "pkcs11", "--pkcs11-module", LIBRARY])
            .args(["--token-label", &self.label, "--she-transport-key-file"])
            .arg(&transport)
            .args(extra)
            .output()
            .unwrap()
    }

    #[track_caller]
    fn json(&self, home: &Path, args: &[&str]) -> serde_json::Value {
        let out = self
            .fleetkey(home)
            .args(args)
            .arg("--json")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

#[track_caller]
fn succeeded(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[track_caller]
fn failed_saying(out: &Output, message: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "succeeded: {stderr}");
    assert!(
        stderr.contains(message),
        "{stderr:?} should say {message:?}"
    );
    stderr
}

#[test]
fn derived_fleet_on_a_token_end_to_end() {
    let Some(token) = Token::new("fleet-hsm") else {
        return;
    };
    let home = token.hsm.dir().join("home");
    let pin_file = token.hsm.dir().join("pin");
    std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
    let out = token.init(
        &home,
        "tractors",
        "derived",
        &["--no-backup", "--pin-file", pin_file.to_str().unwrap()],
    );
    succeeded(&out);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(home.join("fleet.json")).unwrap()).unwrap();
    assert_eq!(config["module"]["kind"], "pkcs11");
    assert_eq!(config["module"]["token_label"], "fleet-hsm");
    assert!(!home.join("keys.age").exists(), "a key file beside a token");
    let text = std::fs::read_to_string(home.join("fleet.json")).unwrap();
    assert!(!text.contains(PIN), "fleet.json holds the PIN");

    let csv = token.hsm.dir().join("devices.csv");
    std::fs::write(
        &csv,
        "serial,she_uid,labels\nECU-1,000000000000000000000000001234,line=1\nECU-2,,line=2\n",
    )
    .unwrap();
    assert_eq!(
        token.json(&home, &["device", "import", csv.to_str().unwrap()])["added"],
        2
    );
    let p = token.json(&home, &["device", "provision", "ECU-1"]);
    assert_eq!(p["device"]["state"], "active");
    let auth = p["keys"]["auth"].as_str().unwrap().to_owned();
    assert_eq!(auth.len(), 32);
    assert_eq!(p["she"].as_array().unwrap().len(), 4);
    // The key is stable: provisioning output again (a reprint) gives the same key.
    let u = token.json(&home, &["device", "refresh", "ECU-1", "--reason", "test"]);
    assert_eq!(u["device"]["revision"], 1);
    let g = token.json(
        &home,
        &["generation", "rotate", "--reason", "yearly", "--no-backup"],
    );
    assert_eq!(g["generation"], 2);
    let keys = token.hsm.dir().join("keys.jsonl");
    token.json(
        &home,
        &[
            "device",
            "provision",
            "--all",
            "--out",
            keys.to_str().unwrap(),
        ],
    );
    assert_eq!(std::fs::read_to_string(&keys).unwrap().lines().count(), 1);
    let updates = token.hsm.dir().join("updates.jsonl");
    token.json(
        &home,
        &[
            "device",
            "refresh",
            "--all",
            "--generation",
            "1",
            "--out",
            updates.to_str().unwrap(),
        ],
    );
    assert_eq!(token.json(&home, &["rotation", "status"])["pending"], 0);
    token.json(
        &home,
        &["generation", "destroy", "1", "--reason", "migrated"],
    );
    let audit = token.json(&home, &["audit", "verify"]);
    assert_eq!(audit["ok"], true);
    let status = token.json(&home, &["status"]);
    assert_eq!(status["module"], "pkcs11");

    // Wrong PIN (the PIN file wins over the environment, so change the file): a command that
    // needs the token is refused, the audit chain unchanged; one that reads the store does not
    // log in at all.
    let events = audit["events"].clone();
    std::fs::write(&pin_file, "999999\n").unwrap();
    let out = token
        .fleetkey(&home)
        .args(["device", "refresh", "ECU-1", "--reason", "wrong pin"])
        .output()
        .unwrap();
    failed_saying(&out, "PIN");
    assert_eq!(token.json(&home, &["status"])["module"], "pkcs11");
    std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
    assert_eq!(token.json(&home, &["audit", "verify"])["events"], events);
}

#[test]
fn stored_and_governed_fleets_share_a_token() {
    let Some(token) = Token::new("shared-hsm") else {
        return;
    };
    let stored = token.hsm.dir().join("stored");
    succeeded(&token.init(&stored, "stored-fleet", "stored", &[]));
    let governed = token.hsm.dir().join("governed");
    succeeded(&token.init(&governed, "governed-fleet", "governed", &["--no-backup"]));
    for home in [&stored, &governed] {
        token.json(home, &["device", "add", "ECU-7"]);
        let first = token.json(home, &["device", "provision", "ECU-7"]);
        assert_eq!(first["keys"]["roll_seed"].as_str().unwrap().len(), 64);
        let refreshed = token.json(home, &["device", "refresh", "ECU-7", "--reason", "r"]);
        assert_eq!(refreshed["device"]["revision"], 1);
        assert_eq!(token.json(home, &["audit", "verify"])["ok"], true);
    }
}

#[test]
fn refusals_write_nothing() {
    let Some(token) = Token::new("refusing-hsm") else {
        return;
    };
    // A token label that is not there: the error names it and the labels present.
    let home = token.hsm.dir().join("missing");
    let out = token
        .fleetkey(&home)
        .args(["init", "--fleet", "f", "--scheme", "derived", "--no-backup"])
        .args(["--module", "pkcs11", "--pkcs11-module", LIBRARY])
        .args(["--token-label", "no-such-token"])
        .output()
        .unwrap();
    let stderr = failed_saying(&out, "\"no-such-token\"");
    assert!(stderr.contains("\"refusing-hsm\""), "{stderr}");
    assert!(!home.exists());
    // A wrong PIN.
    let out = token
        .fleetkey(&home)
        .env("FLEETKEY_PKCS11_PIN", "000000")
        .args(["init", "--fleet", "f", "--scheme", "derived", "--no-backup"])
        .args(["--module", "pkcs11", "--pkcs11-module", LIBRARY])
        .args(["--token-label", "refusing-hsm"])
        .output()
        .unwrap();
    failed_saying(&out, "PIN");
    assert!(!home.exists());
    // --module pkcs11 without its options.
    let out = token
        .fleetkey(&home)
        .args(["init", "--fleet", "f", "--scheme", "derived", "--no-backup"])
        .args(["--module", "pkcs11"])
        .output()
        .unwrap();
    failed_saying(&out, "--pkcs11-module");
    // A fleet id the token holds already.
    let first = token.hsm.dir().join("first");
    succeeded(&token.init(&first, "taken", "derived", &["--no-backup"]));
    let second = token.hsm.dir().join("second");
    failed_saying(
        &token.init(&second, "taken", "derived", &["--no-backup"]),
        "already holds objects",
    );
    assert!(!second.exists());
    assert_eq!(token.json(&first, &["audit", "verify"])["ok"], true);
}

/// A governed fleet on a token: its root split into custodian shares at init, rotated (the
/// handover signed in the token, the old root destroyed there), then the token is replaced by an
/// empty one and the master and the current root come back from their shares; the restored root
/// signs records a device that followed the handover accepts.
#[test]
fn governed_root_on_a_token_rotates_and_comes_back_on_a_new_token() {
    use fleetkey_core::governance::{
        Acceptance, GovernanceState, RootKey, verify_generation_record, verify_handover,
    };
    let Some(token) = Token::new("gov-hsm") else {
        return;
    };
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let home = token.hsm.dir().join("home");
    let shares = token.hsm.dir().join("shares");
    let shares_dir = shares.to_str().unwrap();
    let custodians = [
        "--custodian",
        "ann",
        "--custodian",
        "ben",
        "--custodian",
        "cy",
    ];
    let mut extra = custodians.to_vec();
    extra.extend(["--threshold", "2", "--shares-dir", shares_dir]);
    succeeded(&token.init(&home, "gov-fleet", "governed", &extra));
    let first = token.json(&home, &["governance", "publish", "--reason", "first"]);
    let key = |v: &serde_json::Value| -> [u8; 32] {
        hex::decode(v.as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap()
    };
    let kid = hex::decode(first["root_kid"].as_str().unwrap()).unwrap();
    let mut device = GovernanceState::new(
        "gov-fleet",
        RootKey::new(key(&first["root_public_key"]), &kid).unwrap(),
    )
    .unwrap();
    let record = hex::decode(first["record"].as_str().unwrap()).unwrap();
    assert_eq!(
        verify_generation_record(&mut device, &record, now()),
        Ok(Acceptance::Updated)
    );

    let shares2 = token.hsm.dir().join("shares-root2");
    let mut extra = vec!["governance", "rotate-root", "--reason", "yearly"];
    extra.extend(custodians);
    extra.extend([
        "--threshold",
        "2",
        "--shares-dir",
        shares2.to_str().unwrap(),
    ]);
    let rotated = token.json(&home, &extra);
    assert_eq!(rotated["old_root_public_key"], first["root_public_key"]);
    let handover = hex::decode(rotated["handover"].as_str().unwrap()).unwrap();
    assert_eq!(verify_handover(&mut device, &handover, now()), Ok(()));

    // The token is lost: a new empty one takes its place in fleet.json.
    let out = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", "gov-hsm-2"])
        .args(["--pin", PIN, "--so-pin", "13579111"])
        .env("SOFTHSM2_CONF", token.hsm.conf())
        .output()
        .unwrap();
    succeeded(&out);
    let config_path = home.join("fleet.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    let module = config
        .as_object_mut()
        .unwrap()
        .values_mut()
        .find(|v| v.get("token_label").is_some())
        .unwrap();
    module["token_label"] = "gov-hsm-2".into();
    std::fs::write(&config_path, serde_json::to_string(&config).unwrap()).unwrap();
    let out = token
        .fleetkey(&home)
        .args(["governance", "publish", "--reason", "no root"])
        .output()
        .unwrap();
    failed_saying(&out, "the key module has no governance root");

    let files = |dir: &Path, prefix: &str| -> Vec<String> {
        let mut found: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with(prefix))
            .map(|p| p.to_str().unwrap().to_owned())
            .collect();
        found.sort();
        found
    };
    let master = files(&shares, "gov-fleet-g1-share-");
    let root1 = files(&shares, "gov-fleet-root1-share-");
    let root2 = files(&shares2, "gov-fleet-root2-share-");
    token.json(
        &home,
        &["master", "restore", "--shares", &master[0], &master[1]],
    );
    // Root 1's shares are of the root before the handover: refused by the pinned key.
    let out = token
        .fleetkey(&home)
        .args([
            "governance",
            "restore-root",
            "--shares",
            &root1[0],
            &root1[2],
        ])
        .output()
        .unwrap();
    failed_saying(&out, "but the fleet pins");
    let restored = token.json(
        &home,
        &[
            "governance",
            "restore-root",
            "--shares",
            &root2[1],
            &root2[2],
        ],
    );
    assert_eq!(restored["public_key"], rotated["root_public_key"]);
    assert_eq!(restored["module"], "pkcs11");
    let next = token.json(&home, &["governance", "publish", "--reason", "new token"]);
    let record = hex::decode(next["record"].as_str().unwrap()).unwrap();
    assert_eq!(
        verify_generation_record(&mut device, &record, now()),
        Ok(Acceptance::Updated)
    );
    assert_eq!(token.json(&home, &["audit", "verify"])["ok"], true);
}
