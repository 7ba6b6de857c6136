//! A subscriber's connection in cluster mode, which follows its subscriptions when the cluster
//! changes under them.
//!
//! A subscriber's own connection reaches one node: its first shard channel's slot owner
//! (`SSUBSCRIBE`), or the map's first primary (`SUBSCRIBE`, `PSUBSCRIBE`). When that node fails,
//! or the slot of its shard channels moves away (Redis then tells the client `sunsubscribe`,
//! unasked), a cluster client would subscribe again on the node serving them now. keyward
//! does it for the client: it opens a connection to that node and subscribes there to
//! everything the client was subscribed to, and the client sees neither the unasked
//! `sunsubscribe` nor the confirmations of subscribing again. Messages published in between
//! are lost, as they are for a Redis client whose connection drops.
//!
//! One connection reaches one node, so only a slot that takes every shard channel of the
//! connection along is followed; when a slot moves and leaves other shard channels behind,
//! the client hears Redis's `sunsubscribe` for those that left.
//!
//! A node that refuses to subscribe again (a script keeps it busy, it is still loading, or the
//! map was stale and it answers `MOVED`) is left, and the subscriptions are followed again:
//! the client never sees the refusal of a command it did not send.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use super::super::connection::{Batch, ConnState, Reply, ReplySender};
use super::super::handle::ConnHandle;
use super::super::handshake;
use super::super::own::serve_own;
use super::{key_slot, Cluster};
use crate::config::HostPort;
use crate::inbox;
use crate::net::Stream;
use crate::resp::frame::{self, frames};
use crate::resp::reply;
use crate::resp::request::{encode_command, Decoded, RequestDecoder};
use crate::resp::Protocol;

/// Where a session's own connection is now: it changes when a subscriber's connection
/// follows its subscriptions to another node.
pub type NodeCell = Arc<ArcSwap<HostPort>>;

/// How long keyward tries to subscribe again (a failover takes the cluster's node timeout and
/// an election) before it gives up and closes the client.
const RECOVERY_WINDOW: Duration = Duration::from_secs(30);
/// The pause between attempts, while the map does not name a node that answers.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// What a subscriber's connection needs to open another like it.
pub struct Follower {
    pub(in crate::upstream) cluster: Arc<Cluster>,
    pub(in crate::upstream) protocol: Protocol,
    pub(in crate::upstream) db: u32,
    /// The session's state (`CLIENT SETNAME`…), restored on every connection.
    pub(in crate::upstream) setup: Vec<Vec<Vec<u8>>>,
    pub(in crate::upstream) node: NodeCell,
}

/// One node connection of the follower, and where its replies arrive.
struct NodeLink {
    handle: ConnHandle,
    replies: inbox::Receiver<Reply>,
    relay: ReplySender,
}

/// What a frame from the node means for the client.
#[derive(Debug, PartialEq)]
enum Heard {
    Pass,
    /// A confirmation of subscribing again: the client is subscribed already.
    Swallow,
    /// Redis unsubscribed the client from a shard channel unasked: its slot left the node.
    Left,
    /// Redis refused to subscribe again.
    Refused,
}

impl Follower {
    /// Relays between the session and the node, following the subscriptions, until the
    /// session lets go (or the subscriptions cannot be followed: the client is then closed).
    pub(in crate::upstream) async fn run(
        self,
        stream: Stream,
        mut batches: mpsc::Receiver<Batch>,
        session: ReplySender,
    ) {
        let mut node = self.serve(stream);
        let mut subscriptions = Subscriptions::default();
        // When following must be done by, while the subscriptions are not all confirmed again.
        let mut recovery: Option<Instant> = None;
        loop {
            tokio::select! {
                // The client's commands wait while confirmations of subscribing again are due:
                // a node that refuses to subscribe again is left with whatever was sent after.
                batch = batches.recv(), if subscriptions.swallow == 0 => {
                    let Some(mut batch) = batch else { return };
                    subscriptions.note_requests(&batch.bytes);
                    batch.reply_to = node.relay.clone().into();
                    // A connection that is gone says so among its replies.
                    let _ = node.handle.send(batch);
                }
                reply = node.replies.recv() => {
                    if let Some(away_from) = subscriptions.relay(reply, &session, &self.node) {
                        let deadline =
                            *recovery.get_or_insert_with(|| Instant::now() + RECOVERY_WINDOW);
                        let Some(next) = self.follow(&mut subscriptions, away_from, deadline).await
                        else {
                            let address = self.node.load_full();
                            let refusal = subscriptions
                                .refusal
                                .as_deref()
                                .map(|refusal| format!(" (last refused: {refusal})"))
                                .unwrap_or_default();
                            let error = reply::error(&format!(
                                "ERR upstream {address}: subscriptions lost, no node took them within {RECOVERY_WINDOW:?}{refusal}"
                            ));
                            let _ = session.send(Reply::Closed { error });
                            return;
                        };
                        node = next;
                    }
                    // Every subscription is confirmed again (or there was none to subscribe to
                    // again): the next trouble has a window of its own.
                    if subscriptions.swallow == 0 {
                        recovery = None;
                    }
                }
            }
        }
    }

    /// Serves a connection to the node in `self.node`.
    fn serve(&self, stream: Stream) -> NodeLink {
        let (handle, batches) = ConnHandle::channel();
        handle.status.set_up();
        let (relay, replies) = inbox::channel();
        let owner = relay.clone();
        let address = self.node.load_full();
        let tracking = self.cluster.node_tracking(&address);
        let state = ConnState::reporting_to(Arc::clone(&handle.status));
        tokio::spawn(serve_own(
            stream,
            state,
            batches,
            owner,
            address.to_string(),
            tracking,
        ));
        NodeLink {
            handle,
            replies,
            relay,
        }
    }

    /// Opens a connection to the node serving the subscriptions now (another than
    /// `away_from`, when their slot left it), and subscribes there to all of them again, by
    /// `deadline`.
    async fn follow(
        &self,
        subscriptions: &mut Subscriptions,
        away_from: Option<Arc<HostPort>>,
        deadline: Instant,
    ) -> Option<NodeLink> {
        while Instant::now() < deadline {
            self.cluster.refresh_soon();
            tokio::time::sleep(RETRY_PAUSE).await;
            let Some(target) = self.target(subscriptions) else {
                continue;
            };
            if away_from.as_deref() == Some(&target) {
                continue;
            }
            let settings = self.cluster.node_settings(&target);
            let connected =
                handshake::connect(&settings, self.protocol, self.db, &self.setup, false).await;
            let Ok(connected) = connected else {
                continue;
            };
            tracing::info!(node = %target, "subscriber's connection follows its subscriptions");
            self.node.store(Arc::new(target));
            let link = self.serve(connected.stream);
            let (bytes, count) = subscriptions.again();
            subscriptions.swallow = count as usize;
            let batch = Batch {
                bytes,
                count: 0,
                reply_to: link.relay.clone().into(),
                tracked: false,
                measured: None,
                hold: None,
                lane: None,
            };
            if count == 0 || link.handle.send(batch).is_ok() {
                return Some(link);
            }
        }
        None
    }

    /// The node the subscriptions belong on now: the one serving their shard channels' slot,
    /// or the one the map's subscribers use.
    fn target(&self, subscriptions: &Subscriptions) -> Option<HostPort> {
        let map = self.cluster.map()?;
        let node = match subscriptions.shard.first() {
            Some(channel) => map
                .owner(key_slot(channel))
                .map(|owner| &map.shards[owner].primary),
            None => map.pubsub_node(),
        };
        node.cloned()
    }
}

/// What the client is subscribed to on the connection, as Redis confirmed it.
#[derive(Default)]
struct Subscriptions {
    shard: Vec<Bytes>,
    channels: Vec<Bytes>,
    patterns: Vec<Bytes>,
    /// Shard channels the client asked to leave, until Redis confirms.
    leaving: Vec<Bytes>,
    /// `SUNSUBSCRIBE`s without channels sent, until Redis confirms the last channel of each.
    leaving_all: u32,
    /// Confirmations still to come of subscribing again, which the client must not see.
    swallow: usize,
    /// The last error a node answered to subscribing again, for the client if none takes them.
    refusal: Option<String>,
}

impl Subscriptions {
    /// Notes the shard channels the client asks to leave in `requests`.
    fn note_requests(&mut self, requests: &[u8]) {
        let mut decoder = RequestDecoder::default();
        let mut at = 0;
        loop {
            let consumed = match decoder.decode(&requests[at..]) {
                Ok(Decoded::Request { consumed, .. }) => consumed,
                Ok(Decoded::Empty { consumed }) => {
                    at += consumed;
                    continue;
                }
                _ => return,
            };
            let request = &requests[at..at + consumed];
            let args = decoder.args(request);
            if args
                .get(0)
                .is_some_and(|name| name.eq_ignore_ascii_case(b"SUNSUBSCRIBE"))
            {
                match args.len() {
                    1 => self.leaving_all += 1,
                    count => {
                        let channels = (1..count).filter_map(|index| args.get(index));
                        self.leaving.extend(channels.map(Bytes::copy_from_slice));
                    }
                }
            }
            at += consumed;
        }
    }

    /// Passes what the node sent on to the session, but for what the client must not see.
    /// `Some` when the subscriptions must follow to another node: away from the one in `node`
    /// (`Some(node)`: their slot left it) or wherever the map says (`None`: it failed).
    fn relay(
        &mut self,
        reply: Option<Reply>,
        session: &ReplySender,
        node: &NodeCell,
    ) -> Option<Option<Arc<HostPort>>> {
        let bytes = match reply {
            Some(
                Reply::Frames { bytes, .. } | Reply::Push(bytes) | Reply::Fetched { bytes, .. },
            ) => bytes,
            Some(Reply::Failed { .. } | Reply::Closed { .. } | Reply::Stop) | None => {
                return Some(None)
            }
            // Batches to nodes write through no client's lane.
            Some(Reply::LaneWritten) => return None,
        };
        let mut passed = BytesMut::new();
        let mut away = None;
        for frame in frames(&bytes) {
            match self.hear(&bytes.slice_ref(frame)) {
                Heard::Pass => passed.extend_from_slice(frame),
                Heard::Swallow => {}
                Heard::Left => away = Some(Some(node.load_full())),
                // What the node sends after is of a connection being left.
                Heard::Refused => {
                    away = Some(None);
                    break;
                }
            }
        }
        if !passed.is_empty() {
            let _ = session.send(Reply::Push(passed.freeze()));
        }
        away
    }

    /// Follows one frame from the node.
    fn hear(&mut self, frame: &Bytes) -> Heard {
        // Replies come in order, and subscribing again was sent before anything of the
        // client's on the connection: an error while confirmations are due is the node's
        // refusal of it.
        if self.swallow > 0 && frame.first() == Some(&b'-') {
            self.swallow = 0;
            self.refusal = Some(String::from_utf8_lossy(&frame[1..]).trim_end().to_string());
            return Heard::Refused;
        }
        let Some((kind, channel, remaining)) = subscription_news(frame) else {
            return Heard::Pass;
        };
        let (shard, list) = match kind.kind {
            Of::Channels => (false, &mut self.channels),
            Of::Patterns => (false, &mut self.patterns),
            Of::Shard => (true, &mut self.shard),
        };
        if kind.subscribing {
            if self.swallow > 0 {
                self.swallow -= 1;
                return Heard::Swallow;
            }
            if let Some(channel) = channel.filter(|channel| !list.contains(channel)) {
                list.push(channel);
            }
            return Heard::Pass;
        }
        let Some(channel) = channel else {
            // An unsubscribe from everything while subscribed to nothing.
            if shard {
                self.leaving_all = self.leaving_all.saturating_sub(1);
            }
            return Heard::Pass;
        };
        list.retain(|known| *known != channel);
        if !shard {
            return Heard::Pass;
        }
        if let Some(at) = self.leaving.iter().position(|known| *known == channel) {
            self.leaving.swap_remove(at);
            return Heard::Pass;
        }
        if self.leaving_all > 0 {
            if remaining == 0 {
                self.leaving_all -= 1;
            }
            return Heard::Pass;
        }
        let slot = key_slot(&channel);
        if self.shard.iter().all(|other| key_slot(other) == slot) {
            self.shard.push(channel);
            return Heard::Left;
        }
        Heard::Pass
    }

    /// The commands that subscribe a new connection to everything again, one confirmation
    /// each, and their count. Shard channels last: once a shard channel's publisher finds it
    /// subscribed, so is everything else.
    fn again(&self) -> (Bytes, u32) {
        let mut out = BytesMut::new();
        let lists: [(&[u8], &Vec<Bytes>); 3] = [
            (b"SUBSCRIBE", &self.channels),
            (b"PSUBSCRIBE", &self.patterns),
            (b"SSUBSCRIBE", &self.shard),
        ];
        let mut count = 0;
        for (command, list) in lists {
            for channel in list {
                encode_command(&[command, &channel[..]], &mut out);
                count += 1;
            }
        }
        (out.freeze(), count)
    }
}

/// Which subscriptions a confirmation is about.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Of {
    Channels,
    Patterns,
    Shard,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct NewsKind {
    kind: Of,
    subscribing: bool,
}

/// Reads a (un)subscription confirmation: `[kind, channel or nil, subscriptions left]`, as
/// an array (RESP2) or a push (RESP3).
fn subscription_news(frame: &Bytes) -> Option<(NewsKind, Option<Bytes>, i64)> {
    let body = match frame.first()? {
        b'*' | b'>' => frame.get(1..)?.strip_prefix(b"3\r\n")?,
        _ => return None,
    };
    let mut elements = frames(body);
    let kind = frame.slice_ref(elements.next()?);
    let channel = frame.slice_ref(elements.next()?);
    let remaining = frame::integer(elements.next()?)?;
    let kind = frame::bulk(&kind)?.to_ascii_lowercase();
    let (kind, subscribing) = match &kind[..] {
        b"subscribe" => (Of::Channels, true),
        b"unsubscribe" => (Of::Channels, false),
        b"psubscribe" => (Of::Patterns, true),
        b"punsubscribe" => (Of::Patterns, false),
        b"ssubscribe" => (Of::Shard, true),
        b"sunsubscribe" => (Of::Shard, false),
        _ => return None,
    };
    Some((
        NewsKind { kind, subscribing },
        frame::bulk(&channel),
        remaining,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn news(kind: &str, channel: &str, remaining: i64) -> Bytes {
        Bytes::from(format!(
            "*3\r\n${}\r\n{kind}\r\n${}\r\n{channel}\r\n:{remaining}\r\n",
            kind.len(),
            channel.len()
        ))
    }

    #[test]
    fn an_unasked_shard_unsubscribe_is_a_slot_that_left() {
        let mut subscriptions = Subscriptions::default();
        assert_eq!(
            subscriptions.hear(&news("ssubscribe", "{a}x", 1)),
            Heard::Pass
        );
        assert_eq!(
            subscriptions.hear(&news("ssubscribe", "{a}y", 2)),
            Heard::Pass
        );
        assert_eq!(
            subscriptions.hear(&news("sunsubscribe", "{a}x", 1)),
            Heard::Left
        );
        assert_eq!(subscriptions.shard.len(), 2, "still to subscribe again");
        let (again, count) = subscriptions.again();
        assert_eq!(count, 2);
        assert!(again.starts_with(b"*2\r\n$10\r\nSSUBSCRIBE\r\n"));
    }

    #[test]
    fn asked_unsubscribes_pass() {
        let mut subscriptions = Subscriptions::default();
        subscriptions.hear(&news("ssubscribe", "{a}x", 1));
        subscriptions.hear(&news("ssubscribe", "{b}y", 2));
        subscriptions.note_requests(b"*2\r\n$12\r\nSUNSUBSCRIBE\r\n$4\r\n{a}x\r\n");
        assert_eq!(
            subscriptions.hear(&news("sunsubscribe", "{a}x", 1)),
            Heard::Pass
        );
        subscriptions.note_requests(b"*1\r\n$12\r\nSUNSUBSCRIBE\r\n");
        assert_eq!(
            subscriptions.hear(&news("sunsubscribe", "{b}y", 0)),
            Heard::Pass
        );
        assert!(subscriptions.shard.is_empty());
        assert_eq!(subscriptions.leaving_all, 0);
    }

    #[test]
    fn a_slot_leaving_other_shard_channels_behind_is_passed_on() {
        let mut subscriptions = Subscriptions::default();
        subscriptions.hear(&news("ssubscribe", "{a}x", 1));
        subscriptions.hear(&news("ssubscribe", "{b}y", 2));
        assert_eq!(
            subscriptions.hear(&news("sunsubscribe", "{a}x", 1)),
            Heard::Pass
        );
        assert_eq!(subscriptions.shard, [Bytes::from_static(b"{b}y")]);
    }

    #[test]
    fn confirmations_of_subscribing_again_are_swallowed() {
        let mut subscriptions = Subscriptions {
            swallow: 1,
            ..Subscriptions::default()
        };
        let resp3 = Bytes::from_static(b">3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n");
        assert_eq!(subscriptions.hear(&resp3), Heard::Swallow);
        assert_eq!(subscriptions.hear(&resp3), Heard::Pass);
        let message = news("message", "news", 1);
        assert_eq!(subscriptions.hear(&message), Heard::Pass);
    }

    #[test]
    fn an_error_while_subscribing_again_is_a_refusal_the_client_never_sees() {
        let mut subscriptions = Subscriptions {
            swallow: 2,
            ..Subscriptions::default()
        };
        subscriptions.hear(&news("ssubscribe", "{a}x", 1));
        let busy = Bytes::from_static(b"-BUSY Redis is busy running a script.\r\n");
        assert_eq!(subscriptions.hear(&busy), Heard::Refused);
        assert_eq!(subscriptions.swallow, 0);
        assert_eq!(
            subscriptions.refusal.as_deref(),
            Some("BUSY Redis is busy running a script.")
        );
        // Once every confirmation came, an error answers one of the client's own commands.
        let own = Bytes::from_static(b"-ERR only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE\r\n");
        assert_eq!(subscriptions.hear(&own), Heard::Pass);
    }
}
