//! Identity headers: `IdentityRules::strip` on arbitrary client headers must
//! leave none with an identity name or a stripped prefix; `apply` with the
//! claims of an arbitrary (signed) payload must either refuse or write one
//! clean value per header, the subject being exactly `sub`.
#![no_main]

#[path = "common.rs"]
mod common;

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let f = common::fixture();
    // Client headers: "name: value" lines, as many as parse.
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (head, payload) = (&data[..split], data.get(split + 1..).unwrap_or_default());
    let mut headers = HeaderMap::new();
    for line in head.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (Ok(n), Ok(v)) = (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(&line[colon + 1..])) else { continue };
        headers.append(n, v);
    }
    f.identity.strip(&mut headers);
    for name in headers.keys() {
        let n = name.as_str();
        assert!(!n.starts_with("x-auth-") && !n.starts_with("x-user-") && n != "x-assert", "{n} survived strip");
    }
    // Identity from a signed payload, written over the stripped headers.
    let token = common::signed(payload);
    let Ok(id) = f.verifier.verify(&token, authgate::jwt::now_secs()) else { return };
    if f.identity.apply(&mut headers, &id).is_ok() {
        let subject = headers.get_all("x-auth-subject").iter().collect::<Vec<_>>();
        assert_eq!(subject.len(), 1);
        assert_eq!(subject[0].as_bytes(), id.sub().as_bytes());
        for (_, v) in &headers {
            assert!(!v.as_bytes().iter().any(|&b| b == b'\r' || b == b'\n' || b == 0));
        }
    }
});
