//! A pooled connection to one Redis (or one cluster node): kept open for as long as keyward
//! runs, reconnecting with backoff, and failing at once what is sent while it is down.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::connection::{serve, Batch, ConnState, Reply, ServeEnd, StallCheck};
use super::errors::{broken_error, UpstreamError};
use super::handle::ConnStatus;
use super::pause::Paused;
use super::tracking::TrackingTarget;
use super::{handshake, holds, Upstream, UpstreamSettings};
use crate::metrics;
use crate::resp::{reply, Protocol};

/// Keeps one pooled connection open for as long as keyward runs: to `node` (a cluster node,
/// a replica), or with `None` to the Redis keyward forwards to, which in sentinel mode is the
/// primary the sentinels name (the connection moves when they name another).
pub(super) async fn run_pooled(
    upstream: Arc<Upstream>,
    node: Option<UpstreamSettings>,
    tracking: Arc<TrackingTarget>,
    protocol: Protocol,
    db: u32,
    mut batches: mpsc::Receiver<Batch>,
    status: Arc<ConnStatus>,
) {
    let mut backoff = Duration::ZERO;
    let mut address = upstream.address().to_string();
    loop {
        // In sentinel mode, a wait between attempts ends when the primary changes.
        let primary_changed = match (&node, &upstream.sentinel) {
            (None, Some(sentinel)) => Some(sentinel.leave_token()),
            _ => None,
        };
        let destination = match &node {
            Some(node) => Ok((node.clone(), None)),
            None => upstream.primary_link(),
        };
        let connected = match destination {
            Ok((settings, leave)) => {
                address = settings.address.to_string();
                handshake::connect(&settings, protocol, db, &[], !settings.reads_replica)
                    .await
                    .map(|connected| (connected, settings, leave))
            }
            Err(reason) => Err(UpstreamError::NoPrimary(reason)),
        };
        match connected {
            Ok((connected, settings, leave)) => {
                if let Some(facts) = connected.facts {
                    *upstream.facts.write() = Arc::new(facts);
                }
                status.set_up();
                backoff = Duration::ZERO;
                metrics::upstream_connection_opened(&address);
                tracing::debug!(%address, ?protocol, db, "upstream connection open");
                let redis_id = connected.client_id;
                let asker = Arc::clone(&upstream);
                let node = settings.clone();
                let stall = StallCheck {
                    timeout: settings.request_timeout,
                    probe: Box::new(move || {
                        // Redis holds the question too during a full pause keyward passed on.
                        let paused = asker.pause.in_force() == Some(Paused::Everything);
                        let settings = node.clone();
                        Box::pin(
                            async move { paused || holds::on_purpose(settings, redis_id).await },
                        )
                    }),
                };
                let end = serve(
                    connected.stream,
                    ConnState::reporting_to(Arc::clone(&status)).following_primary(leave),
                    &mut batches,
                    None,
                    Some(&stall),
                    &tracking,
                    |reason| broken_error(&address, reason),
                )
                .await;
                metrics::upstream_connection_closed(&address);
                let ServeEnd::Broken(reason) = end else {
                    return;
                };
                metrics::upstream_errors(reason.metric_kind(), 1);
                tracing::warn!(%address, %reason, "upstream connection lost; reconnecting");
                status.set_down(reason.to_string());
                if let Some(sentinel) = &upstream.sentinel {
                    sentinel.check_soon();
                }
            }
            Err(error) => {
                if let Some(sentinel) = &upstream.sentinel {
                    sentinel.check_soon();
                }
                metrics::upstream_errors("connect", 1);
                if status.last_error().is_none() || status.is_up() {
                    tracing::warn!(%address, %error, "cannot connect to Redis; retrying");
                }
                status.set_down(error.to_string());
            }
        }
        backoff = handshake::next_backoff(backoff);
        let waiting = Waiting {
            status: &status,
            address: &address,
            backoff,
            primary_changed: primary_changed.as_ref(),
        };
        if !fail_until_retry(&mut batches, waiting).await {
            return;
        }
    }
}

/// A wait before the next attempt to connect.
struct Waiting<'a> {
    status: &'a ConnStatus,
    address: &'a str,
    backoff: Duration,
    /// Sentinel mode: cancelled when the primary changes, which ends the wait.
    primary_changed: Option<&'a CancellationToken>,
}

/// Answers every batch that arrives during the backoff with an error, so nobody waits for a
/// connection that is down. `false` once every handle is gone.
async fn fail_until_retry(batches: &mut mpsc::Receiver<Batch>, waiting: Waiting<'_>) -> bool {
    let Waiting {
        status,
        address,
        backoff,
        primary_changed,
    } = waiting;
    let retry = tokio::time::sleep(backoff);
    tokio::pin!(retry);
    let changed = async {
        match primary_changed {
            Some(token) => token.cancelled().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(changed);
    loop {
        tokio::select! {
            () = &mut retry => return true,
            () = &mut changed => return true,
            batch = batches.recv() => {
                let Some(batch) = batch else { return false };
                let reason = status.last_error().unwrap_or_else(|| "not connected".into());
                let error = reply::error(&format!("ERR upstream {address} unavailable: {reason}"));
                let mut reply_to = batch.reply_to;
                reply_to.send(Reply::Failed { count: batch.count, error });
            }
        }
    }
}
