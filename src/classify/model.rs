//! The learned classifier (source=model): trained from human labels (and an optional seed
//! file), over hashed features of a failure, with a calibrated confidence.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `processors.failure_triage.model`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Use the learned model in the cascade (human > rule > model > fallback).
    pub enabled: bool,
    /// A labelled seed file (JSON lines) the model starts from, before any human label.
    pub seed_file: Option<PathBuf>,
    /// The model decides nothing until it has learned from this many labels.
    pub min_labels: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            enabled: true,
            seed_file: None,
            min_labels: 5,
        }
    }
}
