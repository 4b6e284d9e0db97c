//! The OTLP exporter: a bounded queue (requests and bytes) drained by a fixed number of
//! consumers that forward raw OTLP protobuf downstream over gRPC or HTTP, retrying with backoff.

use std::io::Write;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flate2::write::GzEncoder;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::admin::metrics::Metrics;
use crate::config::{Compression, ExportProtocol, OtlpExporter, RetryConfig};
use crate::otlp::codec::RawCodec;
use crate::otlp::SignalType;

/// Most HTTP/2 connections the gRPC exporter opens to the downstream.
const MAX_GRPC_CONNECTIONS: usize = 4;

/// One encoded export request waiting to go downstream.
#[derive(Debug, Clone)]
pub struct ExportItem {
    pub signal: SignalType,
    pub body: Bytes,
    /// Spans (log records, metrics) it holds, for accounting.
    pub items: u64,
}

/// The queue is at its cap: the caller should answer with back-pressure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("export queue is full")]
pub struct QueueFull;

/// The sending side of the export queue, shared by the receivers.
#[derive(Clone)]
pub struct ExportQueue {
    tx: mpsc::Sender<ExportItem>,
    bytes: Arc<AtomicUsize>,
    max_bytes: usize,
    metrics: Arc<Metrics>,
}

impl ExportQueue {
    /// Enqueues without waiting; `QueueFull` when the request or byte cap is reached.
    pub fn try_send(&self, item: ExportItem) -> Result<(), QueueFull> {
        let len = item.body.len();
        let before = self.bytes.fetch_add(len, Ordering::AcqRel);
        // One request is always admitted into an empty queue, however large (it passed the
        // receiver's size limit).
        if before > 0 && before + len > self.max_bytes {
            self.bytes.fetch_sub(len, Ordering::AcqRel);
            return Err(QueueFull);
        }
        match self.tx.try_send(item) {
            Ok(()) => {
                self.metrics.queue_requests.inc();
                self.metrics.queue_bytes.inc_by(len as i64);
                Ok(())
            }
            Err(_) => {
                self.bytes.fetch_sub(len, Ordering::AcqRel);
                Err(QueueFull)
            }
        }
    }

    /// Whether a request of `len` bytes would be admitted now: lets receivers refuse before
    /// doing any work. `try_send` still decides.
    pub fn has_room(&self, len: usize) -> bool {
        let queued = self.bytes.load(Ordering::Acquire);
        self.tx.capacity() > 0 && (queued == 0 || queued + len <= self.max_bytes)
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

/// Starts the exporter; returns the queue for the receivers and the task draining it.
pub fn start(
    config: &OtlpExporter,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(ExportQueue, JoinHandle<()>)> {
    let downstream = Downstream::new(config)?;
    let q = &config.sending_queue;
    let (tx, rx) = mpsc::channel(q.queue_size);
    let max_bytes = q.queue_size_mib.saturating_mul(1024 * 1024);
    metrics.queue_capacity_requests.set(q.queue_size as i64);
    metrics.queue_capacity_bytes.set(max_bytes as i64);
    let bytes = Arc::new(AtomicUsize::new(0));
    let queue = ExportQueue {
        tx,
        bytes: bytes.clone(),
        max_bytes,
        metrics: metrics.clone(),
    };
    let worker = Worker {
        downstream,
        retry: config.retry_on_failure.clone(),
        metrics,
        bytes,
    };
    let handle = tokio::spawn(worker.run(rx, q.num_consumers));
    Ok((queue, handle))
}

struct Worker {
    downstream: Downstream,
    retry: RetryConfig,
    metrics: Arc<Metrics>,
    bytes: Arc<AtomicUsize>,
}

impl Worker {
    /// Drains the queue with at most `consumers` requests in flight; returns once every sender
    /// is gone and all accepted requests are finished.
    async fn run(self, mut rx: mpsc::Receiver<ExportItem>, consumers: usize) {
        let me = Arc::new(self);
        let slots = Arc::new(Semaphore::new(consumers));
        while let Some(item) = rx.recv().await {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                break;
            };
            let me = me.clone();
            tokio::spawn(async move {
                me.deliver(item).await;
                drop(permit);
            });
        }
        // Wait for in-flight requests before returning.
        let _ = slots.acquire_many(consumers as u32).await;
    }

    async fn deliver(&self, item: ExportItem) {
        let len = item.body.len();
        let delivered = self.send_with_retry(&item).await;
        self.bytes.fetch_sub(len, Ordering::AcqRel);
        self.metrics.queue_requests.dec();
        self.metrics.queue_bytes.dec_by(len as i64);
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

    async fn send(&self, signal: SignalType, body: Bytes) -> Result<(), SendError> {
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
                let call = grpc.unary::<Bytes, Bytes, _>(req, path, RawCodec);
                match tokio::time::timeout(*timeout, call).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(status)) => Err(SendError {
                        retryable: matches!(
                            status.code(),
                            Code::Unavailable
                                | Code::ResourceExhausted
                                | Code::DeadlineExceeded
                                | Code::Aborted
                                | Code::Cancelled
                                | Code::OutOfRange
                                | Code::DataLoss
                        ),
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
                    enc.write_all(&body)
                        .and_then(|_| enc.finish())
                        .map(|gz| req.header(http::header::CONTENT_ENCODING, "gzip").body(gz))
                        .map_err(|e| SendError {
                            retryable: false,
                            retry_after: None,
                            message: format!("gzip: {e}"),
                        })?
                } else {
                    req.body(body)
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
