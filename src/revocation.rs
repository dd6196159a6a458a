//! The live denylist every proxied request is checked against: revoked
//! `jti`s until their `exp`, and per-subject cut-offs. It lives in memory so
//! that the check costs no disk or network round trip; the store fills it.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::jwt::Identity;

#[derive(Default)]
pub struct Denylist {
    /// jti -> exp (unix seconds): kept until the token would expire anyway.
    jtis: RwLock<HashMap<String, u64>>,
    /// sub -> cut-off (unix seconds): tokens with `iat` before it are refused.
    cutoffs: RwLock<HashMap<String, u64>>,
}

impl Denylist {
    pub fn is_revoked(&self, id: &Identity) -> bool {
        {
            let jtis = read(&self.jtis);
            if jtis.contains_key(id.jti()) || id.legacy_jti().is_some_and(|j| jtis.contains_key(j)) {
                return true;
            }
        }
        match read(&self.cutoffs).get(id.sub()) {
            // A token without `iat` cannot prove it came after the cut-off.
            Some(cutoff) => id.iat().is_none_or(|iat| iat < *cutoff),
            None => false,
        }
    }

    pub fn revoke_jti(&self, jti: &str, exp: u64) {
        write(&self.jtis).insert(jti.to_string(), exp);
    }

    /// Refuses every token of `sub` issued before `cutoff`.
    pub fn revoke_subject(&self, sub: &str, cutoff: u64) {
        let mut c = write(&self.cutoffs);
        let e = c.entry(sub.to_string()).or_insert(0);
        *e = (*e).max(cutoff);
    }

    pub fn subject_cutoff(&self, sub: &str) -> Option<u64> {
        read(&self.cutoffs).get(sub).copied()
    }

    /// Forgets revoked jtis whose tokens have expired.
    pub fn prune(&self, now: u64) {
        write(&self.jtis).retain(|_, exp| *exp >= now);
    }

    /// Every revoked jti with the time it is refused until.
    pub fn jtis(&self) -> Vec<(String, u64)> {
        read(&self.jtis).iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Every subject's cut-off.
    pub fn cutoffs(&self) -> Vec<(String, u64)> {
        read(&self.cutoffs).iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    pub fn len(&self) -> usize {
        read(&self.jtis).len() + read(&self.cutoffs).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// A poisoned lock only means another thread panicked mid-insert into a map
// that is still consistent; keep serving rather than fail every request.
fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}
