//! userfaultfd: catching CPU accesses to pages whose data is not in RAM, and moving pages
//! in and out of the application's page table atomically.
//!
//! The ABI (`linux/userfaultfd.h`) is declared here: the `userfaultfd` crate needs libclang
//! to build, and the few structs and ioctl numbers are stable kernel ABI.

use super::last_errno;
use crate::error::{Error, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};

const UFFD_API: u64 = 0xaa;
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
const UFFDIO_UNREGISTER: libc::c_ulong = 0x8010_aa01;
const UFFDIO_WAKE: libc::c_ulong = 0x8010_aa02;
const UFFDIO_COPY: libc::c_ulong = 0xc028_aa03;
const UFFDIO_ZEROPAGE: libc::c_ulong = 0xc020_aa04;
const UFFDIO_COPY_MODE_DONTWAKE: u64 = 1 << 0;
const UFFDIO_MOVE: libc::c_ulong = 0xc028_aa05;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFD_FEATURE_THREAD_ID: u64 = 1 << 8;
const UFFD_FEATURE_MOVE: u64 = 1 << 16;
const UFFDIO_MOVE_MODE_DONTWAKE: u64 = 1 << 0;
const UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES: u64 = 1 << 1;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFD_EVENT_REMAP: u8 = 0x14;
const UFFD_EVENT_REMOVE: u8 = 0x15;
const UFFD_EVENT_UNMAP: u8 = 0x16;
const UFFD_FEATURE_EVENT_REMAP: u64 = 1 << 2;
const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;
const UFFD_PAGEFAULT_FLAG_WRITE: u64 = 1;
const UFFD_USER_MODE_ONLY: libc::c_int = 1;

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioMove {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    moved: i64,
}

/// `struct uffd_msg` (32 bytes): the event, then a union of three 64-bit words: page fault
/// `{ flags, address, ptid }`, remap `{ from, to, len }`, remove / unmap `{ start, end }`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct UffdMsg {
    event: u8,
    reserved1: u8,
    reserved2: u16,
    reserved3: u32,
    a0: u64,
    a1: u64,
    a2: u64,
}

/// What the userfaultfd reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UffdEvent {
    /// A thread faulted on a missing page.
    Fault(Fault),
    /// `mremap` moved `[from, from + len)` to `to`.
    Remap {
        /// Old start.
        from: usize,
        /// New start.
        to: usize,
        /// Bytes.
        len: usize,
    },
    /// `madvise(MADV_DONTNEED / MADV_REMOVE)` dropped `[start, end)`.
    Remove {
        /// First byte.
        start: usize,
        /// One past the last byte.
        end: usize,
    },
    /// `munmap` (or a shrinking `mremap`) unmapped `[start, end)`.
    Unmap {
        /// First byte.
        start: usize,
        /// One past the last byte.
        end: usize,
    },
}

/// A page fault reported by userfaultfd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The faulting address (page aligned by the kernel unless EXACT_ADDRESS).
    pub addr: usize,
    /// A write access.
    pub write: bool,
    /// The faulting thread.
    pub tid: u32,
}

/// A userfaultfd in MISSING mode with `UFFDIO_MOVE`.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
    wake: OwnedFd,
    inject: Injector,
    /// usvm's own memory `[start, start + len)` (see [`Uffd::set_own_area`]).
    own_area: (AtomicUsize, AtomicUsize),
}

/// The `UFFDIO_*` operations whose failure tests can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UffdOp {
    /// `UFFDIO_MOVE`.
    Move = 1,
    /// `UFFDIO_COPY`.
    Copy = 2,
    /// `UFFDIO_ZEROPAGE`.
    Zeropage = 3,
}

/// Fault injection (tests): the `n`-th call of an operation from now fails with an errno
/// before doing anything, as if the kernel had refused it. Each operation has its own
/// countdown, so a test can make a move and the copy that stands in for it both fail.
#[derive(Debug, Default)]
struct Injector {
    slots: [InjectSlot; 3],
}

#[derive(Debug, Default)]
struct InjectSlot {
    errno: AtomicI32,
    countdown: AtomicU64,
}

impl Injector {
    fn slot(&self, op: UffdOp) -> &InjectSlot {
        &self.slots[op as usize - 1]
    }

    /// The errno to fail this call of `op` with, if one is due.
    fn due(&self, op: UffdOp) -> Option<i32> {
        let s = self.slot(op);
        if s.countdown.load(Ordering::Acquire) == 0 {
            return None;
        }
        let fire =
            s.countdown.fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(1)) == Ok(1);
        fire.then(|| s.errno.load(Ordering::Acquire))
    }
}

fn ioctl<T>(fd: &OwnedFd, req: libc::c_ulong, arg: &mut T) -> std::result::Result<(), i32> {
    // SAFETY: every request used in this module reads and writes exactly one `T`, the
    // `#[repr(C)]` struct the kernel defines for it, which `arg` points at.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg as *mut T) };
    if r == 0 { Ok(()) } else { Err(last_errno()) }
}

/// Opens a userfaultfd (close on exec, non-blocking): for every fault, or with
/// `user_mode_only` for the application's own (user-mode) faults only, which needs no
/// privilege. The errno on failure.
pub(crate) fn open_userfaultfd(user_mode_only: bool) -> std::result::Result<OwnedFd, i32> {
    let mut flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    if user_mode_only {
        flags |= UFFD_USER_MODE_ONLY;
    }
    // SAFETY: the userfaultfd syscall takes only flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if fd < 0 {
        return Err(last_errno());
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// A userfaultfd for every fault when the process may have one, else for user-mode faults.
pub(crate) fn open_userfaultfd_best() -> std::result::Result<OwnedFd, i32> {
    open_userfaultfd(false).or_else(|_| open_userfaultfd(true))
}

/// `UFFDIO_API` on `fd` asking for `features`: the features and ioctls the kernel offers.
pub(crate) fn negotiate(fd: &OwnedFd, features: u64) -> std::result::Result<(u64, u64), i32> {
    let mut api = UffdioApi { api: UFFD_API, features, ioctls: 0 };
    ioctl(fd, UFFDIO_API, &mut api)?;
    Ok((api.features, api.ioctls))
}

impl Uffd {
    /// Opens a userfaultfd for this process's faults and negotiates the API. Faults taken
    /// inside the kernel on the application's behalf (`read(2)` into a buffer) are
    /// delivered too when the process may handle them (root here). With `events`, the
    /// application's munmap, mremap and MADV_DONTNEED on registered memory are reported
    /// (and wait until the event has been read).
    pub fn new(events: bool) -> Result<Self> {
        let sys = |call: &'static str| move |errno: i32| Error::Sys { call, errno };
        // All faults first (kernel-mode faults need privilege); user-mode only otherwise.
        let fd = open_userfaultfd_best().map_err(sys("userfaultfd"))?;
        let mut features = UFFD_FEATURE_MOVE | UFFD_FEATURE_THREAD_ID;
        if events {
            features |= UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP;
        }
        negotiate(&fd, features).map_err(sys("UFFDIO_API (needs UFFD_FEATURE_MOVE, Linux >= 6.8)"))?;
        // SAFETY: eventfd takes an initial value and flags and returns a new fd or -1.
        let w = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if w < 0 {
            return Err(Error::Sys { call: "eventfd", errno: last_errno() });
        }
        // SAFETY: `w` was just returned by the kernel and is owned by nobody else.
        let wake = unsafe { OwnedFd::from_raw_fd(w) };
        Ok(Uffd {
            fd,
            wake,
            inject: Injector::default(),
            own_area: (AtomicUsize::new(0), AtomicUsize::new(0)),
        })
    }

    /// Fault injection (tests): the `nth` call (1 = the next) of `op` fails with `errno`
    /// without doing anything.
    pub fn inject_error(&self, op: UffdOp, errno: i32, nth: u64) {
        let s = self.inject.slot(op);
        s.errno.store(errno, Ordering::Release);
        s.countdown.store(nth, Ordering::Release);
    }

    /// Names usvm's own memory `[start, start + len)` (a staging area): remap, remove and
    /// unmap events inside it are usvm's own doing (a page-table move into the staging area
    /// with [`super::mmap::move_keeping_source`] reports a REMAP there), and
    /// [`Uffd::read_event`] consumes them without returning them: they are no change of the
    /// application's. Calling it again with the same area is harmless.
    pub fn set_own_area(&self, start: usize, len: usize) {
        self.own_area.0.store(start, Ordering::Release);
        self.own_area.1.store(len, Ordering::Release);
    }

    /// Whether `[start, end)` lies inside usvm's own memory ([`Uffd::set_own_area`]).
    fn is_own(&self, start: usize, end: usize) -> bool {
        let (s, l) = (self.own_area.0.load(Ordering::Acquire), self.own_area.1.load(Ordering::Acquire));
        l > 0 && s <= start && start < end && end <= s + l
    }

    /// Registers `[addr, addr + len)` for missing-page faults. Registering again an
    /// interval already registered with this descriptor is harmless.
    pub fn register(&self, addr: usize, len: usize) -> Result<()> {
        let mut r = UffdioRegister {
            range: UffdioRange { start: addr as u64, len: len as u64 },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        ioctl(&self.fd, UFFDIO_REGISTER, &mut r)
            .map_err(|errno| Error::Sys { call: "UFFDIO_REGISTER", errno })
    }

    /// Unregisters `[addr, addr + len)`.
    pub fn unregister(&self, addr: usize, len: usize) -> Result<()> {
        let mut r = UffdioRange { start: addr as u64, len: len as u64 };
        ioctl(&self.fd, UFFDIO_UNREGISTER, &mut r)
            .map_err(|errno| Error::Sys { call: "UFFDIO_UNREGISTER", errno })
    }

    /// Maps the zero page over the missing pages of `[addr, addr + len)` and wakes the
    /// threads waiting there. Pages already present are left alone (EEXIST is success).
    pub fn zeropage(&self, addr: usize, len: usize) -> Result<()> {
        let mut z = UffdioZeropage {
            range: UffdioRange { start: addr as u64, len: len as u64 },
            mode: 0,
            zeropage: 0,
        };
        let r = match self.inject.due(UffdOp::Zeropage) {
            Some(errno) => Err(errno),
            None => ioctl(&self.fd, UFFDIO_ZEROPAGE, &mut z),
        };
        match r {
            Ok(()) => Ok(()),
            Err(libc::EEXIST) => self.wake(addr, len),
            // EAGAIN: the address space is changing (an unmap or remap event waits to be
            // read); the caller lets the thread fault again later.
            Err(errno) => Err(Error::Sys { call: "UFFDIO_ZEROPAGE", errno }),
        }
    }

    /// Moves the pages of `[src, src + len)` to `[dst, dst + len)` (which must be missing
    /// and registered with this descriptor): their page-table entries change places and no
    /// data is copied. Threads waiting at `dst` are not woken (the caller wakes them once
    /// its bookkeeping is done). With `allow_holes`, missing source pages are skipped.
    /// Returns the bytes moved (holes included) and the error that stopped the move early,
    /// if any (`EBUSY`: a page is shared or pinned; `EAGAIN`: stopped early, go on from
    /// the returned offset).
    ///
    /// The count is checked against the page tables when the kernel reports an error: a
    /// move can take pages and still not count them (see [`unreported_moves`]). Such pages
    /// are counted here and the error becomes `EAGAIN`, so that no caller mistakes a page it
    /// has just moved for one that stayed behind, or for one that was already at `dst`.
    ///
    /// # Safety
    ///
    /// Both intervals must be private anonymous memory registered with this descriptor
    /// whose pages may change owner: the data leaves `src` (which then faults to usvm) for
    /// `dst`. No Rust reference may point into either, and the caller must keep track of
    /// where each page is (the migration engine's bookkeeping), or data is lost.
    pub unsafe fn move_pages(
        &self,
        dst: usize,
        src: usize,
        len: usize,
        allow_holes: bool,
    ) -> (usize, Option<i32>) {
        let mut mode = UFFDIO_MOVE_MODE_DONTWAKE;
        if allow_holes {
            mode |= UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES;
        }
        let mut m = UffdioMove { dst: dst as u64, src: src as u64, len: len as u64, mode, moved: 0 };
        if let Some(errno) = self.inject.due(UffdOp::Move) {
            return (0, Some(errno));
        }
        match ioctl(&self.fd, UFFDIO_MOVE, &mut m) {
            Ok(()) => (len, None),
            Err(errno) => {
                let done = (m.moved.max(0)) as usize;
                match unreported_moves(dst + done, src + done, len - done) {
                    0 => (done, Some(errno)),
                    extra => (done + extra, Some(libc::EAGAIN)),
                }
            }
        }
    }

    /// Allocates fresh pages at `[dst, dst + len)` (missing, registered with this
    /// descriptor) holding a copy of `[src, src + len)`, without waking the threads
    /// waiting there: allocation, copy and mapping in one system call, and no TLB
    /// shootdown (nothing is unmapped). Returns the bytes copied and the error that
    /// stopped the copy early, if any (`EEXIST`: a destination page is present).
    pub fn copy(&self, dst: usize, src: usize, len: usize) -> (usize, Option<i32>) {
        let mut c = UffdioCopy {
            dst: dst as u64,
            src: src as u64,
            len: len as u64,
            mode: UFFDIO_COPY_MODE_DONTWAKE,
            copy: 0,
        };
        let r = match self.inject.due(UffdOp::Copy) {
            Some(errno) => Err(errno),
            None => ioctl(&self.fd, UFFDIO_COPY, &mut c),
        };
        match r {
            Ok(()) => (len, None),
            Err(errno) => (c.copy.max(0) as usize, Some(errno)),
        }
    }

    /// Wakes the threads waiting on faults in `[addr, addr + len)`.
    pub fn wake(&self, addr: usize, len: usize) -> Result<()> {
        let mut r = UffdioRange { start: addr as u64, len: len as u64 };
        ioctl(&self.fd, UFFDIO_WAKE, &mut r).map_err(|errno| Error::Sys { call: "UFFDIO_WAKE", errno })
    }

    /// Waits until an event can be read. `Ok(false)` when [`Uffd::shutdown`] was called.
    pub fn wait_readable(&self) -> Result<bool> {
        self.wait_readable_for(None)
    }

    /// [`Self::wait_readable`] for at most `timeout` (`None`: no limit); a timeout is
    /// `Ok(true)` too (reading then finds nothing).
    pub fn wait_readable_for(&self, timeout: Option<std::time::Duration>) -> Result<bool> {
        let ms = timeout.map_or(-1, |t| t.as_millis().clamp(1, i32::MAX as u128) as i32);
        loop {
            let mut fds = [
                libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: self.wake.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            ];
            // SAFETY: `fds` is a valid array of two pollfd structs for the whole call.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
            if r < 0 {
                match last_errno() {
                    libc::EINTR => continue,
                    errno => return Err(Error::Sys { call: "poll(userfaultfd)", errno }),
                }
            }
            return Ok(fds[1].revents == 0);
        }
    }

    /// Reads one event if one is queued (the descriptor is non-blocking). Events inside
    /// usvm's own memory ([`Uffd::set_own_area`]) are read and skipped.
    pub fn read_event(&self) -> Result<Option<UffdEvent>> {
        loop {
            let mut msg = UffdMsg::default();
            // SAFETY: reading one `uffd_msg` (32 bytes) into a struct of exactly that size.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    &mut msg as *mut UffdMsg as *mut libc::c_void,
                    size_of::<UffdMsg>(),
                )
            };
            if n < 0 {
                return match last_errno() {
                    libc::EINTR => continue,
                    libc::EAGAIN => Ok(None),
                    errno => Err(Error::Sys { call: "read(userfaultfd)", errno }),
                };
            }
            if n as usize != size_of::<UffdMsg>() {
                return Ok(None);
            }
            let (a0, a1, a2) = (msg.a0 as usize, msg.a1 as usize, msg.a2);
            return Ok(Some(match msg.event {
                UFFD_EVENT_PAGEFAULT => UffdEvent::Fault(Fault {
                    addr: a1 & !(super::PAGE_SIZE - 1),
                    write: msg.a0 & UFFD_PAGEFAULT_FLAG_WRITE != 0,
                    tid: a2 as u32,
                }),
                // usvm's own page-table move into its staging area: the application's
                // mapping did not move (its pages left, as with UFFDIO_MOVE).
                UFFD_EVENT_REMAP if self.is_own(a1, a1.saturating_add(a2 as usize)) => continue,
                UFFD_EVENT_REMAP => UffdEvent::Remap { from: a0, to: a1, len: a2 as usize },
                UFFD_EVENT_REMOVE | UFFD_EVENT_UNMAP if self.is_own(a0, a1) => continue,
                UFFD_EVENT_REMOVE => UffdEvent::Remove { start: a0, end: a1 },
                UFFD_EVENT_UNMAP => UffdEvent::Unmap { start: a0, end: a1 },
                _ => continue,
            }));
        }
    }

    /// Waits for the next event. `Ok(None)` when [`Uffd::shutdown`] was called.
    pub fn next_event(&self) -> Result<Option<UffdEvent>> {
        loop {
            if !self.wait_readable()? {
                return Ok(None);
            }
            if let Some(ev) = self.read_event()? {
                return Ok(Some(ev));
            }
        }
    }

    /// Waits for the next page fault, skipping other events (for descriptors opened
    /// without events). `Ok(None)` when [`Uffd::shutdown`] was called.
    pub fn next_fault(&self) -> Result<Option<Fault>> {
        loop {
            match self.next_event()? {
                None => return Ok(None),
                Some(UffdEvent::Fault(f)) => return Ok(Some(f)),
                Some(_) => {}
            }
        }
    }

    /// Makes [`Uffd::next_event`] return `None` (to stop the handler thread).
    pub fn shutdown(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a live u64 to our own eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
    }
}

/// Bytes from `(dst, src)` (at most `len`) that a failed `UFFDIO_MOVE` moved without
/// counting them: the run of pages that are present at the destination and gone from the
/// source.
///
/// The kernel's move loop (`move_pages` in mm/userfaultfd.c, Linux 6.18) keeps the error of
/// a step that asked to be retried (`-EAGAIN`: a large folio was locked by someone else, a
/// page-table entry changed) when the retry then moves a batch of page-table entries: the
/// loop sees the stale error, does not advance, and examines the address it has just moved
/// again. It finds the destination taken and stops with `EEXIST`, the batch uncounted. This
/// happens when a huge page must be split to move part of it, typically after a fork while
/// other threads write the memory. The batch stays within one 2 MiB block on both sides and
/// starts at the reported offset, so looking that far is enough. A destination page that was
/// there before the call (the kernel's EEXIST proper) still has its source page beside it;
/// a present destination page whose source is gone is one this move took.
fn unreported_moves(dst: usize, src: usize, len: usize) -> usize {
    const BLOCK: usize = 2 << 20;
    let page = super::PAGE_SIZE;
    let span = len.min(BLOCK - dst % BLOCK).min(BLOCK - src % BLOCK);
    if span == 0 {
        return 0;
    }
    // Nearly always, nothing arrived at `dst`: one entry of pagemap tells.
    if !super::pagemap::has_memory(dst, 1).is_ok_and(|v| v[0]) {
        return 0;
    }
    let n = span / page;
    let (Ok(at_dst), Ok(at_src)) = (super::pagemap::has_memory(dst, n), super::pagemap::has_memory(src, n))
    else {
        return 0;
    };
    at_dst.iter().zip(&at_src).take_while(|&(&d, &s)| d && !s).count() * page
}

/// How long a thread other than the event reader waits for the address space to settle
/// (an `EAGAIN` from `UFFDIO_MOVE` / `UFFDIO_COPY`: an event waits to be read).
pub const EAGAIN_PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);

thread_local! {
    static EVENT_READER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the calling thread as the one that reads a userfaultfd's events.
pub fn set_event_reader() {
    EVENT_READER.with(|c| c.set(true));
}

/// Whether the calling thread reads a userfaultfd's events.
pub fn is_event_reader() -> bool {
    EVENT_READER.with(|c| c.get())
}

/// Sends `sig` to thread `tid` of this process (SIGBUS for a CPU fault that cannot be
/// served, as the kernel does).
pub fn signal_thread(tid: u32, sig: libc::c_int) {
    // SAFETY: tgkill only sends a signal; the worst outcome of a stale tid is ESRCH.
    unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid as libc::c_int, sig) };
}
