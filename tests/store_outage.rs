//! The failure side's writer through a PostgreSQL outage: failures (and first sightings of a
//! service version) that arrive while the store is unreachable are held and written once it is
//! back, none dropped.
//!
//! The outage is a TCP proxy in front of the test PostgreSQL that cuts every connection and
//! refuses new ones while it is "down" (the database itself is shared and never stopped). Prints
//! SKIPPED when PostgreSQL is not reachable, like the store suite.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[path = "support/postgres.rs"]
mod pg_support;
#[path = "support/records.rs"]
mod records;

use pg_support::connect_or_skip;
use records::record;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use triage_loop::admin::metrics::Metrics;
use triage_loop::classify::taxonomy::Taxonomy;
use triage_loop::clock::Clock;
use triage_loop::failure::FailureOutput;
use triage_loop::remediation::lifecycle::Lifecycle;
use triage_loop::remediation::store;

/// A TCP proxy to `target` that can be taken down: then it closes every connection it carries
/// and every one it accepts.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    /// Bumped on `down()`, so the pumps of earlier connections stop.
    cut: watch::Sender<u64>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let (cut, _) = watch::channel(0u64);
        let (u, c) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !u.load(Ordering::Acquire) {
                    drop(client);
                    continue;
                }
                let mut stop = c.subscribe();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = stop.changed() => {}
                    }
                });
            }
        });
        Proxy { port, up, cut }
    }

    fn down(&self) {
        self.up.store(false, Ordering::Release);
        self.cut.send_modify(|n| *n += 1);
    }

    fn up(&self) {
        self.up.store(true, Ordering::Release);
    }
}

/// The value of one series in the metrics text.
fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn failures_are_held_through_a_store_outage() {
    let Some((admin, base)) = connect_or_skip("failures_are_held_through_a_store_outage").await
    else {
        return;
    };
    let schema = format!("t_outage_{}", std::process::id());
    admin
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
        ))
        .await
        .unwrap();
    let target: tokio_postgres::Config = base.parse().unwrap();
    let host = match &target.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        #[cfg(unix)]
        tokio_postgres::config::Host::Unix(_) => "127.0.0.1".into(),
    };
    let port = target.get_ports().first().copied().unwrap_or(5432);
    let proxy = Proxy::start(format!("{host}:{port}")).await;
    let user = target.get_user().unwrap_or("postgres");
    let db = target.get_dbname().unwrap_or("test");
    let url = format!(
        "postgres://{user}@127.0.0.1:{}/{db}?options=-c%20search_path%3D{schema}",
        proxy.port
    );

    let store = store::open(&url).await.unwrap();
    let metrics = Arc::new(Metrics::new());
    let routes: HashMap<String, Vec<String>> = HashMap::new();
    let lifecycle = Arc::new(Lifecycle::new(
        store,
        metrics.clone(),
        triage_loop::clock::system(),
        Taxonomy::preset("default").unwrap(),
        routes,
        Duration::from_secs(3600),
        Arc::new(Notify::new()),
    ));
    let (tx, rx) = mpsc::channel(1024);
    let (stop_tx, stop) = watch::channel(false);
    let task = lifecycle.spawn(rx, stop);

    // The store goes away; a new version and failures keep coming for a while, then it is back.
    proxy.down();
    let now = triage_loop::clock::SystemClock.now_ms();
    tx.send(FailureOutput::VersionSeen {
        service: "deployed-svc".into(),
        version: "2.0.0".into(),
        at_ms: now,
    })
    .await
    .unwrap();
    const N: u64 = 40;
    for n in 0..N {
        tx.send(FailureOutput::Failure(Box::new(record(
            &format!("fp-{}", (n + 1) % 5),
            n + 1,
            now,
        ))))
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.up();

    // Bounded wait for every failure to be written (or counted as dropped).
    let count = format!("SELECT count(*) FROM {schema}.occurrences");
    let mut written = 0i64;
    for _ in 0..300 {
        written = admin.query_one(&count, &[]).await.unwrap().get(0);
        let dropped = series(
            &metrics.render(),
            "triage_failure_side_dropped_total{reason=\"store_error\"}",
        );
        if written as u64 + dropped as u64 >= N {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = metrics.render();
    let versions: i64 = admin
        .query_one(
            &format!(
                "SELECT count(*) FROM {schema}.service_versions WHERE service = 'deployed-svc' AND version = '2.0.0'"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let _ = stop_tx.send(true);
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();

    assert_eq!(
        series(
            &text,
            "triage_failure_side_dropped_total{reason=\"store_error\"}"
        ),
        0.0,
        "no failure may be dropped for a store that comes back"
    );
    assert_eq!(
        written as u64, N,
        "every failure written once the store is back"
    );
    assert_eq!(
        versions, 1,
        "the version seen during the outage is recorded"
    );
}
