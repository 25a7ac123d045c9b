//! The command line's only system calls and raw pointers: a region of anonymous memory
//! the stress workload owns outright, so that it can do to it what applications do to
//! their memory behind usvm's back (map over parts of it, drop parts of it).

use anyhow::{Result, bail};

/// An anonymous private mapping, unmapped on drop.
#[derive(Debug)]
pub struct Region {
    addr: usize,
    len: usize,
}

fn last_errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

impl Region {
    /// Maps `len` bytes (a multiple of 4 KiB) aligned to `align` (a power of two).
    pub fn new(len: usize, align: usize) -> Result<Self> {
        if len == 0 || !len.is_multiple_of(4096) || !align.is_power_of_two() {
            bail!("bad region: {len} bytes aligned to {align}");
        }
        let total = len + align;
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing touches
        // no existing memory.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            bail!("mmap of {total} bytes: {}", last_errno());
        }
        let base = p as usize;
        let addr = base.next_multiple_of(align);
        // Trim the slack before and after the aligned part.
        for (a, l) in [(base, addr - base), (addr + len, base + total - addr - len)] {
            if l > 0 {
                // SAFETY: `[a, a + l)` is slack of the mapping made above, used by nothing.
                unsafe { libc::munmap(a as *mut libc::c_void, l) };
            }
        }
        Ok(Region { addr, len })
    }

    /// First byte address.
    pub fn addr(&self) -> usize {
        self.addr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    fn check(&self, off: usize, len: usize) {
        assert!(off.checked_add(len).is_some_and(|e| e <= self.len), "{off}+{len} outside the region");
    }

    /// Reads the little-endian word at byte offset `off` (8-aligned).
    pub fn read_u64(&self, off: usize) -> u64 {
        self.check(off, 8);
        assert!(off.is_multiple_of(8));
        // SAFETY: an aligned word inside the live mapping; usvm resolves any fault on it.
        unsafe { ((self.addr + off) as *const u64).read_volatile() }
    }

    /// Writes the word at byte offset `off` (8-aligned).
    pub fn write_u64(&self, off: usize, v: u64) {
        self.check(off, 8);
        assert!(off.is_multiple_of(8));
        // SAFETY: as in `read_u64`; the caller owns this word (no other thread writes it).
        unsafe { ((self.addr + off) as *mut u64).write_volatile(v) }
    }

    /// Maps fresh zero memory over `[off, off + len)` in one step (the old pages are
    /// unmapped, as by munmap, without a window in which the addresses are free).
    pub fn remap_zero(&self, off: usize, len: usize) -> Result<()> {
        self.check(off, len);
        let a = self.addr + off;
        // SAFETY: MAP_FIXED over a part of this region, which only this object owns; nothing
        // else in the process holds references into it across this call.
        let p = unsafe {
            libc::mmap(
                a as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            bail!("mmap(MAP_FIXED) of {len} bytes at {a:#x}: {}", last_errno());
        }
        Ok(())
    }

    /// Drops the contents of `[off, off + len)` (MADV_DONTNEED): the pages read as zero.
    pub fn discard(&self, off: usize, len: usize) -> Result<()> {
        self.check(off, len);
        // SAFETY: advice on a part of this region; its contents are the caller's to drop.
        let r = unsafe { libc::madvise((self.addr + off) as *mut libc::c_void, len, libc::MADV_DONTNEED) };
        if r != 0 {
            bail!("madvise(MADV_DONTNEED): {}", last_errno());
        }
        Ok(())
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping this object owns; no reference into it outlives it.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}
