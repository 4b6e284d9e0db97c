//! The `jsonl` sink: one JSON line per remediation, appended and synced, written once per idempotency key.

use std::collections::{HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::json;

use super::{Sink, SinkError};
use crate::remediation::render::{rfc3339, Remediation};

/// Most idempotency keys remembered; past this the oldest are forgotten.
const MAX_KEYS: usize = 100_000;

/// Most bytes of an existing file scanned for keys on first use (its tail).
const MAX_SCAN_BYTES: u64 = 64 * 1024 * 1024;

/// Appends remediations to a JSON-lines file, skipping keys already in it.
pub struct JsonlSink {
    path: PathBuf,
    state: Arc<Mutex<State>>,
}

/// The open file and the keys it holds.
#[derive(Default)]
struct State {
    file: Option<File>,
    keys: HashSet<String>,
    order: VecDeque<String>,
    /// The file ends in a torn line (a crash mid-write): start the next line on a fresh one.
    needs_newline: bool,
}

impl State {
    fn remember(&mut self, key: String) {
        if !self.keys.insert(key.clone()) {
            return;
        }
        self.order.push_back(key);
        if self.order.len() > MAX_KEYS {
            if let Some(old) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
    }
}

impl JsonlSink {
    /// A sink appending to `path`; the file and its parent directories are created on first use.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        JsonlSink {
            path: path.into(),
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[async_trait]
impl Sink for JsonlSink {
    async fn deliver(&self, r: &Remediation) -> Result<(), SinkError> {
        let key = r.idempotency_key.clone();
        let line = line(r);
        let path = self.path.clone();
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || {
            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
            append(&path, &mut st, key, &line)
        })
        .await
        .map_err(|e| SinkError::Retryable(format!("jsonl: writer task failed: {e}")))?
        .map_err(|e| SinkError::Retryable(format!("jsonl {}: {e}", self.path.display())))
    }
}

/// The JSON line of one remediation (no trailing newline).
fn line(r: &Remediation) -> String {
    json!({
        "idempotency_key": r.idempotency_key,
        "issue_id": r.issue_id,
        "cycle": r.cycle,
        "class": r.class,
        "remediation": r.remediation,
        "owner": r.owner,
        "title": r.title,
        "body": r.body,
        "trace_id": r.trace_id,
        "span_id": r.span_id,
        "trace_url": r.trace_url,
        "fingerprint": r.fingerprint,
        "agent": r.agent,
        "service": r.service,
        "state": r.state,
        "dispatched_at": rfc3339(r.dispatched_at),
    })
    .to_string()
}

/// Writes `line` unless `key` is in the file already; opens (and scans) the file on first use.
fn append(path: &Path, st: &mut State, key: String, line: &str) -> std::io::Result<()> {
    if st.file.is_none() {
        open(path, st)?;
    }
    if st.keys.contains(&key) {
        tracing::debug!(key, "jsonl: already written, skipped");
        return Ok(());
    }
    let Some(file) = st.file.as_mut() else {
        return Err(std::io::Error::other("file not open"));
    };
    let mut buf = Vec::with_capacity(line.len() + 2);
    if st.needs_newline {
        buf.push(b'\n');
    }
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    if let Err(e) = file.write_all(&buf).and_then(|()| file.sync_data()) {
        // A partial write may have left a torn line: reopen (and rescan) next time.
        st.file = None;
        return Err(e);
    }
    st.needs_newline = false;
    st.remember(key);
    Ok(())
}

/// Creates the parent directories, opens the file for appending and loads the keys in its tail.
fn open(path: &Path, st: &mut State) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)?;
    st.keys.clear();
    st.order.clear();
    st.needs_newline = scan(&file, st)?;
    st.file = Some(file);
    Ok(())
}

/// Remembers the keys of the file's last `MAX_SCAN_BYTES`; returns whether it ends in a torn line.
fn scan(file: &File, st: &mut State) -> std::io::Result<bool> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(false);
    }
    let mut f = file;
    f.seek(SeekFrom::Start(len - 1))?;
    let mut last = [0u8; 1];
    f.read_exact(&mut last)?;
    let start = len.saturating_sub(MAX_SCAN_BYTES);
    f.seek(SeekFrom::Start(start))?;
    let mut reader = BufReader::new(f);
    let mut buf = Vec::new();
    if start > 0 {
        reader.read_until(b'\n', &mut buf)?; // a partial first line
    }
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        let key = serde_json::from_slice::<serde_json::Value>(&buf)
            .ok()
            .and_then(|v| v.get("idempotency_key")?.as_str().map(str::to_string));
        if let Some(key) = key {
            st.remember(key);
        }
    }
    Ok(last[0] != b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remediation::render::sample;

    #[tokio::test]
    async fn torn_tail_is_finished_and_known_keys_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/r.jsonl");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(
            &path,
            "{\"idempotency_key\":\"1:1:jsonl\"}\n{\"idempotency_key\":\"2:1:js",
        )
        .unwrap();
        let sink = JsonlSink::new(&path);
        sink.deliver(&sample("1:1:jsonl")).await.unwrap();
        sink.deliver(&sample("2:1:jsonl")).await.unwrap();
        sink.deliver(&sample("2:1:jsonl")).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let last: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
        assert_eq!(last["idempotency_key"], "2:1:jsonl");
    }

    #[tokio::test]
    async fn creates_parent_directories() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x/y/z.jsonl");
        JsonlSink::new(&path)
            .deliver(&sample("9:1:jsonl"))
            .await
            .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
    }
}
