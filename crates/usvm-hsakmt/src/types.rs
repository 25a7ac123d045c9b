//! The C types of `hsakmttypes.h` that usvm's entry points read or write, with the layout
//! of ROCm's header (KFD ioctl 1.17): every struct is packed to 4 bytes
//! (`#pragma pack(push, 4)`), so 64-bit fields may sit at 4-byte offsets. The tests below
//! check each size and offset against the numbers recorded from the upstream header.

// Field names and meanings are the C header's (include/hsakmt/hsakmttypes.h documents them).
#![allow(non_snake_case, non_camel_case_types, missing_docs)]

use std::ffi::c_void;

/// `HSAKMT_STATUS`.
pub type HSAKMT_STATUS = u32;
/// Success.
pub const HSAKMT_STATUS_SUCCESS: HSAKMT_STATUS = 0;
/// The underlying (kernel) call failed; `errno` says why.
pub const HSAKMT_STATUS_ERROR: HSAKMT_STATUS = 1;
/// Interface version mismatch.
pub const HSAKMT_STATUS_DRIVER_MISMATCH: HSAKMT_STATUS = 2;
/// A bad argument.
pub const HSAKMT_STATUS_INVALID_PARAMETER: HSAKMT_STATUS = 3;
/// A bad handle.
pub const HSAKMT_STATUS_INVALID_HANDLE: HSAKMT_STATUS = 4;
/// A bad node id.
pub const HSAKMT_STATUS_INVALID_NODE_UNIT: HSAKMT_STATUS = 5;
/// Out of memory.
pub const HSAKMT_STATUS_NO_MEMORY: HSAKMT_STATUS = 6;
/// A buffer too small.
pub const HSAKMT_STATUS_BUFFER_TOO_SMALL: HSAKMT_STATUS = 7;
/// Not implemented.
pub const HSAKMT_STATUS_NOT_IMPLEMENTED: HSAKMT_STATUS = 10;
/// Not supported.
pub const HSAKMT_STATUS_NOT_SUPPORTED: HSAKMT_STATUS = 11;
/// Unavailable.
pub const HSAKMT_STATUS_UNAVAILABLE: HSAKMT_STATUS = 12;
/// Out of resources.
pub const HSAKMT_STATUS_OUT_OF_RESOURCES: HSAKMT_STATUS = 13;
/// The KFD is not open.
pub const HSAKMT_STATUS_KERNEL_IO_CHANNEL_NOT_OPENED: HSAKMT_STATUS = 20;
/// Talking to the kernel failed.
pub const HSAKMT_STATUS_KERNEL_COMMUNICATION_ERROR: HSAKMT_STATUS = 21;
/// The KFD was already open.
pub const HSAKMT_STATUS_KERNEL_ALREADY_OPENED: HSAKMT_STATUS = 22;
/// No IOMMU.
pub const HSAKMT_STATUS_HSAMMU_UNAVAILABLE: HSAKMT_STATUS = 23;
/// A wait failed.
pub const HSAKMT_STATUS_WAIT_FAILURE: HSAKMT_STATUS = 30;
/// A wait timed out.
pub const HSAKMT_STATUS_WAIT_TIMEOUT: HSAKMT_STATUS = 31;
/// Memory already registered.
pub const HSAKMT_STATUS_MEMORY_ALREADY_REGISTERED: HSAKMT_STATUS = 35;
/// Memory not registered.
pub const HSAKMT_STATUS_MEMORY_NOT_REGISTERED: HSAKMT_STATUS = 36;
/// Misaligned memory.
pub const HSAKMT_STATUS_MEMORY_ALIGNMENT: HSAKMT_STATUS = 37;

/// `HSA_QUEUE_TYPE`: PM4 compute.
pub const HSA_QUEUE_COMPUTE: u32 = 1;
/// `HSA_QUEUE_TYPE`: SDMA.
pub const HSA_QUEUE_SDMA: u32 = 2;
/// `HSA_QUEUE_TYPE`: SDMA on an XGMI engine.
pub const HSA_QUEUE_SDMA_XGMI: u32 = 5;
/// `HSA_QUEUE_TYPE`: AQL compute.
pub const HSA_QUEUE_COMPUTE_AQL: u32 = 21;

/// `HSA_EVENTID_MEMORY_FATAL_PROCESS`: the fault is fatal to the process's queues.
pub const HSA_EVENTID_MEMORY_FATAL_PROCESS: u32 = 1;

/// `HsaVersionInfo`.
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug, Default)]
pub struct HsaVersionInfo {
    pub KernelInterfaceMajorVersion: u32,
    pub KernelInterfaceMinorVersion: u32,
}

/// `HsaSystemProperties`.
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug, Default)]
pub struct HsaSystemProperties {
    pub NumNodes: u32,
    pub PlatformOem: u32,
    pub PlatformId: u32,
    pub PlatformRev: u32,
}

/// `HsaNodeProperties` (360 bytes).
#[repr(C, packed(4))]
#[derive(Clone, Copy)]
pub struct HsaNodeProperties {
    pub NumCPUCores: u32,
    pub NumFComputeCores: u32,
    pub NumMemoryBanks: u32,
    pub NumCaches: u32,
    pub NumIOLinks: u32,
    pub CComputeIdLo: u32,
    pub FComputeIdLo: u32,
    pub Capability: u32,
    pub MaxWavesPerSIMD: u32,
    pub LDSSizeInKB: u32,
    pub GDSSizeInKB: u32,
    pub WaveFrontSize: u32,
    pub NumShaderBanks: u32,
    pub NumArrays: u32,
    pub NumCUPerArray: u32,
    pub NumSIMDPerCU: u32,
    pub MaxSlotsScratchCU: u32,
    pub EngineId: u32,
    pub OverrideEngineId: u32,
    pub VendorId: u16,
    pub DeviceId: u16,
    pub LocationId: u32,
    pub LocalMemSize: u64,
    pub MaxEngineClockMhzFCompute: u32,
    pub MaxEngineClockMhzCCompute: u32,
    pub DrmRenderMinor: i32,
    pub MarketingName: [u16; 64],
    pub AMDName: [u8; 64],
    pub uCodeEngineVersions: u32,
    pub DebugProperties: u64,
    pub HiveID: u64,
    pub NumSdmaEngines: u32,
    pub NumSdmaXgmiEngines: u32,
    pub NumSdmaQueuesPerEngine: u8,
    pub NumCpQueues: u8,
    pub NumGws: u8,
    pub Integrated: u8,
    pub Domain: u32,
    pub UniqueID: u64,
    pub VGPRSizePerCU: u32,
    pub SGPRSizePerCU: u32,
    pub NumXcc: u32,
    pub KFDGpuID: u32,
    pub FamilyID: u32,
}

/// `HsaMemoryProperties` (32 bytes).
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug, Default)]
pub struct HsaMemoryProperties {
    pub HeapType: u32,
    pub SizeInBytes: u64,
    pub Flags: u32,
    pub Width: u32,
    pub MemoryClockMax: u32,
    pub VirtualBaseAddress: u64,
}

/// `HsaCacheProperties` (1056 bytes).
#[repr(C, packed(4))]
#[derive(Clone, Copy)]
pub struct HsaCacheProperties {
    pub ProcessorIdLow: u32,
    pub CacheLevel: u32,
    pub CacheSize: u32,
    pub CacheLineSize: u32,
    pub CacheLinesPerTag: u32,
    pub CacheAssociativity: u32,
    pub CacheLatency: u32,
    pub CacheType: u32,
    pub SiblingMap: [u32; 256],
}

/// `HsaIoLinkProperties` (52 bytes).
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug, Default)]
pub struct HsaIoLinkProperties {
    pub IoLinkType: u32,
    pub VersionMajor: u32,
    pub VersionMinor: u32,
    pub NodeFrom: u32,
    pub NodeTo: u32,
    pub Weight: u32,
    pub MinimumLatency: u32,
    pub MaximumLatency: u32,
    pub MinimumBandwidth: u32,
    pub MaximumBandwidth: u32,
    pub RecTransferSize: u32,
    pub RecSdmaEngIdMask: u32,
    pub Flags: u32,
}

/// `HsaSyncVar` (16 bytes).
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug, Default)]
pub struct HsaSyncVar {
    pub UserData: u64,
    pub SyncVarSize: u64,
}

/// `HsaEventDescriptor` (24 bytes).
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug, Default)]
pub struct HsaEventDescriptor {
    pub EventType: u32,
    pub NodeId: u32,
    pub SyncVar: HsaSyncVar,
}

/// `HsaMemoryAccessFault` (20 bytes), one member of `HsaEventData`'s union.
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug, Default)]
pub struct HsaMemoryAccessFault {
    pub NodeId: u32,
    pub VirtualAddress: u64,
    /// `HsaAccessAttributeFailure` bits.
    pub Failure: u32,
    pub Flags: u32,
}

/// `HsaEventData` (44 bytes); its 20-byte union is kept as the member usvm fills
/// (memory faults) or the sync variable of signal events.
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug, Default)]
pub struct HsaEventData {
    pub EventType: u32,
    pub EventData: HsaMemoryAccessFault,
    pub HWData1: u64,
    pub HWData2: u64,
    pub HWData3: u32,
}

/// `HsaEvent` (48 bytes).
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug, Default)]
pub struct HsaEvent {
    pub EventId: u32,
    pub EventData: HsaEventData,
}

/// `HsaQueueResource` (40 bytes).
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug)]
pub struct HsaQueueResource {
    pub QueueId: u64,
    pub Queue_DoorBell_aql: *mut u64,
    pub Queue_write_ptr_aql: *mut u64,
    pub Queue_read_ptr_aql: *mut u64,
    pub ErrorReason: *mut i64,
}

/// `HSA_SVM_ATTRIBUTE` (8 bytes).
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HSA_SVM_ATTRIBUTE {
    pub r#type: u32,
    pub value: u32,
}

/// `HsaClockCounters` (32 bytes).
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug, Default)]
pub struct HsaClockCounters {
    pub GPUClockCounter: u64,
    pub CPUClockCounter: u64,
    pub SystemClockCounter: u64,
    pub SystemClockFrequencyHz: u64,
}

/// An opaque pointer argument.
pub type Opaque = *mut c_void;

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    /// Sizes and offsets recorded from ROCm/ROCR-Runtime's `hsakmttypes.h` (KFD ioctl 1.17),
    /// compiled with gcc on x86-64.
    #[test]
    fn layouts_match_the_upstream_header() {
        assert_eq!(size_of::<HsaVersionInfo>(), 8);
        assert_eq!(offset_of!(HsaVersionInfo, KernelInterfaceMinorVersion), 4);
        assert_eq!(size_of::<HsaSystemProperties>(), 16);
        assert_eq!(offset_of!(HsaSystemProperties, PlatformRev), 12);
        assert_eq!(size_of::<HsaNodeProperties>(), 360);
        let node: &[(usize, usize)] = &[
            (offset_of!(HsaNodeProperties, NumCPUCores), 0),
            (offset_of!(HsaNodeProperties, NumFComputeCores), 4),
            (offset_of!(HsaNodeProperties, NumMemoryBanks), 8),
            (offset_of!(HsaNodeProperties, NumCaches), 12),
            (offset_of!(HsaNodeProperties, NumIOLinks), 16),
            (offset_of!(HsaNodeProperties, CComputeIdLo), 20),
            (offset_of!(HsaNodeProperties, FComputeIdLo), 24),
            (offset_of!(HsaNodeProperties, Capability), 28),
            (offset_of!(HsaNodeProperties, MaxWavesPerSIMD), 32),
            (offset_of!(HsaNodeProperties, LDSSizeInKB), 36),
            (offset_of!(HsaNodeProperties, GDSSizeInKB), 40),
            (offset_of!(HsaNodeProperties, WaveFrontSize), 44),
            (offset_of!(HsaNodeProperties, NumShaderBanks), 48),
            (offset_of!(HsaNodeProperties, NumArrays), 52),
            (offset_of!(HsaNodeProperties, NumCUPerArray), 56),
            (offset_of!(HsaNodeProperties, NumSIMDPerCU), 60),
            (offset_of!(HsaNodeProperties, MaxSlotsScratchCU), 64),
            (offset_of!(HsaNodeProperties, EngineId), 68),
            (offset_of!(HsaNodeProperties, OverrideEngineId), 72),
            (offset_of!(HsaNodeProperties, VendorId), 76),
            (offset_of!(HsaNodeProperties, DeviceId), 78),
            (offset_of!(HsaNodeProperties, LocationId), 80),
            (offset_of!(HsaNodeProperties, LocalMemSize), 84),
            (offset_of!(HsaNodeProperties, MaxEngineClockMhzFCompute), 92),
            (offset_of!(HsaNodeProperties, MaxEngineClockMhzCCompute), 96),
            (offset_of!(HsaNodeProperties, DrmRenderMinor), 100),
            (offset_of!(HsaNodeProperties, MarketingName), 104),
            (offset_of!(HsaNodeProperties, AMDName), 232),
            (offset_of!(HsaNodeProperties, uCodeEngineVersions), 296),
            (offset_of!(HsaNodeProperties, DebugProperties), 300),
            (offset_of!(HsaNodeProperties, HiveID), 308),
            (offset_of!(HsaNodeProperties, NumSdmaEngines), 316),
            (offset_of!(HsaNodeProperties, NumSdmaXgmiEngines), 320),
            (offset_of!(HsaNodeProperties, NumSdmaQueuesPerEngine), 324),
            (offset_of!(HsaNodeProperties, NumCpQueues), 325),
            (offset_of!(HsaNodeProperties, NumGws), 326),
            (offset_of!(HsaNodeProperties, Integrated), 327),
            (offset_of!(HsaNodeProperties, Domain), 328),
            (offset_of!(HsaNodeProperties, UniqueID), 332),
            (offset_of!(HsaNodeProperties, VGPRSizePerCU), 340),
            (offset_of!(HsaNodeProperties, SGPRSizePerCU), 344),
            (offset_of!(HsaNodeProperties, NumXcc), 348),
            (offset_of!(HsaNodeProperties, KFDGpuID), 352),
            (offset_of!(HsaNodeProperties, FamilyID), 356),
        ];
        for (i, &(got, want)) in node.iter().enumerate() {
            assert_eq!(got, want, "HsaNodeProperties field #{i}");
        }
        assert_eq!(size_of::<HsaMemoryProperties>(), 32);
        assert_eq!(
            [
                offset_of!(HsaMemoryProperties, SizeInBytes),
                offset_of!(HsaMemoryProperties, Flags),
                offset_of!(HsaMemoryProperties, Width),
                offset_of!(HsaMemoryProperties, MemoryClockMax),
                offset_of!(HsaMemoryProperties, VirtualBaseAddress)
            ],
            [4, 12, 16, 20, 24]
        );
        assert_eq!(size_of::<HsaCacheProperties>(), 1056);
        assert_eq!(offset_of!(HsaCacheProperties, SiblingMap), 32);
        assert_eq!(size_of::<HsaIoLinkProperties>(), 52);
        assert_eq!(offset_of!(HsaIoLinkProperties, NodeTo), 16);
        assert_eq!(offset_of!(HsaIoLinkProperties, Flags), 48);
        assert_eq!(size_of::<HsaEventDescriptor>(), 24);
        assert_eq!((offset_of!(HsaEventDescriptor, NodeId), offset_of!(HsaEventDescriptor, SyncVar)), (4, 8));
        assert_eq!(size_of::<HsaMemoryAccessFault>(), 20);
        assert_eq!(size_of::<HsaEventData>(), 44);
        assert_eq!(size_of::<HsaEvent>(), 48);
        let ev = offset_of!(HsaEvent, EventData);
        assert_eq!(ev, 4);
        assert_eq!(ev + offset_of!(HsaEventData, EventData), 8);
        assert_eq!(
            ev + offset_of!(HsaEventData, EventData) + offset_of!(HsaMemoryAccessFault, VirtualAddress),
            12
        );
        assert_eq!(ev + offset_of!(HsaEventData, EventData) + offset_of!(HsaMemoryAccessFault, Failure), 20);
        assert_eq!(ev + offset_of!(HsaEventData, EventData) + offset_of!(HsaMemoryAccessFault, Flags), 24);
        assert_eq!(ev + offset_of!(HsaEventData, HWData1), 28);
        assert_eq!(ev + offset_of!(HsaEventData, HWData2), 36);
        assert_eq!(ev + offset_of!(HsaEventData, HWData3), 44);
        assert_eq!(size_of::<HsaQueueResource>(), 40);
        assert_eq!(
            [
                offset_of!(HsaQueueResource, Queue_DoorBell_aql),
                offset_of!(HsaQueueResource, Queue_write_ptr_aql),
                offset_of!(HsaQueueResource, Queue_read_ptr_aql),
                offset_of!(HsaQueueResource, ErrorReason)
            ],
            [8, 16, 24, 32]
        );
        assert_eq!(size_of::<HSA_SVM_ATTRIBUTE>(), 8);
        assert_eq!(size_of::<HsaClockCounters>(), 32);
    }
}
