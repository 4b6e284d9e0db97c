//! The OTLP/gRPC receiver: TraceService, LogsService and MetricsService `Export`, taking message
//! bytes undecoded (gzip and zstd accepted) and answering with partial success or back-pressure.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use prost::Message;
use tonic::codec::{CompressionEncoding, EnabledCompressionEncodings};
use tonic::server::NamedService;
use tonic::{Code, Status};

use crate::otlp::codec::RawCodec;
use crate::otlp::ingest::{Accepted, Ingest, IngestError};
use crate::otlp::SignalType;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// One OTLP gRPC service (the signal decides which), served with the raw codec.
#[derive(Clone)]
pub struct OtlpGrpcService<const S: u8> {
    ingest: Arc<Ingest>,
    max_message_size: usize,
}

/// TraceService.
pub type TraceService = OtlpGrpcService<0>;
/// LogsService.
pub type LogsService = OtlpGrpcService<1>;
/// MetricsService.
pub type MetricsService = OtlpGrpcService<2>;

impl<const S: u8> OtlpGrpcService<S> {
    pub fn new(ingest: Arc<Ingest>, max_message_size: usize) -> Self {
        OtlpGrpcService {
            ingest,
            max_message_size,
        }
    }

    const SIGNAL: SignalType = match S {
        0 => SignalType::Traces,
        1 => SignalType::Logs,
        _ => SignalType::Metrics,
    };
}

impl NamedService for OtlpGrpcService<0> {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}
impl NamedService for OtlpGrpcService<1> {
    const NAME: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
}
impl NamedService for OtlpGrpcService<2> {
    const NAME: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
}

/// The unary `Export` handler.
struct Export {
    ingest: Arc<Ingest>,
    signal: SignalType,
}

impl tonic::server::UnaryService<Bytes> for Export {
    type Response = Bytes;
    type Future = BoxFuture<Result<tonic::Response<Bytes>, Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let ingest = self.ingest.clone();
        let signal = self.signal;
        Box::pin(async move {
            let body = request.into_inner();
            match ingest.accept("grpc", signal, body).await {
                Ok(accepted) => Ok(tonic::Response::new(response(signal, &accepted))),
                Err(e) => Err(status_of(&e)),
            }
        })
    }
}

/// The gRPC status for a refused request (OTLP: RESOURCE_EXHAUSTED is retryable).
pub fn status_of(e: &IngestError) -> Status {
    match e {
        IngestError::Malformed(_) => Status::new(Code::InvalidArgument, e.to_string()),
        IngestError::Full => Status::new(Code::ResourceExhausted, e.to_string()),
        IngestError::NoPipeline(_) => Status::new(Code::Unimplemented, e.to_string()),
    }
}

/// The encoded `Export*ServiceResponse`, with `partial_success` when spans were rejected.
fn response(signal: SignalType, a: &Accepted) -> Bytes {
    let bytes = match signal {
        SignalType::Traces => ExportTraceServiceResponse {
            partial_success: (a.rejected > 0).then(|| ExportTracePartialSuccess {
                rejected_spans: a.rejected as i64,
                error_message: a.error_message.clone(),
            }),
        }
        .encode_to_vec(),
        SignalType::Logs => ExportLogsServiceResponse::default().encode_to_vec(),
        SignalType::Metrics => ExportMetricsServiceResponse::default().encode_to_vec(),
    };
    Bytes::from(bytes)
}

impl<const S: u8, B> tower::Service<http::Request<B>> for OtlpGrpcService<S>
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let signal = Self::SIGNAL;
        if req.uri().path() != signal.grpc_path() {
            return Box::pin(
                async move { Ok(Status::unimplemented("unknown method").into_http()) },
            );
        }
        let export = Export {
            ingest: self.ingest.clone(),
            signal,
        };
        let max = self.max_message_size;
        Box::pin(async move { Ok(raw_unary(export, req, max).await) })
    }
}

/// Runs one unary gRPC call with message bytes undecoded: gzip and zstd accepted, messages over
/// `max_message_size` bytes (after decompression) refused.
pub async fn raw_unary<S, B>(
    handler: S,
    req: http::Request<B>,
    max_message_size: usize,
) -> http::Response<tonic::body::Body>
where
    S: tonic::server::UnaryService<Bytes, Response = Bytes>,
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    let mut accept = EnabledCompressionEncodings::default();
    accept.enable(CompressionEncoding::Gzip);
    accept.enable(CompressionEncoding::Zstd);
    let mut grpc = tonic::server::Grpc::new(RawCodec)
        .apply_compression_config(accept, EnabledCompressionEncodings::default())
        .apply_max_message_size_config(Some(max_message_size), None);
    grpc.unary(handler, req).await
}

/// Serves the three OTLP gRPC services on `listener` (over TLS when `tls` is set) until
/// `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    ingest: Arc<Ingest>,
    max_message_size: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!(%addr, tls = tls.is_some(), "OTLP/gRPC receiver listening");
    let router = tonic::transport::Server::builder()
        .add_service(TraceService::new(ingest.clone(), max_message_size))
        .add_service(LogsService::new(ingest.clone(), max_message_size))
        .add_service(MetricsService::new(ingest, max_message_size));
    match tls {
        Some(config) => {
            let incoming = crate::tls::TlsListener::new(listener, config)?.into_stream();
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await?;
        }
        None => {
            // Without TCP_NODELAY a connection with one request in flight (the usual SDK
            // pattern) stalls on Nagle's algorithm for ~40 ms per request.
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await?;
        }
    }
    Ok(())
}
