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

/// A TCP proxy to `upstream` that resets the first connection on which more than `cut_after`
/// bytes come from the client, at that point and without passing on the rest: the downstream
/// vanishes under a call that is on the wire. Everything else passes through. Returns its
/// address and the count of connections it has cut.
async fn cut_once_proxy(
    upstream: std::net::SocketAddr,
    cut_after: usize,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cuts = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = cuts.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let cuts = counted.clone();
            tokio::spawn(async move {
                let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                // Linger 0: closing is a reset, as when the downstream's host goes away.
                let _ = client.set_zero_linger();
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_up, mut to_up) = up.into_split();
                let back = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_up, &mut to_client).await;
                });
                let mut buf = vec![0u8; 16 * 1024];
                let mut seen = 0;
                loop {
                    let n = match from_client.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    seen += n;
                    if seen > cut_after
                        && cuts
                            .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
                            .is_ok()
                    {
                        back.abort();
                        return;
                    }
                    if to_up.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = to_up.shutdown().await;
                let _ = back.await;
            });
        }
    });
    (addr, cuts)
}

/// Sends one request through a triage-loop whose exporter (`exporter_extra`) reaches
/// `downstream` through a proxy that cuts the first connection under the call, and checks that
/// every span reaches `capture` and none is counted dropped.
async fn cut_call_is_sent_again(
    downstream: std::net::SocketAddr,
    scheme: &str,
    exporter_extra: &str,
    capture: &Capture,
) {
    let mut fleet = Fleet::new(71, 20);
    let (req, _) = fleet.request(25);
    let body = req.encode_to_vec();
    // Cut once the request's bytes are half in: the call is on the wire, with no answer.
    let (proxy, cuts) = cut_once_proxy(downstream, body.len() / 2).await;
    let yaml = config_yaml(&format!("{scheme}{proxy}"), TEST_RULES, exporter_extra);
    let running = start_triage(&yaml).await;
    let sent: std::collections::HashSet<Vec<u8>> = req
        .resource_spans
        .iter()
        .flat_map(|rs| rs.scope_spans.iter())
        .flat_map(|ss| ss.spans.iter().map(|s| s.span_id.clone()))
        .collect();
    send_compressed(running.grpc_addr.unwrap(), body, CompressionEncoding::Gzip).await;
    assert!(
        eventually(Duration::from_secs(10), || capture.span_count()
            >= sent.len())
        .await,
        "{} of {} spans delivered",
        capture.span_count(),
        sent.len()
    );
    assert_eq!(
        cuts.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the call was cut"
    );
    let delivered: std::collections::HashSet<Vec<u8>> =
        capture.spans().into_iter().map(|s| s.span_id).collect();
    assert_eq!(delivered, sent);
    let text = scrape(&running).await;
    assert_eq!(
        metric_value(&text, r#"triage_spans_total{outcome="dropped"}"#),
        Some(0.0)
    );
    let retried = r#"triage_export_requests_total{signal="traces",outcome="retried"}"#;
    assert!(metric_value(&text, retried).unwrap_or(0.0) >= 1.0);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_call_whose_connection_is_cut_under_it_is_sent_again() {
    let (sink, capture) = start_downstream().await;
    cut_call_is_sent_again(sink, "", "", &capture).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_call_whose_connection_is_cut_under_it_is_sent_again() {
    // The downstream: a second triage-loop's OTLP/HTTP receiver, exporting to the capture.
    let (b, capture) = start_pair(TEST_RULES).await;
    let extra = "    protocol: http/protobuf\n";
    cut_call_is_sent_again(b.http_addr.unwrap(), "http://", extra, &capture).await;
    b.shutdown().await;
}
