//! Per-connection deadlines that hyper does not give us as we want them:
//! `header_read_timeout` counts from the first byte of a request head (so a
//! slowloris client is cut off), and `idle_timeout` closes a keep-alive
//! connection on which nothing has moved for that long. hyper's own header
//! timer also runs while a connection is idle, which would cap keep-alive
//! at the header timeout; this replaces it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
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
    /// wakes the watchdog when a head starts (its deadline is nearer)
    head_notify: tokio::sync::Notify,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// A request head took longer than `header_read_timeout`.
    HeaderRead,
    /// Nothing moved for `idle_timeout` between requests.
    Idle,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            start: Instant::now(),
            last: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            head_notify: tokio::sync::Notify::new(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn on_read(&self) {
        let now = self.now_ms();
        self.last.store(now, Relaxed);
        if self.busy.load(Relaxed) == 0 && self.head_started.load(Relaxed) == 0 {
            self.head_started.store(now + 1, Relaxed);
            self.head_notify.notify_one();
        }
    }

    fn on_write(&self) {
        self.last.store(self.now_ms(), Relaxed);
    }

    /// A request head was parsed and handed to the service. The guard marks
    /// the end of the service call when dropped.
    pub fn request(self: &Arc<Self>) -> RequestGuard {
        self.head_started.store(0, Relaxed);
        self.busy.fetch_add(1, Relaxed);
        RequestGuard(self.clone())
    }

    /// Ok(how long until the next check) or which deadline passed.
    fn check(&self, header_timeout: Duration, idle_timeout: Duration) -> Result<Duration, Expired> {
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
        }
        Ok(next.max(Duration::from_millis(10)))
    }

    /// Resolves when a deadline passes.
    pub async fn watchdog(self: Arc<Self>, header_timeout: Duration, idle_timeout: Duration) -> Expired {
        loop {
            match self.check(header_timeout, idle_timeout) {
                Ok(wait) => {
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
            let quiet = Duration::from_millis(self.activity.now_ms().saturating_sub(self.activity.last.load(Relaxed)));
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

/// An IO stream that reports its reads and writes to an `Activity`.
pub struct WatchedIo<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> WatchedIo<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        WatchedIo { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WatchedIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_read();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WatchedIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.on_write();
        }
        r
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.on_write();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines() {
        let a = Activity::new();
        let (h, i) = (Duration::from_secs(10), Duration::from_secs(60));
        assert!(a.check(h, i).is_ok());
        a.on_read();
        assert!(a.check(h, i).expect("fresh head") <= h);
        let g = a.request();
        assert_eq!(a.head_started.load(Relaxed), 0, "a complete head stops the header timer");
        a.on_read();
        assert_eq!(a.head_started.load(Relaxed), 0, "body bytes of a request in flight are no new head");
        drop(g);
        assert_eq!(a.busy.load(Relaxed), 0);
    }
}
