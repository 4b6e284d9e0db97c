//! TLS on the listeners (rustls, ring): a PEM certificate chain and key (reloaded on an
//! interval when asked), client certificates checked against a CA file when asked (mTLS), and a
//! listener that completes handshakes off the accept loop, bounded in number and
//! time, for axum and tonic alike.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// A handshake not done in this long is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once per listener; connections beyond are closed at once.
const MAX_HANDSHAKES: usize = 256;
/// Finished handshakes waiting for the server to take them.
const READY_QUEUE: usize = 64;

/// ALPN for a gRPC listener (HTTP/2 only).
pub const ALPN_GRPC: &[&[u8]] = &[b"h2"];
/// ALPN for an HTTP listener (HTTP/2 or HTTP/1.1).
pub const ALPN_HTTP: &[&[u8]] = &[b"h2", b"http/1.1"];

/// A refused TLS setting: which key (`cert_file` / `key_file`) and why.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct TlsError {
    pub key: &'static str,
    pub message: String,
}

/// A rustls server config from a listener's `tls` block: the certificate chain (leaf first)
/// and its key, read again every `reload_interval` when one is set; with `client_ca_file`,
/// clients must present a certificate signed by one of its CAs.
pub fn server_config(t: &TlsConfig, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let source = CertSource {
        cert_file: t.cert_file.clone(),
        key_file: t.key_file.clone(),
        provider: provider.clone(),
    };
    let first = source.load()?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError {
            key: "cert_file",
            message: format!("TLS setup: {e}"),
        })?;
    let builder = match &t.client_ca_file {
        Some(ca) => builder.with_client_cert_verifier(client_verifier(ca, provider)?),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(Reloading {
        every: t.reload_interval.filter(|d| !d.is_zero()),
        state: Mutex::new((Instant::now(), Arc::new(first))),
        source,
    }));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Where a listener's certificate and key are read from.
#[derive(Debug)]
struct CertSource {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
}

impl CertSource {
    /// The certificate chain and its key, checked to fit each other.
    fn load(&self) -> Result<CertifiedKey, TlsError> {
        let certs = CertificateDer::pem_file_iter(&self.cert_file)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| TlsError {
                key: "cert_file",
                message: format!(
                    "cannot read certificates from {}: {e}",
                    self.cert_file.display()
                ),
            })?;
        if certs.is_empty() {
            return Err(TlsError {
                key: "cert_file",
                message: format!("{} holds no PEM certificate", self.cert_file.display()),
            });
        }
        // The key's error never quotes the file: it is a secret.
        let key = PrivateKeyDer::from_pem_file(&self.key_file).map_err(|e| TlsError {
            key: "key_file",
            message: format!(
                "cannot read a PEM private key from {}: {e}",
                self.key_file.display()
            ),
        })?;
        CertifiedKey::from_der(certs, key, &self.provider).map_err(|e| TlsError {
            key: "key_file",
            message: format!("the key does not fit the certificate: {e}"),
        })
    }
}

/// Serves the loaded certificate; with `every`, the first handshake after that long reads the
/// files again. A reload that fails keeps the certificate served before (and says why).
#[derive(Debug)]
struct Reloading {
    source: CertSource,
    every: Option<Duration>,
    /// When the files were last read, and what was read.
    state: Mutex<(Instant, Arc<CertifiedKey>)>,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if self.every.is_some_and(|every| state.0.elapsed() >= every) {
            state.0 = Instant::now();
            match self.source.load() {
                Ok(key) => {
                    if key.cert != state.1.cert {
                        tracing::info!(cert_file = %self.source.cert_file.display(), "TLS certificate reloaded");
                    }
                    state.1 = Arc::new(key);
                }
                Err(e) => tracing::warn!(
                    key = e.key,
                    error = %e.message,
                    "TLS certificate reload failed; serving the one loaded before"
                ),
            }
        }
        Some(state.1.clone())
    }
}

/// Requires clients to present a certificate signed by a CA of `ca_file` (PEM).
fn client_verifier(
    ca_file: &Path,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let refused = |message: String| TlsError {
        key: "client_ca_file",
        message,
    };
    let certs = CertificateDer::pem_file_iter(ca_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            refused(format!(
                "cannot read CA certificates from {}: {e}",
                ca_file.display()
            ))
        })?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(refused(format!(
            "{} holds no usable PEM CA certificate",
            ca_file.display()
        )));
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| refused(format!("TLS setup: {e}")))
}

/// A TLS connection, usable by tonic (which needs `Connected`) and axum.
pub struct TlsConn(TlsStream<TcpStream>);

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

/// Connections whose TLS handshake is done. Dropping it stops accepting.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsConn, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `tcp` and runs handshakes with `config` in their own tasks.
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        tokio::spawn(accept_loop(tcp, TlsAcceptor::from(config), tx));
        Ok(TlsListener { ready, local })
    }

    /// The connections as a stream, for tonic's `serve_with_incoming`.
    pub fn into_stream(self) -> impl tokio_stream::Stream<Item = io::Result<TlsConn>> {
        use tokio_stream::StreamExt as _;
        tokio_stream::wrappers::ReceiverStream::new(self.ready).map(|(conn, _)| Ok(conn))
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsConn, SocketAddr)>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (stream, addr) = tokio::select! {
            _ = tx.closed() => return,
            r = tcp.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "TLS listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tracing::warn!(%addr, "TLS listener: too many handshakes in progress; connection closed");
            continue;
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send((TlsConn(tls), addr)).await;
                }
                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept loop only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
