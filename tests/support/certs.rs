//! Test certificates made with rcgen: a CA and client certificates it signs, shared by the
//! test crates that need them (included with `#[path]`).

use std::path::{Path, PathBuf};

/// A CA named `name`: its certificate as PEM, and the issuer that signs with it.
pub fn ca(name: &str) -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let pem = params.self_signed(&key).unwrap().pem();
    (pem, rcgen::Issuer::new(params, key))
}

/// A client certificate for `name` signed by `issuer`, written to `dir` as NAME.pem and
/// NAME.key; returns (cert path, key path, cert PEM, key PEM).
pub fn client_cert(
    dir: &Path,
    name: &str,
    issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
) -> (PathBuf, PathBuf, String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let pem = params.signed_by(&key, issuer).unwrap().pem();
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert_path, &pem).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path, pem, key.serialize_pem())
}
