//! Mapping ranges on GPUs: KFD's `svm_range_validate_and_map` and
//! `svm_range_unmap_from_gpus`. The decisions (which GPUs, which pages) come from the range
//! state and `policy`; the page-table writes are the device layer's.

use crate::addr::Pages;
use crate::attr::SvmFlags;
use crate::error::Result;
use crate::events::{EventKind, UnmapTrigger};
use crate::gpu::Devices;
use crate::gpu::GpuIdx;
use crate::gpu::pagetable::{Pte, PteFlags};
use crate::range::{GpuMask, PageNo, SvmRange};
use crate::sys::vma;
use std::time::Instant;

/// The PTE bits a range gets in a VMA: writable unless GPU_RO or the VMA is read-only,
/// executable with GPU_EXEC, coherent with COHERENT or EXT_COHERENT.
fn pte_flags(r: &SvmRange, v: &vma::Vma) -> PteFlags {
    let f = r.attrs.flags;
    PteFlags {
        writable: v.write && !f.contains(SvmFlags::GPU_RO),
        exec: f.contains(SvmFlags::GPU_EXEC),
        coherent: f.intersects(SvmFlags::COHERENT | SvmFlags::EXT_COHERENT),
    }
}

/// Validates and maps `[first, last]` (inside range `r`) on the GPUs in `gpus`.
///
/// Walks the VMAs, stepping over holes (memory unmapped a moment ago: SET_ATTR checked
/// there were none, and the munmap event, once applied, trims the range); one without
/// read permission is unmapped from the GPUs instead (PROT_NONE); otherwise every page is
/// mapped, system pages as themselves. `mapped_to_gpu` is set when the walk ends on a mapped piece, and the
/// validation time is recorded. An empty GPU set does nothing.
pub fn validate_and_map(
    devs: &Devices,
    r: &mut SvmRange,
    gpus: GpuMask,
    first: PageNo,
    last: PageNo,
) -> Result<()> {
    if gpus == GpuMask::EMPTY {
        return Ok(());
    }
    let mut mapped_last_piece = false;
    for piece in vma::mapped_pieces(Pages::new(first, last)) {
        let vma::Piece { first: page, last: end, vma: v } = piece?;
        if !v.read {
            unmap_from_gpus(devs, r, Pages::new(page, end), UnmapTrigger::UnmapFromCpu);
            mapped_last_piece = false;
        } else {
            let flags = pte_flags(r, &v);
            // VRAM is never mapped across PCIe peers: a GPU that cannot reach the BO's
            // VRAM (another GPU, not in its hive) gets no entry for the pages there, and
            // still maps the pages of the piece that are in system memory (a range partly
            // moved back to RAM by another GPU's fault: skipping the whole range left the
            // faulting GPU retrying until its fault became fatal).
            let owner = r.vram.as_ref().map(|b| b.bo.gpu());
            for g in gpus.iter() {
                let reach = owner.is_none_or(|o| devs.same_hive(o, g));
                let (start, vram) = (r.start, r.vram.as_ref());
                let mut any = false;
                devs.gpus[g].pt.map(page, end - page + 1, |i| {
                    let p = page + i;
                    match vram {
                        Some(b) if r.in_vram.get(p - start) => {
                            if !reach {
                                return Pte::INVALID;
                            }
                            any = true;
                            Pte::vram(b.bo.gpu(), b.bo.vram_page(b.offset + (p - start)), flags)
                        }
                        _ => {
                            any = true;
                            Pte::system(flags)
                        }
                    }
                });
                if any {
                    r.mapped_gpus.insert(g);
                }
            }
            mapped_last_piece = true;
        }
    }
    if mapped_last_piece {
        r.mapped_to_gpu = true;
    }
    r.validate_timestamp = Some(Instant::now());
    Ok(())
}

/// Maps the whole range `r` again on `gpus` after its queues were evicted (the restore
/// work): a GPU that still holds entries for the range but is no longer among `gpus` (it
/// lost access, or only the GPU holding the data is mapped under XNACK on) is unmapped
/// first. Its entries may point at VRAM that the migration which evicted the queues has
/// freed; left there, they let that GPU read and write whatever range reuses the VRAM.
pub fn remap_range(devs: &Devices, r: &mut SvmRange, gpus: GpuMask) -> Result<()> {
    for g in r.mapped_gpus.iter().filter(|&g| !gpus.contains(g)) {
        unmap_on(devs, g, r.pages(), UnmapTrigger::MmuNotify);
        r.mapped_gpus.remove(g);
    }
    validate_and_map(devs, r, gpus, r.start, r.last)
}

/// Unmaps `[first, last]` of range `r` from its GPUs, with an UNMAP_FROM_GPU event per GPU.
/// A range mapped nowhere is left alone; unmapping the whole range clears `mapped_to_gpu`.
///
/// KFD unmaps from the ACCESS and IN_PLACE GPUs; usvm also clears the GPUs that lost access
/// since they mapped the range (KFD keeps such stale entries until the next invalidation;
/// here a stale entry could outlive the memory it points at).
pub fn unmap_from_gpus(devs: &Devices, r: &mut SvmRange, pages: Pages, trigger: UnmapTrigger) {
    if r.mapped_gpus == GpuMask::EMPTY {
        // No GPU holds entries, but a range validated on an empty GPU set is still
        // `mapped_to_gpu`: an unmap over its whole extent clears that, as the kernel's does
        // (the `ioctl` fuzzer found an XNACK-on migration leaving it set).
        if pages.first <= r.start && pages.last >= r.last {
            r.mapped_to_gpu = false;
        }
        return;
    }
    let Some(pages) = pages.intersect(r.pages()) else {
        return;
    };
    let Pages { first, last } = pages;
    let gpus = r.mapped_gpus | r.attrs.access | r.attrs.access_in_place;
    if first == r.start && last == r.last {
        r.mapped_to_gpu = false;
        r.mapped_gpus = GpuMask::EMPTY;
    }
    for g in gpus.iter() {
        unmap_on(devs, g, pages, trigger);
    }
}

/// Clears `[first, last]` from GPU `g`'s page table, with its UNMAP_FROM_GPU event.
fn unmap_on(devs: &Devices, g: GpuIdx, pages: Pages, trigger: UnmapTrigger) {
    let d = &devs.gpus[g];
    devs.events.emit(|| EventKind::UnmapFromGpu {
        start: pages.first.get(),
        npages: pages.len(),
        gpu: d.id,
        trigger,
    });
    d.pt.unmap(pages);
}
