//! Attribute value types: GPU ids, locations, flags and the [`Attr`] list entries of
//! SET_ATTR / GET_ATTR, with their conversions to and from the raw KFD encoding.

use crate::error::Error;
use crate::uapi::{self, RawAttr};
use std::fmt;

/// A GPU as user space names it: the KFD topology `gpu_id`.
///
/// Valid ids are never 0 (that is [`Location::Sysmem`]) and never `0xffffffff`
/// ([`Location::Undefined`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GpuId(pub u32);

impl fmt::Display for GpuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// Where the data of a range lives or should live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Location {
    /// System memory (`KFD_IOCTL_SVM_LOCATION_SYSMEM`, 0).
    Sysmem,
    /// No location (`KFD_IOCTL_SVM_LOCATION_UNDEFINED`, `0xffffffff`).
    Undefined,
    /// The VRAM of a GPU.
    Gpu(GpuId),
}

impl Location {
    /// The KFD encoding: 0, `0xffffffff` or the GPU id.
    pub const fn to_raw(self) -> u32 {
        match self {
            Location::Sysmem => uapi::KFD_IOCTL_SVM_LOCATION_SYSMEM,
            Location::Undefined => uapi::KFD_IOCTL_SVM_LOCATION_UNDEFINED,
            Location::Gpu(g) => g.0,
        }
    }

    /// Decodes a KFD location value. Any value other than 0 and `0xffffffff` is a GPU id.
    pub const fn from_raw(v: u32) -> Self {
        match v {
            uapi::KFD_IOCTL_SVM_LOCATION_SYSMEM => Location::Sysmem,
            uapi::KFD_IOCTL_SVM_LOCATION_UNDEFINED => Location::Undefined,
            g => Location::Gpu(GpuId(g)),
        }
    }

    /// The GPU, if this location is one.
    pub const fn gpu(self) -> Option<GpuId> {
        match self {
            Location::Gpu(g) => Some(g),
            _ => None,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Sysmem => f.write_str("sysmem"),
            Location::Undefined => f.write_str("undefined"),
            Location::Gpu(g) => write!(f, "gpu {g}"),
        }
    }
}

bitflags::bitflags! {
    /// Range flags (`KFD_IOCTL_SVM_FLAG_*`). Unknown bits are kept as given, as the kernel does.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct SvmFlags: u32 {
        /// Default on; stored and reported only.
        const HOST_ACCESS = uapi::KFD_IOCTL_SVM_FLAG_HOST_ACCESS;
        /// Default on; coherent GPU mappings.
        const COHERENT = uapi::KFD_IOCTL_SVM_FLAG_COHERENT;
        /// Stored and reported only.
        const HIVE_LOCAL = uapi::KFD_IOCTL_SVM_FLAG_HIVE_LOCAL;
        /// GPU mappings are created without write permission.
        const GPU_RO = uapi::KFD_IOCTL_SVM_FLAG_GPU_RO;
        /// GPU mappings are created executable.
        const GPU_EXEC = uapi::KFD_IOCTL_SVM_FLAG_GPU_EXEC;
        /// Stored and reported only.
        const GPU_READ_MOSTLY = uapi::KFD_IOCTL_SVM_FLAG_GPU_READ_MOSTLY;
        /// The range behaves as if XNACK were off.
        const GPU_ALWAYS_MAPPED = uapi::KFD_IOCTL_SVM_FLAG_GPU_ALWAYS_MAPPED;
        /// Extended coherence; implies coherent.
        const EXT_COHERENT = uapi::KFD_IOCTL_SVM_FLAG_EXT_COHERENT;
        // Any other bit is accepted and stored, as KFD does.
        const _ = !0;
    }
}

impl SvmFlags {
    /// The flags of a new range: `HOST_ACCESS | COHERENT` (0x3).
    pub const DEFAULT: SvmFlags = SvmFlags::HOST_ACCESS.union(SvmFlags::COHERENT);
}

/// One entry of a SET_ATTR list or GET_ATTR query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Attr {
    /// Where the data should live (consulted by GPU faults; migrates on change, as the seed says).
    PreferredLoc(Location),
    /// Migrate the range to this location now. `Undefined` is rejected on SET.
    PrefetchLoc(Location),
    /// The GPU may access the range, and the range may migrate to it.
    Access(GpuId),
    /// The GPU may access the range where it is, without migrating it.
    AccessInPlace(GpuId),
    /// The GPU may not access the range.
    NoAccess(GpuId),
    /// Bits ORed into the flags (SET) / the AND of the flags over the interval (GET).
    SetFlags(SvmFlags),
    /// Bits cleared from the flags (SET) / the NOT of the OR of the flags (GET).
    ClrFlags(SvmFlags),
    /// log2 of the granule in pages; stored as `min(value, 63)`.
    Granularity(u32),
}

impl Attr {
    /// The KFD encoding of this attribute.
    pub const fn to_raw(self) -> RawAttr {
        use uapi::*;
        match self {
            Attr::PreferredLoc(l) => RawAttr::new(KFD_IOCTL_SVM_ATTR_PREFERRED_LOC, l.to_raw()),
            Attr::PrefetchLoc(l) => RawAttr::new(KFD_IOCTL_SVM_ATTR_PREFETCH_LOC, l.to_raw()),
            Attr::Access(g) => RawAttr::new(KFD_IOCTL_SVM_ATTR_ACCESS, g.0),
            Attr::AccessInPlace(g) => RawAttr::new(KFD_IOCTL_SVM_ATTR_ACCESS_IN_PLACE, g.0),
            Attr::NoAccess(g) => RawAttr::new(KFD_IOCTL_SVM_ATTR_NO_ACCESS, g.0),
            Attr::SetFlags(f) => RawAttr::new(KFD_IOCTL_SVM_ATTR_SET_FLAGS, f.bits()),
            Attr::ClrFlags(f) => RawAttr::new(KFD_IOCTL_SVM_ATTR_CLR_FLAGS, f.bits()),
            Attr::Granularity(g) => RawAttr::new(KFD_IOCTL_SVM_ATTR_GRANULARITY, g),
        }
    }

    /// Decodes a raw attribute. An unknown type is `EINVAL`.
    pub fn from_raw(raw: RawAttr) -> Result<Self, Error> {
        use uapi::*;
        Ok(match raw.ty {
            KFD_IOCTL_SVM_ATTR_PREFERRED_LOC => Attr::PreferredLoc(Location::from_raw(raw.value)),
            KFD_IOCTL_SVM_ATTR_PREFETCH_LOC => Attr::PrefetchLoc(Location::from_raw(raw.value)),
            KFD_IOCTL_SVM_ATTR_ACCESS => Attr::Access(GpuId(raw.value)),
            KFD_IOCTL_SVM_ATTR_ACCESS_IN_PLACE => Attr::AccessInPlace(GpuId(raw.value)),
            KFD_IOCTL_SVM_ATTR_NO_ACCESS => Attr::NoAccess(GpuId(raw.value)),
            KFD_IOCTL_SVM_ATTR_SET_FLAGS => Attr::SetFlags(SvmFlags::from_bits_retain(raw.value)),
            KFD_IOCTL_SVM_ATTR_CLR_FLAGS => Attr::ClrFlags(SvmFlags::from_bits_retain(raw.value)),
            KFD_IOCTL_SVM_ATTR_GRANULARITY => Attr::Granularity(raw.value),
            ty => return Err(Error::UnknownAttrType(ty)),
        })
    }
}

impl From<Attr> for RawAttr {
    fn from(a: Attr) -> Self {
        a.to_raw()
    }
}

impl TryFrom<RawAttr> for Attr {
    type Error = Error;
    fn try_from(raw: RawAttr) -> Result<Self, Error> {
        Attr::from_raw(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_round_trip() {
        let g = GpuId(0x1111);
        let all = [
            Attr::PreferredLoc(Location::Undefined),
            Attr::PreferredLoc(Location::Sysmem),
            Attr::PrefetchLoc(Location::Gpu(g)),
            Attr::Access(g),
            Attr::AccessInPlace(g),
            Attr::NoAccess(g),
            Attr::SetFlags(SvmFlags::from_bits_retain(0x8000_0008)),
            Attr::ClrFlags(SvmFlags::GPU_EXEC),
            Attr::Granularity(u32::MAX),
        ];
        for (i, a) in all.into_iter().enumerate() {
            let raw = a.to_raw();
            assert_eq!(Attr::from_raw(raw).unwrap(), a, "entry {i}");
        }
        assert_eq!(Attr::from_raw(RawAttr::new(8, 0)).unwrap_err().errno(), libc::EINVAL);
    }

    #[test]
    fn location_encoding() {
        assert_eq!(Location::from_raw(0), Location::Sysmem);
        assert_eq!(Location::from_raw(0xffff_ffff), Location::Undefined);
        assert_eq!(Location::from_raw(7), Location::Gpu(GpuId(7)));
        assert_eq!(Location::Gpu(GpuId(0x2222)).to_raw(), 0x2222);
        assert_eq!(SvmFlags::DEFAULT.bits(), 0x3);
    }
}

/// Where one page's data is ([`crate::Svm::residency`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Residency {
    /// In no memory yet (never touched, or dropped).
    Unpopulated,
    /// In system memory.
    Sysmem,
    /// In the VRAM of this GPU.
    Vram(GpuId),
}
