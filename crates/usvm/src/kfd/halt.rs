//! How a user queue halts, shared by the SDMA and the compute engine: a fatal GPU fault goes
//! to the memory-exception events (with the page, not-present or read-only), and every
//! halt is recorded for [`super::queue::Queues::error`] and, when the application asked
//! for it at creation (`hsaKmtCreateQueue`'s event and `ErrorReason`), written to its
//! error-reason word and signalled on its event. A halted queue executes nothing more but
//! can still be destroyed.

use super::events::{Events, MemoryFault};
use crate::error::Error;
use crate::gpu::Devices;
use crate::gpu::GpuIdx;
use parking_lot::Mutex;

/// KFD exception codes (`kfd_dbg_trap_exception_code`) a halted queue reports.
pub mod ec {
    /// A wave executed an instruction the shader core does not know.
    pub const QUEUE_WAVE_ILLEGAL_INSTRUCTION: u32 = 4;
    /// A memory violation (a fatal GPU VM fault).
    pub const QUEUE_WAVE_MEMORY_VIOLATION: u32 = 5;
    /// A packet the queue does not execute.
    pub const QUEUE_PACKET_UNSUPPORTED: u32 = 20;
    /// `KFD_EC_MASK`: the bit of exception code `ec`, as the error-reason word holds it.
    pub const fn mask(ec: u32) -> u64 {
        1 << (ec - 1)
    }
}

/// Why a queue stopped executing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// A packet the engine does not execute (unknown, or a refused form): its header and
    /// what is wrong.
    Packet {
        /// The packet's header dword.
        header: u32,
        /// What is wrong with it.
        why: String,
    },
    /// A fatal GPU VM fault at `addr`.
    Fault {
        /// The faulting byte address.
        addr: u64,
        /// A store.
        write: bool,
    },
    /// A shader stopped with an error other than a fault (an unknown instruction, ...).
    Shader(String),
    /// Any other failure of the engine.
    Failed(String),
}

impl QueueError {
    /// The KFD exception code this error reports ([`ec`]).
    pub fn exception_code(&self) -> u32 {
        match self {
            QueueError::Packet { .. } | QueueError::Failed(_) => ec::QUEUE_PACKET_UNSUPPORTED,
            QueueError::Fault { .. } => ec::QUEUE_WAVE_MEMORY_VIOLATION,
            QueueError::Shader(_) => ec::QUEUE_WAVE_ILLEGAL_INSTRUCTION,
        }
    }
}

impl std::fmt::Display for QueueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueError::Packet { header, why } => write!(f, "packet {header:#010x}: {why}"),
            QueueError::Fault { addr, write } => {
                write!(f, "fatal GPU fault on a {} at {addr:#x}", if *write { "store" } else { "load" })
            }
            QueueError::Shader(s) => write!(f, "shader error: {s}"),
            QueueError::Failed(s) => write!(f, "{s}"),
        }
    }
}

/// Where the application wants to hear that a queue halted (`hsaKmtCreateQueue`'s `Event`
/// and `QueueResource.ErrorReason`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorReport {
    /// An event to signal.
    pub event: Option<u32>,
    /// The address of a 64-bit word that gets the exception mask ([`ec::mask`]).
    pub reason: Option<usize>,
}

/// A queue's halt state.
#[derive(Debug, Default)]
pub(crate) struct Status {
    error: Mutex<Option<QueueError>>,
    report: ErrorReport,
}

impl Status {
    /// A running queue that reports a halt to `report`.
    pub(crate) fn new(report: ErrorReport) -> Self {
        Status { error: Mutex::new(None), report }
    }

    /// The error the queue halted with, if it did.
    pub(crate) fn error(&self) -> Option<QueueError> {
        self.error.lock().clone()
    }

    /// Records that the queue of GPU `gpu` (node `node`) halted with `e` (the first halt
    /// counts), then tells the application: a fault goes to the memory-exception events,
    /// every halt to the error-reason word and event it asked for.
    pub(crate) fn halt(
        &self,
        devs: &Devices,
        events: &Events,
        (gpu, node): (GpuIdx, u32),
        engine: &str,
        e: QueueError,
    ) {
        tracing::warn!(gpu = %gpu, error = %e, "{engine} queue halted");
        {
            let mut slot = self.error.lock();
            if slot.is_some() {
                return;
            }
            *slot = Some(e.clone());
        }
        if let QueueError::Fault { addr, write } = e {
            events.signal_memory_fault(memory_fault(devs, (gpu, node), addr, write));
        }
        if let Some(at) = self.report.reason {
            // The application's own word: a bad address is its mistake, never a crash.
            let mut word = ec::mask(e.exception_code()).to_le_bytes();
            if crate::sys::mmap::copy_checked(at, &mut word, true) != word.len() {
                tracing::debug!(at, "the queue's ErrorReason word could not be written");
            }
        }
        if let Some(ev) = self.report.event
            && events.set(ev).is_err()
        {
            tracing::debug!(ev, "the queue's error event does not exist");
        }
    }
}

/// The error a queue halts with after a failed device access.
pub(crate) fn access_failed(e: &Error) -> QueueError {
    match e {
        Error::GpuVmFault { addr, write, .. } => QueueError::Fault { addr: *addr, write: *write },
        e => QueueError::Failed(e.to_string()),
    }
}

/// A fatal fault of GPU `gpu` (node `node`) as a memory-exception event reports it: its
/// page, and whether the page was read-only or not present.
fn memory_fault(devs: &Devices, (gpu, node): (GpuIdx, u32), addr: u64, write: bool) -> MemoryFault {
    let page_no = crate::addr::PageNo::of_addr(addr as usize);
    let page = page_no.addr() as u64;
    let pte = devs.gpus[gpu].pt.get(page_no);
    // A store the mapping refuses: a read-only GPU entry, or (system pages, whose entries
    // stay writable when the application mprotects them) a mapping of the process that is
    // present but not writable.
    let vma_read_only =
        || crate::sys::vma::lookup(page as usize, false).ok().flatten().is_some_and(|v| v.read && !v.write);
    let read_only = write && pte.valid() && (!pte.writable() || vma_read_only());
    MemoryFault { node, addr: page, not_present: !read_only, read_only, no_execute: false }
}
