//! How many failures per second a store records: batches as the failure side writes them
//! (`record_failures`), over a fixed set of fingerprints, on SQLite or PostgreSQL.
//!
//! ```text
//! cargo run --release --example store_rate -- --storage sqlite:///tmp/rate.db
//! cargo run --release --example store_rate -- --storage 'postgres://postgres@127.0.0.1:5432/test'
//! ```
//!
//! On PostgreSQL it writes into a fresh schema (dropped afterwards) of the given database.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use serde_json::json;
use triage_loop::classify::Source;
use triage_loop::remediation::store::{self, FailureRecord};

#[derive(Parser)]
struct Args {
    /// The store: sqlite://PATH or postgres://…
    #[arg(long)]
    storage: String,
    /// Failures to record.
    #[arg(long, default_value_t = 20_000)]
    failures: u64,
    /// Failures per batch (the failure side writes up to 256 at once).
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Distinct fingerprints (issues) the failures fall into.
    #[arg(long, default_value_t = 25)]
    fingerprints: u64,
}

/// Failure `n`: a rule-classified tool timeout of one of `fingerprints` issues.
fn record(n: u64, fingerprints: u64) -> FailureRecord {
    FailureRecord {
        trace_id: format!("{:032x}", n + 1),
        root_span_id: format!("{:016x}", n + 1),
        class: "logic_tool".into(),
        source: Source::Rule,
        confidence: 0.9,
        fingerprint: format!("{:016x}", n % fingerprints),
        remediation: "tool_fix".into(),
        agent: "support".into(),
        service: "agent-svc".into(),
        service_version: Some("1.4.2".into()),
        observed_at: 1_700_000_000_000 + n as i64,
        signal: json!({"kind": "exception", "name": "TimeoutError",
                       "message": format!("timed out after 30s: GET /orders/{n}")})
        .into(),
        rule: Some("tool-timeout".into()),
        queue_reason: None,
        trace: None,
    }
}

/// A schema of its own on PostgreSQL (`search_path` in the URL), dropped by the caller.
async fn pg_schema(url: &str) -> anyhow::Result<(String, String)> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .context("connecting")?;
    tokio::spawn(conn);
    let schema = format!("store_rate_{}", std::process::id());
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await?;
    let sep = if url.contains('?') { '&' } else { '?' };
    Ok((
        format!("{url}{sep}options=-c%20search_path%3D{schema}"),
        schema,
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pg = args.storage.starts_with("postgres");
    let (url, schema) = if pg {
        let (u, s) = pg_schema(&args.storage).await?;
        (u, Some(s))
    } else {
        (args.storage.clone(), None)
    };
    let s = store::open(&url).await?;
    let sinks: std::sync::Arc<[String]> = ["jsonl".to_string()].into();
    let started = Instant::now();
    let mut n = 0;
    while n < args.failures {
        let size = (args.failures - n).min(args.batch as u64);
        let batch: store::Batch = (n..n + size)
            .map(|i| (record(i, args.fingerprints), sinks.clone()))
            .collect::<Vec<_>>()
            .into();
        let outcomes = s
            .record_failures(Arc::clone(&batch), started.elapsed().as_millis() as i64)
            .await?;
        anyhow::ensure!(outcomes.len() == batch.len(), "an outcome per failure");
        n += size;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "RESULT backend={} failures={} batch={} fingerprints={} seconds={secs:.2} failures_per_sec={:.0}",
        s.backend(),
        args.failures,
        args.batch,
        args.fingerprints,
        args.failures as f64 / secs
    );
    drop(s);
    if let Some(schema) = schema {
        let (client, conn) = tokio_postgres::connect(&args.storage, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        client
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await?;
    }
    Ok(())
}
