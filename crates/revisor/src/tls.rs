//! The admin API's HTTPS, as k3s does it: a CA made at the server's first start and kept in
//! `DATA_DIR/tls` (`ca.crt`, and `ca.key` mode 0600), and a serving certificate signed by it at every
//! start for the names the API answers to (loopback names, the address it listens on, and
//! `--admin-tls-san` names). The server writes the CA beside the CLI's credentials, so the CLI on the
//! same machine trusts it by itself; elsewhere `--certificate-authority FILE`.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The directory under the data dir.
pub const TLS_DIR: &str = "tls";
/// The CA certificate (public) and its key (mode 0600).
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";

/// The admin API's TLS: the server's configuration and the CA that clients trust.
pub struct AdminTls {
    pub config: Arc<rustls::ServerConfig>,
    pub ca_pem: String,
    pub ca_path: PathBuf,
}

/// The CA's parameters: the same at every start, so a key loaded from disk issues certificates that
/// chain to the certificate made with it.
fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "revisor admin CA");
    dn.push(DnType::OrganizationName, "revisor");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = rcgen::date_time_ymd(2026, 1, 1);
    p.not_before = now;
    p.not_after = rcgen::date_time_ymd(2046, 1, 1);
    p
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// The CA in `dir`, made when missing.
fn ca(dir: &Path) -> Result<(KeyPair, String)> {
    let (key_path, cert_path) = (dir.join(CA_KEY), dir.join(CA_CERT));
    if key_path.exists() && cert_path.exists() {
        let key = KeyPair::from_pem(&std::fs::read_to_string(&key_path)?)
            .with_context(|| format!("{} is not a private key", key_path.display()))?;
        return Ok((key, std::fs::read_to_string(&cert_path)?));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let _ = std::fs::remove_file(&key_path);
    let _ = std::fs::remove_file(&cert_path);
    let key = KeyPair::generate().context("making the admin CA's key")?;
    let cert = ca_params().self_signed(&key).context("making the admin CA")?;
    write_private(&key_path, &key.serialize_pem())?;
    std::fs::write(&cert_path, cert.pem()).with_context(|| format!("writing {}", cert_path.display()))?;
    Ok((key, cert.pem()))
}

/// The names a serving certificate for `bound` covers.
pub fn names(bound: SocketAddr, extra: &[String]) -> Vec<SanType> {
    let mut ips: Vec<IpAddr> = vec!["127.0.0.1".parse().expect("an IP"), "::1".parse().expect("an IP")];
    if !bound.ip().is_unspecified() && !ips.contains(&bound.ip()) {
        ips.push(bound.ip());
    }
    let mut sans: Vec<SanType> = ips.into_iter().map(SanType::IpAddress).collect();
    sans.push(SanType::DnsName("localhost".try_into().expect("a DNS name")));
    for name in extra {
        match name.parse::<IpAddr>() {
            Ok(ip) => sans.push(SanType::IpAddress(ip)),
            Err(_) => {
                if let Ok(n) = name.as_str().try_into() {
                    sans.push(SanType::DnsName(n));
                }
            }
        }
    }
    sans
}

/// The admin API's TLS from the CA in `data_dir/tls` (made at first start) and a serving certificate
/// made now for `bound` and `extra` names.
pub fn admin_tls(data_dir: &Path, bound: SocketAddr, extra: &[String]) -> Result<AdminTls> {
    let dns = |n: &str| {
        !n.is_empty() && n.len() <= 253 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.*".contains(&b))
    };
    for n in extra {
        if n.parse::<IpAddr>().is_err() && !dns(n) {
            anyhow::bail!("--admin-tls-san {n:?} is neither an IP address nor a DNS name");
        }
    }
    let dir = data_dir.join(TLS_DIR);
    let (ca_key, ca_pem) = ca(&dir)?;
    let issuer = Issuer::new(ca_params(), &ca_key);
    let key = KeyPair::generate().context("making the admin API's key")?;
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, "revisor admin API");
    p.subject_alt_names = names(bound, extra);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.not_before = rcgen::date_time_ymd(2026, 1, 1);
    p.not_after = rcgen::date_time_ymd(2046, 1, 1);
    let cert = p
        .signed_by(&key, &issuer)
        .context("signing the admin API's certificate")?;
    let chain = vec![cert.der().clone()];
    let key_der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .context("the admin API's certificate")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(AdminTls {
        config: Arc::new(config),
        ca_pem,
        ca_path: dir.join(CA_CERT),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_made_once_private_and_signs_every_start() {
        let dir = tempfile::tempdir().unwrap();
        let bound: SocketAddr = "127.0.0.1:7070".parse().unwrap();
        let a = admin_tls(dir.path(), bound, &[]).unwrap();
        let b = admin_tls(dir.path(), bound, &["revisor.example".into(), "10.0.0.7".into()]).unwrap();
        assert_eq!(a.ca_pem, b.ca_pem, "the CA is kept");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("tls/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let e = admin_tls(dir.path(), bound, &["not a name".into()])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--admin-tls-san"), "{e}");
    }
}
