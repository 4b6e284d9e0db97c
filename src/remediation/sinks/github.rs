//! The `github` sink: opens a GitHub (or GitHub Enterprise) issue per remediation through the REST API.
//!
//! Each issue carries the label `triage-loop` and, at the end of its body, a hidden marker with
//! the dispatch's idempotency key. A retry (an earlier attempt may have created the issue and
//! lost the answer) first lists the most recently created `triage-loop` issues, a consistent
//! read unlike the search API, and counts the dispatch delivered when one carries the marker.

use anyhow::bail;
use async_trait::async_trait;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use serde::Deserialize;
use serde_json::json;

use super::{error_chain, http_client, read_capped, send, status_error, Sink, SinkError};
use crate::config::SinkConfig;
use crate::remediation::render::Remediation;

/// The REST API version asked for.
const API_VERSION: &str = "2022-11-28";

/// The label put on every issue, so a retry lists only triage-loop issues to find its marker.
pub const TRIAGE_LABEL: &str = "triage-loop";

/// Issues per page when looking for an earlier attempt's issue (GitHub's maximum).
const PER_PAGE: usize = 100;

/// Pages of the newest `triage-loop` issues looked through for a marker.
const MAX_LOOKUP_PAGES: usize = 3;

/// Most bytes of one page of listed issues read (100 bodies of at most 65,536 characters).
const MAX_LIST_BYTES: usize = 64 * 1024 * 1024;

/// GitHub's longest issue title and body, in characters (longer ones are refused with a 422).
const MAX_TITLE_CHARS: usize = 256;
const MAX_BODY_CHARS: usize = 65_536;

/// Opens issues in one repository.
pub struct GithubSink {
    client: reqwest::Client,
    /// `{base_url}/repos/{owner}/{repo}/issues`.
    url: String,
    token_env: String,
    labels: Vec<String>,
}

/// The part of a listed issue the lookup reads.
#[derive(Debug, Deserialize)]
struct ListedIssue {
    #[serde(default)]
    number: u64,
    #[serde(default)]
    body: Option<String>,
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

    /// The labels of an issue: `triage-loop`, the configured ones, the class and the
    /// remediation path, once each.
    fn labels(&self, r: &Remediation) -> Vec<String> {
        let mut labels = vec![TRIAGE_LABEL.to_string()];
        for l in self.labels.iter().chain([&r.class, &r.remediation]) {
            if !l.is_empty() && !labels.contains(l) {
                labels.push(l.clone());
            }
        }
        labels
    }

    /// The token from `token_env`; unset is permanent.
    fn token(&self) -> Result<String, SinkError> {
        match std::env::var(&self.token_env) {
            Ok(t) if !t.is_empty() => Ok(t),
            _ => Err(SinkError::Permanent(format!(
                "github: token environment variable {} is not set",
                self.token_env
            ))),
        }
    }

    /// A request to the issues endpoint with the API headers.
    fn request(&self, method: reqwest::Method, token: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, &self.url)
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .header(ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", API_VERSION)
    }

    /// The number of an existing issue whose body carries `marker`, looking through the newest
    /// `MAX_LOOKUP_PAGES` pages of `triage-loop` issues (open or closed).
    async fn find(&self, token: &str, marker: &str) -> Result<Option<u64>, SinkError> {
        const WHAT: &str = "github: looking for an earlier attempt's issue";
        let per_page = PER_PAGE.to_string();
        for page in 1..=MAX_LOOKUP_PAGES {
            let page_no = page.to_string();
            let req = self.request(reqwest::Method::GET, token).query(&[
                ("state", "all"),
                ("labels", TRIAGE_LABEL),
                ("sort", "created"),
                ("direction", "desc"),
                ("per_page", per_page.as_str()),
                ("page", page_no.as_str()),
            ]);
            let resp = req.send().await.map_err(|e| {
                SinkError::Retryable(format!("{WHAT}: request failed: {}", error_chain(&e)))
            })?;
            if !resp.status().is_success() {
                return Err(status_error(WHAT, resp).await);
            }
            let (bytes, cut) = read_capped(resp, MAX_LIST_BYTES).await.map_err(|e| {
                SinkError::Retryable(format!("{WHAT}: reading the answer: {}", error_chain(&e)))
            })?;
            if cut {
                return Err(SinkError::Retryable(format!(
                    "{WHAT}: a page of issues is over {MAX_LIST_BYTES} bytes"
                )));
            }
            let issues: Vec<ListedIssue> = serde_json::from_slice(&bytes).map_err(|e| {
                SinkError::Retryable(format!("{WHAT}: not a JSON list of issues: {e}"))
            })?;
            let found = issues
                .iter()
                .find(|i| i.body.as_deref().is_some_and(|b| b.contains(marker)));
            if let Some(issue) = found {
                return Ok(Some(issue.number));
            }
            if issues.len() < PER_PAGE {
                break;
            }
        }
        Ok(None)
    }
}

/// The hidden marker put at the end of an issue body, to find the issue of a key again.
pub fn marker(key: &str) -> String {
    format!("<!-- triage-loop:{key} -->")
}

/// The issue body: `body`, cut to fit GitHub's limit, then the marker (always kept whole).
fn issue_body(body: &str, marker: &str) -> String {
    let room = MAX_BODY_CHARS.saturating_sub(marker.chars().count() + 4);
    format!("{}\n\n{marker}\n", cut_chars(body.trim_end(), room))
}

/// `s` cut to at most `max` characters.
fn cut_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((end, _)) => &s[..end],
        None => s,
    }
}

#[async_trait]
impl Sink for GithubSink {
    async fn deliver(&self, r: &Remediation) -> Result<(), SinkError> {
        let token = self.token()?;
        let marker = marker(&r.idempotency_key);
        if r.attempt > 1 {
            if let Some(number) = self.find(&token, &marker).await? {
                tracing::info!(
                    key = r.idempotency_key,
                    issue = number,
                    "github: an earlier attempt opened the issue already; not opening another"
                );
                return Ok(());
            }
        }
        let body = json!({
            "title": cut_chars(&r.title, MAX_TITLE_CHARS),
            "body": issue_body(&r.body, &marker),
            "labels": self.labels(r),
        });
        let req = self
            .request(reqwest::Method::POST, &token)
            .header(CONTENT_TYPE, "application/json")
            .json(&body);
        send("github", req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_bodies_keep_the_marker_and_fit() {
        let m = marker("7:1:github");
        let body = issue_body(&"é".repeat(100_000), &m);
        assert!(body.trim_end().ends_with(&m));
        assert!(body.chars().count() <= MAX_BODY_CHARS);
        assert_eq!(issue_body("short\n\n", &m), format!("short\n\n{m}\n"));
    }

    #[test]
    fn titles_are_cut_on_characters() {
        assert_eq!(cut_chars("ab", 5), "ab");
        assert_eq!(cut_chars("äöü", 2), "äö");
        assert_eq!(cut_chars(&"x".repeat(300), MAX_TITLE_CHARS).len(), 256);
    }
}
