//! Token verification (`verify() -> Identity`) and minting (`sign()`).
//!
//! The header and claims are parsed here, strictly (duplicate keys, `crit`,
//! `typ`, claim types); jsonwebtoken checks the signature with aws-lc-rs.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

use crate::error::TokenError;
use crate::keys::KeySet;

/// Longer tokens are refused before any decoding work.
pub const MAX_TOKEN_BYTES: usize = 8192;

/// A verified identity. Only `Verifier::verify` builds one.
#[derive(Clone)]
pub struct Identity {
    sub: String,
    exp: u64,
    iat: Option<u64>,
    /// What revokes this token: the `jti` (`{iss}#{jti}` for an external
    /// issuer's), or for a token without one a digest of its signed part
    /// (see `content_id`), so that every token can be revoked.
    jti: String,
    /// For an external issuer's `{iss}#{jti}`, where the bare `jti` starts
    /// (0 otherwise): see `legacy_jti`.
    bare_jti: usize,
    claims: Map<String, Value>,
    /// The identity headers' values, built by the first request that
    /// forwards this identity (`IdentityRules::apply`) and reused by the
    /// next ones of the same cached token; tagged with the rules that built
    /// them.
    pub(crate) header_values: std::sync::OnceLock<(u64, HeaderValues)>,
}

/// The values of the identity headers (the subject's, then each claim
/// header's, absent when the claim is), or why they cannot be sent.
pub(crate) type HeaderValues = Result<Vec<Option<http::HeaderValue>>, TokenError>;

impl Identity {
    pub fn sub(&self) -> &str {
        &self.sub
    }
    pub fn exp(&self) -> u64 {
        self.exp
    }
    pub fn iat(&self) -> Option<u64> {
        self.iat
    }
    /// What revokes this token: its `jti`, or for a token without one
    /// (an IdP's, say) `sha256:` and the digest of its signed part.
    pub fn jti(&self) -> &str {
        &self.jti
    }
    /// An external issuer's token's bare `jti`: what revoked it before
    /// jtis were scoped by their issuer. Such revocations, recorded by an
    /// earlier version, must still hold until they expire. (Nothing
    /// records a bare jti for an external token any more.)
    pub fn legacy_jti(&self) -> Option<&str> {
        (self.bare_jti > 0).then(|| &self.jti[self.bare_jti..])
    }
    pub fn claim(&self, name: &str) -> Option<&Value> {
        self.claims.get(name)
    }
    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }

    /// Strings of the `roles` claim (a string array, or one string).
    pub fn roles(&self) -> impl Iterator<Item = &str> {
        strings(self.claims.get("roles"), false)
    }

    /// Scopes from `scope` (space-separated string) and `scp` (array or string).
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        strings(self.claims.get("scope"), true).chain(strings(self.claims.get("scp"), true))
    }
}

fn strings(v: Option<&Value>, split_spaces: bool) -> Box<dyn Iterator<Item = &str> + '_> {
    match v {
        Some(Value::String(s)) if split_spaces => Box::new(s.split(' ').filter(|s| !s.is_empty())),
        Some(Value::String(s)) => Box::new(std::iter::once(s.as_str())),
        Some(Value::Array(a)) => Box::new(a.iter().filter_map(Value::as_str)),
        _ => Box::new(std::iter::empty()),
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity").field("sub", &self.sub).field("exp", &self.exp).finish_non_exhaustive()
    }
}

/// Unix seconds now, for bookkeeping (store times, pruning); 0 when the
/// clock reads before 1970. Checking a token's times uses [`clock`].
pub fn now_secs() -> u64 {
    clock().unwrap_or(0)
}

/// The system clock reads before 1970.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockBeforeEpoch;

/// Unix seconds now, or an error when the clock reads before 1970: as 0,
/// no `exp` would ever be reached, and every expired token would pass.
pub fn clock() -> Result<u64, ClockBeforeEpoch> {
    unix_secs(SystemTime::now())
}

fn unix_secs(t: SystemTime) -> Result<u64, ClockBeforeEpoch> {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).map_err(|_| ClockBeforeEpoch)
}

/// A JSON object that refuses duplicate keys (RFC 8725 §3.4: parsers that
/// keep the first or the last key disagree, and attackers use that).
struct StrictObject(Map<String, Value>);

impl<'de> serde::Deserialize<'de> for StrictObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrictObject;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StrictObject, A::Error> {
                let mut out = Map::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    if out.insert(k, v).is_some() {
                        return Err(serde::de::Error::custom("duplicate key"));
                    }
                }
                Ok(StrictObject(out))
            }
        }
        d.deserialize_map(V)
    }
}

fn decode_part(part: &str) -> Result<Map<String, Value>, TokenError> {
    let bytes = B64.decode(part).map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice::<StrictObject>(&bytes).map(|o| o.0).map_err(|_| TokenError::Malformed)
}

/// A NumericDate: a non-negative JSON number (fractions allowed by RFC 7519).
fn numeric_date(v: &Value) -> Result<u64, TokenError> {
    match v {
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                return Ok(u);
            }
            match n.as_f64() {
                Some(f) if (0.0..1e15).contains(&f) => Ok(f as u64),
                _ => Err(TokenError::Malformed),
            }
        }
        _ => Err(TokenError::Malformed),
    }
}

pub struct Verifier {
    keys: KeySet,
    alg_name: String,
    issuer: String,
    audience: String,
    leeway: u64,
}

impl Verifier {
    pub fn new(keys: KeySet, issuer: String, audience: String, leeway: std::time::Duration) -> Verifier {
        let alg_name = serde_json::to_value(keys.algorithm).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        Verifier { keys, alg_name, issuer, audience, leeway: leeway.as_secs() }
    }

    pub fn keys(&self) -> &KeySet {
        &self.keys
    }

    pub fn verify(&self, token: &str, now: u64) -> Result<Identity, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Malformed);
        };
        if h.is_empty() || p.is_empty() || s.is_empty() {
            return Err(TokenError::Malformed);
        }
        let header = decode_part(h)?;
        let message = &token[..h.len() + 1 + p.len()];
        // Another issuer's token: chosen by its (not yet verified) `iss`,
        // then verified in full with that issuer's keys, algorithms and
        // audience. Our own issuer name always means our own keys.
        if !self.keys.external.is_empty() {
            let claims = decode_part(p)?;
            if let Some(Value::String(iss)) = claims.get("iss")
                && *iss != self.issuer
            {
                // An issuer we do not know: say so, rather than that our own
                // algorithm does not match its.
                let ext = self.keys.external.iter().find(|e| e.config.issuer == *iss).ok_or(TokenError::Issuer)?;
                check_header(&header)?;
                ext.verify(&header, message, s)?;
                let (issuer, audience) = (&ext.config.issuer, &ext.config.audience);
                return check_claims(claims, now, self.leeway, issuer, audience, message, true);
            }
        }
        // The algorithm is ours to choose, not the token's: compare the exact string.
        if header.get("alg").and_then(Value::as_str) != Some(self.alg_name.as_str()) {
            return Err(TokenError::Algorithm);
        }
        check_header(&header)?;
        // jwk/jku/x5u/x5c in the header are never used to find a key.
        // `kid` is only a hint: another issuer's tokens (verify-only
        // `public_key`) name keys their own way, so an unknown kid falls back
        // to every configured key. Either way, only our keys can verify.
        let all = || self.keys.verify.iter().collect::<Vec<_>>();
        let candidates: Vec<_> = match header.get("kid") {
            None => all(),
            Some(Value::String(kid)) => {
                let named: Vec<_> = self.keys.verify.iter().filter(|k| &k.kid == kid).collect();
                if named.is_empty() { all() } else { named }
            }
            Some(_) => return Err(TokenError::Malformed),
        };
        if candidates.is_empty() {
            return Err(TokenError::UnknownKey);
        }
        let mut valid = false;
        for k in candidates {
            match jsonwebtoken::crypto::verify(s, message.as_bytes(), &k.key, self.keys.algorithm) {
                Ok(true) => {
                    valid = true;
                    break;
                }
                Ok(false) => {}
                Err(_) => return Err(TokenError::Signature),
            }
        }
        if !valid {
            return Err(TokenError::Signature);
        }
        let claims = decode_part(p)?;
        check_claims(claims, now, self.leeway, &self.issuer, &self.audience, message, false)
    }

    /// Moves on whenever an external issuer's key set changes: a token
    /// verified under an earlier generation must be verified again.
    pub fn key_generation(&self) -> u64 {
        self.keys.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The external issuers (`[[jwt.issuers]]`).
    pub fn issuers(&self) -> &[std::sync::Arc<crate::jwks::Issuer>] {
        &self.keys.external
    }

    /// Starts the background JWKS refresh of each external issuer (needs a runtime).
    pub fn spawn_refresh(&self) {
        for issuer in &self.keys.external {
            issuer.spawn_refresh();
        }
    }
}

/// `crit` is refused (we implement no extension); `typ`, when present, must
/// say JWT or access token.
fn check_header(header: &Map<String, Value>) -> Result<(), TokenError> {
    if header.contains_key("crit") {
        return Err(TokenError::Critical);
    }
    match header.get("typ") {
        None => Ok(()),
        // RFC 7515 §4.1.9: the "application/" prefix may be left out.
        Some(Value::String(t)) if ["jwt", "at+jwt", "application/jwt", "application/at+jwt"].contains(&t.to_ascii_lowercase().as_str()) => {
            Ok(())
        }
        Some(_) => Err(TokenError::Type),
    }
}

/// A token's identity for revocation when it has no `jti`: the digest of
/// its signed part (header and payload), not of the whole token, since an
/// ECDSA signature can be rewritten into another valid one (high S), and
/// that copy must be revoked with the original.
fn content_id(message: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, message.as_bytes());
    format!("sha256:{}", B64.encode(digest.as_ref()))
}

fn check_claims(
    claims: Map<String, Value>,
    now: u64,
    leeway: u64,
    issuer: &str,
    audience: &str,
    message: &str,
    external: bool,
) -> Result<Identity, TokenError> {
    let exp = numeric_date(claims.get("exp").ok_or(TokenError::MissingClaim)?)?;
    // RFC 7519 4.1.4: not accepted on or after `exp`. `now` is whole
    // seconds, so `now >= exp` is "the current time has reached exp".
    if now >= exp.saturating_add(leeway) {
        return Err(TokenError::Expired);
    }
    if let Some(nbf) = claims.get("nbf")
        && numeric_date(nbf)? > now.saturating_add(leeway)
    {
        return Err(TokenError::NotYetValid);
    }
    // A future `iat` is judged with the subject's revoke-all cut-off, on
    // every request (App::authenticate).
    let iat = claims.get("iat").map(numeric_date).transpose()?;
    match claims.get("iss") {
        Some(Value::String(iss)) if *iss == issuer => {}
        Some(_) => return Err(TokenError::Issuer),
        None => return Err(TokenError::MissingClaim),
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => *a == audience,
        // RFC 7519 §4.1.3: an array of strings; anything else in it is malformed.
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => a.iter().any(|v| v.as_str() == Some(audience)),
        Some(Value::Array(_)) => return Err(TokenError::Malformed),
        Some(_) => false,
        None => return Err(TokenError::MissingClaim),
    };
    if !aud_ok {
        return Err(TokenError::Audience);
    }
    let sub = match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => return Err(TokenError::Malformed),
        None => return Err(TokenError::MissingClaim),
    };
    let (jti, bare_jti) = match claims.get("jti") {
        // RFC 7519 §4.1.7: a jti is unique within its issuer only, so an
        // external issuer's is scoped by it: an IdP's jti must not name
        // (and revoke) a token of ours or of another IdP.
        Some(Value::String(j)) if !j.is_empty() && external => (format!("{issuer}#{j}"), issuer.len() + 1),
        Some(Value::String(j)) if !j.is_empty() => (j.clone(), 0),
        Some(Value::String(_)) | None => (content_id(message), 0),
        Some(_) => return Err(TokenError::Malformed),
    };
    Ok(Identity { sub, exp, iat, jti, bare_jti, claims, header_values: std::sync::OnceLock::new() })
}

/// Mints tokens with the configured signing key.
pub struct Signer {
    algorithm: Algorithm,
    kid: String,
    key: EncodingKey,
    issuer: String,
    audience: String,
}

/// A freshly minted token and the facts about it the caller may need.
pub struct Minted {
    pub token: String,
    pub jti: String,
    pub exp: u64,
}

pub fn random_id(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // aws-lc's RNG only fails when the OS has no entropy source; a zeroed id
    // would be worse than a panic there, so treat it as fatal.
    aws_lc_rs::rand::fill(&mut buf).expect("the system random number generator failed");
    B64.encode(buf)
}

impl Signer {
    /// None when the key set cannot sign (verify-only deployments).
    pub fn new(keys: &KeySet, issuer: String, audience: String) -> Option<Signer> {
        let s = keys.sign.as_ref()?;
        Some(Signer { algorithm: keys.algorithm, kid: s.kid.clone(), key: s.key.clone(), issuer, audience })
    }

    /// Signs `sub` plus `extra` claims (which cannot override the registered ones).
    pub fn sign(&self, sub: &str, extra: &Map<String, Value>, ttl: std::time::Duration) -> Result<Minted, jsonwebtoken::errors::Error> {
        self.sign_issued_at(sub, extra, ttl, 0)
    }

    /// Like `sign`, with `iat` at least `min_iat`: a token minted in the
    /// second of a subject's revoke-all cut-off must not fall before it.
    pub fn sign_issued_at(
        &self,
        sub: &str,
        extra: &Map<String, Value>,
        ttl: std::time::Duration,
        min_iat: u64,
    ) -> Result<Minted, jsonwebtoken::errors::Error> {
        let now = now_secs();
        let exp = now.saturating_add(ttl.as_secs());
        let jti = random_id(16);
        let mut claims = extra.clone();
        for (k, v) in [
            ("sub", Value::from(sub)),
            ("iss", Value::from(self.issuer.as_str())),
            ("aud", Value::from(self.audience.as_str())),
            ("iat", Value::from(now.max(min_iat))),
            ("nbf", Value::from(now)),
            ("exp", Value::from(exp)),
            ("jti", Value::from(jti.as_str())),
        ] {
            claims.insert(k.into(), v);
        }
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.key)?;
        Ok(Minted { token, jti, exp })
    }

    /// A short-lived token vouching that a request came through authgate
    /// (`identity.assertion_header`): `sub`, the forwarded `claims`, our
    /// `iss`, `aud` = the route, `iat` and `exp`.
    pub fn sign_assertion(
        &self,
        sub: &str,
        claims: &Map<String, Value>,
        audience: &str,
        ttl: std::time::Duration,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = now_secs();
        let mut all = claims.clone();
        for (k, v) in [
            ("sub", Value::from(sub)),
            ("iss", Value::from(self.issuer.as_str())),
            ("aud", Value::from(audience)),
            ("iat", Value::from(now)),
            ("exp", Value::from(now + ttl.as_secs())),
        ] {
            all.insert(k.into(), v);
        }
        self.sign_claims(&all)
    }

    /// Signs arbitrary claims with the same key.
    pub fn sign_claims(&self, claims: &Map<String, Value>) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock before 1970 read as 0 seconds, so no `exp` was ever reached
    /// (`now >= exp + leeway` never held): an error now, which the request
    /// path answers 503 rather than judging a token.
    #[test]
    fn a_clock_before_1970_is_an_error_not_zero() {
        assert_eq!(unix_secs(UNIX_EPOCH - std::time::Duration::from_secs(1)), Err(ClockBeforeEpoch));
        assert_eq!(unix_secs(UNIX_EPOCH + std::time::Duration::from_secs(5)), Ok(5));
        let e = crate::error::GatewayError::from(ClockBeforeEpoch);
        assert_eq!(e.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    }
}
