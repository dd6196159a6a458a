//! The access log of the real binary: one `authgate::access` line per
//! request with client, method, path, route, status, subject and latency;
//! never a password, a token, a cookie or a query string. JSON with
//! `log.format = "json"`.
mod common;

use std::time::Duration;

use common::*;

const PASSWORD: &str = "correct-horse-battery-staple";
const QUERY_SECRET: &str = "QUERYSECRET12345";

fn config(dir: &std::path::Path, format: &str) -> String {
    std::fs::write(dir.join("users.toml"), format!("[[users]]\nusername = \"alice\"\npassword_hash = \"{}\"\n", quick_hash(PASSWORD)))
        .expect("users");
    let extra = format!(
        "[login]\nusers_file = \"users.toml\"\ncookie = true\nrate_limit = \"1000/minute\"\nrate_limit_per_username = \"1000/hour\"\n\n[log]\nformat = \"{format}\"\n"
    );
    config_text(dir, &extra, "[[routes]]\npath = \"/api\"\nupstream = \"echo\"\n")
}

/// Logs in, calls through with the bearer token and a query string, then
/// with the cookie; returns (access token, refresh token).
async fn traffic(gw: &Gateway) -> (String, String) {
    let r = gw.client.post(gw.url("/token")).form(&[("username", "alice"), ("password", PASSWORD)]).send().await.expect("login");
    assert_eq!(r.status(), 200);
    let body = json(r).await;
    let (access, refresh) =
        (body["access_token"].as_str().expect("access").to_string(), body["refresh_token"].as_str().expect("refresh").to_string());
    let url = gw.url(&format!("/api/orders/./42?token={QUERY_SECRET}"));
    assert_eq!(gw.client.get(&url).bearer_auth(&access).send().await.expect("send").status(), 200);
    // A session id in a path parameter is as secret as one in the query.
    let url = gw.url(&format!("/api/orders;jsessionid={QUERY_SECRET}/43"));
    assert_eq!(gw.client.get(&url).bearer_auth(&access).send().await.expect("send").status(), 200);
    let r = gw.client.get(gw.url("/api/me")).header("cookie", format!("authgate_access={access}")).send().await.expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(gw.client.get(gw.url("/api/x")).send().await.expect("send").status(), 401);
    (access, refresh)
}

fn assert_no_secrets(log: &str, access: &str, refresh: &str) {
    assert!(!log.contains(PASSWORD), "the password is in the log:\n{log}");
    assert!(!log.contains(access), "the access token is in the log:\n{log}");
    // Any token part (the signature alone would do harm too).
    for part in access.split('.') {
        assert!(!log.contains(part), "a part of the token is in the log:\n{log}");
    }
    assert!(!log.contains(refresh), "the refresh token is in the log:\n{log}");
    assert!(!log.contains(QUERY_SECRET), "the query string is in the log:\n{log}");
    assert!(!log.contains("authgate_access="), "a cookie is in the log:\n{log}");
}

#[tokio::test]
async fn access_log_lines_hold_the_facts_and_never_a_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config(dir.path(), "text");
    let sp = spawn_binary(dir, &text, &[]);
    let (access, refresh) = traffic(&sp.gw).await;
    assert!(sp.wait_log("authgate::access", 5, Duration::from_secs(10)), "{}", sp.log());
    let log = sp.log();
    assert_no_secrets(&log, &access, &refresh);
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("authgate::access")).collect();
    assert_eq!(lines.len(), 5, "one line per request:\n{log}");
    let proxied = lines[1];
    for want in
        ["client=127.0.0.1", "method=GET", "path=/api/orders/42", "route=/api", "status=200", "sub=\"alice\"", "latency_ms=", "bytes="]
    {
        assert!(proxied.contains(want), "{want} missing in {proxied}");
    }
    assert!(lines[0].contains("path=/token") && lines[0].contains("route=none") && !lines[0].contains("sub="), "{}", lines[0]);
    assert!(lines[2].contains("path=/api/orders/43 "), "logged without its ;parameters: {}", lines[2]);
    assert!(lines[3].contains("sub=\"alice\"") && lines[3].contains("path=/api/me"), "the cookie-authenticated request: {}", lines[3]);
    assert!(lines[4].contains("status=401") && !lines[4].contains("sub="), "{}", lines[4]);
}

#[tokio::test]
async fn json_access_log_with_log_format_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config(dir.path(), "json");
    let sp = spawn_binary(dir, &text, &[]);
    let (access, refresh) = traffic(&sp.gw).await;
    assert!(sp.wait_log("authgate::access", 5, Duration::from_secs(10)), "{}", sp.log());
    let log = sp.log();
    assert_no_secrets(&log, &access, &refresh);
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.contains("authgate::access"))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let proxied = &lines[1];
    assert_eq!(proxied["target"], "authgate::access");
    let f = &proxied["fields"];
    assert_eq!(f["path"], "/api/orders/42");
    assert_eq!(f["route"], "/api");
    assert_eq!(f["status"], 200);
    assert_eq!(f["sub"], "alice");
    assert_eq!(f["method"], "GET");
    assert!(f["latency_ms"].is_number(), "{proxied}");
}

#[tokio::test]
async fn a_log_reader_that_stops_reading_never_stalls_requests_and_loses_no_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config(dir.path(), "text");
    let sp = spawn_binary(dir, &text, &[]);
    let token = {
        let r = sp.gw.client.post(sp.gw.url("/token")).form(&[("username", "alice"), ("password", PASSWORD)]).send().await.expect("login");
        json(r).await["access_token"].as_str().expect("access").to_string()
    };
    // About 200 bytes of access log a request: 4,000 requests are 800 KB,
    // far past the 64 KB a pipe holds while nobody reads it.
    sp.stop_reading_log.store(true, std::sync::atomic::Ordering::SeqCst);
    let loops: Vec<_> = (0..4)
        .map(|_| {
            let (client, url, token) = (sp.gw.client.clone(), sp.gw.url("/api/x"), token.clone());
            tokio::spawn(async move {
                for _ in 0..1000 {
                    let r = client.get(&url).bearer_auth(&token).send().await.expect("send");
                    assert_eq!(r.status(), 200);
                }
            })
        })
        .collect();
    let all = futures_util::future::join_all(loops);
    let done = tokio::time::timeout(Duration::from_secs(60), all).await.expect("requests stalled behind a full log pipe");
    assert!(done.iter().all(Result::is_ok));
    sp.stop_reading_log.store(false, std::sync::atomic::Ordering::SeqCst);
    // 1 login + 4,000 requests, every line there once the reader is back.
    assert!(sp.wait_log("authgate::access", 4001, Duration::from_secs(30)), "lines were lost");
}

/// Review 10b, F2: a forward-auth proxy that sends no original method
/// turned the cookie CSRF rule off without a sign. Now the rule refuses a
/// foreign origin whatever the method, and the log says, once, what to set.
#[tokio::test]
async fn forward_auth_without_the_original_method_warns_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config(dir.path(), "text");
    let sp = spawn_binary(dir, &text, &[]);
    let (access, _) = traffic(&sp.gw).await;
    let verify = |origin: &'static str| {
        sp.gw
            .client
            .get(sp.gw.url("/auth/verify"))
            .header("cookie", format!("authgate_access={access}"))
            .header("x-original-uri", "/api/x")
            .header("origin", origin)
            .send()
    };
    assert_eq!(verify("https://evil.example").await.expect("send").status(), 403);
    assert_eq!(verify("https://evil.example").await.expect("send").status(), 403);
    assert!(sp.wait_log("path=/auth/verify", 2, Duration::from_secs(10)), "{}", sp.log());
    let log = sp.log();
    let warnings = log.lines().filter(|l| l.contains("WARN") && l.contains("set X-Original-Method")).count();
    assert_eq!(warnings, 1, "{log}");
}

/// A path that fails normalisation is logged as received, and U+009B (the
/// 8-bit CSI, which a terminal acts on like ESC [) reached the text access
/// log unescaped: it is percent-encoded now.
#[tokio::test]
async fn c1_controls_in_a_refused_path_are_escaped_in_the_access_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config(dir.path(), "text");
    let sp = spawn_binary(dir, &text, &[]);
    let answer =
        raw_request(&sp.gw, b"GET /\xc2\x9b31mEVIL/../.. HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", Duration::from_secs(5))
            .await;
    assert_eq!(status_of(&answer), 400, "{answer}");
    assert!(sp.wait_log("authgate::access", 1, Duration::from_secs(10)), "{}", sp.log());
    let log = sp.log();
    let line = log.lines().find(|l| l.contains("authgate::access")).expect("an access log line");
    assert!(!line.contains('\u{9b}'), "a C1 control reached the log: {line:?}");
    assert!(line.contains("path=/%C2%9B31mEVIL/../.. "), "{line}");
}
