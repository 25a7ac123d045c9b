//! Reading a replay trace back ([`decode`]): every byte is checked, every reference
//! resolved, and anything wrong is a [`TraceError`], never a panic.

use super::format::{AttrRec, Fnv, Header, MAGIC, Op, Place, Rec, Span, Trace, TraceError, VERSION};

/// Most CPU threads a trace may name (a replay starts one thread per recorded thread).
pub const MAX_THREADS: u32 = 256;
/// Most GPUs a trace may name (as `usvm run --gpus`).
const MAX_GPUS: u64 = 16;
/// The largest buffer a trace may allocate (1 TiB).
const MAX_BUFFER: u64 = 1 << 40;

type Res<T> = Result<T, TraceError>;

/// A reading position in `b` (which ends where the thing being read must end).
struct Cur<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cur<'a> {
    fn corrupt(&self, what: impl Into<String>) -> TraceError {
        TraceError::Corrupt { at: self.pos, what: what.into() }
    }

    fn byte(&mut self, what: &'static str) -> Res<u8> {
        let v = *self.b.get(self.pos).ok_or(TraceError::Truncated { at: self.b.len(), what })?;
        self.pos += 1;
        Ok(v)
    }

    fn varint(&mut self, what: &'static str) -> Res<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.byte(what)?;
            if i == 9 && b > 1 {
                return Err(self.corrupt(format!("a number too large in {what}")));
            }
            v |= ((b & 0x7f) as u64) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.corrupt(format!("a number too long in {what}")))
    }

    fn u32(&mut self, what: &'static str) -> Res<u32> {
        let v = self.varint(what)?;
        u32::try_from(v).map_err(|_| self.corrupt(format!("{v} is out of range in {what}")))
    }

    fn take(&mut self, n: u64, what: &'static str) -> Res<&'a [u8]> {
        let left = (self.b.len() - self.pos) as u64;
        if n > left {
            return Err(TraceError::Truncated { at: self.b.len(), what });
        }
        let s = &self.b[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn flag(&mut self, what: &'static str) -> Res<bool> {
        match self.byte(what)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(self.corrupt(format!("{v} is not a yes/no in {what}"))),
        }
    }

    fn name(&mut self, what: &'static str) -> Res<String> {
        let n = self.varint(what)?;
        if n > super::format::MAX_NAME as u64 {
            return Err(self.corrupt(format!("a name of {n} bytes in {what}")));
        }
        let s = self.take(n, what)?;
        String::from_utf8(s.to_vec()).map_err(|_| self.corrupt(format!("a name that is not UTF-8 in {what}")))
    }
}

fn header(c: &mut Cur) -> Res<Header> {
    const W: &str = "the header";
    let workload = c.name(W)?;
    let policy = c.name(W)?;
    let gpus = c.varint(W)?;
    if gpus == 0 || gpus > MAX_GPUS {
        return Err(c.corrupt(format!("{gpus} GPUs in the header")));
    }
    let vram = c.varint(W)?;
    if vram < 4096 {
        return Err(c.corrupt(format!("{vram} bytes of VRAM in the header")));
    }
    let xnack = c.varint(W)?;
    let granularity = c.varint(W)?;
    if xnack > 1 || granularity > 30 {
        return Err(c.corrupt("XNACK or granularity out of range in the header"));
    }
    let (size, iterations, seed) = (c.varint(W)?, c.varint(W)?, c.varint(W)?);
    let fix = c.flag(W)?;
    Ok(Header {
        workload,
        gpus: gpus as u32,
        vram,
        xnack: xnack == 1,
        granularity: granularity as u8,
        policy,
        size,
        iterations,
        seed,
        fix,
    })
}

/// What the records so far made: buffers (their lengths), queues, kernels, threads.
struct Made {
    gpus: u32,
    bufs: Vec<u64>,
    queues: u32,
    kernels: u32,
    threads: u32,
}

impl Made {
    fn gpu(&self, c: &Cur, g: u32) -> Res<u32> {
        if g < self.gpus { Ok(g) } else { Err(c.corrupt(format!("GPU {g} of {}", self.gpus))) }
    }

    fn span(&self, c: &mut Cur) -> Res<Span> {
        const W: &str = "a record";
        let (buf, off, len) = (c.u32(W)?, c.varint(W)?, c.varint(W)?);
        let Some(&size) = self.bufs.get(buf as usize) else {
            return Err(c.corrupt(format!("buffer {buf} was never allocated")));
        };
        match off.checked_add(len) {
            Some(end) if end <= size => Ok(Span { buf, off, len }),
            _ => Err(c.corrupt(format!("bytes {off}+{len} are outside buffer {buf} ({size} bytes)"))),
        }
    }

    fn kernel(&self, c: &mut Cur) -> Res<u32> {
        let k = c.u32("a record")?;
        if k < self.kernels { Ok(k) } else { Err(c.corrupt(format!("kernel {k} was never launched"))) }
    }

    fn place(&self, c: &mut Cur) -> Res<Place> {
        match c.varint("a record")? {
            0 => Ok(Place::Sysmem),
            1 => Ok(Place::Undefined),
            v => Ok(Place::Gpu(self.gpu(c, u32::try_from(v - 2).unwrap_or(u32::MAX))?)),
        }
    }

    fn attr(&self, c: &mut Cur) -> Res<AttrRec> {
        let tag = c.byte("a record")?;
        Ok(match tag {
            0 => AttrRec::PreferredLoc(self.place(c)?),
            1 => AttrRec::PrefetchLoc(self.place(c)?),
            2..=7 => {
                let v = c.u32("a record")?;
                match tag {
                    2 => AttrRec::Access(self.gpu(c, v)?),
                    3 => AttrRec::AccessInPlace(self.gpu(c, v)?),
                    4 => AttrRec::NoAccess(self.gpu(c, v)?),
                    5 => AttrRec::SetFlags(v),
                    6 => AttrRec::ClrFlags(v),
                    _ => AttrRec::Granularity(v),
                }
            }
            t => return Err(c.corrupt(format!("unknown attribute {t}"))),
        })
    }

    /// The fields of a record of `tag`, checked against what exists.
    fn op(&mut self, tag: u8, c: &mut Cur) -> Res<Op> {
        const W: &str = "a record";
        Ok(match tag {
            1 => {
                let (buf, len) = (c.u32(W)?, c.varint(W)?);
                if buf as usize != self.bufs.len() || len == 0 || len > MAX_BUFFER {
                    return Err(c.corrupt(format!("allocation of buffer {buf} ({len} bytes) out of order")));
                }
                self.bufs.push(len);
                Op::Alloc { buf, len }
            }
            2 => {
                let span = self.span(c)?;
                let n = c.varint(W)?;
                // Each entry takes at least two bytes: a count beyond that is a lie.
                if n > (c.b.len() - c.pos) as u64 / 2 {
                    return Err(c.corrupt(format!("{n} attributes in a short record")));
                }
                let attrs = (0..n).map(|_| self.attr(c)).collect::<Res<Vec<_>>>()?;
                Op::SetAttr { span, attrs }
            }
            3 | 4 => Op::Cpu { span: self.span(c)?, write: tag == 4 },
            5 => {
                let (queue, gpu) = (c.u32(W)?, c.u32(W)?);
                if queue != self.queues {
                    return Err(c.corrupt(format!("queue {queue} out of order")));
                }
                self.queues += 1;
                Op::Queue { queue, gpu: self.gpu(c, gpu)? }
            }
            6 => {
                let (kernel, queue) = (c.u32(W)?, c.u32(W)?);
                if kernel != self.kernels || queue >= self.queues {
                    return Err(c.corrupt(format!("kernel {kernel} on queue {queue} out of order")));
                }
                self.kernels += 1;
                Op::Launch { kernel, queue }
            }
            7 | 8 => {
                let kernel = self.kernel(c)?;
                Op::Gpu { kernel, span: self.span(c)?, write: tag == 8 }
            }
            9 => Op::KernelEnd { kernel: self.kernel(c)? },
            10 => Op::Wait { kernel: self.kernel(c)? },
            t => return Err(c.corrupt(format!("unknown record type {t}"))),
        })
    }
}

/// One record (its tag already read) whose payload is `c`'s remaining bytes.
fn record(made: &mut Made, tag: u8, c: &mut Cur, prev_at: u64) -> Res<Rec> {
    const W: &str = "a record";
    let dt = unzigzag(c.varint(W)?);
    let at_ns =
        prev_at.checked_add_signed(dt).ok_or_else(|| c.corrupt("a time before the recording began"))?;
    let dur_ns = c.varint(W)?;
    let thread = if matches!(tag, 7..=9) { 0 } else { c.u32(W)? };
    if thread > made.threads || thread >= MAX_THREADS {
        return Err(c.corrupt(format!("thread {thread} out of order")));
    }
    made.threads = made.threads.max(thread + 1);
    let op = made.op(tag, c)?;
    if c.pos != c.b.len() {
        return Err(c.corrupt("a record longer than its fields"));
    }
    Ok(Rec { thread, at_ns, dur_ns, op })
}

fn unzigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

/// The start of a trace: magic, version, header. Returns the header.
fn prologue(c: &mut Cur) -> Res<Header> {
    let n = c.b.len().min(MAGIC.len());
    if c.b[..n] != MAGIC[..n] {
        return Err(TraceError::NotATrace);
    }
    c.take(MAGIC.len() as u64, "the magic")?;
    let v = c.varint("the version")?;
    if v != VERSION {
        return Err(TraceError::Version(v));
    }
    let len = c.varint("the header")?;
    let start = c.pos;
    let body = c.take(len, "the header")?;
    let mut h = Cur { b: &c.b[..start + body.len()], pos: start };
    let head = header(&mut h).map_err(inner)?;
    if h.pos != h.b.len() {
        return Err(h.corrupt("a header longer than its fields"));
    }
    Ok(head)
}

/// A piece that ran out inside its own length is corrupt, not truncated.
fn inner(e: TraceError) -> TraceError {
    match e {
        TraceError::Truncated { at, what } => {
            TraceError::Corrupt { at, what: format!("{what} is shorter than its fields") }
        }
        e => e,
    }
}

/// The end record at `c` (its tag read at `tag_at`): the count and the hash must hold, and
/// nothing may follow.
fn end(c: &mut Cur, tag_at: usize, count: u64) -> Res<()> {
    let len = c.varint("the end record")?;
    let start = c.pos;
    let body = c.take(len, "the end record")?;
    let mut e = Cur { b: &c.b[..start + body.len()], pos: start };
    let n = e.varint("the end record").map_err(inner)?;
    let sum = e.take(8, "the end record").map_err(inner)?;
    if n != count || e.pos != e.b.len() {
        return Err(e.corrupt(format!("the end record counts {n} records, the trace has {count}")));
    }
    let mut h = Fnv::default();
    h.feed(&c.b[..tag_at]);
    if sum != h.0.to_le_bytes() {
        return Err(TraceError::Corrupt {
            at: tag_at,
            what: "the checksum does not match the contents".into(),
        });
    }
    if c.pos != c.b.len() {
        return Err(c.corrupt("bytes after the end record"));
    }
    Ok(())
}

/// Reads a whole trace.
pub fn decode(bytes: &[u8]) -> Result<Trace, TraceError> {
    let mut c = Cur { b: bytes, pos: 0 };
    let header = prologue(&mut c)?;
    let mut made = Made { gpus: header.gpus, bufs: Vec::new(), queues: 0, kernels: 0, threads: 0 };
    let mut recs = Vec::new();
    let mut prev_at = 0;
    loop {
        let tag_at = c.pos;
        let tag = c.byte("the end record (the recording did not finish)")?;
        if tag == 0 {
            end(&mut c, tag_at, recs.len() as u64)?;
            return Ok(Trace { header, recs });
        }
        let len = c.varint("a record")?;
        let start = c.pos;
        let body = c.take(len, "a record")?;
        let mut r = Cur { b: &bytes[..start + body.len()], pos: start };
        let rec = record(&mut made, tag, &mut r, prev_at).map_err(inner)?;
        prev_at = rec.at_ns;
        recs.push(rec);
    }
}
