//! The triage page in a real headless Chromium driven over W3C WebDriver (chromedriver): SDK
//! failures no rule decides → the queue on the page → keys open one → a note and a class key
//! relabel it → the API shows the issue re-routed to that class by a human, and so does the page.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer, TracerProvider as _,
};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::{json, Value};

use crate::common::*;
use crate::remediation::provider;

/// Where Debian's `chromium-driver` puts chromedriver; `CHROMEDRIVER` overrides it.
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The W3C WebDriver element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const ENTER: &str = "\u{E007}";
const ESCAPE: &str = "\u{E00C}";
/// How long a page or API condition may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(20);

// ---- WebDriver -------------------------------------------------------------------------------

/// A chromedriver process on a free port, killed on drop.
struct Driver {
    child: Child,
    base: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start(path: &Path) -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", path.display()));
        let driver = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + PATIENCE;
        loop {
            let ready = match reqwest::get(format!("{}/status", driver.base)).await {
                Ok(r) => r.json::<Value>().await.ok(),
                Err(_) => None,
            };
            if ready.is_some_and(|v| v["value"]["ready"] == true) {
                return driver;
            }
            assert!(Instant::now() < deadline, "chromedriver did not get ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A headless Chromium session.
    async fn session(&self) -> Session {
        let mut options = json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"]
        });
        if Path::new("/usr/bin/chromium").exists() {
            options["binary"] = json!("/usr/bin/chromium");
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": options,
        }}});
        let http = reqwest::Client::new();
        let resp = http
            .post(format!("{}/session", self.base))
            .json(&caps)
            .send()
            .await
            .expect("chromedriver answers");
        let v: Value = resp.json().await.expect("a JSON answer");
        let id = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v:#}"));
        Session {
            http,
            url: format!("{}/session/{id}", self.base),
        }
    }
}

/// One browser session.
#[derive(Clone)]
struct Session {
    http: reqwest::Client,
    url: String,
}

impl Session {
    /// A WebDriver command; its `value`, or the WebDriver error as text.
    async fn cmd(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let ok = resp.status().is_success();
        let v: Value = resp.json().await.map_err(|e| e.to_string())?;
        if ok {
            Ok(v["value"].clone())
        } else {
            Err(format!("{path}: {}", v["value"]))
        }
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.cmd(reqwest::Method::POST, path, Some(body))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    /// Presses and releases each key in turn, as a person at the keyboard would.
    async fn press(&self, keys: &[&str]) {
        let actions: Vec<Value> = keys
            .iter()
            .flat_map(|k| {
                [
                    json!({"type": "keyDown", "value": k}),
                    json!({"type": "keyUp", "value": k}),
                ]
            })
            .collect();
        self.post(
            "/actions",
            json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]}),
        )
        .await;
    }

    /// Types `text` key by key.
    async fn type_text(&self, text: &str) {
        let keys: Vec<String> = text.chars().map(String::from).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        self.press(&keys).await;
    }

    /// Element ids matching a CSS selector.
    async fn find_all(&self, css: &str) -> Vec<String> {
        let v = self
            .post("/elements", json!({"using": "css selector", "value": css}))
            .await;
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The rendered text of the first element matching `css` (empty when hidden), if any.
    async fn text(&self, css: &str) -> Option<String> {
        let id = self.find_all(css).await.into_iter().next()?;
        self.cmd(reqwest::Method::GET, &format!("/element/{id}/text"), None)
            .await
            .ok()
            .and_then(|v| v.as_str().map(String::from))
    }

    async fn attribute(&self, css: &str, name: &str) -> Option<String> {
        let id = self.find_all(css).await.into_iter().next()?;
        self.cmd(
            reqwest::Method::GET,
            &format!("/element/{id}/attribute/{name}"),
            None,
        )
        .await
        .ok()
        .and_then(|v| v.as_str().map(String::from))
    }

    /// Waits until the text of `css` satisfies `cond`; on timeout fails with a screenshot and
    /// what the page shows.
    async fn wait_text(&self, css: &str, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(t) = self.text(css).await {
                if cond(&t) {
                    return t;
                }
            }
            if Instant::now() > deadline {
                let shot = self.screenshot("failed").await;
                panic!(
                    "page never showed {what} in `{css}`; it shows {:?} (error: {:?}); screenshot {}",
                    self.text("main").await,
                    self.text("#error").await,
                    shot.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Saves a PNG of the window under `<target>/ui-screenshots/<name>.png`.
    async fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self
            .cmd(reqwest::Method::GET, "/screenshot", None)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let png = base64_decode(b64.as_str().unwrap_or_default()).expect("base64 PNG");
        let dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("target"))
            .join("ui-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    async fn close(&self) {
        let _ = self.cmd(reqwest::Method::DELETE, "", None).await;
    }
}

/// Standard base64 (the WebDriver screenshot encoding).
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

// ---- telemetry and API -----------------------------------------------------------------------

/// One failed run of the billing agent whose root cause is `operation` failing with an error
/// that none of the built-in rules knows; `evaluation` adds a failing evaluation result to it.
fn emit_unruled_run(
    p: &SdkTracerProvider,
    operation: &str,
    error: &str,
    message: &str,
    evaluation: bool,
) {
    let tracer = p.tracer("agents");
    let root = tracer
        .span_builder("invoke_agent billing-agent")
        .with_kind(SpanKind::Server)
        .with_attributes(vec![
            KeyValue::new("gen_ai.operation.name", "invoke_agent"),
            KeyValue::new("gen_ai.agent.name", "billing-agent"),
        ])
        .start(&tracer);
    let cx = opentelemetry::Context::current_with_span(root);
    // The step runs inside the model call, so the call ends after it: spans of a trace sent
    // before its first signal are not kept by the failure side.
    let chat_cx = cx.with_span(tracer.start_with_context("chat gpt-4o", &cx));
    let mut step = tracer.start_with_context(operation.to_string(), &chat_cx);
    step.set_attribute(KeyValue::new("error.type", error.to_string()));
    step.set_attribute(KeyValue::new("billing.order.id", "A-1042"));
    if evaluation {
        step.add_event(
            "gen_ai.evaluation.result",
            vec![
                KeyValue::new("gen_ai.evaluation.name", "plan_consistency"),
                KeyValue::new("gen_ai.evaluation.score.label", "fail"),
                KeyValue::new("gen_ai.evaluation.score.value", 0.2),
            ],
        );
    }
    step.set_status(Status::error(message.to_string()));
    step.end();
    chat_cx.span().end();
    cx.span().end();
}

async fn get_json(admin: &str, path: &str) -> Value {
    let resp = reqwest::get(format!("{admin}{path}")).await.unwrap();
    let status = resp.status();
    let v: Value = resp.json().await.unwrap();
    assert!(status.is_success(), "GET {path}: {status} {v}");
    v
}

/// Polls `GET path` until `cond` holds.
async fn until(admin: &str, path: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let v = get_json(admin, path).await;
        if cond(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met on {path}: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- the test --------------------------------------------------------------------------------

/// The chromedriver to use, or the path where none was found.
fn chromedriver() -> Result<PathBuf, PathBuf> {
    let path = std::env::var_os("CHROMEDRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(CHROMEDRIVER));
    if path.exists() {
        Ok(path)
    } else {
        Err(path)
    }
}

/// The chromedriver, or None after saying why the browser test is skipped (a failure when
/// `TRIAGE_REQUIRE_BROWSER=1`).
fn chromedriver_or_skip() -> Option<PathBuf> {
    match chromedriver() {
        Ok(path) => Some(path),
        Err(missing) => {
            let why = format!(
                "no chromedriver at {} (apt-get install chromium chromium-driver)",
                missing.display()
            );
            assert!(
                std::env::var("TRIAGE_REQUIRE_BROWSER").as_deref() != Ok("1"),
                "TRIAGE_REQUIRE_BROWSER=1 but {why}"
            );
            // Straight to stderr: the test harness hides printed output of passing tests.
            let _ = writeln!(std::io::stderr(), "SKIPPED ui browser test: {why}");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_relabels_a_queued_failure_by_keyboard_and_the_issue_is_rerouted() {
    let Some(driver_path) = chromedriver_or_skip() else {
        return;
    };
    let dir = data_dir();
    let (addr, _capture) = start_downstream().await;
    let yaml = config_yaml_in(
        &dir,
        &addr.to_string(),
        "    trace_url_template: http://jaeger.example:16686/trace/{trace_id}\n",
        "",
    );
    let triage = start_triage(&yaml).await;
    let admin = format!("http://{}", triage.admin_addr.unwrap());
    let p = provider(&triage, "billing-bot", "2.3.0");

    // Two failures of different issues, the first queued before the second is sent.
    let emit = |operation: &'static str, error: &'static str, message: &'static str, eval: bool| {
        let p = p.clone();
        tokio::task::spawn_blocking(move || {
            emit_unruled_run(&p, operation, error, message, eval);
            p.force_flush().unwrap();
        })
    };
    emit(
        "plan refund",
        "PlanMismatch",
        "plan step produced no decision for order A-1042",
        true,
    )
    .await
    .unwrap();
    until(&admin, "/api/v1/queue", |v| {
        v["queue"].as_array().is_some_and(|q| q.len() == 1)
    })
    .await;
    emit(
        "compose reply",
        "DraftMismatch",
        "reply draft disagrees with the ledger",
        false,
    )
    .await
    .unwrap();
    let queue = until(&admin, "/api/v1/queue", |v| {
        v["queue"].as_array().is_some_and(|q| q.len() == 2)
    })
    .await;
    let queue = queue["queue"].as_array().unwrap().clone();
    for q in &queue {
        assert_eq!(
            q["reason"], "fallback",
            "no rule decides these failures: {q:#}"
        );
    }
    let first = &queue[0];
    let second = &queue[1];
    assert_eq!(
        first["operation"], "plan refund",
        "oldest first: {queue:#?}"
    );
    let issue_id = first["issue_id"].as_i64().unwrap();
    let from_class = first["class"].as_str().unwrap().to_string();
    let classes: Vec<String> = get_json(&admin, "/api/v1/taxonomy").await["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    let (index, to_class) = classes
        .iter()
        .enumerate()
        .find(|(_, c)| **c != from_class)
        .expect("a class other than the fallback");
    let class_key = (index + 1).to_string();
    let dispatches_before = get_json(&admin, &format!("/api/v1/issues/{issue_id}")).await
        ["dispatches"]
        .as_array()
        .map_or(0, Vec::len);

    let driver = Driver::start(&driver_path).await;
    let session = driver.session().await;
    let ctx = Scenario {
        session: session.clone(),
        dir: dir.clone(),
        admin: admin.clone(),
        issue_id,
        first_failure: first["failure_id"].as_i64().unwrap(),
        second_failure: second["failure_id"].as_i64().unwrap(),
        from_class,
        to_class: to_class.clone(),
        class_key,
        dispatches_before,
        trace_url: format!(
            "http://jaeger.example:16686/trace/{}",
            first["trace_id"].as_str().unwrap()
        ),
    };
    // The scenario runs as its own task so the browser is closed even when it fails.
    let outcome = tokio::spawn(ctx.run()).await;
    session.close().await;
    drop(driver);
    triage.shutdown().await;
    drop(p);
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// With `extensions.triage_admin.auth`, the page asks for the token on the API's 401, keeps it
/// for the tab, sends it with every call, and forgets it on request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_page_asks_for_the_token_and_then_works() {
    let Some(driver_path) = chromedriver_or_skip() else {
        return;
    };
    const TOKEN: &str = "page-t0ken";
    let dir = data_dir();
    std::fs::write(dir.join("admin-token"), format!("{TOKEN}\n")).unwrap();
    let yaml = config_yaml_in(&dir, "127.0.0.1:1", "", "").replace(
        "    endpoint: 127.0.0.1:0\nservice:",
        &format!(
            "    endpoint: 127.0.0.1:0\n    auth:\n      bearer_token_file: {}\nservice:",
            dir.join("admin-token").display()
        ),
    );
    let triage = start_triage(&yaml).await;
    let admin = format!("http://{}", triage.admin_addr.unwrap());
    let driver = Driver::start(&driver_path).await;
    let session = driver.session().await;
    let s = session.clone();
    let outcome = tokio::spawn(async move {
        s.goto(&format!("{admin}/ui")).await;
        s.wait_text("main", "the token prompt", |t| {
            t.contains("Admin token") && t.contains("requires a token")
        })
        .await;
        assert_eq!(s.text("#forget-token").await.as_deref(), Some(""), "hidden");
        // The field has the focus: a wrong token is refused and asked again.
        s.type_text("wrong").await;
        s.press(&[ENTER]).await;
        s.wait_text("main", "the refusal", |t| t.contains("was refused"))
            .await;
        s.type_text(TOKEN).await;
        s.press(&[ENTER]).await;
        s.wait_text("main", "the queue", |t| t.contains("Triage queue"))
            .await;
        assert_eq!(
            s.text("#forget-token").await.as_deref(),
            Some("Forget token")
        );
        // The tab keeps it: a reload and another view need no new prompt.
        s.goto(&format!("{admin}/ui#/issues")).await;
        s.wait_text("main", "the issues", |t| t.starts_with("Issues"))
            .await;
        s.post("/refresh", json!({})).await;
        s.wait_text("main", "the issues after a reload", |t| {
            t.starts_with("Issues")
        })
        .await;
        // Forgotten, the page asks again.
        let id = s.find_all("#forget-token").await.remove(0);
        s.post(&format!("/element/{id}/click"), json!({})).await;
        s.wait_text("main", "the prompt again", |t| t.contains("Admin token"))
            .await;
    })
    .await;
    session.close().await;
    drop(driver);
    triage.shutdown().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

struct Scenario {
    session: Session,
    /// The store and the jsonl sink's file.
    dir: PathBuf,
    admin: String,
    issue_id: i64,
    first_failure: i64,
    second_failure: i64,
    from_class: String,
    to_class: String,
    class_key: String,
    dispatches_before: usize,
    trace_url: String,
}

impl Scenario {
    async fn run(self) {
        let s = &self.session;
        let rows = "#queue tbody tr";
        s.goto(&format!("{}/ui", self.admin)).await;
        s.wait_text("#queue", "both queued failures", |t| {
            t.contains("plan refund") && t.contains("compose reply")
        })
        .await;
        assert_eq!(s.find_all(rows).await.len(), 2);
        let sel = format!("{rows}.sel");
        let selected = || s.attribute(&sel, "data-failure");
        assert_eq!(selected().await, Some(self.first_failure.to_string()));
        s.press(&["j"]).await;
        assert_eq!(
            selected().await,
            Some(self.second_failure.to_string()),
            "j moves down"
        );
        s.press(&["k"]).await;
        assert_eq!(
            selected().await,
            Some(self.first_failure.to_string()),
            "k moves up"
        );
        s.screenshot("queue").await;

        // Enter opens the failure: span tree with the root cause, signals, attributes, trace link.
        s.press(&[ENTER]).await;
        s.wait_text("h1", "the root cause span's name", |t| {
            t.contains("plan refund")
        })
        .await;
        let root = s
            .wait_text("tr.root-cause", "the root cause row", |t| !t.is_empty())
            .await;
        assert!(
            root.contains("plan refund") && root.contains("root cause"),
            "{root}"
        );
        let failure = get_json(
            &self.admin,
            &format!("/api/v1/failures/{}", self.first_failure),
        )
        .await;
        assert_eq!(
            s.find_all("table.spans tbody tr").await.len(),
            3,
            "agent, chat, plan: {:#}",
            failure["failure"]["detail"]
        );
        let signals = s.text("table.signals").await.unwrap_or_default();
        assert!(
            signals.contains("PlanMismatch")
                && signals.contains("plan_consistency")
                && signals.contains("fail"),
            "status and evaluation signals: {signals}"
        );
        let attrs = s.text("table.attrs").await.unwrap_or_default();
        assert!(
            attrs.contains("billing.order.id") && attrs.contains("A-1042"),
            "{attrs}"
        );
        assert_eq!(
            s.attribute("a.trace-link", "href").await,
            Some(self.trace_url.clone())
        );
        let choice = s
            .text(&format!(
                "button.choice[aria-keyshortcuts=\"{}\"]",
                self.class_key
            ))
            .await
            .unwrap_or_default();
        assert!(
            choice.contains(&self.to_class),
            "key {} is {}: {choice}",
            self.class_key,
            self.to_class
        );

        s.screenshot("failure").await;

        // A note, then the key of another class.
        s.press(&["n"]).await;
        s.type_text("wording of the refund answer, not a tool bug")
            .await;
        s.press(&[ENTER]).await;
        s.screenshot("note").await;
        s.press(&[self.class_key.as_str()]).await;
        let flash = s
            .wait_text("#flash", "the re-route", |t| t.contains("Re-routed"))
            .await;
        assert!(
            flash.contains(&self.from_class)
                && flash.contains(&self.to_class)
                && flash.contains("human"),
            "{flash}"
        );
        // …and the next queued failure is open.
        s.wait_text("h1", "the next queued failure", |t| {
            t.contains("compose reply")
        })
        .await;
        s.screenshot("relabelled").await;

        // The API agrees: the whole issue is the new class, decided by a human, re-dispatched.
        let issue = until(
            &self.admin,
            &format!("/api/v1/issues/{}", self.issue_id),
            |v| v["issue"]["class"] == self.to_class.as_str(),
        )
        .await;
        assert_eq!(issue["issue"]["source"], "human", "{issue:#}");
        let cycle = issue["issue"]["cycle"].as_i64().unwrap();
        let dispatches = issue["dispatches"].as_array().cloned().unwrap_or_default();
        assert!(
            dispatches.len() > self.dispatches_before,
            "a new dispatch: {dispatches:#?}"
        );
        let rerouted_key = format!("{}:{cycle}.1:", self.issue_id);
        assert!(
            dispatches.iter().any(|d| d["idempotency_key"]
                .as_str()
                .is_some_and(|k| k.starts_with(&rerouted_key))),
            "a dispatch on the new route ({rerouted_key}…): {dispatches:#?}"
        );
        let (note, stored_class): (String, String) = rusqlite::Connection::open_with_flags(
            self.dir.join("triage.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .and_then(|db| {
            db.query_row(
                "SELECT note, to_class FROM labels WHERE issue_id = ?1",
                [self.issue_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
        .expect("the label is stored");
        assert_eq!(note, "wording of the refund answer, not a tool bug");
        assert_eq!(stored_class, self.to_class);
        let sink_key = format!("{rerouted_key}jsonl");
        let delivered = eventually(PATIENCE, || {
            std::fs::read_to_string(self.dir.join("remediations.jsonl"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .any(|l| {
                    l["idempotency_key"] == sink_key.as_str()
                        && l["class"] == self.to_class.as_str()
                })
        })
        .await;
        assert!(
            delivered,
            "the new route's dispatch ({sink_key}) reaches the jsonl sink"
        );
        let queue = get_json(&self.admin, "/api/v1/queue").await;
        let left: Vec<i64> = queue["queue"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q["failure_id"].as_i64().unwrap())
            .collect();
        assert_eq!(
            left,
            [self.second_failure],
            "the labelled failure left the queue"
        );
        let metrics = reqwest::get(format!("{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let series = format!(
            "triage_overrides_total{{from_class=\"{}\",to_class=\"{}\"}}",
            self.from_class, self.to_class
        );
        assert_eq!(metric_value(&metrics, &series), Some(1.0), "{metrics}");

        // Esc goes back to the queue; ? shows the keys; the issue list shows the new class.
        s.press(&[ESCAPE]).await;
        s.wait_text("#queue", "the queue with one failure left", |t| {
            t.contains("compose reply") && !t.contains("plan refund")
        })
        .await;
        s.press(&["?"]).await;
        s.wait_text("#help", "the key help", |t| {
            t.contains("label it with that class")
        })
        .await;
        s.press(&[ESCAPE]).await;
        s.wait_text("#help", "the help closed", str::is_empty).await;
        s.press(&["i"]).await;
        let row = s
            .wait_text(
                &format!("#issues tr[data-issue=\"{}\"]", self.issue_id),
                "the issue",
                |t| t.contains(&self.to_class),
            )
            .await;
        assert!(row.contains("human"), "{row}");
        s.screenshot("issues").await;
        s.press(&["c"]).await;
        s.wait_text("main", "the charts", |t| {
            t.contains("Failures and loop latency")
        })
        .await;
        let cards = s.find_all("section.chart-card").await.len();
        assert!(cards >= 2, "a card per class of the taxonomy: {cards}");
        assert_eq!(
            s.find_all("svg.chart").await.len(),
            2 * cards,
            "a failure chart and a latency chart per class"
        );
        s.screenshot("charts").await;
        assert_eq!(
            s.text("#error").await.as_deref(),
            Some(""),
            "no API error or Content-Security-Policy violation was shown"
        );
    }
}
