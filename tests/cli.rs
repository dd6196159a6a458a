//! CLI polish: version with the git commit, shell completions, man page.
mod common;

use std::process::Command;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(common::bin()).args(args).output().expect("run authgate");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn version_names_the_commit() {
    let (ok, out) = run(&["--version"]);
    assert!(ok);
    assert!(out.starts_with(&format!("authgate {} (commit ", env!("CARGO_PKG_VERSION"))), "{out}");
}

#[test]
fn completions_and_man_page() {
    let (ok, bash) = run(&["completions", "bash"]);
    assert!(ok && bash.contains("_authgate()") && bash.contains("hash-password"), "{bash}");
    let (ok, zsh) = run(&["completions", "zsh"]);
    assert!(ok && zsh.contains("#compdef authgate"), "{zsh}");
    let (ok, man) = run(&["man"]);
    assert!(ok && man.contains(".TH authgate 1") && man.contains("gen\\-cert"), "{man}");
    let (ok, _) = run(&["completions", "tcsh"]);
    assert!(!ok, "an unknown shell is an error");
}
