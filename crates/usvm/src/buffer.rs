//! [`SvmBuffer`]: anonymous private memory [`crate::Svm::alloc`] maps for the application.

use crate::instance::SvmInner;
use crate::sys;
use std::sync::Weak;

/// Anonymous private memory from [`crate::Svm::alloc`]: 2 MiB aligned, a whole number of pages,
/// unmapped on drop. The CPU uses it through ordinary loads and stores.
#[derive(Debug)]
pub struct SvmBuffer {
    pub(crate) addr: usize,
    pub(crate) len: usize,
    pub(crate) owner: Weak<SvmInner>,
    /// The fork generation of the owner (a child made by `fork` only unmaps its copy).
    pub(crate) generation: u64,
}

impl SvmBuffer {
    /// The first byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.addr as *mut u8
    }

    /// The first byte's address.
    pub fn addr(&self) -> usize {
        self.addr
    }

    /// Length in bytes (a multiple of 4 KiB).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a buffer holds at least one page.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check_bounds(&self, offset: usize, len: usize) {
        assert!(
            offset.checked_add(len).is_some_and(|e| e <= self.len),
            "access [{offset:#x}, +{len:#x}) outside a buffer of {:#x} bytes",
            self.len
        );
    }

    /// CPU store of `data` at byte `offset` (a plain memcpy; faults like any CPU access).
    /// Panics when the bytes fall outside the buffer.
    pub fn write_at(&self, offset: usize, data: &[u8]) {
        self.check_bounds(offset, data.len());
        // SAFETY: inside the buffer's own mapping (bounds checked above), live while `self`
        // is; no Rust reference points into it.
        unsafe { sys::mmap::copy_to(self.addr + offset, data) };
    }

    /// CPU load of `out.len()` bytes at byte `offset`. Panics outside the buffer.
    pub fn read_at(&self, offset: usize, out: &mut [u8]) {
        self.check_bounds(offset, out.len());
        // SAFETY: inside the buffer's own mapping (bounds checked above), live while `self` is.
        unsafe { sys::mmap::copy_from(self.addr + offset, out) };
    }

    /// CPU store of `byte` over `[offset, offset + len)`. Panics outside the buffer.
    pub fn fill(&self, offset: usize, len: usize, byte: u8) {
        self.check_bounds(offset, len);
        // SAFETY: inside the buffer's own mapping (bounds checked above), live while `self`
        // is; no Rust reference points into it.
        unsafe { sys::mmap::fill(self.addr + offset, len, byte) };
    }
}

impl Drop for SvmBuffer {
    fn drop(&mut self) {
        // As the MMU notifier does for munmap: queue the range bookkeeping first, so that
        // no later SET_ATTR / GET_ATTR can see ranges of memory that is gone.
        // A child made by `fork` only unmaps its copy: the instance it inherited is not live
        // there (see `Svm`'s `Drop`).
        if let Some(owner) = self.owner.upgrade().filter(|_| sys::fork_generation() == self.generation) {
            owner.notify_unmap(self.addr, self.len);
        }
        // SAFETY: the buffer's own mapping; it is being dropped, so nothing uses it again
        // (the instance heard of the unmap above and forgot the ranges over it).
        if let Err(e) = unsafe { sys::mmap::unmap(self.addr, self.len) } {
            debug_assert!(false, "munmap of an SvmBuffer failed: {e}");
        }
    }
}
