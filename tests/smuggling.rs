//! Request smuggling and parser abuse, with raw bytes over TLS: HTTP/1.1
//! framing conflicts (`Content-Length` with `Transfer-Encoding`, two
//! lengths, odd codings, obs-fold, bare LF, bad chunk sizes, spaces before
//! the colon), absolute-form targets, dot-segment tricks against a public
//! prefix, a request hidden in a body; and HTTP/2 frames built by hand
//! (pseudo-header abuse, connection-specific headers, CONNECT), which no
//! well-behaved client library would send.
//!
//! Every case asserts the status and exactly what the upstream saw: nothing,
//! or one request with the expected method, path and body length.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `/` is public, `/admin` needs a token; both go to the same upstream, so
/// a smuggled `/admin` request would show up in its log.
async fn start() -> (Gateway, Upstream) {
    let up = Upstream::start().await;
    let routes = format!(
        "[[routes]]\npath = \"/\"\nupstream = \"{u}\"\nauth = \"public\"\n\n[[routes]]\npath = \"/admin\"\nupstream = \"{u}\"\n",
        u = up.url()
    );
    (Gateway::start("", &routes).await, up)
}

fn seen_since(up: &Upstream, before: usize) -> Vec<Seen> {
    up.seen.lock().expect("lock")[before..].to_vec()
}

/// The status line of every response in `raw`, in order.
fn statuses(raw: &str) -> Vec<u16> {
    raw.match_indices("HTTP/1.1 ").filter_map(|(i, _)| raw.get(i + 9..i + 12)?.parse().ok()).collect()
}

/// Sends `req` on a fresh connection; returns every status answered and what
/// the upstream received meanwhile.
async fn exchange(gw: &Gateway, up: &Upstream, req: &str) -> (Vec<u16>, Vec<Seen>) {
    let before = up.seen.lock().expect("lock").len();
    let hits = up.hits();
    let raw = raw_request(gw, req.as_bytes(), Duration::from_millis(1500)).await;
    // A request cut short reaches the upstream as an aborted body: give
    // its task a moment to see the connection close.
    for _ in 0..40 {
        if up.hits() - hits == seen_since(up, before).len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let seen = seen_since(up, before);
    assert_eq!(up.hits() - hits, seen.len(), "the upstream started a request it never finished: {req:?}");
    (statuses(&raw), seen)
}

/// Refused with 400 and nothing forwarded.
async fn refused(gw: &Gateway, up: &Upstream, name: &str, req: &str) {
    let (st, seen) = exchange(gw, up, req).await;
    assert_eq!(st, [400], "{name}");
    assert!(seen.is_empty(), "{name}: the upstream saw {seen:?}");
}

/// Answered once with `status`, and the upstream saw exactly one request.
async fn forwarded_once(gw: &Gateway, up: &Upstream, name: &str, req: &str, method: &str, path: &str, body_len: usize) -> Seen {
    let (st, seen) = exchange(gw, up, req).await;
    assert_eq!(st, [200], "{name}");
    assert_eq!(seen.len(), 1, "{name}: the upstream saw {seen:?}");
    let s = seen.into_iter().next().expect("one");
    assert_eq!((s.method.as_str(), s.path.as_str(), s.body_len), (method, path, body_len), "{name}");
    s
}

const H: &str = "Host: localhost\r\n";

#[tokio::test]
async fn content_length_and_transfer_encoding_conflicts() {
    let (gw, up) = start().await;
    // RFC 9112 §6.1: Transfer-Encoding wins over Content-Length, and the
    // upstream gets the chunked body re-framed, without the Content-Length.
    let s = forwarded_once(
        &gw,
        &up,
        "CL + TE",
        &format!("POST /p HTTP/1.1\r\n{H}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        "POST",
        "/p",
        5,
    )
    .await;
    assert!(!s.headers.contains_key("content-length"), "{:?}", s.headers);
    // The classic CL.TE attack: the chunked body ends early and what a
    // Content-Length reader would take as body is a second request. The
    // connection is closed after the first answer (RFC 9112 §6.1), so the
    // hidden `/admin` request is never parsed, let alone forwarded.
    let smuggle = format!(
        "POST /p HTTP/1.1\r\n{H}Content-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: localhost\r\n\r\n"
    );
    forwarded_once(&gw, &up, "CL.TE smuggle", &smuggle, "POST", "/p", 0).await;
    // Two different lengths, or a list, or a sign: 400.
    refused(&gw, &up, "two Content-Lengths", &format!("POST /p HTTP/1.1\r\n{H}Content-Length: 3\r\nContent-Length: 5\r\n\r\nhello")).await;
    refused(&gw, &up, "Content-Length list", &format!("POST /p HTTP/1.1\r\n{H}Content-Length: 5, 3\r\n\r\nhello")).await;
    refused(&gw, &up, "Content-Length +5", &format!("POST /p HTTP/1.1\r\n{H}Content-Length: +5\r\n\r\nhello")).await;
    refused(&gw, &up, "Content-Length hex", &format!("POST /p HTTP/1.1\r\n{H}Content-Length: 0x5\r\n\r\nhello")).await;
    // The same length twice is one length (RFC 9110 §8.6).
    forwarded_once(
        &gw,
        &up,
        "CL 5 twice",
        &format!("POST /p HTTP/1.1\r\n{H}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
        "POST",
        "/p",
        5,
    )
    .await;
    gw.stop().await;
}

#[tokio::test]
async fn transfer_codings_other_than_a_final_chunked_are_refused() {
    let (gw, up) = start().await;
    let chunked_hello = "5\r\nhello\r\n0\r\n\r\n";
    for te in ["chunked, identity", "xchunked", "chunked-false", "gzip", "identity", "chunked\r\nTransfer-Encoding: x"] {
        refused(&gw, &up, te, &format!("POST /p HTTP/1.1\r\n{H}Transfer-Encoding: {te}\r\n\r\n{chunked_hello}")).await;
    }
    // Transfer-Encoding in HTTP/1.0 is a framing lie (RFC 9112 §6.1).
    refused(&gw, &up, "TE in HTTP/1.0", &format!("POST /p HTTP/1.0\r\n{H}Transfer-Encoding: chunked\r\n\r\n{chunked_hello}")).await;
    // Codings are case-insensitive; chunk extensions are ignored.
    forwarded_once(
        &gw,
        &up,
        "Chunked",
        &format!("POST /p HTTP/1.1\r\n{H}Transfer-Encoding: Chunked\r\n\r\n{chunked_hello}"),
        "POST",
        "/p",
        5,
    )
    .await;
    let ext = format!("POST /p HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\n\r\n");
    forwarded_once(&gw, &up, "chunk extension", &ext, "POST", "/p", 5).await;
    gw.stop().await;
}

#[tokio::test]
async fn invalid_chunk_sizes_are_400_and_never_complete_upstream() {
    let (gw, up) = start().await;
    for (name, body) in [
        ("0x10", "0x10\r\nhellohellohello!\r\n0\r\n\r\n"),
        ("-1", "-1\r\nhello\r\n0\r\n\r\n"),
        ("huge", "ffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
        ("empty size", "\r\nhello\r\n0\r\n\r\n"),
        ("space in size", "5 5\r\nhello\r\n0\r\n\r\n"),
        ("size too short", "3\r\nhello\r\n0\r\n\r\n"),
        ("bare LF chunk lines", "5\nhello\n0\n\n"),
    ] {
        // The body streams: a bad chunk line after good data is found only
        // once that data may be on its way. The upstream then sees the
        // request aborted before its end (no final chunk), never completed.
        let (st, seen) = exchange(&gw, &up, &format!("POST /p HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n{body}")).await;
        assert_eq!(st, [400], "{name}");
        assert!(seen.iter().all(|s| s.body_len < 5), "{name}: the upstream saw {seen:?}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn malformed_header_lines_are_refused() {
    let (gw, up) = start().await;
    // obs-fold (RFC 9112 §5.2: a server must reject or unfold it; hyper rejects).
    refused(&gw, &up, "obs-fold", &format!("GET /p HTTP/1.1\r\n{H}X-A: a\r\n b\r\n\r\n")).await;
    refused(&gw, &up, "obs-fold TE", &format!("POST /p HTTP/1.1\r\n{H}Transfer-Encoding:\r\n chunked\r\nContent-Length: 5\r\n\r\nhello"))
        .await;
    // Whitespace between the name and the colon (RFC 9112 §5.1: must be 400).
    refused(&gw, &up, "space before colon", &format!("GET /p HTTP/1.1\r\n{H}X-Auth-Subject : root\r\n\r\n")).await;
    refused(&gw, &up, "TE space colon", &format!("POST /p HTTP/1.1\r\n{H}Transfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\nhello"))
        .await;
    refused(&gw, &up, "tab before colon", &format!("GET /p HTTP/1.1\r\n{H}X-A\t: b\r\n\r\n")).await;
    refused(&gw, &up, "space in name", &format!("GET /p HTTP/1.1\r\n{H}X A: b\r\n\r\n")).await;
    refused(&gw, &up, "bare CR", "GET /p HTTP/1.1\r\nHost: localhost\rX-A: b\r\n\r\n").await;
    refused(&gw, &up, "NUL in a value", &format!("GET /p HTTP/1.1\r\n{H}X-A: a\0b\r\n\r\n")).await;
    // Host: exactly one in HTTP/1.1 (RFC 9112 §3.2).
    refused(&gw, &up, "no Host", "GET /p HTTP/1.1\r\n\r\n").await;
    refused(&gw, &up, "two Hosts", "GET /p HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").await;
    // Bare LF line endings are allowed by RFC 9112 §2.2; the upstream gets
    // one clean CRLF request, so there is nothing for it to disagree about.
    forwarded_once(&gw, &up, "bare LF", "GET /p HTTP/1.1\nHost: localhost\nX-A: b\n\n", "GET", "/p", 0).await;
    gw.stop().await;
}

#[tokio::test]
async fn absolute_form_targets_route_on_their_path_and_go_to_the_configured_upstream() {
    let (gw, up) = start().await;
    // Protected path in absolute form: 401, nothing forwarded (to evil or anywhere).
    let (st, seen) = exchange(&gw, &up, &format!("GET http://evil.example/admin HTTP/1.1\r\n{H}\r\n")).await;
    assert_eq!((st, seen.len()), (vec![401], 0));
    let (st, seen) = exchange(&gw, &up, &format!("GET https://evil.example/public/../admin/x HTTP/1.1\r\n{H}\r\n")).await;
    assert_eq!((st, seen.len()), (vec![401], 0));
    // A public one reaches our upstream with its path and query, its Host
    // being the upstream's own: evil.example is never contacted.
    let s =
        forwarded_once(&gw, &up, "absolute public", &format!("GET http://evil.example/p?x=1 HTTP/1.1\r\n{H}\r\n"), "GET", "/p", 0).await;
    assert_eq!(s.query.as_deref(), Some("x=1"));
    assert_eq!(s.headers["host"], up.addr.to_string().as_str());
    // RFC 9112 §3.2.2: the target's authority, not Host, is the host asked for.
    assert_eq!(s.headers["x-forwarded-host"], "evil.example");
    // RFC 9110 §4.2.4: userinfo in the target is an error, not a host.
    let (st, seen) = exchange(&gw, &up, &format!("GET https://user@evil.example/p HTTP/1.1\r\n{H}\r\n")).await;
    assert_eq!((st, seen.len()), (vec![400], 0));
    let (st, seen) = exchange(&gw, &up, "GET /p HTTP/1.1\r\nHost: evil@localhost\r\n\r\n").await;
    assert_eq!((st, seen.len()), (vec![400], 0), "userinfo in Host");
    gw.stop().await;
}

#[tokio::test]
async fn dot_segments_cannot_slip_past_the_public_prefix() {
    let (gw, up) = start().await;
    let token = gw.token("alice", serde_json::json!({}));
    for path in [
        "/p/../admin",
        "/p/%2e%2e/admin",
        "/p/.%2e/admin",
        "/p/%2e./admin",
        "/p/%2E%2e/admin/x",
        "/./admin",
        "/%2e/admin",
        "/p;x/../admin",
        "/%61dmin",
        "/ADMIN/../admin",
        "//admin",
        "/admin;jsessionid=1",
        "/admin/",
    ] {
        let (st, seen) = exchange(&gw, &up, &format!("GET {path} HTTP/1.1\r\n{H}\r\n")).await;
        assert_eq!((st, seen.len()), (vec![401], 0), "{path}");
    }
    // Encoded separators and climbs above the root are refused outright.
    for path in
        ["/p/..%2fadmin", "/p%2f..%2fadmin", "/p/%2e%2e%2fadmin", "/p/..%5cadmin", "/p\\..\\admin", "/p/../../admin", "/p/..;/admin"]
    {
        refused(&gw, &up, path, &format!("GET {path} HTTP/1.1\r\n{H}\r\n")).await;
    }
    // Double encoding stays a literal segment: public, forwarded as-is.
    forwarded_once(&gw, &up, "double-encoded", &format!("GET /p/%252e%252e/admin HTTP/1.1\r\n{H}\r\n"), "GET", "/p/%252e%252e/admin", 0)
        .await;
    // With a token, the normalised path is what the upstream receives.
    let req = format!("GET /p/%2e%2e/admin/x HTTP/1.1\r\n{H}Authorization: Bearer {token}\r\n\r\n");
    forwarded_once(&gw, &up, "authenticated", &req, "GET", "/admin/x", 0).await;
    gw.stop().await;
}

#[tokio::test]
async fn a_request_inside_a_body_stays_a_body() {
    let (gw, up) = start().await;
    let hidden = "GET /admin HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let req = format!("POST /p HTTP/1.1\r\n{H}Content-Length: {}\r\n\r\n{hidden}", hidden.len());
    forwarded_once(&gw, &up, "request in a body", &req, "POST", "/p", hidden.len()).await;
    let chunked = format!("POST /p HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{hidden}\r\n0\r\n\r\n", hidden.len());
    forwarded_once(&gw, &up, "request in a chunk", &chunked, "POST", "/p", hidden.len()).await;
    // A pipelined second request is a request of its own, checked on its own.
    let (st, seen) = exchange(&gw, &up, &format!("GET /p HTTP/1.1\r\n{H}\r\n{hidden}")).await;
    assert_eq!(st, [200, 401]);
    assert_eq!(seen.iter().map(|s| s.path.as_str()).collect::<Vec<_>>(), ["/p"]);
    gw.stop().await;
}

// ------------------------------------------------------------------ HTTP/2

/// A minimal HTTP/2 client that writes frames by hand: headers are HPACK
/// literals without indexing, so any name, value or order can be sent.
struct H2 {
    s: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    next_stream: u32,
}

/// What came back on a stream.
#[derive(Debug, PartialEq)]
enum H2Answer {
    Status(u16),
    /// RST_STREAM with this error code (1 = PROTOCOL_ERROR).
    Reset(u32),
    /// GOAWAY with this error code.
    GoAway(u32),
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn hpack_len(out: &mut Vec<u8>, n: usize) {
    // 7-bit prefix integer (RFC 7541 §5.1), no Huffman.
    if n < 127 {
        out.push(n as u8);
    } else {
        out.push(127);
        let mut rest = n - 127;
        while rest >= 128 {
            out.push((rest % 128) as u8 | 0x80);
            rest /= 128;
        }
        out.push(rest as u8);
    }
}

fn hpack(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.push(0x00); // literal without indexing, new name
        hpack_len(&mut out, name.len());
        out.extend_from_slice(name.as_bytes());
        hpack_len(&mut out, value.len());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// Decodes the `:status` of a response HEADERS block: an indexed static
/// entry (8-14), or a literal with name index 8 and a plain or Huffman value.
fn status_of_block(block: &[u8]) -> Option<u16> {
    const STATIC: [(u8, u16); 7] = [(8, 200), (9, 204), (10, 206), (11, 304), (12, 400), (13, 404), (14, 500)];
    let first = *block.first()?;
    if first & 0x80 != 0 {
        return STATIC.iter().find(|(i, _)| *i == first & 0x7f).map(|(_, s)| *s);
    }
    let name_index = if first & 0x40 != 0 { first & 0x3f } else { first & 0x0f };
    if name_index != 8 {
        return None;
    }
    let (huffman, len) = (block[1] & 0x80 != 0, (block[1] & 0x7f) as usize);
    let raw = block.get(2..2 + len)?;
    let text = if huffman {
        // RFC 7541 Appendix B codes of the digits: 0-2 in 5 bits, 3-9 in 6.
        let mut bits = raw.iter().flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1));
        let mut s = String::new();
        for _ in 0..3 {
            let mut code = 0u8;
            for _ in 0..5 {
                code = code << 1 | bits.next()?;
            }
            let digit = if code <= 2 { code } else { (code << 1 | bits.next()?) - 0x19 + 3 };
            s.push(char::from(b'0' + digit));
        }
        s
    } else {
        String::from_utf8(raw.to_vec()).ok()?
    };
    text.parse().ok()
}

impl H2 {
    async fn connect(gw: &Gateway) -> H2 {
        let mut s = raw_tls(gw, &[b"h2"]).await;
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.expect("preface");
        s.write_all(&frame(4, 0, 0, &[])).await.expect("settings");
        H2 { s, next_stream: 1 }
    }

    /// Sends one request (END_STREAM unless `body` is given) and waits for its answer.
    async fn request(&mut self, headers: &[(&str, &str)], body: Option<&[u8]>) -> H2Answer {
        let id = self.next_stream;
        self.next_stream += 2;
        let end_stream = if body.is_none() { 0x1 } else { 0 };
        self.s.write_all(&frame(1, 0x4 | end_stream, id, &hpack(headers))).await.expect("headers");
        if let Some(b) = body {
            self.s.write_all(&frame(0, 0x1, id, b)).await.expect("data");
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut head = [0u8; 9];
            tokio::time::timeout_at(deadline, self.s.read_exact(&mut head)).await.expect("an answer in time").expect("read frame");
            let len = (head[0] as usize) << 16 | (head[1] as usize) << 8 | head[2] as usize;
            let (kind, flags, stream) = (head[3], head[4], u32::from_be_bytes([head[5] & 0x7f, head[6], head[7], head[8]]));
            let mut payload = vec![0u8; len];
            self.s.read_exact(&mut payload).await.expect("payload");
            match kind {
                4 if flags & 1 == 0 => self.s.write_all(&frame(4, 1, 0, &[])).await.expect("settings ack"),
                6 if flags & 1 == 0 => self.s.write_all(&frame(6, 1, 0, &payload)).await.expect("ping ack"),
                1 if stream == id => {
                    // Skip padding and priority fields when flagged.
                    let mut block = &payload[..];
                    if flags & 0x8 != 0 {
                        block = &block[1..block.len() - payload[0] as usize];
                    }
                    if flags & 0x20 != 0 {
                        block = &block[5..];
                    }
                    return H2Answer::Status(status_of_block(block).unwrap_or_else(|| panic!("undecodable status: {block:02x?}")));
                }
                3 if stream == id => return H2Answer::Reset(u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])),
                7 => return H2Answer::GoAway(u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]])),
                _ => {}
            }
        }
    }
}

async fn h2_once(gw: &Gateway, headers: &[(&str, &str)], body: Option<&[u8]>) -> H2Answer {
    H2::connect(gw).await.request(headers, body).await
}

fn get(path: &str) -> Vec<(&str, &str)> {
    vec![(":method", "GET"), (":scheme", "https"), (":authority", "localhost"), (":path", path)]
}

/// The stream is refused as malformed (RST_STREAM or GOAWAY with
/// PROTOCOL_ERROR, or a 400), and nothing reached the upstream.
async fn h2_refused(gw: &Gateway, up: &Upstream, name: &str, headers: &[(&str, &str)]) {
    let hits = up.hits();
    let answer = h2_once(gw, headers, None).await;
    assert!(matches!(answer, H2Answer::Reset(1) | H2Answer::GoAway(1) | H2Answer::Status(400)), "{name}: {answer:?}");
    assert_eq!(up.hits(), hits, "{name}: reached the upstream");
}

#[tokio::test]
async fn http2_pseudo_header_abuse_is_refused() {
    let (gw, up) = start().await;
    // The hand-written client works: a plain GET is forwarded once. (One
    // connection per request: the status decoder keeps no HPACK table.)
    assert_eq!(h2_once(&gw, &get("/p"), None).await, H2Answer::Status(200));
    let s = up.last();
    assert_eq!((s.method.as_str(), s.path.as_str(), s.body_len), ("GET", "/p", 0));
    assert_eq!(h2_once(&gw, &get("/admin"), None).await, H2Answer::Status(401), "a protected path");
    assert_eq!(h2_once(&gw, &get("/p/%2e%2e/admin"), None).await, H2Answer::Status(401), "dot-segments in :path");
    let mut post = get("/p");
    post[0] = (":method", "POST");
    assert_eq!(h2_once(&gw, &post, Some(b"hello")).await, H2Answer::Status(200));
    assert_eq!((up.last().method.as_str(), up.last().body_len), ("POST", 5));
    assert_eq!(up.hits(), 2);

    let base = get("/p");
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&str, &str)> { base.iter().chain(extra).copied().collect() };
    h2_refused(
        &gw,
        &up,
        ":path without a leading /",
        &[(":method", "GET"), (":scheme", "https"), (":authority", "localhost"), (":path", "p")],
    )
    .await;
    h2_refused(
        &gw,
        &up,
        "absolute :path",
        &[(":method", "GET"), (":scheme", "https"), (":authority", "localhost"), (":path", "http://evil/p")],
    )
    .await;
    h2_refused(&gw, &up, "empty :path", &[(":method", "GET"), (":scheme", "https"), (":authority", "localhost"), (":path", "")]).await;
    h2_refused(&gw, &up, "no :path", &[(":method", "GET"), (":scheme", "https"), (":authority", "localhost")]).await;
    h2_refused(&gw, &up, "no :method", &[(":scheme", "https"), (":authority", "localhost"), (":path", "/p")]).await;
    h2_refused(&gw, &up, "two :path", &with(&[(":path", "/admin")])).await;
    h2_refused(&gw, &up, "pseudo-header after a regular one", &[(":method", "GET"), ("x-a", "b"), (":scheme", "https"), (":path", "/p")])
        .await;
    h2_refused(&gw, &up, "unknown pseudo-header", &with(&[(":evil", "1")])).await;
    h2_refused(&gw, &up, ":status in a request", &with(&[(":status", "200")])).await;
    // RFC 9113 §8.2.2: connection-specific fields make a request malformed.
    h2_refused(&gw, &up, "connection", &with(&[("connection", "keep-alive")])).await;
    h2_refused(&gw, &up, "transfer-encoding", &with(&[("transfer-encoding", "chunked")])).await;
    h2_refused(&gw, &up, "keep-alive", &with(&[("keep-alive", "timeout=5")])).await;
    h2_refused(&gw, &up, "upgrade", &with(&[("upgrade", "websocket")])).await;
    h2_refused(&gw, &up, "te other than trailers", &with(&[("te", "gzip")])).await;
    // RFC 9113 §8.2.1: upper-case names are malformed; CR/LF/NUL in values too.
    h2_refused(&gw, &up, "upper-case name", &with(&[("X-Auth-Subject", "root")])).await;
    h2_refused(&gw, &up, "CRLF in a value", &with(&[("x-a", "b\r\nx-auth-subject: root")])).await;
    // RFC 9113 §8.3.1: a Host naming another authority than :authority.
    h2_refused(&gw, &up, "host mismatching :authority", &with(&[("host", "evil.example")])).await;
    // CONNECT (no :path, :authority only) and extended CONNECT: never tunnelled.
    h2_refused(&gw, &up, "CONNECT", &[(":method", "CONNECT"), (":authority", "evil.example:443")]).await;
    h2_refused(
        &gw,
        &up,
        "extended CONNECT",
        &[(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"), (":authority", "localhost"), (":path", "/p")],
    )
    .await;
    // RFC 9113 §8.2.1: whitespace at either end of a value (an HTTP/1.1
    // upstream trims it); §8.3.1: userinfo in :authority.
    h2_refused(&gw, &up, "leading space", &with(&[("x-a", " b")])).await;
    h2_refused(&gw, &up, "trailing tab", &with(&[("x-a", "b\t")])).await;
    h2_refused(&gw, &up, "userinfo", &[(":method", "GET"), (":scheme", "https"), (":authority", "user@localhost"), (":path", "/p")]).await;
    // HTTP/1.1 upstreams frame by one Content-Length.
    let mut twice = post.clone();
    twice.extend([("content-length", "5"), ("content-length", "5")]);
    let hits = up.hits();
    let answer = h2_once(&gw, &twice, Some(b"hello")).await;
    assert!(matches!(answer, H2Answer::Reset(1) | H2Answer::GoAway(1) | H2Answer::Status(400)), "two Content-Length: {answer:?}");
    assert_eq!(up.hits(), hits, "two Content-Length reached the upstream");
    // A matching host is fine (case-insensitive), and te: trailers is allowed.
    assert_eq!(h2_once(&gw, &with(&[("host", "LOCALHOST"), ("te", "trailers")]), None).await, H2Answer::Status(200));
    assert_eq!(up.hits(), 3);
    gw.stop().await;
}

#[tokio::test]
async fn http2_content_length_must_match_the_data() {
    let (gw, up) = start().await;
    let mut post = get("/p");
    post[0] = (":method", "POST");
    for (cl, name) in [("3", "shorter"), ("9", "longer")] {
        let mut h = post.clone();
        h.push(("content-length", cl));
        let hits = up.hits();
        let answer = h2_once(&gw, &h, Some(b"hello")).await;
        // The stream is refused. The upstream may have seen the head, but
        // never a body complete to the length it was told.
        assert!(matches!(answer, H2Answer::Reset(1) | H2Answer::Status(400) | H2Answer::GoAway(1)), "{name}: {answer:?}");
        let seen = seen_since(&up, hits);
        assert!(
            seen.iter().all(|s| s.body_len.to_string() != cl && s.headers.get("content-length").is_none_or(|v| v == cl)),
            "{name}: {seen:?}"
        );
    }
    gw.stop().await;
}
