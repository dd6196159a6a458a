//! The TLS listener: ALPN h2 and http/1.1, TLS 1.2 and 1.3 (and nothing
//! older), the generated development certificate, plain HTTP refused; and
//! the TLS stream itself (src/tls_stream.rs): key updates, close_notify,
//! forged records.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROUTES: &str = "[[routes]]\npath = \"/\"\nupstream = \"echo\"\nauth = \"public\"\n";

#[tokio::test]
async fn alpn_negotiates_h2_and_http11() {
    let gw = Gateway::start("", ROUTES).await;
    let h2 = raw_tls(&gw, &[b"h2"]).await;
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let h1 = raw_tls(&gw, &[b"http/1.1"]).await;
    assert_eq!(h1.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    // A client that prefers h2 gets h2.
    let both = raw_tls(&gw, &[b"h2", b"http/1.1"]).await;
    assert_eq!(both.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    gw.stop().await;
}

#[tokio::test]
async fn requests_work_over_http2_and_http11() {
    let gw = Gateway::start("", ROUTES).await;
    let h2 = client_for(&gw.cert_path(), true);
    let r = h2.get(gw.url("/x")).send().await.expect("h2 request");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);

    let pem = std::fs::read(gw.cert_path()).expect("cert");
    let h1 = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).expect("pem")])
        .http1_only()
        .no_proxy()
        .build()
        .expect("client");
    let r = h1.get(gw.url("/x")).send().await.expect("http/1.1 request");
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(r.status(), 200);
    gw.stop().await;
}

async fn connect_with(gw: &Gateway, version: &'static rustls::SupportedProtocolVersion) -> Result<rustls::ProtocolVersion, std::io::Error> {
    use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(gw.cert_path()).expect("cert") {
        roots.add(c.expect("cert")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .expect("version")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.expect("connect");
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(ServerName::try_from("localhost").expect("name"), tcp).await?;
    let v = s.get_ref().1.protocol_version().expect("negotiated");
    // The connection is usable, not just established.
    s.write_all(b"GET /v HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.ok();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&out));
    Ok(v)
}

#[tokio::test]
async fn tls12_only_and_tls13_only_clients_both_connect() {
    let gw = Gateway::start("", ROUTES).await;
    assert_eq!(connect_with(&gw, &rustls::version::TLS12).await.expect("TLS 1.2"), rustls::ProtocolVersion::TLSv1_2);
    assert_eq!(connect_with(&gw, &rustls::version::TLS13).await.expect("TLS 1.3"), rustls::ProtocolVersion::TLSv1_3);
    gw.stop().await;
}

/// A hand-written TLS 1.1 ClientHello (rustls cannot speak 1.1): the server
/// must answer with an alert or close, never a ServerHello.
#[tokio::test]
async fn tls11_client_hello_is_refused() {
    let gw = Gateway::start("", ROUTES).await;
    // ClientHello, legacy_version 3.2 (TLS 1.1), two CBC suites, no extensions.
    let mut hello = vec![0x03, 0x02];
    hello.extend_from_slice(&[0x11; 32]); // random
    hello.push(0); // session id
    hello.extend_from_slice(&[0x00, 0x04, 0x00, 0x2f, 0x00, 0x35]); // suites
    hello.extend_from_slice(&[0x01, 0x00]); // compression: null
    let mut hs = vec![0x01, 0x00, (hello.len() >> 8) as u8, hello.len() as u8];
    hs.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x02, (hs.len() >> 8) as u8, hs.len() as u8];
    record.extend_from_slice(&hs);

    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.expect("connect");
    tcp.write_all(&record).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    // A ServerHello would be a handshake record (0x16); an alert is 0x15.
    assert_ne!(out.first(), Some(&0x16), "the server went on with a TLS 1.1 handshake: {out:?}");
    gw.stop().await;
}

#[tokio::test]
async fn generate_self_signed_creates_cert_and_key() {
    let gw = Gateway::start("", ROUTES).await;
    let cert = std::fs::read_to_string(gw.dir.path().join("cert.pem")).expect("cert created");
    let key = std::fs::read_to_string(gw.dir.path().join("key.pem")).expect("key created");
    assert!(cert.contains("BEGIN CERTIFICATE"));
    assert!(key.contains("PRIVATE KEY"));
    // And the JWT signing key (jwt.generate_signing_key).
    let jwt = std::fs::read_to_string(gw.dir.path().join("jwt.pem")).expect("signing key created");
    assert!(jwt.contains("BEGIN PRIVATE KEY"));
    // The harness client trusts only that certificate, for the name localhost.
    assert_eq!(gw.client.get(gw.url("/")).send().await.expect("send").status(), 200);
    gw.stop().await;
}

#[tokio::test]
async fn missing_cert_without_generation_is_a_config_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), "", ROUTES).replace("generate_self_signed = true", "generate_self_signed = false");
    let file = dir.path().join("config.toml");
    std::fs::write(&file, text).expect("write");
    let config = authgate::config::load(&file).expect("config");
    let err = authgate::server::start(config).await.err().expect("refused without a certificate");
    assert!(format!("{err:#}").contains("tls.cert"), "{err:#}");
}

#[tokio::test]
async fn plain_http_to_the_tls_port_gets_no_200() {
    let gw = Gateway::start("", ROUTES).await;
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(!text.contains("200"), "plain HTTP answered: {text}");
    assert!(!text.contains("upstream") && !text.contains("\"path\""), "plain HTTP was served: {text}");
    gw.stop().await;
}

/// The server's suite order, not the client's: a client that lists
/// AES-256-GCM first (OpenSSL's default order) gets AES-128-GCM; a client
/// that offers only ChaCha20 still gets it; TLS 1.2 follows the same order.
#[tokio::test]
async fn the_server_picks_aes_128_gcm_first_and_honours_what_a_client_can_do() {
    use rustls::crypto::aws_lc_rs::cipher_suite::*;
    use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
    let gw = Gateway::start("", ROUTES).await;
    let negotiate = |suites: Vec<rustls::SupportedCipherSuite>, v: &'static rustls::SupportedProtocolVersion| {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(gw.cert_path()).expect("cert") {
            roots.add(c.expect("cert")).expect("add root");
        }
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider.cipher_suites = suites;
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[v])
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let addr = gw.addr;
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let name = ServerName::try_from("localhost").expect("name");
            let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await.expect("handshake");
            tls.get_ref().1.negotiated_cipher_suite().expect("suite").suite()
        }
    };
    let openssl_order = vec![TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256, TLS13_AES_128_GCM_SHA256];
    assert_eq!(negotiate(openssl_order, &rustls::version::TLS13).await, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    assert_eq!(
        negotiate(vec![TLS13_CHACHA20_POLY1305_SHA256], &rustls::version::TLS13).await,
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
    );
    let tls12 = vec![TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256];
    assert_eq!(negotiate(tls12, &rustls::version::TLS12).await, rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256);
    gw.stop().await;
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// One keep-alive GET on `s`; the status and whether the response was whole.
async fn get(s: &mut Tls) -> u16 {
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await.expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await.expect("answered in time").expect("read");
        assert!(n > 0, "closed before a response");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().expect("length")))
                .expect("a content-length");
            if body.len() >= len {
                return head[9..12].parse().expect("status");
            }
        }
    }
}

/// What the server still sends before it closes `s` (within 3 s), or the
/// error the close came with.
async fn until_closed(s: &mut Tls) -> std::io::Result<Vec<u8>> {
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest)).await.expect("the server closed in time")?;
    Ok(rest)
}

/// A gateway, and an HTTP/1.1 connection to it that has had one request
/// answered 200.
async fn served_once() -> (Gateway, Tls) {
    let gw = Gateway::start("", ROUTES).await;
    let mut s = raw_tls(&gw, &[b"http/1.1"]).await;
    assert_eq!(get(&mut s).await, 200);
    (gw, s)
}

/// A TLS 1.3 client may update its traffic keys at any time (and ask the
/// server to update its own): requests before and after go through.
#[tokio::test]
async fn a_key_update_mid_connection_keeps_it_working() {
    let (gw, mut s) = served_once().await;
    s.get_mut().1.refresh_traffic_keys().expect("key update");
    assert_eq!(get(&mut s).await, 200);
    s.get_mut().1.refresh_traffic_keys().expect("key update");
    assert_eq!(get(&mut s).await, 200);
    gw.stop().await;
}

/// A client that says close_notify and stops writing sees the server close.
#[tokio::test]
async fn close_notify_from_the_client_closes_the_connection() {
    let (gw, mut s) = served_once().await;
    s.shutdown().await.expect("close_notify");
    let rest = until_closed(&mut s).await.expect("a clean close");
    assert!(rest.is_empty(), "{rest:?}");
    gw.stop().await;
}

/// A record the client's keys did not make (a forged or corrupted one)
/// fails to decrypt: the server answers with a fatal alert and closes, and
/// goes on serving others.
#[tokio::test]
async fn a_forged_record_gets_a_fatal_alert_and_a_closed_connection() {
    let (gw, mut s) = served_once().await;
    let mut forged = vec![0x17, 0x03, 0x03, 0x00, 0x30];
    forged.extend_from_slice(&[0x5a; 0x30]);
    s.get_mut().0.write_all(&forged).await.expect("write");
    let error = until_closed(&mut s).await.expect_err("the connection ended with an alert").to_string();
    assert!(error.contains("BadRecordMac"), "{error}");
    let mut other = raw_tls(&gw, &[b"http/1.1"]).await;
    assert_eq!(get(&mut other).await, 200);
    gw.stop().await;
}

/// Returning clients resume their TLS session (README: stateless session
/// tickets): the ticket each connection gets serves the next one, and the
/// ticket key survives a reload, so a reload does not send every client
/// back to a full handshake.
#[tokio::test]
async fn returning_clients_resume_their_session_even_across_a_reload() {
    let gw = Gateway::start("", ROUTES).await;
    // One client config: its in-memory session store is what a returning
    // client brings.
    let connector = tokio_rustls::TlsConnector::from(rustls_client(&gw.cert_path(), &[b"http/1.1"]));
    let mut kinds = Vec::new();
    for i in 0..4 {
        if i == 2 {
            gw.running().reload().await.expect("reload");
        }
        let tcp = tokio::net::TcpStream::connect(gw.addr).await.expect("connect");
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        let mut s = connector.connect(name, tcp).await.expect("tls handshake");
        // The ticket follows the handshake: read the answer to get it.
        s.write_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.expect("write");
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await.expect("read");
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
        kinds.push(s.get_ref().1.handshake_kind());
    }
    use rustls::HandshakeKind::{Full, Resumed};
    assert_eq!(kinds, [Some(Full), Some(Resumed), Some(Resumed), Some(Resumed)]);
    gw.stop().await;
}

/// TCP_DEFER_ACCEPT on the listener: a client that connects and says
/// nothing is not accepted, so it holds no connection slot, while one that
/// starts a TLS handshake is served at once. The silent one is accepted
/// after about a second and closed when `header_read_timeout` (2 s here)
/// has passed since it connected, as before the deferral: held back, not
/// left hanging, and given no extra second.
#[tokio::test]
async fn a_connection_that_sends_nothing_is_not_accepted_until_it_speaks() {
    let gw = Gateway::start("", ROUTES).await;
    let open = || gw.app().metrics.open_connections.get();
    let started = std::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(gw.addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(open(), 0, "a connection that has sent nothing was accepted");
    let mut speaking = raw_tls(&gw, &[b"http/1.1"]).await;
    assert_eq!(open(), 1, "the connection that began a handshake should be the only one accepted");
    assert_eq!(get(&mut speaking).await, 200);
    drop(speaking);

    let mut buf = [0u8; 16];
    let end = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
        .await
        .expect("the silent connection was neither accepted and timed out nor closed within 10 s");
    assert!(matches!(end, Ok(0) | Err(_)), "the silent connection got bytes: {end:?}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1900), "closed after {took:?}, before header_read_timeout had passed");
    assert!(took < Duration::from_millis(2600), "closed after {took:?}: the second it was held back was added to header_read_timeout");
    gw.stop().await;
}
