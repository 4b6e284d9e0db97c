//! A small client of the admin API for the CLI: `issues`, `ship`, `ignore`, `queue`, `label`,
//! `gate`; it sends the bearer token when one is given.

use anyhow::{bail, Context};
use reqwest::header::HeaderValue;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::BearerToken;
use crate::remediation::gate::GateReport;

/// Where the admin API is when `--admin` is not given.
pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:9464";

/// A client of one triage-loop's admin listener.
pub struct AdminClient {
    base: String,
    http: reqwest::Client,
    /// `Bearer <token>`, marked sensitive so it is never printed.
    authorization: Option<HeaderValue>,
}

impl AdminClient {
    /// A client of the admin listener at `base`, sending `token` as a bearer token if given,
    /// trusting `ca` (a PEM certificate, e.g. the listener's self-signed one) besides the
    /// built-in roots, and presenting `identity` (a client certificate and key) to a listener
    /// with a `client_ca_file`.
    pub fn new(
        base: &str,
        token: Option<BearerToken>,
        ca: Option<reqwest::Certificate>,
        identity: Option<reqwest::Identity>,
    ) -> anyhow::Result<Self> {
        let base = base.trim_end_matches('/').to_string();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            bail!("--admin {base:?} is not an http(s) URL");
        }
        let mut http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
        if let Some(ca) = ca {
            http = http.add_root_certificate(ca);
        }
        if let Some(identity) = identity {
            http = http.identity(identity);
        }
        let http = http.build().context("cannot build HTTP client")?;
        let authorization = token
            .map(|t| {
                let mut v = HeaderValue::from_str(&format!("Bearer {}", t.expose()))
                    .context("the bearer token is not a valid header value")?;
                v.set_sensitive(true);
                anyhow::Ok(v)
            })
            .transpose()?;
        Ok(AdminClient {
            base,
            http,
            authorization,
        })
    }

    /// A request with the bearer token, when there is one.
    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, url);
        match &self.authorization {
            Some(v) => req.header(reqwest::header::AUTHORIZATION, v.clone()),
            None => req,
        }
    }

    async fn read<T: DeserializeOwned>(
        &self,
        resp: reqwest::Response,
        what: &str,
    ) -> anyhow::Result<T> {
        let status = resp.status();
        let text = resp
            .text()
            .await
            .with_context(|| format!("{what}: cannot read the answer"))?;
        if !status.is_success() {
            let msg = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
                .unwrap_or(text);
            if status == reqwest::StatusCode::UNAUTHORIZED {
                let hint = if self.authorization.is_some() {
                    "the token was refused; check TRIAGE_TOKEN or --token-file"
                } else {
                    "this admin API needs a bearer token: set TRIAGE_TOKEN or pass --token-file"
                };
                bail!("{what}: {status}: {msg} ({hint})");
            }
            bail!("{what}: {status}: {msg}");
        }
        serde_json::from_str(&text).with_context(|| format!("{what}: unexpected answer {text:?}"))
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .request(reqwest::Method::GET, &url)
            .query(query)
            .send()
            .await
            .with_context(|| format!("GET {url}: is triage-loop's admin listener there?"))?;
        self.read(resp, &format!("GET {url}")).await
    }

    /// `GET /api/v1/issues` as a table.
    pub async fn issues_table(
        &self,
        class: Option<String>,
        state: Option<String>,
        agent: Option<String>,
    ) -> anyhow::Result<String> {
        let query: Vec<(&str, String)> = [("class", class), ("state", state), ("agent", agent)]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
        let v: Value = self.get("/api/v1/issues", &query).await?;
        let issues = v
            .get("issues")
            .and_then(Value::as_array)
            .context("answer has no issues list")?;
        Ok(issues_table(issues))
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .request(reqwest::Method::POST, &url)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("POST {url}: is triage-loop's admin listener there?"))?;
        self.read(resp, &format!("POST {url}")).await
    }

    /// `POST /api/v1/issues/{id}/ship`.
    pub async fn ship(&self, issue: i64, version: &str) -> anyhow::Result<Value> {
        self.post(
            &format!("/api/v1/issues/{issue}/ship"),
            serde_json::json!({ "version": version }),
        )
        .await
    }

    /// `POST /api/v1/issues/{id}/ignore`.
    pub async fn ignore(&self, issue: i64, reason: Option<&str>) -> anyhow::Result<Value> {
        self.post(
            &format!("/api/v1/issues/{issue}/ignore"),
            serde_json::json!({ "reason": reason }),
        )
        .await
    }

    /// `GET /api/v1/queue` as a table.
    pub async fn queue_table(&self, limit: Option<u32>) -> anyhow::Result<String> {
        let query: Vec<(&str, String)> = limit
            .map(|l| ("limit", l.to_string()))
            .into_iter()
            .collect();
        let v: Value = self.get("/api/v1/queue", &query).await?;
        let queue = v
            .get("queue")
            .and_then(Value::as_array)
            .context("answer has no queue list")?;
        Ok(queue_table(queue))
    }

    /// `POST /api/v1/failures/{id}/label`.
    pub async fn label(&self, failure: i64, class: &str, note: &str) -> anyhow::Result<Value> {
        self.post(
            &format!("/api/v1/failures/{failure}/label"),
            serde_json::json!({ "class": class, "note": note }),
        )
        .await
    }

    /// `GET /api/v1/gate`.
    pub async fn gate(&self) -> anyhow::Result<GateReport> {
        self.get("/api/v1/gate", &[]).await
    }
}

fn cell(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

fn latency_cell(v: &Value, stage: &str) -> String {
    v.get("latency")
        .and_then(|l| l.get(stage))
        .and_then(Value::as_f64)
        .map(|s| {
            humantime::format_duration(std::time::Duration::from_secs(s.max(0.0) as u64))
                .to_string()
        })
        .unwrap_or_else(|| "-".into())
}

/// Issues as a fixed-width table, one row each.
pub fn issues_table(issues: &[Value]) -> String {
    let header = [
        "ID",
        "STATE",
        "CLASS",
        "SOURCE",
        "AGENT",
        "REMEDIATION",
        "OCCURRENCES",
        "LAST SEEN",
        "TO DISPATCH",
        "TO SHIP",
        "FINGERPRINT",
    ];
    let rows: Vec<Vec<String>> = issues
        .iter()
        .map(|i| {
            vec![
                cell(i, "id"),
                cell(i, "state"),
                cell(i, "class"),
                cell(i, "source"),
                cell(i, "agent"),
                cell(i, "remediation"),
                cell(i, "occurrences"),
                cell(i, "last_seen"),
                latency_cell(i, "dispatched_s"),
                latency_cell(i, "shipped_s"),
                cell(i, "fingerprint"),
            ]
        })
        .collect();
    table(&header, rows, "(no issues)")
}

/// `GET /api/v1/queue` rows as a fixed-width table.
pub fn queue_table(queue: &[Value]) -> String {
    let header = [
        "FAILURE",
        "ISSUE",
        "REASON",
        "CLASS",
        "SOURCE",
        "CONFIDENCE",
        "AGENT",
        "OCCURRENCES",
        "OBSERVED",
        "SUMMARY",
    ];
    let rows = queue
        .iter()
        .map(|q| {
            let mut summary = cell(q, "summary");
            if summary.chars().count() > 80 {
                summary = summary.chars().take(79).chain(['…']).collect();
            }
            vec![
                cell(q, "failure_id"),
                cell(q, "issue_id"),
                cell(q, "reason"),
                cell(q, "class"),
                cell(q, "source"),
                q.get("confidence")
                    .and_then(Value::as_f64)
                    .map_or("-".into(), |c| format!("{c:.2}")),
                cell(q, "agent"),
                cell(q, "occurrences"),
                cell(q, "observed"),
                summary,
            ]
        })
        .collect();
    table(&header, rows, "(the triage queue is empty)")
}

/// Rows under a header, each column as wide as its widest cell; `empty` when there are none.
fn table(header: &[&str], rows: Vec<Vec<String>>, empty: &str) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(header.iter().map(|h| h.to_string()).collect());
    let n = rows.len();
    for r in rows {
        line(r);
    }
    if n == 0 {
        out.push_str(empty);
        out.push('\n');
    }
    out
}
