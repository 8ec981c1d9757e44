//! The service's one mapping of the key manager's errors: each variant's status and problem type
//! (a table of every variant), and that no 5xx body carries internal text (paths, URLs, backend
//! messages): a 5xx says that the service failed and gives the request id.

use std::path::PathBuf;

use axum::response::Response;
use fleetkey::audit::ChainBreak;
use fleetkey::backup::{BackupError, Secret};
use fleetkey::error::{Error, ModuleError, ModuleFault, StoreError};
use fleetkey::lifecycle::{IllegalTransition, State};
use fleetkey::model::{DeviceSerial, Scheme};
use fleetkey_server::problem::{ApiError, render};

/// The detail of every 5xx but a busy store.
const SEE_THE_LOG: &str = "the service failed; the cause is in its log under this request id";

/// Text that stands for what must not reach a client: a path, a URL, a backend's message.
const INTERNAL: &str = "/srv/secret-internal";

fn serial() -> DeviceSerial {
    DeviceSerial::new(b"ECU-1".to_vec()).unwrap()
}

fn io() -> std::io::Error {
    std::io::Error::other(INTERNAL)
}

/// Every variant of the key manager's error, with the status and problem type it answers.
fn cases() -> Vec<(Error, u16, &'static str)> {
    let path = || PathBuf::from(INTERNAL);
    let text = || INTERNAL.to_owned();
    let m = |e: ModuleError| Error::Module(e);
    let st = |e: StoreError| Error::Store(e);
    vec![
        (Error::invalid("serial", "41 bytes"), 422, "invalid-input"),
        (Error::NoSuchDevice(serial()), 404, "not-found"),
        (Error::NoSuchGeneration(7), 404, "not-found"),
        (Error::NoSuchGrant(9), 404, "not-found"),
        (Error::NoSuchToken("tok-1".into()), 404, "not-found"),
        (Error::NoGenerationRecord, 404, "not-found"),
        (st(StoreError::NotFound(text())), 404, "not-found"),
        (Error::DeviceExists(serial()), 409, "duplicate"),
        (st(StoreError::Duplicate(text())), 409, "duplicate"),
        (
            Error::Transition {
                subject: "device ECU-1".into(),
                source: IllegalTransition {
                    from: State::PreActive,
                    to: State::Suspended,
                },
            },
            409,
            "illegal-transition",
        ),
        (m(ModuleError::NoMaster(2)), 409, "no-master"),
        (
            Error::RegisteredDuringImport("device ECU-1".into()),
            409,
            "refused",
        ),
        (
            Error::NotProvisionable {
                serial: serial(),
                state: State::Compromised,
            },
            409,
            "refused",
        ),
        (
            Error::NotRefreshable {
                serial: serial(),
                state: State::Suspended,
            },
            409,
            "refused",
        ),
        (Error::LastRevision(serial()), 409, "refused"),
        (Error::ChangedDuringProvisioning(serial()), 409, "refused"),
        (Error::CurrentGeneration(1), 409, "refused"),
        (
            Error::DependentDevices {
                generation: 1,
                count: 2,
            },
            409,
            "refused",
        ),
        (
            Error::MasterDestroyed {
                generation: 1,
                state: State::Destroyed,
            },
            409,
            "refused",
        ),
        (Error::NoCurrentGeneration, 409, "refused"),
        (Error::CurrentCompromised(1), 409, "refused"),
        (
            Error::NoMasterGenerations {
                operation: "create generation",
                scheme: Scheme::Stored,
            },
            409,
            "refused",
        ),
        (Error::SharesWithoutMaster(Scheme::Stored), 409, "refused"),
        (
            Error::LeaseLost {
                holder: "serve:host:1".into(),
            },
            409,
            "refused",
        ),
        (
            Error::NotGoverned {
                operation: "publish",
                scheme: Scheme::Derived,
            },
            409,
            "refused",
        ),
        (m(ModuleError::NoSigningKey), 409, "refused"),
        (m(ModuleError::SigningKeyExists), 409, "refused"),
        (
            Error::RootMismatch {
                found: [1; 32],
                pinned: [2; 32],
            },
            409,
            "refused",
        ),
        (Error::RootNotPinned, 409, "refused"),
        (
            Error::SharesOfOtherFleet {
                origin: "a.json".into(),
                shares_fleet: "other".into(),
                fleet: "tractors".into(),
                secret: Secret::Master,
            },
            409,
            "refused",
        ),
        (st(StoreError::Busy(text())), 503, "busy"),
        (m(ModuleError::MasterExists(1)), 500, "fleet-failure"),
        (m(ModuleError::NoKek), 500, "fleet-failure"),
        (m(ModuleError::NoStagedSigningKey), 500, "fleet-failure"),
        (m(ModuleError::Authentication), 500, "fleet-failure"),
        (m(ModuleError::Unwrap), 500, "fleet-failure"),
        (
            m(ModuleError::Io {
                path: path(),
                source: io(),
            }),
            500,
            "fleet-failure",
        ),
        (m(ModuleError::Corrupt(text())), 500, "fleet-failure"),
        (
            m(ModuleError::Backend {
                operation: "C_Sign",
                detail: text(),
            }),
            500,
            "fleet-failure",
        ),
        (m(ModuleError::Unsupported("export")), 500, "fleet-failure"),
        (
            m(ModuleError::SecretFile {
                what: "PIN file",
                path: path(),
                problem: "empty",
            }),
            500,
            "fleet-failure",
        ),
        (
            st(StoreError::Schema {
                found: 1,
                expected: 2,
            }),
            500,
            "fleet-failure",
        ),
        (st(StoreError::Corrupt(text())), 500, "fleet-failure"),
        (
            st(StoreError::Backend {
                operation: "query",
                detail: text(),
            }),
            500,
            "fleet-failure",
        ),
        (
            Error::Chain(ChainBreak::Changed { seq: 3 }),
            500,
            "fleet-failure",
        ),
        (
            Error::Backup(BackupError::Io {
                path: INTERNAL.into(),
                source: io(),
            }),
            500,
            "fleet-failure",
        ),
        (
            Error::Io {
                path: path(),
                source: io(),
            },
            500,
            "fleet-failure",
        ),
        (Error::NoFleet(path()), 500, "fleet-failure"),
        (Error::FleetExists(path()), 500, "fleet-failure"),
        (Error::StoreHoldsFleet, 500, "fleet-failure"),
        (Error::StoreHoldsNoFleet, 500, "fleet-failure"),
        (Error::NoFleetStore(text()), 500, "fleet-failure"),
        (Error::NoStoreUrl, 500, "fleet-failure"),
        (Error::NoKeyModule, 500, "fleet-failure"),
        (Error::LifecycleRunaway, 500, "fleet-failure"),
        (
            Error::NotBuilt {
                backend: "PKCS#11 key module",
                feature: "pkcs11",
            },
            500,
            "fleet-failure",
        ),
        (
            Error::TokenHoldsFleet {
                token_label: text(),
                fleet: "tractors".into(),
            },
            500,
            "fleet-failure",
        ),
        (
            Error::ModuleFaulty(ModuleFault::ImportedMaster(1)),
            500,
            "fleet-failure",
        ),
        (
            Error::ModuleFaulty(ModuleFault::ImportedRoot),
            500,
            "fleet-failure",
        ),
        (
            Error::ModuleFaulty(ModuleFault::NewRoot),
            500,
            "fleet-failure",
        ),
    ]
}

#[test]
fn each_fleet_error_answers_its_status_with_a_hint() {
    for (e, status, slug) in cases() {
        let name = format!("{e:?}");
        let p = ApiError::Fleet(e).problem();
        assert_eq!(p.status.as_u16(), status, "{name}");
        assert_eq!(p.slug, slug, "{name}");
        assert!(p.hint.as_deref().is_some_and(|h| !h.is_empty()), "{name}");
        // An API hint names endpoints, never a command line.
        assert!(!p.hint.unwrap().contains("fleetkey "), "{name}");
    }
}

#[test]
fn a_refusal_says_what_was_refused() {
    let p = ApiError::Fleet(Error::DependentDevices {
        generation: 1,
        count: 2,
    })
    .problem();
    assert_eq!(p.detail, "2 devices still depend on generation 1");
    let p = ApiError::Fleet(Error::NoSuchDevice(serial())).problem();
    assert_eq!(p.detail, "no device ECU-1 in this fleet");
}

/// A 5xx tells the client that the service failed and the request id, nothing of the cause.
#[test]
fn no_5xx_body_carries_internal_text() {
    let mut server_errors = 0;
    for (e, _, _) in cases() {
        let name = format!("{e:?}");
        let internal = e.to_string();
        let p = ApiError::Fleet(e).problem();
        if !p.status.is_server_error() {
            continue;
        }
        server_errors += 1;
        let response = render(&p, "req-1", "/v1/devices/ECU-1/provision");
        let body = body_text(response);
        assert!(!body.contains(INTERNAL), "{name}: {body}");
        assert!(!body.contains(&internal), "{name}: {body}");
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["request_id"], "req-1", "{name}");
        assert!(
            [SEE_THE_LOG, "the store is busy; a retry may succeed"]
                .contains(&doc["detail"].as_str().unwrap()),
            "{name}: {body}"
        );
    }
    assert!(server_errors > 20);
    let internal = ApiError::Internal(INTERNAL.into()).problem();
    assert!(!body_text(render(&internal, "r", "/")).contains(INTERNAL));
}

fn body_text(response: Response) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let bytes = runtime.block_on(axum::body::to_bytes(response.into_body(), usize::MAX));
    String::from_utf8(bytes.unwrap().to_vec()).unwrap()
}
