//! Crash safety: `kill -9` between recording a failure and delivering its dispatch; after a
//! restart the webhook sees the dispatch exactly once, with a valid signature.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, KeyInit, Mac};
use opentelemetry_otlp::WithExportConfig;
use sha2::Sha256;

use crate::common::*;

const SECRET: &str = "crash-test-secret";

struct Ports {
    grpc: u16,
    http: u16,
    admin: u16,
    webhook: u16,
}

fn config(dir: &std::path::Path, p: &Ports) -> String {
    format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "127.0.0.1:{grpc}"}}
      http: {{endpoint: "127.0.0.1:{http}"}}
processors:
  failure_triage:
    storage: sqlite://{dir}/triage.db
    trace_window: 1s
    root_grace: 100ms
    sinks:
      webhook/oncall:
        endpoint: http://127.0.0.1:{webhook}/hook
        secret_env: TRIAGE_TEST_WEBHOOK_SECRET
        timeout: 2s
    taxonomy:
      preset: default
      classes:
        logic_tool: {{sinks: [webhook/oncall]}}
    dispatch:
      initial_interval: 100ms
      max_interval: 200ms
      lease: 1s
      poll_interval: 50ms
exporters:
  otlp:
    endpoint: 127.0.0.1:1
    retry_on_failure: {{enabled: false}}
extensions:
  triage_admin: {{endpoint: "127.0.0.1:{admin}"}}
service:
  extensions: [triage_admin]
  telemetry: {{metrics: {{push_interval: 0s}}}}
  pipelines:
    traces: {{receivers: [otlp], processors: [failure_triage], exporters: [otlp]}}
"#,
        grpc = p.grpc,
        http = p.http,
        admin = p.admin,
        webhook = p.webhook,
        dir = dir.display()
    )
}

async fn get(url: &str) -> Option<serde_json::Value> {
    let resp = reqwest::get(url).await.ok()?;
    resp.json().await.ok()
}

async fn wait_for(what: &str, within: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Requests the webhook received: (idempotency key, body).
type Received = Arc<Mutex<Vec<(String, Bytes)>>>;

/// Serves the webhook on `addr`, the address the dispatch was refused at until now.
async fn start_webhook(addr: DeadAddress) -> Received {
    let got: Received = Arc::default();
    let g = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let g = g.clone();
            async move {
                let sig = headers
                    .get("x-triage-signature-256")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
                mac.update(&body);
                let want: String = mac
                    .finalize()
                    .into_bytes()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                if sig != format!("sha256={want}") {
                    return StatusCode::UNAUTHORIZED;
                }
                let key = headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                g.lock().unwrap().push((key, body));
                StatusCode::OK
            }
        }),
    );
    let l = addr.listen();
    tokio::spawn(async move { axum::serve(l, app).await });
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_before_delivery_then_the_webhook_sees_the_dispatch_exactly_once() {
    let dir = data_dir();
    // The webhook's port stays reserved while it is down, so no other listener can answer there.
    let webhook = DeadAddress::new();
    let ports = Ports {
        grpc: free_port(),
        http: free_port(),
        admin: free_port(),
        webhook: webhook.port(),
    };
    let cfg = dir.join("collector-config.yaml");
    std::fs::write(&cfg, config(&dir, &ports)).unwrap();
    let admin = format!("http://127.0.0.1:{}", ports.admin);
    let mut child = spawn_serve(&cfg, &[("TRIAGE_TEST_WEBHOOK_SECRET", SECRET)]);
    wait_for("first start", Duration::from_secs(20), async || {
        get(&format!("{admin}/api/v1/issues")).await.is_some()
    })
    .await;

    // A failing agent run; the webhook is down, so the dispatch stays in the outbox.
    let endpoint = format!("http://127.0.0.1:{}", ports.grpc);
    tokio::task::spawn_blocking(move || {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .unwrap();
        let p = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_simple_exporter(exporter)
            .build();
        crate::remediation::emit_failed_run(&p, 1000, 1);
        p.force_flush().unwrap();
    })
    .await
    .unwrap();
    let mut issue_id = 0;
    wait_for(
        "the failure recorded, its dispatch attempted",
        Duration::from_secs(20),
        async || {
            let Some(v) = get(&format!("{admin}/api/v1/issues")).await else {
                return false;
            };
            let Some(id) = v["issues"][0]["id"].as_i64() else {
                return false;
            };
            issue_id = id;
            let d = get(&format!("{admin}/api/v1/issues/{id}")).await.unwrap();
            d["dispatches"][0]["attempts"].as_i64().unwrap_or(0) >= 1
                && d["dispatches"][0]["delivered_at"].is_null()
        },
    )
    .await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let got = start_webhook(webhook).await;
    let mut child = spawn_serve(&cfg, &[("TRIAGE_TEST_WEBHOOK_SECRET", SECRET)]);
    wait_for(
        "delivery after restart",
        Duration::from_secs(20),
        async || !got.lock().unwrap().is_empty(),
    )
    .await;
    // Give a duplicate every chance to show up: several poll intervals and a lease.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let d = get(&format!("{admin}/api/v1/issues/{issue_id}"))
        .await
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let got = got.lock().unwrap();
    assert_eq!(got.len(), 1, "exactly once: {got:?}");
    assert_eq!(got[0].0, format!("{issue_id}:1:webhook/oncall"));
    let body: serde_json::Value = serde_json::from_slice(&got[0].1).unwrap();
    assert_eq!(body["class"], "logic_tool", "{body:#}");
    assert!(d["dispatches"][0]["delivered_at"].is_i64(), "{d:#}");
    assert_eq!(d["issue"]["state"], "dispatched");
}
