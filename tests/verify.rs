//! Token verification through the real gateway: every algorithm from PEM
//! keys (and HS* from the env var `jwt.secret_env` names), and the attacks
//! of RFC 8725: `alg: none`, algorithm confusion, foreign keys, tampering,
//! header-supplied keys, `crit`, expiry and `nbf` with leeway, `iss`, `aud`,
//! oversize tokens, CR/LF claims, duplicate keys, extra segments.
//!
//! Every refusal asserts the SPEC §4 status, body and `WWW-Authenticate`
//! value, and that the upstream was never reached.

mod common;

use std::path::Path;

use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

fn now() -> u64 {
    authgate::jwt::now_secs()
}

fn routes(up: &Upstream) -> String {
    format!("[[routes]]\npath = \"/\"\nupstream = \"{}\"\n", up.url())
}

fn claims(sub: &str) -> Value {
    json!({ "sub": sub, "iss": "authgate", "aud": "api", "iat": now(), "exp": now() + 600 })
}

fn enc(v: &Value) -> String {
    B64.encode(v.to_string())
}

/// Signs the exact `header.payload` text given (so tests control the JSON bytes).
fn sign_raw(header: &str, payload: &str, key: &EncodingKey, alg: Algorithm) -> String {
    let msg = format!("{}.{}", B64.encode(header), B64.encode(payload));
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), key, alg).expect("sign");
    format!("{msg}.{sig}")
}

fn sign(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    sign_raw(&header.to_string(), &claims.to_string(), key, alg)
}

fn encoding_key(alg: Algorithm, pem: &[u8]) -> EncodingKey {
    use Algorithm::*;
    match alg {
        ES256 | ES384 => EncodingKey::from_ec_pem(pem),
        EdDSA => EncodingKey::from_ed_pem(pem),
        _ => EncodingKey::from_rsa_pem(pem),
    }
    .expect("encoding key")
}

/// The gateway's own ES256 signing key, read from its PEM file.
fn gateway_key(gw: &Gateway) -> EncodingKey {
    encoding_key(Algorithm::ES256, &std::fs::read(gw.dir.path().join("jwt.pem")).expect("jwt.pem"))
}

/// A fresh key an attacker holds.
fn attacker_key(alg: Algorithm, dir: &Path) -> (EncodingKey, Vec<u8>) {
    let path = dir.join(format!("attacker-{alg:?}-{}.pem", authgate::jwt::random_id(6)));
    authgate::keys::generate_private_key(alg, &path).expect("generate");
    let pem = std::fs::read(&path).expect("read");
    (encoding_key(alg, &pem), pem)
}

async fn get(gw: &Gateway, token: &str) -> reqwest::Response {
    gw.client.get(gw.url("/x")).header("authorization", format!("Bearer {token}")).send().await.expect("send")
}

async fn assert_passes(gw: &Gateway, up: &Upstream, token: &str, sub: &str) {
    let before = up.hits();
    let r = get(gw, token).await;
    let status = r.status();
    assert_eq!(status, 200, "refused: {}", r.text().await.unwrap_or_default());
    assert_eq!(up.hits(), before + 1);
    assert_eq!(up.last().headers["x-auth-subject"], sub);
}

/// 401 `invalid_token` with the RFC 6750 header and the same description in
/// the body (when `desc` is given, exactly that one); the upstream untouched.
async fn assert_refused(gw: &Gateway, up: &Upstream, token: &str, desc: Option<&str>) {
    let before = up.hits();
    let r = get(gw, token).await;
    assert_eq!(r.status(), 401, "token: {token}");
    let www = r.headers()["www-authenticate"].to_str().expect("ascii").to_string();
    let body = json(r).await;
    assert_eq!(body["error"], "invalid_token", "{body}");
    let d = body["error_description"].as_str().expect("error_description");
    assert_eq!(www, format!("Bearer error=\"invalid_token\", error_description=\"{d}\""));
    if let Some(desc) = desc {
        assert_eq!(d, desc, "token: {token}");
    }
    assert_eq!(up.hits(), before, "the upstream was reached with a bad token");
}

const SIGNATURE: Option<&str> = Some("the token's signature is invalid");
const ALGORITHM: Option<&str> = Some("the token's algorithm is not accepted");
const MALFORMED: Option<&str> = Some("the token is malformed");

// ------------------------------------------------------------- algorithms

async fn algorithm_works(alg: Algorithm, name: &str) {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key_path = dir.path().join("signing.pem");
    authgate::keys::generate_private_key(alg, &key_path).expect("generate key");
    let pem = std::fs::read(&key_path).expect("read key");
    let extra = format!(
        "[jwt]\nalgorithm = \"{name}\"\nprivate_key = \"{}\"\nissuer = \"authgate\"\naudience = \"api\"\nleeway = \"5s\"\n",
        key_path.display()
    );
    let text = config_text(dir.path(), &extra, &routes(&up));
    let gw = Gateway::start_in(dir, &text).await;

    // Signed independently of authgate, with the PEM key the config names.
    let key = encoding_key(alg, &pem);
    let token = sign(&json!({ "alg": name, "typ": "JWT" }), &claims("alice"), &key, alg);
    assert_passes(&gw, &up, &token, "alice").await;
    // authgate's own minting agrees.
    assert_passes(&gw, &up, &gw.token("bob", json!({})), "bob").await;
    // The same algorithm with another key is refused.
    let (other, _) = attacker_key(alg, gw.dir.path());
    let forged = sign(&json!({ "alg": name }), &claims("mallory"), &other, alg);
    assert_refused(&gw, &up, &forged, SIGNATURE).await;
    // The JWKS publishes it.
    let jwks = json(gw.client.get(gw.url("/.well-known/jwks.json")).send().await.expect("jwks")).await;
    assert_eq!(jwks["keys"][0]["alg"], name, "{jwks}");
    gw.stop().await;
}

macro_rules! asymmetric {
    ($($test:ident: $alg:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $test() {
            algorithm_works(Algorithm::$alg, stringify!($alg)).await;
        }
    )*};
}

asymmetric! {
    rs256_from_pem: RS256, rs384_from_pem: RS384, rs512_from_pem: RS512,
    ps256_from_pem: PS256, ps384_from_pem: PS384, ps512_from_pem: PS512,
    es256_from_pem: ES256, es384_from_pem: ES384, eddsa_from_pem: EdDSA,
}

/// HS* through the real binary: the secret is only in the env var that
/// `jwt.secret_env` names (tests cannot set env vars in-process).
async fn hmac_works(alg: Algorithm, name: &str) {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let var = format!("AUTHGATE_TEST_VERIFY_{name}_SECRET");
    let secret = format!("{name} secret for the verify tests, long enough");
    let extra = format!("[jwt]\nalgorithm = \"{name}\"\nsecret_env = \"{var}\"\nissuer = \"authgate\"\naudience = \"api\"\n");
    let text = config_text(dir.path(), &extra, &routes(&up));
    let spawned = spawn_binary(dir, &text, &[(&var, &secret)]);
    let gw = &spawned.gw;

    let key = EncodingKey::from_secret(secret.as_bytes()).expect("key");
    assert_passes(gw, &up, &sign(&json!({ "alg": name, "typ": "JWT" }), &claims("alice"), &key, alg), "alice").await;
    let wrong = EncodingKey::from_secret(b"another secret of at least thirty-two bytes").expect("key");
    assert_refused(gw, &up, &sign(&json!({ "alg": name }), &claims("mallory"), &wrong, alg), SIGNATURE).await;
    // Another HMAC strength with the right secret is still another algorithm.
    let other_alg = if alg == Algorithm::HS256 { Algorithm::HS512 } else { Algorithm::HS256 };
    let other_name = if alg == Algorithm::HS256 { "HS512" } else { "HS256" };
    assert_refused(gw, &up, &sign(&json!({ "alg": other_name }), &claims("mallory"), &key, other_alg), ALGORITHM).await;
    // The secret is never published.
    let r = gw.client.get(gw.url("/.well-known/jwks.json")).send().await.expect("jwks");
    assert_ne!(r.status(), 200);
}

#[tokio::test]
async fn hs256_from_secret_env() {
    hmac_works(Algorithm::HS256, "HS256").await;
}

#[tokio::test]
async fn hs384_from_secret_env() {
    hmac_works(Algorithm::HS384, "HS384").await;
}

#[tokio::test]
async fn hs512_from_secret_env() {
    hmac_works(Algorithm::HS512, "HS512").await;
}

// ------------------------------------------------------------- attacks

async fn es256() -> (Gateway, Upstream) {
    let up = Upstream::start().await;
    let gw = Gateway::start("", &routes(&up)).await;
    (gw, up)
}

#[tokio::test]
async fn alg_none_in_any_spelling_is_refused() {
    let (gw, up) = es256().await;
    let payload = enc(&claims("admin"));
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = enc(&json!({ "alg": alg, "typ": "JWT" }));
        assert_refused(&gw, &up, &format!("{header}.{payload}."), None).await;
        assert_refused(&gw, &up, &format!("{header}.{payload}.AAAA"), ALGORITHM).await;
        // Even with a valid ES256 signature over the same bytes.
        let msg = format!("{header}.{payload}");
        let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &gateway_key(&gw), Algorithm::ES256).expect("sign");
        assert_refused(&gw, &up, &format!("{msg}.{sig}"), ALGORITHM).await;
    }
    // No alg at all.
    assert_refused(&gw, &up, &format!("{}.{payload}.AAAA", enc(&json!({ "typ": "JWT" }))), ALGORITHM).await;
    gw.stop().await;
}

/// HS256 keyed with the server's public key (PEM, DER, raw, JWKS text):
/// the classic confusion where a verifier trusts the token's `alg`.
async fn hs256_with_public_key_is_refused(gw: &Gateway, up: &Upstream, public_variants: Vec<Vec<u8>>) {
    let jwks = gw.client.get(gw.url("/.well-known/jwks.json")).send().await.expect("jwks").bytes().await.expect("body");
    let mut variants = public_variants;
    variants.push(jwks.to_vec());
    let kid = json(gw.client.get(gw.url("/.well-known/jwks.json")).send().await.expect("jwks")).await["keys"][0]["kid"].clone();
    for bytes in variants {
        let key = EncodingKey::from_secret(&bytes).expect("key");
        for header in [json!({ "alg": "HS256" }), json!({ "alg": "HS256", "kid": kid })] {
            assert_refused(gw, up, &sign(&header, &claims("admin"), &key, Algorithm::HS256), ALGORITHM).await;
        }
    }
}

#[tokio::test]
async fn alg_confusion_hs256_with_the_es256_public_key_is_refused() {
    use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
    let (gw, up) = es256().await;
    let pem = std::fs::read(gw.dir.path().join("jwt.pem")).expect("pem");
    let der = rustls_pki_types::PrivateKeyDer::from_pem_slice_compat(&pem);
    let kp = EcdsaKeyPair::from_pkcs8(&aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING, &der).expect("pkcs8");
    let spki: PublicKeyX509Der = kp.public_key().as_der().expect("der");
    let spki_pem = authgate::keys::pem_encode("PUBLIC KEY", spki.as_ref());
    hs256_with_public_key_is_refused(&gw, &up, vec![spki_pem.into_bytes(), spki.as_ref().to_vec(), kp.public_key().as_ref().to_vec()])
        .await;
    gw.stop().await;
}

#[tokio::test]
async fn alg_confusion_hs256_with_the_rs256_public_key_is_refused() {
    use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key_path = dir.path().join("rsa.pem");
    authgate::keys::generate_private_key(Algorithm::RS256, &key_path).expect("key");
    let extra =
        format!("[jwt]\nalgorithm = \"RS256\"\nprivate_key = \"{}\"\nissuer = \"authgate\"\naudience = \"api\"\n", key_path.display());
    let text = config_text(dir.path(), &extra, &routes(&up));
    let gw = Gateway::start_in(dir, &text).await;
    let der = rustls_pki_types::PrivateKeyDer::from_pem_slice_compat(&std::fs::read(&key_path).expect("pem"));
    let kp = aws_lc_rs::signature::RsaKeyPair::from_pkcs8(&der).expect("pkcs8");
    let spki: PublicKeyX509Der = kp.public_key().as_der().expect("der");
    let spki_pem = authgate::keys::pem_encode("PUBLIC KEY", spki.as_ref());
    hs256_with_public_key_is_refused(&gw, &up, vec![spki_pem.into_bytes(), spki.as_ref().to_vec()]).await;
    gw.stop().await;
}

/// PKCS#8 DER from a PEM, for aws-lc-rs.
trait Pkcs8Compat {
    fn from_pem_slice_compat(pem: &[u8]) -> Vec<u8>;
}

impl Pkcs8Compat for rustls_pki_types::PrivateKeyDer<'_> {
    fn from_pem_slice_compat(pem: &[u8]) -> Vec<u8> {
        use rustls_pki_types::pem::PemObject;
        match rustls_pki_types::PrivateKeyDer::from_pem_slice(pem).expect("pem") {
            rustls_pki_types::PrivateKeyDer::Pkcs8(d) => d.secret_pkcs8_der().to_vec(),
            _ => panic!("not PKCS#8"),
        }
    }
}

#[tokio::test]
async fn token_signed_by_another_es256_key_is_refused() {
    let (gw, up) = es256().await;
    let (other, _) = attacker_key(Algorithm::ES256, gw.dir.path());
    let real = gw.token("alice", json!({}));
    let header: Value = serde_json::from_slice(&B64.decode(real.split('.').next().expect("header")).expect("b64")).expect("json");
    let kid = header["kid"].clone();
    assert!(kid.is_string(), "authgate's tokens carry a kid: {header}");
    // With the real key's kid, and with none.
    assert_refused(&gw, &up, &sign(&json!({ "alg": "ES256", "kid": kid }), &claims("admin"), &other, Algorithm::ES256), SIGNATURE).await;
    assert_refused(&gw, &up, &sign(&json!({ "alg": "ES256" }), &claims("admin"), &other, Algorithm::ES256), SIGNATURE).await;
    // A kid nobody knows.
    let unknown = sign(&json!({ "alg": "ES256", "kid": "attacker" }), &claims("admin"), &other, Algorithm::ES256);
    assert_refused(&gw, &up, &unknown, SIGNATURE).await;
    gw.stop().await;
}

#[tokio::test]
async fn tampered_payload_is_refused() {
    let (gw, up) = es256().await;
    let token = gw.token("alice", json!({ "roles": ["user"] }));
    let parts: Vec<&str> = token.split('.').collect();
    let mut payload: Value = serde_json::from_slice(&B64.decode(parts[1]).expect("b64")).expect("json");
    payload["sub"] = json!("admin");
    let tampered = format!("{}.{}.{}", parts[0], enc(&payload), parts[2]);
    assert_refused(&gw, &up, &tampered, SIGNATURE).await;
    // A flipped signature bit too.
    let mut sig = B64.decode(parts[2]).expect("b64");
    sig[10] ^= 1;
    assert_refused(&gw, &up, &format!("{}.{}.{}", parts[0], parts[1], B64.encode(sig)), SIGNATURE).await;
    gw.stop().await;
}

#[tokio::test]
async fn expiry_and_not_before_honour_the_leeway() {
    // The harness sets leeway = "5s".
    let (gw, up) = es256().await;
    let key = gateway_key(&gw);
    let h = json!({ "alg": "ES256" });
    let with = |patch: Value| {
        let mut c = claims("alice");
        for (k, v) in patch.as_object().expect("object") {
            c[k] = v.clone();
        }
        sign(&h, &c, &key, Algorithm::ES256)
    };
    assert_refused(&gw, &up, &with(json!({ "exp": now() - 60 })), Some("the token has expired")).await;
    assert_refused(&gw, &up, &with(json!({ "nbf": now() + 3600 })), Some("the token is not valid yet")).await;
    // RFC 7519 4.1.4: refused on or after exp (+ leeway), not a second later.
    assert_refused(&gw, &up, &with(json!({ "exp": now() - 5 })), Some("the token has expired")).await;
    assert_passes(&gw, &up, &with(json!({ "exp": now() - 2 })), "alice").await;
    assert_passes(&gw, &up, &with(json!({ "nbf": now() + 2 })), "alice").await;
    // Issued an hour from now: it would outlive a revoke-all cut-off made
    // before then. Within the leeway it passes.
    assert_refused(&gw, &up, &with(json!({ "iat": now() + 3600 })), Some("the token is not valid yet")).await;
    assert_passes(&gw, &up, &with(json!({ "iat": now() + 3 })), "alice").await;
    gw.stop().await;
}

#[tokio::test]
async fn missing_exp_is_refused() {
    let (gw, up) = es256().await;
    let mut c = claims("alice");
    c.as_object_mut().expect("object").remove("exp");
    let token = sign(&json!({ "alg": "ES256" }), &c, &gateway_key(&gw), Algorithm::ES256);
    assert_refused(&gw, &up, &token, Some("the token lacks a required claim")).await;
    gw.stop().await;
}

#[tokio::test]
async fn issuer_and_audience_are_checked() {
    let (gw, up) = es256().await;
    let key = gateway_key(&gw);
    let h = json!({ "alg": "ES256" });
    let mut c = claims("alice");
    c["iss"] = json!("https://evil.example");
    assert_refused(&gw, &up, &sign(&h, &c, &key, Algorithm::ES256), Some("the token's issuer is not accepted")).await;
    let mut c = claims("alice");
    c["aud"] = json!("billing");
    assert_refused(&gw, &up, &sign(&h, &c, &key, Algorithm::ES256), Some("the token's audience is not accepted")).await;
    let mut c = claims("alice");
    c["aud"] = json!(["billing", "other"]);
    assert_refused(&gw, &up, &sign(&h, &c, &key, Algorithm::ES256), Some("the token's audience is not accepted")).await;
    let mut c = claims("alice");
    c["aud"] = json!(["billing", "api"]);
    assert_passes(&gw, &up, &sign(&h, &c, &key, Algorithm::ES256), "alice").await;
    gw.stop().await;
}

#[tokio::test]
async fn header_supplied_keys_are_ignored() {
    let (gw, up) = es256().await;
    let (attacker, attacker_pem) = attacker_key(Algorithm::ES256, gw.dir.path());
    let der = rustls_pki_types::PrivateKeyDer::from_pem_slice_compat(&attacker_pem);
    let kp = EcdsaKeyPair::from_pkcs8(&aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING, &der).expect("pkcs8");
    let point = kp.public_key().as_ref();
    let jwk = json!({ "kty": "EC", "crv": "P-256", "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..]) });
    let headers = [
        json!({ "alg": "ES256", "jwk": jwk }),
        json!({ "alg": "ES256", "jku": "https://attacker.example/jwks.json" }),
        json!({ "alg": "ES256", "x5u": "https://attacker.example/cert.pem" }),
        json!({ "alg": "ES256", "jwk": jwk, "jku": "https://attacker.example/jwks.json", "x5u": "https://attacker.example/c.pem" }),
    ];
    for h in &headers {
        // Signed by the attacker's key that the header points to: refused.
        assert_refused(&gw, &up, &sign(h, &claims("admin"), &attacker, Algorithm::ES256), SIGNATURE).await;
    }
    for h in &headers {
        // Signed by the configured key: the extra header fields change nothing.
        assert_passes(&gw, &up, &sign(h, &claims("alice"), &gateway_key(&gw), Algorithm::ES256), "alice").await;
    }
    gw.stop().await;
}

#[tokio::test]
async fn crit_header_is_refused() {
    let (gw, up) = es256().await;
    let h = json!({ "alg": "ES256", "crit": ["exp"] });
    let token = sign(&h, &claims("alice"), &gateway_key(&gw), Algorithm::ES256);
    assert_refused(&gw, &up, &token, Some("the token has an unsupported critical header")).await;
    gw.stop().await;
}

#[tokio::test]
async fn a_100kb_token_is_refused() {
    let (gw, up) = es256().await;
    let mut c = claims("alice");
    c["pad"] = json!("x".repeat(100 * 1024));
    let token = sign(&json!({ "alg": "ES256" }), &c, &gateway_key(&gw), Algorithm::ES256);
    // Over HTTP/2 (the default client) and HTTP/1.1 (raw bytes).
    let r = get(&gw, &token).await;
    assert!([401, 431].contains(&r.status().as_u16()), "status {}", r.status());
    let raw = format!("GET /x HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    let resp = raw_request(&gw, raw.as_bytes(), std::time::Duration::from_secs(10)).await;
    assert!([401, 431].contains(&status_of(&resp)), "{}", resp.lines().next().unwrap_or(""));
    assert_eq!(up.hits(), 0);
    // Under the header limits but over the token limit: 401.
    let mut c = claims("alice");
    c["pad"] = json!("x".repeat(9 * 1024));
    assert_refused(&gw, &up, &sign(&json!({ "alg": "ES256" }), &c, &gateway_key(&gw), Algorithm::ES256), MALFORMED).await;
    gw.stop().await;
}

#[tokio::test]
async fn crlf_in_a_forwarded_claim_is_refused() {
    let (gw, up) = es256().await;
    let key = gateway_key(&gw);
    let h = json!({ "alg": "ES256" });
    let bad = Some("a claim of the token cannot be forwarded as a header");
    let mut c = claims("alice");
    c["email"] = json!("a@example.com\r\nX-Auth-Subject: root");
    assert_refused(&gw, &up, &sign(&h, &c, &key, Algorithm::ES256), bad).await;
    let mut c = claims("alice");
    c["roles"] = json!(["user", "admin\nX-Evil: 1"]);
    assert_refused(&gw, &up, &sign(&h, &c, &key, Algorithm::ES256), bad).await;
    assert_refused(&gw, &up, &sign(&h, &claims("alice\r\nX-Auth-Roles: admin"), &key, Algorithm::ES256), bad).await;
    // Also through the gateway's own signer.
    assert_refused(&gw, &up, &gw.token("bob", json!({ "email": "b@x\u{0}" })), bad).await;
    gw.stop().await;
}

#[tokio::test]
async fn duplicate_json_keys_are_refused() {
    let (gw, up) = es256().await;
    let key = gateway_key(&gw);
    let exp = now() + 600;
    let payload = format!(r#"{{"sub":"alice","iss":"authgate","aud":"api","exp":{exp},"sub":"admin"}}"#);
    assert_refused(&gw, &up, &sign_raw(r#"{"alg":"ES256"}"#, &payload, &key, Algorithm::ES256), MALFORMED).await;
    let payload = format!(r#"{{"sub":"alice","iss":"authgate","aud":"api","exp":{exp}}}"#);
    assert_refused(&gw, &up, &sign_raw(r#"{"alg":"ES256","alg":"none"}"#, &payload, &key, Algorithm::ES256), MALFORMED).await;
    // The same bytes without the duplicate pass: the refusal is about the duplicate.
    assert_passes(&gw, &up, &sign_raw(r#"{"alg":"ES256"}"#, &payload, &key, Algorithm::ES256), "alice").await;
    gw.stop().await;
}

#[tokio::test]
async fn trailing_dot_and_extra_segments_are_refused() {
    let (gw, up) = es256().await;
    let token = gw.token("alice", json!({}));
    for bad in [format!("{token}."), format!("{token}.x"), format!("{token}.{token}"), token.replacen('.', "", 1), format!(".{token}")] {
        assert_refused(&gw, &up, &bad, MALFORMED).await;
    }
    assert_passes(&gw, &up, &token, "alice").await;
    gw.stop().await;
}

#[tokio::test]
async fn error_answers_match_the_spec() {
    let up = Upstream::start().await;
    let routes = format!(
        "[[routes]]\npath = \"/\"\nupstream = \"{0}\"\n\n[[routes]]\npath = \"/admin\"\nupstream = \"{0}\"\nroles = [\"admin\"]\n",
        up.url()
    );
    let gw = Gateway::start("", &routes).await;
    // No token.
    let r = gw.client.get(gw.url("/x")).send().await.expect("send");
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"authgate\"");
    assert_eq!(r.headers()["content-type"], "application/json");
    let body = json(r).await;
    assert_eq!(body["error"], "unauthorized");
    assert!(body["error_description"].as_str().is_some_and(|d| !d.is_empty()), "{body}");
    // Another scheme is no token.
    let r = gw.client.get(gw.url("/x")).header("authorization", "Basic YWxpY2U6cHc=").send().await.expect("send");
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"authgate\"");
    // A bad token.
    assert_refused(&gw, &up, "not-a-jwt", MALFORMED).await;
    // Missing role.
    let r = gw.client.get(gw.url("/admin")).bearer_auth(gw.token("alice", json!({ "roles": ["user"] }))).send().await.expect("send");
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["www-authenticate"], "Bearer error=\"insufficient_scope\"");
    let body = json(r).await;
    assert_eq!(body["error"], "insufficient_scope");
    assert_eq!(up.hits(), 0);
    gw.stop().await;
}

/// Regression: a verify-only deployment (`jwt.public_key`) verifies tokens
/// minted by another issuer, whose `kid` is that issuer's own name for the
/// key, not authgate's RFC 7638 thumbprint. The kid is only a hint: such
/// tokens were refused as "key unknown" although the configured key
/// verifies them.
#[tokio::test]
async fn verify_only_public_key_accepts_the_issuers_own_kid() {
    use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // The identity provider's key pair; authgate only gets the public half.
    let (idp_key, idp_pem) = attacker_key(Algorithm::ES256, dir.path());
    let der = rustls_pki_types::PrivateKeyDer::from_pem_slice_compat(&idp_pem);
    let kp = EcdsaKeyPair::from_pkcs8(&aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING, &der).expect("pkcs8");
    let spki: PublicKeyX509Der = kp.public_key().as_der().expect("der");
    let public = dir.path().join("idp.pub.pem");
    std::fs::write(&public, authgate::keys::pem_encode("PUBLIC KEY", spki.as_ref())).expect("write");
    let extra = format!("[jwt]\nalgorithm = \"ES256\"\npublic_key = \"{}\"\nissuer = \"authgate\"\naudience = \"api\"\n", public.display());
    let text = config_text(dir.path(), &extra, &routes(&up));
    let gw = Gateway::start_in(dir, &text).await;
    for kid in [json!("idp-2024-rotation-1"), json!("authgate")] {
        let token = sign(&json!({ "alg": "ES256", "typ": "JWT", "kid": kid }), &claims("alice"), &idp_key, Algorithm::ES256);
        assert_passes(&gw, &up, &token, "alice").await;
    }
    // The hint never widens what verifies: another key with that kid is refused.
    let (other, _) = attacker_key(Algorithm::ES256, gw.dir.path());
    let forged = sign(&json!({ "alg": "ES256", "kid": "idp-2024-rotation-1" }), &claims("mallory"), &other, Algorithm::ES256);
    assert_refused(&gw, &up, &forged, SIGNATURE).await;
    gw.stop().await;
}
