//! Scans OTLP trace requests on the wire for spans worth a closer look, and splices edits back in.
//!
//! `scan` walks `ExportTraceServiceRequest → ResourceSpans → ScopeSpans → Span` and, for each span,
//! only the fields that can reveal a failure signal. `splice` writes a new request in which chosen
//! spans get extra attributes appended or are removed, copying every other byte unchanged.

use std::ops::Range;

use memchr::memmem;

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
    /// Trace id is not 16 bytes or span id not 8 bytes (or all zero).
    pub invalid_ids: bool,
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
    let mut out = Scan::default();
    for rs in Fields::new(buf, 0..buf.len()) {
        let rs = rs?;
        if rs.number != 1 {
            continue;
        }
        scan_resource_spans(buf, &rs, &mut out)?;
    }
    Ok(out)
}

fn scan_resource_spans(buf: &[u8], rs: &Field, out: &mut Scan) -> Result<(), WireError> {
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
                let scope = scan_scope_spans(buf, range, scope_idx, out)?;
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
        out.resources[idx].resource = resource;
    }
    Ok(())
}

fn scan_scope_spans(
    buf: &[u8],
    range: Range<usize>,
    scope_idx: usize,
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
                let (hints, invalid_ids) = scan_span(buf, value)?;
                if hints != 0 || invalid_ids {
                    out.flagged.push(FlaggedSpan {
                        field: FieldPos::from(&f),
                        scope: scope_idx,
                        hints,
                        invalid_ids,
                    });
                }
            }
            _ => {}
        }
    }
    Ok(scope)
}

/// Pre-filters one span: returns its hint bits and whether its ids are invalid.
#[inline]
pub fn scan_span(buf: &[u8], range: Range<usize>) -> Result<(u16, bool), WireError> {
    let mut hints = 0u16;
    let mut trace_ok = false;
    let mut span_ok = false;
    for f in Fields::new(buf, range) {
        let f = f?;
        match (f.number, f.wire_type) {
            (1, _) => trace_ok = id_ok(&buf[expect_len(&f)?], 16),
            (2, _) => span_ok = id_ok(&buf[expect_len(&f)?], 8),
            (9, _) => hints |= attribute_hint(buf, expect_len(&f)?)?,
            (11, _) => hints |= event_hint(buf, expect_len(&f)?)?,
            (15, _) => {
                if status_is_error(buf, expect_len(&f)?)? {
                    hints |= hint::STATUS_ERROR;
                }
            }
            _ => {}
        }
    }
    Ok((hints, !(trace_ok && span_ok)))
}

#[inline]
fn id_ok(id: &[u8], len: usize) -> bool {
    id.len() == len && id.iter().any(|&b| b != 0)
}

#[inline]
fn status_is_error(buf: &[u8], range: Range<usize>) -> Result<bool, WireError> {
    for f in Fields::new(buf, range) {
        let f = f?;
        if f.number == 3 && f.wire_type == WT_VARINT {
            return Ok(f.scalar == 2);
        }
    }
    Ok(false)
}

/// The key of a `KeyValue` and its `AnyValue` payload.
#[inline]
fn key_value(buf: &[u8], range: Range<usize>) -> Result<(&[u8], Range<usize>), WireError> {
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
    Ok((key, value))
}

#[inline]
fn attribute_hint(buf: &[u8], range: Range<usize>) -> Result<u16, WireError> {
    let (key, value) = key_value(buf, range)?;
    // Dispatch on length first: most attribute keys are rejected by one comparison.
    Ok(match key.len() {
        10 if key == b"error.type" => hint::ERROR_TYPE,
        13 if key == b"failure.class" => hint::ALREADY_TAGGED,
        16 if key == b"guardrail.passed" => hint::GUARDRAIL,
        19 if key == b"guardrail.triggered" => hint::GUARDRAIL,
        23 if key == b"openinference.span.kind" => {
            if memmem::find(&buf[value], b"GUARDRAIL").is_some() {
                hint::GUARDRAIL
            } else {
                0
            }
        }
        30 if key == b"gen_ai.response.finish_reasons" => {
            if memmem::find(&buf[value], b"content_filter").is_some() {
                hint::CONTENT_FILTER
            } else {
                0
            }
        }
        n if n > 12 && key.starts_with(b"evaluations.") => hint::OI_EVALUATION,
        n if n > 14 && key.starts_with(b"user.feedback.") => hint::FEEDBACK_ATTR,
        _ => 0,
    })
}

#[inline]
fn event_hint(buf: &[u8], range: Range<usize>) -> Result<u16, WireError> {
    for f in Fields::new(buf, range) {
        let f = f?;
        if f.number == 2 {
            let name = &buf[expect_len(&f)?];
            return Ok(match name {
                b"exception" => hint::EXCEPTION_EVENT,
                b"gen_ai.evaluation.result" => hint::EVALUATION_EVENT,
                b"user.feedback" => hint::FEEDBACK_EVENT,
                _ => 0,
            });
        }
    }
    Ok(0)
}

/// Writes `buf` with `edits` applied; `edits` pairs a flagged span (by index into `scan.flagged`)
/// with what to do to it, in ascending index order. Enclosing length prefixes are rewritten.
pub fn splice(buf: &[u8], scan: &Scan, edits: &[(usize, Edit)]) -> Vec<u8> {
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
    // Per scope: the change of its payload length; per resource likewise.
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
    let growth: isize = resource_delta
        .iter()
        .zip(&scan.resources)
        .map(|(d, r)| field_delta(&r.field, *d))
        .sum();
    let mut out = Vec::with_capacity((buf.len() as isize + growth.max(0)) as usize);
    let mut pos = 0;
    let mut edits = edits.iter().peekable();
    let mut open_resource = None;
    for (si, scope) in scan.scopes.iter().enumerate() {
        if scope_delta[si] == 0
            && !edits
                .peek()
                .is_some_and(|(i, _)| scan.flagged[*i].scope == si)
        {
            continue;
        }
        if open_resource != Some(scope.resource) {
            let r = &scan.resources[scope.resource];
            out.extend_from_slice(&buf[pos..r.field.tag_end]);
            let len = (r.field.end - r.field.value_start) as isize + resource_delta[scope.resource];
            write_varint(&mut out, len as u64);
            pos = r.field.value_start;
            open_resource = Some(scope.resource);
        }
        out.extend_from_slice(&buf[pos..scope.field.tag_end]);
        let len = (scope.field.end - scope.field.value_start) as isize + scope_delta[si];
        write_varint(&mut out, len as u64);
        pos = scope.field.value_start;
        while let Some((i, edit)) = edits.next_if(|(i, _)| scan.flagged[*i].scope == si) {
            let span = &scan.flagged[*i].field;
            out.extend_from_slice(&buf[pos..span.start]);
            if let Edit::Append(extra) = edit {
                out.extend_from_slice(&buf[span.start..span.tag_end]);
                write_varint(&mut out, (span.end - span.value_start + extra.len()) as u64);
                out.extend_from_slice(&buf[span.value_start..span.end]);
                out.extend_from_slice(extra);
            }
            pos = span.end;
        }
    }
    out.extend_from_slice(&buf[pos..]);
    out
}

/// How much a length-delimited field grows when its payload grows by `payload_delta`.
fn field_delta(field: &FieldPos, payload_delta: isize) -> isize {
    let old = field.end - field.value_start;
    let new = (old as isize + payload_delta) as usize;
    payload_delta + varint_len(new as u64) as isize - varint_len(old as u64) as isize
}
