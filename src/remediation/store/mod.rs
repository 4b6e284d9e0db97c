//! The store behind the remediation loop: one async `Store` trait over SQLite and PostgreSQL.
//!
//! Issues are keyed by fingerprint; every failure is kept as an occurrence; every lifecycle
//! change is kept as a transition; dispatches go through a transactional outbox with an
//! idempotency key (issue id + cycle + sink). All times are unix milliseconds.

mod postgres;
mod sqlite;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::classify::Source;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// How many trace ids each issue keeps as its sample (the most recent ones).
pub const SAMPLE_CAP: i64 = 10;

/// Column lists, in the order both backends' row mappers read them.
pub(crate) const ISSUE_COLS: &str =
    "id, fingerprint, class, source, confidence, agent, service, remediation, \
     state, cycle, occurrences, first_seen, last_seen, classified_at, dispatched_at, shipped_at, \
     shipped_version, verified_at";

pub(crate) const OCCURRENCE_COLS: &str =
    "id, issue_id, trace_id, root_span_id, class, source, confidence, \
     agent, service, service_version, observed_at, signal";

pub(crate) const DISPATCH_COLS: &str =
    "id, issue_id, cycle, sink, idempotency_key, payload, attempts, \
     created_at, next_attempt_at, delivered_at, last_error";

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
        StoreError::Backend {
            context: context.into(),
            detail,
            source,
        }
    }
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
    /// regressed → dispatched, and anything (but ignored itself) → ignored.
    pub fn can_move_to(self, to: IssueState) -> bool {
        use IssueState::*;
        matches!(
            (self, to),
            (Open, Dispatched)
                | (Dispatched, Shipped)
                | (Shipped, Verified)
                | (Shipped, Regressed)
                | (Verified, Regressed)
                | (Regressed, Dispatched)
        ) || (to == Ignored && self != Ignored)
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

/// One failed agent run, attributed to its root cause (issue 3, item 2).
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
    pub signal: serde_json::Value,
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
}

/// An issue row: all failures sharing a fingerprint.
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
    pub classified_at: Option<i64>,
    pub dispatched_at: Option<i64>,
    pub shipped_at: Option<i64>,
    pub shipped_version: Option<String>,
    pub verified_at: Option<i64>,
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
}

/// Which issues `list_issues` returns; `None` matches everything. Newest `last_seen` first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssueFilter {
    pub class: Option<String>,
    pub state: Option<IssueState>,
    pub agent: Option<String>,
    /// At most this many (default 500).
    pub limit: Option<u32>,
}

impl IssueFilter {
    pub(crate) fn limit(&self) -> i64 {
        i64::from(self.limit.unwrap_or(500))
    }
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
}

/// The idempotency key of one dispatch: issue id + cycle + sink.
pub fn idempotency_key(issue_id: i64, cycle: i64, sink: &str) -> String {
    format!("{issue_id}:{cycle}:{sink}")
}

pub(crate) fn truncate_error(error: &str) -> &str {
    if error.len() <= MAX_ERROR_LEN {
        return error;
    }
    let mut end = MAX_ERROR_LEN;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    &error[..end]
}

/// The store of issues, occurrences, transitions and the dispatch outbox.
#[async_trait]
pub trait Store: Send + Sync {
    /// `"sqlite"` or `"postgres"`.
    fn backend(&self) -> &'static str;

    /// The highest migration version applied.
    async fn schema_version(&self) -> Result<i64>;

    /// Upserts the issue by fingerprint and stores the occurrence, in one transaction.
    /// A recurrence of a shipped or verified issue moves it to `regressed` and starts a new cycle.
    async fn record_failure(&self, record: &FailureRecord) -> Result<RecordOutcome>;

    /// Moves an issue to `to` if the lifecycle allows it, stamping the state's time
    /// (`dispatched_at`, `shipped_at` with `shipped_version`, `verified_at`) and storing the transition.
    /// Moving to `regressed` starts a new cycle.
    async fn transition(
        &self,
        issue_id: i64,
        to: IssueState,
        at: i64,
        reason: &str,
        shipped_version: Option<&str>,
    ) -> Result<Transition>;

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
    async fn claim_due_dispatches(
        &self,
        now: i64,
        limit: u32,
        lease_ms: i64,
    ) -> Result<Vec<Dispatch>>;

    /// Marks a dispatch delivered. Delivering twice is not an error; the first time stamp stays.
    async fn mark_delivered(&self, dispatch_id: i64, at: i64) -> Result<()>;

    /// Records a failed attempt and when to try again.
    async fn mark_failed(&self, dispatch_id: i64, next_attempt_at: i64, error: &str) -> Result<()>;

    /// The issue with its seen agents/services/versions, sample trace ids,
    /// `recent` most recent occurrences and all transitions; `None` if there is no such issue.
    async fn get_issue(&self, issue_id: i64, recent: u32) -> Result<Option<IssueDetail>>;

    /// Issues matching `filter`, newest `last_seen` first.
    async fn list_issues(&self, filter: &IssueFilter) -> Result<Vec<Issue>>;
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
