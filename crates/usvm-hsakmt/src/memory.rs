//! KFD memory: allocation, registration and GPU mapping.

use crate::types::*;
use crate::{entry, guard, put, slice};
use usvm::kfd::{self, KfdError, MemFlags};

/// `hsaKmtAllocMemory`.
///
/// # Safety
/// Pointer arguments are as `hsakmt.h` describes them: null (refused) or valid for the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hsaKmtAllocMemory(
    node: u32,
    size: u64,
    flags: u32,
    addr: *mut *mut libc::c_void,
) -> HSAKMT_STATUS {
    entry(|| {
        let k = kfd::current()?;
        if addr.is_null() {
            return Err(KfdError::InvalidParameter("null MemoryAddress"));
        }
        let a = k.alloc_memory(node, size, MemFlags::from_bits_retain(flags))?;
        put(addr, a as *mut libc::c_void)
    })
}

/// `hsaKmtAllocMemoryAlign`: alignments up to the page size (every allocation is page
/// aligned); larger ones are not supported.
///
/// # Safety
/// Pointer arguments are as `hsakmt.h` describes them: null (refused) or valid for the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hsaKmtAllocMemoryAlign(
    node: u32,
    size: u64,
    align: u64,
    flags: u32,
    addr: *mut *mut libc::c_void,
) -> HSAKMT_STATUS {
    if align > 4096 || (align != 0 && !align.is_power_of_two()) {
        return guard(|| Err(KfdError::NotSupported("alignments above 4 KiB")));
    }
    // SAFETY: the caller's pointers, passed on unchanged under the same contract.
    unsafe { hsaKmtAllocMemory(node, size, flags, addr) }
}

/// `hsaKmtFreeMemory`.
///
/// # Safety
/// Pointer arguments are as `hsakmt.h` describes them: null (refused) or valid for the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hsaKmtFreeMemory(addr: *mut libc::c_void, _size: u64) -> HSAKMT_STATUS {
    entry(|| {
        let k = kfd::current()?;
        if addr.is_null() {
            return Err(KfdError::InvalidParameter("null MemoryAddress"));
        }
        k.free_memory(addr as usize)
    })
}

/// `hsaKmtAvailableMemory`: free VRAM of a GPU node.
///
/// # Safety
/// Pointer arguments are as `hsakmt.h` describes them: null (refused) or valid for the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hsaKmtAvailableMemory(node: u32, bytes: *mut u64) -> HSAKMT_STATUS {
    entry(|| {
        let k = kfd::current()?;
        let g = k.gpu_index(node)?;
        put(bytes, k.svm().smi()[g].vram_free)
    })
}

/// `hsaKmtRegisterMemory`.
///
/// # Safety
/// Pointer arguments are as `hsakmt.h` describes them: null (refused) or valid for the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hsaKmtRegisterMemory(addr: *mut libc::c_void, size: u64) -> HSAKMT_STATUS {
    entry(|| kfd::current()?.register_memory(addr as usize, size))
}

/// `hsaKmtRegisterMemoryToNodes`: the nodes must be GPU nodes.
///
/// # Safety
/// Pointer arguments are as `hsakmt.h` describes them: null (refused) or valid for the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hsaKmtRegisterMemoryToNodes(
    addr: *mut libc::c_void,
    size: u64,
    n: u64,
    nodes: *mut u32,
) -> HSAKMT_STATUS {
    entry(|| {
        let k = kfd::current()?;
        for &node in slice(nodes, n as usize)? {
            k.gpu_index(node)?;
        }
        k.register_memory(addr as usize, size)
    })
}

/// `hsaKmtRegisterMemoryWithFlags`.
///
/// # Safety
/// Pointer arguments are as `hsakmt.h` describes them: null (refused) or valid for the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hsaKmtRegisterMemoryWithFlags(
    addr: *mut libc::c_void,
    size: u64,
    _flags: u32,
) -> HSAKMT_STATUS {
    // SAFETY: the caller's pointers, passed on unchanged under the same contract.
    unsafe { hsaKmtRegisterMemory(addr, size) }
}

/// `hsaKmtDeregisterMemory`.
///
/// # Safety
/// Pointer arguments are as `hsakmt.h` describes them: null (refused) or valid for the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hsaKmtDeregisterMemory(addr: *mut libc::c_void) -> HSAKMT_STATUS {
    entry(|| kfd::current()?.deregister_memory(addr as usize))
}

/// `hsaKmtMapMemoryToGPU`: VRAM on its GPU, system memory on every GPU. The GPU address is
/// the CPU address.
///
/// # Safety
/// Pointer arguments are as `hsakmt.h` describes them: null (refused) or valid for the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hsaKmtMapMemoryToGPU(
    addr: *mut libc::c_void,
    _size: u64,
    alt: *mut u64,
) -> HSAKMT_STATUS {
    entry(|| {
        let k = kfd::current()?;
        if addr.is_null() {
            return Err(KfdError::InvalidParameter("null MemoryAddress"));
        }
        k.map_memory(addr as usize, None)?;
        if !alt.is_null() {
            put(alt, addr as u64)?;
        }
        Ok(())
    })
}

/// `hsaKmtMapMemoryToGPUNodes`.
///
/// # Safety
/// Pointer arguments are as `hsakmt.h` describes them: null (refused) or valid for the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hsaKmtMapMemoryToGPUNodes(
    addr: *mut libc::c_void,
    _size: u64,
    alt: *mut u64,
    _flags: u32,
    n: u64,
    nodes: *mut u32,
) -> HSAKMT_STATUS {
    entry(|| {
        let k = kfd::current()?;
        if addr.is_null() {
            return Err(KfdError::InvalidParameter("null MemoryAddress"));
        }
        let nodes = slice(nodes, n as usize)?;
        k.map_memory(addr as usize, if nodes.is_empty() { None } else { Some(nodes) })?;
        if !alt.is_null() {
            put(alt, addr as u64)?;
        }
        Ok(())
    })
}

/// `hsaKmtUnmapMemoryToGPU`.
///
/// # Safety
/// Pointer arguments are as `hsakmt.h` describes them: null (refused) or valid for the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hsaKmtUnmapMemoryToGPU(addr: *mut libc::c_void) -> HSAKMT_STATUS {
    entry(|| {
        let k = kfd::current()?;
        if addr.is_null() {
            return Err(KfdError::InvalidParameter("null MemoryAddress"));
        }
        k.unmap_memory(addr as usize)
    })
}
