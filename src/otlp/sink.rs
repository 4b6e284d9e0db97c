//! A plain OTLP/gRPC downstream that records what arrives: the demo's printing downstream and the
//! tests' capture. It decodes with the generated types, as any OTLP backend would.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::net::TcpListener;

/// Called with each trace request as it arrives.
pub type TraceHook = Arc<dyn Fn(&ExportTraceServiceRequest) + Send + Sync>;

/// Records every request (traces only when no hook is set).
#[derive(Clone, Default)]
pub struct RecordingSink {
    pub traces: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    pub logs: Arc<Mutex<Vec<ExportLogsServiceRequest>>>,
    pub metrics: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
    hook: Option<TraceHook>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RecordingSink {
    /// A sink that hands trace requests to `hook` instead of keeping them.
    pub fn with_hook(hook: TraceHook) -> Self {
        RecordingSink {
            hook: Some(hook),
            ..Default::default()
        }
    }

    /// Serves TraceService, LogsService and MetricsService on an ephemeral loopback port.
    pub async fn serve(&self) -> std::io::Result<SocketAddr> {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?;
        self.serve_until(l, std::future::pending());
        Ok(addr)
    }

    /// Serves on `l` until `stop` resolves, then closes its connections (a downstream outage).
    pub fn serve_until(
        &self,
        l: TcpListener,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<Result<(), tonic::transport::Error>> {
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(
                    TraceServiceServer::new(self.clone()).max_decoding_message_size(64 << 20),
                )
                .add_service(LogsServiceServer::new(self.clone()))
                .add_service(MetricsServiceServer::new(self.clone()))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(l),
                    stop,
                ),
        )
    }

    /// Every span recorded, in arrival order.
    pub fn spans(&self) -> Vec<Span> {
        locked(&self.traces)
            .iter()
            .flat_map(|r| r.resource_spans.iter())
            .flat_map(|rs| rs.scope_spans.iter())
            .flat_map(|ss| ss.spans.iter().cloned())
            .collect()
    }

    pub fn span_count(&self) -> usize {
        locked(&self.traces)
            .iter()
            .flat_map(|r| r.resource_spans.iter())
            .flat_map(|rs| rs.scope_spans.iter())
            .map(|ss| ss.spans.len())
            .sum()
    }
}

#[tonic::async_trait]
impl TraceService for RecordingSink {
    async fn export(
        &self,
        r: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let req = r.into_inner();
        match &self.hook {
            Some(hook) => hook(&req),
            None => locked(&self.traces).push(req),
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for RecordingSink {
    async fn export(
        &self,
        r: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        locked(&self.logs).push(r.into_inner());
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for RecordingSink {
    async fn export(
        &self,
        r: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        locked(&self.metrics).push(r.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}
