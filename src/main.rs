//! The `keyward` command: run the proxy, or check a config file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keyward::config::{Config, LoadError, Severity};

#[derive(Parser)]
#[command(name = "keyward", version, about = "A Redis-protocol sidecar proxy")]
struct Cli {
    /// The TOML config file; without one, every setting takes its default.
    #[arg(short, long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a config file, printing FILE:LINE:COL for every problem.
    /// Exits 0 when valid, 1 when it has errors, 2 when it cannot be read.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check) => match &cli.config {
            Some(path) => check(path),
            None => {
                eprintln!("keyward check needs --config FILE");
                ExitCode::from(2)
            }
        },
        None => run(cli.config.as_deref()),
    }
}

fn check(path: &Path) -> ExitCode {
    let file = path.display().to_string();
    match Config::load(path) {
        Ok((_, warnings)) => {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            for warning in &warnings {
                println!("{}", warning.render(&file, &text));
            }
            println!("{file}: ok");
            ExitCode::SUCCESS
        }
        Err(LoadError::Unreadable { path, error }) => {
            println!("{path}: error: cannot read: {error}");
            ExitCode::from(2)
        }
        Err(LoadError::Invalid(diagnostics)) => {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            for diagnostic in &diagnostics {
                println!("{}", diagnostic.render(&file, &text));
            }
            let errors = diagnostics
                .iter()
                .filter(|d| d.severity == Severity::Error)
                .count();
            println!("{file}: {errors} error(s)");
            ExitCode::from(1)
        }
    }
}

fn run(path: Option<&Path>) -> ExitCode {
    let config = match path {
        None => Config::default(),
        Some(path) => match Config::load(path) {
            Ok((config, _)) => config,
            Err(LoadError::Unreadable { path, error }) => {
                eprintln!("keyward: cannot read {path}: {error}");
                return ExitCode::from(2);
            }
            Err(LoadError::Invalid(diagnostics)) => {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                for diagnostic in &diagnostics {
                    eprintln!("{}", diagnostic.render(&path.display().to_string(), &text));
                }
                return ExitCode::from(1);
            }
        },
    };
    init_logging(config.log.level.as_str());
    let threads = config.runtime.threads();
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("keyward: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(keyward::app::run(config)) {
        Ok(()) => {
            // Sessions cut short by the grace period must not delay the exit.
            runtime.shutdown_background();
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
    }
}

/// `RUST_LOG` wins over the config file's level, so a person debugging needs no edit.
fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
