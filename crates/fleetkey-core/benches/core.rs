//! Device core throughput, each figure printed beside a reference measured in the same run.
//!
//! `cargo bench -p fleetkey-core --bench core` runs criterion, then prints a table of operations
//! per second and the ratio to the reference: two raw SHA-256 compressions (the limit of a one-block
//! HMAC with precomputed pads) for derivations and session keys, and raw AES-128 block encryptions
//! (the CMAC limit for the same number of blocks) for SecOC frames.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aes::cipher::{BlockCipherEncrypt, KeyInit};
use criterion::{Criterion, Throughput};
use fleetkey_core::derive::{self, Deriver, DeviceKeyInputs, Generation, Revision, Serial, Usage};
use fleetkey_core::roll::{Epoch, Roller};
use fleetkey_core::secoc::{FrameKey, KeyWindow, Profile, Receiver, Sender};
use fleetkey_core::{MasterKey, RollSeed, SessionKey};

const SERIAL: &[u8] = b"VIN-WDB9634031L123456-ECU-07";

fn inputs(serial: &[u8]) -> DeviceKeyInputs<'_> {
    DeviceKeyInputs {
        usage: Usage::Auth,
        generation: Generation(3),
        revision: Revision::new(17).unwrap(),
        serial: Serial::new(serial).unwrap(),
    }
}

fn references(c: &mut Criterion) {
    let mut group = c.benchmark_group("reference");
    group.throughput(Throughput::Elements(1));
    let block = [0x5au8; 64];
    group.bench_function("sha256_two_compressions", |b| {
        let mut state = [0x6a09_e667u32; 8];
        b.iter(|| {
            sha2::block_api::compress256(&mut state, &[block]);
            sha2::block_api::compress256(&mut state, &[black_box(block)]);
            black_box(&state);
        });
    });
    let aes = aes::Aes128::new(&[7u8; 16].into());
    for blocks in [1usize, 2, 5] {
        group.bench_function(format!("aes128_{blocks}_blocks"), |b| {
            let mut block = [0u8; 16].into();
            b.iter(|| {
                for _ in 0..blocks {
                    aes.encrypt_block(&mut block);
                }
                black_box(&block);
            });
        });
    }
    group.finish();
}

fn derivation(c: &mut Criterion) {
    let mut group = c.benchmark_group("derive");
    group.throughput(Throughput::Elements(1));
    let master = MasterKey::from_bytes([0x42; 32]);
    group.bench_function("single", |b| {
        b.iter(|| black_box(derive::derive(&master, black_box(&inputs(SERIAL)))));
    });
    let deriver = Deriver::new(&master);
    group.bench_function("bulk", |b| {
        let mut out = [0u8; 16];
        b.iter(|| {
            deriver.derive_into(black_box(&inputs(SERIAL)), &mut out);
            black_box(&out);
        });
    });
    group.bench_function("hkdf_crate_from_prk", |b| {
        let mut info = [0u8; derive::MAX_INFO_LEN];
        let len = inputs(SERIAL).encode_info(&mut info);
        let mut out = [0u8; 16];
        b.iter(|| {
            let hk = hkdf::Hkdf::<sha2::Sha256>::from_prk(master.expose_secret()).unwrap();
            hk.expand(black_box(&info[..len]), &mut out).unwrap();
            black_box(&out);
        });
    });
    group.finish();

    let mut group = c.benchmark_group("roll");
    group.throughput(Throughput::Elements(1));
    let roller = Roller::new(&RollSeed::from_bytes([9; 32]));
    let mut epoch = 0u64;
    group.bench_function("session_key", |b| {
        b.iter(|| {
            epoch = epoch.wrapping_add(1);
            black_box(roller.session_key(Epoch(epoch), 7))
        });
    });
    group.finish();
}

fn frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("secoc");
    group.throughput(Throughput::Elements(1));
    let key = SessionKey::from_bytes([0x2b; 16]);
    let frame_key = FrameKey::new(&key);
    let window = KeyWindow::single(Epoch(0), &key);
    for (profile, payload_len) in [(Profile::P1, 4usize), (Profile::FD64, 54)] {
        let frame_len = payload_len + profile.overhead();
        let payload = vec![0xa5u8; payload_len];
        let mut sender = Sender::new(profile, 0x0123);
        let mut frame = [0u8; 64];
        group.bench_function(format!("sign_{frame_len}"), |b| {
            b.iter(|| {
                let secured = sender
                    .secure(&frame_key, black_box(&payload), &mut frame)
                    .unwrap();
                black_box(&frame[..secured.len]);
            });
        });
        // A receiver accepts each FV once, so every verify needs a fresh frame: time sign and
        // verify together and subtract the sign figure in the table.
        let mut sender = Sender::new(profile, 0x0123);
        let mut receiver = Receiver::new(profile, 0x0123);
        group.bench_function(format!("sign_verify_{frame_len}"), |b| {
            b.iter(|| {
                let secured = sender.secure(&frame_key, &payload, &mut frame).unwrap();
                black_box(
                    receiver
                        .verify(&window, black_box(&frame[..secured.len]))
                        .unwrap(),
                );
            });
        });
    }
    group.finish();
}

/// Mean nanoseconds per iteration of one benchmark, from criterion's estimates file.
fn mean_ns(dir: &Path, group: &str, bench: &str) -> Option<f64> {
    let path = dir
        .join(group)
        .join(bench)
        .join("new")
        .join("estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["mean"]["point_estimate"].as_f64()
}

fn print_ratios(dir: &Path) {
    let rows: &[(&str, &str, &str, &str, f64)] = &[
        (
            "derivation, single (pads per call)",
            "derive",
            "single",
            "sha256_two_compressions",
            1.0,
        ),
        (
            "derivation, bulk (precomputed pads)",
            "derive",
            "bulk",
            "sha256_two_compressions",
            1.0,
        ),
        (
            "derivation, hkdf crate from_prk+expand",
            "derive",
            "hkdf_crate_from_prk",
            "sha256_two_compressions",
            1.0,
        ),
        (
            "session key (roll v1)",
            "roll",
            "session_key",
            "sha256_two_compressions",
            1.0,
        ),
        (
            "SecOC sign, 8-byte frame (p1)",
            "secoc",
            "sign_8",
            "aes128_1_blocks",
            1.0,
        ),
        (
            "SecOC sign, 64-byte frame (fd64)",
            "secoc",
            "sign_64",
            "aes128_5_blocks",
            1.0,
        ),
    ];
    println!();
    println!(
        "{:<42} {:>12} {:>14} {:>8}   reference",
        "operation", "ops/s", "reference/s", "ratio"
    );
    let reference_group = "reference";
    for (name, group, bench, reference, _) in rows {
        let (Some(ns), Some(ref_ns)) = (
            mean_ns(dir, group, bench),
            mean_ns(dir, reference_group, reference),
        ) else {
            continue;
        };
        println!(
            "{name:<42} {:>12.0} {:>14.0} {:>8.2}   {reference}",
            1e9 / ns,
            1e9 / ref_ns,
            ref_ns / ns
        );
    }
    for len in [8, 64] {
        let reference = if len == 8 {
            "aes128_1_blocks"
        } else {
            "aes128_5_blocks"
        };
        let (Some(both), Some(sign), Some(ref_ns)) = (
            mean_ns(dir, "secoc", &format!("sign_verify_{len}")),
            mean_ns(dir, "secoc", &format!("sign_{len}")),
            mean_ns(dir, reference_group, reference),
        ) else {
            continue;
        };
        let verify = (both - sign).max(1e-3);
        let name = format!("SecOC verify, {len}-byte frame (sign+verify - sign)");
        println!(
            "{name:<42} {:>12.0} {:>14.0} {:>8.2}   {reference}",
            1e9 / verify,
            1e9 / ref_ns,
            ref_ns / verify
        );
    }
    println!("ratio = reference time / operation time: 1.00 means as fast as the reference.");
}

fn main() {
    let dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/criterion");
    let mut c = Criterion::default()
        .output_directory(&dir)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    references(&mut c);
    derivation(&mut c);
    frames(&mut c);
    c.final_summary();
    print_ratios(&dir);
}
