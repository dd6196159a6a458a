//! Slow and greedy clients: a request body trickled a byte a second, 500
//! idle TLS connections, a client that never reads a large response. In
//! each case the gateway keeps answering other clients quickly, cuts the
//! abuser off within a bounded time, and its memory stays bounded (VmRSS of
//! this process, which runs the gateway in-process).
//! (Slowloris on request heads: tests/timeouts.rs.)

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).expect("VmRSS")
}

/// Samples VmRSS every 20 ms until dropped; `grown_mb` is the peak over the start.
struct RssPeak {
    base: u64,
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssPeak {
    fn start() -> RssPeak {
        let base = rss_kb();
        let peak = Arc::new(AtomicU64::new(base));
        let p = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                p.fetch_max(rss_kb(), Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        RssPeak { base, peak, task }
    }

    fn grown_mb(&self) -> u64 {
        self.peak.load(Relaxed).max(rss_kb()).saturating_sub(self.base) / 1024
    }
}

impl Drop for RssPeak {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const MAX_GROWTH_MB: u64 = 100;

/// A gateway in front of `up` with these `[server]` settings replacing the harness's.
async fn gateway(up: &Upstream, server: &str) -> Gateway {
    gateway_to(&up.url(), server).await
}

async fn gateway_to(upstream: &str, server: &str) -> Gateway {
    let dir = tempfile::tempdir().expect("tempdir");
    let routes = format!("[[routes]]\npath = \"/\"\nupstream = \"{upstream}\"\nauth = \"public\"\n");
    let text = config_text(dir.path(), "", &routes).replace("upstream_timeout = \"2s\"", server);
    Gateway::start_in(dir, &text).await
}

/// Asserts that 20 requests from a well-behaved client each answer 200 within a second.
async fn others_are_served(gw: &Gateway, what: &str) {
    for i in 0..20 {
        let t = Instant::now();
        let r = gw.client.get(gw.url(&format!("/other/{i}"))).send().await.expect("send");
        assert_eq!(r.status(), 200, "{what}");
        r.bytes().await.expect("body");
        assert!(t.elapsed() < Duration::from_secs(1), "{what}: a request took {:?}", t.elapsed());
    }
}

/// Reads until `needle` has arrived or the stream ends; returns what was read.
async fn read_until<S: AsyncReadExt + Unpin>(s: &mut S, needle: &str, limit: Duration) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    while !String::from_utf8_lossy(&out).contains(needle) {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickled_a_byte_a_second_is_cut_off_with_408() {
    let up = Upstream::start().await;
    // upstream_timeout far above body_timeout: the body limit alone must act.
    let gw = gateway(&up, "upstream_timeout = \"60s\"\nbody_timeout = \"2s\"\nbody_min_rate = 500").await;
    let mut slow = raw_tls(&gw, &[b"http/1.1"]).await;
    slow.write_all(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n").await.expect("head");
    let started = Instant::now();
    let (mut rd, mut wr) = tokio::io::split(slow);
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            if wr.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    others_are_served(&gw, "while a body trickles").await;
    let answer = read_until(&mut rd, "\r\n\r\n", Duration::from_secs(15)).await;
    let took = started.elapsed();
    trickle.abort();
    assert_eq!(status_of(&answer), 408, "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    // 2 s, plus 2 ms for each byte that did arrive.
    assert!(took >= Duration::from_millis(1900) && took < Duration::from_secs(6), "cut off after {took:?}");
    // The upstream got the head and a few bytes, then the request was aborted.
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.seen.lock().expect("lock").iter().all(|s| s.path != "/upload") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = up.seen.lock().expect("lock").iter().find(|s| s.path == "/upload").cloned().expect("the upstream saw the upload start");
    assert!(seen.body_len < 10, "{} bytes arrived", seen.body_len);
    gw.stop().await;
}

/// A fast start earns no long stall: 64 KB at once would be worth two
/// minutes at `body_min_rate` 500, yet a client that then stops sending
/// is cut off `body_timeout` after its last bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_then_a_stall_is_cut_off_body_timeout_after_the_last_bytes() {
    let up = Upstream::start().await;
    let gw = gateway(&up, "upstream_timeout = \"60s\"\nbody_timeout = \"2s\"\nbody_min_rate = 500").await;
    let mut s = raw_tls(&gw, &[b"http/1.1"]).await;
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 200000\r\n\r\n").await.expect("head");
    s.write_all(&vec![b'b'; 65536]).await.expect("burst");
    s.flush().await.expect("flush");
    let stalled = Instant::now();
    let answer = read_until(&mut s, "\r\n\r\n", Duration::from_secs(15)).await;
    let took = stalled.elapsed();
    assert_eq!(status_of(&answer), 408, "{answer}");
    assert!(took < Duration::from_secs(6), "408 only after {took:?}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_steady_body_above_the_minimum_rate_goes_through() {
    let up = Upstream::start().await;
    let gw = gateway(&up, "upstream_timeout = \"60s\"\nbody_timeout = \"1s\"\nbody_min_rate = 500").await;
    let mut s = raw_tls(&gw, &[b"http/1.1"]).await;
    // 6 KB at about 2 KB/s: three times longer than body_timeout, above the rate.
    s.write_all(b"POST /steady HTTP/1.1\r\nHost: localhost\r\nContent-Length: 6144\r\n\r\n").await.expect("head");
    let t = Instant::now();
    for _ in 0..12 {
        s.write_all(&[b's'; 512]).await.expect("body");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let answer = read_until(&mut s, "body_len=6144", Duration::from_secs(10)).await;
    assert!(t.elapsed() > Duration::from_secs(2), "the body was not slow");
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert_eq!(up.last().body_len, 6144);
    gw.stop().await;
}

/// `upstream_timeout` is for an upstream that is late, not for an upload
/// that takes a while: it counts from the last piece of the body that went
/// upstream. A 3 s upload with a 1 s `upstream_timeout` gets its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_longer_than_upstream_timeout_is_answered_while_it_moves() {
    let up = Upstream::start().await;
    let gw = gateway(&up, "upstream_timeout = \"1s\"\nbody_timeout = \"1s\"\nbody_min_rate = 500").await;
    let mut s = raw_tls(&gw, &[b"http/1.1"]).await;
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 6144\r\n\r\n").await.expect("head");
    let t = Instant::now();
    for _ in 0..12 {
        s.write_all(&[b'u'; 512]).await.expect("body");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let answer = read_until(&mut s, "body_len=6144", Duration::from_secs(10)).await;
    assert!(t.elapsed() > Duration::from_millis(2500), "the upload was not slow");
    assert_eq!(status_of(&answer), 200, "{answer}");
    gw.stop().await;
}

/// A client that stops sending its body is the client's fault, whatever
/// `upstream_timeout` says: the upstream is waiting for the body, and the
/// body's own deadline answers 408, not 504.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_its_upload_gets_408_not_504() {
    let up = Upstream::start().await;
    let gw = gateway(&up, "upstream_timeout = \"1s\"\nbody_timeout = \"3s\"\nbody_min_rate = 500").await;
    let mut s = raw_tls(&gw, &[b"http/1.1"]).await;
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n0123456789").await.expect("head");
    let t = Instant::now();
    let answer = read_until(&mut s, "\r\n\r\n", Duration::from_secs(15)).await;
    assert_eq!(status_of(&answer), 408, "{answer}");
    assert!(t.elapsed() >= Duration::from_millis(2900), "408 after only {:?}", t.elapsed());
    gw.stop().await;
}

/// An upstream that stops reading the request body is late: 504 once
/// `upstream_timeout` has passed with no byte going through, even though
/// the client would keep sending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stops_reading_the_body_is_504_after_upstream_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    // Accepts and holds connections, never reading a byte.
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    let gw = gateway_to(&format!("http://{addr}"), "upstream_timeout = \"1s\"\nbody_timeout = \"1s\"\nbody_min_rate = 500").await;
    let s = raw_tls(&gw, &[b"http/1.1"]).await;
    let (mut rd, mut wr) = tokio::io::split(s);
    let t = Instant::now();
    let send = tokio::spawn(async move {
        let _ = wr.write_all(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 67108864\r\n\r\n").await;
        let chunk = vec![b'b'; 64 * 1024];
        for _ in 0..1024 {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    let answer = read_until(&mut rd, "\r\n\r\n", Duration::from_secs(15)).await;
    assert_eq!(status_of(&answer), 504, "{answer}");
    assert!(t.elapsed() < Duration::from_secs(8), "504 only after {:?}", t.elapsed());
    send.abort();
    hold.abort();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_idle_connections_do_not_slow_others_down() {
    let up = Upstream::start().await;
    let gw = gateway(&up, "upstream_timeout = \"2s\"").await;
    others_are_served(&gw, "warm-up").await;
    let rss = RssPeak::start();
    let mut idle = Vec::with_capacity(500);
    for _ in 0..500 {
        idle.push(raw_tls(&gw, &[b"http/1.1"]).await);
    }
    // Half of them also started a request head and stopped.
    for s in idle.iter_mut().step_by(2) {
        s.write_all(b"GET /never HTTP/1.1\r\nHost: loc").await.expect("partial head");
        s.flush().await.expect("flush");
    }
    others_are_served(&gw, "beside 500 idle connections").await;
    let grown = rss.grown_mb();
    assert!(grown < MAX_GROWTH_MB, "RSS grew by {grown} MB for 500 idle connections");
    // The half-sent heads are cut off by header_read_timeout (2 s in the harness).
    let t = Instant::now();
    let mut closed = 0;
    for s in idle.iter_mut().step_by(2) {
        let rest = read_until(s, "\u{0}never", Duration::from_secs(10).saturating_sub(t.elapsed())).await;
        assert!(!rest.contains("200"), "{rest}");
        closed += 1;
    }
    assert_eq!(closed, 250);
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(up.seen.lock().expect("lock").iter().filter(|s| s.path == "/never").count(), 0);
    drop(idle);
    gw.stop().await;
}

/// A client that reads slowly but steadily (a phone on a poor link) keeps
/// its download, however short `idle_timeout`: the response keeps moving.
/// The kernel's send buffer used to autotune to megabytes and report the
/// socket writable only once half of it had drained, so a client reading
/// 1 MB/s looked stalled for over a second and was cut off mid-response.
#[tokio::test]
async fn a_client_that_reads_slowly_keeps_its_download() {
    const SIZE: usize = 6 * 1024 * 1024;
    let up = Upstream::start().await;
    let gw = gateway(&up, "idle_timeout = \"1s\"").await;
    let tcp = tokio::net::TcpSocket::new_v4().expect("socket");
    tcp.set_recv_buffer_size(64 * 1024).expect("SO_RCVBUF");
    let tcp = tcp.connect(gw.addr).await.expect("connect");
    let connector = tokio_rustls::TlsConnector::from(rustls_client(&gw.cert_path(), &[b"http/1.1"]));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut s = connector.connect(name, tcp).await.expect("TLS");
    s.write_all(format!("GET /bytes/{SIZE} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes()).await.expect("request");
    // About 1 MB/s: 16 KB every 16 ms.
    let (mut got, mut buf, t) = (0usize, vec![0u8; 16 * 1024], Instant::now());
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Err(_) => panic!("stalled after {got} bytes"),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got += n,
        }
        tokio::time::sleep(Duration::from_millis(16)).await;
    }
    assert!(got > SIZE, "cut off after {got} of {SIZE} bytes ({:?}); idle_timeout is 1 s", t.elapsed());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_does_not_hold_memory_or_others() {
    const BIG: usize = 300 * 1024 * 1024;
    let up = Upstream::start().await;
    let gw = gateway(&up, "upstream_timeout = \"2s\"\nidle_timeout = \"3s\"").await;
    others_are_served(&gw, "warm-up").await;
    let rss = RssPeak::start();
    let mut greedy = Vec::new();
    for _ in 0..3 {
        let mut s = raw_tls(&gw, &[b"http/1.1"]).await;
        s.write_all(format!("GET /bytes/{BIG} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes()).await.expect("request");
        let head = read_until(&mut s, "\r\n\r\n", Duration::from_secs(5)).await;
        assert_eq!(status_of(&head), 200, "{head}");
        greedy.push(s); // and never read again
    }
    others_are_served(&gw, "while 3 clients do not read 300 MB responses").await;
    // If the gateway buffered what the clients do not read, 900 MB would
    // pile up. Keep serving others past idle_timeout (3 s) meanwhile.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(4) {
        others_are_served(&gw, "still").await;
    }
    let grown = rss.grown_mb();
    assert!(grown < MAX_GROWTH_MB, "RSS grew by {grown} MB: unread responses are buffered");
    // Nothing moved on those connections for idle_timeout: the gateway has
    // closed them, so a stalled reader cannot pin a connection and an
    // upstream socket forever. Reading now yields what sat in the socket
    // buffers (a few MB), then the end, not the rest of the 300 MB.
    for s in &mut greedy {
        let mut buf = vec![0u8; 1 << 20];
        let mut read = 0usize;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
                Err(_) => panic!("neither data nor the end after {read} bytes"),
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => read += n,
            }
            assert!(read < 64 << 20, "still streaming after {read} bytes: the stalled connection was kept open");
        }
    }
    gw.stop().await;
}
