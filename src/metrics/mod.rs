//! Every Prometheus metric keyward exports, registered here next to the helpers that record
//! them, so names and labels are defined once.
//!
//! Per-command series are resolved to handles once per command and kept in a table indexed by
//! command id: recording on the hot path is then an atomic add, with no label hashing. Labels
//! are command names from the command table (unknown commands share one label), which keeps
//! cardinality bounded whatever clients send. Command latencies are [`latency`] histograms of
//! keyward's own, rendered after the exporter's series.

pub mod latency;

use std::fmt::Write;
use std::sync::OnceLock;
use std::time::Duration;

use ::metrics::{counter, gauge, Counter};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::command::CommandTable;
use latency::LatencyHistogram;

const COMMAND_DURATION: &str = "keyward_command_duration_seconds";

/// Installs the global recorder; the handle renders `/metrics`.
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| e.to_string())?;
    describe();
    Ok(handle)
}

fn describe() {
    ::metrics::describe_counter!("keyward_commands_total", "Commands received, by command");
    ::metrics::describe_gauge!("keyward_client_connections", "Open client connections");
    ::metrics::describe_gauge!("keyward_upstream_connections", "Open connections to Redis");
    ::metrics::describe_counter!(
        "keyward_upstream_errors_total",
        "Upstream failures: failed connects and broken connections (connect, io), and requests that timed out or found the connection busy (timeout, busy)"
    );
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
    ::metrics::describe_counter!(
        "keyward_http_requests_total",
        "REST API requests, by token name (empty without a valid token) and HTTP status"
    );
}

/// Per-command counters and latency histograms, created on first use of each command.
pub struct CommandMetrics {
    slots: Box<[OnceLock<(Counter, LatencyHistogram)>]>,
}

impl CommandMetrics {
    pub fn new(table: &CommandTable) -> CommandMetrics {
        CommandMetrics {
            slots: (0..table.len()).map(|_| OnceLock::new()).collect(),
        }
    }

    fn slot(&self, id: usize) -> &(Counter, LatencyHistogram) {
        let index = id.min(self.slots.len() - 1);
        self.slots[index].get_or_init(|| {
            let name = CommandTable::global().by_id(id).name.to_string();
            (
                counter!("keyward_commands_total", "command" => name),
                LatencyHistogram::default(),
            )
        })
    }

    pub fn received(&self, id: usize, count: u64) {
        self.slot(id).0.increment(count);
    }

    /// `count` commands of one kind, sent together and answered together.
    pub fn replied(&self, id: usize, elapsed: Duration, count: usize) {
        self.slot(id).1.record_many(elapsed, count as u64);
    }

    /// Appends the latency histogram of every command seen so far to a `/metrics` body.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP {COMMAND_DURATION} Time from receiving a forwarded command to its reply from Redis"
        );
        let _ = writeln!(out, "# TYPE {COMMAND_DURATION} histogram");
        for (id, slot) in self.slots.iter().enumerate() {
            // A command keyward answers itself (`SELECT`, `CLIENT SETNAME`, `KEYWARD`) is
            // counted but never timed: no empty histogram for it.
            if let Some((_, histogram)) = slot.get().filter(|(_, histogram)| histogram.count() > 0)
            {
                let name = &CommandTable::global().by_id(id).name;
                histogram.render(out, COMMAND_DURATION, &format!("command=\"{name}\""));
            }
        }
    }
}

/// Counts a run of identical commands (a pipeline of `GET`s) before recording it, so that
/// recording costs one atomic add per run instead of one per command.
#[derive(Default)]
pub struct ReceivedTally {
    run: Option<(usize, u64)>,
}

impl ReceivedTally {
    pub fn add(&mut self, metrics: &CommandMetrics, id: usize) {
        match &mut self.run {
            Some((run_id, count)) if *run_id == id => *count += 1,
            _ => {
                self.flush(metrics);
                self.run = Some((id, 1));
            }
        }
    }

    pub fn flush(&mut self, metrics: &CommandMetrics) {
        if let Some((id, count)) = self.run.take() {
            metrics.received(id, count);
        }
    }
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

pub fn upstream_connection_opened() {
    gauge!("keyward_upstream_connections").increment(1.0);
}

pub fn upstream_connection_closed() {
    gauge!("keyward_upstream_connections").decrement(1.0);
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
