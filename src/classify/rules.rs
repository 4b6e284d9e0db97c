//! TEMPORARY placeholder until the OTTL rule engine lands (helper writing it).
use crate::classify::signals::Signal;
use opentelemetry_proto::tonic::{
    common::v1::InstrumentationScope, resource::v1::Resource, trace::v1::Span,
};
pub struct EvalContext<'a> {
    pub span: &'a Span,
    pub resource: Option<&'a Resource>,
    pub scope: Option<&'a InstrumentationScope>,
    pub signal: &'a Signal,
}
fn default_confidence() -> f64 {
    0.9
}
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RuleSpec {
    pub name: String,
    pub class: String,
    pub condition: String,
    #[serde(default = "default_confidence")]
    pub confidence: f64,
    #[serde(default)]
    pub description: String,
}
#[derive(Clone)]
pub struct CompiledRule {
    pub name: String,
    pub class: String,
    pub confidence: f64,
}
#[derive(Debug, thiserror::Error)]
#[error("rule {rule:?}: column {column}: {message}")]
pub struct RuleError {
    pub rule: String,
    pub column: usize,
    pub message: String,
}
pub fn compile_rule(spec: &RuleSpec) -> Result<CompiledRule, RuleError> {
    Ok(CompiledRule {
        name: spec.name.clone(),
        class: spec.class.clone(),
        confidence: spec.confidence,
    })
}
pub fn first_match<'r>(_rules: &'r [CompiledRule], _ctx: &EvalContext) -> Option<&'r CompiledRule> {
    None
}
