//! The open-file limit (RLIMIT_NOFILE) against `server.max_connections`.
//! Each client connection is a file, and so is the upstream connection of
//! each request in flight: at `max_connections` authgate may hold about
//! twice that many. Many systems start a service with a soft limit of
//! 1,024 (systemd's default, `ulimit -n`), so the default 10,000
//! connections failed at about 500 with EMFILE on accept and upstream
//! connects. At start the soft limit is raised to the hard one (what nginx's
//! `worker_rlimit_nofile` and Go's runtime do), and a limit still short is
//! named in a warning.

/// Files beyond two per connection: listeners, the log, the store's files
/// and connections, JWKS fetches, a reload's reads.
pub const SPARE: u64 = 100;

/// The open files `max_connections` may need.
pub fn needed(max_connections: usize) -> u64 {
    u64::try_from(max_connections).unwrap_or(u64::MAX).saturating_mul(2).saturating_add(SPARE)
}

/// Raises the soft open-file limit to the hard one, and warns when what
/// `max_connections` needs is still over it.
pub fn raise(max_connections: usize) {
    #[cfg(unix)]
    {
        use rlimit::Resource;
        let before = match Resource::NOFILE.get() {
            Ok((soft, _)) => soft,
            Err(error) => return tracing::warn!(%error, "cannot read the open-file limit (RLIMIT_NOFILE)"),
        };
        let limit = match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(limit) => limit,
            Err(error) => {
                tracing::warn!(%error, "cannot raise the open-file limit (RLIMIT_NOFILE)");
                before
            }
        };
        if limit > before {
            tracing::info!(from = before, to = limit, "raised the open-file limit (RLIMIT_NOFILE) to its hard limit");
        }
        let needed = needed(max_connections);
        if needed > limit {
            tracing::warn!(
                max_connections,
                needed,
                limit,
                "the open-file limit (RLIMIT_NOFILE) is below what server.max_connections may need (two files a connection, \
                 plus {SPARE}): past it, new clients and upstream connections fail with \"Too many open files\". Raise the hard \
                 limit (systemd LimitNOFILE=, docker --ulimit nofile=, ulimit -Hn) or lower server.max_connections"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = max_connections;
}

#[cfg(test)]
mod tests {
    #[test]
    fn two_files_a_connection_and_spare() {
        assert_eq!(super::needed(10_000), 20_100);
        assert_eq!(super::needed(usize::MAX), u64::MAX);
    }
}
