//! The failure side end to end: encoded OTLP requests through `Ingest` (trace processor and the
//! logs path) and the tap into `failure::start`, driven by a manual clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, SpanKind};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use tokio::sync::{mpsc, watch};

use triage_loop::admin::metrics::Metrics;
use triage_loop::clock::{ManualClock, SharedClock};
use triage_loop::config::{self, FailureTriage};
use triage_loop::failure::{self, hex, FailureOutput, FailureTap};
use triage_loop::otlp::exporter;
use triage_loop::otlp::ingest::Ingest;
use triage_loop::otlp::sink::RecordingSink;
use triage_loop::otlp::SignalType;
use triage_loop::processor::TraceProcessor;
use triage_loop::remediation::store::FailureRecord;

const T0_MS: i64 = 1_764_000_000_000;

fn s(key: &str, v: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn resource(service: &str, version: &str) -> Resource {
    Resource {
        attributes: vec![s("service.name", service), s("service.version", version)],
        ..Default::default()
    }
}

fn request(service: &str, version: &str, spans: Vec<Span>) -> Bytes {
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource(service, version)),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            schema_url: String::new(),
        }],
    };
    Bytes::from(req.encode_to_vec())
}

/// One agent run: agent (root) → chat → tool, with ids derived from `n`.
struct Run {
    trace_id: [u8; 16],
    agent: Span,
    chat: Span,
    tool: Span,
}

fn ids(n: u8) -> ([u8; 16], [u8; 8], [u8; 8], [u8; 8]) {
    let mut t = [0u8; 16];
    t[0] = 0xa0;
    t[15] = n;
    (
        t,
        [n, 1, 0, 0, 0, 0, 0, 1],
        [n, 2, 0, 0, 0, 0, 0, 2],
        [n, 3, 0, 0, 0, 0, 0, 3],
    )
}

fn span(trace: [u8; 16], id: [u8; 8], parent: Option<[u8; 8]>, name: &str, start: u64) -> Span {
    Span {
        trace_id: trace.to_vec(),
        span_id: id.to_vec(),
        parent_span_id: parent.map(|p| p.to_vec()).unwrap_or_default(),
        name: name.into(),
        kind: SpanKind::Internal as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start + 1_000_000,
        ..Default::default()
    }
}

fn error(span: &mut Span, message: &str) {
    span.status = Some(Status {
        message: message.into(),
        code: StatusCode::Error as i32,
    });
}

/// A run; `tool_error` = Some((exception type, message)) makes the tool fail with an exception
/// and the agent fail with a status error (the effect).
fn run(n: u8, tool_error: Option<(&str, &str)>) -> Run {
    let (t, a, c, tl) = ids(n);
    let base = 1_764_000_000_000_000_000 + u64::from(n) * 1_000_000_000;
    let mut agent = span(t, a, None, "invoke_agent support", base);
    agent.attributes.push(s("gen_ai.agent.name", "support"));
    let chat = span(t, c, Some(a), "chat gpt-4o", base + 10);
    let mut tool = span(t, tl, Some(c), "execute_tool lookup_order", base + 20);
    tool.attributes.push(s("gen_ai.tool.name", "lookup_order"));
    if let Some((ty, msg)) = tool_error {
        error(&mut tool, msg);
        tool.events.push(Event {
            name: "exception".into(),
            time_unix_nano: base + 30,
            attributes: vec![s("exception.type", ty), s("exception.message", msg)],
            dropped_attributes_count: 0,
        });
        error(&mut agent, "agent run failed");
    }
    Run {
        trace_id: t,
        agent,
        chat,
        tool,
    }
}

struct Harness {
    ingest: Ingest,
    clock: Arc<ManualClock>,
    metrics: Arc<Metrics>,
    tap: FailureTap,
    out: mpsc::Receiver<FailureOutput>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    sink: RecordingSink,
}

async fn harness() -> Harness {
    let sink = RecordingSink::default();
    let addr = sink.serve().await.unwrap();
    let mut loaded = config::load_default();
    loaded.config.exporters.otlp.endpoint = addr.to_string();
    let metrics = Arc::new(Metrics::new());
    let clock = ManualClock::new(T0_MS);
    let shared: SharedClock = clock.clone();
    let (stop, stop_rx) = watch::channel(false);
    let cfg = FailureTriage::default();
    let (tap, out, task) = failure::start(&cfg, shared, metrics.clone(), stop_rx);
    let (queue, _exporter) =
        exporter::start(&loaded.config.exporters.otlp, None, metrics.clone()).unwrap();
    let processor = TraceProcessor::new(
        loaded.take_classifier(),
        metrics.clone(),
        true,
        Some(tap.clone()),
    );
    let ingest = Ingest {
        processor,
        queue,
        metrics: metrics.clone(),
        signals: loaded.signals,
        tap: Some(tap.clone()),
    };
    Harness {
        ingest,
        clock,
        metrics,
        tap,
        out,
        stop,
        task,
        sink,
    }
}

impl Harness {
    async fn traces(&self, body: Bytes) {
        self.ingest
            .accept("grpc", SignalType::Traces, body)
            .await
            .expect("trace request accepted");
    }

    /// Waits until the assembler has taken every batch and holds `traces` traces.
    async fn settle(&self, traces: i64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.tap.queued() > 0 || self.metrics.assembler_traces.get() != traces {
            assert!(
                Instant::now() < deadline,
                "assembler did not settle at {traces} traces (holds {})",
                self.metrics.assembler_traces.get()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The batch last taken may still be in hand; let the task finish it.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    /// Receives outputs until `failures` failures came, or fails after a while.
    async fn failures(
        &mut self,
        failures: usize,
        versions: &mut Vec<(String, String)>,
    ) -> Vec<FailureRecord> {
        let mut got = Vec::new();
        while got.len() < failures {
            let o = tokio::time::timeout(Duration::from_secs(10), self.out.recv())
                .await
                .expect("failures within 10s")
                .expect("output open");
            match o {
                FailureOutput::Failure(f) => got.push(*f),
                FailureOutput::VersionSeen {
                    service, version, ..
                } => versions.push((service, version)),
            }
        }
        got
    }
}

#[tokio::test]
async fn one_failure_per_trace_with_the_right_root_cause() {
    let mut h = harness().await;
    let a = run(
        1,
        Some((
            "TimeoutError",
            "order 12345 timed out after 30s (req 9f1c2a)",
        )),
    );
    let b = run(
        2,
        Some(("TimeoutError", "order 98 timed out after 31s (req 07be33)")),
    );
    let c = run(3, Some(("KeyError", "missing field 'sku'")));
    let ok = run(4, None);
    let runs = [&a, &b, &c, &ok];

    // SDKs export children first: tools, then chats, then the agent spans, in separate requests.
    h.traces(request(
        "support-agent",
        "2.1.0",
        runs.iter().map(|r| r.tool.clone()).collect(),
    ))
    .await;
    h.traces(request(
        "support-agent",
        "2.1.0",
        runs.iter().map(|r| r.chat.clone()).collect(),
    ))
    .await;
    h.settle(3).await;
    h.traces(request(
        "support-agent",
        "2.2.0",
        runs.iter().map(|r| r.agent.clone()).collect(),
    ))
    .await;
    h.settle(3).await;
    // Every span is forwarded, whatever the failure side does.
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.sink.span_count() < 12 {
        assert!(Instant::now() < deadline, "spans not forwarded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Past the root grace (2s by default), the three failed runs are decided.
    h.clock.advance(2_500);
    let mut versions = Vec::new();
    let failures = h.failures(3, &mut versions).await;
    let by_trace: HashMap<String, &FailureRecord> =
        failures.iter().map(|f| (f.trace_id.clone(), f)).collect();
    assert_eq!(by_trace.len(), 3);
    for r in [&a, &b, &c] {
        let f = by_trace[&hex(&r.trace_id)];
        assert_eq!(f.root_span_id, hex(&r.tool.span_id), "{f:?}");
        // The tool span has no `gen_ai.agent.name`: the agent is its agent ancestor's.
        assert_eq!(f.agent, "support");
        assert_eq!(f.service, "support-agent");
        assert_eq!(f.service_version.as_deref(), Some("2.1.0"));
        assert_eq!(f.observed_at, T0_MS);
        assert_eq!(f.signal.value()["depth"], 2);
        assert_eq!(f.signal.value()["signal_spans"], 2);
        assert_eq!(f.signal.value()["operation"], "lookup_order");
        f.validate().unwrap();
    }
    let fp = |r: &Run| by_trace[&hex(&r.trace_id)].fingerprint.clone();
    assert_eq!(fp(&a), fp(&b), "ids and numbers differ only");
    assert_ne!(fp(&a), fp(&c));

    // Shut down: nothing more (the ok run never reached the failure side), output closes.
    h.stop.send(true).unwrap();
    while let Some(o) = h.out.recv().await {
        match o {
            FailureOutput::Failure(f) => panic!("unexpected failure {f:?}"),
            FailureOutput::VersionSeen {
                service, version, ..
            } => versions.push((service, version)),
        }
    }
    h.task.await.unwrap();
    versions.sort();
    assert_eq!(
        versions,
        vec![
            ("support-agent".to_string(), "2.1.0".to_string()),
            ("support-agent".to_string(), "2.2.0".to_string()),
        ]
    );
    assert_eq!(h.metrics.assembler_traces.get(), 0);
    let m = h.metrics.render();
    assert!(
        m.contains(r#"triage_traces_decided_total{reason="root_ended"} 3"#),
        "{m}"
    );
}

#[tokio::test]
async fn an_exception_log_record_is_a_signal_on_its_span() {
    let mut h = harness().await;
    // No span carries a signal; the tool's exception is only in a log record.
    let r = run(9, None);
    let log = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource("support-agent", "3.0.0")),
            scope_logs: vec![ScopeLogs {
                log_records: vec![
                    LogRecord {
                        trace_id: r.trace_id.to_vec(),
                        span_id: r.tool.span_id.clone(),
                        severity_number: 17,
                        event_name: "exception".into(),
                        attributes: vec![
                            s("exception.type", "ConnectionError"),
                            s("exception.message", "db 10.0.0.7:5432 refused"),
                            s("gen_ai.tool.name", "lookup_order"),
                        ],
                        ..Default::default()
                    },
                    // Not correlated (no ids): ignored.
                    LogRecord {
                        severity_number: 21,
                        body: Some(AnyValue {
                            value: Some(Value::StringValue("fatal".into())),
                        }),
                        ..Default::default()
                    },
                    // Correlated but only INFO: ignored.
                    LogRecord {
                        trace_id: r.trace_id.to_vec(),
                        span_id: r.chat.span_id.clone(),
                        severity_number: 9,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            schema_url: String::new(),
        }],
    };
    h.ingest
        .accept("grpc", SignalType::Logs, Bytes::from(log.encode_to_vec()))
        .await
        .unwrap();
    h.settle(1).await;
    // The spans come later; the trace is marked, so they go to the failure side as skeletons.
    h.traces(request(
        "support-agent",
        "3.0.0",
        vec![r.tool.clone(), r.chat.clone(), r.agent.clone()],
    ))
    .await;
    h.settle(1).await;
    h.clock.advance(2_500);
    let mut versions = Vec::new();
    let f = h.failures(1, &mut versions).await.remove(0);
    assert_eq!(f.trace_id, hex(&r.trace_id));
    assert_eq!(f.root_span_id, hex(&r.tool.span_id));
    assert_eq!(f.signal.value()["kind"], "log");
    assert_eq!(f.signal.value()["name"], "ConnectionError");
    assert_eq!(f.signal.value()["depth"], 2);
    assert_eq!(f.service, "support-agent");
    assert!(h
        .metrics
        .render()
        .contains(r#"triage_signals_total{kind="log"} 1"#));
    // The logs were forwarded unchanged.
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.sink.logs.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "logs not forwarded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.sink.logs.lock().unwrap()[0], log);
}

#[tokio::test]
async fn requests_without_signals_send_only_new_versions() {
    let mut h = harness().await;
    let mut fleet = triage_loop::synth::Fleet::new(5, 0);
    for _ in 0..5 {
        let (req, _) = fleet.request(30);
        h.traces(Bytes::from(req.encode_to_vec())).await;
    }
    h.settle(0).await;
    h.stop.send(true).unwrap();
    let mut versions = Vec::new();
    while let Some(o) = h.out.recv().await {
        match o {
            FailureOutput::Failure(f) => panic!("unexpected failure {f:?}"),
            FailureOutput::VersionSeen {
                service, version, ..
            } => versions.push((service, version)),
        }
    }
    assert!(!versions.is_empty());
    let unique: std::collections::HashSet<_> = versions.iter().collect();
    assert_eq!(unique.len(), versions.len(), "each pair once: {versions:?}");
    assert!(!h.tap.has_marked());
    // Every drop reason is there at 0 (they exist from the start), none above.
    let rendered = h.metrics.render();
    let dropped: Vec<&str> = rendered
        .lines()
        .filter(|l| l.starts_with("triage_failure_side_dropped_total{"))
        .collect();
    assert!(!dropped.is_empty());
    assert!(dropped.iter().all(|l| l.ends_with(" 0")), "{dropped:?}");
}

#[tokio::test]
async fn dropping_every_tap_decides_what_is_held_and_closes_the_output() {
    let metrics = Arc::new(Metrics::new());
    let clock: SharedClock = ManualClock::new(T0_MS);
    let (_stop, stop_rx) = watch::channel(false);
    let (tap, mut out, task) =
        failure::start(&FailureTriage::default(), clock, metrics.clone(), stop_rx);
    let p = TraceProcessor::new(
        config::load_default().take_classifier(),
        metrics.clone(),
        true,
        Some(tap),
    );
    let r = run(5, Some(("TimeoutError", "slow")));
    p.process(request("svc", "1", vec![r.tool.clone(), r.chat.clone()]))
        .unwrap();
    drop(p);
    let mut failures = Vec::new();
    while let Some(o) = tokio::time::timeout(Duration::from_secs(10), out.recv())
        .await
        .expect("output closes")
    {
        if let FailureOutput::Failure(f) = o {
            failures.push(f);
        }
    }
    task.await.unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].root_span_id, hex(&r.tool.span_id));
    assert_eq!(failures[0].signal.value()["depth"], 1);
    assert!(metrics
        .render()
        .contains(r#"triage_traces_decided_total{reason="shutdown"} 1"#));
}

#[tokio::test]
async fn a_signal_after_the_decision_is_dropped_as_late_not_a_second_failure() {
    let mut h = harness().await;
    let r = run(6, Some(("TimeoutError", "slow")));
    h.traces(request(
        "support-agent",
        "2.1.0",
        vec![r.agent.clone(), r.chat.clone()],
    ))
    .await;
    h.settle(1).await;
    // Another service exports the tool span 1.5s after the root (grace 2s): it joins.
    h.clock.advance(1_500);
    h.traces(request("tools", "1.0.0", vec![r.tool.clone()]))
        .await;
    h.settle(1).await;
    h.clock.advance(1_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.metrics.assembler_traces.get(), 1, "extended by the tool");
    h.clock.advance(1_000);
    let mut versions = Vec::new();
    let f = h.failures(1, &mut versions).await.remove(0);
    assert_eq!(f.root_span_id, hex(&r.tool.span_id));
    assert_eq!(f.signal.value()["signal_spans"], 2);

    // A signal span of the same trace after the decision: dropped and counted.
    let mut late = span(
        r.trace_id,
        [6, 9, 0, 0, 0, 0, 0, 9],
        Some(ids(6).1),
        "late",
        1,
    );
    error(&mut late, "late failure");
    h.traces(request("tools", "1.0.0", vec![late])).await;
    h.settle(0).await;
    h.clock.advance(20_000);
    h.stop.send(true).unwrap();
    while let Some(o) = h.out.recv().await {
        if let FailureOutput::Failure(f) = o {
            panic!("second failure {f:?}");
        }
    }
    h.task.await.unwrap();
    let m = h.metrics.render();
    assert!(
        m.contains(r#"triage_failure_side_dropped_total{reason="late"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn the_channel_is_capped_in_nodes_and_a_closed_output_is_counted() {
    let metrics = Arc::new(Metrics::new());
    let clock: SharedClock = ManualClock::new(T0_MS);
    let (stop, stop_rx) = watch::channel(false);
    let cfg = FailureTriage {
        max_nodes: 2,
        ..FailureTriage::default()
    };
    let (tap, out, task) = failure::start(&cfg, clock, metrics.clone(), stop_rx);
    let p = TraceProcessor::new(
        config::load_default().take_classifier(),
        metrics.clone(),
        true,
        Some(tap.clone()),
    );
    // Three nodes in one request: over the 2 nodes allowed in flight.
    let a = run(7, Some(("TimeoutError", "slow")));
    p.process(request("svc", "1", vec![a.tool, a.chat, a.agent]))
        .unwrap();
    assert!(metrics
        .render()
        .contains(r#"triage_failure_side_dropped_total{reason="queue_full"} 3"#));
    // Two fit; their failure cannot be handed on once the output is closed.
    drop(out);
    let b = run(8, Some(("TimeoutError", "slow")));
    p.process(request("svc", "1", vec![b.tool, b.chat]))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while tap.queued_nodes() > 0 || metrics.assembler_traces.get() != 1 {
        assert!(Instant::now() < deadline, "batch not taken");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(true).unwrap();
    task.await.unwrap();
    let m = metrics.render();
    assert!(
        m.contains(r#"triage_failure_side_dropped_total{reason="closed"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn longer_runs_fail_once_each_with_the_class_and_root_cause_of_the_minimal_run() {
    for steps in [1, 3] {
        let mut h = harness().await;
        let mut fleet = triage_loop::synth::Fleet::new(17, 100).with_steps(steps);
        let (req, traces) = fleet.request(24);
        h.traces(Bytes::from(req.encode_to_vec())).await;
        h.settle(24).await;
        h.clock.advance(2_500);
        let mut versions = Vec::new();
        let failures = h.failures(24, &mut versions).await;
        let by_trace: HashMap<String, &FailureRecord> =
            failures.iter().map(|f| (f.trace_id.clone(), f)).collect();
        assert_eq!(by_trace.len(), 24, "{steps} steps: one failure per run");
        for t in &traces {
            let f = by_trace[&hex(&t.trace_id)];
            assert_eq!(
                Some(f.class.as_str()),
                t.scenario.expected_class(),
                "{steps} steps, {:?}: {f:?}",
                t.scenario
            );
            // The root cause is a span of the last step: never an HTTP client span, never an
            // earlier step (those all succeed).
            let root = t
                .spans
                .iter()
                .find(|s| hex(&s.span_id) == f.root_span_id)
                .expect("root cause is a span of the run");
            assert!(root.name != "POST" && root.name != "GET", "{f:?}");
            assert!(
                root.status.is_some() || !root.events.is_empty() || root.name.starts_with("chat")
            );
        }
        h.stop.send(true).unwrap();
    }
}
