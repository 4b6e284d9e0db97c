//! Decoding that reuses what was decoded before, for the hot path's signal spans: a `Span` is
//! decoded into the memory of the last one, so ids, strings and attribute slots keep their
//! capacity and a span like the one before costs no allocation (whatever this decoder does not
//! take on itself, a malformed span or an array or map attribute value, is left to prost, so the
//! result is always the span prost decodes); resources and scopes are decoded once and shared
//! while their bytes recur (`Recent`).

use std::rc::Rc;

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
use opentelemetry_proto::tonic::trace::v1::{Span, Status};
use prost::Message;

use crate::otlp::wire::{expect_len, Fields, WireError, WT_I32, WT_I64, WT_LEN, WT_VARINT};

/// Spare attribute and event slots kept between spans, at most.
const MAX_SPARE: usize = 256;
/// A span whose encoding is larger than this is not kept as the next span's memory.
const MAX_KEPT_BYTES: usize = 16 << 10;

/// Why the fast decoder handed a span to prost (never shown: prost decides the outcome).
#[derive(Debug)]
struct NotFast;

impl From<WireError> for NotFast {
    fn from(_: WireError) -> Self {
        NotFast
    }
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
                    7 => span.start_time_unix_nano = fixed(&f, WT_I64)?,
                    8 => span.end_time_unix_nano = fixed(&f, WT_I64)?,
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
                    13 => span
                        .links
                        .push(Link::decode(&buf[expect_len(&f)?]).map_err(|_| NotFast)?),
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
                    16 => span.flags = fixed(&f, WT_I32)? as u32,
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

fn varint(f: &crate::otlp::wire::Field) -> Result<u64, NotFast> {
    (f.wire_type == WT_VARINT)
        .then_some(f.scalar)
        .ok_or(NotFast)
}

fn fixed(f: &crate::otlp::wire::Field, wire_type: u8) -> Result<u64, NotFast> {
    (f.wire_type == wire_type)
        .then_some(f.scalar)
        .ok_or(NotFast)
}

fn bytes_into(out: &mut Vec<u8>, buf: &[u8], f: &crate::otlp::wire::Field) -> Result<(), NotFast> {
    out.clear();
    out.extend_from_slice(&buf[expect_len(f)?]);
    Ok(())
}

fn string_into(out: &mut String, buf: &[u8], f: &crate::otlp::wire::Field) -> Result<(), NotFast> {
    let s = std::str::from_utf8(&buf[expect_len(f)?]).map_err(|_| NotFast)?;
    out.clear();
    out.push_str(s);
    Ok(())
}

/// A `KeyValue` into a reused slot: its key's memory, and its string value's.
fn key_value_into(
    kv: &mut KeyValue,
    buf: &[u8],
    f: &crate::otlp::wire::Field,
) -> Result<(), NotFast> {
    let range = expect_len(f)?;
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
fn any_value_into(
    old: Option<AnyValue>,
    buf: &[u8],
    f: &crate::otlp::wire::Field,
) -> Result<AnyValue, NotFast> {
    use any_value::Value;
    let range = expect_len(f)?;
    let mut fields = Fields::new(buf, range.clone());
    let (Some(first), None) = (fields.next(), fields.next()) else {
        return prost_any(buf, range);
    };
    let g = first?;
    let value = match (g.number, g.wire_type) {
        (1, WT_LEN) => {
            let mut s = match old.and_then(|a| a.value) {
                Some(Value::StringValue(s)) => s,
                _ => String::new(),
            };
            string_into(&mut s, buf, &g)?;
            Value::StringValue(s)
        }
        (2, WT_VARINT) => Value::BoolValue(g.scalar != 0),
        (3, WT_VARINT) => Value::IntValue(g.scalar as i64),
        (4, WT_I64) => Value::DoubleValue(f64::from_bits(g.scalar)),
        _ => return prost_any(buf, range),
    };
    Ok(AnyValue { value: Some(value) })
}

fn prost_any(buf: &[u8], range: std::ops::Range<usize>) -> Result<AnyValue, NotFast> {
    AnyValue::decode(&buf[range]).map_err(|_| NotFast)
}

fn event_into(
    ev: &mut Event,
    spare: &mut Vec<KeyValue>,
    buf: &[u8],
    f: &crate::otlp::wire::Field,
) -> Result<(), NotFast> {
    let range = expect_len(f)?;
    ev.time_unix_nano = 0;
    ev.name.clear();
    ev.dropped_attributes_count = 0;
    let mut attributes = 0;
    let result = (|| {
        for g in Fields::new(buf, range) {
            let g = g?;
            match g.number {
                1 => ev.time_unix_nano = fixed(&g, WT_I64)?,
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

fn status_into(st: &mut Status, buf: &[u8], f: &crate::otlp::wire::Field) -> Result<(), NotFast> {
    for g in Fields::new(buf, expect_len(f)?) {
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

    #[test]
    fn malformed_spans_fail_as_prost_fails() {
        let mut scratch = SpanScratch::default();
        let good = odd_spans().remove(2).encode_to_vec();
        let cases: Vec<Vec<u8>> = vec![
            good[..good.len() - 1].to_vec(),
            vec![0x2a, 0x02, 0xff, 0xfe], // name: invalid UTF-8
            vec![0x2d, 0, 0, 0, 0],       // name with a fixed32 wire type
            vec![0x30, 0x80],             // kind: truncated varint
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
