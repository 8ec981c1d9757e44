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
    /// A PostgreSQL schema, shared by every `fleetkey serve` instance of the fleet. The URL
    /// comes from `FLEETKEY_STORE_URL` when set, else from `url_file` (relative to the home),
    /// else from `url`; a URL holding a password is never kept in `fleet.json` itself.
    Postgres {
        /// The PostgreSQL schema holding the fleet's tables.
        schema: String,
        /// The URL, when it holds no password.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
        /// A file holding the URL (mode 0600), when it holds a password.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url_file: Option<PathBuf>,
    },
}

/// The environment variable that overrides a PostgreSQL store's URL.
pub const STORE_URL_ENV: &str = "FLEETKEY_STORE_URL";
/// The file `fleetkey init --store postgres://...` keeps a URL with a password in.
pub const STORE_URL_FILE: &str = "store-url";

impl StoreConfig {
    /// The PostgreSQL URL of a `Postgres` store: `FLEETKEY_STORE_URL`, else `url_file`, else
    /// `url`. `None` for SQLite.
    pub fn postgres_url(&self, home: &Path) -> Result<Option<String>, Error> {
        let StoreConfig::Postgres { url, url_file, .. } = self else {
            return Ok(None);
        };
        if let Ok(from_env) = std::env::var(STORE_URL_ENV)
            && !from_env.trim().is_empty()
        {
            return Ok(Some(from_env.trim().to_owned()));
        }
        if let Some(file) = url_file {
            let path = home.join(file);
            let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            return Ok(Some(text.trim().to_owned()));
        }
        match url {
            Some(url) => Ok(Some(url.clone())),
            None => Err(Error::NoStoreUrl),
        }
    }

    /// The store's kind and where it is, for messages (never a password).
    pub fn describe(&self) -> String {
        match self {
            StoreConfig::Sqlite { file } => format!("sqlite {}", file.display()),
            StoreConfig::Postgres { schema, .. } => format!("postgres schema {schema}"),
        }
    }
}

/// Whether a PostgreSQL URL carries a password (`user:password@` or `password=`).
pub fn url_has_password(url: &str) -> bool {
    if let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    {
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        let userinfo = authority.rsplit_once('@').map(|(u, _)| u).unwrap_or("");
        userinfo.contains(':') || rest.contains("password=")
    } else {
        url.contains("password")
    }
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
                Error::NoFleet(home.to_owned())
            } else {
                Error::Io {
                    path: path.clone(),
                    source,
                }
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
        assert!(matches!(missing, Error::NoFleet(_)), "{missing}");
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

    #[test]
    fn postgres_urls_with_passwords_are_recognised() {
        assert!(url_has_password("postgres://fk:secret@127.0.0.1/fk"));
        assert!(url_has_password(
            "postgresql://fk:s@h:5432/db?sslmode=disable"
        ));
        assert!(url_has_password("host=/run/postgresql user=fk password=x"));
        assert!(url_has_password("postgres://fk@h/db?password=x"));
        assert!(!url_has_password("postgres://postgres@127.0.0.1:5432/test"));
        assert!(!url_has_password("postgres://h/db"));
        assert!(!url_has_password("host=/run/postgresql user=fk dbname=fk"));
    }

    #[test]
    fn postgres_url_comes_from_the_file_when_set() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("u"), "postgres://a:b@h/d\n").unwrap();
        let config = StoreConfig::Postgres {
            schema: "fleet".into(),
            url: None,
            url_file: Some("u".into()),
        };
        if std::env::var(STORE_URL_ENV).is_err() {
            assert_eq!(
                config.postgres_url(dir.path()).unwrap().as_deref(),
                Some("postgres://a:b@h/d")
            );
        }
        let none = StoreConfig::Postgres {
            schema: "fleet".into(),
            url: None,
            url_file: None,
        };
        if std::env::var(STORE_URL_ENV).is_err() {
            assert!(none.postgres_url(dir.path()).is_err());
        }
        assert_eq!(
            StoreConfig::Sqlite { file: "f".into() }
                .postgres_url(dir.path())
                .unwrap(),
            None
        );
    }
}
