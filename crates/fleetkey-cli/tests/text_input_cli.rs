//! Every reader of text input in the command line, fed junk (issue 11): (a) 300 random bytes
//! from a fixed seed, (b) one line of 9,000 characters, (c) nothing at all. Each is refused
//! with exit 2, a message on stderr naming the field and what was wrong, and nothing on stdout
//! (README: "Bad input exits 2 with a message naming the field and prints nothing on stdout").

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

#[path = "support/cli.rs"]
mod cli;
use cli::{fleetkey, ok};

const KEY: &str = "2b7e151628aed2a6abf7158809cf4f3c";
const SEED: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const LOG: &str = "(1700000000.000000) can0 123#DEADBEEF\n";

/// The three inputs, each with what the message must say about it, whatever the reader.
#[derive(Clone, Copy, Debug)]
enum Junk {
    Random,
    LongLine,
    Empty,
}

impl Junk {
    const ALL: [Junk; 3] = [Junk::Random, Junk::LongLine, Junk::Empty];

    fn bytes(self) -> Vec<u8> {
        match self {
            Junk::Random => {
                // xorshift64*, fixed seed: the same 300 bytes on every run.
                let mut x: u64 = 0x1111_2026_0011_0003;
                let bytes: Vec<u8> = (0..300)
                    .map(|_| {
                        x ^= x >> 12;
                        x ^= x << 25;
                        x ^= x >> 27;
                        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
                    })
                    .collect();
                assert!(std::str::from_utf8(&bytes).is_err());
                bytes
            }
            Junk::LongLine => {
                let mut line = "A".repeat(9000).into_bytes();
                line.push(b'\n');
                line
            }
            Junk::Empty => Vec::new(),
        }
    }
}

struct Outcome {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
}

fn run(home: &Path, args: &[&str], stdin: &[u8]) -> Outcome {
    let mut child = fleetkey(home)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The command may refuse before it reads all of stdin: a broken pipe is fine.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let out = child.wait_with_output().unwrap();
    Outcome {
        code: out.status.code(),
        stdout: out.stdout,
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// One reader: how to feed it the junk (as the file at `junk`, or as stdin), the field its
/// message must name, and what it must say for each kind of junk.
struct Reader<'a> {
    name: &'a str,
    args: Vec<String>,
    stdin: bool,
    field: &'a str,
    says: [&'a str; 3],
    /// Whether the input may come back in the message (it must not: it may be key material,
    /// and 9,000 characters of it help no one). Only the bulk import, for now.
    echoes: bool,
}

struct Setup {
    dir: PathBuf,
    home: PathBuf,
}

impl Setup {
    fn file(&self, name: &str, bytes: &[u8]) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path.to_str().unwrap().to_owned()
    }
}

/// Feeds `reader` each junk; what went wrong, if anything.
fn check(setup: &Setup, reader: &Reader<'_>) -> Vec<String> {
    let mut failures = Vec::new();
    for (junk, says) in Junk::ALL.into_iter().zip(reader.says) {
        let bytes = junk.bytes();
        let path = setup.file("junk", &bytes);
        let args: Vec<&str> = reader
            .args
            .iter()
            .map(|a| {
                if a == "JUNK" {
                    path.as_str()
                } else {
                    a.as_str()
                }
            })
            .collect();
        let stdin: &[u8] = if reader.stdin { &bytes } else { b"" };
        let out = run(&setup.home, &args, stdin);
        let what = format!("{} fed {junk:?}", reader.name);
        if out.code != Some(2) {
            failures.push(format!("{what}: exit {:?}: {}", out.code, out.stderr));
        }
        if !out.stdout.is_empty() {
            failures.push(format!(
                "{what} printed on stdout: {:?}",
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        if !(out.stderr.starts_with("error: ") && out.stderr.contains(reader.field)) {
            failures.push(format!(
                "{what}: {:?} should name {:?}",
                out.stderr, reader.field
            ));
        }
        if !out.stderr.contains(says) {
            failures.push(format!("{what}: {:?} should say {says:?}", out.stderr));
        }
        // No input ever comes back in a message (it may be key material).
        if !reader.echoes && out.stderr.contains("AAAAAAAA") {
            failures.push(format!(
                "{what}: the input is in the message: {:?}",
                out.stderr
            ));
        }
    }
    failures
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn every_text_reader_refuses_junk_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let fleet_home = dir.path().join("fleet");
    ok(
        &fleet_home,
        &[
            "init",
            "--fleet",
            "junk",
            "--scheme",
            "governed",
            "--kdf-log-n",
            "10",
            "--no-backup",
        ],
    );
    let setup = Setup {
        dir: dir.path().to_owned(),
        home: dir.path().join("no-fleet-here"),
    };
    let key = setup.file("session.key", format!("{KEY}\n").as_bytes());
    let log = setup.file("good.log", LOG.as_bytes());
    let built = ok(
        &setup.home,
        &[
            "she",
            "build",
            "--uid",
            "000000000000000000000000000001",
            "--key-id",
            "KEY_1",
            "--auth-id",
            "1",
            "--counter",
            "1",
            "--flags",
            "0",
            "--auth-key-file",
            &key,
            "--new-key-file",
            &key,
        ],
    );
    let built: serde_json::Value = serde_json::from_str(&built).unwrap();
    let (m4, m5) = (built["m4"].as_str().unwrap(), built["m5"].as_str().unwrap());

    // What the candump reader says, and what a hex key reader says.
    let log_says = [
        "not valid UTF-8",
        "longer than 8192 bytes",
        "no frame in the log",
    ];
    let key_says = ["not UTF-8", "longer than 1024 bytes", "empty"];
    let she = |file: &str| {
        let mut args = strings(&[
            "she",
            "build",
            "--uid",
            "000000000000000000000000000001",
            "--key-id",
            "KEY_1",
            "--auth-id",
            "1",
            "--counter",
            "1",
            "--flags",
            "0",
        ]);
        args.extend(strings(&["--auth-key-file", &key, "--new-key-file", &key]));
        let at = args.iter().position(|a| a == file).unwrap();
        args[at + 1] = "JUNK".into();
        args
    };
    let readers = [
        Reader {
            name: "can verify FILE",
            args: strings(&[
                "can",
                "verify",
                "--profile",
                "p1",
                "--key-file",
                &key,
                "JUNK",
            ]),
            stdin: false,
            field: "",
            says: log_says,
            echoes: false,
        },
        Reader {
            name: "can verify (stdin)",
            args: strings(&["can", "verify", "--profile", "p1", "--key-file", &key]),
            stdin: true,
            field: "",
            says: log_says,
            echoes: false,
        },
        Reader {
            name: "can verify --home (fleet keys)",
            args: strings(&["can", "verify", "JUNK"]),
            stdin: false,
            field: "",
            says: log_says,
            echoes: false,
        },
        Reader {
            name: "can sign (stdin)",
            args: strings(&["can", "sign", "--profile", "p1", "--key-file", &key]),
            stdin: true,
            field: "",
            says: log_says,
            echoes: false,
        },
        Reader {
            name: "can sign --seed-file",
            args: strings(&[
                "can",
                "sign",
                "--profile",
                "p1",
                "--seed-file",
                "JUNK",
                "--channel",
                "1",
                "--origin-ms",
                "0",
                "--period-ms",
                "1000",
                &log,
            ]),
            stdin: false,
            field: "--seed-file",
            says: key_says,
            echoes: false,
        },
        Reader {
            name: "can verify --key-file",
            args: strings(&[
                "can",
                "verify",
                "--profile",
                "p1",
                "--key-file",
                "JUNK",
                &log,
            ]),
            stdin: false,
            field: "--key-file",
            says: key_says,
            echoes: false,
        },
        Reader {
            name: "she build --auth-key-file",
            args: she("--auth-key-file"),
            stdin: false,
            field: "--auth-key-file",
            says: key_says,
            echoes: false,
        },
        Reader {
            name: "she build --new-key-file",
            args: she("--new-key-file"),
            stdin: false,
            field: "--new-key-file",
            says: key_says,
            echoes: false,
        },
        Reader {
            name: "she verify --new-key-file",
            args: strings(&[
                "she",
                "verify",
                "--m4",
                m4,
                "--m5",
                m5,
                "--new-key-file",
                "JUNK",
            ]),
            stdin: false,
            field: "--new-key-file",
            says: key_says,
            echoes: false,
        },
        Reader {
            name: "derive (master on stdin)",
            args: strings(&[
                "derive",
                "--usage",
                "auth",
                "--generation",
                "1",
                "--revision",
                "1",
                "--serial",
                "ECU-1",
            ]),
            stdin: true,
            field: "master",
            says: key_says,
            echoes: false,
        },
        Reader {
            name: "roll (seed on stdin)",
            args: strings(&["roll", "--epoch", "1", "--channel", "1"]),
            stdin: true,
            field: "roll seed",
            says: key_says,
            echoes: false,
        },
        Reader {
            name: "init --she-transport-key-file",
            args: strings(&[
                "init",
                "--fleet",
                "x",
                "--scheme",
                "stored",
                "--kdf-log-n",
                "10",
                "--she-transport-key-file",
                "JUNK",
            ]),
            stdin: false,
            field: "--she-transport-key-file",
            says: key_says,
            echoes: false,
        },
        Reader {
            name: "sim gateway --she-transport-key-file",
            args: strings(&[
                "sim",
                "gateway",
                "--ecus",
                "1",
                "--bind",
                "127.0.0.1:9",
                "--factory-dir",
                "factory",
                "--she-transport-key-file",
                "JUNK",
            ]),
            stdin: false,
            field: "--she-transport-key-file",
            says: key_says,
            echoes: false,
        },
        Reader {
            name: "sim ecu --factory",
            args: strings(&["sim", "ecu", "--bind", "127.0.0.1:9", "--factory", "JUNK"]),
            stdin: false,
            field: "--factory",
            says: ["not UTF-8", "expected value", "EOF while parsing"],
            echoes: false,
        },
        Reader {
            name: "master verify --shares",
            args: strings(&["master", "verify", "--shares", "JUNK"]),
            stdin: false,
            field: "share files: share file",
            says: [
                "not UTF-8 text",
                "larger than 4096 bytes",
                "not a share file",
            ],
            echoes: false,
        },
        Reader {
            name: "master restore --shares",
            args: strings(&[
                "master",
                "restore",
                "--shares",
                "JUNK",
                "--key-file",
                dir.path().join("restored.age").to_str().unwrap(),
            ]),
            stdin: false,
            field: "share files: share file",
            says: [
                "not UTF-8 text",
                "larger than 4096 bytes",
                "not a share file",
            ],
            echoes: false,
        },
        Reader {
            name: "governance verify FILE",
            args: strings(&["governance", "verify", "JUNK", "--root-public-key", SEED]),
            stdin: false,
            field: "junk",
            says: [
                "not a governance record",
                "longer than 1024 bytes",
                "not a governance record",
            ],
            echoes: false,
        },
    ];
    let mut failures: Vec<String> = readers.iter().flat_map(|r| check(&setup, r)).collect();
    // The PIN file is read before the PKCS#11 library is loaded: no token needed.
    let pin_file = Reader {
        name: "init --pin-file",
        args: strings(&[
            "init",
            "--fleet",
            "x",
            "--scheme",
            "stored",
            "--module",
            "pkcs11",
            "--pkcs11-module",
            "/nonexistent/libpkcs11.so",
            "--token-label",
            "t",
            "--pin-file",
            "JUNK",
        ]),
        stdin: false,
        field: "PIN file",
        says: [
            "not UTF-8 text",
            "longer than 1024 bytes",
            "empty first line",
        ],
        echoes: false,
    };
    let tls_cert = Reader {
        name: "serve --tls-cert",
        args: strings(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            "JUNK",
            "--tls-key",
            &key,
        ]),
        stdin: false,
        field: "--tls-cert",
        says: ["no CERTIFICATE in the PEM file"; 3],
        echoes: false,
    };
    failures.extend(check(&setup, &pin_file));
    failures.extend(check(&setup, &tls_cert));
    assert!(
        !setup.home.exists(),
        "a refused command created {}",
        setup.home.display()
    );

    // Readers behind an open fleet.
    let fleet = Setup {
        dir: dir.path().to_owned(),
        home: fleet_home,
    };
    for reader in [
        Reader {
            name: "grant issue --public-key-file",
            args: strings(&[
                "grant",
                "issue",
                "--subject",
                "x",
                "--role",
                "technician",
                "--scope",
                "ECU-",
                "--valid-days",
                "1",
                "--public-key-file",
                "JUNK",
                "--out",
                dir.path().join("grant.cose").to_str().unwrap(),
            ]),
            stdin: false,
            field: "--public-key-file",
            says: [
                "neither 32 bytes nor 64 hex characters",
                "longer than 1024 bytes",
                "empty",
            ],
            echoes: false,
        },
        Reader {
            name: "device import CSV",
            args: strings(&["device", "import", "JUNK"]),
            stdin: false,
            field: "",
            says: ["csv line 1", "csv line 1", "must name a `serial` column"],
            echoes: true,
        },
    ] {
        failures.extend(check(&fleet, &reader));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The bulk import refuses a header that is not UTF-8, a line over 8192 bytes and an empty file
/// by name, without echoing the bad bytes back (it once quoted a 9,000-character header whole).
#[test]
fn device_import_refuses_junk_without_echoing_it() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("fleet");
    ok(
        &home,
        &[
            "init",
            "--fleet",
            "csv",
            "--scheme",
            "derived",
            "--kdf-log-n",
            "10",
            "--no-backup",
        ],
    );
    let setup = Setup {
        dir: dir.path().to_owned(),
        home,
    };
    let reader = Reader {
        name: "device import CSV",
        args: strings(&["device", "import", "JUNK"]),
        stdin: false,
        field: "csv line 1",
        says: ["not UTF-8", "longer than", "must name a `serial` column"],
        echoes: false,
    };
    let failures = check(&setup, &reader);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
