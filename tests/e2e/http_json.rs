//! OTLP/HTTP with JSON exactly as the OTLP spec writes it (hex ids, int64 as strings or numbers,
//! lowerCamelCase, unknown fields ignored), gzip bodies, protobuf, and partial success.

use std::io::Write;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;

use crate::common::*;

pub const SPEC_JSON: &str = r#"{
  "resourceSpans": [{
    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "support-bot"}}]},
    "scopeSpans": [{
      "scope": {"name": "agents", "version": "1.0.0"},
      "spans": [
        {
          "traceId": "5b8efff798038103d269b633813fc60c",
          "spanId": "eee19b7ec3c1b174",
          "parentSpanId": "eee19b7ec3c1b173",
          "name": "execute_tool lookup_order",
          "kind": 3,
          "startTimeUnixNano": "1544712660000000000",
          "endTimeUnixNano": 1544712661000000000,
          "attributes": [
            {"key": "gen_ai.operation.name", "value": {"stringValue": "execute_tool"}},
            {"key": "error.type", "value": {"stringValue": "TimeoutError"}},
            {"key": "retries", "value": {"intValue": "3"}},
            {"key": "gen_ai.usage.input_tokens", "value": {"intValue": 812}},
            {"key": "temperature", "value": {"doubleValue": 0.2}},
            {"key": "streaming", "value": {"boolValue": false}}
          ],
          "status": {"code": 2, "message": "timed out after 30s"},
          "someFieldFromTheFuture": {"x": 1}
        },
        {
          "traceId": "5b8efff798038103d269b633813fc60c",
          "spanId": "eee19b7ec3c1b173",
          "name": "invoke_agent support-agent",
          "kind": 2,
          "startTimeUnixNano": "1544712659000000000",
          "endTimeUnixNano": "1544712662000000000",
          "attributes": [{"key": "gen_ai.agent.name", "value": {"stringValue": "support-agent"}}],
          "events": [{"timeUnixNano": "1544712661500000000", "name": "note", "attributes": []}]
        }
      ]
    }]
  }]
}"#;

async fn post(
    addr: std::net::SocketAddr,
    path: &str,
    content_type: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .header("content-type", content_type)
        .body(body);
    if let Some(e) = encoding {
        req = req.header("content-encoding", e);
    }
    req.send().await.unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_json_is_accepted_classified_and_forwarded() {
    let (triage, capture) = start_pair(TEST_RULES).await;
    let http = triage.http_addr.unwrap();
    let resp = post(
        http,
        "/v1/traces",
        "application/json",
        None,
        SPEC_JSON.into(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert!(
        body.get("partialSuccess").is_none_or(|p| p.is_null()),
        "{body}"
    );

    assert!(eventually(Duration::from_secs(5), || capture.span_count() == 2).await);
    let spans = capture.spans();
    let tool = spans
        .iter()
        .find(|s| s.name.starts_with("execute_tool"))
        .unwrap();
    assert_eq!(hex(&tool.trace_id), "5b8efff798038103d269b633813fc60c");
    assert_eq!(hex(&tool.span_id), "eee19b7ec3c1b174");
    assert_eq!(hex(&tool.parent_span_id), "eee19b7ec3c1b173");
    assert_eq!(tool.start_time_unix_nano, 1_544_712_660_000_000_000);
    assert_eq!(tool.end_time_unix_nano, 1_544_712_661_000_000_000);
    assert_eq!(tool.kind, 3);
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let get = |k: &str| triage_loop::otlp::attributes::get(&tool.attributes, k).cloned();
    assert_eq!(get("retries"), Some(Value::IntValue(3)));
    assert_eq!(get("gen_ai.usage.input_tokens"), Some(Value::IntValue(812)));
    assert_eq!(get("temperature"), Some(Value::DoubleValue(0.2)));
    assert_eq!(get("streaming"), Some(Value::BoolValue(false)));
    assert_eq!(attr(&tool.attributes, "failure.class"), Some("logic_tool"));
    let agent = spans
        .iter()
        .find(|s| s.name.starts_with("invoke_agent"))
        .unwrap();
    assert_eq!(attr(&agent.attributes, "failure.class"), None);
    assert_eq!(agent.events.len(), 1);
    triage.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_json_and_protobuf_bodies_are_accepted() {
    let (triage, capture) = start_pair(TEST_RULES).await;
    let http = triage.http_addr.unwrap();
    let resp = post(
        http,
        "/v1/traces",
        "application/json",
        Some("gzip"),
        gzip(SPEC_JSON.as_bytes()),
    )
    .await;
    assert_eq!(resp.status(), 200);

    let req: opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest =
        serde_json::from_str(SPEC_JSON).unwrap();
    let resp = post(
        http,
        "/v1/traces",
        "application/x-protobuf",
        Some("gzip"),
        gzip(&req.encode_to_vec()),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-protobuf");
    let decoded = ExportTraceServiceResponse::decode(resp.bytes().await.unwrap()).unwrap();
    assert_eq!(decoded.partial_success, None);
    assert!(eventually(Duration::from_secs(5), || capture.span_count() == 4).await);
    triage.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_with_missing_ids_are_rejected_as_partial_success() {
    let (triage, capture) = start_pair(TEST_RULES).await;
    let http = triage.http_addr.unwrap();
    let body = SPEC_JSON.replacen(r#""spanId": "eee19b7ec3c1b173""#, r#""spanId": """#, 1);
    let resp = post(
        http,
        "/v1/traces",
        "application/json",
        None,
        body.into_bytes(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let rejected = &v["partialSuccess"]["rejectedSpans"];
    assert!(rejected == 1 || rejected == "1", "{v}");
    assert!(v["partialSuccess"]["errorMessage"]
        .as_str()
        .unwrap()
        .contains("invalid ids"));
    assert!(eventually(Duration::from_secs(5), || capture.span_count() == 1).await);
    let m = scrape(&triage).await;
    assert_eq!(
        metric_value(&m, r#"triage_spans_total{outcome="rejected"}"#),
        Some(1.0)
    );
    triage.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_metrics_pass_through_unchanged() {
    let (triage, capture) = start_pair("").await;
    let http = triage.http_addr.unwrap();
    let logs = r#"{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"support-bot"}}]},
      "scopeLogs":[{"logRecords":[{"timeUnixNano":"1544712660300000000","severityNumber":17,"severityText":"ERROR",
      "body":{"stringValue":"tool failed"},"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174"}]}]}]}"#;
    let resp = post(http, "/v1/logs", "application/json", None, logs.into()).await;
    assert_eq!(resp.status(), 200);
    let metrics = r#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"gen_ai.client.token.usage","unit":"{token}",
      "sum":{"dataPoints":[{"asInt":"812","timeUnixNano":"1544712660300000000"}],"aggregationTemporality":2,"isMonotonic":true}}]}]}]}"#;
    let resp = post(
        http,
        "/v1/metrics",
        "application/json",
        None,
        metrics.into(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(
        eventually(Duration::from_secs(5), || !capture
            .logs
            .lock()
            .unwrap()
            .is_empty()
            && !capture.metrics.lock().unwrap().is_empty())
        .await
    );
    let want_logs: opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest =
        serde_json::from_str(logs).unwrap();
    assert_eq!(capture.logs.lock().unwrap()[0], want_logs);
    let want_metrics: opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest =
        serde_json::from_str(metrics).unwrap();
    assert_eq!(capture.metrics.lock().unwrap()[0], want_metrics);
    triage.shutdown().await;
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
