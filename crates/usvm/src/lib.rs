//! # usvm: shared virtual memory between CPUs and GPUs, in user space
//!
//! usvm re-implements the Linux AMD KFD SVM subsystem (HMM-based shared virtual memory,
//! "drm/amdkfd: HMM migrate ram to vram") as a Rust library. Applications register ranges
//! of their ordinary memory and give them attributes through [`Svm::set_attr`] /
//! [`Svm::get_attr`] (or the raw [`Svm::svm_ioctl`]) with the kernel's exact semantics.
//!
//! ```
//! use usvm::{Attr, Location, Svm};
//! let svm = Svm::builder().gpus(2).vram_bytes(256 << 20).build()?;
//! let g = svm.gpu_ids()[0];
//! let buf = svm.alloc(4 << 20)?;
//! svm.set_attr(buf.addr(), buf.len(), &[Attr::Access(g), Attr::PreferredLoc(Location::Gpu(g))])?;
//! let mut q = [Attr::PreferredLoc(Location::Undefined), Attr::Access(g)];
//! svm.get_attr(buf.addr(), buf.len(), &mut q)?;
//! assert_eq!(q, [Attr::PreferredLoc(Location::Gpu(g)), Attr::Access(g)]);
//! # Ok::<(), usvm::Error>(())
//! ```
//!
//! Read `docs/DESIGN.md` for the architecture.

#![deny(clippy::undocumented_unsafe_blocks)]

mod addr;
mod attr;
pub mod bench;
mod buffer;
pub mod doctor;
mod error;
mod events;
mod fault;
mod gpu;
pub mod history;
mod instance;
pub mod kfd;
mod map;
mod migrate;
mod policy;
mod range;
mod svm;
mod sys;
pub mod uapi;

pub use attr::{Attr, GpuId, Location, Residency, SvmFlags};
pub use buffer::SvmBuffer;
pub use error::{Error, Result};
pub use events::{
    Counters, Event, EventKind, EventStream, EvictTrigger, MigrateTrigger, UnmapTrigger, clock_ns,
};
pub use gpu::fence::Fence;
pub use gpu::isa::{DispatchStats, IsaError, Launch, shaders};
pub use gpu::queue::{KernelCtx, Queue};
pub use history::{Cause, Finding, FindingKind, Move};
pub use policy::{AdaptiveTunables, Policy};
pub use svm::{
    ALLOC_ALIGN, DEFAULT_GPUS, DEFAULT_GRANULARITY, DEFAULT_VRAM_BYTES, GpuSnapshot, InjectUffd, MAX_GPUS,
    RangeInfo, Svm, SvmBuilder,
};
pub use uapi::RawAttr;
