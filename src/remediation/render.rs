//! Rendering of one dispatch: the `Remediation` every sink delivers, with its templated title and body.
//!
//! Templates (`processors.failure_triage.templates.title` / `.body`) may use these placeholders:
//!
//! | placeholder         | value                                                              |
//! |---------------------|--------------------------------------------------------------------|
//! | `{issue_id}`        | the issue's id                                                     |
//! | `{cycle}`           | the issue cycle this dispatch belongs to (1, then +1 per regression) |
//! | `{class}`           | the failure class                                                  |
//! | `{remediation}`     | the class's remediation path (e.g. `tool_fix`)                     |
//! | `{owner}`           | who owns that path (from the taxonomy)                             |
//! | `{agent}`           | `gen_ai.agent.name`, or the service name                           |
//! | `{service}`         | the service of the failure                                         |
//! | `{service_version}` | its version (empty when unknown)                                   |
//! | `{operation}`       | the failing operation from the signal summary (`operation`, `span_name`, `tool`, `name`) |
//! | `{fingerprint}`     | the issue's fingerprint                                            |
//! | `{occurrences}`     | the issue's occurrence count when dispatched                       |
//! | `{first_seen}`      | the issue's first occurrence, RFC 3339 (UTC)                       |
//! | `{trace_id}`        | trace id of the root cause                                         |
//! | `{span_id}`         | span id of the root cause                                          |
//! | `{trace_url}`       | `trace_url_template` with `{trace_id}` and `{span_id}` filled in, or `(no trace URL configured)` |
//! | `{signal}`          | the failure's signal summary as compact JSON                       |
//! | `{state}`           | the issue's state when dispatched                                  |
//!
//! Unknown placeholders (and lone braces) are left as they are.

use serde::Serialize;

use crate::classify::taxonomy::ClassDef;
use crate::config::TemplatesConfig;
use crate::remediation::store::{Dispatch, FailureRecord, IssueDetail, IssueState};

/// What `{trace_url}` renders to when no `trace_url_template` is configured.
pub const NO_TRACE_URL: &str = "(no trace URL configured)";

/// The longest `{signal}` rendering, in bytes.
const MAX_SIGNAL_LEN: usize = 2_000;

/// A dispatch that cannot be rendered; retrying will not help.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("dispatch {dispatch_id}: payload is not a failure record: {source}")]
    Payload {
        dispatch_id: i64,
        #[source]
        source: serde_json::Error,
    },
}

/// One unit of remediation work, as every sink sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Remediation {
    /// `issue:cycle:sink`; stable across redeliveries.
    pub idempotency_key: String,
    /// The sink name this copy goes to.
    pub sink: String,
    pub issue_id: i64,
    pub cycle: i64,
    pub class: String,
    /// The remediation path.
    pub remediation: String,
    pub owner: String,
    pub title: String,
    pub body: String,
    pub agent: String,
    pub service: String,
    pub service_version: Option<String>,
    pub operation: String,
    pub fingerprint: String,
    pub occurrences: i64,
    /// Unix milliseconds.
    pub first_seen: i64,
    /// Trace id of the root cause, 32 hex digits.
    pub trace_id: String,
    /// Span id of the root cause, 16 hex digits.
    pub span_id: String,
    pub trace_url: Option<String>,
    pub signal: serde_json::Value,
    pub state: IssueState,
    /// When this dispatch attempt was rendered, unix milliseconds.
    pub dispatched_at: i64,
    /// Which attempt this is: 1 the first time, more after a failure or a lease that ran out
    /// (a sink may then look for what an earlier attempt left). Not part of the payload.
    #[serde(skip_serializing)]
    pub attempt: i64,
}

/// The settings rendering needs.
#[derive(Debug, Clone)]
pub struct Renderer {
    pub templates: TemplatesConfig,
    pub trace_url_template: Option<String>,
}

impl Renderer {
    /// Builds the remediation of `dispatch` for its issue; `class` is the taxonomy's definition
    /// (absent when the class left the taxonomy: the owner is then `unowned`).
    pub fn render(
        &self,
        dispatch: &Dispatch,
        detail: &IssueDetail,
        class: Option<&ClassDef>,
        now: i64,
    ) -> Result<Remediation, RenderError> {
        let record: FailureRecord =
            serde_json::from_value(dispatch.payload.clone()).map_err(|source| {
                RenderError::Payload {
                    dispatch_id: dispatch.id,
                    source,
                }
            })?;
        let issue = &detail.issue;
        let trace_url = self
            .trace_url_template
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(|t| trace_url(t, &record.trace_id, &record.root_span_id));
        let mut r = Remediation {
            idempotency_key: dispatch.idempotency_key.clone(),
            sink: dispatch.sink.clone(),
            issue_id: issue.id,
            cycle: dispatch.cycle,
            class: issue.class.clone(),
            remediation: class.map_or_else(|| issue.remediation.clone(), |c| c.remediation.clone()),
            owner: class.map_or_else(|| "unowned".to_string(), |c| c.owner.clone()),
            title: String::new(),
            body: String::new(),
            agent: record.agent,
            service: record.service,
            service_version: record.service_version,
            operation: operation(&record.signal.value()),
            fingerprint: issue.fingerprint.clone(),
            occurrences: issue.occurrences,
            first_seen: issue.first_seen,
            trace_id: record.trace_id,
            span_id: record.root_span_id,
            trace_url,
            signal: record.signal.value(),
            state: issue.state,
            dispatched_at: now,
            attempt: dispatch.attempts,
        };
        r.title = fill(&self.templates.title, |name| placeholder(&r, name));
        r.body = fill(&self.templates.body, |name| placeholder(&r, name));
        Ok(r)
    }
}

/// `template` with `{trace_id}` and `{span_id}` filled in.
pub fn trace_url(template: &str, trace_id: &str, span_id: &str) -> String {
    fill(template, |name| match name {
        "trace_id" => Some(trace_id.to_string()),
        "span_id" => Some(span_id.to_string()),
        _ => None,
    })
}

/// The value of one placeholder, `None` for unknown names.
fn placeholder(r: &Remediation, name: &str) -> Option<String> {
    Some(match name {
        "issue_id" => r.issue_id.to_string(),
        "cycle" => r.cycle.to_string(),
        "class" => r.class.clone(),
        "remediation" => r.remediation.clone(),
        "owner" => r.owner.clone(),
        "agent" => r.agent.clone(),
        "service" => r.service.clone(),
        "service_version" => r.service_version.clone().unwrap_or_default(),
        "operation" => r.operation.clone(),
        "fingerprint" => r.fingerprint.clone(),
        "occurrences" => r.occurrences.to_string(),
        "first_seen" => rfc3339(r.first_seen),
        "trace_id" => r.trace_id.clone(),
        "span_id" => r.span_id.clone(),
        "trace_url" => r.trace_url.clone().unwrap_or_else(|| NO_TRACE_URL.into()),
        "signal" => signal_text(&r.signal),
        "state" => r.state.as_str().to_string(),
        _ => return None,
    })
}

/// Replaces each `{name}` in `template` for which `value` answers; everything else stays as it is.
pub fn fill(template: &str, value: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let name_end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
        match name_end {
            Some(end) if end > 0 && after[end..].starts_with('}') => {
                let name = &after[..end];
                match value(name) {
                    Some(v) => out.push_str(&v),
                    None => {
                        out.push('{');
                        out.push_str(name);
                        out.push('}');
                    }
                }
                rest = &after[end + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds; negative times clamp to the epoch.
pub use crate::clock::rfc3339;

/// The failing operation named by a signal summary, or `unknown operation`.
fn operation(signal: &serde_json::Value) -> String {
    ["operation", "span_name", "tool", "gen_ai.tool.name", "name"]
        .iter()
        .find_map(|k| signal.get(k).and_then(|v| v.as_str()))
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown operation")
        .to_string()
}

/// The signal summary as compact JSON, cut at `MAX_SIGNAL_LEN` bytes.
fn signal_text(signal: &serde_json::Value) -> String {
    let s = signal.to_string();
    if s.len() > MAX_SIGNAL_LEN {
        format!("{}…", crate::text::cut(&s, MAX_SIGNAL_LEN))
    } else {
        s
    }
}

/// A rendered remediation for unit tests.
#[cfg(test)]
pub(crate) fn sample(key: &str) -> Remediation {
    Remediation {
        idempotency_key: key.into(),
        sink: "jsonl".into(),
        issue_id: 7,
        cycle: 1,
        class: "logic_tool".into(),
        remediation: "tool_fix".into(),
        owner: "agent-engineering".into(),
        title: "t".into(),
        body: "b".into(),
        agent: "planner".into(),
        service: "svc".into(),
        service_version: None,
        operation: "lookup".into(),
        fingerprint: "fp".into(),
        occurrences: 1,
        first_seen: 0,
        trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
        span_id: "b7ad6b7169203331".into(),
        trace_url: None,
        signal: serde_json::json!({}),
        state: IssueState::Open,
        dispatched_at: 0,
        attempt: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Source;
    use crate::remediation::store::Issue;

    fn detail() -> IssueDetail {
        IssueDetail {
            issue: Issue {
                id: 7,
                fingerprint: "fp".into(),
                class: "gone_class".into(),
                source: Source::Rule,
                confidence: 1.0,
                agent: "planner".into(),
                service: "svc".into(),
                remediation: "old_path".into(),
                state: IssueState::Regressed,
                cycle: 2,
                occurrences: 3,
                first_seen: 1_700_000_000_000,
                last_seen: 1_700_000_000_000,
                classified_at: None,
                dispatched_at: None,
                shipped_at: None,
                shipped_version: None,
                verified_at: None,
                cycle_started_at: 1_700_000_000_000,
            },
            agents: vec![],
            services: vec![],
            versions: vec![],
            sample_trace_ids: vec![],
            recent_occurrences: vec![],
            transitions: vec![],
            dispatches: vec![],
        }
    }

    #[test]
    fn render_without_trace_url_or_class() {
        let r = sample("7:2:jsonl");
        let payload = serde_json::json!({
            "trace_id": r.trace_id, "root_span_id": r.span_id, "class": "gone_class",
            "source": "rule", "confidence": 1.0, "fingerprint": "fp", "remediation": "old_path",
            "agent": "planner", "service": "svc", "service_version": null,
            "observed_at": 1, "signal": {"tool": "search"}, "cycle": 2,
        });
        let d = Dispatch {
            id: 1,
            issue_id: 7,
            cycle: 2,
            sink: "jsonl".into(),
            idempotency_key: "7:2:jsonl".into(),
            payload,
            attempts: 1,
            created_at: 0,
            next_attempt_at: 0,
            delivered_at: None,
            last_error: None,
            superseded_at: None,
        };
        let renderer = Renderer {
            templates: TemplatesConfig {
                title: "{class}/{remediation}/{owner} {operation} {nope}".into(),
                body: "{trace_url} {state} {cycle} {occurrences} {service_version}|".into(),
            },
            trace_url_template: None,
        };
        let r = renderer.render(&d, &detail(), None, 5).unwrap();
        assert_eq!(r.title, "gone_class/old_path/unowned search {nope}");
        assert_eq!(r.body, "(no trace URL configured) regressed 2 3 |");
        assert_eq!(r.trace_url, None);

        let mut bad = d.clone();
        bad.payload = serde_json::json!({"cycle": 2});
        assert!(renderer.render(&bad, &detail(), None, 5).is_err());
    }

    #[test]
    fn fill_replaces_known_and_keeps_unknown() {
        let v = |n: &str| (n == "a").then(|| "X".to_string());
        assert_eq!(fill("{a}-{b}-{a}", v), "X-{b}-X");
        assert_eq!(fill("{ {a} } {} {a", v), "{ X } {} {a");
        assert_eq!(fill("json {\"k\": 1}", v), "json {\"k\": 1}");
        assert_eq!(fill("ünï{a}cödé", v), "ünïXcödé");
    }

    #[test]
    fn trace_url_fills_ids() {
        assert_eq!(
            trace_url("http://j/trace/{trace_id}?s={span_id}&x={x}", "ab", "cd"),
            "http://j/trace/ab?s=cd&x={x}"
        );
    }

    #[test]
    fn rfc3339_is_utc_millis() {
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(-5), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn operation_falls_back() {
        assert_eq!(
            operation(&serde_json::json!({"span_name": "lookup"})),
            "lookup"
        );
        assert_eq!(operation(&serde_json::json!([1])), "unknown operation");
    }
}
