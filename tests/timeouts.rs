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

type H2Conn = tokio::task::JoinHandle<hyper::Result<()>>;

/// An HTTP/2 client connection to the gateway, its connection driven by a
/// task; with `pings`, the client pings every 300 ms, as gRPC and
/// browsers' keep-alives do.
async fn h2_client(gw: &Gateway, pings: bool) -> (hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>, H2Conn) {
    let tls = raw_tls(gw, &[b"h2"]).await;
    let mut b = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    if pings {
        b.timer(hyper_util::rt::TokioTimer::new()).keep_alive_interval(Duration::from_millis(300)).keep_alive_while_idle(true);
    }
    let (send, conn) = b.handshake(hyper_util::rt::TokioIo::new(tls)).await.expect("h2");
    (send, tokio::spawn(conn))
}

fn h2_get(gw: &Gateway, path: &str) -> http::Request<http_body_util::Empty<bytes::Bytes>> {
    http::Request::get(format!("https://localhost:{}{path}", gw.addr.port())).body(http_body_util::Empty::new()).expect("request")
}

/// HTTP/2 reads are frames, not request heads: the client's settings ack
/// after a response, its pings and window updates must not start the head
/// timer, which cut every h2 connection (and any download or upload on it)
/// `header_read_timeout` after its last request, without a GOAWAY.
#[tokio::test]
async fn an_http2_connection_outlives_the_header_timeout_between_requests() {
    let gw = gateway("60s").await;
    let (mut send, conn) = h2_client(&gw, true).await;
    assert_eq!(send.send_request(h2_get(&gw, "/a")).await.expect("first request").status(), 200);
    // Past the 2 s header timeout, idle on the same connection.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!conn.is_finished(), "the h2 connection was closed before idle_timeout");
    assert_eq!(send.send_request(h2_get(&gw, "/b")).await.expect("second request on the same connection").status(), 200);
}

/// An upstream that answers before it has the whole upload (a streaming or
/// early response): the rest of the body arrives while the response goes
/// out, and is no new request head. It was cut off `header_read_timeout`
/// into the upload.
#[tokio::test]
async fn an_upload_the_upstream_answers_early_is_not_cut_at_the_header_timeout() {
    const LEN: usize = 40_000;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.expect("accept");
        let mut seen = Vec::new();
        let mut buf = [0u8; 8192];
        let head_end = loop {
            let n = tcp.read(&mut buf).await.expect("read head");
            assert!(n > 0, "the gateway closed before the head");
            seen.extend_from_slice(&buf[..n]);
            if let Some(i) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        tcp.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nstart\r\n").await.expect("early head");
        let mut got = seen.len() - head_end;
        while got < LEN {
            let n = tcp.read(&mut buf).await.expect("read body");
            assert!(n > 0, "the body stopped after {got} bytes");
            got += n;
        }
        tcp.write_all(b"4\r\ndone\r\n0\r\n\r\n").await.expect("end");
        let _ = tcp.read(&mut buf).await;
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let routes = format!("[[routes]]\npath = \"/\"\nupstream = \"http://{addr}\"\nauth = \"public\"\n");
    let text = config_text(dir.path(), "", &routes);
    let gw = Gateway::start_in(dir, &text).await;
    let s = raw_tls(&gw, &[b"http/1.1"]).await;
    let (mut rd, mut wr) = tokio::io::split(s);
    wr.write_all(format!("POST /up HTTP/1.1\r\nHost: localhost\r\nContent-Length: {LEN}\r\n\r\n").as_bytes()).await.expect("head");
    let upload = tokio::spawn(async move {
        // 40 KB over 4 s: twice the 2 s header timeout, far above body_min_rate.
        for _ in 0..40 {
            wr.write_all(&[b'u'; LEN / 40]).await.expect("the upload was cut off");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        wr
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(15);
    while !answer.ends_with(b"0\r\n\r\n") && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(15), rd.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200") && text.contains("done") && text.ends_with("0\r\n\r\n"), "answer: {text:?}");
    upload.await.expect("the upload went through");
}

/// Nor do a client's pings keep an HTTP/2 connection without streams open:
/// authgate's answers to them are no more activity than they are. It
/// closes at idle_timeout after its last stream, with a GOAWAY, as if the
/// client were silent.
#[tokio::test]
async fn pings_do_not_keep_an_idle_http2_connection_open() {
    let gw = gateway("2s").await;
    let (mut send, conn) = h2_client(&gw, true).await;
    assert_eq!(send.send_request(h2_get(&gw, "/a")).await.expect("request").status(), 200);
    let started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(8), conn).await;
    assert!(closed.is_ok(), "still open {:?} after its last stream, idle_timeout 2 s, the client pinging", started.elapsed());
    assert!(started.elapsed() >= Duration::from_millis(1500), "closed after {:?}", started.elapsed());
}

/// Nor do pings in bursts, whose answers go out together in one write
/// (four PING acks are 68 bytes): the answers are no larger than what the
/// client sent.
#[tokio::test]
async fn bursts_of_pings_do_not_keep_an_idle_http2_connection_open() {
    let gw = gateway("2s").await;
    let s = raw_tls(&gw, &[b"h2"]).await;
    let (mut rd, mut wr) = tokio::io::split(s);
    wr.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.expect("preface and settings");
    let pinger = tokio::spawn(async move {
        let ping = b"\0\0\x08\x06\0\0\0\0\0pingpong";
        loop {
            let burst: Vec<u8> = ping.iter().copied().cycle().take(ping.len() * 8).collect();
            if wr.write_all(&burst).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let closed = time_to_close(&mut rd, Duration::from_secs(10)).await;
    pinger.abort();
    let closed = closed.expect("still open 10 s into idle_timeout 2 s, the client pinging in bursts");
    assert!(closed >= Duration::from_millis(1500), "closed after {closed:?}");
}

/// An idle HTTP/2 connection ends with a GOAWAY (RFC 9113 §6.8), so that a
/// client knows its next request was not taken: the client's connection
/// ends cleanly, not with an unexpected end of stream.
#[tokio::test]
async fn an_idle_http2_connection_ends_with_a_goaway() {
    let gw = gateway("2s").await;
    let (mut send, conn) = h2_client(&gw, false).await;
    assert_eq!(send.send_request(h2_get(&gw, "/a")).await.expect("request").status(), 200);
    let ended = tokio::time::timeout(Duration::from_secs(8), conn).await.expect("closed at idle_timeout").expect("join");
    assert!(ended.is_ok(), "the connection ended without a GOAWAY: {ended:?}");
}

/// Reads at most 16 KB every 250 ms: a client on a slow link.
struct Throttled<T> {
    inner: T,
    next: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Throttled<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::ready!(self.next.as_mut().poll(cx));
        let mut chunk = vec![0u8; buf.remaining().min(16 * 1024)];
        let mut limited = tokio::io::ReadBuf::new(&mut chunk);
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, &mut limited);
        if r.is_ready() {
            buf.put_slice(limited.filled());
            let at = tokio::time::Instant::now() + Duration::from_millis(250);
            self.next.as_mut().reset(at);
        }
        r
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Throttled<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        b: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, b)
    }
    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An h2 response that hyper has taken whole, but that still waits in
/// authgate for a slow client's socket, is activity as it goes out: the
/// download completes, though it ends well after idle_timeout has passed
/// since the last body chunk was taken.
#[tokio::test]
async fn a_slow_http2_download_is_not_cut_at_idle_timeout() {
    use http_body_util::BodyExt;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let routes = format!("[[routes]]\npath = \"/\"\nupstream = \"{}\"\nauth = \"public\"\n", up.url());
    let text =
        config_text(dir.path(), "", &routes).replace("header_read_timeout = \"2s\"", "header_read_timeout = \"2s\"\nidle_timeout = \"2s\"");
    let gw = Gateway::start_in(dir, &text).await;
    // A small receive buffer keeps the rest of the response in authgate, not in the kernel.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(8 * 1024).expect("rcvbuf");
    let tcp = socket.connect(gw.addr).await.expect("connect");
    let tls = tokio_rustls::TlsConnector::from(rustls_client(&gw.cert_path(), &[b"h2"]))
        .connect(rustls_pki_types::ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("tls");
    let slow = Throttled { inner: tls, next: Box::pin(tokio::time::sleep(Duration::ZERO)) };
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(8 << 20)
        .handshake(hyper_util::rt::TokioIo::new(slow))
        .await
        .expect("h2");
    tokio::spawn(conn);
    const LEN: usize = 400 * 1024;
    let resp = send.send_request(h2_get(&gw, &format!("/bytes/{LEN}"))).await.expect("response");
    assert_eq!(resp.status(), 200);
    let (mut body, mut got, started) = (resp.into_body(), 0usize, Instant::now());
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap_or_else(|e| panic!("cut after {got} bytes, {:?}: {e}", started.elapsed()));
        got += frame.data_ref().map_or(0, |d| d.len());
    }
    assert_eq!(got, LEN, "the download ended early, after {:?}", started.elapsed());
    assert!(started.elapsed() > Duration::from_secs(4), "not slow enough to test anything: {:?}", started.elapsed());
}
