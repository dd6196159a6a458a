//! The users file (users.toml or an Apache htpasswd file) and password
//! hashing and verification.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::ConfigError;

/// The demo user of the shipped users.toml: never on a public listener.
pub const DEMO_USERNAME: &str = "alice@example.com";

/// Claims authgate sets itself; a users file cannot set them.
const RESERVED_CLAIMS: [&str; 8] = ["sub", "iss", "aud", "iat", "nbf", "exp", "jti", "roles"];

pub struct User {
    pub username: String,
    pub password_hash: PasswordHash,
    pub roles: Vec<String>,
    pub disabled: bool,
    pub claims: Map<String, Value>,
}

impl User {
    /// What the store remembers of a user to notice a password change or a
    /// disabling between two loads: a digest, never the hash itself.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(self.password_hash.as_str().as_bytes());
        ctx.update(if self.disabled { b"\0disabled" } else { b"\0enabled" });
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }
}

/// A validated PHC string: argon2id or bcrypt.
#[derive(Clone)]
pub enum PasswordHash {
    Argon2id(String),
    Bcrypt(String),
}

/// The costliest hashes a users file may hold. Each login, and each load
/// of the file (one dummy hash per kind, `Users::from_list`), costs one
/// check; past these a single check takes many seconds or gigabytes, and a
/// start or a reload hangs on it. OWASP's recommendations (argon2id 19 MiB
/// t=2, bcrypt 10) sit far below them.
pub const MAX_BCRYPT_COST: u32 = 16;
/// argon2id memory, in KiB (256 MiB).
pub const MAX_ARGON2_M_KIB: u32 = 262_144;
pub const MAX_ARGON2_T: u32 = 16;
pub const MAX_ARGON2_P: u32 = 16;

/// Why a users-file hash is refused.
#[derive(Debug)]
pub enum HashError {
    /// Not an argon2id or bcrypt PHC string.
    Malformed(&'static str),
    /// Well-formed, past the cost limits above.
    TooCostly(String),
}

impl std::fmt::Display for HashError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HashError::Malformed(m) => f.write_str(m),
            HashError::TooCostly(m) => f.write_str(m),
        }
    }
}

impl PasswordHash {
    pub fn parse(s: &str) -> Result<PasswordHash, HashError> {
        const BAD: &str = "not an argon2id or bcrypt PHC string (make one with `authgate hash-password`)";
        if s.starts_with("$argon2") {
            let h = argon2::PasswordHash::new(s).map_err(|_| HashError::Malformed(BAD))?;
            if h.algorithm.as_str() != "argon2id" {
                return Err(HashError::Malformed("argon2i and argon2d are not accepted; use argon2id (`authgate hash-password`)"));
            }
            let p = argon2::Params::try_from(&h).map_err(|_| HashError::Malformed(BAD))?;
            if p.m_cost() > MAX_ARGON2_M_KIB || p.t_cost() > MAX_ARGON2_T || p.p_cost() > MAX_ARGON2_P {
                return Err(HashError::TooCostly(format!(
                    "argon2id m={} t={} p={} is too costly to check (at most m={MAX_ARGON2_M_KIB} t={MAX_ARGON2_T} p={MAX_ARGON2_P}); \
                     hash the password again with `authgate hash-password`",
                    p.m_cost(),
                    p.t_cost(),
                    p.p_cost()
                )));
            }
            return Ok(PasswordHash::Argon2id(s.to_string()));
        }
        if ["$2a$", "$2b$", "$2y$"].iter().any(|p| s.starts_with(p)) && s.len() == 60 {
            let parts = s.parse::<bcrypt::HashParts>().map_err(|_| HashError::Malformed(BAD))?;
            if parts.get_cost() > MAX_BCRYPT_COST {
                return Err(HashError::TooCostly(format!(
                    "bcrypt cost {} is too costly to check (at most {MAX_BCRYPT_COST}); hash the password again with a lower cost",
                    parts.get_cost()
                )));
            }
            return Ok(PasswordHash::Bcrypt(s.to_string()));
        }
        Err(HashError::Malformed(BAD))
    }

    pub fn as_str(&self) -> &str {
        match self {
            PasswordHash::Argon2id(s) | PasswordHash::Bcrypt(s) => s,
        }
    }

    /// Slow by design: call it on the blocking pool. Both libraries compare
    /// the derived hash in constant time.
    pub fn verify(&self, password: &str) -> bool {
        match self {
            PasswordHash::Argon2id(s) => {
                use argon2::password_hash::PasswordVerifier;
                argon2::PasswordHash::new(s).is_ok_and(|h| argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
            }
            PasswordHash::Bcrypt(s) => bcrypt::verify(password, s).unwrap_or(false),
        }
    }

    /// A hash of a random password with the same algorithm and cost, so that
    /// an unknown username costs as much time as a wrong password.
    fn dummy_like(&self) -> anyhow::Result<PasswordHash> {
        let password = crate::jwt::random_id(24);
        match self {
            PasswordHash::Argon2id(s) => {
                use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
                let parsed = argon2::PasswordHash::new(s).map_err(|e| anyhow::anyhow!("{e}"))?;
                let params = argon2::Params::try_from(&parsed).map_err(|e| anyhow::anyhow!("{e}"))?;
                let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
                let salt = SaltString::generate(&mut OsRng);
                let h = a.hash_password(password.as_bytes(), &salt).map_err(|e| anyhow::anyhow!("{e}"))?;
                Ok(PasswordHash::Argon2id(h.to_string()))
            }
            PasswordHash::Bcrypt(s) => {
                let cost = s.parse::<bcrypt::HashParts>().map(|p| p.get_cost()).unwrap_or(bcrypt::DEFAULT_COST);
                Ok(PasswordHash::Bcrypt(bcrypt::hash(password, cost)?))
            }
        }
    }
}

/// The loaded users, by username, and the dummy hashes for unknown ones.
pub struct Users {
    by_name: HashMap<String, User>,
    /// One dummy per kind of hash in the file (algorithm and cost).
    dummies: Vec<PasswordHash>,
    /// For each user, in file order, the index of its kind's dummy.
    kinds: Vec<usize>,
}

/// A hash's algorithm and cost: what decides how long checking it takes.
fn cost_class(h: &PasswordHash) -> String {
    match h {
        PasswordHash::Argon2id(s) => argon2::PasswordHash::new(s)
            .ok()
            .and_then(|p| argon2::Params::try_from(&p).ok())
            .map_or_else(|| "argon2id".to_string(), |p| format!("argon2id m={} t={} p={}", p.m_cost(), p.t_cost(), p.p_cost())),
        PasswordHash::Bcrypt(s) => format!("bcrypt {}", s.parse::<bcrypt::HashParts>().map(|p| p.get_cost()).unwrap_or(0)),
    }
}

/// A process-wide secret for `Users::hash_for`'s choice of dummy.
fn dummy_key() -> &'static aws_lc_rs::hmac::Key {
    static KEY: std::sync::OnceLock<aws_lc_rs::hmac::Key> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let mut secret = [0u8; 32];
        aws_lc_rs::rand::fill(&mut secret).expect("the system random number generator failed");
        aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &secret)
    })
}

impl Users {
    pub fn get(&self, username: &str) -> Option<&User> {
        self.by_name.get(username)
    }

    pub fn iter(&self) -> impl Iterator<Item = &User> {
        self.by_name.values()
    }

    /// username -> [`User::fingerprint`], for every user.
    pub fn fingerprints(&self) -> HashMap<String, [u8; 32]> {
        self.iter().map(|u| (u.username.clone(), u.fingerprint())).collect()
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The hash to check a password against: the user's, or for an unknown
    /// username a dummy of the kind (algorithm and cost) of one of the
    /// file's users, picked by a keyed hash of the name. So the same name
    /// always takes the same time, and a kind comes up as often as users
    /// have it: how long a name takes says nothing about whether it exists,
    /// even in a file that mixes bcrypt and argon2id or their costs.
    pub fn hash_for(&self, username: &str) -> PasswordHash {
        if let Some(u) = self.get(username) {
            return u.password_hash.clone();
        }
        let tag = aws_lc_rs::hmac::sign(dummy_key(), username.as_bytes());
        let mut n = [0u8; 8];
        n.copy_from_slice(&tag.as_ref()[..8]);
        let kind = match self.kinds.len() {
            0 => 0,
            users => self.kinds[(u64::from_le_bytes(n) % users as u64) as usize],
        };
        self.dummies[kind].clone()
    }

    pub fn from_list(list: Vec<User>) -> anyhow::Result<Users> {
        let mut classes: Vec<String> = Vec::new();
        let mut dummies = Vec::new();
        let mut kinds = Vec::with_capacity(list.len());
        for u in &list {
            let class = cost_class(&u.password_hash);
            let kind = match classes.iter().position(|c| *c == class) {
                Some(k) => k,
                None => {
                    classes.push(class);
                    dummies.push(u.password_hash.dummy_like()?);
                    dummies.len() - 1
                }
            };
            kinds.push(kind);
        }
        if dummies.is_empty() {
            dummies.push(PasswordHash::Argon2id(hash_password(&crate::jwt::random_id(24))?));
        }
        Ok(Users { by_name: list.into_iter().map(|u| (u.username.clone(), u)).collect(), dummies, kinds })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    users: Vec<RawUser>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    username: String,
    password_hash: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    disabled: bool,
    #[serde(default)]
    claims: toml::Table,
}

fn err(file: &Path, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError { file: file.to_path_buf(), key: key.into(), message: message.into() }
}

/// Loads users.toml, or an htpasswd file (`name:hash` lines), by content.
pub fn load(file: &Path) -> anyhow::Result<Users> {
    let text = std::fs::read_to_string(file).map_err(|e| err(file, "", format!("cannot read the users file: {e}")))?;
    let list = if looks_like_htpasswd(&text) { parse_htpasswd(file, &text)? } else { parse_toml(file, &text)? };
    Users::from_list(list)
}

fn looks_like_htpasswd(text: &str) -> bool {
    let first = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#'));
    first.is_some_and(|l| !l.starts_with('[') && !l.contains('=') && l.contains(':'))
}

fn parse_htpasswd(file: &Path, text: &str) -> Result<Vec<User>, ConfigError> {
    let mut users: Vec<User> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = format!("line {}", i + 1);
        let (name, hash) = line.split_once(':').ok_or_else(|| err(file, &key, "expected `username:hash`"))?;
        if name.is_empty() {
            return Err(err(file, &key, "the username is empty"));
        }
        let password_hash = match PasswordHash::parse(hash) {
            Ok(h) => h,
            Err(HashError::TooCostly(m)) => return Err(err(file, &key, format!("user {name:?}: {m}"))),
            Err(HashError::Malformed(_)) => {
                return Err(err(file, &key, "only bcrypt hashes are supported in an htpasswd file; create them with `htpasswd -B`"));
            }
        };
        if users.iter().any(|u| u.username == name) {
            return Err(err(file, &key, format!("user {name:?} is listed twice")));
        }
        users.push(User { username: name.into(), password_hash, roles: Vec::new(), disabled: false, claims: Map::new() });
    }
    Ok(users)
}

fn parse_toml(file: &Path, text: &str) -> Result<Vec<User>, ConfigError> {
    let one_line = crate::config::one_line;
    let de = toml::Deserializer::parse(text).map_err(|e| err(file, "", one_line(&e.to_string())))?;
    let raw: RawFile = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        err(file, if path == "." { String::new() } else { path }, one_line(&e.into_inner().to_string()))
    })?;
    let mut users: Vec<User> = Vec::with_capacity(raw.users.len());
    for (i, u) in raw.users.into_iter().enumerate() {
        let key = |k: &str| format!("users[{i}].{k}");
        if u.username.trim().is_empty() || u.username != u.username.trim() {
            return Err(err(file, key("username"), "must be non-empty, without leading or trailing spaces"));
        }
        if let Some(j) = users.iter().position(|p| p.username == u.username) {
            return Err(err(file, key("username"), format!("{:?} is already users[{j}]", u.username)));
        }
        let password_hash = PasswordHash::parse(&u.password_hash).map_err(|m| err(file, key("password_hash"), m.to_string()))?;
        let mut claims = Map::new();
        for (name, value) in u.claims {
            if RESERVED_CLAIMS.contains(&name.as_str()) {
                return Err(err(
                    file,
                    key(&format!("claims.{name}")),
                    "authgate sets this claim itself; it cannot come from the users file",
                ));
            }
            let value = serde_json::to_value(&value).map_err(|e| err(file, key(&format!("claims.{name}")), e.to_string()))?;
            claims.insert(name, value);
        }
        users.push(User { username: u.username, password_hash, roles: u.roles, disabled: u.disabled, claims });
    }
    Ok(users)
}

/// An argon2id PHC string for `password` (OWASP parameters: 19 MiB, t=2, p=1).
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that mixes kinds of hash: an unknown name is checked against
    /// a dummy of one of them, always the same for one name, each kind as
    /// often as users have it. With one dummy of the first user's kind, a
    /// bcrypt user among argon2id ones stood out by its time (and unknown
    /// names by theirs).
    #[test]
    fn unknown_names_take_the_time_of_a_kind_users_have() {
        let user = |name: &str, hash: String| User {
            username: name.into(),
            password_hash: PasswordHash::parse(&hash).expect("hash"),
            roles: Vec::new(),
            disabled: false,
            claims: Map::new(),
        };
        let argon = {
            use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
            let params = argon2::Params::new(8, 1, 1, None).expect("params");
            let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
            a.hash_password(b"pw", &SaltString::generate(&mut OsRng)).expect("argon2").to_string()
        };
        let bcrypt = || bcrypt::hash("pw", 4).expect("bcrypt");
        let users = Users::from_list(vec![
            user("a", argon.clone()),
            user("b", bcrypt()),
            user("c", bcrypt()),
            user("d", bcrypt()),
            user("e", bcrypt::hash("pw", 5).expect("bcrypt")),
        ])
        .expect("users");
        assert_eq!(users.dummies.len(), 3, "argon2id, bcrypt 4, bcrypt 5");
        let class = |name: &str| cost_class(&users.hash_for(name));
        let mut counts = HashMap::new();
        for i in 0..1000 {
            let name = format!("nobody-{i}");
            assert_eq!(class(&name), class(&name), "one name, one kind");
            *counts.entry(class(&name)).or_insert(0) += 1;
        }
        // Shares 1/5, 3/5, 1/5 of 1,000: far from the edges of chance.
        let n = |c: &str| counts.get(c).copied().unwrap_or(0);
        assert!((120..=280).contains(&n("argon2id m=8 t=1 p=1")), "{counts:?}");
        assert!((520..=680).contains(&n("bcrypt 4")), "{counts:?}");
        assert!((120..=280).contains(&n("bcrypt 5")), "{counts:?}");
        // A known name gets its own hash.
        assert_eq!(users.hash_for("a").as_str(), argon);
    }

    #[test]
    fn hashes_verify_and_bad_ones_are_refused() {
        let a = PasswordHash::parse(&hash_password("pw").expect("hash")).expect("argon2id");
        assert!(a.verify("pw") && !a.verify("px"));
        let b = bcrypt::hash("pw", 4).expect("bcrypt").replacen("$2b$", "$2y$", 1);
        let b = PasswordHash::parse(&b).expect("bcrypt");
        assert!(b.verify("pw") && !b.verify("px"));
        assert!(PasswordHash::parse("$apr1$abc$def").is_err());
        assert!(PasswordHash::parse(&hash_password("pw").expect("hash")).is_ok(), "the default parameters are well within the limits");
        assert!(PasswordHash::parse("plaintext").is_err());
        assert!(looks_like_htpasswd("# c\nbob:$2y$05$abc\n"));
        assert!(!looks_like_htpasswd("[[users]]\nusername = \"a:b\"\n"));
    }

    /// Hash costs were not capped: a bcrypt cost of 31 or an argon2id
    /// m of gigabytes hung a start or a reload (one dummy hash per kind)
    /// and every login of that user. The limits themselves are accepted.
    #[test]
    fn hashes_past_the_cost_limits_are_refused() {
        let argon = |m: u32, t: u32, p: u32| {
            format!("$argon2id$v=19$m={m},t={t},p={p}$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
        };
        let bcrypt_cost = |cost: u32| bcrypt::hash("pw", 4).expect("bcrypt").replacen("$04$", &format!("${cost:02}$"), 1);
        for (hash, what) in [
            (argon(MAX_ARGON2_M_KIB + 1, 1, 1), "m"),
            (argon(8, MAX_ARGON2_T + 1, 1), "t"),
            (argon(256, 1, MAX_ARGON2_P + 1), "p"),
            (argon(4_194_304, 1, 1), "m of 4 GiB"),
            (bcrypt_cost(MAX_BCRYPT_COST + 1), "bcrypt"),
            (bcrypt_cost(31), "bcrypt 31"),
        ] {
            assert!(matches!(PasswordHash::parse(&hash), Err(HashError::TooCostly(_))), "{what}: {hash}");
        }
        for hash in [argon(MAX_ARGON2_M_KIB, MAX_ARGON2_T, MAX_ARGON2_P), bcrypt_cost(MAX_BCRYPT_COST)] {
            assert!(PasswordHash::parse(&hash).is_ok(), "{hash}");
        }
    }
}
