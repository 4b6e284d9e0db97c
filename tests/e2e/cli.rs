//! The command line: validate refuses bad configs with file, key path and reason; replay sends
//! OTLP/JSON files to a receiver.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

fn triage_loop() -> Command {
    Command::new(env!("CARGO_BIN_EXE_triage-loop"))
}

fn validate(yaml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("collector-config.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = triage_loop().arg("validate").arg(&path).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn validate_accepts_the_shipped_config() {
    let (ok, text) = validate(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/collector-config.yaml"
        ))
        .unwrap(),
    );
    assert!(ok, "{text}");
    assert!(text.contains("ok"), "{text}");
}

#[test]
fn validate_refuses_a_bad_rule_with_its_name_and_column() {
    let yaml = config_yaml("127.0.0.1:1", "    rules:\n      - name: broken-rule\n        class: logic_tool\n        condition: 'span.status.code == and true'\n", "");
    let (ok, text) = validate(&yaml);
    assert!(!ok);
    assert!(text.contains("collector-config.yaml"), "{text}");
    assert!(
        text.contains("processors.failure_triage.rules[0].condition"),
        "{text}"
    );
    assert!(text.contains("broken-rule"), "{text}");
    assert!(text.contains("column 21"), "{text}");
}

#[test]
fn validate_refuses_unknown_keys_classes_and_classes_without_owner() {
    let (ok, text) = validate(&config_yaml(
        "127.0.0.1:1",
        "    fallback_clas: logic_tool\n",
        "",
    ));
    assert!(!ok);
    assert!(
        text.contains("processors.failure_triage") && text.contains("fallback_clas"),
        "{text}"
    );

    let (ok, text) = validate(&config_yaml(
        "127.0.0.1:1",
        "    rules:\n      - {name: r, class: nonsense, condition: 'span.name == \"x\"'}\n",
        "",
    ));
    assert!(!ok);
    assert!(
        text.contains("rules[0].class") && text.contains("nonsense"),
        "{text}"
    );

    let custom = config_yaml("127.0.0.1:1", "", "").replace(
        "      preset: default\n",
        "      preset: custom\n      classes:\n        billing_bug: {remediation: tool_fix}\n",
    );
    let (ok, text) = validate(&custom);
    assert!(!ok);
    assert!(
        text.contains("taxonomy.classes.billing_bug.owner"),
        "{text}"
    );
    assert!(text.contains("owner"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_sends_otlp_json_lines_to_the_receiver() {
    let (triage, capture) = start_pair(TEST_RULES).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("traces.jsonl");
    let line = crate::http_json::SPEC_JSON.replace('\n', "");
    std::fs::write(&file, format!("{line}\n{line}\n")).unwrap();
    let endpoint = format!("http://{}", triage.http_addr.unwrap());
    let out = tokio::task::spawn_blocking(move || {
        triage_loop()
            .args(["replay", file.to_str().unwrap(), "--endpoint", &endpoint])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("replayed 2 request(s)"));
    assert!(eventually(Duration::from_secs(5), || capture.span_count() == 4).await);
    triage.shutdown().await;
}
