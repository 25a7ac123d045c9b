//! VRAM -> RAM (`svm_migrate_vram_to_ram`): fresh RAM pages, a copy, and a move (or a
//! copy) into the application, page data never leaving VRAM before it is settled.

use super::*;
use crate::addr::Pages;
use crate::gpu::GpuIdx;

/// VRAM -> RAM of the pages `[first, last]` of `r` (`svm_migrate_vram_to_ram`). Returns the
/// number of pages that moved.
pub fn to_ram(cx: &Ctx, r: &mut SvmRange, pages: Pages, trigger: MigrateTrigger) -> Result<u64> {
    let Pages { first, last } = pages;
    let xnack = cx.xnack;
    let Some(g) = cx.gpu_of(r.actual_loc) else { return Ok(0) };
    let mut inv = Invalidation::None;
    let id = cx.devs.gpus[g].id.0;
    let mut moved = 0;
    let mut result = Ok(());
    // A single page is its own VMA piece (a CPU fault at granularity 0): no walk needed.
    // Holes are stepped over: pages the application unmapped have nothing to come back to
    // (their VRAM copies go when the munmap event is applied), and a fault on a page next
    // to them must still be served (it got SIGBUS when its granule met a hole whose event
    // the reader had not read yet).
    let bounds: Vec<Result<(PageNo, PageNo)>> = if first == last {
        vec![Ok((first, last))]
    } else {
        vma::mapped_pieces(pages).map(|p| p.map(|p| (p.first, p.last))).collect()
    };
    for b in bounds {
        let (page, end) = match b {
            Ok(b) => b,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        let locs = (r.attrs.prefetch_loc.to_raw(), r.attrs.preferred_loc.to_raw());
        match piece_events(cx, locs, (page, end), (id, 0), trigger, || {
            invalidate_piece(cx, r, (page, end), xnack, &mut inv);
            piece_to_ram(cx, r, g, page, end)
        }) {
            Ok(n) => moved += n,
            Err(e) => result = Err(e),
        }
    }
    cx.events.count(g, Counter::PageOut, moved);
    if r.vram_pages() == 0 {
        r.actual_loc = Location::Sysmem;
        r.vram = None;
    }
    end_invalidation(r, (first, last), xnack);
    restore(cx, r, inv, xnack);
    // Only now, with the bookkeeping done, may the threads that faulted on these pages go on.
    let _ = cx.engine.uffd.wake(first.addr(), pages.bytes());
    log_migration("VRAM -> RAM", (first, last), g, trigger, moved, result.is_ok());
    result.map(|()| moved)
}

/// The three phases for one VMA piece `[ps, pl]` of `r`, VRAM of GPU `g` -> RAM.
fn piece_to_ram(cx: &Ctx, r: &mut SvmRange, g: GpuIdx, ps: PageNo, pl: PageNo) -> Result<u64> {
    let eng = &cx.engine;
    let dev = &cx.devs.gpus[g];
    let Some(backing) = r.vram.clone() else { return Ok(0) };
    let mut moved = 0;
    for (rs, rl) in runs(ps, pl, |p| r.page_in_vram(p)) {
        let mut bs = rs;
        while bs <= rl {
            let bl = rl.min(bs + STAGING_PAGES - 1);
            let n = bl - bs + 1;
            let bytes = n as usize * PAGE_SIZE;
            if n < SMALL_BATCH_PAGES {
                moved += small_to_ram(cx, r, g, &backing, bs, n)?;
                bs = bl + 1;
                continue;
            }
            // --- setup: fresh RAM pages (from the pool when it has them).
            let fresh = eng.fresh_pages(n)?;
            // --- pages: copy VRAM -> the new RAM pages.
            let ops = merge_ops((0..n).map(|i| {
                (backing.bo.host_addr(backing.offset + (bs + i - r.start)), fresh + i as usize * PAGE_SIZE)
            }));
            let (arrived, copy_err) = dev.sdma.copy_sync(&ops);
            // --- finalize: move the copies into the application, drop the VRAM pages
            // (`to_ram` wakes the waiting threads at the end).
            let (settled, err) = eng.commit_in(bs, arrived, fresh, Fill::Move);
            eng.forget_vram_copies(r, bs, settled);
            if let Some(errno) = err {
                // SAFETY: the staging-in piece this migration owns; what arrived moved out.
                unsafe { sys::mmap::discard(fresh, bytes)? };
                return Err(Error::Sys { call: "UFFDIO_MOVE", errno });
            }
            moved += arrived;
            // Whatever did not move in (a failed copy chunk) is dropped, leaving the area empty;
            // a large area also gives back its (now empty) page tables.
            if arrived < n || n >= SMALL_BATCH_PAGES {
                // SAFETY: the staging-in piece this migration owns; what arrived moved out.
                unsafe { sys::mmap::discard(fresh, bytes)? };
            }
            copy_err?;
            bs = bl + 1;
        }
    }
    Ok(moved)
}

/// VRAM -> RAM of a batch smaller than a huge page (a CPU fault at a small granularity):
/// per run of contiguous VRAM pages, one `UFFDIO_COPY` allocates the RAM pages, copies
/// the data and maps them (setup, pages and finalize in one system call, without the TLB
/// shootdown that moving a staging page out would cost). The copy engine accounts for the
/// copy, so its fault injection applies as to a chunk.
fn small_to_ram(
    cx: &Ctx,
    r: &mut SvmRange,
    g: GpuIdx,
    backing: &VramBacking,
    bs: PageNo,
    n: u64,
) -> Result<u64> {
    let eng = &cx.engine;
    let dev = &cx.devs.gpus[g];
    let start = r.start;
    let host = |p: PageNo| backing.bo.host_addr(backing.offset + (p - start));
    let mut i = 0u64;
    while i < n {
        let src = host(bs + i);
        let mut k = 1;
        while i + k < n && host(bs + i + k) == src + k as usize * PAGE_SIZE {
            k += 1;
        }
        dev.sdma.account_external(k as usize * PAGE_SIZE)?;
        let (settled, err) = eng.commit_in(bs + i, k, src, Fill::Copy);
        eng.forget_vram_copies(r, bs + i, settled);
        if let Some(errno) = err {
            return Err(Error::Sys { call: "UFFDIO_COPY", errno });
        }
        i += k;
    }
    Ok(n)
}
