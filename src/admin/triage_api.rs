//! The admin JSON API of human triage under `/api/v1`: the taxonomy, the triage queue, one
//! failure with its trace, labels, and per-class failure counts and loop latency over time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::admin::api::{ApiError, IssueView};
use crate::clock::rfc3339;
use crate::remediation::store::{IssueFilter, Occurrence, StoreError};
use crate::remediation::triage::{Triage, TriageError};

/// Queue entries returned when the request names no limit.
const DEFAULT_QUEUE_LIMIT: u32 = 200;
/// Most buckets one stats request may ask for.
const MAX_BUCKETS: i64 = 500;
/// The longest stats window.
const MAX_WINDOW: Duration = Duration::from_secs(90 * 24 * 3600);

/// What the triage handlers share.
pub struct TriageState {
    pub triage: Arc<Triage>,
    pub trace_url_template: Option<String>,
}

impl TriageState {
    fn trace_url(&self, trace_id: &str, span_id: &str) -> Option<String> {
        self.trace_url_template.as_deref().map(|t| {
            t.replace("{trace_id}", trace_id)
                .replace("{span_id}", span_id)
        })
    }
}

/// The triage routes.
pub fn router(state: Arc<TriageState>) -> Router {
    Router::new()
        .route("/api/v1/taxonomy", get(taxonomy))
        .route("/api/v1/queue", get(queue))
        .route("/api/v1/failures/{id}", get(failure))
        .route("/api/v1/failures/{id}/label", post(label))
        .route("/api/v1/stats", get(stats))
        .with_state(state)
}

impl From<TriageError> for ApiError {
    fn from(e: TriageError) -> Self {
        match e {
            TriageError::UnknownClass(..) => ApiError::new(StatusCode::BAD_REQUEST, e.to_string()),
            TriageError::Store(s) => s.into(),
        }
    }
}

#[derive(Serialize)]
struct ClassView<'a> {
    name: &'a str,
    remediation: &'a str,
    owner: &'a str,
    description: &'a str,
}

async fn taxonomy(State(st): State<Arc<TriageState>>) -> Json<serde_json::Value> {
    let taxonomy = st.triage.lifecycle().taxonomy();
    let classes: Vec<ClassView> = taxonomy
        .class_names()
        .into_iter()
        .filter_map(|n| taxonomy.class(n))
        .map(|c| ClassView {
            name: &c.name,
            remediation: &c.remediation,
            owner: &c.owner,
            description: &c.description,
        })
        .collect();
    Json(serde_json::json!({
        "classes": classes,
        "min_confidence": st.triage.min_confidence(),
    }))
}

#[derive(Debug, Deserialize)]
struct LimitQuery {
    limit: Option<u32>,
}

/// One line about a failure's signal: kind, name and message.
fn summary(o: &Occurrence) -> String {
    let field = |k: &str| o.signal.get(k).and_then(|v| v.as_str()).unwrap_or("");
    let mut s = format!("{} {}", field("kind"), field("name"));
    let message = field("message");
    let message = if message.is_empty() {
        field("label")
    } else {
        message
    };
    if !message.is_empty() {
        s.push_str(": ");
        s.extend(message.chars().take(200));
    }
    s.trim().to_string()
}

async fn queue(
    State(st): State<Arc<TriageState>>,
    q: Result<Query<LimitQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = q?;
    let items = st
        .triage
        .lifecycle()
        .store()
        .queue(q.limit.unwrap_or(DEFAULT_QUEUE_LIMIT))
        .await?;
    let queue: Vec<serde_json::Value> = items
        .iter()
        .map(|item| {
            let f = &item.failure;
            serde_json::json!({
                "failure_id": f.id,
                "issue_id": f.issue_id,
                "reason": f.queue_reason.map(|r| r.as_str()),
                "class": f.class,
                "source": f.source.as_str(),
                "confidence": f.confidence,
                "agent": f.agent,
                "service": f.service,
                "operation": f.signal.get("operation").and_then(|v| v.as_str()).unwrap_or(""),
                "trace_id": f.trace_id,
                "root_span_id": f.root_span_id,
                "observed": rfc3339(f.observed_at),
                "summary": summary(f),
                "occurrences": item.occurrences,
                "trace_url": st.trace_url(&f.trace_id, &f.root_span_id),
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "queue": queue })))
}

async fn failure(
    State(st): State<Arc<TriageState>>,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(id) = id?;
    let store = st.triage.lifecycle().store();
    let sf = store
        .get_failure(id)
        .await?
        .ok_or(StoreError::FailureNotFound(id))?;
    let f = &sf.failure;
    let issue = store
        .get_issue(f.issue_id, 0)
        .await?
        .ok_or(StoreError::IssueNotFound(f.issue_id))?;
    Ok(Json(serde_json::json!({
        "failure": {
            "id": f.id,
            "issue_id": f.issue_id,
            "trace_id": f.trace_id,
            "root_span_id": f.root_span_id,
            "class": f.class,
            "source": f.source.as_str(),
            "confidence": f.confidence,
            "rule": f.rule,
            "agent": f.agent,
            "service": f.service,
            "service_version": f.service_version,
            "observed": rfc3339(f.observed_at),
            "queue_reason": f.queue_reason.map(|r| r.as_str()),
            "resolved": f.resolved_at.map(rfc3339),
            "resolved_by": f.resolved_by,
            "trace_url": st.trace_url(&f.trace_id, &f.root_span_id),
            "signal": f.signal,
            "detail": sf.detail,
            "features": sf.features,
            "judgement": sf.judgements.last(),
        },
        "issue": IssueView::from(&issue.issue),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelBody {
    class: String,
    #[serde(default)]
    note: String,
}

async fn label(
    State(st): State<Arc<TriageState>>,
    id: Result<Path<i64>, PathRejection>,
    body: Result<Json<LabelBody>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(id) = id?;
    let Json(body) = body?;
    let out = st.triage.label(id, body.class.trim(), &body.note).await?;
    Ok(Json(serde_json::json!({
        "issue": IssueView::from(&out.issue),
        "label": out.label.as_ref().map(|l| serde_json::json!({
            "id": l.id,
            "failure_id": l.failure_id,
            "issue_id": l.issue_id,
            "from_class": l.from_class,
            "to_class": l.to_class,
            "note": l.note,
            "at": rfc3339(l.at),
        })),
        "rerouted": out.rerouted,
        "superseded": out.superseded,
        "dispatches_enqueued": out.dispatches_enqueued,
    })))
}

#[derive(Debug, Deserialize)]
struct StatsQuery {
    window: Option<String>,
    step: Option<String>,
}

/// A duration query parameter (`30m`, `24h`, `7d`), or `default`.
fn duration_param(name: &str, v: Option<&str>, default: Duration) -> Result<Duration, ApiError> {
    match v.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(v) => humantime::parse_duration(v).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("{name}: {e} (e.g. 30m, 24h, 7d)"),
            )
        }),
    }
}

/// Per-class series over `[from, from + buckets × step)`.
#[derive(Debug, Default, Serialize)]
struct ClassSeries {
    failures: Vec<i64>,
    /// Stage → mean seconds from the cycle's first failure to the stage, per bucket of the
    /// stage's time (`None`: no issue reached the stage in that bucket).
    latency_s: BTreeMap<&'static str, Vec<Option<f64>>>,
}

const STAGES: [&str; 3] = ["dispatched", "shipped", "verified"];

async fn stats(
    State(st): State<Arc<TriageState>>,
    q: Result<Query<StatsQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = q?;
    let window = duration_param("window", q.window.as_deref(), Duration::from_secs(86_400))?;
    let step = duration_param("step", q.step.as_deref(), Duration::from_secs(3_600))?;
    if window.is_zero() || window > MAX_WINDOW || step.as_millis() < 1_000 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "window must be in (0, 90d] and step at least 1s".into(),
        ));
    }
    let (window_ms, step_ms) = (window.as_millis() as i64, step.as_millis() as i64);
    let buckets = (window_ms + step_ms - 1) / step_ms;
    if buckets > MAX_BUCKETS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{buckets} buckets asked for, at most {MAX_BUCKETS}: use a larger step"),
        ));
    }
    let lifecycle = st.triage.lifecycle();
    let now = lifecycle.clock().now_ms();
    // Buckets end at the next step boundary after now, so the last one holds now.
    let to = (now.div_euclid(step_ms) + 1) * step_ms;
    let from = to - buckets * step_ms;
    let mut classes: BTreeMap<String, ClassSeries> = lifecycle
        .taxonomy()
        .class_names()
        .into_iter()
        .map(|c| (c.to_string(), ClassSeries::default()))
        .collect();
    let n = buckets as usize;
    let series = |classes: &mut BTreeMap<String, ClassSeries>, class: &str| {
        let s = classes.entry(class.to_string()).or_default();
        if s.failures.is_empty() {
            s.failures = vec![0; n];
            for stage in STAGES {
                s.latency_s.insert(stage, vec![None; n]);
            }
        }
    };
    for c in classes.keys().cloned().collect::<Vec<_>>() {
        series(&mut classes, &c);
    }
    let store = lifecycle.store();
    for b in store.failure_counts(from, to, step_ms).await? {
        series(&mut classes, &b.class);
        if let Some(slot) = classes
            .get_mut(&b.class)
            .and_then(|s| s.failures.get_mut(b.bucket as usize))
        {
            *slot = b.count;
        }
    }
    let issues = store
        .list_issues(&IssueFilter {
            limit: Some(100_000),
            ..IssueFilter::default()
        })
        .await?;
    // (class, stage, bucket) → (sum of seconds, count)
    let mut sums: BTreeMap<(String, &'static str, usize), (f64, u32)> = BTreeMap::new();
    for i in &issues {
        for (stage, at) in STAGES
            .iter()
            .zip([i.dispatched_at, i.shipped_at, i.verified_at])
        {
            let Some(at) = at.filter(|at| (from..to).contains(at)) else {
                continue;
            };
            let bucket = ((at - from) / step_ms) as usize;
            let e = sums
                .entry((i.class.clone(), stage, bucket))
                .or_insert((0.0, 0));
            e.0 += (at - i.cycle_started_at).max(0) as f64 / 1000.0;
            e.1 += 1;
        }
    }
    for ((class, stage, bucket), (sum, count)) in sums {
        series(&mut classes, &class);
        if let Some(slot) = classes
            .get_mut(&class)
            .and_then(|s| s.latency_s.get_mut(stage))
            .and_then(|v| v.get_mut(bucket))
        {
            *slot = Some(sum / f64::from(count));
        }
    }
    let starts: Vec<String> = (0..buckets).map(|b| rfc3339(from + b * step_ms)).collect();
    Ok(Json(serde_json::json!({
        "from": rfc3339(from),
        "to": rfc3339(to),
        "step_s": step_ms / 1000,
        "buckets": starts,
        "classes": classes,
    })))
}
