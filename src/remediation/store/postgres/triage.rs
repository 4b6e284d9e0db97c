//! PostgreSQL side of human triage: the queue, relabels and re-routes (the issue row locked for
//! the transaction), labels, the judge's answers and failure counts over time.

use tokio_postgres::{GenericClient, Row};

use super::{insert_transition, issue_row, occurrence_row, Context};
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

/// Advisory lock key (first half; the second is the schema's hash) serialising label inserts
/// of one schema. Labels come from people, so they are rare and the lock is cheap.
const LABELS_LOCK: i32 = 0x6c61_6273; // "labs"

fn features_of(r: &Row, idx: usize) -> Result<Vec<String>> {
    let s: Option<String> = r.try_get(idx).ctx("reading features")?;
    match s {
        None => Ok(Vec::new()),
        Some(s) => serde_json::from_str(&s).map_err(|e| StoreError::backend("reading features", e)),
    }
}

pub(super) async fn queue(c: &impl GenericClient, limit: u32) -> Result<Vec<QueueItem>> {
    let sql = format!(
        "SELECT {}, i.occurrences FROM occurrences o JOIN issues i ON i.id = o.issue_id
         WHERE o.id IN (SELECT MAX(id) FROM occurrences
                        WHERE queue_reason IS NOT NULL AND resolved_at IS NULL
                        GROUP BY issue_id)
           AND i.source <> 'human' AND i.state <> 'ignored'
           AND NOT (i.source = 'llm' AND o.queue_reason <> 'audit')
         ORDER BY o.id LIMIT $1",
        prefixed("o")
    );
    let n = OCCURRENCE_COLS.split(',').count();
    let limit = i64::from(limit.min(MAX_LIST_LIMIT));
    c.query(&sql, &[&limit])
        .await
        .ctx("reading the triage queue")?
        .iter()
        .map(|r| {
            Ok(QueueItem {
                failure: occurrence_row(r)?,
                occurrences: r.try_get(n).ctx("reading the triage queue")?,
            })
        })
        .collect()
}

pub(super) async fn get_failure(c: &impl GenericClient, id: i64) -> Result<Option<StoredFailure>> {
    let n = OCCURRENCE_COLS.split(',').count();
    let Some(r) = c
        .query_opt(
            &format!("SELECT {OCCURRENCE_COLS}, detail, features FROM occurrences WHERE id = $1"),
            &[&id],
        )
        .await
        .ctx("reading failure")?
    else {
        return Ok(None);
    };
    let detail: Option<String> = r.try_get(n).ctx("reading failure")?;
    let detail = detail
        .map(|d| serde_json::from_str(&d))
        .transpose()
        .map_err(|e| StoreError::backend("reading failure detail", e))?;
    let judgements = c
        .query(
            "SELECT failure_id, at, outcome, class, confidence, rationale, raw, model,
                    latency_ms, tokens, applied
             FROM judgements WHERE failure_id = $1 ORDER BY id",
            &[&id],
        )
        .await
        .ctx("reading judgements")?
        .iter()
        .map(judgement_row)
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(StoredFailure {
        failure: occurrence_row(&r)?,
        detail,
        features: features_of(&r, n + 1)?,
        judgements,
    }))
}

fn judgement_row(r: &Row) -> Result<JudgementRecord> {
    let get = |e| StoreError::backend("reading judgement", e);
    Ok(JudgementRecord {
        failure_id: r.try_get(0).map_err(get)?,
        at: r.try_get(1).map_err(get)?,
        outcome: r.try_get(2).map_err(get)?,
        class: r.try_get(3).map_err(get)?,
        confidence: r.try_get(4).map_err(get)?,
        rationale: r.try_get(5).map_err(get)?,
        raw: r.try_get(6).map_err(get)?,
        model: r.try_get(7).map_err(get)?,
        latency_ms: r.try_get(8).map_err(get)?,
        tokens: r.try_get(9).map_err(get)?,
        applied: r.try_get(10).map_err(get)?,
    })
}

/// The issue row (locked until the transaction ends) and its route.
async fn issue_for_update(tx: &impl GenericClient, issue_id: i64) -> Result<(Issue, i64)> {
    let n = ISSUE_COLS.split(',').count();
    let r = tx
        .query_opt(
            &format!("SELECT {ISSUE_COLS}, route FROM issues WHERE id = $1 FOR UPDATE"),
            &[&issue_id],
        )
        .await
        .ctx("reading issue")?
        .ok_or(StoreError::IssueNotFound(issue_id))?;
    Ok((issue_row(&r)?, r.try_get(n).ctx("reading issue")?))
}

/// `Store::relabel` inside the caller's transaction.
pub(super) async fn relabel(tx: &impl GenericClient, req: &Relabel) -> Result<RelabelOutcome> {
    let n = OCCURRENCE_COLS.split(',').count();
    let r = tx
        .query_opt(
            &format!("SELECT {OCCURRENCE_COLS}, features FROM occurrences WHERE id = $1"),
            &[&req.failure_id],
        )
        .await
        .ctx("reading failure")?
        .ok_or(StoreError::FailureNotFound(req.failure_id))?;
    let failure: Occurrence = occurrence_row(&r)?;
    let mut features = features_of(&r, n)?;
    let (before, route) = issue_for_update(tx, failure.issue_id).await?;
    if req.source == Source::Llm && before.source == Source::Human {
        return Ok(RelabelOutcome {
            from_class: before.class.clone(),
            from_source: before.source,
            issue: before,
            applied: false,
            label: None,
            rerouted: false,
            superseded: 0,
            dispatches_enqueued: 0,
        });
    }
    if features.is_empty() {
        if let Some(r) = tx
            .query_opt(
                "SELECT features FROM occurrences WHERE issue_id = $1 AND features IS NOT NULL
                 ORDER BY id DESC LIMIT 1",
                &[&failure.issue_id],
            )
            .await
            .ctx("reading the issue's features")?
        {
            features = features_of(&r, 0)?;
        }
    }
    tx.execute(
        "UPDATE issues SET class = $2, source = $3, confidence = $4, remediation = $5 WHERE id = $1",
        &[
            &before.id,
            &req.class,
            &req.source.as_str(),
            &req.confidence,
            &req.remediation,
        ],
    )
    .await
    .ctx("relabelling issue")?;
    tx.execute(
        "UPDATE occurrences SET resolved_at = $2, resolved_by = $3
         WHERE issue_id = $1 AND queue_reason IS NOT NULL AND resolved_at IS NULL",
        &[&before.id, &req.at, &req.source.as_str()],
    )
    .await
    .ctx("resolving queued failures")?;
    let note = cut(&req.note, MAX_NOTE_LEN);
    let label = if req.source == Source::Human {
        let features_json = serde_json::to_string(&features)
            .map_err(|e| StoreError::backend("serializing label features", e))?;
        // Label ids must become visible in id order: other instances sync with `id > last
        // applied`, so a smaller id committed after a larger one would never be picked up.
        // One label insert at a time (until commit) keeps ids and commits in the same order.
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))",
            &[&LABELS_LOCK],
        )
        .await
        .ctx("taking the label lock")?;
        let id: i64 = tx
            .query_one(
                "INSERT INTO labels (failure_id, issue_id, fingerprint, from_class, to_class,
                                     note, features, at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                &[
                    &failure.id,
                    &before.id,
                    &before.fingerprint,
                    &before.class,
                    &req.class,
                    &note,
                    &features_json,
                    &req.at,
                ],
            )
            .await
            .ctx("storing label")?
            .get(0);
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
    let (mut superseded, mut enqueued) = (0u32, 0u32);
    if changed && waiting {
        superseded = tx
            .execute(
                "UPDATE outbox SET superseded_at = $3
                 WHERE issue_id = $1 AND cycle = $2 AND superseded_at IS NULL",
                &[&before.id, &before.cycle, &req.at],
            )
            .await
            .ctx("superseding dispatches")? as u32;
        tx.execute(
            "UPDATE outbox SET next_attempt_at = $4, last_error = $5
             WHERE issue_id = $1 AND cycle = $2 AND superseded_at = $3 AND delivered_at IS NULL",
            &[
                &before.id,
                &before.cycle,
                &req.at,
                &GIVEN_UP,
                &format!("superseded: re-routed to {}", req.class),
            ],
        )
        .await
        .ctx("stopping superseded dispatches")?;
        let route = route + 1;
        tx.execute(
            "UPDATE issues SET route = $2 WHERE id = $1",
            &[&before.id, &route],
        )
        .await
        .ctx("bumping route")?;
        let (after, _) = issue_for_update(tx, before.id).await?;
        let payload = reroute_payload(&failure, &after, after.cycle);
        for sink in &req.sinks {
            let key = routed_key(after.id, after.cycle, route, sink);
            enqueued += tx
                .execute(
                    "INSERT INTO outbox (issue_id, cycle, sink, idempotency_key, payload,
                                         attempts, created_at, next_attempt_at)
                     VALUES ($1, $2, $3, $4, $5, 0, $6, $6)
                     ON CONFLICT (idempotency_key) DO NOTHING",
                    &[&after.id, &after.cycle, &sink, &key, &payload, &req.at],
                )
                .await
                .ctx("enqueueing re-routed dispatch")? as u32;
        }
    }
    let reason = relabel_reason(&before.class, req, note, changed && waiting);
    insert_transition(
        tx,
        None,
        &Transition {
            issue_id: before.id,
            from_state: Some(before.state),
            to_state: before.state,
            cycle: before.cycle,
            at: req.at,
            reason,
        },
    )
    .await?;
    let (issue, _) = issue_for_update(tx, before.id).await?;
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

pub(super) async fn labels_since(
    c: &impl GenericClient,
    after: i64,
    limit: u32,
) -> Result<Vec<LabelRow>> {
    let limit = i64::from(limit.min(MAX_LIST_LIMIT));
    c.query(
        "SELECT id, failure_id, issue_id, fingerprint, from_class, to_class, note, features, at
         FROM labels WHERE id > $1 ORDER BY id LIMIT $2",
        &[&after, &limit],
    )
    .await
    .ctx("reading labels")?
    .iter()
    .map(|r| {
        let get = |e| StoreError::backend("reading label", e);
        Ok(LabelRow {
            id: r.try_get(0).map_err(get)?,
            failure_id: r.try_get(1).map_err(get)?,
            issue_id: r.try_get(2).map_err(get)?,
            fingerprint: r.try_get(3).map_err(get)?,
            from_class: r.try_get(4).map_err(get)?,
            to_class: r.try_get(5).map_err(get)?,
            note: r.try_get(6).map_err(get)?,
            features: features_of(r, 7)?,
            at: r.try_get(8).map_err(get)?,
        })
    })
    .collect()
}

pub(super) async fn record_judgement(c: &impl GenericClient, j: &JudgementRecord) -> Result<i64> {
    let rationale = j.rationale.as_deref().map(|s| cut(s, MAX_NOTE_LEN));
    let raw = j.raw.as_deref().map(|s| cut(s, MAX_RAW_LEN));
    let r = c
        .query_one(
            "INSERT INTO judgements (failure_id, at, outcome, class, confidence, rationale, raw,
                                     model, latency_ms, tokens, applied)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
            &[
                &j.failure_id,
                &j.at,
                &j.outcome,
                &j.class,
                &j.confidence,
                &rationale,
                &raw,
                &j.model,
                &j.latency_ms,
                &j.tokens,
                &j.applied,
            ],
        )
        .await;
    match r {
        Ok(r) => Ok(r.get(0)),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION) => {
            Err(StoreError::FailureNotFound(j.failure_id))
        }
        Err(e) => Err(StoreError::backend("storing judgement", e)),
    }
}

pub(super) async fn failure_counts(
    c: &impl GenericClient,
    from: i64,
    to: i64,
    step_ms: i64,
) -> Result<Vec<BucketCount>> {
    validate_buckets(from, to, step_ms)?;
    c.query(
        "SELECT i.class, (o.observed_at - $1) / $3 AS b, COUNT(*)
         FROM occurrences o JOIN issues i ON i.id = o.issue_id
         WHERE o.observed_at >= $1 AND o.observed_at < $2
         GROUP BY i.class, b ORDER BY i.class, b",
        &[&from, &to, &step_ms],
    )
    .await
    .ctx("counting failures over time")?
    .iter()
    .map(|r| {
        let get = |e| StoreError::backend("reading failure count", e);
        Ok(BucketCount {
            class: r.try_get(0).map_err(get)?,
            bucket: r.try_get(1).map_err(get)?,
            count: r.try_get(2).map_err(get)?,
        })
    })
    .collect()
}
