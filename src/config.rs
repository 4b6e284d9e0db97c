//! Configuration: the collector-config.yaml types, their defaults, loading and validation.
//!
//! The file has the OpenTelemetry Collector's shape (receivers / processors / exporters /
//! extensions / service.pipelines) so collector users read it at once. A bad file is refused with
//! the file name, the key path and what is wrong.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::classify::rules::{compile_rule, CompiledRule, RuleSpec};
use crate::classify::signals::SignalConfig;
use crate::classify::taxonomy::{ClassDef, Taxonomy, PRESETS};
use crate::classify::{builtin, Classifier};

/// The configuration used when `serve` is given no file: the repository's collector-config.yaml.
pub const EMBEDDED_DEFAULT: &str = include_str!("../collector-config.yaml");

/// A refused configuration: where, which key, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub receivers: Receivers,
    pub processors: Processors,
    pub exporters: Exporters,
    pub extensions: Extensions,
    pub service: Service,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Receivers {
    pub otlp: OtlpReceiver,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpReceiver {
    pub protocols: Protocols,
}

/// A protocol is enabled when its key is present (as in the Collector).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Protocols {
    pub grpc: Option<GrpcReceiver>,
    pub http: Option<HttpReceiver>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcReceiver {
    pub endpoint: String,
    /// Largest accepted message, MiB (after decompression).
    pub max_recv_msg_size_mib: usize,
}

impl Default for GrpcReceiver {
    fn default() -> Self {
        GrpcReceiver {
            endpoint: "127.0.0.1:4317".into(),
            max_recv_msg_size_mib: 16,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpReceiver {
    pub endpoint: String,
    /// Largest accepted request body, bytes (checked before and after decompression).
    pub max_request_body_size: usize,
}

impl Default for HttpReceiver {
    fn default() -> Self {
        HttpReceiver {
            endpoint: "127.0.0.1:4318".into(),
            max_request_body_size: 16 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Processors {
    pub failure_triage: FailureTriage,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FailureTriage {
    pub taxonomy: TaxonomyConfig,
    /// Class for signals no rule decides (source=rule, confidence 0); default per preset.
    pub fallback_class: Option<String>,
    /// Use the built-in rule pack of the taxonomy's preset after the rules below.
    pub builtin_rules: bool,
    /// Rules in OTTL condition syntax; the first that matches decides.
    pub rules: Vec<RuleSpec>,
    /// How evaluation results and feedback are judged.
    pub signals: SignalConfig,
}

impl Default for FailureTriage {
    fn default() -> Self {
        FailureTriage {
            taxonomy: TaxonomyConfig::default(),
            fallback_class: None,
            builtin_rules: true,
            rules: Vec::new(),
            signals: SignalConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaxonomyConfig {
    /// `default`, `mast`, or `custom`.
    pub preset: String,
    /// Version of the taxonomy; bump it when classes change.
    pub version: u32,
    /// Per class: description, remediation path and owner. With a preset these override the
    /// preset's values; with `custom` they define the classes.
    pub classes: BTreeMap<String, ClassConfig>,
}

impl Default for TaxonomyConfig {
    fn default() -> Self {
        TaxonomyConfig {
            preset: "default".into(),
            version: 1,
            classes: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClassConfig {
    pub description: Option<String>,
    pub remediation: Option<String>,
    pub owner: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Exporters {
    pub otlp: OtlpExporter,
}

/// Wire protocol of the downstream, as `OTEL_EXPORTER_OTLP_PROTOCOL` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExportProtocol {
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpExporter {
    /// `host:port` or a URL. For http/protobuf, `/v1/traces` etc. are appended.
    pub endpoint: String,
    pub protocol: ExportProtocol,
    pub compression: Compression,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Extra headers (gRPC metadata) sent with every export, e.g. an API key.
    pub headers: BTreeMap<String, String>,
    pub retry_on_failure: RetryConfig,
    pub sending_queue: QueueConfig,
}

impl Default for OtlpExporter {
    fn default() -> Self {
        OtlpExporter {
            endpoint: "127.0.0.1:14317".into(),
            protocol: ExportProtocol::Grpc,
            compression: Compression::None,
            timeout: Duration::from_secs(10),
            headers: BTreeMap::new(),
            retry_on_failure: RetryConfig::default(),
            sending_queue: QueueConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub initial_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub max_interval: Duration,
    /// Give up (and count the spans as dropped) after this long; 0 = retry forever.
    #[serde(with = "humantime_serde")]
    pub max_elapsed_time: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            enabled: true,
            initial_interval: Duration::from_secs(5),
            max_interval: Duration::from_secs(30),
            max_elapsed_time: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Concurrent export requests in flight.
    pub num_consumers: usize,
    /// Requests waiting to be exported, at most.
    pub queue_size: usize,
    /// Bytes waiting to be exported, at most, MiB.
    pub queue_size_mib: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            num_consumers: 10,
            queue_size: 1000,
            queue_size_mib: 256,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Extensions {
    pub triage_admin: AdminConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    pub endpoint: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            endpoint: "127.0.0.1:9464".into(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Service {
    pub extensions: Vec<String>,
    pub pipelines: BTreeMap<String, Pipeline>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Pipeline {
    pub receivers: Vec<String>,
    pub processors: Vec<String>,
    pub exporters: Vec<String>,
}

/// Which signals have a pipeline (and so are accepted by the receivers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signals {
    pub traces: bool,
    pub logs: bool,
    pub metrics: bool,
    /// Whether the traces pipeline runs `failure_triage`.
    pub triage: bool,
}

/// A loaded, checked configuration with its compiled classifier parts.
pub struct Loaded {
    pub config: Config,
    pub taxonomy: Taxonomy,
    pub rules: Vec<CompiledRule>,
    pub fallback: String,
    pub signals: Signals,
}

impl Loaded {
    /// The classifier for this configuration; moves the compiled rules out.
    pub fn take_classifier(&mut self) -> Classifier {
        Classifier::new(
            self.taxonomy.clone(),
            std::mem::take(&mut self.rules),
            self.config.processors.failure_triage.signals.clone(),
            self.fallback.clone(),
        )
    }
}

/// Reads and checks a config file.
pub fn load_file(path: &Path) -> Result<Loaded, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        path: String::new(),
        message: format!("cannot read: {e}"),
    })?;
    load_str(&text, &file)
}

/// Parses and checks config text; `file` names it in errors.
pub fn load_str(text: &str, file: &str) -> Result<Loaded, ConfigError> {
    let err = |path: String, message: String| ConfigError {
        file: file.to_string(),
        path,
        message,
    };
    let de = serde_yaml::Deserializer::from_str(text);
    let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        err(path, e.into_inner().to_string())
    })?;
    validate(config).map_err(|(path, message)| err(path, message))
}

type Invalid = (String, String);

fn validate(config: Config) -> Result<Loaded, Invalid> {
    check_endpoints(&config)?;
    let signals = check_pipelines(&config)?;
    let ft = &config.processors.failure_triage;
    let taxonomy = build_taxonomy(&ft.taxonomy)?;
    let fallback = match &ft.fallback_class {
        Some(c) => {
            if taxonomy.class(c).is_none() {
                return Err((
                    "processors.failure_triage.fallback_class".into(),
                    format!(
                        "unknown class {c:?}; expected one of {}",
                        taxonomy.class_names().join(", ")
                    ),
                ));
            }
            c.clone()
        }
        None => taxonomy.default_fallback().unwrap_or_default().to_string(),
    };
    let mut rules = Vec::new();
    for (i, spec) in ft.rules.iter().enumerate() {
        rules.push(check_rule(
            spec,
            &taxonomy,
            &format!("processors.failure_triage.rules[{i}]"),
        )?);
    }
    if ft.builtin_rules && PRESETS.contains(&taxonomy.name.as_str()) {
        for spec in builtin::pack(&taxonomy.name) {
            rules.push(check_rule(
                &spec,
                &taxonomy,
                "processors.failure_triage.builtin_rules",
            )?);
        }
    }
    check_signals(&ft.signals)?;
    Ok(Loaded {
        config,
        taxonomy,
        rules,
        fallback,
        signals,
    })
}

fn check_rule(spec: &RuleSpec, taxonomy: &Taxonomy, path: &str) -> Result<CompiledRule, Invalid> {
    if spec.name.trim().is_empty() {
        return Err((format!("{path}.name"), "a rule needs a name".into()));
    }
    if taxonomy.class(&spec.class).is_none() {
        return Err((
            format!("{path}.class"),
            format!(
                "rule {:?}: unknown class {:?}; expected one of {}",
                spec.name,
                spec.class,
                taxonomy.class_names().join(", ")
            ),
        ));
    }
    if !(0.0..=1.0).contains(&spec.confidence) {
        return Err((
            format!("{path}.confidence"),
            format!(
                "rule {:?}: confidence must be between 0 and 1, got {}",
                spec.name, spec.confidence
            ),
        ));
    }
    compile_rule(spec).map_err(|e| (format!("{path}.condition"), e.to_string()))
}

fn build_taxonomy(tc: &TaxonomyConfig) -> Result<Taxonomy, Invalid> {
    let base = "processors.failure_triage.taxonomy";
    let mut taxonomy = match tc.preset.as_str() {
        "custom" => Taxonomy {
            name: "custom".into(),
            version: tc.version,
            classes: Vec::new(),
        },
        p => Taxonomy::preset(p).ok_or_else(|| {
            (
                format!("{base}.preset"),
                format!("unknown preset {p:?}; expected default, mast or custom"),
            )
        })?,
    };
    taxonomy.version = tc.version;
    let custom = tc.preset == "custom";
    for (name, cc) in &tc.classes {
        let path = format!("{base}.classes.{name}");
        if !is_identifier(name) {
            return Err((path, "class names are lower_snake_case identifiers".into()));
        }
        match taxonomy.classes.iter_mut().find(|c| &c.name == name) {
            Some(existing) => {
                if let Some(d) = &cc.description {
                    existing.description = d.clone();
                }
                if let Some(r) = &cc.remediation {
                    existing.remediation = r.clone();
                }
                if let Some(o) = &cc.owner {
                    existing.owner = o.clone();
                }
            }
            None if custom => taxonomy.classes.push(ClassDef {
                name: name.clone(),
                description: cc.description.clone().unwrap_or_default(),
                remediation: cc.remediation.clone().unwrap_or_default(),
                owner: cc.owner.clone().unwrap_or_default(),
            }),
            None => {
                return Err((
                    path,
                    format!(
                        "class {name:?} is not in preset {:?} ({}); use preset: custom to define your own classes",
                        tc.preset,
                        taxonomy.class_names().join(", ")
                    ),
                ))
            }
        }
    }
    if taxonomy.classes.is_empty() {
        return Err((
            format!("{base}.classes"),
            "a custom taxonomy needs at least one class".into(),
        ));
    }
    for c in &taxonomy.classes {
        for (field, value) in [("remediation", &c.remediation), ("owner", &c.owner)] {
            if value.trim().is_empty() {
                return Err((
                    format!("{base}.classes.{}.{field}", c.name),
                    format!("missing: every class must name its {field}"),
                ));
            }
        }
    }
    Ok(taxonomy)
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn check_signals(s: &SignalConfig) -> Result<(), Invalid> {
    for (name, t) in std::iter::once(("default_threshold".to_string(), &s.default_threshold)).chain(
        s.thresholds
            .iter()
            .map(|(k, v)| (format!("thresholds.{k}"), v)),
    ) {
        if let (Some(min), Some(max)) = (t.min, t.max) {
            if min > max {
                return Err((
                    format!("processors.failure_triage.signals.{name}"),
                    format!("min {min} is above max {max}"),
                ));
            }
        }
    }
    Ok(())
}

fn check_endpoints(c: &Config) -> Result<(), Invalid> {
    let mut checks = vec![(
        "extensions.triage_admin.endpoint",
        c.extensions.triage_admin.endpoint.as_str(),
    )];
    if let Some(g) = &c.receivers.otlp.protocols.grpc {
        checks.push(("receivers.otlp.protocols.grpc.endpoint", &g.endpoint));
        if g.max_recv_msg_size_mib == 0 {
            return Err((
                "receivers.otlp.protocols.grpc.max_recv_msg_size_mib".into(),
                "must be at least 1".into(),
            ));
        }
    }
    if let Some(h) = &c.receivers.otlp.protocols.http {
        checks.push(("receivers.otlp.protocols.http.endpoint", &h.endpoint));
        if h.max_request_body_size < 1024 {
            return Err((
                "receivers.otlp.protocols.http.max_request_body_size".into(),
                "must be at least 1024 bytes".into(),
            ));
        }
    }
    for (path, ep) in checks {
        if split_host_port(ep).is_none() {
            return Err((path.into(), format!("{ep:?} is not host:port")));
        }
    }
    let e = &c.exporters.otlp;
    if e.endpoint.trim().is_empty() {
        return Err(("exporters.otlp.endpoint".into(), "missing".into()));
    }
    let q = &e.sending_queue;
    for (key, v) in [
        ("num_consumers", q.num_consumers),
        ("queue_size", q.queue_size),
        ("queue_size_mib", q.queue_size_mib),
    ] {
        if v == 0 {
            return Err((
                format!("exporters.otlp.sending_queue.{key}"),
                "must be at least 1".into(),
            ));
        }
    }
    Ok(())
}

/// Splits `host:port` (IPv6 in brackets) into its parts.
pub fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then_some((host, port))
}

fn check_pipelines(c: &Config) -> Result<Signals, Invalid> {
    let mut s = Signals {
        traces: false,
        logs: false,
        metrics: false,
        triage: false,
    };
    if c.service.pipelines.is_empty() {
        return Err((
            "service.pipelines".into(),
            "no pipeline: define at least traces".into(),
        ));
    }
    for (name, p) in &c.service.pipelines {
        let path = format!("service.pipelines.{name}");
        let signal = name.split('/').next().unwrap_or_default();
        match signal {
            "traces" => s.traces = true,
            "logs" => s.logs = true,
            "metrics" => s.metrics = true,
            other => {
                return Err((
                    path,
                    format!("unknown signal {other:?}; expected traces, logs or metrics"),
                ))
            }
        }
        for r in &p.receivers {
            if r != "otlp" {
                return Err((
                    format!("{path}.receivers"),
                    format!("unknown receiver {r:?}; expected otlp"),
                ));
            }
        }
        if p.receivers.is_empty() {
            return Err((
                format!("{path}.receivers"),
                "a pipeline needs a receiver".into(),
            ));
        }
        for x in &p.exporters {
            if x != "otlp" {
                return Err((
                    format!("{path}.exporters"),
                    format!("unknown exporter {x:?}; expected otlp"),
                ));
            }
        }
        if p.exporters.is_empty() {
            return Err((
                format!("{path}.exporters"),
                "a pipeline needs an exporter".into(),
            ));
        }
        for x in &p.processors {
            if x != "failure_triage" {
                return Err((
                    format!("{path}.processors"),
                    format!("unknown processor {x:?}; expected failure_triage"),
                ));
            }
            if signal != "traces" {
                return Err((
                    format!("{path}.processors"),
                    "failure_triage runs in a traces pipeline".into(),
                ));
            }
            s.triage = true;
        }
    }
    for x in &c.service.extensions {
        if x != "triage_admin" {
            return Err((
                "service.extensions".into(),
                format!("unknown extension {x:?}; expected triage_admin"),
            ));
        }
    }
    Ok(s)
}

/// The embedded default configuration, loaded.
pub fn load_default() -> Loaded {
    load_str(EMBEDDED_DEFAULT, "<embedded collector-config.yaml>")
        .expect("the embedded collector-config.yaml is valid (tested)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_loads_with_builtin_rules() {
        let l = load_default();
        assert_eq!(l.taxonomy.name, "default");
        assert_eq!(l.fallback, "logic_tool");
        assert!(l.rules.len() > builtin::pack("default").len());
        assert!(l.signals.traces && l.signals.logs && l.signals.metrics && l.signals.triage);
    }

    #[test]
    fn errors_name_the_key_path() {
        let e = load_str("exporters:\n  otlp:\n    timeout: soon\n", "c.yaml")
            .err()
            .unwrap();
        assert_eq!(e.path, "exporters.otlp.timeout");
        assert!(
            e.to_string()
                .starts_with("c.yaml: exporters.otlp.timeout: "),
            "{e}"
        );
        let e = load_str("service:\n  pipelines: {}\n", "c.yaml")
            .err()
            .unwrap();
        assert_eq!(e.path, "service.pipelines");
    }

    #[test]
    fn mast_preset_and_custom_classes() {
        let yaml = "processors:\n  failure_triage:\n    taxonomy: {preset: mast}\nservice:\n  pipelines:\n    traces: {receivers: [otlp], processors: [failure_triage], exporters: [otlp]}\n";
        let l = load_str(yaml, "c.yaml").unwrap();
        assert_eq!(
            l.taxonomy.class_names(),
            [
                "specification",
                "inter_agent_misalignment",
                "task_verification"
            ]
        );
        let custom = yaml.replace(
            "{preset: mast}",
            "{preset: custom, classes: {billing_bug: {remediation: tool_fix, owner: billing}}}",
        );
        let l = load_str(&custom, "c.yaml").unwrap();
        assert_eq!(l.fallback, "billing_bug");
        assert!(l.rules.is_empty(), "no built-in pack for a custom taxonomy");
    }
}
