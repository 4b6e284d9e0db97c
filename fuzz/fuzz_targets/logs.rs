//! Arbitrary bytes as an OTLP `ExportLogsServiceRequest` through the logs path: the item count
//! the pass-through takes, then the failure signals read from log records.

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use triage_loop::failure::logs::signal_nodes;
use triage_loop::otlp::wire::count_nested;

fuzz_target!(|data: &[u8]| {
    if count_nested(data, &[1, 2, 2]).is_ok() {
        let _ = signal_nodes(data, common::hot_path().processor.classifier());
    }
});
