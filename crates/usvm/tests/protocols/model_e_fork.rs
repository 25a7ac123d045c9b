//! Model E: the fork hooks (`before_fork` takes the instance lock, evacuates VRAM to RAM
//! and keeps the lock across the fork; `after_fork` releases it) vs a concurrent CPU fault
//! (reader `try_lock`, worker) and a concurrent prefetch to VRAM.
//!
//! Property: no deadlock; the child (a snapshot of the process memory at the fork) has
//! every page's data in plain RAM; the parent's faulting thread reads its data (no lost
//! update).

use crate::kernel::{Ev, Kernel};
use crate::shim::{Mutex, MutexGuard, mpsc};
use shuttle::sync::Arc;
use shuttle::thread;
use std::collections::BTreeSet;

const V: usize = 0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    None,
    /// `before_fork` releases the lock after evacuating instead of holding it across.
    ReleaseBeforeFork,
    /// `after_fork` does not release the lock.
    KeepLockAfterFork,
}

struct State {
    in_vram: bool,
    vram: u64,
}

enum Work {
    Fault(usize),
    Stop,
}

struct World {
    state: Mutex<State>,
    gate: Mutex<()>,
    out: Mutex<BTreeSet<usize>>,
    k: Kernel,
    work: Mutex<mpsc::Sender<Work>>,
    m: Mutation,
}

impl World {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        let st = self.state.lock();
        drop(self.gate.lock());
        st
    }

    fn resolve_if_in_ram(&self, p: usize) -> bool {
        let out = self.out.lock();
        if out.contains(&p) {
            return false;
        }
        self.k.zeropage(p);
        true
    }

    /// `cpu_fault` / `evacuate_locked`: `to_ram` of V.
    fn to_ram(&self, st: &mut State) {
        if !st.in_vram {
            return;
        }
        let _ = self.k.move_in(V, st.vram);
        self.out.lock().remove(&V);
        st.in_vram = false;
        self.k.wake(V);
    }

    fn cpu_fault(&self, st: &mut State, p: usize) {
        if st.in_vram {
            self.to_ram(st);
        } else if !self.resolve_if_in_ram(p) {
            self.k.wake(p);
        }
    }

    /// `migrate::to_vram` of V (a prefetch).
    fn prefetch(&self) {
        let mut st = self.lock_state();
        if !st.in_vram {
            self.out.lock().insert(V);
            st.vram = self.k.move_out(V).unwrap_or(0);
            st.in_vram = true;
        }
    }

    /// `before_fork`, the fork itself (the child's copy of memory), `after_fork`.
    fn fork(&self) {
        let mut st = self.lock_state();
        self.to_ram(&mut st); // evacuate_locked
        if self.m == Mutation::ReleaseBeforeFork {
            drop(st);
            assert_eq!(self.k.snapshot(V), Some(42), "lost update: the child lacks data");
            return;
        }
        assert_eq!(self.k.snapshot(V), Some(42), "lost update: the child lacks data");
        if self.m == Mutation::KeepLockAfterFork {
            std::mem::forget(st);
        }
    }
}

pub fn model(m: Mutation) {
    let (k, events) = Kernel::new(&[None]);
    let (wtx, wrx) = mpsc::channel();
    let w = Arc::new(World {
        state: Mutex::new(State { in_vram: true, vram: 42 }),
        gate: Mutex::new(()),
        out: Mutex::new([V].into_iter().collect()),
        k,
        work: Mutex::new(wtx),
        m,
    });
    let reader = {
        let w = w.clone();
        thread::spawn(move || {
            for ev in events {
                let _gate = w.gate.lock();
                match ev {
                    Ev::Fault(p) => {
                        if w.resolve_if_in_ram(p) {
                            continue;
                        }
                        match w.state.try_lock() {
                            Some(mut st) => w.cpu_fault(&mut st, p),
                            None => {
                                let _ = w.work.lock().send(Work::Fault(p));
                            }
                        }
                    }
                    _ => break,
                }
            }
        })
    };
    let worker = {
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
    let mut ts = Vec::new();
    {
        let w = w.clone();
        ts.push(thread::spawn(move || w.fork()));
    }
    {
        let w = w.clone();
        ts.push(thread::spawn(move || w.prefetch()));
    }
    {
        let w = w.clone();
        ts.push(thread::spawn(move || assert_eq!(w.k.load(V), 42, "lost update: the parent's fault")));
    }
    for t in ts {
        t.join().unwrap();
    }
    w.k.send(Ev::Stop);
    reader.join().unwrap();
    let _ = w.work.lock().send(Work::Stop);
    worker.join().unwrap();
    let st = w.lock_state();
    assert_eq!(st.in_vram, w.out.lock().contains(&V));
}

#[test]
fn e_fork_hooks_vs_fault_and_prefetch() {
    crate::check(|| model(Mutation::None));
}

#[test]
fn e_mutation_release_before_fork_loses_child_data() {
    crate::must_catch("child lacks data", || model(Mutation::ReleaseBeforeFork));
}

#[test]
fn e_mutation_keep_lock_after_fork_deadlocks() {
    crate::must_catch("deadlock", || model(Mutation::KeepLockAfterFork));
}
