//! A failure record for store tests, shared by the test crates that write failures directly
//! (included with `#[path]`).

use serde_json::json;
use triage_loop::classify::Source;
use triage_loop::remediation::store::FailureRecord;

/// Failure `n` of `fingerprint`, observed at `observed_at`: a rule-classified tool timeout of
/// agent `planner` on `agent-svc` 1.0.0, without a trace snapshot.
pub fn record(fingerprint: &str, n: u64, observed_at: i64) -> FailureRecord {
    FailureRecord {
        trace_id: format!("{n:032x}"),
        root_span_id: format!("{n:016x}"),
        class: "logic_tool".into(),
        source: Source::Rule,
        confidence: 0.9,
        fingerprint: fingerprint.into(),
        remediation: "tool_fix".into(),
        agent: "planner".into(),
        service: "agent-svc".into(),
        service_version: Some("1.0.0".into()),
        observed_at,
        signal: json!({"kind": "exception", "type": "TimeoutError"}).into(),
        rule: Some("tool-timeout".into()),
        queue_reason: None,
        trace: None,
    }
}
