//! The compute engine (the command processor's MEC) of an emulated GPU as PM4 user queues
//! drive it: a ring of PM4 type-3 packets ([`super::pm4`]) in the application's memory, a
//! 64-bit write pointer and doorbell holding the number of dwords placed so far (never
//! wrapped), and a read pointer the engine sets to the dwords consumed modulo the ring's
//! size in dwords (what kfdtest's `Wait4PacketConsumption` compares with its wrapped write
//! pointer).
//!
//! ```text
//!  application: packets -> ring, *wptr = dwords, *doorbell = dwords   (no call into usvm)
//!  doorbell thread: serves the doorbell's stores at once (a store faults on the
//!     write-protected page: sys::doorbell) and counts the rings
//!  engine thread: sleeps until a ring, then reads the packets between its consumed count
//!     and wptr through the GPU's page table and executes each one; *rptr = consumed % ring
//!     once the packet's effects are visible
//!     INDIRECT_BUFFER: the same for the packets of a buffer (one level)
//!     SET_SH_REG: the queue's SH registers; DISPATCH_DIRECT: the wave interpreter
//!     (gpu::isa), run to completion on this thread
//!     RELEASE_MEM: write, then signal the event its interrupt names; WRITE_DATA; WAIT_REG_MEM
//!     (sleeping between polls); anything else halts the queue (super::halt)
//! ```
//!
//! The doorbell has a thread of its own because a dispatch may run for as long as the
//! application wants (waves spinning on a flag it writes later): an application ringing
//! again meanwhile must not wait for the dispatch.

use super::halt::{self, QueueError};
use super::pm4::{self, Decode, Packet, ReleaseData, reg};
use super::queue::EngineCtx;
use super::sdma::{RPTR_WORD, WPTR_WORD, poll_holds};
use crate::error::Error;
use crate::gpu::Access;
use crate::gpu::isa::{self, IsaError, Launch};
use parking_lot::{Condvar, Mutex};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Longest pause between two polls of a WAIT_REG_MEM (the pause starts at the packet's
/// interval and doubles up to this).
pub const WAIT_POLL_MAX: Duration = Duration::from_millis(1);

/// A compute engine (command processor): what every queue engine works with
/// ([`EngineCtx`]).
pub(crate) struct Engine(pub(crate) EngineCtx);

impl std::ops::Deref for Engine {
    type Target = EngineCtx;
    fn deref(&self) -> &EngineCtx {
        &self.0
    }
}

/// The rings the doorbell thread has served, and whether the doorbell is shut.
#[derive(Default)]
struct Rings {
    state: Mutex<(u64, bool)>,
    changed: Condvar,
}

impl Rings {
    /// Waits until the doorbell is shut (the queue is being destroyed).
    fn wait_shut(&self) {
        let mut g = self.state.lock();
        while !g.1 {
            self.changed.wait(&mut g);
        }
    }
}

/// Why the engine stopped executing a queue.
#[derive(Debug)]
enum Stop {
    /// Destroyed.
    Destroyed,
    /// The queue executes nothing more.
    Halted(QueueError),
}

/// The queue's registers and position.
struct State {
    /// SH registers 0x2C00-0x2FFF, zero at creation.
    sh: Vec<u32>,
    /// Dwords consumed since creation (never wrapped).
    consumed: u64,
}

impl State {
    fn sh(&self, r: u32) -> u32 {
        self.sh[(r - reg::SH_BASE) as usize]
    }
}

fn packet_error(header: u32, why: impl Into<String>) -> Stop {
    Stop::Halted(QueueError::Packet { header, why: why.into() })
}

fn decode_error(header: u32, d: Decode) -> Stop {
    packet_error(header, d.to_string())
}

impl Engine {
    /// The engine's body (on its thread): until the queue is destroyed.
    pub(crate) fn run(self) {
        let rings = Rings::default();
        std::thread::scope(|s| {
            let bell = std::thread::Builder::new()
                .name(format!("usvm-cpbell{}", self.gpu))
                .spawn_scoped(s, || self.serve_doorbell(&rings));
            if let Err(e) = bell {
                let e = QueueError::Failed(format!("no doorbell thread: {e}"));
                self.status.halt(&self.devs, &self.events, (self.gpu, self.node), "compute", e);
                // Serve the doorbell here, so that no store of the application blocks.
                while self.doorbell.wait(None).unwrap_or(false) {}
                return;
            }
            let run = std::panic::AssertUnwindSafe(|| self.execute_rings(&rings));
            if std::panic::catch_unwind(run).is_err() {
                // Never a silent hang: the application sees the queue halted.
                let e = QueueError::Failed("the compute engine panicked".into());
                self.status.halt(&self.devs, &self.events, (self.gpu, self.node), "compute", e);
                rings.wait_shut();
            }
        });
    }

    /// The doorbell thread: lets each store through at once and counts it.
    fn serve_doorbell(&self, rings: &Rings) {
        loop {
            let r = self.doorbell.wait(None);
            let mut g = rings.state.lock();
            match r {
                Ok(true) => g.0 += 1,
                Ok(false) => g.1 = true,
                Err(e) => {
                    tracing::warn!(error = %e, gpu = %self.gpu, "compute doorbell failed; the queue stops");
                    g.1 = true;
                }
            }
            rings.changed.notify_all();
            if g.1 {
                return;
            }
        }
    }

    /// Drains the ring after every ring of the doorbell, until the doorbell shuts.
    fn execute_rings(&self, rings: &Rings) {
        let mut st = State { sh: vec![0; reg::SH_COUNT], consumed: 0 };
        let mut seen = 0;
        loop {
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            match self.drain(&mut st) {
                Ok(()) => {}
                Err(Stop::Destroyed) => return,
                Err(Stop::Halted(e)) => {
                    self.status.halt(&self.devs, &self.events, (self.gpu, self.node), "compute", e);
                    // A halted queue only waits to be destroyed.
                    rings.wait_shut();
                    return;
                }
            }
            // Sleep until a ring the drain may not have seen (one that came while it ran
            // ends the wait at once).
            let mut g = rings.state.lock();
            while g.0 == seen && !g.1 {
                rings.changed.wait(&mut g);
            }
            if g.1 {
                return;
            }
            seen = g.0;
        }
    }

    /// Executes every complete packet between the consumed count and the write pointer.
    fn drain(&self, st: &mut State) -> Result<(), Stop> {
        let q = self.ring_bytes / 4;
        loop {
            let wptr = self.ptrs.load(WPTR_WORD);
            if wptr <= st.consumed {
                return Ok(());
            }
            let n = (wptr - st.consumed).min(q) as usize;
            let buf = self.read_ring(st.consumed, n)?;
            let mut at = 0;
            while at < n {
                let (p, len) = match pm4::decode(&buf[at..]) {
                    Ok(x) => x,
                    // The rest of the packet is not there yet: read again from here.
                    Err(Decode::Incomplete) if at > 0 => break,
                    Err(Decode::Incomplete) if n as u64 == q => {
                        return Err(packet_error(buf[at], "a packet larger than the ring"));
                    }
                    Err(Decode::Incomplete) => return Ok(()),
                    Err(d) => return Err(decode_error(buf[at], d)),
                };
                self.execute(st, buf[at], &p, false)?;
                at += len;
                st.consumed += len as u64;
                self.ptrs.store(RPTR_WORD, st.consumed % q);
            }
        }
    }

    /// `n` dwords of the ring from dword `from` (a count that wraps around the ring end).
    fn read_ring(&self, from: u64, n: usize) -> Result<Vec<u32>, Stop> {
        let q = (self.ring_bytes / 4) as usize;
        let pos = (from % q as u64) as usize;
        let first = n.min(q - pos);
        let mut dw = self.read_dwords(self.ring as u64 + pos as u64 * 4, first)?;
        if n > first {
            dw.extend(self.read_dwords(self.ring as u64, n - first)?);
        }
        Ok(dw)
    }

    /// `n` dwords at `addr`, read through the GPU's page table.
    fn read_dwords(&self, addr: u64, n: usize) -> Result<Vec<u32>, Stop> {
        let mut bytes = vec![0u8; n * 4];
        self.devs.access(self.gpu, addr as usize, Access::Read(&mut bytes)).map_err(|e| self.failed(&e))?;
        Ok(bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    /// Runs one packet (`header` is its first dword); its effects are visible when this
    /// returns.
    fn execute(&self, st: &mut State, header: u32, p: &Packet, in_ib: bool) -> Result<(), Stop> {
        match p {
            // Each dispatch fetches its code afresh: there is no cache to invalidate.
            Packet::Nop | Packet::AcquireMem { .. } => Ok(()),
            Packet::IndirectBuffer { .. } if in_ib => {
                Err(packet_error(header, "an indirect buffer inside an indirect buffer"))
            }
            Packet::IndirectBuffer { addr, dwords } => self.indirect_buffer(st, *addr, *dwords as usize),
            Packet::SetShReg { reg: r, values } => {
                let off = (r - reg::SH_BASE) as usize;
                st.sh[off..off + values.len()].copy_from_slice(values);
                Ok(())
            }
            Packet::DispatchDirect { dim, initiator } => self.dispatch(st, header, *dim, *initiator),
            Packet::ReleaseMem { addr, data, interrupt, ctxid } => {
                let bytes = match *data {
                    ReleaseData::None => Vec::new(),
                    ReleaseData::Low32(v) => v.to_le_bytes().to_vec(),
                    ReleaseData::Full64(v) => v.to_le_bytes().to_vec(),
                    ReleaseData::Clock => crate::sys::boottime_ns().to_le_bytes().to_vec(),
                };
                if !bytes.is_empty() {
                    self.write(*addr, &bytes)?;
                }
                if *interrupt && self.events.set(*ctxid).is_err() {
                    tracing::debug!(event = ctxid, "RELEASE_MEM for an event that does not exist");
                }
                Ok(())
            }
            Packet::WriteData { addr, same_addr: false, data } => {
                self.write(*addr, &data.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>())
            }
            Packet::WriteData { addr, same_addr: true, data } => {
                data.iter().try_for_each(|w| self.write(*addr, &w.to_le_bytes()))
            }
            &Packet::WaitRegMem { addr, reference, mask, func, interval } => {
                self.wait_reg_mem(addr, (reference, mask, func), interval)
            }
        }
    }

    fn write(&self, addr: u64, bytes: &[u8]) -> Result<(), Stop> {
        self.devs.access(self.gpu, addr as usize, Access::Write(bytes)).map_err(|e| self.failed(&e))
    }

    /// The packets of an indirect buffer, each executed as the ring's are.
    fn indirect_buffer(&self, st: &mut State, addr: u64, n: usize) -> Result<(), Stop> {
        let dw = self.read_dwords(addr, n)?;
        let mut at = 0;
        while at < n {
            match pm4::decode(&dw[at..]) {
                Ok((p, len)) => {
                    self.execute(st, dw[at], &p, true)?;
                    at += len;
                }
                Err(Decode::Incomplete) => {
                    return Err(packet_error(dw[at], "a packet crossing the end of its indirect buffer"));
                }
                Err(d) => return Err(decode_error(dw[at], d)),
            }
        }
        Ok(())
    }

    /// DISPATCH_DIRECT: the launch the SH registers describe, run to completion.
    fn dispatch(&self, st: &State, header: u32, grid: [u32; 3], initiator: u32) -> Result<(), Stop> {
        let at = |r: u32, i: usize| st.sh(r + i as u32);
        if (0..3).any(|i| at(reg::COMPUTE_START_X, i) != 0) {
            return Err(packet_error(header, "COMPUTE_START_X/Y/Z other than 0 are not emulated"));
        }
        let group: [u32; 3] = std::array::from_fn(|i| at(reg::COMPUTE_NUM_THREAD_X, i) & 0xffff);
        if group.contains(&0) {
            return Err(packet_error(header, "a workgroup of 0 work-items (COMPUTE_NUM_THREAD_X/Y/Z)"));
        }
        if grid.contains(&0) {
            return Ok(()); // nothing to run
        }
        let hi = u64::from(st.sh(reg::COMPUTE_PGM_HI) & 0xff);
        let launch = Launch {
            code: (hi << 32 | u64::from(st.sh(reg::COMPUTE_PGM_LO))) << 8,
            rsrc1: st.sh(reg::COMPUTE_PGM_RSRC1),
            rsrc2: st.sh(reg::COMPUTE_PGM_RSRC2),
            rsrc3: st.sh(reg::COMPUTE_PGM_RSRC3),
            user_data: std::array::from_fn(|i| at(reg::COMPUTE_USER_DATA_0, i)),
            group,
            grid,
            grid_in_threads: initiator & pm4::initiator::USE_THREAD_DIMENSIONS != 0,
        };
        let run = || isa::run_dispatch(&self.devs, self.gpu, &launch, &self.stop);
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(IsaError::Stopped)) => Err(Stop::Destroyed),
            Ok(Err(IsaError::Fault(e))) => Err(self.failed(&e)),
            Ok(Err(e)) => Err(Stop::Halted(QueueError::Shader(e.to_string()))),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(Stop::Halted(QueueError::Failed(format!("the shader core panicked: {msg}"))))
            }
        }
    }

    /// WAIT_REG_MEM on memory: polls until the word compares true (no limit: the hardware
    /// waits for ever) or the queue is destroyed, sleeping between polls.
    fn wait_reg_mem(
        &self,
        addr: u64,
        (reference, mask, func): (u32, u32, u8),
        interval: u16,
    ) -> Result<(), Stop> {
        let mut pause = Duration::from_micros(u64::from(interval.max(1))).min(WAIT_POLL_MAX);
        loop {
            let v = self.read_dwords(addr, 1)?[0];
            if poll_holds(func, v & mask, reference) {
                return Ok(());
            }
            if self.stop.load(Ordering::Acquire) {
                return Err(Stop::Destroyed);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(WAIT_POLL_MAX);
        }
    }

    /// A failed access: fatal GPU faults go to the memory-exception events; the queue
    /// halts.
    fn failed(&self, e: &Error) -> Stop {
        Stop::Halted(halt::access_failed(e))
    }
}
