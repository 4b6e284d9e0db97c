//! What the fuzz targets share: the hot path built once from the embedded default config, with
//! the failure side running (as `serve` runs it), and the invariants of a processed request.

#![allow(dead_code)]

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use triage_loop::admin::metrics::Metrics;
use triage_loop::processor::TraceProcessor;
use triage_loop::{clock, config, failure};

/// The processor and the runtime its failure side runs on.
pub struct HotPath {
    pub processor: TraceProcessor,
    _rt: tokio::runtime::Runtime,
}

/// The hot path, built on first use.
pub fn hot_path() -> &'static HotPath {
    static HOT: OnceLock<HotPath> = OnceLock::new();
    HOT.get_or_init(|| {
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
        let processor = TraceProcessor::new(loaded.take_classifier(), metrics, true, Some(tap));
        HotPath { processor, _rt: rt }
    })
}

/// Spans in a decoded request.
pub fn span_count(req: &ExportTraceServiceRequest) -> usize {
    req.resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum()
}

/// Runs `body` through the processor as the receivers do and checks what comes out: never a
/// panic; when prost accepts the input and the processor accepts it too, the output decodes
/// and holds the input's spans minus the rejected ones.
pub fn process_and_check(body: Bytes) {
    let input = ExportTraceServiceRequest::decode(&body[..]);
    let Ok(p) = hot_path().processor.process(body) else {
        return;
    };
    let Ok(input) = input else {
        // Spans are not decoded on the hot path unless flagged, so a request prost refuses
        // (a wrong wire type deep in a span, say) may be forwarded as it came.
        return;
    };
    let out = ExportTraceServiceRequest::decode(&p.body.to_bytes()[..])
        .expect("the processed request decodes when its input did");
    assert_eq!(
        span_count(&out) as u64,
        span_count(&input) as u64 - p.rejected,
        "spans out = spans in - rejected"
    );
    assert_eq!(p.spans, span_count(&out) as u64, "Processed::spans");
}
