//! `store.kind = "redis"`: the state several replicas share.
//!
//! Calls are synchronous, like the trait: each runs on tokio's blocking pool
//! (`store::blocking`) over a small pool of plain connections with bounded
//! connect and I/O timeouts, so a dead Redis answers an error in about a
//! second instead of hanging a login. Every operation that must be atomic
//! (refresh rotation, revocations with their log, the login limits) is one
//! Lua script, run with EVALSHA and re-sent with EVAL after NOSCRIPT.
//!
//! Keys (all under `authgate:`): `rt:<hash>` a refresh token {family, used};
//! `fam:<id>` a family {sub, expires, revoked}; `subfam:<sub>` a subject's
//! families; `jti:<jti>` a revoked access token, expiring with it; `jti_log`
//! and `cutoff_log` sorted sets scored by `seq`, the change log replicas
//! follow; `jti_exp` the same jtis scored by expiry (for pruning);
//! `cutoffs` sub -> cut-off; `users` username -> fingerprint; `epoch`, which
//! changes when Redis loses its data; `rl:*` the GCRA state of login limits.
//! Each change to the log is also published on [`CHANNEL`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::{Connection, RedisError, RedisResult, Script};

use super::{Cursor, RateCheck, Result, Revocations, Rotation, Store, StoreError, TokenHash};

const PREFIX: &str = "authgate:";
/// Pub/sub channel announcing a new revocation (payload: its sequence number).
pub const CHANNEL: &str = "authgate:revocations";
/// Bounds on each Redis call: a login waits at most about this long when
/// Redis is down or stuck (connection refused is answered at once).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// Idle connections kept for reuse; more are opened under load, then closed.
const MAX_IDLE: usize = 16;

pub struct RedisStore {
    client: redis::Client,
    idle: Mutex<Vec<Connection>>,
    scripts: Scripts,
}

struct Scripts {
    create_family: Script,
    rotate: Script,
    revoke_refresh: Script,
    revoke_jti: Script,
    revoke_subject: Script,
    since: Script,
    prune: Script,
    rate: Script,
    restore: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            create_family: Script::new(CREATE_FAMILY),
            rotate: Script::new(ROTATE),
            revoke_refresh: Script::new(REVOKE_REFRESH),
            revoke_jti: Script::new(REVOKE_JTI),
            revoke_subject: Script::new(REVOKE_SUBJECT),
            since: Script::new(SINCE),
            prune: Script::new(PRUNE),
            rate: Script::new(RATE),
            restore: Script::new(RESTORE),
        }
    }
}

// KEYS: fam, rt, subfam. ARGV: family, sub, expires, now.
const CREATE_FAMILY: &str = r"
redis.call('HSET', KEYS[1], 'sub', ARGV[2], 'expires', ARGV[3], 'revoked', '0')
redis.call('EXPIREAT', KEYS[1], ARGV[3])
redis.call('HSET', KEYS[2], 'family', ARGV[1], 'used', '0')
redis.call('EXPIREAT', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[1])
local ttl = tonumber(ARGV[3]) - tonumber(ARGV[4])
if redis.call('TTL', KEYS[3]) < ttl then redis.call('EXPIRE', KEYS[3], ttl) end
return 1
";

// KEYS: rt:old, rt:new. ARGV: now, prefix.
const ROTATE: &str = r"
local fam = redis.call('HGET', KEYS[1], 'family')
if not fam then return {'invalid'} end
local fk = ARGV[2] .. 'fam:' .. fam
local f = redis.call('HMGET', fk, 'sub', 'expires', 'revoked')
if not f[1] then return {'invalid'} end
if f[3] == '1' or tonumber(f[2]) <= tonumber(ARGV[1]) then return {'invalid'} end
if redis.call('HGET', KEYS[1], 'used') == '1' then
  -- The same rotation re-sent after a lost reply is not a reuse: the new
  -- token (fresh random) already belongs to this family.
  if redis.call('HGET', KEYS[2], 'family') == fam then
    return {'rotated', f[1], fam, redis.call('HGET', ARGV[2] .. 'cutoffs', f[1]) or '0'}
  end
  redis.call('HSET', fk, 'revoked', '1')
  return {'reused', f[1]}
end
redis.call('HSET', KEYS[1], 'used', '1')
redis.call('HSET', KEYS[2], 'family', fam, 'used', '0')
redis.call('EXPIREAT', KEYS[2], f[2])
return {'rotated', f[1], fam, redis.call('HGET', ARGV[2] .. 'cutoffs', f[1]) or '0'}
";

// KEYS: rt. ARGV: prefix. Also revokes a family by id when KEYS[1] is empty.
const REVOKE_REFRESH: &str = r"
local fam = ARGV[2]
if KEYS[1] ~= '' then fam = redis.call('HGET', KEYS[1], 'family') end
if not fam then return 0 end
local fk = ARGV[1] .. 'fam:' .. fam
if redis.call('EXISTS', fk) == 1 then redis.call('HSET', fk, 'revoked', '1') end
return 1
";

// KEYS: jti:<jti>, seq, jti_log, jti_exp. ARGV: jti, until, now, channel.
const REVOKE_JTI: &str = r"
local untl = tonumber(ARGV[2])
local old = redis.call('ZSCORE', KEYS[4], ARGV[1])
if old and tonumber(old) > untl then untl = tonumber(old) end
local ttl = untl - tonumber(ARGV[3])
if ttl < 1 then ttl = 1 end
redis.call('SET', KEYS[1], string.format('%d', untl), 'EX', ttl)
local seq = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[3], seq, ARGV[1])
redis.call('ZADD', KEYS[4], untl, ARGV[1])
redis.call('PUBLISH', ARGV[4], seq)
return seq
";

// KEYS: cutoffs, seq, cutoff_log, subfam:<sub>. ARGV: sub, cutoff, prefix, channel.
const REVOKE_SUBJECT: &str = r"
local c = tonumber(ARGV[2])
local old = redis.call('HGET', KEYS[1], ARGV[1])
-- As store::next_cutoff: a revoke in the second of the last one moves
-- the cut-off past it, so it also catches tokens issued at that cut-off.
if old and tonumber(old) + 1 > c then c = tonumber(old) + 1 end
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', c))
local seq = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[3], seq, ARGV[1])
for _, fam in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  local fk = ARGV[3] .. 'fam:' .. fam
  if redis.call('EXISTS', fk) == 1 then redis.call('HSET', fk, 'revoked', '1') end
end
redis.call('PUBLISH', ARGV[4], seq)
return seq
";

// KEYS: jti_log, cutoff_log, cutoffs, epoch.
// ARGV: jti cursor, cutoff cursor, prefix, candidate epoch, reader's epoch.
// Returns {epoch, jti cursor, cutoff cursor, #jtis, jti, until, ..., sub, cutoff, ...}.
const SINCE: &str = r"
redis.call('SET', KEYS[4], ARGV[4], 'NX')
local epoch = redis.call('GET', KEYS[4])
local cj, cc = ARGV[1], ARGV[2]
if epoch ~= ARGV[5] then cj, cc = '0', '0' end
local out = {epoch, cj, cc, '0'}
local n = 0
local js = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. cj, '+inf', 'WITHSCORES')
for i = 1, #js, 2 do
  local untl = redis.call('GET', ARGV[3] .. 'jti:' .. js[i])
  if untl then
    table.insert(out, js[i]); table.insert(out, untl); n = n + 1
  end
  out[2] = js[i + 1]
end
out[4] = tostring(n)
local cs = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. cc, '+inf', 'WITHSCORES')
for i = 1, #cs, 2 do
  local c = redis.call('HGET', KEYS[3], cs[i])
  if c then table.insert(out, cs[i]); table.insert(out, c) end
  out[3] = cs[i + 1]
end
return out
";

// What a gateway still knows, written back after Redis lost its data.
// Only what is missing or older is written (and logged, for the other
// replicas), so every replica can send the same: the first one's entries
// stand, the rest change nothing. No family is touched, no cut-off moved
// past what some replica had.
// KEYS: seq, jti_log, jti_exp, cutoffs, cutoff_log.
// ARGV: prefix, channel, now, #jtis, (jti, until)..., #cutoffs, (sub, cutoff)...
const RESTORE: &str = r"
local now = tonumber(ARGV[3])
local i = 4
local seq = 0
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  local jti, untl = ARGV[i], tonumber(ARGV[i + 1]); i = i + 2
  local old = redis.call('ZSCORE', KEYS[3], jti)
  if not old or tonumber(old) < untl then
    local ttl = untl - now
    if ttl < 1 then ttl = 1 end
    redis.call('SET', ARGV[1] .. 'jti:' .. jti, string.format('%d', untl), 'EX', ttl)
    seq = redis.call('INCR', KEYS[1])
    redis.call('ZADD', KEYS[2], seq, jti)
    redis.call('ZADD', KEYS[3], untl, jti)
  end
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  local sub, c = ARGV[i], tonumber(ARGV[i + 1]); i = i + 2
  local old = redis.call('HGET', KEYS[4], sub)
  if not old or tonumber(old) < c then
    redis.call('HSET', KEYS[4], sub, string.format('%d', c))
    seq = redis.call('INCR', KEYS[1])
    redis.call('ZADD', KEYS[5], seq, sub)
  end
end
if seq > 0 then redis.call('PUBLISH', ARGV[2], seq) end
return seq
";

/// Entries per RESTORE call: a script blocks Redis while it runs.
const RESTORE_BATCH: usize = 1000;

// KEYS: jti_exp, jti_log. ARGV: now.
const PRUNE: &str = r"
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, 10000)
for _, j in ipairs(gone) do
  redis.call('ZREM', KEYS[1], j)
  redis.call('ZREM', KEYS[2], j)
end
return #gone
";

// GCRA on Redis's own clock, so replicas agree. KEYS: one per limit, in
// order. ARGV: (emission interval us, burst) per key. Each key is charged
// in turn until one refuses; the keys after it are not charged, as with
// the in-process limiters (an address over its limit does not spend the
// username's budget). Returns microseconds to wait, 0 when allowed.
const RATE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i = 1, #KEYS do
  local T = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  local allow_at = tat + T - T * burst
  if allow_at > now then
    return allow_at - now
  end
  local new_tat = tat + T
  redis.call('SET', KEYS[i], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
end
return 0
";

fn key(parts: &[&str]) -> String {
    let mut k = String::from(PREFIX);
    for p in parts {
        k.push_str(p);
    }
    k
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn token_key(hash: &TokenHash) -> String {
    key(&["rt:", &hex(hash)])
}

fn unreachable_err(e: RedisError) -> StoreError {
    StoreError(format!("redis is unreachable: {e}"))
}

fn failed(e: RedisError) -> StoreError {
    if e.is_timeout() {
        StoreError("redis did not answer in time".into())
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        unreachable_err(e)
    } else {
        StoreError(format!("redis: {e}"))
    }
}

/// Is the connection itself broken (as opposed to a command error)?
fn broken(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_unrecoverable_error()
}

fn num(s: &str) -> u64 {
    s.parse::<f64>().ok().filter(|f| *f >= 0.0).map_or(0, |f| f as u64)
}

/// The `since` script's answer: epoch, the two cursors, the number n of
/// jti pairs, then n (jti, until) pairs and the (sub, cut-off) pairs. A
/// Redis that answers something else (corrupt, or not ours) gets an error,
/// never a panic or a wrapped count.
fn parse_since(out: &[String]) -> Result<Revocations> {
    let bad = || StoreError("redis: unexpected answer to the revocation log query".into());
    let [epoch, jtis, cutoffs, n, rest @ ..] = out else { return Err(bad()) };
    let n = usize::try_from(num(n)).ok().and_then(|n| n.checked_mul(2)).filter(|n| *n <= rest.len()).ok_or_else(bad)?;
    if rest.len() % 2 != 0 {
        return Err(bad());
    }
    let (j, c) = rest.split_at(n);
    let mut r = Revocations {
        cursor: Cursor { jtis: num(jtis) as i64, cutoffs: num(cutoffs) as i64, epoch: epoch.parse().map_err(|_| bad())? },
        ..Default::default()
    };
    r.jtis = j.chunks(2).map(|p| (p[0].clone(), num(&p[1]))).collect();
    r.cutoffs = c.chunks(2).map(|p| (p[0].clone(), num(&p[1]))).collect();
    Ok(r)
}

impl RedisStore {
    /// Checks the URL; connections are opened on first use.
    pub fn open(url: &str) -> Result<RedisStore> {
        let client = redis::Client::open(url).map_err(|e| StoreError(format!("invalid store.redis_url: {e}")))?;
        Ok(RedisStore { client, idle: Mutex::new(Vec::new()), scripts: Scripts::new() })
    }

    fn connect(&self) -> RedisResult<Connection> {
        let c = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        c.set_read_timeout(Some(IO_TIMEOUT))?;
        c.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(c)
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn put_back(&self, conn: Connection) {
        let mut idle = self.pool();
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// Runs `f` on a connection. A pooled connection that fails at the I/O
    /// level is most likely from before a Redis restart: the pool is
    /// dropped and `f` runs once more on a fresh connection. Every script
    /// is safe to re-run (rotation recognises its own retry).
    fn run<T>(&self, f: impl Fn(&mut Connection) -> RedisResult<T>) -> Result<T> {
        let pooled = self.pool().pop();
        let was_pooled = pooled.is_some();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.connect().map_err(unreachable_err)?,
        };
        match f(&mut conn) {
            Ok(v) => {
                self.put_back(conn);
                Ok(v)
            }
            Err(e) if was_pooled && broken(&e) && !e.is_timeout() => {
                self.pool().clear();
                let mut conn = self.connect().map_err(unreachable_err)?;
                let v = f(&mut conn).map_err(failed)?;
                self.put_back(conn);
                Ok(v)
            }
            Err(e) => {
                if broken(&e) {
                    self.pool().clear();
                } else {
                    self.put_back(conn);
                }
                Err(failed(e))
            }
        }
    }

    /// Follows [`CHANNEL`] and wakes `wake` on each message and after each
    /// (re)subscription (to repair what was missed while disconnected).
    /// Ends when `wake` is dropped.
    async fn follow_channel(client: redis::Client, wake: Weak<tokio::sync::Notify>) {
        use futures_util::StreamExt;
        let mut backoff = Duration::from_millis(200);
        let mut was_down = false;
        loop {
            if wake.strong_count() == 0 {
                return;
            }
            let subscribed = async {
                let mut ps = client.get_async_pubsub().await?;
                ps.subscribe(CHANNEL).await?;
                Ok::<_, RedisError>(ps)
            };
            match tokio::time::timeout(CONNECT_TIMEOUT * 2, subscribed).await {
                Ok(Ok(mut ps)) => {
                    if was_down {
                        tracing::info!("redis pub/sub reconnected");
                    }
                    was_down = false;
                    backoff = Duration::from_millis(200);
                    let mut messages = ps.on_message();
                    let mut check = tokio::time::interval(Duration::from_secs(5));
                    loop {
                        let Some(w) = wake.upgrade() else { return };
                        w.notify_one();
                        drop(w);
                        tokio::select! {
                            m = messages.next() => if m.is_none() { break },
                            _ = check.tick() => {}
                        }
                    }
                }
                Ok(Err(error)) if !was_down => {
                    tracing::warn!(%error, "redis pub/sub unavailable; revocations from other replicas follow by polling");
                    was_down = true;
                }
                Err(_) if !was_down => {
                    tracing::warn!("redis pub/sub connect timed out; revocations from other replicas follow by polling");
                    was_down = true;
                }
                _ => {}
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// The furthest a key's expiry is set: a hundred years. Redis refuses an
/// expiry beyond about 9.2e15 s ("invalid expire time"), and a token with
/// a larger `exp` (an IdP's, or `--ttl 200000000000d`) must still be
/// revocable: its revocation is kept for a century instead.
const MAX_EXPIRY_SECS: u64 = 100 * 365 * 86_400;

fn expiry(at: u64, now: u64) -> u64 {
    at.min(now.saturating_add(MAX_EXPIRY_SECS))
}

impl Store for RedisStore {
    fn create_family(&self, family: &str, sub: &str, token: &TokenHash, now: u64, expires: u64) -> Result<()> {
        let expires = expiry(expires, now);
        let (fk, rk, sk) = (key(&["fam:", family]), token_key(token), key(&["subfam:", sub]));
        self.run(|c| self.scripts.create_family.key(&fk).key(&rk).key(&sk).arg(family).arg(sub).arg(expires).arg(now).invoke::<i64>(c))?;
        Ok(())
    }

    fn rotate_refresh(&self, old: &TokenHash, new: &TokenHash, now: u64) -> Result<Rotation> {
        let (ok, nk) = (token_key(old), token_key(new));
        let r: Vec<String> = self.run(|c| self.scripts.rotate.key(&ok).key(&nk).arg(now).arg(PREFIX).invoke(c))?;
        Ok(match r.as_slice() {
            [kind, sub, family, cutoff] if kind == "rotated" => {
                Rotation::Rotated { sub: sub.clone(), family: family.clone(), cutoff: num(cutoff) }
            }
            [kind, sub] if kind == "reused" => Rotation::Reused { sub: sub.clone() },
            _ => Rotation::Invalid,
        })
    }

    fn revoke_refresh(&self, token: &TokenHash) -> Result<bool> {
        let rk = token_key(token);
        let n: i64 = self.run(|c| self.scripts.revoke_refresh.key(&rk).arg(PREFIX).arg("").invoke(c))?;
        Ok(n > 0)
    }

    fn revoke_family(&self, family: &str) -> Result<()> {
        self.run(|c| self.scripts.revoke_refresh.key("").arg(PREFIX).arg(family).invoke::<i64>(c))?;
        Ok(())
    }

    fn family_live(&self, family: &str) -> Result<bool> {
        let fk = key(&["fam:", family]);
        let revoked: Option<String> = self.run(|c| redis::cmd("HGET").arg(&fk).arg("revoked").query(c))?;
        Ok(revoked.as_deref() == Some("0"))
    }

    fn revoke_jti(&self, jti: &str, until: u64) -> Result<()> {
        let (jk, seq, log, exp) = (key(&["jti:", jti]), key(&["seq"]), key(&["jti_log"]), key(&["jti_exp"]));
        let now = crate::jwt::now_secs();
        let until = expiry(until, now);
        self.run(|c| {
            self.scripts.revoke_jti.key(&jk).key(&seq).key(&log).key(&exp).arg(jti).arg(until).arg(now).arg(CHANNEL).invoke::<i64>(c)
        })?;
        Ok(())
    }

    fn revoke_subject(&self, sub: &str, cutoff: u64) -> Result<()> {
        let (cut, seq, log, sf) = (key(&["cutoffs"]), key(&["seq"]), key(&["cutoff_log"]), key(&["subfam:", sub]));
        self.run(|c| {
            self.scripts
                .revoke_subject
                .key(&cut)
                .key(&seq)
                .key(&log)
                .key(&sf)
                .arg(sub)
                .arg(cutoff)
                .arg(PREFIX)
                .arg(CHANNEL)
                .invoke::<i64>(c)
        })?;
        Ok(())
    }

    fn subject_cutoff(&self, sub: &str) -> Result<Option<u64>> {
        let cut = key(&["cutoffs"]);
        let v: Option<String> = self.run(|c| redis::cmd("HGET").arg(&cut).arg(sub).query(c))?;
        Ok(v.as_deref().map(num))
    }

    fn revocations_since(&self, cursor: Cursor) -> Result<Revocations> {
        let keys = [key(&["jti_log"]), key(&["cutoff_log"]), key(&["cutoffs"]), key(&["epoch"])];
        let mut candidate = [0u8; 8];
        // A fresh epoch only matters when Redis lost its data; a failed RNG
        // leaves 0 here, which still differs from every stored epoch but one.
        let _ = aws_lc_rs::rand::fill(&mut candidate);
        let candidate = u64::from_be_bytes(candidate).max(1);
        let out: Vec<String> = self.run(|c| {
            let mut inv = self.scripts.since.prepare_invoke();
            for k in &keys {
                inv.key(k);
            }
            inv.arg(cursor.jtis).arg(cursor.cutoffs).arg(PREFIX).arg(candidate).arg(cursor.epoch).invoke(c)
        })?;
        parse_since(&out)
    }

    fn user_fingerprints(&self) -> Result<Vec<(String, TokenHash)>> {
        let users = key(&["users"]);
        let all: HashMap<String, Vec<u8>> = self.run(|c| redis::cmd("HGETALL").arg(&users).query(c))?;
        // A malformed fingerprint reads as "changed": the safe side.
        Ok(all.into_iter().map(|(name, fp)| (name, fp.try_into().unwrap_or([0u8; 32]))).collect())
    }

    fn user_fingerprint(&self, username: &str) -> Result<Option<TokenHash>> {
        let users = key(&["users"]);
        let fp: Option<Vec<u8>> = self.run(|c| redis::cmd("HGET").arg(&users).arg(username).query(c))?;
        // A malformed fingerprint reads as "changed": the safe side.
        Ok(fp.map(|fp| fp.try_into().unwrap_or([0u8; 32])))
    }

    fn restore(&self, lost: &super::Restore) -> Result<()> {
        let keys = [key(&["seq"]), key(&["jti_log"]), key(&["jti_exp"]), key(&["cutoffs"]), key(&["cutoff_log"])];
        let now = crate::jwt::now_secs();
        let (mut jtis, mut cutoffs) = (lost.jtis.chunks(RESTORE_BATCH), lost.cutoffs.chunks(RESTORE_BATCH));
        loop {
            let (j, c) = (jtis.next().unwrap_or_default(), cutoffs.next().unwrap_or_default());
            if j.is_empty() && c.is_empty() {
                return Ok(());
            }
            self.run(|conn| {
                let mut inv = self.scripts.restore.prepare_invoke();
                for k in &keys {
                    inv.key(k);
                }
                inv.arg(PREFIX).arg(CHANNEL).arg(now).arg(j.len());
                for (jti, until) in j {
                    inv.arg(jti).arg(expiry(*until, now));
                }
                inv.arg(c.len());
                for (sub, cutoff) in c {
                    inv.arg(sub).arg(*cutoff);
                }
                inv.invoke::<i64>(conn)
            })?;
        }
    }

    fn set_user_fingerprint(&self, username: &str, fingerprint: Option<&TokenHash>) -> Result<()> {
        let users = key(&["users"]);
        self.run(|c| match fingerprint {
            Some(f) => redis::cmd("HSET").arg(&users).arg(username).arg(&f[..]).query::<i64>(c),
            None => redis::cmd("HDEL").arg(&users).arg(username).query::<i64>(c),
        })?;
        Ok(())
    }

    fn prune(&self, now: u64) -> Result<u64> {
        // Families, tokens and revoked jtis expire on their own (TTL); only
        // the log's index of expired jtis needs trimming.
        let (exp, log) = (key(&["jti_exp"]), key(&["jti_log"]));
        let n: i64 = self.run(|c| self.scripts.prune.key(&exp).key(&log).arg(now).invoke(c))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn ping(&self) -> Result<()> {
        self.run(|c| redis::cmd("PING").query::<String>(c)).map(|_| ())
    }

    fn shared_limits(&self) -> bool {
        true
    }

    fn rate_limit(&self, checks: &[RateCheck]) -> Result<Option<Duration>> {
        let keys: Vec<String> = checks.iter().map(|c| key(&["rl:", &c.key])).collect();
        let wait_us: i64 = self.run(|c| {
            let mut inv = self.scripts.rate.prepare_invoke();
            for (k, check) in keys.iter().zip(checks) {
                inv.key(k);
                inv.arg(u64::try_from(check.interval.as_micros()).unwrap_or(u64::MAX).max(1)).arg(check.burst);
            }
            inv.invoke(c)
        })?;
        Ok((wait_us > 0).then(|| Duration::from_micros(u64::try_from(wait_us).unwrap_or(0))))
    }

    fn follow(&self, wake: &Arc<tokio::sync::Notify>) {
        tokio::spawn(Self::follow_channel(self.client.clone(), Arc::downgrade(wake)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    /// A pair count of 2^63 or more from Redis overflowed `n * 2`: a panic
    /// in debug builds (the upkeep task died, revocations stopped syncing),
    /// a wrapped count that passed the check in release.
    #[test]
    fn a_huge_pair_count_from_redis_is_an_error() {
        for n in ["9223372036854775808", "18446744073709551615", "1e30", "3"] {
            let r = parse_since(&answer(&["7", "1", "2", n, "j", "10", "s", "20"]));
            assert!(r.is_err(), "count {n}: {r:?}");
        }
        let r = parse_since(&answer(&["7", "1", "2", "1", "j", "10", "s", "20"])).expect("a good answer");
        assert_eq!((r.jtis, r.cutoffs), (vec![("j".to_string(), 10)], vec![("s".to_string(), 20)]));
        assert_eq!(r.cursor, Cursor { jtis: 1, cutoffs: 2, epoch: 7 });
    }
}
