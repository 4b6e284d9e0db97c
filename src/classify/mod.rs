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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::model::features;
    use crate::otlp::attributes::string_kv;
    use opentelemetry_proto::tonic::trace::v1::span::Event;
    use opentelemetry_proto::tonic::trace::v1::{status::StatusCode, Status};
    use std::sync::OnceLock;

    /// The default configuration's classifier with a fresh model (`min_labels` 4) and no labels.
    fn classifier() -> Classifier {
        static RULES: OnceLock<Vec<CompiledRule>> = OnceLock::new();
        let loaded = crate::config::load_default();
        let rules = RULES
            .get_or_init(|| crate::config::load_default().rules)
            .clone();
        let cfg = ModelConfig {
            min_labels: 4,
            ..ModelConfig::default()
        };
        let model = SharedModel::new(&cfg, &loaded.taxonomy.class_names());
        Classifier::new(
            loaded.taxonomy,
            rules,
            SignalConfig::default(),
            loaded.fallback,
        )
        .with_model(model)
    }

    /// A span with an `exception` event; a tool span when `tool` is given.
    fn failing(name: &str, tool: Option<&str>, ty: &str, msg: &str) -> Span {
        let mut attributes = vec![string_kv(AGENT_NAME, "support")];
        if let Some(t) = tool {
            attributes.push(string_kv("gen_ai.operation.name", "execute_tool"));
            attributes.push(string_kv("gen_ai.tool.name", t));
        }
        Span {
            name: name.into(),
            attributes,
            events: vec![Event {
                name: "exception".into(),
                attributes: vec![
                    string_kv("exception.type", ty),
                    string_kv("exception.message", msg),
                ],
                ..Default::default()
            }],
            status: Some(Status {
                message: msg.into(),
                code: StatusCode::Error as i32,
            }),
            ..Default::default()
        }
    }

    /// No built-in rule decides this one (not a tool, not a code exception).
    fn unruled(i: usize) -> Span {
        failing(
            "plan",
            None,
            "PlannerError",
            &format!("planner {i} produced an empty plan for the question"),
        )
    }

    /// Only the low-confidence `tool-error` catch-all (0.65) decides this one.
    fn weakly_ruled(i: usize) -> Span {
        failing(
            "execute_tool inventory",
            Some("inventory"),
            "InventoryMismatch",
            &format!("warehouse count {i} differs from catalogue"),
        )
    }

    /// `tool-timeout` (0.95) decides this one.
    fn strongly_ruled(i: usize) -> Span {
        failing(
            "execute_tool lookup_order",
            Some("lookup_order"),
            "TimeoutError",
            &format!("lookup of order {i} timed out"),
        )
    }

    fn teach(c: &Classifier, span: &Span, class: &str, times: usize) {
        let tokens = features(span, None, &c.detect(span));
        for _ in 0..times {
            assert!(c.model().learn(&tokens, class));
        }
    }

    #[test]
    fn fallback_when_no_rule_and_no_model() {
        let c = classifier();
        let d = c.classify(&unruled(1), None, None).unwrap();
        assert_eq!(d.class, c.fallback());
        assert_eq!(
            (d.source, d.confidence, d.rule.clone()),
            (Source::Rule, 0.0, None)
        );
        assert!(c.classify(&Span::default(), None, None).is_none());
    }

    #[test]
    fn rule_decides_while_the_model_is_not_ready() {
        let c = classifier();
        teach(&c, &strongly_ruled(1), "coverage_gap", 3);
        let d = c.classify(&strongly_ruled(2), None, None).unwrap();
        assert_eq!(d.source, Source::Rule);
        assert_eq!(d.rule.as_deref(), Some("tool-timeout"));
        assert_eq!(d.class, "logic_tool");
        assert_eq!(d.remediation, "tool_fix");
    }

    #[test]
    fn model_decides_what_no_rule_matches() {
        let c = classifier();
        teach(&c, &unruled(1), "coverage_gap", 6);
        teach(&c, &strongly_ruled(1), "logic_tool", 6);
        let d = c.classify(&unruled(2), None, None).unwrap();
        assert_eq!(d.class, "coverage_gap");
        assert_eq!(d.source, Source::Model);
        assert_eq!(d.rule, None);
        assert!(d.confidence > 0.5 && d.confidence < 1.0, "{}", d.confidence);
        assert_eq!(d.remediation, "scope_escalation");
    }

    #[test]
    fn model_beats_a_less_confident_rule_but_not_a_surer_one() {
        let c = classifier();
        teach(&c, &weakly_ruled(1), "data_quality", 8);
        teach(&c, &strongly_ruled(1), "coverage_gap", 8);
        let weak = c.classify(&weakly_ruled(2), None, None).unwrap();
        assert_eq!(weak.class, "data_quality");
        assert_eq!(weak.source, Source::Model);
        assert!(weak.confidence > 0.65, "{}", weak.confidence);
        let strong = c.classify(&strongly_ruled(2), None, None).unwrap();
        assert_eq!(strong.source, Source::Rule, "{strong:?}");
        assert_eq!(strong.class, "logic_tool");
        assert!(
            c.model()
                .predict(&features(
                    &strongly_ruled(2),
                    None,
                    &c.detect(&strongly_ruled(2))
                ))
                .unwrap()
                .confidence
                < 0.95
        );
    }

    #[test]
    fn human_label_beats_rule_and_model_and_keeps_the_fingerprint() {
        let c = classifier();
        teach(&c, &weakly_ruled(1), "data_quality", 8);
        let before = c.classify(&strongly_ruled(1), None, None).unwrap();
        c.labels().set(&before.fingerprint, "tone_brand");
        // Another failure of the same issue: ids and numbers differ.
        let after = c.classify(&strongly_ruled(777), None, None).unwrap();
        assert_eq!(after.fingerprint, before.fingerprint);
        assert_eq!(after.class, "tone_brand");
        assert_eq!(after.source, Source::Human);
        assert_eq!(after.confidence, 1.0);
        assert_eq!(after.rule, None);
        assert_eq!(after.remediation, "prompt_edit");
        // A model decision does not move the fingerprint either.
        let m = c.classify(&weakly_ruled(3), None, None).unwrap();
        assert_eq!(m.source, Source::Model);
        c.labels().set(&m.fingerprint, "logic_tool");
        let h = c.classify(&weakly_ruled(4), None, None).unwrap();
        assert_eq!((h.source, h.fingerprint), (Source::Human, m.fingerprint));
        // A label of a class the taxonomy does not have is not used.
        let other = c.classify(&unruled(1), None, None).unwrap();
        c.labels().set(&other.fingerprint, "no_such_class");
        assert_ne!(
            c.classify(&unruled(2), None, None).unwrap().source,
            Source::Human
        );
    }

    #[test]
    fn taxonomy_getters() {
        let c = classifier();
        assert_eq!(c.taxonomy().classes.len(), 4);
        assert_eq!(
            c.class_info("data_quality").unwrap().remediation,
            "data_owner"
        );
        assert!(c.class_info("nope").is_none());
    }

    #[test]
    fn seed_file_is_checked_at_load_and_loaded_into_the_classifier() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("seed.jsonl");
        let line = r#"{"class": "data_quality", "example": {"exception_type": "PlannerError", "message": "planner produced an empty plan"}}"#;
        std::fs::write(&good, format!("{line}\n{line}\n")).unwrap();
        let yaml = |path: &std::path::Path, min: usize| {
            let mut v: serde_yaml::Value =
                serde_yaml::from_str(crate::config::EMBEDDED_DEFAULT).unwrap();
            v["processors"]["failure_triage"]["model"] = serde_yaml::from_str(&format!(
                "{{seed_file: {:?}, min_labels: {min}}}",
                path.display().to_string()
            ))
            .unwrap();
            serde_yaml::to_string(&v).unwrap()
        };
        let mut loaded = crate::config::load_str(&yaml(&good, 2), "c.yaml").unwrap();
        let c = loaded.take_classifier();
        assert_eq!(c.model().labels_learned(), 2);
        assert!(c.model().is_ready());
        let bad = dir.path().join("bad.jsonl");
        std::fs::write(
            &bad,
            format!("{line}\n{{\"class\": \"nope\", \"features\": []}}\n"),
        )
        .unwrap();
        let e = crate::config::load_str(&yaml(&bad, 2), "c.yaml")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("processors.failure_triage.model.seed_file") && e.contains("line 2"),
            "{e}"
        );
        let e = crate::config::load_str(&yaml(&dir.path().join("missing"), 2), "c.yaml")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("cannot read seed file"), "{e}");
        let e = crate::config::load_str(&yaml(&good, 0), "c.yaml")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("model.min_labels"), "{e}");
    }
}
