//! Upstream connections: one pool of keep-alive HTTP/1.1 connections per
//! upstream, driven by the request that uses them.
//!
//! hyper's client connections normally run as their own task, and every
//! request crosses two channels between that task and the one serving the
//! client. Here a connection is polled by whoever holds it: while a request
//! waits for its response head, `send` drives it; while the response body
//! streams, `PooledBody` does. A proxied request then runs in one task, as
//! in nginx's event loop, and the pool is a short list behind a mutex: no
//! hashing, no pool task. A connection goes back to the pool only once its
//! response has been read to the end and hyper says it can take another
//! request; anything else closes it.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::proxy::TimedBody;

/// An idle connection is closed after this long unused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per upstream; more are closed when they come back.
const MAX_IDLE: usize = 256;
/// How long a connection must have been idle for a request sent on it to
/// be kept for sending again (see `Pool::send`).
const REPLAY_AFTER: Duration = Duration::from_millis(10);

type Io = TokioIo<crate::upstream_io::UpstreamIo>;

/// One HTTP/1.1 connection to an upstream: the handle that sends requests
/// and the state machine that must be polled for anything to happen.
pub struct Conn {
    send: SendRequest<TimedBody>,
    /// None once it has ended. Dropped then, not kept: a request queued on
    /// it that it never took is handed back only when it is dropped (and is
    /// then retried on another connection).
    conn: Option<Pin<Box<Connection<Io, TimedBody>>>>,
}

impl Conn {
    /// Drives the connection. `true` when it has ended (closed or failed):
    /// it can never be used again.
    fn poll_done(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(c) = &mut self.conn
            && c.as_mut().poll(cx).is_ready()
        {
            self.conn = None;
        }
        self.conn.is_none()
    }

    /// Ready for a request, or `false` when it has ended instead.
    async fn ready(&mut self) -> bool {
        poll_fn(|cx| {
            if self.poll_done(cx) {
                return Poll::Ready(false);
            }
            self.send.poll_ready(cx).map(|r| r.is_ok())
        })
        .await
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// The connections to one upstream `host:port`.
pub struct Pool {
    authority: Authority,
    /// `Host` for every request, built once.
    host: Option<http::HeaderValue>,
    idle: Mutex<Vec<Idle>>,
    /// Requests in flight to upstreams, shared by all pools of a gateway
    /// (`server.max_upstream_requests`; see `proxy::forward`).
    slots: Arc<Slots>,
}

/// A counting limit on requests in flight, taken and given back on every
/// proxied request: one compare-and-swap each way. (tokio's `Semaphore`
/// takes its waiters' mutex on every release.)
pub struct Slots {
    used: AtomicUsize,
    max: usize,
    /// Requests waiting in [`Slots::take`]; a release wakes one only then.
    waiting: AtomicUsize,
    freed: tokio::sync::Notify,
}

/// One request's slot, given back when dropped.
pub struct Slot(Arc<Slots>);

impl Slots {
    pub fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots { used: AtomicUsize::new(0), max, waiting: AtomicUsize::new(0), freed: tokio::sync::Notify::new() })
    }

    /// A slot if one is free now.
    pub fn try_take(self: &Arc<Self>) -> Option<Slot> {
        // SeqCst here and in `Slot::drop`: a waiter's `waiting` increment
        // then its look at `used`, against a release's `used` decrement
        // then its look at `waiting`, must not both read the old values.
        self.used.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < self.max).then_some(n + 1)).ok()?;
        Some(Slot(self.clone()))
    }

    /// Waits for a slot (callers bound the wait).
    pub async fn take(self: &Arc<Self>) -> Slot {
        // Counted as waiting before looking, and registered for a wake-up
        // before looking too (`enable`): a slot given back in between wakes
        // this waiter, and two given back wake two waiters, not one.
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _done = Waiting(self);
        loop {
            let mut notified = std::pin::pin!(self.freed.notified());
            notified.as_mut().enable();
            if let Some(slot) = self.try_take() {
                return slot;
            }
            notified.await;
        }
    }
}

struct Waiting<'a>(&'a Slots);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::SeqCst);
        if self.0.waiting.load(Ordering::SeqCst) > 0 {
            self.0.freed.notify_one();
        }
    }
}

/// Why no response came back.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("cannot connect to the upstream")]
    Connect(#[source] io::Error),
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

impl Pool {
    /// A pool with no limit of its own on requests in flight.
    pub fn new(authority: Authority) -> Pool {
        Pool::sharing(authority, Slots::new(usize::MAX))
    }

    fn sharing(authority: Authority, slots: Arc<Slots>) -> Pool {
        let host = http::HeaderValue::from_str(authority.as_str()).ok();
        Pool { authority, host, idle: Mutex::new(Vec::new()), slots }
    }

    /// The slots for requests in flight to upstreams.
    pub fn slots(&self) -> &Arc<Slots> {
        &self.slots
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The `Host` header requests to this upstream carry.
    pub fn host(&self) -> Option<&http::HeaderValue> {
        self.host.as_ref()
    }

    /// The most recently used idle connection: the one least likely to
    /// have been closed by the upstream's own keep-alive timeout; and how
    /// long it was idle.
    fn checkout(&self) -> Option<(Conn, Duration)> {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some(i) = idle.pop() {
            let quiet = now.duration_since(i.since);
            if quiet < IDLE_TIMEOUT {
                return Some((i.conn, quiet));
            }
        }
        None
    }

    fn checkin(&self, conn: Conn) {
        // A connection that is not ready has a response still in flight,
        // or has been told to close: neither can be reused.
        if conn.conn.is_none() || !conn.send.is_ready() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(Idle { conn, since: Instant::now() });
        }
    }

    /// Closes connections idle past `IDLE_TIMEOUT` or closed by the upstream.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        idle.retain_mut(|i| now.duration_since(i.since) < IDLE_TIMEOUT && !i.conn.poll_done(&mut cx));
    }

    /// Idle connections held now.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map_or(0, |i| i.len())
    }

    async fn connect(&self) -> Result<Conn, SendError> {
        let tcp = connect_tcp(&self.authority).await.map_err(SendError::Connect)?;
        let (send, conn) = http1::handshake(TokioIo::new(crate::upstream_io::UpstreamIo::new(tcp))).await?;
        Ok(Conn { send, conn: Some(Box::pin(conn)) })
    }

    /// Sends `req` on an idle connection, or a new one, and returns the
    /// response head with a body that hands the connection back when read
    /// to the end. A request that an idle connection could not take (the
    /// upstream had closed it before the request was written) is sent
    /// again on another: it never reached the upstream. So, once, is an
    /// idempotent body-less one that the upstream closed the connection
    /// under (see below).
    // Not an `async fn`, which would keep the request twice in its future
    // (see `proxy::forward`).
    #[allow(clippy::manual_async_fn, reason = "see above")]
    pub fn send(self: &Arc<Self>, req: Request<TimedBody>) -> impl Future<Output = Result<Response<PooledBody>, SendError>> + '_ {
        let mut req = req;
        async move {
            let mut replayed = false;
            loop {
                let (mut conn, reused, quiet) = match self.checkout() {
                    Some((c, quiet)) => (c, true, quiet),
                    None => (self.connect().await?, false, Duration::ZERO),
                };
                // A new connection takes its first request without waiting; if
                // it has ended, the request fails with the reason.
                if reused && !conn.ready().await {
                    continue;
                }
                // The upstream may close a kept-alive connection just as a
                // request goes out on it (its keep-alive timeout, or nginx
                // dropping idle connections when short of
                // worker_connections): the request is lost, unanswered. One
                // that is idempotent and has no body is sent again, once, on
                // another connection, as nginx does; a copy is kept for that.
                // Upstreams close connections that have been idle, so only a
                // connection idle for `REPLAY_AFTER` is worth the copy (3 %
                // of a request's instructions): under load a connection is
                // reused within a few milliseconds. Boxed: held across the
                // wait, inline it would enlarge every request's future.
                let spare = (reused && quiet >= REPLAY_AFTER && !replayed && replayable(&req)).then(|| Box::new(copy(&req)));
                let mut response = std::pin::pin!(conn.send.try_send_request(req));
                let result = poll_fn(|cx| {
                    // The connection writes the request and reads the head;
                    // then the response future has its answer.
                    let _ = conn.poll_done(cx);
                    response.as_mut().poll(cx)
                })
                .await;
                match result {
                    Ok(resp) => {
                        let pool = Arc::clone(self);
                        return Ok(resp.map(|body| PooledBody { body, conn: Some(conn), pool, ended: false, slot: None }));
                    }
                    Err(mut e) => match (e.take_message(), spare) {
                        (Some(r), _) if reused => req = r,
                        (None, Some(copy)) if closed_under(e.error()) => {
                            tracing::debug!(error = %e.error(), "a kept-alive upstream connection closed under a request; sending it again");
                            replayed = true;
                            req = *copy;
                        }
                        _ => return Err(SendError::Http(e.into_error())),
                    },
                }
            }
        }
    }
}

/// Whether a request may be sent twice: an idempotent method (RFC 9110,
/// 9.2.2) and no body, so nothing of it is lost with the first attempt.
fn replayable(req: &Request<TimedBody>) -> bool {
    use http::Method;
    matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE)
        && http_body::Body::is_end_stream(req.body())
}

/// A body-less request's copy, to send again.
fn copy(req: &Request<TimedBody>) -> Request<TimedBody> {
    let mut copy = Request::new(TimedBody::empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    *copy.extensions_mut() = req.extensions().clone();
    copy
}

/// The connection ended under the request before its answer came: closed
/// (what hyper calls an incomplete message) or reset.
fn closed_under(e: &hyper::Error) -> bool {
    e.is_incomplete_message()
        || std::error::Error::source(e).and_then(|s| s.downcast_ref::<io::Error>()).is_some_and(|io| {
            matches!(io.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted)
        })
}

/// `host:port`, resolved, every address tried in turn; no Nagle delay, and
/// TCP keep-alive so a dead peer is noticed on an idle connection.
async fn connect_tcp(authority: &Authority) -> io::Result<TcpStream> {
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    let tcp = TcpStream::connect((host, authority.port_u16().unwrap_or(80))).await?;
    tcp.set_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
    socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive)?;
    Ok(tcp)
}

/// An upstream response body that drives its connection while it streams,
/// and returns the connection to the pool once read to the end.
pub struct PooledBody {
    body: Incoming,
    conn: Option<Conn>,
    pool: Arc<Pool>,
    /// The body gave its last frame: no more frames, or trailers (a
    /// chunked body is never `is_end_stream`, so this is how its end is
    /// known).
    ended: bool,
    /// The request's slot among those in flight to upstreams, given back
    /// when the body is done.
    slot: Option<Slot>,
}

impl PooledBody {
    /// Holds `slot` until the body is done with.
    pub fn holding(mut self, slot: Slot) -> PooledBody {
        self.slot = Some(slot);
        self
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        // Twice: the first poll of the body may only tell the connection
        // that it is wanted, and the connection then reads the next chunk.
        for _ in 0..2 {
            if let Some(c) = &mut this.conn
                && c.poll_done(cx)
            {
                this.conn = None;
            }
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Pending => continue,
                Poll::Ready(None) => {
                    this.ended = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers are the last frame: hyper's server takes
                    // them and drops the body without asking for more.
                    // Connection-specific fields go, as from the head: an
                    // HTTP/2 client resets a stream whose trailers hold one.
                    let frame = match frame.into_trailers() {
                        Ok(mut trailers) => {
                            this.ended = true;
                            crate::proxy::remove_hop_by_hop(&mut trailers);
                            http_body::Frame::trailers(trailers)
                        }
                        Err(frame) => frame,
                    };
                    return Poll::Ready(Some(Ok(frame)));
                }
                ready => return ready,
            }
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // Read to the end: the connection can take the next request. Cut
        // short (the client left): the rest of the response is still on
        // the wire, so the connection closes.
        if (self.ended || self.body.is_end_stream())
            && let Some(conn) = self.conn.take()
        {
            self.pool.checkin(conn);
        }
    }
}

/// A connection of its own for a request that asks to switch protocols
/// (WebSocket): it runs as its own task so that it outlives the response
/// and hands the socket over to the upgrade. It is never pooled.
pub async fn send_upgrade(authority: &Authority, req: Request<TimedBody>) -> Result<Response<Incoming>, SendError> {
    let tcp = connect_tcp(authority).await.map_err(SendError::Connect)?;
    let (mut send, conn) = http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        if let Err(error) = conn.with_upgrades().await {
            tracing::debug!(%error, "upstream connection failed");
        }
    });
    Ok(send.send_request(req).await?)
}

/// One pool per upstream named in the routes.
pub struct Upstreams {
    pools: Vec<Arc<Pool>>,
}

impl Upstreams {
    /// At most `in_flight` requests at once to all of them together.
    pub fn new<'a>(authorities: impl IntoIterator<Item = &'a Authority>, in_flight: usize) -> Upstreams {
        let slots = Slots::new(in_flight);
        let mut pools: Vec<Arc<Pool>> = Vec::new();
        for a in authorities {
            if !pools.iter().any(|p| p.authority == *a) {
                pools.push(Arc::new(Pool::sharing(a.clone(), slots.clone())));
            }
        }
        Upstreams { pools }
    }

    /// The pool for `authority`, if a route names it (every route's
    /// upstream has one). A handful of routes: a scan beats a hash. The
    /// route's own spelling first (a byte comparison); `Authority`'s `==`
    /// ignores case byte by byte, which costs more than a request's routing.
    pub fn pool(&self, authority: &Authority) -> Option<&Arc<Pool>> {
        let exact = self.pools.iter().find(|p| p.authority.as_str() == authority.as_str());
        exact.or_else(|| self.pools.iter().find(|p| p.authority == *authority))
    }

    pub fn sweep(&self) {
        for p in &self.pools {
            p.sweep();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_bound_and_wake_a_waiter_when_one_comes_back() {
        let slots = Slots::new(2);
        let (a, b) = (slots.try_take().expect("one"), slots.try_take().expect("two"));
        assert!(slots.try_take().is_none(), "a third over the limit");
        let waiter = tokio::spawn({
            let slots = slots.clone();
            async move { slots.take().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(a);
        let c = tokio::time::timeout(Duration::from_secs(1), waiter).await.expect("woken").expect("join");
        assert!(slots.try_take().is_none());
        // A waiter that gives up leaves no count behind.
        assert!(tokio::time::timeout(Duration::from_millis(20), slots.take()).await.is_err());
        assert_eq!(slots.waiting.load(Ordering::Acquire), 0);
        drop((b, c));
        assert_eq!(slots.used.load(Ordering::Acquire), 0);
        assert!(slots.try_take().is_some());

        // Two waiters, two releases at once: both are woken.
        let (a, b) = (slots.try_take().expect("one"), slots.try_take().expect("two"));
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let slots = slots.clone();
                tokio::spawn(async move { slots.take().await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop((a, b));
        for w in waiters {
            tokio::time::timeout(Duration::from_secs(1), w).await.expect("both waiters woken").expect("join");
        }
    }

    #[test]
    fn one_pool_per_authority_whatever_its_case() {
        let a: Authority = "Backend.internal:8080".parse().expect("an authority");
        let b: Authority = "backend.internal:8080".parse().expect("an authority");
        let c: Authority = "other:80".parse().expect("an authority");
        let ups = Upstreams::new([&a, &b, &c], 10);
        assert_eq!(ups.pools.len(), 2);
        let pa = ups.pool(&a).expect("a pool for a");
        let pb = ups.pool(&b).expect("a pool for b, spelled differently");
        assert!(Arc::ptr_eq(pa, pb));
        assert_eq!(ups.pool(&c).map(|p| p.authority().as_str()), Some("other:80"));
        assert!(ups.pool(&"nowhere:1".parse().expect("an authority")).is_none());
    }
}
