//! `triage-loop replay`: sends OTLP/JSON or protobuf files, as SDKs and collectors export them
//! (the Collector's file exporter writes one JSON request per line), to an OTLP/HTTP receiver.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use bytes::Bytes;

use crate::otlp::SignalType;

/// One request read from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayRequest {
    pub signal: SignalType,
    pub json: bool,
    pub body: Bytes,
}

/// The signal of an OTLP/JSON document, from its top-level key.
fn json_signal(v: &serde_json::Value) -> Option<SignalType> {
    let o = v.as_object()?;
    if o.contains_key("resourceSpans") || o.contains_key("resource_spans") {
        Some(SignalType::Traces)
    } else if o.contains_key("resourceLogs") || o.contains_key("resource_logs") {
        Some(SignalType::Logs)
    } else if o.contains_key("resourceMetrics") || o.contains_key("resource_metrics") {
        Some(SignalType::Metrics)
    } else {
        None
    }
}

/// Reads the requests in one file: a JSON document, JSON lines, or one protobuf request (its
/// signal from the file name: `logs` / `metrics` in the name, traces otherwise).
pub fn read_file(path: &Path) -> anyhow::Result<Vec<ReplayRequest>> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let is_proto = name.ends_with(".pb") || name.ends_with(".binpb") || name.ends_with(".protobuf");
    if is_proto {
        let signal = if name.contains("log") {
            SignalType::Logs
        } else if name.contains("metric") {
            SignalType::Metrics
        } else {
            SignalType::Traces
        };
        return Ok(vec![ReplayRequest {
            signal,
            json: false,
            body: Bytes::from(data),
        }]);
    }
    let text = std::str::from_utf8(&data)
        .with_context(|| format!("{}: not UTF-8 JSON", path.display()))?;
    // One document, or one per line.
    let docs: Vec<(usize, &str)> = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(_) => vec![(1, text)],
        Err(_) => text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| (i + 1, l))
            .collect(),
    };
    let mut out = Vec::new();
    for (line, doc) in docs {
        let v: serde_json::Value = serde_json::from_str(doc)
            .with_context(|| format!("{}:{line}: invalid JSON", path.display()))?;
        let Some(signal) = json_signal(&v) else {
            bail!(
                "{}:{line}: not an OTLP request (expected resourceSpans, resourceLogs or resourceMetrics)",
                path.display()
            );
        };
        out.push(ReplayRequest {
            signal,
            json: true,
            body: Bytes::copy_from_slice(doc.as_bytes()),
        });
    }
    Ok(out)
}

/// Sends every request of every file to `endpoint` (an OTLP/HTTP base URL), in order.
pub async fn run(files: &[PathBuf], endpoint: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let base = endpoint.trim_end_matches('/');
    let (mut sent, mut rejected_spans) = (0usize, 0i64);
    for file in files {
        for req in read_file(file)? {
            let url = format!("{base}{}", req.signal.http_path());
            let ct = if req.json {
                "application/json"
            } else {
                "application/x-protobuf"
            };
            let resp = client
                .post(&url)
                .header(http::header::CONTENT_TYPE, ct)
                .body(req.body)
                .send()
                .await
                .with_context(|| format!("POST {url}"))?;
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            if !status.is_success() {
                bail!("{}: {url} answered {status}: {text}", file.display());
            }
            if req.json {
                if let Some(n) = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v.pointer("/partialSuccess/rejectedSpans").cloned())
                {
                    rejected_spans += n.as_i64().or_else(|| n.as_str()?.parse().ok()).unwrap_or(0);
                }
            }
            sent += 1;
        }
    }
    println!(
        "replayed {sent} request(s) from {} file(s) to {base}; {rejected_spans} span(s) rejected",
        files.len()
    );
    Ok(())
}
