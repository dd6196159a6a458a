//! authgate: a TLS-terminating reverse proxy that verifies JWTs in front of
//! services that cannot do it themselves.
//!
//! A request flows through `server` (accept, TLS, HTTP/1.1 or HTTP/2) into
//! `app::App::handle`, which runs the pipeline in order:
//! head limits -> `routes::normalise_path` -> `cors` preflight -> our own
//! endpoints (`/token`, JWKS, `/auth/verify`) -> `routes` match ->
//! `identity::strip` -> cookie CSRF rule -> `jwt::Verifier::verify` +
//! `revocation` -> roles/scopes -> `route_limit` -> `identity::apply` ->
//! `proxy::forward` on a pooled `upstream` connection (or the `echo`
//! upstream).
//! Every failure becomes one `error::GatewayError`, answered in one place;
//! the outer handler writes the access log line and the `metrics`.
//!
//! The server holds the current `App` in an `ArcSwap`: `reload` builds a
//! new one (SIGHUP, or file changes with `server.watch`) and swaps it in;
//! `admin` serves health and metrics on a plain side listener.

pub mod admin;
pub mod app;
pub mod body;
pub mod cli;
pub mod config;
pub mod conn;
pub mod cookies;
pub mod cors;
pub mod error;
pub mod gate;
pub mod identity;
pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod log_format;
pub mod login;
pub mod metrics;
pub mod open_files;
pub mod proxy;
pub mod rate_limit;
pub mod reload;
pub mod revocation;
pub mod route_limit;
pub mod routes;
pub mod server;
pub mod sockopt;
pub mod store;
pub mod tls;
pub mod tls_stream;
pub mod token_cache;
pub mod upstream;
pub mod upstream_io;
pub mod users;

use std::sync::Arc;

/// Builds the shared state from a validated config: keys (generated in dev
/// when asked), route table, upstream client, the store and the denylist
/// loaded from it, the users file and login.
pub fn build_app(config: config::Config) -> anyhow::Result<app::App> {
    build_app_with(config, None)
}

/// What a reload hands from the running App to the one replacing it.
pub struct Carried {
    pub metrics: Arc<metrics::Metrics>,
    pub denylist: Arc<revocation::Denylist>,
    /// The open store and how far the denylist has read it; None when
    /// `[store]` changed and the new one must be opened.
    pub store: Option<(Arc<dyn store::Store>, store::Cursor)>,
    /// The users file the running App loaded, as fingerprints: a reload
    /// compares the new file with it where the store holds nothing.
    pub users: Option<std::collections::HashMap<String, store::TokenHash>>,
    /// The running App's external issuers: their keys serve the new App
    /// until it has fetched its own (`keys::load_with`).
    pub issuers: Vec<Arc<jwks::Issuer>>,
}

/// `build_app`, keeping what `carried` holds instead of starting afresh.
pub fn build_app_with(config: config::Config, carried: Option<Carried>) -> anyhow::Result<app::App> {
    let issuers = carried.as_ref().map_or(&[][..], |c| &c.issuers[..]);
    let keys = keys::load_with(&config, true, issuers)?;
    let metrics = carried.as_ref().map_or_else(|| Arc::new(metrics::Metrics::new()), |c| c.metrics.clone());
    let (store, cursor) = match carried.as_ref().and_then(|c| c.store.clone()) {
        Some(open) => open,
        None => (store::open(&config)?, store::Cursor::default()),
    };
    let login = match &config.login {
        Some(l) => {
            let users = users::load(&l.users_file)?;
            // A changed password, a disabled or a removed user ends their sessions.
            let previous = carried.as_ref().and_then(|c| c.users.as_ref());
            for sub in store::sync_users(store.as_ref(), &users, previous, jwt::now_secs() + 1)? {
                tracing::warn!(%sub, "user changed, disabled or removed in the users file: their tokens are revoked");
            }
            warn_demo_user(&config, l, &users);
            Some(login::Login::new(l.clone(), users))
        }
        None => None,
    };
    let denylist = carried.map_or_else(|| Arc::new(revocation::Denylist::default()), |c| c.denylist);
    let cursor = store::load_into(store.as_ref(), &denylist, cursor)?;
    let mut app = app::App::new(config, keys, denylist);
    app.metrics = metrics;
    app.store = store;
    app.login = login;
    app.revocation_cursor = std::sync::Mutex::new(cursor);
    Ok(app)
}

fn warn_demo_user(config: &config::Config, l: &config::LoginConfig, users: &users::Users) {
    if users.get(users::DEMO_USERNAME).is_some_and(|u| !u.disabled) && !config.server.listen.ip().is_loopback() {
        tracing::warn!(
            user = users::DEMO_USERNAME,
            listen = %config.server.listen,
            "THE DEMO USER IS ENABLED ON A NON-LOOPBACK LISTENER: anyone who reads the README can log in. Remove it from {}",
            l.users_file.display()
        );
    }
}

/// `authgate check`: everything the gateway would load, validated, and
/// the summary to print, with nothing written and no state changed. No
/// signing key or certificate is generated (the summary says which would
/// be), and the users file is not synced into the store: a users file
/// checked before it is deployed revokes nobody's tokens. A Redis store
/// is connected to, and an embedded one opened if it exists, to show they
/// work; a missing embedded store is left for the gateway to create.
pub fn check(config: config::Config) -> anyhow::Result<String> {
    let keys = keys::load_with(&config, false, &[])?;
    let new_store = config.store.kind == config::StoreKind::Embedded && !config.store.path.exists();
    if config.store.kind != config::StoreKind::Memory && !new_store {
        store::open(&config)?.ping()?;
    }
    let generate_key = config.jwt.generate_signing_key && config.jwt.private_key.as_ref().is_some_and(|p| !p.exists());
    let generate_cert = tls::will_generate(&config);
    if !generate_cert {
        tls::server_config(&config)?;
    }
    let login = match &config.login {
        Some(l) => {
            let users = users::load(&l.users_file)?;
            warn_demo_user(&config, l, &users);
            Some(login::Login::new(l.clone(), users))
        }
        None => None,
    };
    let mut app = app::App::new(config, keys, Arc::new(revocation::Denylist::default()));
    app.login = login;
    let mut s = summary(&app);
    if let Some(path) = app.config.jwt.private_key.as_ref().filter(|_| generate_key) {
        s.push_str(&format!("note: {} does not exist yet; the gateway generates it at start (jwt.generate_signing_key)\n", path.display()));
    }
    if new_store {
        s.push_str(&format!(
            "note: {} does not exist yet; the gateway creates it at start (store.path)\n",
            app.config.store.path.display()
        ));
    }
    if generate_cert {
        s.push_str(&format!(
            "note: {} does not exist yet; the gateway generates a self-signed certificate at start (tls.generate_self_signed)\n",
            app.config.tls.cert.display()
        ));
    }
    Ok(s)
}

/// One startup line per listener and route.
pub fn banner(app: &app::App, addr: std::net::SocketAddr) {
    tracing::info!(listen = %addr, config = %app.config.file.display(), "authgate listening (TLS, HTTP/1.1 and HTTP/2)");
    for r in app.routes.iter() {
        let upstream = match &r.upstream {
            config::Upstream::Echo => "echo".to_string(),
            config::Upstream::Http { authority, base } => format!("http://{authority}{base}"),
        };
        tracing::info!(path = %r.path, %upstream, auth = ?r.auth, roles = ?r.roles, "route");
    }
    if tls::FIRST_START.load(std::sync::atomic::Ordering::Relaxed) {
        try_it_hint(app, addr);
    }
}

/// The curl lines of the README's walk-through, for a first start.
fn try_it_hint(app: &app::App, addr: std::net::SocketAddr) {
    let base = format!("https://{addr}");
    let cert = app.config.tls.cert.display();
    let mut lines = vec![
        format!("curl --cacert {cert} -i {base}/hello                  # 401: no token"),
        "TOKEN=$(cargo run -q --release -- token --sub alice --claim 'roles=[\"admin\"]')".to_string(),
        format!("curl --cacert {cert} -H \"Authorization: Bearer $TOKEN\" {base}/hello   # 200: see the identity headers"),
    ];
    if let Some(l) = &app.config.login {
        lines.push(format!("curl --cacert {cert} {base}{} -d username=alice@example.com -d password=secret123", l.path));
    }
    for line in lines {
        tracing::info!("try it: {line}");
    }
}

/// What `authgate check` prints: listeners, keys, routes and the identity
/// headers each upstream receives.
pub fn summary(app: &app::App) -> String {
    use std::fmt::Write;
    let c = &app.config;
    let mut s = String::new();
    let _ = writeln!(s, "config {} is valid", c.file.display());
    let _ = writeln!(s, "listen {} (TLS cert {})", c.server.listen, c.tls.cert.display());
    let keys = app.verifier.keys();
    let kids: Vec<&str> = keys.verify.iter().map(|k| k.kid.as_str()).collect();
    let _ = writeln!(
        s,
        "jwt {:?} issuer={:?} audience={:?} keys=[{}] signing={}",
        c.jwt.algorithm,
        c.jwt.issuer,
        c.jwt.audience,
        kids.join(", "),
        match (&app.signer, &c.jwt.private_key) {
            (Some(_), _) => "yes",
            // `check` does not generate the key; the gateway will.
            (None, Some(_)) if c.jwt.generate_signing_key => "yes (its key is generated at start)",
            (None, _) => "no (verify only)",
        }
    );
    let mut identity: Vec<String> = vec![format!("{}: sub", c.identity.subject_header)];
    identity.extend(c.identity.claim_headers.iter().map(|(claim, h)| format!("{h}: {claim}")));
    let _ = writeln!(s, "routes:");
    for r in app.routes.iter() {
        let upstream = match &r.upstream {
            config::Upstream::Echo => "echo".to_string(),
            config::Upstream::Http { authority, base } => format!("http://{authority}{base}"),
        };
        let auth = match r.auth {
            config::AuthMode::Required => "required",
            config::AuthMode::Optional => "optional",
            config::AuthMode::Public => "public",
        };
        let _ = write!(s, "  {:<24} -> {:<28} auth={auth}", r.path, upstream);
        if !r.roles.is_empty() {
            let _ = write!(s, " roles={}", r.roles.join(","));
        }
        if !r.scopes.is_empty() {
            let _ = write!(s, " scopes={}", r.scopes.join(","));
        }
        if r.auth != config::AuthMode::Public {
            let _ = write!(s, " headers=[{}]", identity.join("; "));
        }
        let _ = writeln!(s);
    }
    s
}

/// `sub`'s revoke-all cut-off in a persistent store, for `authgate token`:
/// a token minted in the second of an `authgate revoke` is issued at the
/// cut-off, not before it, as `{login.path}` does. 0 with the `memory`
/// store. A store that cannot be read is reported and skipped: the token
/// may then be refused, never wrongly accepted.
pub fn subject_cutoff_cli(config: &config::Config, sub: &str) -> u64 {
    if config.store.kind == config::StoreKind::Memory {
        return 0;
    }
    let read = || -> anyhow::Result<Option<u64>> { Ok(store::open(config)?.subject_cutoff(sub)?) };
    match read() {
        Ok(cutoff) => cutoff.unwrap_or(0),
        Err(e) => {
            eprintln!("authgate: warning: cannot read {sub:?}'s revocations from the store ({e:#}); minting without them");
            0
        }
    }
}

/// `authgate revoke --sub S`: writes a cut-off for S to the store, which a
/// running gateway reads within `store::SYNC_EVERY`; S's refresh families end.
/// Returns the line to print.
pub fn revoke_subject_cli(config: &config::Config, sub: &str) -> anyhow::Result<String> {
    if config.store.kind == config::StoreKind::Memory {
        return Err(config::ConfigError {
            file: config.file.clone(),
            key: "store.kind".into(),
            message: "\"memory\" lives inside the running gateway, out of reach of this command; use store.kind = \"embedded\"".into(),
        }
        .into());
    }
    // A gateway creates its database at start; none there means this is
    // not the config it runs with (a typo in store.path), and a revocation
    // written into a new one would reach no gateway.
    if config.store.kind == config::StoreKind::Embedded && !config.store.path.exists() {
        return Err(config::ConfigError {
            file: config.file.clone(),
            key: "store.path".into(),
            message: format!("{}: no store there; is this the config the gateway runs with?", config.store.path.display()),
        }
        .into());
    }
    let store = store::open(config)?;
    // +1: tokens issued earlier in this same second (iat has second resolution) are refused too.
    let cutoff = jwt::now_secs() + 1;
    store.revoke_subject(sub, cutoff)?;
    Ok(format!(
        "revoked every token issued to {sub:?} before now; a running gateway refuses them within {}s\n",
        store::SYNC_EVERY.as_secs()
    ))
}
