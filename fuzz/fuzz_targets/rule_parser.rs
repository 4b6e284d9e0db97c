//! Arbitrary text as an OTTL condition into the rule compiler; what compiles is evaluated on a
//! few spans. Errors are fine, a panic is not.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span::Event, Span, Status};
use triage_loop::classify::rules::{compile_rule, EvalContext, RuleSpec};
use triage_loop::classify::signals::{Signal, SignalKind};

fn kv(key: &str, v: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

/// A span with a bit of everything rules look at.
fn span() -> &'static (Span, Resource, Signal) {
    static S: OnceLock<(Span, Resource, Signal)> = OnceLock::new();
    S.get_or_init(|| {
        let attrs = vec![
            kv("error.type", Value::StringValue("TimeoutError".into())),
            kv("gen_ai.operation.name", Value::StringValue("chat".into())),
            kv("retries", Value::IntValue(3)),
            kv("score", Value::DoubleValue(0.25)),
            kv("ok", Value::BoolValue(false)),
        ];
        let span = Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: "tool call".into(),
            kind: 3,
            attributes: attrs.clone(),
            events: vec![Event {
                name: "exception".into(),
                attributes: vec![kv(
                    "exception.message",
                    Value::StringValue("read timed out".into()),
                )],
                ..Default::default()
            }],
            status: Some(Status {
                message: "boom".into(),
                code: 2,
            }),
            ..Default::default()
        };
        let resource = Resource {
            attributes: vec![kv("service.name", Value::StringValue("agent".into()))],
            ..Default::default()
        };
        let signal = Signal {
            kind: SignalKind::Exception,
            name: "TimeoutError".into(),
            message: "read timed out".into(),
            label: Some("fail".into()),
            score: Some(0.1),
        };
        (span, resource, signal)
    })
}

fuzz_target!(|condition: &str| {
    let spec = RuleSpec {
        name: "fuzz".into(),
        class: "logic_tool".into(),
        condition: condition.into(),
        confidence: 0.9,
        description: String::new(),
    };
    let Ok(rule) = compile_rule(&spec) else {
        return;
    };
    let (span, resource, signal) = span();
    let empty = Span::default();
    for (span, resource) in [(span, Some(resource)), (&empty, None)] {
        let ctx = EvalContext {
            span,
            resource,
            scope: None,
            signal,
        };
        let _ = rule.condition.eval(&ctx);
    }
});
