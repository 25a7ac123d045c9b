//! PM4 compute queues at the KFD level, driven the way kfdtest's PM4Queue and Dispatch drive
//! them: a 4 KiB ring, a 64-bit write pointer and doorbell counting dwords (never wrapped),
//! a read pointer holding the dwords consumed modulo the ring size, NOP padding before the
//! ring's end; dispatches built as kfdtest's 84-dword indirect buffer, each followed by a
//! RELEASE_MEM that signals an event.

use crate::util::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use usvm::kfd::{
    ErrorReport, EventDescriptor, EventType, Kfd, KfdConfig, MemFlags, QueueError, QueueKind, QueueResource,
};
use usvm::{RawAttr, uapi};

fn kfd(xnack: bool) -> Arc<Kfd> {
    Kfd::new(KfdConfig { gpus: 1, vram_bytes: 256 << 20, xgmi_hive: false, xnack }).unwrap()
}

fn store32(addr: usize, v: u32) {
    // SAFETY: `addr` is a 4-byte aligned word of memory this test allocated, mapped
    // read-write.
    unsafe { std::ptr::write_volatile(addr as *mut u32, v) }
}

fn load32(addr: usize) -> u32 {
    // SAFETY: as for `store32`.
    unsafe { std::ptr::read_volatile(addr as *const u32) }
}

fn store64(addr: usize, v: u64) {
    // SAFETY: an 8-byte aligned word of a queue's pointer page or doorbell, or of memory
    // this test allocated.
    unsafe { std::ptr::write_volatile(addr as *mut u64, v) }
}

/// kfdtest's CopyDwordIsa for gfx90a: `*arg2 = *arg1`, once per wave.
const COPY_DWORD: [u32; 10] = [
    0x7e00_0200,
    0x7e02_0201,
    0x7e04_0202,
    0x7e06_0203,
    0xdc53_0000,
    0x0400_0000,
    0xbf8c_0000,
    0xdc73_0000,
    0x0000_0402,
    0xbf81_0000,
];
/// kfdtest's ReadMemoryIsa for gfx90a: wave i reads buffer `arg1[i]` page by page until
/// `arg1`'s first dword is 0x5678, then stores 0x5678 to `arg2[i]` (the buffer's size).
const READ_MEMORY: [u32; 42] = [
    0x7e00_0204,
    0x2400_0082,
    0x3208_0002,
    0x7e0a_0203,
    0xd11c_6a05,
    0x01a9_0105,
    0x2400_0081,
    0x3204_0000,
    0x7e06_0201,
    0xd11c_6a03,
    0x01a9_0103,
    0xdc52_0000,
    0x0b00_0004,
    0xdc56_0000,
    0x0600_0002,
    0xbf8c_0070,
    0x7e10_02ff,
    0x0000_5678,
    0xb008_5678,
    0xc003_0400,
    0x0000_0000,
    0xbf8c_0070,
    0xbf00_0810,
    0xbf85_000e,
    0x7e12_0280,
    0x7e14_02ff,
    0x0000_1000,
    0x7e18_0306,
    0x7e1a_0307,
    0xdc56_0000,
    0x0e00_000c,
    0x3212_1509,
    0x3218_150c,
    0xd11c_6a0d,
    0x01a9_010d,
    0x7d92_1709,
    0xbf87_fff8,
    0xbf82_ffed,
    0xdc70_0000,
    0x0000_0804,
    0xbf8c_0070,
    0xbf81_0000,
];
/// kfdtest's COMPUTE_PGM_RSRC1 / RSRC2 / RSRC3 for its shaders on gfx90a.
const RSRC: [u32; 3] = [0x000c_0084, 0x0000_28c8, 9];
/// The ring's size in dwords (kfdtest's 4 KiB ring).
const Q: u64 = 1024;
/// kfdtest's padding dword.
const PAD: u32 = 0xffff_1002;

fn lo(a: u64) -> u32 {
    a as u32
}

fn hi(a: u64) -> u32 {
    (a >> 32) as u32
}

/// KFD memory mapped to the GPU (ring, IB and ISA buffers).
fn gpu_buffer(k: &Kfd, bytes: usize) -> usize {
    let flags =
        MemFlags::HOST_ACCESS | MemFlags::EXECUTE_ACCESS | MemFlags::NO_NUMA_BIND | MemFlags::UNCACHED;
    let a = k.alloc_memory(1, bytes as u64, flags).unwrap();
    k.map_memory(a, Some(&[1])).unwrap();
    a
}

/// A PM4 queue with its ring.
struct Pm4 {
    k: Arc<Kfd>,
    ring: usize,
    res: QueueResource,
    wptr: u64,
}

impl Pm4 {
    fn new(k: &Arc<Kfd>, report: ErrorReport) -> Pm4 {
        let ring = gpu_buffer(k, Q as usize * 4);
        let res = k.create_queue_reporting(1, QueueKind::Compute, ring, Q * 4, report).unwrap();
        Pm4 { k: k.clone(), ring, res, wptr: 0 }
    }

    fn rptr(&self) -> u64 {
        self.k.queues().read_ptr(self.res.id).unwrap()
    }

    /// kfdtest's PlacePacket + SubmitPacket: room as it counts it, padding to the ring's
    /// end, the dwords, then the write pointer and the doorbell (dwords, never wrapped).
    fn submit(&mut self, dw: &[u32]) {
        let wr = self.wptr % Q;
        let n = dw.len() as u64;
        let pad = if wr + n > Q { Q - wr } else { 0 };
        let t = Instant::now();
        while (self.rptr() + Q - 1 - wr) % Q < n + pad {
            assert!(t.elapsed() < Duration::from_secs(10), "no room in the ring");
            std::thread::sleep(Duration::from_micros(100));
        }
        for i in 0..pad {
            store32(self.ring + ((wr + i) * 4) as usize, PAD);
        }
        self.wptr += pad;
        let wr = self.wptr % Q;
        for (i, w) in dw.iter().enumerate() {
            store32(self.ring + (wr as usize + i) * 4, *w);
        }
        self.wptr += n;
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        store64(self.res.write_ptr, self.wptr);
        store64(self.res.doorbell, self.wptr);
    }

    /// kfdtest's Wait4PacketConsumption: the read pointer equals the wrapped write pointer.
    fn wait(&self) -> bool {
        let t = Instant::now();
        while self.rptr() != self.wptr % Q {
            if t.elapsed() > Duration::from_secs(10) {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        true
    }
}

impl Drop for Pm4 {
    fn drop(&mut self) {
        self.k.destroy_queue(self.res.id).unwrap();
        self.k.unmap_memory(self.ring).unwrap();
        self.k.free_memory(self.ring).unwrap();
    }
}

/// kfdtest's 84-dword indirect buffer at `ib` for a dispatch of `isa` with two pointer
/// arguments over `dim_x` work-items of one work-item each.
fn dispatch_ib(ib: u64, isa: u64, args: [u64; 2], dim_x: u32) -> Vec<u32> {
    let mut v = vec![0xc005_5802, 0x28c0_0000, 0xffff_ffff, 0, 0, 0, 4];
    v.extend([0xc008_7602, 0x204, 0, 0, 0, 1, 1, 1, 0, 0]);
    v.extend([0xc006_7602, 0x20c, (isa >> 8) as u32, (isa >> 40) as u32, 0, 0, 0, 0]);
    v.extend([0xc002_7602, 0x212, RSRC[0], RSRC[1], 0xc001_7602, 0x22d, RSRC[2]]);
    v.extend([0xc001_7602, 0x215, 0, 0xc001_7602, 0x218, 0, 0xc004_7602, 0x21b, 0, 0, 0, 0]);
    v.extend([0xc010_7602, 0x240, lo(args[0]), hi(args[0]), lo(args[1]), hi(args[1])]);
    v.extend([0; 12]);
    v.extend([0xc003_1502, dim_x, 1, 1, 0x21, 0xc000_1002, 0]);
    let fence = ib + 68 * 4;
    v.extend([0xc006_4902, 0x0002_8514, 0x2300_0000, lo(fence), hi(fence), 0xdead_beef, 0, 0xdead_beef]);
    v.extend([0xc005_3c02, 0x13, lo(fence), hi(fence), 0xdead_beef, 0xffff_ffff, 0x8000_0004]);
    assert_eq!(v.len(), 84);
    v
}

/// INDIRECT_BUFFER of `n` dwords at `ib`.
fn ib_packet(ib: u64, n: usize) -> [u32; 4] {
    [0xc002_3f02, lo(ib), hi(ib) & 0xffff, 0x2080_0000 | n as u32]
}

/// RELEASE_MEM writing `event` to the event's slot `slot` and raising its interrupt.
fn release_mem(slot: u64, event: u32) -> [u32; 8] {
    [0xc006_4902, 0x0002_8514, 0x2200_0000, lo(slot), hi(slot), event, 0, event]
}

/// WRITE_DATA of `data` at `addr` (all to `addr` when `same`).
fn write_data(addr: u64, same: bool, data: &[u32]) -> Vec<u32> {
    let mut v = vec![0xc000_3702 | ((data.len() as u32 + 2) << 16), 5 << 8 | u32::from(same) << 16];
    v.extend([lo(addr), hi(addr)]);
    v.extend(data);
    v
}

/// WAIT_REG_MEM until `*addr == reference`.
fn wait_reg_mem(addr: u64, reference: u32) -> [u32; 7] {
    [0xc005_3c02, 0x13, lo(addr), hi(addr), reference, 0xffff_ffff, 4]
}

/// Registers `len` bytes at `addr` as an SVM range the GPU may access (kfdtest's
/// HsaSVMRange: prefetch to system memory).
fn svm_range(k: &Kfd, addr: usize, len: usize) {
    let attrs = [
        RawAttr { ty: uapi::KFD_IOCTL_SVM_ATTR_PREFETCH_LOC, value: 0 },
        RawAttr { ty: uapi::KFD_IOCTL_SVM_ATTR_PREFERRED_LOC, value: 0 },
        RawAttr { ty: uapi::KFD_IOCTL_SVM_ATTR_ACCESS, value: 1 },
    ];
    k.svm_set_attr(addr as u64, len as u64, &attrs).unwrap();
}

fn signal_event(k: &Kfd, manual: bool) -> (u32, u64) {
    k.events().create(EventDescriptor { kind: EventType::Signal, node: 1 }, manual, false).unwrap()
}

/// What one dispatch needs: an ISA buffer holding CopyDword, an IB buffer, an event.
struct Dispatcher {
    isa: usize,
    ib: usize,
    event: (u32, u64),
}

impl Dispatcher {
    fn new(k: &Kfd) -> Dispatcher {
        let isa = gpu_buffer(k, PAGE);
        for (i, w) in COPY_DWORD.iter().enumerate() {
            store32(isa + i * 4, *w);
        }
        Dispatcher { isa, ib: gpu_buffer(k, PAGE), event: signal_event(k, true) }
    }

    /// kfdtest's Dispatch::Submit of CopyDword(src, dst): the IB, then the ring's 12 dwords
    /// in two submissions (two doorbell rings).
    fn submit(&self, q: &mut Pm4, src: usize, dst: usize) {
        let ib = dispatch_ib(self.ib as u64, self.isa as u64, [src as u64, dst as u64], 1);
        for (i, w) in ib.iter().enumerate() {
            store32(self.ib + i * 4, *w);
        }
        q.submit(&ib_packet(self.ib as u64, ib.len()));
        q.submit(&release_mem(self.event.1, self.event.0));
    }

    /// kfdtest's Sync: waits for the event, then resets it for the next dispatch.
    fn sync(&self, k: &Kfd) {
        k.events().wait(&[self.event.0], false, 10_000).expect("the dispatch's event");
        k.events().reset(self.event.0).unwrap();
    }
}

#[test]
fn one_dispatch_copies_a_dword_and_signals() {
    for xnack in [false, true] {
        let k = kfd(xnack);
        let mut q = Pm4::new(&k, ErrorReport::default());
        let d = Dispatcher::new(&k);
        let (src, dst) = (Mapping::anon(PAGE, PAGE), Mapping::anon(PAGE, PAGE));
        store32(src.addr, 0x0101_0101);
        svm_range(&k, src.addr, PAGE);
        svm_range(&k, dst.addr, PAGE);
        d.submit(&mut q, src.addr, dst.addr);
        assert!(q.wait(), "xnack {xnack}: the ring is consumed");
        assert_eq!(q.rptr(), 12, "the read pointer counts dwords");
        d.sync(&k);
        assert_eq!(load32(dst.addr), 0x0101_0101, "xnack {xnack}");
        assert_eq!(load32(d.event.1 as usize), d.event.0, "RELEASE_MEM wrote the event id");
        assert_eq!(load32(d.ib + 68 * 4), 0xdead_beef, "the IB's own fence word");
        assert_eq!(k.queues().error(q.res.id).unwrap(), None);
    }
}

#[test]
fn the_ring_wraps_and_the_read_pointer_wraps_with_it() {
    let k = kfd(false);
    let mut q = Pm4::new(&k, ErrorReport::default());
    let d = Dispatcher::new(&k);
    let (src, dst) = (Mapping::anon(PAGE, PAGE), Mapping::anon(PAGE, PAGE));
    for i in 0..90 {
        store32(src.addr + i * 4, 0x1000 + i as u32);
    }
    svm_range(&k, src.addr, PAGE);
    svm_range(&k, dst.addr, PAGE);
    // A two-dword NOP first: kfdtest's 12-dword dispatches alone end exactly at the ring's
    // end for the first 170 of them; shifted by 2, the 86th needs padding.
    q.submit(&[0xc000_1002, 0]);
    let mut pads = 0;
    for i in 0..90 {
        let before = q.wptr;
        d.submit(&mut q, src.addr + i * 4, dst.addr + i * 4);
        pads += u64::from(q.wptr - before != 12);
        assert!(q.wait(), "dispatch {i}: rptr {} wptr {}", q.rptr(), q.wptr);
        assert_eq!(q.rptr(), q.wptr % Q, "dispatch {i}");
        d.sync(&k);
        assert_eq!(load32(dst.addr + i * 4), 0x1000 + i as u32, "dispatch {i}");
    }
    assert!(q.wptr > Q && pads >= 1, "the ring wrapped ({} dwords, {pads} paddings)", q.wptr);
}

#[test]
fn a_second_ring_while_the_first_ib_runs() {
    let k = kfd(false);
    let mut q = Pm4::new(&k, ErrorReport::default());
    let buf = Mapping::anon(PAGE, PAGE);
    svm_range(&k, buf.addr, PAGE);
    let (flag, out) = (buf.addr as u64, buf.addr as u64 + 64);
    // An IB that waits for the host, then writes: the queue is busy in it ...
    let ib = gpu_buffer(&k, PAGE);
    let mut dw = wait_reg_mem(flag, 7).to_vec();
    dw.extend(write_data(out, false, &[0xabcd]));
    for (i, w) in dw.iter().enumerate() {
        store32(ib + i * 4, *w);
    }
    q.submit(&ib_packet(ib as u64, dw.len()));
    std::thread::sleep(Duration::from_millis(20));
    // ... while the application places and rings the RELEASE_MEM: its stores return at once.
    let ev = signal_event(&k, false);
    let t = Instant::now();
    q.submit(&release_mem(ev.1, ev.0));
    assert!(t.elapsed() < Duration::from_secs(1), "the second doorbell store waited {:?}", t.elapsed());
    assert_eq!(q.rptr(), 0, "the IB is still running");
    assert!(k.events().wait(&[ev.0], false, 50).is_err(), "signalled before the IB ended");
    store32(flag as usize, 7);
    k.events().wait(&[ev.0], false, 10_000).unwrap();
    assert!(q.wait());
    assert_eq!(load32(out as usize), 0xabcd);
}

#[test]
fn two_dispatches_submitted_before_any_wait() {
    let k = kfd(true);
    let mut q = Pm4::new(&k, ErrorReport::default());
    let (d1, d2) = (Dispatcher::new(&k), Dispatcher::new(&k));
    let (src, dst) = (Mapping::anon(PAGE, PAGE), Mapping::anon(PAGE, PAGE));
    store32(src.addr, 5);
    store32(src.addr + 4, 6);
    d1.submit(&mut q, src.addr, dst.addr);
    d2.submit(&mut q, src.addr + 4, dst.addr + 4);
    d1.sync(&k);
    d2.sync(&k);
    assert!(q.wait());
    assert_eq!((load32(dst.addr), load32(dst.addr + 4)), (5, 6), "XNACK on: never registered");
}

#[test]
fn an_unknown_packet_halts_the_queue_visibly() {
    let k = kfd(false);
    let (ev, _) = signal_event(&k, true);
    let reason = Box::new(0u64);
    let report = ErrorReport { event: Some(ev), reason: Some(&*reason as *const u64 as usize) };
    let mut q = Pm4::new(&k, report);
    let buf = Mapping::anon(PAGE, PAGE);
    svm_range(&k, buf.addr, PAGE);
    let a = buf.addr as u64;
    q.submit(&write_data(a, false, &[1, 2, 3]));
    q.submit(&write_data(a + 16, true, &[4, 5, 6]));
    assert!(q.wait());
    let words: Vec<u32> = (0..5).map(|i| load32(buf.addr + i * 4)).collect();
    assert_eq!(words, [1, 2, 3, 0, 6], "incrementing, then one address");
    // EVENT_WRITE (opcode 0x46) is not executed: the queue stops there.
    let at = q.wptr;
    let mut dw = vec![0xc000_4602, 0x407];
    dw.extend(write_data(a + 32, false, &[9]));
    q.submit(&dw);
    k.events().wait(&[ev], false, 10_000).expect("the error event");
    assert_eq!(*reason, 1 << 19, "EC_QUEUE_PACKET_UNSUPPORTED's mask");
    match k.queues().error(q.res.id).unwrap() {
        Some(QueueError::Packet { header: 0xc000_4602, why }) => {
            assert!(why.contains("EVENT_WRITE"), "{why}")
        }
        e => panic!("{e:?}"),
    }
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(q.rptr(), at, "the read pointer stays at the unknown packet");
    assert_eq!(load32(buf.addr + 32), 0, "nothing after it runs");
    q.submit(&write_data(a + 36, false, &[9]));
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(load32(buf.addr + 36), 0, "a halted queue executes nothing more");
    drop(q); // Destroy still works.
}

#[test]
fn a_fatal_fault_halts_and_raises_the_memory_exception() {
    let k = kfd(false);
    let (mem, _) =
        k.events().create(EventDescriptor { kind: EventType::Memory, node: 1 }, true, false).unwrap();
    let mut q = Pm4::new(&k, ErrorReport::default());
    let never = Mapping::anon(2 * PAGE, PAGE);
    q.submit(&write_data(never.addr as u64 + PAGE as u64 + 8, false, &[1]));
    k.events().wait(&[mem], false, 10_000).unwrap();
    let f = k.events().fault(mem).unwrap().unwrap();
    assert_eq!((f.addr, f.node, f.not_present), ((never.addr + PAGE) as u64, 1, true));
    assert!(matches!(k.queues().error(q.res.id).unwrap(), Some(QueueError::Fault { write: true, .. })));
    assert_eq!(q.rptr(), 0);
}

#[test]
fn a_dispatch_that_faults_raises_the_memory_exception() {
    let k = kfd(false);
    let (mem, _) =
        k.events().create(EventDescriptor { kind: EventType::Memory, node: 1 }, true, false).unwrap();
    let mut q = Pm4::new(&k, ErrorReport::default());
    let d = Dispatcher::new(&k);
    let (src, dst) = (Mapping::anon(PAGE, PAGE), Mapping::anon(PAGE, PAGE));
    svm_range(&k, dst.addr, PAGE);
    store32(dst.addr, 77);
    d.submit(&mut q, src.addr, dst.addr); // src: never registered, XNACK off
    k.events().wait(&[mem], false, 10_000).unwrap();
    let f = k.events().fault(mem).unwrap().unwrap();
    assert_eq!((f.addr, f.not_present), (src.addr as u64, true));
    assert!(matches!(k.queues().error(q.res.id).unwrap(), Some(QueueError::Fault { write: false, .. })));
    assert!(k.events().wait(&[d.event.0], false, 50).is_err(), "no completion event");
    assert_eq!(load32(dst.addr), 77, "nothing written");
}

/// CPU time (user + system, clock ticks) of this process's compute-engine threads.
fn cp_threads_ticks() -> u64 {
    let mut ticks = 0;
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else { continue };
        let Some((name, rest)) = stat.split_once(") ") else { continue };
        if name.ends_with("usvm-cpq0") {
            let f: Vec<&str> = rest.split(' ').collect();
            ticks += f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
        }
    }
    ticks
}

#[test]
fn wait_reg_mem_sleeps_until_the_host_writes() {
    let k = kfd(false);
    let mut q = Pm4::new(&k, ErrorReport::default());
    let buf = Mapping::anon(PAGE, PAGE);
    svm_range(&k, buf.addr, PAGE);
    let (flag, out) = (buf.addr as u64 + 8, buf.addr as u64 + 12);
    let mut dw = vec![0xc005_3c02, 0x13, lo(flag), hi(flag), 0x42, 0xff, 4];
    dw.extend(write_data(out, false, &[0x600d]));
    let before = cp_threads_ticks();
    q.submit(&dw);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!((q.rptr(), load32(out as usize)), (0, 0), "waiting");
    store32(flag as usize, 0x1143); // low byte 0x43: not yet
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(load32(out as usize), 0);
    let used = cp_threads_ticks() - before;
    assert!(used < 15, "the waiting engine used {used} ticks in 330 ms");
    store32(flag as usize, 0x7742);
    assert!(q.wait());
    assert_eq!(load32(out as usize), 0x600d);
}

#[test]
fn aql_queues_execute_nothing() {
    let k = kfd(false);
    let ring = gpu_buffer(&k, PAGE);
    let res = k.create_queue(1, QueueKind::ComputeAql, ring, PAGE as u64).unwrap();
    store32(ring, 0xc000_4602); // would halt a PM4 queue
    store64(res.write_ptr, 16);
    store64(res.doorbell, 16);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!((k.queues().read_ptr(res.id).unwrap(), k.queues().error(res.id).unwrap()), (0, None));
    k.destroy_queue(res.id).unwrap();
}

#[test]
fn a_packet_may_cross_the_ring_end() {
    let k = kfd(false);
    let mut q = Pm4::new(&k, ErrorReport::default());
    let buf = Mapping::anon(PAGE, PAGE);
    svm_range(&k, buf.addr, PAGE);
    // A NOP of 1020 dwords, then a 7-dword WRITE_DATA placed across the ring's end without
    // padding (kfdtest pads; the engine copes either way).
    let mut nop = vec![0xc000_1002 | (1018 << 16)];
    nop.resize(1020, 0);
    q.submit(&nop);
    assert!(q.wait());
    let w = write_data(buf.addr as u64, false, &[7, 8, 9]);
    for (i, d) in w.iter().enumerate() {
        store32(q.ring + ((1020 + i) % Q as usize) * 4, *d);
    }
    q.wptr += w.len() as u64;
    store64(q.res.write_ptr, q.wptr);
    store64(q.res.doorbell, q.wptr);
    assert!(q.wait());
    assert_eq!(q.rptr(), 3);
    assert_eq!([load32(buf.addr), load32(buf.addr + 4), load32(buf.addr + 8)], [7, 8, 9]);
}

#[test]
fn destroy_stops_a_waiting_queue_and_spinning_waves() {
    let k = kfd(false);
    // A WAIT_REG_MEM that never holds.
    let mut q = Pm4::new(&k, ErrorReport::default());
    let buf = Mapping::anon(PAGE, PAGE);
    svm_range(&k, buf.addr, PAGE);
    q.submit(&wait_reg_mem(buf.addr as u64, 1));
    std::thread::sleep(Duration::from_millis(20));
    let t = Instant::now();
    drop(q);
    assert!(t.elapsed() < Duration::from_secs(1), "destroy took {:?}", t.elapsed());
    // ReadMemory waves spinning on a flag nobody writes (QueueTest without the Fill).
    let mut q = Pm4::new(&k, ErrorReport::default());
    let d = Dispatcher::new(&k);
    for (i, w) in READ_MEMORY.iter().enumerate() {
        store32(d.isa + i * 4, *w);
    }
    let (addrs, result) = (gpu_buffer(&k, PAGE), gpu_buffer(&k, PAGE));
    let bufs = Mapping::anon(4 * 16 * PAGE, PAGE);
    svm_range(&k, bufs.addr, bufs.len);
    for i in 0..4 {
        store64(addrs + i * 8, (bufs.addr + i * 16 * PAGE) as u64);
        store32(result + i * 4, (16 * PAGE) as u32);
    }
    let ib = dispatch_ib(d.ib as u64, d.isa as u64, [addrs as u64, result as u64], 4);
    for (i, w) in ib.iter().enumerate() {
        store32(d.ib + i * 4, *w);
    }
    q.submit(&ib_packet(d.ib as u64, ib.len()));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(q.rptr(), 0, "the waves spin");
    let t = Instant::now();
    drop(q);
    assert!(t.elapsed() < Duration::from_secs(2), "destroy took {:?}", t.elapsed());
    assert_eq!(load32(result), (16 * PAGE) as u32, "no wave finished");
}
