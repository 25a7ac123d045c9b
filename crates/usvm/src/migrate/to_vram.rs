//! RAM -> VRAM (`svm_migrate_ram_to_vram`): a range at a time, a VMA piece at a time, a
//! staging batch ([`ToVramBatch`]) at a time.

use super::*;

/// How many rounds of TTM eviction an allocation may ask for before it fails.
pub const EVICTION_ROUNDS: usize = 3;

/// A BO for the whole range `r` on GPU `g`; when VRAM is short, the least recently used
/// BOs are handed to `evict` (every range sharing them goes back to RAM, trigger
/// TTM_EVICTION) and the allocation tries again (section 6.5).
fn alloc_evicting(cx: &Ctx, r: &SvmRange, g: usize, evict: Evict) -> Result<crate::gpu::vram::Bo> {
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
                    gpu = g,
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
    (first, last): (PageNo, PageNo),
    g: usize,
    trigger: MigrateTrigger,
    evict: Evict,
) -> Result<u64> {
    let xnack = cx.xnack;
    // VRAM -> VRAM: empty the old GPU first (section 4.7).
    let mut tries = 0;
    while let Some(cur) = cx.gpu_of(r.actual_loc) {
        if cur == g {
            break;
        }
        if tries == VRAM_TO_VRAM_TRIES {
            return Err(Error::Deadlock);
        }
        let (s, l) = (r.start, r.last);
        to_ram(cx, r, (s, l), trigger)?;
        tries += 1;
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
    for vma::Piece { first: page, last: end, vma: v } in vma::mapped_pieces(first, last).map_while(Result::ok)
    {
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

/// The three phases for one anonymous VMA piece `[ps, pl]` of `r`, RAM -> VRAM of GPU `g`,
/// one staging batch ([`ToVramBatch`]) at a time.
fn piece_to_vram(cx: &Ctx, r: &mut SvmRange, g: usize, ps: PageNo, pl: PageNo) -> Result<u64> {
    let dev = &cx.devs.gpus[g];
    let backing = r.vram.clone().expect("BO allocated");
    let mut moved = 0;
    for (rs, rl) in runs(ps, pl, |p| !r.page_in_vram(p)) {
        let mut bs = rs;
        while bs <= rl {
            let bl = rl.min(bs + STAGING_PAGES - 1);
            let mut batch = ToVramBatch::collect(cx.engine, r, backing.clone(), (bs, bl))?;
            if let Err(e) = batch.copy(&dev.sdma) {
                // Its pages go back to the application; the rest of the range moves.
                tracing::debug!(gpu = g, error = %e, "a copy chunk to VRAM failed");
            }
            moved += batch.finalize()?;
            bs = bl + 1;
        }
    }
    Ok(moved)
}
