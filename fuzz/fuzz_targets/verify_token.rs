//! `Verifier::verify` on arbitrary text (first byte 0), or on a token our
//! key signed around an arbitrary payload (first byte 1), so that both the
//! token parser and the claim checks behind the signature are reached.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let f = common::fixture();
    let now = authgate::jwt::now_secs();
    let token = match mode % 2 {
        0 => match std::str::from_utf8(rest) {
            Ok(s) => s.to_string(),
            Err(_) => return,
        },
        _ => common::signed(rest),
    };
    if let Ok(id) = f.verifier.verify(&token, now) {
        // Whatever passed holds the invariants the pipeline relies on.
        assert!(!id.sub().is_empty());
        assert!(token.len() <= authgate::jwt::MAX_TOKEN_BYTES);
        assert!(id.exp().saturating_add(30) >= now);
    }
});
