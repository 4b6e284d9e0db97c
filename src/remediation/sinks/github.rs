//! The `github` sink: opens a GitHub (or GitHub Enterprise) issue per remediation through the REST API.

use anyhow::bail;
use async_trait::async_trait;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use serde_json::json;

use super::{http_client, send, Sink, SinkError};
use crate::config::SinkConfig;
use crate::remediation::render::Remediation;

/// The REST API version asked for.
const API_VERSION: &str = "2022-11-28";

/// Opens issues in one repository.
pub struct GithubSink {
    client: reqwest::Client,
    /// `{base_url}/repos/{owner}/{repo}/issues`.
    url: String,
    token_env: String,
    labels: Vec<String>,
}

impl GithubSink {
    /// Checks `repo` and `base_url`. The token is read from `token_env` at each delivery; its
    /// absence then is a permanent failure (warned about here already).
    pub fn new(cfg: &SinkConfig) -> anyhow::Result<Self> {
        let Some(repo) = cfg.repo.as_deref() else {
            bail!("needs repo: owner/name");
        };
        let Some((owner, name)) = repo.split_once('/') else {
            bail!("repo {repo:?} must be owner/name");
        };
        if owner.is_empty() || name.is_empty() || name.contains('/') {
            bail!("repo {repo:?} must be owner/name");
        }
        let base = cfg.base_url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("base_url {base:?} is not an http(s) URL");
        }
        if std::env::var(&cfg.token_env).map_or(true, |t| t.is_empty()) {
            tracing::warn!(
                token_env = cfg.token_env,
                repo,
                "github sink: token environment variable is not set; its dispatches will be given up"
            );
        }
        Ok(GithubSink {
            client: http_client(cfg.timeout)?,
            url: format!("{base}/repos/{owner}/{name}/issues"),
            token_env: cfg.token_env.clone(),
            labels: cfg.labels.clone(),
        })
    }

    /// The labels of an issue: the configured ones, the class and the remediation path, once each.
    fn labels(&self, r: &Remediation) -> Vec<String> {
        let mut labels = self.labels.clone();
        for l in [&r.class, &r.remediation] {
            if !l.is_empty() && !labels.contains(l) {
                labels.push(l.clone());
            }
        }
        labels
    }
}

/// The hidden marker put at the end of an issue body, to find the issue of a key again.
pub fn marker(key: &str) -> String {
    format!("<!-- triage-loop:{key} -->")
}

#[async_trait]
impl Sink for GithubSink {
    async fn deliver(&self, r: &Remediation) -> Result<(), SinkError> {
        let token = match std::env::var(&self.token_env) {
            Ok(t) if !t.is_empty() => t,
            _ => {
                return Err(SinkError::Permanent(format!(
                    "github: token environment variable {} is not set",
                    self.token_env
                )))
            }
        };
        let body = json!({
            "title": r.title,
            "body": format!("{}\n\n{}\n", r.body.trim_end(), marker(&r.idempotency_key)),
            "labels": self.labels(r),
        });
        let req = self
            .client
            .post(&self.url)
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .header(ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", API_VERSION)
            .header(CONTENT_TYPE, "application/json")
            .json(&body);
        send("github", req).await
    }
}
