//! `store.kind = "redis"`: several replicas share one real redis-server
//! (started by the test): revocations, login limits and refresh rotation
//! hold across replicas, and an outage degrades logins, not the proxy.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::redis::{RedisServer, redis_or_skip};
use common::*;

const ROUTES: &str = "[[routes]]\npath = \"/\"\nupstream = \"echo\"\n";
const GENEROUS: &str = "rate_limit = \"1000/minute\"\nrate_limit_per_username = \"1000/hour\"\n";

/// The folder replicas share: the signing key and the users file.
fn shared() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let users = format!(
        "[[users]]\nusername = \"alice\"\npassword_hash = \"{}\"\nroles = [\"user\"]\n\n[[users]]\nusername = \"bob\"\npassword_hash = \"{}\"\n",
        quick_hash("pw-alice"),
        quick_hash("pw-bob")
    );
    std::fs::write(dir.path().join("users.toml"), users).expect("users");
    authgate::keys::generate_private_key(jsonwebtoken::Algorithm::ES256, &dir.path().join("jwt.pem")).expect("key");
    dir
}

/// One replica: its own folder (TLS, config), the shared key, users and Redis.
async fn replica(shared: &Path, redis: &RedisServer, login: &str) -> Gateway {
    let s = shared.display();
    let extra = format!(
        "[jwt]\nalgorithm = \"ES256\"\nprivate_key = \"{s}/jwt.pem\"\nissuer = \"authgate\"\naudience = \"api\"\nleeway = \"5s\"\n\n\
         [login]\nusers_file = \"{s}/users.toml\"\n{login}\n[store]\n{}\n",
        redis.store_toml()
    );
    Gateway::start(&extra, ROUTES).await
}

async fn post(gw: &Gateway, form: &[(&str, &str)]) -> reqwest::Response {
    let path = if form.iter().any(|(k, _)| *k == "token") { "/token/revoke" } else { "/token" };
    gw.client.post(gw.url(path)).form(form).send().await.expect("send")
}

async fn login(gw: &Gateway, username: &str, password: &str) -> reqwest::Response {
    post(gw, &[("grant_type", "password"), ("username", username), ("password", password)]).await
}

/// Logs in and returns (access_token, refresh_token).
async fn tokens(gw: &Gateway, username: &str, password: &str) -> (String, String) {
    let r = login(gw, username, password).await;
    assert_eq!(r.status(), 200, "login of {username}");
    let body = json(r).await;
    (body["access_token"].as_str().expect("access").into(), body["refresh_token"].as_str().expect("refresh").into())
}

async fn refresh(gw: &Gateway, token: &str) -> reqwest::Response {
    post(gw, &[("grant_type", "refresh_token"), ("refresh_token", token)]).await
}

async fn call(gw: &Gateway, access: &str) -> u16 {
    gw.client.get(gw.url("/api")).bearer_auth(access).send().await.expect("send").status().as_u16()
}

/// Polls `f` until it returns true; returns how long that took, failing after `limit`.
async fn eventually<F: AsyncFnMut() -> bool>(limit: Duration, what: &str, mut f: F) -> Duration {
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

#[tokio::test]
async fn a_token_revoked_through_one_replica_is_refused_by_the_other_within_a_second() {
    let Some(redis) = redis_or_skip("a_token_revoked_through_one_replica_is_refused_by_the_other_within_a_second") else { return };
    let dir = shared();
    let a = replica(dir.path(), &redis, GENEROUS).await;
    let b = replica(dir.path(), &redis, GENEROUS).await;
    let (access, _) = tokens(&a, "alice", "pw-alice").await;
    let (other, _) = tokens(&b, "alice", "pw-alice").await;
    assert_eq!(call(&b, &access).await, 200);

    assert_eq!(post(&a, &[("token", &access)]).await.status(), 200);
    assert_eq!(call(&a, &access).await, 401, "the replica that revoked refuses at once");
    let took = eventually(Duration::from_secs(1), "replica B refuses the revoked token", async || call(&b, &access).await == 401).await;
    println!("revocation reached the other replica in {took:?}");
    assert_eq!(call(&b, &other).await, 200, "only that token is revoked");

    // A subject cut-off (authgate revoke) written by another process reaches both.
    let store = authgate::store::open(&a.app().config).expect("open the store like `authgate revoke` does");
    let cutoff = authgate::jwt::now_secs() + 1;
    store.revoke_subject("alice", cutoff).expect("revoke");
    // A second revoke in the same second moves the cut-off past the
    // first: a token issued at the first cut-off is caught by the second.
    store.revoke_subject("alice", cutoff).expect("revoke again");
    assert_eq!(store.subject_cutoff("alice").expect("cut-off"), Some(cutoff + 1));
    for gw in [&a, &b] {
        eventually(Duration::from_secs(1), "the cut-off reaches every replica", async || call(gw, &other).await == 401).await;
    }

    // A replica started later loads the denylist before serving.
    let c = replica(dir.path(), &redis, GENEROUS).await;
    assert_eq!(call(&c, &access).await, 401);
    assert_eq!(call(&c, &other).await, 401);
    for gw in [a, b, c] {
        gw.stop().await;
    }
}

/// A token whose `exp` lies beyond what Redis takes as an expiry (about
/// 9.2e15 s; `authgate token --ttl 200000000000d`, or an IdP's) is still
/// revocable: the revocation is kept for a century. It was a 503, and the
/// token stayed valid on every replica.
#[tokio::test]
async fn a_token_that_expires_after_redis_can_count_is_still_revocable() {
    let Some(redis) = redis_or_skip("a_token_that_expires_after_redis_can_count_is_still_revocable") else { return };
    let dir = shared();
    let a = replica(dir.path(), &redis, GENEROUS).await;
    let b = replica(dir.path(), &redis, GENEROUS).await;
    let forever = Duration::from_secs(200_000_000_000 * 86_400);
    let token = a.app().signer.as_ref().expect("signer").sign("alice", &serde_json::Map::new(), forever).expect("sign").token;
    assert_eq!(call(&b, &token).await, 200);
    assert_eq!(post(&a, &[("token", &token)]).await.status(), 200);
    assert_eq!(call(&a, &token).await, 401);
    eventually(Duration::from_secs(1), "replica B refuses the revoked token", async || call(&b, &token).await == 401).await;
    for gw in [a, b] {
        gw.stop().await;
    }
}

#[tokio::test]
async fn the_login_limit_spent_through_one_replica_is_spent_for_the_other() {
    let Some(redis) = redis_or_skip("the_login_limit_spent_through_one_replica_is_spent_for_the_other") else { return };
    let dir = shared();
    let limits = "rate_limit = \"3/minute\"\nrate_limit_per_username = \"100/hour\"\n";
    let a = replica(dir.path(), &redis, limits).await;
    let b = replica(dir.path(), &redis, limits).await;
    for _ in 0..3 {
        assert_eq!(login(&a, "alice", "wrong").await.status(), 400);
    }
    // B's own governor has seen nothing: only the shared counter can refuse.
    let r = login(&b, "alice", "pw-alice").await;
    assert_eq!(r.status(), 429, "the per-IP limit spent on A holds on B");
    let retry: u64 = r.headers()["retry-after"].to_str().expect("ascii").parse().expect("seconds");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(json(r).await["error"], "rate_limited");
    assert_eq!(login(&a, "alice", "pw-alice").await.status(), 429);

    // The per-username limit too, from different client IPs (a trusted proxy's X-Forwarded-For).
    let s = dir.path().display();
    let per_user = "rate_limit = \"100/minute\"\nrate_limit_per_username = \"2/hour\"\n";
    let extra = |redis: &RedisServer| {
        format!(
            "[jwt]\nalgorithm = \"ES256\"\nprivate_key = \"{s}/jwt.pem\"\nissuer = \"authgate\"\naudience = \"api\"\n\n\
             [login]\nusers_file = \"{s}/users.toml\"\n{per_user}\n[store]\n{}\n",
            redis.store_toml()
        )
    };
    let with_proxy = |dir: &tempfile::TempDir, redis: &RedisServer| {
        config_text(dir.path(), &extra(redis), ROUTES).replacen("[server]\n", "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n", 1)
    };
    let (d1, d2) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let (t1, t2) = (with_proxy(&d1, &redis), with_proxy(&d2, &redis));
    let c = Gateway::start_in(d1, &t1).await;
    let d = Gateway::start_in(d2, &t2).await;
    let attempt = async |gw: &Gateway, ip: &str| {
        let form = [("username", "bob"), ("password", "wrong")];
        gw.client.post(gw.url("/token")).header("x-forwarded-for", ip).form(&form).send().await.expect("send").status().as_u16()
    };
    assert_eq!(attempt(&c, "10.0.0.1").await, 400);
    assert_eq!(attempt(&d, "10.0.0.2").await, 400);
    assert_eq!(attempt(&d, "10.0.0.3").await, 429, "bob's limit is shared by replicas and IPs");
    for gw in [a, b, c, d] {
        gw.stop().await;
    }
}

/// An address already over its limit is not charged against the username
/// it tried, across replicas too. Each replica's own governor lets its
/// share through to Redis, where the per-IP limit refuses it; the Redis
/// script charged the username anyway, so one address could spend (with
/// N replicas, N times over) the budget of a user logging in elsewhere.
#[tokio::test]
async fn attempts_refused_for_their_address_do_not_spend_the_usernames_limit_on_redis() {
    let Some(redis) = redis_or_skip("attempts_refused_for_their_address_do_not_spend_the_usernames_limit_on_redis") else { return };
    let dir = shared();
    let limits = "rate_limit = \"2/minute\"\nrate_limit_per_username = \"4/hour\"\n";
    let a = replica(dir.path(), &redis, limits).await;
    let b = replica(dir.path(), &redis, limits).await;
    let mut statuses = Vec::new();
    for gw in [&a, &b, &a, &b, &a, &b] {
        statuses.push(login(gw, "alice", "wrong").await.status().as_u16());
    }
    assert_eq!(statuses, [400, 400, 429, 429, 429, 429], "the address's limit of 2 holds across the replicas");
    // The same user from another address, with the right password: two
    // of alice's four attempts are spent, not four.
    let elsewhere = client_from(&a.cert_path(), std::net::IpAddr::from([127, 0, 0, 2]));
    let form = [("username", "alice"), ("password", "pw-alice")];
    let r = elsewhere.post(a.url("/token")).form(&form).send().await.expect("send");
    assert_eq!(r.status(), 200, "alice's limit was spent by another address's refused attempts");
    for gw in [a, b] {
        gw.stop().await;
    }
}

#[tokio::test]
async fn refresh_rotation_is_atomic_across_replicas_and_reuse_on_another_revokes_the_family() {
    let Some(redis) = redis_or_skip("refresh_rotation_is_atomic_across_replicas_and_reuse_on_another_revokes_the_family") else { return };
    let dir = shared();
    let a = replica(dir.path(), &redis, GENEROUS).await;
    let b = replica(dir.path(), &redis, GENEROUS).await;

    // Rotate on A, present the old one on B: reuse, the whole family ends on both.
    let (_, r1) = tokens(&a, "alice", "pw-alice").await;
    let r = refresh(&a, &r1).await;
    assert_eq!(r.status(), 200);
    let r2 = json(r).await["refresh_token"].as_str().expect("refresh").to_string();
    let r = refresh(&b, &r1).await;
    assert_eq!(r.status(), 400);
    assert_eq!(json(r).await["error"], "invalid_grant");
    assert_eq!(refresh(&a, &r2).await.status(), 400, "the live successor died with its family");
    assert_eq!(refresh(&b, &r2).await.status(), 400);

    // The same token at both replicas at once: exactly one rotation wins.
    for _ in 0..5 {
        let (_, r1) = tokens(&b, "bob", "pw-bob").await;
        let (x, y) = tokio::join!(refresh(&a, &r1), refresh(&b, &r1));
        let ok = [x.status(), y.status()].iter().filter(|s| s.as_u16() == 200).count();
        assert_eq!(ok, 1, "statuses {} and {}", x.status(), y.status());
    }

    // Revoking a refresh token through one replica ends it for the other.
    let (_, r1) = tokens(&a, "alice", "pw-alice").await;
    assert_eq!(post(&b, &[("token", &r1)]).await.status(), 200);
    assert_eq!(refresh(&a, &r1).await.status(), 400);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn redis_down_fails_logins_fast_keeps_the_proxy_serving_and_recovers_by_itself() {
    let Some(mut redis) = redis_or_skip("redis_down_fails_logins_fast_keeps_the_proxy_serving_and_recovers_by_itself") else { return };
    let dir = shared();
    let a = replica(dir.path(), &redis, GENEROUS).await;
    let b = replica(dir.path(), &redis, GENEROUS).await;
    let (access, r1) = tokens(&a, "alice", "pw-alice").await;
    let (revoked, _) = tokens(&a, "bob", "pw-bob").await;
    assert_eq!(post(&a, &[("token", &revoked)]).await.status(), 200);
    eventually(Duration::from_secs(1), "B refuses the revoked token", async || call(&b, &revoked).await == 401).await;

    redis.stop();
    // Proxied requests do not touch Redis: they keep working on the in-memory denylist.
    for gw in [&a, &b] {
        assert_eq!(call(gw, &access).await, 200);
        assert_eq!(call(gw, &revoked).await, 401, "revocations read before the outage still hold");
    }
    // Logins and refreshes answer 503 `unavailable`, quickly.
    for gw in [&a, &b] {
        let started = Instant::now();
        let r = login(gw, "alice", "pw-alice").await;
        assert_eq!(r.status(), 503);
        assert!(r.headers().contains_key("retry-after"));
        assert_eq!(json(r).await["error"], "unavailable");
        let r = refresh(gw, &r1).await;
        assert_eq!(r.status(), 503);
        assert_eq!(json(r).await["error"], "unavailable");
        assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    }
    // Readiness (`/readyz` calls Store::ping) reports the outage within its timeout.
    let store = a.app().store.clone();
    let started = Instant::now();
    assert!(tokio::task::spawn_blocking(move || store.ping()).await.expect("join").is_err());
    assert!(started.elapsed() < Duration::from_secs(2));

    // Redis comes back (empty: this one does not persist). Everything recovers by itself.
    redis.restart();
    for gw in [&a, &b] {
        eventually(Duration::from_secs(10), "logins work again", async || login(gw, "bob", "pw-bob").await.status() == 200).await;
    }
    let store = a.app().store.clone();
    assert!(tokio::task::spawn_blocking(move || store.ping()).await.expect("join").is_ok());
    let (fresh, _) = tokens(&b, "alice", "pw-alice").await;
    assert_eq!(call(&a, &fresh).await, 200);
    // Revocations flow between replicas again (the log restarted its numbering).
    assert_eq!(post(&b, &[("token", &fresh)]).await.status(), 200);
    eventually(Duration::from_secs(1), "A follows revocations after the restart", async || call(&a, &fresh).await == 401).await;
    a.stop().await;
    b.stop().await;
}

/// The users file with `alice`'s password changed to `password`.
fn change_alice(shared: &Path, password: &str) {
    let file = shared.join("users.toml");
    let text = std::fs::read_to_string(&file).expect("users");
    let start = text.find("password_hash = \"").expect("alice's hash") + "password_hash = \"".len();
    let end = start + text[start..].find('"').expect("end of the hash");
    std::fs::write(&file, format!("{}{}{}", &text[..start], quick_hash(password), &text[end..])).expect("write users");
}

/// Redis restarted without persistence forgets every revocation, cut-off and
/// user record. The replicas still know them and write them back, so a
/// replica started afterwards refuses what the others refuse, and a
/// password changed afterwards still ends the sessions opened before.
#[tokio::test]
async fn after_redis_loses_its_data_the_replicas_write_back_what_they_know() {
    let Some(mut redis) = redis_or_skip("after_redis_loses_its_data_the_replicas_write_back_what_they_know") else { return };
    let dir = shared();
    let a = replica(dir.path(), &redis, GENEROUS).await;
    let b = replica(dir.path(), &redis, GENEROUS).await;
    let (alice, _) = tokens(&a, "alice", "pw-alice").await;
    let (bob, _) = tokens(&a, "bob", "pw-bob").await;
    // bob's token by its jti; every token of alice by a cut-off (as `authgate revoke --sub`).
    assert_eq!(post(&a, &[("token", &bob)]).await.status(), 200);
    let store = a.app().store.clone();
    let cutoff = authgate::jwt::now_secs() + 1;
    tokio::task::spawn_blocking(move || store.revoke_subject("alice", cutoff)).await.expect("join").expect("revoke alice");
    for gw in [&a, &b] {
        eventually(Duration::from_secs(2), "both revocations apply", async || call(gw, &bob).await == 401 && call(gw, &alice).await == 401)
            .await;
    }

    redis.restart();
    let store = a.app().store.clone();
    eventually(Duration::from_secs(10), "the replicas wrote their revocations back", async || {
        let store = store.clone();
        tokio::task::spawn_blocking(move || {
            let log = store.revocations_since(authgate::store::Cursor::default()).ok()?;
            Some(!log.jtis.is_empty() && store.subject_cutoff("alice").ok()?.is_some())
        })
        .await
        .expect("join")
        .unwrap_or(false)
    })
    .await;
    // A replica started now has only Redis to learn from.
    let c = replica(dir.path(), &redis, GENEROUS).await;
    assert_eq!(call(&c, &bob).await, 401, "a revoked token is accepted by a replica started after Redis lost its data");
    assert_eq!(call(&c, &alice).await, 401, "a token before a cut-off is accepted by a replica started after Redis lost its data");

    // A session opened after the restart, then alice's password changes:
    // the reload sees the change (the users' records were written back too).
    tokio::time::sleep(Duration::from_millis(1100)).await; // past alice's cut-off
    let (access, refresh_token) = tokens(&b, "alice", "pw-alice").await;
    assert_eq!(call(&c, &access).await, 200);
    change_alice(dir.path(), "pw-alice-2");
    a.running().reload().await.expect("reload a");
    for gw in [&a, &b, &c] {
        eventually(Duration::from_secs(2), "the old session ends everywhere", async || call(gw, &access).await == 401).await;
    }
    assert_eq!(refresh(&c, &refresh_token).await.status(), 400);
    for gw in [a, b, c] {
        gw.stop().await;
    }
}

/// A rolling update: one replica has loaded alice's new password, another
/// still runs the old file. The old password must not open a session on
/// the stale replica: the first replica's reload would not end it, and the
/// stale one's own reload sees the file it loads already recorded.
#[tokio::test]
async fn during_a_rolling_reload_the_old_password_opens_no_session_on_a_stale_replica() {
    let Some(redis) = redis_or_skip("during_a_rolling_reload_the_old_password_opens_no_session_on_a_stale_replica") else { return };
    let dir = shared();
    let a = replica(dir.path(), &redis, GENEROUS).await;
    let b = replica(dir.path(), &redis, GENEROUS).await;
    let (before, _) = tokens(&b, "alice", "pw-alice").await;
    change_alice(dir.path(), "pw-alice-2");
    a.running().reload().await.expect("reload a");
    eventually(Duration::from_secs(2), "the session from before ends on b", async || call(&b, &before).await == 401).await;

    assert_eq!(login(&a, "alice", "pw-alice").await.status(), 400);
    // A user removed from the file likewise (recorded as removed, not forgotten).
    let file = dir.path().join("users.toml");
    let text = std::fs::read_to_string(&file).expect("users");
    let bob = text.find("\n\n[[users]]\nusername = \"bob\"").expect("bob's entry");
    std::fs::write(&file, &text[..bob + 1]).expect("remove bob");
    a.running().reload().await.expect("reload a without bob");
    assert_eq!(login(&b, "bob", "pw-bob").await.status(), 400, "the stale replica logged in a removed user");
    std::fs::write(&file, &text).expect("bob back");
    a.running().reload().await.expect("reload a with bob");
    let stale = login(&b, "alice", "pw-alice").await;
    assert_eq!(stale.status(), 400, "the stale replica opened a session with the old password");
    assert_eq!(json(stale).await["error"], "invalid_grant");
    // Other users are not affected, and the new password works where it is known.
    tokens(&b, "bob", "pw-bob").await;
    let (after, _) = tokens(&a, "alice", "pw-alice-2").await;
    // b catches up: the new password works there, and the session opened on a survives it.
    b.running().reload().await.expect("reload b");
    tokens(&b, "alice", "pw-alice-2").await;
    assert_eq!(call(&b, &after).await, 200);
    a.stop().await;
    b.stop().await;
}
