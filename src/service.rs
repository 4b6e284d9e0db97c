//! Wires a loaded configuration into a running service: receivers → processor → exporter, the
//! failure side (assembler → lifecycle → store → dispatcher), the admin listener and the metrics
//! push; and shuts it down in order, draining the export queue.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::api::{self, ApiState};
use crate::admin::auth::{self, AuthPolicy};
use crate::admin::metrics::Metrics;
use crate::admin::otlp_push;
use crate::admin::triage_api::{self, TriageState};
use crate::classify::llm::Judge;
use crate::classify::Classifier;
use crate::clock::{self, SharedClock};
use crate::config::{split_host_port, Loaded};
use crate::failure::{self, drop_reason, FailureTap};
use crate::otlp::exporter::ExportQueue;
use crate::otlp::ingest::Ingest;
use crate::otlp::{exporter, receiver_grpc, receiver_http};
use crate::processor::TraceProcessor;
use crate::remediation::dispatch::Dispatcher;
use crate::remediation::lifecycle::Lifecycle;
use crate::remediation::sinks::SinkSet;
use crate::remediation::store;
use crate::remediation::triage::Triage;

/// How long shutdown waits for the failure side to drain, and then for the export queue.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// A running triage-loop.
pub struct Running {
    pub grpc_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    /// The issue lifecycle, when the traces pipeline runs `failure_triage`.
    pub lifecycle: Option<Arc<Lifecycle>>,
    /// Stops the receivers.
    stop: watch::Sender<bool>,
    /// Stops the assembler once the receivers have finished their last requests.
    failure_stop: watch::Sender<bool>,
    /// Stops the dispatcher and the metrics push, once the failure side has drained.
    late_stop: watch::Sender<bool>,
    listeners: Vec<JoinHandle<anyhow::Result<()>>>,
    /// Assembler, then lifecycle: awaited in this order before `late_stop`.
    failure_tasks: Vec<JoinHandle<()>>,
    /// The hot path's end of the failure side: what it still queues is counted if shutdown
    /// stops waiting.
    failure_tap: Option<FailureTap>,
    /// Dispatcher and metrics push.
    late_tasks: Vec<JoinHandle<()>>,
    exporter: JoinHandle<()>,
}

/// The failure side of a running service.
struct FailureSide {
    tap: FailureTap,
    lifecycle: Arc<Lifecycle>,
    triage: Arc<Triage>,
    tasks: Vec<JoinHandle<()>>,
    dispatcher: JoinHandle<()>,
}

/// Opens the store and starts assembler, lifecycle and dispatcher.
async fn start_failure_side(
    loaded: &Loaded,
    queue: &ExportQueue,
    clock: SharedClock,
    metrics: &Arc<Metrics>,
    failure_stop: &watch::Sender<bool>,
    late_stop: &watch::Sender<bool>,
    classifier: &Classifier,
) -> anyhow::Result<FailureSide> {
    let ft = &loaded.config.processors.failure_triage;
    let store = store::open(&ft.storage).await.with_context(|| {
        format!(
            "processors.failure_triage.storage: cannot open {}",
            ft.storage
        )
    })?;
    tracing::info!(storage = %ft.storage, backend = store.backend(), "failure store open");
    // Remediation events are triage-loop's own output: they go to exporters.otlp whether or not
    // a logs pipeline passes logs through.
    let sinks = SinkSet::from_config(ft, &loaded.taxonomy, Some(queue.clone()))
        .context("processors.failure_triage.sinks")?;
    let routes: HashMap<String, Vec<String>> = loaded
        .taxonomy
        .classes
        .iter()
        .map(|c| (c.name.clone(), sinks.sinks_for_class(&c.name)))
        .collect();
    for name in sinks.names() {
        if !routes.values().any(|r| r.contains(&name)) {
            tracing::warn!(
                sink = %name,
                "sink is configured but no class dispatches to it; list it under taxonomy.classes.<class>.sinks"
            );
        }
    }
    let dispatcher = Dispatcher::new(
        store.clone(),
        sinks,
        loaded.taxonomy.clone(),
        ft,
        clock.clone(),
        metrics.clone(),
    );
    let lifecycle = Arc::new(
        Lifecycle::new(
            store,
            metrics.clone(),
            clock.clone(),
            loaded.taxonomy.clone(),
            routes,
            ft.verify_window,
            dispatcher.waker(),
        )
        .with_retention(ft.retention),
    );
    lifecycle.set_gate(ft.gate.clone());
    let triage = Triage::start(
        lifecycle.clone(),
        metrics.clone(),
        classifier.labels().clone(),
        classifier.model().clone(),
        ft.min_confidence,
    )
    .await
    .context("loading human labels and the learned model from the store")?;
    let mut tasks = vec![triage.spawn_sync(failure_stop.subscribe())];
    if ft.llm_judge.enabled {
        let judge = Judge::new(&ft.llm_judge, &loaded.taxonomy)
            .context("processors.failure_triage.llm_judge")?
            .with_clock(clock.clone());
        tracing::info!(endpoint = %ft.llm_judge.endpoint, model = %ft.llm_judge.model, "LLM judge on");
        tasks.push(triage.spawn_judge(judge, ft.llm_judge.queue_size, failure_stop.subscribe()));
    }
    let (tap, records, assembler) =
        failure::start(ft, clock, metrics.clone(), failure_stop.subscribe());
    let lifecycle_task = lifecycle.clone().spawn(records, failure_stop.subscribe());
    tasks.extend([assembler, lifecycle_task]);
    Ok(FailureSide {
        tap,
        lifecycle,
        triage,
        tasks,
        dispatcher: dispatcher.spawn(late_stop.subscribe()),
    })
}

async fn bind(endpoint: &str, what: &str) -> anyhow::Result<TcpListener> {
    let (host, port) = split_host_port(endpoint)
        .with_context(|| format!("{what}: {endpoint:?} is not host:port"))?;
    TcpListener::bind((host, port))
        .await
        .with_context(|| format!("{what}: cannot listen on {endpoint}"))
}

fn stopped(rx: &watch::Sender<bool>) -> impl Future<Output = ()> + Send + 'static {
    let mut rx = rx.subscribe();
    async move {
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// Binds every listener and starts serving, on the system clock.
pub async fn start(loaded: Loaded) -> anyhow::Result<Running> {
    start_with_clock(loaded, clock::system()).await
}

/// Binds every listener and starts serving; the remediation loop reads time from `clock`.
pub async fn start_with_clock(mut loaded: Loaded, clock: SharedClock) -> anyhow::Result<Running> {
    let metrics = Arc::new(Metrics::new());
    let (queue, exporter) = exporter::start(
        &loaded.config.exporters.otlp,
        loaded.config.extensions.file_storage.as_ref(),
        metrics.clone(),
    )?;
    let (stop, _) = watch::channel(false);
    let (failure_stop, _) = watch::channel(false);
    let (late_stop, _) = watch::channel(false);
    let classifier = loaded.take_classifier();
    let side = if loaded.signals.triage {
        Some(
            start_failure_side(
                &loaded,
                &queue,
                clock.clone(),
                &metrics,
                &failure_stop,
                &late_stop,
                &classifier,
            )
            .await?,
        )
    } else {
        None
    };
    let mut late_tasks = Vec::new();
    let push_interval = loaded.config.service.telemetry.metrics.push_interval;
    if !push_interval.is_zero() {
        late_tasks.push(otlp_push::spawn(
            metrics.clone(),
            queue.clone(),
            push_interval,
            late_stop.subscribe(),
        ));
    }
    let tap = side.as_ref().map(|s| s.tap.clone());
    let tap_for_shutdown = tap.clone();
    let processor = TraceProcessor::new(
        classifier,
        metrics.clone(),
        loaded.signals.triage,
        tap.clone(),
    );
    let ingest = Arc::new(Ingest {
        processor,
        queue,
        metrics: metrics.clone(),
        signals: loaded.signals,
        tap,
    });
    let c = &loaded.config;
    let mut listeners = Vec::new();
    let (lifecycle, triage, failure_tasks) = match side {
        Some(s) => {
            late_tasks.push(s.dispatcher);
            (Some(s.lifecycle), Some(s.triage), s.tasks)
        }
        None => (None, None, Vec::new()),
    };
    let mut running = Running {
        grpc_addr: None,
        http_addr: None,
        admin_addr: None,
        metrics: metrics.clone(),
        lifecycle: lifecycle.clone(),
        stop,
        failure_stop,
        late_stop,
        listeners: Vec::new(),
        failure_tasks,
        failure_tap: tap_for_shutdown,
        late_tasks,
        exporter,
    };
    if let Some(g) = &c.receivers.otlp.protocols.grpc {
        let l = bind(&g.endpoint, "receivers.otlp.protocols.grpc.endpoint").await?;
        running.grpc_addr = Some(l.local_addr()?);
        let max = g.max_recv_msg_size_mib * 1024 * 1024;
        listeners.push(tokio::spawn(receiver_grpc::serve(
            l,
            loaded.tls.grpc.clone(),
            ingest.clone(),
            max,
            stopped(&running.stop),
        )));
    }
    if let Some(h) = &c.receivers.otlp.protocols.http {
        let l = bind(&h.endpoint, "receivers.otlp.protocols.http.endpoint").await?;
        running.http_addr = Some(l.local_addr()?);
        let tls = loaded.tls.http.clone();
        tracing::info!(addr = %l.local_addr()?, tls = tls.is_some(), "OTLP/HTTP receiver listening");
        let app = receiver_http::router(ingest.clone(), h.max_request_body_size);
        listeners.push(spawn_axum(l, tls, app, stopped(&running.stop)));
    }
    if c.service.extensions.iter().any(|e| e == "triage_admin") {
        let l = bind(
            &c.extensions.triage_admin.endpoint,
            "extensions.triage_admin.endpoint",
        )
        .await?;
        running.admin_addr = Some(l.local_addr()?);
        tracing::info!(
            addr = %l.local_addr()?,
            tls = loaded.tls.admin.is_some(),
            "admin listening (/metrics, /healthz, /api/v1, /ui)"
        );
        let mut app = crate::admin::server::router(metrics);
        if let (Some(lifecycle), Some(triage)) = (lifecycle, triage) {
            let ft = &c.processors.failure_triage;
            app = app.merge(api::router(Arc::new(ApiState {
                lifecycle,
                gate: ft.gate.clone(),
                trace_url_template: ft.trace_url_template.clone(),
            })));
            app = app.merge(triage_api::router(Arc::new(TriageState {
                triage,
                trace_url_template: ft.trace_url_template.clone(),
            })));
        }
        let policy = loaded.admin_token.clone().map(|token| AuthPolicy {
            token,
            protect_metrics: c
                .extensions
                .triage_admin
                .auth
                .as_ref()
                .is_some_and(|a| a.protect_metrics),
        });
        if policy.is_some() {
            tracing::info!("admin API requires a bearer token");
        }
        let app = auth::guard(app, policy);
        let tls = loaded.tls.admin.clone();
        listeners.push(spawn_axum(l, tls, app, stopped(&running.stop)));
    }
    running.listeners = listeners;
    Ok(running)
}

/// Serves `app` on `l`, over TLS when `tls` is set, until `shutdown` resolves.
fn spawn_axum(
    l: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        match tls {
            Some(config) => {
                let l = crate::tls::TlsListener::new(l, config)?;
                axum::serve(l, app).with_graceful_shutdown(shutdown).await?;
            }
            None => {
                let l = l.tap_io(|tcp| {
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                    }
                });
                axum::serve(l, app).with_graceful_shutdown(shutdown).await?;
            }
        }
        Ok(())
    })
}

impl Running {
    /// Stops the receivers; lets the assembler decide what it holds and the lifecycle record it;
    /// stops the dispatcher and the metrics push; then waits (bounded) for the export queue to drain.
    pub async fn shutdown(self) {
        self.shutdown_within(DRAIN_TIMEOUT).await
    }

    /// `shutdown`, waiting at most `drain` for the failure side and as long for the export
    /// queue. What the failure side has not finished by then is stopped and counted in
    /// `triage_failure_side_dropped_total{reason="shutdown"}`: spans still queued for the
    /// assembler, traces it still held, failures not yet written to the store (a batch the
    /// store was writing at that moment may still be written).
    pub async fn shutdown_within(mut self, drain: Duration) {
        let _ = self.stop.send(true);
        for l in std::mem::take(&mut self.listeners) {
            match tokio::time::timeout(Duration::from_secs(5), l).await {
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "listener stopped with an error"),
                Err(_) => tracing::warn!("listener did not stop within 5s"),
                _ => {}
            }
        }
        let _ = self.failure_stop.send(true);
        let deadline = tokio::time::Instant::now() + drain;
        let mut unfinished = std::mem::take(&mut self.failure_tasks);
        while let Some(t) = unfinished.first_mut() {
            if tokio::time::timeout_at(deadline, t).await.is_err() {
                break;
            }
            unfinished.remove(0);
        }
        if !unfinished.is_empty() {
            self.abandon_failure_side(unfinished, drain).await;
        }
        let _ = self.late_stop.send(true);
        for t in self.late_tasks {
            if tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .is_err()
            {
                tracing::warn!("dispatcher or metrics push did not stop within 5s");
            }
        }
        if tokio::time::timeout(drain, self.exporter).await.is_err() {
            tracing::warn!(
                "export queue not drained within {drain:?}; remaining requests are lost"
            );
        }
    }

    /// Stops the failure side's tasks where they are and counts what they had not finished.
    async fn abandon_failure_side(&self, unfinished: Vec<JoinHandle<()>>, drain: Duration) {
        for t in &unfinished {
            t.abort();
        }
        for t in unfinished {
            let _ = t.await;
        }
        let m = &self.metrics;
        let spans = self.failure_tap.as_ref().map_or(0, |t| t.queued_nodes()) as u64;
        let traces = m.assembler_traces.get().max(0) as u64;
        let failures = m.failures_pending.get().max(0) as u64;
        m.failure_side_dropped(drop_reason::SHUTDOWN, spans + traces + failures);
        m.failures_pending.set(0);
        m.assembler_traces.set(0);
        tracing::error!(
            spans,
            traces,
            failures,
            "failure side did not drain within {drain:?}; what it had not finished is dropped \
             and counted in triage_failure_side_dropped_total{{reason=\"shutdown\"}}"
        );
    }

    /// Serves until Ctrl-C / SIGTERM, then shuts down.
    pub async fn run_until_signal(self) {
        wait_for_signal().await;
        tracing::info!("shutting down");
        self.shutdown().await;
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
