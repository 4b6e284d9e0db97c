//! The embedded SQLite store: one connection on its own thread, every write in an immediate
//! transaction.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

mod triage;

use async_trait::async_trait;
use rusqlite::config::DbConfig;
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use super::{
    dispatch_payload, idempotency_key, is_regression, parse_source, record_version, truncate_error,
    validate_batch, validate_sinks, validate_version_key, verification_bounds, Batch, Context,
    Dispatch, Enqueued, FailureRecord, Issue, IssueCount, IssueDetail, IssueFilter, IssueState,
    Occurrence, RecordOutcome, Result, ShippedFix, Store, StoreError, Transition, DISPATCH_COLS,
    GIVEN_UP, ISSUE_COLS, MAX_DISPATCHES_LISTED, OCCURRENCE_COLS, SAMPLE_CAP,
};
use super::{
    kept_detail, prune_sql, BucketCount, JudgementRecord, LabelRow, QueueItem, QueueReason,
    Relabel, RelabelOutcome, StoredFailure,
};

/// Versioned migrations, applied in order; never edit one that has shipped, add a new version.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/sqlite/0001_init.sql")),
    (2, include_str!("migrations/sqlite/0002_remediation.sql")),
    (
        3,
        include_str!("migrations/sqlite/0003_samples_from_occurrences.sql"),
    ),
    (4, include_str!("migrations/sqlite/0004_triage.sql")),
    (5, include_str!("migrations/sqlite/0005_retention.sql")),
];

/// SQLite-backed `Store`.
pub struct SqliteStore {
    path: PathBuf,
    /// Work for the connection's thread; it ends when this sender is dropped.
    jobs: tokio::sync::mpsc::Sender<Job>,
    known: Arc<Mutex<Known>>,
}

/// One piece of work on the connection.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Jobs waiting for the connection's thread.
const JOB_QUEUE: usize = 1024;

/// Runs jobs on `conn` until every sender is gone. A job that panics is logged; its
/// transaction was rolled back when it unwound.
fn serve_connection(mut conn: Connection, mut jobs: tokio::sync::mpsc::Receiver<Job>) {
    while let Some(job) = jobs.blocking_recv() {
        let run = std::panic::AssertUnwindSafe(|| job(&mut conn));
        if std::panic::catch_unwind(run).is_err() {
            tracing::error!("a SQLite store job panicked; its transaction was rolled back");
        }
    }
}

/// Most keys `Known` holds per set before it starts over.
const KNOWN_CAP: usize = 50_000;

/// Rows of insert-only tables this process has seen committed, so a recurrence can skip
/// re-inserting them: (service, version) in `service_versions`, (issue, version) in
/// `issue_seen`. Filled only after a commit; bounded (cleared at `KNOWN_CAP`).
/// Keyed in two levels so that a lookup borrows its key (no copy of it per failure).
#[derive(Default)]
struct Known {
    /// service → versions.
    versions: HashMap<String, HashSet<String>>,
    /// Keys in `versions`.
    n_versions: usize,
    /// issue id → versions.
    issue_versions: HashMap<i64, HashSet<String>>,
    /// Keys in `issue_versions`.
    n_issue_versions: usize,
}

impl Known {
    fn has_version(&self, service: &str, version: &str) -> bool {
        self.versions
            .get(service)
            .is_some_and(|vs| vs.contains(version))
    }

    fn has_issue_version(&self, issue_id: i64, version: &str) -> bool {
        self.issue_versions
            .get(&issue_id)
            .is_some_and(|vs| vs.contains(version))
    }

    fn add(&mut self, new: NewKeys) {
        if self.n_versions + new.versions.len() > KNOWN_CAP {
            self.versions.clear();
            self.n_versions = 0;
        }
        if self.n_issue_versions + new.issue_versions.len() > KNOWN_CAP {
            self.issue_versions.clear();
            self.n_issue_versions = 0;
        }
        for (service, version) in new.versions {
            if self.versions.entry(service).or_default().insert(version) {
                self.n_versions += 1;
            }
        }
        for (issue_id, version) in new.issue_versions {
            if self
                .issue_versions
                .entry(issue_id)
                .or_default()
                .insert(version)
            {
                self.n_issue_versions += 1;
            }
        }
    }
}

/// Keys a transaction inserted, for `Known` once it commits.
#[derive(Default)]
struct NewKeys {
    versions: Vec<(String, String)>,
    issue_versions: Vec<(i64, String)>,
}

impl SqliteStore {
    /// Opens (creating the parent directory and the file if needed) and migrates the database at `path`.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let p = path.clone();
        let conn = tokio::task::spawn_blocking(move || open_blocking(&p))
            .await
            .map_err(|e| StoreError::backend("opening SQLite store", e))??;
        let (jobs, rx) = tokio::sync::mpsc::channel(JOB_QUEUE);
        std::thread::Builder::new()
            .name("triage-sqlite".into())
            .spawn(move || serve_connection(conn, rx))
            .map_err(|e| StoreError::backend("starting the SQLite store thread", e))?;
        Ok(SqliteStore {
            path,
            jobs,
            known: Arc::default(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the connection on the store's thread.
    async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |c| {
            let _ = tx.send(f(c));
        });
        let stopped = || StoreError::backend("SQLite store", "its thread has stopped");
        self.jobs.send(job).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

/// Runs a statement through the connection's statement cache (parsing SQL costs more than
/// running these small statements).
fn exec<P: rusqlite::Params>(c: &Connection, sql: &str, params: P) -> rusqlite::Result<usize> {
    c.prepare_cached(sql)?.execute(params)
}

/// `query_row` through the statement cache.
fn row<T, P: rusqlite::Params>(
    c: &Connection,
    sql: &str,
    params: P,
    f: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    c.prepare_cached(sql)?.query_row(params, f)
}

/// The statements of one `record_failures` transaction, each taken from the connection's cache
/// once per batch instead of once per failure: taking a statement from rusqlite's cache and
/// giving it back trims, hashes and copies its SQL text each time, which costs about as much as
/// running these small statements. Each statement is reset after every use (as `exec` and
/// `row` leave it) and goes back to the cache when this is dropped, before the commit.
struct Stmts<'c> {
    conn: &'c Connection,
    /// Statements by their SQL (the same `&'static str`, compared by address).
    held: Vec<(&'static str, rusqlite::CachedStatement<'c>)>,
}

impl<'c> Stmts<'c> {
    fn new(conn: &'c Connection) -> Self {
        Stmts {
            conn,
            held: Vec::with_capacity(8),
        }
    }

    fn get(&mut self, sql: &'static str) -> rusqlite::Result<&mut rusqlite::CachedStatement<'c>> {
        let i = match self.held.iter().position(|(s, _)| std::ptr::eq(*s, sql)) {
            Some(i) => i,
            None => {
                let stmt = self.conn.prepare_cached(sql)?;
                self.held.push((sql, stmt));
                self.held.len() - 1
            }
        };
        Ok(&mut self.held[i].1)
    }

    /// `exec` on the batch's statement.
    fn exec<P: rusqlite::Params>(
        &mut self,
        sql: &'static str,
        params: P,
    ) -> rusqlite::Result<usize> {
        self.get(sql)?.execute(params)
    }

    /// `row` on the batch's statement.
    fn row<T, P: rusqlite::Params>(
        &mut self,
        sql: &'static str,
        params: P,
        f: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.get(sql)?.query_row(params, f)
    }
}

fn open_blocking(path: &Path) -> Result<Connection> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::backend(
                format!("creating directory {} for the SQLite store", dir.display()),
                e,
            )
        })?;
    }
    let what = format!("opening SQLite database {}", path.display());
    let mut conn = Connection::open(path).ctx(&what)?;
    conn.set_prepared_statement_cache_capacity(64);
    // Plans that do not depend on bound values: otherwise SQLite re-prepares a cached statement
    // whenever a value its plan looked at is bound again (every `LIMIT ?` does), which costs
    // more than running it.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .ctx(&what)?;
    // WAL with synchronous=NORMAL survives a process crash (kill -9); FULL would also survive power loss.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
    )
    .ctx(&what)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .ctx(&what)?;
    migrate(&mut conn)
        .map_err(|e| StoreError::backend(format!("migrating {}", path.display()), e))?;
    Ok(conn)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .ctx("starting migration transaction")?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    INTEGER PRIMARY KEY,
             applied_at INTEGER NOT NULL
         )",
    )
    .ctx("creating schema_migrations")?;
    let current: i64 = tx
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )
        .ctx("reading schema version")?;
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.execute_batch(sql)
            .ctx(&format!("applying migration {version}"))?;
        exec(
            &tx,
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
            params![version, now_ms()],
        )
        .ctx(&format!("recording migration {version}"))?;
    }
    tx.commit().ctx("committing migrations")
}

fn state_col(row: &Row, idx: usize) -> rusqlite::Result<IssueState> {
    let s: String = row.get(idx)?;
    s.parse().map_err(|e: StoreError| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, e.into())
    })
}

fn source_col(row: &Row, idx: usize) -> rusqlite::Result<crate::classify::Source> {
    let s: String = row.get(idx)?;
    parse_source(&s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, e.into())
    })
}

fn json_col(row: &Row, idx: usize) -> rusqlite::Result<serde_json::Value> {
    let s: String = row.get(idx)?;
    serde_json::from_str(&s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, e.into())
    })
}

fn issue_row(r: &Row) -> rusqlite::Result<Issue> {
    Ok(Issue {
        id: r.get(0)?,
        fingerprint: r.get(1)?,
        class: r.get(2)?,
        source: source_col(r, 3)?,
        confidence: r.get(4)?,
        agent: r.get(5)?,
        service: r.get(6)?,
        remediation: r.get(7)?,
        state: state_col(r, 8)?,
        cycle: r.get(9)?,
        occurrences: r.get(10)?,
        first_seen: r.get(11)?,
        last_seen: r.get(12)?,
        classified_at: r.get(13)?,
        dispatched_at: r.get(14)?,
        shipped_at: r.get(15)?,
        shipped_version: r.get(16)?,
        verified_at: r.get(17)?,
        cycle_started_at: r.get(18)?,
    })
}

fn occurrence_row(r: &Row) -> rusqlite::Result<Occurrence> {
    Ok(Occurrence {
        id: r.get(0)?,
        issue_id: r.get(1)?,
        trace_id: r.get(2)?,
        root_span_id: r.get(3)?,
        class: r.get(4)?,
        source: source_col(r, 5)?,
        confidence: r.get(6)?,
        agent: r.get(7)?,
        service: r.get(8)?,
        service_version: r.get(9)?,
        observed_at: r.get(10)?,
        signal: json_col(r, 11)?,
        rule: r.get(12)?,
        queue_reason: reason_col(r, 13)?,
        resolved_at: r.get(14)?,
        resolved_by: r.get(15)?,
    })
}

fn reason_col(row: &Row, idx: usize) -> rusqlite::Result<Option<QueueReason>> {
    let s: Option<String> = row.get(idx)?;
    s.map(|s| QueueReason::parse(&s)).transpose().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, e.into())
    })
}

fn dispatch_row(r: &Row) -> rusqlite::Result<Dispatch> {
    Ok(Dispatch {
        id: r.get(0)?,
        issue_id: r.get(1)?,
        cycle: r.get(2)?,
        sink: r.get(3)?,
        idempotency_key: r.get(4)?,
        payload: json_col(r, 5)?,
        attempts: r.get(6)?,
        created_at: r.get(7)?,
        next_attempt_at: r.get(8)?,
        delivered_at: r.get(9)?,
        last_error: r.get(10)?,
        superseded_at: r.get(11)?,
    })
}

fn transition_row(r: &Row) -> rusqlite::Result<Transition> {
    let from: Option<String> = r.get(1)?;
    let from_state = match from {
        Some(s) => Some(s.parse().map_err(|e: StoreError| {
            rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, e.into())
        })?),
        None => None,
    };
    Ok(Transition {
        issue_id: r.get(0)?,
        from_state,
        to_state: state_col(r, 2)?,
        cycle: r.get(3)?,
        at: r.get(4)?,
        reason: r.get(5)?,
    })
}

fn insert_transition(c: &Connection, t: &Transition) -> Result<()> {
    exec(
        c,
        "INSERT INTO transitions (issue_id, from_state, to_state, cycle, at, reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            t.issue_id,
            t.from_state.map(IssueState::as_str),
            t.to_state.as_str(),
            t.cycle,
            t.at,
            t.reason
        ],
    )
    .ctx("storing transition")?;
    Ok(())
}

/// Inserts an outbox row unless its idempotency key exists; the new row's id if it was inserted.
fn insert_dispatch(
    c: &Connection,
    issue_id: i64,
    cycle: i64,
    sink: &str,
    payload: &str,
    now: i64,
) -> Result<Option<i64>> {
    row(
        c,
        "INSERT INTO outbox (issue_id, cycle, sink, idempotency_key, payload,
                             attempts, created_at, next_attempt_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?6)
         ON CONFLICT (idempotency_key) DO NOTHING
         RETURNING id",
        params![
            issue_id,
            cycle,
            sink,
            idempotency_key(issue_id, cycle, sink),
            payload,
            now
        ],
        |r| r.get(0),
    )
    .optional()
    .ctx("enqueueing dispatch")
}

/// Records (service, version) as seen at `at` unless known; returns its first-seen time.
fn version_seen(c: &Connection, service: &str, version: &str, at: i64) -> Result<i64> {
    exec(
        c,
        "INSERT INTO service_versions (service, version, first_seen) VALUES (?1, ?2, ?3)
         ON CONFLICT (service, version) DO NOTHING",
        params![service, version, at],
    )
    .ctx("recording service version")?;
    row(
        c,
        "SELECT first_seen FROM service_versions WHERE service = ?1 AND version = ?2",
        params![service, version],
        |r| r.get(0),
    )
    .ctx("reading service version")
}

fn first_seen_of(c: &Connection, service: &str, version: Option<&str>) -> Result<Option<i64>> {
    let Some(version) = version else {
        return Ok(None);
    };
    row(
        c,
        "SELECT first_seen FROM service_versions WHERE service = ?1 AND version = ?2",
        params![service, version],
        |r| r.get(0),
    )
    .optional()
    .ctx("reading service version")
}

/// The fix an issue shipped, as it stands now (what a recurrence is weighed against).
struct Shipped {
    service: String,
    /// `None` only for rows that never went through `transition(.., Shipped, ..)`: then every
    /// recurrence counts as after the ship.
    at: Option<i64>,
    version: Option<String>,
}

/// Whether `rec` (on `version`) is a regression of the issue's shipped fix (`is_regression`).
fn regresses(
    c: &Connection,
    shipped: &Shipped,
    rec: &FailureRecord,
    version: Option<&str>,
) -> Result<bool> {
    let shipped_version = shipped.version.as_deref();
    let fix = ShippedFix {
        at: shipped.at.unwrap_or(i64::MIN),
        version: shipped_version,
        version_first_seen: first_seen_of(c, &shipped.service, shipped_version)?,
    };
    let version_first_seen = match shipped_version {
        Some(_) => first_seen_of(c, &shipped.service, version)?,
        None => None,
    };
    Ok(is_regression(
        &fix,
        rec.observed_at,
        version,
        version_first_seen,
    ))
}

fn dispatches_of(c: &Connection, issue_id: i64) -> Result<Vec<Dispatch>> {
    c.prepare_cached(&format!(
        "SELECT {DISPATCH_COLS} FROM (SELECT {DISPATCH_COLS} FROM outbox WHERE issue_id = ?1
                                      ORDER BY id DESC LIMIT ?2)
         ORDER BY id"
    ))
    .and_then(|mut s| {
        s.query_map(params![issue_id, MAX_DISPATCHES_LISTED], dispatch_row)?
            .collect::<rusqlite::Result<Vec<_>>>()
    })
    .ctx("reading dispatches")
}

fn record_blocking(
    conn: &mut Connection,
    known: &Mutex<Known>,
    rec: &FailureRecord,
    sinks: &[String],
    now: i64,
) -> Result<RecordOutcome> {
    let mut outcomes =
        record_batch_blocking(conn, known, std::slice::from_ref(&(rec, sinks)), now)?;
    Ok(outcomes.remove(0))
}

/// Records a batch in one transaction: all or nothing. A fingerprint's later failures in the
/// batch are folded into its issue: one issue update per fingerprint per batch (at the end),
/// while each failure still gets its occurrence row and its exact outcome.
fn record_batch_blocking<R, S>(
    conn: &mut Connection,
    known: &Mutex<Known>,
    batch: &[(R, S)],
    now: i64,
) -> Result<Vec<RecordOutcome>>
where
    R: std::borrow::Borrow<FailureRecord>,
    S: AsRef<[String]>,
{
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .ctx("starting record_failures transaction")?;
    let mut new = NewKeys::default();
    let mut seq = UnusedIds::default();
    let outcomes = {
        let mut st = Stmts::new(&tx);
        let known = known.lock().unwrap_or_else(|p| p.into_inner());
        let mut runs: HashMap<&str, IssueRun> = HashMap::new();
        let mut outcomes = Vec::with_capacity(batch.len());
        for (rec, sinks) in batch {
            let rec = rec.borrow();
            let outcome = match runs.get_mut(rec.fingerprint.as_str()) {
                Some(run) if !run.state.regresses_on_recurrence() => {
                    fold_in(&mut st, &known, &mut new, run, rec)?
                }
                _ => {
                    let (outcome, run) = record_in(
                        &mut st,
                        &known,
                        &mut new,
                        &mut seq,
                        rec,
                        sinks.as_ref(),
                        now,
                    )?;
                    if let Some(old) = runs.insert(rec.fingerprint.as_str(), run) {
                        flush_run(&mut st, &old)?;
                    }
                    outcome
                }
            };
            outcomes.push(outcome);
        }
        for run in runs.values() {
            flush_run(&mut st, run)?;
        }
        seq.flush(&mut st)?;
        outcomes
    };
    tx.commit().ctx("committing record_failures")?;
    known.lock().unwrap_or_else(|p| p.into_inner()).add(new);
    Ok(outcomes)
}

/// AUTOINCREMENT ids of `issues` that recurrences recorded by `record_in` would have used up as
/// upserts (SQLite advances `sqlite_sequence` on an upsert's conflict too), not yet added to
/// `sqlite_sequence`: added before the next new issue and at the end of the batch, so issue ids
/// stay as the upserts left them.
#[derive(Default)]
struct UnusedIds {
    unused: i64,
}

impl UnusedIds {
    fn flush(&mut self, st: &mut Stmts) -> Result<()> {
        if self.unused > 0 {
            st.exec(
                "UPDATE sqlite_sequence SET seq = seq + ?1 WHERE name = 'issues'",
                params![self.unused],
            )
            .ctx("advancing the issue id sequence")?;
            self.unused = 0;
        }
        Ok(())
    }
}

/// An issue as this batch left it: what a later failure of its fingerprint in the same batch
/// needs, and the recurrences folded in since its row was last written.
struct IssueRun {
    id: i64,
    state: IssueState,
    cycle: i64,
    occurrences: i64,
    /// The issue row's own agent and service.
    agent: String,
    service: String,
    source: crate::classify::Source,
    /// Recurrences not yet written to the issue row, and the span of their `observed_at`.
    folded: i64,
    first: i64,
    last: i64,
}

/// Writes the recurrences folded into `run` to its issue row, as that many upserts would have.
fn flush_run(st: &mut Stmts, run: &IssueRun) -> Result<()> {
    if run.folded == 0 {
        return Ok(());
    }
    st.exec(
        "UPDATE issues SET occurrences = occurrences + ?2,
                first_seen = MIN(first_seen, ?3),
                last_seen = MAX(last_seen, ?4),
                cycle_started_at = CASE WHEN cycle = 1 THEN MIN(cycle_started_at, ?3)
                                        ELSE cycle_started_at END
         WHERE id = ?1",
        params![run.id, run.folded, run.first, run.last],
    )
    .ctx("updating issue with its recurrences")?;
    Ok(())
}

/// A recurrence of an issue already written in this batch, in a state a recurrence does not
/// change (not shipped or verified): its occurrence and seen values now, the issue row's count
/// and times with the batch's other recurrences (`flush_run`).
fn fold_in(
    st: &mut Stmts,
    known: &Known,
    new: &mut NewKeys,
    run: &mut IssueRun,
    rec: &FailureRecord,
) -> Result<RecordOutcome> {
    run.occurrences += 1;
    if run.folded == 0 {
        (run.first, run.last) = (rec.observed_at, rec.observed_at);
    } else {
        run.first = run.first.min(rec.observed_at);
        run.last = run.last.max(rec.observed_at);
    }
    run.folded += 1;
    record_service_version(st, known, new, rec)?;
    let failure_id = insert_occurrence(st, run.id, rec, false)?;
    insert_seen(st, known, new, run.id, rec, false, &run.agent, &run.service)?;
    Ok(RecordOutcome {
        issue_id: run.id,
        new_issue: false,
        regressed: false,
        occurrences: run.occurrences,
        cycle: run.cycle,
        state: run.state,
        dispatches_enqueued: 0,
        issue_source: run.source,
        failure_id,
    })
}

/// Records (service, version) of `rec` as seen unless this process knows it is stored.
fn record_service_version(
    st: &mut Stmts,
    known: &Known,
    new: &mut NewKeys,
    rec: &FailureRecord,
) -> Result<()> {
    let Some(v) = record_version(rec) else {
        return Ok(());
    };
    let fresh = |(s, x): &(String, String)| *s == rec.service && x == v;
    if !known.has_version(&rec.service, v) && !new.versions.iter().any(fresh) {
        st.exec(
            "INSERT INTO service_versions (service, version, first_seen) VALUES (?1, ?2, ?3)
             ON CONFLICT (service, version) DO NOTHING",
            params![rec.service, v, rec.observed_at],
        )
        .ctx("recording service version")?;
        new.versions.push((rec.service.clone(), v.to_string()));
    }
    Ok(())
}

/// Stores the occurrence of `rec` under `issue_id` (with its detail and feature tokens when
/// kept, see `kept_detail`); returns its id.
fn insert_occurrence(
    st: &mut Stmts,
    issue_id: i64,
    rec: &FailureRecord,
    opens: bool,
) -> Result<i64> {
    let signal = rec.signal.get();
    let (detail, features) = kept_detail(rec, opens)?;
    st.exec(
        "INSERT INTO occurrences (issue_id, trace_id, root_span_id, class, source, confidence,
                                  agent, service, service_version, observed_at, signal, rule,
                                  queue_reason, detail, features)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        params![
            issue_id,
            rec.trace_id,
            rec.root_span_id,
            rec.class,
            rec.source.as_str(),
            rec.confidence,
            rec.agent,
            rec.service,
            rec.service_version,
            rec.observed_at,
            signal,
            rec.rule,
            rec.queue_reason.map(QueueReason::as_str),
            detail,
            features
        ],
    )
    .ctx("storing occurrence")?;
    Ok(st.conn.last_insert_rowid())
}

/// Stores the agent, service and version of `rec` as seen on its issue. The issue row's own
/// agent and service (`issue_agent`, `issue_service`) were stored with its first occurrence;
/// most recurrences repeat them, so only other values cost a write.
#[allow(clippy::too_many_arguments)]
fn insert_seen(
    st: &mut Stmts,
    known: &Known,
    new: &mut NewKeys,
    issue_id: i64,
    rec: &FailureRecord,
    new_issue: bool,
    issue_agent: &str,
    issue_service: &str,
) -> Result<()> {
    let agent = (new_issue || rec.agent != issue_agent).then_some(("agent", rec.agent.as_str()));
    let service =
        (new_issue || rec.service != issue_service).then_some(("service", rec.service.as_str()));
    let version = rec.service_version.as_deref().filter(|v| {
        !known.has_issue_version(issue_id, v)
            && !new
                .issue_versions
                .iter()
                .any(|(i, x)| *i == issue_id && x == v)
    });
    if let Some(v) = version {
        new.issue_versions.push((issue_id, v.to_string()));
    }
    for (kind, value) in [agent, service, version.map(|v| ("version", v))]
        .into_iter()
        .flatten()
    {
        st.exec(
            "INSERT INTO issue_seen (issue_id, kind, value) VALUES (?1, ?2, ?3)
             ON CONFLICT DO NOTHING",
            params![issue_id, kind, value],
        )
        .ctx("storing seen agent/service/version")?;
    }
    Ok(())
}

/// One failure's writes inside the caller's transaction, upserting its issue; returns the
/// outcome and the issue as this failure left it.
fn record_in(
    st: &mut Stmts,
    known: &Known,
    new: &mut NewKeys,
    seq: &mut UnusedIds,
    rec: &FailureRecord,
    sinks: &[String],
    now: i64,
) -> Result<(RecordOutcome, IssueRun)> {
    // The issue as it was before this record: the write lock is held (IMMEDIATE), so no one
    // else inserts the fingerprint in between. A SELECT and an UPDATE by id cost less than an
    // upsert with RETURNING (SQLite buffers RETURNING rows in an ephemeral table).
    #[allow(clippy::type_complexity)]
    let held: Option<(i64, String, i64, i64, Shipped, String, crate::classify::Source)> = st
        .row(
        "SELECT id, state, cycle, occurrences, service, shipped_at, shipped_version, agent, source
         FROM issues WHERE fingerprint = ?1",
        params![rec.fingerprint],
        |r| {
            let shipped = Shipped {
                service: r.get(4)?,
                at: r.get(5)?,
                version: r.get(6)?,
            };
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                shipped,
                r.get(7)?,
                source_col(r, 8)?,
            ))
        },
    )
    .optional()
    .ctx("reading issue")?;
    let (issue_id, prev_state, mut cycle, occurrences, shipped, issue_agent, issue_source) =
        match held {
            Some((id, state, cycle, occurrences, shipped, agent, source)) => {
                let state: IssueState = state.parse()?;
                st.exec(
                    "UPDATE issues SET occurrences = occurrences + 1,
                         first_seen = MIN(first_seen, ?2),
                         last_seen = MAX(last_seen, ?2),
                         cycle_started_at = CASE WHEN cycle = 1 THEN MIN(cycle_started_at, ?2)
                                                 ELSE cycle_started_at END
                     WHERE id = ?1",
                    params![id, rec.observed_at],
                )
                .ctx("updating issue")?;
                // The upsert this replaces used up an AUTOINCREMENT id on its conflict.
                seq.unused += 1;
                (id, state, cycle, occurrences + 1, shipped, agent, source)
            }
            None => {
                seq.flush(st)?;
                st.exec(
                    "INSERT INTO issues (fingerprint, class, source, confidence, agent, service,
                                         remediation, state, cycle, occurrences, first_seen,
                                         last_seen, classified_at, cycle_started_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'open', 1, 1, ?8, ?8, ?9, ?8)",
                    params![
                        rec.fingerprint,
                        rec.class,
                        rec.source.as_str(),
                        rec.confidence,
                        rec.agent,
                        rec.service,
                        rec.remediation,
                        rec.observed_at,
                        now
                    ],
                )
                .ctx("inserting issue")?;
                let shipped = Shipped {
                    service: rec.service.clone(),
                    at: None,
                    version: None,
                };
                (
                    st.conn.last_insert_rowid(),
                    IssueState::Open,
                    1,
                    1,
                    shipped,
                    rec.agent.clone(),
                    rec.source,
                )
            }
        };
    let version = record_version(rec);
    record_service_version(st, known, new, rec)?;
    let new_issue = occurrences == 1;
    let mut state = prev_state;
    let mut regressed = false;
    if new_issue {
        insert_transition(
            st.conn,
            &Transition {
                issue_id,
                from_state: None,
                to_state: IssueState::Open,
                cycle,
                at: rec.observed_at,
                reason: "first occurrence".into(),
            },
        )?;
    } else if prev_state.regresses_on_recurrence() && regresses(st.conn, &shipped, rec, version)? {
        cycle += 1;
        state = IssueState::Regressed;
        regressed = true;
        exec(
            st.conn,
            "UPDATE issues SET state = 'regressed', cycle = ?2, cycle_started_at = ?3,
                 classified_at = ?4, dispatched_at = NULL, shipped_at = NULL, verified_at = NULL
             WHERE id = ?1",
            params![issue_id, cycle, rec.observed_at, now],
        )
        .ctx("marking issue regressed")?;
        insert_transition(
            st.conn,
            &Transition {
                issue_id,
                from_state: Some(prev_state),
                to_state: IssueState::Regressed,
                cycle,
                at: rec.observed_at,
                reason: format!(
                    "recurred in trace {} on version {}",
                    rec.trace_id,
                    version.unwrap_or("(none)")
                ),
            },
        )?;
    }
    let mut dispatches_enqueued = 0;
    if new_issue || regressed {
        let payload = serde_json::to_string(&dispatch_payload(rec, cycle)?)
            .map_err(|e| StoreError::backend("serializing dispatch payload", e))?;
        for sink in sinks {
            if insert_dispatch(st.conn, issue_id, cycle, sink, &payload, rec.observed_at)?.is_some()
            {
                dispatches_enqueued += 1;
            }
        }
    }
    let failure_id = insert_occurrence(st, issue_id, rec, new_issue || regressed)?;
    insert_seen(
        st,
        known,
        new,
        issue_id,
        rec,
        new_issue,
        &issue_agent,
        &shipped.service,
    )?;
    let outcome = RecordOutcome {
        issue_id,
        new_issue,
        regressed,
        occurrences,
        cycle,
        state,
        dispatches_enqueued,
        issue_source,
        failure_id,
    };
    let run = IssueRun {
        id: issue_id,
        state,
        cycle,
        occurrences,
        agent: issue_agent,
        service: shipped.service,
        source: issue_source,
        folded: 0,
        first: rec.observed_at,
        last: rec.observed_at,
    };
    Ok((outcome, run))
}

fn transition_blocking(
    conn: &mut Connection,
    issue_id: i64,
    to: IssueState,
    at: i64,
    reason: &str,
    shipped_version: Option<&str>,
) -> Result<Transition> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .ctx("starting transition transaction")?;
    let (from, cycle, current_version): (String, i64, Option<String>) = tx
        .query_row(
            "SELECT state, cycle, shipped_version FROM issues WHERE id = ?1",
            params![issue_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .ctx("reading issue state")?
        .ok_or(StoreError::IssueNotFound(issue_id))?;
    let from: IssueState = from.parse()?;
    if !from.can_move_to(to)
        || IssueState::version_refuses(from, to, current_version.as_deref(), shipped_version)
    {
        return Err(StoreError::InvalidTransition { issue_id, from, to });
    }
    let cycle = if to == IssueState::Regressed {
        cycle + 1
    } else {
        cycle
    };
    exec(
        &tx,
        "UPDATE issues SET state = ?2, cycle = ?3,
             cycle_started_at = CASE WHEN ?2 = 'regressed' THEN ?4 ELSE cycle_started_at END,
             classified_at = CASE WHEN ?2 = 'regressed' THEN ?4 ELSE classified_at END,
             dispatched_at = CASE WHEN ?2 = 'dispatched' THEN ?4
                                  WHEN ?2 = 'regressed' THEN NULL ELSE dispatched_at END,
             shipped_at = CASE WHEN ?2 = 'shipped' THEN ?4
                               WHEN ?2 = 'regressed' THEN NULL ELSE shipped_at END,
             shipped_version = CASE WHEN ?2 = 'shipped' THEN ?5 ELSE shipped_version END,
             verified_at = CASE WHEN ?2 = 'verified' THEN ?4
                                WHEN ?2 = 'regressed' THEN NULL ELSE verified_at END
         WHERE id = ?1",
        params![issue_id, to.as_str(), cycle, at, shipped_version],
    )
    .ctx("updating issue state")?;
    let t = Transition {
        issue_id,
        from_state: Some(from),
        to_state: to,
        cycle,
        at,
        reason: reason.to_string(),
    };
    insert_transition(&tx, &t)?;
    tx.commit().ctx("committing transition")?;
    Ok(t)
}

fn get_issue_blocking(
    conn: &mut Connection,
    issue_id: i64,
    recent: u32,
) -> Result<Option<IssueDetail>> {
    let tx = conn.transaction().ctx("starting read transaction")?;
    let issue = tx
        .query_row(
            &format!("SELECT {ISSUE_COLS} FROM issues WHERE id = ?1"),
            params![issue_id],
            issue_row,
        )
        .optional()
        .ctx("reading issue")?;
    let Some(issue) = issue else {
        return Ok(None);
    };
    let (mut agents, mut services, mut versions) = (Vec::new(), Vec::new(), Vec::new());
    {
        let mut stmt = tx
            .prepare_cached(
                "SELECT kind, value FROM issue_seen WHERE issue_id = ?1 ORDER BY kind, value",
            )
            .ctx("reading seen values")?;
        let rows = stmt
            .query_map(params![issue_id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .ctx("reading seen values")?;
        for row in rows {
            let (kind, value) = row.ctx("reading seen values")?;
            match kind.as_str() {
                "agent" => agents.push(value),
                "service" => services.push(value),
                _ => versions.push(value),
            }
        }
    }
    let sample_trace_ids = tx
        .prepare_cached(
            "SELECT trace_id FROM occurrences WHERE issue_id = ?1
             ORDER BY observed_at DESC, id DESC LIMIT ?2",
        )
        .and_then(|mut s| {
            s.query_map(params![issue_id, SAMPLE_CAP], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()
        })
        .ctx("reading trace samples")?;
    let recent_occurrences = tx
        .prepare_cached(&format!(
            "SELECT {OCCURRENCE_COLS} FROM occurrences WHERE issue_id = ?1
             ORDER BY observed_at DESC, id DESC LIMIT ?2"
        ))
        .and_then(|mut s| {
            s.query_map(params![issue_id, recent], occurrence_row)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .ctx("reading recent occurrences")?;
    let transitions = tx
        .prepare_cached(
            "SELECT issue_id, from_state, to_state, cycle, at, reason FROM transitions
             WHERE issue_id = ?1 ORDER BY id",
        )
        .and_then(|mut s| {
            s.query_map(params![issue_id], transition_row)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .ctx("reading transitions")?;
    let dispatches = dispatches_of(&tx, issue_id)?;
    Ok(Some(IssueDetail {
        issue,
        agents,
        services,
        versions,
        sample_trace_ids,
        recent_occurrences,
        transitions,
        dispatches,
    }))
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn schema_version(&self) -> Result<i64> {
        self.run(|c| {
            row(
                c,
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                [],
                |r| r.get(0),
            )
            .ctx("reading schema version")
        })
        .await
    }

    async fn record_failure(
        &self,
        record: &FailureRecord,
        sinks: &[String],
        now: i64,
    ) -> Result<RecordOutcome> {
        record.validate()?;
        validate_sinks(sinks)?;
        let rec = record.clone();
        let sinks = sinks.to_vec();
        let known = self.known.clone();
        self.run(move |c| record_blocking(c, &known, &rec, &sinks, now))
            .await
    }

    async fn record_failures(&self, batch: Batch, now: i64) -> Result<Vec<RecordOutcome>> {
        validate_batch(&batch)?;
        let known = self.known.clone();
        self.run(move |c| record_batch_blocking(c, &known, &batch, now))
            .await
    }

    async fn record_version_seen(&self, service: &str, version: &str, at: i64) -> Result<i64> {
        validate_version_key(service, version)?;
        let (service, version) = (service.to_string(), version.to_string());
        self.run(move |c| version_seen(c, &service, &version, at))
            .await
    }

    async fn version_first_seen(&self, service: &str, version: &str) -> Result<Option<i64>> {
        let (service, version) = (service.to_string(), version.to_string());
        self.run(move |c| first_seen_of(c, &service, Some(&version)))
            .await
    }

    async fn transition(
        &self,
        issue_id: i64,
        to: IssueState,
        at: i64,
        reason: &str,
        shipped_version: Option<&str>,
    ) -> Result<Transition> {
        let reason = reason.to_string();
        let version = shipped_version.map(str::to_string);
        self.run(move |c| transition_blocking(c, issue_id, to, at, &reason, version.as_deref()))
            .await
    }

    async fn due_for_verification(
        &self,
        now: i64,
        window_ms: i64,
        limit: u32,
    ) -> Result<Vec<Issue>> {
        let (started_by, limit) = verification_bounds(now, window_ms, limit)?;
        self.run(move |c| {
            c.prepare_cached(&format!(
                "SELECT {ISSUE_COLS} FROM (
                     SELECT i.*, CASE WHEN i.shipped_version IS NULL THEN i.shipped_at
                                      WHEN sv.first_seen IS NULL THEN NULL
                                      ELSE MAX(i.shipped_at, sv.first_seen) END AS verify_from
                     FROM issues i LEFT JOIN service_versions sv
                         ON sv.service = i.service AND sv.version = i.shipped_version
                     WHERE i.state = 'shipped' AND i.shipped_at IS NOT NULL) AS shipped
                 WHERE verify_from <= ?1
                 ORDER BY verify_from, id LIMIT ?2"
            ))
            .and_then(|mut s| {
                s.query_map(params![started_by, limit], issue_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .ctx("listing issues due for verification")
        })
        .await
    }

    async fn enqueue_dispatch(
        &self,
        issue_id: i64,
        cycle: i64,
        sink: &str,
        payload: &serde_json::Value,
        now: i64,
    ) -> Result<Enqueued> {
        if sink.is_empty() {
            return Err(StoreError::Invalid("sink name is empty".into()));
        }
        let key = idempotency_key(issue_id, cycle, sink);
        let sink = sink.to_string();
        let payload = serde_json::to_string(payload)
            .map_err(|e| StoreError::backend("serializing dispatch payload", e))?;
        self.run(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .ctx("starting enqueue transaction")?;
            let exists: bool = tx
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM issues WHERE id = ?1)",
                    params![issue_id],
                    |r| r.get(0),
                )
                .ctx("checking issue")?;
            if !exists {
                return Err(StoreError::IssueNotFound(issue_id));
            }
            let inserted = insert_dispatch(&tx, issue_id, cycle, &sink, &payload, now)?;
            let out = match inserted {
                Some(id) => Enqueued {
                    dispatch_id: id,
                    created: true,
                },
                None => Enqueued {
                    dispatch_id: tx
                        .query_row(
                            "SELECT id FROM outbox WHERE idempotency_key = ?1",
                            params![key],
                            |r| r.get(0),
                        )
                        .ctx("reading existing dispatch")?,
                    created: false,
                },
            };
            tx.commit().ctx("committing enqueue")?;
            Ok(out)
        })
        .await
    }

    async fn claim_due_dispatches(
        &self,
        now: i64,
        limit: u32,
        lease_ms: i64,
    ) -> Result<Vec<Dispatch>> {
        // A lease never reaches GIVEN_UP, which would make the row look given up.
        let lease_until = now.saturating_add(lease_ms.max(0)).min(GIVEN_UP - 1);
        self.run(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .ctx("starting claim transaction")?;
            let mut claimed = tx
                .prepare_cached(&format!(
                    "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?2
                     WHERE id IN (SELECT id FROM outbox
                                  WHERE delivered_at IS NULL AND next_attempt_at <= ?1
                                    AND next_attempt_at < ?4
                                  ORDER BY next_attempt_at, id LIMIT ?3)
                     RETURNING {DISPATCH_COLS}"
                ))
                .and_then(|mut s| {
                    s.query_map(params![now, lease_until, limit, GIVEN_UP], dispatch_row)?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .ctx("claiming due dispatches")?;
            tx.commit().ctx("committing claim")?;
            claimed.sort_by_key(|d| d.id);
            Ok(claimed)
        })
        .await
    }

    async fn mark_delivered(&self, dispatch_id: i64, at: i64) -> Result<()> {
        self.run(move |c| {
            let n = c
                .execute(
                    "UPDATE outbox SET delivered_at = COALESCE(delivered_at, ?2), last_error = NULL
                     WHERE id = ?1",
                    params![dispatch_id, at],
                )
                .ctx("marking dispatch delivered")?;
            if n == 0 {
                return Err(StoreError::DispatchNotFound(dispatch_id));
            }
            Ok(())
        })
        .await
    }

    async fn mark_failed(&self, dispatch_id: i64, next_attempt_at: i64, error: &str) -> Result<()> {
        let error = truncate_error(error).to_string();
        self.run(move |c| {
            let n = c
                .execute(
                    "UPDATE outbox SET next_attempt_at = CASE WHEN delivered_at IS NULL THEN ?2
                                                           ELSE next_attempt_at END,
                                       last_error = ?3
                     WHERE id = ?1",
                    params![dispatch_id, next_attempt_at, error],
                )
                .ctx("marking dispatch failed")?;
            if n == 0 {
                return Err(StoreError::DispatchNotFound(dispatch_id));
            }
            Ok(())
        })
        .await
    }

    async fn list_dispatches(&self, issue_id: i64) -> Result<Vec<Dispatch>> {
        self.run(move |c| dispatches_of(c, issue_id)).await
    }

    async fn pending_dispatches(&self) -> Result<i64> {
        self.run(|c| {
            row(
                c,
                "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL AND next_attempt_at < ?1",
                params![GIVEN_UP],
                |r| r.get(0),
            )
            .ctx("counting pending dispatches")
        })
        .await
    }

    async fn get_issue(&self, issue_id: i64, recent: u32) -> Result<Option<IssueDetail>> {
        self.run(move |c| get_issue_blocking(c, issue_id, recent))
            .await
    }

    async fn list_issues(&self, filter: &IssueFilter) -> Result<Vec<Issue>> {
        let f = filter.clone();
        self.run(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {ISSUE_COLS} FROM issues
                     WHERE (?1 IS NULL OR class = ?1) AND (?2 IS NULL OR state = ?2)
                       AND (?3 IS NULL OR agent = ?3)
                     ORDER BY last_seen DESC, id DESC LIMIT ?4"
                ))
                .ctx("listing issues")?;
            let rows = stmt
                .query_map(
                    params![f.class, f.state.map(IssueState::as_str), f.agent, f.limit()],
                    issue_row,
                )
                .ctx("listing issues")?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .ctx("listing issues")
        })
        .await
    }

    async fn count_issues(&self) -> Result<Vec<IssueCount>> {
        self.run(|c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT class, state, COUNT(*) FROM issues
                     GROUP BY class, state ORDER BY class, state",
                )
                .ctx("counting issues")?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(IssueCount {
                        class: r.get(0)?,
                        state: state_col(r, 1)?,
                        count: r.get(2)?,
                    })
                })
                .ctx("counting issues")?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .ctx("counting issues")
        })
        .await
    }

    async fn queue(&self, limit: u32) -> Result<Vec<QueueItem>> {
        self.run(move |c| triage::queue(c, limit)).await
    }

    async fn get_failure(&self, failure_id: i64) -> Result<Option<StoredFailure>> {
        self.run(move |c| triage::get_failure(c, failure_id)).await
    }

    async fn relabel(&self, req: &Relabel) -> Result<RelabelOutcome> {
        let req = req.clone();
        self.run(move |c| triage::relabel(c, &req)).await
    }

    async fn labels_since(&self, after: i64, limit: u32) -> Result<Vec<LabelRow>> {
        self.run(move |c| triage::labels_since(c, after, limit))
            .await
    }

    async fn save_model(
        &self,
        name: &str,
        last_label: i64,
        snapshot: &serde_json::Value,
        at: i64,
    ) -> Result<()> {
        let name = name.to_string();
        let snapshot = snapshot.to_string();
        self.run(move |c| triage::save_model(c, &name, last_label, &snapshot, at))
            .await
    }

    async fn load_model(&self, name: &str) -> Result<Option<(i64, serde_json::Value)>> {
        let name = name.to_string();
        let stored = self.run(move |c| triage::load_model(c, &name)).await?;
        stored
            .map(|(last, text)| {
                serde_json::from_str(&text)
                    .map(|v| (last, v))
                    .map_err(|e| StoreError::backend("reading model snapshot", e))
            })
            .transpose()
    }

    async fn record_judgement(&self, judgement: &JudgementRecord) -> Result<i64> {
        let j = judgement.clone();
        self.run(move |c| triage::record_judgement(c, &j)).await
    }

    async fn failure_counts(&self, from: i64, to: i64, step_ms: i64) -> Result<Vec<BucketCount>> {
        self.run(move |c| triage::failure_counts(c, from, to, step_ms))
            .await
    }

    async fn prune_failures(&self, before: i64, limit: u32) -> Result<u64> {
        static SQL: LazyLock<String> = LazyLock::new(|| prune_sql("?1", "?2"));
        self.run(move |c| {
            exec(c, &SQL, params![before, limit])
                .map(|n| n as u64)
                .ctx("pruning old failures")
        })
        .await
    }
}
