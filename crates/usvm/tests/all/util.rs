//! Helpers shared by the integration tests: raw mappings made the way an application makes
//! them, without going through usvm.

use usvm::{Error, Svm};

pub const PAGE: usize = 4096;
pub const MIB: usize = 1 << 20;

/// An mmap region owned by a test, unmapped on drop.
pub struct Mapping {
    pub addr: usize,
    pub len: usize,
}

impl Mapping {
    /// Anonymous private memory with `len` bytes, aligned to `align` inside it.
    pub fn anon(len: usize, align: usize) -> Mapping {
        Self::with(len, align, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1)
    }

    /// A mapping with the given flags and fd, `align`-aligned, and never across a 32 MiB
    /// boundary when it fits in 32 MiB (the maximum range size of the 1 GiB test GPUs), so
    /// that a test's interval is one range unless the test splits it.
    pub fn with(len: usize, align: usize, flags: i32, fd: i32) -> Mapping {
        let align = if len <= 32 * MIB { align.max(len.next_power_of_two()) } else { align };
        let total = len + align;
        // SAFETY: a fresh mapping at an address the kernel picks; nothing else refers to it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_READ | libc::PROT_WRITE,
                flags | libc::MAP_NORESERVE,
                fd,
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

    /// Fresh anonymous memory at exactly `addr`, if nothing is mapped there
    /// (`MAP_FIXED_NOREPLACE`: another test thread may have taken the address meanwhile).
    pub fn at(addr: usize, len: usize) -> Option<Mapping> {
        (mmap_at(addr, len, libc::MAP_FIXED_NOREPLACE) == addr).then_some(Mapping { addr, len })
    }

    /// Unmaps `[addr + off, addr + off + len)` (a hole).
    pub fn punch(&self, off: usize, len: usize) {
        unmap(self.addr + off, len);
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        unmap(self.addr, self.len);
    }
}

pub fn unmap(addr: usize, len: usize) {
    if len > 0 {
        // SAFETY: only regions this test mapped itself are unmapped.
        let r = unsafe { libc::munmap(addr as *mut libc::c_void, len) };
        assert_eq!(r, 0);
    }
}

/// A 2-GPU instance with 1 GiB of VRAM each (32 MiB maximum range size).
pub fn svm2(xnack: bool) -> Svm {
    Svm::builder().gpus(2).vram_bytes(1 << 30).xnack(xnack).build().unwrap()
}

/// The errno of a result, 0 on success.
pub fn errno<T>(r: Result<T, Error>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.errno(),
    }
}

/// Changes the protection of memory the test owns.
pub fn mprotect(addr: usize, len: usize, prot: i32) {
    // SAFETY: only memory this test mapped itself, with no Rust reference into it.
    let r = unsafe { libc::mprotect(addr as *mut libc::c_void, len, prot) };
    assert_eq!(r, 0, "mprotect: {}", std::io::Error::last_os_error());
}

/// `len` bytes that differ from page to page and from `seed` to `seed`.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8).collect()
}

/// How many 4 KiB pages of `got` differ from `want`.
pub fn bad_pages(got: &[u8], want: &[u8]) -> usize {
    got.chunks(PAGE).zip(want.chunks(PAGE)).filter(|(a, b)| a != b).count()
}

/// The first byte where `got` and `want` differ, for assertion messages.
pub fn first_difference(got: &[u8], want: &[u8]) -> Option<usize> {
    got.iter().zip(want).position(|(a, b)| a != b)
}

/// Fresh anonymous read-write memory at `addr` with `flag` (`MAP_FIXED` or
/// `MAP_FIXED_NOREPLACE`); returns what mmap returned.
fn mmap_at(addr: usize, len: usize, flag: i32) -> usize {
    // SAFETY: the caller names memory of its own (MAP_FIXED replaces a mapping the test
    // owns) or free address space (MAP_FIXED_NOREPLACE maps only where nothing is mapped);
    // nothing else refers to the new memory.
    let p = unsafe {
        libc::mmap(
            addr as *mut _,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flag,
            -1,
            0,
        )
    };
    p as usize
}

/// `mmap(MAP_FIXED)` of fresh anonymous memory over `[addr, addr + len)`, which the test
/// owns.
pub fn map_fixed(addr: usize, len: usize) {
    assert_eq!(mmap_at(addr, len, libc::MAP_FIXED), addr, "mmap: {}", std::io::Error::last_os_error());
}

/// `mremap(MAYMOVE | FIXED)` of `len` bytes from `from` to `to`.
pub fn mremap_to(from: usize, len: usize, to: usize) {
    // SAFETY: moving a mapping of this test over another of its own mappings.
    let p = unsafe {
        libc::mremap(
            from as *mut _,
            len,
            len,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            to as *mut libc::c_void,
        )
    };
    assert_eq!(p as usize, to, "mremap: {}", std::io::Error::last_os_error());
}

/// The variable naming the test a re-executed test binary runs (see [`in_own_process`]).
const OWN_PROCESS_ENV: &str = "USVM_OWN_PROCESS_TEST";

/// Runs test `name` of this binary in a process of its own, for tests that fork or install
/// signal handlers (a fork brings the VRAM data of every instance of the process back to
/// RAM, which would disturb what other tests check). In that process: true, the caller
/// goes on with the test's body. In the parent: false, once the child passed; a child that
/// fails, or outlives two minutes (it is killed), fails the test.
pub fn in_own_process(name: &str) -> bool {
    if std::env::var(OWN_PROCESS_ENV).is_ok_and(|v| v == name) {
        return true;
    }
    let dir =
        std::env::temp_dir().join(format!("usvm-own-{}-{}", std::process::id(), name.replace(':', "_")));
    let _ = std::fs::create_dir_all(&dir);
    let log = dir.join("out.txt");
    let out = std::fs::File::create(&log).unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(OWN_PROCESS_ENV, name)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    let status = status.unwrap_or_else(|| panic!("{name} did not finish in two minutes: {text}"));
    assert!(status.success() && text.contains("1 passed"), "{status:?}: {text}");
    false
}
