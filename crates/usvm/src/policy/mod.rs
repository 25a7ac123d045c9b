//! Placement decisions as pure functions: they compute, they never act.
//!
//! - [`kernel`]: the kernel's heuristics (`svm_range_set_max_pages`, the best prefetch and
//!   restore locations, which GPUs map a range), the seed's (a PREFERRED_LOC change
//!   migrates), and what a SET_ATTR or a GPU retry fault moves. [`Policy::Kernel`] uses
//!   these alone.
//! - [`Policy::Adaptive`] adds rules beyond the kernel's, with named tunables
//!   ([`AdaptiveTunables`]).
//!
//! Everything here is deterministic and unit tested; the instance acts on the answers.

pub mod adaptive;
pub mod kernel;

pub use adaptive::{Mitigation, Thrashing};
pub use kernel::*;

use crate::addr::{PageNo, Pages};
use crate::events::MigrateTrigger;
use std::time::Duration;

/// What a fault asks a placement policy about.
pub struct FaultView<'a> {
    /// The faulting page.
    pub page: PageNo,
    /// The faulting page's granule (the kernel's extent), within the range.
    pub granule: Pages,
    /// What the migration may never leave: the range and the faulting VMA (computed on
    /// demand: finding the VMA is a system call the kernel's rules do not need).
    pub limit: &'a dyn Fn() -> Pages,
    /// Whether a page is already where the fault's migration goes (any page: the rules may
    /// look at the neighbouring ranges' pages, never move them).
    pub resident: &'a dyn Fn(PageNo) -> bool,
}

/// The decisions a placement policy makes beyond the kernel's fixed rules (which every
/// policy follows: `kernel.rs`). Each is a pure function of its inputs and of the state
/// the policy records ([`Thrashing`], kept in the instance's state), so that a new policy
/// is one file implementing this trait plus a [`Policy`] variant.
pub trait Placement: Send + Sync + std::fmt::Debug {
    /// The pages a CPU or GPU fault migrates (the kernel: the granule).
    fn fault_extent(&self, f: &FaultView<'_>) -> Pages;
    /// How many pages past `extent` (what [`Self::fault_extent`] chose) the fault also
    /// moves to the same place, in the following ranges of the faulting VMA (the kernel:
    /// none). Recorded as `Cause::Policy`.
    fn read_ahead(&self, f: &FaultView<'_>, extent: Pages) -> u64;
    /// What a GPU fault on `page` does about thrashing (`has_preferred`: the range has a
    /// PREFERRED_LOC), recording that the fault happened.
    fn gpu_fault(&self, st: &mut Thrashing, page: PageNo, now_ns: u64, has_preferred: bool) -> Mitigation;
    /// Records that `pages` moved to `dest` (`Location::to_raw`) at `now_ns`.
    fn observe_move(&self, st: &mut Thrashing, pages: Pages, dest: u32, now_ns: u64);
    /// Whether a migration of this trigger takes pages that were never populated.
    fn migrates_unpopulated(&self, trigger: MigrateTrigger) -> bool;
    /// Whether VRAM eviction prefers the least accessed BOs to the least recently used.
    fn frequency_eviction(&self) -> bool;
    /// Whether a GPU fault is a duplicate (retried without being served) only when its page
    /// is mapped by now, rather than whenever its range was mapped in the last
    /// `RETRY_FAULT_PENDING` (the kernel's filter, which makes a stream of faults on new
    /// pages of one range wait 2 ms each).
    fn exact_duplicates(&self) -> bool;
}

/// [`Policy::Kernel`]: the granule, no thrashing mitigation, zeroed VRAM for untouched
/// pages, LRU eviction.
#[derive(Debug)]
pub struct KernelRules;

impl Placement for KernelRules {
    fn fault_extent(&self, f: &FaultView<'_>) -> Pages {
        f.granule
    }
    fn read_ahead(&self, _: &FaultView<'_>, _: Pages) -> u64 {
        0
    }
    fn gpu_fault(&self, _: &mut Thrashing, _: PageNo, _: u64, _: bool) -> Mitigation {
        Mitigation::None
    }
    fn observe_move(&self, _: &mut Thrashing, _: Pages, _: u32, _: u64) {}
    fn migrates_unpopulated(&self, _: MigrateTrigger) -> bool {
        true
    }
    fn frequency_eviction(&self) -> bool {
        false
    }
    fn exact_duplicates(&self) -> bool {
        false
    }
}

/// The rules of a policy with its tunables.
pub fn rules(p: Policy, t: AdaptiveTunables) -> Box<dyn Placement> {
    match p {
        Policy::Kernel => Box::new(KernelRules),
        Policy::Adaptive => Box::new(adaptive::AdaptiveRules(t)),
    }
}

/// Which placement policy an instance follows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Exactly the kernel's behaviour, nothing more (the default).
    #[default]
    Kernel,
    /// The kernel's behaviour plus density prefetch on faults, thrashing detection and
    /// mitigation, a frequency-aware eviction choice and first-touch placement of
    /// never-populated pages; see [`AdaptiveTunables`].
    Adaptive,
}

impl Policy {
    /// The policy's name, as the command line spells it (`kernel`, `adaptive`).
    pub fn name(self) -> &'static str {
        match self {
            Policy::Kernel => "kernel",
            Policy::Adaptive => "adaptive",
        }
    }

    /// The policy a name means (`kernel`, `adaptive`).
    pub fn from_name(s: &str) -> Option<Policy> {
        match s {
            "kernel" => Some(Policy::Kernel),
            "adaptive" => Some(Policy::Adaptive),
            _ => None,
        }
    }
}

/// The tunables of [`Policy::Adaptive`], with their defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdaptiveTunables {
    /// Density prefetch: a fault's migration grows to the largest aligned block (within
    /// the range, its VMA and 2 MiB) of which more than this percentage of pages would
    /// then be on the destination (UVM's 51 %).
    pub density_percent: u8,
    /// Stream prefetch: the most pages a fault takes after a run of pages already at the
    /// destination (2048 = 8 MiB; the run doubles what each fault of a stream takes).
    pub stream_window_pages: u64,
    /// Thrashing: a block that moved this many times within [`Self::thrash_lapse`] is
    /// thrashing (UVM: 3).
    pub thrash_moves: u32,
    /// Thrashing: the window the moves are counted in.
    pub thrash_lapse: Duration,
    /// Thrashing is tracked per block of this many pages (16 = 64 KiB).
    pub thrash_block_pages: u64,
    /// A pinned block is unpinned after this long without a fault on it (a quiet epoch).
    pub pin_epoch: Duration,
    /// Throttling: how long the faulting side of a thrashing block that cannot be pinned
    /// waits before its migration.
    pub throttle_nap: Duration,
}

impl Default for AdaptiveTunables {
    fn default() -> Self {
        AdaptiveTunables {
            density_percent: 51,
            stream_window_pages: 4096,
            thrash_moves: 3,
            thrash_lapse: Duration::from_millis(50),
            thrash_block_pages: 16,
            pin_epoch: Duration::from_millis(500),
            throttle_nap: Duration::from_micros(200),
        }
    }
}
