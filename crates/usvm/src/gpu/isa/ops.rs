//! The opcode tables: one entry per instruction, per encoding format.
//!
//! An entry names the instruction and says how it executes ([`Kind`]); the lane loops and
//! operand handling are shared by every entry of a kind (see `wave.rs`). Adding an
//! instruction is one line here when its kind exists. Opcode numbers are gfx9's (checked
//! with llvm-mc 14 for `-mcpu=gfx90a`).

use super::wave::Vgpr;

/// How an instruction executes.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// VALU, one source: `d = f(a)` in every lane (written with `lanes!`, which puts the
    /// lane loop inside the function, where it is inlined and vectorised).
    V1(fn(&Vgpr) -> Vgpr),
    /// VALU, two sources: `d = f(src0, src1)` in every lane.
    V2(fn(&Vgpr, &Vgpr) -> Vgpr),
    /// VALU, three sources (VOP3 only): `d = f(src0, src1, src2)` in every lane.
    V3(fn(&Vgpr, &Vgpr, &Vgpr) -> Vgpr),
    /// VALU with a carry-out (VCC, or VOP3b's SDST) and, when `cin`, a carry-in (VCC, or
    /// VOP3b's SRC2): `(d, cout) = f(src0, src1, cin)` in every lane (written with
    /// `carry!`), the carries as lane masks.
    VCarry {
        /// The operation.
        f: fn(&Vgpr, &Vgpr, u64) -> (Vgpr, u64),
        /// Whether it reads a carry-in.
        cin: bool,
    },
    /// `v_cndmask_b32`: `d = mask[lane] ? src1 : src0` (mask: VCC, or VOP3's SRC2).
    VCndmask,
    /// `v_readfirstlane_b32`: an SGPR gets the first active lane's value.
    VReadFirstLane,
    /// VALU compare: the lane mask goes to VCC (or VOP3's SDST pair); `x` also writes EXEC.
    VCmp {
        /// The comparison.
        f: fn(u32, u32) -> bool,
        /// A `v_cmpx_*`: EXEC gets the result too.
        x: bool,
    },
    /// `v_nop`, `s_nop`, `s_waitcnt` (every memory instruction completes before the next
    /// starts), `s_sleep`, `s_setprio`.
    Nop,
    /// SALU, one 32-bit source: `d = f(a)`, SCC untouched unless `scc` (then `d != 0`).
    S1 {
        /// The operation.
        f: fn(u32) -> u32,
        /// Whether SCC becomes `d != 0`.
        scc: bool,
    },
    /// SALU, one 64-bit source: `d = f(a)`, SCC as [`Kind::S1`].
    S1x64 {
        /// The operation.
        f: fn(u64) -> u64,
        /// Whether SCC becomes `d != 0`.
        scc: bool,
    },
    /// `s_getpc_b64`: the address of the next instruction.
    SGetPc,
    /// `s_*_saveexec_b64`: `d = EXEC; EXEC = f(src, EXEC); SCC = EXEC != 0`.
    SSaveExec(fn(u64, u64) -> u64),
    /// SALU, two 32-bit sources and SCC in: `(d, scc out, if any) = f(a, b, scc)`.
    S2(fn(u32, u32, bool) -> (u32, Option<bool>)),
    /// SALU, two 64-bit sources: `d = f(a, b)`, SCC = `d != 0`.
    S2x64(fn(u64, u64) -> u64),
    /// SALU compare: `SCC = f(a, b)`.
    SCmp(fn(u32, u32) -> bool),
    /// SOPK: `d = f(d, simm16)`, with the SCC rule of [`Kind::S2`].
    SK(fn(u32, u32, bool) -> (u32, Option<bool>)),
    /// SOPK compare: `SCC = f(d, simm16)`.
    SCmpK(fn(u32, u32) -> bool),
    /// SOPP jump: to `pc + 4 + simm16 * 4` when the condition holds.
    Branch(Cond),
    /// `s_endpgm`: the wave ends.
    Endpgm,
    /// `s_barrier`: wait for every wave of the workgroup.
    Barrier,
    /// `s_load_dword*`: this many dwords into consecutive SGPRs.
    SLoad(u8),
    /// `flat_load_dword*` / `global_load_dword*`: this many dwords per lane.
    Load(u8),
    /// `flat_store_dword*` / `global_store_dword*`: this many dwords per lane.
    Store(u8),
}

/// When a SOPP branch is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cond {
    /// Always (`s_branch`).
    Always,
    /// SCC == 0.
    Scc0,
    /// SCC == 1.
    Scc1,
    /// VCC == 0 (all 64 bits).
    Vccz,
    /// VCC != 0.
    Vccnz,
    /// EXEC == 0.
    Execz,
    /// EXEC != 0.
    Execnz,
}

/// One instruction of a format's table.
#[derive(Debug)]
pub struct OpInfo {
    /// Opcode within the format.
    pub op: u16,
    /// The assembler's name.
    pub name: &'static str,
    /// How it executes.
    pub kind: Kind,
}

/// The entry for `op` in `table`, if the interpreter knows it.
pub fn find(table: &'static [OpInfo], op: u32) -> Option<&'static OpInfo> {
    table.iter().find(|o| u32::from(o.op) == op)
}

/// A whole-register VALU operation from a per-lane expression: `lanes!(|a, b| a & b)`.
macro_rules! lanes {
    (|$a:ident| $body:expr) => {
        |a: &Vgpr| -> Vgpr {
            std::array::from_fn(|l| {
                let $a: u32 = a[l];
                $body
            })
        }
    };
    (|$a:ident, $b:ident| $body:expr) => {
        |a: &Vgpr, b: &Vgpr| -> Vgpr {
            std::array::from_fn(|l| {
                let ($a, $b): (u32, u32) = (a[l], b[l]);
                $body
            })
        }
    };
    (|$a:ident, $b:ident, $c:ident| $body:expr) => {
        |a: &Vgpr, b: &Vgpr, c: &Vgpr| -> Vgpr {
            std::array::from_fn(|l| {
                let ($a, $b, $c): (u32, u32, u32) = (a[l], b[l], c[l]);
                $body
            })
        }
    };
}

/// A whole-register carry operation from a per-lane one: `carry!(add)`.
macro_rules! carry {
    ($f:expr) => {
        |a: &Vgpr, b: &Vgpr, cin: u64| -> (Vgpr, u64) {
            let mut cout = 0u64;
            let d = std::array::from_fn(|l| {
                let (r, c) = $f(a[l], b[l], cin >> l & 1 != 0);
                cout |= u64::from(c) << l;
                r
            });
            (d, cout)
        }
    };
}

const fn e(op: u16, name: &'static str, kind: Kind) -> OpInfo {
    OpInfo { op, name, kind }
}

use Kind::*;

fn add(a: u32, b: u32, c: bool) -> (u32, bool) {
    let r = u64::from(a) + u64::from(b) + u64::from(c);
    (r as u32, r >> 32 != 0)
}
fn sub(a: u32, b: u32, c: bool) -> (u32, bool) {
    let r = u64::from(a).wrapping_sub(u64::from(b)).wrapping_sub(u64::from(c));
    (r as u32, r >> 32 != 0)
}
fn sx(a: u32) -> i32 {
    a as i32
}

/// SOPP (`s_nop`, branches, `s_waitcnt`, ...).
pub static SOPP: &[OpInfo] = &[
    e(0x00, "s_nop", Nop),
    e(0x01, "s_endpgm", Endpgm),
    e(0x02, "s_branch", Branch(Cond::Always)),
    e(0x04, "s_cbranch_scc0", Branch(Cond::Scc0)),
    e(0x05, "s_cbranch_scc1", Branch(Cond::Scc1)),
    e(0x06, "s_cbranch_vccz", Branch(Cond::Vccz)),
    e(0x07, "s_cbranch_vccnz", Branch(Cond::Vccnz)),
    e(0x08, "s_cbranch_execz", Branch(Cond::Execz)),
    e(0x09, "s_cbranch_execnz", Branch(Cond::Execnz)),
    e(0x0a, "s_barrier", Barrier),
    e(0x0c, "s_waitcnt", Nop),
    e(0x0e, "s_sleep", Nop),
    e(0x0f, "s_setprio", Nop),
];

/// SOPK (`s_movk_i32`, ...); the immediate is sign-extended except for the `_u32` compares.
pub static SOPK: &[OpInfo] = &[
    e(0x00, "s_movk_i32", SK(|_, k, _| (k, None))),
    e(0x05, "s_cmpk_eq_i32", SCmpK(|a, k| a == k)),
    e(0x08, "s_cmpk_eq_u32", SCmpK(|a, k| a == k & 0xffff)),
    e(0x0e, "s_addk_i32", SK(|a, k, _| (a.wrapping_add(k), Some(sx(a).checked_add(sx(k)).is_none())))),
    e(0x0f, "s_mulk_i32", SK(|a, k, _| (a.wrapping_mul(k), None))),
];

/// SOPC (`s_cmp_*`).
pub static SOPC: &[OpInfo] = &[
    e(0x00, "s_cmp_eq_i32", SCmp(|a, b| a == b)),
    e(0x01, "s_cmp_lg_i32", SCmp(|a, b| a != b)),
    e(0x02, "s_cmp_gt_i32", SCmp(|a, b| sx(a) > sx(b))),
    e(0x03, "s_cmp_ge_i32", SCmp(|a, b| sx(a) >= sx(b))),
    e(0x04, "s_cmp_lt_i32", SCmp(|a, b| sx(a) < sx(b))),
    e(0x05, "s_cmp_le_i32", SCmp(|a, b| sx(a) <= sx(b))),
    e(0x06, "s_cmp_eq_u32", SCmp(|a, b| a == b)),
    e(0x07, "s_cmp_lg_u32", SCmp(|a, b| a != b)),
    e(0x08, "s_cmp_gt_u32", SCmp(|a, b| a > b)),
    e(0x09, "s_cmp_ge_u32", SCmp(|a, b| a >= b)),
    e(0x0a, "s_cmp_lt_u32", SCmp(|a, b| a < b)),
    e(0x0b, "s_cmp_le_u32", SCmp(|a, b| a <= b)),
];

/// SOP1 (`s_mov_b32`, ...).
pub static SOP1: &[OpInfo] = &[
    e(0x00, "s_mov_b32", S1 { f: |a| a, scc: false }),
    e(0x01, "s_mov_b64", S1x64 { f: |a| a, scc: false }),
    e(0x04, "s_not_b32", S1 { f: |a| !a, scc: true }),
    e(0x05, "s_not_b64", S1x64 { f: |a| !a, scc: true }),
    e(0x1c, "s_getpc_b64", SGetPc),
    e(0x20, "s_and_saveexec_b64", SSaveExec(|s, x| s & x)),
    e(0x21, "s_or_saveexec_b64", SSaveExec(|s, x| s | x)),
];

/// SOP2 (`s_add_u32`, `s_lshl_b32`, ...).
pub static SOP2: &[OpInfo] = &[
    e(0x00, "s_add_u32", S2(|a, b, _| with_scc(add(a, b, false)))),
    e(0x01, "s_sub_u32", S2(|a, b, _| with_scc(sub(a, b, false)))),
    e(0x02, "s_add_i32", S2(|a, b, _| (a.wrapping_add(b), Some(sx(a).checked_add(sx(b)).is_none())))),
    e(0x03, "s_sub_i32", S2(|a, b, _| (a.wrapping_sub(b), Some(sx(a).checked_sub(sx(b)).is_none())))),
    e(0x04, "s_addc_u32", S2(|a, b, c| with_scc(add(a, b, c)))),
    e(0x05, "s_subb_u32", S2(|a, b, c| with_scc(sub(a, b, c)))),
    e(0x06, "s_min_i32", S2(|a, b, _| (sx(a).min(sx(b)) as u32, Some(sx(a) < sx(b))))),
    e(0x07, "s_min_u32", S2(|a, b, _| (a.min(b), Some(a < b)))),
    e(0x08, "s_max_i32", S2(|a, b, _| (sx(a).max(sx(b)) as u32, Some(sx(a) > sx(b))))),
    e(0x09, "s_max_u32", S2(|a, b, _| (a.max(b), Some(a > b)))),
    e(0x0a, "s_cselect_b32", S2(|a, b, c| (if c { a } else { b }, None))),
    e(0x0c, "s_and_b32", S2(|a, b, _| nz(a & b))),
    e(0x0d, "s_and_b64", S2x64(|a, b| a & b)),
    e(0x0e, "s_or_b32", S2(|a, b, _| nz(a | b))),
    e(0x0f, "s_or_b64", S2x64(|a, b| a | b)),
    e(0x10, "s_xor_b32", S2(|a, b, _| nz(a ^ b))),
    e(0x11, "s_xor_b64", S2x64(|a, b| a ^ b)),
    e(0x12, "s_andn2_b32", S2(|a, b, _| nz(a & !b))),
    e(0x13, "s_andn2_b64", S2x64(|a, b| a & !b)),
    e(0x1c, "s_lshl_b32", S2(|a, b, _| nz(a << (b & 31)))),
    e(0x1e, "s_lshr_b32", S2(|a, b, _| nz(a >> (b & 31)))),
    e(0x20, "s_ashr_i32", S2(|a, b, _| nz((sx(a) >> (b & 31)) as u32))),
    e(0x24, "s_mul_i32", S2(|a, b, _| (a.wrapping_mul(b), None))),
];

fn with_scc((r, c): (u32, bool)) -> (u32, Option<bool>) {
    (r, Some(c))
}
fn nz(r: u32) -> (u32, Option<bool>) {
    (r, Some(r != 0))
}

/// SMEM (`s_load_dword*`).
pub static SMEM: &[OpInfo] = &[
    e(0x00, "s_load_dword", SLoad(1)),
    e(0x01, "s_load_dwordx2", SLoad(2)),
    e(0x02, "s_load_dwordx4", SLoad(4)),
    e(0x03, "s_load_dwordx8", SLoad(8)),
    e(0x04, "s_load_dwordx16", SLoad(16)),
];

/// VOP1; VOP3 opcode `0x140 + op`.
pub static VOP1: &[OpInfo] = &[
    e(0x00, "v_nop", Nop),
    e(0x01, "v_mov_b32", V1(|a| *a)),
    e(0x02, "v_readfirstlane_b32", VReadFirstLane),
    e(0x2b, "v_not_b32", V1(lanes!(|a| !a))),
    e(0x2c, "v_bfrev_b32", V1(lanes!(|a| a.reverse_bits()))),
];

/// VOP2; VOP3 opcode `0x100 + op` (the carry ops as VOP3b).
pub static VOP2: &[OpInfo] = &[
    e(0x00, "v_cndmask_b32", VCndmask),
    e(0x08, "v_mul_u32_u24", V2(lanes!(|a, b| (a & 0xff_ffff).wrapping_mul(b & 0xff_ffff)))),
    e(0x0c, "v_min_i32", V2(lanes!(|a, b| sx(a).min(sx(b)) as u32))),
    e(0x0d, "v_max_i32", V2(lanes!(|a, b| sx(a).max(sx(b)) as u32))),
    e(0x0e, "v_min_u32", V2(lanes!(|a, b| a.min(b)))),
    e(0x0f, "v_max_u32", V2(lanes!(|a, b| a.max(b)))),
    e(0x10, "v_lshrrev_b32", V2(lanes!(|a, b| b >> (a & 31)))),
    e(0x11, "v_ashrrev_i32", V2(lanes!(|a, b| (sx(b) >> (a & 31)) as u32))),
    e(0x12, "v_lshlrev_b32", V2(lanes!(|a, b| b << (a & 31)))),
    e(0x13, "v_and_b32", V2(lanes!(|a, b| a & b))),
    e(0x14, "v_or_b32", V2(lanes!(|a, b| a | b))),
    e(0x15, "v_xor_b32", V2(lanes!(|a, b| a ^ b))),
    e(0x19, "v_add_co_u32", VCarry { f: carry!(add), cin: false }),
    e(0x1a, "v_sub_co_u32", VCarry { f: carry!(sub), cin: false }),
    e(0x1b, "v_subrev_co_u32", VCarry { f: carry!(|a, b, c| sub(b, a, c)), cin: false }),
    e(0x1c, "v_addc_co_u32", VCarry { f: carry!(add), cin: true }),
    e(0x1d, "v_subb_co_u32", VCarry { f: carry!(sub), cin: true }),
    e(0x1e, "v_subbrev_co_u32", VCarry { f: carry!(|a, b, c| sub(b, a, c)), cin: true }),
    e(0x34, "v_add_u32", V2(lanes!(|a, b| a.wrapping_add(b)))),
    e(0x35, "v_sub_u32", V2(lanes!(|a, b| a.wrapping_sub(b)))),
    e(0x36, "v_subrev_u32", V2(lanes!(|a, b| b.wrapping_sub(a)))),
];

/// VOP2 opcodes whose VOP3 form is VOP3b (bits 14:8 are a carry-out SGPR pair).
pub fn is_vop3b(vop2_op: u32) -> bool {
    (0x19..=0x1e).contains(&vop2_op)
}

/// VOPC; VOP3 opcode `op` (the same number, the result in an SGPR pair).
pub static VOPC: &[OpInfo] = &[
    e(0xc0, "v_cmp_f_i32", VCmp { f: |_, _| false, x: false }),
    e(0xc1, "v_cmp_lt_i32", VCmp { f: |a, b| sx(a) < sx(b), x: false }),
    e(0xc2, "v_cmp_eq_i32", VCmp { f: |a, b| a == b, x: false }),
    e(0xc3, "v_cmp_le_i32", VCmp { f: |a, b| sx(a) <= sx(b), x: false }),
    e(0xc4, "v_cmp_gt_i32", VCmp { f: |a, b| sx(a) > sx(b), x: false }),
    e(0xc5, "v_cmp_ne_i32", VCmp { f: |a, b| a != b, x: false }),
    e(0xc6, "v_cmp_ge_i32", VCmp { f: |a, b| sx(a) >= sx(b), x: false }),
    e(0xc7, "v_cmp_t_i32", VCmp { f: |_, _| true, x: false }),
    e(0xc8, "v_cmp_f_u32", VCmp { f: |_, _| false, x: false }),
    e(0xc9, "v_cmp_lt_u32", VCmp { f: |a, b| a < b, x: false }),
    e(0xca, "v_cmp_eq_u32", VCmp { f: |a, b| a == b, x: false }),
    e(0xcb, "v_cmp_le_u32", VCmp { f: |a, b| a <= b, x: false }),
    e(0xcc, "v_cmp_gt_u32", VCmp { f: |a, b| a > b, x: false }),
    e(0xcd, "v_cmp_ne_u32", VCmp { f: |a, b| a != b, x: false }),
    e(0xce, "v_cmp_ge_u32", VCmp { f: |a, b| a >= b, x: false }),
    e(0xcf, "v_cmp_t_u32", VCmp { f: |_, _| true, x: false }),
    e(0xd1, "v_cmpx_lt_i32", VCmp { f: |a, b| sx(a) < sx(b), x: true }),
    e(0xd2, "v_cmpx_eq_i32", VCmp { f: |a, b| a == b, x: true }),
    e(0xd9, "v_cmpx_lt_u32", VCmp { f: |a, b| a < b, x: true }),
    e(0xda, "v_cmpx_eq_u32", VCmp { f: |a, b| a == b, x: true }),
    e(0xdc, "v_cmpx_gt_u32", VCmp { f: |a, b| a > b, x: true }),
    e(0xdd, "v_cmpx_ne_u32", VCmp { f: |a, b| a != b, x: true }),
];

/// VOP3-only opcodes (0x1c0 and up).
pub static VOP3: &[OpInfo] = &[
    e(0x1fd, "v_lshl_add_u32", V3(lanes!(|a, b, c| (a << (b & 31)).wrapping_add(c)))),
    e(0x1ff, "v_add3_u32", V3(lanes!(|a, b, c| a.wrapping_add(b).wrapping_add(c)))),
    e(0x285, "v_mul_lo_u32", V2(lanes!(|a, b| a.wrapping_mul(b)))),
    e(0x286, "v_mul_hi_u32", V2(lanes!(|a, b| ((u64::from(a) * u64::from(b)) >> 32) as u32))),
];

/// FLAT and GLOBAL (the same opcodes).
pub static FLAT: &[OpInfo] = &[
    e(0x14, "load_dword", Load(1)),
    e(0x15, "load_dwordx2", Load(2)),
    e(0x16, "load_dwordx3", Load(3)),
    e(0x17, "load_dwordx4", Load(4)),
    e(0x1c, "store_dword", Store(1)),
    e(0x1d, "store_dwordx2", Store(2)),
    e(0x1e, "store_dwordx3", Store(3)),
    e(0x1f, "store_dwordx4", Store(4)),
];
