//! One staging batch of a migration to VRAM, as one value: its three phases (collect,
//! copy, finalize) are methods, and the state of every page is one entry of one array, as
//! `mm/migrate_device.c` keeps its source and destination arrays. Whatever ends the batch
//! early (an error, a panic), dropping it settles every page that was not committed: the
//! data goes back to the application, or, when it cannot, into the range's VRAM where a
//! later fault finds it. No page taken from the application is ever left behind in
//! `staging_out`, which the next batch reuses.

use super::{Engine, Fill, MIGRATE_COLLECT_RETRIES, merge_ops, runs};
use crate::error::Result;
use crate::gpu::sdma::CopyEngine;
use crate::range::{PageNo, SvmRange, VramBacking};
use crate::sys::{self, PAGE_SHIFT, PAGE_SIZE};
use std::sync::atomic::Ordering;

/// Where one page of a batch stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Slot {
    /// Not taken from the application (unmapped meanwhile, or busy): it stays in RAM.
    Left,
    /// Marked out of RAM; whether its page moved is not known yet.
    Marked,
    /// Taken, and the application had no page there: it becomes zeroed VRAM.
    Hole,
    /// Taken: its data waits in `staging_out`.
    Staged,
    /// Its data is in the range's VRAM (copied, zero-filled or rescued), not committed yet.
    InVram,
    /// Committed: the range owns the page in VRAM.
    Committed,
    /// Settled in RAM (given back to the application, or dropped by it meanwhile).
    Returned,
}

/// One staging batch `[first, first + slots.len())` of a migration of `r` to VRAM.
pub(super) struct ToVramBatch<'a> {
    eng: &'a Engine,
    r: &'a mut SvmRange,
    backing: VramBacking,
    first: PageNo,
    slots: Vec<Slot>,
    /// Some page of the batch was a hole: `staging_out` is not fully populated.
    holes: bool,
    /// The batch is over and `staging_out` released.
    done: bool,
}

impl<'a> ToVramBatch<'a> {
    /// Setup: marks the pages `[first, last]` out of RAM (CPU faults on them now wait for
    /// the migration) and collects them into `staging_out` with `UFFDIO_MOVE`, retrying busy
    /// pages [`MIGRATE_COLLECT_RETRIES`] times. Pages the application unmapped (`gone`) are
    /// left alone.
    pub(super) fn collect(
        eng: &'a Engine,
        r: &'a mut SvmRange,
        backing: VramBacking,
        (first, last): (PageNo, PageNo),
    ) -> Result<Self> {
        let n = last - first + 1;
        let mut slots = vec![Slot::Left; n as usize];
        {
            let mut out = eng.out.lock();
            let gone = eng.gone.lock();
            for (s, l) in runs(first, last, |p| !gone.contains(p)) {
                out.insert(s, l);
                slots[(s - first) as usize..=(l - first) as usize].fill(Slot::Marked);
            }
        }
        let mut b = ToVramBatch { eng, r, backing, first, slots, holes: false, done: false };
        b.move_out();
        b.classify()?;
        Ok(b)
    }

    /// Moves the marked pages into `staging_out`. Every page stays marked until the page
    /// tables tell which ones moved: the mark is what keeps the fault reader from filling a
    /// page with zeros while its data sits in `staging_out`.
    fn move_out(&mut self) {
        let (eng, first, n) = (self.eng, self.first, self.slots.len() as u64);
        let mut i = 0u64;
        let mut tries = 0;
        while i < n {
            // Moves happen under the `out` lock and only for pages still marked: the reader
            // takes an munmap / MADV_DONTNEED / mremap event in under the same lock, so a
            // page the application unmapped is never taken from whatever it maps at that
            // address next (a MAP_FIXED mapping's fresh data was moved away and thrown out
            // with the old mapping's).
            let out = eng.out.lock();
            if !out.contains(first + i) {
                i += 1;
                tries = 0;
                continue;
            }
            let mut k = 1;
            while i + k < n && out.contains(first + i + k) {
                k += 1;
            }
            let src = ((first + i) << PAGE_SHIFT) as usize;
            let len = k as usize * PAGE_SIZE;
            let injected = eng
                .inject_busy
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(1))
                .is_ok();
            let (done, err) = if injected {
                (0, Some(libc::EBUSY))
            } else {
                eng.own.move_pages(self.staged(i), src, len, true)
            };
            drop(out);
            let done = (done / PAGE_SIZE) as u64;
            if done > 0 {
                tries = 0;
            }
            i += done;
            match err {
                None => {}
                Some(_) if tries + 1 < MIGRATE_COLLECT_RETRIES => tries += 1,
                // Not moved (shared after fork, pinned): left in RAM, the range is mixed.
                Some(_) => {
                    i += 1;
                    tries = 0;
                }
            }
        }
    }

    /// What was collected is what the page tables say, not what the moves reported: a page
    /// in `staging_out` moved (its data is copied); a page the application still has did
    /// not (it stays in RAM); a page in neither place is a hole (zeroed VRAM).
    fn classify(&mut self) -> Result<()> {
        let n = self.slots.len();
        let has = sys::pagemap::has_memory(self.eng.staging_out, n)?;
        let app_has = sys::pagemap::has_memory((self.first << PAGE_SHIFT) as usize, n)?;
        let mut out = self.eng.out.lock();
        for i in 0..n {
            if self.slots[i] != Slot::Marked {
                continue;
            }
            self.slots[i] = if has[i] {
                Slot::Staged
            } else if !app_has[i] {
                self.holes = true;
                Slot::Hole
            } else {
                let p = self.first + i as u64;
                out.remove(p, p);
                Slot::Left
            };
        }
        Ok(())
    }

    /// The staging page of the batch's `i`-th page.
    fn staged(&self, i: u64) -> usize {
        self.eng.staging_out + i as usize * PAGE_SIZE
    }

    /// The VRAM page (host address) of the batch's `i`-th page.
    fn vram(&self, i: u64) -> usize {
        self.backing.bo.host_addr(self.backing.offset + (self.first + i - self.r.start))
    }

    /// Pages: the staged pages go to VRAM through the copy engine, holes become zeroed VRAM.
    /// Pages of a failed chunk stay staged (finalize gives them back); the copy's error is
    /// returned for the caller to report.
    pub(super) fn copy(&mut self, sdma: &CopyEngine) -> Result<()> {
        let staged: Vec<u64> =
            (0..self.slots.len() as u64).filter(|&i| self.slot(i) == Slot::Staged).collect();
        let ops = merge_ops(staged.iter().map(|&i| (self.staged(i), self.vram(i))));
        let (arrived, err) = sdma.copy_sync(&ops);
        for &i in staged.iter().take(arrived as usize) {
            self.slots[i as usize] = Slot::InVram;
        }
        for i in 0..self.slots.len() as u64 {
            if self.slot(i) == Slot::Hole {
                sys::mmap::fill(self.vram(i), PAGE_SIZE, 0);
                self.slots[i as usize] = Slot::InVram;
            }
        }
        err
    }

    fn slot(&self, i: u64) -> Slot {
        self.slots[i as usize]
    }

    /// Finalize: gives back the pages still staged (their copy failed, or the batch ended
    /// early), commits the pages in VRAM to the range and frees the RAM pages. Returns how
    /// many pages the range now owns in VRAM.
    pub(super) fn finalize(mut self) -> Result<u64> {
        self.finish()
    }

    fn finish(&mut self) -> Result<u64> {
        if self.done {
            return Ok(0);
        }
        self.done = true;
        self.settle_marked();
        self.give_back_staged();
        let moved = self.commit();
        let full = !self.holes && self.slots.iter().all(|&s| s == Slot::Committed);
        self.eng.release_staging_out(self.slots.len() as u64, full)?;
        Ok(moved)
    }

    /// Pages still marked (the batch ended before the page tables were read): staged when
    /// `staging_out` has their page, else left in RAM (or a hole, which the application
    /// then reads as zeros, as it did).
    fn settle_marked(&mut self) {
        for i in 0..self.slots.len() as u64 {
            if self.slot(i) == Slot::Marked {
                let staged = sys::pagemap::has_memory(self.staged(i), 1).map_or(true, |v| v[0]);
                self.slots[i as usize] = if staged { Slot::Staged } else { Slot::Returned };
                if !staged {
                    self.eng.forget_out(self.first + i, self.first + i);
                }
            }
        }
    }

    /// Gives every staged page back to the application, run by run with `UFFDIO_MOVE`. A
    /// page that cannot move back is copied back (`UFFDIO_COPY`); one that cannot be copied
    /// either is written into the range's VRAM by the CPU (through the BO's host mapping,
    /// as through a large BAR) and committed there, where the next access faults it back.
    fn give_back_staged(&mut self) {
        let n = self.slots.len() as u64;
        let mut i = 0;
        while i < n {
            if self.slot(i) != Slot::Staged {
                i += 1;
                continue;
            }
            let mut k = 1;
            while i + k < n && self.slot(i + k) == Slot::Staged {
                k += 1;
            }
            let (settled, err) = self.eng.commit_in(self.first + i, k, self.staged(i), Fill::Move);
            self.slots[i as usize..(i + settled) as usize].fill(Slot::Returned);
            i += settled;
            if let Some(move_errno) = err {
                self.rescue(i, move_errno);
                i += 1;
            }
        }
    }

    /// The `i`-th page could not move back (`move_errno`): copy it back, else keep it in VRAM.
    fn rescue(&mut self, i: u64, move_errno: i32) {
        let page = self.first + i;
        let addr = format_args!("{:#x}", page << PAGE_SHIFT);
        match self.eng.commit_in(page, 1, self.staged(i), Fill::Copy) {
            (1, _) => {
                tracing::warn!(
                    addr,
                    move_errno,
                    "a page could not move back after a failed copy: copied back"
                );
                self.slots[i as usize] = Slot::Returned;
            }
            (_, copy_errno) => {
                tracing::warn!(
                    addr,
                    move_errno,
                    ?copy_errno,
                    "a page could not go back to RAM after a failed copy: kept in VRAM"
                );
                sys::mmap::copy(self.vram(i), self.staged(i), PAGE_SIZE);
                self.slots[i as usize] = Slot::InVram;
            }
        }
    }

    /// Commits the pages in VRAM that are still wanted; the others are settled in RAM.
    fn commit(&mut self) -> u64 {
        let eng = self.eng;
        let mut out = eng.out.lock();
        let dropped = eng.dropped.lock();
        let remapped = eng.remapped.lock();
        let mut moved = 0;
        for i in 0..self.slots.len() as u64 {
            if self.slot(i) != Slot::InVram {
                continue;
            }
            // A page the application dropped since (its REMOVE event read, its zap perhaps
            // not yet done) may have been collected with its old data: that data is not
            // committed; the page stays absent and reads zero. Reading the event also took
            // the page out of `out`, and a fault since may have given it a zero page and
            // cleared its `dropped` mark: a page no longer marked out is not committed
            // either, unless mremap moved its mark (its data then goes to VRAM, and from
            // there to the new place).
            let p = self.first + i;
            if (out.contains(p) || remapped.contains(p)) && !dropped.contains(p) {
                self.r.in_vram.set(p - self.r.start, true);
                self.slots[i as usize] = Slot::Committed;
                moved += 1;
            } else {
                out.remove(p, p);
                self.slots[i as usize] = Slot::Returned;
            }
        }
        moved
    }
}

impl Drop for ToVramBatch<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            tracing::warn!(error = %e, "releasing a migration batch failed");
        }
    }
}
