//! Running the `fleetkey` binary in tests: a fleet home, a fixed passphrase and actor, no stdin;
//! and the three outcomes a test checks (success, JSON, a refusal with its exit code and message).

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The passphrase of every test fleet's key file.
pub(crate) const PASSPHRASE: &str = "correct horse battery staple";

/// `fleetkey --home HOME` with the passphrase and actor set and stdin closed.
pub(crate) fn fleetkey(home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetkey"));
    cmd.arg("--home")
        .arg(home)
        .env("FLEETKEY_PASSPHRASE", PASSPHRASE)
        .env("FLEETKEY_ACTOR", "tester")
        .env_remove("FLEETKEY_STORE_URL");
    cmd.stdin(Stdio::null());
    cmd
}

/// Runs `fleetkey --home HOME ARGS...`.
pub(crate) fn run(home: &Path, args: &[&str]) -> Output {
    fleetkey(home).args(args).output().unwrap()
}

/// Runs a command that must succeed; its stdout.
#[track_caller]
pub(crate) fn ok(home: &Path, args: &[&str]) -> String {
    ok_with_stderr(home, args).0
}

/// Runs a command that must succeed; its stdout and stderr.
#[track_caller]
pub(crate) fn ok_with_stderr(home: &Path, args: &[&str]) -> (String, String) {
    let out = run(home, args);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{args:?}: {stderr}");
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

/// Runs a command with `--json` that must succeed; its output parsed.
#[track_caller]
pub(crate) fn json(home: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    serde_json::from_str(&ok(home, &all)).unwrap()
}

/// Runs a command that must fail with exit `code`, print nothing on stdout and say `message` on
/// stderr; its stderr.
#[track_caller]
pub(crate) fn fails(home: &Path, args: &[&str], code: i32, message: &str) -> String {
    let out = run(home, args);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "{args:?} printed on stdout");
    assert!(
        stderr.contains(message),
        "{args:?}: {stderr:?} should say {message:?}"
    );
    stderr
}

/// A free TCP port on loopback (bound and released: a server started next can take it).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A device CSV of `count` serials `<prefix>-00000`, `<prefix>-00001`, ... in `dir`.
pub(crate) fn write_devices_csv(dir: &Path, prefix: &str, count: usize) -> std::path::PathBuf {
    let path = dir.join("devices.csv");
    let mut text = String::from("serial\n");
    for i in 0..count {
        text.push_str(&format!("{prefix}-{i:05}\n"));
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// Waits, up to 60 s, until `GET {base}/healthz` answers 200; panics if `server` exits first.
#[track_caller]
pub(crate) fn wait_healthy(base: &str, server: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    loop {
        if let Ok(r) = agent.get(format!("{base}/healthz")).call()
            && r.status() == 200
        {
            return;
        }
        if let Ok(Some(status)) = server.try_wait() {
            panic!("fleetkey serve at {base} exited: {status}");
        }
        assert!(Instant::now() < deadline, "{base} did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Issues an API token (`token issue --json`) and returns its secret.
#[track_caller]
pub(crate) fn issue_token(home: &Path, principal: &str, role: &str) -> String {
    let issued = json(
        home,
        &["token", "issue", "--principal", principal, "--role", role],
    );
    issued["token"]
        .as_str()
        .unwrap_or_else(|| panic!("token issue --json gives no token: {issued}"))
        .to_owned()
}
