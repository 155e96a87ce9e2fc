//! The site's certificate authority (rcgen): `nodectl ca init` makes it with the broker's
//! certificate, `nodectl provision --tls` issues each device its own.

use anyhow::{Context, ensure};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its key (a secret: mode 600).
    pub key_pem: String,
}

/// A new site CA and the broker's certificate for `broker_names` (host names or IP addresses
/// the nodes and the gateway dial).
pub fn init(site_name: &str, broker_names: &[String]) -> anyhow::Result<(Issued, Issued)> {
    ensure!(
        !broker_names.is_empty(),
        "name the broker as the nodes reach it (--broker-host, host name or IP address)"
    );
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{site_name} CitySense CA"));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(this_year(), 1, 1);
    params.not_after = rcgen::date_time_ymd(this_year() + 20, 1, 1);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let ca = Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    };
    let issuer = Issuer::new(params, key);
    let broker = leaf(
        &issuer,
        broker_names.to_vec(),
        "broker",
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    Ok((ca, broker))
}

/// A client certificate for `device` (its common name: the broker's user name for the ACL),
/// issued by the CA in `ca_cert_pem` and `ca_key_pem`.
pub fn issue_device(ca_cert_pem: &str, ca_key_pem: &str, device: &str) -> anyhow::Result<Issued> {
    let key = KeyPair::from_pem(ca_key_pem).context("the CA key is not a PEM private key")?;
    let issuer =
        Issuer::from_ca_cert_pem(ca_cert_pem, key).context("the CA certificate is not PEM")?;
    leaf(
        &issuer,
        Vec::new(),
        device,
        ExtendedKeyUsagePurpose::ClientAuth,
    )
}

fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    names: Vec<String>,
    common_name: &str,
    usage: ExtendedKeyUsagePurpose,
) -> anyhow::Result<Issued> {
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.not_before = rcgen::date_time_ymd(this_year(), 1, 1);
    params.not_after = rcgen::date_time_ymd(this_year() + 10, 1, 1);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The current year (UTC), close enough for validity periods that start on its first day.
fn this_year() -> i32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    1970 + i32::try_from(secs / 31_556_952).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_certificate_is_issued_by_the_site_ca() {
        let (ca, broker) = init("Ganzhou", &["127.0.0.1".into(), "broker.local".into()]).unwrap();
        assert!(ca.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(broker.key_pem.contains("PRIVATE KEY"));
        let device = issue_device(&ca.cert_pem, &ca.key_pem, "gz-p1-press").unwrap();
        assert!(device.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let err = issue_device(&ca.cert_pem, "not a key", "x").unwrap_err();
        assert!(err.to_string().contains("CA key"), "{err}");
    }

    #[test]
    fn the_broker_needs_a_name() {
        assert!(init("Ganzhou", &[]).is_err());
    }
}
