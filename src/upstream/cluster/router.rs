//! A router: what a pooled connection is in cluster mode. Sessions hand it batches as they
//! would to a connection to one Redis; it sends each command to the primary serving its slot,
//! on a connection of its own to each node, and hands the replies back in request order.
//!
//! A node that answers `MOVED` gets the command sent again to the node it names (and the map
//! is corrected); `ASK` sends `ASKING` and the command to the importing node; `TRYAGAIN`
//! (keys of a multi-key command split by a migration) retries with backoff within
//! `request_timeout`. Clients never see a redirection, unless it repeats past [`MAX_HOPS`].
//!
//! Replies to one session's batches are handed back in the order of its batches, whichever
//! node answered first; different sessions' replies do not wait for each other.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rustc_hash::FxHashMap;
use smallvec::SmallVec;
use tokio::sync::mpsc;

use super::super::connection::{Batch, Reply, ReplySender};
use super::super::handle::{ConnHandle, ConnStatus};
use super::super::Upstream;
use super::delivery::Deliveries;
use super::merge::{self, Merge};
use super::parts::{parts, Part};
use super::plan::{self, Plan};
use super::redirect::Redirect;
use super::{Cluster, SlotMap};
use crate::command::CommandTable;
use crate::config::HostPort;
use crate::inbox;
use crate::metrics;
use crate::resp::frame::frames;
use crate::resp::reply;
use crate::resp::request::{Decoded, RequestDecoder};
use crate::resp::Protocol;

/// Redirections one command follows before its client gets the last one as its reply.
const MAX_HOPS: u8 = 5;
/// The first wait before a command answered `TRYAGAIN` is sent again; doubled each time.
const FIRST_RETRY: Duration = Duration::from_millis(10);
const LONGEST_RETRY: Duration = Duration::from_millis(200);

/// Serves one pooled connection's sessions until every handle to it is dropped.
pub(in crate::upstream) async fn run(
    upstream: Arc<Upstream>,
    cluster: Arc<Cluster>,
    protocol: Protocol,
    spread: usize,
    mut batches: mpsc::Receiver<Batch>,
    status: Arc<ConnStatus>,
) {
    let (retry_to, mut retries) = mpsc::unbounded_channel();
    let mut router = Router {
        upstream,
        cluster,
        protocol,
        spread,
        status,
        decoder: RequestDecoder::default(),
        keys: Vec::new(),
        links: Vec::new(),
        links_follow: None,
        deliveries: Deliveries::default(),
        commands: FxHashMap::default(),
        next_command: 0,
        retry_to,
    };
    loop {
        tokio::select! {
            batch = batches.recv() => match batch {
                Some(batch) => router.take(batch).await,
                None => return,
            },
            (link, reply) = router.next_reply() => router.on_reply(link, reply).await,
            Some((command, part)) = retries.recv() => router.retry(command, part).await,
        }
    }
}

struct Router {
    upstream: Arc<Upstream>,
    cluster: Arc<Cluster>,
    protocol: Protocol,
    /// Keyless commands go to the primary at this index (modulo their number), so that
    /// routers spread them over the cluster.
    spread: usize,
    status: Arc<ConnStatus>,
    decoder: RequestDecoder,
    keys: Vec<usize>,
    links: Vec<NodeLink>,
    /// The map `links` were last checked against.
    links_follow: Option<Arc<SlotMap>>,
    deliveries: Deliveries,
    /// Client commands in flight, by id.
    commands: FxHashMap<u64, Command>,
    next_command: u64,
    /// Where a command answered `TRYAGAIN` comes back after its wait.
    retry_to: mpsc::UnboundedSender<(u64, usize)>,
}

/// This router's connection to one node.
struct NodeLink {
    address: HostPort,
    conn: ConnHandle,
    sender: ReplySender,
    replies: inbox::Receiver<Reply>,
    /// What each reply the node owes is for, in order.
    owed: VecDeque<Owed>,
}

enum Owed {
    Part {
        command: u64,
        part: usize,
    },
    /// The `+OK` to an `ASKING` sent before a command.
    Asking,
}

/// One client command: one part, or one per slot or primary.
struct Command {
    batch: u64,
    index: usize,
    merge: Merge,
    /// Most commands are one part: kept inline.
    parts: SmallVec<[Part; 1]>,
    left: usize,
    /// A cache fill, whose reads Redis must track (see `tracking`).
    tracked: bool,
    started: Instant,
}

/// Commands of one batch bound for one node: slices of the batch, joined when sent.
struct Outgoing {
    link: usize,
    commands: Vec<Bytes>,
    owed: Vec<Owed>,
}

impl Outgoing {
    fn joined(mut self) -> (usize, Bytes, Vec<Owed>) {
        let bytes = match self.commands.len() {
            1 => self.commands.pop().expect("one command"),
            _ => {
                let len = self.commands.iter().map(Bytes::len).sum();
                let mut joined = BytesMut::with_capacity(len);
                self.commands
                    .iter()
                    .for_each(|command| joined.extend_from_slice(command));
                joined.freeze()
            }
        };
        (self.link, bytes, self.owed)
    }
}

impl Router {
    /// Takes a session's batch: each command planned, its parts queued for their nodes, and
    /// every node's share sent as one batch.
    async fn take(&mut self, batch: Batch) {
        let Some(map) = self.cluster.map() else {
            let reason = self
                .cluster
                .last_error()
                .unwrap_or_else(|| "not read yet".into());
            self.status.set_down(reason.clone());
            let error = reply::error(&format!(
                "CLUSTERDOWN keyward does not know the cluster's slot map: {reason}"
            ));
            let mut reply_to = batch.reply_to;
            reply_to.send(Reply::Failed {
                count: batch.count,
                error,
            });
            return;
        };
        self.status.set_up();
        if !self
            .links_follow
            .as_ref()
            .is_some_and(|seen| Arc::ptr_eq(seen, &map))
        {
            self.forget_departed_nodes(&map);
            self.links_follow = Some(Arc::clone(&map));
        }
        let count = batch.count as usize;
        let measured = batch.measured.is_some();
        // A cache fill: Redis tracks what it reads on whichever node serves it.
        let tracked = batch.tracked;
        let batch_id = self
            .deliveries
            .open(batch.reply_to, count, measured, batch.hold);
        let mut outgoing: Vec<Outgoing> = Vec::new();
        let bytes = batch.bytes;
        let mut offset = 0;
        // Every command goes as it came: when they all go to one node, so does the batch.
        let mut verbatim = true;
        for index in 0..count {
            let Ok(Decoded::Request { consumed, .. }) = self.decoder.decode(&bytes[offset..])
            else {
                // Sessions send only whole requests they decoded themselves.
                let error = reply::error("ERR keyward: a request could not be routed");
                for index in index..count {
                    self.deliveries.answer(batch_id, index, error.clone());
                }
                verbatim = false;
                break;
            };
            let planned = {
                let args = self.decoder.args(&bytes[offset..]);
                let info = CommandTable::global().lookup(&args);
                plan::plan(info, &args, map.shards.len(), &mut self.keys)
            };
            let command = bytes.slice(offset..offset + consumed);
            offset += consumed;
            verbatim &= matches!(planned, Plan::Slot(_) | Plan::Anywhere | Plan::PubSub);
            match parts(planned, command, &map) {
                Ok((merge, parts)) => {
                    let at = (batch_id, index);
                    verbatim &= self.admit(at, merge, parts, tracked, &map, &mut outgoing);
                }
                Err(answer) => self.deliveries.answer(batch_id, index, answer),
            }
        }
        if let ([out], true) = (&mut outgoing[..], verbatim) {
            let owed = std::mem::take(&mut out.owed);
            self.send(out.link, bytes, owed, tracked).await;
        } else {
            for out in outgoing {
                let (link, bytes, owed) = out.joined();
                self.send(link, bytes, owed, tracked).await;
            }
        }
        self.deliveries.deliver();
    }

    /// Registers a command (the reply to command `at.1` of batch `at.0`) and queues its parts
    /// for their nodes; a part no node serves is answered at once (`false` then).
    fn admit(
        &mut self,
        at: (u64, usize),
        merge: Merge,
        parts: SmallVec<[Part; 1]>,
        tracked: bool,
        map: &SlotMap,
        outgoing: &mut Vec<Outgoing>,
    ) -> bool {
        let id = self.next_command;
        self.next_command += 1;
        let mut unsendable = Vec::new();
        for (part_index, part) in parts.iter().enumerate() {
            let address = match self.destination(map, part) {
                Ok(address) => address,
                Err(error) => {
                    unsendable.push((part_index, error));
                    continue;
                }
            };
            let link = self.link(&address);
            let owed = Owed::Part {
                command: id,
                part: part_index,
            };
            match outgoing.iter_mut().find(|out| out.link == link) {
                Some(out) => {
                    out.commands.push(part.bytes.clone());
                    out.owed.push(owed);
                }
                None => outgoing.push(Outgoing {
                    link,
                    commands: vec![part.bytes.clone()],
                    owed: vec![owed],
                }),
            }
        }
        let command = Command {
            batch: at.0,
            index: at.1,
            merge,
            left: parts.len(),
            parts,
            tracked,
            started: Instant::now(),
        };
        self.commands.insert(id, command);
        let all_sent = unsendable.is_empty();
        for (part_index, error) in unsendable {
            self.settle(id, part_index, error);
        }
        all_sent
    }

    /// Where a part goes now.
    fn destination(&self, map: &SlotMap, part: &Part) -> Result<HostPort, Bytes> {
        if let Some(pinned) = &part.pinned {
            return Ok(pinned.clone());
        }
        let owner = match part.slot {
            Some(slot) => map
                .owner(slot)
                .ok_or_else(|| reply::error("CLUSTERDOWN Hash slot not served"))?,
            None => self.spread % map.shards.len().max(1),
        };
        map.shards
            .get(owner)
            .map(|shard| shard.primary.clone())
            .ok_or_else(|| reply::error("CLUSTERDOWN Hash slot not served"))
    }

    /// Closes the links to nodes that are no longer primaries in `map` and owe nothing: a
    /// failed primary's link would otherwise try to reconnect for as long as keyward runs.
    fn forget_departed_nodes(&mut self, map: &SlotMap) {
        self.links.retain(|link| {
            !link.owed.is_empty() || map.shards.iter().any(|shard| shard.primary == link.address)
        });
    }

    /// The index of this router's link to `address`, opened on first use.
    fn link(&mut self, address: &HostPort) -> usize {
        if let Some(index) = self.links.iter().position(|link| link.address == *address) {
            return index;
        }
        let (sender, replies) = inbox::channel();
        let settings = self.cluster.node_settings(address);
        let tracking = self.cluster.node_tracking(address);
        let conn = self
            .upstream
            .open_node_connection(settings, tracking, self.protocol);
        self.links.push(NodeLink {
            address: address.clone(),
            conn,
            sender,
            replies,
            owed: VecDeque::new(),
        });
        self.links.len() - 1
    }

    /// Hands commands to a node's connection; if it cannot take them, each gets an error.
    async fn send(&mut self, link: usize, bytes: Bytes, owed: Vec<Owed>, tracked: bool) {
        let node = &mut self.links[link];
        let batch = Batch {
            bytes,
            count: owed.len() as u32,
            reply_to: node.sender.clone().into(),
            tracked,
            measured: None,
            hold: None,
            lane: None,
        };
        // A full queue holds the router back, and so its sessions, rather than refusing
        // their commands.
        if let Ok(room) = node.conn.room().await {
            room.send(batch);
            node.owed.extend(owed);
            return;
        }
        let error = reply::error(&format!("ERR upstream {} unavailable", node.address));
        for owed in owed {
            if let Owed::Part { command, part } = owed {
                self.settle(command, part, error.clone());
            }
        }
        self.deliveries.deliver();
    }

    /// Waits for the next reply from any node.
    async fn next_reply(&mut self) -> (usize, Reply) {
        let links = &mut self.links;
        poll_fn(|cx| {
            for (index, link) in links.iter_mut().enumerate() {
                if let Poll::Ready(Some(reply)) = link.replies.poll_recv(cx) {
                    return Poll::Ready((index, reply));
                }
            }
            Poll::Pending
        })
        .await
    }

    async fn on_reply(&mut self, link: usize, reply: Reply) {
        match reply {
            Reply::Frames { bytes, .. } => {
                let mut offset = 0;
                for frame in frames(&bytes) {
                    let frame_bytes = bytes.slice(offset..offset + frame.len());
                    offset += frame.len();
                    match self.links[link].owed.pop_front() {
                        Some(Owed::Part { command, part }) => {
                            self.on_part_reply(link, command, part, frame_bytes).await;
                        }
                        Some(Owed::Asking) | None => {}
                    }
                }
            }
            Reply::Failed { count, error } => {
                // The node cannot be reached: the map may already name another.
                self.cluster.refresh_soon();
                for _ in 0..count {
                    if let Some(Owed::Part { command, part }) = self.links[link].owed.pop_front() {
                        self.settle(command, part, error.clone());
                    }
                }
            }
            Reply::Push(_)
            | Reply::LaneWritten
            | Reply::Closed { .. }
            | Reply::Fetched { .. }
            | Reply::Stop => {}
        }
        self.deliveries.deliver();
    }

    async fn on_part_reply(&mut self, link: usize, command: u64, part: usize, frame: Bytes) {
        if merge::is_error(&frame) {
            if let Some(redirect) = Redirect::read(&frame, &self.links[link].address) {
                if self.follow(command, part, redirect).await {
                    return;
                }
            }
        }
        self.settle(command, part, frame);
    }

    /// Sends a part where a redirection says; `false` when it may not follow it.
    async fn follow(&mut self, id: u64, part_index: usize, redirect: Redirect) -> bool {
        let Some(command) = self.commands.get_mut(&id) else {
            return false;
        };
        let part = &mut command.parts[part_index];
        match redirect {
            Redirect::Moved { slot, address } => {
                metrics::upstream_redirect("moved");
                self.cluster.moved(slot, &address);
                part.hops += 1;
                if part.hops > MAX_HOPS {
                    return false;
                }
                part.pinned = Some(address.clone());
                self.resend(id, part_index, &address, false).await;
            }
            Redirect::Ask { address, .. } => {
                metrics::upstream_redirect("ask");
                part.hops += 1;
                if part.hops > MAX_HOPS {
                    return false;
                }
                self.resend(id, part_index, &address, true).await;
            }
            Redirect::TryAgain => {
                metrics::upstream_redirect("tryagain");
                let wait = FIRST_RETRY
                    .saturating_mul(1 << part.tries.min(8))
                    .min(LONGEST_RETRY);
                let limit = self.upstream.settings().request_timeout;
                if command.started.elapsed() + wait > limit {
                    return false;
                }
                part.tries += 1;
                // Sent again by slot, as a new attempt: the migration may have ended
                // meanwhile, and the redirections of the last attempt do not count against
                // this one (`request_timeout` bounds the retries).
                part.pinned = None;
                part.hops = 0;
                let retry_to = self.retry_to.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    let _ = retry_to.send((id, part_index));
                });
            }
        }
        true
    }

    /// Sends a part again, to `address`; after an `ASK`, with `ASKING` before it.
    async fn resend(&mut self, id: u64, part_index: usize, address: &HostPort, asking: bool) {
        let Some(command) = self.commands.get(&id) else {
            return;
        };
        let (part, tracked) = (&command.parts[part_index], command.tracked);
        let mut owed = Vec::with_capacity(2);
        let bytes = if asking {
            owed.push(Owed::Asking);
            let mut bytes = BytesMut::from(&b"*1\r\n$6\r\nASKING\r\n"[..]);
            bytes.extend_from_slice(&part.bytes);
            bytes.freeze()
        } else {
            part.bytes.clone()
        };
        owed.push(Owed::Part {
            command: id,
            part: part_index,
        });
        let link = self.link(address);
        self.send(link, bytes, owed, tracked).await;
    }

    /// Sends again a part that waited after `TRYAGAIN`.
    async fn retry(&mut self, id: u64, part_index: usize) {
        let Some(map) = self.cluster.map() else {
            return;
        };
        let Some(part) = self
            .commands
            .get(&id)
            .map(|command| &command.parts[part_index])
        else {
            return;
        };
        match self.destination(&map, part) {
            Ok(address) => self.resend(id, part_index, &address, false).await,
            Err(error) => {
                self.settle(id, part_index, error);
                self.deliveries.deliver();
            }
        }
    }

    /// A part's reply; once every part has one, the command's reply, merged.
    fn settle(&mut self, id: u64, part_index: usize, reply: Bytes) {
        let Some(command) = self.commands.get_mut(&id) else {
            return;
        };
        let part = &mut command.parts[part_index];
        if part.reply.replace(reply).is_none() {
            command.left -= 1;
        }
        if command.left > 0 {
            return;
        }
        let command = self.commands.remove(&id).expect("present");
        let replies: Vec<Bytes> = command
            .parts
            .into_iter()
            .filter_map(|part| part.reply)
            .collect();
        let merged = merge::merge(&command.merge, &replies);
        self.deliveries.answer(command.batch, command.index, merged);
    }
}
