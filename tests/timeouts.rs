//! Connection deadlines: a slow request head is cut off after
//! `header_read_timeout`, an idle keep-alive connection lives until
//! `idle_timeout` (not the header timeout), then closes.
mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROUTES: &str = "[[routes]]\npath = \"/\"\nupstream = \"echo\"\nauth = \"public\"\n";

async fn gateway(idle: &str) -> Gateway {
    let dir = tempfile::tempdir().expect("tempdir");
    // header_read_timeout is 2s in the harness config; idle_timeout set here.
    let text = config_text(dir.path(), "", ROUTES)
        .replace("header_read_timeout = \"2s\"", &format!("header_read_timeout = \"2s\"\nidle_timeout = \"{idle}\""));
    Gateway::start_in(dir, &text).await
}

/// Reads until EOF or error; returns how long that took (None: still open at `limit`).
async fn time_to_close<S: AsyncReadExt + Unpin>(s: &mut S, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(t.elapsed()), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(t.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn slow_request_head_is_cut_off_after_header_read_timeout() {
    let gw = gateway("60s").await;
    let mut s = raw_tls(&gw, &[b"http/1.1"]).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: loc").await.expect("write");
    let closed = time_to_close(&mut s, Duration::from_secs(10)).await.expect("a slowloris head must be cut off");
    assert!(closed >= Duration::from_millis(1500) && closed < Duration::from_secs(5), "closed after {closed:?}");
}

#[tokio::test]
async fn idle_keep_alive_outlives_the_header_timeout_and_closes_at_idle_timeout() {
    let gw = gateway("5s").await;
    let mut s = raw_tls(&gw, &[b"http/1.1"]).await;
    s.write_all(b"GET /a HTTP/1.1\r\nHost: localhost\r\n\r\n").await.expect("write");
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).await.expect("response");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Idle past the 2s header timeout: the connection must still serve.
    assert_eq!(time_to_close(&mut s, Duration::from_secs(3)).await, None, "closed before idle_timeout");
    s.write_all(b"GET /b HTTP/1.1\r\nHost: localhost\r\n\r\n").await.expect("write");
    let n = s.read(&mut buf).await.expect("second response");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "keep-alive reuse failed");
    let closed = time_to_close(&mut s, Duration::from_secs(10)).await.expect("an idle connection must close at idle_timeout");
    assert!(closed >= Duration::from_secs(4), "closed after {closed:?}, before the 5s idle_timeout");
}
