//! A pool of open [`Fleet`] handles. A `Fleet` is synchronous and `&mut self`: each request takes
//! one handle for the length of its blocking work (on tokio's blocking threads), so the pool's
//! size bounds the store connections and the concurrent operations of this instance.

use std::sync::{Arc, Mutex};

use fleetkey::error::Error;
use fleetkey::fleet::Fleet;
use tokio::sync::Semaphore;

use crate::problem::ApiError;

/// Opens one more handle on the fleet (each with its own store connection).
pub type Opener = Arc<dyn Fn() -> Result<Fleet, Error> + Send + Sync>;

/// Fleet handles shared by the requests of one instance.
pub struct FleetPool {
    idle: Mutex<Vec<Fleet>>,
    permits: Arc<Semaphore>,
    opener: Opener,
    size: usize,
    fleet_id: String,
    clock: Arc<dyn fleetkey::fleet::Clock>,
}

impl std::fmt::Debug for FleetPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetPool")
            .field("size", &self.size)
            .field("fleet_id", &self.fleet_id)
            .finish_non_exhaustive()
    }
}

impl Drop for FleetPool {
    fn drop(&mut self) {
        let fleets = std::mem::take(self.idle.get_mut().unwrap_or_else(|p| p.into_inner()));
        if !fleets.is_empty() && tokio::runtime::Handle::try_current().is_ok() {
            // A synchronous store client (postgres) runs a runtime of its own to close its
            // connection, which panics on a runtime's thread: the server drops its state there at
            // shutdown. Close the handles on a plain thread.
            let _ = std::thread::spawn(move || drop(fleets)).join();
        }
    }
}

impl FleetPool {
    /// Opens `size` handles (at least one) with `opener`.
    pub fn open(size: usize, opener: Opener) -> Result<FleetPool, Error> {
        let size = size.max(1);
        let fleets = (0..size).map(|_| opener()).collect::<Result<Vec<_>, _>>()?;
        let fleet_id = fleets[0].config().fleet_id.clone();
        let clock = fleets[0].clock();
        Ok(FleetPool {
            clock,
            idle: Mutex::new(fleets),
            permits: Arc::new(Semaphore::new(size)),
            opener,
            size,
            fleet_id,
        })
    }

    /// How many handles.
    pub fn size(&self) -> usize {
        self.size
    }

    /// What opens a handle (the group-commit writers open theirs with it).
    pub fn opener(&self) -> Opener {
        Arc::clone(&self.opener)
    }

    /// Now, by the fleets' clock (token expiries are on it).
    pub fn now_ms(&self) -> fleetkey::model::UnixMillis {
        self.clock.now_ms()
    }

    /// The fleet's id.
    pub fn fleet_id(&self) -> &str {
        &self.fleet_id
    }

    /// Runs `f` with a handle on a blocking thread, waiting for a free handle first. A handle
    /// whose work panicked is replaced by a newly opened one.
    pub async fn run<T, F>(self: &Arc<Self>, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Fleet) -> Result<T, ApiError> + Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| ApiError::Unavailable("the service is shutting down"))?;
        let pool = Arc::clone(self);
        let joined = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let taken = pool.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let mut fleet = match taken {
                Some(f) => f,
                None => (pool.opener)().map_err(ApiError::Fleet)?,
            };
            let out = f(&mut fleet);
            pool.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(fleet);
            out
        })
        .await;
        match joined {
            Ok(out) => out,
            // The handle went down with the panic; the next `run` opens a new one.
            Err(e) => Err(ApiError::Internal(format!("request worker failed: {e}"))),
        }
    }
}
