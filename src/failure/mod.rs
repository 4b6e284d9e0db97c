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
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::admin::metrics::Metrics;
use crate::classify::signals::{Signal, SignalKind};
use crate::classify::{agent_name, operation_name, Decision, Source, AGENT_NAME};
use crate::clock::SharedClock;
use crate::config::FailureTriage;
use crate::otlp::attributes::get_str;
use crate::otlp::attributes::value_to_string;
use crate::remediation::store::FailureRecord;
use assembler::{Assembler, AssemblerConfig, Decided};
use detail::SignalView;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
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
    pub const STORE_ERROR: &str = "store_error";
    /// Still queued (spans), held (traces) or unwritten (failures) when shutdown stopped
    /// waiting for the failure side to drain.
    pub const SHUTDOWN: &str = "shutdown";
    /// Every reason, so each series exists at 0 from the start (an alert's `increase()` then
    /// sees the first drop).
    pub const ALL: [&str; 7] = [
        QUEUE_FULL,
        LATE,
        SPAN_CAP,
        MALFORMED,
        CLOSED,
        STORE_ERROR,
        SHUTDOWN,
    ];
}

/// Hasher of fixed-size id keys (trace and span ids): xxh3 with a per-process random seed,
/// much cheaper than SipHash on 16 bytes and still not predictable from outside. The length
/// prefix is ignored, so it is meant for keys of one length only.
#[derive(Debug, Clone, Copy)]
pub struct IdHash {
    seed: u64,
}

impl Default for IdHash {
    /// The process's seed, drawn once (every trace's node map is built with one).
    fn default() -> Self {
        static SEED: std::sync::LazyLock<u64> =
            std::sync::LazyLock::new(|| RandomState::new().hash_one(0x7472_6961_6765_u64));
        IdHash { seed: *SEED }
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

/// A span's failure signal and class, as the hot path decided them. Once its trace is decided,
/// the root cause's `fingerprint`, `remediation` and `rule` have moved to the failure record
/// (the snapshot's detail and features never read them). Names that recur from span to span
/// (agent, operation, service and version) are shared strings (`tap::intern`).
#[derive(Debug, Clone, PartialEq)]
pub struct SignalNode {
    pub class: String,
    pub source: Source,
    pub confidence: f64,
    pub rule: Option<String>,
    pub fingerprint: String,
    pub remediation: String,
    /// `gen_ai.agent.name`, else the resource's `service.name`.
    pub agent: Arc<str>,
    /// Tool name, else span name.
    pub operation: Arc<str>,
    /// The primary (most specific) signal's kind (`Status` when there is none); its name,
    /// message and label are those of `signals[0]` (`name()`, `message()`, `label()`).
    pub kind: SignalKind,
    pub service: Option<Arc<str>>,
    pub service_version: Option<Arc<str>>,
    /// Every signal on the span, most specific first (at most `detail::MAX_SIGNALS`, texts cut
    /// to `MAX_MESSAGE_CHARS`). The first is the primary signal.
    pub signals: Vec<Signal>,
    /// The span itself, trimmed and held encoded (see `HeldSpan`). What a person, the judge and
    /// the model see of a root cause is made from it once the trace is decided, and only for a
    /// root cause whose detail is kept.
    pub span: HeldSpan,
}

/// A signal span as the failure side holds it: trimmed (at most `detail::MAX_ATTRIBUTES`
/// attributes with string values cut to `detail::MAX_ATTRIBUTE_CHARS`, no events or links) and
/// encoded in one buffer, with its name at hand (`HeldSpan::of` writes it from the decoded span,
/// which stays the hot path's to reuse). The few spans whose detail is kept are decoded again.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldSpan {
    /// Shared with other spans of the same name (`tap::intern`).
    name: Arc<str>,
    encoded: Box<[u8]>,
}

impl HeldSpan {
    /// The span's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The trimmed span, decoded (its name included).
    pub fn decode(&self) -> Span {
        let mut span = Span::decode(&*self.encoded).unwrap_or_else(|e| {
            // The bytes are prost's own encoding of a valid span: never reached.
            tracing::error!(error = %e, "held span does not decode");
            Span::default()
        });
        span.name = self.name.to_string();
        span
    }
}

impl HeldSpan {
    /// `span` trimmed (see `HeldSpan`) and encoded, without copying what is left out: the bytes
    /// prost writes for the trimmed span, name aside.
    pub fn of(span: &Span) -> Self {
        use prost::encoding::{bytes, fixed32, fixed64, int32, message, string, uint32};
        let mut buf = Vec::with_capacity(span.encoded_len());
        if !span.trace_id.is_empty() {
            bytes::encode(1, &span.trace_id, &mut buf);
        }
        if !span.span_id.is_empty() {
            bytes::encode(2, &span.span_id, &mut buf);
        }
        if !span.trace_state.is_empty() {
            string::encode(3, &span.trace_state, &mut buf);
        }
        if !span.parent_span_id.is_empty() {
            bytes::encode(4, &span.parent_span_id, &mut buf);
        }
        if span.kind != 0 {
            int32::encode(6, &span.kind, &mut buf);
        }
        if span.start_time_unix_nano != 0 {
            fixed64::encode(7, &span.start_time_unix_nano, &mut buf);
        }
        if span.end_time_unix_nano != 0 {
            fixed64::encode(8, &span.end_time_unix_nano, &mut buf);
        }
        for kv in span.attributes.iter().take(detail::MAX_ATTRIBUTES) {
            encode_attribute(kv, &mut buf);
        }
        for (n, v) in [
            (10, span.dropped_attributes_count),
            (12, span.dropped_events_count),
            (14, span.dropped_links_count),
        ] {
            if v != 0 {
                uint32::encode(n, &v, &mut buf);
            }
        }
        if let Some(status) = &span.status {
            message::encode(15, status, &mut buf);
        }
        if span.flags != 0 {
            fixed32::encode(16, &span.flags, &mut buf);
        }
        HeldSpan {
            name: tap::intern(&span.name),
            encoded: buf.into_boxed_slice(),
        }
    }
}

/// Where a string value is cut to `MAX_ATTRIBUTE_CHARS` chars; `None` when it needs no cut.
fn cut_at(v: &str) -> Option<usize> {
    let max = detail::MAX_ATTRIBUTE_CHARS;
    // No more chars than bytes: a short value needs no walk over its chars, and an ASCII one
    // is cut at its byte `max`.
    if v.len() <= max {
        return None;
    }
    if v.as_bytes()[..max].is_ascii() {
        return Some(max);
    }
    v.char_indices().nth(max).map(|(i, _)| i)
}

/// Writes `kv` as a span's attribute (field 9), its string value cut to `MAX_ATTRIBUTE_CHARS`
/// chars: the bytes prost writes for the cut `KeyValue`, without making it.
fn encode_attribute(kv: &KeyValue, buf: &mut Vec<u8>) {
    use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
    let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(v)) => cut_at(v).map(|i| &v[..i]),
        _ => None,
    };
    let Some(value) = value else {
        return prost::encoding::message::encode(9, kv, buf);
    };
    let field = |len: usize| 1 + encoded_len_varint(len as u64) + len;
    let any_len = field(value.len());
    let mut kv_len = field(any_len);
    if !kv.key.is_empty() {
        kv_len += field(kv.key.len());
    }
    if kv.key_strindex != 0 {
        kv_len += 1 + encoded_len_varint(kv.key_strindex as u64);
    }
    encode_key(9, WireType::LengthDelimited, buf);
    encode_varint(kv_len as u64, buf);
    if !kv.key.is_empty() {
        prost::encoding::string::encode(1, &kv.key, buf);
    }
    encode_key(2, WireType::LengthDelimited, buf);
    encode_varint(any_len as u64, buf);
    encode_key(1, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.extend_from_slice(value.as_bytes());
    if kv.key_strindex != 0 {
        prost::encoding::int32::encode(3, &kv.key_strindex, buf);
    }
}

impl SignalNode {
    /// The failure-side copy of `decision` made on `span` (trimmed and encoded).
    pub fn new(decision: Decision, span: &Span, resource: Option<&Resource>) -> Self {
        let attr = |key| resource.and_then(|r| get_str(&r.attributes, key).map(tap::intern));
        let mut signals = decision.signals;
        signals.truncate(detail::MAX_SIGNALS);
        for s in &mut signals {
            cut_in_place(&mut s.name);
            cut_in_place(&mut s.message);
            if let Some(l) = s.label.as_mut() {
                cut_in_place(l);
            }
        }
        let kind = signals.first().map_or(SignalKind::Status, |s| s.kind);
        SignalNode {
            class: decision.class,
            source: decision.source,
            confidence: decision.confidence,
            rule: decision.rule,
            fingerprint: decision.fingerprint,
            remediation: decision.remediation,
            agent: tap::intern(agent_name(span, resource)),
            operation: tap::intern(operation_name(span)),
            kind,
            service: attr("service.name"),
            service_version: attr("service.version"),
            signals,
            span: HeldSpan::of(span),
        }
    }

    /// The primary signal's name (cut to `MAX_MESSAGE_CHARS`); empty when there is none.
    pub fn name(&self) -> &str {
        self.signals.first().map_or("", |s| s.name.as_str())
    }

    /// The primary signal's message (cut to `MAX_MESSAGE_CHARS`); empty when there is none.
    pub fn message(&self) -> &str {
        self.signals.first().map_or("", |s| s.message.as_str())
    }

    /// The primary signal's label (cut to `MAX_MESSAGE_CHARS`), if any.
    pub fn label(&self) -> Option<&str> {
        self.signals.first().and_then(|s| s.label.as_deref())
    }

    /// The span's name.
    pub fn span_name(&self) -> &str {
        self.span.name()
    }

    /// The span's feature tokens for the learned model: `classify::model::features` on the
    /// trimmed span and a resource holding its service name (all that features read of it).
    pub fn features(&self) -> Vec<String> {
        let resource = self.service.as_ref().map(|s| Resource {
            attributes: vec![crate::otlp::attributes::string_kv(
                "service.name",
                s.to_string(),
            )],
            ..Default::default()
        });
        crate::classify::model::features(&self.span.decode(), resource.as_ref(), &self.signals)
    }

    /// The signals as people and the judge see them.
    pub fn signal_views(&self) -> Vec<SignalView> {
        self.signals.iter().map(signal_view).collect()
    }

    /// The span's attributes as (key, text) pairs.
    pub fn attribute_texts(&self) -> Vec<(String, String)> {
        self.span
            .decode()
            .attributes
            .iter()
            .map(|kv| {
                let v = kv
                    .value
                    .as_ref()
                    .and_then(|v| v.value.as_ref())
                    .and_then(value_to_string)
                    .unwrap_or_default();
                (kv.key.clone(), v)
            })
            .collect()
    }
}

/// A signal as people and the judge see it.
pub fn signal_view(s: &Signal) -> SignalView {
    SignalView {
        kind: s.kind.as_str().to_string(),
        name: s.name.clone(),
        message: s.message.clone(),
        label: s.label.clone(),
        score: s.score,
    }
}

/// Cuts an owned string to `MAX_MESSAGE_CHARS` chars in place, giving back the memory.
fn cut_in_place(s: &mut String) {
    if s.len() <= MAX_MESSAGE_CHARS {
        return;
    }
    if let Some((i, _)) = s.char_indices().nth(MAX_MESSAGE_CHARS) {
        s.truncate(i);
        s.shrink_to_fit();
    }
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
    /// Shared with other nodes of the same name (`tap::intern`), as is `name`.
    pub agent: Option<Arc<str>>,
    /// The span's name (cut to `MAX_NAME_BYTES`), for the failure's span tree.
    pub name: Option<Arc<str>>,
}

impl Node {
    /// The failure side's node of a decoded span, with its signal when `decision` is given;
    /// `None` when its ids are not 16 and 8 bytes.
    pub fn of_span(
        span: &Span,
        resource: Option<&Resource>,
        decision: Option<Decision>,
    ) -> Option<Node> {
        Some(Node {
            trace_id: span.trace_id.as_slice().try_into().ok()?,
            span_id: span.span_id.as_slice().try_into().ok()?,
            shape: Some(Shape {
                parent: parent_id(&span.parent_span_id),
                kind: span.kind,
                start_ns: span.start_time_unix_nano,
                end_ns: span.end_time_unix_nano,
            }),
            agent: get_str(&span.attributes, AGENT_NAME).map(tap::intern),
            name: Some(tap::cut_name(span.name.as_bytes())),
            signal: decision.map(|d| Box::new(SignalNode::new(d, span, resource))),
        })
    }
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
    let mut s = Vec::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)]);
        s.push(DIGITS[usize::from(b & 15)]);
    }
    String::from_utf8(s).expect("hex digits are ASCII")
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
        self.assembler
            .add_batch(batch.nodes, now, &mut self.decided);
        self.emit().await;
    }

    async fn emit(&mut self) {
        // Pending from now until the lifecycle has written them (or counted them dropped), so
        // a shutdown that stops waiting can count them.
        let failures = self.decided.iter().filter(|d| d.failure.is_some()).count();
        self.metrics.failures_pending.inc_by(failures as i64);
        for d in self.decided.drain(..) {
            if let Some(f) = d.failure {
                if self
                    .out
                    .send(FailureOutput::Failure(Box::new(f)))
                    .await
                    .is_err()
                {
                    self.metrics.failures_pending.dec();
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

    /// What a held span is meant to hold, made the plain way: `span` without events and links,
    /// with at most `MAX_ATTRIBUTES` attributes and their string values cut to
    /// `MAX_ATTRIBUTE_CHARS`.
    fn trimmed(mut span: Span) -> Span {
        span.events = Vec::new();
        span.links = Vec::new();
        if span.attributes.len() > detail::MAX_ATTRIBUTES {
            span.attributes.truncate(detail::MAX_ATTRIBUTES);
            span.attributes.shrink_to_fit();
        }
        for kv in &mut span.attributes {
            if let Some(any_value::Value::StringValue(v)) =
                kv.value.as_mut().and_then(|v| v.value.as_mut())
            {
                // No more chars than bytes: a short value needs no walk over its chars.
                if v.len() <= detail::MAX_ATTRIBUTE_CHARS {
                    continue;
                }
                if let Some((i, _)) = v.char_indices().nth(detail::MAX_ATTRIBUTE_CHARS) {
                    v.truncate(i);
                    v.shrink_to_fit();
                }
            }
        }
        span
    }

    #[test]
    fn a_held_span_is_the_bytes_prost_writes_for_the_trimmed_span() {
        let mut fleet = crate::synth::Fleet::new(3, 50).with_steps(3);
        let (req, _) = fleet.request(20);
        let mut spans: Vec<Span> = req
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans)
            .collect();
        let mut odd = spans[0].clone();
        odd.trace_state = "k=v".into();
        odd.flags = 0x101;
        odd.kind = -2;
        odd.dropped_attributes_count = 1;
        odd.dropped_events_count = 2;
        odd.dropped_links_count = 3;
        odd.links = vec![Default::default()];
        odd.attributes = (0..60)
            .map(|i| crate::otlp::attributes::string_kv(&format!("k{i}"), "é".repeat(i * 9)))
            .collect();
        // Cut values with a profiling key index, an empty key and an ASCII value among them.
        odd.attributes[1] = crate::otlp::attributes::string_kv("", "a".repeat(300));
        odd.attributes[1].key_strindex = 5;
        odd.attributes[40].key_strindex = -3;
        odd.attributes[3].key_strindex = 7;
        odd.attributes[3].value = Some(opentelemetry_proto::tonic::common::v1::AnyValue {
            value: Some(any_value::Value::StringValue(format!(
                "{}é",
                "a".repeat(255)
            ))),
        });
        spans.push(odd);
        spans.push(Span::default());
        for span in spans {
            let held = HeldSpan::of(&span);
            let mut want = trimmed(span.clone());
            assert_eq!(held.name(), std::mem::take(&mut want.name));
            assert_eq!(&*held.encoded, want.encode_to_vec().as_slice());
        }
    }

    #[test]
    fn hex_is_lowercase_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xab, 0xff, 0x10]), "000fabff10");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let mut long = "é".repeat(MAX_MESSAGE_CHARS + 10);
        cut_in_place(&mut long);
        assert_eq!(long.chars().count(), MAX_MESSAGE_CHARS);
        let mut short = String::from("short");
        cut_in_place(&mut short);
        assert_eq!(short, "short");
    }

    #[test]
    fn a_held_span_decodes_to_the_trimmed_span() {
        use opentelemetry_proto::tonic::trace::v1::span::Event;
        use opentelemetry_proto::tonic::trace::v1::{status::StatusCode, Status};
        let span = Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            parent_span_id: vec![3; 8],
            name: "execute_tool lookup_order".into(),
            kind: 3,
            start_time_unix_nano: 10,
            end_time_unix_nano: 20,
            attributes: (0..40)
                .map(|i| crate::otlp::attributes::string_kv(&format!("k{i}"), "é".repeat(i * 40)))
                .collect(),
            events: vec![Event::default(); 2],
            status: Some(Status {
                code: StatusCode::Error as i32,
                message: "timed out".into(),
            }),
            ..Default::default()
        };
        let held = HeldSpan::of(&span);
        assert_eq!(held.name(), "execute_tool lookup_order");
        assert_eq!(held.decode(), trimmed(span));
        let empty = HeldSpan::of(&Span::default());
        assert_eq!((empty.name(), empty.decode()), ("", Span::default()));
    }

    #[test]
    fn held_spans_are_trimmed() {
        use opentelemetry_proto::tonic::trace::v1::span::Event;
        let span = Span {
            name: "tool".into(),
            attributes: (0..100)
                .map(|i| crate::otlp::attributes::string_kv(&format!("k{i}"), "x".repeat(10_000)))
                .collect(),
            events: vec![Event::default(); 10],
            ..Default::default()
        };
        let held = HeldSpan::of(&span);
        let t = held.decode();
        assert!(t.events.is_empty());
        assert_eq!(t.attributes.len(), detail::MAX_ATTRIBUTES);
        // Each value cut to MAX_ATTRIBUTE_CHARS, plus a few bytes of key and framing.
        assert!(
            held.encoded.len() <= detail::MAX_ATTRIBUTES * (detail::MAX_ATTRIBUTE_CHARS + 16),
            "{} bytes held",
            held.encoded.len()
        );
    }
}
