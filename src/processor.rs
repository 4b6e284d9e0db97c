//! The hot path: detect failure signals on spans, classify them, tag them, and hand back the
//! request to forward — spliced on the wire, so spans without a signal are copied byte for byte.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;

use crate::admin::metrics::Metrics;
use crate::classify::{Classifier, Decision};
use crate::failure::{Batch, FailureTap, Node};
use crate::otlp::payload::Payload;
use crate::otlp::span_scratch::{Recent, SpanScratch};
use crate::otlp::splice::{hint, scan_with, splice_shared, Edit, Invalid, Scan, ScanOptions};
use crate::otlp::wire::{varint_len, write_varint, WireError};

thread_local! {
    /// The signal span decoded last on this thread, whose memory the next one reuses.
    static SCRATCH: Rc<RefCell<SpanScratch>> = Rc::default();
    /// Resources and scopes this thread decoded last (an SDK sends the same ones every time).
    static RESOURCES: RefCell<Recent<Resource>> = RefCell::default();
    static SCOPES: RefCell<Recent<InstrumentationScope>> = RefCell::default();
}

/// The request to forward and what was done to it.
#[derive(Debug, Clone)]
pub struct Processed {
    /// The request to forward: the received bytes, or slices of them with the edits between.
    pub body: Payload,
    /// Spans left in `body`.
    pub spans: u64,
    /// Spans that got `failure.*` attributes.
    pub tagged: u64,
    /// Spans removed (invalid ids); reported back as `partial_success`.
    pub rejected: u64,
    /// Why spans were rejected, for `partial_success.error_message`.
    pub error_message: String,
}

/// The attribute keys added to spans with a failure signal.
pub mod tags {
    pub const CLASS: &str = "failure.class";
    pub const SOURCE: &str = "failure.class.source";
    pub const CONFIDENCE: &str = "failure.confidence";
    pub const RULE: &str = "failure.rule";
    pub const FINGERPRINT: &str = "failure.fingerprint";
    pub const REMEDIATION: &str = "failure.remediation";
}

/// Detects, classifies and tags spans of OTLP trace requests.
pub struct TraceProcessor {
    classifier: Classifier,
    metrics: Arc<Metrics>,
    /// Whether the traces pipeline runs `failure_triage` at all.
    enabled: bool,
    /// Where signal spans and their trees go (the failure side), when it runs.
    tap: Option<FailureTap>,
}

/// What a request sends to the failure side, gathered while tagging.
#[derive(Default)]
struct Gathered {
    nodes: Vec<Node>,
    /// Field starts of the spans in `nodes`, ascending.
    starts: Vec<usize>,
}

impl TraceProcessor {
    pub fn new(
        classifier: Classifier,
        metrics: Arc<Metrics>,
        enabled: bool,
        tap: Option<FailureTap>,
    ) -> Self {
        TraceProcessor {
            classifier,
            metrics,
            enabled,
            tap,
        }
    }

    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    /// Whether spans are classified and tagged (the traces pipeline runs `failure_triage`).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The failure side's tap, when it runs and the processor is enabled.
    pub fn tap(&self) -> Option<&FailureTap> {
        self.tap.as_ref().filter(|_| self.enabled)
    }

    /// Processes one encoded `ExportTraceServiceRequest`.
    pub fn process(&self, body: Bytes) -> Result<Processed, WireError> {
        let tap = self.tap();
        let opts = ScanOptions {
            index: tap.is_some_and(FailureTap::has_marked),
            resources: tap.is_some(),
        };
        let scan = scan_with(&body, opts)?;
        let mut out = Processed {
            body: Payload::default(),
            spans: scan.spans,
            tagged: 0,
            rejected: 0,
            error_message: String::new(),
        };
        let mut gathered = Gathered::default();
        let edits = if scan.flagged.is_empty() {
            Vec::new()
        } else {
            self.edits(&body, &scan, &mut out, &mut gathered)
        };
        if let Some(tap) = tap {
            feed(tap, &body, &scan, opts, gathered);
        }
        out.body = if edits.is_empty() {
            body.into()
        } else {
            splice_shared(&body, &scan, &edits)
        };
        Ok(out)
    }

    fn edits(
        &self,
        body: &[u8],
        scan: &Scan,
        out: &mut Processed,
        gathered: &mut Gathered,
    ) -> Vec<(usize, Edit)> {
        let mut edits = Vec::new();
        // Resources and scopes are decoded once per request, and only when a span needs them.
        let mut resources: Vec<Option<Option<Rc<Resource>>>> = vec![None; scan.resources.len()];
        let mut scopes: Vec<Option<Option<Rc<InstrumentationScope>>>> =
            vec![None; scan.scopes.len()];
        let (mut bad_ids, mut bad_utf8) = (0u64, 0u64);
        // Spans tagged per (class, source), counted once per request.
        let mut tagged: Vec<(String, &'static str, u64)> = Vec::new();
        let scratch = SCRATCH.with(Rc::clone);
        for (i, f) in scan.flagged.iter().enumerate() {
            if let Some(why) = f.invalid {
                out.rejected += 1;
                out.spans -= 1;
                match why {
                    Invalid::Ids => bad_ids += 1,
                    Invalid::Utf8 => bad_utf8 += 1,
                }
                edits.push((i, Edit::Drop));
                continue;
            }
            if !self.enabled || f.hints & hint::ALREADY_TAGGED != 0 {
                continue;
            }
            let mut scratch = scratch.borrow_mut();
            let Ok(span) = scratch.decode(&body[f.field.value()]) else {
                // A span the pre-filter flagged but prost refuses (e.g. invalid UTF-8 in a
                // string): forward it untouched rather than guess.
                tracing::debug!("flagged span is not decodable; forwarded untagged");
                continue;
            };
            let scope_info = &scan.scopes[f.scope];
            let resource = resources[scope_info.resource]
                .get_or_insert_with(|| {
                    scan.resources[scope_info.resource]
                        .resource
                        .clone()
                        .and_then(|r| RESOURCES.with_borrow_mut(|c| c.decode(&body[r])))
                })
                .as_deref();
            let scope = scopes[f.scope]
                .get_or_insert_with(|| {
                    scope_info
                        .scope
                        .clone()
                        .and_then(|r| SCOPES.with_borrow_mut(|c| c.decode(&body[r])))
                })
                .as_deref();
            if let Some(decision) = self.classifier.classify(span, resource, scope) {
                for s in &decision.signals {
                    self.metrics.signal(s.kind);
                }
                tally(&mut tagged, &decision);
                out.tagged += 1;
                edits.push((i, Edit::Append(encode_tags(&decision))));
                if self.tap.is_some() {
                    if let Some(node) = Node::of_span(span, resource, Some(decision)) {
                        gathered.nodes.push(node);
                        gathered.starts.push(f.field.start);
                    }
                }
            }
        }
        for (class, source, n) in &tagged {
            self.metrics.tagged(class, source, *n);
        }
        let mut reasons = Vec::new();
        if bad_ids > 0 {
            reasons.push(format!(
                "{bad_ids} span(s) with invalid ids (trace_id must be 16 bytes and span_id 8 bytes, not all zero)"
            ));
        }
        if bad_utf8 > 0 {
            reasons.push(format!(
                "{bad_utf8} span(s) with invalid UTF-8 in a string field"
            ));
        }
        out.error_message = reasons.join("; ");
        edits
    }
}

/// Counts one tagged span under its (class, source).
fn tally(tagged: &mut Vec<(String, &'static str, u64)>, d: &Decision) {
    let source = d.source.as_str();
    match tagged
        .iter_mut()
        .find(|(c, s, _)| *s == source && *c == d.class)
    {
        Some((_, _, n)) => *n += 1,
        None => tagged.push((d.class.clone(), source, 1)),
    }
}

/// Sends one request's share to the failure side: its signal nodes, a skeleton of every other
/// span of a marked trace, and (service, version) pairs not seen before. With no marked trace
/// and no signal in the request, only the resources are looked at.
fn feed(tap: &FailureTap, body: &[u8], scan: &Scan, opts: ScanOptions, g: Gathered) {
    let Gathered { mut nodes, starts } = g;
    let versions = tap.new_versions(body, &scan.all_resources);
    if !nodes.is_empty() {
        tap.mark(nodes.iter().map(|n| &n.trace_id));
    }
    if tap.has_marked() {
        if opts.index {
            tap.skeletons(body, &scan.index, &starts, &mut nodes);
        } else {
            // The request brought the first marks: index it now (the slow path anyway).
            let index = ScanOptions {
                index: true,
                resources: false,
            };
            if let Ok(s) = scan_with(body, index) {
                tap.skeletons(body, &s.index, &starts, &mut nodes);
            }
        }
    }
    tap.send(Batch { nodes, versions });
}

/// The `failure.*` attributes as encoded `Span.attributes` (field 9) entries, written straight
/// to the wire (the bytes prost writes for the same `KeyValue`s, without building them).
pub fn encode_tags(d: &Decision) -> Vec<u8> {
    let mut buf = Vec::with_capacity(256);
    put_string_kv(&mut buf, tags::CLASS, &d.class);
    put_string_kv(&mut buf, tags::SOURCE, d.source.as_str());
    put_kv(&mut buf, tags::CONFIDENCE, 9, |b| {
        // AnyValue.double_value: field 4, fixed64.
        b.push(0x21);
        b.extend_from_slice(&d.confidence.to_le_bytes());
    });
    if let Some(rule) = &d.rule {
        put_string_kv(&mut buf, tags::RULE, rule);
    }
    put_string_kv(&mut buf, tags::FINGERPRINT, &d.fingerprint);
    put_string_kv(&mut buf, tags::REMEDIATION, &d.remediation);
    buf
}

/// One `Span.attributes` entry with a string value.
fn put_string_kv(buf: &mut Vec<u8>, key: &str, value: &str) {
    let any_len = 1 + varint_len(value.len() as u64) + value.len();
    put_kv(buf, key, any_len, |b| {
        // AnyValue.string_value: field 1, length-delimited.
        b.push(0x0a);
        write_varint(b, value.len() as u64);
        b.extend_from_slice(value.as_bytes());
    });
}

/// One `Span.attributes` entry (field 9): a `KeyValue` with `key` and an `AnyValue` of
/// `any_len` bytes written by `any`. Keys are never empty here (prost would leave out an empty one).
fn put_kv(buf: &mut Vec<u8>, key: &str, any_len: usize, any: impl FnOnce(&mut Vec<u8>)) {
    let kv_len =
        1 + varint_len(key.len() as u64) + key.len() + 1 + varint_len(any_len as u64) + any_len;
    buf.push(0x4a);
    write_varint(buf, kv_len as u64);
    buf.push(0x0a);
    write_varint(buf, key.len() as u64);
    buf.extend_from_slice(key.as_bytes());
    buf.push(0x12);
    write_varint(buf, any_len as u64);
    let at = buf.len();
    any(buf);
    debug_assert_eq!(buf.len() - at, any_len);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Source;
    use crate::otlp::attributes::{double_kv, string_kv};
    use opentelemetry_proto::tonic::common::v1::KeyValue;

    /// What prost writes for the same attributes.
    fn prost_tags(d: &Decision) -> Vec<u8> {
        let mut kvs: Vec<KeyValue> = vec![
            string_kv(tags::CLASS, d.class.as_str()),
            string_kv(tags::SOURCE, d.source.as_str()),
            double_kv(tags::CONFIDENCE, d.confidence),
        ];
        if let Some(rule) = &d.rule {
            kvs.push(string_kv(tags::RULE, rule.as_str()));
        }
        kvs.push(string_kv(tags::FINGERPRINT, d.fingerprint.as_str()));
        kvs.push(string_kv(tags::REMEDIATION, d.remediation.as_str()));
        let mut buf = Vec::new();
        for kv in &kvs {
            prost::encoding::message::encode(9, kv, &mut buf);
        }
        buf
    }

    #[test]
    fn tags_are_the_bytes_prost_writes() {
        let long = "x".repeat(300);
        for (rule, class, confidence) in [
            (Some("tool-timeout".to_string()), "logic_tool", 0.9),
            (None, "", 0.0),
            (Some(long.clone()), long.as_str(), f64::MIN_POSITIVE),
        ] {
            let d = Decision {
                class: class.to_string(),
                source: Source::Rule,
                confidence,
                rule,
                fingerprint: "0123456789abcdef".into(),
                remediation: long.clone(),
                signals: Vec::new(),
            };
            assert_eq!(encode_tags(&d), prost_tags(&d));
        }
    }
}
