//! authgate's browser cookies (`login.cookie = true`): the access token in
//! `authgate_access` (Path=/) and the refresh token in `authgate_refresh`
//! (Path={login.path}), both `HttpOnly; Secure; SameSite=Strict`. Reading
//! them from a `Cookie` header, removing them before a request is forwarded
//! (a token never reaches an upstream), and the CSRF rule for requests they
//! authenticate.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, header};

pub const ACCESS: &str = "authgate_access";
pub const REFRESH: &str = "authgate_refresh";

/// A request carries one of our cookies more than once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repeated;

/// The value of cookie `name` in the request's `Cookie` header(s). Two
/// cookies of that name are refused, not chosen between: a sibling
/// subdomain can set one for the whole site (`Domain=example.com`) with a
/// longer `Path`, which browsers send first (cookie tossing), and the
/// request would run as the sibling's choice of user.
pub fn get<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, Repeated> {
    let mut found = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(n, _)| *n == name)
        .map(|(_, v)| v.trim_matches('"'));
    match (found.next(), found.next()) {
        (_, Some(_)) => Err(Repeated),
        (v, None) => Ok(v.filter(|v| !v.is_empty())),
    }
}

fn ours(pair: &[u8]) -> bool {
    let name = pair.trim_ascii().split(|b| *b == b'=').next().unwrap_or_default();
    name == ACCESS.as_bytes() || name == REFRESH.as_bytes()
}

/// Removes authgate's cookies from the `Cookie` header(s), keeping the
/// others, and sends what is left as one header: an HTTP/2 client may split
/// its cookies over several fields, which must be joined with "; " for an
/// HTTP/1.1 upstream (RFC 9113 §8.2.3; many read only the first `Cookie`).
pub fn strip(headers: &mut HeaderMap) {
    let (mut fields, mut has_ours) = (0, false);
    for v in headers.get_all(header::COOKIE) {
        fields += 1;
        has_ours |= v.as_bytes().split(|b| *b == b';').any(ours);
    }
    if !has_ours && fields < 2 {
        return;
    }
    let mut kept: Vec<u8> = Vec::new();
    for pair in headers.get_all(header::COOKIE).iter().flat_map(|v| v.as_bytes().split(|b| *b == b';')) {
        let pair = pair.trim_ascii();
        if !pair.is_empty() && !ours(pair) {
            if !kept.is_empty() {
                kept.extend_from_slice(b"; ");
            }
            kept.extend_from_slice(pair);
        }
    }
    headers.remove(header::COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_bytes(&kept)
    {
        headers.insert(header::COOKIE, v);
    }
}

/// `Set-Cookie` for one of our cookies; `None` clears it (Max-Age=0).
pub fn set(name: &str, value: Option<&str>, path: &str, max_age: Duration) -> Option<HeaderValue> {
    let (value, age) = match value {
        Some(v) => (v, max_age.as_secs()),
        None => ("", 0),
    };
    HeaderValue::from_str(&format!("{name}={value}; HttpOnly; Secure; SameSite=Strict; Path={path}; Max-Age={age}")).ok()
}

/// GET, HEAD and OPTIONS change nothing; every other method may.
pub fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Does the request ask for a protocol switch, a WebSocket handshake in
/// particular? `Upgrade` is hop-by-hop, and forward-auth proxies drop it
/// from the auth request (Traefik always does, nginx unless told); the
/// `Sec-WebSocket-*` headers are end-to-end, and only a handshake carries
/// them (a page's script cannot set a `Sec-` header).
pub fn is_handshake(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        || headers.contains_key(header::SEC_WEBSOCKET_KEY)
        || headers.contains_key(header::SEC_WEBSOCKET_VERSION)
}

/// Does the request name an origin at all (`Origin` or `Referer`)? A
/// same-site navigation often names none; a browser on another site always
/// sends one of them with a form post, a fetch or a WebSocket handshake.
pub fn names_origin(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ORIGIN) || headers.contains_key(header::REFERER)
}

/// `scheme://host[:port]` of a URL (a `Referer`), without path or query.
fn origin_of(url: &str) -> Option<&str> {
    let rest_at = url.find("://")? + 3;
    let end = url[rest_at..].find(['/', '?', '#']).map_or(url.len(), |i| rest_at + i);
    Some(&url[..end])
}

/// CSRF defence for a state-changing request authenticated by cookie: its
/// `Origin` (or, failing that, the origin of its `Referer`) must be allowed
/// by `allowed`, or be the request's own `https://{host}`.
pub fn same_or_allowed_origin(headers: &HeaderMap, host: Option<&str>, allowed: impl Fn(&str) -> bool) -> bool {
    // Two of either: a browser sends one; which to judge is not ours to pick.
    if headers.get_all(header::ORIGIN).iter().nth(1).is_some() || headers.get_all(header::REFERER).iter().nth(1).is_some() {
        return false;
    }
    let origin = match headers.get(header::ORIGIN) {
        Some(o) => o.to_str().ok(),
        None => headers.get(header::REFERER).and_then(|r| r.to_str().ok()).and_then(origin_of),
    };
    let Some(origin) = origin.filter(|o| *o != "null") else { return false };
    if allowed(origin) {
        return true;
    }
    match (origin.get(..8), host) {
        (Some(scheme), Some(host)) if scheme.eq_ignore_ascii_case("https://") => origin[8..].eq_ignore_ascii_case(host),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (n, v) in pairs {
            m.append(n.clone(), HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("")));
        }
        m
    }

    #[test]
    fn reads_and_strips_only_ours() {
        let mut m = h(&[(header::COOKIE, "a=1; authgate_access=tok; b=2"), (header::COOKIE, "authgate_refresh=r")]);
        assert_eq!(get(&m, ACCESS), Ok(Some("tok")));
        assert_eq!(get(&m, REFRESH), Ok(Some("r")));
        assert_eq!(get(&m, "c"), Ok(None));
        // Twice, in one field or over two: tossed, refused.
        assert_eq!(get(&h(&[(header::COOKIE, "authgate_access=a; authgate_access=b")]), ACCESS), Err(Repeated));
        assert_eq!(get(&h(&[(header::COOKIE, "authgate_access=a"), (header::COOKIE, "authgate_access=")]), ACCESS), Err(Repeated));
        assert_eq!(get(&h(&[(header::COOKIE, "authgate_access=")]), ACCESS), Ok(None));
        strip(&mut m);
        assert_eq!(m.get_all(header::COOKIE).iter().collect::<Vec<_>>(), vec!["a=1; b=2"]);
        let mut only = h(&[(header::COOKIE, "authgate_access=tok")]);
        strip(&mut only);
        assert!(!only.contains_key(header::COOKIE));
        // Split over fields (HTTP/2): joined into one.
        let mut split = h(&[(header::COOKIE, "a=1"), (header::COOKIE, "b=2")]);
        strip(&mut split);
        assert_eq!(split.get_all(header::COOKIE).iter().collect::<Vec<_>>(), vec!["a=1; b=2"]);
        let mut one = h(&[(header::COOKIE, "a=1;b=2")]);
        strip(&mut one);
        assert_eq!(one.get_all(header::COOKIE).iter().collect::<Vec<_>>(), vec!["a=1;b=2"], "one field is left as it is");
    }

    #[test]
    fn csrf_origins() {
        let allowed = |o: &str| o == "https://app.example.com";
        let ok = |pairs: &[(header::HeaderName, &str)]| same_or_allowed_origin(&h(pairs), Some("gw.example.com"), allowed);
        assert!(ok(&[(header::ORIGIN, "https://app.example.com")]));
        assert!(ok(&[(header::ORIGIN, "https://gw.example.com")]));
        assert!(!ok(&[(header::ORIGIN, "http://gw.example.com")]));
        assert!(!ok(&[(header::ORIGIN, "https://evil.example")]));
        assert!(!ok(&[(header::ORIGIN, "null")]));
        assert!(ok(&[(header::REFERER, "https://gw.example.com/page?x=1")]));
        assert!(!ok(&[(header::REFERER, "https://gw.example.com.evil.example/")]));
        assert!(!ok(&[]));
    }
}
