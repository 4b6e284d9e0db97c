//! TLS to PostgreSQL over rustls, with libpq's meanings of `sslmode` and `sslrootcert`.
//!
//! tokio-postgres knows `sslmode` `disable`, `prefer` and `require` and leaves checking the
//! server's certificate to the TLS connector. The store's URL takes what `psql` takes:
//!
//! | `sslmode` | TLS | server certificate |
//! | --- | --- | --- |
//! | `disable` | never | |
//! | `allow`, `prefer` (default) | when the server offers it; plain text if that attempt fails | not checked |
//! | `require` | always | not checked, unless a root certificate is given (then as `verify-ca`) |
//! | `verify-ca` | always | signed by a root in `sslrootcert` |
//! | `verify-full` | always | as `verify-ca`, and issued for the host connected to |
//!
//! `sslrootcert` is a PEM file of root certificates or `system` (the system's trust store);
//! without it, `~/.postgresql/root.crt` is used when it exists, as libpq does. `sslcert` and
//! `sslkey` (PEM, unencrypted) are the client certificate shown to a server that asks for one;
//! without them, `~/.postgresql/postgresql.crt` and `.key` when both exist. A key passphrase
//! (`sslpassword`) and revocation lists (`sslcrl`, `sslcrldir`) are refused rather than ignored.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use percent_encoding::percent_decode_str;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode, String> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode={other:?}: expected disable, allow, prefer, require, verify-ca or verify-full"
                ))
            }
        })
    }

    /// The nearest mode tokio-postgres knows (it tries TLS first for `allow` too).
    fn driver_mode(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow | SslMode::Prefer => "prefer",
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => "require",
        }
    }
}

/// Where the roots that sign the server's certificate come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    File(PathBuf),
    System,
}

/// How a store connects: the URL tokio-postgres parses, and the TLS settings taken out of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTls {
    /// The URL without the options handled here, and with `sslmode` mapped for the driver.
    pub driver_url: String,
    pub mode: SslMode,
    /// Roots to check the server's certificate against; `None` leaves it unchecked.
    pub roots: Option<RootCert>,
    /// The client certificate chain and key files (PEM) shown to a server that asks.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// Options libpq knows that this store does not support (key passphrases, CRLs).
const UNSUPPORTED: &[&str] = &["sslpassword", "sslcrl", "sslcrldir"];

impl PgTls {
    /// Reads the TLS options of a `postgres://` URL. `libpq_dir` is libpq's directory of
    /// default files (`~/.postgresql`): its `root.crt`, `postgresql.crt` and `postgresql.key`
    /// are used when they exist and the URL names none.
    pub fn from_url(url: &str, libpq_dir: Option<&Path>) -> Result<PgTls, String> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut kept: Vec<&str> = Vec::new();
        let mut mode = SslMode::Prefer;
        let mut root_param: Option<String> = None;
        let (mut cert_param, mut key_param): (Option<String>, Option<String>) = (None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = || {
                percent_decode_str(value)
                    .decode_utf8()
                    .map(|v| v.into_owned())
                    .map_err(|_| format!("{key}: not valid UTF-8 once percent-decoded"))
            };
            match key {
                "sslmode" => mode = SslMode::parse(&value()?)?,
                "sslrootcert" => root_param = Some(value()?),
                "sslcert" => cert_param = Some(value()?),
                "sslkey" => key_param = Some(value()?),
                k if UNSUPPORTED.contains(&k) => {
                    return Err(format!(
                        "{k}: key passphrases and revocation lists are not supported; \
                         give sslkey an unencrypted key file"
                    ))
                }
                _ => kept.push(pair),
            }
        }
        let roots = match root_param.as_deref() {
            Some("") => return Err("sslrootcert is empty".into()),
            Some("system") => Some(RootCert::System),
            Some(path) => Some(RootCert::File(PathBuf::from(path))),
            None => libpq_dir
                .map(|d| d.join("root.crt"))
                .filter(|p| p.is_file())
                .map(RootCert::File),
        };
        let client = match (cert_param, key_param) {
            (Some(c), Some(k)) if !c.is_empty() && !k.is_empty() => {
                Some((PathBuf::from(c), PathBuf::from(k)))
            }
            (None, None) => libpq_dir
                .map(|d| (d.join("postgresql.crt"), d.join("postgresql.key")))
                .filter(|(c, k)| c.is_file() && k.is_file()),
            _ => return Err("sslcert and sslkey go together, each a PEM file".into()),
        };
        let client = client.filter(|_| mode != SslMode::Disable);
        let roots = match mode {
            SslMode::VerifyCa | SslMode::VerifyFull => Some(roots.ok_or_else(|| {
                format!(
                    "sslmode={}: no root certificate to check the server against; set \
                     sslrootcert=PATH (PEM) or sslrootcert=system",
                    if mode == SslMode::VerifyCa {
                        "verify-ca"
                    } else {
                        "verify-full"
                    }
                )
            })?),
            // libpq: with a root certificate, require checks the chain as verify-ca does.
            SslMode::Require => roots,
            SslMode::Disable | SslMode::Allow | SslMode::Prefer => None,
        };
        kept.push(match mode.driver_mode() {
            "disable" => "sslmode=disable",
            "prefer" => "sslmode=prefer",
            _ => "sslmode=require",
        });
        Ok(PgTls {
            driver_url: format!("{base}?{}", kept.join("&")),
            mode,
            roots,
            client,
        })
    }

    /// Whether a connection whose TLS attempt failed is tried again in plain text, as libpq does
    /// for `allow` and `prefer` (a handshake the server cannot complete, a `hostnossl` rule).
    pub fn falls_back_to_plain(&self) -> bool {
        matches!(self.mode, SslMode::Allow | SslMode::Prefer)
    }

    /// libpq's directory of default files, `~/.postgresql`.
    pub fn libpq_dir() -> Option<PathBuf> {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".postgresql"))
    }

    /// The connector: certificates checked as the mode says, roots loaded now (so a missing or
    /// unreadable file fails at start, not at the first reconnect).
    pub fn connector(&self) -> Result<MakeRustlsConnect, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?;
        let chain = match &self.roots {
            None => None,
            Some(roots) => Some(
                WebPkiServerVerifier::builder_with_provider(
                    Arc::new(load_roots(roots)?),
                    provider.clone(),
                )
                .build()
                .map_err(|e| format!("TLS setup: {e}"))?,
            ),
        };
        let builder = match chain {
            Some(webpki) if self.mode == SslMode::VerifyFull => {
                builder.with_webpki_verifier(webpki)
            }
            chain => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Lenient { chain, provider })),
        };
        let config = match &self.client {
            None => builder.with_no_client_auth(),
            Some((cert_file, key_file)) => {
                let (chain, key) = load_client(cert_file, key_file)?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    format!(
                        "sslcert={} / sslkey={}: {e}",
                        cert_file.display(),
                        key_file.display()
                    )
                })?
            }
        };
        Ok(MakeRustlsConnect::new(config))
    }
}

/// The client certificate chain (leaf first) and key of `sslcert` / `sslkey`.
fn load_client(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("sslcert={}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "sslcert={}: no PEM certificate in the file",
            cert.display()
        ));
    }
    // The key's error never quotes the file's content: it is a secret.
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("sslkey={}: not a PEM private key ({e})", key.display()))?;
    Ok((chain, key))
}

/// The root store of `roots`; an error names the file and what is wrong with it.
fn load_roots(roots: &RootCert) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match roots {
        RootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!(
                    "sslrootcert=system: no usable certificate in the system's trust store{}",
                    found
                        .errors
                        .first()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                ));
            }
        }
        RootCert::File(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| format!("sslrootcert={}: {e}", path.display()))?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "sslrootcert={}: no PEM certificate in the file",
                    path.display()
                ));
            }
        }
    }
    Ok(store)
}

/// The server checks short of `verify-full`: with no `chain`, none (`prefer`, `require`
/// without roots: the connection is encrypted, the server not authenticated, as in libpq);
/// with one (`verify-ca`), the certificate must lead to one of its roots, whatever name it was
/// issued for. The handshake's signatures are checked either way.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        // The chain is checked before the name, so a name error means the chain held.
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<PgTls, String> {
        PgTls::from_url(url, None)
    }

    #[test]
    fn modes_map_to_the_driver_and_keep_other_options() {
        let t = parse("postgres://u@h:5432/db?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca%20s.pem&connect_timeout=3").unwrap();
        assert_eq!(t.mode, SslMode::VerifyFull);
        assert_eq!(t.roots, Some(RootCert::File("/etc/ca s.pem".into())));
        assert_eq!(
            t.driver_url,
            "postgres://u@h:5432/db?application_name=x&connect_timeout=3&sslmode=require"
        );
        let t = parse("postgres://u@h/db").unwrap();
        assert_eq!((t.mode, t.roots.clone()), (SslMode::Prefer, None));
        assert_eq!(t.driver_url, "postgres://u@h/db?sslmode=prefer");
        for (mode, driver) in [
            ("disable", "disable"),
            ("allow", "prefer"),
            ("prefer", "prefer"),
            ("require", "require"),
        ] {
            let t = parse(&format!("postgres://h/db?sslmode={mode}")).unwrap();
            assert_eq!(t.driver_url, format!("postgres://h/db?sslmode={driver}"));
            assert_eq!(t.roots, None);
        }
        let t = parse("postgres://h/db?sslmode=verify-ca&sslrootcert=system").unwrap();
        assert_eq!(t.roots, Some(RootCert::System));
    }

    #[test]
    fn require_checks_the_chain_when_given_roots_and_prefer_never_does() {
        let t = parse("postgres://h/db?sslmode=require&sslrootcert=/ca.pem").unwrap();
        assert_eq!(t.roots, Some(RootCert::File("/ca.pem".into())));
        let t = parse("postgres://h/db?sslmode=prefer&sslrootcert=/ca.pem").unwrap();
        assert_eq!(t.roots, None);
        // libpq's default root file counts when it exists, and only then.
        let dir = tempfile::tempdir().unwrap();
        let home_root = dir.path().join("root.crt");
        let t = PgTls::from_url("postgres://h/db?sslmode=verify-full", Some(dir.path()));
        assert!(t.unwrap_err().contains("sslrootcert=PATH"));
        std::fs::write(&home_root, "").unwrap();
        let t = PgTls::from_url("postgres://h/db?sslmode=verify-full", Some(dir.path())).unwrap();
        assert_eq!(t.roots, Some(RootCert::File(home_root.clone())));
        let t = PgTls::from_url("postgres://h/db?sslmode=require", Some(dir.path())).unwrap();
        assert_eq!(t.roots, Some(RootCert::File(home_root)));
    }

    #[test]
    fn bad_options_are_refused_with_what_is_wrong() {
        let e = parse("postgres://h/db?sslmode=verify").unwrap_err();
        assert!(e.contains("verify-full"), "{e}");
        let e = parse("postgres://h/db?sslmode=verify-ca").unwrap_err();
        assert!(
            e.contains("sslmode=verify-ca") && e.contains("sslrootcert"),
            "{e}"
        );
        let e = parse("postgres://h/db?sslpassword=x&sslmode=require").unwrap_err();
        assert!(e.starts_with("sslpassword:"), "{e}");
        let e = parse("postgres://h/db?sslcert=/c.pem&sslmode=require").unwrap_err();
        assert!(e.contains("sslcert and sslkey go together"), "{e}");
        let e = parse("postgres://h/db?sslrootcert=").unwrap_err();
        assert!(e.contains("empty"), "{e}");
        let e = parse("postgres://h/db?sslrootcert=%FF").unwrap_err();
        assert!(e.contains("UTF-8"), "{e}");
    }

    #[test]
    fn client_certificates_come_from_the_url_or_libpqs_defaults() {
        let t = parse("postgres://h/db?sslmode=require&sslcert=/c.pem&sslkey=/k.pem").unwrap();
        assert_eq!(t.client, Some(("/c.pem".into(), "/k.pem".into())));
        assert_eq!(t.driver_url, "postgres://h/db?sslmode=require");
        let dir = tempfile::tempdir().unwrap();
        let url = "postgres://h/db?sslmode=require";
        assert_eq!(PgTls::from_url(url, Some(dir.path())).unwrap().client, None);
        std::fs::write(dir.path().join("postgresql.crt"), "").unwrap();
        assert_eq!(
            PgTls::from_url(url, Some(dir.path())).unwrap().client,
            None,
            "no key"
        );
        std::fs::write(dir.path().join("postgresql.key"), "").unwrap();
        assert_eq!(
            PgTls::from_url(url, Some(dir.path())).unwrap().client,
            Some((
                dir.path().join("postgresql.crt"),
                dir.path().join("postgresql.key")
            ))
        );
        let off = "postgres://h/db?sslmode=disable&sslcert=/c.pem&sslkey=/k.pem";
        assert_eq!(parse(off).unwrap().client, None);
    }

    #[test]
    fn the_connector_loads_its_roots_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let t = parse(&format!(
            "postgres://h/db?sslmode=verify-full&sslrootcert={}",
            missing.display()
        ))
        .unwrap();
        let e = t.connector().err().unwrap();
        assert!(e.contains("missing.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let t = parse(&format!(
            "postgres://h/db?sslmode=verify-ca&sslrootcert={}",
            empty.display()
        ))
        .unwrap();
        let e = t.connector().err().unwrap();
        assert!(e.contains("no PEM certificate"), "{e}");
        assert!(parse("postgres://h/db?sslmode=require")
            .unwrap()
            .connector()
            .is_ok());
    }
}
