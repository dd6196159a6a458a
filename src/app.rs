//! Shared state and the per-request pipeline, phase by phase: check the
//! head, normalise the path, answer CORS preflights and our own endpoints,
//! match the route, strip identity headers, authenticate, rate-limit, add
//! identity, forward. The outer handler logs the access line, counts
//! metrics and turns an error into its answer.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Body as _;
use hyper::body::Incoming;

use crate::body::{self, Body};
use crate::config::{AuthMode, Config, RouteConfig, Upstream};
use crate::cookies;
use crate::cors::Cors;
use crate::error::{GatewayError, TokenError};
use crate::identity::IdentityRules;
use crate::jwt::{Identity, Signer, Verifier};
use crate::log_format::{Ip, LogPath};
use crate::login::Endpoint;
use crate::metrics::Metrics;
use crate::proxy::{self, Forwarded};
use crate::revocation::Denylist;
use crate::route_limit::Key;
use crate::routes::{Route, RouteTable, normalise_path, upstream_path};

pub const JWKS_PATH: &str = "/.well-known/jwks.json";
pub const VERIFY_PATH: &str = "/auth/verify";
static X_FORWARDED_URI: http::HeaderName = http::HeaderName::from_static("x-forwarded-uri");
static X_ORIGINAL_URI: http::HeaderName = http::HeaderName::from_static("x-original-uri");
static X_FORWARDED_METHOD: http::HeaderName = http::HeaderName::from_static("x-forwarded-method");
static X_ORIGINAL_METHOD: http::HeaderName = http::HeaderName::from_static("x-original-method");
/// Verified tokens kept per App (about 1 KB each).
pub const TOKEN_CACHE_CAPACITY: usize = 16_384;
/// The access log's tracing target: `RUST_LOG=authgate::access=off` silences it.
pub const ACCESS_LOG: &str = "authgate::access";

/// Facts about one client connection, shared by its requests.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
}

/// What the access log and the metrics need to know about one request,
/// filled in by the pipeline as it goes.
pub struct Trace {
    pub client: IpAddr,
    /// The socket's peer: what X-Forwarded-For gets appended (the client
    /// above is who that chain names, when the peer is a trusted proxy).
    pub peer: IpAddr,
    /// The normalised path (the raw one when it could not be normalised);
    /// never the query string.
    pub path: String,
    pub route: Option<Arc<String>>,
    pub identity: Option<Arc<Identity>>,
    pub upstream: Option<Duration>,
    /// A `{login.path}` grant (counted in `login_attempts`).
    pub login: bool,
}

/// Everything a request needs, built once from the config.
pub struct App {
    pub config: Config,
    pub routes: RouteTable,
    pub verifier: Verifier,
    pub signer: Option<Signer>,
    pub identity: IdentityRules,
    /// Keep-alive connections to the upstreams, one pool each.
    pub upstreams: crate::upstream::Upstreams,
    pub denylist: Arc<Denylist>,
    /// Refresh tokens and revocations; the denylist is its in-memory copy.
    pub store: Arc<dyn crate::store::Store>,
    /// `{login.path}` and its revoke endpoint, when `[login]` is configured.
    pub login: Option<crate::login::Login>,
    /// How far the denylist has read the store's revocations.
    pub revocation_cursor: std::sync::Mutex<crate::store::Cursor>,
    /// Shared with every App that replaces this one on reload.
    pub metrics: Arc<Metrics>,
    pub cors: Option<Cors>,
    /// Verified tokens, so a returning token skips the signature check.
    pub token_cache: crate::token_cache::TokenCache,
    jwks: Bytes,
    /// Warned that `/auth/verify` judged a cookie without the original
    /// method (once per App, so once per config load).
    warned_no_method: AtomicBool,
}

impl App {
    pub fn new(config: Config, keys: crate::keys::KeySet, denylist: Arc<Denylist>) -> App {
        let jwks = Bytes::from(keys.jwks().to_string());
        let signer = Signer::new(&keys, config.jwt.issuer.clone(), config.jwt.audience.clone());
        let verifier = Verifier::new(keys, config.jwt.issuer.clone(), config.jwt.audience.clone(), config.jwt.leeway);
        App {
            routes: RouteTable::new(config.routes.clone()),
            identity: IdentityRules::new(config.identity.clone()),
            upstreams: crate::upstream::Upstreams::new(
                config.routes.iter().filter_map(|r| match &r.upstream {
                    Upstream::Http { authority, .. } => Some(authority),
                    Upstream::Echo => None,
                }),
                config.server.max_upstream_requests,
            ),
            verifier,
            signer,
            denylist,
            store: Arc::new(crate::store::memory::MemoryStore::default()),
            login: None,
            revocation_cursor: Default::default(),
            metrics: Arc::new(Metrics::new()),
            cors: config.cors.as_ref().map(Cors::new),
            token_cache: crate::token_cache::TokenCache::new(TOKEN_CACHE_CAPACITY),
            jwks,
            warned_no_method: AtomicBool::new(false),
            config,
        }
    }

    /// Starts the background upkeep (denylist sync, pruning). Needs a
    /// runtime. The tasks hold the App weakly: they end once a reload has
    /// replaced it and its last request is done.
    pub fn spawn_background(self: &Arc<Self>) {
        tokio::spawn(crate::store::maintain(Arc::downgrade(self)));
        self.verifier.spawn_refresh();
        if self.routes.iter().any(|r| r.limiter.is_some()) {
            tokio::spawn(prune_route_limits(Arc::downgrade(self)));
        }
        tokio::spawn(sweep_upstreams(Arc::downgrade(self)));
    }

    /// Readiness (`/readyz`): keys loaded and the store answering.
    pub async fn ready(&self) -> Result<(), String> {
        if self.verifier.keys().verify.is_empty() {
            return Err("no verification key is loaded".into());
        }
        let ping = crate::store::blocking(&self.store, |s| s.ping());
        let answer = match tokio::time::timeout(Duration::from_secs(2), ping).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "the store did not answer within 2s".into(),
        };
        self.metrics.store_errors.inc();
        Err(answer)
    }

    /// The outer handler: runs the pipeline, turns an error into its
    /// answer, adds CORS headers, counts and logs the request once.
    // Not an `async fn`, which would hold the request twice (see
    // `proxy::forward`).
    #[allow(clippy::manual_async_fn, reason = "see above")]
    pub fn handle(self: Arc<Self>, conn: ConnInfo, req: Request<Incoming>) -> impl Future<Output = Response<Body>> {
        async move {
            let started = Instant::now();
            let method = req.method().clone();
            let origin = self.cors.as_ref().and_then(|_| req.headers().get(header::ORIGIN).cloned());
            let mut t = Trace {
                client: self.client_ip(conn.peer, req.headers()),
                peer: conn.peer.ip().to_canonical(),
                path: String::new(),
                route: None,
                identity: None,
                upstream: None,
                login: false,
            };
            let result = self.pipeline(&mut t, req).await;
            self.count(&t, result.as_ref().err());
            let mut resp = match result {
                Ok(resp) => resp,
                Err(err) => {
                    match &err {
                        GatewayError::BadGateway(detail) => tracing::warn!(client = %t.client, %method, %detail, "upstream failed"),
                        GatewayError::GatewayTimeout => tracing::warn!(client = %t.client, %method, "upstream timed out"),
                        GatewayError::Unavailable(detail) => tracing::warn!(client = %t.client, %detail, "unavailable"),
                        GatewayError::Store(error) => tracing::warn!(client = %t.client, %error, "store failed"),
                        e => tracing::debug!(client = %t.client, %method, error = %e, "refused"),
                    }
                    err.into_response()
                }
            };
            if let Some(cors) = &self.cors {
                cors.decorate(origin.as_ref(), resp.headers_mut());
            }
            let route = t.route.as_ref().unwrap_or(&self.metrics.none);
            self.metrics.request(route, resp.status().as_u16());
            tracing::info!(
                target: ACCESS_LOG,
                client = %Ip(t.client),
                method = %method,
                path = %LogPath(&t.path),
                route = %route,
                status = resp.status().as_u16(),
                sub = t.identity.as_deref().map(Identity::sub),
                latency_ms = millis(started.elapsed()),
                upstream_ms = t.upstream.map(millis),
                bytes = resp.body().size_hint().exact(),
                "request"
            );
            resp
        }
    }

    // Not an `async fn` (see `handle`).
    #[allow(clippy::manual_async_fn, reason = "see above")]
    fn pipeline(&self, t: &mut Trace, mut req: Request<Incoming>) -> impl Future<Output = Result<Response<Body>, GatewayError>> {
        async move {
            self.check_head(&req)?;
            t.path = match normalise_path(req.uri().path()) {
                Ok(p) => p,
                Err(e) => {
                    t.path = req.uri().path().to_owned();
                    return Err(GatewayError::BadRequest(e.description()));
                }
            };
            let path = t.path.as_str();

            if let Some(preflight) = self.cors.as_ref().and_then(|c| c.preflight(req.method(), req.headers())) {
                return Ok(preflight);
            }
            if path == JWKS_PATH && self.config.jwt.algorithm_is_asymmetric() {
                let mut resp = json_response(StatusCode::OK, self.jwks.clone());
                // Verifiers may cache it; a rotation publishes the next key ahead (README).
                resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
                return Ok(resp);
            }
            if path == VERIFY_PATH {
                return self.forward_auth(&req, t.client);
            }
            if let Some((login, endpoint)) = self.login.as_ref().and_then(|l| Some((l, l.endpoint(path)?))) {
                t.login = endpoint == Endpoint::Token;
                return crate::login::handle(self, login, endpoint, t.client, req).await;
            }

            let route = self.routes.match_route(path).ok_or(GatewayError::NotFound)?;
            t.route = Some(route.label.clone());
            self.identity.strip(req.headers_mut());
            self.check_cookie_origin(route, Some(req.method()), req.headers(), request_host(&req))?;
            let identity = self.authenticate(route, req.headers())?;
            self.rate_limit(route, identity.as_deref(), t.client)?;
            // The token in authgate's cookies never reaches an upstream.
            cookies::strip(req.headers_mut());

            // The target's authority when it has one (HTTP/2, or an HTTP/1.1
            // absolute-form target, whose Host RFC 9112 §3.2.2 says to ignore).
            let host = req
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                .or_else(|| req.headers().get(header::HOST).cloned());
            let fwd = Forwarded { peer: t.peer, client: t.client, host: host.as_ref() };
            let upgrade = proxy::wants_upgrade(&req).then(|| req.headers().get(header::UPGRADE).cloned()).flatten();
            proxy::rewrite_headers(req.headers_mut(), &fwd, upgrade, self.config.identity.forward_authorization);
            // After the hop-by-hop removal, so that a client's `Connection:
            // X-Auth-Subject` cannot delete the verified identity.
            if let Some(id) = &identity {
                self.identity.apply(req.headers_mut(), id).map_err(GatewayError::InvalidToken)?;
                self.identity.assert(req.headers_mut(), id, self.signer.as_ref(), &route.path)?;
            }
            t.identity = identity;

            let target = upstream_path(route, path);
            match &route.upstream {
                Upstream::Echo => Ok(proxy::echo(&req, target, req.uri().query())),
                Upstream::Http { authority, base } => {
                    let mut pq = String::with_capacity(base.len() + target.len() + 1 + req.uri().query().map_or(0, str::len));
                    pq.push_str(base);
                    pq.push_str(target);
                    if let Some(q) = req.uri().query() {
                        pq.push('?');
                        pq.push_str(q);
                    }
                    // Built from the same routes as the route table: always there.
                    let pool =
                        self.upstreams.pool(authority).ok_or_else(|| GatewayError::BadGateway("no pool for this upstream".into()))?;
                    proxy::retarget(&mut req, pool.host(), &pq)?;
                    let mut sent = None;
                    let resp = proxy::forward(pool, req, &self.config.server, &mut sent).await;
                    // Not for a request that never went upstream (no slot free).
                    if let Some(sent) = sent {
                        let took = sent.elapsed();
                        t.upstream = Some(took);
                        self.metrics.upstream(&route.label, took.as_secs_f64());
                    }
                    resp
                }
            }
        }
    }

    /// Metrics that depend on how the pipeline ended.
    fn count(&self, t: &Trace, err: Option<&GatewayError>) {
        let m = &self.metrics;
        match err {
            Some(GatewayError::Unauthorized) => m.auth_failure("missing"),
            Some(GatewayError::InvalidToken(e)) => m.auth_failure(e.reason()),
            Some(GatewayError::InsufficientScope) => m.auth_failure("insufficient_scope"),
            Some(GatewayError::Forbidden(_)) => m.auth_failure("cross_origin"),
            Some(GatewayError::RateLimited { .. }) => m.rate_limited(if t.login { &m.login } else { t.route.as_ref().unwrap_or(&m.none) }),
            Some(GatewayError::Store(_)) => {
                m.store_errors.inc();
            }
            _ => {}
        }
        if t.login {
            m.login(match err {
                None => "success",
                Some(GatewayError::OAuth { error, .. }) => error,
                Some(GatewayError::RateLimited { .. }) => "rate_limited",
                Some(GatewayError::Unavailable(_) | GatewayError::Store(_)) => "unavailable",
                Some(_) => "bad_request",
            });
        }
    }

    /// `routes.rate_limit`: per verified subject, or per client IP without one.
    fn rate_limit(&self, route: &Route, identity: Option<&Identity>, client: IpAddr) -> Result<(), GatewayError> {
        let Some(limiter) = &route.limiter else { return Ok(()) };
        let key = match identity {
            Some(id) => Key::Subject(id.sub().to_owned()),
            None => Key::Ip(crate::rate_limit::limit_key(client)),
        };
        limiter.check(&key).map_err(|retry_after_secs| GatewayError::RateLimited { retry_after_secs })
    }

    fn cookie_mode(&self) -> bool {
        self.login.as_ref().is_some_and(|l| l.config.cookie)
    }

    /// CSRF defence: a state-changing request that authenticates with
    /// authgate's cookie (no `Authorization`) must come from an allowed
    /// origin or the gateway's own. A browser attaches cookies to requests
    /// other sites trigger; it does not let them set `Origin`. A WebSocket
    /// handshake is a GET, but opens a two-way channel that CORS does not
    /// guard (cross-site WebSocket hijacking): it is held to the same rule.
    /// `method` is None when `/auth/verify` was not told the original one:
    /// then an `Origin` or `Referer` that is not allowed is refused, and a
    /// request naming none passes as a same-site GET would.
    fn check_cookie_origin(
        &self,
        route: &RouteConfig,
        method: Option<&Method>,
        headers: &HeaderMap,
        host: Option<&str>,
    ) -> Result<(), GatewayError> {
        let strict = cookies::is_handshake(headers) || method.is_some_and(|m| !cookies::is_safe(m));
        if route.auth == AuthMode::Public || (!strict && method.is_some()) {
            return Ok(());
        }
        let Some((_, true)) = self.presented_token(headers)? else { return Ok(()) };
        if method.is_none() && !self.warned_no_method.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "/auth/verify got a request authenticated by cookie without X-Forwarded-Method or X-Original-Method: \
                 the CSRF rule refuses any foreign Origin or Referer, whatever the method; set X-Original-Method \
                 in the proxy (nginx: proxy_set_header X-Original-Method $request_method)"
            );
        }
        if !strict && !cookies::names_origin(headers) {
            return Ok(());
        }
        if self.cookie_origin_ok(headers, host) {
            return Ok(());
        }
        Err(GatewayError::Forbidden("a request authenticated by cookie must come from an allowed Origin"))
    }

    /// Is the request's `Origin` (or `Referer`) listed in `[cors]
    /// allowed_origins` or the gateway's own `https://{host}`?
    pub fn cookie_origin_ok(&self, headers: &HeaderMap, host: Option<&str>) -> bool {
        cookies::same_or_allowed_origin(headers, host, |o| self.cors.as_ref().is_some_and(|c| c.origin_listed(o)))
    }

    /// The token a request presents: `Authorization: Bearer`, else (with
    /// `login.cookie`) authgate's access cookie. true: it came from the cookie.
    /// Two access cookies are a malformed request, as two `Authorization`
    /// headers are: 400.
    fn presented_token<'h>(&self, headers: &'h HeaderMap) -> Result<Option<(&'h [u8], bool)>, GatewayError> {
        if let Some(t) = bearer_token(headers)? {
            return Ok(Some((t, false)));
        }
        // Only a request with no `Authorization` at all falls back to the
        // cookie: one that says how it authenticates (Basic, say) is judged
        // by that.
        if self.cookie_mode() && !headers.contains_key(header::AUTHORIZATION) {
            let cookie =
                cookies::get(headers, cookies::ACCESS).map_err(|_| GatewayError::BadRequest("more than one authgate_access cookie"))?;
            return Ok(cookie.map(|t| (t.as_bytes(), true)));
        }
        Ok(None)
    }

    /// Header section limits, answered with our JSON 431. hyper enforces a
    /// hard limit above these for heads too large to even parse.
    fn check_head(&self, req: &Request<Incoming>) -> Result<(), GatewayError> {
        let s = &self.config.server;
        if req.headers().len() > s.max_headers {
            return Err(GatewayError::HeaderTooLarge);
        }
        let uri = req.uri();
        let target = uri.scheme_str().map_or(0, |s| s.len() + 3)
            + uri.authority().map_or(0, |a| a.as_str().len())
            + uri.path_and_query().map_or(0, |pq| pq.as_str().len());
        // The head as HTTP/1.1 writes it: `METHOD target HTTP/1.1\r\n`,
        // `name: value\r\n` per field and the blank line that ends it.
        let line = req.method().as_str().len() + 1 + target + " HTTP/1.1\r\n".len();
        let size: usize = line + req.headers().iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum::<usize>() + 2;
        if size > s.max_header_bytes {
            return Err(GatewayError::HeaderTooLarge);
        }
        if req.method() == Method::CONNECT {
            return Err(GatewayError::BadRequest("CONNECT is not supported"));
        }
        // RFC 9112 §3.2: exactly one Host in HTTP/1.1; RFC 9113 §8.3.1: in
        // HTTP/2 it must name the :authority. Otherwise X-Forwarded-Host and
        // the logs would hold whichever copy their reader picked.
        let mut hosts = req.headers().get_all(header::HOST).iter();
        let (host, another) = (hosts.next(), hosts.next());
        let bad_host = another.is_some()
            || match req.version() {
                http::Version::HTTP_11 => host.is_none(),
                http::Version::HTTP_2 => {
                    matches!((host, uri.authority()), (Some(h), Some(a)) if !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()))
                }
                _ => false,
            };
        if bad_host {
            return Err(GatewayError::BadRequest("the request needs one Host header, naming its authority"));
        }
        // RFC 9110 §4.2.4, RFC 9113 §8.3.1: no userinfo in an https
        // authority, nor in Host (RFC 9110 §7.2 gives it none); either
        // would reach X-Forwarded-Host.
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) || host.is_some_and(|h| h.as_bytes().contains(&b'@')) {
            return Err(GatewayError::BadRequest("the request's authority must not hold userinfo"));
        }
        if req.version() == http::Version::HTTP_2 {
            // RFC 9113 §8.2.1: malformed. An HTTP/1.1 upstream would trim
            // the whitespace and read another value than authgate checked.
            let padded = |v: &HeaderValue| matches!(v.as_bytes(), [b' ' | b'\t', ..] | [.., b' ' | b'\t']);
            if req.headers().values().any(padded) {
                return Err(GatewayError::BadRequest("a header value begins or ends with whitespace"));
            }
            // HTTP/1.1 frames a body by one Content-Length.
            if req.headers().get_all(header::CONTENT_LENGTH).iter().nth(1).is_some() {
                return Err(GatewayError::BadRequest("the request has more than one Content-Length"));
            }
        }
        Ok(())
    }

    /// The client's address: the peer, or when the peer is a trusted proxy,
    /// the right-most X-Forwarded-For entry that is not a trusted proxy.
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let trusted = &self.config.server.trusted_proxies;
        let peer_ip = peer.ip().to_canonical();
        if !trusted.iter().any(|n| n.contains(&peer_ip)) {
            return peer_ip;
        }
        // From the right: the entries our trusted proxies appended come last;
        // anything left of an unparsable entry was written by the client.
        let entries: Vec<&str> =
            headers.get_all(&proxy::X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).collect();
        for entry in entries.iter().rev() {
            let Some(ip) = forwarded_ip(entry.trim()) else { break };
            let ip = ip.to_canonical();
            if !trusted.iter().any(|n| n.contains(&ip)) {
                return ip;
            }
        }
        peer_ip
    }

    /// Applies the route's auth mode, revocation and roles/scopes.
    pub fn authenticate(&self, route: &RouteConfig, headers: &HeaderMap) -> Result<Option<Arc<Identity>>, GatewayError> {
        if route.auth == AuthMode::Public {
            return Ok(None);
        }
        let token = match self.presented_token(headers)? {
            Some((t, _)) => t,
            None if route.auth == AuthMode::Optional => return Ok(None),
            None => return Err(GatewayError::Unauthorized),
        };
        let now = crate::jwt::clock()?;
        // Read before verifying: keys that change during the check leave
        // the entry with an older generation, never used again.
        let generation = self.verifier.key_generation();
        let identity = match self.token_cache.get(token, now, self.config.jwt.leeway.as_secs(), generation) {
            Some(id) => id,
            None => {
                // Checked as text only on a miss: a hit matched, byte for
                // byte, a token that passed verification.
                let text = std::str::from_utf8(token).map_err(|_| GatewayError::InvalidToken(TokenError::Malformed))?;
                let id = Arc::new(self.verifier.verify(text, now).map_err(GatewayError::InvalidToken)?);
                self.token_cache.insert(token, id.clone(), generation);
                id
            }
        };
        // On every request, cached or not: a revocation applies at once.
        if self.denylist.is_revoked(&identity) {
            return Err(GatewayError::InvalidToken(TokenError::Revoked));
        }
        // Issued in the future: a token that would outlive revoke-all
        // cut-offs made before it really was issued. Allowed: `leeway` and
        // one second (a token minted in the second of a revoke is issued at
        // its cut-off, now + 1), and up to the subject's cut-off itself,
        // which several revokes in one second move further ahead.
        if let Some(iat) = identity.iat()
            && iat > now.saturating_add(self.config.jwt.leeway.as_secs()).saturating_add(1)
            && self.denylist.subject_cutoff(identity.sub()).is_none_or(|cutoff| iat > cutoff)
        {
            return Err(GatewayError::InvalidToken(TokenError::NotYetValid));
        }
        if !route.roles.is_empty() && !identity.roles().any(|r| route.roles.iter().any(|want| want == r)) {
            return Err(GatewayError::InsufficientScope);
        }
        if !route.scopes.is_empty() && !identity.scopes().any(|s| route.scopes.iter().any(|want| want == s)) {
            return Err(GatewayError::InsufficientScope);
        }
        Ok(Some(identity))
    }

    /// `GET /auth/verify` for nginx `auth_request` and Traefik ForwardAuth:
    /// the route is the one of the original URI, the answer 200 with the
    /// identity headers or the proxy's own 401/403. The original method
    /// (`X-Forwarded-Method`, `X-Original-Method`) and host
    /// (`X-Forwarded-Host`) feed the cookie CSRF rule.
    fn forward_auth(&self, req: &Request<Incoming>, client: IpAddr) -> Result<Response<Body>, GatewayError> {
        let headers = req.headers();
        // Two proxies' headers that disagree mean a client set one of them
        // itself (nginx passes client headers on to the subrequest): judging
        // either could check a weaker route than the one being served.
        // Two copies of one of them, likewise: which one a proxy would pick
        // is not ours to guess. The same for the original method.
        let original = original_header(headers, &X_FORWARDED_URI, &X_ORIGINAL_URI, "X-Forwarded-Uri and X-Original-URI disagree")?;
        let path = match original {
            Some(v) => {
                let uri = v.to_str().map_err(|_| GatewayError::BadRequest("the original URI is not valid"))?;
                // A request target has no fragment (RFC 9112 §3.2): a `#`
                // here came from the client raw, and a backend given the
                // whole target may read `/public#/../admin` as `/admin`.
                if uri.contains('#') {
                    return Err(GatewayError::BadRequest("the original URI holds a '#'"));
                }
                let path = uri.split('?').next().unwrap_or("/");
                normalise_path(if path.is_empty() { "/" } else { path }).map_err(|e| GatewayError::BadRequest(e.description()))?
            }
            None => "/".to_string(),
        };
        let route = self.routes.match_route(&path).ok_or(GatewayError::NotFound)?;
        // The original method decides the cookie CSRF rule: one that is not
        // a method (`POST, GET`, what a proxy makes of two headers) or two
        // that disagree are refused, never read as this request's GET.
        // None sent: unknown, not this request's GET (nginx's subrequest is
        // a GET whatever the client sent).
        let original =
            original_header(headers, &X_FORWARDED_METHOD, &X_ORIGINAL_METHOD, "X-Forwarded-Method and X-Original-Method disagree")?;
        let method = match original {
            Some(m) => Some(
                Method::from_bytes(m.as_bytes().trim_ascii())
                    .map_err(|_| GatewayError::BadRequest("the original method is not a method"))?,
            ),
            None => None,
        };
        let host = headers.get(&proxy::X_FORWARDED_HOST).and_then(|h| h.to_str().ok()).or_else(|| request_host(req));
        self.check_cookie_origin(route, method.as_ref(), headers, host)?;
        let identity = self.authenticate(route, headers)?;
        self.rate_limit(route, identity.as_deref(), client)?;
        let mut resp = Response::new(body::empty());
        if let Some(id) = identity {
            *resp.headers_mut() = self.identity.headers_for(&id).map_err(GatewayError::InvalidToken)?;
            self.identity.assert(resp.headers_mut(), &id, self.signer.as_ref(), &route.path)?;
        }
        resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(resp)
    }
}

/// An X-Forwarded-For entry's address: a bare IP, or one with a port as
/// some proxies write it (`203.0.113.7:4711`, `[2001:db8::1]:4711`, Azure
/// Application Gateway for one), or a bracketed IPv6 address without one.
fn forwarded_ip(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| entry.strip_prefix('[')?.strip_suffix(']')?.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6))
}

/// The host the client addressed: the target's authority (HTTP/2's
/// `:authority`, an absolute-form target's), else `Host`.
pub fn request_host<B>(req: &Request<B>) -> Option<&str> {
    req.uri().authority().map(|a| a.as_str()).or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()))
}

fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// Drops replenished keys of the route rate limiters, like the login ones.
/// Closes upstream connections that sat idle too long or that the
/// upstream closed, so they do not linger until the next request.
async fn sweep_upstreams(app: std::sync::Weak<App>) {
    let mut tick = tokio::time::interval(crate::upstream::IDLE_TIMEOUT / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(app) = app.upgrade() else { return };
        app.upstreams.sweep();
    }
}

async fn prune_route_limits(app: std::sync::Weak<App>) {
    let mut tick = tokio::time::interval(crate::store::PRUNE_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(app) = app.upgrade() else { return };
        app.routes.prune_limiters();
    }
}

impl crate::config::JwtConfig {
    pub fn algorithm_is_asymmetric(&self) -> bool {
        crate::config::key_source(self.algorithm) == crate::config::KeySource::Asymmetric
    }
}

/// The value forward-auth reads from Traefik's header `a` or nginx's `b`:
/// refused when either comes twice or the two disagree, since then one of
/// them came from the client.
fn original_header<'h>(
    headers: &'h HeaderMap,
    a: &HeaderName,
    b: &HeaderName,
    disagree: &'static str,
) -> Result<Option<&'h HeaderValue>, GatewayError> {
    if headers.get_all(a).iter().nth(1).is_some() || headers.get_all(b).iter().nth(1).is_some() {
        return Err(GatewayError::BadRequest("the original URI or method is given twice"));
    }
    match (headers.get(a), headers.get(b)) {
        (Some(x), Some(y)) if x != y => Err(GatewayError::BadRequest(disagree)),
        (x, y) => Ok(x.or(y)),
    }
}

/// The token of `Authorization: Bearer <token>`. Another scheme counts as
/// no token; two Authorization headers are a malformed request.
pub fn bearer_token(headers: &HeaderMap) -> Result<Option<&[u8]>, GatewayError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(v) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(GatewayError::BadRequest("more than one Authorization header"));
    }
    // Bytes, not text: a JWT is base64url and dots, and anything else fails
    // to verify; the token cache is keyed by the bytes, so only a miss pays
    // for the UTF-8 check (see `App::authenticate`).
    let v = v.as_bytes();
    let Some(space) = v.iter().position(|&b| b == b' ') else {
        return Ok(None);
    };
    if !v[..space].eq_ignore_ascii_case(b"bearer") {
        return Ok(None);
    }
    let token = v[space + 1..].trim_ascii();
    if token.is_empty() {
        return Err(GatewayError::InvalidToken(TokenError::Malformed));
    }
    Ok(Some(token))
}

pub fn json_response(status: StatusCode, json: Bytes) -> Response<Body> {
    let mut resp = Response::new(body::full(json));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
