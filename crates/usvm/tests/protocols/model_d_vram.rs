//! Model D: VRAM eviction under pressure (`alloc_evicting`: `choose_victims`, then the
//! victim range goes to RAM, trigger TTM_EVICTION) vs a CPU fault migrating the same victim
//! range (reader `try_lock`, worker) vs a GPU access to it (XNACK on: page-table read
//! lock, fault hook) vs the copy engine thread (chunks signalled by fences).
//!
//! Property: no deadlock; no device access and no copy reaches a VRAM page after its BO
//! was freed (no use after free, the page is reused by the next BO at once); the victim's
//! data (42) reaches both the CPU and the GPU reader (no lost update).

use crate::kernel::{Ev, Kernel};
use crate::shim::{Condvar, Mutex, MutexGuard, RwLock, mpsc};
use shuttle::sync::Arc;
use shuttle::thread;
use std::collections::BTreeSet;
use std::sync::Weak;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    None,
    /// `to_ram` unmaps the victim from the GPUs only after its BO is freed and reused.
    InvalidateAfterFree,
    /// The migration does not wait for the copy's fence before it moves the data in and
    /// drops the BO.
    NoFenceWait,
}

/// One VRAM page: its owner (a range) and data (the buddy allocator's lock, a leaf).
#[derive(Default)]
struct Vram {
    owner: Option<usize>,
    data: u64,
}

/// A BO of the single VRAM page; the last reference frees the page (`BoInner::drop`).
struct Bo {
    vram: Arc<Mutex<Vram>>,
}
impl Drop for Bo {
    fn drop(&mut self) {
        self.vram.lock().owner = None;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pte {
    Unmapped,
    System,
    Vram,
}

struct State {
    bo: [Option<std::sync::Arc<Bo>>; 2],
}

/// A copy-engine chunk: VRAM page -> staging (expecting the page owned by `.0`), or
/// value -> VRAM page.
enum Copy {
    FromVram(usize),
    ToVram(usize, u64),
}

type Fence = Arc<(Mutex<bool>, Condvar)>;

enum Work {
    Fault(usize),
    Stop,
}

struct World {
    state: Mutex<State>,
    out: Mutex<BTreeSet<usize>>,
    k: Kernel,
    pt: RwLock<Pte>,
    vram: Arc<Mutex<Vram>>,
    /// `Pool::live`: weak handles of the live BOs.
    live: Mutex<Vec<Weak<Bo>>>,
    staging: Mutex<u64>,
    sdma: Mutex<mpsc::Sender<Option<(Copy, Fence)>>>,
    work: Mutex<mpsc::Sender<Work>>,
    m: Mutation,
}

impl World {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// `CopyEngine::copy_sync`: submit the chunk, wait for its fence.
    fn copy(&self, c: Copy) -> Fence {
        let f: Fence = Arc::new((Mutex::new(false), Condvar::new()));
        let _ = self.sdma.lock().send(Some((c, f.clone())));
        if self.m != Mutation::NoFenceWait {
            wait(&f);
        }
        f
    }

    /// `migrate::to_ram` of range 0 (page 0), XNACK on: unmap from the GPU, copy VRAM ->
    /// RAM, move into the application, commit, free the BO, wake.
    fn to_ram_0(&self, st: &mut State) {
        if st.bo[0].is_none() {
            return;
        }
        if self.m != Mutation::InvalidateAfterFree {
            *self.pt.write().unwrap() = Pte::Unmapped; // unmap_from_gpus
        }
        let fence = self.copy(Copy::FromVram(0));
        let v = *self.staging.lock();
        let _ = self.k.move_in(0, v);
        self.out.lock().remove(&0);
        st.bo[0] = None; // r.vram = None: the BO goes
        if self.m == Mutation::NoFenceWait {
            wait(&fence); // too late
        }
        self.k.wake(0);
    }

    /// `migrate::to_vram` of range 1 (its data 7 is in RAM at page 1) under VRAM pressure.
    fn to_vram_1(&self) {
        let mut st = self.lock_state();
        if self.vram.lock().owner.is_some() {
            // choose_victims: upgrade under the `live` lock, drop the handles after it.
            let victims: Vec<std::sync::Arc<Bo>> =
                self.live.lock().iter().filter_map(Weak::upgrade).collect();
            let holds =
                victims.iter().any(|v| st.bo[0].as_ref().is_some_and(|b| std::sync::Arc::ptr_eq(b, v)));
            drop(victims);
            if holds {
                self.to_ram_0(&mut st);
            }
        }
        // alloc: the page is free now.
        assert!(self.vram.lock().owner.is_none(), "VRAM still in use");
        self.vram.lock().owner = Some(1);
        let bo = std::sync::Arc::new(Bo { vram: self.vram.clone() });
        self.live.lock().push(std::sync::Arc::downgrade(&bo));
        st.bo[1] = Some(bo);
        let v = self.k.move_out(1).unwrap_or(0);
        self.copy(Copy::ToVram(1, v));
        if self.m == Mutation::InvalidateAfterFree {
            *self.pt.write().unwrap() = Pte::Unmapped;
        }
    }

    /// `Devices::access` by GPU of page 0; a missing entry calls the fault hook
    /// (`restore_pages`: map in place) with no lock held, then retries.
    fn gpu_read_0(&self) -> u64 {
        loop {
            {
                let pt = self.pt.read().unwrap();
                match *pt {
                    Pte::Vram => {
                        let vr = self.vram.lock();
                        assert_eq!(vr.owner, Some(0), "use after free: GPU reads a freed BO's page");
                        return vr.data;
                    }
                    Pte::System => return self.k.load(0),
                    Pte::Unmapped => {}
                }
            }
            let st = self.lock_state();
            *self.pt.write().unwrap() = if st.bo[0].is_some() { Pte::Vram } else { Pte::System };
        }
    }

    fn resolve_if_in_ram(&self, p: usize) -> bool {
        let out = self.out.lock();
        if out.contains(&p) {
            return false;
        }
        self.k.zeropage(p);
        true
    }

    /// `SvmInner::cpu_fault`.
    fn cpu_fault(&self, st: &mut State, p: usize) {
        if p == 0 && st.bo[0].is_some() {
            self.to_ram_0(st);
        } else if !self.resolve_if_in_ram(p) {
            self.k.wake(p);
        }
    }
}

fn wait(f: &Fence) {
    let mut done = f.0.lock();
    while !*done {
        f.1.wait(&mut done);
    }
}

pub fn model(m: Mutation) {
    let (k, events) = Kernel::new(&[None, Some(7)]);
    let (wtx, wrx) = mpsc::channel();
    let (stx, srx) = mpsc::channel::<Option<(Copy, Fence)>>();
    let vram = Arc::new(Mutex::new(Vram { owner: Some(0), data: 42 }));
    let bo0 = std::sync::Arc::new(Bo { vram: vram.clone() });
    let w = Arc::new(World {
        live: Mutex::new(vec![std::sync::Arc::downgrade(&bo0)]),
        state: Mutex::new(State { bo: [Some(bo0), None] }),
        out: Mutex::new([0].into_iter().collect()),
        k,
        pt: RwLock::new(Pte::Vram),
        vram,
        staging: Mutex::new(0),
        sdma: Mutex::new(stx),
        work: Mutex::new(wtx),
        m,
    });
    let engine = {
        let w = w.clone();
        thread::spawn(move || {
            while let Ok(Some((c, f))) = srx.recv() {
                match c {
                    Copy::FromVram(r) => {
                        let vr = w.vram.lock();
                        assert_eq!(vr.owner, Some(r), "use after free: a copy reads a freed BO's page");
                        *w.staging.lock() = vr.data;
                    }
                    Copy::ToVram(r, v) => {
                        let mut vr = w.vram.lock();
                        assert_eq!(vr.owner, Some(r), "use after free: a copy writes a freed BO's page");
                        vr.data = v;
                    }
                }
                *f.0.lock() = true;
                f.1.notify_all();
            }
        })
    };
    let reader = {
        let w = w.clone();
        thread::spawn(move || {
            for ev in events {
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
        ts.push(thread::spawn(move || w.to_vram_1()));
    }
    {
        let w = w.clone();
        ts.push(thread::spawn(move || assert_eq!(w.k.load(0), 42, "lost update: CPU reads the victim")));
    }
    {
        let w = w.clone();
        ts.push(thread::spawn(move || assert_eq!(w.gpu_read_0(), 42, "lost update: GPU reads the victim")));
    }
    for t in ts {
        t.join().unwrap();
    }
    w.k.send(Ev::Stop);
    reader.join().unwrap();
    let _ = w.work.lock().send(Work::Stop);
    worker.join().unwrap();
    let _ = w.sdma.lock().send(None);
    engine.join().unwrap();
    let st = w.lock_state();
    assert!(st.bo[0].is_none() && st.bo[1].is_some());
    assert_eq!(w.vram.lock().data, 7, "lost update: range 1's data in VRAM");
}

#[test]
fn d_vram_eviction_vs_fault_vs_gpu_access() {
    crate::check(|| model(Mutation::None));
}

#[test]
fn d_mutation_invalidate_after_free_is_use_after_free() {
    crate::must_catch("use after free", || model(Mutation::InvalidateAfterFree));
}

#[test]
fn d_mutation_no_fence_wait_is_caught() {
    crate::must_catch("lost update", || model(Mutation::NoFenceWait));
}
