//! `triage-loop eval DIR`: how well the rules, the learned model and the cascade of both classify
//! a labelled corpus of failed agent runs, by stratified k-fold cross-validation.
//!
//! DIR holds OTLP/JSON trace files (`.json` / `.jsonl`, as `triage-loop replay` reads them; also
//! `.pb` / `.binpb`), in DIR or its subfolders, and `labels.jsonl`: one
//! `{"trace_id": "<32 hex>", "class": "<class>"}` per line (an optional `"note"` is ignored).
//! Each labelled trace is taken through the code the service runs: the classifier on every span,
//! then the failure side's root cause (`failure::assembler::root_cause`); the failure's class is
//! the root-cause span's. Per fold, a fresh model learns the other folds' labels through
//! `SharedModel::learn` on `features()` of their root-cause spans, exactly as human labels
//! train it, and the held-out fold is classified by: the majority class of the training folds;
//! the rules alone (rule or fallback); the model alone; and the cascade (rules + model).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::classify::model::{features, ModelConfig, SharedModel};
use crate::classify::{Classifier, Source};
use crate::config;
use crate::failure::assembler::root_cause;
use crate::failure::Node;
use crate::otlp::SignalType;

/// The labels file in an eval directory.
pub const LABELS_FILE: &str = "labels.jsonl";
/// Deepest subfolder of DIR searched for trace files.
const MAX_DEPTH: usize = 4;
/// Reliability bins of the model's confidence.
const BINS: usize = 10;

/// How to run an evaluation.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub folds: usize,
    /// Seed of the deterministic shuffle that deals traces into folds.
    pub seed: u64,
    /// collector-config.yaml (taxonomy, rules, model settings); the built-in default without.
    pub config: Option<PathBuf>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            folds: 5,
            seed: 1,
            config: None,
        }
    }
}

/// Precision, recall and F1 of one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassScore {
    pub class: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

/// The figures of one way of classifying.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemReport {
    pub name: String,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub per_class: Vec<ClassScore>,
    /// `confusion[truth][predicted]`, in `Report::classes` order.
    pub confusion: Vec<Vec<usize>>,
}

/// One bin of the model's reliability table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    pub lo: f64,
    pub hi: f64,
    pub n: usize,
    pub mean_confidence: f64,
    pub accuracy: f64,
}

/// What each system said about one labelled failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseResult {
    pub trace_id: String,
    pub root_span_id: String,
    pub truth: String,
    pub fold: usize,
    pub rules: String,
    /// The rule that decided; none = fallback.
    pub rule: Option<String>,
    pub model: Option<String>,
    pub model_confidence: Option<f64>,
    pub cascade: String,
    /// rule, model or fallback.
    pub cascade_source: String,
}

/// What `eval` found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub dir: String,
    /// Labelled failures evaluated.
    pub failures: usize,
    /// Traces in the files with no label (not evaluated).
    pub unlabelled_traces: usize,
    pub folds: usize,
    pub seed: u64,
    pub classes: Vec<String>,
    /// majority, rules, model, cascade.
    pub systems: Vec<SystemReport>,
    /// Share of failures a rule decided (the rest fell back to the fallback class).
    pub rules_coverage: f64,
    pub fallback_class: String,
    /// Who decided the cascade's classes: rule, model, fallback.
    pub cascade_sources: BTreeMap<String, usize>,
    /// The model's held-out predictions by confidence.
    pub reliability: Vec<ReliabilityBin>,
    /// Expected calibration error of those predictions.
    pub ece: f64,
    /// Every failure, in trace id order.
    pub cases: Vec<CaseResult>,
}

impl Report {
    /// The figures of the system `name` (majority, rules, model, cascade).
    pub fn system(&self, name: &str) -> Option<&SystemReport> {
        self.systems.iter().find(|s| s.name == name)
    }
}

/// One labelled failure, ready to classify.
struct Case {
    trace_id: String,
    truth: usize,
    root: SpanAt,
    /// The rules-only decision: class index and the rule that decided (none = fallback).
    rules: (usize, Option<String>),
    features: Vec<String>,
}

/// A decoded span with its resource and scope.
#[derive(Clone)]
struct SpanAt {
    span: Span,
    resource: Option<Resource>,
    scope: Option<InstrumentationScope>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelLine {
    trace_id: String,
    class: String,
    #[allow(dead_code)]
    note: Option<String>,
}

/// Runs the evaluation of `dir`.
pub fn run(dir: &Path, opts: &EvalOptions) -> anyhow::Result<Report> {
    if opts.folds < 2 {
        bail!("--folds must be at least 2, got {}", opts.folds);
    }
    let loaded = match &opts.config {
        Some(p) => config::load_file(p)?,
        None => config::load_default(),
    };
    let mut loaded = loaded;
    let classes: Vec<String> = loaded
        .taxonomy
        .class_names()
        .iter()
        .map(|c| c.to_string())
        .collect();
    let names: Vec<&str> = classes.iter().map(String::as_str).collect();
    let model_cfg = ModelConfig {
        enabled: true,
        seed_file: None,
        ..loaded.config.processors.failure_triage.model.clone()
    };
    let model = SharedModel::new(&model_cfg, &names);
    let classifier = loaded.take_classifier().with_model(model.clone());
    model.clear();

    let labels = read_labels(&dir.join(LABELS_FILE), &names)?;
    let traces = read_traces(dir)?;
    let unlabelled = traces.keys().filter(|t| !labels.contains_key(*t)).count();
    let mut cases = Vec::with_capacity(labels.len());
    for (trace_id, truth) in &labels {
        let spans = traces.get(trace_id).with_context(|| {
            format!("{LABELS_FILE}: trace {trace_id} is labelled but not in any trace file")
        })?;
        let case = failure_case(&classifier, trace_id, *truth, spans, &names)?;
        cases.push(case);
    }
    if cases.len() < opts.folds {
        bail!(
            "{} labelled failure(s) cannot be split into {} folds",
            cases.len(),
            opts.folds
        );
    }
    let fold_of = deal(&cases, opts.folds, opts.seed, classes.len());
    let k = classes.len();
    let mut predicted = Predictions::new(cases.len());
    for fold in 0..opts.folds {
        model.clear();
        let mut counts = vec![0usize; k];
        for (c, _) in cases.iter().zip(&fold_of).filter(|(_, f)| **f != fold) {
            model.learn(&c.features, &classes[c.truth]);
            counts[c.truth] += 1;
        }
        let majority = (0..k).max_by_key(|&i| (counts[i], k - i)).unwrap_or(0);
        for (i, c) in cases
            .iter()
            .enumerate()
            .filter(|(i, _)| fold_of[*i] == fold)
        {
            predicted.majority[i] = majority;
            predicted.rules[i] = c.rules.0;
            predicted.fold[i] = fold;
            if let Some(p) = model.predict(&c.features) {
                let class = names.iter().position(|n| *n == p.class).unwrap_or(0);
                predicted.model[i] = Some((class, p.confidence));
            }
            let d = classifier
                .classify(
                    &c.root.span,
                    c.root.resource.as_ref(),
                    c.root.scope.as_ref(),
                )
                .with_context(|| format!("trace {}: root cause lost its signal", c.trace_id))?;
            predicted.cascade[i] = names.iter().position(|n| *n == d.class).unwrap_or(0);
            predicted.cascade_source[i] = match (d.source, &d.rule) {
                (Source::Rule, None) => "fallback",
                (s, _) => s.as_str(),
            };
        }
    }
    model.clear();
    Ok(report(
        dir,
        opts,
        &classes,
        &cases,
        &predicted,
        unlabelled,
        classifier.fallback(),
    ))
}

/// What each system predicted for each case.
struct Predictions {
    majority: Vec<usize>,
    rules: Vec<usize>,
    model: Vec<Option<(usize, f64)>>,
    cascade: Vec<usize>,
    cascade_source: Vec<&'static str>,
    fold: Vec<usize>,
}

impl Predictions {
    fn new(n: usize) -> Self {
        Predictions {
            majority: vec![0; n],
            rules: vec![0; n],
            model: vec![None; n],
            cascade: vec![0; n],
            cascade_source: vec!["fallback"; n],
            fold: vec![0; n],
        }
    }
}

fn report(
    dir: &Path,
    opts: &EvalOptions,
    classes: &[String],
    cases: &[Case],
    p: &Predictions,
    unlabelled: usize,
    fallback: &str,
) -> Report {
    let truth: Vec<usize> = cases.iter().map(|c| c.truth).collect();
    // The model always answers once trained; a case it did not answer counts as wrong.
    let model_classes: Vec<Option<usize>> = p.model.iter().map(|m| m.map(|(c, _)| c)).collect();
    let some = |v: &[usize]| v.iter().map(|&c| Some(c)).collect::<Vec<_>>();
    let systems = vec![
        score("majority", classes, &truth, &some(&p.majority)),
        score("rules", classes, &truth, &some(&p.rules)),
        score("model", classes, &truth, &model_classes),
        score("cascade", classes, &truth, &some(&p.cascade)),
    ];
    let mut cascade_sources = BTreeMap::new();
    for s in &p.cascade_source {
        *cascade_sources.entry(s.to_string()).or_insert(0) += 1;
    }
    let ruled = cases.iter().filter(|c| c.rules.1.is_some()).count();
    let cases_out = cases
        .iter()
        .enumerate()
        .map(|(i, c)| CaseResult {
            trace_id: c.trace_id.clone(),
            root_span_id: crate::failure::hex(&c.root.span.span_id),
            truth: classes[c.truth].clone(),
            fold: p.fold[i],
            rules: classes[c.rules.0].clone(),
            rule: c.rules.1.clone(),
            model: p.model[i].map(|(m, _)| classes[m].clone()),
            model_confidence: p.model[i].map(|(_, conf)| conf),
            cascade: classes[p.cascade[i]].clone(),
            cascade_source: p.cascade_source[i].to_string(),
        })
        .collect();
    let (reliability, ece) = reliability(&truth, &p.model);
    Report {
        dir: dir.display().to_string(),
        failures: cases.len(),
        unlabelled_traces: unlabelled,
        folds: opts.folds,
        seed: opts.seed,
        classes: classes.to_vec(),
        systems,
        rules_coverage: ratio(ruled, cases.len()),
        fallback_class: fallback.to_string(),
        cascade_sources,
        reliability,
        ece,
        cases: cases_out,
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Accuracy, macro-F1 (over classes with a label or a prediction), per-class scores and the
/// confusion matrix of `predicted` against `truth`.
fn score(
    name: &str,
    classes: &[String],
    truth: &[usize],
    predicted: &[Option<usize>],
) -> SystemReport {
    let k = classes.len();
    let mut confusion = vec![vec![0usize; k]; k];
    let mut correct = 0;
    for (&t, p) in truth.iter().zip(predicted) {
        if let Some(p) = *p {
            confusion[t][p] += 1;
            correct += usize::from(t == p);
        }
    }
    let mut per_class = Vec::with_capacity(k);
    let mut f1s = Vec::new();
    for (c, class) in classes.iter().enumerate() {
        let tp = confusion[c][c];
        let support = truth.iter().filter(|&&t| t == c).count();
        let predicted_c = predicted.iter().filter(|p| **p == Some(c)).count();
        let precision = ratio(tp, predicted_c);
        let recall = ratio(tp, support);
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        if support > 0 || predicted_c > 0 {
            f1s.push(f1);
        }
        per_class.push(ClassScore {
            class: class.clone(),
            precision,
            recall,
            f1,
            support,
        });
    }
    SystemReport {
        name: name.to_string(),
        accuracy: ratio(correct, truth.len()),
        macro_f1: if f1s.is_empty() {
            0.0
        } else {
            f1s.iter().sum::<f64>() / f1s.len() as f64
        },
        per_class,
        confusion,
    }
}

/// The model's held-out predictions in confidence bins, and the expected calibration error.
fn reliability(truth: &[usize], model: &[Option<(usize, f64)>]) -> (Vec<ReliabilityBin>, f64) {
    let mut n = [0usize; BINS];
    let mut conf = [0f64; BINS];
    let mut right = [0usize; BINS];
    let mut total = 0;
    for (&t, m) in truth.iter().zip(model) {
        if let Some((c, p)) = *m {
            let b = ((p * BINS as f64) as usize).min(BINS - 1);
            n[b] += 1;
            conf[b] += p;
            right[b] += usize::from(c == t);
            total += 1;
        }
    }
    let mut ece = 0.0;
    let bins = (0..BINS)
        .map(|b| {
            let mean = if n[b] > 0 { conf[b] / n[b] as f64 } else { 0.0 };
            let acc = ratio(right[b], n[b]);
            ece += ratio(n[b], total) * (acc - mean).abs();
            ReliabilityBin {
                lo: b as f64 / BINS as f64,
                hi: (b + 1) as f64 / BINS as f64,
                n: n[b],
                mean_confidence: mean,
                accuracy: acc,
            }
        })
        .collect();
    (bins, ece)
}

/// Deals cases into folds: each class's cases (in trace id order) shuffled with `seed`, then
/// dealt round-robin, so every fold holds about the same share of every class.
fn deal(cases: &[Case], folds: usize, seed: u64, classes: usize) -> Vec<usize> {
    let mut rng = SplitMix(seed);
    let mut fold_of = vec![0; cases.len()];
    let mut next = 0;
    for class in 0..classes {
        let mut idx: Vec<usize> = (0..cases.len())
            .filter(|&i| cases[i].truth == class)
            .collect();
        for i in (1..idx.len()).rev() {
            let j = (rng.next() % (i as u64 + 1)) as usize;
            idx.swap(i, j);
        }
        for i in idx {
            fold_of[i] = next % folds;
            next += 1;
        }
    }
    fold_of
}

/// SplitMix64: a small, well-mixed deterministic generator for the shuffle.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Classifies every span of a trace, finds the root cause as the failure side does, and
/// returns the case for it.
fn failure_case(
    classifier: &Classifier,
    trace_id: &str,
    truth: usize,
    spans: &[SpanAt],
    classes: &[&str],
) -> anyhow::Result<Case> {
    let mut nodes: HashMap<[u8; 8], Node> = HashMap::with_capacity(spans.len());
    let mut at: HashMap<[u8; 8], usize> = HashMap::with_capacity(spans.len());
    for (i, s) in spans.iter().enumerate() {
        let span = &s.span;
        let decision = classifier.classify(span, s.resource.as_ref(), s.scope.as_ref());
        let node = Node::of_span(span, s.resource.as_ref(), decision).with_context(|| {
            format!("trace {trace_id}: a span with an invalid trace or span id")
        })?;
        let sid = node.span_id;
        nodes.insert(sid, node);
        at.insert(sid, i);
    }
    let Some((root, _, _)) = root_cause(&nodes) else {
        bail!("trace {trace_id} is labelled but has no failure signal");
    };
    let root = spans[at[&root.span_id]].clone();
    let decision = classifier
        .classify(&root.span, root.resource.as_ref(), root.scope.as_ref())
        .with_context(|| format!("trace {trace_id}: root cause has no signal"))?;
    let class = classes
        .iter()
        .position(|c| *c == decision.class)
        .unwrap_or(0);
    Ok(Case {
        trace_id: trace_id.to_string(),
        truth,
        features: features(&root.span, root.resource.as_ref(), &decision.signals),
        rules: (class, decision.rule),
        root,
    })
}

/// Reads `labels.jsonl`: trace id → class index.
fn read_labels(path: &Path, classes: &[&str]) -> anyhow::Result<BTreeMap<String, usize>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let l: LabelLine = serde_json::from_str(line).with_context(|| {
            format!(
                "{}: expected {{\"trace_id\": \"<32 hex>\", \"class\": \"<class>\"}}",
                at()
            )
        })?;
        let id = l.trace_id.to_ascii_lowercase();
        if id.len() != 32
            || !id.bytes().all(|b| b.is_ascii_hexdigit())
            || id.bytes().all(|b| b == b'0')
        {
            bail!(
                "{}: trace_id {:?} is not 32 hex digits (and not all zero)",
                at(),
                l.trace_id
            );
        }
        let Some(c) = classes.iter().position(|c| *c == l.class) else {
            bail!(
                "{}: unknown class {:?}; expected one of {}",
                at(),
                l.class,
                classes.join(", ")
            );
        };
        if out.insert(id, c).is_some() {
            bail!("{}: trace {} is labelled twice", at(), l.trace_id);
        }
    }
    if out.is_empty() {
        bail!("{}: no labels", path.display());
    }
    Ok(out)
}

/// Every trace file under `dir`, sorted.
fn trace_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = stack.pop() {
        let entries = std::fs::read_dir(&d)
            .with_context(|| format!("cannot read directory {}", d.display()))?;
        for e in entries {
            let path = e
                .with_context(|| format!("cannot read directory {}", d.display()))?
                .path();
            if path.is_dir() {
                if depth < MAX_DEPTH {
                    stack.push((path, depth + 1));
                }
                continue;
            }
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if name != LABELS_FILE && ["json", "jsonl", "pb", "binpb"].contains(&ext) {
                out.push(path);
            }
        }
    }
    out.sort();
    if out.is_empty() {
        bail!("{}: no trace files (.json, .jsonl, .pb)", dir.display());
    }
    Ok(out)
}

/// Reads every trace file under `dir`: trace id (hex) → its spans.
fn read_traces(dir: &Path) -> anyhow::Result<BTreeMap<String, Vec<SpanAt>>> {
    let mut traces: BTreeMap<String, Vec<SpanAt>> = BTreeMap::new();
    for file in trace_files(dir)? {
        for (n, req) in crate::replay::read_file(&file)?.into_iter().enumerate() {
            if req.signal != SignalType::Traces {
                continue;
            }
            let decoded = if req.json {
                serde_json::from_slice::<ExportTraceServiceRequest>(&req.body)
                    .map_err(anyhow::Error::from)
            } else {
                ExportTraceServiceRequest::decode(req.body.as_ref()).map_err(anyhow::Error::from)
            };
            let decoded = decoded.with_context(|| {
                format!(
                    "{}: request {}: not an OTLP trace request",
                    file.display(),
                    n + 1
                )
            })?;
            for rs in decoded.resource_spans {
                for ss in rs.scope_spans {
                    for span in ss.spans {
                        let id = crate::failure::hex(&span.trace_id);
                        traces.entry(id).or_default().push(SpanAt {
                            span,
                            resource: rs.resource.clone(),
                            scope: ss.scope.clone(),
                        });
                    }
                }
            }
        }
    }
    Ok(traces)
}

/// The report as text tables.
pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "eval {}: {} labelled failures ({} unlabelled traces skipped), {}-fold cross-validation, seed {}",
        r.dir, r.failures, r.unlabelled_traces, r.folds, r.seed
    );
    let _ = writeln!(o, "\n{:<10} {:>9} {:>9}", "system", "accuracy", "macro-F1");
    for s in &r.systems {
        let note = match s.name.as_str() {
            "majority" => "most frequent class of the training folds".to_string(),
            "rules" => format!(
                "rules + fallback: a rule decided {:.1}%, the rest fell back to {}",
                100.0 * r.rules_coverage,
                r.fallback_class
            ),
            "model" => "learned model alone, trained on the other folds".to_string(),
            "cascade" => format!(
                "rules + model, as served: {}",
                r.cascade_sources
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => String::new(),
        };
        let _ = writeln!(
            o,
            "{:<10} {:>9.3} {:>9.3}   {note}",
            s.name, s.accuracy, s.macro_f1
        );
    }
    for s in r.systems.iter().filter(|s| s.name != "majority") {
        let _ = writeln!(o, "\n{} per class:", s.name);
        let _ = writeln!(
            o,
            "  {:<16} {:>9} {:>7} {:>6} {:>8}",
            "class", "precision", "recall", "F1", "support"
        );
        for c in &s.per_class {
            let _ = writeln!(
                o,
                "  {:<16} {:>9.3} {:>7.3} {:>6.3} {:>8}",
                c.class, c.precision, c.recall, c.f1, c.support
            );
        }
        let _ = writeln!(o, "{} confusion (rows: truth, columns: predicted):", s.name);
        let _ = write!(o, "  {:<16}", "");
        for c in &r.classes {
            let _ = write!(o, " {:>13}", cut(c, 13));
        }
        let _ = writeln!(o);
        for (c, row) in r.classes.iter().zip(&s.confusion) {
            let _ = write!(o, "  {c:<16}");
            for n in row {
                let _ = write!(o, " {n:>13}");
            }
            let _ = writeln!(o);
        }
    }
    let _ = writeln!(
        o,
        "\nmodel reliability (held-out predictions; ECE {:.3}):",
        r.ece
    );
    let _ = writeln!(
        o,
        "  {:<11} {:>5} {:>10} {:>9}",
        "confidence", "n", "mean conf", "accuracy"
    );
    for b in r.reliability.iter().filter(|b| b.n > 0) {
        let _ = writeln!(
            o,
            "  {:.1}–{:.1}     {:>5} {:>10.3} {:>9.3}",
            b.lo, b.hi, b.n, b.mean_confidence, b.accuracy
        );
    }
    o
}

fn cut(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
