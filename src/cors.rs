//! CORS (`[cors]`): preflights are answered by the gateway without
//! authentication; only listed origins get `Access-Control-Allow-Origin`;
//! credentials only when configured. Without `[cors]` nothing here runs and
//! an upstream's own CORS headers pass through.

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};

use crate::body::{self, Body};
use crate::config::CorsConfig;

pub struct Cors {
    origins: Vec<String>,
    any: bool,
    methods: HeaderValue,
    headers: HeaderValue,
    max_age: HeaderValue,
    credentials: bool,
}

static VARY_ORIGIN: HeaderValue = HeaderValue::from_static("Origin");
static TRUE: HeaderValue = HeaderValue::from_static("true");
static STAR: HeaderValue = HeaderValue::from_static("*");

impl Cors {
    pub fn new(c: &CorsConfig) -> Cors {
        let join = |v: &[String]| HeaderValue::from_str(&v.join(", ")).unwrap_or_else(|_| HeaderValue::from_static(""));
        Cors {
            origins: c.allowed_origins.iter().filter(|o| *o != "*").map(|o| o.trim_end_matches('/').to_ascii_lowercase()).collect(),
            any: c.allowed_origins.iter().any(|o| o == "*"),
            methods: join(&c.allowed_methods),
            headers: join(&c.allowed_headers),
            max_age: HeaderValue::from(c.max_age.as_secs()),
            credentials: c.allow_credentials,
        }
    }

    /// Is this exact origin (scheme://host[:port]) allowed to read answers?
    pub fn origin_allowed(&self, origin: &HeaderValue) -> bool {
        let Ok(o) = origin.to_str() else { return false };
        self.any || self.origin_listed(o)
    }

    /// Is this origin named in `allowed_origins`? `"*"` names none: a
    /// wildcard never vouches for a cookie-authenticated request (CSRF).
    pub fn origin_listed(&self, origin: &str) -> bool {
        self.origins.iter().any(|a| a.eq_ignore_ascii_case(origin))
    }

    /// A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`)
    /// gets its answer here, before any route or token check.
    pub fn preflight(&self, method: &Method, headers: &HeaderMap) -> Option<Response<Body>> {
        if method != Method::OPTIONS || !headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
            return None;
        }
        let origin = headers.get(header::ORIGIN)?;
        let mut resp = Response::new(body::empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let h = resp.headers_mut();
        // `decorate` adds Vary and the allow headers, as on every answer.
        if self.origin_allowed(origin) {
            self.allow(origin, h);
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, self.methods.clone());
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, self.headers.clone());
            h.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        }
        Some(resp)
    }

    /// Adds the CORS headers to an answer. An upstream's own are replaced:
    /// with `[cors]`, authgate alone decides which origins may read.
    /// `Vary: Origin` goes on every answer, with an `Origin` or without: a
    /// cache that kept the answer to a request without one (no
    /// `Access-Control-Allow-Origin`) would otherwise serve it to the app.
    pub fn decorate(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        headers.remove(header::ACCESS_CONTROL_ALLOW_ORIGIN);
        headers.remove(header::ACCESS_CONTROL_ALLOW_CREDENTIALS);
        vary_on_origin(headers);
        if let Some(origin) = origin.filter(|o| self.origin_allowed(o)) {
            self.allow(origin, headers);
        }
    }

    fn allow(&self, origin: &HeaderValue, h: &mut HeaderMap) {
        if self.any && !self.credentials {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, STAR.clone());
        } else {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        }
        if self.credentials {
            h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE.clone());
        }
    }
}

/// Adds `Origin` to the answer's `Vary`, unless it is listed there already
/// or the answer varies on everything (`*`). An upstream's `Vary` fields
/// are kept, joined with `Origin` into one (RFC 9110 §5.3: the same list).
fn vary_on_origin(headers: &mut HeaderMap) {
    let mut tokens = headers.get_all(header::VARY).iter().flat_map(|v| v.as_bytes().split(|b| *b == b',')).map(<[u8]>::trim_ascii);
    if tokens.any(|t| t == b"*" || t.eq_ignore_ascii_case(b"origin")) {
        return;
    }
    let mut joined = Vec::new();
    for v in headers.get_all(header::VARY).iter().map(|v| v.as_bytes().trim_ascii()).filter(|v| !v.is_empty()) {
        joined.extend_from_slice(v);
        joined.extend_from_slice(b", ");
    }
    if joined.is_empty() {
        headers.insert(header::VARY, VARY_ORIGIN.clone());
        return;
    }
    joined.extend_from_slice(b"Origin");
    match HeaderValue::from_bytes(&joined) {
        Ok(v) => {
            headers.insert(header::VARY, v);
        }
        Err(_) => {
            headers.append(header::VARY, VARY_ORIGIN.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vary(fields: &[&'static str]) -> Vec<String> {
        let mut h = HeaderMap::new();
        for f in fields {
            h.append(header::VARY, HeaderValue::from_static(f));
        }
        vary_on_origin(&mut h);
        h.get_all(header::VARY).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect()
    }

    #[test]
    fn vary_gets_origin_once() {
        assert_eq!(vary(&[]), ["Origin"]);
        assert_eq!(vary(&["Accept-Encoding"]), ["Accept-Encoding, Origin"]);
        assert_eq!(vary(&["Accept-Encoding", "Accept-Language"]), ["Accept-Encoding, Accept-Language, Origin"]);
        assert_eq!(vary(&["accept-encoding, origin"]), ["accept-encoding, origin"]);
        assert_eq!(vary(&["Accept", "ORIGIN"]), ["Accept", "ORIGIN"]);
        assert_eq!(vary(&["*"]), ["*"]);
        assert_eq!(vary(&[""]), ["Origin"]);
    }
}
