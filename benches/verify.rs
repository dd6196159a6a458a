//! `Verifier::verify` per algorithm, on a valid token and on a token whose
//! signature is wrong (the crypto runs and fails), so a regression in the
//! hot path of every authenticated request shows up without the load harness.
//!
//! Keys are generated into a temporary folder with `keys::generate_private_key`
//! and loaded through the real config path (`config::parse` + `keys::load`).

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use serde_json::{Map, Value, json};

use authgate::app::TOKEN_CACHE_CAPACITY;
use authgate::config;
use authgate::error::TokenError;
use authgate::jwt::{Signer, Verifier, now_secs};
use authgate::keys;
use authgate::token_cache::TokenCache;

const ISSUER: &str = "authgate-bench";
const AUDIENCE: &str = "api";
const ALGORITHMS: [&str; 6] = ["HS256", "RS256", "PS256", "ES256", "ES384", "EdDSA"];

/// A verifier and a signer for `alg`, from key files written into `dir`.
fn setup(dir: &Path, alg: &str, name: &str) -> (Verifier, Signer) {
    let key_line = if alg.starts_with("HS") {
        let secret = dir.join(format!("{name}.secret"));
        std::fs::write(&secret, keys_secret(name)).expect("write the HMAC secret");
        format!("secret_file = \"{name}.secret\"")
    } else {
        let algorithm = config::parse_algorithm(alg).expect("a known algorithm");
        keys::generate_private_key(algorithm, &dir.join(format!("{name}.pem"))).expect("generate a key");
        format!("private_key = \"{name}.pem\"")
    };
    let text = format!(
        "[jwt]\nalgorithm = \"{alg}\"\n{key_line}\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\n\n\
         [[routes]]\npath = \"/\"\nupstream = \"echo\"\n"
    );
    let cfg = config::parse(&dir.join(format!("{name}.toml")), &text).expect("a valid bench config");
    let keys = keys::load(&cfg).expect("load the keys");
    let signer = Signer::new(&keys, ISSUER.into(), AUDIENCE.into()).expect("a signing key");
    let verifier = Verifier::new(keys, ISSUER.into(), AUDIENCE.into(), cfg.jwt.leeway);
    (verifier, signer)
}

/// At least 32 bytes, different per key set.
fn keys_secret(name: &str) -> String {
    format!("{name}-0123456789abcdef0123456789abcdef")
}

/// The claims a login would add: roles and a couple of profile claims.
fn extra_claims() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("roles".into(), json!(["user", "orders:read"]));
    m.insert("email".into(), json!("alice@example.com"));
    m.insert("name".into(), json!("Alice Wonderland"));
    m
}

fn mint(signer: &Signer) -> String {
    signer.sign("alice@example.com", &extra_claims(), Duration::from_secs(3600)).expect("sign a token").token
}

/// `header.payload` of `good` with the signature of a token signed by another
/// key of the same algorithm: well-formed, same `kid`, wrong signature.
fn bad_signature(good: &str, other: &str) -> String {
    let (message, _) = good.rsplit_once('.').expect("a JWS");
    let (_, sig) = other.rsplit_once('.').expect("a JWS");
    format!("{message}.{sig}")
}

fn verify(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let mut group = c.benchmark_group("verify");
    for alg in ALGORITHMS {
        let (verifier, signer) = setup(dir.path(), alg, &format!("{alg}-a"));
        let (_, other_signer) = setup(dir.path(), alg, &format!("{alg}-b"));
        let token = mint(&signer);
        let now = now_secs();
        verifier.verify(&token, now).expect("the bench token verifies");
        group.bench_with_input(BenchmarkId::new("valid", alg), &token, |b, token| {
            b.iter(|| verifier.verify(black_box(token), black_box(now)));
        });

        let bad = bad_signature(&token, &mint(&other_signer));
        // Refused by the signature check itself, not by an earlier parse error.
        assert_eq!(verifier.verify(&bad, now).err(), Some(TokenError::Signature), "{alg}");
        group.bench_with_input(BenchmarkId::new("bad_signature", alg), &bad, |b, token| {
            b.iter(|| verifier.verify(black_box(token), black_box(now)));
        });

        // What the proxy does for a returning token: a cache hit instead of
        // the signature check (a miss is the "valid" case above plus an insert).
        let cache = TokenCache::new(TOKEN_CACHE_CAPACITY);
        cache.insert(token.as_bytes(), Arc::new(verifier.verify(&token, now).expect("valid")), 0);
        group.bench_with_input(BenchmarkId::new("cache_hit", alg), &token, |b, token| {
            b.iter(|| cache.get(black_box(token.as_bytes()), black_box(now), 30, 0));
        });
    }
    group.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
