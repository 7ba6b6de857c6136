//! A queue that is filled at the back and emptied from the front in runs, kept in one `Vec`.
//!
//! The recorder's queues are read by position many times per command (a command's keys, the
//! next one to finish, the run of finished ones to count). A `VecDeque` wraps every position
//! around its ring; here a position is an offset from the front, and the live items are one
//! slice. What leaves the front stays in the `Vec` until it is half of it (or all of it), so
//! each item is moved at most once on average and the `Vec` holds at most twice the live
//! items.

/// Items in the order pushed; those before `front` have left the queue.
#[derive(Debug)]
pub struct Queue<T> {
    items: Vec<T>,
    front: usize,
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Queue {
            items: Vec::new(),
            front: 0,
        }
    }
}

impl<T> Queue<T> {
    pub fn len(&self) -> usize {
        self.items.len() - self.front
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues `item` at the back, and gives it back to be finished in place.
    pub fn push_back(&mut self, item: T) -> &mut T {
        let at = self.items.len();
        self.items.push(item);
        &mut self.items[at]
    }

    /// The items in the queue, front first.
    pub fn as_slice(&self) -> &[T] {
        &self.items[self.front..]
    }

    pub fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.items[self.front..]
    }

    /// Removes the first `count` items. Asking for more than are queued is a mistake, caught
    /// in debug builds; in others it removes them all.
    pub fn drop_front(&mut self, count: usize) {
        debug_assert!(count <= self.len(), "{count} of {} dropped", self.len());
        self.front = (self.front + count).min(self.items.len());
        if self.front == self.items.len() {
            self.items.clear();
            self.front = 0;
        } else if self.front * 2 >= self.items.len() {
            self.items.drain(..self.front);
            self.front = 0;
        }
    }

    /// Removes every item.
    pub fn clear(&mut self) {
        self.drop_front(self.len());
    }

    /// The items kept: those queued, and those that have left but are not yet dropped.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.items.len()
    }

    /// The items the queue holds room for.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.items.capacity()
    }
}

impl<T: Copy> Queue<T> {
    pub fn extend_from_slice(&mut self, items: &[T]) {
        self.items.extend_from_slice(items);
    }
}

impl<T> Extend<T> for Queue<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, items: I) {
        self.items.extend(items);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_leave_from_the_front_in_order() {
        let mut queue = Queue::default();
        queue.extend(0..10);
        queue.drop_front(3);
        assert_eq!(queue.as_slice(), [3, 4, 5, 6, 7, 8, 9]);
        queue.push_back(10);
        queue.drop_front(5);
        assert_eq!(queue.as_slice(), [8, 9, 10]);
        queue.as_mut_slice()[0] = 80;
        queue.drop_front(3);
        assert!(queue.is_empty());
        queue.push_back(11);
        assert_eq!((queue.as_slice(), queue.len()), (&[11][..], 1));
    }

    /// A queue that never empties, with one item leaving for each that comes, holds at most
    /// about twice what is live.
    #[test]
    fn memory_stays_bounded_while_the_queue_never_empties() {
        let mut queue = Queue::default();
        queue.extend(0..4);
        for n in 4..100_000 {
            queue.push_back(n);
            queue.drop_front(1);
            assert_eq!(queue.as_slice()[0], n - 3);
        }
        assert_eq!(queue.len(), 4);
        assert!(queue.held() <= 8, "{}", queue.held());
        assert!(queue.capacity() <= 16, "{}", queue.capacity());
    }
}
