//! The process's own mappings (VMAs), looked up by address.
//!
//! The kernel's SVM code asks `vma_lookup(mm, addr)`; user space asks the `PROCMAP_QUERY`
//! ioctl of `/proc/self/maps` (Linux >= 6.11), which answers the same question for one
//! address without parsing text. Older kernels fall back to parsing `/proc/self/maps`.
//!
//! What user space cannot see directly are the `VM_IO | VM_PFNMAP | VM_MIXEDMAP` flags that
//! make KFD refuse an interval. usvm treats as such device mappings the kernel's special
//! PFN-mapped areas (`[vvar]`, `[vvar_vclock]`) and every mapping of a character device.

use super::last_errno;
use crate::addr::PageNo;
use crate::addr::Pages;
use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Mutex;

/// What kind of memory a VMA holds, as far as SVM cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmaKind {
    /// Anonymous private memory: the only kind the migration engine moves.
    Anon,
    /// The process's initial heap (`[heap]`, anonymous).
    Heap,
    /// The initial thread's stack (`[stack]`, anonymous).
    Stack,
    /// A file mapping, or any shared mapping: stays in place.
    File,
    /// An I/O or PFN mapping (KFD: `VM_IO | VM_PFNMAP | VM_MIXEDMAP`): no SVM at all.
    Device,
}

/// One mapping of the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vma {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
    /// `PROT_READ`.
    pub read: bool,
    /// `PROT_WRITE`.
    pub write: bool,
    /// `PROT_EXEC`.
    pub exec: bool,
    /// `MAP_SHARED`.
    pub shared: bool,
    /// What the memory is.
    pub kind: VmaKind,
}

impl Vma {
    /// Whether the migration engine may move this mapping's pages (anonymous, private).
    pub fn migratable(&self) -> bool {
        !self.shared && matches!(self.kind, VmaKind::Anon | VmaKind::Heap | VmaKind::Stack)
    }
}

// uapi/linux/fs.h
const PROCMAP_QUERY: libc::c_ulong = 0xC068_6611; // _IOWR('f', 17, struct procmap_query)
const PROCMAP_QUERY_VMA_READABLE: u64 = 0x01;
const PROCMAP_QUERY_VMA_WRITABLE: u64 = 0x02;
const PROCMAP_QUERY_VMA_EXECUTABLE: u64 = 0x04;
const PROCMAP_QUERY_VMA_SHARED: u64 = 0x08;
const PROCMAP_QUERY_COVERING_OR_NEXT_VMA: u64 = 0x10;

#[repr(C)]
#[derive(Default)]
struct ProcmapQuery {
    size: u64,
    query_flags: u64,
    query_addr: u64,
    vma_start: u64,
    vma_end: u64,
    vma_flags: u64,
    vma_page_size: u64,
    vma_offset: u64,
    inode: u64,
    dev_major: u32,
    dev_minor: u32,
    vma_name_size: u32,
    build_id_size: u32,
    vma_name_addr: u64,
    build_id_addr: u64,
}

/// An open `/proc/self/maps`, remembered per process (a forked child opens its own).
struct MapsFd {
    pid: u64,
    fd: OwnedFd,
    query: bool,
}

static MAPS: Mutex<Option<std::sync::Arc<MapsFd>>> = Mutex::new(None);

fn maps_fd() -> Result<std::sync::Arc<MapsFd>, i32> {
    let pid = super::fork_generation();
    let mut g = MAPS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(m) = g.as_ref().filter(|m| m.pid == pid) {
        return Ok(m.clone());
    }
    let path = c"/proc/self/maps";
    // SAFETY: opening a file by a NUL-terminated path; the fd is owned right below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(last_errno());
    }
    // SAFETY: `fd` was just returned by open and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut m = MapsFd { pid, fd, query: true };
    let mut probe = ProcmapQuery {
        size: size_of::<ProcmapQuery>() as u64,
        query_flags: PROCMAP_QUERY_COVERING_OR_NEXT_VMA,
        ..Default::default()
    };
    // SAFETY: PROCMAP_QUERY reads and writes exactly one `ProcmapQuery`, whose `size` field
    // says how large it is; no name or build-id buffer is passed.
    let r = unsafe { libc::ioctl(m.fd.as_raw_fd(), PROCMAP_QUERY, &mut probe) };
    if r != 0 && last_errno() == libc::ENOTTY {
        m.query = false;
    }
    let m = std::sync::Arc::new(m);
    *g = Some(m.clone());
    Ok(m)
}

/// The mapping that contains `addr`, or `None` when no mapping does.
///
/// With `or_next`, a missing mapping at `addr` is answered with the first mapping above it.
pub fn lookup(addr: usize, or_next: bool) -> Result<Option<Vma>, i32> {
    let m = maps_fd()?;
    if !m.query {
        return lookup_text(addr, or_next);
    }
    let mut name = [0u8; 4096];
    let mut q = ProcmapQuery {
        size: size_of::<ProcmapQuery>() as u64,
        query_flags: if or_next { PROCMAP_QUERY_COVERING_OR_NEXT_VMA } else { 0 },
        query_addr: addr as u64,
        vma_name_size: name.len() as u32,
        vma_name_addr: name.as_mut_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: PROCMAP_QUERY fills one `ProcmapQuery` and writes at most `vma_name_size`
    // bytes to `vma_name_addr`, which points at `name`, alive for the whole call.
    let r = unsafe { libc::ioctl(m.fd.as_raw_fd(), PROCMAP_QUERY, &mut q) };
    if r != 0 {
        return match last_errno() {
            libc::ENOENT => Ok(None),
            e => Err(e),
        };
    }
    let name = if q.vma_name_size > 0 {
        CStr::from_bytes_until_nul(&name).map(|c| c.to_bytes()).unwrap_or(b"")
    } else {
        b""
    };
    let shared = q.vma_flags & PROCMAP_QUERY_VMA_SHARED != 0;
    Ok(Some(Vma {
        start: q.vma_start as usize,
        end: q.vma_end as usize,
        read: q.vma_flags & PROCMAP_QUERY_VMA_READABLE != 0,
        write: q.vma_flags & PROCMAP_QUERY_VMA_WRITABLE != 0,
        exec: q.vma_flags & PROCMAP_QUERY_VMA_EXECUTABLE != 0,
        shared,
        kind: classify(name, q.inode, shared),
    }))
}

/// One mapping's part of a page interval.
#[derive(Clone, Copy, Debug)]
pub struct Piece {
    /// First page of the part.
    pub first: PageNo,
    /// Last page of the part (inclusive).
    pub last: PageNo,
    /// The mapping.
    pub vma: Vma,
}

/// The mappings covering the pages `[first, last]`, in address order, each clipped to the
/// interval. The walk ends after the first error: `NotMapped` at the first address with no
/// mapping, or the lookup's own failure.
pub fn pieces(Pages { first, last }: Pages) -> impl Iterator<Item = crate::error::Result<Piece>> {
    let mut page = first;
    let mut done = false;
    std::iter::from_fn(move || {
        if done || page > last {
            return None;
        }
        let addr = page.addr();
        let r = match lookup(addr, false) {
            Ok(Some(vma)) => {
                let end = (PageNo::of_addr(vma.end) - 1).min(last);
                let p = Piece { first: page, last: end, vma };
                page = end + 1;
                Ok(p)
            }
            Ok(None) => Err(crate::error::Error::NotMapped { addr: addr as u64 }),
            Err(errno) => Err(crate::error::Error::Sys { call: "PROCMAP_QUERY", errno }),
        };
        done = r.is_err();
        Some(r)
    })
}

/// Like [`pieces`], but a hole in the interval is stepped over instead of ending the walk:
/// the mapped parts only. For walks that may meet memory the application unmapped a moment
/// ago, before usvm heard of it (its munmap event not read yet, or memory no event watches).
pub fn mapped_pieces(Pages { first, last }: Pages) -> impl Iterator<Item = crate::error::Result<Piece>> {
    let mut page = first;
    let mut done = false;
    std::iter::from_fn(move || {
        while !done && page <= last {
            let addr = page.addr();
            match lookup(addr, true) {
                Ok(Some(vma)) if vma.start <= addr => {
                    let end = (PageNo::of_addr(vma.end) - 1).min(last);
                    let p = Piece { first: page, last: end, vma };
                    page = end + 1;
                    return Some(Ok(p));
                }
                // A hole: go on at the next mapping, if it starts inside the interval.
                Ok(Some(vma)) => page = PageNo::of_addr(vma.start),
                Ok(None) => done = true,
                Err(errno) => {
                    done = true;
                    return Some(Err(crate::error::Error::Sys { call: "PROCMAP_QUERY", errno }));
                }
            }
        }
        None
    })
}

/// Whether the mapping that contains `addr` is locked (`mlock`, `mlock2`, `mlockall`:
/// `VM_LOCKED`), which `PROCMAP_QUERY` does not report. When the process has no locked
/// memory at all (`VmLck` of `/proc/self/status` is 0, the common case) that answers it;
/// otherwise the mapping's `VmFlags` line in `/proc/self/smaps` does (`lo`). `Ok(false)`
/// when nothing is mapped at `addr`.
pub fn locked(addr: usize) -> Result<bool, i32> {
    use std::io::BufRead;
    let io = |e: std::io::Error| e.raw_os_error().unwrap_or(libc::EIO);
    let status = std::fs::read_to_string("/proc/self/status").map_err(io)?;
    let vm_lck = status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    if vm_lck == Some(0) {
        return Ok(false);
    }
    let f = std::fs::File::open("/proc/self/smaps").map_err(io)?;
    let mut inside = false;
    for line in std::io::BufReader::new(f).lines() {
        let line = line.map_err(io)?;
        if let Some((s, e)) = smaps_header(&line) {
            if inside || s > addr {
                // Past the mapping (or it had no VmFlags line): not locked.
                return Ok(false);
            }
            inside = s <= addr && addr < e;
        } else if inside && let Some(flags) = line.strip_prefix("VmFlags:") {
            return Ok(flags.split_ascii_whitespace().any(|f| f == "lo"));
        }
    }
    Ok(false)
}

/// The address range of a `/proc/self/smaps` header line (`start-end perms ...`).
fn smaps_header(line: &str) -> Option<(usize, usize)> {
    let (range, _) = line.split_once(' ')?;
    let (s, e) = range.split_once('-')?;
    Some((usize::from_str_radix(s, 16).ok()?, usize::from_str_radix(e, 16).ok()?))
}

/// Sorts a mapping into a [`VmaKind`] from its name, inode and sharing.
fn classify(name: &[u8], inode: u64, shared: bool) -> VmaKind {
    match name {
        b"[vvar]" | b"[vvar_vclock]" => VmaKind::Device,
        b"[heap]" => VmaKind::Heap,
        b"[stack]" => VmaKind::Stack,
        _ if inode != 0 && name.starts_with(b"/") && is_char_device(name, inode) => VmaKind::Device,
        _ if inode != 0 || shared => VmaKind::File,
        _ => VmaKind::Anon,
    }
}

/// Whether `path` names a character device with inode `inode` (device memory mapped
/// through a driver: PFN or I/O mapped in practice).
fn is_char_device(path: &[u8], inode: u64) -> bool {
    let Ok(c) = std::ffi::CString::new(path) else {
        return false;
    };
    // SAFETY: `st` is plain data, fully written by a successful stat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` is a valid out-pointer for the call.
    let r = unsafe { libc::stat(c.as_ptr(), &mut st) };
    r == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFCHR && st.st_ino == inode
}

/// The `/proc/self/maps` text fallback for kernels without `PROCMAP_QUERY`.
fn lookup_text(addr: usize, or_next: bool) -> Result<Option<Vma>, i32> {
    let text =
        std::fs::read_to_string("/proc/self/maps").map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
    for line in text.lines() {
        let Some(v) = parse_maps_line(line) else {
            continue;
        };
        if v.end > addr && (v.start <= addr || or_next) {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// Parses one `/proc/<pid>/maps` line.
fn parse_maps_line(line: &str) -> Option<Vma> {
    let mut it = line.split_ascii_whitespace();
    let (s, e) = it.next()?.split_once('-')?;
    let perms = it.next()?.as_bytes();
    let _offset = it.next()?;
    let _dev = it.next()?;
    let inode: u64 = it.next()?.parse().ok()?;
    let name = it.next().unwrap_or("");
    let shared = perms.get(3) == Some(&b's');
    Some(Vma {
        start: usize::from_str_radix(s, 16).ok()?,
        end: usize::from_str_radix(e, 16).ok()?,
        read: perms.first() == Some(&b'r'),
        write: perms.get(1) == Some(&b'w'),
        exec: perms.get(2) == Some(&b'x'),
        shared,
        kind: classify(name.as_bytes(), inode, shared),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_own_mapping_and_holes() {
        let len = 64 << 10;
        let a = super::super::mmap::map_anon_aligned(len, 2 << 20).unwrap();
        let v = lookup(a + 4096, false).unwrap().unwrap();
        assert!(v.start <= a && v.end >= a + len, "{v:?}");
        assert!(v.read && v.write && !v.shared && v.kind == VmaKind::Anon);
        // Punch a hole and look at it.
        // SAFETY: memory this test mapped; nothing uses it afterwards.
        unsafe { super::super::mmap::unmap(a + 16384, 4096).unwrap() };
        assert_eq!(lookup(a + 16384, false).unwrap(), None);
        let next = lookup(a + 16384, true).unwrap().unwrap();
        assert_eq!(next.start, a + 20480);
        // SAFETY: memory this test mapped; nothing uses it afterwards.
        unsafe { super::super::mmap::unmap(a, len).unwrap() };
    }

    #[test]
    fn text_fallback_agrees() {
        let a = super::super::mmap::map_anon_aligned(8192, 4096).unwrap();
        let q = lookup(a, false).unwrap().unwrap();
        let t = lookup_text(a, false).unwrap().unwrap();
        // Other test threads may map memory next to ours, so compare what cannot move.
        assert!(q.start <= a && a < q.end && t.start <= a && a < t.end);
        assert_eq!((q.read, q.write, q.exec, q.shared, q.kind), (t.read, t.write, t.exec, t.shared, t.kind));
        // SAFETY: memory this test mapped; nothing uses it afterwards.
        unsafe { super::super::mmap::unmap(a, 8192).unwrap() };
    }

    #[test]
    fn sees_locked_mappings() {
        let len = 4 * 4096;
        let a = super::super::mmap::map_anon_aligned(len, 4096).unwrap();
        assert!(!locked(a).unwrap());
        super::super::mmap::lock_own_on_fault(a + 4096, 4096).unwrap();
        assert!(!locked(a).unwrap());
        assert!(locked(a + 4096).unwrap());
        assert!(!locked(a + 2 * 4096).unwrap());
        // SAFETY: a page of the mapping this test made, whose contents nobody needs.
        unsafe { super::super::mmap::map_fresh_over_own(a + 4096, 4096) }.unwrap();
        assert!(!locked(a + 4096).unwrap());
        // SAFETY: memory this test mapped; nothing uses it afterwards.
        unsafe { super::super::mmap::unmap(a, len).unwrap() };
    }

    #[test]
    fn classifies_special_mappings() {
        assert_eq!(classify(b"[vvar]", 0, false), VmaKind::Device);
        assert_eq!(classify(b"[heap]", 0, false), VmaKind::Heap);
        assert_eq!(classify(b"", 0, true), VmaKind::File);
        assert_eq!(classify(b"/usr/lib/libc.so.6", 1234, false), VmaKind::File);
        assert_eq!(classify(b"", 0, false), VmaKind::Anon);
    }
}
