//! Arbitrary bytes as one `Span`, decoded by the hot path's reusing decoder
//! (`otlp::span_scratch::SpanScratch`) into the memory left by the inputs before, and by prost.

#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use triage_loop::otlp::span_scratch::SpanScratch;

thread_local! {
    /// Kept across inputs, so each is decoded into whatever the ones before left.
    static SCRATCH: RefCell<SpanScratch> = RefCell::default();
}

fuzz_target!(|data: &[u8]| {
    let want = Span::decode(data);
    SCRATCH.with_borrow_mut(|scratch| match (scratch.decode(data), want) {
        (Ok(got), Ok(want)) => assert_eq!(got, &want, "the decoders disagree"),
        (Err(_), Err(_)) => {}
        (got, want) => panic!("one decoder failed: scratch {got:?}, prost {want:?}"),
    });
});
