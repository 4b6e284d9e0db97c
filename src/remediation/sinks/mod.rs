//! Dispatch sinks: where rendered remediations go (OTLP log event, JSON lines, webhook, GitHub, Slack).
//!
//! What "delivered" means, per sink (the dispatcher marks the outbox row delivered on `Ok`):
//!
//! - `jsonl`: the line is appended and synced to disk (`fdatasync`); a key already in the file
//!   is not written again.
//! - `webhook`, `slack`: the endpoint answered 2xx.
//! - `github`: GitHub answered 2xx to creating the issue, or, on a retry, an issue carrying the
//!   dispatch's hidden marker exists already (so a lost answer does not open a second issue).
//! - `otlp_log`: **best effort after enqueue.** `Ok` means the event is in the in-memory export
//!   queue; from there the exporter sends it with its `retry_on_failure` settings, and an
//!   exporter that gives up, or a crash (kill -9) before the export, loses it. The export queue
//!   has no per-item acknowledgement, so this sink cannot wait for one.
//!
//! Every sink may see an idempotency key twice (a crash or a lost answer between delivery and
//! marking): `jsonl` and `github` skip repeats, `webhook` sends the key as `Idempotency-Key`,
//! `slack` and `otlp_log` may repeat a message.

mod github;
mod jsonl;
mod otlp_log;
mod slack;
mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use async_trait::async_trait;

use crate::classify::taxonomy::Taxonomy;
use crate::config::{sink_type, FailureTriage, SinkConfig, DEFAULT_SINKS};
use crate::otlp::exporter::ExportQueue;
use crate::remediation::render::Remediation;
use crate::text::cut;

pub use github::GithubSink;
pub use jsonl::JsonlSink;
pub use otlp_log::{log_request, OtlpLogSink, EVENT_NAME};
pub use slack::SlackSink;
pub use webhook::{signature, WebhookSink, SIGNATURE_HEADER};

/// Where the default `jsonl` sink writes when no path is configured and the store is not a
/// SQLite file (with one, the file goes next to it: `triage-data/remediations.jsonl` by default).
pub const DEFAULT_JSONL_PATH: &str = "triage-data/remediations.jsonl";

/// The default `jsonl` path for a `storage:` URL: beside the SQLite file, else `DEFAULT_JSONL_PATH`.
pub fn default_jsonl_path(storage: &str) -> String {
    storage
        .strip_prefix("sqlite://")
        .map(std::path::Path::new)
        .and_then(|db| db.parent())
        .map(|dir| {
            dir.join("remediations.jsonl")
                .to_string_lossy()
                .into_owned()
        })
        .unwrap_or_else(|| DEFAULT_JSONL_PATH.to_string())
}

/// Longest response body text kept in an error message, in bytes.
const MAX_RESPONSE_TEXT: usize = 500;

/// Why one delivery failed: worth retrying, or not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// A transient failure (network, 5xx, 408, 429, a full queue): retried with backoff.
    #[error("{0}")]
    Retryable(String),
    /// Retrying cannot help (4xx, missing credentials, unrenderable dispatch): given up at once.
    #[error("{0}")]
    Permanent(String),
}

impl SinkError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, SinkError::Permanent(_))
    }
}

/// One destination of remediation work. Deliveries are at least once: a sink sees the same
/// idempotency key again after a crash or a lost acknowledgement. `Ok` means the destination
/// acknowledged the remediation, except for `otlp_log`, which is best effort once enqueued
/// (see the module doc).
#[async_trait]
pub trait Sink: Send + Sync {
    async fn deliver(&self, r: &Remediation) -> Result<(), SinkError>;
}

/// Every sink the configuration names, by name, and which of them each class uses.
#[derive(Clone)]
pub struct SinkSet {
    sinks: BTreeMap<String, Arc<dyn Sink>>,
    /// Class name → its sinks (only built ones); classes absent use `defaults`.
    class_sinks: BTreeMap<String, Vec<String>>,
    /// The default sinks that were built.
    defaults: Vec<String>,
}

impl SinkSet {
    /// Builds every configured sink, plus the defaults (jsonl beside the SQLite store, by
    /// default triage-data/remediations.jsonl; otlp_log) when referenced or when no sink is
    /// configured.
    ///
    /// `otlp_log` needs `logs` (the logs export queue): without it a configured `otlp_log` is an
    /// error, a default one is skipped with a warning.
    pub fn from_config(
        ft: &FailureTriage,
        taxonomy: &Taxonomy,
        logs: Option<ExportQueue>,
    ) -> anyhow::Result<SinkSet> {
        let mut set = SinkSet {
            sinks: BTreeMap::new(),
            class_sinks: BTreeMap::new(),
            defaults: Vec::new(),
        };
        let jsonl = default_jsonl_path(&ft.storage);
        for (name, cfg) in &ft.sinks {
            let sink = build(name, cfg, logs.as_ref(), &jsonl)
                .with_context(|| format!("building sink {name:?}"))?;
            set.sinks.insert(name.clone(), sink);
        }
        // A class naming no sinks uses all the defaults; otherwise a default is built when named.
        let all_defaults =
            ft.sinks.is_empty() || taxonomy.classes.iter().any(|c| c.sinks.is_empty());
        for name in DEFAULT_SINKS {
            let named = taxonomy
                .classes
                .iter()
                .any(|c| c.sinks.iter().any(|s| s == name));
            if all_defaults || named {
                set.add_default(name, logs.as_ref(), &jsonl)?;
            }
        }
        set.defaults = DEFAULT_SINKS
            .iter()
            .filter(|n| set.sinks.contains_key(**n))
            .map(|n| n.to_string())
            .collect();
        for class in &taxonomy.classes {
            if class.sinks.is_empty() {
                continue;
            }
            let names = class
                .sinks
                .iter()
                .filter(|s| set.sinks.contains_key(*s))
                .cloned()
                .collect();
            set.class_sinks.insert(class.name.clone(), names);
        }
        Ok(set)
    }

    /// Adds a default sink unless it is configured already (or cannot run: otlp_log with no queue).
    fn add_default(
        &mut self,
        name: &str,
        logs: Option<&ExportQueue>,
        jsonl: &str,
    ) -> anyhow::Result<()> {
        if self.sinks.contains_key(name) {
            return Ok(());
        }
        if name == "otlp_log" && logs.is_none() {
            tracing::warn!(
                "default sink otlp_log skipped: no logs pipeline exports downstream, so remediation events are not sent as OTLP logs"
            );
            return Ok(());
        }
        let sink = build(name, &SinkConfig::default(), logs, jsonl)
            .with_context(|| format!("building default sink {name:?}"))?;
        self.sinks.insert(name.to_string(), sink);
        Ok(())
    }

    /// The sink names a class dispatches to.
    pub fn sinks_for_class(&self, class: &str) -> Vec<String> {
        self.class_sinks
            .get(class)
            .unwrap_or(&self.defaults)
            .clone()
    }

    /// The sink called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Sink>> {
        self.sinks.get(name)
    }

    /// Every sink name, sorted.
    pub fn names(&self) -> Vec<String> {
        self.sinks.keys().cloned().collect()
    }
}

/// Builds one sink from its name's type and its settings.
fn build(
    name: &str,
    cfg: &SinkConfig,
    logs: Option<&ExportQueue>,
    default_jsonl: &str,
) -> anyhow::Result<Arc<dyn Sink>> {
    Ok(match sink_type(name) {
        "otlp_log" => match logs {
            Some(q) => Arc::new(OtlpLogSink::new(q.clone())),
            None => bail!(
                "the otlp_log sink needs a logs pipeline with an OTLP exporter (service.pipelines.logs)"
            ),
        },
        "jsonl" => Arc::new(JsonlSink::new(
            cfg.path.as_deref().unwrap_or(default_jsonl),
        )),
        "webhook" => Arc::new(WebhookSink::new(cfg)?),
        "github" => Arc::new(GithubSink::new(cfg)?),
        "slack" => Arc::new(SlackSink::new(cfg)?),
        other => bail!("unknown sink type {other:?}"),
    })
}

/// An HTTP client with the sink's timeout.
fn http_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .user_agent("triage-loop")
        .build()
        .context("building HTTP client")
}

/// The value of environment variable `var`, or an error naming it.
fn env_var(var: &str, what: &str) -> anyhow::Result<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => bail!("environment variable {var} ({what}) is not set"),
    }
}

/// The URL a webhook-like sink posts to: `endpoint`, or the contents of `endpoint_env`.
fn endpoint(cfg: &SinkConfig) -> anyhow::Result<String> {
    let url = match (&cfg.endpoint, &cfg.endpoint_env) {
        (Some(url), _) => url.clone(),
        (None, Some(var)) => env_var(var, "the endpoint URL")?,
        (None, None) => bail!("needs endpoint or endpoint_env"),
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        bail!("endpoint is not an http(s) URL");
    }
    Ok(url)
}

/// Sends a request and sorts the outcome: 2xx is delivered; 408, 429, 5xx, a rate-limited 403
/// (`Retry-After`, or `X-RateLimit-Remaining: 0` as GitHub sends) and transport errors are
/// retryable; any other status is permanent. At most `MAX_ERROR_BODY_READ` bytes of an error
/// answer are read.
async fn send(what: &str, req: reqwest::RequestBuilder) -> Result<(), SinkError> {
    let resp = req.send().await.map_err(|e| {
        SinkError::Retryable(format!("{what}: request failed: {}", error_chain(&e)))
    })?;
    if resp.status().is_success() {
        return Ok(());
    }
    Err(status_error(what, resp).await)
}

/// The error of a non-2xx answer, sorted retryable or permanent as `send` describes.
async fn status_error(what: &str, resp: reqwest::Response) -> SinkError {
    let status = resp.status();
    let code = status.as_u16();
    let rate_limited = code == 403 && is_rate_limited(resp.headers());
    let text = match read_capped(resp, MAX_ERROR_BODY_READ).await {
        Ok((bytes, _)) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => String::new(),
    };
    let text = cut(text.trim(), MAX_RESPONSE_TEXT);
    let msg = format!("{what}: HTTP {status}: {text}");
    if code == 408 || code == 429 || status.is_server_error() || rate_limited {
        SinkError::Retryable(msg)
    } else {
        SinkError::Permanent(msg)
    }
}

/// Whether the headers of a 403 say "rate limited, try later" rather than "forbidden".
fn is_rate_limited(headers: &reqwest::header::HeaderMap) -> bool {
    headers.contains_key(reqwest::header::RETRY_AFTER)
        || headers
            .get("x-ratelimit-remaining")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() == "0")
}

/// Most bytes of an error answer read (the rest is not downloaded).
const MAX_ERROR_BODY_READ: usize = 64 * 1024;

/// The response body, read up to `max` bytes; the flag says whether it was longer (and cut).
async fn read_capped(
    mut resp: reqwest::Response,
    max: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = max - out.len();
        if chunk.len() > room {
            out.extend_from_slice(&chunk[..room]);
            return Ok((out, true));
        }
        out.extend_from_slice(&chunk);
    }
    Ok((out, false))
}

/// An error with all its causes, `: `-separated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::taxonomy::Taxonomy;

    fn jsonl_only(dir: &std::path::Path) -> FailureTriage {
        let mut ft = FailureTriage::default();
        ft.sinks.insert(
            "jsonl".into(),
            SinkConfig {
                path: Some(dir.join("r.jsonl").display().to_string()),
                ..Default::default()
            },
        );
        ft
    }

    #[test]
    fn defaults_without_a_logs_queue_skip_otlp_log() {
        let dir = tempfile::tempdir().unwrap();
        let tax = Taxonomy::preset("default").unwrap();
        let set = SinkSet::from_config(&jsonl_only(dir.path()), &tax, None).unwrap();
        assert_eq!(set.sinks_for_class("logic_tool"), vec!["jsonl"]);
        assert_eq!(set.sinks_for_class("no_such_class"), vec!["jsonl"]);
    }

    #[test]
    fn class_sinks_pick_from_the_configured_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut tax = Taxonomy::preset("default").unwrap();
        tax.classes[0].sinks = vec!["slack/oncall".into()];
        let mut ft = jsonl_only(dir.path());
        ft.sinks.insert(
            "slack/oncall".into(),
            SinkConfig {
                endpoint: Some("http://127.0.0.1:9/hook".into()),
                ..Default::default()
            },
        );
        let set = SinkSet::from_config(&ft, &tax, None).unwrap();
        assert_eq!(
            set.sinks_for_class(&tax.classes[0].name),
            vec!["slack/oncall"]
        );
        assert_eq!(set.sinks_for_class(&tax.classes[1].name), vec!["jsonl"]);
    }

    #[test]
    fn configured_otlp_log_without_queue_is_refused() {
        let mut ft = FailureTriage::default();
        ft.sinks.insert("otlp_log".into(), SinkConfig::default());
        let tax = Taxonomy::preset("default").unwrap();
        let err = SinkSet::from_config(&ft, &tax, None)
            .err()
            .expect("refused");
        assert!(format!("{err:#}").contains("logs pipeline"), "{err:#}");
    }

    #[test]
    fn webhook_with_missing_secret_env_is_refused() {
        let mut ft = FailureTriage::default();
        ft.sinks.insert(
            "webhook".into(),
            SinkConfig {
                endpoint: Some("http://127.0.0.1:9/hook".into()),
                secret_env: Some("TRIAGE_TEST_SURELY_UNSET_SECRET".into()),
                ..Default::default()
            },
        );
        let tax = Taxonomy::preset("default").unwrap();
        let err = SinkSet::from_config(&ft, &tax, None)
            .err()
            .expect("refused");
        assert!(
            format!("{err:#}").contains("TRIAGE_TEST_SURELY_UNSET_SECRET"),
            "{err:#}"
        );
    }
}
