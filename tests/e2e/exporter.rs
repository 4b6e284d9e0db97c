//! The exporter's other modes, and compressed gRPC in: triage-loop A (gRPC in, zstd/gzip) exports
//! OTLP/HTTP protobuf with gzip to triage-loop B, which exports OTLP/gRPC to the capture.

use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tonic::codec::CompressionEncoding;

use triage_loop::otlp::codec::RawCodec;
use triage_loop::synth::Fleet;

use crate::common::*;

async fn send_compressed(addr: std::net::SocketAddr, body: Vec<u8>, enc: CompressionEncoding) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel).send_compressed(enc);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    );
    grpc.unary::<Bytes, Bytes, _>(tonic::Request::new(Bytes::from(body)), path, RawCodec)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_exporter_with_gzip_and_compressed_grpc_receiver() {
    // B: HTTP receiver → gRPC exporter → capture.
    let (b, capture) = start_pair(TEST_RULES).await;
    // A: gRPC receiver → http/protobuf exporter (gzip) → B.
    let yaml = config_yaml(
        &format!("http://{}", b.http_addr.unwrap()),
        TEST_RULES,
        "    protocol: http/protobuf\n    compression: gzip\n    headers: {x-tenant: acme}\n",
    );
    let a = start_triage(&yaml).await;
    let mut fleet = Fleet::new(33, 20);
    let mut sent = Vec::new();
    for enc in [CompressionEncoding::Gzip, CompressionEncoding::Zstd] {
        let (req, _) = fleet.request(25);
        sent.extend(
            req.resource_spans
                .iter()
                .flat_map(|rs| rs.scope_spans.iter())
                .flat_map(|ss| ss.spans.iter().cloned()),
        );
        send_compressed(a.grpc_addr.unwrap(), req.encode_to_vec(), enc).await;
    }
    assert!(
        eventually(Duration::from_secs(10), || capture.span_count()
            == sent.len())
        .await
    );
    // A tagged the signal spans; B left them alone (already tagged upstream), so each carries
    // exactly one set of failure.* attributes; the rest arrive unchanged.
    for span in capture.spans() {
        let original = sent.iter().find(|s| s.span_id == span.span_id).unwrap();
        let (own, added) = split_failure_attrs(&span);
        assert_eq!(own, original.attributes);
        assert!(
            added.is_empty() || added.iter().filter(|kv| kv.key == "failure.class").count() == 1
        );
    }
    let tagged_a = metric_value(
        &a.metrics.render(),
        r#"triage_spans_total{outcome="tagged"}"#,
    )
    .unwrap();
    assert!(tagged_a > 0.0);
    assert_eq!(
        metric_value(
            &b.metrics.render(),
            r#"triage_spans_total{outcome="tagged"}"#
        ),
        Some(0.0)
    );
    assert!(
        eventually(Duration::from_secs(5), || {
            metric_value(
                &a.metrics.render(),
                r#"triage_export_requests_total{signal="traces",outcome="sent"}"#,
            ) == Some(2.0)
        })
        .await
    );
    a.shutdown().await;
    b.shutdown().await;
}
