//! What the gateway answers itself: the `echo` upstream, forward-auth at
//! `GET /auth/verify`, and `/.well-known/jwks.json`.

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::*;
use serde_json::{Value, json};

const ROUTES: &str = "[[routes]]\npath = \"/\"\nupstream = \"echo\"\n\n\
                      [[routes]]\npath = \"/admin\"\nupstream = \"echo\"\nroles = [\"admin\"]\n\n\
                      [[routes]]\npath = \"/public\"\nupstream = \"echo\"\nauth = \"public\"\n";

#[tokio::test]
async fn echo_shows_what_an_upstream_would_receive() {
    let gw = Gateway::start("", ROUTES).await;
    let t = gw.token("alice", json!({ "roles": ["admin", "user"], "email": "alice@example.com" }));
    let r = gw
        .client
        .put(gw.url("/things/1?x=1&y=2"))
        .bearer_auth(&t)
        .header("X-Auth-Subject", "mallory")
        .header("x-custom", "kept")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v = json(r).await;
    assert_eq!(v["method"], "PUT");
    assert_eq!(v["path"], "/things/1");
    assert_eq!(v["query"], "x=1&y=2");
    let h = &v["headers"];
    assert_eq!(h["x-auth-subject"], "alice", "{v}");
    assert_eq!(h["x-auth-roles"], "admin,user");
    assert_eq!(h["x-auth-email"], "alice@example.com");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-custom"], "kept");
    assert!(h.get("authorization").is_none(), "{v}");

    // Public: no identity, and the client's forged one is gone; path normalised.
    let resp = raw_request(
        &gw,
        b"GET /public/./a/../b HTTP/1.1\r\nHost: localhost\r\nX-Auth-Roles: admin\r\nConnection: close\r\n\r\n",
        std::time::Duration::from_secs(10),
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    let v: Value = serde_json::from_str(body_of(&resp)).expect("json");
    assert_eq!(v["path"], "/public/b");
    assert_eq!(v["query"], Value::Null);
    assert!(v["headers"].as_object().expect("headers").keys().all(|k| !k.starts_with("x-auth-")), "{v}");
    gw.stop().await;
}

async fn verify(gw: &Gateway, header: &str, uri: &str, token: Option<&str>) -> reqwest::Response {
    let mut b = gw.client.get(gw.url("/auth/verify")).header(header, uri).header("x-auth-subject", "mallory");
    if let Some(t) = token {
        b = b.bearer_auth(t);
    }
    b.send().await.expect("send")
}

#[tokio::test]
async fn forward_auth_selects_the_route_of_the_original_uri() {
    let gw = Gateway::start("", ROUTES).await;
    let admin = gw.token("root", json!({ "roles": ["admin"], "email": "root@example.com" }));
    let user = gw.token("alice", json!({ "roles": ["user"] }));
    for header in ["X-Original-URI", "X-Forwarded-Uri"] {
        // 200 with the identity headers.
        let r = verify(&gw, header, "/admin/panel?x=1", Some(&admin)).await;
        assert_eq!(r.status(), 200, "{header}");
        assert_eq!(r.headers()["x-auth-subject"], "root");
        assert_eq!(r.headers()["x-auth-roles"], "admin");
        assert_eq!(r.headers()["x-auth-email"], "root@example.com");
        // 401 without a token, with the Bearer challenge.
        let r = verify(&gw, header, "/admin/panel", None).await;
        assert_eq!(r.status(), 401, "{header}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"authgate\"");
        // 401 with a bad one.
        let r = verify(&gw, header, "/anything", Some(&format!("{user}x"))).await;
        assert_eq!(r.status(), 401, "{header}");
        assert!(r.headers()["www-authenticate"].to_str().expect("ascii").starts_with("Bearer error=\"invalid_token\""));
        // 403 when the route's roles are missing.
        let r = verify(&gw, header, "/admin", Some(&user)).await;
        assert_eq!(r.status(), 403, "{header}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer error=\"insufficient_scope\"");
        // The same user passes on a route without roles.
        let r = verify(&gw, header, "/other", Some(&user)).await;
        assert_eq!(r.status(), 200, "{header}");
        assert_eq!(r.headers()["x-auth-subject"], "alice");
        // 200 for a public route, without a token and without identity.
        let r = verify(&gw, header, "/public/page", None).await;
        assert_eq!(r.status(), 200, "{header}");
        assert!(r.headers().get("x-auth-subject").is_none());
        // The original URI is normalised like a proxied path.
        let r = verify(&gw, header, "/public/../admin", Some(&user)).await;
        assert_eq!(r.status(), 403, "{header}: /public/../admin must be the admin route");
        let r = verify(&gw, header, "/public/%2e%2e/admin", None).await;
        assert_eq!(r.status(), 401, "{header}");
        // The backend behind forward-auth gets the raw target: what it may
        // read as another path than authgate would is refused. A Java
        // server drops `;x`, then `..` cancels `public`; a `#` is no part
        // of a target, and a backend may clean `/public#/../admin` to `/admin`.
        for uri in ["/public/;x/../admin/secret", "/public/;/../admin", "/public#/../admin"] {
            assert_eq!(verify(&gw, header, uri, None).await.status(), 400, "{header}: {uri}");
        }
    }
    gw.stop().await;
}

#[tokio::test]
async fn forward_auth_without_an_original_uri_uses_the_root_route() {
    let gw = Gateway::start("", ROUTES).await;
    let r = gw.client.get(gw.url("/auth/verify")).send().await.expect("send");
    assert_eq!(r.status(), 401);
    let r = gw.client.get(gw.url("/auth/verify")).bearer_auth(gw.token("alice", json!({}))).send().await.expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-auth-subject"], "alice");
    gw.stop().await;
}

#[tokio::test]
async fn jwks_lists_the_signing_key_by_the_tokens_kid() {
    let gw = Gateway::start("", ROUTES).await;
    // Served without a token, even though "/" requires one.
    let r = gw.client.get(gw.url("/.well-known/jwks.json")).send().await.expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let jwks = json(r).await;
    let keys = jwks["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 1, "{jwks}");
    let k = &keys[0];
    assert_eq!((k["kty"].as_str(), k["crv"].as_str(), k["alg"].as_str()), (Some("EC"), Some("P-256"), Some("ES256")));
    assert!(k.get("d").is_none(), "the private key is published: {jwks}");

    let token = gw.token("alice", json!({}));
    let header: Value = serde_json::from_slice(&B64.decode(token.split('.').next().expect("header")).expect("b64")).expect("json");
    assert_eq!(header["kid"], k["kid"], "token header {header} vs JWKS {jwks}");

    // The published key verifies the token (what an upstream would do).
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(k.clone()).expect("a JWK");
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).expect("decoding key");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&["api"]);
    jsonwebtoken::decode::<Value>(&token, &key, &v).expect("the JWKS key verifies authgate's token");
    gw.stop().await;
}

#[tokio::test]
async fn previous_keys_are_published_and_still_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = dir.path().join("old.pem");
    authgate::keys::generate_private_key(jsonwebtoken::Algorithm::ES256, &old).expect("old key");
    let extra = format!(
        "[jwt]\nalgorithm = \"ES256\"\nprivate_key = \"{0}/jwt.pem\"\ngenerate_signing_key = true\nissuer = \"authgate\"\naudience = \"api\"\nprevious_keys = [\"{1}\"]\n",
        dir.path().display(),
        old.display()
    );
    let text = config_text(dir.path(), &extra, ROUTES);
    let gw = Gateway::start_in(dir, &text).await;
    let jwks = json(gw.client.get(gw.url("/.well-known/jwks.json")).send().await.expect("send")).await;
    assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(2), "{jwks}");
    let key = jsonwebtoken::EncodingKey::from_ec_pem(&std::fs::read(&old).expect("pem")).expect("key");
    let now = authgate::jwt::now_secs();
    let claims = json!({ "sub": "old-timer", "iss": "authgate", "aud": "api", "exp": now + 60 });
    let token = jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256), &claims, &key).expect("sign");
    let r = gw.client.get(gw.url("/x")).bearer_auth(token).send().await.expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(json(r).await["headers"]["x-auth-subject"], "old-timer");
    gw.stop().await;
}
