//! Failure signals from OTLP log records: an exception log record (or one at severity ERROR or
//! above) correlated with a span is a signal on that span, classified like span signals.

use std::ops::Range;

use memchr::memmem;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use crate::classify::signals::keys::{EXCEPTION_MESSAGE, EXCEPTION_TYPE};
use crate::classify::signals::{Signal, SignalKind};
use crate::classify::Classifier;
use crate::failure::{Node, SignalNode};
use crate::otlp::attributes::{get_str, value_to_string};
use crate::otlp::wire::{expect_len, Fields, WireError, WT_VARINT};

/// `SEVERITY_NUMBER_ERROR`: records at or above it are signals even without `exception.*`.
const SEVERITY_ERROR: u64 = 17;

/// The signal nodes of an encoded `ExportLogsServiceRequest`. Only log records that pass a
/// cheap wire check (valid trace and span id, and severity ≥ ERROR or an `exception.` key) are
/// decoded; resources and scopes are decoded once, when a record needs them.
pub fn signal_nodes(buf: &[u8], classifier: &Classifier) -> Result<Vec<Node>, WireError> {
    let mut out = Vec::new();
    for rl in Fields::new(buf, 0..buf.len()) {
        let rl = rl?;
        if rl.number == 1 {
            resource_logs(buf, expect_len(&rl)?, classifier, &mut out)?;
        }
    }
    Ok(out)
}

fn resource_logs(
    buf: &[u8],
    range: Range<usize>,
    classifier: &Classifier,
    out: &mut Vec<Node>,
) -> Result<(), WireError> {
    let mut resource_at = None;
    for f in Fields::new(buf, range.clone()) {
        let f = f?;
        if f.number == 1 {
            resource_at = Some(expect_len(&f)?);
        }
    }
    let mut resource: Option<Option<Resource>> = None;
    for f in Fields::new(buf, range) {
        let f = f?;
        if f.number != 2 {
            continue;
        }
        let mut scope: Option<Option<InstrumentationScope>> = None;
        for g in Fields::new(buf, expect_len(&f)?) {
            let g = g?;
            if g.number != 2 {
                continue;
            }
            let record = expect_len(&g)?;
            if !candidate(buf, record.clone())? {
                continue;
            }
            let Ok(log) = LogRecord::decode(&buf[record]) else {
                continue;
            };
            let resource = resource
                .get_or_insert_with(|| {
                    resource_at
                        .clone()
                        .and_then(|r| Resource::decode(&buf[r]).ok())
                })
                .as_ref();
            // The scope may follow its records on the wire: look it up when needed.
            if scope.is_none() {
                scope = Some(
                    scope_of(buf, f.value())
                        .and_then(|r| InstrumentationScope::decode(&buf[r]).ok()),
                );
            }
            let scope = scope.as_ref().and_then(|s| s.as_ref());
            if let Some(node) = signal_node(log, resource, scope, classifier) {
                out.push(node);
            }
        }
    }
    Ok(())
}

/// The `InstrumentationScope` payload of a `ScopeLogs`.
fn scope_of(buf: &[u8], scope_logs: Range<usize>) -> Option<Range<usize>> {
    Fields::new(buf, scope_logs)
        .map_while(Result::ok)
        .find(|f| f.number == 1)
        .and_then(|f| expect_len(&f).ok())
}

/// Whether a log record may be a correlated failure signal (ids valid; severity ≥ ERROR or an
/// `exception.` key somewhere in its attributes).
fn candidate(buf: &[u8], range: Range<usize>) -> Result<bool, WireError> {
    let (mut trace_ok, mut span_ok, mut severe, mut exception) = (false, false, false, false);
    for f in Fields::new(buf, range) {
        let f = f?;
        match (f.number, f.wire_type) {
            (2, WT_VARINT) => severe = f.scalar >= SEVERITY_ERROR,
            (6, _) => {
                exception |= memmem::find(&buf[expect_len(&f)?], b"exception.").is_some();
            }
            (9, _) => trace_ok = id_ok(&buf[expect_len(&f)?], 16),
            (10, _) => span_ok = id_ok(&buf[expect_len(&f)?], 8),
            _ => {}
        }
    }
    Ok(trace_ok && span_ok && (severe || exception))
}

fn id_ok(id: &[u8], len: usize) -> bool {
    id.len() == len && id.iter().any(|&b| b != 0)
}

/// The signal a decoded log record carries, classified on a synthetic span made from it.
fn signal_node(
    log: LogRecord,
    resource: Option<&Resource>,
    scope: Option<&InstrumentationScope>,
    classifier: &Classifier,
) -> Option<Node> {
    let signal = log_signal(&log)?;
    let trace_id: [u8; 16] = log.trace_id.as_slice().try_into().ok()?;
    let span_id: [u8; 8] = log.span_id.as_slice().try_into().ok()?;
    let span = Span {
        trace_id: log.trace_id,
        span_id: log.span_id,
        name: if log.event_name.is_empty() {
            "log".into()
        } else {
            log.event_name
        },
        attributes: log.attributes,
        ..Default::default()
    };
    let decision = classifier.classify_signal(&span, resource, scope, signal);
    Some(Node {
        trace_id,
        span_id,
        shape: None,
        agent: None,
        name: None,
        signal: Some(Box::new(SignalNode::new(decision, &span, resource))),
    })
}

/// The `Log` signal of a record: name = exception.type or event name, message =
/// exception.message or the body. `None` when the record is neither an exception nor severe.
pub fn log_signal(log: &LogRecord) -> Option<Signal> {
    let ex_type = get_str(&log.attributes, EXCEPTION_TYPE);
    let ex_message = get_str(&log.attributes, EXCEPTION_MESSAGE);
    let severe = u64::try_from(log.severity_number).is_ok_and(|s| s >= SEVERITY_ERROR);
    if ex_type.is_none() && ex_message.is_none() && !severe {
        return None;
    }
    let name = ex_type.unwrap_or(if log.event_name.is_empty() {
        &log.severity_text
    } else {
        &log.event_name
    });
    let message = match ex_message {
        Some(m) => m.to_string(),
        None => log
            .body
            .as_ref()
            .and_then(|b| b.value.as_ref())
            .and_then(value_to_string)
            .unwrap_or_default(),
    };
    Some(Signal {
        kind: SignalKind::Log,
        name: name.to_string(),
        message,
        label: None,
        score: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue};

    #[test]
    fn exception_or_severe_records_are_signals() {
        let mut log = LogRecord {
            severity_number: 17,
            severity_text: "ERROR".into(),
            body: Some(AnyValue {
                value: Some(Value::StringValue("payment 42 declined".into())),
            }),
            ..Default::default()
        };
        let s = log_signal(&log).unwrap();
        assert_eq!((s.kind, s.name.as_str()), (SignalKind::Log, "ERROR"));
        assert_eq!(s.message, "payment 42 declined");
        log.severity_number = 13;
        assert!(log_signal(&log).is_none());
        log.attributes.push(crate::otlp::attributes::string_kv(
            EXCEPTION_TYPE,
            "ValueError",
        ));
        log.event_name = "exception".into();
        let s = log_signal(&log).unwrap();
        assert_eq!(s.name, "ValueError");
    }

    #[test]
    fn malformed_logs_are_an_error_not_a_panic() {
        let classifier = crate::config::load_default().take_classifier();
        assert!(signal_nodes(&[0x0a, 0x05, 0x01], &classifier).is_err());
        assert!(signal_nodes(&[], &classifier).unwrap().is_empty());
    }
}
