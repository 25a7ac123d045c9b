//! One wave's semantics, instruction by instruction, on a map-backed memory. Machine code
//! assembled with llvm-mc 14 (`-mcpu=gfx90a`); the source is beside each word.

use super::super::code::CodeCache;
use super::super::mem::Scratch;
use super::super::wave::{Flow, Wave};
use super::{MapMem, PAGE};
use crate::Error;
use crate::gpu::isa::IsaError;

const CODE: u64 = 0x7f00_0000_0000;
const ENDPGM: u32 = 0xbf81_0000;
const MOVK_S9_1: u32 = 0xb009_0001; // s_movk_i32 s9, 1

/// Runs `code` (ending with s_endpgm) as one wave of 16 VGPRs, all lanes active unless
/// `prep` says otherwise.
fn exec(code: &[u32], prep: impl FnOnce(&mut Wave)) -> Result<Wave, IsaError> {
    let mem = MapMem::default();
    mem.put(CODE, code);
    let mut w = Wave::new(CODE, 16);
    w.exec = u64::MAX;
    prep(&mut w);
    let (mut cache, mut buf) = (CodeCache::default(), Scratch::default());
    for _ in 0..1000 {
        if w.step(&mut cache, &mem, &mut buf)? == Flow::Ended {
            return Ok(w);
        }
    }
    panic!("the wave did not end");
}

#[test]
fn exec_masks_registers_carries_and_compares() {
    let code = [
        0xbefe0104, // s_mov_b64 exec, s[4:5]
        0x7e020287, // v_mov_b32_e32 v1, 7
        0x320406c1, // v_add_co_u32_e32 v2, vcc, -1, v3
        0xd0ca0006, 0x00020680, // v_cmp_eq_u32_e64 s[6:7], 0, v3
        ENDPGM,
    ];
    let w = exec(&code, |w| {
        w.s[4] = 0b101;
        w.v[1] = [0xdead; 64];
        w.v[2] = [0xbeef; 64];
        // Lanes 0 and 1 hold 0, lanes 2 and 3 hold 5: inactive lanes would set bits.
        w.v[3][2] = 5;
        w.v[3][3] = 5;
    })
    .unwrap();
    assert_eq!(w.exec, 0b101);
    assert_eq!(w.v[1][..4], [7, 0xdead, 7, 0xdead]);
    assert!(w.v[1][4..].iter().all(|&x| x == 0xdead));
    assert_eq!(w.v[2][..4], [0xffff_ffff, 0xbeef, 4, 0xbeef]);
    assert_eq!(w.vcc, 0b100, "carry-out only from active lanes");
    assert_eq!((w.s[6], w.s[7]), (0b1, 0), "compare bits only from active lanes");
}

#[test]
fn a_64_bit_add_carries_across_4_gib() {
    // s0 + lane * 4 overflows in lanes 32..64; both addc forms carry it into the high half.
    let vop2 = [
        0x32040200, // v_add_co_u32_e32 v2, vcc, s0, v1
        0x38060680, // v_addc_co_u32_e32 v3, vcc, 0, v3, vcc
        ENDPGM,
    ];
    let vop3b = [
        0x32040200, // v_add_co_u32_e32 v2, vcc, s0, v1
        0xd11c6a03, 0x01a90103, // v_addc_co_u32_e64 v3, vcc, v3, 0, vcc
        ENDPGM,
    ];
    for code in [&vop2[..], &vop3b[..]] {
        let w = exec(code, |w| {
            w.s[0] = 0xffff_ff80;
            w.v[1] = std::array::from_fn(|l| 4 * l as u32);
            w.v[3] = [7; 64];
        })
        .unwrap();
        for l in 0..64 {
            let want = 0xffff_ff80u64 + 4 * l as u64 + (7 << 32);
            assert_eq!(u64::from(w.v[2][l]) | u64::from(w.v[3][l]) << 32, want, "lane {l}");
        }
        assert_eq!(w.vcc, 0, "7 + 1 carries nothing out");
    }
}

#[test]
fn scalar_immediates_compares_and_branches() {
    let w = exec(&[0xb008ffff, ENDPGM], |w| w.scc = true).unwrap(); // s_movk_i32 s8, 0xffff
    assert_eq!((w.s[8], w.scc), (0xffff_ffff, true), "sign-extended, SCC untouched");
    // s_cmp_eq_i32 s16, s8; s_cbranch_scc1 1 (over the movk).
    for (s16, taken) in [(5, true), (6, false)] {
        let w = exec(&[0xbf000810, 0xbf850001, MOVK_S9_1, ENDPGM], |w| {
            w.s[16] = s16;
            w.s[8] = 5;
        })
        .unwrap();
        assert_eq!((w.scc, w.s[9]), (taken, u32::from(!taken)), "s16 = {s16}");
    }
    // s_branch 0 is the next instruction.
    assert_eq!(exec(&[0xbf820000, MOVK_S9_1, ENDPGM], |_| {}).unwrap().s[9], 1);
    // s_cbranch_vccnz 1 / s_cbranch_vccz 1 look at all 64 bits of VCC.
    for (op, vcc, taken) in
        [(0xbf870001, 1 << 40, true), (0xbf870001, 0, false), (0xbf860001, 1 << 40, false)]
    {
        let w = exec(&[op, MOVK_S9_1, ENDPGM], |w| w.vcc = vcc).unwrap();
        assert_eq!(w.s[9], u32::from(!taken), "{op:08x} with vcc {vcc:#x}");
    }
    // s_lshl_b32 s0, s1, 2 sets SCC to result != 0; s_add_u32 with a literal carries.
    let w = exec(&[0x8e008201, 0x8000ff01, 0x12345678, ENDPGM], |w| w.s[1] = 0xf000_0000).unwrap();
    assert_eq!((w.s[0], w.scc), (0x0234_5678, true));
}

#[test]
fn s_branch_minus_one_spins_in_place() {
    let mem = MapMem::default();
    mem.put(CODE, &[0xbf82ffff, ENDPGM]); // s_branch -1
    let mut w = Wave::new(CODE, 8);
    let (mut cache, mut buf) = (CodeCache::default(), Scratch::default());
    for _ in 0..100 {
        assert_eq!(w.step(&mut cache, &mem, &mut buf).unwrap(), Flow::Jump(CODE));
    }
    assert_eq!(w.pc, CODE);
    assert_eq!(mem.reads.load(std::sync::atomic::Ordering::Relaxed), 1, "one page fetch, then the cache");
}

#[test]
fn literals_and_inline_constants() {
    let w = exec(
        &[
            0x7e0002ff, 0x00000041, // v_mov_b32_e32 v0, 0x41
            0x7e0202f2, // v_mov_b32_e32 v1, 1.0
            0x7e0402d0, // v_mov_b32_e32 v2, -16
            0x7e0602f8, // v_mov_b32_e32 v3, 0.15915494
            0x7e08027e, // v_mov_b32_e32 v4, exec_lo
            ENDPGM,
        ],
        |w| w.exec = 0x3_0000_0001,
    )
    .unwrap();
    assert_eq!(
        [w.v[0][0], w.v[1][0], w.v[2][0], w.v[3][0], w.v[4][0]],
        [65, 0x3f80_0000, (-16i32) as u32, 0x3e22_f983, 1]
    );
}

#[test]
fn a_literal_on_the_next_page_is_fetched() {
    let mem = MapMem::default();
    mem.put(CODE + PAGE - 4, &[0x7e0002ff, 0x00000041, ENDPGM]); // v_mov_b32 v0, 0x41 across the page line
    let mut w = Wave::new(CODE + PAGE - 4, 8);
    w.exec = 1;
    let (mut cache, mut buf) = (CodeCache::default(), Scratch::default());
    assert_eq!(w.step(&mut cache, &mem, &mut buf).unwrap(), Flow::Next);
    assert_eq!((w.v[0][0], w.pc), (65, CODE + PAGE + 4));
    assert_eq!(w.step(&mut cache, &mem, &mut buf).unwrap(), Flow::Ended);
}

#[test]
fn fetching_past_the_end_of_the_code_faults() {
    let mem = MapMem::default();
    mem.put(CODE + PAGE - 4, &[0x7e020287]); // v_mov_b32 v1, 7, the page's last dword
    let mut w = Wave::new(CODE + PAGE - 4, 8);
    let (mut cache, mut buf) = (CodeCache::default(), Scratch::default());
    w.step(&mut cache, &mem, &mut buf).unwrap();
    let e = w.step(&mut cache, &mem, &mut buf).unwrap_err();
    assert!(
        matches!(e, IsaError::Fault(Error::GpuVmFault { addr, write: false, .. }) if addr == CODE + PAGE),
        "{e:?}"
    );
}

#[test]
fn registers_beyond_the_allocation_and_unknown_instructions_are_errors() {
    let mem = MapMem::default();
    mem.put(CODE, &[0x7e100280, ENDPGM]); // v_mov_b32_e32 v8, 0
    let mut w = Wave::new(CODE, 8);
    let (mut cache, mut buf) = (CodeCache::default(), Scratch::default());
    let e = w.step(&mut cache, &mem, &mut buf).unwrap_err();
    assert!(e.to_string().contains("v8 used, 8 allocated"), "{e}");
    assert!(matches!(e, IsaError::Illegal { pc: CODE, .. }));
    // v_lshlrev_b64 is not in the tables: an error naming the format, opcode, words, pc.
    let e = exec(&[0x7e020287, 0xd28f0000, 0x00020083, ENDPGM], |_| {}).unwrap_err();
    assert!(matches!(e, IsaError::Unknown { pc, format: "VOP3", op: 0x28f, .. } if pc == CODE + 4), "{e:?}");
    // VOP3 clamp on an integer add: decoded, refused at execution.
    let e = exec(&[0xd11cea05, 0x01a90105, ENDPGM], |_| {}).unwrap_err(); // ... vcc clamp
    assert!(e.to_string().contains("modifiers"), "{e}");
}

#[test]
fn exec_save_restore_select_and_first_lane() {
    let w = exec(
        &[
            0xd0c90004, 0x00021709, // v_cmp_lt_u32_e64 s[4:5], v9, v11
            0xbe802004, // s_and_saveexec_b64 s[0:1], s[4:5]
            0x7e020281, // v_mov_b32_e32 v1, 1
            0xbefe0100, // s_mov_b64 exec, s[0:1]
            0xd1000002, 0x00110682, // v_cndmask_b32_e64 v2, 2, 3, s[4:5]
            0x89fe047e, // s_andn2_b64 exec, exec, s[4:5]
            0x7e100509, // v_readfirstlane_b32 s8, v9
            0xbefe0100, // s_mov_b64 exec, s[0:1]
            ENDPGM,
        ],
        |w| {
            w.v[9] = std::array::from_fn(|l| l as u32);
            w.v[11] = [10; 64];
        },
    )
    .unwrap();
    assert_eq!((w.s[4], w.s[5]), (0x3ff, 0), "lanes 0..10 are below 10");
    assert_eq!((w.s[0], w.s[1], w.exec), (u32::MAX, u32::MAX, u64::MAX));
    assert!(w.v[1][..10].iter().all(|&x| x == 1) && w.v[1][10..].iter().all(|&x| x == 0));
    assert!(w.v[2][..10].iter().all(|&x| x == 3) && w.v[2][10..].iter().all(|&x| x == 2));
    assert_eq!(w.s[8], 10, "the first lane outside the mask");
}
