//! Identity headers: whatever the client sends under a configured identity
//! header or a stripped prefix never reaches an upstream, in any case, on
//! required, optional and public routes; the verified ones are added.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

fn three_routes(up: &Upstream) -> String {
    format!(
        "[[routes]]\npath = \"/req\"\nupstream = \"{0}\"\nauth = \"required\"\n\n\
         [[routes]]\npath = \"/opt\"\nupstream = \"{0}\"\nauth = \"optional\"\n\n\
         [[routes]]\npath = \"/pub\"\nupstream = \"{0}\"\nauth = \"public\"\n",
        up.url()
    )
}

/// Client-sent identity headers, in the cases a client might send them,
/// and with `_` for `-` (which CGI-style upstreams read as the same header).
const FORGED: &str = "x-auth-subject: mallory\r\nX-AUTH-ROLES: admin\r\nX-Auth-Anything: x\r\nX-Auth-Email: root@example.com\r\n\
                      x-AuTh-sUbJeCt: eve\r\nX_Auth_Subject: trudy\r\nx-auth_roles: admin\r\n";

#[tokio::test]
async fn client_identity_headers_are_stripped_on_every_route() {
    let up = Upstream::start().await;
    let gw = Gateway::start("", &three_routes(&up)).await;
    // A token without roles or email: nothing may come from the client either.
    let token = gw.token("alice", json!({}));
    for (path, auth) in [("/req", true), ("/opt", true), ("/opt", false), ("/pub", false), ("/pub", true)] {
        let auth_line = if auth { format!("Authorization: Bearer {token}\r\n") } else { String::new() };
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth_line}{FORGED}Connection: close\r\n\r\n");
        let resp = raw_request(&gw, req.as_bytes(), Duration::from_secs(10)).await;
        assert_eq!(status_of(&resp), 200, "{path}: {resp}");
        let seen = up.last();
        let leaked: Vec<String> =
            seen.headers.keys().map(|k| k.as_str().to_string()).filter(|k| k.replace('_', "-").starts_with("x-auth-")).collect();
        let expected: Vec<String> = if path == "/pub" || !auth { vec![] } else { vec!["x-auth-subject".into()] };
        assert_eq!(leaked, expected, "{path} with token={auth}");
        if let Some(v) = seen.headers.get("x-auth-subject") {
            assert_eq!(v, "alice");
            assert_eq!(seen.headers.get_all("x-auth-subject").iter().count(), 1, "exactly one subject header");
        }
    }
    gw.stop().await;
}

#[tokio::test]
async fn stripping_follows_the_configured_headers_and_prefixes() {
    let up = Upstream::start().await;
    let identity = "[identity]\nsubject_header = \"Remote-User\"\nclaim_headers = { groups = \"Remote-Groups\" }\nstrip_prefixes = [\"X-Internal-\", \"X-Auth-\"]\n";
    let gw = Gateway::start(identity, &three_routes(&up)).await;
    let r = gw
        .client
        .get(gw.url("/pub"))
        .header("remote-user", "mallory")
        .header("Remote-Groups", "admins")
        .header("X-INTERNAL-trust", "yes")
        .header("x-auth-x", "1")
        .header("x-other", "kept")
        .header("Remote_User", "trudy")
        .header("x_internal_trust", "yes")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let seen = up.last();
    for h in ["remote-user", "remote-groups", "x-internal-trust", "x-auth-x", "remote_user", "x_internal_trust"] {
        assert!(seen.headers.get(h).is_none(), "{h} reached the upstream");
    }
    assert_eq!(seen.headers["x-other"], "kept");
    let t = gw.token("alice", json!({ "groups": ["a", "b"] }));
    let r = gw.client.get(gw.url("/req")).bearer_auth(t).header("remote-user", "mallory").send().await.expect("send");
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert_eq!(seen.headers["remote-user"], "alice");
    assert_eq!(seen.headers["remote-groups"], "a,b");
    gw.stop().await;
}

#[tokio::test]
async fn claim_headers_are_added_with_arrays_joined() {
    let up = Upstream::start().await;
    let gw = Gateway::start("", &three_routes(&up)).await;
    let t = gw.token("alice", json!({ "roles": ["admin", "user", "ops"], "email": "alice@example.com", "name": "not forwarded" }));
    let r = gw.client.get(gw.url("/req")).bearer_auth(t).send().await.expect("send");
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert_eq!(seen.headers["x-auth-subject"], "alice");
    assert_eq!(seen.headers["x-auth-roles"], "admin,user,ops");
    assert_eq!(seen.headers["x-auth-email"], "alice@example.com");
    assert!(seen.headers.values().all(|v| v != "not forwarded"), "an unconfigured claim was forwarded");
    // Values the upstream would read as something other than what authgate
    // checked are refused, not mangled: a role holding ',' (split apart), a
    // roles string holding ',' (one role to authgate, two to the upstream),
    // whitespace at an end or a tab (trimmed or dropped by parsers).
    let before = up.hits();
    for (sub, claims) in [
        ("alice", json!({ "roles": ["admin,root"] })),
        ("alice", json!({ "roles": "user,admin" })),
        ("alice", json!({ "roles": ["user", " admin"] })),
        ("alice", json!({ "email": "alice@example.com\t" })),
        ("alice", json!({ "email": "a\u{85}b@example.com" })),
        ("\talice", json!({})),
        ("alice ", json!({})),
    ] {
        let t = gw.token(sub, claims.clone());
        let r = gw.client.get(gw.url("/req")).bearer_auth(t).send().await.expect("send");
        assert_eq!(r.status(), 401, "{sub:?} {claims}");
    }
    assert_eq!(up.hits(), before, "a refused identity reached the upstream");
    gw.stop().await;
}

#[tokio::test]
async fn authorization_is_removed_unless_forwarded() {
    let up = Upstream::start().await;
    let gw = Gateway::start("", &three_routes(&up)).await;
    let t = gw.token("alice", json!({}));
    for path in ["/req", "/opt", "/pub"] {
        let r = gw.client.get(gw.url(path)).bearer_auth(&t).send().await.expect("send");
        assert_eq!(r.status(), 200);
        assert!(up.last().headers.get("authorization").is_none(), "{path} forwarded Authorization");
    }
    gw.stop().await;

    let up = Upstream::start().await;
    let identity = "[identity]\nclaim_headers = { roles = \"X-Auth-Roles\" }\nforward_authorization = true\n";
    let gw = Gateway::start(identity, &three_routes(&up)).await;
    let t = gw.token("alice", json!({}));
    let r = gw.client.get(gw.url("/req")).bearer_auth(&t).send().await.expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().headers["authorization"], format!("Bearer {t}").as_str());
    gw.stop().await;
}

/// Regression: naming the identity headers in `Connection` (a hop-by-hop
/// list) made the gateway delete the verified identity it had just added,
/// so the upstream saw an authenticated request without its subject.
#[tokio::test]
async fn connection_header_cannot_remove_the_verified_identity() {
    let up = Upstream::start().await;
    let gw = Gateway::start("", &three_routes(&up)).await;
    let t = gw.token("alice", json!({ "roles": ["user"] }));
    let req = format!(
        "GET /req HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {t}\r\n\
         Connection: keep-alive, X-Auth-Subject, x-auth-roles, X-Forwarded-For, X-Forwarded-Proto\r\nConnection: close\r\n\r\n"
    );
    let resp = raw_request(&gw, req.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    let seen = up.last();
    assert_eq!(seen.headers.get("x-auth-subject").map(|v| v.as_bytes()), Some(&b"alice"[..]), "the subject was removed");
    assert_eq!(seen.headers.get("x-auth-roles").map(|v| v.as_bytes()), Some(&b"user"[..]), "the roles were removed");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    gw.stop().await;
}
