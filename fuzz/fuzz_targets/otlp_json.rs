//! Arbitrary bytes as OTLP/JSON through the HTTP receiver's JSON decoding, then (traces) through
//! the hot path.

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use triage_loop::otlp::receiver_http::decode_json;
use triage_loop::otlp::SignalType;

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = decode_json(SignalType::Traces, data) {
        common::process_and_check(body);
    }
    let _ = decode_json(SignalType::Logs, data);
    let _ = decode_json(SignalType::Metrics, data);
});
