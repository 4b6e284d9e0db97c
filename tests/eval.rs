//! `triage-loop eval` on the shipped corpus (library and binary), and its answers to bad input.

use std::path::{Path, PathBuf};
use std::process::Command;

use triage_loop::eval::{run, EvalOptions, Report};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/agent-failures")
}

fn accuracy(r: &Report, system: &str) -> (f64, f64) {
    let s = r
        .system(system)
        .unwrap_or_else(|| panic!("no {system} figures"));
    (s.accuracy, s.macro_f1)
}

/// The corpus leaves about a quarter of its failures to the fallback class and has rules pick
/// the wrong class for another ~tenth (see its README); a model that learns those patterns
/// from the other folds must recover most of them. The margins asked for here (15 points over
/// the rules, 40 over the majority class) are about half of what the figures in the README show,
/// so they hold across reshuffles and small generator changes but fail if the model stops
/// learning or the cascade stops asking it.
#[test]
fn cascade_beats_majority_and_rules_on_the_corpus() {
    let r = run(&corpus(), &EvalOptions::default()).unwrap();
    assert!(r.failures >= 500, "{} failures", r.failures);
    assert_eq!(r.unlabelled_traces, 0);
    let (maj, maj_f1) = accuracy(&r, "majority");
    let (rules, rules_f1) = accuracy(&r, "rules");
    let (cascade, cascade_f1) = accuracy(&r, "cascade");
    assert!(
        cascade >= rules + 0.15,
        "cascade {cascade} vs rules {rules}"
    );
    assert!(
        cascade_f1 >= rules_f1 + 0.15,
        "F1 {cascade_f1} vs {rules_f1}"
    );
    assert!(cascade >= maj + 0.40, "cascade {cascade} vs majority {maj}");
    assert!(cascade_f1 >= maj_f1 + 0.40);
    // The rules leave a realistic share to the fallback.
    assert!(
        (0.6..0.9).contains(&r.rules_coverage),
        "rules decided {}",
        r.rules_coverage
    );
    // The model's confidence means what it says (expected calibration error).
    assert!(r.ece < 0.1, "ECE {}", r.ece);
    // Every confusion matrix counts every failure once; the cascade's sources add up.
    for s in &r.systems {
        let total: usize = s.confusion.iter().flatten().sum();
        assert!(total <= r.failures && total + 5 >= r.failures, "{}", s.name);
    }
    assert_eq!(r.cascade_sources.values().sum::<usize>(), r.failures);
    assert!(r.cascade_sources.get("model").copied().unwrap_or(0) > 0);
    assert_eq!(r.cases.len(), r.failures);
}

#[test]
fn same_seed_same_report_other_seed_same_verdict() {
    let opts = EvalOptions {
        folds: 4,
        seed: 9,
        config: None,
    };
    let a = run(&corpus(), &opts).unwrap();
    let b = run(&corpus(), &opts).unwrap();
    assert_eq!(a, b);
    let c = run(&corpus(), &EvalOptions { seed: 10, ..opts }).unwrap();
    assert_ne!(
        a.cases.iter().map(|c| c.fold).collect::<Vec<_>>(),
        c.cases.iter().map(|c| c.fold).collect::<Vec<_>>()
    );
    assert!(accuracy(&c, "cascade").0 >= accuracy(&c, "rules").0 + 0.15);
}

#[test]
fn binary_prints_tables_and_json() {
    let bin = env!("CARGO_BIN_EXE_triage-loop");
    let out = Command::new(bin)
        .args(["eval", "--folds", "3", "--json"])
        .arg(corpus())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["folds"], 3);
    let names: Vec<&str> = v["systems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["majority", "rules", "model", "cascade"]);

    let out = Command::new(bin)
        .arg("eval")
        .arg(corpus())
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for want in [
        "majority",
        "cascade per class",
        "confusion",
        "reliability",
        "macro-F1",
    ] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }

    let out = Command::new(bin)
        .args(["eval", "--folds", "1"])
        .arg(corpus())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--folds must be at least 2"));
}

/// A small valid corpus: the first `n` traces of the shipped one, with their labels.
fn small_corpus(dir: &Path, n: usize) -> Vec<String> {
    let traces = std::fs::read_to_string(corpus().join("traces-support.jsonl")).unwrap();
    let lines: Vec<&str> = traces.lines().take(n).collect();
    std::fs::write(dir.join("traces.jsonl"), lines.join("\n")).unwrap();
    let ids: Vec<String> = lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let labels: Vec<String> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let class = ["logic_tool", "data_quality"][i % 2];
            format!(r#"{{"trace_id": "{id}", "class": "{class}"}}"#)
        })
        .collect();
    std::fs::write(dir.join("labels.jsonl"), labels.join("\n")).unwrap();
    ids
}

fn eval_err(dir: &Path, folds: usize) -> String {
    let opts = EvalOptions {
        folds,
        ..EvalOptions::default()
    };
    format!("{:#}", run(dir, &opts).unwrap_err())
}

#[test]
fn small_valid_corpus_runs() {
    let dir = tempfile::tempdir().unwrap();
    small_corpus(dir.path(), 12);
    let r = run(dir.path(), &EvalOptions::default()).unwrap();
    assert_eq!(r.failures, 12);
}

#[test]
fn bad_labels_are_refused_with_where_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let ids = small_corpus(dir.path(), 6);
    let labels = dir.path().join("labels.jsonl");
    let cases = [
        ("not json".to_string(), "labels.jsonl:1"),
        (
            format!(r#"{{"trace_id": "{}", "class": "nope"}}"#, ids[0]),
            "unknown class \"nope\"",
        ),
        (
            r#"{"trace_id": "abc", "class": "logic_tool"}"#.to_string(),
            "not 32 hex digits",
        ),
        (
            format!(r#"{{"trace_id": "{}"}}"#, ids[0]),
            "labels.jsonl:1",
        ),
        (
            format!(
                "{{\"trace_id\": \"{0}\", \"class\": \"logic_tool\"}}\n{{\"trace_id\": \"{0}\", \"class\": \"tone_brand\"}}",
                ids[0]
            ),
            "labelled twice",
        ),
        (
            r#"{"trace_id": "0123456789abcdef0123456789abcdef", "class": "logic_tool"}"#.to_string(),
            "not in any trace file",
        ),
        (String::new(), "no labels"),
    ];
    for (text, want) in cases {
        std::fs::write(&labels, &text).unwrap();
        let e = eval_err(dir.path(), 2);
        assert!(e.contains(want), "{text:?}: {e}");
    }
    std::fs::remove_file(&labels).unwrap();
    assert!(eval_err(dir.path(), 2).contains("cannot read"));
}

#[test]
fn bad_traces_are_refused_with_where_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let ids = small_corpus(dir.path(), 6);
    let extra = dir.path().join("more.json");
    for (text, want) in [
        ("{\"resourceSpans\": [", "more.json"),
        (r#"{"hello": 1}"#, "not an OTLP request"),
        (r#"{"resourceSpans": 7}"#, "not an OTLP trace request"),
    ] {
        std::fs::write(&extra, text).unwrap();
        let e = eval_err(dir.path(), 2);
        assert!(e.contains(want), "{text:?}: {e}");
    }
    // A labelled trace with no failure signal.
    let ok = format!(
        r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"traceId":"{}","spanId":"0102030405060708","name":"fine","kind":1,"startTimeUnixNano":"1","endTimeUnixNano":"2"}}]}}]}}]}}"#,
        "ab".repeat(16)
    );
    std::fs::write(&extra, ok).unwrap();
    let mut labels = std::fs::read_to_string(dir.path().join("labels.jsonl")).unwrap();
    labels.push_str(&format!(
        "\n{{\"trace_id\": \"{}\", \"class\": \"logic_tool\"}}\n",
        "ab".repeat(16)
    ));
    std::fs::write(dir.path().join("labels.jsonl"), labels).unwrap();
    assert!(eval_err(dir.path(), 2).contains("has no failure signal"));
    std::fs::remove_file(&extra).unwrap();
    // Too few failures for the folds; no trace files at all.
    let labels: Vec<String> = ids
        .iter()
        .map(|id| format!(r#"{{"trace_id": "{id}", "class": "logic_tool"}}"#))
        .collect();
    std::fs::write(dir.path().join("labels.jsonl"), labels.join("\n")).unwrap();
    assert!(eval_err(dir.path(), 7).contains("cannot be split into 7 folds"));
    std::fs::remove_file(dir.path().join("traces.jsonl")).unwrap();
    assert!(eval_err(dir.path(), 2).contains("no trace files"));
    let missing = dir.path().join("missing");
    assert!(eval_err(&missing, 2).contains("cannot read"));
}
