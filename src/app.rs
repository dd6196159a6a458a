//! Shared state and the per-request pipeline, phase by phase: check the
//! head, normalise the path, answer our own endpoints, match the route,
//! strip identity headers, authenticate, authorise, add identity, forward.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::body::{self, Body};
use crate::config::{AuthMode, Config, RouteConfig, Upstream};
use crate::error::{GatewayError, TokenError};
use crate::identity::IdentityRules;
use crate::jwt::{Identity, Signer, Verifier, now_secs};
use crate::proxy::{self, Forwarded, UpstreamClient};
use crate::revocation::Denylist;
use crate::routes::{RouteTable, normalise_path, upstream_path};

pub const JWKS_PATH: &str = "/.well-known/jwks.json";
pub const VERIFY_PATH: &str = "/auth/verify";
static X_FORWARDED_URI: http::HeaderName = http::HeaderName::from_static("x-forwarded-uri");
static X_ORIGINAL_URI: http::HeaderName = http::HeaderName::from_static("x-original-uri");

/// Facts about one client connection, shared by its requests.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
}

/// Everything a request needs, built once from the config.
pub struct App {
    pub config: Config,
    pub routes: RouteTable,
    pub verifier: Verifier,
    pub signer: Option<Signer>,
    pub identity: IdentityRules,
    pub client: UpstreamClient,
    pub denylist: Arc<Denylist>,
    /// Refresh tokens and revocations; the denylist is its in-memory copy.
    pub store: Arc<dyn crate::store::Store>,
    /// `{login.path}` and its revoke endpoint, when `[login]` is configured.
    pub login: Option<crate::login::Login>,
    /// How far the denylist has read the store's revocations.
    pub revocation_cursor: std::sync::Mutex<crate::store::Cursor>,
    jwks: Bytes,
}

impl App {
    pub fn new(config: Config, keys: crate::keys::KeySet, denylist: Arc<Denylist>) -> App {
        let jwks = Bytes::from(keys.jwks().to_string());
        let signer = Signer::new(&keys, config.jwt.issuer.clone(), config.jwt.audience.clone());
        let verifier = Verifier::new(keys, config.jwt.issuer.clone(), config.jwt.audience.clone(), config.jwt.leeway);
        App {
            routes: RouteTable::new(config.routes.clone()),
            identity: IdentityRules::new(config.identity.clone()),
            client: proxy::new_client(config.server.upstream_timeout),
            verifier,
            signer,
            denylist,
            store: Arc::new(crate::store::memory::MemoryStore::default()),
            login: None,
            revocation_cursor: Default::default(),
            jwks,
            config,
        }
    }

    /// Starts the background upkeep (denylist sync, pruning). Needs a runtime.
    pub fn spawn_background(self: &Arc<Self>) {
        tokio::spawn(crate::store::maintain(Arc::downgrade(self)));
        self.verifier.spawn_refresh();
    }

    /// The outer handler: runs the pipeline, turns an error into its answer.
    pub async fn handle(self: Arc<Self>, conn: ConnInfo, req: Request<Incoming>) -> Response<Body> {
        let method = req.method().clone();
        match self.pipeline(conn, req).await {
            Ok(resp) => resp,
            Err(err) => {
                match &err {
                    GatewayError::BadGateway(detail) => tracing::warn!(peer = %conn.peer, %method, %detail, "upstream failed"),
                    GatewayError::GatewayTimeout => tracing::warn!(peer = %conn.peer, %method, "upstream timed out"),
                    GatewayError::Unavailable(detail) => tracing::warn!(peer = %conn.peer, %detail, "unavailable"),
                    e => tracing::debug!(peer = %conn.peer, %method, error = %e, "refused"),
                }
                err.into_response()
            }
        }
    }

    async fn pipeline(&self, conn: ConnInfo, mut req: Request<Incoming>) -> Result<Response<Body>, GatewayError> {
        self.check_head(&req)?;
        let path = normalise_path(req.uri().path()).map_err(|e| GatewayError::BadRequest(e.description()))?;

        if path == JWKS_PATH && self.config.jwt.algorithm_is_asymmetric() {
            let mut resp = json_response(StatusCode::OK, self.jwks.clone());
            // Verifiers may cache it; a rotation publishes the next key ahead (README).
            resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
            return Ok(resp);
        }
        if path == VERIFY_PATH {
            return self.forward_auth(req.headers());
        }
        if let Some((login, endpoint)) = self.login.as_ref().and_then(|l| Some((l, l.endpoint(&path)?))) {
            let client = self.client_ip(conn.peer, req.headers());
            return crate::login::handle(self, login, endpoint, client, req).await;
        }

        let route = self.routes.match_route(&path).ok_or(GatewayError::NotFound)?;
        self.identity.strip(req.headers_mut());
        let identity = self.authenticate(route, req.headers())?;

        let fwd = Forwarded { peer: self.client_ip(conn.peer, req.headers()), host: None };
        let host =
            req.headers().get(header::HOST).cloned().or_else(|| req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
        let fwd = Forwarded { host: host.as_ref(), ..fwd };
        let upgrade = proxy::wants_upgrade(&req).then(|| req.headers().get(header::UPGRADE).cloned()).flatten();
        proxy::rewrite_headers(req.headers_mut(), &fwd, upgrade, self.config.identity.forward_authorization);
        // After the hop-by-hop removal, so that a client's `Connection:
        // X-Auth-Subject` cannot delete the verified identity.
        if let Some(id) = &identity {
            self.identity.apply(req.headers_mut(), id).map_err(GatewayError::InvalidToken)?;
            self.identity.assert(req.headers_mut(), id, self.signer.as_ref(), &route.path)?;
        }

        let target = upstream_path(route, &path);
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
                proxy::retarget(&mut req, authority, &pq)?;
                proxy::forward(&self.client, req, self.config.server.upstream_timeout).await
            }
        }
    }

    /// Header section limits, answered with our JSON 431. hyper enforces a
    /// hard limit above these for heads too large to even parse.
    fn check_head(&self, req: &Request<Incoming>) -> Result<(), GatewayError> {
        let s = &self.config.server;
        if req.headers().len() > s.max_headers {
            return Err(GatewayError::HeaderTooLarge);
        }
        let size: usize = req.uri().to_string().len() + req.headers().iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum::<usize>();
        if size > s.max_header_bytes {
            return Err(GatewayError::HeaderTooLarge);
        }
        if req.method() == Method::CONNECT {
            return Err(GatewayError::BadRequest("CONNECT is not supported"));
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
        let entries: Vec<IpAddr> = headers
            .get_all(&proxy::X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map_while(|s| s.trim().parse::<IpAddr>().ok())
            .collect();
        entries.into_iter().rev().find(|ip| !trusted.iter().any(|n| n.contains(ip))).unwrap_or(peer_ip)
    }

    /// Applies the route's auth mode, revocation and roles/scopes.
    pub fn authenticate(&self, route: &RouteConfig, headers: &HeaderMap) -> Result<Option<Identity>, GatewayError> {
        if route.auth == AuthMode::Public {
            return Ok(None);
        }
        let token = match bearer_token(headers)? {
            Some(t) => t,
            None if route.auth == AuthMode::Optional => return Ok(None),
            None => return Err(GatewayError::Unauthorized),
        };
        let identity = self.verifier.verify(token, now_secs()).map_err(GatewayError::InvalidToken)?;
        if self.denylist.is_revoked(&identity) {
            return Err(GatewayError::InvalidToken(TokenError::Revoked));
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
    /// identity headers or the proxy's own 401/403.
    fn forward_auth(&self, headers: &HeaderMap) -> Result<Response<Body>, GatewayError> {
        let original = headers.get(&X_FORWARDED_URI).or_else(|| headers.get(&X_ORIGINAL_URI));
        let path = match original {
            Some(v) => {
                let uri = v.to_str().map_err(|_| GatewayError::BadRequest("the original URI is not valid"))?;
                let path = uri.split(['?', '#']).next().unwrap_or("/");
                normalise_path(if path.is_empty() { "/" } else { path }).map_err(|e| GatewayError::BadRequest(e.description()))?
            }
            None => "/".to_string(),
        };
        let route = self.routes.match_route(&path).ok_or(GatewayError::NotFound)?;
        let identity = self.authenticate(route, headers)?;
        let mut resp = Response::new(body::empty());
        if let Some(id) = identity {
            *resp.headers_mut() = self.identity.headers_for(&id).map_err(GatewayError::InvalidToken)?;
            self.identity.assert(resp.headers_mut(), &id, self.signer.as_ref(), &route.path)?;
        }
        resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(resp)
    }
}

impl crate::config::JwtConfig {
    pub fn algorithm_is_asymmetric(&self) -> bool {
        crate::config::key_source(self.algorithm) == crate::config::KeySource::Asymmetric
    }
}

/// The token of `Authorization: Bearer <token>`. Another scheme counts as
/// no token; two Authorization headers are a malformed request.
pub fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, GatewayError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(v) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(GatewayError::BadRequest("more than one Authorization header"));
    }
    let v = v.to_str().map_err(|_| GatewayError::InvalidToken(TokenError::Malformed))?;
    let Some((scheme, token)) = v.split_once(' ') else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = token.trim();
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
