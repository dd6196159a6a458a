//! The clients the FastAPI tutorial served: Python `requests`, form login
//! to /token, then `Authorization: Bearer`, exactly as the tutorial's flow.
mod common;

use common::*;

fn python_with_requests() -> bool {
    let ok = std::process::Command::new("python3").args(["-c", "import requests"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "python3 with requests is missing: install it with `pip install requests`");
        println!("SKIPPED: python client test: python3 with requests not found; install it with: pip install requests");
    }
    ok
}

#[tokio::test]
async fn python_requests_logs_in_and_calls_through_like_the_tutorial() {
    if !python_with_requests() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let hash = authgate::users::hash_password("secret123").expect("hash");
    let users = format!(
        "[[users]]\nusername = \"johndoe\"\npassword_hash = \"{hash}\"\nroles = [\"user\"]\nclaims = {{ email = \"johndoe@example.com\" }}\n"
    );
    std::fs::write(dir.path().join("users.toml"), users).expect("users");
    let text = config_text(dir.path(), "[login]\nusers_file = \"users.toml\"\n", "[[routes]]\npath = \"/\"\nupstream = \"echo\"\n");
    let gw = Gateway::start_in(dir, &text).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python_client.py");
    let base = format!("https://localhost:{}", gw.addr.port());
    let cert = gw.cert_path();
    let out = tokio::process::Command::new("python3")
        .args([script, &base, &cert.display().to_string(), "johndoe", "secret123"])
        .output()
        .await
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "python client failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let mut lines = stdout.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json line"));
    let first = lines.next().expect("first line");
    assert_eq!(first["login"], 200);
    assert_eq!(first["me_status"], 200);
    assert_eq!(first["me"]["path"], "/users/me");
    assert_eq!(first["me"]["headers"]["x-auth-subject"], "johndoe");
    assert_eq!(first["me"]["headers"]["x-auth-email"], "johndoe@example.com");
    let second = lines.next().expect("second line");
    assert_eq!(second["bad_status"], 401);
    assert!(second["www_authenticate"].as_str().is_some_and(|v| v.starts_with("Bearer error=\"invalid_token\"")));
    gw.stop().await;
}
