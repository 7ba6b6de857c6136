//! A session's way to one upstream connection ([`ConnHandle`]), and the health the connection
//! shows to everyone who holds one ([`ConnStatus`]): whether it is up, its last error, and
//! whether Redis holds a request on it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::connection::Batch;

/// How many batches may wait for one connection before senders are told it is busy.
const QUEUED_BATCHES: usize = 4096;

/// A command on a shared connection that Redis may hold for long (a script, a write during a
/// pause). While one is in flight the connection shows as held from the moment it is handed
/// over, so that sessions that owe nothing leave it before they queue behind the command,
/// rather than [`HELD_TOO_LONG`] later. Dropped with the batch's last reply.
pub struct Hold(Arc<ConnStatus>);

impl Drop for Hold {
    fn drop(&mut self) {
        self.0.holds.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The shared view of a connection's health.
#[derive(Default)]
pub struct ConnStatus {
    up: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// The oldest request on this shared connection has waited for its reply for longer than
    /// [`HELD_TOO_LONG`]: Redis holds it (a busy script, a paused write). Sessions that owe
    /// nothing read it to leave the connection before they queue behind that request.
    pub(super) held: AtomicBool,
    /// Batches in flight that hold a [`Hold`].
    holds: AtomicU32,
}

/// A request waiting this long on a shared connection is taken to be held by Redis.
pub const HELD_TOO_LONG: Duration = Duration::from_millis(100);

impl ConnStatus {
    /// Whether Redis holds (or may hold, see [`Hold`]) a request on this connection, so that
    /// sessions owing nothing should leave it rather than queue behind that request.
    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::Relaxed) || self.holds.load(Ordering::Relaxed) > 0
    }

    pub(super) fn set_held(&self, held: bool) {
        self.held.store(held, Ordering::Relaxed);
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub(super) fn set_up(&self) {
        self.up.store(true, Ordering::Relaxed);
    }

    pub(super) fn set_down(&self, error: String) {
        self.up.store(false, Ordering::Relaxed);
        *self.last_error.lock() = Some(error);
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }
}

/// A session's way to one upstream connection.
#[derive(Clone)]
pub struct ConnHandle {
    batches: mpsc::Sender<Batch>,
    pub status: Arc<ConnStatus>,
}

/// A place in a connection's queue (see [`ConnHandle::reserve`]), borrowed from the handle
/// that found it or, when waited for across turns ([`ConnHandle::wait_for_room`]), owned.
pub enum Room<'a> {
    Borrowed(mpsc::Permit<'a, Batch>),
    Owned(mpsc::OwnedPermit<Batch>),
}

impl Room<'_> {
    pub fn send(self, batch: Batch) {
        match self {
            Room::Borrowed(permit) => permit.send(batch),
            Room::Owned(permit) => drop(permit.send(batch)),
        }
    }
}

/// A wait for a place in a connection's queue that can be kept from one turn of a session to
/// the next: polled again, it keeps its place in line (see [`ConnHandle::room`]).
pub type RoomWait = Pin<Box<dyn Future<Output = Result<Room<'static>, SendError>> + Send>>;

/// Why a batch could not be handed to its connection.
pub enum SendError {
    /// More batches are queued than the connection can take; Redis is stalled or overloaded.
    Busy,
    /// The connection task is gone (a dedicated connection that closed).
    Gone,
}

impl ConnHandle {
    pub(super) fn channel() -> (ConnHandle, mpsc::Receiver<Batch>) {
        let (batches, receiver) = mpsc::channel(QUEUED_BATCHES);
        (
            ConnHandle {
                batches,
                status: Arc::default(),
            },
            receiver,
        )
    }

    /// Marks the connection held until the returned [`Hold`] is dropped.
    pub fn hold(&self) -> Hold {
        self.status.holds.fetch_add(1, Ordering::Relaxed);
        Hold(Arc::clone(&self.status))
    }

    pub fn send(&self, batch: Batch) -> Result<(), SendError> {
        self.offer(batch).map_err(|(error, _)| error)
    }

    /// Like [`send`](Self::send), but a batch that cannot be handed over comes back with the
    /// reason, so that a session can keep it and try again once there is room.
    pub fn offer(&self, batch: Batch) -> Result<(), (SendError, Batch)> {
        match self.reserve() {
            Ok(room) => {
                room.send(batch);
                Ok(())
            }
            Err(error) => Err((error, batch)),
        }
    }

    /// Room for one batch, held until it is used or dropped, when the queue has some now:
    /// what must go next on this connection, in order, cannot then be refused as busy.
    pub fn reserve(&self) -> Result<Room<'_>, SendError> {
        self.batches
            .try_reserve()
            .map(Room::Borrowed)
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(()) => SendError::Busy,
                mpsc::error::TrySendError::Closed(()) => SendError::Gone,
            })
    }

    /// Waits for a place in the queue and keeps it (an error once the connection is gone).
    /// Waiters get places in turn as the connection frees them, and [`reserve`](Self::reserve)
    /// finds none while anyone waits: a client whose batch waited is not overtaken, turn
    /// after turn, by one whose requests fill each freed place first. A wait dropped before
    /// it ends loses its place to the next in line: a session, which turns to whatever comes
    /// first, keeps a [`wait_for_room`](Self::wait_for_room) from turn to turn instead.
    pub async fn room(&self) -> Result<Room<'_>, SendError> {
        self.batches
            .reserve()
            .await
            .map(Room::Borrowed)
            .map_err(|_| SendError::Gone)
    }

    /// [`room`](Self::room) as a wait of its own, which the caller keeps until it ends.
    pub fn wait_for_room(&self) -> RoomWait {
        let batches = self.batches.clone();
        Box::pin(async move {
            batches
                .reserve_owned()
                .await
                .map(Room::Owned)
                .map_err(|_| SendError::Gone)
        })
    }
}
