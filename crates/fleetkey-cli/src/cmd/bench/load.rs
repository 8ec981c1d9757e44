//! A small HTTP load client: C workers, each with its own keep-alive connection, send one request
//! after another and time each one. Used by `fleetkey bench serve` (and the scale-out test's
//! pattern): throughput and latency percentiles at a given concurrency.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// One request to send: a path under the base URL and a JSON body (POST), or none (GET).
#[derive(Clone, Debug)]
pub(crate) struct Request {
    pub(crate) path: String,
    pub(crate) body: Option<String>,
    /// Extra headers (e.g. `idempotency-key`).
    pub(crate) headers: Vec<(String, String)>,
}

/// What a run measured.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct LoadReport {
    pub(crate) concurrency: usize,
    pub(crate) requests: usize,
    pub(crate) failed: usize,
    pub(crate) seconds: f64,
    pub(crate) requests_per_s: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    /// The first failure's status and body, to say what went wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) first_failure: Option<String>,
}

/// Sends every request once, `concurrency` at a time, each worker taking the next unsent one.
/// A request counts as failed unless the status is `expect`.
pub(crate) fn run(
    base: &str,
    token: &str,
    requests: Vec<Request>,
    concurrency: usize,
    expect: u16,
    on_done: &(dyn Fn(u64) + Sync),
) -> LoadReport {
    let requests = Arc::new(requests);
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let results: Vec<(Vec<Duration>, usize, Option<String>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..concurrency.max(1))
            .map(|_| {
                let requests = Arc::clone(&requests);
                let next = &next;
                s.spawn(move || {
                    let agent: ureq::Agent = ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .timeout_global(Some(Duration::from_secs(60)))
                        .build()
                        .into();
                    let mut latencies = Vec::new();
                    let mut failed = 0;
                    let mut first = None;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(r) = requests.get(i) else { break };
                        let t = Instant::now();
                        let url = format!("{base}{}", r.path);
                        let auth = format!("Bearer {token}");
                        let outcome = match &r.body {
                            Some(body) => {
                                let mut post = agent
                                    .post(&url)
                                    .header("authorization", &auth)
                                    .content_type("application/json");
                                for (name, value) in &r.headers {
                                    post = post.header(name.as_str(), value.as_str());
                                }
                                post.send(body.as_str())
                            }
                            None => {
                                let mut get = agent.get(&url).header("authorization", &auth);
                                for (name, value) in &r.headers {
                                    get = get.header(name.as_str(), value.as_str());
                                }
                                get.call()
                            }
                        };
                        let ok = match outcome {
                            Ok(mut resp) => {
                                let status = resp.status().as_u16();
                                let body = resp.body_mut().read_to_string().unwrap_or_default();
                                if status == expect {
                                    true
                                } else {
                                    first.get_or_insert_with(|| format!("HTTP {status}: {body}"));
                                    false
                                }
                            }
                            Err(e) => {
                                first.get_or_insert_with(|| e.to_string());
                                false
                            }
                        };
                        latencies.push(t.elapsed());
                        if !ok {
                            failed += 1;
                        }
                        on_done(1);
                    }
                    (latencies, failed, first)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| (vec![], 0, Some("worker panicked".into())))
            })
            .collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    let mut all: Vec<Duration> = results.iter().flat_map(|r| r.0.iter().copied()).collect();
    all.sort_unstable();
    let failed = results.iter().map(|r| r.1).sum();
    let first_failure = results.into_iter().find_map(|r| r.2);
    LoadReport {
        concurrency,
        requests: all.len(),
        failed,
        seconds,
        requests_per_s: all.len() as f64 / seconds.max(1e-9),
        p50_ms: percentile(&all, 0.50),
        p99_ms: percentile(&all, 0.99),
        max_ms: all.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        first_failure,
    }
}

/// The `q` quantile (nearest rank) of sorted durations, in milliseconds.
pub(super) fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&d, 0.5), 50.0);
        assert_eq!(percentile(&d, 0.99), 99.0);
        assert_eq!(percentile(&d[..1], 0.99), 1.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
