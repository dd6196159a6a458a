//! The TLS listener: accept loop bounded by `max_connections`, handshake
//! under a timeout, one span per connection, HTTP/1.1 and HTTP/2 by ALPN,
//! graceful shutdown under `shutdown_grace`. Every connection takes the
//! current TLS config and every request the current `App`, so a reload
//! applies to new requests while the ones in flight finish on the old.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use arc_swap::ArcSwap;
use http_body::Body as _;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::app::{App, ConnInfo};
use crate::body::Body;
use crate::config::{Config, ServerConfig};
use crate::conn::{Activity, ConnHold, Expired, ResponseGuard, WatchedIo};
use crate::reload::Reloader;

/// The App every new request uses; a reload swaps it.
pub type SharedApp = Arc<ArcSwap<App>>;
/// The TLS config every new connection uses; a reload swaps it.
pub type SharedTls = Arc<ArcSwap<rustls::ServerConfig>>;

/// A running gateway (in-process): its addresses, reload, and a way to stop it.
pub struct Running {
    pub addr: SocketAddr,
    /// `server.admin_listen`, as bound.
    pub admin_addr: Option<SocketAddr>,
    /// `server.http_redirect`, as bound.
    pub redirect_addr: Option<SocketAddr>,
    pub reloader: Arc<Reloader>,
    stop: watch::Sender<bool>,
    /// The TLS listener's task; None once `failed` has seen it end.
    task: Option<JoinHandle<()>>,
    side: Vec<JoinHandle<()>>,
}

impl Running {
    /// The App serving new requests now.
    pub fn app(&self) -> Arc<App> {
        self.reloader.current()
    }

    /// Re-reads the config file and everything it names (what SIGHUP does).
    pub async fn reload(&self) -> anyhow::Result<crate::reload::Reloaded> {
        self.reloader.reload().await
    }

    /// Resolves only if the TLS listener's task ends before `shutdown`,
    /// which takes a bug (a panic): the process would still answer
    /// `/healthz` and `/readyz` on the admin listener without serving
    /// anyone, so `run` ends it instead. The error says how it ended.
    pub async fn failed(&mut self) -> anyhow::Error {
        ended(&mut self.task).await
    }

    /// Stops accepting, drains connections (up to `shutdown_grace`), returns when done.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task
            && let Err(error) = task.await
        {
            tracing::error!(%error, "the TLS listener failed");
        }
        for t in self.side {
            let _ = t.await;
        }
    }
}

/// Waits for `task` to end, then takes it (a finished JoinHandle must not
/// be awaited again); never resolves when there is none.
async fn ended(task: &mut Option<JoinHandle<()>>) -> anyhow::Error {
    let Some(handle) = task.as_mut() else { return std::future::pending().await };
    let result = handle.await;
    *task = None;
    match result {
        Ok(()) => anyhow::anyhow!("the TLS listener stopped on its own"),
        Err(error) => anyhow::anyhow!("the TLS listener failed: {error}"),
    }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr} ({what}): {e}"))
}

/// Builds everything the config names and starts serving on `server.listen`
/// (and `admin_listen`, `http_redirect` when set).
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let tls = crate::tls::server_config(&config)?;
    let app = Arc::new(crate::build_app(config)?);
    app.spawn_background();
    let s = app.config.server.clone();
    let listener = bind(s.listen, "server.listen").await?;
    // Before anyone can connect through it: a connection completed before
    // the option is set waits in the backlog as an ordinary one.
    let deferred = defer_accept(&listener);
    let addr = listener.local_addr()?;
    let admin = match s.admin_listen {
        Some(a) => Some(bind(a, "server.admin_listen").await?),
        None => None,
    };
    let redirect = match s.http_redirect {
        Some(a) => Some(bind(a, "server.http_redirect").await?),
        None => None,
    };
    let shared: SharedApp = Arc::new(ArcSwap::new(app));
    let tls: SharedTls = Arc::new(ArcSwap::new(tls));
    let reloader = Arc::new(Reloader::new(shared.clone(), tls.clone()));
    let (stop, stopped) = watch::channel(false);
    let until_stopped = move || {
        let mut rx = stopped.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut side = Vec::new();
    let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
    if let Some(l) = admin {
        side.push(tokio::spawn(crate::admin::serve_admin(l, shared.clone(), until_stopped())));
    }
    let redirect_addr = redirect.as_ref().and_then(|l| l.local_addr().ok());
    if let Some(l) = redirect {
        side.push(tokio::spawn(crate::admin::serve_redirect(l, addr.port(), until_stopped())));
    }
    side.push(tokio::spawn(crate::reload::watch_files(reloader.clone(), until_stopped())));
    let task = Some(tokio::spawn(serve(listener, deferred, shared, tls, until_stopped())));
    Ok(Running { addr, admin_addr, redirect_addr, reloader, stop, task, side })
}

/// How long a connection that has sent nothing is held back from accept
/// (TCP_DEFER_ACCEPT): one SYN-ACK retransmission, as nginx's `deferred`
/// and HAProxy's `defer-accept` do. A silent client is then accepted, and
/// the time it was held back counts toward its `header_read_timeout`.
const DEFER_ACCEPT_SECS: u32 = 1;

fn http1_builder(s: &ServerConfig) -> http1::Builder {
    let mut b = http1::Builder::new();
    // Hard limits sit above the configured ones so that the pipeline answers
    // most oversized heads with its JSON 431; hyper's bare 431 is the backstop.
    b.timer(TokioTimer::new())
        // conn::Activity enforces header_read_timeout from a head's first byte.
        .header_read_timeout(None)
        .max_headers(s.max_headers * 2)
        .max_buf_size((s.max_header_bytes * 4).max(8192 * 2))
        .keep_alive(true);
    b
}

fn http2_builder(s: &ServerConfig) -> http2::Builder<TokioExecutor> {
    let mut b = http2::Builder::new(TokioExecutor::new());
    // Rapid reset (CVE-2023-44487): a client that opens and cancels streams
    // faster than they are served gets GOAWAY once 50 are pending.
    b.timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size((s.max_header_bytes * 4) as u32)
        .max_pending_accept_reset_streams(Some(50))
        .max_local_error_reset_streams(Some(256))
        .keep_alive_interval(None);
    b
}

/// HTTP/2 streams one connection may have open at once (nginx allows 128,
/// Envoy 100). Each can hold an upstream connection, so this is also what
/// one client connection can take of `max_upstream_requests`.
pub const MAX_CONCURRENT_STREAMS: u32 = 100;

/// Serves TLS connections from `listener` until `shutdown` resolves.
/// `deferred`: TCP_DEFER_ACCEPT is set on it (see `defer_accept`).
pub async fn serve(listener: TcpListener, deferred: bool, app: SharedApp, tls: SharedTls, shutdown: impl Future<Output = ()>) {
    // A changed max_connections applies after a restart (reload warns).
    let max_connections = app.load().config.server.max_connections;
    let slots = Arc::new(Semaphore::new(max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        // Past max_connections, further clients wait in the kernel's backlog.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            () = &mut shutdown => break,
        };
        let Some((tcp, peer)) = accept(&listener, &mut shutdown).await else { break };
        let _ = tcp.set_nodelay(true);
        limit_unsent(&tcp);
        let open = app.load().metrics.connection();
        let tls_config = tls.load_full();
        // Shared with an upgraded connection, which may outlive this task.
        let slot: Arc<dyn std::any::Any + Send + Sync> = Arc::new((permit, open));
        // The slot travels into the connection's service, which holds it until
        // the connection is done (or hands it on to an upgraded connection).
        // Accepted with nothing to read: TCP_DEFER_ACCEPT held it back in
        // silence (one peek; the usual connection has its ClientHello waiting).
        let held_back = deferred && nothing_to_read(&tcp);
        let task = serve_connection(tcp, ConnInfo { peer }, app.clone(), tls_config, stop_rx.clone(), slot, held_back);
        tokio::spawn(task.instrument(tracing::info_span!("conn", %peer)));
    }
    drop(listener);
    let open = max_connections - slots.available_permits();
    let grace = app.load().config.server.shutdown_grace;
    tracing::info!(connections = open, "shutting down: draining connections");
    let _ = stop_tx.send(true);
    // max_connections <= config::MAX_SLOTS, which fits a u32: every slot.
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, slots.acquire_many(all)).await.is_err() {
        tracing::warn!(?grace, "connections still open after shutdown_grace; closing them");
    }
}

/// A response body that tells the connection when hyper is done with it.
struct Tracked {
    inner: Body,
    _guard: ResponseGuard,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// One connection: TLS handshake under the header timeout, then HTTP until
/// the client leaves, a deadline passes, or shutdown asks it to finish.
///
/// HTTP/1 runs as a series of hyper sessions over the one TLS stream: when
/// the connection has been idle for a moment (`conn::PARK_AFTER`) it
/// *parks*: hyper's session ends and its buffers are freed, and the task
/// waits for the socket to become readable holding only the TLS stream. This
/// is what keeps thousands of idle keep-alive connections cheap.
///
/// The task's future is what a parked connection costs, so it is kept
/// small: a future keeps room for the largest state it passes through, and
/// the state an idle connection spends its life in is the parked one. The
/// handshake and each hyper session live on the heap only while they run,
/// and this is a function returning an `async` block rather than an `async
/// fn`, which would keep a second copy of every parameter (the TcpStream
/// among them) in the future for good.
fn serve_connection(
    tcp: TcpStream,
    conn: ConnInfo,
    app: SharedApp,
    tls_config: Arc<rustls::ServerConfig>,
    mut stop: watch::Receiver<bool>,
    slot: Arc<dyn std::any::Any + Send + Sync>,
    held_back: bool,
) -> impl Future<Output = ()> + Send + 'static {
    let (header_timeout, idle_timeout) = {
        let s = &app.load().config.server;
        (s.header_read_timeout, s.idle_timeout)
    };
    // The time a silent connection was held back by TCP_DEFER_ACCEPT counts
    // toward its handshake, as it did when connections were accepted at once.
    let handshake_time =
        if held_back { header_timeout.saturating_sub(Duration::from_secs(u64::from(DEFER_ACCEPT_SECS))) } else { header_timeout };
    let handshake = Box::pin(tokio::time::timeout(handshake_time, crate::tls_stream::accept(tcp, tls_config)));
    let hold = ConnHold { slot, activity: Activity::new(header_timeout), idle_timeout };
    async move {
        let mut tls = match handshake.await {
            Ok(Ok(tls)) => Box::new(tls),
            Ok(Err(error)) => return tracing::debug!(%error, "TLS handshake failed"),
            Err(_) => return tracing::debug!("TLS handshake timed out"),
        };
        hold.activity.handshake_done();
        loop {
            let deadlines = Deadlines { header: header_timeout, idle: hold.idle_timeout };
            tls = match Box::pin(session(tls, conn, &app, &hold, &mut stop, deadlines)).await {
                Some(tls) => tls,
                None => return,
            };
            if !tls.has_buffered() && !park(&mut tls, &hold, &app, &mut stop).await {
                return;
            }
            hold.activity.unparked();
        }
    }
}

/// One hyper session on the connection: HTTP/2 for its whole life, or
/// HTTP/1 until it parks. The TLS stream comes back when it parked; None
/// when the connection is done (the client left, it was upgraded, it failed,
/// a deadline passed, or shutdown drained it).
async fn session(
    tls: Box<crate::tls_stream::TlsStream>,
    conn: ConnInfo,
    app: &SharedApp,
    hold: &ConnHold,
    stop: &mut watch::Receiver<bool>,
    deadlines: Deadlines,
) -> Option<Box<crate::tls_stream::TlsStream>> {
    let activity = &hold.activity;
    let svc = {
        let (app, activity, hold) = (app.clone(), activity.clone(), hold.clone());
        service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            let app = app.load_full();
            let upgrade = crate::proxy::wants_upgrade(&req);
            let guard = activity.request(!upgrade && req.body().is_end_stream());
            let responding = activity.responding();
            if upgrade {
                req.extensions_mut().insert(hold.clone());
            }
            // A combinator, not an async block: hyper moves this future
            // whole, and a block would hold the handler's future twice (as
            // a capture and as what it awaits).
            futures_util::FutureExt::map(app.handle(conn, req), move |resp| {
                drop(guard);
                Ok::<_, Infallible>(resp.map(|inner| Tracked { inner, _guard: responding }))
            })
        })
    };

    // HTTP/2 only when the client asked for it by ALPN (RFC 9113, 3.2).
    if tls.alpn_protocol() == Some(b"h2") {
        activity.http2();
        let h2 = http2_builder(&app.load().config.server);
        let io = TokioIo::new(WatchedIo::new(tls, activity.clone()));
        let mut connection = Box::pin(h2.serve_connection(io, svc));
        drive(connection.as_mut(), |c| c.graceful_shutdown(), activity, stop, deadlines, false).await;
        return None;
    }

    let h1 = http1_builder(&app.load().config.server);
    let io = TokioIo::new(WatchedIo::parking(tls, activity.clone()));
    let mut connection = Box::pin(h1.serve_connection(io, svc).with_upgrades());
    if !drive(connection.as_mut(), |c| c.graceful_shutdown(), activity, stop, deadlines, true).await {
        return None;
    }
    // The session ended cleanly: the client left, the connection was
    // upgraded (hyper has the stream), or it parked. Everything of hyper's
    // is dropped here; the bytes it had read and not used go back to the
    // TLS stream, to be read first by the next session.
    let parts = Pin::into_inner(connection).into_parts()?;
    let io = parts.io.into_inner();
    if !io.is_parked() {
        return None;
    }
    let mut tls = io.into_inner();
    tls.unread(&parts.read_buf);
    Some(tls)
}

/// Waits for the client's next bytes holding only the TLS stream, whose
/// buffers are freed first. False when the connection is to close instead
/// (idle past `idle_timeout`, or shutting down), after its close_notify.
async fn park(tls: &mut crate::tls_stream::TlsStream, hold: &ConnHold, app: &SharedApp, stop: &mut watch::Receiver<bool>) -> bool {
    tls.release_buffers();
    let _parked = app.load().metrics.parked();
    // The socket's own readiness rather than `readable()`, whose future
    // carries a waiter of its own: this wait is what a parked connection
    // holds for as long as it is parked.
    let readable = {
        let mut idle = std::pin::pin!(tokio::time::sleep(hold.idle_timeout.saturating_sub(hold.activity.quiet())));
        let mut stopping = std::pin::pin!(stop.wait_for(|s| *s));
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = tls.tcp().poll_read_ready(cx) {
                return Poll::Ready(r.is_ok());
            }
            if idle.as_mut().poll(cx).is_ready() || stopping.as_mut().poll(cx).is_ready() {
                return Poll::Ready(false);
            }
            Poll::Pending
        })
        .await
    };
    if !readable {
        let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
    }
    readable
}

#[derive(Clone, Copy)]
struct Deadlines {
    header: Duration,
    idle: Duration,
}

/// Runs one hyper connection under the connection's deadlines and shutdown.
/// True when it finished cleanly on its own (for HTTP/1: the client left,
/// the connection was upgraded, or it parked); false when it failed, a
/// deadline cut it off or shutdown drained it.
///
/// The task is woken for every read and write the connection makes, and
/// most wake-ups are for it alone: the deadlines and the stop signal are
/// polled only when one of them woke the task (`Gated`), not on each of its
/// several polls per request.
async fn drive<C>(
    mut connection: Pin<&mut C>,
    graceful: impl Fn(Pin<&mut C>),
    activity: &Arc<Activity>,
    stop: &mut watch::Receiver<bool>,
    deadlines: Deadlines,
    park: bool,
) -> bool
where
    C: Future<Output = hyper::Result<()>>,
{
    let finish_gracefully = loop {
        let side = async {
            tokio::select! {
                expired = activity.clone().watchdog(deadlines.header, deadlines.idle, park) => Some(expired),
                _ = stop.wait_for(|s| *s) => None,
            }
        };
        // Unpin: it keeps the future it guards on the heap.
        let mut side = crate::gate::Gated::new(side);
        let ended = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = connection.as_mut().poll(cx) {
                return Poll::Ready(Ok(r));
            }
            Pin::new(&mut side).poll(cx).map(Err)
        })
        .await;
        match ended {
            Ok(Ok(())) => return true,
            Ok(Err(error)) => {
                tracing::debug!(%error, "connection ended with an error");
                return false;
            }
            // Polled again at once: hyper's read finds nothing and parks.
            Err(Some(Expired::Park)) => activity.park_soon(),
            Err(Some(expired)) => {
                tracing::debug!(?expired, "connection deadline passed");
                break expired == Expired::Idle;
            }
            Err(None) => break true,
        }
    };
    if finish_gracefully {
        // Lets an in-flight response finish; an idle connection closes at once.
        // A response that stops moving (its client stopped reading) is dropped
        // after idle_timeout of silence instead of holding the connection forever.
        graceful(connection.as_mut());
        // An idle deadline has already passed: without this the watchdog
        // below would fire at once, before an HTTP/2 GOAWAY went out
        // (see `Activity::closing`).
        activity.closing();
        tokio::select! {
            _ = connection.as_mut() => {}
            _ = activity.clone().watchdog(deadlines.header, deadlines.idle, false) => tracing::debug!("connection stalled while finishing; dropped"),
        }
    }
    false
}

/// Sets TCP_DEFER_ACCEPT on the TLS listener, so that a connection reaches
/// accept with its ClientHello (see `sockopt`). True when it is set.
fn defer_accept(listener: &TcpListener) -> bool {
    crate::sockopt::defer_accept(listener, DEFER_ACCEPT_SECS).unwrap_or_else(|error| {
        tracing::warn!(%error, "cannot set TCP_DEFER_ACCEPT on server.listen; connections are accepted before they send anything");
        false
    })
}

/// Whether the client has sent nothing yet (a non-blocking peek).
fn nothing_to_read(tcp: &TcpStream) -> bool {
    let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    matches!(socket2::SockRef::from(tcp).peek(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// At most this much of a response waits in the kernel unsent, per client
/// connection (TCP_NOTSENT_LOWAT).
const UNSENT_BYTES: u32 = 64 * 1024;

/// Keeps a client connection's unsent bytes in the kernel to
/// `UNSENT_BYTES`, so that a client that reads slowly keeps the response
/// moving: without it the send buffer autotunes to megabytes, the socket
/// turns writable only when half of that has drained, and a client reading
/// 50 KB/s looked stalled for longer than `idle_timeout` and was cut off
/// mid-download. With it, each 32 KB the client takes lets the next write
/// through. Small responses never come near it.
fn limit_unsent(tcp: &tokio::net::TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(error) = socket2::SockRef::from(tcp).set_tcp_notsent_lowat(UNSENT_BYTES) {
        tracing::debug!(%error, "cannot set TCP_NOTSENT_LOWAT");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (tcp, UNSENT_BYTES);
}

/// The next connection, or None once `shutdown` resolves. An accept error
/// (EMFILE and friends) never kills the listener: log, back off, go on.
pub async fn accept<F: Future<Output = ()>>(
    listener: &TcpListener,
    shutdown: &mut std::pin::Pin<&mut F>,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => return Some(c),
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = shutdown.as_mut() => return None,
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Runs the gateway until SIGTERM or Ctrl-C; SIGHUP reloads.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // Installed before anything listens: SIGHUP's default action is to exit.
    let hangups = crate::reload::on_sighup()?;
    crate::open_files::raise(config.server.max_connections);
    let mut running = start(config).await?;
    crate::banner(&running.app(), running.addr);
    if let Some(a) = running.admin_addr {
        tracing::info!(admin = %a, "admin listener (plain HTTP): /healthz /readyz /metrics");
    }
    if let Some(a) = running.redirect_addr {
        tracing::info!(redirect = %a, "http_redirect listener (plain HTTP): 308 to https");
    }
    let hup = tokio::spawn(hangups.serve(running.reloader.clone()));
    let failure = tokio::select! {
        () = shutdown_signal() => None,
        error = running.failed() => Some(error),
    };
    hup.abort();
    running.shutdown().await;
    match failure {
        None => {
            tracing::info!("stopped");
            Ok(())
        }
        // A non-zero exit for the supervisor to restart us.
        Some(error) => {
            tracing::error!(%error, "stopping: no longer serving");
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic in the serve task (a `max_connections` past tokio's
    /// semaphore limit did it) left a process whose admin listener said ok
    /// while nothing listened: it must come out as an error for `run`.
    #[tokio::test]
    async fn a_panicked_listener_task_is_an_error() {
        let mut running = Some(tokio::spawn(std::future::pending::<()>()));
        assert!(tokio::time::timeout(Duration::from_millis(20), ended(&mut running)).await.is_err(), "a serving listener is no error");
        let mut task = Some(tokio::spawn(async { panic!("a semaphore may not have more than MAX_PERMITS permits") }));
        let error = ended(&mut task).await;
        assert!(format!("{error:#}").contains("the TLS listener failed"), "{error:#}");
        assert!(task.is_none(), "taken: shutdown must not await it again");
    }
}
