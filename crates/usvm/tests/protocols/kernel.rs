//! The kernel's side, as usvm sees it: the application's pages (present or missing, and
//! their data) and the userfaultfd (fault messages to the reader thread, wake-ups). One
//! kernel-internal lock stands for the page-table lock and the uffd wait queue: every
//! ioctl is atomic, and it is a leaf (usvm never holds it).

use crate::shim::{Condvar, Mutex, mpsc};

/// A message the reader thread reads (`UffdEvent`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ev {
    /// A missing-page fault of a thread at page `0`.
    Fault(usize),
    /// munmap of page `0` (EVENT_UNMAP).
    Unmap(usize),
    /// The model is over: the reader ends.
    Stop,
}

#[derive(Clone, Copy, Debug, Default)]
struct Page {
    present: bool,
    value: u64,
    /// Wake-ups so far (UFFDIO_WAKE, or an ioctl that wakes).
    wakes: u64,
}

/// The application's memory and its userfaultfd.
pub struct Kernel {
    mem: Mutex<Vec<Page>>,
    cv: Condvar,
    tx: Mutex<mpsc::Sender<Ev>>,
    /// Non-cooperative events read so far (the munmap caller returns once its is read).
    read_events: Mutex<u64>,
    read_cv: Condvar,
}

impl Kernel {
    /// `pages` pages, `Some(v)` present with data `v`, `None` missing; and the reader's end.
    pub fn new(pages: &[Option<u64>]) -> (Self, mpsc::Receiver<Ev>) {
        let (tx, rx) = mpsc::channel();
        let mem =
            pages.iter().map(|p| Page { present: p.is_some(), value: p.unwrap_or(0), wakes: 0 }).collect();
        let k = Kernel {
            mem: Mutex::new(mem),
            cv: Condvar::new(),
            tx: Mutex::new(tx),
            read_events: Mutex::new(0),
            read_cv: Condvar::new(),
        };
        (k, rx)
    }

    /// Queues a message for the reader.
    pub fn send(&self, ev: Ev) {
        let _ = self.tx.lock().send(ev);
    }

    /// A load by any thread of the process (an application thread, or a usvm thread
    /// copying a system page in `copy_chunk`): a missing page sends a fault message and
    /// sleeps until woken, then the access is retried (it faults again if still missing).
    pub fn load(&self, p: usize) -> u64 {
        let mut m = self.mem.lock();
        loop {
            if m[p].present {
                return m[p].value;
            }
            let seen = m[p].wakes;
            self.send(Ev::Fault(p));
            while m[p].wakes == seen {
                self.cv.wait(&mut m);
            }
        }
    }

    /// What a child forked now would see at `p` (no userfaultfd there): the data, or
    /// `None` for a missing page (it would read as zero).
    pub fn snapshot(&self, p: usize) -> Option<u64> {
        let m = self.mem.lock();
        m[p].present.then_some(m[p].value)
    }

    /// UFFDIO_ZEROPAGE (wakes; EEXIST also wakes, as `Uffd::zeropage` does).
    pub fn zeropage(&self, p: usize) {
        let mut m = self.mem.lock();
        if !m[p].present {
            m[p].present = true;
            m[p].value = 0;
        }
        m[p].wakes += 1;
        self.cv.notify_all();
    }

    /// UFFDIO_MOVE / UFFDIO_COPY into the application without waking; `false` (EEXIST)
    /// when the application has the page already (its data is kept).
    pub fn move_in(&self, p: usize, v: u64) -> bool {
        let mut m = self.mem.lock();
        if m[p].present {
            return false;
        }
        m[p].present = true;
        m[p].value = v;
        true
    }

    /// UFFDIO_MOVE out of the application (collection): the page's data, `None` for a hole.
    pub fn move_out(&self, p: usize) -> Option<u64> {
        let mut m = self.mem.lock();
        let was = m[p].present.then_some(m[p].value);
        m[p].present = false;
        was
    }

    /// UFFDIO_WAKE.
    pub fn wake(&self, p: usize) {
        let mut m = self.mem.lock();
        m[p].wakes += 1;
        self.cv.notify_all();
    }

    /// munmap / MADV_DONTNEED by the application: the page goes, then the event is sent
    /// and the call returns once the reader has read it (`userfaultfd_event_wait_completion`).
    pub fn drop_page_and_wait(&self, p: usize, ev: Ev) {
        self.mem.lock()[p].present = false;
        let mut r = self.read_events.lock();
        let before = *r;
        self.send(ev);
        while *r == before {
            self.read_cv.wait(&mut r);
        }
    }

    /// The reader has read a non-cooperative event: its caller may return.
    pub fn event_read(&self) {
        *self.read_events.lock() += 1;
        self.read_cv.notify_all();
    }
}
