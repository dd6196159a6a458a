//! The one place that maps a failure to a status, a JSON body and the
//! RFC 6750 `WWW-Authenticate` value.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{self, Body};

/// Why a token was refused. The text goes to the client in
/// `error_description` and to metrics as a reason label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    Algorithm,
    Signature,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
    MissingClaim,
    UnknownKey,
    Critical,
    Type,
    Revoked,
    BadClaimValue,
}

impl TokenError {
    pub fn description(self) -> &'static str {
        match self {
            TokenError::Malformed => "the token is malformed",
            TokenError::Algorithm => "the token's algorithm is not accepted",
            TokenError::Signature => "the token's signature is invalid",
            TokenError::Expired => "the token has expired",
            TokenError::NotYetValid => "the token is not valid yet",
            TokenError::Issuer => "the token's issuer is not accepted",
            TokenError::Audience => "the token's audience is not accepted",
            TokenError::MissingClaim => "the token lacks a required claim",
            TokenError::UnknownKey => "the token's key is unknown",
            TokenError::Critical => "the token has an unsupported critical header",
            TokenError::Type => "the token is not an access token",
            TokenError::Revoked => "the token has been revoked",
            TokenError::BadClaimValue => "a claim of the token cannot be forwarded as a header",
        }
    }

    /// Short label for metrics and logs.
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::Algorithm => "algorithm",
            TokenError::Signature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::Issuer => "wrong_issuer",
            TokenError::Audience => "wrong_audience",
            TokenError::MissingClaim => "missing_claim",
            TokenError::UnknownKey => "unknown_key",
            TokenError::Critical => "critical_header",
            TokenError::Type => "wrong_type",
            TokenError::Revoked => "revoked",
            TokenError::BadClaimValue => "bad_claim_value",
        }
    }
}

/// Every failure the gateway answers itself.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("no token")]
    Unauthorized,
    #[error("invalid token: {}", .0.description())]
    InvalidToken(TokenError),
    #[error("role or scope missing")]
    InsufficientScope,
    /// Refused whatever the token: a cookie-authenticated state-changing
    /// request from an origin that is not allowed (CSRF).
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("no route")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    #[error("body too large")]
    PayloadTooLarge,
    /// The request body did not arrive within `server.body_timeout`.
    #[error("request body too slow")]
    RequestTimeout,
    #[error("rate limited")]
    RateLimited { retry_after_secs: u64 },
    #[error("header section too large")]
    HeaderTooLarge,
    #[error("upstream failed: {0}")]
    BadGateway(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The store failed (counted in the `store_errors` metric).
    #[error("unavailable: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("upstream timed out")]
    GatewayTimeout,
    /// RFC 6749 §5.2 errors of the token endpoint (400, or 401 for invalid_client).
    #[error("{error}: {description}")]
    OAuth { error: &'static str, description: &'static str },
}

/// A clock before 1970 would put every `exp` in the future: refuse to
/// judge tokens (503, logged with the detail) rather than pass them.
impl From<crate::jwt::ClockBeforeEpoch> for GatewayError {
    fn from(_: crate::jwt::ClockBeforeEpoch) -> GatewayError {
        GatewayError::Unavailable("the system clock reads before 1970: tokens cannot be checked".into())
    }
}

const BEARER_REALM: HeaderValue = HeaderValue::from_static("Bearer realm=\"authgate\"");
const INSUFFICIENT_SCOPE: HeaderValue = HeaderValue::from_static("Bearer error=\"insufficient_scope\"");
const JSON: HeaderValue = HeaderValue::from_static("application/json");
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::Unauthorized | GatewayError::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            GatewayError::InsufficientScope | GatewayError::Forbidden(_) => StatusCode::FORBIDDEN,
            GatewayError::NotFound => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            GatewayError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            GatewayError::Unavailable(_) | GatewayError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::OAuth { error: "invalid_client", .. } => StatusCode::UNAUTHORIZED,
            GatewayError::OAuth { .. } => StatusCode::BAD_REQUEST,
        }
    }

    fn code_and_description(&self) -> (&'static str, &str) {
        match self {
            GatewayError::BadRequest(d) => ("bad_request", d),
            GatewayError::Unauthorized => ("unauthorized", "a bearer token is required"),
            GatewayError::InvalidToken(e) => ("invalid_token", e.description()),
            GatewayError::InsufficientScope => ("insufficient_scope", "the token lacks the role or scope this route requires"),
            GatewayError::Forbidden(d) => ("forbidden", d),
            GatewayError::NotFound => ("not_found", "no route matches this path"),
            GatewayError::MethodNotAllowed(d) => ("method_not_allowed", d),
            GatewayError::PayloadTooLarge => ("payload_too_large", "the request body is too large"),
            GatewayError::RequestTimeout => ("request_timeout", "the request body arrived too slowly"),
            GatewayError::RateLimited { .. } => ("rate_limited", "too many requests; retry later"),
            GatewayError::HeaderTooLarge => ("request_header_fields_too_large", "the request header section is too large"),
            GatewayError::BadGateway(_) => ("bad_gateway", "the upstream could not be reached or answered badly"),
            GatewayError::Unavailable(_) | GatewayError::Store(_) => ("unavailable", "a backing service is unavailable; retry later"),
            GatewayError::GatewayTimeout => ("gateway_timeout", "the upstream did not answer in time"),
            GatewayError::OAuth { error, description } => (error, description),
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let (code, description) = self.code_and_description();
        let json = serde_json::json!({ "error": code, "error_description": description });
        let mut resp = Response::new(body::full(Bytes::from(json.to_string())));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, JSON);
        h.insert(header::CACHE_CONTROL, NO_STORE);
        match &self {
            GatewayError::Unauthorized => {
                h.insert(header::WWW_AUTHENTICATE, BEARER_REALM);
            }
            GatewayError::InvalidToken(e) => {
                let v = format!("Bearer error=\"invalid_token\", error_description=\"{}\"", e.description());
                if let Ok(v) = HeaderValue::from_str(&v) {
                    h.insert(header::WWW_AUTHENTICATE, v);
                }
            }
            GatewayError::InsufficientScope => {
                h.insert(header::WWW_AUTHENTICATE, INSUFFICIENT_SCOPE);
            }
            GatewayError::RateLimited { retry_after_secs } => {
                h.insert(header::RETRY_AFTER, HeaderValue::from((*retry_after_secs).max(1)));
            }
            GatewayError::Unavailable(_) | GatewayError::Store(_) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            GatewayError::MethodNotAllowed(_) => {
                h.insert(header::ALLOW, HeaderValue::from_static("POST"));
            }
            _ => {}
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_error_fits_in_a_header() {
        use TokenError::*;
        for e in [
            Malformed,
            Algorithm,
            Signature,
            Expired,
            NotYetValid,
            Issuer,
            Audience,
            MissingClaim,
            UnknownKey,
            Critical,
            Type,
            Revoked,
            BadClaimValue,
        ] {
            let r = GatewayError::InvalidToken(e).into_response();
            assert!(r.headers().contains_key(header::WWW_AUTHENTICATE), "{e:?}");
        }
    }
}
