//! The KFD topology of the emulated machine, as `/sys/class/kfd/kfd/topology` would show it:
//! node 0 is the CPU (its cores, a SYSTEM heap of the machine's RAM), then one node per
//! emulated GPU, each an MI210-like gfx90a (CDNA2) with a FRAME_BUFFER_PUBLIC heap of its
//! VRAM and the capability bit for the SVM API.

use super::KfdConfig;
use crate::attr::GpuId;
use crate::svm::Svm;

/// `HSA_CAPABILITY`: bits 12-13, the doorbell type (2: gfx9 64-bit doorbells).
pub const CAP_DOORBELL_TYPE_GFX9: u32 = 2 << 12;
/// `HSA_CAPABILITY`: bit 27, the SVM API is supported.
pub const CAP_SVM_API_SUPPORTED: u32 = 1 << 27;
/// `HSA_CAPABILITY`: bit 28, the host may access VRAM coherently.
pub const CAP_COHERENT_HOST_ACCESS: u32 = 1 << 28;
/// The GPUs' graphics IP version: gfx90a is 9.0.10.
pub const GFX90A: (u32, u32, u32) = (9, 0, 10);
/// AMDGPU_FAMILY_AI (gfx9), the `FamilyID` of a gfx90a.
pub const FAMILY_AI: u32 = 141;
/// PCI vendor id of AMD.
pub const VENDOR_AMD: u16 = 0x1002;
/// Compute units per emulated GPU (an MI210 has 104).
pub const GPU_COMPUTE_UNITS: u32 = 104;
/// SIMDs per compute unit on CDNA2.
pub const SIMD_PER_CU: u32 = 4;

/// The kinds of memory heaps (`HSA_HEAPTYPE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum HeapType {
    /// System memory.
    System = 0,
    /// VRAM the host can see (large BAR).
    FrameBufferPublic = 1,
    /// VRAM the host cannot see.
    FrameBufferPrivate = 2,
}

/// One memory bank of a node (`HsaMemoryProperties`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryBank {
    /// Its heap type.
    pub heap: HeapType,
    /// Bytes.
    pub size: u64,
    /// Bus width in bits.
    pub width: u32,
    /// Clock, MHz.
    pub clock_mhz: u32,
}

/// `HSA_IOLINKTYPE` values usvm reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum IoLinkType {
    /// PCI Express.
    PciExpress = 2,
    /// AMD's XGMI between GPUs of a hive.
    Xgmi = 11,
}

/// One IO link from a node (`HsaIoLinkProperties`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoLink {
    /// The link's kind.
    pub kind: IoLinkType,
    /// This node.
    pub from: u32,
    /// The other node.
    pub to: u32,
    /// KFD's weight (lower is closer): 20 for PCIe to the CPU, 15 for XGMI.
    pub weight: u32,
    /// Bandwidth, MB/s.
    pub max_bandwidth: u32,
}

/// The properties of one node (the fields of `HsaNodeProperties` usvm fills).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeProperties {
    /// CPU cores (0 on a GPU node).
    pub cpu_cores: u32,
    /// SIMDs (0 on the CPU node): a node is a GPU node iff this is not 0.
    pub simd_count: u32,
    /// Memory banks.
    pub banks: Vec<MemoryBank>,
    /// IO links.
    pub io_links: Vec<IoLink>,
    /// First CPU core id (CPU node) or first SIMD id (GPU node).
    pub first_id: u32,
    /// `HSA_CAPABILITY` bits.
    pub capability: u32,
    /// Wavefronts per SIMD.
    pub max_waves_per_simd: u32,
    /// LDS per workgroup, KiB.
    pub lds_kib: u32,
    /// Wavefront size.
    pub wavefront_size: u32,
    /// Shader engines.
    pub shader_banks: u32,
    /// Shader arrays per engine.
    pub arrays: u32,
    /// Compute units per array.
    pub cu_per_array: u32,
    /// SIMDs per compute unit.
    pub simd_per_cu: u32,
    /// Scratch slots per compute unit.
    pub max_slots_scratch_cu: u32,
    /// Graphics IP version (major, minor, stepping).
    pub gfx_version: (u32, u32, u32),
    /// PCI vendor id.
    pub vendor_id: u16,
    /// PCI device id.
    pub device_id: u16,
    /// PCI location (bus << 8 | devfn).
    pub location_id: u32,
    /// VRAM bytes (0 on the CPU node).
    pub local_mem_size: u64,
    /// Engine clock, MHz.
    pub max_clock_mhz: u32,
    /// DRM render node minor.
    pub drm_render_minor: u32,
    /// Marketing name.
    pub marketing_name: String,
    /// ASIC name.
    pub amd_name: String,
    /// XGMI hive id (0: none).
    pub hive_id: u64,
    /// PCIe SDMA engines.
    pub sdma_engines: u32,
    /// XGMI SDMA engines.
    pub sdma_xgmi_engines: u32,
    /// SDMA queues per engine.
    pub sdma_queues_per_engine: u8,
    /// Compute queues.
    pub cp_queues: u8,
    /// Global wave sync resources.
    pub gws: u8,
    /// An APU (always false here).
    pub integrated: bool,
    /// A unique id.
    pub unique_id: u64,
    /// VGPR bytes per compute unit.
    pub vgpr_size_per_cu: u32,
    /// SGPR bytes per compute unit.
    pub sgpr_size_per_cu: u32,
    /// Compute partitions (XCCs).
    pub num_xcc: u32,
    /// The KFD gpu_id (0 on the CPU node).
    pub gpu_id: u32,
    /// AMDGPU family id (0 on the CPU node).
    pub family_id: u32,
}

impl NodeProperties {
    /// Whether this is a GPU node.
    pub fn is_gpu(&self) -> bool {
        self.simd_count > 0
    }

    /// `HSA_ENGINE_ID` as a word: uCode 0-9, major 10-15, minor 16-23, stepping 24-31.
    pub fn engine_id(&self) -> u32 {
        let (major, minor, stepping) = self.gfx_version;
        (major & 0x3f) << 10 | (minor & 0xff) << 16 | (stepping & 0xff) << 24
    }
}

/// The CPU's model name, from `/proc/cpuinfo`.
fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| "CPU".to_string())
}

/// The nodes of `svm`'s machine.
pub fn build(svm: &Svm, config: &KfdConfig) -> Vec<NodeProperties> {
    let gpus = svm.gpu_ids();
    let hive_id = if config.xgmi_hive { 0x5553_564d_0000_0001 } else { 0 };
    let mut nodes = vec![cpu_node(gpus.len())];
    for (i, g) in gpus.iter().enumerate() {
        nodes.push(gpu_node(svm, config, (i, gpus.len()), *g, hive_id));
    }
    nodes
}

/// Node 0: the CPU, linked to every GPU by PCIe.
fn cpu_node(gpus: usize) -> NodeProperties {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    NodeProperties {
        cpu_cores: cores,
        simd_count: 0,
        banks: vec![MemoryBank {
            heap: HeapType::System,
            size: crate::sys::physical_memory_bytes(),
            width: 64,
            clock_mhz: 3200,
        }],
        io_links: (0..gpus)
            .map(|i| IoLink {
                kind: IoLinkType::PciExpress,
                from: 0,
                to: i as u32 + 1,
                weight: 20,
                max_bandwidth: 32_000,
            })
            .collect(),
        first_id: 0,
        capability: 0,
        max_waves_per_simd: 0,
        lds_kib: 0,
        wavefront_size: 0,
        shader_banks: 0,
        arrays: 0,
        cu_per_array: 0,
        simd_per_cu: 0,
        max_slots_scratch_cu: 0,
        gfx_version: (0, 0, 0),
        vendor_id: 0,
        device_id: 0,
        location_id: 0,
        local_mem_size: 0,
        max_clock_mhz: 3000,
        drm_render_minor: 0,
        marketing_name: cpu_name(),
        amd_name: String::new(),
        hive_id: 0,
        sdma_engines: 0,
        sdma_xgmi_engines: 0,
        sdma_queues_per_engine: 0,
        cp_queues: 0,
        gws: 0,
        integrated: false,
        unique_id: 0,
        vgpr_size_per_cu: 0,
        sgpr_size_per_cu: 0,
        num_xcc: 0,
        gpu_id: 0,
        family_id: 0,
    }
}

/// Node `i + 1`: GPU `g`, the `i`-th of `count`, linked to the CPU (PCIe) and, in a hive, to
/// every other GPU (XGMI).
fn gpu_node(
    svm: &Svm,
    config: &KfdConfig,
    (i, count): (usize, usize),
    g: GpuId,
    hive_id: u64,
) -> NodeProperties {
    let io_links = gpu_links((i, count), config.xgmi_hive);
    NodeProperties {
        cpu_cores: 0,
        simd_count: GPU_COMPUTE_UNITS * SIMD_PER_CU,
        banks: vec![MemoryBank {
            heap: HeapType::FrameBufferPublic,
            size: svm.vram_bytes(g).unwrap_or(0),
            width: 4096,
            clock_mhz: 1600,
        }],
        io_links,
        first_id: 0x8000_0000 + i as u32 * 0x1000,
        capability: CAP_SVM_API_SUPPORTED | CAP_DOORBELL_TYPE_GFX9 | CAP_COHERENT_HOST_ACCESS,
        max_waves_per_simd: 8,
        lds_kib: 64,
        wavefront_size: 64,
        shader_banks: 8,
        arrays: 1,
        cu_per_array: GPU_COMPUTE_UNITS / 8,
        simd_per_cu: SIMD_PER_CU,
        max_slots_scratch_cu: 32,
        gfx_version: GFX90A,
        vendor_id: VENDOR_AMD,
        device_id: 0x740f,
        location_id: (0x10 + i as u32) << 8,
        local_mem_size: svm.vram_bytes(g).unwrap_or(0),
        max_clock_mhz: 1700,
        drm_render_minor: 128 + i as u32,
        marketing_name: "usvm emulated gfx90a".to_string(),
        amd_name: "gfx90a".to_string(),
        hive_id,
        sdma_engines: 2,
        sdma_xgmi_engines: 3,
        sdma_queues_per_engine: 8,
        cp_queues: 24,
        gws: 64,
        integrated: false,
        unique_id: 0x5553_564d_0000_0000 | u64::from(g.0),
        vgpr_size_per_cu: 0x80000,
        sgpr_size_per_cu: 0x6400,
        num_xcc: 1,
        gpu_id: g.0,
        family_id: FAMILY_AI,
    }
}

/// The IO links of the `i`-th of `count` GPUs: PCIe to the CPU, XGMI to every other GPU of
/// a hive.
fn gpu_links((i, count): (usize, usize), hive: bool) -> Vec<IoLink> {
    let node = i as u32 + 1;
    let mut links =
        vec![IoLink { kind: IoLinkType::PciExpress, from: node, to: 0, weight: 20, max_bandwidth: 32_000 }];
    if hive {
        links.extend((0..count).filter(|&j| j != i).map(|j| IoLink {
            kind: IoLinkType::Xgmi,
            from: node,
            to: j as u32 + 1,
            weight: 15,
            max_bandwidth: 100_000,
        }));
    }
    links
}
