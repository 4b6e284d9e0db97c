//! The issue lifecycle: failures become issues and dispatches; ship, verify and regress; loop latency.
//!
//! Loop latency of an issue cycle is measured from the cycle's first failure
//! (`cycle_started_at`) to each stage: classified (the failure recorded), dispatched (first
//! delivery, observed by the dispatcher), shipped (`ship` or a deployment naming the issue),
//! verified (`verify_window` on the shipped version with no recurrence).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use crate::admin::metrics::Metrics;
use crate::classify::taxonomy::Taxonomy;
use crate::classify::Source;
use crate::clock::SharedClock;
use crate::config::GateConfig;
use crate::failure::FailureOutput;
use crate::remediation::gate::{self, GateReport};
use crate::remediation::store::{
    Batch, FailureRecord, Issue, IssueFilter, IssueState, QueueReason, RecordOutcome, Store,
    StoreError,
};

/// How often shipped issues are checked for verification and the issue gauges refreshed.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The gate gauges are refreshed every this many sweeps (it reads every issue).
const GATE_EVERY_SWEEPS: u64 = 15;

/// The most issues the gate reads.
const GATE_ISSUE_LIMIT: u32 = 100_000;

/// Most failures written in one store call.
const MAX_BATCH: usize = 256;

/// Attempts to write one failure before it is counted as dropped.
const STORE_ATTEMPTS: u32 = 5;

/// How long failures are held and retried while the store is unavailable (a PostgreSQL restart,
/// a network blip) before they are counted as dropped (`store_error`). Meanwhile the failure side
/// waits, and what arrives queues in its bounded channels (overflow is counted `queue_full`).
const STORE_OUTAGE_BUDGET: Duration = Duration::from_secs(60);

/// Longest wait between two writes of held failures while the store is unavailable.
const STORE_MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The most shipped issues one verify sweep verifies.
const SWEEP_LIMIT: u32 = 100_000;

/// How often the retention sweep runs (on its own task, so the failure writes never wait for
/// it).
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// Failures deleted per store call by the retention sweep: short enough that failure writes
/// interleave with it.
const PRUNE_BATCH: u32 = 5_000;

/// Most store calls one retention sweep makes; a larger backlog is left for the next sweep.
const PRUNE_MAX_BATCHES: u32 = 200;

/// Backoff for writes held while the store is unavailable, for up to `STORE_OUTAGE_BUDGET` or
/// until `stop` flips.
struct OutageRetry {
    give_up: tokio::time::Instant,
    delay: Duration,
    retries: u32,
    stop: watch::Receiver<bool>,
}

impl OutageRetry {
    fn new(stop: watch::Receiver<bool>) -> Self {
        OutageRetry {
            give_up: tokio::time::Instant::now() + STORE_OUTAGE_BUDGET,
            delay: Duration::from_millis(100),
            retries: 0,
            stop,
        }
    }

    /// After `error`: waits for the next attempt and returns true, or returns false when the
    /// budget is spent or `stop` has flipped.
    async fn wait(&mut self, error: &StoreError, what: &str) -> bool {
        if tokio::time::Instant::now() + self.delay >= self.give_up || *self.stop.borrow() {
            return false;
        }
        self.retries += 1;
        tracing::warn!(%error, what, retry = self.retries, "store unavailable; holding and retrying");
        tokio::select! {
            _ = tokio::time::sleep(self.delay) => {}
            _ = self.stop.wait_for(|s| *s) => {}
        }
        self.delay = (self.delay * 2).min(STORE_MAX_BACKOFF);
        true
    }
}

/// Moves issues through their lifecycle and measures the loop.
pub struct Lifecycle {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    clock: SharedClock,
    taxonomy: Taxonomy,
    /// Class → the sinks its remediation path dispatches to (shared by every failure's batch
    /// entry).
    routes: HashMap<String, Arc<[String]>>,
    /// The sinks of a class with no route.
    no_sinks: Arc<[String]>,
    verify_window_ms: i64,
    /// Failures observed longer ago are pruned (`with_retention`); 0 keeps them all.
    retention_ms: i64,
    /// Wakes the dispatcher when new dispatches are in the outbox.
    dispatch_waker: Arc<Notify>,
    /// Failures for the LLM judge, once it runs (`set_judge_queue`).
    judge_queue: OnceLock<mpsc::Sender<i64>>,
    /// The gate's targets, once set (`set_gate`): the sweep then exports the gate's gauges.
    gate: OnceLock<GateConfig>,
    /// Sweeps so far.
    sweeps: std::sync::atomic::AtomicU64,
}

/// What a deployment shipped.
#[derive(Debug, Default, serde::Serialize)]
pub struct DeploymentOutcome {
    pub shipped: Vec<i64>,
    pub errors: Vec<DeploymentError>,
}

#[derive(Debug, serde::Serialize)]
pub struct DeploymentError {
    pub issue_id: i64,
    pub error: String,
}

impl Lifecycle {
    pub fn new(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        clock: SharedClock,
        taxonomy: Taxonomy,
        routes: HashMap<String, Vec<String>>,
        verify_window: Duration,
        dispatch_waker: Arc<Notify>,
    ) -> Self {
        Lifecycle {
            store,
            metrics,
            clock,
            taxonomy,
            routes: routes.into_iter().map(|(c, s)| (c, s.into())).collect(),
            no_sinks: Arc::from([]),
            verify_window_ms: verify_window.as_millis() as i64,
            retention_ms: 0,
            dispatch_waker,
            judge_queue: OnceLock::new(),
            gate: OnceLock::new(),
            sweeps: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Prunes failures observed longer than `retention` ago (`0s`: never), every
    /// `PRUNE_INTERVAL` once spawned.
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention_ms = retention.as_millis().min(i64::MAX as u128) as i64;
        self
    }

    /// Deletes the failures observed more than `retention` ago that nothing needs any more (see
    /// `Store::prune_failures`), in batches, up to `PRUNE_MAX_BATCHES` of them. Returns how
    /// many; 0 when retention is off.
    pub async fn prune(&self) -> Result<u64, StoreError> {
        if self.retention_ms == 0 {
            return Ok(0);
        }
        let before = self.clock.now_ms().saturating_sub(self.retention_ms);
        let mut pruned = 0;
        for _ in 0..PRUNE_MAX_BATCHES {
            let n = self.store.prune_failures(before, PRUNE_BATCH).await?;
            pruned += n;
            self.metrics.failures_pruned.inc_by(n);
            if n < u64::from(PRUNE_BATCH) {
                break;
            }
            tokio::task::yield_now().await;
        }
        if pruned > 0 {
            tracing::info!(
                pruned,
                before_ms = before,
                "retention: deleted old failures"
            );
        }
        Ok(pruned)
    }

    /// Where failures for the LLM judge go from now on: the first failure of each issue (or
    /// cycle) that waits for a person because no rule decided it or it is under
    /// `min_confidence`, unless a person or the judge has decided the issue already.
    pub fn set_judge_queue(&self, queue: mpsc::Sender<i64>) {
        if self.judge_queue.set(queue).is_err() {
            tracing::warn!("the judge queue was set twice; keeping the first");
        }
    }

    /// The gate's targets: from now on the sweep exports `triage_gate_pass` and
    /// `triage_gate_check_pass` every `GATE_EVERY_SWEEPS` sweeps.
    pub fn set_gate(&self, cfg: GateConfig) {
        if self.gate.set(cfg).is_err() {
            tracing::warn!("the gate was set twice; keeping the first");
        }
    }

    /// The scaling gate over every issue in the store, now.
    pub async fn gate_report(&self, cfg: &GateConfig) -> Result<GateReport, StoreError> {
        let issues = self
            .store
            .list_issues(&IssueFilter {
                limit: Some(GATE_ISSUE_LIMIT),
                ..IssueFilter::default()
            })
            .await?;
        let classes = self.taxonomy.class_names();
        Ok(gate::evaluate(&issues, cfg, &classes, self.clock.now_ms()))
    }

    /// Evaluates the gate (when set) and exports its answer as gauges.
    async fn refresh_gate(&self) -> Result<(), StoreError> {
        if let Some(cfg) = self.gate.get() {
            let report = self.gate_report(cfg).await?;
            self.metrics.set_gate(&report);
        }
        Ok(())
    }

    /// Wakes the dispatcher (new dispatches are in the outbox).
    pub fn wake_dispatcher(&self) {
        self.dispatch_waker.notify_one();
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    pub fn taxonomy(&self) -> &Taxonomy {
        &self.taxonomy
    }

    /// The sinks a class's work is dispatched to.
    pub fn sinks_of(&self, class: &str) -> &[String] {
        self.route(class)
    }

    /// `sinks_of`, shared.
    fn route(&self, class: &str) -> &Arc<[String]> {
        self.routes.get(class).unwrap_or(&self.no_sinks)
    }

    /// Records one failure: its issue, its occurrence and, for a new issue or a regression, the
    /// dispatches of the new cycle (in the same transaction).
    pub async fn record(&self, record: &FailureRecord) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let outcome = self
            .store
            .record_failure(record, self.sinks_of(&record.class), now)
            .await?;
        self.recorded(record, &outcome, now);
        Ok(())
    }

    /// `records` with the sinks of their classes, for `record_batch`.
    pub fn batch(&self, records: Vec<FailureRecord>) -> Batch {
        records
            .into_iter()
            .map(|r| {
                let sinks = self.route(&r.class).clone();
                (r, sinks)
            })
            .collect()
    }

    /// Records failures in one store call (one transaction on SQLite and PostgreSQL); `Err`
    /// leaves the caller to retry them one by one.
    pub async fn record_batch(&self, batch: Batch) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let outcomes = self.store.record_failures(batch.clone(), now).await?;
        for ((record, _), outcome) in batch.iter().zip(&outcomes) {
            self.recorded(record, outcome, now);
        }
        Ok(())
    }

    /// Metrics, logs and the dispatcher's wake-up after a failure was recorded at `now`.
    fn recorded(&self, record: &FailureRecord, outcome: &RecordOutcome, now: i64) {
        self.metrics.failure(
            &record.class,
            record.source.as_str(),
            &record.agent,
            &record.service,
        );
        if outcome.new_issue || outcome.regressed {
            let seconds = (now - record.observed_at) as f64 / 1000.0;
            self.metrics
                .loop_latency(&record.class, "classified", seconds);
            if outcome.regressed {
                tracing::warn!(
                    issue = outcome.issue_id,
                    cycle = outcome.cycle,
                    class = %record.class,
                    version = record.service_version.as_deref().unwrap_or(""),
                    "issue regressed: the failure recurred after its fix shipped"
                );
            }
        }
        if outcome.dispatches_enqueued > 0 {
            self.dispatch_waker.notify_one();
        }
        self.offer_to_judge(record, outcome);
    }

    /// Sends the failure to the judge's queue when it is one the judge should see (see
    /// `set_judge_queue`); a full queue is counted.
    fn offer_to_judge(&self, record: &FailureRecord, outcome: &RecordOutcome) {
        let Some(queue) = self.judge_queue.get() else {
            return;
        };
        let undecided = matches!(
            record.queue_reason,
            Some(QueueReason::Fallback | QueueReason::LowConfidence)
        ) && !matches!(outcome.issue_source, Source::Human | Source::Llm);
        if undecided
            && (outcome.new_issue || outcome.regressed)
            && queue.try_send(outcome.failure_id).is_err()
        {
            self.metrics.judge_outcome("queue_full");
        }
    }

    /// Ships the fix of an issue in `version`: shipped_at is now; verification starts once that
    /// version's spans arrive. Shipping again in the same version changes nothing (a CD
    /// pipeline may retry); in another version it ships the fix again and restarts the verify
    /// clock. The shipped stage of the loop is measured once per cycle.
    pub async fn ship(
        &self,
        issue_id: i64,
        version: &str,
        reason: &str,
    ) -> Result<Issue, StoreError> {
        let version = version.trim();
        if version.is_empty() {
            return Err(StoreError::Invalid("version is empty".into()));
        }
        let before = self.issue(issue_id).await?;
        if before.state == IssueState::Shipped && before.shipped_version.as_deref() == Some(version)
        {
            return Ok(before);
        }
        let now = self.clock.now_ms();
        match self
            .store
            .transition(issue_id, IssueState::Shipped, now, reason, Some(version))
            .await
        {
            Ok(_) => {}
            // A concurrent retry of this very ship got there first (the store refuses shipping
            // again in the same version): nothing to do.
            Err(e @ StoreError::InvalidTransition { .. }) => {
                let now_issue = self.issue(issue_id).await?;
                let same = now_issue.state == IssueState::Shipped
                    && now_issue.shipped_version.as_deref() == Some(version);
                return if same { Ok(now_issue) } else { Err(e) };
            }
            Err(e) => return Err(e),
        }
        let issue = self.issue(issue_id).await?;
        if before.state != IssueState::Shipped {
            self.observe_stage(&issue, "shipped", now);
        }
        Ok(issue)
    }

    /// Moves an issue to `ignored`, for good: its pending dispatches are given up, and later
    /// failures only count.
    pub async fn ignore(&self, issue_id: i64, reason: &str) -> Result<Issue, StoreError> {
        self.store
            .transition(
                issue_id,
                IssueState::Ignored,
                self.clock.now_ms(),
                reason,
                None,
            )
            .await?;
        self.issue(issue_id).await
    }

    /// A deployment of `service` at `version` that ships `fixes`: the version counts as seen
    /// from now, and each fix is shipped.
    pub async fn deploy(
        &self,
        service: &str,
        version: &str,
        fixes: &[i64],
    ) -> Result<DeploymentOutcome, StoreError> {
        if service.trim().is_empty() || version.trim().is_empty() {
            return Err(StoreError::Invalid(
                "a deployment needs service and version".into(),
            ));
        }
        self.store
            .record_version_seen(service, version, self.clock.now_ms())
            .await?;
        let mut out = DeploymentOutcome::default();
        let reason = format!("deployment of {service} {version}");
        for &id in fixes {
            match self.ship(id, version, &reason).await {
                Ok(_) => out.shipped.push(id),
                Err(e) => out.errors.push(DeploymentError {
                    issue_id: id,
                    error: e.to_string(),
                }),
            }
        }
        Ok(out)
    }

    async fn issue(&self, issue_id: i64) -> Result<Issue, StoreError> {
        self.store
            .get_issue(issue_id, 0)
            .await?
            .map(|d| d.issue)
            .ok_or(StoreError::IssueNotFound(issue_id))
    }

    fn observe_stage(&self, issue: &Issue, stage: &'static str, at: i64) {
        let seconds = (at - issue.cycle_started_at) as f64 / 1000.0;
        self.metrics.loop_latency(&issue.class, stage, seconds);
    }

    /// Verifies shipped issues whose shipped version has run for `verify_window` with no
    /// recurrence (a recurrence would have moved them to `regressed`). Returns how many.
    pub async fn verify_due(&self) -> Result<usize, StoreError> {
        let now = self.clock.now_ms();
        let due = self
            .store
            .due_for_verification(now, self.verify_window_ms, SWEEP_LIMIT)
            .await?;
        let mut verified = 0;
        for issue in due {
            let reason = format!(
                "no recurrence for {} on version {}",
                humantime::format_duration(Duration::from_millis(self.verify_window_ms as u64)),
                issue.shipped_version.as_deref().unwrap_or("(none)")
            );
            match self
                .store
                // The version read: a fix shipped again meanwhile is not verified by this one.
                .transition(
                    issue.id,
                    IssueState::Verified,
                    now,
                    &reason,
                    issue.shipped_version.as_deref(),
                )
                .await
            {
                Ok(_) => {
                    self.observe_stage(&issue, "verified", now);
                    verified += 1;
                }
                // Regressed (or ignored) since the list was read.
                Err(StoreError::InvalidTransition { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(verified)
    }

    /// Sets `triage_issues{class,state}` from the store, zero for pairs with no issue.
    pub async fn refresh_gauges(&self) -> Result<(), StoreError> {
        let counts = self.store.count_issues().await?;
        let mut table: HashMap<(String, IssueState), i64> = HashMap::new();
        for class in &self.taxonomy.classes {
            for state in IssueState::ALL {
                table.insert((class.name.clone(), state), 0);
            }
        }
        for c in counts {
            table.insert((c.class, c.state), c.count);
        }
        for ((class, state), n) in table {
            self.metrics.set_issues(&class, state.as_str(), n);
        }
        Ok(())
    }

    /// Consumes the failure side's output until it closes; sweeps verification every second.
    /// With a retention, prunes old failures every `PRUNE_INTERVAL` (from now) until `stop`.
    pub fn spawn(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<FailureOutput>,
        stop: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        if self.retention_ms > 0 {
            tokio::spawn(self.clone().retention_sweeps(stop.clone()));
        }
        tokio::spawn(async move {
            let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
            sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    msg = rx.recv() => match msg {
                        Some(out) => self.handle_ready(out, &mut rx, &stop).await,
                        // The assembler decided everything it held and closed.
                        None => break,
                    },
                    _ = sweep.tick(), if !*stop.borrow() => self.sweep().await,
                }
            }
            self.sweep().await;
        })
    }

    async fn retention_sweeps(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut every = tokio::time::interval(PRUNE_INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !*stop.borrow() {
            tokio::select! {
                _ = every.tick() => {
                    if let Err(e) = self.prune().await {
                        tracing::warn!(error = %e, "retention sweep failed");
                    }
                }
                changed = stop.changed() => if changed.is_err() { return },
            }
        }
    }

    async fn sweep(&self) {
        if let Err(e) = self.verify_due().await {
            tracing::warn!(error = %e, "verify sweep failed");
        }
        if let Err(e) = self.refresh_gauges().await {
            tracing::warn!(error = %e, "cannot refresh issue gauges");
        }
        let n = self
            .sweeps
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n.is_multiple_of(GATE_EVERY_SWEEPS) {
            if let Err(e) = self.refresh_gate().await {
                tracing::warn!(error = %e, "cannot refresh the gate gauges");
            }
        }
    }

    /// Handles `first` and whatever else is already waiting (up to `MAX_BATCH`): failures are
    /// written in one batch (see `write_failures`).
    async fn handle_ready(
        &self,
        first: FailureOutput,
        rx: &mut mpsc::Receiver<FailureOutput>,
        stop: &watch::Receiver<bool>,
    ) {
        let mut failures = Vec::new();
        let mut next = Some(first);
        while let Some(out) = next.take() {
            match out {
                FailureOutput::Failure(record) => failures.push(*record),
                FailureOutput::VersionSeen {
                    service,
                    version,
                    at_ms,
                } => self.version_seen(&service, &version, at_ms, stop).await,
            }
            if failures.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !failures.is_empty() {
            let n = failures.len() as i64;
            self.write_failures(self.batch(failures), stop.clone())
                .await;
            // Each is now written or counted dropped.
            self.metrics.failures_pending.dec_by(n);
        }
    }

    /// Writes a batch of failures. While the store is unavailable (a backend error) the batch is
    /// held and written again with backoff, for up to `STORE_OUTAGE_BUDGET` or until `stop`
    /// flips; then, or when the store refuses the batch, each failure is written on its own, so
    /// only what cannot be written is counted as dropped.
    async fn write_failures(&self, batch: Batch, stop: watch::Receiver<bool>) {
        let mut retry = OutageRetry::new(stop);
        let attempts_each = loop {
            let result = match &batch[..] {
                [(record, _)] => self.record(record).await,
                _ => self.record_batch(batch.clone()).await,
            };
            match result {
                Ok(()) => {
                    if retry.retries > 0 {
                        tracing::info!(
                            n = batch.len(),
                            retries = retry.retries,
                            "failures written after the store came back"
                        );
                    }
                    return;
                }
                Err(e @ StoreError::Backend { .. }) => {
                    if !retry.wait(&e, "failures").await {
                        tracing::error!(error = %e, n = batch.len(), "store unavailable for too long; writing failures one by one, once each");
                        break 1;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, n = batch.len(), "batch write refused; writing one by one");
                    break STORE_ATTEMPTS;
                }
            }
        };
        for (record, _) in batch.iter() {
            self.record_with_retry(record, attempts_each).await;
        }
    }

    /// Records a (service, version) pair seen for the first time, held like failures while the
    /// store is unavailable: the hot path reports each pair once, so a pair lost here would
    /// never be recorded (and a fix shipped in that version never verified).
    async fn version_seen(
        &self,
        service: &str,
        version: &str,
        at_ms: i64,
        stop: &watch::Receiver<bool>,
    ) {
        let mut retry = OutageRetry::new(stop.clone());
        loop {
            let e = match self
                .store
                .record_version_seen(service, version, at_ms)
                .await
            {
                Ok(_) => return,
                Err(e) => e,
            };
            let transient = matches!(e, StoreError::Backend { .. });
            if !transient || !retry.wait(&e, "service version").await {
                tracing::warn!(error = %e, %service, %version, "cannot record service version");
                return;
            }
        }
    }

    /// Writes a failure in up to `attempts` attempts; counts it as dropped when it cannot.
    async fn record_with_retry(&self, record: &FailureRecord, attempts: u32) {
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=attempts {
            match self.record(record).await {
                Ok(()) => return,
                Err(e @ StoreError::Invalid(_)) => {
                    tracing::warn!(error = %e, trace_id = %record.trace_id, "failure refused by the store");
                    break;
                }
                Err(e) if attempt == attempts => {
                    tracing::error!(error = %e, trace_id = %record.trace_id, "cannot record failure; dropped");
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "cannot record failure; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
        self.metrics
            .failure_side_dropped(crate::failure::drop_reason::STORE_ERROR, 1);
    }
}
