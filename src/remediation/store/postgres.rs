//! The PostgreSQL store, for several instances sharing one database: row locks, upserts and `SKIP LOCKED` claims.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::LazyLock;

pub mod tls;
mod triage;

use async_trait::async_trait;
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::types::Json;
use tokio_postgres::{Client, Config, GenericClient, NoTls, Row, Socket, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{
    dispatch_payload, idempotency_key, is_regression, parse_source, record_version, truncate_error,
    validate_batch, validate_sinks, validate_version_key, verification_bounds, Batch, Context,
    Dispatch, Enqueued, FailureRecord, Issue, IssueCount, IssueDetail, IssueFilter, IssueState,
    Occurrence, RecordOutcome, Result, ShippedFix, Store, StoreError, Transition, DISPATCH_COLS,
    GIVEN_UP, ISSUE_COLS, MAX_DISPATCHES_LISTED, OCCURRENCE_COLS, SAMPLE_CAP,
};
use super::{
    kept_detail, prune_sql, BucketCount, JudgementRecord, LabelRow, QueueItem, QueueReason,
    Relabel, RelabelOutcome, SignalSummary, StoredFailure,
};

/// Versioned migrations, applied in order; never edit one that has shipped, add a new version.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/postgres/0001_init.sql")),
    (2, include_str!("migrations/postgres/0002_remediation.sql")),
    (
        3,
        include_str!("migrations/postgres/0003_samples_from_occurrences.sql"),
    ),
    (4, include_str!("migrations/postgres/0004_triage.sql")),
    (5, include_str!("migrations/postgres/0005_retention.sql")),
];

/// Connections kept open; each runs one transaction at a time.
const POOL_SIZE: usize = 4;

/// Advisory lock key (first half) serialising migrations of one schema across instances.
const MIGRATION_LOCK: i32 = 0x7472_6961; // "tria"

/// PostgreSQL-backed `Store` with a small fixed pool that reconnects lazily.
pub struct PostgresStore {
    config: Config,
    /// TLS as the URL's `sslmode` / `sslrootcert` say (see `tls`).
    tls: MakeRustlsConnect,
    /// For `sslmode` `allow` and `prefer`: the same settings without TLS, tried when the TLS
    /// attempt fails, as libpq does.
    plain: Option<Config>,
    /// The URL with any password removed, for error messages.
    display_url: String,
    pool: Vec<Mutex<Option<PgConn>>>,
    next: AtomicUsize,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://USER@HOST:PORT/DB?options=...`) and applies pending migrations
    /// to the first schema of the connection's `search_path`. TLS follows libpq's `sslmode` and
    /// `sslrootcert` (see `tls`).
    pub async fn connect(url: &str) -> Result<Self> {
        let bad_url = |reason: String| StoreError::Url {
            url: redact(url),
            reason,
        };
        let tls = tls::PgTls::from_url(url, tls::PgTls::libpq_dir().as_deref()).map_err(bad_url)?;
        let config: Config = tls
            .driver_url
            .parse()
            .map_err(|e| bad_url(format!("{e}")))?;
        let plain = tls.falls_back_to_plain().then(|| {
            let mut plain = config.clone();
            plain.ssl_mode(SslMode::Disable);
            plain
        });
        let store = PostgresStore {
            config,
            plain,
            tls: tls.connector().map_err(bad_url)?,
            display_url: redact(url),
            pool: (0..POOL_SIZE).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        };
        let mut conn = store.conn().await?;
        migrate(&mut conn)
            .await
            .map_err(|e| StoreError::backend(format!("migrating {}", store.display_url), e))?;
        drop(conn);
        Ok(store)
    }

    /// A pooled connection, (re)connected if it is missing or closed.
    async fn conn(&self) -> Result<MappedMutexGuard<'_, PgConn>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len();
        let mut slot = self.pool[i].lock().await;
        if slot.as_ref().is_none_or(|c| c.is_closed()) {
            let client = self.open().await?;
            *slot = Some(PgConn {
                client,
                prepared: Prepared::default(),
            });
        }
        MutexGuard::try_map(slot, Option::as_mut)
            .map_err(|_| StoreError::Invalid("PostgreSQL pool slot is empty".into()))
    }

    /// A new connection: with TLS as configured, then (`allow`, `prefer`) in plain text if that
    /// attempt failed.
    async fn open(&self) -> Result<Client> {
        let what = || format!("connecting to PostgreSQL at {}", self.display_url);
        let first = match spawn_connection(&self.config, self.tls.clone()).await {
            Ok(client) => return Ok(client),
            Err(e) => e,
        };
        let Some(plain) = &self.plain else {
            return Err(first).ctx(&what());
        };
        match spawn_connection(plain, NoTls).await {
            Ok(client) => {
                tracing::warn!(error = %first, url = %self.display_url, "PostgreSQL store: the attempt with TLS failed; connected in plain text, as sslmode prefer and allow do (require does not)");
                Ok(client)
            }
            Err(second) => Err(second).ctx(&format!(
                "{} (tried again in plain text, as sslmode prefer and allow do, after: {first})",
                what()
            )),
        }
    }
}

/// Connects with `tls` and runs the connection on its own task.
async fn spawn_connection<T>(
    config: &Config,
    tls: T,
) -> std::result::Result<Client, tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = config.connect(tls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL store connection closed");
        }
    });
    Ok(client)
}

/// A pooled connection and the statements prepared on it (they live as long as it does).
struct PgConn {
    client: Client,
    prepared: Prepared,
}

impl Deref for PgConn {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl DerefMut for PgConn {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

/// The failure write path's statements, prepared once per connection: each then costs one round
/// trip instead of two (a query given as text is prepared anew every time).
#[derive(Default)]
struct Prepared(std::sync::Mutex<HashMap<&'static str, Statement>>);

impl Prepared {
    /// `sql` prepared on the connection `c` belongs to; a failure to prepare it is reported as
    /// a failure of `what` (what executing it does).
    async fn get(
        &self,
        c: &impl GenericClient,
        what: &str,
        sql: &'static str,
    ) -> Result<Statement> {
        let known = self.lock().get(sql).cloned();
        if let Some(st) = known {
            return Ok(st);
        }
        let st = c.prepare(sql).await.ctx(what)?;
        self.lock().insert(sql, st.clone());
        Ok(st)
    }

    /// `sql` through `prepared` when given, else prepared for this one use.
    async fn get_or_prepare(
        prepared: Option<&Prepared>,
        c: &impl GenericClient,
        what: &str,
        sql: &'static str,
    ) -> Result<Statement> {
        match prepared {
            Some(p) => p.get(c, what, sql).await,
            None => c.prepare(sql).await.ctx(what),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<&'static str, Statement>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Drops the password from a URL for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &userinfo[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

async fn migrate(client: &mut Client) -> Result<()> {
    let tx = client
        .transaction()
        .await
        .ctx("starting migration transaction")?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))",
        &[&MIGRATION_LOCK],
    )
    .await
    .ctx("taking migration lock")?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    BIGINT PRIMARY KEY,
             applied_at BIGINT NOT NULL
         )",
    )
    .await
    .ctx("creating schema_migrations")?;
    let current: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await
        .ctx("reading schema version")?
        .get(0);
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.batch_execute(sql)
            .await
            .ctx(&format!("applying migration {version}"))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at)
             VALUES ($1, (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT)",
            &[version],
        )
        .await
        .ctx(&format!("recording migration {version}"))?;
    }
    tx.commit().await.ctx("committing migrations")
}

fn state_of(s: &str) -> Result<IssueState> {
    s.parse()
}

fn issue_row(r: &Row) -> Result<Issue> {
    Ok(Issue {
        id: r.try_get(0).ctx("reading issue")?,
        fingerprint: r.try_get(1).ctx("reading issue")?,
        class: r.try_get(2).ctx("reading issue")?,
        source: parse_source(r.try_get(3).ctx("reading issue")?)?,
        confidence: r.try_get(4).ctx("reading issue")?,
        agent: r.try_get(5).ctx("reading issue")?,
        service: r.try_get(6).ctx("reading issue")?,
        remediation: r.try_get(7).ctx("reading issue")?,
        state: state_of(r.try_get(8).ctx("reading issue")?)?,
        cycle: r.try_get(9).ctx("reading issue")?,
        occurrences: r.try_get(10).ctx("reading issue")?,
        first_seen: r.try_get(11).ctx("reading issue")?,
        last_seen: r.try_get(12).ctx("reading issue")?,
        classified_at: r.try_get(13).ctx("reading issue")?,
        dispatched_at: r.try_get(14).ctx("reading issue")?,
        shipped_at: r.try_get(15).ctx("reading issue")?,
        shipped_version: r.try_get(16).ctx("reading issue")?,
        verified_at: r.try_get(17).ctx("reading issue")?,
        cycle_started_at: r.try_get(18).ctx("reading issue")?,
    })
}

fn occurrence_row(r: &Row) -> Result<Occurrence> {
    Ok(Occurrence {
        id: r.try_get(0).ctx("reading occurrence")?,
        issue_id: r.try_get(1).ctx("reading occurrence")?,
        trace_id: r.try_get(2).ctx("reading occurrence")?,
        root_span_id: r.try_get(3).ctx("reading occurrence")?,
        class: r.try_get(4).ctx("reading occurrence")?,
        source: parse_source(r.try_get(5).ctx("reading occurrence")?)?,
        confidence: r.try_get(6).ctx("reading occurrence")?,
        agent: r.try_get(7).ctx("reading occurrence")?,
        service: r.try_get(8).ctx("reading occurrence")?,
        service_version: r.try_get(9).ctx("reading occurrence")?,
        observed_at: r.try_get(10).ctx("reading occurrence")?,
        signal: r.try_get(11).ctx("reading occurrence")?,
        rule: r.try_get(12).ctx("reading occurrence")?,
        queue_reason: r
            .try_get::<_, Option<&str>>(13)
            .ctx("reading occurrence")?
            .map(QueueReason::parse)
            .transpose()?,
        resolved_at: r.try_get(14).ctx("reading occurrence")?,
        resolved_by: r.try_get(15).ctx("reading occurrence")?,
    })
}

fn dispatch_row(r: &Row) -> Result<Dispatch> {
    Ok(Dispatch {
        id: r.try_get(0).ctx("reading dispatch")?,
        issue_id: r.try_get(1).ctx("reading dispatch")?,
        cycle: r.try_get(2).ctx("reading dispatch")?,
        sink: r.try_get(3).ctx("reading dispatch")?,
        idempotency_key: r.try_get(4).ctx("reading dispatch")?,
        payload: r.try_get(5).ctx("reading dispatch")?,
        attempts: r.try_get(6).ctx("reading dispatch")?,
        created_at: r.try_get(7).ctx("reading dispatch")?,
        next_attempt_at: r.try_get(8).ctx("reading dispatch")?,
        delivered_at: r.try_get(9).ctx("reading dispatch")?,
        last_error: r.try_get(10).ctx("reading dispatch")?,
        superseded_at: r.try_get(11).ctx("reading dispatch")?,
    })
}

fn transition_row(r: &Row) -> Result<Transition> {
    let from: Option<&str> = r.try_get(1).ctx("reading transition")?;
    Ok(Transition {
        issue_id: r.try_get(0).ctx("reading transition")?,
        from_state: from.map(state_of).transpose()?,
        to_state: state_of(r.try_get(2).ctx("reading transition")?)?,
        cycle: r.try_get(3).ctx("reading transition")?,
        at: r.try_get(4).ctx("reading transition")?,
        reason: r.try_get(5).ctx("reading transition")?,
    })
}

/// Stores `t`; with `prepared`, through the connection's prepared statement.
async fn insert_transition(
    c: &impl GenericClient,
    prepared: Option<&Prepared>,
    t: &Transition,
) -> Result<()> {
    const SQL: &str = "INSERT INTO transitions (issue_id, from_state, to_state, cycle, at, reason)
                       VALUES ($1, $2, $3, $4, $5, $6)";
    let st = Prepared::get_or_prepare(prepared, c, "storing transition", SQL).await?;
    c.execute(
        &st,
        &[
            &t.issue_id,
            &t.from_state.map(IssueState::as_str),
            &t.to_state.as_str(),
            &t.cycle,
            &t.at,
            &t.reason,
        ],
    )
    .await
    .ctx("storing transition")?;
    Ok(())
}

/// Inserts an outbox row unless its idempotency key exists; the new row's id if it was inserted.
async fn insert_dispatch(
    c: &impl GenericClient,
    prepared: &Prepared,
    issue_id: i64,
    cycle: i64,
    sink: &str,
    payload: &serde_json::Value,
    now: i64,
) -> Result<Option<i64>> {
    let st = prepared
        .get(
            c,
            "enqueueing dispatch",
            "INSERT INTO outbox (issue_id, cycle, sink, idempotency_key, payload,
                                 attempts, created_at, next_attempt_at)
             VALUES ($1, $2, $3, $4, $5, 0, $6, $6)
             ON CONFLICT (idempotency_key) DO NOTHING
             RETURNING id",
        )
        .await?;
    Ok(c.query_opt(
        &st,
        &[
            &issue_id,
            &cycle,
            &sink,
            &idempotency_key(issue_id, cycle, sink),
            payload,
            &now,
        ],
    )
    .await
    .ctx("enqueueing dispatch")?
    .map(|r| r.get(0)))
}

/// Records (service, version) as seen at `at` unless known; returns its first-seen time.
async fn version_seen(
    c: &impl GenericClient,
    prepared: &Prepared,
    service: &str,
    version: &str,
    at: i64,
) -> Result<i64> {
    // A concurrent insert of the same key waits for the other transaction and then does nothing;
    // the SELECT (a new snapshot) then sees the committed row.
    let insert = prepared
        .get(
            c,
            "recording service version",
            "INSERT INTO service_versions (service, version, first_seen) VALUES ($1, $2, $3)
             ON CONFLICT (service, version) DO NOTHING",
        )
        .await?;
    let select = prepared
        .get(
            c,
            "reading service version",
            "SELECT first_seen FROM service_versions WHERE service = $1 AND version = $2",
        )
        .await?;
    // Sent together; the server runs them in order, so the SELECT sees the insert.
    let (_, row) = futures_util::future::try_join(
        async {
            c.execute(&insert, &[&service, &version, &at])
                .await
                .ctx("recording service version")
        },
        async {
            c.query_one(&select, &[&service, &version])
                .await
                .ctx("reading service version")
        },
    )
    .await?;
    Ok(row.get(0))
}

async fn first_seen_of(
    c: &impl GenericClient,
    service: &str,
    version: Option<&str>,
) -> Result<Option<i64>> {
    let Some(version) = version else {
        return Ok(None);
    };
    Ok(c.query_opt(
        "SELECT first_seen FROM service_versions WHERE service = $1 AND version = $2",
        &[&service, &version],
    )
    .await
    .ctx("reading service version")?
    .map(|r| r.get(0)))
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
async fn regresses(
    c: &impl GenericClient,
    shipped: &Shipped,
    rec: &FailureRecord,
    version: Option<&str>,
) -> Result<bool> {
    let shipped_version = shipped.version.as_deref();
    let fix = ShippedFix {
        at: shipped.at.unwrap_or(i64::MIN),
        version: shipped_version,
        version_first_seen: first_seen_of(c, &shipped.service, shipped_version).await?,
    };
    let version_first_seen = match shipped_version {
        Some(_) => first_seen_of(c, &shipped.service, version).await?,
        None => None,
    };
    Ok(is_regression(
        &fix,
        rec.observed_at,
        version,
        version_first_seen,
    ))
}

async fn dispatches_of(c: &impl GenericClient, issue_id: i64) -> Result<Vec<Dispatch>> {
    c.query(
        &format!(
            "SELECT {DISPATCH_COLS} FROM (SELECT {DISPATCH_COLS} FROM outbox WHERE issue_id = $1
                                          ORDER BY id DESC LIMIT $2) AS newest
             ORDER BY id"
        ),
        &[&issue_id, &MAX_DISPATCHES_LISTED],
    )
    .await
    .ctx("reading dispatches")?
    .iter()
    .map(dispatch_row)
    .collect()
}

/// One failure's writes inside the caller's transaction.
async fn record_in(
    tx: &tokio_postgres::Transaction<'_>,
    prepared: &Prepared,
    rec: &FailureRecord,
    sinks: &[String],
    now: i64,
) -> Result<RecordOutcome> {
    // The upsert locks the row until commit and leaves `state` untouched, so RETURNING gives
    // the state before this record and the regression check below cannot race.
    let upsert = prepared
        .get(
            tx,
            "upserting issue",
            "INSERT INTO issues (fingerprint, class, source, confidence, agent, service,
                                 remediation, state, cycle, occurrences, first_seen, last_seen,
                                 classified_at, cycle_started_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'open', 1, 1, $8, $8, $9, $8)
             ON CONFLICT (fingerprint) DO UPDATE SET
                 occurrences = issues.occurrences + 1,
                 first_seen = LEAST(issues.first_seen, EXCLUDED.first_seen),
                 last_seen = GREATEST(issues.last_seen, EXCLUDED.last_seen),
                 cycle_started_at = CASE WHEN issues.cycle = 1
                                         THEN LEAST(issues.cycle_started_at, EXCLUDED.first_seen)
                                         ELSE issues.cycle_started_at END
             RETURNING id, state, cycle, occurrences, service, shipped_at, shipped_version,
                       source",
        )
        .await?;
    let row = tx
        .query_one(
            &upsert,
            &[
                &rec.fingerprint,
                &rec.class,
                &rec.source.as_str(),
                &rec.confidence,
                &rec.agent,
                &rec.service,
                &rec.remediation,
                &rec.observed_at,
                &now,
            ],
        )
        .await
        .ctx("upserting issue")?;
    let issue_id: i64 = row.get(0);
    let prev_state = state_of(row.get(1))?;
    let mut cycle: i64 = row.get(2);
    let occurrences: i64 = row.get(3);
    let issue_source = parse_source(row.get(7))?;
    let shipped = Shipped {
        service: row.get(4),
        at: row.get(5),
        version: row.get(6),
    };
    let version = record_version(rec);
    if let Some(v) = version {
        version_seen(tx, prepared, &rec.service, v, rec.observed_at).await?;
    }
    let new_issue = occurrences == 1;
    let mut state = prev_state;
    let mut regressed = false;
    if new_issue {
        let t = Transition {
            issue_id,
            from_state: None,
            to_state: IssueState::Open,
            cycle,
            at: rec.observed_at,
            reason: "first occurrence".into(),
        };
        insert_transition(tx, Some(prepared), &t).await?;
    } else if prev_state.regresses_on_recurrence() && regresses(tx, &shipped, rec, version).await? {
        cycle += 1;
        state = IssueState::Regressed;
        regressed = true;
        tx.execute(
            "UPDATE issues SET state = 'regressed', cycle = $2, cycle_started_at = $3,
                 classified_at = $4, dispatched_at = NULL, shipped_at = NULL,
                 verified_at = NULL
             WHERE id = $1",
            &[&issue_id, &cycle, &rec.observed_at, &now],
        )
        .await
        .ctx("marking issue regressed")?;
        let t = Transition {
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
        };
        insert_transition(tx, Some(prepared), &t).await?;
    }
    let mut dispatches_enqueued = 0;
    if new_issue || regressed {
        let payload = dispatch_payload(rec, cycle)?;
        for sink in sinks {
            if insert_dispatch(
                tx,
                prepared,
                issue_id,
                cycle,
                sink,
                &payload,
                rec.observed_at,
            )
            .await?
            .is_some()
            {
                dispatches_enqueued += 1;
            }
        }
    }
    let (detail, features) = kept_detail(rec, new_issue || regressed)?;
    let insert = prepared
        .get(
            tx,
            "storing occurrence",
            "INSERT INTO occurrences (issue_id, trace_id, root_span_id, class, source, confidence,
                                      agent, service, service_version, observed_at, signal, rule,
                                      queue_reason, detail, features)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
             RETURNING id",
        )
        .await?;
    let seen_sql = prepared
        .get(
            tx,
            "storing seen agent/service/version",
            "INSERT INTO issue_seen (issue_id, kind, value) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .await?;
    let queue_reason = rec.queue_reason.map(QueueReason::as_str);
    let occurrence = async {
        tx.query_one(
            &insert,
            &[
                &issue_id,
                &rec.trace_id,
                &rec.root_span_id,
                &rec.class,
                &rec.source.as_str(),
                &rec.confidence,
                &rec.agent,
                &rec.service,
                &rec.service_version,
                &rec.observed_at,
                &Json(&rec.signal),
                &rec.rule,
                &queue_reason,
                &detail,
                &features,
            ],
        )
        .await
        .ctx("storing occurrence")
    };
    let mut seen = vec![
        ("agent", rec.agent.as_str()),
        ("service", rec.service.as_str()),
    ];
    if let Some(v) = rec.service_version.as_deref() {
        seen.push(("version", v));
    }
    // Sent together: the connection pipelines them, one wait for all.
    let seen = futures_util::future::try_join_all(seen.into_iter().map(|(kind, value)| {
        let st = &seen_sql;
        async move {
            tx.execute(st, &[&issue_id, &kind, &value])
                .await
                .ctx("storing seen agent/service/version")
        }
    }));
    let (row, _) = futures_util::future::try_join(occurrence, seen).await?;
    let failure_id: i64 = row.get(0);
    Ok(RecordOutcome {
        issue_id,
        new_issue,
        regressed,
        occurrences,
        cycle,
        state,
        dispatches_enqueued,
        issue_source,
        failure_id,
    })
}

/// Recurrences of the issue `first` was just recorded on, in a state a recurrence does not
/// change (so none of them regresses it or dispatches): the same rows `record_in` would write
/// for each, in five statements for all of them — the issue's count and times, new service
/// versions, reserved occurrence ids, the occurrences, and new seen agents, services and
/// versions. Keys are written in sorted order, so concurrent batches lock them alike.
async fn fold_recurrences(
    tx: &tokio_postgres::Transaction<'_>,
    prepared: &Prepared,
    first: &RecordOutcome,
    recs: &[&FailureRecord],
) -> Result<Vec<RecordOutcome>> {
    let n = recs.len() as i64;
    let earliest = recs.iter().map(|r| r.observed_at).min().unwrap_or(0);
    let latest = recs.iter().map(|r| r.observed_at).max().unwrap_or(0);
    // A version is first seen when the first failure on it (in batch order) was observed.
    let mut versions: Vec<(&str, &str, i64)> = Vec::new();
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for r in recs {
        if let Some(v) = record_version(r) {
            if !versions.iter().any(|(s, x, _)| *s == r.service && *x == v) {
                versions.push((&r.service, v, r.observed_at));
            }
        }
        let mut kinds = vec![("agent", r.agent.as_str()), ("service", r.service.as_str())];
        if let Some(v) = r.service_version.as_deref() {
            kinds.push(("version", v));
        }
        for kv in kinds {
            if !seen.contains(&kv) {
                seen.push(kv);
            }
        }
    }
    versions.sort_unstable();
    seen.sort_unstable();
    let (services, names, ats): (Vec<&str>, Vec<&str>, Vec<i64>) = unzip3(versions.into_iter());
    let (kinds, values): (Vec<&str>, Vec<&str>) = seen.into_iter().unzip();

    let [update, add_versions, reserve, add_seen, insert] = [
        "UPDATE issues SET occurrences = occurrences + $2,
                first_seen = LEAST(first_seen, $3),
                last_seen = GREATEST(last_seen, $4),
                cycle_started_at = CASE WHEN cycle = 1 THEN LEAST(cycle_started_at, $3)
                                        ELSE cycle_started_at END
         WHERE id = $1",
        "INSERT INTO service_versions (service, version, first_seen)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[])
         ON CONFLICT (service, version) DO NOTHING",
        "SELECT nextval(pg_get_serial_sequence('occurrences', 'id'))
         FROM generate_series(1, $1::bigint)",
        "INSERT INTO issue_seen (issue_id, kind, value)
         SELECT $1, * FROM UNNEST($2::text[], $3::text[])
         ON CONFLICT DO NOTHING",
        "INSERT INTO occurrences (id, issue_id, trace_id, root_span_id, class, source, confidence,
                                  agent, service, service_version, observed_at, signal, rule,
                                  queue_reason, detail, features)
         SELECT u.id, $2::bigint, u.trace_id, u.root_span_id, u.class, u.source, u.confidence,
                u.agent, u.service, u.service_version, u.observed_at, u.signal, u.rule,
                u.queue_reason, u.detail, u.features
         FROM UNNEST($1::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::float8[], $8::text[], $9::text[], $10::text[], $11::bigint[],
                     $12::jsonb[], $13::text[], $14::text[], $15::text[], $16::text[])
              AS u(id, trace_id, root_span_id, class, source, confidence, agent, service,
                   service_version, observed_at, signal, rule, queue_reason, detail, features)",
    ];
    let what = "folding recurrences into their issue";
    let (update, add_versions, reserve, add_seen, insert) = futures_util::future::try_join5(
        prepared.get(tx, what, update),
        prepared.get(tx, what, add_versions),
        prepared.get(tx, what, reserve),
        prepared.get(tx, what, add_seen),
        prepared.get(tx, what, insert),
    )
    .await?;
    let (update, add_versions, reserve, add_seen, insert) =
        (&update, &add_versions, &reserve, &add_seen, &insert);
    // Sent together (the connection pipelines them): the issue row, versions, ids, seen values.
    let (_, _, rows, _) = futures_util::future::try_join4(
        async {
            tx.execute(update, &[&first.issue_id, &n, &earliest, &latest])
                .await
                .ctx("updating issue with its recurrences")
        },
        async {
            if services.is_empty() {
                return Ok(0);
            }
            tx.execute(add_versions, &[&services, &names, &ats])
                .await
                .ctx("recording service versions")
        },
        async {
            tx.query(reserve, &[&n])
                .await
                .ctx("reserving occurrence ids")
        },
        async {
            tx.execute(add_seen, &[&first.issue_id, &kinds, &values])
                .await
                .ctx("storing seen agents/services/versions")
        },
    )
    .await?;
    let mut ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    ids.sort_unstable();
    let mut cols = OccurrenceColumns::default();
    for r in recs {
        cols.push(r)?;
    }
    tx.execute(
        insert,
        &[
            &ids,
            &first.issue_id,
            &cols.trace_id,
            &cols.root_span_id,
            &cols.class,
            &cols.source,
            &cols.confidence,
            &cols.agent,
            &cols.service,
            &cols.service_version,
            &cols.observed_at,
            &cols.signal,
            &cols.rule,
            &cols.queue_reason,
            &cols.detail,
            &cols.features,
        ],
    )
    .await
    .ctx("storing occurrences")?;
    Ok(ids
        .into_iter()
        .zip(1..)
        .map(|(failure_id, k)| RecordOutcome {
            occurrences: first.occurrences + k,
            new_issue: false,
            regressed: false,
            dispatches_enqueued: 0,
            failure_id,
            ..first.clone()
        })
        .collect())
}

/// Occurrence rows as one array per column, for an `UNNEST` insert.
#[derive(Default)]
struct OccurrenceColumns<'a> {
    trace_id: Vec<&'a str>,
    root_span_id: Vec<&'a str>,
    class: Vec<&'a str>,
    source: Vec<&'static str>,
    confidence: Vec<f64>,
    agent: Vec<&'a str>,
    service: Vec<&'a str>,
    service_version: Vec<Option<&'a str>>,
    observed_at: Vec<i64>,
    signal: Vec<Json<&'a SignalSummary>>,
    rule: Vec<Option<&'a str>>,
    queue_reason: Vec<Option<&'static str>>,
    detail: Vec<Option<String>>,
    features: Vec<Option<String>>,
}

impl<'a> OccurrenceColumns<'a> {
    /// Adds `rec` as a recurrence (its detail kept only if it waits for a person).
    fn push(&mut self, rec: &'a FailureRecord) -> Result<()> {
        let (detail, features) = kept_detail(rec, false)?;
        self.trace_id.push(&rec.trace_id);
        self.root_span_id.push(&rec.root_span_id);
        self.class.push(&rec.class);
        self.source.push(rec.source.as_str());
        self.confidence.push(rec.confidence);
        self.agent.push(&rec.agent);
        self.service.push(&rec.service);
        self.service_version.push(rec.service_version.as_deref());
        self.observed_at.push(rec.observed_at);
        self.signal.push(Json(&rec.signal));
        self.rule.push(rec.rule.as_deref());
        self.queue_reason
            .push(rec.queue_reason.map(QueueReason::as_str));
        self.detail.push(detail);
        self.features.push(features);
        Ok(())
    }
}

/// Three columns of `rows`.
fn unzip3<A, B, C>(rows: impl Iterator<Item = (A, B, C)>) -> (Vec<A>, Vec<B>, Vec<C>) {
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for (x, y, z) in rows {
        a.push(x);
        b.push(y);
        c.push(z);
    }
    (a, b, c)
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn schema_version(&self) -> Result<i64> {
        let c = self.conn().await?;
        Ok(c.query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await
        .ctx("reading schema version")?
        .get(0))
    }

    async fn record_failure(
        &self,
        rec: &FailureRecord,
        sinks: &[String],
        now: i64,
    ) -> Result<RecordOutcome> {
        rec.validate()?;
        validate_sinks(sinks)?;
        let mut conn = self.conn().await?;
        let PgConn { client, prepared } = &mut *conn;
        let tx = client
            .transaction()
            .await
            .ctx("starting record_failure transaction")?;
        let outcome = record_in(&tx, prepared, rec, sinks, now).await?;
        tx.commit().await.ctx("committing record_failure")?;
        Ok(outcome)
    }

    async fn record_failures(&self, batch: Batch, now: i64) -> Result<Vec<RecordOutcome>> {
        validate_batch(&batch)?;
        let mut conn = self.conn().await?;
        let PgConn { client, prepared } = &mut *conn;
        let tx = client
            .transaction()
            .await
            .ctx("starting record_failures transaction")?;
        // Issue rows are locked in fingerprint order (the sort is stable, so one fingerprint's
        // failures keep their order), so two instances writing batches that share fingerprints
        // cannot deadlock on each other's row locks.
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by(|&a, &b| batch[a].0.fingerprint.cmp(&batch[b].0.fingerprint));
        let mut outcomes: Vec<Option<RecordOutcome>> = vec![None; batch.len()];
        for group in order.chunk_by(|&a, &b| batch[a].0.fingerprint == batch[b].0.fingerprint) {
            // Each failure on its own until the issue is in a state a recurrence does not
            // change; the rest of the fingerprint's failures are then folded in at once.
            for (k, &i) in group.iter().enumerate() {
                let (rec, sinks) = &batch[i];
                let out = record_in(&tx, prepared, rec, sinks, now).await?;
                let rest = &group[k + 1..];
                let fold = !rest.is_empty() && !out.state.regresses_on_recurrence();
                if fold {
                    let recs: Vec<&FailureRecord> = rest.iter().map(|&j| &batch[j].0).collect();
                    let folded = fold_recurrences(&tx, prepared, &out, &recs).await?;
                    for (&j, o) in rest.iter().zip(folded) {
                        outcomes[j] = Some(o);
                    }
                }
                outcomes[i] = Some(out);
                if fold {
                    break;
                }
            }
        }
        tx.commit().await.ctx("committing record_failures")?;
        Ok(outcomes.into_iter().flatten().collect())
    }

    async fn record_version_seen(&self, service: &str, version: &str, at: i64) -> Result<i64> {
        validate_version_key(service, version)?;
        let c = self.conn().await?;
        version_seen(&c.client, &c.prepared, service, version, at).await
    }

    async fn version_first_seen(&self, service: &str, version: &str) -> Result<Option<i64>> {
        let c = self.conn().await?;
        first_seen_of(&c.client, service, Some(version)).await
    }

    async fn transition(
        &self,
        issue_id: i64,
        to: IssueState,
        at: i64,
        reason: &str,
        shipped_version: Option<&str>,
    ) -> Result<Transition> {
        let mut client = self.conn().await?;
        let tx = client
            .transaction()
            .await
            .ctx("starting transition transaction")?;
        let row = tx
            .query_opt(
                "SELECT state, cycle, shipped_version FROM issues WHERE id = $1 FOR UPDATE",
                &[&issue_id],
            )
            .await
            .ctx("reading issue state")?
            .ok_or(StoreError::IssueNotFound(issue_id))?;
        let from = state_of(row.get(0))?;
        let cycle: i64 = row.get(1);
        let current_version: Option<String> = row.get(2);
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
        tx.execute(
            "UPDATE issues SET state = $2, cycle = $3,
                 cycle_started_at = CASE WHEN $2 = 'regressed' THEN $4 ELSE cycle_started_at END,
                 classified_at = CASE WHEN $2 = 'regressed' THEN $4 ELSE classified_at END,
                 dispatched_at = CASE WHEN $2 = 'dispatched' THEN $4
                                      WHEN $2 = 'regressed' THEN NULL ELSE dispatched_at END,
                 shipped_at = CASE WHEN $2 = 'shipped' THEN $4
                                   WHEN $2 = 'regressed' THEN NULL ELSE shipped_at END,
                 shipped_version = CASE WHEN $2 = 'shipped' THEN $5 ELSE shipped_version END,
                 verified_at = CASE WHEN $2 = 'verified' THEN $4
                                    WHEN $2 = 'regressed' THEN NULL ELSE verified_at END
             WHERE id = $1",
            &[&issue_id, &to.as_str(), &cycle, &at, &shipped_version],
        )
        .await
        .ctx("updating issue state")?;
        let t = Transition {
            issue_id,
            from_state: Some(from),
            to_state: to,
            cycle,
            at,
            reason: reason.to_string(),
        };
        insert_transition(&tx, None, &t).await?;
        tx.commit().await.ctx("committing transition")?;
        Ok(t)
    }

    async fn due_for_verification(
        &self,
        now: i64,
        window_ms: i64,
        limit: u32,
    ) -> Result<Vec<Issue>> {
        let (started_by, limit) = verification_bounds(now, window_ms, limit)?;
        let c = self.conn().await?;
        c.query(
            &format!(
                "SELECT {ISSUE_COLS} FROM (
                     SELECT i.*, CASE WHEN i.shipped_version IS NULL THEN i.shipped_at
                                      WHEN sv.first_seen IS NULL THEN NULL
                                      ELSE GREATEST(i.shipped_at, sv.first_seen) END AS verify_from
                     FROM issues i LEFT JOIN service_versions sv
                         ON sv.service = i.service AND sv.version = i.shipped_version
                     WHERE i.state = 'shipped' AND i.shipped_at IS NOT NULL) AS shipped
                 WHERE verify_from <= $1
                 ORDER BY verify_from, id LIMIT $2"
            ),
            &[&started_by, &limit],
        )
        .await
        .ctx("listing issues due for verification")?
        .iter()
        .map(issue_row)
        .collect()
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
        let c = self.conn().await?;
        let exists: bool = c
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM issues WHERE id = $1)",
                &[&issue_id],
            )
            .await
            .ctx("checking issue")?
            .get(0);
        if !exists {
            return Err(StoreError::IssueNotFound(issue_id));
        }
        // One statement: either our insert or the row that won the key. When another instance
        // inserted the key after this statement's snapshot, neither is visible: look again below.
        let row = c
            .query_opt(
                "WITH ins AS (
                     INSERT INTO outbox (issue_id, cycle, sink, idempotency_key, payload,
                                         attempts, created_at, next_attempt_at)
                     VALUES ($1, $2, $3, $4, $5, 0, $6, $6)
                     ON CONFLICT (idempotency_key) DO NOTHING
                     RETURNING id)
                 SELECT id, TRUE FROM ins
                 UNION ALL
                 SELECT id, FALSE FROM outbox WHERE idempotency_key = $4
                     AND NOT EXISTS (SELECT 1 FROM ins)
                 LIMIT 1",
                &[&issue_id, &cycle, &sink, &key, payload, &now],
            )
            .await
            .ctx("enqueueing dispatch")?;
        if let Some(row) = row {
            return Ok(Enqueued {
                dispatch_id: row.get(0),
                created: row.get(1),
            });
        }
        let row = c
            .query_one("SELECT id FROM outbox WHERE idempotency_key = $1", &[&key])
            .await
            .ctx("reading existing dispatch")?;
        Ok(Enqueued {
            dispatch_id: row.get(0),
            created: false,
        })
    }

    async fn claim_due_dispatches(
        &self,
        now: i64,
        limit: u32,
        lease_ms: i64,
    ) -> Result<Vec<Dispatch>> {
        // A lease never reaches GIVEN_UP, which would make the row look given up.
        let lease_until = now.saturating_add(lease_ms.max(0)).min(GIVEN_UP - 1);
        let c = self.conn().await?;
        let rows = c
            .query(
                &format!(
                    "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = $2
                     WHERE id IN (SELECT id FROM outbox
                                  WHERE delivered_at IS NULL AND next_attempt_at <= $1
                                    AND next_attempt_at < $4
                                  ORDER BY next_attempt_at, id LIMIT $3
                                  FOR UPDATE SKIP LOCKED)
                     RETURNING {DISPATCH_COLS}"
                ),
                &[&now, &lease_until, &i64::from(limit), &GIVEN_UP],
            )
            .await
            .ctx("claiming due dispatches")?;
        let mut claimed = rows.iter().map(dispatch_row).collect::<Result<Vec<_>>>()?;
        claimed.sort_by_key(|d| d.id);
        Ok(claimed)
    }

    async fn mark_delivered(&self, dispatch_id: i64, at: i64) -> Result<()> {
        let c = self.conn().await?;
        let n = c
            .execute(
                "UPDATE outbox SET delivered_at = COALESCE(delivered_at, $2), last_error = NULL
                 WHERE id = $1",
                &[&dispatch_id, &at],
            )
            .await
            .ctx("marking dispatch delivered")?;
        if n == 0 {
            return Err(StoreError::DispatchNotFound(dispatch_id));
        }
        Ok(())
    }

    async fn mark_failed(&self, dispatch_id: i64, next_attempt_at: i64, error: &str) -> Result<()> {
        let c = self.conn().await?;
        let n = c
            .execute(
                "UPDATE outbox SET next_attempt_at = CASE WHEN delivered_at IS NULL THEN $2
                                                       ELSE next_attempt_at END,
                                   last_error = $3
                 WHERE id = $1",
                &[&dispatch_id, &next_attempt_at, &truncate_error(error)],
            )
            .await
            .ctx("marking dispatch failed")?;
        if n == 0 {
            return Err(StoreError::DispatchNotFound(dispatch_id));
        }
        Ok(())
    }

    async fn list_dispatches(&self, issue_id: i64) -> Result<Vec<Dispatch>> {
        let c = self.conn().await?;
        dispatches_of(&c.client, issue_id).await
    }

    async fn pending_dispatches(&self) -> Result<i64> {
        let c = self.conn().await?;
        Ok(c.query_one(
            "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL AND next_attempt_at < $1",
            &[&GIVEN_UP],
        )
        .await
        .ctx("counting pending dispatches")?
        .get(0))
    }

    async fn get_issue(&self, issue_id: i64, recent: u32) -> Result<Option<IssueDetail>> {
        let mut client = self.conn().await?;
        // One snapshot for the row and its children.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .ctx("starting read transaction")?;
        let Some(row) = tx
            .query_opt(
                &format!("SELECT {ISSUE_COLS} FROM issues WHERE id = $1"),
                &[&issue_id],
            )
            .await
            .ctx("reading issue")?
        else {
            return Ok(None);
        };
        let issue = issue_row(&row)?;
        let (mut agents, mut services, mut versions) = (Vec::new(), Vec::new(), Vec::new());
        for r in tx
            .query(
                "SELECT kind, value FROM issue_seen WHERE issue_id = $1 ORDER BY kind, value",
                &[&issue_id],
            )
            .await
            .ctx("reading seen values")?
        {
            let kind: &str = r.get(0);
            let value: String = r.get(1);
            match kind {
                "agent" => agents.push(value),
                "service" => services.push(value),
                _ => versions.push(value),
            }
        }
        let sample_trace_ids = tx
            .query(
                "SELECT trace_id FROM occurrences WHERE issue_id = $1
                 ORDER BY observed_at DESC, id DESC LIMIT $2",
                &[&issue_id, &SAMPLE_CAP],
            )
            .await
            .ctx("reading trace samples")?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let recent_occurrences = tx
            .query(
                &format!(
                    "SELECT {OCCURRENCE_COLS} FROM occurrences WHERE issue_id = $1
                     ORDER BY observed_at DESC, id DESC LIMIT $2"
                ),
                &[&issue_id, &i64::from(recent)],
            )
            .await
            .ctx("reading recent occurrences")?
            .iter()
            .map(occurrence_row)
            .collect::<Result<Vec<_>>>()?;
        let transitions = tx
            .query(
                "SELECT issue_id, from_state, to_state, cycle, at, reason FROM transitions
                 WHERE issue_id = $1 ORDER BY id",
                &[&issue_id],
            )
            .await
            .ctx("reading transitions")?
            .iter()
            .map(transition_row)
            .collect::<Result<Vec<_>>>()?;
        let dispatches = dispatches_of(&tx, issue_id).await?;
        tx.commit().await.ctx("ending read transaction")?;
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

    async fn list_issues(&self, filter: &IssueFilter) -> Result<Vec<Issue>> {
        let c = self.conn().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT {ISSUE_COLS} FROM issues
                     WHERE ($1::TEXT IS NULL OR class = $1) AND ($2::TEXT IS NULL OR state = $2)
                       AND ($3::TEXT IS NULL OR agent = $3)
                     ORDER BY last_seen DESC, id DESC LIMIT $4"
                ),
                &[
                    &filter.class,
                    &filter.state.map(IssueState::as_str),
                    &filter.agent,
                    &filter.limit(),
                ],
            )
            .await
            .ctx("listing issues")?;
        rows.iter().map(issue_row).collect()
    }

    async fn count_issues(&self) -> Result<Vec<IssueCount>> {
        let c = self.conn().await?;
        c.query(
            "SELECT class, state, COUNT(*) FROM issues GROUP BY class, state ORDER BY class, state",
            &[],
        )
        .await
        .ctx("counting issues")?
        .iter()
        .map(|r| {
            Ok(IssueCount {
                class: r.try_get(0).ctx("reading issue count")?,
                state: state_of(r.try_get(1).ctx("reading issue count")?)?,
                count: r.try_get(2).ctx("reading issue count")?,
            })
        })
        .collect()
    }

    async fn queue(&self, limit: u32) -> Result<Vec<QueueItem>> {
        triage::queue(&self.conn().await?.client, limit).await
    }

    async fn get_failure(&self, failure_id: i64) -> Result<Option<StoredFailure>> {
        triage::get_failure(&self.conn().await?.client, failure_id).await
    }

    async fn relabel(&self, req: &Relabel) -> Result<RelabelOutcome> {
        req.validate()?;
        let mut c = self.conn().await?;
        let tx = c.transaction().await.ctx("starting relabel transaction")?;
        let out = triage::relabel(&tx, req).await?;
        tx.commit().await.ctx("committing relabel")?;
        Ok(out)
    }

    async fn labels_since(&self, after: i64, limit: u32) -> Result<Vec<LabelRow>> {
        triage::labels_since(&self.conn().await?.client, after, limit).await
    }

    async fn save_model(
        &self,
        name: &str,
        last_label: i64,
        snapshot: &serde_json::Value,
        at: i64,
    ) -> Result<()> {
        let snapshot = snapshot.to_string();
        self.conn()
            .await?
            .execute(
                "INSERT INTO models (name, last_label, snapshot, updated_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO UPDATE SET last_label = EXCLUDED.last_label,
                     snapshot = EXCLUDED.snapshot, updated_at = EXCLUDED.updated_at
                 WHERE EXCLUDED.last_label >= models.last_label",
                &[&name, &last_label, &snapshot, &at],
            )
            .await
            .ctx("saving model")?;
        Ok(())
    }

    async fn load_model(&self, name: &str) -> Result<Option<(i64, serde_json::Value)>> {
        let row = self
            .conn()
            .await?
            .query_opt(
                "SELECT last_label, snapshot FROM models WHERE name = $1",
                &[&name],
            )
            .await
            .ctx("loading model")?;
        row.map(|r| {
            let text: String = r.try_get(1).ctx("reading model snapshot")?;
            let v = serde_json::from_str(&text)
                .map_err(|e| StoreError::backend("reading model snapshot", e))?;
            Ok((r.try_get(0).ctx("reading model snapshot")?, v))
        })
        .transpose()
    }

    async fn record_judgement(&self, judgement: &JudgementRecord) -> Result<i64> {
        triage::record_judgement(&self.conn().await?.client, judgement).await
    }

    async fn failure_counts(&self, from: i64, to: i64, step_ms: i64) -> Result<Vec<BucketCount>> {
        triage::failure_counts(&self.conn().await?.client, from, to, step_ms).await
    }

    async fn prune_failures(&self, before: i64, limit: u32) -> Result<u64> {
        static SQL: LazyLock<String> = LazyLock::new(|| prune_sql("$1", "$2"));
        let c = self.conn().await?;
        c.execute(SQL.as_str(), &[&before, &i64::from(limit)])
            .await
            .ctx("pruning old failures")
    }
}
