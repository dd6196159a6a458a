//! config.toml: serde file structs (unknown keys rejected), then `validate()`
//! into a `Config` whose every value has been checked.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;
use serde::Deserialize;

/// A config problem: the file, the key path and what is wrong, on one line.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

// ---------------------------------------------------------------- file structs

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    tls: RawTls,
    jwt: RawJwt,
    #[serde(default)]
    identity: RawIdentity,
    login: Option<RawLogin>,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    log: RawLog,
    cors: Option<RawCors>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    listen: String,
    http_redirect: Option<String>,
    admin_listen: Option<String>,
    trusted_proxies: Vec<String>,
    header_read_timeout: String,
    idle_timeout: String,
    upstream_timeout: String,
    body_timeout: String,
    body_min_rate: u64,
    shutdown_grace: String,
    max_connections: usize,
    max_upstream_requests: Option<usize>,
    max_header_bytes: usize,
    max_headers: usize,
    watch: bool,
    io_uring: bool,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: "127.0.0.1:8443".into(),
            http_redirect: None,
            admin_listen: None,
            trusted_proxies: Vec::new(),
            header_read_timeout: "10s".into(),
            idle_timeout: "60s".into(),
            upstream_timeout: "30s".into(),
            body_timeout: "20s".into(),
            body_min_rate: 500,
            shutdown_grace: "30s".into(),
            max_connections: 10_000,
            max_upstream_requests: None,
            max_header_bytes: 16_384,
            max_headers: 100,
            watch: false,
            io_uring: true,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTls {
    cert: String,
    key: String,
    generate_self_signed: bool,
}

impl Default for RawTls {
    fn default() -> Self {
        RawTls { cert: "certs/dev-cert.pem".into(), key: "certs/dev-key.pem".into(), generate_self_signed: false }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwt {
    algorithm: String,
    secret_env: Option<String>,
    secret_file: Option<String>,
    private_key: Option<String>,
    public_key: Option<String>,
    #[serde(default)]
    generate_signing_key: bool,
    issuer: String,
    audience: String,
    #[serde(default = "default_access_ttl")]
    access_ttl: String,
    #[serde(default = "default_leeway")]
    leeway: String,
    #[serde(default)]
    previous_keys: Vec<String>,
    #[serde(default)]
    issuers: Vec<RawIssuer>,
}

fn default_access_ttl() -> String {
    "15m".into()
}
/// The largest `server.max_connections` and `max_upstream_requests`
/// accepted: far past what one process serves (each connection is a file
/// descriptor), and small enough for a tokio semaphore (which panics past
/// `usize::MAX >> 3` permits) and for the shutdown drain's `u32` count.
pub const MAX_SLOTS: usize = 1_000_000;
const _: () = assert!(MAX_SLOTS <= tokio::sync::Semaphore::MAX_PERMITS && MAX_SLOTS <= u32::MAX as usize);

/// The largest `jwt.leeway` accepted.
const MAX_LEEWAY: Duration = Duration::from_secs(600);

fn default_leeway() -> String {
    "30s".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    issuer: String,
    audience: String,
    jwks_url: String,
    algorithms: Vec<String>,
    ca_file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawIdentity {
    subject_header: String,
    claim_headers: BTreeMap<String, String>,
    strip_prefixes: Vec<String>,
    forward_authorization: bool,
    assertion_header: Option<String>,
}

impl Default for RawIdentity {
    fn default() -> Self {
        RawIdentity {
            subject_header: "X-Auth-Subject".into(),
            claim_headers: BTreeMap::new(),
            strip_prefixes: vec!["X-Auth-".into()],
            forward_authorization: false,
            assertion_header: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLogin {
    path: String,
    users_file: String,
    refresh_ttl: String,
    rate_limit: String,
    rate_limit_per_username: String,
    cookie: bool,
}

impl Default for RawLogin {
    fn default() -> Self {
        RawLogin {
            path: "/token".into(),
            users_file: "users.toml".into(),
            refresh_ttl: "14d".into(),
            rate_limit: "5/minute".into(),
            rate_limit_per_username: "20/hour".into(),
            cookie: false,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawStore {
    kind: String,
    path: String,
    redis_url: Option<String>,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore { kind: "memory".into(), path: "data/authgate.db".into(), redis_url: None }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    path: String,
    upstream: String,
    #[serde(default = "default_auth")]
    auth: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
    rate_limit: Option<String>,
    #[serde(default)]
    strip_prefix: bool,
}

fn default_auth() -> String {
    "required".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    format: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog { format: "text".into() }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCors {
    allowed_origins: Vec<String>,
    #[serde(default)]
    allowed_methods: Vec<String>,
    #[serde(default)]
    allowed_headers: Vec<String>,
    max_age: Option<String>,
    #[serde(default)]
    allow_credentials: bool,
}

// ---------------------------------------------------------------- validated

#[derive(Debug, Clone)]
pub struct Config {
    /// The config file, as given.
    pub file: PathBuf,
    pub server: ServerConfig,
    pub tls: TlsConfig,
    pub jwt: JwtConfig,
    pub identity: IdentityConfig,
    pub login: Option<LoginConfig>,
    pub store: StoreConfig,
    pub routes: Vec<RouteConfig>,
    pub log: LogConfig,
    pub cors: Option<CorsConfig>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub http_redirect: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub trusted_proxies: Vec<IpNet>,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub upstream_timeout: Duration,
    /// A request body must arrive within this, extended by one second per
    /// `body_min_rate` bytes received (slow-body clients are cut off).
    pub body_timeout: Duration,
    pub body_min_rate: u64,
    pub shutdown_grace: Duration,
    pub max_connections: usize,
    /// Requests in flight to upstreams at once, all upstreams together
    /// (each holds an upstream connection): HTTP/2 multiplexes many onto
    /// one client connection. `max_connections` unless set.
    pub max_upstream_requests: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub watch: bool,
    /// Upstream writes sent in batches through io_uring (read at start).
    pub io_uring: bool,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub generate_self_signed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    Secret,
    Asymmetric,
}

#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub algorithm: jsonwebtoken::Algorithm,
    pub secret_env: Option<String>,
    pub secret_file: Option<PathBuf>,
    pub private_key: Option<PathBuf>,
    pub public_key: Option<PathBuf>,
    pub generate_signing_key: bool,
    pub issuer: String,
    pub audience: String,
    pub access_ttl: Duration,
    pub leeway: Duration,
    pub previous_keys: Vec<PathBuf>,
    pub issuers: Vec<IssuerConfig>,
}

#[derive(Debug, Clone)]
pub struct IssuerConfig {
    pub issuer: String,
    pub audience: String,
    /// An https URL, or an absolute file path.
    pub jwks_url: String,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// PEM roots trusted for this JWKS fetch instead of the public (webpki) ones.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub subject_header: HeaderName,
    /// claim name -> header it is forwarded in
    pub claim_headers: Vec<(String, HeaderName)>,
    /// lower-cased, as header names are
    pub strip_prefixes: Vec<String>,
    pub forward_authorization: bool,
    pub assertion_header: Option<HeaderName>,
}

#[derive(Debug, Clone)]
pub struct LoginConfig {
    pub path: String,
    pub users_file: PathBuf,
    pub refresh_ttl: Duration,
    pub rate_limit: Rate,
    pub rate_limit_per_username: Rate,
    pub cookie: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Embedded,
    Redis,
    Memory,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub kind: StoreKind,
    pub path: PathBuf,
    pub redis_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Required,
    Optional,
    Public,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    Echo,
    /// `http://host:port[/base]`: scheme and authority, and a base path ("" or "/x")
    Http {
        authority: http::uri::Authority,
        base: String,
    },
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// normalised: starts with `/`, no trailing `/` except the root
    pub path: String,
    pub upstream: Upstream,
    pub auth: AuthMode,
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
    pub rate_limit: Option<Rate>,
    pub strip_prefix: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
}

#[derive(Debug, Clone)]
pub struct CorsConfig {
    pub allowed_origins: Vec<String>,
    pub allowed_methods: Vec<String>,
    pub allowed_headers: Vec<String>,
    pub max_age: Duration,
    pub allow_credentials: bool,
}

/// `N/second|minute|hour`: N requests per period, burst N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: NonZeroU32,
    pub per: Duration,
}

impl Rate {
    pub fn quota(&self) -> governor::Quota {
        let period = self.per / self.count.get();
        governor::Quota::with_period(period.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| governor::Quota::per_second(self.count))
            .allow_burst(self.count)
    }
}

// ---------------------------------------------------------------- loading

/// Reads and validates the config file. Paths in it become relative to its folder.
pub fn load(file: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        key: String::new(),
        message: format!("cannot read the config file: {e}"),
    })?;
    parse(file, &text)
}

/// Validates config text as if it were read from `file`.
pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
    let deserializer = toml::Deserializer::parse(text).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        key: String::new(),
        message: one_line(&e.to_string()),
    })?;
    let raw: RawConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key = e.path().to_string();
        ConfigError {
            file: file.to_path_buf(),
            key: if key == "." { String::new() } else { key },
            message: one_line(&e.into_inner().to_string()),
        }
    })?;
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    Validator { file, dir: &dir }.config(raw)
}

pub(crate) fn one_line(s: &str) -> String {
    // toml errors span several lines with a source excerpt; keep the message.
    let lines: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let msg = lines.last().copied().unwrap_or("invalid TOML");
    match lines.first() {
        Some(first) if first.starts_with("TOML parse error") && lines.len() > 1 => {
            format!("{} ({})", msg, first.trim_start_matches("TOML parse error ").trim_end_matches(':'))
        }
        _ => msg.to_string(),
    }
}

struct Validator<'a> {
    file: &'a Path,
    dir: &'a Path,
}

type R<T> = Result<T, ConfigError>;

impl Validator<'_> {
    fn err(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError { file: self.file.to_path_buf(), key: key.into(), message: message.into() }
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() { p.to_path_buf() } else { self.dir.join(p) }
    }

    fn duration(&self, key: &str, s: &str) -> R<Duration> {
        parse_duration(s).map_err(|m| self.err(key, m))
    }

    fn rate(&self, key: &str, s: &str) -> R<Rate> {
        parse_rate(s).map_err(|m| self.err(key, m))
    }

    fn addr(&self, key: &str, s: &str) -> R<SocketAddr> {
        s.parse().map_err(|_| self.err(key, format!("{s:?} is not an address like \"127.0.0.1:8443\"")))
    }

    fn header(&self, key: &str, s: &str) -> R<HeaderName> {
        HeaderName::from_bytes(s.as_bytes()).map_err(|_| self.err(key, format!("{s:?} is not a valid header name")))
    }

    fn config(&self, raw: RawConfig) -> R<Config> {
        let server = self.server(raw.server)?;
        let tls =
            TlsConfig { cert: self.path(&raw.tls.cert), key: self.path(&raw.tls.key), generate_self_signed: raw.tls.generate_self_signed };
        let jwt = self.jwt(raw.jwt)?;
        let identity = self.identity(raw.identity)?;
        if identity.assertion_header.is_some() && (jwt.private_key.is_none() || key_source(jwt.algorithm) == KeySource::Secret) {
            return Err(self.err(
                "identity.assertion_header",
                "needs an asymmetric jwt.private_key: upstreams verify the assertion with /.well-known/jwks.json",
            ));
        }
        let login = raw.login.map(|l| self.login(l)).transpose()?;
        let store = self.store(raw.store)?;
        if raw.routes.is_empty() {
            return Err(self.err("routes", "at least one [[routes]] entry is needed"));
        }
        let mut routes = Vec::with_capacity(raw.routes.len());
        for (i, r) in raw.routes.into_iter().enumerate() {
            let route = self.route(i, r)?;
            if let Some(j) = routes.iter().position(|o: &RouteConfig| o.path == route.path) {
                return Err(self.err(format!("routes[{i}].path"), format!("{:?} is already the path of routes[{j}]", route.path)));
            }
            routes.push(route);
        }
        if let Some(login) = &login
            && let Some(i) = routes.iter().position(|r| r.path == login.path)
        {
            return Err(self.err(format!("routes[{i}].path"), format!("{:?} is login.path, which authgate answers itself", login.path)));
        }
        // authgate answers these itself, whatever the routes say: a route
        // on one of them would never be reached.
        for own in [crate::app::JWKS_PATH, crate::app::VERIFY_PATH] {
            if let Some(i) = routes.iter().position(|r| r.path == own) {
                return Err(self.err(format!("routes[{i}].path"), format!("{own:?} is answered by authgate itself")));
            }
        }
        // Two listeners on one address: `check` would pass a config that
        // `serve` cannot start. (Port 0 is a fresh port for each.)
        let listeners = [("server.http_redirect", server.http_redirect), ("server.admin_listen", server.admin_listen)];
        for (i, (key, addr)) in listeners.iter().enumerate() {
            let Some(addr) = addr.filter(|a| a.port() != 0) else { continue };
            if addr == server.listen {
                return Err(self.err(*key, format!("{addr} is server.listen's address too")));
            }
            if let Some((other, _)) = listeners[..i].iter().find(|(_, a)| *a == Some(addr)) {
                return Err(self.err(*key, format!("{addr} is {other}'s address too")));
            }
        }
        let log = LogConfig {
            format: match raw.log.format.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => return Err(self.err("log.format", format!("{other:?} is not one of: text, json"))),
            },
        };
        let cors = raw.cors.map(|c| self.cors(c)).transpose()?;
        Ok(Config { file: self.file.to_path_buf(), server, tls, jwt, identity, login, store, routes, log, cors })
    }

    fn server(&self, s: RawServer) -> R<ServerConfig> {
        let trusted_proxies = s
            .trusted_proxies
            .iter()
            .enumerate()
            .map(|(i, c)| {
                c.parse::<IpNet>()
                    .or_else(|_| c.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| self.err(format!("server.trusted_proxies[{i}]"), format!("{c:?} is not a CIDR like \"10.0.0.0/8\"")))
            })
            .collect::<R<Vec<_>>>()?;
        if !(1..=MAX_SLOTS).contains(&s.max_connections) {
            return Err(self.err("server.max_connections", format!("must be between 1 and {MAX_SLOTS}")));
        }
        if s.max_upstream_requests.is_some_and(|n| !(1..=MAX_SLOTS).contains(&n)) {
            return Err(self.err("server.max_upstream_requests", format!("must be between 1 and {MAX_SLOTS}")));
        }
        if !(1024..=1 << 20).contains(&s.max_header_bytes) {
            return Err(self.err("server.max_header_bytes", "must be between 1024 and 1048576"));
        }
        if !(8..=10_000).contains(&s.max_headers) {
            return Err(self.err("server.max_headers", "must be between 8 and 10000"));
        }
        let positive = |key: &str, v: &str| -> R<Duration> {
            let d = self.duration(key, v)?;
            if d.is_zero() { Err(self.err(key, "must be longer than 0s")) } else { Ok(d) }
        };
        Ok(ServerConfig {
            listen: self.addr("server.listen", &s.listen)?,
            http_redirect: s.http_redirect.as_deref().map(|a| self.addr("server.http_redirect", a)).transpose()?,
            admin_listen: s.admin_listen.as_deref().map(|a| self.addr("server.admin_listen", a)).transpose()?,
            trusted_proxies,
            header_read_timeout: positive("server.header_read_timeout", &s.header_read_timeout)?,
            idle_timeout: positive("server.idle_timeout", &s.idle_timeout)?,
            upstream_timeout: positive("server.upstream_timeout", &s.upstream_timeout)?,
            body_timeout: positive("server.body_timeout", &s.body_timeout)?,
            body_min_rate: s.body_min_rate,
            shutdown_grace: self.duration("server.shutdown_grace", &s.shutdown_grace)?,
            max_connections: s.max_connections,
            max_upstream_requests: s.max_upstream_requests.unwrap_or(s.max_connections),
            max_header_bytes: s.max_header_bytes,
            max_headers: s.max_headers,
            watch: s.watch,
            io_uring: s.io_uring,
        })
    }

    fn jwt(&self, j: RawJwt) -> R<JwtConfig> {
        let algorithm = parse_algorithm(&j.algorithm).map_err(|m| self.err("jwt.algorithm", m))?;
        let symmetric = key_source(algorithm) == KeySource::Secret;
        if symmetric {
            if j.secret_env.is_none() && j.secret_file.is_none() {
                return Err(self.err(
                    "jwt.secret_env",
                    format!(
                        "{} needs a secret: set secret_env to the name of an environment variable holding it (or secret_file)",
                        j.algorithm
                    ),
                ));
            }
            if j.secret_env.is_some() && j.secret_file.is_some() {
                return Err(self.err("jwt.secret_file", "set secret_env or secret_file, not both"));
            }
            for (k, set) in [
                ("private_key", j.private_key.is_some()),
                ("public_key", j.public_key.is_some()),
                ("generate_signing_key", j.generate_signing_key),
            ] {
                if set {
                    return Err(self.err(format!("jwt.{k}"), format!("not used with {}: HMAC uses secret_env", j.algorithm)));
                }
            }
            if !j.previous_keys.is_empty() {
                return Err(self.err("jwt.previous_keys", "only for asymmetric algorithms"));
            }
        } else {
            if j.secret_env.is_some() || j.secret_file.is_some() {
                let k = if j.secret_env.is_some() { "secret_env" } else { "secret_file" };
                return Err(self.err(format!("jwt.{k}"), format!("not used with {}: set private_key (or public_key)", j.algorithm)));
            }
            if j.private_key.is_none() && j.public_key.is_none() {
                return Err(self.err(
                    "jwt.private_key",
                    format!("{} needs a PEM key: set private_key (signing) or public_key (verify only)", j.algorithm),
                ));
            }
            if j.generate_signing_key && j.private_key.is_none() {
                return Err(self.err("jwt.generate_signing_key", "needs jwt.private_key: the path the key is written to"));
            }
        }
        if j.issuer.is_empty() {
            return Err(self.err("jwt.issuer", "must not be empty"));
        }
        if j.audience.is_empty() {
            return Err(self.err("jwt.audience", "must not be empty"));
        }
        let access_ttl = self.duration("jwt.access_ttl", &j.access_ttl)?;
        if access_ttl < Duration::from_secs(1) {
            return Err(self.err("jwt.access_ttl", "must be at least 1s"));
        }
        let issuers_seen = std::cell::RefCell::new(Vec::<String>::new());
        let issuers = j
            .issuers
            .into_iter()
            .enumerate()
            .map(|(i, iss)| {
                let key = format!("jwt.issuers[{i}]");
                if iss.algorithms.is_empty() {
                    return Err(self.err(format!("{key}.algorithms"), "list at least one algorithm"));
                }
                let algorithms = iss
                    .algorithms
                    .iter()
                    .enumerate()
                    .map(|(k, a)| {
                        let alg = parse_algorithm(a).map_err(|m| self.err(format!("{key}.algorithms[{k}]"), m))?;
                        if key_source(alg) == KeySource::Secret {
                            return Err(self
                                .err(format!("{key}.algorithms[{k}]"), "an external issuer's keys come from a JWKS: HMAC is not allowed"));
                        }
                        Ok(alg)
                    })
                    .collect::<R<Vec<_>>>()?;
                let jwks_url = if iss.jwks_url.starts_with("https://") {
                    iss.jwks_url
                } else if iss.jwks_url.contains("://") {
                    return Err(self.err(format!("{key}.jwks_url"), "must be an https:// URL or a file path"));
                } else {
                    self.path(&iss.jwks_url).to_string_lossy().into_owned()
                };
                if iss.issuer.is_empty() {
                    return Err(self.err(format!("{key}.issuer"), "must not be empty"));
                }
                if iss.issuer == j.issuer || issuers_seen.borrow().contains(&iss.issuer) {
                    return Err(
                        self.err(format!("{key}.issuer"), format!("{:?} is already configured: each issuer has one entry", iss.issuer))
                    );
                }
                issuers_seen.borrow_mut().push(iss.issuer.clone());
                if iss.audience.is_empty() {
                    return Err(self.err(format!("{key}.audience"), "must not be empty"));
                }
                let ca_file = iss.ca_file.as_deref().map(|p| self.path(p));
                if ca_file.is_some() && !jwks_url.starts_with("https://") {
                    return Err(self.err(format!("{key}.ca_file"), "only used with an https:// jwks_url"));
                }
                Ok(IssuerConfig { issuer: iss.issuer, audience: iss.audience, jwks_url, algorithms, ca_file })
            })
            .collect::<R<Vec<_>>>()?;
        let leeway = self.duration("jwt.leeway", &j.leeway)?;
        // Clock skew is seconds. A leeway of days (a typo of "30d" for
        // "30s") would quietly turn expiry checking off.
        if leeway > MAX_LEEWAY {
            return Err(self.err("jwt.leeway", format!("{:?} is more than clock skew needs; at most \"10m\"", j.leeway)));
        }
        Ok(JwtConfig {
            algorithm,
            secret_env: j.secret_env,
            secret_file: j.secret_file.as_deref().map(|p| self.path(p)),
            private_key: j.private_key.as_deref().map(|p| self.path(p)),
            public_key: j.public_key.as_deref().map(|p| self.path(p)),
            generate_signing_key: j.generate_signing_key,
            issuer: j.issuer,
            audience: j.audience,
            access_ttl,
            leeway,
            previous_keys: j.previous_keys.iter().map(|p| self.path(p)).collect(),
            issuers,
        })
    }

    fn identity(&self, i: RawIdentity) -> R<IdentityConfig> {
        /// Headers that mean something else to the upstream, or that
        /// authgate sets itself: never an identity header.
        static NOT_IDENTITY_HEADERS: [HeaderName; 11] = [
            http::header::AUTHORIZATION,
            http::header::HOST,
            http::header::COOKIE,
            http::header::CONTENT_LENGTH,
            http::header::CONTENT_TYPE,
            http::header::CONTENT_ENCODING,
            http::header::EXPECT,
            http::header::FORWARDED,
            HeaderName::from_static("x-forwarded-for"),
            HeaderName::from_static("x-forwarded-proto"),
            HeaderName::from_static("x-forwarded-host"),
        ];
        let subject_header = self.header("identity.subject_header", &i.subject_header)?;
        let claim_headers = i
            .claim_headers
            .iter()
            .map(|(claim, h)| Ok((claim.clone(), self.header(&format!("identity.claim_headers.{claim}"), h)?)))
            .collect::<R<Vec<_>>>()?;
        let assertion_header = i.assertion_header.as_deref().map(|h| self.header("identity.assertion_header", h)).transpose()?;
        let mut strip_prefixes = Vec::new();
        for (k, p) in i.strip_prefixes.iter().enumerate() {
            if p.is_empty() {
                return Err(self.err(format!("identity.strip_prefixes[{k}]"), "an empty prefix would strip every header"));
            }
            strip_prefixes.push(p.to_ascii_lowercase());
        }
        // Each identity header names one thing: two keys on one header
        // would let a claim stand in for the subject, say. Names are
        // compared with `_` as `-`, as CGI-style upstreams read them
        // (X_Forwarded_For is X-Forwarded-For to them).
        let mut named: Vec<(String, &HeaderName)> = vec![("identity.subject_header".into(), &subject_header)];
        named.extend(claim_headers.iter().map(|(c, h)| (format!("identity.claim_headers.{c}"), h)));
        named.extend(assertion_header.as_ref().map(|h| ("identity.assertion_header".to_string(), h)));
        let dashed: Vec<HeaderName> = named
            .iter()
            .map(|(_, h)| HeaderName::from_bytes(crate::identity::dashed(h.as_str()).as_bytes()).unwrap_or_else(|_| (*h).clone()))
            .collect();
        for (i, ((key, h), d)) in named.iter().zip(&dashed).enumerate() {
            if crate::proxy::is_hop_by_hop(d) || NOT_IDENTITY_HEADERS.contains(d) {
                return Err(self.err(key, format!("{h} cannot be an identity header")));
            }
            if let Some(j) = dashed[..i].iter().position(|earlier| earlier == d) {
                return Err(self.err(key, format!("{h} is already {}: each identity header carries one value", named[j].0)));
            }
        }
        Ok(IdentityConfig {
            subject_header,
            claim_headers,
            strip_prefixes,
            forward_authorization: i.forward_authorization,
            assertion_header,
        })
    }

    fn login(&self, l: RawLogin) -> R<LoginConfig> {
        let path = normalise_route_path(&l.path).map_err(|m| self.err("login.path", m))?;
        if path == "/" {
            return Err(self.err("login.path", "cannot be \"/\""));
        }
        // Expiry times are whole seconds: a shorter refresh token would
        // expire as it is issued (Redis drops its family at once).
        let refresh_ttl = self.duration("login.refresh_ttl", &l.refresh_ttl)?;
        if refresh_ttl < Duration::from_secs(1) {
            return Err(self.err("login.refresh_ttl", "must be at least 1s"));
        }
        Ok(LoginConfig {
            path,
            users_file: self.path(&l.users_file),
            refresh_ttl,
            rate_limit: self.rate("login.rate_limit", &l.rate_limit)?,
            rate_limit_per_username: self.rate("login.rate_limit_per_username", &l.rate_limit_per_username)?,
            cookie: l.cookie,
        })
    }

    fn store(&self, s: RawStore) -> R<StoreConfig> {
        let kind = match s.kind.as_str() {
            "embedded" => StoreKind::Embedded,
            "redis" => StoreKind::Redis,
            "memory" => StoreKind::Memory,
            other => return Err(self.err("store.kind", format!("{other:?} is not one of: embedded, redis, memory"))),
        };
        if kind == StoreKind::Redis {
            match &s.redis_url {
                None => return Err(self.err("store.redis_url", "needed when store.kind = \"redis\"")),
                Some(u) if !(u.starts_with("redis://") || u.starts_with("rediss://") || u.starts_with("unix://")) => {
                    return Err(self.err("store.redis_url", "must start with redis://, rediss:// or unix://"));
                }
                _ => {}
            }
        }
        Ok(StoreConfig { kind, path: self.path(&s.path), redis_url: s.redis_url })
    }

    fn route(&self, i: usize, r: RawRoute) -> R<RouteConfig> {
        let key = |k: &str| format!("routes[{i}].{k}");
        let path = normalise_route_path(&r.path).map_err(|m| self.err(key("path"), m))?;
        let upstream = parse_upstream(&r.upstream).map_err(|m| self.err(key("upstream"), m))?;
        let auth = match r.auth.as_str() {
            "required" => AuthMode::Required,
            "optional" => AuthMode::Optional,
            "public" => AuthMode::Public,
            other => return Err(self.err(key("auth"), format!("{other:?} is not one of: required, optional, public"))),
        };
        if auth == AuthMode::Public && !(r.roles.is_empty() && r.scopes.is_empty()) {
            return Err(self.err(key("roles"), "a public route checks no token, so roles and scopes would never apply"));
        }
        Ok(RouteConfig {
            path,
            upstream,
            auth,
            roles: r.roles,
            scopes: r.scopes,
            rate_limit: r.rate_limit.as_deref().map(|s| self.rate(&key("rate_limit"), s)).transpose()?,
            strip_prefix: r.strip_prefix,
        })
    }

    fn cors(&self, c: RawCors) -> R<CorsConfig> {
        for (i, o) in c.allowed_origins.iter().enumerate() {
            if o != "*" && !(o.starts_with("https://") || o.starts_with("http://")) {
                return Err(
                    self.err(format!("cors.allowed_origins[{i}]"), format!("{o:?} is not an origin like \"https://app.example.com\""))
                );
            }
        }
        if c.allow_credentials && c.allowed_origins.iter().any(|o| o == "*") {
            return Err(self.err("cors.allow_credentials", "cannot be used with the \"*\" origin"));
        }
        Ok(CorsConfig {
            allowed_origins: c.allowed_origins,
            allowed_methods: if c.allowed_methods.is_empty() {
                vec!["GET".into(), "POST".into(), "PUT".into(), "PATCH".into(), "DELETE".into()]
            } else {
                c.allowed_methods
            },
            allowed_headers: if c.allowed_headers.is_empty() {
                vec!["authorization".into(), "content-type".into()]
            } else {
                c.allowed_headers
            },
            max_age: c.max_age.as_deref().map(|m| self.duration("cors.max_age", m)).transpose()?.unwrap_or(Duration::from_secs(600)),
            allow_credentials: c.allow_credentials,
        })
    }
}

pub fn key_source(alg: jsonwebtoken::Algorithm) -> KeySource {
    use jsonwebtoken::Algorithm::*;
    match alg {
        HS256 | HS384 | HS512 => KeySource::Secret,
        _ => KeySource::Asymmetric,
    }
}

pub fn parse_algorithm(s: &str) -> Result<jsonwebtoken::Algorithm, String> {
    use jsonwebtoken::Algorithm::*;
    Ok(match s {
        "HS256" => HS256,
        "HS384" => HS384,
        "HS512" => HS512,
        "RS256" => RS256,
        "RS384" => RS384,
        "RS512" => RS512,
        "PS256" => PS256,
        "PS384" => PS384,
        "PS512" => PS512,
        "ES256" => ES256,
        "ES384" => ES384,
        "EdDSA" => EdDSA,
        other => {
            return Err(format!("{other:?} is not one of: HS256 HS384 HS512 RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA"));
        }
    })
}

/// `"30s"`, `"15m"`, `"2h"`, `"14d"`, `"500ms"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration like \"30s\", \"15m\", \"2h\" or \"14d\"");
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = |mul: u64| n.checked_mul(mul).map(Duration::from_secs).ok_or_else(bad);
    let d = match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => Err(bad()),
    }?;
    // Nothing here needs longer, and deadlines and expiry times computed
    // from far larger ones overflow (a panic, or a token that has expired
    // before it was issued).
    if d > MAX_DURATION {
        return Err(format!("{s:?} is longer than 100 years"));
    }
    Ok(d)
}

/// The longest duration any setting or `--ttl` takes: 100 years.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// `"5/minute"`: 5 per minute, burst 5.
pub fn parse_rate(s: &str) -> Result<Rate, String> {
    let bad = || format!("{s:?} is not a rate like \"5/minute\" (per second, minute or hour)");
    let (n, per) = s.trim().split_once('/').ok_or_else(bad)?;
    let count: u32 = n.trim().parse().map_err(|_| bad())?;
    let count = NonZeroU32::new(count).ok_or_else(|| format!("{s:?}: the count must be at least 1"))?;
    let per = match per.trim() {
        "second" | "s" => Duration::from_secs(1),
        "minute" | "m" => Duration::from_secs(60),
        "hour" | "h" => Duration::from_secs(3600),
        _ => return Err(bad()),
    };
    Ok(Rate { count, per })
}

fn normalise_route_path(p: &str) -> Result<String, String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} must start with \"/\""));
    }
    // Matching ignores segment parameters (`/admin;x` is under `/admin`),
    // so a route path holding `;` could never match; `?` and `#` do not
    // belong to a path at all.
    if let Some(c) = p.chars().find(|c| matches!(c, ';' | '?' | '#')) {
        return Err(format!("{p:?}: a route path cannot hold {c:?} (requests are matched on the path alone, without ';' parameters)"));
    }
    let normalised = crate::routes::normalise_path(p).map_err(|e| format!("{p:?}: {e}"))?;
    if normalised != p.trim_end_matches('/') && !(p == "/" && normalised == "/") && normalised != p {
        return Err(format!("{p:?} is not in normal form; write {normalised:?}"));
    }
    let trimmed = normalised.trim_end_matches('/');
    Ok(if trimmed.is_empty() { "/".into() } else { trimmed.into() })
}

fn parse_upstream(s: &str) -> Result<Upstream, String> {
    if s == "echo" {
        return Ok(Upstream::Echo);
    }
    let Some(rest) = s.strip_prefix("http://") else {
        if s.starts_with("https://") {
            return Err(format!("{s:?}: https upstreams are not supported; use http:// on a trusted network or loopback"));
        }
        return Err(format!("{s:?} is not \"echo\" or a URL like \"http://127.0.0.1:8080\""));
    };
    let (auth, base) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if auth.contains('@') {
        return Err(format!("{s:?}: credentials in the upstream URL are not supported"));
    }
    let authority: http::uri::Authority = auth.parse().map_err(|_| format!("{s:?}: {auth:?} is not a host:port"))?;
    if authority.host().is_empty() {
        return Err(format!("{s:?}: the host is missing"));
    }
    if base.contains(['?', '#']) {
        return Err(format!("{s:?}: an upstream cannot have a query or fragment"));
    }
    let base = base.trim_end_matches('/').to_string();
    Ok(Upstream::Http { authority, base })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_rates() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("14d"), Ok(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("3 weeks").is_err());
        assert_eq!(parse_duration("36500d"), Ok(MAX_DURATION));
        assert!(parse_duration("36501d").is_err());
        assert!(parse_duration("18446744073709551615s").is_err(), "far past 100 years");
        let r = parse_rate("5/minute").expect("valid");
        assert_eq!((r.count.get(), r.per), (5, Duration::from_secs(60)));
        assert!(parse_rate("0/second").is_err());
        assert!(parse_rate("5 per minute").is_err());
    }

    #[test]
    fn upstreams() {
        assert_eq!(parse_upstream("echo"), Ok(Upstream::Echo));
        let Ok(Upstream::Http { authority, base }) = parse_upstream("http://127.0.0.1:9000/base/") else { panic!("parse") };
        assert_eq!((authority.as_str(), base.as_str()), ("127.0.0.1:9000", "/base"));
        assert!(parse_upstream("ftp://x").is_err());
        assert!(parse_upstream("http://").is_err());
    }
}
