//! Test harness: a real gateway on 127.0.0.1:0 with its own certificate and
//! keys in a temp folder, a real TLS client that trusts that certificate,
//! and a real upstream HTTP server that records what it received.
#![allow(dead_code)]

pub mod idp;
pub mod redis;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub use authgate::server::Running;

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: http::HeaderMap,
    pub body_len: usize,
}

/// A real HTTP/1.1 upstream on 127.0.0.1:0.
///
/// Paths: `/slow/<ms>` answers after a delay; `/bytes/<n>` streams n bytes;
/// `/ws` accepts a WebSocket-style upgrade and echoes bytes; `/status/<code>`
/// answers that status; anything else answers 200 `upstream ok`. Every
/// request body is read to the end (and counted, not kept).
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// TCP connections accepted.
    pub conns: Arc<AtomicUsize>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let up = Upstream { addr, hits: Arc::default(), seen: Arc::default(), conns: Arc::default() };
        let state = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                state.conns.fetch_add(1, Ordering::SeqCst);
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle_upstream(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).with_upgrades().await;
                });
            }
        });
        up
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn last(&self) -> Seen {
        self.seen.lock().expect("lock").last().cloned().expect("the upstream saw no request")
    }
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn handle_upstream(state: Upstream, mut req: Request<Incoming>) -> Result<Response<UpBody>, Infallible> {
    state.hits.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_string();
    let seen = Seen {
        method: req.method().to_string(),
        path: path.clone(),
        query: req.uri().query().map(String::from),
        headers: req.headers().clone(),
        body_len: 0,
    };
    if path == "/ws" {
        state.seen.lock().expect("lock").push(seen);
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let resp = Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(Full::new(Bytes::new()).boxed())
            .expect("response");
        return Ok(resp);
    }
    // Drain the body frame by frame: counted, never held whole.
    let mut body = req.into_body();
    let mut len = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(d) = frame.data_ref() {
            len += d.len();
        }
    }
    state.seen.lock().expect("lock").push(Seen { body_len: len, ..seen });
    if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(1000))).await;
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let resp = Response::builder()
            .status(code.parse::<u16>().unwrap_or(500))
            .body(Full::new(Bytes::from("status")).boxed())
            .expect("response");
        return Ok(resp);
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        let total: usize = n.parse().unwrap_or(0);
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let stream = futures_util::stream::unfold(total, move |left| {
            let chunk = chunk.clone();
            async move {
                if left == 0 {
                    return None;
                }
                let n = left.min(chunk.len());
                Some((Ok::<_, Infallible>(Frame::data(chunk.slice(..n))), left - n))
            }
        });
        return Ok(Response::new(StreamBody::new(stream).boxed()));
    }
    let body = format!("upstream ok, body_len={len}");
    Ok(Response::builder()
        .header("x-upstream", "yes")
        .header("connection", "keep-alive")
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("response"))
}

/// `text` with `lines` added to its `[server]` table.
pub fn with_server(text: &str, lines: &str) -> String {
    text.replacen("[server]\n", &format!("[server]\n{lines}\n"), 1)
}

/// A cheap argon2id hash (tests only; the shipped hashes use the defaults).
pub fn quick_hash(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
    let params = argon2::Params::new(1024, 1, 1, None).expect("params");
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    a.hash_password(password.as_bytes(), &SaltString::generate(&mut OsRng)).expect("hash").to_string()
}

/// A gateway config with the given routes (TOML `[[routes]]` tables) and
/// extra sections, with TLS and ES256 keys generated in `dir`.
pub fn config_text(dir: &Path, extra: &str, routes: &str) -> String {
    let d = dir.display();
    let base = format!(
        r#"
[server]
listen = "127.0.0.1:0"
header_read_timeout = "2s"
upstream_timeout = "2s"
shutdown_grace = "2s"

[tls]
cert = "{d}/cert.pem"
key = "{d}/key.pem"
generate_self_signed = true
"#
    );
    let jwt = if extra.contains("[jwt]") {
        String::new()
    } else {
        format!(
            r#"
[jwt]
algorithm = "ES256"
private_key = "{d}/jwt.pem"
generate_signing_key = true
issuer = "authgate"
audience = "api"
leeway = "5s"
"#
        )
    };
    let identity = if extra.contains("[identity]") {
        String::new()
    } else {
        "\n[identity]\nclaim_headers = { roles = \"X-Auth-Roles\", email = \"X-Auth-Email\" }\n".to_string()
    };
    format!("{base}{jwt}{identity}{extra}\n{routes}")
}

/// The runtime in-process gateways run on, shared by the tests of one
/// binary: authgate's own, as `serve` builds it, so that upstream writes go
/// through io_uring batches as in production.
pub fn gateway_runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| authgate::upstream_io::runtime(true).expect("gateway runtime"))
}

pub struct Gateway {
    pub running: Option<Running>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub client: reqwest::Client,
}

impl Gateway {
    /// Starts a gateway in-process with `config_text(dir, extra, routes)`.
    pub async fn start(extra: &str, routes: &str) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = config_text(dir.path(), extra, routes);
        Gateway::start_in(dir, &text).await
    }

    /// Starts a gateway from full config text, written to `dir/config.toml`.
    pub async fn start_in(dir: tempfile::TempDir, text: &str) -> Gateway {
        let file = dir.path().join("config.toml");
        std::fs::write(&file, text).expect("write config");
        let config = authgate::config::load(&file).unwrap_or_else(|e| panic!("config: {e}"));
        let running =
            gateway_runtime().spawn(authgate::server::start(config)).await.expect("start task").unwrap_or_else(|e| panic!("start: {e:#}"));
        let addr = running.addr;
        let client = client_for(&dir.path().join("cert.pem"), false);
        Gateway { running: Some(running), addr, dir, client }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{}", self.addr.port(), path)
    }

    /// The App serving new requests now (a reload replaces it).
    pub fn app(&self) -> std::sync::Arc<authgate::app::App> {
        self.running.as_ref().expect("running").app()
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("running")
    }

    /// A token signed by the gateway's own key.
    pub fn token(&self, sub: &str, claims: serde_json::Value) -> String {
        let extra = claims.as_object().cloned().unwrap_or_default();
        self.app().signer.as_ref().expect("signer").sign(sub, &extra, Duration::from_secs(600)).expect("sign").token
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

/// A reqwest client over real TLS that trusts only the gateway's certificate.
/// `localhost` resolves to 127.0.0.1 so the name matches the certificate.
pub fn client_for(cert: &Path, http2_only: bool) -> reqwest::Client {
    let mut b = client_builder(cert);
    if http2_only {
        b = b.http2_prior_knowledge();
    }
    b.build().expect("client")
}

/// A client whose connections come from `local` (another loopback
/// address, say `127.0.0.2`): a second client address without a proxy.
pub fn client_from(cert: &Path, local: std::net::IpAddr) -> reqwest::Client {
    client_builder(cert).local_address(local).build().expect("client")
}

fn client_builder(cert: &Path) -> reqwest::ClientBuilder {
    let pem = std::fs::read(cert).expect("read cert");
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).expect("cert pem")])
        .resolve("localhost", "127.0.0.1:0".parse().expect("addr"))
        .timeout(Duration::from_secs(30))
        .no_proxy()
}

/// Reads a JSON response body, panicking with the text when it is not JSON.
pub async fn json(resp: reqwest::Response) -> serde_json::Value {
    let text = resp.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
}

/// A rustls client config trusting the gateway's certificate, for raw-byte tests.
pub fn rustls_client(cert: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert).expect("cert") {
        roots.add(c.expect("cert")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// Opens a raw TLS stream to the gateway (HTTP/1.1 unless `alpn` says otherwise).
pub async fn raw_tls(gw: &Gateway, alpn: &[&[u8]]) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(rustls_client(&gw.cert_path(), alpn));
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    connector.connect(name, tcp).await.expect("tls handshake")
}

/// Sends raw bytes over TLS and reads until the server closes or `wait` passes.
pub async fn raw_request(gw: &Gateway, bytes: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = raw_tls(gw, &[b"http/1.1"]).await;
    // The gateway, on its own runtime, may answer and close before a large
    // request is all written (431): what it answered is still read.
    if let Err(e) = s.write_all(bytes).await {
        assert!(matches!(e.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset), "write: {e}");
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Path of the built `authgate` binary, for CLI tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_authgate"))
}

/// The status code of a raw HTTP/1.1 response (0 when there is none).
pub fn status_of(raw: &str) -> u16 {
    raw.strip_prefix("HTTP/1.1 ").and_then(|r| r.get(..3)).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// The body of a raw HTTP/1.1 response (after the blank line).
pub fn body_of(raw: &str) -> &str {
    raw.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// A gateway run as the real binary (`authgate serve`), for what the
/// in-process harness cannot do, such as secrets from environment variables
/// (`std::env::set_var` is unsafe, and unsafe code is forbidden). Killed on drop.
pub struct Spawned {
    pub gw: Gateway,
    child: std::process::Child,
    /// Everything the process wrote to stderr so far, line by line.
    log: Arc<Mutex<String>>,
    /// While set, nobody reads the process's stderr: its pipe fills up,
    /// as with a log shipper that has stalled.
    pub stop_reading_log: Arc<AtomicBool>,
}

impl Spawned {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`HUP`, `TERM`) with kill(1).
    pub fn signal(&self, name: &str) {
        let ok = std::process::Command::new("kill").arg("-s").arg(name).arg(self.pid().to_string()).status().expect("run kill");
        assert!(ok.success(), "kill -s {name} failed");
    }

    /// stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }

    /// Waits until stderr holds `needle` at least `times` times; false at the deadline.
    pub fn wait_log(&self, needle: &str, times: usize, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if self.log().matches(needle).count() >= times {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Waits for the process to exit; None when it still runs at the deadline.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGKILL, no graceful shutdown (a crash); returns the folder, kept for a restart.
    pub fn kill9(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.gw.dir, tempfile::tempdir().expect("tempdir"))
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `authgate serve` with `text` written to `dir/config.toml` and the
/// given environment, and waits (with a deadline) for its listening line.
pub fn spawn_binary(dir: tempfile::TempDir, text: &str, env: &[(&str, &str)]) -> Spawned {
    spawn_binary_after(dir, text, env, None)
}

/// `spawn_binary`, with `sh -c` running `shell` first in the process that
/// then becomes authgate (`ulimit -Sn 256`, say).
pub fn spawn_binary_after(dir: tempfile::TempDir, text: &str, env: &[(&str, &str)], shell: Option<&str>) -> Spawned {
    use std::io::BufRead;
    let file = dir.path().join("config.toml");
    std::fs::write(&file, text).expect("write config");
    let mut cmd = match shell {
        None => std::process::Command::new(bin()),
        Some(first) => {
            let mut sh = std::process::Command::new("sh");
            sh.arg("-c").arg(format!("{first} && exec \"$0\" \"$@\"")).arg(bin());
            sh
        }
    };
    cmd.arg("serve").arg("--config").arg(&file).env("RUST_LOG", "info").env("NO_COLOR", "1");
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn authgate");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let full_log = Arc::new(Mutex::new(String::new()));
    let keep = full_log.clone();
    let stop_reading_log = Arc::new(AtomicBool::new(false));
    let paused = stop_reading_log.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::with_capacity(256, stderr).lines() {
            while paused.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
            let Ok(line) = line else { break };
            if let Ok(mut l) = keep.lock() {
                l.push_str(&line);
                l.push('\n');
            }
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut log = String::new();
    let addr = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            let _ = child.kill();
            panic!("authgate did not start listening; its stderr:\n{log}");
        };
        log.push_str(&line);
        log.push('\n');
        // `listen=ADDR` in text logs, `"listen":"ADDR"` in JSON ones.
        let text = line.split_whitespace().find_map(|w| w.strip_prefix("listen="));
        let json = line.split_once("\"listen\":\"").and_then(|(_, rest)| rest.split('"').next());
        if let Some(addr) = text.or(json).and_then(|a| a.parse::<SocketAddr>().ok()) {
            break addr;
        }
    };
    let client = client_for(&dir.path().join("cert.pem"), false);
    Spawned { gw: Gateway { running: None, addr, dir, client }, child, log: full_log, stop_reading_log }
}

/// Client loops over keep-alive connections (one per entry of `http2`:
/// false = HTTP/1.1, true = HTTP/2) until `stop`; each returns (answered
/// 200 with a full body, every other outcome).
pub fn traffic_loops(
    cert: &Path,
    url: &str,
    token: Option<&str>,
    http2: &[bool],
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(usize, Vec<String>)>> {
    http2
        .iter()
        .map(|h2| {
            let (client, url, token, stop) = (client_for(cert, *h2), url.to_string(), token.map(String::from), stop.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let mut req = client.get(&url);
                    if let Some(t) = &token {
                        req = req.bearer_auth(t);
                    }
                    match req.send().await {
                        Ok(r) if r.status() == 200 => match r.bytes().await {
                            Ok(_) => ok += 1,
                            Err(e) => failed.push(format!("body: {e}")),
                        },
                        Ok(r) => failed.push(format!("status {}", r.status())),
                        Err(e) => failed.push(format!("{e:?}")),
                    }
                }
                (ok, failed)
            })
        })
        .collect()
}
