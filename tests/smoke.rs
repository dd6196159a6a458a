mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn token_passes_and_identity_reaches_upstream() {
    let up = Upstream::start().await;
    let gw = Gateway::start("", &format!("[[routes]]\npath = \"/\"\nupstream = \"{}\"\n", up.url())).await;
    let t = gw.token("alice", json!({"roles": ["admin", "user"]}));
    let r = gw.client.get(gw.url("/x?y=1")).bearer_auth(&t).header("X-Auth-Subject", "mallory").send().await.expect("send");
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert_eq!(seen.headers["x-auth-subject"], "alice");
    assert_eq!(seen.headers["x-auth-roles"], "admin,user");
    assert_eq!(seen.query.as_deref(), Some("y=1"));
    assert!(seen.headers.get("authorization").is_none());
    let r = gw.client.get(gw.url("/x")).send().await.expect("send");
    assert_eq!(r.status(), 401);
    assert_eq!(up.hits(), 1);
    gw.stop().await;
}
