//! Human triage end to end: SDK traces that no rule decides wait in the queue; a label through
//! the API re-routes the issue, counts an override, teaches the hot path (the next failure of
//! the issue is tagged source=human) and the model (a failure of the same kind elsewhere is
//! classified source=model with the label's class); the CLI lists the queue and labels.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::{Span as _, Status, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::{json, Value};

use crate::common::*;
use crate::remediation::{cli, get_json, jsonl_lines, post_json, provider, until};

/// Only the timeout rule: a style violation in a tool is decided by no rule (the fallback).
pub const RULES: &str = r#"    builtin_rules: false
    audit_rate: 0
    model:
      min_labels: 1
    rules:
      - name: tool-timeout
        class: logic_tool
        confidence: 0.95
        condition: 'span.status.code == STATUS_CODE_ERROR and IsMatch(span.attributes["error.type"], "(?i)timeout")'
"#;

/// One failed run of `agent`: its tool `brand_voice_check` reports a style violation.
/// Returns the trace id.
pub fn emit_style_violation(p: &SdkTracerProvider, agent: &str, n: u32) -> String {
    let tracer = p.tracer("agents");
    let root = tracer
        .span_builder(format!("invoke_agent {agent}"))
        .with_attributes(vec![
            KeyValue::new("gen_ai.operation.name", "invoke_agent"),
            KeyValue::new("gen_ai.agent.name", agent.to_string()),
        ])
        .start(&tracer);
    let trace_id = root.span_context().trace_id().to_string();
    let cx = opentelemetry::Context::current_with_span(root);
    let chat = tracer.start_with_context("chat gpt-4o", &cx);
    let chat_cx = cx.with_span(chat);
    let mut tool = tracer.start_with_context("execute_tool brand_voice_check", &chat_cx);
    tool.set_attribute(KeyValue::new("gen_ai.operation.name", "execute_tool"));
    tool.set_attribute(KeyValue::new("gen_ai.tool.name", "brand_voice_check"));
    tool.set_attribute(KeyValue::new("error.type", "StyleViolation"));
    tool.set_status(Status::error(format!(
        "reply {n} used slang and an off-brand greeting"
    )));
    tool.end();
    chat_cx.span().end();
    cx.span().set_status(Status::error("agent run failed"));
    cx.span().end();
    trace_id
}

async fn emit(p: &SdkTracerProvider, agent: &'static str, n: u32) -> String {
    let p = p.clone();
    tokio::task::spawn_blocking(move || {
        let id = emit_style_violation(&p, agent, n);
        p.force_flush().unwrap();
        id
    })
    .await
    .unwrap()
}

/// The failure tags the downstream received on the spans of `trace_id` that carry one.
fn tags_of(capture: &Capture, trace_id: &str) -> Vec<(String, String)> {
    let want = hex::decode(trace_id);
    capture
        .traces
        .lock()
        .unwrap()
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .filter(|s| s.trace_id == want)
        .filter_map(|s| {
            Some((
                attr(&s.attributes, "failure.class")?.to_string(),
                attr(&s.attributes, "failure.class.source")?.to_string(),
            ))
        })
        .collect()
}

mod hex {
    pub fn decode(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_reroutes_the_issue_and_teaches_the_hot_path_and_the_model() {
    let dir = data_dir();
    let (addr, capture) = start_downstream().await;
    let yaml = config_yaml_in(&dir, &addr.to_string(), RULES, "");
    let triage = start_triage(&yaml).await;
    let admin = format!("http://{}", triage.admin_addr.unwrap());
    let p = provider(&triage, "support-bot", "1.0.0");

    // 1. A failure no rule decides waits for a person.
    let first = emit(&p, "support-agent", 1).await;
    let queue = until(&triage, "/api/v1/queue", |v| {
        v["queue"].as_array().is_some_and(|q| q.len() == 1)
    })
    .await;
    let item = &queue["queue"][0];
    assert_eq!(item["reason"], "fallback", "{item:#}");
    assert_eq!(item["class"], "logic_tool");
    assert_eq!(item["trace_id"], first.as_str());
    assert_eq!(item["operation"], "brand_voice_check");
    assert!(item["summary"].as_str().unwrap().contains("StyleViolation"));
    let fid = item["failure_id"].as_i64().unwrap();
    let issue_id = item["issue_id"].as_i64().unwrap();

    // 2. The failure with its trace as a tree, the root cause marked.
    let f = get_json(&triage, &format!("/api/v1/failures/{fid}")).await;
    let detail = &f["failure"]["detail"];
    let tree = detail["tree"].as_array().unwrap();
    assert_eq!(tree.len(), 3, "agent → chat → tool: {tree:#?}");
    assert_eq!(tree[0]["name"], "invoke_agent support-agent");
    assert!(tree[0]["parent_id"].is_null());
    let cause: Vec<&Value> = tree.iter().filter(|n| n["root_cause"] == true).collect();
    assert_eq!(cause.len(), 1);
    assert_eq!(cause[0]["name"], "execute_tool brand_voice_check");
    assert_eq!(cause[0]["signal"]["name"], "StyleViolation");
    assert!(detail["root"]["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|kv| kv[0] == "gen_ai.tool.name" && kv[1] == "brand_voice_check"));
    assert_eq!(f["issue"]["id"], issue_id);
    assert!(f["failure"]["features"]
        .as_array()
        .is_some_and(|v| !v.is_empty()));
    let taxonomy = get_json(&triage, "/api/v1/taxonomy").await;
    assert_eq!(taxonomy["classes"].as_array().unwrap().len(), 4);

    // 3. Bad labels are refused with a reason.
    let (status, body) = post_json(
        &triage,
        &format!("/api/v1/failures/{fid}/label"),
        json!({"class": "nonsense"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("tone_brand"));
    let (status, _) = post_json(
        &triage,
        "/api/v1/failures/999999/label",
        json!({"class": "tone_brand"}),
    )
    .await;
    assert_eq!(status, 404);

    // 4. A person's label re-routes the issue: the old dispatches are superseded.
    let (status, out) = post_json(
        &triage,
        &format!("/api/v1/failures/{fid}/label"),
        json!({"class": "tone_brand", "note": "slang is a tone problem, not a tool bug"}),
    )
    .await;
    assert_eq!(status, 200, "{out:#}");
    assert_eq!(out["rerouted"], true);
    assert_eq!(out["superseded"], 2, "jsonl and otlp_log: {out:#}");
    assert_eq!(out["dispatches_enqueued"], 2);
    assert_eq!(out["issue"]["class"], "tone_brand");
    assert_eq!(out["issue"]["source"], "human");
    assert_eq!(out["issue"]["remediation"], "prompt_edit");
    assert_eq!(out["label"]["from_class"], "logic_tool");
    let rerouted_key = format!("{issue_id}:1.1:jsonl");
    assert!(
        eventually(Duration::from_secs(10), || jsonl_lines(&dir).iter().any(
            |l| l["idempotency_key"] == rerouted_key.as_str() && l["class"] == "tone_brand"
        ))
        .await,
        "the new path is dispatched: {:#?}",
        jsonl_lines(&dir)
    );
    let issue = get_json(&triage, &format!("/api/v1/issues/{issue_id}")).await;
    let superseded = issue["dispatches"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["superseded_at"].is_number())
        .count();
    assert_eq!(superseded, 2, "{issue:#}");
    let metrics = scrape(&triage).await;
    assert_eq!(
        metric_value(
            &metrics,
            r#"triage_overrides_total{from_class="logic_tool",to_class="tone_brand"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    let queue = get_json(&triage, "/api/v1/queue").await;
    assert_eq!(queue["queue"].as_array().unwrap().len(), 0, "{queue:#}");

    // 5. The hot path learned it: the issue's next failure is tagged by the person's class.
    let second = emit(&p, "support-agent", 2).await;
    until(&triage, &format!("/api/v1/issues/{issue_id}"), |v| {
        v["issue"]["occurrences"] == 2
    })
    .await;
    assert!(
        eventually(Duration::from_secs(10), || tags_of(&capture, &second)
            .contains(&("tone_brand".into(), "human".into())))
        .await,
        "{:?}",
        tags_of(&capture, &second)
    );

    // 6. The model learned it: the same kind of failure in another service's agent (another
    // fingerprint, so another issue) is classified by the model with the label's class.
    let sales = provider(&triage, "sales-bot", "1.0.0");
    let third = emit(&sales, "sales-agent", 3).await;
    let list = until(&triage, "/api/v1/issues?agent=sales-agent", |v| {
        v["issues"].as_array().is_some_and(|l| l.len() == 1)
    })
    .await;
    let other = &list["issues"][0];
    assert_eq!(other["class"], "tone_brand", "{other:#}");
    assert_eq!(other["source"], "model", "{other:#}");
    assert!(tags_of(&capture, &third).contains(&("tone_brand".into(), "model".into())));
    let other_id = other["id"].as_i64().unwrap();
    let other_detail = get_json(&triage, &format!("/api/v1/issues/{other_id}")).await;
    let other_failure = other_detail["recent_failures"][0]["id"].as_i64().unwrap();

    // 7. The CLI: the queue as a table, and a label.
    let (code, out) = cli(&["queue", "--admin", &admin]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("FAILURE"), "{out}");
    let (code, out) = cli(&[
        "label",
        &other_failure.to_string(),
        "coverage_gap",
        "--note",
        "sales has no tool for this",
        "--admin",
        &admin,
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "issue {other_id}: re-routed tone_brand -> coverage_gap"
        )),
        "{out}"
    );
    let (code, out) = cli(&["label", "1", "nonsense", "--admin", &admin]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("unknown class"), "{out}");

    // 8. Failures per class over time follow the issues' classes.
    let stats = get_json(&triage, "/api/v1/stats?window=2h&step=1h").await;
    let sum = |class: &str| -> i64 {
        stats["classes"][class]["failures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .sum()
    };
    assert_eq!(
        (sum("tone_brand"), sum("coverage_gap")),
        (2, 1),
        "{stats:#}"
    );
    assert_eq!(stats["buckets"].as_array().unwrap().len(), 2);
    let bad = reqwest::get(format!("{admin}/api/v1/stats?step=1s&window=90d"))
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    triage.shutdown().await;
}

/// A local OpenAI-compatible endpoint that answers every chat completion with `content`, and
/// counts the requests.
pub async fn start_llm(content: &'static str) -> (String, Arc<AtomicUsize>) {
    use axum::routing::post;
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move |axum::Json(body): axum::Json<Value>| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let system = body["messages"][0]["content"].as_str().unwrap_or("");
                assert!(system.contains("coverage_gap"), "the classes are given");
                axum::Json(json!({
                    "model": "local-judge",
                    "choices": [{"message": {"role": "assistant", "content": content}}],
                    "usage": {"prompt_tokens": 300, "completion_tokens": 20},
                }))
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (format!("http://{addr}/v1"), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_llm_judge_reroutes_undecided_issues_and_its_answers_are_kept() {
    let (endpoint, seen) = start_llm(
        r#"{"class": "coverage_gap", "confidence": 0.85, "rationale": "no tool covers this request"}"#,
    )
    .await;
    let dir = data_dir();
    let (addr, _capture) = start_downstream().await;
    let judge = format!(
        "{RULES}    llm_judge:\n      enabled: true\n      endpoint: {endpoint}\n      model: local-judge\n      timeout: 5s\n"
    );
    let triage = start_triage(&config_yaml_in(&dir, &addr.to_string(), &judge, "")).await;
    let p = provider(&triage, "support-bot", "1.0.0");
    emit(&p, "support-agent", 1).await;
    let list = until(&triage, "/api/v1/issues", |v| {
        v["issues"][0]["source"] == "llm"
    })
    .await;
    let issue = &list["issues"][0];
    assert_eq!(issue["class"], "coverage_gap", "{issue:#}");
    assert_eq!(issue["remediation"], "scope_escalation");
    let id = issue["id"].as_i64().unwrap();
    let detail = get_json(&triage, &format!("/api/v1/issues/{id}")).await;
    let fid = detail["recent_failures"][0]["id"].as_i64().unwrap();
    let f = until(&triage, &format!("/api/v1/failures/{fid}"), |v| {
        v["failure"]["judgement"]["outcome"] == "answered"
    })
    .await;
    let j = &f["failure"]["judgement"];
    assert_eq!(j["class"], "coverage_gap");
    assert_eq!(j["applied"], true);
    assert_eq!(j["tokens"], 320);
    assert_eq!(j["model"], "local-judge");
    assert!(j["raw"].as_str().unwrap().contains("no tool covers"));
    // Decided by the judge: out of the queue; a re-route, not a human override.
    let queue = get_json(&triage, "/api/v1/queue").await;
    assert_eq!(queue["queue"].as_array().unwrap().len(), 0, "{queue:#}");
    let metrics = scrape(&triage).await;
    assert_eq!(
        metric_value(&metrics, r#"triage_judge_total{outcome="answered"}"#),
        Some(1.0)
    );
    assert!(!metrics.contains("triage_overrides_total{"), "{metrics}");
    // The issue's next failure is not judged again.
    emit(&p, "support-agent", 2).await;
    until(&triage, &format!("/api/v1/issues/{id}"), |v| {
        v["issue"]["occurrences"] == 2
    })
    .await;
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    triage.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_judge_answer_is_recorded_and_changes_nothing() {
    let (endpoint, _seen) = start_llm("I think it is probably a tone thing?").await;
    let dir = data_dir();
    let (addr, _capture) = start_downstream().await;
    let judge = format!(
        "{RULES}    llm_judge:\n      enabled: true\n      endpoint: {endpoint}\n      model: local-judge\n"
    );
    let triage = start_triage(&config_yaml_in(&dir, &addr.to_string(), &judge, "")).await;
    let p = provider(&triage, "support-bot", "1.0.0");
    emit(&p, "support-agent", 1).await;
    let queue = until(&triage, "/api/v1/queue", |v| {
        v["queue"].as_array().is_some_and(|q| q.len() == 1)
    })
    .await;
    let fid = queue["queue"][0]["failure_id"].as_i64().unwrap();
    let f = until(&triage, &format!("/api/v1/failures/{fid}"), |v| {
        v["failure"]["judgement"].is_object()
    })
    .await;
    assert_eq!(f["failure"]["judgement"]["outcome"], "malformed", "{f:#}");
    assert_eq!(f["failure"]["judgement"]["applied"], false);
    assert_eq!(f["issue"]["source"], "rule");
    let metrics = scrape(&triage).await;
    assert_eq!(
        metric_value(&metrics, r#"triage_judge_total{outcome="malformed"}"#),
        Some(1.0)
    );
    triage.shutdown().await;
}
