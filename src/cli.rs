//! Command-line definitions (clap) only.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// `0.1.0 (commit 1a2b3c4d5e6f)`
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("AUTHGATE_GIT_COMMIT"), ")");

#[derive(Parser, Debug)]
#[command(name = "authgate", version = VERSION, about = "A TLS reverse proxy that verifies JWTs in front of services that cannot")]
pub struct Cli {
    /// Config file [default: $AUTHGATE_CONFIG, else ./config.toml]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway (the default)
    Serve,
    /// Load and validate the config and the files it names, print a summary
    Check,
    /// Read a password from stdin, print an argon2id hash for the users file
    HashPassword,
    /// Mint an access token with the configured signing key
    Token {
        /// The subject (`sub`)
        #[arg(long)]
        sub: String,
        /// Lifetime, e.g. 10m, 1h [default: jwt.access_ttl]
        #[arg(long)]
        ttl: Option<String>,
        /// Extra claim, key=value (repeatable; a value that parses as JSON is used as JSON)
        #[arg(long = "claim", value_name = "KEY=VALUE")]
        claims: Vec<String>,
    },
    /// Write a self-signed certificate and key for local use
    GenCert {
        /// Output folder
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// Host names and IPs the certificate is for (repeatable)
        #[arg(long = "host", value_name = "NAME")]
        hosts: Vec<String>,
    },
    /// Revoke every token issued to SUB before now
    Revoke {
        #[arg(long)]
        sub: String,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `authgate man > /usr/local/share/man/man1/authgate.1`
    Man,
}

impl Cli {
    pub fn config_path(&self) -> PathBuf {
        self.config
            .clone()
            .or_else(|| std::env::var_os("AUTHGATE_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("config.toml"))
    }
}
