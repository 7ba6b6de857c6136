//! Every Prometheus metric keyward exports, registered here next to the helpers that record
//! them, so names and labels are defined once. Per-command series live in [`commands`];
//! command latencies are [`latency`] histograms of keyward's own.
//!
//! Counters that alert rules watch are registered at zero when keyward starts: a series that
//! appears only with its first event gives `increase()` nothing to compare, so an alert on it
//! would miss that first event.

pub mod commands;
pub mod latency;

use ::metrics::{counter, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub use commands::{CommandMetrics, ReceivedTally};

/// The kinds of `keyward_upstream_errors_total`.
const UPSTREAM_ERROR_KINDS: [&str; 4] = ["connect", "io", "timeout", "busy"];

/// Waits that policies impose, in seconds: a lock's queue and a rate limit's delay, from an
/// immediate turn to a long wait.
const WAIT_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the global recorder; the handle renders `/metrics`.
pub fn install() -> Result<PrometheusHandle, String> {
    // Histograms, not the exporter's default summaries: a sidecar runs beside every app
    // instance, and only buckets add up across instances into one percentile.
    let mut builder = PrometheusBuilder::new();
    for name in [
        "keyward_lock_wait_seconds",
        "keyward_ratelimit_delay_seconds",
    ] {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.into()), &WAIT_BUCKETS)
            .map_err(|e| e.to_string())?;
    }
    let handle = builder.install_recorder().map_err(|e| e.to_string())?;
    describe();
    register_at_zero();
    Ok(handle)
}

fn register_at_zero() {
    for name in [
        "keyward_rejected_clients_total",
        "keyward_output_limit_disconnects_total",
        "keyward_protocol_errors_total",
        "keyward_tls_handshake_failures_total",
        "keyward_cache_invalidation_connection_lost_total",
    ] {
        counter!(name).absolute(0);
    }
    for kind in UPSTREAM_ERROR_KINDS {
        counter!("keyward_upstream_errors_total", "kind" => kind).absolute(0);
    }
    for result in ["ok", "error"] {
        counter!("keyward_config_reloads_total", "result" => result).absolute(0);
    }
    gauge!("keyward_client_connections").set(0.0);
}

fn describe() {
    describe_upstream();
    ::metrics::describe_gauge!("keyward_client_connections", "Open client connections");
    ::metrics::describe_counter!(
        "keyward_protocol_errors_total",
        "Client connections closed for breaking the protocol"
    );
    ::metrics::describe_counter!(
        "keyward_output_limit_disconnects_total",
        "Clients closed for not reading their pub/sub messages (output over 32 MiB)"
    );
    ::metrics::describe_counter!(
        "keyward_tls_handshake_failures_total",
        "Clients whose TLS handshake failed or did not finish in time"
    );
    ::metrics::describe_counter!(
        "keyward_big_keys_total",
        "Commands whose reply (side=reply) or written value (side=value) was over big_key_bytes"
    );
    ::metrics::describe_counter!(
        "keyward_cache_invalidation_connection_lost_total",
        "Times the cache's invalidation connection failed or dropped (each flushes every cache rule)"
    );
    ::metrics::describe_counter!(
        "keyward_cache_hits_total",
        "Cacheable reads answered from the cache (counted, not served, in shadow mode)"
    );
    ::metrics::describe_counter!(
        "keyward_cache_misses_total",
        "Cacheable reads the cache could not answer"
    );
    ::metrics::describe_counter!(
        "keyward_cache_invalidations_total",
        "Cached keys dropped because Redis or a write through keyward said they changed"
    );
    ::metrics::describe_counter!(
        "keyward_cache_evictions_total",
        "Cached keys dropped to stay within max_memory"
    );
    ::metrics::describe_gauge!(
        "keyward_cache_bytes",
        "Bytes of keys and replies a cache rule holds"
    );
    ::metrics::describe_gauge!("keyward_cache_entries", "Keys a cache rule holds");
    ::metrics::describe_counter!(
        "keyward_rejected_clients_total",
        "Connections refused because max_clients was reached"
    );
    ::metrics::describe_gauge!(
        "keyward_max_clients",
        "listen.max_clients: client connections beyond it are refused"
    );
    ::metrics::describe_counter!(
        "keyward_config_reloads_total",
        "Reloads of a changed config file: applied (ok) or rejected (error)"
    );
    ::metrics::describe_gauge!(
        "keyward_config_last_reload_successful",
        "0 while the config file last read was rejected (the previous version runs), else 1"
    );
    ::metrics::describe_gauge!(
        "keyward_config_loaded_timestamp_seconds",
        "When the config in force was loaded, in seconds since the epoch"
    );
    ::metrics::describe_counter!(
        "keyward_http_requests_total",
        "REST API requests, by token name (empty without a valid token) and HTTP status"
    );
}

/// The series about Redis behind keyward: connections, errors, cluster and sentinel.
fn describe_upstream() {
    ::metrics::describe_gauge!(
        "keyward_upstream_connections",
        "Open connections to Redis, by node (host:port)"
    );
    ::metrics::describe_counter!(
        "keyward_upstream_errors_total",
        "Upstream failures: failed connects and broken connections (connect, io), and requests that timed out or found the connection busy (timeout, busy)"
    );
    ::metrics::describe_counter!(
        "keyward_upstream_redirects_total",
        "Redirections cluster nodes answered, which keyward followed for the client (moved, ask, tryagain)"
    );
    ::metrics::describe_counter!(
        "keyward_cluster_slot_map_refreshes_total",
        "Times keyward read the cluster's slot map (at start, on its interval, after a redirection or a node failure)"
    );
    ::metrics::describe_gauge!(
        "keyward_replica_lag_seconds",
        "How far behind its primary each replica is (whole seconds, from the primary's INFO replication), once a [[route]] reads from replicas"
    );
    ::metrics::describe_counter!(
        "keyward_replica_reads_total",
        "Reads a [[route]] sent to a replica, by route"
    );
    ::metrics::describe_counter!(
        "keyward_upstream_failovers_total",
        "Sentinel mode: times keyward moved to a new primary after a failover"
    );
    ::metrics::describe_gauge!(
        "keyward_upstream_role",
        "Sentinel mode: 1 for the node keyward forwards to as the primary, 0 for earlier ones"
    );
    ::metrics::describe_gauge!(
        "keyward_upstream_up",
        "1 when Redis answers and accepts keyward's credentials (as /readyz), else 0"
    );
}

pub fn client_connected() {
    gauge!("keyward_client_connections").increment(1.0);
}

pub fn client_disconnected() {
    gauge!("keyward_client_connections").decrement(1.0);
}

pub fn client_rejected() {
    counter!("keyward_rejected_clients_total").increment(1);
}

pub fn tls_handshake_failed() {
    counter!("keyward_tls_handshake_failures_total").increment(1);
}

pub fn output_limit_disconnect() {
    counter!("keyward_output_limit_disconnects_total").increment(1);
}

/// The cache's invalidation connection failed or dropped: the cache was flushed.
pub fn cache_invalidation_connection_lost() {
    counter!("keyward_cache_invalidation_connection_lost_total").increment(1);
}

pub fn protocol_error() {
    counter!("keyward_protocol_errors_total").increment(1);
}

/// A connection to the Redis (in cluster mode, the node) at `node` opened.
pub fn upstream_connection_opened(node: &str) {
    gauge!("keyward_upstream_connections", "node" => node.to_string()).increment(1.0);
}

pub fn upstream_connection_closed(node: &str) {
    gauge!("keyward_upstream_connections", "node" => node.to_string()).decrement(1.0);
}

/// A REST API request was answered. `token` is a configured token's name, or empty: bounded.
pub fn http_request(token: &str, status: u16) {
    counter!(
        "keyward_http_requests_total",
        "token" => token.to_string(),
        "status" => status.to_string()
    )
    .increment(1);
}

/// `count` is 1 for a failed connection (`connect`, `io`) and the number of requests for
/// request-level failures (`timeout`, `busy`).
pub fn upstream_errors(kind: &'static str, count: u64) {
    counter!("keyward_upstream_errors_total", "kind" => kind).increment(count);
}

/// A redirection a cluster node answered: `moved`, `ask` or `tryagain`.
pub fn upstream_redirect(kind: &'static str) {
    counter!("keyward_upstream_redirects_total", "kind" => kind).increment(1);
}

pub fn cluster_slot_map_refreshed() {
    counter!("keyward_cluster_slot_map_refreshes_total").increment(1);
}

/// How far behind its primary a replica is, in whole seconds, as the primary reports it.
pub fn replica_lag(node: &str, seconds: u64) {
    gauge!("keyward_replica_lag_seconds", "node" => node.to_string()).set(seconds as f64);
}

/// Sentinel mode: keyward moved to another primary.
pub fn upstream_failover() {
    counter!("keyward_upstream_failovers_total").increment(1);
}

/// Sentinel mode: the node keyward forwards to is `node` (1), no longer `previous` (0).
pub fn upstream_primary(node: &str, previous: Option<&str>) {
    if let Some(previous) = previous {
        gauge!("keyward_upstream_role", "node" => previous.to_string(), "role" => "primary")
            .set(0.0);
    }
    gauge!("keyward_upstream_role", "node" => node.to_string(), "role" => "primary").set(1.0);
}

/// `listen.max_clients`, which only a restart changes.
pub fn max_clients(limit: usize) {
    gauge!("keyward_max_clients").set(limit as f64);
}

/// States read when `/metrics` is scraped rather than recorded as they change: keyward does
/// no work for them while nobody scrapes.
pub struct Observed {
    pub upstream_up: bool,
    pub config_rejected: bool,
    /// Seconds since the epoch.
    pub config_loaded_at: u64,
}

pub fn publish(observed: &Observed) {
    let flag = |on: bool| if on { 1.0 } else { 0.0 };
    gauge!("keyward_upstream_up").set(flag(observed.upstream_up));
    gauge!("keyward_config_last_reload_successful").set(flag(!observed.config_rejected));
    gauge!("keyward_config_loaded_timestamp_seconds").set(observed.config_loaded_at as f64);
}

/// A reload applied a changed file (`applied`), or rejected it and kept the one in force.
pub fn config_reloaded(applied: bool) {
    let result = if applied { "ok" } else { "error" };
    counter!("keyward_config_reloads_total", "result" => result).increment(1);
}
