//! Model A: a migration (holding the instance lock) vs CPU faults (the reader's
//! `try_lock` and hand-off to the worker, the zero-page path under the `out` lock) vs a
//! device access that is itself waiting on a CPU fault.
//!
//! Property: no deadlock; every faulting thread is woken; a thread that faulted on a page
//! whose data was in VRAM reads that data (no lost update); a device access touching a
//! never-populated page reads zero; at the end no page is left marked out of RAM.
//!
//! Pages: `Z` never populated (registered), `V` its data (42) in VRAM, `W` in RAM (7),
//! which the migration moves to VRAM.

use crate::kernel::{Ev, Kernel};
use crate::sched::Sched;
use crate::shim::{Mutex, MutexGuard, RwLock, mpsc};
use shuttle::sync::Arc;
use shuttle::thread;
use std::collections::BTreeSet;

const Z: usize = 0;
const V: usize = 1;
const W: usize = 2;

/// A protocol bug to switch on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    None,
    /// The reader waits for the instance lock (`lock_state`) instead of `try_lock_for_reader`
    /// and the hand-off to the worker.
    ReaderBlocks,
    /// The zero-page path needs the instance lock too.
    ZeroPageUnderStateLock,
    /// `to_ram` forgets the page is out of RAM before its data is moved back in.
    ForgetOutBeforeMoveIn,
    /// The reader serves a fault itself whenever `try_lock` succeeds, even when the range is
    /// GPU-mapped (usvm before the fix: its migration back waits for in-flight device
    /// accesses, which may wait for the reader).
    ReaderServesMappedRange,
}

/// How the migration invalidates the GPU (XNACK off: queue eviction, which waits for
/// in-flight accesses; XNACK on: unmap under the page-table write lock, which waits for
/// the accesses' read locks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalidate {
    EvictQueues,
    UnmapFromGpus,
}

/// `SvmState`, reduced to the residency bits of the pages and their VRAM copies.
#[derive(Default)]
struct State {
    in_vram: [bool; 3],
    vram: [u64; 3],
    /// The range of `V` is mapped on the GPU: moving it invalidates the GPU first.
    v_mapped: bool,
}

enum Work {
    Fault(usize),
    Stop,
}

struct World {
    /// `SvmInner::state` (lock 1).
    state: Mutex<State>,
    /// `SvmInner::event_gate`.
    gate: Mutex<()>,
    /// `Engine::out` (a leaf).
    out: Mutex<BTreeSet<usize>>,
    k: Kernel,
    /// GPU 0's queue scheduler (lock 2): the real code.
    sched: Sched,
    /// GPU 0's page table (lock 3).
    pt: RwLock<()>,
    work: Mutex<mpsc::Sender<Work>>,
    inv: Invalidate,
    m: Mutation,
}

impl World {
    /// `SvmInner::lock_state` (no pending ops in this model).
    fn lock_state(&self) -> MutexGuard<'_, State> {
        let st = self.state.lock();
        drop(self.gate.lock());
        st
    }

    /// `Engine::resolve_if_in_ram`: zero page when not out of RAM, under the `out` lock.
    fn resolve_if_in_ram(&self, p: usize) -> bool {
        let _st = (self.m == Mutation::ZeroPageUnderStateLock).then(|| self.lock_state());
        let out = self.out.lock();
        if out.contains(&p) {
            return false;
        }
        self.k.zeropage(p);
        true
    }

    /// `fault/cpu.rs::on_event`, `UffdEvent::Fault`, with the event gate held.
    fn reader_fault(&self, p: usize) {
        if self.resolve_if_in_ram(p) {
            return;
        }
        if self.m == Mutation::ReaderBlocks {
            let mut st = self.lock_state();
            self.cpu_fault(&mut st, p);
            return;
        }
        // `SvmInner::try_lock_for_reader`: only when serving here cannot wait for a device
        // access: lock free, no pending change, and the range mapped on no GPU or no device
        // access in flight (then the queues are held, `Devices::try_hold_all`, so none
        // starts until the fault is served).
        let Some(mut st) = self.state.try_lock() else {
            let _ = self.work.lock().send(Work::Fault(p));
            return;
        };
        if !st.v_mapped || self.m == Mutation::ReaderServesMappedRange {
            self.cpu_fault(&mut st, p);
        } else if self.sched.try_evict() {
            self.cpu_fault(&mut st, p);
            drop(st);
            self.sched.restore();
        } else {
            drop(st);
            let _ = self.work.lock().send(Work::Fault(p));
        }
    }

    /// `SvmInner::cpu_fault` (via `serve_slow`), instance lock held.
    fn cpu_fault(&self, st: &mut State, p: usize) {
        if !st.in_vram[p] {
            // Resolved by someone else meanwhile.
            if !self.resolve_if_in_ram(p) {
                self.k.wake(p);
            }
            return;
        }
        self.to_ram(st, p);
    }

    /// `migrate::to_ram` / `small_to_ram` for one page: invalidate the GPU (as the
    /// migration to VRAM does), copy, move in, commit, restore, wake.
    fn to_ram(&self, st: &mut State, p: usize) {
        let evicted = st.v_mapped && self.inv == Invalidate::EvictQueues;
        if st.v_mapped {
            match self.inv {
                Invalidate::EvictQueues => self.sched.evict(),
                Invalidate::UnmapFromGpus => drop(self.pt.write().unwrap()),
            }
        }
        let data = st.vram[p]; // SDMA copy (UFFDIO_COPY in small_to_ram)
        if self.m == Mutation::ForgetOutBeforeMoveIn {
            self.out.lock().remove(&p);
        }
        // EEXIST: the application has the page, its data is the newer one.
        let _ = self.k.move_in(p, data);
        self.out.lock().remove(&p);
        st.in_vram[p] = false;
        if evicted {
            self.sched.restore();
        }
        // Only now, with the bookkeeping done, the waiting threads go on.
        self.k.wake(p);
    }

    /// `migrate::to_vram` of `W` from its invalidation to its restore, lock held throughout.
    fn migrate_w_to_vram(&self, inv: Invalidate) {
        let mut st = self.lock_state();
        match inv {
            Invalidate::EvictQueues => self.sched.evict(),
            Invalidate::UnmapFromGpus => drop(self.pt.write().unwrap()),
        }
        // piece_to_vram: mark, collect with UFFDIO_MOVE, copy, commit.
        self.out.lock().insert(W);
        let data = self.k.move_out(W).unwrap_or(0);
        st.vram[W] = data;
        st.in_vram[W] = true;
        if inv == Invalidate::EvictQueues {
            self.sched.restore(); // restore(): remap, resume the queues
        }
    }

    /// `Devices::access_with` of a never-populated system page: `enter`, `copy_chunk`
    /// (the page-table read lock held while the process page is copied: it faults), `leave`.
    fn device_read_z(&self) -> u64 {
        self.sched.enter();
        let v = {
            let _t = self.pt.read().unwrap();
            self.k.load(Z)
        };
        self.sched.leave();
        v
    }
}

/// The model, under invalidation `inv` and mutation `m`.
pub fn model(inv: Invalidate, v_mapped: bool, m: Mutation) {
    let (k, events) = Kernel::new(&[None, None, Some(7)]);
    let (wtx, wrx) = mpsc::channel();
    let st = State { in_vram: [false, true, false], vram: [0, 42, 0], v_mapped };
    let w = Arc::new(World {
        state: Mutex::new(st),
        gate: Mutex::new(()),
        out: Mutex::new([V].into_iter().collect()),
        k,
        sched: Sched::default(),
        pt: RwLock::new(()),
        work: Mutex::new(wtx),
        inv,
        m,
    });
    // The reader thread: reads each message under the event gate.
    let r = {
        let w = w.clone();
        thread::spawn(move || {
            for ev in events {
                let _gate = w.gate.lock();
                match ev {
                    Ev::Fault(p) => w.reader_fault(p),
                    Ev::Stop => break,
                    _ => unreachable!(),
                }
            }
        })
    };
    // The worker thread: faults handed over, served once the lock is free.
    let wk = {
        let w = w.clone();
        thread::spawn(move || {
            for job in wrx {
                match job {
                    Work::Fault(p) => {
                        let mut st = w.lock_state();
                        w.cpu_fault(&mut st, p);
                    }
                    Work::Stop => break,
                }
            }
        })
    };
    let mut app = Vec::new();
    for _ in 0..2 {
        let w = w.clone();
        app.push(thread::spawn(move || assert_eq!(w.k.load(V), 42, "lost update: VRAM data not seen")));
    }
    {
        let w = w.clone();
        app.push(thread::spawn(move || assert_eq!(w.k.load(W), 7, "lost update: W")));
    }
    {
        let w = w.clone();
        app.push(thread::spawn(move || assert_eq!(w.device_read_z(), 0)));
    }
    {
        let w = w.clone();
        app.push(thread::spawn(move || w.migrate_w_to_vram(w.inv)));
    }
    for t in app {
        t.join().unwrap();
    }
    w.k.send(Ev::Stop);
    r.join().unwrap();
    let _ = w.work.lock().send(Work::Stop);
    wk.join().unwrap();
    let st = w.lock_state();
    assert!(!st.in_vram[V] && !w.out.lock().contains(&V), "V left out of RAM");
    assert_eq!(st.in_vram[W], w.out.lock().contains(&W), "out set and residency disagree");
    assert!(!w.sched.is_evicted());
}

#[test]
fn a_migration_vs_cpu_fault_vs_device_access_evict() {
    crate::check(|| model(Invalidate::EvictQueues, false, Mutation::None));
    crate::check(|| model(Invalidate::EvictQueues, true, Mutation::None));
}

#[test]
fn a_migration_vs_cpu_fault_vs_device_access_unmap() {
    crate::check(|| model(Invalidate::UnmapFromGpus, false, Mutation::None));
    crate::check(|| model(Invalidate::UnmapFromGpus, true, Mutation::None));
}

#[test]
fn a_mutation_reader_blocks_deadlocks() {
    crate::must_catch("deadlock", || model(Invalidate::EvictQueues, false, Mutation::ReaderBlocks));
    crate::must_catch("deadlock", || model(Invalidate::UnmapFromGpus, false, Mutation::ReaderBlocks));
}

#[test]
fn a_mutation_zero_page_under_state_lock_deadlocks() {
    crate::must_catch("deadlock", || model(Invalidate::EvictQueues, false, Mutation::ZeroPageUnderStateLock));
}

#[test]
fn a_mutation_forget_out_early_loses_data() {
    crate::must_catch("lost update", || {
        model(Invalidate::EvictQueues, false, Mutation::ForgetOutBeforeMoveIn)
    });
}

/// Regression: before the fix, the reader served a fault on a GPU-mapped range itself
/// when `try_lock` succeeded; the migration back then waited (queue eviction, or the
/// page-table write lock) for a device access that was waiting for the reader to serve
/// its fault on a never-populated page.
#[test]
fn a_regression_reader_serving_mapped_range_deadlocks() {
    crate::must_catch("deadlock", || model(Invalidate::EvictQueues, true, Mutation::ReaderServesMappedRange));
    crate::must_catch("deadlock", || {
        model(Invalidate::UnmapFromGpus, true, Mutation::ReaderServesMappedRange)
    });
}
