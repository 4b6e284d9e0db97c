//! A real Prometheus server (Debian's `prometheus` package) scrapes a running triage-loop while it
//! classifies SDK traffic; its query API answers failures per class and a loop-latency quantile,
//! with the rules of `deploy/prometheus/alerts.yml` loaded.
//!
//! Without the `prometheus` binary the test prints a SKIPPED line and passes, unless
//! `TRIAGE_REQUIRE_PROMETHEUS=1` (CI), where it fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use opentelemetry::trace::{Span as _, Status, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::Value;

use crate::common::*;
use crate::remediation::provider;

/// How long each wait on Prometheus may take (it scrapes every second).
const WAIT: Duration = Duration::from_secs(60);

/// A Prometheus server started by the test, killed when dropped (also when the test fails).
struct PrometheusServer {
    child: Child,
    addr: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PrometheusServer {
    /// Its log so far, for failure messages.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The `prometheus` binary, or `None` (after printing SKIPPED) when it is missing and not required.
fn prometheus_binary() -> Option<&'static str> {
    for bin in ["prometheus", "/usr/bin/prometheus"] {
        if Command::new(bin).arg("--version").output().is_ok() {
            return Some(bin);
        }
    }
    let required = std::env::var("TRIAGE_REQUIRE_PROMETHEUS").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "TRIAGE_REQUIRE_PROMETHEUS=1 but the prometheus binary is missing (apt-get install prometheus)"
    );
    eprintln!("SKIPPED prometheus_scrapes_failures_per_class_and_loop_latency: prometheus not found (apt-get install prometheus; TRIAGE_REQUIRE_PROMETHEUS=1 makes this a failure)");
    None
}

/// Starts Prometheus on loopback scraping `target` (host:port) every second, with the alert rules.
/// Its port is one free a moment before; when another listener took it meanwhile, Prometheus
/// exits at once and is started again on another.
fn start_prometheus(bin: &str, target: &str) -> PrometheusServer {
    for _ in 0..3 {
        let mut prom = spawn_prometheus(bin, target);
        if !lost_its_port(&mut prom) {
            return prom;
        }
    }
    panic!("prometheus found its port taken three times");
}

/// Whether `prom` exited within its first seconds because its address was in use.
fn lost_its_port(prom: &mut PrometheusServer) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        // Logged once the listener is bound ("Start listening for connections" comes before).
        let log = prom.log();
        if log.contains("Listening on") || log.contains("Server is ready to receive web requests") {
            return false;
        }
        if let Ok(Some(_)) = prom.child.try_wait() {
            return prom.log().contains("address already in use");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Not listening yet: `until_prometheus` waits on, and reports what happened.
    false
}

fn spawn_prometheus(bin: &str, target: &str) -> PrometheusServer {
    let dir = tempfile::Builder::new()
        .prefix("triage-prometheus-")
        .tempdir()
        .unwrap();
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alerts.yml");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: triage-loop\n    static_configs:\n      - targets: ['{target}']\n",
            rules.display()
        ),
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let log = dir.path().join("prometheus.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("prometheus starts");
    PrometheusServer {
        child,
        addr,
        log,
        _dir: dir,
    }
}

/// Polls `GET path` on Prometheus until `cond` holds on the JSON answer; panics with the last
/// answer and Prometheus's log after `WAIT`.
async fn until_prometheus(
    prom: &mut PrometheusServer,
    path: &str,
    query: &[(&str, &str)],
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + WAIT;
    let mut last = Value::Null;
    loop {
        if let Ok(Some(status)) = prom.child.try_wait() {
            panic!("prometheus exited ({status}):\n{}", prom.log());
        }
        let answer = client
            .get(format!("http://{}{path}", prom.addr))
            .query(query)
            .send()
            .await;
        if let Ok(resp) = answer {
            if let Ok(v) = resp.json::<Value>().await {
                if cond(&v) {
                    return v;
                }
                last = v;
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never answered as expected on {path} {query:?}; last answer: {last:#}\nlog:\n{}",
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `/api/v1/query` result rows as (label value of `by`, value as f64).
fn rows(v: &Value, by: &str) -> Vec<(String, f64)> {
    v["data"]["result"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|r| {
                    let label = r["metric"][by].as_str()?.to_string();
                    let value = r["value"][1].as_str()?.parse().ok()?;
                    Some((label, value))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One failed run whose root cause is `tool` timing out (rule `tool-timeout`: logic_tool).
fn emit_tool_timeout(provider: &SdkTracerProvider, tool_name: &str) {
    let tracer = provider.tracer("agents");
    let root = tracer.start("invoke_agent support-agent");
    let cx = opentelemetry::Context::current_with_span(root);
    cx.span()
        .set_attribute(KeyValue::new("gen_ai.agent.name", "support-agent"));
    let mut tool = tracer.start_with_context(format!("execute_tool {tool_name}"), &cx);
    tool.set_attribute(KeyValue::new("gen_ai.tool.name", tool_name.to_string()));
    tool.set_attribute(KeyValue::new("error.type", "TimeoutError"));
    tool.set_status(Status::error("timed out after 30s"));
    tool.end();
    cx.span().set_status(Status::error("agent run failed"));
    cx.span().end();
}

/// One failed run whose answer an evaluator found off brand (rule `tone-eval`: tone_brand).
fn emit_off_brand(provider: &SdkTracerProvider) {
    let tracer = provider.tracer("agents");
    let root = tracer.start("invoke_agent support-agent");
    let cx = opentelemetry::Context::current_with_span(root);
    let mut answer = tracer.start_with_context("chat gpt-4o", &cx);
    answer.add_event(
        "gen_ai.evaluation.result",
        vec![
            KeyValue::new("gen_ai.evaluation.name", "brand_tone"),
            KeyValue::new("gen_ai.evaluation.score.label", "off_brand"),
            KeyValue::new("gen_ai.evaluation.score.value", 0.2),
        ],
    );
    answer.end();
    cx.span().end();
}

/// Runs `emit` on a blocking thread (the SDK's simple exporter blocks) and flushes.
async fn emit(p: &SdkTracerProvider, emit: impl FnOnce(&SdkTracerProvider) + Send + 'static) {
    let p = p.clone();
    tokio::task::spawn_blocking(move || {
        emit(&p);
        p.force_flush().unwrap();
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_failures_per_class_and_loop_latency() {
    let Some(bin) = prometheus_binary() else {
        return;
    };
    let (downstream, _capture) = start_downstream().await;
    let triage = start_triage(&config_yaml(&downstream.to_string(), TEST_RULES, "")).await;
    let target = triage.admin_addr.unwrap().to_string();
    let mut prom = start_prometheus(bin, &target);
    // Prometheus is up, has loaded both rule groups, and scrapes triage-loop.
    until_prometheus(&mut prom, "/api/v1/rules", &[], |v| {
        v["data"]["groups"].as_array().map(Vec::len) == Some(2)
    })
    .await;
    until_prometheus(&mut prom, "/api/v1/query", &[("query", "up")], |v| {
        rows(v, "job") == [("triage-loop".to_string(), 1.0)]
    })
    .await;

    // Phase 1: a logic_tool and a tone_brand failure, each a new issue dispatched.
    let p = provider(&triage, "support-bot", "1.0.0");
    emit(&p, |p| {
        emit_tool_timeout(p, "lookup_order");
        emit_off_brand(p);
    })
    .await;
    let per_class = [("query", "sum by (class) (triage_failures_total)")];
    until_prometheus(&mut prom, "/api/v1/query", &per_class, |v| {
        let mut r = rows(v, "class");
        r.sort_by(|a, b| a.0.cmp(&b.0));
        r == [("logic_tool".into(), 1.0), ("tone_brand".into(), 1.0)]
    })
    .await;
    let dispatched = [(
        "query",
        r#"sum by (class) (triage_loop_latency_seconds_count{stage="dispatched"})"#,
    )];
    until_prometheus(&mut prom, "/api/v1/query", &dispatched, |v| {
        rows(v, "class").len() == 2
    })
    .await;

    // Phase 2: a second logic_tool issue (another tool) after Prometheus has seen the first, so
    // the latency histogram grows between scrapes and its rate has a quantile.
    emit(&p, |p| emit_tool_timeout(p, "refund_payment")).await;
    until_prometheus(&mut prom, "/api/v1/query", &per_class, |v| {
        rows(v, "class").contains(&("logic_tool".into(), 2.0))
    })
    .await;
    let p90 = [(
        "query",
        r#"histogram_quantile(0.9, sum by (le, class) (rate(triage_loop_latency_seconds_bucket{stage="dispatched"}[1m])))"#,
    )];
    let answer = until_prometheus(&mut prom, "/api/v1/query", &p90, |v| {
        rows(v, "class")
            .iter()
            .any(|(class, s)| class == "logic_tool" && s.is_finite())
    })
    .await;
    let (_, seconds) = rows(&answer, "class")
        .into_iter()
        .find(|(class, _)| class == "logic_tool")
        .unwrap();
    assert!(
        (0.0..=LATENCY_CEILING_S).contains(&seconds),
        "p90 first failure -> dispatched of logic_tool: {seconds}s; {answer:#}"
    );

    // The gate gauge is scraped too (the gate passes: nothing is old or regressed).
    until_prometheus(
        &mut prom,
        "/api/v1/query",
        &[("query", "triage_gate_pass")],
        |v| rows(v, "job") == [("triage-loop".to_string(), 1.0)],
    )
    .await;
    p.shutdown().unwrap();
    triage.shutdown().await;
}

/// The highest p90 a run of this test can show: the first bucket holding a few seconds of
/// assembly and dispatch is 5s or 15s.
const LATENCY_CEILING_S: f64 = 15.0;
