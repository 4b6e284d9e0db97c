//! The admin JSON API under `/api/v1`: issues, ship, deployments and the scaling gate.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::config::GateConfig;
use crate::remediation::gate;
use crate::remediation::lifecycle::Lifecycle;
use crate::remediation::store::{Issue, IssueFilter, IssueState, Occurrence, StoreError};

/// Recent failures shown with one issue.
const RECENT_FAILURES: u32 = 20;

/// What the API handlers share.
pub struct ApiState {
    pub lifecycle: Arc<Lifecycle>,
    pub gate: GateConfig,
    pub trace_url_template: Option<String>,
}

/// The `/api/v1` routes.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/v1/issues", get(list_issues))
        .route("/api/v1/issues/{id}", get(get_issue))
        .route("/api/v1/issues/{id}/ship", post(ship))
        .route("/api/v1/issues/{id}/ignore", post(ignore))
        .route("/api/v1/deployments", post(deployment))
        .route("/api/v1/gate", get(gate_report))
        .with_state(state)
}

/// An API error: a status and a JSON `{"error": …}` body.
pub struct ApiError(StatusCode, String);

impl ApiError {
    pub fn new(status: StatusCode, message: String) -> Self {
        ApiError(status, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match &e {
            StoreError::IssueNotFound(_)
            | StoreError::DispatchNotFound(_)
            | StoreError::FailureNotFound(_) => StatusCode::NOT_FOUND,
            StoreError::InvalidTransition { .. } => StatusCode::CONFLICT,
            StoreError::Invalid(_) => StatusCode::BAD_REQUEST,
            _ => {
                tracing::warn!(error = %e, "store error in API");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        ApiError(status, e.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        ApiError(e.status(), e.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        ApiError(StatusCode::BAD_REQUEST, e.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError(StatusCode::BAD_REQUEST, e.body_text())
    }
}

/// An issue id from the path, refused with a JSON error when it is not a number.
type IssueId = Result<Path<i64>, PathRejection>;

/// Seconds from the cycle's first failure to each stage it reached.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub classified_s: Option<f64>,
    pub dispatched_s: Option<f64>,
    pub shipped_s: Option<f64>,
    pub verified_s: Option<f64>,
}

/// One issue as the API shows it.
#[derive(Debug, Serialize)]
pub struct IssueView {
    pub id: i64,
    pub fingerprint: String,
    pub class: String,
    pub source: String,
    pub confidence: f64,
    pub state: IssueState,
    pub cycle: i64,
    pub agent: String,
    pub service: String,
    pub remediation: String,
    pub occurrences: i64,
    pub first_seen: String,
    pub last_seen: String,
    pub cycle_started: String,
    pub shipped_version: Option<String>,
    pub latency: Latency,
}

use crate::clock::rfc3339;

impl From<&Issue> for IssueView {
    fn from(i: &Issue) -> Self {
        let since = |t: Option<i64>| t.map(|t| (t - i.cycle_started_at) as f64 / 1000.0);
        IssueView {
            id: i.id,
            fingerprint: i.fingerprint.clone(),
            class: i.class.clone(),
            source: i.source.as_str().into(),
            confidence: i.confidence,
            state: i.state,
            cycle: i.cycle,
            agent: i.agent.clone(),
            service: i.service.clone(),
            remediation: i.remediation.clone(),
            occurrences: i.occurrences,
            first_seen: rfc3339(i.first_seen),
            last_seen: rfc3339(i.last_seen),
            cycle_started: rfc3339(i.cycle_started_at),
            shipped_version: i.shipped_version.clone(),
            latency: Latency {
                classified_s: since(i.classified_at),
                dispatched_s: since(i.dispatched_at),
                shipped_s: since(i.shipped_at),
                verified_s: since(i.verified_at),
            },
        }
    }
}

#[derive(Debug, Deserialize)]
struct IssueQuery {
    class: Option<String>,
    state: Option<String>,
    agent: Option<String>,
    limit: Option<u32>,
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

async fn list_issues(
    State(st): State<Arc<ApiState>>,
    q: Result<Query<IssueQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = q?;
    let state = non_empty(q.state)
        .map(|s| s.parse::<IssueState>())
        .transpose()?;
    let filter = IssueFilter {
        class: non_empty(q.class),
        state,
        agent: non_empty(q.agent),
        limit: q.limit,
    };
    let issues = st.lifecycle.store().list_issues(&filter).await?;
    let views: Vec<IssueView> = issues.iter().map(IssueView::from).collect();
    Ok(Json(serde_json::json!({ "issues": views })))
}

/// A failure of an issue, with a link to its trace.
#[derive(Debug, Serialize)]
struct FailureView<'a> {
    #[serde(flatten)]
    occurrence: &'a Occurrence,
    observed: String,
    trace_url: Option<String>,
}

async fn get_issue(
    State(st): State<Arc<ApiState>>,
    id: IssueId,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(id) = id?;
    let detail = st
        .lifecycle
        .store()
        .get_issue(id, RECENT_FAILURES)
        .await?
        .ok_or(StoreError::IssueNotFound(id))?;
    let failures: Vec<FailureView> = detail
        .recent_occurrences
        .iter()
        .map(|o| FailureView {
            occurrence: o,
            observed: rfc3339(o.observed_at),
            trace_url: st.trace_url_template.as_deref().map(|t| {
                t.replace("{trace_id}", &o.trace_id)
                    .replace("{span_id}", &o.root_span_id)
            }),
        })
        .collect();
    Ok(Json(serde_json::json!({
        "issue": IssueView::from(&detail.issue),
        "agents": detail.agents,
        "services": detail.services,
        "versions": detail.versions,
        "sample_trace_ids": detail.sample_trace_ids,
        "recent_failures": failures,
        "transitions": detail.transitions,
        "dispatches": detail.dispatches,
    })))
}

#[derive(Debug, Deserialize)]
struct ShipBody {
    version: String,
}

async fn ship(
    State(st): State<Arc<ApiState>>,
    id: IssueId,
    body: Result<Json<ShipBody>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(id) = id?;
    let Json(body) = body?;
    let issue = st
        .lifecycle
        .ship(
            id,
            &body.version,
            &format!("shipped in {}", body.version.trim()),
        )
        .await?;
    Ok(Json(
        serde_json::json!({ "issue": IssueView::from(&issue) }),
    ))
}

#[derive(Debug, Deserialize)]
struct DeploymentBody {
    service: String,
    version: String,
    #[serde(default)]
    fixes: Vec<i64>,
}

async fn deployment(
    State(st): State<Arc<ApiState>>,
    body: Result<Json<DeploymentBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let outcome = st
        .lifecycle
        .deploy(&body.service, &body.version, &body.fixes)
        .await?;
    // Every fix that could be shipped was (which could not, and why, is in `errors`); 409 only
    // when none could.
    let status = if !outcome.errors.is_empty() && outcome.shipped.is_empty() {
        StatusCode::CONFLICT
    } else {
        StatusCode::OK
    };
    Ok((status, Json(outcome)).into_response())
}

#[derive(Debug, Default, Deserialize)]
struct ReasonBody {
    #[serde(default)]
    reason: Option<String>,
}

async fn ignore(
    State(st): State<Arc<ApiState>>,
    id: IssueId,
    body: Option<Json<ReasonBody>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(id) = id?;
    let reason = body
        .and_then(|Json(b)| b.reason)
        .unwrap_or_else(|| "ignored".into());
    let issue = st.lifecycle.ignore(id, &reason).await?;
    Ok(Json(
        serde_json::json!({ "issue": IssueView::from(&issue) }),
    ))
}

async fn gate_report(State(st): State<Arc<ApiState>>) -> Result<Json<gate::GateReport>, ApiError> {
    Ok(Json(st.lifecycle.gate_report(&st.gate).await?))
}
