//! TLS to the broker with rustls (ring provider): the broker's CA, and a client certificate
//! where the broker authenticates clients by certificate.

use std::sync::Arc;

use anyhow::Context;
use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use std::path::PathBuf;

use serde::Deserialize;

/// The rustls client configuration for `tls`.
pub fn client_config(tls: &TlsSection) -> anyhow::Result<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(&tls.ca)
        .with_context(|| format!("cannot read CA certificates from {}", tls.ca.display()))?;
    for ca in cas {
        roots
            .add(ca.with_context(|| format!("bad PEM in {}", tls.ca.display()))?)
            .with_context(|| format!("unusable CA certificate in {}", tls.ca.display()))?;
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("TLS provider has no safe protocol versions")?
            .with_root_certificates(roots);
    match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("cannot read client certificate {}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("cannot read client key {}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .context("client certificate and key do not match")
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// The rustls server configuration of the HTTPS listener: `cert` (a PEM chain) and `key`.
pub fn server_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<rustls::ServerConfig> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read the certificate chain {}", cert.display()))?;
    let private = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read the private key {}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS provider has no safe protocol versions")?
    .with_no_client_auth()
    .with_single_cert(chain, private)
    .with_context(|| format!("{} and {} do not match", cert.display(), key.display()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// TLS settings (rustls).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM file of the CA that signed the broker's certificate.
    pub ca: PathBuf,
    /// PEM client certificate, for brokers that authenticate clients by certificate.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}
