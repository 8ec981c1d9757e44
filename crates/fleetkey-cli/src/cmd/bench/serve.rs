//! `fleetkey bench serve`: provisioning requests per second and latency through the HTTP service
//! (release build, loopback, plain HTTP), at several concurrencies, beside `GET /healthz` of the
//! same server with the same client at the same concurrency (what HTTP alone costs), and beside
//! the operation in process: `Fleet::provision` one at a time (one commit each) and
//! `Fleet::write_group` (what group commit does, without HTTP).

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetkey::access::Role;
use fleetkey::fleet::group::{
    DeviceWrite, GroupWrite, IdempotencyClaim, Outcome, Response, Written,
};
use fleetkey::fleet::{Access, Fleet, InitOptions, MasterBackup, SecretString, SystemClock};
use fleetkey::home::{ModuleConfig, StoreConfig};
use fleetkey::model::{DeviceSerial, Scheme};
use fleetkey::module::soft::WorkFactor;
use fleetkey_server::pool::FleetPool;
use fleetkey_server::{AppState, Server, ServerConfig, ServiceConfig};
use serde::Serialize;

use super::load::{self, LoadReport, Request};
use crate::cmd::ctx::{Bar, Global};
use crate::error::CliError;

/// Options of `fleetkey bench serve`.
#[derive(clap::Args)]
#[command(after_help = "\
A temporary derived fleet (soft module) with its devices registered; a station token; the
service in this process on 127.0.0.1 (plain HTTP, no rate limit, group commit); then, per
concurrency C, C client threads with keep-alive connections POST /v1/devices/{serial}/provision
with an Idempotency-Key, each request a device not provisioned before, and then GET /healthz as
often with the same client: provisioning is printed as a ratio of it. In process, on other fresh
devices in the same run: Fleet::provision one at a time (a commit each), and Fleet::write_group
in groups of 64 (the service's transaction without HTTP). The machine's load average is printed
at the end. Build with --release: a debug build measures the debug build.

Examples:
  cargo run --release -p fleetkey-cli -- bench serve
  fleetkey bench serve --store postgres://postgres@127.0.0.1:5432/test --concurrency 1,16,64 --json")]
pub(crate) struct ServeBenchArgs {
    /// `sqlite` (a file in a temporary directory) or a PostgreSQL URL (a temporary schema,
    /// dropped at the end).
    #[arg(long, default_value = "sqlite")]
    store: String,
    /// Client concurrencies to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// Requests per concurrency level.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// The service's fleet handles (store connections) for reads and ungrouped work.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Group-commit writer threads (`fleetkey serve --group-writers`).
    #[arg(long, default_value_t = 1)]
    group_writers: usize,
    /// Microseconds a writer waits for more writes (`fleetkey serve --group-wait-us`).
    #[arg(long, default_value_t = 0)]
    group_wait_us: u64,
}

#[derive(Serialize)]
struct Row {
    store: &'static str,
    #[serde(flatten)]
    load: LoadReport,
    /// `GET /healthz` at the same concurrency, same client, same run.
    healthz: LoadReport,
    /// Provisioning requests/s over `GET /healthz` requests/s.
    ratio_to_healthz: f64,
    /// Provisioning requests/s over in-process `Fleet::write_group` writes/s.
    ratio_to_group: f64,
}

#[derive(Serialize)]
struct Report {
    /// `Fleet::provision`, one at a time.
    ceiling: Ceiling,
    /// `Fleet::write_group`, groups of [`GROUP`].
    group: Ceiling,
    rows: Vec<Row>,
    /// The 1-, 5- and 15-minute load averages when the run ended.
    load_average: String,
}

/// Writes per in-process group.
const GROUP: usize = 64;

#[derive(Serialize)]
struct Ceiling {
    operations: usize,
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl Ceiling {
    /// `operations` done in `elapsed`, with the latency of each call measured (per operation, or
    /// per group); percentiles by nearest rank, as for the HTTP load.
    fn of(operations: usize, elapsed: Duration, mut latencies: Vec<Duration>) -> Self {
        latencies.sort_unstable();
        Ceiling {
            operations,
            per_s: operations as f64 / elapsed.as_secs_f64().max(1e-9),
            p50_ms: load::percentile(&latencies, 0.50),
            p99_ms: load::percentile(&latencies, 0.99),
        }
    }
}

fn serial(i: usize) -> String {
    format!("BENCH-{i:08}")
}

pub(crate) fn run(global: &Global, args: ServeBenchArgs) -> Result<(), CliError> {
    if args.concurrency.is_empty() || args.concurrency.iter().any(|&c| c == 0 || c > 1024) {
        return Err(CliError::input("--concurrency", "numbers from 1 to 1024"));
    }
    if args.requests == 0 {
        return Err(CliError::input("--requests", "at least 1"));
    }
    let dir = tempfile::tempdir().map_err(|e| CliError::input("temporary directory", e))?;
    let home = dir.path().join("home");
    let (store, store_name, drop_schema) = if args.store == "sqlite" {
        let file = fleetkey::home::STORE_FILE.into();
        (StoreConfig::Sqlite { file }, "sqlite", None)
    } else if args.store.starts_with("postgres://") || args.store.starts_with("postgresql://") {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let schema = format!("fleetkey_bench_{}_{nanos:x}", std::process::id());
        let config = StoreConfig::Postgres {
            schema: schema.clone(),
            url: Some(args.store.clone()),
            url_file: None,
        };
        (
            config,
            "postgres",
            Some(DropSchema {
                url: args.store.clone(),
                schema,
            }),
        )
    } else {
        return Err(CliError::input("--store", "`sqlite` or a postgres:// URL"));
    };
    let access = || Access {
        passphrase: SecretString::from("fleetkey bench passphrase".to_owned()),
        actor: "bench".into(),
        clock: Arc::new(SystemClock),
    };
    let options = InitOptions {
        fleet_id: "bench".into(),
        scheme: Scheme::Derived,
        she_transport_key: None,
        work_factor: WorkFactor::Log2(10),
        // A throwaway fleet: nothing to back up.
        backup: MasterBackup::NoBackup,
    };
    let module = ModuleConfig::Soft {
        file: fleetkey::home::KEY_FILE.into(),
    };
    let mut fleet = Fleet::init_with(&home, module, store, options, access())?;

    // Devices: one block for the ceiling, one per concurrency level; none provisioned twice.
    let per_level = args.requests;
    let total = per_level * (args.concurrency.len() + 2);
    let csv = dir.path().join("devices.csv");
    {
        let mut text = String::from("serial\n");
        for i in 0..total {
            let _ = writeln!(text, "{}", serial(i));
        }
        std::fs::write(&csv, text).map_err(|e| CliError::input("csv", e))?;
    }
    fleet.import_csv(&csv, None, &Bar::new())?;
    let (_, token) = fleet.issue_token("bench-station", Role::Station, None, None)?;

    // The ceiling: the same operation in process, one handle, one at a time.
    eprintln!("in process: Fleet::provision x {per_level}");
    let mut latencies = Vec::with_capacity(per_level);
    let started = Instant::now();
    for i in 0..per_level {
        let s = DeviceSerial::parse(&serial(i)).map_err(|e| CliError::input("serial", e))?;
        let t = Instant::now();
        fleet.provision(&s)?;
        latencies.push(t.elapsed());
    }
    let ceiling = Ceiling::of(per_level, started.elapsed(), latencies);
    // Group commit in process: the service's transactions without HTTP.
    eprintln!("in process: Fleet::write_group x {per_level} in groups of {GROUP}");
    let render = |_: &GroupWrite, written: &Written| -> Result<Response, serde_json::Error> {
        let body = match written {
            Written::Provisioned(p) => serde_json::to_vec(p)?,
            Written::Refreshed(u) => serde_json::to_vec(u)?,
            Written::Moved(d) => serde_json::to_vec(d)?,
        };
        Ok(Response {
            status: 200,
            body: zeroize::Zeroizing::new(body),
        })
    };
    let mut latencies = Vec::with_capacity(per_level);
    let started = Instant::now();
    let block: Vec<usize> = (per_level..2 * per_level).collect();
    for chunk in block.chunks(GROUP) {
        let writes = chunk
            .iter()
            .map(|&i| {
                Ok(GroupWrite {
                    actor: "bench".into(),
                    serial: DeviceSerial::parse(&serial(i))
                        .map_err(|e| CliError::input("serial", e))?,
                    write: DeviceWrite::Provision,
                    reason: "provisioned".into(),
                    idempotency: Some(IdempotencyClaim {
                        principal: "bench-station".into(),
                        key: format!("bench-{i}"),
                        fingerprint: [0; 32],
                    }),
                })
            })
            .collect::<Result<Vec<_>, CliError>>()?;
        let t = Instant::now();
        let outcomes = fleet.write_group(&writes, &render)?;
        if let Some(failed) = outcomes.iter().find(|o| !matches!(o, Outcome::Done(_))) {
            return Err(CliError::failed(format_args!(
                "an in-process group write did not commit: {failed:?}"
            )));
        }
        latencies.push(t.elapsed());
    }
    let group = Ceiling::of(per_level, started.elapsed(), latencies);
    drop(fleet);

    // The service, in this process.
    let shared = fleetkey::fleet::open_module(&home, &access())?;
    let opener_home = home.clone();
    let pool = FleetPool::open(
        args.workers,
        Arc::new(move || Fleet::open_with_module(&opener_home, Arc::clone(&shared), access())),
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format_args!("tokio runtime: {e}")))?;
    let service = ServiceConfig {
        body_limit: 64 * 1024,
        request_timeout: Duration::from_secs(60),
        rate_per_second: 0.0,
        rate_burst: 1,
        station_needs_client_cert: false,
        group: fleetkey_server::group_commit::GroupConfig {
            max_wait: Duration::from_micros(args.group_wait_us),
            writers: args.group_writers.max(1),
            ..Default::default()
        },
        ..ServiceConfig::default()
    };
    let listen = "127.0.0.1:0"
        .parse()
        .map_err(|e| CliError::input("listen", e))?;
    let (addr, server) = runtime
        .block_on(Server::bind(
            ServerConfig::plain(listen),
            AppState::new(pool, service),
        ))
        .map_err(|e| CliError::failed(format_args!("listen on 127.0.0.1: {e}")))?;
    let base = format!("http://{addr}");

    let mut rows = Vec::new();
    for (level, &c) in args.concurrency.iter().enumerate() {
        let first = per_level * (level + 2);
        let requests: Vec<Request> = (first..first + per_level)
            .map(|i| Request {
                path: format!("/v1/devices/{}/provision", serial(i)),
                body: Some("{}".into()),
                headers: vec![("idempotency-key".into(), format!("bench-{i}"))],
            })
            .collect();
        let report = measure(&base, token.expose(), requests, c, store_name, "provision");
        let health: Vec<Request> = (0..per_level)
            .map(|_| Request {
                path: "/healthz".into(),
                body: None,
                headers: vec![],
            })
            .collect();
        let healthz = measure(&base, token.expose(), health, c, store_name, "GET /healthz");
        rows.push(Row {
            store: store_name,
            ratio_to_healthz: report.requests_per_s / healthz.requests_per_s.max(1e-9),
            ratio_to_group: report.requests_per_s / group.per_s.max(1e-9),
            load: report,
            healthz,
        });
    }
    runtime.block_on(server.shutdown());
    drop(runtime);
    drop(drop_schema);
    let load_average = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into());
    let report = Report {
        ceiling,
        group,
        rows,
        load_average,
    };
    let _ = std::io::stderr().flush();
    global.print(&report, |r| {
        let mut out = format!(
            "provisioning through the service ({} store, release loopback, plain HTTP, group commit: {} writer(s), wait {} us)\n\
             {:>6} {:>12} {:>9} {:>9} {:>8} {:>12} {:>9} {:>8} {:>12}\n",
            r.rows.first().map_or("-", |x| x.store),
            args.group_writers.max(1),
            args.group_wait_us,
            "conc.",
            "requests/s",
            "p50 ms",
            "p99 ms",
            "failed",
            "healthz/s",
            "hz p99",
            "ratio",
            "vs group"
        );
        for row in &r.rows {
            let _ = writeln!(
                out,
                "{:>6} {:>12.0} {:>9.2} {:>9.2} {:>8} {:>12.0} {:>9.2} {:>8.2} {:>12.2}",
                row.load.concurrency,
                row.load.requests_per_s,
                row.load.p50_ms,
                row.load.p99_ms,
                row.load.failed,
                row.healthz.requests_per_s,
                row.healthz.p99_ms,
                row.ratio_to_healthz,
                row.ratio_to_group
            );
        }
        let _ = write!(
            out,
            "ratio: provisioning requests/s over GET /healthz requests/s (same server, client, concurrency)\n\
             in process, Fleet::write_group in groups of {GROUP}: {:.0} writes/s, p50 {:.2} ms, p99 {:.2} ms per group\n\
             in process, Fleet::provision one at a time (a commit each): {:.0}/s, p50 {:.2} ms, p99 {:.2} ms\n\
             load average at the end: {}",
            r.group.per_s,
            r.group.p50_ms,
            r.group.p99_ms,
            r.ceiling.per_s,
            r.ceiling.p50_ms,
            r.ceiling.p99_ms,
            r.load_average
        );
        out
    })
}

/// One load run with a progress bar; warns when requests failed.
fn measure(
    base: &str,
    token: &str,
    requests: Vec<Request>,
    c: usize,
    store_name: &str,
    what: &str,
) -> LoadReport {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(requests.len() as u64),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg:>36} [{bar:40}] {pos}/{len} ({per_sec})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(format!("{store_name} {what}, concurrency {c}"));
    let report = load::run(base, token, requests, c, 200, &|n| bar.inc(n));
    bar.finish_and_clear();
    if let Some(failure) = &report.first_failure {
        eprintln!(
            "warning: {} of {} {what} requests failed at concurrency {c}; first: {failure}",
            report.failed, report.requests
        );
    }
    report
}

/// The temporary PostgreSQL schema, dropped at the end (on an error too).
struct DropSchema {
    url: String,
    schema: String,
}

impl Drop for DropSchema {
    fn drop(&mut self) {
        match postgres::Client::connect(&self.url, postgres::NoTls) {
            Ok(mut c) => {
                if let Err(e) = c.batch_execute(&format!(
                    "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
                    self.schema
                )) {
                    eprintln!("warning: could not drop schema {}: {e}", self.schema);
                }
            }
            Err(e) => eprintln!("warning: could not drop schema {}: {e}", self.schema),
        }
    }
}
