//! Arbitrary bytes as an OTLP `ExportTraceServiceRequest` through the hot path, as the gRPC
//! receiver hands them over (`TraceProcessor::process`).

#![no_main]

mod common;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    common::process_and_check(Bytes::copy_from_slice(data));
});
