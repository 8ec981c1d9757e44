//! The share file: one small JSON document per share (format version 1, `docs/backup.md`),
//! `fleetkey-master-share` for a master, `fleetkey-root-share` for the governance root (whose
//! file says `root` and `root_kcv` where a master's says `generation` and `master_kcv`),
//! written through a temporary file, fsynced and renamed into place, mode 0600, never
//! overwriting. Every buffer holding the share's hex or the file's text is zeroizing.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{BackupError, Kcv, Secret, Share, ShareInfo, check_label};

/// The `format` field of a master's share file.
pub const SHARE_FORMAT: &str = "fleetkey-master-share";
/// The `format` field of a governance root's share file.
pub const ROOT_SHARE_FORMAT: &str = "fleetkey-root-share";
/// The share file format version.
pub const SHARE_VERSION: u32 = 1;
/// Share files are small; anything larger is not one (and is not read whole).
const MAX_FILE_LEN: u64 = 4096;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShareJson<'a> {
    format: &'a str,
    version: u32,
    fleet: &'a str,
    /// A master's generation (master shares only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    generation: Option<u32>,
    /// The governance root's number (root shares only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    root: Option<u32>,
    threshold: u8,
    count: u8,
    index: u8,
    custodian: &'a str,
    /// The share value, 64 hex digits. Borrowed from zeroizing text on both ways.
    share: &'a str,
    share_kcv: &'a str,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    master_kcv: Option<&'a str>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    root_kcv: Option<&'a str>,
    created_at: i64,
}

/// The file name of a share: `<fleet>-g<generation>-share-<index>-of-<count>-<custodian>.json`
/// for a master, `<fleet>-root<root>-share-<index>-of-<count>-<custodian>.json` for the
/// governance root.
pub fn share_file_name(info: &ShareInfo) -> String {
    let what = match info.secret {
        Secret::Master => "g",
        Secret::GovernanceRoot => "root",
    };
    format!(
        "{}-{what}{}-share-{}-of-{}-{}.json",
        info.fleet, info.generation, info.index, info.count, info.custodian
    )
}

impl Share {
    /// The share file's text (pretty JSON, newline-terminated), in zeroizing memory.
    pub fn to_json(&self) -> Zeroizing<Vec<u8>> {
        let mut hex_value = Zeroizing::new([0u8; 64]);
        // 32 bytes always fit 64 hex digits.
        let _ = hex::encode_to_slice(&self.value[..], &mut hex_value[..]);
        let share_kcv = self.info.share_kcv.to_string();
        let whole_kcv = self.info.master_kcv.to_string();
        let master = self.info.secret == Secret::Master;
        let doc = ShareJson {
            format: if master {
                SHARE_FORMAT
            } else {
                ROOT_SHARE_FORMAT
            },
            version: SHARE_VERSION,
            fleet: &self.info.fleet,
            generation: master.then_some(self.info.generation),
            root: (!master).then_some(self.info.generation),
            threshold: self.info.threshold,
            count: self.info.count,
            index: self.info.index,
            custodian: &self.info.custodian,
            share: std::str::from_utf8(&hex_value[..]).unwrap_or_default(),
            share_kcv: &share_kcv,
            master_kcv: master.then_some(whole_kcv.as_str()),
            root_kcv: (!master).then_some(whole_kcv.as_str()),
            created_at: self.info.created_at,
        };
        // Reserved up front so the buffer never reallocates (a reallocation would leave a copy
        // of the share behind); labels are at most 64 bytes, the document well under 1 KiB.
        let mut out = Zeroizing::new(Vec::with_capacity(MAX_FILE_LEN as usize));
        // Writing plain fields into a Vec cannot fail.
        let _ = serde_json::to_writer_pretty(&mut *out, &doc);
        out.push(b'\n');
        out
    }

    /// Parses a share file's text; `origin` names it in errors. Checks the format, the ranges
    /// and the labels, not the KCV (see [`Share::check_kcv`]; [`super::combine`] checks it).
    pub fn parse(text: &str, origin: &str) -> Result<Share, BackupError> {
        let malformed = |problem: String| BackupError::Malformed {
            file: origin.to_owned(),
            problem,
        };
        // serde_json's messages may quote the offending value, which could be share bytes:
        // only the position is reported.
        let doc: ShareJson<'_> = serde_json::from_str(text).map_err(|e| {
            malformed(format!(
                "not a share file (JSON {:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            ))
        })?;
        let (secret, number, whole) = match doc.format {
            SHARE_FORMAT => (
                Secret::Master,
                doc.generation.filter(|_| doc.root.is_none()),
                doc.master_kcv.filter(|_| doc.root_kcv.is_none()),
            ),
            ROOT_SHARE_FORMAT => (
                Secret::GovernanceRoot,
                doc.root.filter(|_| doc.generation.is_none()),
                doc.root_kcv.filter(|_| doc.master_kcv.is_none()),
            ),
            other => {
                return Err(malformed(format!(
                    "format {other:?}, expected {SHARE_FORMAT:?} or {ROOT_SHARE_FORMAT:?}"
                )));
            }
        };
        let (number_field, kcv_field) = match secret {
            Secret::Master => ("generation", "master_kcv"),
            Secret::GovernanceRoot => ("root", "root_kcv"),
        };
        let number = number.ok_or_else(|| {
            malformed(format!(
                "a {} file needs {number_field:?} (and not the other kind's field)",
                doc.format
            ))
        })?;
        let whole = whole.ok_or_else(|| {
            malformed(format!(
                "a {} file needs {kcv_field:?} (and not the other kind's field)",
                doc.format
            ))
        })?;
        if doc.version != SHARE_VERSION {
            return Err(malformed(format!(
                "version {}, this fleetkey reads version {SHARE_VERSION}",
                doc.version
            )));
        }
        if doc.threshold == 0 || doc.threshold > doc.count {
            return Err(malformed(format!(
                "threshold {} of count {}: needs 1 <= threshold <= count",
                doc.threshold, doc.count
            )));
        }
        if doc.index == 0 || doc.index > doc.count {
            return Err(malformed(format!(
                "index {}: needs 1 ..= {}",
                doc.index, doc.count
            )));
        }
        check_label("fleet", doc.fleet).map_err(|e| malformed(e.to_string()))?;
        check_label("custodian", doc.custodian).map_err(|e| malformed(e.to_string()))?;
        let mut value = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(doc.share, &mut value[..])
            .map_err(|_| malformed("share: expected 64 hex digits".into()))?;
        let kcv = |field: &str, text: &str| {
            Kcv::parse(text).ok_or_else(|| malformed(format!("{field}: expected 6 hex digits")))
        };
        Ok(Share {
            info: ShareInfo {
                secret,
                fleet: doc.fleet.to_owned(),
                generation: number,
                threshold: doc.threshold,
                count: doc.count,
                index: doc.index,
                custodian: doc.custodian.to_owned(),
                share_kcv: kcv("share_kcv", doc.share_kcv)?,
                master_kcv: kcv(kcv_field, whole)?,
                created_at: doc.created_at,
            },
            value,
            origin: origin.to_owned(),
        })
    }

    /// Reads and parses a share file (the text is read into zeroizing memory).
    pub fn read(path: &Path) -> Result<Share, BackupError> {
        use std::io::Read as _;
        let io = |source| BackupError::Io {
            path: path.to_owned(),
            source,
        };
        let origin = path.display().to_string();
        let file = std::fs::File::open(path).map_err(io)?;
        let mut text = Zeroizing::new(Vec::with_capacity(MAX_FILE_LEN as usize + 1));
        file.take(MAX_FILE_LEN + 1)
            .read_to_end(&mut text)
            .map_err(io)?;
        if text.len() as u64 > MAX_FILE_LEN {
            return Err(BackupError::Malformed {
                file: origin,
                problem: format!("larger than {MAX_FILE_LEN} bytes: not a share file"),
            });
        }
        let text = std::str::from_utf8(&text).map_err(|_| BackupError::Malformed {
            file: origin.clone(),
            problem: "not UTF-8 text".into(),
        })?;
        Share::parse(text, &origin)
    }
}

/// Share files just written. Unless [`WrittenShares::keep`] is called, dropping this removes
/// them: a ceremony that fails after writing its shares leaves no shares of a master that was
/// never put to use.
#[derive(Debug)]
#[must_use = "dropping WrittenShares removes the files: call keep() once the master is in use"]
pub struct WrittenShares {
    paths: Vec<PathBuf>,
    keep: bool,
}

impl WrittenShares {
    /// The files, in share order.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// The files' names (without their directory), in share order: what the audit records.
    pub fn file_names(&self) -> Vec<String> {
        self.paths
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect()
    }

    /// Keeps the files and returns their paths.
    pub fn keep(mut self) -> Vec<PathBuf> {
        self.keep = true;
        std::mem::take(&mut self.paths)
    }
}

impl Drop for WrittenShares {
    fn drop(&mut self) {
        if !self.keep {
            for path in &self.paths {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// Writes one file per share into `dir` (created with mode 0700 if missing). Refuses before
/// writing anything when a file of the same name exists.
pub fn write_shares(dir: &Path, shares: &[Share]) -> Result<WrittenShares, BackupError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| BackupError::Io { path, source }
    };
    if !dir.exists() {
        create_private_dir(dir).map_err(io(dir))?;
    }
    let targets: Vec<PathBuf> = shares
        .iter()
        .map(|s| dir.join(share_file_name(&s.info)))
        .collect();
    if let Some(path) = targets.iter().find(|p| p.exists()) {
        return Err(BackupError::Exists { path: path.clone() });
    }
    let mut written = WrittenShares {
        paths: Vec::with_capacity(shares.len()),
        keep: false,
    };
    for (share, target) in shares.iter().zip(&targets) {
        write_one(share, target)?;
        written.paths.push(target.clone());
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(written)
}

fn write_one(share: &Share, target: &Path) -> Result<(), BackupError> {
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = target.with_file_name(format!(".{}.tmp", name.unwrap_or_default()));
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| BackupError::Io { path, source }
    };
    let text = share.to_json();
    let mut file = open_private(&tmp).map_err(io(&tmp))?;
    let result = file
        .write_all(&text)
        .and_then(|()| file.sync_all())
        .map_err(io(&tmp))
        .and_then(|()| {
            if target.exists() {
                Err(BackupError::Exists {
                    path: target.to_owned(),
                })
            } else {
                std::fs::rename(&tmp, target).map_err(io(target))
            }
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(unix)]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}
