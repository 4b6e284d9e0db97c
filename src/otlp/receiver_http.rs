//! The OTLP/HTTP receiver: POST /v1/traces, /v1/logs, /v1/metrics in protobuf or JSON (as the
//! OTLP spec writes it), gzip bodies, answers in the request's encoding, 429 + Retry-After under
//! back-pressure.

use std::io::Read;
use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;

use crate::otlp::ingest::{Accepted, Ingest, IngestError};
use crate::otlp::SignalType;

/// Seconds a client is asked to wait when the export queue is full.
const RETRY_AFTER_SECS: &str = "1";

#[derive(Clone)]
struct HttpState {
    ingest: Arc<Ingest>,
    max_body: usize,
}

/// Body encodings OTLP/HTTP allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

/// `google.rpc.Status`, the body of OTLP/HTTP error responses.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// The receiver's routes.
pub fn router(ingest: Arc<Ingest>, max_body: usize) -> Router {
    let state = HttpState { ingest, max_body };
    Router::new()
        .route("/v1/traces", post(traces))
        .route("/v1/logs", post(logs))
        .route("/v1/metrics", post(metrics))
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

async fn traces(State(s): State<HttpState>, headers: HeaderMap, body: Body) -> Response {
    handle(&s, SignalType::Traces, &headers, body).await
}

async fn logs(State(s): State<HttpState>, headers: HeaderMap, body: Body) -> Response {
    handle(&s, SignalType::Logs, &headers, body).await
}

async fn metrics(State(s): State<HttpState>, headers: HeaderMap, body: Body) -> Response {
    handle(&s, SignalType::Metrics, &headers, body).await
}

/// A refused request: HTTP status, gRPC code for the body, message.
struct Refusal {
    status: StatusCode,
    code: tonic::Code,
    message: String,
    /// Already counted by `Ingest`.
    counted: bool,
}

impl Refusal {
    fn new(status: StatusCode, code: tonic::Code, message: impl Into<String>) -> Self {
        Refusal {
            status,
            code,
            message: message.into(),
            counted: false,
        }
    }

    fn from_ingest(e: IngestError) -> Self {
        let (status, code) = match e {
            IngestError::Full => (
                StatusCode::TOO_MANY_REQUESTS,
                tonic::Code::ResourceExhausted,
            ),
            IngestError::Malformed(_) => (StatusCode::BAD_REQUEST, tonic::Code::InvalidArgument),
            IngestError::NoPipeline(_) => (StatusCode::NOT_FOUND, tonic::Code::Unimplemented),
        };
        Refusal {
            counted: true,
            ..Refusal::new(status, code, e.to_string())
        }
    }
}

async fn handle(s: &HttpState, signal: SignalType, headers: &HeaderMap, body: Body) -> Response {
    let encoding = match content_encoding(headers) {
        Ok(e) => e,
        Err(r) => return refuse(s, signal, Encoding::Json, r),
    };
    match receive(s, signal, encoding, headers, body).await {
        Ok(accepted) => ok_response(signal, encoding, &accepted),
        Err(r) => refuse(s, signal, encoding, r),
    }
}

async fn receive(
    s: &HttpState,
    signal: SignalType,
    encoding: Encoding,
    headers: &HeaderMap,
    body: Body,
) -> Result<Accepted, Refusal> {
    let raw = to_bytes(body, s.max_body).await.map_err(|e| {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            tonic::Code::InvalidArgument,
            format!("request body over {} bytes or unreadable: {e}", s.max_body),
        )
    })?;
    let raw = decompress(headers, raw, s.max_body)?;
    let proto = match encoding {
        Encoding::Protobuf => raw,
        Encoding::Json => json_to_protobuf(signal, &raw)?,
    };
    s.ingest
        .accept("http", signal, proto)
        .await
        .map_err(Refusal::from_ingest)
}

fn content_encoding(headers: &HeaderMap) -> Result<Encoding, Refusal> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/x-protobuf" | "application/protobuf" => Ok(Encoding::Protobuf),
        "application/json" => Ok(Encoding::Json),
        _ => Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            tonic::Code::InvalidArgument,
            format!("unsupported content type {ct:?}; expected application/x-protobuf or application/json"),
        )),
    }
}

/// Undoes `Content-Encoding: gzip` (or deflate), refusing output over `max` bytes.
fn decompress(headers: &HeaderMap, raw: Bytes, max: usize) -> Result<Bytes, Refusal> {
    let enc = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let reader: Box<dyn Read> = match enc.as_str() {
        "" | "identity" => return Ok(raw),
        "gzip" | "x-gzip" => Box::new(flate2::read::GzDecoder::new(&raw[..])),
        "deflate" => Box::new(flate2::read::ZlibDecoder::new(&raw[..])),
        other => {
            return Err(Refusal::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                tonic::Code::InvalidArgument,
                format!("unsupported content encoding {other:?}; expected gzip or none"),
            ))
        }
    };
    let mut out = Vec::with_capacity(raw.len() * 4);
    let n = reader
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                tonic::Code::InvalidArgument,
                format!("cannot decompress {enc} body: {e}"),
            )
        })?;
    if n > max {
        return Err(Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            tonic::Code::InvalidArgument,
            format!("decompressed body over {max} bytes"),
        ));
    }
    Ok(Bytes::from(out))
}

/// Parses OTLP/JSON into the protobuf the hot path reads.
fn json_to_protobuf(signal: SignalType, raw: &[u8]) -> Result<Bytes, Refusal> {
    decode_json(signal, raw).map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            tonic::Code::InvalidArgument,
            format!("invalid OTLP/JSON: {e}"),
        )
    })
}

/// Decodes an OTLP/JSON export request of `signal` and encodes it as the protobuf the hot path
/// reads: the receiver's JSON path, public so the fuzz targets (`fuzz/`) run exactly this code.
pub fn decode_json(signal: SignalType, raw: &[u8]) -> Result<Bytes, serde_json::Error> {
    let bytes = match signal {
        SignalType::Traces => {
            serde_json::from_slice::<ExportTraceServiceRequest>(raw)?.encode_to_vec()
        }
        SignalType::Logs => {
            serde_json::from_slice::<ExportLogsServiceRequest>(raw)?.encode_to_vec()
        }
        SignalType::Metrics => {
            serde_json::from_slice::<ExportMetricsServiceRequest>(raw)?.encode_to_vec()
        }
    };
    Ok(Bytes::from(bytes))
}

fn ok_response(signal: SignalType, encoding: Encoding, a: &Accepted) -> Response {
    let trace_resp = || ExportTraceServiceResponse {
        partial_success: (a.rejected > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: a.rejected as i64,
            error_message: a.error_message.clone(),
        }),
    };
    let body: Vec<u8> = match (signal, encoding) {
        (SignalType::Traces, Encoding::Protobuf) => trace_resp().encode_to_vec(),
        (SignalType::Traces, Encoding::Json) => {
            serde_json::to_vec(&trace_resp()).unwrap_or_default()
        }
        (SignalType::Logs, Encoding::Protobuf) => {
            ExportLogsServiceResponse::default().encode_to_vec()
        }
        (SignalType::Logs, Encoding::Json) => b"{}".to_vec(),
        (SignalType::Metrics, Encoding::Protobuf) => {
            ExportMetricsServiceResponse::default().encode_to_vec()
        }
        (SignalType::Metrics, Encoding::Json) => b"{}".to_vec(),
    };
    ([(header::CONTENT_TYPE, encoding.content_type())], body).into_response()
}

fn refuse(s: &HttpState, signal: SignalType, encoding: Encoding, r: Refusal) -> Response {
    if !r.counted {
        s.ingest
            .metrics
            .receiver_request("http", signal.as_str(), "rejected");
    }
    let body = match encoding {
        Encoding::Protobuf => RpcStatus {
            code: r.code as i32,
            message: r.message,
        }
        .encode_to_vec(),
        Encoding::Json => serde_json::json!({"code": r.code as i32, "message": r.message})
            .to_string()
            .into_bytes(),
    };
    let mut resp = (
        r.status,
        [(header::CONTENT_TYPE, encoding.content_type())],
        body,
    )
        .into_response();
    if r.status == StatusCode::TOO_MANY_REQUESTS {
        resp.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECS),
        );
    }
    resp
}
