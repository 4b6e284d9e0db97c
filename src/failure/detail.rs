//! What a person (the triage page), the LLM judge and the learned model see of one failure: the
//! root cause span (its attributes and every signal on it) and the trace around it as a tree.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::failure::{hex, signal_view, IdHash, Node, SignalNode};

/// Attributes kept per root-cause span.
pub const MAX_ATTRIBUTES: usize = 48;
/// Attribute values longer than this (in chars) are cut.
pub const MAX_ATTRIBUTE_CHARS: usize = 256;
/// Signals kept per span.
pub const MAX_SIGNALS: usize = 8;
/// Spans kept in a failure's tree (the root cause, its ancestors and the rest in start order).
pub const MAX_TREE_NODES: usize = 200;

/// One failure signal as shown to people and to the judge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalView {
    /// status, exception, evaluation, guardrail, feedback, log.
    pub kind: String,
    /// The error type, exception type, evaluation name…
    pub name: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
}

/// The root cause span.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RootSpan {
    pub name: String,
    /// OTLP span kind as its short name: internal, server, client, producer, consumer, unspecified.
    pub kind: String,
    /// Span attributes (values rendered as text), at most `MAX_ATTRIBUTES`, in span order.
    pub attributes: Vec<(String, String)>,
    /// Every signal on the span, most specific first, at most `MAX_SIGNALS`.
    pub signals: Vec<SignalView>,
}

/// One span of the failed trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TreeNode {
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// `None` for a root span or a span whose parent was not seen.
    #[serde(default)]
    pub parent_id: Option<String>,
    pub name: String,
    pub kind: String,
    /// Unix nanoseconds; 0 when unknown (a signal from a log record whose span was not seen).
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    /// The span's class, when it carries a signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// The span's primary signal, when it carries one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<SignalView>,
    /// True for the root cause.
    #[serde(default)]
    pub root_cause: bool,
}

/// The detail of one failure, stored with the failures a person may look at (queued ones and
/// the first of each issue or cycle).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureDetail {
    pub root: RootSpan,
    /// Spans of the trace, parents before children, at most `MAX_TREE_NODES`.
    pub tree: Vec<TreeNode>,
    /// Spans of the trace left out of `tree`.
    #[serde(default)]
    pub truncated: usize,
}

/// The OTLP span kind number as its short name.
pub fn kind_name(kind: i32) -> &'static str {
    match kind {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "unspecified",
    }
}

/// A decided failed trace as the failure side held it (moved, not copied), from which its
/// detail and its root cause's feature tokens are made on demand: only for the failures the
/// store keeps them for (queued ones and those opening an issue or cycle), so the others cost
/// nothing more than holding their trace did. Cheap to clone.
#[derive(Clone)]
pub struct TraceSnapshot(Arc<Snapshot>);

/// A trace's nodes by span id.
pub type Nodes = HashMap<[u8; 8], Node, IdHash>;

enum Snapshot {
    Trace {
        nodes: Nodes,
        cause: [u8; 8],
    },
    Made {
        detail: FailureDetail,
        features: Vec<String>,
    },
}

impl TraceSnapshot {
    /// The trace's `nodes`, whose root cause is `cause` (a signal node among them).
    pub fn of_trace(nodes: Nodes, cause: [u8; 8]) -> Self {
        TraceSnapshot(Arc::new(Snapshot::Trace { nodes, cause }))
    }

    /// A snapshot of a detail and features made elsewhere (stored failures, tests).
    pub fn of_parts(detail: FailureDetail, features: Vec<String>) -> Self {
        TraceSnapshot(Arc::new(Snapshot::Made { detail, features }))
    }

    fn cause(&self) -> Option<(&Nodes, &Node, &SignalNode)> {
        match &*self.0 {
            Snapshot::Trace { nodes, cause } => {
                let node = nodes.get(cause)?;
                Some((nodes, node, node.signal.as_deref()?))
            }
            Snapshot::Made { .. } => None,
        }
    }

    /// The detail of the failure (`None` only if the root cause is missing, which
    /// `of_trace`'s callers rule out).
    pub fn detail(&self) -> Option<FailureDetail> {
        match &*self.0 {
            Snapshot::Made { detail, .. } => Some(detail.clone()),
            Snapshot::Trace { .. } => self.cause().map(|(nodes, n, s)| build(nodes, n, s)),
        }
    }

    /// The root cause's feature tokens for the learned model.
    pub fn features(&self) -> Vec<String> {
        match &*self.0 {
            Snapshot::Made { features, .. } => features.clone(),
            Snapshot::Trace { .. } => self
                .cause()
                .map(|(_, _, s)| s.features())
                .unwrap_or_default(),
        }
    }
}

impl fmt::Debug for TraceSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.0 {
            Snapshot::Trace { nodes, .. } => write!(f, "TraceSnapshot({} spans)", nodes.len()),
            Snapshot::Made { .. } => f.write_str("TraceSnapshot(made)"),
        }
    }
}

impl PartialEq for TraceSnapshot {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.detail() == other.detail()
    }
}

/// The root cause's detail and the trace as a tree (parents first, children by start time),
/// at most `MAX_TREE_NODES` spans: the root cause and its ancestors always, then the rest in
/// tree order.
fn build(nodes: &Nodes, cause: &Node, s: &SignalNode) -> FailureDetail {
    // `IdHash` ignores the discriminant: `None` hashes as the seed, `Some(id)` as its id.
    let mut children: HashMap<Option<[u8; 8]>, Vec<&Node>, IdHash> = HashMap::default();
    for n in nodes.values() {
        let parent = n
            .shape
            .and_then(|s| s.parent)
            .filter(|p| nodes.contains_key(p));
        children.entry(parent).or_default().push(n);
    }
    for list in children.values_mut() {
        list.sort_by_key(|n| (n.shape.map_or(u64::MAX, |s| s.start_ns), n.span_id));
    }
    // Depth-first from the roots; a parent cycle leaves its spans out of the walk, so they
    // are appended after it.
    let mut order: Vec<&Node> = Vec::with_capacity(nodes.len());
    let mut seen: HashSet<[u8; 8], IdHash> =
        HashSet::with_capacity_and_hasher(nodes.len(), IdHash::default());
    let mut stack: Vec<&Node> = children
        .get(&None)
        .into_iter()
        .flatten()
        .rev()
        .copied()
        .collect();
    while let Some(n) = stack.pop() {
        if !seen.insert(n.span_id) {
            continue;
        }
        order.push(n);
        if let Some(kids) = children.get(&Some(n.span_id)) {
            stack.extend(kids.iter().rev().copied());
        }
    }
    let mut rest: Vec<&Node> = nodes
        .values()
        .filter(|n| !seen.contains(&n.span_id))
        .collect();
    rest.sort_by_key(|n| n.span_id);
    order.extend(rest);
    let mut must: HashSet<[u8; 8], IdHash> = HashSet::default();
    let mut cur = Some(cause);
    for _ in 0..=nodes.len() {
        let Some(n) = cur else { break };
        must.insert(n.span_id);
        cur = n.shape.and_then(|s| s.parent).and_then(|p| nodes.get(&p));
    }
    let mut room = MAX_TREE_NODES.saturating_sub(must.len());
    let mut tree = Vec::with_capacity(order.len().min(MAX_TREE_NODES));
    for n in &order {
        let keep = must.contains(&n.span_id) || {
            let fits = room > 0;
            room = room.saturating_sub(1);
            fits
        };
        if keep {
            tree.push(tree_node(n, n.span_id == cause.span_id));
        }
    }
    let kind = cause.shape.map_or(0, |s| s.kind);
    FailureDetail {
        root: RootSpan {
            name: s.span_name().to_string(),
            kind: kind_name(kind).to_string(),
            attributes: s.attribute_texts(),
            signals: s.signal_views(),
        },
        truncated: order.len() - tree.len(),
        tree,
    }
}

fn tree_node(n: &Node, root_cause: bool) -> TreeNode {
    let sig = n.signal.as_deref();
    TreeNode {
        span_id: hex(&n.span_id),
        parent_id: n.shape.and_then(|s| s.parent).map(|p| hex(&p)),
        name: n
            .name
            .as_deref()
            .or(sig.map(|s| s.span_name()))
            .unwrap_or("")
            .to_string(),
        kind: kind_name(n.shape.map_or(0, |s| s.kind)).to_string(),
        start_unix_nano: n.shape.map_or(0, |s| s.start_ns),
        end_unix_nano: n.shape.map_or(0, |s| s.end_ns),
        class: sig.map(|s| s.class.clone()),
        signal: sig.and_then(|s| s.signals.first()).map(signal_view),
        root_cause,
    }
}
