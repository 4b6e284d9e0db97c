//! The `webhook` sink: POSTs the remediation as JSON, signed with HMAC-SHA256 when a secret is set.

use std::fmt::Write as _;

use anyhow::{bail, Context as _};
use async_trait::async_trait;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use sha2::Sha256;

use super::{endpoint, env_var, http_client, send, Sink, SinkError};
use crate::config::SinkConfig;
use crate::remediation::render::Remediation;

/// The signature header: `sha256=<hex HMAC-SHA256 of the exact body>`.
pub const SIGNATURE_HEADER: &str = "X-Triage-Signature-256";

/// Headers the sink sets itself (lower case); configuring them would send them twice.
const RESERVED_HEADERS: [&str; 3] = ["content-type", "idempotency-key", "x-triage-signature-256"];

/// A generic JSON webhook.
pub struct WebhookSink {
    client: reqwest::Client,
    url: String,
    secret: Option<Vec<u8>>,
    headers: HeaderMap,
}

impl WebhookSink {
    /// Reads the endpoint and the secret (from `secret_env`, which must be set when named).
    pub fn new(cfg: &SinkConfig) -> anyhow::Result<Self> {
        let url = endpoint(cfg)?;
        let secret = match &cfg.secret_env {
            Some(var) => Some(env_var(var, "the webhook's HMAC secret")?.into_bytes()),
            None => None,
        };
        let mut headers = HeaderMap::new();
        for (k, v) in &cfg.headers {
            let name =
                HeaderName::try_from(k.as_str()).with_context(|| format!("header name {k:?}"))?;
            if RESERVED_HEADERS.iter().any(|r| name.as_str() == *r) {
                bail!("header {k:?} is set by the webhook sink itself and cannot be configured");
            }
            let value =
                HeaderValue::try_from(v.as_str()).with_context(|| format!("header {k} value"))?;
            headers.insert(name, value);
        }
        Ok(WebhookSink {
            client: http_client(cfg.timeout)?,
            url,
            secret,
            headers,
        })
    }
}

#[async_trait]
impl Sink for WebhookSink {
    async fn deliver(&self, r: &Remediation) -> Result<(), SinkError> {
        let body = serde_json::to_vec(r)
            .map_err(|e| SinkError::Permanent(format!("webhook: encoding body: {e}")))?;
        let mut req = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", r.idempotency_key.as_str());
        if let Some(secret) = &self.secret {
            req = req.header(SIGNATURE_HEADER, signature(secret, &body));
        }
        send("webhook", req.body(body)).await
    }
}

/// `sha256=<hex HMAC-SHA256 of body with secret>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + digest.len() * 2);
    out.push_str("sha256=");
    for b in digest.iter() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_the_sink_sets_cannot_be_configured() {
        assert_eq!(RESERVED_HEADERS[2], SIGNATURE_HEADER.to_ascii_lowercase());
        for name in ["Content-Type", "idempotency-key", SIGNATURE_HEADER] {
            let cfg = SinkConfig {
                endpoint: Some("http://127.0.0.1:9/hook".into()),
                headers: [(name.to_string(), "x".to_string())].into(),
                ..Default::default()
            };
            let err = WebhookSink::new(&cfg).err().expect("refused");
            assert!(err.to_string().contains("set by the webhook sink"), "{err}");
        }
    }

    #[test]
    fn rfc4231_case_2() {
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
