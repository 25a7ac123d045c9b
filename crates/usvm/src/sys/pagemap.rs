//! `/proc/self/pagemap`: whether a page of the process has memory behind it (present or
//! swapped out) or is a hole that was never populated.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_touched_and_untouched_pages() {
        let a = super::super::mmap::map_anon_aligned(4 * 4096, 4096).unwrap();
        super::super::mmap::fill(a + 4096, 1, 1);
        super::super::mmap::fill(a + 3 * 4096, 1, 1);
        assert_eq!(has_memory(a, 4).unwrap(), vec![false, true, false, true]);
        super::super::mmap::unmap(a, 4 * 4096).unwrap();
    }
}
