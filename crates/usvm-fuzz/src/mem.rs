//! Raw mappings made the way an application makes them, without going through usvm (as
//! `crates/usvm/tests/all/util.rs` does for the integration tests).

use usvm::Error;

/// The page size.
pub const PAGE: usize = 4096;
/// One MiB.
pub const MIB: usize = 1 << 20;

/// An mmap region owned by a test, unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    /// First byte.
    pub addr: usize,
    /// Length in bytes.
    pub len: usize,
}

impl Mapping {
    /// Anonymous private memory with `len` bytes, aligned to `align` inside it, and to the
    /// next power of two of `len` when `len` is at most 32 MiB (so that the maximum range
    /// size cuts it at the same places every time).
    pub fn anon(len: usize, align: usize) -> Mapping {
        let align = if len <= 32 * MIB { align.max(len.next_power_of_two()) } else { align };
        let total = len + align;
        // SAFETY: a fresh mapping at an address the kernel picks; nothing else refers to it.
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
        assert_ne!(p, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
        let base = p as usize;
        let addr = base.next_multiple_of(align);
        unmap(base, addr - base);
        unmap(addr + len, base + total - addr - len);
        Mapping { addr, len }
    }

    /// Unmaps `[addr + off, addr + off + len)` (a hole).
    pub fn punch(&self, off: usize, len: usize) {
        unmap(self.addr + off, len);
    }

    /// Gives up ownership: the memory stays mapped (or, for parts the caller unmapped
    /// itself, unmapped) and is not touched on drop.
    pub fn leak(self) -> (usize, usize) {
        let r = (self.addr, self.len);
        std::mem::forget(self);
        r
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        unmap(self.addr, self.len);
    }
}

/// Unmaps memory the caller mapped itself.
pub fn unmap(addr: usize, len: usize) {
    if len > 0 {
        // SAFETY: only regions the caller mapped itself are unmapped, and nothing refers to
        // them through a Rust reference.
        let r = unsafe { libc::munmap(addr as *mut libc::c_void, len) };
        assert_eq!(r, 0, "munmap: {}", std::io::Error::last_os_error());
    }
}

/// Fresh anonymous memory at exactly `addr` where nothing is mapped
/// (`MAP_FIXED_NOREPLACE`); `false` when something else is mapped there now.
pub fn map_at(addr: usize, len: usize) -> bool {
    // SAFETY: MAP_FIXED_NOREPLACE maps only where nothing is mapped.
    let p = unsafe {
        libc::mmap(
            addr as *mut _,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return false;
    }
    if p as usize != addr {
        // Kernels before 4.17 ignore the flag and may map elsewhere.
        unmap(p as usize, len);
        return false;
    }
    true
}

/// Fresh anonymous memory over `[addr, addr + len)`, which the caller owns (`MAP_FIXED`:
/// the old pages are unmapped in the same call, so nobody else can take the address).
pub fn map_over(addr: usize, len: usize) {
    // SAFETY: the caller owns the memory it replaces, and no Rust reference points into it.
    let p = unsafe {
        libc::mmap(
            addr as *mut _,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    assert_eq!(p as usize, addr, "mmap MAP_FIXED: {}", std::io::Error::last_os_error());
}

/// `madvise(MADV_DONTNEED)` on memory the caller owns: its pages read as zero afterwards.
pub fn dontneed(addr: usize, len: usize) {
    // SAFETY: dropping pages of the caller's own private mapping, which no Rust reference
    // points into.
    let r = unsafe { libc::madvise(addr as *mut _, len, libc::MADV_DONTNEED) };
    assert_eq!(r, 0, "madvise: {}", std::io::Error::last_os_error());
}

/// `madvise(MADV_HUGEPAGE)` (best effort).
pub fn hugepages(addr: usize, len: usize) {
    // SAFETY: advice only, on the caller's own mapping.
    unsafe { libc::madvise(addr as *mut _, len, libc::MADV_HUGEPAGE) };
}

/// CPU stores of `data` at `addr`, memory the caller owns and has mapped.
pub fn cpu_write(addr: usize, data: &[u8]) {
    // SAFETY: the caller owns `[addr, addr + data.len())`, mapped read-write, and no Rust
    // reference points into it; a page whose data is in VRAM faults and comes back.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), addr as *mut u8, data.len()) };
}

/// CPU loads of `out.len()` bytes at `addr`, memory the caller owns and has mapped.
pub fn cpu_read(addr: usize, out: &mut [u8]) {
    // SAFETY: as `cpu_write`, for reads.
    unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, out.as_mut_ptr(), out.len()) };
}

/// The errno of a result, 0 on success.
pub fn errno<T>(r: Result<T, Error>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.errno(),
    }
}
