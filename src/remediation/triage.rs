//! Human triage and the learning loop: a person's label re-routes an issue and teaches the
//! hot path (labels by fingerprint) and the learned model; labels are synced from the store so
//! several instances learn the same; the optional LLM judge works through failures still under
//! `min_confidence`, one at a time, within its rate limit and budget.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinHandle;

use crate::admin::metrics::Metrics;
use crate::classify::labels::LabelBook;
use crate::classify::llm::{Judge, JudgeInput};
use crate::classify::model::SharedModel;
use crate::classify::Source;
use crate::failure::detail::FailureDetail;
use crate::remediation::lifecycle::Lifecycle;
use crate::remediation::store::{JudgementRecord, Relabel, RelabelOutcome, StoreError};

/// The name the model's snapshot is stored under.
pub const MODEL_NAME: &str = "default";
/// How often labels other instances stored are picked up.
const SYNC_INTERVAL: Duration = Duration::from_secs(10);
/// Labels read per store call while syncing.
const SYNC_PAGE: u32 = 1_000;

/// Errors of a label request.
#[derive(Debug, thiserror::Error)]
pub enum TriageError {
    #[error("unknown class {0:?}; the taxonomy's classes are: {1}")]
    UnknownClass(String, String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The human side of classification, shared by the API and the background tasks.
pub struct Triage {
    lifecycle: Arc<Lifecycle>,
    metrics: Arc<Metrics>,
    labels: LabelBook,
    model: SharedModel,
    min_confidence: f64,
    /// The highest label id applied to `labels` and `model` (held while applying, so labels are
    /// learned once each and in order).
    applied: Mutex<i64>,
}

impl Triage {
    /// Restores the model from its stored snapshot (or retrains it from every stored label),
    /// then loads every human label into the hot path's label book.
    pub async fn start(
        lifecycle: Arc<Lifecycle>,
        metrics: Arc<Metrics>,
        labels: LabelBook,
        model: SharedModel,
        min_confidence: f64,
    ) -> Result<Arc<Self>, StoreError> {
        let store = lifecycle.store().clone();
        let mut learned_up_to = 0;
        if let Some((last, snapshot)) = store.load_model(MODEL_NAME).await? {
            match model.restore(&snapshot) {
                Ok(()) => learned_up_to = last,
                Err(e) => tracing::warn!(
                    error = %e,
                    "stored model snapshot not usable; retraining from the stored labels"
                ),
            }
        }
        let triage = Arc::new(Triage {
            lifecycle,
            metrics,
            labels,
            model,
            min_confidence,
            applied: Mutex::new(0),
        });
        triage.apply_labels(learned_up_to).await?;
        Ok(triage)
    }

    pub fn lifecycle(&self) -> &Arc<Lifecycle> {
        &self.lifecycle
    }

    pub fn model(&self) -> &SharedModel {
        &self.model
    }

    pub fn min_confidence(&self) -> f64 {
        self.min_confidence
    }

    /// A person gives failure `failure_id`'s whole issue `class` (see `Store::relabel`); the
    /// hot path and the model learn it at once.
    pub async fn label(
        &self,
        failure_id: i64,
        class: &str,
        note: &str,
    ) -> Result<RelabelOutcome, TriageError> {
        let remediation = self.remediation_of(class)?;
        let req = Relabel {
            failure_id,
            class: class.to_string(),
            remediation,
            source: Source::Human,
            confidence: 1.0,
            note: note.to_string(),
            sinks: self.lifecycle.sinks_of(class).to_vec(),
            at: self.lifecycle.clock().now_ms(),
        };
        let out = self.lifecycle.store().relabel(&req).await?;
        if out.from_class != out.issue.class {
            self.metrics
                .override_class(&out.from_class, &out.issue.class);
        }
        self.relabelled(&out);
        let applied = *self.applied.lock().await;
        if let Err(e) = self.apply_labels(applied).await {
            tracing::warn!(error = %e, "label stored, but not yet learned; the next sync retries");
        }
        Ok(out)
    }

    /// The remediation path of `class`, or the error naming the taxonomy's classes.
    fn remediation_of(&self, class: &str) -> Result<String, TriageError> {
        let taxonomy = self.lifecycle.taxonomy();
        match taxonomy.class(class) {
            Some(c) => Ok(c.remediation.clone()),
            None => Err(TriageError::UnknownClass(
                class.to_string(),
                taxonomy.class_names().join(", "),
            )),
        }
    }

    /// Wakes the dispatcher and refreshes gauges after an issue changed class.
    fn relabelled(&self, out: &RelabelOutcome) {
        if out.dispatches_enqueued > 0 {
            self.lifecycle.wake_dispatcher();
        }
        tracing::info!(
            issue = out.issue.id,
            from = %out.from_class,
            to = %out.issue.class,
            source = %out.issue.source,
            rerouted = out.rerouted,
            "issue relabelled"
        );
    }

    /// Applies every stored label with an id above the last applied one: the label book takes
    /// all of them, the model learns those above `learned_up_to`. Saves the model's snapshot
    /// when it learned anything.
    async fn apply_labels(&self, learned_up_to: i64) -> Result<(), StoreError> {
        let store = self.lifecycle.store();
        let mut applied = self.applied.lock().await;
        let mut learned = false;
        loop {
            let page = store.labels_since(*applied, SYNC_PAGE).await?;
            let Some(last) = page.last().map(|l| l.id) else {
                break;
            };
            for l in &page {
                self.labels.set(&l.fingerprint, &l.to_class);
                if l.id > learned_up_to && !l.features.is_empty() {
                    learned |= self.model.learn(&l.features, &l.to_class);
                }
            }
            *applied = last;
            if page.len() < SYNC_PAGE as usize {
                break;
            }
        }
        if learned {
            let now = self.lifecycle.clock().now_ms();
            store
                .save_model(MODEL_NAME, *applied, &self.model.snapshot(), now)
                .await?;
        }
        Ok(())
    }

    /// Picks up labels stored by other instances every `SYNC_INTERVAL` until `stop`.
    pub fn spawn_sync(self: &Arc<Self>, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
        let triage = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SYNC_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let applied = *triage.applied.lock().await;
                        if let Err(e) = triage.apply_labels(applied).await {
                            tracing::warn!(error = %e, "syncing labels failed; retrying");
                        }
                    }
                    r = stop.changed() => if r.is_err() || *stop.borrow() { break },
                }
            }
        })
    }

    /// Judges one failure and stores what happened; a confident answer re-routes its issue
    /// (never over a person's label).
    async fn judge_one(&self, judge: &Judge, failure_id: i64) -> Result<(), StoreError> {
        let store = self.lifecycle.store();
        let Some(sf) = store.get_failure(failure_id).await? else {
            return Ok(());
        };
        let f = &sf.failure;
        if f.resolved_at.is_some() {
            return Ok(());
        }
        let detail: Option<FailureDetail> = sf
            .detail
            .as_ref()
            .and_then(|d| serde_json::from_value(d.clone()).ok());
        let input = JudgeInput {
            failure_id,
            current_class: &f.class,
            confidence: f.confidence,
            signal: &f.signal,
            detail: detail.as_ref(),
            agent: &f.agent,
            service: &f.service,
        };
        let now = self.lifecycle.clock().now_ms();
        let mut record = JudgementRecord {
            failure_id,
            at: now,
            outcome: String::new(),
            class: None,
            confidence: None,
            rationale: None,
            raw: None,
            model: None,
            latency_ms: None,
            tokens: None,
            applied: false,
        };
        match judge.judge(&input).await {
            Ok(j) => {
                if j.confidence >= self.min_confidence {
                    let out = store
                        .relabel(&Relabel {
                            failure_id,
                            class: j.class.clone(),
                            remediation: self.remediation_of(&j.class).unwrap_or_default(),
                            source: Source::Llm,
                            confidence: j.confidence,
                            note: j.rationale.clone(),
                            sinks: self.lifecycle.sinks_of(&j.class).to_vec(),
                            at: now,
                        })
                        .await?;
                    record.applied = out.applied;
                    if out.applied {
                        self.relabelled(&out);
                    }
                }
                self.metrics.judge_outcome("answered");
                record.outcome = "answered".into();
                record.tokens = match (j.prompt_tokens, j.completion_tokens) {
                    (None, None) => None,
                    (p, c) => Some((p.unwrap_or(0) + c.unwrap_or(0)) as i64),
                };
                record.latency_ms = Some(j.latency_ms as i64);
                record.class = Some(j.class);
                record.confidence = Some(j.confidence);
                record.rationale = Some(j.rationale);
                record.raw = Some(j.raw);
                record.model = Some(j.model);
            }
            Err(e) => {
                self.metrics.judge_outcome(e.outcome());
                record.outcome = e.outcome().into();
                record.raw = e.raw().map(String::from);
                record.rationale = Some(e.to_string());
            }
        }
        store.record_judgement(&record).await?;
        Ok(())
    }

    /// Starts the judge's worker (failures come from `Lifecycle::set_judge_queue`, capped at
    /// `queue_size`): one failure at a time, waiting out the judge's rate limit and budget
    /// (`Judge::ready_in`) before each, until `stop`.
    pub fn spawn_judge(
        self: &Arc<Self>,
        judge: Judge,
        queue_size: usize,
        mut stop: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let (tx, mut rx) = mpsc::channel(queue_size.max(1));
        self.lifecycle.set_judge_queue(tx);
        let triage = self.clone();
        tokio::spawn(async move {
            loop {
                let wait = judge.ready_in();
                if !wait.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.changed() => break,
                    }
                }
                let id = tokio::select! {
                    id = rx.recv() => match id { Some(id) => id, None => break },
                    _ = stop.changed() => break,
                };
                // A call in flight at shutdown is abandoned: the failure stays unjudged.
                tokio::select! {
                    r = triage.judge_one(&judge, id) => if let Err(e) = r {
                        tracing::warn!(error = %e, failure = id, "judging a failure failed");
                    },
                    _ = stop.changed() => break,
                }
            }
        })
    }
}
