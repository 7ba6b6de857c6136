//! Keeping the cache coherent with Redis while reads are in flight, and reading each missing
//! entry once.
//!
//! A miss starts a *flight*: the request is sent as a tracked fill on the reader's connection,
//! and the task that reads its reply (the connection's, or in cluster mode the router's)
//! completes the flight. Readers of the same thing that miss meanwhile join the
//! flight instead of reading again (single flight). When the reply comes, it goes to every
//! reader, and is stored only if no invalidation or write for its key arrived while it was in
//! flight, and no invalidations may have been lost since it started (each key's epoch: in
//! cluster mode, that of the node serving it, so one node's trouble leaves the others' entries
//! served). Invalidating
//! and storing take the same lock, so an invalidation can never slip between the check and the
//! store.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::{Mutex, MutexGuard};
use rustc_hash::{FxBuildHasher, FxHashMap};
use smallvec::SmallVec;

use super::{rule_for, write_shape, Kind, RuleCache};
use crate::policy::phase::{Decision, Subject};
use crate::resp::frame::{self, frame_len};
use crate::resp::request::encode_command;
use crate::upstream::{send_own_then, Reply, ReplySender, Room, SendError, Upstream};

/// A read the cache took ([`Decision::Take`]); its reply comes as `Reply::Fetched` with the
/// subject's ticket.
pub enum Fill {
    /// The same read is in flight for another client: its reply is this one's too.
    Joined,
    /// The read fills the cache: sent with [`Coherence::fetch`] as the flight with this id.
    Fetch(u64),
}

struct Flight {
    rule: Arc<RuleCache>,
    kind: Kind,
    /// The key under which readers find this flight in `open`.
    open_key: Bytes,
    keys: SmallVec<[Bytes; 1]>,
    /// The shape the reply is stored under (per key for `MGET`).
    shape: Bytes,
    /// Each key's epoch when the read started; a key whose epoch moved on since is not stored.
    epochs: SmallVec<[u64; 1]>,
    readers: SmallVec<[(ReplySender, u64); 1]>,
}

#[derive(Default)]
struct Flights {
    next_id: u64,
    running: FxHashMap<u64, Flight>,
    /// Flights new readers may join, by what they read. A running flight leaves it when one of
    /// its keys is written or invalidated (or everything is flushed): from then on its reply
    /// is still handed to its readers, but not stored.
    open: FxHashMap<Bytes, u64>,
    /// Running flights by the keys they read, to close them.
    by_key: FxHashMap<Bytes, SmallVec<[u64; 1]>>,
    /// Keys written through keyward whose writes Redis has not answered yet, by their
    /// [`write_hash`]: no read of them is stored or shared until it has. Two keys of one hash
    /// only keep a read of the other from being cached meanwhile, and a write keeps no copy
    /// of its key here.
    writing: FxHashMap<u64, u32>,
    /// Flushes sent through keyward that Redis has not answered yet: no read is stored or
    /// shared until it has.
    flushing: u32,
}

impl Flights {
    /// Whether flight `id` is still open: nothing it read changed while it was in flight.
    fn is_open(&self, id: u64, open_key: &Bytes) -> bool {
        self.open.get(open_key) == Some(&id)
    }

    fn forget(&mut self, id: u64) -> Option<Flight> {
        let flight = self.running.remove(&id)?;
        close(&mut self.open, id, &flight.open_key);
        for key in &flight.keys {
            if let Some(ids) = self.by_key.get_mut(key) {
                ids.retain(|other| *other != id);
                if ids.is_empty() {
                    self.by_key.remove(key);
                }
            }
        }
        Some(flight)
    }
}

/// Bytes of a key's length in a flight's key.
const KEY_LENGTH_BYTES: usize = std::mem::size_of::<u32>();

/// What a flight is found by: the read's shape, then each key after its length. Built at its
/// final size, so that it becomes `Bytes` without being copied.
fn flight_key(shape: &[u8], keys: &[&[u8]]) -> Vec<u8> {
    let size = shape.len()
        + keys
            .iter()
            .map(|key| KEY_LENGTH_BYTES + key.len())
            .sum::<usize>();
    let mut open_key = Vec::with_capacity(size);
    open_key.extend_from_slice(shape);
    for key in keys {
        open_key.extend_from_slice(&(key.len() as u32).to_be_bytes());
        open_key.extend_from_slice(key);
    }
    open_key
}

/// What [`Flights::writing`] knows a written key by.
fn write_hash(key: &[u8]) -> u64 {
    FxBuildHasher.hash_one(key)
}

/// Flight `id` takes no more readers, and its reply will not be stored.
fn close(open: &mut FxHashMap<Bytes, u64>, id: u64, open_key: &Bytes) {
    if open.get(open_key) == Some(&id) {
        open.remove(open_key);
    }
}

pub struct Coherence {
    /// Where keys' tracking epochs come from.
    upstream: Arc<Upstream>,
    flights: Mutex<Flights>,
}

impl Coherence {
    pub fn new(upstream: Arc<Upstream>) -> Coherence {
        Coherence {
            upstream,
            flights: Mutex::default(),
        }
    }

    fn flights(&self) -> MutexGuard<'_, Flights> {
        self.flights.lock()
    }

    /// Decides how to answer a cacheable read: from memory, by joining the same read in
    /// flight, or by filling (`Pass`: not the cache's, forward it as usual). `shape` is a
    /// buffer the caller reuses.
    pub fn consult(
        &self,
        rules: &[Arc<RuleCache>],
        read: &Subject<'_, '_>,
        kind: Kind,
        shape: &mut Vec<u8>,
    ) -> Decision<Fill> {
        let Some(first) = read.args.get(1) else {
            return Decision::Pass;
        };
        // Each kind gets its own copy of `consult_keys`: for a one-key read, every loop over
        // the keys is one step the compiler lays out straight.
        match kind {
            Kind::OneKey => self.consult_keys(rules, read, kind, &[first], shape),
            Kind::PerKey => {
                let keys: SmallVec<[&[u8]; 4]> = read.args.iter().skip(1).collect();
                self.consult_keys(rules, read, kind, &keys, shape)
            }
        }
    }

    /// [`consult`](Self::consult) for the read of `keys`, the first of which is its first
    /// argument.
    #[inline(always)]
    fn consult_keys(
        &self,
        rules: &[Arc<RuleCache>],
        read: &Subject<'_, '_>,
        kind: Kind,
        keys: &[&[u8]],
        shape: &mut Vec<u8>,
    ) -> Decision<Fill> {
        let Some(rule) = rule_for(rules, read.info, keys) else {
            return Decision::Pass;
        };
        // A sampled shadow rule follows a read by its first key.
        let Some(followed) = rule.follows(keys[0]) else {
            return Decision::Pass;
        };
        let mut epochs = SmallVec::<[u64; 1]>::new();
        for key in keys {
            match self.upstream.key_epoch(key) {
                Some(epoch) => epochs.push(epoch),
                None => return Decision::Pass,
            }
        }
        write_shape(shape, read.db, read.protocol, read.info, read.args, kind);
        let cached = rule.lookup(keys, followed, &epochs, shape, kind, read.now);
        rule.count(cached.is_some());
        match cached {
            Some(_) if rule.is_shadow() => Decision::Pass,
            Some(reply) => Decision::Answer(reply),
            None => self.fill(rule, read, kind, keys, shape, epochs),
        }
    }

    /// A read no entry answered: it joins the same read in flight, or starts a flight of its
    /// own. Out of line, so that a hit (most reads) sets up none of what a flight needs.
    #[inline(never)]
    fn fill(
        &self,
        rule: &Arc<RuleCache>,
        read: &Subject<'_, '_>,
        kind: Kind,
        keys: &[&[u8]],
        shape: &[u8],
        epochs: SmallVec<[u64; 1]>,
    ) -> Decision<Fill> {
        let open_key = flight_key(shape, keys);
        let mut flights = self.flights();
        let written = |key: &&[u8]| flights.writing.contains_key(&write_hash(key));
        if flights.flushing > 0 || keys.iter().any(written) {
            return Decision::Pass;
        }
        if let Some(id) = flights.open.get(&open_key[..]).copied() {
            if rule.is_shadow() {
                return Decision::Pass;
            }
            if let Some(flight) = flights.running.get_mut(&id) {
                flight.readers.push((read.reply_to.clone(), read.ticket));
                return Decision::Take(Fill::Joined);
            }
        }
        let id = flights.next_id;
        flights.next_id += 1;
        // The shape and the keys are parts of the flight's key: one allocation holds all three.
        let open_key = Bytes::from(open_key);
        let mut at = shape.len();
        let keys: SmallVec<[Bytes; 1]> = keys
            .iter()
            .map(|key| {
                at += KEY_LENGTH_BYTES;
                let held = open_key.slice(at..at + key.len());
                at += key.len();
                held
            })
            .collect();
        for key in &keys {
            flights.by_key.entry(key.clone()).or_default().push(id);
        }
        flights.open.insert(open_key.clone(), id);
        flights.running.insert(
            id,
            Flight {
                rule: Arc::clone(rule),
                kind,
                shape: open_key.slice(..shape.len()),
                open_key,
                keys,
                epochs,
                readers: SmallVec::from_iter([(read.reply_to.clone(), read.ticket)]),
            },
        );
        Decision::Take(Fill::Fetch(id))
    }

    /// Sends a fill for flight `id` in `room` on the session's connection; the task that reads
    /// its reply hands it to the flight's readers. Without room the flight is over, answered
    /// with `error`.
    pub fn fetch(
        self: &Arc<Self>,
        id: u64,
        room: Result<Room<'_>, SendError>,
        request: Bytes,
        error: impl FnOnce(SendError) -> Bytes,
    ) {
        let room = match room {
            Ok(room) => room,
            Err(failure) => return self.complete(id, error(failure), &[]),
        };
        // The read also asks for each key's remaining time to live, so that no entry outlives
        // its key: Redis's own expiry of it may come much later.
        let keys = {
            let flights = self.flights();
            flights
                .running
                .get(&id)
                .map(|flight| flight.keys.clone())
                .unwrap_or_default()
        };
        // Room for the request and each `PTTL` (its header and the key's length in digits
        // take under 32 bytes), so that the buffer is never moved while it is written.
        let pttl_bytes: usize = keys.iter().map(|key| key.len() + 32).sum();
        let mut out = BytesMut::with_capacity(request.len() + pttl_bytes);
        out.extend_from_slice(&request);
        for key in &keys {
            encode_command(&[&b"PTTL"[..], key], &mut out);
        }
        let coherence = Arc::clone(self);
        let count = 1 + keys.len() as u32;
        send_own_then(room, out.freeze(), count, true, move |gathered| {
            let mut frames = match gathered {
                Ok(frames) => frames,
                Err(error) => return coherence.complete(id, error, &[]),
            };
            let reply = match frame_len(&frames) {
                Ok(Some(len)) => frames.split_to(len),
                _ => return coherence.complete(id, frames, &[]),
            };
            let mut lifetimes = SmallVec::<[Option<Duration>; 1]>::new();
            while let Ok(Some(len)) = frame_len(&frames) {
                let lifetime = frame::integer(&frames.split_to(len))
                    .and_then(|ms| u64::try_from(ms).ok())
                    .map(Duration::from_millis);
                lifetimes.push(lifetime);
            }
            coherence.complete(id, reply, &lifetimes);
        });
    }

    /// Ends flight `id` with `reply`: stores it (for at most each key's own time to live, from
    /// `lifetimes`, when known) if nothing invalidated it, and answers every reader. Without
    /// the lifetimes (a failed fill) nothing is stored.
    fn complete(&self, id: u64, reply: Bytes, lifetimes: &[Option<Duration>]) {
        let flight = {
            let mut flights = self.flights();
            let unchanged = flights
                .running
                .get(&id)
                .is_some_and(|flight| flights.is_open(id, &flight.open_key));
            let Some(flight) = flights.forget(id) else {
                return;
            };
            // Stored only from a flight still open, and whose first key (a read is followed
            // by it) a shadow rule's sample still follows: it may have shrunk since.
            let read_by = flight.keys.first().filter(|_| unchanged).and_then(|key| {
                let followed = flight.rule.follows(key)?;
                Some((&key[..], followed))
            });
            let current = lifetimes.len() == flight.keys.len()
                && flight
                    .keys
                    .iter()
                    .zip(&flight.epochs)
                    .all(|(key, &epoch)| self.upstream.key_epoch(key) == Some(epoch));
            if let (true, Some(read_by)) = (current, read_by) {
                let replies: SmallVec<[Bytes; 1]> = match flight.kind {
                    Kind::OneKey => SmallVec::from_buf([reply.clone()]),
                    Kind::PerKey => elements(&reply, flight.keys.len()).into(),
                };
                let stored = flight.keys.iter().zip(&flight.epochs).zip(lifetimes);
                for (((key, &epoch), lifetime), reply) in stored.zip(replies) {
                    let rule = &flight.rule;
                    rule.insert(key, read_by, &flight.shape, &reply, epoch, *lifetime);
                }
            }
            flight
        };
        for (reader, ticket) in flight.readers {
            let _ = reader.send(Reply::Fetched {
                ticket,
                bytes: reply.clone(),
            });
        }
    }

    /// A key was written through keyward or invalidated by Redis: its entries go, and reads of
    /// it in flight are not stored.
    pub fn invalidate(&self, rules: &[Arc<RuleCache>], key: &[u8]) {
        Self::invalidate_locked(&mut self.flights(), rules, key);
    }

    /// A write of `key` through keyward is on its way to Redis: the key's entries go now, and
    /// until [`end_write`](Self::end_write) no read of it is stored, shared or answered from
    /// the cache. Without this, a read another client started just after the write was sent
    /// could overtake it on another connection, and be served to the writer after its `OK`.
    pub fn begin_write(&self, rules: &[Arc<RuleCache>], key: &[u8]) {
        let mut flights = self.flights();
        Self::invalidate_locked(&mut flights, rules, key);
        *flights.writing.entry(write_hash(key)).or_default() += 1;
    }

    /// Redis answered a write of `key` (or it failed): reads of it may be cached again. Nothing
    /// was stored for the key meanwhile (fills in flight were closed, new ones not shared or
    /// stored), so there is nothing to drop.
    pub fn end_write(&self, key: &[u8]) {
        let mut flights = self.flights();
        let hash = write_hash(key);
        if let Some(count) = flights.writing.get_mut(&hash) {
            *count -= 1;
            if *count == 0 {
                flights.writing.remove(&hash);
            }
        }
    }

    fn invalidate_locked(flights: &mut Flights, rules: &[Arc<RuleCache>], key: &[u8]) {
        let Flights {
            running,
            open,
            by_key,
            ..
        } = flights;
        for id in by_key.get(key).into_iter().flatten() {
            if let Some(flight) = running.get(id) {
                close(open, *id, &flight.open_key);
            }
        }
        for rule in rules {
            rule.invalidate(key);
        }
    }

    /// A flush through keyward is on its way to Redis: everything goes now, and until
    /// [`end_flush`](Self::end_flush) nothing is stored or shared, so no read can overtake it.
    pub fn begin_flush(&self, rules: &[Arc<RuleCache>]) {
        let mut flights = self.flights();
        self.flush_locked(&mut flights, rules);
        flights.flushing += 1;
    }

    pub fn end_flush(&self) {
        let mut flights = self.flights();
        flights.flushing = flights.flushing.saturating_sub(1);
    }

    /// Drops everything (a flush, or invalidations that may have been lost).
    pub fn flush_all(&self, rules: &[Arc<RuleCache>]) {
        self.flush_locked(&mut self.flights(), rules);
    }

    /// Every running flight is closed, and the epoch moves on (so that no fill started
    /// before is stored, whichever connection it rode on).
    fn flush_locked(&self, flights: &mut Flights, rules: &[Arc<RuleCache>]) {
        self.upstream.tracking.lose_invalidations();
        flights.open.clear();
        for rule in rules {
            rule.flush();
        }
    }
}

/// The elements of an array reply of `expected` elements (none if it is anything else).
fn elements(reply: &Bytes, expected: usize) -> Vec<Bytes> {
    let Some(body) = frame::array_body(reply, expected) else {
        return Vec::new();
    };
    let found: Vec<Bytes> = frame::frames(body)
        .take(expected)
        .map(|element| reply.slice_ref(element))
        .collect();
    let used: usize = found.iter().map(Bytes::len).sum();
    if found.len() == expected && used == body.len() {
        found
    } else {
        Vec::new()
    }
}
