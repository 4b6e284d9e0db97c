//! What a person (the triage page), the LLM judge and the learned model see of one failure: the
//! root cause span (its attributes and every signal on it) and the trace around it as a tree.

use serde::{Deserialize, Serialize};

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
