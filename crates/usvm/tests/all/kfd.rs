//! The KFD model (`usvm::kfd`) that the C library exposes: topology, KFD memory, SVM
//! through node ids, events and SDMA queues executing real packets from a ring.

use crate::util::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use usvm::kfd::{
    EventDescriptor, EventType, Kfd, KfdConfig, KfdError, MemFlags, QueueError, QueueKind, QueueResource,
};
use usvm::{RawAttr, uapi};

fn kfd(gpus: usize, xnack: bool) -> Arc<Kfd> {
    Kfd::new(KfdConfig { gpus, vram_bytes: 256 << 20, xgmi_hive: false, xnack }).unwrap()
}

/// A 64-bit store to application memory.
fn store64(addr: usize, v: u64) {
    // SAFETY: `addr` is an 8-byte aligned word of memory the test allocated (or a queue's
    // pointer / doorbell word), mapped read-write.
    unsafe { std::ptr::write_volatile(addr as *mut u64, v) }
}

fn load64(addr: usize) -> u64 {
    // SAFETY: as for `store64`.
    unsafe { std::ptr::read_volatile(addr as *const u64) }
}

/// An SDMA queue with its ring, driven the way kfdtest drives one.
struct Sdma {
    k: Arc<Kfd>,
    ring: usize,
    res: QueueResource,
    wptr: u64,
}

const RING: usize = 4096;

impl Sdma {
    fn new(k: &Arc<Kfd>, node: u32) -> Sdma {
        let flags =
            MemFlags::HOST_ACCESS | MemFlags::EXECUTE_ACCESS | MemFlags::NO_NUMA_BIND | MemFlags::UNCACHED;
        let ring = k.alloc_memory(node, RING as u64, flags).unwrap();
        k.map_memory(ring, Some(&[node])).unwrap();
        let res = k.create_queue(node, QueueKind::Sdma, ring, RING as u64).unwrap();
        Sdma { k: k.clone(), ring, res, wptr: 0 }
    }

    /// Places `dw` in the ring (padding to the end with NOPs when it would wrap) and rings.
    fn submit(&mut self, dw: &[u32]) {
        let pos = (self.wptr as usize) % RING;
        let pad = if pos + dw.len() * 4 > RING { RING - pos } else { 0 };
        // Room for the padding and the packet: the engine may still be reading the rest.
        while self.wptr + (pad + dw.len() * 4) as u64 - load64(self.res.read_ptr) > RING as u64 {
            std::thread::yield_now();
        }
        if pad > 0 {
            for i in (pos..RING).step_by(4) {
                // SAFETY: inside the ring this test allocated.
                unsafe { std::ptr::write_volatile((self.ring + i) as *mut u32, 0) };
            }
            self.wptr += (RING - pos) as u64;
        }
        let pos = (self.wptr as usize) % RING;
        for (i, w) in dw.iter().enumerate() {
            // SAFETY: inside the ring this test allocated (checked against its end above).
            unsafe { std::ptr::write_volatile((self.ring + pos + i * 4) as *mut u32, *w) };
        }
        self.wptr += dw.len() as u64 * 4;
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        store64(self.res.write_ptr, self.wptr);
        store64(self.res.doorbell, self.wptr);
    }

    /// Waits until the engine consumed everything submitted.
    fn wait(&self) -> bool {
        let t = Instant::now();
        while load64(self.res.read_ptr) != self.wptr {
            if t.elapsed() > Duration::from_secs(10) {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        true
    }
}

impl Drop for Sdma {
    fn drop(&mut self) {
        self.k.destroy_queue(self.res.id).unwrap();
        self.k.unmap_memory(self.ring).unwrap();
        self.k.free_memory(self.ring).unwrap();
    }
}

fn copy_packet(dst: usize, src: usize, bytes: usize) -> Vec<u32> {
    vec![1, (bytes - 1) as u32, 0, src as u32, (src >> 32) as u32, dst as u32, (dst >> 32) as u32]
}

fn fill_packet(dst: usize, data: u32, bytes: usize) -> Vec<u32> {
    vec![0x8000_000b, dst as u32, (dst >> 32) as u32, data, (bytes - 1) as u32]
}

#[test]
fn topology_has_a_cpu_node_then_gpu_nodes() {
    let k = kfd(2, false);
    let n = k.nodes();
    assert_eq!(n.len(), 3);
    assert!(n[0].cpu_cores > 0 && n[0].simd_count == 0 && n[0].gpu_id == 0);
    for (i, g) in n[1..].iter().enumerate() {
        assert!(g.is_gpu() && g.cpu_cores == 0 && !g.integrated);
        assert_eq!(g.gpu_id, k.svm().gpu_ids()[i].0);
        assert_eq!(g.engine_id(), 9 << 10 | 10 << 24, "gfx90a");
        assert_ne!(g.capability & (1 << 27), 0, "SVMAPISupported");
        assert_eq!(g.banks[0].size, 256 << 20);
        assert!(g.sdma_engines > 0 && g.sdma_queues_per_engine > 0);
    }
    assert_eq!(k.gpu_of_node(0), Err(KfdError::InvalidNode(0)));
    assert_eq!(k.node(3).unwrap_err(), KfdError::InvalidNode(3));
}

#[test]
fn svm_through_node_ids() {
    let k = kfd(2, false);
    let buf = k.svm().alloc(2 * MIB).unwrap();
    let (a, n) = (buf.addr() as u64, buf.len() as u64);
    let attr = |ty, value| RawAttr { ty, value };
    k.svm_set_attr(
        a,
        n,
        &[attr(uapi::KFD_IOCTL_SVM_ATTR_PREFERRED_LOC, 2), attr(uapi::KFD_IOCTL_SVM_ATTR_ACCESS, 1)],
    )
    .unwrap();
    let mut q = [
        attr(uapi::KFD_IOCTL_SVM_ATTR_PREFERRED_LOC, 0),
        attr(uapi::KFD_IOCTL_SVM_ATTR_PREFETCH_LOC, 0),
        attr(uapi::KFD_IOCTL_SVM_ATTR_ACCESS, 1),
        attr(uapi::KFD_IOCTL_SVM_ATTR_ACCESS, 2),
    ];
    k.svm_get_attr(a, n, &mut q).unwrap();
    assert_eq!(q[0].value, 2, "preferred: node 2");
    assert_eq!(q[1].value, 0xffff_ffff, "prefetch undefined");
    assert_eq!((q[2].ty, q[2].value), (uapi::KFD_IOCTL_SVM_ATTR_ACCESS, 1));
    assert_eq!((q[3].ty, q[3].value), (uapi::KFD_IOCTL_SVM_ATTR_NO_ACCESS, 2));
    // libhsakmt's checks.
    let bad = |r: Result<(), KfdError>| r.unwrap_err();
    assert!(matches!(bad(k.svm_set_attr(0, n, &[])), KfdError::InvalidParameter(_)));
    assert!(matches!(bad(k.svm_set_attr(a + 1, n, &[])), KfdError::InvalidParameter(_)));
    assert_eq!(
        bad(k.svm_set_attr(a, n, &[attr(uapi::KFD_IOCTL_SVM_ATTR_ACCESS, 0)])),
        KfdError::InvalidNode(0)
    );
    assert_eq!(
        bad(k.svm_set_attr(a, n, &[attr(uapi::KFD_IOCTL_SVM_ATTR_PREFETCH_LOC, 7)])),
        KfdError::InvalidNode(7)
    );
    assert_eq!(
        bad(k.svm_set_attr(a, n, &[attr(uapi::KFD_IOCTL_SVM_ATTR_PREFETCH_LOC, 0xffff_ffff)])),
        KfdError::InvalidNode(0xffff_ffff)
    );
    // A CPU node means system memory.
    k.svm_set_attr(a, n, &[attr(uapi::KFD_IOCTL_SVM_ATTR_PREFETCH_LOC, 0)]).unwrap();
    // The kernel's own errors come back with their errno.
    let e = bad(k.svm_set_attr(0x10000, 4096, &[attr(uapi::KFD_IOCTL_SVM_ATTR_ACCESS, 1)]));
    assert_eq!(e.errno(), libc::EFAULT, "{e}");
}

#[test]
fn kfd_memory_never_migrates_and_refuses_svm() {
    let k = kfd(2, false);
    let vram = k.alloc_memory(1, 2 * MIB as u64, MemFlags::NON_PAGED | MemFlags::HOST_ACCESS).unwrap();
    let sys = k.alloc_memory(0, 64 << 10, MemFlags::HOST_ACCESS).unwrap();
    for a in [vram, sys] {
        store64(a, 0x1234);
        let e = k
            .svm_set_attr(a as u64, 4096, &[RawAttr { ty: uapi::KFD_IOCTL_SVM_ATTR_PREFETCH_LOC, value: 1 }])
            .unwrap_err();
        assert_eq!(e.errno(), libc::EADDRINUSE, "{e}");
    }
    assert_eq!(k.svm().smi()[0].vram_used, 2 * MIB as u64, "VRAM counts against the GPU");
    // Too much VRAM is an error.
    assert_eq!(k.alloc_memory(1, 512 << 20, MemFlags::NON_PAGED), Err(KfdError::NoMemory));
    // Mapped, a GPU reads what the CPU wrote; unmapped, it faults.
    let g = k.svm().gpu_ids()[0];
    let mut b = [0u8; 8];
    assert!(k.svm().gpu_read(g, vram, &mut b).is_err());
    k.map_memory(vram, None).unwrap();
    k.svm().gpu_read(g, vram, &mut b).unwrap();
    assert_eq!(u64::from_le_bytes(b), 0x1234);
    k.unmap_memory(vram).unwrap();
    assert!(k.svm().gpu_read(g, vram, &mut b).is_err());
    k.free_memory(vram).unwrap();
    k.free_memory(sys).unwrap();
    assert_eq!(k.free_memory(sys), Err(KfdError::NotRegistered(sys)));
    assert_eq!(k.svm().smi()[0].vram_used, 0);
}

#[test]
fn sdma_copies_fills_and_writes_through_the_ring() {
    for xnack in [false, true] {
        let k = kfd(1, xnack);
        let g = 1;
        let mut q = Sdma::new(&k, g);
        let src = k.svm().alloc(4 * MIB).unwrap();
        let dst = k.svm().alloc(4 * MIB).unwrap();
        let data = pattern(4 * MIB, 9);
        src.write_at(0, &data);
        let gpu = RawAttr { ty: uapi::KFD_IOCTL_SVM_ATTR_ACCESS, value: g };
        let pf = RawAttr { ty: uapi::KFD_IOCTL_SVM_ATTR_PREFETCH_LOC, value: g };
        k.svm_set_attr(src.addr() as u64, src.len() as u64, &[gpu, pf]).unwrap();
        k.svm_set_attr(dst.addr() as u64, dst.len() as u64, &[gpu, pf]).unwrap();
        // Two 2 MiB copies (kfdtest's split), then a fill of one page and a fence.
        let mut dw = copy_packet(dst.addr(), src.addr(), 2 * MIB);
        dw.extend(copy_packet(dst.addr() + 2 * MIB, src.addr() + 2 * MIB, 2 * MIB));
        q.submit(&dw);
        assert!(q.wait(), "xnack {xnack}: the copy completes");
        let mut back = vec![0u8; 4 * MIB];
        dst.read_at(0, &mut back);
        assert!(back == data, "xnack {xnack}: byte {:?} differs", first_difference(&back, &data));
        q.submit(&fill_packet(dst.addr() + 4096, 0x55aa_aa55, 4096));
        q.submit(&[5, dst.addr() as u32, (dst.addr() >> 32) as u32, 0xfeed]);
        assert!(q.wait());
        let mut w = [0u8; 4];
        dst.read_at(4096 + 100, &mut w);
        assert_eq!(u32::from_le_bytes(w), 0x55aa_aa55);
        dst.read_at(0, &mut w);
        assert_eq!(u32::from_le_bytes(w), 0xfeed);
        // Many small submissions wrap the ring.
        for i in 0..300u32 {
            q.submit(&[5, dst.addr() as u32 + 8, (dst.addr() >> 32) as u32, i]);
        }
        assert!(q.wait());
        dst.read_at(8, &mut w);
        assert_eq!(u32::from_le_bytes(w), 299);
    }
}

#[test]
fn a_trap_signals_the_event_and_a_fault_halts_the_queue() {
    let k = kfd(1, false);
    let mut q = Sdma::new(&k, 1);
    let (ev, hw2) =
        k.events().create(EventDescriptor { kind: EventType::Signal, node: 1 }, false, false).unwrap();
    q.submit(&[5, hw2 as u32, (hw2 >> 32) as u32, ev, 6, ev]);
    k.events().wait(&[ev], false, 5000).unwrap();
    assert_eq!(load64(hw2 as usize) as u32, ev, "the FENCE wrote the event page");
    // A write to read-only memory: memory exception, with the page's address.
    let (mem, _) =
        k.events().create(EventDescriptor { kind: EventType::Memory, node: 1 }, true, false).unwrap();
    let ro = Mapping::anon(2 * PAGE, PAGE);
    let src = Mapping::anon(PAGE, PAGE);
    let attrs = [RawAttr { ty: uapi::KFD_IOCTL_SVM_ATTR_ACCESS, value: 1 }];
    k.svm_set_attr(ro.addr as u64, ro.len as u64, &attrs).unwrap();
    k.svm_set_attr(src.addr as u64, src.len as u64, &attrs).unwrap();
    store64(ro.addr, 7);
    mprotect(ro.addr, PAGE, libc::PROT_READ);
    q.submit(&copy_packet(ro.addr + 64, src.addr, 64));
    k.events().wait(&[mem], false, 5000).unwrap();
    let f = k.events().fault(mem).unwrap().unwrap();
    assert_eq!((f.addr, f.node), (ro.addr as u64, 1));
    assert_eq!(load64(ro.addr), 7, "the write never landed");
    let e = k.queues().error(q.res.id).unwrap();
    assert!(matches!(e, Some(QueueError::Fault { write: true, .. })), "{e:?}");
    std::thread::sleep(Duration::from_millis(20));
    assert_ne!(load64(q.res.read_ptr), q.wptr, "the faulting packet is not consumed");
}

#[test]
fn an_aql_queues_doorbell_takes_stores_and_the_queue_counts_for_xnack() {
    let k = kfd(1, false);
    let flags = MemFlags::HOST_ACCESS | MemFlags::EXECUTE_ACCESS;
    let ring = k.alloc_memory(1, RING as u64, flags).unwrap();
    let res = k.create_queue(1, QueueKind::ComputeAql, ring, RING as u64).unwrap();
    // AQL queues execute nothing, but the application's stores must land at once (a
    // watched doorbell nobody served blocked the store for ever).
    let t = std::thread::spawn(move || {
        store64(res.write_ptr, 12);
        store64(res.doorbell, 12);
    });
    let t0 = Instant::now();
    while !t.is_finished() {
        assert!(t0.elapsed() < Duration::from_secs(5), "the doorbell store blocked");
        std::thread::sleep(Duration::from_millis(1));
    }
    t.join().unwrap();
    assert_eq!(load64(res.doorbell), 12);
    assert_eq!(k.set_xnack(true).unwrap_err().errno(), libc::EBUSY, "an AQL queue counts");
    k.destroy_queue(res.id).unwrap();
    k.set_xnack(true).unwrap();
    k.free_memory(ring).unwrap();
}
