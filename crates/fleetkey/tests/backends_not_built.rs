//! A fleet configured for a backend that this build leaves out fails with `Error::NotBuilt`
//! naming the cargo feature, at init (before anything is created) and at open. These checks run
//! in a build without the backend features: `cargo test -p fleetkey --no-default-features --test
//! backends_not_built` (in `.ci/run`); with both features this file has no tests.

#![allow(
    dead_code,
    unused_imports,
    reason = "with a backend feature its test is compiled out, and helpers only it uses"
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use fleetkey::error::Error;
use fleetkey::fleet::{Access, Clock, Fleet, InitOptions, MasterBackup, SecretString};
use fleetkey::home::{FleetConfig, ModuleConfig, StoreConfig};
use fleetkey::model::Scheme;
use fleetkey::module::soft::WorkFactor;

struct TestClock(AtomicI64);
impl Clock for TestClock {
    fn now_ms(&self) -> i64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

fn access() -> Access {
    Access {
        passphrase: SecretString::from("correct horse battery staple".to_owned()),
        actor: "test".into(),
        clock: Arc::new(TestClock(AtomicI64::new(1_767_225_600_000))),
    }
}

fn options() -> InitOptions {
    InitOptions {
        fleet_id: "tractors".into(),
        scheme: Scheme::Derived,
        she_transport_key: None,
        work_factor: WorkFactor::Log2(4),
        backup: MasterBackup::NoBackup,
    }
}

fn token() -> ModuleConfig {
    ModuleConfig::Pkcs11 {
        library: PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"),
        token_label: "fleetkey-test".into(),
        pin_file: None,
        backup_by_trusted_wrap: false,
    }
}

fn postgres() -> StoreConfig {
    StoreConfig::Postgres {
        schema: "tractors".into(),
        url: Some("postgres://nobody@127.0.0.1:1/none".into()),
        url_file: None,
    }
}

fn soft() -> ModuleConfig {
    FleetConfig::embedded("tractors", Scheme::Derived).module
}

fn sqlite() -> StoreConfig {
    FleetConfig::embedded("tractors", Scheme::Derived).store
}

/// `result` is `NotBuilt` for `feature`, with a message that names it.
fn assert_not_built<T>(result: Result<T, Error>, feature: &str) {
    let Err(e) = result else {
        panic!("opened a fleet on a backend that is not built")
    };
    assert!(
        matches!(&e, Error::NotBuilt { feature: f, .. } if *f == feature),
        "{e:?}"
    );
    assert!(e.to_string().contains(&format!("`{feature}`")), "{e}");
}

/// A soft fleet whose configuration is then changed to name `module` and `store`.
fn reconfigured(dir: &Path, module: ModuleConfig, store: StoreConfig) -> PathBuf {
    let home = dir.join("home");
    drop(Fleet::init(&home, options(), access()).unwrap());
    let mut config = FleetConfig::load(&home).unwrap();
    config.module = module;
    config.store = store;
    config.save(&home).unwrap();
    home
}

#[cfg(not(feature = "pkcs11"))]
#[test]
fn a_fleet_on_a_token_is_not_built_without_pkcs11() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("new");
    assert_not_built(
        Fleet::init_with_module(&home, token(), options(), access()),
        "pkcs11",
    );
    assert!(!home.exists(), "nothing is created");

    let home = reconfigured(dir.path(), token(), sqlite());
    assert_not_built(Fleet::open(&home, access()), "pkcs11");
    assert_not_built(fleetkey::fleet::open_module(&home, &access()), "pkcs11");
}

#[cfg(not(feature = "postgres"))]
#[test]
fn a_fleet_on_postgresql_is_not_built_without_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("new");
    assert_not_built(
        Fleet::init_with(&home, soft(), postgres(), options(), access()),
        "postgres",
    );
    assert!(!home.exists(), "nothing is created");

    let home = reconfigured(dir.path(), soft(), postgres());
    assert_not_built(Fleet::open(&home, access()), "postgres");
}
