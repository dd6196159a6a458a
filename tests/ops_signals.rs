//! Signals to the real binary: SIGHUP reloads under traffic with no failed
//! request (and an invalid config is refused with one line naming the key);
//! SIGTERM lets an in-flight slow request finish, refuses new connections,
//! then exits 0.
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

fn routes(flip_auth: &str, upstream: &str) -> String {
    format!(
        "[[routes]]\npath = \"/\"\nupstream = \"echo\"\nauth = \"public\"\n\n\
         [[routes]]\npath = \"/flip\"\nupstream = \"echo\"\nauth = \"{flip_auth}\"\n\n\
         [[routes]]\npath = \"/slow\"\nupstream = \"{upstream}\"\nauth = \"public\"\n"
    )
}

fn config(dir: &std::path::Path, flip_auth: &str, upstream: &str) -> String {
    // upstream_timeout above the 2 s the slow upstream takes.
    config_text(dir, "", &routes(flip_auth, upstream)).replace("upstream_timeout = \"2s\"", "upstream_timeout = \"10s\"")
}

async fn status(client: &reqwest::Client, url: &str) -> u16 {
    client.get(url).send().await.expect("send").status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_reloads_the_binary_under_traffic_without_a_failed_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config(dir.path(), "required", "echo");
    let sp = spawn_binary(dir, &text, &[]);
    let gw = &sp.gw;
    let file = gw.dir.path().join("config.toml");

    let stop = Arc::new(AtomicBool::new(false));
    let loops = traffic_loops(&gw.cert_path(), &gw.url("/"), None, &[false, true], stop.clone());

    for i in 0..10 {
        let flip = if i % 2 == 0 { "public" } else { "required" };
        std::fs::write(&file, config(gw.dir.path(), flip, "echo")).expect("write config");
        sp.signal("HUP");
        assert!(sp.wait_log("configuration reloaded", i + 1, Duration::from_secs(20)), "reload {i} not logged:\n{}", sp.log());
        let want = if flip == "public" { 200 } else { 401 };
        assert_eq!(status(&gw.client, &gw.url("/flip")).await, want, "after reload {i}, /flip is {flip}");
    }

    // An invalid config: one line naming the file and the key; the old one keeps serving.
    std::fs::write(&file, config(gw.dir.path(), "public", "ftp://nope")).expect("write config");
    sp.signal("HUP");
    assert!(sp.wait_log("reload refused", 1, Duration::from_secs(20)), "{}", sp.log());
    let log = sp.log();
    let line = log.lines().find(|l| l.contains("reload refused")).unwrap_or_default();
    assert!(line.contains("config.toml") && line.contains("routes[2].upstream"), "{line}");
    assert_eq!(status(&gw.client, &gw.url("/flip")).await, 401, "the last good config (flip required) still serves");

    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for l in loops {
        let (o, f) = l.await.expect("traffic");
        ok += o;
        failed.extend(f);
    }
    assert!(failed.is_empty(), "{} failed requests, e.g. {:?}", failed.len(), &failed[..failed.len().min(5)]);
    assert!(ok >= 20, "only {ok} requests served");
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_request_in_flight_refuses_new_connections_and_exits_0() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config(dir.path(), "public", &up.url()).replace("shutdown_grace = \"2s\"", "shutdown_grace = \"10s\"");
    let mut sp = spawn_binary(dir, &text, &[]);
    let (client, url) = (sp.gw.client.clone(), sp.gw.url("/slow/2000"));
    let started = Instant::now();
    let in_flight = tokio::spawn(async move {
        let r = client.get(&url).send().await?;
        let status = r.status().as_u16();
        Ok::<_, reqwest::Error>((status, r.text().await?))
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.hits() == 0 {
        assert!(Instant::now() < deadline, "the request never reached the upstream");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sp.signal("TERM");

    // The listener closes at once: a new connection is refused while the old request still runs.
    let addr = sp.gw.addr;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            _ => {
                assert!(Instant::now() < deadline, "new connections are still accepted after SIGTERM");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    assert!(!in_flight.is_finished(), "the slow request must still be in flight when the listener is closed");

    let (status, body) = in_flight.await.expect("task").expect("the in-flight request must complete");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("upstream ok"), "{body}");
    assert!(started.elapsed() >= Duration::from_secs(2));
    let exit = sp.wait_exit(Duration::from_secs(15)).expect("authgate must exit after draining");
    assert_eq!(exit.code(), Some(0), "{}", sp.log());
    assert!(sp.log().contains("draining"), "{}", sp.log());
}
