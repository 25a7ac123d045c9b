//! Opening the KFD, its version and the topology (nodes, memory banks, IO links).

use crate::types::*;
use crate::{entry, guard, put};
use usvm::kfd::{self, KfdError, Opened};

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
