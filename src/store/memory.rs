//! `store.kind = "memory"`: everything in this process, gone at exit. For
//! tests and throwaway use; `authgate revoke` cannot reach it.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{Cursor, Result, Revocations, Rotation, Store, TokenHash};

struct Family {
    sub: String,
    expires: u64,
    revoked: bool,
}

#[derive(Default)]
struct State {
    families: HashMap<String, Family>,
    /// token hash -> (family, used)
    tokens: HashMap<TokenHash, (String, bool)>,
    /// jti -> (seq, until)
    jtis: HashMap<String, (i64, u64)>,
    /// sub -> (seq, cutoff)
    cutoffs: HashMap<String, (i64, u64)>,
    users: HashMap<String, TokenHash>,
    seq: i64,
}

#[derive(Default)]
pub struct MemoryStore(Mutex<State>);

impl MemoryStore {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The maps stay consistent even if a holder panicked.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for MemoryStore {
    super::local_store!();

    fn create_family(&self, family: &str, sub: &str, token: &TokenHash, _now: u64, expires: u64) -> Result<()> {
        let mut s = self.state();
        s.families.insert(family.into(), Family { sub: sub.into(), expires, revoked: false });
        s.tokens.insert(*token, (family.into(), false));
        Ok(())
    }

    fn rotate_refresh(&self, old: &TokenHash, new: &TokenHash, now: u64) -> Result<Rotation> {
        let mut s = self.state();
        let Some((family_id, used)) = s.tokens.get(old).cloned() else { return Ok(Rotation::Invalid) };
        let Some(family) = s.families.get_mut(&family_id) else { return Ok(Rotation::Invalid) };
        if family.revoked || family.expires <= now {
            return Ok(Rotation::Invalid);
        }
        if used {
            family.revoked = true;
            return Ok(Rotation::Reused { sub: family.sub.clone() });
        }
        let sub = family.sub.clone();
        s.tokens.insert(*old, (family_id.clone(), true));
        s.tokens.insert(*new, (family_id.clone(), false));
        let cutoff = s.cutoffs.get(&sub).map_or(0, |c| c.1);
        Ok(Rotation::Rotated { sub, family: family_id, cutoff })
    }

    fn revoke_refresh(&self, token: &TokenHash) -> Result<bool> {
        let mut s = self.state();
        let Some((family_id, _)) = s.tokens.get(token).cloned() else { return Ok(false) };
        if let Some(f) = s.families.get_mut(&family_id) {
            f.revoked = true;
        }
        Ok(true)
    }

    fn revoke_family(&self, family: &str) -> Result<()> {
        if let Some(f) = self.state().families.get_mut(family) {
            f.revoked = true;
        }
        Ok(())
    }

    fn family_live(&self, family: &str) -> Result<bool> {
        Ok(self.state().families.get(family).is_some_and(|f| !f.revoked))
    }

    fn revoke_jti(&self, jti: &str, until: u64) -> Result<()> {
        let mut s = self.state();
        s.seq += 1;
        let seq = s.seq;
        // A later `until` gets a new sequence number, as in the other stores.
        let e = s.jtis.entry(jti.into()).or_insert((seq, until));
        if until > e.1 {
            *e = (seq, until);
        }
        Ok(())
    }

    fn revoke_subject(&self, sub: &str, cutoff: u64) -> Result<()> {
        let mut s = self.state();
        s.seq += 1;
        let seq = s.seq;
        let next = s.cutoffs.get(sub).map_or(cutoff, |c| super::next_cutoff(c.1, cutoff));
        s.cutoffs.insert(sub.into(), (seq, next));
        for f in s.families.values_mut().filter(|f| f.sub == sub) {
            f.revoked = true;
        }
        Ok(())
    }

    fn subject_cutoff(&self, sub: &str) -> Result<Option<u64>> {
        Ok(self.state().cutoffs.get(sub).map(|c| c.1))
    }

    fn revocations_since(&self, cursor: Cursor) -> Result<Revocations> {
        let s = self.state();
        let mut out = Revocations { cursor, ..Default::default() };
        for (jti, (seq, until)) in &s.jtis {
            if *seq > cursor.jtis {
                out.jtis.push((jti.clone(), *until));
                out.cursor.jtis = out.cursor.jtis.max(*seq);
            }
        }
        for (sub, (seq, cutoff)) in &s.cutoffs {
            if *seq > cursor.cutoffs {
                out.cutoffs.push((sub.clone(), *cutoff));
                out.cursor.cutoffs = out.cursor.cutoffs.max(*seq);
            }
        }
        Ok(out)
    }

    fn user_fingerprints(&self) -> Result<Vec<(String, TokenHash)>> {
        Ok(self.state().users.iter().map(|(k, v)| (k.clone(), *v)).collect())
    }

    fn user_fingerprint(&self, username: &str) -> Result<Option<TokenHash>> {
        Ok(self.state().users.get(username).copied())
    }

    fn set_user_fingerprint(&self, username: &str, fingerprint: Option<&TokenHash>) -> Result<()> {
        let mut s = self.state();
        match fingerprint {
            Some(f) => s.users.insert(username.into(), *f),
            None => s.users.remove(username),
        };
        Ok(())
    }

    fn prune(&self, now: u64) -> Result<u64> {
        let mut s = self.state();
        let before = s.jtis.len() + s.families.len();
        s.jtis.retain(|_, (_, until)| *until >= now);
        s.families.retain(|_, f| f.expires > now);
        let State { families, tokens, .. } = &mut *s;
        tokens.retain(|_, (family, _)| families.contains_key(family));
        Ok((before - s.jtis.len() - s.families.len()) as u64)
    }
}
