//! A real `redis-server` for tests, on a free port in a temp folder, with
//! no persistence; killed on drop. `stop` and `restart` (same port) play a
//! Redis outage.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

/// Starts a private redis-server, or, when `redis-server` is not on PATH:
/// fails under `CI=true`, else prints a visible SKIPPED line and returns None.
pub fn redis_or_skip(test: &str) -> Option<RedisServer> {
    let found = Command::new("redis-server").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if !found {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{test}: redis-server not found; CI must install the Debian package redis-server (apt-get install -y redis-server)");
        }
        // Written to the stderr handle directly: libtest captures print!/eprint!
        // of passing tests, and this line must be seen.
        let line = format!("SKIPPED: {test}: redis-server not found; install it with: apt-get install -y redis-server\n");
        let _ = std::io::stderr().write_all(line.as_bytes());
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let mut r = RedisServer { port, child: None, dir: tempfile::tempdir().expect("tempdir") };
    r.restart();
    Some(r)
}

impl RedisServer {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `[store]` for a gateway using this server.
    pub fn store_toml(&self) -> String {
        format!("kind = \"redis\"\nredis_url = \"{}\"\n", self.url())
    }

    /// Kills the server (SIGKILL: an outage, not a clean shutdown).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server (again) on the same port and waits until it answers PING.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            assert!(Instant::now() < deadline, "redis-server did not start on port {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers(&self) -> bool {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
