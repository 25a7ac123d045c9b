//! The CPU fault path: a thread per instance reads the userfaultfd.
//!
//! ```text
//!  fault on page p ──> p not out of RAM (never populated, or dropped by the application)
//!         |              -> zero page, right here (needs only the `out` set's lock)
//!         └─────────> p's data is in VRAM (or moving)
//!                        -> state lock free?  migrate the granule back right here
//!                           (one wake-up in all, the cheapest path)
//!                        -> state lock busy?  hand the fault to the worker thread, which
//!                           waits for the lock; this thread stays free to serve the
//!                           zero-page faults that the lock holder may be waiting for
//! ```
//!
//! A fault that cannot be served (the migration back failed) gets SIGBUS on the faulting
//! thread, as the kernel's `migrate_to_ram` failure does; the handler thread never dies
//! silently, since faulting threads would wait forever.

use crate::range::PageNo;
use crate::svms::SvmInner;
use crate::sys::uffd::{Fault, Uffd, signal_thread};
use crate::sys::{PAGE_SHIFT, PAGE_SIZE};
use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;

/// The fault-handling threads of one instance.
#[derive(Debug)]
pub struct CpuFaultHandler {
    uffd: Arc<Uffd>,
    reader: Option<JoinHandle<()>>,
    worker: Option<JoinHandle<()>>,
}

fn serve_slow(inner: &SvmInner, page: PageNo, f: Fault, st: &mut crate::svms::SvmState) {
    if inner.cpu_fault(st, page).is_err() {
        // As the kernel does when migrate_to_ram fails: SIGBUS, then let the thread run
        // into it (a thread left waiting would hang forever).
        signal_thread(f.tid, libc::SIGBUS);
        let _ = inner.engine.uffd.wake(f.addr, PAGE_SIZE);
    }
}

impl CpuFaultHandler {
    /// Starts the threads for `inner`, reading `uffd`.
    pub fn start(inner: Weak<SvmInner>, uffd: Arc<Uffd>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Fault>();
        let w = inner.clone();
        let worker = std::thread::Builder::new().name("usvm-fault-worker".into()).spawn(move || {
            for f in rx {
                // An instance that is gone has closed its userfaultfd, which woke every
                // waiting thread: nothing left to do.
                let Some(inner) = w.upgrade() else { continue };
                let page = (f.addr >> PAGE_SHIFT) as PageNo;
                let mut st = inner.state.lock();
                serve_slow(&inner, page, f, &mut st);
            }
        })?;
        let u = uffd.clone();
        let reader = std::thread::Builder::new().name("usvm-fault".into()).spawn(move || {
            loop {
                let f = match u.next_fault() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        eprintln!("usvm: userfaultfd read failed: {e}");
                        std::thread::sleep(std::time::Duration::from_millis(1));
                        continue;
                    }
                };
                let page = (f.addr >> PAGE_SHIFT) as PageNo;
                let Some(inner) = inner.upgrade() else {
                    // The instance is gone: its memory is plain memory again.
                    let _ = u.zeropage(f.addr, PAGE_SIZE);
                    continue;
                };
                match inner.engine.resolve_if_in_ram(page) {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(_) => {
                        signal_thread(f.tid, libc::SIGBUS);
                        continue;
                    }
                }
                match inner.state.try_lock() {
                    Some(mut st) => serve_slow(&inner, page, f, &mut st),
                    None => {
                        if tx.send(f).is_err() {
                            signal_thread(f.tid, libc::SIGBUS);
                        }
                    }
                }
            }
        })?;
        Ok(CpuFaultHandler { uffd, reader: Some(reader), worker: Some(worker) })
    }
}

impl Drop for CpuFaultHandler {
    fn drop(&mut self) {
        self.uffd.shutdown();
        if let Some(t) = self.reader.take() {
            let _ = t.join();
        }
        if let Some(t) = self.worker.take() {
            let _ = t.join();
        }
    }
}
