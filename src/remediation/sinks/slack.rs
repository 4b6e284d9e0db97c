//! The `slack` sink: posts the title and body to a Slack incoming webhook.

use async_trait::async_trait;
use serde_json::json;

use super::{endpoint, http_client, send, Sink, SinkError};
use crate::config::SinkConfig;
use crate::remediation::render::Remediation;

/// One Slack incoming webhook.
pub struct SlackSink {
    client: reqwest::Client,
    url: String,
}

impl SlackSink {
    /// Reads the webhook URL from `endpoint` or `endpoint_env` (which must then be set).
    pub fn new(cfg: &SinkConfig) -> anyhow::Result<Self> {
        Ok(SlackSink {
            client: http_client(cfg.timeout)?,
            url: endpoint(cfg)?,
        })
    }
}

#[async_trait]
impl Sink for SlackSink {
    async fn deliver(&self, r: &Remediation) -> Result<(), SinkError> {
        let text = format!("*{}*\n{}", r.title, r.body);
        send(
            "slack",
            self.client.post(&self.url).json(&json!({ "text": text })),
        )
        .await
    }
}
