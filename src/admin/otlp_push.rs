//! OTLP metrics push: the `/metrics` exposition translated into OTLP and sent downstream.
//!
//! `Metrics::render()` is parsed and turned into an `ExportMetricsServiceRequest`, enqueued on
//! the export queue on an interval. One set of definitions (src/admin/metrics.rs), exported two
//! ways: the text the admin listener serves is the input here, so both carry the same metrics,
//! names and values. Names follow DESIGN.md ("Prometheus names; OTLP names use dots"): `_total`
//! is dropped from counters, a unit suffix (`_seconds`, `_bytes`, `_milliseconds`) moves into
//! the unit field, then `_` becomes `.` (`triage_loop_latency_seconds` → `triage.loop.latency`,
//! unit `s`).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric::Data, number_data_point, AggregationTemporality, Gauge, Histogram, HistogramDataPoint,
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::admin::metrics::Metrics;
use crate::otlp::attributes::string_kv;
use crate::otlp::exporter::{ExportItem, ExportQueue};
use crate::otlp::SignalType;

/// `service.name` of the resource and name of the instrumentation scope.
pub const SERVICE_NAME: &str = "triage-loop";

/// Most series one exposition may hold; more is refused as malformed (the product has far fewer).
pub const MAX_SERIES: usize = 100_000;

/// Prometheus unit suffixes and their UCUM units (the OTLP unit field).
const UNIT_SUFFIXES: [(&str, &str); 3] =
    [("_seconds", "s"), ("_milliseconds", "ms"), ("_bytes", "By")];

/// The exposition could not be read; `line` is 1-based (the line the problem was found on).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("metrics exposition, line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

fn err<T>(line: usize, reason: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError {
        line,
        reason: reason.into(),
    })
}

// ---------------------------------------------------------------------------------------------
// Parsing the text exposition (OpenMetrics 1.0 text, and the Prometheus 0.0.4 text it extends).
// ---------------------------------------------------------------------------------------------

/// A metric family's type, from its `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
    /// `unknown` / `untyped`, or no TYPE line: exported as a gauge.
    Unknown,
    /// summary, info, stateset, gaugehistogram: the product emits none; their samples are skipped.
    Unsupported,
}

impl Kind {
    /// Whether a family of this kind has samples of `part`.
    fn allows(self, part: Part) -> bool {
        match self {
            Kind::Counter => matches!(part, Part::Value | Part::Total | Part::Created),
            Kind::Gauge | Kind::Unknown => part == Part::Value,
            Kind::Histogram => {
                matches!(part, Part::Bucket | Part::Sum | Part::Count | Part::Created)
            }
            Kind::Unsupported => true,
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "counter" => Kind::Counter,
            "gauge" => Kind::Gauge,
            "histogram" => Kind::Histogram,
            "unknown" | "untyped" => Kind::Unknown,
            "summary" | "info" | "stateset" | "gaugehistogram" => Kind::Unsupported,
            _ => return None,
        })
    }
}

/// A sample value as written: integers stay integers (OTLP `as_int`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Number {
    Int(i64),
    Double(f64),
}

impl Number {
    fn as_f64(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::Double(d) => d,
        }
    }
}

/// Which sample of a family a line is, from its name's suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Value,
    Total,
    Created,
    Bucket,
    Sum,
    Count,
    /// `_info`, `_gsum`, `_gcount`: only in unsupported families.
    Other,
}

const SUFFIXES: [(&str, Part); 8] = [
    ("_total", Part::Total),
    ("_created", Part::Created),
    ("_bucket", Part::Bucket),
    ("_sum", Part::Sum),
    ("_count", Part::Count),
    ("_info", Part::Other),
    ("_gsum", Part::Other),
    ("_gcount", Part::Other),
];

type Labels = Vec<(String, String)>;

/// One labelled series of a family.
#[derive(Debug, Default)]
struct Series {
    labels: Labels,
    line: usize,
    value: Option<Number>,
    sum: Option<f64>,
    count: Option<f64>,
    /// `(le, cumulative count)` in the order read.
    buckets: Vec<(f64, f64)>,
}

#[derive(Debug)]
struct Family {
    name: String,
    /// `None` until a TYPE line is read.
    kind: Option<Kind>,
    help: String,
    unit: Option<String>,
    series: Vec<Series>,
    index: HashMap<Labels, usize>,
}

impl Family {
    fn new(name: &str) -> Family {
        Family {
            name: name.to_string(),
            kind: None,
            help: String::new(),
            unit: None,
            series: Vec::new(),
            index: HashMap::new(),
        }
    }

    fn kind(&self) -> Kind {
        self.kind.unwrap_or(Kind::Unknown)
    }

    fn series_mut(&mut self, labels: Labels, line: usize) -> &mut Series {
        let i = match self.index.get(&labels) {
            Some(&i) => i,
            None => {
                self.index.insert(labels.clone(), self.series.len());
                self.series.push(Series {
                    labels,
                    line,
                    ..Series::default()
                });
                self.series.len() - 1
            }
        };
        &mut self.series[i]
    }
}

/// The families of an exposition, in the order first seen.
#[derive(Debug, Default)]
struct Exposition {
    families: Vec<Family>,
    by_name: HashMap<String, usize>,
    series: usize,
}

/// One sample line, split.
#[derive(Debug, PartialEq)]
struct Sample<'a> {
    name: &'a str,
    labels: Labels,
    value: Number,
}

impl Exposition {
    fn parse(text: &str) -> Result<Exposition, ParseError> {
        let mut exp = Exposition::default();
        let mut eof_at: Option<usize> = None;
        for (i, raw) in text.split('\n').enumerate() {
            let n = i + 1;
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if line.trim().is_empty() {
                continue;
            }
            if let Some(at) = eof_at {
                return err(n, format!("content after `# EOF` (line {at})"));
            }
            if let Some(rest) = line.strip_prefix('#') {
                if rest.trim() == "EOF" {
                    eof_at = Some(n);
                } else {
                    exp.comment(rest, n)?;
                }
                continue;
            }
            let sample = parse_sample(line).or_else(|reason| err(n, reason))?;
            exp.add(sample, n)?;
        }
        Ok(exp)
    }

    fn family_mut(&mut self, name: &str) -> &mut Family {
        let i = match self.by_name.get(name) {
            Some(&i) => i,
            None => {
                self.by_name.insert(name.to_string(), self.families.len());
                self.families.push(Family::new(name));
                self.families.len() - 1
            }
        };
        &mut self.families[i]
    }

    /// `# HELP`, `# TYPE`, `# UNIT`; other comments are ignored (Prometheus text allows them).
    fn comment(&mut self, rest: &str, n: usize) -> Result<(), ParseError> {
        let rest = rest.trim_start();
        let (keyword, rest) = rest.split_once([' ', '\t']).unwrap_or((rest, ""));
        if !matches!(keyword, "HELP" | "TYPE" | "UNIT") {
            return Ok(());
        }
        let rest = rest.trim_start();
        let (name, value) = rest.split_once([' ', '\t']).unwrap_or((rest, ""));
        if !is_metric_name(name) {
            return err(n, format!("# {keyword}: invalid metric name {name:?}"));
        }
        let value = value.trim();
        let family = self.family_mut(name);
        match keyword {
            "HELP" => family.help = unescape_help(value),
            "TYPE" => {
                let Some(kind) = Kind::parse(value) else {
                    return err(n, format!("# TYPE {name}: unknown metric type {value:?}"));
                };
                if family.kind.is_some() {
                    return err(n, format!("# TYPE {name}: a second TYPE line"));
                }
                if !family.series.is_empty() {
                    return err(n, format!("# TYPE {name}: after samples of {name}"));
                }
                family.kind = Some(kind);
            }
            _ => {
                if value.is_empty() {
                    return err(n, format!("# UNIT {name}: no unit"));
                }
                family.unit = Some(value.to_string());
            }
        }
        Ok(())
    }

    /// Which family a sample name belongs to, and which part of it the sample is.
    fn locate(&self, name: &str) -> Option<(usize, Part)> {
        if let Some(&i) = self.by_name.get(name) {
            return Some((i, Part::Value));
        }
        SUFFIXES.iter().find_map(|(suffix, part)| {
            let base = name.strip_suffix(suffix)?;
            self.by_name.get(base).map(|&i| (i, *part))
        })
    }

    fn add(&mut self, s: Sample<'_>, n: usize) -> Result<(), ParseError> {
        let (i, part) = match self.locate(s.name) {
            Some(found) => found,
            None => {
                self.family_mut(s.name);
                (self.families.len() - 1, Part::Value)
            }
        };
        let family = &mut self.families[i];
        let kind = family.kind();
        if !kind.allows(part) {
            let reason = format!(
                "sample {} does not belong to {kind:?} family {}",
                s.name, family.name
            );
            return err(n, reason);
        }
        if kind == Kind::Unsupported || matches!(part, Part::Created | Part::Other) {
            return Ok(());
        }
        let (labels, le) = split_le(s.labels, part).map_err(|reason| ParseError {
            line: n,
            reason: format!("{}: {reason}", s.name),
        })?;
        let before = family.series.len();
        if !family.series_mut(labels, n).record(part, s.value, le) {
            return err(n, format!("duplicate sample {}", s.name));
        }
        self.series += family.series.len() - before;
        if self.series > MAX_SERIES {
            return err(n, format!("more than {MAX_SERIES} series"));
        }
        Ok(())
    }
}

/// The series key of a sample (labels sorted) and, for a bucket, its `le` bound.
fn split_le(mut labels: Labels, part: Part) -> Result<(Labels, Option<f64>), String> {
    let mut le = None;
    if part == Part::Bucket {
        let pos = labels
            .iter()
            .position(|(k, _)| k == "le")
            .ok_or("bucket without an `le` label")?;
        let (_, v) = labels.remove(pos);
        le = Some(
            parse_number(&v)
                .map_err(|r| format!("le={v:?}: {r}"))?
                .as_f64(),
        );
    }
    labels.sort();
    Ok((labels, le))
}

impl Series {
    /// Keeps one sample's value; false when the series already has it.
    fn record(&mut self, part: Part, value: Number, le: Option<f64>) -> bool {
        match part {
            Part::Value | Part::Total => self.value.replace(value).is_none(),
            Part::Sum => self.sum.replace(value.as_f64()).is_none(),
            Part::Count => self.count.replace(value.as_f64()).is_none(),
            Part::Bucket => {
                let le = le.unwrap_or(f64::NAN);
                let fresh = !self.buckets.iter().any(|(b, _)| *b == le);
                if fresh {
                    self.buckets.push((le, value.as_f64()));
                }
                fresh
            }
            Part::Created | Part::Other => true,
        }
    }
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(is_name_start) && chars.all(is_name_char)
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// HELP text escapes: `\\` and `\n` (and `\"`, which OpenMetrics allows); others stay as written.
fn unescape_help(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('\\') => out.push('\\'),
            Some('"') => out.push('"'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// A sample value: a decimal or float literal, `+Inf`, `-Inf` or `NaN`.
fn parse_number(tok: &str) -> Result<Number, String> {
    match tok {
        "+Inf" | "Inf" | "+inf" | "inf" => return Ok(Number::Double(f64::INFINITY)),
        "-Inf" | "-inf" => return Ok(Number::Double(f64::NEG_INFINITY)),
        "NaN" | "nan" => return Ok(Number::Double(f64::NAN)),
        _ => {}
    }
    let digits = tok.strip_prefix(['-', '+']).unwrap_or(tok);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = tok.parse::<i64>() {
            return Ok(Number::Int(i));
        }
    }
    // Rust also reads "infinity" and "nan" in any case; only plain literals get this far.
    let plain = !digits.is_empty()
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'));
    match tok.parse::<f64>() {
        Ok(v) if plain => Ok(Number::Double(v)),
        _ => Err(format!("invalid number {tok:?}")),
    }
}

/// `name{labels} value [timestamp] [# exemplar]`.
fn parse_sample(line: &str) -> Result<Sample<'_>, String> {
    let line = line.trim_start();
    let name_len = line
        .char_indices()
        .find(|&(_, c)| !is_name_char(c))
        .map_or(line.len(), |(i, _)| i);
    let name = &line[..name_len];
    if !is_metric_name(name) {
        return Err(format!("expected a metric name at {:?}", truncate(line)));
    }
    let mut rest = &line[name_len..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(after)?;
        labels = parsed;
        rest = after;
    }
    if !rest.starts_with([' ', '\t']) {
        return Err(format!("{name}: expected a space and a value"));
    }
    let mut tokens = rest.split_ascii_whitespace();
    let Some(value) = tokens.next() else {
        return Err(format!("{name}: no value"));
    };
    let value = parse_number(value).map_err(|e| format!("{name}: {e}"))?;
    match tokens.next() {
        None | Some("#") => {}
        Some(ts) => {
            parse_number(ts).map_err(|e| format!("{name}: timestamp: {e}"))?;
            if let Some(extra) = tokens.next().filter(|t| *t != "#") {
                return Err(format!("{name}: unexpected {extra:?} after the timestamp"));
            }
        }
    }
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// Reads `name="value",…}` (the `{` already consumed); returns the labels and what follows `}`.
fn parse_labels(mut s: &str) -> Result<(Labels, &str), String> {
    let mut labels: Labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        let (key, after) = s
            .split_once('=')
            .ok_or_else(|| format!("label set not closed at {:?}", truncate(s)))?;
        let key = key.trim();
        if !is_label_name(key) {
            return Err(format!("invalid label name {key:?}"));
        }
        let after = after
            .trim_start()
            .strip_prefix('"')
            .ok_or_else(|| format!("label {key}: value must be quoted"))?;
        let (value, after) = parse_label_value(after).map_err(|e| format!("label {key}: {e}"))?;
        if labels.iter().any(|(k, _)| k == key) {
            return Err(format!("label {key} given twice"));
        }
        labels.push((key.to_string(), value));
        s = after.trim_start();
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err(format!("expected `,` or `}}` after label {key}"));
        }
    }
}

/// Reads a quoted label value's body (the opening quote consumed), resolving `\\`, `\"`, `\n`.
fn parse_label_value(s: &str) -> Result<(String, &str), String> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &s[i + 1..])),
            '\\' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, '\\')) => out.push('\\'),
                Some((_, '"')) => out.push('"'),
                Some((_, other)) => return Err(format!("invalid escape `\\{other}`")),
                None => break,
            },
            '\n' => return Err("raw newline in value".into()),
            c => out.push(c),
        }
    }
    Err("unterminated value".into())
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(40) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

// ---------------------------------------------------------------------------------------------
// Building the OTLP request.
// ---------------------------------------------------------------------------------------------

/// Translates a text exposition (`Metrics::render()`) into one OTLP metrics request:
/// counters → monotonic cumulative Sum, gauges (and untyped) → Gauge, histograms → cumulative
/// Histogram with explicit bounds. Families without samples are left out.
pub fn to_otlp(
    exposition: &str,
    start_unix_nano: u64,
    now_unix_nano: u64,
) -> Result<ExportMetricsServiceRequest, ParseError> {
    let exp = Exposition::parse(exposition)?;
    let times = Times {
        start: start_unix_nano,
        now: now_unix_nano,
    };
    let mut metrics = Vec::with_capacity(exp.families.len());
    for family in &exp.families {
        if let Some(m) = family_to_metric(family, times)? {
            metrics.push(m);
        }
    }
    Ok(ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: SERVICE_NAME.into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    })
}

#[derive(Clone, Copy)]
struct Times {
    start: u64,
    now: u64,
}

/// The OTLP name and unit of a Prometheus family name; `unit` is the family's `# UNIT`, if any.
pub fn otlp_name(prometheus_name: &str, is_counter: bool, unit: Option<&str>) -> (String, String) {
    let mut name = prometheus_name;
    if is_counter {
        name = name.strip_suffix("_total").unwrap_or(name);
    }
    let (suffix, ucum) = match unit {
        Some(u) => {
            let ucum = UNIT_SUFFIXES
                .iter()
                .find(|(suffix, _)| &suffix[1..] == u)
                .map_or(u, |(_, ucum)| *ucum);
            (format!("_{u}"), ucum.to_string())
        }
        None => match UNIT_SUFFIXES.iter().find(|(s, _)| name.ends_with(s)) {
            Some((s, ucum)) => (s.to_string(), ucum.to_string()),
            None => (String::new(), String::new()),
        },
    };
    if let Some(stripped) = name.strip_suffix(suffix.as_str()) {
        if !stripped.is_empty() {
            name = stripped;
        }
    }
    (name.replace('_', "."), ucum)
}

fn family_to_metric(f: &Family, t: Times) -> Result<Option<Metric>, ParseError> {
    let kind = f.kind();
    let (name, unit) = otlp_name(&f.name, kind == Kind::Counter, f.unit.as_deref());
    let data = match kind {
        Kind::Unsupported => return Ok(None),
        Kind::Counter => {
            let points = number_points(f, t, true)?;
            if points.is_empty() {
                return Ok(None);
            }
            Data::Sum(Sum {
                data_points: points,
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            })
        }
        Kind::Gauge | Kind::Unknown => {
            let points = number_points(f, t, false)?;
            if points.is_empty() {
                return Ok(None);
            }
            Data::Gauge(Gauge {
                data_points: points,
            })
        }
        Kind::Histogram => {
            let points = f
                .series
                .iter()
                .map(|s| histogram_point(f, s, t))
                .collect::<Result<Vec<_>, _>>()?;
            if points.is_empty() {
                return Ok(None);
            }
            Data::Histogram(Histogram {
                data_points: points,
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            })
        }
    };
    Ok(Some(Metric {
        name,
        description: f.help.clone(),
        unit,
        metadata: Vec::new(),
        data: Some(data),
    }))
}

fn attributes(labels: &Labels) -> Vec<KeyValue> {
    labels
        .iter()
        .map(|(k, v)| string_kv(k, v.as_str()))
        .collect()
}

fn number_points(f: &Family, t: Times, counter: bool) -> Result<Vec<NumberDataPoint>, ParseError> {
    let mut points = Vec::with_capacity(f.series.len());
    for s in &f.series {
        let Some(value) = s.value else {
            continue;
        };
        if counter && (value.as_f64().is_nan() || value.as_f64() < 0.0) {
            return err(
                s.line,
                format!("counter {}: value {value:?} is not >= 0", f.name),
            );
        }
        points.push(NumberDataPoint {
            attributes: attributes(&s.labels),
            start_time_unix_nano: t.start,
            time_unix_nano: t.now,
            value: Some(match value {
                Number::Int(i) => number_data_point::Value::AsInt(i),
                Number::Double(d) => number_data_point::Value::AsDouble(d),
            }),
            ..Default::default()
        });
    }
    Ok(points)
}

/// A count from the exposition as an integer; `None` when it is not a whole non-negative number.
fn whole(v: f64) -> Option<u64> {
    (v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v <= u64::MAX as f64).then_some(v as u64)
}

fn histogram_point(f: &Family, s: &Series, t: Times) -> Result<HistogramDataPoint, ParseError> {
    let name = &f.name;
    let fail = |reason: String| err(s.line, format!("histogram {name}{:?}: {reason}", s.labels));
    let mut buckets = s.buckets.clone();
    if buckets
        .iter()
        .any(|(le, _)| le.is_nan() || *le == f64::NEG_INFINITY)
    {
        return fail("an `le` bound is NaN or -Inf".into());
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    match buckets.last() {
        Some((le, _)) if *le == f64::INFINITY => {}
        _ => return fail("no le=\"+Inf\" bucket".into()),
    }
    let mut explicit_bounds = Vec::with_capacity(buckets.len() - 1);
    let mut bucket_counts = Vec::with_capacity(buckets.len());
    let mut previous = 0u64;
    for (le, cumulative) in &buckets {
        let Some(c) = whole(*cumulative) else {
            return fail(format!(
                "bucket le={le}: count {cumulative} is not a whole number"
            ));
        };
        let Some(here) = c.checked_sub(previous) else {
            return fail(format!(
                "bucket le={le}: cumulative count {c} below {previous}"
            ));
        };
        bucket_counts.push(here);
        if le.is_finite() {
            explicit_bounds.push(*le);
        }
        previous = c;
    }
    let count = match s.count {
        None => previous,
        Some(c) => match whole(c) {
            Some(c) if c == previous => c,
            Some(c) => {
                return fail(format!(
                    "_count {c} differs from the +Inf bucket {previous}"
                ))
            }
            None => return fail(format!("_count {c} is not a whole number")),
        },
    };
    Ok(HistogramDataPoint {
        attributes: attributes(&s.labels),
        start_time_unix_nano: t.start,
        time_unix_nano: t.now,
        count,
        sum: s.sum,
        bucket_counts,
        explicit_bounds,
        ..Default::default()
    })
}

/// The resource every push carries: service name, version and instance id.
fn resource() -> Resource {
    Resource {
        attributes: vec![
            string_kv("service.name", SERVICE_NAME),
            string_kv("service.version", env!("CARGO_PKG_VERSION")),
            string_kv("service.instance.id", instance_id()),
        ],
        ..Default::default()
    }
}

/// `hostname-pid`, computed once.
pub fn instance_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| format!("{}-{}", hostname(), std::process::id()))
}

fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .chain(std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .find(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

// ---------------------------------------------------------------------------------------------
// The push task.
// ---------------------------------------------------------------------------------------------

/// Now, in unix nanoseconds.
pub fn unix_nanos_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Every `interval`, renders `metrics` and enqueues the encoded request on the export queue as
/// `SignalType::Metrics`. A full queue is counted (`triage_export_requests_total{signal="metrics",
/// outcome="queue_full"}`) and logged, not retried: the next push carries the cumulative values.
/// Stops when `stop` flips to true (or its sender is gone), after one last push. The start time
/// of every point is the time `spawn` is called (service start). A zero interval pushes nothing.
pub fn spawn(
    metrics: Arc<Metrics>,
    queue: ExportQueue,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let pusher = Pusher {
        metrics,
        queue,
        start_unix_nano: unix_nanos_now(),
    };
    tokio::spawn(async move {
        if interval.is_zero() {
            tracing::info!("metrics push off (push_interval 0s)");
            return;
        }
        let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        while !*stop.borrow_and_update() {
            tokio::select! {
                _ = ticker.tick() => pusher.push(),
                changed = stop.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
            }
        }
        pusher.push();
        tracing::debug!("metrics push stopped");
    })
}

struct Pusher {
    metrics: Arc<Metrics>,
    queue: ExportQueue,
    start_unix_nano: u64,
}

impl Pusher {
    /// One push; failures are logged and counted, never retried.
    fn push(&self) {
        let text = self.metrics.render();
        let request = match to_otlp(&text, self.start_unix_nano, unix_nanos_now()) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "metrics push: exposition not understood; skipped");
                return;
            }
        };
        let points = data_points(&request);
        let item = ExportItem {
            signal: SignalType::Metrics,
            body: request.encode_to_vec().into(),
            items: points,
        };
        match self.queue.try_send(item) {
            // Nobody waits for an acknowledgement of the push, so nor for its flush.
            Ok(_durable) => tracing::trace!(points, "metrics push enqueued"),
            Err(e) => {
                self.metrics.export_request("metrics", "queue_full");
                tracing::warn!(
                    error = %e,
                    points,
                    "metrics push skipped; the next push carries the cumulative values"
                );
            }
        }
    }
}

/// Data points in a request.
fn data_points(r: &ExportMetricsServiceRequest) -> u64 {
    r.resource_metrics
        .iter()
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .map(|m| match &m.data {
            Some(Data::Sum(s)) => s.data_points.len(),
            Some(Data::Gauge(g)) => g.data_points.len(),
            Some(Data::Histogram(h)) => h.data_points.len(),
            Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
            Some(Data::Summary(s)) => s.data_points.len(),
            None => 0,
        } as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;

    fn metrics_of(req: &ExportMetricsServiceRequest) -> &[Metric] {
        &req.resource_metrics[0].scope_metrics[0].metrics
    }

    fn one(text: &str) -> Metric {
        let req = to_otlp(text, 1, 2).expect("parses");
        let ms = metrics_of(&req);
        assert_eq!(ms.len(), 1, "{ms:?}");
        ms[0].clone()
    }

    fn attr(kvs: &[KeyValue], key: &str) -> String {
        match kvs
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone())
        {
            Some(v) => match v.value {
                Some(AnyValue::StringValue(s)) => s,
                other => panic!("{key}: not a string: {other:?}"),
            },
            None => panic!("no attribute {key}"),
        }
    }

    fn gauge_points(m: &Metric) -> &[NumberDataPoint] {
        match &m.data {
            Some(Data::Gauge(g)) => &g.data_points,
            other => panic!("not a gauge: {other:?}"),
        }
    }

    fn fails(text: &str) -> ParseError {
        to_otlp(text, 1, 2).expect_err("must be refused")
    }

    #[test]
    fn counter_becomes_monotonic_cumulative_sum_without_total() {
        let m = one(
            "# HELP triage_spans Spans by outcome\n# TYPE triage_spans counter\n\
             triage_spans_total{outcome=\"forwarded\"} 7\ntriage_spans_total{outcome=\"tagged\"} 2\n# EOF\n",
        );
        assert_eq!(m.name, "triage.spans");
        assert_eq!(m.unit, "");
        assert_eq!(m.description, "Spans by outcome");
        let Some(Data::Sum(sum)) = &m.data else {
            panic!("not a sum: {m:?}")
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        assert_eq!(sum.data_points.len(), 2);
        let p = &sum.data_points[0];
        assert_eq!(attr(&p.attributes, "outcome"), "forwarded");
        assert_eq!(p.value, Some(number_data_point::Value::AsInt(7)));
        assert_eq!((p.start_time_unix_nano, p.time_unix_nano), (1, 2));
    }

    #[test]
    fn histogram_buckets_are_decumulated_with_bounds_from_le() {
        let m = one("# HELP triage_loop_latency_seconds Loop latency\n\
             # TYPE triage_loop_latency_seconds histogram\n\
             triage_loop_latency_seconds_sum{class=\"a\",stage=\"shipped\"} 17.5\n\
             triage_loop_latency_seconds_count{class=\"a\",stage=\"shipped\"} 4\n\
             triage_loop_latency_seconds_bucket{le=\"1.0\",class=\"a\",stage=\"shipped\"} 1\n\
             triage_loop_latency_seconds_bucket{le=\"5.0\",class=\"a\",stage=\"shipped\"} 3\n\
             triage_loop_latency_seconds_bucket{le=\"15.0\",class=\"a\",stage=\"shipped\"} 3\n\
             triage_loop_latency_seconds_bucket{le=\"+Inf\",class=\"a\",stage=\"shipped\"} 4\n\
             # EOF\n");
        assert_eq!(
            (m.name.as_str(), m.unit.as_str()),
            ("triage.loop.latency", "s")
        );
        let Some(Data::Histogram(h)) = &m.data else {
            panic!("not a histogram: {m:?}")
        };
        assert_eq!(
            h.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let p = &h.data_points[0];
        assert_eq!(p.explicit_bounds, vec![1.0, 5.0, 15.0]);
        assert_eq!(p.bucket_counts, vec![1, 2, 0, 1]);
        assert_eq!((p.count, p.sum), (4, Some(17.5)));
        assert_eq!(attr(&p.attributes, "class"), "a");
        assert_eq!(attr(&p.attributes, "stage"), "shipped");
        assert!(p.attributes.iter().all(|kv| kv.key != "le"));
    }

    #[test]
    fn gauge_and_unit_suffixes() {
        let m = one("# TYPE triage_export_queue_bytes gauge\ntriage_export_queue_bytes 42\n");
        assert_eq!(
            (m.name.as_str(), m.unit.as_str()),
            ("triage.export.queue", "By")
        );
        assert_eq!(
            gauge_points(&m)[0].value,
            Some(number_data_point::Value::AsInt(42))
        );
        assert_eq!(
            otlp_name("triage_issues", false, None),
            ("triage.issues".into(), String::new())
        );
        assert_eq!(
            otlp_name("req_duration_seconds_total", true, None),
            ("req.duration".into(), "s".into())
        );
        assert_eq!(
            otlp_name("payload_bytes", false, Some("bytes")),
            ("payload".into(), "By".into())
        );
        assert_eq!(
            otlp_name("temp_celsius", false, Some("celsius")),
            ("temp".into(), "celsius".into())
        );
    }

    #[test]
    fn escaped_label_values_are_resolved() {
        let m = one(
            "# TYPE t gauge\nt{a=\"say \\\"hi\\\"\",b=\"back\\\\slash\",c=\"two\\nlines\",d=\"x,}y\"} 1\n",
        );
        let p = &gauge_points(&m)[0];
        assert_eq!(attr(&p.attributes, "a"), "say \"hi\"");
        assert_eq!(attr(&p.attributes, "b"), "back\\slash");
        assert_eq!(attr(&p.attributes, "c"), "two\nlines");
        assert_eq!(attr(&p.attributes, "d"), "x,}y");
    }

    #[test]
    fn help_escapes_are_resolved() {
        let m = one("# HELP t line one\\nback\\\\slash\n# TYPE t gauge\nt 1\n");
        assert_eq!(m.description, "line one\nback\\slash");
    }

    #[test]
    fn nan_and_infinities_are_values() {
        let m = one("# TYPE g gauge\ng{k=\"nan\"} NaN\ng{k=\"inf\"} +Inf\ng{k=\"ninf\"} -Inf\ng{k=\"f\"} 1.5e3\n");
        let values: Vec<f64> = gauge_points(&m)
            .iter()
            .map(|p| match p.value {
                Some(number_data_point::Value::AsDouble(d)) => d,
                ref other => panic!("{other:?}"),
            })
            .collect();
        assert!(values[0].is_nan());
        assert_eq!(&values[1..], &[f64::INFINITY, f64::NEG_INFINITY, 1500.0]);
    }

    #[test]
    fn eof_ends_the_exposition() {
        assert!(to_otlp("# TYPE g gauge\ng 1\n# EOF\n", 0, 0).is_ok());
        assert!(to_otlp("# TYPE g gauge\ng 1\n# EOF", 0, 0).is_ok());
        let e = fails("# TYPE g gauge\ng 1\n# EOF\ng 2\n");
        assert_eq!(e.line, 4);
        assert!(e.reason.contains("after `# EOF`"), "{e}");
    }

    #[test]
    fn timestamps_exemplars_comments_and_crlf_are_accepted() {
        let m = one(
            "# a comment\r\n# TYPE c counter\r\nc_total 3 1700000000\r\nc_created 1700000000\r\n",
        );
        assert_eq!(m.name, "c");
        let m = one(
            "# TYPE h histogram\nh_bucket{le=\"1\"} 1 # {trace_id=\"ab\"} 0.5\nh_bucket{le=\"+Inf\"} 1\nh_count 1\nh_sum 0.5\n",
        );
        let Some(Data::Histogram(h)) = &m.data else {
            panic!()
        };
        assert_eq!(h.data_points[0].bucket_counts, vec![1, 0]);
    }

    #[test]
    fn untyped_samples_become_gauges_and_empty_families_are_left_out() {
        let req = to_otlp(
            "# HELP empty nothing yet\n# TYPE empty counter\nloose_metric 3\n",
            0,
            0,
        )
        .unwrap();
        let ms = metrics_of(&req);
        assert_eq!(ms.len(), 1);
        assert_eq!(ms[0].name, "loose.metric");
        assert_eq!(gauge_points(&ms[0]).len(), 1);
    }

    #[test]
    fn unsupported_types_are_skipped() {
        let req = to_otlp(
            "# TYPE s summary\ns{quantile=\"0.5\"} 1\ns_sum 2\ns_count 3\n# TYPE g gauge\ng 1\n",
            0,
            0,
        )
        .unwrap();
        let names: Vec<_> = metrics_of(&req).iter().map(|m| m.name.clone()).collect();
        assert_eq!(names, vec!["g"]);
    }

    #[test]
    fn resource_and_scope_name_the_service() {
        let req = to_otlp("", 0, 0).unwrap();
        let rm = &req.resource_metrics[0];
        let attrs = &rm.resource.as_ref().unwrap().attributes;
        assert_eq!(attr(attrs, "service.name"), "triage-loop");
        assert_eq!(attr(attrs, "service.version"), env!("CARGO_PKG_VERSION"));
        assert!(attr(attrs, "service.instance.id").ends_with(&format!("-{}", std::process::id())));
        assert_eq!(
            rm.scope_metrics[0].scope.as_ref().unwrap().name,
            "triage-loop"
        );
    }

    #[test]
    fn the_products_own_exposition_translates() {
        let m = Metrics::new();
        m.spans.forwarded.inc_by(3);
        m.failure("logic_tool", "rule", "planner", "checkout");
        m.loop_latency("logic_tool", "classified", 2.0);
        m.set_issues("logic_tool", "open", 4);
        let req = to_otlp(&m.render(), 1, 2).expect("the product's exposition parses");
        let names: Vec<_> = metrics_of(&req).iter().map(|m| m.name.as_str()).collect();
        for want in [
            "triage.spans",
            "triage.failures",
            "triage.loop.latency",
            "triage.issues",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
    }

    #[test]
    fn unterminated_label_value_is_refused() {
        let e = fails("# TYPE g gauge\ng{a=\"x} 1\n");
        assert_eq!(e.line, 2);
        assert!(e.reason.contains("unterminated"), "{e}");
    }

    #[test]
    fn invalid_escape_is_refused() {
        assert!(fails("g{a=\"\\t\"} 1\n").reason.contains("invalid escape"));
    }

    #[test]
    fn unquoted_label_value_is_refused() {
        assert!(fails("g{a=x} 1\n").reason.contains("quoted"));
    }

    #[test]
    fn unclosed_label_set_is_refused() {
        assert!(fails("g{a=\"x\" 1\n")
            .reason
            .contains("expected `,` or `}`"));
        assert!(fails("g{a=\"x\",\n").reason.contains("not closed"));
    }

    #[test]
    fn duplicate_label_is_refused() {
        assert!(fails("g{a=\"x\",a=\"y\"} 1\n").reason.contains("twice"));
    }

    #[test]
    fn invalid_label_name_is_refused() {
        assert!(fails("g{1a=\"x\"} 1\n")
            .reason
            .contains("invalid label name"));
    }

    #[test]
    fn missing_or_bad_value_is_refused() {
        assert!(fails("g\n").reason.contains("value"));
        assert!(fails("g \n").reason.contains("no value"));
        assert!(fails("g one\n").reason.contains("invalid number"));
        assert!(fails("g infinity\n").reason.contains("invalid number"));
        assert!(fails("g 1 2 3\n").reason.contains("unexpected"));
    }

    #[test]
    fn bad_metric_name_is_refused() {
        assert!(fails("9g 1\n").reason.contains("metric name"));
        assert!(fails("# TYPE 9g gauge\n")
            .reason
            .contains("invalid metric name"));
    }

    #[test]
    fn unknown_or_repeated_type_is_refused() {
        assert!(fails("# TYPE g thing\n")
            .reason
            .contains("unknown metric type"));
        assert!(fails("# TYPE g gauge\n# TYPE g gauge\n")
            .reason
            .contains("second TYPE"));
        assert!(fails("g 1\n# TYPE g gauge\n")
            .reason
            .contains("after samples"));
    }

    #[test]
    fn sample_not_of_its_family_type_is_refused() {
        assert!(fails("# TYPE c counter\nc_bucket{le=\"1\"} 1\n")
            .reason
            .contains("does not belong"));
        assert!(fails("# TYPE h histogram\nh 1\n")
            .reason
            .contains("does not belong"));
    }

    #[test]
    fn duplicate_sample_is_refused() {
        assert!(fails("# TYPE g gauge\ng{a=\"1\"} 1\ng{a=\"1\"} 2\n")
            .reason
            .contains("duplicate"));
    }

    #[test]
    fn negative_or_nan_counter_is_refused() {
        assert!(fails("# TYPE c counter\nc_total -1\n")
            .reason
            .contains(">= 0"));
        assert!(fails("# TYPE c counter\nc_total NaN\n")
            .reason
            .contains(">= 0"));
    }

    #[test]
    fn histogram_without_inf_bucket_is_refused() {
        let e = fails("# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_count 1\n");
        assert!(e.reason.contains("+Inf"), "{e}");
        assert_eq!(e.line, 2);
    }

    #[test]
    fn histogram_bucket_without_le_is_refused() {
        assert!(fails("# TYPE h histogram\nh_bucket 1\n")
            .reason
            .contains("`le`"));
        assert!(fails("# TYPE h histogram\nh_bucket{le=\"x\"} 1\n")
            .reason
            .contains("le="));
    }

    #[test]
    fn decreasing_buckets_are_refused() {
        let e = fails("# TYPE h histogram\nh_bucket{le=\"1\"} 3\nh_bucket{le=\"+Inf\"} 2\n");
        assert!(e.reason.contains("below"), "{e}");
    }

    #[test]
    fn fractional_bucket_count_is_refused() {
        let e = fails("# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1.5\n");
        assert!(e.reason.contains("whole number"), "{e}");
    }

    #[test]
    fn count_not_matching_inf_bucket_is_refused() {
        let e = fails("# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 3\n");
        assert!(e.reason.contains("differs"), "{e}");
    }

    #[test]
    fn garbage_never_panics() {
        for text in [
            "{",
            "}",
            "#",
            "# TYPE",
            "# HELP",
            "# UNIT g",
            "g{",
            "g{a",
            "g{a=",
            "g{a=\"",
            "g{a=\"\\",
            "\u{0}",
            "é 1",
            "g{é=\"x\"} 1",
            "g 1 # {",
            "# TYPE h histogram\nh_bucket{le=\"NaN\"} 1\nh_bucket{le=\"+Inf\"} 1",
        ] {
            let _ = to_otlp(text, 0, 0);
        }
    }
}
