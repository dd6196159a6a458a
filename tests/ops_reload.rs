//! Hot reload in-process: ten reloads under keep-alive traffic fail no
//! request; a changed route, users file, certificate and signing key take
//! effect for new requests; the store, the denylist and the metrics carry
//! over; an invalid config leaves the old one serving; `server.watch`
//! reloads on file changes.
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;

fn routes(flip_auth: &str) -> String {
    format!(
        "[[routes]]\npath = \"/\"\nupstream = \"echo\"\n\n[[routes]]\npath = \"/pub\"\nupstream = \"echo\"\nauth = \"public\"\n\n\
         [[routes]]\npath = \"/flip\"\nupstream = \"echo\"\nauth = \"{flip_auth}\"\n"
    )
}

const LOGIN: &str = "[login]\nusers_file = \"users.toml\"\nrate_limit = \"1000/minute\"\nrate_limit_per_username = \"1000/hour\"\n\n[store]\nkind = \"memory\"\n";

fn users(names: &[&str]) -> String {
    names.iter().map(|n| format!("[[users]]\nusername = \"{n}\"\npassword_hash = \"{}\"\n\n", quick_hash(&format!("pw-{n}")))).collect()
}

async fn start(server: &str) -> Gateway {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("users.toml"), users(&["alice"])).expect("users");
    let text = with_server(&config_text(dir.path(), LOGIN, &routes("required")), server);
    Gateway::start_in(dir, &text).await
}

fn write_config(gw: &Gateway, flip_auth: &str, server: &str) {
    let text = with_server(&config_text(gw.dir.path(), LOGIN, &routes(flip_auth)), server);
    std::fs::write(gw.dir.path().join("config.toml"), text).expect("write config");
}

async fn status(client: &reqwest::Client, url: &str) -> u16 {
    client.get(url).send().await.expect("send").status().as_u16()
}

async fn login(gw: &Gateway, user: &str) -> reqwest::Response {
    let form = [("username", user.to_string()), ("password", format!("pw-{user}"))];
    gw.client.post(gw.url("/token")).form(&form).send().await.expect("send")
}

/// Three keep-alive client loops (two HTTP/1.1, one HTTP/2) with `token`.
fn traffic(gw: &Gateway, token: &str, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<(usize, Vec<String>)>> {
    traffic_loops(&gw.cert_path(), &gw.url("/"), Some(token), &[false, false, true], stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_reloads_under_traffic_fail_no_request_and_apply_each_change() {
    let gw = start("").await;
    let token = gw.token("svc", serde_json::json!({}));
    // State that must survive the reloads: a refresh token (store), a revoked access token (denylist).
    let tokens = common::json(login(&gw, "alice").await).await;
    let refresh = tokens["refresh_token"].as_str().expect("refresh").to_string();
    let revoked = tokens["access_token"].as_str().expect("access").to_string();
    let r = gw.client.post(gw.url("/token/revoke")).form(&[("token", revoked.as_str())]).send().await.expect("revoke");
    assert_eq!(r.status(), 200);
    let metrics_before = gw.app().metrics.clone();

    let stop = Arc::new(AtomicBool::new(false));
    let loops = traffic(&gw, &token, stop.clone());
    let served = Arc::new(AtomicUsize::new(0));
    for i in 0..10 {
        let before = gw.app();
        let flip = if i % 2 == 0 { "public" } else { "required" };
        write_config(&gw, flip, "");
        gw.running().reload().await.unwrap_or_else(|e| panic!("reload {i}: {e:#}"));
        assert!(!Arc::ptr_eq(&before, &gw.app()), "reload {i} did not swap the App");
        let want = if flip == "public" { 200 } else { 401 };
        assert_eq!(status(&gw.client, &gw.url("/flip")).await, want, "reload {i}: /flip is {flip}");
        served.fetch_add(1, Ordering::Relaxed);
    }
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for t in loops {
        let (o, f) = t.await.expect("traffic task");
        ok += o;
        failed.extend(f);
    }
    assert!(failed.is_empty(), "{} failed requests during reloads, e.g. {:?}", failed.len(), &failed[..failed.len().min(5)]);
    assert!(ok >= 30, "only {ok} requests were served during ten reloads");

    assert!(Arc::ptr_eq(&metrics_before, &gw.app().metrics), "metrics must carry over");
    let r = gw.client.get(gw.url("/")).bearer_auth(&revoked).send().await.expect("send");
    assert_eq!(r.status(), 401, "a token revoked before the reloads must stay revoked");
    let r =
        gw.client.post(gw.url("/token")).form(&[("grant_type", "refresh_token"), ("refresh_token", &refresh)]).send().await.expect("send");
    assert_eq!(r.status(), 200, "the store (memory) must carry over: the refresh token still works");
}

#[tokio::test]
async fn an_invalid_config_is_refused_and_the_old_one_keeps_serving() {
    let gw = start("").await;
    let before = gw.app();
    let text = config_text(gw.dir.path(), LOGIN, &routes("public"))
        .replace("upstream = \"echo\"\nauth = \"public\"", "upstream = \"ftp://x\"\nauth = \"public\"");
    std::fs::write(gw.dir.path().join("config.toml"), text).expect("write");
    let err = gw.running().reload().await.expect_err("an invalid config must be refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("config.toml") && msg.contains("routes[1].upstream"), "the error must name the file and key: {msg}");
    assert!(Arc::ptr_eq(&before, &gw.app()), "the old App must keep serving");
    assert_eq!(status(&gw.client, &gw.url("/flip")).await, 401, "the old config (flip required) still applies");
    let token = gw.token("svc", serde_json::json!({}));
    let r = gw.client.get(gw.url("/")).bearer_auth(&token).send().await.expect("send");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn restart_only_settings_are_reported_and_the_rest_applies() {
    let gw = start("").await;
    write_config(&gw, "public", "max_connections = 7");
    let r = gw.running().reload().await.expect("reload");
    assert_eq!(r.restart_needed, vec!["server.max_connections"]);
    assert_eq!(status(&gw.client, &gw.url("/flip")).await, 200, "the route change applies anyway");
}

#[tokio::test]
async fn a_new_certificate_users_file_and_signing_key_apply_after_reload() {
    let gw = start("").await;
    let old_token = gw.token("svc", serde_json::json!({}));
    // A keep-alive connection made before the reload, trusting only the old certificate.
    let old_client = client_for(&gw.cert_path(), false);
    assert_eq!(status(&old_client, &gw.url("/pub")).await, 200);
    let old_cert = std::fs::read(gw.cert_path()).expect("cert");

    let fresh = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (fresh.path().join("cert.pem"), fresh.path().join("key.pem"));
    authgate::tls::generate_self_signed(&cert, &key, &["localhost".into()]).expect("cert");
    std::fs::rename(&key, gw.dir.path().join("key.pem")).expect("key");
    std::fs::rename(&cert, gw.cert_path()).expect("cert");
    let jwt = gw.dir.path().join("jwt.pem");
    std::fs::remove_file(&jwt).expect("rm jwt key");
    authgate::keys::generate_private_key(jsonwebtoken::Algorithm::ES256, &jwt).expect("jwt key");
    std::fs::write(gw.dir.path().join("users.toml"), users(&["alice", "bob"])).expect("users");
    assert_eq!(login(&gw, "bob").await.status(), 400, "bob is not a user yet");

    gw.running().reload().await.expect("reload");

    assert_ne!(std::fs::read(gw.cert_path()).expect("cert"), old_cert);
    let new_client = client_for(&gw.cert_path(), false);
    let new_token = gw.token("svc", serde_json::json!({}));
    let r = new_client.get(gw.url("/")).bearer_auth(&new_token).send().await.expect("new certificate served");
    assert_eq!(r.status(), 200, "a token of the new signing key is accepted");
    let r = new_client.get(gw.url("/")).bearer_auth(&old_token).send().await.expect("send");
    assert_eq!(r.status(), 401, "the old signing key is gone");
    let trusting_old = client_for_pem(&old_cert);
    assert!(trusting_old.get(gw.url("/pub")).send().await.is_err(), "a new connection must get the new certificate");
    // The connection made before the reload still serves (a new one could not: it trusts the old certificate only).
    assert_eq!(status(&old_client, &gw.url("/pub")).await, 200);
    assert_eq!(login(&gw, "bob").await.status(), 200, "the new users file applies");
}

fn client_for_pem(pem: &[u8]) -> reqwest::Client {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("c.pem");
    std::fs::write(&file, pem).expect("write");
    client_for(&file, false)
}

#[tokio::test]
async fn watch_reloads_when_the_config_or_users_file_changes() {
    let gw = start("watch = true").await;
    assert_eq!(status(&gw.client, &gw.url("/flip")).await, 401);
    write_config(&gw, "public", "watch = true");
    let deadline = Instant::now() + Duration::from_secs(15);
    while status(&gw.client, &gw.url("/flip")).await != 200 {
        assert!(Instant::now() < deadline, "the config change was not picked up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::write(gw.dir.path().join("users.toml"), users(&["alice", "carol"])).expect("users");
    let deadline = Instant::now() + Duration::from_secs(15);
    while login(&gw, "carol").await.status() != 200 {
        assert!(Instant::now() < deadline, "the users file change was not picked up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An argon2id hash with t past the limit, cheap to compute (m=8 KiB).
fn costly_hash(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
    let params = argon2::Params::new(8, 17, 1, None).expect("params");
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    a.hash_password(password.as_bytes(), &SaltString::generate(&mut OsRng)).expect("hash").to_string()
}

/// Hash costs were uncapped, and a reload hashed a dummy of each kind in
/// the file while holding the reload lock: a bcrypt cost of 31 or an
/// argon2id m of gigabytes hung it for hours. Such a file is refused,
/// naming the entry, and the running users keep working.
#[tokio::test]
async fn a_users_file_with_a_hash_past_the_cost_limits_is_refused_on_reload() {
    let gw = start("").await;
    let before = gw.app();
    let text = format!("{}[[users]]\nusername = \"bob\"\npassword_hash = \"{}\"\n", users(&["alice"]), costly_hash("pw-bob"));
    std::fs::write(gw.dir.path().join("users.toml"), text).expect("users");
    let err = gw.running().reload().await.expect_err("a hash past the limits must be refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("users.toml") && msg.contains("users[1].password_hash") && msg.contains("t=16"), "{msg}");
    assert!(Arc::ptr_eq(&before, &gw.app()), "the old App must keep serving");
    assert_eq!(login(&gw, "alice").await.status(), 200);
    assert_eq!(login(&gw, "bob").await.status(), 400, "bob is not in the running users file");
}
