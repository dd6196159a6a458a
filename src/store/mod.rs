//! The token store: refresh-token families, revoked `jti`s, per-subject
//! cut-offs and what authgate remembers of each user, behind one trait.
//!
//! The trait is synchronous on purpose: the embedded engine (SQLite) is a
//! blocking library, `authgate check` and `authgate revoke` run without an
//! async runtime, and request handlers call it through [`blocking`], which
//! moves the call to tokio's blocking pool. A networked store (Redis) fits
//! the same shape with a pooled synchronous connection.

pub mod embedded;
pub mod memory;
pub mod redis;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::config::{Config, ConfigError, StoreKind};

/// SHA-256 of a refresh token: the only form in which one is stored.
pub type TokenHash = [u8; 32];

pub fn hash_token(token: &str) -> TokenHash {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[derive(Debug, thiserror::Error)]
#[error("token store: {0}")]
pub struct StoreError(pub String);

pub type Result<T> = std::result::Result<T, StoreError>;

/// The outcome of presenting a refresh token.
#[derive(Debug, PartialEq, Eq)]
pub enum Rotation {
    /// It was live: it is now used, and `new` is the family's live token.
    /// `cutoff` is the subject's revoke-all cut-off as it stood at the
    /// rotation (0 for none), read with it: a later one moved during the
    /// refresh (`login::refresh_grant`).
    Rotated { sub: String, family: String, cutoff: u64 },
    /// It had been used already: the whole family is now revoked.
    Reused { sub: String },
    /// Unknown, expired, or its family was revoked.
    Invalid,
}

/// Where a reader of the revocation log stopped (opaque sequence numbers).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub jtis: i64,
    pub cutoffs: i64,
    /// Which incarnation of the log the numbers belong to (Redis: changes
    /// when it lost its data and restarted its numbering; a reader seeing
    /// another epoch reads the whole log again). 0 elsewhere.
    pub epoch: u64,
}

/// What a gateway writes back to a store that lost its data ([`Store::restore`]).
///
/// Not the users file's fingerprints: replicas in a rolling update hold
/// different files, and the first to write would win, newer or older. A
/// store without them judges no login by them, and the next reload or
/// start of a replica records its file (`sync_users`).
#[derive(Debug, Default)]
pub struct Restore {
    /// (jti, refuse until unix seconds)
    pub jtis: Vec<(String, u64)>,
    /// (sub, cut-off unix seconds)
    pub cutoffs: Vec<(String, u64)>,
}

/// The fingerprint recorded for a user removed from the users file: a
/// replica still running a file that has the user sees it differ from its
/// own and opens no session (`login::current_entry`).
pub const REMOVED: TokenHash = [0xff; 32];

/// One login limit to charge in a shared store: a GCRA cell of `burst`
/// attempts, one more every `interval`.
#[derive(Debug, Clone)]
pub struct RateCheck {
    pub key: String,
    pub interval: std::time::Duration,
    pub burst: u32,
}

/// Revocations recorded after a cursor.
#[derive(Debug, Default)]
pub struct Revocations {
    /// (jti, refuse until unix seconds)
    pub jtis: Vec<(String, u64)>,
    /// (sub, cut-off unix seconds)
    pub cutoffs: Vec<(String, u64)>,
    pub cursor: Cursor,
}

pub trait Store: Send + Sync {
    /// Starts a refresh family for `sub` with its first token.
    fn create_family(&self, family: &str, sub: &str, token: &TokenHash, now: u64, expires: u64) -> Result<()>;
    /// Uses `old` once, atomically: a live token is marked used and `new`
    /// joins its family; a used one revokes the family (reuse detection).
    fn rotate_refresh(&self, old: &TokenHash, new: &TokenHash, now: u64) -> Result<Rotation>;
    /// Revokes the family `token` belongs to; false when it is unknown.
    fn revoke_refresh(&self, token: &TokenHash) -> Result<bool>;
    fn revoke_family(&self, family: &str) -> Result<()>;
    /// Does the family exist, unrevoked?
    fn family_live(&self, family: &str) -> Result<bool>;
    /// Refuses the access token `jti` until `until` (unix seconds).
    fn revoke_jti(&self, jti: &str, until: u64) -> Result<()>;
    /// Refuses every token of `sub` issued before `cutoff`; ends every
    /// refresh family of `sub`.
    fn revoke_subject(&self, sub: &str, cutoff: u64) -> Result<()>;
    fn subject_cutoff(&self, sub: &str) -> Result<Option<u64>>;
    /// Revocations recorded after `cursor` (all of them from the default).
    fn revocations_since(&self, cursor: Cursor) -> Result<Revocations>;
    /// username -> fingerprint of the users file entry, as last loaded.
    fn user_fingerprints(&self) -> Result<Vec<(String, TokenHash)>>;
    /// Records (Some) or forgets (None) a user's fingerprint.
    fn set_user_fingerprint(&self, username: &str, fingerprint: Option<&TokenHash>) -> Result<()>;
    /// The fingerprint the store holds for one user.
    fn user_fingerprint(&self, username: &str) -> Result<Option<TokenHash>> {
        Ok(self.user_fingerprints()?.into_iter().find_map(|(name, fp)| (name == username).then_some(fp)))
    }
    /// Writes back what a gateway still knows after the store lost its data
    /// (a Redis restarted without persistence: its epoch changed): revoked
    /// jtis and cut-offs. Nothing is revoked anew: a cut-off or a jti's
    /// time only grows, and refresh families are left alone. Only a store
    /// that can lose its data while a gateway runs does anything.
    fn restore(&self, _lost: &Restore) -> Result<()> {
        Ok(())
    }
    /// Removes expired revocations and refresh families; returns how many.
    fn prune(&self, now: u64) -> Result<u64>;
    /// Is the store reachable and answering? (`/readyz`)
    fn ping(&self) -> Result<()> {
        Ok(())
    }
    // The three below have no default on purpose: a wrapper (metrics) that
    // forgot to forward one would silently lose shared limits or pushes.
    /// Does this store hold login limits shared by replicas ([`Store::rate_limit`])?
    fn shared_limits(&self) -> bool;
    /// Charges one attempt against each limit, atomically across replicas;
    /// Some(wait) when one of them is exhausted. Local stores answer None
    /// and leave login limits to the in-process limiter.
    fn rate_limit(&self, checks: &[RateCheck]) -> Result<Option<std::time::Duration>>;
    /// Starts following other processes' revocations as they happen,
    /// waking `wake` for each (needs a tokio runtime). The periodic resync
    /// in [`maintain`] runs either way and repairs what a push missed.
    fn follow(&self, wake: &Arc<tokio::sync::Notify>);
}

/// The three shared-store methods for a store that shares nothing live.
macro_rules! local_store {
    () => {
        fn shared_limits(&self) -> bool {
            false
        }
        fn rate_limit(&self, _checks: &[super::RateCheck]) -> Result<Option<std::time::Duration>> {
            Ok(None)
        }
        fn follow(&self, _wake: &std::sync::Arc<tokio::sync::Notify>) {}
    };
}
use local_store;

/// Opens the configured store (creating the embedded file and its folder).
pub fn open(config: &Config) -> std::result::Result<Arc<dyn Store>, ConfigError> {
    let s = &config.store;
    let err = |key: &str, message: String| ConfigError { file: config.file.clone(), key: key.into(), message };
    match s.kind {
        StoreKind::Memory => Ok(Arc::new(memory::MemoryStore::default())),
        StoreKind::Embedded => embedded::SqliteStore::open(&s.path)
            .map(|st| Arc::new(st) as Arc<dyn Store>)
            .map_err(|e| err("store.path", format!("{}: {}", s.path.display(), e.0))),
        StoreKind::Redis => redis::RedisStore::open(s.redis_url.as_deref().unwrap_or_default())
            .map(|st| Arc::new(st) as Arc<dyn Store>)
            .map_err(|e| err("store.redis_url", e.0)),
    }
}

/// Runs a store call on the blocking pool.
pub async fn blocking<T, F>(store: &Arc<dyn Store>, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&dyn Store) -> Result<T> + Send + 'static,
{
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(store.as_ref())).await.map_err(|e| StoreError(format!("store task failed: {e}")))?
}

/// The cut-off a revoke-all writes, given the subject's current one.
/// `cutoff` is the second after now: tokens with an earlier `iat` are
/// refused. A token minted after an earlier revoke in this same second was
/// issued at that revoke's cut-off (so that it is accepted), and `iat` has
/// no finer resolution; so a revoke that comes within that second must
/// move the cut-off one further, or such a token would survive it.
pub fn next_cutoff(current: u64, cutoff: u64) -> u64 {
    current.saturating_add(1).max(cutoff)
}

/// Compares the users file with what the store remembers of it: a user whose
/// password hash changed, who was disabled, or who was removed gets a
/// cut-off at `cutoff` (their tokens and refresh families end). Returns them.
///
/// Each cut-off is at least the second after its own write, however long
/// the file takes to go through.
///
/// `previous` is the file this gateway ran with until now (a reload): it
/// stands in for a user the store holds nothing for, as after a Redis that
/// lost its data, so that a change is still seen.
///
/// The new fingerprint is written before the cut-off. Another replica that
/// still runs the old file checks the stored fingerprint after it opens a
/// session (`login::password_grant`): either it sees the new one and undoes
/// the login, or its session was opened before this cut-off and is ended by it.
pub fn sync_users(
    store: &dyn Store,
    users: &crate::users::Users,
    previous: Option<&HashMap<String, TokenHash>>,
    cutoff: u64,
) -> Result<Vec<String>> {
    let stored: HashMap<String, TokenHash> = store.user_fingerprints()?.into_iter().collect();
    let mut known = stored.clone();
    for (name, fp) in previous.into_iter().flatten() {
        known.entry(name.clone()).or_insert(*fp);
    }
    let mut revoked = Vec::new();
    let mut present = HashSet::new();
    for u in users.iter() {
        present.insert(u.username.as_str());
        let fp = u.fingerprint();
        if stored.get(&u.username) != Some(&fp) {
            store.set_user_fingerprint(&u.username, Some(&fp))?;
        }
        let before = known.get(&u.username);
        if before == Some(&fp) {
            continue;
        }
        if before.is_some() || u.disabled {
            store.revoke_subject(&u.username, cutoff.max(crate::jwt::now_secs() + 1))?;
            revoked.push(u.username.clone());
        }
    }
    for (name, fp) in &known {
        // Recorded as removed (not forgotten), so that a replica still on
        // a file with the user refuses its logins; done once.
        if !present.contains(name.as_str()) && *fp != REMOVED {
            store.set_user_fingerprint(name, Some(&REMOVED))?;
            store.revoke_subject(name, cutoff.max(crate::jwt::now_secs() + 1))?;
            revoked.push(name.clone());
        }
    }
    Ok(revoked)
}

/// How often a gateway reads revocations other processes wrote (`authgate
/// revoke`, another replica): the longest a CLI revocation waits to apply.
pub const SYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// How often expired revocations, families and rate-limit keys are dropped.
pub const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Copies the revocations recorded after `cursor` into the denylist.
pub fn load_into(store: &dyn Store, denylist: &crate::revocation::Denylist, cursor: Cursor) -> Result<Cursor> {
    let r = store.revocations_since(cursor)?;
    for (jti, until) in &r.jtis {
        denylist.revoke_jti(jti, *until);
    }
    for (sub, cutoff) in &r.cutoffs {
        denylist.revoke_subject(sub, *cutoff);
    }
    Ok(r.cursor)
}

/// Gives a store that lost its data what this gateway knows; false when
/// the store refused it (tried again on the next round).
async fn restore(app: &crate::app::App) -> bool {
    let now = crate::jwt::now_secs();
    let mut jtis = app.denylist.jtis();
    jtis.retain(|(_, until)| *until >= now);
    let cutoffs = app.denylist.cutoffs();
    let lost = Restore { jtis, cutoffs };
    let counts = (lost.jtis.len(), lost.cutoffs.len());
    match blocking(&app.store, move |s| s.restore(&lost)).await {
        Ok(()) => {
            tracing::info!(jtis = counts.0, cutoffs = counts.1, "written back to the store");
            true
        }
        Err(error) => {
            tracing::warn!(%error, "cannot write back to the store yet");
            false
        }
    }
}

/// The gateway's background upkeep: keeps the in-memory denylist current
/// with the store (every `SYNC_EVERY`, and at once when the store announces
/// a revocation) and prunes what has expired. Ends when the app is dropped.
pub async fn maintain(app: std::sync::Weak<crate::app::App>) {
    let wake = Arc::new(tokio::sync::Notify::new());
    match app.upgrade() {
        Some(a) => a.store.follow(&wake),
        None => return,
    }
    let mut tick = tokio::time::interval(SYNC_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_prune = tokio::time::Instant::now();
    let mut failing = false;
    // The store lost its data and has not yet been given back what this
    // gateway knows (retried each round until it takes it).
    let mut lost = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = wake.notified() => {}
        }
        let Some(app) = app.upgrade() else { return };
        let cursor = *app.revocation_cursor.lock().unwrap_or_else(|p| p.into_inner());
        let store = app.store.clone();
        let prune = last_prune.elapsed() >= PRUNE_EVERY;
        let work = tokio::task::spawn_blocking(move || {
            let mut pruned = 0;
            if prune {
                pruned = store.prune(crate::jwt::now_secs())?;
            }
            Ok::<_, StoreError>((store.revocations_since(cursor)?, pruned))
        });
        match work.await {
            Ok(Ok((revocations, pruned))) => {
                for (jti, until) in &revocations.jtis {
                    app.denylist.revoke_jti(jti, *until);
                }
                for (sub, cutoff) in &revocations.cutoffs {
                    app.denylist.revoke_subject(sub, *cutoff);
                }
                *app.revocation_cursor.lock().unwrap_or_else(|p| p.into_inner()) = revocations.cursor;
                if cursor.epoch != 0 && revocations.cursor.epoch != cursor.epoch {
                    tracing::warn!(
                        "the store lost its data (a Redis restarted without persistence): writing back the revocations this gateway knows"
                    );
                    lost = true;
                }
                if pruned > 0 {
                    tracing::debug!(pruned, "expired store entries removed");
                }
                if failing {
                    tracing::info!("the store answers again; revocations are followed");
                    failing = false;
                }
            }
            // Once per outage, not once a second.
            Ok(Err(error)) if !failing => {
                tracing::warn!(%error, "cannot read revocations from the store; proxied requests use the denylist as last read");
                failing = true;
            }
            Ok(Err(_)) => {}
            Err(error) => tracing::warn!(%error, "store upkeep task failed"),
        }
        if lost {
            lost = !restore(&app).await;
        }
        if prune {
            last_prune = tokio::time::Instant::now();
            app.denylist.prune(crate::jwt::now_secs());
            if let Some(login) = &app.login {
                login.limits.prune();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(entries: &[(&str, &str)]) -> crate::users::Users {
        let dir = tempfile::tempdir().expect("tempdir");
        let text: String =
            entries.iter().map(|(name, hash)| format!("[[users]]\nusername = \"{name}\"\npassword_hash = \"{hash}\"\n\n")).collect();
        let file = dir.path().join("users.toml");
        std::fs::write(&file, text).expect("write");
        crate::users::load(&file).expect("users")
    }

    /// A store that lost its data (a Redis restarted without persistence)
    /// holds no fingerprints: a reload still sees a changed password, and a
    /// removed user, by the file the gateway ran with until then.
    #[test]
    fn a_reload_sees_changes_the_store_forgot() {
        let (old, new) = (crate::users::hash_password("one").expect("hash"), crate::users::hash_password("two").expect("hash"));
        let before = users(&[("alice", &old), ("bob", &old), ("carol", &old)]);
        let after = users(&[("alice", &new), ("bob", &old)]);
        let store = memory::MemoryStore::default();
        let mut revoked = sync_users(&store, &after, Some(&before.fingerprints()), 100).expect("sync");
        revoked.sort();
        assert_eq!(revoked, ["alice", "carol"]);
        assert!(store.subject_cutoff("alice").expect("cutoff").is_some());
        assert_eq!(store.subject_cutoff("bob").expect("cutoff"), None);
        assert_eq!(store.user_fingerprint("carol").expect("fingerprint"), Some(REMOVED), "a removed user is recorded as removed");
        // The store holds the new file now, so the next reload changes nothing.
        assert!(sync_users(&store, &after, Some(&after.fingerprints()), 100).expect("sync").is_empty());
        // With nothing to compare against (a first start), nothing is revoked.
        let fresh = memory::MemoryStore::default();
        assert!(sync_users(&fresh, &after, None, 100).expect("sync").is_empty());
    }
}
