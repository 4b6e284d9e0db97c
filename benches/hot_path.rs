//! Criterion benches of the hot path (`TraceProcessor::process`) and of a prost round trip.
//!
//! Per-span cost with and without a failure signal, a whole 512-span request at 5% failing runs
//! (with and without the failure side fed), and, to compare, what a collector that decodes and
//! re-encodes with prost pays for that request.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use triage_loop::admin::metrics::Metrics;
use triage_loop::processor::TraceProcessor;
use triage_loop::synth::{self, Fleet};
use triage_loop::{clock, config, failure};

/// Spans per request in the whole-request benches (an SDK batch of agent runs).
const REQUEST_SPANS: usize = 512;
/// Agent runs that fail, in percent, in the whole-request benches.
const FAILURE_PERCENT: u64 = 5;

fn processor() -> TraceProcessor {
    let mut loaded = config::load_default();
    TraceProcessor::new(
        loaded.take_classifier(),
        Arc::new(Metrics::new()),
        true,
        None,
    )
}

/// A processor whose tap feeds a running failure side (assembler task and a drained output),
/// with the runtime that runs it.
fn processor_with_failure_side() -> (TraceProcessor, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut loaded = config::load_default();
    let metrics = Arc::new(Metrics::new());
    let (tap, mut out) = rt.block_on(async {
        // With the stop sender dropped, the task runs until the tap is dropped.
        let (_, stop_rx) = tokio::sync::watch::channel(false);
        let cfg = &loaded.config.processors.failure_triage;
        let (tap, out, _task) = failure::start(cfg, clock::system(), metrics.clone(), stop_rx);
        (tap, out)
    });
    rt.spawn(async move { while out.recv().await.is_some() {} });
    let p = TraceProcessor::new(loaded.take_classifier(), metrics, true, Some(tap));
    (p, rt)
}

fn span_count(req: &ExportTraceServiceRequest) -> usize {
    req.resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum()
}

/// A request of whole agent runs with at least `spans` spans (runs have 4 or 5 spans).
fn fleet_request(seed: u64, failure_percent: u64, spans: usize) -> ExportTraceServiceRequest {
    let mut fleet = Fleet::new(seed, failure_percent);
    let mut traces = spans / 4;
    loop {
        let (req, _) = fleet.request(traces);
        if span_count(&req) >= spans {
            return req;
        }
        traces += 1;
    }
}

/// A request in which every span carries a failure signal: failing runs only, with the spans
/// the classifier finds nothing on removed.
fn all_signal_request(p: &TraceProcessor, spans: usize) -> ExportTraceServiceRequest {
    let mut req = fleet_request(7, 100, spans * 3);
    let mut kept = 0;
    for rs in &mut req.resource_spans {
        for ss in &mut rs.scope_spans {
            ss.spans.retain(|s| {
                let keep = kept < spans && p.classifier().classify(s, None, None).is_some();
                kept += usize::from(keep);
                keep
            });
        }
    }
    req
}

fn short(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
}

fn per_span(c: &mut Criterion) {
    let p = processor();
    let ok = fleet_request(1, 0, REQUEST_SPANS);
    let ok_spans = span_count(&ok) as u64;
    let ok = Bytes::from(ok.encode_to_vec());
    let failing = all_signal_request(&p, REQUEST_SPANS);
    let failing_spans = span_count(&failing) as u64;
    let failing = Bytes::from(failing.encode_to_vec());
    // Sanity: the two requests are what their names say.
    let r = p.process(ok.clone()).expect("the all-OK request scans");
    assert_eq!(
        r.tagged, 0,
        "the all-OK request must carry no failure signal"
    );
    let r = p
        .process(failing.clone())
        .expect("the failing request scans");
    assert_eq!(
        r.tagged, failing_spans,
        "every span of the failing request must be tagged"
    );

    let mut group = c.benchmark_group("per_span");
    short(&mut group);
    group.throughput(Throughput::Elements(ok_spans));
    group.bench_function("no_signal", |b| {
        b.iter(|| black_box(p.process(black_box(ok.clone()))))
    });
    group.throughput(Throughput::Elements(failing_spans));
    group.bench_function("with_signal", |b| {
        b.iter(|| black_box(p.process(black_box(failing.clone()))))
    });
    group.finish();
}

fn whole_request(c: &mut Criterion) {
    let p = processor();
    let req = fleet_request(42, FAILURE_PERCENT, REQUEST_SPANS);
    let spans = span_count(&req) as u64;
    let body = Bytes::from(req.encode_to_vec());
    let r = p.process(body.clone()).expect("the request scans");
    eprintln!(
        "request_512: {spans} spans, {} bytes, {} tagged",
        body.len(),
        r.tagged
    );
    let triage =
        |b: &mut criterion::Bencher<'_>| b.iter(|| black_box(p.process(black_box(body.clone()))));
    let (with_side, _rt) = processor_with_failure_side();
    let triage_failure_side = |b: &mut criterion::Bencher<'_>| {
        b.iter(|| black_box(with_side.process(black_box(body.clone()))))
    };
    let prost_round_trip = |b: &mut criterion::Bencher<'_>| {
        b.iter(|| {
            let decoded = ExportTraceServiceRequest::decode(black_box(&body[..]))
                .expect("the request decodes");
            black_box(decoded.encode_to_vec())
        })
    };
    for (name, throughput) in [
        ("request_512_5pct", Throughput::Elements(spans)),
        (
            "request_512_5pct_bytes",
            Throughput::Bytes(body.len() as u64),
        ),
    ] {
        let mut group = c.benchmark_group(name);
        short(&mut group);
        group.throughput(throughput);
        group.bench_function("triage_process", triage);
        group.bench_function("triage_process_failure_side", triage_failure_side);
        group.bench_function("prost_decode_encode", prost_round_trip);
        group.finish();
    }
}

/// Signal detection, rules, fingerprint and decision of one span with a failure signal.
fn classify(c: &mut Criterion) {
    let p = processor();
    let classifier = p.classifier();
    let spans = synth::signal_spans(classifier, 256);
    let mut group = c.benchmark_group("classify");
    short(&mut group);
    group.throughput(Throughput::Elements(spans.len() as u64));
    group.bench_function("signal_span", |b| {
        b.iter(|| {
            for (span, resource, scope) in &spans {
                black_box(classifier.classify(black_box(span), resource.as_ref(), scope.as_ref()));
            }
        })
    });
    // Texts never seen before (the load's messages carry ids): each iteration takes the next
    // 256 spans of a pool of NOVEL_SPANS.
    let novel = synth::signal_spans(classifier, NOVEL_SPANS);
    let mut next = 0;
    group.bench_function("signal_span_novel", |b| {
        b.iter(|| {
            for _ in 0..spans.len() {
                let (span, resource, scope) = &novel[next % novel.len()];
                next += 1;
                black_box(classifier.classify(black_box(span), resource.as_ref(), scope.as_ref()));
            }
        })
    });
    // In place a failed run's spans are classified between requests of other spans, which
    // stream megabytes through the caches: each span here comes after EVICT_BYTES written, as
    // the first span after a request is. `evict_only` is that writing alone, to subtract.
    let mut evict = vec![0u8; EVICT_BYTES];
    group.bench_function("signal_span_cold", |b| {
        b.iter(|| {
            for (span, resource, scope) in &spans {
                stream_through(&mut evict);
                black_box(classifier.classify(black_box(span), resource.as_ref(), scope.as_ref()));
            }
        })
    });
    group.bench_function("evict_only", |b| {
        b.iter(|| {
            for _ in &spans {
                stream_through(&mut evict);
            }
        })
    });
    group.finish();
}

/// Bytes written between two spans in `signal_span_cold`: four times a core's L2.
const EVICT_BYTES: usize = 2 << 20;

/// Writes one byte of each cache line of `buf`, as streaming a request through does.
fn stream_through(buf: &mut [u8]) {
    for line in buf.chunks_mut(64) {
        line[0] = line[0].wrapping_add(1);
    }
    black_box(buf);
}

/// Signal spans in the pool `signal_span_novel` goes through.
const NOVEL_SPANS: usize = 50_000;

criterion_group!(benches, per_span, whole_request, classify);
criterion_main!(benches);
