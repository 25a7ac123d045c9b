//! `/proc/self/pagemap`: whether a page of the process has memory behind it (present or
//! swapped out) or is a hole that was never populated; `mincore(2)`: whether the data of
//! a page of a file or shared mapping is in the page cache, mapped here or not.

use super::last_errno;
use crate::error::{Error, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Mutex;

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;

static PAGEMAP: Mutex<Option<(u64, std::sync::Arc<OwnedFd>)>> = Mutex::new(None);

fn fd() -> Result<std::sync::Arc<OwnedFd>> {
    let pid = super::fork_generation();
    let mut g = PAGEMAP.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((p, f)) = g.as_ref().filter(|(p, _)| *p == pid) {
        let _ = p;
        return Ok(f.clone());
    }
    // SAFETY: opening a file by a NUL-terminated path; the fd is owned right below.
    let fd = unsafe { libc::open(c"/proc/self/pagemap".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(Error::Sys { call: "open(/proc/self/pagemap)", errno: last_errno() });
    }
    // SAFETY: `fd` was just returned by open and is owned by nobody else.
    let f = std::sync::Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
    *g = Some((pid, f.clone()));
    Ok(f)
}

/// For each of `n` pages from `addr`: whether it has memory (present or swapped).
pub fn has_memory(addr: usize, n: usize) -> Result<Vec<bool>> {
    let f = fd()?;
    let mut buf = vec![0u64; n];
    let mut done = 0;
    while done < n {
        let off = ((addr >> super::PAGE_SHIFT) + done) * 8;
        // SAFETY: reading into the unfilled tail of `buf`, which is `(n - done) * 8` bytes.
        let r = unsafe {
            libc::pread(
                f.as_raw_fd(),
                buf[done..].as_mut_ptr() as *mut libc::c_void,
                (n - done) * 8,
                off as libc::off_t,
            )
        };
        if r <= 0 {
            return Err(Error::Sys {
                call: "pread(/proc/self/pagemap)",
                errno: if r < 0 { last_errno() } else { libc::EIO },
            });
        }
        done += r as usize / 8;
    }
    Ok(buf.into_iter().map(|e| e & (PM_PRESENT | PM_SWAPPED) != 0).collect())
}

/// For each of `n` pages from `addr` (page aligned): whether `mincore(2)` finds its data in
/// memory. For a file or shared mapping that is the page cache, whether or not this process
/// has the page in its page table yet; for private anonymous memory, a present page. Pages
/// of the interval that are not mapped at all read `false`.
pub fn in_core(addr: usize, n: usize) -> Vec<bool> {
    let mut out = vec![0u8; n];
    mincore_into(addr, &mut out);
    out.into_iter().map(|b| b & 1 != 0).collect()
}

/// `mincore` over `out.len()` pages from `addr`; where the interval has a hole (`ENOMEM`),
/// each half is asked again, so a few holes cost a few calls, not one per page.
fn mincore_into(addr: usize, out: &mut [u8]) {
    if out.is_empty() {
        return;
    }
    // SAFETY: mincore writes one byte per page of `[addr, addr + out.len() pages)` into
    // `out`, which has exactly that many bytes; it reads no memory of the interval.
    let r =
        unsafe { libc::mincore(addr as *mut libc::c_void, out.len() << super::PAGE_SHIFT, out.as_mut_ptr()) };
    if r == 0 {
        return;
    }
    if out.len() == 1 || last_errno() != libc::ENOMEM {
        out.fill(0);
        return;
    }
    let half = out.len() / 2;
    let (lo, hi) = out.split_at_mut(half);
    mincore_into(addr, lo);
    mincore_into(addr + (half << super::PAGE_SHIFT), hi);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_touched_and_untouched_pages() {
        let a = super::super::mmap::map_anon_aligned(4 * 4096, 4096).unwrap();
        // SAFETY: memory this test mapped and owns, live until its unmap.
        unsafe { super::super::mmap::fill(a + 4096, 1, 1) };
        // SAFETY: memory this test mapped and owns, live until its unmap.
        unsafe { super::super::mmap::fill(a + 3 * 4096, 1, 1) };
        assert_eq!(has_memory(a, 4).unwrap(), vec![false, true, false, true]);
        // SAFETY: memory this test mapped; nothing uses it afterwards.
        unsafe { super::super::mmap::unmap(a, 4 * 4096).unwrap() };
    }

    #[test]
    fn in_core_sees_present_pages_and_survives_holes() {
        let a = super::super::mmap::map_anon_aligned(8 * 4096, 4096).unwrap();
        // SAFETY: memory this test mapped and owns, live until its unmap.
        unsafe { super::super::mmap::fill(a + 4096, 1, 1) };
        // SAFETY: memory this test mapped and owns, live until its unmap.
        unsafe { super::super::mmap::fill(a + 6 * 4096, 1, 1) };
        // A hole in the middle: pages 3 and 4 are not mapped (another test's thread may map
        // something there meanwhile: what they read is not checked).
        // SAFETY: memory this test mapped; nothing uses it afterwards.
        unsafe { super::super::mmap::unmap(a + 3 * 4096, 2 * 4096).unwrap() };
        let v = in_core(a, 8);
        assert_eq!((&v[..3], &v[5..]), (&[false, true, false][..], &[false, true, false][..]));
        // SAFETY: memory this test mapped; nothing uses it afterwards.
        unsafe { super::super::mmap::unmap(a, 3 * 4096).unwrap() };
        // SAFETY: memory this test mapped; nothing uses it afterwards.
        unsafe { super::super::mmap::unmap(a + 5 * 4096, 3 * 4096).unwrap() };
    }
}
