//! The one response body type: either bytes we built or an upstream's
//! streamed body, boxed so both fit one `Response<Body>`.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};

pub type Body = BoxBody<Bytes, hyper::Error>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}
