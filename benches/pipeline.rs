//! The per-request work around verification: identity headers (strip what
//! the client sent, write the verified identity), route matching on a
//! 20-route table, and path normalisation on a clean and a dirty path.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, json};

use authgate::config::{self, Config};
use authgate::identity::IdentityRules;
use authgate::jwt::{Identity, Signer, Verifier, now_secs};
use authgate::keys;
use authgate::routes::{RouteTable, normalise_path};

/// Twenty routes, as a gateway in front of several legacy backends might have.
const ROUTE_PATHS: [&str; 20] = [
    "/",
    "/public",
    "/admin",
    "/admin/users",
    "/api",
    "/api/v1",
    "/api/v1/orders",
    "/api/v1/orders/export",
    "/api/v1/customers",
    "/api/v1/invoices",
    "/api/v2",
    "/api/v2/orders",
    "/api/v2/customers",
    "/static",
    "/reports",
    "/reports/daily",
    "/billing",
    "/billing/webhooks",
    "/internal/metrics",
    "/legacy/cgi-bin",
];

fn config(dir: &Path) -> Config {
    std::fs::write(dir.join("secret"), "pipeline-bench-0123456789abcdef0123456789abcdef").expect("write the HMAC secret");
    let mut text = String::from(
        "[jwt]\nalgorithm = \"HS256\"\nsecret_file = \"secret\"\nissuer = \"authgate\"\naudience = \"api\"\n\n\
         [identity]\nsubject_header = \"X-Auth-Subject\"\n\
         claim_headers = { roles = \"X-Auth-Roles\", email = \"X-Auth-Email\", name = \"X-Auth-Name\" }\n\
         strip_prefixes = [\"X-Auth-\"]\n",
    );
    for (i, p) in ROUTE_PATHS.iter().enumerate() {
        let auth = if *p == "/public" || *p == "/static" { "public" } else { "required" };
        text.push_str(&format!("\n[[routes]]\npath = \"{p}\"\nupstream = \"http://127.0.0.1:{}\"\nauth = \"{auth}\"\n", 9000 + i));
    }
    config::parse(&dir.join("config.toml"), &text).expect("a valid bench config")
}

/// A verified identity with roles, email and name claims.
fn identity(cfg: &Config) -> Identity {
    let keys = keys::load(cfg).expect("load the keys");
    let signer = Signer::new(&keys, cfg.jwt.issuer.clone(), cfg.jwt.audience.clone()).expect("a signing key");
    let verifier = Verifier::new(keys, cfg.jwt.issuer.clone(), cfg.jwt.audience.clone(), cfg.jwt.leeway);
    let mut extra = Map::new();
    extra.insert("roles".into(), json!(["admin", "user", "orders:read"]));
    extra.insert("email".into(), json!("alice@example.com"));
    extra.insert("name".into(), json!("Alice Wonderland"));
    let token = signer.sign("alice@example.com", &extra, Duration::from_secs(3600)).expect("sign a token").token;
    verifier.verify(&token, now_secs()).expect("the bench token verifies")
}

/// What a browser or API client sends, plus two spoofed identity headers.
fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut add = |name: &'static str, value: &'static str| {
        h.append(HeaderName::from_static(name), HeaderValue::from_static(value));
    };
    add("host", "api.example.com");
    add("user-agent", "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0");
    add("accept", "application/json, text/plain, */*");
    add("accept-language", "en-GB,en;q=0.7,fr;q=0.3");
    add("accept-encoding", "gzip, deflate, br, zstd");
    add("authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl");
    add("content-type", "application/json");
    add("origin", "https://app.example.com");
    add("referer", "https://app.example.com/orders");
    add("cookie", "session=abc123; theme=dark");
    add("x-request-id", "4bf92f3577b34da6a3ce929d0e0e4736");
    add("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    add("x-auth-subject", "mallory");
    add("x-auth-roles", "admin");
    h
}

fn identity_headers(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let cfg = config(dir.path());
    let who = identity(&cfg);
    let rules = IdentityRules::new(cfg.identity.clone());
    let headers = request_headers();

    let mut group = c.benchmark_group("identity");
    group.bench_function("strip", |b| {
        b.iter_batched(
            || headers.clone(),
            |mut h| {
                rules.strip(&mut h);
                h
            },
            BatchSize::SmallInput,
        );
    });
    group.bench_function("strip_and_apply", |b| {
        b.iter_batched(
            || headers.clone(),
            |mut h| {
                rules.strip(&mut h);
                rules.apply(&mut h, &who).expect("clean claim values");
                h
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

fn route_matching(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let table = RouteTable::new(config(dir.path()).routes);
    assert_eq!(table.match_route("/api/v1/orders/42").map(|r| r.path.as_str()), Some("/api/v1/orders"));
    assert_eq!(table.match_route("/apix").map(|r| r.path.as_str()), Some("/"));

    let mut group = c.benchmark_group("routes");
    for (name, path) in [("match_deep", "/api/v1/orders/12345/items"), ("match_short", "/admin"), ("match_fallback", "/some/unlisted/page")]
    {
        group.bench_function(name, |b| b.iter(|| table.match_route(black_box(path)).map(|r| r.path.len())));
    }
    for (name, path) in
        [("normalise_clean", "/api/v1/orders/12345/items"), ("normalise_dirty", "/api//v1/./orders/%7Euser/../12345/%69tems/")]
    {
        assert!(normalise_path(path).is_ok(), "{path}");
        group.bench_function(name, |b| b.iter(|| normalise_path(black_box(path))));
    }
    group.finish();
}

criterion_group!(benches, identity_headers, route_matching);
criterion_main!(benches);
