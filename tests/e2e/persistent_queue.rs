//! Downstream outage with the persistent export queue: the downstream is down for 20 s while
//! load runs and triage-loop is killed (`kill -9`) and started again once; every span it
//! accepted arrives, and every request it did not accept was refused with a retryable status.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use tokio::sync::oneshot;
use tonic::Code;

use triage_loop::otlp::sink::RecordingSink;
use triage_loop::synth::Fleet;

use crate::common::*;

fn config(dir: &std::path::Path, grpc: u16, admin: u16, downstream: u16, fsync: bool) -> String {
    format!(
        r#"
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "127.0.0.1:{grpc}"}}
processors:
  failure_triage:
    storage: sqlite://{dir}/triage.db
    trace_window: 1s
    root_grace: 100ms
exporters:
  otlp:
    endpoint: 127.0.0.1:{downstream}
    timeout: 2s
    retry_on_failure: {{initial_interval: 100ms, max_interval: 500ms, max_elapsed_time: 0s}}
    sending_queue: {{storage: file_storage, num_consumers: 4, queue_size: 100000, queue_size_mib: 1}}
extensions:
  triage_admin: {{endpoint: "127.0.0.1:{admin}"}}
  file_storage: {{directory: {dir}/queue, fsync: {fsync}}}
service:
  extensions: [triage_admin, file_storage]
  telemetry: {{metrics: {{push_interval: 0s}}}}
  pipelines:
    traces: {{receivers: [otlp], processors: [failure_triage], exporters: [otlp]}}
"#,
        dir = dir.display()
    )
}

async fn scrape(admin: u16) -> Option<String> {
    let resp = reqwest::get(format!("http://127.0.0.1:{admin}/metrics"))
        .await
        .ok()?;
    resp.text().await.ok()
}

async fn wait_healthy(admin: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while scrape(admin).await.is_none() {
        assert!(Instant::now() < deadline, "triage-loop did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

type SpanKey = (Vec<u8>, Vec<u8>);

fn span_keys(req: &ExportTraceServiceRequest) -> Vec<SpanKey> {
    req.resource_spans
        .iter()
        .flat_map(|rs| rs.scope_spans.iter())
        .flat_map(|ss| ss.spans.iter())
        .map(|s| (s.trace_id.clone(), s.span_id.clone()))
        .collect()
}

type ServerTask = tokio::task::JoinHandle<Result<(), tonic::transport::Error>>;

/// A downstream on a fixed port that can go away and come back, remembering what it got.
struct Downstream {
    port: u16,
    /// While down, the port is bound and not listened on: connections are refused and no other
    /// test's listener can be given the port.
    reserved: Option<tokio::net::TcpSocket>,
    sink: RecordingSink,
    received: Arc<Mutex<Vec<SpanKey>>>,
    stop: Option<(oneshot::Sender<()>, ServerTask)>,
}

/// A socket bound to `port` (0: any) on loopback and not listening.
fn reserve(port: u16) -> tokio::net::TcpSocket {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    // The last listener's connections may linger in TIME_WAIT on the port.
    socket.set_reuseaddr(true).unwrap();
    socket
        .bind(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .unwrap();
    socket
}

impl Downstream {
    fn new() -> Self {
        let received: Arc<Mutex<Vec<SpanKey>>> = Arc::default();
        let r = received.clone();
        let sink = RecordingSink::with_hook(Arc::new(move |req: &ExportTraceServiceRequest| {
            r.lock().unwrap().extend(span_keys(req));
        }));
        let reserved = reserve(0);
        Downstream {
            port: reserved.local_addr().unwrap().port(),
            reserved: Some(reserved),
            sink,
            received,
            stop: None,
        }
    }

    async fn up(&mut self) {
        let l = self.reserved.take().expect("down").listen(1024).unwrap();
        let (tx, rx) = oneshot::channel();
        let task = self.sink.serve_until(l, async {
            let _ = rx.await;
        });
        self.stop = Some((tx, task));
    }

    async fn down(&mut self) {
        let (tx, mut task) = self.stop.take().expect("up");
        let _ = tx.send(());
        // Graceful shutdown waits for open connections; cut them after a moment.
        if tokio::time::timeout(Duration::from_secs(2), &mut task)
            .await
            .is_err()
        {
            task.abort();
            // Resolves once the task (and its listener) is dropped.
            let _ = task.await;
        }
        self.reserved = Some(reserve(self.port));
    }

    fn received(&self) -> HashSet<SpanKey> {
        self.received.lock().unwrap().iter().cloned().collect()
    }
}

/// What the load generator saw.
#[derive(Default)]
struct Outcomes {
    accepted: Vec<SpanKey>,
    accepted_requests: u64,
    /// Refused with RESOURCE_EXHAUSTED or UNAVAILABLE: the client retries.
    refused: u64,
    /// Other errors, with when they came: only a request in flight when the process was killed
    /// may get one (the connection breaks under it).
    other: Vec<(Instant, String)>,
}

/// Sends one request every 20 ms until `stop`, over one gRPC channel that reconnects.
async fn load(grpc: u16, stop: Arc<std::sync::atomic::AtomicBool>) -> Outcomes {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc}"))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    let mut client = TraceServiceClient::new(channel);
    let mut fleet = Fleet::new(61, 5);
    let mut out = Outcomes::default();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let (req, _) = fleet.request(8);
        let keys = span_keys(&req);
        match client.export(req).await {
            Ok(resp) => {
                let partial = resp.into_inner().partial_success;
                assert!(
                    partial.is_none_or(|p| p.rejected_spans == 0),
                    "no span is rejected"
                );
                out.accepted.extend(keys);
                out.accepted_requests += 1;
            }
            Err(s) if matches!(s.code(), Code::ResourceExhausted | Code::Unavailable) => {
                out.refused += 1;
            }
            Err(s) => out
                .other
                .push((Instant::now(), format!("{:?}: {}", s.code(), s.message()))),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_span_survives_a_downstream_outage_and_a_kill_9() {
    survives_an_outage_and_a_kill_9(false).await;
}

/// The same with `fsync: true`: every request is acknowledged only after its group commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_fsync_every_accepted_span_survives_a_downstream_outage_and_a_kill_9() {
    survives_an_outage_and_a_kill_9(true).await;
}

async fn survives_an_outage_and_a_kill_9(fsync: bool) {
    let dir = data_dir();
    let (grpc, admin) = (free_port(), free_port());
    let mut downstream = Downstream::new();
    downstream.up().await;
    let cfg = dir.join("collector-config.yaml");
    std::fs::write(&cfg, config(&dir, grpc, admin, downstream.port, fsync)).unwrap();
    let mut first = spawn_serve(&cfg, &[]);
    wait_healthy(admin).await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loader = tokio::spawn(load(grpc, stop.clone()));
    let flowing = async {
        while downstream.received().is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(15), flowing)
        .await
        .expect("spans flow before the outage");
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The outage: 20 s with the downstream gone.
    downstream.down().await;
    let outage = Instant::now();
    tokio::time::sleep(Duration::from_secs(7)).await;
    let before_kill = scrape(admin).await.expect("first instance answers");
    let queued = metric_value(&before_kill, "triage_export_queue_requests").unwrap_or(0.0);
    let refused = metric_value(
        &before_kill,
        r#"triage_receiver_requests_total{protocol="grpc",signal="traces",outcome="refused"}"#,
    )
    .unwrap_or(0.0);
    assert!(queued > 0.0, "requests wait on disk:\n{before_kill}");
    assert!(
        refused > 0.0,
        "a full 1 MiB disk queue refuses:\n{before_kill}"
    );

    // kill -9 in the middle of the outage, then start again on the same directory.
    let killed_at = Instant::now();
    first.kill().unwrap();
    first.wait().unwrap();
    let mut second = spawn_serve(&cfg, &[]);
    wait_healthy(admin).await;
    let restarted_at = Instant::now();
    let after_start = scrape(admin).await.unwrap();
    let recovered = metric_value(
        &after_start,
        r#"triage_export_queue_recovered_total{signal="traces"}"#,
    )
    .unwrap_or(0.0);
    assert!(
        recovered > 0.0,
        "the second process queues again what the first left:\n{after_start}"
    );

    let left = Duration::from_secs(20).saturating_sub(outage.elapsed());
    tokio::time::sleep(left).await;
    downstream.up().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let out = loader.await.unwrap();

    let (interrupted, unexpected): (Vec<_>, Vec<_>) = out
        .other
        .iter()
        .partition(|(at, _)| *at >= killed_at && *at <= restarted_at + Duration::from_secs(1));
    assert!(
        unexpected.is_empty() && interrupted.len() <= 2,
        "every refusal is RESOURCE_EXHAUSTED or UNAVAILABLE, but for a request the kill broke: {:?}",
        out.other
    );
    assert!(out.refused > 0 && out.accepted_requests > 0);
    let accepted: HashSet<SpanKey> = out.accepted.iter().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let missing = loop {
        let got = downstream.received();
        let missing = accepted.iter().filter(|k| !got.contains(*k)).count();
        if missing == 0 || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let all = downstream.received.lock().unwrap().len();
    eprintln!(
        "persistent queue: {} requests / {} spans accepted, {} requests refused, {} broken by the kill, {} spans recovered after kill -9, {} spans received ({} duplicates)",
        out.accepted_requests,
        accepted.len(),
        out.refused,
        interrupted.len(),
        recovered,
        all,
        all - downstream.received().len()
    );
    assert_eq!(
        missing,
        0,
        "every accepted span arrives ({} accepted)",
        accepted.len()
    );
    // Drained: nothing left on disk or in flight.
    let drained = async {
        loop {
            let m = scrape(admin).await.unwrap_or_default();
            if metric_value(&m, "triage_export_queue_requests") == Some(0.0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(30), drained)
            .await
            .is_ok(),
        "the queue drains"
    );
    second.kill().unwrap();
    second.wait().unwrap();
}

/// `config_yaml_in` with the queue on disk under `dir` and retries that never give up.
fn in_process_config(dir: &std::path::Path, downstream: &str) -> String {
    config_yaml_in(
        dir,
        downstream,
        "",
        "    sending_queue: {storage: file_storage}\n",
    )
    .replace("max_elapsed_time: 2s", "max_elapsed_time: 0s")
    .replace(
        "extensions:\n  triage_admin:\n    endpoint: 127.0.0.1:0\nservice:\n  extensions: [triage_admin]",
        &format!(
            "extensions:\n  triage_admin:\n    endpoint: 127.0.0.1:0\n  file_storage:\n    directory: {}/queue\nservice:\n  extensions: [triage_admin, file_storage]",
            dir.display()
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_leaves_the_undelivered_queue_for_the_next_start() {
    let dir = data_dir();
    let dead = DeadAddress::new();
    let first = start_triage(&in_process_config(&dir, &dead.addr)).await;
    let mut client = TraceServiceClient::connect(format!("http://{}", first.grpc_addr.unwrap()))
        .await
        .unwrap();
    let mut fleet = Fleet::new(62, 0);
    let mut sent = HashSet::new();
    for _ in 0..5 {
        let (req, _) = fleet.request(4);
        sent.extend(span_keys(&req));
        client.export(req).await.expect("accepted");
    }
    drop(client);
    // Shutdown does not wait for a downstream that is not there: the in-flight requests are
    // abandoned after the grace and stay on disk.
    tokio::time::timeout(Duration::from_secs(30), first.shutdown())
        .await
        .expect("shutdown finishes");

    let (addr, capture) = start_downstream().await;
    let second = start_triage(&in_process_config(&dir, &addr.to_string())).await;
    let m = second.metrics.render();
    assert_eq!(
        metric_value(
            &m,
            r#"triage_export_queue_recovered_total{signal="traces"}"#
        ),
        Some(sent.len() as f64),
        "{m}"
    );
    let arrived = eventually(Duration::from_secs(20), || {
        let got: HashSet<SpanKey> = capture
            .spans()
            .iter()
            .map(|s| (s.trace_id.clone(), s.span_id.clone()))
            .collect();
        sent.is_subset(&got)
    })
    .await;
    assert!(
        arrived,
        "every span accepted before the shutdown arrives after it"
    );
    assert!(
        eventually(Duration::from_secs(10), || metric_value(
            &second.metrics.render(),
            "triage_export_queue_requests"
        ) == Some(0.0))
        .await
    );
    second.shutdown().await;
    // Everything finished: only the segment being written is left, and it is empty.
    let files: Vec<_> = std::fs::read_dir(dir.join("queue/exporter_otlp"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
}
