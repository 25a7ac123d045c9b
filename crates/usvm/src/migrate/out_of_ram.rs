//! The "out of RAM" protocol in one type: which pages of the application have their data
//! out of RAM (moved, or being moved, by usvm), and what the application did to such pages
//! meanwhile. One lock guards all of it (`Engine::out`); the reader thread takes the
//! application's munmap / MADV_DONTNEED / mremap events in under it, and data enters the
//! application only under it (`Engine::commit_in`), so the two never cross.
//!
//! ```text
//!            mark_for_collection                 unmark (data back in RAM, or nothing
//!  in RAM ----------------------> out of RAM -----------------------> to bring back)
//!                                   |  on_remove (MADV_DONTNEED): unmarked + dropped
//!                                   |  on_unmap (munmap): unmarked + gone
//!                                   |  on_remap (mremap): the mark follows the page to its
//!                                   |      new place, the old one is remapped + gone
//!  dropped --zero_filled-->  (the zap is done: the application's data is new)
//!  gone    --unmap_applied-> (the queued change is applied: the ranges forget the pages)
//!  remapped --remap_applied-> (the data followed the mapping)
//! ```

use super::pageset::PageSet;
use crate::addr::Pages;
use crate::addr::each_page;
use crate::range::PageNo;

/// Pages out of RAM and what happened to them (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct OutOfRam {
    /// Pages whose data usvm moved out of the application's RAM (or is moving).
    out: PageSet,
    /// Pages the application dropped (MADV_DONTNEED) whose zap may not have happened yet:
    /// the REMOVE event comes before the kernel zaps the pages, so a migration can still
    /// collect their old data in between. Such data must never be committed or come back.
    dropped: PageSet,
    /// Pages that mremap moved elsewhere while their data was out of RAM (their marks moved
    /// to the new place): until the queued change is applied, a migration under way keeps
    /// such a page's data in VRAM, or commits it there, instead of taking it for dropped.
    remapped: PageSet,
    /// Pages the application unmapped (munmap, or the old place of an mremap) whose change
    /// is read but not applied yet: whatever is mapped there now is not theirs, so no
    /// migration marks or collects them.
    gone: PageSet,
}

impl OutOfRam {
    /// Whether `p`'s data is out of RAM.
    pub(crate) fn is_out(&self, p: PageNo) -> bool {
        self.out.contains(p)
    }

    /// Whether data may be put back into `p`: out of RAM and not dropped since.
    pub(crate) fn committable(&self, p: PageNo) -> bool {
        self.out.contains(p) && !self.dropped.contains(p)
    }

    /// Whether a migration to VRAM may commit `p`'s collected data: still out of RAM (or its
    /// mark moved with an mremap, the data to follow it) and not dropped.
    pub(crate) fn keeps_vram_data(&self, p: PageNo) -> bool {
        (self.out.contains(p) || self.remapped.contains(p)) && !self.dropped.contains(p)
    }

    /// Whether mremap moved `p` away while its data was out of RAM.
    pub(crate) fn is_remapped(&self, p: PageNo) -> bool {
        self.remapped.contains(p)
    }

    /// Marks the pages of `[s, l]` that are not gone for collection; returns the runs marked.
    pub(crate) fn mark_for_collection(
        &mut self,
        Pages { first: s, last: l }: Pages,
    ) -> Vec<(PageNo, PageNo)> {
        let marked = super::runs(s, l, |p| !self.gone.contains(p));
        for &(a, b) in &marked {
            self.out.insert(Pages::new(a, b));
        }
        marked
    }

    /// `[s, l]` is settled: its data is back in the application, stayed there, or is gone.
    pub(crate) fn unmark(&mut self, pages: Pages) {
        self.out.remove(pages);
    }

    /// The application unmapped `[s, l]` (the event is read, the change not applied yet).
    pub(crate) fn on_unmap(&mut self, pages: Pages) {
        self.out.remove(pages);
        self.dropped.remove(pages);
        self.gone.insert(pages);
    }

    /// The application dropped `[s, l]` (MADV_DONTNEED): the kernel zaps it after the read.
    pub(crate) fn on_remove(&mut self, pages: Pages) {
        self.out.remove(pages);
        self.dropped.insert(pages);
    }

    /// mremap moved `[s, l]` to page `to`: faults at the new place on pages whose data is out
    /// of RAM must wait for it, and a migration under way must not take the old pages for
    /// dropped.
    pub(crate) fn on_remap(&mut self, pages: Pages, to: PageNo) {
        let Pages { first: s, last: l } = pages;
        for p in each_page(s, l) {
            if self.out.contains(p) {
                self.out.insert(Pages::new(to + (p - s), to + (p - s)));
                self.remapped.insert(Pages::one(p));
            }
        }
        self.out.remove(pages);
        self.gone.insert(pages);
    }

    /// The queued unmap of `[s, l]` is applied: the pages are forgotten.
    pub(crate) fn unmap_applied(&mut self, pages: Pages) {
        self.gone.remove(pages);
    }

    /// The queued mremap from `[s, l]` is applied: the data followed the mapping.
    pub(crate) fn remap_applied(&mut self, pages: Pages) {
        self.remapped.remove(pages);
    }

    /// `[s, l]` got a zero page: any zap is done, what the application writes there is new.
    pub(crate) fn zero_filled(&mut self, pages: Pages) {
        self.dropped.remove(pages);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::pg;

    #[test]
    fn marks_skip_gone_pages_and_commits_skip_dropped_ones() {
        let mut o = OutOfRam::default();
        o.on_unmap(Pages::new(pg(12), pg(13)));
        assert_eq!(
            o.mark_for_collection(Pages::new(pg(10), pg(15))),
            vec![(pg(10), pg(11)), (pg(14), pg(15))]
        );
        assert!(o.is_out(pg(10)) && !o.is_out(pg(12)));
        o.on_remove(Pages::new(pg(11), pg(11)));
        assert!(
            !o.committable(pg(11)) && !o.keeps_vram_data(pg(11)),
            "dropped: its old data never comes back"
        );
        assert!(o.committable(pg(10)) && o.keeps_vram_data(pg(10)));
        o.zero_filled(Pages::new(pg(11), pg(11)));
        o.unmark(Pages::new(pg(10), pg(10)));
        assert!(!o.is_out(pg(10)) && !o.committable(pg(10)));
        o.unmap_applied(Pages::new(pg(12), pg(13)));
        assert_eq!(o.mark_for_collection(Pages::new(pg(12), pg(13))), vec![(pg(12), pg(13))]);
    }

    #[test]
    fn a_remap_moves_the_marks_and_keeps_the_old_data_for_the_new_place() {
        let mut o = OutOfRam::default();
        o.mark_for_collection(Pages::new(pg(100), pg(103)));
        o.unmark(Pages::new(pg(101), pg(101)));
        o.on_remap(Pages::new(pg(100), pg(103)), pg(200));
        assert!(o.is_out(pg(200)) && !o.is_out(pg(201)) && o.is_out(pg(202)));
        assert!(!o.is_out(pg(100)) && o.is_remapped(pg(100)) && !o.is_remapped(pg(101)));
        assert!(o.keeps_vram_data(pg(100)), "a migration under way keeps the data for the new place");
        assert!(o.mark_for_collection(Pages::new(pg(100), pg(100))).is_empty(), "the old place is gone");
        o.remap_applied(Pages::new(pg(100), pg(103)));
        assert!(!o.keeps_vram_data(pg(100)));
    }
}
