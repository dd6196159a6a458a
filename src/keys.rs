//! JWT key material: the HMAC secret from the environment, PEM keys from
//! files (generated on first start in dev), their JWKs and RFC 7638 `kid`s.

use std::path::Path;

use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use rustls_pki_types::{PrivateKeyDer, pem::PemObject};
use serde_json::{Value, json};

use crate::config::{Config, ConfigError, JwtConfig, KeySource, key_source};

/// One key that verifies tokens, with its `kid` and public JWK.
pub struct VerifyKey {
    pub kid: String,
    pub key: DecodingKey,
    /// The public JWK (None for HMAC secrets, which are never published).
    pub jwk: Option<Value>,
}

/// The signing key, when this authgate can mint tokens.
pub struct SignKey {
    pub kid: String,
    pub key: EncodingKey,
}

pub struct KeySet {
    pub algorithm: Algorithm,
    /// Current key first, then `previous_keys`.
    pub verify: Vec<VerifyKey>,
    pub sign: Option<SignKey>,
    /// `[[jwt.issuers]]`: identity providers whose tokens verify beside ours.
    pub external: Vec<std::sync::Arc<crate::jwks::Issuer>>,
    /// Moves on whenever an external issuer's key set changes: a verified
    /// token cached before must be verified again (`TokenCache`).
    pub generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl KeySet {
    /// `{"keys": [...]}` for `/.well-known/jwks.json`.
    pub fn jwks(&self) -> Value {
        let keys: Vec<Value> = self.verify.iter().filter_map(|k| k.jwk.clone()).collect();
        json!({ "keys": keys })
    }
}

fn err(config: &Config, key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError { file: config.file.clone(), key: key.into(), message: message.into() }
}

/// Loads (and in dev, generates) the keys the config names, and sets up
/// the external issuers (their JWKS files are read now; URLs are fetched
/// once the gateway runs).
pub fn load(config: &Config) -> Result<KeySet, ConfigError> {
    load_with(config, true, &[])
}

/// `load`; with `generate` false a signing key that would be generated is
/// left out instead (`authgate check` writes nothing). `previous` are the
/// issuers the running gateway has (a reload): one that fetches its keys
/// from the same place starts with the keys it had, so that a reload
/// during an IdP outage, or before the first fetch returns, refuses
/// nothing the running gateway accepts.
pub fn load_with(config: &Config, generate: bool, previous: &[std::sync::Arc<crate::jwks::Issuer>]) -> Result<KeySet, ConfigError> {
    let mut keys = load_own(config, generate)?;
    for (i, iss) in config.jwt.issuers.iter().enumerate() {
        let seed = previous.iter().find(|p| p.same_source(iss));
        let issuer = crate::jwks::Issuer::new(iss.clone(), keys.generation.clone(), seed)
            .map_err(|m| err(config, &format!("jwt.issuers[{i}].ca_file"), m))?;
        keys.external.push(std::sync::Arc::new(issuer));
    }
    Ok(keys)
}

fn load_own(config: &Config, generate: bool) -> Result<KeySet, ConfigError> {
    let jwt = &config.jwt;
    let alg = jwt.algorithm;
    if key_source(alg) == KeySource::Secret {
        let secret = read_secret(config, jwt)?;
        let kid = thumbprint(&json!({ "k": B64.encode(&secret), "kty": "oct" }));
        let key = DecodingKey::from_secret(&secret).map_err(|e| err(config, "jwt.secret_env", e.to_string()))?;
        let sign_key = EncodingKey::from_secret(&secret).map_err(|e| err(config, "jwt.secret_env", e.to_string()))?;
        return Ok(KeySet {
            algorithm: alg,
            verify: vec![VerifyKey { kid: kid.clone(), key, jwk: None }],
            sign: Some(SignKey { kid, key: sign_key }),
            external: Vec::new(),
            generation: Default::default(),
        });
    }

    let mut verify = Vec::new();
    let mut sign = None;
    if let Some(path) = jwt.private_key.as_ref().filter(|p| generate || p.exists() || !jwt.generate_signing_key) {
        if !path.exists() && jwt.generate_signing_key {
            match generate_private_key(alg, path) {
                Ok(()) => {
                    tracing::warn!(path = %path.display(), "generated a new JWT signing key (jwt.generate_signing_key = true); tokens signed by an earlier key no longer verify");
                }
                // Another process (the gateway starting, `authgate token`) made
                // it a moment ago; it appears whole, so read that one.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(err(config, "jwt.private_key", format!("cannot create {}: {e}", path.display()))),
            }
        }
        let pem = std::fs::read(path).map_err(|e| err(config, "jwt.private_key", format!("cannot read {}: {e}", path.display())))?;
        let (vk, sk) = private_key(alg, &pem).map_err(|m| err(config, "jwt.private_key", format!("{}: {m}", path.display())))?;
        verify.push(vk);
        sign = Some(sk);
    }
    if let Some(path) = &jwt.public_key {
        let vk = public_key_file(alg, path).map_err(|m| err(config, "jwt.public_key", m))?;
        if !verify.iter().any(|k| k.kid == vk.kid) {
            verify.push(vk);
        }
    }
    for (i, path) in jwt.previous_keys.iter().enumerate() {
        let vk = public_key_file(alg, path).map_err(|m| err(config, &format!("jwt.previous_keys[{i}]"), m))?;
        if !verify.iter().any(|k| k.kid == vk.kid) {
            verify.push(vk);
        }
    }
    Ok(KeySet { algorithm: alg, verify, sign, external: Vec::new(), generation: Default::default() })
}

fn read_secret(config: &Config, jwt: &JwtConfig) -> Result<Vec<u8>, ConfigError> {
    let (key, secret) = if let Some(var) = &jwt.secret_env {
        let v = std::env::var_os(var).ok_or_else(|| {
            err(
                config,
                "jwt.secret_env",
                format!("the environment variable {var} is not set; export it with a random secret of at least 32 bytes"),
            )
        })?;
        ("jwt.secret_env", v.into_encoded_bytes())
    } else if let Some(path) = &jwt.secret_file {
        let mut v = std::fs::read(path).map_err(|e| err(config, "jwt.secret_file", format!("cannot read {}: {e}", path.display())))?;
        // A mounted secret file usually ends with a newline that is not part of it.
        while v.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            v.pop();
        }
        ("jwt.secret_file", v)
    } else {
        return Err(err(config, "jwt.secret_env", "HMAC needs a secret"));
    };
    if secret.len() < 32 {
        return Err(err(config, key, format!("the secret is {} bytes; HMAC secrets must be at least 32 bytes", secret.len())));
    }
    Ok(secret)
}

/// RFC 7638 JWK thumbprint of the required members, which `jwk` must hold
/// with keys already in lexicographic order (serde_json's map is sorted).
pub fn thumbprint(required: &Value) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, required.to_string().as_bytes());
    B64.encode(digest.as_ref())
}

pub fn alg_name(alg: Algorithm) -> &'static str {
    use Algorithm::*;
    match alg {
        HS256 => "HS256",
        HS384 => "HS384",
        HS512 => "HS512",
        RS256 => "RS256",
        RS384 => "RS384",
        RS512 => "RS512",
        PS256 => "PS256",
        PS384 => "PS384",
        PS512 => "PS512",
        ES256 => "ES256",
        ES384 => "ES384",
        EdDSA => "EdDSA",
        _ => "unsupported",
    }
}

fn jwk_with_kid(alg: Algorithm, required: Value) -> (String, Value) {
    let kid = thumbprint(&required);
    let mut jwk = required;
    if let Value::Object(m) = &mut jwk {
        m.insert("kid".into(), Value::String(kid.clone()));
        m.insert("alg".into(), Value::String(alg_name(alg).into()));
        m.insert("use".into(), Value::String("sig".into()));
    }
    (kid, jwk)
}

fn ec_jwk(alg: Algorithm, point: &[u8]) -> Result<(String, Value), String> {
    let (crv, len) = if alg == Algorithm::ES384 { ("P-384", 48) } else { ("P-256", 32) };
    if point.len() != 1 + 2 * len || point[0] != 4 {
        return Err(format!("the key is not an uncompressed {crv} point"));
    }
    let (x, y) = point[1..].split_at(len);
    Ok(jwk_with_kid(alg, json!({ "crv": crv, "kty": "EC", "x": B64.encode(x), "y": B64.encode(y) })))
}

fn rsa_jwk(alg: Algorithm, n: &[u8], e: &[u8]) -> (String, Value) {
    jwk_with_kid(alg, json!({ "e": B64.encode(e), "kty": "RSA", "n": B64.encode(n) }))
}

fn ed_jwk(alg: Algorithm, x: &[u8]) -> (String, Value) {
    jwk_with_kid(alg, json!({ "crv": "Ed25519", "kty": "OKP", "x": B64.encode(x) }))
}

fn ecdsa_alg(alg: Algorithm) -> &'static signature::EcdsaSigningAlgorithm {
    if alg == Algorithm::ES384 { &signature::ECDSA_P384_SHA384_FIXED_SIGNING } else { &signature::ECDSA_P256_SHA256_FIXED_SIGNING }
}

const PKCS8_HINT: &str = "expected a PKCS#8 \"PRIVATE KEY\" PEM (convert with: openssl pkcs8 -topk8 -nocrypt -in old.pem -out new.pem)";

fn private_key(alg: Algorithm, pem: &[u8]) -> Result<(VerifyKey, SignKey), String> {
    use Algorithm::*;
    let der = PrivateKeyDer::from_pem_slice(pem).map_err(|_| format!("no private key found; {PKCS8_HINT}"))?;
    let (kid, jwk, decoding, encoding) = match (alg, &der) {
        (ES256 | ES384, PrivateKeyDer::Pkcs8(d)) => {
            let kp = EcdsaKeyPair::from_pkcs8(ecdsa_alg(alg), d.secret_pkcs8_der())
                .map_err(|e| format!("not a {} key for {}: {e}", if alg == ES384 { "P-384" } else { "P-256" }, alg_name(alg)))?;
            let point = kp.public_key().as_ref();
            let (kid, jwk) = ec_jwk(alg, point)?;
            (kid, jwk, DecodingKey::from_ec_der(point), EncodingKey::from_ec_der(d.secret_pkcs8_der()))
        }
        (EdDSA, PrivateKeyDer::Pkcs8(d)) => {
            let kp = Ed25519KeyPair::from_pkcs8_maybe_unchecked(d.secret_pkcs8_der()).map_err(|e| format!("not an Ed25519 key: {e}"))?;
            let x = kp.public_key().as_ref();
            let (kid, jwk) = ed_jwk(alg, x);
            (kid, jwk, DecodingKey::from_ed_der(x), EncodingKey::from_ed_der(d.secret_pkcs8_der()))
        }
        (RS256 | RS384 | RS512 | PS256 | PS384 | PS512, PrivateKeyDer::Pkcs8(_) | PrivateKeyDer::Pkcs1(_)) => {
            let kp = match &der {
                PrivateKeyDer::Pkcs8(d) => signature::RsaKeyPair::from_pkcs8(d.secret_pkcs8_der()),
                PrivateKeyDer::Pkcs1(d) => signature::RsaKeyPair::from_der(d.secret_pkcs1_der()),
                _ => unreachable!("matched above"),
            }
            .map_err(|e| format!("not an RSA key: {e}"))?;
            if kp.public_modulus_len() < 256 {
                return Err("RSA keys must be at least 2048 bits".into());
            }
            let public = kp.public_key();
            let n = public.modulus().big_endian_without_leading_zero().to_vec();
            let e = public.exponent().big_endian_without_leading_zero().to_vec();
            let (kid, jwk) = rsa_jwk(alg, &n, &e);
            let encoding = EncodingKey::from_rsa_pem(pem).map_err(|e| format!("cannot use the RSA key: {e}"))?;
            (kid, jwk, DecodingKey::from_rsa_raw_components(&n, &e), encoding)
        }
        _ => return Err(format!("the key does not fit {}; {PKCS8_HINT}", alg_name(alg))),
    };
    Ok((VerifyKey { kid: kid.clone(), key: decoding, jwk: Some(jwk) }, SignKey { kid, key: encoding }))
}

fn public_key_file(alg: Algorithm, path: &Path) -> Result<VerifyKey, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    public_key(alg, &pem).map_err(|m| format!("{}: {m}", path.display()))
}

/// A verify-only key from a PEM public key (or, for convenience, a private one).
pub fn public_key(alg: Algorithm, pem: &[u8]) -> Result<VerifyKey, String> {
    use Algorithm::*;
    if PrivateKeyDer::from_pem_slice(pem).is_ok() {
        return private_key(alg, pem).map(|(v, _)| v);
    }
    let bad = |e: jsonwebtoken::errors::Error| format!("not a PEM public key for {}: {e}", alg_name(alg));
    let (key, (kid, jwk)) = match alg {
        ES256 | ES384 => {
            let key = DecodingKey::from_ec_pem(pem).map_err(bad)?;
            let jwk = ec_jwk(alg, key_bytes(&key)?)?;
            (key, jwk)
        }
        EdDSA => {
            let key = DecodingKey::from_ed_pem(pem).map_err(bad)?;
            let x = key_bytes(&key)?;
            if x.len() != 32 {
                return Err("not an Ed25519 public key".into());
            }
            let jwk = ed_jwk(alg, x);
            (key, jwk)
        }
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => {
            let key = DecodingKey::from_rsa_pem(pem).map_err(bad)?;
            let public = aws_lc_rs::rsa::PublicKey::from_der(key_bytes(&key)?).map_err(|e| format!("not an RSA public key: {e}"))?;
            let n = public.modulus().big_endian_without_leading_zero().to_vec();
            let e = public.exponent().big_endian_without_leading_zero().to_vec();
            (key, rsa_jwk(alg, &n, &e))
        }
        _ => return Err("HMAC has no public key".into()),
    };
    Ok(VerifyKey { kid, key, jwk: Some(jwk) })
}

fn key_bytes(key: &DecodingKey) -> Result<&[u8], String> {
    match key.kind() {
        jsonwebtoken::DecodingKeyKind::SecretOrDer(b) => Ok(b),
        jsonwebtoken::DecodingKeyKind::RsaModulusExponent { .. } => Err("unexpected key encoding".into()),
    }
}

/// Writes a new PKCS#8 private key for `alg` (mode 0600), creating the folder.
pub fn generate_private_key(alg: Algorithm, path: &Path) -> std::io::Result<()> {
    use Algorithm::*;
    let der: Vec<u8> = match alg {
        ES256 | ES384 => {
            EcdsaKeyPair::generate(ecdsa_alg(alg)).and_then(|k| k.to_pkcs8v1()).map_err(std::io::Error::other)?.as_ref().to_vec()
        }
        EdDSA => Ed25519KeyPair::generate().and_then(|k| k.to_pkcs8v1()).map_err(std::io::Error::other)?.as_ref().to_vec(),
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => {
            use aws_lc_rs::encoding::AsDer;
            let kp = signature::RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).map_err(std::io::Error::other)?;
            let der: aws_lc_rs::encoding::Pkcs8V1Der = kp.as_der().map_err(std::io::Error::other)?;
            der.as_ref().to_vec()
        }
        _ => return Err(std::io::Error::other("HMAC keys are secrets from the environment, not generated files")),
    };
    write_private_pem(path, &pem_encode("PRIVATE KEY", &der))
}

pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Writes a secret file readable by its owner only, never over an existing
/// file (`AlreadyExists` then). The file appears whole or not at all: it is
/// written under a temporary name and linked into place, so a second process
/// starting at the same moment reads either no file or the complete key.
pub fn write_private_pem(path: &Path, pem: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let name = path.file_name().ok_or_else(|| std::io::Error::other("not a file path"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let written = opts.open(&tmp).and_then(|mut f| f.write_all(pem.as_bytes()).and_then(|()| f.sync_all()));
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        // A filesystem without hard links: write in place, still never over a file.
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists && !path.exists() => {
            let mut f = opts.open(path)?;
            f.write_all(pem.as_bytes())
        }
        other => other,
    }
}
