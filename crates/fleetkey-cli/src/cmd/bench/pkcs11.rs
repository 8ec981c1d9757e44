//! `fleetkey bench pkcs11`: derivations per second through the PKCS#11 module (one derivation at
//! a time, and the bulk path) beside the token's raw `C_Sign` HMAC-SHA256 rate on the same key
//! type, measured in the same run.
//!
//! The token comes from `FLEETKEY_PKCS11_MODULE`, `FLEETKEY_PKCS11_TOKEN` and
//! `FLEETKEY_PKCS11_PIN`. Without them the command makes a SoftHSM2 token in a temporary
//! directory and runs itself again under that token's `SOFTHSM2_CONF` (SoftHSM reads it once, at
//! `C_Initialize`).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fleetkey::core::derive::{DeviceKeyInputs, Generation, Revision, Serial, Usage};
use fleetkey::module::KeyModule;
use fleetkey::module::pkcs11::cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use fleetkey::module::pkcs11::cryptoki::error::{Error as CkError, RvError};
use fleetkey::module::pkcs11::cryptoki::mechanism::Mechanism;
use fleetkey::module::pkcs11::cryptoki::object::{Attribute, KeyType, ObjectClass};
use fleetkey::module::pkcs11::cryptoki::session::Session;
use fleetkey::module::pkcs11::{PIN_ENV, Pin, Pkcs11Module};
use serde::Serialize;

use crate::cmd::ctx::Global;
use crate::error::CliError;

const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
const MODULE_ENV: &str = "FLEETKEY_PKCS11_MODULE";
const TOKEN_ENV: &str = "FLEETKEY_PKCS11_TOKEN";

#[derive(Serialize)]
struct Report {
    library: PathBuf,
    token: String,
    seconds_per_measurement: f64,
    single_derivations_per_s: f64,
    bulk_derivations_per_s: f64,
    raw_hmac_token_object_per_s: f64,
    raw_hmac_session_object_per_s: f64,
    /// bulk / raw on a session object (the bulk path signs with a session copy).
    bulk_ratio: f64,
    /// single / raw on a token object (`derive` signs with the token object).
    single_ratio: f64,
}

pub(crate) fn run(global: &Global, seconds: f64) -> Result<(), CliError> {
    if !(seconds > 0.0 && seconds <= 3600.0) {
        return Err(CliError::input("--seconds", "between 0 and 3600"));
    }
    match (std::env::var_os(MODULE_ENV), std::env::var(TOKEN_ENV)) {
        (Some(library), Ok(token)) => {
            let pin = Pin::from_env().ok_or_else(|| {
                CliError::input(PIN_ENV, "not set").hint("export the token's user PIN")
            })?;
            measure(global, Path::new(&library), &token, &pin, seconds)
        }
        _ => on_a_temporary_softhsm_token(global, seconds),
    }
}

/// Makes a SoftHSM2 token in a temporary directory and runs this benchmark again on it.
fn on_a_temporary_softhsm_token(global: &Global, seconds: f64) -> Result<(), CliError> {
    if !Path::new(SOFTHSM).exists() {
        return Err(CliError::input(MODULE_ENV, "not set, and SoftHSM2 is not installed")
            .hint("apt-get install softhsm2, or set FLEETKEY_PKCS11_MODULE, FLEETKEY_PKCS11_TOKEN and FLEETKEY_PKCS11_PIN"));
    }
    let io = |what: &str, e: std::io::Error| CliError::input(what, e);
    let dir = tempfile::tempdir().map_err(|e| io("temporary directory", e))?;
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).map_err(|e| io("token directory", e))?;
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .map_err(|e| io("softhsm2.conf", e))?;
    let pin = "bench-pin";
    let out = std::process::Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", "fleetkey-bench"])
        .args(["--pin", pin, "--so-pin", "bench-so-pin"])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .map_err(|e| io("softhsm2-util", e))?;
    if !out.status.success() {
        return Err(CliError::input(
            "softhsm2-util --init-token",
            String::from_utf8_lossy(&out.stderr).trim(),
        ));
    }
    let exe = std::env::current_exe().map_err(|e| io("this program", e))?;
    let mut again = std::process::Command::new(exe);
    if global.json {
        again.arg("--json");
    }
    let status = again
        .args(["bench", "pkcs11", "--seconds", &seconds.to_string()])
        .env("SOFTHSM2_CONF", &conf)
        .env(MODULE_ENV, SOFTHSM)
        .env(TOKEN_ENV, "fleetkey-bench")
        .env(PIN_ENV, pin)
        .status()
        .map_err(|e| io("this program", e))?;
    if status.success() {
        Ok(())
    } else {
        Err(CliError::input(
            "bench pkcs11",
            "the run on the temporary token failed",
        ))
    }
}

fn measure(
    global: &Global,
    library: &Path,
    token: &str,
    pin: &Pin,
    seconds: f64,
) -> Result<(), CliError> {
    let each = Duration::from_secs_f64(seconds / 4.0);
    let namespace = format!("bench-{}", std::process::id());
    let module =
        Pkcs11Module::open(library, token, pin, &namespace).map_err(fleetkey::Error::from)?;
    let generation = Generation(1);
    let result = (|| {
        module.create_master(generation)?;
        let serial = Serial::new(b"VIN00000000012345-ECU03")
            .map_err(|_| fleetkey::ModuleError::Unsupported("the benchmark serial"))?;
        let inputs = |r: u32| DeviceKeyInputs {
            usage: Usage::Auth,
            generation,
            revision: Revision::new(r % (1 << 28)).unwrap_or(Revision::ZERO),
            serial,
        };
        let single = rate(each, |r| {
            module.derive(&inputs(r)).map(|k| {
                black_box(k);
            })
        })?;
        let mut bulk = module.bulk_deriver(generation)?;
        let mut key = [0u8; 16];
        let bulk_rate = rate(each, |r| bulk.derive_into(&inputs(r), &mut key))?;
        drop(bulk);
        let (raw_token, raw_session) = raw_rates(library, token, each)?;
        Ok::<_, fleetkey::ModuleError>((single, bulk_rate, raw_token, raw_session))
    })();
    // A configured token keeps nothing of the benchmark.
    let cleanup = module.destroy_namespace();
    let (single, bulk, raw_token, raw_session) = result.map_err(fleetkey::Error::from)?;
    cleanup.map_err(fleetkey::Error::from)?;
    let report = Report {
        library: library.to_owned(),
        token: token.to_owned(),
        seconds_per_measurement: each.as_secs_f64(),
        single_derivations_per_s: single,
        bulk_derivations_per_s: bulk,
        raw_hmac_token_object_per_s: raw_token,
        raw_hmac_session_object_per_s: raw_session,
        bulk_ratio: bulk / raw_session,
        single_ratio: single / raw_token,
    };
    global.print(&report, |r| {
        format!(
            "PKCS#11 derivations, token {:?} of {} (AUTH keys, one thread):\n\
             {:>12.0} derivations/s, bulk path (session copy of the master)\n\
             {:>12.0} raw C_Sign CKM_SHA256_HMAC/s on a session object (reference)\n\
             {:>12.2} ratio\n\
             {:>12.0} derivations/s, one at a time (token object)\n\
             {:>12.0} raw C_Sign CKM_SHA256_HMAC/s on a token object (reference)\n\
             {:>12.2} ratio",
            r.token,
            r.library.display(),
            r.bulk_derivations_per_s,
            r.raw_hmac_session_object_per_s,
            r.bulk_ratio,
            r.single_derivations_per_s,
            r.raw_hmac_token_object_per_s,
            r.single_ratio
        )
    })
}

/// Calls `f` for `duration`; calls per second.
fn rate<E>(duration: Duration, mut f: impl FnMut(u32) -> Result<(), E>) -> Result<f64, E> {
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < duration {
        for _ in 0..100 {
            f(n)?;
            n = n.wrapping_add(1);
        }
    }
    Ok(f64::from(n) / start.elapsed().as_secs_f64())
}

/// The token's raw HMAC rate: C_Sign over a 56-byte message (the longest derivation input)
/// with a fresh 32-byte generic secret, as a token object and as a session object.
fn raw_rates(
    library: &Path,
    token: &str,
    each: Duration,
) -> Result<(f64, f64), fleetkey::ModuleError> {
    let backend = |operation: &'static str| {
        move |e: CkError| fleetkey::ModuleError::Backend {
            operation,
            detail: e.to_string(),
        }
    };
    // The library is initialised already (by the module): this is the same context.
    let pkcs11 = Pkcs11::new(library).map_err(backend("loading the PKCS#11 library"))?;
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(backend("C_Initialize")(e)),
    }
    let slot = pkcs11
        .get_slots_with_token()
        .map_err(backend("C_GetSlotList"))?
        .into_iter()
        .find(|s| pkcs11.get_token_info(*s).is_ok_and(|i| i.label() == token))
        .ok_or(fleetkey::ModuleError::Unsupported("a token that went away"))?;
    // The process is logged in through the module.
    let session = pkcs11
        .open_rw_session(slot)
        .map_err(backend("C_OpenSession"))?;
    let message = [0x5au8; 56];
    let mut rates = [0.0; 2];
    for (on_token, rate_out) in [true, false].into_iter().zip(&mut rates) {
        let key = generate(&session, on_token).map_err(backend("C_GenerateKey"))?;
        let measured = rate(each, |_| {
            session
                .sign(&Mechanism::Sha256Hmac, key, &message)
                .map(|mac| {
                    black_box(mac);
                })
        })
        .map_err(backend("C_Sign"));
        session
            .destroy_object(key)
            .map_err(backend("C_DestroyObject"))?;
        *rate_out = measured?;
    }
    Ok((rates[0], rates[1]))
}

fn generate(
    session: &Session,
    on_token: bool,
) -> Result<fleetkey::module::pkcs11::cryptoki::object::ObjectHandle, CkError> {
    session.generate_key(
        &Mechanism::GenericSecretKeyGen,
        &[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::ValueLen(32.into()),
            Attribute::Token(on_token),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
        ],
    )
}
