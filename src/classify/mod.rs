//! Classification: failure-signal detection, taxonomy, rules, and the cascade that picks one class.
//!
//! The cascade, per signal span: a human label for the failure's fingerprint (source=human) >
//! the first matching rule (source=rule) > the learned model (source=model; asked when no rule
//! matched or when it is surer than the rule) > the fallback class (source=rule, no rule,
//! confidence 0).

pub mod builtin;
pub mod labels;
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
use labels::LabelBook;
use model::{ModelConfig, SharedModel};
use rules::{CompiledRule, EvalContext, RuleSet};
use signals::{Signal, SignalConfig};
use taxonomy::{ClassDef, Taxonomy};

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
    labels: LabelBook,
    model: SharedModel,
}

/// Attribute keys that name the agent and the tool.
pub const AGENT_NAME: &str = "gen_ai.agent.name";
const TOOL_NAMES: [&str; 2] = ["gen_ai.tool.name", "tool.name"];
const SERVICE_NAME: &str = "service.name";

impl Classifier {
    /// Builds a classifier. `rules` are checked in order (user rules, then the built-in pack);
    /// `fallback` must be a class of `taxonomy` (checked by config validation). It starts with
    /// no human label and an empty model with the default settings (see `with_model`).
    pub fn new(
        taxonomy: Taxonomy,
        rules: Vec<CompiledRule>,
        signals: SignalConfig,
        fallback: String,
    ) -> Self {
        let model = SharedModel::new(&ModelConfig::default(), &taxonomy.class_names());
        Classifier {
            taxonomy,
            rules: RuleSet::new(rules),
            signals,
            fallback,
            labels: LabelBook::new(),
            model,
        }
    }

    /// Uses `model` (a handle others may share) as the learned model.
    pub fn with_model(mut self, model: SharedModel) -> Self {
        self.model = model;
        self
    }

    /// Uses `labels` (a handle others may share) as the human labels.
    pub fn with_labels(mut self, labels: LabelBook) -> Self {
        self.labels = labels;
        self
    }

    /// The human labels by fingerprint (the top of the cascade).
    pub fn labels(&self) -> &LabelBook {
        &self.labels
    }

    /// The learned model.
    pub fn model(&self) -> &SharedModel {
        &self.model
    }

    /// The taxonomy (classes with their remediation path, owner and description).
    pub fn taxonomy(&self) -> &Taxonomy {
        &self.taxonomy
    }

    /// The class named `class`, if the taxonomy has it.
    pub fn class_info(&self, class: &str) -> Option<&ClassDef> {
        self.taxonomy.class(class)
    }

    /// The class given to signals nothing else decides.
    pub fn fallback(&self) -> &str {
        &self.fallback
    }

    /// The failure signals on `span`, most specific first (empty when it carries none).
    pub fn detect(&self, span: &Span) -> Vec<Signal> {
        self.signals.detect(span)
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

    /// `decide` for a non-empty `signals`, most specific first: human label > rule > model >
    /// fallback (see the module doc). The fingerprint comes first and does not depend on the
    /// class, so whoever decides, the failure stays in its issue.
    fn decide_nonempty(
        &self,
        span: &Span,
        resource: Option<&Resource>,
        scope: Option<&InstrumentationScope>,
        signals: Vec<Signal>,
    ) -> Decision {
        let fp = self.fingerprint(span, resource, &signals[0]);
        if let Some(class) = self
            .labels
            .get(&fp)
            .filter(|c| self.taxonomy.class(c).is_some())
        {
            return self.decision(class.to_string(), Source::Human, 1.0, None, fp, signals);
        }
        let matched = signals.iter().find_map(|signal| {
            let ctx = EvalContext {
                span,
                resource,
                scope,
                signal,
            };
            self.rules.first_match(&ctx)
        });
        // The model must beat the rule's confidence to be used; with no rule, any answer is.
        let beat = matched.map_or(-1.0, |r| r.confidence);
        let learned = self.model.predict_span(span, resource, &signals, beat);
        match (learned, matched) {
            (Some((class, conf)), _) => {
                self.decision(class.to_string(), Source::Model, conf, None, fp, signals)
            }
            (None, Some(r)) => self.decision(
                r.class.clone(),
                Source::Rule,
                r.confidence,
                Some(r.name.clone()),
                fp,
                signals,
            ),
            (None, None) => {
                self.decision(self.fallback.clone(), Source::Rule, 0.0, None, fp, signals)
            }
        }
    }

    /// The fingerprint of a failure on `span` whose most specific signal is `primary`.
    fn fingerprint(&self, span: &Span, resource: Option<&Resource>, primary: &Signal) -> String {
        fingerprint(&FingerprintParts {
            agent: agent_name(span, resource),
            operation: operation_name(span),
            error_type: &primary.name,
            message: if primary.message.is_empty() {
                primary.label.as_deref().unwrap_or("")
            } else {
                &primary.message
            },
        })
    }

    fn decision(
        &self,
        class: String,
        source: Source,
        confidence: f64,
        rule: Option<String>,
        fingerprint: String,
        signals: Vec<Signal>,
    ) -> Decision {
        let remediation = self
            .taxonomy
            .class(&class)
            .map(|c| c.remediation.clone())
            .unwrap_or_default();
        Decision {
            class,
            source,
            confidence,
            rule,
            fingerprint,
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
