//! Several instances on one PostgreSQL: three triage-loops (real `service::start`, own ports,
//! one fresh schema) get concurrent failures of the same fingerprints, each trace entirely to one
//! instance as the Collector's load-balancing exporter sends them → one issue per fingerprint,
//! exact occurrence counts, each dispatch delivered once across the instances (a webhook records
//! every idempotency key), per-instance metrics, and a label given on one instance reaching the
//! hot path of the others.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer, TracerProvider as _,
};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::{json, Value};

use triage_loop::service::Running;

use crate::common::*;
use crate::pg_support::connect_or_skip;
use crate::remediation::{get_json, post_json, provider, until};

/// The tools whose timeouts make the fingerprints (one issue each).
const TOOLS: [&str; 3] = ["lookup_order", "refund_payment", "search_kb"];

/// Failures of each fingerprint sent to instance `i`: different per instance, so a metric
/// counted on the wrong instance shows.
const PER_INSTANCE: [usize; 3] = [3, 4, 5];

const SINK: &str = "webhook/hook";

/// A fresh schema on the test PostgreSQL: the admin connection, the schema's name and a storage
/// URL whose `search_path` is that schema; `None` (after printing SKIPPED) when unreachable.
async fn fresh_schema() -> Option<(tokio_postgres::Client, String, String)> {
    let (admin, base) = connect_or_skip("multi_instance").await?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let schema = format!("multi_{}_{}", std::process::id(), nanos);
    admin
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-csearch_path%3D{schema}");
    Some((admin, schema, url))
}

/// Idempotency keys the webhook received, in arrival order.
type Keys = Arc<Mutex<Vec<String>>>;

/// A webhook answering 200 to every POST and recording its `Idempotency-Key`.
async fn start_webhook() -> (u16, Keys) {
    let keys: Keys = Arc::default();
    let k = keys.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap| {
            let k = k.clone();
            async move {
                let key = headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("(none)")
                    .to_string();
                k.lock().unwrap().push(key);
                StatusCode::OK
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, app).await });
    (port, keys)
}

/// One instance's config: the shared store, the webhook for both classes the test uses, a
/// quick dispatcher, and `downstream` (its own) to forward to.
fn instance_yaml(downstream: &str, storage: &str, webhook: u16) -> String {
    let processor = format!(
        r#"{TEST_RULES}    sinks:
      {SINK}:
        endpoint: http://127.0.0.1:{webhook}/hook
        timeout: 2s
    dispatch:
      initial_interval: 100ms
      max_interval: 200ms
      poll_interval: 50ms
"#
    );
    let yaml = config_yaml(downstream, &processor, "");
    let sqlite = yaml
        .lines()
        .find(|l| l.trim_start().starts_with("storage: sqlite://"))
        .expect("the common config names a storage")
        .to_string();
    yaml.replace(&sqlite, &format!("    storage: {storage}"))
        .replace(
            "    taxonomy:\n      preset: default\n",
            &format!(
                "    taxonomy:\n      preset: default\n      classes:\n        \
                 logic_tool: {{sinks: [{SINK}]}}\n        tone_brand: {{sinks: [{SINK}]}}\n"
            ),
        )
}

/// One failed agent run whose root cause is `tool` timing out; `n` varies the message's number.
fn emit_tool_timeout(
    p: &SdkTracerProvider,
    tool: &'static str,
    n: usize,
    sent: &TraceTools,
) -> String {
    let tracer = p.tracer("agents");
    let root = tracer
        .span_builder("invoke_agent support-agent")
        .with_kind(SpanKind::Server)
        .with_attributes(vec![KeyValue::new("gen_ai.agent.name", "support-agent")])
        .start(&tracer);
    let trace_id = root.span_context().trace_id().to_string();
    let cx = opentelemetry::Context::current_with_span(root);
    let mut span = tracer.start_with_context(format!("execute_tool {tool}"), &cx);
    span.set_attribute(KeyValue::new("gen_ai.operation.name", "execute_tool"));
    span.set_attribute(KeyValue::new("gen_ai.tool.name", tool.to_string()));
    span.set_attribute(KeyValue::new("error.type", "TimeoutError"));
    span.set_status(Status::error(format!("timed out after {}ms", 1000 + n)));
    span.end();
    cx.span().set_status(Status::error("agent run failed"));
    cx.span().end();
    sent.lock().unwrap().insert(trace_id.clone(), tool);
    trace_id
}

/// The sum of every `triage_failures_total` series on one instance.
async fn failures_counted(running: &Running) -> f64 {
    scrape(running)
        .await
        .lines()
        .filter(|l| l.starts_with("triage_failures_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `(failure.class, failure.class.source)` of the forwarded `execute_tool` span of `trace_id`.
fn tool_tags(capture: &Capture, trace_id: &str) -> Option<(String, String)> {
    let traces = capture.traces.lock().unwrap();
    traces
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .filter(|s| hex(&s.trace_id) == trace_id && s.name.starts_with("execute_tool"))
        .find_map(|s| {
            Some((
                attr(&s.attributes, "failure.class")?.to_string(),
                attr(&s.attributes, "failure.class.source")?.to_string(),
            ))
        })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Which tool's fingerprint each sent trace has.
type TraceTools = Arc<Mutex<HashMap<String, &'static str>>>;

/// Issues by the tool of their fingerprint, from the shared store (asked through `running`);
/// an issue's tool is that of the traces it holds, which must all agree.
async fn issues_by_tool(running: &Running, sent: &TraceTools) -> BTreeMap<String, Value> {
    let list = get_json(running, "/api/v1/issues").await;
    let mut out = BTreeMap::new();
    for issue in list["issues"].as_array().unwrap() {
        let id = issue["id"].as_i64().unwrap();
        let detail = get_json(running, &format!("/api/v1/issues/{id}")).await;
        let tools: BTreeSet<&str> = detail["sample_trace_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                let t = t.as_str().unwrap();
                sent.lock()
                    .unwrap()
                    .get(t)
                    .copied()
                    .unwrap_or("(unknown trace)")
            })
            .collect();
        assert_eq!(tools.len(), 1, "issue {id} mixes fingerprints: {detail:#}");
        let tool = tools.first().unwrap().to_string();
        assert!(
            out.insert(tool.clone(), issue.clone()).is_none(),
            "two issues for {tool}: {list:#}"
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_share_one_postgres_with_one_issue_and_one_delivery_each() {
    let Some((admin, schema, url)) = fresh_schema().await else {
        return;
    };
    // On its own task so the schema is dropped even when the test fails.
    let result = tokio::spawn(scenario(url)).await;
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn scenario(storage: String) {
    let (webhook, keys) = start_webhook().await;
    let mut instances = Vec::new();
    let mut captures = Vec::new();
    for _ in 0..3 {
        let (addr, capture) = start_downstream().await;
        let yaml = instance_yaml(&addr.to_string(), &storage, webhook);
        assert!(yaml.contains("tone_brand: {sinks"), "{yaml}");
        instances.push(start_triage(&yaml).await);
        captures.push(capture);
    }
    let providers: Vec<_> = instances
        .iter()
        .map(|t| provider(t, "support-bot", "1.0.0"))
        .collect();

    // 1. Concurrent failures of the same three fingerprints through all three instances.
    let trace_tools = TraceTools::default();
    let mut sent = [0usize; 3];
    let mut senders = Vec::new();
    for (i, p) in providers.iter().enumerate() {
        let p = p.clone();
        let traces = trace_tools.clone();
        sent[i] = PER_INSTANCE[i] * TOOLS.len();
        senders.push(tokio::task::spawn_blocking(move || {
            for n in 0..PER_INSTANCE[i] {
                for tool in TOOLS {
                    emit_tool_timeout(&p, tool, i * 100 + n, &traces);
                }
            }
            p.force_flush().unwrap();
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    let per_fingerprint: usize = PER_INSTANCE.iter().sum();
    let all_recorded = |v: &Value| {
        let issues = v["issues"].as_array().unwrap();
        issues
            .iter()
            .map(|i| i["occurrences"].as_i64().unwrap())
            .sum::<i64>()
            >= (per_fingerprint * TOOLS.len()) as i64
    };
    until(&instances[0], "/api/v1/issues", all_recorded).await;
    let issues = issues_by_tool(&instances[1], &trace_tools).await;
    assert_eq!(
        issues.len(),
        TOOLS.len(),
        "one issue per fingerprint: {issues:#?}"
    );
    for (tool, issue) in &issues {
        assert_eq!(
            issue["occurrences"].as_i64(),
            Some(per_fingerprint as i64),
            "every failure of {tool} counted once: {issue:#}"
        );
        assert_eq!(issue["class"], "logic_tool", "{issue:#}");
    }

    // 2. One delivered dispatch per issue and sink, whichever instance claimed it.
    for issue in issues.values() {
        let id = issue["id"].as_i64().unwrap();
        let detail = until(&instances[2], &format!("/api/v1/issues/{id}"), |v| {
            v["dispatches"]
                .as_array()
                .is_some_and(|d| !d.is_empty() && d.iter().all(|d| d["delivered_at"].is_number()))
        })
        .await;
        let dispatches = detail["dispatches"].as_array().unwrap();
        assert_eq!(
            dispatches.len(),
            1,
            "one dispatch per issue cycle: {detail:#}"
        );
        assert_eq!(
            dispatches[0]["idempotency_key"],
            format!("{id}:1:{SINK}").as_str()
        );
    }

    // 3. Each instance counted what it was sent; together, every failure once.
    let mut total = 0.0;
    for (i, t) in instances.iter().enumerate() {
        let counted = failures_counted(t).await;
        assert_eq!(
            counted, sent[i] as f64,
            "instance {i} counts its own failures"
        );
        total += counted;
    }
    assert_eq!(total, (per_fingerprint * TOOLS.len()) as f64);

    // 4. A label on instance 0 re-routes the issue once and reaches the others' hot path.
    let relabelled = &issues["refund_payment"];
    let issue_id = relabelled["id"].as_i64().unwrap();
    let detail = get_json(&instances[1], &format!("/api/v1/issues/{issue_id}")).await;
    let failure_id = detail["recent_failures"][0]["id"].as_i64().unwrap();
    let (status, out) = post_json(
        &instances[0],
        &format!("/api/v1/failures/{failure_id}/label"),
        json!({"class": "tone_brand", "note": "a refund refusal is a tone problem"}),
    )
    .await;
    assert_eq!(status, 200, "{out:#}");
    assert_eq!(out["rerouted"], true, "{out:#}");
    assert_eq!(out["dispatches_enqueued"], 1, "{out:#}");
    let mut extra = [0usize; 3];
    for i in 0..3 {
        extra[i] = tagged_human_within(
            &providers[i],
            &captures[i],
            &trace_tools,
            Duration::from_secs(20),
        )
        .await
        .unwrap_or_else(|| panic!("instance {i} never learned the label"));
    }
    let extras: usize = extra.iter().sum();
    until(&instances[2], &format!("/api/v1/issues/{issue_id}"), |v| {
        v["issue"]["occurrences"].as_i64() == Some((per_fingerprint + extras) as i64)
            && v["dispatches"].as_array().is_some_and(|d| {
                d.len() == 2
                    && d.iter()
                        .all(|d| d["delivered_at"].is_number() || d["superseded_at"].is_number())
            })
    })
    .await;
    let after = issues_by_tool(&instances[0], &trace_tools).await;
    assert_eq!(
        after.len(),
        TOOLS.len(),
        "a label moves no failure to another issue"
    );
    assert_eq!(after["refund_payment"]["class"], "tone_brand");
    assert_eq!(after["refund_payment"]["source"], "human");
    for (i, t) in instances.iter().enumerate() {
        let counted = failures_counted(t).await;
        assert_eq!(
            counted,
            (sent[i] + extra[i]) as f64,
            "instance {i} after the label"
        );
    }

    // 5. Stop every instance (deliveries in flight finish or stay leased), then count keys.
    for t in instances {
        t.shutdown().await;
    }
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    for k in keys.lock().unwrap().iter() {
        *got.entry(k.clone()).or_default() += 1;
    }
    let mut want: BTreeMap<String, usize> = issues
        .values()
        .map(|i| (format!("{}:1:{SINK}", i["id"].as_i64().unwrap()), 1))
        .collect();
    want.insert(format!("{issue_id}:1.1:{SINK}"), 1);
    assert_eq!(
        got, want,
        "each dispatch delivered exactly once across the instances"
    );
}

/// Sends one failure of the relabelled fingerprint at a time to an instance until its hot path
/// tags it with the person's class; returns how many it took, `None` after `within`.
async fn tagged_human_within(
    p: &SdkTracerProvider,
    capture: &Capture,
    sent_traces: &TraceTools,
    within: Duration,
) -> Option<usize> {
    let deadline = Instant::now() + within;
    let mut sent = 0;
    while Instant::now() < deadline {
        let p2 = p.clone();
        let traces = sent_traces.clone();
        let trace_id = tokio::task::spawn_blocking(move || {
            let id = emit_tool_timeout(&p2, "refund_payment", 9000, &traces);
            p2.force_flush().unwrap();
            id
        })
        .await
        .unwrap();
        sent += 1;
        let tags = loop {
            if let Some(t) = tool_tags(capture, &trace_id) {
                break t;
            }
            assert!(
                Instant::now() < deadline + within,
                "span of {trace_id} not forwarded"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if tags == ("tone_brand".to_string(), "human".to_string()) {
            return Some(sent);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}
