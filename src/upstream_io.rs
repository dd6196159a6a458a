//! The socket to an upstream. The first write of each exchange (a request's
//! head, with its body when small) is gathered per worker thread and handed
//! to the kernel with the others of the same round in one `io_uring_enter`,
//! when the worker runs out of work (tokio's park hook), instead of one
//! `write` each.
//!
//! Why: where the upstream shares the proxy's core, each write woke the
//! upstream and Linux let it preempt the proxy at once, so the core went
//! proxy, upstream, proxy for nearly every request. One system call for the
//! writes of a whole round wakes it once for all of them (README,
//! Benchmarks). Every send is non-blocking (`MSG_DONTWAIT`): what a full
//! socket did not take is written the usual way, before anything else.
//!
//! A thread gets a ring at its first park, so only the runtime's workers
//! built by [`runtime`] with `server.io_uring` on batch; anywhere else, and
//! where io_uring is missing or refused (old kernels, seccomp profiles such
//! as Docker's default), writes go straight to the socket.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use io_uring::{IoUring, opcode, types};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Entries per ring; a round with more writes is sent in several calls.
const ENTRIES: u32 = 256;
/// A write larger than this goes straight to the socket: a batch saves a
/// system call, not a copy.
const BATCH_MAX: usize = 16 * 1024;
/// A queued buffer's capacity kept for the connection's next exchange.
const KEEP_CAPACITY: usize = 4 * 1024;
/// Non-blocking sends never wait; this bounds the wait for their
/// completions should a kernel ever make one.
const COMPLETION_WAIT: Duration = Duration::from_secs(1);
const MSG_DONTWAIT: i32 = 0x40;
const MSG_NOSIGNAL: i32 = 0x4000;
const EAGAIN: i32 = 11;

/// The multi-threaded runtime authgate serves on; with `io_uring`, its
/// workers send upstream writes in batches.
pub fn runtime(io_uring: bool) -> io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if io_uring {
        builder.on_thread_park(on_park);
    }
    builder.build()
}

enum Ring {
    Untried,
    Ready(Box<Batch>),
    /// io_uring could not be set up here, or failed: direct writes.
    Off,
}

struct Batch {
    uring: IoUring,
    /// Streams with bytes queued on this thread, in the order queued.
    pending: Vec<Arc<Shared>>,
}

thread_local! {
    static RING: RefCell<Ring> = const { RefCell::new(Ring::Untried) };
}

static WARNED: AtomicBool = AtomicBool::new(false);
static SENT: AtomicU64 = AtomicU64::new(0);

/// Writes sent through io_uring batches so far, in this process.
pub fn batched_writes() -> u64 {
    SENT.load(Ordering::Relaxed)
}

/// Whether a worker found io_uring unusable (and warned).
pub fn refused() -> bool {
    WARNED.load(Ordering::Relaxed)
}

/// The park hook: sends what this worker queued; at the first park, sets
/// up its ring.
fn on_park() {
    RING.with(|r| {
        let mut ring = r.borrow_mut();
        match &mut *ring {
            Ring::Ready(batch) => {
                if !batch.pending.is_empty() && batch.flush().is_err() {
                    // Its entries may still be in the kernel: the ring and
                    // their buffers are leaked (in `flush`), never freed.
                    *ring = Ring::Off;
                }
            }
            Ring::Untried => *ring = setup(),
            Ring::Off => {}
        }
    });
}

fn setup() -> Ring {
    let refused = |reason: String| {
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(%reason, "io_uring is not available: upstream writes go one system call each (server.io_uring)");
        }
        Ring::Off
    };
    match IoUring::new(ENTRIES) {
        // The bounded wait needs IORING_FEAT_EXT_ARG (Linux 5.11).
        Ok(uring) if uring.params().is_feature_ext_arg() => Ring::Ready(Box::new(Batch { uring, pending: Vec::new() })),
        Ok(_) => refused("the kernel is older than 5.11".into()),
        Err(e) => refused(e.to_string()),
    }
}

/// A ring's entries could not be accounted for.
struct Stuck;

impl Batch {
    fn flush(&mut self) -> Result<(), Stuck> {
        let mut again = Vec::new();
        while !self.pending.is_empty() {
            let n = self.pending.len().min(ENTRIES as usize);
            let streams: Vec<Arc<Shared>> = self.pending.drain(..n).collect();
            // Taken out, so that another thread may queue more meanwhile
            // (the stream stays listed: it goes in the next round).
            let bufs: Vec<Vec<u8>> = streams.iter().map(|s| std::mem::take(&mut s.lock().queued)).collect();
            match self.send(&streams, &bufs) {
                Ok(results) => {
                    SENT.fetch_add(results.len() as u64, Ordering::Relaxed);
                    for ((s, buf), res) in streams.into_iter().zip(bufs).zip(results) {
                        if s.settle(buf, res) {
                            again.push(s);
                        }
                    }
                }
                Err(Stuck) => {
                    // The kernel may still read these buffers and use these
                    // sockets: they are leaked, never freed.
                    for s in &streams {
                        s.unlist(Some(ErrorKind::Ring));
                    }
                    std::mem::forget(bufs);
                    std::mem::forget(streams);
                    // Never handed to the kernel: written the usual way.
                    for s in self.pending.drain(..).chain(again) {
                        s.unlist(None);
                    }
                    return Err(Stuck);
                }
            }
        }
        self.pending = again;
        Ok(())
    }

    /// One send per stream, all in one system call; each one's result
    /// (bytes sent or -errno).
    fn send(&mut self, streams: &[Arc<Shared>], bufs: &[Vec<u8>]) -> Result<Vec<i32>, Stuck> {
        {
            let mut sq = self.uring.submission();
            for (i, (s, buf)) in streams.iter().zip(bufs).enumerate() {
                let len = u32::try_from(buf.len()).map_err(|_| Stuck)?;
                let entry = opcode::Send::new(types::Fd(s.tcp.as_raw_fd()), buf.as_ptr(), len)
                    .flags(MSG_DONTWAIT | MSG_NOSIGNAL)
                    .build()
                    .user_data(i as u64);
                // SAFETY: the kernel reads `buf` and uses the socket until
                // the entry completes. Both are borrowed from the caller,
                // which keeps them until this returns; this returns Ok only
                // once every entry pushed here has completed, and on Err the
                // caller leaks them and the ring.
                if unsafe { sq.push(&entry) }.is_err() {
                    return Err(Stuck);
                }
            }
        }
        let mut results = vec![None; streams.len()];
        let mut done = 0;
        let timeout = types::Timespec::from(COMPLETION_WAIT);
        let args = types::SubmitArgs::new().timespec(&timeout);
        while done < streams.len() {
            match self.uring.submitter().submit_with_args(streams.len() - done, &args) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // ETIME: the wait timed out with sends still in the kernel.
                Err(_) => return Err(Stuck),
            }
            for cqe in self.uring.completion() {
                let slot = usize::try_from(cqe.user_data()).ok().and_then(|i| results.get_mut(i));
                if let Some(slot) = slot
                    && slot.is_none()
                {
                    *slot = Some(cqe.result());
                    done += 1;
                }
            }
        }
        Ok(results.into_iter().map(|r| r.unwrap_or(-EAGAIN)).collect())
    }
}

/// A TCP connection to an upstream, for hyper.
pub struct UpstreamIo(Arc<Shared>);

impl UpstreamIo {
    pub fn new(tcp: TcpStream) -> UpstreamIo {
        UpstreamIo(Arc::new(Shared { tcp, state: Mutex::new(State { may_batch: true, ..State::default() }) }))
    }
}

struct Shared {
    tcp: TcpStream,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Written by hyper, not yet handed to the kernel.
    queued: Vec<u8>,
    /// On a worker's list: `queued` goes at its next park.
    listed: bool,
    /// Whether the next write may be queued: the first of an exchange,
    /// i.e. the first since bytes were last read.
    may_batch: bool,
    /// What a full socket did not take from a batch, from `leftover_at`:
    /// written straight, before anything else.
    leftover: Vec<u8>,
    leftover_at: usize,
    /// A batch's send failed (errno), or io_uring did.
    error: Option<ErrorKind>,
    /// The task to wake when a batch fails or leaves bytes behind, and
    /// with `wake_unlisted` whenever the stream leaves the list.
    waker: Option<Waker>,
    /// A write or shutdown waits for the stream to leave the list.
    wake_unlisted: bool,
}

#[derive(Clone, Copy)]
enum ErrorKind {
    Os(i32),
    Ring,
}

impl ErrorKind {
    fn to_io(self) -> io::Error {
        match self {
            ErrorKind::Os(errno) => io::Error::from_raw_os_error(errno),
            ErrorKind::Ring => io::Error::other("io_uring failed: the request may or may not have been sent"),
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// After a batch sent `buf` (`res`: bytes sent or -errno): `true` when
    /// more was queued meanwhile and the stream stays listed.
    fn settle(&self, mut buf: Vec<u8>, res: i32) -> bool {
        let mut st = self.lock();
        let sent = usize::try_from(res).unwrap_or(0);
        if res < 0 && res != -EAGAIN {
            st.error = Some(ErrorKind::Os(-res));
        } else if sent < buf.len() {
            buf.drain(..sent);
            buf.append(&mut st.queued);
            st.leftover = buf;
            st.leftover_at = 0;
        } else if !st.queued.is_empty() {
            return true;
        } else if buf.capacity() <= KEEP_CAPACITY {
            buf.clear();
            st.queued = buf;
        }
        st.listed = false;
        // A reader waits for the answer, which comes by itself if all was
        // sent: it is woken only if there is more to write.
        if st.wake_unlisted || st.error.is_some() || !st.leftover.is_empty() {
            st.wake_unlisted = false;
            if let Some(w) = st.waker.take() {
                w.wake();
            }
        }
        false
    }

    /// Off the list after a failed ring: with `error`, the stream fails;
    /// without, what was queued is written the usual way.
    fn unlist(&self, error: Option<ErrorKind>) {
        let mut st = self.lock();
        match error {
            Some(e) => st.error = Some(e),
            None => {
                let mut queued = std::mem::take(&mut st.queued);
                st.leftover.append(&mut queued);
            }
        }
        st.listed = false;
        st.wake_unlisted = false;
        if let Some(w) = st.waker.take() {
            w.wake();
        }
    }

    /// A batch's error, then what it left: Ready once nothing is left.
    fn poll_leftover(&self, st: &mut State, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = st.error {
            return Poll::Ready(Err(e.to_io()));
        }
        while st.leftover_at < st.leftover.len() {
            match self.tcp.try_write(&st.leftover[st.leftover_at..]) {
                Ok(n) => st.leftover_at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.tcp.poll_write_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        if !st.leftover.is_empty() {
            st.leftover = Vec::new();
            st.leftover_at = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// Waits until the stream leaves the list.
    fn wait_unlisted(st: &mut State, cx: &Context<'_>) -> Poll<()> {
        if !st.listed {
            return Poll::Ready(());
        }
        st.wake_unlisted = true;
        Shared::register(st, cx);
        Poll::Pending
    }

    fn register(st: &mut State, cx: &Context<'_>) {
        match &st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.waker = Some(cx.waker().clone()),
        }
    }

    fn poll_write_bufs(self: &Arc<Self>, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        {
            let mut st = self.lock();
            ready!(self.poll_leftover(&mut st, cx))?;
            if st.listed {
                if st.queued.len() + len <= BATCH_MAX {
                    bufs.iter().for_each(|b| st.queued.extend_from_slice(b));
                    return Poll::Ready(Ok(len));
                }
                ready!(Shared::wait_unlisted(&mut st, cx));
            }
            if st.may_batch && len <= BATCH_MAX && queue(self, &mut st, bufs) {
                return Poll::Ready(Ok(len));
            }
        }
        loop {
            match self.tcp.try_write_vectored(bufs) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.tcp.poll_write_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// Lists `bufs` on this thread's ring, if it has one.
fn queue(shared: &Arc<Shared>, st: &mut State, bufs: &[IoSlice<'_>]) -> bool {
    RING.with(|r| {
        let Ring::Ready(batch) = &mut *r.borrow_mut() else {
            return false;
        };
        // The list holds the stream itself: its socket stays open until
        // the batch has gone, even if hyper drops the connection first.
        batch.pending.push(Arc::clone(shared));
        st.listed = true;
        st.may_batch = false;
        bufs.iter().for_each(|b| st.queued.extend_from_slice(b));
        true
    })
}

impl AsyncRead for UpstreamIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let s = &*self.0;
        {
            let mut st = s.lock();
            // Whatever a batch left is pushed on here too: hyper may be
            // waiting only for the answer. An upstream that answers early
            // is read all the same.
            if let Poll::Ready(Err(e)) = s.poll_leftover(&mut st, cx) {
                return Poll::Ready(Err(e));
            }
            // Woken if the batch fails or leaves bytes behind.
            if st.listed {
                Shared::register(&mut st, cx);
            }
        }
        loop {
            match s.tcp.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    if n > 0 {
                        s.lock().may_batch = true;
                    }
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(s.tcp.poll_read_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.0.poll_write_bufs(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        self.0.poll_write_bufs(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Queued bytes go when the worker parks, which it does before it
    /// waits for anything: nothing to do for them here.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let s = &*self.0;
        let mut st = s.lock();
        s.poll_leftover(&mut st, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let s = &*self.0;
        {
            let mut st = s.lock();
            ready!(s.poll_leftover(&mut st, cx))?;
            ready!(Shared::wait_unlisted(&mut st, cx));
            ready!(s.poll_leftover(&mut st, cx))?;
        }
        Poll::Ready(socket2::SockRef::from(&s.tcp).shutdown(std::net::Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Runs `f` on a worker of authgate's runtime, after the worker has
    /// parked once (and so has its ring).
    fn on_worker<F: Future<Output = ()> + Send + 'static>(f: F) {
        let rt = runtime(true).expect("runtime");
        rt.block_on(async {
            rt.spawn(async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                f.await;
            })
            .await
            .expect("task");
        });
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (client, server)
    }

    #[test]
    fn a_batched_write_reaches_the_peer_in_one_send() {
        on_worker(async {
            if refused() {
                eprintln!("SKIPPED: io_uring is not available here");
                return;
            }
            let (client, mut server) = pair().await;
            let mut io = UpstreamIo::new(client);
            let before = batched_writes();
            io.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
            io.flush().await.expect("flush");
            let mut got = [0u8; 18];
            server.read_exact(&mut got).await.expect("read");
            assert_eq!(&got, b"GET / HTTP/1.1\r\n\r\n");
            assert!(batched_writes() > before, "the write did not go through the ring");
        });
    }

    /// A send the kernel cannot take (the socket is full) returns at once
    /// instead of blocking the worker, and its bytes go after what was
    /// already in the socket, none lost.
    #[test]
    fn a_full_socket_neither_blocks_the_worker_nor_loses_bytes() {
        on_worker(async {
            if refused() {
                eprintln!("SKIPPED: io_uring is not available here");
                return;
            }
            let (client, mut server) = pair().await;
            // Fill the socket while nobody reads.
            let std = client.into_std().expect("std");
            let mut filled = 0usize;
            let chunk = vec![b'x'; 64 * 1024];
            loop {
                match (&std).write(&chunk) {
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("fill: {e}"),
                }
            }
            let client = TcpStream::from_std(std).expect("tokio");
            let mut io = UpstreamIo::new(client);
            let before = batched_writes();
            io.write_all(b"ping").await.expect("queued");
            // The park sends it; the socket is full, so it comes back.
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(batched_writes() > before, "the write did not go through the ring");
            let reader = tokio::spawn(async move {
                let mut all = Vec::new();
                server.read_to_end(&mut all).await.expect("read");
                all
            });
            io.flush().await.expect("flush writes what the batch left");
            io.shutdown().await.expect("shutdown");
            drop(io);
            let all = reader.await.expect("reader");
            assert_eq!(all.len(), filled + 4);
            assert!(all[..filled].iter().all(|&b| b == b'x'));
            assert_eq!(&all[filled..], b"ping");
        });
    }

    /// hyper waits for the answer once the request is written: a reader
    /// must be woken to push on what a full socket did not take, or the
    /// request never arrives whole and the answer never comes.
    #[test]
    fn a_reader_pushes_on_what_a_batch_left() {
        on_worker(async {
            if refused() {
                eprintln!("SKIPPED: io_uring is not available here");
                return;
            }
            let (client, mut server) = pair().await;
            let std = client.into_std().expect("std");
            let mut filled = 0usize;
            let chunk = vec![b'x'; 64 * 1024];
            while let Ok(n) = (&std).write(&chunk) {
                filled += n;
            }
            let mut io = UpstreamIo::new(TcpStream::from_std(std).expect("tokio"));
            io.write_all(b"ping").await.expect("queued");
            let upstream = tokio::spawn(async move {
                // Reads only once the client waits for its answer.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let mut all = vec![0u8; filled + 4];
                server.read_exact(&mut all).await.expect("read");
                assert_eq!(&all[filled..], b"ping");
                server.write_all(b"pong").await.expect("answer");
            });
            let mut answer = [0u8; 4];
            tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut answer))
                .await
                .expect("the rest of the request was never written")
                .expect("read");
            assert_eq!(&answer, b"pong");
            upstream.await.expect("upstream");
        });
    }
}
