//! The `ioctl` target: arbitrary `svm_ioctl` calls (ops, addresses, sizes, attribute
//! arrays) and XNACK switches on a window of memory with holes, against the per-page
//! reference model ([`crate::model`]). Every errno, every GET result and every range (with
//! its attributes, GPU-mapping state and residency) must agree after every call.

use crate::mem::{MIB, Mapping, PAGE, errno, unmap};
use crate::model::{HOLES, MAX_PAGES, Model, W, real_ranges};
use arbitrary::Unstructured;
use std::sync::Mutex;
use usvm::uapi::*;
use usvm::{RawAttr, Svm};

/// Most calls one input makes.
const MAX_CALLS: usize = 48;
const UNDEF: u32 = KFD_IOCTL_SVM_LOCATION_UNDEFINED;
/// An id no GPU of the instance has.
const BAD_GPU: u32 = 0xdead;

/// One instance per process, reused by every input (an instance costs threads and a
/// userfaultfd); inputs run one at a time.
static INSTANCE: Mutex<Option<Svm>> = Mutex::new(None);

/// One decoded call.
#[derive(Clone, Debug)]
enum Call {
    Ioctl { op: u32, start: u64, size: u64, attrs: Vec<RawAttr> },
    Xnack(bool),
}

fn pick<T: Copy>(u: &mut Unstructured<'_>, pool: &[T]) -> T {
    pool[u.choose_index(pool.len()).unwrap_or(0)]
}

fn raw_u32(u: &mut Unstructured<'_>) -> u32 {
    u.arbitrary().unwrap_or(0)
}

/// An attribute: usually a known type with a value from a pool that matters for it (the
/// instance's GPU ids, an unknown id, locations, flags, granularities), sometimes anything.
fn attr(u: &mut Unstructured<'_>) -> RawAttr {
    let sel: u8 = u.arbitrary().unwrap_or(0);
    let ty = if sel < 236 { u32::from(sel % 8) } else { raw_u32(u) };
    let raw = raw_u32(u);
    let v = match ty {
        0 | 1 => pick(u, &[0, UNDEF, 0x1111, 0x2222, 0x1111, 0x2222, BAD_GPU, raw, 0]),
        2..=4 => pick(u, &[0x1111, 0x2222, 0x1111, 0x2222, 0x1111, 0x2222, BAD_GPU, 0, raw]),
        5 | 6 => pick(u, &[0x1, 0x2, 0x8, 0x10, 0x40, raw & 0xff, raw, 0x3, 0x48]),
        7 => pick(u, &[0, 1, 5, 9, 63, 64, 100, raw, 3]),
        _ => raw,
    };
    RawAttr::new(ty, v)
}

fn call(u: &mut Unstructured<'_>, base: u64) -> Call {
    let tag: u8 = u.arbitrary().unwrap_or(0);
    if tag % 32 == 31 {
        return Call::Xnack(u.arbitrary().unwrap_or(false));
    }
    let op = match u.arbitrary::<u8>().unwrap_or(0) % 16 {
        0..=8 => KFD_IOCTL_SVM_OP_SET_ATTR,
        9..=14 => KFD_IOCTL_SVM_OP_GET_ATTR,
        _ => raw_u32(u),
    };
    let first = u.int_in_range(0..=W - 1).unwrap_or(0);
    let npages = match u.arbitrary::<u8>().unwrap_or(0) % 4 {
        0 => u.int_in_range(1..=16).unwrap_or(1),
        1 => u.int_in_range(1..=700).unwrap_or(1),
        2 => u.int_in_range(1..=W).unwrap_or(1),
        _ => u.int_in_range(1..=MAX_PAGES + 2).unwrap_or(1),
    }
    .min(W - first);
    let mut start = (base + first) << 12;
    let mut size = npages << 12;
    // Invalid intervals, often.
    match u.arbitrary::<u8>().unwrap_or(0) % 24 {
        0 => start += u.int_in_range(1..=4095).unwrap_or(1),
        1 => size += u.int_in_range(1..=4095).unwrap_or(1),
        2 => size = 0,
        3 => start = 0,
        // Above the user address space: nothing is mapped there (EFAULT), or the end
        // overflows (EINVAL).
        4 => start = pick(u, &[1 << 47, 0x7fff_ffff_f000, 0xffff_8000_0000_0000, !0xfff]),
        // Terabytes from the window on: some page is unmapped, or the end overflows.
        5 => size = (u.arbitrary::<u64>().unwrap_or(0) | 1 << 40) & !0xfff,
        6 => {
            start = u.arbitrary().unwrap_or(0);
            size = u.arbitrary().unwrap_or(0);
            // Only garbage that cannot land on memory mapped by someone else.
            if start.is_multiple_of(4096) && size.is_multiple_of(4096) && start != 0 && size != 0 {
                start |= 1 << 47;
            }
        }
        _ => {}
    }
    let n = match u.arbitrary::<u8>().unwrap_or(0) {
        0..=239 => usize::from(u.arbitrary::<u8>().unwrap_or(0) % 6),
        _ => u.int_in_range(6..=40).unwrap_or(6),
    };
    let mut attrs: Vec<RawAttr> = (0..n).map(|_| attr(u)).collect();
    if op == KFD_IOCTL_SVM_OP_GET_ATTR {
        // GET queries use query types most of the time.
        for a in attrs.iter_mut() {
            if a.ty == 3 && a.value % 2 == 0 {
                a.ty = 2;
            }
        }
    }
    Call::Ioctl { op, start, size, attrs }
}

/// Runs one input: a byte string decoded into XNACK mode and a sequence of calls. Panics on
/// the first divergence from the model, naming the call.
pub fn ioctl_case(data: &[u8]) {
    let mut guard = INSTANCE.lock().unwrap_or_else(|e| e.into_inner());
    let svm = guard
        .get_or_insert_with(|| Svm::builder().gpus(2).vram_bytes(64 << 20).build().expect("an instance"));
    assert_eq!(svm.max_range_bytes(), MAX_PAGES as usize * PAGE);
    assert_eq!(svm.range_count(), 0, "ranges left over by the previous input");
    let mut u = Unstructured::new(data);
    let xnack: bool = u.arbitrary().unwrap_or(false);
    svm.set_xnack(xnack).expect("no queues: XNACK can change");
    let map = Mapping::anon(W as usize * PAGE, 2 * MIB);
    for (p, n) in HOLES {
        map.punch(p as usize * PAGE, n as usize * PAGE);
    }
    // From here on the window is unmapped piece by piece, around the holes: something else
    // may have been mapped in a hole meanwhile.
    let (addr, _) = map.leak();
    let base = addr as u64 >> 12;
    let mut model = Model::new(base, svm.gpu_ids().iter().map(|g| g.0).collect(), xnack);
    let mut calls = Vec::new();
    while !u.is_empty() && calls.len() < MAX_CALLS {
        let c = call(&mut u, base);
        calls.push(c.clone());
        let i = calls.len() - 1;
        match c {
            Call::Xnack(on) => {
                assert_eq!(errno(svm.set_xnack(on)), 0, "call {i}: {c:?}");
                model.xnack = on;
            }
            Call::Ioctl { op, start, size, ref attrs } => {
                let mut real = attrs.clone();
                let mut expect = attrs.clone();
                let got = errno(svm.svm_ioctl(op, start, size, &mut real));
                let want = model.ioctl(op, start, size, &mut expect);
                assert_eq!(got, want, "errno of call {i}: {c:?}\nxnack {xnack}, calls {calls:?}");
                assert_eq!(real, expect, "results of call {i}: {c:?}\nxnack {xnack}, calls {calls:?}");
            }
        }
        let (r, m) = (real_ranges(svm, base), model.ranges());
        assert!(
            r == m,
            "ranges after call {i}: {c:?}\nlibrary {r:?}\nmodel   {m:?}\nxnack {xnack}, calls {calls:?}"
        );
    }
    let mut at = 0;
    for (p, n) in HOLES {
        unmap(addr + at * PAGE, (p as usize - at) * PAGE);
        at = (p + n) as usize;
    }
    unmap(addr + at * PAGE, (W as usize - at) * PAGE);
    assert_eq!(svm.range_count(), 0, "the window is unmapped: no range is left");
    for s in svm.smi() {
        assert_eq!(s.vram_used, 0, "the window is unmapped: its VRAM is free ({s:?})");
    }
}
