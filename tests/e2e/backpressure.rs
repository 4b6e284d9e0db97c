//! Back-pressure and accounting: with the downstream gone, the bounded queue fills, receivers
//! answer RESOURCE_EXHAUSTED / 429 + Retry-After, and every accepted span ends up counted.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use tonic::Code;

use triage_loop::synth::Fleet;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_refuses_with_retryable_status_and_nothing_is_lost_silently() {
    let dead = DeadAddress::new();
    let down = dead.addr.clone();
    let yaml = config_yaml(
        &down,
        "",
        "    sending_queue: {num_consumers: 1, queue_size: 3, queue_size_mib: 1}\n",
    )
    .replace("max_elapsed_time: 2s", "max_elapsed_time: 1s");
    let triage = start_triage(&yaml).await;
    let mut client = TraceServiceClient::connect(format!("http://{}", triage.grpc_addr.unwrap()))
        .await
        .unwrap();
    let mut fleet = Fleet::new(21, 5);
    let (mut accepted_spans, mut refused) = (0u64, 0u64);
    for _ in 0..20 {
        let (req, traces) = fleet.request(10);
        let spans: u64 = traces.iter().map(|t| t.spans.len() as u64).sum();
        match client.export(req).await {
            Ok(_) => accepted_spans += spans,
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                refused += 1;
            }
        }
    }
    assert!(
        refused > 0,
        "a 3-request queue with no downstream must refuse"
    );
    assert!(accepted_spans > 0);

    // Over HTTP: 429 with Retry-After.
    let body = fleet.request(10).0.encode_to_vec();
    let resp = reqwest::Client::new()
        .post(format!("http://{}/v1/traces", triage.http_addr.unwrap()))
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));

    // The exporter gives up after max_elapsed_time: every accepted span is counted dropped.
    let ok = eventually(Duration::from_secs(20), || {
        let m = triage.metrics.render();
        metric_value(&m, r#"triage_spans_total{outcome="dropped"}"#) == Some(accepted_spans as f64)
    })
    .await;
    let m = triage.metrics.render();
    assert!(ok, "dropped != accepted ({accepted_spans}):\n{m}");
    assert_eq!(
        metric_value(&m, r#"triage_spans_total{outcome="forwarded"}"#),
        Some(0.0)
    );
    // Refused requests were never accepted: they are counted as requests, not as spans.
    assert_eq!(
        metric_value(&m, r#"triage_spans_total{outcome="rejected"}"#),
        Some(0.0)
    );
    assert!(
        metric_value(
            &m,
            r#"triage_receiver_requests_total{protocol="grpc",signal="traces",outcome="refused"}"#
        )
        .unwrap()
            >= refused as f64
    );
    // Remediation events (OTLP logs) of the failures go the same way, a little later.
    assert!(
        eventually(Duration::from_secs(10), || metric_value(
            &triage.metrics.render(),
            "triage_export_queue_requests"
        ) == Some(0.0))
        .await
    );
    triage.shutdown().await;
}
