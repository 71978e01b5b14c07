//! Shared by the control plane's own tests (unit and integration); not an API.

use std::io::Write;

/// Gate for a test that needs the PostgreSQL server named by `LINERATE_TEST_DATABASE_URL`
/// (`scripts/deps.sh`'s `need_postgres` sets one up): returns its URL. These count as
/// privileged tests: setting the server up takes root, and `scripts/run-tests` checks through
/// `LINERATE_PRIVILEGED_LOG` that they ran. Without a URL a test prints one line and passes,
/// unless `LINERATE_REQUIRE_PRIVILEGED=1` says it must run.
pub fn privileged(test: &str) -> Option<String> {
    let url = match std::env::var("LINERATE_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            if std::env::var("LINERATE_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
                panic!(
                    "database test {test} must run here but LINERATE_TEST_DATABASE_URL is unset \
                     (run `. scripts/deps.sh; need_postgres` first)"
                );
            }
            eprintln!("skipped (needs LINERATE_TEST_DATABASE_URL): {test}");
            return None;
        }
    };
    record_ran(test);
    Some(url)
}

/// Appends `test` to `LINERATE_PRIVILEGED_LOG`, if set: `scripts/run-tests` compares that log
/// with the gated tests it finds in the source (every crate's gate records through here).
pub fn record_ran(test: &str) {
    if let Ok(path) = std::env::var("LINERATE_PRIVILEGED_LOG") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot open LINERATE_PRIVILEGED_LOG {path}: {e}"));
        // One write per line: O_APPEND keeps concurrent tests' lines whole.
        f.write_all(format!("{test}\n").as_bytes())
            .expect("write privileged log");
    }
}
