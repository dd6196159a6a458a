//! The admin listener (`/healthz`, `/readyz`, `/metrics` in Prometheus
//! text format, counted from the pipeline) and the `http_redirect`
//! listener (308 to https).
mod common;

use std::sync::Arc;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LOGIN: &str = "[login]\nusers_file = \"users.toml\"\nrate_limit = \"1000/minute\"\nrate_limit_per_username = \"1000/hour\"\n";

fn routes(up: &Upstream) -> String {
    format!(
        "[[routes]]\npath = \"/api\"\nupstream = \"{}\"\n\n[[routes]]\npath = \"/limited\"\nupstream = \"echo\"\nauth = \"public\"\nrate_limit = \"2/minute\"\n",
        up.url()
    )
}

async fn start(up: &Upstream) -> Gateway {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("users.toml"), format!("[[users]]\nusername = \"alice\"\npassword_hash = \"{}\"\n", quick_hash("pw")))
        .expect("users");
    let text = with_server(&config_text(dir.path(), LOGIN, &routes(up)), "admin_listen = \"127.0.0.1:0\"");
    Gateway::start_in(dir, &text).await
}

fn admin(gw: &Gateway, path: &str) -> String {
    let addr = gw.running().admin_addr.expect("admin listener");
    format!("http://{addr}{path}")
}

async fn get_admin(gw: &Gateway, path: &str) -> (u16, String, Option<String>) {
    let r = reqwest::Client::builder().no_proxy().build().expect("client").get(admin(gw, path)).send().await.expect("admin answers");
    let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap_or_default().to_string());
    (r.status().as_u16(), r.text().await.expect("body"), ct)
}

/// The value of the sample `series` (name and labels exactly as exported).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

/// A token signed with the gateway's own key but with chosen claims.
fn forged(gw: &Gateway, claims: serde_json::Value) -> String {
    let pem = std::fs::read(gw.dir.path().join("jwt.pem")).expect("jwt key");
    let key = jsonwebtoken::EncodingKey::from_ec_pem(&pem).expect("key");
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256), &claims, &key).expect("sign")
}

#[tokio::test]
async fn health_readiness_and_metrics_from_the_pipeline() {
    let up = Upstream::start().await;
    let gw = start(&up).await;
    assert_eq!(get_admin(&gw, "/healthz").await.0, 200);
    assert_eq!(get_admin(&gw, "/readyz").await.0, 200);
    assert_eq!(get_admin(&gw, "/nope").await.0, 404);

    let c = &gw.client;
    let now = authgate::jwt::now_secs();
    let good = gw.token("alice", json!({}));
    assert_eq!(c.get(gw.url("/api/x")).bearer_auth(&good).send().await.expect("send").status(), 200);
    assert_eq!(c.get(gw.url("/api/x")).send().await.expect("send").status(), 401);
    let expired = forged(&gw, json!({"sub": "a", "iss": "authgate", "aud": "api", "exp": now - 100, "iat": now - 200}));
    assert_eq!(c.get(gw.url("/api/x")).bearer_auth(&expired).send().await.expect("send").status(), 401);
    let audience = forged(&gw, json!({"sub": "a", "iss": "authgate", "aud": "other", "exp": now + 100}));
    assert_eq!(c.get(gw.url("/api/x")).bearer_auth(&audience).send().await.expect("send").status(), 401);
    let mut tampered = good.clone();
    tampered.pop();
    tampered.push(if good.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(c.get(gw.url("/api/x")).bearer_auth(&tampered).send().await.expect("send").status(), 401);
    for want in [200, 200, 429] {
        assert_eq!(c.get(gw.url("/limited")).send().await.expect("send").status(), want);
    }
    let login = |pw: &'static str| c.post(gw.url("/token")).form(&[("username", "alice"), ("password", pw)]).send();
    assert_eq!(login("pw").await.expect("send").status(), 200);
    assert_eq!(login("wrong").await.expect("send").status(), 400);
    assert_eq!(c.get(gw.url("/nothing-here")).send().await.expect("send").status(), 404);

    let (status, text, ct) = get_admin(&gw, "/metrics").await;
    assert_eq!(status, 200);
    assert!(ct.unwrap_or_default().contains("text"), "a Prometheus text format");
    let want = [
        ("authgate_requests_total{route=\"/api\",status=\"200\"}", 1.0),
        ("authgate_requests_total{route=\"/api\",status=\"401\"}", 4.0),
        ("authgate_requests_total{route=\"/limited\",status=\"429\"}", 1.0),
        ("authgate_requests_total{route=\"none\",status=\"200\"}", 1.0),
        ("authgate_requests_total{route=\"none\",status=\"400\"}", 1.0),
        ("authgate_auth_failures_total{reason=\"missing\"}", 1.0),
        ("authgate_auth_failures_total{reason=\"expired\"}", 1.0),
        ("authgate_auth_failures_total{reason=\"wrong_audience\"}", 1.0),
        ("authgate_auth_failures_total{reason=\"bad_signature\"}", 1.0),
        ("authgate_upstream_duration_seconds_count{route=\"/api\"}", 1.0),
        ("authgate_login_attempts_total{outcome=\"success\"}", 1.0),
        ("authgate_login_attempts_total{outcome=\"invalid_grant\"}", 1.0),
        ("authgate_rate_limited_total{route=\"/limited\"}", 1.0),
        ("authgate_store_errors_total", 0.0),
    ];
    for (series, value) in want {
        assert_eq!(sample(&text, series), Some(value), "{series} in:\n{text}");
    }
    // The client connection(s) of reqwest's pool are open now.
    assert!(sample(&text, "authgate_open_connections").is_some_and(|v| v >= 1.0), "{text}");
    assert!(text.contains("# TYPE authgate_upstream_duration_seconds histogram"), "{text}");
    assert!(!text.contains(&good), "no token in the metrics");
}

/// A store that is down: every call fails.
struct Down;

fn down<T>() -> authgate::store::Result<T> {
    Err(authgate::store::StoreError("down".into()))
}

impl authgate::store::Store for Down {
    fn create_family(&self, _: &str, _: &str, _: &authgate::store::TokenHash, _: u64, _: u64) -> authgate::store::Result<()> {
        down()
    }
    fn rotate_refresh(
        &self,
        _: &authgate::store::TokenHash,
        _: &authgate::store::TokenHash,
        _: u64,
    ) -> authgate::store::Result<authgate::store::Rotation> {
        down()
    }
    fn revoke_refresh(&self, _: &authgate::store::TokenHash) -> authgate::store::Result<bool> {
        down()
    }
    fn revoke_family(&self, _: &str) -> authgate::store::Result<()> {
        down()
    }
    fn family_live(&self, _: &str) -> authgate::store::Result<bool> {
        down()
    }
    fn revoke_jti(&self, _: &str, _: u64) -> authgate::store::Result<()> {
        down()
    }
    fn revoke_subject(&self, _: &str, _: u64) -> authgate::store::Result<()> {
        down()
    }
    fn subject_cutoff(&self, _: &str) -> authgate::store::Result<Option<u64>> {
        down()
    }
    fn revocations_since(&self, _: authgate::store::Cursor) -> authgate::store::Result<authgate::store::Revocations> {
        down()
    }
    fn user_fingerprints(&self) -> authgate::store::Result<Vec<(String, authgate::store::TokenHash)>> {
        down()
    }
    fn set_user_fingerprint(&self, _: &str, _: Option<&authgate::store::TokenHash>) -> authgate::store::Result<()> {
        down()
    }
    fn prune(&self, _: u64) -> authgate::store::Result<u64> {
        down()
    }
    fn ping(&self) -> authgate::store::Result<()> {
        down()
    }
    fn shared_limits(&self) -> bool {
        false
    }
    fn rate_limit(&self, _: &[authgate::store::RateCheck]) -> authgate::store::Result<Option<std::time::Duration>> {
        down()
    }
    fn follow(&self, _: &Arc<tokio::sync::Notify>) {}
}

#[tokio::test]
async fn readyz_is_503_and_store_errors_count_when_the_store_is_down() {
    let up = Upstream::start().await;
    let gw = start(&up).await;
    assert_eq!(get_admin(&gw, "/readyz").await.0, 200);
    let config = authgate::config::load(&gw.dir.path().join("config.toml")).expect("config");
    let mut app = authgate::build_app(config).expect("app");
    app.store = Arc::new(Down);
    app.metrics = gw.app().metrics.clone();
    gw.running().reloader.install(Arc::new(app));

    let (status, body, _) = get_admin(&gw, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("down"), "{body}");
    assert_eq!(get_admin(&gw, "/healthz").await.0, 200, "liveness does not depend on the store");
    let r = gw.client.post(gw.url("/token")).form(&[("grant_type", "refresh_token"), ("refresh_token", "x")]).send().await.expect("send");
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let text = get_admin(&gw, "/metrics").await.1;
    assert_eq!(sample(&text, "authgate_store_errors_total"), Some(2.0), "one failed ping, one failed rotation:\n{text}");
    assert_eq!(sample(&text, "authgate_login_attempts_total{outcome=\"unavailable\"}"), Some(1.0), "{text}");
}

#[tokio::test]
async fn http_redirect_answers_308_to_https() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text =
        with_server(&config_text(dir.path(), "", "[[routes]]\npath = \"/\"\nupstream = \"echo\"\n"), "http_redirect = \"127.0.0.1:0\"");
    let gw = Gateway::start_in(dir, &text).await;
    let addr = gw.running().redirect_addr.expect("redirect listener");
    let raw = |req: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    };
    let resp = raw("GET /a/b?x=1 HTTP/1.1\r\nHost: localhost:8080\r\nConnection: close\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 308"), "{resp}");
    let location = format!("location: https://localhost:{}/a/b?x=1\r\n", gw.addr.port());
    assert!(resp.to_ascii_lowercase().contains(&location), "wanted {location:?} in {resp}");
    let resp = raw("GET / HTTP/1.0\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.0 400") || resp.starts_with("HTTP/1.1 400"), "no Host: {resp}");
}
