//! The fleet home: one directory holding a fleet's configuration, its store and its soft key file.
//!
//! ```text
//! <home>/fleet.json    configuration (no secret): fleet id, scheme, key module, store
//! <home>/fleet.db      the SQLite store (with fleet.db-wal, fleet.db-shm while open)
//! <home>/keys.age      the soft key module: masters, KEK, governance root; age, scrypt passphrase
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::model::Scheme;

/// The configuration file's name.
pub const CONFIG_FILE: &str = "fleet.json";
/// The SQLite store's default file name.
pub const STORE_FILE: &str = "fleet.db";
/// The soft key module's default file name.
pub const KEY_FILE: &str = "keys.age";
/// The configuration format version.
pub const CONFIG_VERSION: u32 = 1;

/// Where the key module is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ModuleConfig {
    /// The soft module: a passphrase-encrypted file, relative to the home.
    Soft {
        /// The key file.
        file: PathBuf,
    },
    /// A PKCS#11 token: the fleet's objects are namespaced by the fleet id. The user PIN is read
    /// at open from `pin_file` when set, else from `FLEETKEY_PKCS11_PIN`.
    Pkcs11 {
        /// The PKCS#11 library (e.g. `/usr/lib/softhsm/libsofthsm2.so`).
        library: PathBuf,
        /// The token's label.
        token_label: String,
        /// A file holding the PIN (not the PIN itself).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pin_file: Option<PathBuf>,
        /// Masters are extractable only wrapped under the security officer's trusted backup KEK
        /// (token-to-token backup, docs/pkcs11.md); absent means false.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        backup_by_trusted_wrap: bool,
    },
}

/// Where the store is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum StoreConfig {
    /// A SQLite file, relative to the home.
    Sqlite {
        /// The database file.
        file: PathBuf,
    },
}

/// `fleet.json`: what a fleet home is made of. Holds no secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// The format version.
    pub version: u32,
    /// The fleet id.
    pub fleet_id: String,
    /// The key scheme.
    pub scheme: Scheme,
    /// The key module.
    pub module: ModuleConfig,
    /// The store.
    pub store: StoreConfig,
}

impl FleetConfig {
    /// The embedded defaults: SQLite and the soft module in the home.
    pub fn embedded(fleet_id: &str, scheme: Scheme) -> Self {
        FleetConfig {
            version: CONFIG_VERSION,
            fleet_id: fleet_id.to_owned(),
            scheme,
            module: ModuleConfig::Soft {
                file: KEY_FILE.into(),
            },
            store: StoreConfig::Sqlite {
                file: STORE_FILE.into(),
            },
        }
    }

    /// Reads `<home>/fleet.json`.
    pub fn load(home: &Path) -> Result<Self, Error> {
        let path = home.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                Error::Refused {
                    what: format!("no fleet at {} ({} is missing)", home.display(), CONFIG_FILE),
                    hint: "create one with `fleetkey init`, or point --home / FLEETKEY_HOME at an existing fleet".into(),
                }
            } else {
                Error::Io { path: path.clone(), source }
            }
        })?;
        let config: FleetConfig = serde_json::from_str(&text)
            .map_err(|e| Error::invalid(path.display().to_string(), e))?;
        if config.version != CONFIG_VERSION {
            return Err(Error::invalid(
                path.display().to_string(),
                format_args!(
                    "version {}, this fleetkey reads version {CONFIG_VERSION}",
                    config.version
                ),
            ));
        }
        Ok(config)
    }

    /// Writes `<home>/fleet.json` atomically (temp file, fsync, rename).
    pub fn save(&self, home: &Path) -> Result<(), Error> {
        let text = serde_json::to_vec_pretty(self).map_err(|e| Error::invalid("fleet.json", e))?;
        write_atomic(&home.join(CONFIG_FILE), &text)
    }
}

/// Writes a file atomically: a temp file in the same directory, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_and_missing_home_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let config = FleetConfig::embedded("tractors", Scheme::Derived);
        config.save(dir.path()).unwrap();
        assert_eq!(FleetConfig::load(dir.path()).unwrap(), config);
        let missing = FleetConfig::load(&dir.path().join("nope")).unwrap_err();
        assert!(missing.to_string().contains("no fleet at"));
        assert!(missing.hint().unwrap().contains("fleetkey init"));
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            b"{\"version\": 1, \"bogus\": true}",
        )
        .unwrap();
        assert!(matches!(
            FleetConfig::load(dir.path()),
            Err(Error::Invalid { .. })
        ));
    }
}
