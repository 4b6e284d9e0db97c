//! The PostgreSQL store behind a real PgBouncer, as several instances share one database: with
//! session pooling two stores write side by side; with transaction pooling (PgBouncer before
//! 1.21, or without `max_prepared_statements`, leaves one client's prepared statements on the
//! server connection the next client gets; the test puts another driver's there) the write
//! fails, with an error that says what to change. Skips, saying so, without
//! PostgreSQL or a `pgbouncer` binary; `TRIAGE_REQUIRE_PGBOUNCER=1` makes a missing binary a
//! failure.

#[path = "support/postgres.rs"]
mod pg_support;
#[path = "support/records.rs"]
mod records;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use pg_support::{connect_or_skip, tcp_address_or_skip};
use records::record;
use triage_loop::remediation::store::{self, FailureRecord, Store};

/// The `pgbouncer` binary, if the machine has one (Debian puts it in /usr/sbin).
fn pgbouncer() -> Option<PathBuf> {
    let candidates = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer", "pgbouncer"];
    candidates.iter().map(PathBuf::from).find(|p| {
        Command::new(p)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// A PgBouncer in front of database `db` of the PostgreSQL at `host:port`; killed on drop.
struct Bouncer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts PgBouncer with `pool_mode`; in transaction mode with one server connection, which every
/// client's transactions share (session mode needs one per client connection). As root it runs
/// as `postgres` (it refuses to run as root). Its port is one free a moment before; when another
/// listener took it meanwhile, PgBouncer exits at once and is started again on another.
async fn start_bouncer(bin: &Path, pool_mode: &str, upstream: (&str, u16), db: &str) -> Bouncer {
    for _ in 0..3 {
        let mut bouncer = spawn_bouncer(bin, pool_mode, upstream, db);
        let read = |b: &Bouncer, f: &str| {
            std::fs::read_to_string(b.dir.path().join(f)).unwrap_or_default()
        };
        let listening = format!("listening on 127.0.0.1:{}", bouncer.port);
        for _ in 0..100 {
            if read(&bouncer, "pgbouncer.log").contains(&listening) {
                return bouncer;
            }
            if let Ok(Some(_)) = bouncer.child.try_wait() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = format!(
            "{}{}",
            read(&bouncer, "stderr.log"),
            read(&bouncer, "pgbouncer.log")
        );
        assert!(
            log.contains("Address already in use"),
            "pgbouncer did not listen on 127.0.0.1:{}:\n{log}",
            bouncer.port
        );
    }
    panic!("pgbouncer found its port taken three times");
}

fn spawn_bouncer(bin: &Path, pool_mode: &str, upstream: (&str, u16), db: &str) -> Bouncer {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let port = free_port();
    let ini = dir.path().join("pgbouncer.ini");
    let users = dir.path().join("users.txt");
    std::fs::write(&users, "\"postgres\" \"\"\n").unwrap();
    std::fs::write(
        &ini,
        format!(
            "[databases]\npooled = host={} port={} dbname={db} user=postgres\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nauth_type = trust\n\
             auth_file = {}\npool_mode = {pool_mode}\ndefault_pool_size = {}\n\
             max_client_conn = 100\nunix_socket_dir =\nlogfile = {}\n\
             ignore_startup_parameters = extra_float_digits,options,application_name\n",
            upstream.0,
            upstream.1,
            users.display(),
            if pool_mode == "session" { 20 } else { 1 },
            dir.path().join("pgbouncer.log").display(),
        ),
    )
    .unwrap();
    for f in [&ini, &users] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let mut cmd = Command::new(bin);
    // Root: the real uid in /proc (no unsafe libc call needed).
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    if root {
        cmd.args(["-u", "postgres"]);
    }
    let child = cmd
        .arg(&ini)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    Bouncer { child, port, dir }
}

/// A batch of `n` failures of one fingerprint, observed from `at`.
fn batch(fingerprint: &str, n: u64, at: i64) -> store::Batch {
    let sinks: Arc<[String]> = Arc::from(["jsonl".to_string()]);
    let records: Vec<(FailureRecord, Arc<[String]>)> = (0..n)
        .map(|i| {
            (
                record(fingerprint, at as u64 + i, at + i as i64),
                sinks.clone(),
            )
        })
        .collect();
    Arc::from(records)
}

/// Opens two stores through `url` and has them write batches at the same time, round after
/// round; the failures written, or the first error.
async fn two_instances_write(url: &str) -> Result<u64, String> {
    let a = store::open(url).await.map_err(|e| e.to_string())?;
    let b = store::open(url).await.map_err(|e| e.to_string())?;
    let mut written = 0;
    for round in 0..ROUNDS {
        let at = 1_000_000 + round * 100;
        let write = |s: &Arc<dyn Store>, name: &str| {
            let (s, fp) = (s.clone(), format!("fp-{name}-{round}"));
            async move { s.record_failures(batch(&fp, 5, at), at).await }
        };
        let (ra, rb) = tokio::join!(write(&a, "a"), write(&b, "b"));
        ra.map_err(|e| e.to_string())?;
        rb.map_err(|e| e.to_string())?;
        written += 10;
    }
    Ok(written)
}

/// Does through the pooler what another instance's driver does: prepares statements named as
/// tokio-postgres names its own (`s0`, `s1`, …) and keeps them. In transaction mode they stay
/// on the server connection that the next client's transactions get.
async fn leave_statements_behind(port: u16) {
    let url = format!("postgres://postgres@127.0.0.1:{port}/pooled?sslmode=disable");
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let prepares: String = (0..2000)
        .map(|i| format!("PREPARE s{i} AS SELECT {i};"))
        .collect();
    client
        .batch_execute(&format!("BEGIN;{prepares}COMMIT;"))
        .await
        .unwrap();
}

/// Rounds of writes per pool mode.
const ROUNDS: i64 = 10;

#[tokio::test]
async fn the_store_behind_pgbouncer_needs_session_pooling_and_says_so_otherwise() {
    let Some((admin, base)) = connect_or_skip("store behind PgBouncer").await else {
        return;
    };
    let Some(bin) = pgbouncer() else {
        assert!(
            std::env::var("TRIAGE_REQUIRE_PGBOUNCER").as_deref() != Ok("1"),
            "TRIAGE_REQUIRE_PGBOUNCER=1 but no pgbouncer binary (apt-get install pgbouncer)"
        );
        println!("SKIPPED: no pgbouncer binary (apt-get install pgbouncer)");
        return;
    };
    let Some((host, port)) = tcp_address_or_skip(&base, "store behind PgBouncer") else {
        return;
    };
    let mut outcomes = Vec::new();
    for mode in ["session", "transaction"] {
        // A database of its own: PgBouncer does not pass `options` (the search_path) on.
        let db = format!("triage_pooler_{}_{mode}", std::process::id());
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .unwrap();
        let bouncer = start_bouncer(&bin, mode, (&host, port), &db).await;
        let url = format!(
            "postgres://postgres@127.0.0.1:{}/pooled?sslmode=disable&connect_timeout=5",
            bouncer.port
        );
        if mode == "transaction" {
            leave_statements_behind(bouncer.port).await;
        }
        let outcome = tokio::time::timeout(Duration::from_secs(60), two_instances_write(&url))
            .await
            .expect("writes through PgBouncer finish");
        drop(bouncer);
        admin
            .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
            .await
            .unwrap();
        outcomes.push(outcome);
    }
    assert_eq!(
        outcomes[0],
        Ok(10 * ROUNDS as u64),
        "session pooling: every batch written"
    );
    let e = outcomes[1].clone().unwrap_err();
    assert!(
        e.contains("prepared statement") && e.contains("use session pooling"),
        "transaction pooling fails with what to change: {e}"
    );
}
