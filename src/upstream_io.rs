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
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use io_uring::{IoUring, opcode, types};
use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
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
/// A batch waits at most about this long for its worker to run out of
/// work (`tick`).
const STALE: Duration = Duration::from_millis(2);
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
    /// When the first of them was queued.
    since: Option<Instant>,
    /// `tick` calls since the clock was last read.
    ticks: u32,
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
        let Ok(mut ring) = r.try_borrow_mut() else {
            return;
        };
        match &mut *ring {
            Ring::Ready(batch) => {
                if !batch.pending.is_empty() && batch.flush().is_err() {
                    // What the kernel may still use was leaked in `flush`;
                    // closing the ring is safe.
                    *ring = Ring::Off;
                }
            }
            Ring::Untried => *ring = setup(),
            Ring::Off => {}
        }
    });
}

/// Sends this worker's batch if it has waited longer than `STALE`: a worker
/// that never runs out of work (a flood of handshakes, say) never parks.
/// Called for each read of a client connection and before each write is
/// queued, so a busy worker still sends within about `STALE`. The clock is
/// read on every `TICKS_PER_LOOK`th call only: a worker under load calls this
/// several times per request, and reading the clock each time was about 5
/// of the 16 clock reads a request cost.
pub fn tick() {
    RING.with(|r| {
        let Ok(mut ring) = r.try_borrow_mut() else {
            return;
        };
        if let Ring::Ready(batch) = &mut *ring
            && let Some(since) = batch.since
            && batch.look()
            && since.elapsed() >= STALE
            && batch.flush().is_err()
        {
            *ring = Ring::Off;
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
    let mut uring = match IoUring::new(ENTRIES) {
        // The bounded wait needs IORING_FEAT_EXT_ARG (Linux 5.11).
        Ok(uring) if uring.params().is_feature_ext_arg() => uring,
        Ok(_) => return refused("the kernel is older than 5.11".into()),
        Err(e) => return refused(e.to_string()),
    };
    // A sandbox may allow setting a ring up and refuse entering it.
    let nop = opcode::Nop::new().build().user_data(u64::MAX);
    // SAFETY: a no-op names no memory and no file.
    if unsafe { uring.submission().push(&nop) }.is_err() {
        return refused("cannot queue a no-op".into());
    }
    loop {
        match uring.submit_and_wait(1) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return refused(e.to_string()),
        }
    }
    uring.completion().for_each(drop);
    Ring::Ready(Box::new(Batch { uring, pending: Vec::new(), since: None, ticks: 0 }))
}

/// A worker's thread ending with writes still listed (the runtime shutting
/// down): they are handed back to be written the usual way, not stranded.
impl Drop for Batch {
    fn drop(&mut self) {
        for s in self.pending.drain(..) {
            s.unlist(None, &[]);
        }
    }
}

/// A ring's entries could not be accounted for.
struct Stuck;

/// See `tick`. A busy worker calls `tick` every few microseconds, so 16
/// calls add little to `STALE`.
const TICKS_PER_LOOK: u32 = 16;

impl Batch {
    /// Whether this `tick` should read the clock.
    fn look(&mut self) -> bool {
        self.ticks = self.ticks.wrapping_add(1);
        self.ticks.is_multiple_of(TICKS_PER_LOOK)
    }

    fn flush(&mut self) -> Result<(), Stuck> {
        self.since = None;
        while !self.pending.is_empty() {
            let n = self.pending.len().min(ENTRIES as usize);
            let streams: Vec<Arc<Shared>> = self.pending.drain(..n).collect();
            // Taken out: another thread may append meanwhile; that goes
            // straight to the socket after these (`settle`).
            let bufs: Vec<Vec<u8>> = streams.iter().map(|s| std::mem::take(&mut s.lock().queued)).collect();
            match self.send(&streams, &bufs) {
                Ok(results) => {
                    let sent = results.iter().filter(|r| **r >= 0).count();
                    SENT.fetch_add(sent as u64, Ordering::Relaxed);
                    for ((s, buf), res) in streams.into_iter().zip(bufs).zip(results) {
                        s.settle(buf, res);
                    }
                }
                Err(Failed { consumed }) => {
                    // Entries the kernel took and did not complete may
                    // still use their buffers and sockets: those are leaked,
                    // never freed, and their requests fail. The ones it
                    // never took are written the usual way.
                    for (i, (s, buf)) in streams.iter().zip(&bufs).enumerate() {
                        if i < consumed {
                            s.unlist(Some(ErrorKind::Ring), &[]);
                        } else {
                            s.unlist(None, buf);
                        }
                    }
                    std::mem::forget(bufs);
                    std::mem::forget(streams);
                    for s in self.pending.drain(..) {
                        s.unlist(None, &[]);
                    }
                    return Err(Stuck);
                }
            }
        }
        Ok(())
    }

    /// One send per stream, all in one system call; each one's result
    /// (bytes sent or -errno) once all have completed.
    fn send(&mut self, streams: &[Arc<Shared>], bufs: &[Vec<u8>]) -> Result<Vec<i32>, Failed> {
        let n = streams.len();
        {
            let mut sq = self.uring.submission();
            for (i, (s, buf)) in streams.iter().zip(bufs).enumerate() {
                // At most BATCH_MAX bytes (queued only below it).
                let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
                let entry = opcode::Send::new(types::Fd(s.tcp.as_raw_fd()), buf.as_ptr(), len)
                    .flags(MSG_DONTWAIT | MSG_NOSIGNAL)
                    .build()
                    .user_data(i as u64);
                // SAFETY: the kernel reads `buf` and uses the socket from
                // the system call that takes the entry until the entry
                // completes. Both are borrowed from the caller, which keeps
                // them (and so the socket open) until this returns. Ok comes
                // only once every entry pushed here has completed; on Err,
                // the caller leaks the buffers and streams of the entries
                // the kernel took, and the ring is closed.
                if unsafe { sq.push(&entry) }.is_err() {
                    // Cannot happen: each round starts with the queue empty
                    // and pushes at most ENTRIES.
                    return Err(Failed { consumed: i.saturating_sub(sq.len()) });
                }
            }
        }
        let mut results = vec![None; n];
        let mut done = 0;
        let deadline = Instant::now() + COMPLETION_WAIT;
        while done < n {
            let left = deadline.saturating_duration_since(Instant::now());
            let timeout = types::Timespec::from(left);
            let args = types::SubmitArgs::new().timespec(&timeout);
            let result = self.uring.submitter().submit_with_args(n - done, &args);
            for cqe in self.uring.completion() {
                let slot = usize::try_from(cqe.user_data()).ok().and_then(|i| results.get_mut(i));
                if let Some(slot) = slot
                    && slot.is_none()
                {
                    *slot = Some(cqe.result());
                    done += 1;
                }
            }
            if done == n {
                break;
            }
            match result {
                Ok(_) | Err(_) if left.is_zero() => {}
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // An error entering the ring (ETIME is the deadline).
                Err(_) => {}
            }
            // Entries still in the submission queue were never taken.
            let unconsumed = self.uring.submission().len();
            return Err(Failed { consumed: n - unconsumed });
        }
        Ok(results.into_iter().map(|r| r.unwrap_or(-EAGAIN)).collect())
    }
}

/// A round that could not be completed: the first `consumed` entries were
/// taken by the kernel (and may still be in use by it).
struct Failed {
    consumed: usize,
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

    /// After a batch sent `buf` (`res`: bytes sent or -errno). What it
    /// did not send, and anything appended meanwhile from another thread,
    /// is left to the task to write straight, in that order.
    fn settle(&self, mut buf: Vec<u8>, res: i32) {
        let mut st = self.lock();
        let sent = usize::try_from(res).unwrap_or(0).min(buf.len());
        if res < 0 && res != -EAGAIN {
            st.error = Some(ErrorKind::Os(-res));
        } else if sent < buf.len() || !st.queued.is_empty() {
            buf.drain(..sent);
            buf.append(&mut st.queued);
            st.leftover = buf;
            st.leftover_at = 0;
        } else if buf.capacity() <= KEEP_CAPACITY {
            buf.clear();
            st.queued = buf;
        }
        st.listed = false;
        // A reader waits for the answer, which comes by itself if all was
        // sent: the task is woken only if there is more to write.
        if st.wake_unlisted || st.error.is_some() || !st.leftover.is_empty() {
            st.wake_unlisted = false;
            if let Some(w) = st.waker.take() {
                w.wake();
            }
        }
    }

    /// Off the list after a failed round: with `error`, the stream fails;
    /// without, `unsent` and what was queued are written the usual way.
    fn unlist(&self, error: Option<ErrorKind>, unsent: &[u8]) {
        let mut st = self.lock();
        match error {
            Some(e) => st.error = Some(e),
            None => {
                let mut queued = std::mem::take(&mut st.queued);
                st.leftover.extend_from_slice(unsent);
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
        // A busy worker sends what waited too long first (no lock held).
        tick();
        {
            let mut st = self.lock();
            ready!(self.poll_leftover(&mut st, cx))?;
            if st.listed {
                if st.queued.len() + len <= BATCH_MAX {
                    bufs.iter().for_each(|b| st.queued.extend_from_slice(b));
                    Shared::register(&mut st, cx);
                    return Poll::Ready(Ok(len));
                }
                ready!(Shared::wait_unlisted(&mut st, cx));
            }
            if st.may_batch && len > 0 && len <= BATCH_MAX && queue(self, &mut st, bufs) {
                // hyper may have polled for the answer before it wrote:
                // this task is the one to wake if the batch leaves bytes.
                Shared::register(&mut st, cx);
                return Poll::Ready(Ok(len));
            }
            // The rest of this exchange goes straight too.
            st.may_batch = false;
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

/// Lists `bufs` on this thread's ring, if it has one (a worker's, set up).
fn queue(shared: &Arc<Shared>, st: &mut State, bufs: &[IoSlice<'_>]) -> bool {
    RING.try_with(|r| {
        let Ok(mut ring) = r.try_borrow_mut() else {
            return false;
        };
        let Ring::Ready(batch) = &mut *ring else {
            return false;
        };
        if batch.since.is_none() {
            batch.since = Some(Instant::now());
        }
        // The list holds the stream itself: its socket stays open until
        // the batch has gone, even if hyper drops the connection first.
        batch.pending.push(Arc::clone(shared));
        st.listed = true;
        st.may_batch = false;
        bufs.iter().for_each(|b| st.queued.extend_from_slice(b));
        true
    })
    .unwrap_or(false)
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
            // hyper hands over a fresh, uninitialised 8 KB (or larger)
            // buffer on every read; `initialize_unfilled` would zero all of
            // it for an answer of a few hundred bytes.
            let read = {
                // SAFETY: the slice is only written by recv(2), which never
                // de-initialises a byte.
                let dst: &mut [MaybeUninit<u8>] = unsafe { buf.unfilled_mut() };
                let room = dst.len();
                let mut got = 0;
                let r = s.tcp.try_io(Interest::READABLE, || {
                    got = SockRef::from(&s.tcp).recv(dst)?;
                    // A short read emptied the socket. As tokio's own
                    // `poll_read` does, the readiness is cleared now (a
                    // WouldBlock from this closure does it; an event that
                    // arrived meanwhile keeps it), so hyper's next read,
                    // made after every answer, waits for epoll instead of
                    // costing a recv(2) that returns EAGAIN.
                    if got > 0 && got < room { Err(io::ErrorKind::WouldBlock.into()) } else { Ok(got) }
                });
                match r {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
                    r => r,
                }
            };
            match read {
                Ok(n) => {
                    // SAFETY: recv(2) wrote the first `n` bytes.
                    unsafe { buf.assume_init(n) };
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
    /// parked once (and so has its ring); skipped where io_uring is refused.
    fn on_worker<F: Future<Output = ()> + Send + 'static>(f: F) {
        let rt = runtime(true).expect("runtime");
        rt.block_on(async {
            rt.spawn(async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if refused() {
                    eprintln!("SKIPPED: io_uring is not available here");
                    return;
                }
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

    /// A connection whose socket is full (nobody reads), wrapped, with the
    /// peer and the number of bytes already in the socket.
    async fn full_pair() -> (UpstreamIo, TcpStream, usize) {
        let (client, server) = pair().await;
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
        (UpstreamIo::new(TcpStream::from_std(std).expect("tokio")), server, filled)
    }

    #[test]
    fn a_batched_write_reaches_the_peer_in_one_send() {
        on_worker(async {
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
            let (mut io, mut server, filled) = full_pair().await;
            // Only a batch takes bytes while the socket is full.
            tokio::time::timeout(Duration::from_secs(1), io.write_all(b"ping"))
                .await
                .expect("the write was not queued for a batch")
                .expect("queued");
            // The park sends it; the socket is full, so it comes back.
            tokio::time::sleep(Duration::from_millis(20)).await;
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
            let (mut io, mut server, filled) = full_pair().await;
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

    /// hyper polls for the answer before it writes the request: the task
    /// that queued the write must be the one woken to push on the rest.
    #[test]
    fn a_task_that_read_before_it_wrote_pushes_on_what_a_batch_left() {
        on_worker(async {
            let (mut io, mut server, filled) = full_pair().await;
            let upstream = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let mut all = vec![0u8; filled + 4];
                server.read_exact(&mut all).await.expect("read");
                server.write_all(b"pong").await.expect("answer");
            });
            let mut answer = [0u8; 4];
            let mut wrote = false;
            let read = std::future::poll_fn(|cx| {
                let mut rb = ReadBuf::new(&mut answer);
                if let Poll::Ready(r) = Pin::new(&mut io).poll_read(cx, &mut rb) {
                    return Poll::Ready(r.map(|()| rb.filled().len()));
                }
                if !wrote {
                    match Pin::new(&mut io).poll_write(cx, b"ping") {
                        Poll::Ready(Ok(4)) => wrote = true,
                        other => panic!("the write was not queued: {other:?}"),
                    }
                }
                Poll::Pending
            });
            let n = tokio::time::timeout(Duration::from_secs(5), read).await.expect("the rest was never written").expect("read");
            assert!(n > 0 && answer[..n] == b"pong"[..n]);
            upstream.await.expect("upstream");
        });
    }

    /// A worker that never runs out of work never parks: a queued write
    /// still goes within about `STALE`, on the worker's next `tick`.
    #[test]
    fn a_worker_that_never_parks_still_sends() {
        on_worker(async {
            let (client, server) = pair().await;
            let server = server.into_std().expect("std");
            server.set_nonblocking(false).expect("blocking");
            server.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            let reader = std::thread::spawn(move || {
                let mut got = [0u8; 4];
                std::io::Read::read_exact(&mut &server, &mut got).map(|()| got)
            });
            let mut io = UpstreamIo::new(client);
            io.write_all(b"ping").await.expect("queued");
            // Busy until the peer has it: yield_now keeps the worker from
            // parking; each round is a client read's tick.
            while !reader.is_finished() {
                tick();
                tokio::task::yield_now().await;
            }
            assert_eq!(&reader.join().expect("reader").expect("the write never went"), b"ping");
        });
    }
}
