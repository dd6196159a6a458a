//! Findings of the fuzz targets in fuzz/, each kept as a regression test
//! named after what broke.

mod common;

use std::time::Duration;

use authgate::routes::normalise_path;
use common::*;

/// fuzz/normalise_path: a path holding a multi-byte UTF-8 character and a
/// dot-segment went through the decoding path byte by byte, each byte of
/// "ǝ" becoming a character of its own ("Ç\u{9d}"): the upstream would have
/// been sent another path, and normalising was not idempotent. Raw UTF-8
/// and control bytes are now encoded, each byte its escape.
#[test]
fn normalise_path_keeps_utf8_characters_whole() {
    let crash = std::str::from_utf8(b"/a/2.\xc7\x9d/.\x01/c(").expect("utf-8");
    let once = normalise_path(crash).expect("normalises");
    assert_eq!(once, "/a/2.%C7%9D/.%01/c(");
    assert_eq!(normalise_path(&once).as_deref(), Ok(once.as_str()), "not idempotent");
    for (raw, want) in [("/caf\u{e9}/./x", "/caf%C3%A9/x"), ("//\u{1f600}/%41", "/%F0%9F%98%80/A"), ("/\u{65e5}/../\u{672c}", "/%E6%9C%AC")]
    {
        assert_eq!(normalise_path(raw).as_deref(), Ok(want), "{raw}");
        assert_eq!(normalise_path(want).as_deref(), Ok(want), "not idempotent: {want}");
    }
}

/// The same through the gateway: a raw UTF-8 path (which some clients send
/// unencoded) reaches the upstream with its characters intact (encoded, as
/// RFC 3986 has them), or is refused; it is never forwarded mangled.
#[tokio::test]
async fn a_raw_utf8_path_is_forwarded_intact_or_refused() {
    let up = Upstream::start().await;
    let gw = Gateway::start("", &format!("[[routes]]\npath = \"/\"\nupstream = \"{}\"\nauth = \"public\"\n", up.url())).await;
    let req = "GET /a/./caf\u{e9} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let resp = raw_request(&gw, req.as_bytes(), Duration::from_secs(10)).await;
    match status_of(&resp) {
        200 => assert_eq!(up.last().path, "/a/caf%C3%A9"),
        400 => assert_eq!(up.hits(), 0),
        other => panic!("status {other}: {resp}"),
    }
    gw.stop().await;
}
