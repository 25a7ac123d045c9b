//! Events (signal and memory-exception) and the SMI event file.

use crate::types::*;
use crate::{Res, entry, get, put, slice};
use std::collections::HashMap;
use usvm::kfd::{self, EventDescriptor, EventType, KfdError};

/// The `HsaEvent`s this library handed out, with their event ids: a pointer that is not
/// one of them is refused (INVALID_HANDLE) instead of being dereferenced blindly.
static EVENTS: parking_lot::Mutex<Option<HashMap<usize, u32>>> = parking_lot::Mutex::new(None);

fn event_id(ev: *mut HsaEvent) -> Res<u32> {
    EVENTS
        .lock()
        .as_ref()
        .and_then(|m| m.get(&(ev as usize)).copied())
        .ok_or(KfdError::InvalidHandle("event"))
}

/// `hsaKmtCreateEvent`.
///
/// # Safety
/// Pointer arguments are as `hsakmt.h` describes them: null (refused) or valid for the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hsaKmtCreateEvent(
    desc: *mut HsaEventDescriptor,
    manual_reset: bool,
    signaled: bool,
    event: *mut *mut HsaEvent,
) -> HSAKMT_STATUS {
    entry(|| {
        let k = kfd::current()?;
        let d = get(desc)?;
        if event.is_null() {
            return Err(KfdError::InvalidParameter("null Event"));
        }
        let kind = EventType::from_raw(d.EventType).ok_or(KfdError::InvalidParameter("event type"))?;
        let (id, hw2) =
            k.events().create(EventDescriptor { kind, node: d.NodeId }, manual_reset, signaled)?;
        let mut e = HsaEvent { EventId: id, ..Default::default() };
        e.EventData.EventType = d.EventType;
        e.EventData.HWData1 = u64::from(id);
        e.EventData.HWData2 = hw2;
        e.EventData.HWData3 = id;
        if kind == EventType::Signal {
            // The union holds the caller's sync variable (16 of its 20 bytes).
            // SAFETY: both are plain-old-data locals; 16 bytes fit the 20-byte union.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    std::ptr::addr_of!(d.SyncVar) as *const u8,
                    std::ptr::addr_of_mut!(e.EventData.EventData) as *mut u8,
                    std::mem::size_of::<HsaSyncVar>(),
                )
            };
        }
        let p = Box::into_raw(Box::new(e));
        EVENTS.lock().get_or_insert_with(HashMap::new).insert(p as usize, id);
        put(event, p)
    })
}

/// `hsaKmtDestroyEvent`.
///
/// # Safety
/// Pointer arguments are as `hsakmt.h` describes them: null (refused) or valid for the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hsaKmtDestroyEvent(ev: *mut HsaEvent) -> HSAKMT_STATUS {
    entry(|| {
        let id = event_id(ev)?;
        EVENTS.lock().as_mut().map(|m| m.remove(&(ev as usize)));
        // SAFETY: `ev` came from Box::into_raw in hsaKmtCreateEvent (it was in the registry,
        // from which it is now removed, so this happens once).
        drop(unsafe { Box::from_raw(ev) });
        match kfd::current() {
            Ok(k) => k.events().destroy(id),
            // The KFD closed first: its events went with it.
            Err(_) => Ok(()),
        }
    })
}

/// `hsaKmtSetEvent`.
///
/// # Safety
/// Pointer arguments are as `hsakmt.h` describes them: null (refused) or valid for the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hsaKmtSetEvent(ev: *mut HsaEvent) -> HSAKMT_STATUS {
    entry(|| {
        let id = event_id(ev)?;
        kfd::current()?.events().set(id)
    })
}

/// `hsaKmtResetEvent`.
///
/// # Safety
/// Pointer arguments are as `hsakmt.h` describes them: null (refused) or valid for the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hsaKmtResetEvent(ev: *mut HsaEvent) -> HSAKMT_STATUS {
    entry(|| {
        let id = event_id(ev)?;
        kfd::current()?.events().reset(id)
    })
}

/// `hsaKmtQueryEventState`: SUCCESS for a live event (as libhsakmt, which asks nothing).
///
/// # Safety
/// Pointer arguments are as `hsakmt.h` describes them: null (refused) or valid for the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hsaKmtQueryEventState(ev: *mut HsaEvent) -> HSAKMT_STATUS {
    entry(|| {
        let id = event_id(ev)?;
        kfd::current()?.events().query(id).map(|_| ())
    })
}

/// `hsaKmtWaitOnEvent`.
///
/// # Safety
/// Pointer arguments are as `hsakmt.h` describes them: null (refused) or valid for the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hsaKmtWaitOnEvent(ev: *mut HsaEvent, ms: u32) -> HSAKMT_STATUS {
    // SAFETY: the caller's pointers, passed on unchanged under the same contract.
    unsafe { hsaKmtWaitOnEvent_Ext(ev, ms, std::ptr::null_mut()) }
}

/// `hsaKmtWaitOnEvent_Ext`.
///
/// # Safety
/// Pointer arguments are as `hsakmt.h` describes them: null (refused) or valid for the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hsaKmtWaitOnEvent_Ext(ev: *mut HsaEvent, ms: u32, age: *mut u64) -> HSAKMT_STATUS {
    let mut one = ev;
    // SAFETY: the caller's pointers, passed on unchanged under the same contract.
    unsafe { hsaKmtWaitOnMultipleEvents_Ext(&mut one, 1, true, ms, age) }
}

/// `hsaKmtWaitOnMultipleEvents`.
///
/// # Safety
/// Pointer arguments are as `hsakmt.h` describes them: null (refused) or valid for the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hsaKmtWaitOnMultipleEvents(
    evs: *mut *mut HsaEvent,
    n: u32,
    all: bool,
    ms: u32,
) -> HSAKMT_STATUS {
    // SAFETY: the caller's pointers, passed on unchanged under the same contract.
    unsafe { hsaKmtWaitOnMultipleEvents_Ext(evs, n, all, ms, std::ptr::null_mut()) }
}

/// `hsaKmtWaitOnMultipleEvents_Ext`: on success, memory-exception events carry the fault
/// (node, page address, failure bits) and `age` (when given) each signal event's age.
///
/// # Safety
/// Pointer arguments are as `hsakmt.h` describes them: null (refused) or valid for the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hsaKmtWaitOnMultipleEvents_Ext(
    evs: *mut *mut HsaEvent,
    n: u32,
    all: bool,
    ms: u32,
    age: *mut u64,
) -> HSAKMT_STATUS {
    entry(|| {
        let k = kfd::current()?;
        if evs.is_null() {
            return Err(KfdError::InvalidHandle("null event array"));
        }
        let ptrs = slice(evs as *const *mut HsaEvent, n as usize)?;
        let ids = ptrs.iter().map(|&p| event_id(p)).collect::<Res<Vec<u32>>>()?;
        let r = k.events().wait(&ids, all, ms);
        for (i, (&p, &id)) in ptrs.iter().zip(&ids).enumerate() {
            if r.is_ok()
                && let Some(f) = k.events().fault(id)?
            {
                let fault = HsaMemoryAccessFault {
                    NodeId: f.node,
                    VirtualAddress: f.addr,
                    Failure: f.failure_bits(),
                    Flags: HSA_EVENTID_MEMORY_FATAL_PROCESS,
                };
                // SAFETY: `p` is one of this library's live HsaEvents (checked by event_id).
                unsafe { std::ptr::addr_of_mut!((*p).EventData.EventData).write_unaligned(fault) };
            }
            if !age.is_null() {
                // SAFETY: the caller passes one age per event.
                put(unsafe { age.add(i) }, k.events().age(id)?)?;
            }
        }
        r.map(|_| ())
    })
}

/// `hsaKmtOpenSMI`: a descriptor of the GPU node's SMI events.
///
/// # Safety
/// Pointer arguments are as `hsakmt.h` describes them: null (refused) or valid for the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hsaKmtOpenSMI(node: u32, fd: *mut i32) -> HSAKMT_STATUS {
    entry(|| {
        let k = kfd::current()?;
        if fd.is_null() {
            return Err(KfdError::InvalidParameter("null fd"));
        }
        let f = k.open_smi(node)?;
        put(fd, f)
    })
}
