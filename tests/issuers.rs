//! External issuers (`[[jwt.issuers]]`): IdP tokens verify beside
//! authgate's own, with the IdP's keys (JWKS over HTTPS from a local test
//! server, or from a file), algorithms and audience; the JWKS cache is
//! refetched on an unknown kid at most once per 30 s and survives an IdP outage.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::idp::{IdpKey, JwksServer, idp_claims, jwks};
use common::*;
use jsonwebtoken::Algorithm;
use serde_json::json;

const ISS: &str = "https://idp.example.test/realms/main";
const ROUTES: &str = "[[routes]]\npath = \"/\"\nupstream = \"echo\"\n";

fn issuer_toml(jwks_url: &str, ca: Option<&std::path::Path>) -> String {
    let ca = ca.map(|p| format!("ca_file = \"{}\"\n", p.display())).unwrap_or_default();
    format!("[[jwt.issuers]]\nissuer = \"{ISS}\"\naudience = \"api\"\njwks_url = \"{jwks_url}\"\nalgorithms = [\"RS256\", \"ES256\"]\n{ca}")
}

async fn status(gw: &Gateway, token: &str) -> u16 {
    gw.client.get(gw.url("/api")).bearer_auth(token).send().await.expect("send").status().as_u16()
}

async fn refused(gw: &Gateway, token: &str, description: &str, what: &str) {
    let r = gw.client.get(gw.url("/api")).bearer_auth(token).send().await.expect("send");
    assert_eq!(r.status(), 401, "{what}");
    let body = json(r).await;
    assert_eq!(body["error_description"], description, "{what}: {body}");
}

async fn eventually<F: AsyncFnMut() -> bool>(limit: Duration, what: &str, mut f: F) {
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An IdP publishing `keys` (max-age one hour) and a gateway trusting it,
/// returned once `token` verifies (the JWKS has been fetched).
async fn with_idp(keys: &[&IdpKey], token: &str) -> (JwksServer, Gateway) {
    let idp = JwksServer::start(jwks(keys), "max-age=3600").await;
    let gw = Gateway::start(&issuer_toml(&idp.url(), Some(&idp.ca)), ROUTES).await;
    eventually(Duration::from_secs(10), "the JWKS is fetched at start", async || status(&gw, token).await == 200).await;
    (idp, gw)
}

#[tokio::test]
async fn idp_tokens_verify_beside_our_own_and_every_check_applies() {
    let (rsa, ec) = (IdpKey::generate(Algorithm::RS256, "rsa-1"), IdpKey::generate(Algorithm::ES256, "ec-1"));
    let idp = JwksServer::start(jwks(&[&rsa, &ec]), "public, max-age=600").await;
    let gw = Gateway::start(&issuer_toml(&idp.url(), Some(&idp.ca)), ROUTES).await;
    let good = rsa.sign(&idp_claims(ISS, "api", "idp-user"));
    eventually(Duration::from_secs(10), "the JWKS is fetched at start", async || status(&gw, &good).await == 200).await;

    let r = gw.client.get(gw.url("/api")).bearer_auth(&good).send().await.expect("send");
    assert_eq!(json(r).await["headers"]["x-auth-subject"], "idp-user");
    assert_eq!(status(&gw, &ec.sign(&idp_claims(ISS, "api", "ec-user"))).await, 200, "ES256 from the IdP");
    assert_eq!(status(&gw, &ec.sign_as(Algorithm::ES256, None, &idp_claims(ISS, "api", "u"))).await, 200, "no kid: tried on fitting keys");
    assert_eq!(status(&gw, &gw.token("local", json!({}))).await, 200, "authgate's own tokens still verify");

    refused(&gw, &rsa.sign(&idp_claims(ISS, "other-api", "u")), "the token's audience is not accepted", "wrong aud").await;
    refused(&gw, &rsa.sign(&idp_claims("https://evil.example", "api", "u")), "the token's issuer is not accepted", "unknown iss").await;
    let forged = ec.sign(&idp_claims("authgate", "api", "root"));
    refused(&gw, &forged, "the token's signature is invalid", "an IdP key cannot sign as authgate").await;
    let ps = rsa.sign_as(Algorithm::PS256, Some("rsa-1"), &idp_claims(ISS, "api", "u"));
    refused(&gw, &ps, "the token's algorithm is not accepted", "PS256 is not in the issuer's list").await;
    let mut expired = idp_claims(ISS, "api", "u");
    expired["exp"] = json!(authgate::jwt::now_secs() - 3600);
    refused(&gw, &rsa.sign(&expired), "the token has expired", "expired").await;
    // ES256 header naming the RSA key: the JWK's kty must fit the alg.
    let mismatched = ec.sign_as(Algorithm::ES256, Some("rsa-1"), &idp_claims(ISS, "api", "u"));
    refused(&gw, &mismatched, "the token's algorithm is not accepted", "kty/alg mismatch").await;

    // The classic key confusion: HS256 "signed" with the public JWK's bytes.
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(rsa.jwk["n"].as_str().expect("n")).expect("n");
    for secret in [n.as_slice(), rsa.jwk.to_string().as_bytes(), rsa.pem.as_slice()] {
        let mut h = jsonwebtoken::Header::new(Algorithm::HS256);
        h.kid = Some("rsa-1".into());
        let hs =
            jsonwebtoken::encode(&h, &idp_claims(ISS, "api", "root"), &jsonwebtoken::EncodingKey::from_secret(secret).expect("hmac key"))
                .expect("sign");
        refused(&gw, &hs, "the token's algorithm is not accepted", "HS256 with the JWK bytes").await;
    }
    assert_eq!(idp.requests(), 1, "verification reads the cache, never the IdP");
    gw.stop().await;
}

#[tokio::test]
async fn an_unknown_kid_refetches_once_picks_up_rotation_and_a_flood_refetches_at_most_once() {
    let k1 = IdpKey::generate(Algorithm::ES256, "k1");
    let idp = JwksServer::start(jwks(&[&k1]), "max-age=3600").await;
    let gw = Gateway::start(&issuer_toml(&idp.url(), Some(&idp.ca)), ROUTES).await;
    let t1 = k1.sign(&idp_claims(ISS, "api", "u1"));
    eventually(Duration::from_secs(10), "the JWKS is fetched at start", async || status(&gw, &t1).await == 200).await;
    assert_eq!(idp.requests(), 1);

    // The IdP rotates: k2 is published and used. Its first token names an
    // unknown kid: refused at once (no network on the request path) and one refetch runs.
    let k2 = IdpKey::generate(Algorithm::RS256, "k2");
    idp.publish(jwks(&[&k1, &k2]));
    let t2 = k2.sign(&idp_claims(ISS, "api", "u2"));
    refused(&gw, &t2, "the token's key is unknown", "before the refetch").await;
    eventually(Duration::from_secs(10), "the new key is picked up", async || status(&gw, &t2).await == 200).await;
    assert_eq!(idp.requests(), 2, "exactly one refetch");

    // 50 tokens with made-up kids within the window: no further refetch.
    for i in 0..50 {
        let t = k2.sign_as(Algorithm::RS256, Some(&format!("random-{i}")), &idp_claims(ISS, "api", "u"));
        refused(&gw, &t, "the token's key is unknown", "made-up kid").await;
    }
    let window = Instant::now() + Duration::from_millis(500);
    while Instant::now() < window {
        assert!(idp.requests() <= 3, "a flood of unknown kids refetched more than once: {}", idp.requests());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(idp.requests(), 2, "still within the 30 s window of the last unknown-kid refetch");
    assert_eq!(status(&gw, &t1).await, 200);
    gw.stop().await;
}

#[tokio::test]
async fn an_idp_outage_keeps_the_last_good_keys() {
    let k1 = IdpKey::generate(Algorithm::RS256, "k1");
    let t1 = k1.sign(&idp_claims(ISS, "api", "u1"));
    let (idp, gw) = with_idp(&[&k1], &t1).await;

    idp.stop();
    // An unknown kid forces a refetch, which fails.
    let stray = k1.sign_as(Algorithm::RS256, Some("unknown"), &idp_claims(ISS, "api", "u"));
    assert_eq!(status(&gw, &stray).await, 401);
    let issuer = gw.app().verifier.issuers()[0].clone();
    eventually(Duration::from_secs(15), "the failed refresh is counted", async || issuer.stats().failures >= 1).await;
    assert_eq!(issuer.stats().keys, 1, "the last good keys are kept");
    assert_eq!(status(&gw, &t1).await, 200);
    gw.stop().await;
}

/// An IdP that stops publishing a key (how a leaked key is withdrawn)
/// ends every token signed with it, those verified and cached before too.
#[tokio::test]
async fn a_key_withdrawn_from_the_jwks_ends_its_cached_tokens() {
    let (k1, k2) = (IdpKey::generate(Algorithm::ES256, "k1"), IdpKey::generate(Algorithm::ES256, "k2"));
    let mut claims = idp_claims(ISS, "api", "u1");
    claims["exp"] = json!(authgate::jwt::now_secs() + 86_400 * 365);
    let t1 = k1.sign(&claims);
    let (idp, gw) = with_idp(&[&k1], &t1).await;
    assert_eq!(gw.app().token_cache.len(), 1, "t1 is cached");

    // k1 withdrawn, k2 published; k2's first token makes authgate refetch.
    idp.publish(jwks(&[&k2]));
    let t2 = k2.sign(&idp_claims(ISS, "api", "u2"));
    eventually(Duration::from_secs(10), "k2 is picked up", async || status(&gw, &t2).await == 200).await;
    refused(&gw, &t1, "the token's key is unknown", "a cached token of the withdrawn key").await;
    gw.stop().await;
}

/// A reload builds new issuers. They start with the running gateway's keys,
/// so a reload while the IdP is down (or before the first fetch returns)
/// refuses nothing the gateway accepted.
#[tokio::test]
async fn a_reload_while_the_idp_is_down_keeps_its_keys() {
    let k1 = IdpKey::generate(Algorithm::RS256, "k1");
    let t1 = k1.sign(&idp_claims(ISS, "api", "u1"));
    let (idp, gw) = with_idp(&[&k1], &t1).await;
    idp.stop();
    gw.running().reload().await.expect("reload");
    assert_eq!(status(&gw, &t1).await, 200, "right after the reload");
    let issuer = gw.app().verifier.issuers()[0].clone();
    eventually(Duration::from_secs(15), "the new issuer's fetch fails", async || issuer.stats().failures >= 1).await;
    assert_eq!(status(&gw, &t1).await, 200, "after its failed fetch: the last good keys are kept");
    gw.stop().await;
}

/// RFC 7519 §4.1.7: a jti is unique within its issuer. An IdP token that
/// copies the jti of one of authgate's own tokens, revoked (as
/// `/token/revoke` does), must not revoke that token.
#[tokio::test]
async fn a_jti_is_revoked_within_its_issuer_only() {
    let k1 = IdpKey::generate(Algorithm::ES256, "k1");
    let idp = JwksServer::start(jwks(&[&k1]), "max-age=3600").await;
    let gw = Gateway::start(&issuer_toml(&idp.url(), Some(&idp.ca)), ROUTES).await;
    let local = gw.token("victim", json!({}));
    let now = authgate::jwt::now_secs();
    let local_jti = gw.app().verifier.verify(&local, now).expect("local token").jti().to_string();
    let mut claims = idp_claims(ISS, "api", "attacker");
    claims["jti"] = json!(local_jti);
    let idp_token = k1.sign(&claims);
    eventually(Duration::from_secs(10), "the JWKS is fetched at start", async || status(&gw, &idp_token).await == 200).await;
    let idp_id = gw.app().verifier.verify(&idp_token, now).expect("idp token");
    assert_eq!(idp_id.jti(), format!("{ISS}#{local_jti}"));
    gw.app().denylist.revoke_jti(idp_id.jti(), idp_id.exp());
    refused(&gw, &idp_token, "the token has been revoked", "the revoked IdP token").await;
    assert_eq!(status(&gw, &local).await, 200, "another issuer's jti revoked authgate's own token");
    // A revocation an earlier version recorded (the bare jti) still holds.
    let mut claims = idp_claims(ISS, "api", "u2");
    claims["jti"] = json!("revoked-before-the-upgrade");
    let old = k1.sign(&claims);
    assert_eq!(status(&gw, &old).await, 200);
    gw.app().denylist.revoke_jti("revoked-before-the-upgrade", now + 600);
    refused(&gw, &old, "the token has been revoked", "a revocation recorded by the bare jti").await;
    gw.stop().await;
}

#[tokio::test]
async fn a_jwks_file_is_read_at_start_and_an_unreachable_jwks_does_not_stop_the_gateway() {
    let k1 = IdpKey::generate(Algorithm::ES256, "file-key");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwks(&[&k1]).to_string()).expect("write jwks");
    let gw = Gateway::start(&issuer_toml(&file.display().to_string(), None), ROUTES).await;
    assert_eq!(status(&gw, &k1.sign(&idp_claims(ISS, "api", "u"))).await, 200, "loaded before serving");
    gw.stop().await;

    // Nothing listens there: logged loudly, the gateway serves, that issuer's tokens get 401.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let idp = JwksServer::start(jwks(&[&k1]), "max-age=60").await;
    let url = format!("https://localhost:{port}/jwks.json");
    let gw = Gateway::start(&issuer_toml(&url, Some(&idp.ca)), ROUTES).await;
    assert_eq!(status(&gw, &gw.token("local", json!({}))).await, 200);
    refused(&gw, &k1.sign(&idp_claims(ISS, "api", "u")), "the token's key is unknown", "no keys yet").await;
    gw.stop().await;
}

#[test]
fn issuer_config_errors_name_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("jwks_url = \"http://idp/jwks\"", "jwt.issuers[0].jwks_url"),
        ("jwks_url = \"jwks.json\"\nca_file = \"ca.pem\"", "jwt.issuers[0].ca_file"),
    ];
    for (line, key) in cases {
        let extra = format!("[[jwt.issuers]]\nissuer = \"{ISS}\"\naudience = \"api\"\n{line}\nalgorithms = [\"RS256\"]\n");
        let file = dir.path().join("config.toml");
        std::fs::write(&file, config_text(dir.path(), &extra, ROUTES)).expect("write");
        let e = authgate::config::load(&file).err().unwrap_or_else(|| panic!("{line} must be refused"));
        assert_eq!(e.key, key, "{e}");
    }
    let extra = format!("[[jwt.issuers]]\nissuer = \"{ISS}\"\naudience = \"api\"\njwks_url = \"j.json\"\nalgorithms = [\"HS256\"]\n");
    std::fs::write(dir.path().join("config.toml"), config_text(dir.path(), &extra, ROUTES)).expect("write");
    let e = authgate::config::load(&dir.path().join("config.toml")).expect_err("HMAC refused");
    assert_eq!(e.key, "jwt.issuers[0].algorithms[0]");
    let dup = issuer_toml("a.json", None) + &issuer_toml("b.json", None);
    std::fs::write(dir.path().join("config.toml"), config_text(dir.path(), &dup, ROUTES)).expect("write");
    let e = authgate::config::load(&dir.path().join("config.toml")).expect_err("duplicate refused");
    assert_eq!(e.key, "jwt.issuers[1].issuer");
}
