//! Migrations of one range at a time, as the rest of the instance asks for them: the range
//! is taken out of the tree while it moves (the migration works on it alone), and VRAM
//! eviction, which moves *other* ranges back to RAM, is the callback the migration calls
//! when VRAM is short.

use super::{SvmInner, SvmState};
use crate::error::{Error, Result};
use crate::events::MigrateTrigger;
use crate::gpu::vram::Bo;
use crate::migrate::{self, Ctx, VRAM_TO_VRAM_TRIES};
use crate::range::PageNo;
use crate::sys::PAGE_SHIFT;

impl SvmInner {
    /// What a migration works with, under the XNACK mode `xnack`.
    pub(crate) fn ctx(&self, xnack: bool) -> Ctx<'_> {
        Ctx { engine: &self.engine, devs: &self.devs, events: &self.events, xnack }
    }

    /// RAM -> VRAM of `[first, last]` of the range starting at `key`, to GPU `g`.
    pub(crate) fn move_to_vram(
        &self,
        st: &mut SvmState,
        key: PageNo,
        (first, last): (PageNo, PageNo),
        g: usize,
        trigger: MigrateTrigger,
    ) -> Result<u64> {
        let mut r = st.tree.take(key).ok_or(Error::NotMapped { addr: first << PAGE_SHIFT })?;
        let cx = self.ctx(st.xnack);
        let res = migrate::to_vram(&cx, &mut r, (first, last), g, trigger, &mut |victims| {
            self.evict_holders(st, victims)
        });
        st.tree.insert(r);
        res
    }

    /// VRAM -> RAM of `[first, last]` of the range starting at `key`.
    pub(crate) fn move_to_ram(
        &self,
        st: &mut SvmState,
        key: PageNo,
        (first, last): (PageNo, PageNo),
        trigger: MigrateTrigger,
    ) -> Result<u64> {
        let mut r = st.tree.take(key).ok_or(Error::NotMapped { addr: first << PAGE_SHIFT })?;
        let res = migrate::to_ram(&self.ctx(st.xnack), &mut r, (first, last), trigger);
        st.tree.insert(r);
        res
    }

    /// TTM eviction: every range (still in the tree: the one migrating is not) whose VRAM is
    /// one of `victims` goes back to RAM; a range that only partly comes back is tried again.
    fn evict_holders(&self, st: &mut SvmState, victims: &[Bo]) {
        let holders: Vec<(PageNo, PageNo)> = st
            .tree
            .iter()
            .filter(|r| r.vram.as_ref().is_some_and(|b| victims.iter().any(|v| v.same(&b.bo))))
            .map(|r| (r.start, r.last))
            .collect();
        for (s, l) in holders {
            for _ in 0..VRAM_TO_VRAM_TRIES {
                let done = st.tree.get(s).is_none_or(|r| r.vram.is_none());
                if done || self.move_to_ram(st, s, (s, l), MigrateTrigger::TtmEviction).is_err() {
                    break;
                }
            }
        }
    }
}
