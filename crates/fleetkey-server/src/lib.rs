//! fleetkey's HTTP service: the key manager's operations over JSON for provisioning stations,
//! fleet operators, technicians and auditors.
//!
//! - [`app`]: the state, the router ([`router`]) and what wraps every request (request id,
//!   timeout, problem rendering, the log line, the body limit).
//! - [`server`]: the listener ([`Server::bind`]): plain or TLS, header read timeout, connection
//!   bound.
//! - [`auth`]: bearer tokens, roles and the permission table; [`tls`]: rustls from PEM files and
//!   client certificates.
//! - [`routes`]: the endpoints, one table for the router and the OpenAPI document ([`openapi`]).
//! - [`api`]: request bodies and their parser; [`problem`]: RFC 9457 errors, mapped in one place.
//! - [`group_commit`]: concurrent device writes in one transaction each group;
//!   [`token_cache`]: looked-up tokens, with the revocation bound.
//! - [`idempotency`], [`ratelimit`], [`pool`] (fleet handles on blocking threads).
//! - [`console`]: the operator console at `/ui` (HTML pages, session cookie, forgery checks).
//! - [`metrics`]: `GET /metrics` in the Prometheus text format, on the main listener (with a
//!   token) or a loopback one without ([`Server::bind_metrics`]).
//!
//! Used in process (tests, benchmarks):
//! ```no_run
//! # async fn demo(pool: fleetkey_server::pool::FleetPool) -> std::io::Result<()> {
//! use fleetkey_server::{AppState, Server, ServerConfig, ServiceConfig};
//! let state = AppState::new(pool, ServiceConfig::default());
//! let (addr, server) = Server::bind(ServerConfig::plain("127.0.0.1:0".parse().unwrap()), state).await?;
//! println!("serving on http://{addr}");
//! server.shutdown().await;
//! # Ok(()) }
//! ```

// The OpenAPI document is one large `json!`.
#![recursion_limit = "256"]

pub mod api;
pub mod app;
pub mod auth;
pub mod console;
pub mod group_commit;
pub mod idempotency;
pub mod metrics;
pub mod openapi;
pub mod pool;
pub mod problem;
pub mod ratelimit;
pub mod routes;
pub mod scheduler;
pub mod server;
pub mod tls;
pub mod token_cache;

pub use app::{AppState, ServiceConfig, router};
pub use server::{Server, ServerConfig};
