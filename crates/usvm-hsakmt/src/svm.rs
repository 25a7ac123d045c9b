//! SVM attributes (by node id) and the XNACK mode.

use crate::types::*;
use crate::{Res, entry, put, slice, slice_mut};
use usvm::RawAttr;
use usvm::kfd::{self};

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
