//! TLS on every listener: with `tls: {cert_file, key_file}` on the gRPC and HTTP receivers and the
//! admin listener, OTLP/HTTPS, OTLP/gRPC over TLS and the admin API work with a client that
//! trusts the (freshly generated, self-signed) certificate; plain connections and clients that
//! do not trust it are refused; bad certificate or key files are refused at load. With
//! `client_ca_file`, only clients with a certificate from that CA get in (the SDK, an HTTP
//! client and the CLI); with `reload_interval`, a renewed certificate is served without a restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::certs::{ca, client_cert};
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
    tls_yaml_with(downstream, cert, key, "")
}

/// `tls_yaml` with `extra` (e.g. `, client_ca_file: PATH`) in each `tls` block.
fn tls_yaml_with(downstream: &str, cert: &Path, key: &Path, extra: &str) -> String {
    let tls = format!(
        "tls: {{cert_file: {}, key_file: {}{extra}}}",
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

/// Exports one span with the OpenTelemetry SDK over OTLP/gRPC with TLS, presenting `identity`
/// if given. (The SDK logs a failed export rather than returning it: callers count what the
/// downstream received.)
async fn sdk_export(
    grpc: std::net::SocketAddr,
    server_pem: &str,
    identity: Option<tonic::transport::Identity>,
) {
    use opentelemetry::trace::{Tracer as _, TracerProvider as _};
    use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(server_pem))
        .domain_name("localhost");
    if let Some(id) = identity {
        tls = tls.identity(id);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(format!("https://{grpc}"))
        .with_tls_config(tls)
        .with_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(exporter)
        .build();
    let tracer = provider.tracer("mtls-test");
    tracer.in_span("invoke_agent support", |_| {});
    let _ = provider.force_flush();
    let _ = provider.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ca_file_lets_in_only_clients_with_its_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, server_pem) = self_signed(dir.path());
    let (ca_pem, issuer) = ca("agents CA");
    let ca_file = dir.path().join("agents-ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let (client_crt, client_key, client_pem, client_key_pem) =
        client_cert(dir.path(), "agent-1", &issuer);
    let (_, rogue_issuer) = ca("someone else's CA");
    let (rogue_crt, rogue_key, rogue_pem, rogue_key_pem) =
        client_cert(dir.path(), "rogue", &rogue_issuer);

    let (downstream, capture) = start_downstream().await;
    let extra = format!(", client_ca_file: {}", ca_file.display());
    let triage = start_triage(&tls_yaml_with(&downstream.to_string(), &cert, &key, &extra)).await;
    let (http, grpc, admin) = (
        triage.http_addr.unwrap(),
        triage.grpc_addr.unwrap(),
        triage.admin_addr.unwrap(),
    );

    // OTLP/gRPC through the SDK: with the agents' certificate, without one, with a rogue one.
    let id = |pem: &str, key: &str| Some(tonic::transport::Identity::from_pem(pem, key));
    sdk_export(grpc, &server_pem, id(&client_pem, &client_key_pem)).await;
    assert!(eventually(Duration::from_secs(5), || capture.span_count() == 1).await);
    sdk_export(grpc, &server_pem, None).await;
    sdk_export(grpc, &server_pem, id(&rogue_pem, &rogue_key_pem)).await;
    // The SDK has returned, so a span it delivered would be downstream within moments.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        capture.span_count(),
        1,
        "a client without the CA's certificate got in"
    );

    // OTLP/HTTPS.
    let https = |identity: Option<(&str, &str)>| {
        let mut b = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(server_pem.as_bytes()).unwrap())
            .resolve("localhost", http)
            .timeout(Duration::from_secs(10));
        if let Some((c, k)) = identity {
            b = b.identity(reqwest::Identity::from_pem(format!("{c}\n{k}").as_bytes()).unwrap());
        }
        b.build().unwrap()
    };
    let post = |client: reqwest::Client| async move {
        client
            .post(format!("https://localhost:{}/v1/traces", http.port()))
            .header("content-type", "application/json")
            .body(crate::http_json::SPEC_JSON)
            .send()
            .await
    };
    let ok = post(https(Some((&client_pem, &client_key_pem))))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert!(eventually(Duration::from_secs(5), || capture.span_count() == 3).await);
    assert!(post(https(None)).await.is_err(), "no client certificate");
    assert!(post(https(Some((&rogue_pem, &rogue_key_pem))))
        .await
        .is_err());

    // The CLI against the admin listener.
    let cli = |identity: Option<(&Path, &Path)>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_triage-loop"));
        cmd.args([
            "issues",
            "--admin",
            &format!("https://localhost:{}", admin.port()),
        ])
        .arg("--ca-file")
        .arg(&cert)
        .env_remove("TRIAGE_CLIENT_CERT")
        .env_remove("TRIAGE_CLIENT_KEY");
        if let Some((c, k)) = identity {
            cmd.arg("--client-cert").arg(c).arg("--client-key").arg(k);
        }
        cmd.output().unwrap()
    };
    let out = cli(Some((&client_crt, &client_key)));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !cli(None).status.success(),
        "the CLI got in without a certificate"
    );
    assert!(!cli(Some((&rogue_crt, &rogue_key))).status.success());

    assert_eq!(capture.span_count(), 3, "refused clients delivered nothing");
    triage.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_after_the_reload_interval() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, old_pem) = self_signed(dir.path());
    let (downstream, capture) = start_downstream().await;
    let triage = start_triage(&tls_yaml_with(
        &downstream.to_string(),
        &cert,
        &key,
        ", reload_interval: 1s",
    ))
    .await;
    let grpc = triage.grpc_addr.unwrap();
    let trusting = |pem: &str| {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(pem))
            .domain_name("localhost");
        Endpoint::from_shared(format!("https://{grpc}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
    };
    grpc_export(trusting(&old_pem))
        .await
        .expect("the first certificate");

    // Renew: new files in place; connections made after the interval get the new certificate.
    let renewed = tempfile::tempdir().unwrap();
    let (new_cert, new_key, new_pem) = self_signed(renewed.path());
    std::fs::copy(&new_key, &key).unwrap();
    std::fs::copy(&new_cert, &cert).unwrap();
    let served_new = eventually(Duration::from_secs(10), || {
        let endpoint = trusting(&new_pem);
        std::thread::scope(|s| {
            s.spawn(|| {
                tokio::runtime::Runtime::new()
                    .unwrap()
                    .block_on(grpc_export(endpoint))
                    .is_ok()
            })
            .join()
            .unwrap()
        })
    })
    .await;
    assert!(served_new, "the renewed certificate was not served");
    assert!(
        grpc_export(trusting(&old_pem)).await.is_err(),
        "the old certificate is still served"
    );

    // A broken renewal (a key that does not fit) keeps the certificate served before.
    let other = tempfile::tempdir().unwrap();
    let (_, other_key, _) = self_signed(other.path());
    std::fs::copy(&other_key, &key).unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    grpc_export(trusting(&new_pem))
        .await
        .expect("still the renewed certificate");
    assert!(eventually(Duration::from_secs(5), || capture.span_count() == 3).await);
    triage.shutdown().await;
}

#[test]
fn a_bad_client_ca_file_is_refused_with_its_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = self_signed(dir.path());
    let refusal = |extra: &str| {
        triage_loop::config::load_str(&tls_yaml_with("127.0.0.1:1", &cert, &key, extra), "c.yaml")
            .err()
            .expect("refused")
    };
    let e = refusal(&format!(
        ", client_ca_file: {}",
        dir.path().join("nope.pem").display()
    ));
    assert_eq!(
        e.path, "receivers.otlp.protocols.grpc.tls.client_ca_file",
        "{e}"
    );
    assert!(e.message.contains("nope.pem"), "{e}");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "no certificate here").unwrap();
    let e = refusal(&format!(", client_ca_file: {}", garbage.display()));
    assert_eq!(
        e.path, "receivers.otlp.protocols.grpc.tls.client_ca_file",
        "{e}"
    );
    assert!(e.message.contains("no usable PEM CA certificate"), "{e}");
    let e = refusal(", reload_interval: soon");
    assert!(e.to_string().contains("reload_interval"), "{e}");
}
