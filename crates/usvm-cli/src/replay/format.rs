//! The replay trace file (`usvm run W --record FILE`, read by `usvm replay FILE`): what a
//! workload did to shared virtual memory, in order, per thread, with timestamps.
//!
//! Layout (integers are LEB128 varints unless said otherwise):
//!
//! ```text
//! magic      8 bytes "USVMRPL\0"
//! version    varint (VERSION)
//! header     varint length, then its fields (the recorded machine and run)
//! record*    tag (1 byte, 1..=10), varint payload length, payload:
//!              time since the previous record's start (zigzag varint, ns),
//!              duration (varint, ns), the CPU thread (CPU records only), the fields
//! end        tag 0, varint payload length, payload: record count (varint), then the
//!            FNV-1a 64 hash of every byte before the end tag (8 bytes, little endian)
//! ```
//!
//! Addresses never appear: every span is a buffer (numbered in allocation order) and an
//! offset into it, and GPUs are indices, so that a replay re-creates them anywhere. The
//! decoder ([`decode`]) checks everything it reads (the magic, the version, every length,
//! every reference to a buffer, queue or kernel, the record count and the hash) and returns
//! a [`TraceError`] for anything wrong: it never panics and never trusts a length.

use std::fmt;
use std::io::Write;

/// The first bytes of every trace.
pub const MAGIC: [u8; 8] = *b"USVMRPL\0";
/// The format version this program writes and reads.
pub const VERSION: u64 = 1;
/// The longest string the header holds (workload and policy names).
pub const MAX_NAME: usize = 256;

/// The recorded machine and run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The workload's name.
    pub workload: String,
    /// Emulated GPUs.
    pub gpus: u32,
    /// VRAM per GPU (bytes).
    pub vram: u64,
    /// XNACK mode.
    pub xnack: bool,
    /// Default granularity (log2 pages).
    pub granularity: u8,
    /// The placement policy of the recorded run.
    pub policy: String,
    /// Working-set size (bytes).
    pub size: u64,
    /// Iterations.
    pub iterations: u64,
    /// Seed.
    pub seed: u64,
    /// Whether `--fix` was given.
    pub fix: bool,
}

/// A place of PREFERRED_LOC / PREFETCH_LOC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// System memory.
    Sysmem,
    /// No place (KFD's 0xffffffff).
    Undefined,
    /// The GPU with this index.
    Gpu(u32),
}

/// One SET_ATTR entry, GPUs by index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttrRec {
    /// PREFERRED_LOC.
    PreferredLoc(Place),
    /// PREFETCH_LOC.
    PrefetchLoc(Place),
    /// ACCESS for a GPU.
    Access(u32),
    /// ACCESS_IN_PLACE for a GPU.
    AccessInPlace(u32),
    /// NO_ACCESS for a GPU.
    NoAccess(u32),
    /// SET_FLAGS (the raw bits).
    SetFlags(u32),
    /// CLR_FLAGS (the raw bits).
    ClrFlags(u32),
    /// GRANULARITY.
    Granularity(u32),
}

/// Bytes of one buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// The buffer, numbered in allocation order from 0.
    pub buf: u32,
    /// The first byte, from the buffer's start.
    pub off: u64,
    /// Bytes.
    pub len: u64,
}

/// What a record says happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A buffer of `len` bytes was allocated (`Svm::alloc`).
    Alloc { buf: u32, len: u64 },
    /// SET_ATTR on a span.
    SetAttr { span: Span, attrs: Vec<AttrRec> },
    /// A CPU load (or store) of a span.
    Cpu { span: Span, write: bool },
    /// A queue was created on the GPU with index `gpu`.
    Queue { queue: u32, gpu: u32 },
    /// A kernel was submitted to a queue.
    Launch { kernel: u32, queue: u32 },
    /// A kernel's load (or store) of a span.
    Gpu { kernel: u32, span: Span, write: bool },
    /// A kernel ended (the record's time is its start, its duration the kernel's).
    KernelEnd { kernel: u32 },
    /// A CPU thread waited for a kernel.
    Wait { kernel: u32 },
}

/// One record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rec {
    /// The CPU thread that did it, numbered from 0 in order of first appearance (0 for
    /// what kernels do).
    pub thread: u32,
    /// When it started, nanoseconds after the recording started.
    pub at_ns: u64,
    /// How long it took (nanoseconds).
    pub dur_ns: u64,
    /// What happened.
    pub op: Op,
}

/// A whole trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    /// The recorded machine and run.
    pub header: Header,
    /// Every record, in the order they were written.
    pub recs: Vec<Rec>,
}

/// Why a trace cannot be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceError {
    /// The file does not start with [`MAGIC`].
    NotATrace,
    /// Written by a version this program does not read.
    Version(u64),
    /// The file ends in the middle of something.
    Truncated { at: usize, what: &'static str },
    /// Something read is impossible.
    Corrupt { at: usize, what: String },
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceError::NotATrace => write!(f, "not a usvm replay trace (it does not start with USVMRPL)"),
            TraceError::Version(v) => {
                write!(f, "trace format version {v}; this usvm reads version {VERSION} only")
            }
            TraceError::Truncated { at, what } => {
                write!(
                    f,
                    "the trace is truncated: it ends at byte {at}, inside {what} (was the run cut short?)"
                )
            }
            TraceError::Corrupt { at, what } => write!(f, "the trace is corrupt at byte {at}: {what}"),
        }
    }
}

impl std::error::Error for TraceError {}

/// The FNV-1a 64 hash, fed a piece at a time.
#[derive(Clone, Copy, Debug)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    /// Adds `bytes`.
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Appends `v` as a LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn put_place(out: &mut Vec<u8>, p: Place) {
    put_varint(
        out,
        match p {
            Place::Sysmem => 0,
            Place::Undefined => 1,
            Place::Gpu(i) => 2 + i as u64,
        },
    );
}

fn put_span(out: &mut Vec<u8>, s: Span) {
    put_varint(out, s.buf as u64);
    put_varint(out, s.off);
    put_varint(out, s.len);
}

fn put_attr(out: &mut Vec<u8>, a: AttrRec) {
    let (tag, v) = match a {
        AttrRec::PreferredLoc(p) | AttrRec::PrefetchLoc(p) => {
            out.push(if matches!(a, AttrRec::PreferredLoc(_)) { 0 } else { 1 });
            put_place(out, p);
            return;
        }
        AttrRec::Access(g) => (2, g),
        AttrRec::AccessInPlace(g) => (3, g),
        AttrRec::NoAccess(g) => (4, g),
        AttrRec::SetFlags(b) => (5, b),
        AttrRec::ClrFlags(b) => (6, b),
        AttrRec::Granularity(g) => (7, g),
    };
    out.push(tag);
    put_varint(out, v as u64);
}

fn put_header(out: &mut Vec<u8>, h: &Header) {
    for s in [&h.workload, &h.policy] {
        put_varint(out, s.len() as u64);
        out.extend_from_slice(s.as_bytes());
    }
    for v in [h.gpus as u64, h.vram, h.xnack as u64, h.granularity as u64, h.size, h.iterations, h.seed] {
        put_varint(out, v);
    }
    out.push(h.fix as u8);
}

/// The tag of a record and its fields (after time, duration and thread).
fn op_fields(op: &Op, out: &mut Vec<u8>) -> u8 {
    match op {
        Op::Alloc { buf, len } => {
            put_varint(out, *buf as u64);
            put_varint(out, *len);
            1
        }
        Op::SetAttr { span, attrs } => {
            put_span(out, *span);
            put_varint(out, attrs.len() as u64);
            attrs.iter().for_each(|a| put_attr(out, *a));
            2
        }
        Op::Cpu { span, write } => {
            put_span(out, *span);
            if *write { 4 } else { 3 }
        }
        Op::Queue { queue, gpu } => {
            put_varint(out, *queue as u64);
            put_varint(out, *gpu as u64);
            5
        }
        Op::Launch { kernel, queue } => {
            put_varint(out, *kernel as u64);
            put_varint(out, *queue as u64);
            6
        }
        Op::Gpu { kernel, span, write } => {
            put_varint(out, *kernel as u64);
            put_span(out, *span);
            if *write { 8 } else { 7 }
        }
        Op::KernelEnd { kernel } => {
            put_varint(out, *kernel as u64);
            9
        }
        Op::Wait { kernel } => {
            put_varint(out, *kernel as u64);
            10
        }
    }
}

/// Whether records of this tag name their CPU thread.
fn has_thread(tag: u8) -> bool {
    !matches!(tag, 7..=9)
}

/// Writes a trace: the magic, version and header first, then records, then the end.
pub struct Encoder<W: Write> {
    out: W,
    hash: Fnv,
    count: u64,
    prev_at: u64,
    written: u64,
}

impl<W: Write> Encoder<W> {
    /// Starts a trace on `out` with `header`.
    pub fn new(out: W, header: &Header) -> std::io::Result<Self> {
        let mut e = Encoder { out, hash: Fnv::default(), count: 0, prev_at: 0, written: 0 };
        let mut head = MAGIC.to_vec();
        put_varint(&mut head, VERSION);
        let mut h = Vec::new();
        put_header(&mut h, header);
        put_varint(&mut head, h.len() as u64);
        head.extend_from_slice(&h);
        e.put(&head)?;
        Ok(e)
    }

    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hash.feed(bytes);
        self.written += bytes.len() as u64;
        self.out.write_all(bytes)
    }

    /// Appends one record.
    pub fn record(&mut self, r: &Rec) -> std::io::Result<()> {
        let mut fields = Vec::with_capacity(24);
        let tag = op_fields(&r.op, &mut fields);
        let mut payload = Vec::with_capacity(fields.len() + 12);
        put_varint(&mut payload, zigzag(r.at_ns.wrapping_sub(self.prev_at) as i64));
        put_varint(&mut payload, r.dur_ns);
        if has_thread(tag) {
            put_varint(&mut payload, r.thread as u64);
        }
        payload.extend_from_slice(&fields);
        let mut rec = vec![tag];
        put_varint(&mut rec, payload.len() as u64);
        rec.extend_from_slice(&payload);
        self.put(&rec)?;
        self.prev_at = r.at_ns;
        self.count += 1;
        Ok(())
    }

    /// Writes the end record and returns the writer, the records written and the bytes.
    pub fn finish(mut self) -> std::io::Result<(W, u64, u64)> {
        let mut payload = Vec::new();
        put_varint(&mut payload, self.count);
        let sum = self.hash;
        let mut end = vec![0u8];
        put_varint(&mut end, (payload.len() + 8) as u64);
        end.extend_from_slice(&payload);
        end.extend_from_slice(&sum.0.to_le_bytes());
        self.written += end.len() as u64;
        self.out.write_all(&end)?;
        self.out.flush()?;
        Ok((self.out, self.count, self.written))
    }
}

pub use super::decode::decode;
