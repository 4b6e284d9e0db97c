//! End-to-end tests: real OTLP clients (the OpenTelemetry SDK, raw gRPC/HTTP) → triage-loop →
//! a real OTLP/gRPC downstream. One test binary, so the suite links once.

mod auth;
mod backpressure;
mod bad_input;
#[path = "../support/certs.rs"]
mod certs;
mod cli;
mod common;
mod crash;
mod deploy;
mod exporter;
mod grafana;
mod http_json;
mod multi_instance;
mod persistent_queue;
#[path = "../support/postgres.rs"]
mod pg_support;
mod prometheus;
mod remediation;
mod sdk;
mod tls;
mod triage;
mod ui;
