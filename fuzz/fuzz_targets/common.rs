//! A real ES256 key set and identity rules, built once per fuzzing process
//! from a config the way the gateway builds them.

use std::sync::OnceLock;

use authgate::identity::IdentityRules;
use authgate::jwt::Verifier;

pub struct Fixture {
    pub verifier: Verifier,
    pub identity: IdentityRules,
    pub signing_key: jsonwebtoken::EncodingKey,
    _dir: tempfile::TempDir,
}

pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("jwt.pem");
        authgate::keys::generate_private_key(jsonwebtoken::Algorithm::ES256, &key).expect("key");
        let text = format!(
            "[jwt]\nalgorithm = \"ES256\"\nprivate_key = \"{}\"\nissuer = \"authgate\"\naudience = \"api\"\n\
             [identity]\nclaim_headers = {{ roles = \"X-Auth-Roles\", email = \"X-Auth-Email\", n = \"X-Auth-N\" }}\n\
             strip_prefixes = [\"X-Auth-\", \"X-User-\"]\nassertion_header = \"X-Assert\"\n\
             [[routes]]\npath = \"/\"\nupstream = \"echo\"\n",
            key.display()
        );
        let config = authgate::config::parse(&dir.path().join("config.toml"), &text).expect("config");
        let keys = authgate::keys::load(&config).expect("keys");
        let verifier = Verifier::new(keys, "authgate".into(), "api".into(), std::time::Duration::from_secs(30));
        let identity = IdentityRules::new(config.identity.clone());
        let signing_key = jsonwebtoken::EncodingKey::from_ec_pem(&std::fs::read(&key).expect("pem")).expect("signing key");
        Fixture { verifier, identity, signing_key, _dir: dir }
    })
}

/// `payload` (any bytes) signed as an ES256 JWT by the fixture's key, so
/// that fuzzing reaches the claim checks behind the signature.
pub fn signed(payload: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let msg = format!("{}.{}", b64.encode(br#"{"alg":"ES256","typ":"JWT"}"#), b64.encode(payload));
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &fixture().signing_key, jsonwebtoken::Algorithm::ES256).expect("sign");
    format!("{msg}.{sig}")
}
