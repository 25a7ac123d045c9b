//! Migrations of one range at a time, as the rest of the instance asks for them: the range
//! is taken out of the tree while it moves (the migration works on it alone), and VRAM
//! eviction, which moves *other* ranges back to RAM, is the callback the migration calls
//! when VRAM is short. Every move is recorded with its cause (`history.rs`).

use super::{SvmInner, SvmState};
use crate::addr::Pages;
use crate::attr::Location;
use crate::error::{Error, Result};
use crate::events::{MigrateTrigger, clock_ns};
use crate::gpu::GpuIdx;
use crate::gpu::vram::Bo;
use crate::history::{Cause, Move};
use crate::migrate::{self, Ctx, VRAM_TO_VRAM_TRIES};
use crate::range::PageNo;
use crate::sys::PAGE_SHIFT;

impl SvmInner {
    /// What a migration works with, under the XNACK mode `xnack`.
    pub(crate) fn ctx(&self, xnack: bool) -> Ctx<'_> {
        Ctx { engine: &self.engine, devs: &self.devs, events: &self.events, xnack, populated_only: false }
    }

    /// RAM -> VRAM of `[first, last]` of the range starting at `key`, to GPU `g`, because of
    /// `cause`.
    pub(crate) fn move_to_vram(
        &self,
        st: &mut SvmState,
        key: PageNo,
        pages: Pages,
        g: GpuIdx,
        (trigger, cause): (MigrateTrigger, Cause),
    ) -> Result<u64> {
        let first = pages.first;
        let mut r = st.tree.take(key).ok_or(Error::NotMapped { addr: first.addr() as u64 })?;
        // The pages that move come from RAM, or from another GPU's VRAM (through RAM).
        let from = match r.actual_loc {
            Location::Gpu(x) if x != self.gpus[g].id => r.actual_loc,
            _ => Location::Sysmem,
        };
        let at_ns = clock_ns();
        let id = if self.record_history { self.history.reserve_id() } else { 0 };
        let for_gpu = self.gpus[g].id;
        let mut cx = self.ctx(st.xnack);
        cx.populated_only = !self.rules.migrates_unpopulated(trigger);
        let to = Location::Gpu(for_gpu);
        let before = if r.actual_loc == to { r.vram_pages() } else { 0 };
        let res = migrate::to_vram(&cx, &mut r, pages, g, trigger, &mut |victims| {
            let cause = Cause::Eviction { for_gpu, for_addr: first.addr() };
            self.evict_holders(st, victims, (cause, id))
        });
        // A migration that failed part way may still have moved pages: they are recorded too.
        let n = match &res {
            Ok(n) => *n,
            Err(_) if r.actual_loc == to => r.vram_pages().saturating_sub(before),
            Err(_) => 0,
        };
        let range = (r.start.addr(), (r.npages() << PAGE_SHIFT) as usize);
        st.tree.insert(r);
        self.observe(pages, n, to, trigger);
        self.record(
            Move { start: 0, npages: n as usize, from, to, trigger, cause, at_ns, id, linked: None },
            first,
            range,
        );
        res
    }

    /// VRAM -> RAM of `[first, last]` of the range starting at `key`, because of `cause`.
    pub(crate) fn move_to_ram(
        &self,
        st: &mut SvmState,
        key: PageNo,
        pages: Pages,
        trigger: MigrateTrigger,
        cause: Cause,
    ) -> Result<u64> {
        self.move_to_ram_linked(st, key, pages, trigger, (cause, 0))
    }

    fn move_to_ram_linked(
        &self,
        st: &mut SvmState,
        key: PageNo,
        pages: Pages,
        trigger: MigrateTrigger,
        (cause, link): (Cause, u64),
    ) -> Result<u64> {
        let first = pages.first;
        let mut r = st.tree.take(key).ok_or(Error::NotMapped { addr: first.addr() as u64 })?;
        let (from, at_ns, before) = (r.actual_loc, clock_ns(), r.vram_pages());
        let res = migrate::to_ram(&self.ctx(st.xnack), &mut r, pages, trigger);
        // A migration that failed part way (an EAGAIN the reader thread cannot wait out)
        // may still have moved pages: they are recorded too (a retry finds them in RAM).
        let n = match &res {
            Ok(n) => *n,
            Err(_) => before.saturating_sub(r.vram_pages()),
        };
        let range = (r.start.addr(), (r.npages() << PAGE_SHIFT) as usize);
        st.tree.insert(r);
        self.observe(pages, n, Location::Sysmem, trigger);
        let linked = (link != 0).then_some(link);
        let to = Location::Sysmem;
        self.record(
            Move { start: 0, npages: n as usize, from, to, trigger, cause, at_ns, id: 0, linked },
            first,
            range,
        );
        res
    }

    /// Tells the placement rules that `n` pages of `pages` moved because of a fault (the
    /// moves thrashing detection counts; prefetches and evictions are not back-and-forth
    /// of the application's accesses).
    fn observe(&self, pages: Pages, n: u64, to: Location, trigger: MigrateTrigger) {
        if n > 0 && matches!(trigger, MigrateTrigger::PagefaultCpu | MigrateTrigger::PagefaultGpu) {
            self.rules.observe_move(&mut self.thrash.lock(), pages, to.to_raw(), clock_ns());
        }
    }

    /// Records a move of `m.npages` pages from page `first` (nothing when none moved or the
    /// record is off).
    pub(super) fn record(&self, mut m: Move, first: PageNo, range: (usize, usize)) {
        if !self.record_history || m.npages == 0 {
            return;
        }
        m.start = first.addr();
        self.history.record(m, range);
    }

    /// TTM eviction: every range (still in the tree: the one migrating is not) whose VRAM is
    /// one of `victims` goes back to RAM, recorded as caused by the move `link` needs; a
    /// range that only partly comes back is tried again.
    fn evict_holders(&self, st: &mut SvmState, victims: &[Bo], (cause, link): (Cause, u64)) {
        let holders: Vec<(PageNo, PageNo)> = st
            .tree
            .iter()
            .filter(|r| r.vram.as_ref().is_some_and(|b| victims.iter().any(|v| v.same(&b.bo))))
            .map(|r| (r.start, r.last))
            .collect();
        for (s, l) in holders {
            for _ in 0..VRAM_TO_VRAM_TRIES {
                let done = st.tree.get(s).is_none_or(|r| r.vram.is_none());
                let trigger = MigrateTrigger::TtmEviction;
                if done
                    || self
                        .move_to_ram_linked(st, s, Pages::new(s, l), trigger, (cause.clone(), link))
                        .is_err()
                {
                    break;
                }
            }
        }
    }
}
