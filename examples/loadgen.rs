//! OTLP/gRPC load generator: replays pre-encoded agent traces, measures spans/s at a count_sink.
//!
//! ```text
//! cargo run --release --example loadgen -- --endpoint 127.0.0.1:4317 \
//!     --requests 2000 --concurrency 8 --sink-stats http://127.0.0.1:24399
//! ```
//!
//! Requests come from `triage_loop::synth::Fleet` (GenAI agent runs with ~1 KB prompt
//! attributes, exactly `--failure-percent` of them failing), encoded once before the clock starts and
//! replayed round-robin, so the generator spends no time encoding. Sending stops after
//! `--requests` or `--duration`, whichever comes first; RESOURCE_EXHAUSTED and UNAVAILABLE are
//! retried with a small backoff (bounded) and counted. With `--sink-stats` the sink is reset first
//! and, once sending is done, polled until every accepted span arrived (or it stops moving); the
//! delivered rate is spans at the sink / (last arrival at the sink − load start). With
//! `--novel-every N` every Nth send renames its agents to a name never sent before, so its failed
//! runs open new issues (the soak test's steady supply of dispatches). The last line on stdout is
//! `RESULT key=value …` for scripts; besides spans it counts the failing runs in accepted requests
//! (`failing_runs_ok`) and the spans and failing runs of requests never accepted (`gave_up_*`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use prost::Message;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use triage_loop::otlp::codec::RawCodec;
use triage_loop::otlp::wire::{count_nested, expect_len, Fields};
use triage_loop::synth::{Fleet, GeneratedTrace, Scenario};

const TRACE_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

#[derive(Parser, Debug)]
#[command(about = "OTLP/gRPC trace load generator (loopback only)")]
struct Args {
    /// OTLP/gRPC endpoint of the collector under test (loopback only).
    #[arg(long, default_value = "127.0.0.1:4317")]
    endpoint: SocketAddr,
    /// Requests to send in all; 0 = until --duration.
    #[arg(long, default_value_t = 2000)]
    requests: u64,
    /// Longest the send phase may take.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// HTTP/2 connections the streams are spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Target requests per second; 0 = as fast as the collector accepts.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Distinct pre-encoded requests replayed round-robin.
    #[arg(long, default_value_t = 32)]
    distinct: usize,
    /// Spans per request (whole agent runs, so about this many).
    #[arg(long, default_value_t = 512)]
    spans_per_request: usize,
    /// Tool-calling steps per agent run: 1 is the minimal run (agent → chat, tool, chat: 4
    /// spans); N > 1 adds N − 1 earlier steps and the HTTP client spans under every LLM and
    /// earlier tool call, 4N + 2 spans (`synth::Fleet::with_steps`).
    #[arg(long, default_value_t = 1)]
    steps: usize,
    /// Agent runs that fail, percent: exactly that share of the pool's runs (rounded to a whole
    /// run), placed at random.
    #[arg(long, default_value_t = 5)]
    failure_percent: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Retries of one request on RESOURCE_EXHAUSTED / UNAVAILABLE before giving up on it.
    #[arg(long, default_value_t = 500)]
    max_retries: u32,
    /// First retry backoff; doubles up to --max-backoff.
    #[arg(long, default_value = "5ms", value_parser = humantime::parse_duration)]
    retry_backoff: Duration,
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    max_backoff: Duration,
    /// Timeout of one export call.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// count_sink stats base URL, e.g. http://127.0.0.1:24399 (loopback only).
    #[arg(long)]
    sink_stats: Option<String>,
    /// Longest wait, after sending, for the sink to receive every accepted span.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Stop waiting for the sink when its count has not moved for this long.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Give every send its own trace ids (the pre-encoded requests repeat otherwise), so a
    /// failure side sees each failed run once. Costs one copy of the request per send.
    #[arg(long)]
    unique_traces: bool,
    /// Every Nth send (0 = never) is a "novel" request: its agents and services get a name
    /// never sent before, so its failed runs have new fingerprints (new issues, new dispatches).
    #[arg(long, default_value_t = 0)]
    novel_every: u64,
    /// Name printed in the RESULT line.
    #[arg(long, default_value = "run")]
    label: String,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

/// One pre-encoded request.
struct Prepared {
    body: Bytes,
    spans: u64,
    /// Agent runs in it that fail.
    failing: u64,
    /// Where each span's trace id starts in `body`.
    trace_ids: Vec<usize>,
    /// Where each `NOVEL_MARK` starts in `body` (novel requests only).
    novel_marks: Vec<usize>,
}

/// The agent and service name of a novel request, its `NOVEL_MARK` replaced per send.
const NOVEL_NAME: &str = "soak-novel-@@@@@@@@";
/// The part of `NOVEL_NAME` each novel send stamps with its own letters.
const NOVEL_MARK: &[u8] = b"@@@@@@@@";

/// Offsets of every span's trace id (Span field 1) in an encoded trace request.
fn trace_id_offsets(buf: &[u8]) -> anyhow::Result<Vec<usize>> {
    let mut out = Vec::new();
    let nested = |range: std::ops::Range<usize>, number: u32| {
        Fields::new(buf, range).filter_map(move |f| match f {
            Ok(f) if f.number == number => Some(expect_len(&f)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
    };
    for rs in nested(0..buf.len(), 1) {
        for ss in nested(rs?, 2) {
            for span in nested(ss?, 2) {
                for id in nested(span?, 1) {
                    out.push(id?.start);
                }
            }
        }
    }
    Ok(out)
}

/// `p`'s body with its trace ids salted by `k` (XOR into their first 8 bytes).
fn salted(p: &Prepared, k: u64) -> Bytes {
    let mut v = p.body.to_vec();
    salt_in_place(p, &mut v, k);
    Bytes::from(v)
}

fn salt_in_place(p: &Prepared, v: &mut [u8], k: u64) {
    let salt = k.to_le_bytes();
    for &off in &p.trace_ids {
        for (b, s) in v[off..off + 8].iter_mut().zip(salt) {
            *b ^= s;
        }
    }
}

/// A novel request `p` for send `k`: its names stamped with `n` (the novel request's number, in
/// letters, so the fingerprint's message masking never touches it) and its trace ids salted.
fn novel(p: &Prepared, k: u64, n: u64) -> Bytes {
    let mut v = p.body.to_vec();
    let mut stamp = [b'a'; NOVEL_MARK.len()];
    let mut rest = n;
    for c in stamp.iter_mut().rev() {
        *c = b'a' + (rest % 26) as u8;
        rest /= 26;
    }
    for &off in &p.novel_marks {
        v[off..off + stamp.len()].copy_from_slice(&stamp);
    }
    salt_in_place(p, &mut v, k);
    Bytes::from(v)
}

/// Renames the agents and services of `req` to `NOVEL_NAME`.
fn rename_to_novel(req: &mut ExportTraceServiceRequest) {
    let rename = |attrs: &mut Vec<KeyValue>| {
        for kv in attrs.iter_mut() {
            if kv.key == "service.name" || kv.key == "gen_ai.agent.name" {
                kv.value = Some(AnyValue {
                    value: Some(any_value::Value::StringValue(NOVEL_NAME.into())),
                });
            }
        }
    };
    for rs in &mut req.resource_spans {
        if let Some(r) = rs.resource.as_mut() {
            rename(&mut r.attributes);
        }
        for ss in &mut rs.scope_spans {
            for span in &mut ss.spans {
                rename(&mut span.attributes);
            }
        }
    }
}

#[derive(Default)]
struct Totals {
    ok_requests: AtomicU64,
    ok_spans: AtomicU64,
    /// Failing agent runs in accepted requests.
    ok_failing: AtomicU64,
    /// Novel requests accepted.
    ok_novel: AtomicU64,
    /// Answers (attempts) with RESOURCE_EXHAUSTED.
    exhausted: AtomicU64,
    /// Answers (attempts) with UNAVAILABLE, or no connection.
    unavailable: AtomicU64,
    /// Other errors (not retried).
    other: AtomicU64,
    retries: AtomicU64,
    /// Requests given up after --max-retries or at the end of --duration.
    gave_up: AtomicU64,
    gave_up_spans: AtomicU64,
    gave_up_failing: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Totals {
    fn note_error(&self, msg: String) {
        if let Ok(mut e) = self.first_error.lock() {
            e.get_or_insert(msg);
        }
    }
}

#[derive(serde::Deserialize, Debug, Default, Clone)]
struct SinkStats {
    requests: u64,
    spans: u64,
    tagged: u64,
    last_unix_ns: u64,
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The pool of pre-encoded requests, and (with `--novel-every`) the pool of novel ones.
fn prepare(args: &Args) -> anyhow::Result<(Vec<Prepared>, Vec<Prepared>)> {
    let mut fleet = Fleet::new(args.seed, args.failure_percent).with_steps(args.steps);
    let traces = (args.spans_per_request / fleet.spans_per_run()).max(1);
    // The pool is replayed round-robin, so its share of failing runs is the load's: exact.
    let distinct = args.distinct.max(1);
    fleet = fleet.with_exact_failure_share((distinct * traces) as u64);
    let pool = (0..distinct)
        .map(|_| encode(fleet.request(traces), false))
        .collect::<anyhow::Result<_>>()?;
    let novel = if args.novel_every > 0 {
        let mut fleet = Fleet::new(
            args.seed.wrapping_add(0x006e_6f76_656c),
            args.failure_percent,
        )
        .with_steps(args.steps)
        .with_exact_failure_share(4 * traces as u64);
        (0..4)
            .map(|_| encode(fleet.request(traces), true))
            .collect::<anyhow::Result<_>>()?
    } else {
        Vec::new()
    };
    Ok((pool, novel))
}

fn encode(
    (mut req, generated): (ExportTraceServiceRequest, Vec<GeneratedTrace>),
    novel: bool,
) -> anyhow::Result<Prepared> {
    if novel {
        rename_to_novel(&mut req);
    }
    let body = Bytes::from(req.encode_to_vec());
    let spans = count_nested(&body, &[1, 2, 2]).context("counting spans of a request")?;
    let trace_ids = trace_id_offsets(&body).context("finding trace ids")?;
    let novel_marks = if novel {
        memchr::memmem::find_iter(&body, NOVEL_MARK).collect()
    } else {
        Vec::new()
    };
    let failing = generated
        .iter()
        .filter(|t| t.scenario != Scenario::Ok)
        .count() as u64;
    Ok(Prepared {
        body,
        spans,
        failing,
        trace_ids,
        novel_marks,
    })
}

async fn connect(endpoint: SocketAddr, timeout: Duration) -> anyhow::Result<Channel> {
    let url = format!("http://{endpoint}");
    let ep = Endpoint::from_shared(url.clone())
        .with_context(|| format!("bad endpoint {url}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2));
    let give_up = Instant::now() + timeout;
    loop {
        match ep.connect().await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() < give_up => {
                debug_log(&format!(
                    "connect {url}: {:#}; retrying",
                    anyhow::Error::new(e)
                ));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("cannot connect to {url} within {timeout:?}")))
            }
        }
    }
}

fn debug_log(msg: &str) {
    if std::env::var_os("LOADGEN_DEBUG").is_some() {
        eprintln!("loadgen: {msg}");
    }
}

struct Shared {
    args: Args,
    pool: Vec<Prepared>,
    novel: Vec<Prepared>,
    channels: Vec<Channel>,
    totals: Totals,
    next: AtomicU64,
    start: Instant,
    deadline: Instant,
}

async fn send_once(channel: &Channel, body: Bytes, timeout: Duration) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connection not ready: {e}")))?;
    let mut req = tonic::Request::new(body);
    req.set_timeout(timeout);
    let path = http::uri::PathAndQuery::from_static(TRACE_EXPORT);
    let call = grpc.unary::<Bytes, Bytes, _>(req, path, RawCodec);
    match tokio::time::timeout(timeout, call).await {
        Ok(r) => r.map(|_| ()),
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "no answer within {timeout:?}"
        ))),
    }
}

async fn worker(s: Arc<Shared>, id: usize) {
    let channel = &s.channels[id % s.channels.len()];
    let a = &s.args;
    let t = &s.totals;
    loop {
        let k = s.next.fetch_add(1, Ordering::AcqRel);
        if a.requests > 0 && k >= a.requests {
            return;
        }
        if a.rate > 0.0 {
            let at = s.start + Duration::from_secs_f64(k as f64 / a.rate);
            if at >= s.deadline {
                return;
            }
            tokio::time::sleep_until(at.into()).await;
        }
        if Instant::now() >= s.deadline {
            return;
        }
        let is_novel = a.novel_every > 0 && k % a.novel_every == a.novel_every - 1;
        let (p, body) = if is_novel {
            let n = k / a.novel_every;
            let p = &s.novel[(n as usize) % s.novel.len()];
            (p, novel(p, k, n))
        } else {
            let p = &s.pool[(k as usize) % s.pool.len()];
            let body = if a.unique_traces {
                salted(p, k)
            } else {
                p.body.clone()
            };
            (p, body)
        };
        let mut backoff = a.retry_backoff;
        let mut attempt = 0u32;
        loop {
            let status = match send_once(channel, body.clone(), a.timeout).await {
                Ok(()) => {
                    t.ok_requests.fetch_add(1, Ordering::AcqRel);
                    t.ok_spans.fetch_add(p.spans, Ordering::AcqRel);
                    t.ok_failing.fetch_add(p.failing, Ordering::AcqRel);
                    if is_novel {
                        t.ok_novel.fetch_add(1, Ordering::AcqRel);
                    }
                    break;
                }
                Err(status) => status,
            };
            match status.code() {
                Code::ResourceExhausted => t.exhausted.fetch_add(1, Ordering::AcqRel),
                Code::Unavailable => t.unavailable.fetch_add(1, Ordering::AcqRel),
                other => {
                    t.other.fetch_add(1, Ordering::AcqRel);
                    t.note_error(format!("{other:?}: {}", status.message()));
                    t.gave_up_spans.fetch_add(p.spans, Ordering::AcqRel);
                    t.gave_up_failing.fetch_add(p.failing, Ordering::AcqRel);
                    break;
                }
            };
            if attempt >= a.max_retries || Instant::now() + backoff >= s.deadline {
                t.gave_up.fetch_add(1, Ordering::AcqRel);
                t.gave_up_spans.fetch_add(p.spans, Ordering::AcqRel);
                t.gave_up_failing.fetch_add(p.failing, Ordering::AcqRel);
                break;
            }
            t.retries.fetch_add(1, Ordering::AcqRel);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(a.max_backoff);
            attempt += 1;
        }
    }
}

async fn progress(s: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.tick().await;
    loop {
        tick.tick().await;
        let t = &s.totals;
        eprintln!(
            "loadgen[{}]: {:.0}s {} requests ok ({} spans), {} RESOURCE_EXHAUSTED, {} UNAVAILABLE, {} other",
            s.args.label,
            s.start.elapsed().as_secs_f64(),
            t.ok_requests.load(Ordering::Acquire),
            t.ok_spans.load(Ordering::Acquire),
            t.exhausted.load(Ordering::Acquire),
            t.unavailable.load(Ordering::Acquire),
            t.other.load(Ordering::Acquire),
        );
    }
}

/// The sink's stats endpoint, checked to be on loopback.
fn sink_base(url: &str) -> anyhow::Result<String> {
    let parsed: http::Uri = url
        .parse()
        .with_context(|| format!("--sink-stats {url:?} is not a URL"))?;
    let host = parsed.host().unwrap_or("");
    let loopback = host == "localhost"
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    anyhow::ensure!(loopback, "--sink-stats {url}: loopback addresses only");
    Ok(url.trim_end_matches('/').to_string())
}

async fn sink_stats(client: &reqwest::Client, base: &str) -> anyhow::Result<SinkStats> {
    let text = client
        .get(format!("{base}/stats"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("GET {base}/stats"))?
        .text()
        .await
        .with_context(|| format!("reading {base}/stats"))?;
    serde_json::from_str(&text).with_context(|| format!("{base}/stats answered {text:?}"))
}

/// Waits until the sink holds `expected` spans, or its count stops moving, or the timeout.
async fn drain(
    client: &reqwest::Client,
    base: &str,
    expected: u64,
    settle: Duration,
    timeout: Duration,
) -> anyhow::Result<(SinkStats, bool)> {
    let give_up = Instant::now() + timeout;
    let mut last = sink_stats(client, base).await?;
    let mut moved = Instant::now();
    loop {
        if last.spans >= expected {
            return Ok((last, true));
        }
        if moved.elapsed() >= settle || Instant::now() >= give_up {
            return Ok((last, false));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = sink_stats(client, base).await?;
        if now.spans != last.spans {
            moved = Instant::now();
        }
        last = now;
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.endpoint.ip().is_loopback(),
        "--endpoint {}: loopback addresses only",
        args.endpoint
    );
    anyhow::ensure!(
        args.requests > 0 || !args.duration.is_zero(),
        "give --requests or --duration"
    );
    anyhow::ensure!(
        args.concurrency > 0 && args.connections > 0,
        "--concurrency and --connections must be at least 1"
    );
    let sink = args.sink_stats.as_deref().map(sink_base).transpose()?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .context("building the HTTP client for --sink-stats")?;

    let (pool, novel) = prepare(&args)?;
    let pool_spans: u64 = pool.iter().map(|p| p.spans).sum();
    let pool_bytes: usize = pool.iter().map(|p| p.body.len()).sum();
    let pool_failing: u64 = pool.iter().map(|p| p.failing).sum();
    eprintln!(
        "loadgen[{}]: {} distinct requests, {:.0} spans and {:.0} KiB each on average, {pool_failing} failing runs in all, {} in flight over {} connections to {}",
        args.label,
        pool.len(),
        pool_spans as f64 / pool.len() as f64,
        pool_bytes as f64 / pool.len() as f64 / 1024.0,
        args.concurrency,
        args.connections,
        args.endpoint
    );

    let mut channels = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        channels.push(connect(args.endpoint, Duration::from_secs(15)).await?);
    }
    if let Some(base) = &sink {
        http.post(format!("{base}/reset"))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .with_context(|| format!("POST {base}/reset (is count_sink running?)"))?;
    }

    let start_unix_ns = unix_ns();
    let start = Instant::now();
    let deadline = start
        + if args.duration.is_zero() {
            Duration::from_secs(24 * 3600)
        } else {
            args.duration
        };
    let quiet = args.quiet;
    let concurrency = args.concurrency;
    let shared = Arc::new(Shared {
        args,
        pool,
        novel,
        channels,
        totals: Totals::default(),
        next: AtomicU64::new(0),
        start,
        deadline,
    });
    let progress = (!quiet).then(|| tokio::spawn(progress(shared.clone())));
    let workers: Vec<_> = (0..concurrency)
        .map(|i| tokio::spawn(worker(shared.clone(), i)))
        .collect();
    for w in workers {
        w.await.context("a load worker panicked")?;
    }
    let send_secs = start.elapsed().as_secs_f64();
    if let Some(p) = progress {
        p.abort();
    }

    let s = &shared;
    let t = &s.totals;
    let ld = |a: &AtomicU64| a.load(Ordering::Acquire);
    let ok_requests = ld(&t.ok_requests);
    let ok_spans = ld(&t.ok_spans);
    eprintln!(
        "loadgen[{}]: sent {} requests ({} spans) in {:.2}s = {:.0} spans/s accepted; {} RESOURCE_EXHAUSTED, {} UNAVAILABLE, {} other errors, {} retries, {} given up",
        s.args.label,
        ok_requests,
        ok_spans,
        send_secs,
        ok_spans as f64 / send_secs,
        ld(&t.exhausted),
        ld(&t.unavailable),
        ld(&t.other),
        ld(&t.retries),
        ld(&t.gave_up),
    );
    if let Some(e) = t.first_error.lock().ok().and_then(|e| e.clone()) {
        eprintln!("loadgen[{}]: first non-retryable error: {e}", s.args.label);
    }

    let mut result = format!(
        "RESULT label={} requests_ok={} spans_ok={} resource_exhausted={} unavailable={} other_errors={} retries={} gave_up={} send_secs={:.3} accepted_spans_per_sec={:.0} failing_runs_ok={} novel_requests_ok={} gave_up_spans={} gave_up_failing_runs={}",
        s.args.label,
        ok_requests,
        ok_spans,
        ld(&t.exhausted),
        ld(&t.unavailable),
        ld(&t.other),
        ld(&t.retries),
        ld(&t.gave_up),
        send_secs,
        ok_spans as f64 / send_secs,
        ld(&t.ok_failing),
        ld(&t.ok_novel),
        ld(&t.gave_up_spans),
        ld(&t.gave_up_failing),
    );
    if let Some(base) = &sink {
        let (st, complete) =
            drain(&http, base, ok_spans, s.args.settle, s.args.drain_timeout).await?;
        let secs = st.last_unix_ns.saturating_sub(start_unix_ns) as f64 / 1e9;
        let rate = if secs > 0.0 {
            st.spans as f64 / secs
        } else {
            0.0
        };
        eprintln!(
            "loadgen[{}]: sink got {} of {} accepted spans ({} tagged, {} requests); last arrival {:.2}s after load start = {:.0} spans/s delivered{}",
            s.args.label,
            st.spans,
            ok_spans,
            st.tagged,
            st.requests,
            secs,
            rate,
            if complete { "" } else { " (INCOMPLETE: sink stopped short)" }
        );
        result.push_str(&format!(
            " sink_spans={} sink_tagged={} sink_requests={} delivered_secs={:.3} delivered_spans_per_sec={:.0} complete={}",
            st.spans, st.tagged, st.requests, secs, rate, complete
        ));
    }
    println!("{result}");
    Ok(())
}
