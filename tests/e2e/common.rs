//! Shared test parts: a capturing OTLP/gRPC downstream and a triage-loop on ephemeral ports.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;

use triage_loop::otlp::sink::RecordingSink;
use triage_loop::service::Running;

/// What a downstream received.
pub type Capture = RecordingSink;

/// Starts a capturing OTLP/gRPC downstream on an ephemeral port.
pub async fn start_downstream() -> (SocketAddr, Capture) {
    let capture = Capture::default();
    let addr = capture.serve().await.unwrap();
    (addr, capture)
}

/// A config on ephemeral ports exporting to `downstream`; `processor` is YAML spliced under
/// `processors.failure_triage` (indented by the caller to 4 spaces), `exporter_extra` under
/// `exporters.otlp`.
pub fn config_yaml(downstream: &str, processor: &str, exporter_extra: &str) -> String {
    config_yaml_in(&data_dir(), downstream, processor, exporter_extra)
}

/// A fresh directory for one test's store and jsonl sink, left under the temp dir.
pub fn data_dir() -> std::path::PathBuf {
    tempfile::Builder::new()
        .prefix("triage-e2e-")
        .tempdir()
        .unwrap()
        .keep()
}

/// `config_yaml` with the store (and default jsonl sink) in `dir`.
pub fn config_yaml_in(
    dir: &std::path::Path,
    downstream: &str,
    processor: &str,
    exporter_extra: &str,
) -> String {
    let storage = format!("sqlite://{}/triage.db", dir.display());
    format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:0
      http:
        endpoint: 127.0.0.1:0
        max_request_body_size: 4194304
processors:
  failure_triage:
    taxonomy:
      preset: default
    storage: {storage}
    trace_window: 2s
    root_grace: 200ms
{processor}
exporters:
  otlp:
    endpoint: {downstream}
    retry_on_failure:
      initial_interval: 50ms
      max_interval: 200ms
      max_elapsed_time: 2s
{exporter_extra}
extensions:
  triage_admin:
    endpoint: 127.0.0.1:0
service:
  extensions: [triage_admin]
  pipelines:
    traces: {{receivers: [otlp], processors: [failure_triage], exporters: [otlp]}}
    logs: {{receivers: [otlp], exporters: [otlp]}}
    metrics: {{receivers: [otlp], exporters: [otlp]}}
"#
    )
}

/// Rules the tests rely on, independent of the built-in pack.
pub const TEST_RULES: &str = r#"    rules:
      - name: tool-timeout
        class: logic_tool
        confidence: 0.95
        condition: 'span.status.code == STATUS_CODE_ERROR and IsMatch(span.attributes["error.type"], "(?i)timeout")'
      - name: tone-eval
        class: tone_brand
        confidence: 0.9
        condition: 'signal.kind == "evaluation" and IsMatch(signal.name, "(?i)tone|brand")'
"#;

/// Starts triage-loop from YAML.
pub async fn start_triage(yaml: &str) -> Running {
    let loaded =
        triage_loop::config::load_str(yaml, "test-config.yaml").expect("valid test config");
    triage_loop::service::start(loaded)
        .await
        .expect("triage-loop starts")
}

/// Starts a downstream and a triage-loop exporting to it.
pub async fn start_pair(processor: &str) -> (Running, Capture) {
    let (addr, capture) = start_downstream().await;
    let running = start_triage(&config_yaml(&addr.to_string(), processor, "")).await;
    (running, capture)
}

/// Polls `cond` until true or `within` passes; returns its last value.
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A string attribute's value.
pub fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    triage_loop::otlp::attributes::get_str(attrs, key)
}

/// Splits a span's attributes into its own and the `failure.*` ones triage-loop appended.
pub fn split_failure_attrs(span: &Span) -> (Vec<KeyValue>, Vec<KeyValue>) {
    let n = span
        .attributes
        .iter()
        .position(|kv| kv.key == "failure.class")
        .unwrap_or(span.attributes.len());
    (span.attributes[..n].to_vec(), span.attributes[n..].to_vec())
}

/// A metric's value from a Prometheus text exposition.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub async fn scrape(running: &Running) -> String {
    let addr = running.admin_addr.unwrap();
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A loopback port free right now (for listeners a child process binds).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback address where connections are refused for as long as this lives: its port is
/// bound and never listened on, so no other test's listener can take it meanwhile (a port
/// merely found free could be given to one, and a "dead" downstream would then answer).
pub struct DeadAddress {
    pub addr: String,
    reserved: tokio::net::TcpSocket,
}

impl DeadAddress {
    pub fn new() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        DeadAddress {
            addr: socket.local_addr().unwrap().to_string(),
            reserved: socket,
        }
    }

    /// The port, still reserved.
    pub fn port(&self) -> u16 {
        self.reserved.local_addr().unwrap().port()
    }

    /// Brings the address to life: a listener on the same port, never released in between.
    pub fn listen(self) -> tokio::net::TcpListener {
        self.reserved.listen(1024).unwrap()
    }
}

/// A child process killed when dropped, so a failing test leaves nothing running.
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `triage-loop serve --config CONFIG` as a child process (warnings on stderr), with `env` set.
pub fn spawn_serve(config: &std::path::Path, env: &[(&str, &str)]) -> KillOnDrop {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_triage-loop"))
        .args(["serve", "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    KillOnDrop(child)
}
