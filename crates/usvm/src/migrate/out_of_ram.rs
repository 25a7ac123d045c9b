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
    pub(crate) fn mark_for_collection(&mut self, s: PageNo, l: PageNo) -> Vec<(PageNo, PageNo)> {
        let marked = super::runs(s, l, |p| !self.gone.contains(p));
        for &(a, b) in &marked {
            self.out.insert(a, b);
        }
        marked
    }

    /// `[s, l]` is settled: its data is back in the application, stayed there, or is gone.
    pub(crate) fn unmark(&mut self, s: PageNo, l: PageNo) {
        self.out.remove(s, l);
    }

    /// The application unmapped `[s, l]` (the event is read, the change not applied yet).
    pub(crate) fn on_unmap(&mut self, s: PageNo, l: PageNo) {
        self.out.remove(s, l);
        self.dropped.remove(s, l);
        self.gone.insert(s, l);
    }

    /// The application dropped `[s, l]` (MADV_DONTNEED): the kernel zaps it after the read.
    pub(crate) fn on_remove(&mut self, s: PageNo, l: PageNo) {
        self.out.remove(s, l);
        self.dropped.insert(s, l);
    }

    /// mremap moved `[s, l]` to page `to`: faults at the new place on pages whose data is out
    /// of RAM must wait for it, and a migration under way must not take the old pages for
    /// dropped.
    pub(crate) fn on_remap(&mut self, s: PageNo, l: PageNo, to: PageNo) {
        for p in s..=l {
            if self.out.contains(p) {
                self.out.insert(to + (p - s), to + (p - s));
                self.remapped.insert(p, p);
            }
        }
        self.out.remove(s, l);
        self.gone.insert(s, l);
    }

    /// The queued unmap of `[s, l]` is applied: the pages are forgotten.
    pub(crate) fn unmap_applied(&mut self, s: PageNo, l: PageNo) {
        self.gone.remove(s, l);
    }

    /// The queued mremap from `[s, l]` is applied: the data followed the mapping.
    pub(crate) fn remap_applied(&mut self, s: PageNo, l: PageNo) {
        self.remapped.remove(s, l);
    }

    /// `[s, l]` got a zero page: any zap is done, what the application writes there is new.
    pub(crate) fn zero_filled(&mut self, s: PageNo, l: PageNo) {
        self.dropped.remove(s, l);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_skip_gone_pages_and_commits_skip_dropped_ones() {
        let mut o = OutOfRam::default();
        o.on_unmap(12, 13);
        assert_eq!(o.mark_for_collection(10, 15), vec![(10, 11), (14, 15)]);
        assert!(o.is_out(10) && !o.is_out(12));
        o.on_remove(11, 11);
        assert!(!o.committable(11) && !o.keeps_vram_data(11), "dropped: its old data never comes back");
        assert!(o.committable(10) && o.keeps_vram_data(10));
        o.zero_filled(11, 11);
        o.unmark(10, 10);
        assert!(!o.is_out(10) && !o.committable(10));
        o.unmap_applied(12, 13);
        assert_eq!(o.mark_for_collection(12, 13), vec![(12, 13)]);
    }

    #[test]
    fn a_remap_moves_the_marks_and_keeps_the_old_data_for_the_new_place() {
        let mut o = OutOfRam::default();
        o.mark_for_collection(100, 103);
        o.unmark(101, 101);
        o.on_remap(100, 103, 200);
        assert!(o.is_out(200) && !o.is_out(201) && o.is_out(202));
        assert!(!o.is_out(100) && o.is_remapped(100) && !o.is_remapped(101));
        assert!(o.keeps_vram_data(100), "a migration under way keeps the data for the new place");
        assert!(o.mark_for_collection(100, 100).is_empty(), "the old place is gone");
        o.remap_applied(100, 103);
        assert!(!o.keeps_vram_data(100));
    }
}
