//! The lifecycle scheduler of `fleetkey serve`: every interval, on its own thread and its own
//! fleet handle (opened afresh each time, so a generation another instance created is in its key
//! module), it runs [`Fleet::lifecycle_run`]. Among several instances on one store the lease in
//! the store lets exactly one act; the others find it held and keep serving requests. A holder
//! that dies stops renewing; once its lease expires the next instance takes over and resumes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use fleetkey::error::Error;
use fleetkey::fleet::lifecycle::RunOptions;
use fleetkey::fleet::policy::Span;
use fleetkey::fleet::{Fleet, OutputFile};
use serde::Serialize;

/// Opens a fresh fleet handle for one scheduler run.
pub type FreshOpener = Box<dyn Fn() -> Result<Fleet, Error> + Send>;

/// How the scheduler runs.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Between runs.
    pub interval: Duration,
    /// The lease's lifetime without renewal (renewed between batches).
    pub lease_ttl: Span,
    /// Migration rate limit, devices per second.
    pub rate: Option<f64>,
    /// Devices per transaction in migrations.
    pub batch: usize,
    /// Where migrations' key updates are appended.
    pub out: PathBuf,
    /// This instance's lease holder name.
    pub holder: String,
}

/// What this instance's scheduler knows of itself (the store's lease and last run are beside
/// it in `GET /v1/scheduler`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct LocalStatus {
    /// Whether the scheduler runs in this instance.
    pub enabled: bool,
    /// This instance's lease holder name.
    pub holder: String,
    /// Seconds between runs.
    pub interval_seconds: u64,
    /// When this instance last tried (ms, its clock).
    pub last_attempt_at: Option<i64>,
    /// When this instance next tries.
    pub next_run_at: Option<i64>,
    /// Whether the last attempt found another holder acting.
    pub standby: bool,
    /// The error of this instance's last run, if it failed.
    pub last_error: Option<String>,
    /// What this instance's last run did.
    pub last_actions: Vec<String>,
    /// Runs this instance did while holding the lease.
    pub runs: u64,
    /// Runs of this instance that failed (`/metrics`).
    #[serde(skip)]
    pub errors: u64,
    /// Attempts of this instance that found another holder acting (`/metrics`).
    #[serde(skip)]
    pub standby_runs: u64,
}

/// A running scheduler; dropping it (or [`SchedulerHandle::stop`]) stops it after the run in hand.
#[derive(Debug)]
pub struct SchedulerHandle {
    stop: Arc<AtomicBool>,
    status: Arc<Mutex<LocalStatus>>,
}

impl SchedulerHandle {
    /// The status shared with the API.
    pub fn status(&self) -> Arc<Mutex<LocalStatus>> {
        Arc::clone(&self.status)
    }
    /// Stops after the run in hand.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }
}

impl Drop for SchedulerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A disabled scheduler's status.
pub fn disabled() -> Arc<Mutex<LocalStatus>> {
    Arc::new(Mutex::new(LocalStatus::default()))
}

/// Starts the scheduler thread; `now_ms` is the fleet's clock (for the status). The first run is
/// one interval after start.
pub fn start(
    config: SchedulerConfig,
    opener: FreshOpener,
    now_ms: Arc<dyn Fn() -> i64 + Send + Sync>,
) -> std::io::Result<SchedulerHandle> {
    let stop = Arc::new(AtomicBool::new(false));
    let status = Arc::new(Mutex::new(LocalStatus {
        enabled: true,
        holder: config.holder.clone(),
        interval_seconds: config.interval.as_secs(),
        next_run_at: Some(now_ms().saturating_add(ms(config.interval))),
        ..Default::default()
    }));
    let handle = SchedulerHandle {
        stop: Arc::clone(&stop),
        status: Arc::clone(&status),
    };
    std::thread::Builder::new()
        .name("lifecycle-scheduler".into())
        .spawn(move || {
            let mut next = Instant::now() + config.interval;
            while !stop.load(Ordering::Acquire) {
                if Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(50).min(next - Instant::now()));
                    continue;
                }
                let outcome = run_once(&config, &opener);
                next = Instant::now() + config.interval;
                let mut s = status.lock().unwrap_or_else(PoisonError::into_inner);
                let now = now_ms();
                s.last_attempt_at = Some(now);
                s.next_run_at = Some(now.saturating_add(ms(config.interval)));
                match outcome {
                    Ok(None) => {
                        s.standby = true;
                        s.standby_runs += 1;
                    }
                    Ok(Some(actions)) => {
                        s.standby = false;
                        s.last_error = None;
                        s.runs += 1;
                        if !actions.is_empty() {
                            tracing::info!(holder = %config.holder, actions = ?actions, "lifecycle run");
                        }
                        s.last_actions = actions;
                    }
                    Err(e) => {
                        tracing::warn!(holder = %config.holder, error = %e, "lifecycle run failed");
                        s.standby = false;
                        s.errors += 1;
                        s.last_error = Some(e.to_string());
                    }
                }
            }
        })?;
    Ok(handle)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// One run: `None` when another instance holds the lease.
fn run_once(config: &SchedulerConfig, opener: &FreshOpener) -> Result<Option<Vec<String>>, Error> {
    let mut fleet = opener()?;
    fleet.set_batch_size(config.batch);
    let mut out = OutputFile::append(&config.out).map_err(|source| Error::Io {
        path: config.out.clone(),
        source,
    })?;
    let options = RunOptions {
        dry_run: false,
        until: None,
        rate: config.rate,
        holder: config.holder.clone(),
        lease_ttl: config.lease_ttl,
        reason: "lifecycle policy (scheduler)".into(),
    };
    let report = fleet.lifecycle_run(&options, Some(&mut out), &())?;
    if report.lease_held_by.is_some() {
        return Ok(None);
    }
    Ok(Some(report.done.into_iter().map(|d| d.message).collect()))
}
