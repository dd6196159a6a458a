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

/// A reader that has gone (`authgate completions bash | head -c 10`): the
/// command ends quietly with the status a shell gives a command SIGPIPE
/// ended (141), never a panic with a backtrace.
#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    for args in [&["completions", "bash"][..], &["man"], &["gen-cert", "--out"]] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut args: Vec<&str> = args.to_vec();
        let out_dir = dir.path().display().to_string();
        if args[0] == "gen-cert" {
            args.push(&out_dir);
        }
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out =
            Command::new(common::bin()).args(&args).stdout(writer).stderr(std::process::Stdio::piped()).output().expect("run authgate");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn hash_password_reads_stdin_and_drops_one_trailing_newline() {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    use std::io::Write;
    let hash_of = |input: &[u8]| {
        let mut child = Command::new(common::bin())
            .arg("hash-password")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        child.stdin.take().expect("stdin").write_all(input).expect("write");
        let out = child.wait_with_output().expect("wait");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let (ok, hash) = hash_of(b"s3cret pass\n");
    assert!(ok && hash.starts_with("$argon2id$"), "{hash}");
    let parsed = PasswordHash::new(&hash).expect("a PHC string");
    assert!(argon2::Argon2::default().verify_password(b"s3cret pass", &parsed).is_ok(), "the newline must be dropped");
    assert!(argon2::Argon2::default().verify_password(b"s3cret pass\n", &parsed).is_err());
    let (ok, _) = hash_of(b"");
    assert!(!ok, "an empty password is refused");
}

#[test]
fn the_config_comes_from_the_flag_then_authgate_config_then_the_working_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = common::config_text(dir.path(), "", "[[routes]]\npath = \"/\"\nupstream = \"echo\"\n");
    std::fs::write(dir.path().join("config.toml"), &text).expect("write");
    let other = tempfile::tempdir().expect("tempdir");
    let check = |cwd: &std::path::Path, env: Option<&std::path::Path>| {
        let mut cmd = Command::new(common::bin());
        cmd.arg("check").current_dir(cwd).env_remove("AUTHGATE_CONFIG");
        if let Some(p) = env {
            cmd.env("AUTHGATE_CONFIG", p);
        }
        let out = cmd.output().expect("run");
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    // ./config.toml in the working folder.
    let (code, out) = check(dir.path(), None);
    assert_eq!(code, Some(0), "{out}");
    // $AUTHGATE_CONFIG from anywhere.
    let (code, out) = check(other.path(), Some(&dir.path().join("config.toml")));
    assert_eq!(code, Some(0), "{out}");
    // Neither: the missing ./config.toml is a config error, exit 2.
    let (code, _) = check(other.path(), None);
    assert_eq!(code, Some(2));
}
