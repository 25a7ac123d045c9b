//! Model C: the XNACK-off restore worker vs new evictions, on the real queue scheduler
//! core (`Sched`: reference-counted eviction that waits for in-flight device accesses).
//!
//! MADV_DONTNEED of a GPU-mapped range under XNACK off (`apply_pending`, `Remove`) drops
//! its VRAM copy, marks it invalid and evicts the queues once (`evicted_ranges` 0 -> 1,
//! posting the restore work); a migration of another range evicts and restores around its
//! own work and may reuse the freed VRAM; the restore worker (`restore_work`) remaps every
//! invalid range, then resumes the queues, or reports `R` and tries again when a remap
//! fails.
//!
//! Property: no deadlock; queues resume only once every evicted range is remapped, so no
//! device access reaches a VRAM page that now belongs to another range (no use after
//! free); at the end the queues run and no range is left invalid.

use crate::sched::Sched;
use crate::shim::{Mutex, MutexGuard, RwLock, mpsc};
use shuttle::sync::Arc;
use shuttle::thread;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    None,
    /// `restore_work` resumes the queues before it remaps the invalid ranges.
    ResumeBeforeRemap,
    /// `restore_work` resumes the queues although a remap failed (no reschedule).
    ResumeOnFailure,
    /// Every invalidation evicts the queues (no `evicted_ranges` count); the worker
    /// restores once.
    EvictPerInvalidation,
}

/// A GPU page-table entry of a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pte {
    System,
    Vram(usize),
}

struct State {
    /// Per range: `invalid` (restore pending), and its BO's VRAM page.
    invalid: [u32; 2],
    bo: [Option<usize>; 2],
    evicted_ranges: u32,
    /// Fault injection: the first remap fails.
    fail_next_remap: bool,
}

enum Work {
    Flush,
    Restore,
    Stop,
}

struct World {
    state: Mutex<State>,
    gate: Mutex<()>,
    pending: Mutex<Vec<usize>>,
    sched: Sched,
    /// The GPU page table (lock 3).
    pt: RwLock<[Pte; 2]>,
    /// VRAM page owner (the buddy allocator's lock: a leaf). One page of VRAM.
    owner: Mutex<[Option<usize>; 1]>,
    work: Mutex<mpsc::Sender<Work>>,
    m: Mutation,
}

impl World {
    fn post(&self, w: Work) {
        let _ = self.work.lock().send(w);
    }

    /// `SvmInner::lock_state`.
    fn lock_state(&self) -> MutexGuard<'_, State> {
        let mut st = self.state.lock();
        drop(self.gate.lock());
        self.apply_pending(&mut st);
        st
    }

    /// `apply_pending`, `PendingOp::Remove` of a GPU-mapped range under XNACK off.
    fn apply_pending(&self, st: &mut State) {
        let ops = std::mem::take(&mut *self.pending.lock());
        for r in ops {
            // drop_vram: the last reference to the BO goes, its page is free.
            if let Some(p) = st.bo[r].take() {
                self.owner.lock()[p] = None;
            }
            st.invalid[r] += 1;
            if st.evicted_ranges == 0 || self.m == Mutation::EvictPerInvalidation {
                self.sched.evict();
                self.post(Work::Restore);
            }
            st.evicted_ranges += 1;
        }
    }

    /// `map::validate_and_map` of range `r` (VRAM entry when it has a BO).
    fn remap(&self, st: &mut State, r: usize) -> bool {
        if st.fail_next_remap {
            st.fail_next_remap = false;
            return false;
        }
        self.pt.write().unwrap()[r] = st.bo[r].map_or(Pte::System, Pte::Vram);
        true
    }

    /// `SvmInner::restore_work`.
    fn restore_work(&self) {
        let mut st = self.lock_state();
        if st.evicted_ranges == 0 {
            return;
        }
        let snapshot = st.evicted_ranges;
        if self.m == Mutation::ResumeBeforeRemap {
            st.evicted_ranges = 0;
            self.sched.restore();
        }
        let mut ok = true;
        for r in 0..2 {
            if st.invalid[r] > 0 {
                if self.remap(&mut st, r) {
                    st.invalid[r] = 0;
                } else {
                    ok = false;
                }
            }
        }
        if self.m == Mutation::ResumeBeforeRemap {
            return;
        }
        if (ok || self.m == Mutation::ResumeOnFailure) && st.evicted_ranges == snapshot {
            st.evicted_ranges = 0;
            self.sched.restore();
        } else {
            // restore_queues(g, true): 'R', the queues stay evicted; try again.
            self.post(Work::Restore);
        }
    }

    /// `migrate::to_vram` of range 1 (XNACK off, mapped): evict, take the free VRAM page
    /// (the one range 0's BO had), copy, remap, restore.
    fn migrate_1_to_vram(&self) {
        let mut st = self.lock_state();
        self.sched.evict();
        let free = self.owner.lock()[0].is_none();
        if free && st.bo[1].is_none() {
            self.owner.lock()[0] = Some(1);
            st.bo[1] = Some(0);
        }
        self.pt.write().unwrap()[1] = st.bo[1].map_or(Pte::System, Pte::Vram);
        self.sched.restore();
    }

    /// A device access of both ranges (`Devices::access_with`: enter, translate and copy
    /// under the page-table read lock, leave).
    fn device_access(&self) {
        self.sched.enter();
        {
            let pt = self.pt.read().unwrap();
            for (r, pte) in pt.iter().enumerate() {
                if let Pte::Vram(p) = *pte {
                    let owner = self.owner.lock()[p];
                    assert!(
                        owner.is_none_or(|o| o == r),
                        "use after free: range {r} reaches VRAM of range {owner:?}"
                    );
                }
            }
        }
        self.sched.leave();
    }
}

pub fn model(m: Mutation) {
    let (wtx, wrx) = mpsc::channel();
    let w = Arc::new(World {
        state: Mutex::new(State {
            invalid: [0; 2],
            bo: [Some(0), None],
            evicted_ranges: 0,
            fail_next_remap: true,
        }),
        gate: Mutex::new(()),
        pending: Mutex::new(Vec::new()),
        sched: Sched::default(),
        pt: RwLock::new([Pte::Vram(0), Pte::System]),
        owner: Mutex::new([Some(0)]),
        work: Mutex::new(wtx),
        m,
    });
    // The worker: Flush, and Restore after RESTORE_DELAY.
    let wk = {
        let w = w.clone();
        thread::spawn(move || {
            for job in wrx {
                match job {
                    Work::Flush => drop(w.lock_state()),
                    Work::Restore => w.restore_work(),
                    Work::Stop => break,
                }
            }
        })
    };
    let mut ts = Vec::new();
    for r in 0..2 {
        // The reader queues MADV_DONTNEED of range r under the gate.
        let w = w.clone();
        ts.push(thread::spawn(move || {
            let _gate = w.gate.lock();
            w.pending.lock().push(r);
            w.post(Work::Flush);
        }));
    }
    {
        let w = w.clone();
        ts.push(thread::spawn(move || w.migrate_1_to_vram()));
    }
    for _ in 0..2 {
        let w = w.clone();
        ts.push(thread::spawn(move || w.device_access()));
    }
    for t in ts {
        t.join().unwrap();
    }
    // The changes queued are applied (by this lock holder at the latest), and every
    // eviction is eventually restored: a device access gets through.
    drop(w.lock_state());
    w.device_access();
    w.post(Work::Stop);
    wk.join().unwrap();
    let st = w.lock_state();
    assert_eq!(st.invalid, [0, 0], "a range left invalid");
    assert_eq!(st.evicted_ranges, 0);
    assert!(!w.sched.is_evicted(), "queues left evicted");
}

#[test]
fn c_restore_worker_vs_evictions() {
    crate::check(|| model(Mutation::None));
}

#[test]
fn c_mutation_resume_before_remap_is_use_after_free() {
    crate::must_catch("use after free", || model(Mutation::ResumeBeforeRemap));
}

#[test]
fn c_mutation_resume_on_failure_is_use_after_free() {
    crate::must_catch("use after free", || model(Mutation::ResumeOnFailure));
}

#[test]
fn c_mutation_evict_per_invalidation_deadlocks() {
    crate::must_catch("deadlock", || model(Mutation::EvictPerInvalidation));
}
