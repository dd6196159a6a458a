//! Upstream writes through io_uring batches (`server.io_uring`): requests
//! of every size reach the upstream whole, on new and reused connections,
//! and the same with batches turned off.

mod common;

use common::*;

fn routes(up: &Upstream) -> String {
    format!("[[routes]]\npath = \"/\"\nupstream = \"{}\"\nauth = \"public\"\n", up.url())
}

/// Under `CI=true` io_uring must work (the CI machine's kernel has it);
/// elsewhere a kernel or sandbox without it is a visible skip.
fn io_uring_or_skip(test: &str) -> bool {
    if !authgate::upstream_io::refused() {
        return true;
    }
    assert!(std::env::var("CI").map_or(true, |v| v != "true"), "{test}: io_uring is refused on this machine (kernel or seccomp)");
    eprintln!("SKIPPED: {test}: io_uring is refused here (Linux 5.11+ without a seccomp filter on io_uring needed)");
    false
}

async fn exchange(gw: &Gateway, i: usize, len: usize) {
    let r = gw.client.post(gw.url(&format!("/r{i}"))).body(vec![b'b'; len]).send().await.expect("send");
    assert_eq!(r.status(), 200, "request {i} of {len} bytes");
    assert_eq!(r.text().await.expect("body"), format!("upstream ok, body_len={len}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_every_size_go_through_batches_whole() {
    let up = Upstream::start().await;
    let gw = Gateway::start("", &routes(&up)).await;
    // The gateway's workers set up their rings at their first park.
    exchange(&gw, 0, 0).await;
    if !io_uring_or_skip("requests_of_every_size_go_through_batches_whole") {
        return;
    }
    let before = authgate::upstream_io::batched_writes();
    // One after another on a reused connection: each exchange's first
    // write is batched, unless it is over 16 KB.
    for (i, len) in [0, 10, 16 * 1024, 16 * 1024 + 1, 200_000, 3, 1 << 20, 0].into_iter().enumerate() {
        exchange(&gw, i, len).await;
    }
    // Many at once: one round's writes go in one batch.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (client, url) = (gw.client.clone(), gw.url(&format!("/c{i}")));
        let len = [0, 100, 20_000, 70_000][i % 4];
        tasks.push(tokio::spawn(async move {
            let r = client.post(url).body(vec![b'c'; len]).send().await.expect("send");
            assert_eq!(r.status(), 200);
            assert_eq!(r.text().await.expect("body"), format!("upstream ok, body_len={len}"));
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let batched = authgate::upstream_io::batched_writes() - before;
    // Those of at most 16 KB with their head (24 of the 48) are batched;
    // larger ones go straight to the socket.
    assert!(batched >= 24, "only {batched} of the 24 small requests went through io_uring batches");
    gw.stop().await;
}

#[tokio::test]
async fn with_io_uring_off_requests_still_reach_the_upstream_whole() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), "", &routes(&up)).replacen("[server]\n", "[server]\nio_uring = false\n", 1);
    let spawned = spawn_binary(dir, &text, &[]);
    for (i, len) in [0, 10, 200_000].into_iter().enumerate() {
        exchange(&spawned.gw, i, len).await;
    }
}
