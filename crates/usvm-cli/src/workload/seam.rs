//! The seam between the workloads and the library: a buffer ([`Buf`]), a kernel's view of
//! memory ([`K`]) and a launched kernel ([`Launched`]). Each does what the library's own
//! type does, and with `--record` tells the recorder ([`Capture`]) what it touched, when
//! and for how long, so that `usvm replay` can do it again.

use crate::replay::Capture;
use std::sync::Arc;
use usvm::{Fence, KernelCtx, SvmBuffer};

/// A workload's buffer: [`SvmBuffer`]'s CPU accesses, recorded.
#[derive(Clone)]
pub struct Buf {
    mem: Arc<SvmBuffer>,
    id: u32,
    cap: Capture,
}

impl Buf {
    /// Wraps `mem`, buffer number `id` of the recording `cap`.
    pub fn new(mem: SvmBuffer, id: u32, cap: Capture) -> Self {
        Buf { mem: Arc::new(mem), id, cap }
    }

    /// First byte address.
    pub fn addr(&self) -> usize {
        self.mem.addr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.mem.len()
    }

    /// CPU stores of `data` at `offset`.
    pub fn write_at(&self, offset: usize, data: &[u8]) {
        let t = self.cap.now();
        self.mem.write_at(offset, data);
        self.cap.cpu(self.id, offset, data.len(), true, t);
    }

    /// CPU loads into `out` from `offset`.
    pub fn read_at(&self, offset: usize, out: &mut [u8]) {
        let t = self.cap.now();
        self.mem.read_at(offset, out);
        self.cap.cpu(self.id, offset, out.len(), false, t);
    }
}

/// A kernel's loads and stores ([`KernelCtx`]'s), recorded as kernel `kernel`'s.
pub struct K<'a> {
    ctx: &'a mut KernelCtx,
    cap: &'a Capture,
    kernel: u32,
}

impl<'a> K<'a> {
    /// Wraps a kernel context.
    pub fn new(ctx: &'a mut KernelCtx, cap: &'a Capture, kernel: u32) -> Self {
        K { ctx, cap, kernel }
    }

    fn note<T>(&self, addr: usize, len: usize, write: bool, t: u64, r: usvm::Result<T>) -> usvm::Result<T> {
        self.cap.gpu(self.kernel, addr, len, write, t);
        r
    }

    /// A device load of `buf.len()` bytes at `addr`.
    pub fn read(&mut self, addr: usize, buf: &mut [u8]) -> usvm::Result<()> {
        let t = self.cap.now();
        let r = self.ctx.read(addr, buf);
        self.note(addr, buf.len(), false, t, r)
    }

    /// A device store of `data` at `addr`.
    pub fn write(&mut self, addr: usize, data: &[u8]) -> usvm::Result<()> {
        let t = self.cap.now();
        let r = self.ctx.write(addr, data);
        self.note(addr, data.len(), true, t, r)
    }

    /// A device load of the word at `addr`.
    pub fn read_u64(&mut self, addr: usize) -> usvm::Result<u64> {
        let t = self.cap.now();
        let r = self.ctx.read_u64(addr);
        self.note(addr, 8, false, t, r)
    }

    /// A device store of the word `v` at `addr`.
    pub fn write_u64(&mut self, addr: usize, v: u64) -> usvm::Result<()> {
        let t = self.cap.now();
        let r = self.ctx.write_u64(addr, v);
        self.note(addr, 8, true, t, r)
    }
}

/// A submitted kernel: its fence, and waiting for it is recorded.
pub struct Launched {
    fence: Fence,
    kernel: u32,
    cap: Capture,
}

impl Launched {
    /// Wraps the fence of kernel `kernel`.
    pub fn new(fence: Fence, kernel: u32, cap: Capture) -> Self {
        Launched { fence, kernel, cap }
    }

    /// Waits for the kernel; its result.
    pub fn wait(&self) -> usvm::Result<()> {
        let t = self.cap.now();
        let r = self.fence.wait();
        self.cap.wait(self.kernel, t);
        r
    }
}
