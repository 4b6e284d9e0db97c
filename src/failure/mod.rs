//! The failure side: a small copy of each signal span and the tree around it goes from the hot
//! path (`FailureTap`) through a bounded channel to the trace assembler, which turns each failed
//! trace into one `FailureRecord` attributed to its root cause.
//!
//! Whatever the failure side cannot take or hold is counted in
//! `triage_failure_side_dropped_total{reason}`, with one of these reasons (`drop_reason`):
//! - `queue_full`: the channel from the hot path was full (in batches or in nodes in flight);
//! - `late`: a node of a trace decided less than a trace window ago (no second failure);
//! - `span_cap`: a node over `max_spans_per_trace` (or a trace alone over `max_nodes`);
//! - `malformed`: a span of a marked trace whose skeleton could not be read;
//! - `closed`: the failure side had stopped (batch), or its output had closed (failure).
//!
//! A trace decided early to keep within `max_traces`/`max_nodes` is not dropped: its failure is
//! handed on, and `triage_traces_decided_total{reason="evicted"}` counts it.

pub mod assembler;
pub mod detail;
pub mod fingerprint;
pub mod logs;
pub mod tap;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::admin::metrics::Metrics;
use crate::classify::signals::{Signal, SignalKind};
use crate::classify::{agent_name, operation_name, Decision, Source};
use crate::clock::SharedClock;
use crate::config::FailureTriage;
use crate::otlp::attributes::get_str;
use crate::otlp::attributes::value_to_string;
use crate::remediation::store::FailureRecord;
use assembler::{Assembler, AssemblerConfig, Decided};
use detail::SignalView;
pub use tap::FailureTap;

/// Signal messages (and names, labels) longer than this (in chars) are cut before they go to
/// the failure side.
pub const MAX_MESSAGE_CHARS: usize = 512;
/// Capacity of the assembler's output channel.
pub const OUTPUT_CAPACITY: usize = 1024;
/// How often (real time) the assembler looks for traces that are due.
const TICK: Duration = Duration::from_millis(100);

/// Every reason the failure side counts a drop with (see the module doc).
pub mod drop_reason {
    pub const QUEUE_FULL: &str = "queue_full";
    pub const LATE: &str = "late";
    pub const SPAN_CAP: &str = "span_cap";
    pub const MALFORMED: &str = "malformed";
    pub const CLOSED: &str = "closed";
}

/// Hasher of fixed-size id keys (trace and span ids): xxh3 with a per-process random seed,
/// much cheaper than SipHash on 16 bytes and still not predictable from outside. The length
/// prefix is ignored, so it is meant for keys of one length only.
#[derive(Debug, Clone, Copy)]
pub struct IdHash {
    seed: u64,
}

impl Default for IdHash {
    fn default() -> Self {
        IdHash {
            seed: RandomState::new().hash_one(0x7472_6961_6765_u64),
        }
    }
}

impl BuildHasher for IdHash {
    type Hasher = IdHasher;

    #[inline]
    fn build_hasher(&self) -> IdHasher {
        IdHasher(self.seed)
    }
}

/// The hasher `IdHash` builds.
#[derive(Debug, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }

    /// Length prefixes: every key has the same length.
    #[inline]
    fn write_usize(&mut self, _: usize) {}
}

/// What the failure side hands on.
#[derive(Debug, Clone, PartialEq)]
pub enum FailureOutput {
    /// One failed trace, attributed to its root cause.
    Failure(Box<FailureRecord>),
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
    /// Cut to `MAX_MESSAGE_CHARS` (as are `name` and `label`).
    pub message: String,
    pub label: Option<String>,
    pub service: Option<String>,
    pub service_version: Option<String>,
    /// Every signal on the span, most specific first (at most `detail::MAX_SIGNALS`).
    pub signals: Vec<SignalView>,
    /// The span's attributes as text (at most `detail::MAX_ATTRIBUTES`).
    pub attributes: Vec<(String, String)>,
    /// The span's feature tokens for the learned model (`classify::model::features`).
    pub features: Vec<String>,
}

impl SignalNode {
    /// The failure-side copy of `decision` made on `span`.
    pub fn new(decision: Decision, span: &Span, resource: Option<&Resource>) -> Self {
        let attr = |key| resource.and_then(|r| get_str(&r.attributes, key).map(String::from));
        let features = crate::classify::model::features(span, resource, &decision.signals);
        let signals = decision
            .signals
            .iter()
            .take(detail::MAX_SIGNALS)
            .map(signal_view)
            .collect();
        let (kind, name, message, label) = match decision.signals.into_iter().next() {
            Some(s) => (
                s.kind,
                truncate(s.name),
                truncate(s.message),
                s.label.map(truncate),
            ),
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
            signals,
            attributes: attribute_texts(span),
            features,
        }
    }
}

/// A signal as people and the judge see it, its texts cut to `MAX_MESSAGE_CHARS`.
fn signal_view(s: &Signal) -> SignalView {
    SignalView {
        kind: s.kind.as_str().to_string(),
        name: truncate(s.name.clone()),
        message: truncate(s.message.clone()),
        label: s.label.clone().map(truncate),
        score: s.score,
    }
}

/// The span's attributes as (key, text) pairs, bounded in count and length.
fn attribute_texts(span: &Span) -> Vec<(String, String)> {
    span.attributes
        .iter()
        .take(detail::MAX_ATTRIBUTES)
        .map(|kv| {
            let mut v = kv
                .value
                .as_ref()
                .and_then(|v| v.value.as_ref())
                .and_then(value_to_string)
                .unwrap_or_default();
            if let Some((i, _)) = v.char_indices().nth(detail::MAX_ATTRIBUTE_CHARS) {
                v.truncate(i);
            }
            (kv.key.clone(), v)
        })
        .collect()
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
    /// The span's name (cut to `MAX_NAME_BYTES`), for the failure's span tree.
    pub name: Option<Box<str>>,
}

/// Span names longer than this (in bytes) are cut in skeletons.
pub const MAX_NAME_BYTES: usize = 128;

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
/// dropped; either way it first takes every batch already queued, decides every held trace
/// (reason "shutdown") and then closes the output. Batches sent after that are counted as
/// dropped ("closed"), so `stop` should flip only once the receivers have stopped.
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
        acfg.max_nodes,
    ));
    shared.advance(clock.now_ms());
    let tap = FailureTap::new(tx, shared.clone());
    let task = Task {
        assembler: Assembler::new(acfg, metrics.clone()),
        metrics,
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
    metrics: Arc<Metrics>,
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
        self.shared.taken(batch.nodes.len());
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
                if self
                    .out
                    .send(FailureOutput::Failure(Box::new(f)))
                    .await
                    .is_err()
                {
                    self.metrics.failure_side_dropped(drop_reason::CLOSED, 1);
                    tracing::warn!("failure output closed; failure dropped");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_MESSAGE_CHARS + 10);
        let cut = truncate(long);
        assert_eq!(cut.chars().count(), MAX_MESSAGE_CHARS);
        assert_eq!(truncate("short".into()), "short");
    }
}
