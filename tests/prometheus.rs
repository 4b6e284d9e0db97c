//! The Prometheus rules in `deploy/prometheus/` checked and unit-tested with the real `promtool`
//! (Debian's `prometheus` package), and every metric they name checked against the exposition.
//!
//! Without `promtool` the promtool tests print a SKIPPED line and pass, unless
//! `TRIAGE_REQUIRE_PROMETHEUS=1` (CI), where they fail.

use std::path::{Path, PathBuf};
use std::process::Command;

use triage_loop::admin::metrics::Metrics;

const RULES: &str = "deploy/prometheus/alerts.yml";
const RULE_TESTS: &str = "deploy/prometheus/alerts_test.yml";

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// `promtool` when it runs; `None` (after printing SKIPPED) when it is missing and not required.
fn promtool(test: &str) -> Option<&'static str> {
    let found = Command::new("promtool").arg("--version").output().is_ok();
    if found {
        return Some("promtool");
    }
    let required = std::env::var("TRIAGE_REQUIRE_PROMETHEUS").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "TRIAGE_REQUIRE_PROMETHEUS=1 but promtool is not on PATH (apt-get install prometheus)"
    );
    eprintln!("SKIPPED {test}: promtool not found (apt-get install prometheus; TRIAGE_REQUIRE_PROMETHEUS=1 makes this a failure)");
    None
}

/// Runs `promtool args…` in the crate root and asserts it succeeds, showing its output if not.
fn run_promtool(bin: &str, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("running {bin} {args:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{bin} {args:?} failed:\n{text}");
    text
}

#[test]
fn promtool_checks_the_rules() {
    let Some(bin) = promtool("promtool_checks_the_rules") else {
        return;
    };
    let text = run_promtool(bin, &["check", "rules", RULES]);
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn promtool_unit_tests_of_the_alerts_pass() {
    let Some(bin) = promtool("promtool_unit_tests_of_the_alerts_pass") else {
        return;
    };
    let text = run_promtool(bin, &["test", "rules", RULE_TESTS]);
    assert!(text.contains("SUCCESS"), "{text}");
}

/// Every `triage_*` name in a text that is not a recording rule (those have colons).
fn metric_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| t.starts_with("triage_") && !t.contains(':'))
        .map(String::from)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The family a sample name belongs to: `_total`, `_bucket`, `_count` and `_sum` stripped.
fn family(name: &str) -> &str {
    ["_total", "_bucket", "_count", "_sum"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

#[test]
fn every_metric_the_rules_name_is_exported() {
    let m = Metrics::new();
    // Labelled families are rendered once they have a series: one of each, as the product
    // makes them.
    m.failure("logic_tool", "rule", "support-agent", "support-bot");
    m.loop_latency("logic_tool", "dispatched", 2.0);
    m.dispatch("jsonl", "delivered");
    m.receiver_request("grpc", "traces", "accepted");
    m.export_request("traces", "sent");
    m.failure_side_dropped("queue_full", 1);
    m.set_issues("logic_tool", "open", 1);
    // The gate gauges exist once the gate has been evaluated.
    let cfg = triage_loop::config::GateConfig::default();
    m.set_gate(&triage_loop::remediation::gate::evaluate(
        &[],
        &cfg,
        &["logic_tool"],
        0,
    ));
    let exposition = m.render();
    let rules = std::fs::read_to_string(repo_file(RULES)).expect("alerts.yml");
    let names = metric_names(&rules);
    assert!(names.len() >= 10, "{names:?}");
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !exposition.contains(&format!("# TYPE {} ", family(n))))
        .collect();
    assert!(
        missing.is_empty(),
        "alerts.yml names metrics triage-loop does not export: {missing:?}"
    );
}
