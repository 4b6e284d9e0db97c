//! The trace assembler: holds the nodes of each trace for a bounded window, then decides the
//! trace, attributing a failed one to its root cause. Pure and driven by the caller's clock.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde_json::json;

use crate::admin::metrics::Metrics;
use crate::classify::signals::SignalKind;
use crate::config::FailureTriage;
use crate::failure::{hex, Node, SignalNode};
use crate::remediation::store::FailureRecord;

/// Windows and caps of the assembler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssemblerConfig {
    /// A trace is decided this long after its last node arrived.
    pub trace_window_ms: i64,
    /// ...or this long after its root span arrived, whichever is first.
    pub root_grace_ms: i64,
    pub max_traces: usize,
    pub max_spans_per_trace: usize,
}

impl From<&FailureTriage> for AssemblerConfig {
    fn from(c: &FailureTriage) -> Self {
        AssemblerConfig {
            trace_window_ms: c.trace_window.as_millis().min(i64::MAX as u128) as i64,
            root_grace_ms: c.root_grace.as_millis().min(i64::MAX as u128) as i64,
            max_traces: c.max_traces.max(1),
            max_spans_per_trace: c.max_spans_per_trace.max(1),
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
    nodes: HashMap<[u8; 8], Node>,
    /// Arrival order, for eviction of the oldest.
    seq: u64,
    last_ms: i64,
    root_ms: Option<i64>,
    first_signal_ms: Option<i64>,
    deadline: i64,
}

impl Trace {
    /// The deadline and why, from the last arrival and the root's arrival.
    fn due(&self, cfg: &AssemblerConfig) -> (i64, &'static str) {
        let window = self.last_ms.saturating_add(cfg.trace_window_ms);
        match self.root_ms {
            Some(r) if r.saturating_add(cfg.root_grace_ms) <= window => {
                (r.saturating_add(cfg.root_grace_ms), "root_ended")
            }
            _ => (window, "window"),
        }
    }
}

/// Holds traces and decides them (see module doc).
pub struct Assembler {
    cfg: AssemblerConfig,
    metrics: Arc<Metrics>,
    traces: HashMap<[u8; 16], Trace>,
    /// (deadline, trace id) of every held trace.
    deadlines: BTreeSet<(i64, [u8; 16])>,
    /// (arrival seq, trace id) of every held trace.
    age: BTreeSet<(u64, [u8; 16])>,
    seq: u64,
    span_overflow: u64,
}

impl Assembler {
    pub fn new(cfg: AssemblerConfig, metrics: Arc<Metrics>) -> Self {
        Assembler {
            cfg,
            metrics,
            traces: HashMap::new(),
            deadlines: BTreeSet::new(),
            age: BTreeSet::new(),
            seq: 0,
            span_overflow: 0,
        }
    }

    /// Traces held now.
    pub fn len(&self) -> usize {
        self.traces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.traces.is_empty()
    }

    /// Nodes not recorded because their trace was at `max_spans_per_trace`.
    pub fn span_overflow(&self) -> u64 {
        self.span_overflow
    }

    /// Takes one node that arrived at `now_ms`; a trace evicted to make room goes to `out`.
    pub fn add(&mut self, node: Node, now_ms: i64, out: &mut Vec<Decided>) {
        let id = node.trace_id;
        if !self.traces.contains_key(&id) {
            while self.traces.len() >= self.cfg.max_traces {
                let Some(&(_, oldest)) = self.age.first() else {
                    break;
                };
                self.decide(oldest, "evicted", out);
            }
            self.seq += 1;
            self.age.insert((self.seq, id));
            let t = Trace {
                nodes: HashMap::new(),
                seq: self.seq,
                last_ms: now_ms,
                root_ms: None,
                first_signal_ms: None,
                deadline: i64::MIN,
            };
            self.traces.insert(id, t);
        }
        let Some(t) = self.traces.get_mut(&id) else {
            return;
        };
        t.last_ms = t.last_ms.max(now_ms);
        let has_signal = node.signal.is_some();
        let is_root = node.shape.is_some_and(|s| s.parent.is_none());
        let recorded = if let Some(old) = t.nodes.get_mut(&node.span_id) {
            merge(old, node);
            true
        } else if t.nodes.len() < self.cfg.max_spans_per_trace {
            t.nodes.insert(node.span_id, node);
            true
        } else {
            false
        };
        if recorded {
            if is_root && t.root_ms.is_none() {
                t.root_ms = Some(now_ms);
            }
            if has_signal && t.first_signal_ms.is_none() {
                t.first_signal_ms = Some(now_ms);
            }
        } else {
            self.span_overflow += 1;
            self.metrics.failure_side_dropped("span_cap", 1);
        }
        let (deadline, _) = t.due(&self.cfg);
        if deadline != t.deadline {
            self.deadlines.remove(&(t.deadline, id));
            self.deadlines.insert((deadline, id));
            t.deadline = deadline;
        }
        self.metrics.assembler_traces.set(self.traces.len() as i64);
    }

    /// Decides every trace due at `now_ms`.
    pub fn tick(&mut self, now_ms: i64, out: &mut Vec<Decided>) {
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
        self.metrics.assembler_traces.set(self.traces.len() as i64);
        self.metrics.trace_decided(reason);
        out.push(Decided {
            trace_id: id,
            reason,
            failure: failure(&id, &t),
        });
    }
}

/// Merges a later copy of a span into the node already held: the span's shape fills in; a
/// signal found on the span itself wins over one from a log record.
fn merge(old: &mut Node, new: Node) {
    if new.shape.is_some() {
        old.shape = new.shape;
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
pub fn root_cause(nodes: &HashMap<[u8; 8], Node>) -> Option<(&Node, usize, usize)> {
    let mut explained: HashSet<[u8; 8]> = HashSet::new();
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
    leaves
        .into_iter()
        .filter(|(n, _)| !explained.contains(&n.span_id))
        .min_by_key(|(n, depth)| {
            let (start, end) = n
                .shape
                .map_or((u64::MAX, u64::MAX), |s| (s.start_ns, s.end_ns));
            (std::cmp::Reverse(*depth), start, end, n.span_id)
        })
        .map(|(n, depth)| (n, depth, signals))
}

/// The failure of a decided trace; `None` when it held no signal.
fn failure(id: &[u8; 16], t: &Trace) -> Option<FailureRecord> {
    let (node, depth, signal_spans) = root_cause(&t.nodes)?;
    let s: &SignalNode = node.signal.as_deref()?;
    Some(FailureRecord {
        trace_id: hex(id),
        root_span_id: hex(&node.span_id),
        class: s.class.clone(),
        source: s.source,
        confidence: s.confidence,
        fingerprint: s.fingerprint.clone(),
        remediation: s.remediation.clone(),
        agent: s.agent.clone(),
        service: s.service.clone().unwrap_or_else(|| "unknown".into()),
        service_version: s.service_version.clone(),
        observed_at: t.first_signal_ms.unwrap_or(t.last_ms),
        signal: json!({
            "kind": s.kind.as_str(),
            "name": s.name,
            "message": s.message,
            "label": s.label,
            "span_name": s.span_name,
            "operation": s.operation,
            "rule": s.rule,
            "signal_spans": signal_spans,
            "depth": depth,
        }),
    })
}
