//! The dispatcher: claims due outbox rows, renders and delivers them to their sinks, and marks them
//! delivered, retried with backoff, or given up.
//!
//! Delivery is at least once: a row is leased while it is delivered and a crash lets the lease run
//! out, so a sink may see an idempotency key again (the jsonl sink skips repeats; the webhook gets
//! the key in an `Idempotency-Key` header; the github sink looks for its hidden marker on a retry
//! before opening an issue). One delivery is cut off before its lease runs out, so another
//! instance does not claim a row still being delivered.
//!
//! "Delivered" means acknowledged by the destination for `jsonl` (synced to disk), `webhook`,
//! `github` and `slack` (a 2xx answer), but only *enqueued* for `otlp_log`: that sink is best
//! effort after the export queue accepts the event (the exporter retries it with its
//! `retry_on_failure` settings; a crash or an exporter that gives up loses it).
//!
//! A dispatch of an issue that is now `ignored` is not delivered: it is given up ("issue ignored").
//! When `stop` flips, the loop makes one last bounded pass (`SHUTDOWN_DRAIN`) before returning.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::admin::metrics::Metrics;
use crate::classify::taxonomy::Taxonomy;
use crate::clock::SharedClock;
use crate::config::{DispatchConfig, FailureTriage};
use crate::remediation::render::Renderer;
use crate::remediation::sinks::{SinkError, SinkSet};
use crate::remediation::store::{
    Dispatch, Issue, IssueDetail, IssueState, Store, StoreError, GIVEN_UP,
};

/// While claiming keeps failing (the store is down), one log line per this long.
const CLAIM_LOG_EVERY: Duration = Duration::from_secs(30);

/// Logs claim failures without flooding while the store is away (every new failure wakes the
/// loop): the first at once, then one line per `CLAIM_LOG_EVERY` with how many it stands for, and
/// one when claiming works again.
#[derive(Default)]
struct ClaimLog {
    failing_since: Option<Instant>,
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl ClaimLog {
    /// Returns whether this failure was logged.
    fn failed(&mut self, now: Instant, error: &StoreError) -> bool {
        self.failing_since.get_or_insert(now);
        if self
            .last_logged
            .is_some_and(|t| now.duration_since(t) < CLAIM_LOG_EVERY)
        {
            self.unlogged += 1;
            return false;
        }
        tracing::warn!(
            error = %error,
            failures_since_last_line = self.unlogged,
            "dispatch: claiming due dispatches failed"
        );
        self.last_logged = Some(now);
        self.unlogged = 0;
        true
    }

    fn succeeded(&mut self, now: Instant) {
        if let Some(since) = self.failing_since.take() {
            tracing::info!(
                failing_for = ?now.duration_since(since),
                "dispatch: claiming due dispatches works again"
            );
            self.last_logged = None;
            self.unlogged = 0;
        }
    }
}

/// Most recent occurrences read with an issue for rendering (none are needed).
const RECENT_FOR_RENDER: u32 = 0;

/// The longest last pass made when `stop` flips (the service waits 5s for the dispatcher).
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(4);

/// The reason a dispatch of an ignored issue is given up with.
pub const IGNORED_REASON: &str = "issue ignored";

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
    /// batch was full. When `stop` flips (or its sender is dropped) a pass in progress is
    /// abandoned and it drains: passes over what is due until a batch is not full, for at most
    /// `SHUTDOWN_DRAIN`, then returns. Deliveries abandoned or cut off by that bound stay leased
    /// and are delivered again after a restart, so shutdown stays bounded.
    pub fn spawn(self, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
        tokio::spawn(async move {
            let poll = self.inner.cfg.poll_interval.max(Duration::from_millis(1));
            let mut claims = ClaimLog::default();
            loop {
                if *stop.borrow() {
                    break;
                }
                // A pass in progress when `stop` flips is abandoned: its claimed rows stay leased
                // and are delivered again after a restart (at least once, by idempotency key).
                let full = tokio::select! {
                    full = self.inner.clone().pass_logged(&mut claims) => full,
                    _ = stop.wait_for(|s| *s) => break,
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
            self.drain(SHUTDOWN_DRAIN).await;
            tracing::debug!("dispatch loop stopped");
        })
    }

    /// Passes until a batch is not full, for at most `limit`; returns how many were delivered.
    /// Used by `spawn` when it stops.
    pub async fn drain(&self, limit: Duration) -> usize {
        let mut delivered = 0;
        let passes = async {
            loop {
                match self.inner.clone().pass().await {
                    Ok(p) => {
                        delivered += p.delivered;
                        if p.claimed < self.inner.batch() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "dispatch: claiming due dispatches at shutdown failed");
                        break;
                    }
                }
            }
        };
        if tokio::time::timeout(limit, passes).await.is_err() {
            tracing::warn!(
                "dispatch: shutdown drain cut off after {limit:?}; what was in flight is delivered again after a restart"
            );
        }
        delivered
    }

    /// One pass (claim + deliver all claimed), for tests and tools; returns how many were
    /// delivered.
    pub async fn run_once(&self) -> anyhow::Result<usize> {
        Ok(self.inner.clone().pass().await?.delivered)
    }
}

impl Inner {
    /// Dispatches claimed per pass: one per delivery slot, so every claimed dispatch starts at
    /// once and has its whole lease (less the margin) to be delivered.
    fn batch(&self) -> usize {
        self.cfg.concurrency.max(1)
    }

    /// One pass, a claim failure logged; returns whether the batch was full (more may be due).
    async fn pass_logged(self: Arc<Self>, claims: &mut ClaimLog) -> bool {
        let batch = self.batch();
        match self.pass().await {
            Ok(p) => {
                claims.succeeded(Instant::now());
                p.claimed >= batch
            }
            Err(e) => {
                claims.failed(Instant::now(), &e);
                false
            }
        }
    }

    /// Claims one batch and delivers it, at most `concurrency` at a time, each delivery cut off
    /// before the batch's lease runs out.
    async fn pass(self: Arc<Self>) -> Result<Pass, StoreError> {
        let now = self.clock.now_ms();
        let lease_ms = i64::try_from(self.cfg.lease.as_millis()).unwrap_or(i64::MAX);
        let limit = u32::try_from(self.batch()).unwrap_or(u32::MAX);
        let claimed_at = Instant::now();
        let claimed = self
            .store
            .claim_due_dispatches(now, limit, lease_ms)
            .await?;
        // A tenth of the lease is left as margin for marking the outcome.
        let deadline = claimed_at + self.cfg.lease.mul_f64(0.9);
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
            running.spawn(async move { me.handle(d, deadline).await });
        }
        while let Some(r) = running.join_next().await {
            pass.delivered += joined(Some(r));
        }
        Ok(pass)
    }

    /// Delivers one claimed dispatch (unless its issue is ignored) and records the outcome.
    async fn handle(&self, d: Dispatch, deadline: Instant) -> Outcome {
        let detail = match self.issue_of(&d).await {
            Ok(detail) => detail,
            Err(e) => return self.failed(&d, &e).await,
        };
        if detail.issue.state == IssueState::Ignored {
            return self.give_up(&d, IGNORED_REASON).await;
        }
        let delivery = tokio::time::timeout_at(deadline, self.deliver(&d, &detail));
        match delivery.await {
            Ok(Ok(())) => self.delivered(&d, &detail.issue).await,
            Ok(Err(e)) => self.failed(&d, &e).await,
            Err(_) => {
                let e = SinkError::Retryable(format!(
                    "{}: delivery not finished before its lease ran out",
                    d.sink
                ));
                self.failed(&d, &e).await
            }
        }
    }

    /// The dispatch's issue; a read failure is retryable, a missing issue permanent.
    async fn issue_of(&self, d: &Dispatch) -> Result<IssueDetail, SinkError> {
        self.store
            .get_issue(d.issue_id, RECENT_FOR_RENDER)
            .await
            .map_err(|e| SinkError::Retryable(format!("reading issue {}: {e}", d.issue_id)))?
            .ok_or_else(|| SinkError::Permanent(format!("issue {} not found", d.issue_id)))
    }

    /// Renders the dispatch and hands it to its sink.
    async fn deliver(&self, d: &Dispatch, detail: &IssueDetail) -> Result<(), SinkError> {
        let Some(sink) = self.sinks.get(&d.sink) else {
            return Err(SinkError::Permanent(format!(
                "sink {:?} is not configured",
                d.sink
            )));
        };
        let class = self.taxonomy.class(&detail.issue.class);
        let r = self
            .renderer
            .render(d, detail, class, self.clock.now_ms())
            .map_err(|e| SinkError::Permanent(e.to_string()))?;
        sink.deliver(&r).await
    }

    /// Marks the row delivered and moves the issue to `dispatched` on the first delivery of its
    /// current cycle (a late delivery of an older cycle leaves a regressed issue as it is).
    async fn delivered(&self, d: &Dispatch, issue: &Issue) -> Outcome {
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
        if d.cycle == issue.cycle && matches!(issue.state, IssueState::Open | IssueState::Regressed)
        {
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
        if e.is_permanent() || d.attempts >= i64::from(self.cfg.max_attempts) {
            return self
                .give_up(d, &format!("gave up after {} attempts: {e}", d.attempts))
                .await;
        }
        let wait = self.backoff(d);
        tracing::info!(dispatch = d.id, key = d.idempotency_key, sink = d.sink, attempt = d.attempts,
            retry_in_ms = wait, error = %e, "dispatch failed; will retry");
        let next = self.clock.now_ms().saturating_add(wait);
        self.record_failure(d, next, &e.to_string(), Outcome::Retried)
            .await
    }

    /// Gives the dispatch up for good (`GIVEN_UP`), keeping `reason` as its last error.
    async fn give_up(&self, d: &Dispatch, reason: &str) -> Outcome {
        tracing::warn!(
            dispatch = d.id,
            key = d.idempotency_key,
            sink = d.sink,
            reason,
            "dispatch given up"
        );
        self.record_failure(d, GIVEN_UP, reason, Outcome::GaveUp)
            .await
    }

    /// Stores a failed attempt (`next` attempt time, `error`) and counts `outcome`.
    async fn record_failure(
        &self,
        d: &Dispatch,
        next: i64,
        error: &str,
        outcome: Outcome,
    ) -> Outcome {
        if let Err(se) = self.store.mark_failed(d.id, next, error).await {
            tracing::warn!(dispatch = d.id, error = %se, "dispatch: recording the failure failed");
            return Outcome::Unrecorded;
        }
        let label = if outcome == Outcome::GaveUp {
            "gave_up"
        } else {
            "retried"
        };
        self.metrics.dispatch(&d.sink, label);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_failures_are_logged_once_per_interval_and_again_after_recovery() {
        let e = StoreError::backend("claiming", std::io::Error::other("connection refused"));
        let t0 = Instant::now();
        let mut log = ClaimLog::default();
        assert!(log.failed(t0, &e), "the first failure is logged");
        assert!(!log.failed(t0 + Duration::from_millis(250), &e));
        assert!(!log.failed(t0 + Duration::from_secs(29), &e));
        assert_eq!(log.unlogged, 2);
        assert!(
            log.failed(t0 + CLAIM_LOG_EVERY, &e),
            "then one line per interval"
        );
        assert_eq!(log.unlogged, 0);
        log.succeeded(t0 + Duration::from_secs(31));
        assert!(
            log.failed(t0 + Duration::from_secs(32), &e),
            "a new outage is logged at once"
        );
    }
}
