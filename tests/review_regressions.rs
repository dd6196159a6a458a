//! Regressions from the security review, each named after what broke.
mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROUTES: &str = "[[routes]]\npath = \"/api\"\nupstream = \"echo\"\nauth = \"public\"\n\n\
                      [[routes]]\npath = \"/api/admin\"\nupstream = \"echo\"\nroles = [\"admin\"]\n\n\
                      [[routes]]\npath = \"/\"\nupstream = \"echo\"\n";

/// A client-set X-Forwarded-Uri next to nginx's X-Original-URI chose the
/// route /auth/verify judged: a public route could stand in for /api/admin.
#[tokio::test]
async fn forward_auth_refuses_disagreeing_original_uri_headers() {
    let gw = Gateway::start("", ROUTES).await;
    let r = gw.client.get(gw.url("/auth/verify")).header("X-Original-URI", "/api/admin").send().await.expect("send");
    assert_eq!(r.status(), 401);
    let r = gw
        .client
        .get(gw.url("/auth/verify"))
        .header("X-Original-URI", "/api/admin")
        .header("X-Forwarded-Uri", "/api")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400, "disagreeing headers must not pick the weaker route");
    let r = gw
        .client
        .get(gw.url("/auth/verify"))
        .header("X-Original-URI", "/api/x")
        .header("X-Forwarded-Uri", "/api/x")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200, "agreeing headers are fine");
    // Two copies of one header: which the proxy used is unknown, so 400,
    // whatever their order.
    for (first, second) in [("/api", "/api/admin"), ("/api/admin", "/api")] {
        let r = gw
            .client
            .get(gw.url("/auth/verify"))
            .header("X-Forwarded-Uri", first)
            .header("x-forwarded-uri", second)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 400, "X-Forwarded-Uri {first} then {second}");
    }
    gw.stop().await;
}

/// `/api;/admin` matched the public `/api` route and was forwarded as is,
/// while Java upstreams serve it as `/api/admin`.
#[tokio::test]
async fn segment_params_do_not_escape_a_more_specific_route() {
    let gw = Gateway::start("", ROUTES).await;
    for path in ["/api;/admin", "/api;x=1/admin/users", "/api;/admin;jsessionid=2"] {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let answer = raw_request(&gw, raw.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(status_of(&answer), 401, "{path}: {answer}");
    }
    let user = gw.token("u", json!({"roles": ["user"]}));
    let raw = format!("GET /api;/admin HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {user}\r\nConnection: close\r\n\r\n");
    assert_eq!(status_of(&raw_request(&gw, raw.as_bytes(), Duration::from_secs(5)).await), 403);
    gw.stop().await;
}

/// A login body that never arrived held its connection (and a
/// max_connections slot) forever: no deadline applied inside the service.
#[tokio::test]
async fn a_stalled_login_body_gets_408_within_body_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("users.toml"), format!("[[users]]\nusername = \"a\"\npassword_hash = \"{}\"\n", quick_hash("pw")))
        .expect("users");
    let text = with_server(&config_text(dir.path(), "[login]\nusers_file = \"users.toml\"\n", ROUTES), "body_timeout = \"2s\"");
    let gw = Gateway::start_in(dir, &text).await;
    let mut s = raw_tls(&gw, &[b"http/1.1"]).await;
    s.write_all(b"POST /token HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nusername=a")
        .await
        .expect("write");
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.expect("an answer before 10s").expect("read");
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert_eq!(status_of(&answer), 408, "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    gw.stop().await;
}

/// Route rate limits applied only on the proxy path, never to /auth/verify.
#[tokio::test]
async fn forward_auth_applies_the_route_rate_limit() {
    let gw = Gateway::start("", "[[routes]]\npath = \"/\"\nupstream = \"echo\"\nrate_limit = \"2/minute\"\n").await;
    let token = gw.token("alice", json!({}));
    let verify = || gw.client.get(gw.url("/auth/verify")).header("X-Original-URI", "/x").bearer_auth(&token).send();
    assert_eq!(verify().await.expect("send").status(), 200);
    assert_eq!(verify().await.expect("send").status(), 200);
    let r = verify().await.expect("send");
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    gw.stop().await;
}

/// An upgraded (WebSocket) connection gave back its max_connections slot
/// and escaped idle_timeout as soon as hyper handed it over.
#[tokio::test]
async fn upgraded_connections_keep_their_slot_and_close_when_idle() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let routes = format!("[[routes]]\npath = \"/\"\nupstream = \"{}\"\n", up.url());
    let text = with_server(&config_text(dir.path(), "", &routes), "max_connections = 2\nidle_timeout = \"3s\"");
    let gw = Gateway::start_in(dir, &text).await;
    let token = gw.token("alice", json!({}));
    let upgrade = format!(
        "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    let mut tunnels = Vec::new();
    for _ in 0..2 {
        let mut s = raw_tls(&gw, &[b"http/1.1"]).await;
        s.write_all(upgrade.as_bytes()).await.expect("write");
        let mut buf = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("answer").expect("read");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"));
        tunnels.push(s);
    }
    // Both slots are held by the tunnels: a third client waits.
    let started = Instant::now();
    let third = tokio::spawn({
        let (client, url, token) = (gw.client.clone(), gw.url("/x"), token.clone());
        async move { client.get(url).bearer_auth(token).send().await.map(|r| r.status().as_u16()) }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!third.is_finished(), "a third connection was served while two tunnels held the slots");
    // Silent tunnels close at idle_timeout, and the third client gets in.
    let status = tokio::time::timeout(Duration::from_secs(10), third).await.expect("served once the tunnels idle out").expect("join");
    assert_eq!(status.expect("send"), 200);
    assert!(started.elapsed() >= Duration::from_secs(2), "served after {:?}", started.elapsed());
    for mut s in tunnels {
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("closed in time");
        assert!(matches!(r, Ok(0) | Err(_)), "the idle tunnel must be closed");
    }
    gw.stop().await;
}

/// From a trusted proxy, X-Forwarded-For got the resolved client appended
/// again instead of the proxy's own address: "1.2.3.4, 1.2.3.4".
#[tokio::test]
async fn x_forwarded_for_appends_the_socket_peer_even_behind_a_trusted_proxy() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let routes = format!("[[routes]]\npath = \"/\"\nupstream = \"{}\"\nauth = \"public\"\n", up.url());
    let text = with_server(&config_text(dir.path(), "", &routes), "trusted_proxies = [\"127.0.0.1/32\"]");
    let gw = Gateway::start_in(dir, &text).await;
    let r = gw.client.get(gw.url("/x")).header("X-Forwarded-For", "203.0.113.9").send().await.expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    gw.stop().await;
}

/// A login sent with the old password before a password change (its head
/// arrived on the App of the old users file, its body after the reload)
/// got a working access token and refresh family on the embedded and
/// memory stores: the check against the stored users-file entry ran for
/// Redis only.
#[tokio::test]
async fn a_login_judged_by_the_users_file_before_a_reload_opens_no_session_after_it() {
    for store in ["kind = \"embedded\"\npath = \"store.db\"", "kind = \"memory\""] {
        let users = |pw: &str| format!("[[users]]\nusername = \"alice\"\npassword_hash = \"{}\"\n", quick_hash(pw));
        let login = format!(
            "[login]\nusers_file = \"users.toml\"\nrate_limit = \"1000/minute\"\nrate_limit_per_username = \"1000/hour\"\n\n[store]\n{store}\n"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("users.toml"), users("old")).expect("users");
        let text = config_text(dir.path(), &login, ROUTES);
        let gw = Gateway::start_in(dir, &text).await;
        // The head, with `Expect: 100-continue`: the 100 comes once the
        // login handler reads the body, so the request is bound to this App.
        let body = "username=alice&password=old";
        let head = format!(
            "POST /token HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let mut s = raw_tls(&gw, &[b"http/1.1"]).await;
        s.write_all(head.as_bytes()).await.expect("write");
        let mut buf = vec![0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("a 100 in time").expect("read");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100"), "{store}: {}", String::from_utf8_lossy(&buf[..n]));
        // The operator changes alice's (leaked) password and reloads.
        std::fs::write(gw.dir.path().join("users.toml"), users("new")).expect("users");
        gw.running().reload().await.expect("reload");
        s.write_all(body.as_bytes()).await.expect("write");
        let mut answer = Vec::new();
        // Until the gateway closes (Connection: close) or a close without close_notify.
        while let Ok(n) = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.expect("an answer in time")
            && n > 0
        {
            answer.extend_from_slice(&buf[..n]);
        }
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert_eq!(status_of(&answer), 400, "{store}: the old password opened a session after the change: {answer}");
        assert!(body_of(&answer).contains("invalid_grant"), "{store}: {answer}");
        // The new password works, on the new App.
        let r = gw.client.post(gw.url("/token")).form(&[("username", "alice"), ("password", "new")]).send().await.expect("send");
        assert_eq!(r.status(), 200, "{store}");
        gw.stop().await;
    }
}
