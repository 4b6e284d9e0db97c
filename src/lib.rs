//! triage-loop: an OpenTelemetry pipeline processor that finds AI-agent failures on spans,
//! classifies each into one class of a fixed taxonomy, tags the spans and forwards everything.

pub mod admin;
pub mod classify;
pub mod clock;
pub mod config;
pub mod demo;
pub mod eval;
pub mod failure;
pub mod otlp;
pub mod processor;
pub mod remediation;
pub mod replay;
pub mod service;
pub mod synth;
pub mod text;
pub mod tls;
