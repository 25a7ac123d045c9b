//! The only module with system calls and raw pointers. Everything above it works with
//! addresses as integers and safe wrappers.
//!
//! - [`mmap`]: anonymous mappings for [`crate::SvmBuffer`].
//! - [`vma`]: what the process's address space looks like at an address (the kernel's
//!   `vma_lookup`), through the `PROCMAP_QUERY` ioctl on `/proc/self/maps`.

pub mod mmap;
pub mod vma;

/// The CPU page size usvm works with (4 KiB, as KFD's SVM code assumes).
pub const PAGE_SIZE: usize = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

/// The errno of the last failed system call of this thread.
pub(crate) fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}
