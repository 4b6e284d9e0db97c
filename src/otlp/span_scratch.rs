//! Decoding that reuses what was decoded before, for the hot path's signal spans: a `Span` is
//! decoded into the memory of the last one, so ids, strings and attribute slots keep their
//! capacity and a span like the one before costs no allocation. Fields are read by prost's own
//! rules for keys and varints, and whatever this decoder does not take on itself (a malformed
//! span, links, groups, an array or map value nested deep) is left to prost, so the result is
//! always the span, or the error, prost gives (the `span_decode` fuzz target checks it).
//! Resources and scopes are decoded once and shared while their bytes recur (`Recent`).

use std::rc::Rc;

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::Event;
use opentelemetry_proto::tonic::trace::v1::{Span, Status};
use prost::Message;

use std::ops::Range;

use prost::encoding::{decode_key, decode_varint, WireType};

/// Spare attribute and event slots kept between spans, at most.
const MAX_SPARE: usize = 256;
/// A span whose encoding is larger than this is not kept as the next span's memory.
const MAX_KEPT_BYTES: usize = 16 << 10;
/// Arrays and maps nested deeper than this in one attribute value leave the span to prost,
/// whose recursion limit counts from the span (a value decoded on its own would get more).
const MAX_NESTING: usize = 24;

/// Why the fast decoder handed a span to prost (never shown: prost decides the outcome).
#[derive(Debug)]
struct NotFast;

impl From<prost::DecodeError> for NotFast {
    fn from(_: prost::DecodeError) -> Self {
        NotFast
    }
}

/// One field of a message, read by prost's own rules for keys and varints.
struct Field {
    number: u32,
    wire_type: WireType,
    /// The varint, or the fixed-width value's bits.
    scalar: u64,
    /// A length-delimited field's payload.
    value: Range<usize>,
}

/// The fields of the message in `buf[range]`; stops at the first malformed one.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8], range: Range<usize>) -> Self {
        Fields {
            buf,
            pos: range.start,
            end: range.end,
        }
    }

    fn read(&self, rest: &mut &[u8]) -> Result<Field, NotFast> {
        let (number, wire_type) = decode_key(rest)?;
        let mut field = Field {
            number,
            wire_type,
            scalar: 0,
            value: 0..0,
        };
        match wire_type {
            WireType::Varint => field.scalar = decode_varint(rest)?,
            WireType::SixtyFourBit => field.scalar = fixed_bits::<8>(rest)?,
            WireType::ThirtyTwoBit => field.scalar = fixed_bits::<4>(rest)?,
            WireType::LengthDelimited => {
                let len = decode_varint(rest)?;
                let len = usize::try_from(len)
                    .ok()
                    .filter(|&l| l <= rest.len())
                    .ok_or(NotFast)?;
                let start = self.end - rest.len();
                field.value = start..start + len;
                *rest = &rest[len..];
            }
            // Groups (deprecated) are prost's to skip.
            WireType::StartGroup | WireType::EndGroup => return Err(NotFast),
        }
        Ok(field)
    }
}

impl Iterator for Fields<'_> {
    type Item = Result<Field, NotFast>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.end {
            return None;
        }
        let mut rest = &self.buf[self.pos..self.end];
        let field = self.read(&mut rest);
        self.pos = if field.is_ok() {
            self.end - rest.len()
        } else {
            self.end
        };
        Some(field)
    }
}

/// The next `N` bytes as a little-endian number.
fn fixed_bits<const N: usize>(rest: &mut &[u8]) -> Result<u64, NotFast> {
    let bytes = rest.get(..N).ok_or(NotFast)?;
    let mut raw = [0u8; 8];
    raw[..N].copy_from_slice(bytes);
    *rest = &rest[N..];
    Ok(u64::from_le_bytes(raw))
}

fn len_field(f: &Field) -> Result<Range<usize>, NotFast> {
    (f.wire_type == WireType::LengthDelimited)
        .then(|| f.value.clone())
        .ok_or(NotFast)
}

/// Messages kept by `Recent`, at most.
const RECENT: usize = 4;
/// Messages larger than this (encoded) are decoded each time, not kept.
const MAX_RECENT_BYTES: usize = 4 << 10;

/// The last few messages decoded, by their bytes: a resource or scope that recurs (every request
/// of one SDK carries the same ones) is decoded once.
#[derive(Debug)]
pub struct Recent<T> {
    /// Most recently used first.
    kept: Vec<(Box<[u8]>, Rc<T>)>,
}

impl<T> Default for Recent<T> {
    fn default() -> Self {
        Recent { kept: Vec::new() }
    }
}

impl<T: Message + Default> Recent<T> {
    /// The message encoded in `bytes`: the kept one when these bytes were decoded lately, else
    /// decoded (and kept if small). `None` when it does not decode.
    pub fn decode(&mut self, bytes: &[u8]) -> Option<Rc<T>> {
        if let Some(i) = self.kept.iter().position(|(b, _)| **b == *bytes) {
            let hit = self.kept.remove(i);
            let msg = hit.1.clone();
            self.kept.insert(0, hit);
            return Some(msg);
        }
        let msg = Rc::new(T::decode(bytes).ok()?);
        if bytes.len() <= MAX_RECENT_BYTES {
            self.kept.truncate(RECENT - 1);
            self.kept.insert(0, (bytes.into(), msg.clone()));
        }
        Some(msg)
    }
}

/// The span decoded last and the slots it did not use.
#[derive(Debug, Default)]
pub struct SpanScratch {
    span: Span,
    spare_attributes: Vec<KeyValue>,
    spare_events: Vec<Event>,
    /// The last span was larger than `MAX_KEPT_BYTES`: start from empty memory.
    discard: bool,
}

impl SpanScratch {
    /// Decodes the `Span` encoded in `buf`, reusing the memory of the span decoded before.
    /// The same span (or error) as `Span::decode(buf)`.
    pub fn decode(&mut self, buf: &[u8]) -> Result<&Span, prost::DecodeError> {
        if std::mem::take(&mut self.discard) {
            *self = SpanScratch::default();
        }
        self.discard = buf.len() > MAX_KEPT_BYTES;
        if self.decode_fast(buf).is_err() {
            self.span = Span::decode(buf)?;
        }
        Ok(&self.span)
    }

    fn decode_fast(&mut self, buf: &[u8]) -> Result<(), NotFast> {
        let span = &mut self.span;
        span.trace_id.clear();
        span.span_id.clear();
        span.trace_state.clear();
        span.parent_span_id.clear();
        span.name.clear();
        span.flags = 0;
        span.kind = 0;
        span.start_time_unix_nano = 0;
        span.end_time_unix_nano = 0;
        span.dropped_attributes_count = 0;
        span.dropped_events_count = 0;
        span.dropped_links_count = 0;
        span.links.clear();
        let mut old_status = span.status.take();
        let (mut attributes, mut events) = (0, 0);
        let result = (|| {
            for f in Fields::new(buf, 0..buf.len()) {
                let f = f?;
                match f.number {
                    1 => bytes_into(&mut span.trace_id, buf, &f)?,
                    2 => bytes_into(&mut span.span_id, buf, &f)?,
                    3 => string_into(&mut span.trace_state, buf, &f)?,
                    4 => bytes_into(&mut span.parent_span_id, buf, &f)?,
                    5 => string_into(&mut span.name, buf, &f)?,
                    6 => span.kind = varint(&f)? as i32,
                    7 => span.start_time_unix_nano = fixed(&f, WireType::SixtyFourBit)?,
                    8 => span.end_time_unix_nano = fixed(&f, WireType::SixtyFourBit)?,
                    9 => {
                        let kv = slot(&mut span.attributes, &mut self.spare_attributes, attributes);
                        attributes += 1;
                        key_value_into(kv, buf, &f)?;
                    }
                    10 => span.dropped_attributes_count = varint(&f)? as u32,
                    11 => {
                        let ev = slot(&mut span.events, &mut self.spare_events, events);
                        events += 1;
                        event_into(ev, &mut self.spare_attributes, buf, &f)?;
                    }
                    12 => span.dropped_events_count = varint(&f)? as u32,
                    // Links are rare on agent spans; prost decodes a span that has them.
                    13 => return Err(NotFast),
                    14 => span.dropped_links_count = varint(&f)? as u32,
                    15 => {
                        if span.status.is_none() {
                            let mut st = old_status.take().unwrap_or_default();
                            st.message.clear();
                            st.code = 0;
                            span.status = Some(st);
                        }
                        // A repeated status merges into the first, as prost merges it.
                        let st = span.status.as_mut().ok_or(NotFast)?;
                        status_into(st, buf, &f)?;
                    }
                    16 => span.flags = fixed(&f, WireType::ThirtyTwoBit)? as u32,
                    _ => {}
                }
            }
            Ok(())
        })();
        release(&mut span.attributes, &mut self.spare_attributes, attributes);
        for ev in span.events.iter_mut().skip(events) {
            release(&mut ev.attributes, &mut self.spare_attributes, 0);
        }
        release(&mut span.events, &mut self.spare_events, events);
        result
    }
}

/// The `i`th slot of `v`, taken from `spare` (or made) when `v` has fewer.
fn slot<'a, T: Default>(v: &'a mut Vec<T>, spare: &mut Vec<T>, i: usize) -> &'a mut T {
    if i == v.len() {
        v.push(spare.pop().unwrap_or_default());
    }
    &mut v[i]
}

/// Keeps the first `used` slots of `v` and moves the rest to `spare` (up to `MAX_SPARE`).
fn release<T>(v: &mut Vec<T>, spare: &mut Vec<T>, used: usize) {
    if v.len() > used {
        let room = MAX_SPARE.saturating_sub(spare.len());
        spare.extend(v.drain(used..).take(room));
        v.truncate(used);
    }
}

fn varint(f: &Field) -> Result<u64, NotFast> {
    (f.wire_type == WireType::Varint)
        .then_some(f.scalar)
        .ok_or(NotFast)
}

fn fixed(f: &Field, wire_type: WireType) -> Result<u64, NotFast> {
    (f.wire_type == wire_type)
        .then_some(f.scalar)
        .ok_or(NotFast)
}

fn bytes_into(out: &mut Vec<u8>, buf: &[u8], f: &Field) -> Result<(), NotFast> {
    out.clear();
    out.extend_from_slice(&buf[len_field(f)?]);
    Ok(())
}

fn string_into(out: &mut String, buf: &[u8], f: &Field) -> Result<(), NotFast> {
    let s = std::str::from_utf8(&buf[len_field(f)?]).map_err(|_| NotFast)?;
    out.clear();
    out.push_str(s);
    Ok(())
}

/// A `KeyValue` into a reused slot: its key's memory, and its string value's.
fn key_value_into(kv: &mut KeyValue, buf: &[u8], f: &Field) -> Result<(), NotFast> {
    let range = len_field(f)?;
    kv.key.clear();
    kv.key_strindex = 0;
    let mut old = kv.value.take();
    for g in Fields::new(buf, range) {
        let g = g?;
        match g.number {
            1 => string_into(&mut kv.key, buf, &g)?,
            3 => kv.key_strindex = varint(&g)? as i32,
            2 => {
                // A repeated value would merge into the first: prost's to do.
                if kv.value.is_some() {
                    return Err(NotFast);
                }
                kv.value = Some(any_value_into(old.take(), buf, &g)?);
            }
            _ => {}
        }
    }
    Ok(())
}

/// An `AnyValue` holding one scalar or string field, reusing `old`'s string; anything else
/// (arrays, maps, bytes, several fields) is decoded by prost.
fn any_value_into(old: Option<AnyValue>, buf: &[u8], f: &Field) -> Result<AnyValue, NotFast> {
    use any_value::Value;
    let range = len_field(f)?;
    let mut fields = Fields::new(buf, range.clone());
    let (Some(first), None) = (fields.next(), fields.next()) else {
        return prost_any(buf, range);
    };
    let g = first?;
    let value = match (g.number, g.wire_type) {
        (1, WireType::LengthDelimited) => {
            let mut s = match old.and_then(|a| a.value) {
                Some(Value::StringValue(s)) => s,
                _ => String::new(),
            };
            string_into(&mut s, buf, &g)?;
            Value::StringValue(s)
        }
        (2, WireType::Varint) => Value::BoolValue(g.scalar != 0),
        (3, WireType::Varint) => Value::IntValue(g.scalar as i64),
        (4, WireType::SixtyFourBit) => Value::DoubleValue(f64::from_bits(g.scalar)),
        _ => return prost_any(buf, range),
    };
    Ok(AnyValue { value: Some(value) })
}

/// An array, map or bytes value (or an odd one), decoded by prost when it nests no deeper than
/// `MAX_NESTING`.
fn prost_any(buf: &[u8], range: Range<usize>) -> Result<AnyValue, NotFast> {
    if !shallow(buf, range.clone(), 0) {
        return Err(NotFast);
    }
    Ok(AnyValue::decode(&buf[range])?)
}

/// Whether the `AnyValue` in `buf[range]` nests fewer than `MAX_NESTING - depth` arrays and
/// maps. A malformed one counts as shallow: prost refuses it anyway.
fn shallow(buf: &[u8], range: Range<usize>, depth: usize) -> bool {
    if depth >= MAX_NESTING {
        return false;
    }
    // AnyValue.array_value (5) holds AnyValues (field 1); kvlist_value (6) holds KeyValues
    // (field 1), whose value (field 2) is an AnyValue.
    let nested = |range: Range<usize>, inner: u32| {
        Fields::new(buf, range)
            .flatten()
            .filter(|g| g.number == 1 && g.wire_type == WireType::LengthDelimited)
            .all(|g| match inner {
                0 => shallow(buf, g.value, depth + 1),
                _ => Fields::new(buf, g.value)
                    .flatten()
                    .filter(|h| h.number == 2 && h.wire_type == WireType::LengthDelimited)
                    .all(|h| shallow(buf, h.value, depth + 1)),
            })
    };
    Fields::new(buf, range)
        .flatten()
        .filter(|f| f.wire_type == WireType::LengthDelimited)
        .all(|f| match f.number {
            5 => nested(f.value, 0),
            6 => nested(f.value, 1),
            _ => true,
        })
}

fn event_into(
    ev: &mut Event,
    spare: &mut Vec<KeyValue>,
    buf: &[u8],
    f: &Field,
) -> Result<(), NotFast> {
    let range = len_field(f)?;
    ev.time_unix_nano = 0;
    ev.name.clear();
    ev.dropped_attributes_count = 0;
    let mut attributes = 0;
    let result = (|| {
        for g in Fields::new(buf, range) {
            let g = g?;
            match g.number {
                1 => ev.time_unix_nano = fixed(&g, WireType::SixtyFourBit)?,
                2 => string_into(&mut ev.name, buf, &g)?,
                3 => {
                    let kv = slot(&mut ev.attributes, spare, attributes);
                    attributes += 1;
                    key_value_into(kv, buf, &g)?;
                }
                4 => ev.dropped_attributes_count = varint(&g)? as u32,
                _ => {}
            }
        }
        Ok(())
    })();
    release(&mut ev.attributes, spare, attributes);
    result
}

fn status_into(st: &mut Status, buf: &[u8], f: &Field) -> Result<(), NotFast> {
    for g in Fields::new(buf, len_field(f)?) {
        let g = g?;
        match g.number {
            2 => string_into(&mut st.message, buf, &g)?,
            3 => st.code = varint(&g)? as i32,
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::Fleet;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};
    use opentelemetry_proto::tonic::trace::v1::span::Link;

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    /// Every span of a few hundred synthetic runs, failing and not, in order.
    fn fleet_spans() -> Vec<Span> {
        let mut fleet = Fleet::new(7, 30).with_steps(3);
        let (req, _) = fleet.request(40);
        req.resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans)
            .collect()
    }

    /// Spans of every shape the decoder handles itself or hands to prost.
    fn odd_spans() -> Vec<Span> {
        use any_value::Value;
        let many: Vec<KeyValue> = (0..300)
            .map(|i| kv(&format!("k{i}"), Value::IntValue(i)))
            .collect();
        vec![
            Span::default(),
            Span {
                name: "x".repeat(20_000),
                attributes: many,
                ..Default::default()
            },
            Span {
                trace_id: vec![1; 16],
                span_id: vec![2; 8],
                trace_state: "a=b".into(),
                flags: 0x301,
                kind: -7,
                attributes: vec![
                    kv("s", Value::StringValue("é".into())),
                    kv("b", Value::BoolValue(true)),
                    kv("d", Value::DoubleValue(-1.5)),
                    kv("raw", Value::BytesValue(vec![0, 1, 2])),
                    kv(
                        "arr",
                        Value::ArrayValue(ArrayValue {
                            values: vec![AnyValue {
                                value: Some(Value::StringValue("in".into())),
                            }],
                        }),
                    ),
                    kv(
                        "map",
                        Value::KvlistValue(KeyValueList {
                            values: vec![kv("n", Value::IntValue(-3))],
                        }),
                    ),
                    KeyValue {
                        key: "none".into(),
                        value: None,
                        key_strindex: 0,
                    },
                    KeyValue {
                        key: "empty".into(),
                        value: Some(AnyValue { value: None }),
                        key_strindex: 0,
                    },
                    KeyValue {
                        key: String::new(),
                        value: Some(AnyValue {
                            value: Some(Value::StringValueStrindex(4)),
                        }),
                        key_strindex: 3,
                    },
                ],
                dropped_attributes_count: 3,
                events: vec![Event {
                    time_unix_nano: 9,
                    name: "exception".into(),
                    attributes: vec![kv("exception.type", Value::StringValue("E".into()))],
                    dropped_attributes_count: 1,
                }],
                dropped_events_count: 4,
                links: vec![Link {
                    trace_id: vec![3; 16],
                    span_id: vec![4; 8],
                    ..Default::default()
                }],
                dropped_links_count: 5,
                status: Some(Status {
                    message: "boom".into(),
                    code: 2,
                }),
                ..Default::default()
            },
        ]
    }

    #[test]
    fn decodes_what_prost_decodes_whatever_came_before() {
        let mut spans = fleet_spans();
        spans.extend(odd_spans());
        // Forwards and backwards, so each span lands on memory left by a different one.
        let mut scratch = SpanScratch::default();
        for span in spans.iter().chain(spans.iter().rev()) {
            let buf = span.encode_to_vec();
            assert_eq!(scratch.decode(&buf).unwrap(), span);
        }
        assert!(scratch.spare_attributes.len() <= MAX_SPARE);
    }

    #[test]
    fn wire_quirks_decode_as_prost_decodes_them() {
        let base = odd_spans().remove(2).encode_to_vec();
        let mut cases: Vec<Vec<u8>> = Vec::new();
        // A second status merges into the first; a second name replaces it.
        let mut twice = base.clone();
        twice.extend_from_slice(&[0x7a, 0x02, 0x18, 0x01]); // status { code: 1 }
        twice.extend_from_slice(&[0x2a, 0x01, b'n']); // name "n"
        cases.push(twice);
        // An unknown field is skipped.
        let mut unknown = base.clone();
        unknown.extend_from_slice(&[0xf8, 0x01, 0x05]); // field 31, varint
        cases.push(unknown);
        // A value given twice in one attribute (prost merges it).
        let mut dup = Vec::new();
        let attr = [
            0x0a, 0x01, b'k', 0x12, 0x03, 0x0a, 0x01, b'a', 0x12, 0x02, 0x18, 0x07,
        ];
        dup.push(0x4a);
        dup.push(attr.len() as u8);
        dup.extend_from_slice(&attr);
        cases.push(dup);
        let mut scratch = SpanScratch::default();
        for buf in &cases {
            assert_eq!(
                scratch.decode(buf).unwrap(),
                &Span::decode(&buf[..]).unwrap()
            );
        }
    }

    #[test]
    fn recent_messages_are_shared_while_their_bytes_recur() {
        use opentelemetry_proto::tonic::resource::v1::Resource;
        let resource = |name: &str| Resource {
            attributes: vec![kv(
                "service.name",
                any_value::Value::StringValue(name.into()),
            )],
            ..Default::default()
        };
        let mut recent = Recent::<Resource>::default();
        let a = resource("a").encode_to_vec();
        let first = recent.decode(&a).unwrap();
        assert_eq!(*first, resource("a"));
        assert!(Rc::ptr_eq(&first, &recent.decode(&a).unwrap()));
        for i in 0..RECENT {
            let other = resource(&format!("o{i}")).encode_to_vec();
            assert_eq!(*recent.decode(&other).unwrap(), resource(&format!("o{i}")));
        }
        assert_eq!(recent.kept.len(), RECENT);
        let again = recent.decode(&a).unwrap();
        assert!(!Rc::ptr_eq(&first, &again), "pushed out by newer ones");
        assert_eq!(*again, resource("a"));
        assert!(recent.decode(&[0x0a, 0x05]).is_none(), "truncated");
        let big = resource(&"x".repeat(MAX_RECENT_BYTES)).encode_to_vec();
        let b1 = recent.decode(&big).unwrap();
        assert!(
            !Rc::ptr_eq(&b1, &recent.decode(&big).unwrap()),
            "too big to keep"
        );
    }

    /// A span whose one attribute is `depth` arrays, one inside the other.
    fn nested_value(depth: usize) -> Vec<u8> {
        let mut v = AnyValue {
            value: Some(any_value::Value::IntValue(1)),
        };
        for _ in 0..depth {
            v = AnyValue {
                value: Some(any_value::Value::ArrayValue(ArrayValue { values: vec![v] })),
            };
        }
        Span {
            attributes: vec![KeyValue {
                key: "deep".into(),
                value: Some(v),
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn nested_values_decode_as_prost_decodes_them() {
        let mut scratch = SpanScratch::default();
        for depth in [
            1,
            MAX_NESTING - 1,
            MAX_NESTING,
            MAX_NESTING + 5,
            95,
            96,
            97,
            98,
            99,
            120,
        ] {
            let buf = nested_value(depth);
            match Span::decode(&buf[..]) {
                Ok(want) => assert_eq!(scratch.decode(&buf).unwrap(), &want, "depth {depth}"),
                Err(_) => assert!(scratch.decode(&buf).is_err(), "depth {depth}"),
            }
        }
    }

    #[test]
    fn malformed_spans_fail_as_prost_fails() {
        let mut scratch = SpanScratch::default();
        let good = odd_spans().remove(2).encode_to_vec();
        let cases: Vec<Vec<u8>> = vec![
            good[..good.len() - 1].to_vec(),
            vec![0x2a, 0x02, 0xff, 0xfe], // name: invalid UTF-8
            vec![0x2d, 0, 0, 0, 0],       // name with a fixed32 wire type
            vec![0x30, 0x80],             // kind: truncated varint
            // kind: a ten-byte varint past 64 bits (prost refuses what the scan would take)
            vec![
                0x30, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
            ],
            vec![0x80, 0x80, 0x80, 0x80, 0x10, 0x00], // a key past u32::MAX
            vec![0x0b, 0x0c],                         // a group
            nested_value(120),                        // past prost's recursion limit
        ];
        for buf in &cases {
            assert!(Span::decode(&buf[..]).is_err());
            assert!(scratch.decode(buf).is_err(), "{buf:?}");
            // Whatever was left behind, the next span decodes whole.
            assert_eq!(
                scratch.decode(&good).unwrap(),
                &Span::decode(&good[..]).unwrap()
            );
        }
    }
}
