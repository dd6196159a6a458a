//! Forwarding: the upstream request rewrite (hop-by-hop headers, Host,
//! X-Forwarded-*), sending it on a pooled connection (`upstream`),
//! streaming both bodies, WebSocket upgrades, and the built-in `echo`
//! upstream.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::body::{self, Body};
use crate::error::GatewayError;
use crate::upstream::{self, Pool, SendError};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static HTTPS: HeaderValue = HeaderValue::from_static("https");
static UPGRADE_VALUE: HeaderValue = HeaderValue::from_static("upgrade");

/// RFC 9110 §7.6.1 connection-specific headers, plus the de-facto ones.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
];

/// Headers some backends read as the request's real path or method, in
/// place of the one authgate judged: IIS URL Rewrite's `X-Original-URL` and
/// `X-Rewrite-URL` (older Symfony and Zend honour them, CVE-2018-14773),
/// and the method overrides (a GET that the backend runs as a DELETE would
/// also pass the cookie CSRF rule). Removed on every route.
static OVERRIDES: [HeaderName; 5] = [
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// Is `name` (lower case, `-` for `_`) one of the path and method overrides?
pub fn is_override(name: &str) -> bool {
    OVERRIDES.iter().any(|o| o.as_str() == name)
}

pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

/// Removes hop-by-hop headers and every header the `Connection` header names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests carry none: one pass over the names and done.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let mut doomed: Vec<HeaderName> = headers.keys().filter(|n| is_hop_by_hop(n)).cloned().collect();
    for token in headers.get_all(header::CONNECTION).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')) {
        let token = token.trim();
        // `keep-alive`, `upgrade` and the like are on the list already; `close` names no header.
        if token.eq_ignore_ascii_case("close") || HOP_BY_HOP.iter().any(|h| h.as_str().eq_ignore_ascii_case(token)) {
            continue;
        }
        if let Ok(n) = HeaderName::from_bytes(token.as_bytes()) {
            doomed.push(n);
        }
    }
    for n in &doomed {
        headers.remove(n);
    }
}

/// Is this an HTTP/1.1 WebSocket upgrade request? WebSocket is the one
/// protocol passed through: after a switch authgate only copies bytes, so
/// a protocol that carries requests of its own (`h2c`, say) would take
/// every later request on the connection past authentication and identity
/// stripping. Any other `Upgrade` is dropped as hop-by-hop, and the
/// upstream gets a plain request (a 101 to that is a 502).
pub fn wants_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && is_websocket(req.headers())
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

/// Exactly one `Upgrade`, and it says `websocket` (any case): in the
/// request, and in the upstream's 101, which must switch to what was asked.
fn is_websocket(headers: &HeaderMap) -> bool {
    let mut up = headers.get_all(header::UPGRADE).iter();
    matches!((up.next(), up.next()), (Some(v), None) if v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"))
}

/// Facts about the client that go into X-Forwarded-* headers.
pub struct Forwarded<'a> {
    /// The connection's peer (the last hop).
    pub peer: IpAddr,
    /// The client, as `server.trusted_proxies` resolve it.
    pub client: IpAddr,
    pub host: Option<&'a HeaderValue>,
}

/// Rewrites the request headers as an upstream will receive them: no
/// hop-by-hop headers, no path or method overrides, no `Authorization`
/// unless kept, X-Forwarded-* added.
pub fn rewrite_headers(headers: &mut HeaderMap, fwd: &Forwarded<'_>, upgrade: Option<HeaderValue>, keep_authorization: bool) {
    remove_hop_by_hop(headers);
    for name in &OVERRIDES {
        headers.remove(name);
    }
    if !keep_authorization {
        headers.remove(header::AUTHORIZATION);
    }
    if let Some(u) = upgrade {
        headers.insert(header::CONNECTION, UPGRADE_VALUE.clone());
        headers.insert(header::UPGRADE, u);
    }
    // X-Forwarded-For: append the peer to whatever chain came before it.
    let mut xff = String::with_capacity(48);
    for prev in headers.get_all(&X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()) {
        if !prev.trim().is_empty() {
            xff.push_str(prev.trim());
            xff.push_str(", ");
        }
    }
    push_ip(&mut xff, fwd.peer);
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(xff)) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    if headers.contains_key(header::FORWARDED) {
        append_forwarded(headers, fwd);
    }
    // X-Real-IP names one address, and upstreams behind nginx trust it:
    // a client's own is replaced with the client as authgate knows it
    // (not added when absent, like Forwarded). `insert` replaces every copy.
    if headers.contains_key(&X_REAL_IP) {
        let mut ip = String::with_capacity(15);
        push_ip(&mut ip, fwd.client);
        match HeaderValue::from_maybe_shared(bytes::Bytes::from(ip)) {
            Ok(ip) => {
                headers.insert(X_REAL_IP.clone(), ip);
            }
            Err(_) => {
                headers.remove(&X_REAL_IP);
            }
        }
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HTTPS.clone());
    match fwd.host.cloned() {
        Some(h) => {
            headers.insert(X_FORWARDED_HOST.clone(), h);
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
}

/// RFC 7239 `Forwarded`, when the client sent one: authgate's own hop is
/// appended (`for`, `proto`, `host`), so that its last element is one an
/// upstream can trust, as with X-Forwarded-For; left alone, a client could
/// tell an upstream that reads it any address, host or scheme. Not added
/// when absent: the X-Forwarded-* headers carry the same.
fn append_forwarded(headers: &mut HeaderMap, fwd: &Forwarded<'_>) {
    let mut f = String::with_capacity(96);
    for prev in headers.get_all(header::FORWARDED).iter().filter_map(|v| v.to_str().ok()) {
        if !prev.trim().is_empty() {
            f.push_str(prev.trim());
            f.push_str(", ");
        }
    }
    f.push_str("for=");
    match fwd.peer {
        IpAddr::V4(_) => push_ip(&mut f, fwd.peer),
        IpAddr::V6(v6) => {
            let _ = write!(f, "\"[{v6}]\"");
        }
    }
    f.push_str(";proto=https");
    let plain = |h: &&str| !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    if let Some(h) = fwd.host.and_then(|h| h.to_str().ok()).filter(plain) {
        let _ = write!(f, ";host=\"{h}\"");
    }
    match HeaderValue::from_maybe_shared(bytes::Bytes::from(f)) {
        Ok(v) => {
            headers.insert(header::FORWARDED, v);
        }
        Err(_) => {
            headers.remove(header::FORWARDED);
        }
    }
}

/// Appends the address as text: an IPv4 address without `fmt`'s machinery,
/// which costs more than the rest of the header rewrite (every request).
fn push_ip(out: &mut String, ip: IpAddr) {
    let IpAddr::V4(v4) = ip else {
        let _ = write!(out, "{ip}");
        return;
    };
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
}

/// Points the request at the upstream: origin-form target, `Host`, HTTP/1.1.
pub fn retarget(req: &mut Request<Incoming>, host: Option<&HeaderValue>, path_and_query: &str) -> Result<(), GatewayError> {
    let host = host.ok_or_else(|| GatewayError::BadGateway("the upstream authority is not a valid Host".into()))?;
    req.headers_mut().insert(header::HOST, host.clone());
    let uri = Uri::builder()
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| GatewayError::BadRequest("the request target cannot be forwarded"))?;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    Ok(())
}

/// The client's request body as sent upstream. It must arrive within
/// `body_timeout` of when forwarding starts reading it, extended by one
/// second per `body_min_rate` bytes received (Apache mod_reqtimeout's
/// scheme): a large upload at a sane rate goes through, a slowloris body
/// trickling a byte a second is cut off.
pub struct TimedBody {
    /// None for the empty body of a request sent again (`TimedBody::empty`).
    inner: Option<Incoming>,
    /// Set when the body is first read: a request without one (most of
    /// them) never pays for a timer.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    timeout: Duration,
    per_byte: Duration,
    /// Told of every piece that goes upstream; None without a body.
    moved: Option<Moved>,
}

/// When the request body last moved toward the upstream. `upstream_timeout`
/// counts from then: an upload that takes longer than it, but keeps
/// moving, is not the upstream being late (the body has limits of its own,
/// `body_timeout` and `body_min_rate`); an upstream that stops reading it
/// is, once `upstream_timeout` has passed without a byte going through.
/// While the body waits on the client (the upstream asked for more and the
/// client has not sent it), the upstream is not late either: the body's
/// own deadline ends a stalled upload with 408.
#[derive(Clone)]
pub struct Moved {
    start: tokio::time::Instant,
    /// Milliseconds after `start`; `u64::MAX` while waiting on the client.
    last: Arc<AtomicU64>,
}

const ON_CLIENT: u64 = u64::MAX;

impl Moved {
    fn new() -> Moved {
        Moved { start: tokio::time::Instant::now(), last: Arc::new(AtomicU64::new(0)) }
    }

    fn now(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(ON_CLIENT - 1).min(ON_CLIENT - 1);
        self.last.store(ms, Ordering::Relaxed);
    }

    fn on_client(&self) {
        self.last.store(ON_CLIENT, Ordering::Relaxed);
    }

    /// When the body last moved; now while it waits on the client.
    fn last(&self) -> tokio::time::Instant {
        match self.last.load(Ordering::Relaxed) {
            ON_CLIENT => tokio::time::Instant::now(),
            ms => self.start + Duration::from_millis(ms),
        }
    }
}

/// The request body did not arrive in time (`server.body_timeout`).
#[derive(Debug, thiserror::Error)]
#[error("the request body arrived too slowly")]
pub struct BodyTimedOut;

impl TimedBody {
    pub fn new(inner: Incoming, s: &crate::config::ServerConfig) -> TimedBody {
        let per_byte =
            if s.body_min_rate == 0 { Duration::ZERO } else { Duration::from_secs(1) / u32::try_from(s.body_min_rate).unwrap_or(u32::MAX) };
        let moved = (!http_body::Body::is_end_stream(&inner)).then(Moved::new);
        TimedBody { inner: Some(inner), deadline: None, timeout: s.body_timeout, per_byte, moved }
    }

    /// No body: for a copy of a body-less request, to send it again.
    pub fn empty() -> TimedBody {
        TimedBody { inner: None, deadline: None, timeout: Duration::ZERO, per_byte: Duration::ZERO, moved: None }
    }
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let Some(inner) = &mut this.inner else {
            return Poll::Ready(None);
        };
        let timeout = this.timeout;
        let deadline = this.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        let polled = Pin::new(inner).poll_frame(cx);
        if let Some(m) = &this.moved {
            // Something came from the client, or the upstream waits on it.
            if polled.is_ready() { m.now() } else { m.on_client() }
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    // Credit for the bytes, but never more than `body_timeout`
                    // from now: a burst must not buy a stall of hours (64 KB
                    // at 500 B/s would be two minutes, 10 MB nearly six hours).
                    let more = this.per_byte.saturating_mul(u32::try_from(data.len()).unwrap_or(u32::MAX));
                    let later = (deadline.deadline() + more).min(tokio::time::Instant::now() + timeout);
                    if later > deadline.deadline() {
                        deadline.as_mut().reset(later);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => Poll::Ready(other.map(|r| r.map_err(Into::into))),
            Poll::Pending => match deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimedOut.into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.as_ref().map_or_else(|| http_body::SizeHint::with_exact(0), http_body::Body::size_hint)
    }
}

/// Sends the request and waits up to `upstream_timeout` for the response
/// head. The bodies stream through in both directions; nothing is buffered
/// whole. A request body that breaks or stalls is the client's fault, not
/// the upstream's: 400 or 408, not 502.
///
/// `sent` is set when the request goes to the upstream (after any wait for
/// a slot): what `upstream_duration_seconds` and the access log measure from.
// A plain fn returning an async block, not an `async fn`: an `async fn`
// keeps a second copy of each argument in its future (rust-lang/rust#62958),
// and the future is moved whole, several times, per request.
#[allow(clippy::manual_async_fn, reason = "see above")]
pub fn forward<'a>(
    pool: &'a Arc<Pool>,
    mut req: Request<Incoming>,
    s: &'a crate::config::ServerConfig,
    sent: &'a mut Option<std::time::Instant>,
) -> impl Future<Output = Result<Response<Body>, GatewayError>> + 'a {
    async move {
        let client_upgrade = wants_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
        let hold = req.extensions_mut().remove::<crate::conn::ConnHold>();
        let req = req.map(|b| TimedBody::new(b, s));
        let moved = req.body().moved.clone();
        let Some(client_upgrade) = client_upgrade else {
            // Each request in flight holds an upstream connection, and an
            // HTTP/2 client can have many in flight on one connection: their
            // number is bounded (`max_upstream_requests`), or one client could
            // open upstream connections until the process runs out of files.
            let slot = match pool.slots().try_take() {
                Some(slot) => slot,
                None => tokio::time::timeout(s.upstream_timeout, pool.slots().take()).await.map_err(|_| {
                    GatewayError::Unavailable("too many requests in flight to upstreams (server.max_upstream_requests)".into())
                })?,
            };
            let now = std::time::Instant::now();
            *sent = Some(now);
            let send = std::pin::pin!(pool.send(req));
            let resp = head_within(s, now, send, moved.as_ref()).await?.map(|b| b.holding(slot));
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                return Err(GatewayError::BadGateway("upstream switched protocols unasked".into()));
            }
            let (mut parts, body) = resp.into_parts();
            response_headers(parts.status, &mut parts.headers);
            return Ok(Response::from_parts(parts, body.boxed()));
        };
        let now = std::time::Instant::now();
        *sent = Some(now);
        // Boxed: upgrades are rare, and inline this future would make every
        // request's future larger.
        let mut send = Box::pin(upstream::send_upgrade(pool.authority(), req));
        let mut resp = head_within(s, now, send.as_mut(), moved.as_ref()).await?;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS && !is_websocket(resp.headers()) {
            return Err(GatewayError::BadGateway("upstream switched to a protocol other than the WebSocket asked for".into()));
        }
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((c, u)) => {
                        let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                        let copy = tokio::io::copy_bidirectional(&mut c, &mut u);
                        // The tunnel keeps its connection slot and idle deadline.
                        match &hold {
                            Some(h) => tokio::select! {
                                _ = copy => {}
                                () = h.idle() => tracing::debug!("upgraded connection idle; closed"),
                            },
                            None => {
                                let _ = copy.await;
                            }
                        }
                        drop(hold);
                    }
                    Err(error) => tracing::debug!(%error, "upgrade failed"),
                }
            });
            let (parts, _) = resp.into_parts();
            return Ok(Response::from_parts(parts, body::empty()));
        }
        let (mut parts, incoming) = resp.into_parts();
        response_headers(parts.status, &mut parts.headers);
        Ok(Response::from_parts(parts, incoming.boxed()))
    }
}

/// The response head within `upstream_timeout`, failures sorted into the
/// client's (400, 408) and the upstream's (502), a timeout 504.
/// With a request body, `upstream_timeout` counts from the last piece of
/// it that went upstream (see `Moved`).
/// `sent` is pinned by the caller, so this future does not hold a second
/// copy of it.
async fn head_within<T>(
    s: &crate::config::ServerConfig,
    now: std::time::Instant,
    mut sent: Pin<&mut impl Future<Output = Result<T, SendError>>>,
    moved: Option<&Moved>,
) -> Result<T, GatewayError> {
    let mut deadline = tokio::time::Instant::from_std(now) + s.upstream_timeout;
    loop {
        match tokio::time::timeout_at(deadline, sent.as_mut()).await {
            Ok(Err(e)) => return Err(request_error(&e)),
            Ok(Ok(r)) => return Ok(r),
            Err(_) => match moved.map(|m| m.last() + s.upstream_timeout) {
                Some(later) if later > deadline => deadline = later,
                _ => return Err(GatewayError::GatewayTimeout),
            },
        }
    }
}

/// The upstream's response headers as the client will get them.
fn response_headers(status: StatusCode, headers: &mut HeaderMap) {
    // Both framings: hyper read the body as chunked (RFC 9112 6.3) and the
    // client gets it chunked too; the upstream's Content-Length would frame
    // it wrongly (a truncated body). A 204 has no body whatever its
    // Content-Length says (RFC 9110 8.6 forbids sending one), and an HTTP/2
    // client refuses a 204 that announces content.
    if status == StatusCode::NO_CONTENT || headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    remove_hop_by_hop(headers);
}

/// Tells a request body the client broke (bad chunk, stall) from an upstream failure.
fn request_error(e: &SendError) -> GatewayError {
    let e: &(dyn std::error::Error + 'static) = match e {
        SendError::Http(h) => h,
        SendError::Connect(_) => return GatewayError::BadGateway(error_chain(e)),
    };
    let chain = || std::iter::successors(Some(e), |c| c.source());
    if chain().any(|c| c.is::<BodyTimedOut>()) {
        GatewayError::RequestTimeout
    } else if chain().any(|c| c.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_user)) {
        GatewayError::BadRequest("the request body could not be read")
    } else {
        GatewayError::BadGateway(error_chain(e))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// The built-in `echo` upstream: the request it would have received, as JSON.
pub fn echo(req: &Request<Incoming>, path: &str, query: Option<&str>) -> Response<Body> {
    let mut headers = serde_json::Map::new();
    for (name, value) in req.headers() {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match headers.get_mut(name.as_str()) {
            Some(serde_json::Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(&v);
            }
            _ => {
                headers.insert(name.as_str().to_string(), serde_json::Value::String(v));
            }
        }
    }
    let json = serde_json::json!({
        "method": req.method().as_str(),
        "path": path,
        "query": query,
        "headers": headers,
    });
    let mut resp = Response::new(body::full(Bytes::from(json.to_string())));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Reads at most `limit` bytes of a request body (login forms) within
/// `timeout`; more is 413, slower is 408.
pub async fn read_body_limited(body: Incoming, limit: usize, timeout: Duration) -> Result<Bytes, GatewayError> {
    // A Content-Length over the limit is refused at once, before any of the
    // body is read (and before hyper answers `Expect: 100-continue`).
    if hyper::body::Body::size_hint(&body).lower() > limit as u64 {
        return Err(GatewayError::PayloadTooLarge);
    }
    let limited = http_body_util::Limited::new(body, limit);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => Err(GatewayError::RequestTimeout),
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(GatewayError::PayloadTooLarge),
        Ok(Err(_)) => Err(GatewayError::BadRequest("the request body could not be read")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_text_matches_display() {
        let mut addrs: Vec<IpAddr> = [0u8, 1, 9, 10, 42, 99, 100, 109, 110, 199, 200, 255]
            .iter()
            .flat_map(|&a| [[a, 0, 0, 1], [127, a, 10, a], [255, 255, 255, a]])
            .map(IpAddr::from)
            .collect();
        addrs.extend(["::1", "2001:db8::8a2e:370:7334", "::ffff:10.0.0.1"].map(|s| s.parse::<IpAddr>().expect("an IPv6 literal")));
        for ip in addrs {
            let mut text = String::new();
            push_ip(&mut text, ip);
            assert_eq!(text, ip.to_string());
        }
    }
}
