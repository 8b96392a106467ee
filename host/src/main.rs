//! `husk`: the CRI daemon.

use std::path::PathBuf;

use clap::Parser;
use husk::config::Config;

/// husk: a Kubernetes CRI runtime that runs every pod in its own KVM
/// microVM. Serves runtime.v1 on a unix socket (kubelet's
/// `--container-runtime-endpoint`).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// TOML configuration file. Without this option, /etc/husk/config.toml
    /// is read if it exists, else the defaults apply.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
}

const DEFAULT_CONFIG: &str = "/etc/husk/config.toml";

fn main() {
    let cli = Cli::parse();
    let config = match load_config(cli.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("husk: {error}");
            std::process::exit(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not in journald or files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(error) = runtime.block_on(husk::daemon::run(config)) {
        tracing::error!("{error:#}");
        eprintln!("husk: {error:#}");
        std::process::exit(1);
    }
}

fn load_config(path: Option<PathBuf>) -> Result<Config, husk::config::ConfigError> {
    match path {
        Some(path) => Config::load(&path),
        None if std::path::Path::new(DEFAULT_CONFIG).exists() => {
            Config::load(std::path::Path::new(DEFAULT_CONFIG))
        }
        None => Config::from_toml(""),
    }
}
