//! The hot path's end of the failure side: never waits, sends one bounded batch per request,
//! and remembers which traces carry a signal so their other spans are sent as skeletons.
//! The channel is capped in batches and in nodes in flight; past either, a batch is dropped
//! and counted ("queue_full").

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::mpsc::{self, error::TrySendError};

use crate::admin::metrics::Metrics;
use crate::failure::{drop_reason, parent_id, Batch, IdHash, Node, Shape, MAX_NAME_BYTES};
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
    /// Read on every request of the hot path, written only when a request brings a signal.
    marked: RwLock<Marked>,
    marked_len: AtomicUsize,
    /// Nodes sent and not yet taken by the assembler, and their cap.
    in_flight: AtomicUsize,
    max_in_flight: usize,
    /// `now_ms / trace_window_ms`, moved by the assembler task.
    epoch: AtomicI64,
    window_ms: i64,
    versions: Mutex<HashSet<u64>>,
    last_version: AtomicU64,
    /// Hash of the bytes of the resource `new_versions` looked at last (0: none): an identical
    /// resource (the usual case: one SDK's batches) is not parsed again.
    last_resource: AtomicU64,
}

/// Trace ids seen with a signal, in marking order, capped.
struct Marked {
    cap: usize,
    map: HashMap<[u8; 16], i64, IdHash>,
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

fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn new(
        metrics: Arc<Metrics>,
        max_traces: usize,
        window_ms: i64,
        max_in_flight: usize,
    ) -> Self {
        Shared {
            metrics,
            marked: RwLock::new(Marked {
                cap: max_traces,
                map: HashMap::default(),
                order: VecDeque::new(),
            }),
            marked_len: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: max_in_flight.max(1),
            epoch: AtomicI64::new(0),
            window_ms: window_ms.max(1),
            versions: Mutex::new(HashSet::new()),
            last_version: AtomicU64::new(0),
            last_resource: AtomicU64::new(0),
        }
    }

    /// The assembler took a batch of `nodes` nodes off the channel.
    pub(crate) fn taken(&self, nodes: usize) {
        self.in_flight.fetch_sub(nodes, Ordering::Relaxed);
    }

    /// Moves the epoch to `now_ms` and forgets marks that are too old.
    pub(crate) fn advance(&self, now_ms: i64) {
        let epoch = now_ms / self.window_ms;
        self.epoch.store(epoch, Ordering::Relaxed);
        let mut m = write(&self.marked);
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

    /// Nodes sent and not yet taken by the assembler.
    pub fn queued_nodes(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// Whether any trace is marked (one atomic load).
    #[inline]
    pub fn has_marked(&self) -> bool {
        self.shared.marked_len.load(Ordering::Relaxed) > 0
    }

    /// Whether `trace_id` is marked.
    pub fn is_marked(&self, trace_id: &[u8; 16]) -> bool {
        self.has_marked() && read(&self.shared.marked).map.contains_key(trace_id)
    }

    /// Marks these trace ids (their traces carry a signal). When all are marked in this epoch
    /// already (a trace's later requests), only a shared lock is taken.
    pub fn mark<'a, I>(&self, ids: I)
    where
        I: IntoIterator<Item = &'a [u8; 16]>,
        I::IntoIter: Clone,
    {
        let ids = ids.into_iter();
        let epoch = self.shared.epoch.load(Ordering::Relaxed);
        if self.has_marked() {
            let m = read(&self.shared.marked);
            if ids.clone().all(|id| m.map.get(id) == Some(&epoch)) {
                return;
            }
        }
        let mut m = write(&self.shared.marked);
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
    /// One shared (read) lock, and one lookup per run of identical trace ids (`SpanAt::same_trace`,
    /// so a span inside a run is not read at all unless its trace is marked).
    pub fn skeletons(&self, buf: &[u8], index: &[SpanAt], skip: &[usize], out: &mut Vec<Node>) {
        if !self.has_marked() || index.is_empty() {
            return;
        }
        let m = read(&self.shared.marked);
        let mut run: Option<bool> = None;
        let mut bad = 0u64;
        for at in index {
            let marked = match run {
                Some(marked) if at.same_trace => marked,
                _ => {
                    let tid = at.trace_id(buf);
                    let marked = <[u8; 16]>::try_from(tid).is_ok_and(|t| m.map.contains_key(&t));
                    run = Some(marked);
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
            self.shared
                .metrics
                .failure_side_dropped(drop_reason::MALFORMED, bad);
        }
    }

    /// The (service.name, service.version) pairs of `resources` not seen before by this tap.
    /// A resource whose bytes equal the last one looked at is skipped without parsing.
    pub fn new_versions(
        &self,
        buf: &[u8],
        resources: &[Option<Range<usize>>],
    ) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for r in resources.iter().flatten() {
            let Some(bytes) = buf.get(r.clone()) else {
                continue;
            };
            // 0 means "none" in `last_resource`.
            let rh = xxhash_rust::xxh3::xxh3_64(bytes).max(1);
            if self.shared.last_resource.load(Ordering::Relaxed) == rh {
                continue;
            }
            let Some((service, version)) = service_version(buf, r.clone()) else {
                self.shared.last_resource.store(rh, Ordering::Relaxed);
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
            self.shared.last_resource.store(rh, Ordering::Relaxed);
        }
        out
    }

    /// Sends one request's batch without waiting; when the queue is full (in batches, or in
    /// nodes in flight) or closed the batch is dropped and counted, and its versions are
    /// forgotten so a later request reports them.
    pub fn send(&self, batch: Batch) {
        if batch.nodes.is_empty() && batch.versions.is_empty() {
            return;
        }
        let n = batch.nodes.len();
        let in_flight = &self.shared.in_flight;
        let (reason, batch) =
            if in_flight.fetch_add(n, Ordering::Relaxed) + n > self.shared.max_in_flight {
                (drop_reason::QUEUE_FULL, batch)
            } else {
                match self.tx.try_send(batch) {
                    Ok(()) => return,
                    Err(TrySendError::Full(b)) => (drop_reason::QUEUE_FULL, b),
                    Err(TrySendError::Closed(b)) => (drop_reason::CLOSED, b),
                }
            };
        in_flight.fetch_sub(n, Ordering::Relaxed);
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
            self.shared.last_resource.store(0, Ordering::Relaxed);
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
            2 => value = any_string(buf, expect_len(&f)?)?.or(value),
            _ => {}
        }
    }
    Ok((key, value))
}

/// An `AnyValue`'s string, if it holds one (the last, should the field repeat).
fn any_string(buf: &[u8], any: Range<usize>) -> Result<Option<&[u8]>, WireError> {
    let mut value = None;
    for v in Fields::new(buf, any) {
        let v = v?;
        if v.number == 1 {
            value = Some(&buf[expect_len(&v)?]);
        }
    }
    Ok(value)
}

/// The key whose string value a skeleton keeps (see [`Node::agent`]).
const AGENT_NAME_KEY: &[u8] = b"gen_ai.agent.name";

/// A `KeyValue`'s string value if its key is `want`. The key is compared as soon as it is read,
/// so the value of any other attribute (a prompt, say) is never parsed.
fn string_of_key<'a>(
    buf: &'a [u8],
    kv: Range<usize>,
    want: &[u8],
) -> Result<Option<&'a [u8]>, WireError> {
    let mut value = None;
    // A `KeyValue` without its key field has the empty key.
    let mut key_matches = want.is_empty();
    for f in Fields::new(buf, kv) {
        let f = f?;
        match f.number {
            1 => {
                if buf[expect_len(&f)?] != *want {
                    return Ok(None);
                }
                key_matches = true;
            }
            2 => value = any_string(buf, expect_len(&f)?)?.or(value),
            _ => {}
        }
    }
    Ok(value.filter(|_| key_matches))
}

/// `string_of_key(buf, kv, AGENT_NAME_KEY)`, without parsing the usual attribute: one whose key
/// comes first, with a one-byte length, and is another key (told apart by its length or bytes).
#[inline]
fn agent_name_of(buf: &[u8], kv: Range<usize>) -> Result<Option<&[u8]>, WireError> {
    if let Some([0x0a, len, rest @ ..]) = buf.get(kv.clone()) {
        let len = usize::from(*len);
        if len < 0x80 && len <= rest.len() && rest[..len] != *AGENT_NAME_KEY {
            return Ok(None);
        }
    }
    string_of_key(buf, kv, AGENT_NAME_KEY)
}

/// A span name as kept by the failure side: at most `MAX_NAME_BYTES`, cut on a char boundary,
/// invalid UTF-8 replaced, and shared with the thread's earlier copy (`intern`).
pub fn cut_name(bytes: &[u8]) -> Arc<str> {
    if bytes.len() <= MAX_NAME_BYTES {
        if let Ok(s) = std::str::from_utf8(bytes) {
            return intern(s);
        }
    }
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_NAME_BYTES + 4)]);
    intern(crate::text::cut(&s, MAX_NAME_BYTES))
}

/// Most strings one thread keeps in its `intern` table; past it the table starts over.
const MAX_INTERNED: usize = 1024;

thread_local! {
    /// The strings this thread handed out with `intern`.
    static INTERNED: RefCell<HashSet<Arc<str>, IdHash>> = RefCell::new(HashSet::default());
}

/// `s` as a shared string: the calling thread's earlier copy when it has one, else a new one it
/// keeps (up to `MAX_INTERNED`; strings over `MAX_NAME_BYTES` are never kept). Span and agent
/// names repeat from trace to trace, so a node's names cost a reference count, not an allocation.
pub fn intern(s: &str) -> Arc<str> {
    if s.len() > MAX_NAME_BYTES {
        return s.into();
    }
    INTERNED.with_borrow_mut(|names| {
        if let Some(kept) = names.get(s) {
            return kept.clone();
        }
        if names.len() >= MAX_INTERNED {
            names.clear();
        }
        let new: Arc<str> = s.into();
        names.insert(new.clone());
        new
    })
}

/// The skeleton of a span on the wire: ids, parent, name, kind and times.
pub fn skeleton(buf: &[u8], at: &SpanAt) -> Result<Node, WireError> {
    let mut node = Node {
        trace_id: [0; 16],
        span_id: [0; 8],
        shape: None,
        signal: None,
        agent: None,
        name: None,
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
            (5, _) => node.name = Some(cut_name(&buf[expect_len(&f)?])),
            (6, WT_VARINT) => shape.kind = f.scalar as i32,
            (7, WT_I64) => shape.start_ns = f.scalar,
            (8, WT_I64) => shape.end_ns = f.scalar,
            (9, _) => {
                if let Some(v) = agent_name_of(buf, expect_len(&f)?)? {
                    node.agent = std::str::from_utf8(v).ok().map(intern);
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
        let shared = Arc::new(Shared::new(metrics.clone(), cap, 1_000, 5));
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
            name: None,
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

    fn nodes(n: usize) -> Vec<Node> {
        let node = Node {
            trace_id: [1; 16],
            span_id: [1; 8],
            shape: None,
            signal: None,
            agent: None,
            name: None,
        };
        vec![node; n]
    }

    #[test]
    fn the_channel_is_capped_in_nodes_in_flight() {
        // 5 nodes in flight at most, 10 batches.
        let (t, mut rx, metrics) = tap(10, 10);
        t.send(Batch {
            nodes: nodes(3),
            versions: Vec::new(),
        });
        assert_eq!(t.queued_nodes(), 3);
        t.send(Batch {
            nodes: nodes(3),
            versions: Vec::new(),
        });
        assert_eq!((t.queued(), t.queued_nodes()), (1, 3));
        assert!(metrics
            .render()
            .contains(r#"triage_failure_side_dropped_total{reason="queue_full"} 3"#));
        // The assembler takes the batch: room again.
        let b = rx.try_recv().unwrap();
        t.shared.taken(b.nodes.len());
        t.send(Batch {
            nodes: nodes(5),
            versions: Vec::new(),
        });
        assert_eq!((t.queued(), t.queued_nodes()), (1, 5));
        // A closed channel gives the nodes back and counts them.
        drop(rx);
        t.shared.taken(5);
        t.send(Batch {
            nodes: nodes(2),
            versions: Vec::new(),
        });
        assert_eq!(t.queued_nodes(), 0);
        assert!(metrics
            .render()
            .contains(r#"triage_failure_side_dropped_total{reason="closed"} 2"#));
    }

    #[test]
    fn names_are_shared_per_thread_and_the_table_is_capped() {
        let a = intern("chat gpt-4o");
        assert!(
            Arc::ptr_eq(&a, &intern("chat gpt-4o")),
            "one copy per thread"
        );
        assert!(Arc::ptr_eq(&a, &cut_name(b"chat gpt-4o")));
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        assert!(
            !Arc::ptr_eq(&intern(&long), &intern(&long)),
            "long strings are not kept"
        );
        assert_eq!(&*cut_name(long.as_bytes()), &long[..MAX_NAME_BYTES]);
        for i in 0..MAX_INTERNED {
            intern(&format!("name-{i}"));
        }
        assert!(INTERNED.with_borrow(|t| t.len()) <= MAX_INTERNED);
        assert_eq!(
            &*intern("chat gpt-4o"),
            "chat gpt-4o",
            "kept or made anew, same text"
        );
        let other = std::thread::spawn(|| intern("chat gpt-4o")).join().unwrap();
        assert_eq!(&*other, "chat gpt-4o");
    }

    #[test]
    fn an_identical_resource_is_skipped_a_new_one_is_read() {
        let (t, _rx, _) = tap(10, 1);
        let req = |version: &str| {
            let (mut req, _) = Fleet::new(3, 0).request(4);
            req.resource_spans.truncate(1);
            let r = req.resource_spans[0].resource.as_mut().unwrap();
            for kv in &mut r.attributes {
                if kv.key == "service.version" {
                    kv.value = Some(opentelemetry_proto::tonic::common::v1::AnyValue {
                        value: Some(
                            opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                                version.into(),
                            ),
                        ),
                    });
                }
            }
            req.encode_to_vec()
        };
        let opts = ScanOptions {
            index: false,
            resources: true,
        };
        let (a, b) = (req("9.0.0"), req("9.1.0"));
        let versions = |buf: &[u8]| {
            let s = scan_with(buf, opts).unwrap();
            t.new_versions(buf, &s.all_resources)
        };
        assert_eq!(versions(&a).len(), 1);
        assert!(versions(&a).is_empty());
        assert_eq!(versions(&b)[0].1, "9.1.0");
        assert!(versions(&a).is_empty(), "seen before");
    }

    #[test]
    fn id_hash_spreads_ids_and_keys_maps() {
        use std::hash::BuildHasher;
        let h = IdHash::default();
        let mut a = [0u8; 16];
        let x = h.hash_one(a);
        a[15] = 1;
        assert_ne!(x, h.hash_one(a));
        let mut m: HashMap<[u8; 16], u8, IdHash> = HashMap::default();
        m.insert(a, 1);
        assert_eq!(m.get(&a), Some(&1));
        assert!(!m.contains_key(&[0; 16]));
    }

    #[test]
    fn string_of_key_reads_only_the_wanted_key() {
        use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
        let kv = |key: &str, v: Value| {
            KeyValue {
                key: key.into(),
                value: Some(AnyValue { value: Some(v) }),
                ..Default::default()
            }
            .encode_to_vec()
        };
        let s = |v: &str| Value::StringValue(v.into());
        let general =
            |b: &[u8]| string_of_key(b, 0..b.len(), AGENT_NAME_KEY).map(|v| v.map(<[u8]>::to_vec));
        let fast = |b: &[u8]| agent_name_of(b, 0..b.len()).map(|v| v.map(<[u8]>::to_vec));
        // The skeleton's fast path answers as the general one, on every case below.
        let get = |b: &[u8]| {
            let (g, f) = (general(b), fast(b));
            assert_eq!(g.is_ok(), f.is_ok(), "{b:?}");
            if let (Ok(g), Ok(f)) = (&g, &f) {
                assert_eq!(g, f, "{b:?}");
            }
            g
        };
        let long_key = format!("gen_ai.agent.name{}", "x".repeat(200));
        assert_eq!(get(&kv(&long_key, s("support"))).unwrap(), None);
        assert_eq!(get(&kv("gen_ai.agent.namf", s("support"))).unwrap(), None);
        assert_eq!(get(&kv("gen_ai.agent.nam", s("support"))).unwrap(), None);
        assert_eq!(get(&kv("", s("support"))).unwrap(), None);
        let agent = kv("gen_ai.agent.name", s("support"));
        assert_eq!(get(&agent).unwrap(), Some(b"support".to_vec()));
        assert_eq!(get(&kv("gen_ai.agent.id", s("support"))).unwrap(), None);
        assert_eq!(
            get(&kv("gen_ai.agent.name", Value::IntValue(3))).unwrap(),
            None
        );
        // The value before the key (any field order is valid protobuf).
        let mut swapped = agent[2 + "gen_ai.agent.name".len()..].to_vec();
        swapped.extend_from_slice(&agent[..2 + "gen_ai.agent.name".len()]);
        assert_eq!(get(&swapped).unwrap(), Some(b"support".to_vec()));
        // Another key's value is not parsed: broken bytes in it go unnoticed.
        let mut other = kv("gen_ai.input.messages", s("x"));
        let n = other.len();
        other[n - 2] = 0x7f;
        assert_eq!(get(&other).unwrap(), None);
        // A truncated wanted attribute is an error, not a panic.
        assert!(get(&agent[..agent.len() - 3]).is_err());
    }

    #[test]
    fn skeletons_of_marked_traces_only() {
        let (req, traces) = Fleet::new(2, 0).request(6);
        // As sent, each trace's spans together; and interleaved, each span a run of its own.
        for req in [req.clone(), crate::synth::interleaved(req)] {
            skeletons_of_the_marked_trace(req, &traces[2]);
        }
    }

    fn skeletons_of_the_marked_trace(
        req: opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
        marked: &crate::synth::GeneratedTrace,
    ) {
        let (t, _rx, _) = tap(10, 1);
        let buf = req.encode_to_vec();
        let opts = ScanOptions {
            index: true,
            resources: false,
        };
        let s = scan_with(&buf, opts).unwrap();
        assert_eq!(s.index.len() as u64, s.spans);
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
