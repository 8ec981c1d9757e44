//! A PostgreSQL schema for one test: the server from `FLEETKEY_TEST_DATABASE_URL`, the schema
//! dropped at the end whatever happened.

#![allow(dead_code)]

/// The variable naming the test server (CI: `postgres://postgres@127.0.0.1:5432/test`).
pub(crate) const URL_VAR: &str = "FLEETKEY_TEST_DATABASE_URL";

/// The test server's URL; `None` (after saying so) when the variable is unset. Panics when it is
/// set and the server cannot be reached: a PostgreSQL test fails then, it does not skip.
pub(crate) fn test_url(test: &str) -> Option<String> {
    let Ok(url) = std::env::var(URL_VAR) else {
        eprintln!("{test}: skipped: {URL_VAR} is not set (no PostgreSQL to test against)");
        return None;
    };
    if let Err(e) = postgres::Client::connect(&url, postgres::NoTls) {
        panic!("{URL_VAR} is set but the PostgreSQL server cannot be reached: {e}");
    }
    Some(url)
}

/// A schema name of this test process, dropped (with everything in it) when this is.
pub(crate) struct TestSchema {
    pub(crate) url: String,
    pub(crate) name: String,
}

impl TestSchema {
    /// `<prefix>_<pid>` on the server at `url`.
    pub(crate) fn new(url: &str, prefix: &str) -> TestSchema {
        TestSchema {
            url: url.to_owned(),
            name: format!("{prefix}_{}", std::process::id()),
        }
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(&self.url, postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name));
        }
    }
}
