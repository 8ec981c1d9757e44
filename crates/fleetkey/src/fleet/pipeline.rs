//! Bulk work in two stages on two kinds of thread: the calling thread runs the store's
//! transactions and hands the results on in order (writes the lines, deletes the journal entries
//! they settle), while worker threads do what needs no store: deriving keys, building SHE
//! updates, formatting lines. Batch `n + 1` commits while the lines of batch `n` are being made.
//!
//! Delivery stays at least once ([`super::delivery`]): a batch's lines are made only from
//! records its transaction committed and journaled, and handed on in commit order; a batch
//! committed whose lines were not handed on when the work stopped is owed by the journal, and
//! the next run sends it.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use crate::error::Error;

/// Worker threads for bulk work: one per core the process may use, at least one.
pub(super) fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// Runs `produce` on the calling thread until it returns `None` (at most `depth` jobs produced
/// and not yet consumed), `work` on each job it produced in `workers` threads (at most `depth`
/// of them), and `consume` on the calling thread on each result in the order the jobs were
/// produced. `produce` and
/// `consume` share `state`. The first error stops the run: no job is produced after it, the
/// results of jobs produced before it are still consumed unless the error was `consume`'s own,
/// and it is returned.
pub(super) fn in_order<S, J, R>(
    state: &mut S,
    workers: usize,
    depth: usize,
    mut produce: impl FnMut(&mut S) -> Result<Option<J>, Error>,
    work: impl Fn(J) -> Result<R, Error> + Sync,
    mut consume: impl FnMut(&mut S, R) -> Result<(), Error>,
) -> Result<(), Error>
where
    J: Send,
    R: Send,
{
    let depth = depth.max(1);
    std::thread::scope(|scope| {
        let (jobs, queue) = mpsc::channel::<(u64, J)>();
        let queue = Arc::new(Mutex::new(queue));
        let (results, done) = mpsc::channel::<(u64, Result<R, Error>)>();
        // No more threads than jobs can be in flight.
        for _ in 0..workers.clamp(1, depth) {
            let queue = Arc::clone(&queue);
            let results = results.clone();
            let work = &work;
            scope.spawn(move || {
                loop {
                    // The lock is held only to take a job, not while working on it.
                    let next = match queue.lock() {
                        Ok(q) => q.recv(),
                        Err(_) => return,
                    };
                    let Ok((n, job)) = next else { return };
                    if results.send((n, work(job))).is_err() {
                        return;
                    }
                }
            });
        }
        drop(results);
        let mut produced = 0u64;
        let mut consumed = 0u64;
        // `produce` said it is done (or failed): it is not called again.
        let mut finished = false;
        let mut stopped: Option<Error> = None;
        let mut ready: BTreeMap<u64, Result<R, Error>> = BTreeMap::new();
        loop {
            while !finished && produced - consumed < depth as u64 {
                match produce(state) {
                    Ok(Some(job)) => {
                        if jobs.send((produced, job)).is_err() {
                            return Err(Error::invalid("bulk work", "its worker threads stopped"));
                        }
                        produced += 1;
                    }
                    Ok(None) => finished = true,
                    Err(e) => {
                        stopped = Some(e);
                        finished = true;
                    }
                }
            }
            if consumed == produced {
                break;
            }
            let result = loop {
                if let Some(r) = ready.remove(&consumed) {
                    break r;
                }
                match done.recv() {
                    Ok((n, r)) => {
                        ready.insert(n, r);
                    }
                    // Every worker is gone with jobs outstanding: one panicked.
                    Err(_) => break Err(Error::invalid("bulk work", "a worker thread stopped")),
                }
            };
            consumed += 1;
            if let Err(e) = result.and_then(|r| consume(state, r)) {
                // The jobs still in flight are not waited for: their batches are owed by the
                // journal.
                drop(jobs);
                return Err(stopped.unwrap_or(e));
            }
        }
        drop(jobs);
        stopped.map_or(Ok(()), Err)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(n: u64, workers: usize, depth: usize) -> Result<Vec<u64>, Error> {
        let mut state = (0u64, Vec::new());
        in_order(
            &mut state,
            workers,
            depth,
            |(next, _)| {
                if *next == n {
                    return Ok(None);
                }
                *next += 1;
                Ok(Some(*next))
            },
            |job| {
                // Later jobs finish first now and then.
                if job % 3 == 0 {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                Ok(job * 10)
            },
            |(_, out), r| {
                out.push(r);
                Ok(())
            },
        )?;
        Ok(state.1)
    }

    #[test]
    fn results_are_consumed_in_the_order_jobs_were_produced() {
        for (workers, depth) in [(1, 1), (2, 2), (3, 8), (4, 1)] {
            let out = run(50, workers, depth).unwrap();
            assert_eq!(out, (1..=50).map(|j| j * 10).collect::<Vec<_>>());
        }
        assert!(run(0, 2, 2).unwrap().is_empty());
    }

    #[test]
    fn an_error_of_produce_stops_production_and_what_was_produced_is_consumed() {
        let mut state = (0u64, Vec::new());
        let e = in_order(
            &mut state,
            2,
            4,
            |(next, _)| {
                if *next == 5 {
                    return Err(Error::invalid("test", "produce failed"));
                }
                *next += 1;
                Ok(Some(*next))
            },
            Ok,
            |(_, out), r| {
                out.push(r);
                Ok(())
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("produce failed"), "{e}");
        assert_eq!(state.1, vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn an_error_of_work_or_consume_stops_the_run_at_that_job() {
        let mut state = (0u64, Vec::new());
        let e = in_order(
            &mut state,
            2,
            2,
            |(next, _)| {
                *next += 1;
                Ok((*next <= 100).then_some(*next))
            },
            |j| {
                if j == 7 {
                    Err(Error::invalid("test", "work failed"))
                } else {
                    Ok(j)
                }
            },
            |(_, out), r| {
                out.push(r);
                Ok(())
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("work failed"), "{e}");
        assert_eq!(state.1, (1..7).collect::<Vec<_>>());
        // At most `depth` jobs were produced past the one that failed.
        assert!(state.0 <= 7 + 2, "{}", state.0);

        let mut state = (0u64, Vec::new());
        let e = in_order(
            &mut state,
            2,
            2,
            |(next, _)| {
                *next += 1;
                Ok((*next <= 100).then_some(*next))
            },
            Ok,
            |(_, out), r| {
                if r == 3 {
                    return Err(Error::invalid("test", "consume failed"));
                }
                out.push(r);
                Ok(())
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("consume failed"), "{e}");
        assert_eq!(state.1, vec![1, 2]);
    }
}
