//! TLS on every listener: with `tls: {cert_file, key_file}` on the gRPC and HTTP receivers and the
//! admin listener, OTLP/HTTPS, OTLP/gRPC over TLS and the admin API work with a client that
//! trusts the (freshly generated, self-signed) certificate; plain connections and clients that
//! do not trust it are refused; bad certificate or key files are refused at load.

use std::path::{Path, PathBuf};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::common::*;

/// A self-signed certificate for `localhost` and its key, as PEM files in `dir`; (cert, key, PEM).
fn self_signed(dir: &Path) -> (PathBuf, PathBuf, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let pem = ck.cert.pem();
    std::fs::write(&cert, &pem).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert, key, pem)
}

/// `config_yaml` with `tls` on the gRPC and HTTP receivers and the admin listener.
fn tls_yaml(downstream: &str, cert: &Path, key: &Path) -> String {
    let tls = format!(
        "tls: {{cert_file: {}, key_file: {}}}",
        cert.display(),
        key.display()
    );
    let yaml = config_yaml(downstream, "", "")
        .replace(
            "      grpc:\n        endpoint: 127.0.0.1:0\n",
            &format!("      grpc:\n        endpoint: 127.0.0.1:0\n        {tls}\n"),
        )
        .replace(
            "        max_request_body_size: 4194304\n",
            &format!("        max_request_body_size: 4194304\n        {tls}\n"),
        )
        .replace(
            "    endpoint: 127.0.0.1:0\nservice:",
            &format!("    endpoint: 127.0.0.1:0\n    {tls}\nservice:"),
        );
    assert_eq!(yaml.matches("tls:").count(), 3, "{yaml}");
    yaml
}

fn one_span_request() -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: vec![7; 16],
                    span_id: vec![9; 8],
                    name: "over tls".into(),
                    start_time_unix_nano: 1,
                    end_time_unix_nano: 2,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// One OTLP/gRPC export through `endpoint`; the error as text.
async fn grpc_export(endpoint: Endpoint) -> Result<(), String> {
    let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
    TraceServiceClient::new(channel)
        .export(one_span_request())
        .await
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_speaks_tls_and_refuses_plain_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, pem) = self_signed(dir.path());
    let (downstream, capture) = start_downstream().await;
    let triage = start_triage(&tls_yaml(&downstream.to_string(), &cert, &key)).await;
    let (http, grpc, admin) = (
        triage.http_addr.unwrap(),
        triage.grpc_addr.unwrap(),
        triage.admin_addr.unwrap(),
    );
    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
        .resolve("localhost", http)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // OTLP/HTTPS.
    let resp = trusting
        .post(format!("https://localhost:{}/v1/traces", http.port()))
        .header("content-type", "application/json")
        .body(crate::http_json::SPEC_JSON)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    assert!(eventually(Duration::from_secs(5), || capture.span_count() == 2).await);
    // Plain HTTP to the TLS port, and a client that does not trust the certificate: refused.
    let plain = reqwest::Client::new()
        .post(format!("http://{http}/v1/traces"))
        .header("content-type", "application/json")
        .body(crate::http_json::SPEC_JSON)
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
    let untrusting = reqwest::Client::builder()
        .resolve("localhost", http)
        .build()
        .unwrap()
        .get(format!("https://localhost:{}/v1/traces", http.port()))
        .send()
        .await;
    assert!(untrusting.is_err(), "an untrusted certificate was accepted");

    // OTLP/gRPC over TLS.
    let ca = Certificate::from_pem(&pem);
    let tls = ClientTlsConfig::new()
        .ca_certificate(ca)
        .domain_name("localhost");
    let secure = Endpoint::from_shared(format!("https://{grpc}"))
        .unwrap()
        .tls_config(tls)
        .unwrap();
    grpc_export(secure).await.expect("gRPC over TLS");
    assert!(eventually(Duration::from_secs(5), || capture.span_count() == 3).await);
    let plain = grpc_export(Endpoint::from_shared(format!("http://{grpc}")).unwrap()).await;
    assert!(plain.is_err(), "plaintext gRPC was served");

    // The admin listener.
    let resp = trusting
        .get(format!("https://localhost:{}/healthz", admin.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = trusting
        .get(format!("https://localhost:{}/api/v1/issues", admin.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(reqwest::get(format!("http://{admin}/healthz"))
        .await
        .is_err());
    assert_eq!(
        capture.span_count(),
        3,
        "refused requests delivered nothing"
    );
    triage.shutdown().await;
}

#[test]
fn bad_certificate_or_key_files_are_refused_with_the_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = self_signed(dir.path());
    let refusal = |cert: &Path, key: &Path| {
        triage_loop::config::load_str(&tls_yaml("127.0.0.1:1", cert, key), "c.yaml")
            .err()
            .expect("refused")
    };

    let e = refusal(&dir.path().join("missing.pem"), &key);
    assert_eq!(e.path, "receivers.otlp.protocols.grpc.tls.cert_file", "{e}");
    assert!(e.message.contains("missing.pem"), "{e}");

    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a key at all").unwrap();
    let e = refusal(&cert, &garbage);
    assert_eq!(e.path, "receivers.otlp.protocols.grpc.tls.key_file", "{e}");
    assert!(
        !e.message.contains("not a key at all"),
        "the key file is not quoted: {e}"
    );

    let e = refusal(&garbage, &key);
    assert_eq!(e.path, "receivers.otlp.protocols.grpc.tls.cert_file", "{e}");
    assert!(e.message.contains("no PEM certificate"), "{e}");

    // A key of another certificate.
    let other = tempfile::tempdir().unwrap();
    let (_, other_key, _) = self_signed(other.path());
    let e = refusal(&cert, &other_key);
    assert_eq!(e.path, "receivers.otlp.protocols.grpc.tls.key_file", "{e}");
    assert!(e.message.contains("does not fit"), "{e}");
}
