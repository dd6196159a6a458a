//! A bounded cache of verified tokens, so that a client presenting the same
//! token again skips the signature check (tens of microseconds for ES256).
//!
//! Safety rules: the key is the exact token bytes; only tokens that passed
//! full verification are inserted; an entry is never used past the token's
//! `exp` (plus leeway); revocation is checked by the caller on every hit;
//! an entry is only used under the key generation it was verified in (an
//! external issuer that drops or changes a key moves it on); the cache
//! belongs to one `App`, so a reload (new keys, issuers or audience)
//! starts empty.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::jwt::Identity;

const SHARDS: usize = 16;

/// foldhash, seeded per process, not SipHash: a token is 200 to 1,000
/// bytes, hashed on every request, and SipHash spent about 1,000
/// instructions on it. SipHash's resistance to chosen-key flooding buys
/// nothing here: only tokens that passed verification become keys, so a
/// client cannot choose them. And only the token's length and last 16
/// bytes are hashed (`Tail`): they are its signature's, as good as random
/// for a verified token. Equality still compares every byte.
#[derive(Default)]
struct Shard {
    /// token -> (identity, key generation it was verified in)
    map: HashMap<Box<[u8]>, (Arc<Identity>, u64), Tail>,
    /// The tokens' bytes: with tokens near the 8 KB limit, the count alone
    /// let the cache grow to 150 MB.
    bytes: usize,
}

/// The cache's budget for token bytes, all shards together. A cached
/// identity holds the token's claims too, about as much again.
const MAX_TOKEN_BYTES: usize = 8 * 1024 * 1024;

/// A `BuildHasher` that hashes a byte string's last 16 bytes (and, as
/// `Hash` for `[u8]` writes it first, its length) with foldhash.
#[derive(Default, Clone)]
struct Tail(foldhash::fast::RandomState);

struct TailHasher(foldhash::fast::FoldHasher<'static>);

impl std::hash::BuildHasher for Tail {
    type Hasher = TailHasher;
    fn build_hasher(&self) -> TailHasher {
        TailHasher(self.0.build_hasher())
    }
}

impl std::hash::Hasher for TailHasher {
    fn finish(&self) -> u64 {
        self.0.finish()
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.write(&bytes[bytes.len().saturating_sub(16)..]);
    }
    fn write_usize(&mut self, n: usize) {
        self.0.write_usize(n);
    }
}

pub struct TokenCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
}

impl TokenCache {
    /// A cache of at most `capacity` tokens (0 disables it).
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache { shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(), per_shard: capacity.div_ceil(SHARDS) }
    }

    fn shard(&self, token: &[u8]) -> &Mutex<Shard> {
        // The signature's last characters are as good as random for a
        // verified token, and cost nothing to pick.
        let i = token.iter().rev().take(2).fold(0usize, |acc, x| acc * 31 + *x as usize);
        &self.shards[i % SHARDS]
    }

    /// The identity of a token verified before, in key generation
    /// `generation`, if it has not expired.
    pub fn get(&self, token: &[u8], now: u64, leeway: u64, generation: u64) -> Option<Arc<Identity>> {
        if self.per_shard == 0 {
            return None;
        }
        let mut shard = self.shard(token).lock().unwrap_or_else(|p| p.into_inner());
        let (id, verified_in) = shard.map.get(token)?;
        if now >= id.exp().saturating_add(leeway) || *verified_in != generation {
            shard.map.remove(token);
            shard.bytes = shard.bytes.saturating_sub(token.len());
            return None;
        }
        Some(id.clone())
    }

    /// Caches a token verified in key generation `generation` (read
    /// before the verification began).
    pub fn insert(&self, token: &[u8], identity: Arc<Identity>, generation: u64) {
        if self.per_shard == 0 {
            return;
        }
        let mut shard = self.shard(token).lock().unwrap_or_else(|p| p.into_inner());
        if shard.map.len() >= self.per_shard || shard.bytes + token.len() > MAX_TOKEN_BYTES / SHARDS {
            // Full: start the shard over. Cheaper than tracking recency, and
            // a miss only costs one signature check.
            shard.map.clear();
            shard.bytes = 0;
        }
        if shard.map.insert(token.into(), (identity, generation)).is_none() {
            shard.bytes += token.len();
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map_or(0, |m| m.map.len())).sum()
    }

    /// The cached tokens' bytes.
    pub fn bytes(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map_or(0, |m| m.bytes)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
