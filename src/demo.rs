//! `triage-loop demo`: the processor, a printing downstream and a synthetic agent fleet in one
//! process, then a per-class summary of what was tagged. The first thing a newcomer runs.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

use crate::config;
use crate::otlp::attributes::{get, get_str, value_to_string};
use crate::otlp::sink::RecordingSink;
use crate::processor::tags;
use crate::synth::{Fleet, Scenario};

/// Lines printed live per class before the summary.
const LIVE_LINES_PER_CLASS: usize = 2;

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
    }
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
    let metrics_text = running.metrics.render();
    running.shutdown().await;
    let st = lock(&state);
    print_summary(&st, &taxonomy, sent_runs, sent_spans, &failing_runs);
    let spans_line: Vec<&str> = metrics_text
        .lines()
        .filter(|l| l.starts_with("triage_spans_total"))
        .collect();
    println!("\n/metrics: {}", spans_line.join("  "));
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
             spans that ended in error because a child span failed. The child carries the cause and its class."
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
