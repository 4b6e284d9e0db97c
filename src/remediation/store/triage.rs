//! Store types of human triage: the queue, relabels (by a person or the LLM judge), labels the
//! model learns from, the model's snapshot and the judge's answers.

use serde::{Deserialize, Serialize};

use super::{Issue, Occurrence, Result, StoreError};
use crate::classify::Source;

/// The longest label note or judge rationale kept, in bytes.
pub const MAX_NOTE_LEN: usize = 4_000;
/// The longest raw judge answer kept, in bytes.
pub const MAX_RAW_LEN: usize = 8_000;

/// Why a failure waits for a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueReason {
    /// No rule or model decided: the class is the taxonomy's fallback.
    Fallback,
    /// Decided with less than `min_confidence`.
    LowConfidence,
    /// Decided confidently, sampled (`audit_rate`) so the automatic classes keep being checked.
    Audit,
}

impl QueueReason {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueReason::Fallback => "fallback",
            QueueReason::LowConfidence => "low_confidence",
            QueueReason::Audit => "audit",
        }
    }

    /// The reason stored as `s`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "fallback" => Ok(QueueReason::Fallback),
            "low_confidence" => Ok(QueueReason::LowConfidence),
            "audit" => Ok(QueueReason::Audit),
            other => Err(StoreError::Invalid(format!(
                "unknown queue reason {other:?} in store"
            ))),
        }
    }
}

/// One entry of the triage queue: an issue's newest unresolved queued failure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueItem {
    pub failure: Occurrence,
    /// The issue's occurrence count.
    pub occurrences: i64,
}

/// A failure as stored, with what the triage page and the judge need.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredFailure {
    pub failure: Occurrence,
    /// A `FailureDetail` as JSON, when it was kept.
    pub detail: Option<serde_json::Value>,
    /// The root cause's feature tokens, when they were kept.
    pub features: Vec<String>,
    /// The judge's answers about this failure, oldest first.
    pub judgements: Vec<JudgementRecord>,
}

/// A new class for a failure's whole issue, from a person (`Source::Human`) or the judge
/// (`Source::Llm`).
///
/// In one transaction: the issue takes `class`, `source`, `confidence` and `remediation`; its
/// unresolved queued failures are resolved (by `human`, or by `llm`); a human label is stored
/// (with the features of the failure, or else of the issue's newest failure that has them).
/// When the class changes while the issue still waits for its fix (open, dispatched or
/// regressed), it is re-routed: its current cycle's dispatches not yet delivered are superseded
/// (never delivered), `route` is bumped and one dispatch per sink of `sinks` is enqueued with
/// key `issue:cycle.route:sink`; the change is stored as a transition in the same state.
/// The judge never overrides a person: with `Source::Llm` on an issue a person decided, nothing
/// changes (`applied` false).
#[derive(Debug, Clone, PartialEq)]
pub struct Relabel {
    pub failure_id: i64,
    pub class: String,
    pub remediation: String,
    pub source: Source,
    pub confidence: f64,
    pub note: String,
    pub sinks: Vec<String>,
    pub at: i64,
}

impl Relabel {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.class.is_empty() {
            return Err(StoreError::Invalid("class is empty".into()));
        }
        if !matches!(self.source, Source::Human | Source::Llm) {
            return Err(StoreError::Invalid(format!(
                "a relabel comes from a person or the judge, not {}",
                self.source
            )));
        }
        if !(0.0..=1.0).contains(&self.confidence) {
            return Err(StoreError::Invalid(format!(
                "confidence must be in 0..=1, got {}",
                self.confidence
            )));
        }
        if self.note.len() > MAX_NOTE_LEN {
            return Err(StoreError::Invalid(format!(
                "note is {} bytes, at most {MAX_NOTE_LEN} allowed",
                self.note.len()
            )));
        }
        super::validate_sinks(&self.sinks)
    }
}

/// What `relabel` did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RelabelOutcome {
    /// The issue after the relabel.
    pub issue: Issue,
    pub from_class: String,
    pub from_source: Source,
    /// False when the judge was refused (a person had decided).
    pub applied: bool,
    /// The stored human label.
    pub label: Option<LabelRow>,
    pub rerouted: bool,
    /// Dispatches superseded by the re-route.
    pub superseded: u32,
    pub dispatches_enqueued: u32,
}

/// One human label: the failure's issue (fingerprint) is `to_class`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelRow {
    pub id: i64,
    pub failure_id: i64,
    pub issue_id: i64,
    pub fingerprint: String,
    pub from_class: String,
    pub to_class: String,
    pub note: String,
    /// The feature tokens the model learns this label from (empty when none were kept).
    pub features: Vec<String>,
    pub at: i64,
}

/// One answer (or failed attempt) of the LLM judge about a failure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JudgementRecord {
    pub failure_id: i64,
    pub at: i64,
    /// `answered`, or why there is no usable answer (`JudgeError::outcome`).
    pub outcome: String,
    pub class: Option<String>,
    pub confidence: Option<f64>,
    pub rationale: Option<String>,
    /// The answer's text as the endpoint sent it (cut to `MAX_RAW_LEN`).
    pub raw: Option<String>,
    pub model: Option<String>,
    pub latency_ms: Option<i64>,
    pub tokens: Option<i64>,
    /// Whether the answer changed the issue's class.
    pub applied: bool,
}

/// Failures of one class in one time bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BucketCount {
    pub class: String,
    pub bucket: i64,
    pub count: i64,
}

/// The idempotency key of a dispatch of route `route` (0 until the first re-route).
pub fn routed_key(issue_id: i64, cycle: i64, route: i64, sink: &str) -> String {
    if route == 0 {
        super::idempotency_key(issue_id, cycle, sink)
    } else {
        format!("{issue_id}:{cycle}.{route}:{sink}")
    }
}

/// `OCCURRENCE_COLS` with each column prefixed by `alias.`.
pub(crate) fn occurrence_cols_of(alias: &str) -> String {
    super::OCCURRENCE_COLS
        .split(',')
        .map(|c| format!("{alias}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) use crate::text::cut;

/// The dispatch payload of a re-routed issue: its failure with the new class and remediation.
pub(crate) fn reroute_payload(
    failure: &Occurrence,
    issue: &Issue,
    cycle: i64,
) -> serde_json::Value {
    serde_json::json!({
        "trace_id": failure.trace_id,
        "root_span_id": failure.root_span_id,
        "class": issue.class,
        "source": issue.source.as_str(),
        "confidence": issue.confidence,
        "fingerprint": issue.fingerprint,
        "remediation": issue.remediation,
        "agent": failure.agent,
        "service": failure.service,
        "service_version": failure.service_version,
        "observed_at": failure.observed_at,
        "signal": failure.signal,
        "rule": failure.rule,
        "cycle": cycle,
    })
}

/// The transition reason of a relabel from `from_class`: re-routed, relabelled or confirmed, by
/// whom, with the note's start.
pub(crate) fn relabel_reason(
    from_class: &str,
    req: &Relabel,
    note: &str,
    rerouted: bool,
) -> String {
    let what = if from_class == req.class {
        format!("class {} confirmed", req.class)
    } else if rerouted {
        format!("re-routed {from_class} → {}", req.class)
    } else {
        format!("relabelled {from_class} → {}", req.class)
    };
    let mut reason = format!("{what} by {}", req.source);
    if !note.is_empty() {
        reason.push_str(": ");
        reason.push_str(cut(note, 500));
    }
    reason
}

/// Checks a bucketed count request.
pub(crate) fn validate_buckets(from: i64, to: i64, step_ms: i64) -> Result<()> {
    if step_ms <= 0 || to <= from {
        return Err(StoreError::Invalid(format!(
            "need from < to and a positive step, got [{from}, {to}) step {step_ms} ms"
        )));
    }
    if (to - from) / step_ms > 10_000 {
        return Err(StoreError::Invalid(
            "at most 10000 buckets per request".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_zero_keeps_the_original_key() {
        assert_eq!(routed_key(7, 2, 0, "jsonl"), "7:2:jsonl");
        assert_eq!(routed_key(7, 2, 1, "jsonl"), "7:2.1:jsonl");
    }

    #[test]
    fn reasons_round_trip() {
        for r in [
            QueueReason::Fallback,
            QueueReason::LowConfidence,
            QueueReason::Audit,
        ] {
            assert_eq!(QueueReason::parse(r.as_str()).unwrap(), r);
        }
        assert!(QueueReason::parse("nope").is_err());
    }
}
