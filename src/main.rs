//! The `keyward` command: run the proxy, or check a config file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use keyward::config::{Config, Diagnostic, Severity};
use keyward::tls::{ClientTls, ServerTls};
use keyward::upstream::UpstreamSettings;

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
    Check {
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Print the JSON Schema of the config file, for editor completion and checks.
    Schema,
    /// A live view of the hottest keys of a running keyward, read from its admin endpoint.
    Top {
        /// The admin endpoint; defaults to the --config file's [admin] address.
        #[arg(long, value_name = "HOST:PORT")]
        admin: Option<String>,
        /// One of the configured [hotkeys] windows, e.g. 1m; defaults to the first.
        #[arg(long)]
        window: Option<String>,
        /// Rank keys by requests or by bytes (in and out).
        #[arg(long, value_enum, default_value = "requests")]
        by: keyward::policy::hotkeys::By,
        #[arg(long, default_value_t = 20)]
        count: usize,
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
        /// Print once and exit.
        #[arg(long)]
        once: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Schema) => {
            let schema = schemars::schema_for!(Config);
            println!(
                "{}",
                serde_json::to_string_pretty(&schema).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Some(Command::Top {
            admin,
            window,
            by,
            count,
            interval,
            once,
        }) => {
            let admin = match admin {
                Some(admin) => admin,
                None => match cli.config.as_deref().map(Config::load) {
                    None => Config::default().admin.address.to_string(),
                    Some(Some(config)) => config.admin.address.to_string(),
                    Some(None) => {
                        eprintln!("keyward top: cannot read the config; give --admin HOST:PORT");
                        return ExitCode::from(2);
                    }
                },
            };
            let options = keyward::top::TopOptions {
                admin,
                window,
                by,
                count,
                interval,
                once,
            };
            match keyward::top::run(&options) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("keyward top: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Check { format }) => match &cli.config {
            Some(path) => check(path, format),
            None => {
                eprintln!("keyward check needs --config FILE");
                ExitCode::from(2)
            }
        },
        None => run(cli.config.as_deref()),
    }
}

fn check(path: &Path, format: Format) -> ExitCode {
    let file = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) => {
            let message = format!("cannot read: {error}");
            match format {
                Format::Text => println!("{file}: error: {message}"),
                Format::Json => println!(
                    "{}",
                    serde_json::json!({"file": file, "valid": false, "diagnostics": [
                        {"severity": "error", "message": message}
                    ]})
                ),
            }
            return ExitCode::from(2);
        }
    };
    // A config that does not parse comes with at least one error among its diagnostics.
    let diagnostics = match Config::parse_file(&text, Some(path)) {
        Ok((config, mut found)) => {
            found.extend(check_files(&config, &text));
            found
        }
        Err(diagnostics) => diagnostics,
    };
    let errors = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let code = if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    };
    match format {
        Format::Text => {
            for diagnostic in &diagnostics {
                println!("{}", diagnostic.render(&file, &text));
            }
            if errors == 0 {
                println!("{file}: ok");
            } else {
                println!("{file}: {errors} error(s)");
            }
        }
        Format::Json => {
            let entries: Vec<serde_json::Value> = diagnostics
                .iter()
                .map(|diagnostic| {
                    let (line, column) = diagnostic.position(&text);
                    serde_json::json!({
                        "line": line,
                        "column": column,
                        "severity": match diagnostic.severity {
                            Severity::Error => "error",
                            Severity::Warning => "warning",
                        },
                        "message": diagnostic.message,
                    })
                })
                .collect();
            println!(
                "{:#}",
                serde_json::json!({"file": file, "valid": errors == 0, "diagnostics": entries})
            );
        }
    }
    code
}

/// What only starting keyward would find out: TLS certificate and key files (read at start,
/// not when a config is parsed, so a reload never depends on them), pointed at by their `tls`
/// setting; and whether the upstream can track keys for cache rules, asked once the upstream
/// TLS setup is known to be good.
fn check_files(config: &Config, text: &str) -> Vec<Diagnostic> {
    let at_tls = |table| keyward::config::find_table_key(text, table, "tls").unwrap_or(0..0);
    let mut found = Vec::new();
    let listen_tls = config.listen.tls.as_ref().map(|tls| ("listen", tls));
    let http_api_tls = config.http_api.as_ref().and_then(|api| api.tls.as_ref());
    let servers = listen_tls
        .into_iter()
        .chain(http_api_tls.map(|tls| ("http_api", tls)));
    for (section, tls) in servers {
        if let Err(problem) = ServerTls::from_config(tls, section) {
            found.push(Diagnostic::error(at_tls(section), problem));
        }
    }
    match keyward::upstream::client_tls(config) {
        Ok(tls) => found.extend(check_tracking(config, tls)),
        Err(problem) => found.push(Diagnostic::error(at_tls("upstream"), problem)),
    }
    found
}

/// Cache rules rely on Redis tracking keys: asks the upstream whether it can, and says so when
/// it cannot (or cannot be reached to tell).
fn check_tracking(config: &Config, tls: Option<Arc<ClientTls>>) -> Option<Diagnostic> {
    if config.cache.is_empty() {
        return None;
    }
    let address = &config.upstream.address;
    let answer = UpstreamSettings::with_tls(config, tls).and_then(|settings| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| error.to_string())?
            .block_on(keyward::upstream::invalidations::probe(&settings))
    });
    let message = match answer {
        Ok(None) => return None,
        Ok(Some(refusal)) => format!(
            "upstream {address}: {} ({refusal})",
            keyward::upstream::invalidations::UNSUPPORTED
        ),
        Err(error) => format!(
            "cannot reach upstream {address} to check that it can track keys for [[cache]] rules: {error}"
        ),
    };
    Some(Diagnostic::warning(None, message))
}

fn run(path: Option<&Path>) -> ExitCode {
    let file = path
        .map(|path| path.display().to_string())
        .unwrap_or_default();
    // Read once: the text parsed is the text whose hash /config reports.
    let text = match path.map(std::fs::read_to_string).transpose() {
        Ok(text) => text.unwrap_or_default(),
        Err(error) => {
            eprintln!("keyward: cannot read {file}: {error}");
            return ExitCode::from(2);
        }
    };
    let config = match Config::parse_file(&text, path) {
        Ok((config, _)) => config,
        Err(diagnostics) => {
            for diagnostic in &diagnostics {
                eprintln!("{}", diagnostic.render(&file, &text));
            }
            return ExitCode::from(1);
        }
    };
    keyward::logging::init(config.log.level.as_str());
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
    let source = path.map(|path| (path, text.as_str()));
    match runtime.block_on(keyward::app::run(config, source)) {
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
