//! Forwarding: hop-by-hop headers, X-Forwarded-*, query strings, streaming
//! 50 MB each way in flat memory, WebSocket upgrades, 502/504, head limits
//! (431), HTTP/2 clients in front of HTTP/1.1 upstreams.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn route_to(up: &Upstream, auth: &str) -> String {
    format!("[[routes]]\npath = \"/\"\nupstream = \"{}\"\nauth = \"{auth}\"\n", up.url())
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed() {
    let up = Upstream::start().await;
    let gw = Gateway::start("", &route_to(&up, "public")).await;
    let req = "GET /h HTTP/1.1\r\nHost: localhost\r\n\
               Connection: keep-alive, X-Secret-Hop, x-other-hop\r\n\
               X-Secret-Hop: 1\r\nX-Other-Hop: 2\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
               Proxy-Authorization: Basic YTpi\r\nProxy-Connection: keep-alive\r\nTrailer: X-T\r\nUpgrade: h2c\r\n\
               X-End-To-End: kept\r\n\r\n";
    let resp = raw_request(&gw, req.as_bytes(), Duration::from_secs(3)).await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    let seen = up.last();
    for h in
        ["connection", "x-secret-hop", "x-other-hop", "keep-alive", "te", "proxy-authorization", "proxy-connection", "trailer", "upgrade"]
    {
        assert!(seen.headers.get(h).is_none(), "{h} reached the upstream: {:?}", seen.headers.get(h));
    }
    assert_eq!(seen.headers["x-end-to-end"], "kept");
    gw.stop().await;
}

/// Review 10b, F4: `X-Original-URL` and the method overrides reached the
/// upstream, where some backends serve the path or method they name
/// instead of the one authgate judged (`GET /public` run as `/admin`, a GET
/// run as a DELETE past the cookie CSRF rule).
#[tokio::test]
async fn path_and_method_override_headers_never_reach_the_upstream() {
    let up = Upstream::start().await;
    let gw = Gateway::start("", &route_to(&up, "public")).await;
    let overrides = ["X-Original-URL", "X-Rewrite-URL", "X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"];
    let mut r = gw.client.get(gw.url("/public/x")).header("x-forwarded-prefix", "/p");
    for (i, name) in overrides.iter().enumerate() {
        r = r.header(*name, if i < 2 { "/admin/delete" } else { "DELETE" });
    }
    // Two copies of one, in another case: both go. So does the `_`
    // spelling, which CGI and PHP read as the same `HTTP_X_ORIGINAL_URL`.
    r = r.header("x-original-url", "/admin/other").header("X_Original_URL", "/admin").header("x_http_method_override", "PUT");
    assert_eq!(r.send().await.expect("send").status(), 200);
    let seen = up.last();
    for name in overrides.into_iter().chain(["x_original_url", "x_http_method_override"]) {
        assert!(seen.headers.get(name).is_none(), "{name} reached the upstream: {:?}", seen.headers.get(name));
    }
    assert_eq!(seen.path, "/public/x");
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.headers["x-forwarded-prefix"], "/p", "documented as not stripped");
    gw.stop().await;
}

#[tokio::test]
async fn x_forwarded_headers_are_set() {
    let up = Upstream::start().await;
    let gw = Gateway::start("", &route_to(&up, "public")).await;
    let req = "GET /f?a=1&b=two%20words HTTP/1.1\r\nHost: app.example.com\r\nX-Forwarded-For: 203.0.113.7\r\n\
               X-Forwarded-Proto: http\r\nX-Forwarded-Host: evil.example\r\nForwarded: for=198.51.100.9;host=evil.example;proto=http\r\n\
               X-Real-IP: 10.9.9.9\r\nX-Real-IP: 10.8.8.8\r\nX_Real_IP: 6.6.6.6\r\nX_Forwarded_For: 6.6.6.6\r\n\
               X_Forwarded_Proto: http\r\nx_forwarded-host: evil.example\r\nConnection: close\r\n\r\n";
    let resp = raw_request(&gw, req.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    let seen = up.last();
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(seen.headers.get_all("x-forwarded-for").iter().count(), 1);
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["x-forwarded-host"], "app.example.com");
    // RFC 7239: the client's Forwarded keeps its elements, and authgate's
    // own hop comes last, where an upstream looks for the trusted one.
    assert_eq!(
        seen.headers["forwarded"],
        "for=198.51.100.9;host=evil.example;proto=http, for=127.0.0.1;proto=https;host=\"app.example.com\""
    );
    // A client's X-Real-IP names the client as authgate knows it (the
    // peer: it is not a trusted proxy), once.
    assert_eq!(seen.headers.get_all("x-real-ip").iter().collect::<Vec<_>>(), ["127.0.0.1"]);
    // Spelt with `_`, they are the same headers to a CGI-style upstream
    // (HTTP_X_REAL_IP): removed.
    for h in ["x_real_ip", "x_forwarded_for", "x_forwarded_proto", "x_forwarded-host"] {
        assert!(seen.headers.get(h).is_none(), "{h} reached the upstream");
    }
    assert_eq!(seen.query.as_deref(), Some("a=1&b=two%20words"));
    // The upstream's Host is the upstream, not the client's.
    assert_eq!(seen.headers["host"], up.addr.to_string().as_str());

    // Without a previous hop, and over HTTP/2 (no Host header, :authority).
    let r = client_for(&gw.cert_path(), true).get(gw.url("/g?x=1")).send().await.expect("h2");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert!(seen.headers.get("forwarded").is_none(), "none added when the client sent none");
    assert!(seen.headers.get("x-real-ip").is_none(), "none added when the client sent none");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["x-forwarded-host"], format!("localhost:{}", gw.addr.port()).as_str());
    assert_eq!(seen.query.as_deref(), Some("x=1"));
    gw.stop().await;
}

/// Behind a trusted proxy, X-Real-IP names the client that proxy saw (the
/// right-most untrusted X-Forwarded-For entry), not the proxy and not what
/// the client wrote in its own X-Real-IP.
#[tokio::test]
async fn x_real_ip_behind_a_trusted_proxy_is_the_resolved_client() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let text = with_server(&config_text(dir.path(), "", &route_to(&up, "public")), "trusted_proxies = [\"127.0.0.1/32\"]");
    let gw = Gateway::start_in(dir, &text).await;
    let req = "GET / HTTP/1.1\r\nHost: app.example.com\r\nX-Forwarded-For: 10.1.1.1, 203.0.113.7\r\n\
               X-Real-IP: 10.1.1.1\r\nConnection: close\r\n\r\n";
    let resp = raw_request(&gw, req.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert_eq!(up.last().headers["x-real-ip"], "203.0.113.7");
    // Entries with a port, as some proxies write them (Azure Application
    // Gateway): the address is read, not the proxy's taken instead (which
    // would put every client in the proxy's rate-limit bucket).
    for (xff, client) in [("203.0.113.8:4711", "203.0.113.8"), ("[2001:db8::1]:4711", "2001:db8::1"), ("[2001:db8::2]", "2001:db8::2")] {
        let req = format!("GET / HTTP/1.1\r\nHost: app.example.com\r\nX-Forwarded-For: {xff}\r\nX-Real-IP: x\r\nConnection: close\r\n\r\n");
        let resp = raw_request(&gw, req.as_bytes(), Duration::from_secs(10)).await;
        assert_eq!(status_of(&resp), 200, "{resp}");
        assert_eq!(up.last().headers["x-real-ip"], client, "X-Forwarded-For: {xff}");
    }
    gw.stop().await;
}

fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).expect("VmRSS")
}

/// Samples VmRSS every 20 ms until dropped; returns the peak.
struct RssPeak(std::sync::Arc<std::sync::atomic::AtomicU64>, tokio::task::JoinHandle<()>);

impl RssPeak {
    fn start() -> RssPeak {
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(rss_kb()));
        let p = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                p.fetch_max(rss_kb(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        RssPeak(peak, task)
    }

    fn peak_kb(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed).max(rss_kb())
    }
}

impl Drop for RssPeak {
    fn drop(&mut self) {
        self.1.abort();
    }
}

const FIFTY_MB: usize = 50 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabytes_stream_both_ways_in_flat_memory() {
    let up = Upstream::start().await;
    let gw = Gateway::start("", &route_to(&up, "required")).await;
    let token = gw.token("alice", json!({}));
    // Warm up pools and buffers so they do not count as growth.
    let r = gw.client.post(gw.url("/warm")).bearer_auth(&token).body(vec![b'w'; 1 << 20]).send().await.expect("warm");
    assert_eq!(r.status(), 200);
    r.bytes().await.expect("warm body");

    let base = rss_kb();
    let sampler = RssPeak::start();

    // Upload: 50 MB produced lazily in 64 KB chunks.
    let chunk = bytes::Bytes::from(vec![b'u'; 64 * 1024]);
    let chunks = FIFTY_MB / chunk.len();
    let stream = futures_util::stream::iter((0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let r = gw.client.post(gw.url("/upload")).bearer_auth(&token).body(reqwest::Body::wrap_stream(stream)).send().await.expect("upload");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.expect("body"), format!("upstream ok, body_len={FIFTY_MB}"));
    assert_eq!(up.last().body_len, FIFTY_MB);

    // Download: 50 MB read chunk by chunk, never held.
    let mut r = gw.client.get(gw.url(&format!("/bytes/{FIFTY_MB}"))).bearer_auth(&token).send().await.expect("download");
    assert_eq!(r.status(), 200);
    let mut total = 0usize;
    while let Some(c) = r.chunk().await.expect("chunk") {
        total += c.len();
    }
    assert_eq!(total, FIFTY_MB);

    let grown_mb = sampler.peak_kb().saturating_sub(base) / 1024;
    assert!(grown_mb < 30, "RSS grew by {grown_mb} MB while streaming 50 MB each way: bodies are buffered");
    gw.stop().await;
}

async fn read_head<S: AsyncReadExt + Unpin>(s: &mut S) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b)).await.expect("head in time").expect("read");
        assert_eq!(n, 1, "closed during the head: {}", String::from_utf8_lossy(&head));
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

const WS_UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nX-Auth-Subject: mallory\r\n";

#[tokio::test]
async fn websocket_upgrade_passes_after_authentication() {
    let up = Upstream::start().await;
    let gw = Gateway::start("", &route_to(&up, "required")).await;
    let token = gw.token("alice", json!({}));
    let mut s = raw_tls(&gw, &[b"http/1.1"]).await;
    s.write_all(format!("{WS_UPGRADE}Authorization: Bearer {token}\r\n\r\n").as_bytes()).await.expect("write");
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_ascii_lowercase().contains("upgrade: websocket"), "{head}");
    let seen = up.last();
    assert_eq!(seen.path, "/ws");
    assert_eq!(seen.headers["upgrade"], "websocket");
    assert_eq!(seen.headers["x-auth-subject"], "alice");
    assert!(seen.headers.get("authorization").is_none());
    // Bytes now flow both ways through the tunnel.
    for msg in [&b"hello through the tunnel"[..], &[0x81, 0x02, 0x68, 0x69][..]] {
        s.write_all(msg).await.expect("write");
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back)).await.expect("echo in time").expect("read");
        assert_eq!(back, msg);
    }
    gw.stop().await;
}

#[tokio::test]
async fn websocket_upgrade_without_a_token_is_401() {
    let up = Upstream::start().await;
    let gw = Gateway::start("", &route_to(&up, "required")).await;
    let resp = raw_request(&gw, format!("{WS_UPGRADE}\r\n").as_bytes(), Duration::from_secs(3)).await;
    assert_eq!(status_of(&resp), 401, "{resp}");
    let bad = format!("{WS_UPGRADE}Authorization: Bearer {}x\r\n\r\n", gw.token("alice", json!({})));
    let resp = raw_request(&gw, bad.as_bytes(), Duration::from_secs(3)).await;
    assert_eq!(status_of(&resp), 401, "{resp}");
    assert_eq!(up.hits(), 0);
    gw.stop().await;
}

/// Only WebSocket is tunnelled. An `h2c` upgrade that an upstream accepted
/// would turn the connection into a raw tunnel, and every later request on
/// it would reach the upstream unauthenticated, spoofed identity headers
/// and all. Here the upstream answers 101 to anything on `/ws`.
#[tokio::test]
async fn an_upgrade_to_anything_but_websocket_is_never_tunnelled() {
    let up = Upstream::start().await;
    let gw =
        Gateway::start("", &format!("{}{}", route_to(&up, "public").replace("path = \"/\"", "path = \"/ws\""), route_to(&up, "required")))
            .await;
    for upgrade in ["h2c", "websocket, h2c", "h2c, websocket", "TLS/1.2"] {
        let mut s = raw_tls(&gw, &[b"http/1.1"]).await;
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: {upgrade}\r\nConnection: Upgrade, HTTP2-Settings\r\n\
             HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.expect("write");
        let head = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 502"), "Upgrade: {upgrade}: {head}");
        let seen = up.last();
        assert!(seen.headers.get("upgrade").is_none(), "Upgrade: {upgrade} reached the upstream: {:?}", seen.headers);
        assert!(seen.headers.get("http2-settings").is_none());
        // The connection is still HTTP and still checked: a spoofed
        // identity without a token is refused, not passed through.
        s.write_all(
            b"GET /admin HTTP/1.1\r\nHost: localhost\r\nX-Auth-Subject: mallory\r\nX-Auth-Roles: admin\r\nConnection: close\r\n\r\n",
        )
        .await
        .expect("write");
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
        let rest = String::from_utf8_lossy(&rest);
        assert!(rest.contains("HTTP/1.1 401"), "Upgrade: {upgrade}: {rest}");
    }
    assert!(up.hits() >= 4);
    gw.stop().await;
}

#[tokio::test]
async fn closed_upstream_port_is_502() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let gw = Gateway::start("", &format!("[[routes]]\npath = \"/\"\nupstream = \"http://127.0.0.1:{port}\"\nauth = \"public\"\n")).await;
    let r = gw.client.get(gw.url("/x")).send().await.expect("send");
    assert_eq!(r.status(), 502);
    let body = json(r).await;
    assert_eq!(body["error"], "bad_gateway");
    assert!(!body.to_string().contains(&port.to_string()), "the upstream address leaked to the client: {body}");
    gw.stop().await;
}

#[tokio::test]
async fn upstream_that_breaks_is_502() {
    // Accepts, reads the request, answers garbage or nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = tcp.read(&mut buf).await;
            n += 1;
            if n % 2 == 0 {
                let _ = tcp.write_all(b"NOT HTTP AT ALL\r\n\r\n").await;
            }
        }
    });
    let gw = Gateway::start("", &format!("[[routes]]\npath = \"/\"\nupstream = \"http://{addr}\"\nauth = \"public\"\n")).await;
    for _ in 0..2 {
        let r = gw.client.get(gw.url("/x")).send().await.expect("send");
        assert_eq!(r.status(), 502);
        assert_eq!(json(r).await["error"], "bad_gateway");
    }
    gw.stop().await;
}

#[tokio::test]
async fn slow_upstream_is_504_after_upstream_timeout() {
    // The harness sets upstream_timeout = "2s".
    let up = Upstream::start().await;
    let gw = Gateway::start("", &route_to(&up, "public")).await;
    let t = Instant::now();
    let r = gw.client.get(gw.url("/slow/5000")).send().await.expect("send");
    let took = t.elapsed();
    assert_eq!(r.status(), 504);
    assert_eq!(json(r).await["error"], "gateway_timeout");
    assert!(took >= Duration::from_millis(1900) && took < Duration::from_millis(4500), "answered after {took:?}");
    // A fast one still works afterwards.
    assert_eq!(gw.client.get(gw.url("/slow/10")).send().await.expect("send").status(), 200);
    gw.stop().await;
}

#[tokio::test]
async fn upstream_statuses_pass_through() {
    let up = Upstream::start().await;
    let gw = Gateway::start("", &route_to(&up, "public")).await;
    for code in [201u16, 404, 500, 503] {
        let r = gw.client.get(gw.url(&format!("/status/{code}"))).send().await.expect("send");
        assert_eq!(r.status().as_u16(), code);
        assert_eq!(r.text().await.expect("body"), "status");
    }
    gw.stop().await;
}

#[tokio::test]
async fn head_over_max_header_bytes_is_431() {
    let up = Upstream::start().await;
    let gw = Gateway::start("", &route_to(&up, "public")).await;
    // Over the 16 KB default, under hyper's hard limit: our JSON answer.
    let big = "a".repeat(20 * 1024);
    for client in [gw.client.clone(), client_for(&gw.cert_path(), true)] {
        let r = client.get(gw.url("/x")).header("x-big", &big).send().await.expect("send");
        assert_eq!(r.status(), 431);
        assert_eq!(json(r).await["error"], "request_header_fields_too_large");
    }
    // Far over any limit, over HTTP/1.1: still 431.
    let huge = format!("GET /x HTTP/1.1\r\nHost: localhost\r\nX-Huge: {}\r\nConnection: close\r\n\r\n", "b".repeat(200 * 1024));
    let resp = raw_request(&gw, huge.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(status_of(&resp), 431, "{}", resp.lines().next().unwrap_or("(nothing)"));
    // Just under the limit passes.
    let r = gw.client.get(gw.url("/x")).header("x-big", "a".repeat(8 * 1024)).send().await.expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(up.hits(), 1);
    // To the byte: a head of exactly 16,384 bytes, request line and blank
    // line included, passes; one byte more is 431.
    for (extra, status) in [(0, 200), (1, 431)] {
        let start = "GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nX-Fill: ";
        let fill = 16_384 - start.len() - "\r\n\r\n".len() + extra;
        let head = format!("{start}{}\r\n\r\n", "f".repeat(fill));
        assert_eq!(head.len(), 16_384 + extra);
        let resp = raw_request(&gw, head.as_bytes(), Duration::from_secs(10)).await;
        assert_eq!(status_of(&resp), status, "a head of {} bytes", head.len());
    }
    gw.stop().await;
}

#[tokio::test]
async fn more_than_max_headers_is_431() {
    let up = Upstream::start().await;
    let gw = Gateway::start("", &route_to(&up, "public")).await;
    for n in [120, 300] {
        let mut req = String::from("GET /x HTTP/1.1\r\nHost: localhost\r\n");
        for i in 0..n {
            req.push_str(&format!("X-H{i}: v\r\n"));
        }
        req.push_str("Connection: close\r\n\r\n");
        let resp = raw_request(&gw, req.as_bytes(), Duration::from_secs(10)).await;
        assert_eq!(status_of(&resp), 431, "{n} headers: {}", resp.lines().next().unwrap_or("(nothing)"));
    }
    let mut b = client_for(&gw.cert_path(), true).get(gw.url("/x"));
    for i in 0..120 {
        b = b.header(format!("x-h{i}"), "v");
    }
    let r = b.send().await.expect("send");
    assert_eq!(r.status(), 431);
    assert_eq!(json(r).await["error"], "request_header_fields_too_large");
    // 90 headers are fine.
    let mut req = String::from("GET /x HTTP/1.1\r\nHost: localhost\r\n");
    for i in 0..90 {
        req.push_str(&format!("X-H{i}: v\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    assert_eq!(status_of(&raw_request(&gw, req.as_bytes(), Duration::from_secs(10)).await), 200);
    assert_eq!(up.hits(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn http2_clients_reach_http11_upstreams() {
    let up = Upstream::start().await;
    let gw = Gateway::start("", &route_to(&up, "required")).await;
    let h2 = client_for(&gw.cert_path(), true);
    let t = gw.token("alice", json!({ "roles": ["a", "b"] }));
    let r = h2.post(gw.url("/h2/path?q=1")).bearer_auth(&t).body(vec![7u8; 100_000]).send().await.expect("send");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-upstream"], "yes");
    assert!(r.headers().get("connection").is_none(), "a connection header in an HTTP/2 response");
    assert_eq!(r.text().await.expect("body"), "upstream ok, body_len=100000");
    let seen = up.last();
    assert_eq!((seen.method.as_str(), seen.path.as_str(), seen.query.as_deref()), ("POST", "/h2/path", Some("q=1")));
    assert_eq!(seen.headers["x-auth-roles"], "a,b");
    // Many concurrent streams on one connection.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (h2, url, t) = (h2.clone(), gw.url(&format!("/c/{i}")), t.clone());
        tasks.push(tokio::spawn(async move { h2.get(url).bearer_auth(t).send().await.map(|r| r.status().as_u16()) }));
    }
    for task in tasks {
        assert_eq!(task.await.expect("join").expect("send"), 200);
    }
    assert_eq!(up.hits(), 21);
    gw.stop().await;
}
