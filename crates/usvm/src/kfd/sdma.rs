//! The SDMA engine of an emulated GPU as user queues drive it: a ring of SDMA packets (the
//! gfx9 / SDMA 4 encoding) in the application's memory, a 64-bit write pointer and doorbell
//! the application stores to, a 64-bit read pointer the engine advances. Both pointers are
//! byte offsets that never wrap; the ring position is the offset modulo the ring size.
//!
//! ```text
//!  application: packets -> ring, *wptr = end, *doorbell = end   (no call into usvm)
//!  engine thread: sleeps on the doorbell (a write-protected page: sys::doorbell)
//!     read the packets between rptr and wptr through the GPU's page table
//!     execute each one (copy, fill, write, fence, trap, poll, timestamp), through the
//!     GPU's page table: a missing page is a GPU fault (XNACK on: retried after the fault
//!     is handled; a fatal fault stops the queue and signals the memory-exception events)
//!     *rptr = offset after the packet, once its effects are visible
//! ```

use super::halt::{self, QueueError};
use super::queue::EngineCtx;
use crate::error::Error;
use crate::gpu::Access;
use std::sync::atomic::Ordering;

/// Word of the queue's pointer page holding the read pointer.
pub const RPTR_WORD: usize = 0;
/// Word of the queue's pointer page holding the write pointer.
pub const WPTR_WORD: usize = 1;
/// Most dwords the engine reads from the ring at once.
pub const RING_READ_DWORDS: usize = 1024;
/// SDMA opcodes (dword 0, bits 0-7).
pub mod op {
    /// No operation; bits 16-29 count the dwords to skip after the header.
    pub const NOP: u8 = 0;
    /// Copy (sub-op 0: linear).
    pub const COPY: u8 = 1;
    /// Write (sub-op 0: linear, untiled) of inline dwords.
    pub const WRITE: u8 = 2;
    /// Write a 32-bit value to memory.
    pub const FENCE: u8 = 5;
    /// Raise an interrupt carrying a context id (an event id).
    pub const TRAP: u8 = 6;
    /// Wait until a register or memory word matches.
    pub const POLL_REGMEM: u8 = 8;
    /// Fill memory with a constant.
    pub const CONST_FILL: u8 = 11;
    /// Timestamps.
    pub const TIMESTAMP: u8 = 13;
}

/// One decoded packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    /// Nothing.
    Nop,
    /// Copy `bytes` from `src` to each of `dst` (two with the broadcast bit).
    Copy {
        /// Source address.
        src: u64,
        /// Destination addresses.
        dst: Vec<u64>,
        /// Bytes.
        bytes: u64,
    },
    /// Write these dwords at `dst`.
    Write {
        /// Destination address.
        dst: u64,
        /// The data.
        data: Vec<u32>,
    },
    /// Write `data` (32 bits) at `addr`.
    Fence {
        /// Address.
        addr: u64,
        /// Value.
        data: u32,
    },
    /// Signal event `event`.
    Trap {
        /// The interrupt context: an event id.
        event: u32,
    },
    /// Wait until `(*addr & mask) <func> reference`.
    Poll {
        /// Address of the 32-bit word (memory polls only).
        addr: u64,
        /// Compared value.
        reference: u32,
        /// Mask applied to the word.
        mask: u32,
        /// 0 always, 1 <, 2 <=, 3 ==, 4 !=, 5 >=, 6 >.
        func: u8,
        /// Pause between tries, in units of 16 clocks (here: microseconds).
        interval: u16,
        /// Tries; 0xfff: for ever.
        retries: u16,
        /// A register poll (unsupported: registers are not emulated).
        register: bool,
    },
    /// Fill `bytes` at `dst` with `data` (its low byte when `dword` is false).
    Fill {
        /// Destination.
        dst: u64,
        /// Pattern.
        data: u32,
        /// Dword fill (else byte fill).
        dword: bool,
        /// Bytes.
        bytes: u64,
    },
    /// Write the 64-bit GPU timestamp at `addr` (`None`: the packet sets the clock; ignored).
    Timestamp {
        /// Where to write.
        addr: Option<u64>,
    },
}

/// Why a packet could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decode {
    /// More dwords are needed than `dw` holds.
    Incomplete,
    /// An opcode (and sub-op) the engine does not know.
    Illegal(u32),
}

fn addr(lo: u32, hi: u32) -> u64 {
    u64::from(lo) | u64::from(hi) << 32
}

/// Decodes the packet at the start of `dw`: the packet and its length in dwords.
pub fn decode(dw: &[u32]) -> Result<(Packet, usize), Decode> {
    let h = *dw.first().ok_or(Decode::Incomplete)?;
    let (opcode, sub) = ((h & 0xff) as u8, ((h >> 8) & 0xff) as u8);
    let need = |n: usize| if dw.len() >= n { Ok(()) } else { Err(Decode::Incomplete) };
    let count22 = |w: u32| u64::from(w & 0x3f_ffff) + 1;
    Ok(match (opcode, sub) {
        (op::NOP, _) => {
            let n = 1 + ((h >> 16) & 0x3fff) as usize;
            need(n)?;
            (Packet::Nop, n)
        }
        (op::COPY, 0) => decode_copy(h, dw)?,
        (op::WRITE, 0) => {
            need(4)?;
            let ndw = (dw[3] & 0xf_ffff) as usize + 1;
            need(4 + ndw)?;
            (Packet::Write { dst: addr(dw[1], dw[2]), data: dw[4..4 + ndw].to_vec() }, 4 + ndw)
        }
        (op::FENCE, 0) => {
            need(4)?;
            (Packet::Fence { addr: addr(dw[1], dw[2]), data: dw[3] }, 4)
        }
        (op::TRAP, 0) => {
            need(2)?;
            (Packet::Trap { event: dw[1] & 0x0fff_ffff }, 2)
        }
        (op::POLL_REGMEM, 0) => decode_poll(h, dw)?,
        (op::CONST_FILL, 0) => {
            need(5)?;
            let p = Packet::Fill {
                dst: addr(dw[1], dw[2]),
                data: dw[3],
                dword: (h >> 30) == 2,
                bytes: count22(dw[4]),
            };
            (p, 5)
        }
        (op::TIMESTAMP, 0) => {
            need(3)?;
            (Packet::Timestamp { addr: None }, 3)
        }
        (op::TIMESTAMP, 1 | 2) => {
            need(3)?;
            (Packet::Timestamp { addr: Some(addr(dw[1], dw[2])) }, 3)
        }
        _ => return Err(Decode::Illegal(h)),
    })
}

/// Most bytes one merged copy moves ([`merge_copies`]).
pub const MERGE_COPY_BYTES: u64 = 64 << 20;

/// A copy followed by copies that continue it on both sides (a large copy split into
/// packets of 2 MiB, as applications send it) becomes one copy of all of them, up to
/// [`MERGE_COPY_BYTES`]: the read pointer then moves past them all once the whole copy is
/// done. `p` and `len` are the first packet and its length in dwords, `dw` the dwords from
/// it on; returns the packet to execute and the dwords it covers.
pub fn merge_copies(p: Packet, len: usize, dw: &[u32]) -> (Packet, usize) {
    let Packet::Copy { src, dst, bytes } = p else { return (p, len) };
    if dst.len() != 1 {
        return (Packet::Copy { src, dst, bytes }, len);
    }
    let (mut total, mut at) = (bytes, len);
    while total < MERGE_COPY_BYTES {
        match decode(&dw[at..]) {
            Ok((Packet::Copy { src: s, dst: d, bytes: b }, l))
                if d.len() == 1
                    && s == src + total
                    && d[0] == dst[0] + total
                    && total + b <= MERGE_COPY_BYTES =>
            {
                total += b;
                at += l;
            }
            _ => break,
        }
    }
    (Packet::Copy { src, dst, bytes: total }, at)
}

/// COPY_LINEAR: 7 dwords, 9 with the broadcast bit (a second destination).
fn decode_copy(h: u32, dw: &[u32]) -> Result<(Packet, usize), Decode> {
    let broadcast = h & (1 << 27) != 0;
    let n = if broadcast { 9 } else { 7 };
    if dw.len() < n {
        return Err(Decode::Incomplete);
    }
    let mut dst = vec![addr(dw[5], dw[6])];
    if broadcast {
        dst.push(addr(dw[7], dw[8]));
    }
    Ok((Packet::Copy { src: addr(dw[3], dw[4]), dst, bytes: u64::from(dw[1] & 0x3f_ffff) + 1 }, n))
}

/// POLL_REGMEM: 6 dwords; bit 31 of the header selects a memory poll, bits 28-30 the
/// function.
fn decode_poll(h: u32, dw: &[u32]) -> Result<(Packet, usize), Decode> {
    if dw.len() < 6 {
        return Err(Decode::Incomplete);
    }
    let p = Packet::Poll {
        addr: addr(dw[1], dw[2]),
        reference: dw[3],
        mask: dw[4],
        func: ((h >> 28) & 0x7) as u8,
        interval: (dw[5] & 0xffff) as u16,
        retries: ((dw[5] >> 16) & 0xfff) as u16,
        register: h & (1 << 31) == 0,
    };
    Ok((p, 6))
}

/// Whether a poll's condition holds (SDMA POLL_REGMEM and PM4 WAIT_REG_MEM alike).
pub(crate) fn poll_holds(func: u8, v: u32, reference: u32) -> bool {
    match func {
        0 => true,
        1 => v < reference,
        2 => v <= reference,
        3 => v == reference,
        4 => v != reference,
        5 => v >= reference,
        6 => v > reference,
        _ => false,
    }
}

/// An SDMA engine thread: what every queue engine works with ([`EngineCtx`]).
pub(crate) struct Engine(pub(crate) EngineCtx);

impl std::ops::Deref for Engine {
    type Target = EngineCtx;
    fn deref(&self) -> &EngineCtx {
        &self.0
    }
}

/// Why the engine stopped executing a queue.
#[derive(Debug)]
enum Stop {
    /// Destroyed.
    Destroyed,
    /// A fatal GPU fault or an illegal packet: the queue executes nothing more.
    Halted(QueueError),
}

impl Engine {
    /// The engine thread's body: until the queue is destroyed.
    pub(crate) fn run(self) {
        loop {
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            match self.drain() {
                Ok(()) => {}
                Err(Stop::Destroyed) => return,
                Err(Stop::Halted(e)) => {
                    self.status.halt(&self.devs, &self.events, (self.gpu, self.node), "SDMA", e);
                    // A halted queue only waits to be destroyed.
                    while self.doorbell.wait(None).unwrap_or(false) {}
                    return;
                }
            }
            // Nothing (complete) left: sleep until the application rings again. A ring that
            // came meanwhile is queued on the doorbell and ends the wait at once.
            match self.doorbell.wait(None) {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "SDMA doorbell failed; the queue stops");
                    return;
                }
            }
        }
    }

    /// Executes every packet between the read and the write pointer.
    fn drain(&self) -> Result<(), Stop> {
        let mut buf: Vec<u32> = Vec::new();
        loop {
            let (rptr, wptr) = (self.ptrs.load(RPTR_WORD), self.ptrs.load(WPTR_WORD));
            if rptr >= wptr {
                return Ok(());
            }
            let pos = rptr % self.ring_bytes;
            let avail = (wptr - rptr).min(self.ring_bytes - pos) / 4;
            let n = (avail as usize).min(RING_READ_DWORDS);
            if n == 0 {
                return Ok(()); // a write pointer in the middle of a dword: wait for more
            }
            buf.resize(n, 0);
            let mut bytes = vec![0u8; n * 4];
            if let Err(e) = self.devs.access(self.gpu, self.ring + pos as usize, Access::Read(&mut bytes)) {
                return Err(self.failed(&e));
            }
            for (i, w) in buf.iter_mut().enumerate() {
                *w = u32::from_le_bytes(bytes[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
            }
            let mut at = 0;
            while at < n {
                let (p, len) = match decode(&buf[at..]) {
                    Ok(x) => x,
                    // The rest of the packet is not there yet (or straddles the end of what
                    // was read): read again from here.
                    Err(Decode::Incomplete) if at > 0 => break,
                    Err(Decode::Incomplete) if n == RING_READ_DWORDS => {
                        let why = "larger than the engine reads at once".to_string();
                        return Err(Stop::Halted(QueueError::Packet { header: buf[at], why }));
                    }
                    // The application has not published the whole packet yet.
                    Err(Decode::Incomplete) => return Ok(()),
                    Err(Decode::Illegal(h)) => {
                        let why = "illegal SDMA opcode".to_string();
                        return Err(Stop::Halted(QueueError::Packet { header: h, why }));
                    }
                };
                let (p, len) = merge_copies(p, len, &buf[at..]);
                self.execute(&p)?;
                at += len;
                self.ptrs.store(RPTR_WORD, rptr + at as u64 * 4);
            }
        }
    }

    /// Runs one packet; its effects are visible when this returns.
    fn execute(&self, p: &Packet) -> Result<(), Stop> {
        let g = self.gpu;
        let r = match p {
            Packet::Nop => Ok(()),
            Packet::Copy { src, dst, bytes } => {
                dst.iter().try_for_each(|d| self.devs.copy(g, *d as usize, *src as usize, *bytes as usize))
            }
            Packet::Write { dst, data } => {
                let bytes: Vec<u8> = data.iter().flat_map(|w| w.to_le_bytes()).collect();
                self.devs.access(g, *dst as usize, Access::Write(&bytes))
            }
            Packet::Fence { addr, data } => {
                self.devs.access(g, *addr as usize, Access::Write(&data.to_le_bytes()))
            }
            Packet::Trap { event } => {
                if self.events.set(*event).is_err() {
                    tracing::debug!(event, "TRAP for an event that does not exist");
                }
                Ok(())
            }
            p @ Packet::Poll { register, .. } => {
                if *register {
                    let why = "register polls are not emulated".to_string();
                    return Err(Stop::Halted(QueueError::Packet { header: op::POLL_REGMEM.into(), why }));
                }
                return self.poll(p);
            }
            Packet::Fill { dst, data, dword, bytes } => self.fill(*dst, *data, *dword, *bytes),
            Packet::Timestamp { addr: None } => Ok(()),
            Packet::Timestamp { addr: Some(a) } => {
                self.devs.access(g, *a as usize, Access::Write(&crate::sys::boottime_ns().to_le_bytes()))
            }
        };
        r.map_err(|e| self.failed(&e))
    }

    fn fill(&self, dst: u64, data: u32, dword: bool, bytes: u64) -> crate::Result<()> {
        let chunk = (bytes as usize).min(crate::gpu::ACCESS_CHUNK_BYTES);
        let pattern: Vec<u8> = if dword {
            data.to_le_bytes().iter().copied().cycle().take(chunk).collect()
        } else {
            vec![data as u8; chunk]
        };
        let mut off = 0u64;
        while off < bytes {
            let n = (bytes - off).min(chunk as u64) as usize;
            self.devs.access(self.gpu, (dst + off) as usize, Access::Write(&pattern[..n]))?;
            off += n as u64;
        }
        Ok(())
    }

    /// A memory POLL_REGMEM (`p`): until the word matches, its tries run out, or the queue
    /// is destroyed.
    fn poll(&self, p: &Packet) -> Result<(), Stop> {
        let &Packet::Poll { addr, reference, mask, func, interval, retries, .. } = p else {
            unreachable!("a poll packet")
        };
        let mut tries = 0u32;
        loop {
            let mut v = [0u8; 4];
            if let Err(e) = self.devs.access(self.gpu, addr as usize, Access::Read(&mut v)) {
                return Err(self.failed(&e));
            }
            if poll_holds(func, u32::from_le_bytes(v) & mask, reference) {
                return Ok(());
            }
            tries += 1;
            if retries != 0xfff && tries > u32::from(retries) {
                // The condition never held: the engine goes on (the hardware raises an
                // error interrupt usvm does not model).
                return Ok(());
            }
            if self.stop.load(Ordering::Acquire) {
                return Err(Stop::Destroyed);
            }
            std::thread::sleep(std::time::Duration::from_micros(u64::from(interval.max(1))));
        }
    }

    /// A failed access: fatal GPU faults go to the memory-exception events; the queue
    /// halts.
    fn failed(&self, e: &Error) -> Stop {
        Stop::Halted(halt::access_failed(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_packets_kfdtest_builds() {
        // A 2 MiB linear copy.
        let copy = [0x0000_0001, 0x001f_ffff, 0, 0x1000, 0x7f, 0x2000, 0x7f];
        assert_eq!(
            decode(&copy).unwrap(),
            (Packet::Copy { src: 0x7f_0000_1000, dst: vec![0x7f_0000_2000], bytes: 2 << 20 }, 7)
        );
        // A dword fill.
        let fill = [0x8000_000b, 0x3000, 0, 0x55aa_aa55, 4095];
        assert_eq!(
            decode(&fill).unwrap(),
            (Packet::Fill { dst: 0x3000, data: 0x55aa_aa55, dword: true, bytes: 4096 }, 5)
        );
        // Ring padding: zero dwords are one-dword NOPs; a NOP with a count skips more.
        assert_eq!(decode(&[0]).unwrap(), (Packet::Nop, 1));
        assert_eq!(decode(&[2 << 16, 9, 9]).unwrap(), (Packet::Nop, 3));
        assert_eq!(decode(&[2 << 16, 9]), Err(Decode::Incomplete));
        assert_eq!(decode(&[5, 0x40, 0, 7]).unwrap(), (Packet::Fence { addr: 0x40, data: 7 }, 4));
        assert_eq!(decode(&[6, 0xf000_0012]).unwrap(), (Packet::Trap { event: 0x12 }, 2));
        assert_eq!(
            decode(&[2, 0x80, 0, 1, 0xa, 0xb]).unwrap(),
            (Packet::Write { dst: 0x80, data: vec![0xa, 0xb] }, 6)
        );
        assert_eq!(decode(&[13 | 2 << 8, 0x100, 0]).unwrap(), (Packet::Timestamp { addr: Some(0x100) }, 3));
        let poll = [8 | 3 << 28 | 1 << 31, 0x40, 0, 5, 0xff, 10 | 0xfff << 16];
        assert_eq!(
            decode(&poll).unwrap().0,
            Packet::Poll {
                addr: 0x40,
                reference: 5,
                mask: 0xff,
                func: 3,
                interval: 10,
                retries: 0xfff,
                register: false
            }
        );
        assert_eq!(decode(&[0x77]), Err(Decode::Illegal(0x77)));
        assert_eq!(decode(&copy[..6]), Err(Decode::Incomplete));
    }

    #[test]
    fn contiguous_copies_merge() {
        let c = |s: u32, d: u32, n: u32| vec![1, n - 1, 0, s, 0, d, 0];
        let mut dw = c(0x1000, 0x9000, 0x100);
        dw.extend(c(0x1100, 0x9100, 0x100));
        dw.extend(c(0x1200, 0x7000, 0x100)); // a new destination: not merged
        let (p, l) = decode(&dw).unwrap();
        let (m, len) = merge_copies(p, l, &dw);
        assert_eq!(m, Packet::Copy { src: 0x1000, dst: vec![0x9000], bytes: 0x200 });
        assert_eq!(len, 14);
        let (p, l) = decode(&dw[14..]).unwrap();
        assert_eq!(merge_copies(p, l, &dw[14..]).1, 7);
    }

    #[test]
    fn poll_functions() {
        assert!(poll_holds(3, 5, 5) && !poll_holds(3, 4, 5));
        assert!(poll_holds(1, 4, 5) && poll_holds(6, 6, 5) && poll_holds(0, 1, 2) && !poll_holds(7, 1, 1));
    }
}
