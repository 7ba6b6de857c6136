//! A session's own connection: what it is opened for, and the connection between its
//! handshake and the task that serves it.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::cluster::{Follower, NodeCell};
use super::connection::{serve, Batch, ConnState, ReplySender, ServeEnd};
use super::errors::broken_error;
use super::handle::ConnStatus;
use super::handshake::{self, Handshaken};
use super::tracking::TrackingTarget;
use super::{Login, UpstreamError, UpstreamSettings};
use crate::metrics;
use crate::net::Stream;
use crate::resp::Protocol;

/// What a session's own connection is opened for.
pub struct OwnConnection<'a> {
    pub protocol: Protocol,
    pub db: u32,
    /// Commands that restore the session's state on it (`CLIENT SETNAME`, a deferred
    /// `MULTI`), run last in the handshake.
    pub setup: &'a [Vec<Vec<u8>>],
    /// The client's own login, used when Redis refuses keyward's credentials.
    pub login: Option<&'a Login>,
    /// In cluster mode, the request it is opened for: its first key picks the node.
    pub request: &'a [u8],
    /// In cluster mode, the connection is a subscriber's: it follows its subscriptions to
    /// another node when their node fails or their slot moves (see [`Follower`]).
    pub follows_subscriptions: bool,
}

impl<'a> OwnConnection<'a> {
    /// A connection to database 0 with no state to restore, for `request`.
    pub fn plain(protocol: Protocol, request: &'a [u8]) -> OwnConnection<'a> {
        OwnConnection {
            protocol,
            db: 0,
            setup: &[],
            login: None,
            request,
            follows_subscriptions: false,
        }
    }
}

/// A session's own connection, open but not yet served: see [`Upstream::dedicated`].
pub struct Opening {
    /// The connection's id in Redis, when `HELLO` told it.
    pub redis_id: Option<u64>,
    /// In cluster mode, the node the connection reaches (another, once a subscriber's
    /// connection has followed its subscriptions).
    pub node: Option<NodeCell>,
    /// A subscriber's connection in cluster mode, which follows its subscriptions.
    pub(super) follower: Option<Follower>,
    /// Sentinel mode: cancelled when the primary changes, which ends the connection (the
    /// session then closes its client, as a demoted Redis would).
    pub(super) leave: Option<CancellationToken>,
    pub(super) stream: Stream,
    pub(super) batches: mpsc::Receiver<Batch>,
    pub(super) owner: ReplySender,
    pub(super) address: String,
    pub(super) tracking: Arc<TrackingTarget>,
    pub(super) status: Arc<ConnStatus>,
}

impl Opening {
    /// Writes what the session has sent so far, now, then serves the connection in a task of
    /// its own until it breaks or the session lets go of it.
    pub fn start(self) {
        let Opening {
            redis_id: _,
            node: _,
            follower,
            leave,
            stream,
            mut batches,
            owner,
            address,
            tracking,
            status,
        } = self;
        if let Some(follower) = follower {
            tokio::spawn(follower.run(stream, batches, owner));
            return;
        }
        let state =
            ConnState::written_ahead(&stream, &mut batches, status).following_primary(leave);
        tokio::spawn(serve_own(stream, state, batches, owner, address, tracking));
    }
}

/// Serves a session's own connection until it breaks or the session lets go of it; frames
/// that answer no batch (pushes, pub/sub messages) go to `owner`.
pub(super) async fn serve_own(
    stream: Stream,
    state: ConnState,
    mut batches: mpsc::Receiver<Batch>,
    owner: ReplySender,
    address: String,
    tracking: Arc<TrackingTarget>,
) {
    metrics::upstream_connection_opened(&address);
    let end = serve(
        stream,
        state,
        &mut batches,
        Some(&owner),
        None,
        &tracking,
        |reason| broken_error(&address, reason),
    )
    .await;
    if let ServeEnd::Broken(reason) = end {
        metrics::upstream_errors(reason.metric_kind(), 1);
        tracing::debug!(%reason, "dedicated upstream connection closed");
    }
    metrics::upstream_connection_closed(&address);
}

/// Connects for one session's own use, running `setup` (the client's state) first. While a
/// script is busy, Redis refuses `CLIENT SETNAME`, which only labels the connection in Redis's
/// own `CLIENT LIST`: the connection is then opened again without the name, so that the
/// client's command meets Redis as it would have directly (`MULTI` is accepted then). What the
/// client's state needs (its database) is never left out: such a refusal stays one.
pub(super) async fn connect_own(
    settings: &UpstreamSettings,
    protocol: Protocol,
    db: u32,
    setup: &[Vec<Vec<u8>>],
) -> Result<Handshaken, UpstreamError> {
    let names = |command: &&Vec<Vec<u8>>| {
        matches!(&command[..], [client, setname, _]
            if client.eq_ignore_ascii_case(b"CLIENT") && setname.eq_ignore_ascii_case(b"SETNAME"))
    };
    match handshake::connect(settings, protocol, db, setup, false).await {
        Err(UpstreamError::Busy(refusal)) if setup.iter().any(|command| names(&command)) => {
            tracing::debug!(%refusal, "opening a client's own connection without its name");
            let unnamed: Vec<Vec<Vec<u8>>> = setup
                .iter()
                .filter(|command| !names(command))
                .cloned()
                .collect();
            handshake::connect(settings, protocol, db, &unnamed, false).await
        }
        other => other,
    }
}
