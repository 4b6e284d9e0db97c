//! The test PostgreSQL, shared by the test crates that need one (included with `#[path]`).

use std::time::Duration;

/// The test database: `TRIAGE_TEST_POSTGRES_URL`, or the machine's local PostgreSQL.
fn pg_base_url() -> String {
    std::env::var("TRIAGE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// An admin connection to the test database and its URL, or `None` after printing SKIPPED
/// (with `what`) when it is not reachable within 5 s.
pub async fn connect_or_skip(what: &str) -> Option<(tokio_postgres::Client, String)> {
    let base = pg_base_url();
    let connect = tokio_postgres::connect(&base, tokio_postgres::NoTls);
    match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok((client, conn))) => {
            tokio::spawn(conn);
            Some((client, base))
        }
        Ok(Err(e)) => {
            println!("SKIPPED: PostgreSQL not reachable at {base}: {e} ({what})");
            None
        }
        Err(_) => {
            println!("SKIPPED: PostgreSQL not reachable at {base}: timed out ({what})");
            None
        }
    }
}

/// The host and port of the test database at `base`, or `None` after printing SKIPPED (with
/// `what`) when it is not reached over TCP (a Unix socket URL).
#[allow(dead_code)] // not every test crate that includes this file needs it
pub fn tcp_address_or_skip(base: &str, what: &str) -> Option<(String, u16)> {
    let config: tokio_postgres::Config = base.parse().ok()?;
    match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => Some((
            h.clone(),
            config.get_ports().first().copied().unwrap_or(5432),
        )),
        _ => {
            println!("SKIPPED: the test PostgreSQL at {base} is not reached over TCP ({what})");
            None
        }
    }
}
