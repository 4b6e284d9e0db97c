//! The OTLP exporter: a bounded queue (requests and bytes, in memory or on disk) drained by a
//! fixed number of consumers that forward raw OTLP protobuf downstream over gRPC or HTTP,
//! retrying with backoff.

use std::io::Write;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flate2::write::GzEncoder;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tonic::codec::CompressionEncoding;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::admin::metrics::Metrics;
use crate::config::{Compression, ExportProtocol, FileStorageConfig, OtlpExporter, RetryConfig};
use crate::otlp::codec::PayloadCodec;
use crate::otlp::disk_queue::{DiskQueue, Entry, Position};
use crate::otlp::payload::Payload;
use crate::otlp::SignalType;

/// Most HTTP/2 connections the gRPC exporter opens to the downstream.
const MAX_GRPC_CONNECTIONS: usize = 4;

/// One encoded export request waiting to go downstream.
#[derive(Debug, Clone)]
pub struct ExportItem {
    pub signal: SignalType,
    pub body: Payload,
    /// Spans (log records, metrics) it holds, for accounting.
    pub items: u64,
}

/// The queue is at its cap: the caller should answer with back-pressure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("export queue is full")]
pub struct QueueFull;

/// What an enqueued request waits for before the receiver may acknowledge it: nothing, or,
/// with `file_storage` `fsync: true`, its flush to stable storage (a group commit shared with
/// the requests written meanwhile).
#[must_use = "wait for it before acknowledging the request"]
pub enum Durable {
    Now,
    Flush(Arc<DiskQueue>, Position),
}

impl Durable {
    /// Waits until the request may be acknowledged; `QueueFull` (back-pressure, so the client
    /// sends it again) when its flush failed.
    pub async fn wait(self) -> Result<(), QueueFull> {
        match self {
            Durable::Now => Ok(()),
            Durable::Flush(q, pos) => q.flushed(pos).await.map_err(|_| QueueFull),
        }
    }
}

/// The sending side of the export queue, shared by the receivers.
#[derive(Clone)]
pub struct ExportQueue {
    inner: Sender,
}

#[derive(Clone)]
enum Sender {
    Memory {
        tx: mpsc::Sender<ExportItem>,
        bytes: Arc<AtomicUsize>,
        max_bytes: usize,
        metrics: Arc<Metrics>,
    },
    /// Closes the queue when the last clone is dropped, as dropping the last `mpsc::Sender`
    /// closes the in-memory one.
    Disk(Arc<CloseOnDrop>),
}

struct CloseOnDrop(Arc<DiskQueue>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl ExportQueue {
    /// Enqueues without waiting; `QueueFull` when the request or byte cap is reached (or, on
    /// disk, the write failed). What is returned says when the request may be acknowledged.
    pub fn try_send(&self, item: ExportItem) -> Result<Durable, QueueFull> {
        match &self.inner {
            Sender::Memory {
                tx,
                bytes,
                max_bytes,
                metrics,
            } => {
                let len = item.body.len();
                let before = bytes.fetch_add(len, Ordering::AcqRel);
                // One request is always admitted into an empty queue, however large (it passed
                // the receiver's size limit).
                if before > 0 && before + len > *max_bytes {
                    bytes.fetch_sub(len, Ordering::AcqRel);
                    return Err(QueueFull);
                }
                match tx.try_send(item) {
                    Ok(()) => {
                        metrics.queue_requests.inc();
                        metrics.queue_bytes.inc_by(len as i64);
                        Ok(Durable::Now)
                    }
                    Err(_) => {
                        bytes.fetch_sub(len, Ordering::AcqRel);
                        Err(QueueFull)
                    }
                }
            }
            Sender::Disk(q) => {
                let pos =
                    q.0.push_parts(item.signal, item.body.parts(), item.items)
                        .map_err(|_| QueueFull)?;
                Ok(if q.0.flushes_pushes() {
                    Durable::Flush(q.0.clone(), pos)
                } else {
                    Durable::Now
                })
            }
        }
    }

    /// Whether a request of `len` bytes would be admitted now: lets receivers refuse before
    /// doing any work. `try_send` still decides.
    pub fn has_room(&self, len: usize) -> bool {
        match &self.inner {
            Sender::Memory {
                tx,
                bytes,
                max_bytes,
                ..
            } => {
                let queued = bytes.load(Ordering::Acquire);
                tx.capacity() > 0 && (queued == 0 || queued + len <= *max_bytes)
            }
            Sender::Disk(q) => q.0.has_room(len),
        }
    }
}

/// Why one send attempt failed.
#[derive(Debug)]
struct SendError {
    retryable: bool,
    retry_after: Option<Duration>,
    message: String,
}

/// The downstream connection.
#[derive(Clone)]
enum Downstream {
    Grpc {
        /// Several HTTP/2 connections, used in turn, so one connection's flow-control window
        /// does not cap throughput.
        channels: Arc<[Channel]>,
        next: Arc<AtomicUsize>,
        compression: Option<CompressionEncoding>,
        headers: Vec<(
            MetadataKey<tonic::metadata::Ascii>,
            MetadataValue<tonic::metadata::Ascii>,
        )>,
        timeout: Duration,
    },
    Http {
        client: reqwest::Client,
        base: String,
        gzip: bool,
    },
}

/// Starts the exporter; returns the queue for the receivers and the task draining it. With
/// `sending_queue.storage` set, the queue lives in `storage`'s directory and what an earlier
/// process left there is sent first.
pub fn start(
    config: &OtlpExporter,
    storage: Option<&FileStorageConfig>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(ExportQueue, JoinHandle<()>)> {
    let downstream = Downstream::new(config)?;
    let q = &config.sending_queue;
    let max_bytes = q.queue_size_mib.saturating_mul(1024 * 1024);
    metrics.queue_capacity_requests.set(q.queue_size as i64);
    metrics.queue_capacity_bytes.set(max_bytes as i64);
    let worker = Worker {
        downstream,
        retry: config.retry_on_failure.clone(),
        metrics: metrics.clone(),
    };
    let consumers = q.num_consumers;
    let storage = match (&q.storage, storage) {
        (Some(_), Some(s)) => Some(s),
        (Some(name), None) => anyhow::bail!(
            "exporters.otlp.sending_queue.storage: {name} is not configured under extensions"
        ),
        (None, _) => None,
    };
    let Some(storage) = storage else {
        let (tx, rx) = mpsc::channel(q.queue_size);
        let bytes = Arc::new(AtomicUsize::new(0));
        let queue = ExportQueue {
            inner: Sender::Memory {
                tx,
                bytes: bytes.clone(),
                max_bytes,
                metrics,
            },
        };
        let handle = tokio::spawn(worker.run(Source::Memory { rx, bytes }, consumers));
        return Ok((queue, handle));
    };
    let (disk, recovered) = DiskQueue::open(
        &storage.directory,
        storage.fsync,
        q.queue_size,
        max_bytes,
        metrics.clone(),
    )?;
    for (signal, items) in ["traces", "logs", "metrics"]
        .into_iter()
        .zip(recovered.items)
    {
        metrics.export_queue_recovered(signal, items);
    }
    if recovered.requests > 0 {
        tracing::info!(
            requests = recovered.requests,
            bytes = recovered.bytes,
            spans = recovered.items[0],
            directory = %storage.directory.display(),
            "persistent export queue: sending what an earlier process left"
        );
    }
    let disk = Arc::new(disk);
    let queue = ExportQueue {
        inner: Sender::Disk(Arc::new(CloseOnDrop(disk.clone()))),
    };
    let handle = tokio::spawn(worker.run(Source::Disk(disk), consumers));
    Ok((queue, handle))
}

/// Where the consumers take requests from.
enum Source {
    Memory {
        rx: mpsc::Receiver<ExportItem>,
        bytes: Arc<AtomicUsize>,
    },
    Disk(Arc<DiskQueue>),
}

/// One request taken from the queue, with what finishing it needs.
struct Job {
    item: ExportItem,
    done: Done,
}

enum Done {
    Memory(Arc<AtomicUsize>),
    Disk(Arc<DiskQueue>, Entry),
}

impl Source {
    async fn next(&mut self) -> Option<Job> {
        match self {
            Source::Memory { rx, bytes } => rx.recv().await.map(|item| Job {
                item,
                done: Done::Memory(bytes.clone()),
            }),
            Source::Disk(q) => q.next().await.map(|(entry, body)| Job {
                item: ExportItem {
                    signal: entry.signal,
                    body: body.into(),
                    items: entry.items,
                },
                done: Done::Disk(q.clone(), entry),
            }),
        }
    }
}

/// How long a shutdown waits for the persistent queue's requests in flight; what is not
/// finished by then is sent again by the next process.
const DISK_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

struct Worker {
    downstream: Downstream,
    retry: RetryConfig,
    metrics: Arc<Metrics>,
}

impl Worker {
    /// Drains the queue with at most `consumers` requests in flight. In memory: returns once
    /// every sender is gone and all accepted requests are finished. On disk: returns once the
    /// queue is closed and the requests in flight are finished or, after a grace, abandoned
    /// (they stay on disk).
    async fn run(self, mut source: Source, consumers: usize) {
        let persistent = matches!(source, Source::Disk(_));
        let me = Arc::new(self);
        let slots = Arc::new(Semaphore::new(consumers));
        let mut in_flight = JoinSet::new();
        while let Some(job) = source.next().await {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                break;
            };
            let me = me.clone();
            in_flight.spawn(async move {
                me.deliver(job).await;
                drop(permit);
            });
            // Reap finished deliveries so the set stays as small as the slots.
            while in_flight.try_join_next().is_some() {}
        }
        if persistent {
            let drained = async { while in_flight.join_next().await.is_some() {} };
            if tokio::time::timeout(DISK_SHUTDOWN_GRACE, drained)
                .await
                .is_err()
            {
                tracing::info!(
                    requests = in_flight.len(),
                    "persistent export queue: requests still in flight stay queued for the next start"
                );
                in_flight.shutdown().await;
            }
        } else {
            while in_flight.join_next().await.is_some() {}
        }
    }

    async fn deliver(&self, job: Job) {
        let item = &job.item;
        let delivered = self.send_with_retry(item).await;
        match job.done {
            Done::Memory(bytes) => {
                let len = item.body.len();
                bytes.fetch_sub(len, Ordering::AcqRel);
                self.metrics.queue_requests.dec();
                self.metrics.queue_bytes.dec_by(len as i64);
            }
            Done::Disk(q, entry) => q.finish(&entry),
        }
        let signal = item.signal.as_str();
        if delivered {
            self.metrics.export_request(signal, "sent");
            if item.signal == SignalType::Traces {
                self.metrics.spans.forwarded.inc_by(item.items);
            }
        } else {
            self.metrics.export_request(signal, "failed");
            if item.signal == SignalType::Traces {
                self.metrics.spans.dropped.inc_by(item.items);
            }
        }
    }
    /// Sends until success, a permanent error, or the retry budget is spent.
    async fn send_with_retry(&self, item: &ExportItem) -> bool {
        let started = Instant::now();
        let mut backoff = self.retry.initial_interval;
        loop {
            let err = match self.downstream.send(item.signal, item.body.clone()).await {
                Ok(()) => return true,
                Err(e) => e,
            };
            let budget_left = self.retry.max_elapsed_time.is_zero()
                || started.elapsed() + backoff <= self.retry.max_elapsed_time;
            if !(self.retry.enabled && err.retryable && budget_left) {
                tracing::warn!(
                    signal = item.signal.as_str(),
                    items = item.items,
                    error = %err.message,
                    "export failed; dropping request"
                );
                return false;
            }
            self.metrics.export_request(item.signal.as_str(), "retried");
            let wait = err
                .retry_after
                .unwrap_or(backoff)
                .min(self.retry.max_interval.max(backoff));
            tracing::debug!(error = %err.message, ?wait, "export failed; retrying");
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(self.retry.max_interval);
        }
    }
}

/// Whether a failed gRPC export may be sent again: a status the downstream sent with one of
/// OTLP's retryable codes, or a failure of the connection under the call. tonic reports the
/// latter as `Internal` or `Unknown` with the transport error as the status's source (a
/// downstream that restarts and cuts its HTTP/2 connections gives "h2 protocol error"); the
/// downstream gave no verdict on the request, so it is sent again, as a gRPC client that maps a
/// broken transport to `UNAVAILABLE` would: a duplicate is possible, a loss is not.
fn grpc_retryable(status: &tonic::Status) -> bool {
    let transport = matches!(status.code(), Code::Internal | Code::Unknown)
        && std::error::Error::source(status).is_some();
    transport
        || matches!(
            status.code(),
            Code::Unavailable
                | Code::ResourceExhausted
                | Code::DeadlineExceeded
                | Code::Aborted
                | Code::Cancelled
                | Code::OutOfRange
                | Code::DataLoss
        )
}

impl Downstream {
    fn new(c: &OtlpExporter) -> anyhow::Result<Self> {
        match c.protocol {
            ExportProtocol::Grpc => {
                let url = with_scheme(&c.endpoint);
                let endpoint = Endpoint::from_shared(url.clone())
                    .map_err(|e| anyhow::anyhow!("exporters.otlp.endpoint {url:?}: {e}"))?
                    .connect_timeout(c.timeout)
                    .tcp_nodelay(true);
                let connections = c.sending_queue.num_consumers.clamp(1, MAX_GRPC_CONNECTIONS);
                let channels: Arc<[Channel]> = (0..connections)
                    .map(|_| endpoint.clone().connect_lazy())
                    .collect();
                let mut headers = Vec::new();
                for (k, v) in &c.headers {
                    let key = MetadataKey::from_str(&k.to_ascii_lowercase())
                        .map_err(|e| anyhow::anyhow!("exporters.otlp.headers.{k}: {e}"))?;
                    let value = MetadataValue::try_from(v.as_str())
                        .map_err(|e| anyhow::anyhow!("exporters.otlp.headers.{k}: {e}"))?;
                    headers.push((key, value));
                }
                Ok(Downstream::Grpc {
                    channels,
                    next: Arc::new(AtomicUsize::new(0)),
                    compression: match c.compression {
                        Compression::None => None,
                        Compression::Gzip => Some(CompressionEncoding::Gzip),
                        Compression::Zstd => Some(CompressionEncoding::Zstd),
                    },
                    headers,
                    timeout: c.timeout,
                })
            }
            ExportProtocol::HttpProtobuf => {
                if c.compression == Compression::Zstd {
                    anyhow::bail!("exporters.otlp.compression: zstd is supported over grpc only; use gzip or none");
                }
                let mut headers = reqwest::header::HeaderMap::new();
                for (k, v) in &c.headers {
                    let name = reqwest::header::HeaderName::from_str(k)
                        .map_err(|e| anyhow::anyhow!("exporters.otlp.headers.{k}: {e}"))?;
                    let value = reqwest::header::HeaderValue::from_str(v)
                        .map_err(|e| anyhow::anyhow!("exporters.otlp.headers.{k}: {e}"))?;
                    headers.insert(name, value);
                }
                let client = reqwest::Client::builder()
                    .timeout(c.timeout)
                    .default_headers(headers)
                    .build()?;
                Ok(Downstream::Http {
                    client,
                    base: with_scheme(&c.endpoint).trim_end_matches('/').to_string(),
                    gzip: c.compression == Compression::Gzip,
                })
            }
        }
    }

    async fn send(&self, signal: SignalType, body: Payload) -> Result<(), SendError> {
        match self {
            Downstream::Grpc {
                channels,
                next,
                compression,
                headers,
                timeout,
            } => {
                let i = next.fetch_add(1, Ordering::Relaxed) % channels.len();
                let mut grpc = tonic::client::Grpc::new(channels[i].clone());
                if let Some(c) = compression {
                    grpc = grpc.send_compressed(*c);
                }
                grpc.ready().await.map_err(|e| SendError {
                    retryable: true,
                    retry_after: None,
                    message: format!("downstream not ready: {e}"),
                })?;
                let mut req = tonic::Request::new(body);
                req.set_timeout(*timeout);
                for (k, v) in headers {
                    req.metadata_mut().insert(k.clone(), v.clone());
                }
                let path = http::uri::PathAndQuery::from_static(signal.grpc_path());
                let call = grpc.unary::<Payload, Bytes, _>(req, path, PayloadCodec);
                match tokio::time::timeout(*timeout, call).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(status)) => Err(SendError {
                        retryable: grpc_retryable(&status),
                        retry_after: None,
                        message: format!("{:?}: {}", status.code(), status.message()),
                    }),
                    Err(_) => Err(SendError {
                        retryable: true,
                        retry_after: None,
                        message: format!("timed out after {timeout:?}"),
                    }),
                }
            }
            Downstream::Http { client, base, gzip } => {
                let url = format!("{base}{}", signal.http_path());
                let mut req = client
                    .post(&url)
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf");
                req = if *gzip {
                    let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    body.parts()
                        .iter()
                        .try_for_each(|p| enc.write_all(p))
                        .and_then(|_| enc.finish())
                        .map(|gz| req.header(http::header::CONTENT_ENCODING, "gzip").body(gz))
                        .map_err(|e| SendError {
                            retryable: false,
                            retry_after: None,
                            message: format!("gzip: {e}"),
                        })?
                } else {
                    req.body(body.to_bytes())
                };
                match req.send().await {
                    Ok(resp) if resp.status().is_success() => Ok(()),
                    Ok(resp) => {
                        let status = resp.status();
                        let retry_after = resp
                            .headers()
                            .get(http::header::RETRY_AFTER)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.trim().parse::<u64>().ok())
                            .map(Duration::from_secs);
                        Err(SendError {
                            retryable: matches!(status.as_u16(), 429 | 502 | 503 | 504),
                            retry_after,
                            message: format!("{url}: HTTP {status}"),
                        })
                    }
                    Err(e) => Err(SendError {
                        retryable: true,
                        retry_after: None,
                        message: format!("{url}: {e}"),
                    }),
                }
            }
        }
    }
}

/// `host:port` → `http://host:port`; URLs are kept.
fn with_scheme(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_connection_is_retried_and_a_downstream_verdict_is_kept() {
        // What tonic builds when the connection fails under a call: the transport error as the
        // status's source, with `Unknown` (or `Internal` for an h2 reset).
        let broken = tonic::Status::from_error(Box::new(std::io::Error::other(
            "connection closed before message completed",
        )));
        assert_eq!(broken.code(), Code::Unknown);
        assert!(grpc_retryable(&broken));
        // A status the downstream sent (read from its grpc-status trailer) has no source.
        for sent in [
            tonic::Status::internal("bad request"),
            tonic::Status::unknown("handler failed"),
            tonic::Status::invalid_argument("malformed"),
            tonic::Status::permission_denied("no"),
        ] {
            assert!(!grpc_retryable(&sent), "{sent:?}");
        }
        for sent in [
            tonic::Status::unavailable("restarting"),
            tonic::Status::resource_exhausted("slow down"),
            tonic::Status::deadline_exceeded("late"),
        ] {
            assert!(grpc_retryable(&sent), "{sent:?}");
        }
    }
}
