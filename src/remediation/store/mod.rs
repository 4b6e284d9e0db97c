//! The store behind the remediation loop: one async `Store` trait over SQLite and PostgreSQL.
//!
//! Issues are keyed by fingerprint; every failure is kept as an occurrence; every lifecycle
//! change is kept as a transition; dispatches go through a transactional outbox with an
//! idempotency key (issue id + cycle + sink), enqueued in the same transaction as the failure
//! that opens or regresses an issue. All times are unix milliseconds.

pub mod postgres;
mod sqlite;
pub mod triage;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::classify::Source;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub use triage::{
    BucketCount, JudgementRecord, LabelRow, QueueItem, QueueReason, Relabel, RelabelOutcome,
    StoredFailure,
};

/// How many trace ids an issue shows as its sample (those of its newest occurrences).
pub const SAMPLE_CAP: i64 = 10;

/// `next_attempt_at` of a dispatch the dispatcher gave up on (`mark_failed(id, GIVEN_UP, reason)`):
/// never claimed again and not counted as pending.
pub const GIVEN_UP: i64 = i64::MAX;

/// The most issues one `list_issues` call returns, whatever the filter's limit.
pub const MAX_LIST_LIMIT: u32 = 100_000;

/// The most dispatches `list_dispatches` (and `get_issue`) returns for one issue: the newest ones.
pub const MAX_DISPATCHES_LISTED: i64 = 1_000;

/// The most sinks one `record_failure` may enqueue to.
pub const MAX_SINKS: usize = 64;

/// The longest service name or version `record_version_seen` accepts, in bytes.
pub const MAX_VERSION_KEY_LEN: usize = 512;

/// Column lists, in the order both backends' row mappers read them.
pub(crate) const ISSUE_COLS: &str =
    "id, fingerprint, class, source, confidence, agent, service, remediation, \
     state, cycle, occurrences, first_seen, last_seen, classified_at, dispatched_at, shipped_at, \
     shipped_version, verified_at, cycle_started_at";

pub(crate) const OCCURRENCE_COLS: &str =
    "id, issue_id, trace_id, root_span_id, class, source, confidence, \
     agent, service, service_version, observed_at, signal, rule, queue_reason, resolved_at, \
     resolved_by";

pub(crate) const DISPATCH_COLS: &str =
    "id, issue_id, cycle, sink, idempotency_key, payload, attempts, \
     created_at, next_attempt_at, delivered_at, last_error, superseded_at";

/// The longest `last_error` kept on an outbox row, in bytes.
const MAX_ERROR_LEN: usize = 2000;

/// Errors of the store. Backend errors carry what the store was doing when they happened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid storage URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("invalid input: {0}")]
    Invalid(String),
    #[error("issue {0} not found")]
    IssueNotFound(i64),
    #[error("dispatch {0} not found")]
    DispatchNotFound(i64),
    #[error("failure {0} not found")]
    FailureNotFound(i64),
    #[error("issue {issue_id}: transition {from} -> {to} is not allowed")]
    InvalidTransition {
        issue_id: i64,
        from: IssueState,
        to: IssueState,
    },
    /// `detail` is the source's whole chain of causes (drivers often hide the cause, e.g. "connection refused").
    #[error("{context}: {detail}")]
    Backend {
        context: String,
        detail: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    pub(crate) fn backend(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        let source = source.into();
        let mut detail = source.to_string();
        let mut cause = source.source();
        while let Some(c) = cause {
            let c_text = c.to_string();
            if !detail.contains(&c_text) {
                detail.push_str(": ");
                detail.push_str(&c_text);
            }
            cause = c.source();
        }
        if let Some(hint) = pooler_hint(&*source) {
            detail.push_str(hint);
        }
        StoreError::Backend {
            context: context.into(),
            detail,
            source,
        }
    }
}

/// What to do about the errors PostgreSQL gives when a pooler in transaction mode (PgBouncer
/// before 1.21, or without `max_prepared_statements`) hands a client's statements to another
/// server connection: the store prepares its statements once per connection.
fn pooler_hint(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    use tokio_postgres::error::SqlState;
    let code = e.downcast_ref::<tokio_postgres::Error>()?.code()?;
    (code == &SqlState::DUPLICATE_PSTATEMENT || code == &SqlState::INVALID_SQL_STATEMENT_NAME)
        .then_some(
            " (is the store behind PgBouncer or another pooler in transaction mode? It prepares \
             its statements once per connection: use session pooling, or PgBouncer 1.21 or \
             later with max_prepared_statements set)",
        )
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Attaches "what the store was doing" to a backend error.
pub(crate) trait Context<T> {
    fn ctx(self, what: &str) -> Result<T>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for std::result::Result<T, E> {
    fn ctx(self, what: &str) -> Result<T> {
        self.map_err(|e| StoreError::backend(what, e))
    }
}

/// Lifecycle state of an issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IssueState {
    Open,
    Dispatched,
    Shipped,
    Verified,
    Regressed,
    Ignored,
}

impl IssueState {
    pub const ALL: [IssueState; 6] = [
        IssueState::Open,
        IssueState::Dispatched,
        IssueState::Shipped,
        IssueState::Verified,
        IssueState::Regressed,
        IssueState::Ignored,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            IssueState::Open => "open",
            IssueState::Dispatched => "dispatched",
            IssueState::Shipped => "shipped",
            IssueState::Verified => "verified",
            IssueState::Regressed => "regressed",
            IssueState::Ignored => "ignored",
        }
    }

    /// Whether the lifecycle allows moving from `self` to `to`:
    /// open → dispatched → shipped → verified, shipped/verified → regressed,
    /// regressed → dispatched, open/regressed → shipped (a fix can ship before its dispatch
    /// is delivered), shipped → shipped (a newer version ships the fix again), and anything (but
    /// ignored itself) → ignored. Ignored is final: its dispatches are given up, and a
    /// recurrence only counts.
    pub fn can_move_to(self, to: IssueState) -> bool {
        use IssueState::*;
        matches!(
            (self, to),
            (Open, Dispatched)
                | (Open, Shipped)
                | (Regressed, Shipped)
                | (Dispatched, Shipped)
                | (Shipped, Shipped)
                | (Shipped, Verified)
                | (Shipped, Regressed)
                | (Verified, Regressed)
                | (Regressed, Dispatched)
        ) || (to == Ignored && self != Ignored)
    }

    /// Whether the issue's shipped version (`current`) refuses a transition given `version`,
    /// checked inside the transition's transaction: shipping a shipped issue again in the same
    /// version (a concurrent retry: nothing to do), or verifying a fix for another version than
    /// the one the verifier looked at (it was shipped again meanwhile).
    pub(crate) fn version_refuses(
        from: IssueState,
        to: IssueState,
        current: Option<&str>,
        version: Option<&str>,
    ) -> bool {
        match to {
            IssueState::Shipped => from == IssueState::Shipped && current == version,
            IssueState::Verified => version.is_some() && current != version,
            _ => false,
        }
    }

    /// Whether a recurrence in this state is a regression.
    pub fn regresses_on_recurrence(self) -> bool {
        matches!(self, IssueState::Shipped | IssueState::Verified)
    }
}

impl fmt::Display for IssueState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for IssueState {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        IssueState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| StoreError::Invalid(format!("unknown issue state {s:?}")))
    }
}

pub(crate) fn parse_source(s: &str) -> Result<Source> {
    match s {
        "rule" => Ok(Source::Rule),
        "model" => Ok(Source::Model),
        "human" => Ok(Source::Human),
        "llm" => Ok(Source::Llm),
        other => Err(StoreError::Invalid(format!(
            "unknown class source {other:?} in store"
        ))),
    }
}

/// Failures to record in one call, each with the sinks of its class (shared, so a backend can
/// hand it to its own thread without copying it).
pub type Batch = Arc<[(FailureRecord, Arc<[String]>)]>;

/// A failure's signal summary: a small JSON object, held as its text, so it is made with one
/// allocation and stored as it is.
#[derive(Clone)]
pub struct SignalSummary(Box<serde_json::value::RawValue>);

impl SignalSummary {
    /// The summary of `fields` (any value serde writes as a JSON object).
    pub fn of<T: Serialize>(fields: &T) -> Self {
        let text = serde_json::to_string(fields).unwrap_or_else(|_| "{}".into());
        SignalSummary::from_json(text)
    }

    /// `text`, or `{}` if it is not JSON.
    fn from_json(text: String) -> Self {
        serde_json::value::RawValue::from_string(text)
            .or_else(|_| serde_json::value::RawValue::from_string("{}".into()))
            .map(SignalSummary)
            .expect("{} is JSON")
    }

    /// The summary as JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The summary parsed (`Null` never: the text is JSON).
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_str(self.0.get()).unwrap_or_default()
    }
}

impl From<serde_json::Value> for SignalSummary {
    fn from(v: serde_json::Value) -> Self {
        SignalSummary::from_json(v.to_string())
    }
}

impl PartialEq for SignalSummary {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl fmt::Debug for SignalSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl Serialize for SignalSummary {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for SignalSummary {
    /// From any JSON value (a dispatch payload is read back as a `serde_json::Value`).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        serde_json::Value::deserialize(d).map(SignalSummary::from)
    }
}

/// One failed agent run, attributed to its root cause.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureRecord {
    /// Trace id, 32 lowercase hex digits.
    pub trace_id: String,
    /// Span id of the root cause, 16 lowercase hex digits.
    pub root_span_id: String,
    pub class: String,
    pub source: Source,
    /// 0..=1.
    pub confidence: f64,
    pub fingerprint: String,
    /// The remediation path bound to the class.
    pub remediation: String,
    /// `gen_ai.agent.name`, or the service name.
    pub agent: String,
    pub service: String,
    pub service_version: Option<String>,
    /// When the failure was observed, unix milliseconds.
    pub observed_at: i64,
    /// A small JSON summary of the failure signal(s).
    pub signal: SignalSummary,
    /// The rule that decided the root cause's class, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Why the failure waits for a person, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_reason: Option<QueueReason>,
    /// The decided trace, from which the detail a person or the judge looks at and the root
    /// cause's feature tokens (what a label trains the model on) are made: stored for queued
    /// failures and the failure that opens an issue or a cycle.
    #[serde(skip)]
    pub trace: Option<crate::failure::detail::TraceSnapshot>,
}

impl FailureRecord {
    /// Refuses records the store cannot key or index sensibly.
    pub fn validate(&self) -> Result<()> {
        fn hex(name: &str, v: &str, len: usize) -> Result<()> {
            if v.len() != len || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(StoreError::Invalid(format!(
                    "{name} must be {len} hex digits, got {v:?}"
                )));
            }
            Ok(())
        }
        hex("trace_id", &self.trace_id, 32)?;
        hex("root_span_id", &self.root_span_id, 16)?;
        for (name, v) in [
            ("fingerprint", &self.fingerprint),
            ("class", &self.class),
            ("agent", &self.agent),
            ("service", &self.service),
        ] {
            if v.is_empty() {
                return Err(StoreError::Invalid(format!("{name} is empty")));
            }
        }
        if !(0.0..=1.0).contains(&self.confidence) {
            return Err(StoreError::Invalid(format!(
                "confidence must be in 0..=1, got {}",
                self.confidence
            )));
        }
        Ok(())
    }
}

/// What `record_failure` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordOutcome {
    pub issue_id: i64,
    /// The fingerprint was seen for the first time.
    pub new_issue: bool,
    /// The issue was shipped or verified and this recurrence moved it to `regressed`.
    pub regressed: bool,
    /// The issue's occurrence count including this one.
    pub occurrences: i64,
    /// The issue's cycle after this record (bumped on regression).
    pub cycle: i64,
    pub state: IssueState,
    /// Outbox rows created by this record (one per sink, on a new issue or a regression only).
    pub dispatches_enqueued: u32,
    /// Who decided the issue's class (a person's or the judge's label outlives the failure's own).
    pub issue_source: Source,
    /// The stored failure (occurrence) id.
    pub failure_id: i64,
}

/// An issue row: all failures sharing a fingerprint.
///
/// Every `*_at` describes the issue's current cycle: a regression starts a new cycle with
/// `classified_at` set to when the regression was recorded and `dispatched_at`, `shipped_at`,
/// `verified_at` cleared (`shipped_version` stays: it names the fix that regressed). The history
/// of earlier cycles is in the transitions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Issue {
    pub id: i64,
    pub fingerprint: String,
    pub class: String,
    pub source: Source,
    pub confidence: f64,
    pub agent: String,
    pub service: String,
    pub remediation: String,
    pub state: IssueState,
    pub cycle: i64,
    pub occurrences: i64,
    pub first_seen: i64,
    pub last_seen: i64,
    /// When the failure that opened (or regressed) the current cycle was recorded.
    pub classified_at: Option<i64>,
    pub dispatched_at: Option<i64>,
    /// When the fix of the current cycle last shipped (a re-ship moves it).
    pub shipped_at: Option<i64>,
    /// The version the fix last shipped in; kept across a regression.
    pub shipped_version: Option<String>,
    pub verified_at: Option<i64>,
    /// When the current cycle started: `first_seen` for cycle 1, the regressing occurrence's
    /// (or the regress transition's) time for later ones. Loop latency of a cycle runs from here.
    pub cycle_started_at: i64,
}

/// One stored failure of an issue.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Occurrence {
    pub id: i64,
    pub issue_id: i64,
    pub trace_id: String,
    pub root_span_id: String,
    pub class: String,
    pub source: Source,
    pub confidence: f64,
    pub agent: String,
    pub service: String,
    pub service_version: Option<String>,
    pub observed_at: i64,
    pub signal: serde_json::Value,
    pub rule: Option<String>,
    pub queue_reason: Option<QueueReason>,
    /// When a person (or the judge) resolved the failure's place in the queue.
    pub resolved_at: Option<i64>,
    /// `human` or `llm`.
    pub resolved_by: Option<String>,
}

/// One lifecycle change of an issue. `from_state` is `None` for the creation of the issue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transition {
    pub issue_id: i64,
    pub from_state: Option<IssueState>,
    pub to_state: IssueState,
    /// The cycle the issue is in after the transition.
    pub cycle: i64,
    pub at: i64,
    pub reason: String,
}

/// An issue with what `GET /api/v1/issues/{id}` shows besides the row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IssueDetail {
    pub issue: Issue,
    pub agents: Vec<String>,
    pub services: Vec<String>,
    pub versions: Vec<String>,
    /// The most recent trace ids, newest first, at most `SAMPLE_CAP`.
    pub sample_trace_ids: Vec<String>,
    /// Most recent first.
    pub recent_occurrences: Vec<Occurrence>,
    /// Oldest first.
    pub transitions: Vec<Transition>,
    /// The issue's outbox rows, oldest first (at most `MAX_DISPATCHES_LISTED`, the newest).
    pub dispatches: Vec<Dispatch>,
}

/// Which issues `list_issues` returns; `None` matches everything. Newest `last_seen` first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssueFilter {
    pub class: Option<String>,
    pub state: Option<IssueState>,
    pub agent: Option<String>,
    /// At most this many (default 500, at most `MAX_LIST_LIMIT`).
    pub limit: Option<u32>,
}

impl IssueFilter {
    pub(crate) fn limit(&self) -> i64 {
        i64::from(self.limit.unwrap_or(500).min(MAX_LIST_LIMIT))
    }
}

/// How many issues are in one state of one class (the `triage_issues` gauge).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IssueCount {
    pub class: String,
    pub state: IssueState,
    pub count: i64,
}

/// What `enqueue_dispatch` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Enqueued {
    pub dispatch_id: i64,
    /// False when a dispatch with the same idempotency key already existed.
    pub created: bool,
}

/// One outbox row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dispatch {
    pub id: i64,
    pub issue_id: i64,
    pub cycle: i64,
    pub sink: String,
    pub idempotency_key: String,
    pub payload: serde_json::Value,
    /// Claims so far, including the current one.
    pub attempts: i64,
    pub created_at: i64,
    pub next_attempt_at: i64,
    pub delivered_at: Option<i64>,
    pub last_error: Option<String>,
    /// When a re-route (a changed class) superseded this dispatch; it is not delivered after that.
    pub superseded_at: Option<i64>,
}

/// The detail and feature tokens (JSON text) an occurrence keeps: for a queued failure, or
/// when `opens` (the failure opens an issue or a cycle); `(None, None)` otherwise.
pub(crate) fn kept_detail(
    record: &FailureRecord,
    opens: bool,
) -> Result<(Option<String>, Option<String>)> {
    let Some(trace) = record.trace.as_ref() else {
        return Ok((None, None));
    };
    if !opens && record.queue_reason.is_none() {
        return Ok((None, None));
    }
    let detail = trace
        .detail()
        .map(|d| serde_json::to_string(&d))
        .transpose()
        .map_err(|e| StoreError::backend("serializing failure detail", e))?;
    let features = serde_json::to_string(&trace.features())
        .map_err(|e| StoreError::backend("serializing feature tokens", e))?;
    Ok((detail, Some(features)))
}

/// The idempotency key of one dispatch: issue id + cycle + sink.
pub fn idempotency_key(issue_id: i64, cycle: i64, sink: &str) -> String {
    format!("{issue_id}:{cycle}:{sink}")
}

/// The outbox payload of a failure: the record as JSON with the issue's `cycle` added.
pub fn dispatch_payload(record: &FailureRecord, cycle: i64) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(record)
        .map_err(|e| StoreError::backend("serializing dispatch payload", e))?;
    match v.as_object_mut() {
        Some(obj) => {
            obj.insert("cycle".into(), cycle.into());
            Ok(v)
        }
        None => Err(StoreError::Invalid(
            "failure record did not serialize to a JSON object".into(),
        )),
    }
}

/// Refuses sink lists the outbox cannot key: empty names, or more than `MAX_SINKS`.
/// Checks every record and sink list of a batch before any of it is written.
pub(crate) fn validate_batch(batch: &[(FailureRecord, Arc<[String]>)]) -> Result<()> {
    for (record, sinks) in batch {
        record.validate()?;
        validate_sinks(sinks)?;
    }
    Ok(())
}

pub(crate) fn validate_sinks(sinks: &[String]) -> Result<()> {
    if sinks.len() > MAX_SINKS {
        return Err(StoreError::Invalid(format!(
            "{} sinks given, at most {MAX_SINKS} allowed",
            sinks.len()
        )));
    }
    if sinks.iter().any(String::is_empty) {
        return Err(StoreError::Invalid("sink name is empty".into()));
    }
    Ok(())
}

/// Refuses (service, version) keys that are empty or longer than `MAX_VERSION_KEY_LEN`.
pub(crate) fn validate_version_key(service: &str, version: &str) -> Result<()> {
    for (name, v) in [("service", service), ("version", version)] {
        if v.is_empty() {
            return Err(StoreError::Invalid(format!("{name} is empty")));
        }
        if v.len() > MAX_VERSION_KEY_LEN {
            return Err(StoreError::Invalid(format!(
                "{name} is {} bytes, at most {MAX_VERSION_KEY_LEN} allowed",
                v.len()
            )));
        }
    }
    Ok(())
}

/// The failure's version if it has a usable one (empty counts as none).
pub(crate) fn record_version(record: &FailureRecord) -> Option<&str> {
    record
        .service_version
        .as_deref()
        .filter(|v| !v.is_empty() && v.len() <= MAX_VERSION_KEY_LEN)
}

/// `version` as semver, allowing a leading `v` (`v1.2.3`).
fn parse_semver(version: &str) -> Option<semver::Version> {
    let v = version.strip_prefix(['v', 'V']).unwrap_or(version);
    semver::Version::parse(v).ok()
}

/// Whether a failure on `version` happened on the shipped version or a later one (the version
/// test of `is_regression`, which handles a missing version on either side itself):
/// - no version on the failure, or no shipped version: true (nothing says otherwise);
/// - the same version: true;
/// - both semver (a leading `v` allowed): `version >= shipped`;
/// - otherwise (git shas, build numbers…) by when each was first seen: a shipped version never seen
///   is not running yet, so false; an unknown failure version is new, so true; else
///   `version_first_seen >= shipped_first_seen`.
pub fn version_at_or_after(
    version: Option<&str>,
    shipped: Option<&str>,
    version_first_seen: Option<i64>,
    shipped_first_seen: Option<i64>,
) -> bool {
    let (Some(version), Some(shipped)) = (version, shipped) else {
        return true;
    };
    if version == shipped {
        return true;
    }
    if let (Some(v), Some(s)) = (parse_semver(version), parse_semver(shipped)) {
        return v >= s;
    }
    match (version_first_seen, shipped_first_seen) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(v), Some(s)) => v >= s,
    }
}

/// A fix as shipped: when, in which version, and when that version was first seen running
/// (under the issue's service).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShippedFix<'a> {
    pub at: i64,
    pub version: Option<&'a str>,
    pub version_first_seen: Option<i64>,
}

/// Whether a failure observed at `observed_at` on `version` (first seen at `version_first_seen`)
/// is a regression of `fix`:
/// - observed before the fix shipped: never (it was held back, or recorded late);
/// - the fix shipped without a version: yes;
/// - a version on the failure: `version_at_or_after` it (older builds still running during the
///   rollout do not regress);
/// - no version on the failure: only once the shipped version has been seen running, and
///   observed at or after that.
pub fn is_regression(
    fix: &ShippedFix<'_>,
    observed_at: i64,
    version: Option<&str>,
    version_first_seen: Option<i64>,
) -> bool {
    if observed_at < fix.at {
        return false;
    }
    let Some(shipped) = fix.version else {
        return true;
    };
    match version {
        Some(_) => version_at_or_after(
            version,
            Some(shipped),
            version_first_seen,
            fix.version_first_seen,
        ),
        None => fix
            .version_first_seen
            .is_some_and(|seen| observed_at >= seen.max(fix.at)),
    }
}

/// The latest verify start that is due at `now` with a window of `window_ms`, and the row limit,
/// for `due_for_verification`.
pub(crate) fn verification_bounds(now: i64, window_ms: i64, limit: u32) -> Result<(i64, i64)> {
    if window_ms < 0 {
        return Err(StoreError::Invalid(format!(
            "verify window must not be negative, got {window_ms} ms"
        )));
    }
    Ok((
        now.saturating_sub(window_ms),
        i64::from(limit.min(MAX_LIST_LIMIT)),
    ))
}

pub(crate) fn truncate_error(error: &str) -> &str {
    crate::text::cut(error, MAX_ERROR_LEN)
}

/// The store of issues, occurrences, transitions and the dispatch outbox.
#[async_trait]
pub trait Store: Send + Sync {
    /// `"sqlite"` or `"postgres"`.
    fn backend(&self) -> &'static str;

    /// The highest migration version applied.
    async fn schema_version(&self) -> Result<i64>;

    /// Upserts the issue by fingerprint, stores the occurrence and records the failure's
    /// (service, version) as seen, in one transaction. `now` is when the failure is recorded
    /// (classified): a new issue gets `classified_at = now`.
    ///
    /// A recurrence of a shipped or verified issue that `is_regression` of its shipped fix
    /// (first-seen times looked up under the issue's service) moves it to `regressed` and starts
    /// a new cycle at `observed_at`, with `classified_at = now` and `dispatched_at`, `shipped_at`,
    /// `verified_at` cleared; any other recurrence only adds an occurrence.
    /// On a new issue or a regression, the same transaction enqueues one outbox row per sink
    /// (payload `dispatch_payload`, due at `observed_at`), so no recorded failure loses its dispatch.
    /// An ignored issue only counts the occurrence.
    async fn record_failure(
        &self,
        record: &FailureRecord,
        sinks: &[String],
        now: i64,
    ) -> Result<RecordOutcome>;

    /// `record_failure` for each (record, sinks) in order, at `now`; one outcome per record.
    /// Every record is checked first, so an invalid one refuses the batch before anything is
    /// written. SQLite and PostgreSQL write the batch in one transaction (all or nothing); this
    /// default, for other backends, records one by one and stops at the first store error.
    async fn record_failures(&self, batch: Batch, now: i64) -> Result<Vec<RecordOutcome>> {
        validate_batch(&batch)?;
        let mut out = Vec::with_capacity(batch.len());
        for (record, sinks) in batch.iter() {
            out.push(self.record_failure(record, sinks, now).await?);
        }
        Ok(out)
    }

    /// Records that `service` ran `version` at `at` (kept only the first time); returns its first-seen time.
    async fn record_version_seen(&self, service: &str, version: &str, at: i64) -> Result<i64>;

    /// When `service` was first seen running `version`, if ever.
    async fn version_first_seen(&self, service: &str, version: &str) -> Result<Option<i64>>;

    /// Moves an issue to `to` if the lifecycle allows it (`IssueState::can_move_to`), stamping the
    /// state's time (`dispatched_at`, `shipped_at` with `shipped_version`, `verified_at`) and
    /// storing the transition. A re-ship (shipped → shipped) stores the new version and time,
    /// which restarts the verify clock; the same version again is refused. Moving to `verified`
    /// with `shipped_version` set is refused unless the issue still ships that version.
    /// Moving to `regressed` starts a new cycle at `at`: `cycle_started_at` and `classified_at`
    /// become `at`, `dispatched_at`, `shipped_at` and `verified_at` are cleared.
    async fn transition(
        &self,
        issue_id: i64,
        to: IssueState,
        at: i64,
        reason: &str,
        shipped_version: Option<&str>,
    ) -> Result<Transition>;

    /// Shipped issues whose verify window of `window_ms` has passed at `now`, oldest verify start
    /// first, at most `limit` (capped at `MAX_LIST_LIMIT`). The verify clock of an issue starts at
    /// `max(shipped_at, first seen of (service, shipped_version))`, or at `shipped_at` when it
    /// shipped without a version; it has not started while the shipped version was never seen.
    /// One query. A negative window is refused.
    async fn due_for_verification(
        &self,
        now: i64,
        window_ms: i64,
        limit: u32,
    ) -> Result<Vec<Issue>>;

    /// Adds a dispatch to the outbox, due at `now`; idempotent on (issue id, cycle, sink).
    async fn enqueue_dispatch(
        &self,
        issue_id: i64,
        cycle: i64,
        sink: &str,
        payload: &serde_json::Value,
        now: i64,
    ) -> Result<Enqueued>;

    /// Claims up to `limit` undelivered dispatches due at `now`: each gets `attempts + 1` and is
    /// leased until `now + lease_ms` (another claimer skips it until then; a crash lets the lease run out).
    /// Given-up dispatches (`GIVEN_UP`) are never claimed.
    async fn claim_due_dispatches(
        &self,
        now: i64,
        limit: u32,
        lease_ms: i64,
    ) -> Result<Vec<Dispatch>>;

    /// Marks a dispatch delivered. Delivering twice is not an error; the first time stamp stays.
    async fn mark_delivered(&self, dispatch_id: i64, at: i64) -> Result<()>;

    /// Records a failed attempt and when to try again (`GIVEN_UP`: never).
    async fn mark_failed(&self, dispatch_id: i64, next_attempt_at: i64, error: &str) -> Result<()>;

    /// The issue's outbox rows, oldest first (at most `MAX_DISPATCHES_LISTED`, the newest).
    async fn list_dispatches(&self, issue_id: i64) -> Result<Vec<Dispatch>>;

    /// Undelivered dispatches not given up on (claimed or not).
    async fn pending_dispatches(&self) -> Result<i64>;

    /// The issue with its seen agents/services/versions, sample trace ids,
    /// `recent` most recent occurrences, all transitions and its dispatches; `None` if there is no such issue.
    async fn get_issue(&self, issue_id: i64, recent: u32) -> Result<Option<IssueDetail>>;

    /// Issues matching `filter`, newest `last_seen` first.
    async fn list_issues(&self, filter: &IssueFilter) -> Result<Vec<Issue>>;

    /// Issue counts by class and state (only non-zero ones), ordered by class then state name.
    async fn count_issues(&self) -> Result<Vec<IssueCount>>;

    /// The triage queue: per issue not decided by a person (nor ignored), its newest queued
    /// failure not yet resolved; oldest first, at most `limit` (capped at `MAX_LIST_LIMIT`).
    async fn queue(&self, limit: u32) -> Result<Vec<QueueItem>>;

    /// One failure with its stored detail, feature tokens and the judge's answers.
    async fn get_failure(&self, failure_id: i64) -> Result<Option<StoredFailure>>;

    /// Gives the failure's whole issue the class of `req`, in one transaction: see `Relabel`.
    async fn relabel(&self, req: &Relabel) -> Result<RelabelOutcome>;

    /// Human labels with an id above `after`, oldest first, at most `limit`.
    async fn labels_since(&self, after: i64, limit: u32) -> Result<Vec<LabelRow>>;

    /// Stores the model `name`'s snapshot, which has learned every label up to `last_label`;
    /// an older snapshot (lower `last_label`) than the stored one is not written.
    async fn save_model(
        &self,
        name: &str,
        last_label: i64,
        snapshot: &serde_json::Value,
        at: i64,
    ) -> Result<()>;

    /// The model `name`'s stored snapshot and the last label it learned.
    async fn load_model(&self, name: &str) -> Result<Option<(i64, serde_json::Value)>>;

    /// Stores one answer (or failed attempt) of the LLM judge; returns its id.
    async fn record_judgement(&self, judgement: &JudgementRecord) -> Result<i64>;

    /// Failures observed in `[from, to)` per issue class and `step_ms` bucket (bucket 0 starts at
    /// `from`); only non-zero counts.
    async fn failure_counts(&self, from: i64, to: i64, step_ms: i64) -> Result<Vec<BucketCount>>;

    /// Deletes up to `limit` failures observed before `before` that nothing needs any more
    /// (see [`prune_sql`]), oldest first; returns how many. Issues keep their counts.
    async fn prune_failures(&self, before: i64, limit: u32) -> Result<u64>;
}

/// The retention sweep's `DELETE`, with the dialect's placeholders for the cutoff and the limit.
/// A failure is kept while it waits for a person, while a label or a judgement points at it
/// (labels are training data), and while it is the newest failure of its issue that kept its
/// detail and feature tokens (what a person, the judge and a relabel read; the tokens are kept
/// whenever the detail is); the others go once observed before the cutoff.
pub(crate) fn prune_sql(before: &str, limit: &str) -> String {
    format!(
        "DELETE FROM occurrences WHERE id IN (
           SELECT o.id FROM occurrences o
           WHERE o.observed_at < {before}
             AND NOT (o.queue_reason IS NOT NULL AND o.resolved_at IS NULL)
             AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.failure_id = o.id)
             AND NOT EXISTS (SELECT 1 FROM judgements j WHERE j.failure_id = o.id)
             AND (o.features IS NULL OR EXISTS (
                   SELECT 1 FROM occurrences n
                   WHERE n.issue_id = o.issue_id AND n.features IS NOT NULL AND n.id > o.id))
           ORDER BY o.observed_at
           LIMIT {limit})"
    )
}

/// Opens the store named by a `storage:` URL: `sqlite://PATH` (parent directory and schema are
/// created on first open) or `postgres://…` / `postgresql://…`. Pending migrations are applied.
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(StoreError::Url {
                url: url.to_string(),
                reason: "no file path after sqlite://".into(),
            });
        }
        let store = SqliteStore::open(path).await?;
        Ok(Arc::new(store))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = PostgresStore::connect(url).await?;
        Ok(Arc::new(store))
    } else {
        Err(StoreError::Url {
            url: url.to_string(),
            reason: "expected sqlite://PATH or postgres://USER@HOST:PORT/DB".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_allows_the_documented_moves_only() {
        use IssueState::*;
        let allowed = [
            (Open, Dispatched),
            (Open, Shipped),
            (Dispatched, Shipped),
            (Shipped, Verified),
            (Shipped, Regressed),
            (Verified, Regressed),
            (Regressed, Dispatched),
            (Regressed, Shipped),
            (Shipped, Shipped),
        ];
        for from in IssueState::ALL {
            for to in IssueState::ALL {
                let want = allowed.contains(&(from, to)) || (to == Ignored && from != Ignored);
                assert_eq!(from.can_move_to(to), want, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn states_round_trip_through_text() {
        for st in IssueState::ALL {
            assert_eq!(st.as_str().parse::<IssueState>().unwrap(), st);
        }
        assert!(matches!(
            "closed".parse::<IssueState>(),
            Err(StoreError::Invalid(_))
        ));
    }

    #[test]
    fn missing_versions_count_as_at_or_after() {
        assert!(version_at_or_after(None, Some("1.0.0"), None, Some(1)));
        assert!(version_at_or_after(Some("1.0.0"), None, Some(1), None));
        assert!(version_at_or_after(None, None, None, None));
    }

    #[test]
    fn equal_versions_are_at_or_after() {
        assert!(version_at_or_after(
            Some("abc123"),
            Some("abc123"),
            None,
            None
        ));
        assert!(version_at_or_after(
            Some("1.2.3"),
            Some("1.2.3"),
            Some(1),
            Some(9)
        ));
    }

    #[test]
    fn semver_versions_compare_as_semver() {
        // Semver decides even when first-seen times say the opposite.
        assert!(version_at_or_after(
            Some("1.10.0"),
            Some("1.9.0"),
            Some(1),
            Some(9)
        ));
        assert!(!version_at_or_after(
            Some("1.9.0"),
            Some("1.10.0"),
            Some(9),
            Some(1)
        ));
        assert!(version_at_or_after(
            Some("v2.0.0"),
            Some("1.99.0"),
            None,
            None
        ));
        assert!(version_at_or_after(
            Some("2.0.0"),
            Some("v2.0.0"),
            None,
            None
        ));
        assert!(!version_at_or_after(
            Some("v2.0.0-rc.1"),
            Some("2.0.0"),
            None,
            None
        ));
        assert!(version_at_or_after(
            Some("2.0.1"),
            Some("2.0.0-rc.1"),
            None,
            None
        ));
    }

    #[test]
    fn other_versions_compare_by_first_seen() {
        // Git-sha-like versions.
        assert!(version_at_or_after(
            Some("b2c3d4e"),
            Some("a1b2c3d"),
            Some(200),
            Some(100)
        ));
        assert!(version_at_or_after(
            Some("b2c3d4e"),
            Some("a1b2c3d"),
            Some(100),
            Some(100)
        ));
        assert!(!version_at_or_after(
            Some("0f0f0f0"),
            Some("a1b2c3d"),
            Some(50),
            Some(100)
        ));
        // The shipped version never seen: it is not running yet.
        assert!(!version_at_or_after(
            Some("b2c3d4e"),
            Some("a1b2c3d"),
            Some(200),
            None
        ));
        assert!(!version_at_or_after(
            Some("b2c3d4e"),
            Some("a1b2c3d"),
            None,
            None
        ));
        // An unknown failure version is a new one.
        assert!(version_at_or_after(
            Some("b2c3d4e"),
            Some("a1b2c3d"),
            None,
            Some(100)
        ));
        // One side semver, the other not: first-seen decides.
        assert!(!version_at_or_after(
            Some("1.0.0"),
            Some("a1b2c3d"),
            Some(10),
            Some(100)
        ));
        assert!(version_at_or_after(
            Some("2.0"),
            Some("1.0.0"),
            Some(300),
            Some(100)
        ));
    }

    fn fix(at: i64, version: Option<&str>, first_seen: Option<i64>) -> ShippedFix<'_> {
        ShippedFix {
            at,
            version,
            version_first_seen: first_seen,
        }
    }

    #[test]
    fn failures_observed_before_the_ship_never_regress() {
        let f = fix(1_000, Some("1.0.0"), Some(500));
        assert!(!is_regression(&f, 999, Some("2.0.0"), Some(900)));
        assert!(!is_regression(&f, 999, None, None));
        assert!(!is_regression(&fix(1_000, None, None), 999, None, None));
        assert!(is_regression(&f, 1_000, Some("1.0.0"), Some(500)));
    }

    #[test]
    fn a_fix_shipped_without_a_version_regresses_on_anything_after_it() {
        let f = fix(1_000, None, None);
        assert!(is_regression(&f, 1_000, None, None));
        assert!(is_regression(&f, 2_000, Some("0.0.1"), Some(1)));
    }

    #[test]
    fn versioned_failures_regress_on_the_shipped_version_or_later() {
        let f = fix(1_000, Some("1.2.0"), Some(900));
        assert!(is_regression(&f, 2_000, Some("1.2.0"), Some(900)));
        assert!(is_regression(&f, 2_000, Some("1.10.0"), Some(2_000)));
        // The old build still failing during the rollout.
        assert!(!is_regression(&f, 2_000, Some("1.1.0"), Some(100)));
        // Shas: by first seen; a shipped sha never seen is not running yet.
        let f = fix(1_000, Some("bbb2222"), Some(1_500));
        assert!(is_regression(&f, 2_000, Some("ccc3333"), Some(1_600)));
        assert!(!is_regression(&f, 2_000, Some("aaa1111"), Some(100)));
        let f = fix(1_000, Some("bbb2222"), None);
        assert!(!is_regression(&f, 2_000, Some("ccc3333"), Some(1_600)));
    }

    #[test]
    fn unversioned_failures_regress_once_the_shipped_version_runs() {
        // Never seen: nothing says the failure ran the fix.
        assert!(!is_regression(
            &fix(1_000, Some("2.0.0"), None),
            5_000,
            None,
            None
        ));
        // Seen after the ship: from then on.
        let f = fix(1_000, Some("2.0.0"), Some(3_000));
        assert!(!is_regression(&f, 2_999, None, None));
        assert!(is_regression(&f, 3_000, None, None));
        // Seen before the ship (an earlier canary): from the ship on.
        let f = fix(1_000, Some("2.0.0"), Some(500));
        assert!(!is_regression(&f, 999, None, None));
        assert!(is_regression(&f, 1_000, None, None));
    }

    #[test]
    fn verification_bounds_are_checked() {
        assert_eq!(verification_bounds(10_000, 3_000, 5).unwrap(), (7_000, 5));
        assert_eq!(
            verification_bounds(i64::MIN + 1, 10, u32::MAX).unwrap(),
            (i64::MIN, i64::from(MAX_LIST_LIMIT))
        );
        assert!(matches!(
            verification_bounds(10_000, -1, 5),
            Err(StoreError::Invalid(_))
        ));
    }

    #[test]
    fn payload_is_the_record_with_its_cycle() {
        let rec = FailureRecord {
            trace_id: "0".repeat(32),
            root_span_id: "1".repeat(16),
            class: "logic_tool".into(),
            source: Source::Rule,
            confidence: 0.5,
            fingerprint: "fp".into(),
            remediation: "tool_fix".into(),
            agent: "a".into(),
            service: "s".into(),
            service_version: Some("1.0.0".into()),
            observed_at: 42,
            signal: serde_json::json!({"kind": "exception"}).into(),
            rule: None,
            queue_reason: None,
            trace: None,
        };
        let p = dispatch_payload(&rec, 3).unwrap();
        assert_eq!(p["cycle"], 3);
        assert_eq!(p["trace_id"], rec.trace_id);
        assert_eq!(p["source"], "rule");
        assert_eq!(p["signal"]["kind"], "exception");
        assert_eq!(p["observed_at"], 42);
    }

    #[test]
    fn sink_lists_are_checked() {
        assert!(validate_sinks(&[]).is_ok());
        assert!(validate_sinks(&["webhook".into()]).is_ok());
        assert!(matches!(
            validate_sinks(&[String::new()]),
            Err(StoreError::Invalid(_))
        ));
        let many = vec!["s".to_string(); MAX_SINKS + 1];
        assert!(matches!(validate_sinks(&many), Err(StoreError::Invalid(_))));
    }

    #[test]
    fn filter_limit_is_capped() {
        let f = IssueFilter {
            limit: Some(u32::MAX),
            ..Default::default()
        };
        assert_eq!(f.limit(), i64::from(MAX_LIST_LIMIT));
        assert_eq!(IssueFilter::default().limit(), 500);
    }
}
