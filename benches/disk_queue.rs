//! Criterion benches of the persistent export queue: one request through it (append to the
//! segment, read back and checksummed, finished with its ack line), at the size of the load
//! script's requests (~330 KiB, 512 spans) and of a small SDK batch (16 KiB), fsync off.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use triage_loop::admin::metrics::Metrics;
use triage_loop::otlp::disk_queue::DiskQueue;
use triage_loop::otlp::SignalType;

fn through_the_queue(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("disk_queue");
    group.measurement_time(Duration::from_secs(5));
    for size in [16 * 1024, 330 * 1024] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (q, _) = DiskQueue::open(dir.path(), false, 1000, 1 << 30, Arc::new(Metrics::new()))
            .expect("queue opens");
        let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(
            BenchmarkId::new("push_next_finish", format!("{}KiB", size / 1024)),
            &body,
            |b, body| {
                b.iter(|| {
                    q.push(SignalType::Traces, body, 512).expect("room");
                    let (entry, read) = rt.block_on(q.next()).expect("queued");
                    black_box(read);
                    q.finish(&entry);
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, through_the_queue);
criterion_main!(benches);
