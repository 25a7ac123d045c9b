//! The only module with system calls and raw pointers. Everything above it works with
//! addresses as integers and safe wrappers.
//!
//! - [`mmap`]: anonymous mappings for [`crate::SvmBuffer`].
//! - [`vma`]: what the process's address space looks like at an address (the kernel's
//!   `vma_lookup`), through the `PROCMAP_QUERY` ioctl on `/proc/self/maps`.

pub mod doorbell;
pub mod mmap;
pub mod pagemap;
pub mod probe;
pub mod uffd;
pub mod vma;

pub use crate::addr::{PAGE_SHIFT, PAGE_SIZE};

/// The errno of the last failed system call of this thread.
pub(crate) fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

/// Nanoseconds of `CLOCK_BOOTTIME`, the clock of KFD's SMI event timestamps.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_BOOTTIME always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The process's name (`comm` of the main thread), as KFD prints it in VMFAULT events.
pub fn process_name() -> String {
    std::fs::read_to_string("/proc/self/comm").map(|s| s.trim_end().to_string()).unwrap_or_default()
}

static FORK_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static ATFORK: std::sync::Once = std::sync::Once::new();

extern "C" fn after_fork_in_child() {
    FORK_GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// A number that changes in a child process after `fork`, so that per-process caches
/// (open `/proc/self/...` descriptors) know to reopen, without a `getpid` per use.
pub fn fork_generation() -> u64 {
    ATFORK.call_once(|| {
        // SAFETY: registers a child handler that only increments an atomic (async-signal
        // safe); the prepare and parent handlers are absent.
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    });
    FORK_GENERATION.load(std::sync::atomic::Ordering::Relaxed)
}

/// Registers fork handlers (`pthread_atfork`): `prepare` runs in the forking thread before
/// the fork, `parent` and `child` after it on each side.
pub fn at_fork(prepare: extern "C" fn(), parent: extern "C" fn(), child: extern "C" fn()) {
    // SAFETY: registers plain function pointers; they run with the fork, in the forking
    // thread, where taking locks is allowed.
    unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
}

/// Unlocks `m`, which this thread locked and whose guard it forgot (to hold the lock across
/// `fork`, from the prepare handler to the parent / child handlers).
pub fn unlock_held<T>(m: &parking_lot::Mutex<T>) {
    // SAFETY: the contract above: the lock is held, by this thread, with no live guard.
    unsafe { m.force_unlock() };
}

/// Bytes of physical memory of the machine.
pub fn physical_memory_bytes() -> u64 {
    // SAFETY: sysconf only reads system configuration.
    let (pages, size) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    (pages.max(0) as u64).saturating_mul(size.max(0) as u64)
}
