//! The plain-HTTP side listeners: the admin listener (`/healthz`,
//! `/readyz`, `/metrics`) and the `http_redirect` listener (308 to https).
//! Both are HTTP/1.1 only, with short timeouts, and never see a token.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::body::{self, Body};
use crate::server::SharedApp;

fn text(status: StatusCode, content_type: &'static str, s: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(body::full(s));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn admin(app: SharedApp, req: Request<Incoming>) -> Response<Body> {
    let app = app.load_full();
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => match app.ready().await {
            Ok(()) => text(StatusCode::OK, "text/plain", "ready\n"),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("not ready: {why}\n")),
        },
        "/metrics" => text(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", app.metrics.encode()),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// `http://host[:port]/path?q` -> 308 `https://host[:tls_port]/path?q`.
fn redirect(tls_port: u16, req: Request<Incoming>) -> Response<Body> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
        .map(|a| a.host().to_string());
    let Some(host) = host else {
        return text(StatusCode::BAD_REQUEST, "text/plain", "a Host header is required\n");
    };
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = if tls_port == 443 { format!("https://{host}{pq}") } else { format!("https://{host}:{tls_port}{pq}") };
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            let mut r = text(StatusCode::PERMANENT_REDIRECT, "text/plain", "use https\n");
            r.headers_mut().insert(header::LOCATION, v);
            r
        }
        Err(_) => text(StatusCode::BAD_REQUEST, "text/plain", "bad request target\n"),
    }
}

/// Serves a small plain-HTTP/1.1 listener until `shutdown` resolves.
async fn serve_plain<F, Fut>(listener: TcpListener, handler: F, shutdown: impl Future<Output = ()>)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    tokio::pin!(shutdown);
    loop {
        let Some((tcp, _)) = crate::server::accept(&listener, &mut shutdown).await else { return };
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(tcp), svc);
            let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
        });
    }
}

pub async fn serve_admin(listener: TcpListener, app: SharedApp, shutdown: impl Future<Output = ()>) {
    serve_plain(listener, move |req| admin(app.clone(), req), shutdown).await
}

pub async fn serve_redirect(listener: TcpListener, tls_port: u16, shutdown: impl Future<Output = ()>) {
    serve_plain(listener, move |req| std::future::ready(redirect(tls_port, req)), shutdown).await
}
