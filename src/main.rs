//! argv -> command. Errors print as one line (`{:#}`); config errors exit 2.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser};

use authgate::cli::{Cli, Command};
use authgate::config::{self, ConfigError, LogFormat};
use authgate::log_format::{PlainFields, PlainFormat};

/// mimalloc instead of glibc's malloc: 46,654 instructions a proxied
/// request instead of 53,456 (`bench/instructions.sh`), and freed memory
/// goes back to the system instead of staying in glibc's arenas. Built
/// without transparent huge pages (`no_thp`), which cost idle memory.
///
/// Version 2 (the `v2` feature), not 3: v3 gives freed pages back only
/// when a thread next frees a page of its own a second (`purge_delay`)
/// later, and a gateway that goes quiet after a burst of connections has
/// no such next free, so it kept up to 16 MB it did not use (10,000 idle
/// connections: 63 to 78 MB across runs of one build; v2 60 to 61 MB, the
/// same as v3 with `MIMALLOC_PURGE_DELAY=0`). Instructions per request
/// are the same with either.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `check` answers one question, is this config usable: any failure is 2.
    let checking = matches!(cli.command, Some(Command::Check));
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`authgate token | head -c 0`): quietly, with
        // the status a shell gives a command SIGPIPE ended.
        Err(e) if e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)) => {
            ExitCode::from(141)
        }
        Err(e) => {
            eprintln!("authgate: {e:#}");
            if checking || e.downcast_ref::<ConfigError>().is_some() { ExitCode::from(2) } else { ExitCode::FAILURE }
        }
    }
}

/// Claims `authgate token` sets itself; `--claim` cannot override them.
const REGISTERED_CLAIMS: [&str; 7] = ["sub", "iss", "aud", "iat", "nbf", "exp", "jti"];

/// rustls warns on every handshake whose SNI is an IP address (clients that
/// connect to https://127.0.0.1), which would flood the log.
const DEFAULT_LOG: &str = "info,rustls=error";

/// Log lines that may wait for the writer thread before logging blocks:
/// half a second of access log at 30,000 requests a second.
const LOG_QUEUE_LINES: usize = 16_384;

/// Logs to stderr. For the gateway (`background`), lines are handed to a
/// writer thread: a request never waits on a write(2) to a slow pipe or
/// terminal, and lines that pile up go out in one write. Nothing is
/// dropped: only when `LOG_QUEUE_LINES` are waiting does logging block.
/// The returned guard flushes what is left when dropped.
fn init_tracing(format: LogFormat, background: bool) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG));
    // Colours only on a terminal: a log file or journald gets plain text.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let (writer, guard) = if background {
        let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            // The queue is allocated up front, about 40 bytes a line.
            .buffered_lines_limit(LOG_QUEUE_LINES)
            .lossy(false)
            .thread_name("authgate-log")
            .finish(std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr()));
        (BoxMakeWriter::new(writer), Some(guard))
    } else {
        (BoxMakeWriter::new(std::io::stderr), None)
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(ansi);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        // The same lines as tracing-subscriber's, written for less (see log_format).
        LogFormat::Text if !ansi => builder.fmt_fields(PlainFields).event_format(PlainFormat).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    guard
}

/// Writes a command's output. Rust ignores SIGPIPE, so `println!` would
/// panic when the reader has gone; this returns the error instead.
fn emit(text: impl AsRef<[u8]>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_ref()).and_then(|()| out.flush()).context("cannot write to stdout")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let path = cli.config_path();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let config = config::load(&path)?;
            let log = init_tracing(config.log.format, true);
            let rt = authgate::upstream_io::runtime(config.server.io_uring).context("cannot start the runtime")?;
            let result = rt.block_on(authgate::server::run(config));
            drop(rt);
            // The last lines are out before main prints an error.
            drop(log);
            result
        }
        Command::Check => {
            let config = config::load(&path)?;
            init_tracing(LogFormat::Text, false);
            emit(authgate::check(config)?)
        }
        Command::HashPassword => {
            let password = read_password()?;
            emit(format!("{}\n", authgate::users::hash_password(&password)?))?;
            Ok(())
        }
        Command::Token { sub, ttl, claims } => {
            if sub.trim().is_empty() || sub.trim().len() != sub.len() || sub.chars().any(char::is_control) {
                anyhow::bail!(
                    "--sub: must not be empty, start or end with whitespace, or hold control characters (the gateway refuses such a token)"
                );
            }
            let config = config::load(&path)?;
            let ttl = match ttl {
                Some(t) => config::parse_duration(&t).map_err(|m| anyhow::anyhow!("--ttl: {m}"))?,
                None => config.jwt.access_ttl,
            };
            let mut extra = serde_json::Map::new();
            for c in claims {
                let (k, v) = c.split_once('=').ok_or_else(|| anyhow::anyhow!("--claim {c:?}: expected key=value"))?;
                if REGISTERED_CLAIMS.contains(&k) {
                    anyhow::bail!("--claim {k}: set by authgate itself (use --sub and --ttl)");
                }
                let value = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_string()));
                if k == "roles" && value.as_str().is_some_and(|r| r.contains(',')) {
                    anyhow::bail!(
                        "--claim roles={v}: one role cannot hold ','; for several, give a JSON array: --claim 'roles=[\"admin\",\"user\"]'"
                    );
                }
                if let Some((_, header)) = config.identity.claim_headers.iter().find(|(c, _)| c == k)
                    && !authgate::identity::forwardable(k, &value)
                {
                    anyhow::bail!(
                        "--claim {k}: the gateway forwards it as {header} and would refuse this value (a control character, \
                         whitespace at an end, ',' in an array element, or a number it cannot send exactly)"
                    );
                }
                extra.insert(k.to_string(), value);
            }
            let keys = authgate::keys::load(&config)?;
            let signer = authgate::jwt::Signer::new(&keys, config.jwt.issuer.clone(), config.jwt.audience.clone())
                .ok_or_else(|| anyhow::anyhow!("{}: jwt: this config has no signing key (only jwt.public_key)", path.display()))?;
            let min_iat = authgate::subject_cutoff_cli(&config, &sub);
            emit(format!("{}\n", signer.sign_issued_at(&sub, &extra, ttl, min_iat)?.token))
        }
        Command::GenCert { out, hosts } => {
            let hosts = if hosts.is_empty() { vec!["localhost".into(), "127.0.0.1".into(), "::1".into()] } else { hosts };
            let (cert, key) = (out.join("dev-cert.pem"), out.join("dev-key.pem"));
            authgate::tls::generate_self_signed(&cert, &key, &hosts).map_err(|m| anyhow::anyhow!("{m}"))?;
            emit(format!("wrote {} and {} for {}\n", cert.display(), key.display(), hosts.join(", ")))
        }
        Command::Revoke { sub } => {
            if sub.trim().is_empty() {
                anyhow::bail!("--sub: must not be empty");
            }
            emit(authgate::revoke_subject_cli(&config::load(&path)?, &sub)?)
        }
        Command::Completions { shell } => {
            // Into a buffer first: clap_complete panics on a failed write.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "authgate", &mut script);
            emit(script)
        }
        Command::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut page).context("cannot write the man page")?;
            emit(page)
        }
    }
}

/// One line from stdin, without echo on a terminal; one trailing newline dropped.
fn read_password() -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let mut s = String::new();
    if stdin.is_terminal() {
        eprint!("Password: ");
        s = rpassword_line()?;
    } else {
        stdin.lock().read_to_string(&mut s).context("cannot read the password from stdin")?;
    }
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    if s.is_empty() {
        anyhow::bail!("the password is empty");
    }
    Ok(s)
}

fn rpassword_line() -> anyhow::Result<String> {
    rpassword::read_password().context("cannot read the password from the terminal")
}
