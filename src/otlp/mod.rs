//! OTLP in and out: receivers (gRPC, HTTP), the exporter, and wire-format reading.

pub mod attributes;
pub mod codec;
pub mod disk_queue;
pub mod exporter;
pub mod ingest;
pub mod payload;
pub mod receiver_grpc;
pub mod receiver_http;
pub mod sink;
pub mod span_scratch;
pub mod splice;
pub mod wire;

/// The three OTLP signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignalType {
    Traces,
    Logs,
    Metrics,
}

impl SignalType {
    pub fn as_str(self) -> &'static str {
        match self {
            SignalType::Traces => "traces",
            SignalType::Logs => "logs",
            SignalType::Metrics => "metrics",
        }
    }

    /// The OTLP/HTTP path.
    pub fn http_path(self) -> &'static str {
        match self {
            SignalType::Traces => "/v1/traces",
            SignalType::Logs => "/v1/logs",
            SignalType::Metrics => "/v1/metrics",
        }
    }

    /// The OTLP/gRPC method path.
    pub fn grpc_path(self) -> &'static str {
        match self {
            SignalType::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            SignalType::Logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
            SignalType::Metrics => {
                "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
            }
        }
    }
}
