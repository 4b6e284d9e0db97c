//! The hot path's end of the failure side: never waits, sends one bounded batch per request,
//! and remembers which traces carry a signal so their other spans are sent as skeletons.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc::{self, error::TrySendError};

use crate::admin::metrics::Metrics;
use crate::failure::{parent_id, Batch, Node, Shape};
use crate::otlp::splice::SpanAt;
use crate::otlp::wire::{expect_len, Fields, WireError, WT_I64, WT_VARINT};

/// Most (service, version) pairs remembered; past it the memory starts over (a pair may then
/// be reported again).
const MAX_VERSIONS: usize = 10_000;
/// A marked trace is forgotten this many trace windows after it was marked (2..3 windows).
const MARK_EPOCHS: i64 = 2;

/// Cheap to clone; given to the hot path (trace processor and the logs path).
#[derive(Clone)]
pub struct FailureTap {
    tx: mpsc::Sender<Batch>,
    shared: Arc<Shared>,
}

/// State shared by every tap and the assembler task (which moves the epoch and expires marks).
pub(crate) struct Shared {
    metrics: Arc<Metrics>,
    marked: Mutex<Marked>,
    marked_len: AtomicUsize,
    /// `now_ms / trace_window_ms`, moved by the assembler task.
    epoch: AtomicI64,
    window_ms: i64,
    versions: Mutex<HashSet<u64>>,
    last_version: AtomicU64,
}

/// Trace ids seen with a signal, in marking order, capped.
struct Marked {
    cap: usize,
    map: HashMap<[u8; 16], i64>,
    /// (trace id, epoch when marked); stale entries (re-marked later) are skipped on pop.
    order: VecDeque<([u8; 16], i64)>,
}

impl Marked {
    fn insert(&mut self, id: [u8; 16], epoch: i64) {
        if self.map.insert(id, epoch) == Some(epoch) {
            return;
        }
        self.order.push_back((id, epoch));
        while self.map.len() > self.cap {
            self.pop_front();
        }
        if self.order.len() > 2 * self.cap {
            let map = &self.map;
            self.order.retain(|(id, e)| map.get(id) == Some(e));
        }
    }

    fn pop_front(&mut self) {
        if let Some((id, e)) = self.order.pop_front() {
            if self.map.get(&id) == Some(&e) {
                self.map.remove(&id);
            }
        }
    }

    fn expire(&mut self, epoch: i64) {
        while self
            .order
            .front()
            .is_some_and(|(_, e)| epoch - e > MARK_EPOCHS)
        {
            self.pop_front();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn new(metrics: Arc<Metrics>, max_traces: usize, window_ms: i64) -> Self {
        Shared {
            metrics,
            marked: Mutex::new(Marked {
                cap: max_traces,
                map: HashMap::new(),
                order: VecDeque::new(),
            }),
            marked_len: AtomicUsize::new(0),
            epoch: AtomicI64::new(0),
            window_ms: window_ms.max(1),
            versions: Mutex::new(HashSet::new()),
            last_version: AtomicU64::new(0),
        }
    }

    /// Moves the epoch to `now_ms` and forgets marks that are too old.
    pub(crate) fn advance(&self, now_ms: i64) {
        let epoch = now_ms / self.window_ms;
        self.epoch.store(epoch, Ordering::Relaxed);
        let mut m = lock(&self.marked);
        m.expire(epoch);
        self.marked_len.store(m.map.len(), Ordering::Relaxed);
    }
}

impl FailureTap {
    pub(crate) fn new(tx: mpsc::Sender<Batch>, shared: Arc<Shared>) -> Self {
        FailureTap { tx, shared }
    }

    /// Batches sent and not yet taken by the assembler.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Whether any trace is marked (one atomic load).
    #[inline]
    pub fn has_marked(&self) -> bool {
        self.shared.marked_len.load(Ordering::Relaxed) > 0
    }

    /// Whether `trace_id` is marked.
    pub fn is_marked(&self, trace_id: &[u8; 16]) -> bool {
        self.has_marked() && lock(&self.shared.marked).map.contains_key(trace_id)
    }

    /// Marks these trace ids (their traces carry a signal).
    pub fn mark<'a>(&self, ids: impl IntoIterator<Item = &'a [u8; 16]>) {
        let epoch = self.shared.epoch.load(Ordering::Relaxed);
        let mut m = lock(&self.shared.marked);
        let mut last = None;
        for id in ids {
            if last != Some(id) {
                m.insert(*id, epoch);
                last = Some(id);
            }
        }
        self.shared.marked_len.store(m.map.len(), Ordering::Relaxed);
    }

    /// Adds a skeleton node to `out` for every span of `index` in a marked trace, except those
    /// whose field starts at an offset in `skip` (ascending: they already have a full node).
    /// One lock and one lookup per run of identical trace ids.
    pub fn skeletons(&self, buf: &[u8], index: &[SpanAt], skip: &[usize], out: &mut Vec<Node>) {
        if !self.has_marked() || index.is_empty() {
            return;
        }
        let m = lock(&self.shared.marked);
        let mut run: Option<(&[u8], bool)> = None;
        let mut bad = 0u64;
        for at in index {
            let tid = at.trace_id(buf);
            let marked = match run {
                Some((t, marked)) if t == tid => marked,
                _ => {
                    let marked = <[u8; 16]>::try_from(tid).is_ok_and(|t| m.map.contains_key(&t));
                    run = Some((tid, marked));
                    marked
                }
            };
            if !marked || skip.binary_search(&at.field.start).is_ok() {
                continue;
            }
            match skeleton(buf, at) {
                Ok(node) => out.push(node),
                Err(_) => bad += 1,
            }
        }
        drop(m);
        if bad > 0 {
            self.shared.metrics.failure_side_dropped("malformed", bad);
        }
    }

    /// The (service.name, service.version) pairs of `resources` not seen before by this tap.
    pub fn new_versions(
        &self,
        buf: &[u8],
        resources: &[Option<Range<usize>>],
    ) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for r in resources.iter().flatten() {
            let Some((service, version)) = service_version(buf, r.clone()) else {
                continue;
            };
            let h = pair_hash(service, version);
            if self.shared.last_version.load(Ordering::Relaxed) == h {
                continue;
            }
            let mut seen = lock(&self.shared.versions);
            if seen.len() >= MAX_VERSIONS {
                seen.clear();
            }
            if seen.insert(h) {
                out.push((
                    String::from_utf8_lossy(service).into_owned(),
                    String::from_utf8_lossy(version).into_owned(),
                ));
            }
            drop(seen);
            self.shared.last_version.store(h, Ordering::Relaxed);
        }
        out
    }

    /// Sends one request's batch without waiting; when the queue is full the batch is dropped
    /// and counted, and its versions are forgotten so a later request reports them.
    pub fn send(&self, batch: Batch) {
        if batch.nodes.is_empty() && batch.versions.is_empty() {
            return;
        }
        let (reason, batch) = match self.tx.try_send(batch) {
            Ok(()) => return,
            Err(TrySendError::Full(b)) => ("queue_full", b),
            Err(TrySendError::Closed(b)) => ("closed", b),
        };
        if !batch.nodes.is_empty() {
            self.shared
                .metrics
                .failure_side_dropped(reason, batch.nodes.len() as u64);
        }
        if !batch.versions.is_empty() {
            let mut seen = lock(&self.shared.versions);
            for (s, v) in &batch.versions {
                seen.remove(&pair_hash(s.as_bytes(), v.as_bytes()));
            }
            self.shared.last_version.store(0, Ordering::Relaxed);
        }
    }
}

fn pair_hash(service: &[u8], version: &[u8]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(service);
    h.update(&[0x1f]);
    h.update(version);
    // 0 means "none" in `last_version`.
    h.digest().max(1)
}

/// `service.name` and `service.version` string values of an encoded `Resource`; `None` unless
/// a version is set (service defaults to "unknown"). Malformed input gives `None`.
pub fn service_version(buf: &[u8], resource: Range<usize>) -> Option<(&[u8], &[u8])> {
    let (mut service, mut version) = (None, None);
    for f in Fields::new(buf, resource) {
        let f = f.ok()?;
        if f.number != 1 {
            continue;
        }
        let (key, value) = key_string(buf, expect_len(&f).ok()?).ok()?;
        match key {
            b"service.name" => service = value,
            b"service.version" => version = value,
            _ => {}
        }
    }
    Some((service.unwrap_or(b"unknown"), version?))
}

/// A `KeyValue`'s key and, if it is a string, its value.
fn key_string(buf: &[u8], kv: Range<usize>) -> Result<(&[u8], Option<&[u8]>), WireError> {
    let (mut key, mut value): (&[u8], Option<&[u8]>) = (&[], None);
    for f in Fields::new(buf, kv) {
        let f = f?;
        match f.number {
            1 => key = &buf[expect_len(&f)?],
            2 => {
                for v in Fields::new(buf, expect_len(&f)?) {
                    let v = v?;
                    if v.number == 1 {
                        value = Some(&buf[expect_len(&v)?]);
                    }
                }
            }
            _ => {}
        }
    }
    Ok((key, value))
}

/// The skeleton of a span on the wire: ids, parent, kind and times.
pub fn skeleton(buf: &[u8], at: &SpanAt) -> Result<Node, WireError> {
    let mut node = Node {
        trace_id: [0; 16],
        span_id: [0; 8],
        shape: None,
        signal: None,
        agent: None,
    };
    let mut shape = Shape {
        parent: None,
        kind: 0,
        start_ns: 0,
        end_ns: 0,
    };
    for f in Fields::new(buf, at.field.value()) {
        let f = f?;
        match (f.number, f.wire_type) {
            (1, _) => copy_id(&mut node.trace_id, &buf[expect_len(&f)?]),
            (2, _) => copy_id(&mut node.span_id, &buf[expect_len(&f)?]),
            (4, _) => shape.parent = parent_id(&buf[expect_len(&f)?]),
            (6, WT_VARINT) => shape.kind = f.scalar as i32,
            (7, WT_I64) => shape.start_ns = f.scalar,
            (8, WT_I64) => shape.end_ns = f.scalar,
            (9, _) => {
                if let (b"gen_ai.agent.name", Some(v)) = key_string(buf, expect_len(&f)?)? {
                    node.agent = std::str::from_utf8(v).ok().map(Into::into);
                }
            }
            _ => {}
        }
    }
    node.shape = Some(shape);
    Ok(node)
}

fn copy_id(dst: &mut [u8], src: &[u8]) {
    if src.len() == dst.len() {
        dst.copy_from_slice(src);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::splice::{scan_with, ScanOptions};
    use crate::synth::Fleet;
    use prost::Message;

    fn tap(cap: usize, queue: usize) -> (FailureTap, mpsc::Receiver<Batch>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let shared = Arc::new(Shared::new(metrics.clone(), cap, 1_000));
        let (tx, rx) = mpsc::channel(queue);
        (FailureTap::new(tx, shared), rx, metrics)
    }

    #[test]
    fn marks_expire_after_two_to_three_windows_and_are_capped() {
        let (t, _rx, _) = tap(2, 4);
        assert!(!t.has_marked());
        t.shared.advance(10_000);
        t.mark([&[1; 16]]);
        t.shared.advance(12_999);
        assert!(t.is_marked(&[1; 16]));
        t.shared.advance(13_000);
        assert!(!t.is_marked(&[1; 16]));
        assert!(!t.has_marked());
        t.mark([&[1; 16], &[2; 16], &[3; 16]]);
        assert!(!t.is_marked(&[1; 16]));
        assert!(t.is_marked(&[2; 16]) && t.is_marked(&[3; 16]));
        // Re-marking refreshes: the re-marked one outlives the other.
        t.shared.advance(14_000);
        t.mark([&[2; 16]]);
        t.shared.advance(16_000);
        assert!(t.is_marked(&[2; 16]));
        assert!(!t.is_marked(&[3; 16]));
    }

    #[test]
    fn versions_once_and_again_after_a_dropped_batch() {
        let (t, mut rx, metrics) = tap(10, 1);
        let (req, _) = Fleet::new(1, 0).request(20);
        let buf = req.encode_to_vec();
        let opts = ScanOptions {
            index: false,
            resources: true,
        };
        let s = scan_with(&buf, opts).unwrap();
        let first = t.new_versions(&buf, &s.all_resources);
        assert!(!first.is_empty());
        assert!(first.iter().all(|(_, v)| v == "1.4.2"));
        assert!(t.new_versions(&buf, &s.all_resources).is_empty());
        // Fill the queue; the next batch is dropped, counted, and its versions forgotten.
        t.send(Batch {
            nodes: Vec::new(),
            versions: first.clone(),
        });
        let node = Node {
            trace_id: [1; 16],
            span_id: [1; 8],
            shape: None,
            signal: None,
            agent: None,
        };
        t.send(Batch {
            nodes: vec![node.clone(), node],
            versions: vec![first[0].clone()],
        });
        assert!(metrics
            .render()
            .contains(r#"triage_failure_side_dropped_total{reason="queue_full"} 2"#));
        assert_eq!(
            t.new_versions(&buf, &s.all_resources),
            vec![first[0].clone()]
        );
        assert_eq!(rx.try_recv().unwrap().versions, first);
    }

    #[test]
    fn skeletons_of_marked_traces_only() {
        let (t, _rx, _) = tap(10, 1);
        let (req, traces) = Fleet::new(2, 0).request(6);
        let buf = req.encode_to_vec();
        let opts = ScanOptions {
            index: true,
            resources: false,
        };
        let s = scan_with(&buf, opts).unwrap();
        assert_eq!(s.index.len() as u64, s.spans);
        let marked = &traces[2];
        t.mark([&marked.trace_id]);
        let skip = [s
            .index
            .iter()
            .find(|at| at.trace_id(&buf) == marked.trace_id)
            .unwrap()
            .field
            .start];
        let mut out = Vec::new();
        t.skeletons(&buf, &s.index, &skip, &mut out);
        assert_eq!(out.len(), marked.spans.len() - 1);
        for n in &out {
            let span = marked
                .spans
                .iter()
                .find(|sp| sp.span_id == n.span_id)
                .unwrap();
            assert_eq!(n.trace_id, marked.trace_id);
            let shape = n.shape.unwrap();
            assert_eq!(shape.parent, parent_id(&span.parent_span_id));
            assert_eq!(shape.start_ns, span.start_time_unix_nano);
            assert_eq!(shape.end_ns, span.end_time_unix_nano);
            assert_eq!(shape.kind, span.kind);
            assert!(n.signal.is_none());
        }
    }
}
