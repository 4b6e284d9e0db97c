//! Wires a loaded configuration into a running service: receivers → processor → exporter, plus
//! the admin listener; and shuts it down in order, draining the export queue.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::metrics::Metrics;
use crate::config::{split_host_port, Loaded};
use crate::otlp::ingest::Ingest;
use crate::otlp::{exporter, receiver_grpc, receiver_http};
use crate::processor::TraceProcessor;

/// How long shutdown waits for the export queue to drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// A running triage-loop.
pub struct Running {
    pub grpc_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    stop: watch::Sender<bool>,
    listeners: Vec<JoinHandle<anyhow::Result<()>>>,
    exporter: JoinHandle<()>,
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

/// Binds every listener and starts serving.
pub async fn start(mut loaded: Loaded) -> anyhow::Result<Running> {
    let metrics = Arc::new(Metrics::new());
    let (queue, exporter) = exporter::start(&loaded.config.exporters.otlp, metrics.clone())?;
    let processor = TraceProcessor::new(
        loaded.take_classifier(),
        metrics.clone(),
        loaded.signals.triage,
        None,
    );
    let ingest = Arc::new(Ingest {
        processor,
        queue,
        metrics: metrics.clone(),
        signals: loaded.signals,
        tap: None,
    });
    let c = &loaded.config;
    let (stop, _) = watch::channel(false);
    let mut listeners = Vec::new();
    let mut running = Running {
        grpc_addr: None,
        http_addr: None,
        admin_addr: None,
        metrics: metrics.clone(),
        stop,
        listeners: Vec::new(),
        exporter,
    };
    if let Some(g) = &c.receivers.otlp.protocols.grpc {
        let l = bind(&g.endpoint, "receivers.otlp.protocols.grpc.endpoint").await?;
        running.grpc_addr = Some(l.local_addr()?);
        let max = g.max_recv_msg_size_mib * 1024 * 1024;
        listeners.push(tokio::spawn(receiver_grpc::serve(
            l,
            ingest.clone(),
            max,
            stopped(&running.stop),
        )));
    }
    if let Some(h) = &c.receivers.otlp.protocols.http {
        let l = bind(&h.endpoint, "receivers.otlp.protocols.http.endpoint").await?;
        running.http_addr = Some(l.local_addr()?);
        tracing::info!(addr = %l.local_addr()?, "OTLP/HTTP receiver listening");
        let app = receiver_http::router(ingest.clone(), h.max_request_body_size);
        listeners.push(spawn_axum(l, app, stopped(&running.stop)));
    }
    if c.service.extensions.iter().any(|e| e == "triage_admin") {
        let l = bind(
            &c.extensions.triage_admin.endpoint,
            "extensions.triage_admin.endpoint",
        )
        .await?;
        running.admin_addr = Some(l.local_addr()?);
        tracing::info!(addr = %l.local_addr()?, "admin listening (/metrics, /healthz)");
        listeners.push(spawn_axum(
            l,
            crate::admin::server::router(metrics),
            stopped(&running.stop),
        ));
    }
    running.listeners = listeners;
    Ok(running)
}

fn spawn_axum(
    l: TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        let l = l.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        axum::serve(l, app).with_graceful_shutdown(shutdown).await?;
        Ok(())
    })
}

impl Running {
    /// Stops the receivers, then waits (bounded) for the export queue to drain.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for l in self.listeners {
            match tokio::time::timeout(Duration::from_secs(5), l).await {
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "listener stopped with an error"),
                Err(_) => tracing::warn!("listener did not stop within 5s"),
                _ => {}
            }
        }
        if tokio::time::timeout(DRAIN_TIMEOUT, self.exporter)
            .await
            .is_err()
        {
            tracing::warn!(
                "export queue not drained within {DRAIN_TIMEOUT:?}; remaining requests are lost"
            );
        }
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
