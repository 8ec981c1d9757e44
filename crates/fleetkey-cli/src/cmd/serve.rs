//! `fleetkey serve`: the HTTP service.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use fleetkey_server::pool::FleetPool;
use fleetkey_server::{AppState, Server, ServerConfig, ServiceConfig};

use crate::cmd::ctx::Global;
use crate::error::CliError;

/// Options of `fleetkey serve`.
#[derive(clap::Args)]
#[command(after_help = "\
Without --tls-cert the service speaks plain HTTP and only on a loopback address (127.0.0.1, ::1);
give a certificate and key to listen elsewhere. The passphrase comes from FLEETKEY_PASSPHRASE, as
for every command. Every request but /healthz and /openapi.json needs a bearer token from
`fleetkey token issue`. Logs go to stderr (no token, no key material). docs/service.md has the
endpoints, roles and errors.

The lifecycle scheduler runs `fleetkey lifecycle run` every --lifecycle-interval on its own
thread (off with --no-lifecycle); with several instances on one store exactly one acts (a lease in
the store), the others keep serving. GET /v1/scheduler and `fleetkey status` show it.

The operator console is at /ui (the first log line prints its URL): sign in with a token from
`fleetkey token issue`; each role sees and may do what it may through the API. docs/console.md.

GET /metrics is in the Prometheus text format, with an admin, operator or auditor token; with
--metrics-listen it is also served without a token on that loopback address (nothing else there).

Examples:
  fleetkey serve                                   (http://127.0.0.1:8443, loopback only)
  fleetkey serve --metrics-listen 127.0.0.1:9464          (curl http://127.0.0.1:9464/metrics)
  fleetkey serve --lifecycle-interval 10m --lifecycle-out /srv/updates.jsonl --lifecycle-rate 2000
  fleetkey serve --listen 0.0.0.0:8443 --tls-cert server.pem --tls-key server.key --client-ca stations-ca.pem
  TOKEN=$(fleetkey token issue --principal station-1 --role station --expires 90d | head -n1)
  curl -s -X POST -H \"Authorization: Bearer $TOKEN\" -H 'Idempotency-Key: ECU-0001-1' \\
       http://127.0.0.1:8443/v1/devices/ECU-0001/provision")]
pub(crate) struct ServeArgs {
    /// Address and port to listen on.
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// Also serve GET /metrics without a token on this loopback address (for a Prometheus on the
    /// same host); a non-loopback address is refused.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// TLS certificate chain, PEM (leaf first).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key, PEM.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA certificates (PEM) of provisioning stations' client certificates: station tokens are
    /// then accepted only on connections with a certificate it signed.
    #[arg(long, requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// Fleet handles (store connections) serving requests at once.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Requests per second per principal (0: no limit).
    #[arg(long, default_value_t = 50.0)]
    rate_limit: f64,
    /// Burst size per principal.
    #[arg(long, default_value_t = 100)]
    rate_burst: u32,
    /// Largest request body, bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    body_limit: usize,
    /// Seconds a request may take before the client gets 503.
    #[arg(long, default_value_t = 30)]
    request_timeout: u64,
    /// Seconds a client has to send its request headers (slowloris).
    #[arg(long, default_value_t = 10)]
    header_timeout: u64,
    /// Milliseconds a looked-up token is trusted before it is looked up again: a token revoked
    /// through another instance or the CLI stops working here within this (0: look up every
    /// request). Revoked through this instance, it stops at once.
    #[arg(long, default_value_t = 1000)]
    token_cache_ms: u64,
    /// Device writes (provision, refresh, suspend, resume, revoke) per group-commit transaction
    /// at most.
    #[arg(long, default_value_t = 256)]
    group_max: usize,
    /// Microseconds a group-commit writer waits for more writes once its queue is empty (0: it
    /// commits what is queued; the next group gathers while it commits).
    #[arg(long, default_value_t = 0)]
    group_wait_us: u64,
    /// Group-commit writer threads, each with its own store connection (1 suits SQLite; 2 to 4
    /// may help PostgreSQL).
    #[arg(long, default_value_t = 1)]
    group_writers: usize,
    /// Do not run the lifecycle scheduler in this instance.
    #[arg(long)]
    no_lifecycle: bool,
    /// Time between lifecycle scheduler runs (the first is one interval after start).
    #[arg(long, default_value = "60s")]
    lifecycle_interval: String,
    /// Where the scheduler's migrations append their SHE key updates [default: <home>/lifecycle-updates.jsonl].
    #[arg(long)]
    lifecycle_out: Option<PathBuf>,
    /// Migration rate limit of the scheduler, devices per second.
    #[arg(long)]
    lifecycle_rate: Option<f64>,
    /// Devices per transaction in the scheduler's migrations.
    #[arg(long, default_value_t = 10_000)]
    lifecycle_batch: usize,
    /// The scheduler lease's lifetime without renewal: how soon another instance takes over
    /// from one that died.
    #[arg(long, default_value = "2m")]
    lifecycle_lease_ttl: String,
}

pub(crate) fn run(global: &Global, args: ServeArgs) -> Result<(), CliError> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            fleetkey_server::tls::server_config(cert, key, args.client_ca.as_deref())
                .map_err(|e| CliError::input("--tls-cert/--tls-key/--client-ca", e))?,
        ),
        _ => None,
    };
    if tls.is_none() && !args.listen.ip().is_loopback() {
        return Err(CliError::input(
            "--listen",
            format_args!("{} is not a loopback address, and plain HTTP would send tokens and key material in clear", args.listen),
        )
        .hint("give --tls-cert and --tls-key, or listen on 127.0.0.1"));
    }
    if let Some(m) = args.metrics_listen
        && !m.ip().is_loopback()
    {
        return Err(CliError::input(
            "--metrics-listen",
            format_args!("{m} is not a loopback address, and the metrics listener asks for no token"),
        )
        .hint("listen on 127.0.0.1 (e.g. 127.0.0.1:9464), or scrape /metrics on --listen with an auditor token"));
    }
    if args.workers == 0 || args.workers > 256 {
        return Err(CliError::input("--workers", "1 to 256"));
    }
    if !(args.rate_limit.is_finite() && args.rate_limit >= 0.0) {
        return Err(CliError::input(
            "--rate-limit",
            "a number of requests per second, 0 for none",
        ));
    }
    let interval =
        fleetkey::fleet::policy::Span::parse("--lifecycle-interval", &args.lifecycle_interval)?;
    let lease_ttl =
        fleetkey::fleet::policy::Span::parse("--lifecycle-lease-ttl", &args.lifecycle_lease_ttl)?;
    if args
        .lifecycle_rate
        .is_some_and(|r| !(r.is_finite() && r > 0.0))
    {
        return Err(CliError::input(
            "--lifecycle-rate",
            "a positive number of devices per second",
        ));
    }
    if args.lifecycle_batch == 0 || args.lifecycle_batch > 100_000 {
        return Err(CliError::input("--lifecycle-batch", "1 to 100000"));
    }
    let opener = global.opener()?;
    let pool = FleetPool::open(args.workers, opener)?;
    let scheduler = if args.no_lifecycle {
        None
    } else {
        let config = fleetkey_server::scheduler::SchedulerConfig {
            interval: interval.as_duration(),
            lease_ttl,
            rate: args.lifecycle_rate,
            batch: args.lifecycle_batch,
            out: args
                .lifecycle_out
                .clone()
                .unwrap_or_else(|| global.home.join("lifecycle-updates.jsonl")),
            holder: Global::lease_holder("serve"),
        };
        let clock = fleetkey::fleet::lifecycle::clock_from_env()?;
        let now: std::sync::Arc<dyn Fn() -> i64 + Send + Sync> =
            std::sync::Arc::new(move || clock.now_ms());
        Some(
            fleetkey_server::scheduler::start(config, global.fresh_opener()?, now)
                .map_err(|e| CliError::failed(format_args!("lifecycle scheduler: {e}")))?,
        )
    };
    let fleet_id = pool.fleet_id().to_owned();
    let service = ServiceConfig {
        body_limit: args.body_limit,
        request_timeout: Duration::from_secs(args.request_timeout.max(1)),
        rate_per_second: args.rate_limit,
        rate_burst: args.rate_burst,
        station_needs_client_cert: args.client_ca.is_some(),
        token_cache_ttl: Duration::from_millis(args.token_cache_ms),
        group: fleetkey_server::group_commit::GroupConfig {
            max_writes: args.group_max.max(1),
            max_wait: Duration::from_micros(args.group_wait_us),
            writers: args.group_writers.max(1),
        },
    };
    let config = ServerConfig {
        listen: args.listen,
        tls: tls.clone(),
        header_read_timeout: Duration::from_secs(args.header_timeout.max(1)),
        max_connections: 1024,
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format_args!("tokio runtime: {e}")))?;
    runtime.block_on(async move {
        let mut state = AppState::new(pool, service);
        if let Some(s) = &scheduler {
            state = state.with_scheduler(s.status());
        }
        let (addr, server) = Server::bind(config, state.clone()).await.map_err(|e| {
            CliError::failed(format_args!("listen on {}: {e}", args.listen))
                .hint("is another process on that port? choose another with --listen")
        })?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let metrics = match args.metrics_listen {
            None => None,
            Some(listen) => match Server::bind_metrics(listen, state).await {
                Ok(bound) => Some(bound),
                Err(e) => {
                    server.shutdown().await;
                    return Err(CliError::failed(format_args!("listen on {listen}: {e}"))
                        .hint("is another process on that port? choose another with --metrics-listen"));
                }
            },
        };
        let metrics_url = match &metrics {
            Some((maddr, _)) => format!("http://{maddr}/metrics"),
            None => format!("{scheme}://{addr}/metrics"),
        };
        tracing::info!(
            fleet = %fleet_id,
            address = %format!("{scheme}://{addr}"),
            tls = tls.is_some(),
            client_certificates = args.client_ca.is_some(),
            workers = args.workers,
            lifecycle = scheduler.is_some(),
            console = %format!("{scheme}://{addr}/ui"),
            metrics = %metrics_url,
            metrics_token = metrics.is_none(),
            "fleetkey serving{}",
            if tls.is_none() { " plain HTTP on loopback only (no --tls-cert)" } else { "" }
        );
        wait_for_signal().await;
        tracing::info!("shutting down: finishing requests in flight");
        if let Some(s) = &scheduler {
            s.stop();
        }
        if let Some((_, m)) = metrics {
            m.shutdown().await;
        }
        server.shutdown().await;
        Ok(())
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
