//! User queues (`hsaKmtCreateQueue` / `hsaKmtDestroyQueue`). SDMA queues execute real SDMA
//! packets on an engine thread per queue ([`super::sdma`]); compute queues execute PM4
//! packets, their dispatches through the wave interpreter ([`super::cp`]); AQL queues are
//! created and destroyed, and count for the XNACK rule, but execute nothing (AQL packets
//! are not emulated). Every queue counts as one of the process's queues: while any exists,
//! XNACK cannot change. A queue that halts (a fatal fault, a packet it does not execute)
//! reports it ([`super::halt`]) and can still be destroyed.

use super::cp;
use super::events::Events;
use super::halt::{ErrorReport, QueueError, Status};
use super::sdma::{self, RPTR_WORD, WPTR_WORD};
use super::{KfdError, KfdResult};
use crate::gpu::Devices;
use crate::gpu::GpuIdx;
use crate::svm::Svm;
use crate::sys::doorbell::{Doorbell, SharedPage};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The kinds of queues (`HSA_QUEUE_TYPE` values usvm accepts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueKind {
    /// A PM4 compute queue (`HSA_QUEUE_COMPUTE`).
    Compute,
    /// An AQL compute queue (`HSA_QUEUE_COMPUTE_AQL`): created, never executed.
    ComputeAql,
    /// An SDMA queue on a PCIe engine.
    Sdma,
    /// An SDMA queue on an XGMI engine.
    SdmaXgmi,
}

/// What the application gets for a queue (`HsaQueueResource`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueResource {
    /// The queue's id.
    pub id: u64,
    /// The 64-bit doorbell the application stores the write pointer to.
    pub doorbell: usize,
    /// The 64-bit write pointer, never wrapped: bytes for SDMA, dwords for compute queues.
    pub write_ptr: usize,
    /// The 64-bit read pointer the engine advances: bytes, never wrapped, for SDMA; for
    /// compute queues the dwords consumed modulo the ring's size in dwords.
    pub read_ptr: usize,
}

/// A queue's doorbell.
enum Bell {
    /// Served by an engine thread.
    Watched(Arc<Doorbell>),
    /// A page the application stores to and nobody reads.
    Plain(SharedPage),
}

impl Bell {
    fn addr(&self) -> usize {
        match self {
            Bell::Watched(d) => d.addr(),
            Bell::Plain(p) => p.addr(),
        }
    }
}

/// What every queue engine thread (SDMA, compute) works with: the GPU and its node, the
/// ring and its pointers, the doorbell, the stop flag and the halt status.
pub(crate) struct EngineCtx {
    pub(crate) devs: Arc<Devices>,
    pub(crate) events: Arc<Events>,
    pub(crate) gpu: GpuIdx,
    pub(crate) node: u32,
    pub(crate) ring: usize,
    pub(crate) ring_bytes: u64,
    pub(crate) ptrs: Arc<SharedPage>,
    pub(crate) doorbell: Arc<Doorbell>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) status: Arc<Status>,
}

/// The doorbell and engine thread of a new queue of `kind`: an SDMA or a compute engine
/// serving a watched doorbell, or, for AQL queues, a plain doorbell page and no engine.
fn start(
    svm: &Svm,
    events: &Arc<Events>,
    (gpu, node, kind): (usize, u32, QueueKind),
    (ring, ring_bytes): (usize, u64),
    (ptrs, stop, status): (&Arc<SharedPage>, &Arc<AtomicBool>, &Arc<Status>),
) -> KfdResult<(Bell, Option<std::thread::JoinHandle<()>>)> {
    if kind == QueueKind::ComputeAql {
        return Ok((Bell::Plain(SharedPage::new()?), None));
    }
    let bell = Arc::new(Doorbell::new()?);
    let gpu = GpuIdx::new(gpu);
    let (devs, events, doorbell) = (svm.inner().devs.clone(), events.clone(), bell.clone());
    let (ptrs, stop, status) = (ptrs.clone(), stop.clone(), status.clone());
    let t = if kind == QueueKind::Compute {
        let e =
            cp::Engine(EngineCtx { devs, events, gpu, node, ring, ring_bytes, ptrs, doorbell, stop, status });
        spawn(format!("usvm-cpq{gpu}"), move || e.run())?
    } else {
        let e = sdma::Engine(EngineCtx {
            devs,
            events,
            gpu,
            node,
            ring,
            ring_bytes,
            ptrs,
            doorbell,
            stop,
            status,
        });
        spawn(format!("usvm-sdmaq{gpu}"), move || e.run())?
    };
    Ok((Bell::Watched(bell), Some(t)))
}

/// Starts an engine thread.
fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> KfdResult<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name(name).spawn(f).map_err(|e| {
        crate::Error::Sys { call: "spawn", errno: e.raw_os_error().unwrap_or(libc::EAGAIN) }.into()
    })
}

/// Smallest ring usvm accepts, bytes.
pub const MIN_RING_BYTES: u64 = 256;

struct Live {
    /// Read and write pointers.
    ptrs: Arc<SharedPage>,
    /// The doorbell: watched for SDMA and compute queues (an engine thread serves its
    /// stores), a plain page for AQL queues, which execute nothing (a watched page nobody
    /// served would block the application's store for ever).
    doorbell: Bell,
    stop: Arc<AtomicBool>,
    status: Arc<Status>,
    engine: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("rptr", &self.ptrs.load(RPTR_WORD))
            .field("wptr", &self.ptrs.load(WPTR_WORD))
            .finish()
    }
}

/// The queues of one KFD.
#[derive(Debug, Default)]
pub struct Queues {
    live: Mutex<BTreeMap<u64, Live>>,
    next: AtomicU64,
}

impl Queues {
    /// `hsaKmtCreateQueue` on GPU `gpu` (index) of node `node`: `ring` is the ring's address
    /// (GPU-mapped memory of the application), `ring_bytes` a power of two; a halt of the
    /// queue is reported to `report`.
    pub fn create(
        &self,
        svm: &Svm,
        events: &Arc<Events>,
        (gpu, node): (usize, u32),
        kind: QueueKind,
        (ring, ring_bytes): (usize, u64),
        report: ErrorReport,
    ) -> KfdResult<QueueResource> {
        if ring == 0 || !ring.is_multiple_of(4) {
            return Err(KfdError::InvalidParameter("ring address"));
        }
        if ring_bytes < MIN_RING_BYTES || !ring_bytes.is_power_of_two() {
            return Err(KfdError::InvalidParameter("ring size must be a power of two of at least 256 bytes"));
        }
        let ptrs = Arc::new(SharedPage::new()?);
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(Status::new(report));
        let (doorbell, engine) =
            start(svm, events, (gpu, node, kind), (ring, ring_bytes), (&ptrs, &stop, &status))?;
        svm.inner().lock_state().queues += 1;
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let res = QueueResource {
            id,
            doorbell: doorbell.addr(),
            write_ptr: ptrs.addr() + WPTR_WORD * 8,
            read_ptr: ptrs.addr() + RPTR_WORD * 8,
        };
        self.live.lock().insert(id, Live { ptrs, doorbell, stop, status, engine });
        Ok(res)
    }

    /// Why queue `id` halted (`None` while it runs).
    pub fn error(&self, id: u64) -> KfdResult<Option<QueueError>> {
        let live = self.live.lock();
        Ok(live.get(&id).ok_or(KfdError::InvalidHandle("queue"))?.status.error())
    }

    /// `hsaKmtDestroyQueue`: stops the queue (a packet under way finishes first) and frees it;
    /// also for a queue halted by a fault.
    pub fn destroy(&self, svm: &Svm, id: u64) -> KfdResult<()> {
        let q = self.live.lock().remove(&id).ok_or(KfdError::InvalidHandle("queue"))?;
        Self::stop(svm, q);
        Ok(())
    }

    fn stop(svm: &Svm, mut q: Live) {
        q.stop.store(true, Ordering::Release);
        if let Bell::Watched(d) = &q.doorbell {
            d.shut();
        }
        if let Some(t) = q.engine.take() {
            let _ = t.join();
        }
        svm.inner().lock_state().queues -= 1;
    }

    /// Publishes the write pointer `wptr` of queue `id` and rings its doorbell, as an
    /// application's two stores do (for Rust callers; C programs store directly).
    pub fn submit(&self, id: u64, wptr: u64) -> KfdResult<()> {
        let (ptrs, doorbell) = {
            let live = self.live.lock();
            let q = live.get(&id).ok_or(KfdError::InvalidHandle("queue"))?;
            let Bell::Watched(d) = &q.doorbell else {
                return Err(KfdError::NotSupported("AQL queues execute nothing"));
            };
            (q.ptrs.clone(), d.clone())
        };
        ptrs.store(WPTR_WORD, wptr);
        doorbell.ring(wptr);
        Ok(())
    }

    /// The read pointer of queue `id`: how far the engine has executed.
    pub fn read_ptr(&self, id: u64) -> KfdResult<u64> {
        let live = self.live.lock();
        Ok(live.get(&id).ok_or(KfdError::InvalidHandle("queue"))?.ptrs.load(RPTR_WORD))
    }

    /// How many queues exist.
    pub fn count(&self) -> usize {
        self.live.lock().len()
    }

    /// Destroys every queue (closing the KFD).
    pub(crate) fn destroy_all(&self, svm: &Svm) {
        let all = std::mem::take(&mut *self.live.lock());
        for (_, q) in all {
            Self::stop(svm, q);
        }
    }
}
