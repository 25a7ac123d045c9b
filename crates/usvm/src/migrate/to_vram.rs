//! RAM -> VRAM (`svm_migrate_ram_to_vram`): a range at a time, a VMA piece at a time, a
//! staging batch ([`ToVramBatch`]) at a time.

use super::*;
use crate::addr::Pages;
use crate::gpu::GpuIdx;

/// How many rounds of TTM eviction an allocation may ask for before it fails.
pub const EVICTION_ROUNDS: usize = 3;

/// A BO for the whole range `r` on GPU `g`; when VRAM is short, the least recently used
/// BOs are handed to `evict` (every range sharing them goes back to RAM, trigger
/// TTM_EVICTION) and the allocation tries again (section 6.5).
fn alloc_evicting(cx: &Ctx, r: &SvmRange, g: GpuIdx, evict: Evict) -> Result<crate::gpu::vram::Bo> {
    let npages = r.npages();
    let vram = &cx.devs.gpus[g].vram;
    let mut round = 0;
    loop {
        match vram.alloc(npages, Clear::No) {
            Ok(bo) => return Ok(bo),
            Err(e) if round == EVICTION_ROUNDS => return Err(e),
            Err(e) => {
                let victims = vram.choose_victims(npages);
                if victims.is_empty() {
                    return Err(e);
                }
                let ids: Vec<u64> = victims.iter().map(|b| b.id()).collect();
                tracing::debug!(
                    gpu = %g,
                    need_pages = npages,
                    victims = ids.len(),
                    "VRAM full: evicting LRU ranges"
                );
                evict(&victims);
                drop(victims);
                vram.end_eviction(&ids);
                round += 1;
            }
        }
    }
}

/// RAM -> VRAM of the pages `[first, last]` of `r`, to GPU `g` (`svm_migrate_to_vram`). A
/// range on another GPU first goes through RAM. Returns the number of pages that moved;
/// pages that could not be collected stay in RAM.
pub fn to_vram(
    cx: &Ctx,
    r: &mut SvmRange,
    pages: Pages,
    g: GpuIdx,
    trigger: MigrateTrigger,
    evict: Evict,
) -> Result<u64> {
    let Pages { first, last } = pages;
    let xnack = cx.xnack;
    empty_other_gpu(cx, r, g, trigger)?;
    if cx.populated_only && !pages.iter().zip(populated(pages)?).any(|(p, has)| has && !r.page_in_vram(p)) {
        return Ok(0); // nothing holds data: nothing to move, no VRAM to take
    }
    // Watched before any VRAM is taken: memory another instance watches is refused
    // (EADDRINUSE) with nothing to undo (a BO taken first stayed with the range).
    register(cx.engine, r)?;
    let npages = r.npages();
    let dev = &cx.devs.gpus[g];
    let _reservation = dev.vram.reserve(npages * PAGE_SIZE as u64)?;
    if r.vram.is_none() {
        let bo = alloc_evicting(cx, r, g, evict)?;
        r.vram = Some(VramBacking { bo, offset: 0 });
    }
    let mut inv = Invalidation::None;
    let mut moved = 0;
    let mut result = Ok(());
    // Holes (memory unmapped since) are stepped over; a failed lookup ends the migration
    // early, without error.
    for vma::Piece { first: page, last: end, vma: v } in vma::mapped_pieces(pages).map_while(Result::ok) {
        let ids = (0, dev.id.0);
        let locs = (r.attrs.prefetch_loc.to_raw(), r.attrs.preferred_loc.to_raw());
        let res = piece_events(cx, locs, (page, end), ids, trigger, || {
            invalidate_piece(cx, r, (page, end), xnack, &mut inv);
            if v.migratable() { piece_to_vram(cx, r, g, page, end) } else { Ok(0) }
        });
        match res {
            Ok(n) => moved += n,
            Err(e) => result = Err(e),
        }
    }
    cx.events.count(g, Counter::PageIn, moved);
    // From what the range holds, not from `moved`: a piece that failed after committing
    // pages (its batch settled them on the way out) reports none, and dropping the BO of
    // committed pages would lose them.
    if r.vram_pages() > 0 {
        r.actual_loc = Location::Gpu(dev.id);
    } else if r.actual_loc == Location::Sysmem {
        r.vram = None;
    }
    if let Some(b) = &r.vram {
        b.bo.touch();
    }
    end_invalidation(r, (first, last), xnack);
    restore(cx, r, inv, xnack);
    log_migration("RAM -> VRAM", (first, last), g, trigger, moved, result.is_ok());
    result.map(|()| moved)
}

/// VRAM -> VRAM: a range on another GPU than `g` first goes back to RAM (section 4.7),
/// `VRAM_TO_VRAM_TRIES` attempts, then EDEADLK.
fn empty_other_gpu(cx: &Ctx, r: &mut SvmRange, g: GpuIdx, trigger: MigrateTrigger) -> Result<()> {
    let mut tries = 0;
    while let Some(cur) = cx.gpu_of(r.actual_loc) {
        if cur == g {
            break;
        }
        if tries == VRAM_TO_VRAM_TRIES {
            return Err(Error::Deadlock);
        }
        to_ram(cx, r, r.pages(), trigger)?;
        tries += 1;
    }
    Ok(())
}

/// The three phases for one anonymous VMA piece `[ps, pl]` of `r`, RAM -> VRAM of GPU `g`,
/// one staging batch ([`ToVramBatch`]) at a time.
fn piece_to_vram(cx: &Ctx, r: &mut SvmRange, g: GpuIdx, ps: PageNo, pl: PageNo) -> Result<u64> {
    let dev = &cx.devs.gpus[g];
    let backing = r.vram.clone().expect("BO allocated");
    let mut moved = 0;
    // Without `populated_only` every page counts as holding data (holes become zeroed VRAM).
    let has = if cx.populated_only { populated(Pages::new(ps, pl))? } else { Vec::new() };
    let holds = |p: PageNo| has.get((p - ps) as usize).is_none_or(|&h| h);
    for (rs, rl) in runs(ps, pl, |p| !r.page_in_vram(p) && holds(p)) {
        let mut bs = rs;
        while bs <= rl {
            let bl = rl.min(bs + STAGING_PAGES - 1);
            let mut batch = ToVramBatch::collect(cx.engine, r, backing.clone(), Pages::new(bs, bl))?;
            if let Err(e) = batch.copy(&dev.sdma) {
                // Its pages go back to the application; the rest of the range moves.
                tracing::debug!(gpu = %g, error = %e, "a copy chunk to VRAM failed");
            }
            moved += batch.finalize()?;
            bs = bl + 1;
        }
    }
    Ok(moved)
}

/// For each page of `pages`: whether the application's memory holds data there (present
/// or swapped out; a never-populated page, or one dropped with MADV_DONTNEED, does not).
fn populated(pages: Pages) -> Result<Vec<bool>> {
    sys::pagemap::has_memory(pages.first.addr(), pages.len() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attr::GpuId;
    use crate::range::{GpuMask, RangeAttrs};
    use std::sync::Arc;

    /// A migration needs no instance: an engine, GPUs, events and one range.
    struct Rig {
        engine: Engine,
        devs: Devices,
        events: Arc<EventHub>,
    }

    impl Rig {
        fn new(vram: u64) -> Rig {
            let ids = [GpuId(0x1111)];
            let events = Arc::new(EventHub::new(ids.to_vec()));
            Rig {
                engine: Engine::new().unwrap(),
                devs: Devices::new(&ids, vram, false, events.clone()).unwrap(),
                events,
            }
        }

        fn cx(&self) -> Ctx<'_> {
            Ctx {
                engine: &self.engine,
                devs: &self.devs,
                events: &self.events,
                xnack: false,
                populated_only: false,
            }
        }
    }

    fn range_over(addr: usize, len: usize) -> SvmRange {
        let s = PageNo::of_addr(addr);
        SvmRange::new(s, s + (len / PAGE_SIZE) as u64 - 1, RangeAttrs::new_default(9, GpuMask::EMPTY))
    }

    #[test]
    fn one_range_goes_to_vram_and_back_with_every_byte() {
        let rig = Rig::new(16 << 20);
        let len = 2 << 20;
        let addr = sys::mmap::map_anon_aligned(len, 2 << 20).unwrap();
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        // SAFETY: memory this test mapped and owns, live until its unmap.
        unsafe { sys::mmap::copy_to(addr, &data[..len - PAGE_SIZE]) }; // the last page stays a hole
        let mut r = range_over(addr, len);
        let all = r.pages();
        let mut evicted = 0;
        let moved =
            to_vram(&rig.cx(), &mut r, all, GpuIdx::new(0), MigrateTrigger::Prefetch, &mut |_| evicted += 1)
                .unwrap();
        assert_eq!((moved, r.vram_pages(), evicted), (512, 512, 0));
        assert_eq!(r.actual_loc, Location::Gpu(GpuId(0x1111)));
        assert!(
            sys::pagemap::has_memory(addr, 512).unwrap().iter().all(|&p| !p),
            "the pages left the process"
        );
        assert_eq!(rig.events.counters(GpuIdx::new(0)).page_in, 512);
        let moved = to_ram(&rig.cx(), &mut r, all, MigrateTrigger::Prefetch).unwrap();
        assert_eq!((moved, r.vram_pages(), r.actual_loc), (512, 0, Location::Sysmem));
        let mut back = vec![0u8; len];
        // SAFETY: memory this test mapped and owns, live until its unmap.
        unsafe { sys::mmap::copy_from(addr, &mut back) };
        assert!(back[..len - PAGE_SIZE] == data[..len - PAGE_SIZE], "every byte came back");
        assert!(back[len - PAGE_SIZE..].iter().all(|&b| b == 0), "the hole reads zero");
        unregister_interval(&rig.engine, r.pages());
        // SAFETY: memory this test mapped; nothing uses it afterwards.
        unsafe { sys::mmap::unmap(addr, len).unwrap() };
    }

    #[test]
    fn short_vram_asks_the_eviction_callback_then_fails() {
        let rig = Rig::new(4 << 20);
        let len = 2 << 20;
        let addr = sys::mmap::map_anon_aligned(len, 2 << 20).unwrap();
        // SAFETY: memory this test mapped and owns, live until its unmap.
        unsafe { sys::mmap::fill(addr, len, 1) };
        let mut r = range_over(addr, len);
        let all = r.pages();
        // Another BO holds 3 MiB of the 4: the allocation asks for it to be evicted (and,
        // since this callback keeps it, fails after its rounds).
        let squatter = rig.devs.gpus[0].vram.alloc(768, crate::gpu::vram::Clear::Yes).unwrap();
        let mut asked = Vec::new();
        let res = to_vram(&rig.cx(), &mut r, all, GpuIdx::new(0), MigrateTrigger::Prefetch, &mut |v| {
            asked.extend(v.iter().map(|b| b.id()))
        });
        assert!(res.is_err(), "the squatter stayed");
        assert!(asked.contains(&squatter.id()), "asked to evict {asked:?}");
        assert!(asked.len() <= EVICTION_ROUNDS, "a bounded number of rounds");
        assert_eq!(r.vram_pages(), 0);
        let mut b = [0u8; 1];
        // SAFETY: memory this test mapped and owns, live until its unmap.
        unsafe { sys::mmap::copy_from(addr + 4096, &mut b) };
        assert_eq!(b[0], 1, "the data stayed in RAM");
        unregister_interval(&rig.engine, r.pages());
        // SAFETY: memory this test mapped; nothing uses it afterwards.
        unsafe { sys::mmap::unmap(addr, len).unwrap() };
    }
}
