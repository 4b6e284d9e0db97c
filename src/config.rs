//! Configuration: the collector-config.yaml types, their defaults, loading and validation.
//!
//! The file has the OpenTelemetry Collector's shape (receivers / processors / exporters /
//! extensions / service.pipelines) so collector users read it at once. A bad file is refused with
//! the file name, the key path and what is wrong.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::classify::llm::JudgeConfig;
use crate::classify::model::{ModelConfig, SharedModel};
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
    /// Serve gRPC over TLS with this certificate and key.
    pub tls: Option<TlsConfig>,
}

impl Default for GrpcReceiver {
    fn default() -> Self {
        GrpcReceiver {
            endpoint: "127.0.0.1:4317".into(),
            max_recv_msg_size_mib: 16,
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpReceiver {
    pub endpoint: String,
    /// Largest accepted request body, bytes (checked before and after decompression).
    pub max_request_body_size: usize,
    /// Serve HTTPS with this certificate and key.
    pub tls: Option<TlsConfig>,
}

impl Default for HttpReceiver {
    fn default() -> Self {
        HttpReceiver {
            endpoint: "127.0.0.1:4318".into(),
            max_request_body_size: 16 * 1024 * 1024,
            tls: None,
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
    /// How long a trace is held after its last span before its failure is decided.
    #[serde(with = "humantime_serde")]
    pub trace_window: Duration,
    /// Once the root span (no parent) has arrived, the trace is decided this much later.
    #[serde(with = "humantime_serde")]
    pub root_grace: Duration,
    /// Most traces held by the assembler; at the cap the oldest is decided early (counted).
    pub max_traces: usize,
    /// Most spans recorded per held trace; more are counted and not recorded.
    pub max_spans_per_trace: usize,
    /// Most span nodes the failure side holds: over all traces in the assembler (past it the
    /// oldest traces are decided early, reason "evicted"), and, separately, in flight in the
    /// channel from the hot path (past it batches are dropped, counted as "queue_full"). A
    /// skeleton node is ~150 bytes, a signal node up to ~2 KiB.
    pub max_nodes: usize,
    /// Cap of the channel from the hot path to the failure side, in batches; when full,
    /// batches are dropped and counted, the hot path never waits.
    pub queue_size: usize,
    /// Where issues, occurrences, transitions and the dispatch outbox live:
    /// `sqlite://PATH` (created on first start) or `postgres://USER@HOST:PORT/DB`.
    pub storage: String,
    /// A shipped fix is verified after this long on the shipped version with no recurrence.
    #[serde(with = "humantime_serde")]
    pub verify_window: Duration,
    /// Failures observed longer ago than this are deleted from the store, except what is still
    /// needed: failures waiting for a person, failures a label or judgement points at, and each
    /// issue's newest failure with its detail. Issues keep their counts. `0s` keeps everything.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Link to a trace in Jaeger/Grafana for dispatched work, e.g.
    /// `http://jaeger:16686/trace/{trace_id}`.
    pub trace_url_template: Option<String>,
    /// Title and body of dispatched work ({class}, {issue_id}, {trace_url}, … see README).
    pub templates: TemplatesConfig,
    /// Named sinks (`type` or `type/name`: otlp_log, jsonl, webhook, github, slack). A class's
    /// `sinks` list picks from these; with none configured, every class dispatches to
    /// `jsonl` (triage-data/remediations.jsonl) and `otlp_log`.
    pub sinks: BTreeMap<String, SinkConfig>,
    /// Delivery of the dispatch outbox.
    pub dispatch: DispatchConfig,
    /// Targets of the scaling gate (`GET /api/v1/gate`, `triage-loop gate`).
    pub gate: GateConfig,
    /// Failures decided with less confidence than this wait for a person (and the LLM judge).
    pub min_confidence: f64,
    /// Share (0..=1) of automatically classified failures also sampled for a person to audit.
    pub audit_rate: f64,
    /// The learned classifier.
    pub model: ModelConfig,
    /// The optional LLM judge.
    pub llm_judge: JudgeConfig,
}

impl Default for FailureTriage {
    fn default() -> Self {
        FailureTriage {
            taxonomy: TaxonomyConfig::default(),
            fallback_class: None,
            builtin_rules: true,
            rules: Vec::new(),
            signals: SignalConfig::default(),
            trace_window: Duration::from_secs(10),
            root_grace: Duration::from_secs(2),
            max_traces: 20_000,
            max_spans_per_trace: 1_000,
            max_nodes: 200_000,
            queue_size: 4_096,
            storage: "sqlite://triage-data/triage.db".into(),
            verify_window: Duration::from_secs(24 * 3600),
            retention: DEFAULT_RETENTION,
            trace_url_template: None,
            templates: TemplatesConfig::default(),
            sinks: BTreeMap::new(),
            dispatch: DispatchConfig::default(),
            gate: GateConfig::default(),
            min_confidence: 0.6,
            audit_rate: 0.02,
            model: ModelConfig::default(),
            llm_judge: JudgeConfig::default(),
        }
    }
}

/// Title and body templates of dispatched remediation work.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TemplatesConfig {
    pub title: String,
    pub body: String,
}

impl Default for TemplatesConfig {
    fn default() -> Self {
        TemplatesConfig {
            title: "[triage-loop] {class}: {operation} failing in {agent} ({remediation})".into(),
            body: "Issue {issue_id} (cycle {cycle}) of class **{class}** goes down the \
                   **{remediation}** path to **{owner}**.\n\n\
                   - agent: {agent}\n- service: {service} {service_version}\n\
                   - occurrences: {occurrences}, first seen {first_seen}\n\
                   - fingerprint: `{fingerprint}`\n- signal: {signal}\n\
                   - trace: {trace_url}\n"
                .into(),
        }
    }
}

/// One sink's settings. Which fields apply depends on the sink type (the name before `/`):
/// `webhook` (endpoint, secret_env, headers), `github` (base_url, repo, token_env, labels),
/// `slack` (endpoint or endpoint_env), `jsonl` (path), `otlp_log` (none).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SinkConfig {
    /// URL to POST to (webhook, slack incoming webhook).
    pub endpoint: Option<String>,
    /// Environment variable holding the URL instead (Slack webhook URLs are secrets).
    pub endpoint_env: Option<String>,
    /// Environment variable holding the webhook's HMAC-SHA256 secret.
    pub secret_env: Option<String>,
    /// Extra HTTP headers (webhook).
    pub headers: BTreeMap<String, String>,
    /// GitHub REST API base URL; GitHub Enterprise: `https://HOST/api/v3`.
    pub base_url: String,
    /// GitHub `owner/repo` to open issues in.
    pub repo: Option<String>,
    /// Environment variable holding the GitHub token.
    pub token_env: String,
    /// Labels put on GitHub issues (the class and remediation path are added).
    pub labels: Vec<String>,
    /// File the jsonl sink appends to.
    pub path: Option<String>,
    /// Per-request timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            endpoint: None,
            endpoint_env: None,
            secret_env: None,
            headers: BTreeMap::new(),
            base_url: "https://api.github.com".into(),
            repo: None,
            token_env: "GITHUB_TOKEN".into(),
            labels: Vec::new(),
            path: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// How the outbox is delivered: at least once, retried with exponential backoff.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatchConfig {
    #[serde(with = "humantime_serde")]
    pub initial_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub max_interval: Duration,
    /// Attempts before a dispatch is given up (kept, counted as `gave_up`).
    pub max_attempts: u32,
    /// How long a claimed dispatch is leased to one deliverer before another may retry it.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How often the outbox is polled for due dispatches.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Dispatches delivered at once.
    pub concurrency: usize,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            initial_interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(300),
            max_attempts: 20,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(250),
            concurrency: 8,
        }
    }
}

/// Targets of the scaling gate: is the loop fast enough to take on more use cases?
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GateConfig {
    /// Most p90 time from first observation to shipped, per class (issues shipped so far).
    #[serde(with = "humantime_serde")]
    pub max_p90_observed_to_shipped: Duration,
    /// Most age of an issue not yet shipped (open, dispatched or regressed).
    #[serde(with = "humantime_serde::option", default)]
    pub max_open_age: Option<Duration>,
    /// Most regressed issues whose new cycle is not verified yet.
    pub max_unverified_regressions: u64,
    /// Per-class overrides of `max_p90_observed_to_shipped`.
    pub per_class: BTreeMap<String, GateClassConfig>,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            max_p90_observed_to_shipped: Duration::from_secs(7 * 24 * 3600),
            max_open_age: Some(Duration::from_secs(14 * 24 * 3600)),
            max_unverified_regressions: 0,
            per_class: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GateClassConfig {
    #[serde(with = "humantime_serde::option", default)]
    pub max_p90_observed_to_shipped: Option<Duration>,
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
    /// Sinks (names under `processors.failure_triage.sinks`) this class's work is dispatched to.
    pub sinks: Option<Vec<String>>,
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
    /// `file_storage`: keep the queue on disk (extensions.file_storage) so accepted data
    /// survives a restart; absent: in memory.
    pub storage: Option<String>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            num_consumers: 10,
            queue_size: 1000,
            queue_size_mib: 256,
            storage: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Extensions {
    pub triage_admin: AdminConfig,
    /// Where `sending_queue.storage: file_storage` keeps the persistent export queue.
    pub file_storage: Option<FileStorageConfig>,
}

/// The Collector's `file_storage` extension, as far as the persistent export queue needs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileStorageConfig {
    /// Created if missing; one instance per directory (it is locked while in use).
    pub directory: std::path::PathBuf,
    /// `fsync` every queued request: survives a power loss, not only a process crash, at the
    /// cost of one disk flush per request.
    pub fsync: bool,
}

impl Default for FileStorageConfig {
    fn default() -> Self {
        FileStorageConfig {
            directory: "./triage-data/file_storage".into(),
            fsync: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    pub endpoint: String,
    /// Bearer-token auth on `/api/v1` (and, if asked, `/metrics`); off when absent.
    pub auth: Option<AdminAuthConfig>,
    /// Serve the admin listener over HTTPS with this certificate and key.
    pub tls: Option<TlsConfig>,
}

/// A listener's TLS, as in the Collector's `tls` block: PEM files of the certificate chain
/// (leaf first) and of its private key; with `client_ca_file`, clients must present a
/// certificate signed by one of its CAs (mTLS); with `reload_interval`, the certificate and key
/// are read again that often, so a renewed certificate is served without a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<std::path::PathBuf>,
    /// Off when absent or zero.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub reload_interval: Option<Duration>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            endpoint: "127.0.0.1:9464".into(),
            auth: None,
            tls: None,
        }
    }
}

/// Where the admin bearer token comes from: exactly one of an environment variable or a file.
/// Only the names are configuration; the token itself never is (and is never logged).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminAuthConfig {
    /// The environment variable holding the token.
    pub bearer_token_env: Option<String>,
    /// A file holding the token (surrounding whitespace, such as a final newline, is dropped).
    pub bearer_token_file: Option<std::path::PathBuf>,
    /// Also require the token on `/metrics` (off: Prometheus scrapes it like any exporter).
    pub protect_metrics: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Service {
    pub extensions: Vec<String>,
    pub pipelines: BTreeMap<String, Pipeline>,
    pub telemetry: Telemetry,
}

/// triage-loop's own telemetry, as the Collector's `service.telemetry`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Telemetry {
    pub metrics: TelemetryMetrics,
}

/// How triage-loop's own metrics leave the process: scraped at the admin `/metrics`, and
/// pushed by OTLP to `exporters.otlp` every `push_interval` (0s turns the push off).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryMetrics {
    #[serde(with = "humantime_serde")]
    pub push_interval: Duration,
}

impl Default for TelemetryMetrics {
    fn default() -> Self {
        TelemetryMetrics {
            push_interval: Duration::from_secs(30),
        }
    }
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
    /// The admin bearer token, read from its env var or file at load time.
    pub admin_token: Option<BearerToken>,
    /// The listeners' TLS configs, loaded from their files.
    pub tls: ListenerTls,
}

/// Per listener: its rustls server config when its `tls` is set.
#[derive(Clone, Default)]
pub struct ListenerTls {
    pub grpc: Option<Arc<rustls::ServerConfig>>,
    pub http: Option<Arc<rustls::ServerConfig>>,
    pub admin: Option<Arc<rustls::ServerConfig>>,
}

impl Loaded {
    /// The classifier for this configuration; moves the compiled rules out. Its model starts
    /// from `model.seed_file` (checked, with the taxonomy, when the file was loaded).
    pub fn take_classifier(&mut self) -> Classifier {
        let ft = &self.config.processors.failure_triage;
        let model = SharedModel::new(&ft.model, &self.taxonomy.class_names());
        if let Some(seed) = &ft.model.seed_file {
            // Validation read the whole file already; it can only fail here if it changed since.
            if let Err(e) = model.load_seed(seed) {
                tracing::error!(error = %e, "model seed file no longer loads; the model starts empty");
                model.clear();
            }
        }
        Classifier::new(
            self.taxonomy.clone(),
            std::mem::take(&mut self.rules),
            ft.signals.clone(),
            self.fallback.clone(),
        )
        .with_model(model)
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
    let admin_token = config
        .extensions
        .triage_admin
        .auth
        .as_ref()
        .map(read_admin_token)
        .transpose()?;
    let tls = load_listener_tls(&config)?;
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
    check_failure_side(ft, &taxonomy)?;
    Ok(Loaded {
        config,
        taxonomy,
        rules,
        fallback,
        signals,
        admin_token,
        tls,
    })
}

/// Loads each listener's certificate and key, refusing unreadable or mismatched files.
fn load_listener_tls(c: &Config) -> Result<ListenerTls, Invalid> {
    let load = |tls: Option<&TlsConfig>, base: &str, alpn| {
        tls.map(|t| {
            crate::tls::server_config(t, alpn)
                .map_err(|e| (format!("{base}.tls.{}", e.key), e.message))
        })
        .transpose()
    };
    let p = &c.receivers.otlp.protocols;
    Ok(ListenerTls {
        grpc: load(
            p.grpc.as_ref().and_then(|g| g.tls.as_ref()),
            "receivers.otlp.protocols.grpc",
            crate::tls::ALPN_GRPC,
        )?,
        http: load(
            p.http.as_ref().and_then(|h| h.tls.as_ref()),
            "receivers.otlp.protocols.http",
            crate::tls::ALPN_HTTP,
        )?,
        admin: load(
            c.extensions.triage_admin.tls.as_ref(),
            "extensions.triage_admin",
            crate::tls::ALPN_HTTP,
        )?,
    })
}

/// Reads the admin bearer token from the one place `auth` names.
fn read_admin_token(auth: &AdminAuthConfig) -> Result<BearerToken, Invalid> {
    let base = "extensions.triage_admin.auth";
    let (path, raw) = match (&auth.bearer_token_env, &auth.bearer_token_file) {
        (Some(_), Some(_)) => {
            return Err((
                base.into(),
                "set bearer_token_env or bearer_token_file, not both".into(),
            ))
        }
        (None, None) => {
            return Err((
                base.into(),
                "needs bearer_token_env or bearer_token_file".into(),
            ))
        }
        (Some(var), None) => {
            let path = format!("{base}.bearer_token_env");
            let value = std::env::var(var).map_err(|e| {
                let why = match e {
                    std::env::VarError::NotPresent => "is not set",
                    std::env::VarError::NotUnicode(_) => "is not valid UTF-8",
                };
                (path.clone(), format!("environment variable {var:?} {why}"))
            })?;
            (path, value)
        }
        (None, Some(file)) => {
            let path = format!("{base}.bearer_token_file");
            let value = std::fs::read_to_string(file)
                .map_err(|e| (path.clone(), format!("cannot read {}: {e}", file.display())))?;
            (path, value)
        }
    };
    BearerToken::new(raw.trim()).map_err(|why| (path, why.into()))
}

/// A bearer token. Its `Debug` shows no secret, and it is neither `Display` nor `Serialize`.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(String);

impl BearerToken {
    /// A token as sent after `Bearer `: non-empty visible ASCII (RFC 6750's token68 and more).
    pub fn new(token: &str) -> Result<Self, &'static str> {
        if token.is_empty() {
            return Err("the token is empty");
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the token must be visible ASCII without spaces");
        }
        Ok(BearerToken(token.to_string()))
    }

    /// The secret, for comparing or sending it; never for logs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// Sink types, as the part of a sink name before `/`.
pub const SINK_TYPES: [&str; 5] = ["otlp_log", "jsonl", "webhook", "github", "slack"];

/// The sinks used when a class names none.
pub const DEFAULT_SINKS: [&str; 2] = ["jsonl", "otlp_log"];

/// The type of a sink name (`webhook/oncall` → `webhook`).
pub fn sink_type(name: &str) -> &str {
    name.split_once('/').map_or(name, |(t, _)| t)
}

/// How long failures are kept by default (Prometheus keeps its samples 15 days; a fix's loop
/// runs for weeks).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// The shortest `retention` other than `0s` (off): the sweep deletes in batches every minute.
pub const MIN_RETENTION: Duration = Duration::from_secs(3600);

fn check_failure_side(ft: &FailureTriage, taxonomy: &Taxonomy) -> Result<(), Invalid> {
    let base = "processors.failure_triage";
    if !ft.retention.is_zero() && ft.retention < MIN_RETENTION {
        return Err((
            format!("{base}.retention"),
            format!(
                "must be 0s (keep every failure) or at least 1h, got {}",
                humantime::format_duration(ft.retention)
            ),
        ));
    }
    for (key, d) in [
        ("trace_window", ft.trace_window),
        ("verify_window", ft.verify_window),
        ("dispatch.lease", ft.dispatch.lease),
        ("dispatch.poll_interval", ft.dispatch.poll_interval),
        ("dispatch.initial_interval", ft.dispatch.initial_interval),
    ] {
        if d.is_zero() {
            return Err((format!("{base}.{key}"), "must be more than 0s".into()));
        }
    }
    for (key, n) in [
        ("max_traces", ft.max_traces),
        ("max_spans_per_trace", ft.max_spans_per_trace),
        ("max_nodes", ft.max_nodes),
        ("queue_size", ft.queue_size),
        ("dispatch.max_attempts", ft.dispatch.max_attempts as usize),
        ("dispatch.concurrency", ft.dispatch.concurrency),
    ] {
        if n == 0 {
            return Err((format!("{base}.{key}"), "must be at least 1".into()));
        }
    }
    for (key, v) in [
        ("min_confidence", ft.min_confidence),
        ("audit_rate", ft.audit_rate),
    ] {
        if !(0.0..=1.0).contains(&v) {
            return Err((
                format!("{base}.{key}"),
                format!("must be in 0..=1, got {v}"),
            ));
        }
    }
    ft.model
        .validate(&taxonomy.class_names())
        .map_err(|(key, message)| (format!("{base}.model.{key}"), message))?;
    let storage = ft.storage.as_str();
    let ok_storage = storage
        .strip_prefix("sqlite://")
        .is_some_and(|p| !p.is_empty())
        || storage.starts_with("postgres://")
        || storage.starts_with("postgresql://");
    if !ok_storage {
        return Err((
            format!("{base}.storage"),
            format!("{storage:?}: expected sqlite://PATH or postgres://USER@HOST:PORT/DB"),
        ));
    }
    if !storage.starts_with("sqlite://") {
        use crate::remediation::store::postgres::tls::PgTls;
        // The options, then the files they name (roots, client certificate), as at start.
        PgTls::from_url(storage, PgTls::libpq_dir().as_deref())
            .and_then(|t| t.connector())
            .map_err(|m| (format!("{base}.storage"), m))?;
    }
    for (name, sink) in &ft.sinks {
        check_sink(name, sink).map_err(|m| (format!("{base}.sinks.{name}"), m))?;
    }
    for class in &taxonomy.classes {
        for (i, sink) in class.sinks.iter().enumerate() {
            if !ft.sinks.contains_key(sink) && !DEFAULT_SINKS.contains(&sink.as_str()) {
                return Err((
                    format!("{base}.taxonomy.classes.{}.sinks[{i}]", class.name),
                    format!(
                        "unknown sink {sink:?}; define it under {base}.sinks (configured: {})",
                        ft.sinks.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
    }
    if ft.llm_judge.enabled {
        ft.llm_judge
            .validate()
            .map_err(|m| (format!("{base}.llm_judge"), m))?;
    }
    for class in ft.gate.per_class.keys() {
        if taxonomy.class(class).is_none() {
            return Err((
                format!("{base}.gate.per_class.{class}"),
                format!(
                    "unknown class; expected one of {}",
                    taxonomy.class_names().join(", ")
                ),
            ));
        }
    }
    Ok(())
}

fn check_sink(name: &str, s: &SinkConfig) -> Result<(), String> {
    let kind = sink_type(name);
    let url_ok = |u: &str| u.starts_with("http://") || u.starts_with("https://");
    match kind {
        "webhook" | "slack" => match (&s.endpoint, &s.endpoint_env) {
            (Some(u), _) if !url_ok(u) => Err(format!("endpoint {u:?} is not an http(s) URL")),
            (None, None) => Err(format!("a {kind} sink needs endpoint or endpoint_env")),
            _ => Ok(()),
        },
        "github" => match &s.repo {
            Some(r) if r.split('/').count() == 2 && !r.starts_with('/') && !r.ends_with('/') => {
                if url_ok(&s.base_url) {
                    Ok(())
                } else {
                    Err(format!("base_url {:?} is not an http(s) URL", s.base_url))
                }
            }
            Some(r) => Err(format!("repo {r:?} must be owner/name")),
            None => Err("a github sink needs repo: owner/name".into()),
        },
        "jsonl" | "otlp_log" => Ok(()),
        other => Err(format!(
            "unknown sink type {other:?}; expected one of {}",
            SINK_TYPES.join(", ")
        )),
    }
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
                if let Some(sinks) = &cc.sinks {
                    existing.sinks = sinks.clone();
                }
            }
            None if custom => taxonomy.classes.push(ClassDef {
                name: name.clone(),
                description: cc.description.clone().unwrap_or_default(),
                remediation: cc.remediation.clone().unwrap_or_default(),
                owner: cc.owner.clone().unwrap_or_default(),
                sinks: cc.sinks.clone().unwrap_or_default(),
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
        match x.as_str() {
            "triage_admin" => {}
            "file_storage" if c.extensions.file_storage.is_some() => {}
            "file_storage" => {
                return Err((
                    "service.extensions".into(),
                    "file_storage is listed but extensions.file_storage is not configured".into(),
                ))
            }
            _ => {
                return Err((
                    "service.extensions".into(),
                    format!("unknown extension {x:?}; expected triage_admin or file_storage"),
                ))
            }
        }
    }
    check_queue_storage(c)?;
    Ok(s)
}

/// `sending_queue.storage` names an extension that is configured and enabled, as the
/// Collector requires.
fn check_queue_storage(c: &Config) -> Result<(), Invalid> {
    let path = "exporters.otlp.sending_queue.storage";
    let Some(storage) = &c.exporters.otlp.sending_queue.storage else {
        return Ok(());
    };
    if storage != "file_storage" {
        return Err((
            path.into(),
            format!("unknown storage {storage:?}; expected file_storage"),
        ));
    }
    if c.extensions.file_storage.is_none() {
        return Err((
            path.into(),
            "file_storage is not configured under extensions".into(),
        ));
    }
    if !c.service.extensions.iter().any(|x| x == "file_storage") {
        return Err((
            path.into(),
            "the file_storage extension is not enabled: add it to service.extensions".into(),
        ));
    }
    Ok(())
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
    fn retention_is_off_or_at_least_an_hour() {
        assert_eq!(
            load_default().config.processors.failure_triage.retention,
            DEFAULT_RETENTION
        );
        let ft = |r: &str| {
            format!(
                "processors:\n  failure_triage:\n    retention: {r}\nservice:\n  pipelines:\n    traces: {{receivers: [otlp], processors: [failure_triage], exporters: [otlp]}}\n"
            )
        };
        let l = load_str(&ft("0s"), "c.yaml").unwrap();
        assert!(l.config.processors.failure_triage.retention.is_zero());
        let l = load_str(&ft("36h"), "c.yaml").unwrap();
        assert_eq!(
            l.config.processors.failure_triage.retention,
            Duration::from_secs(36 * 3600)
        );
        let e = load_str(&ft("10m"), "c.yaml").err().expect("refused");
        assert_eq!(e.path, "processors.failure_triage.retention");
        assert!(e.to_string().contains("at least 1h, got 10m"), "{e}");
    }

    fn with_auth(auth: &str) -> String {
        format!(
            "extensions:\n  triage_admin:\n    endpoint: 127.0.0.1:0\n    auth: {auth}\nservice:\n  extensions: [triage_admin]\n  pipelines:\n    traces: {{receivers: [otlp], exporters: [otlp]}}\n"
        )
    }

    fn auth_error(auth: &str) -> ConfigError {
        load_str(&with_auth(auth), "c.yaml").err().expect("refused")
    }

    #[test]
    fn admin_token_from_a_file_is_trimmed_and_never_in_debug() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "  s3cret-token\n").unwrap();
        let l = load_str(
            &with_auth(&format!("{{bearer_token_file: {}}}", file.display())),
            "c.yaml",
        )
        .unwrap();
        let token = l.admin_token.expect("a token");
        assert_eq!(token.expose(), "s3cret-token");
        assert!(!format!("{token:?}").contains("s3cret"));
        assert!(!format!("{:?}", l.config).contains("s3cret"));
        assert!(
            load_default().admin_token.is_none(),
            "auth is off by default"
        );
    }

    #[test]
    fn admin_token_from_the_environment() {
        let var = "TRIAGE_LOOP_CONFIG_TEST_TOKEN_OK";
        std::env::set_var(var, "from-env");
        let l = load_str(
            &with_auth(&format!("{{bearer_token_env: {var}}}")),
            "c.yaml",
        )
        .unwrap();
        assert_eq!(l.admin_token.unwrap().expose(), "from-env");
    }

    #[test]
    fn admin_auth_refusals_name_the_key() {
        let e = auth_error("{bearer_token_env: TRIAGE_LOOP_CONFIG_TEST_UNSET_VAR}");
        assert_eq!(e.path, "extensions.triage_admin.auth.bearer_token_env");
        assert!(e.message.contains("is not set"), "{e}");

        let e = auth_error("{bearer_token_file: /nonexistent/triage-token}");
        assert_eq!(e.path, "extensions.triage_admin.auth.bearer_token_file");
        assert!(
            e.message.contains("cannot read /nonexistent/triage-token"),
            "{e}"
        );

        let e = auth_error("{bearer_token_env: A, bearer_token_file: /b}");
        assert_eq!(e.path, "extensions.triage_admin.auth");
        assert!(e.message.contains("not both"), "{e}");

        let e = auth_error("{}");
        assert_eq!(e.path, "extensions.triage_admin.auth");
        assert!(
            e.message
                .contains("needs bearer_token_env or bearer_token_file"),
            "{e}"
        );

        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, " \n").unwrap();
        let e = auth_error(&format!("{{bearer_token_file: {}}}", empty.display()));
        assert_eq!(e.path, "extensions.triage_admin.auth.bearer_token_file");
        assert!(e.message.contains("empty"), "{e}");

        let spaced = dir.path().join("spaced");
        std::fs::write(&spaced, "two words").unwrap();
        let e = auth_error(&format!("{{bearer_token_file: {}}}", spaced.display()));
        assert!(e.message.contains("visible ASCII"), "{e}");
        assert!(
            !e.to_string().contains("two words"),
            "the token is not echoed: {e}"
        );

        let e = auth_error("{bearer_token: inline}");
        assert_eq!(e.path, "extensions.triage_admin.auth.bearer_token");
        assert!(
            e.message.contains("unknown field"),
            "no inline secrets: {e}"
        );
    }

    #[test]
    fn persistent_queue_needs_the_file_storage_extension_enabled() {
        let yaml = |ext: &str, enabled: &str, storage: &str| {
            format!(
                "extensions:\n{ext}exporters:\n  otlp:\n    sending_queue: {{storage: {storage}}}\nservice:\n  extensions: [{enabled}]\n  pipelines:\n    traces: {{receivers: [otlp], exporters: [otlp]}}\n"
            )
        };
        const NO_FS: &str = "  triage_admin: {endpoint: 127.0.0.1:0}\n";
        let ext = "  file_storage: {directory: /tmp/q, fsync: true}\n";
        let l = load_str(&yaml(ext, "file_storage", "file_storage"), "c.yaml").unwrap();
        let fs = l.config.extensions.file_storage.unwrap();
        assert!(fs.fsync);
        assert_eq!(fs.directory, std::path::Path::new("/tmp/q"));

        let e = load_str(&yaml(ext, "triage_admin", "file_storage"), "c.yaml")
            .err()
            .unwrap();
        assert_eq!(e.path, "exporters.otlp.sending_queue.storage");
        assert!(e.message.contains("service.extensions"), "{e}");
        let e = load_str(&yaml(NO_FS, "triage_admin", "file_storage"), "c.yaml")
            .err()
            .unwrap();
        assert!(e.message.contains("not configured"), "{e}");
        let e = load_str(&yaml(NO_FS, "file_storage", "file_storage"), "c.yaml")
            .err()
            .unwrap();
        assert_eq!(e.path, "service.extensions");
        let e = load_str(&yaml(ext, "file_storage", "redis"), "c.yaml")
            .err()
            .unwrap();
        assert!(e.message.contains("expected file_storage"), "{e}");
    }

    #[test]
    fn postgres_tls_options_are_checked_with_the_config() {
        let yaml = |storage: &str| {
            format!("processors:\n  failure_triage:\n    storage: \"{storage}\"\nservice:\n  pipelines:\n    traces: {{receivers: [otlp], processors: [failure_triage], exporters: [otlp]}}\n")
        };
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let cert = rcgen::generate_simple_self_signed(vec!["db".to_string()]).unwrap();
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        let ok = format!(
            "postgres://u@db:5432/triage?sslmode=verify-full&sslrootcert={}",
            ca.display()
        );
        load_str(&yaml(&ok), "c.yaml").unwrap();
        for (storage, says) in [
            (
                "postgres://u@db/triage?sslmode=strict",
                "sslmode=\"strict\"",
            ),
            (
                "postgres://u@db/triage?sslcert=/c.pem",
                "sslcert and sslkey",
            ),
            (
                "postgres://u@db/triage?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem",
                "/nonexistent/ca.pem",
            ),
        ] {
            let e = load_str(&yaml(storage), "c.yaml").err().unwrap();
            assert_eq!(e.path, "processors.failure_triage.storage");
            assert!(e.message.contains(says), "{e}");
        }
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
