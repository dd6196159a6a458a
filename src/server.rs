//! The TLS listener: accept loop bounded by `max_connections`, handshake
//! under a timeout, one span per connection, HTTP/1.1 and HTTP/2 by ALPN,
//! graceful shutdown under `shutdown_grace`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::app::{App, ConnInfo};
use crate::config::{Config, ServerConfig};
use crate::conn::{Activity, Expired, WatchedIo};

/// A running gateway (in-process): its address and a way to stop it.
pub struct Running {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops accepting, drains connections (up to `shutdown_grace`), returns when done.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Builds everything the config names and starts serving on `server.listen`.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let tls = crate::tls::server_config(&config)?;
    let app = Arc::new(crate::build_app(config)?);
    app.spawn_background();
    let listener = TcpListener::bind(app.config.server.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", app.config.server.listen))?;
    let addr = listener.local_addr()?;
    let (stop, mut stopped) = watch::channel(false);
    let shutdown = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    let task = tokio::spawn(serve(listener, app.clone(), TlsAcceptor::from(tls), shutdown));
    Ok(Running { addr, app, stop, task })
}

fn http_builder(s: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    // Hard limits sit above the configured ones so that the pipeline answers
    // most oversized heads with its JSON 431; hyper's bare 431 is the backstop.
    b.http1()
        .timer(TokioTimer::new())
        // conn::Activity enforces header_read_timeout from a head's first byte.
        .header_read_timeout(None)
        .max_headers(s.max_headers * 2)
        .max_buf_size((s.max_header_bytes * 4).max(8192 * 2))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(250)
        .max_header_list_size((s.max_header_bytes * 4) as u32)
        .max_pending_accept_reset_streams(Some(50))
        .max_local_error_reset_streams(Some(256))
        .keep_alive_interval(None);
    b
}

/// Serves TLS connections from `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, app: Arc<App>, acceptor: TlsAcceptor, shutdown: impl Future<Output = ()>) {
    let s = app.config.server.clone();
    let builder = Arc::new(http_builder(&s));
    let slots = Arc::new(Semaphore::new(s.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        // Past max_connections, further clients wait in the kernel's backlog.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(error) => {
                    // EMFILE and friends: never let an accept error kill the listener.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let task = serve_connection(tcp, ConnInfo { peer }, app.clone(), acceptor.clone(), builder.clone(), stop_rx.clone());
        tokio::spawn(
            async move {
                let _permit = permit;
                task.await;
            }
            .instrument(tracing::info_span!("conn", %peer)),
        );
    }
    drop(listener);
    let open = s.max_connections - slots.available_permits();
    tracing::info!(connections = open, "shutting down: draining connections");
    let _ = stop_tx.send(true);
    let all = u32::try_from(s.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(s.shutdown_grace, slots.acquire_many(all)).await.is_err() {
        tracing::warn!(grace = ?s.shutdown_grace, "connections still open after shutdown_grace; closing them");
    }
}

/// One connection: TLS handshake under the header timeout, then HTTP until
/// the client leaves, a deadline passes, or shutdown asks it to finish.
async fn serve_connection(
    tcp: tokio::net::TcpStream,
    conn: ConnInfo,
    app: Arc<App>,
    acceptor: TlsAcceptor,
    builder: Arc<auto::Builder<TokioExecutor>>,
    mut stop: watch::Receiver<bool>,
) {
    let (header_timeout, idle_timeout) = (app.config.server.header_read_timeout, app.config.server.idle_timeout);
    let tls = match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => return tracing::debug!(%error, "TLS handshake failed"),
        Err(_) => return tracing::debug!("TLS handshake timed out"),
    };
    let activity = Activity::new();
    let io = TokioIo::new(WatchedIo::new(tls, activity.clone()));
    let svc_activity = activity.clone();
    let svc = service_fn(move |req| {
        let app = app.clone();
        let guard = svc_activity.request();
        async move {
            let resp = app.handle(conn, req).await;
            drop(guard);
            Ok::<_, Infallible>(resp)
        }
    });
    let connection = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(connection);
    let finish_gracefully = tokio::select! {
        r = connection.as_mut() => {
            if let Err(error) = r {
                tracing::debug!(%error, "connection ended with an error");
            }
            return;
        }
        expired = activity.watchdog(header_timeout, idle_timeout) => {
            tracing::debug!(?expired, "connection deadline passed");
            expired == Expired::Idle
        }
        _ = stop.wait_for(|s| *s) => true,
    };
    if finish_gracefully {
        // Lets an in-flight response finish; an idle connection closes at once.
        connection.as_mut().graceful_shutdown();
        let _ = connection.await;
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

/// Runs the gateway until a shutdown signal.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let tls = crate::tls::server_config(&config)?;
    let app = Arc::new(crate::build_app(config)?);
    app.spawn_background();
    let listen = app.config.server.listen;
    let listener = TcpListener::bind(listen).await.map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    crate::banner(&app, listener.local_addr()?);
    serve(listener, app, TlsAcceptor::from(tls), shutdown_signal()).await;
    Ok(())
}
