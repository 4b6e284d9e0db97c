//! The product's metrics (DESIGN.md names), registered once; hot-path handles are pre-resolved.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::{LazyLock, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::classify::signals::SignalKind;
use crate::remediation::gate::GateReport;

/// One label pair.
type L1 = [(&'static str, String); 1];
/// No labels: a family of one series that is absent until first set.
type L0 = [(&'static str, String); 0];
type L2 = [(&'static str, String); 2];
type L3 = [(&'static str, String); 3];
type L4 = [(&'static str, String); 4];

/// Buckets of `triage_loop_latency_seconds`: 1s to 30 days (the loop spans minutes to weeks).
pub const LATENCY_BUCKETS: [f64; 16] = [
    1.0,
    5.0,
    15.0,
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    3.0 * 3600.0,
    6.0 * 3600.0,
    12.0 * 3600.0,
    86400.0,
    2.0 * 86400.0,
    3.0 * 86400.0,
    7.0 * 86400.0,
    30.0 * 86400.0,
];

/// Loop-latency stages, in order.
pub const STAGES: [&str; 4] = ["classified", "dispatched", "shipped", "verified"];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// What happened to spans (`triage_spans_total{outcome}`).
#[derive(Clone, Default)]
pub struct SpanOutcomes {
    /// Delivered to the downstream.
    pub forwarded: Counter,
    /// Carried a failure signal and got `failure.*` attributes.
    pub tagged: Counter,
    /// Removed from an accepted request (invalid ids, invalid UTF-8) and reported back as
    /// `partial_success`. Whole requests refused (malformed, back-pressure) are counted in
    /// `triage_receiver_requests_total`.
    pub rejected: Counter,
    /// Accepted but not delivered (the exporter gave up).
    pub dropped: Counter,
}

/// Every metric triage-loop exports.
pub struct Metrics {
    registry: Registry,
    pub spans: SpanOutcomes,
    signals: Vec<Counter>,
    tagged_by_class: Family<L2, Counter>,
    receiver_requests: Family<L3, Counter>,
    export_requests: Family<L2, Counter>,
    pub queue_requests: Gauge,
    pub queue_bytes: Gauge,
    pub queue_capacity_requests: Gauge,
    pub queue_capacity_bytes: Gauge,
    /// Requests found damaged in the persistent export queue and discarded.
    pub export_queue_corrupt: Counter,
    /// Flushes of the persistent export queue to stable storage (`fsync: true`), each a group
    /// commit of the requests written before it.
    pub export_queue_flushes: Counter,
    export_queue_recovered: Family<L1, Counter>,
    failures: Family<L4, Counter>,
    loop_latency: Family<L2, Histogram, fn() -> Histogram>,
    issues: Family<L2, Gauge>,
    dispatches: Family<L2, Counter>,
    /// What the failure side could not take or hold (`triage_failure_side_dropped_total{reason}`).
    failure_side_dropped: Family<L1, Counter>,
    /// Traces the assembler decided, by how (`triage_traces_decided_total{reason}`).
    traces_decided: Family<L1, Counter>,
    /// Traces held by the assembler now.
    pub assembler_traces: Gauge,
    /// Failures the assembler decided that are not yet written to the store or counted as
    /// dropped (`triage_failures_pending`).
    pub failures_pending: Gauge,
    /// Failures the retention sweep deleted from the store (`triage_failures_pruned_total`).
    pub failures_pruned: Counter,
    /// Human corrections (`triage_overrides_total{from_class,to_class}`).
    overrides: Family<L2, Counter>,
    /// LLM judge calls and refusals, by outcome (`triage_judge_total{outcome}`).
    judge: Family<L1, Counter>,
    /// Agent and service label values seen on `triage_failures_total`, capped.
    failure_labels: Mutex<LabelCap>,
    /// Series of the families counted per failure or per request with a signal, looked up
    /// before (`tagged_by_class`, `failures`, `traces_decided`).
    tagged_series: Series,
    failure_series: Series,
    decided_series: Series,
    /// The scaling gate's verdict, 1 pass / 0 fail (`triage_gate_pass`).
    gate_pass: Family<L0, Gauge>,
    /// Each gate check, 1 pass / 0 fail (`triage_gate_check_pass{check,class}`).
    gate_checks: Family<L2, Gauge>,
}

/// Most distinct values of a label taken from telemetry (agent, service) on one metric; more
/// are folded into `other`, so a misbehaving producer cannot grow the series without bound.
pub const MAX_LABEL_VALUES: usize = 1000;

/// Distinct label values seen per label, up to `MAX_LABEL_VALUES` each.
#[derive(Default)]
struct LabelCap {
    agents: HashSet<String>,
    services: HashSet<String>,
}

/// `value` if it was seen before or there is room for it, else `other`.
fn capped<'a>(seen: &mut HashSet<String>, value: &'a str) -> &'a str {
    if seen.contains(value) || seen.len() < MAX_LABEL_VALUES && seen.insert(value.to_string()) {
        value
    } else {
        "other"
    }
}

/// The counters of one family already looked up, by their label values as given (unescaped),
/// so a series counted again costs a hash and a lock instead of its label strings. It holds no
/// more series than its family does.
#[derive(Default)]
struct Series {
    /// By a hash of the label values: the series with those values (almost always one).
    by_values: Mutex<HashMap<u64, Vec<KnownSeries>>>,
}

/// A series' label values and its counter.
type KnownSeries = (Box<[Box<str>]>, Counter);

impl Series {
    /// The counter of `values`, made by `make` the first time.
    fn counter(&self, values: &[&str], make: impl FnOnce() -> Counter) -> Counter {
        static HASH: LazyLock<std::collections::hash_map::RandomState> =
            LazyLock::new(Default::default);
        let h = HASH.hash_one(values);
        let mut map = self.by_values.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = map.entry(h).or_default();
        let same = |kept: &[Box<str>]| kept.iter().map(|k| &**k).eq(values.iter().copied());
        if let Some((_, c)) = bucket.iter().find(|(kept, _)| same(kept)) {
            return c.clone();
        }
        let c = make();
        bucket.push((values.iter().map(|v| Box::from(*v)).collect(), c.clone()));
        c
    }
}

/// A label value as the text exposition needs it: prometheus-client writes label values as
/// given, so `\`, `"` and newlines from telemetry (agent and service names) are escaped here.
fn label(value: &str) -> String {
    if !value.contains(['\\', '"', '\n']) {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 2);
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The counter of a one-label family. The family's read guard is released before returning
/// (holding two guards at once deadlocks on insertion).
fn counter(family: &Family<L1, Counter>, key: &'static str, value: &str) -> Counter {
    let guard = family.get_or_create(&[(key, value.to_string())]);
    let c = guard.clone();
    drop(guard);
    c
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let spans_family = Family::<L1, Counter>::default();
        let spans = SpanOutcomes {
            forwarded: counter(&spans_family, "outcome", "forwarded"),
            tagged: counter(&spans_family, "outcome", "tagged"),
            rejected: counter(&spans_family, "outcome", "rejected"),
            dropped: counter(&spans_family, "outcome", "dropped"),
        };
        registry.register(
            "triage_spans",
            "Spans by outcome: forwarded, tagged (carried a failure signal), rejected (removed from a request as invalid, reported as partial success), dropped (accepted but not delivered)",
            spans_family,
        );
        let signals_family = Family::<L1, Counter>::default();
        let signals = SignalKind::ALL
            .iter()
            .map(|k| counter(&signals_family, "kind", k.as_str()))
            .collect();
        registry.register(
            "triage_signals",
            "Failure signals detected on spans, by kind",
            signals_family,
        );
        let tagged_by_class = Family::<L2, Counter>::default();
        registry.register(
            "triage_tagged_spans",
            "Spans tagged with a failure class, by class and source",
            tagged_by_class.clone(),
        );
        let receiver_requests = Family::<L3, Counter>::default();
        registry.register(
            "triage_receiver_requests",
            "OTLP export requests received, by protocol, signal and outcome (accepted, rejected, refused)",
            receiver_requests.clone(),
        );
        let export_requests = Family::<L2, Counter>::default();
        registry.register(
            "triage_export_requests",
            "Export requests sent downstream, by signal and outcome (sent, retried, failed, queue_full)",
            export_requests.clone(),
        );
        let queue_requests = Gauge::default();
        let queue_bytes = Gauge::default();
        let queue_capacity_requests = Gauge::default();
        let queue_capacity_bytes = Gauge::default();
        registry.register(
            "triage_export_queue_requests",
            "Export requests waiting or in flight",
            queue_requests.clone(),
        );
        registry.register(
            "triage_export_queue_bytes",
            "Bytes of export requests waiting or in flight",
            queue_bytes.clone(),
        );
        registry.register(
            "triage_export_queue_capacity_requests",
            "Export queue cap, requests",
            queue_capacity_requests.clone(),
        );
        registry.register(
            "triage_export_queue_capacity_bytes",
            "Export queue cap, bytes",
            queue_capacity_bytes.clone(),
        );
        let export_queue_corrupt = Counter::default();
        registry.register(
            "triage_export_queue_corrupt",
            "Requests found damaged in the persistent export queue and discarded (their spans count as dropped)",
            export_queue_corrupt.clone(),
        );
        let export_queue_flushes = Counter::default();
        registry.register(
            "triage_export_queue_flushes",
            "Flushes of the persistent export queue to stable storage (file_storage fsync: true); each acknowledges every request written before it",
            export_queue_flushes.clone(),
        );
        let export_queue_recovered = Family::<L1, Counter>::default();
        for signal in ["traces", "logs", "metrics"] {
            counter(&export_queue_recovered, "signal", signal);
        }
        registry.register(
            "triage_export_queue_recovered",
            "Items (spans, log records, metrics) an earlier process left in the persistent export queue, queued again at start, by signal",
            export_queue_recovered.clone(),
        );
        let failures = Family::<L4, Counter>::default();
        registry.register(
            "triage_failures",
            "Failures (failed agent runs, one per trace) recorded, by class, source, agent and service",
            failures.clone(),
        );
        let loop_latency =
            Family::<L2, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register(
            "triage_loop_latency_seconds",
            "Loop latency per issue cycle, from the first observed failure to each stage (classified, dispatched, shipped, verified), by class",
            loop_latency.clone(),
        );
        let issues = Family::<L2, Gauge>::default();
        registry.register("triage_issues", "Issues by class and state", issues.clone());
        let dispatches = Family::<L2, Counter>::default();
        registry.register(
            "triage_dispatch",
            "Dispatch attempts by sink and outcome (delivered, retried, gave_up)",
            dispatches.clone(),
        );
        let failure_side_dropped = Family::<L1, Counter>::default();
        // Every reason at 0 from the start: an empty family is left out of the exposition, and
        // `increase()` would miss the first drop of a series that appears at 1.
        for reason in crate::failure::drop_reason::ALL {
            counter(&failure_side_dropped, "reason", reason);
        }
        registry.register(
            "triage_failure_side_dropped",
            "Span records, log signals or failures the failure side dropped, by reason (queue_full, late, span_cap, malformed, closed, store_error)",
            failure_side_dropped.clone(),
        );
        let traces_decided = Family::<L1, Counter>::default();
        registry.register(
            "triage_traces_decided",
            "Traces the assembler decided, by why (root_ended, window, evicted, shutdown)",
            traces_decided.clone(),
        );
        let assembler_traces = Gauge::default();
        registry.register(
            "triage_assembler_traces",
            "Traces held by the assembler",
            assembler_traces.clone(),
        );
        let failures_pending = Gauge::default();
        registry.register(
            "triage_failures_pending",
            "Failures decided and not yet written to the store (a backlog while the store is slow or down)",
            failures_pending.clone(),
        );
        let failures_pruned = Counter::default();
        registry.register(
            "triage_failures_pruned",
            "Failures deleted from the store by the retention sweep (processors.failure_triage.retention); issues keep their counts",
            failures_pruned.clone(),
        );
        let overrides = Family::<L2, Counter>::default();
        registry.register(
            "triage_overrides",
            "Classes a person changed, by the class before and after (the classifier's error)",
            overrides.clone(),
        );
        let judge = Family::<L1, Counter>::default();
        registry.register(
            "triage_judge",
            "LLM judge attempts by outcome (answered, unknown_class, malformed, timeout, http_error, rate_limited, budget_exhausted, queue_full)",
            judge.clone(),
        );
        let gate_pass = Family::<L0, Gauge>::default();
        registry.register(
            "triage_gate_pass",
            "The scaling gate (GET /api/v1/gate): 1 when every check passes, 0 when one fails; absent until first evaluated",
            gate_pass.clone(),
        );
        let gate_checks = Family::<L2, Gauge>::default();
        registry.register(
            "triage_gate_check_pass",
            "Each scaling-gate check, 1 pass / 0 fail, by check and class (class=\"all\" for checks over every class)",
            gate_checks.clone(),
        );
        Metrics {
            registry,
            gate_pass,
            gate_checks,
            judge,
            overrides,
            failures,
            loop_latency,
            issues,
            dispatches,
            failure_side_dropped,
            traces_decided,
            assembler_traces,
            failures_pending,
            failures_pruned,
            failure_labels: Mutex::default(),
            tagged_series: Series::default(),
            failure_series: Series::default(),
            decided_series: Series::default(),
            spans,
            signals,
            tagged_by_class,
            receiver_requests,
            export_requests,
            queue_requests,
            queue_bytes,
            queue_capacity_requests,
            queue_capacity_bytes,
            export_queue_corrupt,
            export_queue_flushes,
            export_queue_recovered,
        }
    }

    #[inline]
    pub fn signal(&self, kind: SignalKind) {
        let i = SignalKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.signals[i].inc();
    }

    /// `n` spans tagged with `class` by `source`.
    pub fn tagged(&self, class: &str, source: &str, n: u64) {
        self.tagged_series
            .counter(&[class, source], || {
                let labels = [("class", label(class)), ("source", label(source))];
                self.tagged_by_class.get_or_create(&labels).clone()
            })
            .inc_by(n);
    }

    pub fn receiver_request(
        &self,
        protocol: &'static str,
        signal: &'static str,
        outcome: &'static str,
    ) {
        self.receiver_requests
            .get_or_create(&[
                ("protocol", protocol.into()),
                ("signal", signal.into()),
                ("outcome", outcome.into()),
            ])
            .inc();
    }

    /// Items of `signal` found in the persistent export queue at start.
    pub fn export_queue_recovered(&self, signal: &'static str, items: u64) {
        counter(&self.export_queue_recovered, "signal", signal).inc_by(items);
    }

    pub fn export_request(&self, signal: &'static str, outcome: &'static str) {
        self.export_requests
            .get_or_create(&[("signal", signal.into()), ("outcome", outcome.into())])
            .inc();
    }

    /// A failure recorded (`triage_failures_total`).
    pub fn failure(&self, class: &str, source: &str, agent: &str, service: &str) {
        let (agent, service) = {
            let mut cap = self
                .failure_labels
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            (
                capped(&mut cap.agents, agent),
                capped(&mut cap.services, service),
            )
        };
        self.failure_series
            .counter(&[class, source, agent, service], || {
                let labels = [
                    ("class", label(class)),
                    ("source", label(source)),
                    ("agent", label(agent)),
                    ("service", label(service)),
                ];
                self.failures.get_or_create(&labels).clone()
            })
            .inc();
    }

    /// One issue cycle reached `stage` (one of `STAGES`) `seconds` after its first failure.
    pub fn loop_latency(&self, class: &str, stage: &'static str, seconds: f64) {
        self.loop_latency
            .get_or_create(&[("class", label(class)), ("stage", stage.into())])
            .observe(seconds.max(0.0));
    }

    /// Sets `triage_issues{class,state}`; states absent from `counts` for a class seen before
    /// are set to 0 by the caller passing them.
    pub fn set_issues(&self, class: &str, state: &str, count: i64) {
        self.issues
            .get_or_create(&[("class", label(class)), ("state", state.into())])
            .set(count);
    }

    /// One dispatch attempt (`triage_dispatch_total{sink,outcome}`).
    pub fn dispatch(&self, sink: &str, outcome: &'static str) {
        self.dispatches
            .get_or_create(&[("sink", label(sink)), ("outcome", outcome.into())])
            .inc();
    }

    /// A person changed an issue's class (`triage_overrides_total{from_class,to_class}`).
    pub fn override_class(&self, from: &str, to: &str) {
        self.overrides
            .get_or_create(&[("from_class", label(from)), ("to_class", label(to))])
            .inc();
    }

    /// Something the failure side dropped, by reason.
    pub fn failure_side_dropped(&self, reason: &'static str, n: u64) {
        counter(&self.failure_side_dropped, "reason", reason).inc_by(n);
    }

    /// A trace the assembler decided, by why.
    pub fn trace_decided(&self, reason: &'static str) {
        self.decided_series
            .counter(&[reason], || {
                counter(&self.traces_decided, "reason", reason)
            })
            .inc();
    }

    /// One LLM judge attempt or refusal (`triage_judge_total{outcome}`; see `llm::OUTCOMES`).
    pub fn judge_outcome(&self, outcome: &str) {
        counter(&self.judge, "outcome", &label(outcome)).inc();
    }

    /// Exports the gate's answer: `triage_gate_pass` and one `triage_gate_check_pass` per check.
    pub fn set_gate(&self, report: &GateReport) {
        self.gate_pass
            .get_or_create(&[])
            .set(i64::from(report.pass));
        for check in &report.checks {
            let class = check.class.as_deref().unwrap_or("all");
            self.gate_checks
                .get_or_create(&[("check", label(&check.name)), ("class", label(class))])
                .set(i64::from(check.pass));
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_from_telemetry_are_escaped_in_the_exposition() {
        let m = Metrics::new();
        m.failure("logic_tool", "rule", "agent \"x\"\\y\nz", "svc");
        let text = m.render();
        assert!(text.contains(r#"agent="agent \"x\"\\y\nz""#), "{text}");
        crate::admin::otlp_push::to_otlp(&text, 0, 1).expect("the exposition parses");
    }

    #[test]
    fn series_looked_up_again_count_on_the_same_counter() {
        let m = Metrics::new();
        for _ in 0..3 {
            m.tagged("logic_tool", "rule", 2);
            m.failure("logic_tool", "rule", "planner", "svc");
            m.trace_decided("root_ended");
        }
        m.tagged("logic_tool", "model", 1);
        m.failure("logic_tool", "rule", "planner", "svc\"2");
        let text = m.render();
        for want in [
            r#"{class="logic_tool",source="rule"} 6"#,
            r#"{class="logic_tool",source="model"} 1"#,
            r#"{class="logic_tool",source="rule",agent="planner",service="svc"} 3"#,
            r#"{class="logic_tool",source="rule",agent="planner",service="svc\"2"} 1"#,
            r#"triage_traces_decided_total{reason="root_ended"} 3"#,
        ] {
            assert!(text.contains(want), "{want} in\n{text}");
        }
        let sizes = |s: &Series| {
            s.by_values
                .lock()
                .unwrap()
                .values()
                .map(Vec::len)
                .sum::<usize>()
        };
        assert_eq!(sizes(&m.tagged_series), 2);
        assert_eq!(sizes(&m.failure_series), 2);
    }

    #[test]
    fn agent_and_service_labels_are_capped() {
        let m = Metrics::new();
        for i in 0..MAX_LABEL_VALUES + 5 {
            m.failure("logic_tool", "rule", &format!("agent-{i}"), "svc");
        }
        m.failure("logic_tool", "rule", "agent-0", "svc");
        let text = m.render();
        assert!(
            text.contains(r#"agent="other",service="svc"} 5"#),
            "{}",
            &text[..200]
        );
        assert!(text.contains(r#"agent="agent-0",service="svc"} 2"#));
        assert!(!text.contains(&format!("agent-{}\"", MAX_LABEL_VALUES)));
    }

    #[test]
    fn the_gate_is_absent_until_evaluated_then_one_gauge_per_check() {
        let m = Metrics::new();
        assert!(!m.render().contains("\ntriage_gate_pass"));
        let cfg = crate::config::GateConfig::default();
        let mut report = crate::remediation::gate::evaluate(&[], &cfg, &["logic_tool"], 0);
        m.set_gate(&report);
        let text = m.render();
        assert!(text.contains("\ntriage_gate_pass{} 1\n"), "{text}");
        assert!(
            text.contains(
                r#"triage_gate_check_pass{check="p90_observed_to_shipped",class="logic_tool"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"triage_gate_check_pass{check="open_issue_age",class="all"} 1"#),
            "{text}"
        );
        report.checks[0].pass = false;
        report.pass = false;
        m.set_gate(&report);
        let text = m.render();
        assert!(text.contains("\ntriage_gate_pass{} 0\n"), "{text}");
        assert!(text.contains(r#"class="logic_tool"} 0"#), "{text}");
        crate::admin::otlp_push::to_otlp(&text, 0, 1).expect("the exposition parses");
    }
}
