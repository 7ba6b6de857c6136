//! An unbounded channel with one receiver that takes every waiting message in one go.
//!
//! Each session's replies come through one of these: every unpipelined request wakes its
//! session once for its reply, and the receiving side is a large share of what that wake-up
//! costs. tokio's `mpsc` pops each message from a linked list of slot blocks with several
//! atomic operations, once more to learn that nothing else is there, and once more on every
//! wake-up for the client's input (about 730 instructions per unpipelined GET, under
//! callgrind). Here senders append to a queue under an uncontended lock, and the receiver
//! swaps the whole queue for its own empty one: one lock per wake-up however many messages
//! wait, no allocation once both queues have grown, and messages in the order they were sent.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use parking_lot::Mutex;

struct Shared<T> {
    queue: Mutex<VecDeque<T>>,
    /// The receiver's task, once it waits.
    waker: AtomicWaker,
    senders: AtomicUsize,
    receiver_gone: AtomicBool,
}

/// Sends to the channel's receiver; cloned for every sender.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// The channel's one receiver.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
    /// Messages taken from the shared queue and not handed out yet.
    taken: VecDeque<T>,
}

/// Why [`Receiver::try_recv`] has no message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryRecvError {
    Empty,
    /// Nothing waits, and every sender is gone.
    Disconnected,
}

pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(VecDeque::new()),
        waker: AtomicWaker::new(),
        senders: AtomicUsize::new(1),
        receiver_gone: AtomicBool::new(false),
    });
    let sender = Sender {
        shared: shared.clone(),
    };
    let receiver = Receiver {
        shared,
        taken: VecDeque::new(),
    };
    (sender, receiver)
}

impl<T> Sender<T> {
    /// Queues `message` for the receiver; gives it back if the receiver is gone.
    pub fn send(&self, message: T) -> Result<(), T> {
        if self.is_closed() {
            return Err(message);
        }
        self.shared.queue.lock().push_back(message);
        self.shared.waker.wake();
        Ok(())
    }

    /// Whether the receiver is gone.
    pub fn is_closed(&self) -> bool {
        self.shared.receiver_gone.load(Ordering::Acquire)
    }

    /// Whether both send to the same receiver.
    pub fn same_channel(&self, other: &Sender<T>) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Sender<T> {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Sender {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last one: a waiting receiver learns that nothing more will come.
            self.shared.waker.wake();
        }
    }
}

impl<T> Receiver<T> {
    /// The next message; `None` once every sender is gone and nothing waits.
    pub async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next message if one waits now.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        if let Some(message) = self.take() {
            return Ok(message);
        }
        match self.shared.senders.load(Ordering::Acquire) {
            0 => self.take().ok_or(TryRecvError::Disconnected),
            _ => Err(TryRecvError::Empty),
        }
    }

    /// Like tokio's channels, a receiver spends the task's budget, so that a task fed
    /// faster than it drains still lets the others on its thread run.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let budget = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        if let Some(message) = self.take() {
            budget.made_progress();
            return Poll::Ready(Some(message));
        }
        self.shared.waker.register(cx.waker());
        // A message (or the last sender's drop) may have come before the registration.
        if let Some(message) = self.take() {
            budget.made_progress();
            return Poll::Ready(Some(message));
        }
        if self.shared.senders.load(Ordering::Acquire) == 0 {
            return Poll::Ready(self.take());
        }
        Poll::Pending
    }

    /// The oldest message taken before, or else every message waiting now, in one lock.
    #[inline]
    fn take(&mut self) -> Option<T> {
        if self.taken.is_empty() {
            let mut queue = self.shared.queue.lock();
            if queue.is_empty() {
                return None;
            }
            std::mem::swap(&mut *queue, &mut self.taken);
        }
        self.taken.pop_front()
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.shared.receiver_gone.store(true, Ordering::Release);
        // What was sent and never received goes now, not with the last sender.
        self.shared.queue.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_come_in_order_however_many_wait() {
        let (sender, mut receiver) = channel();
        let other = sender.clone();
        for n in 0..5 {
            sender.send(n).unwrap();
        }
        assert_eq!(receiver.recv().await, Some(0));
        other.send(5).unwrap();
        let rest: Vec<i32> = std::iter::from_fn(|| receiver.try_recv().ok()).collect();
        assert_eq!(rest, [1, 2, 3, 4, 5]);
        assert_eq!(receiver.try_recv(), Err(TryRecvError::Empty));
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_send_from_another_task() {
        let (sender, mut receiver) = channel();
        let sending = tokio::spawn(async move {
            tokio::task::yield_now().await;
            sender.send("reply").unwrap();
        });
        assert_eq!(receiver.recv().await, Some("reply"));
        sending.await.unwrap();
    }

    #[tokio::test]
    async fn the_receiver_learns_when_every_sender_is_gone() {
        let (sender, mut receiver) = channel();
        let other = sender.clone();
        sender.send(1).unwrap();
        drop(sender);
        let waiting = tokio::spawn(async move {
            let first = receiver.recv().await;
            let second = receiver.recv().await;
            (first, second, receiver.try_recv())
        });
        tokio::task::yield_now().await;
        drop(other);
        let (first, second, after) = waiting.await.unwrap();
        assert_eq!((first, second), (Some(1), None));
        assert_eq!(after, Err(TryRecvError::Disconnected));
    }

    #[test]
    fn senders_learn_when_the_receiver_is_gone() {
        let (sender, receiver) = channel();
        let other = sender.clone();
        assert!(sender.same_channel(&other));
        assert!(!sender.same_channel(&channel().0));
        assert!(!sender.is_closed());
        drop(receiver);
        assert!(other.is_closed());
        assert_eq!(sender.send(7), Err(7));
    }
}
