//! Anonymous private mappings.

use super::{PAGE_SIZE, last_errno};
use crate::error::{Error, Result};

/// Maps `len` bytes (a multiple of the page size) of anonymous private read-write memory
/// whose start is aligned to `align` (a power of two, at least the page size).
/// Returns the start address.
pub fn map_anon_aligned(len: usize, align: usize) -> Result<usize> {
    debug_assert!(len.is_multiple_of(PAGE_SIZE) && len > 0);
    debug_assert!(align.is_power_of_two() && align >= PAGE_SIZE);
    let total = len.checked_add(align - PAGE_SIZE).ok_or(Error::Sys {
        call: "mmap",
        errno: libc::ENOMEM,
    })?;
    // SAFETY: a fresh anonymous mapping at an address the kernel chooses; it cannot alias
    // any memory Rust knows about.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            total,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Error::Sys {
            call: "mmap",
            errno: last_errno(),
        });
    }
    let base = p as usize;
    let start = base.next_multiple_of(align);
    let end = start + len;
    // Trim the slack on both sides so that exactly [start, end) stays mapped.
    unmap(base, start - base)?;
    unmap(end, base + total - end)?;
    Ok(start)
}

/// Unmaps `[addr, addr + len)`. A zero length is a no-op.
pub fn unmap(addr: usize, len: usize) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    // SAFETY: callers pass only mappings they created themselves (through
    // `map_anon_aligned`) and no longer reference; munmap of such an interval cannot
    // invalidate memory owned by anything else.
    let r = unsafe { libc::munmap(addr as *mut libc::c_void, len) };
    if r != 0 {
        return Err(Error::Sys {
            call: "munmap",
            errno: last_errno(),
        });
    }
    Ok(())
}

/// Copies `src` to the process memory at `addr`.
///
/// The caller guarantees that `[addr, addr + src.len())` is a live writable mapping it
/// owns (an [`crate::SvmBuffer`] checks its bounds before calling).
pub fn copy_to(addr: usize, src: &[u8]) {
    // SAFETY: the destination is a live, writable mapping of at least `src.len()` bytes
    // (the caller's contract) and cannot overlap `src`, which is a Rust borrow of other
    // memory.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), addr as *mut u8, src.len()) }
}

/// Copies process memory at `addr` into `dst`. The caller guarantees that
/// `[addr, addr + dst.len())` is a live readable mapping.
pub fn copy_from(addr: usize, dst: &mut [u8]) {
    // SAFETY: the source is a live, readable mapping of at least `dst.len()` bytes (the
    // caller's contract) and cannot overlap `dst`, an exclusive Rust borrow.
    unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, dst.as_mut_ptr(), dst.len()) }
}

/// Sets `len` bytes of process memory at `addr` to `byte`. The caller guarantees that the
/// interval is a live writable mapping.
pub fn fill(addr: usize, len: usize, byte: u8) {
    // SAFETY: the interval is a live writable mapping (the caller's contract).
    unsafe { std::ptr::write_bytes(addr as *mut u8, byte, len) }
}
