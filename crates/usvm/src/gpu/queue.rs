//! Compute queues: device kernels are Rust closures that touch memory only through a
//! [`KernelCtx`], run in submission order on the queue's own thread, and signal a
//! [`Fence`] with their result. While the GPU's queues are evicted, a kernel pauses before
//! its next memory access (KernelCtx waits), which is how preemption looks from inside.

use super::fence::Fence;
use super::{Access, Devices};
use crate::attr::GpuId;
use crate::error::{Error, Result};
use crate::gpu::GpuIdx;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};

/// What a device kernel sees: loads and stores through its GPU's page table.
pub struct KernelCtx {
    devs: Arc<Devices>,
    gpu: GpuIdx,
}

impl KernelCtx {
    /// A device load of `buf.len()` bytes at `addr`: same rules as `Svm::gpu_read`.
    pub fn read(&mut self, addr: usize, buf: &mut [u8]) -> Result<()> {
        self.devs.access(self.gpu, addr, Access::Read(buf))
    }

    /// A device store of `data` at `addr`: same rules as `Svm::gpu_write`.
    pub fn write(&mut self, addr: usize, data: &[u8]) -> Result<()> {
        self.devs.access(self.gpu, addr, Access::Write(data))
    }

    /// Loads a little-endian `u64`.
    pub fn read_u64(&mut self, addr: usize) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Stores a little-endian `u64`.
    pub fn write_u64(&mut self, addr: usize, v: u64) -> Result<()> {
        self.write(addr, &v.to_le_bytes())
    }

    /// The GPU this kernel runs on.
    pub fn gpu(&self) -> GpuId {
        self.devs.gpus[self.gpu].id
    }
}

type Kernel = Box<dyn FnOnce(&mut KernelCtx) -> Result<()> + Send>;

/// A user-mode compute queue of one GPU. Dropping it waits for the kernels already
/// submitted; shader dispatches ([`Queue::submit_isa`]) stop at their next time slice.
pub struct Queue {
    gpu: GpuId,
    stop: Arc<AtomicBool>,
    tx: Option<mpsc::Sender<(Kernel, Fence)>>,
    thread: Option<std::thread::JoinHandle<()>>,
    on_drop: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Queue(gpu {})", self.gpu)
    }
}

impl Queue {
    /// A queue on GPU `gpu`; `on_drop` runs after the queue is gone.
    pub(crate) fn new(
        devs: Arc<Devices>,
        gpu: GpuIdx,
        on_drop: Box<dyn FnOnce() + Send + Sync>,
    ) -> Result<Self> {
        let id = devs.gpus[gpu].id;
        let (tx, rx) = mpsc::channel::<(Kernel, Fence)>();
        let thread = std::thread::Builder::new()
            .name(format!("usvm-queue-{id}"))
            .spawn(move || {
                let mut ctx = KernelCtx { devs, gpu };
                for (k, fence) in rx {
                    let r = catch_unwind(AssertUnwindSafe(|| k(&mut ctx))).unwrap_or_else(|p| {
                        let msg = p
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| p.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "panic".into());
                        Err(Error::KernelPanic(msg))
                    });
                    fence.signal(r);
                }
            })
            .map_err(|e| Error::Sys { call: "spawn", errno: e.raw_os_error().unwrap_or(libc::EAGAIN) })?;
        let stop = Arc::new(AtomicBool::new(false));
        Ok(Queue { gpu: id, stop, tx: Some(tx), thread: Some(thread), on_drop: Some(on_drop) })
    }

    /// The queue's GPU.
    pub fn gpu(&self) -> GpuId {
        self.gpu
    }

    /// Submits a kernel; it runs after the kernels submitted before it. The fence carries
    /// its result (a panic inside the kernel becomes an error).
    pub fn submit<F>(&self, kernel: F) -> Fence
    where
        F: FnOnce(&mut KernelCtx) -> Result<()> + Send + 'static,
    {
        let fence = Fence::new();
        let sent = self.tx.as_ref().map(|tx| tx.send((Box::new(kernel), fence.clone())));
        if !matches!(sent, Some(Ok(()))) {
            fence.signal(Err(Error::QueueGone));
        }
        fence
    }

    /// Submits a shader dispatch: the gfx90a machine code at `launch.code` runs on the
    /// queue's GPU (every wave to its end), after the work submitted before it. The fence
    /// carries its result: a fatal memory fault as `Error::GpuVmFault`, an instruction the
    /// interpreter cannot run as `Error::KernelPanic` with its message, a dispatch cut
    /// short by dropping the queue as `Error::QueueGone`.
    pub fn submit_isa(&self, launch: super::isa::Launch) -> Fence {
        let stop = self.stop.clone();
        self.submit(move |ctx| {
            super::isa::run_dispatch(&ctx.devs, ctx.gpu, &launch, &stop).map(drop).map_err(|e| match e {
                super::isa::IsaError::Fault(e) => e,
                super::isa::IsaError::Stopped => Error::QueueGone,
                e => Error::KernelPanic(e.to_string()),
            })
        })
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(f) = self.on_drop.take() {
            f();
        }
    }
}
