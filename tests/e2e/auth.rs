//! The admin listener's guards: with `extensions.triage_admin.auth`, every `/api/v1` read and
//! write needs the bearer token (401 + `WWW-Authenticate: Bearer` without it), `/healthz`, the
//! static page and (by default) `/metrics` stay open, the CLI passes the token from
//! `TRIAGE_TOKEN` or `--token-file`; admin request bodies are capped at 1 MiB.

use std::path::Path;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::*;

const TOKEN: &str = "t0ken-for-the-e2e-test";

/// The admin endpoints with a request each: reads, then writes.
fn endpoints() -> Vec<(Method, &'static str, Option<Value>)> {
    vec![
        (Method::GET, "/api/v1/issues", None),
        (Method::GET, "/api/v1/issues/1", None),
        (Method::GET, "/api/v1/gate", None),
        (Method::GET, "/api/v1/taxonomy", None),
        (Method::GET, "/api/v1/queue", None),
        (Method::GET, "/api/v1/failures/1", None),
        (Method::GET, "/api/v1/stats", None),
        (Method::GET, "/api/v1/no-such-thing", None),
        (
            Method::POST,
            "/api/v1/issues/999999/ship",
            Some(json!({"version": "1.0.0"})),
        ),
        (
            Method::POST,
            "/api/v1/issues/999999/ignore",
            Some(json!({"reason": "x"})),
        ),
        (
            Method::POST,
            "/api/v1/failures/999999/label",
            Some(json!({"class": "logic_tool", "note": ""})),
        ),
        (
            Method::POST,
            "/api/v1/deployments",
            Some(json!({"service": "svc", "version": "1.0.0", "fixes": []})),
        ),
    ]
}

/// A token file in `dir` (with a final newline, as editors write it).
fn token_file(dir: &Path, token: &str) -> std::path::PathBuf {
    let path = dir.join("admin-token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    path
}

/// A triage-loop whose admin API needs `TOKEN`; `extra` goes under `auth`.
async fn start_guarded(extra: &str) -> (triage_loop::service::Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = token_file(dir.path(), TOKEN);
    let yaml = config_yaml("127.0.0.1:1", "", "").replace(
        "    endpoint: 127.0.0.1:0\nservice:",
        &format!(
            "    endpoint: 127.0.0.1:0\n    auth:\n      bearer_token_file: {}\n{extra}service:",
            file.display()
        ),
    );
    assert!(yaml.contains("bearer_token_file"), "{yaml}");
    (start_triage(&yaml).await, dir)
}

async fn call(
    running: &triage_loop::service::Running,
    method: Method,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> (StatusCode, reqwest::header::HeaderMap, String) {
    let url = format!("http://{}{path}", running.admin_addr.unwrap());
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = req.send().await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    (status, headers, resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_reads_and_writes_need_the_token() {
    let (triage, _dir) = start_guarded("").await;
    for (method, path, body) in endpoints() {
        for token in [None, Some("wrong-token"), Some("t0ken-for-the-e2e-tes")] {
            let (status, headers, text) =
                call(&triage, method.clone(), path, body.clone(), token).await;
            assert_eq!(status, 401, "{method} {path} with {token:?}: {text}");
            let challenge = headers["www-authenticate"].to_str().unwrap();
            assert!(challenge.starts_with("Bearer "), "{challenge}");
            let v: Value = serde_json::from_str(&text).expect("a JSON error");
            assert!(v["error"].as_str().unwrap().contains("token"), "{text}");
            assert!(!text.contains(TOKEN), "the answer never echoes the token");
        }
        let (status, _, text) = call(&triage, method.clone(), path, body, Some(TOKEN)).await;
        assert_ne!(status, 401, "{method} {path} with the token: {text}");
        assert_ne!(status, 500, "{method} {path} with the token: {text}");
    }
    // The right token reaches the handlers: reads answer 200, writes do their work.
    for path in [
        "/api/v1/issues",
        "/api/v1/gate",
        "/api/v1/taxonomy",
        "/api/v1/queue",
    ] {
        let (status, _, text) = call(&triage, Method::GET, path, None, Some(TOKEN)).await;
        assert_eq!(status, 200, "{path}: {text}");
    }
    let (status, _, text) = call(
        &triage,
        Method::POST,
        "/api/v1/deployments",
        Some(json!({"service": "svc", "version": "1.0.0", "fixes": []})),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let (status, _, _) = call(
        &triage,
        Method::POST,
        "/api/v1/issues/999999/ship",
        Some(json!({"version": "1.0.0"})),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 404, "past the guard, the handler answers");

    // Open: health, metrics (by default) and the static page.
    for path in ["/healthz", "/metrics", "/ui", "/ui/app.js", "/ui/style.css"] {
        let (status, _, _) = call(&triage, Method::GET, path, None, None).await;
        assert_eq!(status, 200, "{path} is open");
    }
    triage.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protect_metrics_guards_metrics_but_not_health() {
    let (triage, _dir) = start_guarded("      protect_metrics: true\n").await;
    let (status, headers, _) = call(&triage, Method::GET, "/metrics", None, None).await;
    assert_eq!(status, 401);
    assert!(headers.contains_key("www-authenticate"));
    let (status, _, text) = call(&triage, Method::GET, "/metrics", None, Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert!(text.contains("triage_spans_total"), "{text}");
    let (status, _, _) = call(&triage, Method::GET, "/healthz", None, None).await;
    assert_eq!(status, 200);
    triage.shutdown().await;
}

/// Runs the CLI with `envs` (TRIAGE_TOKEN is otherwise unset); (exit code, stdout, stderr).
async fn cli(args: Vec<String>, envs: Vec<(&'static str, String)>) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_triage-loop"))
        .args(&args)
        .env_remove("TRIAGE_TOKEN")
        .env_remove("TRIAGE_TOKEN_FILE")
        .env_remove("TRIAGE_ADMIN")
        .envs(envs)
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_the_token_from_env_or_file() {
    let (triage, dir) = start_guarded("").await;
    let admin = format!("http://{}", triage.admin_addr.unwrap());
    let args = |cmd: &[&str]| -> Vec<String> {
        cmd.iter()
            .map(|s| s.to_string())
            .chain(["--admin".to_string(), admin.clone()])
            .collect()
    };

    let (code, _, err) = cli(args(&["issues"]), vec![]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("401 Unauthorized")
            && err.contains("TRIAGE_TOKEN")
            && err.contains("--token-file"),
        "{err}"
    );
    let (code, _, err) = cli(args(&["queue"]), vec![("TRIAGE_TOKEN", "nope".into())]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("401 Unauthorized") && err.contains("refused"),
        "{err}"
    );
    assert!(!err.contains("nope"), "the token is never printed: {err}");

    let (code, out, err) = cli(args(&["issues"]), vec![("TRIAGE_TOKEN", TOKEN.into())]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("ID"), "{out}");
    let (code, out, err) = cli(args(&["queue"]), vec![("TRIAGE_TOKEN", TOKEN.into())]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("FAILURE"), "{out}");

    let file = token_file(dir.path(), TOKEN);
    let mut gate = args(&["gate"]);
    gate.extend(["--token-file".into(), file.display().to_string()]);
    let (code, out, err) = cli(gate.clone(), vec![]).await;
    assert!(
        code == 0 || code == 1,
        "the gate answered (2 = could not ask): {err}"
    );
    assert!(!out.is_empty() && err.is_empty(), "{out}{err}");
    let (code, _, err) = cli(args(&["gate"]), vec![]).await;
    assert_eq!(code, 2, "without the token the gate cannot be asked: {err}");
    assert!(err.contains("401 Unauthorized"), "{err}");
    // A write: the issue does not exist, so the handler (not the guard) refuses it. (Statuses
    // are matched with their reason: the URL's port may contain "401".)
    let (code, _, err) = cli(
        args(&["ship", "999999", "--version", "1.0.0"]),
        vec![("TRIAGE_TOKEN_FILE", file.display().to_string())],
    )
    .await;
    assert_eq!(code, 1);
    assert!(
        err.contains("404 Not Found") && !err.contains("401 Unauthorized"),
        "{err}"
    );
    triage.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_bodies_over_one_mib_and_non_json_posts_are_refused() {
    // Without auth configured (the page's default path) and with it.
    let (open, _) = start_pair("").await;
    let (guarded, _dir) = start_guarded("").await;
    let big = json!({"service": "svc", "version": "x".repeat(2 << 20), "fixes": []});
    for (running, token) in [(&open, None), (&guarded, Some(TOKEN))] {
        let (status, _, text) = call(
            running,
            Method::POST,
            "/api/v1/deployments",
            Some(big.clone()),
            token,
        )
        .await;
        assert_eq!(status, 413, "{text}");
        let v: Value = serde_json::from_str(&text).expect("a JSON error");
        assert!(v["error"].as_str().unwrap().contains("bytes"), "{text}");
    }
    // Unauthenticated, the guard answers before the body is read.
    let (status, _, _) = call(
        &guarded,
        Method::POST,
        "/api/v1/deployments",
        Some(big),
        None,
    )
    .await;
    assert_eq!(status, 401);
    // A POST that is not JSON (what a cross-site form can send without a preflight): 415,
    // even for `ignore`, whose body is optional.
    for path in ["/api/v1/issues/1/ignore", "/api/v1/deployments"] {
        let resp = reqwest::Client::new()
            .post(format!("http://{}{path}", open.admin_addr.unwrap()))
            .header("content-type", "text/plain")
            .body("reason=x")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 415, "{path}");
        let v: Value = resp.json().await.expect("a JSON error");
        assert!(v["error"].as_str().unwrap().contains("application/json"));
    }
    // A normal body still goes through.
    let (status, _, text) = call(
        &open,
        Method::POST,
        "/api/v1/deployments",
        Some(json!({"service": "svc", "version": "1.0.0", "fixes": []})),
        None,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    open.shutdown().await;
    guarded.shutdown().await;
}
