//! keyward's invalidation connection: the one that Redis tells, on every pooled connection's
//! behalf, which tracked keys changed.
//!
//! It subscribes to `__redis__:invalidate`, and pooled connections redirect their tracking to
//! its client id. What the news mean is the [`Listener`]'s business (the cache drops entries,
//! lock queues try again); this module only keeps the connection. While it is down nothing is
//! served from the cache, and when it drops the listener hears that everything changed:
//! invalidations sent meanwhile are lost. A Redis that cannot track keys (a user that may not
//! run `CLIENT TRACKING`) leaves `ttl` as the only bound on staleness, and keyward says so.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::types::OwnedFrame;
use tokio::io::AsyncWriteExt;

use rustc_hash::FxHashMap;
use tokio_util::sync::CancellationToken;

use crate::config::HostPort;
use crate::net::Stream;
use crate::resp::request::encode_command;
use crate::resp::Protocol;
use crate::upstream::cluster::Cluster;
use crate::upstream::subscribed::Subscribed;
use crate::upstream::{
    self, read_frame, Invalidations, TrackingTarget, Upstream, UpstreamSettings,
};

/// How often keyward looks whether cache rules are in force while none are.
const IDLE_POLL: Duration = Duration::from_millis(250);
/// The channel Redis publishes redirected invalidations on.
const CHANNEL: &[u8] = b"__redis__:invalidate";
/// The name the connection shows in `CLIENT LIST`.
pub const CLIENT_NAME: &str = "keyward-invalidations";

/// Who acts on Redis's news about changed keys.
pub trait Listener: Send + Sync {
    /// Whether anything needs the news now (rules that cache or queue are in force): the
    /// connection is open only then.
    fn wanted(&self) -> bool;
    /// These keys changed (written, deleted, expired, evicted).
    fn changed(&self, keys: &[Vec<u8>]);
    /// Anything may have changed: a flush, Redis's tracking table overflowed, or news were
    /// lost while the connection was down.
    fn everything_changed(&self);
    /// The news of one cluster node's keys may have been lost while its link was down; its
    /// tracking target's epoch has moved on.
    fn some_changed(&self);
}

/// What the news lost with a link concern.
#[derive(Clone, Copy)]
enum Scope {
    /// The one Redis's: every key.
    Everything,
    /// One cluster node's: the keys of its slots.
    Node,
}

/// Keeps the invalidation connection open while the listener wants its news: one, or in
/// cluster mode one per primary.
pub async fn run(
    upstream: Arc<Upstream>,
    shutdown: CancellationToken,
    listener: impl Listener + Clone + 'static,
) {
    match &upstream.cluster {
        None => {
            let target = Arc::clone(&upstream.tracking);
            let primary = move || upstream.primary_link();
            keep_link(primary, target, Scope::Everything, shutdown, listener).await;
        }
        Some(cluster) => follow_cluster(Arc::clone(cluster), shutdown, listener).await,
    }
}

/// Where a link goes: the settings for its node, and in sentinel mode the token cancelled
/// when the primary changes (the link then moves with it).
type Destination = Result<(UpstreamSettings, Option<CancellationToken>), String>;

/// Keeps one node's invalidation connection open while the listener wants its news; its
/// state goes to `target`.
async fn keep_link(
    destination: impl Fn() -> Destination,
    target: Arc<TrackingTarget>,
    scope: Scope,
    shutdown: CancellationToken,
    listener: impl Listener,
) {
    let mut backoff = Duration::ZERO;
    loop {
        while !listener.wanted() {
            tokio::select! {
                () = tokio::time::sleep(IDLE_POLL) => {}
                () = shutdown.cancelled() => return,
            }
        }
        let (ended, address) = match destination() {
            Ok((settings, leave)) => {
                let left = async {
                    match &leave {
                        Some(leave) => leave.cancelled().await,
                        None => std::future::pending().await,
                    }
                };
                let ended = tokio::select! {
                    ended = listen(&settings, &target, &listener) => ended,
                    () = left => "the primary changed".to_string(),
                    () = shutdown.cancelled() => return,
                };
                (ended, settings.address.to_string())
            }
            Err(reason) => (reason, "the primary".to_string()),
        };
        let was_up = target.state() != Invalidations::Down;
        target.set(Invalidations::Down);
        let flushed = match scope {
            Scope::Everything => {
                listener.everything_changed();
                "cache"
            }
            Scope::Node => {
                listener.some_changed();
                "this node's cached keys"
            }
        };
        if was_up {
            backoff = Duration::ZERO;
            tracing::warn!(%address, reason = %ended, "cache invalidation connection lost: {flushed} flushed and bypassed until it is back");
        } else {
            tracing::debug!(%address, reason = %ended, "cache invalidation connection unavailable");
        }
        crate::metrics::cache_invalidation_connection_lost();
        backoff = upstream::next_backoff(backoff);
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Cluster mode: a link to every primary of the slot map, each telling its own target, which
/// the cache follows for the keys of that primary's slots.
async fn follow_cluster(
    cluster: Arc<Cluster>,
    shutdown: CancellationToken,
    listener: impl Listener + Clone + 'static,
) {
    let mut links: FxHashMap<HostPort, CancellationToken> = FxHashMap::default();
    loop {
        if let Some(map) = cluster.map() {
            let primaries: Vec<&HostPort> = map.shards.iter().map(|shard| &shard.primary).collect();
            links.retain(|node, link| {
                let kept = primaries.contains(&node);
                if !kept {
                    link.cancel();
                    cluster.node_tracking(node).set(Invalidations::Down);
                }
                kept
            });
            for &primary in &primaries {
                if links.contains_key(primary) {
                    continue;
                }
                let link = shutdown.child_token();
                links.insert(primary.clone(), link.clone());
                let settings = cluster.node_settings(primary);
                let target = cluster.node_tracking(primary);
                tokio::spawn(keep_link(
                    move || Ok((settings.clone(), None)),
                    target,
                    Scope::Node,
                    link,
                    listener.clone(),
                ));
            }
        }
        tokio::select! {
            () = tokio::time::sleep(IDLE_POLL) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Opens the connection, subscribes, and passes invalidations on until it fails.
async fn listen(
    settings: &UpstreamSettings,
    target: &TrackingTarget,
    listener: &impl Listener,
) -> String {
    let setup = tokio::time::timeout(settings.connect_timeout, subscribe(settings)).await;
    let (stream, input, id, tracking) = match setup {
        Ok(Ok(subscribed)) => subscribed,
        Ok(Err(error)) => return error,
        Err(_) => return format!("no subscription within {:?}", settings.connect_timeout),
    };
    target.set(tracking);
    let address = &settings.address;
    tracing::info!(%address, client_id = id, "cache invalidation connection up");
    let mut subscribed = Subscribed::new(stream, input);
    loop {
        let frame = match subscribed.next().await {
            Ok(frame) => frame,
            Err(error) => return error,
        };
        match invalidated_keys(frame) {
            Some(Invalidated::Keys(keys)) => listener.changed(&keys),
            Some(Invalidated::Everything) => listener.everything_changed(),
            None => {}
        }
    }
}

/// Opens the connection, learns its client id and whether Redis can track keys, and
/// subscribes to the invalidation channel.
async fn subscribe(
    settings: &UpstreamSettings,
) -> Result<(Stream, BytesMut, i64, Invalidations), String> {
    let setup = [vec![
        b"CLIENT".to_vec(),
        b"SETNAME".to_vec(),
        CLIENT_NAME.as_bytes().to_vec(),
    ]];
    let connected = upstream::connect(settings, Protocol::Resp2, 0, &setup, false)
        .await
        .map_err(|error| error.to_string())?;
    let id = connected
        .client_id
        .and_then(|id| i64::try_from(id).ok())
        .ok_or("HELLO did not tell the connection's client id")?;
    let mut stream = connected.stream;
    let mut input = BytesMut::with_capacity(4096);
    let refusal = tracking_refusal(&mut stream, &mut input).await?;
    let mut out = BytesMut::new();
    encode_command(&[&b"SUBSCRIBE"[..], CHANNEL], &mut out);
    stream
        .write_all(&out)
        .await
        .map_err(|error| error.to_string())?;
    let tracking = match refusal {
        Some(message) => {
            tracing::warn!(%message, "{UNSUPPORTED}");
            Invalidations::Unsupported
        }
        None => Invalidations::RedirectTo(id),
    };
    match read_frame(&mut stream, &mut input, decode).await? {
        OwnedFrame::Array(_) => Ok((stream, input, id, tracking)),
        other => Err(format!("unexpected reply to SUBSCRIBE: {other:?}")),
    }
}

/// What keyward says when Redis cannot track keys.
pub const UNSUPPORTED: &str = "Redis cannot track keys (CLIENT TRACKING needs Redis 6 or later, and a user that may run it): cached entries are bounded only by their rule's ttl";

/// Asks Redis whether it can track keys, without turning anything on: `CLIENT TRACKING OFF`
/// is harmless where it exists. `Ok(Some(reason))` when Redis refuses.
async fn tracking_refusal(
    stream: &mut Stream,
    input: &mut BytesMut,
) -> Result<Option<String>, String> {
    let mut out = BytesMut::new();
    encode_command(&[&b"CLIENT"[..], b"TRACKING", b"OFF"], &mut out);
    stream
        .write_all(&out)
        .await
        .map_err(|error| error.to_string())?;
    match read_frame(stream, input, decode).await? {
        OwnedFrame::Error(message) => Ok(Some(message)),
        _ => Ok(None),
    }
}

/// For `keyward check`: whether the upstream in `settings` can track keys (`Ok(None)`), or
/// why not.
pub async fn probe(settings: &UpstreamSettings) -> Result<Option<String>, String> {
    let ask = async {
        let connected = upstream::connect(settings, Protocol::Resp2, 0, &[], false)
            .await
            .map_err(|error| error.to_string())?;
        let mut stream = connected.stream;
        tracking_refusal(&mut stream, &mut BytesMut::new()).await
    };
    tokio::time::timeout(settings.connect_timeout, ask)
        .await
        .map_err(|_| format!("no answer within {:?}", settings.connect_timeout))?
}

enum Invalidated {
    Keys(Vec<Vec<u8>>),
    /// `FLUSHALL`/`FLUSHDB`, or Redis's tracking table overflowed.
    Everything,
}

/// Reads a `message` on the invalidation channel: its keys, or a nil for "everything".
fn invalidated_keys(frame: OwnedFrame) -> Option<Invalidated> {
    let OwnedFrame::Array(mut parts) = frame else {
        return None;
    };
    if parts.len() != 3 {
        return None;
    }
    let payload = parts.pop()?;
    match (&parts[0], &parts[1]) {
        (OwnedFrame::BulkString(kind), OwnedFrame::BulkString(channel))
            if kind.eq_ignore_ascii_case(b"message") && channel == CHANNEL => {}
        _ => return None,
    }
    match payload {
        OwnedFrame::Null => Some(Invalidated::Everything),
        OwnedFrame::Array(keys) => Some(Invalidated::Keys(
            keys.into_iter()
                .filter_map(|key| match key {
                    OwnedFrame::BulkString(key) => Some(key),
                    _ => None,
                })
                .collect(),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> OwnedFrame {
        OwnedFrame::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn reads_keys_and_flushes() {
        let message = OwnedFrame::Array(vec![
            bulk("message"),
            bulk("__redis__:invalidate"),
            OwnedFrame::Array(vec![bulk("a"), bulk("b")]),
        ]);
        assert!(matches!(
            invalidated_keys(message),
            Some(Invalidated::Keys(keys)) if keys == vec![b"a".to_vec(), b"b".to_vec()]
        ));
        let flush = OwnedFrame::Array(vec![
            bulk("message"),
            bulk("__redis__:invalidate"),
            OwnedFrame::Null,
        ]);
        assert!(matches!(
            invalidated_keys(flush),
            Some(Invalidated::Everything)
        ));
        let other = OwnedFrame::Array(vec![bulk("message"), bulk("news"), bulk("x")]);
        assert!(invalidated_keys(other).is_none());
    }
}
