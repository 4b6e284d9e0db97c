//! OTLP metrics push end to end: real metrics, the real export queue and exporter, a real OTLP/gRPC
//! downstream; what arrives must say what `/metrics` says.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{
    metric::Data, number_data_point, AggregationTemporality, Metric,
};
use tokio::sync::watch;

use triage_loop::admin::metrics::{Metrics, LATENCY_BUCKETS};
use triage_loop::admin::otlp_push;
use triage_loop::config::{OtlpExporter, QueueConfig, RetryConfig};
use triage_loop::otlp::exporter;
use triage_loop::otlp::sink::RecordingSink;

type Attrs = BTreeMap<String, String>;

/// Samples of a text exposition, by sample name: (labels, value). Deliberately simple and
/// separate from the code under test: the label values used here hold no quotes or commas.
fn scrape_samples(text: &str) -> HashMap<String, Vec<(Attrs, f64)>> {
    let mut out: HashMap<String, Vec<(Attrs, f64)>> = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().expect("number"),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let attrs = labels
            .split(',')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').expect("label");
                (k.to_string(), v.trim_matches('"').to_string())
            })
            .collect();
        out.entry(name.to_string())
            .or_default()
            .push((attrs, value));
    }
    out
}

fn attrs(kvs: &[KeyValue]) -> Attrs {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                other => panic!("{}: not a string: {other:?}", kv.key),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

fn metric<'a>(req: &'a ExportMetricsServiceRequest, name: &str) -> &'a Metric {
    req.resource_metrics[0].scope_metrics[0]
        .metrics
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no metric {name}"))
}

fn number(v: &Option<number_data_point::Value>) -> f64 {
    match v {
        Some(number_data_point::Value::AsInt(i)) => *i as f64,
        Some(number_data_point::Value::AsDouble(d)) => *d,
        None => panic!("no value"),
    }
}

/// The number points of a Sum or Gauge as (attributes, value), sorted.
fn number_points(m: &Metric) -> Vec<(Attrs, f64)> {
    let points = match &m.data {
        Some(Data::Sum(s)) => &s.data_points,
        Some(Data::Gauge(g)) => &g.data_points,
        other => panic!("{}: not a number metric: {other:?}", m.name),
    };
    let mut v: Vec<_> = points
        .iter()
        .map(|p| (attrs(&p.attributes), number(&p.value)))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn sorted(mut v: Vec<(Attrs, f64)>) -> Vec<(Attrs, f64)> {
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn assert_sum(req: &ExportMetricsServiceRequest, name: &str, unit: &str) -> Vec<(Attrs, f64)> {
    let m = metric(req, name);
    assert_eq!(m.unit, unit, "{name}");
    let Some(Data::Sum(s)) = &m.data else {
        panic!("{name}: not a sum")
    };
    assert!(s.is_monotonic, "{name}");
    assert_eq!(
        s.aggregation_temporality,
        AggregationTemporality::Cumulative as i32
    );
    number_points(m)
}

fn assert_gauge(req: &ExportMetricsServiceRequest, name: &str, unit: &str) -> Vec<(Attrs, f64)> {
    let m = metric(req, name);
    assert_eq!(m.unit, unit, "{name}");
    assert!(
        matches!(m.data, Some(Data::Gauge(_))),
        "{name}: not a gauge"
    );
    number_points(m)
}

/// The latency histogram as the scrape shows it, per label set: (bounds, cumulative, sum, count).
type HistogramScrape = BTreeMap<Attrs, (Vec<f64>, Vec<u64>, f64, u64)>;

fn scraped_histogram(samples: &HashMap<String, Vec<(Attrs, f64)>>, name: &str) -> HistogramScrape {
    let mut out: HistogramScrape = BTreeMap::new();
    for (labels, v) in &samples[&format!("{name}_bucket")] {
        let mut labels = labels.clone();
        let le = labels.remove("le").expect("le");
        let e = out.entry(labels).or_default();
        if le != "+Inf" {
            e.0.push(le.parse().unwrap());
        }
        e.1.push(*v as u64);
    }
    for (labels, v) in &samples[&format!("{name}_sum")] {
        out.get_mut(labels).unwrap().2 = *v;
    }
    for (labels, v) in &samples[&format!("{name}_count")] {
        out.get_mut(labels).unwrap().3 = *v as u64;
    }
    out
}

fn pushed_histogram(req: &ExportMetricsServiceRequest, name: &str, unit: &str) -> HistogramScrape {
    let m = metric(req, name);
    assert_eq!(m.unit, unit);
    let Some(Data::Histogram(h)) = &m.data else {
        panic!("{name}: not a histogram")
    };
    assert_eq!(
        h.aggregation_temporality,
        AggregationTemporality::Cumulative as i32
    );
    h.data_points
        .iter()
        .map(|p| {
            assert_eq!(p.bucket_counts.len(), p.explicit_bounds.len() + 1);
            let cumulative = p
                .bucket_counts
                .iter()
                .scan(0, |acc, c| {
                    *acc += c;
                    Some(*acc)
                })
                .collect();
            (
                attrs(&p.attributes),
                (
                    p.explicit_bounds.clone(),
                    cumulative,
                    p.sum.expect("sum"),
                    p.count,
                ),
            )
        })
        .collect()
}

async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !cond() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

fn received(sink: &RecordingSink) -> Vec<ExportMetricsServiceRequest> {
    sink.metrics.lock().unwrap().clone()
}

fn first_point_times(req: &ExportMetricsServiceRequest) -> (u64, u64) {
    match &metric(req, "triage.failures").data {
        Some(Data::Sum(s)) => (
            s.data_points[0].start_time_unix_nano,
            s.data_points[0].time_unix_nano,
        ),
        _ => panic!("triage.failures: not a sum"),
    }
}

async fn downstream() -> (String, RecordingSink) {
    let sink = RecordingSink::default();
    let addr = sink.serve().await.expect("sink listens");
    (addr.to_string(), sink)
}

fn bump(metrics: &Metrics) {
    metrics.spans.forwarded.inc_by(5);
    metrics.spans.tagged.inc_by(2);
    for _ in 0..3 {
        metrics.failure("logic_tool", "rule", "planner", "checkout");
    }
    metrics.failure("tone_brand", "human", "writer", "site");
    metrics.loop_latency("logic_tool", "classified", 0.5);
    metrics.loop_latency("logic_tool", "shipped", 7200.0);
    metrics.loop_latency("logic_tool", "shipped", 40.0);
    metrics.loop_latency("tone_brand", "dispatched", 3.0 * 86400.0);
    metrics.set_issues("logic_tool", "open", 3);
    metrics.set_issues("tone_brand", "verified", 1);
}

#[tokio::test]
async fn pushed_metrics_say_what_the_scrape_says() {
    let (endpoint, sink) = downstream().await;
    let metrics = Arc::new(Metrics::new());
    let config = OtlpExporter {
        endpoint,
        ..Default::default()
    };
    let (queue, _worker) =
        exporter::start(&config, None, metrics.clone()).expect("exporter starts");
    bump(&metrics);

    let (stop_tx, stop_rx) = watch::channel(false);
    let pusher = otlp_push::spawn(
        metrics.clone(),
        queue.clone(),
        Duration::from_millis(50),
        stop_rx,
    );
    assert!(
        eventually(Duration::from_secs(10), || !received(&sink).is_empty()).await,
        "no metrics request reached the downstream"
    );
    // The metrics bumped above do not move while pushing, so this scrape is "the same moment".
    let text = metrics.render();
    let scrape = scrape_samples(&text);
    let req = received(&sink)[0].clone();

    let rm = &req.resource_metrics[0];
    let resource = attrs(&rm.resource.as_ref().unwrap().attributes);
    assert_eq!(resource["service.name"], "triage-loop");
    assert_eq!(resource["service.version"], env!("CARGO_PKG_VERSION"));
    assert!(resource["service.instance.id"].ends_with(&format!("-{}", std::process::id())));
    assert_eq!(
        rm.scope_metrics[0].scope.as_ref().unwrap().name,
        "triage-loop"
    );

    // Counters: names without `_total`, dots, monotonic cumulative sums, the scrape's values.
    assert_eq!(
        assert_sum(&req, "triage.spans", ""),
        sorted(scrape["triage_spans_total"].clone())
    );
    let failures = assert_sum(&req, "triage.failures", "");
    assert_eq!(failures, sorted(scrape["triage_failures_total"].clone()));
    assert_eq!(failures.len(), 2);
    let logic = &failures
        .iter()
        .find(|(a, _)| a["class"] == "logic_tool")
        .unwrap();
    assert_eq!(logic.1, 3.0);
    assert_eq!(logic.0["agent"], "planner");
    let help = text
        .lines()
        .find_map(|l| l.strip_prefix("# HELP triage_failures "))
        .expect("HELP line");
    assert_eq!(metric(&req, "triage.failures").description, help);

    // Gauges, with a unit suffix moved into the unit.
    assert_eq!(
        assert_gauge(&req, "triage.issues", ""),
        sorted(scrape["triage_issues"].clone())
    );
    assert_eq!(
        assert_gauge(&req, "triage.export.queue.capacity", "By"),
        scrape["triage_export_queue_capacity_bytes"]
    );

    // The histogram: unit s, explicit bounds from `le`, buckets, sum and count as scraped.
    let pushed = pushed_histogram(&req, "triage.loop.latency", "s");
    let scraped = scraped_histogram(&scrape, "triage_loop_latency_seconds");
    assert_eq!(pushed, scraped);
    let shipped: Attrs = [("class", "logic_tool"), ("stage", "shipped")]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into();
    let (bounds, cumulative, sum, count) = &pushed[&shipped];
    assert_eq!(bounds.as_slice(), LATENCY_BUCKETS.as_slice());
    assert_eq!((*sum, *count), (7240.0, 2));
    assert_eq!(cumulative[LATENCY_BUCKETS.len()], 2);
    assert_eq!(cumulative[3], 1, "40s falls at or under the 60s bound");

    // Later pushes carry cumulative values from the same start time.
    let (start, first_time) = first_point_times(&req);
    assert!(start > 0 && first_time >= start);
    metrics.failure("logic_tool", "rule", "planner", "checkout");
    let four = |r: &ExportMetricsServiceRequest| {
        number_points(metric(r, "triage.failures"))
            .iter()
            .any(|(a, v)| a["class"] == "logic_tool" && *v == 4.0)
    };
    assert!(
        eventually(Duration::from_secs(10), || received(&sink).iter().any(four)).await,
        "the cumulative count never reached 4"
    );
    let later = received(&sink).into_iter().find(four).unwrap();
    let (later_start, later_time) = first_point_times(&later);
    assert_eq!(later_start, start);
    assert!(later_time > first_time);

    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), pusher)
        .await
        .expect("the pusher stops")
        .expect("the pusher does not panic");
}

#[tokio::test]
async fn stopping_pushes_once_more_then_ends() {
    let (endpoint, sink) = downstream().await;
    let metrics = Arc::new(Metrics::new());
    let config = OtlpExporter {
        endpoint,
        ..Default::default()
    };
    let (queue, _worker) =
        exporter::start(&config, None, metrics.clone()).expect("exporter starts");
    metrics.set_issues("coverage_gap", "open", 9);

    let (stop_tx, stop_rx) = watch::channel(false);
    let pusher = otlp_push::spawn(metrics, queue, Duration::from_secs(3600), stop_rx);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        received(&sink).is_empty(),
        "pushed before the first interval"
    );

    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), pusher)
        .await
        .expect("the pusher stops")
        .unwrap();
    assert!(eventually(Duration::from_secs(10), || received(&sink).len() == 1).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let all = received(&sink);
    assert_eq!(all.len(), 1, "exactly one last push");
    let issues = assert_gauge(&all[0], "triage.issues", "");
    assert_eq!(issues[0].1, 9.0);
}

#[tokio::test]
async fn a_full_queue_is_counted_and_not_retried() {
    // A downstream that refuses connections keeps the first push in flight (retried forever);
    // with a zero byte cap every later push finds the queue full.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = closed.local_addr().unwrap().to_string();
    drop(closed);
    let metrics = Arc::new(Metrics::new());
    let config = OtlpExporter {
        endpoint,
        retry_on_failure: RetryConfig {
            enabled: true,
            initial_interval: Duration::from_millis(50),
            max_interval: Duration::from_millis(100),
            max_elapsed_time: Duration::ZERO,
        },
        sending_queue: QueueConfig {
            num_consumers: 1,
            queue_size: 10,
            queue_size_mib: 0,
            storage: None,
        },
        ..Default::default()
    };
    let (queue, _worker) =
        exporter::start(&config, None, metrics.clone()).expect("exporter starts");
    let (stop_tx, stop_rx) = watch::channel(false);
    let pusher = otlp_push::spawn(metrics.clone(), queue, Duration::from_millis(30), stop_rx);
    let full = |m: &Metrics| {
        scrape_samples(&m.render())
            .get("triage_export_requests_total")
            .and_then(|s| {
                s.iter()
                    .find(|(a, _)| a["signal"] == "metrics" && a["outcome"] == "queue_full")
                    .map(|(_, v)| *v)
            })
            .unwrap_or(0.0)
    };
    assert!(
        eventually(Duration::from_secs(10), || full(&metrics) >= 3.0).await,
        "full-queue pushes were not counted"
    );
    // Only the first push is waiting: the skipped ones were not queued for a retry.
    let samples = scrape_samples(&metrics.render());
    assert_eq!(samples["triage_export_queue_requests"][0].1, 1.0);

    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), pusher)
        .await
        .expect("the pusher stops")
        .unwrap();
}
