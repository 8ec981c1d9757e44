//! A fleet: its configuration, key module and store, and the operations on them.
//!
//! Every operation runs in one store transaction that also appends its audit event, so a change
//! and its record commit together or not at all. Key module calls that create or destroy objects
//! happen before (create) or after (destroy) the transaction that records them, so a crash leaves
//! at worst an unused module object, never a record pointing at a missing one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fleetkey_core::Key128;
use serde::Serialize;

use crate::audit::{AuditDraft, AuditEvent, AuditFilter};
use crate::error::{Error, StoreError};
use crate::home::{FleetConfig, ModuleConfig, StoreConfig};
use crate::lifecycle::State;
use crate::model::{
    Change, DeviceSerial, FleetInfo, GenerationRecord, Scheme, UnixMillis, WrappedKey,
};
use crate::module::KeyModule;
pub use age::secrecy::SecretString;

use age::secrecy::ExposeSecret;

use crate::module::soft::{SoftModule, WorkFactor};
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, Tx, read_tx, transact};

mod bulk;
mod ceremony;
pub mod delivery;
mod devices;
mod generations;
mod gov_store;
pub mod governance;
pub mod group;
pub mod lifecycle;
mod lines;
pub mod material;
pub mod network;
mod pipeline;
pub mod policy;
pub mod root;
pub mod scheme;
mod tokens;

pub use crate::backup::MasterBackup;
pub use bulk::{BATCH, BulkReport, ImportReport, ImportRow, MAX_CSV_LINE, Progress, parse_csv};
pub use ceremony::{BACKUP_ACTION, RESTORE_ACTION};
pub use delivery::{DeliveryKind, DeliveryReport, Discard, Output, OutputFile};
pub use devices::{KeyUpdate, NewDevice, Provisioning};
pub use generations::{GenerationCount, RotationStatus};
pub use tokens::Claim;

/// The store meta key of the SHE transport key, wrapped under the module's KEK.
const META_TRANSPORT_KEY: &str = "she.transport_key";

/// Where "now" comes from: the system clock, or a fixed one in tests.
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> UnixMillis;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> UnixMillis {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
    }
}

/// How to open a fleet's secrets and who is acting.
pub struct Access {
    /// The soft key file's passphrase.
    pub passphrase: SecretString,
    /// Who acts (recorded in every change and audit event).
    pub actor: String,
    /// Where time comes from.
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("actor", &self.actor)
            .finish_non_exhaustive()
    }
}

/// What `init` creates. Debug says whether there is a transport key, never the key.
pub struct InitOptions {
    /// Fleet id.
    pub fleet_id: String,
    /// Key scheme.
    pub scheme: Scheme,
    /// The factory transport key of the fleet's SHEs (their MASTER_ECU_KEY at delivery), kept
    /// wrapped under the KEK; without it provisioning gives no SHE messages.
    pub she_transport_key: Option<Key128>,
    /// The soft key file's scrypt work factor (age's default unless tests or demos lower it).
    pub work_factor: WorkFactor,
    /// How generation 1's master is backed up (derived and governed schemes; the stored scheme
    /// has no master and takes only [`MasterBackup::NoBackup`]).
    pub backup: MasterBackup,
}

impl std::fmt::Debug for InitOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitOptions")
            .field("fleet_id", &self.fleet_id)
            .field("scheme", &self.scheme)
            .field("she_transport_key", &self.she_transport_key.is_some())
            .field("work_factor", &self.work_factor)
            .field("backup", &self.backup)
            .finish_non_exhaustive()
    }
}

/// Opens a fleet's key module (the soft key file's scrypt unlock, or the token login) when an
/// operation first needs a key: see [`Fleet::open_with_opener`].
pub type ModuleOpener = Box<dyn Fn() -> Result<Arc<dyn KeyModule>, Error> + Send + Sync>;

/// The key module of a fleet handle: open already, or opened on first use (once; an opener that
/// fails is tried again on the next use).
struct LazyModule {
    kind: &'static str,
    module: std::sync::OnceLock<Arc<dyn KeyModule>>,
    opener: Option<ModuleOpener>,
}

impl LazyModule {
    fn open(module: Arc<dyn KeyModule>) -> Self {
        let kind = module.kind();
        LazyModule {
            kind,
            module: std::sync::OnceLock::from(crate::stats::Counted::wrap(module)),
            opener: None,
        }
    }

    fn lazy(config: &ModuleConfig, opener: ModuleOpener) -> Self {
        LazyModule {
            kind: module_kind(config),
            module: std::sync::OnceLock::new(),
            opener: Some(opener),
        }
    }

    /// The module, opened now if it was not yet.
    fn get(&self) -> Result<&dyn KeyModule, Error> {
        if let Some(module) = self.module.get() {
            return Ok(module.as_ref());
        }
        let opener = self.opener.as_ref().ok_or(Error::NoKeyModule)?;
        let opened = crate::stats::Counted::wrap(opener()?);
        Ok(self.module.get_or_init(|| opened).as_ref())
    }

    /// The module, opened now if it was not yet, to share with worker threads.
    fn shared(&self) -> Result<Arc<dyn KeyModule>, Error> {
        self.get()?;
        self.module.get().cloned().ok_or(Error::NoKeyModule)
    }

    /// The module kind (`soft`, `pkcs11`), without opening it.
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn is_open(&self) -> bool {
        self.module.get().is_some()
    }
}

/// The kind of module a configuration names, as [`KeyModule::kind`] says it.
fn module_kind(config: &ModuleConfig) -> &'static str {
    match config {
        ModuleConfig::Soft { .. } => "soft",
        ModuleConfig::Pkcs11 { .. } => "pkcs11",
    }
}

/// An open fleet: its configuration, store and key module (opened already, or when an operation
/// first needs a key: [`Fleet::open_with_opener`]).
pub struct Fleet {
    home: PathBuf,
    config: FleetConfig,
    module: LazyModule,
    store: Box<dyn Store>,
    access: Access,
    /// Devices per transaction in bulk work.
    batch: usize,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("home", &self.home)
            .field("config", &self.config)
            .field("module_open", &self.module.is_open())
            .finish_non_exhaustive()
    }
}

/// A summary of the fleet for `fleetkey status`.
#[derive(Debug, Clone, Serialize)]
pub struct FleetStatus {
    /// The fleet.
    pub fleet: FleetInfo,
    /// The key module kind.
    pub module: &'static str,
    /// The store kind.
    pub store: &'static str,
    /// Generations with their states.
    pub generations: Vec<GenerationRecord>,
    /// Devices by state.
    pub devices: Vec<(State, u64)>,
    /// Audit events so far.
    pub audit_events: u64,
}

impl Fleet {
    /// Creates a fleet home on the embedded defaults (SQLite, soft module): the key file (with
    /// the KEK, generation 1's master for derived schemes, the governance root for governed),
    /// the store, then the configuration, which marks the home complete. On failure, what was
    /// created is removed.
    pub fn init(home: &Path, options: InitOptions, access: Access) -> Result<Fleet, Error> {
        let module = ModuleConfig::Soft {
            file: crate::home::KEY_FILE.into(),
        };
        Self::init_with_module(home, module, options, access)
    }

    /// [`Fleet::init`] with another key module (a PKCS#11 token: its objects are namespaced by
    /// the fleet id, which must have none there yet). On failure the objects created are
    /// destroyed too.
    pub fn init_with_module(
        home: &Path,
        module: ModuleConfig,
        options: InitOptions,
        access: Access,
    ) -> Result<Fleet, Error> {
        let store = StoreConfig::Sqlite {
            file: crate::home::STORE_FILE.into(),
        };
        Self::init_with(home, module, store, options, access)
    }

    /// [`Fleet::init_with_module`] with another store too: a PostgreSQL schema (the URL as
    /// [`StoreConfig::postgres_url`] finds it), which must hold no fleet yet.
    pub fn init_with(
        home: &Path,
        module: ModuleConfig,
        store: StoreConfig,
        options: InitOptions,
        access: Access,
    ) -> Result<Fleet, Error> {
        if home.join(crate::home::CONFIG_FILE).exists() {
            return Err(Error::FleetExists(home.to_owned()));
        }
        validate_fleet_id(&options.fleet_id)?;
        check_built(&module, &store)?;
        if let MasterBackup::Shares {
            threshold,
            custodians,
            ..
        } = &options.backup
        {
            crate::backup::check_split(*threshold, custodians)?;
        }
        #[cfg(feature = "pkcs11")]
        if let ModuleConfig::Pkcs11 { token_label, .. } = &module
            && !open_pkcs11(&module, &options.fleet_id)?.is_empty()?
        {
            return Err(Error::TokenHoldsFleet {
                token_label: token_label.clone(),
                fleet: options.fleet_id.clone(),
            });
        }
        let created_dir = !home.exists();
        std::fs::create_dir_all(home).map_err(|source| Error::Io {
            path: home.to_owned(),
            source,
        })?;
        let mut config = FleetConfig::embedded(&options.fleet_id, options.scheme);
        config.module = module;
        config.store = store;
        #[cfg(feature = "pkcs11")]
        let (fleet_id, module_config) = (options.fleet_id.clone(), config.module.clone());
        let result = Self::create_in(home, config, options, access);
        #[cfg(feature = "pkcs11")]
        if let (Err(_), ModuleConfig::Pkcs11 { .. }) = (&result, &module_config) {
            // Checked empty before anything was created: all there is of the fleet is ours.
            if let Ok(module) = open_pkcs11(&module_config, &fleet_id) {
                let _ = module.destroy_namespace();
            }
        }
        if result.is_err() {
            for file in [
                crate::home::KEY_FILE,
                "keys.age.lock",
                crate::home::STORE_FILE,
                "fleet.db-wal",
                "fleet.db-shm",
            ] {
                let _ = std::fs::remove_file(home.join(file));
            }
            if created_dir {
                let _ = std::fs::remove_dir(home);
            }
        }
        result
    }

    fn create_in(
        home: &Path,
        config: FleetConfig,
        options: InitOptions,
        access: Access,
    ) -> Result<Fleet, Error> {
        let module: Arc<dyn KeyModule> = match &config.module {
            ModuleConfig::Soft { file } => Arc::new(SoftModule::create_with(
                home.join(file),
                access.passphrase.expose_secret(),
                options.work_factor,
            )?),
            ModuleConfig::Pkcs11 { .. } => pkcs11_module(&config.module, &options.fleet_id)?,
        };
        module.ensure_kek()?;
        let derived = options.scheme.derives_from_master();
        let new_master = if derived {
            Some(ceremony::create_master(
                module.as_ref(),
                &options.fleet_id,
                1,
                &options.backup,
                access.clock.now_ms(),
            )?)
        } else if options.backup != MasterBackup::NoBackup {
            return Err(Error::SharesWithoutMaster(options.scheme));
        } else {
            None
        };
        let new_root = match options.scheme {
            Scheme::Governed => Some(root::create_root(
                module.as_ref(),
                &options.fleet_id,
                &options.backup,
                access.clock.now_ms(),
            )?),
            _ => None,
        };
        let signing_key = new_root.as_ref().map(|r| hex::encode(r.public));
        let wrapped_transport = options
            .she_transport_key
            .as_ref()
            .map(|k| module.wrap(k.expose_secret()))
            .transpose()?;
        let store = open_store(home, &config.store, true)?;
        let mut fleet = Fleet {
            home: home.to_owned(),
            config,
            module: LazyModule::open(module),
            store,
            access,
            batch: BATCH,
        };
        let change = fleet.change("fleet created");
        let info = FleetInfo {
            id: options.fleet_id.clone(),
            scheme: options.scheme,
            current_generation: derived.then_some(1),
            created_at: change.at,
        };
        let mut drafts = vec![fleet.draft(
            "fleet.init",
            None,
            vec![],
            serde_json::json!({"fleet": info.id, "scheme": info.scheme, "module": fleet.module.kind(),
                               "store": fleet.store.kind(), "governance_root": signing_key,
                               "she_transport_key": wrapped_transport.is_some()}),
        )];
        if derived {
            drafts.push(fleet.draft(
                "generation.create",
                Some(1),
                vec![],
                serde_json::json!({"state": "pre-active"}),
            ));
            drafts.push(fleet.draft(
                "generation.activate",
                Some(1),
                vec![],
                serde_json::json!({"state": "active", "current": true}),
            ));
        }
        if let Some(new_master) = &new_master {
            drafts.push(fleet.draft(
                ceremony::BACKUP_ACTION,
                Some(1),
                vec![],
                new_master.details.clone(),
            ));
        }
        if let Some(new_root) = &new_root {
            drafts.push(fleet.draft(
                root::ROOT_BACKUP_ACTION,
                None,
                vec![],
                new_root.details.clone(),
            ));
        }
        transact(fleet.store.as_mut(), |tx| {
            if let Some(new_root) = &new_root {
                root::record_first_root(tx, &new_root.public)?;
            }
            if tx.fleet()?.is_some() {
                return Err(Error::StoreHoldsFleet);
            }
            tx.put_fleet(&info)?;
            if derived {
                tx.insert_generation(&GenerationRecord {
                    generation: 1,
                    state: State::Active,
                    changed: change.clone(),
                    created_at: change.at,
                })?;
            }
            if let Some(w) = &wrapped_transport {
                tx.put_meta(META_TRANSPORT_KEY, &hex::encode(&w.0))?;
            }
            for d in &drafts {
                tx.append_audit(d.clone())?;
            }
            Ok(())
        })?;
        fleet.config.save(home)?;
        if let Some(new_master) = new_master {
            new_master.keep();
        }
        if let Some(new_root) = new_root {
            new_root.keep();
        }
        Ok(fleet)
    }

    /// Opens an existing fleet home, its key module unlocked now (the soft key file under the
    /// access's passphrase, or the token's login): a wrong passphrase is refused here.
    pub fn open(home: &Path, access: Access) -> Result<Fleet, Error> {
        let module = open_module(home, &access)?;
        Self::open_with_module(home, module, access)
    }

    /// Opens an existing fleet home, its configuration and store; the key module is opened by
    /// `opener` when an operation first needs a key (e.g. an opener that only then asks for the
    /// passphrase). Reading the fleet (status, lists, audit, tokens, grants, the governance
    /// record) never calls it, so costs no scrypt unlock and no login; a wrong passphrase is
    /// refused by the first operation that needs a key, before it changes anything.
    pub fn open_with_opener(
        home: &Path,
        access: Access,
        opener: ModuleOpener,
    ) -> Result<Fleet, Error> {
        let config = FleetConfig::load(home)?;
        let store = open_store(home, &config.store, false)?;
        Ok(Fleet {
            home: home.to_owned(),
            module: LazyModule::lazy(&config.module, opener),
            config,
            store,
            access,
            batch: BATCH,
        })
    }

    /// Opens an existing fleet home with a key module opened already by [`open_module`]: many
    /// handles (each with its own store connection, as a service's workers need) share one
    /// module, unlocked once.
    pub fn open_with_module(
        home: &Path,
        module: Arc<dyn KeyModule>,
        access: Access,
    ) -> Result<Fleet, Error> {
        let config = FleetConfig::load(home)?;
        let store = open_store(home, &config.store, false)?;
        Ok(Fleet {
            home: home.to_owned(),
            config,
            module: LazyModule::open(module),
            store,
            access,
            batch: BATCH,
        })
    }

    /// The home directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The configuration.
    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    /// The key module, opened now if no operation has needed it yet: only for the fleet's own
    /// operations, which audit what they do with it.
    pub(crate) fn module(&self) -> Result<&dyn KeyModule, Error> {
        self.module.get()
    }

    /// The store, for direct reads and tests.
    pub fn store_mut(&mut self) -> &mut dyn Store {
        self.store.as_mut()
    }

    /// The fleet record.
    pub fn info(&mut self) -> Result<FleetInfo, Error> {
        read_tx(self.store.as_mut(), |tx| fleet_info(tx))
    }

    /// A summary: generations, devices by state, audit length.
    pub fn status(&mut self) -> Result<FleetStatus, Error> {
        let module = self.module.kind();
        let store = self.store.kind();
        read_tx(self.store.as_mut(), |tx| {
            let fleet = fleet_info(tx)?;
            let generations = tx.generations()?;
            let devices = tx.count_devices_by_state()?;
            let audit_events = tx.audit_head()?.map_or(0, |(seq, _)| seq);
            Ok(FleetStatus {
                fleet,
                module,
                store,
                generations,
                devices,
                audit_events,
            })
        })
    }

    /// A change record stamped now by the acting user.
    pub(crate) fn change(&self, reason: &str) -> Change {
        Change {
            at: self.access.clock.now_ms(),
            actor: self.access.actor.clone(),
            reason: reason.to_owned(),
        }
    }

    /// An audit draft stamped now by the acting user.
    pub(crate) fn draft(
        &self,
        action: &str,
        generation: Option<u32>,
        subjects: Vec<DeviceSerial>,
        details: serde_json::Value,
    ) -> AuditDraft {
        AuditDraft {
            at: self.access.clock.now_ms(),
            actor: self.access.actor.clone(),
            action: action.to_owned(),
            generation,
            subjects,
            details,
        }
    }

    /// The SHE transport key, unwrapped, if the fleet has one.
    pub(crate) fn transport_key(&mut self) -> Result<Option<Key128>, Error> {
        let module = self.module.get()?;
        read_tx(self.store.as_mut(), |tx| transport_key_in(tx, module))
    }

    /// Sets (or replaces) the SHE transport key.
    pub fn set_transport_key(&mut self, key: &Key128) -> Result<(), Error> {
        let wrapped = self.module.get()?.wrap(key.expose_secret())?;
        let draft = self.draft(
            "fleet.she_transport_key",
            None,
            vec![],
            serde_json::json!({"set": true}),
        );
        transact(self.store.as_mut(), |tx| {
            tx.put_meta(META_TRANSPORT_KEY, &hex::encode(&wrapped.0))?;
            tx.append_audit(draft.clone())?;
            Ok(())
        })
    }

    /// Checks the whole audit record ([`crate::store::verify_audit`]: the chain, its head, and the
    /// index the audit views filter on); returns the number of events.
    pub fn audit_verify(&mut self) -> Result<u64, Error> {
        read_tx(self.store.as_mut(), crate::store::verify_audit)
    }

    /// Audit events matching a filter, oldest first, after `after_seq`, at most `limit`.
    pub fn audit_show(
        &mut self,
        filter: &AuditFilter,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, Error> {
        read_tx(self.store.as_mut(), |tx| {
            Ok(tx.audit_events(filter, after_seq, limit)?)
        })
    }
}

/// Opens the key module of the fleet at `home` (the soft file under the access's passphrase, or
/// the PKCS#11 token), to share between [`Fleet::open_with_module`] handles.
pub fn open_module(home: &Path, access: &Access) -> Result<Arc<dyn KeyModule>, Error> {
    open_module_with(home, &FleetConfig::load(home)?, &access.passphrase)
}

fn open_module_with(
    home: &Path,
    config: &FleetConfig,
    passphrase: &SecretString,
) -> Result<Arc<dyn KeyModule>, Error> {
    Ok(match &config.module {
        ModuleConfig::Soft { file } => Arc::new(SoftModule::open(
            home.join(file),
            passphrase.expose_secret(),
        )?),
        ModuleConfig::Pkcs11 { .. } => pkcs11_module(&config.module, &config.fleet_id)?,
    })
}

/// Opens (or, at init, creates) the store a configuration names.
fn open_store(home: &Path, config: &StoreConfig, create: bool) -> Result<Box<dyn Store>, Error> {
    Ok(match config {
        StoreConfig::Sqlite { file } if create => Box::new(SqliteStore::open(home.join(file))?),
        StoreConfig::Sqlite { file } => Box::new(SqliteStore::open_existing(home.join(file))?),
        #[cfg(not(feature = "postgres"))]
        StoreConfig::Postgres { .. } => return Err(NOT_BUILT_POSTGRES),
        #[cfg(feature = "postgres")]
        StoreConfig::Postgres { schema, .. } => {
            let url = config.postgres_url(home)?.unwrap_or_default();
            let options = crate::store::postgres::PostgresOptions {
                schema: schema.clone(),
                ..Default::default()
            };
            let store = if create {
                crate::store::postgres::PostgresStore::connect_with(&url, &options)
            } else {
                crate::store::postgres::PostgresStore::connect_existing(&url, &options)
            };
            Box::new(store.map_err(|e| match e {
                StoreError::NotFound(what) => Error::NoFleetStore(what),
                other => Error::Store(other),
            })?)
        }
    })
}

/// Refuses a configuration that needs a backend this build leaves out ([`Error::NotBuilt`]).
fn check_built(module: &ModuleConfig, store: &StoreConfig) -> Result<(), Error> {
    if cfg!(not(feature = "pkcs11")) && matches!(module, ModuleConfig::Pkcs11 { .. }) {
        return Err(NOT_BUILT_PKCS11);
    }
    if cfg!(not(feature = "postgres")) && matches!(store, StoreConfig::Postgres { .. }) {
        return Err(NOT_BUILT_POSTGRES);
    }
    Ok(())
}

/// A fleet on a PKCS#11 token, in a build without the `pkcs11` feature.
const NOT_BUILT_PKCS11: Error = Error::NotBuilt {
    backend: "PKCS#11 key module",
    feature: "pkcs11",
};

/// A fleet on a PostgreSQL store, in a build without the `postgres` feature.
const NOT_BUILT_POSTGRES: Error = Error::NotBuilt {
    backend: "PostgreSQL store",
    feature: "postgres",
};

/// The PKCS#11 module of a configuration, to share.
#[cfg(feature = "pkcs11")]
fn pkcs11_module(config: &ModuleConfig, fleet_id: &str) -> Result<Arc<dyn KeyModule>, Error> {
    Ok(Arc::new(open_pkcs11(config, fleet_id)?))
}

/// Without the `pkcs11` feature a fleet on a token does not open.
#[cfg(not(feature = "pkcs11"))]
fn pkcs11_module(_config: &ModuleConfig, _fleet_id: &str) -> Result<Arc<dyn KeyModule>, Error> {
    Err(NOT_BUILT_PKCS11)
}

/// The PKCS#11 module of a configuration, in the fleet's namespace.
#[cfg(feature = "pkcs11")]
fn open_pkcs11(
    config: &ModuleConfig,
    fleet_id: &str,
) -> Result<crate::module::pkcs11::Pkcs11Module, Error> {
    match config {
        ModuleConfig::Pkcs11 {
            library,
            token_label,
            pin_file,
            backup_by_trusted_wrap,
        } => Ok(crate::module::pkcs11::Pkcs11Module::open_configured(
            library,
            token_label,
            pin_file.as_deref(),
            fleet_id,
        )?
        .with_options(crate::module::pkcs11::Pkcs11Options {
            backup_by_trusted_wrap: *backup_by_trusted_wrap,
        })),
        ModuleConfig::Soft { .. } => Err(Error::invalid("module", "not a PKCS#11 module")),
    }
}

fn validate_fleet_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "--fleet",
            "1 to 64 characters of A-Z a-z 0-9 - _ .",
        ))
    }
}

/// The SHE transport key, unwrapped, if the fleet has one, read in `tx`.
pub(crate) fn transport_key_in(
    tx: &mut dyn Tx,
    module: &dyn KeyModule,
) -> Result<Option<Key128>, Error> {
    let Some(hex_text) = tx.meta(META_TRANSPORT_KEY)? else {
        return Ok(None);
    };
    let bytes = hex::decode(hex_text)
        .map_err(|e| StoreError::Corrupt(format!("{META_TRANSPORT_KEY}: {e}")))?;
    let key = module.unwrap(&WrappedKey(bytes))?;
    Ok(Key128::from_slice(&key))
}

pub(crate) fn fleet_info(tx: &mut dyn Tx) -> Result<FleetInfo, Error> {
    tx.fleet()?.ok_or(Error::StoreHoldsNoFleet)
}
