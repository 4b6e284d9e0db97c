//! The persistent export queue (`sending_queue.storage: file_storage`): export requests are
//! appended to segment files before the receiver answers, read back by the exporter, and
//! removed once delivered or given up on, so accepted data survives a restart or a crash
//! during a downstream outage.
//!
//! On disk, in the `file_storage` directory:
//! - `exporter_otlp/NNNNNNNNNNNNNNNNNNNN.seg`: records appended in order, each a 32-byte header
//!   (magic, body length, signal, items, xxh3 of signal + items + body) and the body;
//! - `exporter_otlp/NNNNNNNNNNNNNNNNNNNN.ack`: the offsets of that segment's records that are
//!   finished (8 bytes each, appended);
//! - `exporter_otlp/lock`: held (`flock`) by the process using the queue.
//!
//! A segment and its ack file are deleted once the writer has moved past the segment and every
//! record in it is finished. At start, every record not in its segment's ack file is queued
//! again, in order; a torn record at the end of a segment (a write the process died in, never
//! acknowledged to a client) is cut off. Delivery is at least once: a crash between a delivery
//! and its ack line sends that request again.
//!
//! With `fsync`, a request is acknowledged once it is on stable storage. The flushes are group
//! commits: one thread (`triage-fsync`) flushes the segment with everything written to it so
//! far, and every request written before that flush started is acknowledged by it, so requests
//! that arrive while a flush runs share the next one instead of each waiting for its own.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::{watch, Notify};
use xxhash_rust::xxh3::Xxh3;

use crate::admin::metrics::Metrics;
use crate::otlp::SignalType;
use prometheus_client::metrics::counter::Counter;

/// A segment is closed for writing once it holds this many bytes.
const SEGMENT_BYTES: u64 = 32 * 1024 * 1024;
const MAGIC: u32 = 0x5451_4c31; // "TQL1"
const HEADER_LEN: usize = 32;
/// A header claiming more than this is damage, not a request (receivers cap bodies far lower).
const MAX_RECORD_BYTES: u32 = 1 << 30;
const QUEUE_DIR: &str = "exporter_otlp";

/// Opening or writing the queue's files failed.
#[derive(Debug, thiserror::Error)]
#[error("persistent export queue {path}: {source}")]
pub struct DiskError {
    path: PathBuf,
    #[source]
    source: io::Error,
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> DiskError + '_ {
    move |source| DiskError {
        path: path.to_path_buf(),
        source,
    }
}

/// Where one queued request lives.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    segment: u64,
    offset: u64,
    len: u32,
    pub signal: SignalType,
    pub items: u64,
}

/// Why a push was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// At the request or byte cap, or closed.
    Full,
    /// The write failed (disk full, I/O error); nothing was queued. Or, for `flushed`, the
    /// flush to stable storage failed: the request may still be delivered, but it was never
    /// durable, so it must not be acknowledged.
    Io,
}

/// Where a pushed request ends in the queue's files: (segment, end offset). Later writes
/// compare greater.
pub type Position = (u64, u64);

/// The group commit behind `fsync`: pushes say how far they need the files flushed (`want`),
/// one thread flushes and publishes how far it got (`done`).
struct Flusher {
    want: Mutex<FlushWant>,
    wake: Condvar,
    done: watch::Sender<Flushed>,
    /// Flushes made so far (`triage_export_queue_flushes_total`).
    flushes: Counter,
}

struct FlushWant {
    /// The furthest position a push waits for, and the segment file it is in.
    pos: Position,
    file: Option<Arc<File>>,
    stop: bool,
}

/// How far the files are on stable storage; `failed` once a flush failed (then nothing more
/// is ever acknowledged as flushed: after a failed `fsync` the kernel may have dropped the
/// dirty pages, so no later flush proves anything).
#[derive(Debug, Clone, Copy)]
struct Flushed {
    pos: Position,
    failed: bool,
}

impl Flusher {
    fn start(flushes: Counter) -> io::Result<Arc<Flusher>> {
        let (done, _) = watch::channel(Flushed {
            pos: (0, 0),
            failed: false,
        });
        let f = Arc::new(Flusher {
            want: Mutex::new(FlushWant {
                pos: (0, 0),
                file: None,
                stop: false,
            }),
            wake: Condvar::new(),
            done,
            flushes,
        });
        let run = f.clone();
        std::thread::Builder::new()
            .name("triage-fsync".into())
            .spawn(move || run.run())?;
        Ok(f)
    }

    fn lock(&self) -> MutexGuard<'_, FlushWant> {
        self.want.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks for everything up to `pos` (in `file`) to be flushed.
    fn want(&self, pos: Position, file: Arc<File>) {
        let mut w = self.lock();
        if pos > w.pos {
            w.pos = pos;
            w.file = Some(file);
        }
        drop(w);
        self.wake.notify_one();
    }

    /// The flushing thread: flushes the newest wanted segment file (with whatever else was
    /// written to it meanwhile) until told to stop with nothing left wanted.
    fn run(&self) {
        let mut flushed: Position = (0, 0);
        loop {
            let (pos, file) = {
                let mut w = self.lock();
                while w.pos <= flushed && !w.stop {
                    w = self.wake.wait(w).unwrap_or_else(|p| p.into_inner());
                }
                match w.file.clone() {
                    Some(file) if w.pos > flushed => (w.pos, file),
                    _ => return,
                }
            };
            if let Err(e) = file.sync_data() {
                tracing::error!(
                    error = %e,
                    "persistent export queue: fsync failed; refusing requests from now on"
                );
                self.done.send_replace(Flushed {
                    pos: flushed,
                    failed: true,
                });
                return;
            }
            flushed = pos;
            self.flushes.inc();
            self.done.send_replace(Flushed { pos, failed: false });
        }
    }

    fn failed(&self) -> bool {
        self.done.borrow().failed
    }

    /// Waits until `pos` is on stable storage.
    async fn flushed(&self, pos: Position) -> Result<(), PushError> {
        let mut rx = self.done.subscribe();
        let f = rx
            .wait_for(|f| f.pos >= pos || f.failed)
            .await
            .map_err(|_| PushError::Io)?;
        if f.pos >= pos {
            Ok(())
        } else {
            Err(PushError::Io)
        }
    }

    fn stop(&self) {
        self.lock().stop = true;
        self.wake.notify_one();
    }
}

/// What a start found on disk.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    pub requests: usize,
    pub bytes: usize,
    /// Items (spans, log records, metric data points' parents) by signal: traces, logs, metrics.
    pub items: [u64; 3],
    /// Bytes cut off the end of segments: writes the process died in.
    pub torn_bytes: u64,
}

/// The persistent queue; shared by the senders and the exporter's consumers.
pub struct DiskQueue {
    dir: PathBuf,
    /// With `fsync`: the group commit that flushes pushed requests.
    flusher: Option<Arc<Flusher>>,
    max_requests: usize,
    max_bytes: usize,
    state: Mutex<State>,
    ready: Notify,
    metrics: Arc<Metrics>,
    /// Held for the queue's life: a second process on the same directory is refused.
    _lock: File,
}

struct State {
    /// The segment being written; shared with the flushing thread (with `fsync`).
    writer: Arc<File>,
    write_segment: u64,
    write_len: u64,
    pending: VecDeque<Entry>,
    segments: BTreeMap<u64, Segment>,
    /// Records written and not finished (pending or in flight), and their body bytes.
    requests: usize,
    bytes: usize,
    closed: bool,
}

struct Segment {
    /// Records not finished yet.
    live: usize,
    /// The writer has moved on: once `live` is 0 the files go.
    sealed: bool,
    reader: Arc<File>,
    acks: Option<File>,
}

impl DiskQueue {
    /// Opens (creating) the queue under `directory`, locks it, and queues again whatever an
    /// earlier process left unfinished.
    pub fn open(
        directory: &Path,
        fsync: bool,
        max_requests: usize,
        max_bytes: usize,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, Recovered), DiskError> {
        let dir = directory.join(QUEUE_DIR);
        fs::create_dir_all(&dir).map_err(at(&dir))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(at(&lock_path))?;
        lock.try_lock().map_err(|e| DiskError {
            path: lock_path.clone(),
            source: io::Error::other(format!(
                "another process holds this queue ({e}); give each instance its own file_storage directory"
            )),
        })?;
        let mut recovered = Recovered::default();
        let mut pending = VecDeque::new();
        let mut segments = BTreeMap::new();
        let numbers = segment_numbers(&dir)?;
        remove_stray_acks(&dir, &numbers);
        for &seq in &numbers {
            let seg = recover_segment(&dir, seq, &mut pending, &mut recovered)?;
            match seg {
                Some(seg) => {
                    segments.insert(seq, seg);
                }
                None => remove_segment(&dir, seq),
            }
        }
        // Never reuse a number, even of a segment just removed.
        let write_segment = numbers.last().map_or(1, |s| s + 1);
        let (writer, reader) = create_segment(&dir, write_segment)?;
        segments.insert(
            write_segment,
            Segment {
                live: 0,
                sealed: false,
                reader: Arc::new(reader),
                acks: None,
            },
        );
        metrics.queue_requests.set(recovered.requests as i64);
        metrics.queue_bytes.set(recovered.bytes as i64);
        let flusher = fsync
            .then(|| Flusher::start(metrics.export_queue_flushes.clone()))
            .transpose()
            .map_err(at(&dir))?;
        let state = State {
            writer: Arc::new(writer),
            write_segment,
            write_len: 0,
            pending,
            segments,
            requests: recovered.requests,
            bytes: recovered.bytes,
            closed: false,
        };
        Ok((
            DiskQueue {
                dir,
                flusher,
                max_requests,
                max_bytes,
                state: Mutex::new(state),
                ready: Notify::new(),
                metrics,
                _lock: lock,
            },
            recovered,
        ))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves counts that are still consistent enough to
        // keep serving; never propagate the poison.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a request of `len` bytes would be admitted now.
    pub fn has_room(&self, len: usize) -> bool {
        let s = self.lock();
        !s.closed && admits(&s, len, self.max_requests, self.max_bytes)
    }

    /// Appends a request: it is written (queued, and back after a crash of this process) when
    /// this returns `Ok`; with `fsync`, it is on stable storage once `flushed` returns `Ok` for
    /// the position returned, and must not be acknowledged before.
    pub fn push(&self, signal: SignalType, body: &[u8], items: u64) -> Result<Position, PushError> {
        self.push_parts(signal, &[body], items)
    }

    /// `push` for a request held in parts (see `Payload`), written one after another.
    pub fn push_parts<B: AsRef<[u8]>>(
        &self,
        signal: SignalType,
        body: &[B],
        items: u64,
    ) -> Result<Position, PushError> {
        let body_len: usize = body.iter().map(|p| p.as_ref().len()).sum();
        let len = u32::try_from(body_len)
            .ok()
            .filter(|l| *l <= MAX_RECORD_BYTES)
            .ok_or(PushError::Full)?;
        if self.flusher.as_ref().is_some_and(|f| f.failed()) {
            return Err(PushError::Io);
        }
        let mut s = self.lock();
        if s.closed || !admits(&s, body_len, self.max_requests, self.max_bytes) {
            return Err(PushError::Full);
        }
        if s.write_len >= SEGMENT_BYTES {
            self.rotate(&mut s).map_err(|e| {
                tracing::warn!(error = %e, "persistent export queue: cannot start a segment");
                PushError::Io
            })?;
        }
        let header = encode_header(signal, len, items, body);
        let offset = s.write_len;
        let mut w: &File = &s.writer;
        let written = w
            .write_all(&header)
            .and_then(|_| body.iter().try_for_each(|p| w.write_all(p.as_ref())));
        if let Err(e) = written {
            tracing::warn!(error = %e, "persistent export queue: write failed; refusing the request");
            // Cut the partial record so the segment stays readable.
            let _ = s.writer.set_len(offset);
            return Err(PushError::Io);
        }
        let seq = s.write_segment;
        s.write_len = offset + (HEADER_LEN + body_len) as u64;
        if let Some(seg) = s.segments.get_mut(&seq) {
            seg.live += 1;
        }
        s.pending.push_back(Entry {
            segment: seq,
            offset,
            len,
            signal,
            items,
        });
        s.requests += 1;
        s.bytes += body_len;
        let pos = (seq, s.write_len);
        let file = self.flusher.as_ref().map(|_| s.writer.clone());
        drop(s);
        if let (Some(f), Some(file)) = (&self.flusher, file) {
            f.want(pos, file);
        }
        self.metrics.queue_requests.inc();
        self.metrics.queue_bytes.inc_by(body_len as i64);
        self.ready.notify_one();
        Ok(pos)
    }

    /// Whether a pushed request must wait for `flushed` before it is acknowledged (`fsync`).
    pub fn flushes_pushes(&self) -> bool {
        self.flusher.is_some()
    }

    /// Flushes to stable storage made so far (0 without `fsync`): with requests arriving
    /// together, fewer than the requests pushed.
    pub fn flushes(&self) -> u64 {
        self.flusher.as_ref().map_or(0, |f| f.flushes.get())
    }

    /// Waits until the request pushed to `pos` is on stable storage: at once without `fsync`;
    /// `Err` when the flush failed (see `PushError::Io`).
    pub async fn flushed(&self, pos: Position) -> Result<(), PushError> {
        match &self.flusher {
            Some(f) => f.flushed(pos).await,
            None => Ok(()),
        }
    }

    /// Seals the segment being written and starts the next one.
    fn rotate(&self, s: &mut State) -> Result<(), DiskError> {
        let next = s.write_segment + 1;
        let (writer, reader) = create_segment(&self.dir, next)?;
        let old = s.write_segment;
        if self.flusher.is_some() {
            // The flushing thread only flushes the segment being written: the old one's last
            // writes are flushed here, before anything is written to the next.
            s.writer
                .sync_data()
                .map_err(at(&segment_path(&self.dir, old)))?;
        }
        s.writer = Arc::new(writer);
        s.write_segment = next;
        s.write_len = 0;
        s.segments.insert(
            next,
            Segment {
                live: 0,
                sealed: false,
                reader: Arc::new(reader),
                acks: None,
            },
        );
        if let Some(seg) = s.segments.get_mut(&old) {
            seg.sealed = true;
            if seg.live == 0 {
                s.segments.remove(&old);
                remove_segment(&self.dir, old);
            }
        }
        Ok(())
    }

    /// The next request to send, in order; `None` once closed. Damaged records are finished,
    /// counted and skipped.
    pub async fn next(&self) -> Option<(Entry, Bytes)> {
        loop {
            let taken = {
                let mut s = self.lock();
                if s.closed {
                    return None;
                }
                s.pending.pop_front().map(|e| {
                    let reader = s.segments.get(&e.segment).map(|seg| seg.reader.clone());
                    (e, reader)
                })
            };
            let Some((entry, reader)) = taken else {
                self.ready.notified().await;
                continue;
            };
            match reader
                .ok_or_else(|| io::Error::other("segment gone"))
                .and_then(|r| read_body(&r, &entry))
            {
                Ok(body) => return Some((entry, body)),
                Err(e) => {
                    tracing::error!(
                        segment = entry.segment,
                        offset = entry.offset,
                        items = entry.items,
                        error = %e,
                        "persistent export queue: damaged request discarded"
                    );
                    self.metrics.export_queue_corrupt.inc();
                    if entry.signal == SignalType::Traces {
                        self.metrics.spans.dropped.inc_by(entry.items);
                    }
                    self.finish(&entry);
                }
            }
        }
    }

    /// Marks a request finished (delivered, or given up on and counted): it is not sent again.
    pub fn finish(&self, entry: &Entry) {
        let mut s = self.lock();
        s.requests = s.requests.saturating_sub(1);
        s.bytes = s.bytes.saturating_sub(entry.len as usize);
        let Some(seg) = s.segments.get_mut(&entry.segment) else {
            return;
        };
        seg.live = seg.live.saturating_sub(1);
        if seg.sealed && seg.live == 0 {
            s.segments.remove(&entry.segment);
            remove_segment(&self.dir, entry.segment);
        } else if let Err(e) = append_ack(&self.dir, seg, entry) {
            // Without its ack line the request is sent again after a restart: a duplicate,
            // never a loss.
            tracing::warn!(error = %e, "persistent export queue: cannot record a finished request");
        }
        drop(s);
        self.metrics.queue_requests.dec();
        self.metrics.queue_bytes.dec_by(entry.len as i64);
    }

    /// Stops handing out requests; what is not finished stays on disk for the next start.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// Records waiting or in flight.
    pub fn len(&self) -> usize {
        self.lock().requests
    }

    /// Whether nothing is waiting or in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn admits(s: &State, len: usize, max_requests: usize, max_bytes: usize) -> bool {
    // One request is always admitted into an empty queue, however large.
    s.requests == 0 || (s.requests < max_requests && s.bytes + len <= max_bytes)
}

impl Drop for DiskQueue {
    fn drop(&mut self) {
        if let Some(f) = &self.flusher {
            f.stop();
        }
    }
}

fn signal_code(signal: SignalType) -> u8 {
    match signal {
        SignalType::Traces => 1,
        SignalType::Logs => 2,
        SignalType::Metrics => 3,
    }
}

fn signal_from(code: u8) -> Option<SignalType> {
    match code {
        1 => Some(SignalType::Traces),
        2 => Some(SignalType::Logs),
        3 => Some(SignalType::Metrics),
        _ => None,
    }
}

fn checksum<B: AsRef<[u8]>>(signal: u8, items: u64, body: &[B]) -> u64 {
    let mut h = Xxh3::new();
    h.update(&[signal]);
    h.update(&items.to_le_bytes());
    for part in body {
        h.update(part.as_ref());
    }
    h.digest()
}

/// magic u32 | len u32 | signal u8 | 7 reserved | items u64 | checksum u64, little-endian.
fn encode_header<B: AsRef<[u8]>>(
    signal: SignalType,
    len: u32,
    items: u64,
    body: &[B],
) -> [u8; HEADER_LEN] {
    let code = signal_code(signal);
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&len.to_le_bytes());
    h[8] = code;
    h[16..24].copy_from_slice(&items.to_le_bytes());
    h[24..32].copy_from_slice(&checksum(code, items, body).to_le_bytes());
    h
}

struct Header {
    len: u32,
    signal: SignalType,
    items: u64,
    checksum: u64,
}

fn decode_header(h: &[u8; HEADER_LEN]) -> Option<Header> {
    let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let long = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let len = word(4);
    if word(0) != MAGIC || len > MAX_RECORD_BYTES {
        return None;
    }
    Some(Header {
        len,
        signal: signal_from(h[8])?,
        items: long(16),
        checksum: long(24),
    })
}

/// Reads a record's body back and checks it against its header.
fn read_body(file: &File, e: &Entry) -> io::Result<Bytes> {
    let mut header = [0u8; HEADER_LEN];
    file.read_exact_at(&mut header, e.offset)?;
    let h = decode_header(&header).ok_or_else(|| io::Error::other("bad record header"))?;
    let mut body = vec![0u8; e.len as usize];
    file.read_exact_at(&mut body, e.offset + HEADER_LEN as u64)?;
    if h.len != e.len || checksum(signal_code(h.signal), h.items, &[&body]) != h.checksum {
        return Err(io::Error::other("checksum mismatch"));
    }
    Ok(Bytes::from(body))
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.seg"))
}

fn ack_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.ack"))
}

/// The segment numbers present, in order.
fn segment_numbers(dir: &Path) -> Result<Vec<u64>, DiskError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(at(dir))? {
        let entry = entry.map_err(at(dir))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
            continue;
        };
        if let Ok(seq) = stem.parse::<u64>() {
            out.push(seq);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn create_segment(dir: &Path, seq: u64) -> Result<(File, File), DiskError> {
    let path = segment_path(dir, seq);
    // Append mode: after a failed write is cut off (`set_len`), the next one lands at the end.
    let writer = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .and_then(|f| {
            drop(f);
            OpenOptions::new().append(true).open(&path)
        })
        .map_err(at(&path))?;
    let reader = File::open(&path).map_err(at(&path))?;
    Ok((writer, reader))
}

fn remove_segment(dir: &Path, seq: u64) {
    // Acks first: a crash in between leaves a segment whose records are all sent again (a
    // duplicate), never acks that could match a later segment of the same number (a loss).
    for path in [ack_path(dir, seq), segment_path(dir, seq)] {
        if let Err(e) = fs::remove_file(&path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "persistent export queue: cannot remove a finished segment");
            }
        }
    }
}

/// Ack files whose segment is gone (a crash between the two removals).
fn remove_stray_acks(dir: &Path, segments: &[u64]) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".ack"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if segments.binary_search(&seq).is_err() {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn append_ack(dir: &Path, seg: &mut Segment, entry: &Entry) -> io::Result<()> {
    if seg.acks.is_none() {
        seg.acks = Some(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(ack_path(dir, entry.segment))?,
        );
    }
    match seg.acks.as_mut() {
        Some(f) => f.write_all(&entry.offset.to_le_bytes()),
        None => Ok(()),
    }
}

/// The finished offsets of a segment.
fn read_acks(dir: &Path, seq: u64) -> Result<HashSet<u64>, DiskError> {
    let path = ack_path(dir, seq);
    let mut bytes = Vec::new();
    match File::open(&path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes).map_err(at(&path))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(at(&path)(e)),
    }
    // A torn last line (fewer than 8 bytes) is a finish the process died in: sent again.
    Ok(bytes
        .chunks_exact(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            u64::from_le_bytes(b)
        })
        .collect())
}

/// Queues again a segment's unfinished records; `None` when nothing in it is left.
fn recover_segment(
    dir: &Path,
    seq: u64,
    pending: &mut VecDeque<Entry>,
    recovered: &mut Recovered,
) -> Result<Option<Segment>, DiskError> {
    let path = segment_path(dir, seq);
    let acks = read_acks(dir, seq)?;
    let reader = File::open(&path).map_err(at(&path))?;
    let size = reader.metadata().map_err(at(&path))?.len();
    let mut offset = 0u64;
    let mut live = 0usize;
    while offset < size {
        let mut header = [0u8; HEADER_LEN];
        let h = reader
            .read_exact_at(&mut header, offset)
            .ok()
            .and_then(|_| decode_header(&header));
        let end = h
            .as_ref()
            .map(|h| offset + (HEADER_LEN as u64) + u64::from(h.len));
        let (Some(h), Some(end)) = (h, end.filter(|end| *end <= size)) else {
            break;
        };
        if !acks.contains(&offset) {
            pending.push_back(Entry {
                segment: seq,
                offset,
                len: h.len,
                signal: h.signal,
                items: h.items,
            });
            live += 1;
            recovered.requests += 1;
            recovered.bytes += h.len as usize;
            let items = &mut recovered.items[signal_code(h.signal) as usize - 1];
            // A damaged header may claim any count (its checksum is checked when the body is read).
            *items = items.saturating_add(h.items);
        }
        offset = end;
    }
    if offset < size {
        // The rest is a write the process died in (never acknowledged to a client), or
        // damage: either way nothing after it can be framed.
        recovered.torn_bytes += size - offset;
        tracing::warn!(
            segment = %path.display(),
            bytes = size - offset,
            "persistent export queue: cut an incomplete record off the end of a segment"
        );
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(at(&path))?;
        f.set_len(offset).map_err(at(&path))?;
    }
    if live == 0 {
        return Ok(None);
    }
    Ok(Some(Segment {
        live,
        sealed: true,
        reader: Arc::new(reader),
        acks: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path, max_requests: usize, max_bytes: usize) -> (DiskQueue, Recovered) {
        DiskQueue::open(
            dir,
            false,
            max_requests,
            max_bytes,
            Arc::new(Metrics::new()),
        )
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn with_fsync_each_push_is_flushed_and_comes_back_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let q = Arc::new(
            DiskQueue::open(dir.path(), true, 10_000, 1 << 30, metrics.clone())
                .unwrap()
                .0,
        );
        // Writers pushing at once, each waiting for its flush as a receiver does.
        let mut tasks = Vec::new();
        for w in 0..8u8 {
            let q = q.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..25u8 {
                    let pos = q.push(SignalType::Traces, &[w, i], 1).unwrap();
                    q.flushed(pos).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let flushes = q.flushes();
        assert!(
            (1..=200).contains(&flushes),
            "{flushes} flushes for 200 pushes"
        );
        // Past a segment's size: the full segment is flushed before the next is written to.
        let big = vec![7u8; 12 << 20];
        let mut last = (0, 0);
        for _ in 0..4 {
            let pos = q.push(SignalType::Logs, &big, 1).unwrap();
            assert!(pos > last);
            last = pos;
        }
        q.flushed(last).await.unwrap();
        assert!(last.0 > 1, "the big pushes started another segment");
        drop(q);
        let (again, rec) = open(dir.path(), 10_000, 1 << 30);
        assert_eq!(rec.requests, 204);
        assert_eq!(rec.torn_bytes, 0);
        let mut n = 0;
        while !again.is_empty() {
            let (entry, _) = again.next().await.unwrap();
            again.finish(&entry);
            n += 1;
        }
        assert_eq!(n, 204);
    }

    #[tokio::test]
    async fn without_fsync_a_push_needs_no_flush() {
        let dir = tempfile::tempdir().unwrap();
        let (q, _) = open(dir.path(), 10, 1 << 20);
        let pos = q.push(SignalType::Traces, b"x", 1).unwrap();
        q.flushed(pos).await.unwrap();
        assert_eq!(q.flushes(), 0);
    }

    #[tokio::test]
    async fn requests_come_back_in_order_and_finished_ones_stay_finished() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (q, rec) = open(dir.path(), 100, 1 << 20);
            assert_eq!(rec, Recovered::default());
            for i in 0..5u8 {
                q.push(SignalType::Traces, &[i; 10], u64::from(i)).unwrap();
            }
            let (e, body) = q.next().await.unwrap();
            assert_eq!(&body[..], &[0u8; 10]);
            q.finish(&e);
            // Taken but not finished: in flight when the process dies.
            let (_e1, body) = q.next().await.unwrap();
            assert_eq!(&body[..], &[1u8; 10]);
        }
        let (q, rec) = open(dir.path(), 100, 1 << 20);
        assert_eq!(rec.requests, 4);
        assert_eq!(rec.items[0], 1 + 2 + 3 + 4);
        assert_eq!(q.len(), 4);
        for i in 1..5u8 {
            let (e, body) = q.next().await.unwrap();
            assert_eq!(&body[..], &[i; 10]);
            q.finish(&e);
        }
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn a_request_in_parts_reads_back_whole_and_checksummed() {
        let dir = tempfile::tempdir().unwrap();
        let parts = [&b"head-"[..], &b""[..], &[9u8; 700][..], &b"-tail"[..]];
        let whole: Vec<u8> = parts.concat();
        {
            let (q, _) = open(dir.path(), 100, 1 << 20);
            q.push_parts(SignalType::Traces, &parts, 3).unwrap();
        }
        // Read back after a restart: the checksum over the parts matches the whole body's.
        let (q, rec) = open(dir.path(), 100, 1 << 20);
        assert_eq!((rec.requests, rec.bytes), (1, whole.len()));
        // A damaged record would be skipped: this one comes back.
        let (e, body) = q.next().await.unwrap();
        assert_eq!(&body[..], &whole[..]);
        q.finish(&e);
    }

    #[tokio::test]
    async fn caps_refuse_and_a_second_process_is_locked_out() {
        let dir = tempfile::tempdir().unwrap();
        let (q, _) = open(dir.path(), 2, 15);
        // An empty queue admits one request however large.
        q.push(SignalType::Logs, &[7; 40], 1).unwrap();
        assert_eq!(q.push(SignalType::Logs, &[7; 1], 1), Err(PushError::Full));
        let (e, _) = q.next().await.unwrap();
        q.finish(&e);
        q.push(SignalType::Logs, &[1; 10], 1).unwrap();
        q.push(SignalType::Logs, &[1; 5], 1).unwrap();
        assert!(!q.has_room(1), "request cap");
        let err = DiskQueue::open(dir.path(), false, 2, 15, Arc::new(Metrics::new()))
            .err()
            .expect("locked");
        assert!(err.to_string().contains("another process"), "{err}");
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_and_damage_is_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (q, _) = open(dir.path(), 100, 1 << 20);
            q.push(SignalType::Traces, b"first", 3).unwrap();
            q.push(SignalType::Traces, b"second", 4).unwrap();
        }
        let seg = segment_path(&dir.path().join(QUEUE_DIR), 1);
        // Damage the first body and leave half a header at the end.
        let mut bytes = fs::read(&seg).unwrap();
        bytes[HEADER_LEN] ^= 0xff;
        bytes.extend_from_slice(&MAGIC.to_le_bytes());
        fs::write(&seg, &bytes).unwrap();
        let metrics = Arc::new(Metrics::new());
        let (q, rec) = DiskQueue::open(dir.path(), false, 100, 1 << 20, metrics.clone()).unwrap();
        assert_eq!((rec.requests, rec.torn_bytes), (2, 4));
        let (e, body) = q.next().await.unwrap();
        assert_eq!(&body[..], b"second");
        q.finish(&e);
        assert!(q.is_empty());
        assert_eq!(metrics.export_queue_corrupt.get(), 1);
        assert_eq!(metrics.spans.dropped.get(), 3);
    }

    #[tokio::test]
    async fn finished_segments_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (q, _) = open(dir.path(), 100, 1 << 30);
        let body = vec![0u8; 8 * 1024 * 1024];
        for _ in 0..5 {
            q.push(SignalType::Traces, &body, 1).unwrap();
        }
        for _ in 0..5 {
            let (e, _) = q.next().await.unwrap();
            q.finish(&e);
        }
        // The first segment filled (4 × 8 MiB) and was sealed; only the one being written stays.
        let segs = segment_numbers(&dir.path().join(QUEUE_DIR)).unwrap();
        assert_eq!(segs, vec![2]);
    }

    #[tokio::test]
    async fn acks_of_a_removed_segment_never_match_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let qdir = dir.path().join(QUEUE_DIR);
        {
            let (q, _) = open(dir.path(), 100, 1 << 20);
            q.push(SignalType::Traces, b"a", 1).unwrap();
            q.push(SignalType::Traces, b"b", 1).unwrap();
            let (e, _) = q.next().await.unwrap();
            q.finish(&e);
        }
        // A crash between removing segment 1 and its acks.
        fs::remove_file(segment_path(&qdir, 1)).unwrap();
        assert!(ack_path(&qdir, 1).exists());
        {
            let (q, rec) = open(dir.path(), 100, 1 << 20);
            assert_eq!(rec.requests, 0);
            q.push(SignalType::Traces, b"c", 1).unwrap();
            q.push(SignalType::Traces, b"d", 1).unwrap();
        }
        let (q, rec) = open(dir.path(), 100, 1 << 20);
        assert_eq!(rec.requests, 2, "both new records come back");
        let (_, body) = q.next().await.unwrap();
        assert_eq!(&body[..], b"c");
    }

    #[tokio::test]
    async fn close_wakes_the_consumer() {
        let dir = tempfile::tempdir().unwrap();
        let (q, _) = open(dir.path(), 10, 1 << 20);
        let q = Arc::new(q);
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.next().await.is_none() }
        });
        tokio::task::yield_now().await;
        q.close();
        assert!(waiter.await.unwrap());
        assert_eq!(q.push(SignalType::Traces, b"x", 1), Err(PushError::Full));
    }
}
