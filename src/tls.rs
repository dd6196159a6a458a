//! The rustls server config: TLS 1.2 and 1.3 only, ALPN h2 and http/1.1,
//! session tickets; and the self-signed development certificate.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::aws_lc_rs;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use crate::config::{Config, ConfigError};

fn err(config: &Config, key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError { file: config.file.clone(), key: key.into(), message: message.into() }
}

/// Set when this process generated the development certificate: a first
/// start with a dev config, when the startup banner adds a "try it" hint.
pub static FIRST_START: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The development certificate is missing and will be generated at start.
pub fn will_generate(config: &Config) -> bool {
    let tls = &config.tls;
    tls.generate_self_signed && !tls.cert.exists() && !tls.key.exists()
}

/// Builds the listener's TLS config, generating a dev certificate first when
/// `tls.generate_self_signed` is set and the files are missing.
pub fn server_config(config: &Config) -> Result<Arc<ServerConfig>, ConfigError> {
    let tls = &config.tls;
    if will_generate(config) {
        generate_self_signed(&tls.cert, &tls.key, &["localhost".into(), "127.0.0.1".into(), "::1".into()])
            .map_err(|m| err(config, "tls.cert", format!("cannot generate a self-signed certificate: {m}")))?;
        tracing::warn!(cert = %tls.cert.display(), "generated a self-signed certificate for localhost (tls.generate_self_signed = true); clients will not trust it");
        FIRST_START.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| err(config, "tls.cert", format!("cannot read a PEM certificate from {}: {e}", tls.cert.display())))?;
    if certs.is_empty() {
        return Err(err(config, "tls.cert", format!("{} holds no certificate", tls.cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| err(config, "tls.key", format!("cannot read a PEM private key from {}: {e}", tls.key.display())))?;
    let mut provider = aws_lc_rs::default_provider();
    provider.cipher_suites = preferred_cipher_suites();
    let mut sc = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| err(config, "tls", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| err(config, "tls.key", format!("the key does not fit the certificate: {e}")))?;
    sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Our order, not the client's: see `preferred_cipher_suites`.
    sc.ignore_client_order = true;
    // Returning clients resume without a full handshake.
    sc.ticketer = aws_lc_rs::Ticketer::new().map_err(|e| err(config, "tls", e.to_string()))?;
    // One ticket per handshake, as Go's crypto/tls sends (rustls and
    // OpenSSL send two): each connection's ticket serves the client's next
    // one, and each ticket costs a key derivation, an encryption and a
    // record. Measured: 5 to 7 % more new connections per second.
    sc.send_tls13_tickets = 1;
    Ok(Arc::new(sc))
}

/// rustls' default suites (AEAD with forward secrecy only), AES-128-GCM
/// first. OpenSSL clients (curl, wrk, most libraries) list AES-256-GCM
/// with SHA-384 first. Its key schedule (HKDF over SHA-384) was 40 % of
/// the CPU time of a resumed TLS 1.3 handshake here, while SHA-256 has
/// hardware support (SHA-NI, ARMv8) and AES-128 does 10 rounds to
/// AES-256's 14. AES-128-GCM is TLS 1.3's mandatory suite and first in
/// Mozilla's recommended order; the choice costs no security that matters.
fn preferred_cipher_suites() -> Vec<rustls::SupportedCipherSuite> {
    use aws_lc_rs::cipher_suite::*;
    vec![
        TLS13_AES_128_GCM_SHA256,
        TLS13_AES_256_GCM_SHA384,
        TLS13_CHACHA20_POLY1305_SHA256,
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ]
}

/// Writes a self-signed ECDSA P-256 certificate for `hosts` and its key (0600).
pub fn generate_self_signed(cert: &Path, key: &Path, hosts: &[String]) -> Result<(), String> {
    // Each a DNS name (a wildcard's `*.` allowed) or an IP address: a
    // certificate for "" or "a b" matches no host a client can ask for.
    for h in hosts {
        let name = h.strip_prefix("*.").unwrap_or(h);
        if h.parse::<std::net::IpAddr>().is_err() && rustls::pki_types::DnsName::try_from(name).is_err() {
            return Err(format!("--host {h:?}: not a DNS name or an IP address"));
        }
    }
    let ck = rcgen::generate_simple_self_signed(hosts.to_vec()).map_err(|e| e.to_string())?;
    if let Some(dir) = cert.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    crate::keys::write_private_pem(key, &ck.signing_key.serialize_pem()).map_err(|e| format!("{}: {e}", key.display()))?;
    std::fs::write(cert, ck.cert.pem()).map_err(|e| format!("{}: {e}", cert.display()))
}
