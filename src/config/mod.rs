//! The configuration file: typed sections with their defaults, loading, and diagnostics.
//!
//! Values are validated while they are deserialized, so each error carries the place in the
//! file it came from. Every top-level section is checked on its own as well, so that one run
//! of `keyward check` reports an error for each broken section instead of stopping at the
//! first.

mod diagnostic;
pub mod rules;
mod values;

pub use diagnostic::{Diagnostic, Severity};
pub use rules::{CacheRule, DenyRule, LockRule, RateLimitRule};
pub use values::{ConfigBytes, ConfigDuration, HostPort, LogLevel};

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use toml::de::{DeArray, DeTable, DeValue, Deserializer};
use toml::Spanned;

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: ListenConfig,
    pub upstream: UpstreamConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub shutdown: ShutdownConfig,
    pub runtime: RuntimeConfig,
    /// `[[rate_limit]]` rules, first match wins.
    pub rate_limit: Vec<RateLimitRule>,
    /// `[[deny]]` rules: commands refused with `-NOPERM`, first match wins.
    pub deny: Vec<DenyRule>,
    /// `[[cache]]` rules: reads answered from memory, first match wins.
    pub cache: Vec<CacheRule>,
    /// `[[lock]]` rules: lock keys whose losing attempts wait in line, first match wins.
    pub lock: Vec<LockRule>,
    pub hotkeys: HotKeysConfig,
}

/// `[hotkeys]`: which keys and key patterns take the most requests.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HotKeysConfig {
    pub enabled: bool,
    /// Counters per window and summary: bounds memory, and the error of every count to the
    /// window's requests divided by this.
    pub capacity: NonZeroUsize,
    /// Sliding windows reported (each covers between one and two of its lengths).
    pub windows: Vec<ConfigDuration>,
    /// Fraction of commands counted, in (0, 1]; counts are scaled back up.
    pub sample_rate: f64,
    /// Keys per window exported to Prometheus (bounds label cardinality).
    pub export_top: usize,
}

impl Default for HotKeysConfig {
    fn default() -> Self {
        HotKeysConfig {
            enabled: false,
            capacity: NonZeroUsize::new(1024).expect("nonzero"),
            windows: vec![
                ConfigDuration::from_millis(10_000),
                ConfigDuration::from_millis(60_000),
                ConfigDuration::from_millis(300_000),
            ],
            sample_rate: 1.0,
            export_top: 10,
        }
    }
}

/// Where clients connect.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    pub address: SocketAddr,
    /// Clients beyond this get `-ERR max number of clients reached`, as from Redis.
    pub max_clients: NonZeroUsize,
    /// The name of the environment variable holding the password clients must `AUTH` with;
    /// none means clients need not authenticate to keyward.
    pub password_env: Option<String>,
    /// Close clients idle for this long (Redis's `timeout`); subscribers and clients blocked
    /// in a command are exempt, as in Redis. None: never.
    pub idle_timeout: Option<ConfigDuration>,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            address: SocketAddr::from(([127, 0, 0, 1], 6380)),
            max_clients: NonZeroUsize::new(10_000).expect("nonzero"),
            password_env: None,
            idle_timeout: None,
        }
    }
}

/// The Redis that keyward forwards to.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    pub address: HostPort,
    /// Multiplexed connections per (protocol, database); sessions are spread over them.
    pub pool_size: NonZeroUsize,
    pub connect_timeout: ConfigDuration,
    /// A command without a reply after this long is answered with an error.
    pub request_timeout: ConfigDuration,
    pub username: Option<String>,
    /// The name of the environment variable holding the password, so the file holds no secret.
    pub password_env: Option<String>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            address: HostPort::new("127.0.0.1", 6379),
            pool_size: NonZeroUsize::new(4).expect("nonzero"),
            connect_timeout: ConfigDuration::from_millis(1_000),
            request_timeout: ConfigDuration::from_millis(5_000),
            username: None,
            password_env: None,
        }
    }
}

/// The HTTP endpoint for Prometheus and health checks.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub address: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            address: SocketAddr::from(([127, 0, 0, 1], 9898)),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `keyward=debug`; `RUST_LOG` overrides it.
    pub level: LogLevel,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long SIGTERM waits for requests in flight before exiting anyway.
    pub grace_period: ConfigDuration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace_period: ConfigDuration::from_millis(10_000),
        }
    }
}

/// How many threads serve connections.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// 0 means one per CPU keyward may run on. With one thread, keyward runs single-threaded,
    /// which costs less per request than a work-stealing scheduler on one CPU.
    pub worker_threads: usize,
}

impl RuntimeConfig {
    pub fn threads(&self) -> usize {
        match self.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            threads => threads,
        }
    }
}

impl Config {
    /// Reads and validates a file; all diagnostics found are returned on failure.
    pub fn load(path: &Path) -> Result<(Config, Vec<Diagnostic>), LoadError> {
        let text = std::fs::read_to_string(path).map_err(|error| LoadError::Unreadable {
            path: path.display().to_string(),
            error,
        })?;
        Config::parse(&text).map_err(LoadError::Invalid)
    }

    /// Parses TOML text: the config and its warnings, or every error found.
    pub fn parse(text: &str) -> Result<(Config, Vec<Diagnostic>), Vec<Diagnostic>> {
        let (root, syntax_errors) = DeTable::parse_recoverable(text);
        if !syntax_errors.is_empty() {
            return Err(syntax_errors.iter().map(Diagnostic::from_toml).collect());
        }
        // Each table key and each array element is checked alone, so that every broken value
        // is reported, not just the first serde meets.
        let mut diagnostics: Vec<Diagnostic> = Vec::new();
        let mut rate_limits = Vec::new();
        let mut denials = Vec::new();
        let mut caches = Vec::new();
        let mut locks = Vec::new();
        for (key, value) in root.get_ref() {
            let pieces: Vec<Spanned<DeValue<'_>>> = match value.get_ref() {
                // An empty table is checked whole: an unknown `[lisen]` is an error too.
                DeValue::Table(table) if table.is_empty() => vec![value.clone()],
                DeValue::Table(table) => table
                    .iter()
                    .map(|(field, field_value)| {
                        let mut piece = DeTable::default();
                        piece.insert(field.clone(), field_value.clone());
                        Spanned::new(value.span(), DeValue::Table(piece))
                    })
                    .collect(),
                DeValue::Array(elements) => elements
                    .iter()
                    .map(|element| {
                        let mut piece = DeArray::new();
                        piece.push(element.clone());
                        Spanned::new(value.span(), DeValue::Array(piece))
                    })
                    .collect(),
                _ => vec![value.clone()],
            };
            for piece in pieces {
                let mut section = DeTable::default();
                section.insert(key.clone(), piece);
                match Config::deserialize(Deserializer::from(Spanned::new(root.span(), section))) {
                    Err(error) => diagnostics.push(Diagnostic::from_toml(&error).with_found(text)),
                    // Rules that parse alone are checked together below, even if others in
                    // the file do not parse.
                    Ok(piece) => {
                        rate_limits.extend(piece.rate_limit);
                        denials.extend(piece.deny);
                        caches.extend(piece.cache);
                        locks.extend(piece.lock);
                    }
                }
            }
        }
        diagnostics.extend(rules::check_rules("rate_limit", &rate_limits, text));
        diagnostics.extend(rules::check_rate_limits(&rate_limits));
        diagnostics.extend(rules::check_rules("deny", &denials, text));
        diagnostics.extend(rules::check_rules("cache", &caches, text));
        diagnostics.extend(rules::check_caches(&caches));
        diagnostics.extend(rules::check_rules("lock", &locks, text));
        diagnostics.sort_by_key(|diagnostic| diagnostic.span.as_ref().map(|span| span.start));
        if diagnostics.iter().any(|d| d.severity == Severity::Error) {
            return Err(diagnostics);
        }
        let config = Config::deserialize(Deserializer::from(root))
            .map_err(|error| vec![Diagnostic::from_toml(&error).with_found(text)])?;
        let hotkeys = &config.hotkeys;
        if !(hotkeys.sample_rate > 0.0 && hotkeys.sample_rate <= 1.0) {
            diagnostics.push(Diagnostic::error(
                find_value(text, "sample_rate").unwrap_or(0..0),
                format!(
                    "sample_rate must be in (0, 1], found {}",
                    hotkeys.sample_rate
                ),
            ));
        }
        if hotkeys.windows.is_empty() {
            diagnostics.push(Diagnostic::error(
                find_value(text, "windows").unwrap_or(0..0),
                "windows needs at least one duration".into(),
            ));
        }
        if diagnostics.iter().any(|d| d.severity == Severity::Error) {
            return Err(diagnostics);
        }
        for (section, variable) in [
            ("listen", &config.listen.password_env),
            ("upstream", &config.upstream.password_env),
        ] {
            if let Some(variable) = variable {
                if std::env::var_os(variable).is_none() {
                    diagnostics.push(Diagnostic::warning(
                        find_value(text, variable),
                        format!(
                            "environment variable `{variable}` ({section}.password_env) is not set"
                        ),
                    ));
                }
            }
        }
        Ok((config, diagnostics))
    }

    /// The upstream password, read from the environment variable the file names.
    pub fn upstream_password(&self) -> Result<Option<String>, String> {
        secret("upstream", &self.upstream.password_env)
    }

    /// The password clients must authenticate with, from the environment.
    pub fn listen_password(&self) -> Result<Option<String>, String> {
        secret("listen", &self.listen.password_env)
    }
}

fn secret(section: &str, variable: &Option<String>) -> Result<Option<String>, String> {
    match variable {
        None => Ok(None),
        Some(variable) => std::env::var(variable)
            .map(Some)
            .map_err(|_| format!("{section}.password_env names `{variable}`, which is not set")),
    }
}

/// Where a key's value starts, for diagnostics that arise after deserialization.
fn find_value(text: &str, key: &str) -> Option<std::ops::Range<usize>> {
    let start = text.find(key)?;
    Some(start..start + key.len())
}

#[derive(Debug)]
pub enum LoadError {
    Unreadable { path: String, error: std::io::Error },
    Invalid(Vec<Diagnostic>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_means_defaults() {
        let (config, warnings) = Config::parse("").unwrap();
        assert!(warnings.is_empty());
        assert_eq!(config.listen.address.to_string(), "127.0.0.1:6380");
        assert_eq!(config.upstream.address.to_string(), "127.0.0.1:6379");
        assert_eq!(config.upstream.request_timeout.get().as_millis(), 5000);
    }

    #[test]
    fn reports_every_broken_value_with_its_place() {
        let text =
            "[listen]\nmax_clients = 0\n\n[upstream]\npool_sise = 4\nrequest_timeout = \"5x\"\n";
        let errors = Config::parse(text).unwrap_err();
        let rendered: Vec<String> = errors.iter().map(|d| d.render("k.toml", text)).collect();
        assert_eq!(rendered.len(), 3, "{rendered:?}");
        assert!(
            rendered[0].starts_with("k.toml:2:15: error:"),
            "{}",
            rendered[0]
        );
        assert!(
            rendered[1].starts_with("k.toml:5:1: error:"),
            "{}",
            rendered[1]
        );
        assert!(
            rendered[1].contains("did you mean `pool_size`?"),
            "{}",
            rendered[1]
        );
        assert!(
            rendered[2].starts_with("k.toml:6:19: error:"),
            "{}",
            rendered[2]
        );
    }

    #[test]
    fn rejects_bad_values_where_they_are() {
        let text = "[upstream]\nrequest_timeout = \"5x\"\n";
        let errors = Config::parse(text).unwrap_err();
        let rendered = errors[0].render("k.toml", text);
        assert!(rendered.starts_with("k.toml:2:19: error:"), "{rendered}");
        assert!(rendered.contains("\"5x\""), "{rendered}");
        let text = "[upstream]\naddress = \"redis\"\n";
        let rendered = Config::parse(text).unwrap_err()[0].render("k.toml", text);
        assert!(rendered.contains("host:port"), "{rendered}");
    }

    #[test]
    fn reports_syntax_errors() {
        let text = "[listen\naddress = 1\n";
        let errors = Config::parse(text).unwrap_err();
        assert!(errors[0].render("k.toml", text).starts_with("k.toml:1:"));
    }
}
