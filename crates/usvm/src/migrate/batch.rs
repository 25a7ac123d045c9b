//! One staging batch of a migration to VRAM, as one value: its three phases (collect,
//! copy, finalize) are methods, and the state of every page is one entry of one array, as
//! `mm/migrate_device.c` keeps its source and destination arrays. Whatever ends the batch
//! early (an error, a panic), dropping it settles every page that was not committed: the
//! data goes back to the application, or, when it cannot, into the range's VRAM where a
//! later fault finds it. No page taken from the application is ever left behind in
//! `staging_out`, which the next batch reuses.
//!
//! Collection takes pages with `UFFDIO_MOVE`, which moves only between mappings with the
//! same access flags, protection and mlock state, and only out of writable ones. Pages it
//! refuses (`EINVAL`) are taken the way the application's mapping allows, as the kernel's
//! `migrate_vma_setup` takes them whatever the VMA's protection or lock
//! ([`ToVramBatch::plan_refused`]): a piece of `staging_out` made to match a writable
//! mapping (its protection, `mlock`), or, for a mapping that is not writable, the
//! page-table entries moved with `mremap(MREMAP_DONTUNMAP)`. The batch puts `staging_out`
//! back as it was when it ends.

use super::{Engine, Fill, MIGRATE_COLLECT_RETRIES, STAGING_PAGES, merge_ops};
use crate::addr::Pages;
use crate::error::Result;
use crate::gpu::sdma::CopyEngine;
use crate::range::{PageNo, SvmRange, VramBacking};
use crate::sys::mmap::Prot;
use crate::sys::{self, PAGE_SIZE, vma};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long collection keeps the `out` lock while an `mremap` of refused pages has not
/// visibly happened yet. The move takes microseconds; past this limit (never seen) the lock
/// is let go anyway and a warning says so, rather than risk waiting forever.
const REMAP_HOLD_LIMIT: Duration = Duration::from_secs(2);

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

/// How collection takes a run of pages that `UFFDIO_MOVE` refused (`EINVAL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    /// `UFFDIO_MOVE` again: the run was cut at the end of its mapping, or the mapping is an
    /// ordinary writable one again (the application changed it meanwhile).
    Retry,
    /// `UFFDIO_MOVE` into a staging piece made to match the mapping's protection and lock.
    Matched,
    /// `mremap(MREMAP_DONTUNMAP)` of the run into `staging_out` (a mapping that is not
    /// writable: `UFFDIO_MOVE` takes nothing out of one).
    Remap,
    /// Not taken: left in RAM (locked and not writable, not anonymous private, or a piece
    /// of `staging_out` could not be made to match).
    Leave,
}

/// Where [`ToVramBatch::move_out`] is: the next page, the tries of its run, and the plan
/// for pages `[i, end)` that `UFFDIO_MOVE` refused.
#[derive(Debug, Default)]
struct Cursor {
    i: u64,
    tries: u32,
    plan: Option<(u64, Plan)>,
}

impl Cursor {
    /// Goes past `k` pages, starting the next run's tries afresh.
    fn skip(&mut self, k: u64) {
        self.i += k;
        self.tries = 0;
    }

    /// The plan for the run from `i` (cut to it: `k` shrinks to the planned pages).
    fn planned(&self, k: &mut u64) -> Option<Plan> {
        match self.plan {
            Some((end, how)) if self.i < end => {
                *k = (*k).min(end - self.i);
                Some(how)
            }
            _ => None,
        }
    }
}

/// A piece `[i, i + k)` of `staging_out` that collection changed, undone at the end of the
/// batch ([`ToVramBatch::restore_staging`]).
#[derive(Clone, Copy, Debug)]
struct Changed {
    i: u64,
    k: u64,
    how: Change,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    /// Protection and lock set to the application's mapping's.
    Matched,
    /// Replaced by a new mapping (an `mremap` into it, or its attempt).
    Replaced,
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
    /// Pieces of `staging_out` changed to take refused pages, to put back.
    changed: Vec<Changed>,
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
        pages: Pages,
    ) -> Result<Self> {
        let first = pages.first;
        let n = pages.len();
        let mut slots = vec![Slot::Left; n as usize];
        {
            let mut out = eng.out.lock();
            for (s, l) in out.mark_for_collection(pages) {
                slots[(s - first) as usize..=(l - first) as usize].fill(Slot::Marked);
            }
        }
        let mut b =
            ToVramBatch { eng, r, backing, first, slots, holes: false, changed: Vec::new(), done: false };
        b.move_out();
        b.classify()?;
        Ok(b)
    }

    /// Moves the marked pages into `staging_out`. Every page stays marked until the page
    /// tables tell which ones moved: the mark is what keeps the fault reader from filling a
    /// page with zeros while its data sits in `staging_out`.
    fn move_out(&mut self) {
        let (eng, first, n) = (self.eng, self.first, self.slots.len() as u64);
        let mut c = Cursor::default();
        while c.i < n {
            // Moves happen under the `out` lock and only for pages still marked: the reader
            // takes an munmap / MADV_DONTNEED / mremap event in under the same lock, so a
            // page the application unmapped is never taken from whatever it maps at that
            // address next (a MAP_FIXED mapping's fresh data was moved away and thrown out
            // with the old mapping's).
            let out = eng.out.lock();
            if !out.is_out(first + c.i) {
                c.skip(1);
                continue;
            }
            let mut k = 1;
            while c.i + k < n && out.is_out(first + c.i + k) {
                k += 1;
            }
            let how = c.planned(&mut k);
            match how {
                Some(Plan::Leave) => {
                    drop(out);
                    c.skip(k);
                }
                Some(Plan::Remap) => {
                    // Whatever happened, the page tables tell (`classify`).
                    self.remap_out(out, c.i, k);
                    c.skip(k);
                }
                _ => {
                    let (done, err) = self.move_run(c.i, k);
                    drop(out);
                    self.after_move(&mut c, k, done, err, how);
                }
            }
        }
    }

    /// `UFFDIO_MOVE` of the run `[i, i + k)` into `staging_out` (or an injected refusal):
    /// the pages moved and the error that stopped it.
    fn move_run(&self, i: u64, k: u64) -> (u64, Option<i32>) {
        let eng = self.eng;
        let injected =
            eng.inject_busy.fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(1)).is_ok();
        if injected {
            return (0, Some(libc::EBUSY));
        }
        let src = (self.first + i).addr();
        // SAFETY: application pages registered with usvm's descriptor, marked out of RAM
        // under the `out` lock (a CPU fault on them waits for this batch), moving to the
        // staging area this batch owns; the batch's slots record where each page went.
        let (done, err) = unsafe { eng.own.move_pages(self.staged(i), src, k as usize * PAGE_SIZE, true) };
        ((done / PAGE_SIZE) as u64, err)
    }

    /// What the next step of the collection is after a move of the run `[c.i, c.i + k)`
    /// that took `done` pages and stopped on `err` (`how`: the run's plan, if it had one).
    fn after_move(&mut self, c: &mut Cursor, k: u64, done: u64, err: Option<i32>, how: Option<Plan>) {
        if done > 0 {
            c.tries = 0;
        }
        c.i += done;
        match err {
            None => {}
            // Refused before anything moved: the mappings differ (protection, lock, a
            // mapping that is not writable). Decided once per run, not counted as a try.
            Some(libc::EINVAL) if done == 0 && how.is_none() => c.plan = Some(self.plan_refused(c.i, k)),
            // Refused again as planned: not something collection can take now (the
            // application changed the mapping again, or it differs in what user space
            // cannot see or match, such as a protection key).
            Some(libc::EINVAL) if done == 0 => c.skip(k),
            Some(_) if c.tries + 1 < MIGRATE_COLLECT_RETRIES => c.tries += 1,
            // Not moved (shared after fork, pinned): left in RAM, the range is mixed.
            Some(_) => c.skip(1),
        }
    }

    /// How to take the run `[i, i + k)` that `UFFDIO_MOVE` refused with `EINVAL`, and how
    /// far that answer goes (the run is cut at the end of the mapping that holds its first
    /// page). The kernel's collection takes anonymous private pages whatever the VMA's
    /// protection or mlock (`migrate_vma_collect_pmd` looks at page-table entries only);
    /// `UFFDIO_MOVE` wants the same access flags, protection and `VM_LOCKED` on both sides
    /// and a writable source (`validate_move_areas`). So:
    ///
    /// - writable (read-write-execute, or locked): the piece of `staging_out` gets the same
    ///   protection and lock, and the move is tried again;
    /// - not writable (read-only, PROT_NONE) and not locked: `mremap(MREMAP_DONTUNMAP)`,
    ///   which moves page-table entries whatever the protection ([`Self::remap_out`]);
    /// - not writable and locked: left in RAM (`MREMAP_DONTUNMAP` would unlock the
    ///   application's mapping), as is anything that is not anonymous private memory.
    fn plan_refused(&mut self, i: u64, k: u64) -> (u64, Plan) {
        let src = (self.first + i).addr();
        let v = match vma::lookup(src, false) {
            Ok(Some(v)) if v.migratable() => v,
            // Unmapped meanwhile, or not anonymous private any more: the page tables tell.
            _ => return (i + k, Plan::Leave),
        };
        let k = k.min(((v.end - src) / PAGE_SIZE) as u64);
        let Ok(locked) = vma::locked(src) else { return (i + k, Plan::Leave) };
        let (staged, len) = (self.staged(i), k as usize * PAGE_SIZE);
        if !v.write {
            // A thread that reads the userfaultfd's events must not wait for one.
            if locked || sys::uffd::is_event_reader() {
                return (i + k, Plan::Leave);
            }
            return (i + k, Plan::Remap);
        }
        if v.read && !v.exec && !locked {
            // An ordinary mapping: the run crossed its end, or the application changed it.
            return (i + k, Plan::Retry);
        }
        let prot = Prot { read: v.read, write: true, exec: v.exec };
        self.changed.push(Changed { i, k, how: Change::Matched });
        // SAFETY: a piece of the staging area, which only this batch uses.
        let matched = (prot == Prot::RW || unsafe { sys::mmap::protect_own(staged, len, prot) }.is_ok())
            && (!locked || sys::mmap::lock_own_on_fault(staged, len).is_ok());
        (i + k, if matched { Plan::Matched } else { Plan::Leave })
    }

    /// Takes the page-table entries of the run `[i, i + k)` (one mapping of the application,
    /// not writable) into `staging_out` with `mremap(MREMAP_DONTUNMAP)`: the application's
    /// mapping stays, emptied of these pages and still watched by the userfaultfd, as after
    /// `UFFDIO_MOVE`. Called with the `out` lock held (`out`), which it lets go.
    ///
    /// The move must happen before the reader takes in any munmap / mremap event of these
    /// pages (see [`Self::move_out`]), so it happens under the `out` lock, like every move.
    /// But mremap of watched memory reports a REMAP event and waits until the reader has
    /// read it, and the reader reads events under the `out` lock. So a helper thread runs
    /// the mremap while this thread holds the lock until the move is visible, then lets the
    /// lock go; the reader then reads the REMAP (into usvm's own area: skipped,
    /// [`sys::uffd::Uffd::set_own_area`]) and the mremap returns. The move is visible when
    /// the staging piece, first made write-only as a marker, has been replaced.
    fn remap_out(&mut self, out: parking_lot::MutexGuard<'_, super::out_of_ram::OutOfRam>, i: u64, k: u64) {
        let eng = self.eng;
        let src = (self.first + i).addr();
        let (dst, len) = (self.staged(i), k as usize * PAGE_SIZE);
        // A run of holes needs no move: holes are collected as they are.
        if !sys::pagemap::has_memory(src, k as usize).is_ok_and(|v| v.contains(&true)) {
            return;
        }
        eng.uffd.set_own_area(eng.staging_out, STAGING_PAGES as usize * PAGE_SIZE);
        // Rebuilt at the end of the batch whatever happens here.
        self.changed.push(Changed { i, k, how: Change::Replaced });
        // SAFETY: a piece of the staging area, which only this batch uses.
        if unsafe { sys::mmap::protect_own(dst, len, Prot::WRITE_ONLY) }.is_err() {
            return;
        }
        let marker = || matches!(vma::lookup(dst, false), Ok(Some(v)) if v.write && !v.read);
        let moved = std::thread::scope(|s| {
            let remap = std::thread::Builder::new()
                .name("usvm-remap".into())
                // SAFETY: `dst` is a piece of the staging area this batch owns, `src`
                // application memory watched by usvm's descriptor and marked out of RAM.
                .spawn_scoped(s, move || unsafe { sys::mmap::move_keeping_source(src, len, dst) });
            let Ok(remap) = remap else { return false };
            let since = Instant::now();
            while !remap.is_finished() && marker() {
                if since.elapsed() > REMAP_HOLD_LIMIT {
                    tracing::warn!(
                        addr = format_args!("{src:#x}"),
                        "mremap of read-only pages not seen: out lock let go"
                    );
                    break;
                }
                std::thread::yield_now();
            }
            drop(out);
            remap.join().is_ok_and(|r| r.is_ok())
        });
        if moved {
            // The new mapping inherited the application's registration: its pages are usvm's
            // now, readable for the copy and movable for the way back.
            let _ = eng.uffd.unregister(dst, len);
            // SAFETY: a piece of the staging area, which only this batch uses.
            if let Err(e) = unsafe { sys::mmap::protect_own(dst, len, Prot::RW) } {
                tracing::warn!(error = %e, "a staging piece stays unreadable: its pages stay there");
            }
        }
    }

    /// What was collected is what the page tables say, not what the moves reported: a page
    /// in `staging_out` moved (its data is copied); a page the application still has did
    /// not (it stays in RAM); a page in neither place is a hole (zeroed VRAM).
    fn classify(&mut self) -> Result<()> {
        let n = self.slots.len();
        let has = sys::pagemap::has_memory(self.eng.staging_out, n)?;
        let app_has = sys::pagemap::has_memory(self.first.addr(), n)?;
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
                out.unmark(Pages::one(p));
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
                // SAFETY: a page of the BO this batch fills, not mapped by any GPU yet.
                unsafe { sys::mmap::fill(self.vram(i), PAGE_SIZE, 0) };
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
        let changed = self.restore_staging();
        let full = !self.holes && !changed && self.slots.iter().all(|&s| s == Slot::Committed);
        self.eng.release_staging_out(self.slots.len() as u64, full)?;
        Ok(moved)
    }

    /// Puts `staging_out` back as it was when collection changed pieces of it: one
    /// read-write, unlocked mapping registered with the engine's own userfaultfd. The whole
    /// area is mapped afresh (every page of the batch is settled by now, and the rest of the
    /// area is empty), which makes it one mapping again whatever the kernel would merge: a
    /// replaced piece put back on its own did not always merge with the rest of the area
    /// (another anon_vma), and a move across the seam then failed. Returns whether the
    /// area was changed (its pages are gone then).
    fn restore_staging(&mut self) -> bool {
        if self.changed.is_empty() {
            return false;
        }
        let eng = self.eng;
        for c in std::mem::take(&mut self.changed) {
            if c.how == Change::Replaced {
                // No longer the application's registration (done after the move; again here
                // in case that failed): replacing the piece must report nothing.
                let _ = eng.uffd.unregister(self.staged(c.i), c.k as usize * PAGE_SIZE);
            }
        }
        let (addr, len) = (eng.staging_out, STAGING_PAGES as usize * PAGE_SIZE);
        // SAFETY: the staging area, whose pages all left (or were rescued) above.
        let res = unsafe { sys::mmap::map_fresh_over_own(addr, len) }.and_then(|()| {
            sys::mmap::advise_hugepages(addr, len);
            sys::mmap::advise_dontfork(addr, len);
            eng.own.register(addr, len)
        });
        if let Err(e) = res {
            tracing::warn!(error = %e, "the staging area could not be put back: later collections may leave pages in RAM");
        }
        true
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
                    self.eng.forget_out(Pages::one(self.first + i));
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
        let addr = format_args!("{:#x}", page.addr());
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
                // SAFETY: the page's VRAM slot in this batch's BO and its staging page, both
                // owned by the batch.
                unsafe { sys::mmap::copy(self.vram(i), self.staged(i), PAGE_SIZE) };
                self.slots[i as usize] = Slot::InVram;
            }
        }
    }

    /// Commits the pages in VRAM that are still wanted; the others are settled in RAM.
    fn commit(&mut self) -> u64 {
        let eng = self.eng;
        let mut out = eng.out.lock();
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
            if out.keeps_vram_data(p) {
                self.r.in_vram.set(p - self.r.start, true);
                self.slots[i as usize] = Slot::Committed;
                moved += 1;
            } else {
                out.unmark(Pages::one(p));
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
