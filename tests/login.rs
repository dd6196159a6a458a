//! Login end to end over TLS: /token (password and refresh grants),
//! /token/revoke, `authgate revoke`, the users file, the durable store and
//! the login rate limits.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use serde_json::{Value, json};

const ROUTES: &str = "[[routes]]\npath = \"/\"\nupstream = \"echo\"\n";
const GENEROUS: &str = "rate_limit = \"1000/minute\"\nrate_limit_per_username = \"1000/hour\"\n";

fn user(name: &str, hash: &str, extra: &str) -> String {
    format!("[[users]]\nusername = \"{name}\"\npassword_hash = \"{hash}\"\n{extra}\n")
}

fn alice_and_bob() -> String {
    user("alice", &quick_hash("pw-alice"), "roles = [\"user\", \"admin\"]\nclaims = { email = \"alice@example.com\", name = \"Alice\" }")
        + &user("bob", &quick_hash("pw-bob"), "roles = [\"user\"]")
        + &user("dora", &quick_hash("pw-dora"), "disabled = true")
}

/// Config text for `dir` with `[login]` (its body `login`) and `[store]` (its body `store`).
fn login_config(dir: &std::path::Path, login: &str, store: &str) -> String {
    config_text(dir, &format!("[login]\nusers_file = \"users.toml\"\n{login}\n[store]\n{store}\n"), ROUTES)
}

async fn start(users: &str, login: &str, store: &str) -> Gateway {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("users.toml"), users).expect("users");
    let text = login_config(dir.path(), login, store);
    Gateway::start_in(dir, &text).await
}

async fn post(gw: &Gateway, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
    gw.client.post(gw.url(path)).form(form).send().await.expect("send")
}

async fn password_login(gw: &Gateway, username: &str, password: &str) -> reqwest::Response {
    post(gw, "/token", &[("grant_type", "password"), ("username", username), ("password", password)]).await
}

/// Logs in and returns (access_token, refresh_token).
async fn tokens(gw: &Gateway, username: &str, password: &str) -> (String, String) {
    let r = password_login(gw, username, password).await;
    assert_eq!(r.status(), 200, "login of {username}");
    let body = json(r).await;
    (body["access_token"].as_str().expect("access").into(), body["refresh_token"].as_str().expect("refresh").into())
}

async fn refresh(gw: &Gateway, token: &str) -> reqwest::Response {
    post(gw, "/token", &[("grant_type", "refresh_token"), ("refresh_token", token)]).await
}

async fn call(gw: &Gateway, access: &str) -> u16 {
    gw.client.get(gw.url("/api")).bearer_auth(access).send().await.expect("send").status().as_u16()
}

fn decode(part: &str) -> Value {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).expect("base64url");
    serde_json::from_slice(&bytes).expect("json")
}

async fn assert_oauth_error(r: reqwest::Response, status: u16, error: &str) -> Value {
    assert_eq!(r.status(), status);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body = json(r).await;
    assert_eq!(body["error"], error, "{body}");
    body
}

/// Polls `f` until it returns true, failing after `limit`.
async fn eventually<F: AsyncFnMut() -> bool>(limit: Duration, what: &str, mut f: F) {
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn password_grant_issues_tokens_that_pass_the_proxy() {
    let gw = start(&alice_and_bob(), GENEROUS, "kind = \"memory\"").await;
    let r = password_login(&gw, "alice", "pw-alice").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert!(r.headers()["content-type"].to_str().expect("ct").starts_with("application/json"));
    let body = json(r).await;
    assert_eq!(body["token_type"], "bearer");
    assert!(body["expires_in"].as_u64().is_some_and(|s| s > 0));
    // >= 256 bits of randomness, base64url: at least 43 characters.
    assert!(body["refresh_token"].as_str().expect("refresh").len() >= 43);
    let access = body["access_token"].as_str().expect("access");
    let parts: Vec<&str> = access.split('.').collect();
    let (header, claims) = (decode(parts[0]), decode(parts[1]));
    assert!(header["kid"].as_str().is_some_and(|k| !k.is_empty()), "{header}");
    for c in ["sub", "iss", "aud", "iat", "nbf", "exp", "jti"] {
        assert!(claims.get(c).is_some(), "{c} missing from {claims}");
    }
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["roles"], json!(["user", "admin"]));
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["name"], "Alice");

    let r = gw.client.get(gw.url("/api")).bearer_auth(access).send().await.expect("send");
    assert_eq!(r.status(), 200);
    let echo = json(r).await;
    assert_eq!(echo["headers"]["x-auth-subject"], "alice");
    assert_eq!(echo["headers"]["x-auth-roles"], "user,admin");

    // FastAPI's OAuth2PasswordRequestForm clients send no grant_type at all.
    let r = post(&gw, "/token", &[("username", "bob"), ("password", "pw-bob")]).await;
    assert_eq!(r.status(), 200);
    gw.stop().await;
}

#[tokio::test]
async fn unknown_user_and_wrong_password_are_indistinguishable() {
    // Default argon2 parameters, so that a skipped hash would show in the timing.
    let users = user("alice", &authgate::users::hash_password("right").expect("hash"), "");
    let gw = start(&users, GENEROUS, "kind = \"memory\"").await;
    let mut wrong = Vec::new();
    let mut unknown = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let a = password_login(&gw, "alice", "wrong").await;
        wrong.push(t.elapsed());
        let t = Instant::now();
        let b = password_login(&gw, "nobody", "wrong").await;
        unknown.push(t.elapsed());
        assert_eq!((a.status().as_u16(), b.status().as_u16()), (400, 400));
        let (a, b) = (a.text().await.expect("body"), b.text().await.expect("body"));
        assert_eq!(a, b);
        assert_eq!(
            serde_json::from_str::<Value>(&a).expect("json"),
            json!({"error": "invalid_grant", "error_description": "invalid username or password"})
        );
    }
    wrong.sort();
    unknown.sort();
    let (w, u) = (wrong[2], unknown[2]);
    assert!(u * 3 > w && w * 3 > u, "median times differ too much: wrong password {w:?}, unknown user {u:?}");
    gw.stop().await;
}

#[tokio::test]
async fn token_endpoint_errors_follow_rfc6749() {
    let gw = start(&alice_and_bob(), GENEROUS, "kind = \"memory\"").await;
    let r = post(&gw, "/token", &[("grant_type", "password"), ("username", "alice")]).await;
    assert_oauth_error(r, 400, "invalid_request").await;
    let r = post(&gw, "/token", &[("grant_type", "refresh_token")]).await;
    assert_oauth_error(r, 400, "invalid_request").await;
    let r = post(&gw, "/token", &[("grant_type", "client_credentials")]).await;
    assert_oauth_error(r, 400, "unsupported_grant_type").await;
    let r = gw.client.post(gw.url("/token")).json(&json!({"username": "alice", "password": "pw-alice"})).send().await.expect("send");
    assert_oauth_error(r, 400, "invalid_request").await;
    let r = post(&gw, "/token", &[("username", "alice"), ("username", "bob"), ("password", "pw-bob")]).await;
    assert_oauth_error(r, 400, "invalid_request").await;
    let r = refresh(&gw, "not-a-refresh-token").await;
    assert_oauth_error(r, 400, "invalid_grant").await;
    // dora's password is right, but she is disabled.
    let r = password_login(&gw, "dora", "pw-dora").await;
    let body = assert_oauth_error(r, 400, "invalid_grant").await;
    assert_eq!(body["error_description"], "invalid username or password");

    let r = gw.client.get(gw.url("/token")).send().await.expect("send");
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    let r = gw.client.get(gw.url("/token/revoke")).send().await.expect("send");
    assert_eq!(r.status(), 405);
    let big = "x".repeat(64 * 1024);
    let r = post(&gw, "/token", &[("username", "alice"), ("password", &big)]).await;
    assert_eq!(r.status(), 413);
    assert_eq!(json(r).await["error"], "payload_too_large");
    // A Content-Length over the limit is refused before the body comes
    // (not after the body timeout), and without a 100 Continue.
    for expect in ["", "Expect: 100-continue\r\n"] {
        let req = format!(
            "POST /token HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: 20000\r\n{expect}\r\nusername=alice"
        );
        let started = Instant::now();
        let resp = raw_request(&gw, req.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(status_of(&resp), 413, "{expect:?}: {resp}");
        assert!(!resp.contains("100 Continue"), "{resp}");
        assert!(started.elapsed() < Duration::from_secs(3), "answered after {:?}", started.elapsed());
    }
    gw.stop().await;
}

#[tokio::test]
async fn htpasswd_bcrypt_users_can_log_in() {
    // Apache's `htpasswd -B` writes $2y$.
    let hash = bcrypt::hash("pw-carol", 4).expect("bcrypt").replacen("$2b$", "$2y$", 1);
    let htpasswd = format!("# made by htpasswd -B\ncarol:{hash}\n");
    let gw = start(&htpasswd, GENEROUS, "kind = \"memory\"").await;
    let (access, _) = tokens(&gw, "carol", "pw-carol").await;
    assert_eq!(call(&gw, &access).await, 200);
    let r = password_login(&gw, "carol", "wrong").await;
    assert_oauth_error(r, 400, "invalid_grant").await;
    gw.stop().await;
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_whole_family() {
    let gw = start(&alice_and_bob(), GENEROUS, "kind = \"memory\"").await;
    let (_, r1) = tokens(&gw, "alice", "pw-alice").await;
    let r = refresh(&gw, &r1).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body = json(r).await;
    let r2 = body["refresh_token"].as_str().expect("refresh").to_string();
    assert_ne!(r1, r2, "each use must return a new refresh token");
    let access = body["access_token"].as_str().expect("access");
    assert_eq!(decode(access.split('.').nth(1).expect("claims"))["roles"], json!(["user", "admin"]));
    assert_eq!(call(&gw, access).await, 200);

    // r1 again: a stolen copy. The family dies, r2 with it.
    assert_oauth_error(refresh(&gw, &r1).await, 400, "invalid_grant").await;
    assert_oauth_error(refresh(&gw, &r2).await, 400, "invalid_grant").await;

    // Another login starts a new, unaffected family.
    let (_, other) = tokens(&gw, "alice", "pw-alice").await;
    assert_eq!(refresh(&gw, &other).await.status(), 200);
    gw.stop().await;
}

#[tokio::test]
async fn refresh_ttl_bounds_the_family_from_first_login() {
    let gw = start(&alice_and_bob(), &format!("{GENEROUS}refresh_ttl = \"2s\"\n"), "kind = \"memory\"").await;
    let started = Instant::now();
    let (_, mut current) = tokens(&gw, "alice", "pw-alice").await;
    // Rotating keeps the family alive only until refresh_ttl after the login.
    let deadline = started + Duration::from_secs(10);
    loop {
        let r = refresh(&gw, &current).await;
        if r.status() != 200 {
            assert_oauth_error(r, 400, "invalid_grant").await;
            break;
        }
        current = json(r).await["refresh_token"].as_str().expect("refresh").into();
        assert!(Instant::now() < deadline, "the family outlived refresh_ttl");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(started.elapsed() >= Duration::from_secs(1), "ended too early: {:?}", started.elapsed());
    gw.stop().await;
}

#[tokio::test]
async fn revoked_access_token_gets_401_and_revoked_refresh_token_ends_its_family() {
    let gw = start(&alice_and_bob(), GENEROUS, "kind = \"memory\"").await;
    let (access, r1) = tokens(&gw, "alice", "pw-alice").await;
    let (other_access, _) = tokens(&gw, "alice", "pw-alice").await;
    assert_eq!(call(&gw, &access).await, 200);
    let r = post(&gw, "/token/revoke", &[("token", &access), ("token_type_hint", "access_token")]).await;
    assert_eq!(r.status(), 200);
    let r = gw.client.get(gw.url("/api")).bearer_auth(&access).send().await.expect("send");
    assert_eq!(r.status(), 401);
    assert_eq!(json(r).await["error"], "invalid_token");
    assert_eq!(call(&gw, &other_access).await, 200, "only that token is revoked");

    // Revoking a used refresh token ends the family, including its live successor.
    let r2 = json(refresh(&gw, &r1).await).await["refresh_token"].as_str().expect("refresh").to_string();
    assert_eq!(post(&gw, "/token/revoke", &[("token", &r1)]).await.status(), 200);
    assert_oauth_error(refresh(&gw, &r2).await, 400, "invalid_grant").await;

    // RFC 7009: unknown tokens are fine; a missing token is not.
    assert_eq!(post(&gw, "/token/revoke", &[("token", "no-such-token")]).await.status(), 200);
    assert_eq!(post(&gw, "/token/revoke", &[("token", "a.b.c")]).await.status(), 200);
    assert_oauth_error(post(&gw, "/token/revoke", &[("token_type_hint", "refresh_token")]).await, 400, "invalid_request").await;
    gw.stop().await;
}

#[tokio::test]
async fn every_password_attempt_counts_against_the_ip_limit_but_refresh_does_not() {
    let gw = start(&alice_and_bob(), "rate_limit = \"3/minute\"\nrate_limit_per_username = \"100/hour\"\n", "kind = \"memory\"").await;
    let (_, r1) = tokens(&gw, "alice", "pw-alice").await;
    assert_eq!(password_login(&gw, "alice", "bad").await.status(), 400);
    assert_eq!(password_login(&gw, "bob", "bad").await.status(), 400);
    let r = password_login(&gw, "bob", "pw-bob").await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str().expect("ascii").parse().expect("whole seconds");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(json(r).await["error"], "rate_limited");
    // Refresh grants are not password attempts.
    let mut current = r1;
    for _ in 0..3 {
        let r = refresh(&gw, &current).await;
        assert_eq!(r.status(), 200);
        current = json(r).await["refresh_token"].as_str().expect("refresh").into();
    }
    gw.stop().await;
}

#[tokio::test]
async fn username_limit_holds_across_ips_and_ip_comes_from_trusted_x_forwarded_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("users.toml"), alice_and_bob()).expect("users");
    let text = login_config(dir.path(), "rate_limit = \"2/minute\"\nrate_limit_per_username = \"3/hour\"\n", "kind = \"memory\"").replacen(
        "[server]\n",
        "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
        1,
    );
    let gw = Gateway::start_in(dir, &text).await;
    let from = async |ip: &str, user: &str| {
        let form = [("username", user), ("password", "bad")];
        gw.client.post(gw.url("/token")).header("x-forwarded-for", ip).form(&form).send().await.expect("send").status().as_u16()
    };
    // Per IP (the X-Forwarded-For client, since the peer is a trusted proxy).
    assert_eq!(from("203.0.113.1", "bob").await, 400);
    assert_eq!(from("203.0.113.1", "nobody").await, 400);
    assert_eq!(from("203.0.113.1", "dora").await, 429);
    assert_eq!(from("203.0.113.2", "dora").await, 400, "another client IP has its own budget");
    // Per username, whatever the IP: alice gets 3 attempts an hour.
    assert_eq!(from("198.51.100.1", "alice").await, 400);
    assert_eq!(from("198.51.100.2", "alice").await, 400);
    assert_eq!(from("198.51.100.3", "alice").await, 400);
    assert_eq!(from("198.51.100.4", "alice").await, 429);
    assert_eq!(from("198.51.100.4", "bob").await, 400);
    gw.stop().await;
}

#[tokio::test]
async fn a_full_password_queue_answers_503_at_once() {
    let gw = start(&alice_and_bob(), GENEROUS, "kind = \"memory\"").await;
    let slots = gw.app().login.as_ref().expect("login").hash_slots.clone();
    let all = u32::try_from(slots.available_permits()).expect("permits");
    let held = slots.clone().acquire_many_owned(all).await.expect("permits");
    let t = Instant::now();
    let r = password_login(&gw, "alice", "pw-alice").await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(json(r).await["error"], "unavailable");
    assert!(t.elapsed() < Duration::from_secs(2), "took {:?}", t.elapsed());
    drop(held);
    assert_eq!(password_login(&gw, "alice", "pw-alice").await.status(), 200);
    gw.stop().await;
}

/// Regression (DoS review F4): every admitted password check ran at once
/// (cores × 2 + 2 of them), each holding a core and ~19 MiB, so a login
/// flood took every core from proxied traffic. At most one core fewer than
/// the machine has runs checks; an admitted login waits for its turn
/// (neither refused nor hashing) and is served when one frees.
#[tokio::test]
async fn password_checks_leave_a_core_to_the_proxy_and_an_admitted_login_waits_its_turn() {
    let gw = start(&alice_and_bob(), GENEROUS, "kind = \"memory\"").await;
    let app = gw.app();
    let login = app.login.as_ref().expect("login");
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let running = u32::try_from(login.hash_running.available_permits()).expect("permits");
    assert_eq!(running as usize, cores.saturating_sub(1).max(1), "checks running at once");
    let held = login.hash_running.clone().acquire_many_owned(running).await.expect("permits");
    let admitted = login.hash_slots.available_permits();
    let waiting = {
        let (url, client) = (gw.url("/token"), gw.client.clone());
        let form = [("grant_type", "password"), ("username", "alice"), ("password", "pw-alice")];
        tokio::spawn(async move { client.post(url).form(&form).send().await.map(|r| r.status().as_u16()) })
    };
    while login.hash_slots.available_permits() == admitted {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!waiting.is_finished(), "an admitted login waits for a running slot (no 503, no hashing)");
    drop(held);
    let status = tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("served once a slot frees").expect("task");
    assert_eq!(status.expect("send"), 200);
    gw.stop().await;
}

#[tokio::test]
async fn cli_revoke_reaches_a_running_gateway_and_login_works_right_after() {
    let gw = start(&alice_and_bob(), GENEROUS, "kind = \"embedded\"\npath = \"data/authgate.db\"").await;
    let (access, refresh_token) = tokens(&gw, "alice", "pw-alice").await;
    let (bob, _) = tokens(&gw, "bob", "pw-bob").await;
    assert_eq!(call(&gw, &access).await, 200);

    cli(&gw, &["revoke", "--sub", "alice"]);
    // Logging in again at once, in the cut-off's second, gives a token that
    // is not caught by the cut-off; so does `authgate token`.
    let (fresh, _) = tokens(&gw, "alice", "pw-alice").await;
    let minted = cli(&gw, &["token", "--sub", "alice"]);

    eventually(Duration::from_secs(5), "the gateway refuses the revoked token", async || call(&gw, &access).await == 401).await;
    assert_oauth_error(refresh(&gw, &refresh_token).await, 400, "invalid_grant").await;
    assert_eq!(call(&gw, &bob).await, 200, "other subjects are untouched");
    assert_eq!(call(&gw, &fresh).await, 200, "a login right after the revocation must work");
    assert_eq!(call(&gw, &minted).await, 200, "a token minted right after the revocation must work");
    // And a revoke right after that minting catches it, though its iat is
    // the first revoke's cut-off (the same second, or the next).
    cli(&gw, &["revoke", "--sub", "alice"]);
    eventually(Duration::from_secs(5), "the second revoke catches the token minted after the first", async || {
        call(&gw, &minted).await == 401 && call(&gw, &fresh).await == 401
    })
    .await;
    gw.stop().await;
}

#[tokio::test]
async fn cli_revoke_with_a_memory_store_is_a_config_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("users.toml"), alice_and_bob()).expect("users");
    std::fs::write(dir.path().join("config.toml"), login_config(dir.path(), "", "kind = \"memory\"")).expect("config");
    let out = std::process::Command::new(bin())
        .args(["revoke", "--sub", "alice", "--config"])
        .arg(dir.path().join("config.toml"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("store.kind"));
}

/// A `store.path` no gateway has created (a typo, another config): the
/// revocation would go into a new database that no gateway reads.
#[tokio::test]
async fn cli_revoke_into_a_store_no_gateway_created_is_a_config_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("users.toml"), alice_and_bob()).expect("users");
    let text = login_config(dir.path(), "", "kind = \"embedded\"\npath = \"data/authgate-typo.db\"");
    std::fs::write(dir.path().join("config.toml"), text).expect("config");
    let out = std::process::Command::new(bin())
        .args(["revoke", "--sub", "alice", "--config"])
        .arg(dir.path().join("config.toml"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("store.path"));
    assert!(!dir.path().join("data").exists(), "revoke created a database (or its folder)");
}

#[tokio::test]
async fn revocation_acknowledged_with_200_survives_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("users.toml"), alice_and_bob()).expect("users");
    let text = login_config(dir.path(), GENEROUS, "kind = \"embedded\"\npath = \"data/authgate.db\"");
    let spawned = spawn_binary(dir, &text, &[]);
    let gw = &spawned.gw;
    let (revoked, revoked_refresh) = tokens(gw, "alice", "pw-alice").await;
    let (kept, kept_refresh) = tokens(gw, "alice", "pw-alice").await;
    assert_eq!(post(gw, "/token/revoke", &[("token", &revoked)]).await.status(), 200);
    assert_eq!(post(gw, "/token/revoke", &[("token", &revoked_refresh)]).await.status(), 200);
    let dir = spawned.kill9();

    let spawned = spawn_binary(dir, &text, &[]);
    let gw = &spawned.gw;
    assert_eq!(call(gw, &revoked).await, 401);
    assert_oauth_error(refresh(gw, &revoked_refresh).await, 400, "invalid_grant").await;
    assert_eq!(call(gw, &kept).await, 200, "tokens not revoked still work after the restart");
    assert_eq!(refresh(gw, &kept_refresh).await.status(), 200, "refresh families survive the restart");
}

#[tokio::test]
async fn password_change_disabling_or_removal_in_the_users_file_ends_sessions() {
    let carol_hash = quick_hash("pw-carol");
    let users = |alice_pw: &str, bob_disabled: bool, with_dora: bool| {
        let mut s = user("alice", &quick_hash(alice_pw), "") + &user("bob", &quick_hash("pw-bob"), &format!("disabled = {bob_disabled}"));
        s += &user("carol", &carol_hash, "");
        if with_dora {
            s += &user("dora", &quick_hash("pw-dora"), "");
        }
        s
    };
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("users.toml"), users("old", false, true)).expect("users");
    let text = login_config(dir.path(), GENEROUS, "kind = \"embedded\"\npath = \"data/authgate.db\"");
    let gw = Gateway::start_in(dir, &text).await;
    let (alice, alice_refresh) = tokens(&gw, "alice", "old").await;
    let (bob, bob_refresh) = tokens(&gw, "bob", "pw-bob").await;
    let (dora, _) = tokens(&gw, "dora", "pw-dora").await;
    let carol = gw.token("carol", json!({}));
    let Gateway { running, dir, .. } = gw;
    running.expect("running").shutdown().await;

    // carol's entry is byte-for-byte the same; alice's password changed,
    // bob is disabled, dora is gone.
    std::fs::write(dir.path().join("users.toml"), users("new", true, false)).expect("users");
    let gw = Gateway::start_in(dir, &text).await;
    assert_eq!(call(&gw, &alice).await, 401);
    assert_eq!(call(&gw, &bob).await, 401);
    assert_eq!(call(&gw, &dora).await, 401);
    assert_eq!(call(&gw, &carol).await, 200);
    assert_oauth_error(refresh(&gw, &alice_refresh).await, 400, "invalid_grant").await;
    assert_oauth_error(refresh(&gw, &bob_refresh).await, 400, "invalid_grant").await;
    assert_oauth_error(password_login(&gw, "alice", "old").await, 400, "invalid_grant").await;
    assert_oauth_error(password_login(&gw, "bob", "pw-bob").await, 400, "invalid_grant").await;
    let (fresh, _) = tokens(&gw, "alice", "new").await;
    assert_eq!(call(&gw, &fresh).await, 200);
    gw.stop().await;
}

#[tokio::test]
async fn the_shipped_users_file_logs_in_the_demo_user() {
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/users.toml")).expect("shipped users.toml");
    let gw = start(&shipped, GENEROUS, "kind = \"memory\"").await;
    let (access, _) = tokens(&gw, "alice@example.com", "secret123").await;
    let claims = decode(access.split('.').nth(1).expect("claims"));
    assert_eq!(claims["roles"], json!(["user"]));
    assert_eq!(claims["email"], "alice@example.com");
    assert!(claims["name"].is_string());
    assert_eq!(call(&gw, &access).await, 200);
    gw.stop().await;
}

/// `authgate check` on a config in a fresh folder; returns (exit code, stderr).
fn check(users: &str, edit: impl Fn(String) -> String) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("users.toml"), users).expect("users");
    let text = edit(login_config(dir.path(), "", "kind = \"memory\""));
    std::fs::write(dir.path().join("config.toml"), text).expect("config");
    let out = std::process::Command::new(bin())
        .arg("check")
        .arg("--config")
        .arg(dir.path().join("config.toml"))
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .output()
        .expect("run authgate check");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn demo_user_on_a_public_listener_is_warned_about() {
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/users.toml")).expect("shipped users.toml");
    let (code, stderr) = check(&shipped, |t| t.replacen("listen = \"127.0.0.1:0\"", "listen = \"0.0.0.0:0\"", 1));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("DEMO USER") && stderr.contains("alice@example.com"), "no warning in: {stderr}");
    let (code, stderr) = check(&shipped, |t| t);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("DEMO USER"), "warned on loopback: {stderr}");
}

#[test]
fn a_bad_users_file_is_a_config_error_naming_the_file_and_key() {
    let good = user("alice", &quick_hash("pw"), "");
    let cases = [
        (
            good.clone() + &user("bob", "$1$md5$notsupported", ""),
            "users.toml: users[1].password_hash: not an argon2id or bcrypt PHC string",
        ),
        (good.clone() + &user("alice", &quick_hash("x"), ""), "users.toml: users[1].username"),
        (user("eve", &quick_hash("pw"), "claims = { sub = \"admin\" }"), "users.toml: users[0].claims.sub"),
        (user("eve", &quick_hash("pw"), "disable = true"), "users.toml: users[0]"),
        ("mallory:$apr1$abc$def\n".to_string(), "users.toml: line 1: only bcrypt"),
    ];
    for (users, want) in cases {
        let (code, stderr) = check(&users, |t| t);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains(want), "wanted {want:?} in: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // A Redis store that cannot be reached: one clear line, no panic, and
    // exit 2 like every failed `check` (SPEC §1).
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let redis = format!("kind = \"redis\"\nredis_url = \"redis://127.0.0.1:{port}\"");
    let (code, stderr) = check(&good, |t| t.replacen("kind = \"memory\"", &redis, 1));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("redis is unreachable") && !stderr.contains("panicked"), "{stderr}");
}

/// `authgate check` writes nothing and changes no state. On a fresh
/// directory it generates no signing key, certificate or store file (it
/// says which the gateway would generate). Pointed at a running gateway's
/// store with a changed users file, as an operator checks a file before
/// deploying it, it revokes nobody: the gateway's tokens keep working.
#[tokio::test]
async fn check_writes_nothing_and_revokes_nobody() {
    let store = "kind = \"embedded\"\npath = \"data/authgate.db\"";
    let fresh = tempfile::tempdir().expect("tempdir");
    std::fs::write(fresh.path().join("users.toml"), alice_and_bob()).expect("users");
    std::fs::write(fresh.path().join("config.toml"), login_config(fresh.path(), GENEROUS, store)).expect("config");
    let before = std::fs::read_dir(fresh.path()).expect("dir").count();
    let out = std::process::Command::new(bin())
        .args(["check", "--config", &fresh.path().join("config.toml").display().to_string()])
        .output()
        .expect("run check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("is valid") && stdout.contains("jwt.generate_signing_key") && stdout.contains("tls.generate_self_signed"),
        "{stdout}"
    );
    // The gateway will sign (its key is generated at start), not verify only.
    assert!(stdout.contains("signing=yes (its key is generated at start)"), "{stdout}");
    let after: Vec<_> = std::fs::read_dir(fresh.path()).expect("dir").filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    assert_eq!(after.len(), before, "check wrote files: {after:?}");

    let gw = start(&alice_and_bob(), GENEROUS, store).await;
    let (access, refresh_token) = tokens(&gw, "alice", "pw-alice").await;
    assert_eq!(call(&gw, &access).await, 200);
    // The staged users file: alice has a new password, bob is gone.
    let staged = gw.dir.path().join("staged-users.toml");
    std::fs::write(&staged, user("alice", &quick_hash("new-pw"), "")).expect("staged users");
    let text = std::fs::read_to_string(gw.dir.path().join("config.toml")).expect("config");
    let staged_config = gw.dir.path().join("staged.toml");
    std::fs::write(&staged_config, text.replace("users_file = \"users.toml\"", "users_file = \"staged-users.toml\""))
        .expect("staged config");
    let out =
        std::process::Command::new(bin()).args(["check", "--config", &staged_config.display().to_string()]).output().expect("run check");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    // The gateway reads revocations from its store every second or so.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(call(&gw, &access).await, 200, "check revoked a live token");
    assert_eq!(refresh(&gw, &refresh_token).await.status(), 200, "check revoked a live refresh token");
    gw.stop().await;
}

/// Runs `authgate ARGS --config <gw's config>`, which must succeed; its stdout.
fn cli(gw: &Gateway, args: &[&str]) -> String {
    let out =
        std::process::Command::new(bin()).args(args).arg("--config").arg(gw.dir.path().join("config.toml")).output().expect("run authgate");
    assert!(out.status.success(), "authgate {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// revoke, token, revoke, all in one second: the token was issued at the
/// first revoke's cut-off (so that it would be accepted), and the second
/// revoke must still catch it (`store::next_cutoff`).
#[tokio::test]
async fn a_second_revoke_in_the_same_second_catches_a_token_minted_between() {
    let gw = start(&alice_and_bob(), GENEROUS, "kind = \"embedded\"\npath = \"data/authgate.db\"").await;
    let cli = |args: &[&str]| cli(&gw, args);
    // Start just after a second begins, so the three commands share it.
    let into_second = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").subsec_millis();
    tokio::time::sleep(Duration::from_millis(u64::from(1010 - into_second))).await;
    cli(&["revoke", "--sub", "bob"]);
    let minted = cli(&["token", "--sub", "bob"]);
    cli(&["revoke", "--sub", "bob"]);
    eventually(Duration::from_secs(5), "the second revoke catches the token minted between", async || call(&gw, &minted).await == 401)
        .await;
    // A token minted afterwards is accepted.
    let after = cli(&["token", "--sub", "bob"]);
    assert_eq!(call(&gw, &after).await, 200);
    gw.stop().await;
}

/// Many revokes of one subject in one burst move its cut-off seconds
/// ahead (each must catch tokens issued at the last); tokens issued at that
/// cut-off are not refused as "issued in the future", by `authgate token`
/// or by a login.
#[tokio::test]
async fn a_burst_of_revokes_does_not_lock_the_subject_out() {
    let gw = start(&alice_and_bob(), GENEROUS, "kind = \"embedded\"\npath = \"data/authgate.db\"").await;
    let cli = |args: &[&str]| cli(&gw, args);
    for _ in 0..12 {
        cli(&["revoke", "--sub", "bob"]);
    }
    let minted = cli(&["token", "--sub", "bob"]);
    eventually(Duration::from_secs(5), "a token minted after the burst is accepted", async || call(&gw, &minted).await == 200).await;
    let (access, _) = tokens(&gw, "bob", "pw-bob").await;
    assert_eq!(call(&gw, &access).await, 200, "a login after the burst works");
    gw.stop().await;
}

/// A token without `jti` (an IdP's, or one minted elsewhere with the key)
/// can be revoked too, by the digest of its signed part; and a copy whose
/// ECDSA signature was rewritten into another valid one (s -> n - s) is
/// revoked with it. It used to be accepted until it expired, revoke or not.
#[tokio::test]
async fn a_token_without_jti_can_be_revoked() {
    let gw = start(&alice_and_bob(), GENEROUS, "kind = \"memory\"").await;
    let now = authgate::jwt::now_secs();
    let claims = json!({ "sub": "bob", "iss": "authgate", "aud": "api", "iat": now, "exp": now + 600 });
    let pem = std::fs::read(gw.dir.path().join("jwt.pem")).expect("the gateway's key");
    let key = jsonwebtoken::EncodingKey::from_ec_pem(&pem).expect("an EC key");
    let token = jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256), &claims, &key).expect("sign");
    let high_s = with_high_s(&token);
    for t in [&token, &high_s] {
        assert_eq!(gw.client.get(gw.url("/x")).bearer_auth(t).send().await.expect("send").status(), 200);
    }
    let r = post(&gw, "/token/revoke", &[("token", &token)]).await;
    assert_eq!(r.status(), 200);
    for t in [&token, &high_s] {
        let r = gw.client.get(gw.url("/x")).bearer_auth(t).send().await.expect("send");
        assert_eq!(r.status(), 401, "a revoked token without jti");
        assert!(r.headers()["www-authenticate"].to_str().expect("ascii").contains("revoked"));
    }
    // Another token of the same subject is not caught by it.
    let other = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &json!({ "sub": "bob", "iss": "authgate", "aud": "api", "iat": now, "exp": now + 601 }),
        &key,
    )
    .expect("sign");
    assert_eq!(gw.client.get(gw.url("/x")).bearer_auth(&other).send().await.expect("send").status(), 200);
    gw.stop().await;
}

/// The same ES256 token with its signature's s replaced by n - s: still a
/// valid signature over the same header and payload.
fn with_high_s(token: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (signed, sig) = token.rsplit_once('.').expect("three parts");
    let sig = b64.decode(sig).expect("base64url");
    // The order of P-256, big-endian.
    let n: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17,
        0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
    ];
    let s = &sig[32..];
    let mut out = [0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(n[i]) - i16::from(s[i]) - borrow;
        borrow = i16::from(d < 0);
        out[i] = (d + 256 * borrow) as u8;
    }
    let mut sig2 = sig[..32].to_vec();
    sig2.extend_from_slice(&out);
    format!("{signed}.{}", b64.encode(sig2))
}

/// A store that, once armed, records a revoke-all of the subject just
/// before the cut-off is read to mint a token: the moment a concurrent
/// `authgate revoke --sub`, or another replica loading a changed users
/// file, lands in the middle of a login or a refresh.
struct RevokeMidway {
    inner: authgate::store::memory::MemoryStore,
    armed: std::sync::atomic::AtomicBool,
}

impl authgate::store::Store for RevokeMidway {
    fn create_family(&self, f: &str, s: &str, t: &authgate::store::TokenHash, n: u64, e: u64) -> authgate::store::Result<()> {
        self.inner.create_family(f, s, t, n, e)
    }
    fn rotate_refresh(
        &self,
        o: &authgate::store::TokenHash,
        n: &authgate::store::TokenHash,
        now: u64,
    ) -> authgate::store::Result<authgate::store::Rotation> {
        self.inner.rotate_refresh(o, n, now)
    }
    fn revoke_refresh(&self, t: &authgate::store::TokenHash) -> authgate::store::Result<bool> {
        self.inner.revoke_refresh(t)
    }
    fn revoke_family(&self, f: &str) -> authgate::store::Result<()> {
        self.inner.revoke_family(f)
    }
    fn family_live(&self, f: &str) -> authgate::store::Result<bool> {
        self.inner.family_live(f)
    }
    fn revoke_jti(&self, j: &str, u: u64) -> authgate::store::Result<()> {
        self.inner.revoke_jti(j, u)
    }
    fn revoke_subject(&self, s: &str, c: u64) -> authgate::store::Result<()> {
        self.inner.revoke_subject(s, c)
    }
    fn subject_cutoff(&self, s: &str) -> authgate::store::Result<Option<u64>> {
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.inner.revoke_subject(s, authgate::jwt::now_secs() + 1)?;
        }
        self.inner.subject_cutoff(s)
    }
    fn revocations_since(&self, c: authgate::store::Cursor) -> authgate::store::Result<authgate::store::Revocations> {
        self.inner.revocations_since(c)
    }
    fn user_fingerprints(&self) -> authgate::store::Result<Vec<(String, authgate::store::TokenHash)>> {
        self.inner.user_fingerprints()
    }
    fn set_user_fingerprint(&self, u: &str, f: Option<&authgate::store::TokenHash>) -> authgate::store::Result<()> {
        self.inner.set_user_fingerprint(u, f)
    }
    fn prune(&self, now: u64) -> authgate::store::Result<u64> {
        self.inner.prune(now)
    }
    fn shared_limits(&self) -> bool {
        false
    }
    fn rate_limit(&self, _: &[authgate::store::RateCheck]) -> authgate::store::Result<Option<Duration>> {
        Ok(None)
    }
    fn follow(&self, _: &std::sync::Arc<tokio::sync::Notify>) {}
}

/// A revoke-all that lands while a login or a refresh runs (after its
/// family was written, before the token was minted) ends that session: the
/// token, issued at the new cut-off, would have survived it.
#[tokio::test]
async fn a_revoke_all_during_a_login_or_a_refresh_ends_that_session() {
    let gw = start(&alice_and_bob(), GENEROUS, "kind = \"memory\"").await;
    let config = authgate::config::load(&gw.dir.path().join("config.toml")).expect("config");
    let mut app = authgate::build_app(config).expect("app");
    let store = std::sync::Arc::new(RevokeMidway { inner: Default::default(), armed: false.into() });
    app.store = store.clone();
    gw.running().reloader.install(std::sync::Arc::new(app));

    let (_, refresh_token) = tokens(&gw, "bob", "pw-bob").await;
    store.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let r = password_login(&gw, "alice", "pw-alice").await;
    assert_eq!(r.status(), 400, "a login the revoke-all landed in: {}", r.text().await.unwrap_or_default());
    store.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(refresh(&gw, &refresh_token).await.status(), 400, "a refresh the revoke-all landed in");
    // Right after a revoke-all, logins work again.
    tokens(&gw, "alice", "pw-alice").await;
    tokens(&gw, "bob", "pw-bob").await;
    // A cut-off the denylist holds and the store does not (a store that lost
    // its data, before the write-back) is no revoke-all during a refresh.
    gw.app().denylist.revoke_subject("bob", authgate::jwt::now_secs() + 5);
    let (_, r) = tokens(&gw, "bob", "pw-bob").await;
    assert_eq!(refresh(&gw, &r).await.status(), 200, "a refresh refused for the denylist's cut-off alone");
    gw.stop().await;
}
