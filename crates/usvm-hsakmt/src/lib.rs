//! `libhsakmt.so` on usvm: the SVM subset of ROCm's thunk (and what AMD's kfdtest SVM tests
//! use around it) over the emulated GPUs of [`usvm::kfd`], with libhsakmt's exact ABI:
//! the header in `include/hsakmt/`, the struct layouts of `hsakmttypes.h`, its statuses.
//!
//! Every entry point checks its pointers, never lets a panic or a Rust error cross into C,
//! and returns the status libhsakmt would (`HSAKMT_STATUS_ERROR` with the kernel's errno in
//! `errno` when the underlying call fails). This crate only translates ids, structs and
//! statuses; the work is in `usvm::kfd`. The functions of `hsakmt.h` usvm does not
//! implement are exported too (`stubs`) and return `HSAKMT_STATUS_NOT_SUPPORTED`.

mod stubs;
pub mod types;

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use types::*;
use usvm::RawAttr;
use usvm::kfd::{self, EventDescriptor, EventType, KfdError, MemFlags, Opened, QueueKind};

type Res<T> = Result<T, KfdError>;

/// libhsakmt's status for an error (and the errno it leaves).
pub fn status_of(e: &KfdError) -> HSAKMT_STATUS {
    match e {
        KfdError::NotOpen => HSAKMT_STATUS_KERNEL_IO_CHANNEL_NOT_OPENED,
        KfdError::InvalidParameter(_) => HSAKMT_STATUS_INVALID_PARAMETER,
        KfdError::InvalidNode(_) => HSAKMT_STATUS_INVALID_NODE_UNIT,
        KfdError::InvalidHandle(_) => HSAKMT_STATUS_INVALID_HANDLE,
        KfdError::NoMemory => HSAKMT_STATUS_NO_MEMORY,
        KfdError::NotRegistered(_) => HSAKMT_STATUS_MEMORY_NOT_REGISTERED,
        KfdError::AlreadyRegistered(_) => HSAKMT_STATUS_MEMORY_ALREADY_REGISTERED,
        KfdError::Timeout => HSAKMT_STATUS_WAIT_TIMEOUT,
        KfdError::NotSupported(_) => HSAKMT_STATUS_NOT_SUPPORTED,
        KfdError::Sys(_) => HSAKMT_STATUS_ERROR,
    }
}

fn set_errno(v: i32) {
    // SAFETY: __errno_location returns this thread's errno, always valid to write.
    unsafe { *libc::__errno_location() = v };
}

/// Runs an entry point's body: errors become statuses (ERROR sets `errno`), panics become
/// `HSAKMT_STATUS_ERROR`; nothing unwinds into C.
fn guard(f: impl FnOnce() -> Res<HSAKMT_STATUS>) -> HSAKMT_STATUS {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            if let KfdError::Sys(_) = e {
                set_errno(e.errno());
            }
            status_of(&e)
        }
        Err(_) => {
            set_errno(libc::EIO);
            HSAKMT_STATUS_ERROR
        }
    }
}

/// As [`guard`], for bodies that return nothing but success.
fn entry(f: impl FnOnce() -> Res<()>) -> HSAKMT_STATUS {
    guard(|| f().map(|()| HSAKMT_STATUS_SUCCESS))
}

/// Writes `v` through the caller's pointer; `InvalidParameter` when it is null.
fn put<T>(p: *mut T, v: T) -> Res<()> {
    if p.is_null() {
        return Err(KfdError::InvalidParameter("null output pointer"));
    }
    // SAFETY: the caller passes a pointer to writable memory for one `T` (the function's
    // contract in hsakmt.h); it may be unaligned (packed structs), hence write_unaligned.
    unsafe { p.write_unaligned(v) };
    Ok(())
}

/// Reads `*p`; `InvalidParameter` when it is null.
fn get<T>(p: *const T) -> Res<T> {
    if p.is_null() {
        return Err(KfdError::InvalidParameter("null input pointer"));
    }
    // SAFETY: the caller passes a pointer to one readable `T` (hsakmt.h's contract).
    Ok(unsafe { p.read_unaligned() })
}

/// The caller's array of `n` `T`s as a slice (empty when `n` is 0).
fn slice<'a, T>(p: *const T, n: usize) -> Res<&'a [T]> {
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() || !(p as usize).is_multiple_of(std::mem::align_of::<T>()) {
        return Err(KfdError::InvalidParameter("null or misaligned array"));
    }
    // SAFETY: the caller passes `n` readable, initialized `T`s at `p` (hsakmt.h's contract),
    // aligned as checked above, alive for the call.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// The caller's array of `n` `T`s, writable.
fn slice_mut<'a, T>(p: *mut T, n: usize) -> Res<&'a mut [T]> {
    if n == 0 {
        return Ok(&mut []);
    }
    if p.is_null() || !(p as usize).is_multiple_of(std::mem::align_of::<T>()) {
        return Err(KfdError::InvalidParameter("null or misaligned array"));
    }
    // SAFETY: as in `slice`, and the memory is writable and not aliased during the call.
    Ok(unsafe { std::slice::from_raw_parts_mut(p, n) })
}

// ---------------------------------------------------------------------------------------
// Opening, version, topology.

/// `hsaKmtOpenKFD`: SUCCESS the first time, KERNEL_ALREADY_OPENED after (counted).
#[unsafe(no_mangle)]
pub extern "C" fn hsaKmtOpenKFD() -> HSAKMT_STATUS {
    guard(|| match kfd::open() {
        Ok(Opened::First) => Ok(HSAKMT_STATUS_SUCCESS),
        Ok(Opened::Again) => Ok(HSAKMT_STATUS_KERNEL_ALREADY_OPENED),
        Err(e @ KfdError::InvalidParameter(_)) => {
            eprintln!("libhsakmt (usvm): {e}");
            Err(KfdError::Sys(usvm::Error::InvalidConfig(e.to_string())))
        }
        Err(e) => Err(e),
    })
}

/// `hsaKmtCloseKFD`.
#[unsafe(no_mangle)]
pub extern "C" fn hsaKmtCloseKFD() -> HSAKMT_STATUS {
    entry(kfd::close)
}

/// `hsaKmtGetVersion`: KFD ioctl 1.17.
///
/// # Safety
/// Pointer arguments are as `hsakmt.h` describes them: null (refused) or valid for the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hsaKmtGetVersion(v: *mut HsaVersionInfo) -> HSAKMT_STATUS {
    entry(|| {
        kfd::current()?;
        let (major, minor) = kfd::KFD_VERSION;
        put(v, HsaVersionInfo { KernelInterfaceMajorVersion: major, KernelInterfaceMinorVersion: minor })
    })
}

/// `hsaKmtAcquireSystemProperties`.
///
/// # Safety
/// Pointer arguments are as `hsakmt.h` describes them: null (refused) or valid for the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hsaKmtAcquireSystemProperties(p: *mut HsaSystemProperties) -> HSAKMT_STATUS {
    entry(|| {
        let k = kfd::current()?;
        put(p, HsaSystemProperties { NumNodes: k.nodes().len() as u32, ..Default::default() })
    })
}

/// `hsaKmtReleaseSystemProperties`: always succeeds (also in a child of a fork).
#[unsafe(no_mangle)]
pub extern "C" fn hsaKmtReleaseSystemProperties() -> HSAKMT_STATUS {
    HSAKMT_STATUS_SUCCESS
}

fn node_properties(n: &kfd::NodeProperties) -> HsaNodeProperties {
    let mut marketing = [0u16; 64];
    for (d, c) in marketing.iter_mut().zip(n.marketing_name.encode_utf16().take(63)) {
        *d = c;
    }
    let mut amd = [0u8; 64];
    for (d, c) in amd.iter_mut().zip(n.amd_name.bytes().take(63)) {
        *d = c;
    }
    HsaNodeProperties {
        NumCPUCores: n.cpu_cores,
        NumFComputeCores: n.simd_count,
        NumMemoryBanks: n.banks.len() as u32,
        NumCaches: 0,
        NumIOLinks: n.io_links.len() as u32,
        CComputeIdLo: if n.is_gpu() { 0 } else { n.first_id },
        FComputeIdLo: if n.is_gpu() { n.first_id } else { 0 },
        Capability: n.capability,
        MaxWavesPerSIMD: n.max_waves_per_simd,
        LDSSizeInKB: n.lds_kib,
        GDSSizeInKB: 0,
        WaveFrontSize: n.wavefront_size,
        NumShaderBanks: n.shader_banks,
        NumArrays: n.arrays,
        NumCUPerArray: n.cu_per_array,
        NumSIMDPerCU: n.simd_per_cu,
        MaxSlotsScratchCU: n.max_slots_scratch_cu,
        EngineId: n.engine_id(),
        OverrideEngineId: 0,
        VendorId: n.vendor_id,
        DeviceId: n.device_id,
        LocationId: n.location_id,
        LocalMemSize: n.local_mem_size,
        MaxEngineClockMhzFCompute: if n.is_gpu() { n.max_clock_mhz } else { 0 },
        MaxEngineClockMhzCCompute: if n.is_gpu() { 0 } else { n.max_clock_mhz },
        DrmRenderMinor: n.drm_render_minor as i32,
        MarketingName: marketing,
        AMDName: amd,
        uCodeEngineVersions: 0,
        DebugProperties: 0,
        HiveID: n.hive_id,
        NumSdmaEngines: n.sdma_engines,
        NumSdmaXgmiEngines: n.sdma_xgmi_engines,
        NumSdmaQueuesPerEngine: n.sdma_queues_per_engine,
        NumCpQueues: n.cp_queues,
        NumGws: n.gws,
        Integrated: u8::from(n.integrated),
        Domain: 0,
        UniqueID: n.unique_id,
        VGPRSizePerCU: n.vgpr_size_per_cu,
        SGPRSizePerCU: n.sgpr_size_per_cu,
        NumXcc: n.num_xcc,
        KFDGpuID: n.gpu_id,
        FamilyID: n.family_id,
    }
}

/// `hsaKmtGetNodeProperties`.
///
/// # Safety
/// Pointer arguments are as `hsakmt.h` describes them: null (refused) or valid for the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hsaKmtGetNodeProperties(node: u32, p: *mut HsaNodeProperties) -> HSAKMT_STATUS {
    entry(|| {
        let k = kfd::current()?;
        if p.is_null() {
            return Err(KfdError::InvalidParameter("null NodeProperties"));
        }
        put(p, node_properties(k.node(node)?))
    })
}

/// `hsaKmtGetNodeMemoryProperties`: the first `n` banks of `node`.
///
/// # Safety
/// Pointer arguments are as `hsakmt.h` describes them: null (refused) or valid for the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hsaKmtGetNodeMemoryProperties(
    node: u32,
    n: u32,
    p: *mut HsaMemoryProperties,
) -> HSAKMT_STATUS {
    entry(|| {
        let k = kfd::current()?;
        if p.is_null() {
            return Err(KfdError::InvalidParameter("null MemoryProperties"));
        }
        let banks = &k.node(node)?.banks;
        for (i, b) in banks.iter().take(n as usize).enumerate() {
            let m = HsaMemoryProperties {
                HeapType: b.heap as u32,
                SizeInBytes: b.size,
                Flags: 0,
                Width: b.width,
                MemoryClockMax: b.clock_mhz,
                VirtualBaseAddress: 0,
            };
            // SAFETY: the caller passes room for `n` entries; `i < n`.
            put(unsafe { p.add(i) }, m)?;
        }
        Ok(())
    })
}

/// `hsaKmtGetNodeCacheProperties`: the emulated nodes report no caches.
///
/// # Safety
/// Pointer arguments are as `hsakmt.h` describes them: null (refused) or valid for the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hsaKmtGetNodeCacheProperties(
    node: u32,
    _processor: u32,
    n: u32,
    p: *mut HsaCacheProperties,
) -> HSAKMT_STATUS {
    entry(|| {
        let k = kfd::current()?;
        k.node(node)?;
        if n > 0 {
            return Err(KfdError::InvalidParameter("the node has no caches"));
        }
        let _ = p;
        Ok(())
    })
}

/// `hsaKmtGetNodeIoLinkProperties`: the first `n` IO links of `node`.
///
/// # Safety
/// Pointer arguments are as `hsakmt.h` describes them: null (refused) or valid for the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hsaKmtGetNodeIoLinkProperties(
    node: u32,
    n: u32,
    p: *mut HsaIoLinkProperties,
) -> HSAKMT_STATUS {
    entry(|| {
        let k = kfd::current()?;
        if p.is_null() {
            return Err(KfdError::InvalidParameter("null IoLinkProperties"));
        }
        for (i, l) in k.node(node)?.io_links.iter().take(n as usize).enumerate() {
            let v = HsaIoLinkProperties {
                IoLinkType: l.kind as u32,
                VersionMajor: 1,
                NodeFrom: l.from,
                NodeTo: l.to,
                Weight: l.weight,
                MaximumBandwidth: l.max_bandwidth,
                MinimumBandwidth: l.max_bandwidth / 4,
                ..Default::default()
            };
            // SAFETY: the caller passes room for `n` entries; `i < n`.
            put(unsafe { p.add(i) }, v)?;
        }
        Ok(())
    })
}

/// `hsaKmtGetClockCounters`: the GPU, CPU and system clocks in nanoseconds.
///
/// # Safety
/// Pointer arguments are as `hsakmt.h` describes them: null (refused) or valid for the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hsaKmtGetClockCounters(node: u32, c: *mut HsaClockCounters) -> HSAKMT_STATUS {
    entry(|| {
        kfd::current()?.node(node)?;
        let ns = usvm::clock_ns();
        put(
            c,
            HsaClockCounters {
                GPUClockCounter: ns,
                CPUClockCounter: ns,
                SystemClockCounter: ns,
                SystemClockFrequencyHz: 1_000_000_000,
            },
        )
    })
}

// ---------------------------------------------------------------------------------------
// SVM and XNACK.

fn svm_attrs(attrs: *mut HSA_SVM_ATTRIBUTE, n: u32) -> Res<Vec<RawAttr>> {
    Ok(slice(attrs, n as usize)?.iter().map(|a| RawAttr { ty: a.r#type, value: a.value }).collect())
}

/// `hsaKmtSVMSetAttr`: attributes carry node ids.
///
/// # Safety
/// Pointer arguments are as `hsakmt.h` describes them: null (refused) or valid for the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hsaKmtSVMSetAttr(
    start: *mut libc::c_void,
    size: u64,
    nattr: u32,
    attrs: *mut HSA_SVM_ATTRIBUTE,
) -> HSAKMT_STATUS {
    entry(|| {
        let k = kfd::current()?;
        let raw = svm_attrs(attrs, nattr)?;
        k.svm_set_attr(start as u64, size, &raw)
    })
}

/// `hsaKmtSVMGetAttr`: answers in node ids; ACCESS queries answer through `.type`.
///
/// # Safety
/// Pointer arguments are as `hsakmt.h` describes them: null (refused) or valid for the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hsaKmtSVMGetAttr(
    start: *mut libc::c_void,
    size: u64,
    nattr: u32,
    attrs: *mut HSA_SVM_ATTRIBUTE,
) -> HSAKMT_STATUS {
    entry(|| {
        let k = kfd::current()?;
        let mut raw = svm_attrs(attrs, nattr)?;
        k.svm_get_attr(start as u64, size, &mut raw)?;
        for (d, r) in slice_mut(attrs, nattr as usize)?.iter_mut().zip(&raw) {
            *d = HSA_SVM_ATTRIBUTE { r#type: r.ty, value: r.value };
        }
        Ok(())
    })
}

/// `hsaKmtSetXNACKMode`: ERROR (EBUSY) while the process has any queue.
#[unsafe(no_mangle)]
pub extern "C" fn hsaKmtSetXNACKMode(enable: i32) -> HSAKMT_STATUS {
    entry(|| kfd::current()?.set_xnack(enable != 0))
}

/// `hsaKmtGetXNACKMode`.
///
/// # Safety
/// Pointer arguments are as `hsakmt.h` describes them: null (refused) or valid for the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hsaKmtGetXNACKMode(enable: *mut i32) -> HSAKMT_STATUS {
    entry(|| {
        let k = kfd::current()?;
        put(enable, i32::from(k.xnack()))
    })
}

// ---------------------------------------------------------------------------------------
// Memory.

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

// ---------------------------------------------------------------------------------------
// Queues.

fn create_queue(
    node: u32,
    ty: u32,
    ring: *mut libc::c_void,
    size: u64,
    res: *mut HsaQueueResource,
) -> HSAKMT_STATUS {
    entry(|| {
        let k = kfd::current()?;
        if res.is_null() {
            return Err(KfdError::InvalidParameter("null QueueResource"));
        }
        let kind = match ty {
            HSA_QUEUE_COMPUTE | HSA_QUEUE_COMPUTE_AQL => QueueKind::Compute,
            HSA_QUEUE_SDMA => QueueKind::Sdma,
            HSA_QUEUE_SDMA_XGMI => QueueKind::SdmaXgmi,
            _ => return Err(KfdError::NotSupported("this queue type")),
        };
        let q = k.create_queue(node, kind, ring as usize, size)?;
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

/// `hsaKmtCreateQueue`: SDMA and SDMA_XGMI queues execute SDMA packets; compute queues
/// exist (and count) but execute nothing.
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
    _event: *mut HsaEvent,
    res: *mut HsaQueueResource,
) -> HSAKMT_STATUS {
    create_queue(node, ty, ring, size, res)
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
    _event: *mut HsaEvent,
    res: *mut HsaQueueResource,
) -> HSAKMT_STATUS {
    create_queue(node, ty, ring, size, res)
}

/// `hsaKmtDestroyQueue`.
#[unsafe(no_mangle)]
pub extern "C" fn hsaKmtDestroyQueue(id: u64) -> HSAKMT_STATUS {
    entry(|| kfd::current()?.destroy_queue(id))
}

// ---------------------------------------------------------------------------------------
// Events.

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
