//! What an upstream can rely on: route `scopes` in both IdP claim shapes,
//! and `identity.assertion_header`, a 60 s JWT signed by authgate that the
//! upstream verifies against `/.well-known/jwks.json`.

mod common;

use common::*;
use serde_json::{Value, json};

async fn status(gw: &Gateway, path: &str, token: &str) -> u16 {
    gw.client.get(gw.url(path)).bearer_auth(token).send().await.expect("send").status().as_u16()
}

#[tokio::test]
async fn route_scopes_accept_a_space_separated_scope_and_an_scp_array() {
    let routes = "[[routes]]\npath = \"/orders\"\nupstream = \"echo\"\nscopes = [\"orders:read\"]\n\n\
                  [[routes]]\npath = \"/\"\nupstream = \"echo\"\n";
    let gw = Gateway::start("", routes).await;
    let scope = gw.token("a", json!({ "scope": "profile orders:read email" }));
    let scp = gw.token("b", json!({ "scp": ["orders:write", "orders:read"] }));
    assert_eq!(status(&gw, "/orders/1", &scope).await, 200, "scope as a space-separated string");
    assert_eq!(status(&gw, "/orders/1", &scp).await, 200, "scp as an array");

    for (claims, what) in [
        (json!({ "scope": "orders:write profile" }), "other scopes"),
        (json!({ "scope": "orders:read:all" }), "a longer scope is another scope"),
        (json!({ "scp": ["orders:write"] }), "scp without it"),
        (json!({ "scope": ["orders:read orders:write"] }), "a one-element array is not split"),
        (json!({}), "no scope at all"),
    ] {
        let r = gw.client.get(gw.url("/orders/1")).bearer_auth(gw.token("c", claims)).send().await.expect("send");
        assert_eq!(r.status(), 403, "{what}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer error=\"insufficient_scope\"");
        assert_eq!(json(r).await["error"], "insufficient_scope");
    }
    assert_eq!(status(&gw, "/other", &gw.token("c", json!({}))).await, 200, "routes without scopes do not care");
    gw.stop().await;
}

#[tokio::test]
async fn the_upstream_gets_an_assertion_it_can_verify_with_the_published_jwks() {
    let up = Upstream::start().await;
    let extra =
        "[identity]\nclaim_headers = { roles = \"X-Auth-Roles\", email = \"X-Auth-Email\" }\nassertion_header = \"X-Authgate-Assertion\"\n";
    let routes = format!("[[routes]]\npath = \"/api\"\nupstream = \"{}\"\n", up.url());
    let gw = Gateway::start(extra, &routes).await;
    let token = gw.token("alice", json!({ "roles": ["admin"], "email": "alice@example.com", "secret_claim": "not forwarded" }));

    let r = gw
        .client
        .get(gw.url("/api/orders"))
        .bearer_auth(&token)
        .header("X-Authgate-Assertion", "forged-by-the-client")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let seen = up.last();
    let values: Vec<_> = seen.headers.get_all("x-authgate-assertion").iter().collect();
    assert_eq!(values.len(), 1, "exactly one assertion, the client's is gone");
    let assertion = values[0].to_str().expect("ascii");
    assert_ne!(assertion, "forged-by-the-client");

    // Verify it the way an upstream would: keys from the published JWKS, aud = the route.
    let jwks: jsonwebtoken::jwk::JwkSet =
        gw.client.get(gw.url("/.well-known/jwks.json")).send().await.expect("jwks").json().await.expect("jwks json");
    let header = jsonwebtoken::decode_header(assertion).expect("header");
    let jwk = jwks.find(header.kid.as_deref().expect("kid")).expect("the assertion's kid is published");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).expect("key");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&["/api"]);
    v.set_issuer(&["authgate"]);
    let claims: Value = jsonwebtoken::decode(assertion, &key, &v).expect("the assertion verifies").claims;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["roles"], json!(["admin"]));
    assert_eq!(claims["email"], "alice@example.com");
    assert!(claims.get("secret_claim").is_none(), "only the forwarded claims");
    let ttl = claims["exp"].as_u64().expect("exp") - claims["iat"].as_u64().expect("iat");
    assert_eq!(ttl, 60);

    // Another audience (route) does not accept it.
    let mut other = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    other.set_audience(&["/admin"]);
    assert!(jsonwebtoken::decode::<Value>(assertion, &key, &other).is_err());

    // /auth/verify hands nginx the same kind of assertion.
    let r = gw.client.get(gw.url("/auth/verify")).bearer_auth(&token).header("x-original-uri", "/api/x").send().await.expect("send");
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-authgate-assertion"));
    gw.stop().await;
}

#[test]
fn an_assertion_header_needs_an_asymmetric_signing_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = "[jwt]\nalgorithm = \"HS256\"\nsecret_env = \"SOME_SECRET\"\nissuer = \"authgate\"\naudience = \"api\"\n\n\
                 [identity]\nassertion_header = \"X-Authgate-Assertion\"\n";
    let file = dir.path().join("config.toml");
    std::fs::write(&file, config_text(dir.path(), extra, "[[routes]]\npath = \"/\"\nupstream = \"echo\"\n")).expect("write");
    let e = authgate::config::load(&file).expect_err("refused");
    assert_eq!(e.key, "identity.assertion_header");
}
