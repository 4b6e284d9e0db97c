//! The remediation loop end to end: SDK traces → one failure per trace at its root cause →
//! issues by fingerprint → one dispatch per issue cycle (jsonl + OTLP log event) → ship →
//! verify → regress → dispatched again, through the API and the CLI with a manual clock.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer, TracerProvider as _,
};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use serde_json::Value;

use triage_loop::clock::ManualClock;
use triage_loop::service::Running;

use crate::common::*;

/// A provider exporting to triage-loop's gRPC receiver as `service` at `version`.
pub fn provider(triage: &Running, service: &str, version: &str) -> SdkTracerProvider {
    let exporter = SpanExporter::builder()
        .with_tonic()
        .with_endpoint(format!("http://{}", triage.grpc_addr.unwrap()))
        .build()
        .unwrap();
    SdkTracerProvider::builder()
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_string())
                .with_attribute(KeyValue::new("service.version", version.to_string()))
                .build(),
        )
        .with_simple_exporter(exporter)
        .build()
}

/// Ids of one emitted run: trace id and the span ids of the agent and the tool.
pub struct Run {
    pub trace_id: String,
    pub agent_span: String,
    pub tool_span: String,
}

/// One failed agent run: the agent span fails because a tool two levels down (under a chat span
/// without a signal) timed out. `wait_ms` and `order` vary between runs like real ids and numbers.
pub fn emit_failed_run(provider: &SdkTracerProvider, wait_ms: u32, order: u32) -> Run {
    let tracer = provider.tracer("agents");
    let root = tracer
        .span_builder("invoke_agent support-agent")
        .with_kind(SpanKind::Server)
        .with_attributes(vec![
            KeyValue::new("gen_ai.operation.name", "invoke_agent"),
            KeyValue::new("gen_ai.agent.name", "support-agent"),
        ])
        .start(&tracer);
    let agent_span = root.span_context().span_id().to_string();
    let trace_id = root.span_context().trace_id().to_string();
    let cx = opentelemetry::Context::current_with_span(root);
    let chat = tracer.start_with_context("chat gpt-4o", &cx);
    let chat_cx = cx.with_span(chat);
    let mut tool = tracer.start_with_context("execute_tool lookup_order", &chat_cx);
    let tool_span = tool.span_context().span_id().to_string();
    tool.set_attribute(KeyValue::new("gen_ai.operation.name", "execute_tool"));
    tool.set_attribute(KeyValue::new("gen_ai.tool.name", "lookup_order"));
    tool.set_attribute(KeyValue::new("error.type", "TimeoutError"));
    tool.set_status(Status::error(format!(
        "timed out after {wait_ms}ms: GET /orders/{order}"
    )));
    tool.end();
    chat_cx.span().end();
    cx.span().set_status(Status::error("agent run failed"));
    cx.span().end();
    Run {
        trace_id,
        agent_span,
        tool_span,
    }
}

/// One clean run.
pub fn emit_clean_run(provider: &SdkTracerProvider) {
    let tracer = provider.tracer("agents");
    let root = tracer.start("invoke_agent support-agent");
    let cx = opentelemetry::Context::current_with_span(root);
    tracer.start_with_context("chat gpt-4o", &cx).end();
    cx.span().end();
}

pub async fn get_json(running: &Running, path: &str) -> Value {
    let addr = running.admin_addr.unwrap();
    reqwest::get(format!("http://{addr}{path}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

pub async fn post_json(running: &Running, path: &str, body: Value) -> (u16, Value) {
    let addr = running.admin_addr.unwrap();
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// Polls `GET path` until `cond` holds; panics with the last answer after 15s.
pub async fn until(running: &Running, path: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let v = get_json(running, path).await;
        if cond(&v) {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "condition not met on {path}: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn jsonl_lines(dir: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("remediations.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_failures_become_one_issue_at_the_root_cause_with_one_dispatch() {
    let dir = data_dir();
    let (addr, capture) = start_downstream().await;
    let yaml = config_yaml_in(
        &dir,
        &addr.to_string(),
        &format!("{TEST_RULES}    trace_url_template: http://jaeger:16686/trace/{{trace_id}}\n"),
        "",
    );
    let triage = start_triage(&yaml).await;
    let p = provider(&triage, "support-bot", "1.0.0");
    let p2 = p.clone();
    let runs = tokio::task::spawn_blocking(move || {
        let a = emit_failed_run(&p2, 3000, 4711);
        emit_clean_run(&p2);
        let b = emit_failed_run(&p2, 1500, 99);
        p2.force_flush().unwrap();
        vec![a, b]
    })
    .await
    .unwrap();
    let list = until(&triage, "/api/v1/issues", |v| {
        v["issues"][0]["occurrences"].as_i64() == Some(2)
    })
    .await;
    let list = list["issues"].as_array().unwrap();
    assert_eq!(
        list.len(),
        1,
        "two runs differing in ids and numbers share one issue: {list:#?}"
    );
    let issue = &list[0];
    assert_eq!(
        issue["class"], "logic_tool",
        "the root cause's class: {issue:#}"
    );
    assert_eq!(issue["agent"], "support-agent");
    assert_eq!(issue["service"], "support-bot");
    assert_eq!(issue["remediation"], "tool_fix");
    let id = issue["id"].as_i64().unwrap();
    let detail = until(&triage, &format!("/api/v1/issues/{id}"), |v| {
        v["issue"]["state"] == "dispatched"
    })
    .await;
    let failures = detail["recent_failures"].as_array().unwrap();
    assert_eq!(failures.len(), 2, "one failure per failed trace");
    for run in &runs {
        let f = failures
            .iter()
            .find(|f| f["trace_id"] == run.trace_id.as_str())
            .unwrap_or_else(|| panic!("no failure for trace {}: {failures:#?}", run.trace_id));
        assert_eq!(
            f["root_span_id"],
            run.tool_span.as_str(),
            "the tool is the root cause, not the agent span {}",
            run.agent_span
        );
        assert_eq!(
            f["trace_url"],
            format!("http://jaeger:16686/trace/{}", run.trace_id).as_str()
        );
    }
    assert!(detail["issue"]["latency"]["dispatched_s"].is_number());
    // One dispatch per issue cycle, not per occurrence: one jsonl line, one OTLP log event.
    assert!(eventually(Duration::from_secs(10), || jsonl_lines(&dir).len() == 1).await);
    let line = &jsonl_lines(&dir)[0];
    assert_eq!(line["idempotency_key"], format!("{id}:1:jsonl").as_str());
    assert_eq!(line["class"], "logic_tool");
    assert!(
        eventually(Duration::from_secs(10), || capture
            .logs
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| &r.resource_logs)
            .flat_map(|r| &r.scope_logs)
            .flat_map(|s| &s.log_records)
            .any(|l| l.event_name == "triage.remediation"))
        .await,
        "the remediation event reaches the downstream as an OTLP log"
    );
    let event = capture
        .logs
        .lock()
        .unwrap()
        .iter()
        .flat_map(|r| &r.resource_logs)
        .flat_map(|r| &r.scope_logs)
        .flat_map(|s| &s.log_records)
        .find(|l| l.event_name == "triage.remediation")
        .cloned()
        .unwrap();
    let root_cause_of = |trace: &[u8]| {
        runs.iter()
            .find(|r| r.trace_id == hex(trace))
            .map(|r| r.tool_span.clone())
    };
    assert_eq!(
        root_cause_of(&event.trace_id),
        Some(hex(&event.span_id)),
        "the event carries the root cause's trace and span id"
    );
    assert_eq!(attr(&event.attributes, "failure.class"), Some("logic_tool"));
    assert_eq!(
        attr(&event.attributes, "remediation.path"),
        Some("tool_fix")
    );
    let metrics = scrape(&triage).await;
    assert_eq!(
        metric_value(
            &metrics,
            r#"triage_failures_total{class="logic_tool",source="rule",agent="support-agent",service="support-bot"}"#
        ),
        Some(2.0),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"triage_loop_latency_seconds_count{class="logic_tool",stage="dispatched"} 1"#
        ),
        "{metrics}"
    );
    // The issue gauges are refreshed from the store every second.
    assert!(
        eventually(Duration::from_secs(5), || triage.metrics.render().contains(
            r#"triage_issues{class="logic_tool",state="dispatched"} 1"#
        ))
        .await
    );
    assert!(
        metrics.contains(r#"triage_dispatch_total{sink="jsonl",outcome="delivered"} 1"#),
        "{metrics}"
    );
    triage.shutdown().await;
    drop(p);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn cli(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_triage-loop"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Emits on a blocking thread, waits until the assembler holds what was emitted (when it
/// carries a failure), then moves the manual clock past the root grace so the trace is decided.
async fn emit(triage: &Running, p: &SdkTracerProvider, clock: &Arc<ManualClock>, failing: bool) {
    let p = p.clone();
    tokio::task::spawn_blocking(move || {
        if failing {
            emit_failed_run(&p, 250, 7);
        } else {
            emit_clean_run(&p);
        }
        p.force_flush().unwrap();
    })
    .await
    .unwrap();
    if failing {
        let held = eventually(Duration::from_secs(10), || {
            triage.metrics.assembler_traces.get() > 0
        })
        .await;
        assert!(held, "the failed run reached the assembler");
    } else {
        // A clean run only reports its version; give it time to be recorded.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    clock.advance(1_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ship_verify_regress_and_dispatch_again_through_the_api_and_cli() {
    const HOUR: i64 = 3_600_000;
    let dir = data_dir();
    let (addr, _capture) = start_downstream().await;
    let yaml = config_yaml_in(
        &dir,
        &addr.to_string(),
        &format!("{TEST_RULES}    verify_window: 1h\n    gate:\n      max_open_age: 2h\n"),
        "",
    );
    let clock = ManualClock::new(1_800_000_000_000);
    let loaded = triage_loop::config::load_str(&yaml, "test-config.yaml").unwrap();
    let triage = triage_loop::service::start_with_clock(loaded, clock.clone())
        .await
        .unwrap();
    let admin = format!("http://{}", triage.admin_addr.unwrap());
    let v1 = provider(&triage, "support-bot", "1.0.0");
    let v2 = provider(&triage, "support-bot", "1.1.0");

    // Observed → classified → dispatched.
    emit(&triage, &v1, &clock, true).await;
    let first = until(&triage, "/api/v1/issues", |v| {
        v["issues"][0]["state"] == "dispatched"
    })
    .await["issues"][0]
        .clone();
    let id = first["id"].as_i64().unwrap();
    let path = format!("/api/v1/issues/{id}");
    let (code, table) = cli(&["issues", "--admin", &admin, "--state", "dispatched"]);
    assert_eq!(code, 0, "{table}");
    assert!(
        table.contains("logic_tool") && table.contains("support-agent"),
        "{table}"
    );

    // The gate passes while the issue is young.
    let (code, text) = cli(&["gate", "--admin", &admin]);
    assert_eq!(code, 0, "{text}");

    // Shipped in 1.1.0, through the CLI, two hours after the failure was observed.
    clock.advance(2 * HOUR);
    let (code, text) = cli(&["gate", "--admin", &admin]);
    assert_eq!(
        code, 1,
        "an issue open for more than max_open_age fails the gate: {text}"
    );
    let (code, text) = cli(&[
        "ship",
        &id.to_string(),
        "--version",
        "1.1.0",
        "--admin",
        &admin,
    ]);
    assert_eq!(code, 0, "{text}");
    let v = get_json(&triage, &path).await;
    assert_eq!(v["issue"]["state"], "shipped");
    let shipped_s = v["issue"]["latency"]["shipped_s"].as_f64().unwrap();
    assert!((7200.0..7300.0).contains(&shipped_s), "{shipped_s}");
    // Shipping again in the same version changes nothing (a CD pipeline retries); an unknown
    // issue is 404; bad bodies and ids are 4xx with a JSON error.
    clock.advance(1_000);
    let (code, body) = post_json(
        &triage,
        &format!("{path}/ship"),
        serde_json::json!({"version": "1.1.0"}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["issue"]["latency"]["shipped_s"].as_f64(),
        Some(shipped_s)
    );
    let resp = reqwest::get(format!("{admin}/api/v1/issues/abc"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.json::<Value>().await.unwrap()["error"].is_string());
    let (code, _) = post_json(
        &triage,
        "/api/v1/issues/999999/ship",
        serde_json::json!({"version": "1"}),
    )
    .await;
    assert_eq!(code, 404);
    let (code, body) = post_json(
        &triage,
        &format!("{path}/ship"),
        serde_json::json!({"ver": 1}),
    )
    .await;
    assert_eq!(code, 422, "{body}");

    // The old version keeps failing while the rollout runs: not a regression.
    emit(&triage, &v1, &clock, true).await;
    until(&triage, &path, |v| v["issue"]["occurrences"] == 2).await;
    assert_eq!(get_json(&triage, &path).await["issue"]["state"], "shipped");

    // 1.1.0 arrives; after the verify window with no recurrence the issue is verified.
    emit(&triage, &v2, &clock, false).await;
    clock.advance(HOUR / 2);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get_json(&triage, &path).await["issue"]["state"], "shipped");
    clock.advance(HOUR);
    let v = until(&triage, &path, |v| v["issue"]["state"] == "verified").await;
    assert!(v["issue"]["latency"]["verified_s"].as_f64().unwrap() > shipped_s);

    // It recurs on the shipped version: regressed, a new cycle, dispatched again.
    emit(&triage, &v2, &clock, true).await;
    let v = until(&triage, &path, |v| {
        v["issue"]["cycle"] == 2 && v["issue"]["state"] == "dispatched"
    })
    .await;
    let states: Vec<&str> = v["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["to_state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        [
            "open",
            "dispatched",
            "shipped",
            "verified",
            "regressed",
            "dispatched"
        ]
    );
    let keys: Vec<String> = jsonl_lines(&dir)
        .iter()
        .map(|l| l["idempotency_key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, [format!("{id}:1:jsonl"), format!("{id}:2:jsonl")]);
    let gate = get_json(&triage, "/api/v1/gate").await;
    assert_eq!(
        gate["pass"], false,
        "a regression not yet re-shipped fails the gate: {gate:#}"
    );

    // A deployment ships the fix again.
    let (code, body) = post_json(
        &triage,
        "/api/v1/deployments",
        serde_json::json!({"service": "support-bot", "version": "1.2.0", "fixes": [id]}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(get_json(&triage, &path).await["issue"]["state"], "shipped");
    // The pipeline retries: the same deployment again is fine; an unknown fix is named.
    let (code, body) = post_json(
        &triage,
        "/api/v1/deployments",
        serde_json::json!({"service": "support-bot", "version": "1.2.0", "fixes": [id, 999999]}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["shipped"], serde_json::json!([id]));
    assert_eq!(body["errors"][0]["issue_id"], 999999);

    // Ignored: a recurrence counts but neither regresses nor dispatches.
    let (code, text) = cli(&[
        "ignore",
        &id.to_string(),
        "--reason",
        "known flaky tool",
        "--admin",
        &admin,
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("ignored"), "{text}");
    let before = get_json(&triage, &path).await["issue"]["occurrences"]
        .as_i64()
        .unwrap();
    emit(&triage, &v2, &clock, true).await;
    let v = until(&triage, &path, |v| {
        v["issue"]["occurrences"].as_i64() == Some(before + 1)
    })
    .await;
    assert_eq!(v["issue"]["state"], "ignored");
    assert_eq!(v["issue"]["cycle"], 2);
    assert_eq!(
        jsonl_lines(&dir).len(),
        2,
        "no dispatch for an ignored issue"
    );
    let (code, body) = post_json(
        &triage,
        &format!("{path}/ship"),
        serde_json::json!({"version": "9.0.0"}),
    )
    .await;
    assert_eq!(code, 409, "ignored is final: {body}");
    let metrics = scrape(&triage).await;
    for stage in ["classified", "dispatched", "shipped", "verified"] {
        assert!(
            metrics.contains(&format!(
                "triage_loop_latency_seconds_count{{class=\"logic_tool\",stage=\"{stage}\"}}"
            )),
            "{stage}: {metrics}"
        );
    }
    triage.shutdown().await;
}

/// A shutdown that stops waiting for the failure side counts what it had not finished: here the
/// store is locked by another writer, so the failed run's failure is still unwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_that_stops_waiting_counts_the_unwritten_failures() {
    let dir = data_dir();
    let (addr, _capture) = start_downstream().await;
    let yaml = config_yaml_in(&dir, &addr.to_string(), TEST_RULES, "");
    let clock = ManualClock::new(1_800_000_000_000);
    let loaded = triage_loop::config::load_str(&yaml, "test-config.yaml").unwrap();
    let triage = triage_loop::service::start_with_clock(loaded, clock.clone())
        .await
        .unwrap();
    let metrics = triage.metrics.clone();
    let p = provider(&triage, "support-bot", "1.0.0");
    // Versions are written first, while the store is free.
    emit(&triage, &p, &clock, false).await;

    // Another writer takes the database: the store's writes wait (busy timeout 10 s).
    let lock = rusqlite::Connection::open(dir.join("triage.db")).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    emit(&triage, &p, &clock, true).await;
    let pending = eventually(Duration::from_secs(10), || {
        metrics.failures_pending.get() == 1 && metrics.assembler_traces.get() == 0
    })
    .await;
    assert!(pending, "the failure was decided and waits for the store");

    let started = std::time::Instant::now();
    triage.shutdown_within(Duration::from_millis(500)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let text = metrics.render();
    assert_eq!(
        metric_value(
            &text,
            r#"triage_failure_side_dropped_total{reason="shutdown"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(metrics.failures_pending.get(), 0);
    lock.execute_batch("ROLLBACK").unwrap();
}
