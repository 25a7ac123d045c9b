//! The buddy allocator over one GPU's VRAM pages (orders 0..=[`MAX_ORDER`]), with a dirty
//! bit per page so that only pages that held data need zeroing.

use std::collections::BTreeSet;

/// Largest buddy block: 2^18 pages (1 GiB).
pub const MAX_ORDER: u32 = 18;

/// A run of physically contiguous VRAM pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// First VRAM page number.
    pub page: u64,
    /// Number of pages.
    pub npages: u64,
}

/// The buddy allocator's state.
#[derive(Debug)]
pub(crate) struct Buddy {
    /// Free blocks per order, by first page (lowest address first).
    pub(crate) free: Vec<BTreeSet<u64>>,
    pub(crate) free_pages: u64,
    /// The fewest free pages there ever were (for the peak use).
    pub(crate) min_free: u64,
    /// One bit per page: the page held data since it was last zeroed.
    dirty: Vec<u64>,
}

impl Buddy {
    pub(crate) fn new(npages: u64) -> Self {
        let mut b = Buddy {
            free: vec![BTreeSet::new(); MAX_ORDER as usize + 1],
            free_pages: 0,
            min_free: npages,
            dirty: vec![0; npages.div_ceil(64) as usize],
        };
        b.free_run(0, npages);
        b
    }

    /// The largest aligned block at `page` that fits in `len` pages.
    pub(crate) fn block_order(page: u64, len: u64) -> u32 {
        let align = if page == 0 { MAX_ORDER } else { page.trailing_zeros() };
        align.min(len.ilog2()).min(MAX_ORDER)
    }

    /// Returns `[page, page + len)` to the free lists, merging buddies.
    pub(crate) fn free_run(&mut self, mut page: u64, mut len: u64) {
        while len > 0 {
            let order = Self::block_order(page, len);
            self.free_block(page, order);
            page += 1 << order;
            len -= 1 << order;
        }
    }

    pub(crate) fn free_block(&mut self, mut page: u64, mut order: u32) {
        self.free_pages += 1 << order;
        while order < MAX_ORDER {
            let buddy = page ^ (1 << order);
            if !self.free[order as usize].remove(&buddy) {
                break;
            }
            page = page.min(buddy);
            order += 1;
        }
        self.free[order as usize].insert(page);
    }

    /// Takes one free block of exactly `order`, splitting a larger one if needed.
    pub(crate) fn take_block(&mut self, order: u32) -> Option<u64> {
        let from = (order..=MAX_ORDER).find(|&o| !self.free[o as usize].is_empty())?;
        let page = self.free[from as usize].pop_first()?;
        for o in (order..from).rev() {
            self.free[o as usize].insert(page + (1 << o)); // the upper half stays free
        }
        self.free_pages -= 1 << order;
        self.min_free = self.min_free.min(self.free_pages);
        Some(page)
    }

    /// The largest order with a free block, at most `max`.
    pub(crate) fn largest_free(&self, max: u32) -> Option<u32> {
        (0..=max).rev().find(|&o| !self.free[o as usize].is_empty())
    }

    /// `n` pages as runs, largest blocks first; `None` (nothing taken) if fewer are free.
    pub(crate) fn alloc(&mut self, n: u64) -> Option<Vec<Run>> {
        if n == 0 || n > self.free_pages {
            return None;
        }
        let mut runs: Vec<Run> = Vec::new();
        let mut left = n;
        while left > 0 {
            let want = left.ilog2().min(MAX_ORDER);
            // A block of the wanted size, else the largest smaller one.
            let order = if (want..=MAX_ORDER).any(|o| !self.free[o as usize].is_empty()) {
                want
            } else {
                self.largest_free(want).expect("free_pages says there is room")
            };
            let page = self.take_block(order).expect("block exists");
            let len = 1u64 << order;
            match runs.last_mut() {
                Some(r) if r.page + r.npages == page => r.npages += len,
                _ => runs.push(Run { page, npages: len }),
            }
            left -= len;
        }
        Some(runs)
    }

    pub(crate) fn set_dirty(&mut self, page: u64, len: u64) {
        for p in page..page + len {
            self.dirty[(p / 64) as usize] |= 1 << (p % 64);
        }
    }

    /// Clears the dirty bits of `[page, page + len)` and returns the dirty sub-runs.
    pub(crate) fn take_dirty(&mut self, page: u64, len: u64, out: &mut Vec<Run>) {
        for p in page..page + len {
            let (w, b) = ((p / 64) as usize, 1u64 << (p % 64));
            if self.dirty[w] & b != 0 {
                self.dirty[w] &= !b;
                match out.last_mut() {
                    Some(r) if r.page + r.npages == p => r.npages += 1,
                    _ => out.push(Run { page: p, npages: 1 }),
                }
            }
        }
    }
}
