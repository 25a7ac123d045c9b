//! Whole dispatches on a map-backed memory: kfdtest's two shaders, the `isa_copy`
//! benchmark's shader, barriers, and the initial wave state of a launch.

use super::super::dispatch::Shape;
use super::super::shaders::{COPY_DWORD, ISA_COPY, READ_MEMORY, isa_copy_launch, kfdtest_launch};
use super::super::wave::Wave;
use super::{MapMem, PAGE, launch, run};
use crate::gpu::isa::{IsaError, Launch};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

const CODE: u64 = 0x7f00_0000_0000;

#[test]
fn copy_dword_copies_one_dword() {
    let mem = MapMem::default();
    mem.put(CODE, &COPY_DWORD);
    let (src, dst) = (0x7f00_0000_1000, 0x7f00_0000_2000);
    mem.put(src, &[0x0101_0101]);
    mem.put(dst, &[0]);
    let stats = run(&mem, &kfdtest_launch(CODE, src, dst, 1), 1).unwrap();
    assert_eq!(mem.get(dst), 0x0101_0101);
    assert_eq!((stats.waves, stats.instructions), (1, 8));
}

/// ReadMemory's buffers: `waves` buffers of `pages` pages; returns (address array, results).
fn read_memory_setup(mem: &MapMem, waves: u64, pages: u64) -> (u64, u64) {
    let (addrs, results) = (0x7f00_0001_0000, 0x7f00_0002_0000);
    mem.map(addrs, PAGE);
    for k in 0..waves {
        let buf = 0x7f00_0010_0000 + k * 0x10_0000;
        mem.put(addrs + 8 * k, &[buf as u32, (buf >> 32) as u32]);
        mem.put(results + 4 * k, &[(pages * PAGE) as u32]);
        mem.map(buf, pages * PAGE);
    }
    (addrs, results)
}

#[test]
fn read_memory_waves_spin_round_robin_until_the_host_writes_the_flag() {
    for (waves, workers) in [(3u64, 1), (8, 2)] {
        let mem = MapMem::default();
        mem.put(CODE, &READ_MEMORY);
        let (addrs, results) = read_memory_setup(&mem, waves, 3);
        let l = kfdtest_launch(CODE, addrs, results, waves as u32);
        std::thread::scope(|s| {
            let t = s.spawn(|| run(&mem, &l, workers));
            // Every wave reads its buffer before the flag is written: no wave runs alone
            // to completion (one worker and three spinning waves would hang otherwise).
            let deadline = Instant::now() + Duration::from_secs(10);
            let seen = |k: u64| {
                let buf = 0x7f00_0010_0000 + k * 0x10_0000;
                mem.log.lock().iter().filter(|(a, _)| (buf..buf + 3 * PAGE).contains(a)).count()
            };
            while (0..waves).any(|k| seen(k) < 4) {
                assert!(Instant::now() < deadline, "some wave never ran");
                std::thread::sleep(Duration::from_millis(1));
            }
            assert!(!t.is_finished());
            mem.put(addrs, &vec![0x5678; (PAGE / 4) as usize]);
            let stats = t.join().unwrap().unwrap();
            assert_eq!(stats.waves, waves);
        });
        for k in 0..waves {
            assert_eq!(mem.get(results + 4 * k), 0x5678, "wave {k}");
        }
    }
}

#[test]
fn isa_copy_copies_across_a_4_gib_line_one_access_per_wave_instruction() {
    let mem = MapMem::default();
    mem.put(CODE, &ISA_COPY);
    let (src, dst, n) = (0x7f00_ffff_f000u64, 0x7f02_0000_0000u64, 32 * 64u64);
    let data: Vec<u32> = (0..n as u32).map(|i| i * 3 + 1).collect();
    mem.put(src, &data);
    mem.map(dst, 4 * n);
    mem.log.lock().clear();
    let writes = mem.writes.load(Relaxed);
    let stats = run(&mem, &isa_copy_launch(CODE, src, dst, 4 * n), 2).unwrap();
    assert_eq!(stats.waves, 32);
    assert!((0..n).all(|i| mem.get(dst + 4 * i) == data[i as usize]));
    // 64 lanes with consecutive addresses: one device access per load and per store.
    let loads = mem.log.lock().iter().filter(|&&(a, _)| a >= src && a < src + 4 * n).count();
    assert_eq!((loads, mem.writes.load(Relaxed) - writes), (32, 32));
}

#[test]
fn barriers_order_the_waves_of_a_workgroup() {
    // Each work-item x of one 128-item group (two waves) stores x to a[x], waits at
    // s_barrier, then copies a[127 - x] to b[x]: without the barrier, wave 0 would read
    // wave 1's half before wave 1 ran.
    const BARRIER: [u32; 25] = [
        0x260200ff, 0x000003ff, // v_and_b32_e32 v1, 0x3ff, v0
        0x24040282, // v_lshlrev_b32_e32 v2, 2, v1
        0x7e0a0201, // v_mov_b32_e32 v5, s1
        0x32080400, // v_add_co_u32_e32 v4, vcc, s0, v2
        0x380a0a80, // v_addc_co_u32_e32 v5, vcc, 0, v5, vcc
        0xdc700000, 0x00000104, // flat_store_dword v[4:5], v1
        0xbf8c0f70, // s_waitcnt vmcnt(0)
        0xbf8a0000, // s_barrier
        0x6a0602ff, 0x0000007f, // v_sub_u32_e32 v3, 0x7f, v1
        0x24060682, // v_lshlrev_b32_e32 v3, 2, v3
        0x7e0a0201, // v_mov_b32_e32 v5, s1
        0x32080600, // v_add_co_u32_e32 v4, vcc, s0, v3
        0x380a0a80, // v_addc_co_u32_e32 v5, vcc, 0, v5, vcc
        0xdc500000, 0x06000004, // flat_load_dword v6, v[4:5]
        0xbf8c0f70, // s_waitcnt vmcnt(0)
        0x7e0a0203, // v_mov_b32_e32 v5, s3
        0x32080402, // v_add_co_u32_e32 v4, vcc, s2, v2
        0x380a0a80, // v_addc_co_u32_e32 v5, vcc, 0, v5, vcc
        0xdc700000, 0x00000604, // flat_store_dword v[4:5], v6
        0xbf810000, // s_endpgm
    ];
    let mem = MapMem::default();
    mem.put(CODE, &BARRIER);
    let (a, b) = (0x7f00_0001_0000, 0x7f00_0002_0000);
    mem.map(a, PAGE);
    mem.map(b, PAGE);
    let stats = run(&mem, &launch(CODE, a, b, 1, 128, 8), 1).unwrap();
    assert_eq!(stats.waves, 2);
    for x in 0..128 {
        assert_eq!(mem.get(b + 4 * x), 127 - x as u32, "b[{x}]");
    }
}

#[test]
fn initial_wave_state_follows_the_launch() {
    // 3-D groups of 4x4x8 work-items (two waves), grid counted in work-items with a partial
    // last group in X; RSRC2: 2 user SGPRs, workgroup ids X, Y, Z and the workgroup info.
    let mut l = Launch {
        code: CODE,
        rsrc1: 0,
        rsrc2: 2 << 1 | 0b1111 << 7,
        rsrc3: 0,
        user_data: std::array::from_fn(|k| 100 + k as u32),
        group: [4, 4, 8],
        grid: [6, 8, 8],
        grid_in_threads: true,
    };
    let shape = Shape::new(&l).unwrap();
    assert_eq!((shape.total_groups(), shape.waves_per_group, shape.vgprs), (4, 2, 8));
    let mut w = Wave::new(0, 0);
    // Group 3 is (1, 1, 0): X holds 2 of 4 work-items. Wave 1 holds z = 4..8.
    shape.init(&l, 3, 1, &mut w);
    assert_eq!(w.s[..7], [100, 101, 1, 1, 0, 2 | 1 << 6, 0]);
    let lanes: Vec<usize> = (0..64).filter(|&k| w.exec >> k & 1 != 0).collect();
    assert_eq!(lanes.len(), 32);
    let (x, y, z) = (1, 2, 5); // work-item 4*4*5 + 4*2 + 1 = 89: lane 25 of wave 1
    assert!(lanes.contains(&25));
    assert_eq!(w.v[0][25], x | y << 10 | z << 20);
    assert!(!lanes.contains(&26), "x = 2 is outside the partial group");
    // Counted in workgroups, the grid holds whole groups.
    l.grid_in_threads = false;
    let shape = Shape::new(&l).unwrap();
    shape.init(&l, 0, 0, &mut w);
    assert_eq!((shape.total_groups(), w.exec), (6 * 8 * 8, u64::MAX));
    // More than 1024 work-items per group is refused.
    l.group = [64, 32, 1];
    assert!(matches!(Shape::new(&l), Err(IsaError::Illegal { .. })));
}

#[test]
fn the_first_error_stops_every_wave() {
    // 64 one-lane waves of CopyDword whose source page is missing.
    let mem = MapMem::default();
    mem.put(CODE, &COPY_DWORD);
    let stop = AtomicBool::new(false);
    let (src, dst) = (0x7f00_0000_1000u64, 0x7f00_0000_2000u64);
    mem.map(dst, PAGE);
    let e = crate::gpu::isa::run_on(&mem, &kfdtest_launch(CODE, src, dst, 64), &stop, 2).unwrap_err();
    assert!(matches!(e, IsaError::Fault(crate::Error::GpuVmFault { addr, .. }) if addr == src), "{e:?}");
    assert_eq!(mem.get(dst), 0, "no store after the fault");
}
