//! Logging setup, with a level that a config reload can change (unless `RUST_LOG` is set,
//! which always wins so a person debugging is never overridden by a file).

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

static LEVEL: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

pub fn init(level: &str) {
    let from_env = EnvFilter::try_from_default_env().ok();
    let env_wins = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(level));
    let (filter, handle) = reload::Layer::new(filter);
    let initialized = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colour codes help a person at a terminal and garble a log file or journal.
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .try_init();
    if initialized.is_ok() && !env_wins {
        let _ = LEVEL.set(handle);
    }
}

/// Applies a new level from a reloaded config.
pub fn set_level(level: &str) {
    if let Some(handle) = LEVEL.get() {
        if let Err(error) = handle.reload(EnvFilter::new(level)) {
            tracing::warn!(%error, "cannot change the log level");
        }
    }
}
