//! Arbitrary bytes as a persistent export queue left on disk (one segment file and its ack
//! file): opening it recovers, cuts or skips whatever is damaged, and every request it hands out
//! is one that was framed and checksummed.

#![no_main]

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use triage_loop::admin::metrics::Metrics;
use triage_loop::otlp::disk_queue::DiskQueue;

fuzz_target!(|data: &[u8]| {
    let Some((split, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let split = (u16::from_le_bytes(*split) as usize).min(rest.len());
    let (segment, acks) = rest.split_at(split);
    let root = std::env::temp_dir().join(format!("triage-fuzz-disk-queue-{}", std::process::id()));
    let dir = root.join("exporter_otlp");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("00000000000000000001.seg"), segment).expect("write segment");
    std::fs::write(dir.join("00000000000000000001.ack"), acks).expect("write acks");
    static METRICS: OnceLock<Arc<Metrics>> = OnceLock::new();
    let metrics = METRICS.get_or_init(|| Arc::new(Metrics::new())).clone();
    let Ok((q, recovered)) = DiskQueue::open(&root, false, 1000, 1 << 30, metrics) else {
        return;
    };
    assert_eq!(q.len(), recovered.requests);
    // Drain what is ready without a runtime: `next` is pending only when nothing is left.
    let mut cx = Context::from_waker(Waker::noop());
    let mut handed_out = 0;
    loop {
        let mut next = Box::pin(q.next());
        match next.as_mut().poll(&mut cx) {
            Poll::Ready(Some((entry, body))) => {
                assert!(body.len() <= segment.len());
                q.finish(&entry);
                handed_out += 1;
            }
            Poll::Ready(None) | Poll::Pending => break,
        }
    }
    assert!(handed_out <= recovered.requests);
    assert!(q.is_empty());
});
