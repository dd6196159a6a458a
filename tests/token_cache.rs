//! The verified-token cache never changes an answer: a cached token is
//! refused once it expires, and at once when it is revoked.
mod common;

use std::time::{Duration, Instant};

use common::*;

const ROUTES: &str = "[[routes]]\npath = \"/\"\nupstream = \"echo\"\n";

async fn gateway() -> Gateway {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), "", ROUTES).replace("leeway = \"5s\"", "leeway = \"0s\"");
    Gateway::start_in(dir, &text).await
}

#[tokio::test]
async fn a_cached_token_is_refused_once_it_expires() {
    let gw = gateway().await;
    let app = gw.app();
    let token = app.signer.as_ref().expect("signer").sign("alice", &serde_json::Map::new(), Duration::from_secs(1)).expect("sign").token;
    let get = || gw.client.get(gw.url("/x")).bearer_auth(&token).send();
    assert_eq!(get().await.expect("send").status(), 200);
    assert_eq!(get().await.expect("send").status(), 200, "second use, from the cache");
    assert_eq!(gw.app().token_cache.len(), 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get().await.expect("send");
        if r.status() == 401 {
            assert!(r.headers()["www-authenticate"].to_str().expect("ascii").contains("expired"));
            break;
        }
        assert!(Instant::now() < deadline, "an expired token was still accepted from the cache");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_cached_token_is_refused_at_once_when_revoked() {
    let gw = gateway().await;
    let token = gw.token("bob", serde_json::json!({}));
    for _ in 0..3 {
        assert_eq!(gw.client.get(gw.url("/x")).bearer_auth(&token).send().await.expect("send").status(), 200);
    }
    let app = gw.app();
    let id = app.verifier.verify(&token, authgate::jwt::now_secs()).expect("valid");
    app.denylist.revoke_jti(id.jti(), id.exp());
    let r = gw.client.get(gw.url("/x")).bearer_auth(&token).send().await.expect("send");
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"].to_str().expect("ascii").contains("revoked"));
    gw.stop().await;
}

#[tokio::test]
async fn a_tampered_copy_of_a_cached_token_is_not_served_from_the_cache() {
    let gw = gateway().await;
    let token = gw.token("carol", serde_json::json!({"roles": ["user"]}));
    assert_eq!(gw.client.get(gw.url("/x")).bearer_auth(&token).send().await.expect("send").status(), 200);
    // Same signature, different payload: must miss the cache and fail verification.
    let mut parts: Vec<String> = token.split('.').map(String::from).collect();
    let payload = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &parts[1]).expect("b64");
    let forged = String::from_utf8(payload).expect("utf8").replace("\"user\"", "\"admin\"");
    parts[1] = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, forged);
    let r = gw.client.get(gw.url("/x")).bearer_auth(parts.join(".")).send().await.expect("send");
    assert_eq!(r.status(), 401);
    gw.stop().await;
}

/// The cache is bounded by bytes as well as by count: tokens near the
/// 8 KB limit filled it to about 150 MB of memory within its count.
#[tokio::test]
async fn the_cache_holds_at_most_8_mib_of_tokens_however_long_they_are() {
    let gw = gateway().await;
    let app = gw.app();
    let signer = app.signer.as_ref().expect("signer");
    let pad = "x".repeat(5_500);
    let mut total = 0usize;
    for i in 0..2_000 {
        let claims = serde_json::json!({ "pad": pad }).as_object().cloned().expect("object");
        let token = signer.sign(&format!("user-{i}"), &claims, Duration::from_secs(600)).expect("sign").token;
        assert!(token.len() > 7_000 && token.len() < 8_192, "{}", token.len());
        total += token.len();
        let id = app.verifier.verify(&token, authgate::jwt::now_secs()).expect("valid");
        app.token_cache.insert(token.as_bytes(), std::sync::Arc::new(id), app.verifier.key_generation());
    }
    assert!(total > 14 << 20, "{total}");
    let held = app.token_cache.bytes();
    assert!(held <= 8 << 20, "the cache holds {held} bytes of tokens");
    assert!(app.token_cache.len() > 100, "and still caches: {}", app.token_cache.len());
    gw.stop().await;
}
