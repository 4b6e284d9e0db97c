//! Classifies 256 signal spans of 3-step agent runs ROUNDS times, each after 2 MiB of other
//! writes, as a span is classified in place; with a second argument, without those writes. Made
//! to run under callgrind's cache simulation (bench/README.md): the difference between the two
//! is what a cold classification misses, per function.
//!
//!     classify_cold [ROUNDS] [warm]
use std::hint::black_box;
use triage_loop::config;
use triage_loop::synth;

fn main() {
    let mut loaded = config::load_default();
    let classifier = loaded.take_classifier();
    let spans = synth::signal_spans(&classifier, 256);
    // Four times a core's L2 on this machine's EPYC.
    let mut evict = vec![0u8; 2 << 20];
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(4);
    let cold = std::env::args().nth(2).is_none();
    for _ in 0..rounds {
        for (span, resource, scope) in &spans {
            if cold {
                for line in evict.chunks_mut(64) {
                    line[0] = line[0].wrapping_add(1);
                }
                black_box(&mut evict);
            }
            black_box(classifier.classify(black_box(span), resource.as_ref(), scope.as_ref()));
        }
    }
}
