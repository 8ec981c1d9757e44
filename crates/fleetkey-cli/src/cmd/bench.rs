//! `fleetkey bench`: whole-operation throughput on this machine, beside a reference measured in
//! the same run.

use std::hint::black_box;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetkey::fleet::{Access, Fleet, InitOptions, MasterBackup, SecretString, SystemClock};
use fleetkey::model::{DeviceFilter, Scheme};
use fleetkey::module::soft::WorkFactor;
use serde::Serialize;

use crate::cmd::ctx::{Bar, Global};
use crate::error::CliError;

/// Benchmarks.
#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// Bulk import and provisioning of N devices (derived scheme, SQLite, soft module) in a
    /// temporary fleet: wall time, devices/s, peak memory, and derivations/s beside two raw
    /// SHA-256 compressions per derivation (the limit) measured in the same run; each phase also
    /// beside plain rusqlite inserting the same rows (same table, pragmas and batches).
    #[command(
        after_help = "Example:\n  fleetkey bench provision --devices 1000000\n  fleetkey bench provision --devices 1000000 --two-pass --refresh"
    )]
    Provision {
        /// How many devices.
        #[arg(long, default_value_t = 1_000_000)]
        devices: u64,
        /// Import, then `device provision --all`, instead of one pass
        /// (`device import --provision-out`, what a production line does).
        #[arg(long)]
        two_pass: bool,
        /// Then `device refresh --all` of every device (its SHE updates to a file), timed apart.
        #[arg(long)]
        refresh: bool,
    },
    /// Derivations/s through the PKCS#11 module (one at a time, and the bulk path) beside the
    /// token's raw C_Sign HMAC rate measured in the same run. The token comes from
    /// FLEETKEY_PKCS11_MODULE, FLEETKEY_PKCS11_TOKEN and FLEETKEY_PKCS11_PIN; without them, a
    /// SoftHSM2 token in a temporary directory.
    #[command(after_help = "Example:\n  fleetkey bench pkcs11 --seconds 8")]
    Pkcs11 {
        /// Seconds in all (four measurements).
        #[arg(long, default_value_t = 8.0)]
        seconds: f64,
    },
    /// Provisioning requests/s and p50/p99 latency through the HTTP service at several client
    /// concurrencies, SQLite or PostgreSQL, beside the same operation in process.
    Serve(serve::ServeBenchArgs),
    /// One simulated CAN FD bus at full load (64-byte frames back to back): frames/s verified on
    /// one core beside one raw AES-128-CMAC per frame measured in the same run.
    #[cfg(feature = "sim")]
    #[command(after_help = "Example:\n  fleetkey bench bus --frames 1000000 --json")]
    Bus {
        /// How many frames.
        #[arg(long, default_value_t = 500_000)]
        frames: usize,
    },
}

mod load;
mod pkcs11;
mod reference;
mod serve;

#[derive(Serialize)]
struct Report {
    devices: u64,
    csv_write_s: f64,
    import_s: f64,
    provision_s: f64,
    total_s: f64,
    refresh_s: Option<f64>,
    refresh_output_bytes: Option<u64>,
    rusqlite_insert_s: f64,
    devices_per_s: f64,
    peak_rss_mib: f64,
    derivations_per_s: f64,
    reference_two_compressions_per_s: f64,
    ratio: f64,
    output_bytes: u64,
}

/// Peak resident memory of this process (VmHWM), in MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Two SHA-256 compressions per iteration, for `duration`: the one-block HMAC limit.
fn reference_rate(duration: Duration) -> f64 {
    let block = [0x5au8; 64];
    let mut state = [0x6a09_e667u32; 8];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        for _ in 0..1000 {
            sha2::block_api::compress256(&mut state, &[block]);
            sha2::block_api::compress256(&mut state, &[black_box(block)]);
        }
        n += 1000;
    }
    black_box(state);
    n as f64 / start.elapsed().as_secs_f64()
}

fn bench_access() -> Access {
    Access {
        passphrase: SecretString::from("fleetkey bench passphrase".to_owned()),
        actor: "bench".into(),
        clock: Arc::new(SystemClock),
    }
}

pub(crate) fn run(global: &Global, command: Command) -> Result<(), CliError> {
    let (devices, two_pass, refresh) = match command {
        Command::Provision {
            devices,
            two_pass,
            refresh,
        } => (devices, two_pass, refresh),
        Command::Pkcs11 { seconds } => return pkcs11::run(global, seconds),
        Command::Serve(args) => return serve::run(global, args),
        #[cfg(feature = "sim")]
        Command::Bus { frames } => return crate::cmd::sim::bench_bus(global, frames),
    };
    let one_pass = !two_pass;
    let dir = tempfile::tempdir().map_err(|e| CliError::input("temporary directory", e))?;
    let io = |what: &str, e: std::io::Error| CliError::input(what, e);
    let access = bench_access();
    let options = InitOptions {
        fleet_id: "bench".into(),
        scheme: Scheme::Derived,
        she_transport_key: None,
        work_factor: WorkFactor::Log2(10),
        // A throwaway fleet in a temporary directory: nothing to back up.
        backup: MasterBackup::NoBackup,
    };
    let mut fleet = Fleet::init(&dir.path().join("home"), options, access)?;

    let start = Instant::now();
    let csv = dir.path().join("devices.csv");
    {
        let mut w = std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(&csv).map_err(|e| io("csv", e))?,
        );
        writeln!(w, "serial,labels").map_err(|e| io("csv", e))?;
        for i in 0..devices {
            writeln!(w, "VIN{:014}-ECU{:02},line={}", i / 8, i % 8, i % 4)
                .map_err(|e| io("csv", e))?;
        }
        w.flush().map_err(|e| io("csv", e))?;
    }
    let csv_write_s = start.elapsed().as_secs_f64();

    let out_path = dir.path().join("keys.jsonl");
    let mut out = fleetkey::fleet::OutputFile::append(&out_path).map_err(|e| io("output", e))?;
    let bar = Bar::new();
    let start = Instant::now();
    let (import_s, provision_s) = if one_pass {
        fleet.import_csv(&csv, Some(&mut out), &bar)?;
        (start.elapsed().as_secs_f64(), 0.0)
    } else {
        fleet.import_csv(&csv, None, &bar)?;
        let import_s = start.elapsed().as_secs_f64();
        let p = Instant::now();
        fleet.provision_all(&DeviceFilter::default(), &mut out, &bar)?;
        (import_s, p.elapsed().as_secs_f64())
    };
    let total_s = start.elapsed().as_secs_f64();
    let output_bytes = std::fs::metadata(&out_path).map(|m| m.len()).unwrap_or(0);
    drop(out);
    std::fs::remove_file(&out_path).map_err(|e| io("output", e))?;
    let (refresh_s, refresh_output_bytes) = if refresh {
        let path = dir.path().join("updates.jsonl");
        let mut out = fleetkey::fleet::OutputFile::append(&path).map_err(|e| io("output", e))?;
        let start = Instant::now();
        fleet.refresh_all(&DeviceFilter::default(), "bench", &mut out, &bar)?;
        let refresh_s = start.elapsed().as_secs_f64();
        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        drop(out);
        std::fs::remove_file(&path).map_err(|e| io("output", e))?;
        (Some(refresh_s), Some(bytes))
    } else {
        (None, None)
    };
    let peak_rss_mib = peak_rss_mib();
    drop(fleet);
    let rusqlite_insert_s = reference::insert(&dir.path().join("reference.db"), devices)?;

    // Derivation throughput of the same path, and the reference, measured now.
    // The raw derivation rate goes to the key module itself (a throwaway fleet: no audit).
    let module = fleetkey::fleet::open_module(&dir.path().join("home"), &bench_access())?;
    let deriver = module
        .bulk_deriver(fleetkey_core::Generation(1))
        .map_err(fleetkey::Error::from)?;
    let mut deriver = deriver;
    let serial = fleetkey_core::Serial::new(b"VIN00000000012345-ECU03")
        .map_err(|e| CliError::input("serial", e))?;
    let mut key = [0u8; 16];
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < Duration::from_millis(500) {
        for r in 0..1000u32 {
            let inputs = fleetkey_core::DeviceKeyInputs {
                usage: fleetkey_core::Usage::Auth,
                generation: fleetkey_core::Generation(1),
                revision: fleetkey_core::Revision::new(r)
                    .map_err(|e| CliError::input("revision", e))?,
                serial,
            };
            deriver
                .derive_into(&inputs, &mut key)
                .map_err(fleetkey::Error::from)?;
        }
        n += 1000;
    }
    black_box(key);
    let derivations_per_s = n as f64 / t.elapsed().as_secs_f64();
    let reference = reference_rate(Duration::from_millis(500));

    let report = Report {
        devices,
        csv_write_s,
        import_s,
        provision_s,
        total_s,
        refresh_s,
        refresh_output_bytes,
        rusqlite_insert_s,
        devices_per_s: devices as f64 / total_s,
        peak_rss_mib,
        derivations_per_s,
        reference_two_compressions_per_s: reference,
        ratio: derivations_per_s / reference,
        output_bytes,
    };
    global.print(&report, |r| {
        let beside = |s: f64| format!("{:.2}x plain rusqlite", s / r.rusqlite_insert_s);
        let mut text = format!(
            "bulk import + provisioning, derived scheme, SQLite, soft module ({} pass{}):\n\
             {:>12} devices in {:.2} s (import {:.2} s, provision {:.2} s): {:.0} devices/s, {}\n\
             {:>12.2} s plain rusqlite inserting the same rows (same table, pragmas, batches)\n",
            if one_pass { "one" } else { "two" },
            if one_pass { "" } else { "es" },
            r.devices,
            r.total_s,
            r.import_s,
            r.provision_s,
            r.devices_per_s,
            beside(r.total_s),
            r.rusqlite_insert_s,
        );
        if let (Some(s), Some(bytes)) = (r.refresh_s, r.refresh_output_bytes) {
            text.push_str(&format!(
                "{:>12.2} s refresh --all of every device ({:.0} MiB of SHE updates written), {}\n",
                s,
                bytes as f64 / (1024.0 * 1024.0),
                beside(s)
            ));
        }
        text.push_str(&format!(
            "{:>12.1} MiB peak resident memory, {:.0} MiB of key material written\n\
             {:>12.0} derivations/s through the module's bulk path\n\
             {:>12.0} two-compression SHA-256 references/s (the one-block HMAC limit)\n\
             {:>12.2} ratio",
            r.peak_rss_mib,
            r.output_bytes as f64 / (1024.0 * 1024.0),
            r.derivations_per_s,
            r.reference_two_compressions_per_s,
            r.ratio
        ));
        text
    })
}
