//! One wavefront: 64 lanes, its registers, and the execution of the scalar and vector ALU
//! instructions (memory instructions: `mem.rs`).

use super::IsaError;
use super::decode::{EXEC, Inst, LITERAL, NONE, V0, VCC};
use super::ops::{Cond, Kind};

/// Lanes per wave.
pub const LANES: usize = 64;
/// SGPRs per wave: s0-s101, plus room for a 64-bit read of s101.
pub const SGPRS: usize = 104;
/// The most VGPRs a wave can have (gfx90a: 512, AGPRs included).
pub const MAX_VGPRS: usize = 512;

/// One VGPR: a value per lane.
pub type Vgpr = [u32; LANES];

/// A wave's state.
#[derive(Clone, Debug)]
pub struct Wave {
    /// Byte address of the next instruction.
    pub pc: u64,
    /// Scalar registers s0-s103.
    pub s: [u32; SGPRS],
    /// Vector registers, as many as RSRC1 allocates.
    pub v: Vec<Vgpr>,
    /// Lanes that execute.
    pub exec: u64,
    /// The vector condition code.
    pub vcc: u64,
    /// The scalar condition code.
    pub scc: bool,
    /// M0.
    pub m0: u32,
    /// The workgroup (dispatch-wide index) the wave belongs to.
    pub group: u64,
    /// Waiting at `s_barrier`.
    pub at_barrier: bool,
}

/// What the wave does after an instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Go on with the next instruction.
    Next,
    /// Jump to this address.
    Jump(u64),
    /// The wave has ended (`s_endpgm`).
    Ended,
    /// Wait for the rest of the workgroup (`s_barrier`), then go on.
    Barrier,
}

/// The float inline constants (operand codes 240-248) as bit patterns.
const FLOAT_CONSTS: [u32; 9] = [
    0x3f00_0000,
    0xbf00_0000,
    0x3f80_0000,
    0xbf80_0000,
    0x4000_0000,
    0xc000_0000,
    0x4080_0000,
    0xc080_0000,
    0x3e22_f983,
];

impl Wave {
    /// A wave at `pc` with `vgprs` zeroed VGPRs and every other register 0.
    pub fn new(pc: u64, vgprs: usize) -> Self {
        Wave {
            pc,
            s: [0; SGPRS],
            v: vec![[0; LANES]; vgprs],
            exec: 0,
            vcc: 0,
            scc: false,
            m0: 0,
            group: 0,
            at_barrier: false,
        }
    }

    pub(super) fn illegal(&self, why: impl Into<String>) -> IsaError {
        IsaError::Illegal { pc: self.pc, why: why.into() }
    }

    /// VGPR index of operand code `code`, checked against the allocation (`extra` more
    /// registers follow it).
    pub(super) fn vgpr(&self, code: u16, extra: usize) -> Result<usize, IsaError> {
        let r = usize::from(code - V0);
        if r + extra >= self.v.len() {
            return Err(self.illegal(format!("v{} used, {} allocated", r + extra, self.v.len())));
        }
        Ok(r)
    }

    /// A 32-bit source that is the same in every lane (not a VGPR).
    pub(super) fn scalar(&self, i: &Inst, code: u16) -> Result<u32, IsaError> {
        Ok(match code {
            0..=101 => self.s[usize::from(code)],
            104 | 105 => 0, // XNACK_MASK
            106 => self.vcc as u32,
            107 => (self.vcc >> 32) as u32,
            124 => self.m0,
            126 => self.exec as u32,
            127 => (self.exec >> 32) as u32,
            128..=192 => u32::from(code - 128),
            193..=208 => (-i32::from(code - 192)) as u32,
            240..=248 => FLOAT_CONSTS[usize::from(code - 240)],
            251 => u32::from(self.vcc == 0),
            252 => u32::from(self.exec == 0),
            253 => u32::from(self.scc),
            LITERAL => i.literal,
            _ => return Err(self.illegal(format!("source operand {code} is not supported"))),
        })
    }

    /// A 64-bit scalar source: an SGPR pair, VCC, EXEC, or an inline integer
    /// (sign-extended).
    pub(super) fn scalar64(&self, i: &Inst, code: u16) -> Result<u64, IsaError> {
        Ok(match code {
            0..=100 => u64::from(self.s[usize::from(code)]) | u64::from(self.s[usize::from(code) + 1]) << 32,
            VCC => self.vcc,
            EXEC => self.exec,
            128..=208 => self.scalar(i, code)? as i32 as i64 as u64,
            _ => return Err(self.illegal(format!("64-bit source operand {code} is not supported"))),
        })
    }

    /// Writes a 32-bit scalar destination.
    pub(super) fn set_scalar(&mut self, code: u16, v: u32) -> Result<(), IsaError> {
        match code {
            0..=101 => self.s[usize::from(code)] = v,
            106 => self.vcc = self.vcc & !0xffff_ffff | u64::from(v),
            107 => self.vcc = self.vcc & 0xffff_ffff | u64::from(v) << 32,
            124 => self.m0 = v,
            126 => self.exec = self.exec & !0xffff_ffff | u64::from(v),
            127 => self.exec = self.exec & 0xffff_ffff | u64::from(v) << 32,
            _ => return Err(self.illegal(format!("scalar destination {code} is not supported"))),
        }
        Ok(())
    }

    /// Writes a 64-bit scalar destination (an SGPR pair, VCC or EXEC).
    pub(super) fn set_scalar64(&mut self, code: u16, v: u64) -> Result<(), IsaError> {
        match code {
            0..=100 => {
                self.s[usize::from(code)] = v as u32;
                self.s[usize::from(code) + 1] = (v >> 32) as u32;
            }
            VCC => self.vcc = v,
            EXEC => self.exec = v,
            _ => return Err(self.illegal(format!("64-bit destination {code} is not supported"))),
        }
        Ok(())
    }

    /// A VALU source, lane by lane.
    fn lanes(&self, i: &Inst, code: u16) -> Result<Vgpr, IsaError> {
        if code >= V0 && code != NONE {
            Ok(self.v[self.vgpr(code, 0)?])
        } else {
            Ok([self.scalar(i, code)?; LANES])
        }
    }

    /// Writes `vals` into VGPR operand `code`, active lanes only.
    fn set_lanes(&mut self, code: u16, vals: &Vgpr) -> Result<(), IsaError> {
        let r = self.vgpr(code, 0)?;
        let exec = self.exec;
        if exec == u64::MAX {
            self.v[r] = *vals;
        } else {
            for (l, (d, &x)) in self.v[r].iter_mut().zip(vals).enumerate() {
                if exec >> l & 1 != 0 {
                    *d = x;
                }
            }
        }
        Ok(())
    }

    /// A lane mask of `f(lane)` over the active lanes (inactive lanes give 0).
    fn mask(&self, f: impl Fn(usize) -> bool) -> u64 {
        (0..LANES).filter(|&l| f(l)).fold(0, |m, l| m | 1 << l) & self.exec
    }

    /// Executes one vector ALU instruction.
    pub(super) fn valu(&mut self, i: &Inst) -> Result<(), IsaError> {
        if i.modifiers != 0 {
            return Err(self.illegal(format!(
                "{}: VOP3 modifiers (abs/neg/clamp/omod/opsel) are not supported",
                i.info.name
            )));
        }
        let src = |k: usize| self.lanes(i, i.src[k]);
        match i.info.kind {
            Kind::V1(f) => {
                let a = src(0)?;
                self.set_lanes(i.dst, &f(&a))?;
            }
            Kind::V2(f) => {
                let (a, b) = (src(0)?, src(1)?);
                self.set_lanes(i.dst, &f(&a, &b))?;
            }
            Kind::V3(f) => {
                let (a, b, c) = (src(0)?, src(1)?, src(2)?);
                self.set_lanes(i.dst, &f(&a, &b, &c))?;
            }
            Kind::VCarry { f, cin } => {
                let (a, b) = (src(0)?, src(1)?);
                let c = if cin { self.scalar64(i, i.src[2])? } else { 0 };
                let (d, cout) = f(&a, &b, c);
                self.set_lanes(i.dst, &d)?;
                self.set_scalar64(i.sdst, cout & self.exec)?;
            }
            Kind::VCndmask => {
                let (a, b, m) = (src(0)?, src(1)?, self.scalar64(i, i.src[2])?);
                self.set_lanes(i.dst, &std::array::from_fn(|l| if m >> l & 1 != 0 { b[l] } else { a[l] }))?;
            }
            Kind::VCmp { f, x } => {
                let (a, b) = (src(0)?, src(1)?);
                let m = self.mask(|l| f(a[l], b[l]));
                self.set_scalar64(i.sdst, m)?;
                if x {
                    self.exec = m;
                }
            }
            Kind::VReadFirstLane => {
                let a = src(0)?;
                let first = if self.exec == 0 { 0 } else { self.exec.trailing_zeros() as usize };
                self.set_scalar(i.dst, a[first])?;
            }
            _ => {
                return Err(self.illegal(format!(
                    "{} ({} {:#x}) is not a vector ALU op",
                    i.info.name,
                    i.format.name(),
                    i.op
                )));
            }
        }
        Ok(())
    }

    /// Whether a branch on `c` is taken.
    fn taken(&self, c: Cond) -> bool {
        match c {
            Cond::Always => true,
            Cond::Scc0 => !self.scc,
            Cond::Scc1 => self.scc,
            Cond::Vccz => self.vcc == 0,
            Cond::Vccnz => self.vcc != 0,
            Cond::Execz => self.exec == 0,
            Cond::Execnz => self.exec != 0,
        }
    }

    /// Executes one scalar ALU or program-control instruction.
    pub(super) fn salu(&mut self, i: &Inst, size: usize) -> Result<Flow, IsaError> {
        match i.info.kind {
            Kind::Nop => {}
            Kind::Endpgm => return Ok(Flow::Ended),
            Kind::Barrier => return Ok(Flow::Barrier),
            Kind::Branch(c) if self.taken(c) => {
                return Ok(Flow::Jump(self.pc.wrapping_add(4).wrapping_add_signed(i64::from(i.imm) * 4)));
            }
            Kind::Branch(_) => {}
            Kind::S1 { f, scc } => {
                let r = f(self.scalar(i, i.src[0])?);
                self.set_scalar(i.dst, r)?;
                self.scc = if scc { r != 0 } else { self.scc };
            }
            Kind::S1x64 { f, scc } => {
                let r = f(self.scalar64(i, i.src[0])?);
                self.set_scalar64(i.dst, r)?;
                self.scc = if scc { r != 0 } else { self.scc };
            }
            Kind::SGetPc => self.set_scalar64(i.dst, self.pc + 4 * size as u64)?,
            Kind::SSaveExec(f) => {
                let s = self.scalar64(i, i.src[0])?;
                let old = self.exec;
                self.set_scalar64(i.dst, old)?;
                self.exec = f(s, old);
                self.scc = self.exec != 0;
            }
            Kind::S2(f) => {
                let (r, c) = f(self.scalar(i, i.src[0])?, self.scalar(i, i.src[1])?, self.scc);
                self.set_scalar(i.dst, r)?;
                self.scc = c.unwrap_or(self.scc);
            }
            Kind::S2x64(f) => {
                let r = f(self.scalar64(i, i.src[0])?, self.scalar64(i, i.src[1])?);
                self.set_scalar64(i.dst, r)?;
                self.scc = r != 0;
            }
            Kind::SCmp(f) => self.scc = f(self.scalar(i, i.src[0])?, self.scalar(i, i.src[1])?),
            Kind::SK(f) => {
                let (r, c) = f(self.scalar(i, i.src[0])?, i.imm as u32, self.scc);
                self.set_scalar(i.dst, r)?;
                self.scc = c.unwrap_or(self.scc);
            }
            Kind::SCmpK(f) => self.scc = f(self.scalar(i, i.src[0])?, i.imm as u32),
            _ => {
                return Err(self.illegal(format!(
                    "{} ({} {:#x}) is not a scalar ALU op",
                    i.info.name,
                    i.format.name(),
                    i.op
                )));
            }
        }
        Ok(Flow::Next)
    }
}
