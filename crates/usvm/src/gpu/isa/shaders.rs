//! Machine code of the shaders usvm's tests and benchmarks dispatch: kfdtest's
//! CopyDwordIsa and ReadMemoryIsa (the bytes kfdtest's LLVM 14 assembles for gfx90a) and
//! the `isa_copy` benchmark's copy, each with the assembly it came from (llvm-mc 14,
//! `-mcpu=gfx90a`).

use super::Launch;

/// kfdtest's CopyDwordIsa: `*s[2:3] = *s[0:1]` (one dword), once per wave.
/// RSRC1 [`KFDTEST_RSRC1`], RSRC2 [`KFDTEST_RSRC2`].
pub const COPY_DWORD: [u32; 10] = [
    0x7e000200, // v_mov_b32_e32 v0, s0
    0x7e020201, // v_mov_b32_e32 v1, s1
    0x7e040202, // v_mov_b32_e32 v2, s2
    0x7e060203, // v_mov_b32_e32 v3, s3
    0xdc530000, 0x04000000, // flat_load_dword v4, v[0:1] glc slc
    0xbf8c0000, // s_waitcnt vmcnt(0) expcnt(0) lgkmcnt(0)
    0xdc730000, 0x00000402, // flat_store_dword v[2:3], v4 glc slc
    0xbf810000, // s_endpgm
];

/// kfdtest's ReadMemoryIsa. `s[0:1]`: an array of buffer addresses (one u64 per wave),
/// `s[2:3]`: a u32 per wave holding its buffer's size in bytes, s4: the workgroup id. Each
/// wave reads one dwordx2 per 4 KiB of its buffer, over and over, until the low dword of
/// the first address reads 0x5678 (the host's flag); then it stores 0x5678 to its u32.
pub const READ_MEMORY: [u32; 42] = [
    0x7e000204, // v_mov_b32_e32 v0, s4
    0x24000082, // v_lshlrev_b32_e32 v0, 2, v0
    0x32080002, // v_add_co_u32_e32 v4, vcc, s2, v0
    0x7e0a0203, // v_mov_b32_e32 v5, s3
    0xd11c6a05, 0x01a90105, // v_addc_co_u32_e64 v5, vcc, v5, 0, vcc
    0x24000081, // v_lshlrev_b32_e32 v0, 1, v0
    0x32040000, // v_add_co_u32_e32 v2, vcc, s0, v0
    0x7e060201, // v_mov_b32_e32 v3, s1
    0xd11c6a03, 0x01a90103, // v_addc_co_u32_e64 v3, vcc, v3, 0, vcc
    0xdc520000, 0x0b000004, // flat_load_dword v11, v[4:5] slc
    0xdc560000, 0x06000002, // flat_load_dwordx2 v[6:7], v[2:3] slc
    0xbf8c0070, // s_waitcnt vmcnt(0) lgkmcnt(0)
    0x7e1002ff, 0x00005678, // v_mov_b32_e32 v8, 0x5678
    0xb0085678, // s_movk_i32 s8, 0x5678
    0xc0030400, 0x00000000, // L_REPEAT: s_load_dword s16, s[0:1], 0x0 glc
    0xbf8c0070, // s_waitcnt vmcnt(0) lgkmcnt(0)
    0xbf000810, // s_cmp_eq_i32 s16, s8
    0xbf85000e, // s_cbranch_scc1 L_QUIT
    0x7e120280, // v_mov_b32_e32 v9, 0
    0x7e1402ff, 0x00001000, // v_mov_b32_e32 v10, 0x1000
    0x7e180306, // v_mov_b32_e32 v12, v6
    0x7e1a0307, // v_mov_b32_e32 v13, v7
    0xdc560000, 0x0e00000c, // L_LOOP_READ: flat_load_dwordx2 v[14:15], v[12:13] slc
    0x32121509, // v_add_co_u32_e32 v9, vcc, v9, v10
    0x3218150c, // v_add_co_u32_e32 v12, vcc, v12, v10
    0xd11c6a0d, 0x01a9010d, // v_addc_co_u32_e64 v13, vcc, v13, 0, vcc
    0x7d921709, // v_cmp_lt_u32_e32 vcc, v9, v11
    0xbf87fff8, // s_cbranch_vccnz L_LOOP_READ
    0xbf82ffed, // s_branch L_REPEAT
    0xdc700000, 0x00000804, // L_QUIT: flat_store_dword v[4:5], v8
    0xbf8c0070, // s_waitcnt vmcnt(0) lgkmcnt(0)
    0xbf810000, // s_endpgm
];

/// kfdtest's COMPUTE_PGM_RSRC1: 40 VGPRs, 48 SGPRs, FLOAT_MODE 0xc0.
pub const KFDTEST_RSRC1: u32 = 0x000c_0084;
/// kfdtest's COMPUTE_PGM_RSRC2: 4 user SGPRs, trap present, workgroup id X, work-item
/// ids X and Y.
pub const KFDTEST_RSRC2: u32 = 0x0000_28c8;

/// `isa_copy`: each work-item copies one dword, `dst[i] = src[i]`, with `s[0:1]` = src,
/// `s[2:3]` = dst, s4 = the workgroup id, 64 work-items per workgroup (one wave).
pub const ISA_COPY: [u32; 17] = [
    0x260200ff, 0x000003ff, // v_and_b32_e32 v1, 0x3ff, v0      (x = packed id & 0x3ff)
    0x24020282, // v_lshlrev_b32_e32 v1, 2, v1                   (x * 4)
    0x8e058804, // s_lshl_b32 s5, s4, 8                          (group * 256)
    0x68020205, // v_add_u32_e32 v1, s5, v1
    0x7e060201, // v_mov_b32_e32 v3, s1
    0x32040200, // v_add_co_u32_e32 v2, vcc, s0, v1
    0x38060680, // v_addc_co_u32_e32 v3, vcc, 0, v3, vcc
    0xdc530000, 0x04000002, // flat_load_dword v4, v[2:3] glc slc
    0x7e0e0203, // v_mov_b32_e32 v7, s3
    0x320c0202, // v_add_co_u32_e32 v6, vcc, s2, v1
    0x380e0e80, // v_addc_co_u32_e32 v7, vcc, 0, v7, vcc
    0xbf8c0f70, // s_waitcnt vmcnt(0)
    0xdc730000, 0x00000406, // flat_store_dword v[6:7], v4 glc slc
    0xbf810000, // s_endpgm
];

/// A wave per workgroup counting in memory, `counter[group] += 1`, until `*flag == 0x5678`
/// (llvm-mc 14, gfx90a): s[0:1] = the counters, s[2:3] = the flag, s4 = the workgroup id.
/// For tests of waves that run until the host says stop (eviction, destruction).
pub const COUNT_UNTIL_FLAG: [u32; 16] = [
    0x8e058204, // s_lshl_b32 s5, s4, 2
    0x7e020205, // v_mov_b32_e32 v1, s5
    0x7e060201, // v_mov_b32_e32 v3, s1
    0x32040200, // v_add_co_u32_e32 v2, vcc, s0, v1
    0x38060680, // v_addc_co_u32_e32 v3, vcc, 0, v3, vcc
    0x7e0c0280, // v_mov_b32_e32 v6, 0
    0x680c0c81, // L: v_add_u32_e32 v6, 1, v6
    0xdc700000, 0x00000602, // flat_store_dword v[2:3], v6
    0xc0030201, 0x00000000, // s_load_dword s8, s[2:3], 0x0 glc
    0xbf8c0070, // s_waitcnt vmcnt(0) lgkmcnt(0)
    0xbf06ff08, 0x00005678, // s_cmp_eq_u32 s8, 0x5678
    0xbf84fff7, // s_cbranch_scc0 L
    0xbf810000, // s_endpgm
];

/// The launch of [`ISA_COPY`] at `code` copying `bytes` (a multiple of 256) from `src` to
/// `dst`: 16 VGPRs, 4 user SGPRs and the workgroup id, the grid in work-items as kfdtest's
/// dispatch initiator says.
pub fn isa_copy_launch(code: u64, src: u64, dst: u64, bytes: u64) -> Launch {
    let mut user_data = [0; 16];
    user_data[..4].copy_from_slice(&[src as u32, (src >> 32) as u32, dst as u32, (dst >> 32) as u32]);
    Launch {
        code,
        rsrc1: 0x000c_0041,
        rsrc2: 0x0000_0088,
        rsrc3: 0,
        user_data,
        group: [64, 1, 1],
        grid: [(bytes / 4) as u32, 1, 1],
        grid_in_threads: true,
    }
}

/// The launch of a kfdtest shader at `code` with `s[0:1]` = `a`, `s[2:3]` = `b`, one
/// work-item per workgroup and `waves` workgroups, with kfdtest's RSRC1 / RSRC2.
pub fn kfdtest_launch(code: u64, a: u64, b: u64, waves: u32) -> Launch {
    let mut user_data = [0; 16];
    user_data[..4].copy_from_slice(&[a as u32, (a >> 32) as u32, b as u32, (b >> 32) as u32]);
    Launch {
        code,
        rsrc1: KFDTEST_RSRC1,
        rsrc2: KFDTEST_RSRC2,
        rsrc3: 9,
        user_data,
        group: [1, 1, 1],
        grid: [waves, 1, 1],
        grid_in_threads: true,
    }
}
