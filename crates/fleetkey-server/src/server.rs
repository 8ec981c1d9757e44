//! The listener: accepts connections (plain, or TLS), reads HTTP/1.1 with a header read timeout
//! (a client that sends its headers slowly is cut off: slowloris), bounds the connections, and
//! hands requests to the router.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::app::{AppState, ConnInfo, router};

/// Where and how to listen.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The address (port 0: any free port; [`Server::bind`] returns the one taken).
    pub listen: SocketAddr,
    /// TLS, or plain HTTP when `None`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Time a client has to send a request's headers (and to finish the TLS handshake).
    pub header_read_timeout: Duration,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
}

impl ServerConfig {
    /// Plain HTTP on `listen` with the default timeouts.
    pub fn plain(listen: SocketAddr) -> Self {
        ServerConfig {
            listen,
            tls: None,
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
        }
    }
}

/// A running service.
#[derive(Debug)]
pub struct Server {
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Binds `config.listen` and serves `state`'s router there until [`Server::shutdown`].
    /// Returns the address bound.
    pub async fn bind(
        config: ServerConfig,
        state: AppState,
    ) -> std::io::Result<(SocketAddr, Server)> {
        Self::serve(config, router(state)).await
    }

    /// Binds `listen`, which must be a loopback address, and serves `GET /metrics` there without
    /// a token (plain HTTP: for a Prometheus on the same host). Another address is refused
    /// ([`std::io::ErrorKind::InvalidInput`]) before anything is bound.
    pub async fn bind_metrics(
        listen: SocketAddr,
        state: AppState,
    ) -> std::io::Result<(SocketAddr, Server)> {
        if !listen.ip().is_loopback() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{listen} is not a loopback address: the metrics listener has no authentication"
                ),
            ));
        }
        let config = ServerConfig {
            max_connections: 64,
            ..ServerConfig::plain(listen)
        };
        Self::serve(config, crate::metrics::router(state)).await
    }

    async fn serve(
        config: ServerConfig,
        app: axum::Router,
    ) -> std::io::Result<(SocketAddr, Server)> {
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, config, app, rx));
        Ok((addr, Server { shutdown: tx, task }))
    }

    /// Stops accepting, lets the requests in flight finish, and returns when the listener is
    /// closed.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    config: ServerConfig,
    app: axum::Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let tls = config.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = shutdown.changed() => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        let timeout = config.header_read_timeout;
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => {
                    let info = ConnInfo {
                        peer,
                        client_cert: false,
                        tls: false,
                    };
                    serve_connection(tcp, info, app, timeout, shutdown).await;
                }
                Some(acceptor) => {
                    let stream = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::info!(peer = %peer, error = %e, "TLS handshake refused");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(peer = %peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let client_cert = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .is_some_and(|c| !c.is_empty());
                    let info = ConnInfo {
                        peer,
                        client_cert,
                        tls: true,
                    };
                    serve_connection(stream, info, app, timeout, shutdown).await;
                }
            }
        });
    }
}

async fn serve_connection<S>(
    stream: S,
    info: ConnInfo,
    app: axum::Router,
    header_read_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = tower::ServiceExt::map_request(
        app,
        move |mut req: axum::extract::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(info);
            req.map(axum::body::Body::new)
        },
    );
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(peer = %info.peer, error = %e, "connection closed with an error");
            }
        }
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
