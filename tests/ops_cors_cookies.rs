//! CORS (`[cors]`): preflights answered without authentication, only listed
//! origins allowed, credentials only when configured. Browser cookies
//! (`login.cookie = true`): HttpOnly/Secure/SameSite=Strict cookies from
//! `/token`, accepted by the proxy without `Authorization`, never forwarded
//! upstream, refresh and revoke by cookie, and the CSRF rule for
//! state-changing cookie-authenticated requests.
mod common;

use common::*;
use serde_json::json;

const APP: &str = "https://app.example.com";
const EVIL: &str = "https://evil.example";

fn cors(extra: &str) -> String {
    format!(
        "[cors]\nallowed_origins = [\"{APP}\"]\nallowed_methods = [\"GET\", \"POST\"]\nallowed_headers = [\"authorization\", \"content-type\"]\nmax_age = \"10m\"\n{extra}\n"
    )
}

#[tokio::test]
async fn preflights_are_answered_without_auth_and_only_listed_origins_are_allowed() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&cors(""), &format!("[[routes]]\npath = \"/\"\nupstream = \"{}\"\n", up.url())).await;
    let preflight = |origin: &str| {
        gw.client
            .request(reqwest::Method::OPTIONS, gw.url("/api/orders"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let r = preflight(APP).await.expect("send");
    assert_eq!(r.status(), 204, "a preflight needs no token");
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], APP);
    assert_eq!(h["access-control-allow-methods"], "GET, POST");
    assert_eq!(h["access-control-allow-headers"], "authorization, content-type");
    assert_eq!(h["access-control-max-age"], "600");
    assert!(!h.contains_key("access-control-allow-credentials"), "credentials only when configured");
    assert_eq!(h.get_all("vary").iter().filter(|v| *v == "Origin").count(), 1, "{h:?}");
    let r = preflight(EVIL).await.expect("send");
    assert_eq!(r.status(), 204);
    assert!(!r.headers().contains_key("access-control-allow-origin"), "an unlisted origin is not allowed");
    assert_eq!(up.hits(), 0, "preflights never reach the upstream");

    // Actual requests: the listed origin may read the answer, errors included.
    let token = gw.token("alice", json!({}));
    let r = gw.client.get(gw.url("/x")).header("origin", APP).bearer_auth(&token).send().await.expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], APP);
    assert!(r.headers().get_all("vary").iter().any(|v| v == "Origin"));
    let r = gw.client.get(gw.url("/x")).header("origin", APP).send().await.expect("send");
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["access-control-allow-origin"], APP, "a browser app must be able to read the 401");
    let r = gw.client.get(gw.url("/x")).header("origin", EVIL).bearer_auth(&token).send().await.expect("send");
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    // An OPTIONS that is not a preflight is an ordinary request (here: no token, 401).
    let r = gw.client.request(reqwest::Method::OPTIONS, gw.url("/x")).header("origin", APP).send().await.expect("send");
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn credentials_are_allowed_only_when_configured() {
    let gw = Gateway::start(&cors("allow_credentials = true"), "[[routes]]\npath = \"/\"\nupstream = \"echo\"\n").await;
    let r = gw
        .client
        .request(reqwest::Method::OPTIONS, gw.url("/"))
        .header("origin", APP)
        .header("access-control-request-method", "GET")
        .send()
        .await
        .expect("send");
    assert_eq!(r.headers()["access-control-allow-origin"], APP);
    assert_eq!(r.headers()["access-control-allow-credentials"], "true");
}

const LOGIN: &str =
    "[login]\nusers_file = \"users.toml\"\ncookie = true\nrate_limit = \"1000/minute\"\nrate_limit_per_username = \"1000/hour\"\n";

async fn cookie_gateway(up: &Upstream) -> Gateway {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("users.toml"), format!("[[users]]\nusername = \"alice\"\npassword_hash = \"{}\"\n", quick_hash("pw")))
        .expect("users");
    let routes = format!(
        "[[routes]]\npath = \"/api\"\nupstream = \"{}\"\n\n[[routes]]\npath = \"/pub\"\nupstream = \"{}\"\nauth = \"public\"\n",
        up.url(),
        up.url()
    );
    let text = config_text(dir.path(), &format!("{LOGIN}\n{}", cors("")), &routes);
    Gateway::start_in(dir, &text).await
}

/// The Set-Cookie values of a response, by cookie name.
fn set_cookies(r: &reqwest::Response) -> Vec<String> {
    r.headers().get_all("set-cookie").iter().map(|v| v.to_str().expect("ascii").to_string()).collect()
}

fn cookie_value(set_cookies: &[String], name: &str) -> String {
    let c =
        set_cookies.iter().find(|c| c.starts_with(&format!("{name}="))).unwrap_or_else(|| panic!("no {name} cookie in {set_cookies:?}"));
    c[name.len() + 1..].split(';').next().unwrap_or_default().to_string()
}

#[tokio::test]
async fn cookie_login_and_the_proxy_accepts_the_cookie_but_never_forwards_it() {
    let up = Upstream::start().await;
    let gw = cookie_gateway(&up).await;
    let r = gw.client.post(gw.url("/token")).form(&[("username", "alice"), ("password", "pw")]).send().await.expect("send");
    assert_eq!(r.status(), 200);
    let cookies = set_cookies(&r);
    let access_cookie = cookies.iter().find(|c| c.starts_with("authgate_access=")).expect("access cookie");
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/;", "Max-Age=900"] {
        assert!(access_cookie.contains(attr), "{attr} missing in {access_cookie}");
    }
    let refresh_cookie = cookies.iter().find(|c| c.starts_with("authgate_refresh=")).expect("refresh cookie");
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/token;"] {
        assert!(refresh_cookie.contains(attr), "{attr} missing in {refresh_cookie}");
    }
    let body = json(r).await;
    let access = cookie_value(&cookies, "authgate_access");
    assert_eq!(body["access_token"], access.as_str(), "the cookie holds the same access token");
    let jar = format!("theme=dark; authgate_access={access}; lang=en");

    // No Authorization header: the cookie authenticates. It never reaches the upstream.
    let r = gw.client.get(gw.url("/api/x")).header("cookie", &jar).send().await.expect("send");
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert_eq!(seen.headers["x-auth-subject"], "alice");
    assert_eq!(seen.headers["cookie"], "theme=dark; lang=en");
    assert!(!format!("{:?}", seen.headers).contains(&access), "the token must not reach the upstream");
    // Stripped on public routes too.
    gw.client.get(gw.url("/pub")).header("cookie", &jar).send().await.expect("send");
    assert_eq!(up.last().headers["cookie"], "theme=dark; lang=en");

    // CSRF: a state-changing request authenticated by cookie needs an allowed Origin.
    let post = |origin: Option<(&str, String)>| {
        let mut r = gw.client.post(gw.url("/api/x")).header("cookie", &jar);
        if let Some((h, v)) = origin {
            r = r.header(h, v);
        }
        r.send()
    };
    let own = format!("https://localhost:{}", gw.addr.port());
    let hits = up.hits();
    let r = post(None).await.expect("send");
    assert_eq!(r.status(), 403, "no Origin, no Referer");
    assert_eq!(json(r).await["error"], "forbidden");
    assert_eq!(post(Some(("origin", EVIL.into()))).await.expect("send").status(), 403);
    assert_eq!(post(Some(("origin", "null".into()))).await.expect("send").status(), 403);
    assert_eq!(post(Some(("referer", format!("{EVIL}/page")))).await.expect("send").status(), 403);
    assert_eq!(up.hits(), hits, "refused cross-origin requests never reach the upstream");
    assert_eq!(post(Some(("origin", own.clone()))).await.expect("send").status(), 200, "the gateway's own origin");
    assert_eq!(post(Some(("origin", APP.into()))).await.expect("send").status(), 200, "a [cors] allowed origin");
    assert_eq!(post(Some(("referer", format!("{own}/app/page?x=1")))).await.expect("send").status(), 200, "Referer when no Origin");
    // A WebSocket handshake is a GET, but opens a two-way channel CORS does
    // not guard: by cookie it needs an allowed Origin too (cross-site
    // WebSocket hijacking).
    for (origin, refused) in [(EVIL.to_string(), true), (own.clone(), false)] {
        let req = format!(
            "GET /api/ws HTTP/1.1\r\nHost: localhost:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: {origin}\r\nCookie: {jar}\r\n\r\n",
            gw.addr.port()
        );
        let resp = raw_request(&gw, req.as_bytes(), std::time::Duration::from_secs(2)).await;
        assert_eq!(status_of(&resp) == 403, refused, "WebSocket by cookie from {origin}: {resp}");
    }
    // Two Origin headers: which one counts is not ours to pick; refused.
    let twice =
        gw.client.post(gw.url("/api/x")).header("cookie", &jar).header("origin", APP).header("origin", EVIL).send().await.expect("send");
    assert_eq!(twice.status(), 403, "two Origin headers");
    // The cookie is used only when there is no Authorization header at all.
    let basic = gw.client.get(gw.url("/api/x")).header("cookie", &jar).header("authorization", "Basic YTpi").send().await.expect("send");
    assert_eq!(basic.status(), 401, "Authorization: Basic beside the cookie");
    // A bearer token is not sent by the browser on its own: no Origin needed.
    let r = gw.client.post(gw.url("/api/x")).bearer_auth(&access).send().await.expect("send");
    assert_eq!(r.status(), 200);
    // Forward-auth applies the same rule to the original method.
    let r = gw
        .client
        .get(gw.url("/auth/verify"))
        .header("cookie", &jar)
        .header("x-forwarded-uri", "/api/x")
        .header("x-forwarded-method", "DELETE")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 403);
    // A method header that is no method (two folded into one line, say),
    // or two that disagree, is refused, never read as this request's GET.
    for (fwd, orig) in [("POST, GET", None), ("GET POST", None), ("", None), ("DELETE,", None), ("GET", Some("POST"))] {
        let mut r = gw
            .client
            .get(gw.url("/auth/verify"))
            .header("cookie", &jar)
            .header("x-forwarded-uri", "/api/x")
            .header("x-forwarded-method", fwd);
        if let Some(o) = orig {
            r = r.header("x-original-method", o);
        }
        assert_eq!(r.send().await.expect("send").status(), 400, "X-Forwarded-Method {fwd:?}, X-Original-Method {orig:?}");
    }
    let r = gw.client.get(gw.url("/auth/verify")).header("cookie", &jar).header("x-forwarded-uri", "/api/x").send().await.expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-auth-subject"], "alice");
}

/// Login CSRF: another site's form posting the attacker's credentials (or
/// refresh token) must not put the attacker's session into the victim's
/// browser as cookies. Clients that send no Origin and no Referer (curl,
/// native apps) and the allowed origins log in as before.
#[tokio::test]
async fn with_login_cookies_a_grant_from_another_site_is_refused() {
    let up = Upstream::start().await;
    let gw = cookie_gateway(&up).await;
    let own = format!("https://localhost:{}", gw.addr.port());
    let creds = [("username", "alice"), ("password", "pw")];
    let grant = |header: Option<(&'static str, String)>, form: Vec<(&'static str, String)>| {
        let mut r = gw.client.post(gw.url("/token")).form(&form);
        if let Some((h, v)) = header {
            r = r.header(h, v);
        }
        r.send()
    };
    let password = || creds.iter().map(|(k, v)| (*k, v.to_string())).collect::<Vec<_>>();
    for (h, v) in [("origin", EVIL.to_string()), ("origin", "null".into()), ("referer", format!("{EVIL}/login"))] {
        let r = grant(Some((h, v.clone())), password()).await.expect("send");
        assert_eq!(r.status(), 403, "a password grant with {h}: {v}");
        assert!(set_cookies(&r).is_empty(), "{h}: {v} got cookies");
    }
    for origin in [None, Some(("origin", own.clone())), Some(("origin", APP.to_string())), Some(("referer", format!("{own}/app")))] {
        let r = grant(origin.clone(), password()).await.expect("send");
        assert_eq!(r.status(), 200, "a password grant with {origin:?}");
        assert_eq!(set_cookies(&r).len(), 2);
    }
    let r = grant(None, password()).await.expect("send");
    let refresh = cookie_value(&set_cookies(&r), "authgate_refresh");
    let form = vec![("grant_type", "refresh_token".to_string()), ("refresh_token", refresh)];
    assert_eq!(grant(Some(("origin", EVIL.into())), form.clone()).await.expect("send").status(), 403, "a refresh grant from another site");
    assert_eq!(grant(None, form).await.expect("send").status(), 200, "the refused refresh did not spend the token");
}

#[tokio::test]
async fn refresh_by_cookie_and_revoke_clears_both_cookies() {
    let up = Upstream::start().await;
    let gw = cookie_gateway(&up).await;
    let own = format!("https://localhost:{}", gw.addr.port());
    let r = gw.client.post(gw.url("/token")).form(&[("username", "alice"), ("password", "pw")]).send().await.expect("send");
    let cookies = set_cookies(&r);
    let (access, refresh) = (cookie_value(&cookies, "authgate_access"), cookie_value(&cookies, "authgate_refresh"));

    let refresh_jar = format!("authgate_refresh={refresh}");
    let grant = [("grant_type", "refresh_token")];
    let r = gw.client.post(gw.url("/token")).header("cookie", &refresh_jar).form(&grant).send().await.expect("send");
    assert_eq!(r.status(), 403, "a refresh by cookie needs an allowed Origin");
    let r = gw.client.post(gw.url("/token")).header("cookie", &refresh_jar).header("origin", &own).form(&grant).send().await.expect("send");
    assert_eq!(r.status(), 200);
    let rotated = set_cookies(&r);
    let (access2, refresh2) = (cookie_value(&rotated, "authgate_access"), cookie_value(&rotated, "authgate_refresh"));
    assert_ne!(refresh2, refresh, "rotation");

    let jar = format!("authgate_access={access2}; authgate_refresh={refresh2}");
    // A revoke with a `token` parameter needs no cookie, so another site's
    // form can send one: it must not clear the cookies (a logout CSRF).
    let r = gw
        .client
        .post(gw.url("/token/revoke"))
        .header("cookie", &jar)
        .header("origin", EVIL)
        .form(&[("token", "garbage")])
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert!(set_cookies(&r).is_empty(), "a cross-site revoke cleared the cookies: {:?}", set_cookies(&r));
    let r = gw
        .client
        .post(gw.url("/token/revoke"))
        .header("cookie", &jar)
        .header("origin", &own)
        .form(&[("x", "")])
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let cleared = set_cookies(&r);
    assert_eq!(cleared.len(), 2, "{cleared:?}");
    assert!(cleared.iter().all(|c| c.contains("Max-Age=0")), "{cleared:?}");
    assert!(cleared.iter().any(|c| c.starts_with("authgate_refresh=;") && c.contains("Path=/token")), "{cleared:?}");

    let r = gw.client.get(gw.url("/api/x")).header("cookie", format!("authgate_access={access2}")).send().await.expect("send");
    assert_eq!(r.status(), 401, "the revoked access cookie is refused");
    let r = gw
        .client
        .post(gw.url("/token"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", refresh2.as_str())])
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400, "the revoked refresh token is dead");
    let _ = access;
}

/// RFC 9113 §8.2.3: an HTTP/2 client may send its cookies as several
/// fields; an HTTP/1.1 upstream gets them joined into one `Cookie` header
/// (many read only the first).
#[tokio::test]
async fn cookies_split_over_http2_fields_reach_the_upstream_as_one_header() {
    let up = Upstream::start().await;
    let gw = Gateway::start("", &format!("[[routes]]\npath = \"/\"\nupstream = \"{}\"\nauth = \"public\"\n", up.url())).await;
    let h2 = client_for(&gw.cert_path(), true);
    let r = h2.get(gw.url("/c")).header("cookie", "session=abc").header("cookie", "csrf=xyz").send().await.expect("send");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let cookies: Vec<_> = up.last().headers.get_all("cookie").iter().map(|v| v.to_str().expect("ascii").to_string()).collect();
    assert_eq!(cookies, ["session=abc; csrf=xyz"]);
    gw.stop().await;
}

#[tokio::test]
async fn without_login_cookie_the_cookie_does_not_authenticate_and_is_still_stripped() {
    let up = Upstream::start().await;
    let routes = format!(
        "[[routes]]\npath = \"/api\"\nupstream = \"{}\"\n\n[[routes]]\npath = \"/pub\"\nupstream = \"{}\"\nauth = \"public\"\n",
        up.url(),
        up.url()
    );
    let gw = Gateway::start("", &routes).await;
    let token = gw.token("alice", json!({}));
    let jar = format!("authgate_access={token}; a=1");
    let r = gw.client.get(gw.url("/api")).header("cookie", &jar).send().await.expect("send");
    assert_eq!(r.status(), 401);
    gw.client.get(gw.url("/pub")).header("cookie", &jar).send().await.expect("send");
    assert_eq!(up.last().headers["cookie"], "a=1");
}

/// A password grant's cookies: (access, refresh).
async fn login(gw: &Gateway) -> (String, String) {
    let r = gw.client.post(gw.url("/token")).form(&[("username", "alice"), ("password", "pw")]).send().await.expect("send");
    assert_eq!(r.status(), 200);
    let cookies = set_cookies(&r);
    (cookie_value(&cookies, "authgate_access"), cookie_value(&cookies, "authgate_refresh"))
}

/// Review 10b, F1: Traefik's ForwardAuth drops `Upgrade` and `Connection`
/// from the auth request, so a cross-site WebSocket handshake by cookie
/// looked like a plain GET at `/auth/verify` and got a 200. Its
/// `Sec-WebSocket-*` headers survive any proxy: they mark it a handshake.
#[tokio::test]
async fn a_websocket_handshake_without_upgrade_is_still_held_to_the_origin_rule() {
    let up = Upstream::start().await;
    let gw = cookie_gateway(&up).await;
    let (access, _) = login(&gw).await;
    let jar = format!("authgate_access={access}");
    let own = format!("https://localhost:{}", gw.addr.port());
    let key = ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    let version = ("sec-websocket-version", "13");
    let verify = |origin: &str, sec: &[(&'static str, &'static str)]| {
        let mut r = gw
            .client
            .get(gw.url("/auth/verify"))
            .header("cookie", &jar)
            .header("origin", origin)
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-uri", "/api/ws");
        for (h, v) in sec {
            r = r.header(*h, *v);
        }
        r.send()
    };
    for sec in [vec![key, version], vec![key], vec![version]] {
        assert_eq!(verify(EVIL, &sec).await.expect("send").status(), 403, "Traefik-style handshake from {EVIL} with {sec:?}");
        assert_eq!(verify(&own, &sec).await.expect("send").status(), 200, "from the gateway's own origin with {sec:?}");
    }
    assert_eq!(verify(EVIL, &[]).await.expect("send").status(), 200, "a plain GET is still safe");

    // Through the proxy too: without `Upgrade` it is forwarded as a plain
    // GET, but the rule is the same wherever authgate sees the handshake.
    let hits = up.hits();
    let r = gw.client.get(gw.url("/api/ws")).header("cookie", &jar).header("origin", EVIL).header(key.0, key.1).send().await.expect("send");
    assert_eq!(r.status(), 403);
    assert_eq!(up.hits(), hits, "refused before the upstream");
    let r = gw.client.get(gw.url("/api/x")).header("cookie", &jar).header("origin", &own).header(key.0, key.1).send().await.expect("send");
    assert_eq!(r.status(), 200);
}

/// Review 10b, F2: without `X-Forwarded-Method` or `X-Original-Method`
/// (nginx's `auth_request` subrequest is always a GET), `/auth/verify`
/// judged a cookie as on a GET, so a cross-site POST by cookie passed. An
/// unknown method now refuses a foreign `Origin` or `Referer`; a request
/// naming no origin (a same-site navigation, curl) passes as before.
#[tokio::test]
async fn forward_auth_without_the_original_method_refuses_a_foreign_origin() {
    let up = Upstream::start().await;
    let gw = cookie_gateway(&up).await;
    let (access, _) = login(&gw).await;
    let jar = format!("authgate_access={access}");
    let own = format!("https://localhost:{}", gw.addr.port());
    let verify = |header: Option<(&'static str, String)>| {
        let mut r = gw.client.get(gw.url("/auth/verify")).header("cookie", &jar).header("x-original-uri", "/api/x");
        if let Some((h, v)) = header {
            r = r.header(h, v);
        }
        r.send()
    };
    for (h, v) in [("origin", EVIL.to_string()), ("origin", "null".into()), ("referer", format!("{EVIL}/page"))] {
        let r = verify(Some((h, v.clone()))).await.expect("send");
        assert_eq!(r.status(), 403, "{h}: {v} without the original method");
        assert_eq!(json(r).await["error"], "forbidden");
    }
    for header in [None, Some(("origin", own.clone())), Some(("origin", APP.to_string())), Some(("referer", format!("{own}/app")))] {
        let r = verify(header.clone()).await.expect("send");
        assert_eq!(r.status(), 200, "{header:?} without the original method");
        assert_eq!(r.headers()["x-auth-subject"], "alice");
    }
    // A bearer token is not the browser's doing: no origin rule.
    let r =
        gw.client.get(gw.url("/auth/verify")).bearer_auth(&access).header("origin", EVIL).header("x-original-uri", "/api/x").send().await;
    assert_eq!(r.expect("send").status(), 200);
    // A known safe method keeps its old answer: a cross-origin GET is no CSRF.
    let r = gw
        .client
        .get(gw.url("/auth/verify"))
        .header("cookie", &jar)
        .header("origin", EVIL)
        .header("x-original-uri", "/api/x")
        .header("x-original-method", "GET")
        .send()
        .await;
    assert_eq!(r.expect("send").status(), 200);
}

/// Review 10b, F3: with two `authgate_access` cookies the first one won,
/// and a sibling subdomain can set one that browsers send first (cookie
/// tossing): the victim's requests ran as the attacker. Two of either
/// cookie are refused (400, like two `Authorization` headers) wherever the
/// cookie would be used.
#[tokio::test]
async fn a_request_with_two_of_our_cookies_is_refused() {
    let up = Upstream::start().await;
    let gw = cookie_gateway(&up).await;
    let own = format!("https://localhost:{}", gw.addr.port());
    let (alice, refresh) = login(&gw).await;
    let mallory = gw.token("mallory", json!({}));
    let hits = up.hits();
    for jar in [
        vec![format!("authgate_access={mallory}; a=1; authgate_access={alice}")],
        vec![format!("authgate_access={mallory}"), format!("authgate_access={alice}")],
        vec![format!("authgate_access=x; authgate_access={alice}")],
        vec![format!("authgate_access=; authgate_access={alice}")],
    ] {
        let mut r = gw.client.get(gw.url("/api/x"));
        let mut v = gw.client.get(gw.url("/auth/verify")).header("x-original-uri", "/api/x").header("x-original-method", "GET");
        for c in &jar {
            r = r.header("cookie", c);
            v = v.header("cookie", c);
        }
        let r = r.send().await.expect("send");
        assert_eq!(r.status(), 400, "{jar:?}");
        assert_eq!(json(r).await["error"], "bad_request");
        assert_eq!(v.send().await.expect("send").status(), 400, "/auth/verify with {jar:?}");
    }
    assert_eq!(up.hits(), hits, "never forwarded");
    // Where the cookie is not read, it is only stripped: a bearer token, a public route.
    let two = format!("authgate_access={mallory}; authgate_access={alice}; a=1");
    let r = gw.client.get(gw.url("/api/x")).header("cookie", &two).bearer_auth(&alice).send().await.expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().headers["x-auth-subject"], "alice");
    assert_eq!(gw.client.get(gw.url("/pub")).header("cookie", &two).send().await.expect("send").status(), 200);
    assert_eq!(up.last().headers["cookie"], "a=1");

    // /token: a refresh by cookie with two refresh cookies, a revoke by
    // cookie with two access cookies: 400, and nothing is spent or revoked.
    let refresh_by_cookie = |cookie: String| {
        gw.client.post(gw.url("/token")).header("cookie", cookie).header("origin", &own).form(&[("grant_type", "refresh_token")]).send()
    };
    let r = refresh_by_cookie(format!("authgate_refresh=tossed; authgate_refresh={refresh}")).await.expect("send");
    assert_eq!(r.status(), 400);
    assert_eq!(json(r).await["error"], "invalid_request");
    let r = gw.client.post(gw.url("/token/revoke")).header("cookie", &two).header("origin", &own).form(&[("x", "")]).send().await;
    let r = r.expect("send");
    assert_eq!(r.status(), 400);
    assert!(set_cookies(&r).is_empty(), "a refused revoke clears nothing");
    let r = gw.client.get(gw.url("/api/x")).header("cookie", format!("authgate_access={alice}")).send().await.expect("send");
    assert_eq!(r.status(), 200, "alice's access cookie was not revoked");
    // A password grant reads no cookie: two of them are no reason to refuse it.
    let r = gw.client.post(gw.url("/token")).header("cookie", &two).form(&[("username", "alice"), ("password", "pw")]).send().await;
    assert_eq!(r.expect("send").status(), 200);
    let r = refresh_by_cookie(format!("authgate_refresh={refresh}")).await.expect("send");
    assert_eq!(r.status(), 200, "the refused refresh did not spend the token");
}

/// An upstream that answers `Vary` with each `&`-separated query item.
async fn vary_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let mut resp = hyper::Response::builder();
                    for v in req.uri().query().unwrap_or("").split('&').filter(|v| !v.is_empty()) {
                        resp = resp.header("vary", v);
                    }
                    Ok::<_, std::convert::Infallible>(resp.body(http_body_util::Full::new(bytes::Bytes::from("ok"))).expect("response"))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(tcp), svc).await;
            });
        }
    });
    format!("http://{addr}")
}

/// Review 10b, F6: `Vary: Origin` was only added when the request carried
/// an `Origin`, so a cache could keep the answer to one without (no
/// `Access-Control-Allow-Origin`) and serve it to the allowed app.
#[tokio::test]
async fn every_cors_answer_varies_on_origin_once() {
    let routes = format!(
        "[[routes]]\npath = \"/\"\nupstream = \"{}\"\nauth = \"public\"\n\n[[routes]]\npath = \"/api\"\nupstream = \"echo\"\n",
        vary_upstream().await
    );
    let gw = Gateway::start(&cors(""), &routes).await;
    let vary =
        |r: &reqwest::Response| r.headers().get_all("vary").iter().map(|v| v.to_str().expect("ascii").to_string()).collect::<Vec<_>>();
    for path in ["/.well-known/jwks.json", "/api/x", "/x", "/auth/verify"] {
        let r = gw.client.get(gw.url(path)).send().await.expect("send");
        assert_eq!(vary(&r), ["Origin"], "{path} without an Origin ({})", r.status());
    }
    let r = gw.client.get(gw.url("/x?Accept-Encoding")).send().await.expect("send");
    assert_eq!(vary(&r), ["Accept-Encoding, Origin"], "appended to the upstream's Vary");
    let r = gw.client.get(gw.url("/x?Accept-Encoding&Accept-Language")).header("origin", APP).send().await.expect("send");
    assert_eq!(vary(&r), ["Accept-Encoding, Accept-Language, Origin"]);
    assert_eq!(r.headers()["access-control-allow-origin"], APP);
    for upstream in ["accept-encoding,origin", "Origin", "*"] {
        let r = gw.client.get(gw.url(&format!("/x?{upstream}"))).header("origin", EVIL).send().await.expect("send");
        assert_eq!(vary(&r), [upstream], "the upstream's Vary names Origin already");
        assert!(!r.headers().contains_key("access-control-allow-origin"));
    }
}
