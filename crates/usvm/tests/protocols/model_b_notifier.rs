//! Model B: GPU fault handling and migration vs the munmap notifier. The reader reads the
//! application's munmap event under the `event_gate`, adjusts the `out` set, queues a
//! `PendingOp` and nudges the worker; the next holder of the instance lock applies it
//! (`SvmInner::lock_state` passes the gate first).
//!
//! Property: no deadlock; once the application's munmap has returned, every later holder
//! of the instance lock (SET_ATTR / GET_ATTR, a migration, the GPU fault handler) finds the
//! range gone, so no migration reads an unmapped range and no fault maps it again; at the
//! end no GPU mapping, VRAM copy or `out` mark of the unmapped page is left.

use crate::kernel::{Ev, Kernel};
use crate::shim::{Mutex, MutexGuard, mpsc};
use shuttle::sync::Arc;
use shuttle::sync::atomic::{AtomicBool, Ordering};
use shuttle::thread;
use std::collections::BTreeSet;

const A: usize = 0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    None,
    /// The reader reads the event (the munmap returns) before it takes the gate.
    ReadBeforeGate,
    /// `lock_state` does not pass the gate.
    LockStateSkipsGate,
    /// The reader applies the change itself, waiting for the instance lock while it holds
    /// the gate (the reverse of `lock_state`'s order).
    ReaderAppliesUnderGate,
    /// The pending change is applied when the lock holder is done (after it read the range).
    ApplyOnUnlock,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PendingOp {
    Unmap(usize),
}

/// `SvmState`: whether the range over `A` exists, its GPU mapping and its VRAM copy.
struct State {
    range: bool,
    pte: bool,
    vram: Option<u64>,
}

enum Work {
    Flush,
    Stop,
}

struct World {
    state: Mutex<State>,
    gate: Mutex<()>,
    pending: Mutex<Vec<PendingOp>>,
    out: Mutex<BTreeSet<usize>>,
    k: Kernel,
    work: Mutex<mpsc::Sender<Work>>,
    /// The application's munmap has returned.
    unmapped: AtomicBool,
    m: Mutation,
}

/// The instance lock, with the pending changes applied (or not yet, under `ApplyOnUnlock`).
struct Locked<'a> {
    w: &'a World,
    st: Option<MutexGuard<'a, State>>,
}

impl std::ops::Deref for Locked<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        self.st.as_ref().expect("held")
    }
}
impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.st.as_mut().expect("held")
    }
}
impl Drop for Locked<'_> {
    fn drop(&mut self) {
        if self.w.m == Mutation::ApplyOnUnlock {
            let mut st = self.st.take().expect("held");
            self.w.apply_pending(&mut st);
        }
    }
}

impl World {
    /// `SvmInner::lock_state`.
    fn lock_state(&self) -> Locked<'_> {
        let mut st = self.state.lock();
        if self.m != Mutation::LockStateSkipsGate {
            drop(self.gate.lock());
        }
        if self.m != Mutation::ApplyOnUnlock {
            self.apply_pending(&mut st);
        }
        Locked { w: self, st: Some(st) }
    }

    /// `SvmInner::apply_pending` / `cpu_unmapped`.
    fn apply_pending(&self, st: &mut State) {
        let ops = std::mem::take(&mut *self.pending.lock());
        for PendingOp::Unmap(p) in ops {
            st.pte = false; // unmap_from_gpus (trigger 2)
            st.vram = None; // drop_vram
            self.out.lock().remove(&p);
            st.range = false; // remove_interval
        }
    }

    /// The reader's part of an UNMAP event (`on_event`), in the reader loop.
    fn reader_unmap(&self, p: usize) {
        if self.m == Mutation::ReadBeforeGate {
            self.k.event_read();
        }
        let _gate = self.gate.lock();
        if self.m != Mutation::ReadBeforeGate {
            self.k.event_read(); // read_event: the munmap caller may return
        }
        self.out.lock().remove(&p);
        if self.m == Mutation::ReaderAppliesUnderGate {
            let mut st = self.state.lock();
            self.pending.lock().push(PendingOp::Unmap(p));
            self.apply_pending(&mut st);
            return;
        }
        self.pending.lock().push(PendingOp::Unmap(p));
        let _ = self.work.lock().send(Work::Flush);
    }

    /// Checks made by every lock holder that reads the range: when the munmap had returned
    /// before it asked for the lock (`unmapped_before`), the range must be gone.
    fn sees_range(&self, st: &State, unmapped_before: bool, who: &str) -> bool {
        if st.range {
            assert!(!unmapped_before, "{who} read a range whose munmap had returned");
        }
        st.range
    }

    /// `SvmInner::restore_pages` (XNACK on): map the range in place on the GPU.
    fn gpu_fault(&self) {
        let before = self.unmapped.load(Ordering::SeqCst);
        let mut st = self.lock_state();
        if self.sees_range(&st, before, "GPU fault") && !self.unmapped.load(Ordering::SeqCst) {
            st.pte = true; // validate_and_map (the VMA lookup found the mapping)
        }
    }

    /// `migrate::to_vram` of the range (a prefetch): collects the page into VRAM.
    fn migrate(&self) {
        let before = self.unmapped.load(Ordering::SeqCst);
        let mut st = self.lock_state();
        if self.sees_range(&st, before, "migration") {
            self.out.lock().insert(A);
            let v = self.k.move_out(A);
            st.vram = Some(v.unwrap_or(0));
        }
    }
}

pub fn model(m: Mutation) {
    let (k, events) = Kernel::new(&[Some(5)]);
    let (wtx, wrx) = mpsc::channel();
    let w = Arc::new(World {
        state: Mutex::new(State { range: true, pte: true, vram: None }),
        gate: Mutex::new(()),
        pending: Mutex::new(Vec::new()),
        out: Mutex::new(BTreeSet::new()),
        k,
        work: Mutex::new(wtx),
        unmapped: AtomicBool::new(false),
        m,
    });
    let r = {
        let w = w.clone();
        thread::spawn(move || {
            for ev in events {
                match ev {
                    Ev::Unmap(p) => w.reader_unmap(p),
                    Ev::Stop => break,
                    _ => unreachable!(),
                }
            }
        })
    };
    let wk = {
        let w = w.clone();
        thread::spawn(move || {
            for job in wrx {
                match job {
                    Work::Flush => drop(w.lock_state()),
                    Work::Stop => break,
                }
            }
        })
    };
    let mut ts = Vec::new();
    {
        // The application: munmap, then GET_ATTR on the interval.
        let w = w.clone();
        ts.push(thread::spawn(move || {
            w.k.drop_page_and_wait(A, Ev::Unmap(A));
            w.unmapped.store(true, Ordering::SeqCst);
            let st = w.lock_state();
            assert!(!st.range, "GET_ATTR after munmap returned still sees the range");
        }));
    }
    {
        let w = w.clone();
        ts.push(thread::spawn(move || w.gpu_fault()));
    }
    {
        let w = w.clone();
        ts.push(thread::spawn(move || w.migrate()));
    }
    for t in ts {
        t.join().unwrap();
    }
    w.k.send(Ev::Stop);
    r.join().unwrap();
    let _ = w.work.lock().send(Work::Stop);
    wk.join().unwrap();
    let st = w.lock_state();
    assert!(!st.range && !st.pte && st.vram.is_none(), "stale range, GPU mapping or VRAM copy");
    assert!(!w.out.lock().contains(&A), "stale out mark");
}

#[test]
fn b_gpu_fault_and_migration_vs_munmap_notifier() {
    crate::check(|| model(Mutation::None));
}

#[test]
fn b_mutation_read_before_gate_is_seen_late() {
    crate::must_catch("munmap", || model(Mutation::ReadBeforeGate));
}

#[test]
fn b_mutation_lock_state_skips_gate_is_seen_late() {
    crate::must_catch("munmap", || model(Mutation::LockStateSkipsGate));
}

#[test]
fn b_mutation_reader_applies_under_gate_deadlocks() {
    crate::must_catch("deadlock", || model(Mutation::ReaderAppliesUnderGate));
}

#[test]
fn b_mutation_apply_on_unlock_reads_unmapped_range() {
    crate::must_catch("munmap", || model(Mutation::ApplyOnUnlock));
}
