//! Master backup: an M-of-N custodian split of a generation's 32-byte master (Shamir's secret
//! sharing over GF(256), from the `blahaj` crate), with a key check value (KCV) per share and one
//! for the whole master. The format, the KCVs and the ceremony are described in `docs/backup.md`.
//!
//! ```text
//! master_kcv = HMAC-SHA256(key = master (32 bytes), MASTER_KCV_LABEL)[0..3]
//! share_kcv  = HMAC-SHA256(key = share value (32 bytes),
//!                          SHARE_KCV_LABEL || u8 len(fleet) || fleet || generation u32 BE
//!                          || threshold u8 || count u8 || index u8
//!                          || u8 len(custodian) || custodian || master_kcv (3 bytes))[0..3]
//! ```
//! Both labels start with `FK1K`, so no KCV input is ever a device key derivation's `info`
//! (`FK1D...`, docs/derivation.md) under the same key. A KCV is 24 bits of a one-way function of
//! its key: it tells a wrong key from the right one (a false match has probability 2^-24) and
//! gives no practical help in finding the key. The share KCV also covers the file's other
//! fields, so a share file whose fleet, generation, index or custodian was edited is refused
//! on its own, before any reconstruction.
//!
//! The governance root (governed scheme) is backed up the same way: its 32-byte Ed25519 seed is
//! split like a master, into share files of their own format (`fleetkey-root-share`, fields
//! `root` and `root_kcv`, file names `<fleet>-root<N>-share-...`), with KCVs under their own
//! labels ([`ROOT_KCV_LABEL`], [`ROOT_SHARE_KCV_LABEL`]) so a master's share can never pass as a
//! root's or the other way round. [`ShareInfo::secret`] says which; for a root,
//! [`ShareInfo::generation`] is the root's number (1 the first, 2 after the first rotation) and
//! [`ShareInfo::master_kcv`] the whole root's KCV.
//!
//! Memory: masters are [`MasterKey`], share values `Zeroizing<[u8; 32]>`; `blahaj` zeroizes its
//! polynomials and shares on drop (its `zeroize_memory` feature), and every buffer here that
//! holds share bytes or their hex (file text, JSON, decoded values) is zeroizing.
//!
//! Known limit: `blahaj`'s GF(256) multiplication uses log/exp tables indexed by secret bytes,
//! so the split and the reconstruction are not constant-time (a cache-timing observer on the
//! ceremony host could learn about the secret). Run ceremonies on a host where no untrusted code
//! runs at the same time.

use std::convert::Infallible;
use std::fmt;
use std::path::PathBuf;

use fleetkey_core::MasterKey;
use hmac::{Hmac, KeyInit as _, Mac as _};
use serde::Serialize;
use sha2::Sha256;
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

use crate::governance::SigningSeed;
use crate::model::UnixMillis;

mod file;

pub use file::{
    ROOT_SHARE_FORMAT, SHARE_FORMAT, SHARE_VERSION, WrittenShares, share_file_name, write_shares,
};

/// The length of a key check value in bytes.
pub const KCV_LEN: usize = 3;
/// The HMAC message of the whole master's KCV.
pub const MASTER_KCV_LABEL: &[u8] = b"FK1K master KCV v1";
/// The first bytes of the HMAC message of a share's KCV.
pub const SHARE_KCV_LABEL: &[u8] = b"FK1K share KCV v1";
/// The HMAC message of the whole governance root's KCV (keyed by its seed).
pub const ROOT_KCV_LABEL: &[u8] = b"FK1K root KCV v1";
/// The first bytes of the HMAC message of a governance root share's KCV.
pub const ROOT_SHARE_KCV_LABEL: &[u8] = b"FK1K root share KCV v1";
/// The most shares of one split (GF(256) has 255 non-zero evaluation points).
pub const MAX_SHARES: u8 = 255;
/// The longest custodian label.
pub const MAX_LABEL_LEN: usize = 64;

/// A key check value: 3 bytes, shown as 6 lowercase hex digits. Public.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Kcv(pub [u8; KCV_LEN]);

impl Kcv {
    /// Parses 6 hex digits.
    pub fn parse(text: &str) -> Option<Kcv> {
        let mut bytes = [0u8; KCV_LEN];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(Kcv(bytes))
    }

    /// Compares in constant time.
    pub fn matches(&self, other: &Kcv) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Display for Kcv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Kcv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kcv({self})")
    }
}

impl Serialize for Kcv {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn hmac_kcv(key: &[u8; 32], parts: &[&[u8]]) -> Kcv {
    // HMAC takes keys of any length: a 32-byte key cannot be refused.
    let mut mac = <Hmac<Sha256>>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for part in parts {
        mac.update(part);
    }
    let tag = mac.finalize().into_bytes();
    let mut kcv = [0u8; KCV_LEN];
    for (dst, src) in kcv.iter_mut().zip(tag.iter()) {
        *dst = *src;
    }
    Kcv(kcv)
}

/// The KCV of a whole master: `HMAC-SHA256(master, "FK1K master KCV v1")[0..3]`.
pub fn master_kcv(master: &MasterKey) -> Kcv {
    hmac_kcv(master.expose_secret(), &[MASTER_KCV_LABEL])
}

/// The KCV of a governance root: `HMAC-SHA256(seed, "FK1K root KCV v1")[0..3]`.
pub fn root_kcv(seed: &SigningSeed) -> Kcv {
    hmac_kcv(seed.expose_secret(), &[ROOT_KCV_LABEL])
}

fn whole_kcv(secret: Secret, value: &[u8; 32]) -> Kcv {
    match secret {
        Secret::Master => hmac_kcv(value, &[MASTER_KCV_LABEL]),
        Secret::GovernanceRoot => hmac_kcv(value, &[ROOT_KCV_LABEL]),
    }
}

/// What a split holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Secret {
    /// A generation's master.
    Master,
    /// The governance root's Ed25519 seed (governed scheme).
    GovernanceRoot,
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Secret::Master => "a master",
            Secret::GovernanceRoot => "the governance root",
        })
    }
}

/// The KCV of a share: its value as the HMAC key over the label and every other field.
fn share_kcv(info: &ShareInfo, value: &[u8; 32]) -> Kcv {
    let label = match info.secret {
        Secret::Master => SHARE_KCV_LABEL,
        Secret::GovernanceRoot => ROOT_SHARE_KCV_LABEL,
    };
    let fleet_len = [u8::try_from(info.fleet.len()).unwrap_or(u8::MAX)];
    let custodian_len = [u8::try_from(info.custodian.len()).unwrap_or(u8::MAX)];
    hmac_kcv(
        value,
        &[
            label,
            &fleet_len,
            info.fleet.as_bytes(),
            &info.generation.to_be_bytes(),
            &[info.threshold, info.count, info.index],
            &custodian_len,
            info.custodian.as_bytes(),
            &info.master_kcv.0,
        ],
    )
}

/// A backup failed or was refused. Names the share file concerned; never carries share bytes.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The split's parameters are out of range.
    #[error("{field}: {problem}")]
    Invalid {
        /// The parameter.
        field: &'static str,
        /// What was wrong.
        problem: String,
    },
    /// A share file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A share file to write exists already.
    #[error("{path} exists already: a share file is never overwritten")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// A share file does not parse.
    #[error("share file {file}: {problem}")]
    Malformed {
        /// The file.
        file: String,
        /// What was wrong.
        problem: String,
    },
    /// A share's KCV does not match its bytes and fields.
    #[error(
        "share file {file}: its key check value does not match (the share or its fields were changed or damaged)"
    )]
    ShareKcv {
        /// The file.
        file: String,
    },
    /// Two files carry the same share.
    #[error("share file {file} repeats share {index} (also in {other})")]
    Duplicate {
        /// The repeated file.
        file: String,
        /// The file seen first.
        other: String,
        /// The share index.
        index: u8,
    },
    /// A share belongs to another split than the first one given.
    #[error("share file {file}: {field} is {found}, but {first} has {expected}")]
    Mismatch {
        /// The file.
        file: String,
        /// The field that differs.
        field: &'static str,
        /// Its value in this file.
        found: String,
        /// Its value in the first file.
        expected: String,
        /// The first file.
        first: String,
    },
    /// A share is of another kind of secret than the one asked for (a master's share given to
    /// restore the governance root, or the other way round).
    #[error("share file {file} holds a share of {found}, not of {expected}")]
    WrongSecret {
        /// The file.
        file: String,
        /// What the file holds.
        found: Secret,
        /// What was asked for.
        expected: Secret,
    },
    /// The governance root rebuilt from shares is not the root the fleet pins.
    #[error(
        "the governance root rebuilt from the shares has public key {found}, but the fleet pins {pinned}: the shares are of another root"
    )]
    RootMismatch {
        /// The rebuilt root's public key, hex.
        found: String,
        /// The pinned root's public key, hex.
        pinned: String,
    },
    /// Fewer shares than the threshold.
    #[error("{have} distinct shares given, the split needs {need}")]
    NotEnough {
        /// Distinct shares given.
        have: usize,
        /// The threshold.
        need: u8,
    },
    /// The reconstructed master does not match the whole-master KCV.
    #[error(
        "the master rebuilt from the shares does not match its key check value {expected}: a share is of another split, or the files were forged"
    )]
    MasterKcv {
        /// The KCV the shares carry.
        expected: Kcv,
    },
    /// The OS random number generator failed.
    #[error("the OS random number generator failed: {0}")]
    Random(String),
}

impl BackupError {
    /// A check that ran and failed (exit 1 at the CLI), rather than bad input.
    pub fn is_check_failure(&self) -> bool {
        matches!(
            self,
            Self::ShareKcv { .. } | Self::MasterKcv { .. } | Self::RootMismatch { .. }
        )
    }

    fn invalid(field: &'static str, problem: impl fmt::Display) -> Self {
        Self::Invalid {
            field,
            problem: problem.to_string(),
        }
    }
}

/// How a new master is backed up: split into custodian shares, or (explicitly) not at all.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MasterBackup {
    /// Split into one share per custodian, `threshold` of them needed; files written to `dir`.
    Shares {
        /// M: shares needed to restore.
        threshold: u8,
        /// One label per share (N of them), in share order; `A-Z a-z 0-9 - _ .`, unique.
        custodians: Vec<String>,
        /// Where the share files are written (created if missing, mode 0700).
        dir: PathBuf,
    },
    /// No backup: the master is created inside the key module and can never leave it. Losing
    /// the module then means no key of that generation can ever be derived again.
    NoBackup,
}

impl MasterBackup {
    /// A split of `threshold` of `custodians.len()` shares into `dir`.
    pub fn shares(threshold: u8, custodians: Vec<String>, dir: impl Into<PathBuf>) -> Self {
        Self::Shares {
            threshold,
            custodians,
            dir: dir.into(),
        }
    }
}

/// Checks a split's threshold and custodian labels.
pub fn check_split(threshold: u8, custodians: &[String]) -> Result<(), BackupError> {
    let count = custodians.len();
    if count == 0 || count > usize::from(MAX_SHARES) {
        return Err(BackupError::invalid(
            "custodians",
            format_args!("1 to {MAX_SHARES} custodians, {count} given"),
        ));
    }
    if threshold == 0 || usize::from(threshold) > count {
        return Err(BackupError::invalid(
            "threshold",
            format_args!("from 1 to the number of custodians ({count}), {threshold} given"),
        ));
    }
    for (i, label) in custodians.iter().enumerate() {
        check_label("custodian", label)?;
        if custodians.iter().take(i).any(|l| l == label) {
            return Err(BackupError::invalid(
                "custodian",
                format_args!("{label:?} is named twice: every share needs its own custodian"),
            ));
        }
    }
    Ok(())
}

fn check_label(field: &'static str, label: &str) -> Result<(), BackupError> {
    let ok = !label.is_empty()
        && label.len() <= MAX_LABEL_LEN
        && label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !label.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(BackupError::invalid(
            field,
            format_args!(
                "{label:?}: 1 to {MAX_LABEL_LEN} characters of A-Z a-z 0-9 - _ ., not starting with ."
            ),
        ))
    }
}

/// Everything a share file says about its share except the share bytes. Public.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ShareInfo {
    /// What the split holds: a master, or the governance root.
    pub secret: Secret,
    /// The fleet id.
    pub fleet: String,
    /// The master's generation; for the governance root, the root's number.
    pub generation: u32,
    /// M: shares needed.
    pub threshold: u8,
    /// N: shares made.
    pub count: u8,
    /// This share's index, 1 ..= N (its GF(256) evaluation point).
    pub index: u8,
    /// Who keeps it.
    pub custodian: String,
    /// This share's KCV.
    pub share_kcv: Kcv,
    /// The whole master's KCV (for the governance root: the root's KCV).
    pub master_kcv: Kcv,
    /// When the split was made (ms since the Unix epoch); informational, not covered by a KCV.
    pub created_at: UnixMillis,
}

/// One custodian share: its public description and its 32 secret bytes (zeroized on drop).
pub struct Share {
    info: ShareInfo,
    value: Zeroizing<[u8; 32]>,
    /// Where it came from (a file path), for error messages.
    origin: String,
}

impl fmt::Debug for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Share")
            .field("info", &self.info)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl Share {
    /// The public description.
    pub fn info(&self) -> &ShareInfo {
        &self.info
    }

    /// Where the share came from (its file), or `share <index>` for one made in memory.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Whether the share's KCV matches its bytes and fields.
    pub fn check_kcv(&self) -> bool {
        share_kcv(&self.info, &self.value).matches(&self.info.share_kcv)
    }

    fn checked(&self) -> Result<(), BackupError> {
        if self.check_kcv() {
            Ok(())
        } else {
            Err(BackupError::ShareKcv {
                file: self.origin.clone(),
            })
        }
    }
}

/// The OS random number generator for `blahaj`'s polynomial coefficients. `blahaj` wants an
/// infallible RNG: a failure is remembered (the output is then unusable) and reported after the
/// split instead of panicking.
struct OsRandom {
    failure: Option<getrandom::Error>,
}

impl OsRandom {
    fn fill(&mut self, dst: &mut [u8]) {
        if let Err(e) = getrandom::fill(dst) {
            self.failure.get_or_insert(e);
        }
    }
}

impl rand_core::TryRng for OsRandom {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = Zeroizing::new([0u8; 4]);
        self.fill(&mut b[..]);
        Ok(u32::from_le_bytes(*b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = Zeroizing::new([0u8; 8]);
        self.fill(&mut b[..]);
        Ok(u64::from_le_bytes(*b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.fill(dst);
        Ok(())
    }
}

impl rand_core::TryCryptoRng for OsRandom {}

/// A fresh random master from the OS random number generator, in zeroizing memory.
pub fn random_master() -> Result<MasterKey, BackupError> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut bytes[..]).map_err(|e| BackupError::Random(e.to_string()))?;
    Ok(MasterKey::from_bytes(*bytes))
}

/// Splits a master into one share per custodian, `threshold` of them needed to restore it.
/// Share `i` (from 1) goes to `custodians[i - 1]`.
pub fn split(
    master: &MasterKey,
    fleet: &str,
    generation: u32,
    threshold: u8,
    custodians: &[String],
    created_at: UnixMillis,
) -> Result<Vec<Share>, BackupError> {
    split_secret(
        Secret::Master,
        master.expose_secret(),
        fleet,
        generation,
        threshold,
        custodians,
        created_at,
    )
}

/// Splits the governance root's seed into one share per custodian, `threshold` of them needed
/// to restore it; `root` is the root's number (1 the first, 2 after the first rotation).
pub fn split_root(
    seed: &SigningSeed,
    fleet: &str,
    root: u32,
    threshold: u8,
    custodians: &[String],
    created_at: UnixMillis,
) -> Result<Vec<Share>, BackupError> {
    split_secret(
        Secret::GovernanceRoot,
        seed.expose_secret(),
        fleet,
        root,
        threshold,
        custodians,
        created_at,
    )
}

fn split_secret(
    secret: Secret,
    value: &[u8; 32],
    fleet: &str,
    generation: u32,
    threshold: u8,
    custodians: &[String],
    created_at: UnixMillis,
) -> Result<Vec<Share>, BackupError> {
    check_split(threshold, custodians)?;
    check_label("fleet", fleet)?;
    let count = u8::try_from(custodians.len())
        .map_err(|_| BackupError::invalid("custodians", "at most 255"))?;
    let whole = whole_kcv(secret, value);
    let mut rng = OsRandom { failure: None };
    let mut shares = Vec::with_capacity(custodians.len());
    let dealer = blahaj::Sharks(threshold).dealer_rng(value, &mut rng);
    for (made, custodian) in dealer.zip(custodians) {
        let mut value = Zeroizing::new([0u8; 32]);
        if made.y.len() != value.len() {
            return Err(BackupError::Random(
                "blahaj made a share of another length".into(),
            ));
        }
        for (dst, y) in value.iter_mut().zip(&made.y) {
            *dst = y.0;
        }
        let mut info = ShareInfo {
            secret,
            fleet: fleet.to_owned(),
            generation,
            threshold,
            count,
            index: made.x.0,
            custodian: custodian.clone(),
            share_kcv: Kcv([0; KCV_LEN]),
            master_kcv: whole,
            created_at,
        };
        info.share_kcv = share_kcv(&info, &value);
        shares.push(Share {
            origin: format!("share {}", info.index),
            info,
            value,
        });
    }
    if let Some(e) = rng.failure {
        return Err(BackupError::Random(e.to_string()));
    }
    if shares.len() != custodians.len() {
        return Err(BackupError::Random("blahaj made too few shares".into()));
    }
    Ok(shares)
}

/// What [`verify`] found: the split the shares belong to, and whether the whole master's KCV
/// was checked (it is when at least M shares are given).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// What the shares hold: a master, or the governance root.
    pub secret: Secret,
    /// The fleet.
    pub fleet: String,
    /// The generation (for the governance root: the root's number).
    pub generation: u32,
    /// M.
    pub threshold: u8,
    /// N.
    pub count: u8,
    /// The whole master's KCV the shares carry.
    pub master_kcv: Kcv,
    /// The shares checked, by index, with their custodians.
    pub shares: Vec<ShareInfo>,
    /// Whether the master was rebuilt and matched `master_kcv`.
    pub master_checked: bool,
}

/// Checks that the shares are of one split with distinct indexes and each share's KCV matches;
/// errors name the file.
pub(crate) fn check_set(shares: &[Share]) -> Result<&ShareInfo, BackupError> {
    let first = shares
        .first()
        .ok_or(BackupError::NotEnough { have: 0, need: 1 })?;
    let f = &first.info;
    for (i, share) in shares.iter().enumerate() {
        share.checked()?;
        let s = &share.info;
        let mismatch = |field: &'static str, found: String, expected: String| {
            Err(BackupError::Mismatch {
                file: share.origin.clone(),
                field,
                found,
                expected,
                first: first.origin.clone(),
            })
        };
        if s.secret != f.secret {
            return Err(BackupError::WrongSecret {
                file: share.origin.clone(),
                found: s.secret,
                expected: f.secret,
            });
        }
        if s.fleet != f.fleet {
            return mismatch("fleet", s.fleet.clone(), f.fleet.clone());
        }
        if s.generation != f.generation {
            return mismatch(
                "generation",
                s.generation.to_string(),
                f.generation.to_string(),
            );
        }
        if s.threshold != f.threshold || s.count != f.count {
            return mismatch(
                "threshold/count",
                format!("{} of {}", s.threshold, s.count),
                format!("{} of {}", f.threshold, f.count),
            );
        }
        if !s.master_kcv.matches(&f.master_kcv) {
            return mismatch(
                "master_kcv",
                s.master_kcv.to_string(),
                f.master_kcv.to_string(),
            );
        }
        if let Some(other) = shares.iter().take(i).find(|o| o.info.index == s.index) {
            return Err(BackupError::Duplicate {
                file: share.origin.clone(),
                other: other.origin.clone(),
                index: s.index,
            });
        }
    }
    Ok(f)
}

/// Rebuilds the master from at least M shares of one split: every share's KCV is checked, the
/// shares must agree on fleet, generation, M, N and the whole KCV, no index may repeat, and the
/// rebuilt master must match the whole KCV. Shares of the governance root are refused
/// ([`BackupError::WrongSecret`]).
pub fn combine(shares: &[Share]) -> Result<MasterKey, BackupError> {
    let value = combine_secret(shares, Secret::Master)?;
    Ok(MasterKey::from_bytes(*value))
}

/// Rebuilds the governance root's seed from at least M of its shares, checked as [`combine`]
/// checks a master's. Shares of a master are refused ([`BackupError::WrongSecret`]).
pub fn combine_root(shares: &[Share]) -> Result<SigningSeed, BackupError> {
    combine_secret(shares, Secret::GovernanceRoot).map(SigningSeed::from_bytes)
}

fn combine_secret(shares: &[Share], expected: Secret) -> Result<Zeroizing<[u8; 32]>, BackupError> {
    if let Some(other) = shares.iter().find(|s| s.info.secret != expected) {
        return Err(BackupError::WrongSecret {
            file: other.origin.clone(),
            found: other.info.secret,
            expected,
        });
    }
    let info = check_set(shares)?;
    if shares.len() < usize::from(info.threshold) {
        return Err(BackupError::NotEnough {
            have: shares.len(),
            need: info.threshold,
        });
    }
    let points: Vec<blahaj::Share> = shares
        .iter()
        .filter_map(|s| {
            let mut bytes = Zeroizing::new([0u8; 33]);
            let (x, y) = bytes.split_at_mut(1);
            x.copy_from_slice(&[s.info.index]);
            y.copy_from_slice(&s.value[..]);
            blahaj::Share::try_from(&bytes[..]).ok()
        })
        .collect();
    let rebuilt = Zeroizing::new(blahaj::Sharks(info.threshold).recover(&points).map_err(
        |_| BackupError::NotEnough {
            have: points.len(),
            need: info.threshold,
        },
    )?);
    drop(points);
    let mut value = Zeroizing::new([0u8; 32]);
    if rebuilt.len() != value.len() {
        return Err(BackupError::MasterKcv {
            expected: info.master_kcv,
        });
    }
    value.copy_from_slice(&rebuilt);
    if !whole_kcv(expected, &value).matches(&info.master_kcv) {
        return Err(BackupError::MasterKcv {
            expected: info.master_kcv,
        });
    }
    Ok(value)
}

/// Checks shares without a key module: each share's KCV and their agreement; with at least M
/// shares, also rebuilds the master (in zeroizing memory, dropped at once) against the whole KCV.
pub fn verify(shares: &[Share]) -> Result<VerifyReport, BackupError> {
    let info = check_set(shares)?;
    let master_checked = if shares.len() >= usize::from(info.threshold) {
        combine_secret(shares, info.secret)?;
        true
    } else {
        false
    };
    Ok(VerifyReport {
        secret: info.secret,
        fleet: info.fleet.clone(),
        generation: info.generation,
        threshold: info.threshold,
        count: info.count,
        master_kcv: info.master_kcv,
        shares: shares.iter().map(|s| s.info.clone()).collect(),
        master_checked,
    })
}

#[cfg(test)]
mod tests;
