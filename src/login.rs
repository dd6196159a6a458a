//! The login endpoints: `POST {login.path}` (OAuth 2 password and
//! refresh_token grants, RFC 6749) and `POST {login.path}/revoke` (RFC 7009).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::app::App;
use crate::body::{self, Body};
use crate::config::LoginConfig;
use crate::cookies;
use crate::error::GatewayError;
use crate::jwt::{clock, random_id};
use crate::rate_limit::LoginLimits;
use crate::store::{self, Rotation, hash_token};
use crate::users::{User, Users};

/// Form bodies larger than this are refused (413) before parsing.
pub const MAX_FORM_BYTES: usize = 16 * 1024;
const FORM: &str = "application/x-www-form-urlencoded";

const BAD_CREDENTIALS: GatewayError = oauth("invalid_grant", "invalid username or password");
const BAD_REFRESH: GatewayError = oauth("invalid_grant", "the refresh token is invalid, expired or revoked");

const fn oauth(error: &'static str, description: &'static str) -> GatewayError {
    GatewayError::OAuth { error, description }
}

/// Login state: the users, the rate limits and the password-hashing queue.
pub struct Login {
    pub config: LoginConfig,
    pub users: Users,
    pub limits: LoginLimits,
    /// Password checks admitted, running or waiting for `hash_running`
    /// (cores × 2 + 2). When none is free a login is answered 503 at once
    /// instead of queueing without bound.
    pub hash_slots: Arc<Semaphore>,
    /// Password checks running on the blocking pool at once: one core
    /// fewer than the machine has (at least one). Each argon2 check holds
    /// a core and ~19 MiB for tens of ms; with a slot per admitted check,
    /// a login flood ran cores × 2 + 2 of them against the proxy's workers
    /// (DoS review F4: proxied throughput fell 16-fold on 2 cores).
    pub hash_running: Arc<Semaphore>,
    revoke_path: String,
}

/// Which of our endpoints a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Token,
    Revoke,
}

impl Login {
    pub fn new(config: LoginConfig, users: Users) -> Login {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Login {
            limits: LoginLimits::new(&config),
            hash_slots: Arc::new(Semaphore::new(cores * 2 + 2)),
            hash_running: Arc::new(Semaphore::new(cores.saturating_sub(1).max(1))),
            revoke_path: format!("{}/revoke", config.path),
            config,
            users,
        }
    }

    pub fn endpoint(&self, path: &str) -> Option<Endpoint> {
        if path == self.config.path {
            Some(Endpoint::Token)
        } else if path == self.revoke_path {
            Some(Endpoint::Revoke)
        } else {
            None
        }
    }
}

/// Answers `{login.path}` and `{login.path}/revoke`.
pub async fn handle(
    app: &App,
    login: &Login,
    endpoint: Endpoint,
    client: IpAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, GatewayError> {
    if req.method() != Method::POST {
        return Err(GatewayError::MethodNotAllowed("use POST"));
    }
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case(FORM) {
        return Err(oauth("invalid_request", "the body must be application/x-www-form-urlencoded"));
    }
    let jar = Jar::read(app, login, &req);
    // Login CSRF: with cookies, a grant answered to another site's form
    // would put the attacker's session into the victim's browser.
    if endpoint == Endpoint::Token && jar.foreign {
        return Err(FOREIGN_GRANT);
    }
    let body = crate::proxy::read_body_limited(req.into_body(), MAX_FORM_BYTES, app.config.server.body_timeout).await?;
    let form = parse_form(&body)?;
    match endpoint {
        Endpoint::Token => match form.get("grant_type").map(String::as_str).unwrap_or("password") {
            "password" => password_grant(app, login, client, &form).await,
            "refresh_token" => refresh_grant(app, login, &form, &jar).await,
            _ => Err(oauth("unsupported_grant_type", "grant_type must be password or refresh_token")),
        },
        Endpoint::Revoke => revoke(app, login, &form, &jar).await,
    }
}

/// authgate's cookies on a login request (`login.cookie = true`): a browser
/// cannot read them (HttpOnly), so they stand in for an absent
/// `refresh_token` or `token` parameter, from an allowed origin only. A
/// cookie sent twice (tossed by a sibling subdomain) is refused where it
/// would stand in, 400, and ignored where it would not.
struct Jar {
    access: Result<Option<String>, cookies::Repeated>,
    refresh: Result<Option<String>, cookies::Repeated>,
    origin_ok: bool,
    /// An `Origin` or `Referer` that is not allowed: a browser on another site.
    foreign: bool,
}

const CROSS_ORIGIN: GatewayError = GatewayError::Forbidden("a request authenticated by cookie must come from an allowed Origin");
const FOREIGN_GRANT: GatewayError = GatewayError::Forbidden("with login cookies, a grant from a browser must come from an allowed Origin");

impl Jar {
    fn read(app: &App, login: &Login, req: &Request<Incoming>) -> Jar {
        if !login.config.cookie {
            return Jar { access: Ok(None), refresh: Ok(None), origin_ok: false, foreign: false };
        }
        let h = req.headers();
        let origin_ok = app.cookie_origin_ok(h, crate::app::request_host(req));
        let read = |name| cookies::get(h, name).map(|v| v.map(String::from));
        Jar {
            access: read(cookies::ACCESS),
            refresh: read(cookies::REFRESH),
            origin_ok,
            // No Origin and no Referer: not a browser (curl, a native app), whose
            // cookie jar no other site can write into.
            foreign: !origin_ok && cookies::names_origin(h),
        }
    }

    fn access(&self) -> Result<Option<&str>, GatewayError> {
        self.access.as_ref().map(Option::as_deref).map_err(|_| oauth("invalid_request", "more than one authgate_access cookie"))
    }

    fn refresh(&self) -> Result<Option<&str>, GatewayError> {
        self.refresh.as_ref().map(Option::as_deref).map_err(|_| oauth("invalid_request", "more than one authgate_refresh cookie"))
    }
}

/// RFC 6749 §3.2: parameters without a value count as absent, and none may repeat.
fn parse_form(body: &[u8]) -> Result<HashMap<String, String>, GatewayError> {
    let mut form = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        if v.is_empty() {
            continue;
        }
        if form.insert(k.into_owned(), v.into_owned()).is_some() {
            return Err(oauth("invalid_request", "a parameter is repeated"));
        }
    }
    Ok(form)
}

fn required<'a>(form: &'a HashMap<String, String>, name: &str, missing: &'static str) -> Result<&'a str, GatewayError> {
    form.get(name).map(String::as_str).ok_or(oauth("invalid_request", missing))
}

async fn password_grant(app: &App, login: &Login, client: IpAddr, form: &HashMap<String, String>) -> Result<Response<Body>, GatewayError> {
    let username = required(form, "username", "the username parameter is missing")?;
    let password = required(form, "password", "the password parameter is missing")?.to_string();
    login.limits.check(&app.store, client, username).await?;
    let permit =
        login.hash_slots.clone().try_acquire_owned().map_err(|_| GatewayError::Unavailable("every password check slot is busy".into()))?;
    // Unknown users are checked against a dummy hash: same answer, same time.
    let hash = login.users.hash_for(username);
    // Waits here, on no thread and with no hash memory, for its turn.
    let running =
        login.hash_running.clone().acquire_owned().await.map_err(|_| GatewayError::Unavailable("password checks have stopped".into()))?;
    let matches = tokio::task::spawn_blocking(move || {
        let _permits = (permit, running);
        hash.verify(&password)
    })
    .await
    .map_err(|e| GatewayError::Unavailable(format!("password check failed: {e}")))?;
    let user = login.users.get(username).filter(|u| matches && !u.disabled);
    let Some(user) = user else {
        tracing::info!(%client, "login refused");
        return Err(BAD_CREDENTIALS);
    };
    let refresh = random_id(32);
    let (family, token_hash, now) = (random_id(16), hash_token(&refresh), clock()?);
    let expires = now.saturating_add(login.config.refresh_ttl.as_secs());
    let sub = user.username.clone();
    let fam = family.clone();
    store::blocking(&app.store, move |s| s.create_family(&fam, &sub, &token_hash, now, expires)).await.map_err(unavailable)?;
    let refuse = |why: &'static str| {
        let family = family.clone();
        async move {
            store::blocking(&app.store, move |s| s.revoke_family(&family)).await.map_err(unavailable)?;
            tracing::warn!(%client, sub = %user.username, "login refused: {why}");
            Err(BAD_CREDENTIALS)
        }
    };
    // On every store, not only shared ones: this request was judged against
    // the users file of the App that was current when its head arrived, and
    // a reload since (here, or in another replica) may have changed it.
    if !current_entry(app, user).await? {
        return refuse("the users file was reloaded (here or by another replica) with a different entry for this user").await;
    }
    let (access, _) = mint(app, user).await?;
    if !still_live(app, &family).await? {
        return refuse("the user's sessions were revoked while this login ran").await;
    }
    tracing::info!(%client, sub = %user.username, "login");
    Ok(token_response(app, access, &refresh))
}

/// Is the session's family still live after its access token was minted?
/// A revoke-all (`authgate revoke --sub`, another replica loading a
/// changed users file) that landed after the family was written and before
/// `mint` read the cut-off ended the family, but the token was issued at
/// its cut-off, which it would survive: refuse it. One that lands after
/// this check has a cut-off later than the token, and ends both.
async fn still_live(app: &App, family: &str) -> Result<bool, GatewayError> {
    let family = family.to_string();
    store::blocking(&app.store, move |s| s.family_live(&family)).await.map_err(unavailable)
}

/// Is the entry this request was judged by (`user`, from its App's users
/// file) the one the store last recorded? A login whose head arrived
/// before a reload still runs on the old App; replicas of a rolling update
/// hold different users files for a while. Whoever loads a change first
/// records it (`store::sync_users`). No record (a store that lost its
/// data) is no evidence either way. Checked after the session's family
/// exists, so that a change recorded meanwhile is either seen here or ends
/// that family with its cut-off.
async fn current_entry(app: &App, user: &crate::users::User) -> Result<bool, GatewayError> {
    let (name, fp) = (user.username.clone(), user.fingerprint());
    let stored = store::blocking(&app.store, move |s| s.user_fingerprint(&name)).await.map_err(unavailable)?;
    Ok(stored.is_none_or(|s| s == fp))
}

async fn refresh_grant(app: &App, login: &Login, form: &HashMap<String, String>, jar: &Jar) -> Result<Response<Body>, GatewayError> {
    let presented = match form.get("refresh_token") {
        Some(t) => t.as_str(),
        None => match jar.refresh()? {
            Some(_) if !jar.origin_ok => return Err(CROSS_ORIGIN),
            Some(t) => t,
            None => return Err(oauth("invalid_request", "the refresh_token parameter is missing")),
        },
    };
    let old = hash_token(presented);
    let refresh = random_id(32);
    let new = hash_token(&refresh);
    let now = clock()?;
    let rotation = store::blocking(&app.store, move |s| s.rotate_refresh(&old, &new, now)).await.map_err(unavailable)?;
    match rotation {
        Rotation::Rotated { sub, family, cutoff } => {
            let Some(user) = login.users.get(&sub).filter(|u| !u.disabled) else {
                store::blocking(&app.store, move |s| s.revoke_family(&family)).await.map_err(unavailable)?;
                return Err(BAD_REFRESH);
            };
            let (access, stored_cutoff) = mint(app, user).await?;
            // A revoke-all recorded after the rotation (which read the
            // store's `cutoff` with it) and before `mint` read the cut-off:
            // the token was issued at it, and would survive it. (Not the
            // family's state: a concurrent reuse of the old token revokes
            // the family too, and one of the two must still get its answer.)
            if stored_cutoff > cutoff {
                return Err(BAD_REFRESH);
            }
            Ok(token_response(app, access, &refresh))
        }
        Rotation::Reused { sub } => {
            tracing::warn!(%sub, "a used refresh token was presented again; its whole family is revoked");
            Err(BAD_REFRESH)
        }
        Rotation::Invalid => Err(BAD_REFRESH),
    }
}

/// RFC 7009: 200 for any well-formed request, known token or not. With
/// `login.cookie`, no `token` parameter revokes the cookies' tokens, and an
/// answer to an allowed origin clears both cookies.
async fn revoke(app: &App, login: &Login, form: &HashMap<String, String>, jar: &Jar) -> Result<Response<Body>, GatewayError> {
    match form.get("token") {
        Some(token) => revoke_token(app, token).await?,
        None => match (jar.access()?, jar.refresh()?) {
            (None, None) => return Err(oauth("invalid_request", "the token parameter is missing")),
            _ if !jar.origin_ok => return Err(CROSS_ORIGIN),
            (access, refresh) => {
                for token in access.into_iter().chain(refresh) {
                    revoke_token(app, token).await?;
                }
            }
        },
    }
    let mut resp = Response::new(body::empty());
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Only from an allowed origin: a `token` parameter needs no cookie, so
    // another site's form could otherwise log the user out.
    if login.config.cookie && jar.origin_ok {
        set_cookies(&mut resp, &login.config, None, None);
    }
    Ok(resp)
}

async fn revoke_token(app: &App, token: &str) -> Result<(), GatewayError> {
    // Our refresh tokens are base64url (no dots); access tokens are JWTs.
    if token.contains('.') {
        if let Ok(id) = app.verifier.verify(token, clock()?) {
            let jti = id.jti();
            // Refused for as long as the verifier would accept it.
            let until = id.exp().saturating_add(app.config.jwt.leeway.as_secs());
            let owned = jti.to_string();
            store::blocking(&app.store, move |s| s.revoke_jti(&owned, until)).await.map_err(unavailable)?;
            app.denylist.revoke_jti(jti, until);
            tracing::info!(sub = %id.sub(), "access token revoked");
        }
    } else {
        let hash = hash_token(token);
        if store::blocking(&app.store, move |s| s.revoke_refresh(&hash)).await.map_err(unavailable)? {
            tracing::info!("refresh token family revoked");
        }
    }
    Ok(())
}

/// An access token for `user`: roles, the users-file claims, and an `iat`
/// not before the subject's revoke-all cut-off (so logging in again right
/// after `authgate revoke` works).
/// An access token for `user`, issued no earlier than the user's cut-off
/// (so that a login right after a revoke-all is not refused by it); also
/// the store's cut-off as it read it (the denylist's may be higher, after
/// a store lost its data, without any revoke-all in between).
async fn mint(app: &App, user: &User) -> Result<(crate::jwt::Minted, u64), GatewayError> {
    let signer = app.signer.as_ref().ok_or_else(|| GatewayError::Unavailable("no signing key (jwt.public_key only)".into()))?;
    let sub = user.username.clone();
    let stored = store::blocking(&app.store, move |s| s.subject_cutoff(&sub)).await.map_err(unavailable)?.unwrap_or(0);
    let cutoff = stored.max(app.denylist.subject_cutoff(&user.username).unwrap_or(0));
    let mut claims = user.claims.clone();
    claims.insert("roles".into(), Value::from(user.roles.clone()));
    let minted = signer
        .sign_issued_at(&user.username, &claims, app.config.jwt.access_ttl, cutoff)
        .map_err(|e| GatewayError::Unavailable(format!("cannot sign the token: {e}")))?;
    Ok((minted, stored))
}

fn token_response(app: &App, access: crate::jwt::Minted, refresh: &str) -> Response<Body> {
    let json = json!({
        "access_token": &access.token,
        "token_type": "bearer",
        "expires_in": app.config.jwt.access_ttl.as_secs(),
        "refresh_token": refresh,
    });
    let mut resp = crate::app::json_response(StatusCode::OK, Bytes::from(json.to_string()));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    if let Some(login) = app.login.as_ref().filter(|l| l.config.cookie) {
        set_cookies(&mut resp, &login.config, Some((&access.token, app.config.jwt.access_ttl)), Some(refresh));
    }
    resp
}

/// `Set-Cookie` for the access token (Path=/) and the refresh token
/// (Path={login.path}, which covers `/revoke`); None clears the cookie.
fn set_cookies(resp: &mut Response<Body>, login: &LoginConfig, access: Option<(&str, std::time::Duration)>, refresh: Option<&str>) {
    let h = resp.headers_mut();
    let access_ttl = access.map_or(std::time::Duration::ZERO, |(_, ttl)| ttl);
    let cookies = [
        cookies::set(cookies::ACCESS, access.map(|(t, _)| t), "/", access_ttl),
        cookies::set(cookies::REFRESH, refresh, &login.path, login.refresh_ttl),
    ];
    for c in cookies.into_iter().flatten() {
        h.append(header::SET_COOKIE, c);
    }
}

fn unavailable(e: store::StoreError) -> GatewayError {
    GatewayError::Store(e)
}
