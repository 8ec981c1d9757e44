//! Group commit: the device writes of concurrent requests (provision, refresh, suspend, resume,
//! revoke) gathered into one store transaction ([`fleetkey::fleet::group`]).
//!
//! A request is authorized first (its role, its rate), then queued. A writer thread with a fleet
//! handle of its own takes what is queued, up to [`GroupConfig::max_writes`] writes, waiting at
//! most [`GroupConfig::max_wait`] for more once the queue is empty (zero: it takes only what is
//! there; while it commits, the next group gathers), and runs them in one transaction. Each
//! request is answered only after that transaction committed (durable: `synchronous = FULL` on
//! SQLite, the commit's WAL flush on PostgreSQL). A write that fails gets its own error and the
//! others commit; when the transaction itself fails, every request of the group gets its error
//! and nothing of the group changed.
//!
//! Decommissioning (its purge rewrites the store's files) and the fleet-wide operations are not
//! grouped: they run on the pool as before.

use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetkey::fleet::Fleet;
use fleetkey::fleet::group::{GroupWrite, Outcome};
use tokio::sync::oneshot;

use crate::app::Reply;
use crate::pool::Opener;
use crate::problem::ApiError;

/// How writes are grouped.
#[derive(Clone, Copy, Debug)]
pub struct GroupConfig {
    /// Writes per transaction at most.
    pub max_writes: usize,
    /// How long a writer waits for more writes once the queue is empty (zero: not at all).
    pub max_wait: Duration,
    /// Writer threads, each with its own store connection. One suits SQLite (one writer at a
    /// time in any case); more overlap PostgreSQL's round trips, at the price of serialization
    /// conflicts on the audit head (each is retried).
    pub writers: usize,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            max_writes: 256,
            max_wait: Duration::ZERO,
            writers: 1,
        }
    }
}

/// A queued write and where its answer goes.
struct Job {
    write: GroupWrite,
    reply: oneshot::Sender<Result<Reply, ApiError>>,
    span: tracing::Span,
}

/// The queue and its writers.
pub struct GroupCommit {
    sender: mpsc::Sender<Job>,
    config: GroupConfig,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl GroupCommit {
    /// Starts `config.writers` writer threads; each opens its fleet handle with `opener` when its
    /// first write comes (and again after a failure to open, or a panic). They stop when this is
    /// dropped, after the writes queued by then.
    pub fn start(opener: Opener, config: GroupConfig, metrics: crate::metrics::Shared) -> Self {
        let config = GroupConfig {
            max_writes: config.max_writes.max(1),
            writers: config.writers.max(1),
            ..config
        };
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for n in 0..config.writers {
            let writer = Writer {
                opener: Arc::clone(&opener),
                fleet: None,
                queue: Arc::clone(&receiver),
                config,
                metrics: Arc::clone(&metrics),
            };
            let spawned = std::thread::Builder::new()
                .name(format!("fleetkey-group-commit-{n}"))
                .spawn(move || writer.run());
            if let Err(e) = spawned {
                // Fewer writers; with none, every write is answered 503 (below).
                tracing::error!(error = %e, "a group-commit writer thread could not start");
            }
        }
        GroupCommit { sender, config }
    }

    /// The configuration.
    pub fn config(&self) -> GroupConfig {
        self.config
    }

    /// Queues `write` and waits for its outcome (after its group committed).
    pub async fn submit(&self, write: GroupWrite) -> Result<Reply, ApiError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            write,
            reply,
            span: tracing::Span::current(),
        };
        self.sender
            .send(job)
            .map_err(|_| ApiError::Unavailable("the service's writers have stopped"))?;
        answer.await.unwrap_or(Err(ApiError::Unavailable(
            "the service's writers have stopped",
        )))
    }
}

/// One writer thread.
struct Writer {
    opener: Opener,
    fleet: Option<Fleet>,
    queue: Arc<Mutex<mpsc::Receiver<Job>>>,
    config: GroupConfig,
    metrics: crate::metrics::Shared,
}

impl Writer {
    fn run(mut self) {
        while let Some(jobs) = self.gather() {
            self.commit(jobs);
        }
    }

    /// The next group: blocks for its first write; `None` when the queue is closed.
    fn gather(&self) -> Option<Vec<Job>> {
        let queue = self
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut jobs = vec![queue.recv().ok()?];
        let deadline = Instant::now() + self.config.max_wait;
        while jobs.len() < self.config.max_writes {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match queue.recv_timeout(left) {
                        Ok(job) => jobs.push(job),
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    }
                }
            }
        }
        // A request that gave up (its timeout passed) is not run: it changed nothing.
        jobs.retain(|j| !j.reply.is_closed());
        Some(jobs)
    }

    fn commit(&mut self, jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        if self.fleet.is_none() {
            match (self.opener)() {
                Ok(fleet) => self.fleet = Some(fleet),
                Err(e) => {
                    let problem = ApiError::Fleet(e).problem();
                    tracing::warn!(detail = %problem.detail, "a group-commit writer could not open the fleet");
                    for job in jobs {
                        let _ = job
                            .reply
                            .send(Err(ApiError::Problem(Box::new(problem.clone()))));
                    }
                    return;
                }
            }
        }
        let Some(fleet) = self.fleet.as_mut() else {
            return;
        };
        let writes: Vec<GroupWrite> = jobs.iter().map(|j| j.write.clone()).collect();
        let started = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            fleet.write_group(&writes, &crate::routes::devices::render_write)
        }));
        self.metrics.observe_group(writes.len(), started.elapsed());
        match result {
            Ok(Ok(outcomes)) => {
                for (job, outcome) in jobs.into_iter().zip(outcomes) {
                    let answer = job.span.in_scope(|| answer(&job.write, outcome));
                    let _ = job.reply.send(answer);
                }
            }
            Ok(Err(e)) => {
                let problem = ApiError::Fleet(e).problem();
                tracing::warn!(writes = writes.len(), detail = %problem.detail, "a group-commit transaction failed; nothing of it changed");
                for job in jobs {
                    let _ = job
                        .reply
                        .send(Err(ApiError::Problem(Box::new(problem.clone()))));
                }
            }
            Err(_) => {
                // The handle went down with the panic: open a new one for the next group.
                self.fleet = None;
                for job in jobs {
                    let _ = job.reply.send(Err(ApiError::Internal(
                        "a group-commit writer failed".into(),
                    )));
                }
            }
        }
    }
}

/// A write's outcome as its request's answer, logged in the request's span.
fn answer(write: &GroupWrite, outcome: Outcome<ApiError>) -> Result<Reply, ApiError> {
    match outcome {
        Outcome::Done(r) => {
            tracing::info!(serial = %write.serial, action = write.write.action(), "committed");
            Ok(Reply::from_response(r, false))
        }
        Outcome::Replayed(r) => Ok(Reply::from_response(r, true)),
        Outcome::IdempotencyMismatch => Err(ApiError::IdempotencyMismatch),
        Outcome::IdempotencyInProgress => Err(ApiError::IdempotencyInProgress),
        Outcome::Failed(e) => Err(ApiError::Fleet(e)),
        Outcome::Unrendered(e) => Err(e),
    }
}
