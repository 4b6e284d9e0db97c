//! The retention sweep through the issue lifecycle: failures older than `retention` leave the
//! store in batches on the lifecycle's sweep, counted in `triage_failures_pruned_total`, while
//! issues keep their counts; with retention off nothing is deleted. (Which failures a sweep
//! keeps is the store suite's `prune_keeps_what_is_still_needed`, on both backends.)

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};
use triage_loop::admin::metrics::Metrics;
use triage_loop::classify::taxonomy::Taxonomy;
use triage_loop::clock::{ManualClock, SharedClock};
use triage_loop::remediation::lifecycle::Lifecycle;
use triage_loop::remediation::store::{self, IssueFilter, Store};

#[path = "support/records.rs"]
mod records;
use records::record;

const HOUR_MS: i64 = 3_600_000;

/// Writes `n` failures observed at `at`, numbered from `first`.
async fn put(store: &Arc<dyn Store>, first: u64, n: u64, at: i64) {
    let records: Vec<_> = (first..first + n)
        .map(|i| (record(&format!("fp-{}", i % 3), i, at), Arc::from([])))
        .collect();
    for chunk in records.chunks(256) {
        store
            .record_failures(chunk.to_vec().into(), at)
            .await
            .unwrap();
    }
}

fn lifecycle(store: Arc<dyn Store>, metrics: Arc<Metrics>, clock: SharedClock) -> Lifecycle {
    Lifecycle::new(
        store,
        metrics,
        clock,
        Taxonomy::preset("default").unwrap(),
        HashMap::new(),
        Duration::from_secs(3600),
        Arc::new(Notify::new()),
    )
}

fn pruned(metrics: &Metrics) -> f64 {
    metrics
        .render()
        .lines()
        .find(|l| l.starts_with("triage_failures_pruned_total "))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("triage_failures_pruned_total is exported")
}

async fn occurrences(store: &Arc<dyn Store>) -> i64 {
    let issues = store.list_issues(&IssueFilter::default()).await.unwrap();
    issues.iter().map(|i| i.occurrences).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_deletes_old_failures_in_batches_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/triage.db", dir.path().display());
    let store = store::open(&url).await.unwrap();
    // More than one batch of old failures (5 000 a batch), and a few recent ones.
    const OLD: u64 = 5_300;
    const RECENT: u64 = 40;
    let start = 1_000 * HOUR_MS;
    put(&store, 0, OLD, start).await;
    put(&store, OLD, RECENT, start + 47 * HOUR_MS).await;
    let clock = ManualClock::new(start + 48 * HOUR_MS);

    // Retention off: nothing goes.
    let metrics = Arc::new(Metrics::new());
    let off = lifecycle(store.clone(), metrics.clone(), clock.clone());
    assert_eq!(off.prune().await.unwrap(), 0);
    assert_eq!(pruned(&metrics), 0.0);

    // 24h: the lifecycle's first sweep deletes every failure observed 48h ago.
    let metrics = Arc::new(Metrics::new());
    let on = Arc::new(
        lifecycle(store.clone(), metrics.clone(), clock.clone())
            .with_retention(Duration::from_secs(24 * 3600)),
    );
    let (tx, rx) = mpsc::channel(16);
    let (stop_tx, stop) = watch::channel(false);
    let task = on.clone().spawn(rx, stop);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while pruned(&metrics) < OLD as f64 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pruned(&metrics), OLD as f64);
    let left = store
        .failure_counts(0, i64::MAX / 2, i64::MAX / 4)
        .await
        .unwrap();
    assert_eq!(left.iter().map(|b| b.count).sum::<i64>(), RECENT as i64);
    // Issues keep the count of every failure they had.
    assert_eq!(occurrences(&store).await, (OLD + RECENT) as i64);

    // Nothing more until the recent ones are old too.
    assert_eq!(on.prune().await.unwrap(), 0);
    clock.advance(24 * HOUR_MS);
    assert_eq!(on.prune().await.unwrap(), RECENT);
    assert_eq!(pruned(&metrics), (OLD + RECENT) as f64);

    let _ = stop_tx.send(true);
    drop(tx);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}
