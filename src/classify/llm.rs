//! The optional LLM judge (source=llm), off the hot path: failures still under `min_confidence`
//! are put to an OpenAI-compatible chat-completions endpoint, rate-limited and within a budget.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `processors.failure_triage.llm_judge`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JudgeConfig {
    /// Off by default.
    pub enabled: bool,
    /// Base URL of an OpenAI-compatible API; `/chat/completions` is appended.
    pub endpoint: String,
    pub model: String,
    /// Environment variable holding the API key (sent as a bearer token), if any.
    pub api_key_env: Option<String>,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub requests_per_minute: u32,
    pub max_requests_per_day: u32,
    pub max_tokens_per_day: u64,
    /// Failures waiting for the judge; more are counted and not judged.
    pub queue_size: usize,
}

impl Default for JudgeConfig {
    fn default() -> Self {
        JudgeConfig {
            enabled: false,
            endpoint: "http://127.0.0.1:11434/v1".into(),
            model: String::new(),
            api_key_env: None,
            timeout: Duration::from_secs(20),
            requests_per_minute: 30,
            max_requests_per_day: 2_000,
            max_tokens_per_day: 2_000_000,
            queue_size: 256,
        }
    }
}
