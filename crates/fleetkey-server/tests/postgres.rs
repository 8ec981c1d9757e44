//! The service on a PostgreSQL store: tokens, provisioning with an idempotency key, a replay, and
//! a clean shutdown (the pool's synchronous store clients are closed off the async runtime).
//!
//! Needs `FLEETKEY_TEST_DATABASE_URL` (CI: `postgres://postgres@127.0.0.1:5432/test`); unset, the
//! test says it is skipped and passes; set, an unreachable server fails it.

use std::sync::Arc;

use fleetkey::access::Role;
use fleetkey::backup::MasterBackup;
use fleetkey::fleet::{Access, Fleet, InitOptions, NewDevice, SecretString, SystemClock};
use fleetkey::home::{ModuleConfig, StoreConfig};
use fleetkey::model::{DeviceSerial, Scheme};
use fleetkey::module::soft::WorkFactor;
use fleetkey_server::pool::FleetPool;
use fleetkey_server::{AppState, Server, ServerConfig, ServiceConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn access() -> Access {
    Access {
        passphrase: SecretString::from("a test passphrase".to_owned()),
        actor: "test".into(),
        clock: Arc::new(SystemClock),
    }
}

async fn http(addr: std::net::SocketAddr, request: String) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    answer
}

#[test]
fn the_service_on_postgres_provisions_once_and_shuts_down_cleanly() {
    let Ok(url) = std::env::var("FLEETKEY_TEST_DATABASE_URL") else {
        eprintln!("skipped: FLEETKEY_TEST_DATABASE_URL is not set");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let schema = format!("fk_srv_test_{}_{nanos:x}", std::process::id());
    let store = StoreConfig::Postgres {
        schema: schema.clone(),
        url: Some(url.clone()),
        url_file: None,
    };
    let options = InitOptions {
        fleet_id: "pg-service".into(),
        scheme: Scheme::Derived,
        she_transport_key: None,
        work_factor: WorkFactor::Log2(4),
        backup: MasterBackup::NoBackup,
    };
    let module = ModuleConfig::Soft {
        file: fleetkey::home::KEY_FILE.into(),
    };
    let mut fleet = Fleet::init_with(&home, module, store, options, access()).unwrap();
    let serial = DeviceSerial::parse("PG-1").unwrap();
    fleet
        .add_device(NewDevice {
            serial: serial.clone(),
            she_uid: None,
            labels: vec![],
        })
        .unwrap();
    let (_, token) = fleet
        .issue_token("station-pg", Role::Station, None, None)
        .unwrap();
    drop(fleet);

    let module = fleetkey::fleet::open_module(&home, &access()).unwrap();
    let opener_home = home.clone();
    let pool = FleetPool::open(
        2,
        Arc::new(move || Fleet::open_with_module(&opener_home, Arc::clone(&module), access())),
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let token = token.expose().to_owned();
    runtime.block_on(async move {
        let state = AppState::new(pool, ServiceConfig::default());
        let (addr, server) = Server::bind(ServerConfig::plain("127.0.0.1:0".parse().unwrap()), state)
            .await
            .unwrap();
        let request = format!(
            "POST /v1/devices/PG-1/provision HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Idempotency-Key: pg-1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let first = http(addr, request.clone()).await;
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        let again = http(addr, request).await;
        assert!(again.contains("idempotent-replayed: true"), "{again}");
        assert_eq!(first.split_once("\r\n\r\n").unwrap().1, again.split_once("\r\n\r\n").unwrap().1);
        // Shutting down drops the pool inside the runtime: it must not panic.
        server.shutdown().await;
    });
    drop(runtime);
    let mut fleet = Fleet::open(&home, access()).unwrap();
    let d = fleet.device(&serial).unwrap();
    assert_eq!((d.state.name(), d.revision), ("active", 0));
    assert_eq!(
        fleet.audit_verify().unwrap(),
        fleet.status().unwrap().audit_events
    );
    drop(fleet);
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    client
        .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .unwrap();
}
