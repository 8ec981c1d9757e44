//! Durable, atomic replacement of the key file, and removal of old ciphertext.
//!
//! Beside `keys.age` live `keys.age.tmp` (the next version while it is written),
//! `keys.age.old` (the previous version while it is replaced) and `keys.age.lock` (an empty file
//! that fleetkey processes lock while they change any of them). A replacement:
//! 1. writes and fsyncs `keys.age.tmp`;
//! 2. renames `keys.age` to `keys.age.old` and fsyncs the directory;
//! 3. renames `keys.age.tmp` to `keys.age` and fsyncs the directory;
//! 4. overwrites `keys.age.old` with zeros, fsyncs it, unlinks it and fsyncs the directory.
//!
//! [`recover`] finishes an interrupted replacement: with `keys.age.old` but no `keys.age`, the
//! crash came between steps 2 and 3, and the complete `keys.age.tmp` becomes `keys.age`; a
//! leftover `keys.age.old` is then wiped as in step 4, and a leftover `keys.age.tmp` (an
//! update that never returned) is wiped too.
//!
//! Overwriting in place reaches the disk blocks on ext4 and xfs; on copy-on-write filesystems
//! (btrfs, zfs) and behind SSD wear levelling the old blocks may survive until reused. The
//! ciphertext is still under the passphrase.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::error::ModuleError;

/// The key file and the files beside it.
#[derive(Clone, Debug)]
pub(super) struct Paths {
    pub(super) file: PathBuf,
    pub(super) tmp: PathBuf,
    pub(super) aside: PathBuf,
    pub(super) lock: PathBuf,
    pub(super) dir: PathBuf,
}

impl Paths {
    pub(super) fn new(file: &Path) -> Self {
        let with_suffix = |suffix: &str| {
            let mut name = file.as_os_str().to_owned();
            name.push(suffix);
            PathBuf::from(name)
        };
        let dir = match file.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Self {
            file: file.to_path_buf(),
            tmp: with_suffix(".tmp"),
            aside: with_suffix(".old"),
            lock: with_suffix(".lock"),
            dir,
        }
    }
}

pub(super) fn io_error(path: &Path) -> impl FnOnce(io::Error) -> ModuleError + '_ {
    move |source| ModuleError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Holds the exclusive lock on `keys.age.lock` until dropped.
#[derive(Debug)]
pub(super) struct FileLock {
    _file: File,
}

/// Takes the exclusive lock that every fleetkey process holds while it changes the key file
/// (blocks while another holds it).
pub(super) fn lock(paths: &Paths) -> Result<FileLock, ModuleError> {
    let file = options_private()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&paths.lock);
    let file = file.map_err(io_error(&paths.lock))?;
    file.lock().map_err(io_error(&paths.lock))?;
    Ok(FileLock { _file: file })
}

/// Whether a path exists, an error other than "not found" being an error.
pub(super) fn exists(path: &Path) -> Result<bool, ModuleError> {
    path.try_exists().map_err(io_error(path))
}

/// Finishes or cleans up an interrupted replacement (see the module documentation). Call with
/// the lock held.
pub(super) fn recover(paths: &Paths) -> Result<(), ModuleError> {
    if exists(&paths.aside)? {
        if !exists(&paths.file)? {
            if !exists(&paths.tmp)? {
                return Err(ModuleError::Corrupt(format!(
                    "{} is missing and {} holds the version before an interrupted update; \
                     rename it back to {} to continue from that version",
                    paths.file.display(),
                    paths.aside.display(),
                    paths.file.display()
                )));
            }
            fs::rename(&paths.tmp, &paths.file).map_err(io_error(&paths.file))?;
            sync_dir(paths)?;
        }
        wipe(&paths.aside, paths)?;
    }
    if exists(&paths.tmp)? {
        wipe(&paths.tmp, paths)?;
    }
    Ok(())
}

/// Puts the first version of a key file in place; refuses when one exists. Call with the lock
/// held, after [`recover`].
pub(super) fn install_new(paths: &Paths, ciphertext: &[u8]) -> Result<(), ModuleError> {
    if exists(&paths.file)? {
        let source = io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a key file exists already; open it instead",
        );
        return Err(ModuleError::Io {
            path: paths.file.clone(),
            source,
        });
    }
    write_tmp(paths, ciphertext)?;
    fs::rename(&paths.tmp, &paths.file).map_err(io_error(&paths.file))?;
    sync_dir(paths)
}

/// Puts a new version of the key file in place, the previous one renamed aside (steps 1 to 3).
/// Call with the lock held, then [`wipe_aside`].
pub(super) fn commit(paths: &Paths, ciphertext: &[u8]) -> Result<(), ModuleError> {
    write_tmp(paths, ciphertext)?;
    fs::rename(&paths.file, &paths.aside).map_err(io_error(&paths.aside))?;
    sync_dir(paths)?;
    fs::rename(&paths.tmp, &paths.file).map_err(io_error(&paths.file))?;
    sync_dir(paths)
}

/// Overwrites, fsyncs and unlinks the previous version (step 4).
pub(super) fn wipe_aside(paths: &Paths) -> Result<(), ModuleError> {
    wipe(&paths.aside, paths)
}

fn write_tmp(paths: &Paths, ciphertext: &[u8]) -> Result<(), ModuleError> {
    let mut file = options_private()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&paths.tmp)
        .map_err(io_error(&paths.tmp))?;
    file.write_all(ciphertext).map_err(io_error(&paths.tmp))?;
    file.sync_all().map_err(io_error(&paths.tmp))
}

/// Overwrites a file with zeros in place, fsyncs it, unlinks it and fsyncs the directory.
fn wipe(path: &Path, paths: &Paths) -> Result<(), ModuleError> {
    let mut file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_error(path))?;
    let len = file.metadata().map_err(io_error(path))?.len();
    let zeros = [0u8; 4096];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(4096)).unwrap_or(4096);
        file.write_all(zeros.get(..n).unwrap_or(&zeros))
            .map_err(io_error(path))?;
        left -= n as u64;
    }
    file.sync_all().map_err(io_error(path))?;
    drop(file);
    fs::remove_file(path).map_err(io_error(path))?;
    sync_dir(paths)
}

/// Reads the key file.
pub(super) fn read(paths: &Paths) -> Result<Vec<u8>, ModuleError> {
    fs::read(&paths.file).map_err(io_error(&paths.file))
}

/// Makes renames and unlinks in the directory durable.
fn sync_dir(paths: &Paths) -> Result<(), ModuleError> {
    #[cfg(unix)]
    File::open(&paths.dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(&paths.dir))?;
    #[cfg(not(unix))]
    let _ = paths;
    Ok(())
}

/// Options that create files readable by the owner only.
fn options_private() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}
