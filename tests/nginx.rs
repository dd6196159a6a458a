//! nginx in front of authgate with `auth_request` to `/auth/verify`, using
//! the shipped snippet `examples/nginx/authgate.conf`, and a real upstream.
mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// The nginx binary, or None after printing SKIPPED (fails under CI=true).
fn nginx_binary() -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([std::path::PathBuf::from("/usr/sbin")])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "nginx is missing: install it with `apt-get install -y nginx`");
        println!("SKIPPED: nginx tests: nginx not found; install it with: apt-get install -y nginx");
    }
    found
}

struct Nginx {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

async fn start_nginx(bin: &std::path::Path, gw: &Gateway, up: &Upstream) -> Nginx {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display().to_string();
    let snippet = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/nginx/authgate.conf")).expect("snippet");
    let snippet = snippet
        .replace("AUTHGATE", &format!("127.0.0.1:{}", gw.addr.port()))
        .replace("BACKEND", &up.addr.to_string())
        .replace("CA_FILE", &gw.cert_path().display().to_string());
    std::fs::write(dir.path().join("authgate.conf"), snippet).expect("write snippet");
    let port = free_port();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         server {{\n    listen 127.0.0.1:{port};\n    include {d}/authgate.conf;\n  }}\n}}\n"
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).expect("write conf");
    let child = Command::new(bin)
        .args(["-p", &d, "-c", &format!("{d}/nginx.conf"), "-e", &format!("{d}/error.log")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "nginx did not start: {}",
            std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Nginx { child, port, _dir: dir }
}

#[tokio::test]
async fn nginx_auth_request_passes_identity_and_refuses_bad_tokens() {
    let Some(bin) = nginx_binary() else { return };
    let up = Upstream::start().await;
    let gw = Gateway::start(
        "",
        "[[routes]]\npath = \"/admin\"\nupstream = \"echo\"\nroles = [\"admin\"]\n\n[[routes]]\npath = \"/\"\nupstream = \"echo\"\n",
    )
    .await;
    let nginx = start_nginx(&bin, &gw, &up).await;
    let http = reqwest::Client::builder().no_proxy().build().expect("client");
    let url = |p: &str| format!("http://127.0.0.1:{}{p}", nginx.port);
    let token = gw.token("alice", json!({"roles": ["user"], "email": "alice@example.com"}));

    // A valid token passes, with authgate's identity and not the client's.
    let r = http
        .get(url("/orders?id=7"))
        .bearer_auth(&token)
        .header("X-Auth-Subject", "mallory")
        .header("X-Auth-Roles", "admin")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert_eq!(seen.path, "/orders");
    assert_eq!(seen.headers["x-auth-subject"], "alice");
    assert_eq!(seen.headers["x-auth-roles"], "user");
    assert_eq!(seen.headers["x-auth-email"], "alice@example.com");
    assert!(seen.headers.get("authorization").is_none(), "the token must not reach the backend");
    assert_eq!(up.hits(), 1);

    // A bad token and no token: 401 from nginx, the backend never reached.
    let r = http.get(url("/orders")).bearer_auth(format!("{token}x")).send().await.expect("send");
    assert_eq!(r.status(), 401);
    let r = http.get(url("/orders")).header("X-Auth-Subject", "mallory").send().await.expect("send");
    assert_eq!(r.status(), 401);
    // The route of the original URI decides: /admin needs the admin role.
    let r = http.get(url("/admin/panel")).bearer_auth(&token).send().await.expect("send");
    assert_eq!(r.status(), 403);
    // A client naming a weaker route in X-Forwarded-Uri does not get it judged.
    let r = http.get(url("/admin/panel")).bearer_auth(&token).header("X-Forwarded-Uri", "/").send().await.expect("send");
    assert_eq!(r.status(), 403, "X-Forwarded-Uri from the client must not pick the route");
    assert_eq!(up.hits(), 1, "refused requests must not reach the backend");
    drop(nginx);
    gw.stop().await;
}

/// With login cookies behind nginx: the cookie authenticates, and the
/// cookie CSRF rule applies to the original request, WebSocket handshakes
/// included (the snippet passes `Upgrade` and `Connection` to authgate).
#[tokio::test]
async fn nginx_auth_request_applies_the_cookie_origin_rule() {
    let Some(bin) = nginx_binary() else { return };
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("users.toml"), format!("[[users]]\nusername = \"alice\"\npassword_hash = \"{}\"\n", quick_hash("pw")))
        .expect("users");
    let text =
        config_text(dir.path(), "[login]\nusers_file = \"users.toml\"\ncookie = true\n", "[[routes]]\npath = \"/\"\nupstream = \"echo\"\n");
    let gw = Gateway::start_in(dir, &text).await;
    let nginx = start_nginx(&bin, &gw, &up).await;
    let http = reqwest::Client::builder().no_proxy().build().expect("client");
    let url = |p: &str| format!("http://127.0.0.1:{}{p}", nginx.port);
    let cookie = format!("authgate_access={}", gw.token("alice", json!({})));

    let r = http.get(url("/page")).header("cookie", &cookie).send().await.expect("send");
    assert_eq!(r.status(), 200, "a GET by cookie");
    assert_eq!(up.last().headers["x-auth-subject"], "alice");
    let hits = up.hits();
    let r = http.post(url("/transfer")).header("cookie", &cookie).header("origin", "https://evil.example").send().await.expect("send");
    assert_eq!(r.status(), 403, "a cross-site POST by cookie");
    let r = http
        .get(url("/socket"))
        .header("cookie", &cookie)
        .header("origin", "https://evil.example")
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "13")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 403, "a cross-site WebSocket handshake by cookie");
    assert_eq!(up.hits(), hits, "refused requests must not reach the backend");
    drop(nginx);
    gw.stop().await;
}
