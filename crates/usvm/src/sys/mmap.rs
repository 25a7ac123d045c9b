//! Anonymous private mappings.

use super::{PAGE_SIZE, last_errno};
use crate::error::{Error, Result};

/// Maps `len` bytes (a multiple of the page size) of anonymous private read-write memory
/// whose start is aligned to `align` (a power of two, at least the page size).
/// Returns the start address.
pub fn map_anon_aligned(len: usize, align: usize) -> Result<usize> {
    debug_assert!(len.is_multiple_of(PAGE_SIZE) && len > 0);
    debug_assert!(align.is_power_of_two() && align >= PAGE_SIZE);
    let total = len.checked_add(align - PAGE_SIZE).ok_or(Error::Sys { call: "mmap", errno: libc::ENOMEM })?;
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
        return Err(Error::Sys { call: "mmap", errno: last_errno() });
    }
    let base = p as usize;
    let start = base.next_multiple_of(align);
    let end = start + len;
    // Trim the slack on both sides so that exactly [start, end) stays mapped.
    // SAFETY: the slack is part of the fresh mapping made above, which nobody has seen.
    unsafe {
        unmap(base, start - base)?;
        unmap(end, base + total - end)?;
    }
    Ok(start)
}

/// Unmaps `[addr, addr + len)`. A zero length is a no-op.
///
/// # Safety
///
/// The interval must belong to a mapping the caller made (with [`map_anon_aligned`] or
/// [`reserve`]) and owns, and nothing may use it afterwards: no reference, no pointer, no
/// address kept elsewhere (a GPU page-table entry, a queue) may reach it again.
pub unsafe fn unmap(addr: usize, len: usize) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    // SAFETY: the caller's contract: a mapping it owns and no longer uses.
    let r = unsafe { libc::munmap(addr as *mut libc::c_void, len) };
    if r != 0 {
        return Err(Error::Sys { call: "munmap", errno: last_errno() });
    }
    Ok(())
}

/// Reserves `len` bytes of address space backed lazily by anonymous memory
/// (`MAP_NORESERVE`): nothing is committed until a page is first written.
pub fn reserve(len: usize) -> Result<usize> {
    map_anon_aligned(len, PAGE_SIZE)
}

// The raw-memory helpers below take addresses as integers and share one contract, the
// `# Safety` section of each: every interval lies in a live mapping with the needed
// permission (process memory the application registered, emulated VRAM, or usvm's own
// buffers) that stays mapped for the whole call, a source and a destination do not
// overlap, and no Rust reference points into a destination (other threads' and the
// application's raw accesses are the shared-memory model usvm emulates: they may race,
// as a GPU's accesses race the CPU's).

/// Copies `len` bytes from `src` to `dst`.
///
/// # Safety
///
/// `[src, src + len)` readable and `[dst, dst + len)` writable live mappings that do not
/// overlap, with no Rust reference into the destination (the contract above).
pub unsafe fn copy(dst: usize, src: usize, len: usize) {
    // SAFETY: the caller's contract.
    unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, len) }
}

/// Copies of at least this many bytes use streaming (non-temporal) stores.
pub const STREAMING_MIN_BYTES: usize = 256 << 10;

/// Copies `len` bytes like [`copy`], with non-temporal stores for large copies on x86-64.
///
/// glibc's memcpy streams only above a threshold of several MiB; the copy engine moves
/// 2 MiB chunks, which with ordinary stores run at half the speed of one large memcpy
/// (each destination line is read before it is written). Streaming stores skip that read.
///
/// # Safety
///
/// As for [`copy`].
pub unsafe fn copy_streaming(dst: usize, src: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    if len >= STREAMING_MIN_BYTES {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
        // Align the destination to 16 bytes with an ordinary copy of the head.
        let head = (dst.next_multiple_of(16) - dst).min(len);
        // SAFETY: the head lies inside the caller's intervals.
        unsafe { copy(dst, src, head) };
        let (d, s, n) = (dst + head, src + head, len - head);
        let body = n & !63;
        let mut off = 0;
        while off < body {
            // SAFETY: `[d, d + body)` and `[s, s + body)` lie inside the live, non-overlapping
            // intervals of the module contract; `d + off` is 16-byte aligned as the
            // streaming store requires; SSE2 is part of the x86-64 baseline.
            unsafe {
                let sp = (s + off) as *const __m128i;
                let dp = (d + off) as *mut __m128i;
                let a = _mm_loadu_si128(sp);
                let b = _mm_loadu_si128(sp.add(1));
                let c = _mm_loadu_si128(sp.add(2));
                let e = _mm_loadu_si128(sp.add(3));
                _mm_stream_si128(dp, a);
                _mm_stream_si128(dp.add(1), b);
                _mm_stream_si128(dp.add(2), c);
                _mm_stream_si128(dp.add(3), e);
            }
            off += 64;
        }
        // SAFETY: a store fence has no memory operands; it orders the streaming stores
        // before anything this thread does next (signalling the copy's fence).
        unsafe { _mm_sfence() };
        // SAFETY: the tail lies inside the caller's intervals.
        unsafe { copy(d + body, s + body, n - body) };
        return;
    }
    // SAFETY: the caller's contract.
    unsafe { copy(dst, src, len) }
}

/// The wrapping sum of the little-endian 8-byte words of `[addr, addr + len)` (`len` a
/// multiple of 8): a read pass over memory, for benchmarks.
///
/// # Safety
///
/// `[addr, addr + len)` must be a live readable mapping for the whole call.
pub unsafe fn sum_words(addr: usize, len: usize) -> u64 {
    let mut sum = 0u64;
    for off in (0..len).step_by(8) {
        // SAFETY: the caller's contract: a live readable mapping; unaligned reads are
        // allowed.
        sum = sum.wrapping_add(unsafe { std::ptr::read_unaligned((addr + off) as *const u64) });
    }
    sum
}

/// Copies `src` to the memory at `addr`.
///
/// # Safety
///
/// `[addr, addr + src.len())` must be a live writable mapping, outside `src`, with no
/// Rust reference into it.
pub unsafe fn copy_to(addr: usize, src: &[u8]) {
    // SAFETY: the caller's contract; `src` is a live slice.
    unsafe { copy(addr, src.as_ptr() as usize, src.len()) }
}

/// Copies the memory at `addr` into `dst`.
///
/// # Safety
///
/// `[addr, addr + dst.len())` must be a live readable mapping outside `dst`.
pub unsafe fn copy_from(addr: usize, dst: &mut [u8]) {
    // SAFETY: the caller's contract; `dst` is a live slice nothing else references.
    unsafe { copy(dst.as_mut_ptr() as usize, addr, dst.len()) }
}

/// Copies between `buf` and this process's own memory at `addr` the way another process
/// would (`process_vm_writev` / `process_vm_readv` on itself): memory that is unmapped or
/// lacks the permission is an error, never a crash, even when the application changes it
/// during the copy. Returns how many bytes were copied before the first page that failed
/// (whole pages: the kernel never splits one of the per-page pieces asked for).
pub fn copy_checked(addr: usize, buf: &mut [u8], write: bool) -> usize {
    let page = super::PAGE_SIZE;
    let mut remote = Vec::with_capacity(buf.len() / page + 2);
    let (mut a, end) = (addr, addr + buf.len());
    while a < end {
        let n = (page - (a & (page - 1))).min(end - a);
        remote.push(libc::iovec { iov_base: a as *mut libc::c_void, iov_len: n });
        a += n;
    }
    let local = libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() };
    let copy = if write { libc::process_vm_writev } else { libc::process_vm_readv };
    // SAFETY: `local` describes `buf`, which is ours and as long as the remote pieces
    // together; the remote pieces name this process's memory, which the kernel checks
    // (mapping and permission) and faults in itself: nothing here dereferences it.
    let r = unsafe { copy(libc::getpid(), &local, 1, remote.as_ptr(), remote.len() as libc::c_ulong, 0) };
    if r < 0 { 0 } else { r as usize }
}

/// Sets `len` bytes at `addr` to `byte`.
///
/// # Safety
///
/// `[addr, addr + len)` must be a live writable mapping with no Rust reference into it.
pub unsafe fn fill(addr: usize, len: usize, byte: u8) {
    // SAFETY: the caller's contract.
    unsafe { std::ptr::write_bytes(addr as *mut u8, byte, len) }
}

/// Asks for transparent huge pages on `[addr, addr + len)` (`MADV_HUGEPAGE`); a hint only.
pub fn advise_hugepages(addr: usize, len: usize) {
    // SAFETY: a hint on a mapping usvm owns; it never invalidates memory.
    unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
}

/// Gives the pages of `[addr, addr + len)` back to the kernel (`MADV_DONTNEED`); they read
/// as zero afterwards.
///
/// # Safety
///
/// The interval must be private anonymous memory the caller owns (a staging area) whose
/// contents nobody needs any more, with no Rust reference into it.
pub unsafe fn discard(addr: usize, len: usize) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    // SAFETY: the caller's contract; anonymous private memory reads as zero afterwards.
    let r = unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_DONTNEED) };
    if r != 0 {
        return Err(Error::Sys { call: "madvise(MADV_DONTNEED)", errno: last_errno() });
    }
    Ok(())
}

/// Leaves `[addr, addr + len)` out of the address space of children made by `fork`
/// (`MADV_DONTFORK`): for usvm's own areas, which a child has no use for. A hint only: a
/// failure changes nothing else.
pub fn advise_dontfork(addr: usize, len: usize) {
    // SAFETY: changes only whether `fork` copies a mapping usvm owns; this process's view of
    // the memory is untouched.
    unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_DONTFORK) };
}

/// Makes every page of `[addr, addr + len)` present and writable
/// (`MADV_POPULATE_WRITE`). Only for memory no userfaultfd watches.
pub fn populate(addr: usize, len: usize) -> Result<()> {
    const MADV_POPULATE_WRITE: libc::c_int = 23;
    // SAFETY: populating memory usvm owns; it only allocates pages.
    let r = unsafe { libc::madvise(addr as *mut libc::c_void, len, MADV_POPULATE_WRITE) };
    if r != 0 {
        return Err(Error::Sys { call: "madvise(MADV_POPULATE_WRITE)", errno: last_errno() });
    }
    Ok(())
}

/// The access a mapping grants (`PROT_READ` / `PROT_WRITE` / `PROT_EXEC`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prot {
    /// `PROT_READ`.
    pub read: bool,
    /// `PROT_WRITE`.
    pub write: bool,
    /// `PROT_EXEC`.
    pub exec: bool,
}

impl Prot {
    /// Read-write: what usvm's own areas normally are.
    pub const RW: Prot = Prot { read: true, write: true, exec: false };
    /// Write without read: no mapping the migration engine takes pages from with
    /// [`move_keeping_source`] has it, so usvm marks a staging piece with it to see when the
    /// move has replaced the piece.
    pub const WRITE_ONLY: Prot = Prot { read: false, write: true, exec: false };

    fn bits(self) -> libc::c_int {
        let mut p = libc::PROT_NONE;
        if self.read {
            p |= libc::PROT_READ;
        }
        if self.write {
            p |= libc::PROT_WRITE;
        }
        if self.exec {
            p |= libc::PROT_EXEC;
        }
        p
    }
}

// The calls below change usvm's own staging areas (mappings it made with
// `map_anon_aligned` and hands to nobody). Their contract (`# Safety`): no Rust reference
// points into the piece, and no code that is not prepared for it (the migration engine
// that owns the area) touches it while its protection, locking or contents change.

/// Sets the protection of `[addr, addr + len)`, a piece of one of usvm's own areas, with
/// the default protection key (0): a piece that received the pages of a mapping with
/// another key (`mremap`) becomes accessible to usvm's threads, whatever their key rights.
///
/// # Safety
///
/// The piece must belong to one of the caller's own areas (the contract above): a narrower
/// protection must not turn another thread's access into a fault.
pub unsafe fn protect_own(addr: usize, len: usize, prot: Prot) -> Result<()> {
    // SAFETY: the caller's contract.
    let r = unsafe { libc::syscall(libc::SYS_pkey_mprotect, addr, len, prot.bits(), 0) };
    if r == 0 {
        return Ok(());
    }
    // No protection keys here (the call is refused, or missing): there is no key to reset.
    // SAFETY: as above.
    let r = unsafe { libc::mprotect(addr as *mut libc::c_void, len, prot.bits()) };
    if r != 0 {
        return Err(Error::Sys { call: "mprotect", errno: last_errno() });
    }
    Ok(())
}

/// Locks `[addr, addr + len)`, a piece of one of usvm's own areas, without populating it
/// (`mlock2(MLOCK_ONFAULT)`): its pages are locked as they arrive.
pub fn lock_own_on_fault(addr: usize, len: usize) -> Result<()> {
    // SAFETY: usvm's own area (the contract above); locking changes no contents.
    let r = unsafe { libc::mlock2(addr as *const libc::c_void, len, libc::MLOCK_ONFAULT) };
    if r != 0 {
        return Err(Error::Sys { call: "mlock2(MLOCK_ONFAULT)", errno: last_errno() });
    }
    Ok(())
}

/// Maps fresh anonymous private read-write memory (`MAP_NORESERVE`) over
/// `[addr, addr + len)`, a piece of one of usvm's own areas, dropping whatever was mapped
/// there (`mmap(MAP_FIXED)`). The piece must not be registered with a userfaultfd that
/// reports unmaps.
///
/// # Safety
///
/// The piece must belong to one of the caller's own areas (the contract above) whose
/// contents nobody needs any more.
pub unsafe fn map_fresh_over_own(addr: usize, len: usize) -> Result<()> {
    // SAFETY: the caller's contract: its own area, which nothing else references.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Error::Sys { call: "mmap(MAP_FIXED)", errno: last_errno() });
    }
    Ok(())
}

/// Moves the page-table entries of `[src, src + len)` (inside one mapping of the
/// application) to `[dst, dst + len)`, a piece of one of usvm's own areas, with
/// `mremap(MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP)`: the source mapping stays,
/// with its protection, its userfaultfd registration and no pages (an access then faults to
/// the userfaultfd), while a new mapping at `dst` (a copy of the source's, replacing what
/// usvm had there) holds the pages. It works whatever the source's protection, where
/// `UFFDIO_MOVE` takes only writable pages. Side effects the caller must accept: the source
/// mapping loses `mlock` (the kernel clears `VM_LOCKED` on it), and when the source is
/// registered with a userfaultfd that reports remaps, this call sends a REMAP event
/// (`from = src`, `to = dst`) and returns only once it has been read.
///
/// # Safety
///
/// `dst` must be a piece of the caller's own area (the contract above) and `src` memory of
/// the application watched by usvm's userfaultfd (an access to the emptied source then
/// faults to usvm, which serves it); no Rust reference points into either, and they do
/// not overlap.
pub unsafe fn move_keeping_source(src: usize, len: usize, dst: usize) -> Result<()> {
    // SAFETY: the caller's contract.
    let p = unsafe {
        libc::mremap(
            src as *mut libc::c_void,
            len,
            len,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED | libc::MREMAP_DONTUNMAP,
            dst as *mut libc::c_void,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Error::Sys { call: "mremap(MREMAP_DONTUNMAP)", errno: last_errno() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_copy_matches_with_odd_offsets_and_lengths() {
        let n = 1 << 20;
        let src: Vec<u8> = (0..n).map(|i| (i * 31 % 255) as u8).collect();
        for (doff, soff, len) in
            [(0, 0, n), (3, 0, n - 100), (0, 5, STREAMING_MIN_BYTES + 77), (9, 17, 300_001), (1, 1, 100)]
        {
            let mut dst = vec![0u8; n + 64];
            // SAFETY: both intervals lie inside the two vectors, which do not overlap.
            unsafe { copy_streaming(dst.as_mut_ptr() as usize + doff, src.as_ptr() as usize + soff, len) };
            assert_eq!(&dst[doff..doff + len], &src[soff..soff + len], "{doff} {soff} {len}");
            assert!(dst[..doff].iter().all(|&b| b == 0));
            assert!(dst[doff + len..].iter().all(|&b| b == 0));
        }
    }
}
