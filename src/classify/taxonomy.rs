//! The taxonomy: a small, fixed, versioned set of failure classes, each bound to one remediation path.

use serde::{Deserialize, Serialize};

/// One failure class and where its fixes go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassDef {
    pub name: String,
    pub description: String,
    /// The remediation path: what kind of fix this class gets (e.g. `prompt_edit`).
    pub remediation: String,
    /// Who owns that fix (a team, a channel, a GitHub handle).
    pub owner: String,
    /// Sinks the class's work is dispatched to; empty means the default sinks.
    #[serde(default)]
    pub sinks: Vec<String>,
}

/// The configured taxonomy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Taxonomy {
    /// Preset name (`default`, `mast`) or a custom name.
    pub name: String,
    pub version: u32,
    pub classes: Vec<ClassDef>,
}

/// Names of the built-in presets.
pub const PRESETS: [&str; 2] = ["default", "mast"];

fn class(name: &str, description: &str, remediation: &str, owner: &str) -> ClassDef {
    ClassDef {
        name: name.into(),
        description: description.into(),
        remediation: remediation.into(),
        owner: owner.into(),
        sinks: Vec::new(),
    }
}

impl Taxonomy {
    /// A preset taxonomy by name.
    pub fn preset(name: &str) -> Option<Taxonomy> {
        let classes = match name {
            "default" => vec![
                class(
                    "tone_brand",
                    "The answer was right but its tone, style or brand voice was wrong, or a style/safety filter fired.",
                    "prompt_edit",
                    "prompt-owners",
                ),
                class(
                    "logic_tool",
                    "A tool call or the agent's own logic failed: errors, timeouts, bad arguments, schema violations, loops.",
                    "tool_fix",
                    "agent-engineering",
                ),
                class(
                    "data_quality",
                    "The agent reasoned correctly over wrong inputs: stale, missing, empty or malformed data from a retriever or data source.",
                    "data_owner",
                    "data-owners",
                ),
                class(
                    "coverage_gap",
                    "The request is outside what the agent can do today: out-of-scope intent, no matching tool, refusal or escalation.",
                    "scope_escalation",
                    "product-owners",
                ),
            ],
            "mast" => vec![
                class(
                    "specification",
                    "System design and specification issues: task or role spec disobeyed, step repetition, unaware of termination.",
                    "spec_edit",
                    "prompt-owners",
                ),
                class(
                    "inter_agent_misalignment",
                    "Agents worked against each other: derailment, withheld information, ignored input, failed hand-offs.",
                    "orchestration_fix",
                    "agent-engineering",
                ),
                class(
                    "task_verification",
                    "The run ended without (correct) verification: premature termination, missing or wrong checks.",
                    "verification_step",
                    "agent-engineering",
                ),
            ],
            _ => return None,
        };
        Some(Taxonomy {
            name: name.into(),
            version: 1,
            classes,
        })
    }

    /// The class named `name`.
    pub fn class(&self, name: &str) -> Option<&ClassDef> {
        self.classes.iter().find(|c| c.name == name)
    }

    /// The fallback class a preset uses for signals no rule decides.
    pub fn default_fallback(&self) -> Option<&str> {
        match self.name.as_str() {
            "default" => Some("logic_tool"),
            "mast" => Some("specification"),
            _ => self.classes.first().map(|c| c.name.as_str()),
        }
    }

    pub fn class_names(&self) -> Vec<&str> {
        self.classes.iter().map(|c| c.name.as_str()).collect()
    }
}
