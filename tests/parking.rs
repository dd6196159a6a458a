//! Parking (src/server.rs, src/conn.rs): an HTTP/1 keep-alive connection that
//! has been idle for a moment ends its hyper session, frees hyper's buffers
//! and waits for the socket to become readable holding only the TLS stream.
//! These tests hold the client's side of the contract: a parked connection
//! serves its next request as if nothing happened, pipelined requests are
//! never cut, a half-sent head is never parked on, and deadlines and shutdown
//! still apply. The `authgate_parked_connections` gauge shows the parking.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A gateway in front of `up` on a public route; `set` replaces `[server]`
/// lines of the harness's config (`header_read_timeout = "2s"`,
/// `shutdown_grace = "2s"`) or adds new ones.
async fn gateway(up: &Upstream, set: &[(&str, &str)]) -> Gateway {
    let dir = tempfile::tempdir().expect("tempdir");
    let routes = format!("[[routes]]\npath = \"/\"\nupstream = \"{}\"\nauth = \"public\"\n", up.url());
    let mut text = config_text(dir.path(), "", &routes);
    for (key, value) in set {
        let line = format!("{key} = \"{value}\"");
        match text.lines().find(|l| l.starts_with(&format!("{key} ="))).map(str::to_string) {
            Some(old) => text = text.replacen(&old, &line, 1),
            None => text = with_server(&text, &line),
        }
    }
    Gateway::start_in(dir, &text).await
}

fn parked(gw: &Gateway) -> i64 {
    gw.app().metrics.parked_connections.get()
}

/// Waits until the gauge reads `n`; false if it does not within `within`.
async fn wait_parked(gw: &Gateway, n: i64, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if parked(gw) == n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    parked(gw) == n
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")
}

/// Sends `GET path` on `s` and returns the status of its response.
async fn get_on(s: &mut Tls, path: &str) -> u16 {
    s.write_all(get(path).as_bytes()).await.expect("write");
    responses(s, 1).await[0].0
}

/// Reads until `n` complete responses (by Content-Length) have arrived.
async fn responses(s: &mut Tls, n: usize) -> Vec<(u16, String)> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let parsed = split_responses(&raw);
        if parsed.len() >= n {
            return parsed;
        }
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(k)) if k > 0 => raw.extend_from_slice(&buf[..k]),
            other => panic!("after {} of {n} responses: {other:?}; read: {}", parsed.len(), String::from_utf8_lossy(&raw)),
        }
    }
}

fn split_responses(mut raw: &[u8]) -> Vec<(u16, String)> {
    let mut out = Vec::new();
    while let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let len: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if raw.len() < end + 4 + len {
            break;
        }
        let body = String::from_utf8_lossy(&raw[end + 4..end + 4 + len]).into_owned();
        out.push((status_of(&head), body));
        raw = &raw[end + 4 + len..];
    }
    out
}

fn paths(up: &Upstream) -> Vec<String> {
    up.seen.lock().expect("lock").iter().map(|s| s.path.clone()).collect()
}

#[tokio::test]
async fn an_idle_connection_parks_and_serves_its_next_request() {
    let up = Upstream::start().await;
    let gw = gateway(&up, &[]).await;
    let mut s = raw_tls(&gw, &[b"http/1.1"]).await;
    for path in ["/a", "/b", "/c"] {
        s.write_all(get(path).as_bytes()).await.expect("write");
        let r = responses(&mut s, 1).await;
        assert_eq!(r[0].0, 200, "{path}: {r:?}");
        assert_eq!(parked(&gw), 0, "a connection that just answered is not parked");
        assert!(wait_parked(&gw, 1, Duration::from_secs(3)).await, "{path}: the idle connection did not park");
    }
    assert_eq!(paths(&up), ["/a", "/b", "/c"], "every request reached the upstream once, in order");
    drop(s);
    assert!(wait_parked(&gw, 0, Duration::from_secs(3)).await, "a client that leaves while parked is let go");
    gw.stop().await;
}

#[tokio::test]
async fn a_connection_that_never_sends_a_request_parks_too() {
    let up = Upstream::start().await;
    let gw = gateway(&up, &[]).await;
    let mut s = raw_tls(&gw, &[b"http/1.1"]).await;
    assert!(wait_parked(&gw, 1, Duration::from_secs(3)).await, "a silent connection did not park");
    assert_eq!(get_on(&mut s, "/late").await, 200);
    gw.stop().await;
}

#[tokio::test]
async fn pipelined_requests_are_all_answered_across_a_park() {
    let up = Upstream::start().await;
    let gw = gateway(&up, &[]).await;
    let mut s = raw_tls(&gw, &[b"http/1.1"]).await;
    s.write_all(format!("{}{}", get("/1"), get("/2")).as_bytes()).await.expect("write");
    let r = responses(&mut s, 2).await;
    assert!(r.iter().all(|(st, _)| *st == 200), "{r:?}");
    assert!(wait_parked(&gw, 1, Duration::from_secs(3)).await, "did not park after the pipelined pair");
    assert_eq!(get_on(&mut s, "/3").await, 200);
    assert_eq!(paths(&up), ["/1", "/2", "/3"]);
    gw.stop().await;
}

/// The next request's head arrives cut in half, behind the first request:
/// hyper holds its first half, so parking now would lose it (hyper would
/// answer 400). It must not park on it.
#[tokio::test]
async fn a_half_sent_pipelined_head_is_never_parked_on() {
    let up = Upstream::start().await;
    let gw = gateway(&up, &[("header_read_timeout", "6s")]).await;
    let mut s = raw_tls(&gw, &[b"http/1.1"]).await;
    s.write_all(format!("{}GET /2 HTTP/1.1\r\nHo", get("/1")).as_bytes()).await.expect("write");
    assert_eq!(responses(&mut s, 1).await[0].0, 200);
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert_eq!(parked(&gw), 0, "parked while hyper held half a head");
    s.write_all(b"st: localhost\r\n\r\n").await.expect("write");
    let r = responses(&mut s, 1).await;
    assert_eq!(r[0].0, 200, "the second request, completed after the pause: {r:?}");
    assert_eq!(paths(&up), ["/1", "/2"]);
    gw.stop().await;
}

/// After a request with a body, hyper may still be reading that body after
/// the response went out, so the connection never parks on it: it keeps its
/// session until a request without a body (then parks as usual) or
/// idle_timeout.
#[tokio::test]
async fn after_a_request_with_a_body_it_parks_only_after_a_request_without_one() {
    let up = Upstream::start().await;
    let gw = gateway(&up, &[]).await; // header_read_timeout = 2s
    let mut s = raw_tls(&gw, &[b"http/1.1"]).await;
    s.write_all(b"POST /form HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello").await.expect("write");
    assert_eq!(responses(&mut s, 1).await[0].0, 200);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(parked(&gw), 0, "parked after a request with a body");
    assert_eq!(get_on(&mut s, "/next").await, 200);
    assert!(wait_parked(&gw, 1, Duration::from_secs(3)).await, "did not park after a request without a body");
    assert_eq!(get_on(&mut s, "/last").await, 200);
    assert_eq!(paths(&up), ["/form", "/next", "/last"]);
    gw.stop().await;
}

/// An upstream that answers 401 as soon as it has a request head, then
/// reads and discards whatever else arrives.
async fn early_answering_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let _ = tcp.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n").await;
                while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

/// Regression (review of the parking change): the upstream answered before
/// the request body had all arrived, the client went quiet past
/// header_read_timeout, and the connection parked while hyper was still
/// reading the body. The end-of-file ended the body early, and the rest of
/// the body was then read as new requests: a client could smuggle a request
/// past the framing. Bytes of a body must stay body bytes.
#[tokio::test]
async fn a_body_still_arriving_is_never_cut_by_parking() {
    let up = Upstream::start().await;
    let early = early_answering_upstream().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let routes = format!(
        "[[routes]]\npath = \"/early\"\nupstream = \"http://{early}\"\nauth = \"public\"\n\n\
         [[routes]]\npath = \"/smuggled\"\nupstream = \"{}\"\nauth = \"public\"\n",
        up.url()
    );
    let text = config_text(dir.path(), "", &routes); // header_read_timeout = 2s
    let gw = Gateway::start_in(dir, &text).await;
    let mut s = raw_tls(&gw, &[b"http/1.1"]).await;
    s.write_all(b"POST /early HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n0123456789").await.expect("write");
    assert_eq!(responses(&mut s, 1).await[0].0, 401, "the upstream's early answer");
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(parked(&gw), 0, "parked while the request body was still arriving");
    let _ = s.write_all(get("/smuggled").as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(up.hits(), 0, "body bytes were read as a request: {:?}", paths(&up));
    gw.stop().await;
}

#[tokio::test]
async fn a_parked_connection_is_closed_at_idle_timeout() {
    let up = Upstream::start().await;
    let gw = gateway(&up, &[("idle_timeout", "3s")]).await;
    let mut s = raw_tls(&gw, &[b"http/1.1"]).await;
    assert_eq!(get_on(&mut s, "/").await, 200);
    assert!(wait_parked(&gw, 1, Duration::from_secs(3)).await);
    let t = Instant::now();
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(6), s.read(&mut buf)).await;
    assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "expected the server to close, got {r:?}");
    assert!(t.elapsed() < Duration::from_millis(3500), "closed after {:?}", t.elapsed());
    assert!(wait_parked(&gw, 0, Duration::from_secs(1)).await);
    gw.stop().await;
}

#[tokio::test]
async fn shutdown_closes_parked_connections_without_waiting_for_the_grace() {
    let up = Upstream::start().await;
    let gw = gateway(&up, &[("shutdown_grace", "20s")]).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut s = raw_tls(&gw, &[b"http/1.1"]).await;
        assert_eq!(get_on(&mut s, "/").await, 200);
        clients.push(s);
    }
    assert!(wait_parked(&gw, 5, Duration::from_secs(3)).await);
    let t = Instant::now();
    gw.stop().await;
    assert!(t.elapsed() < Duration::from_secs(3), "shutdown took {:?} with parked connections", t.elapsed());
    for mut s in clients {
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
        assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "a parked client was not closed: {r:?}");
    }
}

#[tokio::test]
async fn http2_connections_do_not_park_and_keep_working() {
    let up = Upstream::start().await;
    let gw = gateway(&up, &[]).await;
    let client = client_for(&gw.cert_path(), true);
    for i in 0..2 {
        let r = client.get(gw.url(&format!("/h2/{i}"))).send().await.expect("send");
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(parked(&gw), 0, "an HTTP/2 connection parked");
    }
    gw.stop().await;
}

/// Bytes that carry no request (here the first byte of a TLS record that
/// never completes) wake a parked connection, but it parks again only after
/// PARK_AFTER: a client cannot make it build and drop an HTTP session per
/// packet.
#[tokio::test]
async fn bytes_without_a_request_do_not_make_it_park_and_unpark_in_a_loop() {
    let up = Upstream::start().await;
    let gw = gateway(&up, &[]).await;
    let mut s = raw_tls(&gw, &[b"http/1.1"]).await;
    assert_eq!(get_on(&mut s, "/").await, 200);
    assert!(wait_parked(&gw, 1, Duration::from_secs(3)).await);
    // The record header's first byte (application data), on the raw socket.
    s.get_mut().0.write_all(&[0x17]).await.expect("write");
    assert!(wait_parked(&gw, 0, Duration::from_secs(1)).await, "the byte did not wake the parked connection");
    let woke = Instant::now();
    while woke.elapsed() < Duration::from_millis(700) {
        assert_eq!(parked(&gw), 0, "parked again {:?} after waking", woke.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(wait_parked(&gw, 1, Duration::from_secs(3)).await, "did not park again");
    gw.stop().await;
}
