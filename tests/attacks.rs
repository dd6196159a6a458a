//! The JWT attack catalogue beyond tests/verify.rs (RFC 8725, the OWASP JWT
//! cheat sheet, jwt_tool's attack modes): `kid` traversal and injection,
//! `typ` confusion and an opaque refresh token used as a Bearer token,
//! signature stripping, claim type confusion (`sub`, `exp`, `aud`), invalid
//! base64url, tokens at and just over the 8 KB limit, deep JSON nesting.
//!
//! Every refusal asserts the 401 `invalid_token` answer (and its reason) and
//! that the upstream was never reached; where a variant is accepted on
//! purpose (a fractional `exp`, an `aud` array holding our audience), the
//! test says why and checks what the upstream received.

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

const MALFORMED: &str = "the token is malformed";
const SIGNATURE: &str = "the token's signature is invalid";
const ALGORITHM: &str = "the token's algorithm is not accepted";
const TYPE: &str = "the token is not an access token";
const AUDIENCE: &str = "the token's audience is not accepted";
const MISSING: &str = "the token lacks a required claim";

fn now() -> u64 {
    authgate::jwt::now_secs()
}

fn claims(sub: &str) -> Value {
    json!({ "sub": sub, "iss": "authgate", "aud": "api", "iat": now(), "exp": now() + 600 })
}

/// Signs the exact `header.payload` JSON text given.
fn sign_raw(header: &str, payload: &str, key: &EncodingKey, alg: Algorithm) -> String {
    let msg = format!("{}.{}", B64.encode(header), B64.encode(payload));
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), key, alg).expect("sign");
    format!("{msg}.{sig}")
}

fn sign(header: &Value, claims: &Value, key: &EncodingKey) -> String {
    sign_raw(&header.to_string(), &claims.to_string(), key, Algorithm::ES256)
}

/// HS256 by hand: jsonwebtoken refuses the empty key the /dev/null attack uses.
fn hs256(header: &str, payload: &str, secret: &[u8]) -> String {
    use aws_lc_rs::hmac;
    let msg = format!("{}.{}", B64.encode(header), B64.encode(payload));
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), msg.as_bytes());
    format!("{msg}.{}", B64.encode(tag.as_ref()))
}

fn es256_header() -> Value {
    json!({ "alg": "ES256", "typ": "JWT" })
}

fn gateway_key(gw: &Gateway) -> EncodingKey {
    EncodingKey::from_ec_pem(&std::fs::read(gw.dir.path().join("jwt.pem")).expect("jwt.pem")).expect("key")
}

fn attacker_key(gw: &Gateway) -> EncodingKey {
    let path = gw.dir.path().join(format!("attacker-{}.pem", authgate::jwt::random_id(6)));
    authgate::keys::generate_private_key(Algorithm::ES256, &path).expect("generate");
    EncodingKey::from_ec_pem(&std::fs::read(&path).expect("read")).expect("key")
}

async fn start() -> (Gateway, Upstream) {
    let up = Upstream::start().await;
    let gw = Gateway::start("", &format!("[[routes]]\npath = \"/\"\nupstream = \"{}\"\n", up.url())).await;
    (gw, up)
}

async fn get(gw: &Gateway, token: &str) -> reqwest::Response {
    gw.client.get(gw.url("/x")).header("authorization", format!("Bearer {token}")).send().await.expect("send")
}

/// 401 `invalid_token` with the reason `desc`; the upstream untouched.
async fn refused(gw: &Gateway, up: &Upstream, token: &str, desc: &str, what: &str) {
    let before = up.hits();
    let r = get(gw, token).await;
    assert_eq!(r.status(), 401, "{what}");
    let body = json(r).await;
    assert_eq!(body["error"], "invalid_token", "{what}: {body}");
    assert_eq!(body["error_description"], desc, "{what}");
    assert_eq!(up.hits(), before, "{what}: the upstream was reached");
}

async fn passes(gw: &Gateway, up: &Upstream, token: &str, sub: &str, what: &str) {
    let before = up.hits();
    let r = get(gw, token).await;
    let status = r.status();
    assert_eq!(status, 200, "{what}: {}", r.text().await.unwrap_or_default());
    assert_eq!(up.hits(), before + 1, "{what}");
    assert_eq!(up.last().headers["x-auth-subject"], sub, "{what}");
}

// ------------------------------------------------------------------ kid

#[tokio::test]
async fn kid_path_traversal_and_injection_never_pick_a_key() {
    let (gw, up) = start().await;
    let evil = attacker_key(&gw);
    let kids = [
        json!("../../dev/null"),
        json!("/dev/null"),
        json!("/etc/passwd"),
        json!("../../../../../../etc/passwd%00"),
        json!("' OR '1'='1"),
        json!("x' UNION SELECT 'secret' --"),
        json!("$(touch /tmp/pwned)"),
        json!("|cat /etc/passwd"),
        json!("k".repeat(4000)),
        json!(""),
    ];
    for kid in &kids {
        let what = format!("kid {:.40}", kid.to_string());
        // Attacker-signed: whatever the kid names, only our keys verify.
        let mut h = es256_header();
        h["kid"] = kid.clone();
        refused(&gw, &up, &sign(&h, &claims("admin"), &evil), SIGNATURE, &what).await;
        // The /dev/null trick: HS256 with an empty (or file-content) secret.
        for secret in [&b""[..], b"\0", b"root:x:0:0:root:/root:/bin/bash\n"] {
            let h = json!({ "alg": "HS256", "kid": kid });
            refused(&gw, &up, &hs256(&h.to_string(), &claims("admin").to_string(), secret), ALGORITHM, &what).await;
        }
    }
    // A kid that is not a string is malformed, even with a valid signature.
    for kid in [json!(1), json!({ "path": "/dev/null" }), json!(["a"]), json!(null), json!(true)] {
        let mut h = es256_header();
        h["kid"] = kid.clone();
        refused(&gw, &up, &sign(&h, &claims("admin"), &gateway_key(&gw)), MALFORMED, &format!("kid {kid}")).await;
    }
    // The kid is a hint only: our own signature with an odd kid still verifies
    // (falls back to every configured key), so the kid cannot be an oracle.
    let mut h = es256_header();
    h["kid"] = json!("../../dev/null");
    passes(&gw, &up, &sign(&h, &claims("alice"), &gateway_key(&gw)), "alice", "our key, odd kid").await;
    gw.stop().await;
}

// ----------------------------------------------------------------- typ

#[tokio::test]
async fn typ_other_than_an_access_token_is_refused() {
    let (gw, up) = start().await;
    let key = gateway_key(&gw);
    for typ in [
        json!("refresh+jwt"),
        json!("id_token"),
        json!("id_token+jwt"),
        json!("logout+jwt"),
        json!("secevent+jwt"),
        json!("dpop+jwt"),
        json!("JWE"),
        json!("JOSE+JSON"),
        json!("JWT "),
        json!(""),
        json!(1),
        json!(["JWT"]),
        json!(null),
    ] {
        let h = json!({ "alg": "ES256", "typ": typ });
        refused(&gw, &up, &sign(&h, &claims("alice"), &key), TYPE, &format!("typ {typ}")).await;
    }
    // The accepted spellings, for contrast (RFC 9068 `at+jwt`, case-insensitive per RFC 7515).
    for typ in ["JWT", "jwt", "at+jwt", "application/at+jwt", "AT+JWT", "application/jwt", "Application/JWT"] {
        let h = json!({ "alg": "ES256", "typ": typ });
        passes(&gw, &up, &sign(&h, &claims("alice"), &key), "alice", typ).await;
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_refresh_token_is_no_access_token() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("users.toml"), format!("[[users]]\nusername = \"alice\"\npassword_hash = \"{}\"\n", quick_hash("pw")))
        .expect("users");
    let routes = format!("[[routes]]\npath = \"/\"\nupstream = \"{}\"\n", up.url());
    let text =
        config_text(dir.path(), "[login]\nusers_file = \"users.toml\"\n[store]\nkind = \"embedded\"\npath = \"data/a.db\"\n", &routes);
    let gw = Gateway::start_in(dir, &text).await;
    let r = gw.client.post(gw.url("/token")).form(&[("username", "alice"), ("password", "pw")]).send().await.expect("login");
    assert_eq!(r.status(), 200);
    let body = json(r).await;
    let (access, refresh) = (body["access_token"].as_str().expect("access"), body["refresh_token"].as_str().expect("refresh"));
    refused(&gw, &up, refresh, MALFORMED, "the refresh token as a Bearer token").await;
    // Nor glued into a JWT's shape.
    let (h, p) = access.rsplit_once('.').expect("jwt").0.split_once('.').expect("jwt");
    refused(&gw, &up, &format!("{h}.{p}.{refresh}"), SIGNATURE, "refresh token as the signature").await;
    refused(&gw, &up, &format!("{refresh}.{refresh}.{refresh}"), MALFORMED, "refresh token as every part").await;
    passes(&gw, &up, access, "alice", "the access token itself").await;
    // SECURITY.md: a thief of the store file finds no usable refresh token
    // (only its SHA-256 is stored; the database and its WAL are searched).
    for entry in std::fs::read_dir(gw.dir.path().join("data")).expect("data dir") {
        let bytes = std::fs::read(entry.expect("entry").path()).expect("read");
        assert!(!bytes.windows(refresh.len()).any(|w| w == refresh.as_bytes()), "a refresh token is stored in clear");
    }
    gw.stop().await;
}

// ------------------------------------------------------ signature stripping

#[tokio::test]
async fn a_stripped_or_mangled_signature_is_refused() {
    let (gw, up) = start().await;
    let token = gw.token("alice", json!({}));
    let (msg, sig) = token.rsplit_once('.').expect("three parts");
    refused(&gw, &up, &format!("{msg}."), MALFORMED, "header.payload.").await;
    refused(&gw, &up, msg, MALFORMED, "header.payload").await;
    refused(&gw, &up, &format!("{msg}.{}", &sig[..sig.len() / 2]), SIGNATURE, "half a signature").await;
    refused(&gw, &up, &format!("{msg}.{}", "A".repeat(sig.len())), SIGNATURE, "zeroed signature").await;
    // An ES256 signature in DER form instead of the JOSE r||s form.
    refused(&gw, &up, &format!("{msg}.MEUCIQ{}", &sig[6..]), SIGNATURE, "DER-shaped signature").await;
    // Psychic signatures (CVE-2022-21449): r = s = 0.
    refused(&gw, &up, &format!("{msg}.{}", B64.encode([0u8; 64])), SIGNATURE, "r=s=0").await;
    passes(&gw, &up, &token, "alice", "the untouched token").await;
    gw.stop().await;
}

// ----------------------------------------------------------- claim types

#[tokio::test]
async fn sub_must_be_a_non_empty_string() {
    let (gw, up) = start().await;
    let key = gateway_key(&gw);
    for sub in [json!(0), json!(42), json!(1.5), json!({ "id": "admin" }), json!(["admin"]), json!(""), json!(true), json!(null)] {
        let mut c = claims("x");
        c["sub"] = sub.clone();
        refused(&gw, &up, &sign(&es256_header(), &c, &key), MALFORMED, &format!("sub {sub}")).await;
    }
    let mut c = claims("x");
    c.as_object_mut().expect("object").remove("sub");
    refused(&gw, &up, &sign(&es256_header(), &c, &key), MISSING, "no sub").await;
    gw.stop().await;
}

#[tokio::test]
async fn exp_must_be_an_in_range_number() {
    let (gw, up) = start().await;
    let key = gateway_key(&gw);
    let far = (now() + 600).to_string();
    // Raw JSON, so the numbers reach the gateway exactly as written.
    let token = |exp: &str| {
        let payload = format!(r#"{{"sub":"alice","iss":"authgate","aud":"api","exp":{exp}}}"#);
        sign_raw(r#"{"alg":"ES256"}"#, &payload, &key, Algorithm::ES256)
    };
    for exp in [
        format!("\"{far}\""),
        "1e300".to_string(),
        "-1e300".to_string(),
        "18446744073709551616".to_string(),
        "-1".to_string(),
        format!("-{far}"),
        "null".to_string(),
        "true".to_string(),
        format!("[{far}]"),
        format!("{{\"v\":{far}}}"),
        "1e15".to_string(),
    ] {
        refused(&gw, &up, &token(&exp), MALFORMED, &format!("exp {exp}")).await;
    }
    // RFC 7519 §2: a NumericDate may hold fractions; in range it is accepted.
    passes(&gw, &up, &token(&format!("{far}.5")), "alice", "fractional exp").await;
    passes(&gw, &up, &token(&format!("{far}e0")), "alice", "exponent form").await;
    // A fractional exp in the past is still expired.
    refused(&gw, &up, &token(&format!("{}.5", now() - 600)), "the token has expired", "old fractional exp").await;
    gw.stop().await;
}

#[tokio::test]
async fn aud_arrays_must_hold_our_audience_and_only_strings() {
    let (gw, up) = start().await;
    let key = gateway_key(&gw);
    let with_aud = |aud: Value| {
        let mut c = claims("alice");
        c["aud"] = aud;
        sign(&es256_header(), &c, &key)
    };
    passes(&gw, &up, &with_aud(json!(["api"])), "alice", "aud [api]").await;
    passes(&gw, &up, &with_aud(json!(["other", "api"])), "alice", "aud [other, api]").await;
    for aud in [json!([]), json!(["other"]), json!(["API"]), json!(["api "]), json!(""), json!(5), json!({ "api": true }), json!(null)] {
        refused(&gw, &up, &with_aud(aud.clone()), AUDIENCE, &format!("aud {aud}")).await;
    }
    // Non-string elements beside ours: not a StringOrURI array (RFC 7519 §4.1.3).
    for aud in [json!(["api", 5]), json!(["api", null]), json!([{ "aud": "x" }, "api"]), json!([["api"]])] {
        refused(&gw, &up, &with_aud(aud.clone()), MALFORMED, &format!("aud {aud}")).await;
    }
    gw.stop().await;
}

// ------------------------------------------------------------- encoding

#[tokio::test]
async fn invalid_base64url_is_refused() {
    let (gw, up) = start().await;
    let token = gw.token("alice", json!({}));
    let mut parts = token.split('.');
    let (h, p, s) = (parts.next().expect("h"), parts.next().expect("p"), parts.next().expect("s"));
    let std = base64::engine::general_purpose::STANDARD;
    let key = gateway_key(&gw);
    // Re-signs `header.payload` as given, so that only their decoding can fail.
    let signed = |h: &str, p: &str| {
        let msg = format!("{h}.{p}");
        format!("{msg}.{}", jsonwebtoken::crypto::sign(msg.as_bytes(), &key, Algorithm::ES256).expect("sign"))
    };
    // Claims whose standard base64 holds a '/' ("???" is "Pz8/"), unpadded.
    let mut q = claims("alice");
    q["x"] = json!("?????");
    let q_std = std.encode(q.to_string()).replace('=', "");
    assert!(q_std.contains('/'));
    for (bad, desc) in [
        // The header is decoded first, before the signature is checked.
        (format!("{h}=.{p}.{s}"), MALFORMED),
        (format!("{h}==.{p}.{s}"), MALFORMED),
        (format!("{h} .{p}.{s}"), MALFORMED),
        (format!("{h}*.{p}.{s}"), MALFORMED),
        (format!("{}+/.{p}.{s}", &h[..h.len() - 2]), MALFORMED),
        // A changed payload breaks the signature...
        (format!("{h}.{p}=.{s}"), SIGNATURE),
        (format!("{h}.{q_std}.{s}"), SIGNATURE),
        // ...and a validly signed but badly encoded payload is malformed.
        (signed(h, &format!("{p}=")), MALFORMED),
        (signed(h, &format!("{p}==")), MALFORMED),
        (signed(h, &q_std), MALFORMED),
        (signed(h, &format!("{}\t{}", &p[..4], &p[4..])), MALFORMED),
        (signed(h, &format!("{} {}", &p[..4], &p[4..])), MALFORMED),
        // The signature part: padding, the standard alphabet, escapes.
        (format!("{h}.{p}.{s}="), SIGNATURE),
        (format!("{h}.{p}.{}", s.replace('-', "+").replace('_', "/") + "+/"), SIGNATURE),
        (format!("{h}.{p}.{s}%3D"), SIGNATURE),
    ] {
        refused(&gw, &up, &bad, desc, &format!("{bad:?}")).await;
    }
    // Non-canonical base64url: the last character's unused bits set.
    let last = h.chars().last().expect("char");
    let twin = B64.decode(h).ok().and_then(|_| {
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let i = alphabet.find(last)?;
        alphabet.chars().nth(i + 1).filter(|_| h.len() % 4 != 0)
    });
    if let Some(c) = twin {
        refused(&gw, &up, &format!("{}{c}.{p}.{s}", &h[..h.len() - 1]), MALFORMED, "non-canonical header").await;
    }
    // Headers and payloads that decode but are not JSON objects; deep nesting.
    let payload = claims("alice").to_string();
    for header in ["[\"ES256\"]", "null", "\"ES256\"", "{\"alg\":\"ES256\"", &format!("{}1{}", "[".repeat(3000), "]".repeat(3000))] {
        refused(&gw, &up, &sign_raw(header, &payload, &key, Algorithm::ES256), MALFORMED, &format!("header {header:.30}")).await;
    }
    let deep = format!(
        "{{\"sub\":\"alice\",\"iss\":\"authgate\",\"aud\":\"api\",\"exp\":{},\"x\":{}1{}}}",
        now() + 600,
        "[".repeat(3000),
        "]".repeat(3000)
    );
    refused(&gw, &up, &sign_raw("{\"alg\":\"ES256\"}", &deep, &key, Algorithm::ES256), MALFORMED, "payload nested 3000 deep").await;
    passes(&gw, &up, &token, "alice", "the untouched token").await;
    gw.stop().await;
}

// ----------------------------------------------------------------- size

/// A token signed by `key` whose text is exactly `len` bytes (padded with a
/// claim), or None for the lengths base64url cannot produce (4k+1).
fn token_of_len(key: &EncodingKey, len: usize) -> Option<String> {
    let probe = sign(&es256_header(), &claims("alice"), key);
    let mut c = claims("alice");
    // Each 3 bytes of padding JSON cost 4 base64url characters.
    let start = (len.saturating_sub(probe.len()) * 3 / 4).saturating_sub(32);
    for pad in start..len {
        c["pad"] = json!("p".repeat(pad));
        let t = sign(&es256_header(), &c, key);
        if t.len() >= len {
            return (t.len() == len).then_some(t);
        }
    }
    None
}

#[tokio::test]
async fn the_8kb_token_limit_is_exact() {
    let (gw, up) = start().await;
    let key = gateway_key(&gw);
    let max = authgate::jwt::MAX_TOKEN_BYTES;
    let at = (max - 3..=max).rev().find_map(|n| token_of_len(&key, n)).expect("a token at the limit");
    passes(&gw, &up, &at, "alice", &format!("a token of {} bytes", at.len())).await;
    let mut tried = 0;
    for over in [max + 1, max + 2, max + 3, max + 4, max + 100, max + 1000] {
        if let Some(t) = token_of_len(&key, over) {
            refused(&gw, &up, &t, MALFORMED, &format!("{} bytes", t.len())).await;
            tried += 1;
        }
    }
    assert!(tried >= 4, "too few lengths just over the limit were tried");
    gw.stop().await;
}
