//! Per-connection deadlines that hyper does not give us as we want them:
//! `header_read_timeout` counts from the first byte of a request head (so a
//! slowloris client is cut off), and `idle_timeout` closes a keep-alive
//! connection on which nothing has moved for that long. hyper's own header
//! timer also runs while a connection is idle, which would cap keep-alive
//! at the header timeout; this replaces it.
//!
//! It also lets an idle HTTP/1 connection be *parked*: once nothing has moved
//! for a moment and hyper is known to be between requests, holding no bytes
//! of the next one (see `Activity::check`), `WatchedIo` answers hyper's next
//! read with end-of-file. hyper then finishes that connection
//! cleanly, its buffers (about 24 KB) are freed, and the server keeps only the
//! TLS stream until the socket is readable again (see `server.rs`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What has happened on one connection, shared by its IO and its requests.
pub struct Activity {
    start: Instant,
    /// ms since `start` of the last byte read or written
    last: AtomicU64,
    /// ms since `start` (+1) of the first byte of a head not yet complete; 0 = none
    head_started: AtomicU64,
    /// requests handed to the service and not yet answered
    busy: AtomicUsize,
    /// wakes the watchdog when a head starts and its deadline is nearer
    /// than the watchdog's next wake-up (`wake_at`)
    head_notify: tokio::sync::Notify,
    /// ms since `start` at which the watchdog wakes next
    wake_at: AtomicU64,
    /// `header_read_timeout` in ms
    header_ms: u64,
    /// response bodies hyper has not finished with (dropped)
    responding: AtomicUsize,
    /// a write was handed to the IO and not flushed since
    dirty: AtomicBool,
    /// nothing has been read since this HTTP/1 session (re)started
    fresh: AtomicBool,
    /// the last read ended with a head's blank line
    read_ended_head: AtomicBool,
    /// hyper's buffer is known to be empty: the last request came whole in
    /// the last read (which ended with its blank line) and has no body
    clean: AtomicBool,
    /// the watchdog decided this connection should park at its next idle read
    park: AtomicBool,
    /// ms since `start` of the last unpark
    unparked_at: AtomicU64,
    /// The connection speaks HTTP/2: its reads are frames, not heads.
    http2: AtomicBool,
    /// HTTP/2: bytes read with no stream in flight since the last write
    /// (see `on_io_write`).
    read_between: AtomicUsize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// A request head took longer than `header_read_timeout`.
    HeaderRead,
    /// Nothing moved for `idle_timeout` between requests.
    Idle,
    /// Idle long enough to park (HTTP/1 only; see `WatchedIo`).
    Park,
}

/// Slack over what the client sent for HTTP/2 writes between streams
/// that answer control frames (a PING ack is 17 bytes, a SETTINGS ack 9,
/// a GOAWAY 17 and up).
const CONTROL_SLACK: usize = 64;

/// How long an HTTP/1 connection whose buffers are known to be empty stays
/// quiet before it parks.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

impl Activity {
    pub fn new(header_timeout: Duration) -> Arc<Activity> {
        Arc::new(Activity {
            wake_at: AtomicU64::new(0),
            header_ms: u64::try_from(header_timeout.as_millis()).unwrap_or(u64::MAX),
            start: Instant::now(),
            last: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            head_notify: tokio::sync::Notify::new(),
            responding: AtomicUsize::new(0),
            dirty: AtomicBool::new(false),
            fresh: AtomicBool::new(true),
            read_ended_head: AtomicBool::new(false),
            clean: AtomicBool::new(false),
            park: AtomicBool::new(false),
            unparked_at: AtomicU64::new(0),
            http2: AtomicBool::new(false),
            read_between: AtomicUsize::new(0),
        })
    }

    /// The connection speaks HTTP/2 from now on.
    pub fn http2(&self) {
        self.http2.store(true, Relaxed);
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// How long nothing has moved either way.
    pub fn quiet(&self) -> Duration {
        Duration::from_millis(self.now_ms().saturating_sub(self.last.load(Relaxed)))
    }

    fn on_read(&self, data: &[u8]) {
        let now = self.now_ms();
        // A request or a response still in flight: what is read now is its
        // body (or, pipelined, a next head, which waits behind it).
        let in_flight = self.busy.load(Relaxed) != 0 || self.responding.load(Relaxed) != 0;
        if self.http2.load(Relaxed) {
            // Frames, not heads: no head timer (a window update during a
            // download, or the settings ack after a response, started one,
            // which then cut the connection). Nor is a ping or a settings
            // frame between streams activity: idle counts from the last stream.
            if in_flight {
                self.last.store(now, Relaxed);
            } else {
                self.read_between.fetch_add(data.len(), Relaxed);
            }
            return;
        }
        self.last.store(now, Relaxed);
        self.fresh.store(false, Relaxed);
        self.clean.store(false, Relaxed);
        self.park.store(false, Relaxed);
        self.read_ended_head.store(data.ends_with(b"\r\n\r\n"), Relaxed);
        // Only between exchanges can a read start a new head. Bytes that
        // come while a response is still going out (the rest of an upload
        // the upstream answered early, or a pipelined request) are bounded
        // by idle_timeout instead: the head timer cut uploads off mid-way.
        if !in_flight && self.head_started.load(Relaxed) == 0 {
            self.head_started.store(now + 1, Relaxed);
            // Waking the watchdog means another poll of the whole connection:
            // only when it would otherwise sleep past this head's deadline.
            if self.wake_at.load(Relaxed) > now.saturating_add(self.header_ms) {
                self.head_notify.notify_one();
            }
        }
    }

    fn on_write(&self) {
        self.last.store(self.now_ms(), Relaxed);
    }

    /// `n` bytes went out. On HTTP/2 with no stream in flight, a write no
    /// larger than what the client sent since the last one (give or take a
    /// frame) answers its pings or settings, and is no more activity than
    /// they were (`on_read`): a client pinging every few seconds, alone or
    /// in bursts, would hold its connection (and its `max_connections`
    /// slot) for ever. A write well beyond that is the end of a response
    /// that hyper has taken whole but h2 still sends as the client's
    /// window opens (a window update of 13 bytes lets kilobytes out): a
    /// slow reader's download must not be cut.
    fn on_io_write(&self, n: usize) {
        if self.http2.load(Relaxed) && self.busy.load(Relaxed) == 0 && self.responding.load(Relaxed) == 0 {
            let answered = self.read_between.swap(0, Relaxed);
            if n <= answered.saturating_add(CONTROL_SLACK) {
                return;
            }
        }
        self.on_write();
    }

    /// The TLS handshake (whose bytes do not pass through `WatchedIo`) just
    /// finished: the connection's idle time counts from here.
    pub fn handshake_done(&self) {
        self.on_write();
    }

    /// The connection starts to close gracefully. With nothing in flight,
    /// its idle time counts from here, so that the close itself (an HTTP/2
    /// GOAWAY) can go out before it is cut. A response still in flight keeps
    /// its clock: one whose reader stalled past `idle_timeout` is dropped at
    /// once, not given another `idle_timeout` in which a late read would
    /// start it moving again.
    pub fn closing(&self) {
        if self.settled() {
            self.on_write();
        }
    }

    /// A request head was parsed and handed to the service. The guard marks
    /// the end of the service call when dropped. `whole` says the request has
    /// no body (and is no upgrade): if the read that brought its head ended
    /// with that head, hyper now holds none of the next request's bytes.
    pub fn request(self: &Arc<Self>, whole: bool) -> RequestGuard {
        self.clean.store(whole && self.read_ended_head.load(Relaxed), Relaxed);
        self.head_started.store(0, Relaxed);
        self.busy.fetch_add(1, Relaxed);
        RequestGuard(self.clone())
    }

    /// Marks a response body as in flight until the guard is dropped (hyper
    /// drops the body once it has taken all of it, or gives up on it).
    pub fn responding(self: &Arc<Self>) -> ResponseGuard {
        self.responding.fetch_add(1, Relaxed);
        ResponseGuard(self.clone())
    }

    /// No request or response is in flight and every write was flushed.
    fn settled(&self) -> bool {
        self.busy.load(Relaxed) == 0 && self.responding.load(Relaxed) == 0 && !self.dirty.load(Relaxed)
    }

    /// A new HTTP/1 session begins on a connection that was parked.
    pub fn unparked(&self) {
        self.unparked_at.store(self.now_ms(), Relaxed);
        self.fresh.store(true, Relaxed);
        self.clean.store(false, Relaxed);
        self.park.store(false, Relaxed);
    }

    /// Asks the IO to park at hyper's next read that finds nothing to read.
    pub fn park_soon(&self) {
        self.park.store(true, Relaxed);
    }

    /// Ok(how long until the next check) or which deadline passed. With
    /// `park`, a settled connection parks after `PARK_AFTER` of quiet, but
    /// only when hyper is known to be between requests with none of the
    /// next one's bytes (`fresh` or `clean`). After a request with a body
    /// that is never known: hyper may still be reading that body (an
    /// upstream can answer before it has all of it), and an end-of-file
    /// there would end the body early and leave the connection out of step
    /// with the client. Such a connection keeps its session, as before
    /// parking existed, until its next request without a body or
    /// `idle_timeout`.
    fn check(&self, header_timeout: Duration, idle_timeout: Duration, park: bool) -> Result<Duration, Expired> {
        let now = self.now_ms();
        let mut next = idle_timeout;
        let hs = self.head_started.load(Relaxed);
        if hs != 0 {
            let elapsed = Duration::from_millis(now.saturating_sub(hs - 1));
            if elapsed >= header_timeout {
                return Err(Expired::HeaderRead);
            }
            next = next.min(header_timeout - elapsed);
        } else if self.busy.load(Relaxed) == 0 {
            let quiet = Duration::from_millis(now.saturating_sub(self.last.load(Relaxed)));
            if quiet >= idle_timeout {
                return Err(Expired::Idle);
            }
            next = next.min(idle_timeout - quiet);
            let known_empty = self.fresh.load(Relaxed) || self.clean.load(Relaxed);
            if park && known_empty && !self.park.load(Relaxed) {
                if self.settled() {
                    // Also PARK_AFTER since the last unpark: bytes that carry
                    // no request (a TLS record in pieces) cannot make it
                    // park and unpark more than once a second.
                    let since_unpark = Duration::from_millis(now.saturating_sub(self.unparked_at.load(Relaxed)));
                    let waited = quiet.min(since_unpark);
                    let after = PARK_AFTER.min(header_timeout);
                    if waited >= after {
                        return Err(Expired::Park);
                    }
                    next = next.min(after - waited);
                } else {
                    // A response is still going out: look again soon.
                    next = next.min(PARK_AFTER);
                }
            }
        } else if park {
            // Nothing wakes the watchdog when a request finishes: look again soon.
            next = next.min(PARK_AFTER);
        }
        Ok(next.max(Duration::from_millis(10)))
    }

    /// Resolves when a deadline passes.
    pub async fn watchdog(self: Arc<Self>, header_timeout: Duration, idle_timeout: Duration, park: bool) -> Expired {
        loop {
            match self.check(header_timeout, idle_timeout, park) {
                Ok(wait) => {
                    let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
                    self.wake_at.store(self.now_ms().saturating_add(wait_ms), Relaxed);
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = self.head_notify.notified() => {}
                    }
                }
                Err(e) => return e,
            }
        }
    }
}

/// What an upgraded (WebSocket) connection keeps once hyper has handed it
/// over: its `max_connections` slot, and the activity its `idle_timeout` is
/// judged on. Travels in the request's extensions to the upgrade task.
#[derive(Clone)]
pub struct ConnHold {
    pub slot: Arc<dyn std::any::Any + Send + Sync>,
    pub activity: Arc<Activity>,
    pub idle_timeout: Duration,
}

impl ConnHold {
    /// Resolves once nothing has moved either way for `idle_timeout`.
    pub async fn idle(&self) {
        loop {
            let quiet = self.activity.quiet();
            if quiet >= self.idle_timeout {
                return;
            }
            tokio::time::sleep(self.idle_timeout - quiet).await;
        }
    }
}

pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Relaxed);
        self.0.on_write();
    }
}

pub struct ResponseGuard(Arc<Activity>);

impl Drop for ResponseGuard {
    fn drop(&mut self) {
        self.0.responding.fetch_sub(1, Relaxed);
    }
}

/// An IO stream that reports its reads and writes to an `Activity`, and
/// (HTTP/1, `parking`) ends hyper's session when the connection parks.
pub struct WatchedIo<T> {
    inner: T,
    activity: Arc<Activity>,
    parking: bool,
    parked: bool,
}

impl<T> WatchedIo<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        WatchedIo { inner, activity, parking: false, parked: false }
    }

    /// An HTTP/1 session that may park.
    pub fn parking(inner: T, activity: Arc<Activity>) -> Self {
        WatchedIo { inner, activity, parking: true, parked: false }
    }

    /// Whether this session ended because the connection parked (the
    /// end-of-file hyper saw came from here, not from the client).
    pub fn is_parked(&self) -> bool {
        self.parked
    }

    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WatchedIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        match r {
            Poll::Ready(Ok(())) if buf.filled().len() > before => self.activity.on_read(&buf.filled()[before..]),
            // Nothing to read, no request in flight, hyper's buffer empty:
            // end this session here. hyper takes the end-of-file as a client
            // that left between requests and finishes without writing.
            Poll::Pending if self.parking && self.activity.park.load(Relaxed) && self.activity.settled() => {
                self.parked = true;
                return Poll::Ready(Ok(()));
            }
            _ => {}
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WatchedIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.activity.dirty.store(true, Relaxed);
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r
            && n > 0
        {
            self.activity.on_io_write(n);
        }
        r
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        self.activity.dirty.store(true, Relaxed);
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r
            && n > 0
        {
            self.activity.on_io_write(n);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) {
            self.activity.dirty.store(false, Relaxed);
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.parked {
            // hyper closes a session that parked; the TLS stream lives on.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines() {
        let a = Activity::new(Duration::from_secs(10));
        let (h, i) = (Duration::from_secs(10), Duration::from_secs(60));
        assert!(a.check(h, i, false).is_ok());
        a.on_read(b"GET / HTTP/1.1\r\n");
        assert!(a.check(h, i, false).expect("fresh head") <= h);
        let g = a.request(true);
        assert_eq!(a.head_started.load(Relaxed), 0, "a complete head stops the header timer");
        a.on_read(b"body");
        assert_eq!(a.head_started.load(Relaxed), 0, "body bytes of a request in flight are no new head");
        let r = a.responding();
        drop(g);
        assert_eq!(a.busy.load(Relaxed), 0);
        a.on_read(b"more body");
        assert_eq!(a.head_started.load(Relaxed), 0, "nor are bytes read while its response goes out");
        drop(r);
        a.on_read(b"GET /next");
        assert_ne!(a.head_started.load(Relaxed), 0, "between exchanges a read starts a head");
    }

    #[test]
    fn http2_reads_are_frames() {
        let a = Activity::new(Duration::from_secs(10));
        a.http2();
        std::thread::sleep(Duration::from_millis(5));
        a.on_read(b"\0\0\0\x04\x01\0\0\0\0");
        assert_eq!(a.head_started.load(Relaxed), 0, "a frame is no head");
        assert_eq!(a.last.load(Relaxed), 0, "a frame between streams is no activity");
        a.on_io_write(17);
        assert_eq!(a.last.load(Relaxed), 0, "nor is the answer to it");
        a.on_read(&[0u8; 17 * 8]);
        a.on_io_write(17 * 8);
        assert_eq!(a.last.load(Relaxed), 0, "nor the answers to a burst of pings");
        a.on_read(&[0u8; 13]);
        a.on_io_write(16_384);
        assert_ne!(a.last.load(Relaxed), 0, "the rest of a response is");
    }
}
