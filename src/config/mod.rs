//! The configuration file: typed sections with their defaults, loading, and diagnostics.
//!
//! Values are validated while they are deserialized, so each error carries the place in the
//! file it came from. Every setting, and every value of a rule, is checked on its own as
//! well, so that one run of `keyward check` reports each broken value instead of stopping at
//! the first of a section or rule.

mod check;
mod diagnostic;
mod http_api;
mod rule_checks;
pub mod rules;
mod values;

pub use diagnostic::{Diagnostic, Severity};
pub use http_api::{HttpApiConfig, HttpApiToken};
pub use rules::{CacheRule, DenyRule, LockRule, RateLimitRule, ReadFrom, RouteRule};
pub use values::{ConfigBytes, ConfigDuration, HostPort, LogLevel};

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use toml::de::{DeTable, DeValue, Deserializer};

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
    /// `[[route]]` rules: reads that may go to replicas, first match wins.
    pub route: Vec<RouteRule>,
    pub hotkeys: HotKeysConfig,
    /// `[http_api]`: Upstash's REST API; off unless the section is present.
    pub http_api: Option<HttpApiConfig>,
}

/// `[hotkeys]`: which keys and key patterns take the most requests.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HotKeysConfig {
    pub enabled: bool,
    /// Counters per summary: bounds memory, and the error of every key's count to 1.5 times
    /// the window's total divided by this (4.5 times in the tests for longer windows).
    pub capacity: NonZeroUsize,
    /// Sliding windows reported (each covers between one and two of its lengths; longer
    /// windows move in steps of the shortest).
    pub windows: Vec<ConfigDuration>,
    /// Fraction of commands counted, in (0, 1]; counts are scaled back up.
    pub sample_rate: f64,
    /// Keys per window exported to Prometheus (bounds label cardinality).
    pub export_top: usize,
    /// A reply, or a value written, over this size makes its key a big key.
    pub big_key_bytes: ConfigBytes,
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
            big_key_bytes: ConfigBytes::from_bytes(1_000_000),
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
    /// Clients must connect with TLS, with this certificate.
    pub tls: Option<ListenTls>,
}

/// `[listen] tls`: the certificate clients see (PEM files; relative paths are from the config
/// file's directory).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenTls {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[upstream] tls`: keyward connects to Redis with TLS (PEM files; relative paths are from
/// the config file's directory).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTls {
    /// The CA certificates Redis's certificate must chain to; the Mozilla roots when absent.
    pub ca: Option<PathBuf>,
    /// The name Redis's certificate must carry; the host of `address` when absent.
    pub server_name: Option<String>,
    /// A client certificate and its key, for a Redis with `tls-auth-clients yes`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            address: SocketAddr::from(([127, 0, 0, 1], 6380)),
            max_clients: NonZeroUsize::new(10_000).expect("nonzero"),
            password_env: None,
            idle_timeout: None,
            tls: None,
        }
    }
}

/// The Redis that keyward forwards to.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// What stands behind `address`: one Redis, a Redis Cluster that keyward routes to, or a
    /// primary that Sentinel names.
    pub topology: Topology,
    /// The Redis, or in cluster mode one node to learn the cluster from. Not read in
    /// sentinel mode: the sentinels name the primary.
    pub address: HostPort,
    /// Cluster mode: more nodes to learn the cluster from, tried after `address` when it
    /// does not answer.
    pub seeds: Vec<HostPort>,
    /// Cluster mode: how often the slot map is read again when nothing (a redirection, a
    /// node that fails) asks for it sooner.
    pub refresh_interval: ConfigDuration,
    /// Sentinel mode: the sentinels that watch the primary, asked in order.
    pub sentinels: Vec<HostPort>,
    /// Sentinel mode: the name the sentinels know the primary by (`SENTINEL MONITOR <name>`).
    pub master_name: Option<String>,
    /// Sentinel mode: the name of the environment variable holding the sentinels' password
    /// (`requirepass` in their config), when they have one.
    pub sentinel_password_env: Option<String>,
    /// Multiplexed connections per (protocol, database); sessions are spread over them.
    /// Default: one per worker thread.
    pub pool_size: Option<NonZeroUsize>,
    pub connect_timeout: ConfigDuration,
    /// A shared connection whose oldest command has no reply after this long is reset (its
    /// commands get an error), unless Redis says it holds the command on purpose.
    pub request_timeout: ConfigDuration,
    pub username: Option<String>,
    /// The name of the environment variable holding the password, so the file holds no secret.
    pub password_env: Option<String>,
    /// A file holding the password (a mounted secret), read again on reload and whenever it
    /// changes, so that the password can be rotated without a restart. Instead of
    /// `password_env`.
    pub password_file: Option<PathBuf>,
    /// Connect to Redis with TLS.
    pub tls: Option<UpstreamTls>,
}

/// `[upstream] topology`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Topology {
    /// One Redis (or a primary that fails over behind one address).
    Standalone,
    /// A Redis Cluster: keyward learns which node serves which hash slot and routes each
    /// command there, so that clients keep one plain connection.
    Cluster,
    /// A primary and its replicas watched by Redis Sentinel: keyward asks the sentinels which
    /// node is the primary, and follows their failovers.
    Sentinel,
}

impl UpstreamConfig {
    /// Where keyward learns the cluster from, `address` first.
    pub fn seed_nodes(&self) -> Vec<HostPort> {
        let mut seeds = vec![self.address.clone()];
        seeds.extend(
            self.seeds
                .iter()
                .filter(|seed| **seed != self.address)
                .cloned(),
        );
        seeds
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            topology: Topology::Standalone,
            address: HostPort::new("127.0.0.1", 6379),
            seeds: Vec::new(),
            refresh_interval: ConfigDuration::from_millis(30_000),
            sentinels: Vec::new(),
            master_name: None,
            sentinel_password_env: None,
            pool_size: None,
            connect_timeout: ConfigDuration::from_millis(1_000),
            request_timeout: ConfigDuration::from_millis(5_000),
            username: None,
            password_env: None,
            password_file: None,
            tls: None,
        }
    }
}

/// The HTTP endpoint for Prometheus and health checks.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub address: SocketAddr,
    /// The name of the environment variable holding the token that `POST /reload` must carry
    /// (`Authorization: Bearer <token>`) from other hosts; without it, only localhost may.
    pub token_env: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            address: SocketAddr::from(([127, 0, 0, 1], 9898)),
            token_env: None,
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
    /// Reads and validates a file, for callers that only need a valid config (`keyward
    /// top` finding the admin address): why it is not one is `check`'s to say.
    pub fn load(path: &Path) -> Option<Config> {
        let text = std::fs::read_to_string(path).ok()?;
        Config::parse_file(&text, Some(path))
            .ok()
            .map(|(config, _)| config)
    }

    /// Parses the text of the file at `path` (none: no file): as [`Config::parse`], with
    /// relative file paths (TLS certificates and keys) taken from the file's directory, so
    /// that the file means the same whatever directory keyward starts in.
    pub fn parse_file(
        text: &str,
        path: Option<&Path>,
    ) -> Result<(Config, Vec<Diagnostic>), Vec<Diagnostic>> {
        let (mut config, warnings) = Config::parse(text)?;
        if let Some(dir) = path.and_then(Path::parent) {
            let anchor = |file: &mut PathBuf| {
                if file.is_relative() {
                    *file = dir.join(&*file);
                }
            };
            if let Some(tls) = &mut config.listen.tls {
                anchor(&mut tls.cert);
                anchor(&mut tls.key);
            }
            if let Some(tls) = config.http_api.as_mut().and_then(|api| api.tls.as_mut()) {
                anchor(&mut tls.cert);
                anchor(&mut tls.key);
            }
            if let Some(tls) = &mut config.upstream.tls {
                [&mut tls.ca, &mut tls.cert, &mut tls.key]
                    .into_iter()
                    .flatten()
                    .for_each(anchor);
            }
            if let Some(file) = &mut config.upstream.password_file {
                anchor(file);
            }
        }
        Ok((config, warnings))
    }

    /// Parses TOML text: the config and its warnings, or every error found.
    pub fn parse(text: &str) -> Result<(Config, Vec<Diagnostic>), Vec<Diagnostic>> {
        let (root, syntax_errors) = DeTable::parse_recoverable(text);
        if !syntax_errors.is_empty() {
            return Err(syntax_errors.iter().map(Diagnostic::from_toml).collect());
        }
        let mut diagnostics = check::each_value(&root, text);
        if diagnostics.iter().any(|d| d.severity == Severity::Error) {
            return Err(diagnostics);
        }
        let config = Config::deserialize(Deserializer::from(root))
            .map_err(|error| vec![Diagnostic::from_toml(&error).with_found(text)])?;
        check::settings_together(&config, text, &mut diagnostics);
        if diagnostics.iter().any(|d| d.severity == Severity::Error) {
            return Err(diagnostics);
        }
        check::secrets(&config, text, &mut diagnostics);
        Ok((config, diagnostics))
    }

    /// How many shared connections each pool holds: `upstream.pool_size`, else one per
    /// worker thread. Redis runs one command at a time whatever the connection, so on one
    /// thread a second connection adds no parallelism: it only splits the requests that one
    /// write would carry into several writes and several reads (a quarter of the requests per
    /// write with four connections, measured under unpipelined load).
    pub fn upstream_pool_size(&self) -> usize {
        self.upstream
            .pool_size
            .map_or_else(|| self.runtime.threads(), NonZeroUsize::get)
    }

    /// The upstream password, read from the environment variable the file names.
    pub fn upstream_password(&self) -> Result<Option<String>, String> {
        secret("upstream.password_env", &self.upstream.password_env)
    }

    /// The sentinels' password, from the environment (`None`: they have none).
    pub fn sentinel_password(&self) -> Result<Option<String>, String> {
        secret(
            "upstream.sentinel_password_env",
            &self.upstream.sentinel_password_env,
        )
    }

    /// The token `POST /reload` needs from other hosts, from the environment. An empty one
    /// is refused: it would let anyone in.
    pub fn admin_token(&self) -> Result<Option<String>, String> {
        secret("admin.token_env", &self.admin.token_env)
    }

    /// Each REST token's name and secret, from the environment, in the file's order.
    pub fn http_api_tokens(&self) -> Result<Vec<(&HttpApiToken, String)>, String> {
        let tokens = self.http_api.iter().flat_map(|api| &api.tokens);
        tokens
            .map(|token| {
                let secret = secret("http_api.tokens.token_env", &Some(token.token_env.clone()))?;
                Ok((token, secret.unwrap_or_default()))
            })
            .collect()
    }

    /// The password clients must authenticate with, from the environment.
    pub fn listen_password(&self) -> Result<Option<String>, String> {
        secret("listen.password_env", &self.listen.password_env)
    }
}

/// The secret in the environment variable `variable` names. An empty one is refused: an empty
/// password or token would let anyone in.
fn secret(setting: &str, variable: &Option<String>) -> Result<Option<String>, String> {
    let Some(variable) = variable else {
        return Ok(None);
    };
    match std::env::var(variable) {
        Ok(value) if value.is_empty() => Err(format!(
            "environment variable `{variable}` ({setting}) is empty; a secret must not be"
        )),
        Ok(value) => Ok(Some(value)),
        Err(_) => Err(format!(
            "environment variable `{variable}` ({setting}) is not set"
        )),
    }
}

/// Where `key` is set in table `table` (under `[table]`, as `table.key`, or as a `[table.key]`
/// header), for diagnostics about a value that only fails when it is used.
pub fn find_table_key(text: &str, table: &str, key: &str) -> Option<std::ops::Range<usize>> {
    let root = DeTable::parse(text).ok()?;
    let table = root.get_ref().get(table)?;
    let DeValue::Table(table) = table.get_ref() else {
        return None;
    };
    table
        .keys()
        .find(|name| name.get_ref() == key)
        .map(|name| name.span())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_tls_files_are_found_beside_the_config() {
        let text = "[listen]\ntls = { cert = \"certs/server.pem\", key = \"/abs/server.key\" }\n\
                    [upstream]\ntls = { ca = \"ca.pem\" }\n";
        let path = Path::new("/etc/keyward/keyward.toml");
        let (config, _) = Config::parse_file(text, Some(path)).unwrap();
        let listen = config.listen.tls.unwrap();
        assert_eq!(listen.cert, Path::new("/etc/keyward/certs/server.pem"));
        assert_eq!(listen.key, Path::new("/abs/server.key"));
        let upstream = config.upstream.tls.unwrap();
        assert_eq!(
            upstream.ca.as_deref(),
            Some(Path::new("/etc/keyward/ca.pem"))
        );
        assert_eq!(upstream.cert, None);
        let (config, _) = Config::parse_file(text, None).unwrap();
        assert_eq!(
            config.listen.tls.unwrap().cert,
            Path::new("certs/server.pem")
        );
    }

    #[test]
    fn finds_a_key_in_its_table_only() {
        let text =
            "# [upstream] tls in a comment\n[listen]\ntls = 1\n[upstream]\n# tls = 2\n  tls = 3\n";
        let line_of = |span: std::ops::Range<usize>| text[..span.start].matches('\n').count() + 1;
        let span = find_table_key(text, "listen", "tls").unwrap();
        assert_eq!((&text[span.clone()], line_of(span)), ("tls", 3));
        let span = find_table_key(text, "upstream", "tls").unwrap();
        assert_eq!((&text[span.clone()], line_of(span)), ("tls", 6));
        let dotted = "[upstream.tls]\nca = \"x\"\n";
        let span = find_table_key(dotted, "upstream", "tls").unwrap();
        assert_eq!(&dotted[span], "tls");
        assert_eq!(find_table_key(text, "admin", "tls"), None);
    }

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
    fn reports_every_broken_value_inside_one_rule() {
        let text =
            "[[rate_limit]]\nname = \"a\"\ncommands = [\"INKR\"]\nlimit = 0\nperiod = \"soon\"\n\n\
                    [[cache]]\nname = \"b\"\nttl = \"forever\"\nmax_memory = \"lots\"\n";
        let errors = Config::parse(text).unwrap_err();
        let rendered: Vec<String> = errors.iter().map(|d| d.render("k.toml", text)).collect();
        let places: Vec<&str> = rendered
            .iter()
            .map(|line| line.split(": ").next().unwrap())
            .collect();
        assert_eq!(
            places,
            [
                "k.toml:3:13",
                "k.toml:4:9",
                "k.toml:5:10",
                "k.toml:9:7",
                "k.toml:10:14"
            ],
            "{rendered:#?}"
        );
        assert!(
            rendered[0].contains("did you mean `INCR`?"),
            "{}",
            rendered[0]
        );
        assert!(rendered[1].contains("limit = 0"), "{}", rendered[1]);
        assert!(rendered[2].contains("\"soon\""), "{}", rendered[2]);
        assert!(rendered[3].contains("\"forever\""), "{}", rendered[3]);
        assert!(rendered[4].contains("\"lots\""), "{}", rendered[4]);
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
    fn cluster_mode_reads_its_seeds_which_standalone_refuses() {
        let text = "[upstream]\ntopology = \"cluster\"\naddress = \"10.0.0.1:7000\"\n\
                    seeds = [\"10.0.0.2:7000\", \"10.0.0.1:7000\"]\nrefresh_interval = \"10s\"\n";
        let (config, _) = Config::parse(text).unwrap();
        assert_eq!(config.upstream.topology, Topology::Cluster);
        let seeds: Vec<String> = config
            .upstream
            .seed_nodes()
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(seeds, ["10.0.0.1:7000", "10.0.0.2:7000"]);
        assert_eq!(config.upstream.refresh_interval.get().as_secs(), 10);

        let standalone = "[upstream]\nseeds = [\"10.0.0.2:7000\"]\n";
        let rendered = Config::parse(standalone).unwrap_err()[0].render("k.toml", standalone);
        assert!(
            rendered.contains("seeds are read only with topology"),
            "{rendered}"
        );
    }

    #[test]
    fn reports_syntax_errors() {
        let text = "[listen\naddress = 1\n";
        let errors = Config::parse(text).unwrap_err();
        assert!(errors[0].render("k.toml", text).starts_with("k.toml:1:"));
    }
}
