//! The CPU side of the application's memory: a reader thread per instance drains the
//! userfaultfd, and a worker thread does what needs the instance lock.
//!
//! ```text
//!  fault on page p ──> p not out of RAM (never populated, or dropped by the application)
//!         |              -> zero pages for the holes of p's 2 MiB block, right here
//!         |                 (needs only the `out` set's lock)
//!         └─────────> p's data is in VRAM (or moving)
//!                        -> instance lock free, nothing pending, range mapped on no
//!                           GPU?  migrate the granule back right here
//!                        -> else hand the fault to the worker, which waits for the
//!                           lock; the reader stays free to serve the zero-page faults
//!                           that the lock holder (or a device access it waits for)
//!                           may be waiting for
//!  munmap / MADV_DONTNEED / mremap of registered memory (the MMU notifier's events)
//!         -> adjust the `out` set right away (a refault must not see stale state),
//!            queue the change for the next lock holder, nudge the worker to apply it
//! ```
//!
//! A fault that cannot be served (the migration back failed) gets SIGBUS on the faulting
//! thread, as the kernel's `migrate_to_ram` failure does, then a wake-up; the threads never
//! die silently, since faulting threads would wait forever.

use crate::addr::Pages;
use crate::instance::{PendingOp, RESTORE_DELAY, SvmInner, SvmState, Work};
use crate::range::PageNo;
use crate::sys::PAGE_SIZE;
use crate::sys::uffd::{Fault, Uffd, UffdEvent, signal_thread};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;

/// How long the reader waits for an event before it tries its parked faults again.
pub const PARKED_RETRY: std::time::Duration = std::time::Duration::from_millis(1);

/// The fault-handling threads of one instance.
#[derive(Debug)]
pub struct CpuFaultHandler {
    uffd: Arc<Uffd>,
    reader: Option<JoinHandle<()>>,
    worker: Option<JoinHandle<()>>,
}

/// What became of a fault the reader thread handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Served, failed (SIGBUS), or handed to the worker: nothing left to do here.
    Done,
    /// `EAGAIN`: the address space is changing under an event not read yet. The thread is
    /// left waiting and the reader tries again once it has read further (waking it would
    /// only bring the same fault back first: the kernel hands out faults before events, so
    /// the event stayed unread while the reader spun on the refault).
    Retry,
}

/// Who is handling a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Handler {
    /// The reader, on a fault message it just read: parks it on `EAGAIN`.
    Reader,
    /// The reader, trying a parked fault again. Its thread may have gone on meanwhile (a
    /// migration's wake-up over the granule released it), so a failure only wakes it: a
    /// thread still waiting faults again and its new message is handled afresh, while a
    /// SIGBUS could hit a thread that is elsewhere by now.
    Parked,
    /// The worker, on a fault the reader handed over: lets the thread fault again on
    /// `EAGAIN` (the reader is free to read the event meanwhile).
    Worker,
}

/// A fault that cannot be served (`why`), as `h` handles failures.
fn give_up(inner: &SvmInner, f: Fault, why: &dyn std::fmt::Display, h: Handler) -> Outcome {
    if h == Handler::Parked {
        tracing::debug!(addr = format_args!("{:#x}", f.addr), %why, "parked CPU fault: woken to fault again");
        let _ = inner.engine.uffd.wake(f.addr, PAGE_SIZE);
    } else {
        fail(inner, f, why);
    }
    Outcome::Done
}

/// Serves a fault on a page whose data is out of RAM, with the instance lock held.
fn serve_slow(inner: &SvmInner, page: PageNo, f: Fault, st: &mut SvmState, h: Handler) -> Outcome {
    match inner.cpu_fault(st, page, f.write) {
        Ok(()) => Outcome::Done,
        Err(e) if e.errno() == libc::EAGAIN && h != Handler::Worker => Outcome::Retry,
        Err(e) if e.errno() == libc::EAGAIN => {
            let _ = inner.engine.uffd.wake(f.addr, PAGE_SIZE);
            Outcome::Done
        }
        Err(e) => give_up(inner, f, &e, h),
    }
}

/// A fault that cannot be served (`why`): SIGBUS, then a wake-up.
fn fail(inner: &SvmInner, f: Fault, why: &dyn std::fmt::Display) {
    tracing::warn!(addr = format_args!("{:#x}", f.addr), tid = f.tid, %why, "CPU fault cannot be served: SIGBUS");
    // As the kernel does when migrate_to_ram fails: SIGBUS, then let the thread run into it
    // (a thread left waiting would hang forever).
    signal_thread(f.tid, libc::SIGBUS);
    let _ = inner.engine.uffd.wake(f.addr, PAGE_SIZE);
}

/// [`on_event`], surviving a panic inside it (a bug, or a logger whose output went away):
/// the reader must never die, since every later fault would wait forever. A fault whose
/// handling panicked gets SIGBUS, like any fault that cannot be served.
fn on_event_guarded(inner: &SvmInner, ev: UffdEvent, h: Handler) -> Outcome {
    match catch_unwind(AssertUnwindSafe(|| on_event(inner, ev, h))) {
        Ok(o) => o,
        Err(_) => match ev {
            UffdEvent::Fault(f) => give_up(inner, f, &"its handler panicked", h),
            _ => Outcome::Done,
        },
    }
}

/// Reads the next event. For the application's munmap, MADV_DONTNEED and mremap, the
/// pages' "out of RAM" state changes under the same hold of the `out` lock as the read:
/// a migration putting data back into the application checks that state and does its
/// ioctl under that lock (`Engine::commit_in`), so it either comes before the event (the
/// ioctl fails with EAGAIN, or the kernel's unmap or zap that follows the read removes the
/// data), or after it and skips the pages: stale data never lands in memory the
/// application dropped.
fn read_event(inner: &SvmInner, u: &Uffd) -> crate::error::Result<Option<UffdEvent>> {
    let pages = |a: usize, b: usize| (PageNo::of_addr(a), (PageNo::of_addr(b)).saturating_sub(1));
    let mut out = inner.engine.out.lock();
    let ev = u.read_event()?;
    match ev {
        Some(UffdEvent::Unmap { start, end }) => {
            let (s, l) = pages(start, end);
            out.on_unmap(Pages::new(s, l));
        }
        Some(UffdEvent::Remove { start, end }) => {
            // The kernel zaps the pages after this read: until then a migration may still
            // collect their old data (see `OutOfRam::dropped`).
            let (s, l) = pages(start, end);
            out.on_remove(Pages::new(s, l));
        }
        Some(UffdEvent::Remap { from, to, len }) => {
            let (s, l) = pages(from, from + len);
            out.on_remap(Pages::new(s, l), PageNo::of_addr(to));
        }
        _ => {}
    }
    Ok(ev)
}

/// The reader's part of an event.
fn on_event(inner: &SvmInner, ev: UffdEvent, h: Handler) -> Outcome {
    let pages = |a: usize, b: usize| (PageNo::of_addr(a), (PageNo::of_addr(b)).saturating_sub(1));
    let op = match ev {
        UffdEvent::Fault(f) => {
            let page = PageNo::of_addr(f.addr);
            return match inner.engine.resolve_if_in_ram(page) {
                Ok(true) => Outcome::Done,
                Ok(false) => match inner.try_lock_for_reader(page) {
                    Some((mut st, hold)) => {
                        let o = serve_slow(inner, page, f, &mut st, h);
                        drop(st);
                        drop(hold);
                        o
                    }
                    None => {
                        inner.post(Work::Fault(f));
                        Outcome::Done
                    }
                },
                Err(e) if e.errno() == libc::EAGAIN => Outcome::Retry,
                Err(e) => give_up(inner, f, &e, h),
            };
        }
        // The `out` set was adjusted when the event was read (`read_event`).
        UffdEvent::Unmap { start, end } => {
            let (s, l) = pages(start, end);
            PendingOp::Unmap { start: s, last: l }
        }
        UffdEvent::Remove { start, end } => {
            let (s, l) = pages(start, end);
            PendingOp::Remove { start: s, last: l }
        }
        UffdEvent::Remap { from, to, len } => {
            let (s, l) = pages(from, from + len);
            let t = PageNo::of_addr(to);
            PendingOp::Remap { from: s, to: t, npages: l - s + 1 }
        }
    };
    inner.push_pending(op);
    inner.post(Work::Flush);
    Outcome::Done
}

impl CpuFaultHandler {
    /// Starts the threads for `inner`, reading `uffd`.
    pub fn start(inner: &Arc<SvmInner>, uffd: Arc<Uffd>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Work>();
        let _ = inner.work.set(tx);
        let w: Weak<SvmInner> = Arc::downgrade(inner);
        let worker =
            std::thread::Builder::new().name("usvm-worker".into()).spawn(move || worker_loop(&w, rx))?;
        let r: Weak<SvmInner> = Arc::downgrade(inner);
        let u = uffd.clone();
        let reader =
            std::thread::Builder::new().name("usvm-fault".into()).spawn(move || reader_loop(&r, &u))?;
        Ok(CpuFaultHandler { uffd, reader: Some(reader), worker: Some(worker) })
    }
}

/// The worker thread: faults handed over by the reader, flushes, the restore work.
fn worker_loop(w: &Weak<SvmInner>, rx: mpsc::Receiver<Work>) {
    for job in rx {
        // An instance that is gone has closed its userfaultfd, which woke every
        // waiting thread: nothing left to do.
        let Some(inner) = w.upgrade() else { continue };
        // As for the reader: a panic must not end the worker.
        let fault = if let Work::Fault(f) = &job { Some(*f) } else { None };
        let handled = catch_unwind(AssertUnwindSafe(|| match job {
            Work::Fault(f) => {
                let mut st = inner.lock_state();
                serve_slow(&inner, PageNo::of_addr(f.addr), f, &mut st, Handler::Worker);
            }
            Work::Flush => drop(inner.lock_state()),
            Work::Restore => {
                std::thread::sleep(RESTORE_DELAY);
                inner.restore_work();
            }
            Work::ReadAhead { after, n, addr, to } => {
                let mut st = inner.lock_state();
                inner.read_ahead(&mut st, (after, n), addr, Some(to));
            }
        }));
        if let (Err(_), Some(f)) = (handled, fault) {
            fail(&inner, f, &"its handler panicked");
        }
    }
}

/// The reader thread: reads the userfaultfd's faults and events (see the module docs).
fn reader_loop(r: &Weak<SvmInner>, u: &Arc<Uffd>) {
    crate::sys::uffd::set_event_reader();
    // Faults that met EAGAIN, their threads still waiting: tried again after the
    // next event is read, or after PARKED_RETRY without one.
    let mut parked: Vec<Fault> = Vec::new();
    loop {
        let timeout = (!parked.is_empty()).then_some(PARKED_RETRY);
        match u.wait_readable_for(timeout) {
            Ok(true) => {}
            Ok(false) => {
                for f in parked.drain(..) {
                    let _ = u.wake(f.addr, PAGE_SIZE);
                }
                break;
            }
            Err(e) => {
                tracing::error!("userfaultfd poll failed: {e}");
                std::thread::sleep(std::time::Duration::from_millis(1));
                continue;
            }
        }
        let Some(inner) = r.upgrade() else {
            // The instance is gone: its memory is plain memory again.
            if let Ok(Some(UffdEvent::Fault(f))) = u.read_event() {
                let _ = u.zeropage(f.addr, PAGE_SIZE);
            }
            continue;
        };
        // Read and take in the event under the gate: the application's munmap or
        // madvise returns as soon as its event is read, and whoever takes the
        // instance lock next must find the change queued (see `lock_state`).
        // Device accesses starting meanwhile see `reading_event` and wait at the
        // gate (`GpuFaultHandler::settle`). A fault leaves the gate before it is
        // handled: handling it may take long, and needs no gate.
        let gate = inner.event_gate.lock();
        inner.devs.reading_event.store(true, std::sync::atomic::Ordering::SeqCst);
        let read = read_event(&inner, u);
        if let Ok(Some(ev)) = read
            && !matches!(ev, UffdEvent::Fault(_))
        {
            on_event_guarded(&inner, ev, Handler::Reader); // queues the change
        }
        inner.devs.reading_event.store(false, std::sync::atomic::Ordering::SeqCst);
        drop(gate);
        let retry_parked = match read {
            Ok(Some(UffdEvent::Fault(f))) => {
                inner.events.cpu_fault();
                if on_event_guarded(&inner, UffdEvent::Fault(f), Handler::Reader) == Outcome::Retry {
                    parked.push(f);
                }
                false
            }
            Ok(_) => true,
            Err(e) => {
                tracing::error!("userfaultfd read failed: {e}");
                true
            }
        };
        if retry_parked {
            for f in std::mem::take(&mut parked) {
                if on_event_guarded(&inner, UffdEvent::Fault(f), Handler::Parked) == Outcome::Retry {
                    parked.push(f);
                }
            }
        }
    }
}

impl Drop for CpuFaultHandler {
    fn drop(&mut self) {
        self.uffd.shutdown();
        if let Some(t) = self.reader.take() {
            let _ = t.join();
        }
        // The worker ends when its inbox closes: the instance (which holds the sender) is
        // dropped before this handler.
        if let Some(t) = self.worker.take() {
            let _ = t.join();
        }
    }
}
