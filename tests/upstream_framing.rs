//! Pooled upstream connections and response framing, against scripted raw
//! upstreams: a connection never goes back to the pool with response bytes
//! unread or a request body still in flight, so the next request (another
//! client's) always gets its own answer and the upstream never reads
//! leftover body bytes as a request. Early responses, extra bytes (in the
//! same write, or while idle), 1xx, trailers, `Connection: close`, a body
//! that breaks after an early answer, and `Content-Length` with chunked.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the scripted upstream does with the n-th request line it parses on
/// a connection: the raw bytes to write, whether to read the request body
/// (by Content-Length) before answering, and bytes to write a while later.
#[derive(Clone, Default)]
struct Answer {
    bytes: Vec<u8>,
    read_body: bool,
    later: Option<(Duration, Vec<u8>)>,
    close: bool,
}

type Script = Arc<dyn Fn(&str) -> Answer + Send + Sync>;

/// Request lines the upstream parsed, in order, tagged with the connection.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<(usize, String)>>>);

impl Log {
    fn lines(&self) -> Vec<(usize, String)> {
        self.0.lock().expect("log").clone()
    }
    fn conns(&self) -> usize {
        self.lines().iter().map(|(c, _)| *c).max().map_or(0, |c| c + 1)
    }
}

async fn scripted_upstream(script: Script) -> (SocketAddr, Log) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let log = Log::default();
    let l = log.clone();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((tcp, _)) = listener.accept().await {
            let (script, log, id) = (script.clone(), l.clone(), n);
            n += 1;
            tokio::spawn(async move {
                let (mut rd, wr) = tcp.into_split();
                let wr = Arc::new(tokio::sync::Mutex::new(wr));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match rd.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    let line = head.lines().next().unwrap_or("").to_string();
                    log.0.lock().expect("log").push((id, line.clone()));
                    let answer = script(&line);
                    if answer.read_body {
                        let len: usize = head
                            .lines()
                            .find_map(|h| h.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                            .unwrap_or(0);
                        while buf.len() < len {
                            match rd.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(k) => buf.extend_from_slice(&chunk[..k]),
                            }
                        }
                        buf.drain(..len);
                    }
                    if wr.lock().await.write_all(&answer.bytes).await.is_err() {
                        return;
                    }
                    if let Some((after, bytes)) = answer.later {
                        let wr = wr.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(after).await;
                            let _ = wr.lock().await.write_all(&bytes).await;
                        });
                    }
                    if answer.close {
                        let _ = wr.lock().await.shutdown().await;
                        return;
                    }
                }
            });
        }
    });
    (addr, log)
}

fn ok(body: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

/// The path's last segment, answered back as the body by default.
fn echo_path(line: &str) -> Answer {
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    Answer { bytes: ok(&format!("for {path}")), read_body: true, ..Answer::default() }
}

/// A script that answers a request whose line contains `needle` with
/// `bytes` (after reading its body), and any other with `echo_path`.
fn answer_on(needle: &'static str, bytes: &'static [u8]) -> Script {
    Arc::new(
        move |line: &str| {
            if line.contains(needle) { Answer { bytes: bytes.to_vec(), read_body: true, ..Answer::default() } } else { echo_path(line) }
        },
    )
}

async fn gateway(addr: SocketAddr) -> Gateway {
    Gateway::start("", &format!("[[routes]]\npath = \"/\"\nupstream = \"http://{addr}\"\nauth = \"public\"\n")).await
}

/// Sequential GETs on fresh clients; each must get its own answer.
async fn check_next_requests(gw: &Gateway, n: usize) {
    for i in 0..n {
        let client = client_for(&gw.cert_path(), false);
        let r = client.get(gw.url(&format!("/next{i}"))).send().await.expect("send");
        let status = r.status().as_u16();
        let body = r.text().await.unwrap_or_default();
        assert_eq!((status, body.as_str()), (200, format!("for /next{i}").as_str()), "request {i} got another's answer");
    }
}

fn assert_no_smuggled(log: &Log) {
    let lines = log.lines();
    assert!(!lines.iter().any(|(_, l)| l.contains("/smuggled")), "the upstream read leftover body bytes as a request: {lines:?}");
}

/// The upstream answers (completely, keep-alive) before it has read the
/// request body; the client sends the rest of the body afterwards. That
/// body must not reach a reused connection, where the upstream would read
/// it as the next request.
#[tokio::test]
async fn early_response_then_the_rest_of_the_body() {
    let script: Script = Arc::new(|line: &str| {
        if line.starts_with("POST") { Answer { bytes: ok("early"), read_body: false, ..Answer::default() } } else { echo_path(line) }
    });
    let (addr, log) = scripted_upstream(script).await;
    let gw = gateway(addr).await;
    let smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut s = raw_tls(&gw, &[b"http/1.1"]).await;
    let head = format!("POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n", 10 + smuggled.len());
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(b"0123456789").await.expect("write");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await.expect("early answer").expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("early"));
    // The rest of the body, which looks like a request.
    let _ = s.write_all(smuggled).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    check_next_requests(&gw, 3).await;
    let lines = log.lines();
    assert!(!lines.iter().any(|(c, l)| *c == 0 && l.contains("/next")), "the early-answered connection was reused: {lines:?}");
    assert_no_smuggled(&log);
    gw.stop().await;
}

/// Bytes after the end of a response, in the same write (a buggy upstream,
/// or a HEAD answered with a body): the connection must not be reused.
#[tokio::test]
async fn extra_bytes_after_a_response_in_the_same_write() {
    let forged = "HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nnot for you!!";
    let script: Script = Arc::new(move |line: &str| {
        if line.contains("/first") {
            Answer { bytes: [ok("first").as_slice(), forged.as_bytes()].concat(), read_body: true, ..Answer::default() }
        } else if line.starts_with("HEAD") {
            Answer { bytes: [b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n".as_slice(), b"not for you!!"].concat(), ..Answer::default() }
        } else {
            echo_path(line)
        }
    });
    let (addr, _log) = scripted_upstream(script).await;
    let gw = gateway(addr).await;
    let r = gw.client.get(gw.url("/first")).send().await.expect("send");
    assert_eq!(r.text().await.expect("body"), "first");
    check_next_requests(&gw, 2).await;
    let r = gw.client.head(gw.url("/head")).send().await.expect("send");
    assert_eq!(r.status(), 200);
    check_next_requests(&gw, 2).await;
    gw.stop().await;
}

/// Bytes that arrive while the connection sits idle in the pool: found by
/// `Conn::ready()` at checkout.
#[tokio::test]
async fn extra_bytes_that_arrive_while_idle() {
    let forged = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nnot for you!!".to_vec();
    let script: Script = Arc::new(move |line: &str| {
        if line.contains("/first") {
            Answer { bytes: ok("first"), read_body: true, later: Some((Duration::from_millis(100), forged.clone())), ..Answer::default() }
        } else {
            echo_path(line)
        }
    });
    let (addr, _log) = scripted_upstream(script).await;
    let gw = gateway(addr).await;
    let r = gw.client.get(gw.url("/first")).send().await.expect("send");
    assert_eq!(r.text().await.expect("body"), "first");
    tokio::time::sleep(Duration::from_millis(300)).await;
    check_next_requests(&gw, 3).await;
    gw.stop().await;
}

/// 1xx responses before the final one, trailers after a chunked body, and
/// `Connection: close`: each then leaves the next request its own answer.
#[tokio::test]
async fn informational_trailers_and_close() {
    let script: Script = Arc::new(|line: &str| {
        if line.contains("/info") {
            Answer {
                bytes: b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ninfo".to_vec(),
                read_body: true,
                ..Answer::default()
            }
        } else if line.contains("/trailers") {
            Answer {
                bytes: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-t\r\n\r\n4\r\ntrlr\r\n0\r\nx-t: 1\r\n\r\n".to_vec(),
                read_body: true,
                ..Answer::default()
            }
        } else if line.contains("/close") {
            Answer {
                bytes: b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nclose".to_vec(),
                close: true,
                ..Answer::default()
            }
        } else {
            echo_path(line)
        }
    });
    let (addr, log) = scripted_upstream(script).await;
    let gw = gateway(addr).await;
    for (path, want) in [("/info", "info"), ("/trailers", "trlr"), ("/close", "close")] {
        let r = gw.client.get(gw.url(path)).send().await.expect("send");
        assert_eq!(r.text().await.expect("body"), want);
        check_next_requests(&gw, 2).await;
    }
    eprintln!("upstream connections: {}", log.conns());
    gw.stop().await;
}

/// A request body that breaks (bad chunk) after the upstream answered
/// early: the connection is not reused.
#[tokio::test]
async fn a_request_body_that_breaks_after_an_early_answer() {
    let script: Script = Arc::new(|line: &str| {
        if line.starts_with("POST") {
            Answer {
                bytes: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nearly\r\n".to_vec(),
                later: Some((Duration::from_millis(300), b"0\r\n\r\n".to_vec())),
                ..Answer::default()
            }
        } else {
            echo_path(line)
        }
    });
    let (addr, log) = scripted_upstream(script).await;
    let gw = gateway(addr).await;
    let mut s = raw_tls(&gw, &[b"http/1.1"]).await;
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n").await.expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = s.write_all(b"zz\r\nbroken\r\n").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    drop(s);
    check_next_requests(&gw, 3).await;
    let lines = log.lines();
    assert!(!lines.iter().any(|(c, l)| *c == 0 && l.contains("/next")), "the broken request's connection was reused: {lines:?}");
    gw.stop().await;
}

/// A response with both `Content-Length` and `Transfer-Encoding: chunked`
/// (RFC 9112 §6.3: chunked wins, and an intermediary must remove the
/// Content-Length before forwarding). The client gets the whole chunked
/// body, never the upstream's Content-Length with it (a truncated body),
/// and the next requests get their own answers.
#[tokio::test]
async fn content_length_and_chunked_response() {
    let script =
        answer_on("/both", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n0\r\n\r\n");
    let (addr, _log) = scripted_upstream(script).await;
    let gw = gateway(addr).await;
    let r = gw.client.get(gw.url("/both")).send().await.expect("send");
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("content-length").is_none_or(|v| v == "10"), "{:?}", r.headers());
    assert_eq!(r.text().await.expect("body"), "0123456789");
    check_next_requests(&gw, 2).await;
    gw.stop().await;
}

/// A 204 that carries `Content-Length: 5` (which RFC 9110 §8.6 forbids):
/// it has no body whatever the header says, so the header is dropped. An
/// HTTP/2 client refuses a 204 that announces content, and an HTTP/1.1
/// client could wait for five bytes that never come.
#[tokio::test]
async fn a_204_with_content_length_reaches_the_client_without_it() {
    let script = answer_on("/nocontent", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nX-Kept: yes\r\n\r\n");
    let (addr, _log) = scripted_upstream(script).await;
    let gw = gateway(addr).await;
    for h2 in [true, false] {
        let client = client_for(&gw.cert_path(), h2);
        let r = client.get(gw.url("/nocontent")).send().await.expect("a 204 reaches the client");
        assert_eq!(r.status(), 204, "h2: {h2}");
        assert_eq!(r.headers().get("x-kept").map(|v| v.as_bytes()), Some(&b"yes"[..]), "h2: {h2}");
        assert!(r.headers().get("content-length").is_none(), "h2: {h2}: {:?}", r.headers());
        assert_eq!(r.text().await.expect("empty body"), "");
    }
    check_next_requests(&gw, 2).await;
    gw.stop().await;
}

/// A chunked response with trailers leaves its connection in the pool. The
/// HTTP/1 server drops the body right after the trailers frame without
/// polling it to `None`, and a chunked body is never `is_end_stream()`, so
/// the trailers frame itself marks the end (performance, not safety:
/// without it every such response cost a new connection).
#[tokio::test]
async fn a_response_with_trailers_leaves_its_connection_reusable() {
    let script =
        answer_on("/trailers", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-t\r\n\r\n4\r\ntrlr\r\n0\r\nx-t: 1\r\n\r\n");
    let (addr, log) = scripted_upstream(script).await;
    let gw = gateway(addr).await;
    for _ in 0..3 {
        let r = gw.client.get(gw.url("/trailers")).send().await.expect("send");
        assert_eq!(r.text().await.expect("body"), "trlr");
    }
    check_next_requests(&gw, 1).await;
    assert_eq!(log.conns(), 1, "each response with trailers cost a new upstream connection: {:?}", log.lines());
    gw.stop().await;
}

/// Trailers are stripped of connection-specific fields like a head: an
/// HTTP/2 client resets a stream whose trailers hold `Connection` or
/// `Transfer-Encoding` (RFC 9113 §8.2.2), and lost the body with it.
#[tokio::test]
async fn trailers_lose_their_connection_specific_fields() {
    let script = answer_on(
        "/trailers",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\ntrlr\r\n0\r\nx-t: 1\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n",
    );
    let (addr, _log) = scripted_upstream(script).await;
    let gw = gateway(addr).await;
    let h2 = client_for(&gw.cert_path(), true);
    let r = h2.get(gw.url("/trailers")).header("te", "trailers").send().await.expect("send");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.text().await.expect("the body, not a reset stream"), "trlr");
    gw.stop().await;
}

/// An upstream that switches protocols on a request that did not ask to:
/// 502, never a 101 passed to the client on a connection that stays HTTP.
#[tokio::test]
async fn a_switch_of_protocols_nobody_asked_for_is_502() {
    let script = answer_on("/switch", b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n");
    let (addr, _log) = scripted_upstream(script).await;
    let gw = gateway(addr).await;
    let r = gw.client.get(gw.url("/switch")).send().await.expect("send");
    assert_eq!(r.status(), 502);
    check_next_requests(&gw, 2).await;
    gw.stop().await;
}

/// A WebSocket upgrade the upstream answers with a switch to something
/// else (h2c, say): 502, never a tunnel. A raw tunnel to h2c would carry
/// later requests past authentication.
#[tokio::test]
async fn a_switch_to_another_protocol_than_websocket_is_502() {
    let script: Script = Arc::new(|line: &str| {
        let to = if line.contains("/h2c") {
            "h2c"
        } else if line.contains("/both") {
            "h2c, websocket"
        } else {
            "websocket"
        };
        let bytes = format!("HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: {to}\r\n\r\n").into_bytes();
        Answer { bytes, ..Answer::default() }
    });
    let (addr, _log) = scripted_upstream(script).await;
    let gw = gateway(addr).await;
    for (path, status) in [("/h2c", 502), ("/both", 502), ("/ws", 101)] {
        let mut s = raw_tls(&gw, &[b"http/1.1"]).await;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.expect("write");
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match tokio::time::timeout(Duration::from_secs(10), s.read(&mut b)).await {
                Ok(Ok(1)) => head.push(b[0]),
                _ => break,
            }
        }
        let head = String::from_utf8_lossy(&head);
        assert_eq!(status_of(&head), status, "{path}: {head}");
    }
    gw.stop().await;
}
