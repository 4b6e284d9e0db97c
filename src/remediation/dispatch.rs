//! The dispatcher: claims due outbox rows, renders and delivers them to their sinks, and marks them
//! delivered, retried with backoff, or given up.
//!
//! Delivery is at least once: a row is leased while it is delivered and a crash lets the lease run
//! out, so a sink may see an idempotency key again (the jsonl sink skips repeats; HTTP sinks get
//! the key in an `Idempotency-Key` header or a hidden marker).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::{JoinHandle, JoinSet};

use crate::admin::metrics::Metrics;
use crate::classify::taxonomy::Taxonomy;
use crate::clock::SharedClock;
use crate::config::{DispatchConfig, FailureTriage};
use crate::remediation::render::{Remediation, Renderer};
use crate::remediation::sinks::{SinkError, SinkSet};
use crate::remediation::store::{Dispatch, IssueState, Store, StoreError};

/// Most recent occurrences read with an issue for rendering (none are needed).
const RECENT_FOR_RENDER: u32 = 0;

/// Claims per pass: this many times the concurrency, so one pass fits well inside a lease.
const BATCH_PER_WORKER: usize = 2;

/// Delivers the dispatch outbox.
pub struct Dispatcher {
    inner: Arc<Inner>,
    waker: Arc<Notify>,
}

struct Inner {
    store: Arc<dyn Store>,
    sinks: SinkSet,
    taxonomy: Taxonomy,
    renderer: Renderer,
    cfg: DispatchConfig,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    jitter: RandomState,
}

/// How one dispatch ended this pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Delivered,
    Retried,
    GaveUp,
    /// The outcome could not be stored; the lease will run out and the row be claimed again.
    Unrecorded,
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default)]
struct Pass {
    claimed: usize,
    delivered: usize,
}

impl Dispatcher {
    pub fn new(
        store: Arc<dyn Store>,
        sinks: SinkSet,
        taxonomy: Taxonomy,
        ft: &FailureTriage,
        clock: SharedClock,
        metrics: Arc<Metrics>,
    ) -> Self {
        let inner = Inner {
            store,
            sinks,
            taxonomy,
            renderer: Renderer {
                templates: ft.templates.clone(),
                trace_url_template: ft.trace_url_template.clone(),
            },
            cfg: ft.dispatch.clone(),
            clock,
            metrics,
            jitter: RandomState::new(),
        };
        Dispatcher {
            inner: Arc::new(inner),
            waker: Arc::new(Notify::new()),
        }
    }

    /// Wakes the loop early (called after new dispatches are enqueued): `waker().notify_one()`.
    pub fn waker(&self) -> Arc<Notify> {
        self.waker.clone()
    }

    /// Runs until `stop` flips: claim due dispatches (batch, lease), deliver concurrently (cap
    /// `concurrency`), mark. Polls every `poll_interval`, or at once when woken or when the last
    /// batch was full.
    pub fn spawn(self, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
        tokio::spawn(async move {
            let poll = self.inner.cfg.poll_interval.max(Duration::from_millis(1));
            loop {
                if *stop.borrow() {
                    break;
                }
                let full = match self.inner.clone().pass().await {
                    Ok(p) => p.claimed >= self.inner.batch(),
                    Err(e) => {
                        tracing::warn!(error = %e, "dispatch: claiming due dispatches failed");
                        false
                    }
                };
                if full {
                    continue;
                }
                tokio::select! {
                    r = stop.changed() => if r.is_err() { break },
                    _ = self.waker.notified() => {},
                    _ = tokio::time::sleep(poll) => {},
                }
            }
            tracing::debug!("dispatch loop stopped");
        })
    }

    /// One pass (claim + deliver all claimed), for tests and for draining at shutdown; returns
    /// how many were delivered.
    pub async fn run_once(&self) -> anyhow::Result<usize> {
        Ok(self.inner.clone().pass().await?.delivered)
    }
}

impl Inner {
    fn batch(&self) -> usize {
        self.cfg.concurrency.max(1).saturating_mul(BATCH_PER_WORKER)
    }

    /// Claims one batch and delivers it, at most `concurrency` at a time.
    async fn pass(self: Arc<Self>) -> Result<Pass, StoreError> {
        let now = self.clock.now_ms();
        let lease_ms = i64::try_from(self.cfg.lease.as_millis()).unwrap_or(i64::MAX);
        let limit = u32::try_from(self.batch()).unwrap_or(u32::MAX);
        let claimed = self
            .store
            .claim_due_dispatches(now, limit, lease_ms)
            .await?;
        let mut pass = Pass {
            claimed: claimed.len(),
            delivered: 0,
        };
        let cap = self.cfg.concurrency.max(1);
        let mut running = JoinSet::new();
        for d in claimed {
            if running.len() >= cap {
                pass.delivered += joined(running.join_next().await);
            }
            let me = self.clone();
            running.spawn(async move { me.handle(d).await });
        }
        while let Some(r) = running.join_next().await {
            pass.delivered += joined(Some(r));
        }
        Ok(pass)
    }

    /// Delivers one claimed dispatch and records the outcome.
    async fn handle(&self, d: Dispatch) -> Outcome {
        match self.deliver(&d).await {
            Ok(r) => self.delivered(&d, &r).await,
            Err(e) => self.failed(&d, &e).await,
        }
    }

    /// Renders the dispatch and hands it to its sink.
    async fn deliver(&self, d: &Dispatch) -> Result<Remediation, SinkError> {
        let Some(sink) = self.sinks.get(&d.sink) else {
            return Err(SinkError::Permanent(format!(
                "sink {:?} is not configured",
                d.sink
            )));
        };
        let detail = self
            .store
            .get_issue(d.issue_id, RECENT_FOR_RENDER)
            .await
            .map_err(|e| SinkError::Retryable(format!("reading issue {}: {e}", d.issue_id)))?
            .ok_or_else(|| SinkError::Permanent(format!("issue {} not found", d.issue_id)))?;
        let class = self.taxonomy.class(&detail.issue.class);
        let r = self
            .renderer
            .render(d, &detail, class, self.clock.now_ms())
            .map_err(|e| SinkError::Permanent(e.to_string()))?;
        sink.deliver(&r).await?;
        Ok(r)
    }

    /// Marks the row delivered and moves the issue to `dispatched` on the cycle's first delivery.
    async fn delivered(&self, d: &Dispatch, r: &Remediation) -> Outcome {
        let now = self.clock.now_ms();
        if let Err(e) = self.store.mark_delivered(d.id, now).await {
            tracing::warn!(dispatch = d.id, key = d.idempotency_key, error = %e,
                "dispatch: delivered but not marked; it will be delivered again");
            return Outcome::Unrecorded;
        }
        self.metrics.dispatch(&d.sink, "delivered");
        tracing::info!(
            dispatch = d.id,
            key = d.idempotency_key,
            sink = d.sink,
            "dispatch delivered"
        );
        if d.cycle == r.cycle && matches!(r.state, IssueState::Open | IssueState::Regressed) {
            self.mark_issue_dispatched(d, now).await;
        }
        Outcome::Delivered
    }

    /// `open`/`regressed` → `dispatched`; observes the dispatched loop latency when it moved.
    async fn mark_issue_dispatched(&self, d: &Dispatch, now: i64) {
        let reason = format!("delivered to {}", d.sink);
        match self
            .store
            .transition(d.issue_id, IssueState::Dispatched, now, &reason, None)
            .await
        {
            Ok(_) => {}
            // Another sink of this cycle (or a ship) moved it first.
            Err(StoreError::InvalidTransition { .. }) => return,
            Err(e) => {
                tracing::warn!(issue = d.issue_id, error = %e, "dispatch: moving issue to dispatched failed");
                return;
            }
        }
        let issue = match self.store.get_issue(d.issue_id, 0).await {
            Ok(Some(detail)) => detail.issue,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(issue = d.issue_id, error = %e, "dispatch: reading issue for latency failed");
                return;
            }
        };
        // Loop latency is measured from the first failure of the issue's current cycle.
        let cycle_start = issue.cycle_started_at;
        let seconds = (now - cycle_start) as f64 / 1000.0;
        self.metrics
            .loop_latency(&issue.class, "dispatched", seconds);
    }

    /// Schedules a retry with backoff, or gives up after `max_attempts` or on a permanent error.
    async fn failed(&self, d: &Dispatch, e: &SinkError) -> Outcome {
        let now = self.clock.now_ms();
        let give_up = e.is_permanent() || d.attempts >= i64::from(self.cfg.max_attempts);
        let (next, error, outcome) = if give_up {
            let msg = format!("gave up after {} attempts: {e}", d.attempts);
            tracing::warn!(dispatch = d.id, key = d.idempotency_key, sink = d.sink, error = %msg,
                "dispatch given up");
            (i64::MAX, msg, Outcome::GaveUp)
        } else {
            let wait = self.backoff(d);
            tracing::info!(dispatch = d.id, key = d.idempotency_key, sink = d.sink, attempt = d.attempts,
                retry_in_ms = wait, error = %e, "dispatch failed; will retry");
            (now.saturating_add(wait), e.to_string(), Outcome::Retried)
        };
        if let Err(se) = self.store.mark_failed(d.id, next, &error).await {
            tracing::warn!(dispatch = d.id, error = %se, "dispatch: recording the failure failed");
            return Outcome::Unrecorded;
        }
        self.metrics.dispatch(
            &d.sink,
            if outcome == Outcome::GaveUp {
                "gave_up"
            } else {
                "retried"
            },
        );
        outcome
    }

    /// Milliseconds to wait after attempt `d.attempts`: `initial_interval · 2^(attempts-1)`,
    /// capped at `max_interval`, then jittered into its upper half.
    fn backoff(&self, d: &Dispatch) -> i64 {
        let initial = self.cfg.initial_interval.as_millis().max(1);
        let max = self.cfg.max_interval.as_millis().max(initial);
        let exp = u32::try_from(d.attempts.saturating_sub(1).clamp(0, 62)).unwrap_or(62);
        let base = initial.saturating_mul(1u128 << exp).min(max);
        let half = base / 2;
        let jitter = u128::from(self.jitter.hash_one((d.id, d.attempts))) % (base - half + 1);
        i64::try_from(half + jitter).unwrap_or(i64::MAX)
    }
}

/// 1 when a finished delivery task delivered, else 0 (a panicked task is logged).
fn joined(r: Option<Result<Outcome, tokio::task::JoinError>>) -> usize {
    match r {
        Some(Ok(Outcome::Delivered)) => 1,
        Some(Ok(_)) | None => 0,
        Some(Err(e)) => {
            tracing::warn!(error = %e, "dispatch: delivery task failed");
            0
        }
    }
}
