//! The PostgreSQL store over TLS against the machine's PostgreSQL: each `sslmode` encrypts (or
//! not) as libpq's does, and `verify-ca` / `verify-full` refuse a server they cannot vouch for.
//! Skips, saying so, when PostgreSQL is not reachable or serves no TLS. The client certificate
//! (`sslcert`, `sslkey`) is checked against a stand-in server that requires one.

#[path = "support/certs.rs"]
mod certs;
#[path = "support/postgres.rs"]
mod pg_support;

use std::sync::atomic::{AtomicU32, Ordering};

use pg_support::{connect_or_skip, tcp_address_or_skip};
use tokio_postgres::Client;
use triage_loop::remediation::store;

/// Whether the server offers TLS, and the PEM file of its certificate when it can be read.
async fn server_tls(admin: &Client) -> (bool, Option<String>) {
    let on: String = admin.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    let cert: String = admin
        .query_one("SHOW ssl_cert_file", &[])
        .await
        .unwrap()
        .get(0);
    let readable = std::fs::read_to_string(&cert).is_ok_and(|s| s.contains("BEGIN CERTIFICATE"));
    (on == "on", readable.then_some(cert))
}

/// A fresh schema and application name for one connection attempt.
fn unique(what: &str) -> (String, String) {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let id = format!("{}_{}", std::process::id(), n);
    (format!("tls_{what}_{id}"), format!("tl-tls-{what}-{id}"))
}

/// Opens the store at `base` with `params` added (in a schema of its own) and says whether its
/// connection is encrypted, as the server sees it.
async fn open_and_check(
    admin: &Client,
    base: &str,
    what: &str,
    params: &str,
) -> Result<bool, String> {
    let (schema, app) = unique(what);
    admin
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!(
        "{base}{sep}application_name={app}&options=-c%20search_path%3D{schema}{}{params}",
        if params.is_empty() { "" } else { "&" }
    );
    let result = match store::open(&url).await {
        Ok(s) => {
            let row = admin
                .query_one(
                    "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a ON a.pid = s.pid
                     WHERE a.application_name = $1",
                    &[&app],
                )
                .await
                .map_err(|e| format!("no backend for {app}: {e}"))?;
            drop(s);
            Ok(row.get::<_, bool>(0))
        }
        Err(e) => Err(e.to_string()),
    };
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
    result
}

#[tokio::test]
async fn sslmode_decides_whether_the_store_connection_is_encrypted() {
    let Some((admin, base)) = connect_or_skip("store TLS modes").await else {
        return;
    };
    let (on, _) = server_tls(&admin).await;
    if !on {
        println!("SKIPPED: PostgreSQL at {base} serves no TLS (ssl = off)");
        return;
    }
    // No sslmode means prefer, as in libpq: TLS when the server offers it.
    assert_eq!(open_and_check(&admin, &base, "default", "").await, Ok(true));
    assert_eq!(
        open_and_check(&admin, &base, "disable", "sslmode=disable").await,
        Ok(false)
    );
    assert_eq!(
        open_and_check(&admin, &base, "allow", "sslmode=allow").await,
        Ok(true)
    );
    assert_eq!(
        open_and_check(&admin, &base, "require", "sslmode=require").await,
        Ok(true)
    );
}

#[tokio::test]
async fn verify_modes_check_the_servers_certificate() {
    let Some((admin, base)) = connect_or_skip("store TLS verification").await else {
        return;
    };
    let (on, cert) = server_tls(&admin).await;
    let Some(cert) = cert.filter(|_| on) else {
        println!("SKIPPED: PostgreSQL at {base} serves no TLS or its certificate is not readable");
        return;
    };
    if !base.contains("@127.0.0.1:") {
        println!("SKIPPED: the host-name checks need the test database at 127.0.0.1 ({base})");
        return;
    }
    let by_name = base.replace("@127.0.0.1:", "@localhost:");
    // The server's certificate as the root: a self-signed certificate (the distribution's
    // snakeoil one is issued for localhost) vouches for itself.
    let root = format!("sslrootcert={cert}");
    match open_and_check(
        &admin,
        &by_name,
        "full",
        &format!("sslmode=verify-full&{root}"),
    )
    .await
    {
        Ok(encrypted) => assert!(encrypted),
        Err(e) if e.contains("UnknownIssuer") => {
            println!("SKIPPED: the server's certificate is not self-signed ({e})");
            return;
        }
        Err(e) => panic!("verify-full against the server's own certificate failed: {e}"),
    }
    // verify-ca checks the chain only, so the address works where the name check fails.
    assert_eq!(
        open_and_check(&admin, &base, "ca", &format!("sslmode=verify-ca&{root}")).await,
        Ok(true)
    );
    let e = open_and_check(
        &admin,
        &base,
        "name",
        &format!("sslmode=verify-full&{root}"),
    )
    .await
    .unwrap_err();
    assert!(e.contains("not valid for name \"127.0.0.1\""), "{e}");
    // require with a root checks the chain as verify-ca does (libpq): a root that did not sign
    // the server's certificate is refused, as it is by verify-full.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other-ca.pem");
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    std::fs::write(&other, params.self_signed(&key).unwrap().pem()).unwrap();
    let other = format!("sslrootcert={}", other.display());
    for mode in ["require", "verify-full"] {
        let e = open_and_check(
            &admin,
            &by_name,
            "other",
            &format!("sslmode={mode}&{other}"),
        )
        .await
        .unwrap_err();
        assert!(e.contains("UnknownIssuer"), "{mode}: {e}");
    }
}

/// What the stand-in server saw of one connection: the client's leaf certificate, or why the
/// handshake failed.
type Seen = Result<Vec<u8>, String>;

/// A stand-in for PostgreSQL's TLS start (SSLRequest answered `S`, then a handshake) that
/// requires a client certificate signed by `client_ca_pem`; reports what it saw of the first
/// connection and closes it.
async fn tls_stand_in(client_ca_pem: &str) -> (u16, tokio::sync::oneshot::Receiver<Seen>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(client_ca_pem.as_bytes()).unwrap())
        .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![server.cert.der().clone()],
            PrivateKeyDer::from_pem_slice(server.signing_key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        // SSLRequest: length 8, code 80877103.
        let mut request = [0u8; 8];
        stream.read_exact(&mut request).await.unwrap();
        assert_eq!(
            request,
            [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f],
            "an SSLRequest"
        );
        stream.write_all(b"S").await.unwrap();
        let seen = match acceptor.accept(stream).await {
            Ok(tls) => tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec())
                .ok_or_else(|| "no client certificate".to_string()),
            Err(e) => Err(e.to_string()),
        };
        let _ = tx.send(seen);
    });
    (port, rx)
}

#[tokio::test]
async fn the_client_certificate_is_shown_to_a_server_that_asks() {
    use rustls::pki_types::pem::PemObject;
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, issuer) = certs::ca("database clients");
    let (cert, key, cert_pem, _) = certs::client_cert(dir.path(), "triage", &issuer);
    let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map(|c| c.to_vec())
        .unwrap();

    let (port, seen) = tls_stand_in(&ca_pem).await;
    let url = format!(
        "postgres://triage@localhost:{port}/db?sslmode=require&connect_timeout=5&sslcert={}&sslkey={}",
        cert.display(),
        key.display()
    );
    // The stand-in closes after the handshake, so the store cannot open; what counts is what
    // the server saw.
    assert!(store::open(&url).await.is_err());
    let seen = tokio::time::timeout(std::time::Duration::from_secs(10), seen)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, Ok(der), "the server saw the client's certificate");

    // Without one, the server refuses the handshake.
    let (port, seen) = tls_stand_in(&ca_pem).await;
    let url = format!("postgres://triage@localhost:{port}/db?sslmode=require&connect_timeout=5");
    assert!(store::open(&url).await.is_err());
    let seen = tokio::time::timeout(std::time::Duration::from_secs(10), seen)
        .await
        .unwrap()
        .unwrap();
    let e = seen.unwrap_err();
    assert!(e.contains("certificate"), "{e}");
}

/// A stand-in in front of the real PostgreSQL at `upstream` that answers an SSLRequest with `S`
/// and then hangs up (a TLS start the server cannot complete) and passes every plain-text
/// connection through. Returns its port.
async fn tls_breaking_proxy(upstream: String) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let mut first = [0u8; 8];
                if client.read_exact(&mut first).await.is_err() {
                    return;
                }
                if first == [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f] {
                    let _ = client.write_all(b"S").await;
                    return;
                }
                let mut server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
                if server.write_all(&first).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn prefer_falls_back_to_plain_text_when_the_tls_attempt_fails() {
    let Some((admin, base)) = connect_or_skip("store TLS fallback").await else {
        return;
    };
    let Some((host, port)) = tcp_address_or_skip(&base, "store TLS fallback") else {
        return;
    };
    let upstream = format!("{host}:{port}");
    let port = tls_breaking_proxy(upstream.clone()).await;
    let through = base.replacen(&upstream, &format!("127.0.0.1:{port}"), 1);
    assert_ne!(through, base, "the proxy's URL ({base} names {upstream})");

    // libpq's prefer (the default) and allow: the TLS attempt fails, plain text works.
    for (what, params) in [
        ("fallback_default", ""),
        ("fallback_allow", "sslmode=allow"),
    ] {
        assert_eq!(
            open_and_check(&admin, &through, what, params).await,
            Ok(false),
            "{what}"
        );
    }
    // require never falls back.
    let e = open_and_check(&admin, &through, "fallback_require", "sslmode=require")
        .await
        .unwrap_err();
    assert!(e.contains("connecting to PostgreSQL"), "{e}");
    assert!(
        !e.contains("in plain text"),
        "require tried plain text: {e}"
    );
}
