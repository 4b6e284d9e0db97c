//! The admin listener: Prometheus `/metrics` and health.

pub mod metrics;
pub mod otlp_push;
pub mod server;
