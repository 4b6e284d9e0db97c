//! The official OpenTelemetry Rust SDK as the client, over OTLP/gRPC and OTLP/HTTP: every span
//! arrives, signal spans carry the right class, every other span is unchanged field for field
//! (compared with the same spans exported straight to a second downstream).

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer, TracerProvider as _,
};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;

use crate::common::*;

/// Which receiver the SDK talks to.
#[derive(Clone, Copy)]
enum Via {
    Grpc,
    Http,
}

/// Emits one agent run with a tool timeout, a failing brand-tone evaluation and clean spans.
fn emit_agent_run(provider: &SdkTracerProvider, clean_spans: usize) {
    let tracer = provider.tracer("opentelemetry.instrumentation.agents");
    let root = tracer
        .span_builder("invoke_agent support-agent")
        .with_kind(SpanKind::Server)
        .with_attributes(vec![
            KeyValue::new("gen_ai.operation.name", "invoke_agent"),
            KeyValue::new("gen_ai.agent.name", "support-agent"),
        ])
        .start(&tracer);
    let cx = opentelemetry::Context::current_with_span(root);
    for i in 0..clean_spans {
        let mut s = tracer.start_with_context("chat gpt-4o", &cx);
        s.set_attribute(KeyValue::new("gen_ai.operation.name", "chat"));
        s.set_attribute(KeyValue::new("gen_ai.request.model", "gpt-4o"));
        s.set_attribute(KeyValue::new("gen_ai.usage.input_tokens", 700 + i as i64));
        s.set_attribute(KeyValue::new(
            "gen_ai.response.finish_reasons",
            opentelemetry::Value::Array(opentelemetry::Array::String(vec!["stop".into()])),
        ));
        s.add_event(
            "gen_ai.content.prompt",
            vec![KeyValue::new("gen_ai.prompt", "x".repeat(1024))],
        );
        s.end();
    }
    let mut tool = tracer.start_with_context("execute_tool lookup_order", &cx);
    tool.set_attribute(KeyValue::new("gen_ai.operation.name", "execute_tool"));
    tool.set_attribute(KeyValue::new("gen_ai.tool.name", "lookup_order"));
    tool.set_attribute(KeyValue::new("error.type", "TimeoutError"));
    tool.add_event(
        "exception",
        vec![
            KeyValue::new("exception.type", "httpx.ReadTimeout"),
            KeyValue::new("exception.message", "timed out after 30s: GET /orders/4711"),
        ],
    );
    tool.set_status(Status::error("timed out after 30s"));
    tool.end();
    let mut answer = tracer.start_with_context("chat gpt-4o", &cx);
    answer.set_attribute(KeyValue::new("gen_ai.operation.name", "chat"));
    answer.add_event(
        "gen_ai.evaluation.result",
        vec![
            KeyValue::new("gen_ai.evaluation.name", "brand_tone"),
            KeyValue::new("gen_ai.evaluation.score.label", "off_brand"),
            KeyValue::new("gen_ai.evaluation.score.value", 0.2),
        ],
    );
    answer.end();
    cx.span().end();
}

fn provider(
    via: Via,
    triage: &triage_loop::service::Running,
    reference: std::net::SocketAddr,
) -> SdkTracerProvider {
    let to_triage = match via {
        Via::Grpc => SpanExporter::builder()
            .with_tonic()
            .with_endpoint(format!("http://{}", triage.grpc_addr.unwrap()))
            .build()
            .unwrap(),
        Via::Http => SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("http://{}/v1/traces", triage.http_addr.unwrap()))
            .build()
            .unwrap(),
    };
    let direct = SpanExporter::builder()
        .with_tonic()
        .with_endpoint(format!("http://{reference}"))
        .build()
        .unwrap();
    SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name("support-bot").build())
        .with_batch_exporter(to_triage)
        .with_batch_exporter(direct)
        .build()
}

async fn run_case(via: Via) {
    let (triage, through) = start_pair(TEST_RULES).await;
    let (reference_addr, reference) = start_downstream().await;
    let provider = provider(via, &triage, reference_addr);
    let clean = 40;
    let p = provider.clone();
    tokio::task::spawn_blocking(move || {
        for _ in 0..3 {
            emit_agent_run(&p, clean);
        }
        p.shutdown().unwrap();
    })
    .await
    .unwrap();
    let expected = 3 * (clean + 3);
    assert!(
        eventually(Duration::from_secs(10), || through.span_count() >= expected
            && reference.span_count() >= expected)
        .await,
        "spans through triage-loop: {}, direct: {}, expected {expected}",
        through.span_count(),
        reference.span_count()
    );
    let want: HashMap<Vec<u8>, _> = reference
        .spans()
        .into_iter()
        .map(|s| (s.span_id.clone(), s))
        .collect();
    let got = through.spans();
    assert_eq!(got.len(), expected, "no span lost or duplicated");
    let mut classes = HashMap::new();
    for span in &got {
        let reference = &want[&span.span_id];
        let (own, added) = split_failure_attrs(span);
        if added.is_empty() {
            assert_eq!(span, reference, "a span without a signal arrives unchanged");
            continue;
        }
        let mut stripped = span.clone();
        stripped.attributes = own;
        assert_eq!(
            &stripped, reference,
            "only failure.* attributes are added, at the end"
        );
        let keys: Vec<&str> = added.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "failure.class",
                "failure.class.source",
                "failure.confidence",
                "failure.rule",
                "failure.fingerprint",
                "failure.remediation"
            ]
        );
        classes.insert(
            span.name.clone(),
            (
                attr(&added, "failure.class").unwrap().to_string(),
                attr(&added, "failure.rule").unwrap().to_string(),
            ),
        );
        assert_eq!(attr(&added, "failure.class.source"), Some("rule"));
        assert_eq!(attr(&added, "failure.fingerprint").unwrap().len(), 16);
    }
    assert_eq!(
        classes["execute_tool lookup_order"],
        ("logic_tool".into(), "tool-timeout".into())
    );
    assert_eq!(
        classes["chat gpt-4o"],
        ("tone_brand".into(), "tone-eval".into())
    );
    // Same failure in three runs → same fingerprint.
    let fps: std::collections::HashSet<_> = got
        .iter()
        .filter(|s| s.name == "execute_tool lookup_order")
        .map(|s| {
            attr(&s.attributes, "failure.fingerprint")
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(fps.len(), 1);
    let metrics = scrape(&triage).await;
    assert_eq!(
        metric_value(&metrics, r#"triage_spans_total{outcome="tagged"}"#),
        Some(6.0)
    );
    assert!(
        eventually(Duration::from_secs(5), || metric_value(
            &triage.metrics.render(),
            r#"triage_spans_total{outcome="forwarded"}"#
        ) == Some(expected as f64))
        .await
    );
    triage.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_over_grpc_spans_arrive_tagged_or_unchanged() {
    run_case(Via::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_over_http_spans_arrive_tagged_or_unchanged() {
    run_case(Via::Http).await;
}
