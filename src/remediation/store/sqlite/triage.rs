//! SQLite side of human triage: the queue, relabels and re-routes, labels, the model's
//! snapshot, the judge's answers and failure counts over time.

use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use super::{exec, insert_transition, issue_row, occurrence_row, row, Context};
use crate::classify::Source;
use crate::remediation::store::triage::{
    cut, occurrence_cols_of as prefixed, relabel_reason, reroute_payload, routed_key,
    validate_buckets, MAX_NOTE_LEN, MAX_RAW_LEN,
};
use crate::remediation::store::{
    BucketCount, Issue, IssueState, JudgementRecord, LabelRow, Occurrence, QueueItem, Relabel,
    RelabelOutcome, Result, StoreError, StoredFailure, Transition, GIVEN_UP, ISSUE_COLS,
    MAX_LIST_LIMIT, OCCURRENCE_COLS,
};

fn features_col(r: &Row, idx: usize) -> rusqlite::Result<Vec<String>> {
    let s: Option<String> = r.get(idx)?;
    match s {
        None => Ok(Vec::new()),
        Some(s) => serde_json::from_str(&s).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, e.into())
        }),
    }
}

pub(super) fn queue(c: &mut Connection, limit: u32) -> Result<Vec<QueueItem>> {
    let sql = format!(
        "SELECT {}, i.occurrences FROM occurrences o JOIN issues i ON i.id = o.issue_id
         WHERE o.id IN (SELECT MAX(id) FROM occurrences
                        WHERE queue_reason IS NOT NULL AND resolved_at IS NULL
                        GROUP BY issue_id)
           AND i.source <> 'human' AND i.state <> 'ignored'
           AND NOT (i.source = 'llm' AND o.queue_reason <> 'audit')
         ORDER BY o.id LIMIT ?1",
        prefixed("o")
    );
    let n = OCCURRENCE_COLS.split(',').count();
    c.prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_map(params![limit.min(MAX_LIST_LIMIT)], |r| {
                Ok(QueueItem {
                    failure: occurrence_row(r)?,
                    occurrences: r.get(n)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .ctx("reading the triage queue")
}

pub(super) fn get_failure(c: &mut Connection, id: i64) -> Result<Option<StoredFailure>> {
    let n = OCCURRENCE_COLS.split(',').count();
    let found = row(
        c,
        &format!("SELECT {OCCURRENCE_COLS}, detail, features FROM occurrences WHERE id = ?1"),
        params![id],
        |r| {
            let detail: Option<String> = r.get(n)?;
            Ok((occurrence_row(r)?, detail, features_col(r, n + 1)?))
        },
    )
    .optional()
    .ctx("reading failure")?;
    let Some((failure, detail, features)) = found else {
        return Ok(None);
    };
    let detail = detail
        .map(|d| serde_json::from_str(&d))
        .transpose()
        .map_err(|e| StoreError::backend("reading failure detail", e))?;
    let judgements = c
        .prepare_cached(
            "SELECT failure_id, at, outcome, class, confidence, rationale, raw, model,
                    latency_ms, tokens, applied
             FROM judgements WHERE failure_id = ?1 ORDER BY id",
        )
        .and_then(|mut s| {
            s.query_map(params![id], judgement_row)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .ctx("reading judgements")?;
    Ok(Some(StoredFailure {
        failure,
        detail,
        features,
        judgements,
    }))
}

fn judgement_row(r: &Row) -> rusqlite::Result<JudgementRecord> {
    Ok(JudgementRecord {
        failure_id: r.get(0)?,
        at: r.get(1)?,
        outcome: r.get(2)?,
        class: r.get(3)?,
        confidence: r.get(4)?,
        rationale: r.get(5)?,
        raw: r.get(6)?,
        model: r.get(7)?,
        latency_ms: r.get(8)?,
        tokens: r.get(9)?,
        applied: r.get(10)?,
    })
}

/// The issue row and its route.
fn issue_with_route(tx: &Connection, issue_id: i64) -> Result<(Issue, i64)> {
    let n = ISSUE_COLS.split(',').count();
    row(
        tx,
        &format!("SELECT {ISSUE_COLS}, route FROM issues WHERE id = ?1"),
        params![issue_id],
        |r| Ok((issue_row(r)?, r.get(n)?)),
    )
    .optional()
    .ctx("reading issue")?
    .ok_or(StoreError::IssueNotFound(issue_id))
}

pub(super) fn relabel(c: &mut Connection, req: &Relabel) -> Result<RelabelOutcome> {
    req.validate()?;
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .ctx("starting relabel transaction")?;
    let n = OCCURRENCE_COLS.split(',').count();
    let (failure, mut features): (Occurrence, Vec<String>) = row(
        &tx,
        &format!("SELECT {OCCURRENCE_COLS}, features FROM occurrences WHERE id = ?1"),
        params![req.failure_id],
        |r| Ok((occurrence_row(r)?, features_col(r, n)?)),
    )
    .optional()
    .ctx("reading failure")?
    .ok_or(StoreError::FailureNotFound(req.failure_id))?;
    let (before, route) = issue_with_route(&tx, failure.issue_id)?;
    let unchanged = |issue: Issue| RelabelOutcome {
        from_class: issue.class.clone(),
        from_source: issue.source,
        issue,
        applied: false,
        label: None,
        rerouted: false,
        superseded: 0,
        dispatches_enqueued: 0,
    };
    if req.source == Source::Llm && before.source == Source::Human {
        return Ok(unchanged(before));
    }
    if features.is_empty() {
        features = row(
            &tx,
            "SELECT features FROM occurrences WHERE issue_id = ?1 AND features IS NOT NULL
             ORDER BY id DESC LIMIT 1",
            params![failure.issue_id],
            |r| features_col(r, 0),
        )
        .optional()
        .ctx("reading the issue's features")?
        .unwrap_or_default();
    }
    exec(
        &tx,
        "UPDATE issues SET class = ?2, source = ?3, confidence = ?4, remediation = ?5 WHERE id = ?1",
        params![
            before.id,
            req.class,
            req.source.as_str(),
            req.confidence,
            req.remediation
        ],
    )
    .ctx("relabelling issue")?;
    exec(
        &tx,
        "UPDATE occurrences SET resolved_at = ?2, resolved_by = ?3
         WHERE issue_id = ?1 AND queue_reason IS NOT NULL AND resolved_at IS NULL",
        params![before.id, req.at, req.source.as_str()],
    )
    .ctx("resolving queued failures")?;
    let note = cut(&req.note, MAX_NOTE_LEN);
    let label = if req.source == Source::Human {
        let features_json = serde_json::to_string(&features)
            .map_err(|e| StoreError::backend("serializing label features", e))?;
        let id: i64 = row(
            &tx,
            "INSERT INTO labels (failure_id, issue_id, fingerprint, from_class, to_class, note,
                                 features, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) RETURNING id",
            params![
                failure.id,
                before.id,
                before.fingerprint,
                before.class,
                req.class,
                note,
                features_json,
                req.at
            ],
            |r| r.get(0),
        )
        .ctx("storing label")?;
        Some(LabelRow {
            id,
            failure_id: failure.id,
            issue_id: before.id,
            fingerprint: before.fingerprint.clone(),
            from_class: before.class.clone(),
            to_class: req.class.clone(),
            note: note.to_string(),
            features,
            at: req.at,
        })
    } else {
        None
    };
    let changed = before.class != req.class;
    let waiting = matches!(
        before.state,
        IssueState::Open | IssueState::Dispatched | IssueState::Regressed
    );
    let (mut superseded, mut enqueued) = (0, 0);
    if changed && waiting {
        superseded = exec(
            &tx,
            "UPDATE outbox SET superseded_at = ?3
             WHERE issue_id = ?1 AND cycle = ?2 AND superseded_at IS NULL",
            params![before.id, before.cycle, req.at],
        )
        .ctx("superseding dispatches")? as u32;
        exec(
            &tx,
            "UPDATE outbox SET next_attempt_at = ?4, last_error = ?5
             WHERE issue_id = ?1 AND cycle = ?2 AND superseded_at = ?3 AND delivered_at IS NULL",
            params![
                before.id,
                before.cycle,
                req.at,
                GIVEN_UP,
                format!("superseded: re-routed to {}", req.class)
            ],
        )
        .ctx("stopping superseded dispatches")?;
        let route = route + 1;
        exec(
            &tx,
            "UPDATE issues SET route = ?2 WHERE id = ?1",
            params![before.id, route],
        )
        .ctx("bumping route")?;
        let (after, _) = issue_with_route(&tx, before.id)?;
        let payload = reroute_payload(&failure, &after, after.cycle).to_string();
        for sink in &req.sinks {
            let key = routed_key(after.id, after.cycle, route, sink);
            enqueued += exec(
                &tx,
                "INSERT INTO outbox (issue_id, cycle, sink, idempotency_key, payload,
                                     attempts, created_at, next_attempt_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?6)
                 ON CONFLICT (idempotency_key) DO NOTHING",
                params![after.id, after.cycle, sink, key, payload, req.at],
            )
            .ctx("enqueueing re-routed dispatch")? as u32;
        }
    }
    let reason = relabel_reason(&before.class, req, note, changed && waiting);
    insert_transition(
        &tx,
        &Transition {
            issue_id: before.id,
            from_state: Some(before.state),
            to_state: before.state,
            cycle: before.cycle,
            at: req.at,
            reason,
        },
    )?;
    let (issue, _) = issue_with_route(&tx, before.id)?;
    tx.commit().ctx("committing relabel")?;
    Ok(RelabelOutcome {
        issue,
        from_class: before.class,
        from_source: before.source,
        applied: true,
        label,
        rerouted: changed && waiting,
        superseded,
        dispatches_enqueued: enqueued,
    })
}

pub(super) fn labels_since(c: &mut Connection, after: i64, limit: u32) -> Result<Vec<LabelRow>> {
    c.prepare_cached(
        "SELECT id, failure_id, issue_id, fingerprint, from_class, to_class, note, features, at
         FROM labels WHERE id > ?1 ORDER BY id LIMIT ?2",
    )
    .and_then(|mut s| {
        s.query_map(params![after, limit.min(MAX_LIST_LIMIT)], |r| {
            Ok(LabelRow {
                id: r.get(0)?,
                failure_id: r.get(1)?,
                issue_id: r.get(2)?,
                fingerprint: r.get(3)?,
                from_class: r.get(4)?,
                to_class: r.get(5)?,
                note: r.get(6)?,
                features: features_col(r, 7)?,
                at: r.get(8)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()
    })
    .ctx("reading labels")
}

pub(super) fn save_model(
    c: &mut Connection,
    name: &str,
    last_label: i64,
    snapshot: &str,
    at: i64,
) -> Result<()> {
    exec(
        c,
        "INSERT INTO models (name, last_label, snapshot, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (name) DO UPDATE SET last_label = excluded.last_label,
             snapshot = excluded.snapshot, updated_at = excluded.updated_at
         WHERE excluded.last_label >= models.last_label",
        params![name, last_label, snapshot, at],
    )
    .ctx("saving model")?;
    Ok(())
}

pub(super) fn load_model(c: &mut Connection, name: &str) -> Result<Option<(i64, String)>> {
    row(
        c,
        "SELECT last_label, snapshot FROM models WHERE name = ?1",
        params![name],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
    .ctx("loading model")
}

pub(super) fn record_judgement(c: &mut Connection, j: &JudgementRecord) -> Result<i64> {
    row(
        c,
        "INSERT INTO judgements (failure_id, at, outcome, class, confidence, rationale, raw,
                                 model, latency_ms, tokens, applied)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) RETURNING id",
        params![
            j.failure_id,
            j.at,
            j.outcome,
            j.class,
            j.confidence,
            j.rationale.as_deref().map(|s| cut(s, MAX_NOTE_LEN)),
            j.raw.as_deref().map(|s| cut(s, MAX_RAW_LEN)),
            j.model,
            j.latency_ms,
            j.tokens,
            j.applied
        ],
        |r| r.get(0),
    )
    .map_err(|e| match e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::FailureNotFound(j.failure_id)
        }
        e => StoreError::backend("storing judgement", e),
    })
}

pub(super) fn failure_counts(
    c: &mut Connection,
    from: i64,
    to: i64,
    step_ms: i64,
) -> Result<Vec<BucketCount>> {
    validate_buckets(from, to, step_ms)?;
    c.prepare_cached(
        "SELECT i.class, (o.observed_at - ?1) / ?3 AS b, COUNT(*)
         FROM occurrences o JOIN issues i ON i.id = o.issue_id
         WHERE o.observed_at >= ?1 AND o.observed_at < ?2
         GROUP BY i.class, b ORDER BY i.class, b",
    )
    .and_then(|mut s| {
        s.query_map(params![from, to, step_ms], |r| {
            Ok(BucketCount {
                class: r.get(0)?,
                bucket: r.get(1)?,
                count: r.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()
    })
    .ctx("counting failures over time")
}
