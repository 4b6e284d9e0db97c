//! Criterion benches of the learned model: what it adds per failure on the hot path (the cascade
//! asking it for a span no rule decided), `features()` + `predict()` as the failure side and the
//! API use them, and one `learn()` (a human label arriving) on a model that already knows 1 000.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::Event;
use opentelemetry_proto::tonic::trace::v1::{status::StatusCode, Span, Status};

use triage_loop::classify::model::{features, ModelConfig, SharedModel};
use triage_loop::classify::Classifier;
use triage_loop::config;

const CLASSES: [&str; 4] = ["tone_brand", "logic_tool", "data_quality", "coverage_gap"];

fn kv(key: &str, v: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

/// A failing span like the corpus's: an internal step of agent `support` with an exception.
fn failing(step: &str, ty: &str, msg: &str) -> Span {
    Span {
        trace_id: vec![7; 16],
        span_id: vec![8; 8],
        parent_span_id: vec![9; 8],
        name: step.into(),
        kind: 1,
        attributes: vec![
            kv("gen_ai.agent.name", "support"),
            kv("gen_ai.conversation.id", "conv-1234abcd"),
            kv("code.function", "run_step"),
        ],
        events: vec![Event {
            name: "exception".into(),
            attributes: vec![
                kv("exception.type", ty),
                kv("exception.message", msg),
                kv("exception.stacktrace", "Traceback ..."),
            ],
            ..Default::default()
        }],
        status: Some(Status {
            message: msg.into(),
            code: StatusCode::Error as i32,
        }),
        ..Default::default()
    }
}

/// Label `i` of a mix of four failure patterns, one per class.
fn example(i: usize) -> (Span, &'static str) {
    match i % 4 {
        0 => (
            failing(
                "lint_reply",
                "BrandLintError",
                &format!("reply {i} greets enterprise customer by first name"),
            ),
            "tone_brand",
        ),
        1 => (
            failing(
                "plan",
                "PlannerError",
                &format!("plan has a cycle between steps {i} and {}", i + 2),
            ),
            "logic_tool",
        ),
        2 => (
            failing(
                "verify_answer",
                "PriceMismatch",
                &format!("quoted price {i}.99 differs from catalogue price"),
            ),
            "data_quality",
        ),
        _ => (
            failing(
                "dispatch_skill",
                "SkillNotRegistered",
                &format!("no skill registered for request type warranty_claim_{i}"),
            ),
            "coverage_gap",
        ),
    }
}

fn resource() -> Resource {
    Resource {
        attributes: vec![
            kv("service.name", "support-agent"),
            kv("service.version", "2.4.1"),
        ],
        ..Default::default()
    }
}

/// A model that has learned `n` labels.
fn trained(n: usize) -> SharedModel {
    let cfg = ModelConfig::default();
    let model = SharedModel::new(&cfg, &CLASSES);
    let classifier = config::load_default().take_classifier();
    let res = resource();
    for i in 0..n {
        let (span, class) = example(i);
        let signals = classifier.detect(&span);
        model.learn(&features(&span, Some(&res), &signals), class);
    }
    model
}

fn classifier(model: Option<SharedModel>) -> Classifier {
    let c = config::load_default().take_classifier();
    match model {
        Some(m) => c.with_model(m),
        None => c,
    }
}

fn per_failure(c: &mut Criterion) {
    let mut g = c.benchmark_group("model");
    g.measurement_time(Duration::from_secs(3)).sample_size(50);
    let res = resource();
    let (span, _) = example(1_001);

    // The hot path on a span no rule decides: the cascade without and with a ready model.
    let rules_only = classifier(None);
    g.bench_function("classify_unruled_span/rules_only", |b| {
        b.iter(|| black_box(rules_only.classify(black_box(&span), Some(&res), None)))
    });
    let with_model = classifier(Some(trained(1_000)));
    assert_eq!(
        with_model
            .classify(&span, Some(&res), None)
            .map(|d| d.source.as_str()),
        Some("model")
    );
    g.bench_function("classify_unruled_span/with_model", |b| {
        b.iter(|| black_box(with_model.classify(black_box(&span), Some(&res), None)))
    });

    // features() + predict(): the failure side's and the API's path.
    let model = trained(1_000);
    let signals = with_model.detect(&span);
    g.bench_function("features", |b| {
        b.iter(|| black_box(features(black_box(&span), Some(&res), &signals)))
    });
    g.bench_function("features_and_predict", |b| {
        b.iter(|| {
            let f = features(black_box(&span), Some(&res), &signals);
            black_box(model.predict(&f))
        })
    });

    // One label arriving (refits of the temperature amortised in).
    let tokens: Vec<(Vec<String>, &str)> = (0..64)
        .map(|i| {
            let (s, class) = example(i);
            (features(&s, Some(&res), &with_model.detect(&s)), class)
        })
        .collect();
    let learner = trained(1_000);
    let mut i = 0;
    g.bench_function("learn_one_label_after_1000", |b| {
        b.iter(|| {
            let (t, class) = &tokens[i % tokens.len()];
            i += 1;
            black_box(learner.learn(t, class))
        })
    });
    g.finish();
}

criterion_group!(benches, per_failure);
criterion_main!(benches);
