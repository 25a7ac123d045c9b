//! KFD events (`hsaKmtCreateEvent` and friends): signal events, which a queue's TRAP packet
//! (or the application) signals, and memory-exception events, which every fatal GPU VM
//! fault of the process's queues signals with the faulting page. Signal events own a slot
//! of the event page, an area every GPU maps: its address is the event's `HWData2`, where a
//! FENCE packet may write before the TRAP.

use super::{KfdError, KfdResult};
use crate::sys::{self, PAGE_SIZE};
use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Signal events the event page has room for (KFD's `KFD_SIGNAL_EVENT_LIMIT`).
pub const SIGNAL_EVENT_SLOTS: u32 = 4096;
/// Bytes per slot of the event page.
pub const SLOT_BYTES: usize = 8;
/// Ids of events other than signal events start here.
pub const FIRST_OTHER_EVENT_ID: u32 = SIGNAL_EVENT_SLOTS;
/// A wait of this many milliseconds never times out (`HSA_EVENTTIMEOUT_INFINITE`).
pub const WAIT_INFINITE_MS: u32 = 0xffff_ffff;

/// `HSA_EVENTTYPE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum EventType {
    /// Signalled by a queue (TRAP) or the application.
    Signal = 0,
    /// Topology changed.
    NodeChange = 1,
    /// A device changed state.
    DeviceStateChange = 2,
    /// A hardware exception.
    HwException = 3,
    /// A system event.
    SystemEvent = 4,
    /// A debugger event.
    DebugEvent = 5,
    /// A profiler event.
    ProfileEvent = 6,
    /// A queue event.
    QueueEvent = 7,
    /// A memory exception (GPU VM fault).
    Memory = 8,
}

impl EventType {
    /// The type of an `HSA_EVENTTYPE` value.
    pub fn from_raw(v: u32) -> Option<Self> {
        use EventType::*;
        [
            Signal,
            NodeChange,
            DeviceStateChange,
            HwException,
            SystemEvent,
            DebugEvent,
            ProfileEvent,
            QueueEvent,
            Memory,
        ]
        .into_iter()
        .find(|t| *t as u32 == v)
    }
}

/// What to create (`HsaEventDescriptor`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventDescriptor {
    /// The event's type.
    pub kind: EventType,
    /// The node it concerns.
    pub node: u32,
}

/// A GPU VM fault, as a memory-exception event reports it (`HsaMemoryAccessFault`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryFault {
    /// The GPU node that faulted.
    pub node: u32,
    /// The faulting page's address.
    pub addr: u64,
    /// Nothing was mapped there.
    pub not_present: bool,
    /// A write to a read-only mapping.
    pub read_only: bool,
    /// An instruction fetch from a mapping without execute permission.
    pub no_execute: bool,
}

impl MemoryFault {
    /// `HsaAccessAttributeFailure` as a word: NotPresent bit 0, ReadOnly 1, NoExecute 2,
    /// GpuAccess 3.
    pub fn failure_bits(&self) -> u32 {
        u32::from(self.not_present)
            | u32::from(self.read_only) << 1
            | u32::from(self.no_execute) << 2
            | 1 << 3
    }
}

/// One event's state.
#[derive(Debug)]
struct Ev {
    kind: EventType,
    manual_reset: bool,
    signaled: bool,
    /// How often it was signalled (`event_age`).
    age: u64,
    fault: Option<MemoryFault>,
}

#[derive(Debug, Default)]
struct Table {
    events: HashMap<u32, Ev>,
    next_other: u32,
}

/// The events of one KFD, and their event page.
#[derive(Debug)]
pub struct Events {
    page: usize,
    table: Mutex<Table>,
    changed: Condvar,
}

/// What a successful wait saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitResult {
    /// The events that were signalled (and, unless manual-reset, are reset now).
    pub signaled: Vec<u32>,
}

const PAGE_BYTES: usize = SIGNAL_EVENT_SLOTS as usize * SLOT_BYTES;

impl Events {
    /// No events; a zeroed event page.
    pub fn new() -> KfdResult<Self> {
        let page = sys::mmap::map_anon_aligned(PAGE_BYTES.next_multiple_of(PAGE_SIZE), PAGE_SIZE)?;
        sys::mmap::advise_dontfork(page, PAGE_BYTES);
        Ok(Events {
            page,
            table: Mutex::new(Table { next_other: FIRST_OTHER_EVENT_ID, ..Default::default() }),
            changed: Condvar::new(),
        })
    }

    /// The event page (address, bytes).
    pub fn page(&self) -> (usize, usize) {
        (self.page, PAGE_BYTES.next_multiple_of(PAGE_SIZE))
    }

    /// `hsaKmtCreateEvent`: the new event's id and its `HWData2` (the slot address of a
    /// signal event, 0 for the others).
    pub fn create(&self, d: EventDescriptor, manual_reset: bool, signaled: bool) -> KfdResult<(u32, u64)> {
        let mut t = self.table.lock();
        let id = if d.kind == EventType::Signal {
            (1..SIGNAL_EVENT_SLOTS).find(|i| !t.events.contains_key(i)).ok_or(KfdError::NoMemory)?
        } else {
            let id = t.next_other;
            t.next_other = t.next_other.checked_add(1).ok_or(KfdError::NoMemory)?;
            id
        };
        t.events.insert(id, Ev { kind: d.kind, manual_reset, signaled, age: 0, fault: None });
        let hw2 = if d.kind == EventType::Signal { (self.page + id as usize * SLOT_BYTES) as u64 } else { 0 };
        Ok((id, hw2))
    }

    /// `hsaKmtDestroyEvent`.
    pub fn destroy(&self, id: u32) -> KfdResult<()> {
        self.table.lock().events.remove(&id).map(|_| ()).ok_or(KfdError::InvalidHandle("event"))?;
        self.changed.notify_all();
        Ok(())
    }

    fn with<T>(&self, id: u32, f: impl FnOnce(&mut Ev) -> T) -> KfdResult<T> {
        let mut t = self.table.lock();
        let r = f(t.events.get_mut(&id).ok_or(KfdError::InvalidHandle("event"))?);
        drop(t);
        self.changed.notify_all();
        Ok(r)
    }

    /// `hsaKmtSetEvent` (also what a TRAP packet carrying `id` does).
    pub fn set(&self, id: u32) -> KfdResult<()> {
        self.with(id, |e| {
            e.signaled = true;
            e.age += 1;
        })
    }

    /// `hsaKmtResetEvent`.
    pub fn reset(&self, id: u32) -> KfdResult<()> {
        self.with(id, |e| e.signaled = false)
    }

    /// `hsaKmtQueryEventState`: whether it is signalled.
    pub fn query(&self, id: u32) -> KfdResult<bool> {
        self.with(id, |e| e.signaled)
    }

    /// How often the event was signalled.
    pub fn age(&self, id: u32) -> KfdResult<u64> {
        self.with(id, |e| e.age)
    }

    /// The fault a memory-exception event last reported.
    pub fn fault(&self, id: u32) -> KfdResult<Option<MemoryFault>> {
        self.with(id, |e| e.fault)
    }

    /// A GPU VM fault: every memory-exception event of the process is signalled with it.
    pub fn signal_memory_fault(&self, f: MemoryFault) {
        let mut t = self.table.lock();
        for e in t.events.values_mut().filter(|e| e.kind == EventType::Memory) {
            e.fault = Some(f);
            e.signaled = true;
            e.age += 1;
        }
        drop(t);
        self.changed.notify_all();
    }

    /// `hsaKmtWaitOnMultipleEvents`: waits until one (or, with `all`, every one) of `ids` is
    /// signalled, at most `timeout_ms` ([`WAIT_INFINITE_MS`]: for ever). Auto-reset events
    /// that ended the wait are reset. `Timeout` when time ran out; `InvalidHandle` when an
    /// id names no event (or its event is destroyed during the wait).
    pub fn wait(&self, ids: &[u32], all: bool, timeout_ms: u32) -> KfdResult<WaitResult> {
        if ids.is_empty() {
            return Err(KfdError::InvalidParameter("no events to wait on"));
        }
        let deadline = (timeout_ms != WAIT_INFINITE_MS)
            .then(|| Instant::now() + Duration::from_millis(u64::from(timeout_ms)));
        let mut t = self.table.lock();
        loop {
            let mut signaled = Vec::new();
            for id in ids {
                let e = t.events.get(id).ok_or(KfdError::InvalidHandle("event"))?;
                if e.signaled {
                    signaled.push(*id);
                }
            }
            let done = if all { signaled.len() == ids.len() } else { !signaled.is_empty() };
            if done {
                for id in &signaled {
                    let e = t.events.get_mut(id).expect("checked");
                    if !e.manual_reset {
                        e.signaled = false;
                    }
                }
                return Ok(WaitResult { signaled });
            }
            match deadline {
                None => self.changed.wait(&mut t),
                // Time is up only after one last look at the events.
                Some(d) if Instant::now() >= d => return Err(KfdError::Timeout),
                Some(d) => {
                    self.changed.wait_until(&mut t, d);
                }
            }
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        // SAFETY: the event page this value mapped; GPUs stopped using it when the KFD closed.
        let _ = unsafe { sys::mmap::unmap(self.page, PAGE_BYTES.next_multiple_of(PAGE_SIZE)) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn sig() -> EventDescriptor {
        EventDescriptor { kind: EventType::Signal, node: 1 }
    }

    #[test]
    fn auto_reset_events_are_consumed_by_a_wait() {
        let ev = Events::new().unwrap();
        let (a, hw) = ev.create(sig(), false, false).unwrap();
        assert_eq!(hw, (ev.page().0 + a as usize * SLOT_BYTES) as u64);
        assert_eq!(ev.wait(&[a], false, 0), Err(KfdError::Timeout));
        ev.set(a).unwrap();
        assert_eq!(ev.wait(&[a], false, 10).unwrap().signaled, vec![a]);
        assert!(!ev.query(a).unwrap(), "consumed");
        let (m, _) = ev.create(sig(), true, true).unwrap();
        ev.wait(&[m], false, 0).unwrap();
        assert!(ev.query(m).unwrap(), "manual reset stays signalled");
        ev.reset(m).unwrap();
        assert!(!ev.query(m).unwrap());
        ev.destroy(m).unwrap();
        assert_eq!(ev.query(m), Err(KfdError::InvalidHandle("event")));
    }

    #[test]
    fn wait_all_and_any_across_threads() {
        let ev = Arc::new(Events::new().unwrap());
        let (a, _) = ev.create(sig(), false, false).unwrap();
        let (b, _) = ev.create(sig(), false, false).unwrap();
        let e2 = ev.clone();
        let t = std::thread::spawn(move || e2.wait(&[a, b], true, 5000));
        std::thread::sleep(Duration::from_millis(20));
        ev.set(a).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(!t.is_finished(), "one of two is not all");
        ev.set(b).unwrap();
        let mut got = t.join().unwrap().unwrap().signaled;
        got.sort();
        assert_eq!(got, vec![a, b]);
        let t0 = Instant::now();
        assert_eq!(ev.wait(&[a, b], false, 50), Err(KfdError::Timeout));
        assert!(t0.elapsed() >= Duration::from_millis(45));
    }

    #[test]
    fn memory_faults_reach_every_memory_event() {
        let ev = Events::new().unwrap();
        let mem = EventDescriptor { kind: EventType::Memory, node: 1 };
        let (m1, hw) = ev.create(mem, true, false).unwrap();
        assert_eq!(hw, 0);
        let (m2, _) = ev.create(mem, true, false).unwrap();
        let (s, _) = ev.create(sig(), true, false).unwrap();
        let f = MemoryFault { node: 1, addr: 0x7000, not_present: false, read_only: true, no_execute: false };
        ev.signal_memory_fault(f);
        ev.wait(&[m1, m2], true, 0).unwrap();
        assert_eq!(ev.fault(m2).unwrap(), Some(f));
        assert!(!ev.query(s).unwrap());
        assert_eq!(f.failure_bits(), 0b1010);
    }
}
