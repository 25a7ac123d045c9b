//! The `access` target: random interleavings of CPU loads and stores, GPU loads and
//! stores (direct and from kernels on queues), prefetches to the GPUs and to system
//! memory, attribute changes, munmap / mmap / MADV_DONTNEED of parts of a region, with
//! XNACK on or off, checking every byte read against a byte model of the memory and the
//! outcome (success or `EFAULT`) of every GPU access and every SET_ATTR.
//!
//! The model: per page, whether it is mapped, the GPUs that may access it and whether it
//! is GPU read-only; per byte, its value. Memory unmapped, then mapped again, or dropped
//! with MADV_DONTNEED, reads as zero. Pages whose GPU outcome depends on mappings the
//! kernel keeps on purpose (XNACK on: a GPU that lost access, or a range turned read-only,
//! keeps its page-table entries until the next invalidation) are "loose" for that GPU: a
//! read may succeed or fail, a write is not issued.

use crate::mem::{self, MIB, Mapping, PAGE, errno};
use arbitrary::Unstructured;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use usvm::{Attr, GpuId, Location, Policy, Queue, Svm, SvmFlags};

/// Pages of the region (4 MiB: two maximum-size ranges, more than one GPU's VRAM).
const RP: usize = 1024;
/// VRAM per GPU: 3 MiB, so that prefetching the region evicts.
const VRAM: u64 = 3 << 20;
/// Device accesses work in chunks of at most this many bytes; a store that faults fatally
/// has written every byte before the faulting page (or address).
const ACCESS_CHUNK: usize = 64 << 10;
/// Most operations one input makes.
const MAX_OPS: usize = 40;
const GPUS: usize = 2;
/// A device access or kernel taking longer than this is a divergence.
const SLOW: Duration = Duration::from_millis(1500);

/// One shared instance per placement policy (the mode byte's bit 2 picks the adaptive one).
static INSTANCE: Mutex<[Option<Svm>; 2]> = Mutex::new([None, None]);

/// The instance an input runs on: `mode` bit 2 set, the one with the adaptive policy.
fn instance(all: &mut [Option<Svm>; 2], mode: u8) -> &Svm {
    let adaptive = mode & 4 != 0;
    let policy = if adaptive { Policy::Adaptive } else { Policy::Kernel };
    all[usize::from(adaptive)].get_or_insert_with(|| {
        Svm::builder().gpus(GPUS).vram_bytes(VRAM).policy(policy).build().expect("an instance")
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Ours, mapped read-write.
    Mapped,
    /// Ours, unmapped by the input.
    Unmapped,
    /// Unmapped by the input, then mapped by someone else (another thread of the process)
    /// before the input could map it again: never touched again.
    Foreign,
}

#[derive(Clone, Copy, Debug)]
struct Page {
    state: State,
    /// GPUs with ACCESS or ACCESS_IN_PLACE.
    access: u8,
    /// GPU_RO.
    ro: bool,
    /// PREFERRED_LOC: `Some(None)` system memory, `Some(Some(i))` GPU `i`, `None` undefined.
    pref: Option<Option<usize>>,
    /// GPUs whose outcome on this page is uncertain (see the module's doc).
    loose: u8,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    CpuWrite {
        off: usize,
        len: usize,
    },
    CpuRead {
        off: usize,
        len: usize,
    },
    GpuWrite {
        gpu: usize,
        off: usize,
        len: usize,
    },
    GpuRead {
        gpu: usize,
        off: usize,
        len: usize,
    },
    /// A kernel on a queue of `gpu` copying `len` bytes from `src` to `dst`.
    Kernel {
        gpu: usize,
        src: usize,
        dst: usize,
        len: usize,
    },
    /// SET_ATTR PREFETCH_LOC: `None` is system memory.
    Prefetch {
        page: usize,
        npages: usize,
        gpu: Option<usize>,
    },
    SetAttr {
        page: usize,
        npages: usize,
        attr: Attr,
    },
    Munmap {
        page: usize,
        npages: usize,
    },
    /// mmap (MAP_FIXED_NOREPLACE) of the unmapped pages.
    Remap {
        page: usize,
        npages: usize,
    },
    /// mmap (MAP_FIXED) over mapped pages: unmap and map in one call.
    Replace {
        page: usize,
        npages: usize,
    },
    Dontneed {
        page: usize,
        npages: usize,
    },
    CheckAll,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// A fatal fault at this byte offset.
    Fault(usize),
    /// The access may succeed or fault.
    Either,
    /// Touches memory that is not ours: not issued.
    Skip,
}

struct Case<'a> {
    svm: &'a Svm,
    gpus: Vec<GpuId>,
    xnack: bool,
    addr: usize,
    pages: Vec<Page>,
    bytes: Vec<u8>,
    queues: Vec<Option<Queue>>,
    stamp: u8,
    log: Vec<Op>,
}

fn len_of(u: &mut Unstructured<'_>) -> usize {
    match u.arbitrary::<u8>().unwrap_or(0) % 4 {
        0 => u.int_in_range(1..=64).unwrap_or(1),
        1 => u.int_in_range(1..=2 * PAGE).unwrap_or(1),
        2 => u.int_in_range(1..=ACCESS_CHUNK + PAGE).unwrap_or(1),
        _ => u.int_in_range(1..=5 * ACCESS_CHUNK).unwrap_or(1),
    }
}

/// A byte span `(off, len)` inside the region.
fn span(u: &mut Unstructured<'_>) -> (usize, usize) {
    let page = u.int_in_range(0..=RP - 1).unwrap_or(0);
    let within = if u.arbitrary().unwrap_or(true) { 0 } else { u.int_in_range(0..=PAGE - 1).unwrap_or(0) };
    let off = page * PAGE + within;
    (off, len_of(u).min(RP * PAGE - off))
}

/// A page interval `(page, npages)` inside the region.
fn pages(u: &mut Unstructured<'_>) -> (usize, usize) {
    let page = u.int_in_range(0..=RP - 1).unwrap_or(0);
    let n = match u.arbitrary::<u8>().unwrap_or(0) % 4 {
        0 => u.int_in_range(1..=4).unwrap_or(1),
        1 => u.int_in_range(1..=32).unwrap_or(1),
        2 => u.int_in_range(1..=512).unwrap_or(1),
        _ => u.int_in_range(1..=RP).unwrap_or(1),
    };
    (page, n.min(RP - page))
}

fn gpu_of(u: &mut Unstructured<'_>) -> usize {
    u.int_in_range(0..=GPUS - 1).unwrap_or(0)
}

fn op(u: &mut Unstructured<'_>, gpus: &[GpuId]) -> Op {
    match u.arbitrary::<u8>().unwrap_or(0) % 20 {
        0..=2 => {
            let (off, len) = span(u);
            Op::CpuWrite { off, len }
        }
        3..=4 => {
            let (off, len) = span(u);
            Op::CpuRead { off, len }
        }
        5..=6 => {
            let gpu = gpu_of(u);
            let (off, len) = span(u);
            Op::GpuWrite { gpu, off, len }
        }
        7..=8 => {
            let gpu = gpu_of(u);
            let (off, len) = span(u);
            Op::GpuRead { gpu, off, len }
        }
        9 => {
            let gpu = gpu_of(u);
            let (src, len) = span(u);
            let (dst, dlen) = span(u);
            Op::Kernel { gpu, src, dst, len: len.min(dlen) }
        }
        10..=11 => {
            let gpu = if u.arbitrary().unwrap_or(false) { None } else { Some(gpu_of(u)) };
            let (page, npages) = pages(u);
            Op::Prefetch { page, npages, gpu }
        }
        12..=14 => {
            let g = gpus[gpu_of(u)];
            let flags = [
                SvmFlags::GPU_RO,
                SvmFlags::COHERENT,
                SvmFlags::HOST_ACCESS,
                SvmFlags::GPU_ALWAYS_MAPPED,
                SvmFlags::GPU_EXEC,
                SvmFlags::GPU_READ_MOSTLY,
                SvmFlags::GPU_RO | SvmFlags::GPU_ALWAYS_MAPPED,
            ];
            let f = flags[u.choose_index(flags.len()).unwrap_or(0)];
            let attr = match u.arbitrary::<u8>().unwrap_or(0) % 9 {
                0 => Attr::Granularity(u.int_in_range(0..=10).unwrap_or(0)),
                1 => Attr::PreferredLoc(Location::Sysmem),
                2 => Attr::PreferredLoc(Location::Undefined),
                3 => Attr::PreferredLoc(Location::Gpu(g)),
                4 => Attr::Access(g),
                5 => Attr::AccessInPlace(g),
                6 => Attr::NoAccess(g),
                7 => Attr::SetFlags(f),
                _ => Attr::ClrFlags(f),
            };
            let (page, npages) = pages(u);
            Op::SetAttr { page, npages, attr }
        }
        15 => {
            let (page, npages) = pages(u);
            Op::Munmap { page, npages: npages.min(64) }
        }
        16 => {
            let (page, npages) = pages(u);
            Op::Remap { page, npages }
        }
        17 => {
            let (page, npages) = pages(u);
            Op::Replace { page, npages }
        }
        18 => {
            let (page, npages) = pages(u);
            Op::Dontneed { page, npages }
        }
        _ => Op::CheckAll,
    }
}

impl Case<'_> {
    fn fresh_page(&self) -> Page {
        Page {
            state: State::Mapped,
            access: if self.xnack { (1 << GPUS) - 1 } else { 0 },
            ro: false,
            pref: None,
            loose: 0,
        }
    }

    fn fail(&self, what: String) -> ! {
        panic!("access case diverged: {what}\nxnack {}, ops so far: {:?}", self.xnack, self.log);
    }

    fn all(&self, page: usize, npages: usize, s: State) -> bool {
        self.pages[page..page + npages].iter().all(|p| p.state == s)
    }

    fn any(&self, page: usize, npages: usize, s: State) -> bool {
        self.pages[page..page + npages].iter().any(|p| p.state == s)
    }

    fn pattern(&mut self, len: usize) -> Vec<u8> {
        self.stamp = self.stamp.wrapping_add(1);
        let k = self.stamp;
        (0..len).map(|j| k.wrapping_mul(37).wrapping_add((j as u8).wrapping_mul(7)) | 1).collect()
    }

    fn check(&self, off: usize, got: &[u8], how: &str) {
        let want = &self.bytes[off..off + got.len()];
        if let Some(j) = (0..got.len()).find(|&j| got[j] != want[j]) {
            self.fail(format!(
                "{how} at region offset {:#x} (page {}) read {:#04x}, the model says {:#04x} ({} bytes read from {off:#x})",
                off + j,
                (off + j) / PAGE,
                got[j],
                want[j],
                got.len()
            ));
        }
    }

    /// What a device access of `[off, off + len)` by `gpu` does.
    fn predict(&self, gpu: usize, off: usize, len: usize, write: bool) -> Outcome {
        let mut either = false;
        for p in off / PAGE..=(off + len - 1) / PAGE {
            let pg = &self.pages[p];
            let fault_at = (p * PAGE).max(off) - off;
            match pg.state {
                State::Foreign => return Outcome::Skip,
                State::Unmapped => return if either { Outcome::Either } else { Outcome::Fault(fault_at) },
                State::Mapped => {}
            }
            let bit = 1u8 << gpu;
            // XNACK on, a retry fault maps the faulting GPU when the range prefers system
            // memory or that GPU, access or not (section 5.3, steps 2 and 4 of 5.4).
            let restorable = matches!(pg.pref, Some(None)) || pg.pref == Some(Some(gpu));
            if (pg.access & bit != 0 || self.xnack && restorable) && !(write && pg.ro) {
                continue;
            }
            if pg.loose & bit != 0 {
                either = true;
                continue;
            }
            return if either { Outcome::Either } else { Outcome::Fault(fault_at) };
        }
        if either { Outcome::Either } else { Outcome::Ok }
    }

    /// Checks a device access's result against `want`; returns how many bytes a store
    /// wrote.
    fn judge(&self, r: usvm::Result<()>, want: Outcome, len: usize, what: &str, t: Instant) -> usize {
        // A fault that resolves nothing is retried for 2 s before it becomes fatal: an
        // access that takes that long was retried in vain.
        if t.elapsed() > SLOW {
            self.fail(format!("{what}: took {:?} ({r:?})", t.elapsed()));
        }
        match (want, &r) {
            (Outcome::Ok, Ok(())) => len,
            (Outcome::Fault(at), Err(e)) if e.errno() == libc::EFAULT => at,
            (Outcome::Either, Ok(())) => len,
            (Outcome::Either, Err(e)) if e.errno() == libc::EFAULT => 0,
            _ => self.fail(format!("{what}: got {r:?}, the model says {want:?}")),
        }
    }

    /// Whether SET_ATTR over the pages is expected to succeed; `None`: not issued.
    fn set_attr_expect(&self, page: usize, npages: usize) -> Option<i32> {
        if self.any(page, npages, State::Foreign) {
            None
        } else if self.all(page, npages, State::Mapped) {
            Some(0)
        } else {
            Some(libc::EFAULT)
        }
    }

    fn set_attr(&mut self, page: usize, npages: usize, attrs: &[Attr], what: &str) -> bool {
        let Some(want) = self.set_attr_expect(page, npages) else {
            return false;
        };
        let got = errno(self.svm.set_attr(self.addr + page * PAGE, npages * PAGE, attrs));
        if got != want {
            self.fail(format!("{what}: SET_ATTR errno {got}, the model says {want}"));
        }
        got == 0
    }

    /// Lets the instance apply the munmap / madvise events it has read (every call that
    /// takes the instance lock does).
    fn sync(&self) {
        let _ = self.svm.range_count();
    }

    fn forget(&mut self, page: usize, npages: usize, state: State) {
        let fresh = Page { state, ..self.fresh_page() };
        for p in page..page + npages {
            self.pages[p] = fresh;
        }
        self.bytes[page * PAGE..(page + npages) * PAGE].fill(0);
    }

    fn queue(&mut self, gpu: usize) -> &Queue {
        if self.queues[gpu].is_none() {
            self.queues[gpu] = Some(self.svm.create_queue(self.gpus[gpu]).expect("a queue"));
        }
        self.queues[gpu].as_ref().unwrap()
    }

    fn run(&mut self, op: Op) {
        self.log.push(op);
        let what = format!("op {} {op:?}", self.log.len() - 1);
        match op {
            Op::CpuWrite { off, len } => {
                if self.all(off / PAGE, (off + len - 1) / PAGE - off / PAGE + 1, State::Mapped) {
                    let data = self.pattern(len);
                    mem::cpu_write(self.addr + off, &data);
                    self.bytes[off..off + len].copy_from_slice(&data);
                }
            }
            Op::CpuRead { off, len } => {
                if self.all(off / PAGE, (off + len - 1) / PAGE - off / PAGE + 1, State::Mapped) {
                    let mut got = vec![0u8; len];
                    mem::cpu_read(self.addr + off, &mut got);
                    self.check(off, &got, &what);
                }
            }
            Op::GpuWrite { gpu, off, len } => {
                let want = self.predict(gpu, off, len, true);
                if matches!(want, Outcome::Skip | Outcome::Either) {
                    return;
                }
                let data = self.pattern(len);
                let t = Instant::now();
                let r = self.svm.gpu_write(self.gpus[gpu], self.addr + off, &data);
                let n = self.judge(r, want, len, &what, t);
                self.bytes[off..off + n].copy_from_slice(&data[..n]);
            }
            Op::GpuRead { gpu, off, len } => {
                let want = self.predict(gpu, off, len, false);
                if want == Outcome::Skip {
                    return;
                }
                let mut got = vec![0u8; len];
                let t = Instant::now();
                let r = self.svm.gpu_read(self.gpus[gpu], self.addr + off, &mut got);
                let ok = r.is_ok();
                self.judge(r, want, len, &what, t);
                if ok {
                    self.check(off, &got, &what);
                }
            }
            Op::Kernel { gpu, src, dst, len } => {
                let rd = self.predict(gpu, src, len, false);
                let wr = self.predict(gpu, dst, len, true);
                if !matches!(rd, Outcome::Ok | Outcome::Fault(_))
                    || !matches!(wr, Outcome::Ok | Outcome::Fault(_))
                {
                    return;
                }
                let (a, seen) = (self.addr, Arc::new(Mutex::new(None)));
                let seen2 = seen.clone();
                let t = Instant::now();
                let r = self
                    .queue(gpu)
                    .submit(move |ctx| {
                        let mut v = vec![0u8; len];
                        ctx.read(a + src, &mut v)?;
                        *seen2.lock().unwrap() = Some(v.clone());
                        ctx.write(a + dst, &v)
                    })
                    .wait();
                let got = seen.lock().unwrap().take();
                match (rd, got) {
                    (Outcome::Ok, Some(v)) => {
                        self.check(src, &v, &what);
                        let n = self.judge(r, wr, len, &what, t);
                        self.bytes[dst..dst + n].copy_from_slice(&v[..n]);
                    }
                    (Outcome::Fault(_), None) => {
                        self.judge(r, rd, len, &what, t);
                    }
                    (_, got) => self.fail(format!(
                        "{what}: the kernel's read {} but the model says {rd:?} ({r:?})",
                        if got.is_some() { "succeeded" } else { "failed" }
                    )),
                }
            }
            Op::Prefetch { page, npages, gpu } => {
                let loc = gpu.map_or(Location::Sysmem, |g| Location::Gpu(self.gpus[g]));
                self.set_attr(page, npages, &[Attr::PrefetchLoc(loc)], &what);
            }
            Op::SetAttr { page, npages, attr } => {
                if !self.set_attr(page, npages, &[attr], &what) {
                    return;
                }
                let idx = |g: GpuId| self.gpus.iter().position(|&x| x == g).unwrap();
                let xnack = self.xnack;
                for p in &mut self.pages[page..page + npages] {
                    match attr {
                        Attr::Access(g) | Attr::AccessInPlace(g) => p.access |= 1 << idx(g),
                        Attr::NoAccess(g) => {
                            if xnack && p.access & (1 << idx(g)) != 0 {
                                p.loose |= 1 << idx(g);
                            }
                            p.access &= !(1 << idx(g));
                        }
                        Attr::SetFlags(f) if f.contains(SvmFlags::GPU_RO) => {
                            if xnack && !p.ro {
                                p.loose |= p.access;
                            }
                            p.ro = true;
                        }
                        Attr::ClrFlags(f) if f.contains(SvmFlags::GPU_RO) => p.ro = false,
                        Attr::PreferredLoc(loc) => {
                            if xnack {
                                // GPUs without access that a fault mapped keep the mapping.
                                p.loose |= !p.access & ((1 << GPUS) - 1);
                            }
                            p.pref = match loc {
                                Location::Sysmem => Some(None),
                                Location::Gpu(g) => Some(Some(idx(g))),
                                _ => None,
                            };
                        }
                        _ => {}
                    }
                }
            }
            Op::Munmap { page, npages } => {
                if self.all(page, npages, State::Mapped) {
                    mem::unmap(self.addr + page * PAGE, npages * PAGE);
                    self.forget(page, npages, State::Unmapped);
                    self.sync();
                }
            }
            Op::Remap { page, npages } => {
                let mut p = page;
                while p < page + npages {
                    if self.pages[p].state != State::Unmapped {
                        p += 1;
                        continue;
                    }
                    let mut q = p;
                    while q < page + npages && self.pages[q].state == State::Unmapped {
                        q += 1;
                    }
                    let s = if mem::map_at(self.addr + p * PAGE, (q - p) * PAGE) {
                        State::Mapped
                    } else {
                        State::Foreign
                    };
                    self.forget(p, q - p, s);
                    p = q;
                }
            }
            Op::Replace { page, npages } => {
                if self.all(page, npages, State::Mapped) {
                    mem::map_over(self.addr + page * PAGE, npages * PAGE);
                    self.forget(page, npages, State::Mapped);
                    self.sync();
                }
            }
            Op::Dontneed { page, npages } => {
                if self.all(page, npages, State::Mapped) {
                    mem::dontneed(self.addr + page * PAGE, npages * PAGE);
                    self.bytes[page * PAGE..(page + npages) * PAGE].fill(0);
                    if self.xnack {
                        // The GPUs are unmapped there (at least).
                        for p in &mut self.pages[page..page + npages] {
                            p.loose = 0;
                        }
                    }
                    self.sync();
                }
            }
            Op::CheckAll => self.check_all(&what),
        }
    }

    /// Reads every mapped page with the CPU and compares.
    fn check_all(&self, what: &str) {
        let mut p = 0;
        while p < RP {
            if self.pages[p].state != State::Mapped {
                p += 1;
                continue;
            }
            let mut q = p;
            while q < RP && self.pages[q].state == State::Mapped {
                q += 1;
            }
            let mut got = vec![0u8; (q - p) * PAGE];
            mem::cpu_read(self.addr + p * PAGE, &mut got);
            self.check(p * PAGE, &got, what);
            p = q;
        }
    }
}

/// The shared instance, and the input decoded: the mode byte and the operations.
fn decode(data: &[u8], gpus: &[GpuId]) -> (u8, Vec<Op>) {
    let mut u = Unstructured::new(data);
    let mode: u8 = u.arbitrary().unwrap_or(0);
    let mut ops = Vec::new();
    while !u.is_empty() && ops.len() < MAX_OPS {
        ops.push(op(&mut u, gpus));
    }
    (mode, ops)
}

/// Runs one input: a byte string decoded into a mode (XNACK, huge pages, placement
/// policy) and a sequence of operations. Panics on the first divergence from the model,
/// naming the operation.
pub fn access_case(data: &[u8]) {
    let mut guard = INSTANCE.lock().unwrap_or_else(|e| e.into_inner());
    let (mode, ops) = decode(data, &instance(&mut guard, 0).gpu_ids());
    execute(instance(&mut guard, mode), mode, &ops);
}

/// Shrinks a failing input operation by operation (the fuzzers' byte-level minimisation
/// changes how the rest decodes) and prints the smallest failing sequence; for debugging.
#[doc(hidden)]
pub fn access_minimize(data: &[u8]) {
    let mut guard = INSTANCE.lock().unwrap_or_else(|e| e.into_inner());
    let (mode, mut ops) = decode(data, &instance(&mut guard, 0).gpu_ids());
    let svm = instance(&mut guard, mode);
    let fails = |ops: &[Op]| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| execute(svm, mode, ops))).is_err()
    };
    assert!(fails(&ops), "the input does not fail");
    let mut i = 0;
    while i < ops.len() {
        let mut fewer = ops.clone();
        fewer.remove(i);
        if fails(&fewer) { ops = fewer } else { i += 1 }
    }
    eprintln!("minimal: mode {mode:#x} ops {ops:#?}");
}

fn execute(svm: &Svm, mode: u8, ops: &[Op]) {
    assert_eq!(svm.range_count(), 0, "ranges left over by the previous input");
    let xnack = mode & 1 != 0;
    svm.set_xnack(xnack).expect("no queues: XNACK can change");
    let map = Mapping::anon(RP * PAGE, 2 * MIB);
    if mode & 2 != 0 {
        mem::hugepages(map.addr, map.len);
    }
    let (addr, _) = map.leak();
    let mut case = Case {
        svm,
        gpus: svm.gpu_ids(),
        xnack,
        addr,
        pages: Vec::new(),
        bytes: vec![0; RP * PAGE],
        queues: (0..GPUS).map(|_| None).collect(),
        stamp: 0,
        log: Vec::new(),
    };
    case.pages = vec![case.fresh_page(); RP];
    let teardown = |case: &mut Case<'_>| {
        case.queues.clear();
        // Unmap what is ours, nothing else.
        let mut p = 0;
        while p < RP {
            if case.pages[p].state != State::Mapped {
                p += 1;
                continue;
            }
            let mut q = p;
            while q < RP && case.pages[q].state == State::Mapped {
                q += 1;
            }
            mem::unmap(addr + p * PAGE, (q - p) * PAGE);
            p = q;
        }
    };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for &o in ops {
            case.run(o);
        }
        case.check_all("the final check");
    }));
    teardown(&mut case);
    if let Err(e) = r {
        std::panic::resume_unwind(e);
    }
    assert_eq!(svm.range_count(), 0, "the region is unmapped: no range is left");
    for s in svm.smi() {
        assert_eq!(s.vram_used, 0, "the region is unmapped: its VRAM is free ({s:?})");
    }
}
