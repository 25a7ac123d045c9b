//! `usvm run W --record FILE`: the recorder at the workload seam. The workloads reach
//! memory only through [`crate::workload`]'s buffers, kernel contexts and SET_ATTR calls,
//! which report here what they did: this turns addresses into (buffer, offset), GPU ids
//! into indices and threads into numbers, and writes the records as they come.

use super::format::{AttrRec, Encoder, Header, Op, Place, Rec, Span};
use anyhow::{Context, Result, anyhow};
use parking_lot::Mutex;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::ThreadId;
use usvm::{Attr, GpuId, Location};

/// A recorder, or none (every call is then a no-op). Cheap to clone.
#[derive(Clone, Default)]
pub struct Capture(Option<Arc<Shared>>);

struct Shared {
    path: PathBuf,
    t0: u64,
    gpus: Vec<GpuId>,
    state: Mutex<State>,
}

struct State {
    enc: Option<Encoder<BufWriter<File>>>,
    /// The first write error, reported by `finish`.
    io: Option<std::io::Error>,
    threads: Vec<ThreadId>,
    /// Buffers: first byte and length, by number.
    bufs: Vec<(usize, usize)>,
    queues: u32,
    kernels: u32,
    /// Why the trace would not replay faithfully (the first reason).
    lost: Option<String>,
}

/// What `finish` wrote.
pub struct Written {
    /// The file.
    pub path: PathBuf,
    /// Records.
    pub records: u64,
    /// Bytes.
    pub bytes: u64,
}

impl State {
    fn thread(&mut self) -> u32 {
        let me = std::thread::current().id();
        match self.threads.iter().position(|&t| t == me) {
            Some(i) => i as u32,
            None => {
                self.threads.push(me);
                self.threads.len() as u32 - 1
            }
        }
    }

    /// The buffer holding all of `[addr, addr + len)`.
    fn span(&mut self, addr: usize, len: usize) -> Option<Span> {
        let found = self.bufs.iter().position(|&(a, n)| addr >= a && addr - a + len <= n);
        if found.is_none() && self.lost.is_none() {
            self.lost = Some(format!(
                "the workload touched {addr:#x} (+{len} bytes), outside the buffers it allocated"
            ));
        }
        found.map(|b| Span { buf: b as u32, off: (addr - self.bufs[b].0) as u64, len: len as u64 })
    }

    fn write(&mut self, r: Rec) {
        if let (Some(enc), None) = (self.enc.as_mut(), self.io.as_ref())
            && let Err(e) = enc.record(&r)
        {
            self.io = Some(e);
        }
    }
}

impl Capture {
    /// No recording.
    pub fn off() -> Self {
        Capture(None)
    }

    /// Records into a new file at `path`; `gpus` are the instance's GPUs in index order.
    pub fn to_file(path: &Path, header: &Header, gpus: Vec<GpuId>) -> Result<Self> {
        let f = File::create(path).with_context(|| format!("creating the record {}", path.display()))?;
        let enc = Encoder::new(BufWriter::with_capacity(1 << 20, f), header)
            .with_context(|| format!("writing the record {}", path.display()))?;
        let state = State {
            enc: Some(enc),
            io: None,
            threads: Vec::new(),
            bufs: Vec::new(),
            queues: 0,
            kernels: 0,
            lost: None,
        };
        let shared =
            Shared { path: path.to_path_buf(), t0: usvm::clock_ns(), gpus, state: Mutex::new(state) };
        Ok(Capture(Some(Arc::new(shared))))
    }

    /// Whether anything is recorded.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// The time to pass as `start_ns` to the recording calls (0 when off: no clock read).
    pub fn now(&self) -> u64 {
        if self.is_on() { usvm::clock_ns() } else { 0 }
    }

    /// Writes a record of `op` that started at `start_ns` and ends now; `f` may look the
    /// op up in the state first (and return `None` to write nothing).
    fn rec(&self, start_ns: u64, cpu: bool, f: impl FnOnce(&mut State) -> Option<Op>) {
        let Some(s) = &self.0 else { return };
        let end = usvm::clock_ns();
        let mut st = s.state.lock();
        let Some(op) = f(&mut st) else { return };
        let thread = if cpu { st.thread() } else { 0 };
        let at_ns = start_ns.saturating_sub(s.t0);
        st.write(Rec { thread, at_ns, dur_ns: end.saturating_sub(start_ns), op });
    }

    /// A buffer was allocated at `[addr, addr + len)`; returns its number.
    pub fn alloc(&self, addr: usize, len: usize, start_ns: u64) -> u32 {
        let mut id = 0;
        self.rec(start_ns, true, |st| {
            st.bufs.push((addr, len));
            id = st.bufs.len() as u32 - 1;
            Some(Op::Alloc { buf: id, len: len as u64 })
        });
        id
    }

    /// SET_ATTR on `[addr, addr + len)`.
    pub fn set_attr(&self, addr: usize, len: usize, attrs: &[Attr], start_ns: u64) {
        let Some(s) = &self.0 else { return };
        let recs: Option<Vec<AttrRec>> = attrs.iter().map(|a| attr(&s.gpus, *a)).collect();
        self.rec(start_ns, true, |st| {
            let span = st.span(addr, len)?;
            match recs {
                Some(attrs) => Some(Op::SetAttr { span, attrs }),
                None => {
                    st.lost.get_or_insert_with(|| "a SET_ATTR named a GPU the instance does not have".into());
                    None
                }
            }
        });
    }

    /// A CPU access of `len` bytes at `off` in buffer `buf`.
    pub fn cpu(&self, buf: u32, off: usize, len: usize, write: bool, start_ns: u64) {
        self.rec(start_ns, true, |_| {
            Some(Op::Cpu { span: Span { buf, off: off as u64, len: len as u64 }, write })
        });
    }

    /// A queue was created on GPU `g`; returns its number.
    pub fn queue(&self, g: GpuId, start_ns: u64) -> u32 {
        let Some(s) = &self.0 else { return 0 };
        let gpu = s.gpus.iter().position(|&x| x == g).unwrap_or(0) as u32;
        let mut id = 0;
        self.rec(start_ns, true, |st| {
            id = st.queues;
            st.queues += 1;
            Some(Op::Queue { queue: id, gpu })
        });
        id
    }

    /// A kernel is being submitted to queue `queue`; returns its number.
    pub fn launch(&self, queue: u32) -> u32 {
        let mut id = 0;
        self.rec(self.now(), true, |st| {
            id = st.kernels;
            st.kernels += 1;
            Some(Op::Launch { kernel: id, queue })
        });
        id
    }

    /// Kernel `kernel` accessed `[addr, addr + len)`.
    pub fn gpu(&self, kernel: u32, addr: usize, len: usize, write: bool, start_ns: u64) {
        self.rec(start_ns, false, |st| Some(Op::Gpu { kernel, span: st.span(addr, len)?, write }));
    }

    /// Kernel `kernel`, started at `start_ns`, ended.
    pub fn kernel_end(&self, kernel: u32, start_ns: u64) {
        self.rec(start_ns, false, |_| Some(Op::KernelEnd { kernel }));
    }

    /// A CPU thread waited for kernel `kernel` from `start_ns` until now.
    pub fn wait(&self, kernel: u32, start_ns: u64) {
        self.rec(start_ns, true, |_| Some(Op::Wait { kernel }));
    }

    /// Ends the recording: writes the end record. Fails when writing failed, or when the
    /// workload did something the trace cannot say (memory outside its buffers). Returns
    /// `None` when nothing was recorded.
    pub fn finish(&self) -> Result<Option<Written>> {
        let Some(s) = &self.0 else { return Ok(None) };
        let mut st = s.state.lock();
        let path = s.path.display();
        if let Some(e) = st.io.take() {
            return Err(anyhow!(e).context(format!("writing the record {path}")));
        }
        if let Some(why) = &st.lost {
            return Err(anyhow!("the record {path} would not replay faithfully: {why}"));
        }
        let enc = st.enc.take().context("the record was already finished")?;
        let (_, records, bytes) = enc.finish().with_context(|| format!("writing the record {path}"))?;
        Ok(Some(Written { path: s.path.clone(), records, bytes }))
    }
}

fn place(gpus: &[GpuId], l: Location) -> Option<Place> {
    Some(match l {
        Location::Sysmem => Place::Sysmem,
        Location::Undefined => Place::Undefined,
        Location::Gpu(g) => Place::Gpu(index(gpus, g)?),
    })
}

fn index(gpus: &[GpuId], g: GpuId) -> Option<u32> {
    gpus.iter().position(|&x| x == g).map(|i| i as u32)
}

/// An attribute with GPUs as indices (`None`: a GPU the instance does not have).
fn attr(gpus: &[GpuId], a: Attr) -> Option<AttrRec> {
    Some(match a {
        Attr::PreferredLoc(l) => AttrRec::PreferredLoc(place(gpus, l)?),
        Attr::PrefetchLoc(l) => AttrRec::PrefetchLoc(place(gpus, l)?),
        Attr::Access(g) => AttrRec::Access(index(gpus, g)?),
        Attr::AccessInPlace(g) => AttrRec::AccessInPlace(index(gpus, g)?),
        Attr::NoAccess(g) => AttrRec::NoAccess(index(gpus, g)?),
        Attr::SetFlags(f) => AttrRec::SetFlags(f.bits()),
        Attr::ClrFlags(f) => AttrRec::ClrFlags(f.bits()),
        Attr::Granularity(g) => AttrRec::Granularity(g),
    })
}

/// The library's attribute for a recorded one on an instance with `gpus`.
pub fn to_attr(gpus: &[GpuId], a: AttrRec) -> Attr {
    let g = |i: u32| gpus[i as usize];
    let loc = |p: Place| match p {
        Place::Sysmem => Location::Sysmem,
        Place::Undefined => Location::Undefined,
        Place::Gpu(i) => Location::Gpu(g(i)),
    };
    match a {
        AttrRec::PreferredLoc(p) => Attr::PreferredLoc(loc(p)),
        AttrRec::PrefetchLoc(p) => Attr::PrefetchLoc(loc(p)),
        AttrRec::Access(i) => Attr::Access(g(i)),
        AttrRec::AccessInPlace(i) => Attr::AccessInPlace(g(i)),
        AttrRec::NoAccess(i) => Attr::NoAccess(g(i)),
        AttrRec::SetFlags(b) => Attr::SetFlags(usvm::SvmFlags::from_bits_retain(b)),
        AttrRec::ClrFlags(b) => Attr::ClrFlags(usvm::SvmFlags::from_bits_retain(b)),
        AttrRec::Granularity(v) => Attr::Granularity(v),
    }
}
