//! The memory a wave sees, and the scalar and vector memory instructions.
//!
//! Waves reach memory only through [`Memory`]: in production [`GpuMem`], which is
//! [`Devices::access`] (page-table translation, XNACK retry faults served, fatal faults as
//! `Error::GpuVmFault`, waiting while the queues are evicted); in unit tests a map.

use super::IsaError;
use super::decode::{Format, Inst, NONE};
use super::ops::Kind;
use super::wave::{LANES, Wave};
use crate::gpu::GpuIdx;
use crate::gpu::{Access, Devices};

/// A wave's view of memory.
pub trait Memory: Sync {
    /// A load of `buf.len()` bytes at `addr`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> crate::Result<()>;
    /// A store of `data` at `addr`.
    fn write(&self, addr: u64, data: &[u8]) -> crate::Result<()>;
    /// Called between time slices: returns at once unless the queues are evicted, then
    /// waits for their restore.
    fn pause_point(&self) {}
}

/// A GPU's memory: every access is a device access of GPU `gpu`.
#[derive(Clone, Copy, Debug)]
pub struct GpuMem<'a> {
    /// The instance's GPUs.
    pub devs: &'a Devices,
    /// The index of the GPU the waves run on.
    pub gpu: GpuIdx,
}

impl Memory for GpuMem<'_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> crate::Result<()> {
        self.devs.access(self.gpu, addr as usize, Access::Read(buf))
    }

    fn write(&self, addr: u64, data: &[u8]) -> crate::Result<()> {
        self.devs.access(self.gpu, addr as usize, Access::Write(data))
    }

    fn pause_point(&self) {
        self.devs.pause_point(self.gpu);
    }
}

impl Devices {
    /// Returns at once unless GPU `gpu`'s queues are evicted; then waits for their restore.
    /// Shader waves call it between time slices, so that no wave runs while its queues
    /// are evicted, ALU-only loops included (a memory instruction already waits inside
    /// [`Devices::access`]). Never held across a slice: an evictor waits for it.
    pub(crate) fn pause_point(&self, gpu: GpuIdx) {
        self.enter(gpu);
        self.leave(gpu);
    }
}

/// Buffers a worker reuses for every memory instruction.
#[derive(Debug, Default)]
pub struct Scratch {
    bytes: Vec<u8>,
    lanes: Vec<usize>,
    runs: Vec<(usize, usize, u64)>,
}

/// Where KFD puts the LDS and scratch apertures on gfx9 (4 GiB each): a flat access there
/// would need memory usvm does not model.
const APERTURES: [(u64, &str); 2] = [(1 << 48, "LDS"), (2 << 48, "scratch")];

impl Wave {
    /// Executes a scalar or vector memory instruction.
    pub(super) fn memory(&mut self, i: &Inst, mem: &dyn Memory, buf: &mut Scratch) -> Result<(), IsaError> {
        match i.info.kind {
            Kind::SLoad(n) => self.s_load(i, usize::from(n), mem),
            Kind::Load(n) => {
                let addrs = self.addresses(i, usize::from(n))?;
                self.load(i, &addrs, usize::from(n), mem, buf)
            }
            Kind::Store(n) => {
                let addrs = self.addresses(i, usize::from(n))?;
                self.store(i, &addrs, usize::from(n), mem, buf)
            }
            _ => Err(self.illegal(format!("{} is not a memory instruction", i.info.name))),
        }
    }

    fn s_load(&mut self, i: &Inst, n: usize, mem: &dyn Memory) -> Result<(), IsaError> {
        let base = self.scalar64(i, i.src[0])?;
        let mut off = i64::from(i.imm);
        for k in [1, 2] {
            if i.src[k] != NONE {
                off += i64::from(self.scalar(i, i.src[k])?);
            }
        }
        let addr = base.wrapping_add_signed(off) & !3;
        let mut b = [0u8; 64];
        mem.read(addr, &mut b[..4 * n]).map_err(IsaError::Fault)?;
        for k in 0..n {
            let v = u32::from_le_bytes(b[4 * k..4 * k + 4].try_into().expect("4 bytes"));
            self.set_scalar(i.dst + k as u16, v)?;
        }
        Ok(())
    }

    /// The byte address of each lane (active lanes only are meaningful).
    fn addresses(&self, i: &Inst, n: usize) -> Result<[u64; LANES], IsaError> {
        let data = if i.dst != NONE { i.dst } else { i.src[1] };
        self.vgpr(data, n - 1)?;
        let off = i64::from(i.imm);
        let a = self.vgpr(i.src[0], 0)?;
        let addrs: [u64; LANES] = if i.src[2] != NONE {
            let base = self.scalar64(i, i.src[2])?;
            std::array::from_fn(|l| base.wrapping_add(u64::from(self.v[a][l])).wrapping_add_signed(off))
        } else {
            self.vgpr(i.src[0], 1)?;
            std::array::from_fn(|l| {
                (u64::from(self.v[a][l]) | u64::from(self.v[a + 1][l]) << 32).wrapping_add_signed(off)
            })
        };
        if i.format == Format::Flat {
            for l in (0..LANES).filter(|&l| self.exec >> l & 1 != 0) {
                if let Some((_, what)) = APERTURES.iter().find(|(b, _)| addrs[l].wrapping_sub(*b) < 1 << 32) {
                    let why = format!("lane {l}: flat address {:#x} is in the {what} aperture", addrs[l]);
                    return Err(self.illegal(why));
                }
            }
        }
        Ok(addrs)
    }

    /// Fills `buf.lanes` with the active lanes and `buf.runs` with the runs of them whose
    /// accesses follow one another in memory: (first index into `lanes`, lane count, start
    /// address). One device access per run.
    fn runs(&self, addrs: &[u64; LANES], bytes: u64, buf: &mut Scratch) {
        buf.lanes.clear();
        buf.runs.clear();
        // The common case: every lane, one after the other.
        if self.exec == u64::MAX && (1..LANES).all(|l| addrs[l] == addrs[l - 1].wrapping_add(bytes)) {
            buf.lanes.extend(0..LANES);
            buf.runs.push((0, LANES, addrs[0]));
            return;
        }
        buf.lanes.extend((0..LANES).filter(|&l| self.exec >> l & 1 != 0));
        for (k, &l) in buf.lanes.iter().enumerate() {
            match buf.runs.last_mut() {
                Some((_, n, start)) if start.wrapping_add(*n as u64 * bytes) == addrs[l] => *n += 1,
                _ => buf.runs.push((k, 1, addrs[l])),
            }
        }
    }

    fn load(
        &mut self,
        i: &Inst,
        addrs: &[u64; LANES],
        n: usize,
        mem: &dyn Memory,
        buf: &mut Scratch,
    ) -> Result<(), IsaError> {
        self.runs(addrs, 4 * n as u64, buf);
        let Scratch { bytes, lanes, runs } = buf;
        bytes.clear();
        bytes.resize(lanes.len() * 4 * n, 0);
        for &(k, count, start) in runs.iter() {
            mem.read(start, &mut bytes[k * 4 * n..(k + count) * 4 * n]).map_err(IsaError::Fault)?;
        }
        // Registers change only once every lane has its data (a destination may also be
        // an address register).
        let d = self.vgpr(i.dst, n - 1)?;
        for (k, &l) in lanes.iter().enumerate() {
            for j in 0..n {
                let o = (k * n + j) * 4;
                self.v[d + j][l] = u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
            }
        }
        Ok(())
    }

    fn store(
        &mut self,
        i: &Inst,
        addrs: &[u64; LANES],
        n: usize,
        mem: &dyn Memory,
        buf: &mut Scratch,
    ) -> Result<(), IsaError> {
        self.runs(addrs, 4 * n as u64, buf);
        let Scratch { bytes, lanes, runs } = buf;
        let s = self.vgpr(i.src[1], n - 1)?;
        bytes.clear();
        for &l in lanes.iter() {
            for j in 0..n {
                bytes.extend_from_slice(&self.v[s + j][l].to_le_bytes());
            }
        }
        // Ascending lane order: where lanes overlap, the last one wins.
        for &(k, count, start) in runs.iter() {
            mem.write(start, &bytes[k * 4 * n..(k + count) * 4 * n]).map_err(IsaError::Fault)?;
        }
        Ok(())
    }
}
