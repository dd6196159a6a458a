//! Limits: the per-route rate limit (per subject, per client IP without a
//! token; 429 with Retry-After), `max_connections` (extra clients wait and
//! are served when a slot frees), HTTP/2 `MAX_CONCURRENT_STREAMS` and the
//! rapid-reset flood (CVE-2023-44487) answered with GOAWAY while other
//! clients are served. (431 for heads and 413 for `/token` bodies are in
//! tests/proxy.rs and tests/login.rs.)
mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn route_rate_limit_is_per_subject_or_client_ip_with_retry_after() {
    let up = Upstream::start().await;
    let routes = format!(
        "[[routes]]\npath = \"/api\"\nupstream = \"{}\"\nrate_limit = \"2/minute\"\n\n\
         [[routes]]\npath = \"/open\"\nupstream = \"echo\"\nauth = \"public\"\nrate_limit = \"1/hour\"\n\n\
         [[routes]]\npath = \"/free\"\nupstream = \"echo\"\nauth = \"public\"\n",
        up.url()
    );
    let gw = Gateway::start("", &routes).await;
    let (alice, bob) = (gw.token("alice", json!({})), gw.token("bob", json!({})));
    let get = |path: &'static str, token: Option<String>| {
        let mut r = gw.client.get(gw.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    for _ in 0..2 {
        assert_eq!(get("/api/x", Some(alice.clone())).await.expect("send").status(), 200);
    }
    let r = get("/api/x", Some(alice.clone())).await.expect("send");
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str().expect("ascii").parse().expect("seconds");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(json(r).await["error"], "rate_limited");
    assert_eq!(up.hits(), 2, "a limited request never reaches the upstream");
    assert_eq!(get("/api/x", Some(bob)).await.expect("send").status(), 200, "bob has his own budget");
    // A second token of alice's shares her budget: the key is the subject, not the token.
    assert_eq!(get("/api/x", Some(gw.token("alice", json!({})))).await.expect("send").status(), 429);

    assert_eq!(get("/open", None).await.expect("send").status(), 200);
    assert_eq!(get("/open", None).await.expect("send").status(), 429, "unauthenticated: keyed by client IP");
    for _ in 0..5 {
        assert_eq!(get("/free", None).await.expect("send").status(), 200, "a route without rate_limit is not limited");
    }
}

#[tokio::test]
async fn route_rate_limit_counts_carry_over_a_reload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), "", "[[routes]]\npath = \"/\"\nupstream = \"echo\"\nauth = \"public\"\nrate_limit = \"1/hour\"\n");
    let gw = Gateway::start_in(dir, &text).await;
    assert_eq!(gw.client.get(gw.url("/")).send().await.expect("send").status(), 200);
    gw.running().reload().await.expect("reload");
    assert_eq!(gw.client.get(gw.url("/")).send().await.expect("send").status(), 429, "a reload must not reset the limit");
}

/// A TLS connection that has been served one request (so it holds a slot).
async fn held_connection(gw: &Gateway) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut s = raw_tls(gw, &[b"http/1.1"]).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await.expect("write");
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).await.expect("read");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    s
}

#[tokio::test]
async fn past_max_connections_clients_wait_and_are_served_when_a_slot_frees() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = with_server(
        &config_text(dir.path(), "", "[[routes]]\npath = \"/\"\nupstream = \"echo\"\nauth = \"public\"\n"),
        "max_connections = 2",
    );
    let gw = Gateway::start_in(dir, &text).await;
    let first = held_connection(&gw).await;
    let _second = held_connection(&gw).await;

    let client = client_for(&gw.cert_path(), false);
    let url = gw.url("/third");
    let third = tokio::spawn(async move { client.get(&url).send().await.map(|r| r.status().as_u16()) });
    // It waits (in the kernel's backlog) rather than failing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!third.is_finished(), "a third connection was served past max_connections = 2");
    drop(first);
    let status = tokio::time::timeout(Duration::from_secs(10), third).await.expect("served once a slot freed").expect("task");
    assert_eq!(status.expect("the waiting client must not fail"), 200);
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK: GET https://localhost/ from the static table, :authority as a literal.
fn get_headers() -> Vec<u8> {
    let mut h = vec![0x82, 0x87, 0x84, 0x01, 9];
    h.extend_from_slice(b"localhost");
    h
}

/// Reads frames until GOAWAY (returns its error code), EOF or the deadline;
/// also returns the server's SETTINGS_MAX_CONCURRENT_STREAMS.
async fn read_until_goaway<S: AsyncReadExt + Unpin>(s: &mut S, within: Duration) -> (Option<u32>, Option<u32>) {
    let deadline = tokio::time::Instant::now() + within;
    let (mut buf, mut goaway, mut max_streams) = (Vec::new(), None, None);
    let mut chunk = [0u8; 16384];
    loop {
        while buf.len() >= 9 {
            let len = (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let (kind, payload) = (buf[3], buf[9..9 + len].to_vec());
            if kind == 0x4 && buf[4] & 1 == 0 {
                for setting in payload.chunks_exact(6) {
                    if u16::from_be_bytes([setting[0], setting[1]]) == 0x3 {
                        max_streams = Some(u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]));
                    }
                }
            }
            if kind == 0x7 && payload.len() >= 8 {
                goaway = Some(u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]));
            }
            buf.drain(..9 + len);
        }
        if goaway.is_some() {
            return (goaway, max_streams);
        }
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return (goaway, max_streams),
        }
    }
}

#[tokio::test]
async fn http2_rapid_reset_flood_gets_goaway_and_other_clients_are_served() {
    let gw = Gateway::start("", "[[routes]]\npath = \"/\"\nupstream = \"echo\"\nauth = \"public\"\n").await;
    let mut s = raw_tls(&gw, &[b"h2"]).await;
    let mut flood = PREFACE.to_vec();
    flood.extend(frame(0x4, 0, 0, &[]));
    // 1000 streams, each opened and cancelled at once (RST_STREAM CANCEL).
    for i in 0..1000u32 {
        let id = 2 * i + 1;
        flood.extend(frame(0x1, 0x4 | 0x1, id, &get_headers()));
        flood.extend(frame(0x3, 0, id, &8u32.to_be_bytes()));
    }
    let started = Instant::now();
    let _ = s.write_all(&flood).await;
    let (goaway, max_streams) = read_until_goaway(&mut s, Duration::from_secs(10)).await;
    assert_eq!(max_streams, Some(authgate::server::MAX_CONCURRENT_STREAMS), "the server advertises its stream limit");
    assert_eq!(goaway, Some(0xb), "ENHANCE_YOUR_CALM GOAWAY expected after {:?}", started.elapsed());

    // Everyone else is still served, over HTTP/2 too.
    for http2 in [false, true] {
        let c = client_for(&gw.cert_path(), http2);
        assert_eq!(c.get(gw.url("/after")).send().await.expect("served after the flood").status(), 200);
    }
}

/// The soft and hard open-file limits of process `pid`, from /proc.
fn open_file_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read /proc/PID/limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("a Max open files line");
    let mut n = line.split_whitespace().skip(3).map(|v| v.parse::<u64>().expect("a number"));
    (n.next().expect("soft"), n.next().expect("hard"))
}

fn max_connections_config(dir: &tempfile::TempDir, n: usize) -> String {
    let routes = "[[routes]]\npath = \"/\"\nupstream = \"echo\"\nauth = \"public\"\n";
    with_server(&config_text(dir.path(), "", routes), &format!("max_connections = {n}"))
}

/// Regression (DoS review F6): `max_connections` was never checked against
/// RLIMIT_NOFILE. A soft limit below the hard one is raised at start.
#[cfg(target_os = "linux")]
#[test]
fn the_soft_open_file_limit_is_raised_to_the_hard_limit_at_start() {
    let hard = rlimit_hard();
    if hard <= 256 {
        return eprintln!("skipped: the hard open-file limit is {hard}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let text = max_connections_config(&dir, 10);
    let gw = spawn_binary_after(dir, &text, &[], Some("ulimit -Sn 256"));
    assert_eq!(open_file_limits(gw.pid()), (hard, hard), "log:\n{}", gw.log());
    assert!(gw.log().contains("raised the open-file limit"), "{}", gw.log());
}

/// ... and a hard limit below two files a connection is named in a warning.
#[cfg(target_os = "linux")]
#[test]
fn a_hard_open_file_limit_below_what_max_connections_needs_is_warned_about() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = max_connections_config(&dir, 1000);
    let gw = spawn_binary_after(dir, &text, &[], Some("ulimit -n 256"));
    let log = gw.log();
    let warning = log.lines().find(|l| l.contains("WARN") && l.contains("RLIMIT_NOFILE")).unwrap_or_else(|| panic!("no warning:\n{log}"));
    for part in ["max_connections=1000", "needed=2100", "limit=256", "LimitNOFILE"] {
        assert!(warning.contains(part), "{part} missing from: {warning}");
    }
}

/// This process's hard open-file limit (the test's children inherit it).
fn rlimit_hard() -> u64 {
    open_file_limits(std::process::id()).1
}
