//! The learned classifier (source=model): multinomial naive Bayes over hashed feature tokens of
//! a failure's root-cause span, learned one label at a time from human labels (and an optional
//! seed file), with a calibrated confidence.
//!
//! # Features
//!
//! [`features`] turns a span, its resource and its failure signals into at most
//! [`MAX_FEATURES`] tokens such as `kind=client`, `op=execute_tool`, `agent=support`,
//! `tool=lookup_order`, `et=timeout`, `sk=exception`, `sn=keyerror`, `lb=off_brand`,
//! `w=timed` (a lowercased message word; words with digits become `<n>`), `b=timed out` (two
//! consecutive words) and `ak=db.system.name` (an attribute key; numeric parts such as
//! `evaluations.0.…` are cut to `evaluations.#`). The failure side stores these tokens with a
//! failure, labels train on exactly them, and the hot path predicts from the same visitor
//! without building strings (each token is hashed as it is read).
//!
//! # Model and confidence
//!
//! Tokens are hashed (FNV-1a) into [`BUCKETS`] buckets; each label adds one to its class's
//! count of every distinct bucket of the failure (binarised multinomial naive Bayes, additive
//! smoothing [`ALPHA`]). Naive Bayes scores are far too sure of themselves, so the class
//! probabilities are `softmax(score / T)` with a temperature `T` fitted by minimising the log
//! loss of exact leave-one-out predictions over the last [`MAX_EXAMPLES`] labels (refitted as
//! labels arrive), then shrunk toward the class prior by `n / (n + K)` (n labels, K classes) so a
//! model with few labels stays humble. `triage-loop eval` prints the resulting reliability table.
//!
//! # Seed file
//!
//! JSON lines, one labelled example per line (blank lines are skipped), in either form:
//!
//! ```text
//! {"class": "logic_tool", "features": ["tool=lookup_order", "sk=exception", "w=timed"]}
//! {"class": "data_quality", "example": {"span_name": "retrieve docs", "tool": "kb_search",
//!   "exception_type": "KeyError", "message": "document 42 has no field 'body'"}}
//! ```
//!
//! `features` are tokens as [`features`] makes them (e.g. exported from a store); `example`
//! describes a failure (fields `span_name`, `agent`, `tool`, `operation`, `error_type`,
//! `signal` = status|exception|evaluation|guardrail|feedback, `name`, `exception_type`,
//! `evaluation`, `label`, `message`, all optional) and is turned into tokens by [`features`].
//! Every class must be one of the taxonomy's; a bad line fails the whole file.

use std::collections::VecDeque;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde::{Deserialize, Serialize};

use crate::classify::signals::{keys, Signal, SignalKind};
use crate::classify::{agent_name, AGENT_NAME};
use crate::failure::detail::kind_name as span_kind;
use crate::otlp::attributes::{get, get_str, string_kv};
use crate::text::cut;

/// `processors.failure_triage.model`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Use the learned model in the cascade (human > rule > model > fallback).
    pub enabled: bool,
    /// A labelled seed file (JSON lines) the model starts from, before any human label.
    pub seed_file: Option<PathBuf>,
    /// The model decides nothing until it has learned from this many labels.
    pub min_labels: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            enabled: true,
            seed_file: None,
            min_labels: 5,
        }
    }
}

impl ModelConfig {
    /// Checks the settings against the taxonomy's `classes`, and that the seed file loads.
    /// Errors are (key under `model`, what is wrong).
    pub fn validate(&self, classes: &[&str]) -> Result<(), (&'static str, String)> {
        if self.min_labels == 0 {
            return Err((
                "min_labels",
                "must be at least 1 (a model with no label knows nothing)".into(),
            ));
        }
        if self.enabled && classes.len() > MAX_CLASSES {
            return Err((
                "enabled",
                format!(
                    "the model handles at most {MAX_CLASSES} classes; the taxonomy has {} (set enabled: false)",
                    classes.len()
                ),
            ));
        }
        if let Some(path) = &self.seed_file {
            read_seed(path, classes).map_err(|e| ("seed_file", e.to_string()))?;
        }
        Ok(())
    }
}

/// Most tokens [`features`] returns for one span.
pub const MAX_FEATURES: usize = 96;
/// Hash buckets of the model (a power of two).
pub const BUCKETS: usize = 1 << 16;
/// Additive smoothing of the per-class token counts.
pub const ALPHA: f64 = 0.3;
/// Labels kept (newest) to fit the temperature on.
pub const MAX_EXAMPLES: usize = 2_000;
/// Most classes the model handles (scores live on the stack).
pub const MAX_CLASSES: usize = 32;
/// The smallest vocabulary size smoothing assumes: with few labels the buckets seen so far
/// are far fewer than the tokens failures will bring, and an empty class must not look likely
/// just because its smoothed mass is spread over a handful of buckets.
const VOCAB_FLOOR: usize = 4_096;

const MAX_SIGNALS: usize = 3;
const MESSAGE_SIGNALS: usize = 2;
const MAX_WORDS: usize = 16;
const MAX_BIGRAM_WORDS: usize = 9;
const MAX_KEYS: usize = 16;
const MAX_WORD_BYTES: usize = 32;
const MAX_VALUE_BYTES: usize = 64;
const STOPWORDS: [&str; 16] = [
    "the", "an", "to", "of", "and", "in", "for", "is", "on", "at", "by", "with", "was", "be", "it",
    "this",
];

/// One piece of a token: kept as is, or ASCII-lowercased.
#[derive(Clone, Copy)]
enum Seg<'a> {
    Raw(&'a str),
    Lower(&'a str),
}

/// Where the feature visitor puts tokens.
trait Emit {
    fn token(&mut self, segs: &[Seg<'_>]);
}

/// Collects tokens as strings (deduplicated, first-seen order).
struct Strings(Vec<String>);

impl Emit for Strings {
    fn token(&mut self, segs: &[Seg<'_>]) {
        let mut s = String::new();
        for seg in segs {
            match *seg {
                Seg::Raw(t) => s.push_str(t),
                Seg::Lower(t) => {
                    let at = s.len();
                    s.push_str(t);
                    s[at..].make_ascii_lowercase();
                }
            }
        }
        if !self.0.contains(&s) {
            self.0.push(s);
        }
    }
}

/// Collects the distinct buckets of tokens, with no allocation.
struct Buckets {
    buf: [u32; MAX_FEATURES],
    len: usize,
}

impl Buckets {
    fn new() -> Self {
        Buckets {
            buf: [0; MAX_FEATURES],
            len: 0,
        }
    }

    fn push(&mut self, b: u32) {
        if self.len < MAX_FEATURES && !self.buf[..self.len].contains(&b) {
            self.buf[self.len] = b;
            self.len += 1;
        }
    }

    fn as_slice(&self) -> &[u32] {
        &self.buf[..self.len]
    }
}

impl Emit for Buckets {
    fn token(&mut self, segs: &[Seg<'_>]) {
        let mut h = FNV_OFFSET;
        for seg in segs {
            h = match *seg {
                Seg::Raw(t) => fnv(h, t.as_bytes(), false),
                Seg::Lower(t) => fnv(h, t.as_bytes(), true),
            };
        }
        self.push(bucket(h));
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv(mut h: u64, bytes: &[u8], lower: bool) -> u64 {
    for &b in bytes {
        let b = if lower { b.to_ascii_lowercase() } else { b };
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// The bucket of a token hash (the hash's bits mixed first: FNV's low bits are weak).
fn bucket(h: u64) -> u32 {
    let h = (h ^ (h >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let h = h ^ (h >> 29);
    (h as usize & (BUCKETS - 1)) as u32
}

/// The bucket of a token string as [`features`] made it.
fn token_bucket(token: &str) -> u32 {
    bucket(fnv(FNV_OFFSET, token.as_bytes(), false))
}

/// Walks the features of one span, emitting at most `MAX_FEATURES` tokens.
struct Visitor<'e, E: Emit> {
    out: &'e mut E,
    left: usize,
}

impl<E: Emit> Visitor<'_, E> {
    fn tok(&mut self, segs: &[Seg<'_>]) {
        if self.left > 0 {
            self.left -= 1;
            self.out.token(segs);
        }
    }

    fn value(&mut self, prefix: &'static str, v: &str) {
        if !v.is_empty() {
            self.tok(&[Seg::Raw(prefix), Seg::Lower(cut(v, MAX_VALUE_BYTES))]);
        }
    }

    /// Words (and the bigrams of the first ones) of `text`, lowercased, numbers masked.
    fn words(
        &mut self,
        word_prefix: &'static str,
        bigram_prefix: Option<&'static str>,
        text: &str,
    ) {
        let mut prev: Option<Seg<'_>> = None;
        for (i, w) in words(text).take(MAX_WORDS).enumerate() {
            self.tok(&[Seg::Raw(word_prefix), w]);
            if let (Some(bp), Some(p)) = (bigram_prefix, prev) {
                if i < MAX_BIGRAM_WORDS {
                    self.tok(&[Seg::Raw(bp), p, Seg::Raw(" "), w]);
                }
            }
            prev = Some(w);
        }
    }

    fn span(&mut self, span: &Span, resource: Option<&Resource>, signals: &[Signal]) {
        let a = &span.attributes;
        self.tok(&[Seg::Raw("kind="), Seg::Raw(span_kind(span.kind))]);
        self.words("nw=", None, cut(&span.name, MAX_VALUE_BYTES * 2));
        self.value("op=", get_str(a, "gen_ai.operation.name").unwrap_or(""));
        self.value("oi=", get_str(a, keys::OI_SPAN_KIND).unwrap_or(""));
        self.value("tl=", get_str(a, "traceloop.span.kind").unwrap_or(""));
        self.value("agent=", agent_name(span, resource));
        for k in ["gen_ai.tool.name", "tool.name"] {
            self.value("tool=", get_str(a, k).unwrap_or(""));
        }
        self.value("et=", get_str(a, keys::ERROR_TYPE).unwrap_or(""));
        for k in ["gen_ai.provider.name", "gen_ai.system"] {
            self.value("provider=", get_str(a, k).unwrap_or(""));
        }
        for k in ["db.system.name", "db.system"] {
            self.value("db=", get_str(a, k).unwrap_or(""));
        }
        for k in ["http.response.status_code", "http.status_code"] {
            if let Some(code) = http_status(get(a, k)) {
                self.tok(&[Seg::Raw("http="), Seg::Raw(code)]);
            }
        }
        match get(a, keys::FINISH_REASONS) {
            Some(Value::ArrayValue(arr)) => {
                for v in arr.values.iter().take(3) {
                    if let Some(Value::StringValue(s)) = &v.value {
                        self.value("finish=", s);
                    }
                }
            }
            Some(Value::StringValue(s)) => self.value("finish=", s),
            _ => {}
        }
        for s in signals.iter().take(MAX_SIGNALS) {
            self.tok(&[Seg::Raw("sk="), Seg::Raw(s.kind.as_str())]);
            self.value("sn=", &s.name);
            if let Some(l) = &s.label {
                self.value("lb=", l);
            }
        }
        self.attribute_keys(a);
        let mut last: Option<&str> = None;
        for s in signals.iter().take(MESSAGE_SIGNALS) {
            let text = s.message.as_str();
            if !text.is_empty() && last != Some(text) {
                self.words("w=", Some("b="), text);
                last = Some(text);
            }
        }
    }

    /// Attribute keys, numeric parts cut (`evaluations.0.evaluation.name` → `evaluations.#`),
    /// our own `failure.*` tags left out.
    fn attribute_keys(&mut self, attrs: &[KeyValue]) {
        let mut emitted = 0;
        let mut last: &str = "";
        for kv in attrs {
            if emitted == MAX_KEYS {
                break;
            }
            let key = kv.key.as_str();
            if key.starts_with("failure.") || key.is_empty() {
                continue;
            }
            let numeric_at = key.split('.').scan(0usize, |at, part| {
                let start = *at;
                *at += part.len() + 1;
                Some((start, part))
            });
            let head = numeric_at
                .filter(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .map(|(start, _)| key[..start].trim_end_matches('.'))
                .next();
            let (base, suffix) = match head {
                Some(h) => (h, ".#"),
                None => (key, ""),
            };
            let base = cut(base, MAX_VALUE_BYTES);
            if base == last {
                continue;
            }
            last = base;
            emitted += 1;
            self.tok(&[Seg::Raw("ak="), Seg::Lower(base), Seg::Raw(suffix)]);
        }
    }
}

/// The words of `text` as token segments: runs of ASCII letters, digits, `_` and non-ASCII
/// characters; one-letter words and a few stopwords dropped; words with a digit become `<n>`,
/// over-long ones `<long>`.
fn words(text: &str) -> impl Iterator<Item = Seg<'_>> {
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80;
    let bytes = text.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || loop {
        while i < bytes.len() && !is_word(bytes[i]) {
            i += 1;
        }
        if i >= bytes.len() {
            return None;
        }
        let start = i;
        while i < bytes.len() && is_word(bytes[i]) {
            i += 1;
        }
        // Word boundaries are ASCII bytes, so these are char boundaries.
        let w = &text[start..i];
        if w.len() < 2 {
            continue;
        }
        if w.bytes().any(|b| b.is_ascii_digit()) {
            return Some(Seg::Raw("<n>"));
        }
        if w.len() > MAX_WORD_BYTES {
            return Some(Seg::Raw("<long>"));
        }
        if STOPWORDS.iter().any(|s| s.eq_ignore_ascii_case(w)) {
            continue;
        }
        return Some(Seg::Lower(w));
    })
}

/// An HTTP status attribute as a token value: exact for the codes that say why, else the class.
fn http_status(v: Option<&Value>) -> Option<&'static str> {
    let code = match v? {
        Value::IntValue(i) => *i,
        Value::StringValue(s) => s.trim().parse().ok()?,
        Value::DoubleValue(d) => *d as i64,
        _ => return None,
    };
    const WHY: [&str; 12] = [
        "400", "401", "403", "404", "408", "409", "422", "429", "500", "502", "503", "504",
    ];
    if let Some(exact) = WHY.iter().find(|w| w.parse() == Ok(code)) {
        return Some(exact);
    }
    Some(match code {
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    })
}

/// The feature tokens of a failure's root-cause span (at most [`MAX_FEATURES`], distinct,
/// in a fixed order). See the module doc.
pub fn features(span: &Span, resource: Option<&Resource>, signals: &[Signal]) -> Vec<String> {
    let mut out = Strings(Vec::with_capacity(48));
    Visitor {
        out: &mut out,
        left: MAX_FEATURES,
    }
    .span(span, resource, signals);
    out.0
}

/// The distinct buckets of the tokens `features` would return, with no allocation.
fn span_buckets(span: &Span, resource: Option<&Resource>, signals: &[Signal]) -> Buckets {
    let mut out = Buckets::new();
    Visitor {
        out: &mut out,
        left: MAX_FEATURES,
    }
    .span(span, resource, signals);
    out
}

/// The distinct buckets of stored tokens (at most `MAX_FEATURES`).
fn token_buckets(tokens: &[String]) -> Buckets {
    let mut out = Buckets::new();
    for t in tokens {
        out.push(token_bucket(t));
    }
    out
}

/// A class the model picked and how sure it is (calibrated, 0..1).
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub class: String,
    pub confidence: f64,
}

/// Why the model, its seed file or a snapshot could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read seed file {path}: {source}")]
    SeedIo {
        path: String,
        source: std::io::Error,
    },
    #[error("seed file {path} line {line}: {message}")]
    Seed {
        path: String,
        line: usize,
        message: String,
    },
    #[error("model snapshot: {0}")]
    Snapshot(String),
}

/// One label kept for fitting the temperature.
#[derive(Debug, Clone, PartialEq)]
struct Example {
    class: usize,
    buckets: Vec<u32>,
}

/// The naive Bayes counts and calibration.
#[derive(Debug, Clone)]
struct Nb {
    classes: Vec<Arc<str>>,
    /// `counts[bucket * K + class]`: labels of `class` whose failure had a token in `bucket`.
    counts: Vec<u32>,
    /// `ln(counts + ALPHA)`, same layout: the hot path adds these up.
    logc: Vec<f32>,
    /// Labels per class.
    docs: Vec<u64>,
    /// Tokens (bucket occurrences) per class.
    tokens: Vec<u64>,
    /// Buckets with any count: the vocabulary size for smoothing.
    used: usize,
    learned: usize,
    examples: VecDeque<Example>,
    temperature: f64,
    /// Labels learned since the temperature was fitted.
    since_fit: usize,
}

impl Nb {
    fn new(classes: &[&str]) -> Nb {
        let k = classes.len();
        Nb {
            classes: classes.iter().map(|c| Arc::from(*c)).collect(),
            counts: vec![0; BUCKETS * k],
            logc: vec![ALPHA.ln() as f32; BUCKETS * k],
            docs: vec![0; k],
            tokens: vec![0; k],
            used: 0,
            learned: 0,
            examples: VecDeque::new(),
            temperature: 1.0,
            since_fit: 0,
        }
    }

    fn k(&self) -> usize {
        self.classes.len()
    }

    fn class_index(&self, class: &str) -> Option<usize> {
        self.classes.iter().position(|c| &**c == class)
    }

    fn add(&mut self, class: usize, buckets: &[u32]) {
        let k = self.k();
        for &b in buckets {
            let b = b as usize;
            let row = &self.counts[b * k..(b + 1) * k];
            if row.iter().all(|&c| c == 0) {
                self.used += 1;
            }
            let i = b * k + class;
            self.counts[i] = self.counts[i].saturating_add(1);
            self.logc[i] = (f64::from(self.counts[i]) + ALPHA).ln() as f32;
        }
        self.docs[class] += 1;
        self.tokens[class] += buckets.len() as u64;
        self.learned += 1;
        self.since_fit += 1;
        if self.examples.len() == MAX_EXAMPLES {
            self.examples.pop_front();
        }
        self.examples.push_back(Example {
            class,
            buckets: buckets.to_vec(),
        });
    }

    /// Raw naive Bayes log scores of `buckets` into `out[..K]`; with `leave_out` (whose own
    /// buckets `buckets` must be), as if that label had not been learned.
    fn scores(&self, buckets: &[u32], leave_out: Option<&Example>, out: &mut [f64]) {
        let k = self.k();
        let n = self.learned as f64 - f64::from(u8::from(leave_out.is_some()));
        let vocab = self.used.max(VOCAB_FLOOR) as f64;
        for (c, score) in out.iter_mut().enumerate().take(k) {
            let held = leave_out.filter(|e| e.class == c);
            let docs = self.docs[c] as f64 - f64::from(u8::from(held.is_some()));
            let tokens = self.tokens[c] as f64 - held.map_or(0.0, |e| e.buckets.len() as f64);
            let mut s = ((docs + 1.0) / (n + k as f64)).ln();
            let norm = (tokens.max(0.0) + ALPHA * vocab).ln();
            for &b in buckets {
                let i = b as usize * k + c;
                s += if held.is_some() {
                    (f64::from(self.counts[i]) - 1.0 + ALPHA).ln()
                } else {
                    f64::from(self.logc[i])
                };
                s -= norm;
            }
            *score = s;
        }
    }

    /// Class prior (Laplace-smoothed label shares) of class `c`.
    fn prior(&self, c: usize) -> f64 {
        (self.docs[c] as f64 + 1.0) / (self.learned as f64 + self.k() as f64)
    }

    /// Weight of the calibrated probabilities against the prior: n / (n + K).
    fn trust(&self) -> f64 {
        let n = self.learned as f64;
        n / (n + self.k() as f64)
    }

    /// The highest confidence any prediction can have now.
    fn max_confidence(&self) -> f64 {
        let w = self.trust();
        let top_prior = (0..self.k()).map(|c| self.prior(c)).fold(0.0, f64::max);
        w + (1.0 - w) * top_prior
    }

    /// The calibrated best class of `buckets` and its confidence.
    fn predict(&self, buckets: &[u32]) -> Option<(usize, f64)> {
        let k = self.k();
        if k == 0 || k > MAX_CLASSES {
            return None;
        }
        let mut s = [0.0f64; MAX_CLASSES];
        self.scores(buckets, None, &mut s);
        softmax(&mut s[..k], self.temperature);
        let w = self.trust();
        (0..k)
            .map(|c| (c, w * s[c] + (1.0 - w) * self.prior(c)))
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
    }

    /// Leave-one-out scores of the kept examples, flattened (K per example), with their class.
    /// An example that is the only one of its class is left out: without it its class is
    /// unknown, which says nothing about how sure the model should be.
    fn loo_scores(&self) -> (Vec<f64>, Vec<usize>) {
        let k = self.k();
        let mut scores = Vec::with_capacity(self.examples.len() * k);
        let mut classes = Vec::with_capacity(self.examples.len());
        let mut row = [0.0f64; MAX_CLASSES];
        for e in self.examples.iter().filter(|e| self.docs[e.class] >= 2) {
            self.scores(&e.buckets, Some(e), &mut row[..k]);
            scores.extend_from_slice(&row[..k]);
            classes.push(e.class);
        }
        (scores, classes)
    }
}

/// In place: `softmax(s / t)`.
fn softmax(s: &mut [f64], t: f64) {
    let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for x in s.iter_mut() {
        *x = ((*x - max) / t).exp();
        sum += *x;
    }
    for x in s.iter_mut() {
        *x /= sum;
    }
}

/// Fewest leave-one-out predictions the temperature is fitted on; with fewer it stays 1 (and
/// the shrinkage toward the prior does the humbling).
const MIN_FIT_EXAMPLES: usize = 10;

/// The temperature minimising the log loss of `scores` (K per example) against `classes`;
/// 1 when there is too little to fit on.
fn fit_temperature(scores: &[f64], classes: &[usize], k: usize) -> f64 {
    if classes.len() < MIN_FIT_EXAMPLES || k < 2 || classes.iter().all(|&c| c == classes[0]) {
        return 1.0;
    }
    let loss = |log_t: f64| {
        let t = log_t.exp();
        let mut total = 0.0;
        for (row, &y) in scores.chunks_exact(k).zip(classes) {
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse: f64 = row.iter().map(|x| ((x - max) / t).exp()).sum::<f64>().ln();
            total += lse - (row[y] - max) / t;
        }
        total
    };
    // Golden-section search on ln T in [ln 0.05, ln 200]: the loss is unimodal in T.
    let (mut lo, mut hi) = (0.05f64.ln(), 200f64.ln());
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let mut a = hi - g * (hi - lo);
    let mut b = lo + g * (hi - lo);
    let (mut fa, mut fb) = (loss(a), loss(b));
    for _ in 0..60 {
        if fa < fb {
            hi = b;
            b = a;
            fb = fa;
            a = hi - g * (hi - lo);
            fa = loss(a);
        } else {
            lo = a;
            a = b;
            fa = fb;
            b = lo + g * (hi - lo);
            fb = loss(b);
        }
    }
    ((lo + hi) / 2.0).exp()
}

/// What `snapshot()` writes and `restore()` reads.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Snapshot {
    format: String,
    version: u32,
    buckets: usize,
    alpha: f64,
    classes: Vec<String>,
    docs: Vec<u64>,
    tokens: Vec<u64>,
    learned: usize,
    temperature: f64,
    /// Sparse counts: (bucket, count per class).
    counts: Vec<(u32, Vec<u32>)>,
    /// Kept labels: (class index, buckets).
    examples: Vec<(usize, Vec<u32>)>,
}

const SNAPSHOT_FORMAT: &str = "triage-loop.naive-bayes";
const SNAPSHOT_VERSION: u32 = 1;

struct Inner {
    enabled: bool,
    min_labels: usize,
    nb: RwLock<Nb>,
}

/// A cheap-to-clone handle to the learned model, shared by the hot path (predict), the failure
/// side and the API (learn), and the store (snapshot/restore).
#[derive(Clone)]
pub struct SharedModel {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SharedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedModel")
            .field("enabled", &self.inner.enabled)
            .field("min_labels", &self.inner.min_labels)
            .field("labels_learned", &self.labels_learned())
            .finish()
    }
}

impl SharedModel {
    /// An empty model over the taxonomy's `classes`.
    pub fn new(cfg: &ModelConfig, classes: &[&str]) -> SharedModel {
        SharedModel {
            inner: Arc::new(Inner {
                enabled: cfg.enabled && !classes.is_empty() && classes.len() <= MAX_CLASSES,
                min_labels: cfg.min_labels.max(1),
                nb: RwLock::new(Nb::new(classes)),
            }),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Nb> {
        self.inner.nb.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Nb> {
        self.inner
            .nb
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn enabled(&self) -> bool {
        self.inner.enabled
    }

    /// Whether the model decides (enabled and at least `min_labels` learned).
    pub fn is_ready(&self) -> bool {
        self.inner.enabled && self.labels_learned() >= self.inner.min_labels
    }

    /// Labels learned so far (seed examples included).
    pub fn labels_learned(&self) -> usize {
        self.read().learned
    }

    /// The fitted temperature (1 until there are two classes to fit on).
    pub fn temperature(&self) -> f64 {
        self.read().temperature
    }

    /// Learns that a failure with these feature tokens is of `class`; false (and nothing
    /// learned) when `class` is not one of the taxonomy's.
    pub fn learn(&self, features: &[String], class: &str) -> bool {
        let buckets = token_buckets(features);
        let due = {
            let mut nb = self.write();
            let Some(c) = nb.class_index(class) else {
                tracing::warn!(class, "model: label of an unknown class not learned");
                return false;
            };
            nb.add(c, buckets.as_slice());
            // Refit while labels are few, then every time the kept labels grow by a sixteenth.
            nb.since_fit * 16 >= nb.examples.len()
        };
        if due {
            self.refit();
        }
        true
    }

    /// Fits the temperature on leave-one-out scores; the scores are worked out under the read
    /// lock so predictions go on meanwhile.
    fn refit(&self) {
        let (scores, classes, k, learned) = {
            let nb = self.read();
            let (s, c) = nb.loo_scores();
            (s, c, nb.k(), nb.learned)
        };
        let t = fit_temperature(&scores, &classes, k);
        let mut nb = self.write();
        nb.temperature = t;
        nb.since_fit = nb.learned.saturating_sub(learned);
    }

    /// The calibrated class of a failure with these tokens; `None` while the model is disabled
    /// or has fewer than `min_labels` labels.
    pub fn predict(&self, features: &[String]) -> Option<Prediction> {
        if !self.is_ready() {
            return None;
        }
        let buckets = token_buckets(features);
        let nb = self.read();
        let (c, confidence) = nb.predict(buckets.as_slice())?;
        Some(Prediction {
            class: nb.classes[c].to_string(),
            confidence,
        })
    }

    /// The hot path's prediction straight from a span: no token strings are built. `None` when
    /// the model is not ready or cannot reach more than `beat` confidence.
    pub(crate) fn predict_span(
        &self,
        span: &Span,
        resource: Option<&Resource>,
        signals: &[Signal],
        beat: f64,
    ) -> Option<(Arc<str>, f64)> {
        if !self.inner.enabled {
            return None;
        }
        let nb = self.read();
        if nb.learned < self.inner.min_labels || nb.max_confidence() <= beat {
            return None;
        }
        let buckets = span_buckets(span, resource, signals);
        let (c, conf) = nb.predict(buckets.as_slice())?;
        (conf > beat).then(|| (nb.classes[c].clone(), conf))
    }

    /// Forgets everything learned.
    pub fn clear(&self) {
        let mut nb = self.write();
        let classes: Vec<Arc<str>> = nb.classes.clone();
        let names: Vec<&str> = classes.iter().map(|c| &**c).collect();
        *nb = Nb::new(&names);
    }

    /// Learns every example of a seed file (see the module doc); all or nothing. Returns how
    /// many were learned.
    pub fn load_seed(&self, path: &Path) -> Result<usize, ModelError> {
        let classes: Vec<Arc<str>> = self.read().classes.clone();
        let names: Vec<&str> = classes.iter().map(|c| &**c).collect();
        let examples = read_seed(path, &names)?;
        {
            let mut nb = self.write();
            for (class, tokens) in &examples {
                // read_seed checked every class against these names.
                let Some(c) = nb.class_index(class) else {
                    continue;
                };
                let buckets = token_buckets(tokens);
                nb.add(c, buckets.as_slice());
            }
        }
        self.refit();
        tracing::info!(path = %path.display(), examples = examples.len(), "model: seed loaded");
        Ok(examples.len())
    }

    /// The model's state as JSON (what the store persists).
    pub fn snapshot(&self) -> serde_json::Value {
        let nb = self.read();
        let k = nb.k();
        let counts = nb
            .counts
            .chunks_exact(k.max(1))
            .enumerate()
            .filter(|(_, row)| row.iter().any(|&c| c > 0))
            .map(|(b, row)| (b as u32, row.to_vec()))
            .collect();
        let snap = Snapshot {
            format: SNAPSHOT_FORMAT.into(),
            version: SNAPSHOT_VERSION,
            buckets: BUCKETS,
            alpha: ALPHA,
            classes: nb.classes.iter().map(|c| c.to_string()).collect(),
            docs: nb.docs.clone(),
            tokens: nb.tokens.clone(),
            learned: nb.learned,
            temperature: nb.temperature,
            counts,
            examples: nb
                .examples
                .iter()
                .map(|e| (e.class, e.buckets.clone()))
                .collect(),
        };
        serde_json::to_value(snap).unwrap_or(serde_json::Value::Null)
    }

    /// Replaces the model's state with a snapshot; all or nothing. Classes the taxonomy no
    /// longer has are dropped (with what they learned).
    pub fn restore(&self, v: &serde_json::Value) -> Result<(), ModelError> {
        let snap: Snapshot = serde_json::from_value(v.clone())
            .map_err(|e| ModelError::Snapshot(format!("not a model snapshot: {e}")))?;
        let classes: Vec<Arc<str>> = self.read().classes.clone();
        let names: Vec<&str> = classes.iter().map(|c| &**c).collect();
        let nb = rebuild(&snap, &names)?;
        let dropped = snap
            .classes
            .iter()
            .filter(|c| !names.contains(&c.as_str()))
            .count();
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "model snapshot: classes not in the taxonomy dropped"
            );
        }
        *self.write() = nb;
        self.refit();
        Ok(())
    }
}

/// The state a snapshot describes, mapped onto the taxonomy's `classes`.
fn rebuild(snap: &Snapshot, classes: &[&str]) -> Result<Nb, ModelError> {
    let bad = |m: String| Err(ModelError::Snapshot(m));
    if snap.format != SNAPSHOT_FORMAT || snap.version != SNAPSHOT_VERSION {
        return bad(format!(
            "format {:?} version {} (expected {SNAPSHOT_FORMAT:?} version {SNAPSHOT_VERSION})",
            snap.format, snap.version
        ));
    }
    if snap.buckets != BUCKETS {
        return bad(format!("{} buckets, expected {BUCKETS}", snap.buckets));
    }
    let sk = snap.classes.len();
    if snap.docs.len() != sk || snap.tokens.len() != sk {
        return bad("docs and tokens must have one entry per class".into());
    }
    // Snapshot class index → taxonomy class index.
    let map: Vec<Option<usize>> = snap
        .classes
        .iter()
        .map(|c| classes.iter().position(|t| t == c))
        .collect();
    let mut nb = Nb::new(classes);
    let k = nb.k();
    for (b, row) in &snap.counts {
        if *b as usize >= BUCKETS || row.len() != sk {
            return bad(format!("bad count row for bucket {b}"));
        }
        let mut any = false;
        for (i, &c) in row.iter().enumerate() {
            if let Some(t) = map[i] {
                let at = *b as usize * k + t;
                nb.counts[at] = c;
                nb.logc[at] = (f64::from(c) + ALPHA).ln() as f32;
                any |= c > 0;
            }
        }
        nb.used += usize::from(any);
    }
    for (i, t) in map.iter().enumerate() {
        if let Some(t) = *t {
            nb.docs[t] = snap.docs[i];
            nb.tokens[t] = snap.tokens[i];
        }
    }
    let dropped: u64 = map
        .iter()
        .zip(&snap.docs)
        .filter(|(m, _)| m.is_none())
        .map(|(_, d)| d)
        .sum();
    nb.learned = snap.learned.saturating_sub(dropped as usize);
    for (c, buckets) in snap.examples.iter().rev().take(MAX_EXAMPLES).rev() {
        if *c >= sk || buckets.iter().any(|&b| b as usize >= BUCKETS) {
            return bad("bad kept example".into());
        }
        if let Some(t) = map[*c] {
            nb.examples.push_back(Example {
                class: t,
                buckets: buckets.clone(),
            });
        }
    }
    if snap.temperature.is_finite() && snap.temperature > 0.0 {
        nb.temperature = snap.temperature;
    }
    Ok(nb)
}

/// One line of a seed file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedLine {
    class: String,
    features: Option<Vec<String>>,
    example: Option<SeedExample>,
}

/// A failure described by hand in a seed file.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct SeedExample {
    span_name: String,
    agent: Option<String>,
    tool: Option<String>,
    operation: Option<String>,
    error_type: Option<String>,
    signal: Option<String>,
    name: Option<String>,
    exception_type: Option<String>,
    evaluation: Option<String>,
    label: Option<String>,
    message: String,
}

impl SeedExample {
    /// The tokens [`features`] gives the span and signal this example describes.
    fn tokens(self) -> Result<Vec<String>, String> {
        let kind = match self.signal.as_deref() {
            Some(k) => SignalKind::ALL
                .into_iter()
                .find(|s| s.as_str() == k)
                .ok_or_else(|| format!("unknown signal {k:?}"))?,
            None if self.exception_type.is_some() => SignalKind::Exception,
            None if self.evaluation.is_some() => SignalKind::Evaluation,
            None => SignalKind::Status,
        };
        let mut attributes = Vec::new();
        for (key, v) in [
            (AGENT_NAME, &self.agent),
            ("gen_ai.tool.name", &self.tool),
            ("gen_ai.operation.name", &self.operation),
            (keys::ERROR_TYPE, &self.error_type),
        ] {
            if let Some(v) = v {
                attributes.push(string_kv(key, v.as_str()));
            }
        }
        let span = Span {
            name: self.span_name,
            attributes,
            ..Default::default()
        };
        let name = self
            .name
            .or(self.exception_type)
            .or(self.evaluation)
            .or(self.error_type)
            .unwrap_or_default();
        let signal = Signal {
            kind,
            name,
            message: self.message,
            label: self.label,
            score: None,
        };
        Ok(features(&span, None, &[signal]))
    }
}

/// Reads a seed file: (class, tokens) per line. Every class must be in `classes`.
fn read_seed(path: &Path, classes: &[&str]) -> Result<Vec<(String, Vec<String>)>, ModelError> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| ModelError::SeedIo {
        path: shown.clone(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let err = |message: String| ModelError::Seed {
            path: shown.clone(),
            line: i + 1,
            message,
        };
        let line = line.map_err(|e| err(e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let seed: SeedLine = serde_json::from_str(&line).map_err(|e| err(e.to_string()))?;
        if !classes.contains(&seed.class.as_str()) {
            return Err(err(format!(
                "unknown class {:?}; expected one of {}",
                seed.class,
                classes.join(", ")
            )));
        }
        let tokens = match (seed.features, seed.example) {
            (Some(f), None) => f,
            (None, Some(e)) => e.tokens().map_err(err)?,
            _ => {
                return Err(err(
                    "expected exactly one of \"features\" or \"example\"".into()
                ))
            }
        };
        out.push((seed.class, tokens));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::attributes::string_kv;
    use std::io::Write;

    const CLASSES: [&str; 4] = ["tone_brand", "logic_tool", "data_quality", "coverage_gap"];

    fn model(min_labels: usize) -> SharedModel {
        let cfg = ModelConfig {
            min_labels,
            ..ModelConfig::default()
        };
        SharedModel::new(&cfg, &CLASSES)
    }

    fn tool_span(tool: &str) -> Span {
        Span {
            name: format!("execute_tool {tool}"),
            kind: 3,
            attributes: vec![
                string_kv("gen_ai.operation.name", "execute_tool"),
                string_kv("gen_ai.tool.name", tool),
                string_kv("evaluations.0.evaluation.name", "x"),
                string_kv("evaluations.1.evaluation.name", "y"),
                string_kv("failure.class", "logic_tool"),
            ],
            ..Default::default()
        }
    }

    fn exception(ty: &str, msg: &str) -> Signal {
        Signal {
            kind: SignalKind::Exception,
            name: ty.into(),
            message: msg.into(),
            label: None,
            score: None,
        }
    }

    /// Tokens of a failure on tool `tool` with exception `ty: msg`.
    fn toks(tool: &str, ty: &str, msg: &str) -> Vec<String> {
        features(&tool_span(tool), None, &[exception(ty, msg)])
    }

    #[test]
    fn features_are_lowercased_masked_bounded_and_leave_our_tags_out() {
        let f = toks(
            "Lookup_Order",
            "KeyError",
            "Order 12345 has no field 'Total' at 0xdeadbeef",
        );
        for t in [
            "kind=client",
            "op=execute_tool",
            "tool=lookup_order",
            "sk=exception",
            "sn=keyerror",
            "w=order",
            "w=<n>",
            "w=total",
            "b=order <n>",
            "ak=evaluations.#",
            "ak=gen_ai.tool.name",
            "nw=execute_tool",
        ] {
            assert!(f.contains(&t.to_string()), "{t} missing from {f:?}");
        }
        assert!(!f.iter().any(|t| t.contains("failure")), "{f:?}");
        assert!(!f.iter().any(|t| t.contains("12345")), "{f:?}");
        let distinct: std::collections::HashSet<_> = f.iter().collect();
        assert_eq!(distinct.len(), f.len());
        let long = "word ".repeat(500) + &(0..500).map(|i| format!("w{i}x ")).collect::<String>();
        let many: Vec<Signal> = (0..10)
            .map(|i| exception(&format!("E{i}"), &long))
            .collect();
        let mut span = tool_span("t");
        for i in 0..200 {
            span.attributes.push(string_kv(&format!("k{i}"), "v"));
        }
        assert!(features(&span, None, &many).len() <= MAX_FEATURES);
    }

    #[test]
    fn hot_path_buckets_equal_the_buckets_of_the_stored_tokens() {
        let span = tool_span("Search_KB");
        let sig = [exception("ValueError", "Ünïcode ßtraße 42 — naïve OK")];
        let from_tokens = token_buckets(&features(&span, None, &sig));
        let direct = span_buckets(&span, None, &sig);
        assert_eq!(from_tokens.as_slice(), direct.as_slice());
    }

    #[test]
    fn nothing_before_min_labels_and_learning_moves_predictions() {
        let m = model(3);
        let timeout = toks("lookup_order", "TimeoutError", "call timed out after 30s");
        let missing = toks("kb_search", "KeyError", "document has no field body");
        assert_eq!(m.predict(&timeout), None);
        assert!(m.learn(&timeout, "logic_tool"));
        assert!(m.learn(&missing, "data_quality"));
        assert_eq!(m.predict(&timeout), None, "2 labels < min_labels 3");
        assert!(!m.learn(&timeout, "no_such_class"));
        assert_eq!(m.labels_learned(), 2);
        m.learn(&timeout, "logic_tool");
        let p = m.predict(&timeout).expect("ready");
        assert_eq!(p.class, "logic_tool");
        assert_eq!(m.predict(&missing).unwrap().class, "data_quality");
        // Relabel the timeout pattern enough times and the prediction follows.
        for _ in 0..6 {
            m.learn(&timeout, "coverage_gap");
        }
        assert_eq!(m.predict(&timeout).unwrap().class, "coverage_gap");
    }

    #[test]
    fn disabled_model_never_predicts() {
        let cfg = ModelConfig {
            enabled: false,
            min_labels: 1,
            ..ModelConfig::default()
        };
        let m = SharedModel::new(&cfg, &CLASSES);
        let t = toks("a", "B", "c");
        m.learn(&t, "logic_tool");
        assert!(!m.is_ready());
        assert_eq!(m.predict(&t), None);
        let span = tool_span("a");
        assert_eq!(
            m.predict_span(&span, None, &[exception("B", "c")], -1.0),
            None
        );
    }

    /// Four distinct failure patterns, one per class, with a little noise in the messages.
    fn teach(m: &SharedModel, rounds: usize) {
        for i in 0..rounds {
            m.learn(
                &toks(
                    "lookup_order",
                    "TimeoutError",
                    &format!("call {i} timed out"),
                ),
                "logic_tool",
            );
            m.learn(
                &toks(
                    "kb_search",
                    "KeyError",
                    &format!("document {i} missing field body"),
                ),
                "data_quality",
            );
            m.learn(
                &toks(
                    "reply",
                    "ToneViolation",
                    &format!("reply {i} too casual for brand"),
                ),
                "tone_brand",
            );
            m.learn(
                &toks(
                    "route",
                    "NoIntent",
                    &format!("request {i} outside supported products"),
                ),
                "coverage_gap",
            );
        }
    }

    #[test]
    fn confidence_rises_with_evidence_and_stays_a_probability() {
        let probe = toks("lookup_order", "TimeoutError", "call 99 timed out");
        let mut last = 0.0;
        for rounds in [2, 8, 40] {
            let m = model(1);
            teach(&m, rounds);
            let p = m.predict(&probe).unwrap();
            assert_eq!(p.class, "logic_tool");
            assert!(
                p.confidence > last,
                "{rounds} rounds: {} <= {last}",
                p.confidence
            );
            assert!(p.confidence > 0.0 && p.confidence < 1.0);
            last = p.confidence;
        }
        assert!(last > 0.8, "{last}");
        // A failure like none learned gets a low confidence.
        let m = model(1);
        teach(&m, 40);
        let odd = features(&Span::default(), None, &[]);
        assert!(m.predict(&odd).unwrap().confidence < 0.6);
        assert!(m.temperature() > 0.0);
    }

    #[test]
    fn snapshot_restore_round_trips_and_rejects_garbage() {
        let m = model(2);
        teach(&m, 5);
        let snap = m.snapshot();
        let back = model(2);
        back.restore(&snap).unwrap();
        assert_eq!(back.labels_learned(), m.labels_learned());
        assert_eq!(back.snapshot(), snap);
        for probe in [
            toks("kb_search", "KeyError", "document 7 missing field body"),
            toks("reply", "x", "too casual"),
        ] {
            assert_eq!(back.predict(&probe), m.predict(&probe));
        }
        // Through JSON text, as the store keeps it.
        let text = serde_json::to_string(&snap).unwrap();
        let again = model(2);
        again
            .restore(&serde_json::from_str(&text).unwrap())
            .unwrap();
        assert_eq!(again.snapshot(), snap);
        // A taxonomy without a class drops what it learned.
        let fewer = SharedModel::new(&ModelConfig::default(), &CLASSES[..3]);
        fewer.restore(&snap).unwrap();
        assert_eq!(fewer.labels_learned(), 15);
        // Bad snapshots change nothing.
        for bad in [
            serde_json::json!({"format": "x"}),
            serde_json::json!(42),
            {
                let mut s = snap.clone();
                s["buckets"] = 7.into();
                s
            },
            {
                let mut s = snap.clone();
                s["counts"][0][0] = (BUCKETS as u64 + 1).into();
                s
            },
            {
                let mut s = snap.clone();
                s["docs"] = serde_json::json!([1]);
                s
            },
        ] {
            assert!(back.restore(&bad).is_err(), "{bad}");
            assert_eq!(back.snapshot(), snap);
        }
        back.clear();
        assert_eq!(back.labels_learned(), 0);
    }

    fn seed_file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn seed_file_both_forms_load() {
        let f = seed_file(concat!(
            r#"{"class": "logic_tool", "features": ["tool=lookup_order", "sk=exception", "w=timed"]}"#,
            "\n\n",
            r#"{"class": "data_quality", "example": {"tool": "kb_search", "exception_type": "KeyError", "message": "document 42 has no field body"}}"#,
            "\n",
            r#"{"class": "tone_brand", "example": {"evaluation": "brand_voice", "label": "off_brand"}}"#,
            "\n",
        ));
        let m = model(3);
        assert_eq!(m.load_seed(f.path()).unwrap(), 3);
        assert!(m.is_ready());
        let p = m
            .predict(&toks(
                "kb_search",
                "KeyError",
                "document 7 has no field body",
            ))
            .unwrap();
        assert_eq!(p.class, "data_quality");
        assert!(ModelConfig {
            seed_file: Some(f.path().into()),
            ..ModelConfig::default()
        }
        .validate(&CLASSES)
        .is_ok());
    }

    #[test]
    fn bad_seed_files_are_refused_with_the_line_and_nothing_learned() {
        let cases = [
            (
                "{\"class\": \"logic_tool\", \"features\": []}\nnot json\n",
                "line 2",
            ),
            (
                r#"{"class": "nope", "features": []}"#,
                "unknown class \"nope\"",
            ),
            (r#"{"class": "logic_tool"}"#, "exactly one of"),
            (
                r#"{"class": "logic_tool", "features": [], "example": {}}"#,
                "exactly one of",
            ),
            (
                r#"{"class": "logic_tool", "example": {"signal": "bogus"}}"#,
                "unknown signal",
            ),
            (r#"{"class": "logic_tool", "extra": 1}"#, "unknown field"),
        ];
        for (text, want) in cases {
            let f = seed_file(text);
            let m = model(1);
            let e = m.load_seed(f.path()).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
            assert_eq!(m.labels_learned(), 0);
            let cfg = ModelConfig {
                seed_file: Some(f.path().into()),
                ..ModelConfig::default()
            };
            let (key, msg) = cfg.validate(&CLASSES).unwrap_err();
            assert_eq!(key, "seed_file");
            assert!(msg.contains(want), "{msg}");
        }
        let missing = model(1)
            .load_seed(Path::new("/nonexistent/seed.jsonl"))
            .unwrap_err();
        assert!(
            missing.to_string().contains("cannot read seed file"),
            "{missing}"
        );
        let zero = ModelConfig {
            min_labels: 0,
            ..ModelConfig::default()
        };
        assert_eq!(zero.validate(&CLASSES).unwrap_err().0, "min_labels");
    }

    #[test]
    fn temperature_fit_finds_the_spread_of_overconfident_scores() {
        // Scores 10 apart but right only ~3 times in 4: the fitted T must soften them a lot.
        let mut scores = Vec::new();
        let mut classes = Vec::new();
        for i in 0..200 {
            scores.extend([10.0, 0.0]);
            classes.push(usize::from(i % 4 == 0));
        }
        let t = fit_temperature(&scores, &classes, 2);
        let mut p = [10.0, 0.0];
        softmax(&mut p, t);
        assert!((p[0] - 0.75).abs() < 0.01, "T {t}: p {p:?}");
        assert_eq!(fit_temperature(&[1.0, 0.0], &[0], 2), 1.0);
        assert_eq!(
            fit_temperature(&scores[..18], &[0, 1, 0, 1, 0, 1, 0, 1, 0], 2),
            1.0
        );
    }
}
