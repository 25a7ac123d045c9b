//! The copy engine of one emulated GPU, in SDMA's role.
//!
//! A copy is a list of [`CopyOp`]s (host source, host destination, pages). The engine cuts
//! it into chunks of at most [`MAX_CHUNK_PAGES`] pages (KFD's
//! `AMDGPU_GTT_MAX_TRANSFER_SIZE`), runs the chunks in order and signals one fence per
//! chunk. When a chunk fails, it and every later chunk of the same copy report an error and
//! the later ones are not run, so the caller knows exactly which pages arrived.
//!
//! Small copies (at most [`INLINE_MAX_BYTES`]) run in the calling thread: a hand-off to the
//! engine thread costs ~50 us on these machines, more than copying 64 KiB. Larger copies go
//! to the engine thread, which streams them while the caller waits on the last fence.

use super::fence::Fence;
use crate::error::{Error, Result};
use crate::gpu::GpuIdx;
use crate::sys::{self, PAGE_SIZE};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// Largest chunk the engine copies under one fence (512 pages, 2 MiB).
pub const MAX_CHUNK_PAGES: u64 = 512;
/// Copies of at most this many bytes run inline, without a thread hand-off.
pub const INLINE_MAX_BYTES: usize = 64 << 10;
/// Smallest chunk a synchronous copy is cut into to share it between two threads.
pub const STRIPE_MIN_PAGES: u64 = 16;

/// One contiguous copy: `npages` pages from host address `src` to host address `dst`.
/// Both must be live mappings owned by usvm or registered with it, and must not overlap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyOp {
    /// Source host address (page aligned).
    pub src: usize,
    /// Destination host address (page aligned).
    pub dst: usize,
    /// Pages to copy.
    pub npages: u64,
}

/// The fences of one submitted copy, one per chunk, in order.
#[derive(Debug)]
pub struct CopyJob {
    /// `(first page of the chunk within the copy, pages, fence)`.
    pub chunks: Vec<(u64, u64, Fence)>,
}

impl CopyJob {
    /// Waits for every chunk; returns how many pages (from the start of the copy, in op
    /// order) arrived before the first failure, and the failure if any.
    pub fn wait(&self) -> (u64, Result<()>) {
        // Chunks run and signal in order: once the last one is signalled, all are. Waiting
        // on the last alone spares the caller a wake-up per chunk (~50 us each here).
        if let Some((_, _, last)) = self.chunks.last() {
            let _ = last.wait();
        }
        let mut done = 0;
        for (_, n, f) in &self.chunks {
            if let Err(e) = f.wait() {
                return (done, Err(e));
            }
            done += n;
        }
        (done, Ok(()))
    }
}

struct Chunk {
    op: CopyOp,
    fence: Fence,
}

struct Shared {
    gpu: GpuIdx,
    /// Test hook: the chunk with this sequence number fails (0 = never).
    fail_at: AtomicU64,
    seq: AtomicU64,
    bytes: AtomicU64,
}

impl Shared {
    /// Counts one chunk; fails it when the fault-injection hook says so.
    fn tick(&self) -> Result<()> {
        let seq = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        if self.fail_at.load(Ordering::Acquire) == seq {
            return Err(Error::CopyFailed { gpu: self.gpu.get() });
        }
        Ok(())
    }

    /// Runs one chunk, or fails it when the fault-injection hook says so.
    fn run(&self, c: &CopyOp) -> Result<()> {
        self.tick()?;
        let len = c.npages as usize * PAGE_SIZE;
        // SAFETY: a copy op's pages are live for the copy: the submitter holds them (VRAM BOs,
        // staging areas) until the op's fence signals, and source and destination differ.
        unsafe { sys::mmap::copy_streaming(c.dst, c.src, len) };
        self.bytes.fetch_add(len as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// The copy engine of one GPU.
pub struct CopyEngine {
    shared: Arc<Shared>,
    tx: Mutex<Option<mpsc::Sender<Vec<Chunk>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for CopyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CopyEngine(gpu {})", self.shared.gpu)
    }
}

impl CopyEngine {
    /// Starts the engine of GPU `gpu` (one thread, idle until work arrives).
    pub fn new(gpu: GpuIdx) -> Result<Self> {
        let shared = Arc::new(Shared {
            gpu,
            fail_at: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel::<Vec<Chunk>>();
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("usvm-sdma{gpu}"))
            .spawn(move || {
                for job in rx {
                    let mut failed: Option<Error> = None;
                    for c in job {
                        let r = match &failed {
                            Some(e) => Err(e.clone()),
                            None => s.run(&c.op),
                        };
                        if let Err(e) = &r {
                            failed.get_or_insert(e.clone());
                        }
                        c.fence.signal(r);
                    }
                }
            })
            .map_err(|e| Error::Sys { call: "spawn", errno: e.raw_os_error().unwrap_or(libc::EAGAIN) })?;
        Ok(CopyEngine { shared, tx: Mutex::new(Some(tx)), thread: Some(thread) })
    }

    /// Submits a copy; the chunks run in order. See the module docs for inline copies.
    pub fn copy(&self, ops: &[CopyOp]) -> CopyJob {
        let (chunks, jobs, pages) = Self::chunked(ops, MAX_CHUNK_PAGES);
        if pages as usize * PAGE_SIZE <= INLINE_MAX_BYTES {
            self.run_inline(jobs);
        } else {
            self.send(jobs);
        }
        CopyJob { chunks }
    }

    /// Copies and waits, as the migrations do: the number of pages that arrived (from the
    /// start, in op order) and the first failure. The caller would only wait, so it works
    /// as a second copy ring: the copy is cut into at least two chunks, the engine thread
    /// takes the second half and the caller runs the first (each half in order). Two
    /// threads move ~1.4x the bytes of one here.
    pub fn copy_sync(&self, ops: &[CopyOp]) -> (u64, Result<()>) {
        let total: u64 = ops.iter().map(|o| o.npages).sum();
        if total as usize * PAGE_SIZE <= INLINE_MAX_BYTES {
            let (chunks, jobs, _) = Self::chunked(ops, MAX_CHUNK_PAGES);
            self.run_inline(jobs);
            return CopyJob { chunks }.wait();
        }
        let max = total.div_ceil(2).clamp(STRIPE_MIN_PAGES, MAX_CHUNK_PAGES);
        let (chunks, mut jobs, _) = Self::chunked(ops, max);
        let theirs = jobs.split_off(jobs.len().div_ceil(2));
        self.send(theirs);
        self.run_inline(jobs);
        CopyJob { chunks }.wait()
    }

    /// Cuts `ops` into chunks of at most `max` pages: the fences (with each chunk's first
    /// page and size), the chunks, and the total pages.
    fn chunked(ops: &[CopyOp], max: u64) -> (Vec<(u64, u64, Fence)>, Vec<Chunk>, u64) {
        let mut chunks = Vec::new();
        let mut jobs = Vec::new();
        let mut at = 0;
        for op in ops {
            let mut off = 0;
            while off < op.npages {
                let n = (op.npages - off).min(max);
                let byte_off = off as usize * PAGE_SIZE;
                let c = Chunk {
                    op: CopyOp { src: op.src + byte_off, dst: op.dst + byte_off, npages: n },
                    fence: Fence::new(),
                };
                chunks.push((at, n, c.fence.clone()));
                jobs.push(c);
                at += n;
                off += n;
            }
        }
        (chunks, jobs, at)
    }

    /// Runs chunks in order in this thread; after a failure the rest fail unrun.
    fn run_inline(&self, jobs: Vec<Chunk>) {
        let mut failed: Option<Error> = None;
        for c in jobs {
            let r = match &failed {
                Some(e) => Err(e.clone()),
                None => self.shared.run(&c.op),
            };
            if let Err(e) = &r {
                failed.get_or_insert(e.clone());
            }
            c.fence.signal(r);
        }
    }

    /// Hands chunks to the engine thread (they fail if it is gone).
    fn send(&self, jobs: Vec<Chunk>) {
        if jobs.is_empty() {
            return;
        }
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let unsent = match tx.as_ref() {
            Some(t) => t.send(jobs).err().map(|e| e.0),
            None => Some(jobs),
        };
        if let Some(jobs) = unsent {
            for c in jobs {
                c.fence.signal(Err(Error::CopyFailed { gpu: self.shared.gpu.get() }));
            }
        }
    }

    /// Accounts for a copy of `bytes` done by the kernel on the engine's behalf (small
    /// migrations back to RAM use `UFFDIO_COPY`): counts as one chunk, so the
    /// fault-injection hook applies to it too.
    pub fn account_external(&self, bytes: usize) -> Result<()> {
        self.shared.tick()?;
        self.shared.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Fault injection (tests): the `n`-th chunk from now fails (`n` >= 1); 0 disarms.
    pub fn fail_chunk_in(&self, n: u64) {
        let at = if n == 0 { 0 } else { self.shared.seq.load(Ordering::Acquire) + n };
        self.shared.fail_at.store(at, Ordering::Release);
    }

    /// Bytes copied so far.
    #[cfg(test)]
    pub fn bytes_copied(&self) -> u64 {
        self.shared.bytes.load(Ordering::Relaxed)
    }
}

impl Drop for CopyEngine {
    fn drop(&mut self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffers(pages: usize) -> (usize, usize) {
        let len = pages * PAGE_SIZE;
        let a = sys::mmap::reserve(len).unwrap();
        let b = sys::mmap::reserve(len).unwrap();
        for i in 0..pages {
            // SAFETY: memory this test mapped and owns, live until its unmap.
            unsafe { sys::mmap::fill(a + i * PAGE_SIZE, PAGE_SIZE, (i % 251) as u8 + 1) };
        }
        (a, b)
    }

    fn page_byte(addr: usize, i: usize) -> u8 {
        let mut b = [0u8; 1];
        // SAFETY: memory this test mapped and owns, live until its unmap.
        unsafe { sys::mmap::copy_from(addr + i * PAGE_SIZE + 17, &mut b) };
        b[0]
    }

    #[test]
    fn chunks_of_512_pages_in_order_with_data_intact() {
        let e = CopyEngine::new(GpuIdx::new(0)).unwrap();
        let (a, b) = buffers(1300);
        // Two ops: 1100 pages, then 200 pages placed in reverse halves.
        let ops = [
            CopyOp { src: a, dst: b + 200 * PAGE_SIZE, npages: 1100 },
            CopyOp { src: a + 1100 * PAGE_SIZE, dst: b, npages: 200 },
        ];
        let job = e.copy(&ops);
        let sizes: Vec<(u64, u64)> = job.chunks.iter().map(|(at, n, _)| (*at, *n)).collect();
        assert_eq!(sizes, vec![(0, 512), (512, 512), (1024, 76), (1100, 200)]);
        assert_eq!(job.wait(), (1300, Ok(())));
        assert!(job.chunks.iter().all(|(_, _, f)| f.is_signaled()));
        for i in 0..1100 {
            assert_eq!(page_byte(b, 200 + i), (i % 251) as u8 + 1);
        }
        for i in 0..200 {
            assert_eq!(page_byte(b, i), ((1100 + i) % 251) as u8 + 1);
        }
        assert_eq!(e.bytes_copied(), 1300 * PAGE_SIZE as u64);
    }

    #[test]
    fn a_failed_chunk_and_the_rest_report_errors() {
        let e = CopyEngine::new(GpuIdx::new(1)).unwrap();
        let (a, b) = buffers(1536);
        e.fail_chunk_in(2);
        let job = e.copy(&[CopyOp { src: a, dst: b, npages: 1536 }]);
        let (done, r) = job.wait();
        assert_eq!(done, 512, "only the first chunk arrived");
        assert_eq!(r.unwrap_err().errno(), libc::EIO);
        let results: Vec<bool> = job.chunks.iter().map(|(_, _, f)| f.wait().is_ok()).collect();
        assert_eq!(results, vec![true, false, false]);
        assert_eq!(page_byte(b, 511), (511 % 251) as u8 + 1);
        assert_eq!(page_byte(b, 512), 0, "the failed chunk wrote nothing");
        assert_eq!(page_byte(b, 1100), 0, "later chunks did not run");
        // The hook fires once; the engine keeps working.
        assert_eq!(e.copy_sync(&[CopyOp { src: a, dst: b, npages: 1536 }]), (1536, Ok(())));
    }

    #[test]
    fn small_copies_run_inline() {
        let e = CopyEngine::new(GpuIdx::new(0)).unwrap();
        let (a, b) = buffers(16);
        let job = e.copy(&[CopyOp { src: a, dst: b, npages: 16 }]);
        // Inline: signalled before `copy` returned, on this thread.
        assert!(job.chunks.iter().all(|(_, _, f)| f.is_signaled()));
        assert_eq!(page_byte(b, 15), 16);
        e.fail_chunk_in(1);
        assert_eq!(e.copy_sync(&[CopyOp { src: a, dst: b, npages: 1 }]).0, 0);
    }
}
