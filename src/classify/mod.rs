//! Classification: failure-signal detection, taxonomy, rules, and the cascade that picks one class.
//!
//! The cascade today is rule > fallback; a human label (issue: human triage) and a learned model
//! slot in above and beside the rules without changing callers.

pub mod builtin;
pub mod llm;
pub mod model;
pub mod rules;
pub mod signals;
pub mod taxonomy;

use std::fmt;

use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde::{Deserialize, Serialize};

use crate::failure::fingerprint::{fingerprint, FingerprintParts};
use crate::otlp::attributes::get_str;
use rules::{CompiledRule, EvalContext, RuleSet};
use signals::{Signal, SignalConfig};
use taxonomy::Taxonomy;

/// Who decided a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Rule,
    Model,
    Human,
    Llm,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Rule => "rule",
            Source::Model => "model",
            Source::Human => "human",
            Source::Llm => "llm",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The class given to one span with a failure signal, and what the tags say about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub class: String,
    pub source: Source,
    pub confidence: f64,
    /// The rule that decided, when one did.
    pub rule: Option<String>,
    pub fingerprint: String,
    pub remediation: String,
    /// Every signal found on the span, most specific first.
    pub signals: Vec<Signal>,
}

/// Detects signals on a span and picks its class.
pub struct Classifier {
    taxonomy: Taxonomy,
    rules: RuleSet,
    signals: SignalConfig,
    fallback: String,
}

/// Attribute keys that name the agent and the tool.
pub const AGENT_NAME: &str = "gen_ai.agent.name";
const TOOL_NAMES: [&str; 2] = ["gen_ai.tool.name", "tool.name"];
const SERVICE_NAME: &str = "service.name";

impl Classifier {
    /// Builds a classifier. `rules` are checked in order (user rules, then the built-in pack);
    /// `fallback` must be a class of `taxonomy` (checked by config validation).
    pub fn new(
        taxonomy: Taxonomy,
        rules: Vec<CompiledRule>,
        signals: SignalConfig,
        fallback: String,
    ) -> Self {
        Classifier {
            taxonomy,
            rules: RuleSet::new(rules),
            signals,
            fallback,
        }
    }

    /// Classifies `span`; `None` when it carries no failure signal.
    pub fn classify(
        &self,
        span: &Span,
        resource: Option<&Resource>,
        scope: Option<&InstrumentationScope>,
    ) -> Option<Decision> {
        let signals = self.signals.detect(span);
        self.decide(span, resource, scope, signals)
    }

    /// Classifies one given signal on `span` (e.g. an exception log record correlated with a
    /// span, on a synthetic span built from the log record): rules, fallback and fingerprint
    /// run as for signals found on the span itself.
    pub fn classify_signal(
        &self,
        span: &Span,
        resource: Option<&Resource>,
        scope: Option<&InstrumentationScope>,
        signal: Signal,
    ) -> Decision {
        self.decide_nonempty(span, resource, scope, vec![signal])
    }

    /// Picks the class of `span` from its `signals`; `None` when there are none.
    fn decide(
        &self,
        span: &Span,
        resource: Option<&Resource>,
        scope: Option<&InstrumentationScope>,
        signals: Vec<Signal>,
    ) -> Option<Decision> {
        if signals.is_empty() {
            return None;
        }
        Some(self.decide_nonempty(span, resource, scope, signals))
    }

    /// `decide` for a non-empty `signals`, most specific first.
    fn decide_nonempty(
        &self,
        span: &Span,
        resource: Option<&Resource>,
        scope: Option<&InstrumentationScope>,
        signals: Vec<Signal>,
    ) -> Decision {
        let primary = &signals[0];
        let matched = signals.iter().find_map(|signal| {
            let ctx = EvalContext {
                span,
                resource,
                scope,
                signal,
            };
            self.rules.first_match(&ctx).map(|r| (r, signal))
        });
        let (class, confidence, rule, signal) = match matched {
            Some((r, s)) => (r.class.clone(), r.confidence, Some(r.name.clone()), s),
            None => (self.fallback.clone(), 0.0, None, primary),
        };
        let remediation = self
            .taxonomy
            .class(&class)
            .map(|c| c.remediation.clone())
            .unwrap_or_default();
        let fp = fingerprint(&FingerprintParts {
            class: &class,
            agent: agent_name(span, resource),
            operation: operation_name(span),
            error_type: &signal.name,
            message: if signal.message.is_empty() {
                signal.label.as_deref().unwrap_or("")
            } else {
                &signal.message
            },
        });
        Decision {
            class,
            source: Source::Rule,
            confidence,
            rule,
            fingerprint: fp,
            remediation,
            signals,
        }
    }
}

/// The agent a span belongs to: `gen_ai.agent.name`, else the resource's `service.name`.
pub fn agent_name<'a>(span: &'a Span, resource: Option<&'a Resource>) -> &'a str {
    get_str(&span.attributes, AGENT_NAME)
        .or_else(|| resource.and_then(|r| get_str(&r.attributes, SERVICE_NAME)))
        .unwrap_or("unknown")
}

/// The operation a failure is pinned to: the tool name for tool spans, else the span name.
pub fn operation_name(span: &Span) -> &str {
    TOOL_NAMES
        .iter()
        .find_map(|k| get_str(&span.attributes, k))
        .unwrap_or(&span.name)
}
