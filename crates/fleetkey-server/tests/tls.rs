//! TLS with certificates made at test time: the handshake, bearer tokens over it, and client
//! certificates for stations (accepted from the configured CA, refused from another).

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use fleetkey::access::Role;
use fleetkey_server::{Server, ServerConfig, ServiceConfig};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// A leaf for `names`: its certificate PEM and key PEM.
    fn leaf(&self, names: &[&str], client: bool) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.extended_key_usages = vec![if client {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn client_config(ca_pem: &str, identity: Option<&(String, String)>) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    Arc::new(config)
}

/// One request over TLS; the status code, or the error of the handshake or exchange.
async fn https(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
    request: &str,
) -> Result<(u16, String), std::io::Error> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    tls.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer).await?;
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP answer: {text:?}")))?;
    Ok((status, text))
}

fn provision(token: &str) -> String {
    format!(
        "POST /v1/devices/ECU-2/provision HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
}

const STATUS: &str = "GET /v1/status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates_for_stations() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let h = harness(ServiceConfig {
        station_needs_client_cert: true,
        ..unlimited()
    });
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("fleetkey test server CA");
    let station_ca = Ca::new("stations CA");
    let rogue_ca = Ca::new("rogue CA");
    let (cert, key) = server_ca.leaf(&["localhost"], false);
    let station = station_ca.leaf(&["station-1"], true);
    let rogue = rogue_ca.leaf(&["station-1"], true);
    let tls = fleetkey_server::tls::server_config(
        &write(dir.path(), "server.pem", &cert),
        &write(dir.path(), "server.key", &key),
        Some(&write(dir.path(), "stations.pem", &station_ca.issuer.pem())),
    )
    .unwrap();
    let mut config = ServerConfig::plain("127.0.0.1:0".parse().unwrap());
    config.tls = Some(tls);
    let (addr, server) = Server::bind(config, h.state.clone()).await.unwrap();
    let server_ca_pem = server_ca.issuer.pem();
    let station_token = h.tokens[&Role::Station].clone();
    let auditor = h.tokens[&Role::Auditor].clone();

    // Without a client certificate: other roles are served, a station token is refused (403).
    let plain_client = client_config(&server_ca_pem, None);
    let (status, _) = https(
        addr,
        Arc::clone(&plain_client),
        &format!("{STATUS}Authorization: Bearer {auditor}\r\n\r\n"),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let (status, text) = https(addr, Arc::clone(&plain_client), &provision(&station_token))
        .await
        .unwrap();
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("client certificate"));
    // With the stations CA's certificate the station provisions.
    let (status, text) = https(
        addr,
        client_config(&server_ca_pem, Some(&station)),
        &provision(&station_token),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"keys\""));
    // A certificate of another CA is refused in the handshake.
    let refused = https(
        addr,
        client_config(&server_ca_pem, Some(&rogue)),
        &provision(&station_token),
    )
    .await;
    assert!(refused.is_err(), "{refused:?}");
    // A client that does not trust the server's CA refuses the server.
    let stranger = client_config(&rogue_ca.issuer.pem(), None);
    assert!(
        https(
            addr,
            stranger,
            "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .await
        .is_err()
    );
    // Plain HTTP to the TLS port gets no HTTP answer.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer).await;
    assert!(!answer.starts_with(b"HTTP/1.1 200"));
    // The service still serves.
    let (status, _) = https(
        addr,
        plain_client,
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    server.shutdown().await;
}

#[test]
fn bad_tls_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let (cert, key) = ca.leaf(&["localhost"], false);
    let (_, other_key) = ca.leaf(&["localhost"], false);
    let cert = write(dir.path(), "c.pem", &cert);
    let key = write(dir.path(), "k.pem", &key);
    let empty = write(dir.path(), "empty.pem", "");
    let missing = dir.path().join("missing.pem");
    let e = fleetkey_server::tls::server_config(&missing, &key, None).unwrap_err();
    assert!(e.to_string().contains("missing.pem"), "{e}");
    let e = fleetkey_server::tls::server_config(&empty, &key, None).unwrap_err();
    assert!(e.to_string().contains("empty.pem"), "{e}");
    let e = fleetkey_server::tls::server_config(&cert, &empty, None).unwrap_err();
    assert!(e.to_string().contains("empty.pem"), "{e}");
    let mismatched = write(dir.path(), "other.key", &other_key);
    assert!(fleetkey_server::tls::server_config(&cert, &mismatched, None).is_err());
    assert!(fleetkey_server::tls::server_config(&cert, &key, Some(&empty)).is_err());
    assert!(fleetkey_server::tls::server_config(&cert, &key, None).is_ok());
}
