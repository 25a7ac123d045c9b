//! What the machine allows, asked of the kernel without changing anything: for
//! [`crate::doctor`]. A fresh userfaultfd's features, the kernel release, the effective user,
//! resource limits, and whether the kernel's own accesses to a buffer (`write(2)` from it)
//! get through.

use super::last_errno;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// What a fresh userfaultfd offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UffdApi {
    /// The `UFFD_FEATURE_*` bits the kernel supports (asked with no feature, the kernel
    /// answers with all of them).
    pub features: u64,
    /// The `_UFFDIO_*` ioctl bits of the descriptor.
    pub ioctls: u64,
}

/// Opens a userfaultfd, as `sys::uffd::Uffd::new` does: for every fault (`user_mode_only`
/// false: kernel-mode faults included, which needs privilege) or for user-mode faults only.
/// Asks it for its features and closes it. The error names the call that failed (the
/// `userfaultfd` system call or the `UFFDIO_API` ioctl) and its errno.
pub fn userfaultfd_api(user_mode_only: bool) -> Result<UffdApi, (&'static str, i32)> {
    let fd = super::uffd::open_userfaultfd(user_mode_only).map_err(|e| ("userfaultfd", e))?;
    let (features, ioctls) = super::uffd::negotiate(&fd, 0).map_err(|e| ("UFFDIO_API", e))?;
    Ok(UffdApi { features, ioctls })
}

/// The kernel release (`uname -r`), e.g. "6.8.0-45-generic".
pub fn kernel_release() -> String {
    // SAFETY: `utsname` is plain bytes; all zeros is a valid value.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid out-pointer to a `struct utsname`.
    if unsafe { libc::uname(&mut u) } != 0 {
        return String::new();
    }
    let bytes: Vec<u8> = u.release.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The effective user id.
pub fn euid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// A resource limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rlimit {
    /// `RLIMIT_AS`: the address space.
    AddressSpace,
    /// `RLIMIT_MEMLOCK`: locked memory.
    Memlock,
}

/// The soft limit of `which` in bytes; `None` when unlimited (or unknown).
pub fn rlimit(which: Rlimit) -> Option<u64> {
    let res = match which {
        Rlimit::AddressSpace => libc::RLIMIT_AS,
        Rlimit::Memlock => libc::RLIMIT_MEMLOCK,
    };
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `r` is a valid out-pointer to a `struct rlimit`.
    if unsafe { libc::getrlimit(res, &mut r) } != 0 || r.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    Some(r.rlim_cur)
}

/// Has the kernel read `[addr, addr + len)` (at most 64 KiB: one pipe's capacity) with
/// `write(2)` into a pipe, and returns what came out of the other end. This is a kernel-mode
/// access to the memory: where a page is missing, the fault is taken inside the kernel, as
/// `read(2)` / `write(2)` on an application's buffer take it. `Err(errno)` when the kernel
/// could not read it (`EFAULT`: the fault was not served). Nothing here dereferences
/// `addr`: the kernel checks the mapping.
pub fn kernel_read(addr: usize, len: usize) -> Result<Vec<u8>, i32> {
    let len = len.min(64 << 10);
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid out-pointer to two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(last_errno());
    }
    // SAFETY: both descriptors were just returned by the kernel and are owned by nobody else.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: write(2) only reads `len` bytes at `addr`, through the kernel's checked user
    // copy: unmapped or unreadable memory is EFAULT, not a fault of this thread.
    let n = unsafe { libc::write(wr.as_raw_fd(), addr as *const libc::c_void, len) };
    if n < 0 {
        return Err(last_errno());
    }
    let mut out = vec![0u8; n as usize];
    // SAFETY: reading at most `out.len()` bytes into `out`, which is ours.
    let m = unsafe { libc::read(rd.as_raw_fd(), out.as_mut_ptr() as *mut libc::c_void, out.len()) };
    if m < 0 {
        return Err(last_errno());
    }
    out.truncate(m as usize);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_read_of_plain_memory_and_of_nothing() {
        let data: Vec<u8> = (0..8192).map(|i| i as u8).collect();
        assert_eq!(kernel_read(data.as_ptr() as usize, data.len()).unwrap(), data);
        // Page 0 is never mapped (vm.mmap_min_addr).
        assert_eq!(kernel_read(0, 4096), Err(libc::EFAULT));
    }

    #[test]
    fn release_and_limits_answer() {
        assert!(kernel_release().chars().next().is_some_and(|c| c.is_ascii_digit()));
        let _ = (euid(), rlimit(Rlimit::AddressSpace), rlimit(Rlimit::Memlock));
    }
}
