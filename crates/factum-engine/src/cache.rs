//! A cache of log blocks for point reads (one event through the index).
//!
//! Reading a stream fetches events scattered over the log; without a cache
//! each costs a system call and a copy. Only blocks that lie wholly below
//! the committed end of the log are cached, so a cached block never changes
//! (the log is append-only; a sealed segment a scavenge rewrites is
//! swapped while no read runs, and its blocks are forgotten then, ADR 33). Eviction is first-in, first-out, bounded by bytes.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use parking_lot::Mutex;

/// Size of a cached block.
pub const BLOCK: u64 = 64 * 1024;

/// Cached blocks keyed by (segment number, block number). Blocks are
/// `BLOCK` bytes, or a compressed segment's smaller blocks
/// (`compress::BLOCK_BYTES`, ADR 43); the bound is in bytes.
pub struct BlockCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    blocks: HashMap<(u32, u64), Bytes>,
    order: VecDeque<(u32, u64)>,
    bytes: usize,
}

impl BlockCache {
    /// A cache holding at most `capacity_bytes` of blocks (0 disables it).
    pub fn new(capacity_bytes: usize) -> Self {
        BlockCache {
            capacity: capacity_bytes,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The cached block, if any.
    pub fn get(&self, segment: u32, block: u64) -> Option<Bytes> {
        self.inner.lock().blocks.get(&(segment, block)).cloned()
    }

    /// Forgets every block of `segment` (its file was replaced by a
    /// rewrite, ADR 33).
    pub fn forget_segment(&self, segment: u32) {
        let mut inner = self.inner.lock();
        let Inner {
            blocks,
            order,
            bytes,
        } = &mut *inner;
        blocks.retain(|(s, _), b| {
            if *s == segment {
                *bytes -= b.len();
            }
            *s != segment
        });
        order.retain(|(s, _)| *s != segment);
    }

    /// Caches a full, committed block.
    pub fn put(&self, segment: u32, block: u64, bytes: Bytes) {
        if self.capacity == 0 {
            return;
        }
        let mut inner = self.inner.lock();
        inner.bytes += bytes.len();
        match inner.blocks.insert((segment, block), bytes) {
            Some(old) => inner.bytes -= old.len(),
            None => inner.order.push_back((segment, block)),
        }
        while inner.bytes > self.capacity {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if let Some(b) = inner.blocks.remove(&old) {
                inner.bytes -= b.len();
            }
        }
    }
}
