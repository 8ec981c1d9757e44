//! What the governed scheme's records (`governance.rs`) and the root's lifecycle (`root.rs`) both
//! read: the one sequence series of generation records and handovers, the root the store pins
//! and the handovers' sequences, and the module's signing root with the module half of an
//! interrupted rotation finished. Dependencies point one way: `root.rs` uses `governance.rs`,
//! both use this module, and this module uses neither.

use std::time::Duration;

use super::Fleet;
use crate::error::{Error, ModuleError, StoreError};
use crate::governance::IssueError;
use crate::model::Scheme;
use crate::store::{Tx, read_tx, transact};

/// The last published sequence (generation records and handovers share the series).
pub(super) const META_SEQUENCE: &str = "governance.sequence";
/// Hex of the root public key devices pin (set at init and by every handover).
pub(super) const META_ROOT: &str = "governance.root";
/// A JSON array of the handovers' sequences.
pub(super) const META_HANDOVERS: &str = "governance.handovers";

pub(super) fn issue_error(e: IssueError<ModuleError>) -> Error {
    match e {
        IssueError::Sign(m) => Error::Module(m),
        other => Error::invalid("governance record", other),
    }
}

pub(super) fn meta_u64(tx: &mut dyn Tx, key: &str) -> Result<u64, Error> {
    match tx.meta(key)? {
        None => Ok(0),
        Some(v) => v
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("{key}: {e}")).into()),
    }
}

pub(super) fn read_hex(tx: &mut dyn Tx, key: &str) -> Result<Option<Vec<u8>>, Error> {
    tx.meta(key)?
        .map(|h| hex::decode(h).map_err(|e| StoreError::Corrupt(format!("{key}: {e}")).into()))
        .transpose()
}

pub(super) fn read_key(tx: &mut dyn Tx, key: &str) -> Result<Option<[u8; 32]>, Error> {
    read_hex(tx, key)?
        .map(|bytes| {
            <[u8; 32]>::try_from(bytes.as_slice())
                .map_err(|_| StoreError::Corrupt(format!("{key}: not 32 bytes")).into())
        })
        .transpose()
}

pub(super) fn handover_sequences(tx: &mut dyn Tx) -> Result<Vec<u64>, Error> {
    match tx.meta(META_HANDOVERS)? {
        None => Ok(Vec::new()),
        Some(v) => serde_json::from_str(&v)
            .map_err(|e| StoreError::Corrupt(format!("{META_HANDOVERS}: {e}")).into()),
    }
}

impl Fleet {
    pub(super) fn require_governed(&self, what: &'static str) -> Result<(), Error> {
        if self.config.scheme == Scheme::Governed {
            Ok(())
        } else {
            Err(Error::NotGoverned {
                operation: what,
                scheme: self.config.scheme,
            })
        }
    }

    pub(super) fn now_s(&self) -> u64 {
        u64::try_from(self.access.clock.now_ms() / 1000).unwrap_or(0)
    }

    pub(super) fn window(&self, validity: Duration) -> Result<(u64, u64), Error> {
        let secs = validity.as_secs();
        if secs == 0 {
            return Err(Error::invalid("validity", "at least one second"));
        }
        let now = self.now_s();
        Ok((now, now.saturating_add(secs)))
    }

    /// The root public key the store pins (set at init and by every handover); `None` for a
    /// fleet created before roots were recorded, whose root is the module's.
    pub(super) fn pinned_root(&mut self) -> Result<Option<[u8; 32]>, Error> {
        read_tx(self.store.as_mut(), |tx| read_key(tx, META_ROOT))
    }

    /// The root devices pin: the store's, read without the key module; only a fleet that
    /// records none asks the module.
    pub(super) fn pinned_or_module_root(&mut self) -> Result<[u8; 32], Error> {
        match self.pinned_root()? {
            Some(pinned) => Ok(pinned),
            None => self
                .module
                .get()?
                .signing_public_key()?
                .ok_or_else(|| ModuleError::NoSigningKey.into()),
        }
    }

    /// The module's root, after finishing the module half of a rotation a crash interrupted:
    /// when the store pins the staged next root (the handover was recorded) but the module still
    /// signs with the old one, the staged root is promoted now. The records' half (grants
    /// re-issued, a record published) is `Fleet::live_root` in `governance.rs`.
    pub(super) fn signing_root(&mut self) -> Result<[u8; 32], Error> {
        let module = self.module.get()?;
        let current = module.signing_public_key()?;
        let Some(pinned) = transact(self.store.as_mut(), |tx| read_key(tx, META_ROOT))? else {
            return current.ok_or_else(|| ModuleError::NoSigningKey.into());
        };
        if current == Some(pinned) {
            return Ok(pinned);
        }
        if module.staged_signing_public_key()? == Some(pinned) {
            return Ok(module.promote_signing_key()?);
        }
        Err(match current {
            None => Error::Module(ModuleError::NoSigningKey),
            Some(found) => Error::RootMismatch { found, pinned },
        })
    }
}

/// Hex of the handover of a sequence.
pub(super) const META_HANDOVER: &str = "governance.handover.";

/// Every handover recorded, oldest first: its sequence and bytes.
pub(super) fn read_handovers(tx: &mut dyn Tx) -> Result<Vec<(u64, Vec<u8>)>, Error> {
    let mut out = Vec::new();
    for sequence in handover_sequences(tx)? {
        let key = format!("{META_HANDOVER}{sequence}");
        let bytes =
            read_hex(tx, &key)?.ok_or_else(|| StoreError::Corrupt(format!("{key} is missing")))?;
        out.push((sequence, bytes));
    }
    Ok(out)
}
