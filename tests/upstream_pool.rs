//! The upstream connection pool, over real TLS to the gateway and real TCP
//! to the upstream: connections are reused across requests and response
//! kinds, a connection whose response was abandoned is never reused, an
//! idle connection the upstream closed is replaced without the client
//! noticing, and concurrent requests each get their own connection.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn start(up: &str) -> Gateway {
    Gateway::start("", &format!("[[routes]]\npath = \"/\"\nupstream = \"{up}\"\nauth = \"public\"\n")).await
}

#[tokio::test]
async fn one_upstream_connection_serves_request_after_request() {
    let up = Upstream::start().await;
    let gw = start(&up.url()).await;
    for i in 0..10 {
        // Fixed length, chunked, no body at all, and a HEAD: each leaves
        // the connection ready for the next request.
        let r = gw.client.get(gw.url(&format!("/p{i}"))).send().await.expect("send");
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.expect("body"), "upstream ok, body_len=0");
        let r = gw.client.get(gw.url("/bytes/200000")).send().await.expect("send");
        assert_eq!(r.bytes().await.expect("body").len(), 200_000);
        let r = gw.client.get(gw.url("/status/204")).send().await.expect("send");
        assert_eq!(r.status(), 204);
        let r = gw.client.head(gw.url("/h")).send().await.expect("send");
        assert_eq!(r.status(), 200);
        let r = gw.client.post(gw.url("/post")).body(vec![b'a'; 100_000]).send().await.expect("send");
        assert_eq!(r.text().await.expect("body"), "upstream ok, body_len=100000");
    }
    assert_eq!(up.hits(), 50);
    assert_eq!(up.conns.load(Ordering::SeqCst), 1, "every request should have reused the first upstream connection");
    gw.stop().await;
}

#[tokio::test]
async fn a_response_the_client_abandoned_never_serves_the_next_request() {
    let up = Upstream::start().await;
    let gw = start(&up.url()).await;
    // Read the head and a little of a 20 MB body, then leave: the rest of
    // it is still on its way from the upstream.
    let mut s = raw_tls(&gw, &[b"http/1.1"]).await;
    s.write_all(b"GET /bytes/20000000 HTTP/1.1\r\nHost: localhost\r\n\r\n").await.expect("write");
    let mut buf = vec![0u8; 16 * 1024];
    let n = s.read(&mut buf).await.expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    drop(s);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Reusing that connection would hand the next client the old body.
    for i in 0..5 {
        let r = gw.client.get(gw.url(&format!("/after{i}"))).send().await.expect("send");
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.expect("body"), "upstream ok, body_len=0");
        assert_eq!(up.last().path, format!("/after{i}"));
    }
    assert_eq!(up.conns.load(Ordering::SeqCst), 2, "the abandoned connection is closed, one new one serves the rest");
    gw.stop().await;
}

/// An upstream that answers one request per connection and then closes it,
/// without saying `Connection: close`: a keep-alive timeout of zero.
async fn closing_upstream() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
            });
        }
    });
    (format!("http://{addr}"), accepted)
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_replaced_unseen() {
    let (url, accepted) = closing_upstream().await;
    let gw = start(&url).await;
    for _ in 0..5 {
        let r = gw.client.get(gw.url("/x")).send().await.expect("send");
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.expect("body"), "ok");
        // The upstream's close reaches the gateway while the connection is idle.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 5);
    gw.stop().await;
}

#[tokio::test]
async fn concurrent_requests_each_get_a_connection_and_then_share_them() {
    let up = Upstream::start().await;
    let gw = start(&up.url()).await;
    let cert = gw.cert_path();
    let round = || {
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let client = client_for(&cert, false);
                let url = gw.url(&format!("/c{i}"));
                tokio::spawn(async move {
                    let r = client.post(url).body(vec![b'b'; 10_000 + i]).send().await.expect("send");
                    (r.status().as_u16(), r.text().await.expect("body"), i)
                })
            })
            .collect();
        futures_util::future::join_all(tasks)
    };
    for _ in 0..3 {
        for t in round().await {
            let (status, body, i) = t.expect("task");
            assert_eq!(status, 200);
            // Each response belongs to its own request.
            assert_eq!(body, format!("upstream ok, body_len={}", 10_000 + i));
        }
    }
    let conns = up.conns.load(Ordering::SeqCst);
    assert!(conns <= 16, "{conns} upstream connections for 16 concurrent clients: idle ones are not being reused");
    assert_eq!(up.hits(), 48);
    gw.stop().await;
}

#[tokio::test]
async fn a_dead_upstream_is_502_at_once_and_a_revived_one_is_used_again() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let gw = start(&format!("http://{addr}")).await;
    let started = std::time::Instant::now();
    let r = gw.client.get(gw.url("/x")).send().await.expect("send");
    assert_eq!(r.status(), 502);
    assert!(started.elapsed() < Duration::from_secs(1), "a refused connection should fail fast");
    // The upstream comes back on the same port.
    let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 || tcp.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nback").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let r = gw.client.get(gw.url("/x")).send().await.expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.expect("body"), "back");
    gw.stop().await;
}

/// An upstream that takes its time both ways: it reads each request body
/// as it trickles in, then answers in chunks 50 ms apart, on one
/// keep-alive connection. It records each body it got.
async fn dripping_upstream() -> (String, Arc<AtomicUsize>, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (count, seen) = (Arc::clone(&accepted), Arc::clone(&bodies));
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // The head, then as many body bytes as it announces.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let len: usize =
                        head.lines().find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0))).unwrap_or(0);
                    while buf.len() < head_end + len {
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body: Vec<u8> = buf.drain(..head_end + len).skip(head_end).collect();
                    seen.lock().expect("lock").push(String::from_utf8_lossy(&body).into_owned());
                    if tcp.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").await.is_err() {
                        return;
                    }
                    for piece in ["one ", "two ", "three ", "four ", "five"] {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        if tcp.write_all(format!("{:x}\r\n{piece}\r\n", piece.len()).as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    if tcp.write_all(b"0\r\n\r\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), accepted, bodies)
}

/// Reads a chunked response to its last chunk and returns its body.
async fn read_chunked<S: AsyncReadExt + Unpin>(s: &mut S) -> String {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while !raw.ends_with(b"0\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => raw.extend_from_slice(&buf[..n]),
            other => panic!("the response stopped before its last chunk ({other:?}): {}", String::from_utf8_lossy(&raw)),
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, mut rest) = text.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
        if n == 0 {
            break;
        }
        body.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    body
}

#[tokio::test]
async fn bodies_that_trickle_both_ways_go_through_whole_on_one_connection() {
    let (url, accepted, bodies) = dripping_upstream().await;
    let gw = start(&url).await;
    let mut s = raw_tls(&gw, &[b"http/1.1"]).await;
    for i in 0..3 {
        // The request body in three pieces, 50 ms apart; the response in
        // five, 50 ms apart. Each piece has to wake the other side.
        s.write_all(b"POST /drip HTTP/1.1\r\nHost: localhost\r\nContent-Length: 12\r\n\r\nfirst").await.expect("write");
        for piece in [&b"-mid-"[..], &format!("{i}.").into_bytes()] {
            tokio::time::sleep(Duration::from_millis(50)).await;
            s.write_all(piece).await.expect("write");
        }
        let started = std::time::Instant::now();
        assert_eq!(read_chunked(&mut s).await, "one two three four five");
        // Five pieces 50 ms apart: 250 ms, and a piece the gateway noticed
        // late (on some other wake-up than its own) makes it 900 ms.
        let took = started.elapsed();
        assert!(took < Duration::from_millis(600), "the response took {took:?}: its pieces were not passed on as they came");
    }
    assert_eq!(*bodies.lock().expect("lock"), ["first-mid-0.", "first-mid-1.", "first-mid-2."]);
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one upstream connection for the three requests");
    gw.stop().await;
}

/// Each request in flight holds an upstream connection, and one HTTP/2
/// client can have many in flight: `max_upstream_requests` bounds them all
/// together, so clients cannot make authgate open upstream connections
/// until it runs out of files. A request over the limit waits up to
/// `upstream_timeout` for a slot, then gets 503; a slot frees when its
/// response is done with.
#[tokio::test]
async fn requests_in_flight_to_upstreams_are_bounded() {
    let up = Upstream::start().await;
    let routes = format!("[[routes]]\npath = \"/\"\nupstream = \"{}\"\nauth = \"public\"\n", up.url());
    let dir = tempfile::tempdir().expect("tempdir");
    let text = with_server(&config_text(dir.path(), "", &routes), "max_upstream_requests = 2")
        .replace("upstream_timeout = \"2s\"", "upstream_timeout = \"1s\"");
    let gw = Gateway::start_in(dir, &text).await;
    // Two large downloads their clients do not read: both slots held.
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut s = raw_tls(&gw, &[b"http/1.1"]).await;
        s.write_all(b"GET /bytes/100000000 HTTP/1.1\r\nHost: localhost\r\n\r\n").await.expect("write");
        let mut buf = [0u8; 1024];
        assert!(s.read(&mut buf).await.expect("head") > 0);
        holders.push(s);
    }
    let started = std::time::Instant::now();
    let r = gw.client.get(gw.url("/third")).send().await.expect("send");
    assert_eq!(r.status(), 503, "over the limit");
    assert!(started.elapsed() >= Duration::from_millis(900), "waited {:?} for a slot", started.elapsed());
    assert_eq!(json(r).await["error"], "unavailable");
    assert_eq!(up.conns.load(Ordering::SeqCst), 2, "no third upstream connection was opened");
    // The refused request never went upstream: no upstream latency for it.
    let metrics = gw.app().metrics.encode();
    let count = metrics.lines().find(|l| l.starts_with("authgate_upstream_duration_seconds_count{route=\"/\"}")).expect("the histogram");
    assert!(count.ends_with(" 2"), "{count}");
    // The clients leave: their slots come back.
    drop(holders);
    let mut status = 0;
    for _ in 0..50 {
        status = gw.client.get(gw.url("/fourth")).send().await.expect("send").status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200, "a slot came back");
    gw.stop().await;
}
