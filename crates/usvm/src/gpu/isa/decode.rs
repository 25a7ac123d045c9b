//! Instruction decoding: the gfx9 encoding formats, told apart by their leading bits, to
//! one [`Inst`] whose operands are operand codes (the 9-bit source space: SGPRs and special
//! registers below 256, VGPR `n` at `256 + n`).

use super::IsaError;
use super::ops::{self, Kind, OpInfo};

/// "No operand".
pub const NONE: u16 = u16::MAX;
/// Operand code of VCC (its low half; as a 64-bit operand, the pair).
pub const VCC: u16 = 106;
/// Operand code of EXEC (its low half; as a 64-bit operand, the pair).
pub const EXEC: u16 = 126;
/// Operand code that stands for the literal dword following the instruction.
pub const LITERAL: u16 = 255;
/// Operand code of VGPR 0.
pub const V0: u16 = 256;

/// An encoding format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Scalar, one source.
    Sop1,
    /// Scalar, two sources.
    Sop2,
    /// Scalar compare.
    Sopc,
    /// Scalar with a 16-bit immediate.
    Sopk,
    /// Scalar program control.
    Sopp,
    /// Scalar memory.
    Smem,
    /// Vector, one source.
    Vop1,
    /// Vector, two sources.
    Vop2,
    /// Vector compare.
    Vopc,
    /// Vector, 64-bit encoding (VOP3a and VOP3b).
    Vop3,
    /// Flat memory (FLAT segment).
    Flat,
    /// Flat memory (GLOBAL segment).
    Global,
}

impl Format {
    /// The format's name as the ISA documents write it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Sop1 => "SOP1",
            Format::Sop2 => "SOP2",
            Format::Sopc => "SOPC",
            Format::Sopk => "SOPK",
            Format::Sopp => "SOPP",
            Format::Smem => "SMEM",
            Format::Vop1 => "VOP1",
            Format::Vop2 => "VOP2",
            Format::Vopc => "VOPC",
            Format::Vop3 => "VOP3",
            Format::Flat => "FLAT",
            Format::Global => "GLOBAL",
        }
    }
}

/// One decoded instruction.
#[derive(Clone, Copy, Debug)]
pub struct Inst {
    /// Its encoding.
    pub format: Format,
    /// Its opcode within the format (VOP3: the 10-bit number).
    pub op: u32,
    /// Its table entry.
    pub info: &'static OpInfo,
    /// Destination operand code (VGPR `n` = `256 + n`), or [`NONE`].
    pub dst: u16,
    /// A VALU instruction's carry-out or compare-result SGPR pair ([`VCC`] in VOP2 and
    /// VOPC), or [`NONE`].
    pub sdst: u16,
    /// Source operand codes, or [`NONE`]. VOP2's carry-in and `v_cndmask`'s mask are
    /// `src[2]` = [`VCC`]; SMEM: base pair, offset SGPR, SOFFSET SGPR; FLAT: address
    /// VGPR, data VGPR, SADDR pair.
    pub src: [u16; 3],
    /// SOPP / SOPK `simm16` (sign-extended), or the SMEM / FLAT byte offset.
    pub imm: i32,
    /// The literal dword (operand code [`LITERAL`]), or 0.
    pub literal: u32,
    /// GLC bit (memory instructions; accepted, no cache to bypass).
    pub glc: bool,
    /// SLC bit (FLAT; accepted, ignored).
    pub slc: bool,
    /// VOP3 input and output modifiers (ABS, OPSEL, CLAMP, OMOD, NEG) as found, 0 when
    /// none: none of them is supported by the integer instructions interpreted here.
    pub modifiers: u32,
}

/// How many dwords the instruction starting with `w` occupies (a literal included).
pub fn size(w: u32) -> usize {
    let lit8 = |x: u32| u32::from(x & 0xff == 0xff);
    let lit9 = |x: u32| u32::from(x & 0x1ff == 0xff);
    let n = match w {
        _ if w >> 23 == 0x17d => 1 + lit8(w),
        _ if w >> 23 == 0x17e => 1 + (lit8(w) | lit8(w >> 8)),
        _ if w >> 23 == 0x17f || w >> 28 == 0xb => 1,
        _ if w >> 30 == 0b10 => 1 + (lit8(w) | lit8(w >> 8)),
        _ if w >> 30 == 0b11 => 2,
        _ => 1 + lit9(w),
    };
    n as usize
}

fn sext(v: u32, bits: u32) -> i32 {
    ((v << (32 - bits)) as i32) >> (32 - bits)
}

fn illegal(why: impl Into<String>) -> IsaError {
    IsaError::Illegal { pc: 0, why: why.into() }
}

/// Decodes the instruction at the start of `words`: the instruction and the dwords it
/// occupies. `words` must hold at least [`size`]`(words[0])` dwords. Errors carry pc 0;
/// the caller knows the real one ([`IsaError::at`]).
pub fn decode(words: &[u32]) -> Result<(Inst, usize), IsaError> {
    let w = *words.first().ok_or_else(|| illegal("no instruction dword"))?;
    let n = size(w);
    if words.len() < n {
        return Err(illegal(format!("instruction {w:08x} needs {n} dwords, {} given", words.len())));
    }
    let w1 = if n == 2 { words[1] } else { 0 };
    let mut i = match w {
        _ if w >> 23 == 0x17d => scalar(Format::Sop1, (w >> 8) & 0xff, [w & 0xff, NONE32, NONE32], w >> 16),
        _ if w >> 23 == 0x17e => {
            scalar(Format::Sopc, (w >> 16) & 0x7f, [w & 0xff, (w >> 8) & 0xff, NONE32], NONE32)
        }
        _ if w >> 23 == 0x17f => immediate(Format::Sopp, (w >> 16) & 0x7f, w, NONE32),
        _ if w >> 28 == 0xb => immediate(Format::Sopk, (w >> 23) & 0x1f, w, (w >> 16) & 0x7f),
        _ if w >> 30 == 0b10 => {
            scalar(Format::Sop2, (w >> 23) & 0x7f, [w & 0xff, (w >> 8) & 0xff, NONE32], w >> 16)
        }
        _ if w >> 26 == 0x30 => smem(w, w1),
        _ if w >> 23 == 0x1a7 => Err(unknown_encoding("VOP3P", (w >> 16) & 0x7f)),
        _ if w >> 26 == 0x34 => vop3(w, w1),
        _ if w >> 26 == 0x37 => flat(w, w1),
        _ if w >> 30 == 0b11 => Err(unknown_encoding(encoding_name(w), w >> 26)),
        _ if w >> 25 == 0x3f => vector(Format::Vop1, (w >> 9) & 0xff, w),
        _ if w >> 25 == 0x3e => vector(Format::Vopc, (w >> 17) & 0xff, w),
        _ => vector(Format::Vop2, (w >> 25) & 0x3f, w),
    }
    .map_err(|e| match e {
        IsaError::Unknown { pc, format, op, .. } => IsaError::Unknown { pc, format, op, words: [w, w1] },
        e => e,
    })?;
    if i.src.contains(&LITERAL) {
        i.literal = w1;
    }
    Ok((i, n))
}

const NONE32: u32 = NONE as u32;

fn unknown_encoding(format: &'static str, op: u32) -> IsaError {
    IsaError::Unknown { pc: 0, format, op, words: [0; 2] }
}

/// The name of a 64-bit encoding the interpreter does not execute.
fn encoding_name(w: u32) -> &'static str {
    match w >> 26 {
        0x31 => "EXP",
        0x32 | 0x35 => "VINTRP",
        0x36 => "DS",
        0x38 => "MUBUF",
        0x3a => "MTBUF",
        0x3c => "MIMG",
        _ => "unknown encoding",
    }
}

/// Looks `op` up in `format`'s table.
pub(super) fn lookup(format: Format, table: &'static [OpInfo], op: u32) -> Result<&'static OpInfo, IsaError> {
    ops::find(table, op).ok_or(IsaError::Unknown { pc: 0, format: format.name(), op, words: [0; 2] })
}

/// An instruction with every field at its "absent" value.
pub(super) fn blank(format: Format, op: u32, info: &'static OpInfo) -> Inst {
    Inst {
        format,
        op,
        info,
        dst: NONE,
        sdst: NONE,
        src: [NONE; 3],
        imm: 0,
        literal: 0,
        glc: false,
        slc: false,
        modifiers: 0,
    }
}

fn code(x: u32) -> u16 {
    if x == NONE32 { NONE } else { x as u16 }
}

fn scalar(format: Format, op: u32, src: [u32; 3], dst: u32) -> Result<Inst, IsaError> {
    let table = match format {
        Format::Sop1 => ops::SOP1,
        Format::Sop2 => ops::SOP2,
        _ => ops::SOPC,
    };
    let mut i = blank(format, op, lookup(format, table, op)?);
    i.src = src.map(code);
    i.dst = if dst == NONE32 { NONE } else { (dst & 0x7f) as u16 };
    Ok(i)
}

fn immediate(format: Format, op: u32, w: u32, sdst: u32) -> Result<Inst, IsaError> {
    let table = if format == Format::Sopp { ops::SOPP } else { ops::SOPK };
    let mut i = blank(format, op, lookup(format, table, op)?);
    i.imm = sext(w & 0xffff, 16);
    if sdst != NONE32 {
        i.dst = sdst as u16;
        i.src[0] = sdst as u16;
    }
    Ok(i)
}

fn smem(w: u32, w1: u32) -> Result<Inst, IsaError> {
    let op = (w >> 18) & 0xff;
    let mut i = blank(Format::Smem, op, lookup(Format::Smem, ops::SMEM, op)?);
    i.src[0] = ((w & 0x3f) * 2) as u16;
    i.dst = ((w >> 6) & 0x7f) as u16;
    i.glc = w >> 16 & 1 != 0;
    if w >> 17 & 1 != 0 {
        i.imm = sext(w1 & 0x1f_ffff, 21);
    } else {
        i.src[1] = (w1 & 0x7f) as u16;
    }
    if w >> 14 & 1 != 0 {
        i.src[2] = ((w1 >> 25) & 0x7f) as u16;
    }
    Ok(i)
}

fn flat(w: u32, w1: u32) -> Result<Inst, IsaError> {
    let op = (w >> 18) & 0x7f;
    let (format, imm) = match (w >> 14) & 3 {
        0 => (Format::Flat, (w & 0xfff) as i32),
        2 => (Format::Global, sext(w & 0x1fff, 13)),
        1 => return Err(illegal("the SCRATCH segment is not supported (no scratch memory)")),
        _ => return Err(illegal("FLAT segment 3 is reserved")),
    };
    let mut i = blank(format, op, lookup(format, ops::FLAT, op)?);
    if w >> 13 & 1 != 0 {
        return Err(illegal("FLAT with LDS=1 is not supported (no LDS)"));
    }
    i.imm = imm;
    i.glc = w >> 16 & 1 != 0;
    i.slc = w >> 17 & 1 != 0;
    i.src[0] = V0 + (w1 & 0xff) as u16;
    let saddr = (w1 >> 16) & 0x7f;
    if format == Format::Global && saddr != 0x7f {
        i.src[2] = saddr as u16;
    }
    match i.info.kind {
        Kind::Store(_) => i.src[1] = V0 + ((w1 >> 8) & 0xff) as u16,
        _ => i.dst = V0 + (w1 >> 24) as u16,
    }
    Ok(i)
}

fn vector(format: Format, op: u32, w: u32) -> Result<Inst, IsaError> {
    let src0 = w & 0x1ff;
    if src0 == 0xf9 || src0 == 0xfa {
        let what = if src0 == 0xf9 { "SDWA" } else { "DPP" };
        return Err(illegal(format!("{} with {what} is not supported", format.name())));
    }
    let table = match format {
        Format::Vop1 => ops::VOP1,
        Format::Vopc => ops::VOPC,
        _ => ops::VOP2,
    };
    let mut i = blank(format, op, lookup(format, table, op)?);
    i.src[0] = src0 as u16;
    let vdst = ((w >> 17) & 0xff) as u16;
    match format {
        Format::Vop1 => i.dst = vdst + V0,
        Format::Vopc => {
            i.src[1] = V0 + ((w >> 9) & 0xff) as u16;
            i.sdst = VCC;
        }
        _ => {
            i.src[1] = V0 + ((w >> 9) & 0xff) as u16;
            i.dst = vdst + V0;
        }
    }
    match i.info.kind {
        Kind::VReadFirstLane => i.dst = vdst,
        Kind::VCarry { cin, .. } => {
            i.sdst = VCC;
            if cin {
                i.src[2] = VCC;
            }
        }
        Kind::VCndmask => i.src[2] = VCC,
        Kind::Nop => i.src[0] = NONE,
        _ => {}
    }
    Ok(i)
}

/// VOP3a / VOP3b: the VOPC (0x000-0x0ff), VOP2 (0x100 + op), VOP1 (0x140 + op) and
/// VOP3-only (0x1c0 and up) instructions in their 64-bit form.
fn vop3(w: u32, w1: u32) -> Result<Inst, IsaError> {
    let op = (w >> 16) & 0x3ff;
    let (table, sub) = match op {
        0x000..0x100 => (ops::VOPC, op),
        0x100..0x140 => (ops::VOP2, op - 0x100),
        0x140..0x180 => (ops::VOP1, op - 0x140),
        _ => (ops::VOP3, op),
    };
    let info = ops::find(table, sub).ok_or(IsaError::Unknown { pc: 0, format: "VOP3", op, words: [0; 2] })?;
    let mut i = blank(Format::Vop3, op, info);
    i.src = [w1 & 0x1ff, (w1 >> 9) & 0x1ff, (w1 >> 18) & 0x1ff].map(|x| x as u16);
    if i.src.contains(&LITERAL) {
        return Err(illegal("VOP3 cannot take a literal operand on gfx9"));
    }
    let vdst = (w & 0xff) as u16;
    let b3 = (0x100..0x140).contains(&op) && ops::is_vop3b(op - 0x100);
    // VOP3b: CLAMP (bit 15); VOP3a: ABS (10:8), OPSEL (14:11), CLAMP (15). Both: OMOD and NEG.
    i.modifiers = if b3 { w & 0x8000 } else { w & 0xff00 } | (w1 & 0xf800_0000);
    match info.kind {
        Kind::VCmp { .. } => i.sdst = vdst,
        Kind::VReadFirstLane => i.dst = vdst,
        Kind::VCarry { .. } => {
            i.dst = V0 + vdst;
            i.sdst = ((w >> 8) & 0x7f) as u16;
        }
        _ => i.dst = V0 + vdst,
    }
    let sources = match info.kind {
        Kind::V1(_) | Kind::VReadFirstLane => 1,
        Kind::V3(_) | Kind::VCndmask | Kind::VCarry { cin: true, .. } => 3,
        Kind::Nop => 0,
        _ => 2,
    };
    for s in &mut i.src[sources..] {
        *s = NONE;
    }
    Ok(i)
}
