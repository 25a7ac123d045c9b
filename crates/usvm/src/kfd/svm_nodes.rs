//! SVM through node ids, as libhsakmt's `hsaKmtSVMSetAttr` / `hsaKmtSVMGetAttr` do it on
//! top of the kernel's SVM ioctl: the location and access attributes carry *node ids*,
//! which are translated to gpu ids on the way in (a CPU node is system memory) and back on
//! the way out. The checks libhsakmt makes before the ioctl come first, with its statuses.

use super::{Kfd, KfdError, KfdResult};
use crate::sys::PAGE_SIZE;
use crate::uapi::{self, RawAttr};

/// `INVALID_NODEID`: an undefined location.
pub const INVALID_NODEID: u32 = 0xffff_ffff;

fn is_location(ty: u32) -> bool {
    matches!(ty, uapi::KFD_IOCTL_SVM_ATTR_PREFERRED_LOC | uapi::KFD_IOCTL_SVM_ATTR_PREFETCH_LOC)
}

fn is_access(ty: u32) -> bool {
    matches!(
        ty,
        uapi::KFD_IOCTL_SVM_ATTR_ACCESS
            | uapi::KFD_IOCTL_SVM_ATTR_ACCESS_IN_PLACE
            | uapi::KFD_IOCTL_SVM_ATTR_NO_ACCESS
    )
}

impl Kfd {
    /// The gpu id of `node` (0 for a CPU node); `InvalidNode` beyond the last node.
    fn node_to_gpu_id(&self, node: u32) -> KfdResult<u32> {
        Ok(self.node(node)?.gpu_id)
    }

    /// An access attribute's node, which must be a GPU node.
    fn access_gpu_id(&self, node: u32) -> KfdResult<u32> {
        match self.node_to_gpu_id(node)? {
            0 => Err(KfdError::InvalidNode(node)),
            id => Ok(id),
        }
    }

    /// libhsakmt's entry checks: a null, zero or unaligned start or size.
    fn check_interval(start: u64, size: u64) -> KfdResult<()> {
        let page = PAGE_SIZE as u64;
        if start == 0 || size == 0 || !start.is_multiple_of(page) || !size.is_multiple_of(page) {
            return Err(KfdError::InvalidParameter("start and size must be non-zero and page aligned"));
        }
        Ok(())
    }

    /// `hsaKmtSVMSetAttr`: node ids in PREFERRED_LOC (INVALID_NODEID: undefined),
    /// PREFETCH_LOC, ACCESS, ACCESS_IN_PLACE and NO_ACCESS (GPU nodes only); the other
    /// attributes pass through. A failure of the SVM call itself is `Sys` with its errno.
    pub fn svm_set_attr(&self, start: u64, size: u64, attrs: &[RawAttr]) -> KfdResult<()> {
        Self::check_interval(start, size)?;
        let mut raw = attrs.to_vec();
        for a in raw.iter_mut() {
            if a.ty == uapi::KFD_IOCTL_SVM_ATTR_PREFERRED_LOC && a.value == INVALID_NODEID {
                a.value = uapi::KFD_IOCTL_SVM_LOCATION_UNDEFINED;
            } else if is_location(a.ty) {
                a.value = self.node_to_gpu_id(a.value)?;
            } else if is_access(a.ty) {
                a.value = self.access_gpu_id(a.value)?;
            }
        }
        self.svm.svm_ioctl(uapi::KFD_IOCTL_SVM_OP_SET_ATTR, start, size, &mut raw)?;
        Ok(())
    }

    /// `hsaKmtSVMGetAttr`: ACCESS-type queries name a GPU node; on return, locations and
    /// access answers are node ids again (system memory: node 0; undefined: INVALID_NODEID),
    /// and an ACCESS query reports ACCESS, ACCESS_IN_PLACE or NO_ACCESS in its `ty`.
    pub fn svm_get_attr(&self, start: u64, size: u64, attrs: &mut [RawAttr]) -> KfdResult<()> {
        Self::check_interval(start, size)?;
        let mut raw = attrs.to_vec();
        for a in raw.iter_mut().filter(|a| is_access(a.ty)) {
            a.value = self.access_gpu_id(a.value)?;
        }
        self.svm.svm_ioctl(uapi::KFD_IOCTL_SVM_OP_GET_ATTR, start, size, &mut raw)?;
        for a in raw.iter_mut().filter(|a| is_location(a.ty) || is_access(a.ty)) {
            a.value = match a.value {
                uapi::KFD_IOCTL_SVM_LOCATION_SYSMEM => 0,
                uapi::KFD_IOCTL_SVM_LOCATION_UNDEFINED => INVALID_NODEID,
                id => self
                    .node_of_gpu(crate::GpuId(id))
                    .ok_or(KfdError::InvalidHandle("gpu id without a node"))?,
            };
        }
        attrs.copy_from_slice(&raw);
        Ok(())
    }

    /// `hsaKmtSetXNACKMode`: refused (`Sys(EBUSY)`, libhsakmt's ERROR) while the process
    /// has any queue, even when the mode would not change.
    pub fn set_xnack(&self, on: bool) -> KfdResult<()> {
        self.svm.set_xnack(on)?;
        Ok(())
    }

    /// `hsaKmtGetXNACKMode`.
    pub fn xnack(&self) -> bool {
        self.svm.xnack()
    }
}
