//! The KFD SVM user-space ABI: operation, attribute, location and flag numbers exactly as
//! `include/uapi/linux/kfd_ioctl.h` defines them, and the raw attribute struct.
//!
//! Everything here is a plain `u32`, so C code ported to [`crate::Svm::svm_ioctl`] can use
//! the numbers it already knows.

/// `KFD_IOCTL_SVM_OP_SET_ATTR`: apply an attribute list to every page of an interval.
pub const KFD_IOCTL_SVM_OP_SET_ATTR: u32 = 0;
/// `KFD_IOCTL_SVM_OP_GET_ATTR`: query the aggregated attributes of an interval.
pub const KFD_IOCTL_SVM_OP_GET_ATTR: u32 = 1;

/// `KFD_IOCTL_SVM_ATTR_PREFERRED_LOC`: where the data should live.
pub const KFD_IOCTL_SVM_ATTR_PREFERRED_LOC: u32 = 0;
/// `KFD_IOCTL_SVM_ATTR_PREFETCH_LOC`: migrate now to this location.
pub const KFD_IOCTL_SVM_ATTR_PREFETCH_LOC: u32 = 1;
/// `KFD_IOCTL_SVM_ATTR_ACCESS`: the GPU may access the range, and the range may migrate to it.
pub const KFD_IOCTL_SVM_ATTR_ACCESS: u32 = 2;
/// `KFD_IOCTL_SVM_ATTR_ACCESS_IN_PLACE`: the GPU may access the range where it is.
pub const KFD_IOCTL_SVM_ATTR_ACCESS_IN_PLACE: u32 = 3;
/// `KFD_IOCTL_SVM_ATTR_NO_ACCESS`: the GPU may not access the range.
pub const KFD_IOCTL_SVM_ATTR_NO_ACCESS: u32 = 4;
/// `KFD_IOCTL_SVM_ATTR_SET_FLAGS`: OR bits into the range flags.
pub const KFD_IOCTL_SVM_ATTR_SET_FLAGS: u32 = 5;
/// `KFD_IOCTL_SVM_ATTR_CLR_FLAGS`: clear bits from the range flags.
pub const KFD_IOCTL_SVM_ATTR_CLR_FLAGS: u32 = 6;
/// `KFD_IOCTL_SVM_ATTR_GRANULARITY`: log2 of the migration granule, in pages.
pub const KFD_IOCTL_SVM_ATTR_GRANULARITY: u32 = 7;

/// `KFD_IOCTL_SVM_LOCATION_SYSMEM`: system memory.
pub const KFD_IOCTL_SVM_LOCATION_SYSMEM: u32 = 0;
/// `KFD_IOCTL_SVM_LOCATION_UNDEFINED`: no location.
pub const KFD_IOCTL_SVM_LOCATION_UNDEFINED: u32 = 0xffff_ffff;

/// `KFD_IOCTL_SVM_FLAG_HOST_ACCESS` (default on).
pub const KFD_IOCTL_SVM_FLAG_HOST_ACCESS: u32 = 0x1;
/// `KFD_IOCTL_SVM_FLAG_COHERENT` (default on): coherent GPU mappings.
pub const KFD_IOCTL_SVM_FLAG_COHERENT: u32 = 0x2;
/// `KFD_IOCTL_SVM_FLAG_HIVE_LOCAL`: stored and reported only.
pub const KFD_IOCTL_SVM_FLAG_HIVE_LOCAL: u32 = 0x4;
/// `KFD_IOCTL_SVM_FLAG_GPU_RO`: GPU mappings are read-only.
pub const KFD_IOCTL_SVM_FLAG_GPU_RO: u32 = 0x8;
/// `KFD_IOCTL_SVM_FLAG_GPU_EXEC`: GPU mappings are executable.
pub const KFD_IOCTL_SVM_FLAG_GPU_EXEC: u32 = 0x10;
/// `KFD_IOCTL_SVM_FLAG_GPU_READ_MOSTLY`: stored and reported only.
pub const KFD_IOCTL_SVM_FLAG_GPU_READ_MOSTLY: u32 = 0x20;
/// `KFD_IOCTL_SVM_FLAG_GPU_ALWAYS_MAPPED`: the range behaves as under XNACK off.
pub const KFD_IOCTL_SVM_FLAG_GPU_ALWAYS_MAPPED: u32 = 0x40;
/// `KFD_IOCTL_SVM_FLAG_EXT_COHERENT`: extended coherence (implies coherent).
pub const KFD_IOCTL_SVM_FLAG_EXT_COHERENT: u32 = 0x80;

/// `struct kfd_ioctl_svm_attribute`: one attribute of an SVM ioctl, 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct RawAttr {
    /// Attribute type, one of `KFD_IOCTL_SVM_ATTR_*`. GET_ATTR may rewrite it for ACCESS queries.
    pub ty: u32,
    /// Attribute value: a location, GPU id, flag mask or granularity.
    pub value: u32,
}

impl RawAttr {
    /// An attribute with the given type and value.
    pub const fn new(ty: u32, value: u32) -> Self {
        Self { ty, value }
    }
}
