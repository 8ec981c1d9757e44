//! A fleet on PostgreSQL from the command line: `init --store postgres://...`, the same commands
//! as on SQLite, a second fleet refused in the same schema, a URL with a password kept out of
//! fleet.json, and a mistyped schema refused rather than created.
//!
//! Needs `FLEETKEY_TEST_DATABASE_URL` (CI: `postgres://postgres@127.0.0.1:5432/test`): unset,
//! the test says it was skipped; set, a server that cannot be reached fails it.

#[path = "support/cli.rs"]
mod cli;
#[path = "support/postgres.rs"]
mod pg;

use cli::{ok, run as fleetkey};
use pg::{TestSchema, test_url};

#[test]
fn a_fleet_lives_in_postgres_from_init_on() {
    let Some(url) = test_url("a_fleet_lives_in_postgres_from_init_on") else {
        return;
    };
    let schema = TestSchema::new(&url, "fk_cli");
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("pg");
    let init = [
        "init",
        "--fleet",
        "pg-cli",
        "--scheme",
        "derived",
        "--no-backup",
        "--kdf-log-n",
        "10",
        "--store",
        &url,
        "--store-schema",
        &schema.name,
    ];
    ok(&home, &init);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(home.join("fleet.json")).unwrap()).unwrap();
    assert_eq!(config["store"]["kind"], "postgres");
    assert_eq!(config["store"]["schema"], schema.name.as_str());
    assert!(
        !home.join("fleet.db").exists(),
        "no SQLite file beside a PostgreSQL store"
    );

    ok(&home, &["device", "add", "ECU-PG-1"]);
    ok(&home, &["device", "provision", "ECU-PG-1"]);
    ok(
        &home,
        &["device", "refresh", "ECU-PG-1", "--reason", "test"],
    );
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&home, &["device", "show", "ECU-PG-1", "--json"])).unwrap();
    assert_eq!(shown["revision"], 1, "{shown}");
    let status: serde_json::Value =
        serde_json::from_str(&ok(&home, &["status", "--json"])).unwrap();
    assert_eq!(status["store"], "postgres");
    assert!(ok(&home, &["audit", "verify"]).contains("intact"));

    // A second fleet in the same schema is refused, and leaves no home behind.
    let other = dir.path().join("other");
    let mut second = init;
    second[2] = "pg-other";
    let out = fleetkey(&other, &second);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds a fleet"));
    assert!(!other.join("fleet.json").exists());

    // A mistyped schema in fleet.json is refused, not created empty.
    let mut broken = config.clone();
    broken["store"]["schema"] = "fk_cli_no_such_schema".into();
    let typo = dir.path().join("typo");
    std::fs::create_dir(&typo).unwrap();
    std::fs::write(typo.join("fleet.json"), broken.to_string()).unwrap();
    std::fs::copy(home.join("keys.age"), typo.join("keys.age")).unwrap();
    let out = fleetkey(&typo, &["status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no fleet store"), "{stderr}");
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'fk_cli_no_such_schema'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "opening must not create the schema");
}

#[test]
fn a_url_with_a_password_stays_out_of_fleet_json() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("h");
    // Nothing listens on port 1: init fails after the URL file was written, and undoes it.
    let out = fleetkey(
        &home,
        &[
            "init",
            "--fleet",
            "pw",
            "--scheme",
            "derived",
            "--no-backup",
            "--kdf-log-n",
            "10",
            "--store",
            "postgres://fk:hunter2@127.0.0.1:1/fk",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("hunter2"), "the password leaked: {stderr}");
    assert!(
        !home.exists(),
        "a failed init leaves nothing: {:?}",
        std::fs::read_dir(&home)
    );
    let out = fleetkey(
        &home,
        &[
            "init",
            "--fleet",
            "pw",
            "--scheme",
            "derived",
            "--no-backup",
            "--store",
            "mysql://x",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--store"));
}
