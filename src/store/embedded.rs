//! `store.kind = "embedded"`: one SQLite file in WAL mode.
//!
//! SQLite rather than redb because `authgate revoke` runs as a second
//! process beside a running gateway: SQLite's WAL lets both open the file and
//! write to it (writers take turns under `busy_timeout`), where redb locks
//! the file to one process. `synchronous = FULL` makes every commit durable
//! before the caller answers 200.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{Cursor, Result, Revocations, Rotation, Store, StoreError, TokenHash};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS refresh_families (
    id TEXT PRIMARY KEY,
    sub TEXT NOT NULL,
    created INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS refresh_families_sub ON refresh_families(sub);
CREATE INDEX IF NOT EXISTS refresh_families_expires ON refresh_families(expires);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    hash BLOB PRIMARY KEY,
    family TEXT NOT NULL REFERENCES refresh_families(id) ON DELETE CASCADE,
    used INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS refresh_tokens_family ON refresh_tokens(family);
CREATE TABLE IF NOT EXISTS revoked_jtis (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    jti TEXT NOT NULL UNIQUE,
    until INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS revoked_jtis_until ON revoked_jtis(until);
CREATE TABLE IF NOT EXISTS subject_cutoffs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    sub TEXT NOT NULL UNIQUE,
    cutoff INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS user_fingerprints (
    username TEXT PRIMARY KEY,
    fingerprint BLOB NOT NULL
) WITHOUT ROWID;
";

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

fn e(err: rusqlite::Error) -> StoreError {
    StoreError(err.to_string())
}

/// Unix seconds as SQLite integers (i64); far-future values saturate.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl SqliteStore {
    /// Opens (creating when missing) the file and its parent folder.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|err| StoreError(format!("cannot create the folder {}: {err}", dir.display())))?;
        }
        let conn = Connection::open(path).map_err(|err| StoreError(format!("cannot open the store: {err}")))?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(e)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(e)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(e)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(e)?;
        conn.execute_batch(SCHEMA).map_err(|err| StoreError(format!("cannot create the schema (is this an authgate store?): {err}")))?;
        #[cfg(unix)]
        {
            // Refresh-token hashes and revocations: readable by authgate only.
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        Ok(SqliteStore { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic mid-call leaves no open transaction behind (it rolls back on drop).
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for SqliteStore {
    super::local_store!();

    fn create_family(&self, family: &str, sub: &str, token: &TokenHash, now: u64, expires: u64) -> Result<()> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(e)?;
        tx.execute(
            "INSERT INTO refresh_families (id, sub, created, expires) VALUES (?1, ?2, ?3, ?4)",
            params![family, sub, int(now), int(expires)],
        )
        .map_err(e)?;
        tx.execute("INSERT INTO refresh_tokens (hash, family) VALUES (?1, ?2)", params![&token[..], family]).map_err(e)?;
        tx.commit().map_err(e)
    }

    fn rotate_refresh(&self, old: &TokenHash, new: &TokenHash, now: u64) -> Result<Rotation> {
        let mut c = self.conn();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(e)?;
        let row = tx
            .query_row(
                "SELECT t.used, f.id, f.sub, f.expires, f.revoked FROM refresh_tokens t
                 JOIN refresh_families f ON f.id = t.family WHERE t.hash = ?1",
                params![&old[..]],
                |r| Ok((r.get::<_, bool>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, i64>(3)?, r.get::<_, bool>(4)?)),
            )
            .optional()
            .map_err(e)?;
        let Some((used, family, sub, expires, revoked)) = row else { return Ok(Rotation::Invalid) };
        if revoked || uint(expires) <= now {
            return Ok(Rotation::Invalid);
        }
        let outcome = if used {
            tx.execute("UPDATE refresh_families SET revoked = 1 WHERE id = ?1", params![family]).map_err(e)?;
            Rotation::Reused { sub }
        } else {
            tx.execute("UPDATE refresh_tokens SET used = 1 WHERE hash = ?1", params![&old[..]]).map_err(e)?;
            tx.execute("INSERT INTO refresh_tokens (hash, family) VALUES (?1, ?2)", params![&new[..], family]).map_err(e)?;
            let cutoff: Option<i64> =
                tx.query_row("SELECT cutoff FROM subject_cutoffs WHERE sub = ?1", params![sub], |r| r.get(0)).optional().map_err(e)?;
            Rotation::Rotated { sub, family, cutoff: cutoff.map_or(0, uint) }
        };
        tx.commit().map_err(e)?;
        Ok(outcome)
    }

    fn revoke_refresh(&self, token: &TokenHash) -> Result<bool> {
        let n = self
            .conn()
            .execute(
                "UPDATE refresh_families SET revoked = 1 WHERE id = (SELECT family FROM refresh_tokens WHERE hash = ?1)",
                params![&token[..]],
            )
            .map_err(e)?;
        Ok(n > 0)
    }

    fn revoke_family(&self, family: &str) -> Result<()> {
        self.conn().execute("UPDATE refresh_families SET revoked = 1 WHERE id = ?1", params![family]).map_err(e)?;
        Ok(())
    }

    fn family_live(&self, family: &str) -> Result<bool> {
        let revoked: Option<i64> = self
            .conn()
            .query_row("SELECT revoked FROM refresh_families WHERE id = ?1", params![family], |r| r.get(0))
            .optional()
            .map_err(e)?;
        Ok(revoked == Some(0))
    }

    fn revoke_jti(&self, jti: &str, until: u64) -> Result<()> {
        let mut c = self.conn();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(e)?;
        let before: Option<i64> =
            tx.query_row("SELECT until FROM revoked_jtis WHERE jti = ?1", params![jti], |r| r.get(0)).optional().map_err(e)?;
        // A later `until` (a revocation after `jwt.leeway` grew) is written
        // as a new row, with a new sequence number, as Redis logs it anew:
        // a process that has read the old row reads it again.
        if before.is_none_or(|b| b < int(until)) {
            tx.execute("DELETE FROM revoked_jtis WHERE jti = ?1", params![jti]).map_err(e)?;
            tx.execute("INSERT INTO revoked_jtis (jti, until) VALUES (?1, ?2)", params![jti, int(until)]).map_err(e)?;
        }
        tx.commit().map_err(e)
    }

    fn revoke_subject(&self, sub: &str, cutoff: u64) -> Result<()> {
        let mut c = self.conn();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(e)?;
        let before: Option<i64> =
            tx.query_row("SELECT cutoff FROM subject_cutoffs WHERE sub = ?1", params![sub], |r| r.get(0)).optional().map_err(e)?;
        let next = before.map_or(int(cutoff), |b| int(super::next_cutoff(u64::try_from(b).unwrap_or(0), cutoff)));
        // Delete and insert so the row gets a new sequence number: readers
        // polling the log see the change.
        tx.execute("DELETE FROM subject_cutoffs WHERE sub = ?1", params![sub]).map_err(e)?;
        tx.execute("INSERT INTO subject_cutoffs (sub, cutoff) VALUES (?1, ?2)", params![sub, next]).map_err(e)?;
        tx.execute("UPDATE refresh_families SET revoked = 1 WHERE sub = ?1", params![sub]).map_err(e)?;
        tx.commit().map_err(e)
    }

    fn subject_cutoff(&self, sub: &str) -> Result<Option<u64>> {
        let v: Option<i64> =
            self.conn().query_row("SELECT cutoff FROM subject_cutoffs WHERE sub = ?1", params![sub], |r| r.get(0)).optional().map_err(e)?;
        Ok(v.map(uint))
    }

    fn revocations_since(&self, cursor: Cursor) -> Result<Revocations> {
        let c = self.conn();
        let mut out = Revocations { cursor, ..Default::default() };
        let mut q = c.prepare_cached("SELECT seq, jti, until FROM revoked_jtis WHERE seq > ?1 ORDER BY seq").map_err(e)?;
        let rows =
            q.query_map(params![cursor.jtis], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))).map_err(e)?;
        for row in rows {
            let (seq, jti, until) = row.map_err(e)?;
            out.jtis.push((jti, uint(until)));
            out.cursor.jtis = seq;
        }
        let mut q = c.prepare_cached("SELECT seq, sub, cutoff FROM subject_cutoffs WHERE seq > ?1 ORDER BY seq").map_err(e)?;
        let rows =
            q.query_map(params![cursor.cutoffs], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))).map_err(e)?;
        for row in rows {
            let (seq, sub, cutoff) = row.map_err(e)?;
            out.cutoffs.push((sub, uint(cutoff)));
            out.cursor.cutoffs = seq;
        }
        Ok(out)
    }

    fn user_fingerprints(&self) -> Result<Vec<(String, TokenHash)>> {
        let c = self.conn();
        let mut q = c.prepare("SELECT username, fingerprint FROM user_fingerprints").map_err(e)?;
        let rows = q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))).map_err(e)?;
        let mut out = Vec::new();
        for row in rows {
            let (name, fp) = row.map_err(e)?;
            // A malformed fingerprint reads as "changed": the safe side.
            out.push((name, fp.try_into().unwrap_or([0u8; 32])));
        }
        Ok(out)
    }

    /// One row: every password login asks (`login::current_entry`).
    fn user_fingerprint(&self, username: &str) -> Result<Option<TokenHash>> {
        let fp: Option<Vec<u8>> = self
            .conn()
            .query_row("SELECT fingerprint FROM user_fingerprints WHERE username = ?1", params![username], |r| r.get(0))
            .optional()
            .map_err(e)?;
        // A malformed fingerprint reads as "changed": the safe side.
        Ok(fp.map(|fp| fp.try_into().unwrap_or([0u8; 32])))
    }

    fn set_user_fingerprint(&self, username: &str, fingerprint: Option<&TokenHash>) -> Result<()> {
        let c = self.conn();
        match fingerprint {
            Some(f) => c.execute(
                "INSERT INTO user_fingerprints (username, fingerprint) VALUES (?1, ?2)
                 ON CONFLICT(username) DO UPDATE SET fingerprint = excluded.fingerprint",
                params![username, &f[..]],
            ),
            None => c.execute("DELETE FROM user_fingerprints WHERE username = ?1", params![username]),
        }
        .map_err(e)?;
        Ok(())
    }

    fn ping(&self) -> Result<()> {
        self.conn().query_row("SELECT 1", [], |_| Ok(())).map_err(|e| StoreError(format!("the store does not answer: {e}")))
    }

    fn prune(&self, now: u64) -> Result<u64> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(e)?;
        let jtis = tx.execute("DELETE FROM revoked_jtis WHERE until < ?1", params![int(now)]).map_err(e)?;
        // Used tokens are kept as long as their family lives, for reuse detection.
        let families = tx.execute("DELETE FROM refresh_families WHERE expires <= ?1", params![int(now)]).map_err(e)?;
        tx.commit().map_err(e)?;
        Ok((jtis + families) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_reuse_and_prune() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = SqliteStore::open(&dir.path().join("sub/dir/a.db")).expect("open");
        let (t1, t2, t3) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        s.create_family("f", "alice", &t1, 100, 200).expect("create");
        assert_eq!(
            s.rotate_refresh(&t1, &t2, 150).expect("rotate"),
            Rotation::Rotated { sub: "alice".into(), family: "f".into(), cutoff: 0 }
        );
        assert_eq!(s.rotate_refresh(&t1, &t3, 150).expect("reuse"), Rotation::Reused { sub: "alice".into() });
        assert_eq!(s.rotate_refresh(&t2, &t3, 150).expect("dead family"), Rotation::Invalid);
        s.revoke_jti("j", 120).expect("jti");
        s.revoke_subject("bob", 130).expect("sub");
        // Again in the same second: the cut-off moves one past the last.
        s.revoke_subject("bob", 130).expect("sub");
        assert_eq!(s.subject_cutoff("bob").expect("cut-off"), Some(131));
        let r = s.revocations_since(Cursor::default()).expect("since");
        assert_eq!((r.jtis.len(), r.cutoffs.len()), (1, 1));
        assert!(s.revocations_since(r.cursor).expect("since").jtis.is_empty());
        assert_eq!(s.prune(250).expect("prune"), 2);
        assert_eq!(s.rotate_refresh(&t2, &t3, 150).expect("gone"), Rotation::Invalid);
    }

    /// Revoking a jti again with a later `until` (after `jwt.leeway` grew)
    /// kept the row's sequence number: another process (a second gateway
    /// on the file) that had read the row never saw the later time, and
    /// dropped the jti from its denylist at the earlier one.
    #[test]
    fn a_later_until_for_a_revoked_jti_is_logged_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = SqliteStore::open(&dir.path().join("a.db")).expect("open");
        s.revoke_jti("j", 100).expect("jti");
        let seen = s.revocations_since(Cursor::default()).expect("since");
        assert_eq!(seen.jtis, [("j".to_string(), 100)]);
        s.revoke_jti("j", 160).expect("jti");
        assert_eq!(s.revocations_since(seen.cursor).expect("since").jtis, [("j".to_string(), 160)], "the later until is logged again");
        // An earlier or equal one changes nothing, and is not logged again.
        let seen = s.revocations_since(Cursor::default()).expect("since");
        s.revoke_jti("j", 120).expect("jti");
        s.revoke_jti("j", 160).expect("jti");
        assert!(s.revocations_since(seen.cursor).expect("since").jtis.is_empty());
        assert_eq!(s.revocations_since(Cursor::default()).expect("since").jtis, [("j".to_string(), 160)]);
    }
}
