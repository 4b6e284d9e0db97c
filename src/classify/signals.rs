//! Failure-signal detection on decoded spans (GenAI semantic conventions and OpenInference).
//!
//! The hot path runs a cheap wire-level pre-filter (`otlp::wire`); only spans it flags are decoded
//! and passed here, where the exact signals are worked out.

use std::collections::HashMap;

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{span::Event, status::StatusCode, Span};
use serde::{Deserialize, Serialize};

use crate::otlp::attributes::{get, get_bool, get_f64, get_str, value_to_string};

/// What kind of evidence said the agent got it wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    /// Span status ERROR (or `error.type` set).
    Status,
    /// An `exception` span event (or, on the failure side, an exception log record).
    Exception,
    /// A failing `gen_ai.evaluation.result` event or OpenInference `evaluations.N.*`.
    Evaluation,
    /// A guardrail or content filter that fired.
    Guardrail,
    /// Negative user feedback.
    Feedback,
    /// An exception log record correlated with the span.
    Log,
}

impl SignalKind {
    pub const ALL: [SignalKind; 6] = [
        SignalKind::Status,
        SignalKind::Exception,
        SignalKind::Evaluation,
        SignalKind::Guardrail,
        SignalKind::Feedback,
        SignalKind::Log,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SignalKind::Status => "status",
            SignalKind::Exception => "exception",
            SignalKind::Evaluation => "evaluation",
            SignalKind::Guardrail => "guardrail",
            SignalKind::Feedback => "feedback",
            SignalKind::Log => "log",
        }
    }
}

/// One failure signal found on a span.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    pub kind: SignalKind,
    /// Error type, exception type, evaluation name, guardrail name or feedback source.
    pub name: String,
    /// Status message, exception message, evaluation explanation.
    pub message: String,
    /// Evaluation or feedback label, when there is one.
    pub label: Option<String>,
    /// Evaluation or feedback score, when there is one.
    pub score: Option<f64>,
}

impl Signal {
    fn new(kind: SignalKind, name: impl Into<String>, message: impl Into<String>) -> Self {
        Signal {
            kind,
            name: name.into(),
            message: message.into(),
            label: None,
            score: None,
        }
    }
}

/// A threshold on an evaluation score: the evaluation fails below `min` or above `max`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreThreshold {
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl ScoreThreshold {
    fn fails(&self, score: f64) -> bool {
        self.min.is_some_and(|m| score < m) || self.max.is_some_and(|m| score > m)
    }
}

/// How evaluation and feedback results are judged (`processors.failure_triage.signals`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SignalConfig {
    /// Labels (case-insensitive) that mark an evaluation or feedback as failing.
    pub failing_labels: Vec<String>,
    /// Threshold for evaluations with a score and no label, unless a per-name one is set.
    pub default_threshold: ScoreThreshold,
    /// Per evaluation name thresholds, e.g. `toxicity: {max: 0.3}`.
    pub thresholds: HashMap<String, ScoreThreshold>,
}

impl Default for SignalConfig {
    fn default() -> Self {
        SignalConfig {
            failing_labels: [
                "fail",
                "failed",
                "failure",
                "false",
                "no",
                "bad",
                "negative",
                "incorrect",
                "unhelpful",
                "irrelevant",
                "hallucinated",
                "toxic",
                "unsafe",
                "off_brand",
                "off-brand",
                "rude",
                "thumbs_down",
                "thumbs-down",
                "down",
                "wrong",
                "stale",
                "unfaithful",
                "not_grounded",
                "ungrounded",
                "refused",
                "escalate",
                "escalated",
                "out_of_scope",
                "unsupported",
                "off_topic",
                "incomplete",
                "partial",
                "unresolved",
                "unrelated",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            default_threshold: ScoreThreshold {
                min: Some(0.5),
                max: None,
            },
            thresholds: HashMap::new(),
        }
    }
}

/// Span attribute and event names this module understands.
pub mod keys {
    pub const ERROR_TYPE: &str = "error.type";
    pub const FINISH_REASONS: &str = "gen_ai.response.finish_reasons";
    pub const OI_SPAN_KIND: &str = "openinference.span.kind";
    pub const OI_EVALUATIONS_PREFIX: &str = "evaluations.";
    pub const GUARDRAIL_TRIGGERED: &str = "guardrail.triggered";
    pub const GUARDRAIL_PASSED: &str = "guardrail.passed";
    pub const GUARDRAIL_NAME: &str = "guardrail.name";
    pub const FEEDBACK_PREFIX: &str = "user.feedback.";
    pub const FEEDBACK_LABEL: &str = "user.feedback.label";
    pub const FEEDBACK_SCORE: &str = "user.feedback.score";
    pub const FEEDBACK_COMMENT: &str = "user.feedback.comment";
    pub const EVENT_EXCEPTION: &str = "exception";
    pub const EVENT_EVALUATION: &str = "gen_ai.evaluation.result";
    pub const EVENT_FEEDBACK: &str = "user.feedback";
    pub const EXCEPTION_TYPE: &str = "exception.type";
    pub const EXCEPTION_MESSAGE: &str = "exception.message";
    pub const EVAL_NAME: &str = "gen_ai.evaluation.name";
    pub const EVAL_SCORE: &str = "gen_ai.evaluation.score.value";
    pub const EVAL_LABEL: &str = "gen_ai.evaluation.score.label";
    pub const EVAL_EXPLANATION: &str = "gen_ai.evaluation.explanation";
    pub const CONTENT_FILTER: &str = "content_filter";
}

impl SignalConfig {
    fn label_fails(&self, label: &str) -> bool {
        let label = label.trim();
        self.failing_labels
            .iter()
            .any(|l| l.eq_ignore_ascii_case(label))
    }

    fn score_fails(&self, name: &str, score: f64) -> bool {
        self.thresholds
            .get(name)
            .unwrap_or(&self.default_threshold)
            .fails(score)
    }

    /// An evaluation fails when its label is a failing label, or, with no label, when its
    /// score is outside the threshold.
    fn evaluation_fails(&self, name: &str, label: Option<&str>, score: Option<f64>) -> bool {
        match (label, score) {
            (Some(l), _) if !l.is_empty() => self.label_fails(l),
            (_, Some(s)) => self.score_fails(name, s),
            _ => false,
        }
    }

    /// All failure signals on `span`, most specific first (exception, guardrail, evaluation,
    /// feedback, status). Empty when the span carries none.
    pub fn detect(&self, span: &Span) -> Vec<Signal> {
        let mut out = Vec::new();
        let attrs = &span.attributes;
        for event in &span.events {
            if event.name == keys::EVENT_EXCEPTION {
                out.push(exception_signal(event));
            }
        }
        if let Some(g) = guardrail_signal(span) {
            out.push(g);
        }
        for event in &span.events {
            if event.name == keys::EVENT_EVALUATION {
                if let Some(s) = self.evaluation_event_signal(event) {
                    out.push(s);
                }
            }
        }
        out.extend(self.openinference_evaluations(span));
        if let Some(f) = self.feedback_signal(span) {
            out.push(f);
        }
        let status_error = span
            .status
            .as_ref()
            .is_some_and(|s| s.code == StatusCode::Error as i32);
        let error_type = get_str(attrs, keys::ERROR_TYPE).filter(|s| !s.is_empty());
        if (status_error || error_type.is_some())
            && !out
                .iter()
                .any(|s| matches!(s.kind, SignalKind::Exception | SignalKind::Guardrail))
        {
            let message = span
                .status
                .as_ref()
                .map(|s| s.message.clone())
                .unwrap_or_default();
            out.push(Signal::new(
                SignalKind::Status,
                error_type.unwrap_or(""),
                message,
            ));
        }
        out
    }

    fn evaluation_event_signal(&self, event: &Event) -> Option<Signal> {
        let a = &event.attributes;
        let name = get_str(a, keys::EVAL_NAME).unwrap_or("evaluation");
        let label = get_str(a, keys::EVAL_LABEL);
        let score = get_f64(a, keys::EVAL_SCORE);
        if !self.evaluation_fails(name, label, score) {
            return None;
        }
        let mut s = Signal::new(
            SignalKind::Evaluation,
            name,
            get_str(a, keys::EVAL_EXPLANATION).unwrap_or(""),
        );
        s.label = label.map(str::to_string);
        s.score = score;
        Some(s)
    }

    /// OpenInference `evaluations.N.evaluation.{name,label,score,explanation}` attributes.
    fn openinference_evaluations(&self, span: &Span) -> Vec<Signal> {
        let mut indices: Vec<&str> = span
            .attributes
            .iter()
            .filter_map(|kv| kv.key.strip_prefix(keys::OI_EVALUATIONS_PREFIX))
            .filter_map(|rest| rest.split_once('.').map(|(n, _)| n))
            .collect();
        indices.sort_unstable();
        indices.dedup();
        let mut out = Vec::new();
        for n in indices {
            let key = |field: &str| format!("evaluations.{n}.evaluation.{field}");
            let a = &span.attributes;
            let name = get_str(a, &key("name")).unwrap_or("evaluation");
            let label = get_str(a, &key("label"));
            let score = get_f64(a, &key("score"));
            if self.evaluation_fails(name, label, score) {
                let mut s = Signal::new(
                    SignalKind::Evaluation,
                    name,
                    get_str(a, &key("explanation")).unwrap_or(""),
                );
                s.label = label.map(str::to_string);
                s.score = score;
                out.push(s);
            }
        }
        out
    }

    /// Negative user feedback: a `user.feedback` event or `user.feedback.*` span attributes.
    fn feedback_signal(&self, span: &Span) -> Option<Signal> {
        let from_attrs = |a: &[opentelemetry_proto::tonic::common::v1::KeyValue]| {
            let label = get_str(a, keys::FEEDBACK_LABEL);
            let score = get_f64(a, keys::FEEDBACK_SCORE);
            let negative =
                label.is_some_and(|l| self.label_fails(l)) || score.is_some_and(|s| s < 0.0);
            negative.then(|| {
                let mut s = Signal::new(
                    SignalKind::Feedback,
                    "user_feedback",
                    get_str(a, keys::FEEDBACK_COMMENT).unwrap_or(""),
                );
                s.label = label.map(str::to_string);
                s.score = score;
                s
            })
        };
        span.events
            .iter()
            .filter(|e| e.name == keys::EVENT_FEEDBACK)
            .find_map(|e| from_attrs(&e.attributes))
            .or_else(|| from_attrs(&span.attributes))
    }
}

fn exception_signal(event: &Event) -> Signal {
    let a = &event.attributes;
    Signal::new(
        SignalKind::Exception,
        get_str(a, keys::EXCEPTION_TYPE).unwrap_or(""),
        get_str(a, keys::EXCEPTION_MESSAGE).unwrap_or(""),
    )
}

/// A content filter finish reason, a GUARDRAIL span in error, or `guardrail.triggered=true` /
/// `guardrail.passed=false`.
fn guardrail_signal(span: &Span) -> Option<Signal> {
    let attrs = &span.attributes;
    let content_filter = match get(attrs, keys::FINISH_REASONS) {
        Some(Value::ArrayValue(a)) => a
            .values
            .iter()
            .any(|v| matches!(&v.value, Some(Value::StringValue(s)) if s == keys::CONTENT_FILTER)),
        Some(Value::StringValue(s)) => s == keys::CONTENT_FILTER,
        _ => false,
    };
    let is_guardrail_span = get_str(attrs, keys::OI_SPAN_KIND) == Some("GUARDRAIL");
    let status_error = span
        .status
        .as_ref()
        .is_some_and(|s| s.code == StatusCode::Error as i32);
    let fired = get_bool(attrs, keys::GUARDRAIL_TRIGGERED) == Some(true)
        || get_bool(attrs, keys::GUARDRAIL_PASSED) == Some(false)
        || (is_guardrail_span && status_error);
    if !content_filter && !fired {
        return None;
    }
    let name = if content_filter {
        keys::CONTENT_FILTER.to_string()
    } else {
        get(attrs, keys::GUARDRAIL_NAME)
            .and_then(value_to_string)
            .unwrap_or_else(|| span.name.clone())
    };
    let message = span
        .status
        .as_ref()
        .map(|s| s.message.clone())
        .unwrap_or_default();
    Some(Signal::new(SignalKind::Guardrail, name, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::attributes::{double_kv, string_kv};
    use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue};
    use opentelemetry_proto::tonic::trace::v1::Status;

    fn span(attrs: Vec<KeyValue>, events: Vec<Event>, error: bool) -> Span {
        Span {
            name: "chat gpt-4o".into(),
            attributes: attrs,
            events,
            status: error.then(|| Status {
                message: "boom".into(),
                code: StatusCode::Error as i32,
            }),
            ..Default::default()
        }
    }

    fn event(name: &str, attrs: Vec<KeyValue>) -> Event {
        Event {
            name: name.into(),
            attributes: attrs,
            ..Default::default()
        }
    }

    fn kinds(s: &Span) -> Vec<SignalKind> {
        SignalConfig::default()
            .detect(s)
            .iter()
            .map(|s| s.kind)
            .collect()
    }

    #[test]
    fn a_clean_span_has_no_signal() {
        let finish = KeyValue {
            key: keys::FINISH_REASONS.into(),
            value: Some(AnyValue {
                value: Some(Value::ArrayValue(ArrayValue {
                    values: vec![AnyValue {
                        value: Some(Value::StringValue("stop".into())),
                    }],
                })),
            }),
            ..Default::default()
        };
        assert!(kinds(&span(vec![finish], vec![], false)).is_empty());
    }

    #[test]
    fn failing_evaluation_is_a_signal_even_with_status_ok() {
        let e = event(
            keys::EVENT_EVALUATION,
            vec![
                string_kv(keys::EVAL_NAME, "brand_tone"),
                string_kv(keys::EVAL_LABEL, "off_brand"),
            ],
        );
        let got = SignalConfig::default().detect(&span(vec![], vec![e], false));
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].kind, got[0].name.as_str()),
            (SignalKind::Evaluation, "brand_tone")
        );
        assert_eq!(got[0].label.as_deref(), Some("off_brand"));
        // A passing label, a score over the default threshold, and a per-name max threshold.
        let pass = event(
            keys::EVENT_EVALUATION,
            vec![string_kv(keys::EVAL_LABEL, "pass")],
        );
        assert!(kinds(&span(vec![], vec![pass], false)).is_empty());
        let good = event(
            keys::EVENT_EVALUATION,
            vec![double_kv(keys::EVAL_SCORE, 0.9)],
        );
        assert!(kinds(&span(vec![], vec![good], false)).is_empty());
        let mut cfg = SignalConfig::default();
        cfg.thresholds.insert(
            "toxicity".into(),
            ScoreThreshold {
                min: None,
                max: Some(0.3),
            },
        );
        let toxic = event(
            keys::EVENT_EVALUATION,
            vec![
                string_kv(keys::EVAL_NAME, "toxicity"),
                double_kv(keys::EVAL_SCORE, 0.7),
            ],
        );
        assert_eq!(cfg.detect(&span(vec![], vec![toxic], false)).len(), 1);
    }

    #[test]
    fn openinference_evaluations_guardrails_feedback_and_exceptions() {
        let oi = vec![
            string_kv("evaluations.0.evaluation.name", "hallucination"),
            string_kv("evaluations.0.evaluation.label", "hallucinated"),
            string_kv("evaluations.1.evaluation.name", "relevance"),
            double_kv("evaluations.1.evaluation.score", 0.95),
        ];
        let got = SignalConfig::default().detect(&span(oi, vec![], false));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].name, "hallucination");

        let filtered = KeyValue {
            key: keys::FINISH_REASONS.into(),
            value: Some(AnyValue {
                value: Some(Value::ArrayValue(ArrayValue {
                    values: vec![AnyValue {
                        value: Some(Value::StringValue("content_filter".into())),
                    }],
                })),
            }),
            ..Default::default()
        };
        assert_eq!(
            kinds(&span(vec![filtered], vec![], false)),
            [SignalKind::Guardrail]
        );
        let guard = vec![string_kv(keys::OI_SPAN_KIND, "GUARDRAIL")];
        assert_eq!(kinds(&span(guard, vec![], true)), [SignalKind::Guardrail]);

        let fb = vec![string_kv(keys::FEEDBACK_LABEL, "thumbs_down")];
        assert_eq!(kinds(&span(fb, vec![], false)), [SignalKind::Feedback]);
        let fb_event = event(
            keys::EVENT_FEEDBACK,
            vec![double_kv(keys::FEEDBACK_SCORE, -1.0)],
        );
        assert_eq!(
            kinds(&span(vec![], vec![fb_event], false)),
            [SignalKind::Feedback]
        );

        let exc = event(
            keys::EVENT_EXCEPTION,
            vec![
                string_kv(keys::EXCEPTION_TYPE, "KeyError"),
                string_kv(keys::EXCEPTION_MESSAGE, "'sku'"),
            ],
        );
        let got = SignalConfig::default().detect(&span(vec![], vec![exc], true));
        // The exception explains the ERROR status: one signal, not two.
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].kind, got[0].name.as_str()),
            (SignalKind::Exception, "KeyError")
        );

        let typed = vec![string_kv(keys::ERROR_TYPE, "RateLimitError")];
        let got = SignalConfig::default().detect(&span(typed, vec![], false));
        assert_eq!(
            (got[0].kind, got[0].name.as_str()),
            (SignalKind::Status, "RateLimitError")
        );
    }
}
