//! The `otlp_log` sink: one OTLP log event `triage.remediation` per dispatch, into the logs export queue.
//!
//! Best effort once enqueued: see `OtlpLogSink`.

use async_trait::async_trait;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use super::{Sink, SinkError};
use crate::otlp::attributes::string_kv;
use crate::otlp::exporter::{ExportItem, ExportQueue};
use crate::otlp::SignalType;
use crate::remediation::render::Remediation;

/// The event name of remediation log records.
pub const EVENT_NAME: &str = "triage.remediation";

/// Sends remediation events downstream as OTLP logs.
///
/// **Best effort after enqueue:** `deliver` succeeds once the event is in the in-memory export
/// queue (a full queue is a retryable failure). The exporter then sends it with its
/// `retry_on_failure` settings; an exporter that gives up, or a crash (kill -9) before the
/// export, loses the event while its outbox row stays delivered. The export queue has no
/// per-item acknowledgement to wait for. Use `jsonl`, `webhook`, `github` or `slack`, which are
/// acknowledged by their destination, for dispatches that must not be lost.
pub struct OtlpLogSink {
    queue: ExportQueue,
}

impl OtlpLogSink {
    pub fn new(queue: ExportQueue) -> Self {
        OtlpLogSink { queue }
    }
}

#[async_trait]
impl Sink for OtlpLogSink {
    async fn deliver(&self, r: &Remediation) -> Result<(), SinkError> {
        let body = log_request(r).encode_to_vec();
        let retry = |e| SinkError::Retryable(format!("otlp_log: {e}"));
        // Delivered once in the export queue (with the queue on disk and fsync, once flushed).
        self.queue
            .try_send(ExportItem {
                signal: SignalType::Logs,
                body: body.into(),
                items: 1,
            })
            .map_err(retry)?
            .wait()
            .await
            .map_err(retry)
    }
}

/// The export request carrying `r` as one log record: the root cause's trace and span id (so
/// Grafana and Jaeger link to the trace), severity WARN, the title as body, resource
/// `service.name=triage-loop`.
pub fn log_request(r: &Remediation) -> ExportLogsServiceRequest {
    let time = u64::try_from(r.dispatched_at)
        .unwrap_or(0)
        .saturating_mul(1_000_000);
    let mut attributes = vec![
        string_kv("failure.class", r.class.as_str()),
        string_kv("failure.fingerprint", r.fingerprint.as_str()),
        string_kv("remediation.path", r.remediation.as_str()),
        string_kv("remediation.owner", r.owner.as_str()),
        int_kv("triage.issue.id", r.issue_id),
        string_kv("triage.issue.state", r.state.as_str()),
        int_kv("triage.issue.cycle", r.cycle),
        string_kv(
            "triage.dispatch.idempotency_key",
            r.idempotency_key.as_str(),
        ),
    ];
    if let Some(url) = &r.trace_url {
        attributes.push(string_kv("triage.trace.url", url.as_str()));
    }
    let record = LogRecord {
        time_unix_nano: time,
        observed_time_unix_nano: time,
        severity_number: SeverityNumber::Warn as i32,
        severity_text: "WARN".into(),
        body: Some(AnyValue {
            value: Some(Value::StringValue(r.title.clone())),
        }),
        attributes,
        trace_id: hex_bytes(&r.trace_id, 16),
        span_id: hex_bytes(&r.span_id, 8),
        event_name: EVENT_NAME.into(),
        ..Default::default()
    };
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![string_kv("service.name", "triage-loop")],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "triage-loop.dispatch".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                log_records: vec![record],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn int_kv(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

/// `len` bytes from hex digits, or empty (an absent id in OTLP) when they are not exactly that.
fn hex_bytes(hex: &str, len: usize) -> Vec<u8> {
    if hex.len() != len * 2 {
        return Vec::new();
    }
    let digits = hex.as_bytes();
    let mut out = Vec::with_capacity(len);
    for pair in digits.chunks_exact(2) {
        let (Some(hi), Some(lo)) = (nibble(pair[0]), nibble(pair[1])) else {
            return Vec::new();
        };
        out.push(hi << 4 | lo);
    }
    out
}

fn nibble(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::hex_bytes;

    #[test]
    fn hex_ids() {
        assert_eq!(hex_bytes("0aFf", 2), vec![0x0a, 0xff]);
        assert!(hex_bytes("0aF", 2).is_empty());
        assert!(hex_bytes("zz00", 2).is_empty());
    }
}
