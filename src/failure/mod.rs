//! Failures: what identifies "the same failure" across runs.

pub mod fingerprint;
