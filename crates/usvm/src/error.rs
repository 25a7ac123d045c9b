//! The error type of every public call, each variant with the Linux errno the kernel would
//! return for the same call (see kfd-svm-semantics.md section 1.7).

/// An error from usvm. [`Error::errno`] gives the errno KFD returns in the same situation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The start address or size is zero, not 4 KiB aligned, or `start + size` overflows.
    #[error(
        "invalid interval: start {start:#x}, size {size:#x} (must be non-zero, 4 KiB aligned, no overflow)"
    )]
    BadInterval {
        /// Start address in bytes.
        start: u64,
        /// Size in bytes.
        size: u64,
    },
    /// The ioctl operation is neither SET_ATTR nor GET_ATTR.
    #[error("unknown SVM operation {0}")]
    UnknownOp(u32),
    /// The attribute type is not one of `KFD_IOCTL_SVM_ATTR_*`.
    #[error("unknown SVM attribute type {0}")]
    UnknownAttrType(u32),
    /// An attribute names a GPU id that does not belong to this instance.
    #[error("unknown GPU id {0:#x}")]
    UnknownGpu(u32),
    /// PREFETCH_LOC cannot be UNDEFINED.
    #[error("PREFETCH_LOC cannot be UNDEFINED")]
    UndefinedPrefetch,
    /// ACCESS_IN_PLACE and NO_ACCESS are not query types for GET_ATTR.
    #[error("attribute type {0} cannot be queried; query ACCESS instead")]
    BadQueryType(u32),
    /// Part of the interval is not covered by a mapping of the process.
    #[error("address {addr:#x} is not mapped")]
    NotMapped {
        /// The first byte address found without a mapping.
        addr: u64,
    },
    /// The interval touches a device (I/O, PFN-map) mapping, which cannot hold SVM ranges.
    #[error("address {addr:#x} lies in a device mapping ({name})")]
    DeviceMapping {
        /// Start of the offending mapping.
        addr: u64,
        /// What the mapping is.
        name: String,
    },
    /// The interval overlaps ranges managed by another usvm instance of this process.
    #[error("address {addr:#x} belongs to another usvm instance")]
    AddressInUse {
        /// The first byte address that is taken.
        addr: u64,
    },
    /// The operation needs the device idle (for example, switching XNACK with queues present).
    #[error("busy: {0}")]
    Busy(&'static str),
    /// A builder setting is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The VRAM accounting limit of a GPU would be exceeded.
    #[error("GPU {gpu}: cannot reserve {bytes} bytes of VRAM (accounting limit)")]
    NoVramSpace {
        /// GPU index.
        gpu: usize,
        /// Bytes asked for.
        bytes: u64,
    },
    /// VRAM could not be allocated, even after evicting what could be evicted.
    #[error("GPU {gpu}: out of VRAM allocating {npages} pages")]
    NoVram {
        /// GPU index.
        gpu: usize,
        /// Pages asked for.
        npages: u64,
    },
    /// A copy-engine chunk failed; the pages of that chunk and later ones did not arrive.
    #[error("GPU {gpu}: copy engine failure")]
    CopyFailed {
        /// GPU index.
        gpu: usize,
    },
    /// A wait timed out.
    #[error("timed out")]
    Timeout,
    /// A fatal GPU VM fault: no mapping (XNACK off, no access, no VMA) or a write through
    /// a read-only mapping.
    #[error("GPU {gpu:#x}: fatal VM fault at {addr:#x} ({})", if *write { "write" } else { "read" })]
    GpuVmFault {
        /// The GPU id.
        gpu: u32,
        /// The faulting byte address.
        addr: u64,
        /// A write access.
        write: bool,
    },
    /// A device kernel panicked.
    #[error("device kernel panicked: {0}")]
    KernelPanic(String),
    /// The queue no longer accepts work.
    #[error("queue is gone")]
    QueueGone,
    /// The system-memory limit of SVM ranges (XNACK off) would be exceeded.
    #[error("cannot reserve {bytes} bytes of system memory for new ranges (limit reached)")]
    NoMemory {
        /// Bytes asked for.
        bytes: u64,
    },
    /// VRAM -> VRAM could not empty the source GPU (section 4.7).
    #[error("could not move the range out of its GPU's VRAM")]
    Deadlock,
    /// A system call failed.
    #[error("{call} failed: {}", std::io::Error::from_raw_os_error(*errno))]
    Sys {
        /// The system call.
        call: &'static str,
        /// Its errno.
        errno: i32,
    },
}

impl Error {
    /// The Linux errno the kernel returns for the same call (`libc::EINVAL`, `libc::EFAULT`, ...).
    pub fn errno(&self) -> i32 {
        match self {
            Error::BadInterval { .. }
            | Error::UnknownOp(_)
            | Error::UnknownAttrType(_)
            | Error::UnknownGpu(_)
            | Error::UndefinedPrefetch
            | Error::BadQueryType(_)
            | Error::InvalidConfig(_) => libc::EINVAL,
            Error::NotMapped { .. } | Error::DeviceMapping { .. } => libc::EFAULT,
            Error::AddressInUse { .. } => libc::EADDRINUSE,
            Error::Busy(_) => libc::EBUSY,
            Error::NoVramSpace { .. } => libc::ENOSPC,
            Error::NoVram { .. } => libc::ENOMEM,
            Error::CopyFailed { .. } => libc::EIO,
            Error::Timeout => libc::ETIME,
            Error::GpuVmFault { .. } => libc::EFAULT,
            Error::KernelPanic(_) => libc::EIO,
            Error::QueueGone => libc::ENODEV,
            Error::Deadlock => libc::EDEADLK,
            Error::NoMemory { .. } => libc::ENOMEM,
            Error::Sys { errno, .. } => *errno,
        }
    }
}

/// Shorthand for results of usvm calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;
