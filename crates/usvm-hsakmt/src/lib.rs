//! `libhsakmt.so` on usvm: the SVM subset of ROCm's thunk (and what AMD's kfdtest SVM tests
//! use around it) over the emulated GPUs of [`usvm::kfd`], with libhsakmt's exact ABI:
//! the header in `include/hsakmt/`, the struct layouts of `hsakmttypes.h`, its statuses.
//!
//! Every entry point checks its pointers, never lets a panic or a Rust error cross into C,
//! and returns the status libhsakmt would (`HSAKMT_STATUS_ERROR` with the kernel's errno in
//! `errno` when the underlying call fails). This crate only translates ids, structs and
//! statuses; the work is in `usvm::kfd`. The functions of `hsakmt.h` usvm does not
//! implement are exported too (`stubs`) and return `HSAKMT_STATUS_NOT_SUPPORTED`.

mod events;
mod memory;
mod queues;
mod stubs;
mod svm;
mod topology;
pub mod types;

pub use events::*;
pub use memory::*;
pub use queues::*;
pub use svm::*;
pub use topology::*;

use std::panic::{AssertUnwindSafe, catch_unwind};
use types::*;
use usvm::kfd::KfdError;

type Res<T> = Result<T, KfdError>;

/// libhsakmt's status for an error (and the errno it leaves).
pub fn status_of(e: &KfdError) -> HSAKMT_STATUS {
    match e {
        KfdError::NotOpen => HSAKMT_STATUS_KERNEL_IO_CHANNEL_NOT_OPENED,
        KfdError::InvalidParameter(_) => HSAKMT_STATUS_INVALID_PARAMETER,
        KfdError::InvalidNode(_) => HSAKMT_STATUS_INVALID_NODE_UNIT,
        KfdError::InvalidHandle(_) => HSAKMT_STATUS_INVALID_HANDLE,
        KfdError::NoMemory => HSAKMT_STATUS_NO_MEMORY,
        KfdError::NotRegistered(_) => HSAKMT_STATUS_MEMORY_NOT_REGISTERED,
        KfdError::AlreadyRegistered(_) => HSAKMT_STATUS_MEMORY_ALREADY_REGISTERED,
        KfdError::Timeout => HSAKMT_STATUS_WAIT_TIMEOUT,
        KfdError::NotSupported(_) => HSAKMT_STATUS_NOT_SUPPORTED,
        KfdError::Sys(_) => HSAKMT_STATUS_ERROR,
    }
}

fn set_errno(v: i32) {
    // SAFETY: __errno_location returns this thread's errno, always valid to write.
    unsafe { *libc::__errno_location() = v };
}

/// Runs an entry point's body: errors become statuses (ERROR sets `errno`), panics become
/// `HSAKMT_STATUS_ERROR`; nothing unwinds into C.
fn guard(f: impl FnOnce() -> Res<HSAKMT_STATUS>) -> HSAKMT_STATUS {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            if let KfdError::Sys(_) = e {
                set_errno(e.errno());
            }
            status_of(&e)
        }
        Err(_) => {
            set_errno(libc::EIO);
            HSAKMT_STATUS_ERROR
        }
    }
}

/// As [`guard`], for bodies that return nothing but success.
fn entry(f: impl FnOnce() -> Res<()>) -> HSAKMT_STATUS {
    guard(|| f().map(|()| HSAKMT_STATUS_SUCCESS))
}

/// Writes `v` through the caller's pointer; `InvalidParameter` when it is null.
fn put<T>(p: *mut T, v: T) -> Res<()> {
    if p.is_null() {
        return Err(KfdError::InvalidParameter("null output pointer"));
    }
    // SAFETY: the caller passes a pointer to writable memory for one `T` (the function's
    // contract in hsakmt.h); it may be unaligned (packed structs), hence write_unaligned.
    unsafe { p.write_unaligned(v) };
    Ok(())
}

/// Reads `*p`; `InvalidParameter` when it is null.
fn get<T>(p: *const T) -> Res<T> {
    if p.is_null() {
        return Err(KfdError::InvalidParameter("null input pointer"));
    }
    // SAFETY: the caller passes a pointer to one readable `T` (hsakmt.h's contract).
    Ok(unsafe { p.read_unaligned() })
}

/// The caller's array of `n` `T`s as a slice (empty when `n` is 0).
fn slice<'a, T>(p: *const T, n: usize) -> Res<&'a [T]> {
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() || !(p as usize).is_multiple_of(std::mem::align_of::<T>()) {
        return Err(KfdError::InvalidParameter("null or misaligned array"));
    }
    // SAFETY: the caller passes `n` readable, initialized `T`s at `p` (hsakmt.h's contract),
    // aligned as checked above, alive for the call.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// The caller's array of `n` `T`s, writable.
fn slice_mut<'a, T>(p: *mut T, n: usize) -> Res<&'a mut [T]> {
    if n == 0 {
        return Ok(&mut []);
    }
    if p.is_null() || !(p as usize).is_multiple_of(std::mem::align_of::<T>()) {
        return Err(KfdError::InvalidParameter("null or misaligned array"));
    }
    // SAFETY: as in `slice`, and the memory is writable and not aliased during the call.
    Ok(unsafe { std::slice::from_raw_parts_mut(p, n) })
}
