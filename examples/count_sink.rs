//! Counting OTLP/gRPC trace sink for load tests: spans and `failure.class`-tagged spans, over HTTP.
//!
//! ```text
//! cargo run --release --example count_sink -- --grpc 127.0.0.1:24317 --stats 127.0.0.1:24399
//! curl -s 127.0.0.1:24399/stats        # {"requests":..,"spans":..,"tagged":..,"last_unix_ns":..}
//! curl -s -X POST 127.0.0.1:24399/reset
//! ```
//!
//! Message bytes are taken undecoded (`RawCodec`); spans are counted by walking
//! `ExportTraceServiceRequest → ResourceSpans → ScopeSpans → Span` and tagged spans by a byte
//! search for the encoded `failure.class` key. `--delay-ms` makes it a slow downstream and
//! `--unavailable` one that refuses everything, for overload tests. It exits by itself after
//! `--max-runtime`.
//!
//! For fault tests (`bench/soak.sh` stops and restarts it): `--dedupe` counts a request whose
//! bytes it already took (a retry after a lost answer) as a duplicate instead of again, and
//! `--state FILE` carries the counts and the seen requests over a restart (read at start, written
//! at exit). SIGTERM stops it gracefully: requests in flight are answered before it exits.

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use axum::routing::{get, post};
use bytes::Bytes;
use clap::Parser;
use memchr::memmem;
use tonic::server::NamedService;
use tonic::transport::server::TcpIncoming;
use tonic::Status;

use triage_loop::otlp::receiver_grpc::raw_unary;
use triage_loop::otlp::wire::count_nested;

/// The encoded `KeyValue.key` of `failure.class`: field 1, length 13, the key. Longer keys that
/// start the same (`failure.class.source`) have another length byte and do not match.
const TAG_KEY: &[u8] = b"\x0a\x0dfailure.class";

/// HTTP/2 flow-control window of the sink, per connection and per stream.
const WINDOW: u32 = 16 * 1024 * 1024;

const TRACE_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

#[derive(Parser, Debug)]
#[command(about = "Counting OTLP/gRPC trace sink for load tests")]
struct Args {
    /// OTLP/gRPC listen address (loopback only).
    #[arg(long, default_value = "127.0.0.1:24317")]
    grpc: SocketAddr,
    /// HTTP listen address for GET /stats and POST /reset (loopback only).
    #[arg(long, default_value = "127.0.0.1:24399")]
    stats: SocketAddr,
    /// Sleep this long before answering each request (a slow downstream).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Answer every request with UNAVAILABLE (a downstream that is down).
    #[arg(long)]
    unavailable: bool,
    /// Largest accepted message, MiB.
    #[arg(long, default_value_t = 64)]
    max_message_mib: usize,
    /// Exit by itself after this long.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    max_runtime: Duration,
    /// Do not print a line per second.
    #[arg(long)]
    quiet: bool,
    /// Count a request whose bytes were already taken as a duplicate, not again.
    #[arg(long)]
    dedupe: bool,
    /// Counts and seen requests kept over restarts: read at start (if present), written at exit.
    #[arg(long)]
    state: Option<PathBuf>,
}

/// What arrived. Counted when the answer is sent (after `--delay-ms`).
#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    spans: AtomicU64,
    tagged: AtomicU64,
    bytes: AtomicU64,
    /// Requests answered with UNAVAILABLE (`--unavailable`).
    refused: AtomicU64,
    /// Requests that were not valid OTLP protobuf.
    malformed: AtomicU64,
    /// Requests (and their spans) taken before, with `--dedupe`; not in the counts above.
    duplicate_requests: AtomicU64,
    duplicate_spans: AtomicU64,
    first_unix_ns: AtomicU64,
    last_unix_ns: AtomicU64,
    /// Times this sink started on its `--state` (1 without it).
    starts: AtomicU64,
    /// xxh3 of every request taken, with `--dedupe`.
    seen: Option<Mutex<HashSet<u64>>>,
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Stats {
    requests: u64,
    spans: u64,
    tagged: u64,
    bytes: u64,
    refused: u64,
    malformed: u64,
    #[serde(default)]
    duplicate_requests: u64,
    #[serde(default)]
    duplicate_spans: u64,
    first_unix_ns: u64,
    last_unix_ns: u64,
    #[serde(default)]
    starts: u64,
}

/// What `--state` holds.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct State {
    stats: Stats,
    seen: Vec<u64>,
}

impl Counts {
    fn snapshot(&self) -> Stats {
        let l = |a: &AtomicU64| a.load(Ordering::Acquire);
        Stats {
            requests: l(&self.requests),
            spans: l(&self.spans),
            tagged: l(&self.tagged),
            bytes: l(&self.bytes),
            refused: l(&self.refused),
            malformed: l(&self.malformed),
            duplicate_requests: l(&self.duplicate_requests),
            duplicate_spans: l(&self.duplicate_spans),
            first_unix_ns: l(&self.first_unix_ns),
            last_unix_ns: l(&self.last_unix_ns),
            starts: l(&self.starts),
        }
    }

    /// Counts as they were at the end of the last run on this state.
    fn restore(&self, state: State) {
        let s = state.stats;
        let pairs = [
            (&self.requests, s.requests),
            (&self.spans, s.spans),
            (&self.tagged, s.tagged),
            (&self.bytes, s.bytes),
            (&self.refused, s.refused),
            (&self.malformed, s.malformed),
            (&self.duplicate_requests, s.duplicate_requests),
            (&self.duplicate_spans, s.duplicate_spans),
            (&self.first_unix_ns, s.first_unix_ns),
            (&self.last_unix_ns, s.last_unix_ns),
            (&self.starts, s.starts),
        ];
        for (a, v) in pairs {
            a.store(v, Ordering::Release);
        }
        if let Some(seen) = &self.seen {
            if let Ok(mut set) = seen.lock() {
                set.extend(state.seen);
            }
        }
    }

    fn state(&self) -> State {
        let seen = self
            .seen
            .as_ref()
            .and_then(|s| s.lock().ok().map(|s| s.iter().copied().collect()))
            .unwrap_or_default();
        State {
            stats: self.snapshot(),
            seen,
        }
    }

    /// Whether `body` was taken before (always false without `--dedupe`); remembers it.
    fn is_duplicate(&self, body: &[u8]) -> bool {
        let Some(seen) = &self.seen else {
            return false;
        };
        let h = xxhash_rust::xxh3::xxh3_64(body);
        match seen.lock() {
            Ok(mut set) => !set.insert(h),
            Err(_) => false,
        }
    }

    fn reset(&self) {
        for a in [
            &self.requests,
            &self.spans,
            &self.tagged,
            &self.bytes,
            &self.refused,
            &self.malformed,
            &self.duplicate_requests,
            &self.duplicate_spans,
            &self.first_unix_ns,
            &self.last_unix_ns,
        ] {
            a.store(0, Ordering::Release);
        }
        if let Some(seen) = &self.seen {
            if let Ok(mut set) = seen.lock() {
                set.clear();
            }
        }
    }

    fn record(&self, body: &[u8], spans: u64) {
        if self.is_duplicate(body) {
            self.duplicate_spans.fetch_add(spans, Ordering::AcqRel);
            self.duplicate_requests.fetch_add(1, Ordering::AcqRel);
            return;
        }
        let tagged = memmem::find_iter(body, TAG_KEY).count() as u64;
        self.spans.fetch_add(spans, Ordering::AcqRel);
        self.tagged.fetch_add(tagged, Ordering::AcqRel);
        self.bytes.fetch_add(body.len() as u64, Ordering::AcqRel);
        let now = unix_ns();
        let _ = self
            .first_unix_ns
            .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
        self.last_unix_ns.fetch_max(now, Ordering::AcqRel);
        // Last, so that a reader who sees the request count sees its spans too.
        self.requests.fetch_add(1, Ordering::AcqRel);
    }
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[derive(Clone)]
struct Behaviour {
    delay: Duration,
    unavailable: bool,
    max_message: usize,
}

/// The TraceService, with message bytes taken undecoded.
#[derive(Clone)]
struct Sink {
    counts: Arc<Counts>,
    behaviour: Behaviour,
}

impl NamedService for Sink {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The unary `Export` handler.
struct Export(Sink);

impl tonic::server::UnaryService<Bytes> for Export {
    type Response = Bytes;
    type Future = BoxFuture<Result<tonic::Response<Bytes>, Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let sink = self.0.clone();
        Box::pin(async move {
            let body = request.into_inner();
            if !sink.behaviour.delay.is_zero() {
                tokio::time::sleep(sink.behaviour.delay).await;
            }
            if sink.behaviour.unavailable {
                sink.counts.refused.fetch_add(1, Ordering::AcqRel);
                return Err(Status::unavailable("count_sink --unavailable"));
            }
            // ExportTraceServiceRequest: resource_spans (1) → scope_spans (2) → spans (2).
            match count_nested(&body, &[1, 2, 2]) {
                Ok(spans) => {
                    sink.counts.record(&body, spans);
                    // An empty ExportTraceServiceResponse is zero bytes.
                    Ok(tonic::Response::new(Bytes::new()))
                }
                Err(e) => {
                    sink.counts.malformed.fetch_add(1, Ordering::AcqRel);
                    Err(Status::invalid_argument(format!("malformed request: {e}")))
                }
            }
        })
    }
}

impl<B> tower::Service<http::Request<B>> for Sink
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != TRACE_EXPORT {
            return Box::pin(async { Ok(Status::unimplemented("traces only").into_http()) });
        }
        let sink = self.clone();
        let max = sink.behaviour.max_message;
        Box::pin(async move { Ok(raw_unary(Export(sink), req, max).await) })
    }
}

fn check_loopback(addr: &SocketAddr, flag: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        addr.ip().is_loopback(),
        "{flag} {addr}: the load-test sink listens on loopback only"
    );
    Ok(())
}

async fn print_every_second(counts: Arc<Counts>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = 0u64;
    loop {
        tick.tick().await;
        let s = counts.snapshot();
        if s.spans != last || s.refused > 0 {
            println!(
                "count_sink: {} spans (+{}/s), {} tagged, {} requests, {} refused",
                s.spans,
                s.spans.saturating_sub(last),
                s.tagged,
                s.requests,
                s.refused
            );
            last = s.spans;
        }
    }
}

fn read_state(path: &Path) -> anyhow::Result<State> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("--state {}: not a count_sink state", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(e).with_context(|| format!("reading --state {}", path.display())),
    }
}

/// Writes the state beside `path` and renames it over, so a crash never leaves half a file.
fn write_state(path: &Path, state: &State) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec(state).context("encoding the state")?;
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

async fn wait_for_stop(max_runtime: Duration) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut t) => {
                    t.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term => {}
            _ = tokio::time::sleep(max_runtime) => eprintln!("count_sink: --max-runtime reached"),
        }
    }
    #[cfg(not(unix))]
    tokio::select! {
        _ = ctrl_c => {}
        _ = tokio::time::sleep(max_runtime) => eprintln!("count_sink: --max-runtime reached"),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("count_sink: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    check_loopback(&args.grpc, "--grpc")?;
    check_loopback(&args.stats, "--stats")?;
    let counts = Arc::new(Counts {
        seen: args.dedupe.then(|| Mutex::new(HashSet::new())),
        ..Counts::default()
    });
    if let Some(path) = &args.state {
        counts.restore(read_state(path)?);
    }
    counts.starts.fetch_add(1, Ordering::AcqRel);
    let sink = Sink {
        counts: counts.clone(),
        behaviour: Behaviour {
            delay: Duration::from_millis(args.delay_ms),
            unavailable: args.unavailable,
            max_message: args.max_message_mib * 1024 * 1024,
        },
    };

    let grpc = tokio::net::TcpListener::bind(args.grpc)
        .await
        .with_context(|| format!("cannot listen on --grpc {}", args.grpc))?;
    let stats = tokio::net::TcpListener::bind(args.stats)
        .await
        .with_context(|| format!("cannot listen on --stats {}", args.stats))?;

    let c = counts.clone();
    let c2 = counts.clone();
    let app = axum::Router::new()
        .route(
            "/stats",
            get(move || async move { axum::Json(c.snapshot()) }),
        )
        .route(
            "/reset",
            post(move || async move {
                c2.reset();
                "reset\n"
            }),
        );
    let stats_server = tokio::spawn(async move { axum::serve(stats, app).await });
    // Stopping (a signal or --max-runtime) shuts the gRPC server down gracefully: it stops
    // accepting, and answers the requests it took before it returns.
    let max_runtime = args.max_runtime;
    let grpc_server = tokio::spawn(
        tonic::transport::Server::builder()
            // Wide HTTP/2 windows, so flow control of the sink never limits the collector under test.
            .initial_connection_window_size(WINDOW)
            .initial_stream_window_size(WINDOW)
            .add_service(sink)
            // Accepted sockets get TCP_NODELAY: without it small answers wait on Nagle.
            .serve_with_incoming_shutdown(
                TcpIncoming::from(grpc).with_nodelay(Some(true)),
                wait_for_stop(max_runtime),
            ),
    );
    if !args.quiet {
        tokio::spawn(print_every_second(counts.clone()));
    }
    println!(
        "count_sink: OTLP/gRPC on {}, stats on http://{}/stats (delay {} ms{})",
        args.grpc,
        args.stats,
        args.delay_ms,
        if args.unavailable {
            ", answering UNAVAILABLE"
        } else {
            ""
        }
    );

    tokio::select! {
        r = grpc_server => {
            r.context("gRPC server task")?.context("gRPC server")?;
        }
        r = stats_server => {
            r.context("stats server task")?.context("stats server")?;
        }
    }
    let s = counts.snapshot();
    println!(
        "count_sink: final {} spans, {} tagged, {} requests, {} refused, {} malformed, {} duplicate requests ({} spans)",
        s.spans, s.tagged, s.requests, s.refused, s.malformed, s.duplicate_requests, s.duplicate_spans
    );
    if let Some(path) = &args.state {
        write_state(path, &counts.state())?;
    }
    Ok(())
}
