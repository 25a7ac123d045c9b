//! Memory the emulated GPU shares with the application: pages of 64-bit words it reads and
//! writes (a queue's read and write pointers), and doorbells, pages whose stores the
//! device notices by itself, without polling: the page is write-protected through a
//! userfaultfd (`UFFDIO_REGISTER_MODE_WP`), so the application's store faults, the fault
//! wakes the device's thread, which lets the store through and looks at the queue. While
//! nothing rings, the thread sleeps in `poll(2)`.

use super::{PAGE_SIZE, last_errno};
use crate::error::{Error, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
const UFFDIO_WRITEPROTECT: libc::c_ulong = 0xc018_aa06;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
const UFFD_FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;

/// How long a doorbell waits for the store it let through to land before protecting the
/// page again (a store arriving later faults again: nothing is lost, it costs a round).
const STORE_PATIENCE: std::time::Duration = std::time::Duration::from_millis(2);

#[repr(C)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioWriteprotect {
    start: u64,
    len: u64,
    mode: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdMsg {
    event: u8,
    reserved: [u8; 7],
    flags: u64,
    address: u64,
    ptid: u64,
}

/// One page of anonymous memory holding 64-bit words that the application and the device
/// both access (atomically); unmapped on drop, left out of children made by `fork`.
#[derive(Debug)]
pub struct SharedPage {
    addr: usize,
}

impl SharedPage {
    /// A zeroed page.
    pub fn new() -> Result<Self> {
        let addr = super::mmap::map_anon_aligned(PAGE_SIZE, PAGE_SIZE)?;
        super::mmap::advise_dontfork(addr, PAGE_SIZE);
        super::mmap::populate(addr, PAGE_SIZE)?;
        Ok(SharedPage { addr })
    }

    /// The page's address.
    pub fn addr(&self) -> usize {
        self.addr
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < PAGE_SIZE / 8, "word {i} is outside the page");
        // SAFETY: the page is mapped read-write for as long as `self` lives, the word is
        // inside it and 8-byte aligned, and every access to it (ours or the application's
        // plain 64-bit stores and loads) is a single aligned access, which AtomicU64
        // tolerates.
        unsafe { &*((self.addr + i * 8) as *const AtomicU64) }
    }

    /// Word `i` (acquire).
    pub fn load(&self, i: usize) -> u64 {
        self.word(i).load(Ordering::Acquire)
    }

    /// Sets word `i` (release: what was written before is visible to whoever sees it).
    pub fn store(&self, i: usize, v: u64) {
        self.word(i).store(v, Ordering::Release)
    }
}

impl Drop for SharedPage {
    fn drop(&mut self) {
        // SAFETY: the page this value mapped; its owners (queues, engines) hold the value.
        let _ = unsafe { super::mmap::unmap(self.addr, PAGE_SIZE) };
    }
}

/// A doorbell: a [`SharedPage`] whose stores wake [`Doorbell::wait`].
#[derive(Debug)]
pub struct Doorbell {
    page: SharedPage,
    uffd: OwnedFd,
    stop: OwnedFd,
}

fn ioctl<T>(fd: &OwnedFd, req: libc::c_ulong, arg: &mut T, call: &'static str) -> Result<()> {
    // SAFETY: every request used here reads and writes exactly one `T`, the `#[repr(C)]`
    // struct the kernel defines for it, which `arg` points at.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg as *mut T) };
    if r == 0 { Ok(()) } else { Err(Error::Sys { call, errno: last_errno() }) }
}

impl Doorbell {
    /// A zeroed doorbell page, write-protected.
    pub fn new() -> Result<Self> {
        let page = SharedPage::new()?;
        // The doorbell's faults are the application's own stores (user mode): without the
        // privilege for kernel-mode faults, a user-mode-only descriptor does as well.
        let uffd = super::uffd::open_userfaultfd_best()
            .map_err(|errno| Error::Sys { call: "userfaultfd", errno })?;
        super::uffd::negotiate(&uffd, UFFD_FEATURE_PAGEFAULT_FLAG_WP)
            .map_err(|errno| Error::Sys { call: "UFFDIO_API (write-protect)", errno })?;
        let mut reg = UffdioRegister {
            start: page.addr as u64,
            len: PAGE_SIZE as u64,
            mode: UFFDIO_REGISTER_MODE_WP,
            ioctls: 0,
        };
        ioctl(&uffd, UFFDIO_REGISTER, &mut reg, "UFFDIO_REGISTER (write-protect)")?;
        // SAFETY: eventfd takes an initial value and flags and returns a new fd or -1.
        let w = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if w < 0 {
            return Err(Error::Sys { call: "eventfd", errno: last_errno() });
        }
        // SAFETY: `w` was just returned by the kernel and is owned by nobody else.
        let stop = unsafe { OwnedFd::from_raw_fd(w) };
        let d = Doorbell { page, uffd, stop };
        d.protect(true)?;
        Ok(d)
    }

    /// The doorbell's address (its first word is the one applications store to).
    pub fn addr(&self) -> usize {
        self.page.addr
    }

    /// The doorbell's first word.
    pub fn value(&self) -> u64 {
        self.page.load(0)
    }

    /// Stores `v` to the doorbell, as an application does: the store faults while the page
    /// is protected and lands once the device's thread has let it through.
    pub fn ring(&self, v: u64) {
        self.page.store(0, v);
    }

    fn protect(&self, on: bool) -> Result<()> {
        let mode = if on { UFFDIO_WRITEPROTECT_MODE_WP } else { 0 };
        let mut wp = UffdioWriteprotect { start: self.page.addr as u64, len: PAGE_SIZE as u64, mode };
        ioctl(&self.uffd, UFFDIO_WRITEPROTECT, &mut wp, "UFFDIO_WRITEPROTECT")
    }

    /// Sleeps until the doorbell rings (a store to its page) or `timeout` passes; lets the
    /// store through, waits briefly for it to land, and protects the page again, so that
    /// whatever the caller reads next was written before the ring, and the next store
    /// rings again. `Ok(false)` once [`Doorbell::shut`] was called.
    pub fn wait(&self, timeout: Option<std::time::Duration>) -> Result<bool> {
        let ms = timeout.map_or(-1, |t| t.as_millis().clamp(1, i32::MAX as u128) as i32);
        let before = self.value();
        let mut fds = [
            libc::pollfd { fd: self.uffd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: self.stop.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: `fds` is a valid array of two pollfd structs for the whole call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        if r < 0 && last_errno() != libc::EINTR {
            return Err(Error::Sys { call: "poll(doorbell)", errno: last_errno() });
        }
        if fds[1].revents != 0 {
            return Ok(false);
        }
        let mut rang = false;
        loop {
            let mut msg = UffdMsg::default();
            // SAFETY: reading one `uffd_msg` (32 bytes) into a struct of exactly that size.
            let n = unsafe {
                libc::read(
                    self.uffd.as_raw_fd(),
                    &mut msg as *mut UffdMsg as *mut libc::c_void,
                    size_of::<UffdMsg>(),
                )
            };
            if n != size_of::<UffdMsg>() as isize {
                break;
            }
            rang |= msg.event == UFFD_EVENT_PAGEFAULT;
        }
        if rang {
            // Let the store through (this wakes the storing threads), wait for it to land,
            // then arm again.
            self.protect(false)?;
            let since = std::time::Instant::now();
            while self.value() == before && since.elapsed() < STORE_PATIENCE {
                std::thread::yield_now();
            }
            self.protect(true)?;
        }
        Ok(true)
    }

    /// Makes [`Doorbell::wait`] return `Ok(false)` (to stop the device's thread).
    pub fn shut(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a live u64 to our own eventfd.
        unsafe { libc::write(self.stop.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
    }
}

impl Drop for Doorbell {
    fn drop(&mut self) {
        // Nobody may stay blocked on a store: lift the protection before the page goes.
        let _ = self.protect(false);
    }
}

/// A connected pair of stream sockets: one end for the application (a file descriptor it
/// owns and closes), the other kept by usvm.
#[derive(Debug)]
pub struct SocketEnd {
    fd: OwnedFd,
}

impl SocketEnd {
    /// A new pair: usvm's end, and the raw descriptor of the application's end (close on
    /// exec), which the caller hands over.
    pub fn pair() -> Result<(SocketEnd, i32)> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a valid out-array of two ints.
        let r = unsafe {
            libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr())
        };
        if r != 0 {
            return Err(Error::Sys { call: "socketpair", errno: last_errno() });
        }
        // SAFETY: `fds[0]` was just returned by the kernel and is owned by nobody else.
        let ours = unsafe { OwnedFd::from_raw_fd(fds[0]) };
        Ok((SocketEnd { fd: ours }, fds[1]))
    }

    /// The words (little-endian u64s) the other end has written and usvm has not read yet,
    /// without waiting; `None` when the other end is closed.
    pub fn pending_u64s(&self) -> Option<Vec<u64>> {
        let mut out = Vec::new();
        let mut buf = [0u8; 8];
        let mut got = 0;
        loop {
            // With a word started, wait for its rest (8-byte writes arrive whole).
            let flags = if got == 0 { libc::MSG_DONTWAIT } else { 0 };
            // SAFETY: receiving into the live array `buf`, at most its remaining length.
            let n = unsafe {
                libc::recv(self.fd.as_raw_fd(), buf[got..].as_mut_ptr() as *mut libc::c_void, 8 - got, flags)
            };
            if n < 0 {
                match last_errno() {
                    libc::EINTR => continue,
                    libc::EAGAIN => return Some(out),
                    _ => return None,
                }
            }
            if n == 0 {
                return None;
            }
            got += n as usize;
            if got == 8 {
                out.push(u64::from_le_bytes(buf));
                got = 0;
            }
        }
    }

    /// Writes all of `data`; false when the other end is closed.
    pub fn write_all(&self, data: &[u8]) -> bool {
        let mut done = 0;
        while done < data.len() {
            // SAFETY: sending from the live slice `data`; MSG_NOSIGNAL turns a closed peer
            // into EPIPE instead of SIGPIPE.
            let n = unsafe {
                libc::send(
                    self.fd.as_raw_fd(),
                    data[done..].as_ptr() as *const libc::c_void,
                    data.len() - done,
                    libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 && last_errno() == libc::EINTR {
                continue;
            }
            if n <= 0 {
                return false;
            }
            done += n as usize;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_rings_the_doorbell_and_lands() {
        let d = std::sync::Arc::new(Doorbell::new().unwrap());
        let addr = d.addr();
        let t = std::thread::spawn(move || {
            // SAFETY: the doorbell page is mapped read-write for the test's duration.
            unsafe { std::ptr::write_volatile(addr as *mut u64, 42) };
        });
        assert!(d.wait(Some(std::time::Duration::from_secs(5))).unwrap());
        t.join().unwrap();
        assert_eq!(d.value(), 42);
        // Armed again: the next store rings too.
        let t = std::thread::spawn(move || {
            // SAFETY: as above.
            unsafe { std::ptr::write_volatile(addr as *mut u64, 43) };
        });
        assert!(d.wait(Some(std::time::Duration::from_secs(5))).unwrap());
        t.join().unwrap();
        assert_eq!(d.value(), 43);
        d.shut();
        assert!(!d.wait(None).unwrap());
    }

    #[test]
    fn a_socket_pair_carries_words_and_lines() {
        let (ours, theirs) = SocketEnd::pair().unwrap();
        // SAFETY: `theirs` was just made by socketpair and is owned by this test.
        let theirs = unsafe { OwnedFd::from_raw_fd(theirs) };
        let v = 0x10u64.to_le_bytes();
        // SAFETY: writing 8 bytes from a live array to our own socket.
        assert_eq!(unsafe { libc::write(theirs.as_raw_fd(), v.as_ptr() as *const libc::c_void, 8) }, 8);
        assert_eq!(ours.pending_u64s(), Some(vec![0x10]));
        assert_eq!(ours.pending_u64s(), Some(vec![]));
        assert!(ours.write_all(b"5 1 -2\n"));
        let mut b = [0u8; 16];
        // SAFETY: reading into a live array.
        let n = unsafe { libc::read(theirs.as_raw_fd(), b.as_mut_ptr() as *mut libc::c_void, 16) };
        assert_eq!(&b[..n as usize], b"5 1 -2\n");
        drop(theirs);
        assert_eq!(ours.pending_u64s(), None);
        assert!(!ours.write_all(b"x"));
    }
}
