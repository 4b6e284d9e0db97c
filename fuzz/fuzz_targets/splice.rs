//! Structured requests (arbitrary spans, encoded with prost) through the wire scan and splice:
//! arbitrary edits of the flagged spans must give exactly what the same edits on the decoded
//! request give, every span left alone must keep its bytes, and the hot path must only ever
//! append to a span.

#![no_main]

mod common;

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span::Event, ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use triage_loop::otlp::splice::{scan_span, scan_with, splice, Edit, Scan, ScanOptions};

/// Keys the wire pre-filter looks at, and a few it does not.
const KEYS: [&str; 12] = [
    "error.type",
    "failure.class",
    "guardrail.passed",
    "guardrail.triggered",
    "openinference.span.kind",
    "gen_ai.response.finish_reasons",
    "evaluations.0.label",
    "user.feedback.score",
    "exception.message",
    "gen_ai.agent.name",
    "service.name",
    "x",
];
const EVENTS: [&str; 5] = [
    "exception",
    "gen_ai.evaluation.result",
    "user.feedback",
    "log",
    "",
];
const VALUES: [&str; 6] = [
    "GUARDRAIL",
    "content_filter",
    "fail",
    "timeout 42",
    "",
    "ok",
];

#[derive(Arbitrary, Debug)]
struct Input {
    resources: Vec<Res>,
    edits: Vec<EditChoice>,
}

#[derive(Arbitrary, Debug)]
struct Res {
    service: Option<u8>,
    scopes: Vec<Vec<Sp>>,
}

#[derive(Arbitrary, Debug)]
struct Sp {
    trace_id: Id,
    span_id: Id,
    name: String,
    status: Option<(u8, String)>,
    attributes: Vec<Attr>,
    events: Vec<(u8, Vec<Attr>)>,
    /// Length of a filler attribute, so length prefixes come in every varint size.
    pad: u16,
}

#[derive(Arbitrary, Debug)]
enum Id {
    Valid(u8),
    Zero,
    Len(u8),
}

#[derive(Arbitrary, Debug)]
struct Attr {
    key: u8,
    value: AttrValue,
}

#[derive(Arbitrary, Debug)]
enum AttrValue {
    Known(u8),
    Text(String),
    Int(i64),
    Bool(bool),
    List(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum EditChoice {
    Skip,
    Drop,
    /// Append one attribute whose value is this long.
    Append(u16),
}

fn id(choice: &Id, len: usize) -> Vec<u8> {
    match choice {
        Id::Valid(b) => vec![b.wrapping_add(1).max(1); len],
        Id::Zero => vec![0; len],
        Id::Len(n) => vec![7; usize::from(*n % 24)],
    }
}

fn string_kv(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value)),
        }),
        ..Default::default()
    }
}

fn attr(a: &Attr) -> KeyValue {
    let key = KEYS[usize::from(a.key) % KEYS.len()];
    let value = match &a.value {
        AttrValue::Known(i) => Value::StringValue(VALUES[usize::from(*i) % VALUES.len()].into()),
        AttrValue::Text(s) => Value::StringValue(s.clone()),
        AttrValue::Int(i) => Value::IntValue(*i),
        AttrValue::Bool(b) => Value::BoolValue(*b),
        AttrValue::List(items) => {
            Value::ArrayValue(opentelemetry_proto::tonic::common::v1::ArrayValue {
                values: items
                    .iter()
                    .take(4)
                    .map(|i| AnyValue {
                        value: Some(Value::StringValue(
                            VALUES[usize::from(*i) % VALUES.len()].into(),
                        )),
                    })
                    .collect(),
            })
        }
    };
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn span(s: &Sp) -> Span {
    let mut attributes: Vec<KeyValue> = s.attributes.iter().take(8).map(attr).collect();
    if s.pad > 0 {
        attributes.push(string_kv("pad", "p".repeat(usize::from(s.pad % 20_000))));
    }
    Span {
        trace_id: id(&s.trace_id, 16),
        span_id: id(&s.span_id, 8),
        name: s.name.clone(),
        attributes,
        events: s
            .events
            .iter()
            .take(4)
            .map(|(name, attrs)| Event {
                name: EVENTS[usize::from(*name) % EVENTS.len()].into(),
                attributes: attrs.iter().take(4).map(attr).collect(),
                ..Default::default()
            })
            .collect(),
        status: s.status.as_ref().map(|(code, message)| Status {
            code: i32::from(code % 4),
            message: message.clone(),
        }),
        ..Default::default()
    }
}

fn request(input: &Input) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: input
            .resources
            .iter()
            .take(4)
            .map(|r| ResourceSpans {
                resource: r.service.map(|s| Resource {
                    attributes: vec![string_kv("service.name", format!("svc-{s}"))],
                    ..Default::default()
                }),
                scope_spans: r
                    .scopes
                    .iter()
                    .take(4)
                    .map(|spans| ScopeSpans {
                        spans: spans.iter().take(16).map(span).collect(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
    }
}

/// Whether the wire pre-filter flags a span on its own.
fn flagged(span: &Span) -> bool {
    let buf = span.encode_to_vec();
    let (hints, invalid) = scan_span(&buf, 0..buf.len()).expect("a prost-encoded span scans");
    hints != 0 || invalid.is_some()
}

/// The payload bytes of every span the scan indexes (valid ids and UTF-8), in request order.
fn span_payloads(buf: &[u8]) -> Vec<&[u8]> {
    let opts = ScanOptions {
        index: true,
        resources: false,
    };
    let s = scan_with(buf, opts).expect("a prost-encoded request scans");
    s.index.iter().map(|at| &buf[at.field.value()]).collect()
}

/// Arbitrary edits of the flagged spans, checked against the same edits on the decoded request.
fn check_splice(req: &ExportTraceServiceRequest, buf: &[u8], scan: &Scan, choices: &[EditChoice]) {
    let mut edits = Vec::new();
    for (i, choice) in choices.iter().enumerate().take(scan.flagged.len()) {
        match choice {
            EditChoice::Skip => {}
            EditChoice::Drop => edits.push((i, Edit::Drop)),
            EditChoice::Append(len) => {
                let kv = string_kv("failure.class", "c".repeat(usize::from(*len)));
                let mut extra = Vec::new();
                prost::encoding::message::encode(9, &kv, &mut extra);
                edits.push((i, Edit::Append(extra)));
            }
        }
    }
    let out = splice(buf, scan, &edits);
    let got = ExportTraceServiceRequest::decode(&out[..]).expect("the spliced request decodes");

    // The same edits on the decoded request: flagged spans are numbered in request order.
    let mut want = req.clone();
    let mut nth_flagged = 0;
    let mut kept_payloads: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    for rs in &mut want.resource_spans {
        for ss in &mut rs.scope_spans {
            ss.spans.retain_mut(|span| {
                let is_flagged = flagged(span);
                let edit = if is_flagged {
                    nth_flagged += 1;
                    edits
                        .iter()
                        .find(|(i, _)| *i == nth_flagged - 1)
                        .map(|(_, e)| e)
                } else {
                    None
                };
                let before = span.encode_to_vec();
                let valid = {
                    let (_, invalid) = scan_span(&before, 0..before.len()).expect("scans");
                    invalid.is_none()
                };
                match edit {
                    Some(Edit::Drop) => false,
                    Some(Edit::Append(extra)) => {
                        let mut b = before.clone();
                        b.extend_from_slice(extra);
                        *span = Span::decode(&b[..]).expect("a span with appended attributes");
                        if valid {
                            kept_payloads.push((before, Some(extra.clone())));
                        }
                        true
                    }
                    None => {
                        if valid {
                            kept_payloads.push((before, None));
                        }
                        true
                    }
                }
            });
        }
    }
    assert_eq!(
        nth_flagged,
        scan.flagged.len(),
        "flagged spans counted alike"
    );
    assert_eq!(got, want, "splice = the same edits on the decoded request");

    // Byte for byte: every span kept is its old payload, plus the appended bytes if any.
    let out_payloads = span_payloads(&out);
    assert_eq!(out_payloads.len(), kept_payloads.len());
    for (got, (before, extra)) in out_payloads.iter().zip(&kept_payloads) {
        let mut want = before.clone();
        if let Some(extra) = extra {
            want.extend_from_slice(extra);
        }
        assert_eq!(*got, &want[..], "a kept span's bytes");
    }
}

/// The hot path only drops invalid spans and appends to others: every valid span's payload
/// comes out as it went in, or as it went in followed by `failure.*` attributes.
fn check_hot_path(buf: &[u8]) {
    let body = Bytes::copy_from_slice(buf);
    let p = common::hot_path()
        .processor
        .process(body.clone())
        .expect("the hot path takes a prost-encoded request");
    let before = span_payloads(buf);
    let forwarded = p.body.to_bytes();
    let after = span_payloads(&forwarded);
    assert_eq!(before.len(), after.len(), "valid spans are all forwarded");
    let mut tagged = 0;
    for (b, a) in before.iter().zip(&after) {
        if a != b {
            assert!(a.starts_with(b), "a tagged span keeps its bytes");
            let extra = Span::decode(&a[b.len()..]).expect("appended attributes decode");
            assert!(extra.attributes.iter().any(|kv| kv.key == "failure.class"));
            tagged += 1;
        }
    }
    assert_eq!(tagged, p.tagged, "Processed::tagged");
    common::process_and_check(body);
}

fuzz_target!(|input: Input| {
    let req = request(&input);
    let buf = req.encode_to_vec();
    let scan = scan_with(&buf, ScanOptions::default()).expect("a prost-encoded request scans");
    assert_eq!(scan.spans as usize, common::span_count(&req));
    check_splice(&req, &buf, &scan, &input.edits);
    check_hot_path(&buf);
});
