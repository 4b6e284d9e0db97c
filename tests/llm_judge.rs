//! The LLM judge against a real local OpenAI-compatible chat-completions server: the request it
//! sends, each kind of answer, errors, the timeout, the rate limit and the daily budget.

use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

use triage_loop::admin::metrics::Metrics;
use triage_loop::classify::llm::{Judge, JudgeConfig, JudgeError, JudgeInput, Judgement};
use triage_loop::classify::taxonomy::Taxonomy;
use triage_loop::clock::{ManualClock, SharedClock};
use triage_loop::failure::detail::{FailureDetail, RootSpan, SignalView, TreeNode};

const KEY_VAR: &str = "TRIAGE_LOOP_LLM_JUDGE_TEST_KEY";
const KEY: &str = "sk-test-0123456789";
const MODEL: &str = "judge-model";

/// Sets the API key variable once, before any judge reads it.
fn set_key() {
    static SET: Once = Once::new();
    SET.call_once(|| std::env::set_var(KEY_VAR, KEY));
}

/// What the server answers.
#[derive(Clone, Copy)]
enum Reply {
    /// This content, with `usage` of (prompt, completion) tokens.
    Content(&'static str, u64, u64),
    /// 200 with a body that is not JSON.
    NotJson,
    /// 500 with a long body.
    ServerError,
    /// Sleeps past any timeout a test sets.
    Sleep,
}

const GOOD: &str =
    r#"{"class": "logic_tool", "confidence": 0.9, "rationale": "The payments tool timed out."}"#;

#[derive(Clone)]
struct Server {
    base: String,
    reply: Reply,
    /// Bodies of the requests that passed the shape check.
    seen: Arc<Mutex<Vec<Value>>>,
    /// Every request received, well-formed or not.
    received: Arc<Mutex<usize>>,
}

impl Server {
    async fn start(reply: Reply) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Server {
            base: format!("http://{}", listener.local_addr().unwrap()),
            reply,
            seen: Arc::default(),
            received: Arc::default(),
        };
        let app = Router::new().fallback(answer).with_state(server.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        server
    }

    fn received(&self) -> usize {
        *self.received.lock().unwrap()
    }

    fn seen(&self) -> Vec<Value> {
        self.seen.lock().unwrap().clone()
    }

    fn config(&self) -> JudgeConfig {
        set_key();
        JudgeConfig {
            enabled: true,
            endpoint: format!("{}/v1/", self.base),
            model: MODEL.into(),
            api_key_env: Some(KEY_VAR.into()),
            timeout: Duration::from_secs(10),
            requests_per_minute: 100,
            ..JudgeConfig::default()
        }
    }

    fn judge(&self) -> Judge {
        judge_for(&self.config())
    }
}

fn judge_for(cfg: &JudgeConfig) -> Judge {
    Judge::new(cfg, &Taxonomy::preset("default").unwrap()).unwrap()
}

/// Why a request is not the chat-completions request the judge must send, if it is not.
fn shape_error(uri: &Uri, headers: &HeaderMap, body: &Value) -> Option<String> {
    if uri.path() != "/v1/chat/completions" {
        return Some(format!("path {}", uri.path()));
    }
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    if auth != Some(&format!("Bearer {KEY}")) {
        return Some(format!("authorization {auth:?}"));
    }
    if body["model"] != MODEL {
        return Some(format!("model {}", body["model"]));
    }
    let system = &body["messages"][0];
    let user = &body["messages"][1];
    if system["role"] != "system" || user["role"] != "user" || body["messages"][2] != Value::Null {
        return Some("messages are not [system, user]".into());
    }
    let system = system["content"].as_str().unwrap_or_default();
    for class in Taxonomy::preset("default").unwrap().classes {
        if !system.contains(&class.name) || !system.contains(&class.remediation) {
            return Some(format!("system message lacks class {}", class.name));
        }
    }
    if !user["content"].is_string() {
        return Some("no user content".into());
    }
    None
}

async fn answer(State(s): State<Server>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    *s.received.lock().unwrap() += 1;
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("not JSON: {e}")).into_response(),
    };
    if let Some(why) = shape_error(&uri, &headers, &body) {
        return (StatusCode::BAD_REQUEST, why).into_response();
    }
    s.seen.lock().unwrap().push(body);
    match s.reply {
        Reply::Content(content, prompt, completion) => axum::Json(json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "judge-model-2025-01",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop"
            }],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion
            }
        }))
        .into_response(),
        Reply::NotJson => (StatusCode::OK, "<html>gateway says hi</html>").into_response(),
        Reply::ServerError => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("model crashed: {}", "x".repeat(2000)),
        )
            .into_response(),
        Reply::Sleep => {
            tokio::time::sleep(Duration::from_secs(600)).await;
            StatusCode::OK.into_response()
        }
    }
}

fn signal(kind: &str, name: &str, message: &str) -> SignalView {
    SignalView {
        kind: kind.into(),
        name: name.into(),
        message: message.into(),
        label: None,
        score: None,
    }
}

fn span(id: u64, parent: Option<u64>, name: &str, kind: &str) -> TreeNode {
    TreeNode {
        span_id: format!("{id:016x}"),
        parent_id: parent.map(|p| format!("{p:016x}")),
        name: name.into(),
        kind: kind.into(),
        start_unix_nano: 1_700_000_000_000_000_000 + id * 10_000_000,
        end_unix_nano: 1_700_000_000_000_000_000 + id * 10_000_000 + 40_000_000,
        class: None,
        signal: None,
        root_cause: false,
    }
}

/// A support agent whose payments tool call timed out.
fn detail() -> FailureDetail {
    let timeout = signal(
        "exception",
        "TimeoutError",
        "payments_api did not answer within 30s",
    );
    let mut tool = span(3, Some(2), "execute_tool payments_api", "client");
    tool.root_cause = true;
    tool.class = Some("logic_tool".into());
    tool.signal = Some(timeout.clone());
    FailureDetail {
        root: RootSpan {
            name: "execute_tool payments_api".into(),
            kind: "client".into(),
            attributes: vec![
                ("gen_ai.tool.name".into(), "payments_api".into()),
                ("error.type".into(), "TimeoutError".into()),
            ],
            signals: vec![timeout],
        },
        tree: vec![
            span(1, None, "invoke_agent support", "server"),
            span(2, Some(1), "chat gpt-4o", "client"),
            tool,
            span(4, Some(1), "chat gpt-4o", "client"),
        ],
        truncated: 0,
    }
}

/// Runs `f` with a judge input for `detail`.
fn input<'a>(signal: &'a Value, detail: Option<&'a FailureDetail>) -> JudgeInput<'a> {
    JudgeInput {
        failure_id: 42,
        current_class: "logic_tool",
        confidence: 0.0,
        signal,
        detail,
        agent: "support-agent",
        service: "support",
    }
}

async fn judge_once(judge: &Judge) -> Result<Judgement, JudgeError> {
    let d = detail();
    let sig = json!({"kind": "exception", "name": "TimeoutError"});
    judge.judge(&input(&sig, Some(&d))).await
}

#[tokio::test]
async fn a_good_answer_is_a_judgement_from_a_well_formed_request() {
    let server = Server::start(Reply::Content(GOOD, 321, 17)).await;
    let judge = server.judge();
    let j = judge_once(&judge).await.unwrap();
    assert_eq!(j.class, "logic_tool");
    assert_eq!(j.confidence, 0.9);
    assert_eq!(j.rationale, "The payments tool timed out.");
    assert_eq!(j.model, "judge-model-2025-01", "the model that answered");
    assert_eq!(j.raw, GOOD);
    assert_eq!(
        (j.prompt_tokens, j.completion_tokens),
        (Some(321), Some(17))
    );

    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    let body = &seen[0];
    assert_eq!(body["temperature"], 0);
    assert_eq!(body["max_tokens"], 400);
    assert_eq!(body["response_format"], json!({"type": "json_object"}));
    let user = body["messages"][1]["content"].as_str().unwrap();
    for part in [
        "agent: support-agent\n",
        "service: support\n",
        "current class: logic_tool (confidence 0.00)\n",
        "root cause span: execute_tool payments_api (client)\n",
        "- exception TimeoutError: payments_api did not answer within 30s\n",
        "  gen_ai.tool.name = payments_api\n",
        "trace (4 spans;",
        "\n  invoke_agent support [server] +0us 40ms\n",
        "\n    chat gpt-4o [client] +10ms 40ms\n",
        "\n      * execute_tool payments_api [client] +20ms 40ms class=logic_tool",
    ] {
        assert!(user.contains(part), "{part:?} not in:\n{user}");
    }
    assert!(
        !format!("{judge:?}").contains(KEY),
        "the key is never printed"
    );
}

#[tokio::test]
async fn without_detail_the_signal_summary_is_sent_and_json_mode_can_be_off() {
    let server = Server::start(Reply::Content(GOOD, 10, 10)).await;
    let judge = judge_for(&JudgeConfig {
        json_mode: false,
        max_answer_tokens: 64,
        ..server.config()
    });
    let sig = json!({"kind": "guardrail", "message": "content_filter fired"});
    judge.judge(&input(&sig, None)).await.unwrap();
    let body = &server.seen()[0];
    assert_eq!(body.get("response_format"), None);
    assert_eq!(body["max_tokens"], 64);
    let user = body["messages"][1]["content"].as_str().unwrap();
    assert!(user.contains("content_filter fired"), "{user}");
}

#[tokio::test]
async fn an_answer_in_a_code_fence_after_some_text_is_read() {
    let fenced = "Sure! Here is the classification:\n```json\n{\"class\": \"data_quality\", \"confidence\": 0.55, \"rationale\": \"stale rows\"}\n```";
    let server = Server::start(Reply::Content(fenced, 1, 1)).await;
    let j = judge_once(&server.judge()).await.unwrap();
    assert_eq!((j.class.as_str(), j.confidence), ("data_quality", 0.55));
    assert_eq!(j.raw, fenced);
}

#[tokio::test]
async fn an_unknown_class_is_refused_with_the_answer_kept() {
    let content = r#"{"class": "billing_bug", "confidence": 0.9, "rationale": "r"}"#;
    let server = Server::start(Reply::Content(content, 1, 1)).await;
    match judge_once(&server.judge()).await {
        Err(e @ JudgeError::UnknownClass { .. }) => {
            assert_eq!(e.outcome(), "unknown_class");
            assert_eq!(e.raw(), Some(content));
            assert!(
                matches!(e, JudgeError::UnknownClass { ref class, .. } if class == "billing_bug")
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn malformed_answers_and_bodies_are_malformed() {
    let cut_short = r#"{"class": "logic_tool", "confidence": 0.9, "rationale": "#;
    let server = Server::start(Reply::Content(cut_short, 1, 1)).await;
    match judge_once(&server.judge()).await {
        Err(e @ JudgeError::Malformed { .. }) => {
            assert_eq!(e.outcome(), "malformed");
            assert_eq!(e.raw(), Some(cut_short));
        }
        other => panic!("{other:?}"),
    }
    let server = Server::start(Reply::NotJson).await;
    match judge_once(&server.judge()).await {
        Err(JudgeError::Malformed { raw }) => assert!(raw.contains("gateway says hi")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_confidence_out_of_range_is_malformed() {
    let content = r#"{"class": "logic_tool", "confidence": 1.7, "rationale": "sure"}"#;
    let server = Server::start(Reply::Content(content, 1, 1)).await;
    let e = judge_once(&server.judge()).await.unwrap_err();
    assert!(
        matches!(e, JudgeError::Malformed { ref raw } if raw == content),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_500_is_an_http_error_with_the_body_cut() {
    let server = Server::start(Reply::ServerError).await;
    match judge_once(&server.judge()).await {
        Err(e @ JudgeError::Http { .. }) => {
            assert_eq!(e.outcome(), "http_error");
            let JudgeError::Http { status, body } = e else {
                unreachable!()
            };
            assert_eq!(status, 500);
            assert!(body.starts_with("model crashed: xxx"), "{body}");
            assert_eq!(body.chars().count(), 512 + 1, "512 chars and …");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_server_that_does_not_answer_in_time_is_a_timeout() {
    let server = Server::start(Reply::Sleep).await;
    let judge = judge_for(&JudgeConfig {
        timeout: Duration::from_millis(300),
        ..server.config()
    });
    let started = Instant::now();
    let e = judge_once(&judge).await.unwrap_err();
    assert!(matches!(e, JudgeError::Timeout), "{e:?}");
    assert_eq!(e.outcome(), "timeout");
    // Generous: the point is that the call does not wait for the server's 600s.
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(server.received(), 1);
}

#[tokio::test]
async fn a_closed_port_is_a_transport_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    set_key();
    let judge = judge_for(&JudgeConfig {
        enabled: true,
        endpoint: base,
        model: MODEL.into(),
        ..JudgeConfig::default()
    });
    let e = judge_once(&judge).await.unwrap_err();
    assert!(matches!(e, JudgeError::Transport(_)), "{e:?}");
    assert_eq!(e.outcome(), "http_error");
}

#[tokio::test]
async fn over_requests_per_minute_the_call_is_refused_at_once() {
    let server = Server::start(Reply::Content(GOOD, 1, 1)).await;
    let clock = ManualClock::new(1_700_000_000_000);
    let judge = judge_for(&JudgeConfig {
        requests_per_minute: 3,
        ..server.config()
    })
    .with_clock(clock.clone() as SharedClock);
    for _ in 0..3 {
        judge_once(&judge).await.unwrap();
    }
    let e = judge_once(&judge).await.unwrap_err();
    assert!(matches!(e, JudgeError::RateLimited), "{e:?}");
    assert_eq!(server.received(), 3, "the refused call sent nothing");
    assert_eq!(judge.ready_in(), Duration::from_secs(20));

    let metrics = Metrics::new();
    metrics.judge_outcome(e.outcome());
    assert!(metrics
        .render()
        .contains("triage_judge_total{outcome=\"rate_limited\"} 1"));

    clock.advance(20_000);
    assert_eq!(judge.ready_in(), Duration::ZERO);
    judge_once(&judge).await.unwrap();
    assert_eq!(server.received(), 4);
}

#[tokio::test]
async fn max_requests_per_day_is_a_budget_per_utc_day() {
    let server = Server::start(Reply::Content(GOOD, 1, 1)).await;
    let clock = ManualClock::new(1_700_000_000_000);
    let judge = judge_for(&JudgeConfig {
        max_requests_per_day: 2,
        ..server.config()
    })
    .with_clock(clock.clone() as SharedClock);
    judge_once(&judge).await.unwrap();
    judge_once(&judge).await.unwrap();
    let e = judge_once(&judge).await.unwrap_err();
    assert!(matches!(e, JudgeError::BudgetExhausted), "{e:?}");
    assert_eq!(e.outcome(), "budget_exhausted");
    assert_eq!(server.received(), 2);
    // 1_700_000_000_000 ms is 22:13:20 UTC: the budget comes back at midnight.
    assert_eq!(judge.ready_in(), Duration::from_secs(3600 + 46 * 60 + 40));
    clock.advance(judge.ready_in().as_millis() as i64);
    judge_once(&judge).await.unwrap();
    assert_eq!(server.received(), 3);
}

#[tokio::test]
async fn max_tokens_per_day_counts_the_usage_of_each_answer() {
    let server = Server::start(Reply::Content(GOOD, 400, 150)).await;
    let judge = judge_for(&JudgeConfig {
        max_tokens_per_day: 500,
        ..server.config()
    });
    judge_once(&judge).await.unwrap();
    let e = judge_once(&judge).await.unwrap_err();
    assert!(matches!(e, JudgeError::BudgetExhausted), "{e:?}");
    assert_eq!(server.received(), 1, "no request once the tokens are spent");
}

#[test]
fn an_enabled_judge_with_a_bad_endpoint_is_refused_at_config_load() {
    let yaml = "processors:\n  failure_triage:\n    llm_judge: {enabled: true, model: m, endpoint: 'ftp://models.example'}\nservice:\n  pipelines:\n    traces: {receivers: [otlp], processors: [failure_triage], exporters: [otlp]}\n";
    let e = triage_loop::config::load_str(yaml, "c.yaml").err().unwrap();
    assert_eq!(e.path, "processors.failure_triage.llm_judge");
    assert!(e.message.starts_with("endpoint"), "{e}");
    let ok = yaml.replace("ftp://models.example", "https://models.example/v1");
    assert!(triage_loop::config::load_str(&ok, "c.yaml").is_ok());
    let off = yaml.replace("enabled: true", "enabled: false");
    assert!(triage_loop::config::load_str(&off, "c.yaml").is_ok());
}
