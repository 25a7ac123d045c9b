//! Golden machine-code vectors: each line was assembled once with Debian's llvm-mc 14
//! (`llvm-mc -arch=amdgcn -mcpu=gfx90a -show-encoding`); the text is what it printed, the
//! dwords are its bytes as little-endian words. The tests never run llvm-mc.

use super::super::IsaError;
use super::super::decode::{self, EXEC, Format, LITERAL, NONE, V0, VCC, decode};

/// (llvm-mc's text, its encoding).
pub const GOLDEN: &[(&str, &[u32])] = &[
    ("v_mov_b32_e32 v0, s0", &[0x7e000200]),
    ("v_mov_b32_e32 v1, s1", &[0x7e020201]),
    ("v_mov_b32_e32 v2, s2", &[0x7e040202]),
    ("v_mov_b32_e32 v3, s3", &[0x7e060203]),
    ("flat_load_dword v4, v[0:1] glc slc", &[0xdc530000, 0x04000000]),
    ("s_waitcnt vmcnt(0) expcnt(0) lgkmcnt(0)", &[0xbf8c0000]),
    ("flat_store_dword v[2:3], v4 glc slc", &[0xdc730000, 0x00000402]),
    ("s_endpgm", &[0xbf810000]),
    ("v_mov_b32_e32 v0, s4", &[0x7e000204]),
    ("v_lshlrev_b32_e32 v0, 2, v0", &[0x24000082]),
    ("v_add_co_u32_e32 v4, vcc, s2, v0", &[0x32080002]),
    ("v_mov_b32_e32 v5, s3", &[0x7e0a0203]),
    ("v_addc_co_u32_e64 v5, vcc, v5, 0, vcc", &[0xd11c6a05, 0x01a90105]),
    ("v_lshlrev_b32_e32 v0, 1, v0", &[0x24000081]),
    ("v_add_co_u32_e32 v2, vcc, s0, v0", &[0x32040000]),
    ("v_mov_b32_e32 v3, s1", &[0x7e060201]),
    ("v_addc_co_u32_e64 v3, vcc, v3, 0, vcc", &[0xd11c6a03, 0x01a90103]),
    ("flat_load_dword v11, v[4:5] slc", &[0xdc520000, 0x0b000004]),
    ("flat_load_dwordx2 v[6:7], v[2:3] slc", &[0xdc560000, 0x06000002]),
    ("s_waitcnt vmcnt(0) lgkmcnt(0)", &[0xbf8c0070]),
    ("v_mov_b32_e32 v8, 0x5678", &[0x7e1002ff, 0x00005678]),
    ("s_movk_i32 s8, 0x5678", &[0xb0085678]),
    ("s_load_dword s16, s[0:1], 0x0 glc", &[0xc0030400, 0x00000000]),
    ("s_cmp_eq_i32 s16, s8", &[0xbf000810]),
    ("s_cbranch_scc1 14", &[0xbf85000e]),
    ("v_mov_b32_e32 v9, 0", &[0x7e120280]),
    ("v_mov_b32_e32 v10, 0x1000", &[0x7e1402ff, 0x00001000]),
    ("v_mov_b32_e32 v12, v6", &[0x7e180306]),
    ("v_mov_b32_e32 v13, v7", &[0x7e1a0307]),
    ("flat_load_dwordx2 v[14:15], v[12:13] slc", &[0xdc560000, 0x0e00000c]),
    ("v_add_co_u32_e32 v9, vcc, v9, v10", &[0x32121509]),
    ("v_add_co_u32_e32 v12, vcc, v12, v10", &[0x3218150c]),
    ("v_addc_co_u32_e64 v13, vcc, v13, 0, vcc", &[0xd11c6a0d, 0x01a9010d]),
    ("v_cmp_lt_u32_e32 vcc, v9, v11", &[0x7d921709]),
    ("s_cbranch_vccnz -8", &[0xbf87fff8]),
    ("s_branch -19", &[0xbf82ffed]),
    ("flat_store_dword v[4:5], v8", &[0xdc700000, 0x00000804]),
    ("v_mov_b32_e32 v5, v7", &[0x7e0a0307]),
    ("v_mov_b32_e32 v0, 0", &[0x7e000280]),
    ("v_mov_b32_e32 v0, 64", &[0x7e0002c0]),
    ("v_mov_b32_e32 v0, 0x41", &[0x7e0002ff, 0x00000041]),
    ("v_mov_b32_e32 v0, -1", &[0x7e0002c1]),
    ("v_mov_b32_e32 v0, -16", &[0x7e0002d0]),
    ("v_mov_b32_e32 v0, 0xffffffef", &[0x7e0002ff, 0xffffffef]),
    ("v_mov_b32_e32 v0, 1.0", &[0x7e0002f2]),
    ("v_mov_b32_e32 v0, 0.5", &[0x7e0002f0]),
    ("v_mov_b32_e32 v0, vcc_lo", &[0x7e00026a]),
    ("v_mov_b32_e32 v0, exec_lo", &[0x7e00027e]),
    ("v_mov_b32_e32 v0, m0", &[0x7e00027c]),
    ("v_mov_b32_e32 v0, s101", &[0x7e000265]),
    ("v_mov_b32_e32 v255, v255", &[0x7ffe03ff]),
    ("v_mov_b32_e64 v1, v2", &[0xd1410001, 0x00000102]),
    ("v_lshlrev_b32_e32 v1, v2, v3", &[0x24020702]),
    ("v_lshlrev_b32_e32 v1, 31, v3", &[0x2402069f]),
    ("v_lshlrev_b32_e64 v1, 2, s3", &[0xd1120001, 0x00000682]),
    ("v_add_co_u32_e32 v1, vcc, v2, v3", &[0x32020702]),
    ("v_add_co_u32_e32 v1, vcc, 0x1000, v3", &[0x320206ff, 0x00001000]),
    ("v_add_co_u32_e64 v1, s[4:5], v2, v3", &[0xd1190401, 0x00020702]),
    ("v_addc_co_u32_e32 v1, vcc, v2, v3, vcc", &[0x38020702]),
    ("v_addc_co_u32_e64 v5, s[4:5], v5, 0, s[6:7]", &[0xd11c0405, 0x00190105]),
    ("v_addc_co_u32_e64 v5, vcc, v5, 0, vcc clamp", &[0xd11cea05, 0x01a90105]),
    ("v_cmp_lt_u32_e32 vcc, s9, v11", &[0x7d921609]),
    ("v_cmp_lt_u32_e32 vcc, 5, v11", &[0x7d921685]),
    ("v_cmp_lt_u32_e64 s[4:5], v9, v11", &[0xd0c90004, 0x00021709]),
    ("v_cmp_eq_u32_e32 vcc, v9, v11", &[0x7d941709]),
    ("v_cmpx_lt_u32_e32 vcc, v9, v11", &[0x7db21709]),
    ("s_movk_i32 s8, 0xffff", &[0xb008ffff]),
    ("s_movk_i32 vcc_lo, 0x1", &[0xb06a0001]),
    ("s_cmp_eq_i32 s16, 5", &[0xbf008510]),
    ("s_cmp_eq_i32 s16, 0x12345", &[0xbf00ff10, 0x00012345]),
    ("s_cmp_lg_i32 s16, s8", &[0xbf010810]),
    ("s_cmp_lt_u32 s16, s8", &[0xbf0a0810]),
    ("s_nop 0", &[0xbf800000]),
    ("s_branch 0", &[0xbf820000]),
    ("s_branch -1", &[0xbf82ffff]),
    ("s_cbranch_scc0 3", &[0xbf840003]),
    ("s_cbranch_vccz 3", &[0xbf860003]),
    ("s_cbranch_execz 3", &[0xbf880003]),
    ("s_cbranch_execnz 3", &[0xbf890003]),
    ("s_waitcnt vmcnt(0)", &[0xbf8c0f70]),
    ("s_waitcnt lgkmcnt(0)", &[0xbf8cc07f]),
    ("s_waitcnt vmcnt(1)", &[0xbf8c0f71]),
    ("s_waitcnt vmcnt(63) expcnt(7) lgkmcnt(15)", &[0xbf8ccf7f]),
    ("s_barrier", &[0xbf8a0000]),
    ("s_load_dword s16, s[0:1], 0x0", &[0xc0020400, 0x00000000]),
    ("s_load_dword s16, s[2:3], 0x4", &[0xc0020401, 0x00000004]),
    ("s_load_dword s16, s[2:3], -0x4", &[0xc0020401, 0x001ffffc]),
    ("s_load_dword s16, s[2:3], s5", &[0xc0000401, 0x00000005]),
    ("s_load_dwordx2 s[4:5], s[0:1], 0x8", &[0xc0060100, 0x00000008]),
    ("s_load_dwordx4 s[4:7], s[0:1], 0x10", &[0xc00a0100, 0x00000010]),
    ("flat_load_dword v4, v[0:1]", &[0xdc500000, 0x04000000]),
    ("flat_load_dword v4, v[0:1] offset:4095", &[0xdc500fff, 0x04000000]),
    ("flat_load_dwordx4 v[6:9], v[2:3]", &[0xdc5c0000, 0x06000002]),
    ("flat_store_dwordx2 v[2:3], v[4:5]", &[0xdc740000, 0x00000402]),
    ("global_load_dword v1, v[2:3], off", &[0xdc508000, 0x017f0002]),
    ("global_load_dword v1, v[2:3], off offset:-8", &[0xdc509ff8, 0x017f0002]),
    ("global_load_dword v1, v2, s[4:5]", &[0xdc508000, 0x01040002]),
    ("global_store_dword v[2:3], v1, off offset:16", &[0xdc708010, 0x007f0102]),
    ("s_mov_b32 s0, 0x12345678", &[0xbe8000ff, 0x12345678]),
    ("s_mov_b64 exec, s[4:5]", &[0xbefe0104]),
    ("s_add_u32 s0, s1, s2", &[0x80000201]),
    ("s_lshl_b32 s0, s1, 2", &[0x8e008201]),
    ("s_and_b64 exec, exec, vcc", &[0x86fe6a7e]),
    ("s_getpc_b64 s[0:1]", &[0xbe801c00]),
    ("v_and_b32_e32 v1, 0x3ff, v0", &[0x260200ff, 0x000003ff]),
    ("v_add_u32_e32 v1, s5, v1", &[0x68020205]),
    ("s_lshl_b32 s5, s4, 8", &[0x8e058804]),
    ("v_addc_co_u32_e32 v3, vcc, 0, v3, vcc", &[0x38060680]),
    ("v_cndmask_b32_e32 v1, v2, v3, vcc", &[0x00020702]),
    ("v_cndmask_b32_e64 v1, v2, v3, s[4:5]", &[0xd1000001, 0x00120702]),
    ("v_lshrrev_b32_e32 v1, v2, v3", &[0x20020702]),
    ("v_ashrrev_i32_e32 v1, v2, v3", &[0x22020702]),
    ("v_or_b32_e32 v1, v2, v3", &[0x28020702]),
    ("v_xor_b32_e32 v1, v2, v3", &[0x2a020702]),
    ("v_min_u32_e32 v1, v2, v3", &[0x1c020702]),
    ("v_max_u32_e32 v1, v2, v3", &[0x1e020702]),
    ("v_min_i32_e32 v1, v2, v3", &[0x18020702]),
    ("v_max_i32_e32 v1, v2, v3", &[0x1a020702]),
    ("v_mul_u32_u24_e32 v1, v2, v3", &[0x10020702]),
    ("v_sub_co_u32_e32 v1, vcc, v2, v3", &[0x34020702]),
    ("v_subrev_co_u32_e32 v1, vcc, v2, v3", &[0x36020702]),
    ("v_subb_co_u32_e32 v1, vcc, v2, v3, vcc", &[0x3a020702]),
    ("v_subbrev_co_u32_e32 v1, vcc, v2, v3, vcc", &[0x3c020702]),
    ("v_sub_u32_e32 v1, v2, v3", &[0x6a020702]),
    ("v_subrev_u32_e32 v1, v2, v3", &[0x6c020702]),
    ("v_nop", &[0x7e000000]),
    ("v_readfirstlane_b32 s1, v2", &[0x7e020502]),
    ("v_not_b32_e32 v1, v2", &[0x7e025702]),
    ("v_bfrev_b32_e32 v1, v2", &[0x7e025902]),
    ("v_add3_u32 v1, v2, v3, v4", &[0xd1ff0001, 0x04120702]),
    ("v_lshl_add_u32 v1, v2, 3, v4", &[0xd1fd0001, 0x04110702]),
    ("v_mul_lo_u32 v1, v2, v3", &[0xd2850001, 0x00020702]),
    ("v_mul_hi_u32 v1, v2, v3", &[0xd2860001, 0x00020702]),
    ("v_cmp_gt_i32_e32 vcc, v1, v2", &[0x7d880501]),
    ("v_cmp_ne_u32_e32 vcc, v1, v2", &[0x7d9a0501]),
    ("v_cmp_ge_u32_e32 vcc, v1, v2", &[0x7d9c0501]),
    ("v_cmp_le_u32_e32 vcc, v1, v2", &[0x7d960501]),
    ("v_cmpx_eq_u32_e32 vcc, v1, v2", &[0x7db40501]),
    ("v_cmp_f_u32_e32 vcc, v1, v2", &[0x7d900501]),
    ("v_cmp_t_u32_e32 vcc, v1, v2", &[0x7d9e0501]),
    ("v_cmp_lt_i32_e32 vcc, v1, v2", &[0x7d820501]),
    ("v_cmp_eq_i32_e32 vcc, v1, v2", &[0x7d840501]),
    ("s_add_i32 s0, s1, s2", &[0x81000201]),
    ("s_sub_u32 s0, s1, s2", &[0x80800201]),
    ("s_sub_i32 s0, s1, s2", &[0x81800201]),
    ("s_addc_u32 s0, s1, s2", &[0x82000201]),
    ("s_subb_u32 s0, s1, s2", &[0x82800201]),
    ("s_min_u32 s0, s1, s2", &[0x83800201]),
    ("s_max_i32 s0, s1, s2", &[0x84000201]),
    ("s_cselect_b32 s0, s1, s2", &[0x85000201]),
    ("s_and_b32 s0, s1, s2", &[0x86000201]),
    ("s_or_b32 s0, s1, s2", &[0x87000201]),
    ("s_xor_b32 s0, s1, s2", &[0x88000201]),
    ("s_or_b64 s[0:1], s[2:3], s[4:5]", &[0x87800402]),
    ("s_xor_b64 s[0:1], s[2:3], s[4:5]", &[0x88800402]),
    ("s_andn2_b64 exec, exec, vcc", &[0x89fe6a7e]),
    ("s_lshr_b32 s0, s1, s2", &[0x8f000201]),
    ("s_ashr_i32 s0, s1, s2", &[0x90000201]),
    ("s_mul_i32 s0, s1, s2", &[0x92000201]),
    ("s_not_b32 s0, s1", &[0xbe800401]),
    ("s_and_saveexec_b64 s[0:1], vcc", &[0xbe80206a]),
    ("s_or_saveexec_b64 s[0:1], s[2:3]", &[0xbe802102]),
    ("s_addk_i32 s0, 0x10", &[0xb7000010]),
    ("s_mulk_i32 s0, 0x10", &[0xb7800010]),
    ("s_cmpk_eq_u32 s0, 0x10", &[0xb4000010]),
    ("s_cmp_gt_i32 s0, s1", &[0xbf020100]),
    ("s_cmp_ge_u32 s0, s1", &[0xbf090100]),
    ("s_sleep 1", &[0xbf8e0001]),
    ("s_setprio 1", &[0xbf8f0001]),
    ("s_load_dwordx8 s[8:15], s[0:1], 0x0", &[0xc00e0200, 0x00000000]),
    ("s_load_dwordx16 s[16:31], s[0:1], 0x0", &[0xc0120400, 0x00000000]),
    ("flat_load_dwordx3 v[4:6], v[0:1]", &[0xdc580000, 0x04000000]),
    ("flat_store_dwordx3 v[0:1], v[4:6]", &[0xdc780000, 0x00000400]),
    ("flat_store_dwordx4 v[0:1], v[4:7]", &[0xdc7c0000, 0x00000400]),
    ("s_add_u32 s0, s1, 0x12345678", &[0x8000ff01, 0x12345678]),
    ("v_mov_b32_e32 v0, 0.15915494", &[0x7e0002f8]),
];

/// The interpreter's name for what llvm-mc printed: no `_e32` / `_e64` suffix, no `flat_` /
/// `global_` prefix (one table serves both segments).
fn mnemonic(text: &str) -> &str {
    let m = text.split_whitespace().next().unwrap();
    let m = m.strip_suffix("_e32").or_else(|| m.strip_suffix("_e64")).unwrap_or(m);
    m.strip_prefix("flat_").or_else(|| m.strip_prefix("global_")).unwrap_or(m)
}

fn expected_format(text: &str, words: &[u32]) -> Option<Format> {
    let m = text.split_whitespace().next().unwrap();
    Some(match m {
        _ if m.starts_with("flat_") => Format::Flat,
        _ if m.starts_with("global_") => Format::Global,
        _ if m.ends_with("_e64") || (m.starts_with("v_") && words[0] >> 26 == 0x34) => Format::Vop3,
        _ if m.starts_with("s_load") => Format::Smem,
        _ => return None,
    })
}

#[test]
fn every_golden_vector_decodes_to_its_instruction_and_size() {
    for &(text, words) in GOLDEN {
        assert_eq!(decode::size(words[0]), words.len(), "size of {text}");
        let (i, n) = decode(words).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(n, words.len(), "{text}");
        assert_eq!(i.info.name, mnemonic(text), "{text}: {words:08x?}");
        if let Some(f) = expected_format(text, words) {
            assert_eq!(i.format, f, "{text}");
        }
        // A short slice is an error, never a read past it.
        if n == 2 {
            assert!(matches!(decode(&words[..1]), Err(IsaError::Illegal { .. })), "{text}");
        }
    }
}

fn one(text: &str) -> decode::Inst {
    let (_, words) = GOLDEN.iter().find(|(t, _)| *t == text).unwrap_or_else(|| panic!("no vector {text}"));
    decode(words).unwrap().0
}

#[test]
fn vector_alu_operands() {
    let i = one("v_addc_co_u32_e64 v5, vcc, v5, 0, vcc");
    assert_eq!((i.dst, i.sdst, i.src, i.modifiers), (V0 + 5, VCC, [V0 + 5, 128, VCC], 0));
    let i = one("v_addc_co_u32_e64 v5, s[4:5], v5, 0, s[6:7]");
    assert_eq!((i.sdst, i.src[2]), (4, 6));
    assert_ne!(one("v_addc_co_u32_e64 v5, vcc, v5, 0, vcc clamp").modifiers, 0);
    let i = one("v_add_co_u32_e32 v4, vcc, s2, v0");
    assert_eq!((i.format, i.op, i.dst, i.sdst, i.src), (Format::Vop2, 0x19, V0 + 4, VCC, [2, V0, NONE]));
    let i = one("v_addc_co_u32_e32 v3, vcc, 0, v3, vcc");
    assert_eq!((i.op, i.src), (0x1c, [128, V0 + 3, VCC]));
    let i = one("v_mov_b32_e32 v8, 0x5678");
    assert_eq!((i.src[0], i.literal, i.dst), (LITERAL, 0x5678, V0 + 8));
    let i = one("v_mov_b32_e32 v255, v255");
    assert_eq!((i.src[0], i.dst), (V0 + 255, V0 + 255));
    let i = one("v_cmp_lt_u32_e32 vcc, v9, v11");
    assert_eq!((i.format, i.op, i.sdst, &i.src[..2]), (Format::Vopc, 0xc9, VCC, &[V0 + 9, V0 + 11][..]));
    let i = one("v_cmp_lt_u32_e64 s[4:5], v9, v11");
    assert_eq!((i.format, i.op, i.sdst), (Format::Vop3, 0xc9, 4));
    let i = one("v_readfirstlane_b32 s1, v2");
    assert_eq!((i.dst, i.src[0]), (1, V0 + 2));
    let i = one("v_lshl_add_u32 v1, v2, 3, v4");
    assert_eq!((i.op, i.src), (0x1fd, [V0 + 2, 131, V0 + 4]));
}

#[test]
fn scalar_operands() {
    assert_eq!(one("s_movk_i32 s8, 0xffff").imm, -1);
    let i = one("s_movk_i32 vcc_lo, 0x1");
    assert_eq!((i.dst, i.imm), (VCC, 1));
    let i = one("s_cmp_eq_i32 s16, 0x12345");
    assert_eq!((&i.src[..2], i.literal), (&[16, LITERAL][..], 0x12345));
    assert_eq!(one("s_cbranch_vccnz -8").imm, -8);
    assert_eq!(one("s_branch -19").imm, -19);
    assert_eq!(one("s_cbranch_scc1 14").imm, 14);
    let i = one("s_and_b64 exec, exec, vcc");
    assert_eq!((i.dst, &i.src[..2]), (EXEC, &[EXEC, VCC][..]));
    let i = one("s_load_dword s16, s[0:1], 0x0 glc");
    assert_eq!((i.dst, i.src, i.imm, i.glc), (16, [0, NONE, NONE], 0, true));
    assert_eq!(one("s_load_dword s16, s[2:3], -0x4").imm, -4);
    let i = one("s_load_dword s16, s[2:3], s5");
    assert_eq!((i.src, i.imm), ([2, 5, NONE], 0));
}

#[test]
fn flat_and_global_operands() {
    let i = one("flat_load_dword v4, v[0:1] glc slc");
    assert_eq!((i.dst, i.src, i.imm, i.glc, i.slc), (V0 + 4, [V0, NONE, NONE], 0, true, true));
    let i = one("flat_store_dword v[2:3], v4 glc slc");
    assert_eq!((i.dst, i.src), (NONE, [V0 + 2, V0 + 4, NONE]));
    assert_eq!(one("flat_load_dword v4, v[0:1] offset:4095").imm, 4095);
    let i = one("global_load_dword v1, v[2:3], off offset:-8");
    assert_eq!((i.format, i.imm, i.src[2]), (Format::Global, -8, NONE));
    let i = one("global_load_dword v1, v2, s[4:5]");
    assert_eq!((i.src[0], i.src[2]), (V0 + 2, 4));
}

#[test]
fn unknown_and_unsupported_instructions_are_named_errors() {
    // v_lshlrev_b64 v[0:1], 3, v[0:1]: a VOP3-only opcode outside the tables.
    let e = decode(&[0xd28f0000, 0x00020083]).unwrap_err();
    assert!(
        matches!(e, IsaError::Unknown { format: "VOP3", op: 0x28f, words: [0xd28f0000, 0x00020083], .. }),
        "{e:?}"
    );
    let msg = e.at(0x1000).to_string();
    assert!(
        msg.contains("VOP3") && msg.contains("0x28f") && msg.contains("d28f0000") && msg.contains("0x1000"),
        "{msg}"
    );
    // s_trap 2 (SOPP 0x12): entering a trap handler is not emulated.
    assert!(matches!(decode(&[0xbf920002]), Err(IsaError::Unknown { format: "SOPP", op: 0x12, .. })));
    // ds_read_b32 v1, v2; buffer_load_dword v1, off, s[0:3], 0; v_pk_add_u16 v1, v2, v3.
    for (w, f) in [
        ([0xd86c0000, 0x01000002], "DS"),
        ([0xe0500000, 0x80000100], "MUBUF"),
        ([0xd38a4001, 0x18020702], "VOP3P"),
    ] {
        assert!(matches!(decode(&w), Err(IsaError::Unknown { format, .. }) if format == f), "{f}");
    }
    // scratch_load_dword v1, off, s2; v_mov_b32_sdwa; v_mov_b32_dpp.
    for w in [[0xdc504000, 0x01020000], [0x7e0202f9, 0x00061502], [0x7e0202fa, 0xff00e402]] {
        assert!(matches!(decode(&w[..decode::size(w[0])]), Err(IsaError::Illegal { .. })), "{w:08x?}");
    }
    // VOP3 takes no literal on gfx9 (llvm-mc refuses `v_add_co_u32_e64 v1, vcc, 0x1000, v3`).
    assert!(matches!(decode(&[0xd1196a01, 0x000206ff]), Err(IsaError::Illegal { .. })));
}
