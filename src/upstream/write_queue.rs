//! What a connection has accepted but not yet written: the sessions' own buffers, written
//! with vectored writes so that forwarding copies nothing.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::time::Instant;

use bytes::{Buf, Bytes};
use smallvec::SmallVec;

use super::connection::{Batch, Pending};
use super::tracking::Fills;
use crate::net::Stream;

/// Iovecs handed to one vectored write.
const MAX_IOVECS: usize = 64;

/// Batches accepted but not yet fully written, kept as the sessions' own buffers so that
/// forwarding copies nothing; written with vectored writes.
#[derive(Default)]
pub(super) struct WriteQueue {
    chunks: VecDeque<Bytes>,
    pub(super) bytes: usize,
}

impl WriteQueue {
    /// Queues a batch, preceded by the tracking commands a cache fill needs.
    pub(super) fn take(
        &mut self,
        batch: Batch,
        pending: &mut VecDeque<Pending>,
        taken_at: Instant,
        fills: &mut Fills<'_>,
    ) {
        if batch.tracked {
            for command in fills.commands_before_fill() {
                self.push_own(command, pending, taken_at);
            }
        }
        self.push(batch, pending, taken_at);
    }

    pub(super) fn push(
        &mut self,
        batch: Batch,
        pending: &mut VecDeque<Pending>,
        taken_at: Instant,
    ) {
        if batch.count > 0 {
            pending.push_back(Pending {
                reply_to: Some(batch.reply_to),
                remaining: batch.count,
                taken_at,
                // A reply that comes alone needs no list: its length is the run's.
                measured: batch.measured.is_some() && batch.count > 1,
                lengths: batch.measured.unwrap_or_default(),
                _hold: batch.hold,
                lane: batch.lane,
            });
        }
        self.append(batch.bytes);
    }

    /// One command of keyward's own, whose reply is checked rather than delivered.
    pub(super) fn push_own(
        &mut self,
        command: Bytes,
        pending: &mut VecDeque<Pending>,
        taken_at: Instant,
    ) {
        pending.push_back(Pending {
            reply_to: None,
            remaining: 1,
            taken_at,
            measured: false,
            lengths: Vec::new(),
            _hold: None,
            lane: None,
        });
        self.append(command);
    }

    pub(super) fn append(&mut self, bytes: Bytes) {
        self.bytes += bytes.len();
        self.chunks.push_back(bytes);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Writes as much as the socket takes now.
    pub(super) fn flush(&mut self, stream: &Stream) -> io::Result<()> {
        while !self.is_empty() {
            let slices: SmallVec<[IoSlice<'_>; MAX_IOVECS]> = self
                .chunks
                .iter()
                .take(MAX_IOVECS)
                .map(|chunk| IoSlice::new(chunk))
                .collect();
            let result = stream.try_write_vectored(&slices);
            drop(slices);
            let written = match result {
                Ok(written) => written,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(error) => return Err(error),
            };
            self.advance(written);
        }
        Ok(())
    }

    pub(super) fn advance(&mut self, mut written: usize) {
        self.bytes -= written;
        while written > 0 {
            let Some(front) = self.chunks.front_mut() else {
                return;
            };
            if front.len() > written {
                front.advance(written);
                return;
            }
            written -= front.len();
            self.chunks.pop_front();
        }
    }
}
