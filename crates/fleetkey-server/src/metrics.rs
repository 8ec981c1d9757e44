//! `GET /metrics`: the service's figures in the Prometheus text format (0.0.4).
//!
//! Counted as requests come ([`Metrics::observe`], from the request frame): requests by method,
//! route template (from [`crate::routes::ROUTES`], never the concrete path: a serial is never a
//! label) and status, and their latency. Read at scrape time: the store's and key module's
//! process-wide counters ([`fleetkey::stats`]), this instance's lifecycle scheduler, and from the
//! store, in one transaction of count queries, devices by state, generations by state and the
//! audit chain's length.
//!
//! On the main listener `/metrics` needs a token of a role that may read the status (admin,
//! operator, auditor); [`crate::Server::bind_metrics`] serves it without a token on a loopback
//! address only.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fleetkey::fleet::FleetStatus;
use fleetkey::lifecycle::State as Lifecycle;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::app::{AppState, Ctx};
use crate::auth::Action;
use crate::problem::ApiError;

/// The route label of a request no route matched (its path is never a label).
pub const UNMATCHED: &str = "unmatched";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: &'static str,
}

/// The request counters of one service instance.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    group_writes: Histogram,
    group_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// A method as a label: the standard ones, else `other`.
fn method_label(method: &Method) -> &'static str {
    [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::HEAD,
        Method::OPTIONS,
    ]
    .into_iter()
    .zip(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
    .find(|(m, _)| m == method)
    .map_or("other", |(_, name)| name)
}

/// A matched route template as the `'static` text of the route table; anything else (no match,
/// or a template the table lacks) is [`UNMATCHED`].
pub fn route_label(matched: Option<&str>) -> &'static str {
    let Some(matched) = matched else {
        return UNMATCHED;
    };
    crate::routes::ROUTES
        .iter()
        .map(|r| r.path)
        .chain(crate::console::PATHS.iter().copied())
        .find(|p| *p == matched)
        .unwrap_or(UNMATCHED)
}

impl Metrics {
    /// Empty counters.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "fleetkey_http_requests",
            "HTTP requests by method, route template and status",
            requests.clone(),
        );
        let latency: Family<RouteLabels, Histogram> = Family::new_with_constructor(|| {
            // 1 ms to 8 s.
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        registry.register(
            "fleetkey_http_request_duration_seconds",
            "HTTP request latency from headers read to response, by method and route template",
            latency.clone(),
        );
        // 1 to 1024 writes.
        let group_writes = Histogram::new(exponential_buckets(1.0, 2.0, 11));
        registry.register(
            "fleetkey_group_commit_writes",
            "Device writes per group-commit transaction",
            group_writes.clone(),
        );
        // 0.1 ms to 3.3 s.
        let group_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "fleetkey_group_commit_duration_seconds",
            "Group-commit transactions from begin to durable commit",
            group_seconds.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            group_writes,
            group_seconds,
        }
    }

    /// Counts one group-commit transaction of `writes` writes that took `took`.
    pub fn observe_group(&self, writes: usize, took: Duration) {
        self.group_writes.observe(writes as f64);
        self.group_seconds.observe(took.as_secs_f64());
    }

    /// Counts one response.
    pub fn observe(
        &self,
        method: &Method,
        route: &'static str,
        status: StatusCode,
        took: Duration,
    ) {
        let method = method_label(method);
        self.requests
            .get_or_create(&RequestLabels {
                method,
                route,
                status: status.as_u16(),
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels { method, route })
            .observe(took.as_secs_f64());
    }

    /// The scrape text: the request counters, then the figures read now (`store` is `None`
    /// when the store could not be read).
    pub fn render(
        &self,
        store: Option<&FleetStatus>,
        scheduler: &crate::scheduler::LocalStatus,
    ) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
        prometheus_client::encoding::prometheus_text::encode(
            &mut text,
            &scraped(store, scheduler),
        )?;
        Ok(text)
    }
}

type Labels = Vec<(&'static str, String)>;

fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.into_iter().map(|(k, v)| (k, v.to_owned())).collect()
}

fn counter_family(registry: &mut Registry, name: &str, help: &str, rows: Vec<(Labels, u64)>) {
    let family = Family::<Labels, Counter>::default();
    for (l, v) in rows {
        family.get_or_create(&l).inc_by(v);
    }
    registry.register(name, help, family);
}

fn gauge_family(registry: &mut Registry, name: &str, help: &str, rows: Vec<(Labels, i64)>) {
    let family = Family::<Labels, Gauge>::default();
    for (l, v) in rows {
        family.get_or_create(&l).set(v);
    }
    registry.register(name, help, family);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g = Gauge::<i64>::default();
    g.set(value);
    registry.register(name, help, g);
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The figures read at scrape time, as a registry of their own.
fn scraped(store: Option<&FleetStatus>, scheduler: &crate::scheduler::LocalStatus) -> Registry {
    let mut r = Registry::default();
    let stores = fleetkey::stats::store_counts();
    let by_store = |f: fn(&fleetkey::stats::StoreCounts) -> u64| {
        stores
            .iter()
            .map(|s| (labels([("store", s.store)]), f(s)))
            .collect::<Vec<_>>()
    };
    counter_family(
        &mut r,
        "fleetkey_store_transactions",
        "Store transactions begun by this process",
        by_store(|s| s.transactions),
    );
    counter_family(
        &mut r,
        "fleetkey_store_transaction_retries",
        "Store transactions run again: PostgreSQL serialization failures and deadlocks, SQLite busy begins",
        by_store(|s| s.retries),
    );
    counter_family(
        &mut r,
        "fleetkey_store_lock_waits",
        "SQLite transactions that waited at least 1 ms for another writer's lock",
        by_store(|s| s.lock_waits),
    );
    counter_family(
        &mut r,
        "fleetkey_store_busy",
        "Store transactions given up as busy (503 store busy)",
        by_store(|s| s.busy),
    );
    let modules = fleetkey::stats::module_counts();
    let by_op = |errors: bool| {
        modules
            .iter()
            .map(|m| {
                (
                    labels([("module", m.module), ("operation", m.operation)]),
                    if errors { m.errors } else { m.calls },
                )
            })
            .collect::<Vec<_>>()
    };
    counter_family(
        &mut r,
        "fleetkey_key_module_operations",
        "Key module calls by module kind and operation (bulk_derive: one per key)",
        by_op(false),
    );
    counter_family(
        &mut r,
        "fleetkey_key_module_errors",
        "Key module calls that failed, by module kind and operation",
        by_op(true),
    );
    gauge(
        &mut r,
        "fleetkey_scheduler_enabled",
        "Whether the lifecycle scheduler runs in this instance",
        i64::from(scheduler.enabled),
    );
    counter(
        &mut r,
        "fleetkey_scheduler_runs",
        "Lifecycle scheduler runs of this instance that held the lease and finished",
        scheduler.runs,
    );
    counter(
        &mut r,
        "fleetkey_scheduler_errors",
        "Lifecycle scheduler runs of this instance that failed",
        scheduler.errors,
    );
    counter(
        &mut r,
        "fleetkey_scheduler_standby",
        "Lifecycle scheduler attempts of this instance that found another instance holding the lease",
        scheduler.standby_runs,
    );
    if let Some(at) = scheduler.last_attempt_at {
        gauge(
            &mut r,
            "fleetkey_scheduler_last_run_timestamp_seconds",
            "When this instance's lifecycle scheduler last ran (Unix seconds)",
            at.div_euclid(1000),
        );
    }
    gauge(
        &mut r,
        "fleetkey_store_up",
        "Whether this scrape could read the store (the figures below come from it)",
        i64::from(store.is_some()),
    );
    if let Some(s) = store {
        gauge_family(
            &mut r,
            "fleetkey_info",
            "The fleet's scheme, store and key module kind",
            vec![(
                labels([
                    ("fleet", s.fleet.id.as_str()),
                    ("scheme", s.fleet.scheme.name()),
                    ("store", s.store),
                    ("module", s.module),
                ]),
                1,
            )],
        );
        let devices = Lifecycle::ALL
            .into_iter()
            .map(|state| {
                let n = s
                    .devices
                    .iter()
                    .find(|(st, _)| *st == state)
                    .map_or(0, |(_, n)| *n);
                (labels([("state", state.name())]), to_i64(n))
            })
            .collect();
        gauge_family(
            &mut r,
            "fleetkey_devices",
            "Devices by lifecycle state",
            devices,
        );
        let generations = Lifecycle::ALL
            .into_iter()
            .map(|state| {
                let n = s.generations.iter().filter(|g| g.state == state).count();
                (
                    labels([("state", state.name())]),
                    i64::try_from(n).unwrap_or(i64::MAX),
                )
            })
            .collect();
        gauge_family(
            &mut r,
            "fleetkey_generations",
            "Master generations by lifecycle state",
            generations,
        );
        if let Some(current) = s.fleet.current_generation {
            gauge(
                &mut r,
                "fleetkey_current_generation",
                "The generation new devices get and refreshes migrate to",
                i64::from(current),
            );
        }
        gauge(
            &mut r,
            "fleetkey_audit_events",
            "Events in the audit chain",
            to_i64(s.audit_events),
        );
    }
    r
}

/// The scrape response.
async fn scrape(state: &AppState, store: Option<FleetStatus>) -> Response {
    let scheduler = state.scheduler();
    match state.metrics().render(store.as_ref(), &scheduler) {
        Ok(text) => {
            let mut response = text.into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                ),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(_) => ApiError::Internal("metrics encoding failed".into()).into_response(),
    }
}

/// `GET /metrics` on the main listener: a token of a role that may read the status.
pub(crate) async fn serve(State(s): State<AppState>, ctx: Ctx) -> Response {
    match s
        .run(&ctx, Action::Status, |fleet, _| Ok(fleet.status()))
        .await
    {
        Ok(read) => {
            let store = read
                .inspect_err(|e| tracing::warn!(error = %e, "metrics: store read failed"))
                .ok();
            scrape(&s, store).await
        }
        Err(e) => e.into_response(),
    }
}

/// `GET /metrics` on the loopback metrics listener: no token.
pub(crate) async fn serve_open(State(s): State<AppState>) -> Response {
    let read = s.pool().run(|fleet| Ok(fleet.status())).await;
    let store = match read {
        Ok(Ok(status)) => Some(status),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "metrics: store read failed");
            None
        }
        Err(e) => {
            tracing::warn!(refused = e.problem().slug, "metrics: no fleet handle");
            None
        }
    };
    scrape(&s, store).await
}

/// The router of the metrics listener: `GET /metrics` only.
pub(crate) fn router(state: AppState) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(serve_open))
        .fallback(|| async { ApiError::NoRoute })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::app::frame,
        ))
        .with_state(state)
}

/// Shared by the service's state.
pub(crate) type Shared = Arc<Metrics>;
