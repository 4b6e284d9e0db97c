//! The failure side: a small copy of each signal span and the tree around it goes from the hot
//! path (`FailureTap`) through a bounded channel to the trace assembler, which turns each failed
//! trace into one `FailureRecord` attributed to its root cause.

pub mod assembler;
pub mod fingerprint;
pub mod logs;
pub mod tap;

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::admin::metrics::Metrics;
use crate::classify::signals::SignalKind;
use crate::classify::{agent_name, operation_name, Decision, Source};
use crate::clock::SharedClock;
use crate::config::FailureTriage;
use crate::otlp::attributes::get_str;
use crate::remediation::store::FailureRecord;
use assembler::{Assembler, AssemblerConfig, Decided};
pub use tap::FailureTap;

/// Signal messages longer than this (in chars) are cut before they go to the failure side.
pub const MAX_MESSAGE_CHARS: usize = 1024;
/// Capacity of the assembler's output channel.
pub const OUTPUT_CAPACITY: usize = 1024;
/// How often (real time) the assembler looks for traces that are due.
const TICK: Duration = Duration::from_millis(100);

/// What the failure side hands on.
#[derive(Debug, Clone, PartialEq)]
pub enum FailureOutput {
    /// One failed trace, attributed to its root cause.
    Failure(FailureRecord),
    /// A (service, version) pair seen for the first time (by this instance).
    VersionSeen {
        service: String,
        version: String,
        at_ms: i64,
    },
}

/// A span's failure signal and class, as the hot path decided them.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalNode {
    pub class: String,
    pub source: Source,
    pub confidence: f64,
    pub rule: Option<String>,
    pub fingerprint: String,
    pub remediation: String,
    /// `gen_ai.agent.name`, else the resource's `service.name`.
    pub agent: String,
    /// Tool name, else span name.
    pub operation: String,
    pub span_name: String,
    /// The primary (most specific) signal.
    pub kind: SignalKind,
    pub name: String,
    /// Cut to `MAX_MESSAGE_CHARS`.
    pub message: String,
    pub label: Option<String>,
    pub service: Option<String>,
    pub service_version: Option<String>,
}

impl SignalNode {
    /// The failure-side copy of `decision` made on `span`.
    pub fn new(decision: Decision, span: &Span, resource: Option<&Resource>) -> Self {
        let attr = |key| resource.and_then(|r| get_str(&r.attributes, key).map(String::from));
        let (kind, name, message, label) = match decision.signals.into_iter().next() {
            Some(s) => (s.kind, s.name, truncate(s.message), s.label),
            None => (SignalKind::Status, String::new(), String::new(), None),
        };
        SignalNode {
            class: decision.class,
            source: decision.source,
            confidence: decision.confidence,
            rule: decision.rule,
            fingerprint: decision.fingerprint,
            remediation: decision.remediation,
            agent: agent_name(span, resource).to_string(),
            operation: operation_name(span).to_string(),
            span_name: span.name.clone(),
            kind,
            name,
            message,
            label,
            service: attr("service.name"),
            service_version: attr("service.version"),
        }
    }
}

/// Cuts `s` to `MAX_MESSAGE_CHARS` chars.
fn truncate(mut s: String) -> String {
    if let Some((i, _)) = s.char_indices().nth(MAX_MESSAGE_CHARS) {
        s.truncate(i);
    }
    s
}

/// Where a span sits in its trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// `None` for a root span.
    pub parent: Option<[u8; 8]>,
    pub kind: i32,
    pub start_ns: u64,
    pub end_ns: u64,
}

/// One span as the failure side sees it: a skeleton (shape only), a signal span (shape and
/// signal), or a signal from a log record whose span has not been seen (signal only).
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub shape: Option<Shape>,
    pub signal: Option<Box<SignalNode>>,
    /// The span's own `gen_ai.agent.name`, when it has one: a root cause without one (a tool
    /// span) is attributed to its nearest agent ancestor.
    pub agent: Option<Box<str>>,
}

/// What one request sends to the failure side.
#[derive(Debug, Default)]
pub struct Batch {
    pub nodes: Vec<Node>,
    /// (service.name, service.version) pairs this tap had not seen before.
    pub versions: Vec<(String, String)>,
}

/// Parent span id from its wire bytes: `None` when empty, all zero or not 8 bytes.
pub fn parent_id(bytes: &[u8]) -> Option<[u8; 8]> {
    let id: [u8; 8] = bytes.try_into().ok()?;
    (id != [0; 8]).then_some(id)
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Starts the assembler task. The task ends when `stop` flips to true or every FailureTap is
/// dropped; either way it first decides every held trace (reason "shutdown") and then closes the
/// output.
pub fn start(
    cfg: &FailureTriage,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) -> (FailureTap, mpsc::Receiver<FailureOutput>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(cfg.queue_size.max(1));
    let (out_tx, out_rx) = mpsc::channel(OUTPUT_CAPACITY);
    let acfg = AssemblerConfig::from(cfg);
    let shared = Arc::new(tap::Shared::new(
        metrics.clone(),
        cfg.max_traces.max(1),
        acfg.trace_window_ms,
    ));
    shared.advance(clock.now_ms());
    let tap = FailureTap::new(tx, shared.clone());
    let task = Task {
        assembler: Assembler::new(acfg, metrics),
        out: out_tx,
        shared,
        clock,
        decided: Vec::new(),
    };
    let handle = tokio::spawn(task.run(rx, stop));
    (tap, out_rx, handle)
}

/// The assembler task's state.
struct Task {
    assembler: Assembler,
    out: mpsc::Sender<FailureOutput>,
    shared: Arc<tap::Shared>,
    clock: SharedClock,
    decided: Vec<Decided>,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Batch>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop_open = true;
        loop {
            if *stop.borrow_and_update() {
                break;
            }
            tokio::select! {
                batch = rx.recv() => match batch {
                    Some(b) => self.take(b).await,
                    None => break,
                },
                _ = tick.tick() => {
                    let now = self.clock.now_ms();
                    self.shared.advance(now);
                    self.assembler.tick(now, &mut self.decided);
                    self.emit().await;
                }
                r = stop.changed(), if stop_open => stop_open = r.is_ok(),
            }
        }
        // Take what is already queued, then decide everything held.
        rx.close();
        while let Ok(b) = rx.try_recv() {
            self.take(b).await;
        }
        self.assembler.drain(&mut self.decided);
        self.emit().await;
        tracing::debug!("failure side stopped");
    }

    async fn take(&mut self, batch: Batch) {
        let now = self.clock.now_ms();
        for (service, version) in batch.versions {
            let seen = FailureOutput::VersionSeen {
                service,
                version,
                at_ms: now,
            };
            if self.out.send(seen).await.is_err() {
                tracing::debug!("failure output closed; version dropped");
            }
        }
        for node in batch.nodes {
            self.assembler.add(node, now, &mut self.decided);
        }
        self.emit().await;
    }

    async fn emit(&mut self) {
        for d in self.decided.drain(..) {
            if let Some(f) = d.failure {
                if self.out.send(FailureOutput::Failure(f)).await.is_err() {
                    tracing::warn!("failure output closed; failure dropped");
                }
            }
        }
    }
}
