//! `triage-loop demo`: the processor, a printing downstream and a synthetic agent fleet in one
//! process, then a per-class summary of what was tagged, and of the loop behind it: failures
//! at their root cause, issues, dispatched work. The first thing a newcomer runs.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

use crate::classify::taxonomy::Taxonomy;
use crate::config;
use crate::otlp::attributes::{get, get_str, value_to_string};
use crate::otlp::sink::RecordingSink;
use crate::processor::tags;
use crate::remediation::lifecycle::Lifecycle;
use crate::remediation::store::{IssueDetail, IssueFilter, QueueItem};
use crate::synth::{Fleet, Scenario};

/// Lines printed live per class before the summary.
const LIVE_LINES_PER_CLASS: usize = 2;

/// Where the demo keeps its store and remediations.jsonl; emptied at the start of each run.
const DEMO_DATA: &str = "triage-data/demo";

#[derive(Default)]
struct SinkState {
    spans: u64,
    tagged: u64,
    /// class → (tagged spans, rule or fallback → count)
    by_class: BTreeMap<String, (u64, BTreeMap<String, u64>)>,
    /// expected class → tagged class → spans
    confusion: BTreeMap<String, BTreeMap<String, u64>>,
    live_printed: HashMap<String, usize>,
    expected: HashMap<[u8; 16], Scenario>,
}

/// Records a trace request as it arrives; prints the first tagged spans of each class.
fn record(st: &mut SinkState, req: &ExportTraceServiceRequest) {
    for rs in &req.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| get_str(&r.attributes, "service.name"))
            .unwrap_or("?");
        for span in rs.scope_spans.iter().flat_map(|s| &s.spans) {
            st.spans += 1;
            let Some(class) = get_str(&span.attributes, tags::CLASS) else {
                continue;
            };
            let class = class.to_string();
            st.tagged += 1;
            let rule = get_str(&span.attributes, tags::RULE)
                .unwrap_or("(fallback)")
                .to_string();
            let entry = st.by_class.entry(class.clone()).or_default();
            entry.0 += 1;
            *entry.1.entry(rule.clone()).or_default() += 1;
            let tid: [u8; 16] = span.trace_id.as_slice().try_into().unwrap_or([0; 16]);
            let expected = st
                .expected
                .get(&tid)
                .and_then(|s| s.expected_class())
                .unwrap_or("(none)")
                .to_string();
            *st.confusion
                .entry(expected)
                .or_default()
                .entry(class.clone())
                .or_default() += 1;
            let printed = st.live_printed.entry(class.clone()).or_default();
            if *printed < LIVE_LINES_PER_CLASS {
                *printed += 1;
                let get = |k: &str| {
                    get(&span.attributes, k)
                        .and_then(value_to_string)
                        .unwrap_or_default()
                };
                println!(
                    "  ← {class:<13} {service}/{:<32} rule={rule:<28} conf={} fp={} → {}",
                    span.name,
                    get(tags::CONFIDENCE),
                    get(tags::FINGERPRINT),
                    get(tags::REMEDIATION)
                );
            }
        }
    }
}

fn lock(state: &Mutex<SinkState>) -> MutexGuard<'_, SinkState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the demo for `duration` at `rate` agent runs per second.
pub async fn run(duration: Duration, rate: u32) -> anyhow::Result<()> {
    let state = Arc::new(Mutex::new(SinkState::default()));
    let hook_state = state.clone();
    let sink = RecordingSink::with_hook(Arc::new(move |req| record(&mut lock(&hook_state), req)));
    let sink_addr = sink.serve().await?;
    let mut loaded = config::load_default();
    {
        let c = &mut loaded.config;
        let protocols = &mut c.receivers.otlp.protocols;
        for endpoint in [
            protocols.grpc.as_mut().map(|g| &mut g.endpoint),
            protocols.http.as_mut().map(|h| &mut h.endpoint),
            Some(&mut c.extensions.triage_admin.endpoint),
        ]
        .into_iter()
        .flatten()
        {
            *endpoint = "127.0.0.1:0".into();
        }
        c.exporters.otlp.endpoint = sink_addr.to_string();
        c.exporters.otlp.retry_on_failure.initial_interval = Duration::from_millis(100);
        let ft = &mut c.processors.failure_triage;
        ft.storage = format!("sqlite://{DEMO_DATA}/triage.db");
        ft.root_grace = Duration::from_millis(500);
        ft.trace_window = Duration::from_secs(2);
    }
    reset_demo_data()?;
    let taxonomy = loaded.taxonomy.clone();
    let running = crate::service::start(loaded).await?;
    let grpc = running.grpc_addr.context("demo needs the gRPC receiver")?;
    println!("triage-loop demo");
    println!(
        "  processor  OTLP/gRPC {grpc}   OTLP/HTTP {}",
        running.http_addr.map(|a| a.to_string()).unwrap_or_default()
    );
    println!(
        "  metrics    http://{}/metrics",
        running
            .admin_addr
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    println!("  downstream OTLP/gRPC {sink_addr} (prints tagged spans as they arrive)");
    println!("  store      sqlite://{DEMO_DATA}/triage.db, remediations in {DEMO_DATA}/remediations.jsonl");
    println!(
        "  fleet      3 agents (support-bot, billing-assistant, travel-concierge), {rate} runs/s for {}, 5% failing\n",
        humantime::format_duration(duration)
    );

    let mut client = TraceServiceClient::connect(format!("http://{grpc}")).await?;
    let mut fleet = Fleet::new(0x5eed, 5);
    let tick = Duration::from_millis(100);
    let per_tick = (rate as usize / 10).max(1);
    let start = Instant::now();
    let mut sent_spans = 0u64;
    let mut sent_runs = 0u64;
    let mut failing_runs: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut interval = tokio::time::interval(tick);
    while start.elapsed() < duration {
        interval.tick().await;
        let (req, traces) = fleet.request(per_tick);
        {
            let mut st = lock(&state);
            for t in &traces {
                sent_spans += t.spans.len() as u64;
                sent_runs += 1;
                if let Some(c) = t.scenario.expected_class() {
                    *failing_runs.entry(c).or_default() += 1;
                }
                st.expected.insert(t.trace_id, t.scenario);
            }
        }
        client
            .export(req)
            .await
            .context("sending to the processor")?;
    }
    // Wait for the downstream to see everything.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if lock(&state).spans >= sent_spans {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lifecycle = running
        .lifecycle
        .clone()
        .context("demo needs the failure side")?;
    wait_for_failure_side(&running.metrics, &lifecycle).await;
    let metrics_text = running.metrics.render();
    let issues = load_issues(&lifecycle).await?;
    let queue = lifecycle.store().queue(10_000).await?;
    running.shutdown().await;
    let st = lock(&state);
    print_summary(&st, &taxonomy, sent_runs, sent_spans, &failing_runs);
    let spans_line: Vec<&str> = metrics_text
        .lines()
        .filter(|l| l.starts_with("triage_spans_total"))
        .collect();
    println!("/metrics: {}", spans_line.join("  "));
    print_loop(&st, &taxonomy, &issues, &metrics_text, &sink);
    print_queue(&queue);
    Ok(())
}

fn print_summary(
    st: &SinkState,
    taxonomy: &crate::classify::taxonomy::Taxonomy,
    sent_runs: u64,
    sent_spans: u64,
    failing_runs: &BTreeMap<&'static str, u64>,
) {
    println!(
        "\nsent {sent_runs} agent runs ({sent_spans} spans); downstream received {} spans, {} tagged\n",
        st.spans, st.tagged
    );
    println!(
        "{:<14} {:>12} {:>13}  {:<18} {:<18} top rules",
        "class", "failing runs", "tagged spans", "remediation", "owner"
    );
    for c in &taxonomy.classes {
        let (tagged, rules) = st.by_class.get(&c.name).cloned().unwrap_or_default();
        let mut rules: Vec<(String, u64)> = rules.into_iter().collect();
        rules.sort_by_key(|r| std::cmp::Reverse(r.1));
        let top: Vec<String> = rules
            .iter()
            .take(3)
            .map(|(r, n)| format!("{r} ({n})"))
            .collect();
        println!(
            "{:<14} {:>12} {:>13}  {:<18} {:<18} {}",
            c.name,
            failing_runs.get(c.name.as_str()).copied().unwrap_or(0),
            tagged,
            c.remediation,
            c.owner,
            top.join(", ")
        );
    }
    println!("\ntagged spans by the class the fleet meant (rows) and the class given (columns):");
    let names: Vec<&str> = taxonomy.classes.iter().map(|c| c.name.as_str()).collect();
    print!("{:<14}", "");
    for n in &names {
        print!(" {n:>13}");
    }
    println!();
    for (expected, row) in &st.confusion {
        print!("{expected:<14}");
        for n in &names {
            print!(" {:>13}", row.get(*n).copied().unwrap_or(0));
        }
        println!();
    }
    let fallback: u64 = st
        .by_class
        .values()
        .filter_map(|(_, rules)| rules.get("(fallback)"))
        .sum();
    if fallback > 0 {
        println!(
            "\n{fallback} spans got the fallback class (no rule matched, confidence 0): mostly invoke_agent\n\
             spans that ended in error because a child span failed. The child carries the cause and its class,\n\
             and the failure of the run is attributed to it (below)."
        );
    }
    let untagged_ok = st.spans >= sent_spans;
    println!(
        "\nevery span arrived: {}",
        if untagged_ok {
            "yes"
        } else {
            "NO — see /metrics triage_spans_total"
        }
    );
}

/// Empties the demo's data directory (its store and remediations.jsonl) so each run starts fresh.
fn reset_demo_data() -> anyhow::Result<()> {
    match std::fs::remove_dir_all(DEMO_DATA) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot empty {DEMO_DATA}")),
    }
}

/// Waits (bounded) until the assembler holds no trace and the outbox is delivered.
async fn wait_for_failure_side(metrics: &crate::admin::metrics::Metrics, lifecycle: &Lifecycle) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let held = metrics.assembler_traces.get();
        let pending = lifecycle.store().pending_dispatches().await.unwrap_or(1);
        if held == 0 && pending == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What waits for a person, by why.
fn print_queue(queue: &[QueueItem]) {
    let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
    for item in queue {
        let reason = item.failure.queue_reason.map_or("?", |r| r.as_str());
        *by_reason.entry(reason).or_default() += 1;
    }
    let reasons: Vec<String> = by_reason.iter().map(|(r, n)| format!("{r} {n}")).collect();
    println!(
        "\ntriage queue: {} issue(s) wait for a person ({}); while triage-loop runs they are at \
         /ui on the admin listener and `triage-loop queue`; a label (`triage-loop label FAILURE CLASS`) \
         re-routes the issue and teaches the model",
        queue.len(),
        if reasons.is_empty() {
            "none".to_string()
        } else {
            reasons.join(", ")
        }
    );
}

/// Every issue with its failures (occurrences).
async fn load_issues(lifecycle: &Lifecycle) -> anyhow::Result<Vec<IssueDetail>> {
    let store = lifecycle.store();
    let mut out = Vec::new();
    for issue in store.list_issues(&IssueFilter::default()).await? {
        if let Some(d) = store.get_issue(issue.id, 100_000).await? {
            out.push(d);
        }
    }
    Ok(out)
}

fn print_loop(
    st: &SinkState,
    taxonomy: &Taxonomy,
    issues: &[IssueDetail],
    metrics_text: &str,
    sink: &RecordingSink,
) {
    let failures: usize = issues.iter().map(|d| d.recent_occurrences.len()).sum();
    println!(
        "
the loop: {failures} failures (one per failed run, at its root cause) in {} issues (by fingerprint)
",
        issues.len()
    );
    println!(
        "{:<14} {:>8} {:>7} {:>11} {:>14}  remediation → sinks",
        "class", "failures", "issues", "dispatched", "to dispatch"
    );
    for c in &taxonomy.classes {
        let of_class: Vec<&IssueDetail> =
            issues.iter().filter(|d| d.issue.class == c.name).collect();
        let n_failures: usize = of_class.iter().map(|d| d.recent_occurrences.len()).sum();
        let dispatched = of_class
            .iter()
            .filter(|d| d.issue.dispatched_at.is_some())
            .count();
        let mut waits: Vec<i64> = of_class
            .iter()
            .filter_map(|d| d.issue.dispatched_at.map(|t| t - d.issue.cycle_started_at))
            .collect();
        waits.sort_unstable();
        let median = waits
            .get(waits.len() / 2)
            .map(|ms| format!("p50 {:.1}s", *ms as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        let sinks: std::collections::BTreeSet<&str> = of_class
            .iter()
            .flat_map(|d| d.dispatches.iter().map(|x| x.sink.as_str()))
            .collect();
        println!(
            "{:<14} {:>8} {:>7} {:>11} {:>14}  {} → {}",
            c.name,
            n_failures,
            of_class.len(),
            dispatched,
            median,
            c.remediation,
            if sinks.is_empty() {
                "-".to_string()
            } else {
                sinks.into_iter().collect::<Vec<_>>().join(", ")
            }
        );
    }
    println!(
        "
failures by the class the fleet meant (rows) and the class given (columns):"
    );
    let names: Vec<&str> = taxonomy.classes.iter().map(|c| c.name.as_str()).collect();
    let mut confusion: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for d in issues {
        for o in &d.recent_occurrences {
            let expected = trace_id_bytes(&o.trace_id)
                .and_then(|t| st.expected.get(&t))
                .and_then(|s| s.expected_class())
                .unwrap_or("(none)");
            *confusion
                .entry(expected.to_string())
                .or_default()
                .entry(o.class.clone())
                .or_default() += 1;
        }
    }
    print!("{:<14}", "");
    for n in &names {
        print!(" {n:>13}");
    }
    println!();
    for (expected, row) in &confusion {
        print!("{expected:<14}");
        for n in &names {
            print!(" {:>13}", row.get(*n).copied().unwrap_or(0));
        }
        println!();
    }
    let events = sink
        .logs
        .lock()
        .map(|l| {
            l.iter()
                .flat_map(|r| &r.resource_logs)
                .flat_map(|r| &r.scope_logs)
                .flat_map(|s| &s.log_records)
                .filter(|r| r.event_name == "triage.remediation")
                .count()
        })
        .unwrap_or(0);
    let lines = std::fs::read_to_string(format!("{DEMO_DATA}/remediations.jsonl"))
        .map(|s| s.lines().count())
        .unwrap_or(0);
    println!(
        "
dispatched: {lines} lines in {DEMO_DATA}/remediations.jsonl, {events} OTLP log events `triage.remediation` at the downstream"
    );
    let latency: Vec<&str> = metrics_text
        .lines()
        .filter(|l| l.starts_with("triage_loop_latency_seconds_count"))
        .collect();
    println!("/metrics: {}", latency.join("  "));
    println!(
        "
next: `triage-loop serve`, then `triage-loop issues`, `triage-loop ship ID --version V`, `triage-loop gate`"
    );
}

fn trace_id_bytes(hex: &str) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
