//! TEMPORARY placeholder.
use crate::classify::rules::RuleSpec;
pub fn pack(_preset: &str) -> Vec<RuleSpec> {
    Vec::new()
}
