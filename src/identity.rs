//! Identity headers: every configured identity header and every header with
//! a stripped prefix is removed from each request (whatever its case, on
//! every route); the verified identity is then written in their place.

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};

use crate::config::IdentityConfig;
use crate::error::{GatewayError, TokenError};
use crate::jwt::{HeaderValues, Identity, Signer};

/// How long an assertion (`identity.assertion_header`) is valid.
pub const ASSERTION_TTL: std::time::Duration = std::time::Duration::from_secs(60);
/// Claims the assertion sets itself; a forwarded claim cannot replace them.
const REGISTERED: [&str; 7] = ["sub", "iss", "aud", "iat", "exp", "nbf", "jti"];

/// The headers authgate writes about the client (see `proxy::rewrite_headers`).
const FORWARDING: [&str; 4] = ["x-real-ip", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"];

pub struct IdentityRules {
    /// Tells these rules from a reload's (see `Identity::header_values`).
    id: u64,
    config: IdentityConfig,
    /// The identity headers' names and the stripped prefixes, lower case,
    /// with `_` written as `-`.
    names: Vec<String>,
    prefixes: Vec<String>,
}

/// `name` with `_` as `-`: CGI, WSGI, PHP and the like turn both
/// `X-Auth-Subject` and `X_Auth_Subject` into `HTTP_X_AUTH_SUBJECT`, so a
/// client must not get either past authgate.
pub(crate) fn dashed(name: &str) -> String {
    name.replace('_', "-")
}

impl IdentityRules {
    pub fn new(config: IdentityConfig) -> IdentityRules {
        let c = &config;
        let names = std::iter::once(&c.subject_header)
            .chain(c.claim_headers.iter().map(|(_, h)| h))
            .chain(c.assertion_header.as_ref())
            .map(|h| dashed(h.as_str()))
            .collect();
        let prefixes = c.strip_prefixes.iter().map(|p| dashed(p)).collect();
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        IdentityRules { id, config, names, prefixes }
    }

    pub fn config(&self) -> &IdentityConfig {
        &self.config
    }

    /// An identity header, or (spelt with `_`) one that authgate sets
    /// about the client: `X_Real_IP` would reach a CGI-style upstream as
    /// `HTTP_X_REAL_IP` beside, or instead of, the `X-Real-IP` authgate
    /// wrote. Likewise a path or method override spelt with `_`
    /// (`X_Original_URL`), which `proxy::rewrite_headers` removes as `-`.
    fn is_identity_header(&self, name: &HeaderName) -> bool {
        let name = name.as_str();
        if name.contains('_') {
            let name = dashed(name);
            return self.is_identity_name(&name) || FORWARDING.contains(&name.as_str()) || crate::proxy::is_override(&name);
        }
        self.is_identity_name(name)
    }

    fn is_identity_name(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name) || self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
    }

    /// Removes every identity header the client sent. Header names are
    /// lower-case in `http`, and prefixes were lower-cased at load.
    pub fn strip(&self, headers: &mut HeaderMap) {
        // Collect first: a HeaderMap cannot be changed while iterated.
        let doomed: Vec<HeaderName> = headers.keys().filter(|n| self.is_identity_header(n)).cloned().collect();
        for name in doomed {
            headers.remove(&name);
        }
    }

    /// Writes the subject and the configured claims. A claim that cannot be
    /// one clean header value refuses the request instead of being mangled.
    /// The values are built once per identity: a cached token's next
    /// requests clone them.
    pub fn apply(&self, headers: &mut HeaderMap, identity: &Identity) -> Result<(), TokenError> {
        let (built_by, values) = identity.header_values.get_or_init(|| (self.id, self.values(identity)));
        let other_rules;
        let values = if *built_by == self.id {
            values
        } else {
            other_rules = self.values(identity);
            &other_rules
        };
        let values = values.as_ref().map_err(|e| *e)?;
        let names = std::iter::once(&self.config.subject_header).chain(self.config.claim_headers.iter().map(|(_, h)| h));
        for (name, value) in names.zip(values) {
            if let Some(v) = value {
                headers.insert(name.clone(), v.clone());
            }
        }
        Ok(())
    }

    fn values(&self, identity: &Identity) -> HeaderValues {
        let mut values = Vec::with_capacity(1 + self.config.claim_headers.len());
        values.push(Some(header_value(identity.sub())?));
        for (claim, _) in &self.config.claim_headers {
            values.push(match identity.claim(claim) {
                Some(v) => claim_value(claim, v)?,
                None => None,
            });
        }
        Ok(values)
    }

    /// `identity.assertion_header`: a JWT signed by our key, valid for
    /// [`ASSERTION_TTL`], with `sub`, the claims forwarded as headers and
    /// `aud` = the route's path, so that an upstream can check with
    /// `/.well-known/jwks.json` that the request really came through us.
    pub fn assert(&self, headers: &mut HeaderMap, identity: &Identity, signer: Option<&Signer>, route: &str) -> Result<(), GatewayError> {
        let Some(name) = &self.config.assertion_header else { return Ok(()) };
        // Config validation guarantees a signing key; be safe anyway.
        let signer = signer.ok_or_else(|| GatewayError::Unavailable("identity.assertion_header needs a signing key".into()))?;
        let claims: Map<String, Value> = self
            .config
            .claim_headers
            .iter()
            .filter_map(|(claim, _)| Some((claim.clone(), identity.claim(claim)?.clone())))
            .filter(|(claim, _)| !REGISTERED.contains(&claim.as_str()))
            .collect();
        let token = signer
            .sign_assertion(identity.sub(), &claims, route, ASSERTION_TTL)
            .map_err(|e| GatewayError::Unavailable(format!("cannot sign the assertion: {e}")))?;
        let value = HeaderValue::from_str(&token).map_err(|_| GatewayError::Unavailable("the assertion is not a header value".into()))?;
        headers.insert(name.clone(), value);
        Ok(())
    }

    /// The identity headers as they would be sent (for `/auth/verify`).
    pub fn headers_for(&self, identity: &Identity) -> Result<HeaderMap, TokenError> {
        let mut h = HeaderMap::new();
        self.apply(&mut h, identity)?;
        Ok(h)
    }
}

/// One clean header value, or the request is refused: an upstream must
/// read the value authgate checked. So no control character (CR, LF and NUL
/// would split or break the header; a tab or a C1 control may be dropped or
/// trimmed by the upstream's parser) and no whitespace at either end (which
/// parsers trim: a `sub` of `"\talice"` would reach the upstream as
/// `alice`, one that `revoke --sub alice` does not cover).
fn header_value(s: &str) -> Result<HeaderValue, TokenError> {
    let clean = match s.as_bytes() {
        // ASCII, the common case, by bytes: no control, no space at an end.
        b if b.is_ascii() => b.iter().all(|&c| c >= b' ' && c != 0x7f) && b.first() != Some(&b' ') && b.last() != Some(&b' '),
        _ => !s.chars().any(char::is_control) && s.trim().len() == s.len(),
    };
    if !clean {
        return Err(TokenError::BadClaimValue);
    }
    HeaderValue::from_bytes(s.as_bytes()).map_err(|_| TokenError::BadClaimValue)
}

/// A claim as one header value: strings as they are, numbers and booleans as
/// JSON text, arrays joined with `,`, objects as compact JSON. An array
/// element that holds `,` or has whitespace at either end is refused: the
/// upstream would split it apart or trim it into another value. So is a
/// `roles` string that holds `,`: authgate checks it as one role, and the
/// upstream would read it as several (`"admin,user"` as `admin`).
fn claim_value(name: &str, v: &Value) -> Result<Option<HeaderValue>, TokenError> {
    let text = match v {
        Value::Null => return Ok(None),
        Value::String(s) if name == "roles" && s.contains(',') => return Err(TokenError::BadClaimValue),
        Value::String(s) => s.clone(),
        Value::Number(n) if !exact(n) => return Err(TokenError::BadClaimValue),
        // A roles object would reach the upstream as JSON text holding
        // commas, read as a list of roles authgate never saw.
        Value::Object(_) if name == "roles" => return Err(TokenError::BadClaimValue),
        Value::Bool(_) | Value::Number(_) | Value::Object(_) => v.to_string(),
        Value::Array(items) => {
            let mut parts = Vec::with_capacity(items.len());
            for item in items {
                let s = match item {
                    Value::String(s) => s.clone(),
                    Value::Number(n) if !exact(n) => return Err(TokenError::BadClaimValue),
                    Value::Bool(_) | Value::Number(_) => item.to_string(),
                    _ => return Err(TokenError::BadClaimValue),
                };
                if s.contains(',') || s.trim().len() != s.len() {
                    return Err(TokenError::BadClaimValue);
                }
                parts.push(s);
            }
            parts.join(",")
        }
    };
    header_value(&text).map(Some)
}

/// Whether a number reaches the upstream as the token wrote it: integers
/// within 64 bits are kept exactly, and so is a float within 2^53; a
/// larger float may be an integer the JSON parser rounded
/// (12345678901234567890123 would be sent as 1.2345678901234568e+22).
fn exact(n: &serde_json::Number) -> bool {
    n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.abs() < 9_007_199_254_740_992.0)
}

/// Whether the gateway would forward `value` as claim `name`'s header, or
/// refuse a token carrying it (for `authgate token`).
pub fn forwardable(name: &str, value: &Value) -> bool {
    claim_value(name, value).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn claim_values() {
        let hv = |v: Value| claim_value("email", &v).map(|o| o.map(|h| h.to_str().unwrap_or("<non-ascii>").to_string()));
        assert_eq!(hv(json!("a")), Ok(Some("a".into())));
        assert_eq!(hv(json!(["admin", "user"])), Ok(Some("admin,user".into())));
        assert_eq!(hv(json!(42)), Ok(Some("42".into())));
        assert_eq!(hv(json!(null)), Ok(None));
        assert_eq!(hv(json!("a\r\nX-Auth-Subject: root")), Err(TokenError::BadClaimValue));
        assert_eq!(hv(json!("a\nb")), Err(TokenError::BadClaimValue));
        assert_eq!(hv(json!(["a,b"])), Err(TokenError::BadClaimValue));
        assert!(claim_value("name", &json!("Zoë")).is_ok());
        assert_eq!(hv(json!("Doe, Jane")), Ok(Some("Doe, Jane".into())), "a comma inside a string is kept");
        // Controls an upstream may drop or trim, and whitespace at either end.
        for bad in [json!("a\tb"), json!("a\u{85}b"), json!("a\u{7f}"), json!(" a"), json!("a "), json!("\ta")] {
            assert_eq!(hv(bad.clone()), Err(TokenError::BadClaimValue), "{bad}");
        }
        for bad in [json!(["user", " admin"]), json!(["user", "admin\t"]), json!(["a,b"])] {
            assert_eq!(hv(bad.clone()), Err(TokenError::BadClaimValue), "{bad}");
        }
        // A roles string is one role to authgate; with a comma it would be
        // several to the upstream.
        assert_eq!(claim_value("roles", &json!("admin,user")), Err(TokenError::BadClaimValue));
        assert_eq!(claim_value("roles", &json!({ "a": "x", "b": "y" })), Err(TokenError::BadClaimValue));
        // Numbers as the token wrote them, or refused.
        let big: Value = serde_json::from_str("12345678901234567890123").expect("json");
        assert_eq!(hv(big.clone()), Err(TokenError::BadClaimValue));
        assert_eq!(hv(json!([big])), Err(TokenError::BadClaimValue));
        assert_eq!(hv(json!(18446744073709551615u64)), Ok(Some("18446744073709551615".into())));
        assert_eq!(hv(json!(-42)), Ok(Some("-42".into())));
        assert_eq!(hv(json!(1.5)), Ok(Some("1.5".into())));
        assert!(claim_value("roles", &json!("admin")).is_ok());
        assert!(header_value("alice").is_ok());
        assert_eq!(header_value("\talice"), Err(TokenError::BadClaimValue));
    }
}
