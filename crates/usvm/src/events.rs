//! The one event vocabulary: KFD's SMI events and per-GPU counters.
//!
//! Everything observable about migrations, faults, queue evictions and GPU unmaps is an
//! [`Event`]. Its `Display` is the exact KFD SMI text line (`"<id hex> <fields>"`, the
//! `KFD_EVENT_FMT_*` formats of `kfd_ioctl.h`, without the trailing newline). Counters,
//! subscribers (and later the CLI summary and traces) all read from here.
//!
//! Cost: counters are relaxed atomics; with no subscriber, emitting an event is one atomic
//! load (the event is not even built).

use crate::attr::GpuId;
use crate::gpu::GpuIdx;
use parking_lot::Mutex;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// Why a migration ran (`KFD_MIGRATE_TRIGGERS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MigrateTrigger {
    /// SET_ATTR through PREFETCH_LOC (or the seed's PREFERRED_LOC change): 0.
    Prefetch,
    /// A GPU retry fault: 1.
    PagefaultGpu,
    /// A CPU access to a VRAM page: 2.
    PagefaultCpu,
    /// VRAM eviction by the memory manager: 3.
    TtmEviction,
}

impl MigrateTrigger {
    /// The kernel's number.
    pub fn code(self) -> u32 {
        match self {
            MigrateTrigger::Prefetch => 0,
            MigrateTrigger::PagefaultGpu => 1,
            MigrateTrigger::PagefaultCpu => 2,
            MigrateTrigger::TtmEviction => 3,
        }
    }
}

/// Why queues were evicted (`KFD_QUEUE_EVICTION_TRIGGERS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EvictTrigger {
    /// SVM invalidation: 0.
    Svm,
    /// Userptr invalidation: 1.
    Userptr,
    /// TTM eviction: 2.
    Ttm,
    /// Suspend: 3.
    Suspend,
}

impl EvictTrigger {
    /// The kernel's number.
    pub fn code(self) -> u32 {
        match self {
            EvictTrigger::Svm => 0,
            EvictTrigger::Userptr => 1,
            EvictTrigger::Ttm => 2,
            EvictTrigger::Suspend => 3,
        }
    }
}

/// Why pages were unmapped from a GPU (`KFD_SVM_UNMAP_TRIGGERS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UnmapTrigger {
    /// A CPU page-table change: 0.
    MmuNotify,
    /// A migration's own invalidation: 1.
    MmuNotifyMigrate,
    /// munmap: 2.
    UnmapFromCpu,
}

impl UnmapTrigger {
    /// The kernel's number.
    pub fn code(self) -> u32 {
        match self {
            UnmapTrigger::MmuNotify => 0,
            UnmapTrigger::MmuNotifyMigrate => 1,
            UnmapTrigger::UnmapFromCpu => 2,
        }
    }
}

/// What happened, with the fields KFD reports. Addresses and sizes are in pages.
/// Locations are raw KFD values: 0 system memory, `0xffffffff` undefined, else a GPU id.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// A fatal GPU VM fault (1): `pid:taskname`, pid in hex.
    VmFault {
        /// The faulting GPU.
        gpu: GpuId,
        /// The process name.
        task: String,
    },
    /// A piece of a migration starts (5).
    MigrateStart {
        /// First page.
        start: u64,
        /// Pages.
        npages: u64,
        /// Source: 0 or a GPU id.
        from: u32,
        /// Destination: 0 or a GPU id.
        to: u32,
        /// The range's PREFETCH_LOC.
        prefetch_loc: u32,
        /// The range's PREFERRED_LOC.
        preferred_loc: u32,
        /// Why.
        trigger: MigrateTrigger,
    },
    /// A piece of a migration ended (6), with 0 or a negative errno.
    MigrateEnd {
        /// First page.
        start: u64,
        /// Pages.
        npages: u64,
        /// Source: 0 or a GPU id.
        from: u32,
        /// Destination: 0 or a GPU id.
        to: u32,
        /// Why.
        trigger: MigrateTrigger,
        /// 0, or minus the errno.
        error: i32,
    },
    /// A GPU retry fault is being handled (7).
    PageFaultStart {
        /// Faulting page.
        addr: u64,
        /// Faulting GPU.
        gpu: GpuId,
        /// A write fault.
        write: bool,
    },
    /// A GPU retry fault was handled (8): migrated (`M`) or only mapped (`U`).
    PageFaultEnd {
        /// Faulting page.
        addr: u64,
        /// Faulting GPU.
        gpu: GpuId,
        /// Whether data migrated.
        migrated: bool,
    },
    /// A GPU's queues were evicted (9).
    QueueEviction {
        /// The GPU.
        gpu: GpuId,
        /// Why.
        trigger: EvictTrigger,
    },
    /// A GPU's queues were restored (10), or the restore was rescheduled (`R`).
    QueueRestore {
        /// The GPU.
        gpu: GpuId,
        /// The restore worker failed and will try again.
        rescheduled: bool,
    },
    /// Pages were unmapped from a GPU (11).
    UnmapFromGpu {
        /// First page.
        start: u64,
        /// Pages.
        npages: u64,
        /// The GPU.
        gpu: GpuId,
        /// Why.
        trigger: UnmapTrigger,
    },
}

impl EventKind {
    /// KFD's event id (`enum kfd_smi_event`).
    pub fn id(&self) -> u32 {
        match self {
            EventKind::VmFault { .. } => 1,
            EventKind::MigrateStart { .. } => 5,
            EventKind::MigrateEnd { .. } => 6,
            EventKind::PageFaultStart { .. } => 7,
            EventKind::PageFaultEnd { .. } => 8,
            EventKind::QueueEviction { .. } => 9,
            EventKind::QueueRestore { .. } => 10,
            EventKind::UnmapFromGpu { .. } => 11,
        }
    }

    /// The GPU the event is reported on (for MIGRATE: the GPU side of the move).
    pub fn gpu(&self) -> Option<GpuId> {
        match self {
            EventKind::VmFault { gpu, .. }
            | EventKind::PageFaultStart { gpu, .. }
            | EventKind::PageFaultEnd { gpu, .. }
            | EventKind::QueueEviction { gpu, .. }
            | EventKind::QueueRestore { gpu, .. }
            | EventKind::UnmapFromGpu { gpu, .. } => Some(*gpu),
            EventKind::MigrateStart { from, to, .. } | EventKind::MigrateEnd { from, to, .. } => {
                Some(GpuId(if *to != 0 { *to } else { *from }))
            }
        }
    }
}

/// One event: when (`CLOCK_BOOTTIME` ns), which process, what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Boot-time nanoseconds.
    pub ns: u64,
    /// The process id.
    pub pid: u32,
    /// What happened.
    pub kind: EventKind,
}

impl fmt::Display for Event {
    /// The KFD SMI text line, without the newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (ns, pid) = (self.ns, self.pid);
        write!(f, "{:x} ", self.kind.id())?;
        match &self.kind {
            EventKind::VmFault { task, .. } => write!(f, "{pid:x}:{task}"),
            EventKind::MigrateStart { start, npages, from, to, prefetch_loc, preferred_loc, trigger } => {
                write!(
                    f,
                    "{ns} -{pid} @{start:x}({npages:x}) {from:x}->{to:x} {prefetch_loc:x}:{preferred_loc:x} {}",
                    trigger.code()
                )
            }
            EventKind::MigrateEnd { start, npages, from, to, trigger, error } => {
                write!(f, "{ns} -{pid} @{start:x}({npages:x}) {from:x}->{to:x} {} {error}", trigger.code())
            }
            EventKind::PageFaultStart { addr, gpu, write } => {
                write!(f, "{ns} -{pid} @{addr:x}({:x}) {}", gpu.0, if *write { 'W' } else { 'R' })
            }
            EventKind::PageFaultEnd { addr, gpu, migrated } => {
                write!(f, "{ns} -{pid} @{addr:x}({:x}) {}", gpu.0, if *migrated { 'M' } else { 'U' })
            }
            EventKind::QueueEviction { gpu, trigger } => {
                write!(f, "{ns} -{pid} {:x} {}", gpu.0, trigger.code())
            }
            EventKind::QueueRestore { gpu, rescheduled } => {
                write!(f, "{ns} -{pid} {:x} {}", gpu.0, if *rescheduled { 'R' } else { '0' })
            }
            EventKind::UnmapFromGpu { start, npages, gpu, trigger } => {
                write!(f, "{ns} -{pid} @{start:x}({npages:x}) {:x} {}", gpu.0, trigger.code())
            }
        }
    }
}

/// The clock of [`Event::ns`]: `CLOCK_BOOTTIME` in nanoseconds, as KFD's SMI events use.
pub fn clock_ns() -> u64 {
    crate::sys::boottime_ns()
}

/// The per-GPU counters of KFD's sysfs (`counters_<gpuid>/{faults,page_in,page_out}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counters {
    /// GPU retry faults processed on this GPU.
    pub faults: u64,
    /// Pages migrated into this GPU's VRAM.
    pub page_in: u64,
    /// Pages migrated out of this GPU's VRAM.
    pub page_out: u64,
}

#[derive(Default, Debug)]
struct GpuCounters {
    faults: AtomicU64,
    page_in: AtomicU64,
    page_out: AtomicU64,
}

/// A stream of the events emitted after it was created ([`crate::Svm::subscribe`]).
#[derive(Debug)]
pub struct EventStream {
    rx: mpsc::Receiver<Event>,
}

impl EventStream {
    /// The events that have arrived, without waiting.
    pub fn try_iter(&self) -> impl Iterator<Item = Event> + '_ {
        self.rx.try_iter()
    }

    /// The next event, waiting at most `d`.
    pub fn recv_timeout(&self, d: Duration) -> Option<Event> {
        self.rx.recv_timeout(d).ok()
    }

    /// The next event, waiting as long as it takes; `None` once the instance is gone.
    pub fn recv(&self) -> Option<Event> {
        self.rx.recv().ok()
    }
}

/// Where events go: counters and subscribers of one instance.
#[derive(Debug)]
pub struct EventHub {
    pid: u32,
    counters: Vec<GpuCounters>,
    cpu_faults: AtomicU64,
    subscribers: AtomicUsize,
    subs: Mutex<Vec<mpsc::Sender<Event>>>,
}

/// Which counter to add to.
#[derive(Clone, Copy, Debug)]
pub enum Counter {
    /// GPU retry faults.
    Faults,
    /// Pages into VRAM.
    PageIn,
    /// Pages out of VRAM.
    PageOut,
}

impl EventHub {
    /// A hub for these GPUs (by index).
    pub fn new(gpus: Vec<GpuId>) -> Self {
        EventHub {
            pid: std::process::id(),
            counters: gpus.iter().map(|_| GpuCounters::default()).collect(),
            cpu_faults: AtomicU64::new(0),
            subscribers: AtomicUsize::new(0),
            subs: Mutex::new(Vec::new()),
        }
    }

    /// A new subscriber.
    pub fn subscribe(&self) -> EventStream {
        let (tx, rx) = mpsc::channel();
        let mut s = self.subs.lock();
        s.push(tx);
        self.subscribers.store(s.len(), Ordering::Release);
        EventStream { rx }
    }

    /// Whether anyone listens (so callers can skip building events).
    pub fn listening(&self) -> bool {
        self.subscribers.load(Ordering::Acquire) > 0
    }

    /// Emits an event built by `f` (only built when someone listens).
    pub fn emit(&self, f: impl FnOnce() -> EventKind) {
        if !self.listening() {
            return;
        }
        let ev = Event { ns: clock_ns(), pid: self.pid, kind: f() };
        self.emit_event(ev);
    }

    /// Emits a ready event (its timestamp taken earlier, as PAGE_FAULT_START does).
    pub fn emit_event(&self, ev: Event) {
        let mut s = self.subs.lock();
        s.retain(|tx| tx.send(ev.clone()).is_ok());
        self.subscribers.store(s.len(), Ordering::Release);
    }

    /// Adds `n` to a counter of GPU `idx`.
    pub fn count(&self, idx: GpuIdx, which: Counter, n: u64) {
        let c = &self.counters[idx];
        let a = match which {
            Counter::Faults => &c.faults,
            Counter::PageIn => &c.page_in,
            Counter::PageOut => &c.page_out,
        };
        a.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one CPU fault resolved.
    pub fn cpu_fault(&self) {
        self.cpu_faults.fetch_add(1, Ordering::Relaxed);
    }

    /// CPU faults resolved so far.
    pub fn cpu_faults(&self) -> u64 {
        self.cpu_faults.load(Ordering::Relaxed)
    }

    /// The counters of GPU `idx`.
    pub fn counters(&self, idx: GpuIdx) -> Counters {
        let c = &self.counters[idx];
        Counters {
            faults: c.faults.load(Ordering::Relaxed),
            page_in: c.page_in.load(Ordering::Relaxed),
            page_out: c.page_out.load(Ordering::Relaxed),
        }
    }

    /// The process id events carry.
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind) -> String {
        Event { ns: 123456789, pid: 4242, kind }.to_string()
    }

    /// The texts of kfd-svm-semantics.md section 9 / `KFD_EVENT_FMT_*`.
    #[test]
    fn kfd_smi_texts() {
        let g = GpuId(0x1111);
        assert_eq!(ev(EventKind::VmFault { gpu: g, task: "app".into() }), "1 1092:app");
        assert_eq!(
            ev(EventKind::MigrateStart {
                start: 0x7f0000000,
                npages: 0x400,
                from: 0,
                to: 0x1111,
                prefetch_loc: 0x1111,
                preferred_loc: 0xffff_ffff,
                trigger: MigrateTrigger::Prefetch
            }),
            "5 123456789 -4242 @7f0000000(400) 0->1111 1111:ffffffff 0"
        );
        assert_eq!(
            ev(EventKind::MigrateEnd {
                start: 0x7f0000200,
                npages: 0x200,
                from: 0x1111,
                to: 0,
                trigger: MigrateTrigger::PagefaultCpu,
                error: -14
            }),
            "6 123456789 -4242 @7f0000200(200) 1111->0 2 -14"
        );
        assert_eq!(
            ev(EventKind::PageFaultStart { addr: 0xabc, gpu: g, write: false }),
            "7 123456789 -4242 @abc(1111) R"
        );
        assert_eq!(
            ev(EventKind::PageFaultStart { addr: 0xabc, gpu: g, write: true }),
            "7 123456789 -4242 @abc(1111) W"
        );
        assert_eq!(
            ev(EventKind::PageFaultEnd { addr: 0xabc, gpu: g, migrated: true }),
            "8 123456789 -4242 @abc(1111) M"
        );
        assert_eq!(
            ev(EventKind::PageFaultEnd { addr: 0xabc, gpu: g, migrated: false }),
            "8 123456789 -4242 @abc(1111) U"
        );
        assert_eq!(
            ev(EventKind::QueueEviction { gpu: g, trigger: EvictTrigger::Svm }),
            "9 123456789 -4242 1111 0"
        );
        assert_eq!(ev(EventKind::QueueRestore { gpu: g, rescheduled: false }), "a 123456789 -4242 1111 0");
        assert_eq!(ev(EventKind::QueueRestore { gpu: g, rescheduled: true }), "a 123456789 -4242 1111 R");
        assert_eq!(
            ev(EventKind::UnmapFromGpu {
                start: 0x10,
                npages: 0x200,
                gpu: g,
                trigger: UnmapTrigger::UnmapFromCpu
            }),
            "b 123456789 -4242 @10(200) 1111 2"
        );
        // KFD_SMI_EVENT_MSG_SIZE is 96 bytes with the newline and NUL; the longest line fits.
        let long = ev(EventKind::MigrateStart {
            start: 0x0007_ffff_ffff,
            npages: 0x4_0000,
            from: 0xffff_fffe,
            to: 0,
            prefetch_loc: 0xffff_ffff,
            preferred_loc: 0xffff_ffff,
            trigger: MigrateTrigger::TtmEviction,
        });
        assert!(long.len() < 95, "{long}");
    }

    #[test]
    fn subscribers_see_only_later_events_and_counters_add() {
        let hub = EventHub::new(vec![GpuId(0x1111), GpuId(0x2222)]);
        hub.emit(|| panic!("not built without subscribers"));
        let s = hub.subscribe();
        hub.emit(|| EventKind::QueueEviction { gpu: GpuId(0x2222), trigger: EvictTrigger::Svm });
        let got: Vec<Event> = s.try_iter().collect();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].kind.gpu(), Some(GpuId(0x2222)));
        let late = hub.subscribe();
        assert_eq!(late.try_iter().count(), 0);
        drop(s);
        hub.emit(|| EventKind::QueueRestore { gpu: GpuId(0x2222), rescheduled: false });
        assert_eq!(late.recv_timeout(Duration::from_secs(1)).map(|e| e.kind.id()), Some(10));
        hub.count(GpuIdx::new(1), Counter::PageIn, 512);
        hub.count(GpuIdx::new(1), Counter::PageOut, 3);
        hub.count(GpuIdx::new(0), Counter::Faults, 1);
        assert_eq!(hub.counters(GpuIdx::new(1)), Counters { faults: 0, page_in: 512, page_out: 3 });
        assert_eq!(hub.counters(GpuIdx::new(0)), Counters { faults: 1, page_in: 0, page_out: 0 });
    }
}
