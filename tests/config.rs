//! The command line against real config files: `authgate check` on good and
//! bad configs (one stderr line naming file and key, exit 2, never a panic),
//! `authgate token` minting a token the gateway accepts, `authgate gen-cert`.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use base64::Engine;
use common::*;

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args).env("NO_COLOR", "1").env("RUST_BACKTRACE", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run authgate")
}

fn check(dir: &Path, text: &str, env: &[(&str, &str)]) -> Output {
    let file = dir.join("config.toml");
    std::fs::write(&file, text).expect("write config");
    run(&["check", "--config", file.to_str().expect("utf-8 path")], env)
}

/// Asserts exit code 2 and exactly one stderr line naming the file and `key`.
fn assert_config_error(out: &Output, dir: &Path, key: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "exit code; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got: {stderr}");
    let line = lines[0];
    let file = dir.join("config.toml");
    assert!(line.contains(file.to_str().expect("utf-8")), "names the file: {line}");
    assert!(line.contains(key), "names the key {key}: {line}");
    assert!(!stderr.contains("panicked") && !stderr.to_lowercase().contains("backtrace"), "no panic: {stderr}");
    line.to_string()
}

const ROUTES: &str = "[[routes]]\npath = \"/\"\nupstream = \"echo\"\n";

#[test]
fn check_accepts_a_good_config_and_prints_a_summary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), "", "[[routes]]\npath = \"/api\"\nupstream = \"http://127.0.0.1:9\"\nroles = [\"admin\"]\n");
    let out = check(dir.path(), &text, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("is valid"), "summary: {stdout}");
    assert!(stdout.contains("/api") && stdout.contains("http://127.0.0.1:9") && stdout.contains("roles=admin"), "summary: {stdout}");
    assert!(stdout.contains("ES256"), "summary names the algorithm: {stdout}");
}

#[test]
fn unknown_key_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), "", ROUTES).replace("[server]\n", "[server]\nlisten_adress = \"127.0.0.1:0\"\n");
    let line = assert_config_error(&check(dir.path(), &text, &[]), dir.path(), "server");
    assert!(line.contains("listen_adress"), "{line}");
}

#[test]
fn unknown_key_in_a_route_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), "", "[[routes]]\npath = \"/\"\nupstream = \"echo\"\nrole = [\"admin\"]\n");
    let line = assert_config_error(&check(dir.path(), &text, &[]), dir.path(), "routes");
    assert!(line.contains("role"), "{line}");
}

#[test]
fn bad_duration_names_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), "", ROUTES).replace("upstream_timeout = \"2s\"", "upstream_timeout = \"2 seconds\"");
    assert_config_error(&check(dir.path(), &text, &[]), dir.path(), "server.upstream_timeout");
}

/// A leeway of days ("30d" typed for "30s") would turn expiry checking off.
#[test]
fn a_leeway_beyond_clock_skew_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), "", ROUTES);
    let line = assert_config_error(&check(dir.path(), &text.replace("leeway = \"5s\"", "leeway = \"30d\""), &[]), dir.path(), "jwt.leeway");
    assert!(line.contains("10m"), "{line}");
    let out = check(dir.path(), &text.replace("leeway = \"5s\"", "leeway = \"10m\""), &[]);
    assert_eq!(out.status.code(), Some(0), "10m is allowed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Durations past 100 years overflowed: a deadline panicked on every
/// request, and `token --ttl` printed a token that expired before it was issued.
#[test]
fn durations_past_a_century_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), "", ROUTES).replace("upstream_timeout = \"2s\"", "upstream_timeout = \"18446744073709551615s\"");
    let line = assert_config_error(&check(dir.path(), &text, &[]), dir.path(), "server.upstream_timeout");
    assert!(line.contains("100 years"), "{line}");
    let text = config_text(dir.path(), "", ROUTES);
    check(dir.path(), &text, &[]);
    let file = dir.path().join("config.toml");
    let out = run(&["token", "--config", file.to_str().expect("utf-8"), "--sub", "alice", "--ttl", "18446744073709551000s"], &[]);
    assert_eq!(out.status.code(), Some(1), "stdout: {}", String::from_utf8_lossy(&out.stdout));
    assert!(out.stdout.is_empty(), "a token was printed");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ttl"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A `max_connections` past tokio's semaphore limit passed `check` and
/// panicked the serve task: no TLS listener, while /healthz said ok.
#[test]
fn connection_and_upstream_request_limits_past_a_million_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), "", ROUTES);
    for (key, value) in [("max_connections", "4000000000000000000"), ("max_upstream_requests", "1000001"), ("max_connections", "0")] {
        let bad = with_server(&text, &format!("{key} = {value}"));
        let line = assert_config_error(&check(dir.path(), &bad, &[]), dir.path(), &format!("server.{key}"));
        assert!(line.contains("1000000"), "names the limit: {line}");
    }
    let out = check(
        dir.path(),
        &with_server(
            &text,
            "max_connections = 1000000
max_upstream_requests = 1000000",
        ),
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "the limit itself is allowed: {}", String::from_utf8_lossy(&out.stderr));
    // `serve` refuses it too, at once, instead of running without a listener.
    let file = dir.path().join("config.toml");
    std::fs::write(&file, with_server(&text, "max_connections = 4000000000000000000")).expect("write config");
    let mut child = Command::new(bin())
        .args(["serve", "--config", file.to_str().expect("utf-8 path")])
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn authgate");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`serve` with max_connections past the limit is still running");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr).expect("stderr");
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("server.max_connections") && !stderr.contains("panicked"), "{stderr}");
}

/// Expiry times are whole seconds: a refresh token shorter than one would
/// expire as it is issued.
#[test]
fn a_refresh_ttl_under_a_second_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("users.toml"), "").expect("users");
    let text = config_text(dir.path(), "[login]\nusers_file = \"users.toml\"\nrefresh_ttl = \"500ms\"\n", ROUTES);
    assert_config_error(&check(dir.path(), &text, &[]), dir.path(), "login.refresh_ttl");
}

#[test]
fn bad_upstream_names_the_route_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let routes = "[[routes]]\npath = \"/\"\nupstream = \"echo\"\n\n[[routes]]\npath = \"/b\"\nupstream = \"ftp://example.com\"\n";
    let text = config_text(dir.path(), "", routes);
    assert_config_error(&check(dir.path(), &text, &[]), dir.path(), "routes[1].upstream");
}

/// A route path in any form but the one requests are matched in would
/// never match, and its requests would fall to a weaker route: raw UTF-8
/// or a space (requests arrive encoded), `;` (matching ignores segment
/// parameters), `?` or `#` (not part of a path).
#[test]
fn route_paths_must_be_in_the_form_requests_are_matched_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (path, says) in [
        ("/caf\u{e9}", "write \"/caf%C3%A9\""),
        ("/ad min", "write \"/ad%20min\""),
        ("/caf%c3%a9", "write \"/caf%C3%A9\""),
        ("/admin;x", "cannot hold ';'"),
        ("/q?x", "cannot hold '?'"),
        ("/a#b", "cannot hold '#'"),
    ] {
        let routes = format!("[[routes]]\npath = \"/\"\nupstream = \"echo\"\n\n[[routes]]\npath = \"{path}\"\nupstream = \"echo\"\n");
        let text = config_text(dir.path(), "", &routes);
        let line = assert_config_error(&check(dir.path(), &text, &[]), dir.path(), "routes[1].path");
        assert!(line.contains(says), "{path}: {line}");
    }
}

/// What `serve` could not start, or would never use, is a config error
/// for `check` too: two listeners on one address, a route on a path that
/// authgate answers itself.
#[test]
fn listeners_on_one_address_and_routes_on_authgates_own_paths_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = with_server(&config_text(dir.path(), "", ROUTES), "").replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:23448\"");
    for (lines, key) in [
        ("admin_listen = \"127.0.0.1:23448\"", "server.admin_listen"),
        ("http_redirect = \"127.0.0.1:23448\"", "server.http_redirect"),
        ("http_redirect = \"127.0.0.1:23449\"\nadmin_listen = \"127.0.0.1:23449\"", "server.admin_listen"),
    ] {
        let line = assert_config_error(&check(dir.path(), &with_server(&text, lines), &[]), dir.path(), key);
        assert!(line.contains("address too"), "{line}");
    }
    for own in ["/.well-known/jwks.json", "/auth/verify"] {
        let routes = format!("[[routes]]\npath = \"/\"\nupstream = \"echo\"\n\n[[routes]]\npath = \"{own}\"\nupstream = \"echo\"\n");
        let line = assert_config_error(&check(dir.path(), &config_text(dir.path(), "", &routes), &[]), dir.path(), "routes[1].path");
        assert!(line.contains("answered by authgate itself"), "{line}");
    }
}

/// One header, one meaning: a claim on the subject's header would make
/// `X-Auth-Subject` carry whatever that claim says. And a header that
/// frames the message, or that authgate sets itself, is never one.
#[test]
fn identity_headers_are_distinct_and_never_a_framing_or_forwarding_header() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "claim_headers = { roles = \"X-Auth-Roles\", nick = \"x-auth-subject\" }",
            "identity.claim_headers.nick",
            "already identity.subject_header",
        ),
        ("subject_header = \"X-Auth-Roles\"\nclaim_headers = { roles = \"X-Auth-Roles\" }", "identity.claim_headers.roles", "already"),
        ("claim_headers = { a = \"X-A\", b = \"X-A\" }", "identity.claim_headers.b", "already identity.claim_headers.a"),
        ("claim_headers = { roles = \"X_Auth_Subject\" }", "identity.claim_headers.roles", "already identity.subject_header"),
        ("claim_headers = { size = \"Content-Length\" }", "identity.claim_headers.size", "cannot be an identity header"),
        ("subject_header = \"Transfer-Encoding\"", "identity.subject_header", "cannot be an identity header"),
        ("subject_header = \"X-Forwarded-For\"", "identity.subject_header", "cannot be an identity header"),
        ("claim_headers = { a = \"X_Forwarded_Host\" }", "identity.claim_headers.a", "cannot be an identity header"),
        ("claim_headers = { a = \"Transfer_Encoding\" }", "identity.claim_headers.a", "cannot be an identity header"),
    ];
    for (identity, key, why) in cases {
        let text = config_text(dir.path(), &format!("[identity]\n{identity}\n"), ROUTES);
        let line = assert_config_error(&check(dir.path(), &text, &[]), dir.path(), key);
        assert!(line.contains(why), "{identity}: {line}");
    }
}

fn hs_config(dir: &Path, var: &str) -> String {
    config_text(dir, &format!("[jwt]\nalgorithm = \"HS256\"\nsecret_env = \"{var}\"\nissuer = \"authgate\"\naudience = \"api\"\n"), ROUTES)
}

#[test]
fn hs_secret_env_var_missing_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let var = "AUTHGATE_TEST_CONFIG_MISSING_SECRET";
    let mut cmd = Command::new(bin());
    let file = dir.path().join("config.toml");
    std::fs::write(&file, hs_config(dir.path(), var)).expect("write");
    let out = cmd.args(["check", "--config", file.to_str().expect("utf-8")]).env_remove(var).output().expect("run");
    let line = assert_config_error(&out, dir.path(), "jwt.secret_env");
    assert!(line.contains(var), "names the variable: {line}");
}

#[test]
fn hs_secret_shorter_than_32_bytes_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let var = "AUTHGATE_TEST_CONFIG_SHORT_SECRET";
    let out = check(dir.path(), &hs_config(dir.path(), var), &[(var, "0123456789abcdef0123456789abcde")]);
    let line = assert_config_error(&out, dir.path(), "jwt.secret_env");
    assert!(line.contains("32"), "says the minimum: {line}");
    // 32 bytes is enough.
    let out = check(dir.path(), &hs_config(dir.path(), var), &[(var, "0123456789abcdef0123456789abcdef")]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn hs_secret_is_not_accepted_inline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = hs_config(dir.path(), "X").replace("secret_env = \"X\"", "secret = \"0123456789abcdef0123456789abcdef\"");
    assert_config_error(&check(dir.path(), &text, &[]), dir.path(), "jwt");
}

#[test]
fn invalid_toml_is_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), "", ROUTES).replace("[server]", "[server");
    let out = check(dir.path(), &text, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().filter(|l| !l.trim().is_empty()).count(), 1, "{stderr}");
}

#[test]
fn missing_config_file_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("nope.toml");
    let out = run(&["check", "--config", file.to_str().expect("utf-8")], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("nope.toml") && !stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn minted_token_is_accepted_by_the_gateway() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), "", &format!("[[routes]]\npath = \"/\"\nupstream = \"{}\"\n", up.url()));
    let file = dir.path().join("config.toml");
    std::fs::write(&file, &text).expect("write config");
    let out = run(
        &[
            "token",
            "--sub",
            "svc-backup",
            "--ttl",
            "10m",
            "--claim",
            "email=backup@example.com",
            "--claim",
            "roles=[\"ops\",\"backup\"]",
            "--config",
            file.to_str().expect("utf-8"),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).expect("utf-8").trim().to_string();
    let payload = token.split('.').nth(1).expect("a JWT");
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).expect("base64")).expect("json");
    let ttl = claims["exp"].as_u64().expect("exp") - claims["iat"].as_u64().expect("iat");
    assert_eq!(ttl, 600, "--ttl 10m: {claims}");

    let gw = Gateway::start_in(dir, &text).await;
    let r = gw.client.get(gw.url("/x")).bearer_auth(&token).send().await.expect("send");
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert_eq!(seen.headers["x-auth-subject"], "svc-backup");
    assert_eq!(seen.headers["x-auth-email"], "backup@example.com");
    assert_eq!(seen.headers["x-auth-roles"], "ops,backup");
    gw.stop().await;
}

#[test]
fn hs256_token_is_minted_from_the_env_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let var = "AUTHGATE_TEST_CONFIG_TOKEN_SECRET";
    let secret = "an HS256 secret that is long enough, 42 bytes";
    let file = dir.path().join("config.toml");
    std::fs::write(&file, hs_config(dir.path(), var)).expect("write");
    let out = run(&["token", "--sub", "alice", "--config", file.to_str().expect("utf-8")], &[(var, secret)]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).expect("utf-8").trim().to_string();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.set_audience(&["api"]);
    v.set_issuer(&["authgate"]);
    let data =
        jsonwebtoken::decode::<serde_json::Value>(&token, &jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()).expect("key"), &v)
            .expect("verifies with the env secret");
    assert_eq!(data.claims["sub"], "alice");
    // An empty subject, or one with a control character, would mint a
    // token the gateway refuses; revoking an empty subject means nothing.
    for sub in ["", " ", "a\nb", "a\tb", " alice", "alice "] {
        let out = run(&["token", "--sub", sub, "--config", file.to_str().expect("utf-8")], &[(var, secret)]);
        assert_eq!(out.status.code(), Some(1), "--sub {sub:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = run(&["revoke", "--sub", "", "--config", file.to_str().expect("utf-8")], &[(var, secret)]);
    assert_eq!(out.status.code(), Some(1), "revoke --sub '': {}", String::from_utf8_lossy(&out.stderr));
    // A registered claim cannot be set with --claim: refused, not ignored.
    for claim in ["sub=mallory", "exp=1", "iss=elsewhere"] {
        let out = run(&["token", "--sub", "alice", "--claim", claim, "--config", file.to_str().expect("utf-8")], &[(var, secret)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "--claim {claim}: {stderr}");
        assert!(stderr.contains("set by authgate itself") && out.stdout.is_empty(), "--claim {claim}: {stderr}");
    }
    // roles=admin,user is not JSON, so it would be one role holding ','
    // (refused by the gateway); the error shows the array form.
    let out = run(&["token", "--sub", "alice", "--claim", "roles=admin,user", "--config", file.to_str().expect("utf-8")], &[(var, secret)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(r#"roles=["admin","user"]"#) && out.stdout.is_empty(), "{stderr}");
    let out = run(
        &["token", "--sub", "alice", "--claim", r#"roles=["admin","user"]"#, "--config", file.to_str().expect("utf-8")],
        &[(var, secret)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    // Any value of a forwarded claim that the gateway would refuse.
    for claim in [r#"roles=["a,b"]"#, r#"roles=[" admin"]"#, "roles= admin", "email= a", "email=a\tb", r#"roles={"a":1}"#] {
        let out = run(&["token", "--sub", "alice", "--claim", claim, "--config", file.to_str().expect("utf-8")], &[(var, secret)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "--claim {claim:?}: {stderr}");
        assert!(stderr.contains("would refuse") || stderr.contains("one role cannot hold"), "--claim {claim:?}: {stderr}");
    }
}

#[test]
fn gen_cert_writes_a_certificate_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("out");
    let out = run(&["gen-cert", "--out", out_dir.to_str().expect("utf-8"), "--host", "gw.internal"], &[]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let cert = std::fs::read_to_string(out_dir.join("dev-cert.pem")).expect("cert written");
    let key = std::fs::read_to_string(out_dir.join("dev-key.pem")).expect("key written");
    assert!(cert.contains("BEGIN CERTIFICATE"), "{cert}");
    assert!(key.contains("PRIVATE KEY"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out_dir.join("dev-key.pem")).expect("meta").permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key is private: {mode:o}");
    }
    // Names no client could ask for are refused, before anything is written.
    for bad in ["", "a b", "x..example", "host with space"] {
        let bad_dir = dir.path().join("bad");
        let out = run(&["gen-cert", "--out", bad_dir.to_str().expect("utf-8"), "--host", bad], &[]);
        assert_eq!(out.status.code(), Some(1), "--host {bad:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(!bad_dir.join("dev-cert.pem").exists(), "--host {bad:?} wrote a certificate");
    }
    let ip = run(&["gen-cert", "--out", dir.path().join("ip").to_str().expect("utf-8"), "--host", "10.0.0.7", "--host", "::1"], &[]);
    assert_eq!(ip.status.code(), Some(0), "IP addresses: {}", String::from_utf8_lossy(&ip.stderr));
    let wild = run(&["gen-cert", "--out", dir.path().join("wild").to_str().expect("utf-8"), "--host", "*.example.com"], &[]);
    assert_eq!(wild.status.code(), Some(0), "a wildcard: {}", String::from_utf8_lossy(&wild.stderr));
}

#[tokio::test]
async fn gen_cert_output_serves_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run(&["gen-cert", "--out", dir.path().to_str().expect("utf-8")], &[]);
    assert_eq!(out.status.code(), Some(0));
    std::fs::rename(dir.path().join("dev-cert.pem"), dir.path().join("cert.pem")).expect("rename");
    std::fs::rename(dir.path().join("dev-key.pem"), dir.path().join("key.pem")).expect("rename");
    let text = config_text(dir.path(), "", ROUTES).replace("generate_self_signed = true", "generate_self_signed = false");
    let gw = Gateway::start_in(dir, &text).await;
    let r = gw.client.get(gw.url("/")).send().await.expect("TLS with the gen-cert certificate");
    assert_eq!(r.status(), 401);
    gw.stop().await;
}

/// The quick start's race: `cargo run --release` in one terminal and
/// `authgate token` in another both start on a fresh checkout and both find
/// no signing key. Each may generate one, but only one lands, whole, and
/// every process uses it: no "File exists" failure, no half-written key, no
/// token signed by a key that is not the one on disk.
#[test]
fn processes_starting_at_once_share_one_generated_signing_key() {
    let up_url = "http://127.0.0.1:9";
    for attempt in 0..5 {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = config_text(dir.path(), "", &format!("[[routes]]\npath = \"/\"\nupstream = \"{up_url}\"\n"));
        let file = dir.path().join("config.toml");
        std::fs::write(&file, &text).expect("write config");
        let children: Vec<_> = (0..6)
            .map(|_| {
                Command::new(bin())
                    .args(["token", "--sub", "racer", "--config", file.to_str().expect("utf-8")])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("spawn")
            })
            .collect();
        let key = {
            let outs: Vec<_> = children.into_iter().map(|c| c.wait_with_output().expect("wait")).collect();
            let pem = std::fs::read(dir.path().join("jwt.pem")).expect("the key file");
            let decoding = jsonwebtoken::DecodingKey::from_ec_pem(&public_pem(&pem)).expect("public key");
            for out in outs {
                assert_eq!(out.status.code(), Some(0), "attempt {attempt}: {}", String::from_utf8_lossy(&out.stderr));
                let token = String::from_utf8(out.stdout).expect("utf-8").trim().to_string();
                let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
                v.set_audience(&["api"]);
                v.set_issuer(&["authgate"]);
                jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &v).expect("signed with the key on disk");
            }
            pem
        };
        assert!(String::from_utf8_lossy(&key).starts_with("-----BEGIN PRIVATE KEY-----"));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left behind: {leftovers:?}");
    }
}

/// The public half of a PKCS#8 EC private key, as PEM.
fn public_pem(private_pem: &[u8]) -> Vec<u8> {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    let text = String::from_utf8_lossy(private_pem);
    let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(b64).expect("base64");
    let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der).expect("pkcs8");
    let spki = aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::PublicKeyX509Der>::as_der(kp.public_key()).expect("spki");
    authgate::keys::pem_encode("PUBLIC KEY", spki.as_ref()).into_bytes()
}

/// Users-file hash costs were uncapped: `check` (and a start) hashed a
/// dummy of a bcrypt cost 31 or a many-GiB argon2id for hours.
#[test]
fn a_users_file_hash_past_the_cost_limits_is_an_error_naming_the_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Cost 17 on a cost-4 hash: never hashed when refused.
    let bcrypt = bcrypt::hash("pw", 4).expect("bcrypt").replacen("$04$", "$17$", 1);
    std::fs::write(dir.path().join("users.toml"), format!("[[users]]\nusername = \"carol\"\npassword_hash = \"{bcrypt}\"\n"))
        .expect("users");
    let text = config_text(dir.path(), "[login]\nusers_file = \"users.toml\"\n", ROUTES);
    let out = check(dir.path(), &text, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("users.toml") && stderr.contains("users[0].password_hash") && stderr.contains("at most 16"), "{stderr}");
}
