//! What both receivers do with an export request: check it, run the trace processor, enqueue it
//! for export, and count the outcome. Protocol-specific framing stays in the receivers.

use std::sync::Arc;

use bytes::Bytes;

use crate::admin::metrics::Metrics;
use crate::classify::signals::SignalKind;
use crate::config::Signals;
use crate::failure::{self, Batch, FailureTap};
use crate::otlp::exporter::{Durable, ExportItem, ExportQueue};
use crate::otlp::wire::{count_nested, WireError};
use crate::otlp::SignalType;
use crate::processor::TraceProcessor;

/// Why a request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("malformed OTLP protobuf: {0}")]
    Malformed(#[from] WireError),
    #[error("export queue is full; retry later")]
    Full,
    #[error("no {0} pipeline is configured")]
    NoPipeline(&'static str),
}

/// An accepted request: what to report as `partial_success`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepted {
    pub rejected: u64,
    pub error_message: String,
}

/// Shared by the gRPC and HTTP receivers.
pub struct Ingest {
    pub processor: TraceProcessor,
    pub queue: ExportQueue,
    pub metrics: Arc<Metrics>,
    pub signals: Signals,
    /// The failure side, for signals in log records; `None` when it does not run.
    pub tap: Option<FailureTap>,
}

impl Ingest {
    /// Takes one encoded export request of `signal`; returns once it may be acknowledged (with
    /// the export queue on disk and `fsync`, once it is on stable storage).
    pub async fn accept(
        &self,
        protocol: &'static str,
        signal: SignalType,
        body: Bytes,
    ) -> Result<Accepted, IngestError> {
        let r = match self.accept_inner(signal, body) {
            Ok((accepted, durable)) => durable
                .wait()
                .await
                .map(|()| accepted)
                .map_err(|_| IngestError::Full),
            Err(e) => Err(e),
        };
        let outcome = match &r {
            Ok(_) => "accepted",
            Err(IngestError::Full) => "refused",
            Err(_) => "rejected",
        };
        self.metrics
            .receiver_request(protocol, signal.as_str(), outcome);
        r
    }

    fn accept_inner(
        &self,
        signal: SignalType,
        body: Bytes,
    ) -> Result<(Accepted, Durable), IngestError> {
        match signal {
            SignalType::Traces => self.traces(body),
            SignalType::Logs | SignalType::Metrics => self.pass_through(signal, body),
        }
    }

    fn traces(&self, body: Bytes) -> Result<(Accepted, Durable), IngestError> {
        if !self.signals.traces {
            return Err(IngestError::NoPipeline("traces"));
        }
        // Refuse before doing any work: under overload most requests are refused and retried.
        if !self.queue.has_room(body.len()) {
            return Err(IngestError::Full);
        }
        let p = match self.processor.process(body) {
            Ok(p) => p,
            Err(e) => {
                return Err(IngestError::Malformed(e));
            }
        };
        let spans = &self.metrics.spans;
        spans.rejected.inc_by(p.rejected);
        let mut durable = Durable::Now;
        if p.spans > 0 {
            let item = ExportItem {
                signal: SignalType::Traces,
                body: p.body,
                items: p.spans,
            };
            // A refused request was not accepted: the client retries it, so its spans are
            // counted with the request (`triage_receiver_requests_total{outcome="refused"}`).
            durable = self.queue.try_send(item).map_err(|_| IngestError::Full)?;
            spans.tagged.inc_by(p.tagged);
        }
        let accepted = Accepted {
            rejected: p.rejected,
            error_message: p.error_message,
        };
        Ok((accepted, durable))
    }

    fn pass_through(
        &self,
        signal: SignalType,
        body: Bytes,
    ) -> Result<(Accepted, Durable), IngestError> {
        let enabled = match signal {
            SignalType::Logs => self.signals.logs,
            _ => self.signals.metrics,
        };
        if !enabled {
            return Err(IngestError::NoPipeline(signal.as_str()));
        }
        if !self.queue.has_room(body.len()) {
            return Err(IngestError::Full);
        }
        // resource_* (1) → scope_* (2) → log_records / metrics (2)
        let items = count_nested(&body, &[1, 2, 2])?;
        let mut durable = Durable::Now;
        if items > 0 {
            let item = ExportItem {
                signal,
                body: body.clone().into(),
                items,
            };
            durable = self.queue.try_send(item).map_err(|_| IngestError::Full)?;
            if signal == SignalType::Logs {
                self.log_signals(&body);
            }
        }
        Ok((Accepted::default(), durable))
    }

    /// Hands failure signals in accepted log records to the failure side, when it runs.
    fn log_signals(&self, body: &[u8]) {
        let Some(tap) = self.tap.as_ref().filter(|_| self.processor.enabled()) else {
            return;
        };
        match failure::logs::signal_nodes(body, self.processor.classifier()) {
            Ok(nodes) if !nodes.is_empty() => {
                for _ in &nodes {
                    self.metrics.signal(SignalKind::Log);
                }
                tap.mark(nodes.iter().map(|n| &n.trace_id));
                tap.send(Batch {
                    nodes,
                    versions: Vec::new(),
                });
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "log signals not read; logs forwarded as they are")
            }
        }
    }
}
