//! Path normalisation and the route table: the longest `path` prefix on a
//! segment boundary wins, matched on the same normalised path the upstream
//! will receive.

use std::ops::Deref;
use std::sync::Arc;

use crate::config::RouteConfig;
use crate::route_limit::RouteLimiter;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotAbsolute,
    BadEscape,
    EncodedSeparator,
    Backslash,
    AboveRoot,
    ParameterDotSegment,
}

impl PathError {
    pub fn description(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "the request target must be an absolute path",
            PathError::BadEscape => "the path holds an invalid percent-escape",
            PathError::EncodedSeparator => "the path holds an encoded '/', '\\' or NUL",
            PathError::Backslash => "the path holds a '\\'",
            PathError::AboveRoot => "the path climbs above '/'",
            PathError::ParameterDotSegment => "the path holds a dot-segment with parameters, or after a segment of parameters only",
        }
    }
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.description())
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// What a path may hold as it is (RFC 3986 `pchar`, `/`, `%` of an escape).
fn is_path_byte(b: u8) -> bool {
    is_unreserved(b) || matches!(b, b'/' | b'%' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' | b':' | b'@')
}

fn push_escape(out: &mut String, v: u8) {
    out.push('%');
    out.push(char::from(b"0123456789ABCDEF"[(v >> 4) as usize]));
    out.push(char::from(b"0123456789ABCDEF"[(v & 15) as usize]));
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// RFC 3986 normalisation of a request path: encode bytes a path may not
/// hold raw (UTF-8, space, quotes), decode unreserved escapes (and
/// upper-case the others), merge repeated `/`, remove `.` and `..` segments.
/// Refuses what backends disagree about: an encoded `/`, `\` or NUL, a raw
/// `\` (a separator on Windows and IIS, so `/public\..\admin` would be
/// `/admin` there), a climb above `/`, and `..;`-style segments that Java
/// servers treat as `..`.
pub fn normalise_path(raw: &str) -> Result<String, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if raw.contains('\\') {
        return Err(PathError::Backslash);
    }
    // Fast path: nothing to decode or encode, no dot or empty segments.
    let b = raw.as_bytes();
    let simple = b.iter().all(|&c| c != b'%' && is_path_byte(c)) && !raw.contains("//") && !raw.contains("/.");
    if simple {
        return Ok(raw.to_string());
    }

    let mut decoded = String::with_capacity(raw.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let (Some(h), Some(l)) = (b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) else {
                return Err(PathError::BadEscape);
            };
            let v = h << 4 | l;
            if matches!(v, b'/' | b'\\' | 0) {
                return Err(PathError::EncodedSeparator);
            }
            if is_unreserved(v) {
                decoded.push(v as char);
            } else {
                push_escape(&mut decoded, v);
            }
            i += 3;
        } else if c == 0 {
            return Err(PathError::EncodedSeparator);
        } else {
            // Raw UTF-8 (`/café`), a space and the like are encoded, as a
            // client should have sent them: `/café` and `/caf%C3%A9` are
            // one path to the upstream, so they must be one to the routes.
            if is_path_byte(c) {
                decoded.push(c as char);
            } else {
                push_escape(&mut decoded, c);
            }
            i += 1;
        }
    }

    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut trailing_slash = false;
    for (n, seg) in segments.iter().enumerate() {
        match *seg {
            "" => trailing_slash = n == last,
            "." => trailing_slash = n == last,
            ".." => {
                match out.pop() {
                    None => return Err(PathError::AboveRoot),
                    // `/public/;x/../admin`: here `..` cancels `;x`, but a
                    // Java server drops `;x` first, merges the empty
                    // segment and lets `..` cancel `public` (`/admin`).
                    // Behind forward-auth the backend gets the raw path.
                    Some(prev) if prev.starts_with(';') => return Err(PathError::ParameterDotSegment),
                    Some(_) => {}
                }
                trailing_slash = n == last;
            }
            s if s.starts_with("..;") || s.starts_with(".;") => return Err(PathError::ParameterDotSegment),
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut path = String::with_capacity(decoded.len());
    for seg in &out {
        path.push('/');
        path.push_str(seg);
    }
    if path.is_empty() || trailing_slash {
        path.push('/');
    }
    Ok(path)
}

/// One entry of the route table: the route as configured, plus what the
/// hot path needs prepared once (its label for metrics and the access log,
/// its rate limiter).
pub struct Route {
    pub config: RouteConfig,
    pub label: Arc<String>,
    pub limiter: Option<Arc<RouteLimiter>>,
}

impl Deref for Route {
    type Target = RouteConfig;
    fn deref(&self) -> &RouteConfig {
        &self.config
    }
}

/// Routes ordered longest path first, so the first match is the longest.
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    pub fn new(mut routes: Vec<RouteConfig>) -> RouteTable {
        routes.sort_by_key(|r| std::cmp::Reverse(r.path.len()));
        let routes = routes
            .into_iter()
            .map(|config| Route {
                label: Arc::new(config.path.clone()),
                limiter: config.rate_limit.map(|rate| Arc::new(RouteLimiter::new(rate))),
                config,
            })
            .collect();
        RouteTable { routes }
    }

    /// The route whose path is the longest prefix of `path` on a segment boundary.
    /// Matching ignores `;params` in every segment, as Java servers do when
    /// they route (`/api;x/admin` is their `/api/admin`), so such a path
    /// meets the checks of the route the upstream will really serve.
    pub fn match_route(&self, path: &str) -> Option<&Route> {
        if path.contains(';') {
            let bare = without_segment_params(path);
            return self.routes.iter().find(|r| prefix_matches(&r.path, &bare));
        }
        self.routes.iter().find(|r| prefix_matches(&r.path, path))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    /// Keeps the counts of `previous` (the table before a reload) for every
    /// route whose path and rate did not change.
    pub fn carry_limiters(&mut self, previous: &RouteTable) {
        for r in &mut self.routes {
            let Some(limiter) = &r.limiter else { continue };
            if let Some(old) = previous.routes.iter().find(|o| o.path == r.path).and_then(|o| o.limiter.as_ref())
                && old.rate == limiter.rate
            {
                r.limiter = Some(old.clone());
            }
        }
    }

    /// Forgets replenished keys of every route limiter.
    pub fn prune_limiters(&self) {
        for l in self.routes.iter().filter_map(|r| r.limiter.as_ref()) {
            l.prune();
        }
    }
}

/// `/a;x/b;y=1` -> `/a/b`; a segment that was only params goes away.
pub(crate) fn without_segment_params(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for seg in path.split('/').skip(1).map(|seg| seg.split(';').next().unwrap_or("")).filter(|seg| !seg.is_empty()) {
        out.push('/');
        out.push_str(seg);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// `;` ends a segment too: Java servers route `/admin;jsessionid=x` to
/// `/admin`, so it must not escape the `/admin` route's checks.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/" || (path.starts_with(prefix) && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/' | b';')))
}

/// The path the upstream receives: with `strip_prefix`, the route's
/// segments removed. A path with segment parameters matched with them
/// ignored (`/api;v=1/x` is under `/api`), so then as many segments are
/// skipped as the route has, parameters and all (a segment that is only
/// parameters, `/;x`, does not count, as in matching).
pub fn upstream_path<'a>(route: &RouteConfig, path: &'a str) -> &'a str {
    if !route.strip_prefix || route.path == "/" {
        return path;
    }
    let rest = if path.contains(';') {
        let mut left = route.path.matches('/').count();
        let mut rest = path;
        while left > 0 && !rest.is_empty() {
            let end = rest[1..].find('/').map_or(rest.len(), |i| i + 1);
            if !rest[1..end].split(';').next().unwrap_or("").is_empty() {
                left -= 1;
            }
            rest = &rest[end..];
        }
        rest
    } else {
        path.get(route.path.len()..).unwrap_or("")
    };
    if rest.is_empty() { "/" } else { rest }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises() {
        let ok = |a: &str, b: &str| assert_eq!(normalise_path(a).as_deref(), Ok(b), "{a}");
        ok("/", "/");
        ok("/a/b", "/a/b");
        ok("/a/./b", "/a/b");
        ok("/a/../b", "/b");
        ok("/a/b/..", "/a/");
        ok("//admin", "/admin");
        ok("/a//b/", "/a/b/");
        ok("/%61dmin", "/admin");
        ok("/%2e%2e/x".replace("/%2e%2e", "/a/%2e%2e").as_str(), "/x");
        ok("/a%20b", "/a%20b");
        ok("/a%3fb", "/a%3Fb");
        ok("/public/%2E%2E/admin", "/admin");
        // Raw UTF-8 and a space become escapes: one form for the routes.
        ok("/caf\u{e9}", "/caf%C3%A9");
        ok("/caf%c3%a9", "/caf%C3%A9");
        ok("/\u{dc}n\u{ef}/x", "/%C3%9Cn%C3%AF/x");
        ok("/ad min", "/ad%20min");
        ok("/a\"b<c>", "/a%22b%3Cc%3E");
        ok("/a;b=c,d@e:f", "/a;b=c,d@e:f");
        let err = |a: &str, e: PathError| assert_eq!(normalise_path(a), Err(e), "{a}");
        err("/..", PathError::AboveRoot);
        err("/a/../../b", PathError::AboveRoot);
        err("/%2e%2e/admin", PathError::AboveRoot);
        err("/a%2fb", PathError::EncodedSeparator);
        err("/a%2Fb", PathError::EncodedSeparator);
        err("/a%5cb", PathError::EncodedSeparator);
        err("/a%00", PathError::EncodedSeparator);
        err("/a\0", PathError::EncodedSeparator);
        err("/public\\..\\admin", PathError::Backslash);
        err("/a%zz", PathError::BadEscape);
        err("/a%2", PathError::BadEscape);
        err("/public/..;/admin", PathError::ParameterDotSegment);
        err("/public/;x/../admin/secret", PathError::ParameterDotSegment);
        err("/public/;/../admin", PathError::ParameterDotSegment);
        err("*", PathError::NotAbsolute);
    }

    #[test]
    fn strip_prefix_removes_the_routes_segments_parameters_and_all() {
        let route = |p: &str| RouteConfig {
            path: p.into(),
            upstream: crate::config::Upstream::Echo,
            auth: crate::config::AuthMode::Public,
            roles: Vec::new(),
            scopes: Vec::new(),
            rate_limit: None,
            strip_prefix: true,
        };
        let r = route("/strip");
        assert_eq!(upstream_path(&r, "/strip/y"), "/y");
        assert_eq!(upstream_path(&r, "/strip"), "/");
        assert_eq!(upstream_path(&r, "/strip/"), "/");
        assert_eq!(upstream_path(&r, "/strip;x/y"), "/y");
        assert_eq!(upstream_path(&r, "/strip;x"), "/");
        assert_eq!(upstream_path(&r, "/;p/strip/y;q"), "/y;q");
        let r = route("/api/v1");
        assert_eq!(upstream_path(&r, "/api;x/v1/y"), "/y");
        assert_eq!(upstream_path(&r, "/api/;x/v1;z/y/z"), "/y/z");
        assert_eq!(upstream_path(&r, "/api/v1/y"), "/y");
    }

    #[test]
    fn segment_params_are_ignored_for_matching() {
        assert_eq!(without_segment_params("/api;/admin"), "/api/admin");
        assert_eq!(without_segment_params("/a;x=1/b;y"), "/a/b");
        assert_eq!(without_segment_params("/;/admin"), "/admin");
        assert_eq!(without_segment_params("/admin;jsessionid=1"), "/admin");
    }

    #[test]
    fn prefixes_on_segment_boundaries() {
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/x"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(prefix_matches("/api", "/api;v=1/x"));
        assert!(prefix_matches("/", "/anything"));
    }
}
