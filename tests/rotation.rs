//! Signing-key rotation with `jwt.previous_keys`, as the README's procedure
//! runs it across replicas: publish the next key, switch signing, drop the
//! old key; no request fails on the way, and a removed key verifies nothing.

mod common;

use std::path::Path;

use common::*;
use serde_json::{Value, json};

const ROUTES: &str = "[[routes]]\npath = \"/\"\nupstream = \"echo\"\n";

/// A replica signing with `sign` and also accepting (and publishing) `previous`.
async fn replica(sign: &Path, previous: &[&Path]) -> Gateway {
    let prev: Vec<String> = previous.iter().map(|p| format!("\"{}\"", p.display())).collect();
    let extra = format!(
        "[jwt]\nalgorithm = \"ES256\"\nprivate_key = \"{}\"\nissuer = \"authgate\"\naudience = \"api\"\nprevious_keys = [{}]\n",
        sign.display(),
        prev.join(", ")
    );
    Gateway::start(&extra, ROUTES).await
}

async fn status(gw: &Gateway, token: &str) -> u16 {
    gw.client.get(gw.url("/api")).bearer_auth(token).send().await.expect("send").status().as_u16()
}

async fn kids(gw: &Gateway) -> Vec<String> {
    let r = gw.client.get(gw.url("/.well-known/jwks.json")).send().await.expect("send");
    assert_eq!(r.headers()["cache-control"], "public, max-age=300");
    let body: Value = json(r).await;
    body["keys"].as_array().expect("keys").iter().map(|k| k["kid"].as_str().expect("kid").to_string()).collect()
}

#[tokio::test]
async fn rotating_the_signing_key_fails_no_request_and_a_removed_key_verifies_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a.pem"), dir.path().join("b.pem"));
    for k in [&a, &b] {
        authgate::keys::generate_private_key(jsonwebtoken::Algorithm::ES256, k).expect("key");
    }
    // Before: every replica signs with A.
    let old = replica(&a, &[]).await;
    let token_a = old.token("alice", json!({}));
    let kid_a = kids(&old).await[0].clone();

    // Step 1: B is published (verify only) while A still signs.
    let step1 = replica(&a, &[&b]).await;
    // Step 2: B signs; A is still accepted. Mid-rollout both run side by side.
    let step2 = replica(&b, &[&a]).await;
    let token_b = step2.token("bob", json!({}));
    let kid_b = kids(&step2).await[0].clone();
    assert_ne!(kid_a, kid_b);
    assert_eq!(kids(&step1).await, vec![kid_a.clone(), kid_b.clone()]);
    assert_eq!(kids(&step2).await, vec![kid_b.clone(), kid_a.clone()]);

    let mut failed = Vec::new();
    for round in 0..10 {
        for (name, gw) in [("step1", &step1), ("step2", &step2)] {
            for (t, token) in [("A", &token_a), ("B", &token_b)] {
                let s = status(gw, token).await;
                if s != 200 {
                    failed.push(format!("round {round}: token {t} at {name}: {s}"));
                }
            }
        }
    }
    assert!(failed.is_empty(), "requests failed across the switch: {failed:?}");
    assert_eq!(status(&old, &token_a).await, 200);

    // Step 3 (after access_ttl): A is removed. Its tokens are refused; B's pass.
    let after = replica(&b, &[]).await;
    assert_eq!(kids(&after).await, vec![kid_b]);
    let r = after.client.get(after.url("/api")).bearer_auth(&token_a).send().await.expect("send");
    assert_eq!(r.status(), 401);
    assert_eq!(json(r).await["error"], "invalid_token");
    assert_eq!(status(&after, &token_b).await, 200);
    for gw in [old, step1, step2, after] {
        gw.stop().await;
    }
}
