//! Kill tests of the bulk commands that hand key material or key updates to a caller
//! (`device import --provision-out`, `device provision --all`, `device refresh --all`): whatever
//! the moment of a kill -9, and whether the output's reader stopped reading before it, every
//! device the store says was handled has its line among what the caller received over all runs,
//! and lines repeated for one device are identical (docs/manager.md, "Bulk work and interruption").

#[path = "support/cli.rs"]
mod cli;

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cli::{fleetkey, json, ok};

const DEVICES: usize = 2_400;
const BATCH: &str = "200";

/// A small deterministic generator (xorshift64*): the rounds are the same on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

fn init(dir: &Path, scheme: &str) -> PathBuf {
    let home = dir.join("home");
    let mut args = vec![
        "init",
        "--fleet",
        "kills",
        "--scheme",
        scheme,
        "--kdf-log-n",
        "10",
    ];
    if scheme != "stored" {
        args.push("--no-backup");
    }
    ok(&home, &args);
    home
}

fn write_csv(dir: &Path) -> PathBuf {
    let path = dir.join("devices.csv");
    let mut text = String::from("serial,she_uid\n");
    for i in 0..DEVICES {
        text.push_str(&format!("K-{i:05},{:030x}\n", i + 1));
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// The complete lines of a file or stream (a line cut by a kill is not one).
fn complete_lines(bytes: &[u8]) -> Vec<String> {
    let mut lines: Vec<String> = bytes
        .split_inclusive(|b| *b == b'\n')
        .filter(|l| l.ends_with(b"\n"))
        .map(|l| String::from_utf8(l.to_vec()).unwrap())
        .collect();
    for l in &mut lines {
        l.pop();
    }
    lines
}

/// Everything a caller has received: each line, per (serial, generation, revision).
#[derive(Default)]
struct Received {
    lines: HashMap<(String, u64, u64), String>,
    total: usize,
}

impl Received {
    fn add(&mut self, line: &str, kind: Kind) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a delivered line is not JSON ({e}): {line:.80}"));
        let d = match kind {
            Kind::Provisioning => &v,
            Kind::KeyUpdate => &v["device"],
        };
        let key = (
            d["serial"].as_str().unwrap().to_owned(),
            d["generation"].as_u64().unwrap(),
            d["revision"].as_u64().unwrap(),
        );
        if let Some(first) = self.lines.get(&key) {
            assert_eq!(
                first, line,
                "a repeated line differs from the first for {key:?}"
            );
        }
        self.lines.insert(key, line.to_owned());
        self.total += 1;
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Provisioning,
    KeyUpdate,
}

/// One run of a bulk command, writing to `out`.
fn start(home: &Path, args: &[&str], out: &Path) -> Child {
    let mut cmd = fleetkey(home);
    cmd.args(args)
        .arg(out)
        .args(["--batch", BATCH])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd.spawn().unwrap()
}

fn make_fifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "mkfifo");
}

/// Runs `args ... OUT` through `rounds` kills, half of them after the reader of a FIFO stopped
/// reading, half plain kills while it writes to a file; then once to the end. Returns what the
/// caller received.
fn kill_rounds(dir: &Path, home: &Path, args: &[&str], kind: Kind, seed: u64) -> Received {
    let mut rng = Rng(seed);
    let received = Arc::new(Mutex::new(Received::default()));
    for round in 0..6 {
        if round % 2 == 0 {
            // The reader takes some lines, then stops reading (keeps the FIFO open), then the
            // command is killed and the reader goes away with what was left in the pipe.
            let fifo = dir.join(format!("fifo-{round}"));
            make_fifo(&fifo);
            let mut child = start(home, args, &fifo);
            let stop_after = 50 + rng.below(600) as usize;
            let (stalled_tx, stalled_rx) = std::sync::mpsc::channel();
            let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
            let reader = {
                let fifo = fifo.clone();
                let received = received.clone();
                std::thread::spawn(move || {
                    let file = std::fs::File::open(&fifo).unwrap();
                    let mut reader = std::io::BufReader::with_capacity(256, file);
                    let mut line = String::new();
                    for _ in 0..stop_after {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => break,
                            Ok(_) if line.ends_with('\n') => {
                                line.pop();
                                received.lock().unwrap().add(&line, kind);
                            }
                            Ok(_) => break,
                        }
                    }
                    stalled_tx.send(()).unwrap();
                    // Holds the FIFO open, reading nothing, until the command is dead.
                    release_rx.recv().ok();
                })
            };
            stalled_rx.recv().unwrap();
            std::thread::sleep(Duration::from_millis(200 + rng.below(300)));
            child.kill().ok();
            child.wait().unwrap();
            release_tx.send(()).unwrap();
            reader.join().unwrap();
        } else {
            let file = dir.join(format!("out-{round}.jsonl"));
            let mut child = start(home, args, &file);
            let deadline = Instant::now() + Duration::from_millis(100 + rng.below(900));
            while Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            child.kill().ok();
            child.wait().unwrap();
            let bytes = std::fs::read(&file).unwrap_or_default();
            let mut r = received.lock().unwrap();
            for l in complete_lines(&bytes) {
                r.add(&l, kind);
            }
        }
    }
    // The last run goes to the end and sends what the killed ones owe.
    let last = dir.join("out-last.jsonl");
    let mut all = args.to_vec();
    let last_text = last.to_str().unwrap().to_owned();
    all.push(&last_text);
    all.extend(["--batch", BATCH]);
    ok(home, &all);
    let mut r = received.lock().unwrap();
    for l in complete_lines(&std::fs::read(&last).unwrap()) {
        r.add(&l, kind);
    }
    // Nothing is owed any more: another run sends nothing again.
    let again = dir.join("out-again.jsonl");
    all.pop();
    all.pop();
    all.pop();
    let again_text = again.to_str().unwrap().to_owned();
    all.push(&again_text);
    let report = json(home, &all);
    assert_eq!(report["delivery"]["resent"], 0, "{report}");
    assert_eq!(report["delivery"]["unconfirmed_batches"], 0, "{report}");
    for l in complete_lines(&std::fs::read(&again).unwrap_or_default()) {
        r.add(&l, kind);
    }
    std::mem::take(&mut *r)
}

/// Every device the store lists in `state` has its line at its generation and revision.
fn every_handled_device_has_its_line(home: &Path, state: &str, received: &Received) -> usize {
    let devices = json(
        home,
        &["device", "list", "--state", state, "--limit", "100000"],
    );
    let devices = devices.as_array().unwrap();
    for d in devices {
        let key = (
            d["serial"].as_str().unwrap().to_owned(),
            d["generation"].as_u64().unwrap(),
            d["revision"].as_u64().unwrap(),
        );
        assert!(
            received.lines.contains_key(&key),
            "device {key:?} is {state} in the store but its line never reached the caller ({} lines received)",
            received.total
        );
    }
    devices.len()
}

#[test]
fn refresh_all_survives_kills_and_stalled_readers() {
    for (scheme, seed) in [("derived", 7), ("stored", 11)] {
        let dir = tempfile::tempdir().unwrap();
        let home = init(dir.path(), scheme);
        let csv = write_csv(dir.path());
        ok(&home, &["device", "import", csv.to_str().unwrap()]);
        let keys = dir.path().join("keys.jsonl");
        ok(
            &home,
            &[
                "device",
                "provision",
                "--all",
                "--out",
                keys.to_str().unwrap(),
            ],
        );
        if scheme != "stored" {
            ok(
                &home,
                &["generation", "rotate", "--reason", "yearly", "--no-backup"],
            );
        }
        let mut args = vec!["device", "refresh", "--all", "--reason", "migrate"];
        if scheme != "stored" {
            args.extend(["--generation", "1"]);
        }
        args.push("--out");
        let received = kill_rounds(dir.path(), &home, &args, Kind::KeyUpdate, seed);
        let active = every_handled_device_has_its_line(&home, "active", &received);
        assert_eq!(active, DEVICES, "{scheme}");
        let status = json(&home, &["audit", "verify"]);
        assert_eq!(status["ok"], true, "{status}");
        if scheme != "stored" {
            // Every device was migrated to generation 2 exactly once: revision 1 (the rerun
            // after the last kill found none left on generation 1).
            let on_two = json(
                &home,
                &["device", "list", "--generation", "2", "--limit", "100000"],
            );
            assert_eq!(on_two.as_array().unwrap().len(), DEVICES);
            assert!(
                on_two
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|d| d["revision"] == 1),
                "a device was refreshed twice"
            );
        }
    }
}

#[test]
fn provision_all_survives_kills_and_stalled_readers() {
    let dir = tempfile::tempdir().unwrap();
    let home = init(dir.path(), "derived");
    let csv = write_csv(dir.path());
    ok(&home, &["device", "import", csv.to_str().unwrap()]);
    let received = kill_rounds(
        dir.path(),
        &home,
        &["device", "provision", "--all", "--out"],
        Kind::Provisioning,
        23,
    );
    assert_eq!(
        every_handled_device_has_its_line(&home, "active", &received),
        DEVICES
    );
    let status = json(&home, &["audit", "verify"]);
    assert_eq!(status["ok"], true, "{status}");
}

#[test]
fn import_with_provisioning_survives_kills_and_stalled_readers() {
    for (scheme, seed) in [("derived", 31), ("stored", 37)] {
        let dir = tempfile::tempdir().unwrap();
        let home = init(dir.path(), scheme);
        let csv = write_csv(dir.path());
        let csv_text = csv.to_str().unwrap().to_owned();
        let received = kill_rounds(
            dir.path(),
            &home,
            &["device", "import", &csv_text, "--provision-out"],
            Kind::Provisioning,
            seed,
        );
        assert_eq!(
            every_handled_device_has_its_line(&home, "active", &received),
            DEVICES,
            "{scheme}"
        );
        let status = json(&home, &["audit", "verify"]);
        assert_eq!(status["ok"], true, "{status}");
    }
}

#[test]
fn a_reader_that_stops_leaves_the_batches_owed_and_the_command_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let home = init(dir.path(), "derived");
    let csv = write_csv(dir.path());
    ok(&home, &["device", "import", csv.to_str().unwrap()]);
    let fifo = dir.path().join("fifo");
    make_fifo(&fifo);
    // A reader that takes 10 lines and then holds the FIFO without reading; the command, killed
    // while blocked, has committed at most the batch it was writing.
    let mut child = start(&home, &["device", "provision", "--all", "--out"], &fifo);
    let file = std::fs::File::open(&fifo).unwrap();
    let mut reader = std::io::BufReader::with_capacity(64, file);
    let mut taken = Received::default();
    let mut line = String::new();
    for _ in 0..10 {
        line.clear();
        reader.read_line(&mut line).unwrap();
        line.pop();
        taken.add(&line, Kind::Provisioning);
    }
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap();
    child.wait().unwrap();
    drop(reader);
    // The next import without an output says lines are owed; provisioning sends them.
    let (out, _) = cli::ok_with_stderr(&home, &["device", "import", csv.to_str().unwrap()]);
    assert!(out.contains("still owed"), "{out}");
    let rest = dir.path().join("rest.jsonl");
    let report = json(
        &home,
        &[
            "device",
            "provision",
            "--all",
            "--out",
            rest.to_str().unwrap(),
        ],
    );
    assert!(
        report["delivery"]["resent"].as_u64().unwrap() > 0,
        "{report}"
    );
    for l in complete_lines(&std::fs::read(&rest).unwrap()) {
        taken.add(&l, Kind::Provisioning);
    }
    every_handled_device_has_its_line(&home, "active", &taken);
}
