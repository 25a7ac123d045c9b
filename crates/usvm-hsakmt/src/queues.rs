//! User queues: SDMA queues execute SDMA packets, compute queues PM4 packets (shaders
//! included); AQL queues only exist.

use crate::entry;
use crate::types::*;
use usvm::kfd::{self, ErrorReport, KfdError, QueueKind};

fn create_queue(
    node: u32,
    ty: u32,
    ring: *mut libc::c_void,
    size: u64,
    event: *mut HsaEvent,
    res: *mut HsaQueueResource,
) -> HSAKMT_STATUS {
    entry(|| {
        let k = kfd::current()?;
        if res.is_null() {
            return Err(KfdError::InvalidParameter("null QueueResource"));
        }
        let kind = match ty {
            HSA_QUEUE_COMPUTE => QueueKind::Compute,
            HSA_QUEUE_COMPUTE_AQL => QueueKind::ComputeAql,
            HSA_QUEUE_SDMA => QueueKind::Sdma,
            HSA_QUEUE_SDMA_XGMI => QueueKind::SdmaXgmi,
            _ => return Err(KfdError::NotSupported("this queue type")),
        };
        // SAFETY: `res` is non-null and points at the caller's HsaQueueResource, whose
        // ErrorReason the caller set (or left null); `event` is null or the caller's event.
        let report = unsafe {
            ErrorReport {
                event: (!event.is_null()).then(|| std::ptr::addr_of!((*event).EventId).read_unaligned()),
                reason: Some(std::ptr::addr_of!((*res).ErrorReason).read_unaligned() as usize)
                    .filter(|&a| a != 0),
            }
        };
        let q = k.create_queue_reporting(node, kind, ring as usize, size, report)?;
        // SAFETY: `res` is non-null and points at the caller's HsaQueueResource; only the
        // fields the call fills are written (ErrorReason is the caller's).
        unsafe {
            std::ptr::addr_of_mut!((*res).QueueId).write_unaligned(q.id);
            std::ptr::addr_of_mut!((*res).Queue_DoorBell_aql).write_unaligned(q.doorbell as *mut u64);
            std::ptr::addr_of_mut!((*res).Queue_write_ptr_aql).write_unaligned(q.write_ptr as *mut u64);
            std::ptr::addr_of_mut!((*res).Queue_read_ptr_aql).write_unaligned(q.read_ptr as *mut u64);
        }
        Ok(())
    })
}

/// `hsaKmtCreateQueue`: SDMA and SDMA_XGMI queues execute SDMA packets, COMPUTE queues PM4
/// packets; COMPUTE_AQL queues exist (and count) but execute nothing. When the queue halts
/// (a fatal fault, a packet it does not execute), the KFD exception mask goes to
/// `*res->ErrorReason` (when not null) and `event` (when not null) is signalled.
///
/// # Safety
/// Pointer arguments are as `hsakmt.h` describes them: null (refused) or valid for the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hsaKmtCreateQueue(
    node: u32,
    ty: u32,
    _percentage: u32,
    _priority: i64,
    ring: *mut libc::c_void,
    size: u64,
    event: *mut HsaEvent,
    res: *mut HsaQueueResource,
) -> HSAKMT_STATUS {
    create_queue(node, ty, ring, size, event, res)
}

/// `hsaKmtCreateQueueExt`: as `hsaKmtCreateQueue`; the engine id is not used.
///
/// # Safety
/// Pointer arguments are as `hsakmt.h` describes them: null (refused) or valid for the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hsaKmtCreateQueueExt(
    node: u32,
    ty: u32,
    _percentage: u32,
    _priority: i64,
    _engine: u32,
    ring: *mut libc::c_void,
    size: u64,
    event: *mut HsaEvent,
    res: *mut HsaQueueResource,
) -> HSAKMT_STATUS {
    create_queue(node, ty, ring, size, event, res)
}

/// `hsaKmtDestroyQueue`.
#[unsafe(no_mangle)]
pub extern "C" fn hsaKmtDestroyQueue(id: u64) -> HSAKMT_STATUS {
    entry(|| kfd::current()?.destroy_queue(id))
}
