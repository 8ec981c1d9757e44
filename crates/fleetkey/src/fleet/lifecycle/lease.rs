//! The scheduler's lease: among the processes that may act on a fleet (service instances,
//! cron runs of `lifecycle run`), the one holding it acts. It is a named value in the store
//! (`meta` `lifecycle.lease`: holder and expiry), taken, renewed and released in serializable
//! transactions, so two processes can never both hold it; an expired lease is taken over.

use serde::{Deserialize, Serialize};

use crate::error::{Error, StoreError};
use crate::model::UnixMillis;
use crate::store::Tx;

/// The store meta key of the lease.
pub const META_LEASE: &str = "lifecycle.lease";
/// The store meta key of the last run's outcome.
pub const META_LAST_RUN: &str = "lifecycle.last_run";

/// Who holds the lease, until when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The holder (`serve:<host>:<pid>`, `cli:<host>:<pid>`).
    pub holder: String,
    /// It expires then (ms); 0 once released.
    pub until: UnixMillis,
}

/// The outcome of the last scheduler run, whoever ran it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRun {
    /// Who ran it.
    pub holder: String,
    /// When it started.
    pub started_at: UnixMillis,
    /// When it ended.
    pub finished_at: UnixMillis,
    /// What it did, one line per action.
    pub actions: Vec<String>,
    /// Its error, if it failed.
    pub error: Option<String>,
}

pub(crate) fn read(tx: &mut dyn Tx) -> Result<Option<Lease>, Error> {
    match tx.meta(META_LEASE)? {
        None => Ok(None),
        Some(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("{META_LEASE}: {e}")).into()),
    }
}

/// Takes or renews the lease for `holder` until `now + ttl_ms`: `Ok(Err(other))` when another
/// holder's lease is still live.
pub(crate) fn take(
    tx: &mut dyn Tx,
    holder: &str,
    now: UnixMillis,
    ttl_ms: i64,
) -> Result<Result<Lease, Lease>, Error> {
    if let Some(current) = read(tx)?
        && current.holder != holder
        && current.until > now
    {
        return Ok(Err(current));
    }
    let lease = Lease {
        holder: holder.to_owned(),
        until: now.saturating_add(ttl_ms),
    };
    let text = serde_json::to_string(&lease).map_err(|e| Error::invalid("lease", e))?;
    tx.put_meta(META_LEASE, &text)?;
    Ok(Ok(lease))
}

/// Releases the lease if `holder` has it.
pub(crate) fn release(tx: &mut dyn Tx, holder: &str) -> Result<(), Error> {
    if let Some(mut current) = read(tx)?
        && current.holder == holder
    {
        current.until = 0;
        let text = serde_json::to_string(&current).map_err(|e| Error::invalid("lease", e))?;
        tx.put_meta(META_LEASE, &text)?;
    }
    Ok(())
}

pub(crate) fn last_run(tx: &mut dyn Tx) -> Result<Option<LastRun>, Error> {
    match tx.meta(META_LAST_RUN)? {
        None => Ok(None),
        Some(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("{META_LAST_RUN}: {e}")).into()),
    }
}

pub(crate) fn put_last_run(tx: &mut dyn Tx, run: &LastRun) -> Result<(), Error> {
    let text = serde_json::to_string(run).map_err(|e| Error::invalid("last run", e))?;
    tx.put_meta(META_LAST_RUN, &text)?;
    Ok(())
}
