//! Scans OTLP trace requests on the wire for spans worth a closer look, and splices edits back in.
//!
//! `scan` walks `ExportTraceServiceRequest → ResourceSpans → ScopeSpans → Span` and, for each span,
//! only the fields that can reveal a failure signal. `splice` writes a new request in which chosen
//! spans get extra attributes appended or are removed, copying every other byte unchanged.

use std::ops::Range;

use bytes::Bytes;
use memchr::memmem;

use crate::otlp::payload::Payload;
use crate::otlp::wire::{
    expect_len, varint_len, write_varint, Field, Fields, WireError, WT_VARINT,
};

/// Why a span was flagged by the wire pre-filter (bit set).
pub mod hint {
    pub const STATUS_ERROR: u16 = 1;
    pub const EXCEPTION_EVENT: u16 = 1 << 1;
    pub const EVALUATION_EVENT: u16 = 1 << 2;
    pub const FEEDBACK_EVENT: u16 = 1 << 3;
    pub const ERROR_TYPE: u16 = 1 << 4;
    pub const CONTENT_FILTER: u16 = 1 << 5;
    pub const GUARDRAIL: u16 = 1 << 6;
    pub const OI_EVALUATION: u16 = 1 << 7;
    pub const FEEDBACK_ATTR: u16 = 1 << 8;
    /// The span already carries `failure.class` (tagged upstream): leave it alone.
    pub const ALREADY_TAGGED: u16 = 1 << 15;
}

/// A span the pre-filter flagged, or one with invalid ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlaggedSpan {
    /// The span field inside its `ScopeSpans` (tag to end).
    pub field: FieldPos,
    /// Index into `Scan::scopes` of the enclosing scope.
    pub scope: usize,
    pub hints: u16,
    /// Why the span must be rejected, if it must.
    pub invalid: Option<Invalid>,
}

/// Why a span is rejected (removed from the request and reported as `partial_success`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Trace id is not 16 bytes or span id not 8 bytes, or one is all zero.
    Ids,
    /// A string field (name, attribute key or string value, event name, status message,
    /// trace state) is not valid UTF-8.
    Utf8,
}

/// Where a length-delimited field sits: tag start, end of tag, start of payload, end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldPos {
    pub start: usize,
    pub tag_end: usize,
    pub value_start: usize,
    pub end: usize,
}

impl From<&Field> for FieldPos {
    fn from(f: &Field) -> Self {
        FieldPos {
            start: f.start,
            tag_end: f.tag_end,
            value_start: f.value_start,
            end: f.end,
        }
    }
}

impl FieldPos {
    pub fn value(&self) -> Range<usize> {
        self.value_start..self.end
    }
}

/// A `ScopeSpans` message and the resource it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeInfo {
    pub field: FieldPos,
    /// Index into `Scan::resources`.
    pub resource: usize,
    /// The `InstrumentationScope` payload, when present.
    pub scope: Option<Range<usize>>,
}

/// A `ResourceSpans` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceInfo {
    pub field: FieldPos,
    /// The `Resource` payload, when present.
    pub resource: Option<Range<usize>>,
}

/// What the scan found. Scopes and resources are recorded only when they hold a flagged span.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scan {
    pub spans: u64,
    pub flagged: Vec<FlaggedSpan>,
    pub scopes: Vec<ScopeInfo>,
    pub resources: Vec<ResourceInfo>,
    /// With `ScanOptions::index`: every valid span, in request order.
    pub index: Vec<SpanAt>,
    /// With `ScanOptions::resources`: the `Resource` payload of every `ResourceSpans`.
    pub all_resources: Vec<Option<Range<usize>>>,
}

/// What `scan_with` records beyond the flagged spans (the failure side asks for these).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanOptions {
    /// Record every valid span in `Scan::index`.
    pub index: bool,
    /// Record every resource in `Scan::all_resources`.
    pub resources: bool,
}

/// A valid span of the request: where it is and where its trace id is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanAt {
    /// The span field inside its `ScopeSpans` (tag to end).
    pub field: FieldPos,
    /// Offset of the span's 16-byte trace id.
    pub trace_id_at: usize,
    /// Whether the span indexed just before it has the same trace id: a run of one trace's
    /// spans is looked up once, without reading each span's id again.
    pub same_trace: bool,
}

impl SpanAt {
    /// The span's trace id.
    #[inline]
    pub fn trace_id<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.trace_id_at..self.trace_id_at + 16]
    }
}

/// What to do with a flagged span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Append these bytes (encoded `attributes` fields) to the span.
    Append(Vec<u8>),
    /// Remove the span from the request.
    Drop,
}

/// Scans a trace request. Errors on malformed protobuf anywhere on the request's spine.
pub fn scan(buf: &[u8]) -> Result<Scan, WireError> {
    scan_with(buf, ScanOptions::default())
}

/// `scan`, also recording what `opts` asks for.
pub fn scan_with(buf: &[u8], opts: ScanOptions) -> Result<Scan, WireError> {
    let mut out = Scan::default();
    if opts.index {
        // Room for spans of ~384 bytes, so the index of a typical request is not regrown
        // (and copied) a dozen times.
        out.index.reserve(buf.len() / 384);
    }
    for rs in Fields::new(buf, 0..buf.len()) {
        let rs = rs?;
        if rs.number != 1 {
            continue;
        }
        scan_resource_spans(buf, &rs, opts, &mut out)?;
    }
    Ok(out)
}

fn scan_resource_spans(
    buf: &[u8],
    rs: &Field,
    opts: ScanOptions,
    out: &mut Scan,
) -> Result<(), WireError> {
    let mut resource = None;
    let mut resource_idx = None;
    for f in Fields::new(buf, expect_len(rs)?) {
        let f = f?;
        match f.number {
            1 => resource = Some(expect_len(&f)?),
            2 => {
                let range = expect_len(&f)?;
                let before = out.flagged.len();
                let scope_idx = out.scopes.len();
                let scope = scan_scope_spans(buf, range, scope_idx, opts.index, out)?;
                if out.flagged.len() > before {
                    let idx = *resource_idx.get_or_insert_with(|| {
                        out.resources.push(ResourceInfo {
                            field: FieldPos::from(rs),
                            resource: None,
                        });
                        out.resources.len() - 1
                    });
                    out.scopes.push(ScopeInfo {
                        field: FieldPos::from(&f),
                        resource: idx,
                        scope,
                    });
                }
            }
            _ => {}
        }
    }
    // The resource may come after the scopes on the wire; record it once all is read.
    if let Some(idx) = resource_idx {
        out.resources[idx].resource = resource.clone();
    }
    if opts.resources {
        out.all_resources.push(resource);
    }
    Ok(())
}

fn scan_scope_spans(
    buf: &[u8],
    range: Range<usize>,
    scope_idx: usize,
    index: bool,
    out: &mut Scan,
) -> Result<Option<Range<usize>>, WireError> {
    let mut scope = None;
    for f in Fields::new(buf, range) {
        let f = f?;
        match f.number {
            1 => scope = Some(expect_len(&f)?),
            2 => {
                let value = expect_len(&f)?;
                out.spans += 1;
                let (hints, invalid, trace_id_at) = scan_span_at(buf, value)?;
                if index && invalid.is_none() {
                    let mut at = SpanAt {
                        field: FieldPos::from(&f),
                        trace_id_at,
                        same_trace: false,
                    };
                    // The previous span's id is still in cache: compare now, not in a later pass.
                    at.same_trace = out
                        .index
                        .last()
                        .is_some_and(|prev| prev.trace_id(buf) == at.trace_id(buf));
                    out.index.push(at);
                }
                if hints != 0 || invalid.is_some() {
                    out.flagged.push(FlaggedSpan {
                        field: FieldPos::from(&f),
                        scope: scope_idx,
                        hints,
                        invalid,
                    });
                }
            }
            _ => {}
        }
    }
    Ok(scope)
}

/// Pre-filters one span: returns its hint bits and, if it must be rejected, why.
#[inline]
pub fn scan_span(buf: &[u8], range: Range<usize>) -> Result<(u16, Option<Invalid>), WireError> {
    scan_span_at(buf, range).map(|(h, i, _)| (h, i))
}

/// `scan_span`, also giving the offset of the trace id (meaningful when the span is valid).
#[inline]
fn scan_span_at(
    buf: &[u8],
    range: Range<usize>,
) -> Result<(u16, Option<Invalid>, usize), WireError> {
    let mut hints = 0u16;
    let mut trace_ok = false;
    let mut trace_id_at = 0;
    let mut span_ok = false;
    let mut utf8_ok = true;
    for f in Fields::new(buf, range) {
        let f = f?;
        match f.number {
            1 => {
                let id = expect_len(&f)?;
                trace_id_at = id.start;
                trace_ok = id_ok(&buf[id], 16);
            }
            2 => span_ok = id_ok(&buf[expect_len(&f)?], 8),
            3 | 5 => utf8_ok &= is_utf8(&buf[expect_len(&f)?]),
            9 => {
                let (h, ok) = attribute_hint(buf, expect_len(&f)?)?;
                hints |= h;
                utf8_ok &= ok;
            }
            11 => {
                let (h, ok) = event_hint(buf, expect_len(&f)?)?;
                hints |= h;
                utf8_ok &= ok;
            }
            15 => {
                let (error, ok) = status(buf, expect_len(&f)?)?;
                if error {
                    hints |= hint::STATUS_ERROR;
                }
                utf8_ok &= ok;
            }
            _ => {}
        }
    }
    let invalid = if !(trace_ok && span_ok) {
        Some(Invalid::Ids)
    } else if !utf8_ok {
        Some(Invalid::Utf8)
    } else {
        None
    };
    Ok((hints, invalid, trace_id_at))
}

#[inline]
fn is_utf8(b: &[u8]) -> bool {
    // Most telemetry strings are ASCII; simdutf8 hands short inputs to the slower std check.
    b.is_ascii() || simdutf8::basic::from_utf8(b).is_ok()
}

#[inline]
fn id_ok(id: &[u8], len: usize) -> bool {
    id.len() == len && id.iter().any(|&b| b != 0)
}

/// Whether a `Status` says ERROR, and whether its message is valid UTF-8.
#[inline]
fn status(buf: &[u8], range: Range<usize>) -> Result<(bool, bool), WireError> {
    let (mut error, mut ok) = (false, true);
    for f in Fields::new(buf, range) {
        let f = f?;
        match (f.number, f.wire_type) {
            (2, _) => ok = is_utf8(&buf[expect_len(&f)?]),
            (3, WT_VARINT) => error = f.scalar == 2,
            _ => {}
        }
    }
    Ok((error, ok))
}

/// The key of a `KeyValue`, its `AnyValue` payload, and whether the key and a string value are
/// valid UTF-8 (nested array and kvlist values are passed through unchecked).
#[inline]
fn key_value(buf: &[u8], range: Range<usize>) -> Result<(&[u8], Range<usize>, bool), WireError> {
    let mut key: &[u8] = &[];
    let mut value = 0..0;
    for f in Fields::new(buf, range) {
        let f = f?;
        match f.number {
            1 => key = &buf[expect_len(&f)?],
            2 => value = expect_len(&f)?,
            _ => {}
        }
    }
    let mut ok = is_utf8(key);
    for f in Fields::new(buf, value.clone()) {
        let f = f?;
        if f.number == 1 {
            ok &= is_utf8(&buf[expect_len(&f)?]);
        }
    }
    Ok((key, value, ok))
}

/// The hint bits an attribute sets, and whether its strings are valid UTF-8.
#[inline]
fn attribute_hint(buf: &[u8], range: Range<usize>) -> Result<(u16, bool), WireError> {
    let (key, value, ok) = key_value(buf, range)?;
    // Dispatch on length first: most attribute keys are rejected by one comparison.
    let h = match key.len() {
        10 if key == b"error.type" => hint::ERROR_TYPE,
        13 if key == b"failure.class" => hint::ALREADY_TAGGED,
        16 if key == b"guardrail.passed" => hint::GUARDRAIL,
        19 if key == b"guardrail.triggered" => hint::GUARDRAIL,
        23 if key == b"openinference.span.kind"
            && memmem::find(&buf[value.clone()], b"GUARDRAIL").is_some() =>
        {
            hint::GUARDRAIL
        }
        30 if key == b"gen_ai.response.finish_reasons"
            && memmem::find(&buf[value.clone()], b"content_filter").is_some() =>
        {
            hint::CONTENT_FILTER
        }
        n if n > 12 && key.starts_with(b"evaluations.") => hint::OI_EVALUATION,
        n if n > 14 && key.starts_with(b"user.feedback.") => hint::FEEDBACK_ATTR,
        _ => 0,
    };
    Ok((h, ok))
}

/// The hint bits an event sets, and whether its name and attributes are valid UTF-8.
#[inline]
fn event_hint(buf: &[u8], range: Range<usize>) -> Result<(u16, bool), WireError> {
    let (mut h, mut ok) = (0, true);
    for f in Fields::new(buf, range) {
        let f = f?;
        match f.number {
            2 => {
                let name = &buf[expect_len(&f)?];
                ok &= is_utf8(name);
                h = match name {
                    b"exception" => hint::EXCEPTION_EVENT,
                    b"gen_ai.evaluation.result" => hint::EVALUATION_EVENT,
                    b"user.feedback" => hint::FEEDBACK_EVENT,
                    _ => 0,
                };
            }
            3 => ok &= key_value(buf, expect_len(&f)?)?.2,
            _ => {}
        }
    }
    Ok((h, ok))
}

/// Writes `buf` with `edits` applied; `edits` pairs a flagged span (by index into `scan.flagged`)
/// with what to do to it, in ascending index order. Enclosing length prefixes are rewritten.
/// The copying form (tests and the fuzz target check `splice_shared` against it).
pub fn splice(buf: &[u8], scan: &Scan, edits: &[(usize, Edit)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(buf.len());
    splice_into(buf, scan, edits, &mut out);
    out
}

/// `splice`, sharing `buf`: the result is slices of `buf` interleaved with the bytes that
/// changed (length prefixes, appended attributes), so the unchanged spans are not copied.
pub fn splice_shared(buf: &Bytes, scan: &Scan, edits: &[(usize, Edit)]) -> Payload {
    let appended: usize = edits
        .iter()
        .map(|(_, e)| match e {
            Edit::Append(extra) => extra.len(),
            Edit::Drop => 0,
        })
        .sum();
    let mut out = Parts {
        src: buf,
        parts: Vec::with_capacity(4 * edits.len() + 2),
        // The new bytes, and room for the short runs of the source copied between them.
        new: Vec::with_capacity(appended + 64 * edits.len() + 2 * MIN_SHARED),
        run_start: 0,
    };
    splice_into(buf, scan, edits, &mut out);
    Payload::from_parts(out.finish())
}

/// Where a splice writes: ranges of the source and new bytes, in order.
trait SpliceOut {
    fn copy(&mut self, src: &[u8], range: Range<usize>);
    fn put(&mut self, bytes: &[u8]);
    fn varint(&mut self, v: u64);
}

impl SpliceOut for Vec<u8> {
    #[inline]
    fn copy(&mut self, src: &[u8], range: Range<usize>) {
        self.extend_from_slice(&src[range]);
    }
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    #[inline]
    fn varint(&mut self, v: u64) {
        write_varint(self, v);
    }
}

/// Source ranges shorter than this are copied rather than shared: a slice costs a reference
/// count and a part of its own, which a few hundred bytes of copying beat.
const MIN_SHARED: usize = 512;

/// Builds a `Payload` out of shared slices of `src` and runs of new bytes, all of which are
/// written to one buffer (one allocation for a request's new bytes, not one per run).
struct Parts<'a> {
    src: &'a Bytes,
    parts: Vec<Part>,
    /// New bytes (and short source ranges copied), every run of them.
    new: Vec<u8>,
    /// Where in `new` the run not yet made a part starts.
    run_start: usize,
}

/// One part of a spliced payload: a range of the source or of the new bytes.
enum Part {
    Source(Range<usize>),
    New(Range<usize>),
}

impl Parts<'_> {
    /// Ends the current run of new bytes (if any) as a part.
    fn flush(&mut self) {
        if self.new.len() > self.run_start {
            self.parts.push(Part::New(self.run_start..self.new.len()));
            self.run_start = self.new.len();
        }
    }

    /// The parts, in order.
    fn finish(mut self) -> Vec<Bytes> {
        self.flush();
        let new = Bytes::from(self.new);
        self.parts
            .into_iter()
            .map(|p| match p {
                Part::Source(r) => self.src.slice(r),
                Part::New(r) => new.slice(r),
            })
            .collect()
    }
}

impl SpliceOut for Parts<'_> {
    #[inline]
    fn copy(&mut self, src: &[u8], range: Range<usize>) {
        if range.len() < MIN_SHARED {
            self.new.extend_from_slice(&src[range]);
        } else {
            self.flush();
            self.parts.push(Part::Source(range));
        }
    }
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.new.extend_from_slice(bytes);
    }
    #[inline]
    fn varint(&mut self, v: u64) {
        write_varint(&mut self.new, v);
    }
}

/// Per scope and per resource: how much its payload changes with `edits` applied.
fn deltas(scan: &Scan, edits: &[(usize, Edit)]) -> (Vec<isize>, Vec<isize>) {
    let delta_of = |span: &FieldPos, edit: &Edit| -> isize {
        match edit {
            Edit::Drop => -((span.end - span.start) as isize),
            Edit::Append(extra) => {
                let old = span.end - span.value_start;
                let new = old + extra.len();
                (extra.len() + varint_len(new as u64) - varint_len(old as u64)) as isize
            }
        }
    };
    let mut scope_delta = vec![0isize; scan.scopes.len()];
    for (i, edit) in edits {
        let f = &scan.flagged[*i];
        scope_delta[f.scope] += delta_of(&f.field, edit);
    }
    let mut resource_delta = vec![0isize; scan.resources.len()];
    for (s, d) in scan.scopes.iter().zip(&scope_delta) {
        if *d != 0 {
            resource_delta[s.resource] += field_delta(&s.field, *d);
        }
    }
    (scope_delta, resource_delta)
}

fn splice_into(buf: &[u8], scan: &Scan, edits: &[(usize, Edit)], out: &mut impl SpliceOut) {
    let (scope_delta, resource_delta) = deltas(scan, edits);
    let mut pos = 0;
    let mut edits = edits.iter().peekable();
    let mut open_resource = None;
    for (si, scope) in scan.scopes.iter().enumerate() {
        // Scopes are recorded only when they hold a flagged span; skip those with no edit.
        if edits
            .peek()
            .is_none_or(|(i, _)| scan.flagged[*i].scope != si)
        {
            continue;
        }
        if open_resource != Some(scope.resource) {
            let r = &scan.resources[scope.resource];
            out.copy(buf, pos..r.field.tag_end);
            let len = (r.field.end - r.field.value_start) as isize + resource_delta[scope.resource];
            out.varint(len as u64);
            pos = r.field.value_start;
            open_resource = Some(scope.resource);
        }
        out.copy(buf, pos..scope.field.tag_end);
        let len = (scope.field.end - scope.field.value_start) as isize + scope_delta[si];
        out.varint(len as u64);
        pos = scope.field.value_start;
        while let Some((i, edit)) = edits.next_if(|(i, _)| scan.flagged[*i].scope == si) {
            let span = &scan.flagged[*i].field;
            out.copy(buf, pos..span.start);
            if let Edit::Append(extra) = edit {
                out.copy(buf, span.start..span.tag_end);
                out.varint((span.end - span.value_start + extra.len()) as u64);
                out.copy(buf, span.value_start..span.end);
                out.put(extra);
            }
            pos = span.end;
        }
    }
    out.copy(buf, pos..buf.len());
}

/// How much a length-delimited field grows when its payload grows by `payload_delta`.
fn field_delta(field: &FieldPos, payload_delta: isize) -> isize {
    let old = field.end - field.value_start;
    let new = (old as isize + payload_delta) as usize;
    payload_delta + varint_len(new as u64) as isize - varint_len(old as u64) as isize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::Fleet;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
    use prost::Message;

    fn extra_attr(key: &str, len: usize) -> Vec<u8> {
        let kv = KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(Value::StringValue("x".repeat(len))),
            }),
            ..Default::default()
        };
        let mut out = Vec::new();
        prost::encoding::message::encode(9, &kv, &mut out);
        out
    }

    #[test]
    fn clean_request_is_not_flagged() {
        let mut fleet = Fleet::new(7, 0);
        let (req, _) = fleet.request(50);
        let buf = req.encode_to_vec();
        let s = scan(&buf).unwrap();
        assert_eq!(s.spans, 200);
        assert!(s.flagged.is_empty(), "{:?}", s.flagged);
    }

    #[test]
    fn the_index_notes_which_spans_continue_the_previous_spans_trace() {
        let (req, _) = Fleet::new(5, 20).request(8);
        let buf = crate::synth::interleaved(req).encode_to_vec();
        let opts = ScanOptions {
            index: true,
            resources: false,
        };
        let s = scan_with(&buf, opts).unwrap();
        assert_eq!(s.index.len() as u64, s.spans);
        let (mut same, mut changed) = (0, 0);
        for (i, at) in s.index.iter().enumerate() {
            let want = i > 0 && s.index[i - 1].trace_id(&buf) == at.trace_id(&buf);
            assert_eq!(at.same_trace, want, "span {i}");
            if want {
                same += 1
            } else {
                changed += 1
            }
        }
        assert!(same > 0 && changed > 1, "same {same}, changed {changed}");
    }

    #[test]
    fn splice_appends_and_drops_like_prost_would() {
        let mut fleet = Fleet::new(11, 40);
        let (req, _) = fleet.request(60);
        let buf = req.encode_to_vec();
        let s = scan(&buf).unwrap();
        assert!(s.flagged.len() > 5);
        // Append growing payloads so some length prefixes cross varint boundaries, and drop
        // every third flagged span.
        let mut edits = Vec::new();
        for i in 0..s.flagged.len() {
            let e = if i % 3 == 2 {
                Edit::Drop
            } else {
                Edit::Append(extra_attr("failure.class", 20 + i * 60))
            };
            edits.push((i, e));
        }
        let out = splice(&buf, &s, &edits);
        let got = ExportTraceServiceRequest::decode(&out[..]).unwrap();

        // The same edits made on the decoded request.
        let mut want = req.clone();
        let mut flagged_ids = Vec::new();
        for f in &s.flagged {
            let span =
                opentelemetry_proto::tonic::trace::v1::Span::decode(&buf[f.field.value()]).unwrap();
            flagged_ids.push(span.span_id);
        }
        for rs in &mut want.resource_spans {
            for ss in &mut rs.scope_spans {
                ss.spans.retain_mut(|span| {
                    let Some(i) = flagged_ids.iter().position(|id| *id == span.span_id) else {
                        return true;
                    };
                    match &edits[i].1 {
                        Edit::Drop => false,
                        Edit::Append(extra) => {
                            let mut b = span.encode_to_vec();
                            b.extend_from_slice(extra);
                            *span = opentelemetry_proto::tonic::trace::v1::Span::decode(&b[..])
                                .unwrap();
                            true
                        }
                    }
                });
            }
        }
        assert_eq!(got, want);
        assert_eq!(
            scan(&out).unwrap().spans,
            s.spans - (s.flagged.len() / 3) as u64
        );
    }

    #[test]
    fn shared_splice_is_the_same_bytes_without_copying_long_runs() {
        for (seed, percent, traces) in [(11, 40, 60), (12, 5, 300), (13, 100, 3)] {
            let (req, _) = Fleet::new(seed, percent).request(traces);
            let buf = Bytes::from(req.encode_to_vec());
            let s = scan(&buf).unwrap();
            assert!(!s.flagged.is_empty());
            let edits: Vec<_> = (0..s.flagged.len())
                .map(|i| match i % 4 {
                    3 => (i, Edit::Drop),
                    _ => (i, Edit::Append(extra_attr("failure.class", 10 + i * 70))),
                })
                .collect();
            let want = splice(&buf, &s, &edits);
            let got = splice_shared(&buf, &s, &edits);
            assert_eq!(got.len(), want.len());
            assert_eq!(&got.to_bytes()[..], &want[..]);
            // Runs of the source at least MIN_SHARED long are slices of it, not copies.
            let range = buf.as_ptr_range();
            let shared: usize = got
                .parts()
                .iter()
                .filter(|p| range.contains(&p.as_ptr()))
                .map(|p| p.len())
                .sum();
            assert!(
                got.parts()
                    .iter()
                    .filter(|p| range.contains(&p.as_ptr()))
                    .all(|p| p.len() >= MIN_SHARED),
                "a shared part is shorter than MIN_SHARED"
            );
            assert!(shared > buf.len() / 2, "shared {shared} of {}", buf.len());
        }
    }

    #[test]
    fn invalid_ids_and_utf8_are_flagged() {
        let mut fleet = Fleet::new(3, 0);
        let (mut req, _) = fleet.request(2);
        let spans = &mut req.resource_spans[0].scope_spans[0].spans;
        spans[0].span_id = vec![0; 8];
        spans[1].trace_id = vec![1; 15];
        let mut buf = req.encode_to_vec();
        // Corrupt one span name into invalid UTF-8.
        let name = req.resource_spans[0].scope_spans[0].spans[2].name.clone();
        let at = memmem::find(&buf, name.as_bytes()).unwrap();
        buf[at] = 0xff;
        let s = scan(&buf).unwrap();
        let invalid: Vec<_> = s.flagged.iter().filter_map(|f| f.invalid).collect();
        assert_eq!(invalid, vec![Invalid::Ids, Invalid::Ids, Invalid::Utf8]);
    }

    #[test]
    fn garbage_never_panics() {
        let mut fleet = Fleet::new(5, 50);
        let (req, _) = fleet.request(10);
        let buf = req.encode_to_vec();
        for cut in (0..buf.len()).step_by(7) {
            let _ = scan(&buf[..cut]);
        }
        let mut x = 0x1234_5678_u64;
        for _ in 0..2000 {
            let mut b = buf.clone();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x as usize) % b.len();
                b[i] = (x >> 32) as u8;
            }
            if let Ok(s) = scan(&b) {
                let edits: Vec<_> = (0..s.flagged.len()).map(|i| (i, Edit::Drop)).collect();
                let _ = splice(&b, &s, &edits);
            }
        }
    }
}
