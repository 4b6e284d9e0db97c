//! Mechanical dispatch end to end: a real SQLite outbox, real HTTP servers and OTLP downstream,
//! a manual clock; each sink's request, retries with backoff, giving up, and the issue moving on.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json as AxumJson, Router};
use hmac::{Hmac, KeyInit, Mac};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use serde_json::{json, Value as Json};
use sha2::Sha256;
use tempfile::TempDir;

use triage_loop::admin::metrics::Metrics;
use triage_loop::classify::taxonomy::Taxonomy;
use triage_loop::classify::Source;
use triage_loop::clock::{ManualClock, SharedClock};
use triage_loop::config::{FailureTriage, OtlpExporter, SinkConfig};
use triage_loop::otlp::exporter;
use triage_loop::otlp::sink::RecordingSink;
use triage_loop::remediation::dispatch::{Dispatcher, IGNORED_REASON};
use triage_loop::remediation::render::Renderer;
use triage_loop::remediation::sinks::{JsonlSink, Sink, SinkSet};
use triage_loop::remediation::store::{FailureRecord, IssueState, SqliteStore, Store, GIVEN_UP};

const T0: i64 = 1_700_000_000_000;
const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const SPAN: &str = "b7ad6b7169203331";

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// One request a test server received.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// A local HTTP server answering POSTs with the statuses given, in turn (the last one repeats).
#[derive(Clone)]
struct Server {
    seen: Arc<Mutex<Vec<Seen>>>,
    statuses: Arc<Vec<u16>>,
    calls: Arc<AtomicUsize>,
    base: String,
}

impl Server {
    async fn start(statuses: &[u16]) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Server {
            seen: Arc::default(),
            statuses: Arc::new(statuses.to_vec()),
            calls: Arc::default(),
            base: format!("http://{addr}"),
        };
        let app = Router::new()
            .route("/{*path}", post(answer))
            .with_state(server.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        server
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn answer(
    State(s): State<Server>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    s.seen.lock().unwrap().push(Seen {
        path: uri.path().to_string(),
        headers,
        body,
    });
    let n = s.calls.fetch_add(1, Ordering::SeqCst);
    let code = s.statuses[n.min(s.statuses.len() - 1)];
    StatusCode::from_u16(code).unwrap()
}

/// A store, the clock, metrics and the config the dispatcher is built from.
struct Harness {
    _dir: TempDir,
    dir: std::path::PathBuf,
    store: Arc<dyn Store>,
    clock: Arc<ManualClock>,
    metrics: Arc<Metrics>,
    ft: FailureTriage,
    taxonomy: Taxonomy,
}

impl Harness {
    async fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("triage.db"))
            .await
            .unwrap();
        let mut ft = FailureTriage::default();
        ft.dispatch.initial_interval = Duration::from_secs(1);
        ft.dispatch.max_interval = Duration::from_secs(60);
        ft.dispatch.max_attempts = 3;
        ft.trace_url_template = Some("http://jaeger:16686/trace/{trace_id}".into());
        Harness {
            dir: dir.path().to_path_buf(),
            _dir: dir,
            store: Arc::new(store),
            clock: ManualClock::new(T0),
            metrics: Arc::new(Metrics::new()),
            ft,
            taxonomy: Taxonomy::preset("default").unwrap(),
        }
    }

    /// Adds a sink to the config and routes class `logic_tool` to the sinks named so far.
    fn sink(&mut self, name: &str, cfg: SinkConfig) {
        self.ft.sinks.insert(name.into(), cfg);
        let names: Vec<String> = self.ft.sinks.keys().cloned().collect();
        for c in &mut self.taxonomy.classes {
            c.sinks = names.clone();
        }
    }

    fn jsonl_path(&self) -> std::path::PathBuf {
        self.dir.join("out/remediations.jsonl")
    }

    fn sinks(&self) -> SinkSet {
        SinkSet::from_config(&self.ft, &self.taxonomy, None).unwrap()
    }

    fn dispatcher(&self, sinks: SinkSet) -> Dispatcher {
        let clock: SharedClock = self.clock.clone();
        Dispatcher::new(
            self.store.clone(),
            sinks,
            self.taxonomy.clone(),
            &self.ft,
            clock,
            self.metrics.clone(),
        )
    }

    /// Records a failure observed at `observed_at`; the store enqueues its dispatches to the
    /// class's sinks in the same transaction, as the failure side does. Returns the issue id.
    async fn fail(&self, sinks: &SinkSet, observed_at: i64) -> i64 {
        let rec = record(observed_at);
        let out = self
            .store
            .record_failure(&rec, &sinks.sinks_for_class(&rec.class), rec.observed_at)
            .await
            .unwrap();
        out.issue_id
    }

    async fn state(&self, issue: i64) -> IssueState {
        self.store
            .get_issue(issue, 0)
            .await
            .unwrap()
            .unwrap()
            .issue
            .state
    }

    /// The value of the Prometheus sample `series` (name with labels), 0 when absent.
    fn metric(&self, series: &str) -> f64 {
        self.metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

fn record(observed_at: i64) -> FailureRecord {
    FailureRecord {
        trace_id: TRACE.into(),
        root_span_id: SPAN.into(),
        class: "logic_tool".into(),
        source: Source::Rule,
        confidence: 0.9,
        fingerprint: "fp-lookup-timeout".into(),
        remediation: "tool_fix".into(),
        agent: "planner".into(),
        service: "agent-svc".into(),
        service_version: Some("1.4.2".into()),
        observed_at,
        signal: json!({"kind": "exception", "type": "TimeoutError", "operation": "lookup_order"})
            .into(),
        rule: None,
        queue_reason: None,
        trace: None,
    }
}

fn webhook(url: String) -> SinkConfig {
    SinkConfig {
        endpoint: Some(url),
        ..Default::default()
    }
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn header<'a>(s: &'a Seen, name: &str) -> &'a str {
    s.headers
        .get(name)
        .unwrap_or_else(|| panic!("header {name} missing"))
        .to_str()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn webhook_500_then_200_is_delivered_once_signed_and_the_issue_moves_to_dispatched() {
    let server = Server::start(&[500, 200]).await;
    let mut h = Harness::new().await;
    std::env::set_var("TRIAGE_TEST_WEBHOOK_SECRET", "s3cr3t");
    let mut cfg = webhook(format!("{}/hooks/triage", server.base));
    cfg.secret_env = Some("TRIAGE_TEST_WEBHOOK_SECRET".into());
    cfg.headers = BTreeMap::from([("X-Team".to_string(), "agents".to_string())]);
    h.sink("webhook", cfg);
    let sinks = h.sinks();
    let issue = h.fail(&sinks, T0 - 30_000).await;
    let d = h.dispatcher(sinks);

    h.clock.advance(10_000);
    assert_eq!(
        d.run_once().await.unwrap(),
        0,
        "the first attempt gets a 500"
    );
    assert_eq!(h.state(issue).await, IssueState::Open);
    assert_eq!(d.run_once().await.unwrap(), 0, "not due before its backoff");
    h.clock.advance(1_000); // the first backoff is at most initial_interval
    assert_eq!(d.run_once().await.unwrap(), 1);
    h.clock.advance(3_600_000);
    assert_eq!(
        d.run_once().await.unwrap(),
        0,
        "delivered once, never again"
    );

    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.path, "/hooks/triage");
        assert_eq!(header(s, "content-type"), "application/json");
        assert_eq!(header(s, "idempotency-key"), format!("{issue}:1:webhook"));
        assert_eq!(header(s, "x-team"), "agents");
        assert_eq!(
            header(s, "x-triage-signature-256"),
            format!("sha256={}", hmac_hex("s3cr3t", &s.body)),
            "HMAC-SHA256 of the exact body"
        );
    }
    let body: Json = serde_json::from_slice(&seen[1].body).unwrap();
    assert_eq!(body["idempotency_key"], format!("{issue}:1:webhook"));
    assert_eq!(body["issue_id"], issue);
    assert_eq!(body["class"], "logic_tool");
    assert_eq!(body["remediation"], "tool_fix");
    assert_eq!(body["owner"], "agent-engineering");
    assert_eq!(body["trace_id"], TRACE);
    assert_eq!(body["span_id"], SPAN);
    assert_eq!(
        body["trace_url"],
        format!("http://jaeger:16686/trace/{TRACE}")
    );
    assert_eq!(
        body["title"],
        "[triage-loop] logic_tool: lookup_order failing in planner (tool_fix)"
    );
    let text = body["body"].as_str().unwrap();
    assert!(text.contains(&format!("Issue {issue} (cycle 1)")), "{text}");
    assert!(
        text.contains("first seen 2023-11-14T22:12:50.000Z"),
        "{text}"
    );
    assert!(
        text.contains(&format!("trace: http://jaeger:16686/trace/{TRACE}")),
        "{text}"
    );

    let detail = h.store.get_issue(issue, 0).await.unwrap().unwrap();
    assert_eq!(detail.issue.state, IssueState::Dispatched);
    assert_eq!(detail.issue.dispatched_at, Some(T0 + 11_000));
    let last = detail.transitions.last().unwrap();
    assert_eq!(last.to_state, IssueState::Dispatched);
    assert_eq!(last.reason, "delivered to webhook");

    let series = r#"{sink="webhook",outcome="#;
    assert_eq!(
        h.metric(&format!(r#"triage_dispatch_total{series}"retried"}}"#)),
        1.0
    );
    assert_eq!(
        h.metric(&format!(r#"triage_dispatch_total{series}"delivered"}}"#)),
        1.0
    );
    let lat = r#"{class="logic_tool",stage="dispatched"}"#;
    assert_eq!(
        h.metric(&format!("triage_loop_latency_seconds_count{lat}")),
        1.0
    );
    assert_eq!(
        h.metric(&format!("triage_loop_latency_seconds_sum{lat}")),
        41.0,
        "from the first occurrence (30s before T0) to the delivery (T0 + 11s)"
    );
}

#[tokio::test]
async fn default_sinks_write_one_jsonl_line_even_when_redelivered_after_a_lease_expiry() {
    let mut h = Harness::new().await;
    h.ft.sinks.insert(
        "jsonl".into(),
        SinkConfig {
            path: Some(h.jsonl_path().display().to_string()),
            ..Default::default()
        },
    );
    let sinks = h.sinks();
    assert_eq!(
        sinks.sinks_for_class("logic_tool"),
        vec!["jsonl"],
        "class with no sinks → defaults; otlp_log is skipped without a logs queue"
    );
    let issue = h.fail(&sinks, T0).await;

    // A first process claims the dispatch, writes the line and dies before marking it delivered.
    let claimed = h.store.claim_due_dispatches(T0, 10, 30_000).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let detail = h.store.get_issue(issue, 0).await.unwrap().unwrap();
    let renderer = Renderer {
        templates: h.ft.templates.clone(),
        trace_url_template: h.ft.trace_url_template.clone(),
    };
    let r = renderer
        .render(&claimed[0], &detail, h.taxonomy.class("logic_tool"), T0)
        .unwrap();
    JsonlSink::new(h.jsonl_path()).deliver(&r).await.unwrap();

    // After a restart the lease runs out and a new dispatcher (a new sink) delivers it again.
    let d = h.dispatcher(sinks);
    assert_eq!(d.run_once().await.unwrap(), 0, "still leased");
    h.clock.advance(30_000);
    assert_eq!(d.run_once().await.unwrap(), 1);

    let text = std::fs::read_to_string(h.jsonl_path()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "exactly once in the file: {text}");
    let line: Json = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(line["idempotency_key"], format!("{issue}:1:jsonl"));
    for (k, v) in [
        ("class", json!("logic_tool")),
        ("remediation", json!("tool_fix")),
        ("owner", json!("agent-engineering")),
        ("trace_id", json!(TRACE)),
        ("span_id", json!(SPAN)),
        ("fingerprint", json!("fp-lookup-timeout")),
        ("agent", json!("planner")),
        ("service", json!("agent-svc")),
        ("state", json!("open")),
        ("cycle", json!(1)),
        ("issue_id", json!(issue)),
    ] {
        assert_eq!(line[k], v, "{k}");
    }
    for k in ["title", "body", "trace_url", "dispatched_at"] {
        assert!(line[k].is_string(), "{k}: {line}");
    }
    assert_eq!(h.state(issue).await, IssueState::Dispatched);

    // The same sink given the same key again (a lost acknowledgement) does not write either.
    let sink = JsonlSink::new(h.jsonl_path());
    sink.deliver(&r).await.unwrap();
    sink.deliver(&r).await.unwrap();
    let text = std::fs::read_to_string(h.jsonl_path()).unwrap();
    assert_eq!(text.lines().count(), 1);
}

#[tokio::test]
async fn github_issue_request_against_a_local_enterprise_server() {
    let server = Server::start(&[201]).await;
    let mut h = Harness::new().await;
    std::env::set_var("TRIAGE_TEST_GITHUB_TOKEN", "ghp_test123");
    h.sink(
        "github/agents",
        SinkConfig {
            base_url: format!("{}/api/v3/", server.base),
            repo: Some("acme/agents".into()),
            token_env: "TRIAGE_TEST_GITHUB_TOKEN".into(),
            labels: vec!["triage".into(), "tool_fix".into()],
            ..Default::default()
        },
    );
    let sinks = h.sinks();
    let issue = h.fail(&sinks, T0).await;
    assert_eq!(h.dispatcher(sinks).run_once().await.unwrap(), 1);

    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.path, "/api/v3/repos/acme/agents/issues");
    assert_eq!(header(s, "authorization"), "Bearer ghp_test123");
    assert_eq!(header(s, "accept"), "application/vnd.github+json");
    assert_eq!(header(s, "x-github-api-version"), "2022-11-28");
    assert_eq!(header(s, "user-agent"), "triage-loop");
    let body: Json = serde_json::from_slice(&s.body).unwrap();
    assert_eq!(
        body["title"],
        "[triage-loop] logic_tool: lookup_order failing in planner (tool_fix)"
    );
    let text = body["body"].as_str().unwrap();
    assert!(
        text.trim_end()
            .ends_with(&format!("<!-- triage-loop:{issue}:1:github/agents -->")),
        "{text}"
    );
    assert_eq!(
        body["labels"],
        json!(["triage-loop", "triage", "tool_fix", "logic_tool"]),
        "the fixed label first, then the configured ones, the class and the path, once each"
    );
    assert_eq!(h.state(issue).await, IssueState::Dispatched);
}

#[tokio::test]
async fn github_without_its_token_is_given_up_at_once() {
    let server = Server::start(&[201]).await;
    let mut h = Harness::new().await;
    h.sink(
        "github",
        SinkConfig {
            base_url: server.base.clone(),
            repo: Some("acme/agents".into()),
            token_env: "TRIAGE_TEST_SURELY_UNSET_TOKEN".into(),
            ..Default::default()
        },
    );
    let sinks = h.sinks();
    let issue = h.fail(&sinks, T0).await;
    let d = h.dispatcher(sinks);
    assert_eq!(d.run_once().await.unwrap(), 0);
    h.clock.advance(86_400_000);
    assert_eq!(d.run_once().await.unwrap(), 0);
    assert!(server.seen().is_empty());
    assert_eq!(
        h.metric(r#"triage_dispatch_total{sink="github",outcome="gave_up"}"#),
        1.0
    );
    assert_eq!(h.state(issue).await, IssueState::Open);
}

#[tokio::test]
async fn slack_gets_title_and_body_as_text() {
    let server = Server::start(&[200]).await;
    let mut h = Harness::new().await;
    std::env::set_var(
        "TRIAGE_TEST_SLACK_URL",
        format!("{}/services/T000/B000/XXX", server.base),
    );
    h.sink(
        "slack/oncall",
        SinkConfig {
            endpoint_env: Some("TRIAGE_TEST_SLACK_URL".into()),
            ..Default::default()
        },
    );
    let sinks = h.sinks();
    let issue = h.fail(&sinks, T0).await;
    assert_eq!(h.dispatcher(sinks).run_once().await.unwrap(), 1);

    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/services/T000/B000/XXX");
    let body: Json = serde_json::from_slice(&seen[0].body).unwrap();
    let text = body["text"].as_str().unwrap();
    assert!(
        text.starts_with(
            "*[triage-loop] logic_tool: lookup_order failing in planner (tool_fix)*\nIssue "
        ),
        "{text}"
    );
    assert!(text.contains(&format!("Issue {issue} (cycle 1)")), "{text}");
    assert_eq!(body.as_object().unwrap().len(), 1, "only text: {body}");
}

#[tokio::test]
async fn gives_up_after_max_attempts() {
    let server = Server::start(&[503]).await;
    let mut h = Harness::new().await;
    h.sink("webhook", webhook(format!("{}/hook", server.base)));
    let sinks = h.sinks();
    let issue = h.fail(&sinks, T0).await;
    let d = h.dispatcher(sinks);
    for _ in 0..6 {
        assert_eq!(d.run_once().await.unwrap(), 0);
        h.clock.advance(60_000); // max_interval: always due again
    }
    assert_eq!(server.seen().len(), 3, "max_attempts = 3");
    let w = r#"triage_dispatch_total{sink="webhook",outcome="#;
    assert_eq!(h.metric(&format!(r#"{w}"retried"}}"#)), 2.0);
    assert_eq!(h.metric(&format!(r#"{w}"gave_up"}}"#)), 1.0);
    assert_eq!(h.metric(&format!(r#"{w}"delivered"}}"#)), 0.0);
    assert_eq!(h.state(issue).await, IssueState::Open);
}

#[tokio::test]
async fn a_400_is_given_up_at_once_but_a_429_is_retried() {
    let server = Server::start(&[429, 400]).await;
    let mut h = Harness::new().await;
    h.ft.dispatch.max_attempts = 10;
    h.sink("webhook", webhook(format!("{}/hook", server.base)));
    let sinks = h.sinks();
    h.fail(&sinks, T0).await;
    let d = h.dispatcher(sinks);
    for _ in 0..4 {
        d.run_once().await.unwrap();
        h.clock.advance(60_000);
    }
    assert_eq!(server.seen().len(), 2, "429 retried, 400 not");
    let w = r#"triage_dispatch_total{sink="webhook",outcome="#;
    assert_eq!(h.metric(&format!(r#"{w}"retried"}}"#)), 1.0);
    assert_eq!(h.metric(&format!(r#"{w}"gave_up"}}"#)), 1.0);
}

#[tokio::test]
async fn otlp_log_event_reaches_the_downstream_with_the_root_cause_ids() {
    let downstream = RecordingSink::default();
    let addr = downstream.serve().await.unwrap();
    let mut h = Harness::new().await;
    let exporter_cfg = OtlpExporter {
        endpoint: addr.to_string(),
        ..Default::default()
    };
    let (queue, _task) = exporter::start(&exporter_cfg, None, h.metrics.clone()).unwrap();
    h.sink("otlp_log", SinkConfig::default());
    let sinks = SinkSet::from_config(&h.ft, &h.taxonomy, Some(queue)).unwrap();
    assert_eq!(
        sinks.names(),
        vec!["otlp_log"],
        "no jsonl when no class uses it"
    );
    let issue = h.fail(&sinks, T0).await;
    assert_eq!(h.dispatcher(sinks).run_once().await.unwrap(), 1);

    let mut waited = 0;
    while downstream.logs.lock().unwrap().is_empty() {
        assert!(waited < 100, "no log record arrived downstream");
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    let req = downstream.logs.lock().unwrap()[0].clone();
    let rl = &req.resource_logs[0];
    let res = &rl.resource.as_ref().unwrap().attributes;
    assert_eq!(str_attr(res, "service.name"), Some("triage-loop".into()));
    let rec = &rl.scope_logs[0].log_records[0];
    assert_eq!(rec.event_name, "triage.remediation");
    assert_eq!(hex(&rec.trace_id), TRACE);
    assert_eq!(hex(&rec.span_id), SPAN);
    assert_eq!(rec.severity_text, "WARN");
    assert_eq!(rec.severity_number, 13);
    assert_eq!(rec.time_unix_nano, (T0 as u64) * 1_000_000);
    let a = &rec.attributes;
    assert_eq!(str_attr(a, "failure.class"), Some("logic_tool".into()));
    assert_eq!(
        str_attr(a, "failure.fingerprint"),
        Some("fp-lookup-timeout".into())
    );
    assert_eq!(str_attr(a, "remediation.path"), Some("tool_fix".into()));
    assert_eq!(
        str_attr(a, "remediation.owner"),
        Some("agent-engineering".into())
    );
    assert_eq!(int_attr(a, "triage.issue.id"), Some(issue));
    assert_eq!(int_attr(a, "triage.issue.cycle"), Some(1));
    assert_eq!(str_attr(a, "triage.issue.state"), Some("open".into()));
    assert_eq!(
        str_attr(a, "triage.dispatch.idempotency_key"),
        Some(format!("{issue}:1:otlp_log"))
    );
    assert_eq!(
        str_attr(a, "triage.trace.url"),
        Some(format!("http://jaeger:16686/trace/{TRACE}"))
    );
    assert_eq!(h.state(issue).await, IssueState::Dispatched);
}

#[tokio::test]
async fn two_sinks_one_transition_and_one_latency_observation() {
    let server = Server::start(&[200]).await;
    let mut h = Harness::new().await;
    h.sink("slack", webhook(format!("{}/slack", server.base)));
    h.sink("webhook", webhook(format!("{}/hook", server.base)));
    let sinks = h.sinks();
    let issue = h.fail(&sinks, T0).await;
    h.clock.advance(5_000);
    assert_eq!(h.dispatcher(sinks).run_once().await.unwrap(), 2);

    let detail = h.store.get_issue(issue, 0).await.unwrap().unwrap();
    let dispatched = detail
        .transitions
        .iter()
        .filter(|t| t.to_state == IssueState::Dispatched)
        .count();
    assert_eq!(dispatched, 1);
    let lat = r#"{class="logic_tool",stage="dispatched"}"#;
    assert_eq!(
        h.metric(&format!("triage_loop_latency_seconds_count{lat}")),
        1.0
    );
    assert_eq!(
        h.metric(&format!("triage_loop_latency_seconds_sum{lat}")),
        5.0
    );
}

#[tokio::test]
async fn the_loop_delivers_when_woken_and_stops() {
    let server = Server::start(&[200]).await;
    let mut h = Harness::new().await;
    h.ft.dispatch.poll_interval = Duration::from_secs(3600); // only the waker can wake it
    h.sink("webhook", webhook(format!("{}/hook", server.base)));
    let sinks = h.sinks();
    let d = h.dispatcher(sinks.clone());
    let waker = d.waker();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = d.spawn(stop_rx);

    let issue = h.fail(&sinks, T0).await;
    waker.notify_one();
    let mut waited = 0;
    while h.state(issue).await != IssueState::Dispatched {
        assert!(waited < 100, "not delivered after a wake");
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    assert_eq!(server.seen().len(), 1);
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the loop stops")
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// GitHub: a retry after a lost answer finds the issue by its marker
// ---------------------------------------------------------------------------------------------

/// How the stand-in GitHub answers one POST (create issue).
#[derive(Debug, Clone, Copy)]
enum PostAnswer {
    /// Creates the issue and answers 201.
    Created,
    /// Creates the issue, then answers 502: the answer is lost, the issue exists.
    CreatedThenLost,
    /// Creates nothing: 403 with `x-ratelimit-remaining: 0`.
    RateLimited,
}

/// A local stand-in for the GitHub issues API of one repository: POST creates, GET lists (with
/// the `state`, `labels`, `sort=created`, `direction`, `per_page` and `page` parameters).
#[derive(Clone)]
struct FakeGithub {
    issues: Arc<Mutex<Vec<Json>>>,
    answers: Arc<Vec<PostAnswer>>,
    posts: Arc<AtomicUsize>,
    lists: Arc<Mutex<Vec<BTreeMap<String, String>>>>,
    base: String,
}

impl FakeGithub {
    async fn start(answers: &[PostAnswer]) -> FakeGithub {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gh = FakeGithub {
            issues: Arc::default(),
            answers: Arc::new(answers.to_vec()),
            posts: Arc::default(),
            lists: Arc::default(),
            base: format!("http://{}/api/v3", listener.local_addr().unwrap()),
        };
        let app = Router::new()
            .route(
                "/api/v3/repos/{owner}/{repo}/issues",
                get(gh_list).post(gh_create),
            )
            .with_state(gh.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        gh
    }

    fn add(&self, title: &str, body: &str, labels: &[&str]) -> u64 {
        let mut issues = self.issues.lock().unwrap();
        let number = issues.len() as u64 + 1;
        let labels: Vec<Json> = labels.iter().map(|l| json!({ "name": l })).collect();
        issues.push(json!({"number": number, "title": title, "body": body, "labels": labels, "state": "open"}));
        number
    }

    fn issues(&self) -> Vec<Json> {
        self.issues.lock().unwrap().clone()
    }
}

async fn gh_create(State(gh): State<FakeGithub>, AxumJson(req): AxumJson<Json>) -> Response {
    let n = gh.posts.fetch_add(1, Ordering::SeqCst);
    let answer = gh.answers[n.min(gh.answers.len() - 1)];
    let labels: Vec<&str> = req["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    let create = || {
        gh.add(
            req["title"].as_str().unwrap(),
            req["body"].as_str().unwrap(),
            &labels,
        )
    };
    match answer {
        PostAnswer::Created => {
            let number = create();
            (StatusCode::CREATED, AxumJson(json!({ "number": number }))).into_response()
        }
        PostAnswer::CreatedThenLost => {
            create();
            (StatusCode::BAD_GATEWAY, "upstream went away").into_response()
        }
        PostAnswer::RateLimited => (
            StatusCode::FORBIDDEN,
            [("x-ratelimit-remaining", "0")],
            "API rate limit exceeded",
        )
            .into_response(),
    }
}

async fn gh_list(
    State(gh): State<FakeGithub>,
    Query(q): Query<BTreeMap<String, String>>,
) -> AxumJson<Json> {
    gh.lists.lock().unwrap().push(q.clone());
    assert_eq!(q.get("state").map(String::as_str), Some("all"));
    assert_eq!(q.get("sort").map(String::as_str), Some("created"));
    assert_eq!(q.get("direction").map(String::as_str), Some("desc"));
    let wanted: Vec<&str> = q
        .get("labels")
        .map(|l| l.split(',').collect())
        .unwrap_or_default();
    let per_page: usize = q.get("per_page").map_or(30, |p| p.parse().unwrap());
    let page: usize = q.get("page").map_or(1, |p| p.parse().unwrap());
    let newest_first: Vec<Json> = gh
        .issues()
        .into_iter()
        .rev()
        .filter(|i| {
            let names: Vec<&str> = i["labels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["name"].as_str().unwrap())
                .collect();
            wanted.iter().all(|w| names.contains(w))
        })
        .skip((page - 1) * per_page)
        .take(per_page)
        .collect();
    AxumJson(Json::Array(newest_first))
}

fn github_sink(h: &mut Harness, gh: &FakeGithub) {
    std::env::set_var("TRIAGE_TEST_GITHUB_TOKEN", "ghp_test123");
    h.sink(
        "github",
        SinkConfig {
            base_url: gh.base.clone(),
            repo: Some("acme/agents".into()),
            token_env: "TRIAGE_TEST_GITHUB_TOKEN".into(),
            ..Default::default()
        },
    );
}

#[tokio::test]
async fn github_retry_after_a_lost_answer_finds_the_issue_and_opens_no_second() {
    let gh = FakeGithub::start(&[PostAnswer::CreatedThenLost, PostAnswer::Created]).await;
    let mut h = Harness::new().await;
    github_sink(&mut h, &gh);
    let sinks = h.sinks();
    let issue = h.fail(&sinks, T0).await;
    let d = h.dispatcher(sinks);

    assert_eq!(
        d.run_once().await.unwrap(),
        0,
        "GitHub created it but the answer was a 502"
    );
    assert_eq!(gh.issues().len(), 1);
    assert!(
        gh.lists.lock().unwrap().is_empty(),
        "the first attempt does not look"
    );
    // Many triage issues opened since: the first attempt's issue is now on the second page.
    for i in 0..150 {
        gh.add(
            &format!("other {i}"),
            &format!("body\n\n<!-- triage-loop:1{issue}:1:github -->\n"),
            &["triage-loop"],
        );
    }
    gh.add("unlabelled", "no marker", &[]);

    h.clock.advance(1_000);
    assert_eq!(d.run_once().await.unwrap(), 1);
    assert_eq!(gh.posts.load(Ordering::SeqCst), 1, "no second POST");
    let marked: Vec<Json> = gh
        .issues()
        .into_iter()
        .filter(|i| {
            i["body"]
                .as_str()
                .unwrap()
                .contains(&format!("<!-- triage-loop:{issue}:1:github -->"))
        })
        .collect();
    assert_eq!(marked.len(), 1, "exactly one GitHub issue for the dispatch");
    let lists = gh.lists.lock().unwrap().clone();
    assert_eq!(lists.len(), 2, "pages 1 and 2: {lists:?}");
    assert_eq!(lists[0]["labels"], "triage-loop");
    assert_eq!(lists[0]["per_page"], "100");
    assert_eq!(lists[1]["page"], "2");
    assert_eq!(h.state(issue).await, IssueState::Dispatched);
    let g = r#"triage_dispatch_total{sink="github",outcome="#;
    assert_eq!(h.metric(&format!(r#"{g}"retried"}}"#)), 1.0);
    assert_eq!(h.metric(&format!(r#"{g}"delivered"}}"#)), 1.0);
}

#[tokio::test]
async fn github_retry_after_a_rate_limit_finds_nothing_and_opens_the_issue() {
    let gh = FakeGithub::start(&[PostAnswer::RateLimited, PostAnswer::Created]).await;
    let mut h = Harness::new().await;
    github_sink(&mut h, &gh);
    let sinks = h.sinks();
    let issue = h.fail(&sinks, T0).await;
    let d = h.dispatcher(sinks);

    assert_eq!(d.run_once().await.unwrap(), 0);
    assert_eq!(
        h.metric(r#"triage_dispatch_total{sink="github",outcome="retried"}"#),
        1.0,
        "a rate-limited 403 is retried, not given up"
    );
    h.clock.advance(1_000);
    assert_eq!(d.run_once().await.unwrap(), 1);
    assert_eq!(gh.posts.load(Ordering::SeqCst), 2);
    assert_eq!(
        gh.lists.lock().unwrap().len(),
        1,
        "looked once, found nothing"
    );
    let issues = gh.issues();
    assert_eq!(issues.len(), 1);
    assert_eq!(issues[0]["labels"][0]["name"], "triage-loop");
    assert!(issues[0]["body"]
        .as_str()
        .unwrap()
        .ends_with(&format!("<!-- triage-loop:{issue}:1:github -->\n")));
    assert_eq!(h.state(issue).await, IssueState::Dispatched);
}

// ---------------------------------------------------------------------------------------------
// Ignored issues, older cycles, shutdown drain, odd answers
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_dispatch_of_an_ignored_issue_is_given_up_not_delivered() {
    let server = Server::start(&[200]).await;
    let mut h = Harness::new().await;
    h.sink("webhook", webhook(format!("{}/hook", server.base)));
    let sinks = h.sinks();
    let issue = h.fail(&sinks, T0).await;
    h.store
        .transition(issue, IssueState::Ignored, T0, "noise", None)
        .await
        .unwrap();
    let d = h.dispatcher(sinks);
    assert_eq!(d.run_once().await.unwrap(), 0);
    h.clock.advance(86_400_000);
    assert_eq!(d.run_once().await.unwrap(), 0);

    assert!(
        server.seen().is_empty(),
        "nothing sent for an ignored issue"
    );
    let rows = h.store.list_dispatches(issue).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].last_error.as_deref(), Some(IGNORED_REASON));
    assert_eq!(rows[0].next_attempt_at, GIVEN_UP);
    assert_eq!(rows[0].delivered_at, None);
    assert_eq!(h.store.pending_dispatches().await.unwrap(), 0);
    let w = r#"triage_dispatch_total{sink="webhook",outcome="#;
    assert_eq!(h.metric(&format!(r#"{w}"gave_up"}}"#)), 1.0);
    assert_eq!(h.metric(&format!(r#"{w}"delivered"}}"#)), 0.0);
    assert_eq!(h.state(issue).await, IssueState::Ignored);
}

#[tokio::test]
async fn a_late_delivery_of_an_older_cycle_leaves_a_regressed_issue_regressed() {
    let server = Server::start(&[500, 200]).await;
    let mut h = Harness::new().await;
    h.sink("webhook", webhook(format!("{}/hook", server.base)));
    let sinks = h.sinks();
    let issue = h.fail(&sinks, T0).await;
    let d = h.dispatcher(sinks);
    assert_eq!(
        d.run_once().await.unwrap(),
        0,
        "cycle 1's first attempt fails"
    );
    h.store
        .transition(issue, IssueState::Shipped, T0 + 100, "fix", Some("1.5.0"))
        .await
        .unwrap();
    h.store
        .transition(issue, IssueState::Regressed, T0 + 200, "recurred", None)
        .await
        .unwrap();
    h.clock.advance(1_000);
    assert_eq!(
        d.run_once().await.unwrap(),
        1,
        "cycle 1's retry is delivered"
    );

    let detail = h.store.get_issue(issue, 0).await.unwrap().unwrap();
    assert_eq!(detail.issue.cycle, 2);
    assert_eq!(
        detail.issue.state,
        IssueState::Regressed,
        "cycle 2 has not been dispatched"
    );
    assert!(!detail
        .transitions
        .iter()
        .any(|t| t.to_state == IssueState::Dispatched));
}

#[tokio::test]
async fn stopping_the_loop_delivers_what_is_due_first() {
    let server = Server::start(&[200]).await;
    let mut h = Harness::new().await;
    h.ft.dispatch.poll_interval = Duration::from_secs(3600);
    h.sink("webhook", webhook(format!("{}/hook", server.base)));
    let sinks = h.sinks();
    let issue = h.fail(&sinks, T0).await;
    // Stopped before it starts: no regular pass runs, only the last one at shutdown.
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(true);
    let task = h.dispatcher(sinks).spawn(stop_rx);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the loop stops")
        .unwrap();
    assert_eq!(server.seen().len(), 1);
    assert_eq!(h.state(issue).await, IssueState::Dispatched);
    assert_eq!(h.store.pending_dispatches().await.unwrap(), 0);
}

#[tokio::test]
async fn the_shutdown_drain_is_bounded_and_leaves_what_hangs_for_the_next_start() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = Router::new().route(
        "/hook",
        post(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                StatusCode::OK
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut h = Harness::new().await;
    let mut cfg = webhook(format!("http://{addr}/hook"));
    cfg.timeout = Duration::from_secs(600);
    h.sink("webhook", cfg);
    let sinks = h.sinks();
    let issue = h.fail(&sinks, T0).await;
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(true);
    let task = h.dispatcher(sinks).spawn(stop_rx);
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("the drain gives up on a hanging sink")
        .unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(h.state(issue).await, IssueState::Open);
    assert_eq!(
        h.store.pending_dispatches().await.unwrap(),
        1,
        "still pending: delivered after the next start"
    );
}

#[tokio::test]
async fn an_endless_error_body_is_read_only_in_part() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route(
        "/hook",
        post(|| async {
            let chunks = std::iter::repeat_with(|| {
                Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 64 * 1024]))
            });
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                axum::body::Body::from_stream(tokio_stream::iter(chunks)),
            )
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut h = Harness::new().await;
    let mut cfg = webhook(format!("http://{addr}/hook"));
    cfg.timeout = Duration::from_secs(600);
    h.sink("webhook", cfg);
    let sinks = h.sinks();
    let issue = h.fail(&sinks, T0).await;
    let d = h.dispatcher(sinks);
    tokio::time::timeout(Duration::from_secs(60), d.run_once())
        .await
        .expect("the error answer is not read to its (missing) end")
        .unwrap();
    let rows = h.store.list_dispatches(issue).await.unwrap();
    let error = rows[0].last_error.clone().unwrap();
    assert!(error.starts_with("webhook: HTTP 500"), "{error}");
    assert!(error.len() < 1_000, "cut: {} bytes", error.len());
    assert_eq!(
        h.metric(r#"triage_dispatch_total{sink="webhook",outcome="retried"}"#),
        1.0
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn str_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    match attr(attrs, key)? {
        Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn int_attr(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key)? {
        Value::IntValue(i) => Some(*i),
        _ => None,
    }
}
