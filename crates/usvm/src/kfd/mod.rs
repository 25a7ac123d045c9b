//! A process-wide model of the KFD device (`/dev/kfd`) as ROCm's thunk, libhsakmt, sees it:
//! the topology of nodes (a CPU node, then one node per emulated GPU), KFD memory (buffer
//! objects that never migrate), events, SDMA queues that execute real SDMA packets and
//! compute queues that execute PM4 packets (shaders included) from a ring in the
//! application's memory, the SMI event file, and SVM through node ids.
//!
//! The C library `usvm-hsakmt` is a thin layer over this module: it translates structs, ids
//! and statuses, and nothing else. Rust programs can use it directly:
//!
//! ```no_run
//! use usvm::kfd::{self, KfdConfig};
//! kfd::open_with(KfdConfig { gpus: 1, ..KfdConfig::default() })?;
//! let k = kfd::current()?;
//! assert_eq!(k.nodes().len(), 2); // the CPU node and one GPU
//! kfd::close()?;
//! # Ok::<(), usvm::kfd::KfdError>(())
//! ```
//!
//! One instance per process, reference counted as `hsaKmtOpenKFD` / `hsaKmtCloseKFD` are.
//! After `fork`, the child inherits the parent's count but none of its threads: it may close
//! what it inherited (nothing is torn down: it belongs to the parent) and open a fresh one.

pub mod cp;
pub mod events;
pub mod halt;
pub mod memory;
pub mod pm4;
pub mod queue;
pub mod sdma;
pub mod smi;
mod svm_nodes;
pub mod topology;

use crate::attr::{GpuId, Location};
use crate::svm::Svm;
use crate::sys;
use parking_lot::Mutex;
use std::sync::Arc;

pub use events::{EventDescriptor, EventType, MemoryFault, WaitResult};
pub use halt::{ErrorReport, QueueError};
pub use memory::MemFlags;
pub use queue::{QueueKind, QueueResource};
pub use svm_nodes::INVALID_NODEID;
pub use topology::{HeapType, IoLink, MemoryBank, NodeProperties};

/// The KFD ioctl interface version usvm implements (1.17).
pub const KFD_VERSION: (u32, u32) = (1, 17);
/// Emulated GPUs when `USVM_GPUS` is not set.
pub const DEFAULT_KFD_GPUS: usize = 2;
/// VRAM per emulated GPU when `USVM_VRAM` is not set (256 MiB).
pub const DEFAULT_KFD_VRAM: u64 = 256 << 20;
/// Environment variable: the number of emulated GPUs.
pub const ENV_GPUS: &str = "USVM_GPUS";
/// Environment variable: VRAM per GPU, in bytes, or with a K, M or G suffix.
pub const ENV_VRAM: &str = "USVM_VRAM";
/// Environment variable: 1 puts every GPU into one XGMI hive.
pub const ENV_HIVE: &str = "USVM_XGMI_HIVE";
/// Environment variable: the XNACK mode a new process starts with (0 or 1).
pub const ENV_XNACK: &str = "USVM_XNACK";

/// Why a KFD call failed. The C library turns each into its `HSAKMT_STATUS`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KfdError {
    /// The KFD is not open in this process (or was opened by the parent before a fork).
    #[error("the KFD is not open in this process")]
    NotOpen,
    /// An argument is invalid.
    #[error("invalid parameter: {0}")]
    InvalidParameter(&'static str),
    /// A node id that does not exist, or a node that cannot do what was asked.
    #[error("node {0} does not exist or cannot do this")]
    InvalidNode(u32),
    /// An id or handle that names nothing.
    #[error("no such object: {0}")]
    InvalidHandle(&'static str),
    /// Memory (or VRAM) is exhausted.
    #[error("out of memory")]
    NoMemory,
    /// Memory that is not a KFD buffer.
    #[error("memory at {0:#x} is not registered")]
    NotRegistered(usize),
    /// Memory that already is a KFD buffer.
    #[error("memory at {0:#x} is already registered")]
    AlreadyRegistered(usize),
    /// A wait ran out of time.
    #[error("timed out")]
    Timeout,
    /// The emulation does not do this.
    #[error("not supported: {0}")]
    NotSupported(&'static str),
    /// The underlying (kernel) call failed with this errno.
    #[error("{0}")]
    Sys(#[from] crate::Error),
}

impl KfdError {
    /// The Linux errno of a failed underlying call (what libhsakmt leaves in `errno`).
    pub fn errno(&self) -> i32 {
        match self {
            KfdError::Sys(e) => e.errno(),
            KfdError::NoMemory => libc::ENOMEM,
            KfdError::Timeout => libc::ETIME,
            KfdError::NotOpen => libc::EBADF,
            KfdError::InvalidNode(_) => libc::ENODEV,
            _ => libc::EINVAL,
        }
    }
}

/// Shorthand for results of this module.
pub type KfdResult<T> = std::result::Result<T, KfdError>;

/// How the process's emulated KFD is built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KfdConfig {
    /// Emulated GPUs.
    pub gpus: usize,
    /// VRAM per GPU, bytes.
    pub vram_bytes: u64,
    /// All GPUs in one XGMI hive.
    pub xgmi_hive: bool,
    /// XNACK (GPU retry faults) at open.
    pub xnack: bool,
}

impl Default for KfdConfig {
    fn default() -> Self {
        KfdConfig { gpus: DEFAULT_KFD_GPUS, vram_bytes: DEFAULT_KFD_VRAM, xgmi_hive: false, xnack: false }
    }
}

impl KfdConfig {
    /// The defaults, changed by `USVM_GPUS`, `USVM_VRAM`, `USVM_XGMI_HIVE` and `USVM_XNACK`.
    pub fn from_env() -> KfdResult<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// As [`Self::from_env`], reading variables through `get`.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> KfdResult<Self> {
        let mut c = KfdConfig::default();
        if let Some(v) = get(ENV_GPUS) {
            c.gpus = v.trim().parse().map_err(|_| KfdError::InvalidParameter("USVM_GPUS: not a number"))?;
        }
        if let Some(v) = get(ENV_VRAM) {
            c.vram_bytes = parse_bytes(&v).ok_or(KfdError::InvalidParameter("USVM_VRAM: not a size"))?;
        }
        let flag = |name: &'static str, v: String| match v.trim() {
            "1" | "on" | "true" => Ok(true),
            "0" | "off" | "false" | "" => Ok(false),
            _ => Err(KfdError::InvalidParameter(name)),
        };
        if let Some(v) = get(ENV_HIVE) {
            c.xgmi_hive = flag("USVM_XGMI_HIVE: 0 or 1", v)?;
        }
        if let Some(v) = get(ENV_XNACK) {
            c.xnack = flag("USVM_XNACK: 0 or 1", v)?;
        }
        Ok(c)
    }
}

/// `"256M"`, `"1G"`, `"4096"` -> bytes.
fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mul) = match s.chars().last()? {
        'k' | 'K' => (&s[..s.len() - 1], 1u64 << 10),
        'm' | 'M' => (&s[..s.len() - 1], 1 << 20),
        'g' | 'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mul)
}

/// The process's emulated KFD: an SVM instance and everything libhsakmt adds around it.
#[derive(Debug)]
pub struct Kfd {
    svm: Svm,
    config: KfdConfig,
    nodes: Vec<NodeProperties>,
    memory: memory::Memory,
    events: Arc<events::Events>,
    queues: queue::Queues,
}

impl Kfd {
    /// Builds a KFD with `config` (independent of the process-wide one: tests use this).
    pub fn new(config: KfdConfig) -> KfdResult<Arc<Kfd>> {
        let svm = Svm::builder()
            .gpus(config.gpus)
            .vram_bytes(config.vram_bytes)
            .xgmi_hive(config.xgmi_hive)
            .xnack(config.xnack)
            .build()?;
        let nodes = topology::build(&svm, &config);
        let events = Arc::new(events::Events::new()?);
        let memory = memory::Memory::default();
        let k = Kfd { svm, config, nodes, memory, events, queues: queue::Queues::default() };
        // The event page is GPU memory every GPU writes FENCE values to.
        let (page, len) = k.events.page();
        k.memory.adopt_system(&k.svm, page, len)?;
        Ok(Arc::new(k))
    }

    /// The SVM instance behind it (its GPUs are the GPU nodes, in order).
    pub fn svm(&self) -> &Svm {
        &self.svm
    }

    /// How it was built.
    pub fn config(&self) -> &KfdConfig {
        &self.config
    }

    /// Every node: 0 the CPU, then one per GPU.
    pub fn nodes(&self) -> &[NodeProperties] {
        &self.nodes
    }

    /// One node's properties.
    pub fn node(&self, node: u32) -> KfdResult<&NodeProperties> {
        self.nodes.get(node as usize).ok_or(KfdError::InvalidNode(node))
    }

    /// The GPU of a GPU node (`InvalidNode` for the CPU node or an unknown one).
    pub fn gpu_of_node(&self, node: u32) -> KfdResult<GpuId> {
        match self.node(node)?.gpu_id {
            0 => Err(KfdError::InvalidNode(node)),
            id => Ok(GpuId(id)),
        }
    }

    /// The node of a GPU id.
    pub fn node_of_gpu(&self, g: GpuId) -> Option<u32> {
        self.nodes.iter().position(|n| n.gpu_id == g.0 && g.0 != 0).map(|i| i as u32)
    }

    /// A node id as an SVM location: any CPU node is system memory, `0xffffffff` undefined.
    pub fn location_of_node(&self, node: u32) -> KfdResult<Location> {
        if node == crate::uapi::KFD_IOCTL_SVM_LOCATION_UNDEFINED {
            return Ok(Location::Undefined);
        }
        let n = self.node(node)?;
        Ok(if n.gpu_id == 0 { Location::Sysmem } else { Location::Gpu(GpuId(n.gpu_id)) })
    }

    /// The KFD events of this process.
    pub fn events(&self) -> &Arc<events::Events> {
        &self.events
    }

    /// KFD memory (AllocMemory, RegisterMemory, mapping to GPUs).
    pub fn memory(&self) -> &memory::Memory {
        &self.memory
    }

    /// Queues (SDMA queues that execute packets; compute queues that only exist).
    pub fn queues(&self) -> &queue::Queues {
        &self.queues
    }

    /// Opens an SMI event file for the GPU of `node` (`hsaKmtOpenSMI`): a descriptor the
    /// caller owns.
    pub fn open_smi(&self, node: u32) -> KfdResult<i32> {
        let g = self.gpu_of_node(node)?;
        smi::open(&self.svm, g)
    }

    /// The GPU index of a GPU node; `InvalidNode` otherwise.
    pub fn gpu_index(&self, node: u32) -> KfdResult<usize> {
        let g = self.gpu_of_node(node)?;
        self.svm.gpu_ids().iter().position(|&x| x == g).ok_or(KfdError::InvalidNode(node))
    }

    /// `hsaKmtAllocMemory` on `node`: system memory (the CPU node, or a GPU node without
    /// `NON_PAGED`) or VRAM of the node's GPU.
    pub fn alloc_memory(&self, node: u32, size: u64, flags: MemFlags) -> KfdResult<usize> {
        let gpu = if self.node(node)?.is_gpu() { Some(self.gpu_index(node)?) } else { None };
        self.memory.alloc(&self.svm, gpu, size, flags)
    }

    /// `hsaKmtFreeMemory`.
    pub fn free_memory(&self, addr: usize) -> KfdResult<()> {
        self.memory.free(&self.svm, addr)
    }

    /// `hsaKmtMapMemoryToGPUNodes` (`Some(nodes)`, GPU nodes) or `hsaKmtMapMemoryToGPU`
    /// (`None`: VRAM on its own GPU, system memory on every GPU).
    pub fn map_memory(&self, addr: usize, nodes: Option<&[u32]>) -> KfdResult<()> {
        let gpus: Vec<usize> = match nodes {
            Some(n) => n.iter().map(|&n| self.gpu_index(n)).collect::<KfdResult<_>>()?,
            None => {
                let info = self.memory.lookup(addr).ok_or(KfdError::NotRegistered(addr))?;
                match info.vram_gpu {
                    Some(g) => vec![g],
                    None => (0..self.svm.gpu_ids().len()).collect(),
                }
            }
        };
        self.memory.map(&self.svm, addr, &gpus)
    }

    /// `hsaKmtUnmapMemoryToGPU`.
    pub fn unmap_memory(&self, addr: usize) -> KfdResult<()> {
        self.memory.unmap(&self.svm, addr)
    }

    /// `hsaKmtRegisterMemory`.
    pub fn register_memory(&self, addr: usize, size: u64) -> KfdResult<()> {
        self.memory.register(&self.svm, addr, size)
    }

    /// `hsaKmtDeregisterMemory`.
    pub fn deregister_memory(&self, addr: usize) -> KfdResult<()> {
        self.memory.deregister(&self.svm, addr)
    }

    /// `hsaKmtCreateQueue` on GPU node `node`.
    pub fn create_queue(
        &self,
        node: u32,
        kind: QueueKind,
        ring: usize,
        ring_bytes: u64,
    ) -> KfdResult<QueueResource> {
        self.create_queue_reporting(node, kind, ring, ring_bytes, ErrorReport::default())
    }

    /// `hsaKmtCreateQueue` with an event and an error-reason word that learn when the queue
    /// halts.
    pub fn create_queue_reporting(
        &self,
        node: u32,
        kind: QueueKind,
        ring: usize,
        ring_bytes: u64,
        report: ErrorReport,
    ) -> KfdResult<QueueResource> {
        let gpu = self.gpu_index(node)?;
        self.queues.create(&self.svm, &self.events, (gpu, node), kind, (ring, ring_bytes), report)
    }

    /// `hsaKmtDestroyQueue`.
    pub fn destroy_queue(&self, id: u64) -> KfdResult<()> {
        self.queues.destroy(&self.svm, id)
    }

    fn teardown(&self) {
        self.queues.destroy_all(&self.svm);
        self.memory.release_all(&self.svm);
    }
}

/// The process-wide KFD (what `/dev/kfd` is to a process).
struct Process {
    refs: u32,
    /// `sys::fork_generation()` when it was opened: a child of a fork holds the parent's.
    generation: u64,
    kfd: Arc<Kfd>,
}

static PROCESS: Mutex<Option<Process>> = Mutex::new(None);

/// What [`open`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opened {
    /// The first open in this process: a new KFD.
    First,
    /// Already open: the count went up (`HSAKMT_STATUS_KERNEL_ALREADY_OPENED`).
    Again,
}

/// `hsaKmtOpenKFD` with the configuration from the environment.
pub fn open() -> KfdResult<Opened> {
    let mut p = PROCESS.lock();
    if let Some(pr) = p.as_mut()
        && pr.generation == sys::fork_generation()
    {
        pr.refs += 1;
        return Ok(Opened::Again);
    }
    drop(p);
    open_with(KfdConfig::from_env()?)
}

/// `hsaKmtOpenKFD` with an explicit configuration (when none is open yet; otherwise the
/// count goes up and `config` is ignored).
pub fn open_with(config: KfdConfig) -> KfdResult<Opened> {
    let mut p = PROCESS.lock();
    if let Some(pr) = p.as_mut() {
        if pr.generation == sys::fork_generation() {
            pr.refs += 1;
            return Ok(Opened::Again);
        }
        // Inherited from the parent through fork: none of its threads exist here, and its
        // descriptors still act on the parent. Leave it alone, never drop it.
        std::mem::forget(p.take());
    }
    let kfd = Kfd::new(config)?;
    *p = Some(Process { refs: 1, generation: sys::fork_generation(), kfd });
    Ok(Opened::First)
}

/// `hsaKmtCloseKFD`: the count goes down; at zero the KFD is torn down (queues destroyed,
/// memory freed, SVM data back in RAM). In a child of a fork, closing what the parent
/// opened only forgets it. `NotOpen` when nothing is open.
pub fn close() -> KfdResult<()> {
    let mut p = PROCESS.lock();
    let pr = p.as_mut().ok_or(KfdError::NotOpen)?;
    pr.refs -= 1;
    if pr.refs > 0 {
        return Ok(());
    }
    let pr = p.take().expect("checked");
    drop(p);
    if pr.generation != sys::fork_generation() {
        std::mem::forget(pr);
        return Ok(());
    }
    pr.kfd.teardown();
    drop(pr);
    Ok(())
}

/// The open KFD of this process. `NotOpen` when none is open, or in a child of a fork that
/// has not opened its own.
pub fn current() -> KfdResult<Arc<Kfd>> {
    let p = PROCESS.lock();
    match p.as_ref() {
        Some(pr) if pr.generation == sys::fork_generation() => Ok(pr.kfd.clone()),
        _ => Err(KfdError::NotOpen),
    }
}

/// Whether a KFD was opened in this process or inherited (for calls that succeed either way,
/// such as `hsaKmtReleaseSystemProperties`).
pub fn is_open_or_inherited() -> bool {
    PROCESS.lock().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_from_variables() {
        let c = KfdConfig::from_lookup(|_| None).unwrap();
        assert_eq!(c, KfdConfig::default());
        assert_eq!((c.gpus, c.vram_bytes), (2, 256 << 20));
        let vars = [("USVM_GPUS", "3"), ("USVM_VRAM", "64M"), ("USVM_XGMI_HIVE", "1"), ("USVM_XNACK", "on")];
        let get = |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        let c = KfdConfig::from_lookup(get).unwrap();
        assert_eq!(c, KfdConfig { gpus: 3, vram_bytes: 64 << 20, xgmi_hive: true, xnack: true });
        assert!(KfdConfig::from_lookup(|k| (k == "USVM_VRAM").then(|| "lots".into())).is_err());
        assert!(KfdConfig::from_lookup(|k| (k == "USVM_XNACK").then(|| "2".into())).is_err());
        assert_eq!(parse_bytes("1g"), Some(1 << 30));
        assert_eq!(parse_bytes("4096"), Some(4096));
        assert_eq!(parse_bytes(""), None);
    }
}
