//! Bad input gets a clear error status and never a panic, and the process keeps serving.

use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{status::StatusCode, Status};
use prost::Message;
use tonic::Code;

use triage_loop::otlp::codec::RawCodec;
use triage_loop::otlp::receiver_http::RpcStatus;
use triage_loop::synth::Fleet;

use crate::common::*;
use crate::http_json::{gzip, SPEC_JSON};

/// Sends raw bytes as a TraceService/Export call.
async fn grpc_raw(addr: std::net::SocketAddr, body: Vec<u8>) -> Result<Bytes, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(64 << 20);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    );
    grpc.unary::<Bytes, Bytes, _>(tonic::Request::new(Bytes::from(body)), path, RawCodec)
        .await
        .map(|r| r.into_inner())
}

async fn http_post(
    addr: std::net::SocketAddr,
    ct: &str,
    enc: Option<&str>,
    body: Vec<u8>,
) -> (u16, String, Vec<u8>) {
    let mut req = reqwest::Client::new()
        .post(format!("http://{addr}/v1/traces"))
        .header("content-type", ct)
        .body(body);
    if let Some(e) = enc {
        req = req.header("content-encoding", e);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, ct, resp.bytes().await.unwrap().to_vec())
}

fn valid_request() -> Vec<u8> {
    Fleet::new(9, 50).request(20).0.encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_clear_errors_and_the_process_keeps_serving() {
    let (triage, capture) = start_pair(TEST_RULES).await;
    let grpc = triage.grpc_addr.unwrap();
    let http = triage.http_addr.unwrap();
    let valid = valid_request();
    let valid_spans = triage_loop::otlp::wire::count_nested(&valid, &[1, 2, 2]).unwrap() as usize;

    // Truncated protobuf, over gRPC and HTTP.
    let truncated = valid[..valid.len() / 2].to_vec();
    let e = grpc_raw(grpc, truncated.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("malformed OTLP protobuf"),
        "{}",
        e.message()
    );
    let (status, ct, body) = http_post(http, "application/x-protobuf", None, truncated).await;
    assert_eq!((status, ct.as_str()), (400, "application/x-protobuf"));
    let st = RpcStatus::decode(&body[..]).unwrap();
    assert_eq!(st.code, Code::InvalidArgument as i32);
    assert!(st.message.contains("malformed OTLP protobuf"));

    // Garbage that is not protobuf at all.
    let e = grpc_raw(grpc, vec![0xff; 64]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Invalid JSON, and JSON that is not OTLP.
    let (status, ct, body) = http_post(
        http,
        "application/json",
        None,
        b"{\"resourceSpans\": [".to_vec(),
    )
    .await;
    assert_eq!((status, ct.as_str()), (400, "application/json"));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        v["message"].as_str().unwrap().contains("invalid OTLP/JSON"),
        "{v}"
    );
    let (status, _, _) = http_post(
        http,
        "application/json",
        None,
        br#"{"resourceSpans": 7}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 400);
    // JSON with invalid UTF-8.
    let mut bad_utf8 = SPEC_JSON.as_bytes().to_vec();
    let at = bad_utf8.windows(7).position(|w| w == b"support").unwrap();
    bad_utf8[at] = 0xc3;
    bad_utf8[at + 1] = 0x28;
    let (status, _, _) = http_post(http, "application/json", None, bad_utf8).await;
    assert_eq!(status, 400);

    // Wrong content type, unsupported encoding, a corrupt gzip body.
    let (status, _, _) = http_post(http, "text/plain", None, valid.clone()).await;
    assert_eq!(status, 415);
    let (status, _, _) = http_post(http, "application/x-protobuf", Some("br"), valid.clone()).await;
    assert_eq!(status, 415);
    let (status, _, _) =
        http_post(http, "application/x-protobuf", Some("gzip"), valid.clone()).await;
    assert_eq!(status, 400);

    // Bodies over the limit (4 MiB in the test config): plain, and a gzip bomb.
    let (status, _, _) = http_post(http, "application/x-protobuf", None, vec![0u8; 5 << 20]).await;
    assert_eq!(status, 413);
    let (status, _, _) = http_post(
        http,
        "application/x-protobuf",
        Some("gzip"),
        gzip(&vec![0u8; 50 << 20]),
    )
    .await;
    assert_eq!(status, 413);
    // Over gRPC's 16 MiB default.
    let e = grpc_raw(grpc, vec![0x0a; 17 << 20]).await.unwrap_err();
    assert!(
        matches!(
            e.code(),
            Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument
        ),
        "{e:?}"
    );

    // Still serving: a valid request goes through.
    let resp = grpc_raw(grpc, valid.clone()).await;
    assert!(resp.is_ok(), "{resp:?}");
    let (status, _, _) = http_post(http, "application/x-protobuf", None, valid).await;
    assert_eq!(status, 200);
    assert!(
        eventually(Duration::from_secs(5), || capture.span_count()
            == 2 * valid_spans)
        .await
    );

    let m = scrape(&triage).await;
    assert!(
        metric_value(
            &m,
            r#"triage_receiver_requests_total{protocol="grpc",signal="traces",outcome="rejected"}"#
        )
        .unwrap()
            >= 2.0
    );
    triage.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_span_with_100k_attributes_and_invalid_utf8_spans() {
    let (triage, capture) = start_pair(TEST_RULES).await;
    let grpc = triage.grpc_addr.unwrap();
    let mut fleet = Fleet::new(13, 0);
    let (mut req, _) = fleet.request(1);
    let spans = &mut req.resource_spans[0].scope_spans[0].spans;
    // A failing span with 100 000 attributes: scanned, decoded, classified and tagged.
    let big = &mut spans[1];
    let own_attributes = big.attributes.len();
    big.attributes.extend((0..100_000).map(|i| KeyValue {
        key: format!("attr.{i}"),
        value: Some(AnyValue {
            value: Some(Value::IntValue(i)),
        }),
        ..Default::default()
    }));
    big.status = Some(Status {
        message: "timed out".into(),
        code: StatusCode::Error as i32,
    });
    big.attributes.push(KeyValue {
        key: "error.type".into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue("TimeoutError".into())),
        }),
        ..Default::default()
    });
    let big_name = big.name.clone();
    let marker = "zz-utf8-marker";
    spans[2].name = marker.into();
    let mut bytes = req.encode_to_vec();
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker.as_bytes())
        .unwrap();
    bytes[at] = 0xff;
    let resp = grpc_raw(grpc, bytes).await.unwrap();
    let resp =
        opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse::decode(resp)
            .unwrap();
    let ps = resp.partial_success.unwrap();
    assert_eq!(ps.rejected_spans, 1);
    assert!(ps.error_message.contains("UTF-8"), "{}", ps.error_message);
    assert!(eventually(Duration::from_secs(10), || capture.span_count() == 3).await);
    let got = capture.spans();
    let tagged = got.iter().find(|s| s.name == big_name).unwrap();
    assert_eq!(tagged.attributes.len(), own_attributes + 100_000 + 1 + 6);
    assert_eq!(
        attr(&tagged.attributes, "failure.class"),
        Some("logic_tool")
    );
    let _ = ExportTraceServiceRequest::default();
    triage.shutdown().await;
}
