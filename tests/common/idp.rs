//! A stand-in identity provider: signing keys (RS256, ES256, ...) and an
//! HTTPS server (self-signed certificate for localhost) that serves their
//! JWKS at `/jwks.json` and counts the requests it gets.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// One signing key of the IdP.
pub struct IdpKey {
    pub alg: Algorithm,
    pub kid: String,
    pub pem: Vec<u8>,
    pub jwk: Value,
    enc: EncodingKey,
}

impl IdpKey {
    pub fn generate(alg: Algorithm, kid: &str) -> IdpKey {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key.pem");
        authgate::keys::generate_private_key(alg, &path).expect("generate");
        let pem = std::fs::read(&path).expect("read key");
        let mut jwk = authgate::keys::public_key(alg, &pem).expect("public key").jwk.expect("jwk");
        jwk["kid"] = json!(kid);
        let enc = match alg {
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
            _ => EncodingKey::from_rsa_pem(&pem),
        }
        .expect("encoding key");
        IdpKey { alg, kid: kid.into(), pem, jwk, enc }
    }

    /// Signs `claims` with this key, header `alg` (default: the key's) and `kid`.
    pub fn sign_as(&self, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
        let mut h = Header::new(alg);
        h.kid = kid.map(String::from);
        jsonwebtoken::encode(&h, claims, &self.enc).expect("sign")
    }

    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(self.alg, Some(&self.kid), claims)
    }
}

pub fn jwks(keys: &[&IdpKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
}

/// Claims an IdP would put in an access token.
pub fn idp_claims(iss: &str, aud: &str, sub: &str) -> Value {
    let now = authgate::jwt::now_secs();
    json!({ "iss": iss, "aud": aud, "sub": sub, "iat": now, "exp": now + 600 })
}

/// The IdP's HTTPS JWKS endpoint.
pub struct JwksServer {
    pub addr: SocketAddr,
    pub ca: PathBuf,
    requests: Arc<AtomicUsize>,
    doc: Arc<Mutex<Value>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl JwksServer {
    pub async fn start(doc: Value, cache_control: &'static str) -> JwksServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("idp-cert.pem"), dir.path().join("idp-key.pem"));
        authgate::tls::generate_self_signed(&cert, &key, &["localhost".into(), "127.0.0.1".into()]).expect("cert");
        let tls = {
            use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
            let certs: Vec<CertificateDer<'static>> =
                CertificateDer::pem_file_iter(&cert).expect("cert").map(|c| c.expect("cert")).collect();
            let key = PrivateKeyDer::from_pem_file(&key).expect("key");
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .expect("server config");
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
            tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (requests, doc) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(doc)));
        let (r, d) = (requests.clone(), doc.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (tls, r, d) = (tls.clone(), r.clone(), d.clone());
                tokio::spawn(async move {
                    let Ok(stream) = tls.accept(tcp).await else { return };
                    let svc = service_fn(move |_req| {
                        r.fetch_add(1, Ordering::SeqCst);
                        let body = d.lock().expect("lock").to_string();
                        async move {
                            hyper::Response::builder()
                                .header("content-type", "application/json")
                                .header("cache-control", cache_control)
                                // One request per connection: stopping the server stops everything.
                                .header("connection", "close")
                                .body(Full::new(Bytes::from(body)))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        JwksServer { addr, ca: cert, requests, doc, task, _dir: dir }
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}/jwks.json", self.addr.port())
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn publish(&self, doc: Value) {
        *self.doc.lock().expect("lock") = doc;
    }

    /// Stops accepting connections (the IdP is down).
    pub fn stop(&self) {
        self.task.abort();
    }
}
