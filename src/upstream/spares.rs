//! Spare connections: one per pool, opened ahead of need, so that a session needing a
//! connection of its own (`SUBSCRIBE`, `MULTI`…) takes one without a round trip. Only for a
//! Redis at a fixed address: in cluster mode the node is known only when a command needs it,
//! and in sentinel mode the primary may change while a spare waits.

use std::sync::Arc;

use bytes::BytesMut;

use super::{handshake, Handshaken, PoolKey, Upstream};

impl Upstream {
    /// A spare connection for `key` that is still open, if one is ready, and whether a new
    /// one must be opened in its place (none is opening already).
    pub(super) fn take_spare(&self, key: PoolKey) -> (Option<Handshaken>, bool) {
        let (taken, replace) = {
            let mut spares = self.spares.lock();
            match spares.get_mut(&key) {
                Some(spare) => {
                    let taken = spare.take();
                    let replace = taken.is_some();
                    (taken, replace)
                }
                None => {
                    spares.insert(key, None);
                    (None, true)
                }
            }
        };
        // A Redis restart or `timeout` may have closed it while it waited.
        let open = taken.filter(|spare| {
            let mut probe = BytesMut::with_capacity(16);
            matches!(spare.stream.read_available(&mut probe),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock)
        });
        (open, replace)
    }

    /// Opens the first spare connection for `key`, in the background.
    pub(super) fn open_spare(self: &Arc<Self>, key: PoolKey) {
        self.spares.lock().insert(key, None);
        self.replace_spare_later(key);
    }

    pub(super) fn replace_spare_later(self: &Arc<Self>, key: PoolKey) {
        let upstream = Arc::clone(self);
        tokio::spawn(async move { upstream.replace_spare(key).await });
    }

    /// Opens a spare connection for `key`, whose place is marked as opening.
    pub(super) async fn replace_spare(&self, key: PoolKey) {
        let (protocol, db) = key;
        let opened = handshake::connect(&self.settings, protocol, db, &[], false).await;
        let mut spares = self.spares.lock();
        match opened {
            Ok(connected) => {
                spares.insert(key, Some(connected));
            }
            // Tried again when a session next needs one.
            Err(_) => {
                spares.remove(&key);
            }
        }
    }
}
