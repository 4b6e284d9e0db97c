//! The trace assembler: holds the nodes of each trace for a bounded window, then decides the
//! trace, attributing a failed one to its root cause. Pure and driven by the caller's clock.
//! Nodes of a trace decided less than a trace window ago are dropped ("late"), so a late span
//! never makes a second failure for its trace.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;

use serde::Serialize;

use crate::admin::metrics::Metrics;
use crate::classify::signals::SignalKind;
use crate::classify::Source;
use crate::config::FailureTriage;
use crate::failure::detail::{Nodes, TraceSnapshot};
use crate::failure::{drop_reason, hex, IdHash, Node, SignalNode};
use crate::remediation::store::{FailureRecord, QueueReason, SignalSummary};

/// Windows and caps of the assembler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AssemblerConfig {
    /// A trace without its root is decided this long after its last node arrived; a trace with
    /// its root, at most this long after the root arrived.
    pub trace_window_ms: i64,
    /// Once the root has arrived, a trace is decided this long after its last node arrived.
    pub root_grace_ms: i64,
    pub max_traces: usize,
    pub max_spans_per_trace: usize,
    /// Most nodes held over all traces; past it the oldest traces are decided early.
    pub max_nodes: usize,
    /// Failures decided with less confidence wait for a person.
    pub min_confidence: f64,
    /// Traces whose id hashes below this are sampled for audit (`audit_rate` × 2^64).
    pub audit_below: u64,
}

impl From<&FailureTriage> for AssemblerConfig {
    fn from(c: &FailureTriage) -> Self {
        AssemblerConfig {
            trace_window_ms: c.trace_window.as_millis().min(i64::MAX as u128) as i64,
            root_grace_ms: c.root_grace.as_millis().min(i64::MAX as u128) as i64,
            max_traces: c.max_traces.max(1),
            max_spans_per_trace: c.max_spans_per_trace.max(1),
            max_nodes: c.max_nodes.max(1),
            min_confidence: c.min_confidence,
            audit_below: (c.audit_rate.clamp(0.0, 1.0) * u64::MAX as f64) as u64,
        }
    }
}

/// A decided trace: why it was decided, and its failure if it held a signal.
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    pub trace_id: [u8; 16],
    /// "root_ended", "window", "evicted" or "shutdown".
    pub reason: &'static str,
    pub failure: Option<FailureRecord>,
}

/// One held trace.
struct Trace {
    nodes: Nodes,
    /// Arrival order, for eviction of the oldest.
    seq: u64,
    last_ms: i64,
    root_ms: Option<i64>,
    first_signal_ms: Option<i64>,
    deadline: i64,
}

impl Trace {
    /// The deadline and why: without the root, a window after the last arrival; with it, a
    /// grace after the last arrival but no later than a window after the root's arrival.
    fn due(&self, cfg: &AssemblerConfig) -> (i64, &'static str) {
        let window = self.last_ms.saturating_add(cfg.trace_window_ms);
        match self.root_ms {
            Some(r) => {
                let rooted = self
                    .last_ms
                    .saturating_add(cfg.root_grace_ms)
                    .min(r.saturating_add(cfg.trace_window_ms));
                if rooted <= window {
                    (rooted, "root_ended")
                } else {
                    (window, "window")
                }
            }
            None => (window, "window"),
        }
    }
}

/// Ids of recently decided traces, capped (oldest forgotten first) and forgotten a trace
/// window after their decision.
struct Recent {
    cap: usize,
    window_ms: i64,
    map: HashMap<[u8; 16], i64, IdHash>,
    /// (trace id, decided at); entries whose time no longer matches the map are skipped.
    order: VecDeque<([u8; 16], i64)>,
}

impl Recent {
    fn new(cap: usize, window_ms: i64) -> Self {
        Recent {
            cap: cap.max(1),
            window_ms,
            map: HashMap::default(),
            order: VecDeque::new(),
        }
    }

    fn contains(&self, id: &[u8; 16], now_ms: i64) -> bool {
        self.map
            .get(id)
            .is_some_and(|&at| now_ms < at.saturating_add(self.window_ms))
    }

    fn insert(&mut self, id: [u8; 16], at: i64) {
        self.map.insert(id, at);
        self.order.push_back((id, at));
        while self.map.len() > self.cap {
            self.pop_front();
        }
        if self.order.len() > 2 * self.cap {
            let map = &self.map;
            self.order.retain(|(id, at)| map.get(id) == Some(at));
        }
    }

    fn pop_front(&mut self) {
        if let Some((id, at)) = self.order.pop_front() {
            if self.map.get(&id) == Some(&at) {
                self.map.remove(&id);
            }
        }
    }

    fn expire(&mut self, now_ms: i64) {
        while self
            .order
            .front()
            .is_some_and(|(_, at)| now_ms >= at.saturating_add(self.window_ms))
        {
            self.pop_front();
        }
    }
}

/// Where a new node goes in its trace.
enum Slot {
    /// The span is held already: merge.
    Held,
    /// The trace is at `max_spans_per_trace`.
    Full,
    /// A new node (of a new or held trace).
    New,
}

/// Holds traces and decides them (see module doc).
pub struct Assembler {
    cfg: AssemblerConfig,
    /// The hasher of every trace's nodes by span id.
    ids: IdHash,
    metrics: Arc<Metrics>,
    traces: HashMap<[u8; 16], Trace, IdHash>,
    /// (deadline, trace id) of every held trace.
    deadlines: BTreeSet<(i64, [u8; 16])>,
    /// (arrival seq, trace id) of every held trace.
    age: BTreeSet<(u64, [u8; 16])>,
    recent: Recent,
    seq: u64,
    /// Nodes held over all traces.
    nodes: usize,
    /// The latest time seen, for the record of decided traces.
    now_ms: i64,
    span_overflow: u64,
    late: u64,
}

impl Assembler {
    pub fn new(cfg: AssemblerConfig, metrics: Arc<Metrics>) -> Self {
        Assembler {
            cfg,
            ids: IdHash::default(),
            metrics,
            traces: HashMap::default(),
            deadlines: BTreeSet::new(),
            age: BTreeSet::new(),
            recent: Recent::new(cfg.max_traces, cfg.trace_window_ms),
            seq: 0,
            nodes: 0,
            now_ms: i64::MIN,
            span_overflow: 0,
            late: 0,
        }
    }

    /// Traces held now.
    pub fn len(&self) -> usize {
        self.traces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.traces.is_empty()
    }

    /// Nodes held now, over all traces.
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// Recently decided traces remembered now.
    pub fn recently_decided(&self) -> usize {
        self.recent.map.len()
    }

    /// Nodes not recorded because their trace was at `max_spans_per_trace` (or alone at
    /// `max_nodes`).
    pub fn span_overflow(&self) -> u64 {
        self.span_overflow
    }

    /// Nodes dropped because their trace had been decided.
    pub fn late(&self) -> u64 {
        self.late
    }

    /// Takes one node that arrived at `now_ms`; traces decided early to make room go to `out`.
    pub fn add(&mut self, node: Node, now_ms: i64, out: &mut Vec<Decided>) {
        self.now_ms = self.now_ms.max(now_ms);
        let id = node.trace_id;
        if self.recent.contains(&id, now_ms) {
            self.late += 1;
            self.metrics.failure_side_dropped(drop_reason::LATE, 1);
            return;
        }
        let held = self
            .traces
            .get(&id)
            .map(|t| (t.nodes.contains_key(&node.span_id), t.nodes.len()));
        let slot = match held {
            Some((true, _)) => Slot::Held,
            Some((false, n)) if n >= self.cfg.max_spans_per_trace => Slot::Full,
            _ if self.make_room(id, out) => Slot::New,
            _ => Slot::Full,
        };
        if matches!(slot, Slot::New) && !self.traces.contains_key(&id) {
            self.open(id, now_ms, out);
        }
        let Some(t) = self.traces.get_mut(&id) else {
            // Only when a lone new node found no room: nothing to hold it in.
            self.overflow();
            return;
        };
        t.last_ms = t.last_ms.max(now_ms);
        let has_signal = node.signal.is_some();
        let is_root = node.shape.is_some_and(|s| s.parent.is_none());
        match slot {
            Slot::Held => {
                if let Some(old) = t.nodes.get_mut(&node.span_id) {
                    merge(old, node);
                }
            }
            Slot::New => {
                t.nodes.insert(node.span_id, node);
                self.nodes += 1;
            }
            Slot::Full => {}
        }
        let full = matches!(slot, Slot::Full);
        if !full {
            if is_root && t.root_ms.is_none() {
                t.root_ms = Some(now_ms);
            }
            if has_signal && t.first_signal_ms.is_none() {
                t.first_signal_ms = Some(now_ms);
            }
        }
        let (deadline, _) = t.due(&self.cfg);
        if deadline != t.deadline {
            self.deadlines.remove(&(t.deadline, id));
            self.deadlines.insert((deadline, id));
            t.deadline = deadline;
        }
        if full {
            self.overflow();
        }
        self.metrics.assembler_traces.set(self.traces.len() as i64);
    }

    /// Takes one batch's nodes that arrived at `now_ms`, as `add` takes them one by one. A run
    /// of nodes of one trace (a request brings a trace's spans together) is looked up once and
    /// moves its trace's deadline once, unless it needs room made or would pass
    /// `max_spans_per_trace`: then its nodes go through `add`.
    pub fn add_batch(&mut self, nodes: Vec<Node>, now_ms: i64, out: &mut Vec<Decided>) {
        let mut nodes = nodes.into_iter().peekable();
        let mut run = Vec::new();
        while let Some(first) = nodes.next() {
            let id = first.trace_id;
            run.push(first);
            while let Some(n) = nodes.next_if(|n| n.trace_id == id) {
                run.push(n);
            }
            if !self.add_run(id, &mut run, now_ms, out) {
                for n in run.drain(..) {
                    self.add(n, now_ms, out);
                }
            }
        }
        self.metrics.assembler_traces.set(self.traces.len() as i64);
    }

    /// `add_batch`'s one-lookup path for a run of nodes of trace `id` (drained when taken);
    /// false, with `run` untouched, when the run needs room made or would pass
    /// `max_spans_per_trace`.
    fn add_run(
        &mut self,
        id: [u8; 16],
        run: &mut Vec<Node>,
        now_ms: i64,
        out: &mut Vec<Decided>,
    ) -> bool {
        self.now_ms = self.now_ms.max(now_ms);
        let k = run.len();
        if self.recent.contains(&id, now_ms) {
            self.late += k as u64;
            self.metrics
                .failure_side_dropped(drop_reason::LATE, k as u64);
            run.clear();
            return true;
        }
        let held = self.traces.get(&id).map(|t| t.nodes.len());
        if held.unwrap_or(0) + k > self.cfg.max_spans_per_trace
            || self.nodes + k > self.cfg.max_nodes
            || (held.is_none() && self.traces.len() >= self.cfg.max_traces)
        {
            return false;
        }
        if held.is_none() {
            // Under `max_traces`: opening evicts nothing.
            self.open(id, now_ms, out);
        }
        let Some(t) = self.traces.get_mut(&id) else {
            return false;
        };
        t.last_ms = t.last_ms.max(now_ms);
        t.nodes.reserve(k);
        let mut added = 0;
        for node in run.drain(..) {
            let has_signal = node.signal.is_some();
            let is_root = node.shape.is_some_and(|s| s.parent.is_none());
            match t.nodes.entry(node.span_id) {
                Entry::Occupied(mut held) => merge(held.get_mut(), node),
                Entry::Vacant(slot) => {
                    slot.insert(node);
                    added += 1;
                }
            }
            if is_root && t.root_ms.is_none() {
                t.root_ms = Some(now_ms);
            }
            if has_signal && t.first_signal_ms.is_none() {
                t.first_signal_ms = Some(now_ms);
            }
        }
        self.nodes += added;
        let (deadline, _) = t.due(&self.cfg);
        if deadline != t.deadline {
            self.deadlines.remove(&(t.deadline, id));
            self.deadlines.insert((deadline, id));
            t.deadline = deadline;
        }
        true
    }

    fn overflow(&mut self) {
        self.span_overflow += 1;
        self.metrics.failure_side_dropped(drop_reason::SPAN_CAP, 1);
    }

    /// Decides the oldest traces other than `id` until one more node fits in `max_nodes`;
    /// false when `id` alone holds them all.
    fn make_room(&mut self, id: [u8; 16], out: &mut Vec<Decided>) -> bool {
        while self.nodes >= self.cfg.max_nodes {
            let Some(oldest) = self.age.iter().map(|&(_, t)| t).find(|&t| t != id) else {
                return false;
            };
            self.decide(oldest, "evicted", out);
        }
        true
    }

    /// Starts holding trace `id`, deciding the oldest traces first if at `max_traces`.
    fn open(&mut self, id: [u8; 16], now_ms: i64, out: &mut Vec<Decided>) {
        while self.traces.len() >= self.cfg.max_traces {
            let Some(&(_, oldest)) = self.age.first() else {
                break;
            };
            self.decide(oldest, "evicted", out);
        }
        self.seq += 1;
        self.age.insert((self.seq, id));
        let t = Trace {
            nodes: Nodes::with_hasher(self.ids),
            seq: self.seq,
            last_ms: now_ms,
            root_ms: None,
            first_signal_ms: None,
            deadline: i64::MIN,
        };
        self.traces.insert(id, t);
    }

    /// Decides every trace due at `now_ms`.
    pub fn tick(&mut self, now_ms: i64, out: &mut Vec<Decided>) {
        self.now_ms = self.now_ms.max(now_ms);
        self.recent.expire(now_ms);
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now_ms {
                break;
            }
            let reason = self
                .traces
                .get(&id)
                .map_or("window", |t| t.due(&self.cfg).1);
            self.decide(id, reason, out);
        }
    }

    /// Decides every held trace, oldest first (reason "shutdown").
    pub fn drain(&mut self, out: &mut Vec<Decided>) {
        while let Some(&(_, id)) = self.age.first() {
            self.decide(id, "shutdown", out);
        }
    }

    fn decide(&mut self, id: [u8; 16], reason: &'static str, out: &mut Vec<Decided>) {
        let Some(t) = self.traces.remove(&id) else {
            // Never leave a stale entry behind, whatever happened.
            self.age.retain(|(_, i)| *i != id);
            self.deadlines.retain(|(_, i)| *i != id);
            return;
        };
        self.age.remove(&(t.seq, id));
        self.deadlines.remove(&(t.deadline, id));
        self.nodes = self.nodes.saturating_sub(t.nodes.len());
        self.recent.insert(id, self.now_ms);
        self.metrics.assembler_traces.set(self.traces.len() as i64);
        self.metrics.trace_decided(reason);
        out.push(Decided {
            trace_id: id,
            reason,
            failure: failure(&id, t, &self.cfg),
        });
    }
}

/// Merges a later copy of a span into the node already held: the span's shape fills in; a
/// signal found on the span itself wins over one from a log record.
fn merge(old: &mut Node, new: Node) {
    if new.shape.is_some() {
        old.shape = new.shape;
    }
    if new.name.is_some() {
        old.name = new.name;
    }
    if let Some(s) = new.signal {
        let replace = match &old.signal {
            None => true,
            Some(o) => o.kind == SignalKind::Log && s.kind != SignalKind::Log,
        };
        if replace {
            old.signal = Some(s);
        }
    }
}

/// The root cause of a trace: among signal nodes, those with no signal node below them in the
/// known tree; of those the deepest, then the earliest (start, end, span id). Returns it with
/// its depth (known ancestors) and the number of signal nodes.
pub fn root_cause<S: BuildHasher>(
    nodes: &HashMap<[u8; 8], Node, S>,
) -> Option<(&Node, usize, usize)> {
    let mut explained: HashSet<[u8; 8], IdHash> = HashSet::default();
    let mut leaves: Vec<(&Node, usize)> = Vec::new();
    for n in nodes.values().filter(|n| n.signal.is_some()) {
        let mut depth = 0;
        let mut cur = n.shape.and_then(|s| s.parent);
        // Bounded walk: a malformed trace may hold a cycle.
        while let Some(p) = cur.filter(|_| depth < nodes.len()) {
            let Some(parent) = nodes.get(&p) else {
                break;
            };
            depth += 1;
            if parent.signal.is_some() {
                explained.insert(p);
            }
            cur = parent.shape.and_then(|s| s.parent);
        }
        leaves.push((n, depth));
    }
    let signals = leaves.len();
    // Only a parent cycle explains every signal; then any signal node may be the cause.
    if leaves.iter().any(|(n, _)| !explained.contains(&n.span_id)) {
        leaves.retain(|(n, _)| !explained.contains(&n.span_id));
    }
    leaves
        .into_iter()
        .min_by_key(|(n, depth)| {
            let (start, end) = n
                .shape
                .map_or((u64::MAX, u64::MAX), |s| (s.start_ns, s.end_ns));
            (std::cmp::Reverse(*depth), start, end, n.span_id)
        })
        .map(|(n, depth)| (n, depth, signals))
}

/// The `gen_ai.agent.name` of `node` or of its nearest ancestor that has one.
fn agent_of<'a>(nodes: &'a Nodes, node: &'a Node) -> Option<&'a str> {
    let mut cur = Some(node);
    // Bounded walk: a malformed trace may hold a cycle.
    for _ in 0..=nodes.len() {
        let n = cur?;
        if let Some(a) = n.agent.as_deref() {
            return Some(a);
        }
        cur = n.shape.and_then(|s| s.parent).and_then(|p| nodes.get(&p));
    }
    None
}

/// The failure of a decided trace; `None` when it held no signal. What only the record needs
/// (fingerprint, remediation, rule) is moved out of the root cause's signal node rather than
/// copied: the snapshot's detail and features never read it.
fn failure(id: &[u8; 16], mut t: Trace, cfg: &AssemblerConfig) -> Option<FailureRecord> {
    let (node, depth, signal_spans) = root_cause(&t.nodes)?;
    let s: &SignalNode = node.signal.as_deref()?;
    let cause = node.span_id;
    let ancestor_agent = agent_of(&t.nodes, node).map(str::to_string);
    let signal = SignalSummary::of(&Summary {
        depth,
        kind: s.kind.as_str(),
        label: s.label(),
        message: s.message(),
        name: s.name(),
        operation: &s.operation,
        rule: s.rule.as_deref(),
        signal_spans,
        span_name: s.span_name(),
    });
    let queue_reason = queue_reason(id, s, cfg);
    let (class, source, confidence) = (s.class.clone(), s.source, s.confidence);
    let service = s.service.as_deref().unwrap_or("unknown").to_string();
    let s: &mut SignalNode = t.nodes.get_mut(&cause)?.signal.as_deref_mut()?;
    let agent = ancestor_agent.unwrap_or_else(|| s.agent.to_string());
    Some(FailureRecord {
        trace_id: hex(id),
        root_span_id: hex(&cause),
        class,
        source,
        confidence,
        fingerprint: std::mem::take(&mut s.fingerprint),
        remediation: std::mem::take(&mut s.remediation),
        agent,
        service,
        service_version: s.service_version.as_deref().map(str::to_string),
        observed_at: t.first_signal_ms.unwrap_or(t.last_ms),
        signal,
        rule: s.rule.take(),
        queue_reason,
        trace: Some(TraceSnapshot::of_trace(t.nodes, cause)),
    })
}

/// A failure's signal summary, as `FailureRecord::signal` stores it (keys in sorted order).
#[derive(Serialize)]
struct Summary<'a> {
    depth: usize,
    kind: &'a str,
    label: Option<&'a str>,
    message: &'a str,
    name: &'a str,
    operation: &'a str,
    rule: Option<&'a str>,
    signal_spans: usize,
    span_name: &'a str,
}

/// Why a failure decided as `s` waits for a person: the fallback decided it, it is under
/// `min_confidence`, or its trace is sampled for audit (by a hash of its id, so every instance
/// samples the same traces). A person's own label never waits.
fn queue_reason(id: &[u8; 16], s: &SignalNode, cfg: &AssemblerConfig) -> Option<QueueReason> {
    if s.source == Source::Human {
        None
    } else if s.source == Source::Rule && s.rule.is_none() {
        Some(QueueReason::Fallback)
    } else if s.confidence < cfg.min_confidence {
        Some(QueueReason::LowConfidence)
    } else if xxhash_rust::xxh3::xxh3_64(id) < cfg.audit_below {
        Some(QueueReason::Audit)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::signals::Signal;
    use crate::classify::Source;
    use crate::failure::detail::{TreeNode, MAX_TREE_NODES};
    use crate::failure::{HeldSpan, Shape};
    use crate::otlp::attributes::string_kv;
    use opentelemetry_proto::tonic::trace::v1::Span;

    const T: [u8; 16] = [7; 16];

    fn cfg() -> AssemblerConfig {
        AssemblerConfig {
            trace_window_ms: 10_000,
            root_grace_ms: 2_000,
            max_traces: 3,
            max_spans_per_trace: 5,
            max_nodes: 100,
            min_confidence: 0.6,
            audit_below: 0,
        }
    }

    fn asm(cfg: AssemblerConfig) -> Assembler {
        Assembler::new(cfg, Arc::new(Metrics::new()))
    }

    fn signal(kind: SignalKind, name: &str) -> Box<SignalNode> {
        Box::new(SignalNode {
            class: format!("class_of_{name}"),
            source: Source::Rule,
            confidence: 0.9,
            rule: Some(format!("rule_{name}")),
            fingerprint: format!("fp_{name}"),
            remediation: "tool_fix".into(),
            agent: "support".into(),
            operation: name.into(),
            kind,
            service: Some("svc".into()),
            service_version: Some("1.0".into()),
            signals: vec![Signal {
                kind,
                name: name.into(),
                message: format!("{name} failed"),
                label: None,
                score: None,
            }],
            span: HeldSpan::of(&Span {
                name: name.into(),
                attributes: vec![string_kv("k", "v")],
                ..Default::default()
            }),
        })
    }

    /// A span `s` of trace `t` under `parent`, starting at `start` ns, with an optional signal.
    fn span(t: [u8; 16], s: u8, parent: Option<u8>, start: u64, sig: Option<&str>) -> Node {
        Node {
            trace_id: t,
            span_id: [s; 8],
            shape: Some(Shape {
                parent: parent.map(|p| [p; 8]),
                kind: 0,
                start_ns: start,
                end_ns: start + 100,
            }),
            signal: sig.map(|n| signal(SignalKind::Status, n)),
            agent: None,
            name: Some(format!("span{s}").into()),
        }
    }

    fn log(t: [u8; 16], s: u8, name: &str) -> Node {
        Node {
            trace_id: t,
            span_id: [s; 8],
            shape: None,
            signal: Some(signal(SignalKind::Log, name)),
            agent: None,
            name: None,
        }
    }

    /// The nodes as one batch (the failure side's path; `add` where a run needs it).
    fn add_all(a: &mut Assembler, nodes: Vec<Node>, now: i64) -> Vec<Decided> {
        let mut out = Vec::new();
        a.add_batch(nodes, now, &mut out);
        out
    }

    #[test]
    fn a_batch_is_taken_exactly_as_its_nodes_one_by_one() {
        // Small caps, so that runs hit every case: late nodes, held spans (merged), full
        // traces, evictions for traces and for nodes, roots, logs and signals.
        let cfg = AssemblerConfig {
            trace_window_ms: 1_000,
            root_grace_ms: 200,
            max_traces: 4,
            max_spans_per_trace: 5,
            max_nodes: 12,
            min_confidence: 0.6,
            audit_below: 0,
        };
        let (mut batched, mut single) = (asm(cfg), asm(cfg));
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut now = 0;
        for round in 0..2_000 {
            let mut nodes = Vec::new();
            for _ in 0..=next(3) {
                let t = [next(8) as u8 + 1; 16];
                for _ in 0..=next(4) {
                    let s = next(6) as u8 + 1;
                    let parent = (s > 1).then(|| next(u64::from(s) - 1) as u8 + 1);
                    nodes.push(match next(10) {
                        0 => log(t, s, "log"),
                        1 | 2 => span(t, s, parent, next(50), Some("sig")),
                        _ => span(t, s, parent, next(50), None),
                    });
                }
            }
            now += next(150) as i64;
            let (mut a, mut b) = (Vec::new(), Vec::new());
            batched.add_batch(nodes.clone(), now, &mut a);
            for n in nodes {
                single.add(n, now, &mut b);
            }
            batched.tick(now, &mut a);
            single.tick(now, &mut b);
            assert_eq!(a, b, "round {round}");
            assert_eq!(
                (
                    batched.len(),
                    batched.nodes(),
                    batched.late(),
                    batched.span_overflow()
                ),
                (
                    single.len(),
                    single.nodes(),
                    single.late(),
                    single.span_overflow()
                ),
                "round {round}"
            );
        }
        assert!(batched.late() > 0 && batched.span_overflow() > 0);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        batched.drain(&mut a);
        single.drain(&mut b);
        assert_eq!(a, b);
    }

    fn decide_all(a: &mut Assembler, now: i64) -> Vec<Decided> {
        let mut out = Vec::new();
        a.tick(now, &mut out);
        out
    }

    fn only_failure(d: &[Decided]) -> &FailureRecord {
        let f: Vec<_> = d.iter().filter_map(|d| d.failure.as_ref()).collect();
        assert_eq!(f.len(), 1, "{d:?}");
        f[0]
    }

    #[test]
    fn the_signal_summary_is_the_text_a_json_map_of_the_same_fields_gives() {
        let summary = Summary {
            depth: 2,
            kind: "exception",
            label: None,
            message: "timed out \"after\" 30s",
            name: "TimeoutError",
            operation: "lookup_order",
            rule: Some("tool-timeout"),
            signal_spans: 3,
            span_name: "execute_tool lookup_order",
        };
        let map = serde_json::json!({
            "kind": "exception",
            "name": "TimeoutError",
            "message": "timed out \"after\" 30s",
            "label": null,
            "span_name": "execute_tool lookup_order",
            "operation": "lookup_order",
            "rule": "tool-timeout",
            "signal_spans": 3,
            "depth": 2,
        });
        assert_eq!(SignalSummary::of(&summary).get(), map.to_string());
    }

    #[test]
    fn tool_error_under_agent_error_through_chat_is_the_root_cause() {
        let mut a = asm(cfg());
        // agent(1, signal) → chat(2, none) → tool(3, signal)
        let nodes = vec![
            span(T, 1, None, 0, Some("agent")),
            span(T, 2, Some(1), 10, None),
            span(T, 3, Some(2), 20, Some("tool")),
        ];
        assert!(add_all(&mut a, nodes, 1_000).is_empty());
        let d = decide_all(&mut a, 3_000);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].reason, "root_ended");
        let f = only_failure(&d);
        assert_eq!(f.root_span_id, hex(&[3; 8]));
        assert_eq!(f.trace_id, hex(&T));
        assert_eq!(f.class, "class_of_tool");
        assert_eq!(f.fingerprint, "fp_tool");
        assert_eq!(f.observed_at, 1_000);
        assert_eq!(f.service, "svc");
        assert_eq!(f.signal.value()["depth"], 2);
        assert_eq!(f.signal.value()["signal_spans"], 2);
        assert_eq!(f.signal.value()["span_name"], "tool");
        assert!(a.is_empty());
    }

    #[test]
    fn the_failure_carries_its_tree_with_the_root_cause_marked() {
        let mut a = asm(cfg());
        // agent(1) → [chat(2) → tool(3, signal)], [retriever(4)]; a log signal on an unseen span 9.
        let nodes = vec![
            span(T, 4, Some(1), 30, None),
            span(T, 3, Some(2), 20, Some("tool")),
            span(T, 1, None, 0, Some("agent")),
            span(T, 2, Some(1), 10, None),
        ];
        add_all(&mut a, nodes, 0);
        let f = only_failure(&decide_all(&mut a, 3_000)).clone();
        let d = f
            .trace
            .as_ref()
            .and_then(|t| t.detail())
            .expect("a failure carries its detail");
        let names: Vec<&str> = d.tree.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(
            names,
            vec!["span1", "span2", "span3", "span4"],
            "parents first, by start"
        );
        let causes: Vec<&TreeNode> = d.tree.iter().filter(|n| n.root_cause).collect();
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].span_id, hex(&[3; 8]));
        assert_eq!(causes[0].parent_id, Some(hex(&[2; 8])));
        assert_eq!(causes[0].class.as_deref(), Some("class_of_tool"));
        assert_eq!(d.root.name, "tool");
        assert_eq!(d.root.attributes, vec![("k".to_string(), "v".to_string())]);
        assert_eq!(d.truncated, 0);
        let features = f.trace.as_ref().unwrap().features();
        assert!(features.iter().any(|t| t.contains("tool")), "{features:?}");
        assert_eq!(f.rule.as_deref(), Some("rule_tool"));
    }

    #[test]
    fn big_trees_keep_the_root_cause_and_its_ancestors() {
        let mut c = cfg();
        c.max_spans_per_trace = 1_000;
        c.max_nodes = 10_000;
        let mut a = asm(c);
        // A root with 300 children; the signal is on the last child's child.
        let mut nodes = vec![span(T, 0, None, 0, None)];
        let ids: Vec<[u8; 8]> = (1..=300u16)
            .map(|i| {
                let mut id = [0u8; 8];
                id[..2].copy_from_slice(&i.to_be_bytes());
                id
            })
            .collect();
        for (i, id) in ids.iter().enumerate() {
            let mut n = span(T, 0, Some(0), 10 + i as u64, None);
            n.span_id = *id;
            nodes.push(n);
        }
        let mut leaf = span(T, 0xEE, None, 5_000, Some("deep"));
        leaf.shape.as_mut().unwrap().parent = Some(ids[299]);
        nodes.push(leaf);
        add_all(&mut a, nodes, 0);
        let f = only_failure(&decide_all(&mut a, 30_000)).clone();
        let d = f.trace.unwrap().detail().unwrap();
        assert_eq!(d.tree.len(), MAX_TREE_NODES);
        assert_eq!(d.truncated, 302 - MAX_TREE_NODES);
        assert!(d.tree.iter().any(|n| n.root_cause));
        assert!(
            d.tree.iter().any(|n| n.span_id == hex(&ids[299])),
            "its parent is kept"
        );
    }

    #[test]
    fn queue_reasons_follow_source_confidence_and_audit() {
        let c = cfg();
        let mut s = *signal(SignalKind::Status, "x");
        assert_eq!(queue_reason(&T, &s, &c), None, "a confident rule");
        s.confidence = 0.5;
        assert_eq!(queue_reason(&T, &s, &c), Some(QueueReason::LowConfidence));
        s.rule = None;
        s.source = Source::Rule;
        assert_eq!(queue_reason(&T, &s, &c), Some(QueueReason::Fallback));
        s.source = Source::Human;
        assert_eq!(queue_reason(&T, &s, &c), None, "a person decided");
        s.source = Source::Model;
        s.confidence = 0.9;
        assert_eq!(queue_reason(&T, &s, &c), None);
        let all = AssemblerConfig {
            audit_below: u64::MAX,
            ..c
        };
        assert_eq!(queue_reason(&T, &s, &all), Some(QueueReason::Audit));
        // About audit_rate of traces are sampled.
        let tenth = AssemblerConfig {
            audit_below: (0.1 * u64::MAX as f64) as u64,
            ..c
        };
        let sampled = (0..10_000u32)
            .filter(|i| {
                let mut id = [0u8; 16];
                id[..4].copy_from_slice(&i.to_le_bytes());
                queue_reason(&id, &s, &tenth).is_some()
            })
            .count();
        assert!((800..1200).contains(&sampled), "{sampled}");
    }

    #[test]
    fn a_root_cause_without_an_agent_name_takes_its_nearest_agent_ancestors() {
        let mut a = asm(cfg());
        // agent(1, named "planner", no signal) → chat(2, named "writer") → tool(3, signal)
        let mut root = span(T, 1, None, 0, None);
        root.agent = Some("planner".into());
        let mut chat = span(T, 2, Some(1), 10, None);
        let tool = span(T, 3, Some(2), 20, Some("tool"));
        add_all(&mut a, vec![tool.clone(), chat.clone(), root], 0);
        let d = decide_all(&mut a, 3_000);
        assert_eq!(only_failure(&d).agent, "planner");
        let mut a = asm(cfg());
        chat.agent = Some("writer".into());
        let mut root = span(T, 1, None, 0, None);
        root.agent = Some("planner".into());
        add_all(&mut a, vec![tool, chat, root], 0);
        let d = decide_all(&mut a, 3_000);
        assert_eq!(only_failure(&d).agent, "writer", "the nearest one");
    }

    #[test]
    fn children_in_an_earlier_batch_than_parents() {
        let mut a = asm(cfg());
        add_all(
            &mut a,
            vec![
                span(T, 3, Some(2), 20, Some("tool")),
                span(T, 2, Some(1), 10, None),
            ],
            0,
        );
        // The root (agent, with its own signal) arrives 5s later: decided 2s after that.
        add_all(&mut a, vec![span(T, 1, None, 0, Some("agent"))], 5_000);
        assert!(decide_all(&mut a, 6_999).is_empty());
        let d = decide_all(&mut a, 7_000);
        assert_eq!(d[0].reason, "root_ended");
        let f = only_failure(&d);
        assert_eq!(f.root_span_id, hex(&[3; 8]));
        assert_eq!(f.observed_at, 0);
    }

    #[test]
    fn evaluation_failure_on_root_with_tool_error_below_is_the_tool() {
        let mut a = asm(cfg());
        let mut root = span(T, 1, None, 0, None);
        root.signal = Some(signal(SignalKind::Evaluation, "relevance"));
        add_all(
            &mut a,
            vec![root, span(T, 4, Some(1), 50, Some("lookup_order"))],
            0,
        );
        let f = only_failure(&decide_all(&mut a, 2_000)).clone();
        assert_eq!(f.root_span_id, hex(&[4; 8]));
        assert_eq!(f.class, "class_of_lookup_order");
    }

    #[test]
    fn independent_leaves_deepest_then_earliest() {
        let mut a = asm(cfg());
        // root(1) → a(2, signal, early); root → b(3) → c(4, signal, later but deeper)
        add_all(
            &mut a,
            vec![
                span(T, 1, None, 0, None),
                span(T, 2, Some(1), 5, Some("a")),
                span(T, 3, Some(1), 6, None),
                span(T, 4, Some(3), 90, Some("c")),
            ],
            0,
        );
        let f = only_failure(&decide_all(&mut a, 2_000)).clone();
        assert_eq!(f.root_span_id, hex(&[4; 8]));

        // Same depth: the earliest start wins.
        let t2 = [8; 16];
        add_all(
            &mut a,
            vec![
                span(t2, 1, None, 0, None),
                span(t2, 2, Some(1), 50, Some("late")),
                span(t2, 3, Some(1), 30, Some("early")),
            ],
            10_000,
        );
        let f = only_failure(&decide_all(&mut a, 12_000)).clone();
        assert_eq!(f.root_span_id, hex(&[3; 8]));
    }

    #[test]
    fn after_the_root_arrivals_extend_by_the_grace_up_to_a_window_after_the_root() {
        let mut a = asm(cfg());
        let rooted = [1; 16];
        let open = [2; 16];
        add_all(&mut a, vec![span(rooted, 1, None, 0, Some("x"))], 0);
        add_all(&mut a, vec![span(open, 2, Some(9), 0, Some("y"))], 0);
        // Each later node of the rooted trace pushes it to arrival + grace...
        add_all(&mut a, vec![span(rooted, 3, Some(1), 0, None)], 1_500);
        assert!(decide_all(&mut a, 3_499).is_empty());
        for (i, at) in [3_000, 4_500, 6_000, 7_500, 9_000].into_iter().enumerate() {
            add_all(
                &mut a,
                vec![span(rooted, 4 + i as u8, Some(1), 0, None)],
                at,
            );
        }
        // ...but never past root arrival + window.
        assert!(decide_all(&mut a, 9_999).is_empty());
        let d = decide_all(&mut a, 10_000);
        assert_eq!(d.len(), 2, "{d:?}");
        let rooted_d = d.iter().find(|d| d.trace_id == rooted).unwrap();
        assert_eq!(rooted_d.reason, "root_ended");
        // The open trace waited the full window after its last node.
        let open_d = d.iter().find(|d| d.trace_id == open).unwrap();
        assert_eq!(open_d.reason, "window");
        assert!(open_d.failure.is_some());
    }

    #[test]
    fn a_tool_signal_1_5s_after_the_root_joins_its_trace() {
        let mut a = asm(cfg());
        add_all(
            &mut a,
            vec![
                span(T, 1, None, 0, Some("agent")),
                span(T, 2, Some(1), 10, None),
            ],
            0,
        );
        // Another service's SDK exports the tool span 1.5s later (grace 2s).
        add_all(&mut a, vec![span(T, 3, Some(2), 20, Some("tool"))], 1_500);
        assert!(decide_all(&mut a, 3_499).is_empty());
        let d = decide_all(&mut a, 3_500);
        assert_eq!(only_failure(&d).root_span_id, hex(&[3; 8]));
        assert_eq!(only_failure(&d).signal.value()["signal_spans"], 2);
    }

    #[test]
    fn a_node_after_the_decision_is_dropped_as_late_not_a_second_failure() {
        let metrics = Arc::new(Metrics::new());
        let mut a = Assembler::new(cfg(), metrics.clone());
        add_all(&mut a, vec![span(T, 1, None, 0, Some("agent"))], 0);
        assert_eq!(
            only_failure(&decide_all(&mut a, 2_000)).root_span_id,
            hex(&[1; 8])
        );
        let late = vec![
            span(T, 3, Some(1), 20, Some("tool")),
            span(T, 4, Some(1), 30, None),
        ];
        assert!(add_all(&mut a, late, 2_500).is_empty());
        assert!(a.is_empty());
        assert_eq!(a.late(), 2);
        assert!(decide_all(&mut a, 20_000).is_empty());
        assert!(metrics
            .render()
            .contains(r#"triage_failure_side_dropped_total{reason="late"} 2"#));
        // A trace window after its decision the id is forgotten (and may be reused).
        assert_eq!(a.recently_decided(), 0);
        add_all(&mut a, vec![span(T, 5, None, 0, Some("again"))], 20_000);
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn the_record_of_decided_traces_is_capped_oldest_first() {
        let mut a = asm(cfg());
        for i in 1..=4u8 {
            add_all(&mut a, vec![span([i; 16], 1, None, 0, Some("x"))], 0);
            decide_all(&mut a, 2_000);
        }
        // max_traces (3) ids are remembered: the first is forgotten, the others are late.
        assert_eq!(a.recently_decided(), 3);
        add_all(&mut a, vec![span([4; 16], 2, Some(1), 0, Some("y"))], 2_100);
        assert_eq!((a.len(), a.late()), (0, 1));
        add_all(&mut a, vec![span([1; 16], 2, Some(1), 0, Some("y"))], 2_100);
        assert_eq!((a.len(), a.late()), (1, 1));
    }

    #[test]
    fn over_the_node_budget_the_oldest_traces_are_evicted_first() {
        let metrics = Arc::new(Metrics::new());
        let mut a = Assembler::new(
            AssemblerConfig {
                max_nodes: 4,
                ..cfg()
            },
            metrics.clone(),
        );
        add_all(
            &mut a,
            vec![
                span([1; 16], 1, Some(9), 0, Some("x")),
                span([1; 16], 2, Some(1), 0, None),
            ],
            0,
        );
        add_all(
            &mut a,
            vec![
                span([2; 16], 1, Some(9), 0, None),
                span([2; 16], 2, Some(1), 0, None),
            ],
            1,
        );
        assert_eq!(a.nodes(), 4);
        // Merging into a held node needs no room.
        assert!(add_all(&mut a, vec![span([2; 16], 2, Some(1), 0, Some("y"))], 2).is_empty());
        let d = add_all(&mut a, vec![span([3; 16], 1, Some(9), 0, None)], 3);
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].trace_id, d[0].reason), ([1; 16], "evicted"));
        assert!(d[0].failure.is_some());
        assert_eq!((a.len(), a.nodes()), (2, 3));
        // A new node of the trace being added to evicts the others, never itself.
        let d = add_all(&mut a, vec![span([3; 16], 2, Some(1), 0, None)], 4);
        assert!(d.is_empty());
        let d = add_all(&mut a, vec![span([3; 16], 3, Some(1), 0, None)], 5);
        assert_eq!((d[0].trace_id, d[0].reason), ([2; 16], "evicted"));
        assert_eq!((a.len(), a.nodes()), (1, 3));
        add_all(&mut a, vec![span([3; 16], 4, Some(1), 0, None)], 6);
        // Alone at the budget, a trace's further nodes are counted, not held.
        add_all(&mut a, vec![span([3; 16], 5, Some(1), 0, None)], 7);
        assert_eq!((a.nodes(), a.span_overflow()), (4, 1));
        assert!(metrics
            .render()
            .contains(r#"triage_traces_decided_total{reason="evicted"} 2"#));
        // The evicted traces' later nodes are late, not new traces.
        add_all(&mut a, vec![span([1; 16], 3, Some(1), 0, Some("z"))], 8);
        assert_eq!((a.len(), a.late()), (1, 1));
    }

    #[test]
    fn at_the_cap_the_oldest_is_evicted_and_skeletons_alone_give_nothing() {
        let mut a = asm(cfg());
        for i in 1..=3u8 {
            add_all(
                &mut a,
                vec![span([i; 16], 1, Some(9), 0, Some("x"))],
                i64::from(i),
            );
        }
        // A skeleton-only trace takes the place of the oldest.
        let d = add_all(&mut a, vec![span([4; 16], 1, Some(9), 0, None)], 10);
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].trace_id, d[0].reason), ([1; 16], "evicted"));
        assert!(d[0].failure.is_some());
        assert_eq!(a.len(), 3);
        let mut out = Vec::new();
        a.drain(&mut out);
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|d| d.reason == "shutdown"));
        assert_eq!(out.iter().filter(|d| d.failure.is_some()).count(), 2);
        assert!(out
            .iter()
            .any(|d| d.trace_id == [4; 16] && d.failure.is_none()));
        assert!(a.is_empty());
    }

    #[test]
    fn spans_over_the_cap_are_counted_not_recorded() {
        let mut a = asm(cfg());
        let nodes = (1..=7u8).map(|s| span(T, s, Some(0xee), 0, None)).collect();
        add_all(&mut a, nodes, 0);
        assert_eq!(a.span_overflow(), 2);
        // A node already held still merges at the cap.
        add_all(&mut a, vec![span(T, 1, Some(0xee), 0, Some("x"))], 0);
        assert_eq!(a.span_overflow(), 2);
        let f = only_failure(&decide_all(&mut a, 10_000)).clone();
        assert_eq!(f.root_span_id, hex(&[1; 8]));
    }

    #[test]
    fn log_signal_before_and_after_its_span() {
        for log_first in [true, false] {
            let mut a = asm(cfg());
            let skeletons = vec![
                span(T, 1, None, 0, Some("agent")),
                span(T, 2, Some(1), 10, None),
                span(T, 3, Some(2), 20, None),
            ];
            if log_first {
                add_all(&mut a, vec![log(T, 3, "ToolError")], 0);
                add_all(&mut a, skeletons, 100);
            } else {
                add_all(&mut a, skeletons, 0);
                add_all(&mut a, vec![log(T, 3, "ToolError")], 100);
            }
            let d = decide_all(&mut a, 2_100);
            let f = only_failure(&d);
            assert_eq!(f.root_span_id, hex(&[3; 8]), "log first: {log_first}");
            assert_eq!(f.signal.value()["kind"], "log");
            assert_eq!(f.signal.value()["depth"], 2);
            assert_eq!(f.class, "class_of_ToolError");
        }
    }

    #[test]
    fn a_span_signal_wins_over_a_log_signal_on_the_same_span() {
        let mut a = asm(cfg());
        add_all(&mut a, vec![log(T, 3, "from_log")], 0);
        add_all(&mut a, vec![span(T, 3, None, 0, Some("from_span"))], 0);
        add_all(&mut a, vec![log(T, 3, "later_log")], 0);
        let f = only_failure(&decide_all(&mut a, 2_000)).clone();
        assert_eq!(f.class, "class_of_from_span");
    }

    #[test]
    fn a_parent_cycle_does_not_hang() {
        let mut a = asm(cfg());
        add_all(
            &mut a,
            vec![
                span(T, 1, Some(2), 0, Some("a")),
                span(T, 2, Some(1), 0, Some("b")),
            ],
            0,
        );
        let d = decide_all(&mut a, 10_000);
        // Both explain each other: any of them is taken rather than no failure.
        assert_eq!(only_failure(&d).root_span_id, hex(&[1; 8]));
    }
}
