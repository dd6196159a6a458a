//! Keys of external issuers (`[[jwt.issuers]]`): each issuer's JWKS is
//! fetched (HTTPS, or read from a file), cached, and refreshed in the
//! background before its `Cache-Control: max-age` runs out. Verification
//! only ever reads the cache: a request never waits on the network.
//!
//! A token naming an unknown `kid` is refused and wakes the refresher, at
//! most once per [`UNKNOWN_KID_REFETCH`], so a flood of made-up kids cannot
//! hammer the IdP. A failed fetch keeps the last good keys.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

use crate::config::IssuerConfig;
use crate::error::TokenError;

/// An unknown kid triggers at most one refetch per this long.
pub const UNKNOWN_KID_REFETCH: Duration = Duration::from_secs(30);
/// Bounds on how long a fetched JWKS is used before it is fetched again,
/// whatever its max-age says; the default when it says nothing.
const MIN_REFRESH: Duration = Duration::from_secs(60);
const MAX_REFRESH: Duration = Duration::from_secs(6 * 3600);
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);
/// A JWKS file is read again this often (and on an unknown kid).
const FILE_REFRESH: Duration = Duration::from_secs(30);
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_JWKS_BYTES: usize = 1 << 20;

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyType {
    Rsa,
    P256,
    P384,
    Ed25519,
}

/// One usable signing key of an issuer.
struct ExternalKey {
    kid: Option<String>,
    /// The JWK's own `alg`, when it names one: then only that one.
    alg: Option<String>,
    kty: KeyType,
    key: DecodingKey,
}

impl ExternalKey {
    fn fits(&self, alg: Algorithm) -> bool {
        use Algorithm::*;
        let kty = match alg {
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => KeyType::Rsa,
            ES256 => KeyType::P256,
            ES384 => KeyType::P384,
            EdDSA => KeyType::Ed25519,
            _ => return false,
        };
        kty == self.kty && self.alg.as_deref().is_none_or(|a| a == crate::keys::alg_name(alg))
    }
}

/// What a refresher has done so far (for tests, logs and readiness).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FetchStats {
    pub attempts: u64,
    pub failures: u64,
    pub keys: usize,
}

pub struct Issuer {
    pub config: IssuerConfig,
    keys: ArcSwap<Vec<ExternalKey>>,
    /// SHA-256 of the usable keys last loaded, to tell a change.
    digest: Mutex<[u8; 32]>,
    /// Shared by the gateway's issuers; moved on when a key set changes.
    generation: Arc<AtomicU64>,
    client: Option<HttpsClient>,
    wake: Arc<tokio::sync::Notify>,
    last_unknown_kid: Mutex<Option<Instant>>,
    attempts: AtomicU64,
    failures: AtomicU64,
}

impl Drop for Issuer {
    fn drop(&mut self) {
        // Lets the refresher notice at once that it has nothing left to do.
        self.wake.notify_one();
    }
}

impl Issuer {
    /// Builds the issuer; a JWKS file is read now (an HTTPS one by the
    /// refresher). A key set that cannot be loaded is logged, not fatal:
    /// that issuer's tokens get 401 until it loads.
    ///
    /// `seed` (a reload): the running gateway's issuer that reads the same
    /// JWKS; its keys serve until this one has loaded its own, and stay
    /// if that fails, as with any failed refresh.
    pub fn new(config: IssuerConfig, generation: Arc<AtomicU64>, seed: Option<&Arc<Issuer>>) -> Result<Issuer, String> {
        let client = if config.jwks_url.starts_with("https://") { Some(https_client(&config)?) } else { None };
        let issuer = Issuer {
            keys: seed.map_or_else(|| ArcSwap::from_pointee(Vec::new()), |s| ArcSwap::new(s.keys.load_full())),
            digest: Mutex::new(seed.map_or([0; 32], |s| *s.digest.lock().unwrap_or_else(|p| p.into_inner()))),
            generation,
            client,
            wake: Arc::new(tokio::sync::Notify::new()),
            last_unknown_kid: Mutex::new(None),
            attempts: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            config,
        };
        if issuer.client.is_none() {
            let got = std::fs::read(&issuer.config.jwks_url).map_err(|e| e.to_string()).and_then(|b| parse_jwks(&b));
            issuer.record(got.map(|k| (k, None)));
        }
        Ok(issuer)
    }

    /// Does `config` fetch its keys where this issuer does?
    pub fn same_source(&self, config: &IssuerConfig) -> bool {
        self.config.issuer == config.issuer && self.config.jwks_url == config.jwks_url && self.config.ca_file == config.ca_file
    }

    pub fn stats(&self) -> FetchStats {
        FetchStats {
            attempts: self.attempts.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            keys: self.keys.load().len(),
        }
    }

    /// Starts the background refresher (needs a runtime). It ends once the
    /// issuer is dropped (a reload builds new ones).
    pub fn spawn_refresh(self: &Arc<Self>) {
        tokio::spawn(refresh_loop(Arc::downgrade(self), self.wake.clone()));
    }

    /// Verifies signature and claims of a token whose `iss` names this issuer.
    pub fn verify(&self, header: &Map<String, Value>, message: &str, signature: &str) -> Result<(), TokenError> {
        let alg_name = header.get("alg").and_then(Value::as_str).ok_or(TokenError::Algorithm)?;
        let alg = self.config.algorithms.iter().copied().find(|a| crate::keys::alg_name(*a) == alg_name).ok_or(TokenError::Algorithm)?;
        let keys = self.keys.load();
        let candidates: Vec<&ExternalKey> = match header.get("kid") {
            None => keys.iter().filter(|k| k.fits(alg)).collect(),
            Some(Value::String(kid)) => {
                let named: Vec<&ExternalKey> = keys.iter().filter(|k| k.kid.as_deref() == Some(kid.as_str())).collect();
                if named.is_empty() {
                    self.unknown_kid();
                    return Err(TokenError::UnknownKey);
                }
                named.into_iter().filter(|k| k.fits(alg)).collect()
            }
            Some(_) => return Err(TokenError::Malformed),
        };
        if candidates.is_empty() {
            return Err(if keys.is_empty() { TokenError::UnknownKey } else { TokenError::Algorithm });
        }
        for k in candidates {
            if let Ok(true) = jsonwebtoken::crypto::verify(signature, message.as_bytes(), &k.key, alg) {
                return Ok(());
            }
        }
        Err(TokenError::Signature)
    }

    fn unknown_kid(&self) {
        // Before the first load the refresher is already retrying on its
        // own schedule; a kick would only make it hammer an IdP that is down.
        if self.keys.load().is_empty() {
            return;
        }
        let mut last = self.last_unknown_kid.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= UNKNOWN_KID_REFETCH) {
            *last = Some(Instant::now());
            self.wake.notify_one();
        }
    }

    /// Keeps a good result, counts a bad one (keeping the last good keys).
    fn record(&self, got: Result<(Loaded, Option<Duration>), String>) -> Option<Duration> {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        match got {
            Ok((Loaded { keys, digest }, max_age)) => {
                tracing::info!(issuer = %self.config.issuer, keys = keys.len(), "JWKS loaded");
                self.keys.store(Arc::new(keys));
                // After the new keys are in place: a request that reads the
                // new generation verifies with them (Release / Acquire).
                let mut last = self.digest.lock().unwrap_or_else(|p| p.into_inner());
                if *last != digest {
                    *last = digest;
                    self.generation.fetch_add(1, Ordering::Release);
                }
                Some(max_age.unwrap_or(DEFAULT_MAX_AGE))
            }
            Err(error) => {
                let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                let kept = self.keys.load().len();
                if kept == 0 {
                    tracing::error!(issuer = %self.config.issuer, jwks = %self.config.jwks_url, %error, "CANNOT LOAD THE JWKS: tokens of this issuer are refused until it loads");
                } else {
                    tracing::warn!(issuer = %self.config.issuer, jwks = %self.config.jwks_url, %error, failures, kept, "JWKS refresh failed; keeping the last good keys");
                }
                None
            }
        }
    }

    async fn fetch(&self) -> Result<(Loaded, Option<Duration>), String> {
        let Some(client) = &self.client else {
            let bytes = tokio::fs::read(&self.config.jwks_url).await.map_err(|e| e.to_string())?;
            return Ok((parse_jwks(&bytes)?, None));
        };
        let uri: http::Uri = self.config.jwks_url.parse().map_err(|e| format!("bad URL: {e}"))?;
        let req = http::Request::get(uri)
            .header(http::header::ACCEPT, "application/json, application/jwk-set+json")
            .header(http::header::USER_AGENT, concat!("authgate/", env!("CARGO_PKG_VERSION")))
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let work = async {
            let resp = client.request(req).await.map_err(|e| format!("{e:#}"))?;
            if !resp.status().is_success() {
                return Err(format!("the server answered {}", resp.status()));
            }
            let max_age = resp.headers().get(http::header::CACHE_CONTROL).and_then(|v| v.to_str().ok()).and_then(max_age);
            let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES).collect().await.map_err(|e| format!("reading the body: {e}"))?;
            Ok((parse_jwks(&body.to_bytes())?, max_age))
        };
        tokio::time::timeout(FETCH_TIMEOUT, work).await.map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))?
    }
}

async fn refresh_loop(issuer: Weak<Issuer>, wake: Arc<tokio::sync::Notify>) {
    let mut failures: u32 = 0;
    loop {
        let Some(i) = issuer.upgrade() else { return };
        let file = i.client.is_none();
        let next = match i.record(i.fetch().await) {
            Some(_) if file => FILE_REFRESH,
            // Fetch again when 80% of the lifetime has passed: before expiry.
            Some(max_age) => {
                failures = 0;
                max_age.clamp(MIN_REFRESH, MAX_REFRESH).mul_f64(0.8)
            }
            None => {
                failures = failures.saturating_add(1);
                // 5 s, 10 s, 20 s ... 5 minutes.
                (Duration::from_secs(5) * 2u32.saturating_pow(failures.saturating_sub(1).min(6))).min(Duration::from_secs(300))
            }
        };
        // A kick that came in while fetching was answered by that fetch.
        // (Drained while `i` is held: the Drop kick cannot be lost here.)
        let _ = futures_util::FutureExt::now_or_never(wake.notified());
        drop(i);
        tokio::select! {
            () = tokio::time::sleep(next) => {}
            () = wake.notified() => {}
        }
    }
}

/// `max-age` of a Cache-Control value (0 for no-store / no-cache).
fn max_age(v: &str) -> Option<Duration> {
    v.split(',').map(str::trim).find_map(|d| {
        if d.eq_ignore_ascii_case("no-store") || d.eq_ignore_ascii_case("no-cache") {
            return Some(Duration::ZERO);
        }
        let (k, n) = d.split_once('=')?;
        k.trim().eq_ignore_ascii_case("max-age").then(|| n.trim().trim_matches('"').parse().ok().map(Duration::from_secs))?
    })
}

fn https_client(config: &IssuerConfig) -> Result<HttpsClient, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match &config.ca_file {
        Some(path) => {
            use rustls_pki_types::{CertificateDer, pem::PemObject};
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            for c in certs {
                let c = c.map_err(|e| format!("ca_file {}: {e}", path.display()))?;
                roots.add(c).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("ca_file {}: no certificate found", path.display()));
            }
            let tls = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder.with_tls_config(tls)
        }
        None => builder.with_provider_and_webpki_roots(provider).map_err(|e| e.to_string())?,
    };
    let https = builder.https_only().enable_http1().enable_http2().build();
    Ok(Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(https))
}

/// The usable signing keys of a JWKS document; others (encryption keys,
/// unknown types, weak RSA) are skipped. A document without one is an error.
/// A JWKS's usable keys, and a digest of their JWKs to tell a change by.
struct Loaded {
    keys: Vec<ExternalKey>,
    digest: [u8; 32],
}

fn parse_jwks(bytes: &[u8]) -> Result<Loaded, String> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS document: {e}"))?;
    let list = doc.get("keys").and_then(Value::as_array).ok_or("not a JWKS document: no \"keys\" array")?;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut keys = Vec::new();
    for jwk in list {
        if let Ok(k) = parse_jwk(jwk) {
            ctx.update(jwk.to_string().as_bytes());
            ctx.update(b"\n");
            keys.push(k);
        }
    }
    if keys.is_empty() {
        return Err(format!("none of its {} keys is a usable signing key", list.len()));
    }
    let mut digest = [0u8; 32];
    digest.copy_from_slice(ctx.finish().as_ref());
    Ok(Loaded { keys, digest })
}

fn parse_jwk(jwk: &Value) -> Result<ExternalKey, &'static str> {
    let field = |name: &str| jwk.get(name).and_then(Value::as_str);
    let bytes = |name: &str| field(name).and_then(|s| B64.decode(s).ok()).ok_or("a key member is missing or not base64url");
    if field("use").is_some_and(|u| u != "sig") {
        return Err("not a signing key");
    }
    // RFC 7517 §4.3: when `key_ops` is given, it must allow "verify".
    if let Some(ops) = jwk.get("key_ops")
        && !ops.as_array().is_some_and(|ops| ops.iter().any(|o| o.as_str() == Some("verify")))
    {
        return Err("its key_ops does not allow verify");
    }
    let (kty, key) = match (field("kty"), field("crv")) {
        (Some("RSA"), _) => {
            let (n, e) = (bytes("n")?, bytes("e")?);
            let n = &n[n.iter().take_while(|b| **b == 0).count()..];
            if n.len() < 256 {
                return Err("RSA keys under 2048 bits are refused");
            }
            (KeyType::Rsa, DecodingKey::from_rsa_raw_components(n, &e))
        }
        (Some("EC"), Some(crv @ ("P-256" | "P-384"))) => {
            let (x, y) = (bytes("x")?, bytes("y")?);
            let len = if crv == "P-256" { 32 } else { 48 };
            if x.len() != len || y.len() != len {
                return Err("bad EC point");
            }
            let point = [&[4u8][..], &x, &y].concat();
            (if crv == "P-256" { KeyType::P256 } else { KeyType::P384 }, DecodingKey::from_ec_der(&point))
        }
        (Some("OKP"), Some("Ed25519")) => {
            let x = bytes("x")?;
            if x.len() != 32 {
                return Err("bad Ed25519 key");
            }
            (KeyType::Ed25519, DecodingKey::from_ed_der(&x))
        }
        _ => return Err("unsupported key type"),
    };
    Ok(ExternalKey { kid: field("kid").map(String::from), alg: field("alg").map(String::from), kty, key })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age() {
        assert_eq!(max_age("public, max-age=300"), Some(Duration::from_secs(300)));
        assert_eq!(max_age("max-age=\"60\", must-revalidate"), Some(Duration::from_secs(60)));
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
    }

    #[test]
    fn jwks_documents() {
        assert!(parse_jwks(b"{}").is_err());
        assert!(parse_jwks(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).is_err(), "symmetric keys are never used");
        let ec = r#"{"keys":[{"kty":"EC","crv":"P-256","use":"enc","x":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","y":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]}"#;
        assert!(parse_jwks(ec.as_bytes()).is_err(), "encryption keys are skipped");
        let ec = ec.replace("\"enc\"", "\"sig\"");
        let keys = parse_jwks(ec.as_bytes()).expect("one EC key").keys;
        assert!(keys[0].fits(Algorithm::ES256));
        assert!(!keys[0].fits(Algorithm::ES384) && !keys[0].fits(Algorithm::RS256) && !keys[0].fits(Algorithm::HS256));
        // RFC 7517 §4.3: key_ops, when given, must allow verify.
        for (ops, usable) in
            [(r#"["verify"]"#, true), (r#"["sign","verify"]"#, true), (r#"["encrypt"]"#, false), ("[]", false), (r#""verify""#, false)]
        {
            let doc = ec.replace("\"use\":\"sig\"", &format!("\"key_ops\":{ops}"));
            assert_eq!(parse_jwks(doc.as_bytes()).is_ok(), usable, "key_ops {ops}");
        }
    }
}
