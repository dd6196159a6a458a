//! Hot reload: SIGHUP, or a changed file when `server.watch = true`, builds
//! a new `App` and TLS config from the config file and swaps them in. New
//! requests use the new ones; requests in flight finish on the old App,
//! whose background tasks end when it is dropped. The store (unless
//! `[store]` changed), the denylist and the metrics carry over. A config
//! that does not load leaves the running one in place.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;

use crate::app::App;
use crate::config::{Config, ServerConfig, StoreConfig};
use crate::server::{SharedApp, SharedTls};

/// How often `server.watch` looks at the files' modification times.
pub const WATCH_EVERY: Duration = Duration::from_secs(1);

pub struct Reloader {
    app: SharedApp,
    tls: SharedTls,
    /// One reload at a time (SIGHUP and the watcher may coincide).
    busy: tokio::sync::Mutex<()>,
}

/// What a successful reload could not apply.
#[derive(Debug, Default)]
pub struct Reloaded {
    /// Config keys that changed but only take effect after a restart.
    pub restart_needed: Vec<&'static str>,
}

impl Reloader {
    pub fn new(app: SharedApp, tls: SharedTls) -> Reloader {
        Reloader { app, tls, busy: tokio::sync::Mutex::new(()) }
    }

    pub fn current(&self) -> Arc<App> {
        self.app.load_full()
    }

    /// Serves `app` from now on, as a reload would, without reading any
    /// file (embedding, tests). The caller starts its background tasks.
    pub fn install(&self, app: Arc<App>) {
        self.app.store(app);
    }

    /// Loads the config file again and swaps the new App and TLS config in;
    /// on any error nothing changes.
    pub async fn reload(&self) -> anyhow::Result<Reloaded> {
        let _one = self.busy.lock().await;
        let old = self.app.load_full();
        let file = old.config.file.clone();
        let cursor = *old.revocation_cursor.lock().unwrap_or_else(|p| p.into_inner());
        let carried = crate::Carried {
            metrics: old.metrics.clone(),
            denylist: old.denylist.clone(),
            store: Some((old.store.clone(), cursor)),
            users: old.login.as_ref().map(|l| l.users.fingerprints()),
            issuers: old.verifier.issuers().to_vec(),
        };
        let old_store = old.config.store.clone();
        // Reading files, hashing keys and syncing users with the store block.
        let (mut app, mut tls) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let config = crate::config::load(&file)?;
            let carried = if same_store(&old_store, &config.store) { carried } else { crate::Carried { store: None, ..carried } };
            let tls = crate::tls::server_config(&config)?;
            let app = crate::build_app_with(config, Some(carried))?;
            Ok((app, tls))
        })
        .await
        .context("the reload task failed")??;
        app.routes.carry_limiters(&old.routes);
        // Session tickets issued before the reload stay valid.
        if let Some(t) = Arc::get_mut(&mut tls) {
            t.ticketer = self.tls.load().ticketer.clone();
        }
        let reloaded = Reloaded { restart_needed: restart_needed(&old.config, &app.config) };
        let app = Arc::new(app);
        app.spawn_background();
        self.tls.store(tls);
        self.app.store(app);
        Ok(reloaded)
    }

    /// `reload`, with its outcome logged: one line naming the file and the
    /// key when the new config is refused.
    pub async fn reload_and_log(&self, trigger: &'static str) {
        match self.reload().await {
            Ok(r) => {
                for key in r.restart_needed {
                    tracing::warn!(key, "changed in the config file, but it applies only after a restart");
                }
                tracing::info!(trigger, "configuration reloaded");
            }
            Err(e) => tracing::error!(trigger, "reload refused, the running configuration keeps serving: {e:#}"),
        }
    }
}

fn same_store(a: &StoreConfig, b: &StoreConfig) -> bool {
    a.kind == b.kind && a.path == b.path && a.redis_url == b.redis_url
}

fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    let (o, n): (&ServerConfig, &ServerConfig) = (&old.server, &new.server);
    let mut keys = Vec::new();
    if o.listen != n.listen {
        keys.push("server.listen");
    }
    if o.admin_listen != n.admin_listen {
        keys.push("server.admin_listen");
    }
    if o.http_redirect != n.http_redirect {
        keys.push("server.http_redirect");
    }
    if o.max_connections != n.max_connections {
        keys.push("server.max_connections");
    }
    if o.io_uring != n.io_uring {
        keys.push("server.io_uring");
    }
    if old.log.format != new.log.format {
        keys.push("log.format");
    }
    keys
}

/// The files a config is made of: the config file, the users file, the
/// certificate and key, the JWT key files.
fn watched_files(c: &Config) -> Vec<PathBuf> {
    let mut files = vec![c.file.clone(), c.tls.cert.clone(), c.tls.key.clone()];
    files.extend(c.login.as_ref().map(|l| l.users_file.clone()));
    let j = &c.jwt;
    files.extend([&j.private_key, &j.public_key, &j.secret_file].into_iter().flatten().cloned());
    files.extend(j.previous_keys.iter().cloned());
    files.extend(j.issuers.iter().filter(|i| !i.jwks_url.starts_with("https://")).map(|i| PathBuf::from(&i.jwks_url)));
    files
}

type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(files: &[PathBuf]) -> Stamp {
    files.iter().map(|f| std::fs::metadata(f).ok().and_then(|m| Some((m.modified().ok()?, m.len())))).collect()
}

/// With `server.watch = true`, reloads when one of the config's files
/// changes: checked every `WATCH_EVERY`, applied once the files have been
/// quiet for one more check (an editor's or a deploy's writes are done).
/// The files are first looked at before this returns, so a change made
/// right after start is seen.
pub fn watch_files(reloader: Arc<Reloader>, stop: impl Future<Output = ()>) -> impl Future<Output = ()> {
    let first = {
        let app = reloader.current();
        app.config.server.watch.then(|| {
            let files = watched_files(&app.config);
            let s = stamp(&files);
            (files, s)
        })
    };
    watch_loop(reloader, first, stop)
}

async fn watch_loop(reloader: Arc<Reloader>, mut last: Option<(Vec<PathBuf>, Stamp)>, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut stop => return,
        }
        let app = reloader.current();
        if !app.config.server.watch {
            last = None;
            pending = false;
            continue;
        }
        let files = watched_files(&app.config);
        drop(app);
        let Ok((files, now)) = tokio::task::spawn_blocking(move || {
            let s = stamp(&files);
            (files, s)
        })
        .await
        else {
            continue;
        };
        match &last {
            Some((f, s)) if *f == files && *s == now => {
                if pending {
                    pending = false;
                    reloader.reload_and_log("file change").await;
                }
            }
            Some((f, _)) if *f == files => {
                pending = true;
                last = Some((files, now));
            }
            // First look, or a reload changed which files are watched.
            _ => last = Some((files, now)),
        }
    }
}

/// SIGHUP, registered ahead of time so that its default action (exit)
/// never applies once the gateway runs.
pub struct Hangups(#[cfg(unix)] tokio::signal::unix::Signal);

pub fn on_sighup() -> anyhow::Result<Hangups> {
    #[cfg(unix)]
    {
        let s = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).context("cannot listen for SIGHUP")?;
        Ok(Hangups(s))
    }
    #[cfg(not(unix))]
    Ok(Hangups())
}

impl Hangups {
    /// Reloads on every SIGHUP.
    pub async fn serve(self, reloader: Arc<Reloader>) {
        #[cfg(unix)]
        {
            let mut s = self.0;
            while s.recv().await.is_some() {
                reloader.reload_and_log("SIGHUP").await;
            }
        }
        #[cfg(not(unix))]
        {
            let _ = (self, reloader);
        }
    }
}
