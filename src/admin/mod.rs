//! The admin listener: Prometheus `/metrics`, health, the `/api/v1` JSON API, the OTLP metrics push.

pub mod api;
pub mod auth;
pub mod client;
pub mod metrics;
pub mod otlp_push;
pub mod server;
pub mod triage_api;
pub mod ui;
