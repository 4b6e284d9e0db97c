//! The Grafana dashboard (deploy/grafana/triage-loop.json): valid JSON whose panels all query
//! through the `${datasource}` variable, and every metric its PromQL names exists on the
//! `/metrics` of a triage-loop that has classified SDK traffic, been labelled by a person, asked
//! its LLM judge and shipped a fix.
//!
//! What "exists" means here: the metric's family is declared on `/metrics` (`# TYPE` line) with a
//! type that fits the name the query uses (`_total` on a counter, `_bucket`/`_sum`/`_count` on a
//! histogram, the bare name on a gauge) and has at least one series with that sample name. The
//! two come together: prometheus-client leaves a family with no series out of the exposition,
//! `# HELP`/`# TYPE` included, so a family that nothing has fed yet is indistinguishable from a
//! wrong name. The test therefore feeds every family the dashboard shows (the drop reasons exist
//! at 0 from the start). Label names in a query's `{…}` matchers must appear on that metric's
//! series.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;
use crate::remediation::{emit_failed_run, get_json, post_json, provider, until};

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/grafana/triage-loop.json"
);

/// Panel types that query nothing (layout rows and text).
const NON_QUERY_PANELS: [&str; 2] = ["row", "text"];

fn load_dashboard() -> Value {
    let text = std::fs::read_to_string(DASHBOARD).expect("deploy/grafana/triage-loop.json");
    serde_json::from_str(&text).expect("the dashboard is valid JSON")
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

/// Every PromQL expression: panel targets and query variables.
fn expressions(dashboard: &Value) -> Vec<String> {
    let mut out: Vec<String> = panels(dashboard)
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    for v in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if v["type"] == "query" {
            let q = v["query"]["query"].as_str().or(v["query"].as_str());
            out.push(q.expect("a query variable has a query").to_string());
        }
    }
    out
}

/// One metric named in an expression, with the label names of the matchers right after it.
#[derive(Debug, PartialEq)]
struct MetricRef {
    name: String,
    labels: Vec<String>,
}

/// The `triage_*` metric names in a PromQL expression (identifiers outside string literals),
/// each with the label names its `{…}` selector matches on.
fn metric_refs(expr: &str) -> Vec<MetricRef> {
    let b = expr.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            q @ (b'"' | b'\'' | b'`') => i = skip_string(b, i, q),
            c if ident(c) && !c.is_ascii_digit() => {
                let start = i;
                while i < b.len() && ident(b[i]) {
                    i += 1;
                }
                let word = &expr[start..i];
                if word.starts_with("triage_") {
                    let mut labels = Vec::new();
                    let mut j = i;
                    while j < b.len() && b[j] == b' ' {
                        j += 1;
                    }
                    if j < b.len() && b[j] == b'{' {
                        let end = selector_end(b, j);
                        labels = matcher_labels(&expr[j + 1..end]);
                        i = end;
                    }
                    out.push(MetricRef {
                        name: word.to_string(),
                        labels,
                    });
                }
            }
            _ => i += 1,
        }
    }
    out
}

/// The index just past the string literal opened by `quote` at `start`.
fn skip_string(b: &[u8], start: usize, quote: u8) -> usize {
    let mut i = start + 1;
    while i < b.len() && b[i] != quote {
        if b[i] == b'\\' && quote != b'`' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

/// The index of the `}` closing the selector opened at `open`.
fn selector_end(b: &[u8], open: usize) -> usize {
    let mut i = open + 1;
    while i < b.len() && b[i] != b'}' {
        i = match b[i] {
            q @ (b'"' | b'\'' | b'`') => skip_string(b, i, q),
            _ => i + 1,
        };
    }
    i.min(b.len())
}

/// The label names of `a="x",b=~"y"`.
fn matcher_labels(inner: &str) -> Vec<String> {
    let b = inner.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            q @ (b'"' | b'\'' | b'`') => i = skip_string(b, i, q),
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                out.push(inner[start..i].to_string());
            }
            _ => i += 1,
        }
    }
    out
}

/// What a Prometheus text exposition declares and holds.
#[derive(Default)]
struct Exposition {
    /// Family name → type, from `# TYPE` lines.
    types: BTreeMap<String, String>,
    /// Sample name → label names seen on its series.
    samples: BTreeMap<String, BTreeSet<String>>,
}

fn parse_exposition(text: &str) -> Exposition {
    let mut e = Exposition::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                e.types.insert(name.to_string(), kind.to_string());
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            let labels = e.samples.entry(line[..end].to_string()).or_default();
            if line[end..].starts_with('{') {
                let close = selector_end(line.as_bytes(), end);
                labels.extend(matcher_labels(&line[end + 1..close]));
            }
        }
    }
    e
}

/// The family a queried sample name belongs to, if the exposition declares it with a type that
/// fits the suffix.
fn family_of(name: &str, e: &Exposition) -> Option<String> {
    let fits = |family: &str, kind: &str| e.types.get(family).is_some_and(|t| t == kind);
    if fits(name, "gauge") {
        return Some(name.to_string());
    }
    if let Some(f) = name.strip_suffix("_total") {
        if fits(f, "counter") {
            return Some(f.to_string());
        }
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(f) = name.strip_suffix(suffix) {
            if fits(f, "histogram") {
                return Some(f.to_string());
            }
        }
    }
    None
}

#[test]
fn the_dashboard_is_valid_and_every_panel_queries_prometheus() {
    let d = load_dashboard();
    assert_eq!(d["uid"], "triage-loop");
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    let vars: BTreeMap<&str, &Value> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    assert_eq!(vars["datasource"]["type"], "datasource");
    assert_eq!(vars["datasource"]["query"], "prometheus");
    for name in ["agent", "service", "class"] {
        let q = vars[name]["query"]["query"].as_str().unwrap();
        assert!(
            q.starts_with("label_values(triage_failures_total") && q.ends_with(&format!("{name})")),
            "{name}: {q}"
        );
    }
    assert_eq!(vars["trace_url"]["type"], "textbox");
    assert!(d["links"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["url"].as_str().unwrap().ends_with("/ui")));

    let all = panels(&d);
    assert!(all.len() > 10, "{} panels", all.len());
    let mut ids = BTreeSet::new();
    let mut titles = BTreeSet::new();
    for p in &all {
        let title = p["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "{title}: duplicate id"
        );
        assert!(titles.insert(title), "duplicate title {title}");
        let g = &p["gridPos"];
        assert!(
            g["w"].as_u64().unwrap() + g["x"].as_u64().unwrap() <= 24,
            "{title}"
        );
        let kind = p["type"].as_str().unwrap();
        if NON_QUERY_PANELS.contains(&kind) {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no targets");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            assert!(refs.insert(t["refId"].as_str().unwrap()), "{title}: refId");
            let expr = t["expr"].as_str().unwrap();
            assert!(
                !metric_refs(expr).is_empty(),
                "{title}: no metric in {expr}"
            );
        }
    }
    // The failure panels link to traces through the trace_url variable.
    let linked = all
        .iter()
        .filter(|p| {
            p["fieldConfig"]["defaults"]["links"]
                .as_array()
                .is_some_and(|l| {
                    l.iter()
                        .any(|l| l["url"].as_str().unwrap().starts_with("${trace_url}"))
                })
        })
        .count();
    assert!(linked >= 2, "failure panels link to traces");
}

#[test]
fn the_tokenizer_finds_metrics_and_matchers_outside_strings() {
    let refs = metric_refs(
        r#"histogram_quantile(0.9, sum by (le) (increase(triage_loop_latency_seconds_bucket{class=~"a}b",stage="x"}[5m]))) / triage_issues + on() label_values(triage_x, y) "triage_not_a_metric""#,
    );
    assert_eq!(
        refs,
        vec![
            MetricRef {
                name: "triage_loop_latency_seconds_bucket".into(),
                labels: vec!["class".into(), "stage".into()],
            },
            MetricRef {
                name: "triage_issues".into(),
                labels: vec![],
            },
            MetricRef {
                name: "triage_x".into(),
                labels: vec![],
            },
        ]
    );
}

/// A dashboard expression as Prometheus sees it once Grafana has put in its variables; a
/// variable's `label_values(selector, label)` becomes its selector.
fn as_promql(expr: &str) -> String {
    let expr = match label_values_args(expr) {
        Some(_) => {
            let inner = &expr["label_values(".len()..expr.len() - 1];
            inner
                .rsplit_once(',')
                .map_or(inner, |(sel, _)| sel)
                .to_string()
        }
        None => expr.to_string(),
    };
    [
        ("$__rate_interval", "5m"),
        ("$__interval", "1m"),
        ("$__range", "1h"),
        ("$latency_window", "7d"),
        ("$agent", ".*"),
        ("$service", ".*"),
        ("$class", ".*"),
        ("$stage", ".*"),
    ]
    .iter()
    .fold(expr, |e, (var, value)| e.replace(var, value))
}

#[test]
fn every_dashboard_query_parses_as_promql() {
    let Ok(out) = std::process::Command::new("promtool")
        .arg("--version")
        .output()
    else {
        assert!(
            std::env::var_os("TRIAGE_REQUIRE_PROMETHEUS").is_none(),
            "TRIAGE_REQUIRE_PROMETHEUS is set but promtool does not run"
        );
        println!("SKIPPED: promtool is not installed (Debian: apt-get install prometheus)");
        return;
    };
    assert!(out.status.success());
    // Each expression as a recording rule: `promtool check rules` parses every one.
    let rules: Vec<Value> = expressions(&load_dashboard())
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let promql = as_promql(e);
            assert!(!promql.contains('$'), "a variable left in {promql}");
            json!({"record": format!("dashboard:query_{i}"), "expr": promql})
        })
        .collect();
    let file = json!({"groups": [{"name": "dashboard", "rules": rules}]});
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard-queries.yml");
    std::fs::write(&path, serde_yaml::to_string(&file).unwrap()).unwrap();
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_exists_on_a_running_instance() {
    let (endpoint, judged) = crate::triage::start_llm(
        r#"{"class": "coverage_gap", "confidence": 0.9, "rationale": "no tool for it"}"#,
    )
    .await;
    let (addr, _capture) = start_downstream().await;
    let processor = format!(
        "{}    llm_judge:\n      enabled: true\n      endpoint: {endpoint}\n      model: local-judge\n      timeout: 5s\n",
        crate::triage::RULES
    );
    let triage = start_triage(&config_yaml(&addr.to_string(), &processor, "")).await;
    let p = provider(&triage, "support-bot", "1.0.0");
    let sdk = p.clone();
    tokio::task::spawn_blocking(move || {
        emit_failed_run(&sdk, 30_000, 1);
        crate::triage::emit_style_violation(&sdk, "support-agent", 1);
        sdk.force_flush().unwrap();
    })
    .await
    .unwrap();

    // The judge is asked about the failure no rule decided.
    assert!(
        eventually(Duration::from_secs(15), || judged.load(Ordering::SeqCst)
            > 0)
        .await,
        "the judge was asked"
    );
    // Both issues dispatched.
    let issues = until(&triage, "/api/v1/issues", |v| {
        v["issues"].as_array().is_some_and(|l| {
            l.len() == 2 && l.iter().all(|i| !i["latency"]["dispatched_s"].is_null())
        })
    })
    .await;
    let ids: Vec<i64> = issues["issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_i64().unwrap())
        .collect();
    // A person labels a failure with a class neither the rules, the fallback nor the judge
    // gave: an override.
    let issue = get_json(&triage, &format!("/api/v1/issues/{}", ids[0])).await;
    let fid = issue["recent_failures"][0]["id"].as_i64().unwrap();
    let (status, out) = post_json(
        &triage,
        &format!("/api/v1/failures/{fid}/label"),
        json!({"class": "data_quality", "note": "the order service returned stale data"}),
    )
    .await;
    assert_eq!(status, 200, "{out:#}");
    // A deployment ships both fixes (the `shipped` stage).
    let (status, out) = post_json(
        &triage,
        "/api/v1/deployments",
        json!({"service": "support-bot", "version": "1.0.1", "fixes": ids}),
    )
    .await;
    assert_eq!(status, 200, "{out:#}");

    // Scrape until the families this traffic feeds have series (the issue gauge refreshes every
    // second, the judge's answer is counted after its reply).
    let d = load_dashboard();
    let refs: Vec<MetricRef> = expressions(&d)
        .iter()
        .flat_map(|e| metric_refs(e))
        .collect();
    let mut last = String::new();
    let mut missing = Vec::new();
    for _ in 0..100 {
        last = scrape(&triage).await;
        missing = check(&refs, &parse_exposition(&last));
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(missing.is_empty(), "{missing:#?}\n{last}");
    // The variables' label_values(metric, label) name a label the metric's series carry.
    let e = parse_exposition(&last);
    for v in d["templating"]["list"].as_array().unwrap() {
        let Some(q) = v["query"]["query"].as_str() else {
            continue;
        };
        let (metric, label) = label_values_args(q).expect("label_values(metric, label)");
        let seen = e.samples.get(&metric).expect("queried metric has series");
        assert!(seen.contains(&label), "{q}: {seen:?}");
    }
    // Spot checks that the traffic above is what fed them.
    assert!(last.contains(r#"triage_overrides_total{from_class="#));
    assert!(last.contains(r#"stage="shipped""#));
    let names: BTreeSet<&str> = refs.iter().map(|r| r.name.as_str()).collect();
    assert!(names.len() >= 15, "{names:?}");
    triage.shutdown().await;
}

/// The metric (without its selector) and the label of `label_values(metric{…}, label)`.
fn label_values_args(q: &str) -> Option<(String, String)> {
    let inner = q.strip_prefix("label_values(")?.strip_suffix(')')?;
    let (metric, label) = inner.rsplit_once(',')?;
    let name = metric_refs(metric).into_iter().next()?.name;
    Some((name, label.trim().to_string()))
}

/// What is wrong with each queried metric on this exposition.
fn check(refs: &[MetricRef], e: &Exposition) -> Vec<String> {
    let mut problems = Vec::new();
    for r in refs {
        if family_of(&r.name, e).is_none() {
            problems.push(format!("{}: no family of a fitting type", r.name));
            continue;
        }
        match e.samples.get(&r.name) {
            None => problems.push(format!("{}: declared, no series", r.name)),
            Some(labels) => {
                for l in r.labels.iter().filter(|l| !labels.contains(*l)) {
                    problems.push(format!("{}: no label {l}", r.name));
                }
            }
        }
    }
    problems.sort();
    problems.dedup();
    problems
}
